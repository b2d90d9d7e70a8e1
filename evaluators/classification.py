"""Classification accuracy as Caffe's ``test`` computes it: the net's own Data layer feeds
batches from its LMDB; every output blob (Accuracy top-1/top-k, loss) is averaged over the
iterations."""
import dataclasses

import numpy as np

from ..errors import NetError
from ..lmdb_data import DataLayerFeed
from ..runtime import make_runtime


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


def fetch_batches(net, iterations, data_source=None, seed=0):
    """Read ``iterations`` batches from the net's Data layer, as a new Caffe net would: from
    the start of the database, wrapping around at its end. Searches read them once and
    evaluate every candidate on the same list."""
    if iterations < 1:
        raise ValueError("iterations must be at least 1")
    feed = DataLayerFeed(data_layer(net), net.phase, seed=seed, source=data_source)
    try:
        return [feed.next_batch() for _ in range(iterations)]
    finally:
        feed.close()


def evaluate_classification(net, iterations, backend="numpy", runtime=None, progress=False,
                            data_source=None, seed=0, batches=None, observer=None,
                            description=None):
    """Run ``iterations`` batches of the net's Data layer (or the given ``batches``) through a
    runtime and average every output. As Caffe's ``test`` and Ristretto's ``quantize``, sums
    and means are float32, so that scores and the decisions taken on them are Caffe's."""
    if batches is None:
        batches = fetch_batches(net, iterations, data_source, seed)
    elif len(batches) != iterations:
        raise ValueError(f"{len(batches)} batches given for {iterations} iterations")
    runtime = runtime or make_runtime(net, backend)
    outputs = [b for b in net.output_blobs if b not in net.input_blobs]
    totals = {}
    steps = batches
    if progress:
        from tqdm import tqdm
        steps = tqdm(batches, desc=description or f"evaluate ({runtime.name})", unit="batch",
                     leave=False)
    for batch in steps:
        blobs = runtime.forward(batch, observer=observer) if observer else runtime.forward(batch)
        for name in outputs:
            value = np.asarray(blobs[name], np.float32)
            totals[name] = totals[name] + value if name in totals else value.copy()
    scores = {name: total / np.float32(iterations) for name, total in totals.items()}
    scores = {k: (np.float32(v) if np.ndim(v) == 0 else v) for k, v in scores.items()}
    images = sum(len(next(iter(batch.values()))) for batch in batches)
    return ClassificationResult(scores, iterations, images, runtime.name)
