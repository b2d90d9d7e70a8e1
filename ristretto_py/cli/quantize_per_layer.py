"""``tools/quantize --search per_layer``: Ristretto's uniform search, then per-layer widths in
sensitivity order; writes the smallest model found. ``--report`` writes the core report of every
quantize run (``report.json``, ``report.md``, ``score_vs_bits.png``: chosen widths, scores,
weight bytes, saturation) plus the Pareto front (weight bytes against score) as ``pareto.json``
and ``pareto.png`` and the sensitivity table."""
import dataclasses
import json
import os

from .. import memory_budget
from ..atomic import atomic_output, write_text
from ..caffe_io import write_net_text
from ..passes import quantize_report as reports
from ..passes.cost import net_cost
from ..passes.per_layer_search import edit_param, per_layer_search
from ..passes.ristretto_edit import without_state
from .quantize import make_quantizer, settings, warn_zeroed, write_lfw_reports

ADVICE = "a larger --error_margin or more --iterations may find one"


def run_per_layer(args):
    args.backend = "numpy"      # the search caches blobs of the numpy runtime
    quantizer = make_quantizer(args, "dynamic_fixed_point")
    memory_budget.check_kept_passes(quantizer.build(quantizer.param), len(quantizer.test_batches()),
                                    "--search per_layer")
    uniform = quantizer.run()
    passes_uniform = quantizer.forward_passes
    result, evaluator = per_layer_search(quantizer, uniform, progress=not args.quiet,
                                         max_weight_bits=args.max_weight_bits,
                                         max_act_bits=args.max_act_bits)
    param = without_state(edit_param(quantizer, uniform.lengths, result.config))
    passes_search = quantizer.forward_passes - passes_uniform
    measured = reports.measure(quantizer, param)
    write_net_text(param, args.model_quantized)
    print(f"Baseline 32bit float ({args.score}): {result.baseline:g}")
    print(f"Uniform (Ristretto's search, integer lengths '{args.integer_length}'): "
          f"{uniform.chosen} -> {result.uniform_score:g}, {result.uniform_bytes:,} weight bytes")
    print("Per-layer widths (chosen in sensitivity order):")
    for name in evaluator.layers:
        weights = ("no weights" if name in evaluator.no_weights
                   else f"{result.config[name][0]}-bit weights")
        print(f"  {name}: {weights}, {result.config[name][1]}-bit activations")
    print(f"Per-layer net: {result.score:g}, {result.bytes:,} weight bytes "
          f"({len(result.trials)} configurations tried)")
    print(reports.margin_verdict(result.baseline, result.score, quantizer.measure, ADVICE)[1])
    print(f"Forward batches: uniform {passes_uniform}, per-layer {passes_search}, saturation "
          f"{quantizer.forward_passes - passes_uniform - passes_search}")
    warn_zeroed(measured)
    print(f"Wrote {args.model_quantized}")
    if args.report:
        final = dataclasses.replace(
            uniform, chosen={name: {"weights": w, "activations": a}
                             for name, (w, a) in result.config.items()},
            final_score=result.score, baseline=result.baseline, quantized=param,
            forward_passes=quantizer.forward_passes)
        report = reports.build_report(final, measured, settings(args, "max_weight_bits",
                                                                "max_act_bits"), ADVICE,
                                      quantizer.measure)
        report["uniform_chosen"] = uniform.chosen
        report["cost"] = net_cost(quantizer.build(param))
        reports.write_report(args.report, report)
        _pareto(args.report, result, report["cost"])
        write_lfw_reports(args.report, quantizer, param)
        print(f"Wrote the report to {args.report}")
    return 0


def _pareto(directory, result, cost):
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    front = result.pareto()
    data = {"baseline": result.baseline, "uniform": {"chosen": result.uniform, "score": result.uniform_score,
                                                     "weight_bytes": result.uniform_bytes},
            "per_layer": {"config": result.config, "score": result.score, "weight_bytes": result.bytes},
            "order": [list(o) for o in result.order],
            "trials": [dataclasses.asdict(t) for t in result.trials],
            "pareto": [dataclasses.asdict(t) for t in front],
            "sensitivity": [dataclasses.asdict(r) for r in result.sensitivity], "cost": cost}
    write_text(os.path.join(directory, "pareto.json"), json.dumps(data, indent=2) + "\n")
    figure, axes = plt.subplots(figsize=(6, 4), dpi=100)
    axes.scatter([t.weight_bytes for t in result.trials], [t.score for t in result.trials], s=10,
                 color="lightgray", label="tried")
    axes.plot([t.weight_bytes for t in front], [t.score for t in front], "o-", label="Pareto front")
    axes.scatter([result.uniform_bytes], [result.uniform_score], marker="s", color="red", label="uniform")
    axes.scatter([result.bytes], [result.score], marker="*", s=160, color="gold",
                 edgecolors="black", zorder=3, label="written net")
    axes.axhline(result.baseline, color="gray", linestyle="--", label="float")
    axes.set_xlabel("weight bytes")
    axes.set_ylabel("score")
    axes.legend(fontsize="small")
    figure.tight_layout()
    with atomic_output(os.path.join(directory, "pareto.png")) as handle:
        figure.savefig(handle, format="png", metadata={"Software": None})
    plt.close(figure)
