"""Quantized ONNX exports of a dynamic-fixed-point net: QDQ (standard ONNX, opset 21), which
onnxruntime runs on its integer kernels after fusing the QuantizeLinear/DequantizeLinear pairs,
and QONNX (``qonnx_nodes``), which FINN and hls4ml read.

Both walk the net like the float export (``onnx_export``) and differ only in how a trimming and
a parameter are spelled (``onnx_trim.trim``, ``param_values``):
* activations: every trimming of a Ristretto layer's input and output and of a formatted stock
  layer's (``layers.formats``) becomes a QDQ pair (or a QONNX Quant node) at scale 2^-fl;
* weights: integer initializers of the mantissas (int4/int8/int16 by ``bw_params``; a vector of
  scales along the output channels for per-channel lengths) behind a DequantizeLinear;
  power-of-two weights as mantissas at scale 2^exp_min;
* biases: int32 at the input-times-weight scale 2^-(fl_layer_in + fl_params) wherever that is
  exact (onnxruntime's fused kernels take them so), else the bias's own format, else the exact
  trimmed values as float32 (``QuantizedExport.notes`` says which);
* an InnerProduct is a single Gemm, the pattern QDQ fusion turns into QGemm.

QDQ refuses, naming the layer: mini-float (QDQ is uniform), stochastic rounding, training-time
weight quantizers, HWCE and ActivationQuantize layers, widths of 1 or above 16 bits, the CPU
build (QuantizeLinear rounds half to even; its build rounds ties away from zero), and a stock
layer that needs a format to stay in integers (Scale, Bias, BatchNorm, Eltwise, Concat, AVE
pooling, PReLU, leaky ReLU) but has none while it reads a quantized blob. Layers that only move
or select values (ReLU, MAX pooling, Split, Flatten, Reshape, Dropout) pass their input's
format on; layers the user leaves in float (Softmax, ...) compute in float after the last
DequantizeLinear.

QONNX holds mini-float (``FloatQuant``; where its semantics differ from Ristretto's: see
``qonnx_nodes``) and widths above 16 bits, and refuses the same layers as QDQ, the CPU build,
1-bit widths (qonnx's signed 1-bit Quant is a bipolar sign) and mini-float exponents above 7
bits. Its executor needs fixed shapes: export with ``dynamic_batch=False`` (``--static_batch``)
to run the file in qonnx.
"""
import collections
import dataclasses
import os
import tempfile

import numpy as np

from .. import numerics
from ..errors import UnsupportedError
from ..layers.formats import FORMATTED_TYPES
from ..precision import DYNAMIC_FIXED_POINT, MINIFLOAT, POWER_OF_2
from . import onnx_trim
from .onnx_export import export_onnx

MODES = ("qdq", "qonnx")
ACTIVATION_TYPES = ("signed", "unsigned")
RISTRETTO_MAC = ("ConvolutionRistretto", "FcRistretto", "DeconvolutionRistretto")
PASS_THROUGH = ("Split", "Flatten", "Reshape", "Dropout")
INT32_LIMIT = 2 ** 31
# Operators of onnxruntime's graph that compute on integers (its QDQ fusions' results).
INTEGER_KERNELS = ("QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger", "QGemm",
                   "QLinearAdd", "QLinearMul", "QLinearConcat", "QLinearAveragePool",
                   "QLinearGlobalAveragePool", "QLinearLeakyRelu", "QLinearSigmoid",
                   "DynamicQuantizeMatMul")


@dataclasses.dataclass
class QuantizedExport:
    export: object          # the OnnxExport (model, outputs)
    mode: str
    notes: list             # per-layer remarks (a bias kept as float32, ...)

    @property
    def model(self):
        return self.export.model


