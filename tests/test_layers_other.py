"""BatchNorm, Scale, Bias, LRN, Softmax, Eltwise, the shape layers and the scoring layers:
hand-computed cases for Caffe's rules, OpenCV's Caffe importer where it has the layer, and
onnxruntime for every exportable layer (also with another batch size than the prototxt's)."""
import numpy as np
import pytest

from ristretto_py import Net
from ristretto_py.errors import NetError
from ristretto_py.runtime import NumpyRuntime, OnnxRuntime
from conftest import close_to, opencv_forward, net_param, write_model

INPUT = 'layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: {dims} }} }} }}\n'


def _net(tmp_path, body, dims, blobs=None, inputs=None):
    text = INPUT.format(dims=" dim: ".join(str(d) for d in dims)) + (inputs or "") + body
    model, weights = write_model(tmp_path, text, blobs)
    return model, weights, Net.load(model, weights)


def _opencv(model, weights, x, names):
    return opencv_forward(model, weights, x, names)


def _close(ours, reference, tolerance=1e-5):
    return close_to(ours, reference, tolerance)


def _check_backends(net, x, blob, batch=None):
    ours = NumpyRuntime(net).forward({"data": x})[blob]
    assert _close(OnnxRuntime(net).forward({"data": x})[blob], ours)
    if batch:   # the exported batch is dynamic: a bigger batch gives the same rows
        bigger = np.concatenate([x] * batch)
        out = OnnxRuntime(net.with_input_shapes({"data": bigger.shape})).forward({"data": bigger})[blob]
        assert _close(out[:len(x)], ours) and _close(out[len(x):2 * len(x)], ours)
    return ours


RNG = np.random.default_rng(11)
X4 = RNG.standard_normal((2, 6, 5, 4)).astype(np.float32)


def test_batchnorm_scale_factor_and_zero_factor(tmp_path):
    mean, var = np.arange(6, dtype=np.float32), np.arange(1, 7, dtype=np.float32)
    body = 'layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" batch_norm_param { eps: 0.001 } }'
    for factor in (2.0, 0.0):
        model, weights, net = _net(tmp_path, body, X4.shape, {"bn": [mean * 2, var * 2, [factor]]})
        ours = _check_backends(net, X4, "bn", batch=2)
        m, v = (mean, var) if factor else (np.zeros(6), np.zeros(6))
        expected = (X4 - m.reshape(1, 6, 1, 1)) / np.sqrt(v.reshape(1, 6, 1, 1) + 0.001)
        assert _close(ours, expected)
        if factor:
            assert _close(ours, _opencv(model, weights, X4, "bn"))


def test_batchnorm_in_train_phase_uses_batch_statistics():
    text = (INPUT.format(dims="2 dim: 6 dim: 5 dim: 4") +
            'layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" }')
    param = net_param(text, {"bn": [np.ones(6), np.ones(6), [1.0]]})
    ours = NumpyRuntime(Net.from_proto(param, phase="TRAIN")).forward({"data": X4})["bn"]
    x = X4.astype(np.float64)
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    var = x.var(axis=(0, 2, 3), keepdims=True)
    assert _close(ours, (x - mean) / np.sqrt(var + 1e-5))


@pytest.mark.parametrize("param, blob_shapes", [
    ("bias_term: true", [(6,), (6,)]),
    ("axis: 1 num_axes: 2", [(6, 5)]),
    ("axis: -1", [(4,)]),
    ("num_axes: 0", [()]),
])
def test_scale_broadcasting_matches_opencv(tmp_path, param, blob_shapes):
    blobs = [RNG.standard_normal(s).astype(np.float32) for s in blob_shapes]
    body = f'layer {{ name: "sc" type: "Scale" bottom: "data" top: "sc" scale_param {{ {param} }} }}'
    model, weights, net = _net(tmp_path, body, X4.shape, {"sc": blobs})
    ours = _check_backends(net, X4, "sc", batch=2)
    axis = {"axis: -1": 3, "num_axes: 0": 0}.get(param, 1)
    scale = blobs[0].reshape((1,) * axis + blobs[0].shape + (1,) * (4 - axis - blobs[0].ndim))
    expected = X4 * scale + (blobs[1].reshape(1, 6, 1, 1) if len(blobs) > 1 else 0)
    assert _close(ours, expected)
    if axis == 1:   # OpenCV's importer mishandles other axes
        assert _close(ours, _opencv(model, weights, X4, "sc"))


