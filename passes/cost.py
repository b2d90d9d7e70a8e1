"""A cost model for any net at any precision (LPDNN-style), counting bytes as deployed: per
layer its parameter bytes (storage), the activation bytes it reads and writes (memory traffic
across layer boundaries), its multiply-accumulates and its share of each total.

Widths. A Ristretto layer (and ActivationQuantize, ConvolutionHWCE) takes the widths of its
``quantization_param``: weights and bias at ``storage_bits`` (the bias at its own ``bw_bias`` in
the ACCUMULATOR format, float32 beside power-of-two weights), one 8-bit shift per output channel
for per-channel weight lengths, input at ``bw_layer_in``, output at ``bw_layer_out`` (mini-float:
1 + exp + mantissa bits). A stock layer with a format of its own (``layers.formats``) stores the
operands it trims (``formats.operands``: Scale's scale and bias, BatchNorm's affine a and b, two
values per channel in place of its three stored blobs, ...) at ``bw_params``, reads every bottom
at ``bw_layer_in`` and writes at ``bw_layer_out``. Without a format, layers that only move or
select values (ReLU, MAX pooling, Concat, Split, Flatten, Reshape, Dropout, Permute, Slice, Crop)
keep their input's width; everything else is float32.

Packing. Every width is packed: a layer's values take ``sum(bits * count) / 8`` bytes, summed
per layer without rounding (a 3-bit layer of 5 weights is 1.875 bytes), so the totals are the
packed sizes whatever the widths.

Deployed size (the totals' ``deployed_bytes``): the parameters as stored plus one buffer per
blob name (the net's input included) at the widest width a layer writes into it; an in-place
layer writes into its bottom's buffer. The totals also list the values and bytes per width, of
the parameters (``param_widths``) and of those buffers (``buffer_widths``).
"""
import collections
import dataclasses

import numpy as np

from ristretto_py.precision import MINIFLOAT

FLOAT_BITS = 32
SHIFT_BITS = 8
PRESERVING = ("ReLU", "Concat", "Split", "Flatten", "Reshape", "Dropout", "Permute", "Slice", "Crop")
RISTRETTO = ("ConvolutionRistretto", "FcRistretto", "DeconvolutionRistretto")


@dataclasses.dataclass
class LayerCost:
    name: str
    type: str
    param_bytes: float
    input_bytes: float
    output_bytes: float
    macs: int
    param_values: dict = dataclasses.field(default_factory=dict)   # bits -> values stored
    buffers: dict = dataclasses.field(default_factory=dict)        # top -> (bits, values)


# -- widths -------------------------------------------------------------------------------
def _layer_format(impl):
    return getattr(impl, "layer_format", None)


def _activation_bits(precision, bits):
    return 1 + precision.exp_bits + precision.mant_bits if precision.precision == MINIFLOAT else bits


def _output_bits(layer, impl, input_bits):
    if _layer_format(impl) is not None:
        return _layer_format(impl).bw_layer_out
    if layer.type in RISTRETTO:
        return _activation_bits(impl.precision, impl.precision.bw_layer_out)
    if layer.type == "ActivationQuantize":
        return impl.bits
    if layer.type == "ConvolutionHWCE":
        return impl.bits["output"]
    if layer.type in PRESERVING or (layer.type == "Pooling" and impl.method == "MAX"):
        return max(input_bits) if input_bits else FLOAT_BITS
    return FLOAT_BITS


def _input_bits(layer, impl, input_bits):
    """The widths the layer reads its bottoms at: its own input format where it has one."""
    if _layer_format(impl) is not None:
        return [_layer_format(impl).bw_layer_in] * len(input_bits)
    if layer.type == "ConvolutionHWCE":
        return [impl.bits["input"]] * len(input_bits)
    if layer.type in RISTRETTO and impl.precision.trims_activations("gpu"):
        return [_activation_bits(impl.precision, impl.precision.bw_layer_in)] * len(input_bits)
    return input_bits


# -- parameters ---------------------------------------------------------------------------
def _param_bits(layer, impl, count):
    quantizer = getattr(impl, "weight_quantizer", None)
    if quantizer is not None:               # packed quantized weights, float bias
        return [quantizer.bits_per_weight] + [FLOAT_BITS] * (count - 1)
    if layer.type == "ConvolutionHWCE":      # quantclipped kernel, float bias
        return [impl.bits["kernel"]] + [FLOAT_BITS] * (count - 1)
    if layer.type not in RISTRETTO:
        return [FLOAT_BITS] * count
    weight_bits, bias_bits = impl.precision.storage_bits()
    return [weight_bits] + [bias_bits] * (count - 1)


