"""Ristretto's quantize on the bundled LeNet/Fashion-MNIST example: the decisions (with a stated
iteration count), the written prototxt field by field, both backends on the quantized net, the
safe integer-length rule, the report, and bad input through the command line."""
import json
import pathlib

import numpy as np
import pytest

from ristretto_py import Net, caffe_io, numerics
from ristretto_py.cli import quantize as quantize_cli
from ristretto_py.evaluators.classification import fetch_batches
from ristretto_py.passes import ranges
from ristretto_py.passes.ristretto_quantize import RistrettoQuantizer
from ristretto_py.protos import caffe_pb2
from ristretto_py.runtime import NumpyRuntime, OnnxRuntime

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "lenet_fashion"
MODEL, WEIGHTS = EXAMPLE / "lenet_train_test.prototxt", EXAMPLE / "lenet_fashion.caffemodel"


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch):
    # The example's data_param.source is relative to the working directory, as in Caffe.
    monkeypatch.chdir(ROOT)


@pytest.fixture(scope="module")
def dfp_run():
    quantizer = RistrettoQuantizer(MODEL, WEIGHTS, iterations=10, trimming_mode="dynamic_fixed_point",
                                   error_margin=1, progress=False)
    return quantizer, quantizer.run()


def test_range_analysis_and_integer_lengths_follow_ristretto(dfp_run):
    quantizer, result = dfp_run
    conv1 = result.ranges["conv1"]
    # Inputs are uint8 * 1/256: the largest is 255/256 and Ristretto's il_in is ceil(log2) = 0.
    assert conv1.max_in == pytest.approx(255 / 256)
    assert result.lengths["conv1"].layer_in == 0
    net = Net.load(MODEL, WEIGHTS, phase="TRAIN")
    weights = net.layer("conv1").blobs[0]
    assert conv1.max_weights == np.abs(weights).max()
    assert result.lengths["conv1"].params == int(np.ceil(np.log2(np.abs(weights).max()) + 1))
    # ip1 is followed by an in-place ReLU. Ristretto (either build) reads the ip1 blob after the
    # whole forward pass, i.e. the ReLU's output: the largest value of that blob over the same
    # 10 TRAIN batches, 7.06 here, so il_out = ceil(log2 7.06) = 3.
    runtime = NumpyRuntime(net)
    after = [runtime.forward(b)["ip1"] for b in fetch_batches(net, 10)]
    assert min(float(a.min()) for a in after) >= 0
    assert result.ranges["ip1"].max_out == max(float(a.max()) for a in after)
    assert 4 < result.ranges["ip1"].max_out <= 8 and result.lengths["ip1"].layer_out == 3


def test_dynamic_fixed_point_decisions_and_written_file(dfp_run):
    _, result = dfp_run
    stages = {}
    for c in result.candidates:
        stages.setdefault(c.stage, []).append(c)
    # Ristretto's order and stopping rule: halvings from 16 until the first failure.
    for stage, cands in stages.items():
        assert [c.bit_width for c in cands] == [16, 8, 4, 2, 1][:len(cands)]
        assert all(c.passed for c in cands[:-1])
        assert not cands[-1].passed or len(cands) == 5
        passed = [c.bit_width for c in cands if c.passed]
        assert result.chosen[stage] == (min(passed) if passed else 32)
        for c in cands:
            assert c.passed == (c.score + 0.01 >= result.baseline)
    # The example's decisions (10 iterations of 100 images, as DESIGN section 4 describes):
    # Ristretto's activation rule clips every input above 0.5, so 16-bit activations fail.
    assert result.chosen == {"conv_params": 4, "fc_params": 4, "activations": 32}
    assert [c.bit_width for c in stages["activations"]] == [16]
    q = result.quantized
    assert not q.HasField("state")
    by_name = {layer.name: layer for layer in q.layer}
    assert by_name["conv1"].type == "ConvolutionRistretto" and by_name["ip1"].type == "FcRistretto"
    assert by_name["pool1"].type == "Pooling" and not by_name["pool1"].HasField("quantization_param")
    for name, bw_params in (("conv1", 4), ("conv2", 4), ("ip1", 4), ("ip2", 4)):
        qp = by_name[name].quantization_param
        il = result.lengths[name]
        set_fields = sorted(f.name for f, _ in qp.ListFields())
        assert set_fields == ["bw_layer_in", "bw_layer_out", "bw_params", "fl_layer_in",
                              "fl_layer_out", "fl_params"]      # precision is not written
        assert (qp.bw_params, qp.fl_params) == (bw_params, bw_params - il.params)
        assert (qp.bw_layer_in, qp.fl_layer_in) == (32, 32 - il.layer_in)
        assert (qp.bw_layer_out, qp.fl_layer_out) == (32, 32 - il.layer_out)
    # What a real Ristretto build writes for ip1 on this net (the audit's comparison): 29, from
    # the ReLU's output (a true-output reading would give 32 - ceil(log2 9.15) = 28).
    assert by_name["ip1"].quantization_param.fl_layer_out == 29


