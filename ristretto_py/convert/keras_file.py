"""Read a Keras model file without Keras or TensorFlow: the Keras 3 ``.keras`` archive (a zip of
``config.json`` and ``model.weights.h5``) and the legacy HDF5 ``.h5`` (``model_config`` attribute
and ``model_weights`` group), with h5py.

The result is a plain graph: layers (class name, name, config, input tensor references) in the
file's order, the model's input and output references, and each layer's weights as numpy arrays
in Keras' variable order (kernel, bias; gamma, beta, moving mean, moving variance).

In ``.keras`` archives the weights of the i-th layer are stored under the snake-cased class name
with a counter (``conv2d``, ``conv2d_1``, ...), in the order of the model's layers; in ``.h5``
files under the layer's name, listed by the group's ``weight_names`` attribute.
"""
import dataclasses
import io
import json
import os
import re
import zipfile

import numpy as np

from ..errors import FormatError


@dataclasses.dataclass
class KerasLayer:
    class_name: str
    name: str
    config: dict
    inputs: list            # [(layer name, node index, tensor index)] in call order
    weights: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class KerasModel:
    layers: list
    inputs: list            # [(layer name, node, index)]
    outputs: list
    source: str


def snake_case(name):
    """Keras' own rule for the names of saved layer paths."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _history(tensor, path):
    try:
        layer, node, index = tensor["config"]["keras_history"]
        return (layer, int(node), int(index))
    except (KeyError, TypeError, ValueError):
        raise FormatError(f"unexpected tensor reference in the model config: {str(tensor)[:80]}",
                          path=path) from None


def _inbound(entry, path):
    """Input references of a Functional layer (Keras 3 and Keras 2 node formats)."""
    nodes = entry.get("inbound_nodes") or []
    if len(nodes) > 1:
        raise FormatError(f"layer '{entry.get('name')}' is called {len(nodes)} times (shared "
                          "layers have no Caffe form)", path=path)
    if not nodes:
        return []
    node = nodes[0]
    if isinstance(node, dict):       # Keras 3: {"args": [...], "kwargs": {...}}
        refs = []
        for arg in node.get("args", []):
            items = arg if isinstance(arg, list) else [arg]
            refs += [_history(t, path) for t in items if isinstance(t, dict)]
        return refs
    return [(ref[0], int(ref[1]), int(ref[2])) for ref in node]   # Keras 2: [[name, node, index, kw]]


def parse_config(config, path):
    """(layers, inputs, outputs) of a Functional or Sequential model config."""
    kind = config.get("class_name")
    body = config.get("config", {})
    if kind == "Sequential":
        layers, previous = [], None
        for entry in body.get("layers", []):
            name = entry.get("config", {}).get("name") or entry.get("name")
            inputs = [] if previous is None else [(previous, 0, 0)]
            if entry["class_name"] == "InputLayer":
                inputs = []
            layers.append(KerasLayer(entry["class_name"], name, entry.get("config", {}), inputs))
            previous = name
        if not layers or layers[0].class_name != "InputLayer":
            shape = body.get("build_input_shape") or (layers[0].config.get("batch_input_shape") if layers else None)
            if not shape:
                raise FormatError("the Sequential model has no input shape (build it before saving)", path=path)
            layers.insert(0, KerasLayer("InputLayer", "input", {"batch_shape": list(shape)}, []))
            layers[1].inputs = [("input", 0, 0)]
        return layers, [(layers[0].name, 0, 0)], [(layers[-1].name, 0, 0)]
    if kind not in ("Functional", "Model"):
        raise FormatError(f"a {kind} model: only Functional and Sequential models convert", path=path)
    layers = [KerasLayer(e["class_name"], e.get("name") or e["config"]["name"], e.get("config", {}),
                         _inbound(e, path)) for e in body.get("layers", [])]

    def refs(value):
        if value and isinstance(value[0], str):
            value = [value]
        return [(v[0], int(v[1]), int(v[2])) for v in value]
    return layers, refs(body.get("input_layers", [])), refs(body.get("output_layers", []))


def read_keras_file(path):
    """A KerasModel from ``.keras`` or ``.h5``."""
    import h5py
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FormatError("no such file", path=path)
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                config = json.loads(archive.read("config.json"))
                weights_bytes = archive.read("model.weights.h5")
        except (KeyError, ValueError, zipfile.BadZipFile) as exc:
            raise FormatError(f"not a Keras 3 .keras archive ({exc})", path=path) from None
        layers, inputs, outputs = parse_config(config, path)
        with h5py.File(io.BytesIO(weights_bytes), "r") as store:
            _attach_keras3_weights(layers, store, path)
        return KerasModel(layers, inputs, outputs, path)
    try:
        store = h5py.File(path, "r")
    except OSError:
        raise FormatError("neither a .keras archive nor an HDF5 file", path=path) from None
    with store:
        if "model_config" not in store.attrs:
            raise FormatError("an HDF5 file without a model_config (weights only?)", path=path)
        raw = store.attrs["model_config"]
        config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        layers, inputs, outputs = parse_config(config, path)
        group = store["model_weights"] if "model_weights" in store else store
        for layer in layers:
            if layer.name in group:
                g = group[layer.name]
                names = [n.decode() if isinstance(n, bytes) else n for n in g.attrs.get("weight_names", [])]
                layer.weights = [np.asarray(g[n], np.float32) for n in names]
    return KerasModel(layers, inputs, outputs, path)


def _attach_keras3_weights(layers, store, path):
    used = {}
    root = store["layers"] if "layers" in store else None
    for layer in layers:
        base = snake_case(layer.class_name)
        count = used.get(base, 0)
        used[base] = count + 1
        key = base if count == 0 else f"{base}_{count}"
        if root is None or key not in root or "vars" not in root[key]:
            continue
        variables = root[key]["vars"]
        layer.weights = [np.asarray(variables[str(i)], np.float32) for i in range(len(variables))]
