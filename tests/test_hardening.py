"""The classes of the outside audit (issue 9), one test or more each: no traceback, no silent
acceptance, no partial output, no input modified. Every tool run here is a real subprocess."""
import os
import warnings

import cv2
import numpy as np
import pytest

from ristretto_py import Net, RistrettoWarning, atomic, memory_budget
from ristretto_py.errors import FormatError, NetError, ResourceError
from ristretto_py.evaluators.classification import evaluate_classification, fetch_batches

from test_cli import ROOT, run_tool

EXAMPLE = ROOT / "examples" / "lenet_fashion"
MODEL, WEIGHTS = EXAMPLE / "lenet_train_test.prototxt", EXAMPLE / "lenet_fashion.caffemodel"


def snapshot(directory):
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(directory.rglob("*"))
            if p.is_file()}


def one_error_line(result, tool, *fragments):
    lines = result.stderr.splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith(f"{tool}: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    return lines[0]


def example_copy(tmp_path, batch_size=None):
    """The example net with absolute LMDB paths (and another TEST batch size)."""
    text = MODEL.read_text().replace('source: "examples/', f'source: "{ROOT}/examples/')
    if batch_size is not None:
        text = text.replace("batch_size: 100 ", f"batch_size: {batch_size} ")
    model = tmp_path / "net.prototxt"
    model.write_text(text)
    weights = tmp_path / "net.caffemodel"
    weights.write_bytes(WEIGHTS.read_bytes())
    return model, weights


# -- an empty prototxt with real weights ---------------------------------------------------

@pytest.mark.parametrize("tool, extra", [
    ("kmeans", ["--clusters", "4", "--out_weights", "{d}/o.caffemodel"]),
    ("quantize_weights", ["--method", "linear:4", "--out_weights", "{d}/o.caffemodel"]),
    ("evaluate_lfw", ["--feature_blob", "ip1", "--lfw_root", "{d}", "--pairs", "{d}/pairs.txt"]),
    ("export_onnx", ["--output", "{d}/o.onnx"]),
    ("fold_bn", ["--out_model", "{d}/o.prototxt", "--out_weights", "{d}/o.caffemodel"]),
    ("evaluate", ["--iterations", "1"]),
])
def test_an_empty_prototxt_is_refused_naming_the_weights(tmp_path, tool, extra):
    model, weights = tmp_path / "empty.prototxt", tmp_path / "w.caffemodel"
    model.write_text("")
    weights.write_bytes(WEIGHTS.read_bytes())
    (tmp_path / "pairs.txt").write_text("10 1\n" + "a 1 2\nb 1 c 2\n" * 10)
    before = snapshot(tmp_path)
    result = run_tool(tool, "--model", model, "--weights", weights,
                      *[a.format(d=tmp_path) for a in extra])
    one_error_line(result, tool, str(model), "defines no layers",
                   f"no layer matches the 12 layers of {weights}")
    assert snapshot(tmp_path) == before


def test_an_onnx_file_without_operations_is_refused(tmp_path):
    model = tmp_path / "input_only.prototxt"
    model.write_text('layer { name: "data" type: "Input" top: "data" '
                     'input_param { shape { dim: 1 dim: 1 dim: 28 dim: 28 } } }\n')
    result = run_tool("export_onnx", "--model", model, "--weights", WEIGHTS,
                      "--output", tmp_path / "o.onnx")
    assert result.returncode == 2 and not (tmp_path / "o.onnx").exists()
    warning, error = result.stderr.splitlines()
    assert warning == (f"export_onnx: warning: {WEIGHTS}: 4 layer(s) with weights match no layer "
                       f"of {model} and are ignored: conv1, conv2, ip1, ip2")
    assert error.startswith("export_onnx: error: ") and "would hold no operation" in error


def test_weights_the_prototxt_ignores_are_named_in_a_warning(tmp_path):
    model, weights = example_copy(tmp_path)
    text = model.read_text()
    model.write_text(text.replace('"ip2"', '"classifier"'))
    with pytest.raises(NetError, match="layer 'classifier'.*no blobs"):
        with pytest.warns(RistrettoWarning, match=r"1 layer\(s\) with weights .* ignored: ip2$"):
            Net.load(model, weights)
    # A deploy net of the first layers only: it loads, and the unused ip2 is named.
    deploy = tmp_path / "deploy.prototxt"
    deploy.write_text(_deploy_text(until="ip2"))
    with pytest.warns(RistrettoWarning, match=r"net.caffemodel: 1 layer\(s\) .* ignored: ip2$"):
        net = Net.load(deploy, weights)
    assert [l.name for l in net.layers][-1] == "relu1"
    result = run_tool("info", "--model", deploy, "--weights", weights)
    assert result.returncode == 0
    assert result.stderr.splitlines() == [
        f"info: warning: {weights}: 1 layer(s) with weights match no layer of {deploy} and "
        "are ignored: ip2"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RistrettoWarning)
        Net.load(MODEL, WEIGHTS)       # every layer of the example's weights is used


def _deploy_text(until):
    """The example as a deploy net (an Input layer) up to, not including, layer ``until``."""
    text = MODEL.read_text()
    body = text[text.index('layer { name: "conv1"'):text.index(f'layer {{ name: "{until}"')]
    return ('name: "deploy"\nlayer { name: "data" type: "Input" top: "data" '
            'input_param { shape { dim: 1 dim: 1 dim: 28 dim: 28 } } }\n' + body)


# -- outputs that are inputs, outputs checked before the work --------------------------------

@pytest.mark.parametrize("link", ["same", "symlink", "hardlink"])
def test_an_output_that_is_an_input_is_refused(tmp_path, link):
    model, weights = example_copy(tmp_path)
    target = {"same": weights, "symlink": tmp_path / "alias.caffemodel",
              "hardlink": tmp_path / "hard.caffemodel"}[link]
    if link == "symlink":
        os.symlink(weights, target)
    elif link == "hardlink":
        os.link(weights, target)
    before = snapshot(tmp_path)
    result = run_tool("kmeans", "--model", model, "--weights", weights, "--clusters", "4",
                      "--out_weights", target)
    one_error_line(result, "kmeans", "--out_weights names the same file as --weights")
    result = run_tool("fold_bn", "--model", model, "--weights", weights,
                      "--out_model", model, "--out_weights", tmp_path / "f.caffemodel")
    one_error_line(result, "fold_bn", "--out_model names the same file as --model")
    assert snapshot(tmp_path) == before


def test_two_outputs_on_one_path_are_refused(tmp_path):
    model, weights = example_copy(tmp_path)
    result = run_tool("kmeans", "--model", model, "--weights", weights, "--clusters", "4",
                      "--out_weights", tmp_path / "k.bin", "--packed", tmp_path / "k.bin")
    one_error_line(result, "kmeans", "--packed and --out_weights name the same file")
    assert not (tmp_path / "k.bin").exists()


@pytest.mark.parametrize("report", ["under_a_file", "proc", "holds_a_directory"])
def test_a_report_folder_that_cannot_be_written_fails_before_the_search(tmp_path, report):
    model, weights = example_copy(tmp_path)
    where = {"under_a_file": model / "report", "proc": "/proc/ristretto-report",
             "holds_a_directory": tmp_path / "report"}[report]
    if report == "holds_a_directory":
        (where / "report.md").mkdir(parents=True)
    before = snapshot(tmp_path)
    result = run_tool("quantize", "--model", model, "--weights", weights, "--model_quantized",
                      tmp_path / "q.prototxt", "--trimming_mode", "minifloat", "--report", where)
    one_error_line(result, "quantize", str(where))
    assert snapshot(tmp_path) == before and not (tmp_path / "q.prototxt").exists()
    assert "minifloat" not in result.stdout       # no search ran


def test_outputs_appear_all_or_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic.all_or_nothing():
            atomic.write_text(tmp_path / "a.txt", "a")
            atomic.write_text(tmp_path / "report" / "b.txt", "b")
            assert not (tmp_path / "a.txt").exists()
            raise RuntimeError("a later step fails")
    assert list(tmp_path.iterdir()) == []       # no output, no temporary, no report folder
    with atomic.all_or_nothing():
        atomic.write_text(tmp_path / "a.txt", "a")
        atomic.write_text(tmp_path / "report" / "b.txt", "b")
    assert (tmp_path / "a.txt").read_text() == "a" and (tmp_path / "report" / "b.txt").read_text() == "b"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.txt", "b.txt", "report"]


def test_a_tool_that_fails_late_leaves_none_of_its_outputs(tmp_path, capsys):
    from ristretto_py.cli.common import run
    from ristretto_py.errors import RistrettoError
    from ristretto_py.lmdb_write import make_datum, write_lmdb

    def tool(argv):
        Net.load(MODEL, WEIGHTS).save(tmp_path / "m.prototxt", tmp_path / "m.caffemodel")
        write_lmdb(tmp_path / "db", [make_datum(np.zeros((4, 4), np.uint8), 0)])
        atomic.write_text(tmp_path / "report" / "report.json", "{}")
        raise RistrettoError("the last step fails", path="x")

    assert run(tool, [], prog="t") == 2
    assert capsys.readouterr().err == "t: error: x: the last step fails\n"
    assert list(tmp_path.iterdir()) == []

    def succeeds(argv):
        atomic.write_text(tmp_path / "report" / "report.json", "{}")
        write_lmdb(tmp_path / "db", [make_datum(np.zeros((4, 4), np.uint8), 0)])

    assert run(succeeds, [], prog="t") == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db", "report"]
    assert (tmp_path / "db" / "data.mdb").is_file()


# -- memory: refused with the figures, batches streamed ---------------------------------------

def test_a_huge_data_batch_is_refused_with_the_figure(tmp_path):
    model, weights = example_copy(tmp_path, batch_size=100000000)
    result = run_tool("evaluate", "--model", model, "--weights", weights, "--iterations", "1")
    one_error_line(result, "evaluate", "layer 'data'", "[100000000, 1, 28, 28]",
                   "(292.1 GiB as float32), more than the limit of 8 GiB for one blob")
    model, weights = example_copy(tmp_path, batch_size=1000000)
    result = run_tool("evaluate", "--model", model, "--weights", weights, "--iterations", "1")
    one_error_line(result, "evaluate", "layer 'conv1'", "(42.9 GiB as float32)")
    # Within the one-blob limit, the forward pass is estimated before anything is read, and a
    # Data layer checks its batch (100,000 images of 28x28 in float32: 299.1 MiB) before it
    # reads more than the first record.
    model, weights = example_copy(tmp_path, batch_size=100000)
    result = run_tool("evaluate", "--model", model, "--weights", weights, "--iterations", "1",
                      "--memory_limit", "200M")
    one_error_line(result, "evaluate", "one forward pass of 'LeNetFashion'", "needs 7.3 GiB",
                   "more than the memory limit of 200.0 MiB (--memory_limit)")
    from ristretto_py.lmdb_data import DataLayerFeed
    net = Net.load(model, weights)
    token = memory_budget.set_limit("200M")
    try:
        feed = DataLayerFeed(net.layer("data"))
        with pytest.raises(ResourceError, match="layer 'data': a batch of 100,000 images of "
                                                r"1x28x28 needs 299.1 MiB, more than the memory "
                                                r"limit of 200.0 MiB \(--memory_limit\)"):
            feed.next_batch()
        feed.close()
    finally:
        memory_budget.reset_limit(token)


def test_a_forward_pass_over_the_limit_is_refused(tmp_path):
    model, weights = example_copy(tmp_path, batch_size=5000)
    result = run_tool("evaluate", "--model", model, "--weights", weights, "--iterations", "1",
                      "--memory_limit", "100M")
    one_error_line(result, "evaluate", "one forward pass", "needs 3", "MiB",
                   "memory limit of 100.0 MiB (--memory_limit)")


def test_batches_over_the_budget_stream_and_score_the_same():
    net = Net.load(MODEL, WEIGHTS)
    kept = fetch_batches(net, 3)
    assert kept.kept and len(kept) == 3
    token = memory_budget.set_limit(kept.batch_bytes * 3)     # cache share: half of it
    try:
        with pytest.warns(RistrettoWarning, match="read again from the database"):
            streamed = fetch_batches(net, 3)
    finally:
        memory_budget.reset_limit(token)
    assert not streamed.kept and len(streamed) == 3
    for a, b in zip(kept, streamed):
        np.testing.assert_array_equal(a["data"], b["data"])
        np.testing.assert_array_equal(a["label"], b["label"])
    first = evaluate_classification(net, 3, batches=kept)
    second = evaluate_classification(net, 3, batches=streamed)
    assert first.scores == second.scores and first.images == second.images == 300
    np.testing.assert_array_equal(streamed[0]["data"], kept[0]["data"])


def test_huge_resizes_are_refused_before_allocating(tmp_path):
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.full((28, 28), 7, np.uint8))
    result = run_tool("forward", "--model", MODEL, "--weights", WEIGHTS, "--input", image,
                      "--resize", "100000,100000", "--output", tmp_path / "o.npz")
    one_error_line(result, "forward", "resizing an image to 100000x100000", "GiB")
    (tmp_path / "list.txt").write_text("a.png 0\n")
    result = run_tool("convert_imageset", tmp_path, tmp_path / "list.txt", tmp_path / "db",
                      "--resize_width", "100000", "--resize_height", "100000")
    one_error_line(result, "convert_imageset", "one 100000x100000 image", "GiB")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "list.txt"]


