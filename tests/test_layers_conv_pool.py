"""Convolution, Deconvolution, InnerProduct and Pooling: hand-computed cases for Caffe's rules,
OpenCV's Caffe importer as the independent reference, onnxruntime for the ONNX export."""
import numpy as np
import pytest

from ristretto_py import Net
from ristretto_py.errors import NetError
from ristretto_py.runtime import NumpyRuntime, OnnxRuntime
from conftest import close_to, net_param, opencv_forward, write_model

INPUT = 'layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: {dims} }} }} }}\n'


def _net(tmp_path, body, dims, blobs=None):
    text = INPUT.format(dims=" dim: ".join(str(d) for d in dims)) + body
    model, weights = write_model(tmp_path, text, blobs)
    return model, weights, Net.load(model, weights)


def _opencv(model, weights, x, names):
    return opencv_forward(model, weights, x, names)


def _close(ours, reference, tolerance):
    return close_to(ours, reference, tolerance)


CONV_CASES = [
    # (convolution_param body, input dims, weight shape)
    ("num_output: 4 kernel_size: 3", (2, 3, 9, 8), (4, 3, 3, 3)),
    ("num_output: 6 kernel_size: 3 pad: 1 stride: 2", (1, 4, 11, 10), (6, 4, 3, 3)),
    ("num_output: 4 kernel_h: 3 kernel_w: 1 pad_h: 1 pad_w: 0 stride_h: 1 stride_w: 2",
     (1, 2, 7, 9), (4, 2, 3, 1)),
    ("num_output: 6 kernel_size: 3 group: 3 pad: 2 dilation: 2", (1, 6, 10, 10), (6, 2, 3, 3)),
    ("num_output: 8 kernel_size: 3 group: 8 pad: 1", (2, 8, 6, 6), (8, 1, 3, 3)),   # depthwise
    ("num_output: 5 kernel_size: 1 bias_term: false", (2, 7, 5, 6), (5, 7, 1, 1)),
    ("num_output: 3 kernel_size: 2 kernel_size: 3 pad: 1 pad: 0 stride: 2 stride: 1",
     (1, 3, 8, 8), (3, 3, 2, 3)),
]


@pytest.mark.parametrize("param, dims, wshape", CONV_CASES)
def test_convolution_matches_opencv_and_onnxruntime(tmp_path, param, dims, wshape):
    rng = np.random.default_rng(1)
    blobs = [rng.standard_normal(wshape).astype(np.float32)]
    if "bias_term: false" not in param:
        blobs.append(rng.standard_normal(wshape[0]).astype(np.float32))
    body = f'layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param {{ {param} }} }}'
    model, weights, net = _net(tmp_path, body, dims, {"conv": blobs})
    x = rng.standard_normal(dims).astype(np.float32)
    ours = NumpyRuntime(net).forward({"data": x})["conv"]
    expected = _opencv(model, weights, x, ["conv"])[0]
    assert ours.shape == expected.shape == net.shapes()["conv"]
    assert _close(ours, expected, 1e-5)
    assert _close(OnnxRuntime(net).forward({"data": x})["conv"], ours, 1e-5)


def test_convolution_hand_case_with_padding_and_stride():
    # One 3x3 input, one 2x2 kernel of ones, pad 1, stride 2: windows at (-1,-1), (-1,1), ...
    from ristretto_py.layers.conv import convolve
    x = np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3)
    y = convolve(x, np.ones((1, 1, 2, 2), np.float32), np.array([10], np.float32),
                 stride=(2, 2), pad=(1, 1), dilation=(1, 1), group=1)
    # Windows: {0}, {1,2}, {3,6}, {4,5,7,8}; plus bias 10.
    np.testing.assert_array_equal(y[0, 0], [[10, 13], [19, 34]])


