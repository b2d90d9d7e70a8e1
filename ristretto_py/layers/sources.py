"""Layers that bring data into a net: Input, Data (LMDB), MemoryData, DummyData.

Runtimes feed their tops from outside (``is_source``); here they only give shapes. A Data
layer's shape comes from the first record of its LMDB (or from shapes the caller supplies).
"""
from ..errors import FormatError
from .base import LayerImpl, register


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
        datum = _first_datum(source, self.name)
        if datum.encoded:
            from ..images import decode, opencv
            try:
                image = decode(datum.data, opencv().IMREAD_COLOR, source, "first record")
            except FormatError as exc:
                raise exc.with_context(layer=self.name)
            channels, height, width = image.shape[2], image.shape[0], image.shape[1]
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
            value = cursor.value()
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
    return datum


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
