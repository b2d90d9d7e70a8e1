"""QDQ models converted into a float Caffe net plus a quantized Ristretto description
(tools/convert_onnx --model_quantized): our own QDQ export reads back as the net it was written
from, value for value; onnxruntime's quantizer's per-channel model gives per-channel weight
lengths and its ReLU back; the refusals. (int8 TFLite files: tests/test_convert_tf.py.)"""
import json
import pathlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from ristretto_py import Net
from ristretto_py.cli import convert_onnx, export_onnx, quantize
from ristretto_py.evaluators.classification import fetch_batches
from ristretto_py.runtime import FixedRuntime, make_runtime

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "lenet_fashion"


def _convert(tmp_path, onnx_path, *extra):
    files = [tmp_path / "f.prototxt", tmp_path / "f.caffemodel", tmp_path / "q.prototxt"]
    code = convert_onnx.main(["--input", str(onnx_path), "--out_model", str(files[0]), "--out_weights",
                              str(files[1]), "--model_quantized", str(files[2]), *extra])
    assert code == 0
    return files


def test_our_qdq_export_reads_back_as_the_same_quantized_net(tmp_path, monkeypatch, capsys):
    """quantize (--all_layers) -> export_onnx --quantized qdq -> convert_onnx --model_quantized:
    every format exact, and the read-back description computes the original's values, in the
    float emulation and in the integer backend."""
    monkeypatch.chdir(ROOT)
    model = tmp_path / "lenet_q.prototxt"
    weights = EXAMPLE / "lenet_fashion.caffemodel"
    assert quantize.main(["--model", str(EXAMPLE / "lenet_train_test.prototxt"), "--weights", str(weights),
                          "--model_quantized", str(model), "--trimming_mode", "dynamic_fixed_point",
                          "--widths", "conv=8,fc=6,act=8", "--all_layers", "--iterations", "1",
                          "--quiet"]) == 0
    assert export_onnx.main(["--model", str(model), "--weights", str(weights), "--output",
                             str(tmp_path / "q.onnx"), "--quantized", "qdq"]) == 0
    capsys.readouterr()
    float_model, float_weights, quantized = _convert(tmp_path, tmp_path / "q.onnx", "--report",
                                                     str(tmp_path / "report"))
    out = capsys.readouterr().out
    assert "nearest)" not in out and ", 0 nearest" in out
    back = Net.load(quantized, float_weights)
    assert [layer.type for layer in back.layers if "Ristretto" in layer.type] == \
        ["ConvolutionRistretto"] * 2 + ["FcRistretto"] * 2
    fc = next(layer for layer in back.layers if layer.type == "FcRistretto").spec.quantization_param
    assert fc.bw_params == 6 and fc.bias_format == fc.ACCUMULATOR       # int32 QDQ bias
    original = Net.load(model, weights)
    batch = fetch_batches(original, 1, seed=0)[0]
    feeds = {"data": batch["data"]}
    expected = make_runtime(original, "numpy").forward(batch)["ip2"]
    assert np.count_nonzero(make_runtime(back, "numpy").forward(feeds)["ip2"] != expected) == 0
    assert np.count_nonzero(FixedRuntime(back).forward(feeds)["ip2"] != FixedRuntime(original).forward(batch)["ip2"]) == 0
    report = json.loads((tmp_path / "report" / "formats.json").read_text())
    assert all(row["exact"] for row in report["tensors"])
    assert {row["role"] for row in report["tensors"]} >= {"input", "output", "weights", "bias"}
    assert "| step / scale |" in (tmp_path / "report" / "formats.md").read_text()


