"""Step 2 of the seed's example: LeNet-5 with FakeApproxConv2D, evaluated with a multiplier table.

    python examples/fake_approx_eval.py [--mtab_file PATH] [--weights lenet5.weights.h5]

The Conv2D layers of LeNet-5 become FakeApproxConv2D (8-bit fake quantization of input and kernel
with per-batch ranges, every product taken from the table); the weights trained by
fake_approx_train.py are loaded, and test loss and accuracy are printed. Without --mtab_file the
layers use the exact 8x8 multiplier, which shows the cost of 8-bit quantization alone.
"""

import functools
import time

import common
from absl import app, flags

import tensorflow_approx as ta

MTAB_FILE = flags.DEFINE_string(
    "mtab_file",
    "",
    "approximate 8x8 multiplication table (65536 little-endian uint16); "
    "empty: the exact multiplier",
)
APPROX_DENSE = flags.DEFINE_bool(
    "approx_dense", False, "also compute the Dense layers with the table (the seed: convs only)"
)


def main(_):
    start = time.time()
    _, (x_test, y_test), description = common.load_dataset()
    accurate = common.lenet5(x_test.shape[1:])
    # Keras 3 weight files are keyed by layer class, so the accurate layers load them and the
    # approximate ones take their kernels and biases from those.
    accurate.load_weights(common.WEIGHTS.value)
    conv = functools.partial(ta.FakeApproxConv2D, mul_map_file=MTAB_FILE.value)
    approx = common.lenet5(x_test.shape[1:], conv=conv)
    if APPROX_DENSE.value:
        approx = ta.approximate_model(
            approx, mul_map_file=MTAB_FILE.value, layers=["fc1", "fc2", "fc3"]
        )
    for source, target in zip(accurate.layers, approx.layers):
        if hasattr(target, "copy_accurate_weights"):  # approximate: kernel and bias (its table stays)
            target.copy_accurate_weights(source)
        else:
            target.set_weights(source.get_weights())
    loss, accuracy = common.compile_for_eval(approx).evaluate(x_test, y_test, verbose=0)
    print("=" * 80)
    print(f"Dataset: {description}")
    print(
        f"Testing approximate model with "
        f"{MTAB_FILE.value or 'the exact 8x8 multiplier (no --mtab_file)'}"
        f"{' (convolutions and dense layers)' if APPROX_DENSE.value else ' (convolutions)'}"
    )
    print(f"Test loss: {loss:.4f}")
    print(f"Test accuracy: {accuracy:.4f}")
    print(f"({time.time() - start:.1f} s)")


if __name__ == "__main__":
    app.run(main)
