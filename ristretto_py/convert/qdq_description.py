"""The quantized Ristretto description of a QDQ model: the formats ``onnx_qdq.strip_qdq`` read
from its QuantizeLinear/DequantizeLinear pairs, set on the Caffe net ``onnx_to_caffe`` made of
its float model (blob names are ONNX tensor names, layer names ONNX node names).

Each tensor's QDQ format becomes Ristretto's dynamic fixed point (``onnx_qdq.nearest_format``:
exact for power-of-two scales with zero point 0, else the nearest format that holds the QDQ
range). Where they land:

* Convolution, InnerProduct and Deconvolution become ConvolutionRistretto, FcRistretto and
  DeconvolutionRistretto: ``bw/fl_layer_in`` from the input blob, ``bw/fl_layer_out`` from the
  output blob, ``bw/fl_params`` from the weights (per output channel in ``fl_params_channel``
  where the QDQ weights are per channel), and an int32 QDQ bias (at the input-times-weight
  scale, as onnxruntime's and TFLite's quantizers write it) becomes ``bias_format:
  ACCUMULATOR``.
* Pooling, Eltwise, Concat, Scale, Bias and PReLU get ristretto-py's stock-layer formats
  (``layers.formats``) where their inputs and output have QDQ formats; Scale's and Bias's
  operands take their constants' formats.
* A format on the output of a layout change (Permute, Reshape, Flatten) or of a ReLU holds for
  its input too: the layout changes move values unchanged, and rounding to a format commutes
  with a ReLU. So a convolution whose ReLU (fused in TFLite, or folded into the zero point)
  comes before the pair still gets its output format.

Layers whose input or output has no QDQ format stay float; ``rows`` says which and why.
"""
import dataclasses
import math

import numpy as np

from ..layers.formats import FORMATTED_TYPES
from ..protos import caffe_pb2
from .onnx_qdq import nearest_format

Q = caffe_pb2.QuantizationParameter
PRODUCTS = {"Convolution": "ConvolutionRistretto", "InnerProduct": "FcRistretto",
            "Deconvolution": "DeconvolutionRistretto"}
LAYOUT = ("Permute", "Reshape", "Flatten")
# The output-channel axis of a product node's weight tensor in ONNX's layout
_CHANNEL_AXIS = {"Conv": 0, "ConvTranspose": 1, "MatMul": 1}


@dataclasses.dataclass
class Row:
    """One QDQ tensor: its format, the dynamic fixed point chosen and where it went."""
    tensor: str
    role: str                # input, output, weights, bias, operand, or unused
    layer: str
    qdq: str                 # "int8 scale 0.0123 zero point -128" / "int8 per channel ..."
    bit_width: int
    fractional_length: str
    exact: bool
    step_over_scale: float   # the format's step 2^-fl over the QDQ scale (largest over channels)
    range_lost: float

    def line(self):
        verdict = "exact" if self.exact else (f"nearest: step {self.step_over_scale:.3g} x the scale, "
                                              f"{self.range_lost:.1%} of the range outside")
        return (f"{self.layer or '-'} {self.role} {self.tensor}: {self.qdq} -> {self.bit_width}-bit "
                f"fl {self.fractional_length} ({verdict})")


def qdq_text(fmt):
    kind = f"{'int' if fmt.signed else 'uint'}{fmt.bits}"
    scale = np.ravel(fmt.scale)
    zero = np.ravel(fmt.zero_point)
    if fmt.per_channel:
        zeros = "zero point 0" if not np.any(zero) else f"zero points {int(zero.min())}..{int(zero.max())}"
        return f"{kind} per channel (axis {fmt.axis}) scales {scale.min():.6g}..{scale.max():.6g}, {zeros}"
    return f"{kind} scale {float(scale[0]):.6g} zero point {int(zero[0])}"


