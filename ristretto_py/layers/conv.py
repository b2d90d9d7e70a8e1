"""Learned linear layers: Convolution, Deconvolution and InnerProduct.

Convolution is computed as im2col followed by one batched matrix product per group: the
patch matrix is filled with one strided copy per kernel tap (never a loop over pixels or
channels), and a 1x1 stride-1 convolution skips the copy entirely. Deconvolution is the
transpose: one matrix product, then col2im as one strided accumulation per tap. Float32
throughout, as Caffe computes it.

The Ristretto variants (``ConvolutionRistretto``, ...) subclass these classes and reuse the
``forward`` of the float operation.

A layer with ``weight_quantization_param`` (ristretto-py's training-time quantizers, see
``ristretto_py.weight_quantization``) computes with the quantized weights in ``run`` and embeds
them in its ONNX export; ``forward`` and ``export_operation`` take the weights as given.
"""
import dataclasses

import numpy as np

from ..weight_quantization import weight_quantizer
from .base import LayerImpl, as_f32, normalize_axis, register

SPATIAL_DIMS = 2


def _spatial_values(layer, repeated, h_field, w_field, name, default, has_field):
    """Caffe's rule for kernel/stride/pad: either the ``_h``/``_w`` pair or the repeated field
    with one value for all spatial axes or one per axis."""
    if has_field(h_field) or has_field(w_field):
        if not (has_field(h_field) and has_field(w_field)):
            raise layer.error(f"{h_field} and {w_field} must be given together")
        if len(repeated):
            raise layer.error(f"give either {name} or {h_field}/{w_field}, not both")
        return (int(getattr(layer.conv, h_field)), int(getattr(layer.conv, w_field)))
    values = [int(v) for v in repeated]
    if not values:
        if default is None:
            raise layer.error(f"{name} is required")
        return (default,) * SPATIAL_DIMS
    if len(values) == 1:
        return (values[0],) * SPATIAL_DIMS
    if len(values) != SPATIAL_DIMS:
        raise layer.error(f"{name} has {len(values)} values; give 1 or {SPATIAL_DIMS}")
    return tuple(values)


class _QuantizableWeights(LayerImpl):
    """A learned layer whose weights (blob 0) may pass through a training-time quantizer."""

    def setup_weight_quantizer(self, spec):
        try:
            self.weight_quantizer = weight_quantizer(spec)
        except ValueError as exc:
            raise self.error(f"weight_quantization_param: {exc}") from None
        self._quantized = None

    def quantized_params(self, blobs, context=None):
        """The blobs the layer computes with: the weights quantized, the bias as stored. A
        stochastic quantizer draws from the run's generator in the TRAIN phase; otherwise the
        result is deterministic and kept while the blobs are the same objects."""
        quantizer = self.weight_quantizer
        if quantizer is None or not blobs:
            return blobs
        if quantizer.stochastic and self.phase == "TRAIN" and context is not None:
            return [quantizer.quantize(blobs[0], context.rng)] + list(blobs[1:])
        cached = self._quantized
        if cached is None or len(cached[0]) != len(blobs) or any(
                a is not b for a, b in zip(cached[0], blobs)):
            cached = self._quantized = (list(blobs), [quantizer.quantize(blobs[0])] + list(blobs[1:]))
        return cached[1]

    def run(self, bottoms, blobs, context):
        return super().run(bottoms, self.quantized_params(blobs, context), context)

    def export_onnx(self, graph, io):
        self.export_operation(graph, dataclasses.replace(io, blobs=self.quantized_params(io.blobs)))

    def export_operation(self, graph, io):
        """The float operation's ONNX nodes with ``io.blobs`` as they are."""
        raise NotImplementedError


