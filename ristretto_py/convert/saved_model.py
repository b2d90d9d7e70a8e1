"""Read a Keras 2 SavedModel folder as the plain graph of ``keras_file``: the model config from
``keras_metadata.pb`` (the root object's metadata JSON), each layer's weights from the TensorFlow
checkpoint in ``variables/``. Such folders are written by ``model.save(folder)`` in TensorFlow
2.5 to 2.15 and by tf-keras.

Only the checkpoint needs TensorFlow (its reader handles every bundle layout TensorFlow wrote), so
TensorFlow is imported here and nowhere else, and only when a folder is converted. A SavedModel
without ``keras_metadata.pb`` (Keras 3's ``model.export()``, ``tf.saved_model.save``) holds a
TensorFlow graph but no Keras layers, and is refused.
"""
import json
import os

import numpy as np

from ..errors import FormatError, RistrettoError
from .keras_file import KerasModel, parse_config

METADATA_FILE = "keras_metadata.pb"
# Keras' order of a layer's variables: the order of ``get_weights()`` and of ``.h5`` files.
VARIABLE_ORDER = ("kernel", "depthwise_kernel", "pointwise_kernel", "bias", "gamma", "beta",
                  "moving_mean", "moving_variance", "alpha")
_CHECKPOINT_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"


def is_saved_model(path):
    return os.path.isdir(path) and any(
        os.path.isfile(os.path.join(path, name)) for name in ("saved_model.pb", "saved_model.pbtxt"))


def _untuple(value):
    """SavedModel metadata writes tuples as {"class_name": "__tuple__", "items": [...]}."""
    if isinstance(value, dict):
        if value.get("class_name") == "__tuple__" and "items" in value:
            return [_untuple(v) for v in value["items"]]
        return {k: _untuple(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_untuple(v) for v in value]
    return value


def read_metadata(path):
    """node path -> metadata dict of every Keras object in ``keras_metadata.pb``."""
    from ..protos import keras_saved_metadata_pb2
    from google.protobuf.message import DecodeError
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        saved = keras_saved_metadata_pb2.SavedMetadata.FromString(data)
        return {node.node_path: _untuple(json.loads(node.metadata)) for node in saved.nodes}
    except (DecodeError, ValueError) as exc:
        raise FormatError(f"not a Keras metadata file ({exc})", path=path) from None


def _checkpoint_reader(folder):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")    # TensorFlow's start-up logs are not ours
    try:
        import tensorflow as tf
    except ImportError:
        raise RistrettoError("a SavedModel folder needs TensorFlow to read its checkpoint "
                             "(pip install tensorflow); a .keras or .h5 file needs nothing more",
                             path=folder) from None
    prefix = os.path.join(folder, "variables", "variables")
    try:
        return tf.train.load_checkpoint(prefix)
    except Exception as exc:        # TensorFlow raises its own error types for bad bundles
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FormatError(f"cannot read the checkpoint variables/variables ({first})", path=folder) from None


def _layer_variables(reader, folder):
    """``layer_with_weights-N`` -> {variable name: array} from the checkpoint."""
    groups = {}
    for key in reader.get_variable_to_shape_map():
        if (not key.endswith(_CHECKPOINT_SUFFIX) or not key.startswith("layer_with_weights-")
                or "/.OPTIMIZER_SLOT/" in key):
            continue        # the optimizer and its slots, save counters, the object graph itself
        parts = key[:-len(_CHECKPOINT_SUFFIX)].split("/")
        if len(parts) != 2:
            raise FormatError(f"checkpoint variable '{key}' belongs to a nested object (models inside "
                              "models have no Caffe form)", path=folder)
        groups.setdefault(parts[0], {})[parts[1]] = np.asarray(reader.get_tensor(key), np.float32)
    return groups


def read_saved_model(folder):
    """A KerasModel from a Keras 2 SavedModel folder."""
    folder = os.fspath(folder)
    if not is_saved_model(folder):
        raise FormatError("not a SavedModel folder (no saved_model.pb)", path=folder)
    metadata_path = os.path.join(folder, METADATA_FILE)
    if not os.path.isfile(metadata_path):
        raise FormatError("the SavedModel has no keras_metadata.pb: it holds a TensorFlow graph but "
                          "no Keras layers (as Keras 3's model.export() writes); convert it with "
                          "tools/convert_tf --saved_model, or save the model as .keras or .h5", path=folder)
    nodes = read_metadata(metadata_path)
    root = nodes.get("root")
    if not root or "config" not in root or "class_name" not in root:
        raise FormatError("keras_metadata.pb has no model config for the root object", path=metadata_path)
    layers, inputs, outputs = parse_config({"class_name": root["class_name"], "config": root["config"]},
                                           folder)
    groups = _layer_variables(_checkpoint_reader(folder), folder)
    owner = {meta.get("name"): path.split(".", 1)[1] for path, meta in nodes.items()
             if path.startswith("root.layer_with_weights-") and path.count(".") == 1}
    for layer in layers:
        variables = groups.pop(owner.get(layer.name), {})
        unknown = sorted(set(variables) - set(VARIABLE_ORDER))
        if unknown:
            raise FormatError(f"layer '{layer.name}': unexpected variables {unknown} in the checkpoint",
                              path=folder)
        layer.weights = [variables[name] for name in VARIABLE_ORDER if name in variables]
    if groups:
        raise FormatError(f"checkpoint weights of no layer in the model config: {sorted(groups)}",
                          path=folder)
    return KerasModel(layers, inputs, outputs, folder)
