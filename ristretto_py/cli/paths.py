"""Checks of the paths a tool will write, made before any work: each output can be created, no
output is one of the inputs (symbolic and hard links resolved), and no two outputs collide."""
import contextlib
import os
import tempfile

from ..atomic import nearest_existing
from ..errors import RistrettoError


def _probe(directory, path):
    """Create and remove a file in ``directory``: the one test of writability that also
    holds for root, read-only mounts and pseudo file systems."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".tmp-probe-", dir=directory)
    except OSError as exc:
        raise RistrettoError(f"cannot write into {directory}: {exc.strerror}", path=path) from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)


def _existing_folder(path):
    """The folder of ``path``, which must exist."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        existing = nearest_existing(directory)
        if not os.path.isdir(existing):
            raise RistrettoError(f"cannot write: {existing} is a file, not a directory", path=path)
        raise RistrettoError("cannot write: the directory does not exist", path=path)
    return directory


def check_output_path(path):
    """Fail early if the file ``path`` cannot be written (its folder must exist)."""
    path = os.fspath(path)
    directory = _existing_folder(path)
    if os.path.isdir(path):
        raise RistrettoError("cannot write: is a directory", path=path)
    _probe(directory, path)


def check_output_directory(path):
    """Fail early if the folder ``path`` (a report folder) can be neither used nor created."""
    path = os.fspath(path)
    full = os.path.abspath(path)
    if os.path.exists(full):
        if not os.path.isdir(full):
            raise RistrettoError("cannot write a report here: it is a file, not a directory",
                                 path=path)
        _probe(full, path)
        return
    existing = nearest_existing(os.path.dirname(full))
    if not os.path.isdir(existing):
        raise RistrettoError(f"cannot create the directory: {existing} is a file", path=path)
    _probe(existing, path)


def check_new_directory(path):
    """Fail early unless ``path`` is absent and could be created (an LMDB to build)."""
    path = os.fspath(path)
    if os.path.lexists(path):
        raise RistrettoError("already exists: refusing to overwrite a database", path=path)
    _probe(_existing_folder(path), path)


def same_file(first, second):
    """Whether two paths name one file: equal after resolving symbolic links, or (both
    existing) the same device and inode, so that hard links count too."""
    first, second = os.fspath(first), os.fspath(second)
    if os.path.realpath(first) == os.path.realpath(second):
        return True
    try:
        return os.path.samefile(first, second)
    except OSError:
        return False


def check_distinct(inputs, outputs):
    """``inputs``/``outputs``: [(flag, path)]. No output may be an input or another output."""
    for index, (flag, path) in enumerate(outputs):
        for input_flag, input_path in inputs:
            if same_file(path, input_path):
                raise RistrettoError(f"{flag} names the same file as {input_flag} "
                                     f"({input_path}): inputs are never overwritten; choose "
                                     "another output path", path=path)
        for other_flag, other_path in outputs[:index]:
            if same_file(path, other_path):
                raise RistrettoError(f"{flag} and {other_flag} name the same file: each output "
                                     "needs its own path", path=path)
