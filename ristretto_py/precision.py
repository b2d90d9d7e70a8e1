"""A Ristretto layer's precision (its ``quantization_param``) as a Python value, and where each
rule of ``numerics`` applies to that layer's input, output and parameters (DESIGN section 3).

In the TEST phase a Ristretto layer trims its input, trims its weights and bias, runs the float
operation and trims its output. Power-of-two layers leave the bias alone; their activations are
dynamic fixed point in Ristretto's documented (GPU) semantics and not trimmed in its CPU build.

Two ristretto-py extensions of dynamic fixed point (``quantization_param`` fields 50-52, which
Ristretto does not read; never written unless used):
* ``bias_format: ACCUMULATOR``: the bias is a ``bw_bias``-bit value (default 32) at the scale of
  input times weight, fractional length ``fl_layer_in + fl_params`` (per output channel with
  per-channel weights), as integer accelerators and ONNX QDQ keep it. ``SHARED`` (default) is
  Ristretto's rule: the bias is trimmed like the weights, with ``bw_params``/``fl_params``.
* ``fl_params_channel``: one weight fractional length per output channel, replacing
  ``fl_params`` for the weights (``bw_params`` stays the width). The output channels lie on axis
  0 of Convolution and InnerProduct weights (axis 1 with ``transpose``); the caller names it.
"""
import dataclasses

import numpy as np

from . import numerics
from .protos import caffe_pb2

Q = caffe_pb2.QuantizationParameter
DYNAMIC_FIXED_POINT, MINIFLOAT, POWER_OF_2 = ("dynamic_fixed_point", "minifloat",
                                              "integer_power_of_2_weights")
_PRECISION_ENUM = {DYNAMIC_FIXED_POINT: Q.DYNAMIC_FIXED_POINT, MINIFLOAT: Q.MINIFLOAT,
                   POWER_OF_2: Q.INTEGER_POWER_OF_2_WEIGHTS}
_PRECISION_NAME = {v: k for k, v in _PRECISION_ENUM.items()}
_ROUNDING_ENUM = {numerics.NEAREST: Q.NEAREST, numerics.STOCHASTIC: Q.STOCHASTIC}
_ROUNDING_NAME = {v: k for k, v in _ROUNDING_ENUM.items()}
_INT_FIELDS = ("bw_layer_in", "bw_layer_out", "bw_params", "fl_layer_in", "fl_layer_out",
               "fl_params", "mant_bits", "exp_bits", "exp_min", "exp_max", "bw_bias")
SHARED, ACCUMULATOR = "shared", "accumulator"
_BIAS_FORMAT_ENUM = {SHARED: Q.SHARED, ACCUMULATOR: Q.ACCUMULATOR}
_BIAS_FORMAT_NAME = {v: k for k, v in _BIAS_FORMAT_ENUM.items()}
SHIFT_BITS = 8          # storage of one per-channel fractional length (a shift) in a cost model
BIAS_BITS_RANGE = (2, 62)          # the fixed backend holds bias mantissas in int64
FLOAT_BITS = 32


def output_channel_axis(spec):
    """The output-channel axis of a layer's weight blob (``spec``: its LayerParameter): 0 for
    Convolution and InnerProduct (and their Ristretto types), 1 for a transposed InnerProduct,
    None for Deconvolution, whose (C_in, C_out/group, kh, kw) weights spread the output channels
    over the group blocks of axis 0 and over axis 1."""
    if "Deconvolution" in spec.type:
        return None
    if spec.type in ("InnerProduct", "FcRistretto"):
        return 1 if spec.inner_product_param.transpose else 0
    return 0


