"""``tools/evaluate``: the scores of a net on its dataset, as Caffe's ``caffe test`` prints them.

The net's own Data layer (LMDB source, batch size, transform_param) feeds ``--iterations``
batches; every output blob (Accuracy top-1/top-k, loss) is averaged over them in float32.
Ristretto-quantized nets run with their trimming (``--compat`` picks the build to reproduce)."""
import json
import sys

from ..evaluators.classification import evaluate_classification
from ..net import Net
from ..runtime import make_runtime
from .common import (add_backend_arguments, add_memory_argument, add_model_arguments,
                     add_seed_argument, make_parser, run, runtime_options)
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
    return parser


def evaluate_main(argv=None):
    args = build_parser().parse_args(argv)
    net = Net.load(args.model, args.weights, phase=args.phase)
    runtime = make_runtime(net, args.backend, **runtime_options(args))
    result = evaluate_classification(net, args.iterations, runtime=runtime,
                                     progress=not args.quiet and not args.json)
    if args.json:
        print(json.dumps(result.as_dict()))
        return 0
    print(f"{result.iterations} batches, {result.images} images, backend {result.backend}")
    for name, value in result.as_dict()["scores"].items():
        print(f"{name} = {value}")
    if hasattr(runtime, "describe_how"):
        print(runtime.describe_how())
    for name, report in getattr(runtime, "report", {}).items():
        print(f"{name}: last batch {report.float32_differs} of {report.values} values differ from "
              f"Ristretto's float32 emulation; {report.overflows} accumulator overflows")
    return 0


def main(argv=None, prog=PROG):
    return run(evaluate_main, argv, prog=prog)


if __name__ == "__main__":
    sys.exit(main())
