"""A Ristretto layer's precision (its ``quantization_param``) as a Python value, and where each
rule of ``numerics`` applies to that layer's input, output and parameters (DESIGN section 3).

In the TEST phase a Ristretto layer trims its input, trims its weights and bias, runs the float
operation and trims its output. Power-of-two layers leave the bias alone; their activations are
dynamic fixed point in Ristretto's documented (GPU) semantics and not trimmed in its CPU build.
"""
import dataclasses

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
               "fl_params", "mant_bits", "exp_bits", "exp_min", "exp_max")


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

    @classmethod
    def from_proto(cls, message):
        values = {name: getattr(message, name) for name in _INT_FIELDS}
        return cls(_PRECISION_NAME[message.precision], _ROUNDING_NAME[message.rounding_scheme],
                   **values)

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

    def _trim_activation(self, x, bit_width, fractional_length, context):
        if self.precision == MINIFLOAT:
            return numerics.trim_minifloat(x, self.exp_bits, self.mant_bits, self.rounding,
                                           context.compat, context.rng)
        if not self.trims_activations(context.compat):
            return x
        return numerics.trim_fixed_point(x, bit_width, fractional_length, self.rounding,
                                         context.compat, context.rng)

    def trim_params(self, blobs, context, bias_term):
        """Trimmed copies of (weights, bias); the bias stays float in power-of-two mode."""
        blobs = list(blobs)
        count = 2 if bias_term and len(blobs) > 1 else 1
        for i in range(count):
            if self.precision == DYNAMIC_FIXED_POINT:
                blobs[i] = numerics.trim_fixed_point(blobs[i], self.bw_params, self.fl_params,
                                                     self.rounding, context.compat, context.rng)
            elif self.precision == MINIFLOAT:
                blobs[i] = numerics.trim_minifloat(blobs[i], self.exp_bits, self.mant_bits,
                                                   self.rounding, context.compat, context.rng)
            elif i == 0:
                blobs[i] = numerics.trim_power_of_two(blobs[i], self.exp_min, self.exp_max,
                                                      self.rounding, context.compat, context.rng)
        return blobs

    def param_bits(self):
        """Storage bits of one weight (and bias, except in power-of-two mode)."""
        if self.precision == DYNAMIC_FIXED_POINT:
            return self.bw_params
        if self.precision == MINIFLOAT:
            return 1 + self.exp_bits + self.mant_bits
        # sign + exponent index over [exp_min, exp_max]
        span = self.exp_max - self.exp_min + 1
        return 1 + max(1, (span - 1).bit_length())