@dataclasses.dataclass(frozen=True)
class LayerPrecision:
    """One layer's ``quantization_param``; field names and defaults are Ristretto's."""
    precision: str = DYNAMIC_FIXED_POINT
    rounding: str = numerics.NEAREST
    bw_layer_in: int = 32
    bw_layer_out: int = 32
    bw_params: int = 32
    fl_layer_in: int = 16
    fl_layer_out: int = 16
    fl_params: int = 16
    mant_bits: int = 23
    exp_bits: int = 8
    exp_min: int = -8
    exp_max: int = -1
    bias_format: str = SHARED           # ristretto-py extension (see the module docstring)
    bw_bias: int = 32                   # ristretto-py extension: the bias width in ACCUMULATOR
    fl_params_channel: tuple = ()       # ristretto-py extension: per-output-channel weight fl

    @classmethod
    def from_proto(cls, message):
        values = {name: getattr(message, name) for name in _INT_FIELDS}
        return cls(_PRECISION_NAME[message.precision], _ROUNDING_NAME[message.rounding_scheme],
                   bias_format=_BIAS_FORMAT_NAME[message.bias_format],
                   fl_params_channel=tuple(int(v) for v in message.fl_params_channel), **values)

    def to_proto(self, fields=None):
        """A QuantizationParameter holding ``fields`` (names of this class; by default every
        field that differs from Ristretto's default). Ristretto's quantize writes only the
        fields of the precision and net part it edits, so the caller names them."""
        if fields is None:
            defaults = LayerPrecision()
            fields = [f.name for f in dataclasses.fields(self)
                      if getattr(self, f.name) != getattr(defaults, f.name)]
        message = Q()
        for name in fields:
            if name == "precision":
                message.precision = _PRECISION_ENUM[self.precision]
            elif name == "rounding":
                message.rounding_scheme = _ROUNDING_ENUM[self.rounding]
            elif name == "bias_format":
                message.bias_format = _BIAS_FORMAT_ENUM[self.bias_format]
            elif name == "fl_params_channel":
                message.fl_params_channel.extend(self.fl_params_channel)
            else:
                setattr(message, name, getattr(self, name))
        return message

    # -- where the rules apply ------------------------------------------------------------
    def trims_activations(self, compat):
        return self.precision != POWER_OF_2 or compat == "gpu"

    def trim_input(self, x, context):
        return self._trim_activation(x, self.bw_layer_in, self.fl_layer_in, context)

    def trim_output(self, x, context):
        return self._trim_activation(x, self.bw_layer_out, self.fl_layer_out, context)

    def activation_bounds(self, signal, compat):
        """(low, high): the range the layer's ``signal`` ("input" or "output") saturates to,
        or None where that signal is not trimmed (power-of-two weights with the CPU build)."""
        if self.precision == MINIFLOAT:
            largest = numerics.minifloat_range(self.exp_bits, self.mant_bits)[1]
            return -largest, largest
        if not self.trims_activations(compat):
            return None
        if signal not in ("input", "output"):
            raise ValueError(f"signal must be 'input' or 'output', not {signal!r}")
        if signal == "input":
            return numerics.fixed_point_bounds(self.bw_layer_in, self.fl_layer_in)
        return numerics.fixed_point_bounds(self.bw_layer_out, self.fl_layer_out)

    def _trim_activation(self, x, bit_width, fractional_length, context):
        if self.precision == MINIFLOAT:
            return numerics.trim_minifloat(x, self.exp_bits, self.mant_bits, self.rounding,
                                           context.compat, context.rng)
        if not self.trims_activations(context.compat):
            return x
        return numerics.trim_fixed_point(x, bit_width, fractional_length, self.rounding,
                                         context.compat, context.rng)

    # -- the ristretto-py extensions: per-channel weights, a bias format of its own ----------
    @property
    def per_channel(self):
        return bool(self.fl_params_channel)

    def check_extensions(self, output_channels):
        """Raise ValueError (one line) when the extension fields do not fit this precision or a
        layer of ``output_channels`` outputs; the layer turns it into its NetError."""
        used = [name for name, default in (("bias_format", SHARED), ("bw_bias", 32),
                                           ("fl_params_channel", ()))
                if getattr(self, name) != default]
        if used and self.precision != DYNAMIC_FIXED_POINT:
            raise ValueError(f"{', '.join(used)} (ristretto-py extensions) apply only to "
                             f"DYNAMIC_FIXED_POINT, not {self.precision.upper()}")
        if self.bw_bias != 32 and self.bias_format != ACCUMULATOR:
            raise ValueError("bw_bias applies only with bias_format: ACCUMULATOR")
        low, high = BIAS_BITS_RANGE
        if not low <= self.bw_bias <= high:
            raise ValueError(f"bw_bias must be {low} to {high} bits, got {self.bw_bias}")
        if self.per_channel and len(self.fl_params_channel) != output_channels:
            raise ValueError(f"fl_params_channel has {len(self.fl_params_channel)} values for "
                             f"{output_channels} output channels")

    def weight_fractional_length(self, ndim=1, channel_axis=0):
        """The weights' fractional length: ``fl_params``, or with per-channel lengths an int64
        array shaped to broadcast against an ``ndim``-D weight blob along ``channel_axis``."""
        if not self.per_channel:
            return self.fl_params
        if channel_axis is None:
            raise ValueError("per-channel weight lengths need the weights' output-channel axis")
        shape = [1] * ndim
        shape[channel_axis] = -1
        return np.asarray(self.fl_params_channel, np.int64).reshape(shape)

    def bias_fractional_length(self):
        """The bias's fractional length: ``fl_params`` (SHARED), or ``fl_layer_in`` plus the
        weights' length, an int64 array of one value per output channel when per channel
        (ACCUMULATOR)."""
        if self.bias_format == SHARED:
            return self.fl_params
        return self.fl_layer_in + self.weight_fractional_length()

    def bias_bits(self):
        return self.bw_bias if self.bias_format == ACCUMULATOR else self.bw_params

    def trim_params(self, blobs, context, bias_term, channel_axis=0):
        """Trimmed copies of (weights, bias); the bias stays float in power-of-two mode.
        ``channel_axis``: the weights' output-channel axis, used by per-channel lengths."""
        blobs = list(blobs)
        count = 2 if bias_term and len(blobs) > 1 else 1
        for i in range(count):
            if self.precision == DYNAMIC_FIXED_POINT:
                blobs[i] = self._trim_fixed_param(i, blobs[i], channel_axis, context)
            elif self.precision == MINIFLOAT:
                blobs[i] = numerics.trim_minifloat(blobs[i], self.exp_bits, self.mant_bits,
                                                   self.rounding, context.compat, context.rng)
            elif i == 0:
                blobs[i] = numerics.trim_power_of_two(blobs[i], self.exp_min, self.exp_max,
                                                      self.rounding, context.compat, context.rng)
        return blobs

    def _trim_fixed_param(self, index, blob, channel_axis, context):
        if index == 0:
            bits = self.bw_params
            length = self.weight_fractional_length(np.ndim(blob), channel_axis)
        else:
            bits, length = self.bias_bits(), self.bias_fractional_length()
            if np.ndim(length):                 # one per output channel, in the blob's shape
                length = np.reshape(length, np.shape(blob))
        return numerics.trim_fixed_point(blob, bits, length, self.rounding, context.compat,
                                         context.rng)

    def param_bits(self):
        """Storage bits of one weight (the bias's: ``storage_bits``)."""
        if self.precision == DYNAMIC_FIXED_POINT:
            return self.bw_params
        if self.precision == MINIFLOAT:
            return 1 + self.exp_bits + self.mant_bits
        # sign + exponent index over [exp_min, exp_max]
        span = self.exp_max - self.exp_min + 1
        return 1 + max(1, (span - 1).bit_length())

    def storage_bits(self):
        """(bits of one weight, bits of one bias value): the bias takes ``bw_bias`` in the
        ACCUMULATOR format and stays float32 for power-of-two weights."""
        if self.precision == POWER_OF_2:
            return self.param_bits(), FLOAT_BITS
        return self.param_bits(), (self.bias_bits() if self.precision == DYNAMIC_FIXED_POINT
                                   else self.param_bits())

    def shift_bits(self):
        """Bits the per-channel fractional lengths take: ``SHIFT_BITS`` per output channel."""
        return SHIFT_BITS * len(self.fl_params_channel)
