"""ONNX CNN graphs as Caffe layers, exactly or not at all.

ONNX and Caffe both lay images out N x C x H x W, so tensors become blobs of the same shape under
the same names and weights keep their order (Conv OIHW, ConvTranspose IOHW as Caffe's
Deconvolution, Gemm/MatMul weights transposed to InnerProduct's (out, in)). The graph is first
made static by ``onnx_graph_prep`` (shapes inferred, constant chains folded); each node then maps
to one or a few Caffe layers. Padding, pooling windows and broadcasting are checked against
Caffe's rules (``onnx_windows``); a node Caffe cannot reproduce exactly is refused by name with
the reason, as the Keras converter does.
"""
import numpy as np
from onnx import TensorProto, helper

from ..errors import UnsupportedError
from ..net import Layer
from .onnx_graph_prep import DEFAULT_DOMAINS, prepare, read_onnx  # noqa: F401  (read_onnx: API)
from .onnx_nodes import ActivationNodes, LinearNodes, NormalizationNodes, PoolingNodes, Value
from .onnx_tensor_nodes import ArithmeticNodes, ShapeNodes

FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16)
PAD_CONSUMERS = ("Conv", "MaxPool", "AveragePool")
NON_NEGATIVE_KEEPERS = ("MaxPool", "GlobalMaxPool", "Concat", "Reshape", "Flatten", "Transpose",
                        "Squeeze", "Unsqueeze", "Dropout", "Identity", "Pad", "ReduceMax")
NO_CAFFE_LAYER = {
    "Elu": "ristretto-py's Caffe layer set has no ELU layer",
    "LogSoftmax": "Caffe has no LogSoftmax (and ristretto-py no Log layer to follow a Softmax)",
}


def _attributes(node):
    attrs = {}
    for attr in node.attribute:
        value = helper.get_attribute_value(attr)
        attrs[attr.name] = value.decode() if isinstance(value, bytes) else value
    return attrs


