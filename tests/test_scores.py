"""What a search measures (issue 10): each score on hand-computable outputs, the label-free
scores on a folder of real images, the LFW-scored search, calibration data, given widths and
their round trip through the per-layer report, caps on the per-layer search."""
import json
import os

import numpy as np
import pytest

from ristretto_py import Net, caffe_io
from ristretto_py.cli import quantize as quantize_cli
from ristretto_py.cli import quantize_weights as quantize_weights_cli
from ristretto_py.evaluators.scores import AccuracyScore, AgreementScore, DistanceScore
from ristretto_py.images import prepare_image, read_image
from ristretto_py.runtime import NumpyRuntime

from test_cli import ROOT

EXAMPLE = ROOT / "examples" / "lenet_fashion"
MODEL, WEIGHTS = EXAMPLE / "lenet_train_test.prototxt", EXAMPLE / "lenet_fashion.caffemodel"
SCALE = "0.00390625"


# -- the measures on hand-computed outputs -------------------------------------------------

def test_agreement_counts_images_whose_top1_is_the_float_nets():
    score = AgreementScore("prob", margin=1)
    score.bind([{"prob": np.array([[1.0, 2.0], [3.0, 0.0]])}, {"prob": np.array([[0.0, 1.0]])}])
    candidate = [{"prob": np.array([[2.0, 1.0], [3.0, 0.0]])}, {"prob": np.array([[0.0, 1.0]])}]
    assert score(candidate) == pytest.approx(2 / 3)
    assert score.passes(0.995, 1.0) and not score.passes(0.98, 1.0)    # 1 point


def test_l2_and_cosine_distances_by_hand():
    reference = [{"y": np.array([[3.0, 4.0], [1.0, 0.0]])}]
    l2 = DistanceScore("l2", "y", max_distance=0.25)
    l2.bind(reference)
    # image 1: |(0, 1)| / 5 = 0.2; image 2: |(0, 0)| / 1 = 0
    assert l2([{"y": np.array([[3.0, 5.0], [1.0, 0.0]])}]) == pytest.approx(0.1)
    assert l2.passes(0.25, 0.0) and not l2.passes(0.2501, 0.0)
    assert l2.drop(0.2, 0.0) == pytest.approx(0.2)        # lower is better: larger is worse
    cosine = DistanceScore("cosine", "y", max_distance=0.05)
    cosine.bind(reference)
    # image 1: 1 - (4*3 + 3*4) / 25 = 0.04; image 2: 1 - (-1)/1 = 2
    assert cosine([{"y": np.array([[4.0, 3.0], [-1.0, 0.0]])}]) == pytest.approx(1.02)


def test_accuracy_is_a_float32_mean_as_caffe_computes_it():
    score = AccuracyScore("accuracy", margin=1)
    score._outputs = ["accuracy"]
    values = [np.float32(0.1), np.float32(0.2), np.float32(0.7)]
    expected = np.float32((np.float32(np.float32(0.1) + np.float32(0.2)) + np.float32(0.7)) / np.float32(3))
    assert score([{"accuracy": v} for v in values]) == float(expected)


# -- a deploy net and a folder of real images ----------------------------------------------

def _images_folder(fashion_lfw, count_per_class=4):
    """Real Fashion-MNIST images of the LFW test tree, a few per class, in one folder."""
    folder = fashion_lfw / "photos"
    if not folder.exists():
        folder.mkdir()
        for person in sorted((fashion_lfw / "lfw").iterdir()):
            for image in sorted(person.iterdir())[:count_per_class]:
                os.link(image, folder / image.name)
    return folder


def _run(tmp_path, *argv):
    out = tmp_path / "q.prototxt"
    code = quantize_cli.main(["--weights", str(WEIGHTS), "--model_quantized", str(out),
                              "--trimming_mode", "dynamic_fixed_point", "--quiet",
                              *map(str, argv)])
    assert code == 0
    return out


