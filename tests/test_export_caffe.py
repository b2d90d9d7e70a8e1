"""``tools/export_caffe``: a quantized description (Ristretto layers, a training-time quantizer,
an ActivationQuantize layer) written as stock Caffe. OpenCV's importer (independent) loads the
files and computes what our numpy runtime computes on them; the baked weights are the trimmed
or quantized ones; what stock layers cannot express is named."""
import numpy as np
import pytest

from ristretto_py import Net, numerics
from ristretto_py.cli import export_caffe as export_cli
from ristretto_py.runtime import NumpyRuntime
from conftest import close_to, opencv_forward, write_model

RNG = np.random.default_rng(5)
FORMAT = ("precision: DYNAMIC_FIXED_POINT bw_layer_in: 8 fl_layer_in: 5 bw_layer_out: 8 "
          "fl_layer_out: 3 bw_params: 4 fl_params: 3")
TEXT = (
    'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 '
    'dim: 8 } } }\n'
    f'layer {{ name: "conv" type: "ConvolutionRistretto" bottom: "data" top: "conv" '
    f'convolution_param {{ num_output: 4 kernel_size: 3 }} quantization_param {{ {FORMAT} }} }}\n'
    'layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }\n'
    'layer { name: "q" type: "ActivationQuantize" bottom: "conv" top: "conv" '
    'activation_quantization_param { bits: 4 low: 0 high: 2 } }\n'
    'layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: MAX '
    'kernel_size: 2 stride: 2 } }\n'
    'layer { name: "ip" type: "InnerProduct" bottom: "pool" top: "ip" inner_product_param { '
    'num_output: 5 } weight_quantization_param { method: TERNARY } }\n'
    f'layer {{ name: "fc" type: "FcRistretto" bottom: "ip" top: "fc" inner_product_param {{ '
    f'num_output: 3 }} quantization_param {{ {FORMAT} }} }}\n')


def test_plain_caffe_export_runs_in_opencv_with_the_baked_weights(tmp_path, capsys):
    blobs = {"conv": [RNG.standard_normal((4, 3, 3, 3)) * 0.5, RNG.standard_normal(4) * 0.1],
             "ip": [RNG.standard_normal((5, 36)), RNG.standard_normal(5)],
             "fc": [RNG.standard_normal((3, 5)) * 0.5, RNG.standard_normal(3)]}
    model, weights = write_model(tmp_path, TEXT, blobs)
    out_model, out_weights = tmp_path / "plain.prototxt", tmp_path / "plain.caffemodel"
    assert export_cli.main(["--model", str(model), "--weights", str(weights), "--out_model",
                            str(out_model), "--out_weights", str(out_weights)]) == 0
    printed = capsys.readouterr().out
    assert "weights baked as computed: conv, ip, fc" in printed
    assert "dropped in conv: input and output trimming" in printed
    assert "dropped in q: the layer (an activation quantizer)" in printed
    plain = Net.load(out_model, out_weights)
    assert [l.type for l in plain.layers] == ["Input", "Convolution", "ReLU", "Pooling",
                                              "InnerProduct", "InnerProduct"]
    assert "quantization_param" not in out_model.read_text()
    # By hand: the conv weights on the 4-bit grid of fl 3, the ip weights ternary.
    conv_w = np.asarray(blobs["conv"][0], np.float32)
    np.testing.assert_array_equal(plain.layer("conv").blobs[0],
                                  numerics.trim_fixed_point(conv_w, 4, 3))
    np.testing.assert_array_equal(plain.layer("ip").blobs[0],
                                  numerics.ternarize(np.asarray(blobs["ip"][0], np.float32)))
    x = RNG.random((2, 3, 8, 8)).astype(np.float32)
    ours = NumpyRuntime(plain).forward({"data": x})["fc"]
    assert close_to(ours, opencv_forward(out_model, out_weights, x, "fc"), 1e-5)
    # The input was not modified, and the quantized net still differs (its trimming is gone).
    assert "ConvolutionRistretto" in model.read_text()
    quantized = NumpyRuntime(Net.load(model, weights)).forward({"data": x})["fc"]
    assert not np.array_equal(quantized, ours)


def test_stochastic_rounding_has_no_weights_to_bake(tmp_path, capsys):
    text = TEXT.replace(f"quantization_param {{ {FORMAT} }}",
                        f"quantization_param {{ {FORMAT} rounding_scheme: STOCHASTIC }}", 1)
    blobs = {"conv": [RNG.standard_normal((4, 3, 3, 3)), RNG.standard_normal(4)],
             "ip": [RNG.standard_normal((5, 36)), RNG.standard_normal(5)],
             "fc": [RNG.standard_normal((3, 5)), RNG.standard_normal(3)]}
    model, weights = write_model(tmp_path, text, blobs)
    code = export_cli.main(["--model", str(model), "--weights", str(weights), "--out_model",
                            str(tmp_path / "p.prototxt"), "--out_weights",
                            str(tmp_path / "p.caffemodel")])
    error = capsys.readouterr().err
    assert code == 2 and "conv" in error and "STOCHASTIC" in error
    assert len(error.strip().splitlines()) == 1 and not (tmp_path / "p.prototxt").exists()
