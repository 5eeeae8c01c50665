"""CPU benchmark of ApproxConv2DWithMinMaxVars against tf.nn.conv2d float32 in the same run.

Prints one row per layer: the op's median time and G LUT-MAC/s with a real non-exact table, the
accurate float32 conv2d on the same shape, and their ratio, called eagerly; then both in graphs
(tf.function, as Keras runs layers), all four interleaved. Realistic data: ReLU activations (half
of them zero, the zero point) and normal weights. Then (--schemes) the table op with per-channel
filter ranges and with signed products (both operands symmetric, an int16 table) beside the
per-tensor unsigned call on the same layers.

    python benchmarks/cpu_benchmark.py [--table PATH] [--repeats 5] [--r20_batch 64]
        [--noschemes | --schemes_only | --decomposed]
"""

import os
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import tensorflow as tf  # noqa: E402

import tensorflow_approx as ta  # noqa: E402
from tensorflow_approx import multipliers as mx  # noqa: E402
from tensorflow_approx.python.ops.approx_conv_ops import lut_values  # noqa: E402

TABLE = flags.DEFINE_string("table", None, "table file (default: mul8u_L40 from ../shared, else a truncated product)")
REPEATS = flags.DEFINE_integer("repeats", 5, "timed runs per layer (median reported)")
SCHEMES = flags.DEFINE_boolean("schemes", True, "also time per-channel ranges and signed products")
SCHEMES_ONLY = flags.DEFINE_boolean("schemes_only", False, "only the schemes table")
R20_BATCH = flags.DEFINE_integer("r20_batch", 64, "batch of the ResNet-20 layers (models.py's per-layer "
                                 "table uses its --layer_batch)")
DECOMPOSED = flags.DEFINE_boolean("decomposed", False, "only the decomposed-kernel table (tables registered "
                                  "with tensorflow_approx.register_decomposition)")

# (name, N, H, W, Cin, Cout, K, stride): performance.md's shapes at N=8, the layer shapes of a CIFAR
# ResNet-20 at N=64 (--r20_batch in the main table), and a LeNet-size layer.
LAYERS = [
    ("3x3 56x56 64->64", 8, 56, 56, 64, 64, 3, 1),
    ("3x3 28x28 128->128", 8, 28, 28, 128, 128, 3, 1),
    ("3x3 14x14 256->256", 8, 14, 14, 256, 256, 3, 1),
    ("3x3 7x7 512->512", 8, 7, 7, 512, 512, 3, 1),
    ("1x1 56x56 64->256", 8, 56, 56, 64, 256, 1, 1),
    ("R20 stem 3x3 32x32 3->16", 64, 32, 32, 3, 16, 3, 1),
    ("R20 3x3 32x32 16->16", 64, 32, 32, 16, 16, 3, 1),
    ("R20 3x3 s2 32x32 16->32", 64, 32, 32, 16, 32, 3, 2),
    ("R20 1x1 s2 32x32 16->32", 64, 32, 32, 16, 32, 1, 2),
    ("R20 3x3 16x16 32->32", 64, 16, 16, 32, 32, 3, 1),
    ("R20 3x3 8x8 64->64", 64, 8, 8, 64, 64, 3, 1),
    ("1x1 16x16 16->16 N=8", 8, 16, 16, 16, 16, 1, 1),
    ("LeNet 3x3 28x28 1->6 N=256", 256, 28, 28, 1, 6, 3, 1),
]


def default_table():
    shared = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared",
                          "axmul_8x8", "mul8u_L40.bin")
    if os.path.exists(shared):
        return os.path.normpath(shared), "mul8u_L40 (EvoApprox)"
    # Our own approximate table: the product of operands with their 2 low bits dropped.
    a, w = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    path = os.path.join(tempfile.mkdtemp(), "trunc2.bin")
    ((a & ~3) * (w & ~3)).astype("<u2").tofile(path)
    return path, "operand-truncated by 2 bits (generated)"


def median_ms(fn, repeats):
    return interleaved_median_ms([fn], repeats)[0]


# Each sample times calls in a row for at least this long: a single call of a sub-millisecond layer
# measured mostly when the thread pool's threads happened to wake (ResNet-20's stem: 0.6-1.2 ms per call).
MIN_SAMPLE_S = 0.02


def interleaved_median_ms(fns, repeats):
    """Median ms per call of each fn over `repeats` rounds that time every fn in turn (each sample as many
    calls in a row as take MIN_SAMPLE_S): on a shared machine a slow stretch then hits all of them alike."""
    counts = []
    for fn in fns:
        fn()  # warm-up: kernel construction, table load, thread pool start, tracing
        start = time.perf_counter()
        fn()
        counts.append(max(1, int(MIN_SAMPLE_S / max(time.perf_counter() - start, 1e-6))))
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, count, t in zip(fns, counts, times):
            start = time.perf_counter()
            for _ in range(count):
                fn()
            t.append((time.perf_counter() - start) / count)
    return [1e3 * float(np.median(t)) for t in times]


