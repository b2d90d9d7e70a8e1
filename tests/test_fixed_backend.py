"""The fixed-point kernel backend against an independent float64 emulation of Ristretto's layers
(written here with sliding windows and einsum), accumulator overflow by hand, the float32
difference report, and convolution from k-means indices and a codebook."""
import pathlib

import numpy as np
import pytest

from ristretto_py import Net, caffe_io
from ristretto_py.evaluators.classification import fetch_batches
from ristretto_py.layers.conv import convolve, convolve_indexed
from ristretto_py.passes import ranges, ristretto_edit
from ristretto_py.runtime import FixedRuntime, NumpyRuntime
from conftest import net_param

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODEL = ROOT / "examples" / "lenet_fashion" / "lenet_train_test.prototxt"
WEIGHTS = ROOT / "examples" / "lenet_fashion" / "lenet_fashion.caffemodel"


def _trim64(x, bw, fl):
    """Ristretto's fixed-point trimming in float64 (half to even), without a float32 cast."""
    step = 2.0 ** -fl
    clamped = np.clip(np.asarray(x, np.float64), -(2.0 ** (bw - 1)) * step, (2.0 ** (bw - 1) - 1) * step)
    return np.rint(clamped / step) * step


def _conv64(x, w, b, pad):
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    windows = np.lib.stride_tricks.sliding_window_view(x, w.shape[2:], axis=(2, 3))
    return np.einsum("nchwij,ocij->nohw", windows, w) + b.reshape(1, -1, 1, 1)


def _emulate64(net, batch):
    """Every blob of the DFP LeNet in float64, layer by layer (MAX pooling 2x2, ReLU)."""
    blobs = {"data": batch["data"].astype(np.float64)}
    for layer in net.layers:
        if layer.type in ("ConvolutionRistretto", "FcRistretto"):
            q = layer.spec.quantization_param
            x = _trim64(blobs[layer.bottoms[0]], q.bw_layer_in, q.fl_layer_in)
            w = _trim64(layer.blobs[0], q.bw_params, q.fl_params)
            b = _trim64(layer.blobs[1], q.bw_params, q.fl_params)
            y = _conv64(x, w, b, 0) if layer.type == "ConvolutionRistretto" else x.reshape(len(x), -1) @ w.T + b
            blobs[layer.tops[0]] = _trim64(y, q.bw_layer_out, q.fl_layer_out)
        elif layer.type == "Pooling":
            x = blobs[layer.bottoms[0]]
            n, c, h, w = x.shape
            blobs[layer.tops[0]] = x.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))
        elif layer.type == "ReLU":
            blobs[layer.tops[0]] = np.maximum(blobs[layer.bottoms[0]], 0)
    return blobs


@pytest.fixture(scope="module")
def dfp_net(tmp_path_factory):
    import os
    here = os.getcwd()
    os.chdir(ROOT)
    try:
        param = caffe_io.read_net_text(MODEL)
        train = Net.load(MODEL, WEIGHTS, phase="TRAIN")
        found = ranges.analyze_ranges(train, fetch_batches(train, 2), rule="safe")
        lengths = {k: ristretto_edit.IntegerLengths(*ranges.integer_lengths(v, "safe")) for k, v in found.items()}
        edited = ristretto_edit.dynamic_fixed_point(param, lengths, "Convolution_and_InnerProduct",
                                                    "Parameters_and_Activations", 6, 6, 10, 10)
        path = tmp_path_factory.mktemp("fixed") / "dfp.prototxt"
        caffe_io.write_net_text(edited, path)
        net = Net.load(path, WEIGHTS)
        return net, fetch_batches(net, 1)[0]
    finally:
        os.chdir(here)


def test_fixed_backend_equals_the_float64_emulation(dfp_net):
    net, batch = dfp_net
    runtime = FixedRuntime(net)
    ours = runtime.forward(batch)
    expected = _emulate64(net, batch)
    for blob in ("conv1", "pool1", "conv2", "pool2", "ip1", "ip2"):
        np.testing.assert_array_equal(ours[blob], expected[blob].astype(np.float32), err_msg=blob)
    # the float32 emulation of Ristretto agrees here too (10-bit activations, 6-bit weights)
    assert sum(r.float32_differs for r in runtime.report.values()) == 0
    assert set(runtime.report) == {"conv1", "conv2", "ip1", "ip2"}


