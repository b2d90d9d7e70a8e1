"""Per-layer mixed precision (our own search, beyond Ristretto): start from Ristretto's uniform
dynamic-fixed-point answer, then lower each layer's widths (any integer width, not only
halvings: the lowest passing width is found by bisection), least sensitive layer first, keeping
the quantizer's measure within its margin, and no width above the caps.

Sensitivity order: each (layer, part) is probed alone at a few widths (``sensitivity.analyze``);
the mean score drop orders them. Every configuration tried is scored through the
``CachedEvaluator``, which recomputes only the layers from the first changed one. The result is
the smallest model found and the Pareto front (weight bytes against score) of all tried.
"""
import dataclasses

import numpy as np

from ristretto_py.progress import progress as show_progress

from .quantize_report import layer_precisions, weight_bytes
from .sensitivity import CachedEvaluator, analyze

PROBE_WIDTHS = (8, 4, 2)


@dataclasses.dataclass
class Trial:
    config: dict
    score: float
    weight_bytes: int
    passed: bool


@dataclasses.dataclass
class PerLayerResult:
    baseline: float
    uniform: dict             # Ristretto's uniform choice (conv_params, fc_params, activations)
    uniform_config: dict
    uniform_score: float
    uniform_bytes: int
    config: dict
    score: float
    bytes: int
    trials: list
    sensitivity: list
    order: list

    def pareto(self):
        """Trials not beaten on both bytes and score by another, by bytes."""
        points = sorted(self.trials, key=lambda t: (t.weight_bytes, -t.score))
        front, best = [], -np.inf
        for t in points:
            if t.score > best:
                front.append(t)
                best = t.score
        return front


def per_layer_search(quantizer, uniform_result, progress=False, max_weight_bits=32,
                     max_act_bits=32):
    """Lower each layer's widths from Ristretto's uniform answer, least sensitive part first,
    keeping ``quantizer.measure`` within its margin; no width above the caps (the hardware's)."""
    lengths = uniform_result.lengths
    evaluator = CachedEvaluator(quantizer, lengths, progress=progress)
    net = evaluator.float_net
    chosen = uniform_result.chosen
    caps = (max_weight_bits, max_act_bits)
    config = {}
    for layer in net.layers:
        if layer.name in evaluator.layers:
            bw = chosen["fc_params"] if layer.type == "InnerProduct" else chosen["conv_params"]
            config[layer.name] = (min(bw, caps[0]), min(chosen["activations"], caps[1]))
    baseline = evaluator.score(evaluator.float_blobs)
    measure = quantizer.measure

    def size(cfg):
        return weight_bytes(net, layer_precisions(edit_param(quantizer, lengths, cfg)))

    start_score, blobs, snapshots = evaluator.evaluate(config)
    current = (dict(config), blobs, snapshots)
    trials = [Trial(dict(config), start_score, size(config), measure.passes(start_score, baseline))]
    sensitivity = analyze(evaluator, PROBE_WIDTHS)
    drops = {}
    for row in sensitivity:
        drops.setdefault((row.layer, row.part), []).append(measure.drop(row.score, baseline))
    order = sorted(drops, key=lambda key: (np.mean(drops[key]), evaluator.layers.index(key[0])))
    # Ristretto's uniform combination is not checked against the margin by Ristretto; when it
    # fails, widen the most sensitive parts first (doubling, up to the cap) until it passes.
    score_now = start_score
    for layer, part in reversed(order):
        if measure.passes(score_now, baseline):
            break
        slot = 0 if part == "weights" else 1
        while current[0][layer][slot] < caps[slot] and not measure.passes(score_now, baseline):
            widths = list(current[0][layer])
            widths[slot] = min(caps[slot], widths[slot] * 2)
            trial = dict(current[0])
            trial[layer] = tuple(widths)
            score_now, blobs, snapshots = evaluator.evaluate(trial, current)
            trials.append(Trial(dict(trial), score_now, size(trial),
                                measure.passes(score_now, baseline)))
            current = (trial, blobs, snapshots)
    for layer, part in show_progress(order, "per-layer search", "part", progress):
        # The lowest passing width of this part, by bisection between 1 and the current width
        # (which passes); every passing trial becomes the new reference.
        low, high = 1, current[0][layer][0 if part == "weights" else 1]
        if not measure.passes(score_now, baseline):
            break                 # even the widest allowed widths miss: nothing to lower
        while low < high:
            mid = (low + high) // 2
            bw_params, bw_act = current[0][layer]
            trial = dict(current[0])
            trial[layer] = (mid, bw_act) if part == "weights" else (bw_params, mid)
            trial_score, blobs, snapshots = evaluator.evaluate(trial, current)
            ok = measure.passes(trial_score, baseline)
            trials.append(Trial(dict(trial), trial_score, size(trial), ok))
            if ok:
                current, score_now, high = (trial, blobs, snapshots), trial_score, mid
            else:
                low = mid + 1
    final = current[0]
    return PerLayerResult(baseline, dict(chosen), config, start_score, trials[0].weight_bytes,
                          final, score_now, size(final), trials, sensitivity, order), evaluator


def edit_param(quantizer, lengths, config):
    from .ristretto_edit import per_layer_dynamic_fixed_point
    return quantizer.formatted(per_layer_dynamic_fixed_point(quantizer.param, lengths, config))
