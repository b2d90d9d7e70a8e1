"""Normalisation and per-channel affine layers: BatchNorm, Scale, Bias, LRN and Softmax.

BatchNorm keeps three blobs: mean * s, variance * s and s, the moving-average factor; s = 0
means the statistics are zero (Caffe multiplies by 0 instead of dividing). With
``use_global_stats`` (the default in TEST) those statistics normalise; otherwise (TRAIN) the
batch's own mean and biased variance over N and the spatial axes do.

Scale and Bias broadcast a learned blob (or a second bottom) over ``bottom[0]`` starting at
``axis``: the blob's shape must equal the bottom's shape from ``axis`` on for its own number of
axes (``num_axes`` for the learned blob; -1 = all remaining axes).

LRN ACROSS_CHANNELS: ``x / (k + alpha/n * sum of x^2 over n channels centred on c)^beta``.
LRN WITHIN_CHANNEL is Caffe's composition: ``x * (1 + alpha * avg(x^2))^-beta`` where avg is
AVE pooling over an n x n window padded by (n-1)/2 (k is not used there).
"""
import numpy as np

from .base import LayerImpl, as_f32, normalize_axis, register
from .loss import softmax
from .pooling import _ave_pool

FLOAT = np.float32


def _normalize(out, x, mean, std):
    np.subtract(x, mean, out=out)
    np.divide(out, std, out=out)


def _affine(out, x, scale, bias):
    np.multiply(x, scale, out=out)
    np.add(out, bias, out=out)


def _broadcast_shape(ndim, axis, shape):
    return (1,) * axis + tuple(shape) + (1,) * (ndim - axis - len(shape))


@register
class BatchNorm(LayerImpl):
    type_name = "BatchNorm"

    def setup(self, spec):
        p = spec.batch_norm_param
        self.eps = FLOAT(p.eps)
        self.global_stats = bool(p.use_global_stats) if p.HasField("use_global_stats") \
            else self.phase == "TEST"
        if not self.global_stats:
            self.onnx_exportable = False

    def _channels(self, shape):
        return 1 if len(shape) == 1 else int(shape[1])

    def output_shapes(self, bottom_shapes):
        return [tuple(bottom_shapes[0])]

    def param_shapes(self, bottom_shapes):
        c = self._channels(bottom_shapes[0])
        return [(c,), (c,), (1,)]

    def statistics(self, blobs):
        """(mean, variance) per channel from the three stored blobs."""
        factor = FLOAT(np.asarray(blobs[2]).reshape(-1)[0])
        scale = FLOAT(0) if factor == 0 else FLOAT(1) / factor
        return (as_f32(blobs[0]).reshape(-1) * scale, as_f32(blobs[1]).reshape(-1) * scale)

    def forward(self, bottoms, blobs):
        return [self.forward_into(bottoms, blobs, np.empty_like(as_f32(bottoms[0])))]

    def forward_into(self, bottoms, blobs, out):
        x = as_f32(bottoms[0])
        shape = (1, -1) + (1,) * (x.ndim - 2) if x.ndim > 1 else (-1,)
        if self.global_stats:
            mean, var = self.statistics(blobs)
            mean, var = mean.reshape(shape), var.reshape(shape)
        else:
            axes = (0,) + tuple(range(2, x.ndim))
            mean = x.mean(axis=axes, keepdims=True, dtype=FLOAT)
            var = ((x - mean) ** 2).mean(axis=axes, keepdims=True, dtype=FLOAT)
        std = np.sqrt(var + self.eps, dtype=FLOAT)
        _normalize(out, x, mean, std)
        return out

    def export_onnx(self, graph, io):
        ndim = len(io.bottom_shapes[0])
        shape = (-1,) + (1,) * (ndim - 2) if ndim > 1 else (-1,)
        mean, var = self.statistics(io.blobs)
        centred = graph.node("Sub", [io.bottoms[0], graph.constant(mean.reshape(shape), "mean")])[0]
        std = np.sqrt(var + self.eps).astype(FLOAT).reshape(shape)
        graph.node("Div", [centred, graph.constant(std, "std")], io.tops)


