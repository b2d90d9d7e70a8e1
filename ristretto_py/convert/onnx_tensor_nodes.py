"""ONNX arithmetic and tensor-moving operators for the Caffe converter (mixins of
``onnx_to_caffe.Converter``, see ``onnx_nodes``).

Arithmetic with a constant side becomes Power (one value), Bias or Scale (values along a run of
axes, never the batch); between tensors Eltwise (equal shapes) or a two-bottom Bias/Scale (one
side broadcast over whole axes). Reshape, Flatten, Squeeze and Unsqueeze become Caffe Reshapes
(both layouts are N x C x H x W, so no element moves), Transpose a Permute, and Pad is held back
to be folded into the convolution or pooling that follows.
"""
import numpy as np

from .onnx_nodes import Value

ELTWISE = {"add": ("SUM", None), "sub": ("SUM", [1.0, -1.0]), "mul": ("PROD", None)}


class ArithmeticNodes:
    def _Add(self, node, attrs):
        return self._arithmetic("add")

    def _Sub(self, node, attrs):
        return self._arithmetic("sub")

    def _Mul(self, node, attrs):
        return self._arithmetic("mul")

    def _Div(self, node, attrs):
        return self._arithmetic("div")

    def _Sum(self, node, attrs):
        if len(node.input) == 1:
            return self.tensor(0)
        if len(node.input) == 2:
            return self._arithmetic("add")
        return self._eltwise("SUM", [self.tensor(i) for i in range(len(node.input))])

    def _Max(self, node, attrs):
        if len(node.input) == 1:
            return self.tensor(0)
        return self._eltwise("MAX", [self.tensor(i) for i in range(len(node.input))])

    def _eltwise(self, operation, values, coeff=None):
        out = self.out_shape()
        if any(tuple(v.shape) != out for v in values):
            raise self.refuse(f"its inputs' shapes {[list(v.shape) for v in values]} differ; "
                              "Caffe's Eltwise does not broadcast")
        params = {"operation": operation}
        if coeff:
            params["coeff"] = coeff
        return self.emit("Eltwise", [v.blob for v in values], eltwise_param=params)

    def _arithmetic(self, kind):
        if self.is_const(0) or self.is_const(1):
            first = self.is_const(0)
            return self._with_constant(kind, self.tensor(1 if first else 0), self.const(0 if first else 1), first)
        a, b = self.tensor(0), self.tensor(1)
        if tuple(a.shape) == tuple(b.shape):
            if kind == "div":
                raise self.refuse("a division of two tensors; Caffe's Eltwise has no division")
            operation, coeff = ELTWISE[kind]
            return self._eltwise(operation, [a, b], coeff)
        return self._broadcast(kind, a, b)

    def _with_constant(self, kind, x, constant, constant_first):
        out = self.out_shape()
        if tuple(x.shape) != out:
            raise self.refuse(f"the constant of shape {list(np.shape(constant))} broadcasts the "
                              f"tensor {list(x.shape)} to {list(out)}")
        full = np.broadcast_to(np.asarray(constant, np.float64), out)
        varying = [axis for axis in range(len(out)) if not np.all(full == full.take([0], axis=axis))]
        if 0 in varying:
            raise self.refuse("its constant differs between the items of the batch")
        if not varying:
            return self._power(kind, x, float(full.flat[0]), constant_first)
        low, high = min(varying), max(varying) + 1
        operand = full[tuple(slice(None) if low <= i < high else 0 for i in range(len(out)))]
        where = {"axis": low, "num_axes": high - low}
        if kind == "add":
            return self.emit("Bias", [x.blob], [operand], bias_param=where)
        if kind == "mul" or (kind == "div" and not constant_first):
            scale = operand if kind == "mul" else 1.0 / operand
            return self.emit("Scale", [x.blob], [scale], scale_param=where)
        if kind == "sub" and not constant_first:
            return self.emit("Bias", [x.blob], [-operand], bias_param=where)
        if kind == "sub":
            return self.emit("Scale", [x.blob], [-np.ones_like(operand), operand],
                             scale_param=dict(where, bias_term=True))
        raise self.refuse("a constant divided by a tensor, with more than one constant value")

    def _power(self, kind, x, value, constant_first):
        params = {"add": {"shift": value}, "mul": {"scale": value},
                  "sub": {"scale": -1.0, "shift": value} if constant_first else {"shift": -value}}.get(kind)
        if kind == "div":
            if value == 0.0:
                raise self.refuse("a division by the constant 0")
            params = {"scale": 1.0 / value, "power": -1.0} if constant_first else {"scale": 1.0 / value}
        return self.emit("Power", [x.blob], power_param=params)

    def _broadcast(self, kind, a, b):
        """Two tensors of different shapes: the smaller must span whole axes of the larger."""
        out = self.out_shape()
        if kind not in ("add", "sub", "mul"):
            raise self.refuse(f"its inputs' shapes {list(a.shape)} and {list(b.shape)} broadcast; "
                              "Caffe divides no blob by another")
        if tuple(a.shape) == out:
            big, small = a, b
        elif tuple(b.shape) == out and kind != "sub":
            big, small = b, a
        else:
            raise self.refuse(f"its inputs {list(a.shape)} and {list(b.shape)} both broadcast (to "
                              f"{list(out)}); Caffe's Scale and Bias broadcast only their second bottom")
        padded = (1,) * (len(out) - len(small.shape)) + tuple(small.shape)
        spanned = [i for i, d in enumerate(padded) if d != 1]
        low = 0 if len(small.shape) == len(out) and padded[0] == out[0] else min(spanned, default=0)
        high = max(spanned, default=0) + 1
        if any(padded[i] != out[i] for i in range(low, high)):
            raise self.refuse(f"the {list(small.shape)} tensor broadcasts inside its span of the "
                              f"{list(out)} one; Caffe's Scale and Bias take whole axes")
        name = self.current[1].output[0]
        operand = self.reshape(small, out[low:high], suffix="_operand", top=f"{name}_operand") \
            if tuple(small.shape) != tuple(out[low:high]) else small.blob
        if kind == "sub":
            operand = self.emit("Power", [operand], suffix="_negate", top=f"{name}_negated",
                                power_param={"scale": -1.0})
        if kind == "mul":
            return self.emit("Scale", [big.blob, operand], scale_param={"axis": low})
        return self.emit("Bias", [big.blob, operand], bias_param={"axis": low})


