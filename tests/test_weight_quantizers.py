"""The literature's post-training quantizers: each rule on hand-computed values, the written
caffemodel run by OpenCV (any runtime runs it), per-layer choices, and activation quantizers
calibrated on the example's data, identical on both backends."""
import pathlib

import numpy as np
import pytest

from ristretto_py import Net
from ristretto_py.cli import quantize_weights as cli
from ristretto_py.evaluators.classification import evaluate_classification, fetch_batches
from ristretto_py.passes.weight_quantizers import Quantizer
from ristretto_py.runtime import NumpyRuntime, OnnxRuntime
from conftest import close_to, opencv_forward

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODEL = ROOT / "examples" / "lenet_fashion" / "lenet_train_test.prototxt"
WEIGHTS = ROOT / "examples" / "lenet_fashion" / "lenet_fashion.caffemodel"


# gaussian:1:1 on [-1, 1, -1, 1, 0.2]: mean 0.2 / 5 = 0.04, variance (4 + 0.04) / 5 - 0.04^2 =
# 0.8064, std 0.897997772825746; one bit keeps the interval's two ends, -0.857997772825746 and
# 0.937997772825746 (0.2 is nearer the upper end). gaussian:2:2 on [-1, 3, -1, 3]: mean 1, std 2,
# interval [-3, 5], four levels 8/3 apart: -3, -1/3, 7/3, 5; -1 and 3 take the two inner ones.
# With C = 0.5 the interval is [0, 2] and both values are clipped to its ends.
@pytest.mark.parametrize("method, values, expected", [
    ("linear:2", [0, 1, 2, 3, 0.4, 2.6], [0, 1, 2, 3, 0, 3]),
    ("gaussian:1:1", [-1, 1, -1, 1, 0.2],
     [-0.857997772825746, 0.937997772825746, -0.857997772825746, 0.937997772825746, 0.937997772825746]),
    ("gaussian:2:2", [-1, 3, -1, 3], [-1 / 3, 7 / 3, -1 / 3, 7 / 3]),
    ("gaussian:2:0.5", [-1, 3, -1, 3], [0, 2, 0, 2]),
    ("binary", [-0.5, 0, 0.25], [-1, 1, 1]),
    ("scaled_binary", [-0.5, 0, 0.25, 1.25], [-0.5, 0.5, 0.5, 0.5]),
    ("ternary", [-1, -0.1, 0.05, 0.8, 2], [-19 / 15, 0, 0, 19 / 15, 19 / 15]),
    # |x| max 5 -> msb 3: clip to [-8, 8 - 1], step 2^4 / 16 = 1, floor
    ("hwce:4:100", [0.3, -0.7, 1.2, -5], [0, -1, 1, -5]),
])
def test_rules_by_hand(method, values, expected):
    q = Quantizer.parse(method)
    values = np.array(values, np.float32)
    out = q.apply(values, q.calibrate(values))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-7)


def _deploy(tmp_path):
    """The example without data and scoring layers, for OpenCV: an Input layer of 5 images."""
    text = MODEL.read_text().split('layer { name: "conv1"')[1].split('layer { name: "accuracy"')[0]
    deploy = tmp_path / "deploy.prototxt"
    deploy.write_text('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 5 dim: 1 '
                      'dim: 28 dim: 28 } } }\nlayer { name: "conv1"' + text)
    return deploy


def _nearest_level(weights, levels):
    """Each weight replaced by the nearest of ``levels`` (float64)."""
    w = weights.astype(np.float64).ravel()
    return levels[np.argmin(np.abs(w[:, None] - levels[None, :]), axis=1)].reshape(weights.shape)


