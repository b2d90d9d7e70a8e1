"""ONNX models converted to Caffe layers and run on the numpy runtime, against onnxruntime (within
1e-4 of the largest output): small hand-built graphs per operator family with Caffe's exactness
rules and the refusals, and the command-line tool. The model zoo and torch's exports are in
test_convert_onnx_models.py."""
import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from ristretto_py import Net
from ristretto_py.cli import convert_onnx, main as ristretto_main
from ristretto_py.convert.onnx_to_caffe import onnx_to_layers, read_onnx
from ristretto_py.errors import FormatError, NetError
from onnx_builders import RNG, agrees, conv, convert, model, node, pad, refused, types, weights


@pytest.mark.parametrize("attrs", [
    dict(pads=[1, 1, 1, 1]),
    dict(strides=[2, 2], pads=[1, 1, 1, 1], dilations=[2, 2], group=2),
    dict(group=4, out_channels=8, bias=False),                       # depthwise
    dict(strides=[2, 2], pads=[0, 0, 1, 1], shape=(1, 4, 7, 7)),     # asymmetric, but the extra
    dict(auto_pad="SAME_UPPER"),                                     # cell is never reached
    dict(auto_pad="SAME_LOWER", strides=[2, 2], shape=(1, 4, 8, 8)),  # odd total, exact at stride 2
    dict(auto_pad="VALID", strides=[2, 1]),
    dict(kernel=1),
])
def test_conv(attrs):
    net = agrees(conv(**attrs))
    assert types(net) == ["Input", "Convolution"]


@pytest.mark.parametrize("attrs", [
    dict(shape=(1, 4, 8, 8), auto_pad="SAME_UPPER", strides=[2, 2]),   # TF SAME: one more cell after
    dict(pads=[1, 1, 0, 0]),                                           # more before: taps after
    dict(pads=[0, 1, 2, 1], strides=[2, 1], dilations=[2, 1]),         # dilated: 2 cells, 1 tap
])
def test_conv_unequal_padding_widens_the_kernel(attrs):
    net = agrees(conv(**attrs))
    assert types(net) == ["Input", "Convolution"]
    param = net.layers[1].spec.convolution_param
    assert (param.kernel_h, param.kernel_w) != (3, 3)        # zero taps were added


def test_conv_refuses_padding_caffe_cannot_mirror():
    refused(conv(pads=[0, 0, 1, 1], dilations=[2, 2]),
            "layer 'conv_node': Conv cannot be converted exactly", "0 padding cells before and 1 after",
            "no widened kernel is exact (dilation 2)")


def test_pad_folds_into_conv_when_exact():
    pad_node, pads = pad([0, 0, 1, 1, 0, 0, 1, 1])
    m = conv(pad_node=pad_node)
    m.graph.initializer.append(numpy_helper.from_array(pads["pads"], "pads"))
    assert types(agrees(m)) == ["Input", "Convolution"]
    pad_node, pads = pad([0, 0, 0, 0, 0, 0, 1, 1])       # after only, at stride 2 on 7 cells
    m = conv(shape=(1, 4, 7, 7), pad_node=pad_node, strides=[2, 2])
    m.graph.initializer.append(numpy_helper.from_array(pads["pads"], "pads"))
    agrees(m)


def test_pad_refusals_name_the_pad():
    pad_node, pads = pad([0, 0, 1, 1, 0, 0, 1, 1], mode="reflect")
    m = conv(pad_node=pad_node)
    m.graph.initializer.append(numpy_helper.from_array(pads["pads"], "pads"))
    refused(m, "layer 'the_pad': Pad cannot be converted exactly: mode 'reflect'")
    pad_node, pads = pad([0, 0, 1, 1, 0, 0, 1, 1])
    m = model([pad_node, node("Relu", ["padded"])], {"x": (1, 2, 5, 5)}, constants=pads)
    refused(m, "layer 'the_pad': Pad cannot be converted exactly: it feeds Relu 'relu_node'")
    pad_node, pads = pad([0, 1, 1, 1, 0, 0, 1, 1])
    m = conv(pad_node=pad_node)
    m.graph.initializer.append(numpy_helper.from_array(pads["pads"], "pads"))
    refused(m, "layer 'the_pad'", "beyond the two spatial axes")


