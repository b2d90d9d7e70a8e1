"""Batches for training, as Caffe's ``Data`` (LMDB) and ``ImageData`` (list file) layers make
them: records read in order and wrapping at the end, transformed by Caffe's DataTransformer
(random crop and mirror in TRAIN), decoded in a background thread that keeps a few batches
ready while the net computes. numpy only: the trainer turns the arrays into tensors.

Order. A Data layer reads its LMDB in key order through one open cursor, back to the first
record after the last (Caffe's DataReader; no shuffling). An ImageData layer reads its list in
order; with ``image_data_param.shuffle`` the list is shuffled before the first epoch and again
at each wrap, and ``rand_skip`` starts at a random line, as Caffe's ImageDataLayer does.
``data_param.rand_skip`` is ignored, as Caffe 1.0's DataLayer ignores it.

Randomness. Two numpy Generators derive from ``seed``: ``default_rng(seed)`` for the transform
(per image: the mirror bit, then the crop's top and left offsets; see
``lmdb_data.DataTransformer``) and ``default_rng(SeedSequence(seed).spawn(1)[0])`` for the list
order (``Generator.shuffle`` of the current order at every epoch, then ``integers(rand_skip)``
once). One thread produces the batches in sequence, so a seed gives the same batches whatever
the timing. Caffe's C++ generator draws other values: the same seed does not give Caffe's crops
or order, only the same rules.

A database or list holding fewer records than one batch is refused, naming both counts:
Caffe would wrap around and repeat records within every batch, which is almost always a
mistake (a wrong path, a batch_size meant for another dataset); an empty one is refused too.

Errors met while decoding in the background (a corrupt record, an undecodable or missing image,
a record of another shape than the first) are raised again in the caller's thread by the
``next_batch`` that would have returned that batch, as the same one-line ``RistrettoError``
(file, layer, record). The background thread decodes without capturing the codecs' messages
(capturing redirects the whole process's stderr): a damaged JPEG may print libjpeg's own line.
``close()`` stops the thread between two records; at interpreter exit the threads of feeds
left open are stopped and joined the same way.
"""
import atexit
import queue
import threading
import weakref

import numpy as np

from .. import memory_budget
from ..errors import FormatError, NetError, RistrettoError
from ..layers.sources import read_image_list, read_list_image
from ..lmdb_data import DataTransformer, LmdbReader, datum_pixels
from ..protos import caffe_pb2

PREFETCH_COUNT = 3        # batches kept ready, as Caffe's BasePrefetchingDataLayer
JOIN_SECONDS = 10         # how long close() waits for the thread (it stops between records)
PHASES = ("TRAIN", "TEST")
_running = {}             # thread -> its stop event, for the feeds whose thread still runs


class LmdbRecords:
    """The Datum records of a Data layer's LMDB in key order, wrapping at the end, through one
    reader kept open (the database is never reopened per batch)."""

    def __init__(self, layer, source=None, force_color=False, force_gray=False):
        p = layer.spec.data_param
        if p.backend != caffe_pb2.DataParameter.LMDB:
            raise NetError("only LMDB databases are supported (data_param.backend: LMDB)",
                           layer=layer.name)
        self.batch_size = p.batch_size
        if self.batch_size < 1:
            raise NetError("data_param.batch_size is 0 (or missing): give the number of images "
                           "per batch, as Caffe requires", layer=layer.name)
        self.reader = LmdbReader(source or p.source, layer=layer.name)
        self.path, self.count, self.what = self.reader.path, self.reader.count, "record(s)"
        self._force = (force_color, force_gray)

    def read(self):
        """(C x H x W pixels, label, key) of the next record."""
        key, datum = self.reader.next_datum()
        pixels = datum_pixels(datum, *self._force, (self.path, key), quiet=True)
        return pixels, datum.label, key

    @staticmethod
    def where(key):
        return f"record {key!r}"

    def close(self):
        self.reader.close()


