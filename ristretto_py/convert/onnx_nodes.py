"""The ONNX operators the Caffe converter takes, one method per operator, grouped by family as
mixins of ``onnx_to_caffe.Converter``: convolutions and matrix products, normalisation,
activations and pooling here; arithmetic and tensor reshaping in ``onnx_tensor_nodes``.

Each method receives the node and its attributes, adds Caffe layers through the converter's
helpers and returns the node's output as a blob name or a ``Value``; it refuses (raises
``self.refuse(reason)``) whatever Caffe cannot compute exactly.
"""
import dataclasses

import numpy as np

from . import onnx_windows as windows

FLT_MAX = float(np.finfo(np.float32).max)


@dataclasses.dataclass
class Value:
    """What an ONNX tensor is on the Caffe side."""
    blob: str
    shape: tuple                 # the blob's shape (before a pending Pad)
    pad: tuple = None            # zeros a folded Pad adds: ((top, bottom), (left, right))
    pad_node: str = None         # that Pad's name, for a refusal
    non_negative: bool = False   # known >= 0 (a ReLU's output, ...): zero padding cannot win a max


class LinearNodes:
    def _pads(self, attrs, sizes, kernels, strides):
        """ONNX's (begin, end) padding per spatial axis."""
        auto = attrs.get("auto_pad", "NOTSET")
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            return [windows.same_padding(auto, *a) for a in zip(sizes, kernels, strides)]
        if auto == "VALID":
            return [(0, 0)] * len(sizes)
        pads = list(attrs.get("pads", [0] * 2 * len(sizes)))
        half = len(pads) // 2
        return list(zip(pads[:half], pads[half:]))

    def _spatial(self, x, what):
        if len(x.shape) != 4:
            raise self.refuse(f"a {len(x.shape) - 2}-D {what}; Caffe's layers here are 2-D (N, C, H, W)")

    def _Conv(self, node, attrs):
        x, weight, bias = self.tensor(0), self.const(1, True, "weight"), self.const(2)
        self._spatial(x, "convolution")
        kernel = weight.shape[2:]
        strides, dilations = attrs.get("strides", [1, 1]), attrs.get("dilations", [1, 1])
        effective = [d * (k - 1) + 1 for k, d in zip(kernel, dilations)]
        out = self.out_shape()
        pads, taps = [], []
        for axis, (begin, end) in enumerate(self._pads(attrs, x.shape[2:], effective, strides)):
            before, after = x.pad[axis] if x.pad else (0, 0)
            found = windows.conv_axis(x.shape[2 + axis], effective[axis], strides[axis],
                                      begin + before, end + after, out[2 + axis], dilations[axis])
            if isinstance(found, str):
                raise self.refuse(found)
            pads.append(found[0])
            taps.append(found[1:])
        if any(any(t) for t in taps):         # unequal padding: zero taps on the less padded side
            weight = np.pad(weight, [(0, 0), (0, 0)] + taps)
            kernel = weight.shape[2:]
        blobs = [weight] + ([bias] if bias is not None else [])
        return self.emit("Convolution", [x.blob], blobs, convolution_param={
            "num_output": int(weight.shape[0]), "kernel_h": int(kernel[0]), "kernel_w": int(kernel[1]),
            "stride_h": int(strides[0]), "stride_w": int(strides[1]), "pad_h": pads[0], "pad_w": pads[1],
            "dilation": [int(d) for d in dilations], "group": int(attrs.get("group", 1)),
            "bias_term": bias is not None})

    def _ConvTranspose(self, node, attrs):
        x, weight, bias = self.tensor(0), self.const(1, True, "weight"), self.const(2)
        self._spatial(x, "transposed convolution")
        group, kernel = int(attrs.get("group", 1)), weight.shape[2:]
        strides, dilations = attrs.get("strides", [1, 1]), attrs.get("dilations", [1, 1])
        output_padding = attrs.get("output_padding", [0, 0])
        effective = [d * (k - 1) + 1 for k, d in zip(kernel, dilations)]
        out = self.out_shape()
        pads = []
        for axis in range(2):
            size, stride = x.shape[2 + axis], strides[axis]
            if "output_shape" in attrs or attrs.get("auto_pad", "NOTSET") in ("SAME_UPPER", "SAME_LOWER"):
                total = stride * (size - 1) + output_padding[axis] + effective[axis] - out[2 + axis]
                if total % 2:
                    raise self.refuse(f"output_shape/auto_pad leaves {total} cells to crop on an axis; "
                                      "Caffe crops the same number from both ends")
                begin = end = total // 2
            else:
                begin, end = self._pads(attrs, x.shape[2:], effective, strides)[axis]
            pad = windows.deconv_axis(size, effective[axis], stride, begin, end,
                                      output_padding[axis], out[2 + axis])
            if isinstance(pad, str):
                raise self.refuse(pad)
            pads.append(pad)
        blobs = [weight] + ([bias] if bias is not None else [])
        return self.emit("Deconvolution", [x.blob], blobs, convolution_param={
            "num_output": int(weight.shape[1]) * group, "kernel_h": int(kernel[0]), "kernel_w": int(kernel[1]),
            "stride_h": int(strides[0]), "stride_w": int(strides[1]), "pad_h": pads[0], "pad_w": pads[1],
            "dilation": [int(d) for d in dilations], "group": group, "bias_term": bias is not None})

    def _Gemm(self, node, attrs):
        a, b, c = self.tensor(0), self.const(1, True, "weight (B)"), self.const(2)
        if attrs.get("transA", 0):
            raise self.refuse("transA=1 multiplies by the transposed input; Caffe's InnerProduct "
                              "reads its input as rows")
        if len(a.shape) != 2:
            raise self.refuse(f"its input has rank {len(a.shape)}")
        if len(node.input) > 2 and node.input[2] and c is None:
            raise self.refuse("its bias C is computed in the graph, not a constant")
        weight = (b if attrs.get("transB", 0) else b.T) * np.float32(attrs.get("alpha", 1.0))
        blobs = [weight]
        if c is not None:
            rows = np.broadcast_to(np.float32(attrs.get("beta", 1.0)) * c, self.out_shape())
            if not np.all(rows == rows[:1]):
                raise self.refuse("its bias C differs between rows (items); Caffe's bias is one "
                                  "value per output")
            blobs.append(rows[0])
        return self.emit("InnerProduct", [a.blob], blobs, inner_product_param={
            "num_output": int(weight.shape[0]), "bias_term": c is not None, "axis": 1})

    def _MatMul(self, node, attrs):
        if not self.is_const(1):
            raise self.refuse("its second operand is not a constant: Caffe's InnerProduct needs "
                              "constant weights")
        a, b = self.tensor(0), self.const(1)
        if len(a.shape) < 2 or b.ndim != 2:
            raise self.refuse(f"a product of rank {len(a.shape)} by rank {b.ndim}; Caffe's "
                              "InnerProduct takes a matrix of weights on the last axis")
        return self.emit("InnerProduct", [a.blob], [b.T], inner_product_param={
            "num_output": int(b.shape[1]), "bias_term": False, "axis": len(a.shape) - 1})


