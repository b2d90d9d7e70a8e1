"""Read files from every Ristretto release: ``quantization_param`` moved from LayerParameter field
145 (first release: other enum names and numbering) to 147, 148 and 149 (current). We always
write 149.

Text prototxts are keyed by field name, so only the first release's enum names need mapping.
Binary caffemodels carry the field number of the build that saved them; 145, 147 and 148 are
BVLC's parameter_param, swish_param and clip_param today, so for Ristretto layer types their
bytes are decoded again as the quantization parameter they really hold.
"""
import re

from .protos import caffe_pb2

RISTRETTO_TYPES = frozenset({"ConvolutionRistretto", "FcRistretto", "DeconvolutionRistretto",
                             "LRNRistretto"})

OLD_PRECISION_NAMES = {"FIXED_POINT": "DYNAMIC_FIXED_POINT", "MINI_FLOATING_POINT": "MINIFLOAT",
                       "POWER_2_WEIGHTS": "INTEGER_POWER_OF_2_WEIGHTS"}

# --trimming_mode spellings of the first release -> current ones
OLD_TRIMMING_MODES = {"fixed_point": "dynamic_fixed_point", "mini_floating_point": "minifloat",
                      "power_of_2_weights": "integer_power_of_2_weights"}

_OLD_ENUM = re.compile(r"(\bprecision\s*:\s*)(FIXED_POINT|MINI_FLOATING_POINT|POWER_2_WEIGHTS)\b")


def upgrade_text(text):
    """Replace the first release's precision enum names in prototxt text by current ones."""
    return _OLD_ENUM.sub(lambda m: m.group(1) + OLD_PRECISION_NAMES[m.group(2)], text)


# Fields that held quantization_param in older releases, in LayerParameter numbering, and the
# message layout each used.
_LEGACY_FIELDS = (("clip_param", caffe_pb2.QuantizationParameter),      # 148
                  ("swish_param", caffe_pb2.QuantizationParameter),     # 147
                  ("parameter_param", caffe_pb2.QuantizationParameterV1))  # 145


def recover_quantization_params(net):
    """For Ristretto layers of a binary NetParameter, move a quantization parameter stored at
    field 145, 147 or 148 into ``quantization_param`` (149). Returns the number recovered."""
    recovered = 0
    for layer in net.layer:
        if layer.type not in RISTRETTO_TYPES or layer.HasField("quantization_param"):
            continue
        for field, layout in _LEGACY_FIELDS:
            if not layer.HasField(field):
                continue
            payload = getattr(layer, field).SerializeToString()
            old = layout()
            old.ParseFromString(payload)
            layer.quantization_param.CopyFrom(_to_current(old))
            layer.ClearField(field)
            recovered += 1
            break
    return recovered


def _to_current(old):
    if isinstance(old, caffe_pb2.QuantizationParameter):
        return old
    new = caffe_pb2.QuantizationParameter()
    name = caffe_pb2.QuantizationParameterV1.Precision.Name(old.precision)
    new.precision = caffe_pb2.QuantizationParameter.Precision.Value(OLD_PRECISION_NAMES[name])
    for field in ("rounding_scheme", "bw_layer_out", "bw_params", "fl_layer_out", "fl_params",
                  "mant_bits", "exp_bits", "exp_min", "exp_max"):
        if old.HasField(field):
            setattr(new, field, getattr(old, field))
    return new
