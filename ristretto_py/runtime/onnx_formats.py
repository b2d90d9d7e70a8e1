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
    raw = [graph.unique(f"{top}@float") for top in io.tops]
    if not formats.onnx_operation(impl, graph, bottoms, ops, raw, io.bottom_shapes):
        impl.export_onnx(graph, dataclasses.replace(io, bottoms=bottoms, tops=raw,
                                                    blobs=formats.float_operation_blobs(impl, ops)))
    for value, top in zip(raw, io.tops):
        trimmed = onnx_trim.trim(graph, value, p.bw_layer_out, p.fl_layer_out, io.extra)
        graph.node("Identity", [trimmed], [top])
