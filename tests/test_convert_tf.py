"""TensorFlow graphs and TFLite files converted to Caffe files (through tf2onnx and the ONNX
importer) and checked against TensorFlow and LiteRT on real Fashion-MNIST images: a Keras 3
``model.export()`` SavedModel, a frozen GraphDef with a 4-D output, TFLite float and full-integer
(int8, per-channel and per-tensor) files written by TensorFlow's converter from a small CNN
trained a few steps on Fashion-MNIST, and MediaPipe's face detector shipped in a PyPI wheel.
The model files are written by ``tf_reference.py`` in a separate process (Keras' backend is
chosen once per process; this one runs Keras on torch); the conversions run here.

Each float model is checked twice: the ONNX model tf2onnx made (after our shape fixing) on
onnxruntime, and the Caffe net on the numpy runtime, both within 1e-4 of the reference.
"""
import json
import pathlib
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")

from ristretto_py import Net  # noqa: E402
from ristretto_py.cli import convert_tf, convert_tflite  # noqa: E402
from ristretto_py.convert import tf_graphs, tflite_models  # noqa: E402
from ristretto_py.models import fetch_files  # noqa: E402
from ristretto_py.runtime import make_runtime  # noqa: E402
from conftest import close_to  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
FASHION = pathlib.Path("/usr/share/datasets/fashion-mnist")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def tf_files(tmp_path_factory):
    assert FASHION.is_dir(), "install Debian's dataset-fashion-mnist (CI does: apt-get install)"
    out = tmp_path_factory.mktemp("tf")
    done = subprocess.run([sys.executable, str(HERE / "tf_reference.py"), str(FASHION), str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, json.loads((out / "names.json").read_text()), np.load(out / "images.npy")


def onnx_outputs(model, feeds):
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def caffe_files(tmp_path):
    return tmp_path / "m.prototxt", tmp_path / "m.caffemodel"


def caffe_outputs(prototxt, weights, x):
    net = Net.load(prototxt, weights)
    runtime = make_runtime(net, "numpy")
    return net, runtime.forward({net.input_blobs[0]: x})


def nchw(images):
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2))


# -- TensorFlow graphs -----------------------------------------------------------------------
def test_keras3_export_as_onnx_agrees_with_tensorflow(tf_files):
    folder, _, images = tf_files
    model = tf_graphs.saved_model_to_onnx(folder / "export", input_shapes=[16, 1, 28, 28])
    (value,) = model.graph.input
    assert value.name == "image" and [d.dim_value for d in value.type.tensor_type.shape.dim] == [16, 1, 28, 28]
    assert [o.name for o in model.graph.output] == ["output_0"]
    ops = {n.op_type for n in model.graph.node}
    assert not ops & {"Shape", "Gather", "Cast", "Concat", "Slice"}     # Flatten's arithmetic folded
    (ours,) = onnx_outputs(model, {"image": nchw(images)})
    assert close_to(ours, np.load(folder / "export_expected.npy"), 1e-4)


def test_keras3_export_converts_and_agrees_with_tensorflow(tf_files, tmp_path, capsys):
    folder, _, images = tf_files
    prototxt, weights = caffe_files(tmp_path)
    assert convert_tf.main(["--saved_model", str(folder / "export"), "--out_model", str(prototxt),
                            "--out_weights", str(weights), "--input_shape", "16,1,28,28"]) == 0
    assert "Caffe layers" in capsys.readouterr().out
    net, blobs = caffe_outputs(prototxt, weights, nchw(images))
    assert net.name == "export"
    expected = np.load(folder / "export_expected.npy")
    ours = blobs[net.output_blobs[-1]]
    assert ours.shape == expected.shape and close_to(ours, expected, 1e-4)


def test_frozen_graph_as_onnx_has_nchw_edges(tf_files, tmp_path):
    folder, names, images = tf_files
    assert convert_tf.main(["--graph", str(folder / "frozen.pb"), "--inputs", "image",
                            "--outputs", ",".join(names["outputs"]), "--out_onnx",
                            str(tmp_path / "f.onnx")]) == 0
    model = onnx.load(tmp_path / "f.onnx")
    assert [o.name for o in model.graph.output] == ["Identity", "Identity_1"]
    probs, features = onnx_outputs(model, {"image": nchw(images[:1])})
    assert close_to(probs, np.load(folder / "frozen_probs.npy")[:1], 1e-4)
    # the 4-D output comes out N,C,H,W: TensorFlow's NHWC feature map, transposed
    assert close_to(features, nchw(np.load(folder / "frozen_features.npy")[:1]), 1e-4)


