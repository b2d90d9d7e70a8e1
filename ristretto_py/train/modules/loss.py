"""Loss and scoring layers in torch: SoftmaxWithLoss, EuclideanLoss, SigmoidCrossEntropyLoss
and Accuracy (ArgMax runs its numpy forward: indices have no gradient).

The gradients are Caffe's: SoftmaxWithLoss gives ``(prob - onehot) / normalizer`` to the scores
(0 at ``ignore_label``), also where its forward clamps the probability at FLT_MIN; its second
top (the probabilities) passes no gradient back, as Caffe's backward reads only the loss's.
SigmoidCrossEntropyLoss gives ``(sigmoid(x) - t) / normalizer`` (0 where ignored);
EuclideanLoss ``±(a - b) / N`` to both bottoms. Labels and targets never receive a gradient
(Caffe refuses to backpropagate to them). Normalizers follow Caffe's ``get_normalizer``:
FULL, VALID (the values not ignored), BATCH_SIZE or NONE, at least 1.
"""
import numpy as np
import torch

from ...layers.loss import FLT_MIN, _split_axis, loss_normalizer
from .base import TorchLayer, register, straight_through

LOG_FLT_MIN = float(np.log(FLT_MIN))


def _labels(layer, label, outer, inner, classes, ignore):
    """Integer labels (outer, inner) truncated as Caffe's ``static_cast<int>``, and the mask of
    those not ignored; a label outside [0, classes) is an error."""
    values = label.detach().reshape(-1)
    if values.numel() != outer * inner:
        raise layer.error(f"the label blob has {values.numel()} values; expected "
                          f"{outer * inner} (one per prediction)")
    values = values.to(torch.int64).reshape(outer, inner)
    valid = torch.ones_like(values, dtype=torch.bool) if ignore is None else values != ignore
    if bool((valid & ((values < 0) | (values >= classes))).any()):
        bad = values[valid & ((values < 0) | (values >= classes))][0]
        raise layer.error(f"label {int(bad)} is outside [0, {classes})")
    return values, valid


def _normalizer(mode, outer, inner, valid):
    """``loss_normalizer``, with the VALID count kept on the device (no synchronisation)."""
    if mode == "VALID":
        return valid.sum().clamp(min=1).to(torch.float32)
    return loss_normalizer(mode, outer, inner, 0)


@register
class SoftmaxWithLoss(TorchLayer):
    type_name = "SoftmaxWithLoss"

    def forward(self, bottoms):
        x = bottoms[0]
        impl = self.impl
        axis = impl._class_axis(tuple(x.shape))
        outer, classes, inner = _split_axis(tuple(x.shape), axis)
        labels, valid = _labels(impl, bottoms[1], outer, inner, classes, impl.ignore)
        log_prob = torch.log_softmax(x, dim=axis).reshape(outer, classes, inner)
        safe = torch.where(valid, labels, torch.zeros_like(labels))
        picked = torch.gather(log_prob, 1, safe.unsqueeze(1)).squeeze(1)
        # Caffe clamps the probability at FLT_MIN in the loss but not in its gradient.
        picked = straight_through(picked, picked.detach().clamp(min=LOG_FLT_MIN))
        total = -(picked * valid.to(picked.dtype)).sum()
        loss = total / _normalizer(impl.normalization, outer, inner, valid)
        if len(impl.layer.tops) > 1:
            return [loss, torch.softmax(x, dim=axis).detach()]
        return [loss]


@register
class EuclideanLoss(TorchLayer):
    type_name = "EuclideanLoss"

    def forward(self, bottoms):
        a, b = bottoms
        diff = a.reshape(-1) - b.reshape(-1)
        return [(diff * diff).sum() / a.shape[0] / 2.0]


@register
class SigmoidCrossEntropyLoss(TorchLayer):
    type_name = "SigmoidCrossEntropyLoss"

    def forward(self, bottoms):
        impl = self.impl
        x = bottoms[0].reshape(-1)
        target = bottoms[1].detach().reshape(-1).to(x.dtype)
        if impl.ignore is None:
            valid = torch.ones_like(x, dtype=torch.bool)
        else:
            valid = target.to(torch.int64) != impl.ignore
        positive = (x.detach() >= 0).to(x.dtype)
        terms = x * (target - positive) - torch.log(1.0 + torch.exp(x - 2.0 * x * positive))
        total = -(terms * valid.to(x.dtype)).sum()
        outer = int(bottoms[0].shape[0])
        inner = x.numel() // max(outer, 1)
        return [total / _normalizer(impl.normalization, outer, inner, valid)]


@register
class Accuracy(TorchLayer):
    type_name = "Accuracy"
    differentiable = False

    def forward(self, bottoms):
        impl = self.impl
        scores = bottoms[0].detach()
        axis = impl._class_axis(tuple(scores.shape))
        outer, classes, inner = _split_axis(tuple(scores.shape), axis)
        scores = scores.reshape(outer, classes, inner)
        labels, valid = _labels(impl, bottoms[1], outer, inner, classes, impl.ignore)
        safe = torch.where(valid, labels, torch.zeros_like(labels))
        true_score = torch.gather(scores, 1, safe.unsqueeze(1))
        others_at_least = (scores >= true_score).sum(dim=1) - 1
        correct = valid & (others_at_least < impl.top_k)
        count = valid.sum()
        accuracy = torch.where(count > 0, correct.sum().to(torch.float32) /
                               count.clamp(min=1).to(torch.float32),
                               torch.zeros((), device=scores.device))
        tops = [accuracy.to(scores.dtype)]
        if len(impl.layer.tops) > 1:
            total = torch.bincount(labels[valid], minlength=classes).to(torch.float32)
            right = torch.bincount(labels[correct], minlength=classes).to(torch.float32)
            per_class = torch.where(total > 0, right / total.clamp(min=1), torch.zeros_like(total))
            tops.append(per_class.to(scores.dtype))
        return tops
