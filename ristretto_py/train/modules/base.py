"""The registry of torch layer modules, by Caffe type name, and what they share.

A ``TorchLayer`` is the trainable twin of one layer of a ``Net``: it keeps the numpy
``LayerImpl`` of that layer (parsed parameters, shape rules) and computes its forward with torch
ops, so autograd gives Caffe's backward. ``@register`` makes a class the module of its
``type_name`` (and ``aliases``), as ``layers.base.register`` does for the numpy layers; the model
builds one per layer with ``build``. Types without a torch module of their own run their numpy
forward with no gradient (``NumpyForward``: PriorBox, DetectionOutput, ArgMax).

Rounding to Ristretto's formats stays in ``numerics``/``precision``: a module calls them on
detached numpy copies and joins the result to the graph with ``straight_through`` (the value of
the trimmed tensor, the gradient of the untrimmed one).
"""
import dataclasses

import numpy as np
import torch

from ...errors import NetError, UnsupportedError
from ...layers.base import RunContext
from ...protos import caffe_pb2

_REGISTRY = {}


def register(cls):
    """Class decorator: make ``cls`` the torch module of ``cls.type_name`` (and aliases)."""
    for name in (cls.type_name, *cls.aliases):
        if name in _REGISTRY:
            raise RuntimeError(f"torch layer type {name!r} registered twice")
        _REGISTRY[name] = cls
    return cls


def module_class(layer_type, impl=None):
    """The module class of ``layer_type``: its own, a source pass-through for data layers, or
    the no-gradient numpy fallback."""
    cls = _REGISTRY.get(layer_type)
    if cls is not None:
        return cls
    if impl is not None and impl.is_source:
        return _REGISTRY["Input"]
    return NumpyForward


def trainable_types():
    """Caffe types with a torch forward of their own (autograd gives their backward)."""
    return sorted(name for name, cls in _REGISTRY.items() if cls.differentiable)


@dataclasses.dataclass
class TrainContext:
    """What every module of one ``TorchNet`` reads at run time: the phase (``set_phase``
    changes it), the Ristretto build (``compat``), the numpy generator of stochastic rounding
    (drawn in the numpy runtime's order), the torch generator of Dropout, and the device."""
    phase: str = "TRAIN"
    compat: str = "gpu"
    rng: object = None
    generator: object = None
    device: object = "cpu"
    quantize_activations: bool = False   # --qat activations: Ristretto layers trim in TRAIN too
    frozen_batch_norm: bool = False      # --frozen_bn: BatchNorm uses its stored statistics

    def run_context(self):
        return RunContext(self.compat, self.rng)


class _StraightThrough(torch.autograd.Function):
    """Forward: ``value`` exactly. Backward: the gradient passes to ``x`` unchanged."""

    @staticmethod
    def forward(ctx, x, value):
        return value

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def straight_through(x, value):
    """``value`` (a trimmed copy of ``x``) in the forward pass; in the backward pass, the
    identity to ``x``. Exact, unlike ``x + (value - x).detach()``, which may round."""
    value = torch.as_tensor(value).to(device=x.device, dtype=x.dtype)
    if not x.requires_grad:
        return value
    return _StraightThrough.apply(x, value)


class _SaturatingStraightThrough(torch.autograd.Function):
    """Forward: ``value`` exactly. Backward: the gradient passes to ``x`` where ``low <= x <=
    high`` and is zero where the format saturated it."""

    @staticmethod
    def forward(ctx, x, value, low, high):
        ctx.save_for_backward((x >= low) & (x <= high))
        return value

    @staticmethod
    def backward(ctx, grad):
        inside, = ctx.saved_tensors
        return grad * inside.to(grad.dtype), None, None, None


