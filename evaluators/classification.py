"""Classification accuracy as Caffe's ``test`` computes it: the net's own Data layer feeds
batches from its LMDB; every output blob (Accuracy top-1/top-k, loss) is averaged over the
iterations.

``Batches`` are the batches a search evaluates every candidate on: kept in memory when they fit
in half the memory limit (``ristretto_py.memory_budget``), otherwise read again from the
database for every pass, so that no number of iterations exhausts the memory."""
import dataclasses
import warnings

import numpy as np

from .. import memory_budget
from ..errors import NetError, RistrettoWarning
from ..lmdb_data import DataLayerFeed
from ..progress import progress as show_progress
from ..runtime import make_runtime

CACHE_SHARE = 0.5     # of the memory limit, for batches kept between evaluations


@dataclasses.dataclass
class ClassificationResult:
    """Mean of every net output over ``iterations`` batches (``images`` images in all)."""
    scores: dict
    iterations: int
    images: int
    backend: str

    def score(self, blob=None):
        """The named output, or the first scalar output (Ristretto's score: usually top-1)."""
        if blob is not None:
            if blob not in self.scores:
                raise NetError(f"no output blob '{blob}' (outputs: {sorted(self.scores)})")
            return self.scores[blob]
        for name, value in self.scores.items():
            if np.ndim(value) == 0:
                return value
        raise NetError("the net has no scalar output to score (add an Accuracy layer)")

    def as_dict(self):
        return {"scores": {k: _plain(v) for k, v in self.scores.items()},
                "iterations": self.iterations, "images": self.images, "backend": self.backend}


def _plain(value):
    """A float32 score as the shortest decimal that reads back to it (0.903, not 0.90299999)."""
    value = np.asarray(value, np.float32)
    return float(str(value[()])) if value.ndim == 0 else [float(str(v)) for v in value.ravel()]


def data_layer(net):
    layers = [l for l in net.source_layers if l.type == "Data"]
    if len(layers) != 1:
        raise NetError(f"the {net.phase} net needs exactly one Data layer to read its dataset, "
                       f"it has {len(layers)}", path=net.source)
    return layers[0]


class Batches:
    """``iterations`` batches of a net's Data layer, as a new Caffe net reads them: from the
    start of the database, wrapping around at its end; every pass over them yields the same
    batches. With ``cache`` they are read once and kept when they fit in CACHE_SHARE of the
    memory limit; otherwise (or without ``cache``) each pass reads them from the database."""

    def __init__(self, net, iterations, data_source=None, seed=0, cache=True, probe=True):
        if iterations < 1:
            raise ValueError("iterations must be at least 1")
        self.layer, self.phase = data_layer(net), net.phase
        self.iterations, self.data_source, self.seed = iterations, data_source, seed
        self._kept = None
        if not probe:       # the workers of a cluster read them: nothing is read here
            self.batch_bytes = None
            self.images_per_batch = self.layer.spec.data_param.batch_size
            return
        feed = self._feed()
        try:
            first = feed.next_batch()
            self.batch_bytes = sum(array.nbytes for array in first.values())
            total = self.batch_bytes * iterations
            if cache and memory_budget.fits(total, CACHE_SHARE):
                self._kept = [first] + [feed.next_batch() for _ in range(iterations - 1)]
            elif cache and iterations > 1:
                warnings.warn(
                    f"keeping {iterations:,} batches in memory would take "
                    f"{memory_budget.format_bytes(total)}, more than half the memory limit of "
                    f"{memory_budget.format_bytes(memory_budget.limit()[0])}: they are read "
                    "again from the database for every evaluation (slower; --memory_limit "
                    "raises the limit)", RistrettoWarning, stacklevel=2)
            self.images_per_batch = len(next(iter(first.values())))
        finally:
            feed.close()

    def _feed(self):
        return DataLayerFeed(self.layer, self.phase, seed=self.seed, source=self.data_source)

    @property
    def kept(self):
        """Whether the batches are held in memory."""
        return self._kept is not None

    def __len__(self):
        return self.iterations

    def __iter__(self):
        if self._kept is not None:
            yield from self._kept
            return
        feed = self._feed()
        try:
            for _ in range(self.iterations):
                yield feed.next_batch()
        finally:
            feed.close()

    def __getitem__(self, index):
        if self._kept is not None:
            return self._kept[index]
        if not -self.iterations <= index < self.iterations:
            raise IndexError(index)
        for position, batch in enumerate(self):
            if position == index % self.iterations:
                return batch


def fetch_batches(net, iterations, data_source=None, seed=0, cache=True, probe=True):
    """The ``Batches`` of the net's Data layer for ``iterations`` evaluations (see there);
    ``probe=False`` reads nothing now (a cluster's workers read their own ranges)."""
    return Batches(net, iterations, data_source, seed, cache, probe)


def evaluate_classification(net, iterations, backend="numpy", runtime=None, progress=False,
                            data_source=None, seed=0, batches=None, observer=None,
                            description=None, cluster=None):
    """Run ``iterations`` batches of the net's Data layer (or the given ``batches``) through a
    runtime and average every output. As Caffe's ``test`` and Ristretto's ``quantize``, sums
    and means are float32, so that scores and the decisions taken on them are Caffe's.

    ``cluster`` = (pool, net handle, runtime options): the batches are split across the
    workers of a ``ristretto_py.cluster`` pool, each reading its own range of the database;
    their per-batch outputs come back in batch order and are summed here, as below."""
    outputs = [b for b in net.output_blobs if b not in net.input_blobs]
    if batches is None:
        batches = Batches(net, iterations, data_source, seed, cache=False,
                          probe=cluster is None)
    elif len(batches) != iterations:
        raise ValueError(f"{len(batches)} batches given for {iterations} iterations")
    if cluster is not None:
        pool, handle, options = cluster
        name = options.get("backend", "numpy")
        pending = pool.forward(batches, handle, outputs, options)
        per_batch = pool.gather(pending, description or f"evaluate ({name})")
        images = pending.images
    else:
        runtime = runtime or make_runtime(net, backend)
        name = runtime.name
        images = []
        per_batch = _forward_all(runtime, batches, outputs, progress, observer,
                                 description or f"evaluate ({name})", images)
    totals = {}
    for blobs in per_batch:
        for blob in outputs:
            value = np.asarray(blobs[blob], np.float32)
            totals[blob] = totals[blob] + value if blob in totals else value.copy()
    images = images if isinstance(images, int) else sum(images)
    scores = {key: total / np.float32(iterations) for key, total in totals.items()}
    scores = {k: (np.float32(v) if np.ndim(v) == 0 else v) for k, v in scores.items()}
    return ClassificationResult(scores, iterations, images, name)


def _forward_all(runtime, batches, outputs, progress, observer, description, images):
    """The output blobs of each batch, as one process runs them (``images`` gets each batch's
    image count)."""
    for batch in show_progress(batches, description, "batch", progress, total=len(batches)):
        images.append(len(next(iter(batch.values()))))
        blobs = runtime.forward(batch, observer=observer) if observer else runtime.forward(batch)
        yield {name: blobs[name] for name in outputs}
