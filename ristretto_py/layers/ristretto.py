"""Ristretto's layer types: ConvolutionRistretto, DeconvolutionRistretto, FcRistretto and
LRNRistretto, with the TEST-phase semantics of DESIGN section 3.

A Ristretto layer trims its input (Convolution and Deconvolution: every bottom; FcRistretto:
bottom 0), trims its weights and bias, runs the float operation of its Caffe base type and trims
its output. Both of Ristretto's builds trim the input in place (the CPU code on
``mutable_cpu_data``, the CUDA code on ``mutable_gpu_data``), so a layer that reads the same blob
later sees the trimmed values; both ``compat`` modes do so, and they differ only in the rules of
``numerics`` (NEAREST ties, the mini-float early exit) and in power-of-two activation trimming.
The numpy forward hands the trimmed input back in its ``bottoms`` list (the runtime rebinds the
blob; no array is written), the ONNX export rebinds the blob's value name. The rules themselves
live in ``ristretto_py.precision`` and ``ristretto_py.numerics``; their ONNX form in
``ristretto_py.runtime.onnx_trim``.

Per-output-channel weight lengths (``fl_params_channel``, a ristretto-py extension) follow the
weights' output axis: 0 for ConvolutionRistretto and FcRistretto, 1 for a transposed
FcRistretto; DeconvolutionRistretto refuses them (its output channels are spread over the group
blocks of axis 0 and axis 1). The trimmed parameters are what the ONNX export embeds, so every
backend sees the same values.

LRNRistretto exists only for MINIFLOAT and ACROSS_CHANNELS and only in Ristretto's CUDA code: a
running sum of squares walks the channels, and every intermediate (each input, square, partial
sum, scaled sum, ``k +`` term, power and product) is rounded to mini-float with NEAREST. Its CPU
build aborts on this layer, so the CUDA definition is used under either ``compat``. The running
sum cannot be written with standard ONNX ops, so the onnxruntime backend runs it in numpy.
"""
import numpy as np

from .. import numerics
from ..precision import MINIFLOAT, LayerPrecision, output_channel_axis
from .base import LayerImpl, OnnxIO, RunContext, register
from .conv import Convolution, Deconvolution, InnerProduct


class _RistrettoLayer:
    """Mixin over a Caffe layer class: trimming around its ``forward``."""

    trims_all_bottoms = True
    rewrites_bottoms = True

    def setup(self, spec):
        super().setup(spec)
        try:
            self.precision = LayerPrecision.from_proto(spec.quantization_param)
        except KeyError as exc:
            raise self.error(f"quantization_param has an unknown precision or rounding ({exc})")
        if self.precision.per_channel and self.channel_axis is None:
            raise self.error(f"fl_params_channel is not supported for {self.type_name} (its "
                             "weights are (C_in, C_out/group, kh, kw)); use fl_params")
        try:
            self.precision.check_extensions(self.num_output)
        except ValueError as exc:
            raise self.error(f"quantization_param: {exc}") from None
        self._trimmed_params = None

    @property
    def channel_axis(self):
        """The output-channel axis of the weight blob (per-channel fractional lengths)."""
        return output_channel_axis(self.spec)

    def trim_params(self, blobs, context):
        """The layer's weights and bias trimmed to its parameter formats; with a training-time
        quantizer (``weight_quantization_param``), the quantized weights and the float bias."""
        if self.weight_quantizer is not None:
            return self.quantized_params(blobs, context)
        return self.precision.trim_params(blobs, context, self.bias_term, self.channel_axis)

    def _params(self, blobs, context):
        """Trimmed weights and bias; NEAREST results are cached (weights never change)."""
        p = self.precision
        if p.rounding == numerics.STOCHASTIC or self.weight_quantizer is not None:
            return self.trim_params(blobs, context)
        key = (context.compat, tuple(id(b) for b in blobs))
        if self._trimmed_params is None or self._trimmed_params[0] != key:
            self._trimmed_params = (key, self.trim_params(blobs, context), list(blobs))
        return self._trimmed_params[1]

    def run(self, bottoms, blobs, context):
        p = self.precision
        count = len(bottoms) if self.trims_all_bottoms else 1
        for i in range(count):
            # In place, in both builds: the trimmed array replaces the bottom in the caller's
            # list, and the runtime makes it the blob's value (see ``LayerImpl.run``).
            bottoms[i] = p.trim_input(bottoms[i], context)
        tops = self.forward(list(bottoms), self._params(blobs, context))
        return [p.trim_output(top, context) for top in tops]

    # -- ONNX -------------------------------------------------------------------------------
    def onnx_supported(self, compat="gpu"):
        p = self.precision
        if p.rounding == numerics.STOCHASTIC:
            return False
        return not (p.precision == MINIFLOAT and compat == "cpu")

    def _trim_value(self, graph, value, bit_width, fractional_length, extra):
        from ..runtime import onnx_trim
        p = self.precision
        if p.precision == MINIFLOAT:
            if extra.get("quantized") == "qonnx":
                from ..runtime.qonnx_nodes import float_quant
                return float_quant(graph, value, p.exp_bits, p.mant_bits)
            return onnx_trim.minifloat(graph, value, p.exp_bits, p.mant_bits)
        if not p.trims_activations(extra.get("compat", "gpu")):
            return value
        return onnx_trim.trim(graph, value, bit_width, fractional_length, extra)

    def export_onnx(self, graph, io):
        p = self.precision
        compat = io.extra.get("compat", "gpu")
        count = len(io.bottoms) if self.trims_all_bottoms else 1
        bottoms = list(io.bottoms)
        for i in range(count):
            bottoms[i] = self._trim_value(graph, bottoms[i], p.bw_layer_in, p.fl_layer_in, io.extra)
            if bottoms[i] != io.bottoms[i]:          # trimmed in place, in both builds
                io.extra.setdefault("rebind", {})[i] = bottoms[i]
        params = self.trim_params(io.blobs, RunContext(compat, None))
        raw_tops = [graph.unique(f"{top}@float") for top in io.tops]
        self.export_operation(graph, OnnxIO(bottoms, raw_tops, params, io.bottom_shapes,
                                            io.top_shapes, io.extra))
        for raw, top in zip(raw_tops, io.tops):
            trimmed = self._trim_value(graph, raw, p.bw_layer_out, p.fl_layer_out, io.extra)
            graph.node("Identity", [trimmed], [top])


