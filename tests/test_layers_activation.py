"""Activation layers and the shape-only source layers: hand-computed values (PReLU shared and per
channel, ReLU's negative slope, Power), OpenCV's importer, and onnxruntime for the export."""
import numpy as np
import pytest

from ristretto_py import Net
from ristretto_py.runtime import NumpyRuntime, OnnxRuntime
from conftest import close_to, net_param, opencv_forward, write_model

INPUT = 'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 4 dim: 5 } } }\n'
X = np.random.default_rng(5).standard_normal((2, 3, 4, 5)).astype(np.float32) * 3


@pytest.mark.parametrize("layer, blobs, formula", [
    ('type: "ReLU"', None, lambda x: np.maximum(x, 0)),
    ('type: "ReLU" relu_param { negative_slope: 0.1 }', None, lambda x: np.where(x > 0, x, 0.1 * x)),
    ('type: "PReLU"', [np.array([0.1, 0.2, 0.3], np.float32)],
     lambda x: np.where(x > 0, x, x * np.array([0.1, 0.2, 0.3]).reshape(1, 3, 1, 1))),
    ('type: "PReLU" prelu_param { channel_shared: true }', [np.array([0.25], np.float32)],
     lambda x: np.where(x > 0, x, 0.25 * x)),
    ('type: "Sigmoid"', None, lambda x: 1 / (1 + np.exp(-x.astype(np.float64)))),
    ('type: "TanH"', None, np.tanh),
    ('type: "AbsVal"', None, np.abs),
    ('type: "Power" power_param { power: 2 scale: 0.5 shift: 1 }', None, lambda x: (1 + 0.5 * x) ** 2),
    ('type: "Dropout" dropout_param { dropout_ratio: 0.3 }', None, lambda x: x),
])
def test_activation_formula_opencv_and_onnxruntime(tmp_path, layer, blobs, formula):
    text = INPUT + f'layer {{ name: "act" {layer} bottom: "data" top: "act" }}'
    model, weights = write_model(tmp_path, text, {"act": blobs} if blobs else None)
    net = Net.load(model, weights)
    ours = NumpyRuntime(net).forward({"data": X})["act"]
    assert close_to(ours, formula(X.astype(np.float64)), 1e-6)
    assert close_to(ours, opencv_forward(model, weights, X, "act"), 1e-5)
    assert close_to(OnnxRuntime(net).forward({"data": X})["act"], ours, 1e-6)


def test_prelu_hand_case():
    text = ('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 1 dim: 2 } } }\n'
            'layer { name: "shared" type: "PReLU" bottom: "data" top: "s" prelu_param { channel_shared: true } }\n'
            'layer { name: "each" type: "PReLU" bottom: "data" top: "e" }')
    net = Net.from_proto(net_param(text, {"shared": [[0.5]], "each": [[0.5, 2.0]]}))
    assert net.layer("shared").blobs[0].shape == (1,) and net.layer("each").blobs[0].shape == (2,)
    out = NumpyRuntime(net).forward({"data": np.array([[[[-2, 3]], [[-4, 1]]]], np.float32)})
    np.testing.assert_array_equal(out["s"].ravel(), [-1, 3, -2, 1])
    np.testing.assert_array_equal(out["e"].ravel(), [-1, 3, -8, 1])


def test_memory_and_dummy_data_give_shapes():
    text = ('layer { name: "m" type: "MemoryData" top: "m" top: "ml" '
            'memory_data_param { batch_size: 4 channels: 3 height: 5 width: 6 } }\n'
            'layer { name: "d" type: "DummyData" top: "d" dummy_data_param { shape { dim: 2 dim: 7 } } }')
    shapes = Net.from_proto(net_param(text)).shapes()
    assert shapes["m"] == (4, 3, 5, 6) and shapes["ml"] == (4,) and shapes["d"] == (2, 7)
