"""The QONNX node builders (runtime/qonnx_nodes.py) run by qonnx's own executor against
ristretto_py.numerics: 0 differing values for fixed point; for mini-float, differences exactly
where the module docstring says."""
import numpy as np
import pytest

pytest.importorskip("qonnx")
import onnx  # noqa: E402
from qonnx.core.modelwrapper import ModelWrapper  # noqa: E402
from qonnx.core.onnx_exec import execute_onnx  # noqa: E402
from qonnx.transformation.infer_shapes import InferShapes  # noqa: E402

from ristretto_py import numerics  # noqa: E402
from ristretto_py.errors import UnsupportedError  # noqa: E402
from ristretto_py.runtime import qonnx_nodes  # noqa: E402
from ristretto_py.runtime.onnx_graph import OnnxGraph  # noqa: E402

F32 = np.float32
BELOW_HALF = np.nextafter(F32(0.5), F32(0))          # 0.49999997


def run(graph, out, x):
    """Build a model with input "x" (the shape of ``x``) and output ``out``; run it in qonnx."""
    model = graph.build([("x", x.shape)], [(out, x.shape)], opset=17)
    onnx.checker.check_model(model)
    wrapper = ModelWrapper(model).transform(InferShapes())
    return execute_onnx(wrapper, {"x": x})[out]


def fixed_point_inputs(bit_width, fl, rng):
    """Random values over 1.5x the range, the ties (k + 0.5) * 2^-fl at both ends and
    around 0, both bounds and beyond, 0.49999997 * 2^-fl, tiny values and zeros."""
    step = 2.0 ** -fl
    top = 2.0 ** (bit_width - 1)
    half = min(top, 2048)
    k = np.unique(np.concatenate([np.arange(-top, -top + half), np.arange(-half, half),
                                  np.arange(top - half, top)]))
    low, high = numerics.fixed_point_bounds(bit_width, fl)
    parts = [rng.uniform(-1.5 * top, 1.5 * top, 3000) * step, (k + 0.5) * step,
             [low, high, np.nextafter(low, F32(-np.inf)), np.nextafter(high, F32(np.inf)),
              2 * low, 2 * high, -1e30, 1e30, 0.0, -0.0, 1e-30, -1e-30],
             np.array([BELOW_HALF, -BELOW_HALF, 1.5, -1.5, 2.5, -2.5]) * step]
    return np.concatenate([np.asarray(p, np.float64).ravel() for p in parts]).astype(F32)


@pytest.mark.parametrize("bit_width", [2, 4, 6, 8, 16, 24, 32])
@pytest.mark.parametrize("fl", [-3, 0, 5])
def test_int_quant_equals_trim_fixed_point(bit_width, fl):
    x = fixed_point_inputs(bit_width, fl, np.random.default_rng(bit_width * 100 + fl))
    graph = OnnxGraph()
    out = qonnx_nodes.int_quant(graph, "x", bit_width, fl, "gpu")
    got = run(graph, out, x)
    expected = numerics.trim_fixed_point(x, bit_width, fl, "nearest", "gpu")
    assert got.dtype == F32
    assert np.count_nonzero(got != expected) == 0
    # the inputs tell the rounding rules apart and saturate at both ends
    cpu = numerics.trim_fixed_point(x, bit_width, fl, "nearest", "cpu")
    assert np.count_nonzero(cpu != expected) > 0
    low, high = numerics.fixed_point_bounds(bit_width, fl)
    assert got.min() == low and got.max() == high


def test_int_quant_per_channel_lengths():
    rng = np.random.default_rng(7)
    fl = np.array([-2, 0, 3, 6])
    x = rng.normal(0, 40, (2, 4, 6, 6)) * np.exp2(-fl).reshape(4, 1, 1)
    ties = (rng.integers(-128, 128, (2, 4, 6, 6)) + 0.5) * np.exp2(-fl).reshape(4, 1, 1)
    x = np.where(rng.random(x.shape) < 0.4, ties, x).astype(F32)
    for shape in [(4, 1, 1), (1, 4, 1, 1)]:
        graph = OnnxGraph()
        out = qonnx_nodes.int_quant(graph, "x", 8, fl.reshape(shape), "gpu")
        got = run(graph, out, x)
        expected = numerics.trim_fixed_point(x, 8, fl.reshape(shape), "nearest", "gpu")
        assert np.count_nonzero(got != expected) == 0
        assert np.any(expected != numerics.trim_fixed_point(x, 8, fl.reshape(shape), "nearest", "cpu"))


