"""Which multiplier in which layer: accuracy against multiplication energy, on MNIST.

    python examples/explore_mnist.py [--library DIR | --library families] [--net resnet|lenet5]
                                     [--generations 10] [--population 24] [--store explore_mnist.sqlite]

Trains the network in float32 on the examples' data (common.load_dataset), then runs
tensorflow_approx.explore on the test images: per-layer sensitivity to every table of --library (a
folder of tables, each with its power, the exact one included: docs/multiplier_libraries.md, e.g.
EvoApprox's; by default the project's families with their estimated costs), the
sensitivity-guided greedy baseline and NSGA-II; prints the Pareto front (accuracy against the
multiplication energy relative to the exact multiplier) and writes it, with a plot, beside the store.
The store makes a rerun (or an interrupted run) resume without evaluating anything twice.
"""

import os
import sys
import time

import common
import keras
from absl import app, flags

from tensorflow_approx import explore

NET = flags.DEFINE_enum("net", "resnet", ["resnet", "lenet5"], "the network")
LIBRARY = flags.DEFINE_string(
    "library", "families", 'a folder of tables, each with its power, the exact one included '
    '(docs/multiplier_libraries.md), or "families": the project\'s families with estimated costs')
GENERATIONS = flags.DEFINE_integer("generations", 10, "NSGA-II generations")
POPULATION = flags.DEFINE_integer("population", 24, "NSGA-II population")
STORE = flags.DEFINE_string("store", "explore_mnist.sqlite", "the results store")
EPOCHS = flags.DEFINE_integer("epochs", 15, "float32 training epochs")


def small_resnet(input_shape):
    """A ResNet for 28x28 digits: a stem and three stages of one basic block (8, 16, 32 channels)."""
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="stem")(inputs)
    for stage, width in enumerate((8, 16, 32)):
        stride = 1 if stage == 0 else 2
        y = keras.layers.Conv2D(width, 3, strides=stride, padding="same", activation="relu", name=f"s{stage}a")(x)
        y = keras.layers.Conv2D(width, 3, padding="same", name=f"s{stage}b")(y)
        shortcut = x if stride == 1 and x.shape[-1] == width else keras.layers.Conv2D(
            width, 1, strides=stride, name=f"s{stage}p")(x)
        x = keras.layers.ReLU()(keras.layers.Add()([y, shortcut]))
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax", name="fc")(x), name="small_resnet")


def main(_):
    if LIBRARY.value != "families" and not os.path.isdir(LIBRARY.value):
        sys.exit(f"--library {LIBRARY.value} is not a folder: give a folder of tables, each with its power "
                 "(docs/multiplier_libraries.md says what it must hold)")
    start = time.time()
    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_test, y_test), description = common.load_dataset()
    model = small_resnet(x_train.shape[1:]) if NET.value == "resnet" else common.lenet5(x_train.shape[1:])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, batch_size=32, epochs=EPOCHS.value, verbose=0)
    float_accuracy = model.evaluate(x_test, y_test, verbose=0)[1]
    trained = time.time()

    library, costs, exact = explore.library_from(LIBRARY.value)
    evaluator = explore.Evaluator(model, x_test, y_test, store=explore.ResultStore(STORE.value))
    points = explore.search(evaluator, library, costs, costs[exact], population=POPULATION.value,
                            generations=GENERATIONS.value)
    front = explore.pareto_front(points)
    stem = os.path.splitext(STORE.value)[0]
    explore.write_points(front, stem + "_front.csv")
    explore.plot_points(points, stem + "_front.png", front, title=f"{model.name} on {description.split(' (')[0]}")
    baseline = evaluator.accuracy({})
    print("=" * 80)
    print(f"Dataset: {description}; {model.name}, {len(evaluator.layers)} approximate layers; {len(library)} tables "
          f"from {LIBRARY.value} (exact: {exact})")
    print(f"float32 accuracy {float_accuracy:.4f}, exact 8-bit {baseline:.4f}; training {trained - start:.0f} s, "
          f"exploration {time.time() - trained:.0f} s, {evaluator.evaluations} candidates evaluated now")
    print("| relative energy | accuracy | loss (points) |")
    print("| ---: | ---: | ---: |")
    for p in front:
        print(f"| {p['energy']:.3f} | {p['accuracy']:.4f} | {100 * (baseline - p['accuracy']):+.1f} |")
    best = [p for p in front if baseline - p["accuracy"] <= 0.005]
    if best:
        print(f"least energy within 0.5 points of exact 8-bit: {best[0]['energy']:.3f} ({best[0]['assignment']})")
    print(f"front written to {stem}_front.csv and {stem}_front.png")


if __name__ == "__main__":
    app.run(main)
