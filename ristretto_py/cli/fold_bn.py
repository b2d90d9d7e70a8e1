"""``tools/fold_bn``: fold every BatchNorm (and the Scale after it) into the Convolution or
InnerProduct before it; a BatchNorm that cannot be folded becomes a depthwise 1x1 Convolution.
Writes a new prototxt and caffemodel and prints the layers and parameters before and after."""
import sys

from ..net import Net
from ..passes.fold_bn import fold_batchnorm, parameter_count
from .common import add_model_arguments, make_parser, run

PROG = "fold_bn"


def build_parser():
    parser = make_parser(PROG, __doc__)
    add_model_arguments(parser, weights_required=True)
    parser.add_output("--out_model", required=True, metavar="PROTOTXT",
                      help="where to write the folded net description")
    parser.add_output("--out_weights", required=True, metavar="CAFFEMODEL",
                      help="where to write the folded weights")
    return parser


def fold_main(argv=None):
    args = build_parser().parse_args(argv)
    net = Net.load(args.model, args.weights)
    folded, report = fold_batchnorm(net)
    for bn, scale, into in report.folded:
        print(f"folded {bn}{' + ' + scale if scale else ''} into {into}")
    for bn, scale, kind in report.replaced:
        print(f"replaced {bn}{' + ' + scale if scale else ''} by a per-channel {kind} (cannot fold)")
    for bn, reason in report.skipped:
        print(f"left {bn} as it is: {reason}")
    if not report.changed:
        print("nothing to fold: the net is written unchanged")
    print(f"layers: {len(net.layers)} -> {len(folded.layers)}; "
          f"parameters: {parameter_count(net):,} -> {parameter_count(folded):,}")
    folded.save(args.out_model, args.out_weights)
    print(f"wrote {args.out_model} and {args.out_weights}")
    return 0


def main(argv=None, prog=PROG):
    return run(fold_main, argv, prog=prog)


if __name__ == "__main__":
    sys.exit(main())
