"""``tools/evaluate``: the scores of a net on its dataset, as Caffe's ``caffe test`` prints them.

The net's own Data layer (LMDB source, batch size, transform_param) feeds ``--iterations``
batches; every output blob (Accuracy top-1/top-k, loss) is averaged over them in float32.
Ristretto-quantized nets run with their trimming (``--compat`` picks the build to reproduce)."""
import json
import sys
import time

from .. import caffe_io
from ..evaluators.classification import Batches, evaluate_classification
from ..net import Net
from ..runtime import make_runtime
from .common import (add_backend_arguments, add_cluster_arguments, add_memory_argument,
                     add_model_arguments, add_seed_argument, cluster_session, make_parser, run,
                     runtime_options)
from .flag_types import positive_int

PROG = "evaluate"


def build_parser():
    parser = make_parser(PROG, __doc__)
    add_model_arguments(parser, weights_required=True)
    parser.add_argument("--iterations", type=positive_int, default=50,
                        help="batches to run (default 50)")
    add_backend_arguments(parser)
    parser.add_argument("--phase", choices=("TEST", "TRAIN"), default="TEST",
                        help="the phase whose layers make the net (default TEST)")
    add_seed_argument(parser, "stochastic rounding")
    add_memory_argument(parser)
    parser.add_argument("--json", action="store_true", help="print the scores as one JSON object")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_cluster_arguments(parser)
    return parser


def evaluate_main(argv=None):
    args = build_parser().parse_args(argv)
    started = time.monotonic()
    with cluster_session(args) as cluster:
        return _evaluate(args, cluster, started)


def _evaluate(args, cluster, started):
    param, weights = caffe_io.read_net_text(args.model), caffe_io.read_net_binary(args.weights)
    net = Net.from_proto(param, weights, phase=args.phase, source=args.model,
                         weights_source=args.weights)
    # On a cluster the workers build the runtimes; what this one would report comes from them.
    runtime = None if cluster else make_runtime(net, args.backend, **runtime_options(args))
    on_cluster, batches, remote = None, None, None
    if cluster is not None:
        handle = cluster.pool.handle(param=param, weights=weights, phase=args.phase,
                                     source=args.model, weights_source=args.weights)
        on_cluster = (cluster.pool, handle, {"backend": args.backend, **runtime_options(args)})
        cluster.pool.progress = not args.quiet and not args.json
        batches = Batches(net, args.iterations, cache=False, probe=False)
    result = evaluate_classification(net, args.iterations, runtime=runtime,
                                     progress=not args.quiet and not args.json,
                                     batches=batches, cluster=on_cluster)
    if cluster is not None:
        if args.backend == "fixed":       # what the local runtime would say, from a worker
            remote = cluster.pool.last_report(batches, *on_cluster[1:])
        where = cluster.describe()
        print(f"{result.images} images on {where['workers']} workers ({where['nodes']} nodes, "
              f"--cluster {where['cluster']}) in {time.monotonic() - started:.1f} s",
              file=sys.stderr)
    if args.json:
        print(json.dumps(result.as_dict()))
        return 0
    print(f"{result.iterations} batches, {result.images} images, backend {result.backend}")
    for name, value in result.as_dict()["scores"].items():
        print(f"{name} = {value}")
    if remote is None and hasattr(runtime, "describe_how"):
        remote = (runtime.report, runtime.describe_how())
    reports, how = remote or ({}, None)
    if how:
        print(how)
    for name, report in reports.items():
        print(f"{name}: last batch {report.float32_differs} of {report.values} values differ from "
              f"Ristretto's float32 emulation; {report.overflows} accumulator overflows")
    return 0


def main(argv=None, prog=PROG):
    return run(evaluate_main, argv, prog=prog)


if __name__ == "__main__":
    sys.exit(main())
