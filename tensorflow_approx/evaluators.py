"""Evaluators of candidate assignments {layer name: table} for the exploration (tensorflow_approx.explore),
and the store that keeps their results.

- `Evaluator`: one approximate copy of the model on one device; tables swapped in place per candidate.
- `ParallelEvaluator`: an Evaluator per device of this process, one thread each (logical devices, or the
  GPUs of a machine when the host's Python work per candidate is small beside the device's).
- `ProcessEvaluator`: an Evaluator per device, each in a process of its own (one per GPU): no interpreter
  lock shared between devices.
- `RayEvaluator`: Evaluators in Ray actors over the machines of a cluster.
- `ResultStore`: every result in SQLite, keyed by model, data and tables, so that nothing is evaluated
  twice and an interrupted search resumes.
"""

import collections
import hashlib
import json
import multiprocessing
import multiprocessing.connection
import os
import queue
import sqlite3
import tempfile
import threading
import time
import traceback
import warnings

import keras
import numpy as np
import tensorflow as tf

from tensorflow_approx.python.keras.convert import approximate_model
from tensorflow_approx.python.keras.layers import approx_layers
from tensorflow_approx.python.ops.approx_conv_ops import lut_values

__all__ = ["Evaluator", "ParallelEvaluator", "ProcessEvaluator", "RayEvaluator", "ResultStore", "data_key",
           "in_threads", "layer_macs", "model_key"]


def layer_macs(layer):
    """Multiplications of one image through a built Conv2D / DepthwiseConv2D / Dense (or approximate)
    layer: one per output element and kernel tap of its group."""
    outputs = int(np.prod(layer.output.shape[1:]))
    kernel = layer.kernel.shape
    if isinstance(layer, keras.layers.Dense):
        return outputs * int(kernel[0])
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return outputs * int(kernel[0]) * int(kernel[1])
    return outputs * int(kernel[0]) * int(kernel[1]) * int(kernel[2])


def _digest(*parts):
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else str(part).encode())
        h.update(b"\0")
    return h.hexdigest()


def _table_digest(values):
    """Identity of a table's contents (values as lut_values returns them)."""
    return _digest(values.dtype.str, values.tobytes())[:20]


_EXACT_DIGEST = _table_digest(lut_values("")[0])  # a layer with the exact product is the baseline


def model_key(model):
    """A digest of the model's architecture and weights: a retrained model is another model."""
    return _digest(json.dumps(model.get_config(), sort_keys=True, default=str),
                   *(np.ascontiguousarray(w).tobytes() for w in model.get_weights()))


def data_key(x, y):
    return _digest(np.ascontiguousarray(x).tobytes(), np.ascontiguousarray(y).tobytes(), x.shape, y.shape)


class ResultStore:
    """Evaluated assignments in a SQLite file (":memory:" for none), one row per (model, data,
    assignment). Writes are committed one by one, so a killed run loses at most the candidate it was
    evaluating."""

    def __init__(self, path):
        self.path = path
        # One connection shared by the threads of a ParallelEvaluator, behind a lock.
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS results (model TEXT NOT NULL, data TEXT NOT NULL, "
            "assignment TEXT NOT NULL, accuracy REAL NOT NULL, seconds REAL NOT NULL, "
            "PRIMARY KEY (model, data, assignment))")
        self._db.commit()

    def get(self, model, data, assignment):
        with self._lock:
            row = self._db.execute("SELECT accuracy FROM results WHERE model = ? AND data = ? AND assignment = ?",
                                   (model, data, assignment)).fetchone()
        return None if row is None else row[0]

    def put(self, model, data, assignment, accuracy, seconds):
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?)",
                             (model, data, assignment, float(accuracy), float(seconds)))
            self._db.commit()

    def count(self, model=None, data=None):
        query, args = "SELECT COUNT(*) FROM results", []
        if model is not None:
            query, args = query + " WHERE model = ? AND data = ?", [model, data]
        with self._lock:
            return self._db.execute(query, args).fetchone()[0]

    def close(self):
        self._db.close()


