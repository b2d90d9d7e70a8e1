"""Range analysis for Ristretto's ``quantize``: the largest magnitudes a net's Convolution and
InnerProduct layers see, and the integer lengths Ristretto derives from them (DESIGN section 4).

Ristretto (``Net::RangeInLayers``) takes, over 10 batches of the TRAIN-phase net, max |x| of the
first bottom, of the first top and of the weights (not the bias) of every layer whose type is
exactly "Convolution" or "InnerProduct", and reads the blobs after the whole forward pass, in its
CPU and its GPU build alike: with an in-place ReLU after a convolution it sees the ReLU's output.
Which reading applies follows the integer-length rule, never the ``compat`` build: rule
"ristretto" reads after the forward pass (both builds do); rule "safe" records each layer's true
input and output as the layer runs, one of its improvements over Ristretto.

Integer lengths, Ristretto's rule: il_in = ceil(log2 max_in), il_out = ceil(log2 max_out),
il_params = ceil(log2 max_weights + 1). The activation rule is one bit short for a signed format
(everything above 2^(il-1) saturates). The ``safe`` rule gives every range one more bit than its
magnitude needs, floor(log2 max) + 2, so that the observed maximum (even an exact power of two)
lies below 2^(il-1): clamping costs it less than one quantization step, no more than rounding
does. It also counts the bias in the parameter range, unless the bias has a format of its own
(``count_bias=False``: ristretto-py's ACCUMULATOR bias).

With ``stock=True`` (``tools/quantize --all_layers``) the stock layers that take a format
(``layers.formats``: Pooling, Eltwise, Concat, Scale, Bias, BatchNorm, ReLU, PReLU) are measured
too, always as they run (the largest |x| over all their bottoms, of their top, and of their
operands, the values their format trims to ``bw_params``); Ristretto never saw them, so its
after-the-pass reading has nothing to reproduce. A range that stays 0 (a layer dead on the
data, an all-zero bias) reads as 1, so that its format is well defined.

Per output channel (``channel_integer_lengths``), the same two rules apply to each channel's
largest |weight| (``LayerRange.max_weights_channel``, over the weights' output-channel axis:
axis 0 of Convolution and InnerProduct weights, axis 1 with ``transpose``). A channel whose
weights are all zero takes the layer-wide weight length (the rule applied to the largest |weight|
of the whole layer): its weights trim to 0 in any format, and its accumulator-format bias then
keeps the layer's scale instead of an arbitrary one.
"""
import dataclasses
import math

import numpy as np

from ristretto_py.errors import NetError
from ristretto_py.precision import output_channel_axis
from ristretto_py.progress import progress as show_progress
from ristretto_py.runtime import NumpyRuntime

RANGED_TYPES = ("Convolution", "InnerProduct")
RULES = ("ristretto", "safe")


@dataclasses.dataclass
class LayerRange:
    """Largest magnitudes seen by one layer (float32 values, as Ristretto keeps them)."""
    name: str
    type: str
    max_in: float = 0.0
    max_out: float = 0.0
    max_weights: float = 0.0
    max_bias: float = 0.0
    max_weights_channel: tuple = ()     # max |weight| of each output channel (float32 values)
    bias_channel: tuple = ()            # |bias| of each output channel


def _max_abs(array):
    return float(np.max(np.abs(array))) if np.size(array) else -10.0   # Ristretto's start value


def _channel_max_abs(weights, axis):
    """max |weight| of each output channel (along ``axis``), as a tuple of floats."""
    weights = np.asarray(weights, np.float32)
    if weights.ndim == 0 or weights.size == 0:
        return ()
    others = tuple(i for i in range(weights.ndim) if i != axis)
    return tuple(float(v) for v in np.max(np.abs(weights), axis=others))


def reads_after_forward(rule):
    """Whether the range analysis for integer-length ``rule`` reads blobs after the forward pass
    (Ristretto's reading) rather than each layer's true input and output."""
    if rule not in RULES:
        raise ValueError(f"integer length rule must be one of {RULES}, not {rule!r}")
    return rule == "ristretto"


def analyze_ranges(net, batches, rule="ristretto", progress=False, stock=False):
    """LayerRange per Convolution/InnerProduct layer of ``net`` (in net order) over ``batches``,
    read as integer-length ``rule`` asks (see the module docstring); with ``stock``, the
    formattable stock layers too."""
    after_forward = reads_after_forward(rule)
    ranges = {}
    stock_entries = _stock_entries(net) if stock else {}
    for layer in net.layers:
        if layer.type in RANGED_TYPES:
            weights = layer.blobs[0] if layer.blobs else np.zeros(0)
            bias = layer.blobs[1] if len(layer.blobs) > 1 else np.zeros(0)
            ranges[layer.name] = LayerRange(layer.name, layer.type, 0.0, 0.0,
                                            max(0.0, _max_abs(weights)), max(0.0, _max_abs(bias)),
                                            _channel_max_abs(weights, output_channel_axis(layer.spec)),
                                            tuple(float(v) for v in np.abs(np.ravel(bias))))
    if not ranges:
        raise NetError(f"the {net.phase} net has no Convolution or InnerProduct layer to quantize",
                       path=net.source)

    def observe(layer, bottoms, tops):
        entry = ranges.get(layer.name)
        if entry is not None and not after_forward:
            entry.max_in = max(entry.max_in, _max_abs(bottoms[0]))
            entry.max_out = max(entry.max_out, _max_abs(tops[0]))
        entry = stock_entries.get(layer.name)
        if entry is not None:
            entry.max_in = max([entry.max_in] + [_max_abs(b) for b in bottoms])
            entry.max_out = max(entry.max_out, _max_abs(tops[0]))

    runtime = NumpyRuntime(net)
    for batch in show_progress(batches, "range analysis (TRAIN net)", "batch", progress):
        blobs = runtime.forward(batch, observer=observe)
        if after_forward:
            for layer in net.layers:
                entry = ranges.get(layer.name)
                if entry is not None:
                    entry.max_in = max(entry.max_in, _max_abs(blobs[layer.bottoms[0]]))
                    entry.max_out = max(entry.max_out, _max_abs(blobs[layer.tops[0]]))
    ranges.update(stock_entries)
    return ranges


