"""Ristretto's formats as QONNX nodes (domain ``qonnx.custom_op.general``), the arbitrary-precision
ONNX dialect that FINN and hls4ml read. Each builder appends to an ``OnnxGraph`` and returns the
new value name; ``tests/test_qonnx_nodes.py`` runs them with qonnx's own executor and compares
them with ``ristretto_py.numerics`` value for value.

Dynamic fixed point (``int_quant``) is exact: a ``Quant`` node, signed, not narrow, zero point 0,
scale 2^-fl (a float32 power of two, so x / scale and y * scale are exact), clamps to the same
integer range and rounds with ``ROUND`` (numpy's ``round``: half to even), Ristretto's GPU
NEAREST. The CPU build's half-away-from-zero has no exact mode: qonnx's ``HALF_UP`` computes
``sign(y) * floor(|y| + 0.5)`` in float32, and 0.49999997 + 0.5 rounds to 1.0, so y =
0.49999997 gives 1 instead of 0 (and, from 25 bits up, odd integers in [2^23, 2^24) go up by
one); ``compat="cpu"`` is refused. One bit is refused too: qonnx turns a signed 1-bit Quant into
a bipolar +-1 sign, not Ristretto's {-1, 0} * 2^-fl.

Mini-float (``float_quant``): Ristretto's (e, m) format has no subnormals and uses all 2^e
exponent codes for normal numbers, so its values are those of qonnx's FLOAT<e+1, m, bias+1>
(bias = 2^(e-1) - 1) from the smallest normal 2^-bias up to ``max_val`` = (2 - 2^-m) * 2^(bias+1),
Ristretto's largest value. The node is that ``FloatQuant`` (``ROUND``, has_subnormal=0,
has_inf=0, has_nan=0, saturation=1). Both round the mantissa half to even and saturate beyond
the top binade alike; it equals ``trim_minifloat(..., "nearest", "gpu")`` everywhere except
(|x| as float32; found by sweeping every float32 of the relevant binades):
* |x| < 2^-bias: Ristretto gives 0. qonnx's executor ignores has_subnormal and rounds to the
  subnormal grid 2^(-bias-m): nonzero for |x| > 2^(-bias-m-1), and 2^-bias just below 2^-bias.
  (A backend that honours has_subnormal=0 by flushing before rounding would match.)
* the mantissa carry at the top, |x| in [(2 - 2^-(m+1)) * 2^(bias+1), 2^(bias+2)): Ristretto's
  carry doubles the value to 2^(bias+2) without re-saturating; qonnx clamps it to ``max_val``.
* m = 0 only: ties |x| = 1.5 * 2^k, 2^-bias <= |x| < 2^(bias+1): Ristretto rounds the mantissa
  field (0.5) to even, down to 2^k; qonnx rounds the significand 1.5 to 2, up to 2^(k+1). (The
  tie 1.5 * 2^(bias+1) gives max_val in both, so it is not in the carry band for m = 0.)
* m >= 18 only: qonnx finds the binade with float32 ``log2``, which rounds to k for some x just
  below 2^k, so those few x round on the grid of the binade above (from m = 18 at e = 7, 19 at
  e = 6, 20 at e = 5, 22 at e = 4, 23 at e = 3; none for m <= 17).
* inf and NaN: Ristretto saturates them to +-max (NaN's sign kept); qonnx gives NaN.
* signed zeros: qonnx keeps -0.0 where Ristretto writes +0.0 (equal as values).
e = 8 is refused: qonnx's scales leave float32 (2^(bias+2) overflows, 2^(-bias-m) underflows).
No QONNX float type with e exponent bits holds Ristretto's values: qonnx reserves the lowest
exponent code for subnormals. FLOAT<e, m, bias> would state the true width but also lose the
lowest normal binade [2^-bias, 2^(1-bias)), rounded there at half Ristretto's precision. The type
chosen here is 1 bit wider (so ``inference_cost`` counts 2 + e + m bits per value).

Parameters: ``weight_constant`` stores trimmed weights as a float32 initializer followed by a
Quant node of their format (one scale per channel along ``axis`` when the length is a vector),
as Brevitas exports do. QONNX has no power-of-two quantizer, so ``power_of_two_constant`` stores
such weights as their exact float32 values with no quantizer node.
"""
import numpy as np
from onnx import helper

from .. import numerics
from ..errors import UnsupportedError

DOMAIN = "qonnx.custom_op.general"
ROUNDING = {"gpu": "ROUND"}     # numpy round: half to even, as Ristretto's rint


def _use_domain(graph):
    if not any(d.domain == DOMAIN for d in graph.domains):
        graph.domains.append(helper.make_opsetid(DOMAIN, 1))


def _scale(bit_width, fractional_length):
    """2^-fl as float32 (the shape of ``fractional_length``); refuse lengths whose scale is not
    a float32 normal number or whose format bounds overflow float32."""
    fl = np.asarray(fractional_length)
    if not np.all(fl == np.round(fl)):
        raise ValueError(f"fractional lengths must be integers, not {fractional_length}")
    fl = fl.astype(np.int64)
    low, _ = numerics.fixed_point_bounds(bit_width, fl)
    if np.any(fl < -127) or np.any(fl > 126) or not np.all(np.isfinite(low)):
        raise UnsupportedError(f"a ({bit_width}, {fractional_length}) format leaves float32: "
                               "QONNX needs its scale 2^-fl and its bounds as normal float32")
    return np.ldexp(np.float32(1.0), -fl).astype(np.float32)


