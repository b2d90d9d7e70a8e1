"""Formats for every layer (layers/formats.py): the integer rules by hand, a net with every
formattable stock type run by the fixed backend against the float emulation and an independent
float64 reference, and the refusals."""
import numpy as np
import pytest

from ristretto_py import Net
from ristretto_py import fixed_point as fx
from ristretto_py.errors import NetError
from ristretto_py.runtime import FixedRuntime, NumpyRuntime
from conftest import net_param


def test_rounding_division_ties_follow_the_build():
    n = np.array([3, 5, -3, -5, 7, 6, -7])
    d = np.array([2, 2, 2, 2, 4, 4, 4])
    # 1.5, 2.5, -1.5, -2.5, 1.75, 1.5, -1.75
    assert fx.divide(n, d, "gpu").tolist() == [2, 2, -2, -2, 2, 2, -2]     # ties to even
    assert fx.divide(n, d, "cpu").tolist() == [2, 3, -2, -3, 2, 2, -2]     # ties away from 0


INPUT = 'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 4 dim: 4 } } }\n'


def _single(text, blobs=None):
    return Net.from_proto(net_param(INPUT + text, blobs))


def _fixed(net, x):
    runtime = FixedRuntime(net)
    return runtime.forward({"data": x}), runtime


def test_ave_pooling_divides_the_integer_sums_once():
    net = _single('layer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param { pool: AVE '
                  'kernel_size: 2 stride: 2 } quantization_param { bw_layer_in: 8 fl_layer_in: 2 '
                  'bw_layer_out: 8 fl_layer_out: 1 } }')
    x = np.zeros((1, 2, 4, 4), np.float32)
    # window of mantissas (fl 2) 1, 2, 3, 5: sum 11, at fl 1 that is 11 / 2 / 4 = 1.375 -> 1
    x[0, 0, :2, :2] = np.array([[1, 2], [3, 5]]) / 4
    # 1, 1, 1, 3: sum 6 -> 6 / 8 = 0.75 -> 1; and 2, 2, 1, 1: 6 -> 1; 3, 3, 3, 3: 12/8 = 1.5 -> 2
    x[0, 0, :2, 2:] = np.array([[1, 1], [1, 3]]) / 4
    x[0, 1, :2, :2] = np.array([[2, 2], [1, 1]]) / 4
    x[0, 1, 2:, 2:] = 3 / 4
    blobs, runtime = _fixed(net, x)
    got = blobs["p"] * 2          # mantissas at fl 1
    assert got[0, 0, 0].tolist() == [1, 1]
    assert got[0, 1, 0, 0] == 1 and got[0, 1, 1, 1] == 2
    assert runtime.how["p"] == "integer"
    np.testing.assert_array_equal(NumpyRuntime(net).forward({"data": x})["p"], blobs["p"])


def test_eltwise_aligns_each_input_by_shift_round_saturate():
    text = ('layer { name: "a" type: "Scale" bottom: "data" top: "a" scale_param { bias_term: false } '
            'quantization_param { bw_layer_in: 8 fl_layer_in: 4 bw_layer_out: 8 fl_layer_out: 4 bw_params: 8 fl_params: 6 } }\n'
            'layer { name: "b" type: "Scale" bottom: "data" top: "b" scale_param { bias_term: false } '
            'quantization_param { bw_layer_in: 8 fl_layer_in: 4 bw_layer_out: 8 fl_layer_out: 1 bw_params: 8 fl_params: 6 } }\n'
            'layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "sum" '
            'quantization_param { bw_layer_in: 6 fl_layer_in: 2 bw_layer_out: 8 fl_layer_out: 2 } }\n')
    net = _single(text, {"a": [np.ones(2)], "b": [np.ones(2)]})
    x = np.zeros((1, 2, 4, 4), np.float32)
    x[0, 0, 0, :4] = [0.4375, 1.125, 9.0, -0.1875]   # mantissas at fl 4: 7, 18, 127 (saturated), -3
    blobs, _ = _fixed(net, x)
    # a (fl 4) aligned to fl 2: 7/4 = 1.75 -> 2; 18/4 = 4.5 -> 4 (even); 127/4 = 31.75 -> 32,
    # saturated to 31 (6 bits); -3/4 = -0.75 -> -1.  b at fl 1: 0.875 -> 1; 2.25 -> 2;
    # 7.9375 * 2 = 15.875 -> 16; -0.375 -> 0; aligned to fl 2: 2, 4, 32 -> 31, 0.
    # Sums: 4, 8, 62, -1.
    assert (blobs["sum"][0, 0, 0] * 4).tolist() == [4, 8, 62, -1]


