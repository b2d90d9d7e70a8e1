"""Element-wise activation layers: ReLU, PReLU, Sigmoid, TanH, Power, AbsVal, Dropout, Clip.

Each keeps its bottom's shape. Caffe's formulas: ReLU max(x,0) + slope*min(x,0); PReLU with a
learned slope per channel (axis 1) or one shared; Power (shift + scale*x)^power.
"""
import numpy as np

from .base import LayerImpl, register


class _ElementWise(LayerImpl):
    def output_shapes(self, bottom_shapes):
        return [bottom_shapes[0]]


@register
class ReLU(_ElementWise):
    type_name = "ReLU"

    def setup(self, spec):
        self.negative_slope = float(spec.relu_param.negative_slope)

    def forward_into(self, bottoms, blobs, out):
        if self.negative_slope == 0.0:
            return np.maximum(bottoms[0], np.float32(0), out=out)
        return self.forward(bottoms, blobs)[0]

    def forward(self, bottoms, blobs):
        x = bottoms[0]
        if self.negative_slope == 0.0:
            return [np.maximum(x, np.float32(0))]
        return [np.where(x > 0, x, x * np.float32(self.negative_slope)).astype(np.float32)]

    def export_onnx(self, graph, io):
        if self.negative_slope == 0.0:
            graph.node("Relu", io.bottoms, io.tops)
        else:
            graph.node("LeakyRelu", io.bottoms, io.tops, alpha=self.negative_slope)


@register
class PReLU(_ElementWise):
    type_name = "PReLU"

    def setup(self, spec):
        self.channel_shared = bool(spec.prelu_param.channel_shared)

    def param_shapes(self, bottom_shapes):
        shape = bottom_shapes[0]
        if len(shape) < 2 and not self.channel_shared:
            raise self.error("needs a bottom with a channel axis (or channel_shared: true)")
        return [(1,) if self.channel_shared else (shape[1],)]

    def _slope(self, blobs, ndim):
        slope = blobs[0].reshape(-1)
        if self.channel_shared:
            return slope.reshape(())
        return slope.reshape((1, -1) + (1,) * (ndim - 2))

    def forward(self, bottoms, blobs):
        x = bottoms[0]
        return [np.where(x > 0, x, x * self._slope(blobs, x.ndim)).astype(np.float32)]

    def export_onnx(self, graph, io):
        # ONNX PRelu broadcasts the slope against the input: (C, 1, 1) for NCHW.
        slope = self._slope(io.blobs, len(io.bottom_shapes[0]))
        slope = slope.reshape(slope.shape[1:]) if slope.ndim > 1 else slope
        graph.node("PRelu", [io.bottoms[0], graph.constant(slope, "slope")], io.tops)


@register
class Sigmoid(_ElementWise):
    type_name = "Sigmoid"

    def forward(self, bottoms, blobs):
        x = bottoms[0]
        # 0.5 * tanh(0.5 x) + 0.5 is Caffe's form and never overflows.
        return [(np.float32(0.5) * np.tanh(np.float32(0.5) * x) + np.float32(0.5)).astype(np.float32)]

    def export_onnx(self, graph, io):
        graph.node("Sigmoid", io.bottoms, io.tops)


@register
class TanH(_ElementWise):
    type_name = "TanH"

    def forward(self, bottoms, blobs):
        return [np.tanh(bottoms[0])]

    def export_onnx(self, graph, io):
        graph.node("Tanh", io.bottoms, io.tops)


@register
class AbsVal(_ElementWise):
    type_name = "AbsVal"

    def forward(self, bottoms, blobs):
        return [np.abs(bottoms[0])]

    def export_onnx(self, graph, io):
        graph.node("Abs", io.bottoms, io.tops)


@register
class Power(_ElementWise):
    type_name = "Power"

    def setup(self, spec):
        p = spec.power_param
        self.power, self.scale, self.shift = float(p.power), float(p.scale), float(p.shift)

    def forward(self, bottoms, blobs):
        y = bottoms[0] * np.float32(self.scale) + np.float32(self.shift)
        if self.power != 1.0:
            y = np.power(y, np.float32(self.power))
        return [y.astype(np.float32)]

    def export_onnx(self, graph, io):
        value = io.bottoms[0]
        if self.scale != 1.0:
            value = graph.node("Mul", [value, graph.scalar(self.scale)])[0]
        if self.shift != 0.0:
            value = graph.node("Add", [value, graph.scalar(self.shift)])[0]
        if self.power != 1.0:
            value = graph.node("Pow", [value, graph.scalar(self.power)])[0]
        graph.node("Identity", [value], io.tops)


@register
class Dropout(_ElementWise):
    """At TEST time Caffe's Dropout is the identity (it scales during training instead)."""
    type_name = "Dropout"

    def forward(self, bottoms, blobs):
        return [bottoms[0]]

    def export_onnx(self, graph, io):
        graph.node("Identity", io.bottoms, io.tops)


@register
class Clip(_ElementWise):
    """BVLC Caffe's Clip: min(max(x, min), max) (Keras' ReLU6 is Clip(0, 6))."""
    type_name = "Clip"

    def setup(self, spec):
        p = spec.clip_param
        if not (p.HasField("min") and p.HasField("max")) or p.min > p.max:
            raise self.error("clip_param needs min <= max")
        self.low, self.high = np.float32(p.min), np.float32(p.max)

    def forward(self, bottoms, blobs):
        return [np.clip(bottoms[0], self.low, self.high)]

    def export_onnx(self, graph, io):
        graph.node("Clip", [io.bottoms[0], graph.scalar(self.low), graph.scalar(self.high)], io.tops)