def test_quantized_net_is_identical_on_both_backends(dfp_run, tmp_path):
    _, result = dfp_run
    path = tmp_path / "q.prototxt"
    caffe_io.write_net_text(result.quantized, path)
    net = Net.load(path, WEIGHTS)
    batch = fetch_batches(net, 1)[0]
    ours = NumpyRuntime(net).forward(batch)
    onnx = OnnxRuntime(net).forward(batch)
    # Inputs and 4-bit weights sit on coarse grids, so every product and every partial sum of
    # conv1, conv2 and ip1 is exact in float32: any summation order gives the same bits.
    for blob in ("conv1", "pool1", "conv2", "pool2", "ip1"):
        np.testing.assert_array_equal(onnx[blob], ours[blob])
    # ip2 sums 500 products of ip1's fine-grained (32-bit activation) values: that exceeds
    # float32's 24-bit significand, so BLAS and onnxruntime round differently in the last bits.
    scale = np.abs(ours["ip2"]).max()
    assert np.abs(onnx["ip2"] - ours["ip2"]).max() <= 500 * np.finfo(np.float32).eps * scale
    np.testing.assert_array_equal(onnx["ip2"].argmax(1), ours["ip2"].argmax(1))


def test_safe_integer_lengths_never_clip_the_maximum():
    entry = ranges.LayerRange("l", "Convolution", max_in=255 / 256, max_out=4.0, max_weights=0.3,
                              max_bias=1.99)
    assert ranges.integer_lengths(entry, "ristretto") == (0, 2, 0)   # ceil(log2 0.3 + 1) = 0
    il_in, il_out, il_params = ranges.integer_lengths(entry, "safe")
    for il, top in ((il_in, 255 / 256), (il_out, 4.0), (il_params, 1.99)):
        for bw in (8, 16):
            low, high = numerics.fixed_point_bounds(bw, bw - il)
            # The maximum is below 2^(il-1): clamping it costs less than one step, i.e. no
            # more than rounding does (Ristretto's rule clips half of the range away).
            assert top - high < 2.0 ** -(bw - il)
            _, ristretto_high = numerics.fixed_point_bounds(bw, bw - ranges.integer_lengths(entry)[0])
            assert 255 / 256 - ristretto_high > 0.4 if top == 255 / 256 else True
    assert ranges.minifloat_exponent_bits({"l": entry}) == 4
    big = ranges.LayerRange("l", "Convolution", max_in=3e5, max_out=1.0)
    assert ranges.minifloat_exponent_bits({"l": big}) == 6     # ceil(log2(17.19) + 1) = ceil(5.10)


