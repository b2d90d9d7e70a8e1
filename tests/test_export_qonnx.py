"""QONNX export (``export_quantized(net, "qonnx")``, ``tools/export_onnx --quantized qonnx``)
checked with the ``qonnx`` package itself: onnx.checker on every file, qonnx's executor
(ModelWrapper + InferShapes + execute_onnx) against our numpy emulation on a real batch of the
example (every blob the file outputs), qonnx's inference-cost tool against our cost model, the
refusals, and (slow) the folded open_nsfw at 8 bits with stock formats.

The nets are the example's LeNet with the formats ``tools/quantize`` finds for it (written out
here, so that the tests need no search): dynamic fixed point at 8 bits (also with per-channel
weights and the SHARED bias, and with the pooling/ReLU formats of ``--all_layers``), power-of-two
weights, and mini-float.

qonnx's executor needs fixed shapes (it refuses a batch of a symbolic N), so the files are
exported with ``dynamic_batch=False`` (``--static_batch``)."""
import pathlib
import time

import numpy as np
import pytest

pytest.importorskip("qonnx")
import onnx  # noqa: E402
from qonnx.core.modelwrapper import ModelWrapper  # noqa: E402
from qonnx.core.onnx_exec import execute_onnx  # noqa: E402
from qonnx.custom_op.general.floatquant import float_quant as qonnx_float_quant  # noqa: E402
from qonnx.transformation.infer_shapes import InferShapes  # noqa: E402

from ristretto_py import caffe_io, numerics  # noqa: E402
from ristretto_py.cli import export_onnx as export_cli  # noqa: E402
from ristretto_py.errors import UnsupportedError  # noqa: E402
from ristretto_py.evaluators.classification import fetch_batches  # noqa: E402
from ristretto_py.net import Net  # noqa: E402
from ristretto_py.passes.cost import layer_costs  # noqa: E402
from ristretto_py.precision import MINIFLOAT, LayerPrecision  # noqa: E402
from ristretto_py.runtime import make_runtime  # noqa: E402
from ristretto_py.runtime.quantized_export import export_quantized  # noqa: E402
from test_qonnx_nodes import documented_mismatches  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "lenet_fashion"
MODEL = EXAMPLE / "lenet_train_test.prototxt"
WEIGHTS = EXAMPLE / "lenet_fashion.caffemodel"
RISTRETTO_TYPES = {"Convolution": "ConvolutionRistretto", "InnerProduct": "FcRistretto"}

# The formats tools/quantize finds for the example (--widths conv=8,fc=8,act=8; --all_layers;
# --trimming_mode integer_power_of_2_weights), as quantization_param text.
DFP = {"conv1": "bw_layer_in: 8 fl_layer_in: 7 bw_layer_out: 8 fl_layer_out: 5 bw_params: 8 "
                "fl_params: 7 bias_format: ACCUMULATOR bw_bias: 32",
       "conv2": "bw_layer_in: 8 fl_layer_in: 5 bw_layer_out: 8 fl_layer_out: 3 bw_params: 8 "
                "fl_params: 8 bias_format: ACCUMULATOR bw_bias: 32",
       "ip1": "bw_layer_in: 8 fl_layer_in: 3 bw_layer_out: 8 fl_layer_out: 3 bw_params: 8 "
              "fl_params: 9 bias_format: ACCUMULATOR bw_bias: 32",
       "ip2": "bw_layer_in: 8 fl_layer_in: 4 bw_layer_out: 8 fl_layer_out: 2 bw_params: 8 "
              "fl_params: 8 bias_format: ACCUMULATOR bw_bias: 32"}
STOCK = {name: f"bw_layer_in: 8 fl_layer_in: {fl} bw_layer_out: 8 fl_layer_out: {fl} "
               "bw_params: 8 fl_params: 6"
         for name, fl in {"pool1": 5, "pool2": 3, "relu1": 4}.items()}
