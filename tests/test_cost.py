"""The cost model on a hand-computed net, and agreement with quantize's weight bytes."""
import numpy as np

from ristretto_py import Net
from ristretto_py.cli import info
from ristretto_py.passes.cost import cost_table, layer_costs
from conftest import net_param, write_model

TEXT = ('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }\n'
        'layer { name: "conv" type: "ConvolutionRistretto" bottom: "data" top: "conv" '
        'convolution_param { num_output: 4 kernel_size: 3 } quantization_param { bw_layer_in: 8 '
        'fl_layer_in: 4 bw_layer_out: 6 fl_layer_out: 2 bw_params: 4 fl_params: 3 } }\n'
        'layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }\n'
        'layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n'
        'layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc" inner_product_param { num_output: 10 } }\n')


def test_hand_computed_costs():
    rows = {r.name: r for r in layer_costs(Net.from_proto(net_param(TEXT)))}
    conv = rows["conv"]
    assert conv.param_bytes == (4 * 3 * 9 + 4) * 4 / 8          # 4-bit weights and bias
    assert conv.input_bytes == 3 * 64 * 8 / 8                   # read at 8 bits
    assert conv.output_bytes == 4 * 36 * 6 / 8                  # written at 6 bits
    assert conv.macs == 4 * 36 * 27
    assert rows["relu"].input_bytes == rows["relu"].output_bytes == 4 * 36 * 6 / 8
    assert rows["pool"].output_bytes == 4 * 9 * 6 / 8           # MAX pooling keeps 6 bits
    fc = rows["fc"]
    assert fc.input_bytes == 36 * 6 / 8 and fc.output_bytes == 10 * 4
    assert fc.param_bytes == (10 * 36 + 10) * 4 and fc.macs == 360
    table, totals = cost_table(list(rows.values()))
    assert abs(sum(r["mac_share"] for r in table) - 1) < 1e-12
    assert totals["param_bytes"] == conv.param_bytes + fc.param_bytes


def test_info_prints_the_cost_model(tmp_path, capsys):
    model, weights = write_model(tmp_path, TEXT, {"conv": [np.zeros((4, 3, 3, 3)), np.zeros(4)],
                                                  "fc": [np.zeros((10, 36)), np.zeros(10)]})
    assert info.main(["--model", str(model), "--weights", str(weights), "--cost"]) == 0
    out = capsys.readouterr().out
    assert "cost model" in out and "total: parameters 1,536 bytes" in out     # 56 + 1,480