class ShapeNodes:
    def _Identity(self, node, attrs):
        return self.tensor(0)

    def _Dropout(self, node, attrs):
        if len(node.input) > 2 and node.input[2]:
            mode = self.const(2, True, "training_mode")
            if bool(np.ravel(mode)[0]):
                raise self.refuse("training_mode is true: it drops values at random")
        return self.tensor(0)

    def _Concat(self, node, attrs):
        values = [self.tensor(i) for i in range(len(node.input))]
        axis = int(attrs["axis"]) % len(values[0].shape)
        return self.emit("Concat", [v.blob for v in values], concat_param={"axis": axis})

    def _Flatten(self, node, attrs):
        x = self.tensor(0)
        axis = int(attrs.get("axis", 1)) % (len(x.shape) + 1)
        if axis == 1:
            return self.emit("Flatten", [x.blob])
        return self.reshape(x, self.out_shape(), top=node.output[0])

    def _Reshape(self, node, attrs):
        if self.opset >= 5 and not self.is_const(1):
            raise self.refuse("its target shape is computed from the data, not a constant")
        return self._to_shape(node)

    def _to_shape(self, node):
        x, out = self.tensor(0), self.out_shape()
        return x if tuple(x.shape) == out else self.reshape(x, out, top=node.output[0])

    def _Squeeze(self, node, attrs):
        return self._to_shape(node)

    def _Unsqueeze(self, node, attrs):
        return self._to_shape(node)

    def _Transpose(self, node, attrs):
        x = self.tensor(0)
        order = [int(a) for a in attrs.get("perm", range(len(x.shape) - 1, -1, -1))]
        if order == sorted(order):
            return x
        return self.emit("Permute", [x.blob], permute_param={"order": order})

    def _Pad(self, node, attrs):
        x = self.tensor(0)
        mode = attrs.get("mode", "constant")
        if mode != "constant":
            raise self.refuse(f"mode '{mode}' copies border values; Caffe pads with zeros")
        pads = attrs.get("pads", attrs.get("paddings")) if self.opset < 11 else self.const(1, True, "pads")
        value = attrs.get("value", 0.0) if self.opset < 11 else self.const(2)
        if value is not None and float(np.ravel(value)[0]) != 0.0:
            raise self.refuse(f"it pads with {float(np.ravel(value)[0])}; Caffe pads with zeros")
        rank = len(x.shape)
        pads = [int(p) for p in np.ravel(pads)]
        axes = self.axes_input({}, 3) if self.opset >= 18 else None
        if axes is not None:                     # pads for the listed axes only (opset 18)
            full = [0] * (2 * rank)
            for i, axis in enumerate(a % rank for a in axes):
                full[axis], full[rank + axis] = pads[i], pads[len(axes) + i]
            pads = full
        if (rank == 4 and not pads[0] and not pads[rank] and (pads[1] or pads[rank + 1])
                and not any(pads[i] or pads[rank + i] for i in (2, 3)) and min(pads) >= 0):
            return self._pad_channels(x, pads[1], pads[rank + 1])
        if rank != 4 or any(pads[i] or pads[rank + i] for i in (0, 1)):
            raise self.refuse(f"pads {pads} reach beyond the two spatial axes of an image")
        if min(pads) < 0:
            raise self.refuse(f"negative pads {pads} crop the image")
        held = x.pad or ((0, 0), (0, 0))
        pad = tuple((held[i][0] + pads[2 + i], held[i][1] + pads[rank + 2 + i]) for i in range(2))
        return Value(x.blob, x.shape, pad, self.node_name(*self.current), x.non_negative)

    def _pad_channels(self, x, before, after):
        """Zero channels around ``x`` (BlazeFace's residual branches widen this way): a 1x1
        Convolution with zero weights and no bias makes each zero block from ``x`` (exact: 0 times
        a finite value is 0) and a Concat joins them, so ``x`` itself passes untouched."""
        if x.pad:
            raise self.refuse(f"it pads channels after a Pad node '{x.pad_node}' that pads the image")
        channels = x.shape[1]
        parts = []
        for side, count in (("before", before), ("after", after)):
            if side == "after":
                parts.append(x.blob)
            if count:
                top = self.layer_name(f"_zeros_{side}")
                self.add(top, "Convolution", [x.blob], [top],
                         [np.zeros((count, channels, 1, 1), np.float32)],
                         convolution_param={"num_output": count, "kernel_size": [1], "bias_term": False})
                parts.append(top)
        return self.emit("Concat", parts, concat_param={"axis": 1})
