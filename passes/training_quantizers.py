"""Attach training-time weight quantizers (``weight_quantization_param``) to a net's learned
layers, for ``tools/train`` to train and every runtime to run (``ristretto_py.weight_quantization``).
The weights stay as they are: they become the shadow weights.

Spellings (``TrainingQuantizer.parse``):
* ``binary``, ``scaled_binary`` (x mean|w|), ``stochastic_binary``, ``scaled_stochastic_binary``
  (BinaryConnect; BNN's weights);
* ``ternary`` or ``ternary:T`` (TWN, threshold T * mean|w|, 0.7 by default);
* ``dorefa:K`` (DoReFa-Net's K-bit weights in [-1, 1]) and ``dorefa:K:max`` (times a fixed
  per-layer scale, the largest |w| of the weights being prepared);
* ``hwce:N:P`` (PULP quantclip at N = 4, 8 or 16 bits, the MSB fixed now from the P-th
  percentile of |w|, as in QuantizedSqueezeNet's retraining).
"""
import dataclasses
import math

import numpy as np

from ristretto_py.errors import NetError, RistrettoError
from ristretto_py.protos import caffe_pb2
from ristretto_py.weight_quantization import WeightQuantizer

from .kmeans import select_layers
from .training_report import weight_bytes

CONV_TYPES = ("Convolution", "Deconvolution", "ConvolutionRistretto", "DeconvolutionRistretto")
FC_TYPES = ("InnerProduct", "FcRistretto")
SPELLINGS = ("binary, scaled_binary, stochastic_binary, scaled_stochastic_binary, ternary[:T], "
             "dorefa:K[:max] or hwce:N:PERCENTILE")


@dataclasses.dataclass(frozen=True)
class TrainingQuantizer:
    """A quantizer as the user names it; ``for_weights`` fixes its constants on a layer."""
    text: str
    method: str
    bits: int = 2
    stochastic: bool = False
    scale_mode: str = "NONE"
    threshold: float = 0.7
    percentile: float = 100.0

    @classmethod
    def parse(cls, text):
        parts = text.strip().split(":")
        kind, args = parts[0], parts[1:]
        try:
            if kind in ("binary", "scaled_binary", "stochastic_binary",
                        "scaled_stochastic_binary") and not args:
                return cls(text, "BINARY", 1, "stochastic" in kind,
                           "MEAN_ABS" if kind.startswith("scaled") else "NONE")
            if kind == "ternary" and len(args) <= 1:
                threshold = float(args[0]) if args else 0.7
                if 0 < threshold < 10:
                    return cls(text, "TERNARY", 2, threshold=threshold)
            if kind == "dorefa" and len(args) in (1, 2) and args[1:] in ([], ["max"]):
                bits = int(args[0])
                if 1 <= bits <= 16:
                    return cls(text, "DOREFA", bits, scale_mode="FIXED" if args[1:] else "NONE")
            if kind == "hwce" and len(args) == 2:
                bits, percentile = int(args[0]), float(args[1])
                if bits in (4, 8, 16) and 0 < percentile <= 100:
                    return cls(text, "HWCE", bits, percentile=percentile)
        except ValueError:
            pass
        raise RistrettoError(f"training quantizer {text!r}: use {SPELLINGS}")

    def for_weights(self, weights):
        """The layer's WeightQuantizer, constants taken from its (float) weights."""
        w = np.abs(np.asarray(weights, np.float64))
        scale, msb = 1.0, 0
        if self.method == "DOREFA" and self.scale_mode == "FIXED":
            scale = float(w.max()) if w.size and w.max() > 0 else 1.0
        if self.method == "HWCE":
            top = float(np.percentile(w, self.percentile)) if w.size else 0.0
            msb = math.ceil(math.log2(top)) if top > 0 else 0
        return WeightQuantizer(self.method, self.bits, self.stochastic, self.scale_mode,
                               float(np.float32(scale)), self.threshold, msb)


def layer_kind(layer):
    return "conv" if layer.type in CONV_TYPES else "fc"


