"""Training-time quantizers (``weight_quantization_param`` and ActivationQuantize SIGN): each
forward value against a hand case worked out from the paper's formula, each straight-through
gradient against the paper's rule written out by hand, and TRAIN/TEST agreement between the
torch engine, the numpy runtime and onnxruntime on the written description."""
import numpy as np
import pytest
import torch

from ristretto_py import numerics
from ristretto_py.errors import NetError
from ristretto_py.runtime import NumpyRuntime, OnnxRuntime
from ristretto_py.train.model import TorchNet
from ristretto_py.weight_quantization import WeightQuantizer
from train_reference import input_layer, make_net

RNG = np.random.default_rng(21)


# -- forward values: hand cases -------------------------------------------------------------------
def test_binary_is_the_sign_times_the_scale_with_zero_going_up():
    w = np.array([-0.3, 0.0, 0.2, 1.7], np.float32)
    np.testing.assert_array_equal(numerics.binarize(w), [-1, 1, 1, 1])
    scaled = WeightQuantizer("BINARY", scale_mode="MEAN_ABS").quantize(w)
    np.testing.assert_allclose(scaled, np.float32(0.55) * np.array([-1, 1, 1, 1]), rtol=1e-7)


def test_stochastic_binary_draws_with_the_hard_sigmoid_probability():
    w = np.repeat(np.array([-2.0, -0.5, 0.0, 0.5, 2.0], np.float32)[:, None], 20000, axis=1)
    draws = numerics.stochastic_binarize(w, 1.0, np.random.default_rng(3))
    share_up = (draws > 0).mean(axis=1)
    # hard_sigmoid(w) = clip((w + 1) / 2, 0, 1): 0, 0.25, 0.5, 0.75, 1
    np.testing.assert_allclose(share_up, [0, 0.25, 0.5, 0.75, 1], atol=0.01)
    assert share_up[0] == 0 and share_up[-1] == 1
    again = numerics.stochastic_binarize(w, 1.0, np.random.default_rng(3))
    np.testing.assert_array_equal(draws, again)              # the seed fixes every draw
    quantizer = WeightQuantizer("BINARY", stochastic=True)
    np.testing.assert_array_equal(quantizer.quantize(w[:, :3]), numerics.binarize(w[:, :3]))


def test_ternary_uses_the_twn_threshold_and_scale():
    w = np.array([0.9, -0.1, 0.5, -0.8, 0.05], np.float32)
    # mean|w| = 2.35 / 5 = 0.47, t = 0.7 * 0.47 = 0.329; |w| > t: 0.9, 0.5, 0.8, a = 2.2 / 3
    a = 2.2 / 3
    np.testing.assert_allclose(numerics.ternarize(w), [a, 0, a, -a, 0], rtol=1e-6)
    t, scale = numerics.ternary_constants(w)
    assert t == pytest.approx(0.329) and scale == pytest.approx(a)
    # threshold 0.2: t = 0.094 lets -0.1 through, a = 2.3 / 4
    np.testing.assert_allclose(numerics.ternarize(w, 0.2), np.array([1, -1, 1, -1, 0]) * 2.3 / 4,
                               rtol=1e-6)


def test_dorefa_weights_by_hand():
    w = np.array([0.5, -1.0, 0.1, 2.0], np.float32)
    # tanh = .4621 -.7616 .0997 .9640, over 2 max + 1/2 = .7397 .1050 .5517 1; x3 -> rint 2 0 2 3
    np.testing.assert_allclose(numerics.dorefa_weights(w, 2), [1 / 3, -1, 1 / 3, 1], rtol=1e-6)
    # k = 1: mean|w| * sign(w) = 0.9 * sign
    np.testing.assert_allclose(numerics.dorefa_weights(w, 1), [0.9, -0.9, 0.9, 0.9], rtol=1e-6)
    # k = 3: 7 levels: 5.18 .73 3.86 7 -> 5 1 4 7 -> 2q - 1
    np.testing.assert_allclose(numerics.dorefa_weights(w, 3),
                               2 * np.array([5, 1, 4, 7]) / 7 - 1, rtol=1e-6)
    fixed = WeightQuantizer("DOREFA", bits=2, scale_mode="FIXED", scale_value=0.25)
    np.testing.assert_allclose(fixed.quantize(w), [1 / 12, -0.25, 1 / 12, 0.25], rtol=1e-6)
    np.testing.assert_array_equal(numerics.dorefa_weights(np.zeros(3, np.float32), 2), 0)