class NormalizationNodes:
    def _BatchNormalization(self, node, attrs):
        x = self.tensor(0)
        if attrs.get("spatial", 1) != 1:
            raise self.refuse("spatial=0 normalises every position on its own; Caffe's BatchNorm "
                              "is per channel")
        if attrs.get("training_mode", 0):
            raise self.refuse("training_mode=1 normalises with the batch's own statistics")
        if len(x.shape) < 2:
            raise self.refuse("its input has no channel axis")
        gamma, beta, mean, var = (self.const(i, True, what) for i, what in
                                  ((1, "scale"), (2, "bias"), (3, "mean"), (4, "variance")))
        top = self.emit("BatchNorm", [x.blob], [mean, var, [1.0]], batch_norm_param={
            "use_global_stats": True, "eps": float(attrs.get("epsilon", 1e-5))})
        self.emit("Scale", [top], [gamma, beta], suffix="_scale", scale_param={"bias_term": True})
        return top

    def _LRN(self, node, attrs):
        x, size = self.tensor(0), int(attrs["size"])
        self._spatial(x, "local response normalisation")
        if size % 2 == 0:
            raise self.refuse(f"an even window of {size} channels is off-centre; Caffe's LRN "
                              "window is odd and centred")
        return self.emit("LRN", [x.blob], lrn_param={
            "local_size": size, "alpha": float(attrs.get("alpha", 1e-4)),
            "beta": float(attrs.get("beta", 0.75)), "k": float(attrs.get("bias", 1.0))})

    def _Softmax(self, node, attrs):
        x = self.tensor(0)
        rank = len(x.shape)
        axis = int(attrs.get("axis", 1 if self.opset < 13 else -1)) % rank
        if self.opset >= 13 or all(d == 1 for d in x.shape[axis + 1:]):
            return self.emit("Softmax", [x.blob], softmax_param={"axis": axis})
        # Before opset 13 Softmax normalises over all axes from ``axis`` on, flattened.
        flat = self.emit("Flatten", [x.blob], suffix="_flatten", top=f"{node.output[0]}_flat",
                         flatten_param={"axis": axis})
        soft = self.emit("Softmax", [flat], top=f"{node.output[0]}_flat_softmax", softmax_param={"axis": axis})
        return self.reshape(Value(soft, x.shape[:axis] + (int(np.prod(x.shape[axis:])),)), x.shape,
                            suffix="_unflatten", top=node.output[0])