def plan_quantizers(net, default=None, per_type=None, per_layer=None, layer_names=None,
                    keep_first_last=False):
    """{layer name: TrainingQuantizer} and the names kept as they are (first and last).

    Precedence: ``per_layer`` ({name: q}) over ``per_type`` ({"conv"|"fc"|Caffe type: q}) over
    ``default``; ``layer_names`` restricts the candidates; ``keep_first_last`` leaves the first
    and the last learned layer of the net (in its order) without a quantizer."""
    per_type, per_layer = dict(per_type or {}), dict(per_layer or {})
    unknown = set(per_layer) - {l.name for l in net.layers}
    if unknown:
        raise NetError(f"no layer named {', '.join(sorted(unknown))}", path=net.source)
    known_kinds = {"conv", "fc", *CONV_TYPES, *FC_TYPES}
    bad = set(per_type) - known_kinds
    if bad:
        raise RistrettoError(f"layer type {', '.join(sorted(bad))}: use conv, fc or one of "
                             f"{', '.join(CONV_TYPES + FC_TYPES)}")
    learned = select_layers(net)
    ends = {learned[0].name, learned[-1].name} if keep_first_last and learned else set()
    chosen = select_layers(net, layer_names) if layer_names else learned
    plan = {}
    for layer in chosen:
        quantizer = per_layer.get(layer.name) or per_type.get(layer.type) or \
            per_type.get(layer_kind(layer)) or default
        if quantizer is not None and (layer.name not in ends or layer.name in per_layer):
            plan[layer.name] = quantizer
    return plan, sorted(ends - set(per_layer))


def prepare_quantizers(net, plan):
    """({layer name: WeightQuantizer}, rows): each planned layer's quantizer with its constants
    fixed from its weights; rows give the quantizer, packed and float bytes per layer."""
    quantizers, rows = {}, []
    for layer in net.layers:
        recipe = plan.get(layer.name)
        if recipe is None:
            continue
        if layer.type == "ConvolutionHWCE":
            raise NetError("ConvolutionHWCE quantizes its kernel with hwce_param already",
                           path=net.source, layer=layer.name)
        quantizers[layer.name] = recipe.for_weights(layer.blobs[0])
        rows.append(weight_row(layer.name, quantizers[layer.name], layer.blobs[0]))
    return quantizers, rows


def with_training_quantizers(param, quantizers, activations=None):
    """A copy of the NetParameter ``param`` (every phase's layers, as read) in which each layer
    named in ``quantizers`` carries its ``weight_quantization_param``, and each named in
    ``activations`` ({name: ActivationQuantizationParameter fields}) is followed by an
    in-place ActivationQuantize layer on its first top, under the same include/exclude rules."""
    edited = caffe_pb2.NetParameter()
    edited.CopyFrom(param)
    del edited.layer[:]
    activations = activations or {}
    for spec in param.layer:
        layer = edited.layer.add()
        layer.CopyFrom(spec)
        if spec.name in quantizers:
            layer.weight_quantization_param.CopyFrom(quantizers[spec.name].to_proto())
        if spec.name in activations:
            quantize = edited.layer.add(name=f"{spec.name}_quantize", type="ActivationQuantize",
                                        bottom=[spec.top[0]], top=[spec.top[0]])
            quantize.include.extend(spec.include)
            quantize.exclude.extend(spec.exclude)
            quantize.activation_quantization_param.CopyFrom(
                caffe_pb2.ActivationQuantizationParameter(**activations[spec.name]))
    return edited


def weight_row(name, quantizer, weights):
    """One report row: quantizer, packed and float bytes, saturation share of ``weights``."""
    n = int(np.size(weights))
    packed, floats = weight_bytes(n, quantizer.bits_per_weight, quantizer.constant_bits)
    return {"layer": name, "quantizer": quantizer.describe(), "n": n,
            "bits_per_weight": quantizer.bits_per_weight, "packed_bytes": packed,
            "float_bytes": floats, "saturated": quantizer.saturation(weights)}
