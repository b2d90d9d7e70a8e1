"""``tools/export_onnx``: write a Caffe net (prototxt + caffemodel) as a standard ONNX model
(opset 17). Layers ONNX cannot express, and those after them, are reported: they form the tail
that ``OnnxRuntime`` runs in numpy.

``--quantized qdq`` writes a dynamic-fixed-point net as QuantizeLinear/DequantizeLinear pairs
(opset 21) with integer weights, and says which nodes onnxruntime fuses into integer kernels;
``--quantized qonnx`` writes QONNX Quant/FloatQuant nodes (``runtime.quantized_export``). Both
print the file's state bytes against the float export of the same net."""
from ..errors import NetError
from ..net import Net
from ..runtime.onnx_export import export_onnx, save_onnx
from ..runtime.onnx_graph import OPSET
from .common import add_model_arguments, make_parser, run

PROG = "export_onnx"


def build_parser():
    parser = make_parser(PROG, __doc__)
    add_model_arguments(parser, weights_required=True)
    parser.add_output("--output", required=True, metavar="ONNX", help="where to write the model")
    parser.add_argument("--all_blobs", action="store_true",
                        help="make every named blob a graph output (for comparisons)")
    parser.add_argument("--static_batch", action="store_true",
                        help="fix the batch size to the prototxt's instead of a symbolic N")
    parser.add_argument("--no_tail", action="store_true",
                        help="fail instead of leaving layers without an ONNX form out")
    parser.add_argument("--quantized", choices=("qdq", "qonnx"),
                        help="write the formats as QDQ (QuantizeLinear/DequantizeLinear, integer "
                             "weights) or QONNX (Quant/FloatQuant) nodes instead of float trimming")
    parser.add_argument("--qdq_activations", choices=("signed", "unsigned"), default="signed",
                        help="--quantized qdq: activations as int types with zero point 0 "
                             "(default), or as uint types with the zero point at the middle (the "
                             "same values; what onnxruntime's x86 builds fuse into integer kernels)")
    parser.add_argument("--compat", choices=("gpu", "cpu"), default="gpu",
                        help="the Ristretto build whose rounding the export reproduces")
    return parser


def export_main(argv):
    args = build_parser().parse_args(argv)
    net = Net.load(args.model, args.weights)
    if args.quantized:
        return _quantized(args, net)
    export = export_onnx(net, all_blobs=args.all_blobs, dynamic_batch=not args.static_batch,
                         allow_tail=not args.no_tail, compat=args.compat)
    if not len(export.model.graph.node):
        raise NetError("the net has no layer to export besides its inputs: the ONNX file would "
                       "hold no operation", path=net.source)
    save_onnx(export, args.output)
    graph = export.model.graph
    print(f"{args.output}: ONNX opset {OPSET}, {len(graph.node)} nodes, "
          f"{len(graph.initializer)} initializers")
    if export.tail:
        layers = ", ".join(f"{net.layers[i].name} ({net.layers[i].type})" for i in export.tail)
        print(f"left to the numpy tail (not in the ONNX file): {layers}")
    _describe_io(graph)
    return 0


def _describe_io(graph):
    print("inputs: " + ", ".join(value.name for value in graph.input))
    print("outputs: " + ", ".join(_describe_output(value) for value in graph.output))


def _quantized(args, net):
    from ..runtime import quantized_export as qe
    # QONNX readers (qonnx's executor, FINN) need every shape fixed: the batch is the
    # prototxt's there, as --static_batch gives it.
    dynamic = not args.static_batch and args.quantized != "qonnx"
    result = qe.export_quantized(net, args.quantized, compat=args.compat,
                                 all_blobs=args.all_blobs, dynamic_batch=dynamic,
                                 activations=args.qdq_activations)
    export = result.export
    if export.tail and args.no_tail:
        layers = ", ".join(f"{net.layers[i].name} ({net.layers[i].type})" for i in export.tail)
        raise NetError(f"layers without an ONNX form: {layers}", path=net.source)
    save_onnx(export, args.output)
    graph = export.model.graph
    opset = export.model.opset_import[0].version
    print(f"{args.output}: {args.quantized.upper()} ONNX opset {opset}, {len(graph.node)} nodes, "
          f"{len(graph.initializer)} initializers")
    float_bytes = sum(t.ByteSize() for t in export_onnx(net, compat=args.compat).model.graph.initializer)
    state_bytes = sum(t.ByteSize() for t in graph.initializer)
    print(f"state (initializers): {state_bytes:,} bytes; the float export's {float_bytes:,} bytes "
          f"({state_bytes / max(float_bytes, 1):.1%})")
    for note in result.notes:
        print(f"note: {note}")
    if args.quantized == "qdq":
        print(qe.describe_fusion(qe.onnxruntime_nodes(export.model)))
        warning = qe.unsigned_saturation_note(net, args.qdq_activations)
        if warning:
            print(f"note: {warning}")
    if export.tail:
        layers = ", ".join(f"{net.layers[i].name} ({net.layers[i].type})" for i in export.tail)
        print(f"left to the numpy tail (not in the ONNX file): {layers}")
    _describe_io(graph)
    return 0


def _describe_output(value):
    dims = value.type.tensor_type.shape.dim
    if not len(dims) and not value.type.tensor_type.HasField("shape"):
        return value.name
    shape = "x".join(d.dim_param if d.dim_param else str(d.dim_value) for d in dims)
    return f"{value.name} {shape}"


def main(argv=None, prog=PROG):
    return run(export_main, argv, prog=prog)


if __name__ == "__main__":
    raise SystemExit(main())
