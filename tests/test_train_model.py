"""``TorchNet``'s net-level rules, as Caffe's ``Net``: shared parameters (``param { name }``),
lr_mult / decay_mult in ``learnable_params``, ``propagate_down``, ``loss_weight``, BatchNorm's
running statistics in TRAIN (hand formulas of ``batch_norm_layer.cpp``), phases, sharing
with a TEST net, snapshots through ``to_net``. References: hand values, the numpy runtime,
central differences of the numpy runtime."""
import numpy as np
import pytest
import torch

from ristretto_py import Net
from ristretto_py.errors import NetError
from ristretto_py.runtime import NumpyRuntime
from ristretto_py.train.model import TorchNet
from train_reference import (assert_forward_matches, check_gradients, input_layer, make_net,
                             projections, torch_gradients)

RNG = np.random.default_rng(31)


def normal(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def _shared_net(spec_a, spec_b, blobs_b=None, shape_b=(3, 6)):
    text = input_layer({"x": (4, 6)}) + (
        f'layer {{ name: "a" type: "InnerProduct" bottom: "x" top: "ya" {spec_a} '
        'inner_product_param { num_output: 3 } }\n'
        f'layer {{ name: "b" type: "InnerProduct" bottom: "x" top: "yb" {spec_b} '
        f'inner_product_param {{ num_output: {shape_b[0]} }} }}\n')
    weight = normal(3, 6)
    blobs = {"a": [weight, normal(3)],
             "b": [blobs_b if blobs_b is not None else weight, normal(shape_b[0])]}
    return make_net(text, blobs), blobs


def test_shared_weights_are_one_parameter_learned_once_with_summed_gradients():
    net, blobs = _shared_net('param { name: "w" lr_mult: 2 decay_mult: 0.5 } param { lr_mult: 3 }',
                             'param { name: "w" }')
    model = TorchNet(net)
    assert model.layer_module("b").blobs[0] is model.layer_module("a").blobs[0]
    listed = [(p.layer, p.index, p.lr_mult, p.decay_mult, p.name) for p in model.learnable_params()]
    assert listed == [("a", 0, 2.0, 0.5, "w"), ("a", 1, 3.0, 1.0, ""), ("b", 1, 1.0, 1.0, "")]
    inputs = {"x": normal(4, 6)}
    weights = projections(net, inputs, ["ya", "yb"])
    check_gradients(net, inputs, weights, wrt_inputs=["x"],
                    wrt_blobs=[(("a", 0), ("b", 0)), ("a", 1), ("b", 1)])


def test_sharing_merges_multipliers_and_checks_them():
    net, _ = _shared_net('param { name: "w" }', 'param { name: "w" lr_mult: 0.5 decay_mult: 0 }')
    owner = TorchNet(net).learnable_params()[0]
    assert (owner.layer, owner.lr_mult, owner.decay_mult) == ("a", 0.5, 0.0)
    net, _ = _shared_net('param { name: "w" lr_mult: 1 }', 'param { name: "w" lr_mult: 2 }')
    with pytest.raises(NetError, match="mismatched lr_mult"):
        TorchNet(net)


def test_permissive_sharing_reshapes_and_strict_sharing_refuses():
    text = input_layer({"x": (4, 6), "z": (4, 9)}) + (
        'layer { name: "a" type: "InnerProduct" bottom: "x" top: "ya" param { name: "w" } '
        'inner_product_param { num_output: 3 bias_term: false } }\n'
        'layer { name: "b" type: "InnerProduct" bottom: "z" top: "yb" '
        'param { name: "w" share_mode: PERMISSIVE } '
        'inner_product_param { num_output: 2 bias_term: false } }\n')
    weight = normal(3, 6)
    net = make_net(text, {"a": [weight], "b": [weight.reshape(2, 9)]})
    inputs = {"x": normal(4, 6), "z": normal(4, 9)}
    model = TorchNet(net)
    assert len(model.learnable_params()) == 1
    assert_forward_matches(net, inputs)
    with pytest.raises(NetError, match="cannot share"):
        TorchNet(make_net(text.replace(" share_mode: PERMISSIVE", ""),
                          {"a": [weight], "b": [weight.reshape(2, 9)]}))


def test_a_sharing_layer_writes_its_stored_values_through_the_share():
    """Caffe copies each layer's stored blobs into the shared blob in turn: the last wins."""
    net, blobs = _shared_net('param { name: "w" }', 'param { name: "w" }', blobs_b=normal(3, 6))
    model = TorchNet(net)
    np.testing.assert_array_equal(model.layer_module("a").blobs[0].detach().numpy(),
                                  blobs["b"][0])


def test_zero_lr_mult_blobs_get_no_gradient():
    net, _ = _shared_net('param { lr_mult: 0 } param { lr_mult: 1 decay_mult: 0 }', "")
    model = TorchNet(net)
    model({"x": normal(4, 6)})["ya"].sum().backward()
    first, second = model.learnable_params()[:2]
    assert first.lr_mult == 0 and first.tensor.grad is None and not first.tensor.requires_grad
    assert second.decay_mult == 0 and second.tensor.grad is not None


BN = input_layer({"x": (3, 2, 2, 2)}) + (
    'layer { name: "bn" type: "BatchNorm" bottom: "x" top: "y" '
    'batch_norm_param { moving_average_fraction: 0.9 eps: 0.01 } }\n')


IN_PLACE_SCALE = ('layer { name: "scale" type: "Scale" bottom: "y" top: "y" '
                  'scale_param { bias_term: true } }\n')


@pytest.mark.parametrize("scaled", [False, True])
def test_batchnorm_train_updates_its_three_blobs_as_caffe(scaled):
    # With an in-place Scale after it, the pair runs as one torch kernel (TorchNet fuses it):
    # the statistics and the output must be those of the two layers one after the other.
    start = [np.float32([1.0, -2.0]), np.float32([4.0, 6.0]), np.float32([2.0])]
    gamma, beta = np.float32([2.0, -0.5]), np.float32([0.3, 1.0])
    blobs = {"bn": start, "scale": [gamma, beta]} if scaled else {"bn": start}
    net = make_net(BN + (IN_PLACE_SCALE if scaled else ""), blobs, phase="TRAIN")
    model = TorchNet(net)
    assert bool(model._fused) == scaled
    listed = model.learnable_params()
    assert [(p.index, p.lr_mult) for p in listed][:3] == [(0, 0.0), (1, 0.0), (2, 0.0)]
    assert not any(p.tensor.requires_grad for p in listed[:3])
    mean_blob, var_blob, factor = (v.astype(np.float64) for v in start)
    for _ in range(2):
        x = normal(3, 2, 2, 2)
        y = model({"x": x})["y"].detach().numpy()
        values = x.astype(np.float64).transpose(1, 0, 2, 3).reshape(2, -1)    # 12 per channel
        mean, var = values.mean(axis=1), values.var(axis=1)
        expected = (x - mean.reshape(1, 2, 1, 1)) / np.sqrt(var.reshape(1, 2, 1, 1) + 0.01)
        if scaled:
            expected = expected * gamma.reshape(1, 2, 1, 1) + beta.reshape(1, 2, 1, 1)
        np.testing.assert_allclose(y, expected, atol=4e-6)
        factor = 0.9 * factor + 1
        mean_blob = 0.9 * mean_blob + mean
        var_blob = 0.9 * var_blob + 12 / 11 * var
        saved = model.to_net().layer("bn").blobs
        for value, reference in zip(saved, (mean_blob, var_blob, factor)):
            np.testing.assert_allclose(value, reference, rtol=1e-6)
    # The TEST phase normalises with the stored statistics, as the numpy runtime does.
    model.set_phase("TEST")
    test_net = Net(model.to_net().layers, phase="TEST")
    x = normal(3, 2, 2, 2)
    np.testing.assert_allclose(model({"x": x})["y"].detach().numpy(),
                               NumpyRuntime(test_net).forward({"x": x})["y"], atol=2e-6)


def test_batchnorm_use_global_stats_field_wins_in_both_phases():
    start = [np.float32([1.0, -2.0]), np.float32([4.0, 6.0]), np.float32([2.0])]
    text = BN.replace("eps: 0.01", "eps: 0.01 use_global_stats: true")
    model = TorchNet(make_net(text, {"bn": start}, phase="TRAIN"))
    x = normal(3, 2, 2, 2)
    expected = (x - np.float32([0.5, -1]).reshape(1, 2, 1, 1)) / np.sqrt(
        np.float32([2, 3]).reshape(1, 2, 1, 1) + 0.01)
    np.testing.assert_allclose(model({"x": x})["y"].detach().numpy(), expected, atol=2e-6)
    np.testing.assert_array_equal(model.to_net().layer("bn").blobs[2], [2.0])   # no update
    with pytest.raises(NetError, match="lr_mult 1"):
        TorchNet(make_net(BN.replace('top: "y"', 'top: "y" param { lr_mult: 1 }'),
                          {"bn": start}))


def test_propagate_down_false_stops_the_gradient_to_that_bottom():
    text = input_layer({"x": (2, 3)}) + (
        'layer { name: "scale" type: "Scale" bottom: "x" top: "s" }\n'
        'layer { name: "sum" type: "Eltwise" bottom: "s" bottom: "x" top: "y" '
        'propagate_down: true propagate_down: false }\n')
    scale = np.float32([2.0, -1.0, 0.5])
    model = TorchNet(make_net(text, {"scale": [scale]}))
    x = torch.tensor(normal(2, 3), requires_grad=True)
    model({"x": x})["y"].sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), np.broadcast_to(scale, (2, 3)))  # not + 1
    assert model.layer_module("scale").blobs[0].grad is not None