def test_report_counts_float32_accumulation_differences(dfp_net, tmp_path):
    net, batch = dfp_net
    # 24-bit activations with 16-bit weights: sums exceed float32's 24-bit significand
    param = net.to_proto()
    for layer in param.layer:
        if layer.type in ("ConvolutionRistretto", "FcRistretto"):
            q = layer.quantization_param
            q.bw_layer_out, q.fl_layer_out = 24, 24 - 5
            q.bw_layer_in, q.fl_layer_in = 24, 24 - 5
            q.bw_params, q.fl_params = 16, 16
    wide = Net.from_proto(param, caffe_io.read_net_binary(WEIGHTS))
    runtime = FixedRuntime(wide)
    ours = runtime.forward(batch)
    expected = _emulate64(wide, batch)
    np.testing.assert_array_equal(ours["ip2"], expected["ip2"].astype(np.float32))
    float32 = NumpyRuntime(wide).forward(batch)
    assert runtime.report["ip2"].float32_differs > 0
    # the count is where Ristretto's float32 layer output on the same input differs from ours
    assert np.count_nonzero(float32["conv1"] != ours["conv1"]) == runtime.report["conv1"].float32_differs


def test_accumulator_wraps_or_saturates_in_order():
    text = ('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 4 } } }\n'
            'layer { name: "fc" type: "FcRistretto" bottom: "data" top: "fc" '
            'inner_product_param { num_output: 1 bias_term: false } '
            'quantization_param { bw_layer_in: 8 fl_layer_in: 0 bw_layer_out: 32 fl_layer_out: 0 '
            'bw_params: 8 fl_params: 0 } }')
    net = Net.from_proto(net_param(text, {"fc": [np.full((1, 4), 127.0)]}))
    plus = {"data": np.array([[127, 127, 127, 127]], np.float32)}
    mixed = {"data": np.array([[127, 127, 127, -127]], np.float32)}
    assert FixedRuntime(net).forward(plus)["fc"][0, 0] == 4 * 16129
    wrap = FixedRuntime(net, acc_bits=16, overflow="wrap")
    assert wrap.forward(plus)["fc"][0, 0] == 4 * 16129 - 65536           # 64516 wraps to -1020
    assert wrap.report["fc"].overflows == 1
    saturate = FixedRuntime(net, acc_bits=16, overflow="saturate")
    assert saturate.forward(plus)["fc"][0, 0] == 32767
    # in order: 16129, 32258, 32767 (clipped), 32767 - 16129 = 16638; the exact sum is 32258
    assert saturate.forward(mixed)["fc"][0, 0] == 16638
    assert saturate.report["fc"].overflows == 1


def test_convolution_from_codebook_indices():
    rng = np.random.default_rng(4)
    codebook = np.array([-0.75, -0.25, 0.0, 0.5, 1.5])
    indices = rng.integers(0, 5, (6, 2, 3, 3))
    x = rng.integers(-8, 8, (2, 4, 7, 7)).astype(np.float64)
    bias = rng.standard_normal(6)
    ours = convolve_indexed(x, indices, codebook, bias, (1, 1), (1, 1), (1, 1), 2)
    weights = codebook[indices]
    reference = convolve(x, weights, bias, (1, 1), (1, 1), (1, 1), 2)
    np.testing.assert_allclose(ours, reference, rtol=1e-6, atol=1e-5)
    # with integer inputs and dyadic centroids every sum is exact: equal to the float64 result
    exact = np.zeros_like(ours)
    for g in range(2):
        exact[:, 3 * g:3 * g + 3] = _conv64(x[:, 2 * g:2 * g + 2], weights[3 * g:3 * g + 3], bias[3 * g:3 * g + 3], 1)
    np.testing.assert_array_equal(ours, exact)


def test_refuses_what_integers_cannot_run(tmp_path):
    from ristretto_py.errors import UnsupportedError
    text = ('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 4 } } }\n'
            'layer { name: "fc" type: "FcRistretto" bottom: "data" top: "fc" '
            'inner_product_param { num_output: 1 bias_term: false } '
            'quantization_param { precision: MINIFLOAT } }')
    with pytest.raises(UnsupportedError, match="DYNAMIC_FIXED_POINT"):
        FixedRuntime(Net.from_proto(net_param(text, {"fc": [np.ones((1, 4))]})))


def _conv64_general(x, w, b, stride, pad):
    x = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    windows = np.lib.stride_tricks.sliding_window_view(x, w.shape[2:], axis=(2, 3))
    windows = windows[:, :, ::stride[0], ::stride[1]]
    return np.tensordot(windows, w, axes=([1, 4, 5], [1, 2, 3])).transpose(0, 3, 1, 2) + b.reshape(1, -1, 1, 1)


