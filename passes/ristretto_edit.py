"""Ristretto's net-description edits, as its ``quantize`` tool makes them (DESIGN section 4).

They work on a NetParameter (the text prototxt as read, already upgraded), because Ristretto's
output is that same description with some layer types renamed and ``quantization_param``
fields set: nothing else changes, so a file written here reads in Ristretto and the other way
round. Each function returns an edited copy and never touches its input.

Ristretto matches layer types loosely when it edits for dynamic fixed point (any type containing
"Convolution"; "InnerProduct" or "FcRistretto") and exactly for mini-float and power-of-two
weights ("Convolution"/"ConvolutionRistretto", "InnerProduct"/"FcRistretto"). Both rules are
kept. Only the fields Ristretto sets are written.

``parameter_formats`` is ristretto-py's own post-pass over any of these edits: it gives dynamic
fixed point layers a 32-bit accumulator bias and/or per-output-channel weight lengths (fields
Ristretto does not read; see ``ristretto_py.precision``). Without those options it changes nothing.
"""
import dataclasses

from ristretto_py.errors import NetError
from ristretto_py.protos import caffe_pb2

from ristretto_py.layers.formats import FORMATTED_TYPES

from .ranges import RULES, channel_integer_lengths, weight_integer_length

Q = caffe_pb2.QuantizationParameter
CONV, FC = "ConvolutionRistretto", "FcRistretto"


@dataclasses.dataclass(frozen=True)
class IntegerLengths:
    """Integer lengths of one layer's input, output and parameters."""
    layer_in: int
    layer_out: int
    params: int = 0


def _copy(param):
    edited = caffe_pb2.NetParameter()
    edited.CopyFrom(param)
    return edited


def _lengths(lengths, layer):
    try:
        return lengths[layer.name]
    except KeyError:
        raise NetError(f"layer of type '{layer.type}' would be quantized, but the range analysis "
                       "saw no Convolution/InnerProduct layer of that name in the TRAIN net "
                       "(Ristretto reads past its table here)", layer=layer.name) from None


def dynamic_fixed_point(param, lengths, layers, parts, bw_conv=-1, bw_fc=-1, bw_in=-1, bw_out=-1):
    """Ristretto's EditNetDescriptionDynamicFixedPoint.

    ``layers``: "Convolution", "InnerProduct" or "Convolution_and_InnerProduct";
    ``parts``: "Parameters", "Activations" or "Parameters_and_Activations"; ``lengths``:
    layer name -> IntegerLengths. Fractional lengths are bit width minus integer length."""
    edited = _copy(param)
    for layer in edited.layer:
        is_conv = "Convolution" in layers and "Convolution" in layer.type
        is_fc = "InnerProduct" in layers and ("InnerProduct" in layer.type or FC in layer.type)
        for matches, new_type, bw_params in ((is_conv, CONV, bw_conv), (is_fc, FC, bw_fc)):
            if not matches:
                continue
            q = layer.quantization_param
            il = _lengths(lengths, layer)
            layer.type = new_type
            if "Parameters" in parts:
                q.fl_params = bw_params - il.params
                q.bw_params = bw_params
            if "Activations" in parts:
                q.fl_layer_in = bw_in - il.layer_in
                q.bw_layer_in = bw_in
                q.fl_layer_out = bw_out - il.layer_out
                q.bw_layer_out = bw_out
    return edited


def minifloat(param, bit_width, exp_bits):
    """Ristretto's EditNetDescriptionMiniFloat: every Convolution and InnerProduct layer becomes
    a mini-float Ristretto layer with ``exp_bits`` and ``bit_width - exp_bits - 1`` mantissa bits."""
    edited = _copy(param)
    for layer in edited.layer:
        new_type = _exact_type(layer.type)
        if new_type:
            layer.type = new_type
            q = layer.quantization_param
            q.precision = Q.MINIFLOAT
            q.mant_bits = bit_width - exp_bits - 1
            q.exp_bits = exp_bits
    return edited


def power_of_two_weights(param, exp_min=-8, exp_max=-1):
    """Ristretto's EditNetDescriptionIntegerPowerOf2Weights (exponents [-8, -1] as in its tool)."""
    edited = _copy(param)
    for layer in edited.layer:
        new_type = _exact_type(layer.type)
        if new_type:
            layer.type = new_type
            q = layer.quantization_param
            q.precision = Q.INTEGER_POWER_OF_2_WEIGHTS
            q.exp_min = exp_min
            q.exp_max = exp_max
    return edited


