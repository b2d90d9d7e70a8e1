"""The bundled example and the dataset tools: ``tools/evaluate`` against OpenCV run on the same
LMDB records (read here with the lmdb module directly), ``tools/convert_imageset`` against the
images it was given, and the float model's accuracy on all 10,000 Fashion-MNIST test images."""
import gzip
import json
import pathlib

import cv2
import lmdb
import numpy as np
import pytest

from ristretto_py import Net, caffe_io
from ristretto_py.cli import convert_imageset, evaluate
from ristretto_py.lmdb_data import LmdbReader, datum_to_array
from ristretto_py.protos import caffe_pb2
from ristretto_py.runtime import NumpyRuntime

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "lenet_fashion"
MODEL, WEIGHTS = EXAMPLE / "lenet_train_test.prototxt", EXAMPLE / "lenet_fashion.caffemodel"
FASHION = pathlib.Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)


def _deploy(tmp_path, batch):
    """The example as a deploy net (Input instead of Data, no scoring layers) for OpenCV."""
    param = caffe_io.read_net_text(MODEL)
    deploy = caffe_pb2.NetParameter(name="deploy")
    deploy.layer.add().CopyFrom(caffe_pb2.LayerParameter(
        name="data", type="Input", top=["data"],
        input_param=caffe_pb2.InputParameter(shape=[caffe_pb2.BlobShape(dim=[batch, 1, 28, 28])])))
    for layer in param.layer:
        if layer.type not in ("Data", "Accuracy", "SoftmaxWithLoss"):
            deploy.layer.add().CopyFrom(layer)
    path = tmp_path / "deploy.prototxt"
    caffe_io.write_net_text(deploy, path)
    return path


def _records(limit):
    env = lmdb.open(str(EXAMPLE / "fashion_test_lmdb"), readonly=True, lock=False)
    images, labels = [], []
    with env.begin() as txn:
        for _, value in txn.cursor():
            datum = caffe_pb2.Datum.FromString(value)
            images.append(np.frombuffer(datum.data, np.uint8).reshape(datum.channels, datum.height, datum.width))
            labels.append(datum.label)
            if len(images) == limit:
                break
    env.close()
    return np.stack(images).astype(np.float32), np.array(labels)


def test_evaluate_matches_opencv_on_the_same_records(tmp_path, capsys):
    assert evaluate.main(["--model", str(MODEL), "--weights", str(WEIGHTS), "--iterations", "3",
                          "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)["scores"]
    images, labels = _records(300)
    reference = cv2.dnn.readNetFromCaffe(str(_deploy(tmp_path, 300)), str(WEIGHTS))
    reference.setInput(images * np.float32(0.00390625))
    logits = reference.forward()
    top1 = np.mean(logits.argmax(1) == labels)
    top5 = np.mean([label in np.argsort(-row)[:5] for row, label in zip(logits, labels)])
    assert scores["accuracy"] == pytest.approx(top1, abs=1e-6)
    assert scores["accuracy_top5"] == pytest.approx(top5, abs=1e-6)
    assert 0.85 < scores["accuracy"] < 0.95 and scores["loss"] > 0


def test_evaluate_reports_a_missing_lmdb(tmp_path, capsys):
    model = tmp_path / "net.prototxt"
    model.write_text(MODEL.read_text().replace("fashion_test_lmdb", "nowhere_lmdb"))
    assert evaluate.main(["--model", str(model), "--weights", str(WEIGHTS), "--iterations", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "nowhere_lmdb" in err and len(err.splitlines()) == 1


def test_convert_imageset_round_trip(tmp_path, capsys):
    rng = np.random.default_rng(0)
    (tmp_path / "img" / "a").mkdir(parents=True)
    originals = []
    for i in range(5):
        image = rng.integers(0, 256, (7 + i, 9, 3), dtype=np.uint8)
        cv2.imwrite(str(tmp_path / "img" / "a" / f"{i}.png"), image)
        originals.append(image)
    (tmp_path / "list.txt").write_text("".join(f"a/{i}.png {i % 3}\n" for i in range(5)))
    for encoded in ([], ["--encoded"]):
        db = tmp_path / f"db{len(encoded)}"
        assert convert_imageset.main([str(tmp_path / "img"), str(tmp_path / "list.txt"), str(db)] + encoded) == 0
        reader = LmdbReader(str(db))
        for i in range(5):
            key, datum = reader.next_datum()
            assert key.decode() == f"{i:08d}_a/{i}.png" and datum.label == i % 3
            np.testing.assert_array_equal(datum_to_array(datum), originals[i].transpose(2, 0, 1))
        reader.close()
    # resize + gray + shuffle, then a bad list line
    db = tmp_path / "small"
    assert convert_imageset.main([str(tmp_path / "img"), str(tmp_path / "list.txt"), str(db), "--gray",
                                  "--resize_width", "4", "--resize_height", "3", "--shuffle"]) == 0
    reader = LmdbReader(str(db))
    _, datum = reader.next_datum()
    assert (datum.channels, datum.height, datum.width) == (1, 3, 4)
    reader.close()
    (tmp_path / "bad.txt").write_text("a/0.png 1\na/1.png one\n")
    capsys.readouterr()
    assert convert_imageset.main([str(tmp_path / "img"), str(tmp_path / "bad.txt"), str(tmp_path / "x")]) == 2
    assert "line 2" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def _idx(path):
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


@pytest.mark.slow
def test_example_float_model_reaches_88_percent_on_all_test_images(tmp_path):
    assert FASHION.is_dir(), "install Debian's dataset-fashion-mnist (CI does: apt-get install)"
    images = _idx(FASHION / "t10k-images-idx3-ubyte.gz")[:, None].astype(np.float32) * np.float32(0.00390625)
    labels = _idx(FASHION / "t10k-labels-idx1-ubyte.gz")
    net = Net.load(_deploy(tmp_path, 1000), WEIGHTS)
    runtime = NumpyRuntime(net)
    predictions = np.concatenate([runtime.forward({"data": images[i:i + 1000]})["ip2"].argmax(1)
                                  for i in range(0, 10000, 1000)])
    accuracy = float(np.mean(predictions == labels))
    assert accuracy >= 0.88
    # the bundled LMDB holds the first 1,000 of these images, byte for byte
    first, first_labels = _records(1000)
    np.testing.assert_array_equal(first, images[:1000] / np.float32(0.00390625))
    np.testing.assert_array_equal(first_labels, labels[:1000])
