"""Bad input gets one clear error naming the file and the layer."""
import numpy as np
import pytest

from ristretto_py import FormatError, Net, NetError, RistrettoError, UnsupportedError, caffe_io

from conftest import write_model

GOOD = """
name: "small"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 4 dim: 4 } } }
layer { name: "act" type: "PReLU" bottom: "data" top: "act" }
layer { name: "out" type: "TanH" bottom: "act" top: "out" }
"""
SLOPES = {"act": [np.array([0.1, 0.2, 0.3])]}


def _one_line(exc):
    text = str(exc)
    assert "\n" not in text
    return text


def test_malformed_prototxt_names_file_and_line(tmp_path):
    path = tmp_path / "bad.prototxt"
    path.write_text(GOOD.replace('type: "TanH"', 'type: "TanH" colour: 3'))
    with pytest.raises(FormatError) as info:
        caffe_io.read_net_text(path)
    text = _one_line(info.value)
    assert str(path) in text and "line 5" in text and "colour" in text


def test_binary_file_given_as_prototxt(tmp_path):
    path = tmp_path / "x.prototxt"
    path.write_bytes(b"\x08\xff\xfe\x00\x9c")
    with pytest.raises(FormatError, match="not UTF-8"):
        caffe_io.read_net_text(path)


def test_missing_file(tmp_path):
    with pytest.raises(FormatError, match="no such file"):
        caffe_io.read_net_text(tmp_path / "absent.prototxt")


@pytest.mark.parametrize("cut", [1, 7, 0.5, -3])
def test_truncated_caffemodel(tmp_path, cut):
    model, weights = write_model(tmp_path, GOOD, SLOPES)
    data = weights.read_bytes()
    size = int(len(data) * cut) if isinstance(cut, float) else (cut if cut > 0 else len(data) + cut)
    weights.write_bytes(data[:size])
    with pytest.raises(RistrettoError) as info:
        Net.load(model, weights)
    assert str(weights) in _one_line(info.value)


def test_text_file_given_as_caffemodel(tmp_path):
    model, _ = write_model(tmp_path, GOOD, SLOPES)
    with pytest.raises(FormatError) as info:
        caffe_io.read_net_binary(model)
    assert str(model) in _one_line(info.value)


def test_blob_with_wrong_shape(tmp_path):
    model, weights = write_model(tmp_path, GOOD, {"act": [np.array([0.1, 0.2])]})
    with pytest.raises(NetError) as info:
        Net.load(model, weights)
    text = _one_line(info.value)
    assert "layer 'act'" in text and "[2]" in text and "[3]" in text and str(weights) in text


def test_blob_the_prototxt_does_not_expect(tmp_path):
    model, weights = write_model(tmp_path, GOOD, {"act": SLOPES["act"], "out": [np.ones(3)]})
    with pytest.raises(NetError, match="layer 'out'.*holds 1 blobs but this TanH layer expects 0"):
        Net.load(model, weights)


def test_layer_without_its_weights(tmp_path):
    model, weights = write_model(tmp_path, GOOD, {})
    # write_model with no blobs writes no caffemodel layers' blobs
    with pytest.raises(NetError, match="layer 'act'.*no blobs"):
        Net.load(model, weights)


def test_unknown_layer_type(tmp_path):
    model, _ = write_model(tmp_path, GOOD.replace('"TanH"', '"Frobnicate"'))
    with pytest.raises(UnsupportedError) as info:
        Net.load(model)
    text = _one_line(info.value)
    assert "layer 'out'" in text and "Frobnicate" in text and str(model) in text


def test_missing_bottom(tmp_path):
    model, _ = write_model(tmp_path, GOOD.replace('bottom: "act" top: "out"', 'bottom: "ghost" top: "out"'))
    with pytest.raises(NetError, match="layer 'out'.*bottom 'ghost'"):
        Net.load(model)


def test_top_written_twice_without_being_in_place(tmp_path):
    model, _ = write_model(tmp_path, GOOD.replace('bottom: "act" top: "out"', 'bottom: "data" top: "act"'))
    with pytest.raises(NetError, match="layer 'out'.*already produced"):
        Net.load(model)


def test_duplicate_layer_names(tmp_path):
    model, _ = write_model(tmp_path, GOOD.replace('name: "out"', 'name: "act"'))
    with pytest.raises(NetError, match="two layers"):
        Net.load(model)


def test_input_with_wrong_shape_at_run_time(tmp_path):
    from ristretto_py.runtime import NumpyRuntime
    model, weights = write_model(tmp_path, GOOD, SLOPES)
    runtime = NumpyRuntime(Net.load(model, weights))
    with pytest.raises(NetError, match="input 'data' has shape"):
        runtime.forward({"data": np.zeros((1, 2, 4, 4), np.float32)})
    with pytest.raises(NetError, match="no input given"):
        runtime.forward({})
