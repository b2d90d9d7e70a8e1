"""Caffe's database input: ``Datum`` records from an LMDB, transformed as Caffe's
``DataTransformer`` does (mean file or mean values, scale, crop, optional mirror), and batched
at test time as its ``Data`` layer does (records in key order, wrapping to the first at the
end). The training feed (``ristretto_py.train.data``) reads through the same pieces."""
import os
import threading

import numpy as np

from . import caffe_io, memory_budget
from .errors import FormatError, NetError
from .protos import caffe_pb2


_environments = {}     # real path -> [lmdb.Environment, number of users]
_environments_lock = threading.Lock()   # prefetch threads give environments back too


def open_lmdb(path, layer=None):
    """Open an LMDB database read-only: a folder holding ``data.mdb`` (as Caffe writes it) or
    the data file itself; a clear error when the path holds none. LMDB allows one environment
    per database and process, so users of one database share it (a batch being streamed while
    a net reads its first record for a shape); give it back with ``close_lmdb``."""
    import lmdb
    path = str(path)
    if not path:
        raise NetError("data_param.source is empty: give the LMDB path", layer=layer)
    if not os.path.exists(path):
        raise FormatError("LMDB database does not exist", path=path, layer=layer)
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "data.mdb")):
        raise FormatError("is a directory that holds no LMDB database (no data.mdb)", path=path,
                          layer=layer)
    key = os.path.realpath(path)
    with _environments_lock:
        entry = _environments.get(key)
        if entry is None:
            try:
                environment = lmdb.open(path, readonly=True, lock=False, readahead=False,
                                        subdir=os.path.isdir(path))
            except lmdb.Error as exc:
                raise FormatError(f"not a readable LMDB database ({exc})", path=path,
                                  layer=layer) from None
            entry = _environments[key] = [environment, 0]
        entry[1] += 1
        return entry[0]


def close_lmdb(environment):
    """Give back an environment from ``open_lmdb``; the last user closes it."""
    with _environments_lock:
        for key, entry in list(_environments.items()):
            if entry[0] is environment:
                entry[1] -= 1
                if entry[1] <= 0:
                    del _environments[key]
                    environment.close()
                return
        environment.close()


class LmdbReader:
    """Sequential, wrapping reader of the ``Datum`` records of one LMDB database."""

    def __init__(self, path, layer=None):
        import lmdb
        self.path, self.layer = str(path), layer
        self._env = open_lmdb(self.path, layer)
        try:
            self._txn = self._env.begin()
            self.count = self._txn.stat()["entries"]
        except lmdb.Error as exc:
            self.close()
            raise FormatError(f"not a readable LMDB database ({exc})", path=self.path,
                              layer=layer) from None
        if self.count == 0:
            self.close()
            raise FormatError("LMDB database is empty", path=self.path, layer=layer)
        self._cursor = self._txn.cursor()
        self._cursor.first()

    def next_datum(self):
        """The next record as a Datum, restarting at the first record after the last."""
        import lmdb
        try:
            key, value = self._cursor.item()
            if not self._cursor.next():
                self._cursor.first()
        except lmdb.Error as exc:
            raise FormatError(f"corrupt LMDB database ({exc})", path=self.path,
                              layer=self.layer) from None
        datum = caffe_pb2.Datum()
        try:
            datum.ParseFromString(value)
        except Exception:
            raise FormatError(f"record {key!r} is not a Caffe Datum", path=self.path,
                              layer=self.layer) from None
        return key, datum

    def skip(self, count):
        """Move past ``count`` records (wrapping as ``next_datum`` does) without parsing them:
        a reader of a later range of the database starts where a reader from the start would
        be after ``count`` records."""
        import lmdb
        try:
            for _ in range(count % self.count):
                if not self._cursor.next():
                    self._cursor.first()
        except lmdb.Error as exc:
            raise FormatError(f"corrupt LMDB database ({exc})", path=self.path,
                              layer=self.layer) from None

    def close(self):
        if getattr(self, "_txn", None) is not None:
            self._txn.abort()
            self._txn = None
        if self._env is not None:
            close_lmdb(self._env)
            self._env = None


def datum_to_array(datum, force_color=False, force_gray=False, where=None):
    """A Datum's image as a C x H x W float32 array (BGR channel order as stored)."""
    return np.ascontiguousarray(datum_pixels(datum, force_color, force_gray, where),
                                dtype=np.float32)


