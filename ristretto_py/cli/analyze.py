"""``tools/analyze``: sensitivity analysis. Quantizes one Convolution/InnerProduct layer at a time
(its weights, or its activations) to each candidate width, the rest float, and reports the score
and the L2 (Frobenius) distance of every later blob to the float net's, averaged over images;
``--report`` writes the table as JSON and a heat map (PNG)."""
import dataclasses
import json
import os
import sys
import time

import numpy as np

from .. import memory_budget
from ..atomic import atomic_output, make_directory, write_text
from ..errors import RistrettoError
from ..passes.ranges import RULES
from ..passes.ristretto_quantize import RistrettoQuantizer
from ..passes.sensitivity import CachedEvaluator, analyze
from .common import (add_cluster_arguments, add_memory_argument, add_model_arguments,
                     cluster_session, make_parser, run, write_run_record)
from .flag_types import number_list, positive_int
from .search_args import add_image_arguments, add_measure_arguments, measure_and_data

PROG = "analyze"


def build_parser():
    parser = make_parser(PROG, __doc__)
    add_model_arguments(parser, weights_required=True)
    parser.add_argument("--trimming_mode", default="dynamic_fixed_point", choices=("dynamic_fixed_point",),
                        help="the precision the layers are quantized to (dynamic_fixed_point)")
    parser.add_argument("--iterations", type=positive_int, default=None,
                        help="batches per evaluation (default 10; with --images one pass over "
                             "every image)")
    parser.add_argument("--widths", type=number_list(tuple(range(1, 33)), int, "integers"),
                        default=(16, 8, 6, 4, 2), help="candidate bit widths (default 16,8,6,4,2)")
    parser.add_argument("--parts", default="weights,activations",
                        help="weights, activations or both (comma-separated)")
    parser.add_argument("--integer_length", choices=RULES, default="safe",
                        help="integer-length rule: safe (default; each layer's own output, the "
                             "maximum never clips) or ristretto (Ristretto's rules)")
    add_measure_arguments(parser)
    parser.add_argument("--score_blob", default=None,
                        help="the blob to score (see tools/quantize --score_blob)")
    parser.add_argument("--batch_size", type=positive_int, default=None,
                        help="with --images or --score lfw: images per forward pass (default 32)")
    add_image_arguments(parser)
    parser.add_report(("sensitivity.json", "sensitivity.png", "run.json"),
                      help="write sensitivity.json and the heat map sensitivity.png here (and "
                           "run.json: the workers used and the wall time)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_memory_argument(parser)
    add_cluster_arguments(parser)
    return parser


def analyze_main(argv=None):
    args = build_parser().parse_args(argv)
    parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
    if not parts or set(parts) - {"weights", "activations"}:
        raise RistrettoError(f"--parts {args.parts!r}: use weights, activations or both")
    if min(args.widths) < 1:
        raise RistrettoError("--widths must be positive")
    started = time.monotonic()
    with cluster_session(args) as cluster:
        _analyze(args, parts, cluster.pool if cluster is not None else None)
        if args.report:
            write_run_record(args.report, cluster, started)
    return 0


def _analyze(args, parts, pool):
    quantizer = RistrettoQuantizer(args.model, args.weights, args.iterations or 10,
                                   args.trimming_mode, 0, integer_length=args.integer_length,
                                   progress=not args.quiet)
    quantizer.use(*measure_and_data(args, quantizer.build(quantizer.param), 0))
    if pool is not None:
        quantizer.on_cluster(pool)
    quantizer.check_scoring()
    memory_budget.check_kept_passes(quantizer.build(quantizer.param),
                                    len(quantizer.test_batches()), "analyze")
    _, lengths = quantizer.analyze()
    evaluator = CachedEvaluator(quantizer, lengths, progress=not args.quiet)
    baseline = evaluator.score(evaluator.float_blobs)
    rows = analyze(evaluator, tuple(args.widths), parts)
    last = evaluator.shown_blob or list(rows[0].distances)[-1]
    print(f"float score ({quantizer.measure.describe()}): {baseline:g}")
    print(f"{'layer':20s} {'part':12s} {'bits':>4s} {'score':>8s} {'L2 to float at ' + last:>28s}")
    for r in rows:
        print(f"{r.layer:20s} {r.part:12s} {r.bits:4d} {r.score:8.4f} {r.distances.get(last, float('nan')):28.4g}")
    if args.report:
        _report(args.report, baseline, rows)
        print(f"Wrote the report to {args.report}")


def _report(directory, baseline, rows):
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    make_directory(directory)
    write_text(os.path.join(directory, "sensitivity.json"), json.dumps(
        {"float_score": baseline, "rows": [dataclasses.asdict(r) for r in rows]}, indent=2) + "\n")
    blobs = []
    for r in rows:
        blobs += [b for b in r.distances if b not in blobs]
    grid = np.full((len(rows), len(blobs)), np.nan)
    for i, r in enumerate(rows):
        for j, b in enumerate(blobs):
            if b in r.distances:
                grid[i, j] = np.log10(max(r.distances[b], 1e-12))
    figure, axes = plt.subplots(figsize=(1 + 0.6 * len(blobs), 1 + 0.25 * len(rows)), dpi=100)
    image = axes.imshow(grid, aspect="auto", cmap="viridis")
    axes.set_xticks(range(len(blobs)), blobs, rotation=60, ha="right", fontsize="small")
    axes.set_yticks(range(len(rows)), [f"{r.layer} {r.part[0]}{r.bits} ({r.score:.3f})" for r in rows],
                    fontsize="x-small")
    figure.colorbar(image, label="log10 mean L2 distance to float")
    figure.tight_layout()
    with atomic_output(os.path.join(directory, "sensitivity.png")) as handle:
        figure.savefig(handle, format="png", metadata={"Software": None})
    plt.close(figure)


def main(argv=None, prog=PROG):
    return run(analyze_main, argv, prog=prog)


if __name__ == "__main__":
    sys.exit(main())
