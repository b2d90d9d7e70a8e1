"""ristretto-py's parameter formats beyond Ristretto's: a bias of its own (32-bit accumulator
format at the scale of input times weight) and per-output-channel weight fractional lengths.
Trimmed values by hand, the three backends against each other and against a float64 emulation
written here, the cost model and report figures by hand, the file format, and a BN-folded real
model (open_nsfw) whose first convolution the shared format wipes out."""
import numpy as np
import pytest

from ristretto_py import Net, caffe_io
from ristretto_py.errors import NetError
from ristretto_py.layers.base import RunContext
from ristretto_py.passes import ranges, ristretto_edit
from ristretto_py.passes.cost import layer_costs
from ristretto_py.passes.quantize_report import layer_precisions, parameter_saturation, weight_bytes
from ristretto_py.precision import LayerPrecision
from ristretto_py.runtime import FixedRuntime, NumpyRuntime, OnnxRuntime
from conftest import net_param

INPUT = 'layer { name: "data" type: "Input" top: "data" input_param { shape { %s } } }\n'


def _dims(*dims):
    return " ".join(f"dim: {d}" for d in dims)


def _round(values, compat):
    """Ristretto's NEAREST: half to even (GPU build) or half away from zero (CPU build)."""
    values = np.asarray(values, np.float64)
    if compat == "gpu":
        return np.rint(values)
    return np.sign(values) * np.floor(np.abs(values) + 0.5)


def _trim64(x, bw, fl, compat="gpu"):
    """Dynamic fixed point in float64, written independently of ristretto_py.numerics; ``fl``
    may be an array that broadcasts against ``x``."""
    step = 2.0 ** -np.asarray(fl, np.float64)
    x = np.asarray(np.asarray(x, np.float32), np.float64)
    clamped = np.clip(x, -(2.0 ** (bw - 1)) * step, (2.0 ** (bw - 1) - 1) * step)
    return _round(clamped / step, compat) * step


def _trimmed(net, name, compat="gpu"):
    layer, impl = net.layer(name), net.impls[[l.name for l in net.layers].index(name)]
    return impl.trim_params(layer.blobs, RunContext(compat, None))


# -- trimmed parameters, by hand ----------------------------------------------------------------

CONV_HAND = (INPUT % _dims(1, 1, 2, 2) +
             'layer { name: "conv" type: "ConvolutionRistretto" bottom: "data" top: "conv" '
             'convolution_param { num_output: 2 kernel_h: 1 kernel_w: 2 } '
             'quantization_param { bw_layer_in: 8 fl_layer_in: 4 bw_layer_out: 16 fl_layer_out: 8 '
             'bw_params: 8 fl_params: %d %s } }\n')
# channel 0 holds weights near 1, channel 1 weights near 0.005 (as a folded BatchNorm leaves
# them), and the bias reaches 1.08
CONV_WEIGHTS = [np.array([0.75, -0.3, 0.0059, -0.0031]).reshape(2, 1, 1, 2), np.array([1.08, -0.0123])]


def _hand_conv(fl_params, extra):
    return Net.from_proto(net_param(CONV_HAND % (fl_params, extra), {"conv": CONV_WEIGHTS}))


def test_shared_format_loses_the_small_channel_or_clips_the_bias():
    # sized for the bias (il 2, fl 6): 0.0059 * 64 = 0.38 and -0.0031 * 64 = -0.2 round to 0
    weights, bias = _trimmed(_hand_conv(6, ""), "conv")
    np.testing.assert_array_equal(weights.ravel(), [48 / 64, -19 / 64, 0, 0])
    np.testing.assert_array_equal(bias, [69 / 64, -1 / 64])          # -0.0123 * 64 = -0.79
    # sized for the weights (il 1, fl 7): the bias clips at 127/128
    weights, bias = _trimmed(_hand_conv(7, ""), "conv")
    np.testing.assert_array_equal(bias, [127 / 128, -2 / 128])