class Evaluator:
    """Accuracy of assignments {layer name: table} on (x, y), one approximate model whose right answers
    a tf.function counts.

    model: a trained functional or Sequential keras model with a classification output (sparse labels
    y); tables: anything `set_multiplier` takes (a Multiplier, a path or family name, an array);
    store: a ResultStore or None; layer_kwargs: approximate_model's (num_bits, range_mode, schemes).
    """

    def __init__(self, model, x, y, store=None, batch_size=256, device=None, **layer_kwargs):
        self.device = device  # e.g. "/GPU:1": the copy's variables live there and its evaluations run there
        with tf.device(device):
            self.approx = approximate_model(model, "", **layer_kwargs)
        self.layers = {layer.name: layer for layer in approx_layers(self.approx)}
        self.macs = {name: layer_macs(layer) for name, layer in self.layers.items()}
        self.x, self.y, self.batch_size = x, y, batch_size
        # The validation batches on the device once, cut as Keras' evaluate cuts them (the layers' "batch"
        # ranges depend on the cut), and a tf.function counting right answers per batch: a candidate costs
        # its forward passes and one wait for the host, without evaluate's per-batch input pipeline and
        # waits (half of a ResNet-20 candidate's time on an H200).
        labels = np.asarray(y).reshape(len(y), -1)[:, 0].astype(np.int64)
        with tf.device(device):
            self._batches = [(tf.constant(x[i:i + batch_size]), tf.constant(labels[i:i + batch_size]))
                             for i in range(0, len(x), batch_size)]
        self._count_right = tf.function(self._right_answers)
        self.store = store
        self.keys = (model_key(model), data_key(x, y))
        self.evaluations = 0  # candidates evaluated by this object (not found in the store)
        self._current = {}  # layer -> digest of its table now (absent: the exact product)

    def accuracy(self, assignment):
        """assignment: {layer name: table} (anything set_multiplier takes); the other layers take the
        exact product. Candidates are keyed by their tables' contents, so the same tables under other
        names, or a layer given the exact product, are the same candidate."""
        return self._evaluate(*self._tables(assignment))

    def _evaluate(self, tables, key):
        """accuracy() of a candidate as _tables gives it: ({layer: (digest, values)}, store key)."""
        if self.store is not None:
            stored = self.store.get(*self.keys, key)
            if stored is not None:
                return stored
        start = time.perf_counter()
        for name, layer in self.layers.items():
            digest, values = tables.get(name, (_EXACT_DIGEST, ""))
            if self._current.get(name, _EXACT_DIGEST) != digest:
                layer.set_multiplier(values)
                self._current[name] = digest
        with tf.device(self.device):
            right = tf.add_n([self._count_right(xb, yb) for xb, yb in self._batches]).numpy()
        # As Keras' accuracy metric computes it (float32 total over float32 count), so that a stored
        # result is the number evaluate() gives.
        accuracy = float(np.float32(right) / np.float32(len(self.x)))
        self.evaluations += 1
        if self.store is not None:
            self.store.put(*self.keys, key, accuracy, time.perf_counter() - start)
        return accuracy

    def _right_answers(self, x, labels):
        """How many of the batch's predictions (argmax of the output) equal their labels."""
        predicted = tf.argmax(self.approx(x, training=False), axis=-1)
        return tf.reduce_sum(tf.cast(tf.equal(predicted, labels), tf.int64))

    def _tables(self, assignment):
        """({layer: (digest, values)} without exact layers, the store key) of an assignment, checked."""
        unknown = sorted(set(assignment) - set(self.layers))
        if unknown:
            raise ValueError(f"assignment names layers that are not approximate layers of the model: {unknown}; "
                             f"they are {sorted(self.layers)}")
        tables = {}
        for name, table in assignment.items():
            values = lut_values(table, f"the table of layer {name!r}")[0]
            digest = _table_digest(values)
            if digest != _EXACT_DIGEST:
                tables[name] = (digest, values)
        return tables, json.dumps({name: tables[name][0] for name in sorted(tables)})

    def accuracies(self, assignments):
        """accuracy() of each assignment, in order."""
        return [self.accuracy(a) for a in assignments]


