"""Files from every Ristretto release: quantization_param at LayerParameter field 145 (first
release, other numbering and enum names), 147 and 148 in binary caffemodels (built here byte by
byte in protobuf's wire format), the first release's enum names in text, and field 149 written."""
import numpy as np
import pytest

from ristretto_py import Net, caffe_io
from ristretto_py.protos import caffe_pb2
from conftest import net_param

Q = caffe_pb2.QuantizationParameter


def _varint(value):
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number, payload):
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _caffemodel(tmp_path, number, payload):
    layer = caffe_pb2.LayerParameter(name="conv", type="ConvolutionRistretto", bottom=["data"], top=["conv"])
    layer.convolution_param.num_output = 2
    layer.convolution_param.kernel_size.append(1)
    layer.blobs.add().CopyFrom(caffe_io.array_to_blob(np.ones((2, 1, 1, 1), np.float32)))
    layer.blobs.add().CopyFrom(caffe_io.array_to_blob(np.zeros(2, np.float32)))
    data = _field(100, layer.SerializeToString() + _field(number, payload))
    path = tmp_path / f"field{number}.caffemodel"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("number", [147, 148, 149])
def test_binary_quantization_param_at_later_fields(tmp_path, number):
    q = Q(precision=Q.DYNAMIC_FIXED_POINT, bw_layer_in=8, fl_layer_in=5, bw_layer_out=8,
          fl_layer_out=3, bw_params=4, fl_params=4)
    net = caffe_io.read_net_binary(_caffemodel(tmp_path, number, q.SerializeToString()))
    assert net.layer[0].quantization_param == q
    assert not net.layer[0].HasField("clip_param") and not net.layer[0].HasField("swish_param")


def test_first_release_field_145_and_its_numbering(tmp_path):
    old = caffe_pb2.QuantizationParameterV1(precision=caffe_pb2.QuantizationParameterV1.MINI_FLOATING_POINT,
                                            mant_bits=3, exp_bits=4, bw_params=8)
    net = caffe_io.read_net_binary(_caffemodel(tmp_path, 145, old.SerializeToString()))
    q = net.layer[0].quantization_param
    assert (q.precision, q.mant_bits, q.exp_bits, q.bw_params) == (Q.MINIFLOAT, 3, 4, 8)


def test_first_release_enum_names_in_text_and_writing_field_149(tmp_path):
    text = ('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 2 dim: 2 } } }\n'
            'layer { name: "conv" type: "ConvolutionRistretto" bottom: "data" top: "conv" '
            'convolution_param { num_output: 1 kernel_size: 1 } '
            'quantization_param { precision: POWER_2_WEIGHTS exp_min: -4 exp_max: 0 } }')
    param = net_param(text, {"conv": [np.ones((1, 1, 1, 1)), np.zeros(1)]})
    assert param.layer[1].quantization_param.precision == Q.INTEGER_POWER_OF_2_WEIGHTS
    net = Net.from_proto(param)
    net.save(tmp_path / "q.prototxt", tmp_path / "q.caffemodel")
    assert "precision: INTEGER_POWER_OF_2_WEIGHTS" in (tmp_path / "q.prototxt").read_text()
    raw = (tmp_path / "q.caffemodel").read_bytes()
    assert _varint(149 << 3 | 2) in raw          # written at Ristretto's current field number