def test_scale_multiplies_integers_and_adds_the_bias_at_the_finer_length():
    net = _single('layer { name: "s" type: "Scale" bottom: "data" top: "s" scale_param { bias_term: true } '
                  'quantization_param { bw_layer_in: 8 fl_layer_in: 3 bw_layer_out: 8 fl_layer_out: 2 '
                  'bw_params: 6 fl_params: 4 } }',
                  {"s": [np.array([0.75, -1.3]), np.array([0.1, 2.0])]})
    x = np.full((1, 2, 4, 4), 0.625, np.float32)                         # mantissa 5 at fl 3
    blobs, _ = _fixed(net, x)
    # scale 0.75 -> 12 (fl 4), -1.3 -> -20.8 -> -21; bias 0.1 -> 1.6 -> 2, 2.0 -> 32 saturates
    # at 31 (6 bits). Products at fl 7: 60, -105; bias at fl 4 shifted to fl 7: 16, 248.
    # Sums 76, 143 at fl 7 -> fl 2: 76/32 = 2.375 -> 2; 143/32 = 4.47 -> 4.
    assert (blobs["s"][0, :, 0, 0] * 4).tolist() == [2, 4]
    np.testing.assert_array_equal(NumpyRuntime(net).forward({"data": x})["s"], blobs["s"])


def test_batchnorm_runs_as_a_trimmed_affine():
    mean, var = np.array([1.0, -2.0]), np.array([4.0, 0.25])
    net = _single('layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" batch_norm_param { eps: 0 } '
                  'quantization_param { bw_layer_in: 8 fl_layer_in: 4 bw_layer_out: 8 fl_layer_out: 4 '
                  'bw_params: 8 fl_params: 5 } }', {"bn": [mean, var, np.array([1.0])]})
    x = np.full((1, 2, 4, 4), 1.5, np.float32)
    blobs, _ = _fixed(net, x)
    # a = 1/2, 2 -> 16, 64 at fl 5; b = -0.5, 4 -> -16, 128 saturates at 127 (3.96875)
    # (1.5 * 0.5 - 0.5) = 0.25 -> 4 at fl 4; 1.5 * 2 + 3.96875 = 6.96875 -> 111.5 -> 112 (even)
    assert (blobs["bn"][0, :, 0, 0] * 16).tolist() == [4, 112]


# -- a net with every formattable type --------------------------------------------------------
def _format(bits, fl_in, fl_out, fl_params=None):
    text = f"bw_layer_in: {bits} fl_layer_in: {fl_in} bw_layer_out: {bits} fl_layer_out: {fl_out}"
    if fl_params is not None:
        text += f" bw_params: {bits} fl_params: {fl_params}"
    return "quantization_param { " + text + " }"


ALL_TYPES = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 9 dim: 9 } } }
layer { name: "conv" type: "ConvolutionRistretto" bottom: "data" top: "conv"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 }
  quantization_param { bw_layer_in: 8 fl_layer_in: 5 bw_layer_out: 8 fl_layer_out: 4 bw_params: 7 fl_params: 6 } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" %(bn)s }
layer { name: "scale" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } %(scale)s }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" %(relu)s }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } %(pool)s }
layer { name: "side" type: "ConvolutionRistretto" bottom: "data" top: "side"
  convolution_param { num_output: 4 kernel_size: 3 stride: 2 pad: 1 }
  quantization_param { bw_layer_in: 8 fl_layer_in: 5 bw_layer_out: 8 fl_layer_out: 3 bw_params: 7 fl_params: 6 } }