class ImageListRecords:
    """The images of an ImageData layer's list file, in list order (shuffled per epoch with
    ``shuffle``), wrapping at the end."""

    def __init__(self, layer, source=None, order_rng=None):
        p = self.param = layer.spec.image_data_param
        self.layer, self.batch_size = layer.name, p.batch_size
        if self.batch_size < 1:
            raise NetError("image_data_param.batch_size is 0: give the number of images per "
                           "batch", layer=layer.name)
        if (p.new_height > 0) != (p.new_width > 0):
            raise NetError("give image_data_param new_height and new_width together (or "
                           "neither)", layer=layer.name)
        self.path = source or p.source
        self.entries = read_image_list(self.path, layer.name)
        self.count, self.what = len(self.entries), "image(s)"
        self._rng = order_rng if order_rng is not None else np.random.default_rng(0)
        self.order = np.arange(self.count)
        if p.shuffle:
            self._rng.shuffle(self.order)
        self.position = 0
        if p.rand_skip:
            self.position = int(self._rng.integers(p.rand_skip))
            if self.position >= self.count:
                raise FormatError(f"rand_skip drew {self.position}, not fewer than the "
                                  f"{self.count} images of the list", path=self.path,
                                  layer=layer.name)

    def read(self):
        """(C x H x W pixels, label, index into the list) of the next image."""
        index = int(self.order[self.position])
        name, label, line = self.entries[index]
        self.position += 1
        if self.position == self.count:
            self.position = 0
            if self.param.shuffle:
                self._rng.shuffle(self.order)
        return read_list_image(self.param, name, line, self.path, self.layer, quiet=True), \
            label, index

    def where(self, index):
        name, _, line = self.entries[index]
        return f"line {line} of {self.path}"

    def close(self):
        pass


class _BatchMaker:
    """Builds batches from records (in the background thread)."""

    def __init__(self, records, transform, first, shape, tops, layer):
        self.records, self.transform, self.shape = records, transform, shape
        self.tops, self.layer = tops, layer
        self._pending = first        # the first record, read to learn the shape
        self.stop = threading.Event()

    def __call__(self):
        """The next batch, or None when asked to stop."""
        size = self.records.batch_size
        data = np.empty((size,) + self.shape, np.float32)
        labels = np.empty(size, np.float32)
        for index in range(size):
            if self.stop.is_set():
                return None
            tag = None
            try:
                if self._pending is not None:
                    (pixels, label, tag), self._pending = self._pending, None
                else:
                    pixels, label, tag = self.records.read()
                shape = self.transform.output_shape(pixels.shape)
                if shape != self.shape:
                    raise FormatError(f"{self.records.where(tag)} gives a {_dims(shape)} image "
                                      f"after the transform, the first gave "
                                      f"{_dims(self.shape)}: a layer has one shape")
                self.transform(pixels, out=data[index])
            except RistrettoError as exc:
                raise _in_context(exc, self.records, tag, self.layer) from None
            labels[index] = label
        batch = {self.tops[0]: data}
        if len(self.tops) > 1:
            batch[self.tops[1]] = labels
        return batch


def _dims(shape):
    return "x".join(str(d) for d in shape)


def _in_context(error, records, tag, layer):
    """``error`` naming the file, the layer and the record."""
    error.with_context(path=records.path, layer=layer)
    if tag is not None:
        where = records.where(tag)
        if where not in error.message:
            error.message = f"{error.message} ({where})"
    return error


class _Failure:
    """An exception raised in the background thread, carried to ``next_batch``."""

    def __init__(self, error):
        self.error = error


def _produce(make_batch, batches, stop, records):
    """The background thread: batches into the queue until stopped or failed."""

    def put(item):
        while not stop.is_set():
            try:
                batches.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    try:
        while not stop.is_set():
            batch = make_batch()
            if batch is None or not put(batch):
                break
    except BaseException as exc:        # handed to the caller's thread, raised there
        put(_Failure(exc))
    finally:
        records.close()
        _running.pop(threading.current_thread(), None)


@atexit.register
def _stop_all():
    """At exit, stop every feed's thread and wait for it: a daemon thread still decoding
    when the interpreter and OpenCV shut down would abort the process."""
    threads = list(_running.items())
    for _, stop in threads:
        stop.set()
    for thread, _ in threads:
        thread.join(JOIN_SECONDS)