def scheme_table(table, rng):
    """The table op per tensor (unsigned), per output channel, and signed (symmetric operands, int16
    table) on the same data: the issue's goal is within 10% of the first."""
    values = lut_values(table)[0]
    unsigned = tf.constant(values)
    # A signed table of the same size and spread (values only matter for the kernel's data paths).
    signed = tf.constant((values.astype(np.int32) - 32768).astype(np.int16))
    print(f"\nschemes (ApproxConv2DWithTable, median of {REPEATS.value} runs):")
    header = f"{'layer':28s} {'per-tensor ms':>14s} {'per-channel ms':>15s} {'ratio':>7s} {'signed ms':>10s} {'ratio':>7s}"
    print(header)
    print("-" * len(header))
    for name, n, h, w, cin, cout, k, stride in LAYERS:
        x = tf.constant(np.maximum(rng.normal(size=(n, h, w, cin)), 0).astype(np.float32))
        # Channels of unequal scale, where per-channel ranges matter.
        f = tf.constant((rng.normal(0, 0.1, (k, k, cin, cout)) * rng.uniform(0.5, 2, cout)).astype(np.float32))
        x_max = float(tf.reduce_max(x))
        conv = dict(strides=[1, stride, stride, 1], padding="SAME")
        # Ranges made once: only the op is timed.
        tensor_range = (tf.reduce_min(f), tf.reduce_max(f))
        channel_range = (tf.reduce_min(f, axis=[0, 1, 2]), tf.reduce_max(f, axis=[0, 1, 2]))
        variants = {
            "per-tensor": lambda: ta.approx_conv2d_with_table(x, f, 0.0, x_max, *tensor_range, table=unsigned, **conv),
            "per-channel": lambda: ta.approx_conv2d_with_table(x, f, 0.0, x_max, *channel_range, table=unsigned,
                                                               **conv),
            "signed": lambda: ta.approx_conv2d_with_table(x, f, 0.0, x_max, *tensor_range, table=signed,
                                                          input_scheme="symmetric", filter_scheme="symmetric",
                                                          **conv),
        }
        # Interleaved (one run of each in turn), so that a drift of the machine's speed hits all three.
        times = {key: [] for key in variants}
        for fn in variants.values():
            fn().numpy()  # warm-up
        for _ in range(REPEATS.value):
            for key, fn in variants.items():
                start = time.perf_counter()
                fn().numpy()
                times[key].append(time.perf_counter() - start)
        ms = {key: 1e3 * float(np.median(t)) for key, t in times.items()}
        print(f"{name:28s} {ms['per-tensor']:14.2f} {ms['per-channel']:15.2f} "
              f"{ms['per-channel'] / ms['per-tensor']:7.2f} {ms['signed']:10.2f} {ms['signed'] / ms['per-tensor']:7.2f}")


def layer_calls(x, f, ranges, tables, stride):
    """The table op on (x, f) with each table, then tf.nn.conv2d: callables, bound to this layer's
    tensors (closures over a loop's variables would all see its last layer)."""
    conv = dict(strides=[1, stride, stride, 1], padding="SAME")
    calls = [lambda t=t: ta.approx_conv2d_with_table(x, f, *ranges, table=t, **conv).numpy() for t in tables]
    return calls + [lambda: tf.nn.conv2d(x, f, stride, "SAME").numpy()]