def test_deconvolution_hand_case():
    # Stride-2 deconvolution of [[1, 2]] with kernel [[1, 1, 1]]: overlapping sums.
    from ristretto_py.layers.conv import deconvolve
    x = np.array([[[[1, 2]]]], np.float32)
    y = deconvolve(x, np.ones((1, 1, 1, 3), np.float32), None, (1, 2), (0, 0), (1, 1), 1)
    np.testing.assert_array_equal(y[0, 0], [[1, 1, 3, 2, 2]])
    # pad 1 crops one column on each side
    y = deconvolve(x, np.ones((1, 1, 1, 3), np.float32), None, (1, 2), (0, 1), (1, 1), 1)
    np.testing.assert_array_equal(y[0, 0], [[1, 3, 2]])
    # dilation 2: taps land two apart, the output is 1*(2-1) + 2*(3-1)+1 = 6 wide
    y = deconvolve(x, np.ones((1, 1, 1, 3), np.float32), None, (1, 1), (0, 0), (1, 2), 1)
    np.testing.assert_array_equal(y[0, 0], [[1, 2, 1, 2, 1, 2]])


@pytest.mark.parametrize("param, dims, wshape", [
    ("num_output: 4 kernel_size: 4 stride: 2 pad: 1", (1, 3, 5, 6), (3, 4, 4, 4)),
    ("num_output: 6 kernel_size: 3 stride: 2 group: 2", (2, 4, 4, 4), (4, 3, 3, 3)),
    ("num_output: 2 kernel_size: 3 dilation: 2 bias_term: false", (1, 2, 4, 5), (2, 2, 3, 3)),
])
def test_deconvolution_matches_opencv_and_onnxruntime(tmp_path, param, dims, wshape):
    rng = np.random.default_rng(2)
    num_output = int(param.split()[1])
    blobs = [rng.standard_normal(wshape).astype(np.float32)]
    if "bias_term: false" not in param:
        blobs.append(rng.standard_normal(num_output).astype(np.float32))
    body = f'layer {{ name: "up" type: "Deconvolution" bottom: "data" top: "up" convolution_param {{ {param} }} }}'
    model, weights, net = _net(tmp_path, body, dims, {"up": blobs})
    x = rng.standard_normal(dims).astype(np.float32)
    ours = NumpyRuntime(net).forward({"data": x})["up"]
    if "dilation" not in param:
        # OpenCV's deconvolution ignores dilation (it sizes the output with the undilated
        # kernel), so dilated cases are checked against onnxruntime's ConvTranspose only.
        expected = _opencv(model, weights, x, ["up"])[0]
        assert ours.shape == expected.shape
        assert _close(ours, expected, 1e-5)
    assert ours.shape == net.shapes()["up"]
    assert _close(OnnxRuntime(net).forward({"data": x})["up"], ours, 1e-5)


@pytest.mark.parametrize("param, dims", [
    ("num_output: 5", (3, 4, 2, 2)),
    ("num_output: 5 bias_term: false", (2, 6)),
    ("num_output: 3 axis: 2", (2, 3, 4, 5)),
    ("num_output: 4 transpose: true", (2, 3, 2, 2)),
])
def test_inner_product_against_numpy_formula_and_onnxruntime(tmp_path, param, dims):
    rng = np.random.default_rng(3)
    axis = 2 if "axis: 2" in param else 1
    k = int(np.prod(dims[axis:]))
    n_out = int(param.split()[1])
    weight = rng.standard_normal((k, n_out) if "transpose" in param else (n_out, k)).astype(np.float32)
    blobs = [weight]
    if "bias_term: false" not in param:
        blobs.append(rng.standard_normal(n_out).astype(np.float32))
    body = f'layer {{ name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param {{ {param} }} }}'
    model, weights, net = _net(tmp_path, body, dims, {"fc": blobs})
    x = rng.standard_normal(dims).astype(np.float32)
    ours = NumpyRuntime(net).forward({"data": x})["fc"]
    # Independent formula in float64.
    w64 = weight.astype(np.float64) if "transpose" in param else weight.astype(np.float64).T
    expected = x.reshape(int(np.prod(dims[:axis])), k).astype(np.float64) @ w64
    if len(blobs) == 2:
        expected += blobs[1]
    expected = expected.reshape(dims[:axis] + (n_out,))
    assert ours.shape == expected.shape == net.shapes()["fc"]
    assert _close(ours, expected, 1e-5)
    if axis == 1 and "transpose" not in param:
        assert _close(ours, _opencv(model, weights, x, ["fc"])[0].reshape(ours.shape), 1e-5)
    assert _close(OnnxRuntime(net).forward({"data": x})["fc"], ours, 1e-5)


