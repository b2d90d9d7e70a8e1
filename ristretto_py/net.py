"""``Net``: the one in-memory model every pass, runtime and tool works on.

A Net is an ordered tuple of ``Layer`` objects (name, type, bottoms, tops, the type's parameters
and its learned blobs as float32 numpy arrays), filtered for one phase by Caffe's include/exclude
rules, checked on construction (known types, bottoms produced before use, blob counts and
shapes), with shape inference for every blob. Nets and layers are not mutated after
construction: passes build new ones (``Net.with_layers``, ``Layer.replace``).
"""
import warnings

import numpy as np

from . import caffe_io
from .errors import FormatError, NetError, ResourceError, RistrettoError, RistrettoWarning
from .layers import base as layer_base
from .protos import caffe_pb2

MAX_BLOB_VALUES = 2 ** 31  # 8 GiB of float32: a larger blob is a typo in a shape, not a net
PHASES = {"TRAIN": caffe_pb2.TRAIN, "TEST": caffe_pb2.TEST}


class Layer:
    """One layer: its LayerParameter (without blobs; read-only) and its blobs (float32)."""

    __slots__ = ("_spec", "blobs")

    def __init__(self, spec, blobs=()):
        self._spec = caffe_pb2.LayerParameter()
        self._spec.CopyFrom(spec)
        self._spec.ClearField("blobs")
        self.blobs = tuple(np.asarray(b, dtype=np.float32) for b in blobs)

    @classmethod
    def create(cls, name, type, bottoms=(), tops=(), blobs=(), **params):
        """Build a layer from keyword parameters, e.g. ``convolution_param=dict(num_output=8)``."""
        spec = caffe_pb2.LayerParameter(name=name, type=type, bottom=list(bottoms), top=list(tops))
        for key, value in params.items():
            target = getattr(spec, key)
            if isinstance(value, dict):
                target.MergeFrom(type_of(target)(**value))
            else:
                target.MergeFrom(value)
        return cls(spec, blobs)

    @property
    def spec(self):
        """The LayerParameter (treat as read-only; use ``replace`` to change it)."""
        return self._spec

    name = property(lambda self: self._spec.name)
    type = property(lambda self: self._spec.type)
    bottoms = property(lambda self: tuple(self._spec.bottom))
    tops = property(lambda self: tuple(self._spec.top))

    @property
    def in_place(self):
        return bool(set(self.bottoms) & set(self.tops))

    def replace(self, spec=None, blobs=None, **fields):
        """A copy with a new spec/blobs; ``fields`` set name/type/bottom/top directly."""
        new_spec = caffe_pb2.LayerParameter()
        new_spec.CopyFrom(self._spec if spec is None else spec)
        for key, value in fields.items():
            if key in ("bottom", "top"):
                del getattr(new_spec, key)[:]
                getattr(new_spec, key).extend(value)
            else:
                setattr(new_spec, key, value)
        return Layer(new_spec, self.blobs if blobs is None else blobs)

    def to_proto(self, include_blobs=True):
        spec = caffe_pb2.LayerParameter()
        spec.CopyFrom(self._spec)
        if include_blobs:
            spec.blobs.extend(caffe_io.array_to_blob(b) for b in self.blobs)
        return spec

    def __repr__(self):
        return f"Layer({self.name!r}, {self.type!r}, {list(self.bottoms)} -> {list(self.tops)})"


def type_of(message):
    return type(message)


def _rule_met(rule, phase, level, stages):
    if rule.HasField("phase") and rule.phase != phase:
        return False
    if rule.HasField("min_level") and level < rule.min_level:
        return False
    if rule.HasField("max_level") and level > rule.max_level:
        return False
    if any(stage not in stages for stage in rule.stage):
        return False
    if any(stage in stages for stage in rule.not_stage):
        return False
    return True


def layer_in_state(spec, phase, level=0, stages=()):
    """Caffe's StateMeetsRule: include rules admit, else exclude rules reject."""
    if len(spec.include):
        return any(_rule_met(r, phase, level, stages) for r in spec.include)
    return not any(_rule_met(r, phase, level, stages) for r in spec.exclude)


