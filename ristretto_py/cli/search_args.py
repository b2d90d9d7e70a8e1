"""The flags of what a search measures and what it reads, shared by ``tools/quantize`` and
``tools/analyze``: ``--score`` and its settings, ``--images`` (label-free inputs),
``--calibration_data`` and the image preparation flags; and the objects built from them."""
import os

from ..errors import NetError, RistrettoError
from ..evaluators import lfw
from ..evaluators.image_data import ImageBatches, ImagePreparation, image_files
from ..evaluators.scores import (KINDS, AccuracyScore, AgreementScore, DistanceScore,
                                 LfwScore)
from .flag_types import finite_float, number_list, positive_float, positive_int_pair

def add_measure_arguments(parser, default="accuracy"):
    parser.add_argument("--score", choices=KINDS, default=default,
                        help="what the margin keeps: accuracy (an Accuracy layer, default), "
                             "agreement (top-1 equal to the float net's, no labels), l2 / cosine "
                             "(mean distance of --score_blob to the float net's; margin: "
                             "--max_distance), lfw (LFW verification accuracy of --feature_blob)")
    parser.add_argument("--max_distance", type=positive_float, default=0.05,
                        help="--score l2|cosine: the largest mean distance to the float net that "
                             "passes (default 0.05)")
    parser.add_argument("--feature_blob", help="--score lfw: the blob whose values are the feature")
    parser.add_input("--lfw_root", help="--score lfw: folder of Name/Name_0001.jpg images")
    parser.add_input("--pairs", help="--score lfw: pairs.txt (10 folds)")
    parser.add_input("--dev", help="--score lfw: pairsDevTrain.txt (--protocol dev)")
    parser.add_argument("--protocol", choices=("folds", "dev"), default="folds",
                        help="--score lfw: folds (thresholds from the other folds, default) or dev")
    parser.add_argument("--normalize", choices=("l2",), help="--score lfw: L2-normalise features")


def add_image_arguments(parser):
    parser.add_input("--images", metavar="DIR|LIST",
                     help="score on these images (a folder, or a file of image paths) instead of "
                          "the net's Data layer: no labels needed (agreement, l2, cosine)")
    parser.add_input("--calibration_data", metavar="LMDB|DIR|LIST",
                     help="read the range analysis (and other calibrations) from this LMDB or "
                          "these images instead of the TRAIN net's Data layer")
    add_preparation_arguments(parser)


def add_preparation_arguments(parser):
    """How image files become inputs, as tools/forward prepares one."""
    parser.add_argument("--resize", type=positive_int_pair, metavar="W,H",
                        help="images: resize (bilinear) before anything else")
    parser.add_argument("--crop", type=positive_int_pair, metavar="W,H",
                        help="images: centre crop after resizing")
    parser.add_argument("--mean", type=number_list((1, 3), float, "numbers"), metavar="B,G,R",
                        help="images: per-channel mean to subtract (BGR order, 0-255 scale)")
    parser.add_argument("--scale", type=finite_float, metavar="S",
                        help="images: multiply by S after subtracting the mean")
    parser.add_argument("--gray", action="store_true", help="images: decode as one channel")


def preparation(args):
    return ImagePreparation(args.resize, args.crop, args.mean, args.scale, args.gray)


def is_lmdb(path):
    return os.path.isfile(os.path.join(path, "data.mdb")) or str(path).endswith(".mdb")


def _input_of(net):
    if not net.input_blobs:
        raise NetError("the net has no input layer to feed images to", path=net.source)
    blob = net.input_blobs[0]
    try:
        shape = net.shapes().get(blob)
    except RistrettoError:
        shape = None
    return blob, shape


def measure_and_data(args, float_net, margin):
    """(measure, scoring batches or None, calibration batches, LMDB path or None) for the
    flags; None means the net's own Data layer (as Ristretto)."""
    images_flags = [f for f in ("images", "calibration_data") if getattr(args, f, None)]
    if args.score != "lfw" and any(getattr(args, f, None) for f in ("feature_blob", "lfw_root", "pairs")):
        raise RistrettoError("--feature_blob, --lfw_root and --pairs go with --score lfw")
    blob, shape = _input_of(float_net) if (images_flags or args.score == "lfw") else (None, None)
    batch_size = getattr(args, "batch_size", None) or 32
    data = None
    if args.score == "lfw":
        missing = [f"--{f}" for f in ("feature_blob", "lfw_root", "pairs") if not getattr(args, f)]
        if missing:
            raise RistrettoError(f"--score lfw needs {', '.join(missing)}")
        if args.protocol == "dev" and not args.dev:
            raise RistrettoError("--protocol dev takes its threshold from --dev pairsDevTrain.txt")
        if args.images:
            raise RistrettoError("--score lfw reads the images of --pairs; leave out --images")
        folds = lfw.read_pairs(args.pairs, expected_folds=10)
        dev = lfw.read_dev_pairs(args.dev) if args.dev else []
        paths = sorted({lfw.image_path(args.lfw_root, *person) for pairs in folds + [dev]
                        for pair in pairs for person in (pair.first, pair.second)})
        missing_images = [p for p in paths if not os.path.isfile(p)]
        if missing_images:
            raise RistrettoError(f"image missing ({len(missing_images)} in all)",
                                 path=missing_images[0])
        data = ImageBatches(paths, blob, preparation(args), batch_size, None, shape,
                            not args.quiet)
        measure = LfwScore(args.feature_blob, args.lfw_root, folds, data.images, args.protocol,
                           dev, args.normalize, margin)
    elif args.score == "accuracy":
        measure = AccuracyScore(args.score_blob, margin)
    elif args.score == "agreement":
        measure = AgreementScore(args.score_blob, margin)
    else:
        measure = DistanceScore(args.score, args.score_blob, args.max_distance)
    if args.images:
        if args.score == "accuracy" and args.score_blob is None:
            raise RistrettoError("--images carry no labels: use --score agreement, l2 or cosine")
        data = ImageBatches(image_files(args.images), blob, preparation(args), batch_size,
                            args.iterations, shape, not args.quiet)
    calibration = None
    source = getattr(args, "calibration_data", None)
    if source:
        calibration = source if is_lmdb(source) else ImageBatches(
            image_files(source), blob, preparation(args), batch_size, None, shape, not args.quiet)
    elif data is not None:          # a deploy net's images: calibrate on them too
        calibration = data
    return measure, data, calibration