layer { name: "prelu" type: "PReLU" bottom: "side" top: "side" %(prelu)s }
layer { name: "sum" type: "Eltwise" bottom: "pool" bottom: "side" top: "sum" %(sum)s }
layer { name: "maxp" type: "Pooling" bottom: "sum" top: "maxp" pooling_param { pool: MAX kernel_size: 2 stride: 1 } %(maxp)s }
layer { name: "leaky" type: "ReLU" bottom: "sum" top: "leaky" relu_param { negative_slope: 0.1 } %(leaky)s }
layer { name: "cut" type: "Pooling" bottom: "leaky" top: "cut" pooling_param { pool: MAX kernel_size: 2 stride: 1 } }
layer { name: "cat" type: "Concat" bottom: "maxp" bottom: "cut" top: "cat" %(cat)s }
layer { name: "bias" type: "Bias" bottom: "cat" top: "cat" %(bias)s }
layer { name: "fc" type: "FcRistretto" bottom: "cat" top: "fc" inner_product_param { num_output: 5 }
  quantization_param { bw_layer_in: 8 fl_layer_in: 2 bw_layer_out: 8 fl_layer_out: 2 bw_params: 7 fl_params: 7 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""
FORMATS = {"bn": _format(8, 4, 3, 5), "scale": _format(8, 3, 3, 6), "relu": _format(8, 3, 4),
           "pool": _format(8, 4, 4), "prelu": _format(8, 3, 3, 6), "sum": _format(8, 3, 3),
           "maxp": _format(8, 3, 2), "leaky": _format(8, 3, 3, 5), "cat": _format(8, 3, 3),
           "bias": _format(8, 3, 2, 5)}


def all_types_net(formats=FORMATS, seed=0):
    rng = np.random.default_rng(seed)
    blobs = {"conv": [rng.normal(0, 0.3, (4, 3, 3, 3)), rng.normal(0, 0.2, 4)],
             "bn": [rng.normal(0, 0.3, 4), rng.uniform(0.5, 2, 4), np.array([1.0])],
             "scale": [rng.uniform(0.5, 1.5, 4), rng.normal(0, 0.3, 4)],
             "side": [rng.normal(0, 0.3, (4, 3, 3, 3)), rng.normal(0, 0.2, 4)],
             "prelu": [rng.uniform(0.05, 0.3, 4)], "bias": [rng.normal(0, 0.5, 8)],
             "fc": [rng.normal(0, 0.2, (5, 8 * 4 * 4)), rng.normal(0, 0.2, 5)]}
    text = ALL_TYPES % {name: formats.get(name, "") for name in
                        ("bn", "scale", "relu", "pool", "prelu", "sum", "maxp", "leaky", "cat", "bias")}
    return Net.from_proto(net_param(text, blobs))


def all_types_input(seed=1):
    return {"data": np.random.default_rng(seed).uniform(-1.5, 1.5, (2, 3, 9, 9)).astype(np.float32)}


def test_fixed_backend_equals_the_float_emulation_on_every_formatted_type():
    net = all_types_net()
    x = all_types_input()
    runtime = FixedRuntime(net)
    fixed = runtime.forward(x)
    emulated = NumpyRuntime(net).forward(x)
    for blob in ("conv", "pool", "side", "sum", "maxp", "leaky", "cat", "fc"):
        assert np.count_nonzero(fixed[blob] != emulated[blob]) == 0, blob
    assert runtime.how["prob"] == "float"
    assert all(runtime.how[n] == "integer" for n in runtime.how if n != "prob")
    assert "1 in float (prob)" in runtime.describe_how()
    # outputs lie on their formats' grids and within their ranges
    assert np.all(fixed["cat"] * 4 == np.rint(fixed["cat"] * 4))
    assert fixed["maxp"].max() <= 127 / 4 and fixed["cat"].min() >= -128 / 4


def _trim64(x, bits, fl):
    step = 2.0 ** -fl
    return np.rint(np.clip(np.asarray(x, np.float64) / step, -2 ** (bits - 1), 2 ** (bits - 1) - 1)) * step


def test_formatted_layers_against_an_independent_float64_reference():
    """BatchNorm, Scale, ReLU, PReLU, Bias and the aligned Eltwise/Concat recomputed in float64
    from the formats' definitions, on the fixed backend's own inputs."""
    net = all_types_net()
    seen = {}

    def keep(layer, bottoms, tops):
        seen[layer.name] = ([b.astype(np.float64) for b in bottoms], tops[0].astype(np.float64))
    FixedRuntime(net).forward(all_types_input(), observer=keep)
    blobs = {layer.name: layer.blobs for layer in net.layers}
    channel = (1, -1, 1, 1)

    def check(name, compute, fl_in, fl_out, bits=8):
        inputs, got = seen[name]
        expected = _trim64(compute(*[_trim64(b, bits, fl_in) for b in inputs]), bits, fl_out)
        np.testing.assert_array_equal(got, expected, err_msg=name)

    mean, var, factor = (np.ravel(b) for b in blobs["bn"])
    a = _trim64(1 / np.sqrt(var / factor[0] + 1e-5).astype(np.float32), 8, 5)
    b = _trim64((-(mean / factor[0]) * (1 / np.sqrt(var / factor[0] + 1e-5))).astype(np.float32), 8, 5)
    check("bn", lambda x: x * a.reshape(channel) + b.reshape(channel), 4, 3)
    s, t = (_trim64(v, 8, 6).reshape(channel) for v in blobs["scale"])
    check("scale", lambda x: x * s + t, 3, 3)
    check("relu", lambda x: np.maximum(x, 0), 3, 4)
    slope = _trim64(blobs["prelu"][0], 8, 6).reshape(channel)
    check("prelu", lambda x: np.where(x > 0, x, x * slope), 3, 3)
    check("sum", lambda x, y: x + y, 3, 3)
    check("leaky", lambda x: np.where(x > 0, x, x * _trim64(0.1, 8, 5)), 3, 3)
    check("cat", lambda x, y: np.concatenate([x, y], axis=1), 3, 3)
    bias = _trim64(blobs["bias"][0], 8, 5).reshape(channel)
    check("bias", lambda x: x + bias, 3, 2)


def test_float_onnx_export_of_formatted_layers_equals_the_emulation():
    from ristretto_py.runtime import make_runtime
    net = all_types_net()
    x = all_types_input()
    emulated = NumpyRuntime(net).forward(x)
    exported = make_runtime(net, "onnxruntime").forward(x)
    for blob in ("conv", "pool", "sum", "cat", "fc"):
        np.testing.assert_array_equal(exported[blob], emulated[blob], err_msg=blob)


@pytest.mark.parametrize("text, message", [
    ('layer { name: "sm" type: "Softmax" bottom: "data" top: "sm" quantization_param { bw_layer_in: 8 } }',
     "quantization_param on a Softmax layer"),
    ('layer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param { pool: MAX kernel_size: 2 } '
     'quantization_param { precision: MINIFLOAT } }', "must be DYNAMIC_FIXED_POINT"),
    ('layer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param { pool: STOCHASTIC kernel_size: 2 } '
     'quantization_param { bw_layer_in: 8 } }', "STOCHASTIC pooling has no fixed-point form"),
    ('layer { name: "r" type: "ReLU" bottom: "data" top: "r" quantization_param { bw_layer_in: 40 } }',
     "bw_layer_in must be 2 to 32 bits"),
])
def test_formats_the_layer_cannot_hold_are_refused_by_name(text, message):
    with pytest.raises(NetError) as info:
        _single(text)
    assert message in str(info.value)
    assert "'" in str(info.value) and "\n" not in str(info.value)


# -- the quantize pass ------------------------------------------------------------------------
def test_aligned_lengths_give_an_eltwise_and_its_writers_one_length():
    from ristretto_py.passes.ristretto_edit import IntegerLengths, aligned_lengths
    param = net_param(INPUT + """
layer { name: "a" type: "Convolution" bottom: "data" top: "a" convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "r" type: "ReLU" bottom: "a" top: "a" }
layer { name: "b" type: "Convolution" bottom: "data" top: "b" convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "sum" }
""")
    lengths = {"a": IntegerLengths(1, 3, 0), "r": IntegerLengths(3, 2), "b": IntegerLengths(1, 5, 0),
               "sum": IntegerLengths(4, 6)}
    aligned = aligned_lengths(param, lengths)
    # the writers of "a" and "b" as the Eltwise reads them are r (in place) and b: max(4, 2, 5)
    assert aligned["sum"].layer_in == 5 and aligned["r"].layer_out == 5 and aligned["b"].layer_out == 5
    assert aligned["a"] == lengths["a"] and aligned["sum"].layer_out == 6


def test_quantize_all_layers_searches_and_writes_stock_formats(tmp_path, monkeypatch, capsys):
    import pathlib
    from ristretto_py.cli import quantize
    root = pathlib.Path(__file__).resolve().parents[1]
    example = root / "examples" / "lenet_fashion"
    monkeypatch.chdir(root)
    common = ["--model", str(example / "lenet_train_test.prototxt"),
              "--weights", str(example / "lenet_fashion.caffemodel"),
              "--trimming_mode", "dynamic_fixed_point", "--all_layers", "--iterations", "2",
              "--error_margin", "1", "--quiet"]
    uniform, per_layer = tmp_path / "u.prototxt", tmp_path / "p.prototxt"
    assert quantize.main(common + ["--model_quantized", str(uniform)]) == 0
    assert quantize.main(common + ["--model_quantized", str(per_layer), "--search", "per_layer"]) == 0
    printed = capsys.readouterr().out
    assert "pool1: no weights" in printed and "pool1: input" in printed
    for path in (uniform, per_layer):
        net = Net.load(path, example / "lenet_fashion.caffemodel")
        formatted = {l.name for l, impl in zip(net.layers, net.impls) if impl.layer_format is not None}
        assert formatted == {"pool1", "pool2", "relu1"}
        runtime = FixedRuntime(net)
        from ristretto_py.evaluators.classification import fetch_batches
        runtime.forward(fetch_batches(net, 1, seed=0)[0])
        assert {n for n, how in runtime.how.items() if how == "float"} == {"accuracy", "accuracy_top5", "loss"}
    net = Net.load(uniform, example / "lenet_fashion.caffemodel")
    conv2 = net.impls[[l.name for l in net.layers].index("conv2")].precision
    assert net.impls[[l.name for l in net.layers].index("pool2")].layer_format.bw_layer_in == conv2.bw_layer_out
    capsys.readouterr()
    assert quantize.main(common[:4] + ["--trimming_mode", "minifloat", "--all_layers",
                                       "--model_quantized", str(tmp_path / "m.prototxt")]) == 2
    assert "--all_layers works on --trimming_mode dynamic_fixed_point" in capsys.readouterr().err