def saturating_straight_through(x, value, bounds):
    """``value`` (``x`` trimmed to a format whose range is ``bounds`` = (low, high)) in the
    forward pass; in the backward pass the identity inside the range and zero outside it (the
    straight-through estimator of quantization-aware training). ``bounds`` None: no range."""
    if bounds is None:
        return straight_through(x, value)
    value = torch.as_tensor(value).to(device=x.device, dtype=x.dtype)
    if not x.requires_grad:
        return value
    low, high = (float(b) for b in bounds)
    return _SaturatingStraightThrough.apply(x, value, low, high)


def to_numpy(tensor):
    """A float32 numpy copy of a tensor (detached, on the CPU)."""
    return np.asarray(tensor.detach().cpu().numpy(), dtype=np.float32)


def constant_filler(value):
    return caffe_pb2.FillerParameter(type="constant", value=value)


class TorchLayer(torch.nn.Module):
    """One Caffe layer as a torch module. ``forward(bottoms)`` takes the list of bottom tensors
    and returns the list of tops. A module that changes a bottom in place (Ristretto's layers
    trim their inputs in the TEST phase) puts the new tensor at that index of the list, and the
    model rebinds the blob, as the numpy runtime does."""

    type_name = ""
    aliases = ()
    differentiable = True   # a torch forward: autograd gives its backward
    has_blobs = False       # the type keeps blobs (weights, slopes, statistics)

    def __init__(self, impl, context):
        super().__init__()
        self.impl = impl
        self.layer_name = impl.name
        self.spec = impl.spec
        self.context = context
        self.blobs = torch.nn.ParameterList()
        self.blob_shapes = []
        self.setup()

    def setup(self):
        """Read what the torch forward needs from ``self.impl``/``self.spec``."""

    @classmethod
    def fillers(cls, spec, count):
        """The FillerParameter of each of ``count`` blobs, Caffe's defaults where the prototxt
        gives none (constant 0 unless the type says otherwise)."""
        return [constant_filler(0.0) for _ in range(count)]

    @classmethod
    def statistics_blobs(cls, spec):
        """Indices of blobs that are running statistics (updated by the forward pass, never by
        the solver): BatchNorm's three."""
        return ()

    def set_blobs(self, parameters, shapes):
        self.blobs = torch.nn.ParameterList(parameters)
        self.blob_shapes = [tuple(int(d) for d in s) for s in shapes]

    def blob(self, index):
        """Blob ``index`` in this layer's own shape (a blob shared PERMISSIVE-ly may be stored in
        its owner's shape)."""
        value = self.blobs[index]
        shape = self.blob_shapes[index]
        return value if tuple(value.shape) == shape else value.reshape(shape)

    @property
    def phase(self):
        return self.context.phase

    def error(self, message):
        return NetError(message, layer=self.layer_name)

    def extra_repr(self):
        return f"{self.layer_name!r}"


@register
class Source(TorchLayer):
    """Input, Data, ImageData, MemoryData, DummyData: their tops are fed by the caller; the
    model hands them through."""
    type_name = "Input"
    aliases = ("Data", "ImageData", "MemoryData", "DummyData")

    def forward(self, bottoms):
        return list(bottoms)


class NumpyForward(TorchLayer):
    """A layer computed by its numpy forward (with the run's compat and generator), the result
    on the model's device, no gradient: for outputs that are not trained through (PriorBox's
    boxes depend only on shapes; DetectionOutput's NMS, ArgMax's indices)."""
    differentiable = False

    def forward(self, bottoms):
        arrays = [to_numpy(b) for b in bottoms]
        blobs = [to_numpy(self.blob(i)) for i in range(len(self.blobs))]
        try:
            tops = self.impl.run(arrays, blobs, self.context.run_context())
        except NetError as exc:
            raise exc.with_context(layer=self.layer_name)
        if not bottoms:
            dtype = torch.get_default_dtype()
        else:
            dtype = bottoms[0].dtype
        return [torch.as_tensor(np.asarray(t)).to(device=self.context.device, dtype=dtype)
                for t in tops]


def unsupported(layer_name, message):
    return UnsupportedError(message, layer=layer_name)
