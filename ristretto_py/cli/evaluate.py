"""``tools/evaluate``: the scores of a net on its dataset, as Caffe's ``caffe test`` prints them.

The net's own Data layer (LMDB source, batch size, transform_param) feeds ``--iterations``
batches; every output blob (Accuracy top-1/top-k, loss) is averaged over them in float32.
Ristretto-quantized nets run with their trimming (``--compat`` picks the build to reproduce)."""
import json
import sys

from ..errors import RistrettoError
from ..evaluators.classification import evaluate_classification
from ..net import Net
from ..numerics import COMPAT_MODES
from ..runtime import BACKENDS, make_runtime
from .common import add_fixed_point_arguments, add_model_arguments, make_parser, run, runtime_options

PROG = "evaluate"


def build_parser():
    parser = make_parser(PROG, __doc__)
    add_model_arguments(parser, weights_required=True)
    parser.add_argument("--iterations", type=int, default=50, help="batches to run (default 50)")
    parser.add_argument("--backend", choices=sorted(BACKENDS), default="numpy")
    add_fixed_point_arguments(parser)
    parser.add_argument("--compat", choices=COMPAT_MODES, default="gpu",
                        help="Ristretto build whose trimming to reproduce")
    parser.add_argument("--phase", choices=("TEST", "TRAIN"), default="TEST")
    parser.add_argument("--seed", type=int, default=0, help="seed of stochastic rounding")
    parser.add_argument("--json", action="store_true", help="print the scores as one JSON object")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def evaluate_main(argv=None):
    args = build_parser().parse_args(argv)
    if args.iterations < 1:
        raise RistrettoError(f"--iterations must be at least 1, not {args.iterations}")
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
    for name, report in getattr(runtime, "report", {}).items():
        print(f"{name}: last batch {report.float32_differs} of {report.values} values differ from "
              f"Ristretto's float32 emulation; {report.overflows} accumulator overflows")
    return 0


def main(argv=None):
    return run(evaluate_main, argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
