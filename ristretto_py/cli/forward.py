"""``tools/forward``: run one input (an image or a .npy batch) through a Caffe net and save every
named blob in an .npz file, under its blob name."""
import os
import zipfile

import numpy as np

from ..atomic import atomic_output
from ..errors import NetError, RistrettoError
from ..images import load_input
from ..net import Net
from ..runtime import make_runtime
from .common import (add_backend_arguments, add_memory_argument, add_model_arguments,
                     add_seed_argument, format_shape, make_parser, run, runtime_options)
from .flag_types import finite_float, number_list, positive_int_pair

PROG = "forward"


def build_parser():
    parser = make_parser(PROG, __doc__)
    add_model_arguments(parser, weights_required=True)
    parser.add_input("--input", required=True, metavar="FILE",
                     help="an image (any format OpenCV reads) or a .npy N x C x H x W array")
    parser.add_output("--output", required=True, metavar="NPZ", help="where to save the blobs")
    add_backend_arguments(parser)
    parser.add_argument("--input_blob", metavar="BLOB",
                        help="the source blob the input feeds (default: the net's first)")
    parser.add_argument("--resize", type=positive_int_pair, metavar="W,H",
                        help="resize the image (bilinear) before anything else")
    parser.add_argument("--gray", action="store_true", help="read the image as grayscale")
    parser.add_argument("--mean", type=number_list((1, 3), float, "numbers"), metavar="B,G,R",
                        help="per-channel mean to subtract (BGR order, 0-255 scale)")
    parser.add_argument("--scale", type=finite_float, metavar="S",
                        help="multiply by S after subtracting the mean")
    add_seed_argument(parser, "stochastic rounding")
    add_memory_argument(parser)
    return parser


def choose_input_blob(net, requested):
    if not net.input_blobs:
        raise NetError("the net has no input layer (Input, Data, ...) to feed", path=net.source)
    if requested is None:
        return net.input_blobs[0]
    if requested not in net.input_blobs:
        raise NetError(f"'{requested}' is not an input blob of the net (those are "
                       f"{', '.join(net.input_blobs)})", path=net.source)
    return requested


def fit_input(net, blob, batch):
    """The net reshaped for ``batch`` (as Caffe reshapes a net to its input), checked so that
    the loaded weights still fit every layer at the new shapes."""
    try:
        declared = net.shapes().get(blob)
    except RistrettoError:
        declared = None  # e.g. a Data layer whose database is absent: the input decides
    if declared is not None and len(declared) == batch.ndim and declared[1] != batch.shape[1]:
        raise NetError(f"the input has {batch.shape[1]} channel(s) but blob '{blob}' takes "
                       f"{declared[1]}", path=net.source)
    if declared == batch.shape:
        return net
    net = net.with_input_shapes({blob: batch.shape})
    shapes = net.shapes()
    for layer, impl in zip(net.layers, net.impls):
        if impl.is_source or not layer.blobs:
            continue
        expected = impl.param_shapes([shapes[b] for b in layer.bottoms])
        for index, (array, want) in enumerate(zip(layer.blobs, expected)):
            if tuple(array.shape) != tuple(want):
                raise NetError(f"with input '{blob}' of shape {list(batch.shape)} this layer "
                               f"needs blob {index} of shape {list(want)}, but the weights hold "
                               f"{list(array.shape)}{_resize_hint(declared)}",
                               path=net.source, layer=layer.name)
    return net


def _resize_hint(declared):
    if declared is None or len(declared) != 4:
        return ""
    return f" (the net was made for --resize {declared[3]},{declared[2]})"


def write_npz(path, arrays):
    """Save ``arrays`` (name -> array) as an uncompressed .npz, atomically. Written entry by
    entry rather than through ``np.savez``, whose own keyword arguments (``file``,
    ``allow_pickle``) would clash with blobs of those names."""
    with atomic_output(path, "wb") as handle:
        with zipfile.ZipFile(handle, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            for name, array in arrays.items():
                with archive.open(name + ".npy", "w", force_zip64=True) as entry:
                    np.lib.format.write_array(entry, np.asarray(array), allow_pickle=False)


def forward_main(argv):
    args = build_parser().parse_args(argv)
    net = Net.load(args.model, args.weights)
    blob = choose_input_blob(net, args.input_blob)
    batch = load_input(args.input, args.resize, args.gray, args.mean, args.scale)
    net = fit_input(net, blob, batch)
    runtime = make_runtime(net, args.backend, **runtime_options(args))
    blobs = runtime.forward({blob: batch})
    if hasattr(runtime, "describe_how"):
        print(runtime.describe_how())
    for name, report in getattr(runtime, "report", {}).items():
        if report.float32_differs or report.overflows:
            print(f"{name}: {report.float32_differs} of {report.values} values differ from "
                  f"Ristretto's float32 emulation; {report.overflows} accumulator overflows")
    write_npz(args.output, blobs)
    print(f"{args.output}: {len(blobs)} blobs of {net.name or os.path.basename(args.model)} "
          f"({args.backend}; input '{blob}' {format_shape(batch.shape)})")
    for name in net.output_blobs:
        if name in blobs:
            print(f"  output {name}: {format_shape(blobs[name].shape)}")
    return 0


def main(argv=None, prog=PROG):
    return run(forward_main, argv, prog=prog)


if __name__ == "__main__":
    raise SystemExit(main())
