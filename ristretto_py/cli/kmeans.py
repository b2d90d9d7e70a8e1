"""``tools/kmeans``: share weights by k-means clustering (one codebook per layer, per layer
type, per regex group or one for all). Writes a caffemodel whose weights are the centroids, and
optionally the packed file (codebooks + bit-packed indices) and a report of the compression."""
import json
import os
import sys

from ..atomic import make_directory, staged_path, write_text
from ..net import Net
from ..passes.kmeans import INITS, Codebook, check_clusters, cluster_net, compression
from ..packed import write_packed
from .common import add_model_arguments, add_seed_argument, make_parser, run
from .flag_types import positive_int

PROG = "kmeans"


def build_parser():
    parser = make_parser(PROG, __doc__)
    add_model_arguments(parser, weights_required=True)
    parser.add_argument("--clusters", type=positive_int, required=True, help="K, a power of two")
    parser.add_argument("--scope", default="layer",
                        help="layer (default), global, type, or regex:PATTERN (layers whose names "
                             "match share a codebook; the first capture group names the group)")
    parser.add_argument("--layers", help="comma-separated layer names (default: every "
                                         "Convolution/InnerProduct/Deconvolution layer)")
    parser.add_argument("--codebook", default="float32",
                        help="float32 (default), minifloat:E,M or fixed:BW")
    parser.add_argument("--init", choices=INITS, default="linear",
                        help="centroid initialisation (Deep Compression's three): linear over "
                             "[min, max] (default, the best of them), density (quantiles of the "
                             "weights) or random (seeded: K distinct weights)")
    add_seed_argument(parser, "--init random (linear and density are deterministic: with them "
                              "the seed changes nothing)")
    parser.add_output("--out_weights", required=True, metavar="CAFFEMODEL",
                      help="where to write the clustered caffemodel")
    parser.add_output("--packed", metavar="FILE", help="also write the packed weights file")
    parser.add_report(("report.json", "report.md"), help="write report.json and report.md here")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def kmeans_main(argv=None):
    args = build_parser().parse_args(argv)
    check_clusters(args.clusters)
    codebook = Codebook.parse(args.codebook)
    net = Net.load(args.model, args.weights)
    names = [n.strip() for n in args.layers.split(",") if n.strip()] if args.layers else None
    clustered, clusters = cluster_net(net, args.clusters, args.scope, names, codebook, args.seed,
                                      progress=not args.quiet, init=args.init)
    rows, total = compression(net, clusters, codebook.bit_width)
    clustered.save(weights_path=args.out_weights)
    if args.packed:
        write_packed(args.packed, clustered, clusters)
    sizes = {"caffemodel_bytes": os.path.getsize(args.weights),
             "packed_bytes": os.path.getsize(staged_path(args.packed)) if args.packed else None}
    print(f"{'layer':24s} {'codebook':16s} {'n':>10s} {'K':>6s} {'index bits':>10s} "
          f"{'codebook bits':>13s} {'r':>7s}")
    for row in rows:
        print(f"{row['layer']:24s} {row['codebook']:16s} {row['n']:10,d} {row['k']:6d} "
              f"{row['index_bits']:10d} {row['codebook_bits']:13d} {row['ratio']:7.2f}")
    print(f"total (biases and unclustered layers as float32): {total['bits_before'] / 8:,.0f} -> "
          f"{total['bits_after'] / 8:,.0f} bytes, r = {total['ratio']:.2f}")
    if args.packed:
        print(f"on disk: {args.weights} {sizes['caffemodel_bytes']:,} bytes, "
              f"{args.packed} {sizes['packed_bytes']:,} bytes")
    if args.report:
        make_directory(args.report)
        from ..passes.cost import clustered_cost
        report = {"clusters": args.clusters, "scope": args.scope, "codebook": str(codebook),
                  "init": args.init, "seed": args.seed, "layers": rows, "total": total, **sizes,
                  "cost": clustered_cost(clustered, clusters, codebook.bit_width)}
        write_text(os.path.join(args.report, "report.json"), json.dumps(report, indent=2) + "\n")
        lines = ["# k-means weight sharing", "", f"K = {args.clusters}, scope {args.scope}, "
                 f"codebook {codebook}, {args.init} initialisation (seed {args.seed})", "", "| layer | codebook | n | K | index bits | codebook bits | r |",
                 "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['layer']} | {r['codebook']} | {r['n']} | {r['k']} | {r['index_bits']} | "
                  f"{r['codebook_bits']} | {r['ratio']:.2f} |" for r in rows]
        lines += ["", f"Total r = {total['ratio']:.2f} (biases counted as float32)."]
        if args.packed:
            lines.append(f"Bytes on disk: caffemodel {sizes['caffemodel_bytes']:,}, packed "
                         f"{sizes['packed_bytes']:,}.")
        write_text(os.path.join(args.report, "report.md"), "\n".join(lines) + "\n")
    return 0


def main(argv=None, prog=PROG):
    return run(kmeans_main, argv, prog=prog)


if __name__ == "__main__":
    sys.exit(main())
