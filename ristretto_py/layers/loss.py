"""Layers that score or pick classes: Accuracy, SoftmaxWithLoss, EuclideanLoss,
SigmoidCrossEntropyLoss and ArgMax.

Accuracy uses Caffe's rule: a sample is correct when fewer than ``top_k`` *other* classes score
at least as high as the true class, so a tie with the true class counts against it. The result is
float32 ``correct / count`` over the labels not ignored. ArgMax orders (value, index) pairs
descending, so equal values list the larger index first. These three run in numpy on the
onnxruntime backend too (the export's tail): ONNX's TopK breaks ties the other way and the
scores are cheap. EuclideanLoss is ``sum((a - b)^2) / (2 N)``; SigmoidCrossEntropyLoss is Caffe's
overflow-free cross-entropy of sigmoid(x) against targets in [0, 1], with ``ignore_label`` and a
normalization that defaults to BATCH_SIZE (SoftmaxWithLoss's defaults to VALID). The loss
layers have no ONNX export: they run in numpy after the ONNX session.
"""
import numpy as np

from .base import LayerImpl, as_f32, normalize_axis, register

FLT_MIN = np.float32(np.finfo(np.float32).tiny)


def _split_axis(shape, axis):
    """(outer, classes, inner) counts around ``axis``."""
    return (int(np.prod(shape[:axis], dtype=np.int64)), int(shape[axis]),
            int(np.prod(shape[axis + 1:], dtype=np.int64)))


def _labels(layer, label, outer, inner, classes, ignore):
    label = np.asarray(label, np.float32).reshape(-1)
    if label.size != outer * inner:
        raise layer.error(f"the label blob has {label.size} values; expected {outer * inner} "
                          "(one per prediction)")
    values = label.astype(np.int64).reshape(outer, inner)   # Caffe: static_cast<int>
    valid = np.ones_like(values, dtype=bool) if ignore is None else values != ignore
    bad = valid & ((values < 0) | (values >= classes))
    if bad.any():
        raise layer.error(f"label {int(values[bad][0])} is outside [0, {classes})")
    return values, valid


class _Scored(LayerImpl):
    bottoms_range = (2, 2)
    onnx_exportable = False

    def _class_axis(self, shape):
        return normalize_axis(self.axis_param, len(shape), self.name)

    def _check_labels(self, bottom_shapes):
        scores, labels = bottom_shapes
        axis = self._class_axis(scores)
        outer, _, inner = _split_axis(scores, axis)
        if int(np.prod(labels, dtype=np.int64)) != outer * inner:
            raise self.error(f"label shape {list(labels)} does not match the scores "
                             f"{list(scores)} (need {outer * inner} labels)")
        return axis


@register
class Accuracy(_Scored):
    type_name = "Accuracy"
    tops_range = (1, 2)

    def setup(self, spec):
        p = spec.accuracy_param
        self.top_k = int(p.top_k)
        self.axis_param = int(p.axis)
        self.ignore = int(p.ignore_label) if p.HasField("ignore_label") else None

    def output_shapes(self, bottom_shapes):
        axis = self._check_labels(bottom_shapes)
        shapes = [()]
        if len(self.layer.tops) > 1:
            shapes.append((int(bottom_shapes[0][axis]),))
        return shapes

    def forward(self, bottoms, blobs):
        scores = as_f32(bottoms[0])
        axis = self._class_axis(scores.shape)
        outer, classes, inner = _split_axis(scores.shape, axis)
        scores = scores.reshape(outer, classes, inner)
        labels, valid = _labels(self, bottoms[1], outer, inner, classes, self.ignore)
        safe = np.where(valid, labels, 0)
        true_score = np.take_along_axis(scores, safe[:, None, :], axis=1)     # (outer, 1, inner)
        others_at_least = np.count_nonzero(scores >= true_score, axis=1) - 1
        correct = valid & (others_at_least < self.top_k)
        count = int(np.count_nonzero(valid))
        accuracy = np.float32(0) if count == 0 else np.float32(np.count_nonzero(correct)) / np.float32(count)
        tops = [np.asarray(accuracy, np.float32)]
        if len(self.layer.tops) > 1:
            per_class_total = np.bincount(labels[valid], minlength=classes).astype(np.float32)
            per_class_correct = np.bincount(labels[correct], minlength=classes).astype(np.float32)
            with np.errstate(invalid="ignore", divide="ignore"):
                tops.append(np.where(per_class_total > 0, per_class_correct / per_class_total,
                                     np.float32(0)).astype(np.float32))
        return tops


