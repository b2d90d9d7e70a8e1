"""``tools/quantize_weights``: post-training weight quantizers of the literature, chosen for all
Convolution/InnerProduct layers (``--method``) and per layer (``--layer NAME=METHOD``): linear:N,
gaussian:N:C (LPDNN/QUENN), binary (BinaryConnect), scaled_binary (DoReFa), ternary (TWN),
hwce:N:PERCENTILE (PULP HWCE). The caffemodel it writes runs in any runtime. ``--activations``
also quantizes the layers' outputs (linear, gaussian or hwce) with constants calibrated on data,
by inserting ristretto-py ActivationQuantize layers into the written prototxt.

``--training`` writes training-time quantizers instead (``weight_quantization_param``, see
``passes/training_quantizers``): the prototxt names them, the weights stay full precision, and
``tools/train`` trains through them; ``--layer_type conv=...``/``fc=...`` picks them per type and
``--keep_first_last`` leaves the first and last learned layers as they are. ``--activations
sign`` (BNN) and ``--activations dorefa:K`` (k bits over [0, 1]) need no calibration."""
import json
import os
import sys

from ..atomic import make_directory, write_text
from ..caffe_io import read_net_text, write_net_text
from ..errors import RistrettoError
from ..evaluators.classification import fetch_batches
from ..images import load_array
from ..net import Net
from ..passes.activation_quantizers import calibrate_activations, insert_activation_quantizers
from ..passes.training_quantizers import (TrainingQuantizer, plan_quantizers,
                                         prepare_quantizers, with_training_quantizers)
from ..passes.weight_quantizers import Quantizer, quantize_weights
from ..evaluators.image_data import ImageBatches, image_files
from ..passes.kmeans import select_layers
from .common import add_memory_argument, add_model_arguments, make_parser, run
from .search_args import add_preparation_arguments, is_lmdb, preparation
from .flag_types import positive_int

PROG = "quantize_weights"


def build_parser():
    parser = make_parser(PROG, __doc__)
    add_model_arguments(parser, weights_required=True)
    parser.add_argument("--method", help="quantizer for every Convolution/InnerProduct layer")
    parser.add_argument("--layer", action="append", default=[], metavar="NAME=METHOD",
                        help="quantizer for one layer (repeatable; overrides --method)")
    parser.add_argument("--layer_type", action="append", default=[], metavar="TYPE=METHOD",
                        help="with --training: quantizer for a layer type (conv, fc or a Caffe "
                             "type; repeatable; between --method and --layer)")
    parser.add_argument("--layers", help="comma-separated layers to quantize (default: all)")
    parser.add_argument("--training", action="store_true",
                        help="write training-time quantizers into --out_model (weights stay "
                             "float, for tools/train): binary, scaled_binary, "
                             "stochastic_binary, scaled_stochastic_binary, ternary[:T], "
                             "dorefa:K[:max], hwce:N:P")
    parser.add_argument("--keep_first_last", action="store_true",
                        help="with --training: leave the net's first and last learned layers "
                             "without a quantizer")
    parser.add_output("--out_weights", metavar="CAFFEMODEL",
                      help="where to write the quantized weights (needed with --method/--layer)")
    parser.add_argument("--activations", metavar="METHOD",
                        help="quantize the selected layers' outputs: linear:N, gaussian:N:C or "
                             "hwce:N:P (needs --out_model and calibration data; alone, it leaves "
                             "the weights as they are)")
    parser.add_output("--out_model", metavar="PROTOTXT",
                      help="where to write the prototxt with the activation quantizers")
    parser.add_argument("--calibration_iterations", type=positive_int, default=10,
                        help="batches of the net's Data layer to calibrate on (default 10)")
    parser.add_input("--calibration_input", metavar="NPY",
                     help="an N x C x H x W .npy array for nets without a Data layer")
    parser.add_input("--calibration_data", metavar="LMDB|DIR|LIST",
                     help="calibrate on this LMDB (through the net's Data layer) or on these "
                          "images (prepared with --resize/--crop/--mean/--scale/--gray)")
    parser.add_argument("--batch_size", type=positive_int, default=32,
                        help="with image calibration data: images per batch (default 32)")
    add_preparation_arguments(parser)
    parser.add_report(("report.json",), help="write report.json here")
    add_memory_argument(parser)
    return parser


def _pairs(items, flag):
    plan = {}
    for item in items:
        name, sep, method = item.partition("=")
        if not sep or not name or not method:
            raise RistrettoError(f"{flag} {item!r}: expected NAME=METHOD")
        plan[name] = method
    return plan


