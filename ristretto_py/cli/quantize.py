"""``tools/quantize``: Ristretto's ``ristretto quantize`` (same flags, same decisions, same written
prototxt), with a progress bar per evaluation, Ristretto's summary, whether the written net keeps
the margin, the share of values that saturate per layer, and an optional report folder."""
import os
import sys
import time
import warnings

import numpy as np

from ..caffe_io import write_net_text
from ..errors import RistrettoError, RistrettoWarning
from ..legacy_ristretto import OLD_TRIMMING_MODES
from ..passes import quantize_report as reports
from ..passes.cost import net_cost
from ..passes.deploy_data import search_param
from ..passes.given_widths import apply_widths, parse_widths
from .quantize_finetune import add_finetune_arguments, finetune_lines, run_finetune
from ..passes.ranges import RULES
from ..passes.ristretto_quantize import MODES, RistrettoQuantizer
from .common import (add_backend_arguments, add_cluster_arguments, add_memory_argument,
                     add_model_arguments, add_seed_argument, cluster_session, make_parser, run,
                     write_run_record)
from .flag_types import (finite_float, float_range, int_range, non_negative_float, number_list,
                         positive_int)
from .search_args import add_image_arguments, add_measure_arguments, measure_and_data

PROG = "quantize"
REPORT_FILES = ("report.json", "report.md", "score_vs_bits.png", "pareto.json", "pareto.png",
                "run.json")


def build_parser():
    parser = make_parser(PROG, __doc__)
    add_model_arguments(parser, weights_required=True)
    parser.add_output("--model_quantized", required=True, metavar="PROTOTXT",
                      help="where to write the quantized net description")
    parser.add_argument("--trimming_mode", required=True,
                        choices=MODES + ("kmeans", "hwce") + tuple(OLD_TRIMMING_MODES),
                        help="Ristretto's modes (its first release's names fixed_point, "
                             "mini_floating_point, power_of_2_weights too), kmeans or hwce")
    parser.add_argument("--percentile", type=float_range(0, 100, low_open=True), default=99.99,
                        help="hwce mode: MSBs from this percentile of |x| (default 99.99)")
    parser.add_argument("--msb", type=int_range(-32, 31),
                        help="hwce mode: one fixed MSB exponent (-32 to 31) for every signal")
    parser.add_output("--weights_quantized", metavar="CAFFEMODEL",
                      help="kmeans mode: where to write the clustered weights; with --finetune: "
                           "the fine-tuned weights")
    parser.add_output("--packed", metavar="FILE", help="kmeans mode: also write the packed file")
    parser.add_argument("--kmeans_scope", default="layer",
                        help="kmeans mode: layer (default), global, type or regex:PATTERN")
    parser.add_argument("--codebook", default="float32",
                        help="kmeans mode: float32 (default), minifloat:E,M or fixed:BW")
    parser.add_argument("--error_margin", type=non_negative_float, default=2.0,
                        help="allowed score drop in percentage points (default 2, as Ristretto)")
    parser.add_argument("--iterations", type=positive_int, default=None,
                        help="batches per evaluation (default 50, as Ristretto; with --images "
                             "one pass over every image)")
    add_backend_arguments(parser, fixed=False)
    parser.add_argument("--integer_length", choices=RULES, default=None,
                        help="ristretto (default of the uniform search): its rules, activations "
                             "one bit short, ranges read after the forward pass; safe (default "
                             "of --search per_layer and --widths): the observed maximum of each "
                             "layer's own output never clips")
    parser.add_argument("--bias", choices=("shared", "int32"), default=None,
                        help="dynamic fixed point: shared (Ristretto's: the bias in the weights' "
                             "format; default with --integer_length ristretto) or int32 (32 bits "
                             "at the input-times-weight scale, as QDQ and integer accelerators; "
                             "default with safe)")
    parser.add_argument("--per_channel", action="store_true",
                        help="dynamic fixed point: one fractional length per output channel of "
                             "the weights (for folded BatchNorm, whose channels differ by orders)")
    parser.add_argument("--all_layers", action="store_true",
                        help="dynamic fixed point: also give Pooling, Eltwise, Concat, Scale, "
                             "Bias, BatchNorm, ReLU and PReLU layers a format (activations at "
                             "the activation width, their operands at the conv weight width), "
                             "so that the whole net runs in integers (--backend fixed, QDQ)")
    parser.add_argument("--widths", metavar="SPEC",
                        help="no search: quantize at these widths and score: conv=8,fc=8,act=8 "
                             "(every layer), conv1=8/8,ip1=4/8 (per layer: weights/activations) "
                             "or a JSON/YAML file such as --search per_layer's report.json")
    parser.add_argument("--max_weight_bits", type=int_range(1, 32), default=32,
                        help="--search per_layer: no weight width above this (default 32)")
    parser.add_argument("--max_act_bits", type=int_range(1, 32), default=32,
                        help="--search per_layer: no activation width above this (default 32)")
    parser.add_argument("--search", choices=("uniform", "per_layer"), default="uniform",
                        help="uniform: Ristretto's search; per_layer: then lower each layer's "
                             "widths in sensitivity order (dynamic_fixed_point only)")
    add_finetune_arguments(parser)
    add_measure_arguments(parser)
    parser.add_argument("--score_blob", default=None,
                        help="the blob to score: accuracy (default: the first scalar output), "
                             "agreement/l2/cosine (default: the Accuracy layer's input, else the "
                             "last output)")
    add_seed_argument(parser, "stochastic rounding and sampling")
    parser.add_report(REPORT_FILES, help="write report.json, report.md and score_vs_bits.png "
                                         "here (with --search per_layer also pareto.json/.png; "
                                         "run.json: the workers used and the wall time)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_input("--data", metavar="LMDB",
                     help="for a deploy net: read this LMDB through Data layers and score with "
                          "Accuracy layers on the net's output (written into the result)")
    parser.add_argument("--batch_size", type=positive_int, default=None,
                        help="with --data: images per batch (default 100); with --images or "
                             "--score lfw: images per forward pass (default 32)")
    parser.add_argument("--data_scale", type=finite_float, help="with --data: transform_param scale")
    parser.add_argument("--data_mean", type=number_list((1, 3), float, "numbers"), metavar="B,G,R",
                        help="with --data: transform_param mean_value")
    add_image_arguments(parser)
    add_memory_argument(parser)
    add_cluster_arguments(parser)
    return parser