def test_hwce_weights_are_quantclip():
    quantizer = WeightQuantizer("HWCE", bits=4, msb=0)
    w = np.array([-1.5, -0.3, 0.0, 0.2, 0.95], np.float32)
    # step 2^(0 + 1 - 4) = 1/8; clip to [-1, 7/8], floor to eighths
    np.testing.assert_array_equal(quantizer.quantize(w), [-1, -0.375, 0, 0.125, 0.875])
    assert quantizer.saturation(w) == pytest.approx(0.4)


# -- straight-through gradients: the papers' rules ---------------------------------------------------
def _fc(quantizer_text, weights, phase="TRAIN", extra=""):
    text = input_layer({"x": (3, weights.shape[1])}) + (
        'layer { name: "fc" type: "InnerProduct" bottom: "x" top: "y" '
        f'inner_product_param {{ num_output: {weights.shape[0]} }} '
        f'weight_quantization_param {{ {quantizer_text} }} }}\n' + extra)
    return make_net(text, {"fc": [weights, np.zeros(weights.shape[0], np.float32)]}, phase)


def _weight_gradient(net, x, upstream):
    model = TorchNet(net, dtype=torch.float64)
    (model({"x": x})["y"] * torch.as_tensor(upstream)).sum().backward()
    return model.layer_module("fc").blobs[0].grad.numpy(), model


@pytest.mark.parametrize("text, mask", [
    ("method: BINARY", lambda w: np.abs(w) <= 1),                   # BinaryConnect / BNN
    ("method: BINARY scale: MEAN_ABS", lambda w: np.abs(w) <= 1),
    ("method: TERNARY", lambda w: np.ones_like(w, bool)),           # TWN: identity
    ("method: HWCE bits: 4 msb: 0", lambda w: (w >= -1) & (w <= 0.875)),
])
def test_gradient_reaches_the_shadow_weights_by_the_rule(text, mask):
    w = (RNG.standard_normal((4, 6)) * 0.8).astype(np.float32)
    x, upstream = RNG.standard_normal((3, 6)), RNG.standard_normal((3, 4))
    grad, _ = _weight_gradient(_fc(text, w), x, upstream)
    expected = (upstream.T @ x) * mask(w)           # dL/dW_q, passed where the rule says
    assert 0 < mask(w).mean() <= 1
    np.testing.assert_allclose(grad, expected, rtol=1e-10, atol=1e-12)


def test_dorefa_gradient_is_that_of_the_tanh_normalisation():
    w = (RNG.standard_normal((4, 6)) * 0.8).astype(np.float32)
    x, upstream = RNG.standard_normal((3, 6)), RNG.standard_normal((3, 4))
    grad, _ = _weight_gradient(_fc("method: DOREFA bits: 2 scale: FIXED scale_value: 0.5", w),
                               x, upstream)
    # d/dw of s * tanh(w) / M, M = max|tanh w| at index j: g (1 - t^2) s / M for every weight,
    # and for w_j also - s sign(t_j) (1 - t_j^2) sum(g t) / M^2.
    g = upstream.T @ x
    t = np.tanh(w.astype(np.float64))
    j = np.unravel_index(np.argmax(np.abs(t)), t.shape)
    top = np.abs(t[j])
    expected = 0.5 * g * (1 - t ** 2) / top
    expected[j] -= 0.5 * np.sign(t[j]) * (1 - t[j] ** 2) * np.sum(g * t) / top ** 2
    np.testing.assert_allclose(grad, expected, rtol=1e-6)


