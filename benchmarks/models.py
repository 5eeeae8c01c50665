"""Whole networks: a CIFAR ResNet-20 and a ResNet-50-shaped network, every Conv2D/Dense approximate.

Prints, per network: predict at each batch size (from a NumPy array and from a tf.data.Dataset), the
same forward passes on batches already on the device (the network without Keras' input pipeline, as the
PyTorch baseline runs), predict of a model that does nothing (the input pipeline's own cost), and one
epoch of fit
(images/s, effective G LUT-MAC/s) for the approximate model beside the same plain Keras float32 model
in the same run; then a per-layer
table (each approximate layer alone on its input shape: time per call, G LUT-MAC/s, the kernel the op
chose, the float layer's time); then how close the whole network comes to its layers' summed rate.

    python benchmarks/models.py [--nets resnet20,resnet50] [--images 2000] [--batches 128,1000]
                                [--fit] [--table PATH] [--device /CPU:0] [--torch_baseline]
                                [--layer_batch 1000] [--layer_repeats 20] [--overhead_repeats 200]

On a GPU machine with the tf-gpu stand-ins (no cuDNN), the float Keras model cannot run on the GPU:
--nofloat_keras skips it, and --torch_baseline times the same float32 network in PyTorch instead
(benchmarks/torch_baseline.py, TF32 off). That PyTorch time is a benchmark-only baseline, measured in
a separate process without the stand-ins on PYTHONPATH / LD_LIBRARY_PATH (they break torch's CUDA).

The kernel column comes from the op library's trace: TFAPPROX_TRACE names a file (a temporary one
unless set) to which the op appends one line per distinct call configuration; '-' where none matches.
"""

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import tensorflow_approx as ta  # noqa: E402
from tensorflow_approx.explore import layer_macs  # noqa: E402 (LUT-MACs of one image through a layer)
from tensorflow_approx.python.ops.approx_conv_ops import lut_values  # noqa: E402
from benchmarks.torch_baseline import seconds  # noqa: E402 (standard library only)

NETS = flags.DEFINE_list("nets", ["resnet20"], "networks: resnet20 (32x32x3), resnet50 (224x224x3)")
IMAGES = flags.DEFINE_integer("images", 2000, "images per predict (the issue's figures: 10000 / 1000)")
BATCHES = flags.DEFINE_list("batches", ["128", "1000"], "predict batch sizes")
FIT = flags.DEFINE_boolean("fit", True, "also time one epoch of fit (batch 128)")
TABLE = flags.DEFINE_string("table", None, "table (default: mul8u_L40 from ../shared, else drum6)")
DEVICE = flags.DEFINE_string("device", "/CPU:0", "TensorFlow device for the models")
FLOAT_KERAS = flags.DEFINE_boolean("float_keras", True, "time the plain Keras float32 model too")
TORCH = flags.DEFINE_boolean("torch_baseline", False,
                             "without the Keras float model: time the float32 network in PyTorch (CUDA)")
OVERHEAD_REPEATS = flags.DEFINE_integer("overhead_repeats", 200,
                                        "calls per graph of the per-call cost table (0: no table)")
STEPS_PER_EXECUTION = flags.DEFINE_integer(
    "steps_per_execution", 16, "also time predict with the models compiled with this steps_per_execution "
    "(Keras then runs that many batches per call of its predict function; 1: skip)")
LAYER_BATCH = flags.DEFINE_integer("layer_batch", 1000, "per-layer table batch (the issue's goal: 1000)")
LAYER_REPEATS = flags.DEFINE_integer("layer_repeats", 20, "layer calls inside one graph per per-layer timing")


def resnet20():
    """He et al.'s CIFAR ResNet-20: 3 stages of 3 basic blocks, 16/32/64 channels, 1x1 projections."""
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False)(inputs)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    for stage, width in enumerate((16, 32, 64)):
        for block in range(3):
            stride = 2 if stage > 0 and block == 0 else 1
            shortcut = x
            y = keras.layers.Conv2D(width, 3, strides=stride, padding="same", use_bias=False)(x)
            y = keras.layers.ReLU()(keras.layers.BatchNormalization()(y))
            y = keras.layers.Conv2D(width, 3, padding="same", use_bias=False)(y)
            y = keras.layers.BatchNormalization()(y)
            if stride != 1:
                shortcut = keras.layers.Conv2D(width, 1, strides=stride, use_bias=False)(x)
                shortcut = keras.layers.BatchNormalization()(shortcut)
            x = keras.layers.ReLU()(keras.layers.Add()([y, shortcut]))
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x), name="resnet20")


