"""Ristretto layer types on both backends: trimming of inputs, parameters and outputs around the
float operation (checked against OpenCV's convolution of the trimmed operands), the in-place
input trimming of both builds, seeded stochastic rounding, LRNRistretto against a scalar
transcription of Ristretto's CUDA kernel, and the ONNX trimming ops bit for bit against
``numerics``."""
import cv2
import numpy as np
import onnxruntime as ort
import pytest

from ristretto_py import Net, numerics
from ristretto_py.errors import NetError
from ristretto_py.runtime import NumpyRuntime, OnnxRuntime
from ristretto_py.runtime import onnx_trim
from ristretto_py.runtime.onnx_graph import OnnxGraph
from conftest import net_param, write_model

DATA = 'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }\n'


def _edge_values():
    rng = np.random.default_rng(0)
    spread = rng.standard_normal(20000) * 10.0 ** rng.uniform(-9, 9, 20000)
    special = [0.0, -0.0, 1e-40, -1e-40, 1.0, 2.0, 0.5, -0.75, 3.4e38, -3.4e38, 1.1754944e-38,
               2.0 ** 127, 1.9999999, 0.99999994, 0.49999997, -2.5, 2.5, 3.5, -0.5]
    halves = np.arange(-600, 600) / 8.0
    return np.concatenate([spread, special, halves]).astype(np.float32)


def _run_graph(build, x):
    graph = OnnxGraph()
    graph.node("Identity", [build(graph, "x")], ["y"])
    model = graph.build([("x", (None,))], [("y", (None,))])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["y"], {"x": x})[0]


@pytest.mark.parametrize("compat", ["gpu", "cpu"])
@pytest.mark.parametrize("bw, fl", [(8, 3), (16, -2), (32, 16), (4, 0), (8, 10), (2, 1)])
def test_onnx_fixed_point_is_bit_exact(bw, fl, compat):
    x = _edge_values()
    ours = _run_graph(lambda g, v: onnx_trim.fixed_point(g, v, bw, fl, compat), x)
    np.testing.assert_array_equal(ours, numerics.trim_fixed_point(x, bw, fl, compat=compat))


@pytest.mark.parametrize("exp_bits, mant_bits", [(4, 3), (5, 2), (4, 11), (8, 7), (4, 27), (6, 9)])
def test_onnx_minifloat_is_bit_exact(exp_bits, mant_bits):
    x = _edge_values()
    ours = _run_graph(lambda g, v: onnx_trim.minifloat(g, v, exp_bits, mant_bits), x)
    with np.errstate(over="ignore"):
        reference = numerics.trim_minifloat(x, exp_bits, mant_bits)
    np.testing.assert_array_equal(ours, reference)


def _conv_net(tmp_path, quantization, extra_layers="", rtype="ConvolutionRistretto", weight=None, bias=None):
    rng = np.random.default_rng(5)
    if weight is None:
        weight = (rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32)
        bias = rng.standard_normal(4).astype(np.float32)
    text = DATA + (f'layer {{ name: "conv" type: "{rtype}" bottom: "data" top: "conv" '
                   f'convolution_param {{ num_output: 4 kernel_size: 3 pad: 1 }} '
                   f'quantization_param {{ {quantization} }} }}\n') + extra_layers
    model, weights = write_model(tmp_path, text, {"conv": [weight, bias], "conv2": [weight, bias]})
    return Net.load(model, weights), weight, bias


def _opencv_conv(tmp_path, x, weight, bias):
    text = DATA + ('layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" '
                   'convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }')
    model, weights = write_model(tmp_path, text, {"conv": [weight, bias]}, stem="reference")
    reference = cv2.dnn.readNetFromCaffe(str(model), str(weights))
    reference.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    reference.setInput(x)
    return reference.forward()


def _input(scale=4.0):
    return (np.random.default_rng(6).standard_normal((2, 3, 8, 8)) * scale).astype(np.float32)


