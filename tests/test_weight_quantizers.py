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


@pytest.mark.parametrize("method, values, expected", [
    ("linear:2", [0, 1, 2, 3, 0.4, 2.6], [0, 1, 2, 3, 0, 3]),
    ("gaussian:1:1", [-1, 1, -1, 1, 0.2], None),
    ("binary", [-0.5, 0, 0.25], [-1, 1, 1]),
    ("scaled_binary", [-0.5, 0, 0.25, 1.25], [-0.5, 0.5, 0.5, 0.5]),
    ("ternary", [-1, -0.1, 0.05, 0.8, 2], [-19 / 15, 0, 0, 19 / 15, 19 / 15]),
    ("hwce:4:100", [0.3, -0.7, 1.2, -5], None),
])
def test_rules_by_hand(method, values, expected):
    q = Quantizer.parse(method)
    values = np.array(values, np.float32)
    out = q.apply(values, q.calibrate(values))
    if method.startswith("gaussian"):
        # mean 0.04, std 0.8919...: interval [-0.852, 0.932], one bit: the two ends
        mean, std = values.mean(dtype=np.float64), values.std(dtype=np.float64)
        expected = np.where(values > (2 * mean) / 2, mean + std, mean - std)
    if method.startswith("hwce"):
        # |x| max 5 -> msb 3: clip to [-8, 8 - 1], step 2^4 / 16 = 1, floor
        expected = [0, -1, 1, -5]
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_written_caffemodel_runs_in_opencv_with_per_layer_choices(tmp_path, capsys):
    out = tmp_path / "q.caffemodel"
    assert cli.main(["--model", str(MODEL), "--weights", str(WEIGHTS), "--method", "linear:4",
                     "--layer", "ip1=ternary", "--layer", "conv1=hwce:6:99.9", "--out-weights", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "ternary" in printed and "hwce:6:99.9" in printed
    net = Net.load(MODEL, out)
    assert len(np.unique(net.layer("ip1").blobs[0])) <= 3
    assert len(np.unique(net.layer("conv2").blobs[0])) <= 16
    # a deploy version for OpenCV: Input instead of Data, no scoring layers
    deploy = tmp_path / "deploy.prototxt"
    text = MODEL.read_text().split('layer { name: "conv1"')[1].split('layer { name: "accuracy"')[0]
    deploy.write_text('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 5 dim: 1 '
                      'dim: 28 dim: 28 } } }\nlayer { name: "conv1"' + text)
    x = np.random.default_rng(1).random((5, 1, 28, 28)).astype(np.float32)
    ours = NumpyRuntime(Net.load(deploy, out)).forward({"data": x})["ip2"]
    assert close_to(ours, opencv_forward(deploy, out, x, "ip2"), 1e-5)


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