@pytest.mark.parametrize("pads", [[0, 0, 0, 0, 0, 3, 0, 0], [0, 2, 0, 0, 0, 1, 0, 0]])
def test_channel_pad_becomes_zero_channels_and_a_concat(pads):
    """BlazeFace widens a residual branch with a channel Pad before the Add."""
    pad_node, constants = pad(pads)
    channels = 2 + pads[1] + pads[5]
    m = model([pad_node, node("Add", ["padded", "z"])], {"x": (1, 2, 5, 5), "z": (1, channels, 5, 5)},
              constants=constants)
    net = agrees(m)
    assert types(net)[:-1] == ["Input", "Input"] + ["Convolution"] * (1 + (0 not in pads[1:6:4])) + ["Concat"]


@pytest.mark.parametrize("attrs", [dict(strides=[2, 2], pads=[1, 1, 1, 1]), dict(group=2, strides=[2, 2]),
                                   dict(strides=[1, 1], pads=[0, 0, 0, 0], dilations=[2, 2])])
def test_conv_transpose(attrs):
    group = attrs.get("group", 1)
    m = model([node("ConvTranspose", ["x", "w", "b"], **attrs)], {"x": (1, 4, 5, 5)},
              constants={"w": weights(4, 6 // group, 3, 3), "b": weights(6)})
    assert types(agrees(m)) == ["Input", "Deconvolution"]


def test_conv_transpose_output_padding_is_refused():
    m = model([node("ConvTranspose", ["x", "w"], strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1])],
              {"x": (1, 4, 5, 5)}, constants={"w": weights(4, 6, 3, 3)})
    refused(m, "ConvTranspose cannot be converted exactly: padding 1 before and 1 after with output_padding 1")


# -- matrix products -----------------------------------------------------------------------------
@pytest.mark.parametrize("trans_b, c_shape", [(1, (5,)), (0, (1, 5)), (1, ())])
def test_gemm(trans_b, c_shape):
    b = weights(5, 7) if trans_b else weights(7, 5)
    m = model([node("Gemm", ["x", "b", "c"], alpha=0.5, beta=2.0, transB=trans_b)], {"x": (3, 7)},
              constants={"b": b, "c": weights(*c_shape) if c_shape else np.float32(0.3)})
    assert types(agrees(m)) == ["Input", "InnerProduct"]


def test_matmul_with_constant_weights_on_the_last_axis():
    m = model([node("MatMul", ["x", "w"], ["p"]), node("Add", ["p", "bias"])], {"x": (2, 4, 6)},
              constants={"w": weights(6, 5), "bias": weights(5)})
    assert types(agrees(m)) == ["Input", "InnerProduct", "Bias"]


def test_matmul_without_constant_weights_is_refused():
    m = model([node("MatMul", ["x", "z"], name="product")], {"x": (2, 6), "z": (6, 3)})
    refused(m, "test.onnx: layer 'product': MatMul cannot be converted exactly: its second operand "
               "is not a constant")
    m = model([node("Gemm", ["x", "w"], transA=1)], {"x": (6, 2)}, constants={"w": weights(6, 3)})
    refused(m, "transA=1")


# -- normalisation and activations ---------------------------------------------------------------
@pytest.mark.parametrize("opset", [7, 9, 15])
def test_batch_normalization(opset):
    c = 4
    m = model([node("BatchNormalization", ["x", "s", "b", "m", "v"], epsilon=1e-3)], {"x": (2, c, 5, 5)},
              constants={"s": weights(c), "b": weights(c), "m": weights(c), "v": weights(c, positive=True)},
              opset=opset)
    assert types(agrees(m)) == ["Input", "BatchNorm", "Scale"]


@pytest.mark.parametrize("make, expected", [
    (lambda: node("Relu", ["x"]), "ReLU"),
    (lambda: node("LeakyRelu", ["x"], alpha=0.2), "ReLU"),
    (lambda: node("Sigmoid", ["x"]), "Sigmoid"),
    (lambda: node("Tanh", ["x"]), "TanH"),
    (lambda: node("PRelu", ["x", "slope3"]), "PReLU"),
    (lambda: node("PRelu", ["x", "slope1"]), "PReLU"),
    (lambda: node("Clip", ["x", "zero", "six"]), "Clip"),
    (lambda: node("Clip", ["x", "zero"]), "ReLU"),
    (lambda: node("Clip", ["x", "", "six"]), "Clip"),
    (lambda: node("Softmax", ["x"], axis=1), "Softmax"),
    (lambda: node("LRN", ["x"], size=3, alpha=1e-3, beta=0.75, bias=2.0), "LRN"),
    (lambda: node("Abs", ["x"]), "AbsVal"),
    (lambda: node("Neg", ["x"]), "Power"),
])
def test_activations(make, expected):
    constants = {"slope3": weights(3, 1, 1), "slope1": np.array([0.25], np.float32),
                 "zero": np.float32(0), "six": np.float32(0.6)}
    m = model([make()], {"x": (2, 3, 4, 4)}, constants=constants)
    assert expected in types(agrees(m))


@pytest.mark.parametrize("opset, attrs", [(7, dict(min=-0.5, max=0.5)), (7, dict(min=0.0))])
def test_clip_attributes_before_opset_11(opset, attrs):
    agrees(model([node("Clip", ["x"], **attrs)], {"x": (2, 3, 4, 4)}, opset=opset))


def test_softmax_before_opset_13_normalises_the_flattened_trailing_axes():
    net = agrees(model([node("Softmax", ["x"], axis=1)], {"x": (2, 3, 2, 2)}, opset=11))
    assert types(net) == ["Input", "Flatten", "Softmax", "Reshape"]
    assert types(agrees(model([node("Softmax", ["x"])], {"x": (2, 10)}, opset=9))) == ["Input", "Softmax"]


@pytest.mark.parametrize("op, message", [("Elu", "no ELU layer"), ("LogSoftmax", "Caffe has no LogSoftmax")])
def test_activations_without_caffe_layers_are_refused(op, message):
    refused(model([node(op, ["x"], name="act")], {"x": (1, 3, 4, 4)}),
            f"layer 'act': {op} cannot be converted exactly: ", message)


def test_prelu_slope_along_width_is_refused():
    m = model([node("PRelu", ["x", "s"])], {"x": (1, 3, 4, 4)}, constants={"s": weights(4)})
    refused(m, "one slope per channel")


# -- pooling -------------------------------------------------------------------------------------
@pytest.mark.parametrize("op, shape, attrs, caffe", [
    ("MaxPool", (1, 2, 9, 9), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]), ["Pooling"]),
    ("MaxPool", (1, 2, 8, 8), dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1), ["Pooling"]),
    ("MaxPool", (1, 2, 8, 8), dict(kernel_shape=[3, 3], strides=[2, 2]), ["Pooling"]),          # FLOOR
    ("MaxPool", (1, 2, 7, 7), dict(kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 1, 1]), ["Pooling"]),
    ("MaxPool", (1, 2, 8, 8), dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"), ["Pooling"]),
    ("AveragePool", (1, 2, 9, 9), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                                       count_include_pad=1), ["Pooling"]),
    ("AveragePool", (1, 2, 9, 9), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
     ["Pooling", "Scale"]),                         # Caffe counts the padding: divisors corrected
    ("AveragePool", (1, 2, 6, 6), dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1), ["Pooling"]),
    ("AveragePool", (1, 2, 6, 6), dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1, pads=[1, 1, 1, 1],
                                       count_include_pad=1), ["Pooling"]),   # onnxruntime clips as Caffe
    ("AveragePool", (1, 2, 6, 6), dict(kernel_shape=[7, 7], pads=[0, 0, 1, 1]), ["Pooling"]),  # global
    ("AveragePool", (1, 2, 6, 6), dict(kernel_shape=[7, 7], pads=[0, 0, 1, 1], count_include_pad=1),
     ["Pooling", "Scale"]),
    ("GlobalAveragePool", (2, 3, 5, 4), {}, ["Pooling"]),
    ("GlobalMaxPool", (2, 3, 5, 4), {}, ["Pooling"]),
    ("ReduceMean", (2, 3, 5, 4), dict(axes=[2, 3], keepdims=0), ["Pooling", "Flatten"]),
])
def test_pooling(op, shape, attrs, caffe):
    net = agrees(model([node(op, ["x"], **attrs)], {"x": shape}, opset=13 if op != "ReduceMean" else 13))
    assert types(net)[1:] == caffe


