"""Layers that bring data into a net: Input, Data (LMDB), ImageData (a list of image files),
MemoryData, DummyData.

Runtimes feed their tops from outside (``is_source``); here they only give shapes. A Data
layer's shape comes from the first record of its LMDB, an ImageData layer's from the first image
of its list (or from shapes the caller supplies). The list-file reader and the image loader of
ImageData live here too, shared with the training feed (``ristretto_py.train.data``).
"""
import os

from ..errors import FormatError, NetError
from .base import LayerImpl, register

INT32 = (-2 ** 31, 2 ** 31 - 1)     # Caffe reads a list file's label as an int


@register
class Input(LayerImpl):
    type_name = "Input"
    bottoms_range = (0, 0)
    tops_range = (1, None)
    is_source = True

    def setup(self, spec):
        shapes = [tuple(int(d) for d in s.dim) for s in spec.input_param.shape]
        if len(shapes) == 1:
            shapes = shapes * len(self.layer.tops)
        if len(shapes) != len(self.layer.tops):
            raise self.error(f"gives {len(shapes)} shapes for {len(self.layer.tops)} tops")
        self.shapes = shapes

    def output_shapes(self, bottom_shapes):
        return self.shapes


def _transformed_shape(spec, channels, height, width):
    crop = spec.transform_param.crop_size
    crop_h = spec.transform_param.crop_h or crop
    crop_w = spec.transform_param.crop_w or crop
    return (channels, crop_h or height, crop_w or width)


@register
class Data(LayerImpl):
    """Caffe's database input. The image shape comes from the first Datum of the LMDB."""
    type_name = "Data"
    bottoms_range = (0, 0)
    tops_range = (1, 2)
    is_source = True

    def setup(self, spec):
        self.batch_size = spec.data_param.batch_size
        if self.batch_size < 1:
            raise self.error("data_param.batch_size is 0 (or missing): give the number of "
                             "images per batch, as Caffe requires")

    def output_shapes(self, bottom_shapes):
        from ..protos import caffe_pb2
        source = self.spec.data_param.source
        if self.spec.data_param.backend != caffe_pb2.DataParameter.LMDB:
            raise self.error("only LMDB databases are supported (set data_param.backend: LMDB)")
        key, datum = _first_datum(source, self.name)
        if datum.encoded:
            # decoded as the feed decodes it (Caffe's InferBlobShape): in colour or grey when
            # transform_param forces it, else as stored (a grey PNG has one channel)
            from ..lmdb_data import datum_pixels
            transform = self.spec.transform_param
            try:
                channels, height, width = datum_pixels(
                    datum, transform.force_color, transform.force_gray,
                    (source, key)).shape
            except FormatError as exc:
                raise exc.with_context(layer=self.name)
        else:
            channels, height, width = datum.channels, datum.height, datum.width
        shape = (self.batch_size,) + _transformed_shape(self.spec, channels, height, width)
        return [shape] + [(self.batch_size,)] * (len(self.layer.tops) - 1)


def _first_datum(source, layer_name):
    import lmdb

    from ..lmdb_data import close_lmdb, open_lmdb
    from ..protos import caffe_pb2
    env = open_lmdb(source, layer_name)
    try:
        with env.begin() as txn:
            cursor = txn.cursor()
            if not cursor.first():
                raise FormatError("LMDB database is empty", path=source, layer=layer_name)
            key, value = cursor.item()
    except lmdb.Error as exc:
        raise FormatError(f"not a readable LMDB database ({exc})", path=source,
                          layer=layer_name) from None
    finally:
        close_lmdb(env)
    datum = caffe_pb2.Datum()
    try:
        datum.ParseFromString(value)
    except Exception:
        raise FormatError("first record is not a Caffe Datum", path=source,
                          layer=layer_name) from None
    return key, datum


@register
class ImageData(LayerImpl):
    """Caffe's ImageData: images named in a list file (``path label`` lines), read with OpenCV
    in colour or grey (``is_color``), resized to ``new_height`` x ``new_width`` when both are
    given, then transformed. The shape comes from the first image of the list."""
    type_name = "ImageData"
    bottoms_range = (0, 0)
    tops_range = (1, 2)
    is_source = True

    def setup(self, spec):
        p = spec.image_data_param
        self.batch_size = p.batch_size
        if self.batch_size < 1:
            raise self.error("image_data_param.batch_size is 0: give the number of images per "
                             "batch")
        if (p.new_height > 0) != (p.new_width > 0):
            raise self.error("give image_data_param new_height and new_width together (or "
                             "neither, to keep the images' size), as Caffe requires")

    def output_shapes(self, bottom_shapes):
        p = self.spec.image_data_param
        entries = read_image_list(p.source, self.name)
        name, _, line = entries[0]
        image = read_list_image(p, name, line, p.source, self.name)
        shape = (self.batch_size,) + _transformed_shape(self.spec, *image.shape)
        return [shape] + [(self.batch_size,)] * (len(self.layer.tops) - 1)