# per-channel weight lengths and Ristretto's SHARED bias (the bias in the weights' format)
CHANNEL = dict(DFP, conv1="bw_layer_in: 8 fl_layer_in: 7 bw_layer_out: 8 fl_layer_out: 5 "
                          "bw_params: 8 fl_params: 7 "
                          + " ".join(f"fl_params_channel: {6 + i % 3}" for i in range(20)),
               ip2="bw_layer_in: 8 fl_layer_in: 4 bw_layer_out: 8 fl_layer_out: 2 bw_params: 6 "
                   "fl_params: 6")
POWER_OF_TWO = {name: f"precision: INTEGER_POWER_OF_2_WEIGHTS bw_layer_in: 8 fl_layer_in: {fin} "
                      f"bw_layer_out: 8 fl_layer_out: {fout} exp_min: -8 exp_max: -1"
                for name, (fin, fout) in {"conv1": (8, 6), "conv2": (6, 4), "ip1": (4, 5),
                                          "ip2": (5, 3)}.items()}


def minifloat(exp_bits, mant_bits):
    text = f"precision: MINIFLOAT exp_bits: {exp_bits} mant_bits: {mant_bits}"
    return {name: text for name in ("conv1", "conv2", "ip1", "ip2")}


NETS = {"dfp": DFP, "dfp_all_layers": dict(DFP, **STOCK), "dfp_per_channel": CHANNEL,
        "power_of_two": POWER_OF_TWO,
        "minifloat_16bit": minifloat(4, 11),   # what tools/quantize --trimming_mode minifloat picks
        "minifloat_8bit": minifloat(4, 3)}


def quantized_param(formats, batch_size=None):
    """The example's net with ``formats`` (layer name -> quantization_param text); a
    ``batch_size`` replaces the Data layers' (qonnx needs the file's batch to be the input's)."""
    param = caffe_io.read_net_text(MODEL)
    for layer in param.layer:
        if batch_size is not None and layer.type == "Data":
            layer.data_param.batch_size = batch_size
        if layer.name in formats:
            layer.type = RISTRETTO_TYPES.get(layer.type, layer.type)
            text = f"layer {{ quantization_param {{ {formats[layer.name]} }} }}"
            layer.quantization_param.CopyFrom(caffe_io.parse_net_text(text).layer[0].quantization_param)
    return param


@pytest.fixture(scope="module")
def weights():
    return caffe_io.read_net_binary(WEIGHTS)


@pytest.fixture(scope="module")
def batch(weights):
    import os
    here = os.getcwd()
    os.chdir(ROOT)          # the Data layer's LMDB path is relative to the repository root
    try:
        net = Net.from_proto(quantized_param(DFP), weights, source=str(MODEL))
        return fetch_batches(net, 1, seed=0)[0]
    finally:
        os.chdir(here)


def load(name, weights, batch_size=None):
    return Net.from_proto(quantized_param(NETS[name], batch_size), weights,
                          source=f"{name}.prototxt")


def run_qonnx(model, batch, full=False):
    """qonnx's executor on ``model`` (a ModelProto or a path) with the inputs it declares."""
    wrapper = ModelWrapper(model).transform(InferShapes())
    inputs = {value.name: batch[value.name] for value in wrapper.graph.input}
    return execute_onnx(wrapper, inputs, return_full_exec_context=full)


def differing(export, got, ours):
    """Blob -> number of values the qonnx run and our emulation differ in (shapes must match)."""
    counts = {}
    for blob, name in export.outputs.items():
        assert got[name].shape == ours[blob].shape, blob
        assert got[name].dtype == np.float32, blob
        counts[blob] = int(np.count_nonzero(got[name] != ours[blob]))
    return counts


def exported(net):
    result = export_quantized(net, "qonnx", all_blobs=True, dynamic_batch=False)
    onnx.checker.check_model(result.model)
    return result