def test_per_channel_weights_and_accumulator_bias_by_hand():
    net = _hand_conv(6, "bias_format: ACCUMULATOR fl_params_channel: 6 fl_params_channel: 14")
    weights, bias = _trimmed(net, "conv")
    # channel 0 at fl 6: 0.75*64 = 48, -0.3*64 = -19.2; channel 1 at fl 14: 0.0059*16384 = 96.67,
    # -0.0031*16384 = -50.79
    np.testing.assert_array_equal(weights.ravel(), [48 / 64, -19 / 64, 97 / 16384, -51 / 16384])
    # the bias at fl_layer_in + the channel's length, 32 bits: fl 10 and 18 (1.08 * 1024 =
    # 1105.92, -0.0123 * 2^18 = -3224.37)
    np.testing.assert_array_equal(bias, [1106 / 1024, -3224 / 262144])
    # per-layer weights at fl 14 with an accumulator bias: the bias at fl 4 + 14 = 18 for both
    weights, bias = _trimmed(_hand_conv(14, "bias_format: ACCUMULATOR"), "conv")
    np.testing.assert_array_equal(weights.ravel(), [127 / 16384, -128 / 16384, 97 / 16384, -51 / 16384])
    np.testing.assert_array_equal(bias, [283116 / 262144, -3224 / 262144])   # 1.08 (f32) * 2^18 = 283115.53


FC_HAND = (INPUT % _dims(1, 4) +
           'layer { name: "fc" type: "FcRistretto" bottom: "data" top: "fc" '
           'inner_product_param { num_output: 3 %s } '
           'quantization_param { bw_layer_in: 8 fl_layer_in: 3 bw_layer_out: 16 fl_layer_out: 8 '
           'bw_params: 8 fl_params: 4 bias_format: ACCUMULATOR bw_bias: 16 '
           'fl_params_channel: [5, 12, 9] } }\n')
FC_WEIGHTS = np.array([[0.5, -0.75, 0.078125, 5.0],            # fl 5: 2.5 is a tie; 160 clips
                       [0.001, -0.004, 0.0002, 0.03],          # fl 12
                       [0.1, -0.2, 0.05, -0.0048828125]])      # fl 9: -2.5 is a tie
FC_BIAS = np.array([1.3, 2.5, -0.7])


@pytest.mark.parametrize("compat", ["gpu", "cpu"])
@pytest.mark.parametrize("transpose", [False, True])
def test_inner_product_per_channel_by_hand(compat, transpose):
    stored = FC_WEIGHTS.T if transpose else FC_WEIGHTS
    text = FC_HAND % ("transpose: true" if transpose else "")
    net = Net.from_proto(net_param(text, {"fc": [stored, FC_BIAS]}))
    weights, bias = _trimmed(net, "fc", compat)
    tie = {"gpu": (2, -2), "cpu": (3, -3)}[compat]
    expected = np.array([[16 / 32, -24 / 32, tie[0] / 32, 127 / 32],
                         [4 / 4096, -16 / 4096, 1 / 4096, 123 / 4096],
                         [51 / 512, -102 / 512, 26 / 512, tie[1] / 512]])
    np.testing.assert_array_equal(weights, expected.T if transpose else expected)
    # 16-bit bias at fl 3 + (5, 12, 9) = (8, 15, 12): 1.3*256 = 332.8; 2.5 clips at
    # 32767/32768; -0.7*4096 = -2867.2
    np.testing.assert_array_equal(bias, [333 / 256, 32767 / 32768, -2867 / 4096])


# -- three backends, both builds, against a float64 emulation -------------------------------------

CHAIN = (INPUT % _dims(2, 3, 6, 6) +
         'layer { name: "conv" type: "ConvolutionRistretto" bottom: "data" top: "conv" '
         'convolution_param { num_output: 4 kernel_size: 3 pad: 1 } quantization_param { '
         'bw_layer_in: 8 fl_layer_in: 4 bw_layer_out: 20 fl_layer_out: 12 bw_params: 6 fl_params: 4 %s } }\n'
         'layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }\n'
         'layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" '
         'pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n'
         'layer { name: "fc" type: "FcRistretto" bottom: "pool" top: "fc" inner_product_param { '
         'num_output: 3 } quantization_param { bw_layer_in: 8 fl_layer_in: 2 bw_layer_out: 20 '
         'fl_layer_out: 12 bw_params: 6 fl_params: 4 %s } }\n')
CONV_CHANNEL_FL, FC_CHANNEL_FL = [5, 9, 12, 6], [5, 11, 8]


