"""Bring old Caffe nets to the current schema on read, as Caffe's own upgrade does.

* V1 nets (``layers { type: CONVOLUTION ... }``) become ``layer { type: "Convolution" }``.
* Net-level ``input`` / ``input_dim`` / ``input_shape`` become ``Input`` layers.
* Data-transformation fields still stored in data-layer parameters move to ``transform_param``.
V0 nets (before 2014, parameters in a nested ``layer`` message) are refused with a pointer to
Caffe's ``upgrade_net_proto_text``.
"""
from .protos import caffe_pb2
from .errors import FormatError

V1 = caffe_pb2.V1LayerParameter

# V1 enum name -> current type string (Caffe's own spelling of each).
V1_TYPE_NAMES = {
    "NONE": "", "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL",
    "CONCAT": "Concat", "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution",
    "DATA": "Data", "DECONVOLUTION": "Deconvolution", "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData", "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise",
    "EXP": "Exp", "FLATTEN": "Flatten", "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col", "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct", "LRN": "LRN",
    "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN", "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence",
    "SOFTMAX": "Softmax", "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice",
    "TANH": "TanH", "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
}

# V1 fields copied one to one into LayerParameter (same name, same message type).
_V1_SAME_FIELDS = [
    f.name for f in V1.DESCRIPTOR.fields
    if f.name.endswith("_param") and f.name in caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name
]

_DEPRECATED_TRANSFORM = ("scale", "mean_file", "crop_size", "mirror")


def upgrade_net(net, path=None):
    """Upgrade ``net`` (a NetParameter) in place to the current schema; return it."""
    if len(net.layers):
        if len(net.layer):
            raise FormatError("has both 'layer' and the old 'layers' fields; use one", path=path)
        _upgrade_v1_layers(net, path)
    _upgrade_inputs(net, path)
    for layer in net.layer:
        _upgrade_data_transform(layer)
    return net


def _upgrade_v1_layers(net, path):
    converted = []
    for index, old in enumerate(net.layers):
        name = old.name or f"#{index}"
        if old.HasField("layer"):
            raise FormatError(
                "is a V0 net (parameters nested in 'layer'); upgrade it first with Caffe's "
                "upgrade_net_proto_text", path=path, layer=name)
        new = caffe_pb2.LayerParameter()
        new.name = old.name
        type_name = V1.LayerType.Name(old.type)
        if type_name == "NONE":
            raise FormatError("V1 layer has no type", path=path, layer=name)
        new.type = V1_TYPE_NAMES[type_name]
        new.bottom.extend(old.bottom)
        new.top.extend(old.top)
        new.include.extend(old.include)
        new.exclude.extend(old.exclude)
        new.loss_weight.extend(old.loss_weight)
        new.blobs.extend(old.blobs)
        count = max(len(old.param), len(old.blob_share_mode), len(old.blobs_lr), len(old.weight_decay))
        for i in range(count):
            spec = new.param.add()
            if i < len(old.param):
                spec.name = old.param[i]
            if i < len(old.blob_share_mode):
                spec.share_mode = old.blob_share_mode[i]
            if i < len(old.blobs_lr):
                spec.lr_mult = old.blobs_lr[i]
            if i < len(old.weight_decay):
                spec.decay_mult = old.weight_decay[i]
        for field in _V1_SAME_FIELDS:
            if old.HasField(field):
                getattr(new, field).CopyFrom(getattr(old, field))
        converted.append(new)
    del net.layers[:]
    net.layer.extend(converted)


def _upgrade_inputs(net, path):
    if not len(net.input):
        if len(net.input_dim) or len(net.input_shape):
            raise FormatError("gives input_dim/input_shape without any 'input' name", path=path)
        return
    names = list(net.input)
    if len(net.input_shape):
        if len(net.input_shape) != len(names):
            raise FormatError(
                f"has {len(names)} 'input' names but {len(net.input_shape)} input_shape entries",
                path=path)
        shapes = [list(s.dim) for s in net.input_shape]
    elif len(net.input_dim):
        if len(net.input_dim) != 4 * len(names):
            raise FormatError(
                f"has {len(names)} 'input' names but {len(net.input_dim)} input_dim values "
                "(4 per input expected)", path=path)
        dims = list(net.input_dim)
        shapes = [dims[4 * i:4 * i + 4] for i in range(len(names))]
    else:
        raise FormatError("names inputs but gives no input_shape or input_dim", path=path)
    layer = caffe_pb2.LayerParameter(name="input", type="Input")
    if any(l.name == "input" for l in net.layer):
        layer.name = "input_" + "_".join(names)
    layer.top.extend(names)
    for shape in shapes:
        layer.input_param.shape.add().dim.extend(shape)
    existing = list(net.layer)
    del net.layer[:]
    net.layer.extend([layer] + existing)
    del net.input[:]
    del net.input_dim[:]
    del net.input_shape[:]


def _upgrade_data_transform(layer):
    for field in ("data_param", "image_data_param", "window_data_param"):
        if not layer.HasField(field) or layer.HasField("transform_param"):
            continue
        params = getattr(layer, field)
        for name in _DEPRECATED_TRANSFORM:
            if params.HasField(name):
                setattr(layer.transform_param, name, getattr(params, name))
                params.ClearField(name)
