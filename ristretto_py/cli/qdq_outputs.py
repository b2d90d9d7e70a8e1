"""The converters' handling of quantized (QDQ) models, shared by ``tools/convert_onnx``,
``tools/convert_tf`` and ``tools/convert_tflite``: the float Caffe net of a QDQ model, and with
``--model_quantized`` the quantized Ristretto description of its QDQ formats (``--report DIR``:
``formats.json`` and ``formats.md``, per tensor the QDQ scale and zero point next to the
dynamic fixed point chosen)."""
import dataclasses
import json
import os

from .. import atomic
from ..caffe_io import write_net_text
from ..convert.onnx_qdq import strip_qdq
from ..convert.onnx_to_caffe import onnx_to_layers
from ..convert.qdq_description import quantized_description
from ..errors import RistrettoError
from ..net import Net

REPORT_FILES = ("formats.json", "formats.md")
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def add_arguments(parser):
    parser.add_output("--model_quantized", metavar="PROTOTXT",
                      help="for a quantized (QDQ or int8 TFLite) model: also write the quantized "
                           "Ristretto description of its formats, read with --out_weights' float "
                           "weights")
    parser.add_report(REPORT_FILES, help="with --model_quantized: write formats.json and formats.md, "
                                         "each QDQ tensor's scale and zero point next to its format")


def is_quantized(model):
    return any(n.op_type in QDQ_OPS for n in model.graph.node)


@dataclasses.dataclass
class Converted:
    net: Net
    outputs: list
    quantized: object = None        # (NetParameter, rows, notes) of a QDQ model


def convert(model, source, input_shapes, name, want_quantized):
    """The Caffe net of an ONNX model (a QDQ model's float net), and its quantized description
    when ``want_quantized``; a model without QDQ pairs and ``want_quantized`` is an error."""
    formats = None
    if is_quantized(model):
        model, formats = strip_qdq(model)
    elif want_quantized:
        raise RistrettoError("--model_quantized: the model has no QuantizeLinear/DequantizeLinear "
                             "pairs, so no formats to describe (tools/quantize finds formats for a "
                             "float net)", path=source)
    layers, outputs = onnx_to_layers(model, source, input_shapes, keep_blobs=formats or ())
    net = Net(layers, name=name, source=source)
    quantized = quantized_description(net, model, formats) if formats is not None else None
    return Converted(net, outputs, quantized)


def write(converted, args):
    """Print what a QDQ model gave and write --model_quantized and --report."""
    if converted.quantized is None:
        return
    param, rows, notes = converted.quantized
    used = [r for r in rows if r.role != "unused"]
    fixed = sum(1 for layer in param.layer if layer.HasField("quantization_param"))
    exact = sum(1 for r in used if r.exact)
    if args.model_quantized is None:
        print(f"the model is quantized ({len(rows)} QDQ tensors): --model_quantized writes their "
              "formats as a Ristretto description")
        return
    print(f"quantized description: {fixed} layers with formats; of their {len(used)} QDQ tensors "
          f"{exact} exact (power-of-two scale, zero point 0), {len(used) - exact} nearest")
    for row in rows:
        print("  " + row.line())
    for note in notes:
        print("  note: " + note)
    write_net_text(param, args.model_quantized)
    if args.report:
        write_report(args.report, rows, notes, args.model_quantized)


def write_report(directory, rows, notes, model_quantized):
    os.makedirs(directory, exist_ok=True)
    data = {"model_quantized": os.fspath(model_quantized), "notes": notes,
            "tensors": [dataclasses.asdict(r) for r in rows]}
    atomic.write_text(os.path.join(directory, "formats.json"), json.dumps(data, indent=1) + "\n")
    lines = ["# QDQ formats as dynamic fixed point", "",
             "| layer | role | tensor | QDQ | bits | fl | exact | step / scale | range outside |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.layer or '-'} | {r.role} | `{r.tensor}` | {r.qdq} | {r.bit_width} | "
                     f"{r.fractional_length} | {'yes' if r.exact else 'no'} | "
                     f"{r.step_over_scale:.3g} | {r.range_lost:.1%} |")
    lines += [""] + [f"- {note}" for note in notes]
    atomic.write_text(os.path.join(directory, "formats.md"), "\n".join(lines) + "\n")
