"""LFW pair verification on an LFW-format tree built from real Fashion-MNIST images (class =
identity; the bundled example's records), features from the example LeNet's ip1, checked against
an independent computation: OpenCV's Caffe importer for the features, brute-force thresholds,
scikit-learn's ROC AUC."""
import json
import pathlib

import cv2
import lmdb
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from ristretto_py import caffe_io
from ristretto_py.cli import evaluate_lfw
from ristretto_py.evaluators import lfw
from ristretto_py.protos import caffe_pb2

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "lenet_fashion"
NAMES = ["Tshirt_Top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
         "Ankle_Boot"]
PER_FOLD = 6


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    base = tmp_path_factory.mktemp("lfw")
    root = base / "lfw"
    counts = {name: 0 for name in NAMES}
    env = lmdb.open(str(EXAMPLE / "fashion_test_lmdb"), readonly=True, lock=False)
    with env.begin() as txn:
        for _, value in txn.cursor():
            datum = caffe_pb2.Datum.FromString(value)
            name = NAMES[datum.label]
            if counts[name] == 20:
                continue
            counts[name] += 1
            image = np.frombuffer(datum.data, np.uint8).reshape(28, 28)
            (root / name).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / name / f"{name}_{counts[name]:04d}.jpg"), image)
    env.close()
    rng = np.random.default_rng(0)

    def matched():
        name = NAMES[rng.integers(10)]
        a, b = rng.choice(np.arange(1, 21), 2, replace=False)
        return f"{name}\t{a}\t{b}"

    def mismatched():
        i, j = rng.choice(10, 2, replace=False)
        return f"{NAMES[i]}\t{rng.integers(1, 21)}\t{NAMES[j]}\t{rng.integers(1, 21)}"
    lines = [f"10\t{PER_FOLD}"]
    for _ in range(10):
        lines += [matched() for _ in range(PER_FOLD)] + [mismatched() for _ in range(PER_FOLD)]
    (base / "pairs.txt").write_text("\n".join(lines) + "\n")
    dev = ["15"] + [matched() for _ in range(15)] + [mismatched() for _ in range(15)]
    (base / "pairsDevTrain.txt").write_text("\n".join(dev) + "\n")
    param = caffe_io.read_net_text(EXAMPLE / "lenet_train_test.prototxt")
    deploy = caffe_pb2.NetParameter(name="deploy")
    deploy.layer.add().CopyFrom(caffe_pb2.LayerParameter(
        name="data", type="Input", top=["data"],
        input_param=caffe_pb2.InputParameter(shape=[caffe_pb2.BlobShape(dim=[1, 1, 28, 28])])))
    for layer in param.layer:
        if layer.type not in ("Data", "Accuracy", "SoftmaxWithLoss"):
            deploy.layer.add().CopyFrom(layer)
    caffe_io.write_net_text(deploy, base / "deploy.prototxt")
    return base


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
