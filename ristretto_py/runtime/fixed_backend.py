"""The fixed-point kernel backend (``--backend fixed``): a dynamic-fixed-point net run on integers,
as an accelerator runs it (DESIGN section 3).

Blobs travel as int64 mantissas with a fractional length. A ConvolutionRistretto/FcRistretto
layer turns its input and parameters into mantissas (Ristretto's trimming), multiplies exactly,
sums in an accumulator of ``acc_bits`` (wrap or saturate; 64 = unbounded), adds the bias aligned
by a shift, and shifts the sum to the output format with the layer's rounding and saturation.
With per-channel weight lengths each output channel's accumulator has its own scale
(fl_layer_in + that channel's length) and its own shift to the output format; an ACCUMULATOR
bias is already at the accumulator's scale and is added without a shift.
A stock layer with a format of its own (``layers.formats``: Pooling MAX and AVE, Eltwise,
Concat, Scale, Bias, BatchNorm, ReLU, PReLU) runs that format's integer form. Without a format,
MAX pooling, ReLU, Eltwise and Concat still work on mantissas (aligned to the largest
fractional length, unbounded); any other layer (Softmax, Accuracy, a layer left in float) runs
in float on the values. ``how`` records, per layer, which it was ("integer" or "float"). As in both of
Ristretto's builds, a Ristretto layer's input is trimmed in place: later readers of the blob get
its mantissas in the layer's input format (no array is written; the blob is rebound).

The result equals the float64 emulation of the Ristretto net wherever that emulation is exact.
For every Ristretto layer the backend also runs Ristretto's own float32 emulation of the layer on
the same input and counts the values where float32 accumulation gives a different result
(``report``), and counts accumulator overflows.
"""
import dataclasses

import numpy as np

from .. import fixed_point as fx
from ..errors import NetError, UnsupportedError
from ..layers.base import RunContext, normalize_axis
from ..layers import formats
from ..layers.conv import im2col
from ..layers.pooling import max_pool_integers
from ..precision import DYNAMIC_FIXED_POINT
from .numpy_backend import feed_inputs, shares_data
from .threads import one_blas_thread

INTEGER_TYPES = ("ConvolutionRistretto", "FcRistretto")
EXACT_FLOAT64 = 2.0 ** 53


@dataclasses.dataclass
class LayerReport:
    values: int = 0
    float32_differs: int = 0
    overflows: int = 0


INTEGER, FLOAT = "integer", "float"


