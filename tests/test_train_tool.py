"""``tools/train`` end to end on the bundled example's small LMDBs: Caffe's log, exact resume
from a snapshot, Ristretto's fine-tuning (shadow weights in the snapshot), SIGTERM, the report,
and the bad inputs of the issue (one line, exit 2, snapshots so far kept)."""
import json
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

from ristretto_py import Net, caffe_io
from ristretto_py.cli import quantize as quantize_cli
from ristretto_py.cli import train as train_cli

from test_cli import ROOT

EXAMPLE = ROOT / "examples" / "lenet_fashion"
MODEL, WEIGHTS = EXAMPLE / "lenet_train_test.prototxt", EXAMPLE / "lenet_fashion.caffemodel"
SOLVER = """net: "{net}"
test_iter: 2
test_interval: {test_interval}
base_lr: {base_lr}
momentum: 0.9
weight_decay: 0.0005
lr_policy: "fixed"
display: 5
max_iter: {max_iter}
snapshot: {snapshot}
snapshot_prefix: "{prefix}"
random_seed: 3
solver_mode: {mode}
"""


def solver(tmp_path, name="solver", net=MODEL, max_iter=20, snapshot=10, base_lr=0.001,
           test_interval=5, mode="CPU"):
    path = tmp_path / f"{name}.prototxt"
    path.write_text(SOLVER.format(net=net, max_iter=max_iter, snapshot=snapshot, base_lr=base_lr,
                                  test_interval=test_interval, prefix=tmp_path / name, mode=mode))
    return path


def evaluated_accuracy(model, weights, iterations=2):
    """tools/evaluate's accuracy (the numpy runtime) on the first ``iterations`` test batches."""
    evaluated = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "evaluate"), "--model", str(model), "--weights",
         str(weights), "--iterations", str(iterations), "--json", "--quiet"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr
    return json.loads(evaluated.stdout)["scores"]["accuracy"]


