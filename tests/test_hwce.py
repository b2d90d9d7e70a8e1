"""PULP HWCE mode: quantclip by hand, the ConvolutionHWCE layer against OpenCV's convolution of
the clipped operands and onnxruntime, and the hwce search on the example (MSBs from a percentile,
the stopping rule, the written hwce_param)."""
import math
import pathlib

import numpy as np
import pytest

from ristretto_py import Net, caffe_io, numerics
from ristretto_py.cli import quantize as quantize_cli
from ristretto_py.errors import NetError
from ristretto_py.runtime import NumpyRuntime, OnnxRuntime
from conftest import close_to, net_param, opencv_forward, write_model

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODEL = ROOT / "examples" / "lenet_fashion" / "lenet_train_test.prototxt"
WEIGHTS = ROOT / "examples" / "lenet_fashion" / "lenet_fashion.caffemodel"


def test_quantclip_by_hand():
    # msb 1, 4 bits: step 2^2 / 16 = 0.25, range [-2, 1.75], floor
    x = np.array([0.3, -0.3, 1.9, -2.5, 1.75, -0.01], np.float32)
    np.testing.assert_array_equal(numerics.quantclip(x, 1, 4), [0.25, -0.5, 1.75, -2.0, 1.75, -0.25])


def test_convolution_hwce_layer(tmp_path):
    rng = np.random.default_rng(2)
    weight, bias = rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.4, rng.standard_normal(4).astype(np.float32)
    text = ('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }\n'
            'layer { name: "conv" type: "ConvolutionHWCE" bottom: "data" top: "conv" '
            'convolution_param { num_output: 4 kernel_size: 3 pad: 1 } hwce_param { kernel_bits: 6 '
            'input_bits: 8 output_bits: 8 kernel_msb: 0 input_msb: 1 output_msb: 3 } }')
    model, weights = write_model(tmp_path, text, {"conv": [weight, bias]})
    net = Net.load(model, weights)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    ours = NumpyRuntime(net).forward({"data": x})["conv"]
    reference_text = text.replace("ConvolutionHWCE", "Convolution").split(" hwce_param")[0] + " }"
    ref_model, ref_weights = write_model(tmp_path, reference_text, {"conv": [numerics.quantclip(weight, 0, 6), bias]},
                                         stem="reference")
    float_out = opencv_forward(ref_model, ref_weights, numerics.quantclip(x, 1, 8), "conv")
    expected = numerics.quantclip(float_out, 3, 8)
    assert np.mean(ours != expected) < 0.01 and close_to(ours, expected, 0.05)
    np.testing.assert_array_equal(OnnxRuntime(net).forward({"data": x})["conv"], ours)
    with pytest.raises(NetError, match="one of"):
        Net.from_proto(net_param(text.replace("kernel_bits: 6", "kernel_bits: 5")))


def test_hwce_search_on_the_example(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "h.prototxt"
    assert quantize_cli.main(["--model", str(MODEL), "--weights", str(WEIGHTS), "--model_quantized", str(out),
                              "--trimming_mode", "hwce", "--percentile", "98", "--error_margin", "1",
                              "--iterations", "4", "--quiet", "--report", str(tmp_path / "r")]) == 0
    import json
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    for stage in ("kernels", "activations"):
        cands = [c for c in report["candidates"] if c["stage"] == stage]
        assert [c["bit_width"] for c in cands] == [16, 8, 6, 4][:len(cands)]
        passed = [c["bit_width"] for c in cands if c["passed"]]
        assert all(c["passed"] for c in cands[:-1])
        assert report["chosen"][stage] == (min(passed) if passed else 16)
    layers = {l.name: l for l in caffe_io.read_net_text(out).layer}
    conv1 = layers["conv1"]
    assert conv1.type == "ConvolutionHWCE" and layers["ip1"].type == "InnerProduct"
    w = Net.load(MODEL, WEIGHTS).layer("conv1").blobs[0]
    assert conv1.hwce_param.kernel_msb == math.ceil(math.log2(np.percentile(np.abs(w.astype(np.float64)), 98)))
    assert conv1.hwce_param.kernel_bits == report["chosen"]["kernels"]
    assert conv1.hwce_param.input_bits == conv1.hwce_param.output_bits == report["chosen"]["activations"]
    assert report["cost"]["totals"]["macs"] > 0