def test_pooling_round_mode_follows_onnx_ceil_mode():
    attrs = dict(kernel_shape=[3, 3], strides=[2, 2])
    floor = convert(model([node("MaxPool", ["x"], **attrs)], {"x": (1, 1, 8, 8)}))[0].layers[1]
    ceil = convert(model([node("MaxPool", ["x"], ceil_mode=1, **attrs)], {"x": (1, 1, 8, 8)}))[0].layers[1]
    assert floor.spec.pooling_param.round_mode == floor.spec.pooling_param.FLOOR
    assert ceil.spec.pooling_param.round_mode == ceil.spec.pooling_param.CEIL


@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
def test_ceil_mode_drops_a_last_window_starting_in_the_padding(op):
    """onnxruntime (and onnx's reference evaluator, Caffe, PyTorch) drop it; onnx's shape
    inference keeps it (4 x 4 here, not 3 x 3): the shapes after it must follow onnxruntime."""
    nodes = [node(op, ["x"], ["p"], kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1),
             node("Flatten", ["p"], ["f"]), node("Relu", ["f"])]
    net = agrees(model(nodes, {"x": (2, 2, 5, 5)}))
    assert net.shapes()["y"] == (2, 18)


def test_pad_folds_into_max_pooling_only_over_non_negative_values():
    pad_node, pads = pad([0, 0, 1, 1, 0, 0, 1, 1])
    nodes = [node("Relu", ["x"], ["r"]), pad_node, node("MaxPool", ["padded"], kernel_shape=[3, 3], strides=[2, 2])]
    nodes[1].input[0] = "r"
    assert types(agrees(model(nodes, {"x": (1, 2, 9, 9)}, constants=pads))) == ["Input", "ReLU", "Pooling"]
    pad_node, pads = pad([0, 0, 1, 1, 0, 0, 1, 1])
    m = model([pad_node, node("MaxPool", ["padded"], kernel_shape=[3, 3], strides=[2, 2], name="mp")],
              {"x": (1, 2, 9, 9)}, constants=pads)
    refused(m, "layer 'mp': MaxPool cannot be converted exactly: the zeros a Pad node adds")
    pad_node, pads = pad([0, 0, 1, 1, 0, 0, 1, 1])       # zeros count in ONNX's average, as in Caffe's
    m = model([pad_node, node("AveragePool", ["padded"], kernel_shape=[3, 3], strides=[2, 2])],
              {"x": (1, 2, 9, 9)}, constants=pads)
    assert types(agrees(m)) == ["Input", "Pooling"]