class _ConvBase(_QuantizableWeights):
    """Parameters and shape checks shared by Convolution and Deconvolution."""

    def param_field(self, spec):
        return spec.convolution_param

    def setup(self, spec):
        p = self.conv = self.param_field(spec)
        has = p.HasField
        if not has("num_output") or p.num_output == 0:
            raise self.error("convolution_param.num_output must be given and positive")
        self.num_output = int(p.num_output)
        self.kernel = _spatial_values(self, p.kernel_size, "kernel_h", "kernel_w", "kernel_size", None, has)
        self.stride = _spatial_values(self, p.stride, "stride_h", "stride_w", "stride", 1, has)
        self.pad = _spatial_values(self, p.pad, "pad_h", "pad_w", "pad", 0, has)
        dilation = [int(v) for v in p.dilation] or [1]
        if len(dilation) not in (1, SPATIAL_DIMS):
            raise self.error(f"dilation has {len(dilation)} values; give 1 or {SPATIAL_DIMS}")
        self.dilation = tuple(dilation) if len(dilation) == SPATIAL_DIMS else (dilation[0],) * SPATIAL_DIMS
        if min(self.kernel) <= 0 or min(self.stride) <= 0 or min(self.dilation) <= 0:
            raise self.error("kernel size, stride and dilation must be positive")
        self.group = int(p.group)
        if self.group <= 0:
            raise self.error("group must be positive")
        if self.num_output % self.group:
            raise self.error(f"num_output {self.num_output} is not divisible by group {self.group}")
        self.bias_term = bool(p.bias_term)
        self.axis = int(p.axis)
        self.setup_weight_quantizer(spec)

    def _check_bottom(self, shape):
        if len(shape) != 2 + SPATIAL_DIMS:
            raise self.error(f"needs a 4-D bottom (N, C, H, W), got shape {list(shape)}")
        if normalize_axis(self.axis, len(shape), self.name) != 1:
            raise self.error("only channel axis 1 is supported")
        if shape[1] % self.group:
            raise self.error(f"{shape[1]} input channels are not divisible by group {self.group}")

    def _effective_kernel(self):
        return tuple(d * (k - 1) + 1 for k, d in zip(self.kernel, self.dilation))

    onnx_op = ""

    def _weight_shape(self, channels):
        raise NotImplementedError

    def param_shapes(self, bottom_shapes):
        shapes = [self._weight_shape(bottom_shapes[0][1])]
        if self.bias_term:
            shapes.append((self.num_output,))
        return shapes

    def export_operation(self, graph, io):
        inputs = [io.bottoms[0], onnx_param(graph, io, 0, as_f32(io.blobs[0]), "weight", 0)]
        if self.bias_term:
            inputs.append(onnx_param(graph, io, 1, as_f32(io.blobs[1]).reshape(-1), "bias", 0))
        graph.node(self.onnx_op, inputs, io.tops, kernel_shape=list(self.kernel),
                   strides=list(self.stride), dilations=list(self.dilation),
                   pads=list(self.pad) * 2, group=self.group)


