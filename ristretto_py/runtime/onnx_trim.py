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
"""
import numpy as np

from .. import numerics

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