def test_pooling_refusals():
    m = model([node("MaxPool", ["x"], kernel_shape=[2, 2], dilations=[2, 2], name="mp")], {"x": (1, 1, 8, 8)})
    refused(m, "layer 'mp': MaxPool cannot be converted exactly: dilated pooling windows")
    m = model([node("MaxPool", ["x"], kernel_shape=[3, 3], pads=[2, 2, 0, 0])], {"x": (1, 1, 4, 4)})
    refused(m, "4 windows of 3 cells (stride 1, padding 2+0 before, 0+0 after) on a 4-cell axis: Caffe's "
               "window rule gives 6 (ceil) or 6 (floor)")
    m = model([node("ReduceMean", ["x"], axes=[1])], {"x": (1, 3, 4, 4)})
    refused(m, "only the two spatial axes")


# -- arithmetic ----------------------------------------------------------------------------------
@pytest.mark.parametrize("op, constant, first, caffe", [
    ("Add", weights(3, 1, 1), False, "Bias"),
    ("Add", np.float32(0.5), True, "Power"),
    ("Sub", weights(3, 1, 1), False, "Bias"),
    ("Sub", weights(3, 1, 1), True, "Scale"),
    ("Sub", np.float32(2.0), True, "Power"),
    ("Mul", weights(3, 4, 4), False, "Scale"),
    ("Mul", np.full((1, 1, 1), 3.0, np.float32), True, "Power"),
    ("Div", weights(3, 1, 1, positive=True), False, "Scale"),
    ("Div", np.float32(2.0), True, "Power"),
    ("Add", weights(4), False, "Bias"),                 # along the width
])
def test_arithmetic_with_a_constant(op, constant, first, caffe):
    inputs = ["c", "x"] if first else ["x", "c"]
    m = model([node(op, inputs)], {"x": (2, 3, 4, 4)}, constants={"c": constant})
    feeds = {"x": RNG.uniform(0.5, 2.0, (2, 3, 4, 4)).astype(np.float32)}
    assert types(agrees(m, feeds)) == ["Input", caffe]


