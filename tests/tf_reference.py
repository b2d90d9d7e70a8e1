"""Writes the TensorFlow and TFLite files ``test_convert_tf.py`` converts, with TensorFlow's and
LiteRT's outputs on real Fashion-MNIST test images. A small Keras 3 CNN (TensorFlow backend) is
trained a few steps on Fashion-MNIST, then saved as:

- ``export/``: ``model.export()`` (a SavedModel with no Keras layers in it);
- ``frozen.pb``: a frozen GraphDef with two outputs, the class probabilities and a 4-D feature map;
- ``float.tflite``, ``int8_per_channel.tflite``, ``int8_per_tensor.tflite``: TensorFlow's TFLite
  converter, float and full-integer post-training quantization (int8 inputs and outputs).

Run in its own process (Keras' backend is chosen once per process, and the test process runs
Keras on torch):

    python tests/tf_reference.py FASHION_MNIST_DIR OUT_DIR
"""
import gzip
import json
import os
import pathlib
import sys

os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import keras  # noqa: E402
from keras import layers  # noqa: E402

IMAGES = 16


def read_idx(path):
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def cnn():
    inp = keras.Input((28, 28, 1), name="image")
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inp)
    x = layers.MaxPooling2D(2, name="pool1")(x)
    x = layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = layers.Conv2D(16, 3, activation="relu", name="conv2")(x)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.AveragePooling2D(2, name="pool2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(32, activation="relu", name="fc1")(x)
    return keras.Model(inp, layers.Dense(10, activation="softmax", name="probs")(x))


def interpreter(path):
    """LiteRT's interpreter (ai-edge-litert), else TensorFlow's deprecated tf.lite one."""
    try:
        from ai_edge_litert.interpreter import Interpreter
        name = "ai_edge_litert"
    except ImportError:
        Interpreter, name = tf.lite.Interpreter, "tf.lite"
    return Interpreter(model_path=str(path)), name


def run_tflite(path, images):
    """The model's outputs image by image (the converter fixes the batch at 1), and what ran it."""
    runner, name = interpreter(path)
    runner.allocate_tensors()
    (source,), (sink,) = runner.get_input_details(), runner.get_output_details()
    quantization = {"input": list(source["quantization"]), "output": list(sink["quantization"]),
                    "input_dtype": np.dtype(source["dtype"]).name}
    outputs = []
    for image in images:
        x = image[None]
        if source["dtype"] != np.float32:
            scale, zero = source["quantization"]
            x = np.clip(np.round(x / scale) + zero, -128, 127).astype(source["dtype"])
        runner.set_tensor(source["index"], x)
        runner.invoke()
        outputs.append(runner.get_tensor(sink["index"])[0].copy())
    return np.stack(outputs), quantization, name


def main(fashion, out):
    fashion, out = pathlib.Path(fashion), pathlib.Path(out)
    train_x = read_idx(fashion / "train-images-idx3-ubyte.gz")[:2048, :, :, None].astype(np.float32) / 255
    train_y = read_idx(fashion / "train-labels-idx1-ubyte.gz")[:2048]
    images = read_idx(fashion / "t10k-images-idx3-ubyte.gz")[:IMAGES, :, :, None].astype(np.float32) / 255
    np.save(out / "images.npy", images)

    keras.utils.set_random_seed(0)
    model = cnn()
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(train_x, train_y, batch_size=64, epochs=1, verbose=0)      # 32 steps
    bn = model.get_layer("bn")       # statistics away from 0 and 1, so the BatchNorm does something
    gamma, beta, mean, var = bn.get_weights()
    rng = np.random.default_rng(0)
    bn.set_weights([gamma * rng.uniform(0.5, 1.5, gamma.shape), beta + rng.normal(0, 0.2, beta.shape),
                    mean + rng.normal(0, 0.3, mean.shape), var * rng.uniform(0.5, 2.0, var.shape)])

    model.export(str(out / "export"), verbose=False)
    reloaded = tf.saved_model.load(str(out / "export"))
    np.save(out / "export_expected.npy", reloaded.serve(tf.constant(images)).numpy())

    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
    two = keras.Model(model.input, [model.output, model.get_layer("conv2").output])
    function = tf.function(lambda x: two(x, training=False)).get_concrete_function(
        tf.TensorSpec([None, 28, 28, 1], tf.float32, name="image"))
    frozen = convert_variables_to_constants_v2(function)
    (out / "frozen.pb").write_bytes(frozen.graph.as_graph_def().SerializeToString())
    probs, features = frozen(tf.constant(images))
    np.save(out / "frozen_probs.npy", probs.numpy())
    np.save(out / "frozen_features.npy", features.numpy())
    names = {"inputs": [t.name for t in frozen.inputs], "outputs": [t.name for t in frozen.outputs]}

    def representative():
        for i in range(0, 400, 4):
            yield [train_x[i:i + 1]]
    tflite = {}
    for name, quantized, per_channel in (("float", False, None), ("int8_per_channel", True, True),
                                         ("int8_per_tensor", True, False)):
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        if quantized:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = representative
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = converter.inference_output_type = tf.int8
            converter._experimental_disable_per_channel = not per_channel
        path = out / f"{name}.tflite"
        path.write_bytes(converter.convert())
        outputs, quantization, runner = run_tflite(path, images)
        np.save(out / f"{name}_expected.npy", outputs)
        tflite[name] = quantization
    names.update(tflite=tflite, interpreter=runner)
    (out / "names.json").write_text(json.dumps(names, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:3])
