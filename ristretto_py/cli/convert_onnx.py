"""``tools/convert_onnx``: an ONNX CNN (opsets 7 and later) as Caffe files. Shapes are inferred
and constant subgraphs folded with onnx's own tools; nodes Caffe cannot reproduce exactly are
refused with their name and the reason."""
import argparse
import os
import sys

from ..convert.onnx_graph_prep import graph_inputs
from ..convert.onnx_to_caffe import read_onnx
from ..errors import NetError
from . import qdq_outputs
from .common import make_parser, run
from .flag_types import input_shape, number_list

PROG = "convert_onnx"


def shape_flag(text):
    """``NAME=N,C,H,W`` or, for a model with one input, ``N,C,H,W`` (name None)."""
    if "=" in text:
        return input_shape(text)
    dims = number_list((2, 3, 4, 5), int, "integers")(text)
    if min(dims) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: dimensions must be positive")
    return None, dims


shape_flag.__name__ = "[NAME=]N,C,H,W"


def build_parser():
    parser = make_parser(PROG, __doc__)
    parser.add_input("--input", required=True, metavar="MODEL", help="the .onnx file")
    parser.add_output("--out_model", required=True, metavar="PROTOTXT",
                      help="where to write the Caffe net description")
    parser.add_output("--out_weights", required=True, metavar="CAFFEMODEL",
                      help="where to write the Caffe weights")
    parser.add_argument("--input_shape", type=shape_flag, action="append", default=[],
                        metavar="[NAME=]N,C,H,W",
                        help="an input's shape where the model leaves dimensions free (a free "
                             "batch alone is 1); repeat for several inputs; the name may be "
                             "left out when the model has one input")
    parser.add_argument("--name", help="the Caffe net's name (default: the file's stem)")
    qdq_outputs.add_arguments(parser)
    return parser


def input_shapes(flags, model, path):
    """{input name: dims} from the --input_shape flags."""
    names = [v.name for v in graph_inputs(model)]
    shapes = {}
    for name, dims in flags:
        if name is None:
            if len(flags) != 1 or len(names) != 1:
                raise NetError(f"--input_shape without a name needs a model with one input and "
                               f"one flag; the model's inputs are {', '.join(names) or 'none'}: "
                               "give NAME=N,C,H,W", path=path)
            name = names[0]
        shapes[name] = tuple(dims)
    return shapes


def convert_main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.report and not args.model_quantized:
        parser.error("--report goes with --model_quantized")
    model = read_onnx(args.input)
    name = args.name or os.path.splitext(os.path.basename(args.input))[0]
    converted = qdq_outputs.convert(model, args.input, input_shapes(args.input_shape, model, args.input),
                                    name, args.model_quantized is not None)
    net = converted.net
    shapes = net.shapes()
    net.save(args.out_model, args.out_weights)
    print(f"converted {len(model.graph.node)} ONNX nodes into {len(net.layers)} Caffe layers; "
          f"outputs: {', '.join(f'{o} {list(shapes[o])}' for o in converted.outputs)}")
    qdq_outputs.write(converted, args)
    written = [args.out_model, args.out_weights] + ([args.model_quantized] if args.model_quantized else [])
    print(f"wrote {', '.join(map(str, written))}")
    return 0


def main(argv=None, prog=PROG):
    return run(convert_main, argv, prog=prog)


if __name__ == "__main__":
    sys.exit(main())
