"""An ONNX model made ready for the Caffe converter: read from disk, its inputs given static
shapes, every constant computation evaluated, every tensor's shape known.

The work is onnx's own: ``onnx.shape_inference`` gives the shapes and ``onnx.reference`` evaluates
the constant part of the graph (``Constant``, ``ConstantOfShape``, ``Shape`` of a tensor whose
shape is static, and anything computed from those only). Shape inference then runs again, since a
folded ``Reshape`` target makes more shapes static, until nothing more folds. Nodes no graph
output depends on are dropped, so an unused branch is never refused.
"""
import dataclasses
import os

import numpy as np
import onnx
from google.protobuf import message as pb_message
from onnx import helper, numpy_helper, shape_inference
from onnx.reference import ReferenceEvaluator

from ..caffe_io import read_bytes
from ..errors import FormatError, NetError, UnsupportedError

DEFAULT_DOMAINS = ("", "ai.onnx")
OLDEST_OPSET = 7
NEVER_FOLDED = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                "Multinomial", "Bernoulli"}
# Constants up to this many values stay in the model shape inference sees (Reshape targets,
# pads, axes); larger ones (weights) are declared by type and shape only, to keep it fast.
SMALL_CONSTANT = 4096


@dataclasses.dataclass
class PreparedGraph:
    nodes: list          # [(index in the file's graph, NodeProto)] left after folding, in order
    constants: dict      # tensor name -> numpy array (initializers and folded values)
    shapes: dict         # tensor name -> tuple of dims (None for a dim inference left open)
    types: dict          # tensor name -> onnx TensorProto element type
    inputs: list         # [(name, shape)] of the graph inputs that are not initializers
    outputs: list        # graph output names
    opset: int
    source: str


def read_onnx(path):
    """The ModelProto stored at ``path`` (external tensor data loaded from beside it)."""
    data = read_bytes(path, "ONNX model file")
    if not data:
        raise FormatError("is empty, not an ONNX model", path=path)
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (pb_message.DecodeError, RecursionError, ValueError) as exc:
        raise FormatError(f"truncated or not an ONNX model ({exc})", path=path) from None
    if not model.HasField("graph") or not len(model.graph.node) or not len(model.opset_import):
        raise FormatError("holds no graph or no opset: not an ONNX model", path=path)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        try:
            onnx.external_data_helper.load_external_data_for_model(
                model, os.path.dirname(os.path.abspath(path)))
        except (OSError, ValueError) as exc:
            raise FormatError(f"its external tensor data cannot be read ({exc})", path=path) from None
    return model


def default_opset(model, source):
    versions = [o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS]
    if not versions:
        raise FormatError("imports no version of the default ONNX operator set", path=source)
    return int(versions[0])


def graph_inputs(model):
    """The graph inputs that are not initializers (the model's real inputs), as ValueInfos."""
    initialized = {t.name for t in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in initialized]


def _dims(value_info):
    if not value_info.type.tensor_type.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else None
                 for d in value_info.type.tensor_type.shape.dim)


def _static_input_shape(value, given, source):
    """The input's shape with its free dimensions filled: ``given`` (from the caller) or, for a
    free batch axis alone, 1."""
    declared = _dims(value)
    if given is not None:
        given = tuple(int(d) for d in given)
        if declared is not None and (len(declared) != len(given) or any(
                d is not None and d != g for d, g in zip(declared, given))):
            raise NetError(f"the input shape {list(given)} given for '{value.name}' does not fit "
                           f"the model's {[d if d is not None else '?' for d in declared]}",
                           path=source)
        return given
    if declared is None:
        raise NetError(f"input '{value.name}' has no declared shape: give its shape "
                       f"(--input_shape {value.name}=N,C,H,W)", path=source)
    filled = tuple(1 if d is None and i == 0 else d for i, d in enumerate(declared))
    if None in filled:
        shown = ",".join("?" if d is None else str(d) for d in declared)
        raise NetError(f"input '{value.name}' has free dimensions ({shown}): give its shape "
                       f"(--input_shape {value.name}=N,C,H,W)", path=source)
    return filled