class TrainFeed:
    """Batches of one ``Data`` or ``ImageData`` layer (a ``ristretto_py`` ``Layer``) for
    ``phase`` "TRAIN" or "TEST": ``next_batch()`` -> {data top: N x C x H x W float32, label
    top: (N,) float32}. A background thread keeps ``prefetch`` batches ready (default: the
    layer's ``data_param.prefetch`` when set, else 3). ``source`` replaces the layer's LMDB or
    list file. ``close()`` (or leaving a ``with`` block) stops the thread and closes the
    database. ``shapes`` ({top: shape}), ``batch_size``, ``count`` (records or images in the
    source) and ``source`` describe it. See the module docstring for the order, the draws and
    the errors."""

    def __init__(self, layer, phase="TRAIN", seed=0, prefetch=None, source=None):
        if phase not in PHASES:
            raise ValueError(f"phase must be TRAIN or TEST, not {phase!r}")
        if layer.type not in ("Data", "ImageData"):
            raise NetError(f"a {layer.type} layer is not a Data or ImageData layer",
                           layer=layer.name)
        self.layer, self.phase, self.seed = layer, phase, seed
        self.prefetch = self._prefetch_count(layer, prefetch)
        self._closed, self._error = False, None
        transform = DataTransformer(layer.spec.transform_param, phase, seed, layer.name)
        if layer.type == "Data":
            records = LmdbRecords(layer, source, transform.force_color, transform.force_gray)
        else:
            order_rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])
            records = ImageListRecords(layer, source, order_rng)
        try:
            self.batch_size, self.count, self.source = (records.batch_size, records.count,
                                                        records.path)
            if records.count < records.batch_size:
                raise FormatError(
                    f"holds {records.count} {records.what}, fewer than one batch of "
                    f"{records.batch_size}: every batch would repeat some (Caffe wraps around); "
                    "lower the batch_size or add data", path=records.path, layer=layer.name)
            first = records.read()
            shape = transform.output_shape(first[0].shape)
            self._check_memory(shape, records.path)
        except RistrettoError as exc:
            records.close()
            raise _in_context(exc, records, None, layer.name) from None
        except BaseException:
            records.close()
            raise
        self.shapes = {layer.tops[0]: (self.batch_size,) + shape}
        if len(layer.tops) > 1:
            self.shapes[layer.tops[1]] = (self.batch_size,)
        self._maker = _BatchMaker(records, transform, first, shape, layer.tops, layer.name)
        self._queue = queue.Queue(self.prefetch)
        self._thread = threading.Thread(
            target=_produce, args=(self._maker, self._queue, self._maker.stop, records),
            name=f"TrainFeed '{layer.name}'", daemon=True)
        _running[self._thread] = self._maker.stop
        self._thread.start()
        # a feed dropped without close() still stops its thread (which closes the database)
        self._finalizer = weakref.finalize(self, self._maker.stop.set)

    @staticmethod
    def _prefetch_count(layer, prefetch):
        if prefetch is None:
            p = layer.spec.data_param
            prefetch = p.prefetch if layer.spec.HasField("data_param") and \
                p.HasField("prefetch") else PREFETCH_COUNT
            if prefetch < 1:
                raise NetError("data_param.prefetch is 0: give at least 1", layer=layer.name)
        if int(prefetch) < 1:
            raise ValueError(f"prefetch must be at least 1, not {prefetch}")
        return int(prefetch)

    def _check_memory(self, shape, path):
        """Every batch alive at once: those queued, the one being read and the one in use."""
        kept = self.prefetch + 2
        batch = memory_budget.array_bytes((self.batch_size,) + shape) + 4 * self.batch_size
        memory_budget.check(kept * batch,
                            f"{kept} batches of {self.batch_size:,} images of {_dims(shape)} "
                            f"({self.prefetch} prefetched, one being read, one in use)",
                            path=path, layer=self.layer.name,
                            hint="lower the batch_size or the prefetch count")

    def next_batch(self):
        """The next batch ({top: array}); an error raised while decoding it is raised here."""
        if self._error is not None:
            raise self._error
        if self._closed:
            raise RistrettoError("the data feed is closed", layer=self.layer.name)
        while True:
            try:
                item = self._queue.get(timeout=0.5)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise RistrettoError("the data feed's thread stopped",
                                         layer=self.layer.name) from None
        if isinstance(item, _Failure):
            self._error = item.error
            raise self._error
        return item

    def close(self):
        """Stop the background thread (it ends between two records) and close the database."""
        if self._closed:
            return
        self._closed = True
        self._maker.stop.set()
        while True:                     # free the queued batches; unblocks a waiting put
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(JOIN_SECONDS)
        self._finalizer.detach()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __repr__(self):
        return (f"TrainFeed({self.layer.name!r}, {self.phase}, batch {self.batch_size}, "
                f"{self.count} records, prefetch {self.prefetch})")
