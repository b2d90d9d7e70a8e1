"""Sensitivity analysis (LPDNN/QUENN style) and the cached evaluations our own searches use.

``CachedEvaluator`` scores per-layer dynamic-fixed-point configurations of a net on fixed
batches. A configuration is {layer: (bw_params, bw_activations)}; the integer lengths come from
the range analysis. It keeps, per batch, snapshots of a reference configuration's blobs in front
of every Convolution/InnerProduct layer, so a configuration that differs from the reference only
from layer L on is computed from L's snapshot: the unchanged prefix is never recomputed.

Scores: the quantizer's measure (``evaluators.scores``: accuracy, agreement, l2/cosine distance
or LFW), read from the recorded blobs; the float net's blobs are its reference.

``analyze`` quantizes one layer at a time (its weights, or its activations) at each candidate
width and reports the score and the L2 (Frobenius) distance of every later blob to the float
net's, averaged over images.
"""
import dataclasses

import numpy as np

from ristretto_py.progress import progress as show_progress
from ristretto_py.runtime import NumpyRuntime

from ristretto_py.layers.formats import operands

from . import ristretto_edit as edit

QUANTIZED_TYPES = ("Convolution", "InnerProduct")


@dataclasses.dataclass
class SensitivityRow:
    layer: str
    part: str            # weights | activations
    bits: int
    score: float
    distances: dict      # blob -> mean L2 distance to the float blob


class CachedEvaluator:
    def __init__(self, quantizer, lengths, progress=False):
        self.quantizer, self.lengths = quantizer, lengths
        self.measure = quantizer.measure
        self.progress = progress
        self.batches = quantizer.test_batches()
        self.float_net = quantizer.build(quantizer.param)
        self.layers = [l.name for l in self.float_net.layers if l.type in QUANTIZED_TYPES
                       or (getattr(quantizer, "all_layers", False) and l.name in lengths)]
        # stock layers with nothing to trim but their activations (--all_layers)
        self.no_weights = {l.name for l, impl in zip(self.float_net.layers, self.float_net.impls)
                           if l.name in self.layers and l.type not in QUANTIZED_TYPES
                           and not operands(impl, l.blobs)}
        self.index = {l.name: i for i, l in enumerate(self.float_net.layers)}
        self.points = sorted(self.index[name] for name in self.layers)
        self.measure.check(self.float_net)
        self.evaluations = 0
        self.float_blobs, self.float_snapshots = self._record(self.float_net)
        if not self.measure.bound:
            self.measure.bind(self.float_blobs)
        self.reference = ({}, self.float_blobs, self.float_snapshots)

    @property
    def shown_blob(self):
        """The blob whose distance to float a table shows: the measured blob, else the last."""
        return self.measure.blob if self.measure.blob in self.float_blobs[0] else None

    def _record(self, net, start=None, snapshots=None):
        runtime = NumpyRuntime(net, compat=self.quantizer.compat, seed=self.quantizer.seed)
        blobs, snaps = [], []
        for i, batch in enumerate(self.batches):
            if start is None:
                b, s = runtime.record(batch, self.points)
            else:
                b, s = runtime.resume(snapshots[i][start], start, record=[p for p in self.points if p > start])
                s = {**{k: v for k, v in snapshots[i].items() if k <= start}, **s}
            blobs.append(b)
            snaps.append(s)
        self.evaluations += 1
        self.quantizer.forward_passes += len(self.batches)
        return blobs, snaps

    def net_for(self, config):
        param = edit.per_layer_dynamic_fixed_point(self.quantizer.param, self.lengths, config)
        return self.quantizer.build(self.quantizer.formatted(param))

    def score(self, blobs):
        return self.measure(blobs)

    def evaluate(self, config, reference=None):
        """(score, blobs, snapshots) of ``config``, reusing the reference configuration's
        snapshots in front of the first layer where the two differ."""
        ref_config, _, ref_snapshots = reference or self.reference
        changed = [name for name in self.layers if config.get(name) != ref_config.get(name)]
        if not changed:
            _, blobs, snapshots = reference or self.reference
            return self.score(blobs), blobs, snapshots
        start = min(self.index[name] for name in changed)
        blobs, snapshots = self._record(self.net_for(config), start, ref_snapshots)
        return self.score(blobs), blobs, snapshots

    def distances(self, blobs, start):
        """Mean per-image L2 distance to the float net of each non-scalar blob written at or
        after layer index ``start``."""
        names = []
        for layer in self.float_net.layers[start:]:
            names += [t for t in layer.tops if t not in names]
        result = {}
        for name in names:
            if np.ndim(blobs[0][name]) == 0:
                continue
            per_image = [np.linalg.norm((b[name].astype(np.float64) - f[name]).reshape(len(b[name]), -1), axis=1)
                         for b, f in zip(blobs, self.float_blobs)]
            result[name] = float(np.mean(np.concatenate(per_image)))
        return result


def analyze(evaluator, widths=(16, 8, 6, 4, 2), parts=("weights", "activations")):
    """One row per (layer, part, width): that layer alone quantized, the rest float."""
    rows = []
    steps = [(layer, part, bits) for layer in evaluator.layers for part in parts for bits in widths
             if not (part == "weights" and layer in evaluator.no_weights)]
    for layer, part, bits in show_progress(steps, "sensitivity", "config", evaluator.progress):
        config = {layer: (bits, None) if part == "weights" else (None, bits)}
        score, blobs, _ = evaluator.evaluate(config)
        rows.append(SensitivityRow(layer, part, bits, score,
                                   evaluator.distances(blobs, evaluator.index[layer])))
    return rows