def test_scale_and_bias_with_a_second_bottom(tmp_path):
    extra = ('layer { name: "s" type: "Input" top: "s" input_param { shape { dim: 2 dim: 6 } } }\n')
    body = ('layer { name: "sc" type: "Scale" bottom: "data" bottom: "s" top: "sc" scale_param { axis: 0 } }\n'
            'layer { name: "b" type: "Bias" bottom: "sc" bottom: "s" top: "b" bias_param { axis: 0 } }')
    _, _, net = _net(tmp_path, body, X4.shape, inputs=extra)
    s = RNG.standard_normal((2, 6)).astype(np.float32)
    ours = NumpyRuntime(net).forward({"data": X4, "s": s})["b"]
    assert _close(ours, X4 * s[:, :, None, None] + s[:, :, None, None])


def test_bias_layer_and_shape_error(tmp_path):
    bias = RNG.standard_normal(6).astype(np.float32)
    body = 'layer { name: "b" type: "Bias" bottom: "data" top: "b" }'
    _, _, net = _net(tmp_path, body, X4.shape, {"b": [bias]})
    assert _close(_check_backends(net, X4, "b", batch=2), X4 + bias.reshape(1, 6, 1, 1))
    text = INPUT.format(dims="2 dim: 6 dim: 5 dim: 4") + \
        'layer { name: "b" type: "Bias" bottom: "data" top: "b" bias_param { axis: 3 num_axes: 2 } }'
    with pytest.raises(NetError, match="exceeds"):
        Net.from_proto(net_param(text)).shapes()


@pytest.mark.parametrize("param", [
    "local_size: 5 alpha: 0.0001 beta: 0.75",
    "local_size: 3 alpha: 0.5 beta: 0.6 k: 2",
    "local_size: 3 alpha: 0.5 beta: 0.75 norm_region: WITHIN_CHANNEL",
])
def test_lrn_matches_opencv(tmp_path, param):
    x = (X4 * 10).astype(np.float32)
    body = f'layer {{ name: "lrn" type: "LRN" bottom: "data" top: "lrn" lrn_param {{ {param} }} }}'
    model, weights, net = _net(tmp_path, body, x.shape)
    ours = _check_backends(net, x, "lrn", batch=2)
    size, alpha, beta = int(param.split()[1]), float(param.split()[3]), float(param.split()[5])
    k = 2.0 if "k: 2" in param else 1.0
    x64, half = x.astype(np.float64), (size - 1) // 2
    if "WITHIN" in param:
        padded = np.pad(x64 ** 2, ((0, 0), (0, 0), (half, half), (half, half)))
        sums = sum(padded[:, :, i:i + x.shape[2], j:j + x.shape[3]] for i in range(size) for j in range(size))
        expected = x64 * (1 + alpha * sums / size ** 2) ** -beta
    else:
        padded = np.pad(x64 ** 2, ((0, 0), (half, half), (0, 0), (0, 0)))
        sums = sum(padded[:, i:i + x.shape[1]] for i in range(size))
        expected = x64 * (k + alpha / size * sums) ** -beta
    assert _close(ours, expected, 1e-5)
    if k == 1.0:   # OpenCV's importer ignores k
        assert _close(ours, _opencv(model, weights, x, "lrn"), 1e-5)


def test_lrn_across_channels_hand_case(tmp_path):
    x = np.array([1, 2, 3], np.float32).reshape(1, 3, 1, 1)
    body = 'layer { name: "lrn" type: "LRN" bottom: "data" top: "lrn" lrn_param { local_size: 3 alpha: 3 beta: 1 k: 1 } }'
    _, _, net = _net(tmp_path, body, x.shape)
    ours = NumpyRuntime(net).forward({"data": x})["lrn"].ravel()
    # scale_c = 1 + 3/3 * sum of squares over c-1..c+1 (zero-padded): 6, 15, 14
    np.testing.assert_allclose(ours, [1 / 6, 2 / 15, 3 / 14], rtol=1e-6)


@pytest.mark.parametrize("axis", [1, 3, -2])
def test_softmax_matches_opencv(tmp_path, axis):
    body = f'layer {{ name: "sm" type: "Softmax" bottom: "data" top: "sm" softmax_param {{ axis: {axis} }} }}'
    model, weights, net = _net(tmp_path, body, X4.shape)
    ours = _check_backends(net, X4 * 20, "sm", batch=2)
    e = np.exp(X4.astype(np.float64) * 20 - (X4 * 20).max(axis=axis, keepdims=True))
    assert _close(ours, e / e.sum(axis=axis, keepdims=True))
    if axis == 1:
        assert _close(ours, _opencv(model, weights, X4 * 20, "sm"))


