"""Ristretto's trimming rules, reproduced bit for bit in float32. Nothing else in ristretto-py
rounds values to a precision: every runtime and pass calls these functions.

Ristretto's two builds disagree in three places only (DESIGN section 3): the two rounding rules
below and, in ``precision``, whether power-of-two layers trim their activations. Everything else
is common to both, including the range reading of ``quantize`` (after the forward pass) and the
in-place trimming of a layer's inputs. ``compat`` picks the build:
* ``"gpu"`` (default): its documented semantics, which its CUDA kernels implement: NEAREST is
  round-half-to-even (``rint``); mini-float trims every element.
* ``"cpu"``: its CPU build: NEAREST is round-half-away-from-zero (C ``round``); in mini-float
  trimming, the first element that is zero, a float32 denormal or underflows ends the loop, so it
  becomes 0 and every later element of the tensor is left untouched (``return`` inside the loop
  of ``Trim2MiniFloat_cpu``).
STOCHASTIC rounding is ``floor(x + u)`` with ``u`` uniform in [0, 1) drawn from a seeded
``numpy.random.Generator``. Intermediate arithmetic follows Ristretto's: the clamp bounds are
float32 values, the scaled value is stored back to float32 before rounding, and results are
computed in float64 and stored as float32.
"""
import numpy as np

NEAREST, STOCHASTIC = "nearest", "stochastic"
COMPAT_MODES = ("gpu", "cpu")


def _check(rounding, compat, rng):
    if rounding not in (NEAREST, STOCHASTIC):
        raise ValueError(f"rounding must be {NEAREST!r} or {STOCHASTIC!r}, not {rounding!r}")
    if compat not in COMPAT_MODES:
        raise ValueError(f"compat must be one of {COMPAT_MODES}, not {compat!r}")
    if rounding == STOCHASTIC and rng is None:
        raise ValueError("stochastic rounding needs a seeded numpy Generator (rng=...)")


def round_to_integer(values, rounding=NEAREST, compat="gpu", rng=None):
    """Round float64 ``values`` to integers by Ristretto's rule for ``rounding``/``compat``."""
    _check(rounding, compat, rng)
    values = np.asarray(values, dtype=np.float64)
    if rounding == STOCHASTIC:
        return np.floor(values + rng.random(values.shape))
    if compat == "gpu":
        return np.rint(values)
    # C round(): halves go away from zero. Exact in float64 for any float32 input.
    return np.trunc(values + np.copysign(0.5, values))


def power_of_two(exponent):
    """2^exponent in float64, exactly: a Python float for an integer, an array for an array of
    integers (one fractional length per channel, shaped to broadcast against the values)."""
    if np.ndim(exponent) == 0:
        return 2.0 ** int(exponent)
    return np.ldexp(1.0, np.asarray(exponent, dtype=np.int64))


def fixed_point_bounds(bit_width, fractional_length):
    """(min, max) representable value, as the float32 numbers Ristretto clamps with.

    ``fractional_length`` is an integer or an integer array (per-channel formats): the bounds
    then are float32 arrays of the same shape."""
    step = power_of_two(np.negative(fractional_length))
    high = np.float32((2.0 ** (bit_width - 1) - 1) * step)
    low = np.float32(-(2.0 ** (bit_width - 1)) * step)
    return low, high


def trim_fixed_point(x, bit_width, fractional_length, rounding=NEAREST, compat="gpu", rng=None):
    """Dynamic fixed point: clamp to the format's range, scale by 2^fl, round, scale back.

    ``fractional_length`` may be an integer array that broadcasts against ``x`` (one length per
    output channel, e.g. shape (C, 1, 1, 1) for convolution weights); each value is then trimmed
    with its own length, by exactly the scalar rule."""
    _check(rounding, compat, rng)
    x = np.asarray(x, dtype=np.float32)
    low, high = fixed_point_bounds(bit_width, fractional_length)
    clamped = np.minimum(np.maximum(x, low), high)
    with np.errstate(over="ignore", under="ignore"):
        scaled = (clamped.astype(np.float64) * power_of_two(fractional_length)).astype(np.float32)
        rounded = round_to_integer(scaled, rounding, compat, rng)
        return (rounded * power_of_two(np.negative(fractional_length))).astype(np.float32)


def fixed_point_saturation(x, bit_width, fractional_length):
    """Share of the values of ``x`` that the format clips (outside [min, max]); a
    ``fractional_length`` array broadcasts against ``x`` as in ``trim_fixed_point``."""
    x = np.asarray(x, dtype=np.float32)
    if x.size == 0:
        return 0.0
    low, high = fixed_point_bounds(bit_width, fractional_length)
    return float(np.count_nonzero((x > high) | (x < low))) / x.size


