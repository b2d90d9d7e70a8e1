"""Ristretto's activation trimming written with standard ONNX ops (opset 17), so that the
onnxruntime backend gives the same values as ``ristretto_py.numerics`` bit for bit.

* Dynamic fixed point: Clip to the float32 bounds, multiply by 2^fl (exact), round, multiply by
  2^-fl. NEAREST in the GPU semantics is ONNX ``Round`` (half to even). The CPU build's C
  ``round`` (half away from zero) is ``sign(v) * (floor(|v|) + (|v| - floor(|v|) >= 0.5))``,
  every step exact in float32 (``floor(|v| + 0.5)`` is not: 0.49999997 + 0.5 rounds up to 1).
* Mini-float (GPU semantics only): opset 17 has no bit casts, so the float32 exponent is found
  arithmetically: ``floor(log2|x|)`` from ``Log``, then corrected by comparing |x| with exact
  powers of two taken from a table (``Gather``), so the result never depends on the accuracy of
  ``Log``. The mantissa ``|x| / 2^E - 1`` is exact, is rounded at ``m`` bits with ``Round`` and
  scaled back; zero/denormal/underflow and saturation are selected with ``Where``. NaN inputs are
  not supported (Ristretto saturates them; activations of a working net are never NaN).

Stochastic rounding and the CPU build's mini-float early exit have no ONNX form: layers that use
them run in numpy (the export's tail).

The quantized exports spell the same dynamic-fixed-point trimming as integer-typed nodes:
* QDQ (``quantized="qdq"``): ``QuantizeLinear`` -> ``DequantizeLinear`` with scale 2^-fl and
  zero point 0 in INT4 (opset 21), INT8 or INT16, the narrowest that holds the width. A width
  between those types is clipped first to its exact float bounds (a multiple of the scale), so
  that rounding and saturation give the narrower width's values. QuantizeLinear rounds half to
  even: the GPU build's NEAREST. Widths of 1 or above 16 have no QDQ form.
* QONNX (``quantized="qonnx"``): see ``qonnx_nodes``.
"""
import numpy as np
from onnx import TensorProto

from .. import numerics
from ..errors import UnsupportedError

QDQ_OPSET = 19          # int8/uint8 QuantizeLinear with per-axis scales and output types
QDQ_OPSET_NARROW = 21   # int4/uint4 and int16/uint16 need opset 21
# (largest width, ONNX element type) of QuantizeLinear's signed integer outputs.
QDQ_TYPES = ((4, TensorProto.INT4), (8, TensorProto.INT8), (16, TensorProto.INT16))
# Signed type -> (its unsigned twin, the zero point that centres it).
UNSIGNED = {TensorProto.INT4: (TensorProto.UINT4, 8), TensorProto.INT8: (TensorProto.UINT8, 128)}
QDQ_TYPE_NAMES = {TensorProto.INT4: "int4", TensorProto.INT8: "int8", TensorProto.INT16: "int16",
                  TensorProto.INT32: "int32"}


def trim(graph, value, bit_width, fractional_length, extra):
    """Dynamic-fixed-point trimming of ``value`` in the export's form (``extra["quantized"]``:
    None for the float chain, "qdq" or "qonnx"); returns the new value name."""
    mode = extra.get("quantized")
    compat = extra.get("compat", "gpu")
    if mode == "qdq":
        return qdq(graph, value, bit_width, fractional_length,
                   extra.get("qdq_activations", "signed"))
    if mode == "qonnx":
        from .qonnx_nodes import int_quant
        return int_quant(graph, value, bit_width, fractional_length, compat)
    return fixed_point(graph, value, bit_width, fractional_length, compat)


def _needs(graph, onnx_type):
    """Raise the graph's opset to what QDQ of ``onnx_type`` needs."""
    narrow = onnx_type in (TensorProto.INT4, TensorProto.UINT4, TensorProto.INT16, TensorProto.UINT16)
    graph.opset = max(graph.opset, QDQ_OPSET_NARROW if narrow else QDQ_OPSET)


def qdq_type(bit_width):
    """The ONNX integer type QDQ stores a ``bit_width``-bit signed value in."""
    if bit_width < 2:
        raise UnsupportedError(f"a {bit_width}-bit format has no QDQ form (QuantizeLinear's "
                               "narrowest signed type, int4, holds 2 to 4 bits)")
    for widest, onnx_type in QDQ_TYPES:
        if bit_width <= widest:
            return onnx_type
    raise UnsupportedError(f"a {bit_width}-bit format has no QDQ form (QuantizeLinear's widest "
                           "integer type is int16)")


