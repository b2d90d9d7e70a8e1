"""What a quantize run costs and saves: Ristretto's summary table, weight bytes before and after,
the share of values each layer's formats saturate, whether the written net keeps the margin,
and the report files every ``--report`` writes (``report.json``, ``report.md`` and
``score_vs_bits.png``, which marks the chosen widths and the final net's score)."""
import dataclasses
import json
import math
import os

import numpy as np

from ristretto_py import numerics
from ristretto_py.atomic import atomic_output, make_directory, write_text
from ristretto_py.layers.formats import FORMATTED_TYPES, operands

from .cost import deployed_lines
from ristretto_py.precision import (DYNAMIC_FIXED_POINT, MINIFLOAT, LayerPrecision,
                                    output_channel_axis)

RISTRETTO_TYPES = ("ConvolutionRistretto", "FcRistretto", "DeconvolutionRistretto")
STAGE_TITLES = {"conv_params": "Dynamic fixed point CONV weights",
                "fc_params": "Dynamic fixed point FC weights",
                "activations": "Dynamic fixed point layer activations",
                "minifloat": "Minifloat net", "final": "Quantized net"}


def layer_precisions(quantized):
    """Layer name -> LayerPrecision of every Ristretto layer, and of every stock layer with a
    format of its own (``--all_layers``), in a quantized NetParameter."""
    return {layer.name: LayerPrecision.from_proto(layer.quantization_param)
            for layer in quantized.layer if layer.type in RISTRETTO_TYPES
            or (layer.type in FORMATTED_TYPES and layer.HasField("quantization_param"))}


def weight_bytes(net, precisions=None):
    """Bytes of every weight and bias of ``net``: float32, or the layer's parameter formats
    (weights and bias each at its own width, ``LayerPrecision.storage_bits``), plus one byte per
    output channel for per-channel weight lengths, as the cost model counts them."""
    total = 0
    for layer, impl in zip(net.layers, net.impls):
        precision = (precisions or {}).get(layer.name)
        if precision is not None and layer.type in FORMATTED_TYPES:     # its operands
            count = sum(np.size(op) for op in operands(impl, layer.blobs))
            total += math.ceil(count * precision.bw_params / 8)
            continue
        weight_bits, bias_bits = (32, 32) if precision is None else precision.storage_bits()
        for index, blob in enumerate(layer.blobs):
            total += math.ceil(np.size(blob) * (weight_bits if index == 0 else bias_bits) / 8)
        if precision is not None:
            total += math.ceil(precision.shift_bits() / 8)
    return total


def _activation_saturation(values, precision, bit_width, fractional_length):
    if precision.precision == MINIFLOAT:
        largest = numerics.minifloat_range(precision.exp_bits, precision.mant_bits)[1]
        values = np.asarray(values, np.float32)
        return float(np.count_nonzero(np.abs(values) > largest)) / max(values.size, 1)
    return numerics.fixed_point_saturation(values, bit_width, fractional_length)


def saturation_observer(precisions):
    """An observer for the float net's pass and the dict it fills: layer -> running counts of
    input/output values that the chosen formats would clip."""
    counts = {}

    def observe(layer, bottoms, tops):
        p = precisions.get(layer.name)
        if p is None:
            return
        entry = counts.setdefault(layer.name, {"input": [0.0, 0], "output": [0.0, 0]})
        for key, values, bw, fl in (("input", bottoms[0], p.bw_layer_in, p.fl_layer_in),
                                    ("output", tops[0], p.bw_layer_out, p.fl_layer_out)):
            if p.precision != MINIFLOAT and not p.trims_activations("gpu"):
                continue
            entry[key][0] += _activation_saturation(values, p, bw, fl) * np.size(values)
            entry[key][1] += np.size(values)
    return observe, counts