# -- pooling ----------------------------------------------------------------------------------

def _pool(tmp_path, param, dims):
    body = f'layer {{ name: "pool" type: "Pooling" bottom: "data" top: "pool" pooling_param {{ {param} }} }}'
    return _net(tmp_path, body, dims)


def test_pooling_ceil_rule_and_pad_clip_hand_case(tmp_path):
    # 4x4 input, kernel 3, stride 2, pad 1: ceil((4+2-3)/2)+1 = 3, but the last window would
    # start at 2*2-1 = 3 < 4+1, so 3 stays. Without pad: ceil((4-3)/2)+1 = 2.
    _, _, net = _pool(tmp_path, "pool: AVE kernel_size: 3 stride: 2 pad: 1", (1, 1, 4, 4))
    assert net.shapes()["pool"] == (1, 1, 3, 3)
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    y = NumpyRuntime(net).forward({"data": x})["pool"][0, 0]
    # Cell (0,0): window rows/cols -1..1 -> valid {0,1,4,5}, divisor 3*3 = 9 (pad counts).
    assert y[0, 0] == pytest.approx((0 + 1 + 4 + 5) / 9)
    # Cell (2,2): window 3..5 clipped to H+pad = 5 -> divisor 2*2; valid cell only {15}.
    assert y[2, 2] == pytest.approx(15 / 4)
    # Cell (0,2): rows -1..1 (3 counted), cols 3..4 (2 counted): valid {3, 7}, divisor 6.
    assert y[0, 2] == pytest.approx((3 + 7) / 6)


def test_pooling_drops_a_window_that_starts_in_the_padding(tmp_path):
    # H=5, k=2, s=2, pad=1: ceil((5+2-2)/2)+1 = 4, and (4-1)*2 = 6 >= 5+1 -> 3.
    _, _, net = _pool(tmp_path, "pool: MAX kernel_size: 2 stride: 2 pad: 1", (1, 1, 5, 5))
    assert net.shapes()["pool"] == (1, 1, 3, 3)
    x = -np.arange(25, dtype=np.float32).reshape(1, 1, 5, 5) - 1   # all negative: padding must not win
    y = NumpyRuntime(net).forward({"data": x})["pool"][0, 0]
    np.testing.assert_array_equal(y[0], [-1, -2, -4])


def test_pooling_floor_round_mode(tmp_path):
    _, _, net = _pool(tmp_path, "pool: MAX kernel_size: 3 stride: 2 round_mode: FLOOR", (1, 1, 6, 6))
    assert net.shapes()["pool"] == (1, 1, 2, 2)
    _, _, net = _pool(tmp_path, "pool: MAX kernel_size: 3 stride: 2", (1, 1, 6, 6))
    assert net.shapes()["pool"] == (1, 1, 3, 3)


def test_stochastic_pooling_test_phase_hand_case(tmp_path):
    _, _, net = _pool(tmp_path, "pool: STOCHASTIC kernel_size: 2 stride: 2", (1, 1, 2, 4))
    x = np.array([[[[1, 3, 0, 0], [2, 4, 0, 0]]]], np.float32)
    y = NumpyRuntime(net).forward({"data": x})["pool"][0, 0]
    assert y[0, 0] == pytest.approx((1 + 9 + 4 + 16) / 10)
    assert y[0, 1] == 0.0