def test_loss_weights_scale_the_total_loss_and_its_gradients():
    """Caffe: a loss layer weighs its top 0 by 1 unless told; other tops and other layers 0
    unless told; the total is the sum of weight * sum(top)."""
    text = input_layer({"a": (3, 4), "b": (3, 4), "lab": (3,)}) + (
        'layer { name: "ip" type: "InnerProduct" bottom: "a" top: "h" loss_weight: 0.5 '
        'inner_product_param { num_output: 4 } }\n'
        'layer { name: "euclid" type: "EuclideanLoss" bottom: "h" bottom: "b" top: "l2" '
        'loss_weight: 3 }\n'
        'layer { name: "silent" type: "EuclideanLoss" bottom: "a" bottom: "b" top: "off" '
        'loss_weight: 0 }\n'
        'layer { name: "soft" type: "SoftmaxWithLoss" bottom: "h" bottom: "lab" top: "ce" '
        'top: "prob" }\n')
    net = make_net(text, {"ip": [normal(4, 4), normal(4)]})
    inputs = {"a": normal(3, 4), "b": normal(3, 4), "lab": np.float32([0, 3, 1])}
    model = TorchNet(net)
    assert model.output_blobs() == [("l2", 3.0), ("off", 0.0), ("ce", 1.0), ("prob", 0.0)]
    blobs = model(inputs)
    expected = (0.5 * blobs["h"].sum() + 3 * blobs["l2"] + blobs["ce"]).item()
    assert model.losses(blobs).item() == pytest.approx(expected, rel=1e-6)
    weights = {"h": 0.5, "l2": 3.0, "ce": 1.0}
    grads = torch_gradients(net, inputs, weights, wrt_inputs=["a", "b"], loss=True)
    check_gradients(net, inputs, weights, wrt_inputs=["a", "b"], wrt_blobs=[("ip", 0), ("ip", 1)],
                    torch_grads=grads, samples=10)


