"""The training feed (``ristretto_py.train.data.TrainFeed``): TRAIN crops and flips drawn in
Caffe's order from a seeded generator (checked by hand and by locating each crop in its
source image), determinism, TEST batches equal to the evaluation feed's, wrapping without
reopening the database, ImageData on a folder of real Fashion-MNIST images (checked against
OpenCV), shuffling, errors raised in the prefetch thread, close() and the memory check."""
import gc
import subprocess
import sys
import threading
import time

import cv2
import lmdb
import numpy as np
import pytest

from ristretto_py import Net, caffe_io, lmdb_data, memory_budget
from ristretto_py.errors import FormatError, NetError, ResourceError
from ristretto_py.lmdb_data import DataLayerFeed
from ristretto_py.lmdb_write import make_datum, write_lmdb
from ristretto_py.protos import caffe_pb2
from ristretto_py.train.data import TrainFeed
from conftest import EXAMPLE, net_param


@pytest.fixture(scope="module")
def fashion():
    """The first 40 records of the example's training LMDB: (28 x 28 uint8 image, label),
    read with lmdb and the Datum message directly."""
    images = []
    env = lmdb.open(str(EXAMPLE / "fashion_train_lmdb"), readonly=True, lock=False)
    with env.begin() as txn:
        for _, value in txn.cursor():
            datum = caffe_pb2.Datum.FromString(value)
            assert (datum.channels, datum.height, datum.width) == (1, 28, 28)
            images.append((np.frombuffer(datum.data, np.uint8).reshape(28, 28).copy(),
                           datum.label))
            if len(images) == 40:
                break
    env.close()
    return images


def _layer(text, phase="TRAIN"):
    return Net.from_proto(net_param(text), phase=phase).source_layers[0]


def _data_layer(db, transform="", batch=4, phase="TRAIN", data_extra=""):
    return _layer(f'layer {{ name: "data" type: "Data" top: "data" top: "label" '
                  f'transform_param {{ {transform} }} data_param {{ source: "{db}" '
                  f'batch_size: {batch} backend: LMDB {data_extra} }} }}', phase)


def _image_layer(listfile, param="", transform="", batch=3, phase="TRAIN"):
    return _layer(f'layer {{ name: "images" type: "ImageData" top: "data" top: "label" '
                  f'transform_param {{ {transform} }} image_data_param {{ source: "{listfile}" '
                  f'batch_size: {batch} {param} }} }}', phase)


def _db(path, images, encoded_as=None):
    """An LMDB of (H x W [x C] image, label) pairs; keys 00000000, 00000001, ..."""
    write_lmdb(path, [make_datum(image, label, encoded_as) for image, label in images])
    return path


@pytest.fixture
def left_over(tmp_path):
    """A function: the feed threads started during the test that still run, and the LMDB
    environments under tmp_path still open (other tests' leftovers do not count)."""
    before = set(threading.enumerate())
    root = str(tmp_path.resolve())

    def check():
        threads = [t for t in threading.enumerate()
                   if t.name.startswith("TrainFeed") and t not in before]
        return threads, [path for path in lmdb_data._environments if path.startswith(root)]
    return check


