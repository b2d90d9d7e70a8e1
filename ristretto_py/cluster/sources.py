"""The batches of one evaluation as the workers read them, and the plan that splits them.

An evaluation of ``n`` batches is cut into contiguous chunks: each worker owns one contiguous
range (``n * w // W`` to ``n * (w + 1) // W``), cut again into a few chunks so that progress and
retries come in small steps. A worker always gets the same chunks, so what it read for one
candidate it keeps for the next. Gathered in chunk order, the per-batch results are the single
process's list, so every sum and score over them is computed in the same order.

Where the batches come from:

* ``LmdbSource``: a net's Data layer. Each worker opens the LMDB itself, moves past the batches
  before its range (the transform's random draws included, ``DataLayerFeed.skip``) and reads its
  own; a relative path is made absolute where the run started, as the single process reads it.
* ``ImageSource``: image files (LFW's pairs): each worker decodes and prepares its own images.
* ``StoredSource``: batches the driver already holds (prepared ``--images``): one object-store
  entry per chunk.
"""
import dataclasses
import hashlib
import os
import uuid

import numpy as np

CHUNKS_PER_WORKER = 4


@dataclasses.dataclass(frozen=True)
class Chunk:
    index: int
    start: int       # first batch
    stop: int        # one past the last
    worker: int


def plan_chunks(batches, workers, per_worker=CHUNKS_PER_WORKER):
    """Chunks of ``batches`` batches for ``workers`` workers, in batch order."""
    chunks = []
    for worker in range(workers):
        first, last = batches * worker // workers, batches * (worker + 1) // workers
        parts = min(per_worker, last - first)
        for part in range(parts):
            start = first + (last - first) * part // parts
            stop = first + (last - first) * (part + 1) // parts
            chunks.append(Chunk(len(chunks), start, stop, worker))
    return chunks


def absolute_paths(param):
    """A copy of a NetParameter (or LayerParameter) whose data files (LMDB sources, mean files,
    image lists and their root folders) are absolute: a worker's working directory is not the
    run's, and relative paths are read from the run's, as one process reads them."""
    copy = type(param)()
    copy.CopyFrom(param)
    for layer in (copy.layer if hasattr(copy, "layer") else [copy]):
        for field, name in (("data_param", "source"), ("transform_param", "mean_file"),
                            ("image_data_param", "source"), ("image_data_param", "root_folder")):
            if layer.HasField(field):
                part = getattr(layer, field)
                value = getattr(part, name)
                if value and not os.path.isabs(value):
                    # a root folder joins by plain concatenation in Caffe: keep its slash
                    absolute = os.path.abspath(value) + ("/" if value.endswith("/") else "")
                    setattr(part, name, absolute)
    return copy


def _digest(*parts):
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(part if isinstance(part, bytes) else repr(part).encode())
    return hasher.hexdigest()[:24]


class LmdbSource:
    """The batches of a net's Data layer (``net.source_layers``), read by each worker."""

    def __init__(self, layer, phase, seed=0, data_source=None):
        source = data_source or layer.spec.data_param.source
        self.layer_bytes = absolute_paths(layer.spec).SerializeToString()
        self.phase, self.seed = phase, seed
        self.path = os.path.abspath(source) if source else source
        self.batch_size = layer.spec.data_param.batch_size
        self.key = _digest(self.layer_bytes, phase, seed, self.path)

    def read(self, start, stop):
        from ..lmdb_data import DataLayerFeed
        from ..net import Layer
        from ..protos import caffe_pb2
        layer = Layer(caffe_pb2.LayerParameter.FromString(self.layer_bytes))
        feed = DataLayerFeed(layer, self.phase, seed=self.seed, source=self.path)
        try:
            feed.skip(start)
            return [feed.next_batch() for _ in range(stop - start)]
        finally:
            feed.close()

    def describe(self):
        return self.path


class ImageSource:
    """Image files in batches of ``batch_size`` (the last one holding the rest), each prepared
    by ``prepare`` (an ``evaluators.image_data.ImagePreparation``) on the worker."""

    def __init__(self, paths, input_blob, prepare, batch_size):
        self.paths = [os.path.abspath(p) for p in paths]
        self.input_blob, self.prepare, self.batch_size = input_blob, prepare, batch_size
        self.key = _digest(tuple(self.paths), input_blob, prepare, batch_size)

    def __len__(self):
        return -(-len(self.paths) // self.batch_size)

    def read(self, start, stop):
        from ..errors import FormatError
        batches = []
        for index in range(start, stop):
            chunk = self.paths[index * self.batch_size:(index + 1) * self.batch_size]
            prepared = [self.prepare(path) for path in chunk]
            for path, array in zip(chunk, prepared):
                if array.shape[1:] != prepared[0].shape[1:]:
                    raise FormatError(f"image is {array.shape[3]}x{array.shape[2]} but "
                                      f"{chunk[0]} is {prepared[0].shape[3]}x"
                                      f"{prepared[0].shape[2]}: give --resize W,H to bring every "
                                      "image to the net's input size", path=path)
            batches.append({self.input_blob: np.concatenate(prepared)})
        return batches

    def describe(self):
        return f"{len(self.paths)} images"


class StoredSource:
    """Batches the driver holds, put in the object store once, one entry per chunk."""

    def __init__(self, batches, chunks, put):
        self.key = uuid.uuid4().hex
        # A list around each reference keeps Ray from resolving it before a worker needs it.
        self.refs = {(c.start, c.stop): [put([batches[i] for i in range(c.start, c.stop)])]
                     for c in chunks}

    def read(self, start, stop):
        import ray
        return ray.get(self.refs[(start, stop)][0])

    def describe(self):
        return "batches in the object store"