@register
class SoftmaxWithLoss(_Scored):
    """Mean (by ``normalization``) of -log softmax(x)[label], clamped at FLT_MIN like Caffe."""
    type_name = "SoftmaxWithLoss"
    tops_range = (1, 2)

    def setup(self, spec):
        self.axis_param = int(spec.softmax_param.axis)
        loss = spec.loss_param
        self.ignore = int(loss.ignore_label) if loss.HasField("ignore_label") else None
        self.normalization = _normalization(loss, "VALID")

    def output_shapes(self, bottom_shapes):
        self._check_labels(bottom_shapes)
        shapes = [()]
        if len(self.layer.tops) > 1:
            shapes.append(tuple(bottom_shapes[0]))
        return shapes

    def forward(self, bottoms, blobs):
        x = as_f32(bottoms[0])
        axis = self._class_axis(x.shape)
        prob = softmax(x, axis)
        outer, classes, inner = _split_axis(x.shape, axis)
        labels, valid = _labels(self, bottoms[1], outer, inner, classes, self.ignore)
        picked = np.take_along_axis(prob.reshape(outer, classes, inner),
                                    np.where(valid, labels, 0)[:, None, :], axis=1)[:, 0]
        losses = -np.log(np.maximum(picked, FLT_MIN))
        total = np.float32(np.sum(losses[valid], dtype=np.float32))
        normalizer = loss_normalizer(self.normalization, outer, inner,
                                     int(np.count_nonzero(valid)))
        loss = np.asarray(total / np.float32(normalizer), np.float32)
        return [loss, prob] if len(self.layer.tops) > 1 else [loss]


def _normalization(loss_param, default):
    """Caffe's rule: ``normalization`` if given, else the legacy ``normalize`` flag (VALID or
    BATCH_SIZE), else ``default``."""
    if loss_param.HasField("normalization"):
        return loss_param.NormalizationMode.Name(loss_param.normalization)
    if loss_param.HasField("normalize"):
        return "VALID" if loss_param.normalize else "BATCH_SIZE"
    return default


def loss_normalizer(mode, outer, inner, valid_count):
    """Caffe's ``get_normalizer``: the divisor of a summed loss, at least 1."""
    normalizer = {"FULL": outer * inner, "VALID": valid_count, "BATCH_SIZE": outer,
                  "NONE": 1}[mode]
    return max(1.0, float(normalizer))


class _PairLoss(LayerImpl):
    """A loss of two equally sized bottoms with one scalar top (Caffe's LossLayer)."""
    bottoms_range = (2, 2)
    onnx_exportable = False

    def output_shapes(self, bottom_shapes):
        first, second = (tuple(s) for s in bottom_shapes)
        if not first or not second or first[0] != second[0]:
            raise self.error(f"bottoms {list(first)} and {list(second)} must share the first "
                             "(batch) dimension")
        if int(np.prod(first, dtype=np.int64)) != int(np.prod(second, dtype=np.int64)):
            raise self.error(f"bottoms {list(first)} and {list(second)} must hold the same "
                             "number of values")
        return [()]


@register
class EuclideanLoss(_PairLoss):
    """``sum((b0 - b1)^2) / N / 2`` with N the batch size (bottom 0's first axis)."""
    type_name = "EuclideanLoss"

    def forward(self, bottoms, blobs):
        diff = (as_f32(bottoms[0]).reshape(-1) - as_f32(bottoms[1]).reshape(-1)).astype(np.float32)
        dot = np.float32(np.dot(diff, diff))
        return [np.asarray(dot / np.float32(bottoms[0].shape[0]) / np.float32(2), np.float32)]


