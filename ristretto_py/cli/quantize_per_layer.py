"""``tools/quantize --search per_layer``: Ristretto's uniform search, then per-layer widths in
sensitivity order; writes the smallest model found, and with ``--report`` the Pareto front
(weight bytes against score) as JSON and PNG and the sensitivity table."""
import dataclasses
import json
import os

from ..atomic import atomic_output, write_text
from ..caffe_io import write_net_text
from ..passes.per_layer_search import edit_param, per_layer_search
from ..passes.ristretto_edit import without_state
from ..passes.ristretto_quantize import RistrettoQuantizer
from .quantize import _net_param


def run_per_layer(args):
    quantizer = RistrettoQuantizer(
        args.model, args.weights, args.iterations, "dynamic_fixed_point", args.error_margin,
        backend="numpy", compat=args.compat, integer_length=args.integer_length,
        score_blob=args.score_blob, seed=args.seed, progress=not args.quiet,
        net_param=_net_param(args))
    uniform = quantizer.run()
    passes_uniform = quantizer.forward_passes
    result, evaluator = per_layer_search(quantizer, uniform, args.score, progress=not args.quiet)
    param = without_state(edit_param(quantizer, uniform.lengths, result.config))
    write_net_text(param, args.model_quantized)
    print(f"Baseline 32bit float ({args.score}): {result.baseline:g}")
    print(f"Uniform (Ristretto's search, integer lengths '{args.integer_length}'): "
          f"{uniform.chosen} -> {result.uniform_score:g}, {result.uniform_bytes:,} weight bytes")
    print("Per-layer widths (chosen in sensitivity order):")
    for name in evaluator.layers:
        print(f"  {name}: {result.config[name][0]}-bit weights, {result.config[name][1]}-bit activations")
    print(f"Per-layer net: {result.score:g}, {result.bytes:,} weight bytes "
          f"({len(result.trials)} configurations tried; forward batches: uniform {passes_uniform}, "
          f"per-layer {quantizer.forward_passes - passes_uniform})")
    print(f"Wrote {args.model_quantized}")
    if args.report:
        from .quantize import _cost
        _report(args.report, result, evaluator, _cost(quantizer, param))
        print(f"Wrote the report to {args.report}")
    return 0


def _report(directory, result, evaluator, cost):
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    os.makedirs(directory, exist_ok=True)
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
    axes.axhline(result.baseline, color="gray", linestyle="--", label="float")
    axes.set_xlabel("weight bytes")
    axes.set_ylabel("score")
    axes.legend(fontsize="small")
    figure.tight_layout()
    with atomic_output(os.path.join(directory, "pareto.png")) as handle:
        figure.savefig(handle, format="png", metadata={"Software": None})
    plt.close(figure)