def _upgrade(model, opset, source):
    if opset >= OLDEST_OPSET:
        return model
    listed = onnx.ModelProto()
    listed.CopyFrom(model)        # the converter wants initializers listed as inputs (IR 3)
    names = {v.name for v in listed.graph.input}
    listed.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                              for t in listed.graph.initializer if t.name not in names)
    try:
        return onnx.version_converter.convert_version(listed, OLDEST_OPSET)
    except Exception as exc:    # the converter raises bare RuntimeErrors and C++ errors
        raise UnsupportedError(f"opset {opset} is older than {OLDEST_OPSET} and onnx's version "
                               f"converter cannot upgrade it ({str(exc).splitlines()[0][:120]})",
                               path=source) from None


def prepare(model, source="model.onnx", input_shapes=None):
    """A PreparedGraph for ``model`` with ``input_shapes`` ({name: dims}) fixing free dims."""
    model = _upgrade(model, default_opset(model, source), source)
    opset = default_opset(model, source)
    graph = model.graph
    inputs = graph_inputs(model)
    given = dict(input_shapes or {})
    unknown = sorted(set(given) - {v.name for v in inputs})
    if unknown:
        raise NetError(f"input shapes name {', '.join(unknown)}, not an input of the model "
                       f"(those are {', '.join(v.name for v in inputs) or 'none'})", path=source)
    input_dims = {v.name: _static_input_shape(v, given.get(v.name), source) for v in inputs}
    types = {v.name: v.type.tensor_type.elem_type for v in inputs}
    types.update({o.name: o.type.tensor_type.elem_type for o in graph.output})
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    outputs = [o.name for o in graph.output]
    nodes = _live(list(enumerate(graph.node)), outputs)
    overrides = {}          # pooling outputs whose inferred shape onnxruntime does not give
    while True:
        known = {**input_dims, **overrides}
        inferred, inferred_types = _infer(model, nodes, constants, known, types, outputs, source)
        shapes = {**inferred, **known}
        types.update(inferred_types)
        fixes = _ceil_pooling_fixes(nodes, shapes)
        if fixes:
            overrides.update(fixes)
            continue
        foldable = _foldable(nodes, constants, shapes)
        if not foldable:
            break
        constants.update(_evaluate(foldable, constants, shapes, types, model, source))
        folded = {id(node) for _, node in foldable}
        nodes = [(i, n) for i, n in nodes if id(n) not in folded]
    for name, array in constants.items():
        shapes[name] = tuple(array.shape)
    return PreparedGraph(_live(nodes, outputs), constants, shapes, types,
                         [(v.name, input_dims[v.name]) for v in inputs], outputs, opset, str(source))


def _live(nodes, outputs):
    """The nodes some graph output depends on, in their order."""
    needed, kept = set(outputs), []
    for index, node in reversed(nodes):
        if any(o in needed for o in node.output):
            kept.append((index, node))
            needed.update(i for i in node.input if i)
            for attr in node.attribute:          # names a subgraph reads from outside it
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    needed.update(i for n in sub.node for i in n.input if i)
    return kept[::-1]


def _tensor_info(name, elem_type, shape):
    return helper.make_tensor_value_info(name, elem_type, list(shape) if shape is not None else None)


def _infer(model, nodes, constants, known, types, outputs, source):
    """(shapes, element types) of every tensor onnx's shape inference can tell; ``known`` gives
    the shapes of the graph inputs and of tensors whose producers it must not recompute."""
    small = [numpy_helper.from_array(a, n) for n, a in constants.items() if a.size <= SMALL_CONSTANT]
    large = [_tensor_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
             for n, a in constants.items() if a.size > SMALL_CONSTANT]
    declared = [_tensor_info(n, types.get(n) or onnx.TensorProto.FLOAT, shape) for n, shape in known.items()]
    nodes = [(i, n) for i, n in nodes if n.output[0] not in known]
    graph = helper.make_graph([n for _, n in nodes], "shapes", declared + large,
                              [helper.make_tensor_value_info(o, types.get(o, 0), None) for o in outputs],
                              small)
    probe = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=max(model.ir_version, 4))
    try:
        probe = shape_inference.infer_shapes(probe, data_prop=True)
    except Exception as exc:     # onnx raises InferenceError and C++ errors alike
        raise FormatError(f"onnx's shape inference fails on the model: "
                          f"{str(exc).splitlines()[0][:200]}", path=source) from None
    found, found_types = {}, {}
    for value in list(probe.graph.value_info) + list(probe.graph.output):
        dims = _dims(value)
        if dims is not None:
            found[value.name] = dims
        if value.type.tensor_type.elem_type:
            found_types[value.name] = value.type.tensor_type.elem_type
    return found, found_types


