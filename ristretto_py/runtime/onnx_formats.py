"""The ONNX form of a stock layer with a dynamic-fixed-point format (``layers.formats``):
its bottoms trimmed (aligned) to the input format, the float operation on trimmed operands,
the result trimmed to the output format, every trimming in the export's form (the float chain,
QDQ or QONNX; ``onnx_trim.trim``). The operands of these layers are a few values per channel:
they stay float32 constants holding the exact trimmed values."""
import dataclasses

from ..layers import formats
from . import onnx_trim


def export_formatted(impl, graph, io):
    p = impl.layer_format
    bottoms = [onnx_trim.trim(graph, b, p.bw_layer_in, p.fl_layer_in, io.extra) for b in io.bottoms]
    ops = formats.trimmed_operands(impl, io.blobs, io.extra.get("compat", "gpu"))
    relu = integer_relu(impl, graph, bottoms, io.extra)
    if relu is not None:                     # computed on the integers, in the input's format
        raw = [relu]
    else:
        raw = [graph.unique(f"{top}@float") for top in io.tops]
    if relu is None and not formats.onnx_operation(impl, graph, bottoms, ops, raw, io.bottom_shapes):
        impl.export_onnx(graph, dataclasses.replace(io, bottoms=bottoms, tops=raw,
                                                    blobs=formats.float_operation_blobs(impl, ops)))
    for value, top in zip(raw, io.tops):
        trimmed = onnx_trim.trim(graph, value, p.bw_layer_out, p.fl_layer_out, io.extra)
        graph.node("Identity", [trimmed], [top])


def integer_relu(impl, graph, bottoms, extra):
    """A plain ReLU (no slope) on a QDQ value, as ``onnx_trim.integer_relu`` computes it on the
    integers (QDQ only: onnxruntime then keeps the tensor in 8 bits); None otherwise."""
    if extra.get("quantized") != "qdq" or impl.type_name != "ReLU" or impl.negative_slope != 0:
        return None
    return onnx_trim.integer_relu(graph, bottoms[0])