@pytest.mark.parametrize("param, formula", [
    ("operation: SUM", lambda a, b, c: a + b + c),
    ("operation: SUM coeff: 1 coeff: -2 coeff: 0.5", lambda a, b, c: a - 2 * b + 0.5 * c),
    ("operation: PROD", lambda a, b, c: a * b * c),
    ("operation: MAX", lambda a, b, c: np.maximum(np.maximum(a, b), c)),
])
def test_eltwise_matches_formula_and_opencv(tmp_path, param, formula):
    body = ('layer { name: "r1" type: "ReLU" bottom: "data" top: "r1" relu_param { negative_slope: 0.5 } }\n'
            'layer { name: "r2" type: "AbsVal" bottom: "data" top: "r2" }\n'
            f'layer {{ name: "e" type: "Eltwise" bottom: "data" bottom: "r1" bottom: "r2" top: "e" '
            f'eltwise_param {{ {param} }} }}')
    model, weights, net = _net(tmp_path, body, X4.shape)
    ours = _check_backends(net, X4, "e", batch=2)
    r1 = np.where(X4 > 0, X4, X4 * 0.5)
    assert _close(ours, formula(X4, r1, np.abs(X4)))
    assert _close(ours, _opencv(model, weights, X4, "e"))


def test_eltwise_rejects_bad_coefficients_and_shapes():
    text = (INPUT.format(dims="2 dim: 6 dim: 5 dim: 4") +
            'layer { name: "e" type: "Eltwise" bottom: "data" bottom: "data" top: "e" '
            'eltwise_param { coeff: 1 } }')
    with pytest.raises(NetError, match="coeff"):
        Net.from_proto(net_param(text))


# -- shape layers -----------------------------------------------------------------------------

@pytest.mark.parametrize("body, expected_shape, formula", [
    ('layer { name: "c" type: "Concat" bottom: "data" bottom: "data" top: "out" concat_param { axis: 2 } }',
     (2, 6, 10, 4), lambda x: np.concatenate([x, x], 2)),
    ('layer { name: "c" type: "Concat" bottom: "data" bottom: "data" top: "out" }',
     (2, 12, 5, 4), lambda x: np.concatenate([x, x], 1)),
    ('layer { name: "f" type: "Flatten" bottom: "data" top: "out" }', (2, 120), lambda x: x.reshape(2, -1)),
    ('layer { name: "f" type: "Flatten" bottom: "data" top: "out" flatten_param { axis: 2 } }',
     (2, 6, 20), lambda x: x.reshape(2, 6, 20)),
    ('layer { name: "r" type: "Reshape" bottom: "data" top: "out" reshape_param { shape { dim: 0 dim: -1 dim: 4 } } }',
     (2, 30, 4), lambda x: x.reshape(2, 30, 4)),
    ('layer { name: "r" type: "Reshape" bottom: "data" top: "out" '
     'reshape_param { shape { dim: 3 dim: 2 } axis: 1 num_axes: 1 } }',
     (2, 3, 2, 5, 4), lambda x: x.reshape(2, 3, 2, 5, 4)),
    ('layer { name: "r" type: "Reshape" bottom: "data" top: "out" '
     'reshape_param { shape { dim: 1 } axis: -1 num_axes: 0 } }',
     (2, 6, 5, 4, 1), lambda x: x.reshape(2, 6, 5, 4, 1)),
    ('layer { name: "p" type: "Permute" bottom: "data" top: "out" permute_param { order: 0 order: 2 order: 3 order: 1 } }',
     (2, 5, 4, 6), lambda x: x.transpose(0, 2, 3, 1)),
    ('layer { name: "p" type: "Permute" bottom: "data" top: "out" permute_param { order: 0 order: 3 } }',
     (2, 4, 6, 5), lambda x: x.transpose(0, 3, 1, 2)),
])
def test_shape_layers_hand_cases(tmp_path, body, expected_shape, formula):
    model, weights, net = _net(tmp_path, body, X4.shape)
    assert net.shapes()["out"] == expected_shape
    ours = _check_backends(net, X4, "out", batch=3)
    np.testing.assert_array_equal(ours, formula(X4))
    if ("Reshape" not in body or "dim: 0 dim: -1" in body) and "order: 0 order: 3 }" not in body:
        assert _close(ours.reshape(-1), _opencv(model, weights, X4, ours_name(body)).reshape(-1), 0)


def ours_name(body):
    return body.split('name: "')[1].split('"')[0]