DFP = ("bw_layer_in: 8 fl_layer_in: 4 bw_layer_out: 8 fl_layer_out: 2 "
       "bw_params: 6 fl_params: 5")


@pytest.mark.parametrize("compat", ["gpu", "cpu"])
def test_dynamic_fixed_point_convolution(tmp_path, compat):
    net, weight, bias = _conv_net(tmp_path, DFP)
    x = _input()
    ours = NumpyRuntime(net, compat=compat).forward({"data": x})["conv"]
    trim = lambda v, bw, fl: numerics.trim_fixed_point(v, bw, fl, compat=compat)  # noqa: E731
    float_out = _opencv_conv(tmp_path, trim(x, 8, 4), trim(weight, 6, 5), trim(bias, 6, 5))
    expected = trim(float_out, 8, 2)
    # The float convolution may differ in the last bit between BLAS and OpenCV; after trimming
    # to a 0.25 grid, any difference is at most one step and only at a rounding boundary.
    steps = np.abs(ours - expected) / 0.25
    assert steps.max() <= 1 and np.mean(steps > 0) < 0.01
    assert len(np.unique(ours * 4 % 1)) == 1      # every value on the 2^-2 grid
    onnx = OnnxRuntime(net, compat=compat).forward({"data": x})["conv"]
    np.testing.assert_array_equal(onnx, ours)


def _conv64(x, weight, bias):
    """The layer's 3x3, pad 1 convolution (plus bias) summed in float64, written out by hand."""
    padded = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((x.shape[0], weight.shape[0]) + x.shape[2:]) + bias.astype(np.float64)[:, None, None]
    for i in range(3):
        for j in range(3):
            window = padded[:, :, i:i + x.shape[2], j:j + x.shape[3]]
            out += np.einsum("nchw,oc->nohw", window, weight[:, :, i, j].astype(np.float64))
    return out


def _signed(rng, low, high, shape):
    """Magnitudes uniform in [low, high) with random signs (float32)."""
    return (rng.uniform(low, high, shape) * rng.choice([-1.0, 1.0], shape)).astype(np.float32)


MINIFLOAT = "precision: MINIFLOAT mant_bits: 3 exp_bits: 4"
POWER_OF_TWO = ("precision: INTEGER_POWER_OF_2_WEIGHTS exp_min: -8 exp_max: -1 "
                "bw_layer_in: 8 fl_layer_in: 4 bw_layer_out: 8 fl_layer_out: 3")


def _exact_case(quantization):
    """Operands whose trimmed convolution is exact in float32 whatever the order of the sums, so
    that OpenCV, numpy's BLAS and onnxruntime must give the same bits: (x, weight, bias, trimmed
    x, trimmed weight, trimmed bias, output trim)."""
    rng = np.random.default_rng(11)
    if quantization == MINIFLOAT:
        # Trimmed to 4 significant bits: |x| in [2^-2, 16] is a multiple of 2^-5, |w| and |b| in
        # [2^-4, 2] multiples of 2^-7. Products are multiples of 2^-12 below 16 in magnitude;
        # 27 of them plus the bias stay below 2^9: at most 21 significant bits, all exact.
        x, weight, bias = (_signed(rng, 0.25, 15.0, (2, 3, 8, 8)), _signed(rng, 1 / 16, 0.9, (4, 3, 3, 3)),
                           _signed(rng, 1 / 16, 2.0, 4))
        trim = lambda v: numerics.trim_minifloat(v, 4, 3)  # noqa: E731
        return x, weight, bias, trim(x), trim(weight), trim(bias), trim
    # x on the 2^-4 grid (|x| <= 8), weights +-2^-8 .. 2^-1, the untrimmed bias a multiple of
    # 2^-6: products are multiples of 2^-12 of at most 4, sums below 2^7: 19 bits, exact.
    x = (rng.standard_normal((2, 3, 8, 8)) * 4).astype(np.float32)
    weight = (rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32)
    bias = (rng.integers(-96, 96, 4) / 64).astype(np.float32)
    trimmed_weight = numerics.trim_power_of_two(weight, -8, -1)
    assert set(np.abs(trimmed_weight).ravel()) <= {2.0 ** e for e in range(-8, 0)}
    return (x, weight, bias, numerics.trim_fixed_point(x, 8, 4), trimmed_weight, bias,
            lambda v: numerics.trim_fixed_point(v, 8, 3))