def test_memory_sizes_parse_in_binary_units():
    assert memory_budget.parse_size("512M") == 512 * 2 ** 20
    assert memory_budget.parse_size("1.5GiB") == 3 * 2 ** 29
    assert memory_budget.parse_size("2048") == 2048
    for bad in ("", "lots", "-1G", "0"):
        with pytest.raises(Exception, match="size"):
            memory_budget.parse_size(bad)
    with pytest.raises(ResourceError, match="3.0 GiB, more than the memory limit of 1.0 GiB"):
        token = memory_budget.set_limit("1G")
        try:
            memory_budget.check(3 * 2 ** 30, "a test")
        finally:
            memory_budget.reset_limit(token)


# -- silent acceptances --------------------------------------------------------------------

def test_a_data_layer_with_batch_size_zero_is_refused(tmp_path):
    model, weights = example_copy(tmp_path, batch_size=0)
    with pytest.raises(NetError, match="layer 'data': data_param.batch_size is 0"):
        Net.load(model, weights)
    result = run_tool("quantize", "--model", model, "--weights", weights, "--model_quantized",
                      tmp_path / "q.prototxt", "--trimming_mode", "minifloat")
    one_error_line(result, "quantize", str(model), "layer 'data'", "batch_size is 0")


# -- messages that name the right thing ------------------------------------------------------

