"""Ristretto's fine-tuning semantics in torch (pmgysel/caffe ``*_ristretto_layer.cpp``): in TRAIN
the weights and the bias are trimmed with STOCHASTIC rounding from the seeded generator and the
activations are left alone; gradients pass straight through to the full-precision shadow
weights, which are what ``to_net`` returns; in TEST the layers equal the numpy runtime to the
bit (in-place input trimming, both builds, seeded stochastic rounding).

References: ``numerics`` called here with the generator ``numpy.random.default_rng(seed)``
drawn in the documented order, the numpy runtime on a plain Caffe layer holding those trimmed
values, and central differences of that plain layer."""
import numpy as np
import pytest
import torch

from ristretto_py import numerics
from ristretto_py.layers.conv import deconvolve
from ristretto_py.runtime import NumpyRuntime
from ristretto_py.train.model import TorchNet
from train_reference import (assert_forward_matches, check_gradients, input_layer, make_net,
                             projections)

RNG = np.random.default_rng(21)
DFP = ("precision: DYNAMIC_FIXED_POINT bw_layer_in: 8 fl_layer_in: 4 bw_layer_out: 8 "
       "fl_layer_out: 3 bw_params: 6 fl_params: 4")
W = (RNG.standard_normal((4, 3, 3, 3)) * 0.6).astype(np.float32)
B = (RNG.standard_normal(4) * 0.5).astype(np.float32)
X = (RNG.standard_normal((2, 3, 6, 5)) * 2).astype(np.float32)


def _conv_text(kind="ConvolutionRistretto", quantization=DFP):
    return input_layer({"x": X.shape}) + (
        f'layer {{ name: "conv" type: "{kind}" bottom: "x" top: "y" '
        f'convolution_param {{ num_output: 4 kernel_size: 3 pad: 1 }} '
        f'quantization_param {{ {quantization} }} }}\n')


def _plain_output(weights, x=X):
    """The float Convolution of ``x`` with the given (trimmed) blobs, by the numpy runtime."""
    net = make_net(_conv_text("Convolution"), {"conv": weights})
    return NumpyRuntime(net).forward({"x": x})["y"]


def _stochastic(values, rng):
    return numerics.trim_fixed_point(values, 6, 4, numerics.STOCHASTIC, rng=rng)


def test_train_forward_trims_weights_and_bias_stochastically_and_not_activations():
    model = TorchNet(make_net(_conv_text(), {"conv": [W, B]}, phase="TRAIN"), seed=3)
    rng = np.random.default_rng(3)           # the net's generator: weights, then bias
    for _ in range(2):                       # every pass draws anew
        weight, bias = _stochastic(W, rng), _stochastic(B, rng)
        expected = _plain_output([weight, bias])
        with torch.no_grad():
            y = model({"x": X})["y"].numpy()
        assert np.abs(y - expected).max() <= 2e-6 * np.abs(expected).max()
    nearest = numerics.trim_fixed_point(W, 6, 4)
    assert np.any(weight != nearest)         # STOCHASTIC although the layer says NEAREST
    assert np.all(np.abs(weight - W) < 2 ** -4)                 # one grid step at most
    # The output is not trimmed (8 bits, fl 3) and the input was not either.
    assert np.any(numerics.trim_fixed_point(y, 8, 3) != y)


def test_stochastic_rounding_is_unbiased_and_seeded():
    net = make_net(_conv_text(), {"conv": [W, B]}, phase="TRAIN")
    first = TorchNet(net, seed=8)({"x": X})["y"].detach()
    assert torch.equal(TorchNet(net, seed=8)({"x": X})["y"].detach(), first)
    assert not torch.equal(TorchNet(net, seed=9)({"x": X})["y"].detach(), first)
    rng = np.random.default_rng(0)
    mean = np.mean([_stochastic(W, rng) for _ in range(4000)], axis=0)
    assert np.abs(mean - W).max() < 0.004    # E[trim] = w: 4000 draws, step 1/16


def test_gradients_pass_straight_through_to_the_shadow_weights():
    """d/dw of the Ristretto layer = d/dw of the float layer evaluated at the trimmed weights;
    d/dx uses the trimmed weights (Ristretto's backward); the reference is central differences
    of the plain float Convolution holding the trimmed values."""
    net = make_net(_conv_text(), {"conv": [W, B]}, phase="TRAIN")
    rng = np.random.default_rng(5)
    trimmed = [_stochastic(W, rng), _stochastic(B, rng)]
    plain = make_net(_conv_text("Convolution"), {"conv": trimmed}, phase="TRAIN")
    weights = projections(plain, {"x": X}, ["y"])
    model = TorchNet(net, seed=5, dtype=torch.float64)
    x = torch.tensor(X.astype(np.float64), requires_grad=True)
    (model({"x": x})["y"] * torch.as_tensor(weights["y"])).sum().backward()
    grads = ({"x": x.grad.numpy()},
             {("conv", i): p.grad.numpy() for i, p in enumerate(model.layer_module("conv").blobs)},
             model)
    check_gradients(plain, {"x": X}, weights, wrt_inputs=["x"],
                    wrt_blobs=[("conv", 0), ("conv", 1)], torch_grads=grads, samples=12)


