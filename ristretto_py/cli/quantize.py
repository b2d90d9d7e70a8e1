"""``tools/quantize``: Ristretto's ``ristretto quantize`` (same flags, same decisions, same written
prototxt), with a progress bar per evaluation, Ristretto's summary, the share of values that
saturate per layer, and an optional report folder."""
import sys

from ..caffe_io import write_net_text
from ..errors import RistrettoError
from ..legacy_ristretto import OLD_TRIMMING_MODES
from ..numerics import COMPAT_MODES
from ..passes import quantize_report as reports
from ..passes.ranges import RULES
from ..passes.ristretto_quantize import MODES, RistrettoQuantizer
from ..runtime import BACKENDS
from .common import add_model_arguments, check_output_path, make_parser, number_list, run

PROG = "quantize"


def build_parser():
    parser = make_parser(PROG, __doc__)
    add_model_arguments(parser, weights_required=True)
    parser.add_argument("--model_quantized", required=True, metavar="PROTOTXT",
                        help="where to write the quantized net description")
    parser.add_argument("--trimming_mode", required=True,
                        choices=MODES + ("kmeans", "hwce") + tuple(OLD_TRIMMING_MODES),
                        help="Ristretto's modes (its first release's names fixed_point, "
                             "mini_floating_point, power_of_2_weights too), kmeans or hwce")
    parser.add_argument("--percentile", type=float, default=99.99,
                        help="hwce mode: MSBs from this percentile of |x| (default 99.99)")
    parser.add_argument("--msb", type=int, help="hwce mode: one fixed MSB exponent for every signal")
    parser.add_argument("--weights_quantized", metavar="CAFFEMODEL",
                        help="kmeans mode: where to write the clustered weights")
    parser.add_argument("--packed", metavar="FILE", help="kmeans mode: also write the packed file")
    parser.add_argument("--kmeans_scope", default="layer",
                        help="kmeans mode: layer (default), global, type or regex:PATTERN")
    parser.add_argument("--codebook", default="float32",
                        help="kmeans mode: float32 (default), minifloat:E,M or fixed:BW")
    parser.add_argument("--error_margin", type=float, default=2.0,
                        help="allowed score drop in percentage points (default 2, as Ristretto)")
    parser.add_argument("--iterations", type=int, default=50,
                        help="batches per evaluation (default 50, as Ristretto)")
    parser.add_argument("--backend", choices=sorted(BACKENDS), default="numpy")
    parser.add_argument("--compat", choices=COMPAT_MODES, default="gpu",
                        help="Ristretto build to reproduce: gpu (documented semantics) or cpu")
    parser.add_argument("--integer_length", choices=RULES, default=None,
                        help="ristretto (default of the uniform search): its rules, activations "
                             "one bit short; safe (default of --search per_layer): the observed "
                             "maximum never clips and the bias counts")
    parser.add_argument("--search", choices=("uniform", "per_layer"), default="uniform",
                        help="uniform: Ristretto's search; per_layer: then lower each layer's "
                             "widths in sensitivity order (dynamic_fixed_point only)")
    parser.add_argument("--score", choices=("accuracy", "agreement"), default="accuracy",
                        help="per_layer: agreement = share of top-1 equal to the float net's")
    parser.add_argument("--score_blob", default=None,
                        help="output blob to score (default: the first scalar output)")
    parser.add_argument("--seed", type=int, default=0, help="seed of stochastic rounding/sampling")
    parser.add_argument("--report", metavar="DIR", help="write report.json, report.md and a plot here")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--data", metavar="LMDB",
                        help="for a deploy net: read this LMDB through Data layers and score with "
                             "Accuracy layers on the net's output (written into the result)")
    parser.add_argument("--batch_size", type=int, default=100, help="with --data (default 100)")
    parser.add_argument("--data_scale", type=float, help="with --data: transform_param scale")
    parser.add_argument("--data_mean", type=number_list((1, 3), float, "numbers"), metavar="B,G,R",
                        help="with --data: transform_param mean_value")
    return parser


def quantize_main(argv=None):
    args = build_parser().parse_args(argv)
    args.trimming_mode = OLD_TRIMMING_MODES.get(args.trimming_mode, args.trimming_mode)
    if args.iterations < 1:
        raise RistrettoError(f"--iterations must be at least 1, not {args.iterations}")
    check_output_path(args.model_quantized)
    if args.integer_length is None:
        args.integer_length = "safe" if args.search == "per_layer" else "ristretto"
    if args.trimming_mode == "kmeans":
        return _kmeans(args)
    if args.trimming_mode == "hwce":
        return _hwce(args)
    if args.search == "per_layer":
        if args.trimming_mode != "dynamic_fixed_point":
            raise RistrettoError("--search per_layer works on dynamic_fixed_point")
        from .quantize_per_layer import run_per_layer
        return run_per_layer(args)
    quantizer = RistrettoQuantizer(
        args.model, args.weights, args.iterations, args.trimming_mode, args.error_margin,
        backend=args.backend, compat=args.compat, integer_length=args.integer_length,
        score_blob=args.score_blob, seed=args.seed, progress=not args.quiet,
        net_param=_net_param(args))
    result = quantizer.run()

    float_net = quantizer.build(quantizer.param)
    precisions = reports.layer_precisions(result.quantized)
    observe, counts = reports.saturation_observer(precisions)
    quantizer.evaluate(quantizer.param, "saturation (float net)", observer=observe)
    before = reports.weight_bytes(float_net)
    after = reports.weight_bytes(float_net, precisions)
    param_shares = reports.parameter_saturation(float_net, precisions)

    write_net_text(result.quantized, args.model_quantized)
    for line in reports.summary_lines(result):
        print(line)
    print(f"Weights and biases: {before:,} bytes as float32 -> {after:,} bytes")
    print("Share of values saturating at the chosen formats (float activations of the TEST set):")
    for name in result.lengths:
        c = counts.get(name, {})
        shares = [_share(c.get("input")), _share(c.get("output")), _share_value(param_shares.get(name))]
        print(f"  {name}: input {shares[0]}, output {shares[1]}, params {shares[2]}")
    print(f"Wrote {args.model_quantized} ({quantizer.forward_passes} forward batches of "
          f"{result.images_per_pass} images)")
    if args.report:
        settings = {"model": args.model, "weights": args.weights, "iterations": args.iterations,
                    "error_margin": args.error_margin, "backend": args.backend,
                    "compat": args.compat, "integer_length": args.integer_length,
                    "seed": args.seed}
        report = reports.build_report(result, before, after, counts, param_shares, settings)
        report["cost"] = _cost(quantizer, result.quantized)
        reports.write_report(args.report, report)
        print(f"Wrote the report to {args.report}")
    return 0