# -- 1, 2: dynamic fixed point and power-of-two weights: 0 differing values ----------------
@pytest.mark.parametrize("name", ["dfp", "dfp_all_layers", "dfp_per_channel", "power_of_two"])
def test_qonnx_executor_equals_our_emulation(name, weights, batch):
    net = load(name, weights)
    result = exported(net)
    graph = result.model.graph
    ops = {node.op_type for node in graph.node}
    assert "Quant" in ops and "FloatQuant" not in ops
    quant = [n for n in graph.node if n.op_type == "Quant"]
    assert all(n.domain == "qonnx.custom_op.general" for n in quant)
    # input and output of 4 Ristretto layers, their weights (and, not for power-of-two, biases),
    # and with --all_layers the stock layers' input and output
    expected = {"dfp": 16, "dfp_all_layers": 22, "dfp_per_channel": 16, "power_of_two": 8}[name]
    assert len(quant) == expected
    ours = make_runtime(net, "numpy").forward(batch)
    counts = differing(result.export, run_qonnx(result.model, batch), ours)
    assert set(counts) >= {"data", "conv1", "pool1", "conv2", "pool2", "ip1", "ip2"}
    assert counts == {blob: 0 for blob in counts}
    # the blobs are quantized, not trivially equal: values on their grids, and some nonzero
    assert np.count_nonzero(ours["ip2"]) > 0.5 * ours["ip2"].size
    if name == "power_of_two":
        conv1 = [i for i in graph.initializer if i.name.startswith("weight")][0]
        w = onnx.numpy_helper.to_array(conv1)
        assert np.all((w == 0) | np.isin(np.abs(w), np.exp2(np.arange(-8, 0)).astype(np.float32)))


def test_cli_writes_a_file_qonnx_runs(weights, batch, tmp_path, capsys, monkeypatch):
    """tools/export_onnx --quantized qonnx --static_batch --all_blobs: the file on disk passes
    the checker and runs in qonnx with 0 differing values."""
    monkeypatch.chdir(ROOT)
    model = tmp_path / "dfp.prototxt"
    caffe_io.write_net_text(quantized_param(DFP), model)
    output = tmp_path / "dfp.onnx"
    assert export_cli.main(["--model", str(model), "--weights", str(WEIGHTS), "--output",
                            str(output), "--quantized", "qonnx", "--static_batch",
                            "--all_blobs"]) == 0
    out = capsys.readouterr().out
    assert "QONNX ONNX opset" in out and "left to the numpy tail" in out
    onnx.checker.check_model(str(output))
    net = Net.load(model, WEIGHTS)
    got = run_qonnx(str(output), batch)
    ours = make_runtime(net, "numpy").forward(batch)
    names = [value.name for value in onnx.load(str(output)).graph.output]
    for blob in ("conv1", "conv2", "ip2"):
        assert blob in names
        assert np.count_nonzero(got[blob] != ours[blob]) == 0, blob


# -- 3: mini-float: the differences are the documented ones, and nothing else ----------------
def ristretto_rule(X, scale, exponent_bitwidth, mantissa_bitwidth, *args):
    """qonnx's ``float_quant`` signature with Ristretto's mini-float rule (scale 1, the
    FLOAT<e + 1, m, bias + 1> our FloatQuant nodes state)."""
    assert np.all(scale == 1)
    return numerics.trim_minifloat(X, int(exponent_bitwidth) - 1, int(mantissa_bitwidth),
                                   "nearest", "gpu")


