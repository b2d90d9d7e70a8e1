"""Training-time weight quantizers (ristretto-py's ``weight_quantization_param``): what a layer
computes with instead of its stored full-precision weights. The caffemodel keeps the shadow
weights; the numpy runtime, the ONNX export and the torch engine all call ``quantize`` on them,
so a net trained with a quantizer runs in TEST exactly as it trained. The rounding rules are in
``numerics``; the message's comment in ``caffe.proto`` is the reference for each method.
"""
import dataclasses
import math

import numpy as np

from . import numerics
from .protos import caffe_pb2

_P = caffe_pb2.WeightQuantizationParameter
METHODS = ("BINARY", "TERNARY", "DOREFA", "HWCE")
SCALES = ("NONE", "MEAN_ABS", "FIXED")


@dataclasses.dataclass(frozen=True)
class WeightQuantizer:
    method: str
    bits: int = 2
    stochastic: bool = False
    scale_mode: str = "NONE"
    scale_value: float = 1.0
    threshold: float = 0.7
    msb: int = 0

    @classmethod
    def from_proto(cls, p):
        """From a WeightQuantizationParameter; ValueError names the wrong field."""
        method, mode = _P.Method.Name(p.method), _P.Scale.Name(p.scale)
        if method == "DOREFA" and not 1 <= p.bits <= 16:
            raise ValueError(f"DOREFA bits must be 1 to 16, not {p.bits}")
        if method == "HWCE" and p.bits not in (4, 8, 16):
            raise ValueError(f"HWCE bits must be 4, 8 or 16, not {p.bits}")
        if method == "HWCE" and not p.HasField("msb"):
            raise ValueError("HWCE needs msb")
        if method == "TERNARY" and not 0 < p.threshold < 10:
            raise ValueError(f"TERNARY threshold must be in (0, 10), not {p.threshold}")
        if p.stochastic and method != "BINARY":
            raise ValueError("stochastic applies to BINARY only")
        if mode == "FIXED" and not (math.isfinite(p.scale_value) and p.scale_value > 0):
            raise ValueError(f"scale_value must be positive and finite, not {p.scale_value}")
        if mode != "NONE" and method in ("TERNARY", "HWCE"):
            raise ValueError(f"{method} has its own scale: leave scale NONE")
        return cls(method, int(p.bits), bool(p.stochastic), mode, float(p.scale_value),
                   float(p.threshold), int(p.msb))

    def to_proto(self):
        p = _P(method=_P.Method.Value(self.method))
        if self.method in ("DOREFA", "HWCE"):
            p.bits = self.bits
        if self.stochastic:
            p.stochastic = True
        if self.scale_mode != "NONE":
            p.scale = _P.Scale.Value(self.scale_mode)
        if self.scale_mode == "FIXED":
            p.scale_value = self.scale_value
        if self.method == "TERNARY" and self.threshold != 0.7:
            p.threshold = self.threshold
        if self.method == "HWCE":
            p.msb = self.msb
        return p

    @property
    def bits_per_weight(self):
        """Bits one weight takes when packed: 1 binary, 2 ternary, k DoReFa/HWCE."""
        return {"BINARY": 1, "TERNARY": 2}.get(self.method, self.bits)

    @property
    def constant_bits(self):
        """Bits of the per-layer constants a decoder needs (a float32 scale, an int8 MSB)."""
        if self.method == "TERNARY" or self.scale_mode != "NONE":
            return 32
        return 8 if self.method == "HWCE" else 0

    def describe(self):
        if self.method == "BINARY":
            name = ("stochastic " if self.stochastic else "") + "binary"
        elif self.method == "TERNARY":
            name = f"ternary (t = {self.threshold:g} mean|w|)"
        elif self.method == "DOREFA":
            name = f"DoReFa {self.bits}-bit"
        else:
            name = f"HWCE {self.bits}-bit msb {self.msb}"
        if self.scale_mode == "MEAN_ABS":
            name += " x mean|w|"
        elif self.scale_mode == "FIXED":
            name += f" x {self.scale_value:.4g}"
        return name

    def scale(self, w):
        if self.scale_mode == "MEAN_ABS":
            return float(np.abs(np.asarray(w, np.float64)).mean()) if np.size(w) else 0.0
        return self.scale_value if self.scale_mode == "FIXED" else 1.0

    def quantize(self, w, rng=None):
        """The weights the layer computes with. ``rng`` given (TRAIN): a stochastic BINARY
        quantizer draws from it; without it (TEST, every runtime) it takes the sign."""
        w = np.asarray(w, np.float32)
        if self.method == "BINARY":
            s = self.scale(w)
            if self.stochastic and rng is not None and s > 0:
                return numerics.stochastic_binarize(w, s, rng)
            return numerics.binarize(w, s)
        if self.method == "TERNARY":
            return numerics.ternarize(w, self.threshold)
        if self.method == "HWCE":
            return numerics.quantclip(w, self.msb, self.bits)
        q = numerics.dorefa_weights(w, self.bits)
        s = self.scale(w)
        return q if s == 1.0 else (np.float64(s) * q).astype(np.float32)

    def bounds(self):
        """The range outside which the straight-through gradient is zero, or None: BINARY
        cancels it where |w| > 1 (BinaryConnect/BNN), HWCE where quantclip clips."""
        if self.method == "BINARY":
            return (-1.0, 1.0)
        if self.method == "HWCE":
            step = 2.0 ** (self.msb + 1 - self.bits)
            return (-(2.0 ** self.msb), 2.0 ** self.msb - step)
        return None

    def saturation(self, w):
        """Share of the weights outside ``bounds`` (0 for quantizers without a range)."""
        bounds = self.bounds()
        w = np.asarray(w, np.float64)
        if bounds is None or w.size == 0:
            return 0.0
        return float(np.mean((w < bounds[0]) | (w > bounds[1])))


def weight_quantizer(spec):
    """The layer's WeightQuantizer, or None without ``weight_quantization_param``."""
    if not spec.HasField("weight_quantization_param"):
        return None
    return WeightQuantizer.from_proto(spec.weight_quantization_param)
