"""Caffe's fillers (``include/caffe/filler.hpp``): the initial values of a blob the net does
not carry, from its ``FillerParameter``, drawn from a seeded numpy generator, float32.

* constant: ``value``; uniform: U[min, max); gaussian: N(mean, std), and with ``sparse`` >= 0
  each value kept with probability sparse / shape[0] (else 0);
* positive_unitball: U[0, 1) with each of the shape[0] rows divided by its sum;
* xavier: U[-a, a] with a = sqrt(3 / n); msra: N(0, sqrt(2 / n)); n is fan_in = count /
  shape[0], fan_out = count / shape[1] (count for a 1-D blob) or their mean, by
  ``variance_norm`` (FAN_IN, FAN_OUT, AVERAGE);
* bilinear: a square (…, K, K) blob, every K x K kernel ``(1 - |x/f - c|)(1 - |y/f - c|)``
  with f = ceil(K / 2), c = (K - 1) / (2 f) (Deconvolution upsampling).
Caffe's random streams are not reproduced; the same seed gives the same values.
"""
import math

import numpy as np

from ...errors import NetError
from ...protos import caffe_pb2

FillerParameter = caffe_pb2.FillerParameter


def fan_in_out(shape):
    count = math.prod(shape)
    fan_in = count // shape[0]
    fan_out = count // shape[1] if len(shape) > 1 else count
    return fan_in, fan_out


def _variance_n(param, shape):
    fan_in, fan_out = fan_in_out(shape)
    if param.variance_norm == FillerParameter.AVERAGE:
        return (fan_in + fan_out) / 2.0
    if param.variance_norm == FillerParameter.FAN_OUT:
        return float(fan_out)
    return float(fan_in)


def fill(param, shape, rng, layer=None):
    """A float32 array of ``shape`` filled as ``param`` (a FillerParameter) says."""
    shape = tuple(int(d) for d in shape)
    kind = param.type
    if not shape or math.prod(shape) == 0:
        raise NetError(f"cannot fill a blob of shape {list(shape)}", layer=layer)
    if param.sparse != -1 and kind != "gaussian":
        raise NetError(f"the {kind} filler does not support sparse", layer=layer)
    if kind == "constant":
        values = np.full(shape, param.value)
    elif kind == "uniform":
        values = rng.uniform(param.min, param.max, shape)
    elif kind == "gaussian":
        values = rng.normal(param.mean, param.std, shape)
        if param.sparse < -1:
            raise NetError("gaussian filler: sparse must be -1 or more", layer=layer)
        if param.sparse >= 0:
            values = values * (rng.random(shape) < param.sparse / shape[0])
    elif kind == "positive_unitball":
        values = rng.random(shape).reshape(shape[0], -1)
        values = (values / values.sum(axis=1, keepdims=True)).reshape(shape)
    elif kind == "xavier":
        scale = math.sqrt(3.0 / _variance_n(param, shape))
        values = rng.uniform(-scale, scale, shape)
    elif kind == "msra":
        values = rng.normal(0.0, math.sqrt(2.0 / _variance_n(param, shape)), shape)
    elif kind == "bilinear":
        values = bilinear(shape, layer)
    else:
        raise NetError(f"unknown filler type '{kind}' (Caffe's are constant, uniform, gaussian, "
                       "positive_unitball, xavier, msra, bilinear)", layer=layer)
    return np.ascontiguousarray(values, dtype=np.float32)


def bilinear(shape, layer=None):
    """Caffe's bilinear upsampling kernel, the same for every (…) position of a 4-D blob."""
    if len(shape) != 4 or shape[2] != shape[3]:
        raise NetError(f"the bilinear filler needs a 4-D blob with square kernels, got "
                       f"{list(shape)}", layer=layer)
    size = shape[3]
    f = math.ceil(size / 2.0)
    c = np.float32((size - 1) / (2.0 * f))
    position = np.arange(size, dtype=np.float32) / np.float32(f)
    profile = np.float32(1) - np.abs(position - c)
    return np.broadcast_to(np.outer(profile, profile), shape).astype(np.float32)
