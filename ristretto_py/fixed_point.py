"""Integer arithmetic of a fixed-point accelerator (DESIGN section 3, "Fixed-point kernel
backend"): values as int64 mantissas m with a fractional length fl (value = m * 2^-fl).

* ``to_mantissa``: Ristretto's dynamic fixed point trimming, returning the integer mantissa
  (clamp to the format, scale by 2^fl, round): ``trim_fixed_point(x) == m * 2^-fl`` exactly.
* ``shift``: move a mantissa to another fractional length; going down divides by a power of two
  and rounds like Ristretto's NEAREST (half to even, or half away from zero in the CPU build).
  Lengths may be per-channel arrays (``to_mantissa`` too), broadcasting against the mantissas.
* ``divide``: integer division rounded with the same NEAREST rule (AVE pooling's mean).
* ``saturate`` to a bit width; ``wrap`` to an accumulator width (two's complement).
* ``accumulate``: a dot product's sum in an accumulator of ``acc_bits`` that wraps or saturates;
  saturation depends on the order of the additions, which here is the kernel's (c, kh, kw) order,
  one term after the other.
"""
import numpy as np

from . import numerics


def to_mantissa(x, bit_width, fractional_length, compat="gpu"):
    """int64 mantissas of ``x`` in dynamic fixed point (bw, fl), NEAREST rounding; ``fl`` may be
    an integer array broadcasting against ``x`` (per-channel lengths)."""
    low, high = numerics.fixed_point_bounds(bit_width, fractional_length)
    clamped = np.minimum(np.maximum(np.asarray(x, np.float32), low), high)
    scaled = (clamped.astype(np.float64) * numerics.power_of_two(fractional_length)).astype(np.float32)
    return numerics.round_to_integer(scaled, numerics.NEAREST, compat).astype(np.int64)


def to_float(mantissa, fractional_length):
    scale = numerics.power_of_two(np.negative(fractional_length))
    return (np.asarray(mantissa, np.float64) * scale).astype(np.float32)


def saturate(mantissa, bit_width):
    low, high = -(1 << (bit_width - 1)), (1 << (bit_width - 1)) - 1
    return np.clip(mantissa, low, high)


def wrap(mantissa, bits):
    """Two's complement wrap-around to ``bits``."""
    if bits >= 64:
        return mantissa
    modulus = 1 << bits
    return ((mantissa + (modulus >> 1)) % modulus) - (modulus >> 1)


def shift(mantissa, from_fl, to_fl, compat="gpu"):
    """Re-express mantissas with fractional length ``from_fl`` at ``to_fl`` (rounding down-shifts).

    The lengths may be integer arrays that broadcast against the mantissas (per-channel
    formats): every value then moves by its own shift, with the same rounding rule."""
    m = np.asarray(mantissa, np.int64)
    s = np.asarray(from_fl, np.int64) - np.asarray(to_fl, np.int64)
    if not np.any(s > 0):
        return m << (-s)
    m = m << np.maximum(-s, 0)
    down = np.maximum(s, 0)
    quotient = m >> down                    # floor division by 2^down
    remainder = m - (quotient << down)      # in [0, 2^down)
    half = (np.int64(1) << down) >> 1       # 0 where nothing is shifted out
    if compat == "gpu":                     # half to even
        tie_up = quotient % 2 == 1
    else:                                   # half away from zero
        tie_up = m >= 0
    up = (down > 0) & ((remainder > half) | ((remainder == half) & tie_up))
    return quotient + up


def divide(numerator, denominator, compat="gpu"):
    """numerator / denominator (int64 arrays, denominators > 0) rounded to the nearest integer,
    ties as ``shift`` breaks them (to even, or away from zero in the CPU build)."""
    n = np.asarray(numerator, np.int64)
    d = np.asarray(denominator, np.int64)
    quotient = np.floor_divide(n, d)
    twice = 2 * (n - quotient * d)            # 2 * remainder, remainder in [0, d)
    tie_up = quotient % 2 == 1 if compat == "gpu" else n >= 0
    return quotient + ((twice > d) | ((twice == d) & tie_up))


def accumulate(terms, acc_bits=64, overflow="wrap", axis=-1):
    """Sum ``terms`` (int64) along ``axis`` in an ``acc_bits`` accumulator.

    Wrap-around is order-free, so the exact sum is wrapped once. Saturation is applied after
    each addition in order, but only where the running sum can leave the range at all (the sum
    of magnitudes bounds every partial sum): elsewhere the exact sum is the answer."""
    terms = np.asarray(terms, np.int64)
    exact = terms.sum(axis=axis)
    if acc_bits >= 64:
        return exact, 0
    if overflow == "wrap":
        wrapped = wrap(exact, acc_bits)
        return wrapped, int(np.count_nonzero(wrapped != exact))
    if overflow != "saturate":
        raise ValueError(f"overflow must be 'wrap' or 'saturate', not {overflow!r}")
    low, high = -(1 << (acc_bits - 1)), (1 << (acc_bits - 1)) - 1
    bound = np.abs(terms).sum(axis=axis)
    risky = bound > high
    if not risky.any():
        return exact, 0
    moved = np.moveaxis(terms, axis, -1)[risky]          # (count, K): only the risky sums
    running = np.zeros(moved.shape[0], np.int64)
    for k in range(moved.shape[1]):
        running = np.clip(running + moved[:, k], low, high)
    result = exact.copy()
    result[risky] = running
    return result, int(np.count_nonzero(result != exact))