def test_sign_activation_has_hard_tanh_gradient_and_runs_in_onnx():
    w = np.eye(5, dtype=np.float32)
    extra = ('layer { name: "q" type: "ActivationQuantize" bottom: "y" top: "z" '
             'activation_quantization_param { method: SIGN } }\n')
    x = np.array([[-2.0, -0.5, 0.0, 0.5, 1.5]] * 3)
    net = _fc("method: TERNARY threshold: 0.1", w, extra=extra)
    model = TorchNet(net, dtype=torch.float64)
    tensor = torch.tensor(x, requires_grad=True)
    z = model({"x": tensor})["z"]
    np.testing.assert_array_equal(z.detach().numpy()[0], [-1, -1, 1, 1, 1])
    z.sum().backward()
    # ternary(eye) = eye (a = 1), so y = x; hard tanh passes where |x| <= 1
    np.testing.assert_array_equal(tensor.grad.numpy()[0], [0, 1, 1, 1, 0])
    test_net = _fc("method: TERNARY threshold: 0.1", w, "TEST", extra)
    np.testing.assert_array_equal(OnnxRuntime(test_net).forward({"x": x})["z"],
                                  NumpyRuntime(test_net).forward({"x": x})["z"])


# -- TRAIN/TEST agreement across the engine and the runtimes ------------------------------------------
QUANTIZERS = ["method: BINARY", "method: BINARY scale: MEAN_ABS", "method: TERNARY",
              "method: DOREFA bits: 3", "method: DOREFA bits: 2 scale: FIXED scale_value: 0.3",
              "method: HWCE bits: 8 msb: -1"]


def _conv_fc_net(text, phase, blobs):
    net = input_layer({"x": (2, 3, 6, 6)}) + (
        'layer { name: "conv" type: "Convolution" bottom: "x" top: "c" convolution_param { '
        f'num_output: 4 kernel_size: 3 }} weight_quantization_param {{ {text} }} }}\n'
        'layer { name: "relu" type: "ReLU" bottom: "c" top: "c" }\n'
        'layer { name: "fc" type: "FcRistretto" bottom: "c" top: "y" inner_product_param { '
        'num_output: 5 } quantization_param { precision: DYNAMIC_FIXED_POINT bw_layer_in: 8 '
        'fl_layer_in: 4 bw_layer_out: 8 fl_layer_out: 3 bw_params: 8 fl_params: 6 } '
        f'weight_quantization_param {{ {text} }} }}\n')
    return make_net(net, blobs, phase)