class ParallelEvaluator:
    """Evaluators on several devices (all the GPUs of a machine, or logical CPU devices), sharing one
    store: accuracies() spreads the distinct new candidates of a batch over them, one thread per device
    (TensorFlow runs each device's work outside the GIL). Same results as one Evaluator."""

    def __init__(self, model, x, y, devices, store=None, **kwargs):
        if not devices:
            raise ValueError("devices: give at least one, e.g. [d.name for d in tf.config.list_logical_devices('GPU')]")
        self.workers = [Evaluator(model, x, y, store=store, device=d, **kwargs) for d in devices]
        first = self.workers[0]
        self.layers, self.macs, self.keys, self.store = first.layers, first.macs, first.keys, store

    @property
    def evaluations(self):
        return sum(w.evaluations for w in self.workers)

    def accuracy(self, assignment):
        return self.accuracies([assignment])[0]

    def accuracies(self, assignments):
        # Checked and resolved once, here: the workers take the tables as they are.
        candidates = [self.workers[0]._tables(a) for a in assignments]
        todo = queue.Queue()
        seen = set()
        for tables, key in candidates:
            if key not in seen:  # a candidate twice in a batch is evaluated once
                seen.add(key)
                todo.put((tables, key))
        results = {}

        def work(evaluator):
            while True:
                try:
                    tables, key = todo.get_nowait()
                except queue.Empty:
                    return
                results[key] = evaluator._evaluate(tables, key)

        in_threads([lambda w=w: work(w) for w in self.workers])
        return [results[key] for _, key in candidates]


def in_threads(fns):
    """[fn() for fn in fns], each fn in its own thread (one per device: TensorFlow runs device work
    outside the GIL); the first error is raised here once all have ended."""
    results, errors = [None] * len(fns), []

    def run(i):
        try:
            results[i] = fns[i]()
        except BaseException as error:  # re-raised in the caller's thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results



def _model_bytes(model):
    """The model as .keras bytes: the format keras restores functional, Sequential and nested models, our
    layers included, from; how a model travels to another process."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.keras")
        model.save(path)
        with open(path, "rb") as f:
            return f.read()


def _model_from_bytes(model_bytes):
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.keras")
        with open(path, "wb") as f:
            f.write(model_bytes)
        return keras.models.load_model(path, compile=False)


class _RemoteEvaluator:
    """What the evaluators with workers elsewhere (Ray actors, processes) share: a local Evaluator on the
    CPU that never evaluates (it gives the layers, MACs and keys, and checks assignments before they
    travel), the store kept here (candidates found there are not sent; each result is written as it
    arrives, so an interrupted search resumes), and one candidate per worker at a time (a slow worker
    holds back one only). Subclasses give the workers and _submit / _wait / _result / _discard."""

    def _start_local(self, model, x, y, store, batch_size, layer_kwargs):
        self._local = Evaluator(model, x, y, store=store, batch_size=batch_size, device="/CPU:0", **layer_kwargs)
        self.layers, self.macs, self.keys, self.store = self._local.layers, self._local.macs, self._local.keys, store
        self.evaluations = 0  # candidates evaluated by the workers for this object

    def accuracy(self, assignment):
        return self.accuracies([assignment])[0]

    def accuracies(self, assignments):
        candidates = [self._local._tables(a) for a in assignments]
        results, todo = {}, []
        for tables, key in candidates:
            if key in results:
                continue  # a candidate twice in a batch is evaluated once
            results[key] = None if self.store is None else self.store.get(*self.keys, key)
            if results[key] is None:  # the tables travel as arrays: the workers need no library files
                todo.append((key, tables))
        todo.reverse()  # taken from the end: in the batch's order
        running, idle = {}, list(range(len(self.workers)))  # running: handle -> (key, worker index)
        try:
            while todo or running:
                while todo and idle:
                    key, tables = todo.pop()
                    worker = idle.pop()
                    running[self._submit(worker, tables, key)] = (key, worker)
                done = self._wait(list(running))
                key, worker = running.pop(done)
                results[key], seconds = self._result(done)
                self.evaluations += 1
                if self.store is not None:
                    self.store.put(*self.keys, key, results[key], seconds)
                idle.append(worker)
        except BaseException:
            for handle in running:  # no answer left behind for a later batch to take as its own
                self._discard(handle)
            raise
        return [results[key] for _, key in candidates]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _RayWorker:
    """What a Ray actor of a RayEvaluator holds: an Evaluator of its own, of the model shipped as .keras
    bytes. No store: the driver writes every result."""

    def __init__(self, model_bytes, x, y, threads, batch_size, layer_kwargs):
        # Ray reserves `threads` CPUs for the actor; TensorFlow would start a thread per core of the node
        # in every actor. Settable here: TensorFlow's runtime has not started in this process yet.
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
        # Actors may share a GPU (num_gpus_per_worker < 1): each takes the memory it needs, not all of it.
        for gpu in tf.config.list_physical_devices("GPU"):
            tf.config.experimental.set_memory_growth(gpu, True)
        self.evaluator = Evaluator(_model_from_bytes(model_bytes), x, y, batch_size=batch_size, **layer_kwargs)

    def accuracy(self, tables, key):
        """(accuracy, seconds) of a candidate as the driver's Evaluator._tables gives it."""
        start = time.perf_counter()
        return self.evaluator._evaluate(tables, key), time.perf_counter() - start


