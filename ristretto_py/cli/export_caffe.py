"""``tools/export_caffe``: a quantized description as plain Caffe (``passes/plain_caffe``):
stock layer types, the weights as the quantized net computes with them, so BVLC Caffe and
OpenCV's ``readNetFromCaffe`` load it. Activation trimming cannot be written with stock layers:
it is dropped and named; with ``--iterations N`` both nets are scored on N batches of the
net's TEST Data layer and the difference is printed."""
import sys

from ..caffe_io import read_net_text, write_net_text
from ..net import Net
from ..passes.plain_caffe import plain_caffe
from .common import add_model_arguments, make_parser, run
from .flag_types import positive_int

PROG = "export_caffe"


def build_parser():
    parser = make_parser(PROG, __doc__)
    add_model_arguments(parser, weights_required=True)
    parser.add_output("--out_model", required=True, metavar="PROTOTXT",
                      help="where to write the stock Caffe description")
    parser.add_output("--out_weights", required=True, metavar="CAFFEMODEL",
                      help="where to write the baked weights")
    parser.add_argument("--compat", choices=("gpu", "cpu"), default="gpu",
                        help="which Ristretto build's NEAREST ties the weights follow (default gpu)")
    parser.add_argument("--iterations", type=positive_int,
                        help="score both nets on this many batches of the TEST Data layer")
    return parser


def export_main(argv=None):
    args = build_parser().parse_args(argv)
    net = Net.load(args.model, args.weights)
    export = plain_caffe(read_net_text(args.model), net, args.compat)
    write_net_text(export.param, args.out_model)
    export.net.save(weights_path=args.out_weights)
    print(f"weights baked as computed: {', '.join(export.baked) or 'none'}")
    for name, what in export.dropped:
        print(f"dropped in {name}: {what}")
    if args.iterations:
        from ..evaluators.classification import fetch_batches
        from ..runtime import NumpyRuntime
        batches = fetch_batches(net, args.iterations)
        for label, scored in (("quantized", net), ("plain Caffe", export.net)):
            runtime = NumpyRuntime(scored)
            values = [float(runtime.forward(b)[scored.output_blobs[0]].mean()) for b in batches]
            print(f"{label}: {scored.output_blobs[0]} = {sum(values) / len(values):.4f}")
    print(f"wrote {args.out_model} and {args.out_weights}")
    return 0


def main(argv=None, prog=PROG):
    return run(export_main, argv, prog=prog)


if __name__ == "__main__":
    sys.exit(main())