@pytest.mark.parametrize("text", QUANTIZERS)
def test_engine_numpy_runtime_and_onnxruntime_compute_the_same_net(text):
    blobs = {"conv": [RNG.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.3,
                      RNG.standard_normal(4).astype(np.float32) * 0.1],
             "fc": [RNG.standard_normal((5, 64)).astype(np.float32) * 0.2,
                    RNG.standard_normal(5).astype(np.float32) * 0.1]}
    x = RNG.random((2, 3, 6, 6)).astype(np.float32)
    # A few SGD steps in the engine move the shadow weights; the TEST numerics of the moved
    # weights must then be the same in the engine, the numpy runtime and onnxruntime.
    model = TorchNet(_conv_fc_net(text, "TRAIN", blobs), seed=5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(3):
        optimizer.zero_grad()
        model({"x": x})["y"].square().sum().backward()
        optimizer.step()
    moved = {name: [p.detach().numpy().copy() for p in model.layer_module(name).blobs]
             for name in ("conv", "fc")}
    assert not np.array_equal(moved["conv"][0], blobs["conv"][0])
    test_net = _conv_fc_net(text, "TEST", moved)
    model.set_phase("TEST")
    with torch.no_grad():
        engine = model({"x": x})["y"].numpy()
    reference = NumpyRuntime(test_net).forward({"x": x})["y"]
    np.testing.assert_array_equal(engine, reference)
    onnx = OnnxRuntime(test_net).forward({"x": x})["y"]
    np.testing.assert_allclose(onnx, reference, atol=2 ** -3)     # one step of fl_layer_out 3
    assert np.mean(onnx == reference) > 0.9


def test_stochastic_binary_draws_in_train_and_takes_the_sign_in_test():
    w = (RNG.standard_normal((4, 6)) * 0.5).astype(np.float32)
    x = RNG.standard_normal((3, 6)).astype(np.float32)
    text = "method: BINARY stochastic: true"
    model = TorchNet(_fc(text, w), seed=9)
    first, second = (model({"x": x})["y"].detach().numpy() for _ in range(2))
    assert not np.array_equal(first, second)                 # fresh draws each pass
    again = TorchNet(_fc(text, w), seed=9)({"x": x})["y"].detach().numpy()
    np.testing.assert_array_equal(first, again)              # the seed fixes them
    # the numpy runtime's TRAIN draws: the same signs (a different draw moves an output by
    # 2|x_i|), summed by another BLAS in another order (1 ulp apart at most)
    np.testing.assert_allclose(NumpyRuntime(_fc(text, w, "TRAIN"), seed=9).forward(
        {"x": x})["y"], first, rtol=1e-6, atol=1e-6)
    test = NumpyRuntime(_fc(text, w, "TEST")).forward({"x": x})["y"]
    np.testing.assert_allclose(test, x @ numerics.binarize(w).T, rtol=1e-6)


@pytest.mark.parametrize("text, fragment", [
    ("method: HWCE bits: 4", "needs msb"),
    ("method: HWCE bits: 5 msb: 0", "bits must be 4, 8 or 16"),
    ("method: DOREFA bits: 0", "bits must be 1 to 16"),
    ("method: TERNARY stochastic: true", "stochastic applies to BINARY only"),
    ("method: TERNARY scale: MEAN_ABS", "has its own scale"),
    ("method: BINARY scale: FIXED scale_value: -1", "scale_value must be positive"),
])
def test_bad_quantizer_parameters_name_the_layer(text, fragment):
    with pytest.raises(NetError) as info:
        _fc(text, np.ones((2, 3), np.float32))
    assert "fc" in str(info.value) and fragment in str(info.value)


def test_cost_model_counts_packed_quantized_weights():
    from ristretto_py.passes.cost import layer_costs
    w = RNG.standard_normal((4, 6)).astype(np.float32)
    expected = {"method: TERNARY": 24 * 2 + 32,                    # 2 bits each + the scale
                "method: BINARY": 24,                              # 1 bit each, no constant
                "method: BINARY scale: MEAN_ABS": 24 + 32,
                "method: DOREFA bits: 3": 24 * 3,
                "method: HWCE bits: 4 msb: 0": 24 * 4 + 8}         # + the MSB
    for text, weight_bits in expected.items():
        fc = next(c for c in layer_costs(_fc(text, w, "TEST")) if c.name == "fc")
        assert fc.param_bytes == (weight_bits + 4 * 32) / 8, text      # the bias stays float32


def test_activation_saturation_counts_what_the_formats_clip():
    from ristretto_py.passes.training_report import activation_saturation, quantization_rows
    w = numerics.trim_fixed_point(RNG.standard_normal((5, 7)).astype(np.float32), 6, 4)
    x = (RNG.standard_normal((6, 7)) * 3).astype(np.float32)
    text = input_layer({"x": x.shape}) + (
        'layer { name: "fc" type: "FcRistretto" bottom: "x" top: "y" inner_product_param { '
        'num_output: 5 bias_term: false } quantization_param { precision: DYNAMIC_FIXED_POINT '
        'bw_layer_in: 8 fl_layer_in: 5 bw_layer_out: 6 fl_layer_out: 2 bw_params: 6 '
        'fl_params: 4 } }\n')
    net = make_net(text, {"fc": [w]})
    shares = activation_saturation(net, {"x": x})["fc"]
    # By hand: the input format holds [-4, 3.96875], the output format [-8, 7.75]; the output
    # is computed from the trimmed input.
    raw = numerics.trim_fixed_point(x, 8, 5) @ w.T
    assert shares["input"] == pytest.approx(np.mean((x < -4) | (x > 3.96875)))
    assert shares["output"] == pytest.approx(np.mean((raw < -8) | (raw > 7.75)))
    assert 0 < shares["input"] < 1 and 0 < shares["output"] < 1
    row, = quantization_rows(net, {"fc": shares})
    assert (row["weight_bits"], row["input_bits"], row["output_bits"]) == (6, 8, 6)
    assert row["packed_bytes"] == 27 and row["float_bytes"] == 140      # ceil(35 * 6 / 8)
