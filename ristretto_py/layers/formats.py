"""Dynamic-fixed-point formats on stock Caffe layers: ristretto-py's extension of Ristretto's
``quantization_param`` to Pooling, Eltwise, Concat, Scale, Bias, BatchNorm, ReLU and PReLU, so
that a whole net runs in integers (DESIGN section 3; README "Formats for every layer").

The layer keeps its stock type, so Ristretto and Caffe still read the description (they ignore
the field on these types). With a ``quantization_param`` (DYNAMIC_FIXED_POINT, NEAREST) the
layer, in the TEST phase:

1. **aligns** every bottom to ``(bw_layer_in, fl_layer_in)``: a blob already in fixed point at
   another fractional length is shifted there with the NEAREST rule of the ``compat`` build
   (half to even, or half away from zero) and saturated to ``bw_layer_in`` bits; a float blob
   is trimmed (Ristretto's rule, which is the same thing). Unlike a Ristretto layer this is not
   in place: later readers of the blob see it as it was.
2. trims its **operands** to ``(bw_params, fl_params)``: Scale's scale and bias, Bias's bias,
   PReLU's slopes, ReLU's ``negative_slope``, Eltwise's SUM coefficients, and for BatchNorm the
   affine form it runs as, ``a = 1 / sqrt(var + eps)`` and ``b = -mean * a`` per channel.
3. computes exactly on the integers: products at ``fl_in + fl_params`` (``k * fl_in`` for a
   k-way PROD), sums at the larger of the two fractional lengths (left shifts only, exact),
   MAX/ReLU/Concat/MAX pooling unchanged at ``fl_in``;
4. moves the result to ``(bw_layer_out, fl_layer_out)`` with the NEAREST rule and saturates.
   AVE pooling divides instead: ``round(sum * 2^(fl_out - fl_in) / count)`` with the NEAREST
   tie rule, ``count`` being Caffe's window clipped to the padded extent, then saturates.

The float emulation (numpy runtime, float ONNX export) computes steps 3 and 4 in float32 on the
aligned values and trimmed operands, then trims the output: the same values wherever float32
holds the exact result (products and sums of a few dozen bits; AVE pooling up to a double
rounding of the mean that no test data has met). The integer form is ``integer_forward``
(the ``--backend fixed`` runtime).
"""
import numpy as np

from .. import fixed_point as fx
from .. import numerics
from ..precision import DYNAMIC_FIXED_POINT, LayerPrecision

FORMATTED_TYPES = ("Pooling", "Eltwise", "Concat", "Scale", "Bias", "BatchNorm", "ReLU", "PReLU")
# Ristretto's own layer types carry the field with Ristretto's meaning.
RISTRETTO_TYPES = ("ConvolutionRistretto", "DeconvolutionRistretto", "FcRistretto", "LRNRistretto")
# Their stock base types: a Ristretto description with its types switched back (its float
# twin) keeps the field there, and Caffe and Ristretto ignore it; so does ristretto-py.
RISTRETTO_BASES = ("Convolution", "Deconvolution", "InnerProduct", "LRN")


def parse_format(impl):
    """The LayerPrecision of a stock layer's ``quantization_param``, None without one; a
    NetError (one line, naming the layer) for a type or a precision that has no format here."""
    spec = impl.spec
    if (impl.type_name in RISTRETTO_TYPES + RISTRETTO_BASES
            or not spec.HasField("quantization_param")):
        return None
    if impl.type_name not in FORMATTED_TYPES:
        raise impl.error(f"quantization_param on a {impl.type_name} layer: ristretto-py gives "
                         f"formats to {', '.join(FORMATTED_TYPES)} and Ristretto's own types")
    try:
        precision = LayerPrecision.from_proto(spec.quantization_param)
    except KeyError as exc:
        raise impl.error(f"quantization_param has an unknown precision or rounding ({exc})")
    if precision.precision != DYNAMIC_FIXED_POINT or precision.rounding != numerics.NEAREST:
        raise impl.error(f"a {impl.type_name} layer's format must be DYNAMIC_FIXED_POINT with "
                         "NEAREST rounding")
    if precision.per_channel or precision.bias_format != "shared" or precision.bw_bias != 32:
        raise impl.error(f"bias_format, bw_bias and fl_params_channel apply to Ristretto's "
                         f"layers, not to a {impl.type_name} layer")
    if impl.type_name == "Pooling" and impl.method == "STOCHASTIC":
        raise impl.error("STOCHASTIC pooling has no fixed-point form")
    if impl.type_name == "BatchNorm" and not impl.global_stats:
        raise impl.error("a BatchNorm format needs the stored statistics (use_global_stats)")
    for name in ("bw_layer_in", "bw_layer_out", "bw_params"):
        if not 2 <= getattr(precision, name) <= 32:
            raise impl.error(f"{name} must be 2 to 32 bits, got {getattr(precision, name)}")
    return precision


