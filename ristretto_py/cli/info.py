"""``tools/info``: a table of a net's layers (type, output shapes, parameters, multiply-
accumulates) and its totals; the shapes come from the prototxt, so weights are optional."""
from dataclasses import dataclass

import numpy as np

from ..errors import NetError
from ..net import Net
from .common import add_model_arguments, format_count, format_shape, make_parser, run
from .flag_types import input_shape

PROG = "info"
BYTES_PER_PARAM = 4  # float32


@dataclass
class LayerRow:
    name: str
    type: str
    top_shapes: list
    params: int
    macs: int


@dataclass
class NetSummary:
    rows: list
    params: int
    macs: int

    @property
    def param_bytes(self):
        return self.params * BYTES_PER_PARAM


def summarize(net):
    """Per-layer parameter and MAC counts of ``net`` at its current input shapes."""
    rows = []
    for layer, impl in zip(net.layers, net.impls):
        bottom_shapes, top_shapes = net.layer_shapes(layer.name)
        params = sum(int(np.prod(shape, dtype=np.int64)) for shape in impl.param_shapes(bottom_shapes))
        macs = 0 if impl.is_source else int(impl.macs(bottom_shapes, top_shapes))
        rows.append(LayerRow(layer.name, layer.type, list(top_shapes), params, macs))
    return NetSummary(rows, sum(r.params for r in rows), sum(r.macs for r in rows))


def format_table(summary):
    header = ("layer", "type", "output shape(s)", "params", "MACs")
    lines = [(r.name, r.type, ", ".join(format_shape(s) for s in r.top_shapes),
              f"{r.params:,}", f"{r.macs:,}") for r in summary.rows]
    widths = [max(len(row[i]) for row in [header] + lines) for i in range(len(header))]

    def render(row):
        left = [cell.ljust(width) for cell, width in zip(row[:3], widths[:3])]
        right = [cell.rjust(width) for cell, width in zip(row[3:], widths[3:])]
        return "  ".join(left + right).rstrip()
    rule = "  ".join("-" * width for width in widths)
    return "\n".join([render(header), rule] + [render(row) for row in lines] + [rule])


def build_parser():
    parser = make_parser(PROG, __doc__)
    add_model_arguments(parser, weights_required=False)
    parser.add_argument("--input_shape", type=input_shape, action="append", default=[],
                        metavar="BLOB=N,C,H,W",
                        help="count at another input shape (repeat for several inputs)")
    parser.add_argument("--cost", action="store_true",
                        help="also print the cost model: parameter bytes and activation traffic "
                             "at the layers' precisions, MACs, and each layer's share")
    return parser


def info_main(argv):
    args = build_parser().parse_args(argv)
    net = Net.load(args.model, args.weights, input_shapes=dict(args.input_shape))
    unknown = [name for name, _ in args.input_shape if name not in net.input_blobs]
    if unknown:
        raise NetError(f"--input-shape names {', '.join(unknown)}, not an input blob of the net "
                       f"(those are {', '.join(net.input_blobs) or 'none'})", path=net.source)
    summary = summarize(net)
    shapes = net.shapes()
    inputs = ", ".join(f"{b} {format_shape(shapes[b])}" for b in net.input_blobs)
    print(f"net {net.name or '(unnamed)'}: {len(net.layers)} layers; input {inputs or '(none)'}"
          + ("; weights loaded" if args.weights else ""))
    print(format_table(summary))
    print(f"total params: {format_count(summary.params)}")
    print(f"total MACs: {format_count(summary.macs)}")
    print(f"parameter bytes (float32): {format_count(summary.param_bytes)}")
    if args.cost:
        from ..passes.cost import cost_table, format_cost, layer_costs
        print()
        print("cost model (bytes as deployed: values packed at each layer's widths):")
        print(format_cost(*cost_table(layer_costs(net))))
    return 0


def main(argv=None, prog=PROG):
    return run(info_main, argv, prog=prog)


if __name__ == "__main__":
    raise SystemExit(main())