def test_l2_search_on_images_without_labels(fashion_lfw, tmp_path):
    deploy, photos = fashion_lfw / "deploy.prototxt", _images_folder(fashion_lfw)
    out = _run(tmp_path, "--model", deploy, "--images", photos, "--gray", "--scale", SCALE,
               "--score", "l2", "--score_blob", "ip2", "--max_distance", "0.05",
               "--integer_length", "safe", "--report", tmp_path / "r")
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["score_kind"] == "l2" and report["lower_is_better"] is True
    assert report["float_score"] == 0.0 and report["within_margin"] is True
    # The same distance, computed here from both nets over the same images.
    paths = sorted(photos.iterdir())
    batch = np.concatenate([prepare_image(read_image(p, True), scale=float(SCALE)) for p in paths])
    ip2 = NumpyRuntime(Net.load(deploy, WEIGHTS)).forward({"data": batch})["ip2"]
    quantized = NumpyRuntime(Net.load(out, WEIGHTS)).forward({"data": batch})["ip2"]
    distance = np.mean(np.linalg.norm(quantized - ip2, axis=1) / np.linalg.norm(ip2, axis=1))
    assert report["final_score"] == pytest.approx(distance, rel=1e-6)
    assert 0 < distance <= 0.05
    # Ranges came from the same images: conv1's input maximum is the brightest pixel * scale.
    assert report["layers"]["conv1"]["max_in"] == pytest.approx(float(batch.max()))


def test_accuracy_needs_labels(fashion_lfw, tmp_path, capsys):
    code = quantize_cli.main(["--model", str(fashion_lfw / "deploy.prototxt"), "--weights",
                              str(WEIGHTS), "--model_quantized", str(tmp_path / "q.prototxt"),
                              "--trimming_mode", "dynamic_fixed_point", "--images",
                              str(_images_folder(fashion_lfw)), "--gray", "--scale", SCALE])
    assert code == 2
    assert "--images carry no labels: use --score agreement, l2 or cosine" in capsys.readouterr().err


def test_lfw_scored_search_writes_both_lfw_reports(fashion_lfw, tmp_path, capsys):
    _run(tmp_path, "--model", fashion_lfw / "deploy.prototxt", "--score", "lfw",
         "--feature_blob", "ip1", "--lfw_root", fashion_lfw / "lfw", "--pairs",
         fashion_lfw / "pairs.txt", "--gray", "--scale", SCALE, "--error_margin", "3",
         "--integer_length", "safe", "--report", tmp_path / "r")
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["score_kind"] == "lfw" and report["within_margin"] is True
    assert "within the margin" in out
    float_lfw = json.loads((tmp_path / "r" / "lfw_float" / "report.json").read_text())
    ours = json.loads((tmp_path / "r" / "lfw_quantized" / "report.json").read_text())
    assert float_lfw["mean_accuracy"] == pytest.approx(report["float_score"])
    assert ours["mean_accuracy"] == pytest.approx(report["final_score"])
    assert (tmp_path / "r" / "lfw_quantized" / "roc.png").is_file()
    # The float figure equals tools/evaluate_lfw's on the same tree (its own code path).
    from ristretto_py.cli import evaluate_lfw
    assert evaluate_lfw.main(["--model", str(fashion_lfw / "deploy.prototxt"), "--weights",
                              str(WEIGHTS), "--feature_blob", "ip1", "--lfw_root",
                              str(fashion_lfw / "lfw"), "--pairs", str(fashion_lfw / "pairs.txt"),
                              "--gray", "--scale", SCALE, "--quiet"]) == 0
    assert f"accuracy = {float_lfw['mean_accuracy']:.4f}" in capsys.readouterr().out


# -- given widths ----------------------------------------------------------------------------