def test_share_from_gives_the_test_net_the_train_nets_parameters_and_statistics():
    text = input_layer({"x": (4, 3, 3, 3)}) + (
        'layer { name: "conv" type: "Convolution" bottom: "x" top: "c" convolution_param { '
        'num_output: 2 kernel_size: 3 weight_filler { type: "msra" } } }\n'
        'layer { name: "bn" type: "BatchNorm" bottom: "c" top: "c" }\n'
        'layer { name: "drop" type: "Dropout" bottom: "c" top: "c" include { phase: TRAIN } }\n')
    train = TorchNet(Net.from_proto(make_net(text).to_proto(), phase="TRAIN"), seed=1)
    test = TorchNet(make_net(text), seed=2, share_from=train)
    assert test.layer_module("conv").blobs[0] is train.layer_module("conv").blobs[0]
    assert test.layer_module("bn").blobs[2] is train.layer_module("bn").blobs[2]
    train({"x": normal(4, 3, 3, 3)})["c"].sum().backward()
    with torch.no_grad():                      # a solver step on the TRAIN net
        for p in train.learnable_params():
            if p.tensor.grad is not None:
                p.tensor.sub_(0.1 * p.tensor.grad)
    x = normal(4, 3, 3, 3)
    snapshot = Net(train.to_net().layers[:3], phase="TEST")     # without Dropout
    np.testing.assert_allclose(test({"x": x})["c"].detach().numpy(),
                               NumpyRuntime(snapshot).forward({"x": x})["c"], atol=2e-6)


