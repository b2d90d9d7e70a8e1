"""ristretto-py's ActivationQuantize layer: a fixed uniform quantizer on a blob, written by the
activation quantizer pass (``passes/weight_quantizers``) with constants calibrated on data.

LINEAR: 2^bits levels over [low, high], ``low + round((clip(x) - low) / step) * step``.
HWCE: ``floor(clip(x, -2^msb, 2^msb - step) / step) * step`` with ``step = 2^(msb+1) / 2^bits``.
SIGN (BNN's binary activations): +1 where x >= 0, -1 elsewhere (``bits`` is ignored).
Rounding is half to even in numpy and in ONNX (``Round``), so both backends agree.
"""
import numpy as np

from .. import numerics
from .base import LayerImpl, register


@register
class ActivationQuantize(LayerImpl):
    type_name = "ActivationQuantize"

    def setup(self, spec):
        p = spec.activation_quantization_param
        self.method = p.Method.Name(p.method)
        self.bits = int(p.bits)
        if not 1 <= self.bits <= 24:
            raise self.error(f"bits must be 1 to 24, not {self.bits}")
        if self.method == "SIGN":
            self.low, self.high = np.float32(-1), np.float32(1)
        elif self.method == "LINEAR":
            self.low, self.high = np.float32(p.low), np.float32(p.high)
            if not self.high > self.low:
                raise self.error(f"LINEAR needs high > low, got [{p.low}, {p.high}]")
            self.step = np.float32((self.high - self.low) / np.float32(2 ** self.bits - 1))
        else:
            self.msb = int(p.msb)
            self.step = np.float32(2.0 ** (p.msb + 1) / 2 ** self.bits)
            self.low, self.high = np.float32(-(2.0 ** p.msb)), np.float32(2.0 ** p.msb) - self.step

    def output_shapes(self, bottom_shapes):
        return [tuple(bottom_shapes[0])]

    def forward(self, bottoms, blobs):
        if self.method == "SIGN":
            return [numerics.binarize(bottoms[0])]
        x = np.clip(np.asarray(bottoms[0], np.float32), self.low, self.high)
        if self.method == "LINEAR":
            return [(self.low + np.rint((x - self.low) / self.step) * self.step).astype(np.float32)]
        return [numerics.quantclip(bottoms[0], self.msb, self.bits)]

    def export_onnx(self, graph, io):
        if self.method == "SIGN":
            positive = graph.node("GreaterOrEqual", [io.bottoms[0], graph.scalar(0.0)])[0]
            graph.node("Where", [positive, graph.scalar(1.0), graph.scalar(-1.0)], io.tops)
            return
        clipped = graph.node("Clip", [io.bottoms[0], graph.scalar(self.low), graph.scalar(self.high)])[0]
        if self.method == "LINEAR":
            shifted = graph.node("Sub", [clipped, graph.scalar(self.low)])[0]
            steps = graph.node("Round", [graph.node("Div", [shifted, graph.scalar(self.step)])[0]])[0]
            scaled = graph.node("Mul", [steps, graph.scalar(self.step)])[0]
            graph.node("Add", [scaled, graph.scalar(self.low)], io.tops)
        else:
            steps = graph.node("Floor", [graph.node("Div", [clipped, graph.scalar(self.step)])[0]])[0]
            graph.node("Mul", [steps, graph.scalar(self.step)], io.tops)