@pytest.mark.slow
def test_folded_open_nsfw_in_dynamic_fixed_point(real_models):
    import cv2
    from ristretto_py.passes.fold_bn import fold_batchnorm
    files = real_models("open_nsfw")
    folded, _ = fold_batchnorm(Net.load(files.prototxt, files.caffemodel))
    image = cv2.imread(str(real_models("mtcnn_pnet").images[0]))
    x = cv2.dnn.blobFromImage(image, 1.0, (224, 224), (104, 117, 123))
    found = ranges.analyze_ranges(folded, [{"data": x}], rule="safe")
    lengths = {k: ristretto_edit.IntegerLengths(*ranges.integer_lengths(v, "safe")) for k, v in found.items()}
    widths = {name: (8, 8) for name in found}
    param = ristretto_edit.per_layer_dynamic_fixed_point(folded.to_proto(), lengths, widths)
    net = Net.from_proto(param, folded.to_proto(include_blobs=True))
    runtime = FixedRuntime(net)
    seen = {}

    def keep(layer, bottoms, tops):
        if layer.type == "ConvolutionRistretto":
            seen[layer.name] = (bottoms[0].astype(np.float64), tops[0].copy())
    runtime.forward({"data": x}, observer=keep)
    # an independent float64 emulation of every Ristretto layer on the same input values
    for layer, impl in zip(net.layers, net.impls):
        if layer.type != "ConvolutionRistretto":
            continue
        q = layer.spec.quantization_param
        bottom, got = seen[layer.name]
        xin = _trim64(bottom, q.bw_layer_in, q.fl_layer_in)
        w = _trim64(layer.blobs[0], q.bw_params, q.fl_params)
        b = _trim64(layer.blobs[1], q.bw_params, q.fl_params)
        expected = _trim64(_conv64_general(xin, w, b, impl.stride, impl.pad), q.bw_layer_out, q.fl_layer_out)
        np.testing.assert_array_equal(got, expected.astype(np.float32), err_msg=layer.name)
    assert len(seen) == 53
    assert sum(r.overflows for r in runtime.report.values()) == 0


def test_evaluate_with_the_fixed_backend(dfp_net, tmp_path, capsys, monkeypatch):
    from ristretto_py.cli import evaluate
    net, _ = dfp_net
    monkeypatch.chdir(ROOT)
    path = tmp_path / "dfp.prototxt"
    caffe_io.write_net_text(net.to_proto(), path)
    args = ["--model", str(path), "--weights", str(WEIGHTS), "--iterations", "2", "--quiet"]
    assert evaluate.main(args + ["--json"]) == 0
    numpy_scores = capsys.readouterr().out
    assert evaluate.main(args + ["--json", "--backend", "fixed"]) == 0
    assert capsys.readouterr().out.replace('"fixed"', '"numpy"') == numpy_scores
    assert evaluate.main(args + ["--backend", "fixed", "--acc-bits", "12", "--overflow", "saturate"]) == 0
    assert "accumulator overflows" in capsys.readouterr().out
    assert evaluate.main(args + ["--backend", "fixed", "--acc-bits", "4"]) == 2


def test_max_pooling_keeps_wide_mantissas_exact():
    # 31-bit mantissas do not fit float32's significand: pooling must compare the integers
    text = ('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 4 dim: 4 } } }\n'
            'layer { name: "conv" type: "ConvolutionRistretto" bottom: "data" top: "conv" '
            'convolution_param { num_output: 1 kernel_size: 1 bias_term: false } '
            'quantization_param { bw_layer_in: 32 fl_layer_in: 28 bw_layer_out: 32 fl_layer_out: 28 '
            'bw_params: 8 fl_params: 6 } }\n'
            'layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }')
    net = Net.from_proto(net_param(text, {"conv": [np.ones((1, 1, 1, 1))]}))
    x = (np.random.default_rng(9).random((1, 1, 4, 4)) * 7).astype(np.float32)
    x64 = _trim64(x, 32, 28)
    expected = x64.reshape(1, 1, 2, 2, 2, 2).max(axis=(3, 5))
    ours = FixedRuntime(net).forward({"data": x})
    assert np.array_equal(ours["pool"], expected.astype(np.float32))
    mantissas = np.rint(expected * 2 ** 28)
    assert mantissas.max() > 2 ** 24          # the case float32 pooling would get wrong
