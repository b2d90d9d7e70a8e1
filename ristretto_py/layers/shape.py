"""Layers that only move data: Concat, Slice, Split, Flatten, Reshape, Permute and Crop.

The ONNX exports keep the batch axis dynamic: shapes that copy the batch use 0 in an ONNX
Reshape ("keep this dimension"); a reshape that folds the batch into another axis is computed
from the static per-item shape with -1 for the folded axis.
"""
import numpy as np

from .base import LayerImpl, normalize_axis, register


@register
class Concat(LayerImpl):
    type_name = "Concat"
    bottoms_range = (1, None)

    def setup(self, spec):
        p = spec.concat_param
        self.axis_param = int(p.concat_dim) if p.HasField("concat_dim") else int(p.axis)

    def output_shapes(self, bottom_shapes):
        first = tuple(bottom_shapes[0])
        axis = normalize_axis(self.axis_param, len(first), self.name)
        total = 0
        for i, shape in enumerate(bottom_shapes):
            shape = tuple(shape)
            if len(shape) != len(first) or shape[:axis] + shape[axis + 1:] != first[:axis] + first[axis + 1:]:
                raise self.error(f"bottom {i} has shape {list(shape)}; all but axis {axis} must "
                                 f"match bottom 0's {list(first)}")
            total += shape[axis]
        return [first[:axis] + (total,) + first[axis + 1:]]

    def forward(self, bottoms, blobs):
        axis = normalize_axis(self.axis_param, bottoms[0].ndim, self.name)
        return [np.concatenate(bottoms, axis=axis)]

    def export_onnx(self, graph, io):
        axis = normalize_axis(self.axis_param, len(io.bottom_shapes[0]), self.name)
        graph.node("Concat", io.bottoms, io.tops, axis=axis)


