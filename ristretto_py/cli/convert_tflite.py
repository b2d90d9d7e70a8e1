"""``tools/convert_tflite``: a TFLite model as Caffe files. tf2onnx (pip install tf2onnx)
translates the flatbuffer to ONNX, which is then converted like ``tools/convert_onnx`` converts an
ONNX file. 4-D inputs and outputs become N,C,H,W (the NHWC tensor, transposed). Float models
convert; a quantized (int8) model becomes a QDQ ONNX model first (--out_onnx writes it)."""
import sys

from ..convert import tflite_models
from .common import make_parser, run
from .convert_tf import add_common_arguments, check_outputs, write_outputs

PROG = "convert_tflite"


def build_parser():
    parser = make_parser(PROG, __doc__)
    parser.add_input("--input", required=True, metavar="TFLITE", help="the .tflite model")
    add_common_arguments(parser)
    return parser


def describe(summary):
    """One line on a QDQ model's quantization (``tflite_models.quantization_summary``)."""
    axes = sorted({axis for _, axis, _ in summary["per_channel"]})
    scales = (f"per-channel scales on {len(summary['per_channel'])} tensors (axes "
              f"{', '.join(map(str, axes))})" if summary["per_channel"] else "per-tensor scales")
    edges = []
    if summary["int_inputs"]:
        edges.append(f"integer inputs {', '.join(summary['int_inputs'])}")
    if summary["int_outputs"]:
        edges.append(f"integer outputs {', '.join(summary['int_outputs'])}")
    return (f"quantized model: {summary['quantize']} QuantizeLinear and {summary['dequantize']} "
            f"DequantizeLinear nodes, {scales}" + ("; " + "; ".join(edges) if edges else ""))


def convert_main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    check_outputs(parser, args)
    model = tflite_models.tflite_to_onnx(args.input, input_shapes=args.input_shape, opset=args.opset)
    summary = tflite_models.quantization_summary(model)
    what = "the TFLite model"
    if summary is not None:
        print(describe(summary))
        what = "the quantized TFLite model"
    write_outputs(model, args, args.input, what)
    return 0


def main(argv=None, prog=PROG):
    return run(convert_main, argv, prog=prog)


if __name__ == "__main__":
    sys.exit(main())