def _chain_blobs():
    rng = np.random.default_rng(11)
    conv_scale = np.array([1.0, 0.05, 0.004, 0.3]).reshape(4, 1, 1, 1)
    fc_scale = np.array([0.5, 0.01, 0.08]).reshape(3, 1)
    return {"conv": [rng.uniform(-1, 1, (4, 3, 3, 3)) * conv_scale, np.array([1.7, -0.9, 0.45, 2.2])],
            "fc": [rng.uniform(-1, 1, (3, 36)) * fc_scale, np.array([0.9, -1.4, 0.3])]}


def _chain(bias_format, per_channel):
    fields = []
    for lengths in (CONV_CHANNEL_FL, FC_CHANNEL_FL):
        extra = "bias_format: ACCUMULATOR" if bias_format == "accumulator" else ""
        if per_channel:
            extra += " " + " ".join(f"fl_params_channel: {v}" for v in lengths)
        fields.append(extra)
    return Net.from_proto(net_param(CHAIN % tuple(fields), _chain_blobs()))


def _chain_input():
    # multiples of 1/32 at fl_layer_in 4: every odd one is a rounding tie
    rng = np.random.default_rng(5)
    return rng.integers(-64, 65, (2, 3, 6, 6)).astype(np.float32) / 32


def _emulate64(blobs, x, bias_format, per_channel, compat):
    """The chain in float64 from the Ristretto rules (input, weights, bias and output trimmed)."""
    def layer(values, name, fl_in, lengths, channel_shape, product):
        weights, bias = blobs[name]
        fl_w = np.reshape(lengths, channel_shape) if per_channel else 4
        fl_b = (fl_in + np.ravel(fl_w)) if bias_format == "accumulator" else 4
        bw_b = 32 if bias_format == "accumulator" else 6
        y = product(_trim64(values, 8, fl_in, compat), _trim64(weights, 6, fl_w, compat))
        return _trim64(y + _trim64(bias, bw_b, fl_b, compat).reshape((1, -1) + (1,) * (y.ndim - 2)),
                       20, 12, compat)

    def conv(v, w):
        windows = np.lib.stride_tricks.sliding_window_view(np.pad(v, ((0, 0), (0, 0), (1, 1), (1, 1))),
                                                           (3, 3), axis=(2, 3))
        return np.einsum("nchwij,ocij->nohw", windows, w)
    y = layer(x, "conv", 4, CONV_CHANNEL_FL, (4, 1, 1, 1), conv)
    y = np.maximum(y, 0)
    pooled = y.reshape(2, 4, 3, 2, 3, 2).max(axis=(3, 5))
    fc = layer(pooled.reshape(2, -1), "fc", 2, FC_CHANNEL_FL, (3, 1), lambda v, w: v @ w.T)
    return y, _trim64(pooled, 8, 2, compat), fc       # FcRistretto trims its bottom in place


@pytest.mark.parametrize("compat", ["gpu", "cpu"])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("bias_format", ["shared", "accumulator"])
def test_three_backends_agree_exactly(bias_format, per_channel, compat):
    net, x = _chain(bias_format, per_channel), _chain_input()
    ours = NumpyRuntime(net, compat=compat).forward({"data": x})
    onnx = OnnxRuntime(net, compat=compat)
    assert not onnx.export.tail                    # every layer ran in onnxruntime
    onnx_blobs = onnx.forward({"data": x})
    fixed = FixedRuntime(net, compat=compat)
    fixed_blobs = fixed.forward({"data": x})
    conv, pool, fc = _emulate64(_chain_blobs(), x, bias_format, per_channel, compat)
    for blob, expected in (("conv", conv), ("pool", pool), ("fc", fc)):
        expected = expected.astype(np.float32)
        assert np.count_nonzero(ours[blob] != expected) == 0, blob
        assert np.count_nonzero(onnx_blobs[blob] != ours[blob]) == 0, blob
        assert np.count_nonzero(fixed_blobs[blob] != ours[blob]) == 0, blob
    assert all(r.float32_differs == 0 and r.overflows == 0 for r in fixed.report.values())
    assert set(fixed.report) == {"conv", "fc"}


