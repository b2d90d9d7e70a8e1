"""TensorFlow graphs turned into ONNX models, which ``onnx_to_caffe`` then turns into Caffe layers.

Two kinds of file come in here: a SavedModel folder (whatever wrote it: ``tf.saved_model.save``,
Keras 3's ``model.export()``, a Keras 2 ``model.save(folder)``) and a frozen GraphDef (``.pb``,
variables already constants) with the names of its input and output tensors. The translation
itself is tf2onnx's; it is an optional dependency (``pip install tf2onnx``), imported here, with
TensorFlow, only when such a file is converted. ``tflite_models`` uses the same finishing steps.

What this module adds to tf2onnx:

- Layout. TensorFlow lays images out as NHWC, Caffe as NCHW. Every 4-D input and output is
  declared to tf2onnx as NCHW (its ``inputs_as_nchw`` / ``outputs_as_nchw``): it puts a
  Transpose at the graph's edge and its transpose optimizer pushes it into the convolutions, so
  the weights come out in ONNX's (and Caffe's) order and the Caffe net takes and gives N,C,H,W
  tensors (the model's NHWC tensor, transposed). Tensors of other ranks keep their layout.
- Static shapes. A Caffe net has fixed shapes: free dimensions are fixed (the batch to 1 unless
  the caller gives shapes, any other free dimension must be given), the ONNX graph's shapes
  are inferred again, and the shape arithmetic TensorFlow builds for ``Flatten`` and the like
  (Shape, Gather, Slice, Concat, Cast feeding a Reshape) is folded into constants, so the
  importer sees only the layers.
- Names. Graph inputs and outputs lose TensorFlow's ``:0`` suffix (a SavedModel's take its
  signature's names, ``image`` and ``output_0`` for a Keras export).
- Errors. A missing tf2onnx, a file that is not what it claims, an unknown tensor name, an
  operation tf2onnx cannot translate: each becomes one line naming the file.

Shapes given by the caller are Caffe's: N,C,H,W for a 4-D input (N,F for a 2-D one), keyed by
input name (with or without ``:0``) or as a list in the order of the model's inputs.
"""
import contextlib
import logging
import os
import warnings

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from ..errors import FormatError, RistrettoError, UnsupportedError

DEFAULT_OPSET = 17
_INSTALL = "pip install tf2onnx, or pip install -e \".[tf2onnx]\""
# Nodes never evaluated at conversion time: the QDQ pairs of quantized models are kept for the
# importer, whatever their inputs are.
_KEEP = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}


def import_tensorflow(path=None):
    """(tensorflow, tf2onnx), or a one-line error saying what to install."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")     # TensorFlow's start-up logs are not ours
    try:
        import tensorflow as tf
    except ImportError:
        raise RistrettoError("converting TensorFlow and TFLite models needs TensorFlow and tf2onnx "
                             f"(pip install tensorflow tf2onnx)", path=path) from None
    try:
        import tf2onnx
    except ImportError:
        raise RistrettoError(f"converting TensorFlow and TFLite models needs tf2onnx ({_INSTALL})",
                             path=path) from None
    return tf, tf2onnx


@contextlib.contextmanager
def quiet():
    """tf2onnx and TensorFlow talk on loggers and warnings; a conversion says only what it did."""
    loggers = [logging.getLogger(name) for name in ("tf2onnx", "tensorflow", "absl")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for log, level in zip(loggers, levels):
            log.setLevel(level)


def first_line(exc):
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def tensor_name(name):
    """TensorFlow's spelling of a tensor: ``node:port`` (``image`` means ``image:0``)."""
    return name if ":" in name else f"{name}:0"


def plain_name(name):
    """The name the ONNX graph (and the Caffe net) uses: ``image:0`` -> ``image``."""
    return name[:-2] if name.endswith(":0") else name.replace(":", "_")


# -- the caller's shapes --------------------------------------------------------------------
def caffe_to_tf_shape(shape):
    """N,C,H,W -> N,H,W,C (other ranks as they are)."""
    shape = list(shape)
    return [shape[0], shape[2], shape[3], shape[1]] if len(shape) == 4 else shape