def main_quantize(argv=None):
    args = build_parser().parse_args(argv)
    if args.training:
        return main_training(args)
    if args.layer_type or args.keep_first_last:
        raise RistrettoError("--layer_type and --keep_first_last go with --training")
    default = Quantizer.parse(args.method) if args.method else None
    per_layer = {k: Quantizer.parse(v) for k, v in _pairs(args.layer, "--layer").items()}
    activation = None
    if args.activations:
        if args.activations in ("sign",) or args.activations.startswith("dorefa:"):
            raise RistrettoError(f"--activations {args.activations} is a training-time quantizer: "
                                 "add --training")
        activation = Quantizer.parse(args.activations)
    if default is None and not per_layer and activation is None:
        raise RistrettoError("give --method (all layers), --layer NAME=METHOD and/or "
                             "--activations METHOD")
    if activation is not None and not args.out_model:
        raise RistrettoError("--activations writes a new prototxt: give --out_model")
    if (default is not None or per_layer) and not args.out_weights:
        raise RistrettoError("--method/--layer write new weights: give --out_weights")
    if args.calibration_input and args.calibration_data:
        raise RistrettoError("give --calibration_input or --calibration_data, not both")
    names = [n.strip() for n in args.layers.split(",") if n.strip()] if args.layers else None
    net = Net.load(args.model, args.weights)
    if default is not None or per_layer:
        quantized, rows = quantize_weights(net, default, per_layer, names)
    else:                       # activations only: the weights stay as they are
        quantized, rows = net, []
    layers = [r["layer"] for r in rows] or [l.name for l in select_layers(net, names)]
    activations = {}
    if activation is not None:
        batches = _calibration_batches(net, args)
        activations = calibrate_activations(net, activation, layers, batches)
        quantized = insert_activation_quantizers(quantized, activations)
        quantized.save(model_path=args.out_model)
    if args.out_weights:
        quantized.save(weights_path=args.out_weights)
    print(f"{'layer':24s} {'quantizer':16s} {'n':>10s} {'bits':>5s} {'r':>7s} {'rms error':>10s}")
    for row in rows:
        print(f"{row['layer']:24s} {row['quantizer']:16s} {row['n']:10,d} {row['bits_per_weight']:5d} "
              f"{row['ratio']:7.2f} {row['rms_error']:10.4g}")
    before = sum(r["bits_before"] for r in rows)
    after = sum(r["bits_after"] for r in rows)
    if rows:
        print(f"quantized weights: {before / 8:,.0f} -> {after / 8:,.0f} bytes "
              f"(r = {before / after:.2f}); biases stay float32")
    for name, fields in activations.items():
        print(f"activations of {name}: {activation} {json.dumps(fields)}")
    if args.report:
        make_directory(args.report)
        write_text(os.path.join(args.report, "report.json"), json.dumps(
            {"layers": rows, "bits_before": before, "bits_after": after,
             "activations": activations}, indent=2) + "\n")
    return 0


def main_training(args):
    if not args.out_model:
        raise RistrettoError("--training writes a prototxt: give --out_model")
    if args.out_weights:
        raise RistrettoError("--training keeps the weights as they are: drop --out_weights")
    parse = TrainingQuantizer.parse
    default = parse(args.method) if args.method else None
    per_type = {k: parse(v) for k, v in _pairs(args.layer_type, "--layer_type").items()}
    per_layer = {k: parse(v) for k, v in _pairs(args.layer, "--layer").items()}
    activations = training_activation_fields(args.activations) if args.activations else None
    if default is None and not per_type and not per_layer and activations is None:
        raise RistrettoError("give --method, --layer_type, --layer and/or --activations")
    names = [n.strip() for n in args.layers.split(",") if n.strip()] if args.layers else None
    net = Net.load(args.model, args.weights)
    plan, kept = plan_quantizers(net, default, per_type, per_layer, names, args.keep_first_last)
    quantizers, rows = prepare_quantizers(net, plan)
    targets = []
    if activations is not None:
        targets = [l.name for l in select_layers(net, names) if l.name not in kept]
    # Every phase's layers, as read (a training net keeps its TRAIN data layer).
    write_net_text(with_training_quantizers(read_net_text(args.model), quantizers,
                                            {n: activations for n in targets}), args.out_model)
    print(f"{'layer':24s} {'training quantizer':32s} {'n':>10s} {'bits':>5s} {'bytes':>10s} "
          f"{'float':>10s}")
    for row in rows:
        print(f"{row['layer']:24s} {row['quantizer']:32s} {row['n']:10,d} "
              f"{row['bits_per_weight']:5d} {row['packed_bytes']:10,d} {row['float_bytes']:10,d}")
    if kept:
        print(f"kept as they are (first and last learned layers): {', '.join(kept)}")
    if activations is not None:
        print(f"activations: {args.activations} after {len(targets)} layers "
              f"{json.dumps(activations)}")
    if args.report:
        make_directory(args.report)
        write_text(os.path.join(args.report, "report.json"), json.dumps(
            {"layers": rows, "kept": kept, "activations": activations}, indent=2) + "\n")
    return 0


def training_activation_fields(text):
    """ActivationQuantize fields of ``sign`` (BNN) or ``dorefa:K`` (K bits over [0, 1])."""
    if text == "sign":
        return {"method": 2}
    kind, _, bits = text.partition(":")
    if kind == "dorefa" and bits.isdigit() and 1 <= int(bits) <= 16:
        return {"method": 0, "bits": int(bits), "low": 0.0, "high": 1.0}
    raise RistrettoError(f"--activations {text!r} with --training: use sign or dorefa:K "
                         "(K from 1 to 16)")


def _calibration_batches(net, args):
    if args.calibration_input:
        data = load_array(args.calibration_input)
        return [{net.input_blobs[0]: data}]
    source = args.calibration_data
    if source and not is_lmdb(source):
        return ImageBatches(image_files(source), net.input_blobs[0], preparation(args),
                            args.batch_size, None, net.shapes().get(net.input_blobs[0]))
    if not any(l.type == "Data" for l in net.source_layers):
        raise RistrettoError("the net has no Data layer whose LMDB to read: give "
                             "--calibration_data (a folder of images) or --calibration_input X.npy")
    return fetch_batches(net, args.calibration_iterations, data_source=source)


def main(argv=None, prog=PROG):
    return run(main_quantize, argv, prog=prog)


if __name__ == "__main__":
    sys.exit(main())