POOL_CASES = [
    ("pool: MAX kernel_size: 3 stride: 2", (2, 3, 9, 10)),
    ("pool: MAX kernel_size: 3 stride: 2 pad: 1", (1, 2, 8, 7)),
    ("pool: MAX kernel_size: 2 stride: 2", (1, 2, 7, 7)),
    ("pool: AVE kernel_size: 3 stride: 2 pad: 1", (1, 2, 8, 9)),
    ("pool: AVE kernel_size: 3 stride: 1 pad: 1", (1, 3, 5, 5)),
    ("pool: AVE kernel_size: 2 stride: 3", (1, 2, 8, 8)),
    ("pool: AVE kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0", (1, 2, 7, 6)),
    ("pool: AVE global_pooling: true", (2, 4, 7, 7)),
    ("pool: MAX global_pooling: true", (2, 4, 5, 3)),
]


@pytest.mark.parametrize("param, dims", POOL_CASES)
def test_pooling_matches_opencv_and_onnxruntime(tmp_path, param, dims):
    model, weights, net = _pool(tmp_path, param, dims)
    x = np.random.default_rng(4).standard_normal(dims).astype(np.float32)
    ours = NumpyRuntime(net).forward({"data": x})["pool"]
    expected = _opencv(model, weights, x, ["pool"])[0]
    assert ours.shape == expected.shape == net.shapes()["pool"]
    assert _close(ours, expected, 1e-6)
    assert _close(OnnxRuntime(net).forward({"data": x})["pool"], ours, 1e-6)


def test_macs_and_parameter_shapes(tmp_path):
    body = ('layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" '
            'convolution_param { num_output: 8 kernel_size: 3 group: 2 } }\n'
            'layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc" '
            'inner_product_param { num_output: 10 } }')
    text = INPUT.format(dims="2 dim: 4 dim: 6 dim: 6") + body
    net = Net.from_proto(net_param(text))
    conv, fc = net.impl(1), net.impl(2)
    bottoms, tops = net.layer_shapes("conv")
    assert conv.param_shapes(bottoms) == [(8, 2, 3, 3), (8,)]
    assert conv.macs(bottoms, tops) == 2 * 8 * 4 * 4 * 2 * 9
    bottoms, tops = net.layer_shapes("fc")
    assert fc.macs(bottoms, tops) == 2 * 10 * 128


@pytest.mark.parametrize("layer, message", [
    ('type: "Convolution" convolution_param { kernel_size: 3 }', "num_output"),
    ('type: "Convolution" convolution_param { num_output: 4 }', "kernel_size is required"),
    ('type: "Convolution" convolution_param { num_output: 4 kernel_size: 3 group: 3 }', "divisible by group"),
    ('type: "Convolution" convolution_param { num_output: 4 kernel_size: 9 }', "does not fit"),
    ('type: "Convolution" convolution_param { num_output: 4 kernel_size: 3 kernel_h: 3 kernel_w: 3 }', "not both"),
    ('type: "Pooling" pooling_param { pool: MAX }', "kernel_size"),
    ('type: "Pooling" pooling_param { pool: MAX kernel_size: 2 pad: 2 }', "smaller than the kernel"),
    ('type: "Pooling" pooling_param { pool: AVE global_pooling: true stride: 2 }', "global_pooling"),
    ('type: "InnerProduct" inner_product_param { num_output: 4 axis: 5 }', "out of range"),
])
def test_bad_parameters_name_the_layer(layer, message):
    text = INPUT.format(dims="1 dim: 4 dim: 6 dim: 6") + f'layer {{ name: "bad" {layer} bottom: "data" top: "out" }}'
    with pytest.raises(NetError) as info:
        Net.from_proto(net_param(text)).shapes()
    assert message in str(info.value) and "bad" in str(info.value)
