"""ristretto-py: read, run, transform and quantize Caffe/Ristretto models in Python."""
from . import layers  # noqa: F401  (registers every layer type)
from .errors import (FormatError, NetError, ResourceError, RistrettoError, RistrettoWarning,
                     UnsupportedError)
from .net import Layer, Net, load

__version__ = "0.1.0"
__all__ = ["Net", "Layer", "load", "RistrettoError", "FormatError", "NetError",
           "UnsupportedError", "ResourceError", "RistrettoWarning"]