@pytest.mark.parametrize("name", ["minifloat_16bit", "minifloat_8bit"])
def test_minifloat_differs_only_where_documented(name, weights, batch, monkeypatch):
    """Each check can fail:
    (a) at every FloatQuant node of the qonnx run, on the values qonnx feeds it, its output
        differs from Ristretto's trim_minifloat exactly at the positions
        ``test_qonnx_nodes.documented_mismatches`` predicts from the module docstring of
        ``qonnx_nodes`` (subnormals, the carry band, m = 0 ties), and such positions occur
        (the example's pixels k/256 < 2^-7 are subnormal for e = 4), so the plain emulation
        and the qonnx run differ;
    (b) with qonnx's FloatQuant function replaced by Ristretto's rule, the QONNX file run by
        qonnx equals our float ONNX export (Ristretto's trimming in standard ops) run by qonnx:
        0 differing values, so the FloatQuant rule is the only difference;
    (c) 8-bit only: our numpy emulation with its activation trims replaced by qonnx's FloatQuant
        function equals the qonnx run: 0 differing values. At 16 bits (m = 11) the float32
        sums of the layers' products are not exact, and numpy and onnxruntime (which qonnx runs
        Conv and Gemm with) add in different orders: a few hundred values differ by that alone,
        as they do between our float ONNX export and the emulation, QONNX aside."""
    from qonnx.custom_op.general import floatquant
    from ristretto_py.runtime.onnx_export import export_onnx
    # 20 images: qonnx runs the float export's trimming (about 40 nodes per trim) node by node
    batch = {blob: values[:20] for blob, values in batch.items()}
    net = load(name, weights, batch_size=20)
    result = exported(net)
    model = ModelWrapper(result.model).transform(InferShapes())
    context = execute_onnx(model, {v.name: batch[v.name] for v in model.graph.input},
                           return_full_exec_context=True)
    precision = [i for i in net.impls if getattr(i, "precision", None) is not None][0].precision
    e, m = precision.exp_bits, precision.mant_bits
    nodes = [n for n in model.graph.node if n.op_type == "FloatQuant"]
    assert len(nodes) == 16          # 4 layers: input, output, weights, bias
    explained = 0
    for node in nodes:
        x, y = context[node.input[0]], context[node.output[0]]
        differ = y != numerics.trim_minifloat(x, e, m, "nearest", "gpu")
        assert np.array_equal(differ, documented_mismatches(x, e, m)), node.name
        explained += int(np.count_nonzero(differ))
    assert explained > 0
    got = {value: context[value] for value in result.export.outputs.values()}
    plain = make_runtime(net, "numpy").forward(batch)
    assert differing(result.export, got, plain)["data"] > 0
    # (b)
    float_export = export_onnx(net, all_blobs=True, dynamic_batch=False)
    assert not any(node.op_type == "FloatQuant" for node in float_export.model.graph.node)
    with monkeypatch.context() as patch:
        patch.setattr(floatquant, "float_quant", ristretto_rule)
        with_rule = run_qonnx(result.model, batch)
        reference = run_qonnx(float_export.model, batch)
    assert float_export.outputs.keys() == result.export.outputs.keys()
    for blob, value in result.export.outputs.items():
        same = reference[float_export.outputs[blob]]
        assert np.count_nonzero(with_rule[value] != same) == 0, blob
    # (c)
    if name != "minifloat_8bit":
        return
    f32 = np.float32
    bias = 2 ** (e - 1) - 1
    largest = numerics.minifloat_range(e, m)[1]
    scale, exp_width, mant_width, exp_bias, max_val = [np.asarray(v, f32) for v in
                                                       (1.0, e + 1, m, bias + 1, largest)]

    def qonnx_trim(self, x, context):
        assert self.precision == MINIFLOAT
        return np.asarray(qonnx_float_quant(np.asarray(x, f32), scale, exp_width, mant_width,
                                            exp_bias, True, max_val, 0, 0, 0, "ROUND", 1), f32)

    monkeypatch.setattr(LayerPrecision, "trim_input", qonnx_trim)
    monkeypatch.setattr(LayerPrecision, "trim_output", qonnx_trim)
    patched = make_runtime(net, "numpy").forward(batch)
    counts = differing(result.export, got, patched)
    assert counts == {blob: 0 for blob in counts}


