"""LFW pair verification on an LFW-format tree built from real Fashion-MNIST images (class =
identity; the bundled example's records), features from the example LeNet's ip1, checked against
an independent computation: OpenCV's Caffe importer for the features, brute-force thresholds,
scikit-learn's ROC AUC."""
import json
import pathlib

import cv2
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from ristretto_py.cli import evaluate_lfw
from ristretto_py.evaluators import lfw

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "lenet_fashion"


@pytest.fixture(scope="module")
def tree(fashion_lfw):
    return fashion_lfw


def _args(tree, *extra):
    return ["--model", str(tree / "deploy.prototxt"), "--weights", str(EXAMPLE / "lenet_fashion.caffemodel"),
            "--feature-blob", "ip1", "--lfw-root", str(tree / "lfw"), "--pairs", str(tree / "pairs.txt"),
            "--gray", "--scale", "0.00390625", "--quiet", *extra]


def _independent(tree, pairs):
    net = cv2.dnn.readNetFromCaffe(str(tree / "deploy.prototxt"), str(EXAMPLE / "lenet_fashion.caffemodel"))

    def feature(person):
        image = cv2.imread(lfw.image_path(str(tree / "lfw"), *person), cv2.IMREAD_GRAYSCALE)
        net.setInput(image.astype(np.float32)[None, None] * np.float32(0.00390625))
        return net.forward("relu1").ravel().astype(np.float64)   # blob ip1 after the in-place ReLU
    d = np.array([np.linalg.norm(feature(p.first) - feature(p.second)) for p in pairs])
    return d, np.array([p.same for p in pairs])


def _brute_force_threshold(d, s):
    best, best_t = -1, None
    for t in [-np.inf] + sorted(set(d.tolist())):
        correct = np.sum((d <= t) == s)
        if correct > best:
            best, best_t = correct, t
    return best_t


@pytest.mark.parametrize("protocol", ["folds", "dev"])
def test_verification_matches_an_independent_computation(tree, tmp_path, protocol, capsys):
    extra = ["--protocol", protocol, "--report", str(tmp_path / "r")]
    if protocol == "dev":
        extra += ["--dev", str(tree / "pairsDevTrain.txt")]
    assert evaluate_lfw.main(_args(tree, *extra)) == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    folds = lfw.read_pairs(tree / "pairs.txt")
    data = [_independent(tree, f) for f in folds]
    if protocol == "dev":
        t_dev = _brute_force_threshold(*_independent(tree, lfw.read_dev_pairs(tree / "pairsDevTrain.txt")))
    accuracies = []
    for i, (d, s) in enumerate(data):
        if protocol == "dev":
            t = t_dev
        else:
            t = _brute_force_threshold(np.concatenate([data[j][0] for j in range(10) if j != i]),
                                       np.concatenate([data[j][1] for j in range(10) if j != i]))
        assert report["thresholds"][i] == pytest.approx(t, rel=1e-4)
        accuracies.append(np.mean((d <= t) == s))
    np.testing.assert_allclose(report["fold_accuracies"], accuracies)
    assert report["mean_accuracy"] == pytest.approx(np.mean(accuracies))
    assert report["standard_error"] == pytest.approx(np.std(accuracies, ddof=1) / np.sqrt(10))
    all_d, all_s = np.concatenate([d for d, _ in data]), np.concatenate([s for _, s in data])
    assert report["roc_auc"] == pytest.approx(roc_auc_score(all_s, -all_d), abs=1e-6)
    fpr, tpr, _ = roc_curve(all_s, -all_d, drop_intermediate=False)
    fnr = 1 - tpr
    i = np.argmin(np.abs(fnr - fpr))
    assert report["eer"] == pytest.approx((fpr[i] + fnr[i]) / 2, abs=1e-9)
    assert report["mean_accuracy"] > 0.6        # LeNet features separate Fashion-MNIST classes
    assert (tmp_path / "r" / "roc.png").read_bytes()[:4] == b"\x89PNG"
    assert "accuracy = " in capsys.readouterr().out


def test_bad_inputs_are_one_line_and_exit_2(tree, tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    text = (tree / "pairs.txt").read_text().splitlines()
    bad.write_text("\n".join(text[:3] + ["Coat\tone\t2"] + text[4:]) + "\n")
    cases = [(["--pairs", str(bad)], "line 4"),
             (["--pairs", str(tree / "pairsDevTrain.txt")], "expected 'FOLDS PAIRS'"),
             (["--protocol", "dev"], "--dev"),
             (["--lfw-root", str(tmp_path)], "image missing")]
    short = tmp_path / "short.txt"
    short.write_text("\n".join(["9\t6"] + text[1:]) + "\n")
    cases.append((["--pairs", str(short)], "declares 9 folds"))
    for extra, message in cases:
        args = _args(tree)
        for flag, value in zip(extra[::2], extra[1::2]):
            if flag in args:
                args[args.index(flag) + 1] = value
            else:
                args += [flag, value]
        assert evaluate_lfw.main(args) == 2, extra
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, (extra, err)
