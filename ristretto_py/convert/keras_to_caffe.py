"""Keras (channels_last) layers as Caffe (NCHW) layers, exactly or not at all.

Each Keras tensor becomes a Caffe blob; 4-D tensors are N x C x H x W in Caffe. Weights are
reordered (Conv2D HWIO -> OIHW; DepthwiseConv2D to a grouped convolution; Dense transposed, and
after a Flatten of an H x W x C tensor its rows permuted from Keras' (h, w, c) order to Caffe's
(c, h, w)). BatchNormalization becomes BatchNorm (scale factor 1, Keras' epsilon) + Scale.

Keras ``same`` padding pads ``total // 2`` before and the rest after; Caffe pads symmetrically, so
a ``same`` convolution converts only when the total padding is even (always true at stride 1 with
odd kernels). Pooling follows Caffe's window rules (``round_mode`` FLOOR where Keras' ``valid``
output is smaller than Caffe's default ceil). Anything Caffe cannot reproduce exactly is refused
with the layer's name and the reason.
"""
import dataclasses

import numpy as np

from ..errors import UnsupportedError
from ..layers.pooling import pooled_size
from ..net import Layer

ACTIVATIONS = {"relu": ("ReLU", {}), "sigmoid": ("Sigmoid", {}), "tanh": ("TanH", {}),
               "softmax": ("Softmax", {}), "relu6": ("Clip", {"clip_param": {"min": 0.0, "max": 6.0}})}
IDENTITY = ("Dropout", "SpatialDropout2D", "GaussianNoise", "GaussianDropout", "AlphaDropout",
            "ActivityRegularization")


@dataclasses.dataclass
class Tensor:
    blob: str
    shape: tuple                 # Keras shape without the batch: (H, W, C) or (F,)
    flat_from: tuple = None      # (H, W, C) when this (F,) tensor is a Keras Flatten of it
    pad: tuple = None            # pending ZeroPadding2D ((top, bottom), (left, right))