def tool(*argv):
    return subprocess.run([sys.executable, str(ROOT / "tools" / "train"), *map(str, argv)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """The example quantized by tools/quantize (safe lengths): Ristretto layers to fine-tune."""
    out = tmp_path_factory.mktemp("quantized") / "q.prototxt"
    import contextlib
    import io
    import os
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            assert quantize_cli.main(["--model", str(MODEL), "--weights", str(WEIGHTS),
                                      "--model_quantized", str(out), "--trimming_mode",
                                      "dynamic_fixed_point", "--error_margin", "1",
                                      "--iterations", "2", "--integer_length", "safe",
                                      "--quiet"]) == 0
    finally:
        os.chdir(cwd)
    return out


def test_fine_tuning_logs_as_caffe_and_resumes_exactly(tmp_path, quantized):
    full = solver(tmp_path, "full", net=quantized)
    result = tool("--solver", full, "--weights", WEIGHTS, "--quiet", "--report", tmp_path / "r")
    assert result.returncode == 0, result.stderr
    log = result.stdout.splitlines()
    assert "Iteration 0, Testing net (#0)" in log
    assert re.search(r"^    Test net output #0: accuracy = 0\.\d+$", result.stdout, re.M)
    assert re.search(r"^    Test net output #2: loss = [\d.]+ \(\* 1 = [\d.]+ loss\)$", result.stdout, re.M)
    assert re.search(r"^Iteration 5 \([\d.]+ iter/s, [\d.]+s/5 iters\), loss = [\d.]+$", result.stdout, re.M)
    assert "Iteration 5, lr = 0.001" in log
    # Caffe's log ends with its last line; the quantization table of the Ristretto layers follows.
    done = log.index("Optimization Done.")
    assert log[done + 1].startswith("layer ") and log[-1].startswith("weights: ")
    assert re.match(r"conv1 +DFP \d+-bit", log[done + 2])
    report = json.loads((tmp_path / "r" / "train.json").read_text())
    assert [e["iter"] for e in report["train"]] == [0, 5, 10, 15]
    assert [e["iter"] for e in report["test"]] == [0, 5, 10, 15, 20]
    assert (tmp_path / "r" / "curves.png").read_bytes()[:4] == b"\x89PNG"
    # Resume from the iteration-10 snapshot: the same final weights, byte for byte.
    part = solver(tmp_path, "part", net=quantized)
    result = tool("--solver", part, "--snapshot", tmp_path / "full_iter_10.solverstate", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "(iteration 10)" in result.stdout
    assert (tmp_path / "part_iter_20.caffemodel").read_bytes() == \
        (tmp_path / "full_iter_20.caffemodel").read_bytes()
    assert (tmp_path / "part_iter_20.solverstate").read_bytes() != b""


def test_snapshots_hold_the_shadow_weights(tmp_path, quantized):
    path = solver(tmp_path, net=quantized, max_iter=5, snapshot=5, test_interval=0)
    path.write_text(path.read_text().replace("test_iter: 2\n", ""))
    assert train_cli.main(["--solver", str(path), "--weights", str(WEIGHTS), "--quiet"]) == 0
    tuned = Net.load(quantized, tmp_path / "solver_iter_5.caffemodel", phase="TRAIN")
    fields = {l.name: l.quantization_param for l in caffe_io.read_net_text(quantized).layer}
    for name in ("conv1", "ip1"):
        weights = tuned.layer(name).blobs[0].astype(np.float64)
        step = 2.0 ** -fields[name].fl_params
        # Fine-tuning moved the full-precision weights, which are not on the format's grid.
        off_grid = np.abs(weights / step - np.round(weights / step)) > 1e-6
        assert off_grid.mean() > 0.5
        assert not np.array_equal(weights, Net.load(MODEL, WEIGHTS).layer(name).blobs[0])


def test_sigterm_writes_a_snapshot_and_stops(tmp_path):
    path = solver(tmp_path, max_iter=100000, snapshot=0, test_interval=0)
    path.write_text(path.read_text().replace("test_iter: 2\n", ""))
    process = subprocess.Popen([sys.executable, str(ROOT / "tools" / "train"), "--solver",
                                str(path), "--weights", str(WEIGHTS), "--quiet"], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in process.stdout:
            if line.startswith("Iteration 5"):
                break
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 0, err
    stopped = re.search(r"SIGTERM: snapshot written, training stopped at iteration (\d+)", out)
    assert stopped, out
    iteration = int(stopped.group(1))
    assert (tmp_path / f"solver_iter_{iteration}.caffemodel").is_file()
    assert (tmp_path / f"solver_iter_{iteration}.solverstate").is_file()


def _one_line(result, *fragments):
    lines = result.stderr.splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("train: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_a_diverging_loss_names_the_iteration_and_the_layer(tmp_path):
    path = solver(tmp_path, base_lr=1e6, max_iter=200, snapshot=1, test_interval=0)
    path.write_text(path.read_text().replace("test_iter: 2\n", ""))
    result = tool("--solver", path, "--weights", WEIGHTS, "--quiet")
    _one_line(result, "the loss is", "at iteration", "is the first whose output")
    iteration = int(re.search(r"at iteration (\d+)", result.stderr).group(1))
    assert iteration >= 1
    # the snapshots written before the failure stay
    assert (tmp_path / f"solver_iter_{iteration}.caffemodel").is_file()


def test_nets_that_cannot_train_are_one_line(tmp_path):
    no_loss = tmp_path / "no_loss.prototxt"
    no_loss.write_text(MODEL.read_text().replace(
        'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }', ""))
    _one_line(tool("--solver", solver(tmp_path, net=no_loss), "--weights", WEIGHTS),
              "the TRAIN net has no loss")
    missing = solver(tmp_path, "missing", net=tmp_path / "absent.prototxt")
    _one_line(tool("--solver", missing), "net: no such file")
    small = tmp_path / "small_net.prototxt"
    small.write_text(MODEL.read_text().replace("batch_size: 64", "batch_size: 1000"))
    _one_line(tool("--solver", solver(tmp_path, "small", net=small), "--weights", WEIGHTS),
              "holds 640", "fewer than one batch of 1000")
    _one_line(tool("--solver", solver(tmp_path), "--weights", WEIGHTS, "--snapshot",
                   tmp_path / "x.solverstate"), "not both")


def test_an_out_of_range_label_is_named(tmp_path):
    from ristretto_py.lmdb_write import make_datum, write_lmdb
    db = tmp_path / "db"
    write_lmdb(db, [make_datum(np.full((28, 28), i, np.uint8), 12 if i == 70 else i % 10)
                    for i in range(128)])
    net = tmp_path / "net.prototxt"
    net.write_text(MODEL.read_text().replace("examples/lenet_fashion/fashion_train_lmdb", str(db)))
    path = solver(tmp_path, net=net, test_interval=0)
    path.write_text(path.read_text().replace("test_iter: 2\n", ""))
    _one_line(tool("--solver", path, "--weights", WEIGHTS, "--quiet"),
              "layer 'loss'", "label 12 is out of range for 10 classes (iteration 1)")


def test_gpu_mode_without_a_gpu_says_so(tmp_path):
    import torch
    path = solver(tmp_path, max_iter=2, snapshot=0, test_interval=0, mode="GPU")
    path.write_text(path.read_text().replace("test_iter: 2\n", "").replace(
        "snapshot: 0\n", "snapshot: 0\nsnapshot_after_train: false\n"))
    result = tool("--solver", path, "--weights", WEIGHTS, "--quiet")
    assert result.returncode == 0, result.stderr
    if not torch.cuda.is_available():
        assert "torch finds no CUDA device here; training on the CPU" in result.stderr
        assert "on cpu" in result.stdout


def test_qat_activations_trains_and_its_test_score_is_what_the_numpy_runtime_gives(
        tmp_path, quantized):
    """``--qat activations`` and ``--frozen_bn`` on the command line; the trained snapshot, run
    by ``tools/evaluate`` (the numpy runtime) on the same test batches, scores exactly what the
    training engine's last test pass printed."""
    path = solver(tmp_path, "qat", net=quantized, max_iter=10, snapshot=10, test_interval=10)
    result = tool("--solver", path, "--weights", WEIGHTS, "--qat", "activations", "--frozen_bn",
                  "--quiet")
    assert result.returncode == 0, result.stderr
    assert "trimmed in TRAIN: activations; BatchNorm frozen" in result.stdout
    engine = re.findall(r"Test net output #0: accuracy = ([\d.]+)", result.stdout)[-1]
    accuracy = evaluated_accuracy(quantized, tmp_path / "qat_iter_10.caffemodel")
    assert float(engine) == pytest.approx(accuracy, abs=1e-6)       # 200 images: same hits
    bad = tool("--solver", path, "--qat", "inputs")
    assert bad.returncode == 2 and "--qat" in bad.stderr