def qdq(graph, value, bit_width, fractional_length, activations="signed"):
    """QuantizeLinear -> DequantizeLinear of ``value`` at (bit_width, fractional_length).

    ``activations="unsigned"`` stores widths up to 8 bits as uint4/uint8 with the zero point
    at the middle of the type (8 or 128): the same values (q - zero point = the signed
    mantissa), and the form onnxruntime's x86 builds fuse into their integer kernels (their
    QDQ fusion takes int8 activations on ARM only, unless the session option
    ``session.qdqisint8allowed`` asks for it)."""
    onnx_type = qdq_type(bit_width)
    known = graph.formats.get(value)
    if known is not None and _contains((bit_width, fractional_length), known):
        return value                   # already on a grid the format holds: trimming is exact
    if known is not None:
        # A requantization: DequantizeLinear -> QuantizeLinear. onnxruntime's
        # DoubleQDQPairsRemover would merge the two pairs into one at a recomputed scale, which
        # rounds differently; a no-op Max at the new format's lower bound keeps them apart.
        low = numerics.fixed_point_bounds(bit_width, fractional_length)[0]
        value = graph.node("Max", [value, graph.scalar(low)])[0]
    if bit_width not in (4, 8, 16):
        low, high = numerics.fixed_point_bounds(bit_width, fractional_length)
        value = graph.node("Clip", [value, graph.scalar(low), graph.scalar(high)])[0]
    scale = graph.scalar(2.0 ** -fractional_length)
    # Explicit zero points: onnxruntime 1.32 types a missing one as uint8 when it fuses (e.g. into
    # QLinearAdd), and in opset 21 its QDQ propagation across a Reshape gives the Q it copies a
    # uint8 zero point, so int8 nets stay at opset 19 unless int4/int16 ask for 21.
    middle = 0
    if activations == "unsigned" and onnx_type in UNSIGNED:
        onnx_type, middle = UNSIGNED[onnx_type]
    _needs(graph, onnx_type)
    zero = graph.typed_constant(np.asarray(middle), onnx_type, "zero_point")
    quantized = graph.node("QuantizeLinear", [value, scale, zero])[0]
    return _dequantized(graph, quantized, scale, zero, (bit_width, fractional_length))


def _dequantized(graph, quantized, scale, zero, fmt):
    result = graph.node("DequantizeLinear", [quantized, scale, zero])[0]
    graph.formats[result] = fmt
    graph.integers[result] = (quantized, scale, zero)
    return result


def integer_relu(graph, value):
    """ReLU of a QDQ value computed on its integers, ``Max(q, zero point)`` before the
    DequantizeLinear (exact, and it keeps the format); None where ``value`` is not a
    DequantizeLinear output of this export."""
    known = graph.integers.get(value)
    if known is None:
        return None
    quantized, scale, zero = known
    clipped = graph.node("Max", [quantized, zero])[0]
    return _dequantized(graph, clipped, scale, zero, graph.formats[value])


def _contains(outer, inner):
    """Whether every value of fixed-point format ``inner`` (bw, fl) is one of ``outer``."""
    (bw_o, fl_o), (bw_i, fl_i) = outer, inner
    return fl_o >= fl_i and bw_o - fl_o >= bw_i - fl_i


def dequantized_constant(graph, mantissas, bit_width, fractional_length, axis, hint,
                         onnx_type=None):
    """An integer initializer of ``mantissas`` and its DequantizeLinear at scale 2^-fl (a
    vector of lengths: per axis ``axis``); returns the float value name."""
    onnx_type = onnx_type or qdq_type(bit_width)
    _needs(graph, onnx_type)
    stored = graph.typed_constant(mantissas, onnx_type, hint)
    lengths = np.asarray(fractional_length)
    if lengths.ndim:
        lengths = lengths.reshape(-1)
        scale = graph.constant(np.exp2(-lengths.astype(np.float64)).astype(np.float32), "scale")
        zero = graph.typed_constant(np.zeros(lengths.size, np.int64), onnx_type, "zero_point")
        return graph.node("DequantizeLinear", [stored, scale, zero], axis=axis)[0]
    scale = graph.scalar(2.0 ** -float(lengths))
    zero = graph.typed_constant(np.asarray(0), onnx_type, "zero_point")
    return graph.node("DequantizeLinear", [stored, scale, zero])[0]

FLT_MIN = float(np.finfo(np.float32).tiny)
_MIN_EXP, _MAX_EXP = -126, 127       # exponents of normal float32 numbers