def quantize_main(argv=None):
    args = build_parser().parse_args(argv)
    started = time.monotonic()
    with cluster_session(args) as cluster:
        args.pool = cluster.pool if cluster is not None else None
        code = _quantize(args)
        if args.report:
            write_run_record(args.report, cluster, started)
    return code


def _quantize(args):
    args.trimming_mode = OLD_TRIMMING_MODES.get(args.trimming_mode, args.trimming_mode)
    if args.integer_length is None:
        args.integer_length = ("safe" if args.search == "per_layer" or args.widths
                               else "ristretto")
    if args.bias is None:
        args.bias = "int32" if args.integer_length == "safe" else "shared"
    for flag, used in (("--search per_layer", args.search == "per_layer"),
                       ("--widths", args.widths), ("--per_channel", args.per_channel),
                       ("--bias int32", args.bias == "int32"), ("--all_layers", args.all_layers)):
        if used and args.trimming_mode != "dynamic_fixed_point":
            raise RistrettoError(f"{flag} works on --trimming_mode dynamic_fixed_point")
    if args.finetune and (args.trimming_mode != "dynamic_fixed_point" or
                          args.search == "per_layer"):
        raise RistrettoError("--finetune fine-tunes the dynamic_fixed_point search (Ristretto's, "
                             "or --widths); not --search per_layer or other trimming modes")
    if args.widths and args.search == "per_layer":
        raise RistrettoError("--widths gives the widths; leave out --search per_layer")
    widths = parse_widths(args.widths) if args.widths else None
    if args.trimming_mode == "kmeans":
        return _kmeans(args)
    if args.trimming_mode == "hwce":
        return _hwce(args)
    if args.search == "per_layer":
        from .quantize_per_layer import run_per_layer
        return run_per_layer(args)
    quantizer = make_quantizer(args, args.trimming_mode)
    if widths is not None:
        result = apply_widths(quantizer, widths)
        lines = widths_summary(result, widths)
    else:
        result = quantizer.run()
        lines = reports.summary_lines(result, _score_name(quantizer))
    tried = ()
    if args.finetune:
        for line in lines:
            print(line)
        best, tried = run_finetune(args, quantizer, result, narrow=widths is None)
        lines = finetune_lines(tried, best, _score_name(quantizer))
        result.quantized, result.chosen = best.param, dict(best.widths)
        result.final_score = best.after
    measured = reports.measure(quantizer, result.quantized)
    result.forward_passes = quantizer.forward_passes
    if not args.finetune:
        write_net_text(result.quantized, args.model_quantized)
    for line in lines:
        print(line)
    print(_verdict(quantizer, result, _advice(args)))
    print(f"Weights and biases: {measured.weight_bytes_before:,} bytes as float32 -> "
          f"{measured.weight_bytes_after:,} bytes")
    print("Share of values saturating at the chosen formats (float activations of the TEST set):")
    for name in result.lengths:
        c = measured.activation_counts.get(name, {})
        shares = [_share(c.get("input")), _share(c.get("output")),
                  _share_value(measured.param_shares.get(name))]
        print(f"  {name}: input {shares[0]}, output {shares[1]}, params {shares[2]}")
    warn_zeroed(measured)
    written = f"{args.model_quantized} and {args.weights_quantized}" if args.finetune else \
        args.model_quantized
    print(f"Wrote {written} ({result.forward_passes} forward batches of "
          f"{result.images_per_pass} images, the saturation pass included)")
    if args.report:
        report = reports.build_report(result, measured, settings(args), _advice(args),
                                      quantizer.measure)
        report["cost"] = net_cost(quantizer.build(result.quantized))
        if tried:
            report["finetune"] = [candidate.row() for candidate in tried]
        reports.write_report(args.report, report)
        write_lfw_reports(args.report, quantizer, result.quantized)
        print(f"Wrote the report to {args.report}")
    return 0


