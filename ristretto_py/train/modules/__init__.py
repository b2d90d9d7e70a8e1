"""One torch module per Caffe layer type, one file per family as in ``ristretto_py.layers``;
importing this package registers them all (``base.register``, looked up by ``module_class``).
Fillers for blobs a net does not carry are in ``fillers``."""
from . import base, activation, conv, pooling  # noqa: F401
from . import normalization, elementwise, shape, loss, ssd  # noqa: F401
from . import quantize, hwce, ristretto  # noqa: F401  (after conv: subclass its modules)
from .base import TorchLayer, TrainContext, module_class, register, trainable_types  # noqa: F401