@pytest.mark.parametrize("op, shapes, caffe", [
    ("Add", [(2, 3, 4, 4), (2, 3, 4, 4)], ["Eltwise"]),
    ("Sub", [(2, 3, 4, 4), (2, 3, 4, 4)], ["Eltwise"]),
    ("Mul", [(2, 3, 4, 4), (2, 3, 4, 4)], ["Eltwise"]),
    ("Max", [(2, 3, 4, 4), (2, 3, 4, 4)], ["Eltwise"]),
    ("Sum", [(2, 3, 4, 4)] * 3, ["Eltwise"]),
    ("Mul", [(2, 3, 4, 4), (2, 3, 1, 1)], ["Reshape", "Scale"]),     # squeeze-and-excitation
    ("Add", [(2, 3, 4, 4), (4,)], ["Bias"]),
    ("Sub", [(2, 3, 4, 4), (3, 1, 1)], ["Reshape", "Power", "Bias"]),
])
def test_arithmetic_between_tensors(op, shapes, caffe):
    names = [f"x{i}" for i in range(len(shapes))]
    net = agrees(model([node(op, names)], dict(zip(names, shapes))))
    assert [t for t in types(net) if t != "Input"] == caffe


def test_arithmetic_refusals():
    refused(model([node("Div", ["a", "b"], name="ratio")], {"a": (1, 3, 2, 2), "b": (1, 3, 2, 2)}),
            "layer 'ratio': Div cannot be converted exactly: a division of two tensors")
    refused(model([node("Add", ["x", "c"])], {"x": (2, 3, 2, 2)}, constants={"c": weights(2, 1, 1, 1)}),
            "differs between the items of the batch")
    refused(model([node("Add", ["a", "b"])], {"a": (1, 3, 1, 4), "b": (1, 1, 2, 1)}), "both broadcast")
    refused(model([node("Div", ["c", "x"])], {"x": (1, 3, 2, 2)}, constants={"c": weights(3, 1, 1)}),
            "a constant divided by a tensor")


# -- tensors -------------------------------------------------------------------------------------
def test_concat_flatten_transpose_dropout_identity():
    nodes = [node("Concat", ["a", "b"], ["cat"], axis=1), node("Dropout", ["cat"], ["drop"]),
             node("Identity", ["drop"], ["same"]), node("Transpose", ["same"], ["t"], perm=[0, 2, 3, 1]),
             node("Flatten", ["t"], ["f"], axis=2), node("Flatten", ["same"], ["y"], axis=1)]
    net = agrees(model(nodes, {"a": (2, 2, 3, 3), "b": (2, 1, 3, 3)}, outputs=("y", "f")))
    assert types(net) == ["Input", "Input", "Concat", "Permute", "Reshape", "Flatten"]


def test_channel_shuffle_reshapes_convert_exactly():
    """ONNX and Caffe share the N x C x H x W layout: a Reshape that splits the channel axis (the
    ShuffleNet shuffle) moves no element and is a Caffe Reshape."""
    nodes = [node("Reshape", ["x", "split"], ["r"]), node("Transpose", ["r"], ["t"], perm=[0, 2, 1, 3, 4]),
             node("Reshape", ["t", "merge"])]
    m = model(nodes, {"x": (2, 6, 3, 3)}, constants={"split": np.array([2, 2, 3, 3, 3], np.int64),
                                                     "merge": np.array([0, -1, 3, 3], np.int64)})
    assert types(agrees(m)) == ["Input", "Reshape", "Permute", "Reshape"]


