"""Caffe's fillers for blobs a net does not carry: statistics against the formulas of
``filler.hpp`` (xavier and msra variances from fan_in / fan_out / their average), the bilinear
kernel and constants by hand, seeded reproducibility, and each layer type's default filler."""
import numpy as np
import pytest
import torch

from ristretto_py.errors import NetError
from ristretto_py.protos import caffe_pb2
from ristretto_py.train.model import TorchNet
from ristretto_py.train.modules.fillers import fill
from train_reference import input_layer, make_net

F = caffe_pb2.FillerParameter
SHAPE = (64, 32, 3, 3)          # fan_in 32*9 = 288, fan_out 64*9 = 576


def _fill(seed=0, shape=SHAPE, **fields):
    return fill(F(**fields), shape, np.random.default_rng(seed)).astype(np.float64)


@pytest.mark.parametrize("norm, n", [(F.FAN_IN, 288), (F.FAN_OUT, 576), (F.AVERAGE, 432)])
def test_xavier_and_msra_variances_follow_the_fans(norm, n):
    xavier = _fill(type="xavier", variance_norm=norm)
    bound = np.sqrt(3.0 / n)
    assert np.abs(xavier).max() <= bound and np.abs(xavier).max() > 0.99 * bound
    # 18,432 draws: the sample variance is within 3% of 1/n (about 4 standard errors).
    assert xavier.var() == pytest.approx(1.0 / n, rel=0.03)
    msra = _fill(type="msra", variance_norm=norm)
    assert msra.var() == pytest.approx(2.0 / n, rel=0.03)
    assert abs(msra.mean()) < 4 * np.sqrt(2.0 / n / msra.size)


def test_fans_of_a_matrix_and_a_vector():
    # InnerProduct (N, K): fan_in K, fan_out N; a 1-D blob: fan_in 1, fan_out its count.
    matrix = _fill(type="xavier", variance_norm=F.FAN_OUT, shape=(50, 400))
    assert np.abs(matrix).max() <= np.sqrt(3.0 / 50)
    assert np.abs(matrix).max() > np.sqrt(3.0 / 400)
    vector = _fill(type="msra", variance_norm=F.FAN_OUT, shape=(20000,))
    assert vector.var() == pytest.approx(2.0 / 20000, rel=0.05)
    assert _fill(type="msra", shape=(20000,)).var() == pytest.approx(2.0, rel=0.05)


def test_uniform_gaussian_sparse_positive_unitball_constant():
    uniform = _fill(type="uniform", min=-0.3, max=0.5, shape=(20000,))
    assert uniform.min() >= -0.3 and uniform.max() < 0.5
    assert uniform.mean() == pytest.approx(0.1, abs=0.006)
    gaussian = _fill(type="gaussian", mean=0.2, std=0.5, shape=(20000,))
    assert gaussian.mean() == pytest.approx(0.2, abs=0.015)
    assert gaussian.std() == pytest.approx(0.5, rel=0.03)
    sparse = _fill(type="gaussian", std=1.0, sparse=5, shape=(20, 1000))
    assert np.count_nonzero(sparse) / sparse.size == pytest.approx(5 / 20, abs=0.015)
    ball = _fill(type="positive_unitball", shape=(7, 3, 4))
    assert ball.min() >= 0
    np.testing.assert_allclose(ball.reshape(7, -1).sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(_fill(type="constant", value=0.7, shape=(3, 2)),
                                  np.full((3, 2), np.float32(0.7)))
    np.testing.assert_array_equal(_fill(shape=(4,)), np.zeros(4))    # Caffe's default: 0


def test_bilinear_kernels_by_hand():
    four = _fill(type="bilinear", shape=(3, 1, 4, 4))
    profile = np.array([0.25, 0.75, 0.75, 0.25])
    for channel in range(3):
        np.testing.assert_array_equal(four[channel, 0], np.outer(profile, profile))
    three = _fill(type="bilinear", shape=(2, 2, 3, 3))
    np.testing.assert_array_equal(three[1, 0], np.outer([0.5, 1, 0.5], [0.5, 1, 0.5]))
    with pytest.raises(NetError, match="square"):
        _fill(type="bilinear", shape=(2, 1, 3, 4))


def test_unknown_filler_and_sparse_misuse_are_refused():
    with pytest.raises(NetError, match="unknown filler type 'orthogonal'"):
        _fill(type="orthogonal")
    with pytest.raises(NetError, match="does not support sparse"):
        _fill(type="uniform", sparse=3)


NET = input_layer({"x": (2, 3, 5, 5)}) + (
    'layer { name: "conv" type: "Convolution" bottom: "x" top: "c" convolution_param { '
    'num_output: 8 kernel_size: 3 weight_filler { type: "xavier" } '
    'bias_filler { type: "constant" value: 0.1 } } }\n'
    'layer { name: "plain" type: "Convolution" bottom: "x" top: "d" convolution_param { '
    'num_output: 2 kernel_size: 1 } }\n'
    'layer { name: "bn" type: "BatchNorm" bottom: "c" top: "n" }\n'
    'layer { name: "scale" type: "Scale" bottom: "n" top: "s" scale_param { bias_term: true } }\n'
    'layer { name: "prelu" type: "PReLU" bottom: "s" top: "p" }\n'
    'layer { name: "bias" type: "Bias" bottom: "p" top: "b" }\n'
    'layer { name: "norm" type: "Normalize" bottom: "b" top: "o" }\n'
    'layer { name: "ip" type: "InnerProduct" bottom: "o" top: "y" inner_product_param { '
    'num_output: 4 weight_filler { type: "gaussian" std: 0.01 } } }\n')


def test_layers_without_blobs_get_their_types_default_fillers_seeded():
    model = TorchNet(make_net(NET, phase="TRAIN"), seed=1)
    blobs = {m.layer_name: [p.detach().numpy() for p in m.blobs] for m in model.layer_modules}
    conv_weight, conv_bias = blobs["conv"]
    assert conv_weight.shape == (8, 3, 3, 3)
    assert np.abs(conv_weight).max() <= np.sqrt(3.0 / 27) and conv_weight.std() > 0.1
    np.testing.assert_array_equal(conv_bias, np.full(8, np.float32(0.1)))
    assert not np.any(blobs["plain"][0]) and not np.any(blobs["plain"][1])   # constant 0
    for value, expected in zip(blobs["bn"], ([0] * 8, [0] * 8, [0])):
        np.testing.assert_array_equal(value, expected)
    np.testing.assert_array_equal(blobs["scale"][0], np.ones(8))
    np.testing.assert_array_equal(blobs["scale"][1], np.zeros(8))
    np.testing.assert_array_equal(blobs["prelu"][0], np.full(8, np.float32(0.25)))
    np.testing.assert_array_equal(blobs["bias"][0], np.zeros(8))
    np.testing.assert_array_equal(blobs["norm"][0], [1.0])
    assert blobs["ip"][0].shape == (4, 72) and 0.005 < blobs["ip"][0].std() < 0.015
    again = TorchNet(make_net(NET, phase="TRAIN"), seed=1).layer_module("conv").blobs[0]
    other = TorchNet(make_net(NET, phase="TRAIN"), seed=2).layer_module("conv").blobs[0]
    assert torch.equal(again, model.layer_module("conv").blobs[0])
    assert not torch.equal(other, again)
    saved = model.to_net()           # the filled values become the net's blobs
    np.testing.assert_array_equal(saved.layer("conv").blobs[0], conv_weight)