class Converter(LinearNodes, NormalizationNodes, ActivationNodes, PoolingNodes,
                ArithmeticNodes, ShapeNodes):
    def __init__(self, graph, keep_blobs=()):
        self.graph, self.source, self.keep_blobs = graph, graph.source, set(keep_blobs)
        self.layers, self.values, self.layer_names = [], {}, set()
        self.opset = graph.opset

    # -- reporting --------------------------------------------------------------------------
    @staticmethod
    def node_name(index, node):
        return node.name or f"{node.op_type}#{index}"

    def refuse(self, reason):
        index, node = self.current
        return UnsupportedError(f"{node.op_type} cannot be converted exactly: {reason}",
                                path=self.source, layer=self.node_name(index, node))

    def handler(self, node):
        if node.domain not in DEFAULT_DOMAINS:
            return None
        return getattr(self, f"_{node.op_type}", None)

    # -- the walk ---------------------------------------------------------------------------
    def convert(self):
        # Name every node without a Caffe form first: its inputs (an LSTM's sequence, say)
        # would otherwise be refused for a shape, blaming the wrong node.
        for self.current in self.graph.nodes:
            node = self.current[1]
            if node.op_type in NO_CAFFE_LAYER and node.domain in DEFAULT_DOMAINS:
                raise self.refuse(NO_CAFFE_LAYER[node.op_type])
            if self.handler(node) is None:
                domain = f" of domain '{node.domain}'" if node.domain not in DEFAULT_DOMAINS else ""
                raise self.refuse(f"no Caffe equivalent is implemented for this operator{domain}")
        for name, shape in self.graph.inputs:
            if self.graph.types.get(name) in FLOAT_TYPES:
                self.add(name, "Input", [], [name], input_param={"shape": [{"dim": list(shape)}]})
                self.values[name] = Value(name, tuple(shape))
        used = {i for _, n in self.graph.nodes for i in n.input if i} | set(self.graph.outputs)
        for self.current in self.graph.nodes:
            self._convert_node(used)
        outputs = [self._output(name) for name in self.graph.outputs]
        self.layers = fold_bias_layers(self.layers, keep=set(outputs) | self.keep_blobs)
        outputs = self._output_names(outputs)
        return self.layers, outputs

    def _output_names(self, blobs):
        """Give each output blob its ONNX output's name where a node that Caffe needs no layer
        for (Identity, a no-op Reshape, ...) made them differ: the blob is renamed in every layer
        unless it is a net input, another output too, or the name is already a blob's."""
        inputs = {name for name, _ in self.graph.inputs}
        taken = {b for layer in self.layers for b in layer.bottoms + layer.tops}
        renames = {}
        for blob, name in zip(blobs, self.graph.outputs):
            if blob != name and blob not in inputs and blobs.count(blob) == 1 and name not in taken:
                renames[blob] = name
        if renames:
            self.layers = [layer.replace(bottom=[renames.get(b, b) for b in layer.bottoms],
                                         top=[renames.get(t, t) for t in layer.tops])
                           for layer in self.layers]
        return [renames.get(b, b) for b in blobs]

    def _convert_node(self, used):
        node = self.current[1]
        extra = [o for o in node.output[1:] if o in used]
        if extra:
            raise self.refuse(f"its output '{extra[0]}' (beyond the first) is used; Caffe gives only one")
        for name in node.input:
            value = self.values.get(name)
            if value is not None and value.pad is not None and node.op_type not in PAD_CONSUMERS:
                raise UnsupportedError(f"Pad cannot be converted exactly: it feeds {node.op_type} "
                                       f"'{self.node_name(*self.current)}'; a Pad folds only into a "
                                       "following Conv or pooling", path=self.source, layer=value.pad_node)
        result = self.handler(node)(node, _attributes(node))
        if isinstance(result, str):           # a blob name: the node's output is that blob
            result = Value(result, self.out_shape())
        if node.op_type in NON_NEGATIVE_KEEPERS and not result.non_negative:
            data = [self.values[i] for i in node.input if i in self.values]
            result.non_negative = bool(data) and all(v.non_negative for v in data)
        self.values[node.output[0]] = result

    def _output(self, name):
        if name in self.graph.constants:
            raise UnsupportedError(f"model output '{name}' is a constant; a Caffe net computes "
                                   "its outputs from its inputs", path=self.source)
        value = self.values[name]
        if value.pad is not None:
            raise UnsupportedError("Pad cannot be converted exactly: its output is a model output",
                                   path=self.source, layer=value.pad_node)
        return value.blob

    # -- helpers ----------------------------------------------------------------------------
    def layer_name(self, suffix=""):
        index, node = self.current
        base = (node.name or node.output[0]) + suffix
        name, count = base, 1
        while name in self.layer_names:
            name, count = f"{base}_{count}", count + 1
        return name

    def add(self, name, type_, bottoms, tops, blobs=(), **params):
        self.layer_names.add(name)
        self.layers.append(Layer.create(name, type_, bottoms, tops,
                                        [np.asarray(b, np.float32) for b in blobs], **params))

    def emit(self, type_, bottoms, blobs=(), suffix="", top=None, **params):
        """One layer for the current node; its top is the node's output (or ``top``)."""
        top = top or self.current[1].output[0]
        self.add(self.layer_name(suffix), type_, bottoms, [top], blobs, **params)
        return top

    def out_shape(self, index=0):
        shape = self.graph.shapes.get(self.current[1].output[index])
        if shape is None or None in shape:
            raise self.refuse("onnx's shape inference leaves its output shape open")
        return tuple(shape)

    def const(self, index, required=False, what="input"):
        node = self.current[1]
        name = node.input[index] if index < len(node.input) else ""
        if not name:
            if required:
                raise self.refuse(f"its {what} is missing")
            return None
        if name not in self.graph.constants:
            if required:
                raise self.refuse(f"its {what} '{name}' is computed in the graph, not a constant")
            return None
        return self.graph.constants[name]

    def tensor(self, index):
        name = self.current[1].input[index]
        if name in self.values:
            return self.values[name]
        if name in self.graph.constants:
            raise self.refuse(f"its input '{name}' is a constant where Caffe needs a blob")
        raise self.refuse(f"its input '{name}' is not a float tensor the Caffe net carries")

    def is_const(self, index):
        node = self.current[1]
        return index < len(node.input) and node.input[index] in self.graph.constants

    def axes_input(self, attrs, index=1):
        """An ``axes`` list from the attribute (older opsets) or a constant input (newer)."""
        if "axes" in attrs:
            return [int(a) for a in attrs["axes"]]
        axes = self.const(index)
        if axes is None and index < len(self.current[1].input) and self.current[1].input[index]:
            raise self.refuse("its axes are computed in the graph, not a constant")
        return None if axes is None else [int(a) for a in np.ravel(axes)]

    def reshape(self, x, shape, suffix="", top=None):
        """A Caffe Reshape of ``x`` to ``shape`` (0 keeps the batch where it stays)."""
        if tuple(x.shape) == tuple(shape):
            return x.blob if top is None else self.emit("Reshape", [x.blob], suffix=suffix, top=top,
                                                        reshape_param={"shape": {"dim": [0] * len(shape)}})
        keep = (len(shape) and len(x.shape) and shape[0] == x.shape[0]
                and np.prod(shape[1:]) == np.prod(x.shape[1:]))
        dims = [0] + list(shape[1:]) if keep else list(shape)
        return self.emit("Reshape", [x.blob], suffix=suffix, top=top,
                         reshape_param={"shape": {"dim": [int(d) for d in dims]}})


