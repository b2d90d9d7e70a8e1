"""Learned linear layers in torch: Convolution (grouped, dilated), Deconvolution and
InnerProduct (``axis``, ``transpose``), with Caffe's default fillers (``weight_filler`` and
``bias_filler``, constant 0 when absent).

Caffe's Convolution is torch's ``conv2d`` (the same (O, C/group, kh, kw) weights, the same
floor output size); Caffe's Deconvolution is ``conv_transpose2d`` (weights (C, O/group, kh, kw),
output ``s (H - 1) + d (k - 1) + 1 - 2p``); InnerProduct flattens the axes from ``axis`` on.
The Ristretto types subclass these and change only ``weights`` (the trimmed parameters).
A ``weight_quantization_param`` makes ``weights`` return the quantized weight (see
``train.modules.weight_quantizers``), on these types and on the Ristretto ones.
"""
import math

import torch.nn.functional as F

from ...layers.base import normalize_axis
from .weight_quantizers import quantize_weight
from .base import TorchLayer, register


class _Learned(TorchLayer):
    """A layer whose forward is one linear operation of bottom 0 with weights and a bias."""
    has_blobs = True

    param_name = "convolution_param"

    def setup(self):
        self.bias_term = bool(self.impl.bias_term)

    @classmethod
    def fillers(cls, spec, count):
        p = getattr(spec, cls.param_name)
        return [p.weight_filler, p.bias_filler][:count]

    def weights(self):
        """(weight, bias or None) as the operation uses them: with a training-time quantizer
        (``weight_quantization_param``), the quantized weight (``weight_quantizers``)."""
        weight, bias = self.blob(0), (self.blob(1) if self.bias_term else None)
        quantizer = self.impl.weight_quantizer
        if quantizer is None:
            return weight, bias
        rng = self.context.rng if self.phase == "TRAIN" else None
        return quantize_weight(weight, quantizer, rng), bias

    def operate(self, x, weight, bias):
        raise NotImplementedError

    def forward(self, bottoms):
        weight, bias = self.weights()
        return [self.operate(bottoms[0], weight, bias)]


@register
class Convolution(_Learned):
    type_name = "Convolution"

    def operate(self, x, weight, bias):
        impl = self.impl
        return F.conv2d(x, weight, bias, stride=impl.stride, padding=impl.pad,
                        dilation=impl.dilation, groups=impl.group)


@register
class Deconvolution(_Learned):
    type_name = "Deconvolution"

    def operate(self, x, weight, bias):
        impl = self.impl
        return F.conv_transpose2d(x, weight, bias, stride=impl.stride, padding=impl.pad,
                                  dilation=impl.dilation, groups=impl.group)


@register
class InnerProduct(_Learned):
    type_name = "InnerProduct"
    param_name = "inner_product_param"

    def operate(self, x, weight, bias):
        axis = normalize_axis(self.impl.axis_param, x.dim(), self.layer_name)
        leading = tuple(x.shape[:axis])
        rows = x.reshape(math.prod(leading), -1)
        y = F.linear(rows, weight.t() if self.impl.transpose else weight, bias)
        return y.reshape(leading + (self.impl.num_output,))