def _extra_params(layer, impl):
    """(bits, values) stored beyond the blobs: one 8-bit shift per output channel of
    per-channel layers, the constant of a training-time weight quantizer (a float32 scale or an
    8-bit MSB); None without."""
    quantizer = getattr(impl, "weight_quantizer", None)
    if quantizer is not None:
        return (quantizer.constant_bits, 1) if quantizer.constant_bits else None
    if layer.type in RISTRETTO and impl.precision.per_channel:
        return SHIFT_BITS, impl.precision.shift_bits() // SHIFT_BITS
    return None


def _format_operand_values(layer, impl, bottom_shapes):
    """How many operands a formatted stock layer stores (counted on zeros of the expected
    shapes when the net has no weights)."""
    from ristretto_py.layers.formats import operands
    blobs = layer.blobs if len(layer.blobs) else \
        [np.zeros(shape, np.float32) for shape in impl.param_shapes(bottom_shapes)]
    return sum(int(np.size(op)) for op in operands(impl, blobs))


def _param_values(layer, impl, bottom_shapes):
    """bits -> number of parameter values the layer stores at that width."""
    values = collections.Counter()
    if _layer_format(impl) is not None:
        values[_layer_format(impl).bw_params] += _format_operand_values(layer, impl, bottom_shapes)
    else:
        shapes = impl.param_shapes(bottom_shapes)
        for shape, bits in zip(shapes, _param_bits(layer, impl, len(shapes))):
            values[bits] += int(np.prod(shape))
        extra = _extra_params(layer, impl)
        if extra is not None:
            values[extra[0]] += extra[1]
    return {bits: count for bits, count in values.items() if count}


def _packed_bytes(values):
    """Bytes of {bits: values} packed: total bits / 8 (the one rounding rule: none)."""
    return sum(bits * count for bits, count in values.items()) / 8


# -- per layer ----------------------------------------------------------------------------
def _layer_cost(net, layer, impl, blob_bits, shapes):
    bottom_shapes, top_shapes = net.layer_shapes(layer.name)
    held = [blob_bits.get(b, FLOAT_BITS) for b in layer.bottoms]
    out_bits = _output_bits(layer, impl, held)
    in_bits = _input_bits(layer, impl, held)
    params = _param_values(layer, impl, bottom_shapes)
    reads = sum(int(np.prod(shapes[b])) * bits for b, bits in zip(layer.bottoms, in_bits))
    buffers = {top: (out_bits, int(np.prod(shape))) for top, shape in zip(layer.tops, top_shapes)}
    writes = sum(bits * count for bits, count in buffers.values())
    macs = 0 if impl.is_source else int(impl.macs(bottom_shapes, top_shapes))
    return LayerCost(layer.name, layer.type, _packed_bytes(params), reads / 8, writes / 8, macs,
                     params, buffers)


def layer_costs(net):
    """LayerCost per layer (source layers included: they write the input)."""
    shapes = net.shapes()
    blob_bits, rows = {}, []
    for layer, impl in zip(net.layers, net.impls):
        row = _layer_cost(net, layer, impl, blob_bits, shapes)
        blob_bits.update({top: bits for top, (bits, _) in row.buffers.items()})
        rows.append(row)
    return rows


# -- tables and totals ----------------------------------------------------------------------
def _width_rows(values):
    """[{bits, values, bytes}] of {bits: values}, widest first."""
    return [{"bits": bits, "values": count, "bytes": bits * count / 8}
            for bits, count in sorted(values.items(), reverse=True)]


def _table_row(r):
    return {"layer": r.name, "type": r.type, "param_bytes": r.param_bytes,
            "input_bytes": r.input_bytes, "output_bytes": r.output_bytes, "macs": r.macs,
            "param_widths": _width_rows(r.param_values),
            "buffers": [{"blob": top, "bits": bits, "values": count}
                        for top, (bits, count) in r.buffers.items()]}


