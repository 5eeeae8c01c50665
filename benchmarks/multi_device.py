"""One device against several (issue 15): the same work in one run, on the first device and on all of them.

1. Predict: ResNet-20 (32x32x3) with every Conv2D/Dense approximate, one copy of the model per device
   (same weights); all images on the first device, then the images in equal contiguous shards, one
   Python thread per device calling its copy's predict (TensorFlow runs device work outside the GIL).
   The same for the network alone on batches already on each device ("forward", as models.py times
   one device). The sharded predictions must equal the one-device ones bit for bit.
2. Exploration: explore.ParallelEvaluator over the first device and over all devices (no store, so
   every candidate is evaluated) on the same random per-layer assignments; accuracies must be equal.
3. With --processes (the default): both again with one process per device (each sees its device alone,
   as one process per GPU is run in practice): the predict and forward steps in worker processes started
   together, timed from the first one's start to the last one's end; the exploration with
   explore.ProcessEvaluator. Their outputs and accuracies must equal the threads' ones.

Random weights, images and labels: throughput only, the accuracies mean nothing.

    python benchmarks/multi_device.py [--devices /GPU:0,/GPU:1] [--images 10000] [--batch 1000]
        [--candidates 40] [--val_images 10000] [--table PATH] [--library DIR] [--seed 0]

--devices defaults to every GPU, or without one to two logical CPU devices (which share the same CPU
cores: a test of the script, not of scaling); --split_gpu N makes N logical GPUs of the first GPU (the
same: the multi-device path on a GPU, not the scaling). --images and --table are benchmarks/models.py's flags
(this script imports it for the network and default_table); its other flags do nothing here.
--library is a folder of .bin/.npy/.c tables: explore.load_library's when it has a METRICS.csv with
costs, else every unsigned table in it (costs are not needed for throughput); without it a few
built-in families. The exact product is always one of the choices.
"""

import glob
import multiprocessing
import os
import sys
import time
import traceback
import warnings

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import tensorflow_approx as ta  # noqa: E402
from tensorflow_approx import evaluators, explore  # noqa: E402
from tensorflow_approx import multipliers as mx  # noqa: E402
from benchmarks import models  # noqa: E402 (defines --images, --table and its own other flags)
from benchmarks.torch_baseline import seconds  # noqa: E402

DEVICES = flags.DEFINE_list("devices", None, "devices, e.g. /GPU:0,/GPU:1 (default: every GPU, else 2 logical CPUs)")
BATCH = flags.DEFINE_list("batch", ["1000"], "predict batch sizes; the first is also the evaluation batch")
CANDIDATES = flags.DEFINE_integer("candidates", 40, "timed candidates of the exploration")
VAL_IMAGES = flags.DEFINE_integer("val_images", 10000, "validation images per candidate")
LIBRARY = flags.DEFINE_string("library", None, "folder of tables (default: built-in families)")
SEED = flags.DEFINE_integer("seed", 0, "seed of the weights, data and candidates")
SPLIT_GPU = flags.DEFINE_integer("split_gpu", 0, "split the first GPU into this many logical GPUs (a machine "
                                 "with one GPU: checks the multi-device path on a GPU, not the scaling)")
PROCESSES = flags.DEFINE_bool("processes", True, "also run each step with one process per device (not with "
                                "--split_gpu: a process sees whole GPUs)")
flags.FLAGS.set_default("images", 10000)  # models.py's flag; this figure

BUILT_IN = ("exact", "drum4", "drum6", "coltrunc8", "optrunc2", "mitchell", "etm4")


