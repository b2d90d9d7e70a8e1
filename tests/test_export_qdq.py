"""QDQ export (tools/export_onnx --quantized qdq): onnxruntime running the file against the
fixed-point backend value for value, the integer initializers and opsets by width, which nodes
onnxruntime fuses, and the refusals."""
import pathlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper

from ristretto_py import Net, caffe_io
from ristretto_py.errors import UnsupportedError
from ristretto_py.evaluators.classification import fetch_batches
from ristretto_py.runtime import FixedRuntime
from ristretto_py.runtime.quantized_export import (describe_fusion, export_quantized,
                                                   onnxruntime_nodes)
from conftest import net_param
from test_layer_formats import FORMATS, all_types_input, all_types_net

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "lenet_fashion"


def run_file(model, inputs):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    feeds = {i.name: inputs[i.name] for i in session.get_inputs()}
    return dict(zip(names, session.run(None, feeds)))


def differing(net, inputs, activations="signed", float_blobs=("prob",)):
    """{blob: values differing between onnxruntime on the QDQ file and the fixed backend}."""
    export = export_quantized(net, "qdq", all_blobs=True, activations=activations)
    onnx.checker.check_model(export.model)
    got = run_file(export.model, inputs)
    fixed = FixedRuntime(net).forward(inputs)
    counts = {blob: int(np.count_nonzero(got[name] != fixed[blob]))
              for blob, name in export.export.outputs.items() if blob not in float_blobs}
    return counts, export


