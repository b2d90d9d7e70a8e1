"""Ristretto's layers in torch, with its fine-tuning semantics (``src/caffe/ristretto/layers`` of
pmgysel/caffe): ConvolutionRistretto, DeconvolutionRistretto, FcRistretto, LRNRistretto.

The blobs stay full-precision shadow weights: the solver updates them and snapshots save them.
Each forward pass trims a copy of the weights and the bias to the layer's parameter format
(``precision.LayerPrecision.trim_params``: the bias too, with the weights' format, except in
power-of-two mode) and runs the float operation of the base type on the trimmed copies:
* TRAIN: the copies are trimmed with STOCHASTIC rounding whatever ``rounding_scheme`` says
  (Ristretto's ``rounding = phase_ == TEST ? rounding_ : STOCHASTIC``), drawn from the net's
  seeded numpy generator, weights then bias; the layer's input and output are not trimmed.
* TRAIN with ``--qat activations`` (``TrainContext.quantize_activations``; ristretto-py's
  quantization-aware training, not Ristretto's): the input and output are trimmed as in TEST,
  with the layer's own rounding, and their gradient is zero where the format saturated the
  value (``saturating_straight_through``); the weights stay as in Ristretto's TRAIN.
* TEST: as the numpy runtime: the input is trimmed (in place: the blob, and blobs sharing its
  data, are rebound to the trimmed tensor), then the parameters with the layer's rounding, the
  float operation runs, the output is trimmed; draws, if any, in that order.
Gradients pass straight through every trimming (``straight_through``): Ristretto's backward
applies the top gradient to the untrimmed bottom data for the weight gradient, accumulates it
into the shadow weights' diff, and uses the trimmed weights for the bottom gradient, which is
exactly autograd through ``conv(x, w + [trim(w) - w]_no_grad)``.

LRNRistretto has no TRAIN/TEST difference in Ristretto (its CUDA forward always rounds every
intermediate to mini-float with NEAREST and draws nothing); its backward is the float LRN's.
Here the forward is the numpy layer's and the gradient that of the float LRN at the same input
(Ristretto's backward formula evaluates the float gradient with its stored trimmed scale and
output, a difference of mini-float rounding in the gradient only).
"""
import dataclasses

import torch

from ... import numerics
from .base import (TorchLayer, register, saturating_straight_through, straight_through,
                   to_numpy)
from .conv import Convolution, Deconvolution, InnerProduct
from .normalization import lrn


class _Trimmed:
    """Mixin over a torch Convolution/Deconvolution/InnerProduct module: Ristretto's trimming
    around its operation. ``self.impl`` is the numpy Ristretto layer (its ``precision``)."""

    def setup(self):
        super().setup()
        self._cached = None

    def _precision(self):
        precision = self.impl.precision
        if self.phase == "TRAIN":
            return dataclasses.replace(precision, rounding=numerics.STOCHASTIC)
        return precision

    def weights(self):
        weight, bias = super().weights()
        if self.impl.weight_quantizer is not None:   # quantized by the base: the bias stays float
            return weight, bias
        shadow = [weight] if bias is None else [weight, bias]
        precision = self._precision()
        cache = self.phase == "TEST" and precision.rounding == numerics.NEAREST
        if cache and self._cached is not None and self._cached[0] == self.context.compat and all(
                torch.equal(a, b) for a, b in zip(self._cached[1], shadow)):
            trimmed = self._cached[2]
        else:
            trimmed = precision.trim_params([to_numpy(t) for t in shadow],
                                            self.context.run_context(), self.impl.bias_term,
                                            self.impl.channel_axis)
            self._cached = ((self.context.compat, [t.detach().clone() for t in shadow], trimmed)
                            if cache else None)
        values = [straight_through(t, v) for t, v in zip(shadow, trimmed)]
        return values[0], (values[1] if bias is not None else None)

    def forward(self, bottoms):
        training = self.phase != "TEST"
        if training and not self.context.quantize_activations:
            return super().forward(bottoms)
        precision, context = self.impl.precision, self.context.run_context()

        def trim(x, signal):
            method = precision.trim_input if signal == "input" else precision.trim_output
            value = method(to_numpy(x), context)
            if not training:
                return straight_through(x, value)
            return saturating_straight_through(
                x, value, precision.activation_bounds(signal, self.context.compat))

        count = len(bottoms) if self.impl.trims_all_bottoms else 1
        for i in range(count):
            bottoms[i] = trim(bottoms[i], "input")   # in place, as both of Ristretto's builds
        tops = super().forward(bottoms)
        return [trim(t, "output") for t in tops]


@register
class ConvolutionRistretto(_Trimmed, Convolution):
    type_name = "ConvolutionRistretto"


@register
class DeconvolutionRistretto(_Trimmed, Deconvolution):
    type_name = "DeconvolutionRistretto"


@register
class FcRistretto(_Trimmed, InnerProduct):
    type_name = "FcRistretto"


@register
class LRNRistretto(TorchLayer):
    type_name = "LRNRistretto"

    def forward(self, bottoms):
        x = bottoms[0]
        trimmed = self.impl.forward([to_numpy(x)], [])[0]
        if not (torch.is_grad_enabled() and x.requires_grad):
            return [torch.as_tensor(trimmed).to(device=x.device, dtype=x.dtype)]
        return [straight_through(lrn(x, self.impl), trimmed)]
