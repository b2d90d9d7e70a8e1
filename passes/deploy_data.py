"""A deploy net (an Input layer) made into Ristretto's kind of train/test net for the searches:
its input becomes a Data layer per phase reading an LMDB (batch size, scale, mean values as
Caffe's transform_param), and top-1/top-5 Accuracy layers score its output against the labels.
This is what ``tools/quantize --data LMDB`` does with a converted or deploy model."""
from ristretto_py.errors import NetError
from ristretto_py.protos import caffe_pb2


def with_data_layers(param, source, batch_size=100, scale=None, mean=None, output=None, top_k=5):
    inputs = [l for l in param.layer if l.type == "Input"]
    if len(inputs) != 1 or len(inputs[0].top) != 1:
        raise NetError("--data needs a deploy net with exactly one Input layer of one blob")
    data_blob = inputs[0].top[0]
    produced = [t for l in param.layer for t in l.top]
    consumed = {b for l in param.layer for b in l.bottom}
    outputs = [t for t in dict.fromkeys(produced) if t not in consumed]
    score_blob = output or (outputs[-1] if outputs else None)
    if score_blob not in produced:
        raise NetError(f"no output blob '{score_blob}' to score")
    edited = caffe_pb2.NetParameter()
    edited.CopyFrom(param)
    del edited.layer[:]
    for layer in param.layer:
        if layer is inputs[0]:
            for phase in (caffe_pb2.TRAIN, caffe_pb2.TEST):
                data = edited.layer.add(name=data_blob, type="Data", top=[data_blob, "label"])
                data.include.add(phase=phase)
                data.data_param.source = str(source)
                data.data_param.batch_size = batch_size
                data.data_param.backend = caffe_pb2.DataParameter.LMDB
                if scale is not None:
                    data.transform_param.scale = scale
                if mean:
                    data.transform_param.mean_value.extend(mean)
            continue
        edited.layer.add().CopyFrom(layer)
    for k, name in ((1, "accuracy"), (top_k, f"accuracy_top{top_k}")):
        accuracy = edited.layer.add(name=name, type="Accuracy", bottom=[score_blob, "label"], top=[name])
        accuracy.include.add(phase=caffe_pb2.TEST)
        if k != 1:
            accuracy.accuracy_param.top_k = k
    return edited


def search_param(model, data=None, batch_size=100, scale=None, mean=None):
    """The net a search works on: None for the prototxt as it is (the searches read it), or,
    with ``data`` (an LMDB), the deploy net given Data and Accuracy layers."""
    if not data:
        return None
    from ristretto_py.caffe_io import read_net_text
    return with_data_layers(read_net_text(model), data, batch_size, scale, mean)