@pytest.mark.parametrize("activations", ["signed", "unsigned"])
def test_every_formatted_layer_runs_in_onnxruntime_as_in_the_fixed_backend(activations):
    counts, export = differing(all_types_net(), all_types_input(), activations)
    assert len(counts) >= 10 and sum(counts.values()) == 0, counts
    ops = {node.op_type for node in export.model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert not ops & {"Round", "Floor"}              # no float trimming chains left
    fused = onnxruntime_nodes(export_quantized(all_types_net(), "qdq", activations=activations).model)
    if activations == "unsigned":                   # every convolution on integer kernels
        assert fused["QLinearConv"] == 2, fused
        assert "QLinearConv" in describe_fusion(fused)


def _initializer(model, name_prefix):
    return [t for t in model.graph.initializer if t.name.startswith(name_prefix)]


def test_weights_are_integer_initializers_typed_by_width_and_biases_int32():
    widths = {}
    for bits, expected in ((4, TensorProto.INT4), (7, TensorProto.INT8), (12, TensorProto.INT16)):
        formats = dict(FORMATS)
        net = all_types_net(formats)
        param = net.to_proto(include_blobs=True)
        for layer in param.layer:
            if layer.type == "ConvolutionRistretto":
                layer.quantization_param.bw_params = bits
                layer.quantization_param.fl_params = bits - 1
        net = Net.from_proto(param)
        export = export_quantized(net, "qdq").model
        weights = _initializer(export, "weight")
        assert weights and weights[0].data_type == expected
        widths[bits] = export.opset_import[0].version
        # the conv's mantissas: trimmed weights times 2^fl, exactly
        stored = numpy_helper.to_array(weights[0]).astype(np.float64)
        trimmed = np.clip(np.rint(net.layers[1].blobs[0] * 2.0 ** (bits - 1)),
                          -2 ** (bits - 1), 2 ** (bits - 1) - 1)
        np.testing.assert_array_equal(stored, trimmed)
        bias = _initializer(export, "bias")[0]
        assert bias.data_type == TensorProto.INT32
        counts, _ = differing(net, all_types_input())
        assert sum(counts.values()) == 0, (bits, counts)
    assert widths == {4: 21, 7: 19, 12: 21}          # int4 and int16 need opset 21


def test_odd_activation_widths_clip_exactly():
    formats = {name: text.replace("bw_layer_in: 8", "bw_layer_in: 6").replace("bw_layer_out: 8", "bw_layer_out: 6")
               for name, text in FORMATS.items()}
    net = all_types_net(formats)
    counts, export = differing(net, all_types_input())
    assert sum(counts.values()) == 0, counts
    assert any(node.op_type == "Clip" for node in export.model.graph.node)


def test_the_example_through_the_tools_equals_the_fixed_backend(tmp_path, monkeypatch, capsys):
    from ristretto_py.cli import export_onnx, quantize
    monkeypatch.chdir(ROOT)
    model = tmp_path / "q.prototxt"
    assert quantize.main(["--model", str(EXAMPLE / "lenet_train_test.prototxt"),
                          "--weights", str(EXAMPLE / "lenet_fashion.caffemodel"),
                          "--model_quantized", str(model), "--trimming_mode", "dynamic_fixed_point",
                          "--widths", "conv=8,fc=8,act=8", "--all_layers", "--iterations", "2",
                          "--quiet"]) == 0
    text = model.read_text()
    assert text.count("quantization_param") == 7       # conv1, conv2, ip1, ip2; pool1, pool2, relu1
    capsys.readouterr()
    out = tmp_path / "q.onnx"
    assert export_onnx.main(["--model", str(model), "--weights", str(EXAMPLE / "lenet_fashion.caffemodel"),
                             "--output", str(out), "--quantized", "qdq"]) == 0
    printed = capsys.readouterr().out
    assert "QDQ ONNX opset 19" in printed and "state (initializers)" in printed
    state = int(printed.split("state (initializers): ")[1].split(" bytes")[0].replace(",", ""))
    float_state = int(printed.split("the float export's ")[1].split(" bytes")[0].replace(",", ""))
    assert state < 0.3 * float_state                   # int8 weights, int32 biases
    net = Net.load(model, EXAMPLE / "lenet_fashion.caffemodel")
    batch = fetch_batches(net, 1, seed=0)[0]
    got = run_file(onnx.load(out), batch)
    fixed = FixedRuntime(net).forward(batch)
    assert np.count_nonzero(got["ip2"] != fixed["ip2"]) == 0


REFUSALS = [
    ("compat", "no QDQ form for the CPU build's rounding"),
    ("wide", "bw_layer_in: a 32-bit format has no QDQ form"),
    ("one_bit", "a 1-bit format has no QDQ form"),
    ("minifloat", "mini-float is not a uniform integer grid"),
    ("unformatted", "this Eltwise reads integer values but has no format"),
    ("float", "no layer carries a format"),
]


def _refused_net(kind):
    formats = dict(FORMATS)
    if kind == "unformatted":
        formats["sum"] = ""
    net = all_types_net(formats)
    param = net.to_proto(include_blobs=True)
    for layer in param.layer:
        q = layer.quantization_param
        if layer.name == "conv":
            if kind == "wide":
                q.bw_layer_in = 32
            elif kind == "one_bit":
                q.bw_params = 1
            elif kind == "minifloat":
                q.precision = q.MINIFLOAT
        if kind == "float":
            layer.ClearField("quantization_param")
            layer.type = {"ConvolutionRistretto": "Convolution", "FcRistretto": "InnerProduct"}.get(layer.type, layer.type)
    return Net.from_proto(param)


@pytest.mark.parametrize("kind, message", REFUSALS)
def test_formats_qdq_cannot_hold_are_refused_with_the_layer(kind, message):
    net = _refused_net(kind)
    with pytest.raises(UnsupportedError) as info:
        export_quantized(net, "qdq", compat="cpu" if kind == "compat" else "gpu")
    text = str(info.value)
    assert message in text and "\n" not in text
    if kind not in ("compat", "float"):
        assert "layer '" in text


def test_the_cli_refuses_with_exit_code_2(tmp_path, capsys):
    from ristretto_py.cli import export_onnx
    param = _refused_net("unformatted").to_proto(include_blobs=True)
    model, weights = tmp_path / "n.prototxt", tmp_path / "n.caffemodel"
    caffe_io.write_net_binary(param, weights)
    for layer in param.layer:
        layer.ClearField("blobs")
    caffe_io.write_net_text(param, model)
    code = export_onnx.main(["--model", str(model), "--weights", str(weights),
                             "--output", str(tmp_path / "x.onnx"), "--quantized", "qdq"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "'sum'" in err[0]
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.slow
@pytest.mark.parametrize("weight_bits, activations", [(8, "signed"), (7, "unsigned")])
def test_folded_open_nsfw_qdq_equals_the_fixed_backend(real_models, weight_bits, activations):
    """8-bit activations everywhere (stock formats on every Eltwise, pooling and ReLU), per-channel
    weights and int32 biases. Unsigned activations take 7-bit weights: onnxruntime's u8s8
    kernels on AVX2 sum pairs of products in 16 bits with saturation, which 8-bit weights can
    reach (README, "QDQ")."""
    import cv2
    from ristretto_py.passes import ranges, ristretto_edit as edit
    from ristretto_py.passes.fold_bn import fold_batchnorm
    files = real_models("open_nsfw")
    folded, _ = fold_batchnorm(Net.load(files.prototxt, files.caffemodel))
    images = [cv2.imread(str(p)) for p in real_models("mtcnn_pnet").images[:2]]
    x = np.concatenate([cv2.dnn.blobFromImage(i, 1.0, (224, 224), (104, 117, 123)) for i in images])
    found = ranges.analyze_ranges(folded, [{"data": x}], rule="safe", stock=True)
    lengths = {name: edit.IntegerLengths(*(ranges.integer_lengths(entry, "safe")
                                           if entry.type in ranges.RANGED_TYPES
                                           else ranges.stock_integer_lengths(entry, "safe")))
               for name, entry in found.items()}
    lengths = edit.aligned_lengths(folded.to_proto(), lengths)
    param = edit.per_layer_dynamic_fixed_point(folded.to_proto(), lengths,
                                               {name: (weight_bits, 8) for name in found})
    param = edit.parameter_formats(param, found, bias="int32", per_channel=True, rule="safe")
    net = Net.from_proto(param, folded.to_proto(include_blobs=True))
    counts, export = differing(net, {"data": x}, activations)
    assert len(counts) == 73 and sum(counts.values()) == 0, {k: v for k, v in counts.items() if v}
    if activations == "unsigned":          # (graph outputs of every blob would block fusion)
        plain = export_quantized(net, "qdq", activations=activations).model
        assert onnxruntime_nodes(plain)["QLinearConv"] == 53