@pytest.mark.parametrize("param, sizes", [
    ("slice_point: 1 slice_point: 4", [1, 3, 2]),
    ("", [2, 2, 2]),
    ("axis: 2 slice_point: 2 slice_point: 3", None),
])
def test_slice(tmp_path, param, sizes):
    body = (f'layer {{ name: "s" type: "Slice" bottom: "data" top: "a" top: "b" top: "c" '
            f'slice_param {{ {param} }} }}')
    model, weights, net = _net(tmp_path, body, X4.shape)
    axis = 2 if "axis: 2" in param else 1
    bounds = np.cumsum(sizes)[:-1] if sizes else [2, 3]
    parts = np.split(X4, bounds, axis=axis)
    for name, part in zip("abc", parts):
        assert net.shapes()[name] == part.shape
        np.testing.assert_array_equal(_check_backends(net, X4, name, batch=2), part)


def test_split_and_crop(tmp_path):
    extra = 'layer { name: "ref" type: "Input" top: "ref" input_param { shape { dim: 2 dim: 6 dim: 3 dim: 2 } } }\n'
    body = ('layer { name: "sp" type: "Split" bottom: "data" top: "d1" top: "d2" }\n'
            'layer { name: "crop" type: "Crop" bottom: "d1" bottom: "ref" top: "crop" '
            'crop_param { axis: 2 offset: 1 offset: 2 } }\n'
            'layer { name: "crop1" type: "Crop" bottom: "d2" bottom: "ref" top: "crop1" crop_param { offset: 1 } }')
    model, weights, net = _net(tmp_path, body, X4.shape, inputs=extra)
    ref = np.zeros((2, 6, 3, 2), np.float32)
    blobs = NumpyRuntime(net).forward({"data": X4, "ref": ref})
    np.testing.assert_array_equal(blobs["crop"], X4[:, :, 1:4, 2:4])
    np.testing.assert_array_equal(blobs["crop1"], X4[:, :, 1:4, 1:3])
    onnx = OnnxRuntime(net).forward({"data": X4, "ref": ref})
    np.testing.assert_array_equal(onnx["crop"], blobs["crop"])
    np.testing.assert_array_equal(onnx["crop1"], blobs["crop1"])


@pytest.mark.parametrize("body, message", [
    ('layer { name: "s" type: "Slice" bottom: "data" top: "a" top: "b" top: "c" top: "d" slice_param { axis: 2 } }',
     "does not split evenly"),
    ('layer { name: "r" type: "Reshape" bottom: "data" top: "r" reshape_param { shape { dim: 7 dim: -1 } } }',
     "cannot infer"),
    ('layer { name: "r" type: "Reshape" bottom: "data" top: "r" reshape_param { shape { dim: 2 dim: 7 } } }',
     "needs 14 values"),
    ('layer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param { kernel_size: 2 stride: 2 } }\n'
     'layer { name: "c" type: "Concat" bottom: "data" bottom: "p" top: "c" }', "all but axis 1 must match"),
    ('layer { name: "crop" type: "Crop" bottom: "data" bottom: "data" top: "c" crop_param { offset: 1 } }',
     "exceeds"),
    ('layer { name: "p" type: "Permute" bottom: "data" top: "o" permute_param { order: 1 order: 1 } }',
     "repeats axis 1"),
])
def test_shape_errors_name_the_layer(body, message):
    text = INPUT.format(dims="2 dim: 6 dim: 5 dim: 4") + body
    with pytest.raises(NetError, match=message):
        Net.from_proto(net_param(text)).shapes()


# -- scoring layers ---------------------------------------------------------------------------

SCORES = np.array([[0.1, 0.5, 0.4], [0.3, 0.3, 0.4], [0.2, 0.2, 0.1], [0.9, 0.05, 0.05]], np.float32)
LABELS = np.array([2, 0, 1, 0], np.float32)


def _scoring_net(layers):
    text = ('layer { name: "s" type: "Input" top: "s" input_param { shape { dim: 4 dim: 3 } } }\n'
            'layer { name: "l" type: "Input" top: "l" input_param { shape { dim: 4 } } }\n' + layers)
    return Net.from_proto(net_param(text))