def datum_pixels(datum, force_color=False, force_gray=False, where=None, quiet=False):
    """A Datum's image as a C x H x W array as stored: uint8 (raw or encoded records; encoded
    ones decoded as Caffe's ``DecodeDatumToCVMat[Native]``) or float32 (``float_data``), a view
    where possible. ``quiet`` decodes without capturing the codecs' messages (the capture
    redirects the process's stderr, which a background thread must not do): an undecodable
    record is then an error without the codec's detail."""
    path, key = where or (None, None)
    if datum.encoded:
        from .images import decode, opencv
        cv2 = opencv()
        flags = cv2.IMREAD_COLOR if force_color else (
            cv2.IMREAD_GRAYSCALE if force_gray else cv2.IMREAD_UNCHANGED)
        if quiet:
            image = cv2.imdecode(np.frombuffer(datum.data, np.uint8), flags)
            if image is None:
                raise FormatError(f"OpenCV cannot decode record {key!r} as an image", path=path)
        else:
            image = decode(datum.data, flags, path, f"record {key!r}")
        if image.ndim == 2:
            image = image[:, :, None]
        return image.transpose(2, 0, 1)
    shape = (datum.channels, datum.height, datum.width)
    count = shape[0] * shape[1] * shape[2]
    if len(datum.data):
        values = np.frombuffer(datum.data, dtype=np.uint8)
    else:
        values = np.asarray(datum.float_data, dtype=np.float32)
    if count == 0 or values.size != count:
        raise FormatError(f"record {key!r} declares shape {list(shape)} but holds "
                          f"{values.size} values", path=path)
    return values.reshape(shape)


class DataTransformer:
    """Caffe's ``DataTransformer`` on one C x H x W image: a crop (centred in TEST, at a random
    offset in TRAIN), a random horizontal flip when ``mirror`` is set (in both phases, as
    Caffe), and ``(pixel - mean) * scale`` with the mean of the pixel's uncropped position.

    Random draws, per image and in the order of Caffe's ``Transform``: the mirror bit
    ``integers(2)`` when ``mirror`` is set (flip when 1), then, in TRAIN with a crop, the top
    offset ``integers(H - crop_h + 1)`` and the left offset ``integers(W - crop_w + 1)``, all
    from ``numpy.random.default_rng(seed)``. A seed so gives the same crops and flips on every
    run; they are not the values of Caffe's C++ generator for the same seed."""

    def __init__(self, transform_param, phase="TEST", seed=0, layer=None):
        p = transform_param
        if p.HasField("mean_file") and len(p.mean_value):
            raise NetError("give mean_file or mean_value, not both", layer=layer)
        self.scale = np.float32(p.scale)
        self.crop_h = p.crop_h or p.crop_size
        self.crop_w = p.crop_w or p.crop_size
        self.mirror = bool(p.mirror)
        self.phase = phase
        self.force_color, self.force_gray = bool(p.force_color), bool(p.force_gray)
        self.mean_file = caffe_io.read_blob_proto(p.mean_file) if p.HasField("mean_file") else None
        if self.mean_file is not None:
            self.mean_file = self.mean_file.reshape(self.mean_file.shape[-3:])
        self.mean_values = np.asarray(p.mean_value, np.float32)
        self.layer = layer
        self._rng = np.random.default_rng(seed)

    def output_shape(self, shape):
        """The C x H x W shape of a transformed image of ``shape``; an error when the mean or
        the crop does not fit it."""
        channels, height, width = shape
        if self.mean_file is not None and self.mean_file.shape != tuple(shape):
            raise NetError(f"mean file has shape {list(self.mean_file.shape)} but the "
                           f"images are {list(shape)}", layer=self.layer)
        if self.mean_values.size not in (0, 1, channels):
            raise NetError(f"give 1 or {channels} mean_value entries, not "
                           f"{self.mean_values.size}", layer=self.layer)
        crop_h, crop_w = self.crop_h or height, self.crop_w or width
        if crop_h > height or crop_w > width:
            raise NetError(f"crop {crop_h}x{crop_w} is larger than the {height}x{width} "
                           "images", layer=self.layer)
        return (channels, crop_h, crop_w)

    @property
    def draws_per_image(self):
        """Whether transforming an image draws random numbers (a mirror bit, a TRAIN crop)."""
        return self.mirror or (self.phase == "TRAIN" and bool(self.crop_h or self.crop_w))

    def _draw(self, shape):
        """(flip, top, left) for an image of ``shape``, drawn as Caffe's ``Transform`` draws."""
        _, height, width = shape
        _, crop_h, crop_w = self.output_shape(shape)
        flip = self.mirror and bool(self._rng.integers(2))      # Caffe draws it first
        if self.phase == "TRAIN" and (self.crop_h or self.crop_w):
            top = int(self._rng.integers(height - crop_h + 1))
            left = int(self._rng.integers(width - crop_w + 1))
        else:
            top, left = (height - crop_h) // 2, (width - crop_w) // 2
        return flip, top, left

    def skip(self, shape):
        """Make the draws of one image of ``shape`` without transforming it, so that a feed
        starting later in the database draws what a feed from the start would."""
        self._draw(shape)

    def __call__(self, image, out=None):
        """The transformed image, float32 (written into ``out`` when given)."""
        _, crop_h, crop_w = self.output_shape(image.shape)
        flip, top, left = self._draw(image.shape)
        window = (slice(None), slice(top, top + crop_h), slice(left, left + crop_w))
        pixels = image[window].astype(np.float32)
        if self.mean_file is not None:
            pixels -= self.mean_file[window]
        elif self.mean_values.size:
            pixels -= self.mean_values.reshape(-1, 1, 1)
        if flip:
            pixels = pixels[:, :, ::-1]
        if out is None:
            return np.ascontiguousarray(pixels * self.scale, dtype=np.float32)
        return np.multiply(pixels, self.scale, out=out)