@pytest.mark.parametrize("quantization", [MINIFLOAT, POWER_OF_TWO], ids=["minifloat", "power_of_two"])
def test_minifloat_and_power_of_two_layers_on_both_backends(tmp_path, quantization):
    # Exact operands: every backend and OpenCV agree bit for bit.
    x, weight, bias, tx, tw, tb, trim_out = _exact_case(quantization)
    net, _, _ = _conv_net(tmp_path, quantization, weight=weight, bias=bias)
    float_out = _opencv_conv(tmp_path, tx, tw, tb)
    exact = _conv64(tx, tw, tb)
    assert np.array_equal(exact.astype(np.float32), exact) and np.array_equal(float_out, exact)
    expected = trim_out(float_out)
    ours = NumpyRuntime(net).forward({"data": x})["conv"]
    np.testing.assert_array_equal(ours, expected)
    np.testing.assert_array_equal(OnnxRuntime(net).forward({"data": x})["conv"], ours)
    assert len(np.unique(ours)) > 40 and not np.array_equal(ours, float_out)

    # Arbitrary operands: float32 sums may round, in an order that differs between backends.
    # The products of trimmed operands are exact (few significant bits); a sum of n = 28 terms
    # (27 products, the bias) in any order is within gamma_n * sum|terms| of the exact sum
    # (gamma_n = n u / (1 - n u), u = 2^-24; Higham, Accuracy and Stability, section 3.1).
    # Trimming is monotone, so a backend's output lies between the trims of the interval's ends;
    # where those agree (all but a few values at a rounding boundary) it must equal them.
    net, weight, bias = _conv_net(tmp_path, quantization)
    x = _input()
    if quantization == MINIFLOAT:
        tx, tw, tb = (numerics.trim_minifloat(v, 4, 3) for v in (x, weight, bias))
    else:
        tx, tw, tb = numerics.trim_fixed_point(x, 8, 4), numerics.trim_power_of_two(weight, -8, -1), bias
    exact = _conv64(tx, tw, tb)
    gamma = 28 * 2.0 ** -24 / (1 - 28 * 2.0 ** -24)
    bound = gamma * (_conv64(np.abs(tx), np.abs(tw), np.abs(tb)))
    low = trim_out(np.nextafter((exact - bound).astype(np.float32), np.float32(-np.inf)))
    high = trim_out(np.nextafter((exact + bound).astype(np.float32), np.float32(np.inf)))
    assert np.mean(low != high) < 0.01
    for runtime in (NumpyRuntime, OnnxRuntime):
        out = runtime(net).forward({"data": x})["conv"]
        assert np.all((low <= out) & (out <= high)), runtime.__name__
        np.testing.assert_array_equal(out[low == high], low[low == high])