class _Affine(LayerImpl):
    """Shared by Scale and Bias: one operand broadcast along ``axis``."""
    bottoms_range = (1, 2)

    def _parse(self, axis, num_axes):
        self.axis_param, self.num_axes = int(axis), int(num_axes)
        if self.num_axes < -1:
            raise self.error("num_axes must be -1 or more")

    def _operand_shape(self, bottom_shapes):
        """(axis, shape of the scale/bias operand) for these bottoms."""
        shape = tuple(bottom_shapes[0])
        if len(bottom_shapes) > 1:
            operand = tuple(bottom_shapes[1])
            axis = 0 if len(operand) == 0 else normalize_axis(self.axis_param, len(shape), self.name)
        else:
            axis = normalize_axis(self.axis_param, len(shape), self.name) if len(shape) else 0
            end = len(shape) if self.num_axes == -1 else axis + self.num_axes
            if end > len(shape):
                raise self.error(f"axis {axis} + num_axes {self.num_axes} exceeds the "
                                 f"{len(shape)}-D bottom")
            operand = shape[axis:end]
        if shape[axis:axis + len(operand)] != operand:
            raise self.error(f"operand shape {list(operand)} does not match bottom shape "
                             f"{list(shape)} from axis {axis}")
        return axis, operand

    def output_shapes(self, bottom_shapes):
        self._operand_shape(bottom_shapes)
        return [tuple(bottom_shapes[0])]

    def _operand(self, array, ndim, axis, shape):
        return as_f32(array).reshape(_broadcast_shape(ndim, axis, shape))

    def _onnx_operand(self, graph, value, shape, ndim, axis):
        """A value broadcastable against the (possibly dynamic-batch) bottom."""
        target = _broadcast_shape(ndim, axis, shape)
        if isinstance(value, np.ndarray):
            return graph.constant(value.reshape(target), "operand")
        if axis == 0:
            raise self.error("an operand along the batch axis has no ONNX export")
        return graph.node("Reshape", [value, graph.ints(target, "shape")])[0]


@register
class Scale(_Affine):
    type_name = "Scale"

    def setup(self, spec):
        p = spec.scale_param
        self._parse(p.axis, p.num_axes)
        self.bias_term = bool(p.bias_term)

    def param_shapes(self, bottom_shapes):
        _, operand = self._operand_shape(bottom_shapes)
        operand = operand or (1,)      # a 0-axis blob is stored as one value
        shapes = [] if len(bottom_shapes) > 1 else [operand]
        if self.bias_term:
            shapes.append(operand)
        return shapes

    def forward(self, bottoms, blobs):
        return [self.forward_into(bottoms, blobs, np.empty_like(as_f32(bottoms[0])))]

    def forward_into(self, bottoms, blobs, out):
        x = as_f32(bottoms[0])
        axis, shape = self._operand_shape([b.shape for b in bottoms])
        two = len(bottoms) > 1
        scale = self._operand(bottoms[1] if two else blobs[0], x.ndim, axis, shape)
        if not self.bias_term:
            return np.multiply(x, scale, out=out)
        bias = self._operand(blobs[0] if two else blobs[1], x.ndim, axis, shape)
        _affine(out, x, scale, bias)
        return out

    def export_onnx(self, graph, io):
        ndim = len(io.bottom_shapes[0])
        axis, operand = self._operand_shape(io.bottom_shapes)
        two = len(io.bottoms) > 1
        scale = self._onnx_operand(graph, io.bottoms[1] if two else as_f32(io.blobs[0]), operand, ndim, axis)
        if not self.bias_term:
            graph.node("Mul", [io.bottoms[0], scale], io.tops)
            return
        scaled = graph.node("Mul", [io.bottoms[0], scale])[0]
        bias = self._onnx_operand(graph, as_f32(io.blobs[0] if two else io.blobs[1]), operand, ndim, axis)
        graph.node("Add", [scaled, bias], io.tops)