def test_set_phase_switches_dropout_and_batchnorm():
    text = input_layer({"x": (6, 2)}) + (
        'layer { name: "bn" type: "BatchNorm" bottom: "x" top: "n" }\n'
        'layer { name: "drop" type: "Dropout" bottom: "n" top: "y" }\n')
    blobs = {"bn": [np.float32([1, 2]), np.float32([2, 8]), np.float32([1])]}
    model = TorchNet(make_net(text, blobs, phase="TRAIN")).set_phase("TEST")
    x = normal(6, 2)
    assert not model.training               # stored statistics, no dropout, no update
    np.testing.assert_allclose(model({"x": x})["y"].detach().numpy(),
                               (x - [1, 2]) / np.sqrt(np.float32([2, 8]) + 1e-5), rtol=1e-6)
    model.set_phase("TRAIN")
    y = model({"x": x})["y"].detach().numpy()
    normalised = (x - x.mean(axis=0)) / np.sqrt(x.var(axis=0) + 1e-5)
    assert model.training and np.any(y == 0)
    np.testing.assert_allclose(y[y != 0], (normalised * 2)[y != 0], rtol=1e-5)
    np.testing.assert_allclose(model.to_net().layer("bn").blobs[2], [0.999 + 1])
    with pytest.raises(ValueError):
        model.set_phase("DEPLOY")


def test_to_net_round_trips_through_a_caffemodel(tmp_path):
    net = make_net(input_layer({"x": (2, 3, 5, 5)}) + (
        'layer { name: "conv" type: "Convolution" bottom: "x" top: "y" convolution_param { '
        'num_output: 4 kernel_size: 3 weight_filler { type: "xavier" } } }\n'
        'layer { name: "prelu" type: "PReLU" bottom: "y" top: "y" }\n'))
    model = TorchNet(net, seed=4)
    model.to_net().save(tmp_path / "m.prototxt", tmp_path / "m.caffemodel")
    loaded = Net.load(tmp_path / "m.prototxt", tmp_path / "m.caffemodel")
    x = normal(2, 3, 5, 5)
    np.testing.assert_allclose(NumpyRuntime(loaded).forward({"x": x})["y"],
                               model({"x": x})["y"].detach().numpy(), atol=2e-6)


def test_inputs_are_checked():
    model = TorchNet(make_net(BN, {"bn": [np.zeros(2), np.ones(2), np.ones(1)]}))
    with pytest.raises(NetError, match="not input blobs"):
        model({"x": normal(3, 2, 2, 2), "other": normal(1)})
    with pytest.raises(NetError, match="no input given for blob 'x'"):
        model({})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_forward_equals_the_cpu_one():
    net, _ = _shared_net("", "")
    x = normal(4, 6)
    cpu = TorchNet(net)({"x": x})["ya"]
    gpu = TorchNet(net, device="cuda")({"x": x})["ya"]
    assert gpu.device.type == "cuda"
    np.testing.assert_allclose(gpu.cpu().detach().numpy(), cpu.detach().numpy(), atol=1e-5)


def test_fillers_need_shapes_when_the_data_source_is_absent(tmp_path):
    text = (f'layer {{ name: "data" type: "Data" top: "data" top: "label" data_param {{ '
            f'source: "{tmp_path / "missing_lmdb"}" batch_size: 4 backend: LMDB }} }}\n'
            'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "y" '
            'inner_product_param { num_output: 2 } }\n')
    net = make_net(text, phase="TRAIN")
    with pytest.raises(NetError, match="fillers cannot run"):
        TorchNet(net)
    blobs = [np.eye(2, 6, dtype=np.float32), np.zeros(2)]
    model = TorchNet(net.with_layers([l.replace(blobs=blobs) if l.name == "ip" else l
                                      for l in net.layers]))    # blobs given: no shapes needed
    x = normal(4, 6)
    np.testing.assert_allclose(model({"data": x})["y"].detach().numpy(), x[:, :2], atol=1e-7)
