"""Write Caffe ``Datum`` LMDB databases (what Caffe's convert_imageset produces)."""
import os
import shutil
import tempfile

import numpy as np

from . import atomic
from .errors import RistrettoError
from .protos import caffe_pb2


def make_datum(image, label, encoded_as=None):
    """A Datum from an H x W x C (or H x W) uint8 BGR image; optionally store it encoded
    (``encoded_as`` = ".png" or ".jpg") instead of raw C x H x W bytes."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.dtype != np.uint8:
        raise RistrettoError(f"images must be uint8, not {image.dtype}")
    datum = caffe_pb2.Datum(label=int(label))
    if encoded_as:
        import cv2
        ok, buffer = cv2.imencode(encoded_as, image)
        if not ok:
            raise RistrettoError(f"OpenCV could not encode an image as {encoded_as}")
        datum.data = buffer.tobytes()
        datum.encoded = True
        datum.channels, datum.height, datum.width = image.shape[2], image.shape[0], image.shape[1]
    else:
        datum.channels, datum.height, datum.width = image.shape[2], image.shape[0], image.shape[1]
        datum.data = np.ascontiguousarray(image.transpose(2, 0, 1)).tobytes()
    return datum


def write_lmdb(path, datums, map_size=None):
    """Write ``datums`` (Datum, or (Datum, name) pairs) under keys ``%08d`` (or Caffe's
    ``%08d_<name>``) into a new LMDB at ``path``.

    The database is built in a temporary directory beside ``path`` and renamed into place (at
    the end of an enclosing ``atomic.all_or_nothing``), so a failure leaves no half-written
    database. An existing ``path`` is refused."""
    import lmdb
    path = os.fspath(path)
    if os.path.lexists(path):
        raise RistrettoError("already exists: refusing to overwrite a database", path=path)
    parent = atomic.staging_directory(path)
    try:
        staging = tempfile.mkdtemp(prefix=".tmp-lmdb-", dir=parent)
    except OSError as exc:
        raise RistrettoError(f"cannot write: {exc.strerror}", path=path) from None
    count = 0
    try:
        try:
            env = lmdb.open(staging, map_size=map_size or 1 << 34, subdir=True, meminit=False)
        except lmdb.Error as exc:
            raise RistrettoError(f"cannot create the database ({exc})", path=path) from None
        try:
            txn = env.begin(write=True)
            for count, item in enumerate(datums, 1):
                datum, name = item if isinstance(item, tuple) else (item, None)
                key = b"%08d" % (count - 1) + (b"_" + name.encode("utf-8") if name else b"")
                txn.put(key, datum.SerializeToString())
                if count % 1000 == 0:
                    txn.commit()
                    txn = env.begin(write=True)
            txn.commit()
            env.sync()
        except lmdb.Error as exc:
            raise RistrettoError(f"cannot write the database after {count} records ({exc})",
                                 path=path) from None
        finally:
            env.close()
        atomic.finish(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return count
