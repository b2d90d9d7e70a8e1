"""QDQ ONNX models (QuantizeLinear/DequantizeLinear pairs, as onnxruntime's quantizer, NNCF,
tf2onnx on an int8 TFLite file or our own ``--quantized qdq`` export write them) split into the
float model the ONNX converter takes and the formats the pairs stood for.

``strip_qdq`` removes every activation pair (consumers read the pair's float input) and replaces
every DequantizeLinear of a constant by the dequantized float values, recording for each tensor
its ``QdqFormat``: scale (scalar or per-axis), zero point, integer type. ``nearest_format`` reads
one as Ristretto's dynamic fixed point: a power-of-two scale with zero point 0 is the exact
format (fl = -log2 scale, the type's width); anything else gets the nearest format and a report
of how far it is from the QDQ grid (the scale's ratio, the share of the range left outside).
"""
import dataclasses

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from ..errors import UnsupportedError

_TYPE_BITS = {TensorProto.INT4: (4, True), TensorProto.UINT4: (4, False),
              TensorProto.INT8: (8, True), TensorProto.UINT8: (8, False),
              TensorProto.INT16: (16, True), TensorProto.UINT16: (16, False),
              TensorProto.INT32: (32, True)}


@dataclasses.dataclass
class QdqFormat:
    """One tensor's QDQ quantization: value = (q - zero_point) * scale."""
    scale: np.ndarray          # float32, scalar or one per channel along ``axis``
    zero_point: np.ndarray     # int64, same shape as scale
    bits: int
    signed: bool
    axis: int = None

    @property
    def per_channel(self):
        return np.ndim(self.scale) > 0 and np.size(self.scale) > 1

    def integer_range(self):
        low = -(1 << (self.bits - 1)) if self.signed else 0
        return low, low + (1 << self.bits) - 1

    def value_range(self):
        """(lowest, highest) representable value (per channel where per-axis)."""
        low, high = self.integer_range()
        return (low - self.zero_point) * self.scale, (high - self.zero_point) * self.scale


@dataclasses.dataclass
class DfpChoice:
    """The dynamic-fixed-point format chosen for one QDQ tensor and how far it is from it."""
    bit_width: int
    fractional_length: object      # int, or an int array per channel
    exact: bool
    scale_ratio: float             # largest |2^-fl / scale - 1| (0 where exact)
    range_lost: float              # largest share of the QDQ range outside the format


def nearest_format(fmt):
    """Ristretto's nearest dynamic fixed point for a QDQ format.

    Exact where every scale is a power of two and every zero point 0 in a signed type. Otherwise
    the width is the type's and the fractional length the nearest to -log2 scale that still
    holds the QDQ range (saturating more than the QDQ tensor would is worse than a coarser
    step); ``scale_ratio`` and ``range_lost`` say how much it differs."""
    scale = np.asarray(fmt.scale, np.float64)
    if np.any(scale <= 0) or not np.all(np.isfinite(scale)):
        raise UnsupportedError("a QDQ scale that is not a positive finite number")
    exponent = -np.log2(scale)
    bits = fmt.bits
    low, high = (np.asarray(v, np.float64) for v in fmt.value_range())
    # the finest step whose range [-2^(b-1), 2^(b-1) - 1] * step still holds [low, high]
    with np.errstate(divide="ignore"):
        top = np.where(high > 0, np.log2((2.0 ** (bits - 1) - 1) / np.maximum(high, 1e-300)), np.inf)
        bottom = np.where(low < 0, np.log2(2.0 ** (bits - 1) / np.maximum(-low, 1e-300)), np.inf)
    covering = np.floor(np.minimum(top, bottom))
    lengths = np.minimum(np.rint(exponent), covering).astype(np.int64)
    power_of_two = bool(np.all(exponent == lengths))
    zero = np.all(np.asarray(fmt.zero_point) == 0) and fmt.signed
    step = np.exp2(-lengths.astype(np.float64))
    ratio = float(np.max(np.abs(step / scale - 1)))
    dfp_low, dfp_high = -(2.0 ** (bits - 1)) * step, (2.0 ** (bits - 1) - 1) * step
    span = np.maximum(np.asarray(high, np.float64) - np.asarray(low, np.float64), 1e-30)
    outside = (np.maximum(dfp_low - low, 0) + np.maximum(high - dfp_high, 0)) / span
    fl = int(lengths) if np.ndim(lengths) == 0 or lengths.size == 1 else lengths
    if np.ndim(fl) == 0 and np.ndim(lengths):
        fl = int(np.ravel(lengths)[0])
    return DfpChoice(bits, fl, power_of_two and bool(zero), ratio, float(np.max(outside)))


