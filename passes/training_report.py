"""The quantization table of a trained net (``tools/train`` prints it and writes it to
``train.json``): per learned layer, how its weights are quantized (a training-time quantizer,
a Ristretto format, HWCE quantclip or float32), the widths of its weights, input and output,
the share of its weights outside the quantizer's range at the end of training, and the weight
bytes packed (1 bit per binary weight, 2 per ternary, k per DoReFa/fixed-point weight, plus the
layer's constants) next to the float32 bytes.

Given a batch (``activation_saturation``), it also gives the share of each layer's input and
output values that the formats clip: a Ristretto layer's input against its input format and its
untrimmed output against its output format; an ActivationQuantize layer reading a learned
layer's output counts as that layer's output format (for SIGN: |x| > 1, where its gradient is
zero).
"""
import math

import numpy as np

from ristretto_py import numerics
from ristretto_py.layers.base import RunContext
from ristretto_py.precision import DYNAMIC_FIXED_POINT, FLOAT_BITS, MINIFLOAT
from ristretto_py.runtime import NumpyRuntime

from .cost import RISTRETTO
from .kmeans import CLUSTERED_TYPES



def weight_bytes(count, bits, constant_bits=0):
    """(packed bytes, float32 bytes) of ``count`` weights of ``bits`` bits each, plus the
    layer's constants (a scale, an MSB, per-channel shifts)."""
    return math.ceil((count * bits + constant_bits) / 8), count * FLOAT_BITS // 8


def _format(layer, impl):
    """(description, weight bits, constant bits, saturated share of the weights)."""
    weights = layer.blobs[0]
    quantizer = getattr(impl, "weight_quantizer", None)
    if quantizer is not None:
        return (quantizer.describe(), quantizer.bits_per_weight, quantizer.constant_bits,
                quantizer.saturation(weights))
    if layer.type == "ConvolutionHWCE":
        bits, msb = impl.bits["kernel"], impl.msb["kernel"]
        step = 2.0 ** (msb + 1 - bits)
        share = float(np.mean((weights < -(2.0 ** msb)) | (weights > 2.0 ** msb - step)))
        return f"HWCE {bits}-bit msb {msb}", bits, 8, share
    if layer.type in RISTRETTO:
        p = impl.precision
        if p.precision == DYNAMIC_FIXED_POINT:
            length = p.weight_fractional_length(np.ndim(weights), impl.channel_axis)
            share = numerics.fixed_point_saturation(weights, p.bw_params, length)
            return f"DFP {p.bw_params}-bit", p.bw_params, p.shift_bits(), share
        if p.precision == MINIFLOAT:
            return f"mini-float {p.param_bits()}-bit", p.param_bits(), 0, 0.0
        return f"power-of-two {p.param_bits()}-bit", p.param_bits(), 0, 0.0
    return "float32", FLOAT_BITS, 0, 0.0


def _activation_bits(net, layer, impl):
    """(input bits, output bits): a Ristretto layer's formats, an ActivationQuantize on its top."""
    bits_in = bits_out = FLOAT_BITS
    if layer.type in RISTRETTO and impl.precision.trims_activations("gpu"):
        p = impl.precision
        if p.precision == MINIFLOAT:
            bits_in = bits_out = 1 + p.exp_bits + p.mant_bits
        else:
            bits_in, bits_out = p.bw_layer_in, p.bw_layer_out
    elif layer.type == "ConvolutionHWCE":
        bits_in, bits_out = impl.bits["input"], impl.bits["output"]
    for other, other_impl in zip(net.layers, net.impls):
        if other.type == "ActivationQuantize" and other.bottoms[0] == layer.tops[0]:
            bits_out = 1 if other_impl.method == "SIGN" else other_impl.bits
    return bits_in, bits_out


def _outside(values, bounds):
    if bounds is None or not np.size(values):
        return None
    x = np.asarray(values)
    return float(np.mean((x < bounds[0]) | (x > bounds[1])))


def activation_saturation(net, batch, compat="gpu"):
    """{layer name: {"input": share or None, "output": share or None}} on one batch of ``net``
    (a TEST net with weights)."""
    shares = {}
    producer = {}
    context = RunContext(compat, None)

    def observe(layer, bottoms, tops):
        impl = net.impl(layer)
        if layer.type in RISTRETTO:
            p = impl.precision
            trimmed = [p.trim_input(b, context) for b in bottoms]
            raw = impl.forward(trimmed, impl.trim_params(layer.blobs, context))[0]
            shares[layer.name] = {"input": _outside(bottoms[0], p.activation_bounds("input", compat)),
                                  "output": _outside(raw, p.activation_bounds("output", compat))}
        elif layer.type == "ActivationQuantize" and bottoms and layer.bottoms[0] in producer:
            owner = producer[layer.bottoms[0]]
            entry = shares.setdefault(owner, {"input": None, "output": None})
            entry["output"] = _outside(bottoms[0], (impl.low, impl.high))
        for top in layer.tops:
            if layer.type in CLUSTERED_TYPES:
                producer[top] = layer.name

    NumpyRuntime(net, compat=compat).forward(batch, observer=observe)
    return shares


def quantization_rows(net, saturation=None):
    """One row per learned layer with weights (see the module docstring); ``saturation`` from
    ``activation_saturation`` adds the activation shares."""
    saturation = saturation or {}
    rows = []
    for layer, impl in zip(net.layers, net.impls):
        if layer.type not in CLUSTERED_TYPES + ("ConvolutionHWCE",) or not layer.blobs:
            continue
        description, bits, constants, saturated = _format(layer, impl)
        bits_in, bits_out = _activation_bits(net, layer, impl)
        n = int(np.size(layer.blobs[0]))
        packed, floats = weight_bytes(n, bits, constants)
        rows.append({"layer": layer.name, "quantizer": description, "weight_bits": bits,
                     "input_bits": bits_in, "output_bits": bits_out, "weights": n,
                     "saturated": saturated, "packed_bytes": packed, "float_bytes": floats,
                     "input_saturated": saturation.get(layer.name, {}).get("input"),
                     "output_saturated": saturation.get(layer.name, {}).get("output")})
    return rows


def format_rows(rows):
    lines = [f"{'layer':20s} {'quantizer':32s} {'w/in/out bits':>14s} "
             f"{'saturated w/in/out':>22s} {'weight bytes':>12s} {'float32':>10s}"]
    for r in rows:
        widths = f"{r['weight_bits']}/{r['input_bits']}/{r['output_bits']}"
        shares = "/".join("-" if s is None else f"{s:.2%}" for s in
                          (r["saturated"], r.get("input_saturated"), r.get("output_saturated")))
        lines.append(f"{r['layer'][:20]:20s} {r['quantizer'][:32]:32s} {widths:>14s} "
                     f"{shares:>22s} {r['packed_bytes']:12,d} {r['float_bytes']:10,d}")
    packed = sum(r["packed_bytes"] for r in rows)
    floats = sum(r["float_bytes"] for r in rows)
    if rows:
        lines.append(f"weights: {packed:,d} bytes packed, {floats:,d} as float32 "
                     f"({floats / max(packed, 1):.1f}x smaller)")
    return lines
