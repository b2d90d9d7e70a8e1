"""Write output files atomically: to a temporary file beside the target, then rename.

Inside ``all_or_nothing()`` (every command-line tool runs in one) the renames wait for the end
of the block: a tool that writes a prototxt, a caffemodel and a report either leaves all of them
in place or, when anything fails on the way, none of them (and no temporary file either).
"""
import contextlib
import contextvars
import os
import shutil
import tempfile

from .errors import RistrettoError

_staging = contextvars.ContextVar("ristretto_py_staging", default=None)


class Staging:
    """Finished temporary files (and folders) waiting to be renamed onto their targets."""

    def __init__(self):
        self._moves = []      # (temporary path, target path)

    def add(self, temporary, target):
        target = os.path.abspath(target)
        for index, (old_temporary, old_target) in enumerate(self._moves):
            if old_target == target:      # written twice: the second version wins
                _remove(old_temporary)
                self._moves[index] = (temporary, target)
                return
        self._moves.append((temporary, target))

    def pending(self, target):
        """The temporary file that will become ``target``, or None."""
        target = os.path.abspath(target)
        return next((tmp for tmp, dst in self._moves if dst == target), None)

    def commit(self):
        for temporary, target in self._moves:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.replace(temporary, target)
        self._moves = []

    def discard(self):
        for temporary, _ in self._moves:
            _remove(temporary)
        self._moves = []


def _remove(path):
    with contextlib.suppress(OSError):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)


@contextlib.contextmanager
def all_or_nothing():
    """Defer every atomic write made inside the block to its successful end."""
    staging = Staging()
    token = _staging.set(staging)
    try:
        yield staging
    except BaseException:
        staging.discard()
        raise
    finally:
        _staging.reset(token)
    staging.commit()


@contextlib.contextmanager
def immediately():
    """Inside ``all_or_nothing``, a block whose atomic writes land at once (each file still
    atomically): files that must survive a later failure, such as training snapshots."""
    token = _staging.set(None)
    try:
        yield
    finally:
        _staging.reset(token)


def staged_path(path):
    """Where the content of ``path`` is now: its pending temporary file inside
    ``all_or_nothing``, else ``path`` itself (e.g. to measure a file just written)."""
    staging = _staging.get()
    pending = staging.pending(path) if staging is not None else None
    return pending or os.fspath(path)


def staging_directory(path):
    """The folder where a temporary file for ``path`` goes: the target's own folder, or while
    it does not exist yet (a report folder made at the end) its nearest existing ancestor."""
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(directory):
        return directory
    if _staging.get() is None:
        raise RistrettoError("cannot write: the directory does not exist", path=path)
    existing = nearest_existing(directory)
    if not os.path.isdir(existing):
        raise RistrettoError(f"cannot write: {existing} is a file, not a directory", path=path)
    return existing


def nearest_existing(path):
    """``path`` itself if it exists, else its nearest existing ancestor."""
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def make_directory(path):
    """Make the folder ``path`` for outputs: now, or inside ``all_or_nothing`` when its first
    file is put in place (so that a failed run leaves no empty folder behind)."""
    if _staging.get() is None:
        os.makedirs(path, exist_ok=True)
    elif os.path.exists(path) and not os.path.isdir(path):
        raise RistrettoError("cannot write a report here: it is a file, not a directory", path=path)


def finish(temporary, path):
    """Put a finished temporary file or folder in place of ``path`` (now, or at the end of
    the enclosing ``all_or_nothing``)."""
    staging = _staging.get()
    if staging is None:
        os.replace(temporary, path)
    else:
        staging.add(temporary, path)


@contextlib.contextmanager
def atomic_output(path, mode="wb"):
    """Yield a file object; on success it replaces ``path``, on any error nothing is left."""
    path = os.fspath(path)
    directory = staging_directory(path)
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
        finish(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def write_bytes(path, data):
    with atomic_output(path, "wb") as handle:
        handle.write(data)


def write_text(path, text):
    with atomic_output(path, "w") as handle:
        handle.write(text)