def _exact_type(layer_type):
    if layer_type in ("Convolution", CONV):
        return CONV
    if layer_type in ("InnerProduct", FC):
        return FC
    return None


def with_phase(param, phase):
    """A copy whose ``state`` selects ``phase`` (Ristretto scores TEST nets)."""
    edited = _copy(param)
    edited.state.phase = caffe_pb2.Phase.Value(phase)
    return edited


def without_state(param):
    """A copy without ``state`` (Ristretto releases it before writing)."""
    edited = _copy(param)
    edited.ClearField("state")
    return edited


def per_layer_dynamic_fixed_point(param, lengths, widths):
    """Dynamic fixed point chosen per layer: ``widths`` maps a layer name to
    (bw_params, bw_activations), either None to leave that part at Ristretto's defaults; the
    layer becomes ConvolutionRistretto/FcRistretto with the fields of the parts set."""
    edited = _copy(param)
    for layer in edited.layer:
        if layer.name not in widths:
            continue
        bw_params, bw_act = widths[layer.name]
        il = _lengths(lengths, layer)
        if layer.type in FORMATTED_TYPES:
            _stock_format(layer, il, bw_act, bw_params)
            continue
        layer.type = CONV if "Convolution" in layer.type else FC
        q = layer.quantization_param
        if bw_params is not None:
            q.bw_params, q.fl_params = bw_params, bw_params - il.params
        if bw_act is not None:
            q.bw_layer_in, q.fl_layer_in = bw_act, bw_act - il.layer_in
            q.bw_layer_out, q.fl_layer_out = bw_act, bw_act - il.layer_out
    return edited


def stock_formats(param, lengths, bw_act, bw_params=None):
    """A copy whose formattable stock layers (``layers.formats``; those with an entry in
    ``lengths``) get a dynamic-fixed-point ``quantization_param``: inputs and outputs at
    ``bw_act`` bits, operands at ``bw_params`` (None: 32 bits), fractional lengths from the
    layer's integer lengths. ristretto-py's ``--all_layers``; the types stay stock ones."""
    edited = _copy(param)
    for layer in edited.layer:
        if layer.type in FORMATTED_TYPES and layer.name in lengths:
            _stock_format(layer, lengths[layer.name], bw_act, bw_params)
    return edited


def aligned_lengths(param, lengths):
    """``lengths`` where every Eltwise and Concat and the layers writing their inputs agree on
    one integer length: the largest of the Eltwise's input length and its writers' output
    lengths. An accelerator's producers then write the aligned format directly, and no
    requantization sits between them (``--all_layers``); the integer lengths only grow, so no
    range saturates more than before."""
    lengths = dict(lengths)
    writer = {}
    for layer in param.layer:
        if layer.type in ("Eltwise", "Concat") and layer.name in lengths:
            writers = [writer[b] for b in layer.bottom if writer.get(b) in lengths]
            common = max([lengths[layer.name].layer_in] + [lengths[w].layer_out for w in writers])
            lengths[layer.name] = dataclasses.replace(lengths[layer.name], layer_in=common)
            for name in writers:
                lengths[name] = dataclasses.replace(lengths[name], layer_out=common)
        for top in layer.top:
            writer[top] = layer.name
    return lengths


def _stock_format(layer, il, bw_act, bw_params):
    q = layer.quantization_param
    if bw_act is not None:
        q.bw_layer_in, q.fl_layer_in = bw_act, bw_act - il.layer_in
        q.bw_layer_out, q.fl_layer_out = bw_act, bw_act - il.layer_out
    elif not q.HasField("bw_layer_in"):
        q.bw_layer_in, q.fl_layer_in = 32, 32 - il.layer_in
        q.bw_layer_out, q.fl_layer_out = 32, 32 - il.layer_out
    bits = bw_params if bw_params is not None else (q.bw_params if q.HasField("bw_params") else 32)
    q.bw_params, q.fl_params = bits, bits - il.params


BIAS_CHOICES = ("shared", "int32")


