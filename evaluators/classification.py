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
    value = np.asarray(value)
    return float(value) if value.ndim == 0 else value.tolist()


def data_layer(net):
    layers = [l for l in net.source_layers if l.type == "Data"]
    if len(layers) != 1:
        raise NetError(f"the {net.phase} net needs exactly one Data layer to read its dataset, "
                       f"it has {len(layers)}", path=net.source)
    return layers[0]


def evaluate_classification(net, iterations, backend="numpy", runtime=None, progress=False,
                            data_source=None, seed=0):
    """Run ``iterations`` batches of the net's Data layer through a runtime; average outputs."""
    if iterations < 1:
        raise ValueError("iterations must be at least 1")
    layer = data_layer(net)
    runtime = runtime or make_runtime(net, backend)
    outputs = [b for b in net.output_blobs if b not in net.input_blobs]
    feed = DataLayerFeed(layer, net.phase, seed=seed, source=data_source)
    totals = {}
    steps = range(iterations)
    if progress:
        from tqdm import tqdm
        steps = tqdm(steps, desc=f"evaluate ({runtime.name})", unit="batch", leave=False)
    try:
        for _ in steps:
            blobs = runtime.forward(feed.next_batch())
            for name in outputs:
                value = np.asarray(blobs[name], np.float64)
                totals[name] = totals.get(name, 0.0) + value
    finally:
        feed.close()
    scores = {name: total / iterations for name, total in totals.items()}
    scores = {k: (float(v) if np.ndim(v) == 0 else v) for k, v in scores.items()}
    return ClassificationResult(scores, iterations, iterations * feed.batch_size, runtime.name)
