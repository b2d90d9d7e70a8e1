"""Loss and scoring layers in torch: SoftmaxWithLoss (ignore_label, every normalization),
EuclideanLoss, SigmoidCrossEntropyLoss, Accuracy and ArgMax. Forwards against the numpy
runtime, gradients against central differences of the numpy runtime's loss and against Caffe's
closed forms computed by hand."""
import numpy as np
import pytest
import torch

from ristretto_py.errors import NetError
from ristretto_py.train.model import TorchNet
from train_reference import assert_forward_matches, check_gradients, input_layer, make_net

RNG = np.random.default_rng(11)
NORMALIZATIONS = ["VALID", "BATCH_SIZE", "FULL", "NONE"]


def _softmax_net(loss_param, tops=("loss",), shape=(3, 4, 2, 3)):
    label_shape = (shape[0], 1) + shape[2:]
    tops_text = " ".join(f'top: "{t}"' for t in tops)
    text = input_layer({"x": shape, "label": label_shape}) + (
        f'layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" {tops_text} '
        f'loss_param {{ {loss_param} }} }}')
    x = RNG.standard_normal(shape).astype(np.float32)
    label = RNG.integers(0, shape[1], label_shape).astype(np.float32)
    label.reshape(-1)[::4] = 255          # every fourth position ignored
    return make_net(text), {"x": x, "label": label}


@pytest.mark.parametrize("mode", NORMALIZATIONS + ["normalize: false", "normalize: true"])
def test_softmax_with_loss_forward_and_gradient(mode):
    param = mode if mode.startswith("normalize") else f"normalization: {mode}"
    net, inputs = _softmax_net("ignore_label: 255 " + param)
    assert_forward_matches(net, inputs)
    check_gradients(net, inputs, {"loss": 1.0}, wrt_inputs=["x"], samples=16)


@pytest.mark.parametrize("mode", NORMALIZATIONS)
def test_softmax_with_loss_gradient_is_caffes_closed_form(mode):
    net, inputs = _softmax_net(f"ignore_label: 255 normalization: {mode}")
    x, label = inputs["x"].astype(np.float64), inputs["label"].astype(np.int64)[:, 0]
    prob = np.exp(x - x.max(axis=1, keepdims=True))
    prob /= prob.sum(axis=1, keepdims=True)
    valid = label != 255
    onehot = np.zeros_like(prob)
    n, h, w = np.nonzero(valid)
    onehot[n, label[valid], h, w] = 1
    expected = (prob - onehot) * valid[:, None]
    normalizer = {"VALID": valid.sum(), "BATCH_SIZE": 3, "FULL": 3 * 2 * 3, "NONE": 1}[mode]
    tensor = torch.tensor(x, requires_grad=True)
    model = TorchNet(net, dtype=torch.float64)
    blobs = model({"x": tensor, "label": inputs["label"]})
    model.losses(blobs).backward()
    np.testing.assert_allclose(tensor.grad.numpy(), expected / normalizer, atol=1e-12)
    expected_loss = -np.log(prob[n, label[valid], h, w]).sum() / normalizer
    assert float(blobs["loss"].detach()) == pytest.approx(expected_loss, rel=1e-12)


def test_softmax_with_loss_clamps_the_loss_but_not_the_gradient():
    """Caffe: loss -log(max(p, FLT_MIN)); gradient p - 1 whatever p is."""
    text = input_layer({"x": (2, 3), "label": (2,)}) + (
        'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "loss" }')
    x = np.float32([[0, 200, 0], [1, 2, 3]])
    label = np.float32([0, 2])
    net = make_net(text)
    tensor = torch.tensor(x, requires_grad=True)
    model = TorchNet(net)
    blobs = model({"x": tensor, "label": label})
    model.losses(blobs).backward()
    flt_min = np.finfo(np.float32).tiny
    second = np.log(np.exp([1.0, 2, 3]).sum()) - 3
    assert float(blobs["loss"].detach()) == pytest.approx((-np.log(flt_min) + second) / 2, rel=1e-6)
    grad = tensor.grad.numpy()
    np.testing.assert_allclose(grad[0], np.float32([-1, 1, 0]) / 2, atol=1e-7)
    assert_forward_matches(net, {"x": x, "label": label})


def test_softmax_with_loss_second_top_is_the_probability_and_passes_no_gradient():
    net, inputs = _softmax_net("ignore_label: 255", tops=("loss", "prob"))
    blobs = assert_forward_matches(net, inputs)
    assert blobs["prob"].shape == inputs["x"].shape
    model = TorchNet(net)
    assert model.output_blobs() == [("loss", 1.0), ("prob", 0.0)]
    tensor = torch.tensor(inputs["x"], requires_grad=True)
    out = model({"x": tensor, "label": inputs["label"]})
    assert not out["prob"].requires_grad       # Caffe's backward reads only the loss's diff