@register
class SigmoidCrossEntropyLoss(_PairLoss):
    """``-sum(x (t - [x >= 0]) - log(1 + exp(x - 2 x [x >= 0])))`` over the targets that are
    not ``ignore_label`` (compared as ints), divided by the normalizer."""
    type_name = "SigmoidCrossEntropyLoss"

    def setup(self, spec):
        loss = spec.loss_param
        self.ignore = int(loss.ignore_label) if loss.HasField("ignore_label") else None
        self.normalization = _normalization(loss, "BATCH_SIZE")

    def forward(self, bottoms, blobs):
        x = as_f32(bottoms[0]).reshape(-1)
        target = as_f32(bottoms[1]).reshape(-1)
        valid = np.ones(x.shape, bool) if self.ignore is None else \
            target.astype(np.int64) != self.ignore
        positive = (x >= 0).astype(np.float32)
        softplus = np.log(np.float32(1) + np.exp(x - np.float32(2) * x * positive))
        terms = x * (target - positive) - softplus
        total = -np.sum(terms[valid], dtype=np.float32)
        outer = int(bottoms[0].shape[0])
        normalizer = loss_normalizer(self.normalization, outer, x.size // max(outer, 1),
                                     int(np.count_nonzero(valid)))
        return [np.asarray(np.float32(total) / np.float32(normalizer), np.float32)]


def softmax(x, axis):
    """Caffe's Softmax: subtract the maximum along ``axis``, exponentiate, normalise."""
    shifted = x - np.max(x, axis=axis, keepdims=True)
    e = np.exp(shifted, dtype=np.float32)
    return (e / np.sum(e, axis=axis, keepdims=True, dtype=np.float32)).astype(np.float32)


@register
class ArgMax(LayerImpl):
    type_name = "ArgMax"
    onnx_exportable = False

    def setup(self, spec):
        p = spec.argmax_param
        self.out_max_val = bool(p.out_max_val)
        self.top_k = int(p.top_k)
        self.axis_param = int(p.axis) if p.HasField("axis") else None
        if self.top_k < 1:
            raise self.error("top_k must be at least 1")

    def _axis(self, shape):
        return None if self.axis_param is None else normalize_axis(self.axis_param, len(shape), self.name)

    def output_shapes(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        axis = self._axis(shape)
        if axis is not None:
            if self.top_k > shape[axis]:
                raise self.error(f"top_k {self.top_k} exceeds the {shape[axis]} values along axis {axis}")
            return [shape[:axis] + (self.top_k,) + shape[axis + 1:]]
        per_item = int(np.prod(shape[1:], dtype=np.int64))
        if self.top_k > per_item:
            raise self.error(f"top_k {self.top_k} exceeds the {per_item} values per item")
        out = [1] * max(3, len(shape))
        out[0], out[2] = shape[0], self.top_k
        if self.out_max_val:
            out[1] = 2
        return [tuple(out)]

    def forward(self, bottoms, blobs):
        x = as_f32(bottoms[0])
        axis = self._axis(x.shape)
        work = x.reshape(x.shape[0], -1) if axis is None else np.moveaxis(x, axis, -1)
        n = work.shape[-1]
        # Descending by value, ties by larger index: stable sort of the reversed values.
        order = np.argsort(-work[..., ::-1], axis=-1, kind="stable")[..., :self.top_k]
        index = (n - 1 - order)
        values = np.take_along_axis(work, index, axis=-1)
        index = index.astype(np.float32)
        out_shape = self.output_shapes([x.shape])[0]
        if axis is not None:
            result = values if self.out_max_val else index
            return [np.ascontiguousarray(np.moveaxis(result, -1, axis)).reshape(out_shape)]
        if self.out_max_val:
            return [np.concatenate([index, values], axis=1).reshape(out_shape)]
        return [index.reshape(out_shape)]
