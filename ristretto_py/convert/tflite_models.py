"""TFLite models (``.tflite`` flatbuffers) turned into ONNX models for ``onnx_to_caffe``.

tf2onnx reads the flatbuffer and translates its operators (``pip install tf2onnx``); this module
checks the file, names the graph's inputs and outputs after the model's signature where it has
one (``image``, ``output_0``) and otherwise after its tensors (without ``:0``), and finishes the
ONNX model the way ``tf_graphs`` does: 4-D inputs and outputs as NCHW (tf2onnx's
``inputs_as_nchw`` / ``outputs_as_nchw``), free dimensions fixed (batch 1 unless shapes are given,
in Caffe's N,C,H,W order), shape arithmetic folded.

Float models (float32 weights, or float16 weights behind TFLite Dequantize operators, as
MediaPipe ships them) become plain float ONNX graphs. Quantized models (int8 post-training
quantization, per-tensor or per-channel) become QDQ graphs: every quantized tensor is an int8
(int32 for biases) value read through DequantizeLinear, every quantized activation passes
QuantizeLinear -> DequantizeLinear, per-channel weight scales sit on the output-channel axis
(0 for convolution weights, 1 for fully connected ones once transposed for MatMul), and a
model converted with int8 inputs or outputs keeps them int8. ``quantization_summary`` describes
that layout.
"""
import collections
import os

from ..errors import FormatError
from .tf_graphs import (DEFAULT_OPSET, finish, fixed_shape, given_shapes, import_tensorflow,
                        plain_name, run_tf2onnx)

MAGIC = b"TFL3"
# tflite's TensorType enum, the values a model's inputs and outputs use
_TYPES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 6: "bool", 7: "int16",
          9: "int8", 10: "float64"}

Tensor = collections.namedtuple("Tensor", "name shape dtype")


def read_io(path):
    """(inputs, outputs, signature names) of a TFLite file's main graph: lists of ``Tensor``
    (shape with None where free) and {tensor name: signature name}."""
    path = os.fspath(path)
    with open(path, "rb") as handle:
        data = handle.read()
    if len(data) < 8 or data[4:8] != MAGIC:
        raise FormatError("not a TFLite model (no TFL3 identifier)", path=path)
    import_tensorflow(path)
    from tf2onnx.tflite.Model import Model
    try:
        model = Model.GetRootAsModel(bytearray(data), 0)
        if model.SubgraphsLength() < 1:
            raise FormatError("the TFLite model has no graph", path=path)
        graph = model.Subgraphs(0)

        def tensor(index):
            t = graph.Tensors(index)
            shape = (t.ShapeSignatureAsNumpy() if not t.ShapeSignatureIsNone() else
                     t.ShapeAsNumpy() if not t.ShapeIsNone() else None)
            shape = None if shape is None or isinstance(shape, int) else [
                None if d < 0 else int(d) for d in shape]
            return Tensor(t.Name().decode(), shape, _TYPES.get(t.Type(), f"type {t.Type()}"))
        inputs = [tensor(graph.Inputs(i)) for i in range(graph.InputsLength())]
        outputs = [tensor(graph.Outputs(i)) for i in range(graph.OutputsLength())]
        names = {}
        if model.SignatureDefsLength() == 1 and model.SignatureDefs(0).SubgraphIndex() == 0:
            signature = model.SignatureDefs(0)
            for maps, count in ((signature.Inputs, signature.InputsLength()),
                                (signature.Outputs, signature.OutputsLength())):
                for i in range(count):
                    entry = maps(i)
                    names[graph.Tensors(entry.TensorIndex()).Name().decode()] = entry.Name().decode()
    except FormatError:
        raise
    except Exception as exc:       # flatbuffers reads past the end of a damaged file
        raise FormatError(f"cannot read the TFLite model ({type(exc).__name__}: {exc})", path=path) from None
    if not inputs or not outputs:
        raise FormatError("the TFLite model's graph has no inputs or no outputs", path=path)
    if len(set(names.values())) != len(names):
        names = {}
    return inputs, outputs, names


def tflite_to_onnx(path, *, input_shapes=None, opset=DEFAULT_OPSET):
    """An ONNX model of a TFLite file (float, or QDQ for a quantized one); see the module
    docstring for names, layout and shapes."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FormatError("no such TFLite file", path=path)
    inputs, outputs, signature = read_io(path)
    input_names = [t.name for t in inputs]
    given = given_shapes(input_shapes, input_names, path)
    renames = {}
    taken = set()
    for t in inputs + outputs:
        new = signature.get(t.name) or plain_name(t.name)
        if new in taken:
            new = t.name
        renames[t.name] = new
        taken.add(new)
    shapes = {t.name: fixed_shape(t.name, t.shape, given.get(t.name), path) for t in inputs}
    nchw_in = [t.name for t in inputs if len(shapes[t.name]) == 4]
    nchw_out = [t.name for t in outputs if t.shape is not None and len(t.shape) == 4]
    model = run_tf2onnx(path, tflite_path=path, opset=opset, inputs_as_nchw=nchw_in,
                        outputs_as_nchw=nchw_out, tensors_to_rename=renames)
    static = {renames[n]: ([s[0], s[3], s[1], s[2]] if len(s) == 4 else s) for n, s in shapes.items()}
    return finish(model, static, path)


def quantization_summary(model):
    """What a QDQ model from ``tflite_to_onnx`` holds: {"quantize": count, "dequantize": count,
    "per_channel": [(tensor, axis, channels)], "int_inputs": [...], "int_outputs": [...]};
    None for a float model."""
    from onnx import TensorProto, numpy_helper
    graph = model.graph
    counts = collections.Counter(n.op_type for n in graph.node)
    if not counts["QuantizeLinear"] and not counts["DequantizeLinear"]:
        return None
    inits = {i.name: i for i in graph.initializer}
    per_channel = []
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and len(node.input) > 1 and node.input[1] in inits:
            scale = numpy_helper.to_array(inits[node.input[1]])
            if scale.ndim == 1 and scale.size > 1:
                axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
                per_channel.append((node.input[0], axis, int(scale.size)))
    floats = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE)

    def integer(values):
        return [v.name for v in values if v.type.tensor_type.elem_type not in floats]
    return {"quantize": counts["QuantizeLinear"], "dequantize": counts["DequantizeLinear"],
            "per_channel": per_channel, "int_inputs": integer(graph.input),
            "int_outputs": integer(graph.output)}