def test_cpu_rounding_is_refused_and_why():
    with pytest.raises(UnsupportedError, match="HALF_UP"):
        qonnx_nodes.int_quant(OnnxGraph(), "x", 8, 3, "cpu")
    # qonnx's HALF_UP is C round everywhere except at 0.49999997 (floor(|y| + 0.5) in float32)
    fl = 3
    x = fixed_point_inputs(8, fl, np.random.default_rng(1))
    graph = OnnxGraph()
    out = qonnx_nodes._quant(graph, "x", 8, fl, "HALF_UP")
    got = run(graph, out, x)
    differ = got != numerics.trim_fixed_point(x, 8, fl, "nearest", "cpu")
    assert np.array_equal(differ, np.abs(x) == BELOW_HALF * F32(2.0 ** -fl))
    assert np.count_nonzero(differ) == 2


def test_int_quant_refusals_and_domain():
    with pytest.raises(UnsupportedError):
        qonnx_nodes.int_quant(OnnxGraph(), "x", 1, 0, "gpu")
    with pytest.raises(UnsupportedError):
        qonnx_nodes.int_quant(OnnxGraph(), "x", 8, 200, "gpu")
    with pytest.raises(ValueError):
        qonnx_nodes.int_quant(OnnxGraph(), "x", 8, 0, "tpu")
    graph = OnnxGraph()
    value = qonnx_nodes.int_quant(graph, "x", 8, 0, "gpu")
    qonnx_nodes.float_quant(graph, value, 4, 3)
    assert [(d.domain, d.version) for d in graph.domains] == [(qonnx_nodes.DOMAIN, 1)]
    assert all(node.domain == qonnx_nodes.DOMAIN for node in graph.nodes)


# -- mini-float -------------------------------------------------------------------------------
def minifloat_inputs(exp_bits, mant_bits, rng):
    """Log-uniform magnitudes from far below the smallest normal to far above the largest,
    mantissa ties in every binade, the carry band, the format's edges, zeros, denormals."""
    bias = 2 ** (exp_bits - 1) - 1
    smallest, largest = numerics.minifloat_range(exp_bits, mant_bits)
    k = np.arange(-bias - mant_bits - 3, bias + 4)
    j = rng.integers(0, 2 ** mant_bits, k.size)
    ties = (1 + (2 * j + 1) / 2.0 ** (mant_bits + 1)) * np.exp2(k)
    carry = (2 - 2.0 ** -(mant_bits + 1)) * 2.0 ** (bias + 1)
    edges = [smallest, largest, 2.0 ** (bias + 2), carry, np.nextafter(F32(carry), F32(0)),
             2.0 ** (-bias - mant_bits - 1), 2.0 ** (-bias - mant_bits), 1e-40, 0.0, 1e30]
    edges += [np.nextafter(F32(e), F32(0)) for e in (smallest, largest)]
    edges += [np.nextafter(F32(e), F32(np.inf)) for e in (smallest, largest)]
    magnitudes = np.concatenate([np.exp2(rng.uniform(-bias - mant_bits - 4, bias + 4, 4000)),
                                 ties, edges]).astype(F32)
    signs = np.where(rng.random(magnitudes.size) < 0.5, -1, 1).astype(F32)
    return np.concatenate([magnitudes, -magnitudes, signs * magnitudes, [-0.0]]).astype(F32)


def documented_mismatches(x, exp_bits, mant_bits):
    """Where the module docstring says FloatQuant and Ristretto differ (finite inputs)."""
    bias = 2 ** (exp_bits - 1) - 1
    a = np.abs(x.astype(np.float64))
    subnormal = (a < 2.0 ** -bias) & (a > 2.0 ** (-bias - mant_bits - 1))
    carry = (a >= (2 - 2.0 ** -(mant_bits + 1)) * 2.0 ** (bias + 1)) & (a < 2.0 ** (bias + 2))
    if mant_bits == 0:        # ties 1.5 * 2^k: Ristretto rounds down, qonnx up (no carry at top)
        exponent = np.floor(np.log2(np.where(a > 0, a, 1)))
        carry &= a != 1.5 * 2.0 ** (bias + 1)
        tie = (a >= 2.0 ** -bias) & (a < 2.0 ** (bias + 1)) & (a / np.exp2(exponent) == 1.5)
        return subnormal | carry | tie
    return subnormal | carry


@pytest.mark.parametrize("exp_bits,mant_bits", [(4, 3), (5, 2), (5, 10), (6, 1), (3, 5), (4, 0)])
def test_float_quant_against_trim_minifloat(exp_bits, mant_bits):
    x = minifloat_inputs(exp_bits, mant_bits, np.random.default_rng(exp_bits * 31 + mant_bits))
    graph = OnnxGraph()
    out = qonnx_nodes.float_quant(graph, "x", exp_bits, mant_bits)
    got = run(graph, out, x)
    expected = numerics.trim_minifloat(x, exp_bits, mant_bits, "nearest", "gpu")
    differ = got != expected
    predicted = documented_mismatches(x, exp_bits, mant_bits)
    assert np.array_equal(differ, predicted)
    # each documented kind of input is present, and what qonnx makes of them
    bias = 2 ** (exp_bits - 1) - 1
    smallest, largest = numerics.minifloat_range(exp_bits, mant_bits)
    a = np.abs(x)
    assert np.all(expected[a > 2.0 ** (bias + 2)] == np.sign(x[a > 2.0 ** (bias + 2)]) * F32(largest))
    assert np.count_nonzero(a < smallest) > 100 and np.count_nonzero(a > largest) > 100
    grid = 2.0 ** (-bias - mant_bits)
    below = a < smallest
    assert np.array_equal(got[below], (np.rint(x[below] / grid) * grid).astype(F32))
    band = predicted & (a >= (2 - 2.0 ** -(mant_bits + 1)) * 2.0 ** (bias + 1))
    assert band.any() and np.all(np.abs(got[band]) == F32(largest))
    assert np.all(np.abs(expected[band]) == F32(2.0 ** (bias + 2)))
    assert np.count_nonzero(~predicted) > 4000