def export_quantized(net, mode="qdq", compat="gpu", all_blobs=False, dynamic_batch=True,
                     activations="signed"):
    """Export ``net`` (a Net with weights whose layers carry formats) as QDQ or QONNX.
    ``activations`` (QDQ): "signed" (int types, zero point 0) or "unsigned" (see
    ``onnx_trim.qdq``)."""
    if activations not in ACTIVATION_TYPES:
        raise ValueError(f"activations must be one of {ACTIVATION_TYPES}, not {activations!r}")
    if mode not in MODES:
        raise ValueError(f"quantized export must be one of {MODES}, not {mode!r}")
    check_quantizable(net, mode, compat)
    notes = []
    export = export_onnx(net, all_blobs=all_blobs, dynamic_batch=dynamic_batch,
                         allow_tail=True, compat=compat, quantized=mode,
                         param_values=lambda impl: param_values(impl, mode, notes),
                         extra={"qdq_activations": activations})
    return QuantizedExport(export, mode, notes)


# -- what the export refuses ----------------------------------------------------------------
def check_quantizable(net, mode, compat):
    """Raise UnsupportedError (one line, naming the file and layer) where ``mode`` cannot hold
    the net's formats exactly."""
    def refuse(layer, why):
        raise UnsupportedError(f"no {mode.upper()} form: {why}", path=net.source, layer=layer.name)

    if mode == "qdq" and compat != "gpu":
        raise UnsupportedError("no QDQ form for the CPU build's rounding: QuantizeLinear rounds "
                               "ties to even, Ristretto's CPU build away from zero (use --compat "
                               "gpu)", path=net.source)
    if mode == "qonnx" and compat != "gpu":
        # Every layer the CPU build quantizes would be refused or left out: its fixed point
        # rounds ties away from zero (qonnx's HALF_UP is not exact, see ``qonnx_nodes``), its
        # mini-float has an early exit no node expresses (the export would leave the net to the
        # numpy tail), and it does not trim a power-of-two layer's activations. Name the first.
        for layer, impl in zip(net.layers, net.impls):
            if (layer.type in RISTRETTO_MAC or layer.type == "LRNRistretto"
                    or getattr(impl, "layer_format", None) is not None):
                refuse(layer, "the CPU build's rounding has no QONNX node: qonnx's HALF_UP "
                              "rounds 0.49999997 up to 1 (C round gives 0), and its mini-float "
                              "has an early exit (use --compat gpu)")
    quantized, formatted = set(), 0
    for layer, impl in zip(net.layers, net.impls):
        if impl.is_source:
            continue
        reads_quantized = any(b in quantized for b in layer.bottoms)
        if layer.type in RISTRETTO_MAC or layer.type == "LRNRistretto":
            _check_ristretto(layer, impl, mode, compat, refuse)
            formatted += 1
            quantized.update(layer.tops)
        elif impl.layer_format is not None:
            p = impl.layer_format          # operands stay exact float32 constants: any width
            for name in ("bw_layer_in", "bw_layer_out"):
                _check_width(getattr(p, name), name, mode, layer, refuse)
            formatted += 1
            quantized.update(layer.tops)
        elif layer.type in ("ConvolutionHWCE", "ActivationQuantize"):
            refuse(layer, f"{layer.type} quantizes with its own clip-and-floor or linear levels, "
                          "not 2^-fl scales")
        elif reads_quantized and _passes_format_on(layer, impl):
            quantized.update(layer.tops)
        elif reads_quantized and layer.type in FORMATTED_TYPES:
            refuse(layer, f"this {layer.type} reads integer values but has no format of its own "
                          "(give it one: tools/quantize --all_layers, or a quantization_param)")
        if getattr(impl, "weight_quantizer", None) is not None:
            refuse(layer, "a training-time weight quantizer (weight_quantization_param) has no "
                          "2^-fl scale")
    if not formatted:
        raise UnsupportedError(f"no layer carries a format: quantize the net first "
                               f"(tools/quantize) before a {mode.upper()} export", path=net.source)