@keras.saving.register_keras_serializable(package="benchmarks")
class MaxPool2x2(keras.layers.Layer):
    """2x2 max pooling, stride 2, from strided slices: TensorFlow's MaxPool needs cuDNN on the GPU, which
    the H200's tf-gpu stand-ins lack (ResNet-50 pools 3x3; the shape, 56x56 after the stem, is the same)."""

    def call(self, x):
        return tf.maximum(tf.maximum(x[:, ::2, ::2], x[:, 1::2, ::2]), tf.maximum(x[:, ::2, 1::2], x[:, 1::2, 1::2]))


def resnet50():
    """The ResNet-50 shape: stem 7x7/2 + 2x2 max pool, bottleneck stages [3, 4, 6, 3], 1000 classes."""
    inputs = keras.Input((224, 224, 3))
    x = keras.layers.Conv2D(64, 7, strides=2, padding="same", use_bias=False)(inputs)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    x = MaxPool2x2()(x)
    for stage, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512))):
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            shortcut = x
            y = keras.layers.Conv2D(width, 1, use_bias=False)(x)
            y = keras.layers.ReLU()(keras.layers.BatchNormalization()(y))
            y = keras.layers.Conv2D(width, 3, strides=stride, padding="same", use_bias=False)(y)
            y = keras.layers.ReLU()(keras.layers.BatchNormalization()(y))
            y = keras.layers.BatchNormalization()(keras.layers.Conv2D(4 * width, 1, use_bias=False)(y))
            if block == 0:
                shortcut = keras.layers.Conv2D(4 * width, 1, strides=stride, use_bias=False)(x)
                shortcut = keras.layers.BatchNormalization()(shortcut)
            x = keras.layers.ReLU()(keras.layers.Add()([y, shortcut]))
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(1000)(x), name="resnet50")


def default_table():
    shared = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared",
                          "axmul_8x8", "mul8u_L40.bin")
    if os.path.exists(shared):
        return os.path.normpath(shared), "mul8u_L40 (EvoApprox)"
    return "drum6", "drum6 (built-in family)"


def fmt(value, spec):
    """value formatted, or '-' for a figure not measured."""
    return "-" if value is None else format(value, spec)


