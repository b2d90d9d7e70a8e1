"""Runtimes that execute a Net: the numpy reference and the onnxruntime backend."""
from .. import memory_budget
from .fixed_backend import FixedRuntime
from .numpy_backend import NumpyRuntime
from .onnx_backend import OnnxRuntime

BACKENDS = {"numpy": NumpyRuntime, "onnxruntime": OnnxRuntime, "fixed": FixedRuntime}


def make_runtime(net, backend="numpy", **options):
    """A runtime for ``net`` by backend name (numpy | onnxruntime | fixed); refused up front
    when one forward pass at the net's shapes would not fit the memory limit."""
    try:
        cls = BACKENDS[backend]
    except KeyError:
        raise ValueError(f"unknown backend {backend!r}; choose from {sorted(BACKENDS)}") from None
    memory_budget.check_forward(net)
    return cls(net, **options)


__all__ = ["NumpyRuntime", "OnnxRuntime", "FixedRuntime", "make_runtime", "BACKENDS"]