# -- 4: inference cost ---------------------------------------------------------------------
@pytest.mark.parametrize("name", ["dfp", "dfp_per_channel", "power_of_two", "minifloat_8bit"])
def test_inference_cost_agrees_with_our_cost_model(name, weights, tmp_path):
    """qonnx's inference_cost (discount_sparsity=False) on the exported file against
    ``passes.cost.layer_costs``: total MACs, weight values and weight bits, and bit-ops
    (MACs x input bits x weight bits).

    qonnx counts neither biases (ours do: compare weights only) nor per-channel shifts. MACs
    and weight counts agree for every net. Bits agree for dynamic fixed point. Documented
    mismatches: power-of-two weights are stored as their exact float32 values with no quantizer
    node (QONNX has no power-of-two quantizer), so qonnx counts 32 bits per weight where ours
    counts the power-of-two code; mini-float (e, m) is FloatQuant FLOAT<e + 1, m, bias + 1>
    (qonnx reserves the lowest exponent code for subnormals), one bit wider than Ristretto's
    1 + e + m, and qonnx lists FloatQuant as an unsupported op of its own cost."""
    from qonnx.util.inference_cost import inference_cost
    net = load(name, weights)
    path = tmp_path / f"{name}.onnx"
    onnx.save(export_quantized(net, "qonnx", dynamic_batch=False).model, str(path))
    cost = inference_cost(str(path), discount_sparsity=False)["total_cost"]
    macs = weight_values = weight_bits = bops = 0
    shapes = net.shapes()
    for layer, impl, row in zip(net.layers, net.impls, layer_costs(net)):
        if not row.macs:
            continue
        count = layer.blobs[0].size
        bits = [b for b, n in row.param_values.items() if n >= count]
        assert len(bits) == 1, row.param_values
        in_bits = row.input_bytes * 8 / np.prod(shapes[layer.bottoms[0]])
        macs += row.macs
        weight_values += count
        weight_bits += count * bits[0]
        bops += row.macs * in_bits * bits[0]
    assert cost["total_macs"] == macs == 229_300_000       # the batch of 100
    assert cost["total_mem_w_elems"] == weight_values == 430_500
    if name.startswith("dfp"):
        assert cost["total_mem_w_bits"] == weight_bits
        assert cost["total_bops"] == bops
        assert cost["unsupported"] == "set()"
    elif name == "power_of_two":
        assert cost["total_mem_w_bits"] == 32 * weight_values != weight_bits
        assert cost["total_bops"] == macs * 8 * 32
    else:
        assert cost["total_mem_w_bits"] == weight_bits + weight_values
        assert cost["total_bops"] == macs * 9 * 9
        assert "FloatQuant" in cost["unsupported"]


# -- 5: refusals ---------------------------------------------------------------------------
REFUSALS = [("dfp", "cpu", None, "CPU build's rounding"),
            ("minifloat_16bit", "cpu", None, "CPU build's rounding"),
            ("power_of_two", "cpu", None, "CPU build's rounding"),
            ("dfp", "gpu", ("conv2", "bw_layer_out: 8", "bw_layer_out: 1"), "bipolar"),
            ("dfp", "gpu", ("ip1", "bw_params: 8", "bw_params: 1"), "bipolar"),
            ("minifloat_16bit", "gpu", ("ip2", "exp_bits: 4", "exp_bits: 8"), "exponent")]


