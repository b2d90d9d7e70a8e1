"""``tools/kmeans``: share weights by k-means clustering (one codebook per layer, per layer
type, per regex group or one for all). Writes a caffemodel whose weights are the centroids, and
optionally the packed file (codebooks + bit-packed indices) and a report of the compression."""
import json
import os
import sys

from ..atomic import write_text
from ..net import Net
from ..passes.kmeans import Codebook, check_clusters, cluster_net, compression
from ..packed import write_packed
from .common import add_model_arguments, check_output_path, make_parser, run

PROG = "kmeans"


def build_parser():
    parser = make_parser(PROG, __doc__)
    add_model_arguments(parser, weights_required=True)
    parser.add_argument("--clusters", type=int, required=True, help="K, a power of two")
    parser.add_argument("--scope", default="layer",
                        help="layer (default), global, type, or regex:PATTERN (layers whose names "
                             "match share a codebook; the first capture group names the group)")
    parser.add_argument("--layers", help="comma-separated layer names (default: every "
                                         "Convolution/InnerProduct/Deconvolution layer)")
    parser.add_argument("--codebook", default="float32",
                        help="float32 (default), minifloat:E,M or fixed:BW")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-weights", required=True, metavar="CAFFEMODEL")
    parser.add_argument("--packed", metavar="FILE", help="also write the packed weights file")
    parser.add_argument("--report", metavar="DIR", help="write report.json and report.md here")
    parser.add_argument("--quiet", action="store_true")
    return parser


def kmeans_main(argv=None):
    args = build_parser().parse_args(argv)
    check_clusters(args.clusters)
    codebook = Codebook.parse(args.codebook)
    for path in filter(None, (args.out_weights, args.packed)):
        check_output_path(path)
    net = Net.load(args.model, args.weights)
    names = [n.strip() for n in args.layers.split(",") if n.strip()] if args.layers else None
    clustered, clusters = cluster_net(net, args.clusters, args.scope, names, codebook, args.seed,
                                      progress=not args.quiet)
    rows, total = compression(net, clusters, codebook.bit_width)
    clustered.save(weights_path=args.out_weights)
    if args.packed:
        write_packed(args.packed, clustered, clusters)
    sizes = {"caffemodel_bytes": os.path.getsize(args.weights),
             "packed_bytes": os.path.getsize(args.packed) if args.packed else None}
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
        os.makedirs(args.report, exist_ok=True)
        from ..passes.cost import clustered_cost
        report = {"clusters": args.clusters, "scope": args.scope, "codebook": str(codebook),
                  "seed": args.seed, "layers": rows, "total": total, **sizes,
                  "cost": clustered_cost(clustered, clusters, codebook.bit_width)}
        write_text(os.path.join(args.report, "report.json"), json.dumps(report, indent=2) + "\n")
        lines = ["# k-means weight sharing", "", f"K = {args.clusters}, scope {args.scope}, "
                 f"codebook {codebook}", "", "| layer | codebook | n | K | index bits | codebook bits | r |",
                 "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['layer']} | {r['codebook']} | {r['n']} | {r['k']} | {r['index_bits']} | "
                  f"{r['codebook_bits']} | {r['ratio']:.2f} |" for r in rows]
        lines += ["", f"Total r = {total['ratio']:.2f} (biases counted as float32)."]
        if args.packed:
            lines.append(f"Bytes on disk: caffemodel {sizes['caffemodel_bytes']:,}, packed "
                         f"{sizes['packed_bytes']:,}.")
        write_text(os.path.join(args.report, "report.md"), "\n".join(lines) + "\n")
    return 0


def main(argv=None):
    return run(kmeans_main, argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
