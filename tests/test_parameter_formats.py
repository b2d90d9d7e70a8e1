"""``ristretto_edit.parameter_formats``: the per-channel weight maxima and integer lengths of the
range analysis, and the fields the post-pass writes for the bias format and per-channel weights
(hand-worked lengths), including the accumulator bias that widens where 32 bits cannot hold it."""
import numpy as np
import pytest

from ristretto_py import Net, caffe_io
from ristretto_py.errors import NetError
from ristretto_py.layers.base import RunContext
from ristretto_py.passes import ranges, ristretto_edit
from ristretto_py.protos import caffe_pb2

from conftest import net_param
from test_bias_per_channel import INPUT, _dims


RANGED = (INPUT % _dims(1, 2, 3, 3) +
          'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" '
          'convolution_param { num_output: 3 kernel_size: 1 } }\n'
          'layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc" '
          'inner_product_param { num_output: 2 transpose: true } }\n')
RANGED_BLOBS = {"conv": [np.array([0.5, -0.25, 0.0, 0.0, 0.006, -0.003]).reshape(3, 2, 1, 1),
                         np.array([1.08, 0.0, -0.1])],
                "fc": [np.array([[0.3, -0.02]] * 26 + [[-0.7, 0.01]]), np.array([0.2, 0.0])]}


def _ranged():
    net = Net.from_proto(net_param(RANGED, RANGED_BLOBS))
    return ranges.analyze_ranges(net, [{"data": np.ones((1, 2, 3, 3), np.float32)}])


def test_ranges_hold_per_channel_weight_maxima_and_lengths():
    found = _ranged()
    assert found["conv"].max_weights_channel == (0.5, 0.0, np.float32(0.006))
    assert found["fc"].max_weights_channel == (np.float32(0.7), np.float32(0.02))   # transposed: axis 1
    # ristretto: ceil(log2 m + 1); safe: floor(log2 m) + 2; the zero channel takes the layer's
    # length (that of 0.5: 0 and 1); log2 0.006 = -7.38
    assert ranges.channel_integer_lengths(found["conv"], "ristretto") == [0, 0, -6]
    assert ranges.channel_integer_lengths(found["conv"], "safe") == [1, 1, -6]
    assert ranges.channel_integer_lengths(found["fc"], "safe") == [1, -4]   # log2 0.02 = -5.64
    # the safe rule counts the bias (1.08) unless the bias has a format of its own
    assert ranges.integer_lengths(found["conv"], "safe")[2] == 2
    assert ranges.integer_lengths(found["conv"], "safe", count_bias=False)[2] == 1
    assert ranges.integer_lengths(found["conv"], "ristretto", count_bias=False)[2] == 0


def test_parameter_formats_writes_the_fields_by_the_rule():
    found = _ranged()
    lengths = {k: ristretto_edit.IntegerLengths(*ranges.integer_lengths(v, "safe")) for k, v in found.items()}
    edited = ristretto_edit.dynamic_fixed_point(caffe_io.parse_net_text(RANGED), lengths,
                                                "Convolution_and_InnerProduct",
                                                "Parameters_and_Activations", 8, 8, 8, 8)
    assert edited.layer[1].quantization_param.fl_params == 8 - 2      # the bias sized it
    both = ristretto_edit.parameter_formats(edited, found, bias="int32", per_channel=True, rule="safe")
    conv, fc = both.layer[1].quantization_param, both.layer[2].quantization_param
    assert (conv.bias_format, conv.bw_bias, conv.fl_params) == (caffe_pb2.QuantizationParameter.ACCUMULATOR, 32, 7)
    assert list(conv.fl_params_channel) == [7, 7, 14] and list(fc.fl_params_channel) == [7, 12]
    shared = ristretto_edit.parameter_formats(edited, found, per_channel=True, rule="ristretto")
    q = shared.layer[1].quantization_param
    assert (q.bias_format, q.HasField("bw_bias"), q.fl_params) == (0, False, 6)   # fl_params kept
    assert list(q.fl_params_channel) == [8, 8, 14]
    # the edited net runs, and the copy left its input alone
    Net.from_proto(net_param(str(both), RANGED_BLOBS))
    assert not edited.layer[1].quantization_param.fl_params_channel
    # layers whose parameters keep Ristretto's defaults (an Activations edit) are left alone
    activations = ristretto_edit.dynamic_fixed_point(caffe_io.parse_net_text(RANGED), lengths,
                                                     "Convolution_and_InnerProduct", "Activations",
                                                     bw_in=8, bw_out=8)
    assert ristretto_edit.parameter_formats(activations, found, bias="int32", per_channel=True) == activations
    with pytest.raises(NetError, match="range analysis"):
        ristretto_edit.parameter_formats(edited, {"fc": found["fc"]}, bias="int32")
    with pytest.raises(ValueError, match="bias must be"):
        ristretto_edit.parameter_formats(edited, found, bias="int16")


# -- a BN-folded real model ------------------------------------------------------------------------


def test_the_accumulator_bias_widens_where_32_bits_cannot_hold_it():
    # conv: inputs of 1 (max_in 1: safe il_in = 2), |w| <= 0.5 (il 1), biases 1.08 (il 2),
    # 0 and -0.1 (il -2). At 16-bit weights and activations fl_in = 14, fl_w = 15: the bias
    # scale is 2^-29 and 1.08 needs 2 + 29 = 31 bits, so 32 hold it.
    found = _ranged()
    lengths = {k: ristretto_edit.IntegerLengths(*ranges.integer_lengths(v, "safe")) for k, v in found.items()}

    def formats(bw_act, per_channel):
        edited = ristretto_edit.dynamic_fixed_point(caffe_io.parse_net_text(RANGED), lengths,
                                                    "Convolution_and_InnerProduct",
                                                    "Parameters_and_Activations", 16, 16, bw_act,
                                                    bw_act)
        return ristretto_edit.parameter_formats(edited, found, bias="int32",
                                                per_channel=per_channel, rule="safe")

    q = formats(16, False).layer[1].quantization_param
    assert (q.fl_layer_in, q.fl_params, q.bw_bias) == (14, 15, 32)
    # Per channel, channel 2 (|w| <= 0.006, il -6) would take fl_w = 22, putting its bias -0.1
    # at 2^-36: -2 + 36 = 34 bits. Its length is held at 32 - (-2) - 14 = 20 instead (still
    # finer than the layer's 15), so that every bias fits 32 bits.
    q = formats(16, True).layer[1].quantization_param
    assert list(q.fl_params_channel) == [15, 15, 20] and q.bw_bias == 32
    # 30-bit activations put the scale 28 + 15 = 43 bits down: 1.08 needs 45 bits, and the bias
    # widens to them rather than clip 1.08 to 2^(31 - 43).
    wide = formats(30, False)
    q = wide.layer[1].quantization_param
    assert (q.fl_layer_in, q.fl_params, q.bw_bias) == (28, 15, 45)
    net = Net.from_proto(wide, net_param(RANGED, RANGED_BLOBS))
    trimmed = net.impl(1).trim_params(list(net.layer("conv").blobs), RunContext("gpu", None))[1]
    assert abs(trimmed[0] - np.float32(1.08)) <= 2.0 ** -44