def test_shape_chains_are_folded():
    """torch's ``x.view(x.size(0), -1)``: Shape -> Gather -> Unsqueeze -> Concat -> Reshape."""
    nodes = [node("Shape", ["x"], ["s"]), node("Gather", ["s", "zero"], ["n"], axis=0),
             node("Unsqueeze", ["n", "axes"], ["n1"]), node("Concat", ["n1", "minus_one"], ["target"], axis=0),
             node("Reshape", ["x", "target"], ["flat"]), node("Gemm", ["flat", "w"], transB=1)]
    m = model(nodes, {"x": (3, 2, 2, 2)}, constants={"zero": np.array(0, np.int64), "axes": np.array([0], np.int64),
                                                     "minus_one": np.array([-1], np.int64), "w": weights(4, 8)})
    assert types(agrees(m)) == ["Input", "Reshape", "InnerProduct"]


@pytest.mark.parametrize("opset", [11, 13])
def test_squeeze_unsqueeze(opset):
    if opset < 13:
        nodes = [node("Squeeze", ["x"], ["s"], axes=[2, 3]), node("Unsqueeze", ["s"], axes=[2])]
        constants = {}
    else:
        nodes = [node("Squeeze", ["x", "a23"], ["s"]), node("Unsqueeze", ["s", "a2"])]
        constants = {"a23": np.array([2, 3], np.int64), "a2": np.array([2], np.int64)}
    net = agrees(model(nodes, {"x": (2, 5, 1, 1)}, constants=constants, opset=opset))
    assert types(net) == ["Input", "Reshape", "Reshape"]


def test_reshape_to_a_computed_shape_is_refused():
    m = model([node("Reshape", ["x", "target"], name="rs")], {"x": (1, 4, 2, 2)}, int_inputs=[("target", (2,))])
    refused(m, "layer 'rs': Reshape cannot be converted exactly: its target shape is computed from the data")


# -- graphs, opsets, inputs ----------------------------------------------------------------------
def test_unsupported_operator_is_named_first():
    lstm = helper.make_node("LSTM", ["x", "w", "r"], ["y"], hidden_size=2)
    m = model([node("Relu", ["seq"], ["x"]), lstm], {"seq": (3, 1, 2)},
              constants={"w": weights(1, 8, 2), "r": weights(1, 8, 2)})
    refused(m, "test.onnx: layer 'LSTM#1': LSTM cannot be converted exactly: no Caffe equivalent")
    custom = helper.make_node("FusedConv", ["x"], ["y"], name="fused", domain="com.microsoft")
    m = model([custom], {"x": (1, 3, 4, 4)})
    m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    refused(m, "layer 'fused'", "of domain 'com.microsoft'")