def _passes_format_on(layer, impl):
    if layer.type in PASS_THROUGH:
        return True
    if layer.type == "ReLU":
        return impl.negative_slope == 0
    if layer.type == "Pooling":
        return impl.method == "MAX"
    return False


def _check_ristretto(layer, impl, mode, compat, refuse):
    p = impl.precision
    if p.rounding == numerics.STOCHASTIC:
        refuse(layer, "stochastic rounding is drawn at run time")
    if layer.type == "LRNRistretto":
        refuse(layer, "LRNRistretto rounds every intermediate of its running sum to mini-float")
    if p.precision == MINIFLOAT:
        if mode == "qdq":
            refuse(layer, "mini-float is not a uniform integer grid (QDQ's float8 types have "
                          "subnormals and NaN, Ristretto's mini-float neither)")
        if p.exp_bits > 7:
            refuse(layer, f"a {p.exp_bits}-bit mini-float exponent leaves float32 in qonnx's "
                          "FloatQuant (its scales overflow or underflow); 7 bits at most")
        return
    if p.precision == POWER_OF_2 and compat != "gpu":
        refuse(layer, "the CPU build does not trim a power-of-two layer's activations")
    for name in ("bw_layer_in", "bw_layer_out") + (("bw_params",) if p.precision == DYNAMIC_FIXED_POINT else ()):
        _check_width(getattr(p, name), name, mode, layer, refuse)


def _check_width(bits, name, mode, layer, refuse):
    if mode == "qonnx":
        if bits < 2:
            refuse(layer, f"{name} is {bits} bit: qonnx reads a signed 1-bit Quant as a bipolar "
                          "+-1 sign, not Ristretto's {-1, 0} * 2^-fl (2 bits at least)")
        return
    try:
        onnx_trim.qdq_type(bits)
    except UnsupportedError as exc:
        refuse(layer, f"{name}: {exc}")


# -- parameters -----------------------------------------------------------------------------
def param_values(impl, mode, notes):
    """The export hook that spells a Ristretto layer's trimmed parameters (None: float)."""
    precision = getattr(impl, "precision", None)
    if impl.type_name not in RISTRETTO_MAC or precision is None:
        return None
    if mode == "qonnx":
        from . import qonnx_nodes
        return _QonnxParams(impl, qonnx_nodes)
    return _QdqParams(impl, notes)


def _along(values, axis, ndim):
    values = np.asarray(values)
    if values.ndim == 0:
        return values
    shape = [1] * ndim
    shape[axis] = -1
    return values.reshape(shape)


def _mantissas(array, fractional_length, axis):
    scaled = np.asarray(array, np.float64) * np.exp2(_along(fractional_length, axis, np.ndim(array)))
    mantissas = np.rint(scaled)
    return mantissas.astype(np.int64), bool(np.all(mantissas == scaled))


class _QdqParams:
    def __init__(self, impl, notes):
        self.impl, self.p, self.notes = impl, impl.precision, notes

    def weight_length(self):
        p = self.p
        return np.asarray(p.fl_params_channel) if p.per_channel else p.fl_params

    def __call__(self, graph, index, array, hint, axis):
        p = self.p
        if index == 0 and p.precision == POWER_OF_2:
            mantissas, _ = _mantissas(array, -p.exp_min, axis)
            bits = p.exp_max - p.exp_min + 2           # sign + magnitudes up to 2^(max-min)
            return onnx_trim.dequantized_constant(graph, mantissas, bits, -p.exp_min, axis, hint)
        if index == 0:
            mantissas, _ = _mantissas(array, self.weight_length(), axis)
            return onnx_trim.dequantized_constant(graph, mantissas, p.bw_params,
                                                  self.weight_length(), axis, hint)
        return self.bias(graph, array, hint)

    def bias(self, graph, array, hint):
        p = self.p
        if p.precision == DYNAMIC_FIXED_POINT:
            accumulator = p.fl_layer_in + np.asarray(self.weight_length())
            mantissas, exact = _mantissas(array, accumulator, 0)
            if exact and np.all(np.abs(mantissas) < INT32_LIMIT):
                return onnx_trim.dequantized_constant(graph, mantissas, 32, accumulator, 0, hint,
                                                      onnx_type=onnx_trim.TensorProto.INT32)
            own = p.bias_fractional_length()
            mantissas, exact = _mantissas(array, own, 0)
            if exact and p.bias_bits() <= 16:
                return onnx_trim.dequantized_constant(graph, mantissas, p.bias_bits(), own, 0, hint)
        self.notes.append(f"{self.impl.name}: bias kept as float32 (its values are exact, but "
                          "not int32 at the input-times-weight scale)")
        return graph.constant(array, hint)