class Net:
    """An ordered, validated network for one phase. See the module docstring."""

    def __init__(self, layers, name="", phase="TEST", input_shapes=None, source=None):
        if phase not in PHASES:
            raise ValueError(f"phase must be TRAIN or TEST, not {phase!r}")
        self.name = name
        self.phase = phase
        self.layers = tuple(layers)
        self.source = source  # file the net came from, for error messages
        self._input_shapes = dict(input_shapes or {})
        self._impls = []
        self._index = {}
        produced = set()
        for layer in self.layers:
            try:
                if layer.name in self._index:
                    raise NetError("two layers have this name", layer=layer.name)
                impl = layer_base.implementation(layer, phase)
                for bottom in layer.bottoms:
                    if bottom not in produced:
                        raise NetError(f"bottom '{bottom}' is not produced by any earlier layer",
                                       layer=layer.name)
                for top in layer.tops:
                    if top in produced and top not in layer.bottoms:
                        raise NetError(f"top '{top}' is already produced by an earlier layer "
                                       "(only in-place layers may reuse a blob name)",
                                       layer=layer.name)
            except RistrettoError as exc:
                raise exc.with_context(path=source)
            produced.update(layer.tops)
            self._index[layer.name] = len(self._impls)
            self._impls.append(impl)
        self._shapes = None

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def load(cls, model, weights=None, phase="TEST", level=0, stages=(), input_shapes=None):
        """Read a prototxt (and optionally a caffemodel) into a Net for ``phase``."""
        net_param = caffe_io.read_net_text(model)
        weights_param = caffe_io.read_net_binary(weights) if weights is not None else None
        return cls.from_proto(net_param, weights_param, phase=phase, level=level, stages=stages,
                              input_shapes=input_shapes, source=str(model),
                              weights_source=None if weights is None else str(weights))

    @classmethod
    def from_proto(cls, net_param, weights_param=None, phase="TEST", level=0, stages=(),
                   input_shapes=None, source=None, weights_source=None):
        """Build a Net from an upgraded NetParameter; blobs come from ``weights_param`` (or
        from ``net_param`` itself when it carries them, as a caffemodel does)."""
        if net_param.HasField("state"):
            level = level or net_param.state.level
            stages = tuple(stages) or tuple(net_param.state.stage)
        layers = [Layer(spec) for spec in net_param.layer
                  if layer_in_state(spec, PHASES[phase], level, stages)]
        if not layers:
            problem = ("defines no layers" if not len(net_param.layer) else
                       f"none of its {len(net_param.layer)} layers is in the {phase} phase")
            if weights_param is not None and len(weights_param.layer):
                problem += (f", so no layer matches the {len(weights_param.layer)} layers of "
                            f"{weights_source or 'the weights file'}")
            raise NetError(problem, path=source)
        net = cls(layers, name=net_param.name, phase=phase, input_shapes=input_shapes,
                  source=source)
        blob_source = weights_param
        if blob_source is None and any(len(spec.blobs) for spec in net_param.layer):
            blob_source, weights_source = net_param, source
        if blob_source is not None:
            _warn_unmatched(blob_source, net_param, weights_source, source)
            net = net._with_weights(blob_source, weights_source)
        return net

    def _with_weights(self, weights_param, weights_source):
        """Attach blobs by layer name, as Caffe's CopyTrainedLayersFrom does, but strictly."""
        stored = {}
        for spec in weights_param.layer:
            stored.setdefault(spec.name, spec)
        shapes = self._try_shapes()
        new_layers = []
        for layer, impl in zip(self.layers, self._impls):
            expected = None
            if shapes is not None:
                expected = [tuple(s) for s in impl.param_shapes([shapes[b] for b in layer.bottoms])]
            spec = stored.get(layer.name)
            if spec is None or not len(spec.blobs):
                if expected:
                    raise NetError(f"the weights file has no blobs for this {layer.type} layer "
                                   f"(it needs {len(expected)})", path=weights_source,
                                   layer=layer.name)
                new_layers.append(layer)
                continue
            if spec.type and spec.type != layer.type and not _compatible_types(spec.type, layer.type):
                raise NetError(f"is a {layer.type} in the prototxt but a {spec.type} in the "
                               "weights file", path=weights_source, layer=layer.name)
            arrays = [caffe_io.blob_to_array(b, path=weights_source, layer=layer.name)
                      for b in spec.blobs]
            if expected is not None:
                if len(arrays) != len(expected):
                    raise NetError(f"the weights file holds {len(arrays)} blobs but this "
                                   f"{layer.type} layer expects {len(expected)}",
                                   path=weights_source, layer=layer.name)
                arrays = [_fit_blob(a, e, b, i, layer, weights_source)
                          for i, (a, e, b) in enumerate(zip(arrays, expected, spec.blobs))]
            new_layers.append(Layer(layer.spec, arrays))
        return self.with_layers(new_layers)

    def with_layers(self, layers, name=None):
        """A new Net of the same phase with ``layers`` (validated again)."""
        return Net(layers, name=self.name if name is None else name, phase=self.phase,
                   input_shapes=self._input_shapes, source=self.source)

    def with_input_shapes(self, input_shapes):
        """The same net with other shapes for its source blobs (e.g. another batch size)."""
        shapes = dict(self._input_shapes)
        shapes.update(input_shapes)
        return Net(self.layers, name=self.name, phase=self.phase, input_shapes=shapes,
                   source=self.source)

    # -- access -----------------------------------------------------------------------------
    def layer(self, name):
        try:
            return self.layers[self._index[name]]
        except KeyError:
            raise NetError(f"no layer named '{name}' in the net", path=self.source) from None

    def impl(self, layer_or_index):
        """The registry implementation object of a layer (by index or Layer)."""
        if isinstance(layer_or_index, int):
            return self._impls[layer_or_index]
        return self._impls[self._index[layer_or_index.name]]

    @property
    def impls(self):
        return tuple(self._impls)

    @property
    def source_layers(self):
        return [l for l, i in zip(self.layers, self._impls) if i.is_source]

    @property
    def input_blobs(self):
        """Blobs fed from outside: the tops of Input/Data-like layers, in order."""
        return [t for l in self.source_layers for t in l.tops]

    @property
    def blob_names(self):
        names = []
        for layer in self.layers:
            names.extend(t for t in layer.tops if t not in names)
        return names

    @property
    def output_blobs(self):
        """Caffe's net outputs: blobs that no later layer consumes."""
        consumed, outputs = set(), []
        for layer in reversed(self.layers):
            for top in reversed(layer.tops):
                if top not in consumed and top not in outputs:
                    outputs.append(top)
            consumed.update(layer.bottoms)
        return list(reversed(outputs))

    @property
    def has_weights(self):
        return all(len(l.blobs) or not self._expects_params(i) for i, l in enumerate(self.layers))

    def _expects_params(self, index):
        shapes = self._try_shapes()
        if shapes is None:
            return False
        layer = self.layers[index]
        return bool(self._impls[index].param_shapes([shapes[b] for b in layer.bottoms]))

    # -- shapes -----------------------------------------------------------------------------
    def shapes(self):
        """Every blob's shape (after the last layer that writes it), from the source shapes."""
        if self._shapes is None:
            self._shapes, self._layer_shapes = self._infer_shapes()
        return dict(self._shapes)

    def layer_shapes(self, name):
        """(bottom shapes, top shapes) of one layer, as seen when it runs."""
        self.shapes()
        return self._layer_shapes[name]

    def _try_shapes(self):
        try:
            return self.shapes()
        except NetError:
            return None

    def _infer_shapes(self):
        shapes, per_layer = {}, {}
        for layer, impl in zip(self.layers, self._impls):
            bottom_shapes = [shapes[b] for b in layer.bottoms]
            try:
                if impl.is_source and any(t in self._input_shapes for t in layer.tops):
                    tops = [tuple(self._input_shapes.get(t) or ()) for t in layer.tops]
                    tops = [t if t else s for t, s in zip(tops, impl.output_shapes([]))]
                else:
                    tops = [tuple(int(d) for d in s) for s in impl.output_shapes(bottom_shapes)]
            except RistrettoError as exc:
                raise exc.with_context(path=self.source, layer=layer.name)
            if len(tops) != len(layer.tops):
                raise NetError(f"produced {len(tops)} shapes for {len(layer.tops)} tops",
                               path=self.source, layer=layer.name)
            for top, shape in zip(layer.tops, tops):
                if any(d < 0 for d in shape) or (shape and min(shape) == 0 and not impl.is_source):
                    raise NetError(f"top '{top}' would have the invalid shape {list(shape)} "
                                   f"(bottoms {[list(s) for s in bottom_shapes]})",
                                   path=self.source, layer=layer.name)
                values = int(np.prod(shape, dtype=np.float64))
                if values > MAX_BLOB_VALUES:
                    raise ResourceError(f"top '{top}' of shape {list(shape)} would hold "
                                        f"{values:,} values ({values * 4 / 2 ** 30:,.1f} GiB as "
                                        "float32), more than the limit of 8 GiB for one blob "
                                        "(no real net needs more): check the shapes and the "
                                        "batch size",
                                        path=self.source, layer=layer.name)
                shapes[top] = shape
            per_layer[layer.name] = (bottom_shapes, tops)
        return shapes, per_layer

    # -- output -----------------------------------------------------------------------------
    def to_proto(self, include_blobs=False):
        net = caffe_pb2.NetParameter(name=self.name)
        net.layer.extend(l.to_proto(include_blobs) for l in self.layers)
        return net

    def save(self, model_path=None, weights_path=None):
        """Write the prototxt (no blobs) and/or the caffemodel (with blobs), atomically."""
        if model_path is not None:
            caffe_io.write_net_text(self.to_proto(False), model_path)
        if weights_path is not None:
            caffe_io.write_net_binary(self.to_proto(True), weights_path)

    def __repr__(self):
        return f"Net({self.name!r}, {len(self.layers)} layers, phase={self.phase})"