def decomposed_table(rng):
    """Tables with few int8 terms, run by the lookups and then, registered, by the decomposed kernel
    (AVX-512 VNNI), beside tf.nn.conv2d float32; what the kernel choice (PreferDecomposed) picks."""
    shared = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "axmul_8x8")
    # mul8u_GS2: 8 terms, the most the CPU goal (at most 2x conv2d) covers.
    names = ["", "drum6"] + [os.path.join(shared, n + ".bin") for n in ("mul8u_1446", "mul8u_JQQ", "mul8u_GS2")
                               if os.path.exists(os.path.join(shared, n + ".bin"))]
    tables = {}
    for name in names:
        values = lut_values(name)[0]
        d = mx.decompose(values)
        terms = "-" if d is None else f"{d.terms} term{'s' * (d.terms > 1)}"
        label = f"{os.path.basename(name)[:-4] if name.endswith('.bin') else name or 'exact'} ({terms})"
        tables[label] = (name, tf.constant(values))
    print(f"\ndecomposed kernel (median of {REPEATS.value} interleaved runs): lookups ms / decomposed ms per "
          "table, then conv2d float32 ms (timed with the decomposed calls)")
    header = f"{'layer':28s} " + " ".join(f"{label:>26s}" for label in tables) + f" {'conv2d ms':>10s}"
    print(header)
    print("-" * len(header))
    rows = []
    for name, n, h, w, cin, cout, k, stride in LAYERS:
        x = tf.constant(np.maximum(rng.normal(size=(n, h, w, cin)), 0).astype(np.float32))
        f = tf.constant(rng.normal(0, 0.1, (k, k, cin, cout)).astype(np.float32))
        x_max, f_min, f_max = float(tf.reduce_max(x)), float(tf.reduce_min(f)), float(tf.reduce_max(f))
        calls = layer_calls(x, f, (0.0, x_max, f_min, f_max), [t for _, t in tables.values()], stride)
        rows.append((name, calls, interleaved_median_ms(calls, REPEATS.value)[:-1]))
    for table_name, _ in tables.values():  # registered only now: the lookups above ran unregistered
        ta.register_decomposition(table_name)
    for name, calls, lookups in rows:
        # The decomposed calls and conv2d interleaved; the ratio to this conv2d time.
        *decomposed, conv_ms = interleaved_median_ms(calls, REPEATS.value)
        cells = [f"{a:8.2f} / {b:8.2f} ({b / conv_ms:4.1f}x)" for a, b in zip(lookups, decomposed)]
        print(f"{name:28s} " + " ".join(f"{c:>26s}" for c in cells) + f" {conv_ms:10.2f}")
    print("(x: the decomposed time over conv2d's; the op takes the decomposed kernel only where "
          "PreferDecomposed expects it faster, else the lookups: both columns then agree)")


def main(_):
    rng = np.random.default_rng(0)
    if DECOMPOSED.value:
        decomposed_table(rng)
        return
    table, table_name = (TABLE.value, TABLE.value) if TABLE.value else default_table()
    print(f"table: {table_name}; {os.cpu_count()} CPUs; TensorFlow {tf.__version__}; "
          f"median of {REPEATS.value} interleaved runs; eager calls, then the same in graphs (tf.function)")
    if not SCHEMES_ONLY.value:
        header = (f"{'layer':28s} {'op ms':>9s} {'G LUT-MAC/s':>12s} {'conv2d ms':>10s} {'conv2d GMAC/s':>14s} "
                  f"{'ratio':>7s} {'graph op':>9s} {'conv2d':>9s} {'ratio':>7s}")
        print(header)
        print("-" * len(header))
    for name, n, h, w, cin, cout, k, stride in [] if SCHEMES_ONLY.value else LAYERS:
        n = R20_BATCH.value if name.startswith("R20") else n
        x = tf.constant(np.maximum(rng.normal(size=(n, h, w, cin)), 0).astype(np.float32))
        f = tf.constant(rng.normal(0, 0.1, (k, k, cin, cout)).astype(np.float32))
        x_max, f_min, f_max = float(tf.reduce_max(x)), float(tf.reduce_min(f)), float(tf.reduce_max(f))
        macs = n * (-(-h // stride)) * (-(-w // stride)) * cout * k * k * cin
        strides = [1, stride, stride, 1]
        # Eager calls (the file op, as TFApprox's users call it) and graph calls (as Keras runs layers:
        # no Python per op), each against conv2d called the same way.
        eager_op = lambda: ta.approx_conv2d_with_min_max_vars(  # noqa: E731
            x, f, 0.0, x_max, f_min, f_max, strides, 8, table, "SAME").numpy()
        eager_conv = lambda: tf.nn.conv2d(x, f, stride, "SAME").numpy()  # noqa: E731
        graph_op = tf.function(lambda: ta.approx_conv2d_with_min_max_vars(
            x, f, 0.0, x_max, f_min, f_max, strides, 8, table, "SAME"))
        graph_conv = tf.function(lambda: tf.nn.conv2d(x, f, stride, "SAME"))
        op_ms, conv_ms, graph_op_ms, graph_conv_ms = interleaved_median_ms(
            [eager_op, eager_conv, lambda: graph_op().numpy(), lambda: graph_conv().numpy()], REPEATS.value)
        print(f"{name:28s} {op_ms:9.2f} {macs / op_ms / 1e6:12.2f} {conv_ms:10.2f} "
              f"{macs / conv_ms / 1e6:14.2f} {op_ms / conv_ms:6.1f}x {graph_op_ms:9.2f} {graph_conv_ms:9.2f} "
              f"{graph_op_ms / graph_conv_ms:6.1f}x")
    if SCHEMES.value or SCHEMES_ONLY.value:
        scheme_table(table, rng)


if __name__ == "__main__":
    app.run(main)
