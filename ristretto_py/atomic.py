"""Write output files atomically: to a temporary file beside the target, then rename."""
import contextlib
import os
import tempfile

from .errors import RistrettoError


@contextlib.contextmanager
def atomic_output(path, mode="wb"):
    """Yield a file object; on success it replaces ``path``, on any error nothing is left."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise RistrettoError("cannot write: the directory does not exist", path=path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix="-" + os.path.basename(path), dir=directory)
    except OSError as exc:
        raise RistrettoError(f"cannot write: {exc.strerror}", path=path) from exc
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_bytes(path, data):
    with atomic_output(path, "wb") as handle:
        handle.write(data)


def write_text(path, text):
    with atomic_output(path, "w") as handle:
        handle.write(text)