_BIASED = ("Convolution", "InnerProduct", "Deconvolution")


def fold_bias_layers(layers, keep=()):
    """A Bias layer of one constant per output channel that follows a Convolution, InnerProduct
    or Deconvolution without a bias, or a Scale without one (a BatchNorm as Mul + Add), (MatMul + Add, Conv + Add: how tf2onnx writes TensorFlow's
    BiasAdd) becomes that layer's bias: the same sum in the same order (product, then bias), and
    Ristretto's layers trim the output after their bias as TFLite and QDQ engines requantize it.
    The product's blob disappears unless it is in ``keep`` or read by another layer."""
    readers = {}
    for layer in layers:
        for b in layer.bottoms:
            readers[b] = readers.get(b, 0) + 1
    index = {top: i for i, layer in enumerate(layers) for top in layer.tops}
    result, removed = list(layers), set()
    for i, layer in enumerate(layers):
        if layer.type != "Bias" or len(layer.bottoms) != 1 or len(layer.blobs) != 1:
            continue
        source = layer.bottoms[0]
        j = index.get(source)
        if j is None or source in keep or readers.get(source) != 1 or layer.in_place:
            continue
        producer = result[j]
        spec = producer.spec
        bias = layer.blobs[0]
        axis, axes = layer.spec.bias_param.axis, layer.spec.bias_param.num_axes
        if producer.type == "Scale":                 # x * s + b: Scale's own bias term
            sp = spec.scale_param
            if (not sp.bias_term and len(producer.blobs) == 1 and producer.tops == (source,)
                    and (sp.axis, sp.num_axes) == (axis, axes) and producer.blobs[0].shape == bias.shape):
                edited = type(spec)()
                edited.CopyFrom(spec)
                edited.scale_param.bias_term = True
                result[j] = producer.replace(spec=edited, top=list(layer.tops),
                                             blobs=producer.blobs + (bias,))
                removed.add(i)
            continue
        param = spec.inner_product_param if producer.type == "InnerProduct" else spec.convolution_param
        if (producer.type not in _BIASED or param.bias_term or producer.tops != (source,)
                or axis != 1 or axes != 1 or bias.shape != (param.num_output,)
                or (producer.type == "InnerProduct" and param.axis != 1)):
            continue
        spec = type(producer.spec)()
        spec.CopyFrom(producer.spec)
        (spec.inner_product_param if producer.type == "InnerProduct" else spec.convolution_param).bias_term = True
        result[j] = producer.replace(spec=spec, top=list(layer.tops), blobs=producer.blobs + (bias,))
        removed.add(i)
    return [layer for i, layer in enumerate(result) if i not in removed]


def onnx_to_layers(model, source="model.onnx", input_shapes=None, keep_blobs=()):
    """(Caffe layers with their blobs, output blob names) for an ``onnx.ModelProto``;
    ``input_shapes`` ({input name: dims}) fixes free input dimensions (a free batch is 1);
    ``keep_blobs``: tensors no layer fusion may remove (those a QDQ pair rounded)."""
    return Converter(prepare(model, source, input_shapes), keep_blobs).convert()
