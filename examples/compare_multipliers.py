"""Accuracy of a trained LeNet-5 per approximate multiplier, converted with approximate_model.

    python examples/compare_multipliers.py [--weights lenet5.weights.h5]
        [--mtab_files a.bin,b.bin] [--mtab_dir DIR] [--truncations 1,2,3] [--convs_only]

Loads the accurately trained weights (examples/fake_approx_train.py), then for each table builds a
copy of the model whose Conv2D and Dense layers compute with that table
(tensorflow_approx.approximate_model) and evaluates it. Rows: float32, the exact 8x8 multiplier
(8-bit quantization alone), the home-made operand-truncation tables of --truncations, then the
tables given (e.g. EvoApprox's mul8u_*.bin: --mtab_dir /path/to/axmul_8x8).
"""

import glob
import os
import tempfile
import time

import common
from absl import app, flags

import tensorflow_approx as ta
from tensorflow_approx import multipliers

MTAB_FILES = flags.DEFINE_list("mtab_files", [], "tables to compare (65536 little-endian uint16)")
MTAB_DIR = flags.DEFINE_string("mtab_dir", None, "also compare every *.bin table in this folder")
TRUNCATIONS = flags.DEFINE_list(
    "truncations", ["1", "2", "3"], "home-made tables: operands with this many low bits dropped"
)
CONVS_ONLY = flags.DEFINE_bool("convs_only", False, "approximate the convolutions only")


def main(_):
    start = time.time()
    _, (x_test, y_test), description = common.load_dataset()
    model = common.compile_for_eval(common.lenet5(x_test.shape[1:]))
    model.load_weights(common.WEIGHTS.value)
    scratch = tempfile.mkdtemp()
    tables = [("exact 8x8", "")]
    for bits in map(int, TRUNCATIONS.value):
        path = multipliers.operand_truncated(bits).save(os.path.join(scratch, f"trunc{bits}.bin"))
        tables.append((f"operands truncated by {bits} bit{'s' if bits > 1 else ''}", path))
    given = list(MTAB_FILES.value)
    if MTAB_DIR.value:
        given += sorted(glob.glob(os.path.join(MTAB_DIR.value, "*.bin")))
    tables += [(os.path.basename(path), path) for path in given]
    layers = ["conv1", "conv2"] if CONVS_ONLY.value else None

    _, float_accuracy = model.evaluate(x_test, y_test, verbose=0)
    print("=" * 80)
    print(f"Dataset: {description}")
    print(f"Approximated: {'conv1, conv2' if CONVS_ONLY.value else 'conv1, conv2, fc1, fc2, fc3'}")
    print(f"{'multiplier':<36} {'accuracy':>9} {'vs float':>9} {'loss':>8}")
    print(f"{'float32 (no quantization)':<36} {float_accuracy:>9.4f} {0:>+9.4f} {'':>8}")
    for name, path in tables:
        approx = ta.approximate_model(model, mul_map_file=path, layers=layers)
        loss, accuracy = common.compile_for_eval(approx).evaluate(x_test, y_test, verbose=0)
        print(f"{name:<36} {accuracy:>9.4f} {accuracy - float_accuracy:>+9.4f} {loss:>8.4f}")
    print(f"({len(tables)} multipliers in {time.time() - start:.1f} s)")


if __name__ == "__main__":
    app.run(main)
