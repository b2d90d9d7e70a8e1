"""The layer-type registry: each Caffe layer type defined once, in one class.

A ``LayerImpl`` subclass holds, side by side, one type's parameter parsing (``setup``), its
shape rule (``output_shapes``, ``param_shapes``), its float32 numpy forward, its MAC count and
its ONNX export. ``@register`` adds it to the registry under its Caffe type name; adding a
layer type touches only the module of its family.
"""
from dataclasses import dataclass, field

import numpy as np

from ..errors import NetError, UnsupportedError

_REGISTRY = {}


def register(cls):
    """Class decorator: make ``cls`` the implementation of ``cls.type_name`` (and aliases)."""
    for name in (cls.type_name, *cls.aliases):
        if name in _REGISTRY:
            raise RuntimeError(f"layer type {name!r} registered twice")
        _REGISTRY[name] = cls
    return cls


def known_types():
    return sorted(_REGISTRY)


def implementation(layer, phase="TEST"):
    """Build the implementation object of ``layer`` (a ``Layer``) for ``phase``."""
    cls = _REGISTRY.get(layer.type)
    if cls is None:
        raise UnsupportedError(f"unknown layer type '{layer.type}'", layer=layer.name)
    impl = cls(layer, phase)
    return impl


@dataclass
class RunContext:
    """Options of one runtime that layers may need: which Ristretto build to reproduce
    (``compat``: "gpu" or "cpu", see ``numerics``) and the generator for stochastic rounding."""
    compat: str = "gpu"
    rng: object = None
    # For an in-place layer, the runtime may hand over its bottom array (no other blob holds
    # it) as ``reuse``: layers with ``forward_into`` then write their top into it, as Caffe does.
    reuse: object = None


@dataclass
class OnnxIO:
    """What a layer's ONNX export works on: value names, parameters and static shapes.
    ``extra["compat"]`` is the Ristretto build being reproduced; a layer that rewrites a bottom
    in place (Ristretto's layers trim their inputs so, in both builds) sets ``extra["rebind"]``
    to {bottom index: new value name}, and later layers read the new value, through the blob
    and through every blob sharing its data (Split, Flatten, Reshape tops)."""
    bottoms: list
    tops: list
    blobs: list
    bottom_shapes: list
    top_shapes: list
    extra: dict = field(default_factory=dict)


class LayerImpl:
    """Base class of one Caffe layer type. Subclasses override what their type needs."""

    type_name = ""
    aliases = ()
    bottoms_range = (1, 1)   # (min, max) number of bottoms; max None = unbounded
    tops_range = (1, 1)
    is_source = False         # produces network inputs (Input, Data, ...): fed by the runtime
    rewrites_bottoms = False  # changes bottoms in place (Ristretto's layers; see ``run``)
    onnx_exportable = True

    def __init__(self, layer, phase="TEST"):
        self.layer = layer
        self.name = layer.name
        self.spec = layer.spec
        self.phase = phase
        self._check_counts()
        self.setup(layer.spec)
        from .formats import parse_format
        # A dynamic-fixed-point format on a stock layer (``formats``), or None.
        self.layer_format = parse_format(self)

    # -- parameters -----------------------------------------------------------------------
    def setup(self, spec):
        """Parse this type's parameters from ``spec`` (a LayerParameter); raise NetError."""

    def error(self, message):
        return NetError(message, layer=self.name)

    def _check_counts(self):
        for what, values, (low, high) in (("bottom", self.layer.bottoms, self.bottoms_range),
                                           ("top", self.layer.tops, self.tops_range)):
            n = len(values)
            if n < low or (high is not None and n > high):
                want = f"{low}" if low == high else (f"at least {low}" if high is None else f"{low} to {high}")
                raise self.error(f"{self.type_name} takes {want} {what}(s), got {n}")

    # -- shapes ---------------------------------------------------------------------------
    def output_shapes(self, bottom_shapes):
        """Shapes of the tops for the given bottom shapes (tuples of ints)."""
        raise NotImplementedError

    def param_shapes(self, bottom_shapes):
        """Shapes of the learned blobs this layer expects, in Caffe's order."""
        return []

    # -- computation ----------------------------------------------------------------------
    def forward(self, bottoms, blobs):
        """Float32 numpy forward: list of bottom arrays -> list of top arrays."""
        raise NotImplementedError

    def run(self, bottoms, blobs, context):
        """Forward with the run's options (``RunContext``: compat mode, seeded generator, an
        array to reuse). Plain Caffe layers ignore them; Ristretto layers override this.
        ``bottoms`` is a list the runtime made for this call: a layer that changes a bottom in
        place (Ristretto's trim their inputs, in both builds) puts the new array at that index
        instead of writing into the given one, and the runtime rebinds the blob to it."""
        if self.layer_format is not None:
            from .formats import run_float
            return run_float(self, bottoms, blobs, context)
        if context.reuse is not None and hasattr(self, "forward_into"):
            return [self.forward_into(bottoms, blobs, context.reuse)]
        return self.forward(bottoms, blobs)

    def macs(self, bottom_shapes, top_shapes):
        """Multiply-accumulates of one forward pass at these shapes."""
        return 0

    def onnx_supported(self, compat="gpu"):
        """Whether ``export_onnx`` can express this layer under ``compat`` (else it runs in
        numpy after the ONNX session, with everything downstream of it)."""
        return self.onnx_exportable

    def export_onnx(self, graph, io):
        """Add this layer's ONNX nodes to ``graph`` (an ``OnnxGraph``) producing ``io.tops``."""
        raise UnsupportedError(f"{self.type_name} layers have no ONNX export", layer=self.name)


def normalize_axis(axis, ndim, layer_name, what="axis"):
    """Caffe's CanonicalAxisIndex: negative axes count from the end; out of range is an error."""
    if not -ndim <= axis < ndim:
        raise NetError(f"{what} {axis} out of range for a {ndim}-D blob", layer=layer_name)
    return axis % ndim


def as_f32(array):
    return np.asarray(array, dtype=np.float32)
