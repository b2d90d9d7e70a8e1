"""Export a Net to a standard ONNX model (opset 17), layer by layer through the registry.

Caffe reuses blob names for in-place layers; ONNX values are assigned once. The last version
of every Caffe blob keeps the blob's name, earlier versions are called ``blob@layer``. Layers
ONNX cannot express (``onnx_exportable = False``, e.g. DetectionOutput) and everything that
depends on them form the *tail*, which the onnxruntime backend runs with numpy afterwards.

A Ristretto layer trims its inputs in place (both of Ristretto's builds): its export names the
trimmed value in ``extra["rebind"]`` and later readers of the blob read that value. Blobs whose
numpy forms share the blob's data (the tops of Split, Flatten, Reshape and Dropout, as the numpy
runtime keeps them) are rebound with it, to an Identity or Reshape of the trimmed value.
"""
from dataclasses import dataclass, field

import onnx

from ..errors import RistrettoError, UnsupportedError
from ..layers.base import OnnxIO
from .onnx_formats import export_formatted, integer_relu
from .onnx_graph import OnnxGraph

# Layer types whose numpy forward returns its bottom's data (the same array or a reshape view).
SHARES_DATA = ("Split", "Flatten", "Reshape", "Dropout")


@dataclass
class OnnxExport:
    """An exported model, the blobs it outputs, and the layers left to run in numpy."""
    model: onnx.ModelProto
    outputs: dict                      # Caffe blob name -> ONNX output value name
    tail: list = field(default_factory=list)   # layer indices not exported, in order

    @property
    def tail_layers(self):
        return list(self.tail)


def export_onnx(net, all_blobs=False, dynamic_batch=True, allow_tail=True, compat="gpu",
                quantized=None, param_values=None, extra=None):
    """Export ``net`` (with weights). ``all_blobs``: every named blob becomes a graph output
    (for comparisons and ``tools/forward``); else only the net outputs and the tail's inputs.
    ``compat`` selects the Ristretto build whose trimming the Ristretto layers reproduce.
    ``quantized`` ("qdq", "qonnx") spells trimming as integer nodes and ``param_values(impl)``
    gives each layer's parameter hook (see ``quantized_export``, which sets both); ``extra``
    adds options every layer's ``io.extra`` carries."""
    shapes = net.shapes()
    in_tail = _tail_layers(net, compat)
    if in_tail and not allow_tail:
        names = ", ".join(f"{net.layers[i].name} ({net.layers[i].type})" for i in in_tail)
        raise UnsupportedError(f"layers without an ONNX form: {names}", path=net.source)
    exported = [i for i in range(len(net.layers)) if i not in in_tail]
    last_writer = {}
    for i in exported:
        for top in net.layers[i].tops:
            last_writer[top] = i
    graph = OnnxGraph()
    current = {}
    graph_inputs = []
    sharing = _Sharing(graph, current)
    for name in net.input_blobs:
        graph.reserve(name)
        current[name] = name
        shape = shapes[name]
        sharing.shape[name] = tuple(shape)
        graph_inputs.append((name, (None,) + tuple(shape[1:]) if dynamic_batch else shape))
    # The last version of a blob carries the blob's own name, unless that name is a graph
    # input (an input blob rewritten in place): then every version gets a derived name.
    final_name = {}
    for blob in last_writer:
        final_name[blob] = graph.reserve(blob) if blob not in current else None
    for i in exported:
        layer, impl = net.layers[i], net.impl(i)
        if impl.is_source:
            continue
        bottoms = [current[b] for b in layer.bottoms]
        tops = []
        for top in layer.tops:
            if last_writer[top] == i and final_name[top] is not None:
                name = top
            else:
                name = graph.unique(f"{top}@{layer.name}")
            tops.append(name)
        bottom_shapes, top_shapes = net.layer_shapes(layer.name)
        options = dict(extra or {}, compat=compat, quantized=quantized)
        hook = param_values(impl) if param_values is not None else None
        if hook is not None:
            options["param_value"] = hook
        io = OnnxIO(bottoms, tops, list(layer.blobs), bottom_shapes, top_shapes, extra=options)
        try:
            if impl.layer_format is not None:
                export_formatted(impl, graph, io)
            elif (relu := integer_relu(impl, graph, io.bottoms, io.extra)) is not None:
                graph.node("Identity", [relu], io.tops)
            else:
                impl.export_onnx(graph, io)
        except RistrettoError as exc:
            raise exc.with_context(path=net.source, layer=layer.name)
        for index, value in io.extra.get("rebind", {}).items():
            sharing.rebind(layer.bottoms[index], bottoms[index], value)
        for index, (top, name) in enumerate(zip(layer.tops, tops)):
            current[top] = name
            if index < len(top_shapes):
                sharing.shape[name] = tuple(top_shapes[index])
            if layer.type in SHARES_DATA:
                sharing.join(name, bottoms[0])
    if all_blobs:
        wanted = list(last_writer)
    else:
        tail_inputs = {b for i in in_tail for b in net.layers[i].bottoms}
        wanted = [b for b in last_writer if b in net.output_blobs or b in tail_inputs]
    outputs, graph_outputs = {}, []
    for blob in wanted:
        shape = shapes[blob] if last_writer[blob] == _final_writer(net, blob) else None
        if shape is not None and dynamic_batch and len(shape):
            shape = (None,) + tuple(shape[1:])
        outputs[blob] = current[blob]
        graph_outputs.append((current[blob], shape))
    model = graph.build(graph_inputs, graph_outputs, name=net.name or "net", opset=graph.opset)
    onnx.checker.check_model(model)
    return OnnxExport(model, outputs, in_tail)


class _Sharing:
    """Which ONNX values hold the same data in the numpy runtime, and the rebinding of every blob
    holding such a value when a layer trims one of them in place."""

    def __init__(self, graph, current):
        self.graph, self.current = graph, current
        self.root = {}       # value name -> the value whose data it shares
        self.shape = {}      # value name -> static shape

    def join(self, value, source):
        self.root[value] = self.root.get(source, source)

    def rebind(self, blob, old, new):
        group = self.root.get(old, old)
        self.root[new], self.shape[new] = group, self.shape.get(old)
        self.current[blob] = new
        for other, value in list(self.current.items()):
            if other == blob or self.root.get(value, value) != group:
                continue
            shape = self.shape.get(value)
            if shape is None or self.shape[new] is None or shape == self.shape[new]:
                alias = self.graph.node("Identity", [new])[0]
            else:
                keep_batch = shape and self.shape[new] and shape[0] == self.shape[new][0]
                target = [0 if keep_batch else -1] + list(shape[1:]) if shape else []
                alias = self.graph.node("Reshape", [new, self.graph.ints(target, "shape")])[0]
            self.current[other] = alias
            self.root[alias], self.shape[alias] = group, shape


def _final_writer(net, blob):
    index = None
    for i, layer in enumerate(net.layers):
        if blob in layer.tops:
            index = i
    return index


def _tail_layers(net, compat="gpu"):
    """Indices of layers that cannot be exported, plus everything downstream of them."""
    tainted, tail = set(), []
    for i, layer in enumerate(net.layers):
        impl = net.impl(i)
        if not impl.onnx_supported(compat) or any(b in tainted for b in layer.bottoms):
            tail.append(i)
            tainted.update(layer.tops)
            if impl.rewrites_bottoms:      # later readers must see its trimmed inputs
                tainted.update(layer.bottoms)
    return tail


def save_onnx(export, path):
    """Write an exported model atomically."""
    from ..atomic import write_bytes
    write_bytes(path, export.model.SerializeToString())
