"""Net inputs from image files instead of an LMDB: a folder of photos or a list file, prepared as
``tools/forward`` prepares one image (OpenCV decoding, resize, centre crop, mean, scale) and
batched, so that a deploy net and a folder of photos are enough for the label-free scores and for
calibration. Like Caffe's Data layer, a fixed number of batches wraps around the files."""
import dataclasses
import math
import os

import numpy as np

from ristretto_py import memory_budget
from ristretto_py.errors import FormatError, RistrettoError
from ristretto_py.images import prepare_image, read_image, resize_image
from ristretto_py.text_files import read_text

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm",
                  ".pbm", ".jp2")


@dataclasses.dataclass(frozen=True)
class ImagePreparation:
    """How an image file becomes a 1 x C x H x W input: ``resize`` (W, H) bilinear, then a
    centre ``crop`` (W, H), then (pixel - ``mean``) * ``scale``; ``gray`` decodes one channel."""
    resize: tuple = None
    crop: tuple = None
    mean: tuple = None
    scale: float = None
    gray: bool = False

    def __call__(self, path):
        image = read_image(path, self.gray)
        if self.resize:
            image = resize_image(image, *self.resize)
        if self.crop:
            width, height = self.crop
            if height > image.shape[0] or width > image.shape[1]:
                raise RistrettoError(f"--crop {width},{height} is larger than the "
                                     f"{image.shape[1]}x{image.shape[0]} image", path=path)
            top, left = (image.shape[0] - height) // 2, (image.shape[1] - width) // 2
            image = image[top:top + height, left:left + width]
        return prepare_image(image, None, self.mean, self.scale)


def image_files(source):
    """The image paths of ``source``: a folder (its image files, sorted, not recursive) or a
    list file (one path per line, relative to the list's folder; a label after the path, as in
    convert_imageset's lists, is ignored)."""
    source = os.fspath(source)
    if os.path.isdir(source):
        names = sorted(n for n in os.listdir(source) if n.lower().endswith(IMAGE_SUFFIXES))
        if not names:
            raise FormatError(f"holds no image files ({', '.join(IMAGE_SUFFIXES[:4])}, ...)",
                              path=source)
        return [os.path.join(source, n) for n in names]
    base = os.path.dirname(os.path.abspath(source))
    paths = []
    for number, line in enumerate(read_text(source, "a folder of images or lines of image "
                                                    "paths").splitlines(), 1):
        text = line.strip()
        if not text:
            continue
        name, _, last = text.rpartition(" ")
        if not name or not last.lstrip("-").isdigit():
            name = text                      # no label after the path
        paths.append(name if os.path.isabs(name) else os.path.join(base, name))
    if not paths:
        raise FormatError("lists no images", path=source)
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FormatError(f"image missing ({len(missing)} of {len(paths)})", path=missing[0])
    return paths


class ImageBatches:
    """Batches {input_blob: N x C x H x W} of prepared images, read once and kept (they are
    small: a folder of photos), the same on every pass. ``iterations`` batches of
    ``batch_size`` wrap around the files; None gives one pass over every file (the last batch
    holding the rest)."""

    def __init__(self, paths, input_blob, prepare, batch_size=32, iterations=None,
                 expected_shape=None, progress=False):
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.paths = list(paths)
        self.input_blob = input_blob
        one_pass = iterations is None
        if one_pass:
            iterations = math.ceil(len(self.paths) / batch_size)
        self.iterations = iterations
        first = prepare(self.paths[0])
        _check_shape(first, self.paths[0], self.paths[0], expected_shape)
        count = min(len(self.paths), iterations * batch_size)
        memory_budget.check(first.nbytes * count, f"{count:,} prepared images",
                            hint="use fewer images or iterations")
        prepared = [first]
        from ristretto_py.progress import progress as show_progress
        for path in show_progress(self.paths[1:count], "reading images", "image", progress):
            array = prepare(path)
            _check_shape(array, path, self.paths[0], first.shape)
            prepared.append(array)
        total = len(prepared) if one_pass else iterations * batch_size
        order = [i % len(prepared) for i in range(total)]     # a fixed count wraps around
        stacked = np.concatenate(prepared)
        self._batches = [{input_blob: stacked[order[i:i + batch_size]]}
                         for i in range(0, len(order), batch_size)]
        self.images = [self.paths[i] for i in order]
        self.images_per_batch = batch_size
        self.kept = True

    def __len__(self):
        return self.iterations

    def __iter__(self):
        return iter(self._batches)

    def __getitem__(self, index):
        return self._batches[index]


def _check_shape(array, path, first_path, expected):
    if expected is None or tuple(array.shape[1:]) == tuple(expected[1:]):
        return
    have = f"{array.shape[3]}x{array.shape[2]} with {array.shape[1]} channel(s)"
    want = f"{expected[3]}x{expected[2]} with {expected[1]} channel(s)"
    where = "the net takes" if first_path == path else f"{first_path} gives"
    raise FormatError(f"image prepares to {have} but {where} {want}: give --resize W,H (and "
                      "--gray for one channel)", path=path)
