"""How much memory one run may use, and the estimates checked against it before allocating:
a forward pass's blobs, a batch of a Data layer, cached batches, a resized image.

The limit is the memory available now (``MemAvailable``, or a cgroup's limit when lower),
``$RISTRETTO_PY_MEMORY_LIMIT``, or what a tool's ``--memory_limit`` sets. Work whose estimate
exceeds it is refused up front with a ``ResourceError`` giving both figures, instead of dying
minutes later in a ``MemoryError``.
"""
import contextvars
import os
import re

import numpy as np

from .errors import ResourceError, RistrettoError

ENVIRONMENT = "RISTRETTO_PY_MEMORY_LIMIT"
FLOAT_BYTES = 4
_override = contextvars.ContextVar("ristretto_py_memory_limit", default=None)
_UNITS = {"": 1, "b": 1, "k": 2 ** 10, "m": 2 ** 20, "g": 2 ** 30, "t": 2 ** 40}


def parse_size(text):
    """Bytes in ``text``: a number with an optional unit K, M, G or T (powers of 1024;
    ``KB``/``KiB`` spellings accepted), e.g. ``512M`` or ``1.5G``."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgtb]?)(?:i?b)?\s*", str(text), re.I)
    if not match:
        raise RistrettoError(f"{text!r} is not a size (e.g. 512M, 8G)")
    value = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if not value >= 1:
        raise RistrettoError(f"{text!r} is not a positive size")
    return int(value)


def format_bytes(count):
    """1536 -> '1.5 KiB'; binary units, as ``--memory_limit`` reads them."""
    count = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024:
            return f"{count:.0f} B" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


def available_memory():
    """Bytes this process can still allocate without swapping: MemAvailable (Linux), the
    cgroup limit less its usage when that is lower, else the physical memory."""
    candidates = []
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    candidates.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    cgroup = _cgroup_room()
    if cgroup is not None:
        candidates.append(cgroup)
    if not candidates:
        try:
            candidates.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            candidates.append(8 * 2 ** 30)
    return max(min(candidates), 0)


def _cgroup_room():
    for limit_path, usage_path in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_path, encoding="ascii") as handle:
                text = handle.read().strip()
            if text == "max":
                return None
            limit = int(text)
            if limit >= 2 ** 60:
                return None
            with open(usage_path, encoding="ascii") as handle:
                usage = int(handle.read().strip())
            return limit - usage
        except (OSError, ValueError):
            continue
    return None


def limit():
    """(bytes, where the figure comes from)."""
    override = _override.get()
    if override is not None:
        return override
    text = os.environ.get(ENVIRONMENT)
    if text:
        try:
            return parse_size(text), f"${ENVIRONMENT}"
        except RistrettoError as exc:
            raise RistrettoError(f"${ENVIRONMENT}: {exc}") from None
    return available_memory(), "the memory available now"


def set_limit(size, origin="--memory_limit"):
    """Use ``size`` bytes (an int or a string such as ``8G``) as the limit; None restores the
    default. Returns a token for ``reset_limit``."""
    if size is None:
        return _override.set(None)
    value = size if isinstance(size, int) else parse_size(size)
    return _override.set((value, origin))


def reset_limit(token=None):
    if token is None:
        _override.set(None)
    else:
        _override.reset(token)


def check(needed, what, path=None, layer=None, hint=None):
    """Refuse ``what`` (a phrase such as "one forward pass of 'lenet'") when it needs more
    than the limit."""
    room, origin = limit()
    if needed <= room:
        return
    advice = hint or "use a smaller batch or size"
    raise ResourceError(f"{what} needs {format_bytes(needed)}, more than the memory limit of "
                        f"{format_bytes(room)} ({origin}); {advice}, or raise the limit with "
                        f"--memory_limit or ${ENVIRONMENT}", path=path, layer=layer)


def fits(needed, share=1.0):
    """Whether ``needed`` bytes stay within ``share`` of the limit."""
    return needed <= limit()[0] * share


def array_bytes(shape, itemsize=FLOAT_BYTES):
    return int(np.prod(shape, dtype=np.float64)) * itemsize


def forward_bytes(net):
    """An estimate of one forward pass on the numpy runtime: every named blob at the net's
    shapes (float32, each counted once) plus the parameters. None when the shapes cannot be
    inferred (the runtime then reports why)."""
    try:
        shapes = net.shapes()
    except ResourceError:
        raise
    except RistrettoError:
        return None
    total = sum(array_bytes(shape) for shape in shapes.values())
    total += sum(blob.nbytes for layer in net.layers for blob in layer.blobs)
    return total


def check_forward(net, what=None):
    needed = forward_bytes(net)
    if needed is not None:
        name = net.name or os.path.basename(str(net.source or "the net"))
        check(needed, what or f"one forward pass of '{name}' (its blobs at their shapes)",
              path=net.source, hint="use a smaller batch or input size")


def check_kept_passes(net, passes, what):
    """Refuse ``what`` when it keeps every blob of ``passes`` forward passes of ``net`` (the
    float blobs and the snapshots a cached search reuses: about twice one pass each)."""
    needed = forward_bytes(net)
    if needed is not None:
        check(2 * passes * needed, f"{what} (it keeps every blob of {passes:,} batches)",
              path=net.source, hint="lower --iterations")