def test_frozen_graph_converts_and_agrees_with_tensorflow(tf_files, tmp_path):
    folder, names, images = tf_files
    prototxt, weights = caffe_files(tmp_path)
    assert convert_tf.main(["--graph", str(folder / "frozen.pb"), "--inputs", "image:0",
                            "--outputs", ",".join(names["outputs"]), "--out_model", str(prototxt),
                            "--out_weights", str(weights), "--input_shape", "16,1,28,28",
                            "--name", "frozen_cnn"]) == 0
    net, blobs = caffe_outputs(prototxt, weights, nchw(images))
    assert net.name == "frozen_cnn"
    assert close_to(blobs["Identity"], np.load(folder / "frozen_probs.npy"), 1e-4)
    assert close_to(blobs["Identity_1"], nchw(np.load(folder / "frozen_features.npy")), 1e-4)


# -- TFLite ----------------------------------------------------------------------------------
def test_tflite_float_as_onnx_agrees_with_litert(tf_files):
    folder, _, images = tf_files
    model = tflite_models.tflite_to_onnx(folder / "float.tflite")
    assert tflite_models.quantization_summary(model) is None
    assert [i.name for i in model.graph.input] == ["image"]      # the signature's names
    expected = np.load(folder / "float_expected.npy")
    ours = np.concatenate([onnx_outputs(model, {"image": nchw(images[i:i + 1])})[0]
                           for i in range(len(images))])
    assert close_to(ours, expected, 1e-4)


def test_tflite_float_converts_and_agrees_with_litert(tf_files, tmp_path):
    folder, _, images = tf_files
    prototxt, weights = caffe_files(tmp_path)
    assert convert_tflite.main(["--input", str(folder / "float.tflite"), "--out_model", str(prototxt),
                                "--out_weights", str(weights), "--input_shape", "16,1,28,28"]) == 0
    net, blobs = caffe_outputs(prototxt, weights, nchw(images))
    assert close_to(blobs[net.output_blobs[-1]], np.load(folder / "float_expected.npy"), 1e-4)