class DataLayerFeed:
    """Batches for one ``Data`` layer of a net: ``next_batch()`` -> {top: array}."""

    def __init__(self, layer, phase="TEST", seed=0, source=None):
        p = layer.spec.data_param
        if p.backend != caffe_pb2.DataParameter.LMDB:
            raise NetError("only LMDB databases are supported (data_param.backend: LMDB)",
                           layer=layer.name)
        self.layer = layer
        self.batch_size = p.batch_size
        if self.batch_size < 1:
            raise NetError("data_param.batch_size is 0 (or missing): give the number of images "
                           "per batch, as Caffe requires", layer=layer.name)
        self.reader = LmdbReader(source or p.source, layer=layer.name)
        self.transform = DataTransformer(layer.spec.transform_param, phase, seed, layer.name)

    def next_batch(self):
        """The next ``batch_size`` records, transformed; the batch's size is checked against
        the memory limit when its first image is known, before the rest is read."""
        data, labels = None, np.empty(self.batch_size, np.float32)
        for index in range(self.batch_size):
            key, datum = self.reader.next_datum()
            image = self.transform(datum_to_array(datum, self.transform.force_color,
                                                  self.transform.force_gray, (self.reader.path, key)))
            if data is None:
                shape = (self.batch_size,) + image.shape
                memory_budget.check(memory_budget.array_bytes(shape),
                                    f"a batch of {self.batch_size:,} images of "
                                    f"{'x'.join(map(str, image.shape))}", path=self.reader.path,
                                    layer=self.layer.name, hint="lower data_param.batch_size")
                data = np.empty(shape, np.float32)
            elif image.shape != data.shape[1:]:
                raise FormatError(f"records have different shapes {list(data.shape[1:])} and "
                                  f"{list(image.shape)} within a batch (record {key!r})",
                                  path=self.reader.path, layer=self.layer.name)
            data[index] = image
            labels[index] = datum.label
        tops = self.layer.tops
        batch = {tops[0]: data}
        if len(tops) > 1:
            batch[tops[1]] = labels
        return batch

    def skip(self, batches):
        """Move past ``batches`` batches as ``next_batch`` would read them (the transform's
        random draws included), so that a worker reading batches k... of an evaluation gets
        exactly the batches a single reader from the start gets there."""
        records = batches * self.batch_size
        if not self.transform.draws_per_image:
            self.reader.skip(records)
            return
        for _ in range(records):
            key, datum = self.reader.next_datum()
            self.transform.skip(datum_pixels(datum, self.transform.force_color,
                                             self.transform.force_gray,
                                             (self.reader.path, key)).shape)

    def batch_bytes(self, shape):
        """Bytes of one batch of images of ``shape`` (C x H x W) with its labels."""
        return memory_budget.array_bytes((self.batch_size,) + tuple(shape)) + 4 * self.batch_size

    def close(self):
        self.reader.close()
