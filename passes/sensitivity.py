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

On a cluster (``quantizer.pool``) every worker records its own batches: the float net's blobs
and snapshots, and the latest configurations'; a configuration is sent with the reference to
resume from, and the worker returns the measure's blobs and, for the analysis, the per-image
distances. The grid of the analysis is sent at once, so its configurations run concurrently.
"""
import dataclasses

import numpy as np

from ristretto_py.cluster.pool import RecordJob
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


@dataclasses.dataclass
class RemoteRecord:
    """Where a cluster keeps a configuration's snapshots (its workers, under ``key``), and the
    per-image distances to the float net the workers returned for it (analysis only)."""
    key: str
    distances: list = None


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
        self.pool = quantizer.pool
        if self.pool is not None:
            self.float_handle = self._handle(quantizer.param)
            self.float_snapshots = RemoteRecord(self.float_handle.key)
            self.float_blobs = self.pool.gather(self._submit({}, None, False, False),
                                                "float net")["outputs"]
        else:
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

    def param_for(self, config):
        param = edit.per_layer_dynamic_fixed_point(self.quantizer.param, self.lengths, config)
        return self.quantizer.formatted(param)

    def net_for(self, config):
        return self.quantizer.build(self.param_for(config))

    def score(self, blobs):
        return self.measure(blobs)

    def _start(self, config, reference_config):
        """The first layer index where two configurations differ (None: nowhere)."""
        changed = [name for name in self.layers if config.get(name) != reference_config.get(name)]
        return min(self.index[name] for name in changed) if changed else None

    def evaluate(self, config, reference=None, retain=True):
        """(score, blobs, snapshots) of ``config``, reusing the reference configuration's
        snapshots in front of the first layer where the two differ. On a cluster, ``retain``
        asks the workers to keep this configuration's snapshots as a later reference."""
        return self.evaluate_many([config], reference, retain=retain)[0]

    def evaluate_many(self, configs, reference=None, retain=True, distances=False,
                      description="evaluate"):
        """``evaluate`` for several configurations, concurrently on a cluster; ``distances``
        has the workers compute the analysis' distances (see ``distances``)."""
        ref_config, ref_blobs, ref_snapshots = reference or self.reference
        results, pending = [None] * len(configs), []
        for i, config in enumerate(configs):
            start = self._start(config, ref_config)
            if start is None:
                results[i] = (self.score(ref_blobs), ref_blobs, ref_snapshots)
            elif self.pool is None:
                blobs, snapshots = self._record(self.net_for(config), start, ref_snapshots)
                results[i] = (self.score(blobs), blobs, snapshots)
            else:
                pending.append((i, self._submit(config, (ref_config, ref_snapshots), distances,
                                                retain)))
        if pending:
            gathered = self.pool.gather([p for _, p in pending], description)
            for (i, submitted), result in zip(pending, gathered):
                record = RemoteRecord(submitted.key, result.get("distances"))
                results[i] = (self.score(result["outputs"]), result["outputs"], record)
        return results

    def _handle(self, param):
        q = self.quantizer
        return self.pool.handle(param=edit.with_phase(param, "TEST"), weights=q.weights,
                                source=q.model_path, weights_source=q.weights_path)

    def _submit(self, config, reference, distances, retain):
        """Send one configuration to the workers (``reference``: (config, RemoteRecord) to
        resume from, None for the float net itself)."""
        float_key = self.float_handle.key
        if reference is None:
            key, handle, start, float_start, ref_key = float_key, self.float_handle, None, None, None
        else:
            ref_config, ref_record = reference
            handle = self._handle(self.param_for(config))
            key = f"{float_key}:{sorted(config.items())!r}"
            start, float_start = self._start(config, ref_config), self._start(config, {})
            ref_key = None if ref_record.key == float_key else ref_record.key
        names = tuple(self._written_from(float_start)) if distances else ()
        job = RecordJob(key, handle, float_key, self.float_handle, ref_key, start, float_start,
                        tuple(self.points), tuple(self.measure.blobs()), distances, names,
                        retain, self.quantizer.compat, self.quantizer.seed)
        self.evaluations += 1
        self.quantizer.forward_passes += len(self.batches)
        pending = self.pool.record(self.batches, job)
        pending.key = key
        return pending

    def _written_from(self, start):
        names = []
        for layer in self.float_net.layers[start:]:
            names += [t for t in layer.tops if t not in names]
        return names

    def distances(self, blobs, start, snapshots=None):
        """Mean per-image L2 distance to the float net of each non-scalar blob written at or
        after layer index ``start`` (on a cluster: from the distances its workers returned with
        ``snapshots``)."""
        names = self._written_from(start)
        result = {}
        if isinstance(snapshots, RemoteRecord):
            for name in names:
                if snapshots.distances and name in snapshots.distances[0]:
                    result[name] = float(np.mean(np.concatenate(
                        [batch[name] for batch in snapshots.distances])))
            return result
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
    configs = [{layer: (bits, None) if part == "weights" else (None, bits)}
               for layer, part, bits in steps]
    if evaluator.pool is not None:        # the whole grid at once, on the workers
        results = evaluator.evaluate_many(configs, retain=False, distances=True,
                                          description="sensitivity")
    else:
        results = (evaluator.evaluate(config) for config in
                   show_progress(configs, "sensitivity", "config", evaluator.progress))
    for (layer, part, bits), (score, blobs, snapshots) in zip(steps, results):
        rows.append(SensitivityRow(layer, part, bits, score,
                                   evaluator.distances(blobs, evaluator.index[layer], snapshots)))
    return rows