@pytest.mark.parametrize("kind", ["int8_per_channel", "int8_per_tensor"])
def test_tflite_int8_becomes_a_qdq_onnx_model(tf_files, tmp_path, capsys, kind):
    """Full-integer TFLite -> QDQ ONNX: int8 edges, int8 weights (int32 biases) read through
    DequantizeLinear, per-channel scales on axis 0 of the convolution weights and axis 1 of the
    MatMul ones. onnxruntime runs it at its basic optimisation level, where DequantizeLinear ->
    float op -> QuantizeLinear is QDQ's defined arithmetic: every int8 output is within one step of
    LiteRT's integer kernels and the top-1 class is the same on every image. (Its extended level
    fuses the pairs into QLinearConv/QGemm; on this CPU those int8 kernels run as u8s8 and
    saturate, off by up to ~20 steps: onnxruntime's limitation, not the conversion's.)"""
    folder, names, images = tf_files
    assert convert_tflite.main(["--input", str(folder / f"{kind}.tflite"), "--out_onnx",
                                str(tmp_path / "q.onnx")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("quantized model: ") and "integer inputs image" in out
    model = onnx.load(tmp_path / "q.onnx")
    summary = tflite_models.quantization_summary(model)
    assert summary["int_inputs"] == ["image"] and summary["int_outputs"] == ["output_0"]
    assert summary["quantize"] > 0 and summary["dequantize"] > summary["quantize"]
    axes = {axis for _, axis, _ in summary["per_channel"]}
    if kind == "int8_per_channel":
        assert axes == {0, 1} and "per-channel scales" in out
    else:
        assert summary["per_channel"] == [] and "per-tensor scales" in out
    scale, zero = names["tflite"][kind]["input"]
    x = np.clip(np.round(nchw(images) / scale) + zero, -128, 127).astype(np.int8)
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = onnxruntime.InferenceSession(model.SerializeToString(), options,
                                           providers=["CPUExecutionProvider"])
    ours = np.concatenate([session.run(None, {"image": x[i:i + 1]})[0] for i in range(len(x))])
    expected = np.load(folder / f"{kind}_expected.npy")
    assert ours.dtype == np.int8
    steps = np.abs(ours.astype(int) - expected.astype(int))
    assert steps.max() <= 1, steps.max()
    assert np.array_equal(ours.argmax(1), expected.argmax(1))


# -- a TFLite model shipped in a wheel: MediaPipe's BlazeFace ---------------------------------
@pytest.fixture(scope="module")
def mediapipe_face():
    return dict((p.stem, p) for p in fetch_files("mediapipe_face"))


def _face_input(size):
    """A real image at the detector's size and range: a Fashion-MNIST picture (the example's
    bundled one when Debian's is absent) as RGB in [-1, 1]."""
    import cv2
    from test_convert_keras import _images
    gray = _images(1)[0, :, :, 0]
    rgb = np.repeat(cv2.resize(gray, (size, size), interpolation=cv2.INTER_LINEAR)[:, :, None], 3, 2)
    return (rgb[None] * 2 - 1).astype(np.float32)


def _litert(path, x):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf
        Interpreter = tf.lite.Interpreter
    runner = Interpreter(model_path=str(path))
    runner.allocate_tensors()
    runner.set_tensor(runner.get_input_details()[0]["index"], x)
    runner.invoke()
    return {d["name"]: runner.get_tensor(d["index"]) for d in runner.get_output_details()}


@pytest.mark.slow
@pytest.mark.parametrize("stem, size", [("face_detection_short_range", 128),
                                        ("face_detection_back", 256), ("face_landmark", 192)])
def test_mediapipe_tflite_as_onnx_agrees_with_litert(mediapipe_face, stem, size):
    model = tflite_models.tflite_to_onnx(mediapipe_face[stem])
    x = _face_input(size)
    expected = _litert(mediapipe_face[stem], x)
    ours = onnx_outputs(model, {model.graph.input[0].name: nchw(x)})
    for value, got in zip(model.graph.output, ours):
        reference = expected[value.name]
        if reference.ndim == 4:
            reference = nchw(reference)
        assert close_to(got, reference, 1e-4), value.name


@pytest.mark.slow
@pytest.mark.parametrize("stem, size", [("face_detection_short_range", 128),
                                        ("face_detection_back", 256), ("face_landmark", 192)])
def test_mediapipe_tflite_converts_and_agrees_with_litert(mediapipe_face, tmp_path, capsys, stem, size):
    """TensorFlow's SAME padding at stride 2 (one more cell after) becomes a wider Caffe kernel
    with zero taps, and BlazeFace's channel padding zero channels and a Concat."""
    prototxt, weights = caffe_files(tmp_path)
    path = mediapipe_face[stem]
    code = convert_tflite.main(["--input", str(path), "--out_model", str(prototxt),
                                "--out_weights", str(weights)])
    err = capsys.readouterr().err
    assert code == 0, err
    x = _face_input(size)
    net, blobs = caffe_outputs(prototxt, weights, nchw(x))
    expected = _litert(path, x)
    assert len(net.output_blobs) == len(expected)
    for name in net.output_blobs:
        reference = expected[name]
        ours = blobs[name]
        assert ours.size == reference.size, name
        assert close_to(ours.reshape(reference.shape), reference, 1e-4), name


@pytest.mark.slow
def test_sparse_tflite_is_refused_in_one_line(mediapipe_face, tmp_path, capsys):
    code = convert_tflite.main(["--input", str(mediapipe_face["face_detection_full_range_sparse"]),
                                "--out_onnx", str(tmp_path / "s.onnx")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "tf2onnx cannot convert the model" in err and not (tmp_path / "s.onnx").exists()


# -- refusals ---------------------------------------------------------------------------------
def _refused(main, argv, capsys, tmp_path):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert not any(tmp_path.glob("out.*"))
    return err


def test_refusals_are_one_line(tf_files, tmp_path, capsys):
    folder, names, _ = tf_files
    out = ["--out_onnx", str(tmp_path / "out.onnx")]
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00\x01not a model at all" * 50)
    assert "not a TFLite model" in _refused(convert_tflite.main, ["--input", str(junk)] + out, capsys, tmp_path)
    damaged = tmp_path / "damaged.tflite"
    damaged.write_bytes((folder / "float.tflite").read_bytes()[:600])
    err = _refused(convert_tflite.main, ["--input", str(damaged)] + out, capsys, tmp_path)
    assert "damaged.tflite" in err
    assert "not a TensorFlow GraphDef" in _refused(
        convert_tf.main, ["--graph", str(junk), "--inputs", "a", "--outputs", "b"] + out, capsys, tmp_path)
    err = _refused(convert_tf.main, ["--graph", str(folder / "frozen.pb"), "--inputs", "pixels",
                                     "--outputs", "Identity"] + out, capsys, tmp_path)
    assert "no input tensor 'pixels:0'" in err and "placeholders: image" in err
    err = _refused(convert_tf.main, ["--graph", str(folder / "frozen.pb"), "--inputs", "image",
                                     "--outputs", "logits"] + out, capsys, tmp_path)
    assert "no output tensor 'logits:0'" in err and "Identity" in err
    err = _refused(convert_tf.main, ["--graph", str(folder / "frozen.pb"), "--inputs", "image"] + out,
                   capsys, tmp_path)
    assert "needs --inputs and --outputs" in err
    assert "not a SavedModel folder" in _refused(convert_tf.main, ["--saved_model", str(tmp_path)] + out,
                                                 capsys, tmp_path)
    err = _refused(convert_tf.main, ["--saved_model", str(folder / "export"), "--input_shape",
                                     "1,3,28,28"] + out, capsys, tmp_path)
    assert "does not fit input 'image'" in err
    err = _refused(convert_tf.main, ["--saved_model", str(folder / "export"), "--graph",
                                     str(folder / "frozen.pb")] + out, capsys, tmp_path)
    assert "give one of --saved_model DIR and --graph PB" in err
    err = _refused(convert_tflite.main, ["--input", str(folder / "float.tflite"),
                                         "--out_model", str(tmp_path / "out.prototxt")], capsys, tmp_path)
    assert "--out_model and --out_weights go together" in err


def test_missing_tf2onnx_says_what_to_install(tf_files, tmp_path, capsys, monkeypatch):
    folder, _, _ = tf_files
    monkeypatch.setitem(sys.modules, "tf2onnx", None)       # import tf2onnx raises ImportError
    err = _refused(convert_tflite.main, ["--input", str(folder / "float.tflite"), "--out_onnx",
                                         str(tmp_path / "out.onnx")], capsys, tmp_path)
    assert "needs tf2onnx (pip install tf2onnx" in err


@pytest.mark.parametrize("kind", ["int8_per_channel", "int8_per_tensor"])
def test_tflite_int8_gives_a_quantized_description_that_agrees_with_litert(tf_files, tmp_path, capsys, kind):
    """The float net plus the Ristretto description of TFLite's int8 formats: each tensor's
    scale and zero point next to the nearest dynamic fixed point, and the description, run on
    LiteRT's own (dequantized) int8 inputs, picks LiteRT's class on the real images."""
    folder, names, images = tf_files
    prototxt, weights = caffe_files(tmp_path)
    quantized = tmp_path / "q.prototxt"
    assert convert_tflite.main(["--input", str(folder / f"{kind}.tflite"), "--out_model", str(prototxt),
                                "--out_weights", str(weights), "--model_quantized", str(quantized),
                                "--report", str(tmp_path / "report"), "--input_shape", "16,1,28,28"]) == 0
    out = capsys.readouterr().out
    assert "quantized description: 9 layers with formats" in out
    net = Net.load(quantized, weights)
    types = [layer.type for layer in net.layers]
    assert types.count("ConvolutionRistretto") == 3 and types.count("FcRistretto") == 2
    channels = [len(layer.spec.quantization_param.fl_params_channel) for layer in net.layers
                if layer.type in ("ConvolutionRistretto", "FcRistretto")]
    assert any(channels) == (kind == "int8_per_channel")
    scale, zero = names["tflite"][kind]["input"]
    x = (np.clip(np.round(nchw(images) / scale) + zero, -128, 127) - zero) * np.float32(scale)
    ours = make_runtime(net, "numpy").forward({"image": x.astype(np.float32)})[net.output_blobs[-1]]
    expected = np.load(folder / f"{kind}_expected.npy")
    agreement = np.mean(ours.argmax(1) == expected.argmax(1))
    assert agreement >= 15 / 16, agreement
    report = json.loads((tmp_path / "report" / "formats.json").read_text())
    first = next(row for row in report["tensors"] if row["tensor"] == "image")
    assert first["qdq"] == f"int8 scale {scale:.6g} zero point {zero}" and first["bit_width"] == 8