def _ceil_pooling_fixes(nodes, shapes):
    """{output: shape} for the ceil_mode pooling nodes whose inferred output keeps a last window
    that starts in the end padding: onnxruntime and onnx's reference evaluator drop it (as
    Caffe and PyTorch do), onnx's shape inference does not."""
    fixes = {}
    for _, node in nodes:
        if node.op_type not in ("MaxPool", "AveragePool") or node.domain not in DEFAULT_DOMAINS:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        size = shapes.get(node.input[0])
        if not attrs.get("ceil_mode") or attrs.get("auto_pad", b"NOTSET") != b"NOTSET" or not _static(size):
            continue
        kernel = attrs["kernel_shape"]
        rank = len(kernel)
        strides, dilations = attrs.get("strides", [1] * rank), attrs.get("dilations", [1] * rank)
        pads = attrs.get("pads", [0] * 2 * rank)
        dims = list(size[:2])
        for i in range(rank):
            span = size[2 + i] + pads[i] + pads[rank + i] - dilations[i] * (kernel[i] - 1) - 1
            out = -(-span // strides[i]) + 1
            dims.append(out - 1 if (out - 1) * strides[i] >= size[2 + i] + pads[i] else out)
        if shapes.get(node.output[0]) != tuple(dims):
            fixes[node.output[0]] = tuple(dims)
    return fixes


def _static(shape):
    return shape is not None and None not in shape


def _foldable(nodes, constants, shapes):
    """The nodes computable before any input is known, in order: their inputs are constants
    (or folded before them), or they ask only for a static shape."""
    known, found = set(constants), []
    for index, node in nodes:
        if node.domain not in DEFAULT_DOMAINS or node.op_type in NEVER_FOLDED or any(
                a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            continue
        data = [i for i in node.input if i]
        if all(i in known for i in data) or (
                node.op_type in ("Shape", "Size") and _static(shapes.get(node.input[0]))):
            found.append((index, node))
            known.update(o for o in node.output if o)
    return found


def _evaluate(foldable, constants, shapes, types, model, source):
    """The values of the foldable nodes' outputs, computed by onnx's reference evaluator."""
    produced = {o for _, node in foldable for o in node.output if o}
    feeds = {}
    for _, node in foldable:
        for name in node.input:
            if not name or name in produced or name in feeds:
                continue
            if name in constants:
                feeds[name] = constants[name]
            else:       # a Shape/Size input: only its shape is read
                feeds[name] = np.zeros(shapes[name], helper.tensor_dtype_to_np_dtype(types.get(name, 1)))
    graph = helper.make_graph(
        [node for _, node in foldable], "constants",
        [_tensor_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape) for n, a in feeds.items()],
        [helper.make_tensor_value_info(o, 0, None) for o in sorted(produced)])
    sub = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=max(model.ir_version, 4))
    names = sorted(produced)
    try:
        values = ReferenceEvaluator(sub).run(names, feeds)
    except Exception as exc:     # the evaluator raises whatever its kernels raise
        first = next(f"{n.op_type} '{n.name}'" if n.name else n.op_type for _, n in foldable)
        raise UnsupportedError(f"onnx's reference evaluator cannot fold the constant nodes "
                               f"(from {first} on): {str(exc).splitlines()[0][:200]}",
                               path=source) from None
    return {n: np.asarray(v) for n, v in zip(names, values)}