def test_the_chain_cases_differ_where_they_should():
    x = _chain_input()
    outputs = {(b, p, c): NumpyRuntime(_chain(b, p), compat=c).forward({"data": x})["conv"]
               for b in ("shared", "accumulator") for p in (False, True) for c in ("gpu", "cpu")}
    # per-layer fl 4 leaves channel 2 (weights below 0.004) no nonzero weight; per channel it keeps them
    assert not _trimmed(_chain("shared", False), "conv")[0][2].any()
    assert np.count_nonzero(_trimmed(_chain("shared", True), "conv")[0][2]) > 20
    assert not np.array_equal(outputs["shared", False, "gpu"], outputs["shared", True, "gpu"])
    # the shared 6-bit bias at fl 4 clips 2.2 to 1.9375; the accumulator bias keeps it
    assert _trimmed(_chain("shared", True), "conv")[1][3] == 31 / 16
    assert _trimmed(_chain("accumulator", True), "conv")[1][3] == round(2.2 * 2 ** 10) / 2 ** 10
    assert not np.array_equal(outputs["shared", True, "gpu"], outputs["accumulator", True, "gpu"])
    assert any(not np.array_equal(outputs[b, p, "gpu"], outputs[b, p, "cpu"])
               for b in ("shared", "accumulator") for p in (False, True))


# -- cost model, weight bytes, saturation --------------------------------------------------------

def test_cost_and_weight_bytes_by_hand():
    net = _chain("accumulator", True)
    rows = {r.name: r for r in layer_costs(net)}
    # conv: 108 weights at 6 bits, 4 biases at 32 bits, 4 shifts of 8 bits
    assert rows["conv"].param_bytes == (108 * 6 + 4 * 32 + 4 * 8) / 8 == 101
    # fc: 108 weights at 6 bits, 3 biases at 32 bits, 3 shifts
    assert rows["fc"].param_bytes == (108 * 6 + 3 * 32 + 3 * 8) / 8 == 96
    precisions = layer_precisions(net.to_proto())
    assert weight_bytes(net, precisions) == 101 + 96
    shared = _chain("shared", False)       # Ristretto's format: everything at 6 bits
    assert {r.name: r.param_bytes for r in layer_costs(shared)}["conv"] == (108 + 4) * 6 / 8
    assert weight_bytes(shared, layer_precisions(shared.to_proto())) == 81 + 3 + 81 + 3


@pytest.mark.parametrize("fl_params,extra,saturated", [
    (7, "", 1),                                                          # the bias clips
    (6, "bias_format: ACCUMULATOR fl_params_channel: [6, 15]", 1),      # 0.0059 > 127/2^15
    (14, "bias_format: ACCUMULATOR", 2),                                # 0.75 and -0.3 clip
    (6, "bias_format: ACCUMULATOR fl_params_channel: [6, 14]", 0)])
def test_parameter_saturation_per_channel(fl_params, extra, saturated):
    net = _hand_conv(fl_params, extra)
    shares = parameter_saturation(net, layer_precisions(net.to_proto()))
    assert shares == {"conv": saturated / 6}


# -- the file format ------------------------------------------------------------------------------

def test_new_fields_round_trip_through_files(tmp_path):
    net = _chain("accumulator", True)
    param = net.to_proto()
    param.layer[1].quantization_param.bw_bias = 24
    path = tmp_path / "net.prototxt"
    caffe_io.write_net_text(param, path)
    text = path.read_text()
    assert "bias_format: ACCUMULATOR" in text and "bw_bias: 24" in text
    assert text.count("fl_params_channel:") == 4 + 3
    again = caffe_io.read_net_text(path)
    assert again == param
    conv = LayerPrecision.from_proto(again.layer[1].quantization_param)
    assert (conv.bias_format, conv.bw_bias, conv.fl_params_channel) == ("accumulator", 24, (5, 9, 12, 6))
    assert LayerPrecision.from_proto(conv.to_proto()) == conv
    # and in a caffemodel, whose layers carry their quantization_param too
    Net.from_proto(param, net.to_proto(include_blobs=True)).save(tmp_path / "m.prototxt", tmp_path / "m.caffemodel")
    stored = caffe_io.read_net_binary(tmp_path / "m.caffemodel")
    assert list(stored.layer[1].quantization_param.fl_params_channel) == [5, 9, 12, 6]


TINY = ('name: "tiny"\n' + INPUT % _dims(1, 2, 4, 4) +
        'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" '
        'convolution_param { num_output: 2 kernel_size: 1 } }\n'
        'layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc" inner_product_param { num_output: 3 } }\n')