def read_image_list(path, layer=None):
    """The entries of an ImageData list file: [(image path as written, label, line number)].

    Each non-blank line is an image path and an integer label, split at the last run of
    white space (Caffe splits at the last space, so a path may hold spaces). A line without a
    label, a label that is not an integer (or not an int32), and a list with no entry are
    errors naming the file and the line."""
    from ..text_files import read_text
    if not path:
        raise NetError("image_data_param.source is empty: give the list file of 'path label' "
                       "lines", layer=layer)
    try:
        text = read_text(path, "lines of 'path label'")
    except FormatError as exc:
        raise exc.with_context(layer=layer)
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.strip().rsplit(None, 1)
        if not fields:
            continue
        try:
            label = int(fields[1]) if len(fields) == 2 else None
        except ValueError:
            label = None
        if label is None:
            raise FormatError(f"line {number}: expected 'path label' (an integer label), got "
                              f"{line.strip()[:80]!r}", path=path, layer=layer)
        if not INT32[0] <= label <= INT32[1]:
            raise FormatError(f"line {number}: label {label} does not fit an int32", path=path,
                              layer=layer)
        entries.append((fields[0], label, number))
    if not entries:
        raise FormatError("the list holds no images ('path label' lines)", path=path,
                          layer=layer)
    return entries


def read_list_image(image_data_param, name, line, list_path, layer=None, quiet=False):
    """One image of an ImageData list as a C x H x W uint8 array (BGR, or one grey channel),
    read as Caffe's ``ReadImageToCVMat``: ``root_folder`` + ``name`` (joined as Caffe joins
    them, by plain concatenation), ``is_color``, bilinear resize to ``new_width`` x
    ``new_height`` when both are set. ``quiet`` decodes without capturing the codecs' messages
    (see ``lmdb_data.datum_pixels``)."""
    from ..images import decode, opencv
    cv2 = opencv()
    p = image_data_param
    path = p.root_folder + name
    where = f"line {line} of {list_path}"
    if not os.path.isfile(path):
        hint = ""
        if p.root_folder and not p.root_folder.endswith("/") and os.path.isdir(p.root_folder):
            hint = "; root_folder has no trailing '/' and Caffe prefixes it as it is"
        raise FormatError(f"no such image ({where}{hint})", path=path, layer=layer)
    flags = cv2.IMREAD_COLOR if p.is_color else cv2.IMREAD_GRAYSCALE
    if quiet:
        image = cv2.imread(path, flags)
        if image is None:
            raise FormatError(f"OpenCV cannot decode this file as an image ({where})",
                              path=path, layer=layer)
    else:
        try:
            image = decode(path, flags, path, f"file ({where})")
        except FormatError as exc:
            raise exc.with_context(layer=layer)
    if p.new_height > 0 and p.new_width > 0:
        image = cv2.resize(image, (p.new_width, p.new_height), interpolation=cv2.INTER_LINEAR)
    if image.ndim == 2:
        image = image[:, :, None]
    return image.transpose(2, 0, 1)


@register
class MemoryData(LayerImpl):
    type_name = "MemoryData"
    bottoms_range = (0, 0)
    tops_range = (1, 2)
    is_source = True

    def setup(self, spec):
        p = spec.memory_data_param
        self.shape = (p.batch_size, p.channels, p.height, p.width)

    def output_shapes(self, bottom_shapes):
        return [self.shape] + [(self.shape[0],)] * (len(self.layer.tops) - 1)


@register
class DummyData(LayerImpl):
    type_name = "DummyData"
    bottoms_range = (0, 0)
    tops_range = (1, None)
    is_source = True

    def setup(self, spec):
        p = spec.dummy_data_param
        if len(p.shape):
            shapes = [tuple(int(d) for d in s.dim) for s in p.shape]
        else:
            n = max(len(p.num), 1)
            shapes = [(p.num[min(i, len(p.num) - 1)], p.channels[min(i, len(p.channels) - 1)],
                       p.height[min(i, len(p.height) - 1)], p.width[min(i, len(p.width) - 1)])
                      for i in range(n)] if len(p.num) else []
        if len(shapes) == 1:
            shapes = shapes * len(self.layer.tops)
        if len(shapes) != len(self.layer.tops):
            raise self.error(f"gives {len(shapes)} shapes for {len(self.layer.tops)} tops")
        self.shapes = shapes

    def output_shapes(self, bottom_shapes):
        return self.shapes