@pytest.mark.parametrize("opset", [7, 9, 11, 13, 17, 21])
def test_a_small_cnn_at_every_opset(opset):
    clip = ([node("Clip", ["r"], ["c"], min=0.0, max=6.0)] if opset < 11
            else [node("Clip", ["r", "zero", "six"], ["c"])])
    nodes = [node("Conv", ["x", "w", "b"], ["h"], pads=[1, 1, 1, 1]),
             node("BatchNormalization", ["h", "s", "bb", "m", "v"], ["n"]), node("Relu", ["n"], ["r"]), *clip,
             node("MaxPool", ["c"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             node("Flatten", ["p"], ["f"]), node("Gemm", ["f", "fw", "fb"], ["g"], transB=1),
             node("Softmax", ["g"], axis=1)]
    constants = {"w": weights(4, 3, 3, 3), "b": weights(4), "s": weights(4), "bb": weights(4), "m": weights(4),
                 "v": weights(4, positive=True), "fw": weights(5, 64), "fb": weights(5),
                 "zero": np.float32(0), "six": np.float32(6)}
    agrees(model(nodes, {"x": (2, 3, 8, 8)}, constants=constants, opset=opset))


def test_free_dimensions_need_input_shapes():
    m = model([node("Relu", ["x"])], {"x": ("N", 3, "H", "W")})
    with pytest.raises(NetError, match=r"free dimensions \(\?,3,\?,\?\): give its shape \(--input_shape x="):
        onnx_to_layers(m, "test.onnx")
    net = agrees(m, input_shapes={"x": (2, 3, 5, 6)})
    assert net.shapes()["y"] == (2, 3, 5, 6)
    with pytest.raises(NetError, match="does not fit"):
        onnx_to_layers(m, "test.onnx", {"x": (2, 4, 5, 6)})
    with pytest.raises(NetError, match="not an input of the model"):
        onnx_to_layers(m, "test.onnx", {"image": (2, 3, 5, 6)})
    batch_only = model([node("Relu", ["x"])], {"x": ("N", 3, 4, 4)})
    assert convert(batch_only)[0].shapes()["x"] == (1, 3, 4, 4)


def test_read_onnx_errors(tmp_path):
    with pytest.raises(FormatError, match="no such ONNX model file"):
        read_onnx(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x07\xff\xff garbage")
    with pytest.raises(FormatError, match="junk.onnx: .*not an ONNX model"):
        read_onnx(tmp_path / "junk.onnx")


# -- the command-line tool -----------------------------------------------------------------------
def test_cli_writes_caffe_files(tmp_path, capsys):
    m = model([node("Conv", ["x", "w"], ["h"]), node("Relu", ["h"])], {"x": ("N", 3, "H", "W")},
              constants={"w": weights(2, 3, 3, 3)})
    onnx.save(m, tmp_path / "m.onnx")
    prototxt, caffemodel = tmp_path / "m.prototxt", tmp_path / "m.caffemodel"
    args = ["--input", str(tmp_path / "m.onnx"), "--out_model", str(prototxt), "--out_weights", str(caffemodel)]
    assert convert_onnx.main(args + ["--input_shape", "2,3,6,6"]) == 0
    assert "outputs: y [2, 2, 4, 4]" in capsys.readouterr().out
    net = Net.load(prototxt, caffemodel)
    assert net.name == "m" and types(net) == ["Input", "Convolution", "ReLU"]
    assert ristretto_main.main(["convert_onnx"] + args + ["--input_shape", "x=1,3,5,5", "--name", "n"]) == 0
    assert Net.load(prototxt).name == "n"
    assert convert_onnx.main(args) == 2
    assert "free dimensions" in capsys.readouterr().err


def test_cli_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "bad.onnx").write_bytes(b"not an onnx file at all")
    out = ["--out_model", str(tmp_path / "a.prototxt"), "--out_weights", str(tmp_path / "a.caffemodel")]
    assert convert_onnx.main(["--input", str(tmp_path / "bad.onnx")] + out) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.onnx" in err and "not an ONNX model" in err
    onnx.save(model([node("Elu", ["x"], name="e")], {"x": (1, 2, 3, 3)}), tmp_path / "elu.onnx")
    assert convert_onnx.main(["--input", str(tmp_path / "elu.onnx")] + out) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("layer 'e': Elu cannot be converted exactly: ristretto-py's Caffe layer set has no ELU layer")
    assert not (tmp_path / "a.prototxt").exists()


# -- the light model zoo shipped with onnx -------------------------------------------------------


def test_a_bias_add_after_a_product_becomes_its_bias():
    """tf2onnx writes TensorFlow's BiasAdd as MatMul + Add and Conv + Add: one Caffe layer with
    a bias each, so Ristretto's layers trim after the bias as TFLite requantizes."""
    fc = model([node("MatMul", ["x", "w"], ["p"]), node("Add", ["p", "b"])], {"x": (2, 6)},
               constants={"w": weights(6, 4), "b": weights(4)})
    net = agrees(fc)
    assert types(net) == ["Input", "InnerProduct"] and net.layers[1].spec.inner_product_param.bias_term
    cv = model([node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), node("Add", ["c", "b"])],
               {"x": (1, 3, 6, 6)}, constants={"w": weights(5, 3, 3, 3), "b": weights(1, 5, 1, 1)})
    net = agrees(cv)
    assert types(net) == ["Input", "Convolution"] and len(net.layers[1].blobs) == 2
    # the product is also a model output: it stays, and the Bias with it
    both = model([node("MatMul", ["x", "w"], ["p"]), node("Add", ["p", "b"])], {"x": (2, 6)},
                 outputs=("y", "p"), constants={"w": weights(6, 4), "b": weights(4)})
    assert types(agrees(both)) == ["Input", "InnerProduct", "Bias"]
