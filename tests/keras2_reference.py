"""Writes Keras 2 model files with real tf-keras, as users of TensorFlow 2.x have them: for each
model a legacy ``.h5`` and a SavedModel folder (``model.save(folder)``), plus the model's
``predict`` on the given images. Also a graph-only SavedModel (``tf.saved_model.save``) that the
converter must refuse. Run in its own process by ``test_convert_keras2.py`` (TensorFlow stays out
of the test process):

    python tests/keras2_reference.py IMAGES.npy OUT_DIR
"""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402
from tf_keras import layers  # noqa: E402


def densenet_like():
    inp = keras.Input((28, 28, 1), name="image")
    x = layers.Conv2D(12, 3, padding="same", use_bias=False, name="stem")(inp)
    for i in range(2):
        y = layers.BatchNormalization(name=f"bn{i}")(x)
        y = layers.Activation("relu", name=f"relu{i}")(y)
        y = layers.Conv2D(6, 3, padding="same", name=f"conv{i}")(y)
        x = layers.Concatenate(name=f"cat{i}")([x, y])
    x = layers.BatchNormalization(epsilon=1e-5, scale=False, name="t_bn")(x)
    x = layers.ReLU(name="t_relu")(x)
    x = layers.AveragePooling2D(2, name="t_pool")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inp, layers.Dense(16, name="embedding")(x))


def residual():
    inp = keras.Input((28, 28, 1))
    x = layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    y = layers.Conv2D(8, 3, padding="same")(x)
    y = layers.BatchNormalization()(y)
    y = layers.ReLU(max_value=6.0)(y)
    y = layers.DepthwiseConv2D(3, padding="same")(y)
    x = layers.Add()([x, y])
    x = layers.LeakyReLU(alpha=0.1)(x)
    x = layers.ZeroPadding2D(1)(x)
    x = layers.Conv2D(8, 3, strides=2)(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
    x = layers.GlobalMaxPooling2D()(x)
    return keras.Model(inp, layers.Dense(10, activation="softmax")(x))


def classifier():
    return keras.Sequential([layers.Conv2D(6, 5, activation="tanh", input_shape=(28, 28, 1)),
                             layers.MaxPooling2D(2), layers.Conv2D(8, 3, activation="relu"),
                             layers.AveragePooling2D(2, strides=2), layers.Flatten(),
                             layers.Dense(20, activation="sigmoid"), layers.Dropout(0.5),
                             layers.Dense(10), layers.Softmax()])


MODELS = {"densenet_like": densenet_like, "residual": residual, "classifier": classifier}


def randomize_batchnorm(model, rng):
    """Trained-looking statistics, so that a mistake in the BatchNorm order shows."""
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape) if "gamma" in w.name or "variance" in w.name
                               else rng.normal(0, 0.3, w.shape) for w in layer.weights])


def main(images_path, out_dir):
    images = np.load(images_path)
    rng = np.random.default_rng(0)
    for seed, (name, build) in enumerate(MODELS.items()):
        keras.utils.set_random_seed(seed)
        model = build()
        randomize_batchnorm(model, rng)
        if name != "densenet_like":     # trained models are saved with their optimizer's variables:
            # TensorFlow <= 2.10's optimizers (now "legacy") store slots next to the layer weights
            optimizer = keras.optimizers.legacy.Adam() if name == "classifier" else "adam"
            model.compile(optimizer, "sparse_categorical_crossentropy")
            model.fit(images, np.arange(len(images)) % 10, epochs=1, verbose=0)
        model.save(os.path.join(out_dir, f"{name}.h5"))
        model.save(os.path.join(out_dir, f"{name}_savedmodel"))
        np.save(os.path.join(out_dir, f"{name}_expected.npy"), model.predict(images, verbose=0))

    module = tf.Module()
    module.scale = tf.Variable(2.0)
    module.run = tf.function(lambda x: x * module.scale, input_signature=[tf.TensorSpec([None, 4])])
    tf.saved_model.save(module, os.path.join(out_dir, "graph_only_savedmodel"))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
