"""The cost model on a hand-computed net, and agreement with quantize's weight bytes."""
import numpy as np

from ristretto_py import Net
from ristretto_py.cli import info
from ristretto_py.passes.cost import cost_table, format_cost, layer_costs, with_param_widths
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


# -- formats on stock layers, packed widths, deployed bytes ---------------------------------------
def _q(bw_in, bw_out, bw_params):
    return (f'quantization_param {{ bw_layer_in: {bw_in} fl_layer_in: 2 bw_layer_out: {bw_out} '
            f'fl_layer_out: 2 bw_params: {bw_params} fl_params: 2 }}')


# data 1x4x4x4 = 64 values; every layer up to "sum" keeps 64 values, pool and prob 4x2x2 = 16.
FORMATS = (
    'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 4 dim: 4 dim: 4 } } }\n'
    'layer { name: "conv6" type: "ConvolutionRistretto" bottom: "data" top: "conv6" '
    f'convolution_param {{ num_output: 4 kernel_size: 1 }} {_q(8, 8, 6)} }}\n'
    'layer { name: "bn" type: "BatchNorm" bottom: "conv6" top: "bn" '
    f'batch_norm_param {{ use_global_stats: true }} {_q(8, 10, 12)} }}\n'
    'layer { name: "scale" type: "Scale" bottom: "bn" top: "scale" '
    f'scale_param {{ bias_term: true }} {_q(8, 8, 8)} }}\n'
    'layer { name: "conv3" type: "ConvolutionRistretto" bottom: "scale" top: "conv3" '
    f'convolution_param {{ num_output: 4 kernel_size: 1 }} {_q(8, 4, 3)} }}\n'
    'layer { name: "sum" type: "Eltwise" bottom: "conv3" bottom: "conv6" top: "sum" '
    f'eltwise_param {{ operation: SUM coeff: 1 coeff: -1 }} {_q(6, 7, 5)} }}\n'
    'layer { name: "pool" type: "Pooling" bottom: "sum" top: "pool" '
    f'pooling_param {{ pool: AVE kernel_size: 2 stride: 2 }} {_q(7, 5, 8)} }}\n'
    'layer { name: "prob" type: "Softmax" bottom: "pool" top: "prob" }\n')
FORMAT_BLOBS = {"conv6": [np.zeros((4, 4, 1, 1)), np.zeros(4)],
                "bn": [np.zeros(4), np.ones(4), np.ones(1)],
                "scale": [np.ones(4), np.zeros(4)],
                "conv3": [np.zeros((4, 4, 1, 1)), np.zeros(4)]}


def _format_rows(blobs=None):
    return {r.name: r for r in layer_costs(Net.from_proto(net_param(FORMATS, blobs)))}


def test_formatted_stock_layers_count_their_operands_and_widths():
    rows = _format_rows(FORMAT_BLOBS)
    # conv6: 16 weights + 4 biases at 6 bits = 120 bits = 15 B; reads 64 x 8 bits, writes 64 x 8
    assert (rows["conv6"].param_bytes, rows["conv6"].input_bytes, rows["conv6"].output_bytes) == (15, 64, 64)
    # bn: a and b per channel, 2 x 4 = 8 values (not the 4 + 4 + 1 stored) at 12 bits = 12 B;
    # reads 64 x 8 bits = 64 B, writes 64 x 10 bits = 80 B
    assert rows["bn"].param_values == {12: 8}
    assert (rows["bn"].param_bytes, rows["bn"].input_bytes, rows["bn"].output_bytes) == (12, 64, 80)
    # scale: scale and bias per channel, 4 + 4 = 8 values at 8 bits = 8 B; the 10-bit bn blob is
    # read aligned to 8 bits: 64 B; writes 64 x 8 bits = 64 B
    assert (rows["scale"].param_bytes, rows["scale"].input_bytes, rows["scale"].output_bytes) == (8, 64, 64)
    # conv3: (16 + 4) x 3 bits = 60 bits = 7.5 B packed; writes 64 x 4 bits = 32 B
    assert rows["conv3"].param_bytes == 7.5 and rows["conv3"].output_bytes == 32
    # sum: coefficients (1, -1) = 2 values x 5 bits = 1.25 B; both bottoms read at 6 bits:
    # 2 x 64 x 6 / 8 = 96 B; writes 64 x 7 bits = 56 B
    assert (rows["sum"].param_bytes, rows["sum"].input_bytes, rows["sum"].output_bytes) == (1.25, 96, 56)
    # pool (AVE): no operands; reads 64 x 7 bits = 56 B, writes 16 x 5 bits = 10 B
    assert (rows["pool"].param_bytes, rows["pool"].input_bytes, rows["pool"].output_bytes) == (0, 56, 10)
    # prob (no format): reads the 5-bit pool blob, 16 x 5 / 8 = 10 B; writes float32, 16 x 4 = 64 B
    assert (rows["prob"].input_bytes, rows["prob"].output_bytes) == (10, 64)
    assert rows["prob"].macs == 0 and rows["conv6"].macs == 4 * 16 * 4   # outputs x inputs x HW