def parameter_saturation(net, precisions):
    """Layer name -> share of weights and biases outside the layer's parameter formats. In
    dynamic fixed point each output channel's weights are checked against that channel's
    format (per-channel lengths) and the bias against its own (``bias_format``)."""
    shares = {}
    for layer, impl in zip(net.layers, net.impls):
        p = precisions.get(layer.name)
        if p is None or not layer.blobs:
            continue
        if layer.type in FORMATTED_TYPES:
            values = [np.ravel(op) for op in operands(impl, layer.blobs)]
            if values:
                values = np.concatenate(values)
                shares[layer.name] = numerics.fixed_point_saturation(values, p.bw_params, p.fl_params)
            continue
        blobs = layer.blobs[:1] if p.precision == "integer_power_of_2_weights" else layer.blobs
        values = np.concatenate([np.ravel(b) for b in blobs])
        if p.precision == DYNAMIC_FIXED_POINT:
            weights = layer.blobs[0]
            length = p.weight_fractional_length(np.ndim(weights), output_channel_axis(layer.spec))
            clipped = numerics.fixed_point_saturation(weights, p.bw_params, length) * np.size(weights)
            for bias in layer.blobs[1:2]:
                clipped += numerics.fixed_point_saturation(
                    np.ravel(bias), p.bias_bits(), p.bias_fractional_length()) * np.size(bias)
            shares[layer.name] = round(clipped) / values.size
        elif p.precision == MINIFLOAT:
            shares[layer.name] = _activation_saturation(values, p, 0, 0)
        else:   # power of two: magnitudes beyond the largest exponent (rounded in the log domain)
            with np.errstate(divide="ignore"):
                exponent = np.rint(np.log2(np.abs(values)))
            shares[layer.name] = float(np.count_nonzero(exponent > p.exp_max)) / values.size
    return shares


@dataclasses.dataclass
class Measurement:
    """What the written net costs and clips, measured against the float net."""
    weight_bytes_before: int
    weight_bytes_after: int
    activation_counts: dict = dataclasses.field(default_factory=dict)
    param_shares: dict = dataclasses.field(default_factory=dict)
    zeroed: dict = dataclasses.field(default_factory=dict)


def measure(quantizer, quantized):
    """Weight bytes before and after, and the share of values the formats of ``quantized`` (a
    NetParameter) clip: parameters directly, activations over one more pass of the float TEST
    net on the search's batches (counted in ``quantizer.forward_passes``)."""
    float_net = quantizer.build(quantizer.param)
    precisions = layer_precisions(quantized)
    observe, counts = saturation_observer(precisions)
    quantizer.evaluate(quantizer.param, "saturation (float net)", observer=observe)
    return Measurement(weight_bytes(float_net), weight_bytes(float_net, precisions), counts,
                       parameter_saturation(float_net, precisions),
                       zeroed_weights(float_net, precisions))


def margin_verdict(baseline, score, measure, advice=None):
    """(kept, sentence): whether ``score`` keeps the margin of ``measure`` (an
    ``evaluators.scores.Score``, or a number: Ristretto's margin in points, score + margin/100
    >= baseline, the rule every candidate is judged by) and a sentence that says so."""
    if not hasattr(measure, "passes"):
        from ristretto_py.evaluators.scores import AccuracyScore
        measure = AccuracyScore(margin=measure)
    floor, score = measure.floor(baseline), float(score)
    advice = advice or ("--integer_length safe (no activation clips at its observed maximum) "
                        "or --search per_layer finds a net that keeps it")
    if not measure.higher_is_better:
        if measure.passes(score, baseline):
            return True, f"within the margin: {measure.kind} distance {score:.4g} <= {floor:g}"
        return False, (f"outside the margin: {measure.kind} distance {score:.4g} > {floor:g} "
                       f"(--max_distance); {advice}")
    if measure.passes(score, baseline):
        return True, f"within the margin: {score:g} >= {floor:g}"
    return False, (f"outside the margin: {score:g} < {floor:g} (float {float(baseline):g} "
                   f"minus the {measure.margin:g}-point margin); {advice}")