class TorchBaseline:
    """The float column from benchmarks/torch_baseline.py, run in its own process per measurement."""

    SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_baseline.py")

    def __init__(self):
        self.error = None
        self.device = None
        self._notes = []  # lines for under the next table, each printed once

    def seconds(self, net, images, batch):
        """Seconds of float32 inference over `images` images at `batch`; None after an error."""
        if self.error is not None:
            return None  # no torch or no CUDA: every further run would fail the same way
        # The TensorFlow GPU stand-ins on these paths break torch's CUDA (torch.cuda was unavailable
        # with them set), and the script needs neither.
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LD_LIBRARY_PATH")}
        proc = subprocess.run([sys.executable, self.SCRIPT, "--net", net, "--images", str(images),
                               "--batch", str(batch)], env=env, capture_output=True, text=True)
        try:
            result = json.loads(proc.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            result = {"error": f"exit status {proc.returncode}: {proc.stderr.strip()[-1000:]}"}
        if "error" in result:
            self.error = result["error"]
            self._notes.append(f"PyTorch baseline: {self.error}")
            return None
        if self.device is None:
            self.device = result["device"]
            self._notes.append(f"float s: PyTorch float32 on {self.device}, TF32 off "
                               "(benchmark-only baseline, separate process)")
        return result["seconds"]

    def notes(self):
        notes, self._notes = self._notes, []
        return notes


def layer_seconds(layer, data, repeats):
    """Seconds of one inference call of `layer` on `data`, without the per-call dispatch floor.

    A single tf.function call costs ~0.6-1 ms of Python and dispatch on the GPU, more than many
    layers take, so the layer runs n times inside one graph (a tf.while_loop) and the per-call time
    is (t(repeats + 1) - t(1)) / repeats: the floor and the one-off copy of the result cancel.
    """

    def loop(fn):
        @tf.function
        def calls(x, n):
            def body(i, x, acc):
                y = fn(x, training=False)
                # One element of each output into the result, so that no call is pruned as unused.
                return i + 1, x, acc + tf.cast(tf.reshape(y, [-1])[0], tf.float32)

            # parallel_iterations=1: the calls are independent, and overlapping them would time
            # throughput of concurrent calls rather than one call.
            return tf.while_loop(lambda i, x, acc: i < n, body, (tf.constant(0), x, tf.constant(0.0)),
                                 parallel_iterations=1)[2]

        return calls

    def per_call(fn):
        calls = loop(fn)
        # .numpy() waits for the result, so work queued on the GPU is inside the timing.
        once = seconds(lambda: calls(data, tf.constant(1)).numpy(), repeats=3)
        many = seconds(lambda: calls(data, tf.constant(repeats + 1)).numpy(), repeats=3)
        return (many - once) / repeats

    # An iteration costs ~0.1 ms on the GPU by itself (the loop condition goes through the host): the
    # same loop around the identity is taken off. Noise can make a tiny layer's <= 0: raise the repeats.
    return per_call(layer) - per_call(lambda x, training=False: tf.identity(x))


def forward_seconds(model, x, batch):
    """Seconds of the network alone over x: batches already on the device, one compiled inference call
    each, one wait at the end (as the PyTorch baseline runs). Keras' predict adds its input pipeline
    over a NumPy array (slicing, host-to-device copies, a wait per batch), the same for any model."""
    with tf.device(DEVICE.value):
        batches = [tf.constant(x[i:i + batch]) for i in range(0, len(x), batch)]
        forward = tf.function(lambda v: model(v, training=False))

        def run():
            return tf.add_n([tf.reduce_sum(forward(v)) for v in batches]).numpy()

        return seconds(run)


def pipeline_floor(x, batch):
    """Seconds of Keras' predict over x for a model that does nothing (it returns one pixel of each
    image): the input pipeline's own cost, the same under any model, from a NumPy array and from a
    tf.data.Dataset. (None, None) where this TensorFlow cannot run it on the device."""
    with tf.device(DEVICE.value):
        try:
            inputs = keras.Input(x.shape[1:])
            nothing = keras.Model(inputs, keras.layers.Lambda(lambda v: v[:, 0, 0, :])(inputs))
            return (seconds(lambda: nothing.predict(x, batch_size=batch, verbose=0)),
                    seconds(lambda: nothing.predict(dataset_of(x, batch), verbose=0)))
        except Exception as e:  # noqa: BLE001 (the tf-gpu stand-ins refuse some graphs; say so, go on)
            print(f"(the pipeline floor did not run here: {type(e).__name__}: {str(e)[:200]})")
            return None, None


def dataset_of(x, batch):
    """x as a tf.data.Dataset of batches, prefetched: how a user feeds predict from memory. Built once
    per array and batch (cached below), not inside a timing: building it copies x into a tensor."""
    key = (id(x), batch)
    if key not in _DATASETS:
        _DATASETS[key] = tf.data.Dataset.from_tensor_slices(x).batch(batch).prefetch(tf.data.AUTOTUNE)
    return _DATASETS[key]


_DATASETS = {}


def overhead_table(table):
    """Per-call cost of the op on tiny convolutions (1x8x8xC, 3x3 C->C; the 16-channel one runs the columns
    kernel, the 64-channel one a tiled kernel): the file op (no table input), the table op with the
    table on the host as the layers keep it, the same with its ranges computed inside the op (as the layers'
    inference in "batch" range mode does) or reduced on the device first (by range_with_zero, as their
    training calls do, and by TensorFlow's reductions and element-wise ops, as they did before), the Keras
    layer, and relu + add as the floor of any two ops. The differences
    are the host table's cost and the reductions' (the issue's goal: at most 10 us)."""
    rng = np.random.default_rng(1)
    path = table if os.path.isfile(table) else ""  # the file op takes a path ("" = exact)
    with tf.device("/CPU:0"):  # where the layers keep it: the GPU kernel takes it in host memory
        lut = tf.constant(lut_values(table)[0].astype(np.float32))
    print(f"\nper-call cost on {DEVICE.value}, 3x3 C->C on a 1x8x8xC input ({OVERHEAD_REPEATS.value} calls in one "
          "graph):")
    print("| call | C = 16 us | C = 64 us |")
    print("| --- | ---: | ---: |")
    times = {}
    for c in (16, 64):
        with tf.device(DEVICE.value):
            x = tf.constant(np.maximum(rng.normal(size=(1, 8, 8, c)), 0).astype(np.float32))
            w = tf.constant(rng.normal(scale=0.3, size=(3, 3, c, c)).astype(np.float32))
            layer = ta.FakeApproxConv2D(c, 3, padding="same", mul_map_file=table)
            layer.build(x.shape)
            fixed = ta.FakeApproxConv2D(c, 3, padding="same", mul_map_file=table, range_mode="fixed")
            fixed.build(x.shape)
            ta.calibrate(fixed, x.numpy())
        conv = dict(strides=[1, 1, 1, 1], padding="SAME")

        def fused(v, training=False, w=w):  # as the layers do in inference, "batch" mode
            return ta.approx_conv2d_with_batch_ranges(v, w, lut, **conv)[0]

        def reduced(v, training=False, w=w):  # as the layers do in training
            return ta.approx_conv2d_with_table(v, w, *ta.range_with_zero(v), *ta.range_with_zero(w), table=lut,
                                               **conv)

        def reduced_by_tf(v, training=False, w=w):  # as the layers did before range_with_zero
            r = [tf.minimum(tf.reduce_min(v), 0.0), tf.maximum(tf.reduce_max(v), 0.0),
                 tf.minimum(tf.reduce_min(w), 0.0), tf.maximum(tf.reduce_max(w), 0.0)]
            return ta.approx_conv2d_with_table(v, w, *r, table=lut, **conv)

        rows = [("op, file table, constant ranges",
                 lambda v, training=False, w=w: ta.approx_conv2d_with_min_max_vars(
                     v, w, 0.0, 4.0, -1.0, 1.0, num_bits=8, mul_map_file=path, **conv)),
                ("op, host table, constant ranges",
                 lambda v, training=False, w=w: ta.approx_conv2d_with_table(v, w, 0.0, 4.0, -1.0, 1.0, table=lut,
                                                                            **conv)),
                ("op, host table, ranges computed inside (approx_conv2d_with_batch_ranges)", fused),
                ("op, host table, ranges reduced on the device (range_with_zero)", reduced),
                ("op, host table, ranges by 8 TensorFlow ops (reduce_min, minimum, ...)", reduced_by_tf),
                ("FakeApproxConv2D (inference)", layer),
                ("FakeApproxConv2D (inference, range_mode fixed)", fixed),
                ("relu + add (floor of two ops)", lambda v, training=False: tf.nn.relu(v) + v)]
        for name, fn in rows:
            with tf.device(DEVICE.value):
                times[name, c] = layer_seconds(fn, x, OVERHEAD_REPEATS.value)
    for name in dict.fromkeys(name for name, _ in times):
        print(f"| {name} | {1e6 * times[name, 16]:.1f} | {1e6 * times[name, 64]:.1f} |")
    for what, a, b in (("the host table", "op, host table, constant ranges", "op, file table, constant ranges"),
                       ("the ranges inside the op", "op, host table, ranges computed inside "
                        "(approx_conv2d_with_batch_ranges)", "op, host table, constant ranges"),
                       ("reducing the ranges by range_with_zero", "op, host table, ranges reduced on the device "
                        "(range_with_zero)", "op, host table, constant ranges"),
                       ("the same with TensorFlow's ops", "op, host table, ranges by 8 TensorFlow ops (reduce_min, "
                        "minimum, ...)", "op, host table, constant ranges")):
        print(f"{what}: " + ", ".join(f"{1e6 * (times[a, c] - times[b, c]):.1f} us (C = {c})" for c in (16, 64))
              + " per call")


def trace_file():
    """The op library's trace file: TFAPPROX_TRACE, set to a new temporary file unless already set.

    The library reads the variable on its first op call, so this runs before any op does.
    """
    if "TFAPPROX_TRACE" not in os.environ:
        fd, os.environ["TFAPPROX_TRACE"] = tempfile.mkstemp(prefix="tfapprox-trace-", suffix=".tsv")
        os.close(fd)
    return os.environ["TFAPPROX_TRACE"]


def read_trace(path):
    """The trace's lines as dicts of their tab-separated key=value fields; [] without a trace."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    return [dict(field.split("=", 1) for field in line.split("\t") if "=" in field)
            for line in lines if line.strip()]


def traced_kernel(trace, layer, in_shape, device_type):
    """The kernel the op chose for `layer` on `in_shape` ('+split-k' when split), '-' if not traced."""
    dims = lambda shape: "x".join(map(str, shape))  # noqa: E731 (the trace's shape notation)
    if isinstance(layer, keras.layers.Dense):
        # The Dense runs the op on [N, 1, 1, in] images with a 1x1 filter (FakeApproxDense.call).
        depth = layer.kernel.shape[0]
        op_input, op_filter = (int(np.prod(in_shape[:-1])), 1, 1, depth), (1, 1, depth, layer.units)
    else:
        op_input, op_filter = in_shape, tuple(layer.kernel.shape)
    same = [line for line in trace if line.get("filter") == dims(op_filter)
            and device_type in (None, line.get("device"))]
    exact = [line for line in same if line.get("input") == dims(op_input)]
    # A Dense's filter alone identifies it in these networks, should its input be traced otherwise.
    found = exact or (same if isinstance(layer, keras.layers.Dense) else [])
    if not found:
        return "-"
    line = found[-1]  # the latest: a TFAPPROX_TRACE set by the caller may hold earlier runs' lines
    return line.get("kernel", "?") + ("+split-k" if line.get("split_k") == "1" else "")


def main(_):
    trace_path = trace_file()
    table, table_name = (TABLE.value, TABLE.value) if TABLE.value else default_table()
    device_type = tf.DeviceSpec.from_string(DEVICE.value).device_type
    torch = TorchBaseline()
    rng = np.random.default_rng(0)
    print(f"table: {table_name}; device {DEVICE.value}; {os.cpu_count()} CPUs; TensorFlow {tf.__version__}; "
          f"kernel trace {trace_path}")
    for net in NETS.value:
        with tf.device(DEVICE.value):
            model = {"resnet20": resnet20, "resnet50": resnet50}[net]()
            approx = ta.approximate_model(model, mul_map_file=table)
        approx_layers = ta.layers.approx_layers(approx)
        macs = sum(layer_macs(layer) for layer in approx_layers)
        shape = model.input_shape[1:]
        x = rng.uniform(0, 1, size=(IMAGES.value, *shape)).astype(np.float32)
        y = rng.integers(0, model.output_shape[-1], size=IMAGES.value)
        print(f"\n{net}: {len(approx_layers)} approximate layers, {macs / 1e6:.1f} M LUT-MACs per image, "
              f"{IMAGES.value} images")
        print(f"| step | approximate s | images/s | G LUT-MAC/s | float s | ratio |")
        print(f"| --- | ---: | ---: | ---: | ---: | ---: |")
        predict_s = {}
        for batch in map(int, BATCHES.value):
            with tf.device(DEVICE.value):
                t_approx = predict_s[batch] = seconds(lambda: approx.predict(x, batch_size=batch, verbose=0))
                t_float = (seconds(lambda: model.predict(x, batch_size=batch, verbose=0))
                           if FLOAT_KERAS.value else None)
            if t_float is None and TORCH.value:
                t_float = torch.seconds(net, IMAGES.value, batch)
            rows = [(f"predict batch {batch}", t_approx, t_float)]
            # The same from a tf.data.Dataset: Keras' slicing of a NumPy array (a fixed cost per call and
            # per batch, whatever the model) is most of what predict adds to the forward pass.
            with tf.device(DEVICE.value):
                t_data = seconds(lambda: approx.predict(dataset_of(x, batch), verbose=0))
                t_data_float = (seconds(lambda: model.predict(dataset_of(x, batch), verbose=0))
                                if FLOAT_KERAS.value else t_float)
            rows.append((f"predict batch {batch}, tf.data input", t_data, t_data_float))
            if STEPS_PER_EXECUTION.value > 1:
                # Keras' predict loop costs some milliseconds per call of its predict function on the host;
                # compiled with steps_per_execution, one call runs that many batches.
                with tf.device(DEVICE.value):
                    spe, spe_data = {}, {}
                    for m in ((approx, model) if FLOAT_KERAS.value else (approx,)):
                        m.compile(steps_per_execution=STEPS_PER_EXECUTION.value)
                        spe[m] = seconds(lambda: m.predict(x, batch_size=batch, verbose=0))
                        spe_data[m] = seconds(lambda: m.predict(dataset_of(x, batch), verbose=0))
                        m.compile()  # back to one batch per call
                for label, times in (("", spe), (", tf.data input", spe_data)):
                    rows.append((f"predict batch {batch}, steps_per_execution {STEPS_PER_EXECUTION.value}{label}",
                                 times[approx], times.get(model, t_float)))
            rows.append((f"forward batch {batch}, on the device", forward_seconds(approx, x, batch), t_float))
            for label, t, t_float in rows:
                ratio = f"{t / t_float:.1f}x" if t_float else "-"
                print(f"| {label} | {t:.3f} | {IMAGES.value / t:.0f} | {macs * IMAGES.value / t / 1e9:.0f} | "
                      f"{fmt(t_float, '.3f')} | {ratio} |")
            # The do-nothing model: images/s only (it does no LUT-MACs, and has no float counterpart).
            floor_numpy, floor_data = pipeline_floor(x, batch)
            for label, t in (("NumPy", floor_numpy), ("tf.data", floor_data)):
                if t is not None:
                    print(f"| predict batch {batch}, a model that does nothing, {label} input | {t:.3f} | "
                          f"{IMAGES.value / t:.0f} | - | - | - |")
        if FIT.value:
            with tf.device(DEVICE.value):
                for m in (approx, model):
                    m.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
                t_approx = seconds(lambda: approx.fit(x, y, batch_size=128, epochs=1, verbose=0), repeats=1)
                t_float = (seconds(lambda: model.fit(x, y, batch_size=128, epochs=1, verbose=0), repeats=1)
                           if FLOAT_KERAS.value else None)
            ratio = f"{t_approx / t_float:.1f}x" if t_float else "-"
            print(f"| fit 1 epoch batch 128 | {t_approx:.3f} | {IMAGES.value / t_approx:.0f} | "
                  f"{3 * macs * IMAGES.value / t_approx / 1e9:.0f} (x3: forward + 2 backward) | "
                  f"{fmt(t_float, '.3f')} | {ratio} |")
        for note in torch.notes():
            print(note)

        print(f"\nper layer, batch {LAYER_BATCH.value} (each layer alone, inference; time per call from "
              f"{LAYER_REPEATS.value} calls in one graph; approximate and float alternated 3 times, medians):")
        print("| layer | input | LUT-MACs/image | approximate ms | G LUT-MAC/s | kernel | float ms | ratio |")
        print("| --- | --- | ---: | ---: | ---: | --- | ---: | ---: |")
        accurate = {layer.name: layer for layer in model._flatten_layers(include_self=False, recursive=True)}
        summed = 0.0
        for layer in approx_layers:
            in_shape = (LAYER_BATCH.value, *layer.input.shape[1:])
            with tf.device(DEVICE.value):
                data = tf.constant(np.maximum(rng.normal(size=in_shape), 0).astype(np.float32))
                # Approximate and float layer alternated three times, medians: a slow stretch of a shared
                # machine then falls on both.
                pairs = [(layer_seconds(layer, data, LAYER_REPEATS.value),
                          layer_seconds(accurate[layer.name], data, LAYER_REPEATS.value) if FLOAT_KERAS.value else 0)
                         for _ in range(3)]
                t_layer = float(np.median([a for a, _ in pairs]))
                t_twin = float(np.median([b for _, b in pairs])) if FLOAT_KERAS.value else None
            summed += t_layer
            kernel = traced_kernel(read_trace(trace_path), layer, in_shape, device_type)
            n = layer_macs(layer) * LAYER_BATCH.value
            ratio = f"{t_layer / t_twin:.1f}x" if t_twin else "-"
            print(f"| {layer.name} | {'x'.join(map(str, in_shape[1:]))} | {layer_macs(layer)} | "
                  f"{1e3 * t_layer:.2f} | {n / t_layer / 1e9:.1f} | {kernel} | "
                  f"{fmt(None if t_twin is None else 1e3 * t_twin, '.2f')} | {ratio} |")

        # The issue's ResNet-50 goal: the whole network at >= 60% of its layers' summed kernel rate.
        summed *= IMAGES.value / LAYER_BATCH.value
        print(f"\nsummed layer time for the {IMAGES.value} images: {summed:.3f} s (layers at batch "
              f"{LAYER_BATCH.value})")
        if predict_s:
            batch = 1000 if 1000 in predict_s else max(predict_s)  # the goal's batch when it was timed
            print(f"predict batch {batch}: {predict_s[batch]:.3f} s: whole network at "
                  f"{100 * summed / predict_s[batch]:.0f}% of its layers' summed kernel rate")
    if OVERHEAD_REPEATS.value > 0:
        overhead_table(table)


if __name__ == "__main__":
    app.run(main)
