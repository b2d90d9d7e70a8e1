"""Pooling with Caffe's exact window rules (MAX, AVE, and STOCHASTIC at test time).

Caffe sizes the output with ``ceil`` by default (``round_mode: FLOOR`` gives ``floor``), then,
when there is padding, drops a last window that would start inside the padding:
``pooled = ceil((H + 2p - k) / s) + 1``, minus one if ``(pooled - 1) * s >= H + p``.
Windows are clipped to the image. MAX ignores padding; AVE sums the clipped window but divides
by the window clipped to ``H + p`` (padding cells count, cells past the padding do not).
STOCHASTIC at test time is ``sum(x^2) / sum(x)`` over the unpadded window (Caffe's GPU code;
its CPU build has no stochastic pooling).

Both computations are separable over rows and columns, so they take kh + kw vectorised passes.
"""
import numpy as np

from ..errors import UnsupportedError
from .base import LayerImpl, as_f32, register

FLT_MIN = float(np.finfo(np.float32).tiny)


def _pair(param, name, h_field, w_field, default):
    has = param.HasField
    if has(h_field) or has(w_field):
        if has(name):
            return None
        return (int(getattr(param, h_field)), int(getattr(param, w_field)))
    if has(name) or default is None:
        value = int(getattr(param, name))
        return (value, value)
    return (default, default)


