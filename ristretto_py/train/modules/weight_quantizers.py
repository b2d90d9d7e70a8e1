"""Training-time weight quantizers in torch: a registry, by ``weight_quantization_param``
method, of the straight-through rule each paper trains with. The forward value is always
``WeightQuantizer.quantize`` of the shadow weights (``ristretto_py.weight_quantization``, the
same call the numpy runtime and the ONNX export make), so TRAIN computes what TEST will; the
rule only says which gradient reaches the shadow weights:

* BINARY (BinaryConnect, BNN's weights): the identity where |w| <= 1, zero beyond (the
  gradient cancellation of Courbariaux et al., in weight units whatever the scale);
* TERNARY (TWN): the identity (the ternary weights' gradient updates the float ones);
* DOREFA, k >= 2: the gradient of ``s * tanh(w) / max|tanh(w)|`` (the normalisation before
  the k-bit rounding, the rounding itself straight through, the max differentiated like any
  other op); k = 1: the identity;
* HWCE (quantclip): the identity inside the clip range, zero where it clipped.

A MEAN_ABS scale is treated as a constant in the backward pass.
"""
import torch

from .base import saturating_straight_through, straight_through, to_numpy

_RULES = {}


def rule(method):
    """Decorator: the straight-through rule of ``method`` (``f(weight, quantizer, value)``)."""
    def add(function):
        if method in _RULES:
            raise RuntimeError(f"training quantizer {method} registered twice")
        _RULES[method] = function
        return function
    return add


def training_methods():
    return sorted(_RULES)


@rule("BINARY")
@rule("HWCE")
def _saturating(weight, quantizer, value):
    return saturating_straight_through(weight, value, quantizer.bounds())


@rule("TERNARY")
def _identity(weight, quantizer, value):
    return straight_through(weight, value)


@rule("DOREFA")
def _dorefa(weight, quantizer, value):
    if quantizer.bits == 1 or not weight.requires_grad:
        return straight_through(weight, value)
    t = torch.tanh(weight)
    top = t.abs().max()
    if float(top.detach()) == 0.0:
        return straight_through(weight, value)
    scale = quantizer.scale(to_numpy(weight))
    return straight_through(scale * t / top, value)


def quantize_weight(weight, quantizer, rng=None):
    """``weight`` (a shadow parameter) as the layer computes with it: the quantized value in
    the forward pass, the method's rule in the backward pass. ``rng``: the TRAIN phase's numpy
    generator (stochastic BINARY draws from it), None in TEST."""
    value = quantizer.quantize(to_numpy(weight), rng)
    return _RULES[quantizer.method](weight, quantizer, value)
