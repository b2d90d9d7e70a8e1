"""The committed schema modules match their .proto files; Caffe's carries Ristretto's field numbers."""
import re

import pytest

from ristretto_py.protos import caffe_pb2


def _embedded_descriptor(source):
    match = re.search(r"AddSerializedFile\((b'.*?')\)\n", source, re.S)
    assert match, "generated module layout changed"
    return eval(match.group(1))  # a bytes literal written by protoc


@pytest.mark.parametrize("name", ["caffe", "keras_saved_metadata"])
def test_committed_module_matches_schema(tmp_path, name):
    pytest.importorskip("grpc_tools")
    from ristretto_py.protos import regenerate
    generated = regenerate.compile_schema(tmp_path, name).read_text()
    committed = (regenerate.HERE / f"{name}_pb2.py").read_text()
    assert _embedded_descriptor(generated) == _embedded_descriptor(committed), \
        f"{name}_pb2.py is stale: run python -m ristretto_py.protos.regenerate"


def test_ristretto_quantization_fields():
    layer_fields = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name
    assert layer_fields["quantization_param"].number == 149
    q = caffe_pb2.QuantizationParameter.DESCRIPTOR.fields_by_name
    numbers = {name: q[name].number for name in q}
    assert numbers == {"precision": 1, "rounding_scheme": 2, "bw_layer_in": 3, "bw_layer_out": 4,
                       "bw_params": 5, "fl_layer_in": 6, "fl_layer_out": 7, "fl_params": 8,
                       "mant_bits": 9, "exp_bits": 10, "exp_min": 11, "exp_max": 12,
                       # ristretto-py's extensions, far from Ristretto's numbers
                       "bias_format": 50, "bw_bias": 51, "fl_params_channel": 52}
    defaults = caffe_pb2.QuantizationParameter()
    assert (defaults.bw_params, defaults.fl_params, defaults.mant_bits, defaults.exp_bits,
            defaults.exp_min, defaults.exp_max) == (32, 16, 23, 8, -8, -1)
    assert (defaults.bias_format, defaults.bw_bias, list(defaults.fl_params_channel)) == (0, 32, [])
    bias_format = caffe_pb2.QuantizationParameter.BiasFormat
    assert (bias_format.Value("SHARED"), bias_format.Value("ACCUMULATOR")) == (0, 1)
    # unused extensions are not written: a default message serialises to nothing
    assert defaults.SerializeToString() == b""
    precision = caffe_pb2.QuantizationParameter.Precision
    assert (precision.Value("DYNAMIC_FIXED_POINT"), precision.Value("MINIFLOAT"),
            precision.Value("INTEGER_POWER_OF_2_WEIGHTS")) == (0, 1, 2)
    rounding = caffe_pb2.QuantizationParameter.Rounding
    assert (rounding.Value("NEAREST"), rounding.Value("STOCHASTIC")) == (0, 1)


def test_ssd_layer_fields():
    fields = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name
    assert {n: fields[n].number for n in ("permute_param", "prior_box_param",
                                          "detection_output_param", "norm_param")} == \
        {"permute_param": 202, "prior_box_param": 203, "detection_output_param": 204,
         "norm_param": 206}
    # BVLC's own numbers are kept where they differ from old forks.
    assert fields["parameter_param"].number == 145 and fields["recurrent_param"].number == 146