# -- operands -------------------------------------------------------------------------------
def operands(impl, blobs):
    """The layer's float operands in its own layout (see the module docstring), untrimmed."""
    kind = impl.type_name
    if kind == "BatchNorm":
        mean, var = impl.statistics(blobs)
        scale = (np.float32(1) / np.sqrt(var + impl.eps, dtype=np.float32)).astype(np.float32)
        return [scale, (-mean * scale).astype(np.float32)]
    if kind == "ReLU":
        return [np.float32(impl.negative_slope)] if impl.negative_slope != 0 else []
    if kind == "Eltwise":
        coeff = impl.coeff
        return [np.asarray(coeff, np.float32)] if coeff and any(c != 1 for c in coeff) else []
    if kind in ("Scale", "Bias", "PReLU"):
        return [np.asarray(b, np.float32) for b in blobs]
    return []


def trimmed_operands(impl, blobs, compat):
    p = impl.layer_format
    return [numerics.trim_fixed_point(op, p.bw_params, p.fl_params, numerics.NEAREST, compat)
            for op in operands(impl, blobs)]


# -- the float emulation --------------------------------------------------------------------
def run_float(impl, bottoms, blobs, context):
    """Steps 1-4 in float32 (the numpy runtime)."""
    p = impl.layer_format
    aligned = [p.trim_input(b, context) for b in bottoms]
    ops = trimmed_operands(impl, blobs, context.compat)
    tops = float_forward(impl, aligned, ops)
    return [p.trim_output(t, context) for t in tops]


def float_forward(impl, bottoms, ops):
    """The layer's float operation on aligned bottoms and trimmed operands."""
    kind = impl.type_name
    if kind == "BatchNorm":
        x = np.asarray(bottoms[0], np.float32)
        shape = _channel_shape(x.ndim)
        return [(x * ops[0].reshape(shape) + ops[1].reshape(shape)).astype(np.float32)]
    if kind == "ReLU" and ops:
        x = np.asarray(bottoms[0], np.float32)
        return [np.where(x > 0, x, x * ops[0]).astype(np.float32)]
    if kind == "Eltwise" and ops:
        terms = [np.asarray(x, np.float32) * c for x, c in zip(bottoms, ops[0])]
        total = terms[0]
        for term in terms[1:]:
            total = total + term
        return [total.astype(np.float32)]
    blobs = ops if kind in ("Scale", "Bias", "PReLU") else []
    return impl.forward(list(bottoms), blobs)


def float_operation_blobs(impl, ops):
    """The blobs the layer's own ONNX export takes for trimmed operands (Scale, Bias, PReLU);
    None where the format exports through ``onnx_operation`` instead."""
    return ops if impl.type_name in ("Scale", "Bias", "PReLU", "Pooling", "Concat") else None


def onnx_operation(impl, graph, bottoms, ops, tops, bottom_shapes):
    """ONNX nodes of the float operation for the types whose formatted form differs from their
    stock export (BatchNorm as an affine, ReLU and Eltwise with trimmed constants); returns
    False for the others."""
    kind = impl.type_name
    if kind == "BatchNorm":
        shape = _channel_shape(len(bottom_shapes[0]))[1:]
        scaled = graph.node("Mul", [bottoms[0], graph.constant(ops[0].reshape(shape), "bn_scale")])[0]
        graph.node("Add", [scaled, graph.constant(ops[1].reshape(shape), "bn_shift")], tops)
        return True
    if kind == "ReLU":
        if ops:
            graph.node("LeakyRelu", bottoms, tops, alpha=float(ops[0]))
        else:
            graph.node("Relu", bottoms, tops)
        return True
    if kind == "Eltwise":
        op = {"PROD": "Mul", "MAX": "Max", "SUM": "Add"}[impl.operation]
        values = list(bottoms)
        if ops:
            values = [graph.node("Mul", [v, graph.scalar(float(c))])[0] for v, c in zip(values, ops[0])]
        result = values[0]
        for value in values[1:-1]:
            result = graph.node(op, [result, value])[0]
        graph.node(op, [result, values[-1]], tops)
        return True
    return False


def _channel_shape(ndim):
    return (1, -1) + (1,) * (ndim - 2) if ndim > 1 else (-1,)


# -- integers -------------------------------------------------------------------------------
def align(value, bit_width, fractional_length, compat):
    """Step 1 on a (mantissas, fl) pair, or on a float array (fl None): int64 mantissas."""
    array, fl = value
    if fl is None:
        return fx.to_mantissa(array, bit_width, fractional_length, compat)
    return fx.saturate(fx.shift(array, fl, fractional_length, compat), bit_width)


