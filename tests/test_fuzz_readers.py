"""Corrupted caffemodels and prototxts: a RistrettoError every time, never a crash or a hang."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ristretto_py import Net, RistrettoError, caffe_io
from ristretto_py.runtime import NumpyRuntime

from conftest import net_param

TEXT = """
name: "fuzz"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 2 dim: 2 } } }
layer { name: "act" type: "PReLU" bottom: "data" top: "act" }
layer { name: "pow" type: "Power" bottom: "act" top: "act" power_param { power: 2 shift: 1 } }
layer { name: "out" type: "Sigmoid" bottom: "act" top: "out" }
"""
WEIGHTS = net_param(TEXT, {"act": [np.array([0.25, 0.5, 0.75])]}).SerializeToString()
FUZZ = settings(max_examples=300, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])


def _load_and_run(model_text, weights_bytes, tmp_path):
    model, weights = tmp_path / "m.prototxt", tmp_path / "w.caffemodel"
    model.write_text(model_text)
    weights.write_bytes(weights_bytes)
    try:
        net = Net.load(model, weights)
        NumpyRuntime(net).forward({"data": np.ones(net.shapes()["data"], np.float32)})
    except RistrettoError as exc:
        assert "\n" not in str(exc) and str(exc)


@FUZZ
@given(data=st.data())
def test_corrupted_caffemodel(tmp_path_factory, data):
    blob = bytearray(WEIGHTS)
    for _ in range(data.draw(st.integers(1, 6))):
        position = data.draw(st.integers(0, len(blob) - 1))
        action = data.draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        if action == "flip":
            blob[position] ^= data.draw(st.integers(1, 255))
        elif action == "cut":
            del blob[position:]
            if not blob:
                blob = bytearray(b"\x00")
        elif action == "insert":
            blob[position:position] = data.draw(st.binary(min_size=1, max_size=8))
        elif len(blob) > 1:
            del blob[position]
    _load_and_run(TEXT, bytes(blob), tmp_path_factory.mktemp("c"))


@FUZZ
@given(data=st.data())
def test_corrupted_prototxt(tmp_path_factory, data):
    text = list(TEXT)
    alphabet = st.sampled_from(list('{}":-0123456789 \nabcxyz_.') + ["dim", "layer", "top", "e9"])
    for _ in range(data.draw(st.integers(1, 5))):
        position = data.draw(st.integers(0, len(text) - 1))
        if data.draw(st.booleans()):
            del text[position]
        else:
            text.insert(position, data.draw(alphabet))
    _load_and_run("".join(text), WEIGHTS, tmp_path_factory.mktemp("p"))


@pytest.mark.parametrize("payload", [b"", b"\x00" * 64, bytes(range(256)) * 4,
                                     b"\x0a\xff\xff\xff\xff\x0f", b"\x12" * 1000])
def test_garbage_caffemodels(tmp_path, payload):
    path = tmp_path / "g.caffemodel"
    path.write_bytes(payload)
    with pytest.raises(RistrettoError):
        caffe_io.read_net_binary(path)