def widths_summary(result, widths):
    """What ``--widths`` applied and scored, in the summary's words."""
    kind, values = widths
    if kind == "uniform":
        given = (f"{values['conv_params']}bit CONV weights, {values['fc_params']}bit FC weights, "
                 f"{values['activations']}bit layer activations")
    else:
        given = ", ".join(f"{name} {w or 32}/{a or 32}" for name, (w, a) in values.items())
    return [f"Baseline 32bit float: {result.baseline:g}", f"Given widths: {given}",
            f"Dynamic fixed point net: {result.final_score:g}"]


def warn_zeroed(measured, limit=0.5):
    """One warning line naming the layers whose format rounds most of their weights to 0."""
    lost = {name: share for name, share in measured.zeroed.items() if share > limit}
    if lost:
        named = ", ".join(f"{name} {share:.1%}" for name, share in lost.items())
        warnings.warn(f"weights rounded to 0 by their layer's format: {named}; a format sized "
                      "for the bias or for a few large channels does this (--bias int32, "
                      "--per_channel)", RistrettoWarning)


def write_lfw_reports(directory, quantizer, quantized):
    """With --score lfw: the LFW reports of the float net and of the written net, side by side
    (``lfw_float/`` and ``lfw_quantized/``)."""
    measure = quantizer.measure
    if measure.kind != "lfw":
        return
    from ..evaluators.lfw_report import write_lfw_report
    for name, param in (("lfw_float", quantizer.param), ("lfw_quantized", quantized)):
        result, fold_d, fold_s = measure.verification(quantizer.outputs(param, name))
        write_lfw_report(os.path.join(directory, name), result, np.concatenate(fold_d),
                         np.concatenate(fold_s))


def _score_name(quantizer):
    kind = quantizer.measure.kind
    return {"accuracy": "Accuracy", "l2": "L2 distance", "cosine": "Cosine distance",
            "lfw": "LFW accuracy"}.get(kind, kind.capitalize())


def _verdict(quantizer, result, advice=None):
    return reports.margin_verdict(result.baseline, result.final_score, quantizer.measure,
                                  advice)[1]


def _advice(args):
    """What to try when the written net misses the margin."""
    if args.integer_length == "safe":
        return "--search per_layer looks for a net that keeps it layer by layer"
    return None


