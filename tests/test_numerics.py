"""Ristretto's trimming rules against hand-computed values and ml_dtypes' float8 formats."""
import ml_dtypes
import numpy as np
import pytest

from ristretto_py.numerics import (fixed_point_saturation, minifloat_range, trim_fixed_point,
                                   trim_minifloat, trim_power_of_two)

F = lambda *v: np.array(v, dtype=np.float32)


class TestFixedPoint:
    def test_ties_half_even_by_default_half_away_in_cpu_compat(self):
        x = F(0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49999997)
        np.testing.assert_array_equal(trim_fixed_point(x, 8, 0), F(0, 2, 2, -0, -2, -2, 0))
        np.testing.assert_array_equal(trim_fixed_point(x, 8, 0, compat="cpu"),
                                      F(1, 2, 3, -1, -2, -3, 0))

    def test_negative_fractional_length_halves_integer_pixels(self):
        # 8 bits, fl = -1: step 2, range [-256, 254]; odd pixels are ties.
        x = F(1, 3, 5, 7, 255, 254, 300, -300)
        np.testing.assert_array_equal(trim_fixed_point(x, 8, -1), F(0, 4, 4, 8, 254, 254, 254, -256))
        np.testing.assert_array_equal(trim_fixed_point(x, 8, -1, compat="cpu"),
                                      F(2, 4, 6, 8, 254, 254, 254, -256))

    def test_saturation_bounds(self):
        # 4 bits, fl 2: step 0.25, range [-2, 1.75]
        x = F(1.8, 1.75, 5, -2, -2.1, -100, 0.125, 0.375)
        np.testing.assert_array_equal(trim_fixed_point(x, 4, 2), F(1.75, 1.75, 1.75, -2, -2, -2, 0, 0.5))
        assert fixed_point_saturation(x, 4, 2) == pytest.approx(4 / 8)

    def test_32_bit_upper_bound_is_the_float32_rounded_value(self):
        # (2^31 - 1) * 2^-16 is not a float32: Ristretto clamps to the float32 neighbour 2^15.
        np.testing.assert_array_equal(trim_fixed_point(F(1e9), 32, 16), F(32768.0))

    def test_stochastic_is_seeded_and_unbiased(self):
        x = np.full(20000, 0.3, np.float32)
        a = trim_fixed_point(x, 8, 0, "stochastic", rng=np.random.default_rng(5))
        b = trim_fixed_point(x, 8, 0, "stochastic", rng=np.random.default_rng(5))
        np.testing.assert_array_equal(a, b)
        assert set(np.unique(a)) == {0.0, 1.0}
        assert abs(a.mean() - 0.3) < 0.02

    def test_stochastic_needs_a_generator(self):
        with pytest.raises(ValueError, match="seeded"):
            trim_fixed_point(F(1), 8, 0, "stochastic")


class TestMiniFloat:
    def test_hand_computed_e4m3(self):
        # bias 7; largest = 1.875 * 2^8 = 480 (no inf/NaN codes); smallest normal 2^-7.
        x = F(1.0, 1.0625, 1.1875, 1.9, 1.97, 0.0, -0.0, 2 ** -7, 2 ** -8, 1e6, -1e6, -7.5, 1e-40)
        expected = F(1.0, 1.0, 1.25, 1.875, 2.0, 0, 0, 2 ** -7, 0, 480, -480, -7.5, 0)
        np.testing.assert_array_equal(trim_minifloat(x, 4, 3), expected)
        assert minifloat_range(4, 3) == (2 ** -7, 480.0)

    def test_carry_into_exponent_is_not_resaturated(self):
        # Just below the largest magnitude rounds up to 2 * 2^8 = 512 > 480, as in Ristretto.
        below_top = np.float32(1.96875 * 2 ** 8)   # mantissa .11111 -> rounds to 1.000 * 2
        assert trim_minifloat(F(below_top), 4, 3)[0] == 512.0

    def test_ties_in_the_mantissa(self):
        # 1 + 1/16 is halfway between 1 and 1.125 with 3 mantissa bits.
        assert trim_minifloat(F(1.0625), 4, 3)[0] == 1.0
        assert trim_minifloat(F(1.0625), 4, 3, compat="cpu")[0] == 1.125

    def test_cpu_compat_stops_at_the_first_zero(self):
        x = F(1.3, 0.0, 1.3, 1e-9)
        np.testing.assert_array_equal(trim_minifloat(x, 4, 3), F(1.25, 0, 1.25, 0))
        np.testing.assert_array_equal(trim_minifloat(x, 4, 3, compat="cpu"), F(1.25, 0, 1.3, 1e-9))

    @pytest.mark.parametrize("dtype,exp_bits,mant_bits,low,high", [
        (ml_dtypes.float8_e4m3fn, 4, 3, 2.0 ** -6, 448.0),
        (ml_dtypes.float8_e5m2, 5, 2, 2.0 ** -14, 57344.0),
    ])
    def test_agrees_with_ml_dtypes_inside_the_normal_range(self, dtype, exp_bits, mant_bits, low, high):
        rng = np.random.default_rng(0)
        magnitude = np.exp2(rng.uniform(np.log2(low), np.log2(high), 200000)).astype(np.float32)
        x = magnitude * rng.choice([-1, 1], magnitude.size).astype(np.float32)
        reference = x.astype(dtype).astype(np.float32)
        inside = (np.abs(reference) >= low) & (np.abs(reference) <= high)
        assert inside.mean() > 0.99
        np.testing.assert_array_equal(trim_minifloat(x, exp_bits, mant_bits)[inside], reference[inside])


class TestPowerOfTwo:
    def test_hand_computed(self):
        x = F(0.3, -0.1, 0.0, 0.75, 1e-5, 0.7, 5.0, -0.25)
        # log2: -1.74 -> -2, -3.32 -> -3, -inf -> clamp -8, -0.415 -> 0 -> clamp -1, ...
        expected = F(0.25, -0.125, 2 ** -8, 0.5, 2 ** -8, 0.5, 0.5, -0.25)
        np.testing.assert_array_equal(trim_power_of_two(x, -8, -1), expected)

    def test_log_domain_ties(self):
        # float32(2^-2.5) has a float32 log2 of exactly -2.5: half-even gives -2, C round -3.
        x = F(2 ** -2.5, -(2 ** -2.5))
        assert np.log2(x[0]) == np.float32(-2.5)
        np.testing.assert_array_equal(trim_power_of_two(x, -8, -1), F(0.25, -0.25))
        np.testing.assert_array_equal(trim_power_of_two(x, -8, -1, compat="cpu"), F(0.125, -0.125))
