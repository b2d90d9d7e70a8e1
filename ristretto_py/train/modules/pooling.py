"""Pooling in torch with Caffe's window rules (the geometry comes from the numpy layer:
``ceil`` output size, the last window dropped when it would start in the padding).

The bottom is padded explicitly (``pad`` before, and after it as far as the last window
reaches), then pooled with no implicit padding. MAX pads with -inf, so padding never wins and
the gradient goes to the window's maximum (the first one on ties, as Caffe's mask). AVE sums
the zero-padded window and divides by Caffe's count, the window clipped to ``H + pad``.
STOCHASTIC is its TEST-time form, ``sum(x^2) / sum(x)``; Caffe samples during training on the
GPU only, which is not reproduced.
"""
import numpy as np
import torch
import torch.nn.functional as F

from ...layers.pooling import FLT_MIN, _ave_divisor, _tail_pad
from .base import TorchLayer, register, unsupported


def _pad(x, pad, tails, value):
    (ph, pw), (th, tw) = pad, tails
    if not (ph or pw or th or tw):
        return x
    return F.pad(x, (pw, tw, ph, th), value=value)


def window_sums(x, kernel, stride, pad, out):
    """The sum of every zero-padded window (Caffe's geometry), shape (N, C, *out)."""
    tails = tuple(_tail_pad(size, k, s, p, o)
                  for size, k, s, p, o in zip(x.shape[2:], kernel, stride, pad, out))
    padded = _pad(x, pad, tails, 0.0)
    sums = F.avg_pool2d(padded, kernel, stride, divisor_override=1)
    return sums[:, :, :out[0], :out[1]]


def average_pool(x, kernel, stride, pad, out):
    """Caffe's AVE pooling: window sums over the count of the window clipped to ``H + pad``."""
    divisor = _ave_divisor(tuple(x.shape[2:]), kernel, stride, pad, out)
    divisor = torch.as_tensor(np.asarray(divisor, np.float32), device=x.device).to(x.dtype)
    return window_sums(x, kernel, stride, pad, out) / divisor


@register
class Pooling(TorchLayer):
    type_name = "Pooling"

    def forward(self, bottoms):
        x = bottoms[0]
        impl = self.impl
        kernel, out = impl._geometry(tuple(x.shape))
        method = impl.method
        if impl.global_pooling and method == "MAX":
            return [x.amax(dim=(2, 3), keepdim=True)]
        if impl.global_pooling and method == "AVE":
            return [x.mean(dim=(2, 3), keepdim=True)]
        if method == "MAX":
            tails = tuple(_tail_pad(size, k, s, p, o) for size, k, s, p, o in
                          zip(x.shape[2:], kernel, impl.stride, impl.pad, out))
            padded = _pad(x, impl.pad, tails, float("-inf"))
            y = F.max_pool2d(padded, kernel, impl.stride)
            return [y[:, :, :out[0], :out[1]]]
        if method == "AVE":
            return [average_pool(x, kernel, impl.stride, impl.pad, out)]
        if self.phase == "TRAIN":
            raise unsupported(self.layer_name, "STOCHASTIC pooling samples during training (on "
                              "Caffe's GPU build only); it is not reproduced: use MAX or AVE")
        squares = window_sums(x * x, kernel, impl.stride, (0, 0), out)
        sums = window_sums(x, kernel, impl.stride, (0, 0), out) + FLT_MIN
        return [squares / sums]