def parameter_formats(param, ranges, bias="shared", per_channel=False, rule="ristretto"):
    """A copy of ``param`` whose DYNAMIC_FIXED_POINT ConvolutionRistretto/FcRistretto layers get
    ristretto-py's parameter formats; run it after any edit above.

    ``ranges``: layer name -> ``ranges.LayerRange`` (``analyze_ranges`` of the float net, which
    holds the per-channel weight maxima); ``rule``: "ristretto" or "safe", the integer-length
    rule of ``ranges.weight_integer_length`` (ceil(log2 max + 1), or floor(log2 max) + 2).

    * ``bias="int32"``: ``bias_format: ACCUMULATOR`` (the bias at fractional length
      fl_layer_in + the weights' length) in ``bw_bias`` bits: 32, as QDQ and integer
      accelerators keep it for 8-bit data, or more where the largest |bias| needs more at that
      scale (wide formats: 16-bit inputs and weights put the scale 30 bits down; 32-bit ones
      would leave a 32-bit bias no integer bit), as a wide accelerator's accumulator does, at
      most 62. Since the bias no longer shares the
      weights' format, ``fl_params = bw_params - il`` with il from the largest |weight| alone
      under ``rule`` (the safe rule would otherwise have counted the bias; Ristretto's rule
      never does, so there it gives the value the edit wrote). ``"shared"``: the bias keeps
      Ristretto's format and ``fl_params`` is left as the edit set it.
    * ``per_channel=True``: ``fl_params_channel`` = bw_params - the per-channel integer length
      of ``ranges.channel_integer_lengths`` (an all-zero channel takes the layer's length),
      one per output channel.

    Only layers whose parameters have a format (``bw_params`` is set: a "Parameters" edit) are
    changed; the others keep Ristretto's 32-bit defaults, where a 32-bit accumulator bias at
    fl_layer_in + fl_params would leave no integer bits. With the defaults (shared bias, no
    per-channel lengths) the copy is identical to ``param``, field for field."""
    if bias not in BIAS_CHOICES:
        raise ValueError(f"bias must be one of {BIAS_CHOICES}, not {bias!r}")
    if rule not in RULES:
        raise ValueError(f"integer length rule must be one of {RULES}, not {rule!r}")
    edited = _copy(param)
    if bias == "shared" and not per_channel:
        return edited
    for layer in edited.layer:
        q = layer.quantization_param
        if (layer.type not in (CONV, FC) or q.precision != Q.DYNAMIC_FIXED_POINT
                or not q.HasField("bw_params")):
            continue
        entry = _lengths(ranges, layer)
        if bias == "int32":
            q.bias_format = Q.ACCUMULATOR
            q.fl_params = q.bw_params - weight_integer_length(entry.max_weights, rule, layer.name)
        if per_channel:
            lengths = [q.bw_params - il for il in channel_integer_lengths(entry, rule)]
            if bias == "int32":
                lengths = _bias_capped(lengths, q.fl_layer_in, q.fl_params, entry, layer.name)
            del q.fl_params_channel[:]
            q.fl_params_channel.extend(lengths)
        if bias == "int32":
            q.bw_bias = _accumulator_bias_bits(q, entry, layer.name)
    return edited


def _bias_capped(lengths, fl_in, fl_layer, entry, layer):
    """Per-channel weight fractional lengths no finer than lets the channel's bias fit 32 bits
    at the accumulator's scale (fl_in + fl_w), but never coarser than the layer-wide length
    ``fl_layer``: a channel whose weights are negligible beside its bias (a dead channel of a
    folded BatchNorm, |w| ~ 1e-13 and a bias of 0.1, would ask for a 60-bit bias) is held at
    a length where its bias fits, or at the layer's, where its weights round to 0 as they would
    without per-channel lengths. Where even that leaves no room (wide activations) the bias
    widens instead (``_accumulator_bias_bits``)."""
    if len(entry.bias_channel) != len(lengths):
        return lengths
    capped = []
    for fl_w, value in zip(lengths, entry.bias_channel):
        if value > 0:
            room = 32 - weight_integer_length(value, "safe", layer) - fl_in
            fl_w = min(fl_w, max(fl_layer, room))
        capped.append(int(fl_w))
    return capped


def _accumulator_bias_bits(q, entry, layer):
    """32, or the bits the bias needs at the accumulator's scale (each channel's |bias| at its
    own scale, never clipped: the safe rule's integer length), at most 62."""
    if not entry.max_bias > 0:
        return 32
    values = list(entry.bias_channel) or [entry.max_bias]
    scales = list(q.fl_params_channel) or [q.fl_params] * len(values)
    if len(scales) != len(values):           # no per-channel biases known: the worst case
        values, scales = [entry.max_bias], [max(scales)]
    needed = max(weight_integer_length(value, "safe", layer) + q.fl_layer_in + fl_w
                 for value, fl_w in zip(values, scales) if value > 0)
    return int(min(62, max(32, needed)))