def _format(scale, zero_point, onnx_type, axis):
    if onnx_type not in _TYPE_BITS:
        raise UnsupportedError(f"QDQ type {TensorProto.DataType.Name(onnx_type)} has no "
                               "fixed-point reading")
    bits, signed = _TYPE_BITS[onnx_type]
    scale = np.asarray(scale, np.float32)
    zero = np.zeros_like(scale, np.int64) if zero_point is None else \
        np.asarray(zero_point, np.int64)
    if scale.size == 1:                      # a one-element 1-D scale is a per-tensor one
        scale, zero = scale.reshape(()), zero.reshape(())
    return QdqFormat(scale, zero, bits, signed, axis if scale.ndim else None)


# Operators that move integers without changing them: tf2onnx puts the Transposes and
# Reshapes of a layout change between QuantizeLinear and DequantizeLinear.
LAYOUT_OPS = ("Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity")
_FLOAT = TensorProto.FLOAT
# Operators whose output is never negative where their input is not
_KEEP_SIGN = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "DequantizeLinear",
              "QuantizeLinear")


def strip_qdq(model):
    """(float ModelProto, {tensor name: QdqFormat}) of a QDQ model; the input is not changed.

    Activation pairs Q -> DQ are removed (a tensor keeps the name of the pair's float input);
    layout operators between the two (Transpose, Reshape, ...) then move floats instead.
    DequantizeLinear of an initializer becomes a float initializer under the DQ's output name.
    An integer graph input read through a DequantizeLinear becomes a float input holding the
    dequantized values, and an integer graph output written by a QuantizeLinear a float output
    of the value it quantized; both keep their names and record their formats."""
    float_model = type(model)()
    float_model.CopyFrom(model)
    graph = float_model.graph
    constants = {t.name: t for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    inputs = {v.name: v for v in graph.input if v.name not in constants}
    formats, rename, drop, relus, restored = {}, {}, set(), [], set()
    ranks = _ranks(model)
    for index, node in enumerate(graph.node):
        if node.op_type != "DequantizeLinear":
            continue
        source = node.input[0]
        fmt = _dq_format(node, constants, producer)
        if source in constants:                       # a quantized constant (weights, bias)
            stored = numpy_helper.to_array(constants[source])
            fmt = _narrowest(fmt, stored)
            values = _dequantize(stored, fmt)
            graph.initializer.append(numpy_helper.from_array(values, node.output[0]))
            formats[node.output[0]] = fmt
            drop.add(index)
            continue
        if source in inputs:                          # an integer model input
            inputs[source].type.tensor_type.elem_type = _FLOAT
            formats[source] = fmt
            rename[node.output[0]] = source
            drop.add(index)
            continue
        layout, value = _through_layout(source, producer)
        quantize = producer.get(value)
        relu = not layout and quantize is not None and _integer_relu(quantize, producer, constants)
        if relu:                          # Max(q, zero point) on the integers: a ReLU
            quantize = producer[quantize.input[0]]
        if quantize is None or quantize.op_type != "QuantizeLinear":
            raise UnsupportedError("a DequantizeLinear that reads neither a constant, a model "
                                   "input nor a QuantizeLinear has no float form",
                                   layer=node.name or source)
        source_value, fmt = _unclipped(quantize.input[0], fmt, producer, constants)
        if layout:                        # the layout operators now read the float tensor
            layout[0].input[0] = source_value
            value = layout[-1].output[0]
        else:
            value = source_value
        if ((relu or np.all(np.asarray(fmt.value_range()[0]) == 0))
                and value in producer and not _non_negative(value, producer, restored, rename)):
            # A range starting at 0 is a ReLU the quantizer folded into the pair (its zero
            # point at the type's lowest value): the float model gets it back, unless the
            # value is already a ReLU's (or a max pooling or layout change of one) or a model
            # input (data that is never negative, images in [0, 1]).
            restored.add(f"{value}_relu")
            ranks[f"{value}_relu"] = ranks.get(value)
            relus.append(helper.make_node("Relu", [value], [f"{value}_relu"],
                                          name=f"{node.name or value}_relu"))
            value = f"{value}_relu"
        value = _canonical(value, producer, rename)
        if value in formats and not _same(formats[value], fmt):
            # A requantization of a tensor that already has a format (an in-place chain of
            # formatted layers, or a ReLU computed on the integers, then a new format): a 1x1
            # max pooling (an identity Caffe can give a format) carries the new one.
            if ranks.get(value) != 4:
                raise UnsupportedError("a tensor requantized to a second format has no Caffe "
                                       "layer to carry it (only 4-D tensors get a 1x1 pooling)",
                                       layer=node.name or value)
            requantized = f"{value}_requantized_{index}"
            relus.append(helper.make_node("MaxPool", [value], [requantized], kernel_shape=[1, 1],
                                          name=requantized))
            ranks[requantized] = 4
            value = requantized
        formats[value] = fmt
        rename[node.output[0]] = value
        drop.add(index)
    kept = []
    for i, node in enumerate(graph.node):
        if i not in drop:
            kept.append(node)
            kept += _inserted_after(node, relus)
    kept = _float_outputs(graph, kept, producer, constants, formats)
    needed = {name for n in kept for name in n.input} | {o.name for o in graph.output}
    # Quantize nodes, and the integer ReLUs between them and their DequantizeLinear, that
    # nothing reads any more
    for _ in range(2):
        kept = [n for n in kept if n.op_type not in ("QuantizeLinear", "Max")
                or n.output[0] in needed or not _integer_only(n, producer)]
        needed = {name for n in kept for name in n.input} | {o.name for o in graph.output}
    for node in kept:
        for i, name in enumerate(node.input):
            node.input[i] = _resolve(name, rename)
    for output in graph.output:                        # a graph output read through a pair
        resolved = _resolve(output.name, rename)
        if resolved != output.name:
            kept.append(helper.make_node("Identity", [resolved], [output.name]))
            if resolved in formats:
                formats[output.name] = formats[resolved]
    for node in kept:                                  # an Identity's output is its input
        if node.op_type == "Identity" and node.input[0] in formats:
            formats.setdefault(node.output[0], formats[node.input[0]])
    del graph.node[:]
    graph.node.extend(kept)
    live = {name for n in graph.node for name in n.input} | {o.name for o in graph.output}
    keep_init = [t for t in graph.initializer if t.name in live]
    del graph.initializer[:]
    graph.initializer.extend(keep_init)
    return float_model, formats


def _narrowest(fmt, stored):
    """A signed 4- to 16-bit constant's format at the width its integers need (at least 2 bits): weights
    trimmed to 6 bits travel in int8 (QDQ has no int6), and reading them as 6-bit keeps every
    value while the description says what they hold."""
    if not fmt.signed or fmt.bits > 16 or np.any(fmt.zero_point) or stored.size == 0:
        return fmt
    stored = stored.astype(np.int64)
    bits = 2
    while bits < fmt.bits and not (stored.min() >= -(1 << (bits - 1)) and stored.max() < (1 << (bits - 1))):
        bits += 1
    return dataclasses.replace(fmt, bits=bits)


def _canonical(name, producer, rename):
    """``name`` through the pairs already removed and the Identity nodes: the tensor whose
    blob it will be in the Caffe net."""
    for _ in range(64):
        name = _resolve(name, rename)
        node = producer.get(name)
        if node is None or node.op_type != "Identity":
            return name
        name = node.input[0]
    return name


def _inserted_after(node, added):
    """The added nodes that read ``node``'s output, each followed by those that read its own."""
    result = []
    for extra in added:
        if extra.input[0] in node.output:
            result.append(extra)
            result += _inserted_after(extra, added)
    return result


def _same(a, b):
    return (a.bits == b.bits and a.signed == b.signed and np.array_equal(a.scale, b.scale)
            and np.array_equal(a.zero_point, b.zero_point))


def _ranks(model):
    """{tensor: rank} from onnx's shape inference (what it can tell)."""
    from onnx import shape_inference
    try:
        inferred = shape_inference.infer_shapes(model).graph
    except Exception:           # noqa: BLE001  (a model inference rejects: no ranks, no pooling)
        return {}
    values = list(inferred.input) + list(inferred.value_info) + list(inferred.output)
    return {v.name: len(v.type.tensor_type.shape.dim) for v in values
            if v.type.tensor_type.HasField("shape")}


def _unclipped(name, fmt, producer, constants):
    """(the tensor a QuantizeLinear quantizes, its format) seen through what the quantization
    makes redundant: a Max at or below the format's lowest value (the barrier ``--quantized qdq``
    puts between two pairs), and a Clip to a narrower signed range, which is a narrower format
    (a 6-bit one stored in int8): the format takes that width and the Clip goes."""
    for _ in range(2):
        node = producer.get(name)
        if (node is None or node.op_type not in ("Max", "Clip") or fmt.per_channel
                or not all(i in constants and np.size(numpy_helper.to_array(constants[i])) == 1
                           for i in node.input[1:] if i)):
            break
        scale, zero = float(fmt.scale), int(fmt.zero_point)
        low, high = fmt.integer_range()
        bounds = [float(numpy_helper.to_array(constants[i])) if i else None for i in node.input[1:]]
        if node.op_type == "Max" and len(bounds) == 1 and bounds[0] <= (low - zero) * scale:
            name = node.input[0]
            continue
        if node.op_type == "Clip" and len(bounds) == 2 and None not in bounds and zero == 0:
            lo, hi = np.ceil(bounds[0] / scale), np.floor(bounds[1] / scale)
            bits = int(round(np.log2(hi - lo + 1)))
            if fmt.signed and lo == -(2 ** (bits - 1)) and hi == 2 ** (bits - 1) - 1 and 1 < bits <= fmt.bits:
                fmt = dataclasses.replace(fmt, bits=bits)
                name = node.input[0]
                continue
        break
    return name, fmt


def _non_negative(name, producer, restored, rename=None):
    """Whether the float tensor ``name`` cannot be negative: a ReLU's output (one in the model or
    one restored here), or a pooling or layout change of such a tensor, seen through the QDQ
    pairs already removed."""
    for _ in range(64):
        if name in restored or _resolve(name, rename or {}) in restored:
            return True
        node = producer.get(name)
        if node is None:
            return False
        if node.op_type == "Relu":
            return True
        if node.op_type not in _KEEP_SIGN + LAYOUT_OPS:
            return False
        name = node.input[0]
    return False


def _through_layout(name, producer):
    """(the layout nodes from a QuantizeLinear's output to ``name``, in graph order, and the
    tensor they start from): empty where ``name`` is not written by a layout operator."""
    chain = []
    node = producer.get(name)
    while node is not None and node.op_type in LAYOUT_OPS:
        chain.append(node)
        name = node.input[0]
        node = producer.get(name)
    if not chain or node is None or node.op_type != "QuantizeLinear":
        return [], chain[-1].input[0] if chain else name
    return chain[::-1], name


def _float_outputs(graph, nodes, producer, constants, formats):
    """Integer graph outputs written by a QuantizeLinear: the QuantizeLinear becomes an Identity
    of the value it quantized, the output becomes float, its format is recorded."""
    result = []
    outputs = {o.name: o for o in graph.output}
    for node in nodes:
        if node.op_type == "QuantizeLinear" and node.output[0] in outputs:
            fmt = _q_format(node, constants)
            formats[node.output[0]] = fmt
            outputs[node.output[0]].type.tensor_type.elem_type = _FLOAT
            node = helper.make_node("Identity", [node.input[0]], [node.output[0]],
                                    name=node.name or node.output[0])
        result.append(node)
    return result


def _q_format(node, constants):
    def constant(i):
        if len(node.input) <= i or not node.input[i]:
            return None
        if node.input[i] not in constants:
            raise UnsupportedError("a QuantizeLinear whose scale or zero point is computed has "
                                   "no fixed format", layer=node.name or node.output[0])
        return numpy_helper.to_array(constants[node.input[i]])
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    attrs = {a.name: a.i for a in node.attribute}
    onnx_type = (constants[node.input[2]].data_type if len(node.input) > 2 and node.input[2]
                 else attrs.get("output_dtype", TensorProto.UINT8))
    return _format(constant(1), constant(2), onnx_type, axis)


def _integer_only(node, producer):
    """A QuantizeLinear, or a Max reading one: nodes on the integer side of a pair."""
    if node.op_type == "QuantizeLinear":
        return True
    source = producer.get(node.input[0])
    return source is not None and source.op_type == "QuantizeLinear"


def _integer_relu(node, producer, constants):
    """Whether ``node`` is ``Max(QuantizeLinear output, its zero point)``: a ReLU computed on
    the integers (how ``--quantized qdq`` writes one)."""
    if node.op_type != "Max" or len(node.input) != 2:
        return False
    source = producer.get(node.input[0])
    if source is None or source.op_type != "QuantizeLinear" or node.input[1] not in constants:
        return False
    zero = numpy_helper.to_array(constants[source.input[2]]) if len(source.input) > 2 else 0
    return bool(np.all(numpy_helper.to_array(constants[node.input[1]]) == zero))


def _resolve(name, rename):
    while name in rename:
        name = rename[name]
    return name


def _dq_format(node, constants, producer):
    def constant(i):
        if len(node.input) <= i or not node.input[i]:
            return None
        name = node.input[i]
        if name not in constants:
            raise UnsupportedError("a DequantizeLinear whose scale or zero point is computed "
                                   "has no fixed format", layer=node.name or node.output[0])
        return numpy_helper.to_array(constants[name])
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    source = node.input[0]
    if source in constants:
        onnx_type = constants[source].data_type
    elif len(node.input) > 2 and node.input[2] in constants:
        onnx_type = constants[node.input[2]].data_type
    else:
        quantize = producer.get(source)
        attr = {a.name: a.i for a in quantize.attribute} if quantize is not None else {}
        onnx_type = attr.get("output_dtype", TensorProto.UINT8)
    return _format(constant(1), constant(2), onnx_type, axis)


def _dequantize(values, fmt):
    values = np.asarray(values, np.float64)
    scale, zero = np.asarray(fmt.scale, np.float64), np.asarray(fmt.zero_point, np.float64)
    if fmt.axis is not None and scale.ndim:
        shape = [1] * values.ndim
        shape[fmt.axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return ((values - zero) * scale).astype(np.float32)


def describe(formats):
    """Per tensor: the QDQ format, the chosen dynamic fixed point and its distance (lines)."""
    lines = []
    for name, fmt in formats.items():
        choice = nearest_format(fmt)
        kind = "per channel" if fmt.per_channel else f"scale {float(np.ravel(fmt.scale)[0]):.6g}"
        zero = "zero point 0" if not np.any(fmt.zero_point) else \
            f"zero point {int(np.ravel(fmt.zero_point)[0])}"
        verdict = "exact" if choice.exact else (f"nearest: scale off by {choice.scale_ratio:.1%}, "
                                                f"{choice.range_lost:.1%} of the range outside")
        fl = choice.fractional_length
        fl_text = fl if np.ndim(fl) == 0 else f"{int(np.min(fl))}..{int(np.max(fl))}"
        lines.append(f"{name}: {'int' if fmt.signed else 'uint'}{fmt.bits} {kind}, {zero} -> "
                     f"{choice.bit_width}-bit fl {fl_text} ({verdict})")
    return lines


