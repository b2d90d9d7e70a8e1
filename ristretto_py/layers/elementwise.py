"""Eltwise: SUM (with one coefficient per bottom), PROD or MAX of equally shaped bottoms.

Caffe sums in bottom order in float32 (y = c0*x0, then y += c_i*x_i); the same order here and
in the ONNX export, so both backends agree to the bit.
"""
import numpy as np

from .base import LayerImpl, as_f32, register


@register
class Eltwise(LayerImpl):
    type_name = "Eltwise"
    bottoms_range = (2, None)

    def setup(self, spec):
        p = spec.eltwise_param
        self.operation = p.EltwiseOp.Name(p.operation)
        self.coeff = [float(c) for c in p.coeff]
        if self.coeff and len(self.coeff) != len(self.layer.bottoms):
            raise self.error(f"eltwise_param has {len(self.coeff)} coeff values for "
                             f"{len(self.layer.bottoms)} bottoms")
        if self.coeff and self.operation != "SUM":
            raise self.error("coeff applies to the SUM operation only")

    def output_shapes(self, bottom_shapes):
        first = tuple(bottom_shapes[0])
        for i, shape in enumerate(bottom_shapes[1:], 1):
            if tuple(shape) != first:
                raise self.error(f"bottom {i} has shape {list(shape)}, bottom 0 has {list(first)}")
        return [first]

    def _coefficients(self, count):
        return self.coeff or [1.0] * count

    def forward(self, bottoms, blobs):
        xs = [as_f32(b) for b in bottoms]
        if self.operation == "PROD":
            y = xs[0] * xs[1]
            for x in xs[2:]:
                y = y * x
        elif self.operation == "MAX":
            y = np.maximum(xs[0], xs[1])
            for x in xs[2:]:
                y = np.maximum(y, x)
        else:
            coeff = [np.float32(c) for c in self._coefficients(len(xs))]
            terms = [x * c if c != 1 else x for c, x in zip(coeff, xs)]
            y = np.add(terms[0], terms[1])
            for term in terms[2:]:
                np.add(y, term, out=y)
        return [y.astype(np.float32, copy=False)]

    def export_onnx(self, graph, io):
        op = {"PROD": "Mul", "MAX": "Max", "SUM": "Add"}[self.operation]
        values = list(io.bottoms)
        if self.operation == "SUM":
            values = [v if c == 1 else graph.node("Mul", [v, graph.scalar(c)])[0]
                      for v, c in zip(values, self._coefficients(len(values)))]
        result = values[0]
        for value in values[1:-1]:
            result = graph.node(op, [result, value])[0]
        graph.node(op, [result, values[-1]], io.tops)