class _QonnxParams:
    def __init__(self, impl, nodes):
        self.impl, self.p, self.nodes = impl, impl.precision, nodes

    def __call__(self, graph, index, array, hint, axis):
        p = self.p
        if p.precision == POWER_OF_2:
            if index == 0:
                return self.nodes.power_of_two_constant(graph, array, hint)
            return graph.constant(array, hint)          # Ristretto leaves this bias in float
        if p.precision == MINIFLOAT:
            value = graph.constant(array, hint)
            return self.nodes.float_quant(graph, value, p.exp_bits, p.mant_bits)
        if index == 0:
            length = np.asarray(p.fl_params_channel) if p.per_channel else p.fl_params
            return self.nodes.weight_constant(graph, array, p.bw_params, length, axis, hint)
        return self.nodes.weight_constant(graph, array, p.bias_bits(),
                                          p.bias_fractional_length(), 0, hint)


# -- what onnxruntime made of it ------------------------------------------------------------
def cpu_has_vnni():
    """Whether this CPU has AVX-512 VNNI or AVX-VNNI (None where /proc/cpuinfo cannot say)."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_vnni", "avx_vnni"})
    except OSError:
        return None
    return None


def unsigned_saturation_note(net, activations):
    """A warning line where onnxruntime's u8s8 kernels may saturate: on x86 CPUs without VNNI
    they add pairs of uint8 x int8 products in 16 bits with saturation, which 8-bit weights
    against uint8 activations can exceed (7-bit weights cannot); None otherwise."""
    if activations != "unsigned" or cpu_has_vnni():
        return None
    wide = [l.name for l, impl in zip(net.layers, net.impls) if l.type in RISTRETTO_MAC
            and impl.precision.precision == DYNAMIC_FIXED_POINT and impl.precision.bw_params >= 8]
    if not wide:
        return None
    return (f"onnxruntime's uint8 x int8 kernels on this CPU (no VNNI) add pairs of products in "
            f"16 bits with saturation: with 8-bit weights ({', '.join(wide[:3])}"
            f"{', ...' if len(wide) > 3 else ''}) some sums can differ from the fixed backend; "
            "7-bit weights, or --qdq_activations signed, keep every value exact")

def onnxruntime_nodes(model):
    """Counter of the operator types in the graph onnxruntime runs after its optimisations
    (QDQ fusion among them), read back from the optimised model it saves."""
    import onnx
    import onnxruntime as ort
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "optimized.onnx")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = path
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        optimized = onnx.load(path)
    return collections.Counter(node.op_type for node in optimized.graph.node)


def describe_fusion(counts):
    """One line: which integer kernels onnxruntime runs, and what stays float."""
    integer = {op: n for op, n in counts.items() if op in INTEGER_KERNELS}
    float_ops = {op: n for op, n in counts.items()
                 if op in ("Conv", "FusedConv", "Gemm", "FusedGemm", "MatMul", "ConvTranspose")}
    parts = ", ".join(f"{n} {op}" for op, n in sorted(integer.items())) or "none"
    line = f"onnxruntime runs on integer kernels: {parts}"
    if float_ops:
        line += "; in float: " + ", ".join(f"{n} {op}" for op, n in sorted(float_ops.items()))
    return line
