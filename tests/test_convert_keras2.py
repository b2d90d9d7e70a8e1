"""Keras 2 files (legacy ``.h5`` and SavedModel folders written by real tf-keras) converted to
Caffe files and checked against tf-keras' own ``predict`` on real Fashion-MNIST images; the
refusals of folders that are not Keras SavedModels. The reference files are written by
``keras2_reference.py`` in a separate process, so TensorFlow never shares this process with torch.
"""
import importlib.util
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from ristretto_py import Net
from ristretto_py.cli import convert_keras
from ristretto_py.runtime import NumpyRuntime
from conftest import close_to
from test_convert_keras import _images

HERE = pathlib.Path(__file__).resolve().parent
pytestmark = pytest.mark.skipif(importlib.util.find_spec("tf_keras") is None,
                                reason="needs tf-keras (the test extra installs it)")
MODELS = ("densenet_like", "residual", "classifier")


@pytest.fixture(scope="module")
def keras2_files(tmp_path_factory):
    out = tmp_path_factory.mktemp("keras2")
    images = _images()
    np.save(out / "images.npy", images)
    done = subprocess.run([sys.executable, str(HERE / "keras2_reference.py"), str(out / "images.npy"),
                           str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, images


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("form", [".h5", "_savedmodel"])
def test_keras2_model_agrees_with_tf_keras(keras2_files, tmp_path, name, form):
    folder, images = keras2_files
    prototxt, weights = tmp_path / "m.prototxt", tmp_path / "m.caffemodel"
    assert convert_keras.main(["--input", str(folder / f"{name}{form}"), "--out-model", str(prototxt),
                               "--out-weights", str(weights), "--input-shape", "16,1,28,28"]) == 0
    net = Net.load(prototxt, weights)
    ours = NumpyRuntime(net).forward({net.input_blobs[0]: images.transpose(0, 3, 1, 2)})[net.output_blobs[-1]]
    expected = np.load(folder / f"{name}_expected.npy")
    assert ours.shape == expected.shape
    assert close_to(ours, expected, 1e-4)


def test_folders_without_keras_layers_are_refused(keras2_files, tmp_path, capsys):
    folder, _ = keras2_files
    args = ["--out-model", str(tmp_path / "m.prototxt"), "--out-weights", str(tmp_path / "m.caffemodel")]
    assert convert_keras.main(["--input", str(folder / "graph_only_savedmodel")] + args) == 2
    assert "no keras_metadata.pb" in capsys.readouterr().err
    assert convert_keras.main(["--input", str(tmp_path)] + args) == 2
    assert "not a SavedModel folder" in capsys.readouterr().err
    assert not (tmp_path / "m.prototxt").exists()


def test_a_savedmodel_without_tensorflow_says_what_is_missing(keras2_files, tmp_path, capsys, monkeypatch):
    folder, _ = keras2_files
    monkeypatch.setitem(sys.modules, "tensorflow", None)      # as if it were not installed
    assert convert_keras.main(["--input", str(folder / "residual_savedmodel"),
                               "--out-model", str(tmp_path / "m.prototxt"),
                               "--out-weights", str(tmp_path / "m.caffemodel")]) == 2
    err = capsys.readouterr().err.strip()
    assert "needs TensorFlow" in err and len(err.splitlines()) == 1, err