def _share(pair):
    if not pair or not pair[1]:
        return "-"
    return f"{pair[0] / pair[1]:.2%}"


def _share_value(value):
    return "-" if value is None else f"{value:.2%}"


def _kmeans(args):
    from ..packed import write_packed
    from ..passes.kmeans import Codebook, compression
    from ..passes.kmeans_search import search_kmeans
    from ..passes.ristretto_edit import without_state
    if not args.weights_quantized:
        raise RistrettoError("--trimming_mode kmeans writes weights: give --weights_quantized")
    codebook = Codebook.parse(args.codebook)
    for path in filter(None, (args.weights_quantized, args.packed)):
        check_output_path(path)
    quantizer = RistrettoQuantizer(
        args.model, args.weights, args.iterations, "kmeans", args.error_margin,
        backend=args.backend, compat=args.compat, score_blob=args.score_blob, seed=args.seed,
        progress=not args.quiet, net_param=_net_param(args))
    result, net, clusters = search_kmeans(quantizer, args.kmeans_scope, codebook, args.seed)
    result.forward_passes = quantizer.forward_passes
    _, total = compression(net, clusters, codebook.bit_width)
    write_net_text(without_state(quantizer.param), args.model_quantized)
    net.save(weights_path=args.weights_quantized)
    if args.packed:
        write_packed(args.packed, net, clusters)
    for line in reports.summary_lines(result):
        print(line)
    before, after = total["bits_before"] // 8, -(-total["bits_after"] // 8)
    print(f"Weights and biases: {before:,} bytes as float32 -> {after:,} bytes (r = {total['ratio']:.2f})")
    print(f"Wrote {args.model_quantized} and {args.weights_quantized}"
          + (f" and {args.packed}" if args.packed else ""))
    if args.report:
        settings = {"model": args.model, "weights": args.weights, "iterations": args.iterations,
                    "error_margin": args.error_margin, "backend": args.backend,
                    "kmeans_scope": args.kmeans_scope, "codebook": str(codebook), "seed": args.seed}
        report = reports.build_report(result, before, after, {}, {}, settings)
        from ..passes.cost import clustered_cost
        report["cost"] = clustered_cost(net, clusters, codebook.bit_width)
        reports.write_report(args.report, report)
        print(f"Wrote the report to {args.report}")
    return 0


def _hwce(args):
    from ..passes.hwce_search import search_hwce
    if not 0 < args.percentile <= 100:
        raise RistrettoError(f"--percentile must be in (0, 100], not {args.percentile}")
    quantizer = RistrettoQuantizer(
        args.model, args.weights, args.iterations, "hwce", args.error_margin,
        backend=args.backend, compat=args.compat, score_blob=args.score_blob, seed=args.seed,
        progress=not args.quiet, net_param=_net_param(args))
    result, msbs = search_hwce(quantizer, args.percentile, args.msb)
    write_net_text(result.quantized, args.model_quantized)
    for line in reports.summary_lines(result):
        print(line)
    for name, m in msbs.items():
        print(f"  {name}: MSB kernel {m['kernel']}, input {m['input']}, output {m['output']}")
    print(f"Wrote {args.model_quantized}")
    if args.report:
        settings = {"model": args.model, "weights": args.weights, "iterations": args.iterations,
                    "error_margin": args.error_margin, "percentile": args.percentile, "msb": args.msb}
        report = reports.build_report(result, 0, 0, {}, {}, settings)
        report["msbs"] = msbs
        report["cost"] = _cost(quantizer, result.quantized)
        report["weight_bytes_before"] = report["cost"]["totals"]["param_bytes"]
        reports.write_report(args.report, report)
        print(f"Wrote the report to {args.report}")
    return 0


def _cost(quantizer, quantized):
    """The cost model of the quantized TEST net (parameter bytes, traffic, MACs per layer)."""
    from ..passes.cost import cost_table, layer_costs
    table, totals = cost_table(layer_costs(quantizer.build(quantized)))
    return {"layers": table, "totals": totals}


def _net_param(args):
    """The net the search works on: the prototxt, or with --data the deploy net given Data and
    Accuracy layers."""
    if not args.data:
        return None
    from ..caffe_io import read_net_text
    from ..passes.deploy_data import with_data_layers
    return with_data_layers(read_net_text(args.model), args.data, args.batch_size, args.data_scale,
                            args.data_mean)


def main(argv=None):
    return run(quantize_main, argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