@pytest.mark.parametrize("name,compat,edit,why", REFUSALS)
def test_refusals_name_the_layer(name, compat, edit, why, weights, tmp_path, capsys, monkeypatch):
    formats = dict(NETS[name])
    layer = "conv1"
    if edit is not None:
        layer, old, new = edit
        assert old in formats[layer]
        formats[layer] = formats[layer].replace(old, new)
    net = Net.from_proto(quantized_param(formats), weights, source=f"{name}.prototxt")
    with pytest.raises(UnsupportedError, match=why) as caught:
        export_quantized(net, "qonnx", compat=compat)
    assert caught.value.layer == layer
    # the tool: exit code 2, one line on stderr naming the file and the layer, no file
    monkeypatch.chdir(ROOT)
    model, output = tmp_path / "net.prototxt", tmp_path / "net.onnx"
    caffe_io.write_net_text(quantized_param(formats), model)
    code = export_cli.main(["--model", str(model), "--weights", str(WEIGHTS), "--output",
                            str(output), "--quantized", "qonnx", "--compat", compat])
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and f"layer '{layer}'" in lines[0] and why in lines[0]
    assert str(model) in lines[0]
    assert not output.exists()


# -- 6: the folded open_nsfw at 8 bits with stock formats ----------------------------------
@pytest.mark.slow
def test_folded_open_nsfw_qonnx_equals_our_emulation(real_models):
    """open_nsfw with its BatchNorm/Scale folded, every Convolution/InnerProduct at 8-bit
    dynamic fixed point and every stock layer (Pooling, Eltwise, ReLU) with an 8-bit format
    (``--all_layers``: ranges with stock=True, aligned lengths, ``stock_formats``), one 224x224
    image. 0 differing values in every quantized blob (73 of them); the last layer, the float
    Softmax ``prob`` the net leaves unquantized, is within 1 ulp (numpy's exp and
    onnxruntime's, which qonnx runs standard nodes with, differ in the last bit). qonnx's
    executor runs the 611 nodes one by one: 15 to 22 s on one image here (20 to 30 s in
    all, on 2 loaded cores)."""
    import cv2
    from ristretto_py.passes import ranges, ristretto_edit
    from ristretto_py.passes.fold_bn import fold_batchnorm
    files = real_models("open_nsfw")
    folded, _ = fold_batchnorm(Net.load(files.prototxt, files.caffemodel))
    image = cv2.imread(str(real_models("mtcnn_pnet").images[0]))
    x = cv2.dnn.blobFromImage(image, 1.0, (224, 224), (104, 117, 123))
    found = ranges.analyze_ranges(folded, [{"data": x}], rule="safe", stock=True)
    lengths = {}
    for name, entry in found.items():
        ranged = entry.type in ranges.RANGED_TYPES
        rule = ranges.integer_lengths if ranged else ranges.stock_integer_lengths
        lengths[name] = ristretto_edit.IntegerLengths(*rule(entry, "safe"))
    lengths = ristretto_edit.aligned_lengths(folded.to_proto(), lengths)
    widths = {name: (8, 8) for name, entry in found.items() if entry.type in ranges.RANGED_TYPES}
    param = ristretto_edit.per_layer_dynamic_fixed_point(folded.to_proto(), lengths, widths)
    param = ristretto_edit.stock_formats(param, lengths, 8, 8)
    net = Net.from_proto(param, folded.to_proto(include_blobs=True))
    types = {layer.type for layer in net.layers}
    assert {"ConvolutionRistretto", "FcRistretto", "Eltwise", "Pooling", "ReLU"} <= types
    assert all(impl.layer_format is not None for layer, impl in zip(net.layers, net.impls)
               if layer.type in ("Eltwise", "Pooling", "ReLU"))
    result = exported(net)
    ours = make_runtime(net, "numpy").forward({"data": x})
    start = time.perf_counter()
    got = run_qonnx(result.model, {"data": x})
    seconds = time.perf_counter() - start
    counts = differing(result.export, got, ours)
    assert counts.pop("prob") <= 2
    prob = got[result.export.outputs["prob"]]
    assert np.max(np.abs(prob.view(np.int32) - ours["prob"].view(np.int32))) <= 1
    assert len(counts) > 70 and counts == {blob: 0 for blob in counts}
    assert seconds < 60, f"qonnx's executor took {seconds:.0f} s"