def setup_devices(spec):
    """Device names to use; logical CPU devices are made here, before TensorFlow initializes."""
    gpus = tf.config.list_physical_devices("GPU")  # lists without initializing TensorFlow
    if SPLIT_GPU.value > 1:
        if not gpus:
            raise app.UsageError("--split_gpu: no GPU here")
        # 16 GB each: ample for ResNet-20 at batch 1000, and N of them fit an H100/H200.
        tf.config.set_logical_device_configuration(
            gpus[0], [tf.config.LogicalDeviceConfiguration(memory_limit=16384)] * SPLIT_GPU.value)
        return [f"/GPU:{i}" for i in range(SPLIT_GPU.value)]
    for gpu in gpus:  # this process's copies take what they need: the worker processes share the GPUs
        tf.config.experimental.set_memory_growth(gpu, True)
    if spec:
        devices = [tf.DeviceSpec.from_string(d) for d in spec]
    elif gpus:
        return [f"/GPU:{i}" for i in range(len(gpus))]
    else:
        devices = [tf.DeviceSpec.from_string(d) for d in ("/CPU:0", "/CPU:1")]
    cpus = 1 + max((d.device_index or 0 for d in devices if d.device_type == "CPU"), default=0)
    if cpus > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * cpus)
    names = [f"/{d.device_type}:{d.device_index or 0}" for d in devices]
    known = {f"/{d.device_type}:{tf.DeviceSpec.from_string(d.name).device_index}"
             for d in tf.config.list_logical_devices()}
    missing = [n for n in names if n not in known]
    if missing:
        raise app.UsageError(f"--devices: {missing} not among {sorted(known)}")
    return names


def timed(run):
    """(seconds(run), what the last timed call returned): the outputs checked are those of the timing."""
    out = {}
    return seconds(lambda: out.update(result=run())), out["result"]


