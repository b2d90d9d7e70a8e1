"""``tools/quantize --finetune SOLVER``: Ristretto's workflow (search, fine-tune, score again)
automated, with narrower widths tried under fine-tuning. Checked on the LeNet example with a
short solver: the order of the candidates, the margin rule on the fine-tuned scores, and the
written files, which tools/evaluate (the numpy runtime) scores exactly as the report says."""
import json
import subprocess
import sys

import pytest

from ristretto_py import Net
from test_cli import ROOT
from test_train_tool import MODEL, WEIGHTS, evaluated_accuracy

SOLVER = """net: "replaced.prototxt"
base_lr: 0.0005
momentum: 0.9
lr_policy: "fixed"
display: 0
max_iter: 3
snapshot_prefix: "replaced"
random_seed: 2
solver_mode: CPU
"""
HALVING = {32: 16, 16: 8, 8: 4, 4: 2, 2: 1}


def _quantize(tmp_path, *extra):
    solver = tmp_path / "finetune_solver.prototxt"
    solver.write_text(SOLVER)
    return subprocess.run(
        [sys.executable, str(ROOT / "tools" / "quantize"), "--model", str(MODEL), "--weights",
         str(WEIGHTS), "--model_quantized", str(tmp_path / "q.prototxt"), "--trimming_mode",
         "dynamic_fixed_point", "--iterations", "2", "--error_margin", "1", "--integer_length",
         "safe", "--finetune", str(solver), "--quiet", *map(str, extra)],
        cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_finetune_tries_narrower_widths_and_writes_the_best_fine_tuned_net(tmp_path):
    result = _quantize(tmp_path, "--weights_quantized", tmp_path / "q.caffemodel",
                       "--report", tmp_path / "report")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    rows, floor = report["finetune"], report["score_floor"]
    assert len(rows) >= 4                           # the chosen net, then one try per part at least
    assert rows[0]["passed"] and rows[0]["after"] >= floor
    best = rows[0]
    for row in rows[1:]:
        changed = [k for k in row["widths"] if row["widths"][k] != best["widths"][k]]
        assert len(changed) == 1                    # one part narrower by one halving step
        assert row["widths"][changed[0]] == HALVING[best["widths"][changed[0]]]
        assert row["passed"] == (row["after"] >= floor)
        if row["passed"]:
            best = row
    assert report["chosen"] == best["widths"] and report["final_score"] == best["after"]
    net = Net.load(tmp_path / "q.prototxt")
    conv = next(l for l in net.layers if l.name == "conv2").spec.quantization_param
    assert conv.bw_params == best["widths"]["conv_params"]
    assert conv.bw_layer_out == best["widths"]["activations"]
    accuracy = evaluated_accuracy(tmp_path / "q.prototxt", tmp_path / "q.caffemodel")
    assert accuracy == pytest.approx(best["after"], abs=1e-6)
    assert "Fine-tuning in the loop" in result.stdout and "<- written" in result.stdout


@pytest.mark.parametrize("extra, fragment", [
    ([], "--finetune writes the fine-tuned weights: give --weights_quantized"),
    (["--weights_quantized", "w.caffemodel", "--search", "per_layer"], "not --search per_layer"),
])
def test_finetune_refusals_are_one_line(tmp_path, extra, fragment):
    extra = [str(tmp_path / e) if e.endswith(".caffemodel") else e for e in extra]
    result = _quantize(tmp_path, *extra)
    assert result.returncode == 2 and fragment in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "q.prototxt").exists()