class RayEvaluator(_RemoteEvaluator):
    """Evaluators in Ray actors, over the machines of a Ray cluster (an actor per GPU, or CPU actors):
    accuracies() spreads the distinct new candidates of a batch over them. The store stays with the
    driver (this process): candidates found there are not sent, and each result is written as it
    arrives, so an interrupted search resumes. Same interface and results as an Evaluator.

    num_workers: the actors. num_gpus_per_worker: None (1 when the cluster has GPUs, else 0) or a number
    (a fraction shares a GPU). num_cpus_per_worker: CPUs reserved for each actor (and TensorFlow's
    threads in it). address: None (a new local Ray with num_workers x num_cpus_per_worker CPUs), "auto"
    (the cluster this machine joined with `ray start`) or "ray://host:10001" (Ray Client); a process
    already connected to Ray keeps its connection, whatever the address. A dead actor is restarted, and
    its candidate retried, up to max_restarts times. close() ends the actors (and Ray, when this object
    started it).

    A driver started from Python on a GPU node keeps the GPU memory TensorFlow takes there (its model,
    its own Evaluator's copy on /CPU:0 aside) unless it hides its GPUs first,
    `tf.config.set_visible_devices([], "GPU")` before TensorFlow starts, as the command line does; the
    actors enable memory growth, so that actors sharing a GPU each take what they need.
    """

    def __init__(self, model, x, y, num_workers, store=None, num_gpus_per_worker=None, num_cpus_per_worker=1,
                 address=None, max_restarts=3, batch_size=256, **layer_kwargs):
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
            raise ValueError(f"num_workers must be a positive integer, got {num_workers!r}")
        if isinstance(num_cpus_per_worker, bool) or not isinstance(num_cpus_per_worker, int) or num_cpus_per_worker < 1:
            raise ValueError(f"num_cpus_per_worker must be a positive integer, got {num_cpus_per_worker!r}")
        if num_gpus_per_worker is not None and (isinstance(num_gpus_per_worker, bool) or
                                                not isinstance(num_gpus_per_worker, (int, float)) or
                                                num_gpus_per_worker < 0):
            raise ValueError(f"num_gpus_per_worker must be None or a number >= 0, got {num_gpus_per_worker!r}")
        if address is not None and not isinstance(address, str):
            raise ValueError(f'address must be None, "auto" or "ray://host:port", got {address!r}')
        if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < 0:
            raise ValueError(f"max_restarts must be an integer >= 0, got {max_restarts!r}")
        import ray  # only here: the rest of the package works without Ray

        self._start_local(model, x, y, store, batch_size, layer_kwargs)
        self.workers = []
        self._started_ray = not ray.is_initialized()
        if self._started_ray:
            if address is None:
                ray.init(num_cpus=num_workers * num_cpus_per_worker, include_dashboard=False)
            else:
                ray.init(address=address)
        try:
            available = ray.cluster_resources()
            if num_gpus_per_worker is None:
                num_gpus_per_worker = 1 if available.get("GPU", 0) >= 1 else 0
            for resource, per_worker, argument in (("CPU", num_cpus_per_worker, "num_cpus_per_worker"),
                                                   ("GPU", num_gpus_per_worker, "num_gpus_per_worker")):
                if num_workers * per_worker > available.get(resource, 0):  # the actors would wait forever
                    raise ValueError(f"num_workers={num_workers} x {argument}={per_worker} needs more {resource}s "
                                     f"than the Ray cluster has ({available.get(resource, 0):g})")
            # Evaluation has no side effect (the driver writes results), so retrying a dead actor's
            # candidate on its restarted copy is safe.
            actor = ray.remote(_RayWorker).options(num_cpus=num_cpus_per_worker, num_gpus=num_gpus_per_worker,
                                                   max_restarts=max_restarts, max_task_retries=max_restarts)
            # One copy of the data per node, not per actor; held here so that a restarted actor finds it.
            self._data = ray.put(x), ray.put(y)
            model_bytes = _model_bytes(model)
            self.workers = [actor.remote(model_bytes, *self._data, num_cpus_per_worker, batch_size, layer_kwargs)
                            for _ in range(num_workers)]
        except BaseException:
            self.close()
            raise

    def _submit(self, worker, tables, key):
        return self.workers[worker].accuracy.remote(tables, key)

    def _wait(self, handles):
        import ray

        return ray.wait(handles, num_returns=1)[0][0]

    def _result(self, handle):
        import ray

        return ray.get(handle)

    def _discard(self, handle):
        pass  # an unclaimed Ray result is simply dropped

    def close(self):
        import ray

        for actor in self.workers:
            ray.kill(actor)
        self.workers = []
        if self._started_ray and ray.is_initialized():
            ray.shutdown()


