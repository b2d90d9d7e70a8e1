"""``tools/evaluate_lfw``: LFW pair verification with a net's features (Euclidean distance,
threshold from the dev pairs or the other folds), printing the mean fold accuracy ± standard
error; ``--report`` adds ROC AUC, the equal error rate and plots."""
import sys
import time

import numpy as np

from .. import caffe_io
from ..errors import RistrettoError
from ..evaluators import lfw
from ..evaluators.image_data import ImagePreparation
from ..evaluators.lfw_report import REPORT_FILES, write_lfw_report
from ..net import Net
from ..runtime import make_runtime
from .common import (add_backend_arguments, add_cluster_arguments, add_memory_argument,
                     add_model_arguments, cluster_session, make_parser, run, runtime_options,
                     write_run_record)
from .flag_types import finite_float, number_list, positive_int, positive_int_pair

PROG = "evaluate_lfw"


def build_parser():
    parser = make_parser(PROG, __doc__)
    add_model_arguments(parser, weights_required=True)
    parser.add_argument("--feature_blob", required=True, help="the blob whose values are the feature")
    parser.add_input("--lfw_root", required=True, help="folder of Name/Name_0001.jpg images")
    parser.add_input("--pairs", required=True, help="pairs.txt (10 folds)")
    parser.add_input("--dev", help="pairsDevTrain.txt: the threshold's training pairs (protocol dev)")
    parser.add_argument("--protocol", choices=("folds", "dev"), default="folds",
                        help="folds (the standard one: each fold's threshold from the other 9, "
                             "default) or dev (one threshold from --dev)")
    parser.add_argument("--normalize", choices=("l2",), help="L2-normalise features first")
    parser.add_argument("--resize", type=positive_int_pair, metavar="W,H",
                        help="resize every image (bilinear) before anything else")
    parser.add_argument("--crop", type=positive_int_pair, metavar="W,H", help="centre crop after resizing")
    parser.add_argument("--mean", type=number_list((1, 3), float, "numbers"), metavar="B,G,R",
                        help="per-channel mean to subtract (BGR order, 0-255 scale)")
    parser.add_argument("--scale", type=finite_float, metavar="S",
                        help="multiply by S after subtracting the mean")
    parser.add_argument("--gray", action="store_true", help="read the images as grayscale")
    parser.add_argument("--batch_size", type=positive_int, default=32,
                        help="images per forward pass (default 32)")
    parser.alias("--batch", "--batch_size")
    add_backend_arguments(parser)
    parser.add_report(REPORT_FILES + ("run.json",),
                      help="write report.json, report.md, roc.png and distances.png here (and "
                           "run.json: the workers used and the wall time)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_memory_argument(parser)
    add_cluster_arguments(parser)
    return parser


def preparation(args):
    return ImagePreparation(args.resize, args.crop, args.mean, args.scale, args.gray)


def lfw_main(argv=None):
    args = build_parser().parse_args(argv)
    if args.protocol == "dev" and not args.dev:
        raise RistrettoError("--protocol dev takes its threshold from --dev pairsDevTrain.txt")
    folds = lfw.read_pairs(args.pairs, expected_folds=10)
    dev = lfw.read_dev_pairs(args.dev) if args.dev else []
    started = time.monotonic()
    with cluster_session(args) as cluster:
        _verify(args, folds, dev, cluster)
        if args.report:
            write_run_record(args.report, cluster, started)
    return 0


def _verify(args, folds, dev, cluster):
    param, weights = caffe_io.read_net_text(args.model), caffe_io.read_net_binary(args.weights)
    net = Net.from_proto(param, weights, source=args.model, weights_source=args.weights)
    runtime = None if cluster else make_runtime(net, args.backend, **runtime_options(args))
    paths = sorted({lfw.image_path(args.lfw_root, *person) for pairs in folds + [dev]
                    for pair in pairs for person in (pair.first, pair.second)})
    on_cluster = None
    if cluster is not None:
        if args.feature_blob not in net.blob_names:
            raise RistrettoError(f"the net has no blob '{args.feature_blob}'")
        handle = cluster.pool.handle(param=param, weights=weights, source=args.model,
                                     weights_source=args.weights)
        on_cluster = (cluster.pool, handle, {"backend": args.backend, **runtime_options(args)})
    features = lfw.extract_features(runtime, net.input_blobs[0], args.feature_blob, paths,
                                    preparation(args), args.batch_size, not args.quiet,
                                    args.normalize, cluster=on_cluster)
    fold_d = [lfw.distances(pairs, features, args.lfw_root) for pairs in folds]
    fold_s = [np.array([p.same for p in pairs]) for pairs in folds]
    dev_data = (lfw.distances(dev, features, args.lfw_root), np.array([p.same for p in dev])) if dev else None
    result = lfw.verify(fold_d, fold_s, args.protocol, dev_data)
    print(f"LFW {args.protocol} protocol, {sum(len(f) for f in folds)} pairs, {len(paths)} images")
    for i, (acc, threshold) in enumerate(zip(result.fold_accuracies, result.thresholds), 1):
        print(f"fold {i:2d}: accuracy {acc:.4f} (threshold {threshold:.6g})")
    print(f"accuracy = {result.mean:.4f} ± {result.standard_error:.4f} (standard error over "
          f"{len(folds)} folds); ROC AUC {result.auc:.4f}, EER {result.eer:.4f}")
    if args.report:
        write_lfw_report(args.report, result, np.concatenate(fold_d), np.concatenate(fold_s))
        print(f"Wrote the report to {args.report}")


def main(argv=None, prog=PROG):
    return run(lfw_main, argv, prog=prog)


if __name__ == "__main__":
    sys.exit(main())