class ActivationNodes:
    def _activation(self, type_, non_negative=False, **params):
        x = self.tensor(0)
        return Value(self.emit(type_, [x.blob], **params), x.shape, non_negative=non_negative)

    def _Relu(self, node, attrs):
        return self._activation("ReLU", True)

    def _LeakyRelu(self, node, attrs):
        return self._activation("ReLU", relu_param={"negative_slope": float(attrs.get("alpha", 0.01))})

    def _Sigmoid(self, node, attrs):
        return self._activation("Sigmoid", True)

    def _Tanh(self, node, attrs):
        return self._activation("TanH")

    def _Abs(self, node, attrs):
        return self._activation("AbsVal", True)

    def _Neg(self, node, attrs):
        return self._activation("Power", power_param={"scale": -1.0})

    def _PRelu(self, node, attrs):
        x, slope = self.tensor(0), self.const(1, True, "slope")
        if len(x.shape) < 2:
            raise self.refuse("its input has no channel axis")
        full = np.broadcast_to(slope.astype(np.float32), x.shape).reshape(x.shape[0], x.shape[1], -1)
        if not np.all(full == full[:1, :, :1]):
            raise self.refuse(f"its slope of shape {list(slope.shape)} varies along other axes "
                              "than the channels; Caffe's PReLU has one slope per channel")
        per_channel = full[0, :, 0]
        shared = bool(np.all(per_channel == per_channel[0]))
        blob = per_channel[:1] if shared else per_channel
        return self.emit("PReLU", [x.blob], [blob], prelu_param={"channel_shared": shared})

    def _Clip(self, node, attrs):
        if self.opset < 11:
            low, high = attrs.get("min"), attrs.get("max")
        else:
            for i in (1, 2):
                if i < len(node.input) and node.input[i] and not self.is_const(i):
                    raise self.refuse("its bounds are computed in the graph, not constants")
            low, high = self.const(1), self.const(2)
        low = None if low is None or float(low) <= -FLT_MAX else float(low)
        high = None if high is None or float(high) >= FLT_MAX else float(high)
        if low == 0.0 and high is None:
            return self._activation("ReLU", True)
        return self._activation("Clip", low is not None and low >= 0, clip_param={
            "min": -FLT_MAX if low is None else low, "max": FLT_MAX if high is None else high})