# Tables a ProcessEvaluator's worker keeps between candidates, most recently used first; the driver keeps
# the same list of their digests and sends a table's values only when the worker lacks them.
_WORKER_TABLES = 256


def _remember(cache, size, digest, values=None):
    """The one rule both sides of a ProcessEvaluator apply to a candidate's tables, in the same order, so
    that their caches stay the same: a known digest moves to the front, a new one is added and the
    oldest dropped past `size` entries. Returns whether the digest was known."""
    known = digest in cache
    if known:
        cache.move_to_end(digest)
    else:
        cache[digest] = values
        while len(cache) > size:
            cache.popitem(last=False)
    return known


def see_only(device, threads=None):
    """In a new process, before TensorFlow's runtime starts: makes device ("GPU", i) the one GPU it sees
    (growing its memory as needed, so that other processes there keep theirs), or ("CPU", _) no GPU;
    threads: TensorFlow's thread pools (None: its default, all cores)."""
    kind, index = device
    gpus = tf.config.list_physical_devices("GPU")  # lists without starting TensorFlow's runtime
    if kind == "GPU":
        tf.config.set_visible_devices([gpus[index]], "GPU")
        tf.config.experimental.set_memory_growth(gpus[index], True)
    elif gpus:
        tf.config.set_visible_devices([], "GPU")
    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)


def physical_device(name, argument="devices"):
    """("GPU", i) or ("CPU", 0) of a device name such as "/GPU:1" or "/CPU:0", checked: a process that
    see_only() gives it sees that device alone."""
    try:
        spec = tf.DeviceSpec.from_string(name)
    except (ValueError, TypeError):
        spec = None
    if spec is None or spec.device_type not in ("GPU", "CPU"):
        raise ValueError(f'{argument}: {name!r} is not a device name such as "/GPU:0" or "/CPU:0"')
    if spec.device_type == "CPU":
        return "CPU", 0
    gpus = len(tf.config.list_physical_devices("GPU"))
    if (spec.device_index or 0) >= gpus:
        raise ValueError(f"{argument}: {name!r}: this machine has {gpus} GPU(s)")
    return "GPU", spec.device_index or 0


def answer_of(message, who, expect):
    """The fields of a worker process's message (kind, *fields) of the expected kind; its ("error",
    traceback) or another kind raises RuntimeError naming `who`."""
    if message[0] == "error":
        raise RuntimeError(f"{who} failed:\n{message[1]}")
    if message[0] != expect:
        raise RuntimeError(f"{who} answered {message[0]!r}, not {expect!r}")
    return message[1:]


def _process_worker(conn, device, model_bytes, x, y, batch_size, threads, tables_kept, layer_kwargs):
    """A ProcessEvaluator's worker (a spawned process): the one device given visible, an Evaluator of its
    own, then candidates until told to stop or the driver goes away."""
    try:
        see_only(device, threads)
        evaluator = Evaluator(_model_from_bytes(model_bytes), x, y, batch_size=batch_size, **layer_kwargs)
        del x, y  # the Evaluator holds the batches on its device
        conn.send(("ready",))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        return
    tables = collections.OrderedDict()
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the driver ended
        if message[0] == "stop":
            return
        _, key, sent = message
        try:
            candidate = {}
            for name, (digest, values) in sent.items():
                _remember(tables, tables_kept, digest, values)
                candidate[name] = (digest, tables[digest])
            start = time.perf_counter()
            accuracy = evaluator._evaluate(candidate, key)
            conn.send(("result", accuracy, time.perf_counter() - start))
        except Exception:
            conn.send(("error", traceback.format_exc()))