def test_to_net_holds_the_updated_shadow_weights():
    net = make_net(_conv_text(), {"conv": [W, B]}, phase="TRAIN")
    model = TorchNet(net, seed=2)
    model({"x": X})["y"].square().sum().backward()
    shadow = model.layer_module("conv").blobs
    grads = [p.grad.numpy().copy() for p in shadow]
    with torch.no_grad():
        for p in shadow:
            p.sub_(p.grad * 0.25)
    saved = model.to_net().layer("conv").blobs
    for value, original, grad in zip(saved, (W, B), grads):
        np.testing.assert_array_equal(value, original - grad * np.float32(0.25))
        assert np.any(numerics.trim_fixed_point(value, 6, 4) != value)   # not on the grid


QUANTIZATIONS = {
    "fixed_nearest": DFP,
    "fixed_stochastic": DFP + " rounding_scheme: STOCHASTIC",
    "minifloat": "precision: MINIFLOAT exp_bits: 5 mant_bits: 2",
    "power_of_two": ("precision: INTEGER_POWER_OF_2_WEIGHTS exp_min: -4 exp_max: 0 "
                     "bw_layer_in: 8 fl_layer_in: 4 bw_layer_out: 8 fl_layer_out: 3"),
}


@pytest.mark.parametrize("compat", ["gpu", "cpu"])
@pytest.mark.parametrize("name", sorted(QUANTIZATIONS))
def test_test_phase_equals_the_numpy_runtime_bit_for_bit(name, compat):
    """Inputs trimmed in place: the Split tops, the Flatten view made before the Ristretto layer
    and the later readers all see the trimmed values, as in the numpy runtime; a STOCHASTIC
    layer draws what the numpy runtime draws with the same seed."""
    text = input_layer({"x": X.shape}) + (
        'layer { name: "split" type: "Split" bottom: "x" top: "xa" top: "xb" }\n'
        'layer { name: "flat" type: "Flatten" bottom: "x" top: "xf" }\n'
        f'layer {{ name: "conv" type: "ConvolutionRistretto" bottom: "xa" top: "y" '
        f'convolution_param {{ num_output: 4 kernel_size: 3 pad: 1 }} '
        f'quantization_param {{ {QUANTIZATIONS[name]} }} }}\n'
        'layer { name: "pool" type: "Pooling" bottom: "xb" top: "p" '
        'pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n'
        f'layer {{ name: "fc" type: "FcRistretto" bottom: "xf" top: "z" '
        f'inner_product_param {{ num_output: 3 }} quantization_param {{ {QUANTIZATIONS[name]} }} }}\n')
    fc = [(RNG.standard_normal((3, 90)) * 0.2).astype(np.float32), B[:3]]
    net = make_net(text, {"conv": [W, B], "fc": fc})
    # Trimmed operands make the float operations exact, so both runtimes agree to the bit;
    # Ristretto's CPU build leaves power-of-two activations alone: there, float rounding.
    exact = name != "power_of_two" or compat == "gpu"
    blobs = assert_forward_matches(net, {"x": X}, tolerance=0 if exact else 2e-6, seed=4,
                                   compat=compat)
    assert np.any(blobs["x"].numpy() != X) == exact   # the input blob itself was trimmed


def test_deconvolution_ristretto_in_both_phases():
    quantization = "precision: MINIFLOAT exp_bits: 4 mant_bits: 3"
    text = input_layer({"x": (1, 2, 3, 3)}) + (
        'layer { name: "up" type: "DeconvolutionRistretto" bottom: "x" top: "y" '
        'convolution_param { num_output: 2 kernel_size: 2 stride: 2 } '
        f'quantization_param {{ {quantization} }} }}\n')
    weights = [(RNG.standard_normal((2, 2, 2, 2))).astype(np.float32),
               RNG.standard_normal(2).astype(np.float32)]
    x = RNG.standard_normal((1, 2, 3, 3)).astype(np.float32)
    assert_forward_matches(make_net(text, {"up": weights}), {"x": x}, tolerance=0)
    model = TorchNet(make_net(text, {"up": weights}, phase="TRAIN"), seed=1)
    rng = np.random.default_rng(1)
    trimmed = [numerics.trim_minifloat(w, 4, 3, numerics.STOCHASTIC, rng=rng) for w in weights]
    plain = make_net(text.replace("DeconvolutionRistretto", "Deconvolution"), {"up": trimmed})
    expected = NumpyRuntime(plain).forward({"x": x})["y"]
    np.testing.assert_allclose(model({"x": x})["y"].detach().numpy(), expected, rtol=0, atol=2e-6)


