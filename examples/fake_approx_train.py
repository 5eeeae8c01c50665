"""Step 1 of the seed's example: train LeNet-5 accurately (float32 Conv2D) and save its weights.

    python examples/fake_approx_train.py [--weights lenet5.weights.h5] [--epochs N] [--dataset ...]

Then evaluate those weights with an approximate multiplier: examples/fake_approx_eval.py.
"""

import time

import common
import keras
from absl import app, flags

EPOCHS = flags.DEFINE_integer("epochs", None, "training epochs (default: 40 on digits, 5 on MNIST)")


def main(_):
    start = time.time()
    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_test, y_test), description = common.load_dataset()
    epochs = EPOCHS.value or (5 if description.startswith("MNIST") else 40)
    model = common.lenet5(x_train.shape[1:])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, batch_size=32, epochs=epochs, verbose=0, validation_split=0.1)
    loss, accuracy = model.evaluate(x_test, y_test, verbose=0)
    model.save_weights(common.WEIGHTS.value)
    print("=" * 80)
    print(f"Dataset: {description}")
    print(
        f"Trained LeNet-5 (float32, accurate Conv2D) for {epochs} epochs "
        f"in {time.time() - start:.1f} s"
    )
    print(f"Test loss: {loss:.4f}")
    print(f"Test accuracy: {accuracy:.4f}")
    print(f"Weights saved to {common.WEIGHTS.value}")


if __name__ == "__main__":
    app.run(main)
