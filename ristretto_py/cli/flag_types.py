"""Argparse types of the tools' flags: every number is range-checked when the flags are read,
so a bad value is a usage error naming the flag (exit 2) and never reaches the library."""
import argparse
import math

SEED_LIMIT = 2 ** 32     # scikit-learn and numpy both take seeds in [0, 2^32)


def _named(parse, what):
    parse.__name__ = what      # argparse names the type in "invalid <name> value" messages
    return parse


def int_range(low=None, high=None, what="integer"):
    """An integer in [low, high] (either bound may be None)."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if low is not None and value < low or high is not None and value > high:
            raise argparse.ArgumentTypeError(f"{value} is out of range: {_bounds(low, high)}")
        return value
    return _named(parse, what)


def float_range(low=None, high=None, low_open=False, what="number"):
    """A finite float in [low, high] ((low, high] with ``low_open``); nan and inf refused."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        below = value <= low if low_open else value < low if low is not None else False
        if below or high is not None and value > high:
            raise argparse.ArgumentTypeError(
                f"{value:g} is out of range: {_bounds(low, high, low_open)}")
        return value
    return _named(parse, what)


def _bounds(low, high, low_open=False):
    low_text, high_text = _number(low), _number(high)
    if low is not None and high is not None:
        return f"{'more than' if low_open else 'from'} {low_text} {'up ' if low_open else ''}to {high_text}"
    if low is not None:
        if low_open:
            return f"must be more than {low_text}"
        return {0: "must not be negative", 1: "must be at least 1"}.get(low, f"must be at least {low_text}")
    return f"must be at most {high_text}"


def _number(value):
    return str(value) if isinstance(value, int) else f"{value:g}" if value is not None else ""


positive_int = int_range(1, what="positive integer")
non_negative_int = int_range(0, what="non-negative integer")
seed = int_range(0, SEED_LIMIT - 1, what="seed")
finite_float = float_range(what="finite number")
non_negative_float = float_range(0, what="non-negative number")
positive_float = float_range(0, low_open=True, what="positive number")


def number_list(count, kind=float, what="values"):
    """``count`` comma-separated numbers (a tuple of ``kind``); ``count`` may be a tuple of the
    accepted lengths, e.g. (1, 3) for a mean that is one value for all channels or one each."""
    counts = (count,) if isinstance(count, int) else tuple(count)

    def parse(text):
        try:
            values = tuple(kind(part) for part in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a list of {what}") from None
        if kind is float and not all(math.isfinite(v) for v in values):
            raise argparse.ArgumentTypeError(f"{text!r}: every value must be finite")
        if len(values) not in counts:
            wanted = " or ".join(str(c) for c in counts)
            raise argparse.ArgumentTypeError(f"{text!r}: expected {wanted} comma-separated {what}")
        return values
    return _named(parse, what)


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


def memory_size(text):
    from ..errors import RistrettoError
    from ..memory_budget import parse_size
    try:
        return parse_size(text)
    except RistrettoError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


input_shape.__name__ = "BLOB=N,C,H,W"
positive_int_pair.__name__ = "W,H pair"
memory_size.__name__ = "size"