def test_power_of_two_leaves_the_bias_untrimmed_in_train():
    text = input_layer({"x": (4, 6)}) + (
        'layer { name: "fc" type: "FcRistretto" bottom: "x" top: "y" inner_product_param '
        '{ num_output: 3 } quantization_param { precision: INTEGER_POWER_OF_2_WEIGHTS '
        'exp_min: -6 exp_max: 0 } }\n')
    weights = [RNG.standard_normal((3, 6)).astype(np.float32) * 0.3,
               RNG.standard_normal(3).astype(np.float32)]
    x = RNG.standard_normal((4, 6)).astype(np.float32)
    model = TorchNet(make_net(text, {"fc": weights}, phase="TRAIN"), seed=6)
    power = numerics.trim_power_of_two(weights[0], -6, 0, numerics.STOCHASTIC,
                                       rng=np.random.default_rng(6))
    expected = x.astype(np.float64) @ power.T.astype(np.float64) + weights[1]
    np.testing.assert_allclose(model({"x": x})["y"].detach().numpy(), expected, atol=1e-5)


def test_lrn_ristretto_forward_is_the_numpy_layer_and_its_gradient_the_float_lrn():
    lrn = "lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 k: 1.5 }"
    text = input_layer({"x": (2, 5, 3, 3)}) + (
        f'layer {{ name: "lrn" type: "LRNRistretto" bottom: "x" top: "y" {lrn} '
        'quantization_param { precision: MINIFLOAT exp_bits: 5 mant_bits: 4 } }\n')
    x = RNG.standard_normal((2, 5, 3, 3)).astype(np.float32)
    for phase in ("TEST", "TRAIN"):          # no phase rule in Ristretto's LRN
        assert_forward_matches(make_net(text, phase=phase), {"x": x}, tolerance=0)
    plain = make_net(input_layer({"x": (2, 5, 3, 3)}) +
                     f'layer {{ name: "lrn" type: "LRN" bottom: "x" top: "y" {lrn} }}\n')
    weights = projections(plain, {"x": x}, ["y"])
    model = TorchNet(make_net(text, phase="TRAIN"), dtype=torch.float64)
    tensor = torch.tensor(x.astype(np.float64), requires_grad=True)
    (model({"x": tensor})["y"] * torch.as_tensor(weights["y"])).sum().backward()
    check_gradients(plain, {"x": x}, weights, wrt_inputs=["x"], samples=16,
                    torch_grads=({"x": tensor.grad.numpy()}, {}, model))


def test_hwce_and_activation_quantizers_clip_forward_and_pass_gradients_inside_the_range():
    """ConvolutionHWCE and ActivationQuantize (ristretto-py's fixed quantizers): the numpy
    runtime's values in both phases (quantclip on kernel, input and output), and the gradient
    of the float convolution at the clipped operands (central differences of a plain one)."""
    hwce = ("hwce_param { kernel_bits: 4 kernel_msb: 0 input_bits: 8 input_msb: 2 "
            "output_bits: 8 output_msb: 3 }")
    text = input_layer({"x": X.shape}) + (
        f'layer {{ name: "conv" type: "ConvolutionHWCE" bottom: "x" top: "y" '
        f'convolution_param {{ num_output: 4 kernel_size: 3 pad: 1 }} {hwce} }}\n'
        'layer { name: "q" type: "ActivationQuantize" bottom: "y" top: "z" '
        'activation_quantization_param { bits: 4 low: -2 high: 3 } }\n')
    for phase in ("TEST", "TRAIN"):
        assert_forward_matches(make_net(text, {"conv": [W, B]}, phase), {"x": X}, tolerance=0)
    model = TorchNet(make_net(text, {"conv": [W, B]}), dtype=torch.float64)
    x = torch.tensor(X.astype(np.float64), requires_grad=True)
    out = model({"x": x})
    clipped_x = numerics.quantclip(X, 2, 8)
    plain = make_net(_conv_text("Convolution"), {"conv": [numerics.quantclip(W, 0, 4), B]})
    weights = projections(plain, {"x": clipped_x}, ["y"])
    (out["y"] * torch.as_tensor(weights["y"])).sum().backward(retain_graph=True)
    conv = model.layer_module("conv").blobs
    grads = ({}, {("conv", i): p.grad.numpy().copy() for i, p in enumerate(conv)}, model)
    check_gradients(plain, {"x": clipped_x}, weights, wrt_blobs=[("conv", 0), ("conv", 1)],
                    torch_grads=grads, samples=12)
    x.grad = None
    # Through both quantizers: ActivationQuantize passes the gradient where y lies in its
    # range [-2, 3] and stops it where it clipped; then the float convolution's gradient.
    out["z"].sum().backward()
    y = out["y"].detach().numpy()
    inside = ((y >= -2) & (y <= 3)).astype(np.float32)
    assert 0 < inside.mean() < 1            # the case exercises both sides of the rule
    expected = deconvolve(inside, numerics.quantclip(W, 0, 4), None, (1, 1), (1, 1), (1, 1), 1)
    np.testing.assert_allclose(x.grad.numpy(), expected, atol=1e-5)