def zeroed_weights(net, precisions):
    """Layer name -> share of its nonzero weights that the layer's format rounds to 0 (a layer
    whose weights mostly vanish computes nothing: typical of a folded BatchNorm whose bias sized
    a shared format)."""
    from ristretto_py.layers.base import RunContext
    shares = {}
    for layer, impl in zip(net.layers, net.impls):
        p = precisions.get(layer.name)
        if p is None or not layer.blobs:
            continue
        if layer.type in FORMATTED_TYPES:
            values = [np.ravel(op) for op in operands(impl, layer.blobs)]
            if values:
                values = np.concatenate(values)
                shares[layer.name] = numerics.fixed_point_saturation(values, p.bw_params, p.fl_params)
            continue
        weights = np.asarray(layer.blobs[0])
        nonzero = weights != 0
        if not nonzero.any():
            continue
        context = RunContext("gpu", np.random.default_rng(0))
        axis = output_channel_axis(layer.spec)
        trimmed = p.trim_params(list(layer.blobs[:1]), context, False,
                                channel_axis=0 if axis is None else axis)[0]
        shares[layer.name] = float(np.count_nonzero((trimmed == 0) & nonzero)) / nonzero.sum()
    return shares


def summary_lines(result, score_name="Accuracy"):
    """Ristretto's closing log, line for line (another measure than accuracy is named as
    ``score_name`` where Ristretto prints "Accuracy")."""
    lines = ["------------------------------", "Network accuracy analysis for"]
    if result.mode == "integer_power_of_2_weights":
        lines += ["Integer-power-of-two weights", "in Convolutional (CONV) and",
                  "fully connected (FC) layers."]
    else:
        lines += ["Convolutional (CONV) and fully", "connected (FC) layers."]
    lines.append(f"Baseline 32bit float: {result.baseline:g}")
    if result.mode == "dynamic_fixed_point":
        for stage, header in (("conv_params", ["Dynamic fixed point CONV", "weights: "]),
                              ("fc_params", ["Dynamic fixed point FC", "weights: "]),
                              ("activations", ["Dynamic fixed point layer", "activations:"])):
            lines += header
            lines += [f"{c.bit_width}bit: \t{c.score:g}" for c in result.candidates if c.stage == stage]
        chosen = result.chosen
        lines += ["Dynamic fixed point net:", f"{chosen['conv_params']}bit CONV weights,",
                  f"{chosen['fc_params']}bit FC weights,", f"{chosen['activations']}bit layer activations:",
                  f"{score_name}: {result.final_score:g}"]
    elif result.mode == "kmeans":
        for stage, header in (("conv_params", "k-means CONV weights:"), ("fc_params", "k-means FC weights:")):
            lines.append(header)
            lines += [f"{c.bit_width}bit indices (K={2 ** c.bit_width}): \t{c.score:g}"
                      for c in result.candidates if c.stage == stage]
        lines += ["k-means net:", f"{result.chosen['conv_params']}bit CONV indices,",
                  f"{result.chosen['fc_params']}bit FC indices (32 = not clustered):",
                  f"{score_name}: {result.final_score:g}"]
    elif result.mode == "hwce":
        for stage, header in (("kernels", "HWCE kernels (signals 16-bit):"),
                              ("activations", "HWCE layer inputs/outputs (kernels 16-bit):")):
            lines.append(header)
            lines += [f"{c.bit_width}bit: \t{c.score:g}" for c in result.candidates if c.stage == stage]
        lines += ["HWCE net:", f"{result.chosen['kernels']}bit kernels,",
                  f"{result.chosen['activations']}bit layer inputs/outputs:",
                  f"{score_name}: {result.final_score:g}"]
    elif result.mode == "minifloat":
        lines.append("Minifloat net:")
        lines += [f"{c.bit_width}bit: \t{c.score:g}" for c in result.candidates]
    else:
        lines += ["Quantized net:", f"4bit: \t{result.final_score:g}"]
    lines.append("Please fine-tune.")
    return lines


