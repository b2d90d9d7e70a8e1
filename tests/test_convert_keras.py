"""Keras models converted to Caffe files, checked against real Keras (torch backend) on real
Fashion-MNIST images: a DenseNet-style extractor, a small residual net, a Flatten+Dense classifier,
each saved as .keras and as legacy .h5; every refusal case; and the chain convert -> fold_bn ->
quantize from the command line."""
import os
import pathlib

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import lmdb  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from keras import layers  # noqa: E402

from ristretto_py import Net  # noqa: E402
from ristretto_py.cli import convert_keras  # noqa: E402
from ristretto_py.protos import caffe_pb2  # noqa: E402
from ristretto_py.runtime import NumpyRuntime, OnnxRuntime  # noqa: E402
from conftest import close_to  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Keras' torch backend warns about numpy 2's copy keyword; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _images(count=16):
    env = lmdb.open(str(ROOT / "examples" / "lenet_fashion" / "fashion_test_lmdb"), readonly=True, lock=False)
    images = []
    with env.begin() as txn:
        for _, value in txn.cursor():
            datum = caffe_pb2.Datum.FromString(value)
            images.append(np.frombuffer(datum.data, np.uint8).reshape(28, 28, 1))
            if len(images) == count:
                break
    env.close()
    return (np.stack(images).astype(np.float32) / 255.0)


def _randomize_batchnorm(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.2, beta.shape),
                               rng.normal(0, 0.3, mean.shape), rng.uniform(0.5, 2.0, var.shape)])


def densenet_like():
    keras.utils.set_random_seed(1)
    inp = keras.Input((28, 28, 1), name="image")
    x = layers.Conv2D(12, 3, padding="same", use_bias=False, name="stem")(inp)
    for block in range(2):
        for i in range(2):
            y = layers.BatchNormalization(name=f"b{block}_{i}_bn")(x)
            y = layers.ReLU(name=f"b{block}_{i}_relu")(y)
            y = layers.Conv2D(6, 3, padding="same", name=f"b{block}_{i}_conv")(y)
            x = layers.Concatenate(name=f"b{block}_{i}_cat")([x, y])
        if block == 0:
            x = layers.BatchNormalization(name="t_bn")(x)
            x = layers.Activation("relu", name="t_relu")(x)
            x = layers.Conv2D(12, 1, name="t_conv")(x)
            x = layers.AveragePooling2D(2, name="t_pool")(x)
    x = layers.BatchNormalization(epsilon=1e-5, name="final_bn")(x)
    x = layers.ReLU(name="final_relu")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    out = layers.Dense(16, name="embedding")(x)
    return keras.Model(inp, out)


def residual():
    keras.utils.set_random_seed(2)
    inp = keras.Input((28, 28, 1))
    x = layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    shortcut = x
    y = layers.Conv2D(8, 3, padding="same")(x)
    y = layers.BatchNormalization()(y)
    y = layers.ReLU(max_value=6.0)(y)
    y = layers.DepthwiseConv2D(3, padding="same", depth_multiplier=1)(y)
    x = layers.Add()([shortcut, y])
    x = layers.LeakyReLU(negative_slope=0.1)(x)
    x = layers.ZeroPadding2D(1)(x)
    x = layers.Conv2D(8, 3, strides=2)(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
    x = layers.GlobalMaxPooling2D()(x)
    out = layers.Dense(10, activation="softmax")(x)
    return keras.Model(inp, out)


def classifier():
    keras.utils.set_random_seed(3)
    return keras.Sequential([keras.Input((28, 28, 1)), layers.Conv2D(6, 5, activation="tanh"),
                             layers.MaxPooling2D(2), layers.Conv2D(8, 3, activation="relu"),
                             layers.AveragePooling2D(2, strides=2), layers.Flatten(),
                             layers.Dense(20, activation="sigmoid"), layers.Dropout(0.5),
                             layers.Dense(10), layers.Softmax()])


@pytest.mark.parametrize("build", [densenet_like, residual, classifier])
@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_converted_model_agrees_with_keras(tmp_path, build, suffix, capsys):
    model = build()
    _randomize_batchnorm(model)
    path = tmp_path / f"model{suffix}"
    model.save(path)
    x = _images()
    expected = model.predict(x, verbose=0)
    prototxt, weights = tmp_path / "m.prototxt", tmp_path / "m.caffemodel"
    assert convert_keras.main(["--input", str(path), "--out-model", str(prototxt),
                               "--out-weights", str(weights), "--input-shape", "16,1,28,28"]) == 0
    net = Net.load(prototxt, weights)
    out = net.output_blobs[-1]
    ours = NumpyRuntime(net).forward({net.input_blobs[0]: x.transpose(0, 3, 1, 2)})[out]
    assert ours.shape == expected.shape
    assert close_to(ours, expected, 1e-4)
    assert close_to(OnnxRuntime(net).forward({net.input_blobs[0]: x.transpose(0, 3, 1, 2)})[out], ours, 1e-5)


def _refused(tmp_path, inputs, outputs, message, capsys, shape=None):
    path = tmp_path / "bad.keras"
    keras.Model(inputs, outputs).save(path)
    args = ["--input", str(path), "--out-model", str(tmp_path / "b.prototxt"),
            "--out-weights", str(tmp_path / "b.caffemodel")] + (["--input-shape", shape] if shape else [])
    assert convert_keras.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "b.prototxt").exists()