def _totals(table):
    """The totals of a table: bytes, traffic and MACs, and the deployed size (module docstring)."""
    params, buffers = collections.Counter(), {}
    for row in table:
        for width in row["param_widths"]:
            params[width["bits"]] += width["values"]
        for b in row["buffers"]:
            bits, count = buffers.get(b["blob"], (0, 0))
            buffers[b["blob"]] = (max(bits, b["bits"]), max(count, b["values"]))
    buffer_values = collections.Counter()
    for bits, count in buffers.values():
        buffer_values[bits] += count
    param_bytes = sum(r["param_bytes"] for r in table)
    buffer_bytes = _packed_bytes(buffer_values)
    return {"param_bytes": param_bytes,
            "traffic_bytes": sum(r["input_bytes"] + r["output_bytes"] for r in table),
            "macs": sum(r["macs"] for r in table),
            "param_widths": _width_rows(params), "buffer_widths": _width_rows(buffer_values),
            "buffer_bytes": buffer_bytes, "deployed_bytes": param_bytes + buffer_bytes}


def _with_shares(table, totals):
    def share(value, total):
        return value / total if total else 0.0
    for r in table:
        r["param_share"] = share(r["param_bytes"], totals["param_bytes"])
        r["traffic_share"] = share(r["input_bytes"] + r["output_bytes"], totals["traffic_bytes"])
        r["mac_share"] = share(r["macs"], totals["macs"])
    return table, totals


def cost_table(rows):
    """Rows of dicts with the shares of each layer, plus the totals."""
    table = [_table_row(r) for r in rows]
    return _with_shares(table, _totals(table))


def _bytes(value):
    """Bytes for the summary lines: whole bytes as integers, packed fractions exactly."""
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.3f}".rstrip("0")


def _widths_line(widths):
    return "; ".join(f"{w['bits']}-bit {w['values']:,} values = {_bytes(w['bytes'])} bytes"
                     for w in widths) or "none"


def deployed_lines(totals):
    """The per-width summary and the deployed size, one line each (module docstring)."""
    return [f"parameters by width: {_widths_line(totals['param_widths'])}",
            f"activation buffers by width: {_widths_line(totals['buffer_widths'])}",
            f"deployed: parameters {_bytes(totals['param_bytes'])} bytes + activation buffers "
            f"{_bytes(totals['buffer_bytes'])} bytes = {_bytes(totals['deployed_bytes'])} bytes"]


def format_cost(table, totals):
    header = f"{'layer':24s} {'type':22s} {'param B':>12s} {'in B':>12s} {'out B':>12s} {'MACs':>14s} {'params':>7s} {'traffic':>8s} {'MACs':>6s}"
    lines = [header, "-" * len(header)]
    for r in table:
        lines.append(f"{r['layer'][:24]:24s} {r['type'][:22]:22s} {r['param_bytes']:12,.0f} "
                     f"{r['input_bytes']:12,.0f} {r['output_bytes']:12,.0f} {r['macs']:14,d} "
                     f"{r['param_share']:7.1%} {r['traffic_share']:8.1%} {r['mac_share']:6.1%}")
    lines.append("-" * len(header))
    lines.append(f"total: parameters {totals['param_bytes']:,.0f} bytes, activation traffic "
                 f"{totals['traffic_bytes']:,.0f} bytes, {totals['macs']:,d} MACs")
    return "\n".join(lines + deployed_lines(totals))


def with_param_widths(table, overrides):
    """The cost table with some layers' parameters replaced by {bits: values} (e.g. k-means
    codebooks and indices, which layer precisions do not describe); shares and totals
    recomputed."""
    table = [dict(row) for row in table]
    for row in table:
        if row["layer"] in overrides:
            values = overrides[row["layer"]]
            row["param_widths"] = _width_rows({b: n for b, n in values.items() if n})
            row["param_bytes"] = _packed_bytes(values)
    return _with_shares(table, _totals(table))


def clustered_cost(net, clusters, codebook_bits):
    """The cost model of a k-means clustered net: each clustered layer stores log2(K)-bit
    indices, float32 biases, and its codebook (counted once, with its first layer)."""
    overrides, counted = {}, set()
    for cluster in clusters:
        for name, indices in cluster.indices.items():
            values = collections.Counter({int(np.log2(cluster.k)): int(indices.size)})
            values[FLOAT_BITS] += sum(int(np.size(b)) for b in net.layer(name).blobs[1:])
            if cluster.name not in counted:
                values[codebook_bits] += cluster.k
                counted.add(cluster.name)
            overrides[name] = values
    table, totals = with_param_widths(cost_table(layer_costs(net))[0], overrides)
    return {"layers": table, "totals": totals}


def net_cost(net):
    """The cost model of a built net as a JSON-ready dict: per-layer rows and totals."""
    table, totals = cost_table(layer_costs(net))
    return {"layers": table, "totals": totals}