def test_labels_outside_the_classes_are_refused():
    net, inputs = _softmax_net("ignore_label: 255")
    inputs["label"].reshape(-1)[1] = 4
    with pytest.raises(NetError, match="label 4 is outside"):
        TorchNet(net)(inputs)


def _pair_net(kind, loss_param="", shape=(3, 2, 4)):
    text = input_layer({"a": shape, "b": shape}) + (
        f'layer {{ name: "loss" type: "{kind}" bottom: "a" bottom: "b" top: "loss" '
        f'loss_param {{ {loss_param} }} }}')
    return make_net(text)


def test_euclidean_loss_forward_and_gradients_to_both_bottoms():
    net = _pair_net("EuclideanLoss")
    inputs = {"a": RNG.standard_normal((3, 2, 4)).astype(np.float32),
              "b": RNG.standard_normal((3, 2, 4)).astype(np.float32)}
    blobs = assert_forward_matches(net, inputs)
    diff = inputs["a"].astype(np.float64) - inputs["b"]
    assert float(blobs["loss"].detach()) == pytest.approx((diff ** 2).sum() / 3 / 2, rel=1e-6)
    pairs = check_gradients(net, inputs, {"loss": 1.0}, wrt_inputs=["a", "b"], samples=12)
    assert len(pairs) == 24


@pytest.mark.parametrize("mode", ["", "normalization: VALID", "normalization: FULL",
                                  "normalization: NONE", "normalize: true"])
def test_sigmoid_cross_entropy_forward_gradient_and_closed_form(mode):
    net = _pair_net("SigmoidCrossEntropyLoss", f"ignore_label: -1 {mode}")
    x = (RNG.standard_normal((3, 2, 4)) * 4).astype(np.float32)
    target = RNG.integers(0, 2, (3, 2, 4)).astype(np.float32)
    target.reshape(-1)[::5] = -1
    inputs = {"a": x, "b": target}
    assert_forward_matches(net, inputs)
    check_gradients(net, inputs, {"loss": 1.0}, wrt_inputs=["a"], samples=16)
    valid = target != -1
    normalizer = {"": 3, "normalization: VALID": valid.sum(), "normalization: FULL": 24,
                  "normalization: NONE": 1, "normalize: true": valid.sum()}[mode]
    tensor = torch.tensor(x.astype(np.float64), requires_grad=True)
    model = TorchNet(net, dtype=torch.float64)
    blobs = model({"a": tensor, "b": target})
    model.losses(blobs).backward()
    sigmoid = 1 / (1 + np.exp(-x.astype(np.float64)))
    np.testing.assert_allclose(tensor.grad.numpy(), (sigmoid - target) * valid / normalizer,
                               atol=1e-12)
    t = target.astype(np.float64)
    reference = -(t * np.log(sigmoid) + (1 - t) * np.log(1 - sigmoid))[valid].sum() / normalizer
    assert float(blobs["loss"].detach()) == pytest.approx(reference, rel=1e-9)


def test_accuracy_with_ties_top_k_ignore_and_per_class():
    scores = np.float32([[1, 3, 3, 0], [2, 1, 0, 2], [0, 0, 5, 1], [4, 1, 1, 1], [1, 2, 3, 4]])
    label = np.float32([1, 0, 2, 9, 3])      # a tie with the true class counts against it
    text = input_layer({"s": (5, 4), "label": (5,)}) + (
        'layer { name: "top1" type: "Accuracy" bottom: "s" bottom: "label" top: "a1" top: "per" '
        'accuracy_param { ignore_label: 9 } }\n'
        'layer { name: "top2" type: "Accuracy" bottom: "s" bottom: "label" top: "a2" '
        'accuracy_param { top_k: 2 ignore_label: 9 } }\n')
    blobs = assert_forward_matches(make_net(text), {"s": scores, "label": label}, tolerance=0)
    assert float(blobs["a1"]) == pytest.approx(2 / 4)       # rows 2 and 4 right
    assert float(blobs["a2"]) == pytest.approx(4 / 4)
    np.testing.assert_array_equal(blobs["per"].numpy(), [0, 0, 1, 1])


def test_argmax_runs_its_numpy_forward_without_gradient():
    text = input_layer({"s": (3, 6)}) + (
        'layer { name: "arg" type: "ArgMax" bottom: "s" top: "i" argmax_param { top_k: 2 out_max_val: true } }')
    scores = RNG.standard_normal((3, 6)).astype(np.float32)
    blobs = assert_forward_matches(make_net(text), {"s": scores}, tolerance=0)
    assert not blobs["i"].requires_grad
