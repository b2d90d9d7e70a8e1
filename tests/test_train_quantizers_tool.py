"""Training-time quantizers end to end on the LeNet example: ``tools/quantize_weights
--training`` writes them into a prototxt, ``tools/train`` trains through them and prints the
quantization table, and ``tools/evaluate`` (the numpy runtime) scores the snapshot exactly as
the training engine's last test pass did."""
import json
import re
import subprocess
import sys

import pytest

from ristretto_py import Net
from test_cli import ROOT
from test_train_tool import MODEL, WEIGHTS, evaluated_accuracy, solver, tool


def _quantize_weights(*argv):
    return subprocess.run([sys.executable, str(ROOT / "tools" / "quantize_weights"),
                           "--model", str(MODEL), "--weights", str(WEIGHTS), *map(str, argv)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_prepared_quantizers_train_and_the_numpy_runtime_scores_what_the_engine_printed(
        tmp_path):
    prepared = tmp_path / "prepared.prototxt"
    result = _quantize_weights("--training", "--layer_type", "conv=ternary", "--layer_type",
                               "fc=dorefa:2:max", "--layer", "conv1=hwce:8:100",
                               "--activations", "dorefa:4", "--keep_first_last",
                               "--out_model", prepared, "--report", tmp_path / "prepared")
    assert result.returncode == 0, result.stderr
    net = Net.load(prepared)
    methods = {l.name: l.spec.weight_quantization_param.method for l in net.layers
               if l.spec.HasField("weight_quantization_param")}
    # conv1 is named (kept despite --keep_first_last), ip2 is the last layer: left alone.
    assert methods == {"conv1": 3, "conv2": 1, "ip1": 2}
    assert "kept as they are (first and last learned layers): ip2" in result.stdout
    report = json.loads((tmp_path / "prepared" / "report.json").read_text())
    assert report["kept"] == ["ip2"]
    conv2 = next(r for r in report["layers"] if r["layer"] == "conv2")
    assert conv2["packed_bytes"] == (25000 * 2 + 32 + 7) // 8 and conv2["float_bytes"] == 100000

    path = solver(tmp_path, "twn", net=prepared, max_iter=10, snapshot=10, test_interval=10)
    # One test pass, at the end: the test net's Data layer reads the same first 200 images as
    # tools/evaluate does (an initial pass would move its cursor on, as in Caffe).
    path.write_text(path.read_text() + "test_initialization: false\n")
    trained = tool("--solver", path, "--weights", WEIGHTS, "--quiet", "--report", tmp_path / "r")
    assert trained.returncode == 0, trained.stderr
    assert re.search(r"conv2\s+ternary \(t = 0.7 mean\|w\|\)\s+2/32/4 ", trained.stdout)
    assert re.search(r"ip2\s+float32\s+32/32/32 ", trained.stdout)
    rows = json.loads((tmp_path / "r" / "train.json").read_text())["quantization"]
    assert [r["layer"] for r in rows] == ["conv1", "conv2", "ip1", "ip2"]
    assert 0 <= rows[0]["saturated"] < 0.01              # hwce msb from the 100th percentile
    # On a test batch: conv2's outputs outside DoReFa's [0, 1] (negative ones included), none
    # measured for plain layers' inputs or for ip2, which nothing quantizes.
    assert 0.05 < rows[1]["output_saturated"] < 0.95 and rows[1]["input_saturated"] is None
    assert rows[3]["output_saturated"] is None
    engine = re.findall(r"Test net output #0: accuracy = ([\d.]+)", trained.stdout)[-1]
    assert float(engine) == pytest.approx(
        evaluated_accuracy(prepared, tmp_path / "twn_iter_10.caffemodel"), abs=1e-6)


@pytest.mark.parametrize("argv, fragment", [
    (["--training", "--method", "ternary:-1"], "training quantizer 'ternary:-1'"),
    (["--training", "--method", "dorefa:2:min"], "training quantizer 'dorefa:2:min'"),
    (["--training", "--layer_type", "pool=binary"], "layer type pool"),
    (["--training", "--layer", "nope=binary"], "no layer named nope"),
    (["--training", "--activations", "sign:2"], "use sign or dorefa:K"),
    (["--method", "binary", "--keep_first_last"], "go with --training"),
    (["--activations", "sign"], "add --training"),
])
def test_bad_training_quantizer_requests_are_one_line(tmp_path, argv, fragment):
    result = _quantize_weights(*argv, "--out_model", tmp_path / "q.prototxt",
                               "--out_weights", tmp_path / "q.caffemodel"
                               ) if "--training" not in argv else _quantize_weights(
        *argv, "--out_model", tmp_path / "q.prototxt")
    assert result.returncode == 2, result.stdout
    assert fragment in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "q.prototxt").exists()


def test_quantize_refuses_a_description_that_already_carries_quantizers(tmp_path):
    prepared = tmp_path / "prepared.prototxt"
    assert _quantize_weights("--training", "--method", "ternary", "--out_model",
                             prepared).returncode == 0
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "quantize"), "--model", str(prepared), "--weights",
         str(WEIGHTS), "--model_quantized", str(tmp_path / "q.prototxt"), "--trimming_mode",
         "dynamic_fixed_point", "--iterations", "1", "--quiet"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "layer conv1 carries a training-time" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "q.prototxt").exists()
