"""Quantization-aware training switches of ``tools/train``: ``--qat activations`` (Ristretto
layers trim their inputs and outputs in TRAIN too, with a straight-through gradient that is
zero where the format saturates) and ``--frozen_bn`` (BatchNorm keeps its stored statistics in
TRAIN, bit for bit).

References: the numpy runtime in TEST (the numerics the net will run with), and the gradient of
the layer written out by hand: masks of the saturated values, the trimmed weights' transpose."""
import numpy as np
import torch

from ristretto_py import numerics
from ristretto_py.runtime import NumpyRuntime
from ristretto_py.train.model import TorchNet
from train_reference import input_layer, make_net

RNG = np.random.default_rng(12)
# 8-bit input with fl 5 saturates outside [-4, 3.96875]; 6-bit output with fl 2 outside [-8, 7.75].
FORMAT = ("precision: DYNAMIC_FIXED_POINT bw_layer_in: 8 fl_layer_in: 5 bw_layer_out: 6 "
          "fl_layer_out: 2 bw_params: 6 fl_params: 4")
# Weights and bias already on the 6-bit grid of fl 4: stochastic rounding leaves them unchanged,
# so the TRAIN pass is deterministic and must equal the TEST numerics exactly.
W = numerics.trim_fixed_point(RNG.standard_normal((5, 7)).astype(np.float32), 6, 4)
B = numerics.trim_fixed_point(RNG.standard_normal(5).astype(np.float32), 6, 4)
X = (RNG.standard_normal((6, 7)) * 3).astype(np.float32)


def _fc_net(phase):
    text = input_layer({"x": X.shape}) + (
        'layer { name: "fc" type: "FcRistretto" bottom: "x" top: "y" '
        f'inner_product_param {{ num_output: 5 }} quantization_param {{ {FORMAT} }} }}\n')
    return make_net(text, {"fc": [W, B]}, phase=phase)


def test_train_pass_trims_activations_as_the_test_numerics():
    model = TorchNet(_fc_net("TRAIN"), quantize_activations=True)
    y = model({"x": X})["y"].detach().numpy()
    expected = NumpyRuntime(_fc_net("TEST")).forward({"x": X})["y"]
    np.testing.assert_array_equal(y, expected)
    assert np.any(np.abs(X) > 4) and np.any(np.abs(expected) >= 7.75)   # both formats saturate
    # Ristretto's own TRAIN pass (the default) leaves them in float.
    plain = TorchNet(_fc_net("TRAIN"))({"x": X})["y"].detach().numpy()
    np.testing.assert_allclose(plain, X @ W.T + B, rtol=1e-5, atol=1e-5)
    assert np.any(plain != y)


def test_gradient_is_straight_through_inside_the_range_and_zero_where_saturated():
    model = TorchNet(_fc_net("TRAIN"), quantize_activations=True)
    x = torch.tensor(X, requires_grad=True)
    blobs = model({"x": x})
    upstream = RNG.standard_normal((6, 5)).astype(np.float32)
    (blobs["y"] * torch.tensor(upstream)).sum().backward()
    # By hand: the output's gradient passes where the float output was within [-8, 7.75], the
    # input's where X was within [-4, 3.96875]; the weights' gradient sees the trimmed input.
    x_in = numerics.trim_fixed_point(X, 8, 5)
    out = x_in @ W.T + B
    passed = upstream * ((out >= -8) & (out <= 7.75))
    assert 0 < np.count_nonzero(passed == 0) < passed.size
    grad_x = (passed @ W) * ((X >= -4) & (X <= 3.96875))
    np.testing.assert_allclose(x.grad.numpy(), grad_x, rtol=1e-5, atol=1e-6)
    weight = model.layer_module("fc").blobs[0]
    np.testing.assert_allclose(weight.grad.numpy(), passed.T @ x_in, rtol=1e-5, atol=1e-5)


def test_minifloat_layer_saturates_at_its_largest_value():
    text = input_layer({"x": (1, 4)}) + (
        'layer { name: "fc" type: "FcRistretto" bottom: "x" top: "y" '
        'inner_product_param { num_output: 1 bias_term: false } '
        'quantization_param { precision: MINIFLOAT exp_bits: 3 mant_bits: 2 } }\n')
    net = make_net(text, {"fc": [np.float32([[1, 0.25, 0.25, 0.5]])]}, phase="TRAIN")
    model = TorchNet(net, quantize_activations=True)
    # 3 exponent bits, 2 mantissa bits: the largest value is 1.75 * 2^4 = 28.
    x = torch.tensor([[3.0, 40.0, -30.0, 27.0]], requires_grad=True)
    y = model({"x": x})["y"]
    # Inputs trimmed to [3, 28, -28, 28]; 3 + 7 - 7 + 14 = 17, trimmed to 16 (step 4 there).
    assert y.item() == 16.0
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [[1, 0, 0, 0.5]])


BN_SCALE = input_layer({"x": (4, 3, 2, 2)}) + (
    'layer { name: "bn" type: "BatchNorm" bottom: "x" top: "n" }\n'
    'layer { name: "scale" type: "Scale" bottom: "n" top: "n" scale_param { bias_term: true } }\n')


def test_frozen_batch_norm_keeps_its_statistics_bit_identical_and_trains_the_rest():
    start = [np.float32([0.5, -1.0, 2.0]), np.float32([3.0, 0.5, 1.5]), np.float32([2.0])]
    gamma, beta = np.float32([1.5, -0.5, 2.0]), np.float32([0.1, 0.2, -0.3])
    net = make_net(BN_SCALE, {"bn": start, "scale": [gamma, beta]}, phase="TRAIN")
    model = TorchNet(net, frozen_batch_norm=True)
    x = (RNG.standard_normal((4, 3, 2, 2)) * 2 + 1).astype(np.float32)
    for _ in range(3):
        out = model({"x": x})["n"]
        (out * out).sum().backward()
    saved = model.to_net().layer("bn").blobs
    for value, original in zip(saved, start):
        assert value.tobytes() == original.tobytes()
    # The output normalises with the stored statistics (mean = blob0 / factor, ...).
    mean, var = (start[0] / 2).reshape(1, 3, 1, 1), (start[1] / 2).reshape(1, 3, 1, 1)
    expected = (x - mean) / np.sqrt(var + 1e-5) * gamma.reshape(1, 3, 1, 1) + beta.reshape(
        1, 3, 1, 1)
    np.testing.assert_allclose(out.detach().numpy(), expected, rtol=1e-5, atol=1e-5)
    assert model.layer_module("scale").blobs[0].grad is not None
    # Without it the same pass moves the statistics.
    moving = TorchNet(make_net(BN_SCALE, {"bn": start, "scale": [gamma, beta]}, phase="TRAIN"))
    moving({"x": x})
    assert moving.to_net().layer("bn").blobs[2][0] != start[2][0]