def _warn_unmatched(weights_param, net_param, weights_source, model_source):
    """Caffe silently skips weights whose layer name the prototxt lacks; say which were
    ignored (layers of every phase count as matched)."""
    declared = {spec.name for spec in net_param.layer}
    ignored = [spec.name for spec in weights_param.layer
               if len(spec.blobs) and spec.name not in declared]
    if ignored:
        shown = ", ".join(ignored[:8]) + (f" and {len(ignored) - 8} more" if len(ignored) > 8 else "")
        weights_name = weights_source or "the weights"
        warnings.warn(f"{weights_name}: {len(ignored)} layer(s) with weights match no layer of "
                      f"{model_source or 'the net definition'} and are ignored: {shown}",
                      RistrettoWarning, stacklevel=3)


def _compatible_types(stored, declared):
    # Ristretto (and HWCE) layers hold the weights of their float originals and the other way round.
    strip = lambda t: t.replace("Ristretto", "").replace("HWCE", "").replace("Fc", "InnerProduct")
    return strip(stored) == strip(declared)


def _fit_blob(array, expected, proto, index, layer, path):
    """Check a blob against the shape the layer expects; legacy 4-D dims are padded as Caffe
    does (a (1, 1, 10, 20) V1 blob fits an expected (10, 20))."""
    if array.shape == expected:
        return array
    if not proto.HasField("shape") and len(expected) <= 4:
        padded = (1,) * (4 - len(expected)) + tuple(expected)
        if array.shape == padded:
            return array.reshape(expected)
    raise NetError(f"blob {index} has shape {list(array.shape)} in the weights file but the "
                   f"prototxt implies {list(expected)}", path=path, layer=layer.name)


def load(model, weights=None, **kwargs):
    """Shorthand for ``Net.load``."""
    return Net.load(model, weights, **kwargs)


__all__ = ["Net", "Layer", "load", "layer_in_state", "FormatError"]