def given_shapes(input_shapes, names, path=None):
    """The caller's shapes as {TensorFlow name: Caffe shape}. ``names``: the model's inputs in
    their order, TensorFlow spelling."""
    if input_shapes is None:
        return {}
    if isinstance(input_shapes, dict):
        by_name = {tensor_name(k): v for k, v in input_shapes.items()}
        unknown = sorted(set(by_name) - set(names))
        if unknown:
            raise RistrettoError(f"input shape for {', '.join(plain_name(u) for u in unknown)}: no such "
                                 f"input (inputs: {', '.join(plain_name(n) for n in names)})", path=path)
        return {k: [int(d) for d in v] for k, v in by_name.items()}
    shapes = list(input_shapes)
    if shapes and np.isscalar(shapes[0]):
        shapes = [shapes]               # one shape for a one-input model
    if len(shapes) > len(names):
        raise RistrettoError(f"{len(shapes)} input shapes for {len(names)} input(s) "
                             f"({', '.join(plain_name(n) for n in names)})", path=path)
    return {name: [int(d) for d in shape] for name, shape in zip(names, shapes)}


def fixed_shape(name, model_shape, given, path=None):
    """The TensorFlow (channels-last) shape of input ``name``: the model's, with the caller's
    Caffe-order shape or batch 1 where the model leaves it free."""
    if model_shape is None:
        if given is None:
            raise RistrettoError(f"input '{plain_name(name)}' has no known rank: give its shape "
                                 "(--input_shape N,C,H,W)", path=path)
        return caffe_to_tf_shape(given)
    model_shape = [None if d is None or d < 0 else int(d) for d in model_shape]
    if given is not None:
        wanted = caffe_to_tf_shape(given)
        if len(wanted) != len(model_shape) or any(
                m is not None and m != w for m, w in zip(model_shape, wanted)):
            shown = "N,C,H,W " if len(model_shape) == 4 else ""
            raise RistrettoError(f"input shape {list(given)} does not fit input '{plain_name(name)}' "
                                 f"{_show(model_shape)} (TensorFlow order; {shown}expected)", path=path)
        return wanted
    shape = [1 if (i == 0 and d is None) else d for i, d in enumerate(model_shape)]
    if None in shape:
        raise RistrettoError(f"input '{plain_name(name)}' {_show(model_shape)} has free dimensions "
                             "besides the batch: give its shape (--input_shape N,C,H,W)", path=path)
    return shape


def _show(shape):
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