@register
class ConvolutionRistretto(_RistrettoLayer, Convolution):
    type_name = "ConvolutionRistretto"


@register
class DeconvolutionRistretto(_RistrettoLayer, Deconvolution):
    type_name = "DeconvolutionRistretto"


@register
class FcRistretto(_RistrettoLayer, InnerProduct):
    type_name = "FcRistretto"
    trims_all_bottoms = False


@register
class LRNRistretto(LayerImpl):
    type_name = "LRNRistretto"
    onnx_exportable = False

    def setup(self, spec):
        p = spec.lrn_param
        if p.norm_region != p.ACROSS_CHANNELS:
            raise self.error("LRNRistretto supports only norm_region ACROSS_CHANNELS (as Ristretto)")
        self.size = int(p.local_size)
        if self.size % 2 == 0:
            raise self.error(f"local_size must be odd, got {self.size}")
        self.alpha, self.beta, self.k = np.float32(p.alpha), np.float32(p.beta), np.float32(p.k)
        try:
            self.precision = LayerPrecision.from_proto(spec.quantization_param)
        except KeyError as exc:
            raise self.error(f"quantization_param has an unknown precision or rounding ({exc})")
        if self.precision.precision != MINIFLOAT:
            raise self.error("LRNRistretto supports only the MINIFLOAT precision (as Ristretto)")
        try:
            self.precision.check_extensions(0)
        except ValueError as exc:
            raise self.error(f"quantization_param: {exc}") from None

    def output_shapes(self, bottom_shapes):
        shape = bottom_shapes[0]
        if len(shape) != 4:
            raise self.error(f"needs a 4-D bottom (N, C, H, W), got shape {list(shape)}")
        if shape[1] <= self.size // 2:
            raise self.error(f"local_size {self.size} is too large for {shape[1]} channels "
                             "(Ristretto's kernel would index outside the blob)")
        return [tuple(shape)]

    def _trim(self, values):
        p = self.precision
        return numerics.trim_minifloat(values, p.exp_bits, p.mant_bits, numerics.NEAREST, "gpu")

    def forward(self, bottoms, blobs):
        x = np.asarray(bottoms[0], dtype=np.float32)
        trim = self._trim
        channels = x.shape[1]
        pre_pad = (self.size - 1) // 2
        post_pad = self.size - pre_pad - 1
        alpha_over_size = np.float32(self.alpha / np.float32(self.size))
        squares = trim(trim(x) * trim(x))          # the trimmed square of each trimmed input
        scale = np.empty_like(x)
        accum = np.zeros((x.shape[0],) + x.shape[2:], dtype=np.float32)
        # One pass over the channels, vectorised over N, H and W, in CUDA's order of operations.
        for head in range(channels + post_pad):
            if head < channels:
                accum = trim(accum + squares[:, head])
            if head - self.size >= 0:
                accum = trim(accum - squares[:, head - self.size])
            if head >= post_pad:
                term = trim(accum * alpha_over_size)
                scale[:, head - post_pad] = trim(self.k + term)
        with np.errstate(over="ignore", divide="ignore"):
            powered = trim(np.power(scale, -self.beta, dtype=np.float32))
        return [trim(trim(x) * powered)]

    def run(self, bottoms, blobs, context):
        return self.forward(bottoms, blobs)