@register
class Convolution(_ConvBase):
    type_name = "Convolution"
    onnx_op = "Conv"

    def output_shapes(self, bottom_shapes):
        shape = bottom_shapes[0]
        self._check_bottom(shape)
        spatial = []
        for size, k, s, p in zip(shape[2:], self._effective_kernel(), self.stride, self.pad):
            out = (size + 2 * p - k) // s + 1
            if out <= 0:
                raise self.error(f"kernel {list(self.kernel)} (dilated {k}) does not fit the "
                                 f"{list(shape[2:])} input with pad {list(self.pad)}")
            spatial.append(out)
        return [(shape[0], self.num_output, *spatial)]

    def _weight_shape(self, channels):
        return (self.num_output, channels // self.group, *self.kernel)

    def forward(self, bottoms, blobs):
        bias = blobs[1] if self.bias_term else None
        return [convolve(bottoms[0], blobs[0], bias, self.stride, self.pad, self.dilation, self.group)]

    def macs(self, bottom_shapes, top_shapes):
        c_in = bottom_shapes[0][1] // self.group
        return int(np.prod(top_shapes[0])) * c_in * int(np.prod(self.kernel))


@register
class Deconvolution(_ConvBase):
    """The transpose of Convolution; its weight blob is (C_in, num_output / group, kh, kw)."""
    type_name = "Deconvolution"
    onnx_op = "ConvTranspose"

    def output_shapes(self, bottom_shapes):
        shape = bottom_shapes[0]
        self._check_bottom(shape)
        spatial = []
        for size, k, s, p in zip(shape[2:], self._effective_kernel(), self.stride, self.pad):
            out = s * (size - 1) + k - 2 * p
            if out <= 0:
                raise self.error(f"pad {list(self.pad)} leaves no output for a {list(shape[2:])} input")
            spatial.append(out)
        return [(shape[0], self.num_output, *spatial)]

    def _weight_shape(self, channels):
        return (channels, self.num_output // self.group, *self.kernel)

    def forward(self, bottoms, blobs):
        bias = blobs[1] if self.bias_term else None
        return [deconvolve(bottoms[0], blobs[0], bias, self.stride, self.pad, self.dilation, self.group)]

    def macs(self, bottom_shapes, top_shapes):
        return int(np.prod(bottom_shapes[0])) * (self.num_output // self.group) * int(np.prod(self.kernel))


@register
class InnerProduct(_QuantizableWeights):
    """y = x W^T + b over the axes from ``axis`` on, flattened; ``transpose`` stores W as (K, N)."""
    type_name = "InnerProduct"

    def param_field(self, spec):
        return spec.inner_product_param

    def setup(self, spec):
        p = self.param_field(spec)
        if not p.HasField("num_output") or p.num_output == 0:
            raise self.error("inner_product_param.num_output must be given and positive")
        self.num_output = int(p.num_output)
        self.bias_term = bool(p.bias_term)
        self.axis_param = int(p.axis)
        self.transpose = bool(p.transpose)
        self.setup_weight_quantizer(spec)

    def _axis(self, shape):
        return normalize_axis(self.axis_param, len(shape), self.name)

    def output_shapes(self, bottom_shapes):
        shape = bottom_shapes[0]
        return [tuple(shape[:self._axis(shape)]) + (self.num_output,)]

    def param_shapes(self, bottom_shapes):
        shape = bottom_shapes[0]
        k = int(np.prod(shape[self._axis(shape):]))
        shapes = [(k, self.num_output) if self.transpose else (self.num_output, k)]
        if self.bias_term:
            shapes.append((self.num_output,))
        return shapes

    def _weight_kn(self, weight):
        """The weight as a (K, num_output) matrix."""
        weight = as_f32(weight)
        return weight if self.transpose else weight.T

    def forward(self, bottoms, blobs):
        x = bottoms[0]
        axis = self._axis(x.shape)
        rows = x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1)
        y = rows @ self._weight_kn(blobs[0])
        if self.bias_term:
            y += as_f32(blobs[1]).reshape(1, -1)
        return [y.reshape(x.shape[:axis] + (self.num_output,))]

    def macs(self, bottom_shapes, top_shapes):
        shape = bottom_shapes[0]
        axis = self._axis(shape)
        return int(np.prod(shape[:axis])) * self.num_output * int(np.prod(shape[axis:]))

    def export_operation(self, graph, io):
        shape = io.bottom_shapes[0]
        axis = self._axis(shape)
        # Keep the (dynamic) batch with 0, the other leading axes as they are, flatten the rest.
        target = [0, *shape[1:axis], -1] if axis >= 1 else [-1]
        flat = graph.node("Reshape", [io.bottoms[0], graph.ints(target, "shape")])[0]
        weight = onnx_param(graph, io, 0, np.ascontiguousarray(self._weight_kn(io.blobs[0])),
                            "weight", 1)
        if self.bias_term:
            bias = onnx_param(graph, io, 1, as_f32(io.blobs[1]).reshape(-1), "bias", 0)
            if io.extra.get("quantized"):       # one node, the form QDQ fusion looks for
                graph.node("Gemm", [flat, weight, bias], io.tops)
                return
            product = graph.node("MatMul", [flat, weight])[0]
            graph.node("Add", [product, bias], io.tops)
        else:
            graph.node("MatMul", [flat, weight], io.tops)


def onnx_param(graph, io, index, array, hint, axis):
    """The value of parameter blob ``index`` (``array``, laid out as the ONNX node takes it,
    output channels along ``axis``): a float initializer, or what the quantized export's
    ``io.extra["param_value"]`` makes of it (an integer initializer and its DequantizeLinear)."""
    make = io.extra.get("param_value")
    if make is not None:
        return make(graph, index, array, hint, axis)
    return graph.constant(array, hint)


# -- the computations, shared with the Ristretto layers and the fixed-point kernels ------------

def im2col(x, kernel, stride, pad, dilation):
    """Patches of ``x`` (N, C, H, W) as an array (N, C, kh, kw, Ho, Wo), padded with zeros."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, pad, dilation
    ho = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    wo = (w + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    if ph or pw:
        padded = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=x.dtype)
        padded[:, :, ph:ph + h, pw:pw + w] = x
    else:
        padded = x
    cols = np.empty((n, c, kh, kw, ho, wo), dtype=x.dtype)
    for i in range(kh):
        rows = slice(i * dh, i * dh + sh * (ho - 1) + 1, sh)
        for j in range(kw):
            cols[:, :, i, j] = padded[:, :, rows, j * dw:j * dw + sw * (wo - 1) + 1:sw]
    return cols


def convolve(x, weight, bias, stride, pad, dilation, group):
    """Caffe's Convolution forward in float32: (N, C, H, W) -> (N, O, Ho, Wo)."""
    x = as_f32(x)
    weight = as_f32(weight)
    n, c = x.shape[:2]
    out_channels, c_per_group, kh, kw = weight.shape
    if c_per_group * group != c:
        raise ValueError(f"weight expects {c_per_group * group} channels, input has {c}")
    if (kh, kw) == (1, 1) and tuple(stride) == (1, 1) and tuple(pad) == (0, 0):
        ho, wo = x.shape[2:]
        cols = x.reshape(n, group, c_per_group, ho * wo)
    else:
        patches = im2col(x, (kh, kw), stride, pad, dilation)
        ho, wo = patches.shape[-2:]
        cols = patches.reshape(n, group, c_per_group * kh * kw, ho * wo)
    matrix = weight.reshape(group, out_channels // group, c_per_group * kh * kw)
    if group == 1:
        y = np.matmul(matrix[0], cols[:, 0])
    else:
        y = np.matmul(matrix, cols)
    y = y.reshape(n, out_channels, ho, wo)
    if bias is not None:
        y += as_f32(bias).reshape(1, -1, 1, 1)
    return y


def deconvolve(x, weight, bias, stride, pad, dilation, group):
    """Caffe's Deconvolution forward: the gradient of a convolution with ``weight``."""
    x = as_f32(x)
    weight = as_f32(weight)
    n, c, h, w = x.shape
    c_in, o_per_group, kh, kw = weight.shape
    if c_in != c:
        raise ValueError(f"weight expects {c_in} channels, input has {c}")
    (sh, sw), (ph, pw), (dh, dw) = stride, pad, dilation
    c_per_group = c // group
    # (G, O/G*kh*kw, C/G) @ (N, G, C/G, H*W) -> columns (N, G, O/G, kh, kw, H, W)
    matrix = weight.reshape(group, c_per_group, o_per_group * kh * kw).transpose(0, 2, 1)
    cols = np.matmul(matrix, x.reshape(n, group, c_per_group, h * w))
    cols = cols.reshape(n, group * o_per_group, kh, kw, h, w)
    full_h = sh * (h - 1) + dh * (kh - 1) + 1
    full_w = sw * (w - 1) + dw * (kw - 1) + 1
    out = np.zeros((n, group * o_per_group, full_h, full_w), dtype=np.float32)
    for i in range(kh):
        rows = slice(i * dh, i * dh + sh * (h - 1) + 1, sh)
        for j in range(kw):
            out[:, :, rows, j * dw:j * dw + sw * (w - 1) + 1:sw] += cols[:, :, i, j]
    y = np.ascontiguousarray(out[:, :, ph:full_h - ph, pw:full_w - pw])
    if bias is not None:
        y += as_f32(bias).reshape(1, -1, 1, 1)
    return y


def convolve_indexed(x, indices, codebook, bias, stride, pad, dilation, group):
    """A convolution whose weights are ``codebook[indices]`` (k-means weight sharing), computed
    as an accelerator with a codebook would: for each output, the inputs that share a centroid
    are summed first, then each of the K sums is multiplied once by its centroid. float64."""
    x = np.asarray(x, np.float64)
    indices = np.asarray(indices)
    codebook = np.asarray(codebook, np.float64)
    n, c = x.shape[:2]
    out_channels, c_per_group, kh, kw = indices.shape
    k = codebook.size
    patches = im2col(x, (kh, kw), stride, pad, dilation)
    ho, wo = patches.shape[-2:]
    cols = patches.reshape(n, group, c_per_group * kh * kw, ho * wo)
    per_group = out_channels // group
    flat = indices.reshape(group, per_group, -1)
    y = np.empty((n, group, per_group, ho * wo))
    for g in range(group):
        # one-hot selection (per_group * K, taps): row (o, k) sums the taps of centroid k
        select = (flat[g][:, None, :] == np.arange(k)[None, :, None]).astype(np.float64)
        sums = np.matmul(select.reshape(per_group * k, -1), cols[:, g])     # (N, per_group*K, P)
        y[:, g] = np.einsum("nokp,k->nop", sums.reshape(n, per_group, k, -1), codebook)
    y = y.reshape(n, out_channels, ho, wo)
    if bias is not None:
        y += np.asarray(bias, np.float64).reshape(1, -1, 1, 1)
    return y
