"""Post-training quantizers from the literature, for weights (and, where they apply, activations):

* ``linear:N`` (LPDNN/QUENN): 2^N levels evenly over [min, max], both ends representable;
  ``q = min + round((x - min) / step) * step`` with ``step = (max - min) / (2^N - 1)``.
* ``gaussian:N:C`` (LPDNN/QUENN): the same grid over [mean - C*std, mean + C*std]; values outside
  are clipped to the ends.
* ``binary`` (BinaryConnect): sign(w), +1 for 0.
* ``scaled_binary`` (DoReFa/XNOR): mean|w| * sign(w).
* ``ternary`` (TWN): threshold t = 0.7 * mean|w|; +-a above/below, 0 between, with
  a = mean(|w| where |w| > t).
* ``hwce:N:P`` (PULP HWCE "quantclip", DESIGN section 3): MSB exponent m = ceil(log2 of the P-th
  percentile of |x|); clip to [-2^m, 2^m), then floor to the step 2^(m+1) / 2^N.

Each quantizer returns the quantized float32 values and the storage cost: bits per value and the
per-tensor constants (in bits) a decoder needs. Biases are left in float32.
"""
import dataclasses
import math

import numpy as np

from ristretto_py import numerics
from ristretto_py.errors import RistrettoError

FLOAT_BITS = 32


@dataclasses.dataclass(frozen=True)
class Quantizer:
    kind: str
    bits: int = 0
    c: float = 0.0
    percentile: float = 100.0

    @classmethod
    def parse(cls, text):
        parts = text.split(":")
        kind = parts[0]
        try:
            if kind in ("binary", "scaled_binary", "ternary") and len(parts) == 1:
                return cls(kind, bits={"ternary": 2}.get(kind, 1))
            if kind == "linear" and len(parts) == 2:
                return cls(kind, bits=_bits(parts[1]))
            if kind == "gaussian" and len(parts) == 3 and float(parts[2]) > 0:
                return cls(kind, bits=_bits(parts[1]), c=float(parts[2]))
            if kind == "hwce" and len(parts) == 3 and 0 < float(parts[2]) <= 100:
                return cls(kind, bits=_bits(parts[1]), percentile=float(parts[2]))
        except ValueError:
            pass
        raise RistrettoError(f"quantizer {text!r}: use linear:N, gaussian:N:C, binary, "
                             "scaled_binary, ternary or hwce:N:PERCENTILE (N from 1 to 16)")

    def __str__(self):
        return {"linear": f"linear:{self.bits}", "gaussian": f"gaussian:{self.bits}:{self.c:g}",
                "hwce": f"hwce:{self.bits}:{self.percentile:g}"}.get(self.kind, self.kind)

    def calibrate(self, values):
        """The quantizer's constants from sample values (range, statistics or MSB)."""
        x = np.asarray(values, np.float64).ravel()
        if x.size == 0:
            raise RistrettoError("nothing to quantize: an empty tensor")
        if self.kind == "linear":
            return {"low": float(x.min()), "high": float(x.max())}
        if self.kind == "gaussian":
            mean, std = float(x.mean()), float(x.std())
            return {"low": mean - self.c * std, "high": mean + self.c * std}
        if self.kind == "hwce":
            top = float(np.percentile(np.abs(x), self.percentile))
            return {"msb": math.ceil(math.log2(top)) if top > 0 else 0}
        magnitude = np.abs(x)
        if self.kind == "scaled_binary":
            return {"scale": float(magnitude.mean())}
        if self.kind == "ternary":
            threshold = 0.7 * float(magnitude.mean())
            above = magnitude[magnitude > threshold]
            return {"threshold": threshold, "scale": float(above.mean()) if above.size else 0.0}
        return {}

    def apply(self, values, constants):
        """Quantize ``values`` with constants from ``calibrate`` (float32 result)."""
        x = np.asarray(values, np.float64)
        if self.kind in ("linear", "gaussian"):
            low, high = constants["low"], constants["high"]
            if high <= low:
                return np.full(x.shape, low, np.float32)
            step = (high - low) / (2 ** self.bits - 1)
            q = low + np.rint((np.clip(x, low, high) - low) / step) * step
        elif self.kind == "hwce":
            return numerics.quantclip(values, constants["msb"], self.bits)
        elif self.kind == "binary":
            q = np.where(x >= 0, 1.0, -1.0)
        elif self.kind == "scaled_binary":
            q = np.where(x >= 0, 1.0, -1.0) * constants["scale"]
        else:
            t, a = constants["threshold"], constants["scale"]
            q = np.where(x > t, a, np.where(x < -t, -a, 0.0))
        return q.astype(np.float32)

    def constant_bits(self):
        """Bits of the per-tensor constants a decoder needs."""
        return {"linear": 2 * FLOAT_BITS, "gaussian": 2 * FLOAT_BITS, "hwce": 8,
                "scaled_binary": FLOAT_BITS, "ternary": FLOAT_BITS}.get(self.kind, 0)


def _bits(text):
    bits = int(text)
    if not 1 <= bits <= 16:
        raise ValueError
    return bits


def quantize_weights(net, default, per_layer=None, layer_names=None):
    """(new Net, rows): every selected layer's weights (blob 0) quantized by its quantizer.

    ``default``: a Quantizer for all conv/fc layers (or None: only ``per_layer``);
    ``per_layer``: {layer name: Quantizer}; ``layer_names``: restrict to these layers."""
    from ristretto_py.passes.kmeans import select_layers
    per_layer = dict(per_layer or {})
    chosen = select_layers(net, layer_names if layer_names else (list(per_layer) if default is None else None))
    unknown = set(per_layer) - {l.name for l in net.layers}
    if unknown:
        raise RistrettoError(f"no layer named {', '.join(sorted(unknown))}")
    plan = {l.name: per_layer.get(l.name, default) for l in chosen}
    rows, layers = [], []
    for layer in net.layers:
        quantizer = plan.get(layer.name)
        if quantizer is None:
            layers.append(layer)
            continue
        weights = layer.blobs[0]
        constants = quantizer.calibrate(weights)
        new = quantizer.apply(weights, constants)
        n = int(np.size(weights))
        bits_after = n * quantizer.bits + quantizer.constant_bits()
        rows.append({"layer": layer.name, "quantizer": str(quantizer), "n": n,
                     "bits_per_weight": quantizer.bits, "constants": constants,
                     "bits_before": n * FLOAT_BITS, "bits_after": bits_after,
                     "ratio": n * FLOAT_BITS / bits_after,
                     "rms_error": float(np.sqrt(np.mean((new.astype(np.float64) - weights) ** 2)))})
        layers.append(layer.replace(blobs=(new,) + tuple(layer.blobs[1:])))
    return net.with_layers(layers), rows