@pytest.mark.parametrize("make, message", [
    (lambda x: layers.Conv2D(4, 3, strides=2, padding="same", name="odd")(x), "'odd': Conv2D cannot"),
    (lambda x: layers.AveragePooling2D(3, strides=2, padding="same", name="ap")(x), "Caffe counts the padding"),
    (lambda x: layers.ZeroPadding2D(((1, 0), (1, 0)))(x), "ZeroPadding2D"),
    (lambda x: layers.Activation("gelu", name="g")(x), "activation 'gelu'"),
    (lambda x: layers.LayerNormalization(name="ln")(x), "'ln': LayerNormalization"),
    (lambda x: layers.Reshape((14, 56, 1), name="rs")(x), "reorders elements"),
    (lambda x: layers.ReLU(threshold=0.5, name="th")(x), "threshold"),
])
def test_refusals_name_the_layer_and_the_reason(tmp_path, capsys, make, message):
    inp = keras.Input((28, 28, 1))
    out = make(inp)
    if "ZeroPadding2D" in message:
        out = layers.Conv2D(2, 3)(out)
    _refused(tmp_path, inp, out, message, capsys)


def test_a_bad_file_is_a_clear_error(tmp_path, capsys):
    path = tmp_path / "junk.h5"
    path.write_bytes(b"not hdf5")
    assert convert_keras.main(["--input", str(path), "--out-model", str(tmp_path / "a"),
                               "--out-weights", str(tmp_path / "b")]) == 2
    assert "neither a .keras archive nor an HDF5 file" in capsys.readouterr().err
    assert convert_keras.main(["--input", str(tmp_path), "--out-model", str(tmp_path / "a"),
                               "--out-weights", str(tmp_path / "b")]) == 2
    assert "not a SavedModel folder (no saved_model.pb)" in capsys.readouterr().err


def test_convert_fold_quantize_chain(tmp_path, capsys, monkeypatch):
    from ristretto_py.cli import fold_bn, quantize
    monkeypatch.chdir(ROOT)
    model = densenet_like()
    _randomize_batchnorm(model)
    model.save(tmp_path / "dn.keras")
    dn, folded, quantized = (tmp_path / f"{n}.prototxt" for n in ("dn", "folded", "q"))
    assert convert_keras.main(["--input", str(tmp_path / "dn.keras"), "--out-model", str(dn),
                               "--out-weights", str(tmp_path / "dn.caffemodel")]) == 0
    assert fold_bn.main(["--model", str(dn), "--weights", str(tmp_path / "dn.caffemodel"),
                         "--out-model", str(folded), "--out-weights", str(tmp_path / "folded.caffemodel")]) == 0
    printed = capsys.readouterr().out
    # DenseNet BNs follow a Concat or read a blob the Concat reads too: depthwise 1x1 convolutions
    assert "replaced t_bn" in printed and "replaced b0_0_bn" in printed
    x = _images()
    net = Net.load(folded, tmp_path / "folded.caffemodel").with_input_shapes({"image": (16, 1, 28, 28)})
    assert close_to(NumpyRuntime(net).forward({"image": x.transpose(0, 3, 1, 2)})["embedding"],
                    model.predict(x, verbose=0), 1e-4)
    assert quantize.main(["--model", str(folded), "--weights", str(tmp_path / "folded.caffemodel"),
                          "--data", "examples/lenet_fashion/fashion_test_lmdb", "--data_scale", str(1 / 255),
                          "--model_quantized", str(quantized), "--trimming_mode", "dynamic_fixed_point",
                          "--error_margin", "1", "--iterations", "2", "--quiet"]) == 0
    layers_out = {l.name: l for l in Net.load(quantized).layers}
    assert layers_out["image"].type == "Data" and layers_out["accuracy"].type == "Accuracy"
    assert any(l.type == "ConvolutionRistretto" for l in layers_out.values())
