"""``tools/convert_imageset``: build a Caffe ``Datum`` LMDB from a folder of images and a list
file, as Caffe's ``convert_imageset ROOTFOLDER/ LISTFILE DB_NAME`` does.

Each line of LISTFILE is ``relative/path/to/image.jpg label``. Images are decoded with OpenCV
(BGR, or grayscale with ``--gray``), optionally resized, and stored as raw C x H x W bytes (or
re-encoded with ``--encoded``). Keys are Caffe's ``%08d_<path>``. ``--shuffle`` shuffles the
lines with ``--seed``. The database is written beside its target and renamed into place."""
import os
import sys

import numpy as np

from .. import memory_budget
from ..errors import FormatError, RistrettoError
from ..images import read_image, resize_image
from ..lmdb_write import make_datum, write_lmdb
from ..progress import progress
from ..text_files import read_text
from .common import add_memory_argument, add_seed_argument, make_parser, run
from .flag_types import non_negative_int

INT32 = (-2 ** 31, 2 ** 31 - 1)     # a Datum's label is an int32

PROG = "convert_imageset"


def build_parser():
    parser = make_parser(PROG, __doc__)
    parser.add_input("root", help="folder the list's paths are relative to")
    parser.add_input("listfile", help="lines of 'path label'")
    parser.add_new_directory("db", help="the LMDB folder to create (must not exist)")
    parser.add_argument("--gray", action="store_true", help="decode as single-channel images")
    parser.add_argument("--shuffle", action="store_true", help="shuffle the lines (seeded)")
    add_seed_argument(parser, "--shuffle")
    parser.add_argument("--resize_width", type=non_negative_int, default=0,
                        help="resize every image to this width (with --resize_height; 0: keep)")
    parser.add_argument("--resize_height", type=non_negative_int, default=0,
                        help="resize every image to this height (with --resize_width; 0: keep)")
    parser.add_argument("--check_size", action="store_true", help="all images must have one size")
    parser.add_argument("--encoded", action="store_true", help="store the images encoded")
    parser.add_argument("--encode_type", default="png", choices=("png", "jpg"),
                        help="format for --encoded (default png)")
    add_memory_argument(parser)
    return parser


def read_list(path):
    """[(relative path, label)] from a list file; a bad line is an error naming its number."""
    entries = []
    for number, text in enumerate(read_text(path, "lines of 'path label'").splitlines(), 1):
        text = text.strip()
        if not text:
            continue
        name, _, label = text.rpartition(" ")
        try:
            value = int(label)
        except ValueError:
            value = None
        if not name or value is None:
            raise FormatError(f"line {number}: expected 'path label', got {text[:80]!r}", path=path)
        if not INT32[0] <= value <= INT32[1]:
            raise FormatError(f"line {number}: label {value} does not fit a Datum's int32 "
                              f"label ({INT32[0]} to {INT32[1]})", path=path)
        entries.append((name, value))
    if not entries:
        raise FormatError("the list has no entries", path=path)
    return entries


def convert_main(argv=None):
    args = build_parser().parse_args(argv)
    if (args.resize_width > 0) != (args.resize_height > 0):
        raise RistrettoError("give both --resize_width and --resize_height, or neither (0 keeps "
                          "the images' own size)")
    if args.resize_width:
        channels = 1 if args.gray else 3
        # the resized image, its C x H x W copy and the Datum's bytes
        needed = 3 * args.resize_width * args.resize_height * channels
        memory_budget.check(needed, f"one {args.resize_width}x{args.resize_height} image",
                            hint="use a smaller --resize_width/--resize_height")
    entries = read_list(args.listfile)
    if args.shuffle:
        order = np.random.default_rng(args.seed).permutation(len(entries))
        entries = [entries[i] for i in order]
    shape = []

    def datums():
        for name, label in progress(entries, "convert", "image"):
            image = read_image(os.path.join(args.root, name), grayscale=args.gray)
            if args.resize_width > 0:
                image = resize_image(image, args.resize_width, args.resize_height)
            if args.check_size:
                if shape and image.shape != shape[0]:
                    raise FormatError(f"size {image.shape} differs from the first image's {shape[0]}",
                                      path=os.path.join(args.root, name))
                shape[:] = [image.shape]
            datum = make_datum(image, label, "." + args.encode_type if args.encoded else None)
            yield datum

    count = write_lmdb(args.db, _keyed(datums(), entries))
    print(f"Processed {count} files into {args.db}")
    return 0


def _keyed(datums, entries):
    for datum, (name, _) in zip(datums, entries):
        yield datum, name


def main(argv=None, prog=PROG):
    return run(convert_main, argv, prog=prog)


if __name__ == "__main__":
    sys.exit(main())
