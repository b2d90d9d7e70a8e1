"""Which Caffe padding reproduces an ONNX convolution or pooling window layout exactly.

ONNX pads each side on its own (``pads``, ``auto_pad``), a ``Pad`` node may add zero cells before
the operation, and its pooling counts or skips padding in averages (``count_include_pad``) and
rounds with ``ceil_mode``. Caffe pads both sides by one ``pad``, sizes convolutions with floor and
pooling with ceil (or floor, ``round_mode``), and divides an average by the window clipped to
``H + pad``. Each function here takes one spatial axis and returns Caffe's settings for it, or a
string saying why no setting is exact.

In all of them ``size`` is the input length, ``begin``/``end`` the ONNX padding and
``zeros_before``/``zeros_after`` the cells a folded ``Pad`` node added (real zeros to ONNX).
"""
from ..layers.pooling import pooled_size


def same_padding(auto_pad, size, kernel, stride):
    """ONNX's (begin, end) padding for auto_pad SAME_UPPER / SAME_LOWER."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    small = total // 2
    return (small, total - small) if auto_pad == "SAME_UPPER" else (total - small, small)


def conv_axis(size, kernel, stride, begin, end, out, dilation=1):
    """(Caffe pad, zero taps to add before the kernel, zero taps to add after it) for a
    convolution axis (``kernel`` dilated), or why none gives ONNX's ``out`` outputs from the
    same window positions.

    Unequal padding (TensorFlow's ``SAME`` at stride 2 pads one cell more after) is exact in Caffe
    with a wider kernel: pad both sides by the larger amount and add zero taps on the side with
    less padding, so every window still starts its real taps where ONNX's window starts and
    the output count is ONNX's. It costs the extra taps' multiplications by zero."""
    caffe_out = (size + 2 * begin - kernel) // stride + 1
    if caffe_out == out:
        return begin, 0, 0
    difference = abs(end - begin)
    if difference % dilation == 0:
        pad, taps = max(begin, end), difference // dilation
        if (size + 2 * pad - kernel - difference) // stride + 1 == out:
            return pad, (taps if end > begin else 0), (taps if begin > end else 0)
    return (f"{begin} padding cells before and {end} after on a {size}-cell axis (kernel {kernel}, "
            f"stride {stride}) give {out} outputs; Caffe pads both sides by {begin} and gives "
            f"{caffe_out}, and no widened kernel is exact (dilation {dilation})")


def deconv_axis(size, kernel, stride, begin, end, output_padding, out):
    """Caffe's pad for a transposed convolution axis, or why none is exact: Caffe crops ``pad``
    cells from both ends of the full output and adds no ``output_padding``."""
    caffe_out = stride * (size - 1) + kernel - 2 * begin
    if caffe_out == out and end == begin + output_padding:
        return begin
    return (f"padding {begin} before and {end} after with output_padding {output_padding} gives "
            f"{out} outputs; Caffe's Deconvolution crops {begin} cells from both ends, giving "
            f"{caffe_out}")


def _overlap(start, stop, low, high):
    return max(0, min(stop, high) - max(start, low))


def pool_axis(size, kernel, stride, begin, end, out, average, count_include_pad,
              zeros_before=0, zeros_after=0, non_negative=False):
    """(Caffe pad, the round modes giving ``out`` windows, divisor correction) for a pooling
    axis, or why none is exact. Window ``o`` starts at ``o * stride - pad`` in both: Caffe's pad
    is everything ONNX puts before the input. The correction (None where the averages already
    agree) is, per window, Caffe's divisor over ONNX's: the factor that turns Caffe's average
    into ONNX's (ONNX divides by the cells it counts, ``count_include_pad`` or not)."""
    pad = begin + zeros_before
    if pad >= kernel:
        return f"{pad} padding cells before a {kernel}-cell window; Caffe needs pad < kernel"
    modes = {mode for mode in ("CEIL", "FLOOR") if pooled_size(size, kernel, stride, pad, mode == "CEIL") == out}
    if not modes:
        return (f"{out} windows of {kernel} cells (stride {stride}, padding {begin}+{zeros_before} "
                f"before, {end}+{zeros_after} after) on a {size}-cell axis: Caffe's window rule "
                f"gives {pooled_size(size, kernel, stride, pad, True)} (ceil) or "
                f"{pooled_size(size, kernel, stride, pad, False)} (floor)")
    starts = [o * stride - pad for o in range(out)]
    if not average:
        if (zeros_before or zeros_after) and not non_negative:
            return ("the zeros a Pad node adds change a maximum over negative values; Caffe's "
                    "max pooling ignores padding")
        if any(_overlap(s, s + kernel, 0, size) == 0 for s in starts):
            return "a window lies wholly in the padding"
        return pad, modes, None
    low, high = -zeros_before, size + zeros_after          # the cells ONNX averages over
    if count_include_pad:
        low, high = low - begin, high + end
    onnx_divisors = [_overlap(s, s + kernel, low, high) for s in starts]
    if 0 in onnx_divisors:
        return "a window lies wholly in the padding"
    caffe_divisors = [min(s + kernel, size + pad) - s for s in starts]
    if onnx_divisors == caffe_divisors:
        return pad, modes, None
    return pad, modes, [c / o for c, o in zip(caffe_divisors, onnx_divisors)]


def global_axis(size, kernel, begin, end, out, count_include_pad):
    """For an axis whose one ONNX window covers the whole input (kernel past the input, the rest
    padding): Caffe's global-pooling divisor over ONNX's; None for any other axis."""
    if out != 1 or kernel - begin < size:
        return None
    onnx_divisor = min(kernel - begin, size + end) + begin if count_include_pad else size
    return size / onnx_divisor
