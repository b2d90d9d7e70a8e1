"""Builders of small ONNX graphs and the comparison the ONNX converter's tests share: convert,
run on the numpy runtime and on onnxruntime, compare every output (within 1e-4 of the largest)."""
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from ristretto_py import Net
from ristretto_py.convert.onnx_to_caffe import onnx_to_layers
from ristretto_py.errors import UnsupportedError
from ristretto_py.runtime import make_runtime
from conftest import close_to

LIGHT = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
RNG = np.random.default_rng(0)


def weights(*shape, positive=False):
    if positive:
        return RNG.uniform(0.5, 1.5, shape).astype(np.float32)
    return RNG.normal(0, 0.5, shape).astype(np.float32)


def model(nodes, inputs, outputs=("y",), constants=None, opset=13, int_inputs=()):
    """An ONNX model: ``inputs`` {name: shape} (float), the outputs' shapes left to inference."""
    graph = helper.make_graph(
        nodes, "test",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()]
        + [helper.make_tensor_value_info(n, TensorProto.INT64, s) for n, s in int_inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
        [numpy_helper.from_array(np.asarray(v), n) for n, v in (constants or {}).items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                             ir_version=min(onnx.IR_VERSION, 10 if opset > 20 else 8))


def node(op, inputs, outputs=("y",), name=None, **attrs):
    return helper.make_node(op, list(inputs), list(outputs), name=name or f"{op.lower()}_{'node' if outputs[0] == 'y' else outputs[0]}", **attrs)


def convert(onnx_model, input_shapes=None):
    layers, outputs = onnx_to_layers(onnx_model, "test.onnx", input_shapes)
    return Net(layers, name="test", source="test.onnx"), outputs


def agrees(onnx_model, feeds=None, input_shapes=None, tolerance=1e-4):
    """Convert, run both, compare every output; return the Caffe net."""
    net, outputs = convert(onnx_model, input_shapes)
    shapes = net.shapes()
    if feeds is None:
        feeds = {name: RNG.normal(0, 1, shapes[name]).astype(np.float32) for name in net.input_blobs}
    ours = make_runtime(net, "numpy").forward(feeds)
    session = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    theirs = session.run(None, feeds)
    for blob, expected in zip(outputs, theirs):
        assert ours[blob].shape == expected.shape, (blob, ours[blob].shape, expected.shape)
        assert close_to(ours[blob], expected, tolerance), (blob, np.abs(ours[blob] - expected).max())
    return net


def types(net):
    return [layer.type for layer in net.layers]


def refused(onnx_model, *fragments, input_shapes=None):
    with pytest.raises(UnsupportedError) as info:
        onnx_to_layers(onnx_model, "test.onnx", input_shapes)
    text = str(info.value)
    assert len(text.splitlines()) == 1
    for fragment in fragments:
        assert fragment in text, text
    return text


def conv(shape=(1, 4, 9, 9), out_channels=6, kernel=3, group=1, bias=True, opset=13, pad_node=None, **attrs):
    w = weights(out_channels, shape[1] // group, kernel, kernel)
    constants = {"w": w, **({"b": weights(out_channels)} if bias else {})}
    nodes = [node("Conv", ["x", "w"] + (["b"] if bias else []), group=group, **attrs)]
    if pad_node is not None:
        nodes = [pad_node] + [node("Conv", ["padded", "w"] + (["b"] if bias else []), group=group, **attrs)]
    return model(nodes, {"x": shape}, constants=constants, opset=opset)


def pad(pads, mode="constant"):
    return node("Pad", ["x", "pads"], ["padded"], name="the_pad", mode=mode), {"pads": np.array(pads, np.int64)}