def fixed_point(graph, value, bit_width, fractional_length, compat):
    """Append the trimming of ``value`` to (bit_width, fractional_length); return the new name."""
    low, high = numerics.fixed_point_bounds(bit_width, fractional_length)
    clipped = graph.node("Clip", [value, graph.scalar(low), graph.scalar(high)])[0]
    scaled = graph.node("Mul", [clipped, graph.scalar(2.0 ** fractional_length)])[0]
    rounded = round_nearest(graph, scaled, compat)
    return graph.node("Mul", [rounded, graph.scalar(2.0 ** -fractional_length)])[0]


def round_nearest(graph, value, compat):
    if compat == "gpu":
        return graph.node("Round", [value])[0]
    # floor(|v|) and |v| - floor(|v|) are exact in float32; |v| + 0.5 would not be.
    magnitude = graph.node("Abs", [value])[0]
    whole = graph.node("Floor", [magnitude])[0]
    fraction = graph.node("Sub", [magnitude, whole])[0]
    up = graph.node("Cast", [graph.node("GreaterOrEqual", [fraction, graph.scalar(0.5)])[0]], to=1)[0]
    return graph.node("Mul", [graph.node("Sign", [value])[0], graph.node("Add", [whole, up])[0]])[0]


def _power_of_two(graph, table, exponent):
    """2^exponent (a float tensor of integers, clipped to the normal range) from the table."""
    clipped = graph.node("Clip", [exponent, graph.scalar(_MIN_EXP), graph.scalar(_MAX_EXP)])[0]
    shifted = graph.node("Sub", [clipped, graph.scalar(_MIN_EXP)])[0]
    index = graph.node("Cast", [shifted], to=7)[0]            # INT64
    return graph.node("Gather", [table, index], axis=0)[0]


def minifloat(graph, value, exp_bits, mant_bits):
    """Append Ristretto's mini-float trimming (NEAREST, GPU semantics) of ``value``."""
    table = graph.constant(np.exp2(np.arange(_MIN_EXP, _MAX_EXP + 1, dtype=np.float64))
                           .astype(np.float32), "pow2_table")
    bias = 2 ** (exp_bits - 1) - 1
    max_biased = 2 ** exp_bits - 1
    magnitude = graph.node("Abs", [value])[0]
    tiny = graph.node("Less", [magnitude, graph.scalar(FLT_MIN)])[0]
    safe = graph.node("Max", [magnitude, graph.scalar(FLT_MIN)])[0]
    # A first guess of the exponent, then exact correction against powers of two.
    log2 = graph.node("Mul", [graph.node("Log", [safe])[0], graph.scalar(1.0 / np.log(2.0))])[0]
    guess = graph.node("Floor", [graph.node("Clip", [log2, graph.scalar(_MIN_EXP),
                                                      graph.scalar(_MAX_EXP)])[0]])[0]
    power = _power_of_two(graph, table, guess)
    too_big = graph.node("Cast", [graph.node("Greater", [power, safe])[0]], to=1)[0]
    doubled = graph.node("Mul", [power, graph.scalar(2.0)])[0]
    too_small = graph.node("Cast", [graph.node("LessOrEqual", [doubled, safe])[0]], to=1)[0]
    exponent = graph.node("Add", [graph.node("Sub", [guess, too_big])[0], too_small])[0]
    exponent = graph.node("Clip", [exponent, graph.scalar(_MIN_EXP), graph.scalar(_MAX_EXP)])[0]
    power = _power_of_two(graph, table, exponent)
    # Mantissa in [0, 1), rounded to mant_bits bits; a carry gives 2.0 (the value doubles).
    fraction = graph.node("Sub", [graph.node("Div", [safe, power])[0], graph.scalar(1.0)])[0]
    steps = graph.node("Round", [graph.node("Mul", [fraction, graph.scalar(2.0 ** mant_bits)])[0]])[0]
    significand = graph.node("Add", [graph.scalar(1.0),
                                     graph.node("Mul", [steps, graph.scalar(2.0 ** -mant_bits)])[0]])[0]
    trimmed = graph.node("Mul", [significand, power])[0]
    biased = graph.node("Add", [exponent, graph.scalar(bias)])[0]
    underflow = graph.node("Or", [tiny, graph.node("Less", [biased, graph.scalar(0.0)])[0]])[0]
    saturate = graph.node("Greater", [biased, graph.scalar(max_biased)])[0]
    with np.errstate(over="ignore"):
        largest = np.float32(numerics.minifloat_range(exp_bits, mant_bits)[1])
    trimmed = graph.node("Where", [saturate, graph.scalar(largest), trimmed])[0]
    negative = graph.node("Less", [value, graph.scalar(0.0)])[0]
    signed = graph.node("Where", [negative, graph.node("Neg", [trimmed])[0], trimmed])[0]
    return graph.node("Where", [underflow, graph.scalar(0.0), signed])[0]