def test_power_of_two_cpu_build_does_not_trim_activations(tmp_path):
    rng = np.random.default_rng(12)
    weight = (rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32)
    bias = (rng.integers(-32, 32, 4) / 64).astype(np.float32)       # exact: multiples of 2^-6
    net, _, _ = _conv_net(tmp_path, "precision: INTEGER_POWER_OF_2_WEIGHTS bw_layer_in: 2 fl_layer_in: 0 "
                                    "bw_layer_out: 2 fl_layer_out: 0", weight=weight, bias=bias)
    x = _input()
    gpu = NumpyRuntime(net, compat="gpu").forward({"data": x})["conv"]
    cpu = NumpyRuntime(net, compat="cpu").forward({"data": x})["conv"]
    w = numerics.trim_power_of_two(weight, -8, -1)       # the default exponents, -8 .. -1
    assert set(np.abs(w).ravel()) <= {2.0 ** e for e in range(-8, 0)}
    # GPU build: input and output in 2-bit fixed point with fl 0, i.e. rint clipped to [-2, 1].
    # The input is then an integer and the weights powers of two >= 2^-8, so the float sums are
    # exact and the rounded output is known exactly.
    two_bits = lambda v: np.clip(np.rint(v), -2, 1)  # noqa: E731
    np.testing.assert_array_equal(gpu, two_bits(_conv64(two_bits(x), w, bias)))
    assert set(np.unique(gpu)) == {-2.0, -1.0, 0.0, 1.0}
    # CPU build: neither input nor output is trimmed; only the weights are.
    expected = _opencv_conv(tmp_path, x, w, bias)
    np.testing.assert_allclose(cpu, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cpu, _conv64(x, w, bias), rtol=1e-5, atol=1e-5)
    assert len(np.unique(cpu)) == cpu.size and np.abs(cpu).max() > 4     # not on a grid, not clipped


@pytest.mark.parametrize("compat", ["gpu", "cpu"])
def test_both_builds_trim_the_input_blob_in_place(tmp_path, compat):
    # A second, plain convolution reads "data" after the Ristretto layer: in both builds (the
    # CUDA code trims mutable_gpu_data as the CPU code trims mutable_cpu_data) it sees the
    # input trimmed with that build's rounding; the caller's array is left alone.
    second = ('layer { name: "conv2" type: "Convolution" bottom: "data" top: "conv2" '
              'convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }')
    net, weight, bias = _conv_net(tmp_path, "bw_layer_in: 4 fl_layer_in: 0", second)
    x = _input()
    original = x.copy()
    trimmed_x = numerics.trim_fixed_point(x, 4, 0, compat=compat)
    assert np.any(trimmed_x != x)
    for runtime in (NumpyRuntime, OnnxRuntime):
        blobs = runtime(net, compat=compat).forward({"data": x})
        np.testing.assert_allclose(blobs["conv2"], _opencv_conv(tmp_path, trimmed_x, weight, bias), atol=1e-4)
        np.testing.assert_array_equal(blobs["data"], trimmed_x)
        np.testing.assert_array_equal(x, original)


def test_fc_ristretto_trims_bottom_zero_and_matches_formula(tmp_path):
    rng = np.random.default_rng(7)
    weight = rng.standard_normal((5, 12)).astype(np.float32)
    text = ('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 3 dim: 12 } } }\n'
            'layer { name: "fc" type: "FcRistretto" bottom: "data" top: "fc" '
            'inner_product_param { num_output: 5 bias_term: false } '
            'quantization_param { bw_layer_in: 8 fl_layer_in: 5 bw_layer_out: 16 fl_layer_out: 8 '
            'bw_params: 8 fl_params: 6 } }')
    model, weights = write_model(tmp_path, text, {"fc": [weight]})
    net = Net.load(model, weights)
    x = rng.standard_normal((3, 12)).astype(np.float32)
    ours = NumpyRuntime(net).forward({"data": x})["fc"]
    xq = numerics.trim_fixed_point(x, 8, 5).astype(np.float64)
    wq = numerics.trim_fixed_point(weight, 8, 6).astype(np.float64)
    # Products of an 8-bit and an 8-bit fixed-point value sum exactly in float32 here.
    np.testing.assert_array_equal(ours, numerics.trim_fixed_point((xq @ wq.T).astype(np.float32), 16, 8))
    np.testing.assert_array_equal(OnnxRuntime(net).forward({"data": x})["fc"], ours)