def test_uniform_widths_are_written_and_scored(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = _run(tmp_path, "--model", MODEL, "--widths", "conv=8,fc=8,act=8", "--iterations", "3",
               "--bias", "shared", "--report", tmp_path / "r")
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["chosen"] == {"conv_params": 8, "fc_params": 8, "activations": 8}
    assert report["candidates"] == [] and (tmp_path / "r" / "score_vs_bits.png").is_file()
    printed = capsys.readouterr().out
    net = caffe_io.read_net_text(out)
    layers = {l.name: l for l in net.layer}
    weights = Net.load(MODEL, WEIGHTS)
    for name in ("conv1", "conv2", "ip1", "ip2"):
        q = layers[name].quantization_param
        assert (q.bw_params, q.bw_layer_in, q.bw_layer_out) == (8, 8, 8)
        # --widths uses the safe rule by default; with the shared bias format the bias counts:
        # il = floor(log2 max(|w|, |b|)) + 2.
        blobs = weights.layer(name).blobs
        largest = max(float(np.abs(blobs[0]).max()), float(np.abs(blobs[1]).max()))
        assert q.fl_params == 8 - (int(np.floor(np.log2(largest))) + 2)
    score = float(printed.split("Dynamic fixed point net: ")[1].split()[0])
    from ristretto_py.evaluators.classification import evaluate_classification
    expected = evaluate_classification(Net.load(out, WEIGHTS), 3).score()
    assert score == pytest.approx(float(expected), abs=5e-7)


@pytest.mark.parametrize("text, message", [
    ("conv=8,fc=x", "'x' is not a bit width"),
    ("conv1=8", "per layer give WEIGHTS/ACTIVATIONS"),
    ("conv=40", "40 bits is out of range"),
    ("nolayer=8/8", "--widths names nolayer, not a Convolution or InnerProduct layer"),
])
def test_bad_widths_are_one_line(tmp_path, capsys, monkeypatch, text, message):
    monkeypatch.chdir(ROOT)
    code = quantize_cli.main(["--model", str(MODEL), "--weights", str(WEIGHTS),
                              "--model_quantized", str(tmp_path / "q.prototxt"), "--trimming_mode",
                              "dynamic_fixed_point", "--widths", text, "--iterations", "1",
                              "--quiet"])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "q.prototxt").exists()


