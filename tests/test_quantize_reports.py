"""Reports that agree with themselves: the figures printed, written to report.json and to
report.md are the same; a final net outside the margin is said so in words; the plot stars the
chosen widths and draws the final score; every --report writes the same core files."""
import json
import re

import numpy as np
import pytest

from ristretto_py import Net
from ristretto_py.cli import kmeans as kmeans_cli
from ristretto_py.cli import quantize as quantize_cli
from ristretto_py.passes.quantize_report import score_figure

from test_cli import ROOT

EXAMPLE = ROOT / "examples" / "lenet_fashion"
MODEL, WEIGHTS = EXAMPLE / "lenet_train_test.prototxt", EXAMPLE / "lenet_fashion.caffemodel"
CORE = {"trimming_mode", "settings", "float_score", "final_score", "within_margin",
        "margin_verdict", "candidates", "chosen", "weight_bytes_before", "weight_bytes_after",
        "forward_batches", "layers"}


@pytest.fixture(scope="module")
def main_job(tmp_path_factory):
    """The README's main job (its 10 iterations), run once for the module."""
    import contextlib
    import io
    import os
    tmp = tmp_path_factory.mktemp("main_job")
    out = io.StringIO()
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        with contextlib.redirect_stdout(out):
            code = quantize_cli.main(["--model", str(MODEL), "--weights", str(WEIGHTS),
                                      "--model_quantized", str(tmp / "q.prototxt"),
                                      "--trimming_mode", "dynamic_fixed_point", "--error_margin",
                                      "1", "--iterations", "10", "--report", str(tmp / "r"),
                                      "--quiet"])
    finally:
        os.chdir(cwd)
    assert code == 0
    return out.getvalue(), json.loads((tmp / "r" / "report.json").read_text()), \
        (tmp / "r" / "report.md").read_text()


def test_forward_batches_agree_everywhere(main_job):
    stdout, report, markdown = main_job
    printed = int(re.search(r"\((\d+) forward batches of 100 images", stdout).group(1))
    # 1 float baseline + 4 + 4 + 1 candidates + the combined net = 11 evaluations of 10
    # batches, 10 TRAIN batches for the ranges, and the saturation pass over the 10 batches.
    assert printed == 11 * 10 + 10 + 10 == report["forward_batches"]
    assert f"- forward batches run: {printed}\n" in markdown


def test_a_net_outside_the_margin_is_said_so(main_job):
    stdout, report, markdown = main_job
    # Ristretto's known defect on this net: 16-bit activations fail, the written 32-bit
    # activation net scores 0.866, below 0.903 - 0.01.
    sentence = ("outside the margin: 0.866 < 0.893 (float 0.903 minus the 1-point margin); "
                "--integer_length safe (no activation clips at its observed maximum) or "
                "--search per_layer finds a net that keeps it")
    assert sentence in stdout.splitlines()
    assert report["within_margin"] is False and report["margin_verdict"] == sentence
    assert f"- final score: 0.8660 ({sentence})" in markdown
    assert CORE <= set(report)


def test_the_plot_stars_the_chosen_widths_and_draws_the_final_score(main_job):
    _, report, _ = main_job
    figure = score_figure(report)
    axes = figure.axes[0]
    labels = axes.get_legend_handles_labels()[1]
    assert "final net: 0.866 (outside the margin)" in labels
    assert "Dynamic fixed point CONV weights (chosen: 4 bits)" in labels
    assert "Dynamic fixed point layer activations (chosen: 32 bits)" in labels
    stars = {line.get_gid(): tuple(np.ravel(line.get_xydata())) for line in axes.get_lines()
             if line.get_gid()}
    scores = {(c["stage"], c["bit_width"]): c["score"] for c in report["candidates"]}
    assert stars == {"chosen conv_params": (4, scores["conv_params", 4]),
                     "chosen fc_params": (4, scores["fc_params", 4])}   # activations: none passed
    final = [line for line in axes.get_lines() if line.get_label().startswith("final net")]
    assert final[0].get_ydata()[0] == pytest.approx(report["final_score"])


def test_safe_rule_points_elsewhere_when_it_misses(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    code = quantize_cli.main(["--model", str(MODEL), "--weights", str(WEIGHTS),
                              "--model_quantized", str(tmp_path / "q.prototxt"),
                              "--trimming_mode", "dynamic_fixed_point", "--error_margin", "1",
                              "--iterations", "10", "--integer_length", "safe", "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    final = float(out.split("layer activations:\nAccuracy: ")[1].split()[0])
    assert final < 0.893            # the combined net misses the margin on this net
    verdict = [line for line in out.splitlines() if "the margin" in line]
    assert verdict == [f"outside the margin: {final:g} < 0.893 (float 0.903 minus the 1-point "
                       "margin); --search per_layer looks for a net that keeps it layer by layer"]


def test_kmeans_seed_matters_only_for_the_random_initialisation(tmp_path):
    files = {}
    for init, seed in (("linear", 7), ("linear", 8), ("random", 7), ("random", 8), ("random", 7)):
        path = tmp_path / f"{init}-{seed}-{len(files)}.caffemodel"
        assert kmeans_cli.main(["--model", str(MODEL), "--weights", str(WEIGHTS), "--clusters",
                                "8", "--layers", "conv1", "--init", init, "--seed", str(seed),
                                "--out_weights", str(path), "--quiet"]) == 0
        files[init, seed, len(files)] = path.read_bytes()
    assert files["linear", 7, 0] == files["linear", 8, 1]      # deterministic start
    assert files["random", 7, 2] == files["random", 7, 4]      # same seed, same file
    assert files["random", 7, 2] != files["random", 8, 3]
    # Each start gives a valid 8-centroid clustering of conv1 (and leaves the rest alone).
    clustered = Net.load(MODEL, tmp_path / "random-8-3.caffemodel")
    assert len(np.unique(clustered.layer("conv1").blobs[0])) == 8
    np.testing.assert_array_equal(clustered.layer("conv2").blobs[0],
                                  Net.load(MODEL, WEIGHTS).layer("conv2").blobs[0])
    help_text = kmeans_cli.build_parser().format_help()
    assert "deterministic" in help_text and "random" in help_text
