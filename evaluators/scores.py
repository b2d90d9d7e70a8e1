"""The measures a search keeps within a margin, one object per measure: given the outputs of a
net over the search's batches it returns one number, and it says whether a candidate's number
is close enough to the float net's.

* ``accuracy``: the first scalar output (an Accuracy layer's top-1), averaged over the batches in
  float32 as Caffe's ``test`` and Ristretto's ``quantize`` do. Margin: percentage points.
* ``agreement``: the share of images whose top-1 class equals the float net's; no labels.
  Margin: percentage points (the float net scores 1).
* ``l2`` / ``cosine``: the mean over images of the distance of one blob to the float net's, lower
  is better (LPDNN's sensitivity measure): ``||y - y_float|| / ||y_float||``, or
  ``1 - cos(y, y_float)``. The float net scores 0; a candidate passes while its distance is at
  most ``max_distance``.
* ``lfw``: 10-fold LFW verification accuracy of a feature blob (``evaluators.lfw``); its batches
  are the pairs' images. Margin: percentage points.

A score is bound to the float net's outputs once (``bind``) and then scores any candidate.
"""
import numpy as np

from ristretto_py.errors import NetError

from . import lfw

KINDS = ("accuracy", "agreement", "l2", "cosine", "lfw")


class Score:
    """Base: higher is better, margin in percentage points."""
    kind = None
    higher_is_better = True

    def __init__(self, blob=None, margin=2.0):
        self.blob, self.margin = blob, float(margin)
        self.bound = False

    def check(self, net):
        """Raise NetError when ``net`` (the float TEST net) cannot be scored this way; settle
        the blob(s) to keep."""

    def blobs(self):
        return [self.blob]

    def bind(self, outputs):
        """Take the float net's outputs (one dict per batch) as the reference."""
        self.bound = True

    def __call__(self, outputs):
        raise NotImplementedError

    def passes(self, score, baseline):
        # Ristretto's rule: score + margin / 100 >= baseline (float score, double margin).
        return float(score) + self.margin / 100 >= float(baseline)

    def drop(self, score, baseline):
        """How much worse ``score`` is than ``baseline`` (positive: worse)."""
        return float(baseline) - float(score)

    def describe(self):
        return f"{self.kind} of '{self.blob}', margin {self.margin:g} points"

    def floor(self, baseline):
        """The worst passing score, for reports."""
        return float(baseline) - self.margin / 100


def _output_blobs(net):
    return [b for b in net.output_blobs if b not in net.input_blobs]


def class_blob(net, blob=None):
    """The blob holding class scores: ``blob``, else the first Accuracy layer's input, else the
    net's last output."""
    if blob is not None:
        if blob not in net.blob_names:
            raise NetError(f"--score_blob '{blob}' is not a blob of the TEST net", path=net.source)
        return blob
    for layer in net.layers:
        if layer.type == "Accuracy":
            return layer.bottoms[0]
    outputs = _output_blobs(net)
    if not outputs:
        raise NetError("the TEST net has no output to score", path=net.source)
    return outputs[-1]


class AccuracyScore(Score):
    kind = "accuracy"

    def check(self, net):
        outputs = _output_blobs(net)
        if self.blob is None and not any(l.type == "Accuracy" for l in net.layers):
            raise NetError("the TEST net has no Accuracy layer to score; add one, pass "
                           "--score_blob, or use --score agreement|l2|cosine (no labels)",
                           path=net.source)
        if self.blob is not None and self.blob not in outputs:
            raise NetError(f"--score_blob '{self.blob}' is not an output of the TEST net "
                           f"(outputs: {', '.join(outputs)})", path=net.source)
        self._outputs = outputs

    def blobs(self):
        return [self.blob] if self.blob is not None else self._outputs

    def __call__(self, outputs):
        name = self.blob or next(o for o in self._outputs if np.ndim(outputs[0][o]) == 0)
        total = np.float32(0)
        for batch in outputs:
            total = np.float32(total + np.float32(batch[name]))
        return float(np.float32(total / np.float32(len(outputs))))

    def describe(self):
        return f"accuracy ({self.blob or 'the first scalar output'}), margin {self.margin:g} points"


