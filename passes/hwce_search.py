"""``tools/quantize --trimming_mode hwce``: PULP's HWCE model for every Convolution layer.

MSB exponents: per layer, for the kernel, the layer input and the layer output, the ceiling of
log2 of the given percentile of |x| (kernel: its weights; input/output: over the range-analysis
batches of the TRAIN net, or the calibration data given), or one fixed ``msb`` for all. Then, as in the other modes, widths are
tried from wide to narrow and the search stops at the first failure: kernels 16, 8, 6, 4 (signals
at 16), then inputs/outputs together 16, 8, 6, 4 (kernels at 16); the smallest passing of each
(16 if none passes) is combined and scored. The layers become ConvolutionHWCE with ``hwce_param``.
"""
import math

import numpy as np

from ristretto_py.errors import RistrettoError
from ristretto_py.protos import caffe_pb2
from ristretto_py.runtime import NumpyRuntime

from .ristretto_edit import without_state
from .ristretto_quantize import Candidate, QuantizeResult

HWCE_WIDTHS = (16, 8, 6, 4)
SAMPLE_LIMIT = 1 << 22


def _msb(values, percentile):
    top = float(np.percentile(np.abs(np.asarray(values, np.float64)), percentile))
    return math.ceil(math.log2(top)) if top > 0 else 0


def calibrate_msbs(quantizer, percentile=None, msb=None):
    """{layer: {"kernel": m, "input": m, "output": m}} for every Convolution layer."""
    train = quantizer.build(quantizer.param, "TRAIN")
    convs = [l for l in train.layers if l.type == "Convolution"]
    if not convs:
        raise RistrettoError("hwce mode quantizes Convolution layers, and the net has none")
    if msb is not None:
        return {l.name: {"kernel": msb, "input": msb, "output": msb} for l in convs}
    samples = {l.name: {"input": [], "output": []} for l in convs}

    def observe(layer, bottoms, tops):
        if layer.name in samples:
            for key, value in (("input", bottoms[0]), ("output", tops[0])):
                flat = np.abs(np.asarray(value, np.float32)).ravel()
                samples[layer.name][key].append(flat[::max(1, flat.size // SAMPLE_LIMIT)])
    runtime = NumpyRuntime(train)
    batches = quantizer.calibration_batches(train)
    for batch in batches:
        runtime.forward(batch, observer=observe)
    quantizer.forward_passes += len(batches)
    return {l.name: {"kernel": _msb(l.blobs[0], percentile),
                     "input": _msb(np.concatenate(samples[l.name]["input"]), percentile),
                     "output": _msb(np.concatenate(samples[l.name]["output"]), percentile)}
            for l in convs}


def hwce_edit(param, msbs, kernel_bits, signal_bits):
    edited = caffe_pb2.NetParameter()
    edited.CopyFrom(param)
    for layer in edited.layer:
        if layer.type in ("Convolution", "ConvolutionHWCE") and layer.name in msbs:
            layer.type = "ConvolutionHWCE"
            h, m = layer.hwce_param, msbs[layer.name]
            h.kernel_bits, h.input_bits, h.output_bits = kernel_bits, signal_bits, signal_bits
            h.kernel_msb, h.input_msb, h.output_msb = m["kernel"], m["input"], m["output"]
    return edited


def search_hwce(quantizer, percentile=99.99, msb=None):
    baseline = quantizer.baseline()
    msbs = calibrate_msbs(quantizer, percentile, msb)
    candidates, chosen = [], {}
    for stage, make in (("kernels", lambda b: hwce_edit(quantizer.param, msbs, b, 16)),
                        ("activations", lambda b: hwce_edit(quantizer.param, msbs, 16, b))):
        chosen[stage] = 16
        for bits in HWCE_WIDTHS:
            score = quantizer.evaluate(make(bits), f"hwce {stage} {bits}-bit")
            ok = quantizer.passes(score, baseline)
            candidates.append(Candidate(stage, bits, float(score), ok))
            if not ok:
                break
            chosen[stage] = bits
    final = hwce_edit(quantizer.param, msbs, chosen["kernels"], chosen["activations"])
    score = quantizer.evaluate(final, "hwce net")
    result = QuantizeResult("hwce", float(baseline), candidates, chosen, float(score),
                            without_state(final), {}, {})
    result.forward_passes = quantizer.forward_passes
    return result, msbs