# Ristretto's own output format for this edit, written out by hand (fl = bw - il).
TINY_EDITED = """name: "tiny"
layer {
  name: "data"
  type: "Input"
  top: "data"
  input_param {
    shape {
      dim: 1
      dim: 2
      dim: 4
      dim: 4
    }
  }
}
layer {
  name: "conv"
  type: "ConvolutionRistretto"
  bottom: "data"
  top: "conv"
  convolution_param {
    num_output: 2
    kernel_size: 1
  }
  quantization_param {
    bw_layer_in: 8
    bw_layer_out: 8
    bw_params: 8
    fl_layer_in: 5
    fl_layer_out: 6
    fl_params: 7
  }
}
layer {
  name: "fc"
  type: "FcRistretto"
  bottom: "conv"
  top: "fc"
  inner_product_param {
    num_output: 3
  }
  quantization_param {
    bw_layer_in: 8
    bw_layer_out: 8
    bw_params: 6
    fl_layer_in: 6
    fl_layer_out: 4
    fl_params: 8
  }
}
"""


def test_files_without_the_options_are_unchanged(tmp_path):
    lengths = {"conv": ristretto_edit.IntegerLengths(3, 2, 1), "fc": ristretto_edit.IntegerLengths(2, 4, -2)}
    edited = ristretto_edit.dynamic_fixed_point(caffe_io.parse_net_text(TINY), lengths,
                                                "Convolution_and_InnerProduct",
                                                "Parameters_and_Activations", 8, 6, 8, 8)
    blobs = {"conv": [np.full((2, 2, 1, 1), 0.25), np.zeros(2)], "fc": [np.full((3, 32), 0.125), np.zeros(3)]}
    net = Net.from_proto(net_param(str(edited), blobs))
    found = ranges.analyze_ranges(Net.from_proto(net_param(TINY, blobs)),
                                  [{"data": np.ones((1, 2, 4, 4), np.float32)}])
    passed = ristretto_edit.parameter_formats(edited, found)
    written = {}
    for name, param in (("edit", edited), ("pass", passed), ("net", net.to_proto())):
        caffe_io.write_net_text(param, tmp_path / f"{name}.prototxt")
        written[name] = (tmp_path / f"{name}.prototxt").read_bytes()
    assert written["edit"] == written["pass"] == written["net"] == TINY_EDITED.encode()
    # a default precision writes none of the extension fields
    message = LayerPrecision(bw_params=8, fl_params=3).to_proto()
    assert not (message.HasField("bias_format") or message.HasField("bw_bias") or message.fl_params_channel)


def test_bad_extension_fields_are_refused_with_the_layer_named():
    cases = [
        (CONV_HAND % (6, "fl_params_channel: [6, 14, 3]"), "conv",
         "fl_params_channel has 3 values for 2 output channels"),
        (CONV_HAND % (6, "bw_bias: 16"), "conv", "bw_bias applies only with bias_format: ACCUMULATOR"),
        (CONV_HAND % (6, "bias_format: ACCUMULATOR bw_bias: 63"), "conv", "bw_bias must be 2 to 62 bits"),
        (CONV_HAND % (6, "precision: MINIFLOAT bias_format: ACCUMULATOR"), "conv",
         "apply only to DYNAMIC_FIXED_POINT"),
        (INPUT % _dims(1, 2, 3, 3) + 'layer { name: "up" type: "DeconvolutionRistretto" bottom: "data" '
         'top: "up" convolution_param { num_output: 2 kernel_size: 2 stride: 2 } '
         'quantization_param { fl_params_channel: [3, 4] } }\n', "up", "not supported for DeconvolutionRistretto")]
    for text, layer, message in cases:
        with pytest.raises(NetError) as caught:
            Net.from_proto(net_param(text))
        assert message in str(caught.value) and layer in str(caught.value)
        assert "\n" not in str(caught.value)
    # an accumulator bias alone is fine on a deconvolution
    net = Net.from_proto(net_param(INPUT % _dims(1, 2, 3, 3) + 'layer { name: "up" type: '
                                   '"DeconvolutionRistretto" bottom: "data" top: "up" convolution_param '
                                   '{ num_output: 2 kernel_size: 2 stride: 2 } quantization_param { '
                                   'bw_params: 8 fl_params: 2 fl_layer_in: 3 bias_format: ACCUMULATOR } }\n',
                                   {"up": [np.full((2, 2, 2, 2), 0.3), np.array([0.123, -7.0])]}))
    np.testing.assert_array_equal(_trimmed(net, "up")[1], [4 / 32, -7.0])   # fl 3 + 2 = 5


