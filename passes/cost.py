"""A cost model for any net at any precision (LPDNN-style): per layer the parameter bytes
(storage), the activation bytes it reads and writes (memory traffic across layer boundaries),
its multiply-accumulates, and each layer's share of the totals.

Bit widths come from the Ristretto layers' ``quantization_param`` (and ActivationQuantize and
ConvolutionHWCE layers): a Ristretto layer's weights and bias take ``storage_bits`` (the bias its
own ``bw_bias`` in the ACCUMULATOR format, float32 for power-of-two weights), per-channel weight
lengths add one 8-bit shift per output channel, its output takes ``bw_layer_out`` (mini-float:
1 + exp + mantissa bits);
layers that only move or select values (ReLU, MAX pooling, Concat, Split, Flatten, Reshape,
Dropout, Permute, Slice, Crop) keep their input's width; everything else is float32.
"""
import dataclasses

import numpy as np

from ristretto_py.precision import MINIFLOAT

FLOAT_BITS = 32
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


def _output_bits(layer, impl, input_bits):
    if layer.type in RISTRETTO:
        p = impl.precision
        if p.precision == MINIFLOAT:
            return 1 + p.exp_bits + p.mant_bits
        return p.bw_layer_out
    if layer.type == "ActivationQuantize":
        return impl.bits
    if layer.type == "ConvolutionHWCE":
        return impl.bits["output"]
    if layer.type in PRESERVING or (layer.type == "Pooling" and impl.method == "MAX"):
        return max(input_bits) if input_bits else FLOAT_BITS
    return FLOAT_BITS


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


def _extra_param_bits(layer, impl):
    """Parameter storage beyond the blobs: one shift per output channel of per-channel layers,
    the constants of a training-time weight quantizer (its scale or MSB)."""
    quantizer = getattr(impl, "weight_quantizer", None)
    if quantizer is not None:
        return quantizer.constant_bits
    return impl.precision.shift_bits() if layer.type in RISTRETTO else 0


def layer_costs(net):
    """LayerCost per layer (source layers included: they write the input)."""
    shapes = net.shapes()
    blob_bits, rows = {}, []
    for layer, impl in zip(net.layers, net.impls):
        bottom_shapes, top_shapes = net.layer_shapes(layer.name)
        in_bits = [blob_bits.get(b, FLOAT_BITS) for b in layer.bottoms]
        out_bits = _output_bits(layer, impl, in_bits)
        if layer.type == "ConvolutionHWCE":
            in_bits = [impl.bits["input"]] * len(in_bits)
        elif layer.type in RISTRETTO and impl.precision.trims_activations("gpu"):
            in_bits = [1 + impl.precision.exp_bits + impl.precision.mant_bits
                       if impl.precision.precision == MINIFLOAT else impl.precision.bw_layer_in] * len(in_bits)
        param_shapes = impl.param_shapes(bottom_shapes)
        params = sum(int(np.prod(shape)) * bits for shape, bits in
                     zip(param_shapes, _param_bits(layer, impl, len(param_shapes))))
        params += _extra_param_bits(layer, impl)
        reads = sum(int(np.prod(shapes[b])) * bits for b, bits in zip(layer.bottoms, in_bits))
        writes = sum(int(np.prod(s)) * out_bits for s in top_shapes)
        for top in layer.tops:
            blob_bits[top] = out_bits
        macs = 0 if impl.is_source else int(impl.macs(bottom_shapes, top_shapes))
        rows.append(LayerCost(layer.name, layer.type, params / 8, reads / 8, writes / 8, macs))
    return rows


def cost_table(rows):
    """Rows of dicts with the shares of each layer, plus the totals."""
    totals = {"param_bytes": sum(r.param_bytes for r in rows),
              "traffic_bytes": sum(r.input_bytes + r.output_bytes for r in rows),
              "macs": sum(r.macs for r in rows)}

    def share(value, total):
        return value / total if total else 0.0
    table = [{"layer": r.name, "type": r.type, "param_bytes": r.param_bytes,
              "input_bytes": r.input_bytes, "output_bytes": r.output_bytes, "macs": r.macs,
              "param_share": share(r.param_bytes, totals["param_bytes"]),
              "traffic_share": share(r.input_bytes + r.output_bytes, totals["traffic_bytes"]),
              "mac_share": share(r.macs, totals["macs"])} for r in rows]
    return table, totals


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
    return "\n".join(lines)


def with_param_bytes(table, overrides):
    """The cost table with some layers' parameter bytes replaced (e.g. k-means codebooks and
    indices, which layer precisions do not describe); shares and totals recomputed."""
    table = [dict(row, param_bytes=overrides.get(row["layer"], row["param_bytes"])) for row in table]
    total = sum(row["param_bytes"] for row in table)
    for row in table:
        row["param_share"] = row["param_bytes"] / total if total else 0.0
    totals = {"param_bytes": total,
              "traffic_bytes": sum(r["input_bytes"] + r["output_bytes"] for r in table),
              "macs": sum(r["macs"] for r in table)}
    return table, totals


def clustered_cost(net, clusters, codebook_bits):
    """The cost model of a k-means clustered net: each clustered layer stores log2(K)-bit
    indices, float32 biases, and its codebook (counted once, with its first layer)."""
    overrides, counted = {}, set()
    for cluster in clusters:
        for name, indices in cluster.indices.items():
            layer = net.layer(name)
            bits = indices.size * int(np.log2(cluster.k)) + sum(np.size(b) for b in layer.blobs[1:]) * FLOAT_BITS
            if cluster.name not in counted:
                bits += cluster.k * codebook_bits
                counted.add(cluster.name)
            overrides[name] = bits / 8
    table, _ = cost_table(layer_costs(net))
    table, totals = with_param_bytes(table, overrides)
    return {"layers": table, "totals": totals}


def net_cost(net):
    """The cost model of a built net as a JSON-ready dict: per-layer rows and totals."""
    table, totals = cost_table(layer_costs(net))
    return {"layers": table, "totals": totals}