class FixedRuntime:
    """Same interface as the other runtimes; ``report`` holds per-layer counts of the last run."""

    name = "fixed"

    def __init__(self, net, compat="gpu", seed=0, acc_bits=64, overflow="wrap"):
        if not net.has_weights:
            raise NetError("the net has layers without weights: load a caffemodel", path=net.source)
        if not 8 <= acc_bits <= 64:
            raise ValueError("accumulator width must be 8 to 64 bits")
        for layer, impl in zip(net.layers, net.impls):
            if layer.type in INTEGER_TYPES:
                p = impl.precision
                if impl.weight_quantizer is not None:
                    raise UnsupportedError("the fixed-point backend takes the weights in the "
                                           "layer's DFP format, not a weight_quantization_param "
                                           "quantizer (run it with the numpy backend)",
                                           path=net.source, layer=layer.name)
                if p.precision != DYNAMIC_FIXED_POINT or p.rounding != "nearest":
                    raise UnsupportedError("the fixed-point backend runs DYNAMIC_FIXED_POINT layers "
                                           "with NEAREST rounding", path=net.source, layer=layer.name)
                if p.bw_layer_in + p.bw_params > 62:
                    raise UnsupportedError(f"{p.bw_layer_in}-bit inputs times {p.bw_params}-bit "
                                           "weights do not fit 64-bit integer products",
                                           path=net.source, layer=layer.name)
        self.net, self.compat, self.acc_bits, self.overflow = net, compat, acc_bits, overflow
        self.context = RunContext(compat, np.random.default_rng(seed))
        self.report = {}
        self.how = {}            # layer name -> "integer" or "float", of the last run

    def describe_how(self):
        """One line saying which layers of the last run ran in integers and which in float."""
        groups = {INTEGER: [], FLOAT: []}
        for name, how in self.how.items():
            groups[how].append(name)
        floats = ", ".join(groups[FLOAT]) or "none"
        return (f"fixed backend: {len(groups[INTEGER])} layers in integers, "
                f"{len(groups[FLOAT])} in float ({floats})")

    def forward(self, inputs, observer=None):
        with one_blas_thread():      # the same bytes on any core count (runtime.threads)
            return self._forward(inputs, observer)

    def _forward(self, inputs, observer):
        net = self.net
        values = {name: (array, None) for name, array in feed_inputs(net, inputs).items()}
        self.report, self.how = {}, {}
        for layer, impl in zip(net.layers, net.impls):
            if impl.is_source:
                continue
            bottoms = [values[b] for b in layer.bottoms]
            given = list(bottoms)          # a Ristretto layer puts its trimmed inputs here
            tops = self._run(layer, impl, given)
            self.how[layer.name] = INTEGER if all(fl is not None for _, fl in tops) else FLOAT
            _rebind(values, bottoms, given)
            for top, value in zip(layer.tops, tops):
                values[top] = value
            if observer is not None:
                observer(layer, [_as_float(b) for b in bottoms], [_as_float(t) for t in tops])
        return {name: _as_float(value) for name, value in values.items()}

    # -- one layer ------------------------------------------------------------------------------
    def _run(self, layer, impl, bottoms):
        fixed = all(fl is not None for _, fl in bottoms)
        if layer.type in INTEGER_TYPES:
            top, bottoms[0] = self._ristretto(layer, impl, bottoms[0])
            return [top]
        if impl.layer_format is not None:
            return formats.integer_forward(impl, bottoms, layer.blobs, self.compat)
        if fixed and layer.type == "ReLU" and impl.negative_slope == 0:
            m, fl = bottoms[0]
            return [(np.maximum(m, 0), fl)]
        if fixed and layer.type == "Pooling" and impl.method == "MAX" and not impl.global_pooling:
            m, fl = bottoms[0]
            return [(max_pool_integers(impl, m), fl)]
        if fixed and layer.type in ("Concat", "Eltwise", "Split"):
            return self._aligned(layer, impl, bottoms)
        floats = [_as_float(b) for b in bottoms]
        given = list(floats)
        tops = impl.run(given, layer.blobs, self.context)
        for i, (before, after) in enumerate(zip(floats, given)):
            if after is not before:                   # trimmed in place (a Ristretto layer)
                bottoms[i] = (after, None)
        return [(np.asarray(t, np.float32), None) for t in tops]

    def _aligned(self, layer, impl, bottoms):
        if layer.type == "Split":
            return [bottoms[0]] * len(layer.tops)
        if layer.type == "Eltwise" and impl.operation == "PROD":
            m = bottoms[0][0]
            for other, _ in bottoms[1:]:
                m = m * other
            return [(m, sum(fl for _, fl in bottoms))]
        if layer.type == "Eltwise" and any(c != 1 for c in impl.coeff):      # scaled sums: float
            return [(impl.forward([_as_float(b) for b in bottoms], [])[0], None)]
        fl = max(f for _, f in bottoms)
        parts = [fx.shift(m, f, fl) for m, f in bottoms]
        if layer.type == "Concat":
            axis = normalize_axis(impl.axis_param, parts[0].ndim, layer.name)
            return [(np.concatenate(parts, axis=axis), fl)]
        combine = np.maximum if impl.operation == "MAX" else np.add
        result = parts[0]
        for part in parts[1:]:
            result = combine(result, part)
        return [(result, fl)]

    def _ristretto(self, layer, impl, bottom):
        compat, p = self.compat, impl.precision
        x, fl = bottom
        if fl is None:
            m_in = fx.to_mantissa(x, p.bw_layer_in, p.fl_layer_in, compat)
        else:
            m_in = fx.saturate(fx.shift(x, fl, p.fl_layer_in, compat), p.bw_layer_in)
        weights = layer.blobs[0]
        m_w = fx.to_mantissa(weights, p.bw_params,
                             p.weight_fractional_length(np.ndim(weights), impl.channel_axis), compat)
        acc, exact = self._products(layer, impl, m_in, m_w)
        # Fractional lengths per output channel, shaped along the output's channel axis (axis 1
        # of a convolution's output, the last axis of an inner product's).
        axis = 1 if layer.type == "ConvolutionRistretto" else acc.ndim - 1
        along = _along_axis(axis, acc.ndim)
        fl_acc = p.fl_layer_in + along(p.weight_fractional_length())
        common = fl_acc
        if impl.bias_term:
            fl_bias = along(p.bias_fractional_length())
            m_b = fx.to_mantissa(np.ravel(layer.blobs[1]), p.bias_bits(),
                                 p.bias_fractional_length(), compat)
            common = np.maximum(fl_acc, fl_bias)
            bias = fx.shift(along(m_b), fl_bias, common, compat)
            acc, exact = fx.shift(acc, fl_acc, common, compat), fx.shift(exact, fl_acc, common, compat)
            acc, exact = acc + bias, exact + bias
            if self.acc_bits < 64:
                acc = (fx.wrap(acc, self.acc_bits) if self.overflow == "wrap"
                       else fx.saturate(acc, self.acc_bits))
        overflows = int(np.count_nonzero(acc != exact))   # outputs the accumulator changed
        m_out = fx.saturate(fx.shift(acc, common, p.fl_layer_out, compat), p.bw_layer_out)
        # Ristretto's float32 emulation of the same layer on the same input, for the report.
        value_in = fx.to_float(m_in, p.fl_layer_in)
        reference = impl.run([value_in], layer.blobs, RunContext(compat, None))[0]
        ours = fx.to_float(m_out, p.fl_layer_out)
        self.report[layer.name] = LayerReport(int(ours.size), int(np.count_nonzero(ours != reference)),
                                              overflows)
        return (m_out, p.fl_layer_out), (m_in, p.fl_layer_in)

    def _products(self, layer, impl, m_in, m_w):
        """Sums of products per output (int64) through the accumulator, and the exact sums."""
        if layer.type == "FcRistretto":
            axis = impl._axis(m_in.shape)
            rows = m_in.reshape(int(np.prod(m_in.shape[:axis])), -1)
            weights = m_w if impl.transpose else m_w.T            # (K, out)
            sums = _exact_matmul(rows, weights)
            out_shape = m_in.shape[:axis] + (impl.num_output,)

            def bound():
                return _exact_matmul(np.abs(rows), np.abs(weights))

            def terms(flat_index):
                i, j = np.unravel_index(flat_index, sums.shape)
                return rows[i] * weights[:, j].T
        else:
            n, g = m_in.shape[0], impl.group
            o, cg, kh, kw = m_w.shape
            cols = im2col(m_in, (kh, kw), impl.stride, impl.pad, impl.dilation)
            ho, wo = cols.shape[-2:]
            cols = cols.reshape(n, g, cg * kh * kw, ho * wo)
            matrix = m_w.reshape(g, o // g, cg * kh * kw)
            sums = np.stack([_exact_matmul(matrix[i], cols[:, i]) for i in range(g)], axis=1)
            out_shape = (n, o, ho, wo)

            def bound():
                return np.stack([_exact_matmul(np.abs(matrix[i]), np.abs(cols[:, i])) for i in range(g)], axis=1)

            def terms(flat_index):
                b, gi, oi, pi = np.unravel_index(flat_index, sums.shape)
                return cols[b, gi, :, pi] * matrix[gi, oi]
        flat = sums.reshape(-1)
        exact = flat.reshape(out_shape)
        if self.acc_bits >= 64:
            return exact, exact
        if self.overflow == "wrap":                   # order-free: wrap the exact sum once
            return fx.wrap(flat, self.acc_bits).reshape(out_shape), exact
        # Saturation depends on the order of the additions; partial sums can only leave the
        # range where the sum of |terms| exceeds it, so only those outputs are summed in order.
        high = (1 << (self.acc_bits - 1)) - 1
        magnitude = bound().reshape(-1)
        risky = np.flatnonzero(magnitude > high)
        result = flat.copy()
        for start in range(0, risky.size, 4096):
            chunk = risky[start:start + 4096]
            values, _ = fx.accumulate(terms(chunk), self.acc_bits, "saturate", axis=-1)
            result[chunk] = values
        return result.reshape(out_shape), exact


def _along_axis(axis, ndim):
    """A function that shapes a per-channel vector (or leaves a scalar) to broadcast along
    ``axis`` of an ``ndim``-D array."""
    def shape(values):
        if np.ndim(values) == 0:
            return values
        target = [1] * ndim
        target[axis] = -1
        return np.reshape(values, target)
    return shape


def _exact_matmul(a, b):
    """Integer matrix product: float64 BLAS where every partial sum stays below 2^53 (exact),
    else int64."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    bound = float(np.abs(a).max(initial=0)) * float(np.abs(b).sum(axis=-2).max(initial=0))
    if bound < EXACT_FLOAT64:
        return np.rint(np.matmul(a.astype(np.float64), b.astype(np.float64))).astype(np.int64)
    return np.matmul(a, b)


def _rebind(values, before, after):
    """Rebind every blob that held a replaced (array, fl) value, or a reshaped view of its
    array in the same format, to the replacement (see ``numpy_backend.rebind_trimmed``)."""
    for old, new in zip(before, after):
        if new is old:
            continue
        for name, value in list(values.items()):
            if value is old:
                values[name] = new
            elif value[1] == old[1] and shares_data(value[0], old[0]):
                values[name] = (np.reshape(new[0], value[0].shape), new[1])


def _as_float(value):
    array, fl = value
    return fx.to_float(array, fl) if fl is not None else np.asarray(array, np.float32)