def build_report(result, measurement, settings, margin_advice=None, measure=None):
    """The core report every ``--report`` writes, as a JSON-ready dict: settings, the score
    used, float and final scores and whether the final net keeps the margin, every candidate,
    the chosen widths, weight bytes before and after, forward batches, and per layer ranges,
    integer lengths, saturation and the share of weights rounded to 0. Modes add their own keys
    to it. ``measure``: the search's ``Score`` (default: accuracy, margin in points)."""
    activation_counts, param_shares = measurement.activation_counts, measurement.param_shares
    before, after = measurement.weight_bytes_before, measurement.weight_bytes_after
    if measure is None:
        from ristretto_py.evaluators.scores import AccuracyScore
        measure = AccuracyScore(margin=settings["error_margin"])
    kept, verdict = margin_verdict(result.baseline, result.final_score, measure, margin_advice)
    layers = {}
    for name, length in result.lengths.items():
        entry = result.ranges[name]
        counts = activation_counts.get(name, {})
        layers[name] = {
            "type": entry.type, "max_in": entry.max_in, "max_out": entry.max_out,
            "max_weights": entry.max_weights, "max_bias": entry.max_bias,
            "il_in": length.layer_in, "il_out": length.layer_out, "il_params": length.params,
            "saturation": {
                "input": counts["input"][0] / counts["input"][1] if counts.get("input", [0, 0])[1] else None,
                "output": counts["output"][0] / counts["output"][1] if counts.get("output", [0, 0])[1] else None,
                "params": param_shares.get(name)},
            "zeroed_weights": measurement.zeroed.get(name)}
    return {
        "trimming_mode": result.mode, "settings": settings,
        "score": measure.describe(), "score_kind": measure.kind,
        "lower_is_better": not measure.higher_is_better,
        "score_floor": measure.floor(result.baseline),
        "float_score": result.baseline, "final_score": result.final_score,
        "candidates": [{"stage": c.stage, "bit_width": c.bit_width, "score": c.score,
                        "passed": c.passed} for c in result.candidates],
        "chosen": result.chosen, "exp_bits": result.exp_bits,
        "within_margin": kept, "margin_verdict": verdict,
        "weight_bytes_before": before, "weight_bytes_after": after,
        "compression": before / after if after else None,
        "forward_batches": result.forward_passes, "layers": layers}


def write_report(directory, report):
    """Write report.json, report.md and score_vs_bits.png into ``directory`` (created)."""
    make_directory(directory)
    write_text(os.path.join(directory, "report.json"), json.dumps(report, indent=2) + "\n")
    plot = os.path.join(directory, "score_vs_bits.png")
    _plot(report, plot)
    write_text(os.path.join(directory, "report.md"), _markdown(report))


def _plot(report, path):
    from matplotlib import pyplot as plt
    figure = score_figure(report)
    with atomic_output(path) as handle:
        figure.savefig(handle, format="png", metadata={"Software": None})
    plt.close(figure)