# -- ranges and the post-pass ---------------------------------------------------------------------

@pytest.mark.slow
def test_folded_open_nsfw_keeps_its_first_convolution(real_models):
    import cv2
    from ristretto_py.passes.fold_bn import fold_batchnorm
    files = real_models("open_nsfw")
    folded, _ = fold_batchnorm(Net.load(files.prototxt, files.caffemodel))
    x = np.concatenate([cv2.dnn.blobFromImage(cv2.imread(str(path)), 1.0, (224, 224), (104, 117, 123))
                        for path in real_models("mtcnn_pnet").images])
    folded = folded.with_input_shapes({folded.input_blobs[0]: x.shape})
    found = ranges.analyze_ranges(folded, [{"data": x}], rule="safe")
    assert found["conv_1"].max_weights < 0.006 and found["conv_1"].max_bias > 1.07
    lengths = {k: ristretto_edit.IntegerLengths(*ranges.integer_lengths(v, "safe")) for k, v in found.items()}
    base = ristretto_edit.per_layer_dynamic_fixed_point(folded.to_proto(), lengths,
                                                        {name: (8, 8) for name in found})
    weights = folded.to_proto(include_blobs=True)
    reference = NumpyRuntime(folded).forward({"data": x})["fc_nsfw"]
    conv_1 = folded.layer("conv_1").blobs[0] != 0
    results = {}
    for bias, per_channel in (("shared", False), ("int32", True)):
        param = ristretto_edit.parameter_formats(base, found, bias=bias, per_channel=per_channel, rule="safe")
        net = Net.from_proto(param, weights)
        zeroed = np.count_nonzero((_trimmed(net, "conv_1")[0] == 0) & conv_1) / np.count_nonzero(conv_1)
        logits = NumpyRuntime(net).forward({"data": x})["fc_nsfw"]
        results[bias] = (net, zeroed, np.abs(logits - reference).max() / np.abs(reference).max(), logits)
    net, zeroed, error, logits = results["int32"]
    # Ristretto's shared format rounds every conv_1 weight to 0 (both images then give the
    # same output); 8-bit per-channel weights with a 32-bit bias keep 97% of them (2.9% zeroed)
    assert results["shared"][1] == 1.0 and results["shared"][2] > 0.5
    np.testing.assert_array_equal(results["shared"][3][0], results["shared"][3][1])
    assert zeroed < 0.05
    assert error < 0.1                          # of the largest logit (0.071 measured)
    np.testing.assert_array_equal(np.argmax(logits, axis=1), np.argmax(reference, axis=1))
    # the integer kernels run the same net to the same values
    fixed = FixedRuntime(net)
    assert np.count_nonzero(fixed.forward({"data": x})["fc_nsfw"] != logits) == 0
    assert sum(r.overflows for r in fixed.report.values()) == 0


def test_fixed_backend_puts_an_inner_products_bias_on_its_last_axis():
    # an FcRistretto over axis 2 writes (N, C, num_output): bias and per-channel lengths belong
    # to the last axis, not to axis 1
    text = (INPUT % _dims(2, 3, 4) +
            'layer { name: "fc" type: "FcRistretto" bottom: "data" top: "fc" inner_product_param { '
            'num_output: 2 axis: 2 } quantization_param { bw_layer_in: 8 fl_layer_in: 4 '
            'bw_layer_out: 16 fl_layer_out: 10 bw_params: 8 fl_params: 6 bias_format: ACCUMULATOR '
            'fl_params_channel: [6, 12] } }\n')
    weights, bias = np.array([[0.5, -0.25, 0.75, 0.1], [0.01, -0.02, 0.005, 0.015]]), np.array([0.3, -0.6])
    net = Net.from_proto(net_param(text, {"fc": [weights, bias]}))
    x = np.random.default_rng(3).integers(-32, 33, (2, 3, 4)).astype(np.float32) / 16
    expected = _trim64(_trim64(x, 8, 4) @ _trim64(weights, 8, np.array([[6], [12]])).T
                       + _trim64(bias, 32, np.array([10, 16])), 16, 10)
    ours = NumpyRuntime(net).forward({"data": x})["fc"]
    np.testing.assert_array_equal(ours, expected.astype(np.float32))
    np.testing.assert_array_equal(FixedRuntime(net).forward({"data": x})["fc"], ours)