def test_stochastic_rounding_is_seeded_and_runs_on_both_backends(tmp_path):
    net, _, _ = _conv_net(tmp_path, DFP + " rounding_scheme: STOCHASTIC")
    x = _input()
    first = NumpyRuntime(net, seed=3).forward({"data": x})["conv"]
    again = NumpyRuntime(net, seed=3).forward({"data": x})["conv"]
    other = NumpyRuntime(net, seed=4).forward({"data": x})["conv"]
    np.testing.assert_array_equal(first, again)
    assert np.any(first != other)
    onnx = OnnxRuntime(net, seed=3)
    assert onnx.export.tail == [1]        # stochastic layers run in numpy after the session
    np.testing.assert_array_equal(onnx.forward({"data": x})["conv"], first)


def _lrn_reference(x, size, alpha, beta, k, exp_bits, mant_bits):
    """Scalar transcription of Ristretto's LRNFillScaleQ / LRNComputeOutputQ CUDA kernels."""
    t = lambda v: float(numerics.trim_minifloat(np.float32(v), exp_bits, mant_bits))  # noqa: E731
    f32 = np.float32
    n_, c_, h_, w_ = x.shape
    out = np.zeros_like(x)
    pre_pad = (size - 1) // 2
    post_pad = size - pre_pad - 1
    alpha_over_size = f32(f32(alpha) / f32(size))
    for n in range(n_):
        for h in range(h_):
            for w in range(w_):
                scale = [0.0] * c_
                accum, head = f32(0), 0
                while head < post_pad and head < c_:
                    q = t(x[n, head, h, w])
                    accum = f32(t(f32(accum) + f32(t(f32(q) * f32(q)))))
                    head += 1
                while head < c_ + post_pad:
                    if head < c_:
                        q = t(x[n, head, h, w])
                        accum = f32(t(f32(accum) + f32(t(f32(q) * f32(q)))))
                    if head - size >= 0:
                        q = t(x[n, head - size, h, w])
                        accum = f32(t(f32(accum) - f32(t(f32(q) * f32(q)))))
                    tmp = t(f32(accum) * alpha_over_size)
                    scale[head - post_pad] = t(f32(k) + f32(tmp))
                    head += 1
                for c in range(c_):
                    pow_q = t(np.power(f32(scale[c]), f32(-beta)))
                    out[n, c, h, w] = t(f32(t(x[n, c, h, w])) * f32(pow_q))
    return out


def test_lrn_ristretto_matches_the_cuda_kernel(tmp_path):
    text = ('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 7 dim: 3 dim: 2 } } }\n'
            'layer { name: "norm" type: "LRNRistretto" bottom: "data" top: "norm" '
            'lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 k: 2 } '
            'quantization_param { precision: MINIFLOAT exp_bits: 5 mant_bits: 6 } }')
    net = Net.from_proto(net_param(text))
    x = (np.random.default_rng(8).standard_normal((1, 7, 3, 2)) * 30).astype(np.float32)
    ours = NumpyRuntime(net).forward({"data": x})["norm"]
    np.testing.assert_array_equal(ours, _lrn_reference(x, 5, 0.0001, 0.75, 2.0, 5, 6))
    onnx = OnnxRuntime(net)
    assert onnx.export.tail == [1]
    np.testing.assert_array_equal(onnx.forward({"data": x})["norm"], ours)


@pytest.mark.parametrize("layer, message", [
    ('type: "LRNRistretto" lrn_param { local_size: 3 } quantization_param { precision: DYNAMIC_FIXED_POINT }',
     "only the MINIFLOAT"),
    ('type: "LRNRistretto" lrn_param { local_size: 3 norm_region: WITHIN_CHANNEL } '
     'quantization_param { precision: MINIFLOAT }', "ACROSS_CHANNELS"),
])
def test_lrn_ristretto_rejects_what_ristretto_rejects(layer, message):
    text = DATA + f'layer {{ name: "norm" {layer} bottom: "data" top: "norm" }}'
    with pytest.raises(NetError, match=message):
        Net.from_proto(net_param(text))
