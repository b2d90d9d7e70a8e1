"""ristretto-py's ConvolutionHWCE: a Convolution as PULP's hardware convolution engine computes
it. Kernel, layer input and layer output each pass through quantclip (``numerics.quantclip``)
with their own bit width (4, 6, 8 or 16) and MSB exponent; the convolution itself runs in float
on the quantized values; the bias stays float. Parameters: ``hwce_param`` (our .proto extension).
"""
import numpy as np

from .. import numerics
from .base import as_f32, register
from .conv import Convolution

HWCE_BITS = (4, 6, 8, 16)


@register
class ConvolutionHWCE(Convolution):
    type_name = "ConvolutionHWCE"

    def setup(self, spec):
        super().setup(spec)
        if self.weight_quantizer is not None:
            raise self.error("weight_quantization_param does not apply: hwce_param quantizes "
                             "the kernel")
        p = spec.hwce_param
        self.bits = {"kernel": int(p.kernel_bits), "input": int(p.input_bits), "output": int(p.output_bits)}
        for signal, bits in self.bits.items():
            if bits not in HWCE_BITS:
                raise self.error(f"hwce_param {signal}_bits must be one of {HWCE_BITS}, not {bits}")
        missing = [s for s in ("kernel", "input", "output") if not p.HasField(f"{s}_msb")]
        if missing:
            raise self.error(f"hwce_param needs {', '.join(m + '_msb' for m in missing)}")
        self.msb = {"kernel": int(p.kernel_msb), "input": int(p.input_msb), "output": int(p.output_msb)}

    def _clip(self, x, signal):
        return numerics.quantclip(x, self.msb[signal], self.bits[signal])

    def forward(self, bottoms, blobs):
        weights = self._clip(blobs[0], "kernel")
        x = self._clip(bottoms[0], "input")
        y = super().forward([x], [weights] + list(blobs[1:]))[0]
        return [self._clip(y, "output")]

    def _onnx_clip(self, graph, value, signal):
        msb, bits = self.msb[signal], self.bits[signal]
        step = np.float32(2.0 ** (msb + 1 - bits))
        clipped = graph.node("Clip", [value, graph.scalar(-(2.0 ** msb)), graph.scalar(np.float32(2.0 ** msb) - step)])[0]
        floored = graph.node("Floor", [graph.node("Mul", [clipped, graph.scalar(1.0 / step)])[0]])[0]
        return graph.node("Mul", [floored, graph.scalar(step)])[0]

    def export_onnx(self, graph, io):
        from .base import OnnxIO
        x = self._onnx_clip(graph, io.bottoms[0], "input")
        raw = graph.unique(f"{io.tops[0]}@float")
        blobs = [self._clip(as_f32(io.blobs[0]), "kernel")] + list(io.blobs[1:])
        super().export_onnx(graph, OnnxIO([x], [raw], blobs, io.bottom_shapes, io.top_shapes, io.extra))
        graph.node("Identity", [self._onnx_clip(graph, raw, "output")], io.tops)
