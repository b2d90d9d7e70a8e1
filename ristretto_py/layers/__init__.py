"""Caffe layer types, one module per family; importing this package registers them all."""
from . import activation, sources  # noqa: F401
from . import conv, pooling  # noqa: F401
from . import normalization, elementwise, shape, loss  # noqa: F401
from . import ssd  # noqa: F401
from . import quantize  # noqa: F401
from . import hwce  # noqa: F401  (after conv: subclasses Convolution)
from . import ristretto  # noqa: F401  (after conv: subclasses its layers)
from .base import LayerImpl, known_types, register  # noqa: F401
