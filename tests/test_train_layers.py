"""The torch module of every trainable Caffe layer type on small hand nets: its forward equals
the numpy runtime's (float32, in both phases), and its float64 autograd gradients, with respect
to inputs and blobs, equal central differences of the numpy runtime."""
import numpy as np
import pytest
import torch

from ristretto_py.train.model import TorchNet
from train_reference import (assert_forward_matches, check_gradients, input_layer, make_net,
                             projections)

RNG = np.random.default_rng(7)


def normal(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def away_from_zero(*shape):
    """Values with |x| >= 0.2, so that a step of 0.01 never crosses a kink at 0."""
    x = RNG.standard_normal(shape)
    return (np.sign(x) * (0.2 + np.abs(x))).astype(np.float32)


def spaced(*shape, step=0.05):
    """Distinct values at least ``step`` apart (no ties within a MAX window, even after a step
    of 0.01), in random order."""
    count = int(np.prod(shape))
    return (RNG.permutation(count) * step - count * step / 2).reshape(shape).astype(np.float32)


def layer(name, kind, bottoms, tops, body=""):
    b = " ".join(f'bottom: "{x}"' for x in bottoms)
    t = " ".join(f'top: "{x}"' for x in tops)
    return f'layer {{ name: "{name}" type: "{kind}" {b} {t} {body} }}\n'


# Each case: (layers text, inputs, blobs, the blobs whose gradient is checked).
CASES = {
    "conv_grouped_strided_padded": (
        layer("conv", "Convolution", ["x"], ["y"],
              "convolution_param { num_output: 6 kernel_size: 3 stride: 2 pad: 1 group: 2 }"),
        {"x": normal(2, 4, 7, 6)}, {"conv": [normal(6, 2, 3, 3), normal(6)]},
        [("conv", 0), ("conv", 1)]),
    "conv_dilated_rectangular": (
        layer("conv", "Convolution", ["x"], ["y"],
              "convolution_param { num_output: 3 kernel_h: 3 kernel_w: 2 pad_h: 2 pad_w: 1 "
              "dilation: 2 bias_term: false }"),
        {"x": normal(2, 2, 7, 6)}, {"conv": [normal(3, 2, 3, 2)]}, [("conv", 0)]),
    "deconv_grouped_strided": (
        layer("up", "Deconvolution", ["x"], ["y"],
              "convolution_param { num_output: 4 kernel_size: 3 stride: 2 pad: 1 group: 2 }"),
        {"x": normal(2, 4, 4, 5)}, {"up": [normal(4, 2, 3, 3), normal(4)]},
        [("up", 0), ("up", 1)]),
    "deconv_dilated": (
        layer("up", "Deconvolution", ["x"], ["y"],
              "convolution_param { num_output: 2 kernel_size: 2 stride: 3 dilation: 2 }"),
        {"x": normal(1, 3, 3, 3)}, {"up": [normal(3, 2, 2, 2), normal(2)]}, [("up", 0)]),
    "inner_product_axis1": (
        layer("ip", "InnerProduct", ["x"], ["y"], "inner_product_param { num_output: 5 }"),
        {"x": normal(3, 2, 3, 2)}, {"ip": [normal(5, 12), normal(5)]}, [("ip", 0), ("ip", 1)]),
    "inner_product_transpose_axis2": (
        layer("ip", "InnerProduct", ["x"], ["y"],
              "inner_product_param { num_output: 4 axis: 2 transpose: true }"),
        {"x": normal(2, 3, 5)}, {"ip": [normal(5, 4), normal(4)]}, [("ip", 0), ("ip", 1)]),
    "max_pool_ceil_padded": (
        layer("pool", "Pooling", ["x"], ["y"],
              "pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 }"),
        {"x": spaced(2, 2, 7, 6)}, {}, []),
    "max_pool_ceil_tail": (
        layer("pool", "Pooling", ["x"], ["y"], "pooling_param { pool: MAX kernel_size: 3 stride: 2 }"),
        {"x": spaced(1, 2, 6, 8)}, {}, []),
    "ave_pool_padded_clipped_count": (
        layer("pool", "Pooling", ["x"], ["y"],
              "pooling_param { pool: AVE kernel_h: 3 kernel_w: 2 stride: 2 pad_h: 1 pad_w: 1 }"),
        {"x": normal(2, 2, 6, 7)}, {}, []),
    "global_pools": (
        layer("gmax", "Pooling", ["x"], ["a"], "pooling_param { pool: MAX global_pooling: true }")
        + layer("gave", "Pooling", ["x"], ["b"], "pooling_param { pool: AVE global_pooling: true }"),
        {"x": spaced(2, 3, 4, 5)}, {}, []),
    "relu_leaky_prelu": (
        layer("relu", "ReLU", ["x"], ["a"])
        + layer("leaky", "ReLU", ["x"], ["b"], "relu_param { negative_slope: 0.1 }")
        + layer("prelu", "PReLU", ["x"], ["c"])
        + layer("shared", "PReLU", ["x"], ["d"], "prelu_param { channel_shared: true }"),
        {"x": away_from_zero(2, 3, 4, 4)},
        {"prelu": [normal(3, scale=0.3)], "shared": [np.float32([0.3])]},
        [("prelu", 0), ("shared", 0)]),
    "smooth_activations": (
        layer("sigmoid", "Sigmoid", ["x"], ["a"]) + layer("tanh", "TanH", ["x"], ["b"])
        + layer("abs", "AbsVal", ["x"], ["c"])
        + layer("power", "Power", ["x"], ["d"], "power_param { power: 2.5 scale: 0.5 shift: 3 }")
        + layer("clip", "Clip", ["x"], ["e"], "clip_param { min: -0.9 max: 1.3 }")
        + layer("drop", "Dropout", ["x"], ["f"], "dropout_param { dropout_ratio: 0.3 }"),
        {"x": away_from_zero(2, 3, 4)}, {}, []),
    "batchnorm_scale_bias": (
        layer("bn", "BatchNorm", ["x"], ["n"], "batch_norm_param { eps: 0.001 }")
        + layer("scale", "Scale", ["n"], ["s"], "scale_param { bias_term: true }")
        + layer("bias", "Bias", ["s"], ["y"], "bias_param { axis: 2 num_axes: 1 }"),
        {"x": normal(3, 4, 5, 2)},
        {"bn": [normal(4), np.float32(RNG.uniform(1, 4, 4)), np.float32([2.5])],
         "scale": [normal(4), normal(4)], "bias": [normal(5)]},
        [("scale", 0), ("scale", 1), ("bias", 0)]),
    "batchnorm_in_place_scale": (   # TorchNet runs the pair as one kernel
        layer("bn", "BatchNorm", ["x"], ["n"], "batch_norm_param { eps: 0.001 }")
        + layer("scale", "Scale", ["n"], ["n"], "scale_param { bias_term: true }")
        + layer("bn2", "BatchNorm", ["n"], ["m"])
        + layer("scale2", "Scale", ["m"], ["m"]),
        {"x": normal(3, 4, 5, 2)},
        {"bn": [normal(4), np.float32(RNG.uniform(1, 4, 4)), np.float32([2.5])],
         "scale": [normal(4), normal(4)],
         "bn2": [normal(4), np.float32(RNG.uniform(1, 4, 4)), np.float32([0.5])],
         "scale2": [normal(4)]},
        [("scale", 0), ("scale", 1), ("scale2", 0)]),
    "batchnorm_2d_zero_factor": (
        layer("bn", "BatchNorm", ["x"], ["y"]),
        {"x": normal(4, 6)}, {"bn": [normal(6), normal(6) ** 2, np.float32([0])]}, []),
    "scale_of_second_bottom": (
        layer("scale", "Scale", ["x", "w"], ["y"], "scale_param { axis: 1 bias_term: true }"),
        {"x": normal(2, 3, 4, 2), "w": normal(3, 4)}, {"scale": [normal(3, 4)]},
        [("scale", 0)]),
    "lrn_across_and_within": (
        layer("across", "LRN", ["x"], ["a"], "lrn_param { local_size: 5 alpha: 0.3 beta: 0.75 k: 2 }")
        + layer("within", "LRN", ["x"], ["b"],
                "lrn_param { local_size: 3 alpha: 0.5 beta: 0.6 norm_region: WITHIN_CHANNEL }"),
        {"x": normal(2, 7, 4, 5)}, {}, []),
    "softmax_axes": (
        layer("soft1", "Softmax", ["x"], ["a"]) + layer("soft2", "Softmax", ["x"], ["b"],
                                                        "softmax_param { axis: 2 }"),
        {"x": normal(2, 3, 4, 2, scale=2)}, {}, []),
    "eltwise_sum_prod_max": (
        layer("sum", "Eltwise", ["a", "b", "c"], ["s"],
              "eltwise_param { operation: SUM coeff: 0.5 coeff: -2 coeff: 1.5 }")
        + layer("prod", "Eltwise", ["a", "b", "c"], ["p"], "eltwise_param { operation: PROD }")
        + layer("max", "Eltwise", ["a", "b", "c"], ["m"], "eltwise_param { operation: MAX }"),
        # At every position the three bottoms are 0.3 apart, in a random order.
        dict(zip("abc", RNG.permuted(np.tile(np.arange(3.0)[:, None], (1, 40)), axis=0)
                 .reshape(3, 2, 4, 5).astype(np.float32) * 0.3 + normal(1, 2, 4, 5))), {}, []),
    "shape_layers": (
        layer("concat", "Concat", ["a", "b"], ["c"], "concat_param { axis: 1 }")
        + layer("slice", "Slice", ["c"], ["s1", "s2", "s3"],
                "slice_param { axis: 1 slice_point: 1 slice_point: 4 }")
        + layer("split", "Split", ["s2"], ["t1", "t2"])
        + layer("flatten", "Flatten", ["t1"], ["f"], "flatten_param { axis: 2 }")
        + layer("reshape", "Reshape", ["t2"], ["r"],
                "reshape_param { shape { dim: 0 dim: -1 dim: 2 } }")
        + layer("permute", "Permute", ["s3"], ["p"], "permute_param { order: 0 order: 3 order: 1 }")
        + layer("crop", "Crop", ["c", "ref"], ["k"], "crop_param { axis: 2 offset: 1 offset: 2 }"),
        {"a": normal(2, 3, 4, 6), "b": normal(2, 2, 4, 6), "ref": normal(2, 2, 3, 2)}, {}, []),
    "normalize": (
        layer("norm", "Normalize", ["x"], ["a"],
              "norm_param { across_spatial: false channel_shared: false }")
        + layer("norm2", "Normalize", ["x"], ["b"]),
        {"x": normal(2, 3, 4, 3)}, {"norm": [normal(3)], "norm2": [np.float32([1.7])]},
        [("norm", 0), ("norm2", 0)]),
}


def _net(name, phase="TEST"):
    body, inputs, blobs, wrt = CASES[name]
    shapes = {k: v.shape for k, v in inputs.items()}
    return make_net(input_layer(shapes) + body, blobs, phase), inputs, wrt


@pytest.mark.parametrize("phase", ["TEST", "TRAIN"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_forward_equals_numpy_runtime(name, phase):
    net, inputs, _ = _net(name, phase)
    if phase == "TRAIN" and any(l.type == "Dropout" for l in net.layers):
        # Dropout draws its own mask (tested below); compare the others by leaving it out.
        net = net.with_layers([l for l in net.layers if l.type != "Dropout"])
    assert_forward_matches(net, inputs)


@pytest.mark.parametrize("phase", ["TEST", "TRAIN"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_gradients_equal_central_differences(name, phase):
    net, inputs, wrt = _net(name, phase)
    if any(l.type == "Dropout" for l in net.layers) and phase == "TRAIN":
        net = net.with_layers([l for l in net.layers if l.type != "Dropout"])
    outputs = [b for b in net.blob_names if b not in inputs]
    weights = projections(net, inputs, outputs)
    check_gradients(net, inputs, weights, wrt_inputs=list(inputs), wrt_blobs=wrt)


def test_stochastic_pooling_at_test_time_equals_numpy_and_refuses_training():
    x = np.abs(normal(2, 2, 6, 5)) + 0.1
    text = input_layer({"x": x.shape}) + layer(
        "pool", "Pooling", ["x"], ["y"], "pooling_param { pool: STOCHASTIC kernel_size: 3 stride: 2 }")
    assert_forward_matches(make_net(text), {"x": x})
    model = TorchNet(make_net(text, phase="TRAIN"))
    with pytest.raises(Exception, match="STOCHASTIC pooling"):
        model({"x": x})


def test_eltwise_max_routes_ties_as_caffe():
    """Caffe: bottoms 0 and 1 tie -> bottom 1 takes the gradient; a later bottom tying the
    running maximum leaves it with the earlier bottom."""
    a = np.float32([[1.0, 2.0, 0.0]])
    b = np.float32([[1.0, 1.0, 3.0]])
    c = np.float32([[0.0, 2.0, 3.0]])
    text = input_layer({k: (1, 3) for k in "abc"}) + layer(
        "max", "Eltwise", ["a", "b", "c"], ["m"], "eltwise_param { operation: MAX }")
    tensors = {k: torch.tensor(v, requires_grad=True) for k, v in zip("abc", (a, b, c))}
    model = TorchNet(make_net(text))
    model(tensors)["m"].sum().backward()
    np.testing.assert_array_equal(tensors["a"].grad.numpy(), [[0, 1, 0]])
    np.testing.assert_array_equal(tensors["b"].grad.numpy(), [[1, 0, 1]])
    np.testing.assert_array_equal(tensors["c"].grad.numpy(), [[0, 0, 0]])


def test_max_pooling_gradient_goes_to_the_first_maximum():
    x = np.float32([[[[1, 3, 3, 0], [3, 2, 1, 1]]]])      # one 2x4 map, 2x2 windows
    text = input_layer({"x": x.shape}) + layer(
        "pool", "Pooling", ["x"], ["y"], "pooling_param { pool: MAX kernel_size: 2 stride: 2 }")
    tensor = torch.tensor(x, requires_grad=True)
    TorchNet(make_net(text))({"x": tensor})["y"].sum().backward()
    np.testing.assert_array_equal(tensor.grad.numpy(), [[[[0, 1, 1, 0], [0, 0, 0, 0]]]])


def test_dropout_in_train_keeps_and_scales_with_a_seeded_mask():
    x = np.ones((4, 50, 50), np.float32)
    text = input_layer({"x": x.shape}) + layer("drop", "Dropout", ["x"], ["y"],
                                               "dropout_param { dropout_ratio: 0.3 }")
    net = make_net(text, phase="TRAIN")
    tensor = torch.tensor(x, requires_grad=True)
    y = TorchNet(net, seed=5)({"x": tensor})["y"]
    values = set(np.unique(y.detach().numpy()).tolist())
    assert values == {0.0, np.float32(1 / 0.7).item()}
    kept = float((y > 0).float().mean())
    assert abs(kept - 0.7) < 0.02                 # 10,000 draws: 4.4 standard deviations
    y.sum().backward()
    np.testing.assert_array_equal(tensor.grad.numpy(), y.detach().numpy())   # mask * scale
    again = TorchNet(net, seed=5)({"x": x})["y"]
    other = TorchNet(net, seed=6)({"x": x})["y"]
    assert torch.equal(again, y.detach()) and not torch.equal(other, y.detach())
    model = TorchNet(net, seed=5).set_phase("TEST")
    assert torch.equal(model({"x": x})["y"], torch.ones_like(again))
