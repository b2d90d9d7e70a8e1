"""Read the small text files users hand the tools (list files, LFW pair files): a missing file,
a folder or binary data is one ``FormatError`` naming the file and the line."""
from .caffe_io import read_bytes
from .errors import FormatError


def read_text(path, expected):
    """The UTF-8 text of ``path``; ``expected`` says what it should hold (e.g. "lines of
    'path label'") for the message when it is not text."""
    data = read_bytes(str(path))
    bad = data.find(b"\0")
    try:
        if bad >= 0:
            raise UnicodeDecodeError("utf-8", data, bad, bad + 1, "NUL byte")
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise FormatError(f"line {line}: not UTF-8 text (is this a binary file?); expected "
                          f"{expected}", path=str(path)) from None
