"""Activation quantizers (LPDNN's linear and Gaussian uniform quantizers, HWCE's clip-and-floor)
as a pass: calibrate each selected layer's output on data with the float net, then insert an
``ActivationQuantize`` layer (ristretto-py's own type) in place after the layer.

Calibration keeps, per layer, the running min/max (linear), the running mean and variance
(Gaussian), or the values' magnitudes for the percentile (HWCE; above 4M values a deterministic
strided sample of each batch is kept).
"""
import numpy as np

from ristretto_py.errors import RistrettoError
from ristretto_py.net import Layer
from ristretto_py.progress import progress as show_progress
from ristretto_py.runtime import NumpyRuntime

from .kmeans import select_layers

ACTIVATION_KINDS = ("linear", "gaussian", "hwce")
SAMPLE_LIMIT = 1 << 22


class _Statistics:
    def __init__(self):
        self.low, self.high = np.inf, -np.inf
        self.count, self.total, self.squares = 0, 0.0, 0.0
        self.magnitudes = []

    def add(self, values, keep_magnitudes):
        x = np.asarray(values, np.float64).ravel()
        self.low, self.high = min(self.low, x.min()), max(self.high, x.max())
        self.count += x.size
        self.total += x.sum()
        self.squares += np.square(x).sum()
        if keep_magnitudes:
            stride = max(1, x.size // SAMPLE_LIMIT)
            self.magnitudes.append(np.abs(x[::stride]).astype(np.float32))


def calibrate_activations(net, quantizer, layer_names, batches, progress=False):
    """{layer name: ActivationQuantizationParameter fields} for the selected layers' outputs."""
    if quantizer.kind not in ACTIVATION_KINDS:
        raise RistrettoError(f"{quantizer} quantizes weights only; activations take "
                             "linear:N, gaussian:N:C or hwce:N:P")
    chosen = {l.name for l in select_layers(net, layer_names)}
    stats = {name: _Statistics() for name in chosen}

    def observe(layer, bottoms, tops):
        if layer.name in stats:
            stats[layer.name].add(tops[0], quantizer.kind == "hwce")
    runtime = NumpyRuntime(net)
    for batch in show_progress(batches, "calibrating activations", "batch", progress):
        runtime.forward(batch, observer=observe)
    fields = {}
    for name, s in stats.items():
        if quantizer.kind == "hwce":
            constants = quantizer.calibrate(np.concatenate(s.magnitudes))
            fields[name] = {"method": 1, "bits": quantizer.bits, "msb": constants["msb"]}
            continue
        if quantizer.kind == "linear":
            low, high = s.low, s.high
        else:
            mean = s.total / s.count
            std = np.sqrt(max(s.squares / s.count - mean * mean, 0.0))
            low, high = mean - quantizer.c * std, mean + quantizer.c * std
        if not high > low:
            high = low + 1e-6
        fields[name] = {"method": 0, "bits": quantizer.bits, "low": float(low), "high": float(high)}
    return fields


def insert_activation_quantizers(net, fields):
    """``net`` with an ActivationQuantize layer right after each layer named in ``fields``."""
    layers = []
    for layer in net.layers:
        layers.append(layer)
        if layer.name in fields:
            top = layer.tops[0]
            layers.append(Layer.create(f"{layer.name}_quantize", "ActivationQuantize", [top], [top],
                                       activation_quantization_param=fields[layer.name]))
    return net.with_layers(layers)