@register
class Bias(_Affine):
    type_name = "Bias"

    def setup(self, spec):
        p = spec.bias_param
        self._parse(p.axis, p.num_axes)

    def param_shapes(self, bottom_shapes):
        _, operand = self._operand_shape(bottom_shapes)
        return [] if len(bottom_shapes) > 1 else [operand or (1,)]

    def forward(self, bottoms, blobs):
        x = as_f32(bottoms[0])
        axis, shape = self._operand_shape([b.shape for b in bottoms])
        operand = bottoms[1] if len(bottoms) > 1 else blobs[0]
        return [np.add(x, self._operand(operand, x.ndim, axis, shape), dtype=FLOAT)]

    def export_onnx(self, graph, io):
        ndim = len(io.bottom_shapes[0])
        axis, operand = self._operand_shape(io.bottom_shapes)
        value = io.bottoms[1] if len(io.bottoms) > 1 else as_f32(io.blobs[0])
        graph.node("Add", [io.bottoms[0], self._onnx_operand(graph, value, operand, ndim, axis)], io.tops)


@register
class LRN(LayerImpl):
    type_name = "LRN"

    def setup(self, spec):
        p = spec.lrn_param
        self.size = int(p.local_size)
        if self.size % 2 == 0 or self.size < 1:
            raise self.error(f"local_size must be odd and positive, got {self.size}")
        self.alpha, self.beta, self.k = FLOAT(p.alpha), FLOAT(p.beta), FLOAT(p.k)
        self.across = p.norm_region == p.ACROSS_CHANNELS

    def output_shapes(self, bottom_shapes):
        shape = bottom_shapes[0]
        if len(shape) != 4:
            raise self.error(f"needs a 4-D bottom (N, C, H, W), got shape {list(shape)}")
        return [tuple(shape)]

    def forward(self, bottoms, blobs):
        x = as_f32(bottoms[0])
        half = (self.size - 1) // 2
        squares = x * x
        if self.across:
            padded = np.zeros((x.shape[0], x.shape[1] + self.size - 1) + x.shape[2:], FLOAT)
            padded[:, half:half + x.shape[1]] = squares
            window = np.cumsum(padded, axis=1, dtype=np.float64)
            window = np.concatenate([window[:, self.size - 1:self.size], window[:, self.size:] -
                                     window[:, :-self.size]], axis=1).astype(FLOAT)
            scale = self.k + (self.alpha / FLOAT(self.size)) * window
        else:
            kernel, pad = (self.size, self.size), (half, half)
            average = _ave_pool(squares, kernel, (1, 1), pad, x.shape[2:])
            scale = FLOAT(1) + self.alpha * average
        return [np.multiply(x, np.power(scale, -self.beta, dtype=FLOAT), dtype=FLOAT)]

    def export_onnx(self, graph, io):
        if self.across:
            graph.node("LRN", io.bottoms, io.tops, size=self.size, alpha=float(self.alpha),
                       beta=float(self.beta), bias=float(self.k))
            return
        half = (self.size - 1) // 2
        squares = graph.node("Mul", [io.bottoms[0], io.bottoms[0]])[0]
        average = graph.node("AveragePool", [squares], kernel_shape=[self.size, self.size],
                             pads=[half] * 4, count_include_pad=1)[0]
        scale = graph.node("Add", [graph.node("Mul", [average, graph.scalar(self.alpha)])[0],
                                   graph.scalar(1.0)])[0]
        powered = graph.node("Pow", [scale, graph.scalar(-self.beta)])[0]
        graph.node("Mul", [io.bottoms[0], powered], io.tops)


@register
class Softmax(LayerImpl):
    type_name = "Softmax"

    def setup(self, spec):
        self.axis_param = int(spec.softmax_param.axis)

    def output_shapes(self, bottom_shapes):
        normalize_axis(self.axis_param, len(bottom_shapes[0]), self.name)
        return [tuple(bottom_shapes[0])]

    def forward(self, bottoms, blobs):
        x = as_f32(bottoms[0])
        return [softmax(x, normalize_axis(self.axis_param, x.ndim, self.name))]

    def export_onnx(self, graph, io):
        axis = normalize_axis(self.axis_param, len(io.bottom_shapes[0]), self.name)
        graph.node("Softmax", io.bottoms, io.tops, axis=axis)
