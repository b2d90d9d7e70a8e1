"""Turn an image file (or a ``.npy`` array) into a net's N x C x H x W float32 input, the way
Caffe's tools and its data transformer prepare one: OpenCV decoding (BGR), optional resize
(bilinear) and grayscale, mean subtraction, then scaling."""
import os

import numpy as np

from .errors import FormatError, RistrettoError


def read_image(path, grayscale=False):
    """Decode an image file with OpenCV: H x W x 3 uint8 in BGR order (H x W if grayscale)."""
    import cv2
    path = os.fspath(path)
    # Checked first: OpenCV would print its own warning for a missing file before returning None.
    if not os.path.exists(path):
        raise FormatError("no such file", path=path)
    if os.path.isdir(path):
        raise FormatError("is a directory, not an image", path=path)
    if not os.access(path, os.R_OK):
        raise FormatError("cannot read: permission denied", path=path)
    image = cv2.imread(path, cv2.IMREAD_GRAYSCALE if grayscale else cv2.IMREAD_COLOR)
    if image is None:
        raise FormatError("OpenCV cannot decode this file as an image", path=path)
    return image


def prepare_image(image, resize=None, mean=None, scale=None):
    """An H x W (x C) uint8 image -> 1 x C x H x W float32 input.

    ``resize``: (width, height), bilinear, applied to the 8-bit image as Caffe's ReadImageToCVMat
    does. ``mean``: one value per channel (or one for all), subtracted; ``scale`` multiplies
    the result afterwards, as Caffe's DataTransformer computes (pixel - mean) * scale.
    """
    import cv2
    if resize is not None:
        width, height = (int(v) for v in resize)
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
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
