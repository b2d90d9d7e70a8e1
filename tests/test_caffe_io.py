"""Reading and writing Caffe files: round trips, upgrades of old formats, atomic writes."""
import os

import numpy as np
import pytest

from ristretto_py import FormatError, Net, caffe_io
from ristretto_py.protos import caffe_pb2
from ristretto_py.runtime import NumpyRuntime

from conftest import net_param, write_model

V1_NET = """
name: "v1"
input: "data"
input_dim: 2 input_dim: 3 input_dim: 4 input_dim: 4
layers { name: "fc" type: INNER_PRODUCT bottom: "data" top: "fc"
         blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
         inner_product_param { num_output: 5 } }
layers { name: "relu" type: RELU bottom: "fc" top: "fc" }
layers { name: "prob" type: SOFTMAX bottom: "fc" top: "prob" }
"""

V2_NET = """
name: "v2"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 4 dim: 4 } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
        param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
        inner_product_param { num_output: 5 } }
layer { name: "relu" type: "ReLU" bottom: "fc" top: "fc" }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


def _legacy_blob(array):
    """A BlobProto with the pre-2015 num/channels/height/width fields instead of shape."""
    blob = caffe_pb2.BlobProto()
    padded = (1,) * (4 - array.ndim) + array.shape
    blob.num, blob.channels, blob.height, blob.width = padded
    blob.data.extend(array.ravel().tolist())
    return blob


def test_v1_net_and_legacy_blobs_upgrade_to_the_v2_equivalent(tmp_path):
    rng = np.random.default_rng(0)
    weight, bias = rng.standard_normal((5, 48)).astype(np.float32), rng.standard_normal(5).astype(np.float32)
    v1 = caffe_io.parse_net_text(V1_NET)
    assert [l.type for l in v1.layer] == ["Input", "InnerProduct", "ReLU", "Softmax"]
    assert [(p.lr_mult, p.decay_mult) for p in v1.layer[1].param] == [(1, 1), (2, 0)]
    # A V1 caffemodel: 'layers' with legacy 4-D blob dims.
    v1_weights = caffe_pb2.NetParameter()
    old = v1_weights.layers.add(name="fc", type=caffe_pb2.V1LayerParameter.INNER_PRODUCT)
    old.blobs.extend([_legacy_blob(weight), _legacy_blob(bias)])
    caffe_io.write_net_binary(v1_weights, tmp_path / "v1.caffemodel")
    net_v1 = Net.from_proto(v1, caffe_io.read_net_binary(tmp_path / "v1.caffemodel"))
    net_v2 = Net.from_proto(net_param(V2_NET, {"fc": [weight, bias]}))
    assert net_v1.layer("fc").blobs[0].shape == (5, 48)
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    out_v1 = NumpyRuntime(net_v1).forward({"data": x})["prob"]
    out_v2 = NumpyRuntime(net_v2).forward({"data": x})["prob"]
    np.testing.assert_array_equal(out_v1, out_v2)
    expected = np.maximum(x.reshape(2, -1) @ weight.T + bias, 0)
    expected = np.exp(expected - expected.max(1, keepdims=True))
    np.testing.assert_allclose(out_v1, expected / expected.sum(1, keepdims=True), rtol=1e-5)


def test_net_level_input_fields_become_an_input_layer():
    for header in ('input: "data" input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 6',
                   'input: "data" input_shape { dim: 1 dim: 3 dim: 8 dim: 6 }'):
        param = caffe_io.parse_net_text(header + '\nlayer { name: "r" type: "ReLU" bottom: "data" top: "r" }')
        assert param.layer[0].type == "Input" and list(param.layer[0].top) == ["data"]
        net = Net.from_proto(param)
        assert net.shapes()["r"] == (1, 3, 8, 6)


def test_inconsistent_input_dims_are_refused():
    with pytest.raises(FormatError, match="input_dim"):
        caffe_io.parse_net_text('input: "data" input_dim: 1 input_dim: 3 input_dim: 8')


def test_prototxt_round_trip_keeps_every_field(tmp_path):
    param = caffe_io.parse_net_text(V2_NET)
    caffe_io.write_net_text(param, tmp_path / "a.prototxt")
    assert caffe_io.read_net_text(tmp_path / "a.prototxt") == param


def test_net_save_and_load_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    blobs = {"fc": [rng.standard_normal((5, 48)), rng.standard_normal(5)]}
    model, weights = write_model(tmp_path, V2_NET, blobs)
    net = Net.load(model, weights)
    net.save(tmp_path / "b.prototxt", tmp_path / "b.caffemodel")
    again = Net.load(tmp_path / "b.prototxt", tmp_path / "b.caffemodel")
    assert [l.spec for l in again.layers] == [l.spec for l in net.layers]
    for a, b in zip(net.layers, again.layers):
        assert len(a.blobs) == len(b.blobs)
        for x, y in zip(a.blobs, b.blobs):
            np.testing.assert_array_equal(x, y)


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "out.caffemodel"
    target.write_bytes(b"previous")
    param = caffe_io.parse_net_text(V2_NET)

    def boom(self):
        raise RuntimeError("disk full")
    monkeypatch.setattr(caffe_pb2.NetParameter, "SerializeToString", boom)
    with pytest.raises(RuntimeError):
        caffe_io.write_net_binary(param, target)
    assert target.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["out.caffemodel"]


def test_phase_rules_select_layers():
    text = """
    layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 } } }
    layer { name: "train_only" type: "ReLU" bottom: "data" top: "a" include { phase: TRAIN } }
    layer { name: "test_only" type: "ReLU" bottom: "data" top: "a" include { phase: TEST } }
    layer { name: "not_deploy" type: "TanH" bottom: "a" top: "b" exclude { stage: "deploy" } }
    layer { name: "level" type: "AbsVal" bottom: "a" top: "c" include { min_level: 2 } }
    """
    param = caffe_io.parse_net_text(text)
    names = lambda **kw: [l.name for l in Net.from_proto(param, **kw).layers]
    assert names(phase="TEST") == ["data", "test_only", "not_deploy"]
    assert names(phase="TRAIN") == ["data", "train_only", "not_deploy"]
    assert names(phase="TEST", stages=("deploy",)) == ["data", "test_only"]
    assert names(phase="TEST", level=3) == ["data", "test_only", "not_deploy", "level"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["res10_ssd", "open_nsfw", "mtcnn_onet"])
def test_real_caffemodel_round_trip_is_equal(real_models, tmp_path, name):
    files = real_models(name)
    original = caffe_io.read_net_binary(files.caffemodel)
    caffe_io.write_net_binary(original, tmp_path / "copy.caffemodel")
    assert caffe_io.read_net_binary(tmp_path / "copy.caffemodel") == original
    # Through the Net as well: every blob survives bit for bit.
    net = Net.load(files.prototxt, files.caffemodel)
    net.save(tmp_path / "n.prototxt", tmp_path / "n.caffemodel")
    again = Net.load(tmp_path / "n.prototxt", tmp_path / "n.caffemodel")
    stored = {l.name: l for l in original.layer}
    for layer in again.layers:
        for i, blob in enumerate(layer.blobs):
            reference = caffe_io.blob_to_array(stored[layer.name].blobs[i])
            np.testing.assert_array_equal(blob.ravel(), reference.ravel())