class PoolingNodes:
    def _pool(self, attrs, method):
        x = self.tensor(0)
        self._spatial(x, "pooling")
        kernel, strides = attrs["kernel_shape"], attrs.get("strides", [1, 1])
        if any(d != 1 for d in attrs.get("dilations", [1, 1])):
            raise self.refuse("dilated pooling windows; Caffe's are dense")
        out = self.out_shape()
        pads = self._pads(attrs, x.shape[2:], kernel, strides)
        plans = []
        for axis, (begin, end) in enumerate(pads):
            before, after = x.pad[axis] if x.pad else (0, 0)
            plan = windows.pool_axis(x.shape[2 + axis], kernel[axis], strides[axis], begin, end,
                                     out[2 + axis], method == "AVE", attrs.get("count_include_pad", 0),
                                     before, after, x.non_negative)
            if isinstance(plan, str):
                return self._pool_whole(x, attrs, method, kernel, pads, out, plan)
            plans.append(plan)
        modes = plans[0][1] & plans[1][1]
        if not modes:
            raise self.refuse("its two axes need different Caffe rounding modes")
        params = {"pool": method, "kernel_h": int(kernel[0]), "kernel_w": int(kernel[1]),
                  "stride_h": int(strides[0]), "stride_w": int(strides[1]),
                  "pad_h": int(plans[0][0]), "pad_w": int(plans[1][0])}
        if "CEIL" not in modes:
            params["round_mode"] = "FLOOR"
        name = self.current[1].output[0]
        corrections = [plan[2] for plan in plans]
        if corrections == [None, None]:
            return Value(self.emit("Pooling", [x.blob], pooling_param=params), out)
        # Caffe's average divides some border windows by another count than ONNX: a Scale
        # over (H, W) gives each output ONNX's divisor.
        rows, columns = (np.ones(n) if c is None else np.asarray(c) for c, n in zip(corrections, out[2:]))
        return self._corrected(x, params, np.outer(rows, columns), out)

    def _corrected(self, x, params, factors, out):
        """Pooling, then a Scale over (H, W) by ``factors`` unless all are 1."""
        if np.all(factors == 1):
            return Value(self.emit("Pooling", [x.blob], pooling_param=params), out)
        name = self.current[1].output[0]
        pooled = self.emit("Pooling", [x.blob], top=f"{name}_caffe_average", pooling_param=params)
        self.emit("Scale", [pooled], [factors], suffix="_divisor", scale_param={"axis": 2, "num_axes": 2})
        return Value(name, out)

    def _pool_whole(self, x, attrs, method, kernel, pads, out, reason):
        """One window over the whole input (a kernel reaching into the padding) is Caffe's
        global pooling; anything else is refused with ``reason``."""
        factors = [windows.global_axis(x.shape[2 + axis], kernel[axis], begin, end, out[2 + axis],
                                       attrs.get("count_include_pad", 0))
                   for axis, (begin, end) in enumerate(pads)]
        if x.pad is not None or None in factors:
            raise self.refuse(reason)
        params = {"pool": method, "global_pooling": True}
        return self._corrected(x, params, np.full((1, 1), factors[0] * factors[1]) if method == "AVE"
                               else np.ones((1, 1)), out)

    def _MaxPool(self, node, attrs):
        return self._pool(attrs, "MAX")

    def _AveragePool(self, node, attrs):
        return self._pool(attrs, "AVE")

    def _global(self, method, keep_dims=True):
        x = self.tensor(0)
        self._spatial(x, "global pooling")
        if keep_dims:
            return self.emit("Pooling", [x.blob], pooling_param={"pool": method, "global_pooling": True})
        pooled = self.emit("Pooling", [x.blob], top=f"{self.current[1].output[0]}_pooled",
                           pooling_param={"pool": method, "global_pooling": True})
        return self.emit("Flatten", [pooled], suffix="_flatten")

    def _GlobalAveragePool(self, node, attrs):
        return self._global("AVE")

    def _GlobalMaxPool(self, node, attrs):
        return self._global("MAX")

    def _reduce(self, attrs, method):
        x = self.tensor(0)
        axes = self.axes_input(attrs)
        rank = len(x.shape)
        if axes is None or sorted(a % rank for a in axes) != [2, 3] or rank != 4:
            raise self.refuse(f"reducing axes {axes} of a rank-{rank} tensor; only the two "
                              "spatial axes of an image (global pooling) map to Caffe")
        return self._global(method, bool(attrs.get("keepdims", 1)))

    def _ReduceMean(self, node, attrs):
        return self._reduce(attrs, "AVE")

    def _ReduceMax(self, node, attrs):
        return self._reduce(attrs, "MAX")
