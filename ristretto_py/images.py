"""Turn an image file (or a ``.npy`` array) into a net's N x C x H x W float32 input, the way
Caffe's tools and its data transformer prepare one: OpenCV decoding (BGR), optional resize
(bilinear) and grayscale, mean subtraction, then scaling.

OpenCV's own log lines are silenced, and what its codecs (libjpeg, libpng) print on a damaged
file is captured: a file that cannot be decoded is one error line, one decoded despite damage is
one warning line, never a codec's raw output."""
import contextlib
import os
import sys
import tempfile
import threading
import warnings

import numpy as np

from . import memory_budget
from .errors import FormatError, RistrettoError, RistrettoWarning

_cv2 = None


def opencv():
    """The cv2 module, with its logging silenced (once)."""
    global _cv2
    if _cv2 is None:
        import cv2
        with contextlib.suppress(AttributeError):
            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
        _cv2 = cv2
    return _cv2


_capture_lock = threading.Lock()
_sink = None


@contextlib.contextmanager
def _codec_messages():
    """Collect what native code writes to file descriptor 2 inside the block. Descriptor 2 is
    the process's, so only the main thread captures, one block at a time, into one reused
    file; elsewhere (a prefetch thread) nothing is redirected."""
    global _sink
    messages = []
    if threading.current_thread() is not threading.main_thread():
        yield messages
        return
    with _capture_lock:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError):         # no usable descriptor 2: nothing to capture
            yield messages
            return
        if _sink is None:
            _sink = tempfile.TemporaryFile()
        _sink.seek(0)
        _sink.truncate()
        os.dup2(_sink.fileno(), 2)
        try:
            yield messages
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            _sink.seek(0)
            messages.extend(line.strip() for line in
                            _sink.read().decode("utf-8", "replace").splitlines() if line.strip())


def decode(data_or_path, flags, path=None, what="file"):
    """``cv2.imread`` (a path) or ``cv2.imdecode`` (bytes) with the codecs' messages captured:
    None and an error naming ``path`` when nothing decodes, a warning when damage was
    reported but an image came out."""
    cv2 = opencv()
    with _codec_messages() as messages:
        if isinstance(data_or_path, (bytes, bytearray, memoryview, np.ndarray)):
            image = cv2.imdecode(np.frombuffer(data_or_path, np.uint8), flags)
        else:
            image = cv2.imread(data_or_path, flags)
    detail = f" ({'; '.join(messages)})" if messages else ""
    if image is None:
        raise FormatError(f"OpenCV cannot decode this {what} as an image{detail}", path=path)
    if messages:
        warnings.warn(f"{path}: damaged image, decoded anyway{detail}", RistrettoWarning,
                      stacklevel=3)
    return image


def read_image(path, grayscale=False):
    """Decode an image file with OpenCV: H x W x 3 uint8 in BGR order (H x W if grayscale)."""
    cv2 = opencv()
    path = os.fspath(path)
    # Checked first: OpenCV would print its own warning for a missing file before returning None.
    if not os.path.exists(path):
        raise FormatError("no such file", path=path)
    if os.path.isdir(path):
        raise FormatError("is a directory, not an image", path=path)
    if not os.access(path, os.R_OK):
        raise FormatError("cannot read: permission denied", path=path)
    return decode(path, cv2.IMREAD_GRAYSCALE if grayscale else cv2.IMREAD_COLOR, path)


def resize_image(image, width, height):
    """Bilinear resize to ``width`` x ``height``, refused up front when the result (and the
    float32 input made from it) would not fit the memory limit."""
    cv2 = opencv()
    channels = image.shape[2] if image.ndim == 3 else 1
    memory_budget.check(memory_budget.array_bytes((height, width, channels), 1 + 4),
                        f"resizing an image to {width}x{height}", hint="use a smaller --resize")
    return cv2.resize(image, (int(width), int(height)), interpolation=cv2.INTER_LINEAR)


def prepare_image(image, resize=None, mean=None, scale=None):
    """An H x W (x C) uint8 image -> 1 x C x H x W float32 input.

    ``resize``: (width, height), bilinear, applied to the 8-bit image as Caffe's ReadImageToCVMat
    does. ``mean``: one value per channel (or one for all), subtracted; ``scale`` multiplies
    the result afterwards, as Caffe's DataTransformer computes (pixel - mean) * scale.
    """
    if resize is not None:
        image = resize_image(image, *resize)
    pixels = np.asarray(image, dtype=np.float32)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if mean is not None:
        mean = np.asarray(mean, dtype=np.float32).reshape(-1)
        if mean.size not in (1, pixels.shape[2]):
            raise RistrettoError(f"--mean gives {mean.size} values for an image with "
                                 f"{pixels.shape[2]} channel(s)")
        pixels = pixels - mean
    if scale is not None:
        pixels = pixels * np.float32(scale)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)[None], dtype=np.float32)


def load_array(path):
    """A ``.npy`` file holding an N x C x H x W batch, as float32."""
    path = os.fspath(path)
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise FormatError("no such file", path=path) from None
    except IsADirectoryError:
        raise FormatError("is a directory, not a .npy file", path=path) from None
    except (ValueError, EOFError, OSError) as exc:
        raise FormatError(f"not a readable .npy array ({' '.join(str(exc).split())})",
                          path=path) from None
    if not isinstance(array, np.ndarray):
        raise FormatError("holds several arrays (.npz); give a single .npy array", path=path)
    if array.ndim != 4:
        raise FormatError(f"holds an array of shape {list(array.shape)}; expected 4-D "
                          "N x C x H x W", path=path)
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise FormatError(f"holds {array.dtype} values, not real numbers", path=path)
    return np.ascontiguousarray(array, dtype=np.float32)


def load_input(path, resize=None, grayscale=False, mean=None, scale=None):
    """A net input from ``path``: a ``.npy`` batch used as is, or an image prepared as in
    ``prepare_image`` (a batch of one)."""
    if os.fspath(path).lower().endswith(".npy"):
        given = [flag for flag, value in (("--resize", resize), ("--gray", grayscale or None),
                                          ("--mean", mean), ("--scale", scale))
                 if value is not None]
        if given:
            raise RistrettoError(f"{', '.join(given)} prepare images; a .npy input is used as "
                                 "is", path=path)
        return load_array(path)
    return prepare_image(read_image(path, grayscale), resize, mean, scale)