def make_quantizer(args, mode):
    """The RistrettoQuantizer of the flags: its net, measure, batches and parameter formats."""
    formats = {}
    if mode == "dynamic_fixed_point" and (args.bias != "shared" or args.per_channel):
        formats = {"bias": args.bias, "per_channel": args.per_channel}
    quantizer = RistrettoQuantizer(
        args.model, args.weights, args.iterations or 50, mode, args.error_margin,
        backend=args.backend, compat=args.compat, integer_length=args.integer_length,
        score_blob=args.score_blob, seed=args.seed, progress=not args.quiet,
        net_param=search_param(args.model, args.data, args.batch_size or 100, args.data_scale,
                               args.data_mean), formats=formats, all_layers=args.all_layers)
    carrying = [l.name for l in quantizer.param.layer if l.HasField("weight_quantization_param")]
    if carrying:
        raise RistrettoError(f"{args.model}: layer {carrying[0]} carries a training-time weight "
                             "quantizer (weight_quantization_param), which would replace the "
                             "searched weight formats: quantize the float description first, "
                             "then add the quantizers (tools/quantize_weights --training)")
    quantizer.use(*measure_and_data(args, quantizer.build(quantizer.param), args.error_margin))
    if getattr(args, "pool", None) is not None:
        quantizer.on_cluster(args.pool)
    return quantizer


def settings(args, *extra):
    """The flags a report records."""
    names = ("model", "weights", "trimming_mode", "search", "iterations", "error_margin",
             "backend", "compat", "integer_length", "bias", "per_channel", "seed", "data",
             "images", "calibration_data", "score", "score_blob", "max_distance", "widths",
             "all_layers") + extra
    return {name: getattr(args, name) for name in names}


def _share(pair):
    if not pair or not pair[1]:
        return "-"
    return f"{pair[0] / pair[1]:.2%}"


def _share_value(value):
    return "-" if value is None else f"{value:.2%}"


def _kmeans(args):
    from ..packed import write_packed
    from ..passes.cost import clustered_cost
    from ..passes.kmeans import Codebook, compression
    from ..passes.kmeans_search import search_kmeans
    from ..passes.ristretto_edit import without_state
    if not args.weights_quantized:
        raise RistrettoError("--trimming_mode kmeans writes weights: give --weights_quantized")
    codebook = Codebook.parse(args.codebook)
    quantizer = make_quantizer(args, "kmeans")
    result, net, clusters = search_kmeans(quantizer, args.kmeans_scope, codebook, args.seed)
    result.forward_passes = quantizer.forward_passes
    _, total = compression(net, clusters, codebook.bit_width)
    write_net_text(without_state(quantizer.param), args.model_quantized)
    net.save(weights_path=args.weights_quantized)
    if args.packed:
        write_packed(args.packed, net, clusters)
    for line in reports.summary_lines(result, _score_name(quantizer)):
        print(line)
    print(_verdict(quantizer, result, "more index bits (a larger K) keep more of it"))
    before, after = total["bits_before"] // 8, -(-total["bits_after"] // 8)
    print(f"Weights and biases: {before:,} bytes as float32 -> {after:,} bytes (r = {total['ratio']:.2f})")
    print(f"Wrote {args.model_quantized} and {args.weights_quantized}"
          + (f" and {args.packed}" if args.packed else ""))
    if args.report:
        report = reports.build_report(result, reports.Measurement(before, after),
                                      settings(args, "kmeans_scope", "codebook"),
                                      "more index bits (a larger K) keep more of it",
                                      quantizer.measure)
        report["cost"] = clustered_cost(net, clusters, codebook.bit_width)
        reports.write_report(args.report, report)
        print(f"Wrote the report to {args.report}")
    return 0


def _hwce(args):
    from ..passes.hwce_search import search_hwce
    quantizer = make_quantizer(args, "hwce")
    result, msbs = search_hwce(quantizer, args.percentile, args.msb)
    result.forward_passes = quantizer.forward_passes
    write_net_text(result.quantized, args.model_quantized)
    for line in reports.summary_lines(result, _score_name(quantizer)):
        print(line)
    advice = "a higher --percentile or a fixed --msb may keep it"
    print(_verdict(quantizer, result, advice))
    for name, m in msbs.items():
        print(f"  {name}: MSB kernel {m['kernel']}, input {m['input']}, output {m['output']}")
    print(f"Wrote {args.model_quantized}")
    if args.report:
        cost = net_cost(quantizer.build(result.quantized))
        before = reports.weight_bytes(quantizer.build(quantizer.param))
        measured = reports.Measurement(before, int(round(cost["totals"]["param_bytes"])))
        report = reports.build_report(result, measured, settings(args, "percentile", "msb"), advice,
                                      quantizer.measure)
        report["msbs"] = msbs
        report["cost"] = cost
        reports.write_report(args.report, report)
        print(f"Wrote the report to {args.report}")
    return 0


def main(argv=None, prog=PROG):
    return run(quantize_main, argv, prog=prog)


if __name__ == "__main__":
    sys.exit(main())