@register
class Slice(LayerImpl):
    type_name = "Slice"
    tops_range = (1, None)

    def setup(self, spec):
        p = spec.slice_param
        self.axis_param = int(p.slice_dim) if p.HasField("slice_dim") else int(p.axis)
        self.points = [int(v) for v in p.slice_point]
        if self.points and len(self.points) != len(self.layer.tops) - 1:
            raise self.error(f"{len(self.points)} slice points for {len(self.layer.tops)} tops "
                             "(need one fewer than tops)")

    def _sizes(self, shape):
        axis = normalize_axis(self.axis_param, len(shape), self.name)
        length, count = shape[axis], len(self.layer.tops)
        if self.points:
            bounds = [0] + self.points + [length]
            if any(b <= a for a, b in zip(bounds, bounds[1:])):
                raise self.error(f"slice points {self.points} must increase strictly inside (0, {length})")
            return axis, [b - a for a, b in zip(bounds, bounds[1:])]
        if length % count:
            raise self.error(f"axis {axis} of length {length} does not split evenly into {count} tops")
        return axis, [length // count] * count

    def output_shapes(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        axis, sizes = self._sizes(shape)
        return [shape[:axis] + (s,) + shape[axis + 1:] for s in sizes]

    def forward(self, bottoms, blobs):
        axis, sizes = self._sizes(bottoms[0].shape)
        return [np.ascontiguousarray(p) for p in np.split(bottoms[0], np.cumsum(sizes)[:-1], axis=axis)]

    def export_onnx(self, graph, io):
        axis, sizes = self._sizes(tuple(io.bottom_shapes[0]))
        if axis == 0:
            raise self.error("slicing the batch axis has no ONNX export (the batch is dynamic)")
        graph.node("Split", [io.bottoms[0], graph.ints(sizes, "split")], io.tops, axis=axis)


@register
class Split(LayerImpl):
    """Every top is the bottom (Caffe shares the data)."""
    type_name = "Split"
    tops_range = (1, None)

    def output_shapes(self, bottom_shapes):
        return [tuple(bottom_shapes[0])] * len(self.layer.tops)

    def forward(self, bottoms, blobs):
        return [bottoms[0]] * len(self.layer.tops)

    def export_onnx(self, graph, io):
        for top in io.tops:
            graph.node("Identity", io.bottoms, [top])


def _reshape_export(graph, layer, io, out_shape):
    """An ONNX Reshape to ``out_shape`` that keeps the batch dynamic: 0 keeps axis 0 where the
    batch stays there; where it is folded into the first axis, that axis is inferred (-1)."""
    in_shape = tuple(io.bottom_shapes[0])
    out_shape = list(out_shape)
    if in_shape and out_shape and out_shape[0] == in_shape[0]:
        target = [0] + out_shape[1:]
    elif out_shape:
        target = [-1] + out_shape[1:]
    else:
        target = []
    graph.node("Reshape", [io.bottoms[0], graph.ints(target, "shape")], io.tops)


@register
class Flatten(LayerImpl):
    type_name = "Flatten"

    def setup(self, spec):
        self.axis_param = int(spec.flatten_param.axis)
        self.end_axis_param = int(spec.flatten_param.end_axis)

    def output_shapes(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        start = normalize_axis(self.axis_param, len(shape), self.name)
        end = normalize_axis(self.end_axis_param, len(shape), self.name, "end_axis")
        if end < start:
            raise self.error(f"end_axis {end} comes before axis {start}")
        return [shape[:start] + (int(np.prod(shape[start:end + 1], dtype=np.int64)),) + shape[end + 1:]]

    def forward(self, bottoms, blobs):
        return [bottoms[0].reshape(self.output_shapes([bottoms[0].shape])[0])]

    def export_onnx(self, graph, io):
        _reshape_export(graph, self, io, io.top_shapes[0])


@register
class Reshape(LayerImpl):
    """Caffe's ReshapeLayer: ``shape`` replaces the bottom axes [axis, axis + num_axes); 0 copies
    the bottom dimension at that position, one -1 is inferred from the count."""
    type_name = "Reshape"

    def setup(self, spec):
        p = spec.reshape_param
        self.dims = [int(d) for d in p.shape.dim]
        self.axis_param, self.num_axes = int(p.axis), int(p.num_axes)
        if self.dims.count(-1) > 1:
            raise self.error("reshape_param.shape may infer (-1) at most one dimension")
        if any(d < -1 for d in self.dims):
            raise self.error(f"invalid dimension in reshape_param.shape {self.dims}")
        if self.num_axes < -1:
            raise self.error("num_axes must be -1 or more")

    def output_shapes(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        ndim = len(shape)
        # Caffe allows axis == ndim (insert at the end): canonicalise against ndim + 1.
        start = normalize_axis(self.axis_param, ndim + 1, self.name)
        end = ndim if self.num_axes == -1 else start + self.num_axes
        if end > ndim:
            raise self.error(f"axis {start} + num_axes {self.num_axes} exceeds the {ndim}-D bottom")
        middle = []
        for i, d in enumerate(self.dims):
            if d == 0:
                if start + i >= ndim:
                    raise self.error(f"dimension {i} copies (0) an axis the bottom does not have")
                middle.append(shape[start + i])
            else:
                middle.append(d)
        out = list(shape[:start]) + middle + list(shape[end:])
        total = int(np.prod(shape, dtype=np.int64))
        if -1 in out:
            known = int(np.prod([d for d in out if d != -1], dtype=np.int64))
            if known == 0 or total % known:
                raise self.error(f"cannot infer -1: {total} values do not divide into {out}")
            out[out.index(-1)] = total // known
        if int(np.prod(out, dtype=np.int64)) != total:
            raise self.error(f"reshape to {out} needs {int(np.prod(out))} values, the bottom "
                             f"{list(shape)} has {total}")
        return [tuple(out)]

    def forward(self, bottoms, blobs):
        return [bottoms[0].reshape(self.output_shapes([bottoms[0].shape])[0])]

    def export_onnx(self, graph, io):
        _reshape_export(graph, self, io, io.top_shapes[0])


@register
class Permute(LayerImpl):
    """SSD's Permute: ``order`` lists the new axis order; missing axes follow in order."""
    type_name = "Permute"

    def setup(self, spec):
        self.order_param = [int(v) for v in spec.permute_param.order]

    def _order(self, ndim):
        order = []
        for axis in self.order_param:
            if not 0 <= axis < ndim:
                raise self.error(f"order value {axis} out of range for a {ndim}-D bottom")
            if axis in order:
                raise self.error(f"order repeats axis {axis}")
            order.append(axis)
        return order + [a for a in range(ndim) if a not in order]

    def output_shapes(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        return [tuple(shape[a] for a in self._order(len(shape)))]

    def forward(self, bottoms, blobs):
        return [np.ascontiguousarray(np.transpose(bottoms[0], self._order(bottoms[0].ndim)))]

    def export_onnx(self, graph, io):
        graph.node("Transpose", io.bottoms, io.tops, perm=self._order(len(io.bottom_shapes[0])))


@register
class Crop(LayerImpl):
    """Crop bottom 0 to bottom 1's size on the axes from ``axis`` on, starting at ``offset``
    (one value for every cropped axis, or one per axis)."""
    type_name = "Crop"
    bottoms_range = (2, 2)

    def setup(self, spec):
        p = spec.crop_param
        self.axis_param = int(p.axis)
        self.offsets = [int(v) for v in p.offset]

    def _plan(self, shape, reference):
        if len(shape) != len(reference):
            raise self.error(f"bottoms have {len(shape)} and {len(reference)} axes")
        axis = normalize_axis(self.axis_param, len(shape), self.name)
        cropped = len(shape) - axis
        if len(self.offsets) not in (0, 1, cropped):
            raise self.error(f"{len(self.offsets)} offsets for {cropped} cropped axes (give 0, 1 or {cropped})")
        starts = []
        for i in range(len(shape)):
            if i < axis:
                starts.append(0)
                continue
            offset = 0 if not self.offsets else self.offsets[0 if len(self.offsets) == 1 else i - axis]
            if offset + reference[i] > shape[i]:
                raise self.error(f"axis {i}: offset {offset} + size {reference[i]} exceeds {shape[i]}")
            starts.append(offset)
        out = tuple(shape[i] if i < axis else reference[i] for i in range(len(shape)))
        return axis, starts, out

    def output_shapes(self, bottom_shapes):
        return [self._plan(tuple(bottom_shapes[0]), tuple(bottom_shapes[1]))[2]]

    def forward(self, bottoms, blobs):
        _, starts, out = self._plan(bottoms[0].shape, bottoms[1].shape)
        index = tuple(slice(s, s + n) for s, n in zip(starts, out))
        return [np.ascontiguousarray(bottoms[0][index])]

    def export_onnx(self, graph, io):
        axis, starts, out = self._plan(tuple(io.bottom_shapes[0]), tuple(io.bottom_shapes[1]))
        axes = list(range(max(axis, 1), len(out)))
        if axis == 0 and starts[0] != 0:
            raise self.error("cropping the batch axis has no ONNX export (the batch is dynamic)")
        graph.node("Slice", [io.bottoms[0], graph.ints([starts[a] for a in axes], "starts"),
                             graph.ints([starts[a] + out[a] for a in axes], "ends"),
                             graph.ints(axes, "axes")], io.tops)
