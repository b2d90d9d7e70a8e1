"""``tools/fold_bn``: fold every BatchNorm (and the Scale after it) into the Convolution or
InnerProduct before it; a BatchNorm that cannot be folded becomes a depthwise 1x1 Convolution.
Writes a new prototxt and caffemodel and prints the layers and parameters before and after.

The folding runs on the TEST net. Source layers of the other phases (a training net's TRAIN
Data layer) are written too, first, as in the input, so that the folded net can be fine-tuned
with ``tools/train``; any other layer outside the TEST phase is left out, and named."""
import sys

from ..caffe_io import read_net_text, write_net_text
from ..net import PHASES, Net, layer_in_state
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
    description = folded.to_proto(False)
    kept, dropped = other_phase_sources(read_net_text(args.model))
    if kept:
        layers = kept + list(description.layer)
        del description.layer[:]
        description.layer.extend(layers)
        print(f"kept the source layers of other phases: {', '.join(s.name for s in kept)}")
    if dropped:
        print(f"left out layers of other phases: {', '.join(dropped)}")
    write_net_text(description, args.out_model)
    folded.save(weights_path=args.out_weights)
    print(f"wrote {args.out_model} and {args.out_weights}")
    return 0


def other_phase_sources(param):
    """(layers outside the TEST phase without bottoms, names of the other layers outside it)."""
    outside = [spec for spec in param.layer if not layer_in_state(spec, PHASES["TEST"])]
    return ([spec for spec in outside if not len(spec.bottom)],
            [spec.name for spec in outside if len(spec.bottom)])


def main(argv=None, prog=PROG):
    return run(fold_main, argv, prog=prog)


if __name__ == "__main__":
    sys.exit(main())