# -- TRAIN transforms ------------------------------------------------------------------------
def test_train_crops_and_flips_follow_the_documented_draws(tmp_path, fashion):
    db = _db(tmp_path / "db", fashion[:8])
    layer = _data_layer(db, "scale: 0.5 mean_value: 33 crop_h: 20 crop_w: 24 mirror: true")
    with TrainFeed(layer, "TRAIN", seed=7) as feed:
        batches = [feed.next_batch() for _ in range(2)]
    assert feed.shapes == {"data": (4, 1, 20, 24), "label": (4,)}
    # by hand: per image the mirror bit, then the top and the left offsets
    rng = np.random.default_rng(7)
    flips, offsets = [], []
    for index, (image, label) in enumerate(fashion[:8]):
        flip = rng.integers(2)
        top, left = rng.integers(28 - 20 + 1), rng.integers(28 - 24 + 1)
        expected = (image[top:top + 20, left:left + 24].astype(np.float32) - np.float32(33)) \
            * np.float32(0.5)
        if flip:
            expected = expected[:, ::-1]
        batch = batches[index // 4]
        np.testing.assert_array_equal(batch["data"][index % 4, 0], expected)
        assert batch["label"][index % 4] == label
        flips.append(int(flip))
        offsets.append((int(top), int(left)))
    assert 0 < sum(flips) < 8 and len(set(offsets)) > 1     # the draws do vary


def test_train_mean_file_is_taken_at_the_uncropped_position(tmp_path, fashion):
    # three-channel images from the real ones; mean subtracted before cropping, by hand
    colour = [(np.dstack([image, 255 - image, image // 2]), label)
              for image, label in fashion[:4]]
    db = _db(tmp_path / "db", colour)
    mean = np.random.default_rng(0).random((1, 3, 28, 28)).astype(np.float32) * 100
    (tmp_path / "mean.binaryproto").write_bytes(caffe_io.array_to_blob(mean).SerializeToString())
    layer = _data_layer(db, f'mean_file: "{tmp_path / "mean.binaryproto"}" crop_size: 25 '
                        'mirror: true scale: 0.25')
    with TrainFeed(layer, "TRAIN", seed=11) as feed:
        batch = feed.next_batch()
    rng = np.random.default_rng(11)
    for index, (image, _) in enumerate(colour):
        flip, top, left = rng.integers(2), rng.integers(4), rng.integers(4)
        whole = (image.transpose(2, 0, 1).astype(np.float32) - mean[0]) * np.float32(0.25)
        expected = whole[:, top:top + 25, left:left + 25]
        np.testing.assert_array_equal(batch["data"][index],
                                      expected[:, :, ::-1] if flip else expected)


def test_random_offsets_cover_every_valid_window_and_both_flips(tmp_path):
    # noise images, so that each output matches exactly one window of its source
    noise = np.random.default_rng(1).integers(0, 256, (10, 10, 12), dtype=np.uint8)
    db = _db(tmp_path / "db", [(image, index) for index, image in enumerate(noise)])
    seen = set()
    with TrainFeed(_data_layer(db, "crop_h: 6 crop_w: 7 mirror: true", batch=10), "TRAIN",
                   seed=2) as feed:
        for _ in range(40):
            batch = feed.next_batch()
            for output, label in zip(batch["data"][:, 0], batch["label"]):
                source = noise[int(label)].astype(np.float32)
                found = [(top, left, flip) for top in range(5) for left in range(6)
                         for flip in (0, 1)
                         if np.array_equal(source[top:top + 6, left:left + 7][:, ::-1]
                                           if flip else source[top:top + 6, left:left + 7],
                                           output)]
                assert len(found) == 1
                seen.add(found[0])
    assert seen == {(top, left, flip) for top in range(5) for left in range(6) for flip in (0, 1)}


def test_same_seed_same_batches_other_seed_other_crops(tmp_path, fashion):
    db = _db(tmp_path / "db", fashion[:12])
    layer = _data_layer(db, "crop_size: 22 mirror: true scale: 0.00390625", batch=5)

    def run(seed):
        with TrainFeed(layer, "TRAIN", seed=seed) as feed:
            return [feed.next_batch() for _ in range(6)]

    first, again, other = run(3), run(3), run(4)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a["data"], b["data"])
        np.testing.assert_array_equal(a["label"], b["label"])
    assert any(not np.array_equal(a["data"], b["data"]) for a, b in zip(first, other))
    # the order of the records does not depend on the seed (Caffe does not shuffle a Data layer)
    assert all(np.array_equal(a["label"], b["label"]) for a, b in zip(first, other))


# -- TEST phase, wrapping --------------------------------------------------------------------
@pytest.mark.parametrize("mirror, encoded", [("false", None), ("true", None),
                                             ("false", ".jpg"), ("true", ".png")])
def test_test_phase_is_the_evaluation_feed(tmp_path, fashion, mirror, encoded):
    db = _db(tmp_path / "db", fashion[:10], encoded)
    layer = _data_layer(db, f"crop_size: 24 mean_value: 70 scale: 0.1 mirror: {mirror}",
                        batch=4, phase="TEST")
    reference = DataLayerFeed(layer, "TEST", seed=5)
    with TrainFeed(layer, "TEST", seed=5) as feed:
        for step in range(5):                       # 20 images from 10: wraps twice
            ours, theirs = feed.next_batch(), reference.next_batch()
            np.testing.assert_array_equal(ours["data"], theirs["data"])
            np.testing.assert_array_equal(ours["label"], theirs["label"])
            if mirror == "false" and not encoded:   # centre crop, by hand
                for k in range(4):
                    image, label = fashion[(4 * step + k) % 10]
                    expected = (image[2:26, 2:26].astype(np.float32) - np.float32(70)) \
                        * np.float32(0.1)
                    np.testing.assert_array_equal(ours["data"][k, 0], expected)
                    assert ours["label"][k] == label
    reference.close()


def test_wraps_at_the_end_without_reopening_the_database(tmp_path, fashion, monkeypatch):
    db = _db(tmp_path / "db", [(image, index) for index, (image, _) in enumerate(fashion[:5])])
    feed = TrainFeed(_data_layer(db, batch=2), "TRAIN", prefetch=1)
    opened = []
    real_open = lmdb.open
    monkeypatch.setattr(lmdb, "open", lambda *a, **k: opened.append(a) or real_open(*a, **k))
    labels = [feed.next_batch()["label"].tolist() for _ in range(6)]
    feed.close()
    assert labels == [[0, 1], [2, 3], [4, 0], [1, 2], [3, 4], [0, 1]]
    assert opened == []


# -- ImageData ---------------------------------------------------------------------------------
@pytest.fixture
def image_folder(tmp_path, fashion):
    """Real Fashion-MNIST images as PNG and JPEG files under images/ and a list file naming
    them relative to it; returns (folder, list path, [(file path, label)])."""
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    entries = []
    for index, (image, label) in enumerate(fashion[:7]):
        name = f"sub/item {index}.png" if index % 2 else f"item_{index}.jpg"   # a space, too
        assert cv2.imwrite(str(folder / name), image)
        entries.append((name, label))
    listfile = tmp_path / "list.txt"
    listfile.write_text("".join(f"{name} {label}\n" for name, label in entries) + "\n")
    return folder, listfile, [(folder / name, label) for name, label in entries]


@pytest.mark.parametrize("is_color, size", [("true", (32, 30)), ("false", (32, 30)),
                                            ("true", None)])
def test_image_data_reads_a_folder_as_opencv(image_folder, is_color, size):
    folder, listfile, files = image_folder
    param = f'root_folder: "{folder}/" is_color: {is_color}'
    if size:
        param += f" new_height: {size[0]} new_width: {size[1]}"
    layer = _image_layer(listfile, param, "scale: 0.5", batch=3)
    height, width = size or (28, 28)
    channels = 3 if is_color == "true" else 1
    net_shape = Net.from_proto(net_param(
        f'layer {{ name: "images" type: "ImageData" top: "data" top: "label" '
        f'image_data_param {{ source: "{listfile}" batch_size: 3 {param} }} }}')).shapes()
    assert net_shape == {"data": (3, channels, height, width), "label": (3,)}
    with TrainFeed(layer, "TRAIN", seed=0) as feed:
        batches = [feed.next_batch() for _ in range(3)]            # 9 from 7: wraps
    for index in range(9):
        path, label = files[index % 7]
        image = cv2.imread(str(path), cv2.IMREAD_COLOR if channels == 3 else cv2.IMREAD_GRAYSCALE)
        if size:
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
        image = image.reshape(height, width, channels).transpose(2, 0, 1)
        batch = batches[index // 3]
        np.testing.assert_array_equal(batch["data"][index % 3],
                                      image.astype(np.float32) * np.float32(0.5))
        assert batch["label"][index % 3] == label


def test_image_data_shuffles_every_epoch_with_the_seed(image_folder):
    folder, listfile, files = image_folder
    layer = _image_layer(listfile, f'root_folder: "{folder}/" shuffle: true', batch=7)
    with TrainFeed(layer, "TRAIN", seed=5) as feed:
        epochs = [feed.next_batch() for _ in range(4)]
    # the documented order: Generator.shuffle of the current order, before each epoch
    rng = np.random.default_rng(np.random.SeedSequence(5).spawn(1)[0])
    order = np.arange(7)
    pixels = [cv2.imread(str(path), cv2.IMREAD_COLOR).transpose(2, 0, 1) for path, _ in files]
    seen = []
    for batch in epochs:
        rng.shuffle(order)
        for k, index in enumerate(order):
            np.testing.assert_array_equal(batch["data"][k], pixels[index])
        seen.append(tuple(order))
    assert len(set(seen)) > 1 and seen[0] != tuple(range(7))


def test_image_data_crop_shape_in_the_net(image_folder):
    folder, listfile, _ = image_folder
    net = Net.from_proto(net_param(
        f'layer {{ name: "images" type: "ImageData" top: "data" top: "label" '
        f'transform_param {{ crop_size: 20 }} image_data_param {{ source: "{listfile}" '
        f'root_folder: "{folder}/" batch_size: 5 is_color: false }} }}'))
    assert net.shapes() == {"data": (5, 1, 20, 20), "label": (5,)}


# -- bad input -------------------------------------------------------------------------------
@pytest.mark.parametrize("text, message", [
    ("item_0.jpg 1\nsub/item 1.png\n", "line 2: expected 'path label'"),
    ("item_0.jpg 1\n\nitem_2.jpg three\n", "line 3: expected 'path label'"),
    ("item_0.jpg 1\nmissing.png 2\nitem_2.jpg 3\n", "no such image (line 2 of"),
    ("\n\n", "the list holds no images"),
    ("item_0.jpg 1\nbad.png 2\n", "OpenCV cannot decode this file as an image (line 2 of"),
    ("item_0.jpg 1\nodd.png 2\n", "line 2 of"),
])
def test_image_list_errors_name_the_line(image_folder, tmp_path, text, message):
    folder, _, _ = image_folder
    (folder / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    cv2.imwrite(str(folder / "odd.png"), np.zeros((20, 28), np.uint8))
    listfile = tmp_path / "bad.txt"
    listfile.write_text(text)
    layer = _image_layer(listfile, f'root_folder: "{folder}/"', batch=1)
    with pytest.raises(FormatError) as caught:
        with TrainFeed(layer, "TRAIN") as feed:
            for _ in range(3):
                feed.next_batch()
    line = str(caught.value)
    assert message in line and "layer 'images'" in line and "\n" not in line
    assert str(listfile) in line or (str(folder / "missing.png") in line)
    if "odd.png" in text:
        assert "gives a 3x20x28 image after the transform, the first gave 3x28x28" in line


def test_root_folder_is_prefixed_as_caffe_does(image_folder):
    folder, listfile, _ = image_folder
    layer = _image_layer(listfile, f'root_folder: "{folder}"', batch=1)     # no trailing /
    with pytest.raises(FormatError, match="no trailing '/'"):
        TrainFeed(layer, "TRAIN")


def test_empty_and_short_databases(tmp_path, fashion, left_over):
    empty = _db(tmp_path / "empty", [])
    with pytest.raises(FormatError, match="empty") as caught:
        TrainFeed(_data_layer(empty), "TRAIN")
    assert str(empty) in str(caught.value) and "layer 'data'" in str(caught.value)
    short = _db(tmp_path / "short", fashion[:3])
    with pytest.raises(FormatError, match="holds 3 record.s., fewer than one batch of 4") as caught:
        TrainFeed(_data_layer(short, batch=4), "TRAIN")
    assert str(short) in str(caught.value) and "layer 'data'" in str(caught.value)
    assert left_over() == ([], [])


def test_a_record_of_another_shape(tmp_path, fashion):
    images = [image for image, _ in fashion[:6]]
    db = _db(tmp_path / "db", [(image, 0) for image in images[:5]] + [(images[5][:26], 0)])
    with TrainFeed(_data_layer(db, batch=3), "TRAIN") as feed:
        feed.next_batch()
        with pytest.raises(FormatError) as caught:
            feed.next_batch()
    line = str(caught.value)
    assert line.startswith(f"{db}: layer 'data': record b'00000005'") and "1x26x28" in line
    # with a crop, records of several sizes are fine, as in Caffe
    mixed = _db(tmp_path / "mixed", [(np.pad(image, k), 0) for k, image in enumerate(images)])
    with TrainFeed(_data_layer(mixed, "crop_size: 20", batch=6), "TRAIN") as feed:
        assert feed.next_batch()["data"].shape == (6, 1, 20, 20)


def test_an_undecodable_record_surfaces_at_next_batch(tmp_path, fashion, left_over):
    db = _db(tmp_path / "db", fashion[:8], encoded_as=".png")
    env = lmdb.open(str(db), map_size=1 << 24)
    with env.begin(write=True) as txn:                    # record 5 made undecodable
        datum = caffe_pb2.Datum.FromString(txn.get(b"00000005"))
        datum.data = datum.data[:20]
        txn.put(b"00000005", datum.SerializeToString())
    env.close()
    feed = TrainFeed(_data_layer(db, batch=4), "TRAIN", prefetch=2)
    first = feed.next_batch()
    np.testing.assert_array_equal(first["data"][1, 0], fashion[1][0].astype(np.float32))
    for _ in range(2):                                    # and again on the next call
        with pytest.raises(FormatError) as caught:
            feed.next_batch()
        assert str(caught.value) == (f"{db}: layer 'data': OpenCV cannot decode record "
                                     "b'00000005' as an image")
    feed.close()
    assert left_over() == ([], [])


# -- the thread -------------------------------------------------------------------------------
def test_close_stops_the_thread_promptly(tmp_path, fashion, image_folder, left_over):
    db = _db(tmp_path / "db", fashion[:20])
    feed = TrainFeed(_data_layer(db, batch=4), "TRAIN", prefetch=2)
    feed.next_batch()
    time.sleep(0.3)                                       # the queue is full: put() waits
    start = time.perf_counter()
    feed.close()
    assert time.perf_counter() - start < 2.0
    assert left_over() == ([], [])
    with pytest.raises(Exception, match="closed"):
        feed.next_batch()
    # closed while decoding a large batch
    folder, listfile, _ = image_folder
    long_list = tmp_path / "long.txt"
    long_list.write_text(listfile.read_text() * 60)                  # 420 images
    busy = TrainFeed(_image_layer(long_list, f'root_folder: "{folder}/" new_height: 600 '
                                  'new_width: 600', batch=400), "TRAIN")
    start = time.perf_counter()
    busy.close()
    assert time.perf_counter() - start < 2.0 and left_over()[0] == []
    # a feed dropped without close() stops its thread too
    dropped = TrainFeed(_data_layer(db, batch=4), "TRAIN")
    del dropped
    gc.collect()
    for thread in left_over()[0]:
        thread.join(2)
    assert left_over() == ([], [])


def test_exit_without_close_stops_the_thread_first(tmp_path, fashion):
    # A thread still decoding while the interpreter and OpenCV shut down can abort the
    # process; the feed's exit handler stops and joins it. An exit handler registered before
    # the module's runs after it (last in, first out) and sees no feed thread left.
    big = [(cv2.resize(image, (256, 256)), label) for image, label in fashion[:16]]
    db = _db(tmp_path / "jpg", big, encoded_as=".jpg")
    code = ("import atexit, threading\n"
            "atexit.register(lambda: print('left:', sum(t.name.startswith('TrainFeed') "
            "for t in threading.enumerate())))\n"
            "from ristretto_py import Net\nfrom ristretto_py.caffe_io import parse_net_text\n"
            "from ristretto_py.train.data import TrainFeed\n"
            f"text = 'layer {{ name: \"data\" type: \"Data\" top: \"data\" data_param {{ "
            f"source: \"{db}\" batch_size: 16 backend: LMDB }} }}'\n"
            "net = Net.from_proto(parse_net_text(text), phase='TRAIN')\n"
            "feed = TrainFeed(net.source_layers[0], 'TRAIN', prefetch=20)\n"
            "print(feed.next_batch()['data'].shape)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["(16, 1, 256, 256)", "left: 0"]


def test_prefetch_count(tmp_path, fashion):
    db = _db(tmp_path / "db", fashion[:8])
    with TrainFeed(_data_layer(db), "TRAIN") as feed:
        assert feed.prefetch == 3
    with TrainFeed(_data_layer(db, data_extra="prefetch: 2"), "TRAIN") as feed:
        assert feed.prefetch == 2
    with TrainFeed(_data_layer(db, data_extra="prefetch: 2"), "TRAIN", prefetch=5) as feed:
        assert feed.prefetch == 5


def test_memory_check_counts_the_prefetched_batches(tmp_path, fashion, left_over):
    db = _db(tmp_path / "db", fashion[:8])
    layer = _data_layer(db, batch=8)
    one_batch = 8 * 28 * 28 * 4 + 8 * 4
    token = memory_budget.set_limit(4 * one_batch)        # one fits, five (3 + 2) do not
    try:
        with pytest.raises(ResourceError) as caught:
            TrainFeed(layer, "TRAIN")
        assert "5 batches of 8 images of 1x28x28" in str(caught.value)
        assert str(db) in str(caught.value) and "layer 'data'" in str(caught.value)
        assert left_over() == ([], [])
        with TrainFeed(layer, "TRAIN", prefetch=1) as feed:     # 3 batches fit
            assert feed.next_batch()["data"].shape == (8, 1, 28, 28)
    finally:
        memory_budget.reset_limit(token)


def test_refuses_other_layers_and_phases(tmp_path, fashion):
    db = _db(tmp_path / "db", fashion[:4])
    with pytest.raises(ValueError, match="TRAIN or TEST"):
        TrainFeed(_data_layer(db), "train")
    layer = _layer('layer { name: "in" type: "Input" top: "data" '
                   'input_param { shape { dim: 1 dim: 1 dim: 2 dim: 2 } } }')
    with pytest.raises(NetError, match="not a Data or ImageData layer"):
        TrainFeed(layer, "TRAIN")


def test_encoded_grey_records_have_one_channel_in_the_net(tmp_path, fashion):
    db = _db(tmp_path / "db", fashion[:4], encoded_as=".png")
    layer = _data_layer(db, batch=2)
    net_shape = Net.from_proto(net_param(
        f'layer {{ name: "data" type: "Data" top: "data" top: "label" data_param {{ '
        f'source: "{db}" batch_size: 2 backend: LMDB }} }}')).shapes()["data"]
    with TrainFeed(layer, "TRAIN") as feed:
        assert feed.next_batch()["data"].shape == net_shape == (2, 1, 28, 28)
    colour = _data_layer(db, "force_color: true", batch=2)
    with TrainFeed(colour, "TRAIN") as feed:
        batch = feed.next_batch()["data"]
    assert batch.shape == (2, 3, 28, 28)
    np.testing.assert_array_equal(batch[0], np.repeat(fashion[0][0][None], 3, 0))
