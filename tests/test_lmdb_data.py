"""The Data layer's feed, as Caffe's DataLayer and DataTransformer prepare batches: raw, float
and encoded Datum records, mean_file (.binaryproto) and mean_value, scale, TEST centre crop,
wrap-around at the end of the database; and corrupt or mismatched databases as clear errors."""
import cv2
import lmdb
import numpy as np
import pytest

from ristretto_py import Net, caffe_io
from ristretto_py.errors import FormatError, NetError
from ristretto_py.evaluators.classification import evaluate_classification
from ristretto_py.lmdb_data import DataLayerFeed
from ristretto_py.lmdb_write import make_datum, write_lmdb
from ristretto_py.protos import caffe_pb2
from conftest import net_param

RNG = np.random.default_rng(3)
IMAGES = [RNG.integers(0, 256, (6, 7, 3), dtype=np.uint8) for _ in range(5)]   # H x W x C, BGR


def _data_net(source, transform="", batch=2, extra=""):
    text = (f'layer {{ name: "data" type: "Data" top: "data" top: "label" '
            f'transform_param {{ {transform} }} data_param {{ source: "{source}" batch_size: {batch} '
            f'backend: LMDB }} }}\n' + extra)
    return Net.from_proto(net_param(text))


def _feed(net):
    return DataLayerFeed(net.source_layers[0], "TEST")


def test_raw_records_with_mean_value_scale_and_centre_crop(tmp_path):
    db = tmp_path / "db"
    write_lmdb(db, [make_datum(image, i) for i, image in enumerate(IMAGES)])
    net = _data_net(db, "scale: 0.5 mean_value: 10 mean_value: 20 mean_value: 30 crop_size: 4")
    assert net.shapes()["data"] == (2, 3, 4, 4)
    feed = _feed(net)
    batches = [feed.next_batch() for _ in range(3)]          # 6 records from 5: wraps around
    feed.close()
    order = [0, 1, 2, 3, 4, 0]
    for b, batch in enumerate(batches):
        for k in range(2):
            image = IMAGES[order[2 * b + k]].astype(np.float32).transpose(2, 0, 1)
            top, left = (6 - 4) // 2, (7 - 4) // 2
            expected = (image - np.array([10, 20, 30], np.float32).reshape(3, 1, 1))[:, top:top + 4, left:left + 4] * 0.5
            np.testing.assert_array_equal(batch["data"][k], expected)
            assert batch["label"][k] == order[2 * b + k]


def test_encoded_and_float_records_and_mean_file(tmp_path):
    db = tmp_path / "enc"
    write_lmdb(db, [make_datum(image, 1, encoded_as=".png") for image in IMAGES[:2]])
    mean = RNG.random((1, 3, 6, 7)).astype(np.float32) * 50
    mean_path = tmp_path / "mean.binaryproto"
    mean_path.write_bytes(caffe_io.array_to_blob(mean).SerializeToString())
    feed = _feed(_data_net(db, f'mean_file: "{mean_path}"'))
    batch = feed.next_batch()
    feed.close()
    decoded = cv2.imdecode(cv2.imencode(".png", IMAGES[0])[1], cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(batch["data"][0], decoded.transpose(2, 0, 1) - mean[0])

    floats = tmp_path / "float"
    values = RNG.standard_normal((2, 4, 5)).astype(np.float32)
    datum = caffe_pb2.Datum(channels=2, height=4, width=5, float_data=values.ravel(), label=3)
    write_lmdb(floats, [datum])
    feed = _feed(_data_net(floats, batch=1))
    np.testing.assert_array_equal(feed.next_batch()["data"][0], values)
    feed.close()


def test_evaluation_of_a_tiny_classifier_on_encoded_records(tmp_path):
    # A 1x1 "classifier" whose scores are the three colour means; labels say which is largest.
    images = [np.full((4, 4, 3), (10 * (i == 0), 10 * (i == 1), 10 * (i == 2)), np.uint8) for i in range(3)]
    labels = [0, 1, 1]    # the third is mislabelled
    db = tmp_path / "db"
    write_lmdb(db, [make_datum(im, lab, ".jpg") for im, lab in zip(images, labels)])
    net = _data_net(db, batch=3, extra=(
        'layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" pooling_param { pool: AVE global_pooling: true } }\n'
        'layer { name: "acc" type: "Accuracy" bottom: "pool" bottom: "label" top: "acc" }'))
    result = evaluate_classification(net, iterations=1)
    assert result.score() == np.float32(2 / 3) and result.images == 3


@pytest.mark.parametrize("setup, message", [
    (lambda p: None, "does not exist"),
    (lambda p: p.mkdir(), "directory that holds no LMDB database"),
    (lambda p: (p.mkdir(), (p / "data.mdb").write_bytes(b"not an lmdb" * 500)),
     "not a readable LMDB"),
    (lambda p: write_lmdb(p, []), "empty"),
])
def test_bad_databases_are_clear_errors(tmp_path, setup, message):
    db = tmp_path / "db"
    setup(db)
    with pytest.raises((FormatError, NetError), match=message):
        _data_net(db).shapes()


def test_a_record_that_is_not_a_datum(tmp_path):
    db = tmp_path / "db"
    env = lmdb.open(str(db), map_size=1 << 20)
    with env.begin(write=True) as txn:
        txn.put(b"00000000", make_datum(IMAGES[0], 0).SerializeToString())
        txn.put(b"00000001", b"\xff\xff\xff garbage")
    env.close()
    feed = _feed(_data_net(db))
    with pytest.raises(FormatError, match="not a Caffe Datum"):
        feed.next_batch()
    feed.close()