def test_per_layer_report_fed_back_gives_the_same_net_and_caps_hold(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    searched = _run(tmp_path, "--model", MODEL, "--search", "per_layer", "--iterations", "3",
                    "--error_margin", "1", "--max_weight_bits", "4", "--max_act_bits", "8",
                    "--report", tmp_path / "r")
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert all(c["weights"] <= 4 and c["activations"] <= 8 for c in report["chosen"].values())
    again = tmp_path / "again"
    again.mkdir()
    given = _run(again, "--model", MODEL, "--widths", tmp_path / "r" / "report.json",
                 "--iterations", "3")
    assert given.read_text() == searched.read_text()
    (tmp_path / "w.yaml").write_text("".join(f"{name}:\n  weights: {c['weights']}\n  activations: "
                                             f"{c['activations']}\n"
                                             for name, c in report["chosen"].items()))
    from_yaml = _run(tmp_path / "r", "--model", MODEL, "--widths", tmp_path / "w.yaml",
                     "--iterations", "3")
    assert from_yaml.read_text() == searched.read_text()


# -- calibration data ----------------------------------------------------------------------

def test_calibration_lmdb_replaces_the_train_source(tmp_path, monkeypatch):
    import lmdb

    from ristretto_py.protos import caffe_pb2
    monkeypatch.chdir(ROOT)
    default = _run(tmp_path, "--model", MODEL, "--iterations", "2", "--error_margin", "50")
    written = {}
    for name in ("fashion_train_lmdb", "fashion_test_lmdb"):
        folder = tmp_path / name
        folder.mkdir()
        written[name] = _run(folder, "--model", MODEL, "--iterations", "2", "--error_margin",
                             "50", "--calibration_data", EXAMPLE / name, "--report", folder / "r")
        ranges = json.loads((folder / "r" / "report.json").read_text())["layers"]
        # 10 batches of the TRAIN Data layer (64 records) through its transform (scale 1/256):
        # conv1's input maximum is the brightest of the first 640 records' pixels / 256.
        env = lmdb.open(str(EXAMPLE / name), readonly=True, lock=False)
        with env.begin() as txn:
            pixels = [np.frombuffer(caffe_pb2.Datum.FromString(v).data, np.uint8).max()
                      for _, (_, v) in zip(range(640), txn.cursor())]
        env.close()
        assert ranges["conv1"]["max_in"] == pytest.approx(max(pixels) * float(SCALE))
    # The TRAIN Data layer reads fashion_train_lmdb anyway: the same net as without the flag.
    assert written["fashion_train_lmdb"].read_text() == default.read_text()


def test_activation_quantizers_without_a_weight_method(tmp_path, fashion_lfw):
    out_model = tmp_path / "a.prototxt"
    code = quantize_weights_cli.main(["--model", str(fashion_lfw / "deploy.prototxt"),
                                      "--weights", str(WEIGHTS), "--activations", "linear:8",
                                      "--out_model", str(out_model), "--calibration_data",
                                      str(_images_folder(fashion_lfw)), "--gray", "--scale", SCALE])
    assert code == 0
    net = Net.load(out_model, WEIGHTS)
    assert [l.type for l in net.layers].count("ActivationQuantize") == 4
    original = Net.load(fashion_lfw / "deploy.prototxt", WEIGHTS)
    for layer in original.layers:          # the weights are untouched
        for a, b in zip(layer.blobs, net.layer(layer.name).blobs):
            np.testing.assert_array_equal(a, b)


def test_hwce_search_and_analyze_take_the_label_free_scores(fashion_lfw, tmp_path, capsys):
    deploy, photos = fashion_lfw / "deploy.prototxt", _images_folder(fashion_lfw)
    images = ["--images", str(photos), "--gray", "--scale", SCALE]
    assert quantize_cli.main(["--model", str(deploy), "--weights", str(WEIGHTS),
                              "--model_quantized", str(tmp_path / "h.prototxt"),
                              "--trimming_mode", "hwce", "--score", "agreement", "--error_margin",
                              "5", *images, "--report", str(tmp_path / "h"), "--quiet"]) == 0
    report = json.loads((tmp_path / "h" / "report.json").read_text())
    assert report["score_kind"] == "agreement" and report["float_score"] == 1.0
    assert all(c["score"] <= 1.0 for c in report["candidates"])
    from ristretto_py.cli import analyze as analyze_cli
    capsys.readouterr()
    assert analyze_cli.main(["--model", str(deploy), "--weights", str(WEIGHTS), "--score", "l2",
                             "--score_blob", "ip2", *images, "--widths", "4", "--parts", "weights",
                             "--report", str(tmp_path / "a"), "--quiet"]) == 0
    rows = json.loads((tmp_path / "a" / "sensitivity.json").read_text())
    assert rows["float_score"] == 0.0 and len(rows["rows"]) == 4
    # each row's score is its distance to float at ip2, which the table also reports
    for row in rows["rows"]:
        assert row["score"] > 0 and row["distances"]["ip2"] > 0


def test_weights_rounded_to_zero_are_reported_and_warned(tmp_path, monkeypatch):
    import subprocess
    import sys
    monkeypatch.chdir(ROOT)
    out = tmp_path / "q.prototxt"
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "quantize"), "--model",
                             str(MODEL), "--weights", str(WEIGHTS), "--model_quantized", str(out),
                             "--trimming_mode", "dynamic_fixed_point", "--widths", "conv=1",
                             "--bias", "shared", "--iterations", "1", "--report",
                             str(tmp_path / "r")], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    layers = json.loads((tmp_path / "r" / "report.json").read_text())["layers"]
    written = {l.name: l.quantization_param for l in caffe_io.read_net_text(out).layer}
    for name in ("conv1", "conv2"):
        # 1 bit: the values -2^-fl and 0; by hand, a weight survives when x * 2^fl rounds
        # (half to even) to -1 after clamping to [-1, 0].
        w = Net.load(MODEL, WEIGHTS).layer(name).blobs[0].astype(np.float64)
        fl = written[name].fl_params
        kept = np.rint(np.clip(w * 2.0 ** fl, -1, 0)) != 0
        expected = 1 - np.count_nonzero(kept) / np.count_nonzero(w)
        assert layers[name]["zeroed_weights"] == pytest.approx(expected)
        assert expected > 0.5
    assert layers["ip1"]["zeroed_weights"] is None or layers["ip1"]["zeroed_weights"] < 0.01
    warning = [l for l in result.stderr.splitlines() if "warning" in l]
    assert len(warning) == 1 and warning[0].startswith(
        "quantize: warning: weights rounded to 0 by their layer's format: conv1 ")
    assert "conv2" in warning[0] and "--per_channel" in warning[0]