class ProcessEvaluator(_RemoteEvaluator):
    """An Evaluator per device, each in a process of its own (started with "spawn"), sharing one store
    kept in this process: accuracies() spreads the distinct new candidates of a batch over them, one at a
    time per worker. Same interface and results as an Evaluator.

    Beside ParallelEvaluator's threads, the processes share no interpreter lock: each candidate's Python
    work (its table swaps, the calls of the compiled forward pass) runs beside the other devices' instead
    of taking turns with it. A table is sent to a worker once; later candidates name it by its digest.

    devices: names such as "/GPU:0", "/GPU:1" (a physical GPU each: the worker sees that GPU alone) or
    "/CPU:0" (a worker that sees no GPU; several CPU workers share the cores). cpu_threads: TensorFlow's
    thread pools in each worker (None: TensorFlow's default, all cores). close() (or a with block) ends
    the workers; they also end with this process.

    This process should not hold the GPUs' memory: where its TensorFlow has not started yet, the GPUs
    are set to grow their memory as needed (its own Evaluator copy lives on /CPU:0).
    """

    def __init__(self, model, x, y, devices, store=None, batch_size=256, cpu_threads=None, **layer_kwargs):
        if isinstance(devices, str) or not devices:
            raise ValueError(f'devices: give a list of device names, e.g. ["/GPU:0", "/GPU:1"], got {devices!r}')
        places = [physical_device(name) for name in devices]
        if cpu_threads is not None and (isinstance(cpu_threads, bool) or not isinstance(cpu_threads, int) or
                                        cpu_threads < 1):
            raise ValueError(f"cpu_threads must be None or a positive integer, got {cpu_threads!r}")
        for gpu in tf.config.list_physical_devices("GPU"):
            try:
                tf.config.experimental.set_memory_growth(gpu, True)
            except RuntimeError:  # this process's TensorFlow has started: its setting stays
                if not tf.config.experimental.get_memory_growth(gpu):
                    warnings.warn(f"{gpu.name}: this process's TensorFlow holds most of this GPU's memory; the "
                                  "ProcessEvaluator's worker there may run out. Create the ProcessEvaluator before "
                                  "any other TensorFlow work, or enable memory growth first.")
        self._start_local(model, x, y, store, batch_size, layer_kwargs)
        self.devices = list(devices)
        self.workers, self._conns, self._tables = [], [], []
        self._tables_kept = _WORKER_TABLES
        context = multiprocessing.get_context("spawn")  # a forked TensorFlow runtime is not usable
        try:
            model_bytes = _model_bytes(model)
            for place in places:
                ours, theirs = context.Pipe()
                process = context.Process(target=_process_worker, daemon=True,
                                          args=(theirs, place, model_bytes, x, y, batch_size, cpu_threads,
                                                self._tables_kept, layer_kwargs))
                process.start()
                theirs.close()
                self.workers.append(process)
                self._conns.append(ours)
                self._tables.append(collections.OrderedDict())
            for i in range(len(self.workers)):  # all start at once; each answers when its model is ready
                self._result(i, expect="ready")
        except BaseException:
            self.close()
            raise

    def _submit(self, worker, tables, key):
        sent = {}
        for name, (digest, values) in tables.items():
            sent[name] = (digest, None if _remember(self._tables[worker], self._tables_kept, digest) else values)
        try:
            self._conns[worker].send(("evaluate", key, sent))
        except (BrokenPipeError, OSError):
            self._result(worker)  # raises with the worker's fate
        return worker

    def _wait(self, handles):
        ready = multiprocessing.connection.wait([self._conns[w] for w in handles])
        return self._conns.index(ready[0])

    def _result(self, worker, expect="result"):
        """(accuracy, seconds) of the worker's candidate; an error there, or its end, raises here."""
        try:
            message = self._conns[worker].recv()
        except (EOFError, OSError):
            process = self.workers[worker]
            process.join(5)
            self.close()  # the others may still run, but one device is gone: a new evaluator starts clean
            raise RuntimeError(f"the worker of {self.devices[worker]} ended (exit code {process.exitcode}); "
                               "this ProcessEvaluator is closed") from None
        return answer_of(message, f"the worker of {self.devices[worker]}", expect)

    def _discard(self, handle):
        try:
            self._conns[handle].recv()
        except (EOFError, OSError):
            pass

    def close(self):
        for conn in self._conns:
            try:
                conn.send(("stop",))
            except (BrokenPipeError, OSError):
                pass
        for process in self.workers:
            process.join(10)
            if process.is_alive():
                process.terminate()
                process.join(5)
        for conn in self._conns:
            conn.close()
        self.workers, self._conns, self._tables = [], [], []