def test_an_empty_directory_is_not_an_lmdb(tmp_path):
    empty = tmp_path / "db"
    empty.mkdir()
    model, weights = example_copy(tmp_path)
    model.write_text(model.read_text().replace(f"{ROOT}/examples/lenet_fashion/fashion_test_lmdb",
                                               str(empty)))
    result = run_tool("evaluate", "--model", model, "--weights", weights, "--iterations", "1")
    one_error_line(result, "evaluate", str(empty), "holds no LMDB database")


def test_list_files_that_are_not_lists(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((4, 4), np.uint8))
    binary = tmp_path / "list.bin"
    binary.write_bytes(bytes(range(256)) * 3)
    result = run_tool("convert_imageset", tmp_path, binary, tmp_path / "db")
    one_error_line(result, "convert_imageset", str(binary), "line 1: not UTF-8 text")
    labels = tmp_path / "labels.txt"
    labels.write_text("a.png 1\na.png 2147483648\n")
    result = run_tool("convert_imageset", tmp_path, labels, tmp_path / "db")
    one_error_line(result, "convert_imageset", "line 2: label 2147483648 does not fit")
    result = run_tool("convert_imageset", tmp_path, labels, "/proc/ristretto-db")
    one_error_line(result, "convert_imageset", "/proc/ristretto-db: cannot write into /proc")
    assert not (tmp_path / "db").exists()