def pooled_size(size, kernel, stride, pad, ceil_mode=True):
    """Caffe's pooled output length along one axis."""
    span = size + 2 * pad - kernel
    pooled = (-(-span // stride) if ceil_mode else span // stride) + 1
    if pad and (pooled - 1) * stride >= size + pad:
        pooled -= 1
    return pooled


@register
class Pooling(LayerImpl):
    type_name = "Pooling"

    def setup(self, spec):
        p = spec.pooling_param
        self.method = p.PoolMethod.Name(p.pool)
        self.global_pooling = bool(p.global_pooling)
        self.ceil_mode = p.round_mode == p.CEIL
        has = p.HasField
        if self.global_pooling:
            if has("kernel_size") or has("kernel_h") or has("kernel_w"):
                raise self.error("global_pooling takes no kernel size")
            self.kernel = None
        else:
            if not (has("kernel_size") or (has("kernel_h") and has("kernel_w"))):
                raise self.error("pooling needs kernel_size or kernel_h and kernel_w")
            self.kernel = _pair(p, "kernel_size", "kernel_h", "kernel_w", None)
            if self.kernel is None:
                raise self.error("give either kernel_size or kernel_h/kernel_w, not both")
        self.pad = _pair(p, "pad", "pad_h", "pad_w", 0)
        self.stride = _pair(p, "stride", "stride_h", "stride_w", 1)
        if self.pad is None or self.stride is None:
            raise self.error("give either pad/stride or their _h/_w forms, not both")
        if self.kernel is not None and min(self.kernel) <= 0:
            raise self.error("kernel size must be positive")
        if min(self.stride) <= 0:
            raise self.error("stride must be positive")
        if self.global_pooling and (self.pad != (0, 0) or self.stride != (1, 1)):
            raise self.error("global_pooling needs pad 0 and stride 1")
        if self.kernel is not None and (self.pad[0] >= self.kernel[0] or self.pad[1] >= self.kernel[1]):
            raise self.error(f"pad {list(self.pad)} must be smaller than the kernel {list(self.kernel)}")
        if self.method == "STOCHASTIC":
            self.onnx_exportable = False

    def _geometry(self, shape):
        """(kernel, output size) for a bottom of ``shape``."""
        if len(shape) != 4:
            raise self.error(f"needs a 4-D bottom (N, C, H, W), got shape {list(shape)}")
        kernel = tuple(shape[2:]) if self.global_pooling else self.kernel
        out = tuple(pooled_size(size, k, s, p, self.ceil_mode)
                    for size, k, s, p in zip(shape[2:], kernel, self.stride, self.pad))
        if min(out) <= 0:
            raise self.error(f"kernel {list(kernel)} does not fit the {list(shape[2:])} input")
        return kernel, out

    def output_shapes(self, bottom_shapes):
        shape = bottom_shapes[0]
        _, out = self._geometry(shape)
        return [(shape[0], shape[1], *out)]

    def macs(self, bottom_shapes, top_shapes):
        return 0

    def forward(self, bottoms, blobs):
        x = as_f32(bottoms[0])
        kernel, out = self._geometry(x.shape)
        if self.global_pooling:
            if self.method == "MAX":
                return [x.max(axis=(2, 3), keepdims=True)]
            if self.method == "AVE":
                return [x.mean(axis=(2, 3), keepdims=True, dtype=np.float32)]
        if self.method == "MAX":
            return [_max_pool(x, kernel, self.stride, self.pad, out)]
        if self.method == "AVE":
            return [_ave_pool(x, kernel, self.stride, self.pad, out)]
        return [_stochastic_test_pool(x, kernel, self.stride, out)]

    def export_onnx(self, graph, io):
        shape = io.bottom_shapes[0]
        kernel, out = self._geometry(shape)
        if self.global_pooling:
            op = {"MAX": "GlobalMaxPool", "AVE": "GlobalAveragePool"}[self.method]
            graph.node(op, io.bottoms, io.tops)
            return
        tail = [_tail_pad(size, k, s, p, o) for size, k, s, p, o in
                zip(shape[2:], kernel, self.stride, self.pad, out)]
        if self.method == "MAX":
            graph.node("MaxPool", io.bottoms, io.tops, kernel_shape=list(kernel),
                       strides=list(self.stride), pads=[*self.pad, *tail])
            return
        if self.method != "AVE":
            raise UnsupportedError(f"{self.method} pooling has no ONNX form", layer=self.name)
        # Zero-pad explicitly, average whole windows, then correct the divisor where Caffe's
        # clipped window is smaller than the kernel.
        pads = [0, 0, self.pad[0], self.pad[1], 0, 0, tail[0], tail[1]]
        padded = graph.node("Pad", [io.bottoms[0], graph.ints(pads, "pads")], mode="constant")[0]
        divisor = _ave_divisor(shape[2:], kernel, self.stride, self.pad, out)
        full = float(kernel[0] * kernel[1])
        if np.all(divisor == full):
            graph.node("AveragePool", [padded], io.tops, kernel_shape=list(kernel),
                       strides=list(self.stride))
            return
        average = graph.node("AveragePool", [padded], kernel_shape=list(kernel),
                             strides=list(self.stride))[0]
        correction = graph.constant((full / divisor).astype(np.float32)[None, None], "divisor")
        graph.node("Mul", [average, correction], io.tops)


def _tail_pad(size, kernel, stride, pad, out):
    """Padding after the data so that the last window fits: (out-1)*s + k covers it."""
    return max(0, (out - 1) * stride + kernel - pad - size)


def _padded(x, pad, tails, value):
    n, c, h, w = x.shape
    (ph, pw), (th, tw) = pad, tails
    if not (ph or pw or th or tw):
        return x
    padded = np.full((n, c, h + ph + th, w + pw + tw), value, dtype=x.dtype)
    padded[:, :, ph:ph + h, pw:pw + w] = x
    return padded


def _reduce_windows(x, kernel, stride, out, combine):
    """Combine (np.maximum or np.add) every window, first along W, then along H."""
    (kh, kw), (sh, sw), (oh, ow) = kernel, stride, out
    cols = x[:, :, :, 0:sw * (ow - 1) + 1:sw].copy()
    for j in range(1, kw):
        combine(cols, x[:, :, :, j:j + sw * (ow - 1) + 1:sw], out=cols)
    rows = cols[:, :, 0:sh * (oh - 1) + 1:sh].copy()
    for i in range(1, kh):
        combine(rows, cols[:, :, i:i + sh * (oh - 1) + 1:sh], out=rows)
    return rows


def _tails(shape, kernel, stride, pad, out):
    return tuple(_tail_pad(size, k, s, p, o) for size, k, s, p, o in zip(shape[2:], kernel, stride, pad, out))


def _max_pool(x, kernel, stride, pad, out):
    """MAX pooling of float or integer arrays (padding never wins: it is the dtype's minimum)."""
    low = -np.inf if np.issubdtype(x.dtype, np.floating) else np.iinfo(x.dtype).min
    padded = _padded(x, pad, _tails(x.shape, kernel, stride, pad, out), low)
    return _reduce_windows(padded, kernel, stride, out, np.maximum)


def max_pool_integers(layer_impl, mantissas):
    """A Pooling layer's MAX pooling applied to integer mantissas (the fixed-point backend)."""
    kernel, out = layer_impl._geometry(mantissas.shape)
    return _max_pool(np.asarray(mantissas, np.int64), kernel, layer_impl.stride, layer_impl.pad, out)


def ave_pool_sums(layer_impl, mantissas):
    """AVE pooling's window sums of integer mantissas (padding adds 0) and Caffe's divisor of
    each output cell (int64), for the fixed-point form (``formats``)."""
    x = np.asarray(mantissas, np.int64)
    if layer_impl.global_pooling:
        return x.sum(axis=(2, 3), keepdims=True), np.int64(x.shape[2] * x.shape[3])
    kernel, out = layer_impl._geometry(x.shape)
    stride, pad = layer_impl.stride, layer_impl.pad
    padded = _padded(x, pad, _tails(x.shape, kernel, stride, pad, out), 0)
    sums = _reduce_windows(padded, kernel, stride, out, np.add)
    return sums, _ave_divisor(x.shape[2:], kernel, stride, pad, out).astype(np.int64)


def _ave_divisor(size, kernel, stride, pad, out):
    """Caffe's AVE divisor per output cell: the window clipped to the padded extent."""
    lengths = []
    for n, k, s, p, o in zip(size, kernel, stride, pad, out):
        start = np.arange(o) * s - p
        lengths.append((np.minimum(start + k, n + p) - start).astype(np.float32))
    return np.outer(lengths[0], lengths[1])


def _ave_pool(x, kernel, stride, pad, out):
    padded = _padded(x, pad, _tails(x.shape, kernel, stride, pad, out), 0.0)
    sums = _reduce_windows(padded, kernel, stride, out, np.add)
    return sums / _ave_divisor(x.shape[2:], kernel, stride, pad, out)


def _stochastic_test_pool(x, kernel, stride, out):
    """Caffe's test-time stochastic pooling: activations weighted by themselves. The sum starts
    at FLT_MIN as in Caffe, so an all-zero window gives 0."""
    tails = _tails(x.shape, kernel, stride, (0, 0), out)
    padded = _padded(x, (0, 0), tails, 0.0)
    squares = _reduce_windows(padded * padded, kernel, stride, out, np.add)
    sums = _reduce_windows(padded, kernel, stride, out, np.add) + np.float32(FLT_MIN)
    return (squares / sums).astype(np.float32)