def test_accuracy_counts_ties_against_the_true_class():
    net = _scoring_net(
        'layer { name: "a1" type: "Accuracy" bottom: "s" bottom: "l" top: "a1" }\n'
        'layer { name: "a2" type: "Accuracy" bottom: "s" bottom: "l" top: "a2" accuracy_param { top_k: 2 } }\n'
        'layer { name: "ai" type: "Accuracy" bottom: "s" bottom: "l" top: "ai" top: "pc" '
        'accuracy_param { ignore_label: 2 } }')
    out = NumpyRuntime(net).forward({"s": SCORES, "l": LABELS})
    # top-1: sample 0 wrong (0.5 > 0.4), sample 1 wrong (0.4 > 0.3), sample 2 wrong (tie 0.2 =
    # 0.2 counts against), sample 3 right -> 1/4. top-2: 0 right, 1 wrong (0.3 tie and 0.4),
    # 2 right (one other >=), 3 right -> 3/4.
    assert out["a1"] == np.float32(0.25) and out["a1"].shape == ()
    assert out["a2"] == np.float32(0.75)
    # ignoring label 2 leaves samples 1, 2, 3: one right
    assert out["ai"] == np.float32(1 / 3)
    np.testing.assert_allclose(out["pc"], [0.5, 0.0, 0.0])


def test_softmax_with_loss_normalizations():
    e = np.exp(SCORES.astype(np.float64))
    p = e / e.sum(1, keepdims=True)
    per = -np.log(p[np.arange(4), LABELS.astype(int)])
    net = _scoring_net(
        'layer { name: "v" type: "SoftmaxWithLoss" bottom: "s" bottom: "l" top: "v" }\n'
        'layer { name: "n" type: "SoftmaxWithLoss" bottom: "s" bottom: "l" top: "n" '
        'loss_param { normalization: NONE ignore_label: 0 } }')
    out = NumpyRuntime(net).forward({"s": SCORES, "l": LABELS})
    assert out["v"] == pytest.approx(per.mean(), rel=1e-6)
    assert out["n"] == pytest.approx(per[[0, 2]].sum(), rel=1e-6)


def test_argmax_orders_ties_by_larger_index():
    net = _scoring_net(
        'layer { name: "am" type: "ArgMax" bottom: "s" top: "am" argmax_param { top_k: 2 out_max_val: true } }\n'
        'layer { name: "ax" type: "ArgMax" bottom: "s" top: "ax" argmax_param { axis: 1 } }')
    out = NumpyRuntime(net).forward({"s": SCORES, "l": LABELS})
    assert out["am"].shape == (4, 2, 2)
    np.testing.assert_array_equal(out["am"][:, 0], [[1, 2], [2, 1], [1, 0], [0, 2]])
    np.testing.assert_allclose(out["am"][:, 1], [[0.5, 0.4], [0.4, 0.3], [0.2, 0.2], [0.9, 0.05]])
    np.testing.assert_array_equal(out["ax"].ravel(), [1, 2, 1, 0])


def test_label_out_of_range_is_a_clear_error():
    net = _scoring_net('layer { name: "a1" type: "Accuracy" bottom: "s" bottom: "l" top: "a1" }')
    with pytest.raises(NetError, match="label 7 is outside"):
        NumpyRuntime(net).forward({"s": SCORES, "l": np.array([0, 1, 7, 2], np.float32)})


def test_in_place_layers_never_overwrite_a_shared_blob(tmp_path):
    # The Split's tops share one array: the in-place ReLU on one of them must not change the
    # other; the in-place BatchNorm/Scale chain runs in the bottom's own buffer.
    mean, var = np.zeros(6, np.float32), np.ones(6, np.float32)
    body = ('layer { name: "sp" type: "Split" bottom: "data" top: "a" top: "b" }\n'
            'layer { name: "relu" type: "ReLU" bottom: "a" top: "a" }\n'
            'layer { name: "bn" type: "BatchNorm" bottom: "b" top: "b" batch_norm_param { eps: 0 } }\n'
            'layer { name: "sc" type: "Scale" bottom: "b" top: "b" scale_param { bias_term: true } }\n'
            'layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "sum" }')
    scale, bias = np.full(6, 2, np.float32), np.ones(6, np.float32)
    model, weights, net = _net(tmp_path, body, X4.shape, {"bn": [mean, var, [1.0]], "sc": [scale, bias]})
    x = X4.copy()
    blobs = NumpyRuntime(net).forward({"data": x})
    np.testing.assert_array_equal(x, X4)                    # the caller's array is untouched
    np.testing.assert_array_equal(blobs["data"], X4)
    np.testing.assert_allclose(blobs["sum"], np.maximum(X4, 0) + X4 * 2 + 1, rtol=1e-6)
    assert _close(blobs["sum"], _opencv(model, weights, X4, "sum"))
