"""Caffe layer types, one module per family; importing this package registers them all."""
from . import activation, sources  # noqa: F401
from . import ssd  # noqa: F401
from .base import LayerImpl, known_types, register  # noqa: F401
