"""BatchNorm folding (DESIGN section 3): merge every TEST-phase BatchNorm, and the Scale that
follows it, into the Convolution or InnerProduct that feeds it.

With the statistics of the BatchNorm (mean, var: its blobs divided by the stored factor s, zero
for s = 0), its eps, and the Scale's gamma and beta (1 and 0 when there is no Scale):
``k = gamma / sqrt(var + eps)``, ``W' = W * k`` per output channel, ``b' = (b - mean) * k + beta``.
A layer without a bias gets one. Folding is exact up to float rounding (computed in float64).

A BatchNorm folds when the blob it reads was written by a Convolution/InnerProduct (over its
channel axis) and nobody else reads that blob in between; the Scale joins when it is a per-channel
Scale (axis 1, one axis, learned) and the only reader of the BatchNorm's output. Every other
BatchNorm (after an Input, Concat, Pooling or Eltwise, or on a blob with other readers) becomes a
depthwise 1x1 Convolution (group = channels: one weight and one bias per channel, a form Ristretto
can quantize); on a blob without spatial axes, a Scale with bias. In-place chains keep their names;
a replacement of an in-place BatchNorm needs a new top (a convolution cannot run in place) and the
later readers are renamed.
"""
import dataclasses

import numpy as np

from ristretto_py.errors import NetError
from ristretto_py.net import Layer

FOLD_INTO = ("Convolution", "InnerProduct")


@dataclasses.dataclass
class FoldReport:
    folded: list = dataclasses.field(default_factory=list)      # (batchnorm, scale or None, into)
    replaced: list = dataclasses.field(default_factory=list)    # (batchnorm, scale or None, new type)
    skipped: list = dataclasses.field(default_factory=list)     # (batchnorm, reason)

    @property
    def changed(self):
        return bool(self.folded or self.replaced)


def _readers(layers, start, blob):
    """Indices of layers after ``start`` that read ``blob`` before a later layer (other than an
    in-place one) replaces it; in-place writers end the version they rewrite."""
    readers = []
    for index in range(start + 1, len(layers)):
        layer = layers[index]
        if blob in layer.bottoms:
            readers.append(index)
        if blob in layer.tops:
            break
    return readers


def _statistics(layer):
    spec = layer.spec.batch_norm_param
    if spec.HasField("use_global_stats") and not spec.use_global_stats:
        return None
    mean, var, factor = (np.asarray(b, np.float64).reshape(-1) for b in layer.blobs)
    scale = 0.0 if factor[0] == 0 else 1.0 / factor[0]
    return mean * scale, var * scale, float(np.float32(spec.eps))


def _scale_params(layer, channels):
    """(gamma, beta) of a per-channel learned Scale, else None."""
    p = layer.spec.scale_param
    if layer.type != "Scale" or len(layer.bottoms) != 1 or p.axis != 1 or p.num_axes != 1:
        return None
    gamma = np.asarray(layer.blobs[0], np.float64).reshape(-1)
    beta = np.asarray(layer.blobs[1], np.float64).reshape(-1) if p.bias_term else np.zeros(channels)
    return (gamma, beta) if gamma.size == channels else None


def _following_scale(layers, index, channels):
    """Index and (gamma, beta) of the Scale that is the only reader of layer ``index``'s output."""
    top = layers[index].tops[0]
    readers = _readers(layers, index, top)
    if len(readers) == 1:
        params = _scale_params(layers[readers[0]], channels)
        if params is not None and layers[readers[0]].bottoms[0] == top:
            return readers[0], params
    return None, None


def _producer(layers, index, blob):
    """Index of the layer whose output ``blob`` layer ``index`` reads."""
    for i in range(index - 1, -1, -1):
        if blob in layers[i].tops:
            return i
    return None


def _foldable_into(layers, net, index, producer, blob):
    layer = layers[producer]
    if layer.type not in FOLD_INTO or len(layer.tops) != 1 or layer.in_place:
        return False
    if layer.spec.HasField("weight_quantization_param"):
        return False            # its quantizer would see the folded weights, not the trained ones
    if _readers(layers, producer, blob) != [index]:
        return False
    if layer.type == "InnerProduct":
        shape = net.shapes()[blob]
        return len(shape) == 2 and layer.spec.inner_product_param.axis in (1, -1)
    return True