def test_written_caffemodel_runs_in_opencv_with_per_layer_choices(tmp_path, capsys):
    out = tmp_path / "q.caffemodel"
    assert cli.main(["--model", str(MODEL), "--weights", str(WEIGHTS), "--method", "linear:4",
                     "--layer", "ip1=ternary", "--layer", "conv1=hwce:6:99.9", "--out-weights", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "ternary" in printed and "hwce:6:99.9" in printed
    original, net = Net.load(MODEL, WEIGHTS), Net.load(MODEL, out)
    before = {l.name: l.blobs[0] for l in original.layers if l.blobs}
    after = {l.name: l.blobs[0] for l in net.layers if l.blobs}
    for a, b in zip(original.layers, net.layers):         # biases stay float32, untouched
        if a.blobs:
            np.testing.assert_array_equal(a.blobs[1], b.blobs[1])
    # conv1, hwce:6:99.9: the 99.9th percentile of |w| is 0.578 (max 0.598), in [2^-1, 2^0), so
    # the MSB exponent is 0: range [-1, 1), step 2^1 / 2^6 = 1/32, floor. No weight reaches the
    # clip, so every weight is floor(32 w) / 32.
    assert 0.5 < np.percentile(np.abs(before["conv1"]), 99.9) < np.abs(before["conv1"]).max() < 1
    np.testing.assert_array_equal(after["conv1"], np.floor(before["conv1"] * 32.0) / 32.0)
    assert len(np.unique(after["conv1"])) >= 30
    # conv2 and ip2, linear:4 (the default): 16 levels from min to max, each weight the nearest
    for name in ("conv2", "ip2"):
        low, high = float(before[name].min()), float(before[name].max())
        levels = low + np.arange(16) * ((high - low) / 15)
        np.testing.assert_array_equal(after[name], _nearest_level(before[name], levels).astype(np.float32))
        used = set(np.unique(after[name]))
        assert used <= set(levels.astype(np.float32)) and len(used) >= 12
        assert {np.float32(low), np.float32(high)} <= used
    # ip1, ternary (TWN): threshold 0.7 mean|w|; +-a, a = mean of |w| above it; 0 between
    magnitude = np.abs(before["ip1"].astype(np.float64))
    threshold = 0.7 * magnitude.sum() / magnitude.size
    a = np.float32(magnitude[magnitude > threshold].sum() / np.count_nonzero(magnitude > threshold))
    expected = np.sign(before["ip1"]) * np.where(magnitude > threshold, a, np.float32(0))
    np.testing.assert_array_equal(after["ip1"], expected)
    assert set(np.unique(after["ip1"])) == {-a, 0, a} and 0 < a < 0.23
    # OpenCV runs the written file and gives our runtime's values layer by layer (float
    # convolutions in another order: equal to a relative 1e-5)
    deploy = _deploy(tmp_path)
    x = np.random.default_rng(1).random((5, 1, 28, 28)).astype(np.float32)
    ours = NumpyRuntime(Net.load(deploy, out)).forward({"data": x})
    blobs = {"conv1": "conv1", "pool1": "pool1", "conv2": "conv2", "pool2": "pool2", "relu1": "ip1", "ip2": "ip2"}
    theirs = opencv_forward(deploy, out, x, list(blobs))
    for (layer, blob), reference in zip(blobs.items(), theirs):
        assert np.abs(reference).max() > 0.1, layer
        assert close_to(ours[blob], reference, 1e-5), layer
    assert len(set(ours["ip2"].argmax(axis=1))) > 1


def test_activation_quantizers_on_both_backends(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    out_w, out_m = tmp_path / "q.caffemodel", tmp_path / "q.prototxt"
    assert cli.main(["--model", str(MODEL), "--weights", str(WEIGHTS), "--method", "linear:8",
                     "--activations", "linear:8", "--calibration-iterations", "2",
                     "--out-weights", str(out_w), "--out-model", str(out_m)]) == 0
    net = Net.load(out_m, out_w)
    quantizers = [l for l in net.layers if l.type == "ActivationQuantize"]
    assert [l.name for l in quantizers] == ["conv1_quantize", "conv2_quantize", "ip1_quantize", "ip2_quantize"]
    batch = fetch_batches(net, 1)[0]
    ours = NumpyRuntime(net).forward(batch)
    p = quantizers[0].spec.activation_quantization_param
    step = (np.float32(p.high) - np.float32(p.low)) / np.float32(255)
    levels = (ours["conv1"] - np.float32(p.low)) / step
    assert np.allclose(levels, np.round(levels), atol=1e-3) and ours["conv1"].min() >= p.low
    onnx = OnnxRuntime(net).forward(batch)
    assert close_to(onnx["ip2"], ours["ip2"], 1e-5)
    score = evaluate_classification(net, 2).score()
    assert 0.8 < score <= 1.0


@pytest.mark.parametrize("args, message", [
    (["--method", "linear:0"], "linear:N"),
    (["--layer", "nope=binary"], "no layer named nope"),
    (["--method", "binary", "--activations", "binary", "--out-model", "x.prototxt"], "weights only"),
    ([], "give --method"),
])
def test_bad_arguments(tmp_path, capsys, args, message, monkeypatch):
    monkeypatch.chdir(ROOT)
    code = cli.main(["--model", str(MODEL), "--weights", str(WEIGHTS),
                     "--out-weights", str(tmp_path / "o.caffemodel")] + args)
    err = capsys.readouterr().err
    assert code == 2 and message in err