def integer_forward(impl, bottoms, blobs, compat):
    """Steps 1-4 on integers: ``bottoms`` are (mantissas, fl) pairs (fl None: a float array);
    returns the top's (mantissas, fl_layer_out) and, for the report, the aligned inputs."""
    p = impl.layer_format
    aligned = [align(b, p.bw_layer_in, p.fl_layer_in, compat) for b in bottoms]
    ops = [fx.to_mantissa(op, p.bw_params, p.fl_params, compat) for op in operands(impl, blobs)]
    if impl.type_name == "Pooling" and impl.method == "AVE":
        result = _ave_pool_integers(impl, aligned[0], p.fl_layer_out - p.fl_layer_in, compat)
        return [(fx.saturate(result, p.bw_layer_out), p.fl_layer_out)]
    m, fl = _KERNELS[impl.type_name](impl, aligned, p.fl_layer_in, ops, p.fl_params)
    results = m if isinstance(m, list) else [m]
    return [(fx.saturate(fx.shift(r, fl, p.fl_layer_out, compat), p.bw_layer_out), p.fl_layer_out)
            for r in results]


def _sum_aligned(a, fa, b, fb):
    """a + b for mantissas at fractional lengths fa and fb: at max(fa, fb), exactly."""
    common = max(fa, fb)
    return fx.shift(a, fa, common) + fx.shift(b, fb, common), common


def _relu(impl, xs, fl, ops, fl_p):
    x = xs[0]
    if not ops:
        return np.maximum(x, 0), fl
    return _leaky(x, fl, ops[0], fl_p)


def _leaky(x, fl, slope, fl_p):
    negative, fl_neg = x * slope, fl + fl_p
    common = max(fl, fl_neg)
    return np.where(x > 0, fx.shift(x, fl, common), fx.shift(negative, fl_neg, common)), common


def _prelu(impl, xs, fl, ops, fl_p):
    x = xs[0]
    slope = ops[0].reshape(()) if impl.channel_shared else \
        ops[0].reshape(_channel_shape(x.ndim))
    return _leaky(x, fl, slope, fl_p)


def _operand_along(impl, array, bottom_shapes):
    axis, shape = impl._operand_shape(bottom_shapes)
    from .normalization import _broadcast_shape
    return np.reshape(array, _broadcast_shape(len(bottom_shapes[0]), axis, shape))


def _scale(impl, xs, fl, ops, fl_p):
    x = xs[0]
    shapes = [b.shape for b in xs]
    if len(xs) > 1:                               # the scale is bottom 1 (at fl_in)
        product, fl_prod = x * _operand_along(impl, xs[1], shapes), 2 * fl
        bias = ops[0] if impl.bias_term else None
    else:
        product, fl_prod = x * _operand_along(impl, ops[0], shapes), fl + fl_p
        bias = ops[1] if impl.bias_term else None
    if bias is None:
        return product, fl_prod
    return _sum_aligned(product, fl_prod, _operand_along(impl, bias, shapes), fl_p)


def _bias(impl, xs, fl, ops, fl_p):
    shapes = [b.shape for b in xs]
    if len(xs) > 1:
        return xs[0] + _operand_along(impl, xs[1], shapes), fl
    return _sum_aligned(xs[0], fl, _operand_along(impl, ops[0], shapes), fl_p)


def _batch_norm(impl, xs, fl, ops, fl_p):
    shape = _channel_shape(xs[0].ndim)
    return _sum_aligned(xs[0] * ops[0].reshape(shape), fl + fl_p, ops[1].reshape(shape), fl_p)


def _eltwise(impl, xs, fl, ops, fl_p):
    if impl.operation == "PROD":
        result = xs[0]
        for x in xs[1:]:
            result = result * x
        return result, fl * len(xs)
    if impl.operation == "MAX":
        result = xs[0]
        for x in xs[1:]:
            result = np.maximum(result, x)
        return result, fl
    if ops:
        result = xs[0] * ops[0][0]
        for x, c in zip(xs[1:], ops[0][1:]):
            result = result + x * c
        return result, fl + fl_p
    result = xs[0]
    for x in xs[1:]:
        result = result + x
    return result, fl


def _concat(impl, xs, fl, ops, fl_p):
    from .base import normalize_axis
    return np.concatenate(xs, axis=normalize_axis(impl.axis_param, xs[0].ndim, impl.name)), fl


def _pooling(impl, xs, fl, ops, fl_p):
    from .pooling import max_pool_integers
    x = xs[0]
    if impl.global_pooling:
        return x.max(axis=(2, 3), keepdims=True), fl
    return max_pool_integers(impl, x), fl


def _ave_pool_integers(impl, x, shift_up, compat):
    """AVE pooling of mantissas: window sums, scaled by 2^shift_up, divided by Caffe's count
    with the NEAREST rule (step 4 of the module docstring)."""
    from .pooling import ave_pool_sums
    sums, counts = ave_pool_sums(impl, np.asarray(x, np.int64))
    numerator = fx.shift(sums, 0, max(shift_up, 0))
    denominator = np.asarray(counts, np.int64) << max(-shift_up, 0)
    return fx.divide(numerator, denominator, compat)


_KERNELS = {"ReLU": _relu, "PReLU": _prelu, "Scale": _scale, "Bias": _bias,
            "BatchNorm": _batch_norm, "Eltwise": _eltwise, "Concat": _concat, "Pooling": _pooling}
