"""The op on a small real example: a Sobel edge filter over a handwritten digit, exact vs approximate.

Prints the exact-multiplier output, the approximate one and their difference. The image is the
first of scikit-learn's 8x8 digits when scikit-learn is installed, else a drawn '7'.

    python examples/op_demo.py [--mtab_file PATH]
"""

import os
import sys
import tempfile

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import tensorflow as tf  # noqa: E402

import tensorflow_approx as ta  # noqa: E402

MTAB_FILE = flags.DEFINE_string(
    "mtab_file", None, "approximate table (.bin); default: an operand-truncated product made here")


def digit():
    try:
        from sklearn.datasets import load_digits

        return load_digits().images[0].astype(np.float32) / 16.0, "scikit-learn digit 0"
    except ImportError:
        image = np.zeros((8, 8), np.float32)
        image[1, 1:7] = 1.0
        for r in range(2, 7):
            image[r, 7 - r] = 1.0
        return image, "a drawn 7"


def truncated_table():
    """Our own approximate multiplier: both operands lose their 3 low bits before multiplying."""
    a, w = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    path = os.path.join(tempfile.mkdtemp(), "trunc3.bin")
    ((a & ~7) * (w & ~7)).astype("<u2").tofile(path)
    return path


def main(_):
    image, source = digit()
    table = MTAB_FILE.value or truncated_table()
    x = tf.constant(image[None, :, :, None])
    sobel = tf.constant(np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32)[:, :, None, None])
    args = dict(input_min=0.0, input_max=1.0, filter_min=-2.0, filter_max=2.0, strides=[1, 1, 1, 1],
                num_bits=8, padding="SAME")
    exact = ta.approx_conv2d_with_min_max_vars(x, sobel, mul_map_file="", **args).numpy()[0, :, :, 0]
    approx = ta.approx_conv2d_with_min_max_vars(x, sobel, mul_map_file=table, **args).numpy()[0, :, :, 0]
    np.set_printoptions(precision=2, suppress=True, linewidth=120)
    print(f"input: {source}, 8x8; filter: 3x3 Sobel; ranges [0, 1] and [-2, 2], 8 bits")
    print("exact multiplier:")
    print(exact)
    print(f"approximate multiplier ({os.path.basename(table)}):")
    print(approx)
    print(f"max |approximate - exact| = {np.abs(approx - exact).max():.3f}; "
          f"mean = {np.abs(approx - exact).mean():.3f}")


if __name__ == "__main__":
    app.run(main)
