"""Caffe's database input at test time: ``Datum`` records from an LMDB, transformed as Caffe's
``DataTransformer`` does (mean file or mean values, scale, centre crop, optional mirror), and
batched as its ``Data`` layer does (records in key order, wrapping to the first at the end)."""
import os

import numpy as np

from . import caffe_io
from .errors import FormatError, NetError
from .protos import caffe_pb2


class LmdbReader:
    """Sequential, wrapping reader of the ``Datum`` records of one LMDB database."""

    def __init__(self, path, layer=None):
        import lmdb
        self.path, self.layer = str(path), layer
        if not os.path.exists(self.path):
            raise FormatError("LMDB database does not exist", path=self.path, layer=layer)
        try:
            self._env = lmdb.open(self.path, readonly=True, lock=False, readahead=False,
                                  subdir=os.path.isdir(self.path))
            self._txn = self._env.begin()
            self.count = self._txn.stat()["entries"]
        except lmdb.Error as exc:
            raise FormatError(f"not a readable LMDB database ({exc})", path=self.path,
                              layer=layer) from None
        if self.count == 0:
            raise FormatError("LMDB database is empty", path=self.path, layer=layer)
        self._cursor = self._txn.cursor()
        self._cursor.first()

    def next_datum(self):
        """The next record as a Datum, restarting at the first record after the last."""
        import lmdb
        try:
            key, value = self._cursor.item()
            if not self._cursor.next():
                self._cursor.first()
        except lmdb.Error as exc:
            raise FormatError(f"corrupt LMDB database ({exc})", path=self.path,
                              layer=self.layer) from None
        datum = caffe_pb2.Datum()
        try:
            datum.ParseFromString(value)
        except Exception:
            raise FormatError(f"record {key!r} is not a Caffe Datum", path=self.path,
                              layer=self.layer) from None
        return key, datum

    def close(self):
        self._env.close()


def datum_to_array(datum, force_color=False, force_gray=False, where=None):
    """A Datum's image as a C x H x W float32 array (BGR channel order as stored)."""
    path, key = where or (None, None)
    if datum.encoded:
        import cv2
        flags = cv2.IMREAD_COLOR if force_color else (
            cv2.IMREAD_GRAYSCALE if force_gray else cv2.IMREAD_UNCHANGED)
        image = cv2.imdecode(np.frombuffer(datum.data, np.uint8), flags)
        if image is None:
            raise FormatError(f"record {key!r} holds an image OpenCV cannot decode", path=path)
        if image.ndim == 2:
            image = image[:, :, None]
        return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)
    shape = (datum.channels, datum.height, datum.width)
    count = int(np.prod(shape))
    if len(datum.data):
        values = np.frombuffer(datum.data, dtype=np.uint8)
    else:
        values = np.asarray(datum.float_data, dtype=np.float32)
    if count == 0 or values.size != count:
        raise FormatError(f"record {key!r} declares shape {list(shape)} but holds "
                          f"{values.size} values", path=path)
    return values.reshape(shape).astype(np.float32)


class DataTransformer:
    """Caffe's TEST-phase transformation: (pixel - mean) * scale, centre crop, mirror."""

    def __init__(self, transform_param, phase="TEST", seed=0, layer=None):
        p = transform_param
        if p.HasField("mean_file") and len(p.mean_value):
            raise NetError("give mean_file or mean_value, not both", layer=layer)
        self.scale = np.float32(p.scale)
        self.crop_h = p.crop_h or p.crop_size
        self.crop_w = p.crop_w or p.crop_size
        self.mirror = bool(p.mirror)
        self.phase = phase
        self.force_color, self.force_gray = bool(p.force_color), bool(p.force_gray)
        self.mean_file = caffe_io.read_blob_proto(p.mean_file) if p.HasField("mean_file") else None
        if self.mean_file is not None:
            self.mean_file = self.mean_file.reshape(self.mean_file.shape[-3:])
        self.mean_values = np.asarray(p.mean_value, np.float32)
        self.layer = layer
        self._rng = np.random.default_rng(seed)

    def __call__(self, image):
        channels, height, width = image.shape
        if self.mean_file is not None:
            if self.mean_file.shape != image.shape:
                raise NetError(f"mean file has shape {list(self.mean_file.shape)} but the "
                               f"images are {list(image.shape)}", layer=self.layer)
            image = image - self.mean_file
        elif self.mean_values.size:
            if self.mean_values.size not in (1, channels):
                raise NetError(f"give 1 or {channels} mean_value entries, not "
                               f"{self.mean_values.size}", layer=self.layer)
            image = image - self.mean_values.reshape(-1, 1, 1)
        if self.crop_h or self.crop_w:
            crop_h, crop_w = self.crop_h or height, self.crop_w or width
            if crop_h > height or crop_w > width:
                raise NetError(f"crop {crop_h}x{crop_w} is larger than the {height}x{width} "
                               "images", layer=self.layer)
            if self.phase == "TRAIN":
                top = int(self._rng.integers(height - crop_h + 1))
                left = int(self._rng.integers(width - crop_w + 1))
            else:
                top, left = (height - crop_h) // 2, (width - crop_w) // 2
            image = image[:, top:top + crop_h, left:left + crop_w]
        if self.mirror and self._rng.integers(2):
            image = image[:, :, ::-1]
        return np.ascontiguousarray(image * self.scale, dtype=np.float32)


class DataLayerFeed:
    """Batches for one ``Data`` layer of a net: ``next_batch()`` -> {top: array}."""

    def __init__(self, layer, phase="TEST", seed=0, source=None):
        p = layer.spec.data_param
        if p.backend != caffe_pb2.DataParameter.LMDB:
            raise NetError("only LMDB databases are supported (data_param.backend: LMDB)",
                           layer=layer.name)
        self.layer = layer
        self.batch_size = p.batch_size or 1
        self.reader = LmdbReader(source or p.source, layer=layer.name)
        self.transform = DataTransformer(layer.spec.transform_param, phase, seed, layer.name)

    def next_batch(self):
        images, labels = [], []
        for _ in range(self.batch_size):
            key, datum = self.reader.next_datum()
            image = datum_to_array(datum, self.transform.force_color, self.transform.force_gray,
                                   (self.reader.path, key))
            images.append(self.transform(image))
            labels.append(datum.label)
        shapes = {im.shape for im in images}
        if len(shapes) > 1:
            raise FormatError(f"records have different shapes {sorted(shapes)} within a batch",
                              path=self.reader.path, layer=self.layer.name)
        tops = self.layer.tops
        batch = {tops[0]: np.stack(images)}
        if len(tops) > 1:
            batch[tops[1]] = np.asarray(labels, np.float32)
        return batch

    def close(self):
        self.reader.close()
