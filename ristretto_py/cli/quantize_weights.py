"""``tools/quantize_weights``: post-training weight quantizers of the literature, chosen for all
Convolution/InnerProduct layers (``--method``) and per layer (``--layer NAME=METHOD``): linear:N,
gaussian:N:C (LPDNN/QUENN), binary (BinaryConnect), scaled_binary (DoReFa), ternary (TWN),
hwce:N:PERCENTILE (PULP HWCE). The caffemodel it writes runs in any runtime. ``--activations``
also quantizes the layers' outputs (linear, gaussian or hwce) with constants calibrated on data,
by inserting ristretto-py ActivationQuantize layers into the written prototxt."""
import json
import os
import sys

from ..atomic import make_directory, write_text
from ..errors import RistrettoError
from ..evaluators.classification import fetch_batches
from ..images import load_array
from ..net import Net
from ..passes.activation_quantizers import calibrate_activations, insert_activation_quantizers
from ..passes.weight_quantizers import Quantizer, quantize_weights
from .common import add_memory_argument, add_model_arguments, make_parser, run
from .flag_types import positive_int

PROG = "quantize_weights"


def build_parser():
    parser = make_parser(PROG, __doc__)
    add_model_arguments(parser, weights_required=True)
    parser.add_argument("--method", help="quantizer for every Convolution/InnerProduct layer")
    parser.add_argument("--layer", action="append", default=[], metavar="NAME=METHOD",
                        help="quantizer for one layer (repeatable; overrides --method)")
    parser.add_argument("--layers", help="comma-separated layers to quantize (default: all)")
    parser.add_output("--out_weights", required=True, metavar="CAFFEMODEL",
                      help="where to write the quantized weights")
    parser.add_argument("--activations", metavar="METHOD",
                        help="also quantize the selected layers' outputs: linear:N, gaussian:N:C "
                             "or hwce:N:P (needs --out-model and calibration data)")
    parser.add_output("--out_model", metavar="PROTOTXT",
                      help="where to write the prototxt with the activation quantizers")
    parser.add_argument("--calibration_iterations", type=positive_int, default=10,
                        help="batches of the net's Data layer to calibrate on (default 10)")
    parser.add_input("--calibration_input", metavar="NPY",
                     help="an N x C x H x W .npy array for nets without a Data layer")
    parser.add_report(("report.json",), help="write report.json here")
    add_memory_argument(parser)
    return parser


def _per_layer(items):
    plan = {}
    for item in items:
        name, sep, method = item.partition("=")
        if not sep or not name or not method:
            raise RistrettoError(f"--layer {item!r}: expected NAME=METHOD")
        plan[name] = Quantizer.parse(method)
    return plan


def main_quantize(argv=None):
    args = build_parser().parse_args(argv)
    default = Quantizer.parse(args.method) if args.method else None
    per_layer = _per_layer(args.layer)
    if default is None and not per_layer:
        raise RistrettoError("give --method (all layers) and/or --layer NAME=METHOD")
    activation = Quantizer.parse(args.activations) if args.activations else None
    if activation is not None and not args.out_model:
        raise RistrettoError("--activations writes a new prototxt: give --out-model")
    names = [n.strip() for n in args.layers.split(",") if n.strip()] if args.layers else None
    net = Net.load(args.model, args.weights)
    quantized, rows = quantize_weights(net, default, per_layer, names)
    activations = {}
    if activation is not None:
        batches = _calibration_batches(net, args)
        activations = calibrate_activations(net, activation, [r["layer"] for r in rows], batches)
        quantized = insert_activation_quantizers(quantized, activations)
        quantized.save(model_path=args.out_model)
    quantized.save(weights_path=args.out_weights)
    print(f"{'layer':24s} {'quantizer':16s} {'n':>10s} {'bits':>5s} {'r':>7s} {'rms error':>10s}")
    for row in rows:
        print(f"{row['layer']:24s} {row['quantizer']:16s} {row['n']:10,d} {row['bits_per_weight']:5d} "
              f"{row['ratio']:7.2f} {row['rms_error']:10.4g}")
    before = sum(r["bits_before"] for r in rows)
    after = sum(r["bits_after"] for r in rows)
    print(f"quantized weights: {before / 8:,.0f} -> {after / 8:,.0f} bytes (r = {before / after:.2f}); "
          "biases stay float32")
    for name, fields in activations.items():
        print(f"activations of {name}: {activation} {json.dumps(fields)}")
    if args.report:
        make_directory(args.report)
        write_text(os.path.join(args.report, "report.json"), json.dumps(
            {"layers": rows, "bits_before": before, "bits_after": after,
             "activations": activations}, indent=2) + "\n")
    return 0


def _calibration_batches(net, args):
    if args.calibration_input:
        data = load_array(args.calibration_input)
        return [{net.input_blobs[0]: data}]
    if not any(l.type == "Data" for l in net.source_layers):
        raise RistrettoError("the net has no Data layer: give --calibration-input X.npy")
    return fetch_batches(net, args.calibration_iterations)


def main(argv=None, prog=PROG):
    return run(main_quantize, argv, prog=prog)


if __name__ == "__main__":
    sys.exit(main())