class Converter:
    def __init__(self, model, input_shape=None):
        self.model, self.input_shape = model, tuple(input_shape) if input_shape else None
        self.layers, self.tensors = [], {}

    def refuse(self, layer, reason):
        return UnsupportedError(f"{layer.class_name} cannot be converted exactly: {reason}",
                                path=self.model.source, layer=layer.name)

    def handler(self, layer):
        if layer.class_name in IDENTITY:
            return self._identity
        return getattr(self, f"_{layer.class_name}", None)

    def convert(self):
        # Layer types without a Caffe form are named first: their inputs (an LSTM's sequence,
        # say) would otherwise be refused for a shape, blaming the wrong layer.
        for layer in self.model.layers:
            if self.handler(layer) is None:
                raise self.refuse(layer, "no Caffe equivalent is implemented for this layer type")
        for layer in self.model.layers:
            handler = self.handler(layer)
            cfg = layer.config
            if cfg.get("data_format", "channels_last") != "channels_last":
                raise self.refuse(layer, "only channels_last models are supported")
            inputs = [self.tensors[ref] for ref in layer.inputs]
            if any(t.pad is not None for t in inputs) and layer.class_name not in ("Conv2D", "DepthwiseConv2D"):
                raise self.refuse(layer, "it follows a ZeroPadding2D, which only folds into a convolution")
            self.tensors[(layer.name, 0, 0)] = handler(layer, cfg, inputs)
        outputs = [self.tensors[ref] for ref in self.model.outputs]
        for t in outputs:
            if t.pad is not None or t.flat_from is not None:
                raise UnsupportedError("a model output is a ZeroPadding2D or a Flatten of an image "
                                       "tensor, whose element order Caffe does not share",
                                       path=self.model.source)
        return self.layers, [t.blob for t in outputs]

    # -- helpers --------------------------------------------------------------------------
    def add(self, name, type_, bottoms, tops, blobs=(), **params):
        self.layers.append(Layer.create(name, type_, bottoms, tops,
                                        [np.asarray(b, np.float32) for b in blobs], **params))

    def activation(self, layer, name, blob):
        if name in (None, "linear"):
            return
        if name not in ACTIVATIONS:
            raise self.refuse(layer, f"activation '{name}' has no Caffe layer")
        type_, params = ACTIVATIONS[name]
        if type_ == "Softmax":
            params = {"softmax_param": {"axis": 1}}
        self.add(f"{layer.name}_{name}", type_, [blob], [blob], **params)

    def weights(self, layer, count_min, count_max=None):
        w = layer.weights
        if not count_min <= len(w) <= (count_max or count_min):
            raise self.refuse(layer, f"the file holds {len(w)} weight arrays for it")
        return w

    def _same(self, layer, size, k_eff, stride):
        out = -(-size // stride)
        total = max((out - 1) * stride + k_eff - size, 0)
        if total % 2:
            raise self.refuse(layer, f"'same' padding of {total} pixels on a {size}-pixel side "
                                     f"(kernel {k_eff}, stride {stride}) is asymmetric; Caffe pads "
                                     "both sides equally")
        return total // 2, out

    def _conv_geometry(self, layer, cfg, tensor):
        (h, w, _), k = tensor.shape, tuple(cfg["kernel_size"])
        s, d = tuple(cfg.get("strides", (1, 1))), tuple(cfg.get("dilation_rate", (1, 1)))
        k_eff = tuple(dd * (kk - 1) + 1 for kk, dd in zip(k, d))
        pads, outs = [], []
        for size, ke, st, i in ((h, k_eff[0], s[0], 0), (w, k_eff[1], s[1], 1)):
            if cfg.get("padding") == "same":
                if tensor.pad is not None:
                    raise self.refuse(layer, "ZeroPadding2D before a 'same' convolution")
                p, o = self._same(layer, size, ke, st)
            else:
                p = 0
                if tensor.pad is not None:
                    before, after = tensor.pad[i]
                    if before != after:
                        raise self.refuse(layer, f"the ZeroPadding2D before it pads {before} and "
                                                 f"{after} pixels; Caffe pads symmetrically")
                    p, size = before, size + before + after
                o = (size - ke) // st + 1
            pads.append(p)
            outs.append(o)
        return k, s, d, pads, outs

    # -- layers ---------------------------------------------------------------------------
    def _InputLayer(self, layer, cfg, inputs):
        shape = tuple(cfg.get("batch_shape") or cfg.get("batch_input_shape"))[1:]
        batch = 1
        if self.input_shape is not None:       # N,C,H,W (or N,F) from the command line
            given = self.input_shape
            keras_shape = (given[2], given[3], given[1]) if len(given) == 4 else tuple(given[1:])
            if len(keras_shape) != len(shape) or any(a is not None and a != b for a, b in zip(shape, keras_shape)):
                raise self.refuse(layer, f"--input-shape {list(given)} does not fit the model's "
                                         f"input {list(shape)} (channels last)")
            shape, batch = keras_shape, given[0]
        if None in shape or len(shape) not in (1, 3):
            raise self.refuse(layer, f"input shape {list(shape)}: give --input-shape N,C,H,W")
        dims = [batch] + ([shape[2], shape[0], shape[1]] if len(shape) == 3 else list(shape))
        self.add(layer.name, "Input", [], [layer.name], input_param={"shape": [{"dim": dims}]})
        return Tensor(layer.name, shape)

    def _Conv2D(self, layer, cfg, inputs):
        (x,) = inputs
        k, s, d, pads, (ho, wo) = self._conv_geometry(layer, cfg, x)
        groups = int(cfg.get("groups", 1))
        w = self.weights(layer, 1, 2)
        kernel = w[0].transpose(3, 2, 0, 1)
        self.add(layer.name, "Convolution", [x.blob], [layer.name], [kernel] + list(w[1:]),
                 convolution_param={"num_output": int(cfg["filters"]), "kernel_h": k[0], "kernel_w": k[1],
                                    "stride_h": s[0], "stride_w": s[1], "pad_h": pads[0], "pad_w": pads[1],
                                    "dilation": list(d), "group": groups, "bias_term": len(w) > 1})
        self.activation(layer, cfg.get("activation"), layer.name)
        return Tensor(layer.name, (ho, wo, int(cfg["filters"])))

    def _DepthwiseConv2D(self, layer, cfg, inputs):
        (x,) = inputs
        k, s, d, pads, (ho, wo) = self._conv_geometry(layer, cfg, x)
        w = self.weights(layer, 1, 2)
        kh, kw, channels, multiplier = w[0].shape
        kernel = w[0].transpose(2, 3, 0, 1).reshape(channels * multiplier, 1, kh, kw)
        self.add(layer.name, "Convolution", [x.blob], [layer.name], [kernel] + list(w[1:]),
                 convolution_param={"num_output": channels * multiplier, "kernel_h": k[0], "kernel_w": k[1],
                                    "stride_h": s[0], "stride_w": s[1], "pad_h": pads[0], "pad_w": pads[1],
                                    "dilation": list(d), "group": channels, "bias_term": len(w) > 1})
        self.activation(layer, cfg.get("activation"), layer.name)
        return Tensor(layer.name, (ho, wo, channels * multiplier))

    def _Dense(self, layer, cfg, inputs):
        (x,) = inputs
        w = self.weights(layer, 1, 2)
        units = int(cfg["units"])
        if len(x.shape) == 3:                      # per position: a 1x1 convolution
            kernel = w[0].T.reshape(units, -1, 1, 1)
            self.add(layer.name, "Convolution", [x.blob], [layer.name], [kernel] + list(w[1:]),
                     convolution_param={"num_output": units, "kernel_size": [1], "bias_term": len(w) > 1})
            out = Tensor(layer.name, x.shape[:2] + (units,))
        elif len(x.shape) == 1:
            kernel = w[0]
            if x.flat_from is not None:
                h, wd, c = x.flat_from
                order = np.arange(h * wd * c).reshape(h, wd, c).transpose(2, 0, 1).ravel()
                kernel = kernel[order]
            self.add(layer.name, "InnerProduct", [x.blob], [layer.name], [kernel.T] + list(w[1:]),
                     inner_product_param={"num_output": units, "bias_term": len(w) > 1})
            out = Tensor(layer.name, (units,))
        else:
            raise self.refuse(layer, f"a Dense on a rank-{len(x.shape) + 1} tensor")
        self.activation(layer, cfg.get("activation"), layer.name)
        return out

    def _BatchNormalization(self, layer, cfg, inputs):
        (x,) = inputs
        axis = cfg.get("axis", -1)
        axis = axis[0] if isinstance(axis, list) and len(axis) == 1 else axis
        if axis not in (-1, len(x.shape)):
            raise self.refuse(layer, f"normalising axis {axis}; only the channel axis maps to Caffe")
        w = list(self.weights(layer, 2, 4))
        channels = x.shape[-1]
        gamma = w.pop(0) if cfg.get("scale", True) else np.ones(channels)
        beta = w.pop(0) if cfg.get("center", True) else np.zeros(channels)
        mean, var = w
        self.add(layer.name, "BatchNorm", [x.blob], [layer.name], [mean, var, [1.0]],
                 batch_norm_param={"use_global_stats": True, "eps": float(cfg.get("epsilon", 1e-3))})
        self.add(f"{layer.name}_scale", "Scale", [layer.name], [layer.name], [gamma, beta],
                 scale_param={"bias_term": True})
        return Tensor(layer.name, x.shape, x.flat_from)

    def _Activation(self, layer, cfg, inputs):
        (x,) = inputs
        name = cfg.get("activation")
        if name in (None, "linear"):
            return x
        if name not in ACTIVATIONS:
            raise self.refuse(layer, f"activation '{name}' has no Caffe layer")
        type_, params = ACTIVATIONS[name]
        if type_ == "Softmax":
            params = {"softmax_param": {"axis": 1}}
        self.add(layer.name, type_, [x.blob], [layer.name], **params)
        return Tensor(layer.name, x.shape, x.flat_from)

    def _ReLU(self, layer, cfg, inputs):
        (x,) = inputs
        slope, top, threshold = (float(cfg.get("negative_slope") or 0), cfg.get("max_value"),
                                 float(cfg.get("threshold") or 0))
        if threshold != 0:
            raise self.refuse(layer, f"threshold {threshold}: Caffe's ReLU cuts at 0")
        if top is not None:
            if slope != 0:
                raise self.refuse(layer, "max_value together with negative_slope")
            self.add(layer.name, "Clip", [x.blob], [layer.name], clip_param={"min": 0.0, "max": float(top)})
        else:
            self.add(layer.name, "ReLU", [x.blob], [layer.name], relu_param={"negative_slope": slope})
        return Tensor(layer.name, x.shape, x.flat_from)

    def _LeakyReLU(self, layer, cfg, inputs):
        (x,) = inputs
        slope = cfg.get("negative_slope", cfg.get("alpha", 0.3))
        self.add(layer.name, "ReLU", [x.blob], [layer.name], relu_param={"negative_slope": float(slope)})
        return Tensor(layer.name, x.shape, x.flat_from)

    def _Softmax(self, layer, cfg, inputs):
        (x,) = inputs
        if cfg.get("axis", -1) not in (-1, len(x.shape)):
            raise self.refuse(layer, "softmax over an axis other than the channels")
        self.add(layer.name, "Softmax", [x.blob], [layer.name], softmax_param={"axis": 1})
        return Tensor(layer.name, x.shape)

    def _pool(self, layer, cfg, inputs, method):
        (x,) = inputs
        k = tuple(cfg["pool_size"])
        s = tuple(cfg.get("strides") or k)
        params = {"pool": method, "kernel_h": k[0], "kernel_w": k[1], "stride_h": s[0], "stride_w": s[1]}
        outs, pads, modes = [], [], []
        for size, kk, st in ((x.shape[0], k[0], s[0]), (x.shape[1], k[1], s[1])):
            if cfg.get("padding") == "same":
                out = -(-size // st)
                total = max((out - 1) * st + kk - size, 0)
                if method == "AVE" and total:
                    raise self.refuse(layer, "'same' average pooling divides by the valid cells "
                                             "only; Caffe counts the padding")
                p = total // 2
            else:
                out, p = (size - kk) // st + 1, 0
            mode = next((m for m in ("CEIL", "FLOOR") if pooled_size(size, kk, st, p, m == "CEIL") == out), None)
            if mode is None or p >= kk:
                raise self.refuse(layer, f"no Caffe pooling window layout gives Keras' {out} outputs")
            outs.append(out)
            pads.append(p)
            modes.append(mode)
        if modes[0] != modes[1]:
            raise self.refuse(layer, "the two axes need different rounding modes")
        params.update(pad_h=pads[0], pad_w=pads[1])
        if modes[0] == "FLOOR":
            params["round_mode"] = "FLOOR"
        self.add(layer.name, "Pooling", [x.blob], [layer.name], pooling_param=params)
        return Tensor(layer.name, (outs[0], outs[1], x.shape[2]))

    def _MaxPooling2D(self, layer, cfg, inputs):
        return self._pool(layer, cfg, inputs, "MAX")

    def _AveragePooling2D(self, layer, cfg, inputs):
        return self._pool(layer, cfg, inputs, "AVE")

    def _global(self, layer, cfg, inputs, method):
        (x,) = inputs
        self.add(layer.name, "Pooling", [x.blob], [layer.name], pooling_param={"pool": method, "global_pooling": True})
        if cfg.get("keepdims"):
            return Tensor(layer.name, (1, 1, x.shape[2]))
        self.add(f"{layer.name}_flatten", "Flatten", [layer.name], [f"{layer.name}_flat"])
        return Tensor(f"{layer.name}_flat", (x.shape[2],))

    def _GlobalAveragePooling2D(self, layer, cfg, inputs):
        return self._global(layer, cfg, inputs, "AVE")

    def _GlobalMaxPooling2D(self, layer, cfg, inputs):
        return self._global(layer, cfg, inputs, "MAX")

    def _Flatten(self, layer, cfg, inputs):
        (x,) = inputs
        if len(x.shape) == 1:
            return x
        self.add(layer.name, "Flatten", [x.blob], [layer.name])
        flat = x.shape if x.shape[:2] != (1, 1) else None
        return Tensor(layer.name, (int(np.prod(x.shape)),), flat)

    def _Reshape(self, layer, cfg, inputs):
        (x,) = inputs
        target = tuple(cfg["target_shape"])
        if len(x.shape) == 1 and len(target) == 3 and target[:2] == (1, 1):
            self.add(layer.name, "Reshape", [x.blob], [layer.name],
                     reshape_param={"shape": {"dim": [0, target[2], 1, 1]}})
            return Tensor(layer.name, target)
        if len(x.shape) == 3 and x.shape[:2] == (1, 1) and len(target) == 1:
            return self._Flatten(layer, cfg, inputs)
        if tuple(x.shape) == target:
            return x
        raise self.refuse(layer, f"reshaping {list(x.shape)} to {list(target)} reorders elements "
                                 "between Keras' channels-last and Caffe's channels-first layouts")

    def _ZeroPadding2D(self, layer, cfg, inputs):
        (x,) = inputs
        pad = cfg.get("padding", 1)
        if isinstance(pad, int):
            pad = ((pad, pad), (pad, pad))
        pad = tuple(tuple(p) if isinstance(p, (list, tuple)) else (p, p) for p in pad)
        return Tensor(x.blob, (x.shape[0], x.shape[1], x.shape[2]), pad=pad)

    def _Concatenate(self, layer, cfg, inputs):
        rank = len(inputs[0].shape)
        axis = cfg.get("axis", -1) % (rank + 1)
        caffe_axis = {1: 2, 2: 3, 3: 1}[axis] if rank == 3 else 1
        if any(t.flat_from is not None for t in inputs) or (rank == 1 and axis != 1):
            raise self.refuse(layer, "concatenating flattened image tensors")
        self.add(layer.name, "Concat", [t.blob for t in inputs], [layer.name], concat_param={"axis": caffe_axis})
        shape = list(inputs[0].shape)
        shape[axis - 1] = sum(t.shape[axis - 1] for t in inputs)
        return Tensor(layer.name, tuple(shape))

    def _eltwise(self, layer, inputs, operation, coeff=None):
        if len({t.shape for t in inputs}) != 1 or any(t.flat_from is not None for t in inputs):
            raise self.refuse(layer, "its inputs differ in shape (Caffe's Eltwise does not broadcast)")
        params = {"operation": operation}
        if coeff:
            params["coeff"] = coeff
        self.add(layer.name, "Eltwise", [t.blob for t in inputs], [layer.name], eltwise_param=params)
        return Tensor(layer.name, inputs[0].shape)

    def _Add(self, layer, cfg, inputs):
        return self._eltwise(layer, inputs, "SUM")

    def _Subtract(self, layer, cfg, inputs):
        return self._eltwise(layer, inputs, "SUM", [1.0, -1.0])

    def _Average(self, layer, cfg, inputs):
        return self._eltwise(layer, inputs, "SUM", [1.0 / len(inputs)] * len(inputs))

    def _Multiply(self, layer, cfg, inputs):
        return self._eltwise(layer, inputs, "PROD")

    def _Maximum(self, layer, cfg, inputs):
        return self._eltwise(layer, inputs, "MAX")

    def _identity(self, layer, cfg, inputs):
        return inputs[0]


def keras_to_layers(model, input_shape=None):
    """(Caffe layers, output blob names) for a KerasModel."""
    return Converter(model, input_shape).convert()
