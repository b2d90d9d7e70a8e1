"""``tools/convert_imageset``: build a Caffe ``Datum`` LMDB from a folder of images and a list
file, as Caffe's ``convert_imageset ROOTFOLDER/ LISTFILE DB_NAME`` does.

Each line of LISTFILE is ``relative/path/to/image.jpg label``. Images are decoded with OpenCV
(BGR, or grayscale with ``--gray``), optionally resized, and stored as raw C x H x W bytes (or
re-encoded with ``--encoded``). Keys are Caffe's ``%08d_<path>``. ``--shuffle`` shuffles the
lines with ``--seed``. The database is written beside its target and renamed into place."""
import os
import sys

import numpy as np

from ..errors import FormatError, RistrettoError
from ..images import read_image
from ..lmdb_write import make_datum, write_lmdb
from .common import make_parser, run

PROG = "convert_imageset"


def build_parser():
    parser = make_parser(PROG, __doc__)
    parser.add_argument("root", help="folder the list's paths are relative to")
    parser.add_argument("listfile", help="lines of 'path label'")
    parser.add_argument("db", help="the LMDB folder to create (must not exist)")
    parser.add_argument("--gray", action="store_true", help="decode as single-channel images")
    parser.add_argument("--shuffle", action="store_true", help="shuffle the lines (seeded)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resize_width", type=int, default=0)
    parser.add_argument("--resize_height", type=int, default=0)
    parser.add_argument("--check_size", action="store_true", help="all images must have one size")
    parser.add_argument("--encoded", action="store_true", help="store the images encoded")
    parser.add_argument("--encode_type", default="png", choices=("png", "jpg"),
                        help="format for --encoded (default png)")
    return parser


def read_list(path):
    """[(relative path, label)] from a list file; a bad line is an error naming its number."""
    entries = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            text = line.strip()
            if not text:
                continue
            name, _, label = text.rpartition(" ")
            try:
                value = int(label)
            except ValueError:
                value = None
            if not name or value is None:
                raise FormatError(f"line {number}: expected 'path label', got {text!r}", path=path)
            entries.append((name, value))
    if not entries:
        raise FormatError("the list has no entries", path=path)
    return entries


def convert_main(argv=None):
    import cv2
    from tqdm import tqdm
    args = build_parser().parse_args(argv)
    if (args.resize_width > 0) != (args.resize_height > 0):
        raise RistrettoError("give both --resize_width and --resize_height, or neither")
    entries = read_list(args.listfile)
    if args.shuffle:
        order = np.random.default_rng(args.seed).permutation(len(entries))
        entries = [entries[i] for i in order]
    shape = []

    def datums():
        for name, label in tqdm(entries, desc="convert", unit="image", leave=False):
            image = read_image(os.path.join(args.root, name), grayscale=args.gray)
            if args.resize_width > 0:
                image = cv2.resize(image, (args.resize_width, args.resize_height),
                                   interpolation=cv2.INTER_LINEAR)
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


def main(argv=None):
    return run(convert_main, argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