def test_damaged_images_give_our_line_not_opencvs(tmp_path):
    good = cv2.imencode(".jpg", np.random.default_rng(1).integers(0, 255, (32, 32, 3), np.uint8))[1]
    (tmp_path / "cut.jpg").write_bytes(good.tobytes()[:len(good) // 2])
    (tmp_path / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    (tmp_path / "cut.txt").write_text("cut.jpg 0\n")
    (tmp_path / "junk.txt").write_text("junk.png 0\n")
    result = run_tool("convert_imageset", tmp_path, tmp_path / "junk.txt", tmp_path / "db")
    one_error_line(result, "convert_imageset", "junk.png: OpenCV cannot decode")
    assert "WARN" not in result.stderr and "IHDR" not in result.stderr.split("decode")[0]
    result = run_tool("convert_imageset", tmp_path, tmp_path / "cut.txt", tmp_path / "db")
    assert result.returncode == 0
    assert result.stderr.splitlines() == [
        f"convert_imageset: warning: {tmp_path / 'cut.jpg'}: damaged image, decoded anyway "
        "(Premature end of JPEG file)"]


def test_lfw_inputs_that_cannot_work(tmp_path):
    from ristretto_py.evaluators import lfw
    binary = tmp_path / "pairs.txt"
    binary.write_bytes(b"10 300\n\xff\xfe\x00binary")
    with pytest.raises(FormatError, match="line 2: not UTF-8 text"):
        lfw.read_pairs(binary)
    for name, size in (("a", (28, 28)), ("b", (30, 20))):
        (tmp_path / name).mkdir()
        cv2.imwrite(str(tmp_path / name / f"{name}_0001.jpg"), np.zeros(size, np.uint8))
    net = Net.load(MODEL, WEIGHTS)
    from ristretto_py.images import prepare_image, read_image
    from ristretto_py.runtime import NumpyRuntime
    paths = [lfw.image_path(tmp_path, "a", 1), lfw.image_path(tmp_path, "b", 1)]
    with pytest.raises(FormatError, match=r"b_0001.jpg: image is 20x30 but .*a_0001.jpg is "
                                          r"28x28: give --resize W,H"):
        lfw.extract_features(NumpyRuntime(net), "data", "ip1", paths,
                             lambda p: prepare_image(read_image(p, True)), batch=2)


def test_keras_refusal_names_the_unsupported_layer(tmp_path):
    os.environ.setdefault("KERAS_BACKEND", "torch")     # as tests/test_convert_keras.py
    import keras
    model = keras.Sequential([keras.Input((10, 8)), keras.layers.LSTM(4, name="memory"),
                              keras.layers.Dense(2)])
    path = tmp_path / "lstm.keras"
    model.save(path)
    result = run_tool("convert_keras", "--input", path, "--out_model", tmp_path / "m.prototxt",
                      "--out_weights", tmp_path / "m.caffemodel")
    line = one_error_line(result, "convert_keras", "layer 'memory'", "LSTM cannot be converted")
    assert "input shape" not in line