def score_figure(report):
    """The score against bit width of every candidate, each stage's chosen width starred, the
    float baseline, the margin and the final net's score (a matplotlib Figure)."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    figure, axes = plt.subplots(figsize=(6, 4), dpi=100)
    stages = []
    for c in report["candidates"]:
        if c["stage"] not in stages:
            stages.append(c["stage"])
    for stage in stages:
        points = [(c["bit_width"], c["score"]) for c in report["candidates"] if c["stage"] == stage]
        width = _chosen_width(report, stage)
        label = STAGE_TITLES.get(stage, stage) + (f" (chosen: {width} bits)" if width else "")
        line, = axes.plot(*zip(*points), marker="o", label=label)
        chosen = [p for p in points if p[0] == width]
        if chosen:
            axes.plot(*chosen[0], marker="*", markersize=16, color=line.get_color(),
                      markeredgecolor="black", linestyle="none", gid=f"chosen {stage}")
    axes.plot([], [], marker="*", markersize=12, color="white", markeredgecolor="black",
              linestyle="none", label="chosen width")
    axes.axhline(report["float_score"], color="gray", linestyle="--", label="float baseline")
    floor = report.get("score_floor", report["float_score"] - report["settings"]["error_margin"] / 100)
    axes.axhline(floor, color="red", linestyle=":", label="margin")
    kept = "within" if report["within_margin"] else "outside"
    axes.axhline(report["final_score"], color="black", linewidth=2,
                 label=f"final net: {report['final_score']:.4g} ({kept} the margin)")
    if stages:
        axes.set_xscale("log", base=2)
        axes.set_xlabel("bit width")
    else:                          # --widths: no candidates, the scores only
        axes.set_xticks([])
        axes.set_xlabel(f"given widths: {json.dumps(report['chosen'])[:80]}")
    axes.set_ylabel(report.get("score_kind") or "score")
    axes.set_title(f"ristretto-py quantize: {report['trimming_mode']}")
    axes.legend(fontsize="small")
    figure.tight_layout()
    return figure


def _chosen_width(report, stage):
    chosen = report.get("uniform_chosen") or report["chosen"]
    if stage in chosen and isinstance(chosen[stage], int):
        return chosen[stage]
    if stage == "minifloat":
        return chosen.get("bit_width")
    return None


def _fmt(value, pattern="{:.2%}"):
    return "-" if value is None else pattern.format(value)


def _markdown(report):
    lines = [f"# Quantization report: {report['trimming_mode']}", "",
             f"- score: {report.get('score', 'accuracy')}",
             f"- float score: {report['float_score']:.4f}",
             f"- final score: {report['final_score']:.4f} ({report['margin_verdict']})",
             f"- chosen: {json.dumps(report['chosen'])}",
             f"- weight bytes: {report['weight_bytes_before']:,} -> {report['weight_bytes_after']:,}"
             + (f" ({report['compression']:.2f}x smaller)" if report["compression"] else ""),
             f"- forward batches run: {report['forward_batches']}", "",
             "## Candidates", "", "| stage | bits | score | passed |", "|---|---|---|---|"]
    lines += [f"| {c['stage']} | {c['bit_width']} | {c['score']:.4f} | {'yes' if c['passed'] else 'no'} |"
              for c in report["candidates"]]
    cost = report.get("cost")
    if cost:
        t = cost["totals"]
        lines += ["", "## Cost of the quantized net", "",
                  f"Parameters {t['param_bytes']:,.0f} bytes, activation traffic "
                  f"{t['traffic_bytes']:,.0f} bytes, {t['macs']:,} MACs.", ""]
        if "deployed_bytes" in t:              # as deployed: packed widths, buffers
            lines += [f"- {line}" for line in deployed_lines(t)] + [""]
        lines += ["| layer | param bytes | traffic bytes | MACs | share of MACs |", "|---|---|---|---|---|"]
        lines += [f"| {r['layer']} | {r['param_bytes']:,.0f} | {r['input_bytes'] + r['output_bytes']:,.0f} | "
                  f"{r['macs']:,} | {r['mac_share']:.1%} |" for r in cost["layers"] if r["macs"] or r["param_bytes"]]
    lines += ["", "![score against bit width](score_vs_bits.png)", "", "## Layers", "",
              "| layer | max in | max out | il in/out/params | saturated in | saturated out | "
              "saturated params | weights rounded to 0 |", "|---|---|---|---|---|---|---|---|"]
    for name, entry in report["layers"].items():
        s = entry["saturation"]
        lines.append(f"| {name} | {entry['max_in']:.4g} | {entry['max_out']:.4g} | "
                     f"{entry['il_in']}/{entry['il_out']}/{entry['il_params']} | {_fmt(s['input'])} | "
                     f"{_fmt(s['output'])} | {_fmt(s['params'])} | "
                     f"{_fmt(entry.get('zeroed_weights'))} |")
    return "\n".join(lines) + "\n"