class AgreementScore(Score):
    kind = "agreement"

    def check(self, net):
        self.blob = class_blob(net, self.blob)

    def bind(self, outputs):
        self.reference = [_top1(batch[self.blob]) for batch in outputs]
        super().bind(outputs)

    def __call__(self, outputs):
        same = np.concatenate([_top1(batch[self.blob]) == ref
                               for batch, ref in zip(outputs, self.reference)])
        return float(np.mean(same))

    def describe(self):
        return f"top-1 agreement with the float net on '{self.blob}', margin {self.margin:g} points"


def _top1(values):
    values = np.asarray(values)
    return np.argmax(values.reshape(len(values), -1), axis=1)


class DistanceScore(Score):
    """``l2`` or ``cosine`` distance of one blob to the float net's, per image, averaged."""
    higher_is_better = False

    def __init__(self, kind, blob=None, max_distance=0.05):
        if kind not in ("l2", "cosine"):
            raise ValueError(f"distance must be l2 or cosine, not {kind!r}")
        super().__init__(blob, 0.0)
        self.kind, self.max_distance = kind, float(max_distance)

    def check(self, net):
        self.blob = class_blob(net, self.blob)

    def bind(self, outputs):
        self.reference = [_rows(batch[self.blob]) for batch in outputs]
        super().bind(outputs)

    def __call__(self, outputs):
        values = []
        for batch, ref in zip(outputs, self.reference):
            y = _rows(batch[self.blob])
            if self.kind == "l2":
                values.append(np.linalg.norm(y - ref, axis=1)
                              / np.maximum(np.linalg.norm(ref, axis=1), 1e-30))
            else:
                norms = np.linalg.norm(y, axis=1) * np.linalg.norm(ref, axis=1)
                cosine = np.sum(y * ref, axis=1) / np.maximum(norms, 1e-30)
                values.append(1.0 - np.where(norms > 0, cosine, np.all(y == ref, axis=1)))
        return float(np.mean(np.concatenate(values)))

    def passes(self, score, baseline):
        return float(score) <= self.max_distance

    def drop(self, score, baseline):
        return float(score) - float(baseline)

    def floor(self, baseline):
        return self.max_distance

    def describe(self):
        what = "relative L2 distance" if self.kind == "l2" else "cosine distance"
        return f"mean {what} of '{self.blob}' to the float net's, at most {self.max_distance:g}"


def _rows(values):
    values = np.asarray(values, np.float64)
    return values.reshape(len(values), -1)


class LfwScore(Score):
    """LFW verification accuracy of ``blob`` (the features); ``images`` are the pairs' image
    paths in the order the batches hold them."""
    kind = "lfw"

    def __init__(self, blob, root, folds, images, protocol="folds", dev=(), normalize=None,
                 margin=2.0):
        super().__init__(blob, margin)
        self.root, self.folds, self.images = root, folds, list(images)
        self.protocol, self.dev, self.normalize = protocol, list(dev), normalize
        self.result = None

    def check(self, net):
        if self.blob not in net.blob_names:
            raise NetError(f"--feature_blob '{self.blob}' is not a blob of the net",
                           path=net.source)

    def verification(self, outputs):
        """The full ``lfw.VerificationResult`` of the net that gave ``outputs``."""
        values = np.concatenate([_rows(batch[self.blob]) for batch in outputs])
        if self.normalize == "l2":
            values = values / np.maximum(np.linalg.norm(values, axis=1, keepdims=True), 1e-12)
        features = dict(zip(self.images, values))
        fold_d = [lfw.distances(pairs, features, self.root) for pairs in self.folds]
        fold_s = [np.array([p.same for p in pairs]) for pairs in self.folds]
        dev = None
        if self.dev:
            dev = (lfw.distances(self.dev, features, self.root), np.array([p.same for p in self.dev]))
        return lfw.verify(fold_d, fold_s, self.protocol, dev), fold_d, fold_s

    def __call__(self, outputs):
        return self.verification(outputs)[0].mean

    def describe(self):
        return (f"LFW verification accuracy ({self.protocol} protocol) of '{self.blob}', margin "
                f"{self.margin:g} points")