def _float_model():
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
         helper.make_node("Relu", ["c"], ["r"], name="relu"),
         helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
         helper.make_node("Flatten", ["g"], ["f"], name="flat"),
         helper.make_node("Gemm", ["f", "v", "u"], ["y"], transB=1, name="fc")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
        [numpy_helper.from_array(rng.normal(0, 0.3, (6, 3, 3, 3)).astype(np.float32), "w"),
         numpy_helper.from_array(rng.normal(0, 0.1, 6).astype(np.float32), "b"),
         numpy_helper.from_array(rng.normal(0, 0.3, (5, 6)).astype(np.float32), "v"),
         numpy_helper.from_array(rng.normal(0, 0.1, 5).astype(np.float32), "u")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_onnxruntime_quantizer_model_gives_nearest_formats_and_scores_like_it(tmp_path, capsys):
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)
    images = np.random.default_rng(4).uniform(0, 1, (32, 1, 3, 12, 12)).astype(np.float32)
    onnx.save(_float_model(), tmp_path / "f.onnx")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter({"x": image} for image in images[:16])

        def get_next(self):
            return next(self.batches, None)
    quantize_static(str(tmp_path / "f.onnx"), str(tmp_path / "q.onnx"), Reader(),
                    quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8)
    _, float_weights, quantized = _convert(tmp_path, tmp_path / "q.onnx")
    out = capsys.readouterr().out
    assert "quantized description: 3 layers with formats" in out and "nearest: step" in out
    back = Net.load(quantized, float_weights)
    conv = back.layer("conv").spec.quantization_param
    assert back.layer("conv").type == "ConvolutionRistretto" and conv.bw_params == 8
    assert len(conv.fl_params_channel) in (0, 6)            # per channel where the lengths differ
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(str(tmp_path / "q.onnx"), options, providers=["CPUExecutionProvider"])
    theirs = np.concatenate([session.run(None, {"x": image})[0] for image in images])
    runtime = make_runtime(back, "numpy")
    ours = np.concatenate([runtime.forward({"x": image})[back.output_blobs[0]] for image in images])
    # The nearest formats are up to 2x coarser than the QDQ scales: the same class on most
    # inputs, and values within a few of the coarser output steps.
    assert np.mean(ours.argmax(1) == theirs.argmax(1)) >= 0.8
    step = 2.0 ** -back.layer("fc").spec.quantization_param.fl_layer_out
    assert np.abs(ours - theirs).max() <= 4 * step


def test_a_float_model_has_no_quantized_description(tmp_path, capsys):
    onnx.save(_float_model(), tmp_path / "f.onnx")
    code = convert_onnx.main(["--input", str(tmp_path / "f.onnx"), "--out_model", str(tmp_path / "a.prototxt"),
                              "--out_weights", str(tmp_path / "a.caffemodel"), "--model_quantized",
                              str(tmp_path / "q.prototxt")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "f.onnx" in err and "no QuantizeLinear/DequantizeLinear pairs" in err
    assert not any(tmp_path.glob("*.prototxt"))


@pytest.mark.parametrize("argv, message", [
    (["--report", "R"], "--report goes with --model_quantized"),
])
def test_flag_pairs(tmp_path, capsys, argv, message):
    onnx.save(_float_model(), tmp_path / "f.onnx")
    code = convert_onnx.main(["--input", str(tmp_path / "f.onnx"), "--out_model", str(tmp_path / "a.prototxt"),
                              "--out_weights", str(tmp_path / "a.caffemodel")] + argv)
    assert code == 2 and message in capsys.readouterr().err


def test_every_formatted_layer_type_reads_back_value_for_value(tmp_path):
    """The all-types net (BatchNorm, Scale and ReLU in place, each with its own format; AVE and
    MAX pooling, PReLU, Eltwise, leaky ReLU, Concat, Bias) through our QDQ export and back:
    requantizations of an in-place chain come back as 1x1 max poolings carrying the format."""
    import sys
    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    from test_layer_formats import all_types_input, all_types_net
    from ristretto_py.runtime.quantized_export import export_quantized
    net = all_types_net()
    onnx.save(export_quantized(net, "qdq").model, tmp_path / "all.onnx")
    _, float_weights, quantized = _convert(tmp_path, tmp_path / "all.onnx")
    back = Net.load(quantized, float_weights)
    assert any(layer.type == "Pooling" and layer.name.endswith(tuple("0123456789")) and
               "requantized" in layer.name for layer in back.layers)
    x = all_types_input()
    ours, theirs = make_runtime(back, "numpy").forward(x), make_runtime(net, "numpy").forward(x)
    fixed_ours, fixed_theirs = FixedRuntime(back).forward(x), FixedRuntime(net).forward(x)
    for mine, original in (("pool@float", "pool"), ("sum@float", "sum"), ("cat@float", "cat"),
                           ("fc@float", "fc"), ("prob", "prob")):
        assert np.count_nonzero(ours[mine] != theirs[original]) == 0, mine
        assert np.count_nonzero(fixed_ours[mine] != fixed_theirs[original]) == 0, mine