def test_float_quant_inf_nan_and_wide_exponents():
    x = np.array([np.inf, -np.inf, np.nan], F32)
    graph = OnnxGraph()
    out = qonnx_nodes.float_quant(graph, "x", 4, 3)
    with np.errstate(invalid="ignore"):
        got = run(graph, out, x)
    _, largest = numerics.minifloat_range(4, 3)
    assert np.all(np.isnan(got))
    assert list(numerics.trim_minifloat(x, 4, 3)[:2]) == [largest, -largest]
    with pytest.raises(UnsupportedError):
        qonnx_nodes.float_quant(OnnxGraph(), "x", 8, 3)


def test_float_quant_node_and_data_type():
    from qonnx.transformation.infer_datatypes import InferDataTypes
    graph = OnnxGraph()
    out = qonnx_nodes.float_quant(graph, "x", 4, 3)
    model = ModelWrapper(graph.build([("x", (3,))], [(out, (3,))], opset=17))
    model = model.transform(InferShapes()).transform(InferDataTypes())
    assert model.get_tensor_datatype(out).get_canonical_name() == "FLOAT<5,3,8>"
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in graph.nodes[0].attribute}
    assert attrs == {"rounding_mode": b"ROUND", "has_inf": 0, "has_nan": 0,
                     "has_subnormal": 0, "saturation": 1}


# -- parameters -------------------------------------------------------------------------------
def run_constant(graph, value, shape):
    """Output ``value`` (which does not depend on "x") through x * 0 + value."""
    zero = graph.node("Mul", ["x", graph.scalar(0.0)])[0]
    out = graph.node("Add", [zero, value])[0]
    return run(graph, out, np.ones(shape, F32))


@pytest.mark.parametrize("axis", [0, 1])
def test_weight_constant_per_channel(axis):
    rng = np.random.default_rng(axis)
    shape = (4, 3, 3, 3) if axis == 0 else (3, 4, 3, 3)
    fl = np.array([1, 3, 5, 7])
    lengths = qonnx_nodes.along_axis(fl, axis, 4)
    w = numerics.trim_fixed_point(rng.normal(0, 2.0, shape) * np.exp2(-lengths + 2), 6, lengths)
    graph = OnnxGraph()
    value = qonnx_nodes.weight_constant(graph, w, 6, fl, axis, "w")
    scales = [i for i in graph.initializers if i.name.startswith("scale")]
    assert list(scales[0].dims) == [4 if d == axis else 1 for d in range(4)]
    assert graph.nodes[-1].op_type == "Quant"
    got = run_constant(graph, value, shape)
    assert np.count_nonzero(got != w) == 0
    with pytest.raises(ValueError, match="grid"):
        qonnx_nodes.weight_constant(OnnxGraph(), w + F32(2.0 ** -9), 6, fl, axis, "w")


def test_weight_constant_scalar_length_and_bias():
    rng = np.random.default_rng(3)
    b = numerics.trim_fixed_point(rng.normal(0, 4, 8), 16, 10)
    graph = OnnxGraph()
    value = qonnx_nodes.weight_constant(graph, b, 16, 10, 0, "bias")
    assert np.count_nonzero(run_constant(graph, value, (8,)) != b) == 0
    b_per_channel = numerics.trim_fixed_point(b, 16, np.arange(8))
    graph = OnnxGraph()
    value = qonnx_nodes.weight_constant(graph, b_per_channel, 16, np.arange(8), 0, "bias")
    assert np.count_nonzero(run_constant(graph, value, (8,)) != b_per_channel) == 0


def test_power_of_two_constant():
    w = np.array([[0.0, 0.5, -0.25], [2.0 ** -10, -8.0, 1.0]], F32)
    graph = OnnxGraph()
    value = qonnx_nodes.power_of_two_constant(graph, w, "w")
    assert graph.nodes == [] and graph.domains == []
    assert np.count_nonzero(run_constant(graph, value, w.shape) != w) == 0
    with pytest.raises(ValueError):
        qonnx_nodes.power_of_two_constant(OnnxGraph(), np.array([0.3], F32))