def shards(n_images, batch, n):
    """n contiguous (start, stop) image ranges of whole batches, as equal as the batches allow. Whole
    batches, because the layers take their quantization ranges per batch ("batch" range mode): a batch
    cut differently would give other outputs, and the check against one device would fail."""
    n_batches = -(-n_images // batch)
    if n_batches < n:
        raise app.UsageError(f"{n_images} images at batch {batch} make {n_batches} batches, fewer than {n} devices")
    return [(int(b[0]) * batch, min(n_images, (int(b[-1]) + 1) * batch))
            for b in np.array_split(np.arange(n_batches), n)]


def library_tables(folder):
    """{name: table} to draw the candidates' per-layer tables from, the exact product included."""
    if folder is None:
        return {name: mx.get(name) for name in BUILT_IN}
    try:
        with warnings.catch_warnings():  # one warning per table without a cost, when METRICS.csv is absent
            warnings.simplefilter("ignore")
            library = explore.load_library(folder)[0]
    except ValueError:  # no METRICS.csv (or no exact table with a cost): take the folder's tables as they are
        library = {}
        for path in sorted(glob.glob(os.path.join(folder, "*"))):
            if os.path.splitext(path)[1].lower() in (".bin", ".npy", ".c"):
                m = mx.get(path)
                library[m.name] = m
    # The layers compute with unsigned products: a signed table would need other layers.
    library = {name: m for name, m in library.items() if not m.signed}
    if not any(m.is_exact() for m in library.values()):
        library["exact"] = mx.get("exact")
    if len(library) < 2:
        raise app.UsageError(f"--library {folder}: no unsigned approximate tables (.bin/.npy/.c) in it")
    return library


def joined(results):
    """One array of in_threads' results: the output batches of every device, in order."""
    return np.concatenate([np.asarray(y) for part in results for y in part])


def short(devices):
    return f"{len(devices)} ({','.join(devices)})"


def device_worker(conn, place, model_bytes, table):
    """A worker process of the process rows: sees its device alone (evaluators.see_only), makes its own
    approximate copy of the model, then runs steps: ("predict" | "dataset" | "forward", images, batch) runs once
    untimed (traces), answers "warm", and then once per "go" it is sent, answering (start, stop, outputs)."""
    try:
        evaluators.see_only(place)
        copy = ta.approximate_model(evaluators._model_from_bytes(model_bytes), mul_map_file=table)
        forward = tf.function(lambda v: copy(v, training=False))
        conn.send(("ready",))
        while True:
            message = conn.recv()
            if message[0] == "stop":
                return
            _, step, images, batch, repeats = message
            if step == "predict":
                def run():
                    return [copy.predict(images, batch_size=batch, verbose=0)]
            elif step == "dataset":
                def run():
                    return [copy.predict(as_dataset(images, batch), verbose=0)]
            else:
                batches = [tf.constant(images[j:j + batch]) for j in range(0, len(images), batch)]

                def run():
                    outputs = [forward(v) for v in batches]
                    tf.add_n([tf.reduce_sum(y) for y in outputs]).numpy()  # waits for the device
                    return outputs
            run()
            conn.send(("warm",))
            for _ in range(repeats):
                conn.recv()  # "go"
                start = time.perf_counter()
                outputs = run()
                stop = time.perf_counter()
                conn.send(("done", start, stop, [np.asarray(y) for y in outputs]))
    except BaseException:
        conn.send(("error", traceback.format_exc()))


class DeviceProcesses:
    """One device_worker process per device (physical GPUs, or CPU workers), started together."""

    def __init__(self, devices, model, table):
        context = multiprocessing.get_context("spawn")
        model_bytes = evaluators._model_bytes(model)
        self.devices, self.conns, self.processes = devices, [], []
        for name in devices:
            ours, theirs = context.Pipe()
            process = context.Process(target=device_worker, daemon=True,
                                      args=(theirs, evaluators.physical_device(name, "--devices"), model_bytes, table))
            process.start()
            self.conns.append(ours)
            self.processes.append(process)
        for i in range(len(devices)):
            self.answer(i, "ready")

    def answer(self, i, expect):
        return evaluators.answer_of(self.conns[i].recv(), f"the worker process of {self.devices[i]}", expect)

    def run(self, step, parts, batch, repeats=2):
        """(median over repeats of the seconds from the first worker's start to the last one's end, the
        outputs of the last repeat): worker i runs parts[i]."""
        used = range(len(parts))
        for i in used:
            self.conns[i].send(("step", step, parts[i], batch, repeats))
        for i in used:
            self.answer(i, "warm")
        times = []
        for _ in range(repeats):
            for i in used:
                self.conns[i].send(("go",))
            done = [self.answer(i, "done") for i in used]
            times.append(max(d[1] for d in done) - min(d[0] for d in done))
        return float(np.median(times)), [d[2] for d in done]

    def close(self):
        for conn in self.conns:
            conn.send(("stop",))
        for process in self.processes:
            process.join(30)


def as_dataset(images, batch):
    """The images as the tf.data input Keras' predict also takes, made in the timed step: predict on NumPy
    arrays pays about 0.1 s per call for its own input pipeline (measured on the H200 host: 1 and 2 GPUs,
    batches 1000 and 128), whatever the share of images, which bounds its scaling."""
    return tf.data.Dataset.from_tensor_slices(images).batch(batch)


def predict_part(devices, copies, approx_layers, x, batch, mismatches, workers=None):
    """Rows of predict and forward at `batch`, the first device alone and all devices (approx_layers:
    the approximate layers of one copy)."""
    n = len(devices)
    macs = sum(explore.layer_macs(layer) for layer in approx_layers)
    forwards = [tf.function(lambda v, m=m: m(v, training=False)) for m in copies]  # one per copy: its own traces

    def predict(i, part):
        with tf.device(devices[i]):  # the thread's ops run where its copy's variables are
            return [copies[i].predict(part, batch_size=batch, verbose=0)]

    def predict_dataset(i, part):
        with tf.device(devices[i]):
            return [copies[i].predict(as_dataset(part, batch), verbose=0)]

    def on_device(i, part):
        with tf.device(devices[i]):
            return [tf.constant(part[j:j + batch]) for j in range(0, len(part), batch)]

    def forward(i, batches):
        with tf.device(devices[i]):
            outputs = [forwards[i](v) for v in batches]
            tf.add_n([tf.reduce_sum(y) for y in outputs]).numpy()  # waits for the device's queued work
        return outputs  # left on the device: copied for the check after the timing

    parts = [x[a:b] for a, b in shards(len(x), batch, n)]
    one_batches = on_device(0, x)
    all_batches = [on_device(i, part) for i, part in enumerate(parts)]
    steps = {  # label: (the worker processes' step, 1 device, all devices)
        f"predict batch {batch}": (
            "predict", lambda: explore.in_threads([lambda: predict(0, x)]),
            lambda: explore.in_threads([lambda i=i, p=p: predict(i, p) for i, p in enumerate(parts)])),
        f"predict batch {batch}, tf.data input": (
            "dataset", lambda: explore.in_threads([lambda: predict_dataset(0, x)]),
            lambda: explore.in_threads([lambda i=i, p=p: predict_dataset(i, p) for i, p in enumerate(parts)])),
        f"forward batch {batch}, on the device": (
            "forward", lambda: explore.in_threads([lambda: forward(0, one_batches)]),
            lambda: explore.in_threads([lambda i=i, b=b: forward(i, b) for i, b in enumerate(all_batches)])),
    }
    for step, (name, one, every) in steps.items():
        # seconds() calls each once untimed first: every copy's predict / tf.function is traced then.
        t1, y1 = timed(one)
        tn, yn = timed(every)
        if not np.array_equal(joined(y1), joined(yn)):
            mismatches.append(f"{step}: {n}-device outputs differ from the 1-device ones")
            print(f"MISMATCH: {mismatches[-1]}")
        rows = [(step, devices[:1], t1, t1), (step, devices, tn, t1)]
        if workers is not None:  # the same step in one process per device
            p1, z1 = workers.run(name, [x], batch)
            pn, zn = workers.run(name, parts, batch)
            for outputs, count in ((z1, 1), (zn, n)):
                if not np.array_equal(joined(outputs), joined(y1)):
                    mismatches.append(f"{step}: outputs of {count} process(es) differ from the threads' ones")
                    print(f"MISMATCH: {mismatches[-1]}")
            rows += [(f"{step}, processes", devices[:1], p1, p1), (f"{step}, processes", devices, pn, p1)]
        for label, devs, t, base in rows:
            print(f"| {label} | {short(devs)} | {t:.3f} | {len(x) / t:.0f} | {macs * len(x) / t / 1e9:.0f} | "
                  f"{base / t:.2f}x |")


def explore_part(devices, model, library, batch, rng, mismatches, processes):
    """The exploration's candidates/min on the first device and on all devices: threads
    (ParallelEvaluator), then with processes, one per device (ProcessEvaluator)."""
    x = rng.uniform(0, 1, size=(VAL_IMAGES.value, *model.input_shape[1:])).astype(np.float32)
    y = rng.integers(0, model.output_shape[-1], size=VAL_IMAGES.value)
    kinds = [("ParallelEvaluator", lambda devs: explore.ParallelEvaluator(model, x, y, devs, batch_size=batch))]
    if processes:
        kinds.append(("ProcessEvaluator", lambda devs: explore.ProcessEvaluator(model, x, y, devs, batch_size=batch)))
    names, tables = list(approx_names(model)), list(library.values())

    def draw():
        return {name: tables[rng.integers(len(tables))] for name in names}

    # Warm-ups first (not in the timed set): each worker's first candidate traces its tf.function that
    # counts right answers.
    warm = [draw() for _ in devices]
    candidates = [draw() for _ in range(CANDIDATES.value)]
    print(f"\nexploration: {len(names)} approximate layers, each a random one of {len(tables)} tables; "
          f"{VAL_IMAGES.value} validation images (random, random labels) per candidate at batch {batch}; "
          f"no store, so every candidate is evaluated")
    print("| evaluator | devices | candidates | seconds | candidates/min | scaling |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    reference = None
    for kind, make in kinds:
        results = {}
        for key, devs in (("1", devices[:1]), ("N", devices)):
            evaluator = make(devs)
            try:
                # Warm-ups first, one per worker (not timed): each worker's first candidate traces its
                # tf.function that counts right answers.
                if isinstance(evaluator, explore.ParallelEvaluator):
                    for worker, assignment in zip(evaluator.workers, warm):
                        worker.accuracy(assignment)
                else:  # every worker is idle: each takes one
                    evaluator.accuracies(warm[:len(devs)])
                start = time.perf_counter()  # one timed pass (seconds() would evaluate the set twice)
                accuracies = evaluator.accuracies(candidates)
                results[key] = (time.perf_counter() - start, accuracies)
            finally:
                if hasattr(evaluator, "close"):
                    evaluator.close()
        t1 = results["1"][0]
        for key, devs in (("1", devices[:1]), ("N", devices)):
            t = results[key][0]
            print(f"| {kind} | {short(devs)} | {len(candidates)} | {t:.2f} | {60 * len(candidates) / t:.1f} | "
                  f"{t1 / t:.2f}x |")
        reference = reference or results["1"][1]
        for key, devs in (("1", devices[:1]), ("N", devices)):
            if results[key][1] != reference:
                mismatches.append(f"exploration: {kind} on {len(devs)} device(s) gives other accuracies")
                print(f"MISMATCH: {mismatches[-1]}")


def approx_names(model):
    """The names of the layers an Evaluator of `model` makes approximate (its candidates' keys)."""
    return [layer.name for layer in ta.layers.approx_layers(ta.approximate_model(model, ""))]


def main(_):
    devices = setup_devices(DEVICES.value)  # first: TensorFlow must not have started yet
    batches = [int(b) for b in BATCH.value]
    table, table_name = (models.TABLE.value, models.TABLE.value) if models.TABLE.value else models.default_table()
    library = library_tables(LIBRARY.value)
    rng = np.random.default_rng(SEED.value)
    keras.utils.set_random_seed(SEED.value)

    gpus = [tf.config.experimental.get_device_details(g).get("device_name", g.name)
            for g in tf.config.list_physical_devices("GPU")]
    print(f"devices: {', '.join(devices)}; GPUs: {', '.join(gpus) or 'none'}; {os.cpu_count()} CPUs; "
          f"TensorFlow {tf.__version__}")
    print(f"table: {table_name}; {models.IMAGES.value} images; library: {LIBRARY.value or 'built-in families'} "
          f"({len(library)} tables)")
    print("random weights, random images and labels: throughput only")

    model = models.resnet20()
    copies = []
    for d in devices:
        with tf.device(d):  # the copy's variables (weights, tables) live on its device
            copies.append(ta.approximate_model(model, mul_map_file=table))
    # Every Conv2D/Dense must be approximate: the GPU machine's stand-ins have no conv2d or matmul.
    approx_layers = ta.layers.approx_layers(copies[0])
    plain = [layer.name for layer in copies[0]._flatten_layers(include_self=False, recursive=True)
             if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)) and layer not in approx_layers]
    if plain:
        raise RuntimeError(f"layers left accurate: {plain}")

    x = rng.uniform(0, 1, size=(models.IMAGES.value, *model.input_shape[1:])).astype(np.float32)
    mismatches = []
    print(f"\npredict: ResNet-20, {len(approx_layers)} approximate layers; one copy per "
          f"device; all devices: the images in contiguous shards of whole batches, one thread per device "
          f"(or one process per device: the rows marked processes)")
    print("| step | devices | seconds | images/s | G LUT-MAC/s | scaling vs 1 device |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    processes = PROCESSES.value and SPLIT_GPU.value <= 1
    workers = DeviceProcesses(devices, model, table) if processes else None
    try:
        for batch in batches:
            predict_part(devices, copies, approx_layers, x, batch, mismatches, workers)
    finally:
        if workers is not None:
            workers.close()

    explore_part(devices, model, library, batches[0], rng, mismatches, processes)
    print(f"\nscaling goal (issue 15): >= 1.8x on 2 GPUs; outputs and accuracies "
          f"{'differ: ' + '; '.join(mismatches) if mismatches else 'equal between 1 and all devices'}")
    if mismatches:
        raise SystemExit(1)


if __name__ == "__main__":
    app.run(main)