# -- TensorFlow graphs ----------------------------------------------------------------------
def load_saved_model(folder, signature=None, tag=None):
    """(frozen GraphDef, input names, output names, renames, tables) of a SavedModel folder."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise FormatError("no such SavedModel folder", path=folder)
    if not any(os.path.isfile(os.path.join(folder, f)) for f in ("saved_model.pb", "saved_model.pbtxt")):
        raise FormatError("not a SavedModel folder (no saved_model.pb)", path=folder)
    tf, tf2onnx = import_tensorflow(folder)
    from tf2onnx import tf_loader
    signatures = [signature] if signature else None
    with quiet():
        try:
            graph_def, inputs, outputs, tables, renames = tf_loader.from_saved_model(
                folder, None, None, tag, signatures, return_initialized_tables=True,
                return_tensors_to_rename=True)
        except Exception as exc:       # TensorFlow and tf2onnx raise many types for bad folders
            raise FormatError(f"cannot load the SavedModel ({first_line(exc)})", path=folder) from None
    if not inputs or not outputs:
        raise FormatError("the SavedModel's signature has no inputs or no outputs", path=folder)
    return graph_def, list(inputs), list(outputs), dict(renames or {}), tables


def load_graph_def(path, inputs, outputs):
    """(GraphDef, input names, output names) of a frozen ``.pb`` (binary or text)."""
    path = os.fspath(path)
    tf, _ = import_tensorflow(path)
    from google.protobuf import text_format
    from google.protobuf.message import DecodeError
    with open(path, "rb") as handle:
        data = handle.read()
    graph_def = tf.compat.v1.GraphDef()
    try:
        graph_def.ParseFromString(data)
    except DecodeError:
        try:
            text_format.Parse(data.decode("utf-8"), graph_def)
        except (UnicodeDecodeError, text_format.ParseError):
            raise FormatError("not a TensorFlow GraphDef (neither binary nor text protobuf)",
                              path=path) from None
    if not graph_def.node:
        raise FormatError("the GraphDef holds no nodes", path=path)
    if not inputs or not outputs:
        raise RistrettoError("a GraphDef needs the names of its inputs and outputs (--inputs, "
                             f"--outputs); its placeholders: {_placeholders(graph_def)}", path=path)
    nodes = {node.name: node for node in graph_def.node}
    inputs, outputs = [tensor_name(n) for n in inputs], [tensor_name(n) for n in outputs]
    for kind, names in (("input", inputs), ("output", outputs)):
        for name in names:
            if name.rsplit(":", 1)[0] not in nodes:
                hint = (f"its placeholders: {_placeholders(graph_def)}" if kind == "input" else
                        f"nodes nothing reads: {_sinks(graph_def)}")
                raise RistrettoError(f"no {kind} tensor '{name}' in the graph ({hint})", path=path)
    return graph_def, inputs, outputs


def _placeholders(graph_def):
    names = [n.name for n in graph_def.node if n.op == "Placeholder"]
    return ", ".join(names) if names else "none"


def _sinks(graph_def):
    read = {i.split(":")[0].lstrip("^") for n in graph_def.node for i in n.input}
    names = [n.name for n in graph_def.node if n.name not in read and n.op not in ("NoOp", "Const")]
    return ", ".join(names[:8]) + (" ..." if len(names) > 8 else "") if names else "none"


def _tf_shapes(tf, graph_def, names, path):
    """{tensor name: list of dims (None where free) or None (unknown rank)}."""
    shapes = {}
    with tf.Graph().as_default() as graph:
        try:
            tf.import_graph_def(graph_def, name="")
        except Exception as exc:
            raise FormatError(f"TensorFlow cannot import the graph ({first_line(exc)})", path=path) from None
        for name in names:
            try:
                shape = graph.get_tensor_by_name(name).shape
            except (KeyError, ValueError):
                raise RistrettoError(f"no tensor '{name}' in the graph", path=path) from None
            shapes[name] = None if shape.rank is None else shape.as_list()
    return shapes


def graph_to_onnx(graph_def, inputs, outputs, *, source, input_shapes=None, renames=None,
                  tables=None, opset=DEFAULT_OPSET):
    """An ONNX model of a frozen GraphDef: NCHW at the 4-D edges, static shapes, plain names."""
    tf, _ = import_tensorflow(source)
    shapes = _tf_shapes(tf, graph_def, inputs + outputs, source)
    given = given_shapes(input_shapes, inputs, source)
    override = {name: fixed_shape(name, shapes[name], given.get(name), source) for name in inputs}
    renames = dict(renames or {})
    for name in inputs + outputs:
        renames.setdefault(name, plain_name(name))
    nchw_in = [n for n in inputs if len(override[n]) == 4]
    nchw_out = [n for n in outputs if shapes[n] is not None and len(shapes[n]) == 4]
    model = run_tf2onnx(source, graph_def=graph_def, input_names=inputs, output_names=outputs,
                        shape_override=override, inputs_as_nchw=nchw_in, outputs_as_nchw=nchw_out,
                        tensors_to_rename=renames, initialized_tables=tables, opset=opset)
    static = {renames[n]: _nchw(override[n]) for n in inputs}
    return finish(model, static, source)


def _nchw(shape):
    return [shape[0], shape[3], shape[1], shape[2]] if len(shape) == 4 else list(shape)


def run_tf2onnx(source, *, graph_def=None, tflite_path=None, opset=DEFAULT_OPSET, **options):
    """tf2onnx's translation and optimizer on a GraphDef or a TFLite file, as an ONNX model."""
    tf, _ = import_tensorflow(source)
    from tf2onnx import optimizer
    from tf2onnx.tfonnx import process_tf_graph
    with quiet(), tf.device("/cpu:0"), tf.Graph().as_default() as graph:
        try:
            if graph_def is not None:
                tf.import_graph_def(graph_def, name="")
            onnx_graph = process_tf_graph(None if tflite_path else graph, opset=opset,
                                          tflite_path=tflite_path, continue_on_error=False, **options)
            onnx_graph = optimizer.optimize_graph(onnx_graph, catch_errors=True)
            model = onnx_graph.make_model(f"converted from {os.path.basename(str(source))}")
        except RistrettoError:
            raise
        except Exception as exc:        # an op tf2onnx has no translation for, mostly
            raise UnsupportedError(f"tf2onnx cannot convert the model ({first_line(exc)})",
                                   path=source) from None
    return model


def saved_model_to_onnx(folder, *, signature=None, tag=None, input_shapes=None, opset=DEFAULT_OPSET):
    """An ONNX model of a SavedModel folder's signature (the first one unless ``signature``
    names one), with the finishing steps of the module docstring."""
    graph_def, inputs, outputs, renames, tables = load_saved_model(folder, signature, tag)
    return graph_to_onnx(graph_def, inputs, outputs, source=os.fspath(folder), input_shapes=input_shapes,
                         renames=renames, tables=tables, opset=opset)


