"""``tools/convert_tf``: a TensorFlow graph as Caffe files. A SavedModel folder (Keras 3's
``model.export()``, ``tf.saved_model.save``, a Keras 2 ``model.save``) or a frozen GraphDef is
translated to ONNX by tf2onnx (pip install tf2onnx) and then converted like ``tools/convert_onnx``
converts an ONNX file. 4-D inputs and outputs become N,C,H,W (the NHWC tensor, transposed)."""
import os
import sys

from ..errors import RistrettoError
from . import qdq_outputs
from .common import make_parser, run
from .flag_types import int_range, number_list

PROG = "convert_tf"


def add_common_arguments(parser):
    """The flags the TensorFlow and TFLite converters share."""
    parser.add_output("--out_model", metavar="PROTOTXT", help="where to write the Caffe net description")
    parser.add_output("--out_weights", metavar="CAFFEMODEL", help="where to write the Caffe weights")
    parser.add_output("--out_onnx", metavar="ONNX",
                      help="also (or only, without --out_model/--out_weights) write the ONNX model "
                           "tf2onnx made, after the shapes are fixed")
    parser.add_argument("--input_shape", type=number_list((2, 3, 4), int, "integers"), action="append",
                        metavar="N,C,H,W", help="an input's Caffe shape (default: the model's, batch 1); "
                        "once per input, in the model's order")
    parser.add_argument("--name", help="the Caffe net's name (default: the file's stem)")
    parser.add_argument("--opset", type=int_range(13, 21, "ONNX opset"), default=17,
                        help="the ONNX opset tf2onnx writes (default 17)")
    qdq_outputs.add_arguments(parser)


def check_outputs(parser, args):
    if (args.out_model is None) != (args.out_weights is None):
        parser.error("--out_model and --out_weights go together")
    if args.out_model is None and args.out_onnx is None:
        parser.error("give --out_model and --out_weights (Caffe files), --out_onnx, or both")
    if args.model_quantized and args.out_model is None:
        parser.error("--model_quantized goes with --out_model and --out_weights")
    if args.report and not args.model_quantized:
        parser.error("--report goes with --model_quantized")


def build_parser():
    parser = make_parser(PROG, __doc__)
    parser.add_input("--saved_model", metavar="DIR", help="a SavedModel folder")
    parser.add_input("--graph", metavar="PB", help="a frozen GraphDef (.pb, binary or text)")
    parser.add_argument("--inputs", metavar="NAMES",
                        help="--graph: comma-separated input tensors (node or node:port)")
    parser.add_argument("--outputs", metavar="NAMES", help="--graph: comma-separated output tensors")
    parser.add_argument("--signature", metavar="NAME",
                        help="--saved_model: the signature to convert (default: the first)")
    add_common_arguments(parser)
    return parser


def write_outputs(model, args, source, what):
    """Write the ONNX model and/or the Caffe net converted from it; print what was done."""
    from .. import atomic
    if args.out_onnx is not None:
        atomic.write_bytes(args.out_onnx, model.SerializeToString())
    nodes = len(model.graph.node)
    if args.out_model is None:
        print(f"converted {what} into an ONNX model of {nodes} nodes (opset {args.opset})")
        print(f"wrote {args.out_onnx}")
        return
    name = args.name or os.path.splitext(os.path.basename(os.path.normpath(source)))[0]
    converted = qdq_outputs.convert(model, source, None, name, args.model_quantized is not None)
    net = converted.net
    shapes = net.shapes()
    net.save(args.out_model, args.out_weights)
    print(f"converted {what} (tf2onnx: {nodes} ONNX nodes, opset {args.opset}) into "
          f"{len(net.layers)} Caffe layers; outputs: "
          f"{', '.join(f'{o} {list(shapes[o])}' for o in converted.outputs)}")
    qdq_outputs.write(converted, args)
    print("wrote " + ", ".join(str(p) for p in (args.out_onnx, args.out_model, args.out_weights,
                                                args.model_quantized) if p))


def _names(text):
    return [n.strip() for n in (text or "").split(",") if n.strip()]


def convert_main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.saved_model is None) == (args.graph is None):
        parser.error("give one of --saved_model DIR and --graph PB")
    check_outputs(parser, args)
    from ..convert import tf_graphs
    if args.saved_model is not None:
        if args.inputs or args.outputs:
            parser.error("--inputs and --outputs are for --graph; a SavedModel's signature names them "
                         "(--signature picks one)")
        model = tf_graphs.saved_model_to_onnx(args.saved_model, signature=args.signature,
                                              input_shapes=args.input_shape, opset=args.opset)
        source, what = args.saved_model, "the SavedModel"
    else:
        if args.signature:
            parser.error("--signature is for --saved_model")
        if not _names(args.inputs) or not _names(args.outputs):
            raise RistrettoError("a GraphDef needs --inputs and --outputs (tensor names)", path=args.graph)
        model = tf_graphs.graph_def_to_onnx(args.graph, _names(args.inputs), _names(args.outputs),
                                            input_shapes=args.input_shape, opset=args.opset)
        source, what = args.graph, "the GraphDef"
    write_outputs(model, args, source, what)
    return 0


def main(argv=None, prog=PROG):
    return run(convert_main, argv, prog=prog)


if __name__ == "__main__":
    sys.exit(main())