def _stock_entries(net):
    """Empty LayerRanges of the formattable stock layers, their operand maxima filled in."""
    from ristretto_py.layers.formats import FORMATTED_TYPES, operands
    entries = {}
    for layer, impl in zip(net.layers, net.impls):
        if layer.type in FORMATTED_TYPES and not (layer.type == "Pooling" and impl.method == "STOCHASTIC"):
            values = [np.abs(np.ravel(op)) for op in operands(impl, layer.blobs)]
            largest = max((float(v.max()) for v in values if v.size), default=0.0)
            entries[layer.name] = LayerRange(layer.name, layer.type, max_weights=largest)
    return entries


def stock_integer_lengths(entry, rule="ristretto"):
    """(il_in, il_out, il_params) of a stock layer's range: ``integer_lengths`` with a range
    of 0 read as 1 (see the module docstring)."""
    def alive(value):
        return value if value > 0 else 1.0
    return integer_lengths(dataclasses.replace(entry, max_in=alive(entry.max_in),
                                               max_out=alive(entry.max_out),
                                               max_weights=alive(entry.max_weights)),
                           rule, count_bias=False)


def _log2(value, what, layer):
    if not value > 0:
        raise NetError(f"the largest |{what}| seen is {value}: no integer length fits "
                       "(is the layer dead on this data?)", layer=layer)
    return math.log2(value)


def integer_lengths(entry, rule="ristretto", count_bias=True):
    """(il_in, il_out, il_params) of one LayerRange under ``rule`` ("ristretto" or "safe").

    ``count_bias``: whether the safe rule sizes il_params for max(|weights|, |bias|) (the bias
    shares the weights' format, Ristretto's) or for the weights alone (False: the bias has a
    format of its own). Ristretto's rule never counts the bias."""
    if rule == "ristretto":
        return (math.ceil(_log2(entry.max_in, "input", entry.name)),
                math.ceil(_log2(entry.max_out, "output", entry.name)),
                weight_integer_length(entry.max_weights, rule, entry.name))
    if rule == "safe":
        params = max(entry.max_weights, entry.max_bias) if count_bias else entry.max_weights
        return (math.floor(_log2(entry.max_in, "input", entry.name)) + 2,
                math.floor(_log2(entry.max_out, "output", entry.name)) + 2,
                weight_integer_length(params, rule, entry.name))
    raise ValueError(f"integer length rule must be one of {RULES}, not {rule!r}")


def weight_integer_length(largest, rule="ristretto", layer=None):
    """The parameter integer length for a largest magnitude ``largest``: ceil(log2 max + 1)
    (Ristretto's rule) or floor(log2 max) + 2 (safe)."""
    if rule == "ristretto":
        return math.ceil(_log2(largest, "weight", layer) + 1)
    if rule == "safe":
        return math.floor(_log2(largest, "weight", layer)) + 2
    raise ValueError(f"integer length rule must be one of {RULES}, not {rule!r}")


def channel_integer_lengths(entry, rule="ristretto"):
    """Weight integer lengths per output channel of one LayerRange (a list of ints), each from
    that channel's largest |weight| under ``rule``; an all-zero channel takes the layer-wide
    weight length (see the module docstring)."""
    if rule not in RULES:
        raise ValueError(f"integer length rule must be one of {RULES}, not {rule!r}")
    if not entry.max_weights_channel:
        raise NetError("the range analysis holds no per-channel weight maxima for this layer",
                       layer=entry.name)
    layer_wide = weight_integer_length(entry.max_weights, rule, entry.name)
    largest = np.asarray(entry.max_weights_channel, np.float64)
    used = largest > 0
    # The same rules as weight_integer_length, vectorised: np.log2 and math.log2 agree on the
    # ceil/floor of float32 magnitudes (exact at powers of two, never an ulp from an integer
    # elsewhere).
    exponent = np.log2(np.where(used, largest, 1.0))
    lengths = np.ceil(exponent + 1) if rule == "ristretto" else np.floor(exponent) + 2
    return [int(v) for v in np.where(used, lengths, layer_wide)]


def minifloat_exponent_bits(ranges, start=4):
    """Ristretto's exponent width: max(4, ceil(log2(log2(max) - 1) + 1)) over every layer input
    and output. A maximum of 2 or less gives no finite value in C++ (its int conversion yields
    INT_MIN), so it never raises the width; the same here."""
    bits = start
    for entry in ranges.values():
        for value in (entry.max_in, entry.max_out):
            if value > 0 and math.log2(value) - 1 > 0:
                bits = max(bits, math.ceil(math.log2(math.log2(value) - 1) + 1))
    return bits
