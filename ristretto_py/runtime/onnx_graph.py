"""A small builder for ONNX graphs, used by the layers' ``export_onnx`` methods."""
import itertools

import ml_dtypes
import numpy as np
import onnx
from onnx import helper, numpy_helper

OPSET = 17
_INTEGER_DTYPES = {onnx.TensorProto.INT4: ml_dtypes.int4, onnx.TensorProto.UINT4: ml_dtypes.uint4,
                   onnx.TensorProto.INT8: np.int8, onnx.TensorProto.UINT8: np.uint8,
                   onnx.TensorProto.INT16: np.int16, onnx.TensorProto.UINT16: np.uint16,
                   onnx.TensorProto.INT32: np.int32}


class OnnxGraph:
    """Collects nodes and initializers; hands out unique value names."""

    def __init__(self, shapes=None):
        self.nodes = []
        self.initializers = []
        self._used = set()
        self._counter = itertools.count()
        self.shapes = shapes or {}   # ONNX value name -> static shape (batch as exported)
        self.domains = []            # extra opset imports (custom domains, e.g. QONNX's)
        # value name -> (bit width, fractional length) of values a quantized export knows to be
        # on a fixed-point grid (a DequantizeLinear's output, or an Identity of one)
        self.formats = {}
        self.integers = {}           # DequantizeLinear output -> (its integer input, scale, zero)
        self.opset = OPSET           # raised by nodes that need a later one (QDQ's types)

    def reserve(self, name):
        self._used.add(name)
        return name

    def unique(self, hint):
        name = hint
        while name in self._used:
            name = f"{hint}_{next(self._counter)}"
        self._used.add(name)
        return name

    def constant(self, array, hint="const", dtype=np.float32):
        """Add ``array`` as an initializer; return its value name."""
        name = self.unique(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(array, dtype=dtype), name))
        return name

    def typed_constant(self, values, onnx_type, hint="const"):
        """An integer initializer of ONNX element type ``onnx_type`` (INT4/UINT4 through
        ml_dtypes, packed two to a byte) from integer ``values``, stored as raw bytes; return
        its value name."""
        name = self.unique(hint)
        dtype = _INTEGER_DTYPES[onnx_type]
        values = np.asarray(values)
        info = ml_dtypes.iinfo(dtype)
        if values.size and (values.min() < info.min or values.max() > info.max):
            raise ValueError(f"{hint}: values outside {np.dtype(dtype).name}")
        self.initializers.append(numpy_helper.from_array(values.astype(dtype), name))
        return name

    def scalar(self, value, dtype=np.float32):
        return self.constant(np.asarray(value, dtype=dtype), "scalar", dtype)

    def ints(self, values, hint="ints"):
        return self.constant(np.asarray(values, dtype=np.int64), hint, np.int64)

    def node(self, op_type, inputs, outputs=None, domain=None, **attrs):
        """Add a node (of the custom opset ``domain`` if given); ``outputs`` defaults to one
        fresh name. Returns the output names."""
        if outputs is None:
            outputs = [self.unique(op_type.lower())]
        elif isinstance(outputs, int):
            outputs = [self.unique(op_type.lower()) for _ in range(outputs)]
        outputs = list(outputs)
        if op_type == "Identity" and inputs[0] in self.formats:
            self.formats[outputs[0]] = self.formats[inputs[0]]
            if inputs[0] in self.integers:
                self.integers[outputs[0]] = self.integers[inputs[0]]
        self.nodes.append(helper.make_node(op_type, list(inputs), outputs,
                                           name=self.unique("n_" + op_type), domain=domain,
                                           **attrs))
        return outputs

    def _live(self, wanted):
        """The nodes (in order) and initializers the ``wanted`` values depend on: a value a
        quantized export computed and then bypassed (a DequantizeLinear whose integers the next
        layer read instead) is left out of the file."""
        needed, nodes = set(wanted), []
        for node in reversed(self.nodes):
            if any(out in needed for out in node.output):
                nodes.append(node)
                needed.update(node.input)
        initializers = [t for t in self.initializers if t.name in needed]
        return nodes[::-1], initializers

    def build(self, inputs, outputs, name="ristretto_py", opset=OPSET):
        """``inputs``/``outputs``: lists of (name, shape) with None for a dynamic dim."""
        def info(entry):
            value_name, shape = entry
            dims = [d if d is not None else "N" for d in shape] if shape is not None else None
            return helper.make_tensor_value_info(value_name, onnx.TensorProto.FLOAT, dims)
        nodes, initializers = self._live([o[0] for o in outputs])
        graph = helper.make_graph(nodes, name, [info(i) for i in inputs],
                                  [info(o) for o in outputs], initializers)
        model = helper.make_model(graph, producer_name="ristretto-py",
                                  opset_imports=[helper.make_opsetid("", opset)] + self.domains)
        model.ir_version = min(model.ir_version, 8 if opset <= 17 else 10)
        return model