def trim_minifloat(x, exp_bits, mant_bits, rounding=NEAREST, compat="gpu", rng=None):
    """Mini-float with ``exp_bits`` exponent and ``mant_bits`` mantissa bits (DESIGN section 3):
    no denormals, no inf/NaN, saturation to the largest magnitude, zero below the smallest
    normal number, and a mantissa carry that doubles the value without re-saturating."""
    _check(rounding, compat, rng)
    x = np.asarray(x, dtype=np.float32)
    bits = x.view(np.uint32).astype(np.int64)
    sign = bits >> 31
    exponent_field = (bits >> 23) & 0xFF
    mantissa = (bits & 0x7FFFFF).astype(np.float64)
    bias = 2 ** (exp_bits - 1) - 1
    exponent = exponent_field - 127 + bias
    max_exponent, max_mantissa = 2 ** exp_bits - 1, 2 ** mant_bits - 1
    to_zero = (exponent_field == 0) | (exponent < 0)
    saturate = exponent > max_exponent
    short = round_to_integer(mantissa / 2.0 ** (23 - mant_bits), rounding, compat, rng)
    short = np.where(saturate, max_mantissa, short)
    exponent = np.where(saturate, max_exponent, exponent)
    with np.errstate(over="ignore"):
        magnitude = (short + 2.0 ** mant_bits) / 2.0 ** mant_bits * np.exp2(
            (exponent - bias).astype(np.float64))
        result = np.where(sign == 1, -magnitude, magnitude).astype(np.float32)
    result[to_zero] = 0.0
    if compat == "cpu" and to_zero.any():
        flat_result, flat_x = result.reshape(-1), x.reshape(-1)
        first = int(np.argmax(to_zero.reshape(-1)))
        flat_result[first + 1:] = flat_x[first + 1:]
    return result


def trim_power_of_two(x, exp_min, exp_max, rounding=NEAREST, compat="gpu", rng=None):
    """Integer power-of-two weights: sign * 2^round(log2|w|), exponent clamped to
    [exp_min, exp_max]; a zero weight becomes +2^exp_min."""
    _check(rounding, compat, rng)
    x = np.asarray(x, dtype=np.float32)
    with np.errstate(divide="ignore"):
        exponent = np.log2(np.abs(x))  # float32, as log2f
    exponent = round_to_integer(exponent, rounding, compat, rng)
    exponent = np.clip(exponent, exp_min, exp_max)
    sign = np.where(x >= 0, 1.0, -1.0)
    return (sign * np.exp2(exponent)).astype(np.float32)


def minifloat_range(exp_bits, mant_bits):
    """(smallest positive normal, largest finite) magnitudes of the mini-float format."""
    bias = 2 ** (exp_bits - 1) - 1
    largest = (2.0 - 2.0 ** -mant_bits) * 2.0 ** (2 ** exp_bits - 1 - bias)
    return 2.0 ** -bias, largest


def quantclip(x, msb, bits):
    """PULP HWCE's clip-and-floor (DESIGN section 3): clip to [-2^msb, 2^msb - q], then
    floor(x / q) * q with the step q = 2^(msb + 1) / 2^bits. All steps are exact in float32."""
    x = np.asarray(x, dtype=np.float32)
    step = np.float32(2.0 ** (msb + 1 - bits))
    clipped = np.clip(x, np.float32(-(2.0 ** msb)), np.float32(2.0 ** msb) - step)
    return (np.floor(clipped / step) * step).astype(np.float32)


# -- training-time weight quantizers of the literature (WeightQuantizationParameter) ------------
# Computed in float64 from the float32 weights and stored as float32, like the trimming above.

def binarize(w, scale=1.0):
    """BinaryConnect's deterministic binarization: ``scale * sign(w)`` with sign(0) = +1."""
    w = np.asarray(w, np.float32)
    return np.where(w >= 0, np.float64(scale), -np.float64(scale)).astype(np.float32)


def stochastic_binarize(w, scale, rng):
    """BinaryConnect's stochastic binarization: +scale with probability hard_sigmoid(w / scale)
    = clip((w / scale + 1) / 2, 0, 1), else -scale; one uniform draw per weight from ``rng``."""
    w = np.asarray(w, np.float64)
    probability = np.clip((w / scale + 1.0) / 2.0, 0.0, 1.0)
    draws = rng.random(w.shape)
    return np.where(draws < probability, scale, -scale).astype(np.float32)


def ternary_constants(w, threshold=0.7):
    """TWN's (threshold t, scale a): t = threshold * mean|w|, a = mean(|w| where |w| > t)
    (0 when no weight exceeds t)."""
    magnitude = np.abs(np.asarray(w, np.float64))
    t = threshold * float(magnitude.mean()) if magnitude.size else 0.0
    above = magnitude[magnitude > t]
    return t, (float(above.mean()) if above.size else 0.0)


def ternarize(w, threshold=0.7):
    """TWN: +a where w > t, -a where w < -t, 0 in between (``ternary_constants``)."""
    w = np.asarray(w, np.float64)
    t, a = ternary_constants(w, threshold)
    return np.where(w > t, a, np.where(w < -t, -a, 0.0)).astype(np.float32)


def dorefa_weights(w, bits):
    """DoReFa-Net's k-bit weights in [-1, 1]: ``2 * q_k(tanh(w) / (2 max|tanh w|) + 1/2) - 1``
    with ``q_k(x) = rint((2^k - 1) x) / (2^k - 1)``; k = 1: ``mean|w| * sign(w)``. All-zero
    weights stay zero."""
    w = np.asarray(w, np.float64)
    if bits == 1:
        return binarize(w, float(np.abs(w).mean()) if w.size else 0.0)
    t = np.tanh(w)
    top = float(np.abs(t).max()) if t.size else 0.0
    if top == 0.0:
        return np.zeros(w.shape, np.float32)
    levels = 2.0 ** bits - 1.0
    q = np.rint(levels * (t / (2.0 * top) + 0.5)) / levels
    return (2.0 * q - 1.0).astype(np.float32)