def test_operand_counts_need_no_weights():
    with_weights, shapes_only = _format_rows(FORMAT_BLOBS), _format_rows()
    assert {n: r.param_bytes for n, r in with_weights.items()} == \
        {n: r.param_bytes for n, r in shapes_only.items()}


def test_totals_per_width_and_deployed_bytes():
    _, totals = cost_table(list(_format_rows(FORMAT_BLOBS).values()))
    # parameters: 15 + 12 + 8 + 7.5 + 1.25 = 43.75 B
    assert totals["param_bytes"] == 43.75
    assert [(w["bits"], w["values"], w["bytes"]) for w in totals["param_widths"]] == [
        (12, 8, 12), (8, 8, 8), (6, 20, 15), (5, 2, 1.25), (3, 20, 7.5)]
    # buffers: data 64 + prob 16 at 32 bits = 320 B; bn 64 x 10 = 80 B; conv6 and scale
    # 128 x 8 = 128 B; sum 64 x 7 = 56 B; pool 16 x 5 = 10 B; conv3 64 x 4 = 32 B
    assert [(w["bits"], w["values"], w["bytes"]) for w in totals["buffer_widths"]] == [
        (32, 80, 320), (10, 64, 80), (8, 128, 128), (7, 64, 56), (5, 16, 10), (4, 64, 32)]
    assert totals["buffer_bytes"] == 626                                # 320 + 80 + 128 + 56 + 10 + 32
    assert totals["deployed_bytes"] == 669.75                           # 43.75 + 626
    # traffic: reads 64 + 64 + 64 + 64 + 96 + 56 + 10 = 418, writes 256 (data) + 64 + 80 + 64
    # + 32 + 56 + 10 + 64 = 626
    assert totals["traffic_bytes"] == 418 + 626


def test_an_in_place_layer_writes_into_its_bottoms_buffer():
    text = ('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 8 } } }\n'
            f'layer {{ name: "relu" type: "ReLU" bottom: "data" top: "data" {_q(8, 12, 8)} }}\n')
    rows = layer_costs(Net.from_proto(net_param(text)))
    _, totals = cost_table(rows)
    # one buffer "data" of 8 values at the wider of float32 (Input) and 12 bits (relu): 32 B
    assert totals["buffer_widths"] == [{"bits": 32, "values": 8, "bytes": 32}]
    assert rows[1].input_bytes == 8 and rows[1].output_bytes == 12     # 8 x 8 / 8, 8 x 12 / 8


def test_format_cost_prints_the_widths_and_the_deployed_size():
    text = format_cost(*cost_table(layer_costs(Net.from_proto(net_param(FORMATS, FORMAT_BLOBS)))))
    assert "total: parameters 44 bytes, activation traffic 1,044 bytes" in text
    assert ("parameters by width: 12-bit 8 values = 12 bytes; 8-bit 8 values = 8 bytes; 6-bit 20 "
            "values = 15 bytes; 5-bit 2 values = 1.25 bytes; 3-bit 20 values = 7.5 bytes") in text
    assert "activation buffers by width: 32-bit 80 values = 320 bytes; 10-bit 64 values" in text
    assert "deployed: parameters 43.75 bytes + activation buffers 626 bytes = 669.75 bytes" in text


def test_overridden_parameters_keep_their_widths():
    table, _ = cost_table(layer_costs(Net.from_proto(net_param(TEXT))))
    # conv as 2-bit indices (108 weights) + 4 float biases + a 4-entry 8-bit codebook:
    # 216 + 128 + 32 = 376 bits = 47 B; fc stays (10 x 36 + 10) x 4 = 1,480 B
    table, totals = with_param_widths(table, {"conv": {2: 108, 32: 4, 8: 4}})
    assert totals["param_bytes"] == 47 + 1480
    assert totals["param_widths"][-1] == {"bits": 2, "values": 108, "bytes": 27}