def _quant(graph, value, bit_width, fractional_length, rounding_mode):
    if int(bit_width) != bit_width or bit_width < 2:
        raise UnsupportedError(f"a {bit_width}-bit fixed-point format has no QONNX Quant form: "
                               "it needs 2 bits or more (1 bit is qonnx's bipolar +-1 sign)")
    _use_domain(graph)
    inputs = [value, graph.constant(_scale(bit_width, fractional_length), "scale"),
              graph.scalar(0.0), graph.scalar(float(bit_width))]
    return graph.node("Quant", inputs, domain=DOMAIN, signed=1, narrow=0,
                      rounding_mode=rounding_mode)[0]


def int_quant(graph, value, bit_width, fractional_length, compat="gpu"):
    """Ristretto's dynamic fixed point as one QONNX ``Quant`` node; returns its output name.

    ``fractional_length``: an integer, or an integer array shaped to broadcast against the
    value (qonnx divides by the scale with numpy broadcasting, e.g. (C, 1, 1) for NCHW
    activations). Equals ``numerics.trim_fixed_point(x, bit_width, fractional_length,
    "nearest", compat)`` exactly; ``compat="cpu"`` has no exact QONNX rounding mode and raises
    ``UnsupportedError``."""
    if compat not in ROUNDING:
        if compat in numerics.COMPAT_MODES:
            raise UnsupportedError(
                "QONNX cannot export --compat cpu rounding: its HALF_UP mode computes "
                "floor(|y| + 0.5) in float32, which rounds 0.49999997 up to 1 (C round gives 0)")
        raise ValueError(f"compat must be one of {numerics.COMPAT_MODES}, not {compat!r}")
    return _quant(graph, value, bit_width, fractional_length, ROUNDING[compat])


def float_quant(graph, value, exp_bits, mant_bits):
    """Ristretto's mini-float (GPU semantics) as one QONNX ``FloatQuant`` node; returns its
    output name. The node is FLOAT<exp_bits + 1, mant_bits, bias + 1> capped at Ristretto's
    largest value: see the module docstring for the inputs where it differs."""
    if int(exp_bits) != exp_bits or int(mant_bits) != mant_bits or exp_bits < 1 or mant_bits < 0:
        raise ValueError(f"bad mini-float format ({exp_bits}, {mant_bits})")
    if exp_bits > 7:
        raise UnsupportedError(f"a {exp_bits}-bit mini-float exponent leaves float32 in "
                               "qonnx's FloatQuant (its scales overflow or underflow)")
    _use_domain(graph)
    bias = 2 ** (exp_bits - 1) - 1
    _, largest = numerics.minifloat_range(exp_bits, mant_bits)
    inputs = [value, graph.scalar(1.0), graph.scalar(float(exp_bits + 1)),
              graph.scalar(float(mant_bits)), graph.scalar(float(bias + 1)),
              graph.scalar(largest)]
    return graph.node("FloatQuant", inputs, domain=DOMAIN, rounding_mode="ROUND",
                      has_inf=0, has_nan=0, has_subnormal=0, saturation=1)[0]


def along_axis(values, axis, ndim):
    """A per-channel vector reshaped to broadcast along ``axis`` of an ``ndim``-D array (a
    scalar is returned unchanged)."""
    values = np.asarray(values)
    if values.ndim == 0:
        return values
    shape = [1] * ndim
    shape[axis] = values.size
    return values.reshape(shape)


def weight_constant(graph, array, bit_width, fractional_length, axis=0, hint="weights"):
    """Trimmed parameters as QONNX stores them: a float32 initializer with the values, then a
    ``Quant`` node of their format (an identity on them). A vector ``fractional_length`` gives
    one scale per channel, shaped to broadcast along ``axis``. Raises ValueError if a value is
    not on the format's grid (the array must already be trimmed)."""
    array = np.asarray(array, np.float32)
    length = np.asarray(fractional_length)
    if length.ndim:
        if length.size != array.shape[axis]:
            raise ValueError(f"{hint}: {length.size} fractional lengths for "
                             f"{array.shape[axis]} channels along axis {axis}")
        length = along_axis(length.reshape(-1), axis, array.ndim)
    if not np.array_equal(numerics.trim_fixed_point(array, bit_width, length), array):
        raise ValueError(f"{hint}: values are not on the ({bit_width}, {fractional_length}) "
                         "fixed-point grid; trim them first")
    value = graph.constant(array, hint)
    return _quant(graph, value, bit_width, length, "ROUND")


def power_of_two_constant(graph, array, hint="weights"):
    """Power-of-two weights (0 or +-2^e) as a float32 initializer of their exact values: QONNX
    has no power-of-two quantizer node, so nothing marks their format. Raises ValueError for
    any other value."""
    array = np.asarray(array, np.float32)
    mantissa, _ = np.frexp(array)
    if not np.all((mantissa == 0) | (np.abs(mantissa) == 0.5)):
        raise ValueError(f"{hint}: not all values are 0 or +-2^e")
    return graph.constant(array, hint)
