"""QDQ ONNX models read back (convert/onnx_qdq.py): our own QDQ export gives back exactly the
formats it was written from, onnxruntime's quantizer's models become their float model plus the
nearest formats (with the ReLU folded into a zero point restored), and what cannot be read."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from ristretto_py.convert.onnx_qdq import QdqFormat, describe, nearest_format, strip_qdq
from ristretto_py.errors import UnsupportedError
from ristretto_py.runtime.quantized_export import export_quantized
from test_layer_formats import all_types_input, all_types_net


def test_our_qdq_export_reads_back_as_its_exact_formats():
    net = all_types_net()
    model = export_quantized(net, "qdq").model
    float_model, formats = strip_qdq(model)
    onnx.checker.check_model(float_model)
    assert not {n.op_type for n in float_model.graph.node} & {"QuantizeLinear", "DequantizeLinear"}
    conv = net.impls[1].precision                    # ConvolutionRistretto "conv"
    weight = [f for name, f in formats.items() if name.startswith("dequantizelinear")
              and f.bits <= conv.bw_params and np.size(f.scale) == 1 and f.scale == 2.0 ** -conv.fl_params]
    assert weight, "the conv's weight format"
    choices = {name: nearest_format(f) for name, f in formats.items()}
    assert all(c.exact for name, c in choices.items() if formats[name].bits <= 8), describe(formats)
    assert {c.fractional_length for c in choices.values() if np.ndim(c.fractional_length) == 0} >= {
        conv.fl_layer_in, conv.fl_params}
    # the float model holds the trimmed weights, exactly
    from ristretto_py import numerics
    trimmed = numerics.trim_fixed_point(net.layers[1].blobs[0], conv.bw_params, conv.fl_params)
    stored = [numpy_helper.to_array(t) for t in float_model.graph.initializer
              if tuple(t.dims) == trimmed.shape]
    assert any(np.array_equal(s, trimmed) for s in stored)


def _float_conv_model():
    weights = np.random.default_rng(0).normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        [numpy_helper.from_array(weights, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_onnxruntime_quantizer_models_give_their_float_model_and_nearest_formats(tmp_path):
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)
    model = _float_conv_model()
    onnx.save(model, tmp_path / "f.onnx")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"x": np.random.default_rng(i).normal(size=(1, 3, 8, 8)).astype(np.float32)}
                                 for i in range(4)])

        def get_next(self):
            return next(self.batches, None)
    quantize_static(str(tmp_path / "f.onnx"), str(tmp_path / "q.onnx"), Reader(),
                    quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    quantized = onnx.load(tmp_path / "q.onnx")
    assert "Relu" not in {n.op_type for n in quantized.graph.node}   # folded into a zero point
    float_model, formats = strip_qdq(quantized)
    ops = [n.op_type for n in float_model.graph.node]
    assert "Relu" in ops and "QuantizeLinear" not in ops
    x = np.random.default_rng(9).normal(size=(1, 3, 8, 8)).astype(np.float32)
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    reference = run(model)
    np.testing.assert_allclose(run(float_model), reference, atol=0.05)   # int8 weights only
    assert np.min(run(float_model)) == 0
    relu_format = next(f for name, f in formats.items() if name.endswith("_relu"))
    choice = nearest_format(relu_format)
    # zero point -128 in int8: range [0, 255 s]; 8 signed bits hold it with a step 2x coarser
    assert not choice.exact and choice.range_lost == 0
    assert 2.0 ** -choice.fractional_length >= 255 * float(relu_format.scale) / 127
    lines = describe(formats)
    assert any("per channel" in line for line in lines) and any("zero point -128" in line for line in lines)


def test_exact_and_nearest_formats_by_hand():
    exact = nearest_format(QdqFormat(np.float32(2 ** -5), np.int64(0), 8, True))
    assert exact.exact and exact.fractional_length == 5 and exact.bit_width == 8
    near = nearest_format(QdqFormat(np.float32(0.1), np.int64(0), 8, True))
    # -log2 0.1 = 3.32 -> 3, and 127 * 2^-3 = 15.9 holds the range 12.7
    assert not near.exact and near.fractional_length == 3 and near.range_lost == 0
    channels = nearest_format(QdqFormat(np.array([2 ** -3, 2 ** -6], np.float32),
                                        np.zeros(2, np.int64), 4, True, axis=0))
    assert channels.exact and list(channels.fractional_length) == [3, 6]


def test_a_computed_scale_is_refused():
    graph = helper.make_graph(
        [helper.make_node("Identity", ["s0"], ["s"]),
         helper.make_node("QuantizeLinear", ["x", "s"], ["q"]),
         helper.make_node("DequantizeLinear", ["q", "s"], ["y"], name="dq")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        [numpy_helper.from_array(np.float32(0.5), "s0")])
    with pytest.raises(UnsupportedError) as info:
        strip_qdq(helper.make_model(graph))
    assert "computed" in str(info.value) and "dq" in str(info.value)