def test_cli_safe_rule_minifloat_pow2_and_report(tmp_path, capsys):
    out = tmp_path / "q.prototxt"
    code = quantize_cli.main(["--model", str(MODEL), "--weights", str(WEIGHTS), "--model_quantized",
                              str(out), "--trimming_mode", "dynamic_fixed_point", "--error_margin", "1",
                              "--iterations", "3", "--integer_length", "safe", "--report",
                              str(tmp_path / "report"), "--quiet"])
    assert code == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["chosen"]["activations"] <= 16        # no longer clipped at every width
    assert report["weight_bytes_before"] == 4 * sum(
        np.size(b) for layer in Net.load(MODEL, WEIGHTS).layers for b in layer.blobs)
    assert report["weight_bytes_after"] < report["weight_bytes_before"]
    assert (tmp_path / "report" / "score_vs_bits.png").read_bytes()[:4] == b"\x89PNG"
    assert report["cost"]["totals"]["param_bytes"] == report["weight_bytes_after"]
    assert "Dynamic fixed point net:" in capsys.readouterr().out
    for mode, precision in (("mini_floating_point", caffe_pb2.QuantizationParameter.MINIFLOAT),
                            ("integer_power_of_2_weights",
                             caffe_pb2.QuantizationParameter.INTEGER_POWER_OF_2_WEIGHTS)):
        code = quantize_cli.main(["--model", str(MODEL), "--weights", str(WEIGHTS), "--model_quantized",
                                  str(out), "--trimming_mode", mode, "--iterations", "2", "--quiet"])
        assert code == 0
        layers = {l.name: l for l in caffe_io.read_net_text(out).layer}
        assert layers["conv1"].quantization_param.precision == precision
        if mode == "mini_floating_point":          # the first release's name of minifloat
            qp = layers["ip2"].quantization_param
            assert qp.exp_bits == 4 and qp.mant_bits in (11, 3, 27)
        else:
            qp = layers["conv1"].quantization_param
            assert (qp.exp_min, qp.exp_max, qp.bw_layer_in, qp.bw_layer_out) == (-8, -1, 8, 8)


def _copy_example(tmp_path, text_edit):
    model = tmp_path / "net.prototxt"
    model.write_text(text_edit(MODEL.read_text()))
    return model


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("fashion_test_lmdb", "missing_lmdb"), "missing_lmdb"),
    (lambda t: "\n".join(l for l in t.splitlines() if '"Accuracy"' not in l and "accuracy_param" not in l
                         and "include { phase: TEST } }" != l.strip()), "no Accuracy layer"),
])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys, edit, message):
    model = _copy_example(tmp_path, edit)
    out = tmp_path / "q.prototxt"
    code = quantize_cli.main(["--model", str(model), "--weights", str(WEIGHTS), "--model_quantized",
                              str(out), "--trimming_mode", "dynamic_fixed_point", "--iterations", "1",
                              "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_cli_refuses_an_unwritable_output_before_working(tmp_path, capsys):
    code = quantize_cli.main(["--model", str(MODEL), "--weights", str(WEIGHTS), "--model_quantized",
                              str(tmp_path / "no" / "such" / "dir" / "q.prototxt"),
                              "--trimming_mode", "minifloat", "--quiet"])
    assert code == 2 and "does not exist" in capsys.readouterr().err


def test_lmdb_with_other_image_size_is_a_clear_error(tmp_path, capsys):
    from ristretto_py.lmdb_write import make_datum, write_lmdb
    db = tmp_path / "big_lmdb"
    write_lmdb(db, [make_datum(np.zeros((32, 32), np.uint8), 0) for _ in range(4)])
    model = _copy_example(tmp_path, lambda t: t.replace("examples/lenet_fashion/fashion_test_lmdb", str(db)))
    code = quantize_cli.main(["--model", str(model), "--weights", str(WEIGHTS), "--model_quantized",
                              str(tmp_path / "q.prototxt"), "--trimming_mode", "minifloat",
                              "--iterations", "1", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "ip1" in err and "shape" in err


def test_range_reading_follows_the_integer_length_rule():
    # Rule "ristretto" reads the blobs after the forward pass (both of Ristretto's builds do);
    # rule "safe" reads each layer's true output, here ip1's before its in-place ReLU.
    net = Net.load(MODEL, WEIGHTS, phase="TRAIN")
    batches = fetch_batches(net, 10)
    raw, final = 0.0, 0.0

    def keep(layer, bottoms, tops):
        nonlocal raw
        if layer.name == "ip1":
            raw = max(raw, float(np.abs(tops[0]).max()))
    runtime = NumpyRuntime(net)
    for batch in batches:
        final = max(final, float(np.abs(runtime.forward(batch, observer=keep)["ip1"]).max()))
    safe_reading = ranges.analyze_ranges(net, batches, rule="safe")["ip1"].max_out
    ristretto_reading = ranges.analyze_ranges(net, batches, rule="ristretto")["ip1"].max_out
    assert safe_reading == raw and ristretto_reading == final
    assert raw > final         # a negative pre-activation is the largest magnitude here
    assert ranges.analyze_ranges(net, batches)["ip1"].max_out == final      # the default rule
    with pytest.raises(ValueError, match="rule"):
        ranges.analyze_ranges(net, batches, rule="after_forward")