def graph_def_to_onnx(path, inputs, outputs, *, input_shapes=None, opset=DEFAULT_OPSET):
    """An ONNX model of a frozen GraphDef file; ``inputs``/``outputs``: tensor or node names."""
    graph_def, inputs, outputs = load_graph_def(path, inputs, outputs)
    return graph_to_onnx(graph_def, inputs, outputs, source=os.fspath(path), input_shapes=input_shapes,
                         opset=opset)


# -- finishing: static shapes, folded shape arithmetic --------------------------------------
def finish(model, static_inputs, source):
    """Fix the inputs' shapes (``static_inputs``: ONNX input name -> shape), infer every other
    shape again and fold what is then constant. Checked with onnx's checker."""
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    for value in graph.input:
        if value.name in initializers:
            continue
        shape = static_inputs.get(value.name)
        if shape is None:
            raise RistrettoError(f"input '{value.name}' of the converted graph has no known shape",
                                 path=source)
        dims = value.type.tensor_type.shape.dim
        del dims[:]
        for d in shape:
            dims.add().dim_value = int(d)
    del graph.value_info[:]
    for value in graph.output:      # outputs get their shapes again from the inference
        value.type.tensor_type.ClearField("shape")
    model = fold_constants(model)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise UnsupportedError(f"the ONNX model tf2onnx made is not valid ({first_line(exc)})",
                               path=source) from None
    return model


def _infer(model):
    return shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)


def _static_shapes(model):
    shapes = {}
    graph = model.graph
    for value in list(graph.input) + list(graph.value_info) + list(graph.output):
        t = value.type.tensor_type
        if t.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
            if None not in dims:
                shapes[value.name] = dims
    return shapes


def fold_constants(model):
    """Evaluate every node whose inputs are all known (initializers, Constant nodes, the shape of
    a statically shaped tensor) with onnx's reference evaluator, and drop Reshapes that change
    nothing; the results become initializers. QDQ nodes stay as they are."""
    from onnx.reference import ReferenceEvaluator
    model = _infer(model)
    shapes = _static_shapes(model)
    graph = model.graph
    opset = {o.domain or "": o.version for o in model.opset_import}
    known = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    outputs = {value.name for value in graph.output}
    original = {init.name for init in graph.initializer}
    alias, kept, changed = {}, [], False
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in alias:
                node.input[i] = alias[name]
        inputs = [name for name in node.input if name]
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            known[node.output[0]] = numpy_helper.to_array(helper.get_attribute_value(node.attribute[0])) \
                if node.attribute[0].name == "value" else ReferenceEvaluator(node).run(None, {})[0]
            changed = True
            continue
        if node.domain in ("", "ai.onnx") and node.op_type not in _KEEP:
            if node.op_type == "Shape" and node.input[0] in shapes:
                attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
                dims = shapes[node.input[0]]
                start, end = attrs.get("start", 0), attrs.get("end", len(dims))
                known[node.output[0]] = np.array(dims[start:end], np.int64)
                changed = True
                continue
            if node.op_type == "Size" and node.input[0] in shapes:
                known[node.output[0]] = np.array(int(np.prod(shapes[node.input[0]])), np.int64)
                changed = True
                continue
            if inputs and all(name in known for name in inputs):
                evaluator = ReferenceEvaluator(node, opsets=opset)
                values = evaluator.run(None, {name: known[name] for name in inputs})
                for name, value in zip(node.output, values):
                    known[name] = np.asarray(value)
                changed = True
                continue
            if (node.op_type in ("Reshape", "Identity") and node.output[0] not in outputs
                    and node.input[0] in shapes and shapes[node.input[0]] == shapes.get(node.output[0])):
                alias[node.output[0]] = node.input[0]
                changed = True
                continue
        kept.append(node)
    if not changed:
        return model
    for name in outputs & set(known):       # a graph output that folded away stays a node
        kept.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(known[name], name)))
    for value in graph.output:
        if value.name in alias:
            raise UnsupportedError(f"output '{value.name}' is an input reshaped to itself")
    used = {name for node in kept for name in node.input}
    del graph.node[:]
    graph.node.extend(kept)
    del graph.initializer[:]
    graph.initializer.extend(numpy_helper.from_array(np.asarray(value), name)
                             for name, value in known.items() if name in used)
    remaining = {init.name for init in graph.initializer}
    kept_inputs = [v for v in graph.input if v.name not in original or v.name in remaining]
    del graph.input[:]
    graph.input.extend(kept_inputs)
    del graph.value_info[:]
    return _infer(model)