def fold_batchnorm(net):
    """A new Net with every BatchNorm folded or replaced, and a FoldReport."""
    if not net.has_weights:
        raise NetError("folding needs the weights: give a caffemodel", path=net.source)
    layers = list(net.layers)
    report = FoldReport()
    shapes = net.shapes()
    index = 0
    while index < len(layers):
        layer = layers[index]
        if layer.type != "BatchNorm":
            index += 1
            continue
        stats = _statistics(layer)
        if stats is None:
            report.skipped.append((layer.name, "use_global_stats is false: batch statistics"))
            index += 1
            continue
        mean, var, eps = stats
        channels = mean.size
        scale_index, scale = _following_scale(layers, index, channels)
        gamma, beta = scale if scale else (np.ones(channels), np.zeros(channels))
        k = gamma / np.sqrt(var + eps)
        shift = beta - mean * k
        last = layers[scale_index] if scale_index is not None else layer
        final_top = last.tops[0]
        bottom = layer.bottoms[0]
        producer = _producer(layers, index, bottom)
        removed = [i for i in (index, scale_index) if i is not None]
        if producer is not None and _foldable_into(layers, net, index, producer, bottom):
            layers[producer] = _folded(layers[producer], k, shift, mean, final_top)
            report.folded.append((layer.name, last.name if scale else None, layers[producer].name))
            # The producer now writes the last folded top directly; the blobs in between had
            # no other readers, so nothing else needs renaming.
            for i in sorted(removed, reverse=True):
                del layers[i]
            index = producer + 1
            continue
        replacement, new_top = _replacement(layer, k, shift, shapes[bottom], final_top, layers)
        report.replaced.append((layer.name, last.name if scale else None, replacement.type))
        for i in sorted(removed, reverse=True):
            del layers[i]
        layers.insert(index, replacement)
        if new_top != final_top:
            _rename_after(layers, index, final_top, new_top)
        index += 1
    return net.with_layers(layers), report


def _folded(layer, k, shift, mean, top):
    """``layer`` (Convolution/InnerProduct) with the per-output-channel affine map folded in."""
    weight = np.asarray(layer.blobs[0], np.float64)
    spec = layer.spec
    if layer.type == "InnerProduct" and spec.inner_product_param.transpose:
        weight = weight * k.reshape(1, -1)
    else:
        weight = weight * k.reshape((-1,) + (1,) * (weight.ndim - 1))
    param_name = "convolution_param" if layer.type == "Convolution" else "inner_product_param"
    param = getattr(spec, param_name)
    bias = np.asarray(layer.blobs[1], np.float64).reshape(-1) if param.bias_term else np.zeros(k.size)
    new_bias = bias * k + shift
    new_spec = layer.to_proto(include_blobs=False)
    getattr(new_spec, param_name).bias_term = True
    del new_spec.top[:]
    new_spec.top.append(top)
    return Layer(new_spec, [weight.astype(np.float32), new_bias.astype(np.float32)])


def _replacement(layer, k, shift, shape, top, layers):
    """A depthwise 1x1 Convolution (or, without spatial axes, a Scale with bias) for a BatchNorm
    that cannot be folded; returns it and its top name."""
    bottom = layer.bottoms[0]
    channels = k.size
    if top == bottom:      # a convolution cannot run in place: give it a fresh top
        top = _unique_blob(f"{bottom}_{layer.name}", layers)
    if len(shape) == 4:
        new = Layer.create(layer.name, "Convolution", [bottom], [top],
                           [k.reshape(channels, 1, 1, 1).astype(np.float32), shift.astype(np.float32)],
                           convolution_param=dict(num_output=channels, kernel_size=[1],
                                                  group=channels, bias_term=True))
        return new, top
    new = Layer.create(layer.name, "Scale", [bottom], [layer.tops[0] if layer.tops[0] == bottom else top],
                       [k.astype(np.float32), shift.astype(np.float32)],
                       scale_param=dict(axis=1, num_axes=1, bias_term=True))
    return new, new.tops[0]


def _unique_blob(name, layers):
    used = {b for layer in layers for b in layer.bottoms + layer.tops}
    candidate, n = name, 1
    while candidate in used:
        candidate, n = f"{name}_{n}", n + 1
    return candidate


def _rename_after(layers, index, old, new):
    """Later layers read (and rewrite in place) ``new`` where they named ``old``."""
    for i in range(index + 1, len(layers)):
        layer = layers[i]
        if old in layer.bottoms or old in layer.tops:
            layers[i] = layer.replace(bottom=[new if b == old else b for b in layer.bottoms],
                                      top=[new if t == old else t for t in layer.tops])


def parameter_count(net):
    return int(sum(np.size(b) for layer in net.layers for b in layer.blobs))
