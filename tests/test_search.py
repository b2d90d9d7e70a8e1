"""Sensitivity analysis and the per-layer search on the example: cached (suffix-only) scores equal
full evaluations, distances equal an independent computation, the per-layer model is smaller
than the uniform one and inside the margin, and its file scores what the search reported."""
import json
import pathlib

import numpy as np
import pytest

from ristretto_py import Net
from ristretto_py.cli import analyze as analyze_cli
from ristretto_py.cli import quantize as quantize_cli
from ristretto_py.evaluators.classification import evaluate_classification
from ristretto_py.passes.per_layer_search import per_layer_search
from ristretto_py.passes.ristretto_quantize import RistrettoQuantizer
from ristretto_py.passes.sensitivity import analyze
from ristretto_py.runtime import NumpyRuntime

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODEL = ROOT / "examples" / "lenet_fashion" / "lenet_train_test.prototxt"
WEIGHTS = ROOT / "examples" / "lenet_fashion" / "lenet_fashion.caffemodel"


@pytest.fixture(scope="module")
def searched():
    import os
    here = os.getcwd()
    os.chdir(ROOT)
    try:
        quantizer = RistrettoQuantizer(MODEL, WEIGHTS, 4, "dynamic_fixed_point", 1,
                                       integer_length="safe", progress=False)
        uniform = quantizer.run()
        result, evaluator = per_layer_search(quantizer, uniform)
        return quantizer, uniform, result, evaluator
    finally:
        os.chdir(here)


def test_cached_scores_equal_full_evaluations(searched):
    quantizer, _, _, evaluator = searched
    for config in ({"conv2": (4, 6)}, {"ip1": (3, None), "ip2": (None, 5)}, {"conv1": (2, 8)}):
        score, blobs, _ = evaluator.evaluate(config)
        net = evaluator.net_for(config)
        full = evaluate_classification(net, len(evaluator.batches), batches=evaluator.batches)
        assert score == pytest.approx(float(full.score()), abs=0)
        np.testing.assert_array_equal(blobs[0]["ip2"], NumpyRuntime(net).forward(evaluator.batches[0])["ip2"])


def test_sensitivity_distances(searched):
    _, _, _, evaluator = searched
    rows = analyze(evaluator, (4,), ("weights",))
    assert [r.layer for r in rows] == ["conv1", "conv2", "ip1", "ip2"]
    row = rows[3]
    assert set(row.distances) == {"ip2"}            # only blobs at or after ip2
    net = evaluator.net_for({"ip2": (4, None)})
    expected = []
    for batch, float_blobs in zip(evaluator.batches, evaluator.float_blobs):
        q = NumpyRuntime(net).forward(batch)["ip2"].astype(np.float64)
        expected.append(np.sqrt(((q - float_blobs["ip2"]) ** 2).sum(axis=1)))
    assert row.distances["ip2"] == pytest.approx(np.mean(np.concatenate(expected)), rel=1e-9)
    assert "conv2" in rows[0].distances and "ip2" in rows[0].distances


def test_per_layer_model_is_smaller_inside_the_margin(searched, tmp_path, monkeypatch):
    quantizer, uniform, result, _ = searched
    assert result.score + 0.01 >= result.baseline
    assert result.bytes <= result.uniform_bytes
    assert result.bytes < result.uniform_bytes or result.uniform_score + 0.01 < result.baseline
    front = result.pareto()
    assert all(a.weight_bytes < b.weight_bytes and a.score < b.score for a, b in zip(front, front[1:]))
    # the search caches prefixes: far fewer forward batches than full evaluations would take
    assert quantizer.forward_passes < 10 * (len(result.trials) + len(result.sensitivity)) * 4


def test_cli_per_layer_and_analyze(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "pl.prototxt"
    assert quantize_cli.main(["--model", str(MODEL), "--weights", str(WEIGHTS), "--model_quantized", str(out),
                              "--trimming_mode", "dynamic_fixed_point", "--error_margin", "1",
                              "--iterations", "3", "--search", "per_layer", "--quiet",
                              "--report", str(tmp_path / "r")]) == 0
    report = json.loads((tmp_path / "r" / "pareto.json").read_text())
    assert (tmp_path / "r" / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    # The core files of every quantize report, describing the written per-layer net.
    core = json.loads((tmp_path / "r" / "report.json").read_text())
    assert (tmp_path / "r" / "score_vs_bits.png").read_bytes()[:4] == b"\x89PNG"
    assert core["final_score"] == report["per_layer"]["score"]
    assert core["weight_bytes_after"] == report["per_layer"]["weight_bytes"]
    assert core["weight_bytes_before"] == 4 * sum(
        np.size(b) for layer in Net.load(MODEL, WEIGHTS).layers for b in layer.blobs)
    assert {name: [c["weights"], c["activations"]] for name, c in core["chosen"].items()} == \
        report["per_layer"]["config"]
    assert set(core["layers"]) == set(report["per_layer"]["config"])
    assert all(set(entry["saturation"]) == {"input", "output", "params"}
               for entry in core["layers"].values())
    markdown = (tmp_path / "r" / "report.md").read_text()
    assert f"- final score: {core['final_score']:.4f} ({core['margin_verdict']})" in markdown
    net = Net.load(out, WEIGHTS)
    score = float(evaluate_classification(net, 3).score())
    assert score == pytest.approx(report["per_layer"]["score"], abs=1e-7)
    for name, (bw_params, bw_act) in report["per_layer"]["config"].items():
        q = net.layer(name).spec.quantization_param
        assert (q.bw_params, q.bw_layer_in, q.bw_layer_out) == (bw_params, bw_act, bw_act)
    capsys.readouterr()
    assert analyze_cli.main(["--model", str(MODEL), "--weights", str(WEIGHTS), "--iterations", "2",
                             "--widths", "4", "--parts", "activations", "--score", "agreement",
                             "--quiet", "--report", str(tmp_path / "a")]) == 0
    rows = json.loads((tmp_path / "a" / "sensitivity.json").read_text())
    assert rows["float_score"] == 1.0 and len(rows["rows"]) == 4
    assert (tmp_path / "a" / "sensitivity.png").is_file()