def _row(tensor, role, layer, fmt, choice):
    step = np.exp2(-np.asarray(choice.fractional_length, np.float64))
    ratio = float(np.max(step / np.asarray(fmt.scale, np.float64)))
    return Row(tensor, role, layer, qdq_text(fmt), choice.bit_width, _fl_text(choice.fractional_length),
               choice.exact, ratio, choice.range_lost)


def _fl_text(fl):
    if np.ndim(fl) == 0:
        return str(int(fl))
    return str(int(fl[0])) if np.all(fl == fl[0]) else f"{int(np.min(fl))}..{int(np.max(fl))}"


class _Builder:
    def __init__(self, net, float_model, formats):
        self.net, self.formats = net, formats
        self.nodes = {n.name: n for n in float_model.graph.node if n.name}
        self.initializers = {t.name for t in float_model.graph.initializer}
        self.writers = {o: n for n in float_model.graph.node for o in n.output}
        self.choices = {name: nearest_format(fmt) for name, fmt in formats.items()}
        self.rows, self.notes, self.used = [], [], set()
        self.blob = self._blob_formats()

    def _blob_formats(self):
        """blob -> tensor name whose format it has (its own, or through LAYOUT/ReLU layers)."""
        layers = self.net.layers
        blob = {b: b for layer in layers for b in layer.bottoms + layer.tops if b in self.formats}
        readers = {}
        for layer in layers:
            for b in layer.bottoms:
                readers.setdefault(b, []).append(layer)
        for _ in range(len(layers)):
            changed = False
            for layer in layers:
                if len(layer.bottoms) != 1 or len(layer.tops) != 1 or layer.in_place:
                    continue
                (bottom,), (top,) = layer.bottoms, layer.tops
                relu = layer.type == "ReLU" and layer.spec.relu_param.negative_slope == 0
                if layer.type not in LAYOUT and not relu:
                    continue
                if top in blob and bottom not in blob and (not relu or len(readers.get(bottom, ())) == 1):
                    blob[bottom], changed = blob[top], True
                elif bottom in blob and top not in blob and layer.type in LAYOUT:
                    blob[top], changed = blob[bottom], True
            if not changed:
                break
        return blob

    def _row(self, tensor, role, layer):
        fmt, choice = self.formats[tensor], self.choices[tensor]
        self.used.add(tensor)
        self.rows.append(_row(tensor, role, layer, fmt, choice))
        return choice

    def _activation(self, layer, bottoms, top):
        """(bw_in, fl_in, bw_out, fl_out), or None where a blob has no format (noted)."""
        missing = [b for b in list(bottoms) + [top] if b not in self.blob]
        if missing:
            self.notes.append(f"{layer.name} ({layer.type}) stays float: no QDQ format on "
                              f"'{missing[0]}'")
            return None
        ins = [self._row(self.blob[b], "input", layer.name) for b in bottoms]
        out = self._row(self.blob[top], "output", layer.name)
        fl_in = min(int(np.min(c.fractional_length)) for c in ins)      # aligned: the coarsest
        return max(c.bit_width for c in ins), fl_in, out.bit_width, int(np.min(out.fractional_length))

    def build(self):
        param = self.net.to_proto()
        for layer, spec in zip(self.net.layers, param.layer):
            if layer.type in PRODUCTS:
                self._product(layer, spec)
            elif layer.type in FORMATTED_TYPES and layer.type != "BatchNorm" and not self._passes(layer):
                self._stock(layer, spec)
        used = {id(self.formats[name]) for name in self.used}       # aliases (Identity) of used ones
        for name in self.formats:
            if name not in self.used and id(self.formats[name]) not in used:
                self.rows.append(_row(name, "unused", "", self.formats[name], self.choices[name]))
        return param

    def _passes(self, layer):
        """A ReLU whose input and output have one format (the format moved through it)."""
        return (layer.type == "ReLU" and len(layer.bottoms) == 1 and layer.bottoms[0] in self.blob
                and self.blob[layer.bottoms[0]] == self.blob.get(layer.tops[0]))

    def _node(self, layer):
        node = self.nodes.get(layer.name)
        return node if node is not None else self.writers.get(layer.name)

    def _product(self, layer, spec):
        node = self._node(layer)
        weight = node.input[1] if node is not None and len(node.input) > 1 else None
        if weight not in self.formats:
            self.notes.append(f"{layer.name} ({layer.type}) stays float: its weights have no QDQ format")
            return
        io = self._activation(layer, layer.bottoms, layer.tops[0])
        if io is None:
            return
        fmt = self.formats[weight]
        axis = _CHANNEL_AXIS.get(node.op_type, 0)
        if node.op_type == "Gemm":
            axis = 0 if any(a.name == "transB" and a.i for a in node.attribute) else 1
        if fmt.per_channel and fmt.axis != axis:
            self.notes.append(f"{layer.name}: weight scales along axis {fmt.axis}, not the output "
                              "channels: one format for the layer (the coarsest)")
        weights = self._row(weight, "weights", layer.name)
        q = spec.quantization_param
        spec.type = PRODUCTS[layer.type]
        q.bw_layer_in, q.fl_layer_in, q.bw_layer_out, q.fl_layer_out = io
        q.bw_params = weights.bit_width
        lengths = np.ravel(weights.fractional_length).astype(int)
        q.fl_params = int(lengths.min())
        if lengths.size > 1 and fmt.axis == axis and not np.all(lengths == lengths[0]):
            q.fl_params_channel.extend(int(v) for v in lengths)
        bias = self._bias_tensor(node, layer)
        if bias is not None and len(layer.blobs) > 1:
            choice = self._row(bias, "bias", layer.name)
            if choice.bit_width == 32:
                q.bias_format = Q.ACCUMULATOR
                q.bw_bias = _bias_bits(layer.blobs[1], q.fl_layer_in, lengths)

    def _bias_tensor(self, node, layer):
        if node.op_type in ("Conv", "Gemm", "ConvTranspose") and len(node.input) > 2 \
                and node.input[2] in self.formats:
            return node.input[2]
        add = self.writers.get(layer.tops[0])            # a bias Add folded into the layer
        if add is not None and add.op_type == "Add":
            return next((i for i in add.input if i in self.formats and i != layer.bottoms[0]), None)
        return None

    def _stock(self, layer, spec):
        io = self._activation(layer, layer.bottoms, layer.tops[0])
        if io is None:
            return
        q = spec.quantization_param
        q.bw_layer_in, q.fl_layer_in, q.bw_layer_out, q.fl_layer_out = io
        node = self._node(layer)
        constants = [i for i in (node.input if node is not None else ()) if i in self.formats
                     and i in self.initializers]
        if constants and layer.blobs:
            choice = self._row(constants[0], "operand", layer.name)
            q.bw_params, q.fl_params = choice.bit_width, int(np.min(choice.fractional_length))
        else:
            largest = max((float(np.max(np.abs(b))) for b in layer.blobs), default=0.0)
            il = math.floor(math.log2(largest)) + 2 if largest > 0 else 1
            q.bw_params, q.fl_params = 32, 32 - il


def _bias_bits(bias, fl_in, fl_weights):
    """32, or the bits the largest |bias| needs at the accumulator's scale, at most 62."""
    bias = np.abs(np.asarray(bias, np.float64))
    scales = fl_in + (fl_weights if fl_weights.size == bias.size else np.full(bias.size, fl_weights.min()))
    needed = [math.floor(math.log2(b)) + 2 + s for b, s in zip(bias, scales) if b > 0]
    return int(min(62, max([32] + needed)))


def quantized_description(net, float_model, formats):
    """(NetParameter of the quantized description, [Row], [note]) for the Caffe ``net``
    converted from ``float_model`` (``strip_qdq``'s) with its QDQ ``formats``."""
    builder = _Builder(net, float_model, formats)
    param = builder.build()
    return param, builder.rows, builder.notes
