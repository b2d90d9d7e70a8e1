"""What every command-line tool shares: argparse helpers for the common flags and ``run``, which
turns a user error into one line on stderr and exit code 2."""
import argparse
import os
import sys

from ..errors import RistrettoError

USAGE_ERROR = 2
INTERRUPTED = 130


def run(main_fn, argv=None, prog=None):
    """Call ``main_fn(argv)`` and return the process exit code.

    A ``RistrettoError`` (bad model, weights, input, flag value) or an ``OSError`` (typically
    an output path that cannot be written) prints ``<tool>: error: <message>`` as a single
    line on stderr and gives 2; argparse's own usage errors also exit with 2; Ctrl-C gives 130.
    Anything else is a bug and keeps its traceback.
    """
    prog = prog or _program_name()
    try:
        code = main_fn(argv)
    except RistrettoError as exc:
        return _fail(prog, str(exc))
    except OSError as exc:
        return _fail(prog, describe_os_error(exc))
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return INTERRUPTED
    return 0 if code is None else int(code)


def _fail(prog, message):
    print(f"{prog}: error: {one_line(message)}", file=sys.stderr)
    return USAGE_ERROR


def _program_name():
    name = os.path.basename(sys.argv[0] or "ristretto_py")
    return name[:-3] if name.endswith(".py") else name


def one_line(text):
    """Collapse every run of whitespace (newlines included) into one space."""
    return " ".join(str(text).split())


def describe_os_error(exc):
    reason = exc.strerror or str(exc)
    if exc.filename is not None:
        return f"{exc.filename}: {reason}"
    return reason


def make_parser(prog, description):
    """An ArgumentParser with a fixed program name (error lines say ``<prog>: error: ...``)."""
    return argparse.ArgumentParser(prog=prog, description=description)


def add_model_arguments(parser, weights_required):
    parser.add_argument("--model", required=True, metavar="PROTOTXT",
                        help="the net definition (.prototxt)")
    parser.add_argument("--weights", required=weights_required, metavar="CAFFEMODEL",
                        help="the trained weights (.caffemodel)")


def number_list(count, kind=float, what="values"):
    """An argparse type: ``count`` comma-separated numbers (a tuple of ``kind``).

    ``count`` may be a tuple of the accepted lengths, e.g. (1, 3) for a mean that is either
    one value for every channel or one per channel."""
    counts = (count,) if isinstance(count, int) else tuple(count)

    def parse(text):
        try:
            values = tuple(kind(part) for part in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a list of {what}") from None
        if len(values) not in counts:
            wanted = " or ".join(str(c) for c in counts)
            raise argparse.ArgumentTypeError(f"{text!r}: expected {wanted} comma-separated {what}")
        return values
    parse.__name__ = what  # argparse names the type in its messages
    return parse


def positive_int_pair(text):
    """``W,H`` with both positive (for ``--resize``)."""
    values = number_list(2, int, "integers")(text)
    if min(values) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: width and height must be positive")
    return values


def input_shape(text):
    """``BLOB=N,C,H,W`` (for tools that let the user choose a source blob's shape)."""
    name, sep, dims = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r}: expected BLOB=N,C,H,W")
    try:
        values = tuple(int(part) for part in dims.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected BLOB=N,C,H,W") from None
    if min(values) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: dimensions must be positive")
    return name, values


def check_output_path(path):
    """Fail early (before any long computation) if ``path`` cannot be written."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        existing = directory
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing):
            raise RistrettoError(f"cannot write: {existing} is a file, not a directory", path=path)
        raise RistrettoError("cannot write: the directory does not exist", path=path)
    if os.path.isdir(path):
        raise RistrettoError("cannot write: is a directory", path=path)
    if not os.access(directory, os.W_OK | os.X_OK):
        raise RistrettoError("cannot write: the directory is not writable", path=path)


def format_shape(shape):
    return "x".join(str(d) for d in shape) if len(shape) else "scalar"


def format_count(value):
    """An integer with thousands separators and, when large, a short form: 1,234,567 (1.23M)."""
    value = int(value)
    for limit, suffix in ((10 ** 9, "G"), (10 ** 6, "M"), (10 ** 3, "k")):
        if value >= limit:
            return f"{value:,} ({value / limit:.2f}{suffix})"
    return f"{value:,}"


def add_fixed_point_arguments(parser):
    """``--acc-bits`` and ``--overflow`` for ``--backend fixed``."""
    parser.add_argument("--acc-bits", type=int, default=64, metavar="BITS",
                        help="--backend fixed: accumulator width (8-64, default 64)")
    parser.add_argument("--overflow", choices=("wrap", "saturate"), default="wrap",
                        help="--backend fixed: what the accumulator does on overflow")


def runtime_options(args):
    """Keyword options of make_runtime for the parsed flags."""
    options = {}
    if getattr(args, "compat", None):
        options["compat"] = args.compat
    if getattr(args, "seed", None) is not None:
        options["seed"] = args.seed
    if args.backend == "fixed":
        if not 8 <= args.acc_bits <= 64:
            raise RistrettoError(f"--acc-bits must be 8 to 64, not {args.acc_bits}")
        options.update(acc_bits=args.acc_bits, overflow=args.overflow)
    return options
