"""Design-space exploration, first pieces: which multiplier in which layer, and what it costs.

    store = explore.ResultStore("results.sqlite")
    evaluator = explore.Evaluator(model, x_val, y_val, store=store)
    rows = explore.sensitivity(evaluator, {"drum4": mx.get("drum4"), "mul8u_L40": "mul8u_L40.bin"})

- `Evaluator` copies the trained model once with every Conv2D / DepthwiseConv2D / Dense approximate
  (the exact product in each), counts its right answers with one tf.function, and evaluates an
  assignment {layer name: table} by swapping tables in place (`set_multiplier`): no rebuild and no
  retrace per candidate. Layers left out
  of an assignment compute with the exact product (8-bit quantization alone), the baseline of the
  search.
- `ParallelEvaluator` runs an Evaluator per device (every GPU of a machine, or logical CPU devices)
  and spreads each batch of candidates (a generation, a layer's sensitivity) over them; `RayEvaluator`
  the same with Evaluators in Ray actors over the machines of a cluster, the store staying with the
  driver (docs/exploration_cluster.md).
- `ResultStore` writes every evaluated assignment to SQLite, keyed by the model (its configuration
  and weights), the data and the assignment, so an interrupted run resumes where it stopped and a
  candidate seen before is never evaluated again.
- `sensitivity` evaluates each layer with each multiplier alone, beside the layer's MACs per image.
- `relative_energy` is the search's cost: sum over layers of MACs x the power of the layer's
  multiplier, over the same with the exact multiplier's power (published PDK45 power from a
  METRICS.csv beside EvoApprox tables, or any costs you give).
- `greedy` (sensitivity-guided) and `nsga2` (pymoo's NSGA-II over per-layer choices) search
  assignments for accuracy against energy; `search` runs sensitivity, greedy and NSGA-II in turn;
  `pareto_front` keeps the non-dominated points.
- `library_from` gives a library, its costs and the exact one's label from "families" or a folder.

Command line (a saved model, validation data as .npz with x and y, a folder of tables with METRICS.csv):

    python -m tensorflow_approx.explore --model m.keras --data val.npz --library ../shared/axmul_8x8 \
        [--store explore.sqlite] [--out front.csv] [--plot front.png] [--generations 10] [--population 24]
        [--tiles K] [--devices all | --ray auto --workers N]
"""

import csv
import hashlib
import json
import os
import queue
import sqlite3
import tempfile
import threading
import time

import keras
import numpy as np
import tensorflow as tf

from tensorflow_approx.python.keras.convert import approximate_model
from tensorflow_approx.python.keras.layers import approx_layers
from tensorflow_approx.python.ops.approx_conv_ops import lut_values

__all__ = ["Evaluator", "ParallelEvaluator", "RayEvaluator", "ResultStore", "family_library", "greedy", "layer_macs",
           "library_from", "load_library", "nsga2", "pareto_front", "plot_points", "relative_energy", "search",
           "sensitivity", "write_points"]


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


class _RayWorker:
    """What a Ray actor of a RayEvaluator holds: an Evaluator of its own, of the model shipped as .keras
    bytes (the format keras restores functional, Sequential and nested models, our layers included,
    from). No store: the driver writes every result."""

    def __init__(self, model_bytes, x, y, threads, batch_size, layer_kwargs):
        # Ray reserves `threads` CPUs for the actor; TensorFlow would start a thread per core of the node
        # in every actor. Settable here: TensorFlow's runtime has not started in this process yet.
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
        # Actors may share a GPU (num_gpus_per_worker < 1): each takes the memory it needs, not all of it.
        for gpu in tf.config.list_physical_devices("GPU"):
            tf.config.experimental.set_memory_growth(gpu, True)
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "model.keras")
            with open(path, "wb") as f:
                f.write(model_bytes)
            model = keras.models.load_model(path, compile=False)
        self.evaluator = Evaluator(model, x, y, batch_size=batch_size, **layer_kwargs)

    def accuracy(self, tables, key):
        """(accuracy, seconds) of a candidate as the driver's Evaluator._tables gives it."""
        start = time.perf_counter()
        return self.evaluator._evaluate(tables, key), time.perf_counter() - start


class RayEvaluator:
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

        # The driver's own Evaluator never evaluates: it gives the layers, MACs, keys and candidate keys
        # (and checks assignments before they travel).
        self._local = Evaluator(model, x, y, store=store, batch_size=batch_size, device="/CPU:0", **layer_kwargs)
        self.layers, self.macs, self.keys, self.store = self._local.layers, self._local.macs, self._local.keys, store
        self.evaluations = 0  # candidates evaluated by the actors for this object
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
            with tempfile.TemporaryDirectory() as folder:
                path = os.path.join(folder, "model.keras")
                model.save(path)
                with open(path, "rb") as f:
                    model_bytes = f.read()
            # Evaluation has no side effect (the driver writes results), so retrying a dead actor's
            # candidate on its restarted copy is safe.
            actor = ray.remote(_RayWorker).options(num_cpus=num_cpus_per_worker, num_gpus=num_gpus_per_worker,
                                                   max_restarts=max_restarts, max_task_retries=max_restarts)
            # One copy of the data per node, not per actor; held here so that a restarted actor finds it.
            self._data = ray.put(x), ray.put(y)
            self.workers = [actor.remote(model_bytes, *self._data, num_cpus_per_worker, batch_size, layer_kwargs)
                            for _ in range(num_workers)]
        except BaseException:
            self.close()
            raise

    def accuracy(self, assignment):
        return self.accuracies([assignment])[0]

    def accuracies(self, assignments):
        import ray

        candidates = [self._local._tables(a) for a in assignments]
        results, todo = {}, []
        for tables, key in candidates:
            if key in results:
                continue  # a candidate twice in a batch is evaluated once
            results[key] = None if self.store is None else self.store.get(*self.keys, key)
            if results[key] is None:  # the tables travel as arrays: the actors need no library files
                todo.append((key, tables))
        todo.reverse()  # taken from the end: in the batch's order
        running, idle = {}, list(self.workers)  # running: result ref -> (key, actor)
        while todo or running:
            while todo and idle:  # one candidate per actor at a time: a slow actor holds back one only
                key, tables = todo.pop()
                actor = idle.pop()
                running[actor.accuracy.remote(tables, key)] = (key, actor)
            [done], _ = ray.wait(list(running), num_returns=1)
            key, actor = running.pop(done)
            results[key], seconds = ray.get(done)
            self.evaluations += 1
            if self.store is not None:
                self.store.put(*self.keys, key, results[key], seconds)
            idle.append(actor)
        return [results[key] for _, key in candidates]

    def close(self):
        import ray

        for actor in self.workers:
            ray.kill(actor)
        self.workers = []
        if self._started_ray and ray.is_initialized():
            ray.shutdown()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _library(library):
    """{label: table values}: a dict's entries, or a list of paths / family names labelled by themselves,
    each checked and resolved once (files read, families built, .c compiled), before any evaluation."""
    entries = library.items() if isinstance(library, dict) else ((str(entry), entry) for entry in library)
    return {label: lut_values(entry, f"library entry {label!r}")[0] for label, entry in entries}


def sensitivity(evaluator, library, progress=True):
    """Each layer with each multiplier of `library` alone (the others exact): a list of dicts
    {layer, multiplier, macs, accuracy, loss} (loss: the exact 8-bit model's accuracy minus this one),
    layers in the model's order. library: {label: table} or a list of paths / family names."""
    library = _library(library)  # every table checked before any evaluation
    baseline = evaluator.accuracy({})
    bar = keras.utils.Progbar(len(evaluator.layers) * len(library), unit_name="candidate") if progress else None
    rows = []
    for name in evaluator.layers:  # a layer's candidates in one batch (spread over a ParallelEvaluator's devices)
        accuracies = evaluator.accuracies([{name: table} for table in library.values()])
        for label, accuracy in zip(library, accuracies):
            rows.append(dict(layer=name, multiplier=label, macs=evaluator.macs[name], accuracy=accuracy,
                             loss=baseline - accuracy))
        if bar is not None:
            bar.add(len(library))
    return rows


def relative_energy(assignment, macs, costs, exact_cost):
    """Multiplication energy of an assignment {layer: label} relative to every layer exact: sum of
    macs[layer] * costs[label] (exact_cost for layers left out), over sum of macs * exact_cost."""
    total = sum(macs.values()) * exact_cost
    return sum(m * costs[assignment[name]] if name in assignment else m * exact_cost
               for name, m in macs.items()) / total


def pareto_front(points):
    """The points (dicts with "accuracy" and "energy") that no other point beats on both (higher
    accuracy, lower energy), by energy; duplicates of a point kept once."""
    front = []
    for p in sorted(points, key=lambda p: (p["energy"], -p["accuracy"])):
        if not front or p["accuracy"] > front[-1]["accuracy"]:
            front.append(p)
    return front


def _points(evaluator, library, costs, exact_cost, assignments):
    """Evaluated points of assignments {layer: label}, in one batch (spread over devices by a
    ParallelEvaluator)."""
    accuracies = evaluator.accuracies([{name: library[label] for name, label in a.items()} for a in assignments])
    return [dict(assignment=dict(sorted(a.items())), accuracy=acc,
                 energy=relative_energy(a, evaluator.macs, costs, exact_cost)) for a, acc in zip(assignments, accuracies)]


def _point(evaluator, library, costs, exact_cost, assignment):
    return _points(evaluator, library, costs, exact_cost, [assignment])[0]


def greedy(evaluator, library, costs, exact_cost, sensitivity_rows, max_loss=0.005):
    """The sensitivity-guided baseline: from the exact model, take (layer, multiplier) moves in order
    of energy saved per accuracy lost alone (free moves first), keeping a move when the combined model
    loses at most max_loss against the exact one. Returns every evaluated point (the path)."""
    library = _library(library)
    baseline = evaluator.accuracy({})
    total = sum(evaluator.macs.values()) * exact_cost

    def gain(row):
        saved = evaluator.macs[row["layer"]] * (exact_cost - costs[row["multiplier"]]) / total
        return saved / max(row["loss"], 1e-4)

    moves = sorted((r for r in sensitivity_rows if costs[r["multiplier"]] < exact_cost and r["loss"] <= max_loss),
                   key=gain, reverse=True)
    assignment = {}
    points = [dict(assignment={}, accuracy=baseline, energy=relative_energy({}, evaluator.macs, costs, exact_cost))]
    for row in moves:
        current = assignment.get(row["layer"])
        if current is not None and costs[current] <= costs[row["multiplier"]]:
            continue  # the layer already has a cheaper multiplier
        trial = {**assignment, row["layer"]: row["multiplier"]}
        point = _point(evaluator, library, costs, exact_cost, trial)
        points.append(point)
        if baseline - point["accuracy"] <= max_loss:
            assignment = trial
    return points


def nsga2(evaluator, library, costs, exact_cost, population=24, generations=10, seed=0, progress=True,
          tiles=None):
    """NSGA-II (pymoo) over one choice per layer among `library` (include the exact product to let a
    layer stay exact), objectives: accuracy lost and relative energy. Every candidate goes through the
    evaluator (and its store: repeats and a resumed search cost nothing). Returns every evaluated
    point; pareto_front() of them is the front.

    tiles: None (each layer its own multiplier), or k: ALWANN's accelerator of k hardware tiles, each
    with one multiplier, every layer mapped to a tile; the search chooses the tiles' multipliers and the
    mapping (a point's "tiles" lists the tiles' multipliers)."""
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.core.problem import Problem
    from pymoo.operators.crossover.sbx import SBX
    from pymoo.operators.mutation.pm import PM
    from pymoo.operators.repair.rounding import RoundingRepair
    from pymoo.operators.sampling.rnd import IntegerRandomSampling
    from pymoo.optimize import minimize

    library = _library(library)
    labels, names = list(library), list(evaluator.layers)
    if tiles is not None and not 1 <= tiles:
        raise ValueError(f"tiles must be None or a positive number of tiles, got {tiles!r}")
    points = []
    bar = keras.utils.Progbar(population * generations, unit_name="candidate") if progress else None
    # Variables: a library index per layer, or with tiles a library index per tile then a tile per layer.
    n_tiles = tiles or 0
    upper = [len(labels) - 1] * (n_tiles or len(names)) + [n_tiles - 1] * (len(names) if n_tiles else 0)

    def decode(x):
        x = [int(round(v)) for v in x]
        if not n_tiles:
            return {name: labels[i] for name, i in zip(names, x)}, None
        tile_labels = [labels[i] for i in x[:n_tiles]]
        return {name: tile_labels[t] for name, t in zip(names, x[n_tiles:])}, tile_labels

    class Assignments(Problem):
        def __init__(self):
            super().__init__(n_var=len(upper), n_obj=2, xl=0, xu=np.array(upper), vtype=int)

        def _evaluate(self, population_x, out, *args, **kwargs):
            # A generation at once, so that a ParallelEvaluator spreads it over its devices.
            decoded = [decode(x) for x in population_x]
            batch = _points(evaluator, library, costs, exact_cost, [a for a, _ in decoded])
            if n_tiles:
                for point, (_, tile_labels) in zip(batch, decoded):
                    point["tiles"] = tile_labels
            points.extend(batch)
            out["F"] = [[1.0 - p["accuracy"], p["energy"]] for p in batch]
            if bar is not None:
                bar.add(len(batch))

    algorithm = NSGA2(pop_size=population, sampling=IntegerRandomSampling(),
                      crossover=SBX(prob=0.9, eta=3.0, vtype=float, repair=RoundingRepair()),
                      mutation=PM(prob=1.0, eta=3.0, vtype=float, repair=RoundingRepair()),
                      eliminate_duplicates=True)
    minimize(Assignments(), algorithm, ("n_gen", generations), seed=seed, verbose=False)
    return points


def write_points(points, path):
    """Writes points (dicts with "accuracy", "energy" and "assignment") to `path`: JSON for a .json
    path, else CSV with one column per layer (empty: the exact product)."""
    if path.endswith(".json"):
        with open(path, "w") as f:
            json.dump(points, f, indent=1)
        return
    layers = sorted({name for p in points for name in p["assignment"]})
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["accuracy", "energy", *layers])
        for p in points:
            writer.writerow([p["accuracy"], p["energy"], *(p["assignment"].get(name, "") for name in layers)])


def plot_points(points, path, front=None, title="accuracy against multiplication energy"):
    """Saves a scatter of the points (accuracy against relative energy) with the front as a line."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    front = pareto_front(points) if front is None else front
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter([p["energy"] for p in points], [p["accuracy"] for p in points], s=10, alpha=0.4, label="evaluated")
    ax.plot([p["energy"] for p in front], [p["accuracy"] for p in front], "o-", color="C3", label="Pareto front")
    ax.set_xlabel("multiplication energy, relative to the exact multiplier")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# The family library's multipliers: every family with a structural cost estimate, at parameters that
# span its range of error and cost.
FAMILY_LIBRARY = ("exact", *(f"coltrunc{t}" for t in (2, 4, 6, 7, 8, 9)), *(f"optrunc{k}" for k in (1, 2, 3, 4)),
                  "bam_h1_v6", "bam_h2_v7", "bam_h3_v8", *(f"drum{k}" for k in (3, 4, 5, 6)))


def family_library(names=FAMILY_LIBRARY):
    """(library, costs, exact name) like load_library's, from the project's families with their
    estimated relative costs (tensorflow_approx.multipliers.families.estimated_cost: partial-product
    cells kept, exact = 1). A family without an estimate is refused by name."""
    from tensorflow_approx import multipliers as mx
    from tensorflow_approx.multipliers.families import estimated_cost

    library, costs = {}, {}
    for name in names:
        multiplier = mx.get(name)
        estimate = estimated_cost(multiplier)
        if estimate is None:
            raise ValueError(f"family_library: {name!r} has no cost estimate (only families whose cost counts "
                             "array cells do: exact, coltrunc, bam, optrunc, drum)")
        library[name], costs[name] = multiplier, estimate[0]
    if "exact" not in library:
        raise ValueError("family_library: the names must include 'exact': the energies are relative to it")
    return library, costs, "exact"


def library_from(spec):
    """(library, costs, exact label) of "families" (family_library()) or a folder of tables
    (load_library(folder))."""
    return family_library() if spec == "families" else load_library(spec)


def search(evaluator, library, costs, exact_cost, max_loss=0.005, population=24, generations=10, seed=0,
           tiles=None):
    """Every point evaluated by sensitivity, then greedy (its rows, max_loss), then nsga2."""
    rows = sensitivity(evaluator, library)
    points = greedy(evaluator, library, costs, exact_cost, rows, max_loss)
    return points + nsga2(evaluator, library, costs, exact_cost, population, generations, seed, tiles=tiles)


def load_library(folder, cost_key="PDK45_PWR"):
    """{name: Multiplier} of the .bin/.npy/.c tables in `folder`, their costs {name: metadata[cost_key]}
    (EvoApprox's published power, from a METRICS.csv beside the tables), and the exact one's name.
    Tables without a cost are left out with a warning; the folder must hold the exact multiplier."""
    import glob
    import warnings

    from tensorflow_approx import multipliers as mx

    library, costs = {}, {}
    for path in sorted(glob.glob(os.path.join(folder, "*"))):
        if os.path.splitext(path)[1].lower() not in (".bin", ".npy", ".c"):
            continue
        multiplier = mx.get(path)
        if cost_key not in multiplier.metadata:
            warnings.warn(f"{path}: no {cost_key} (METRICS.csv row or C header): left out of the library")
            continue
        library[multiplier.name] = multiplier
        costs[multiplier.name] = float(multiplier.metadata[cost_key])
    exact = [name for name, m in library.items() if m.is_exact()]
    if not exact:
        raise ValueError(f"{folder}: no exact multiplier with a {cost_key} among {sorted(library)}: the "
                         "energies are relative to it")
    return library, costs, exact[0]


def main(argv=None):
    """The command line: sensitivity, greedy and NSGA-II of a saved model on saved data."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tensorflow_approx.explore", description=main.__doc__)
    parser.add_argument("--model", required=True, help="a trained .keras model (classification, sparse labels)")
    parser.add_argument("--data", required=True, help="a .npz file with arrays x and y (validation data)")
    parser.add_argument("--library", required=True,
                        help='a folder of tables with METRICS.csv (power per table), or "families" (the '
                             "project's families with estimated costs)")
    parser.add_argument("--store", default="explore.sqlite", help="the results store (resumes; never repeats)")
    parser.add_argument("--out", default="front.csv", help="the Pareto front, .csv or .json")
    parser.add_argument("--plot", default=None, help="a PNG of every evaluated point and the front")
    parser.add_argument("--population", type=int, default=24)
    parser.add_argument("--generations", type=int, default=10)
    parser.add_argument("--max_loss", type=float, default=0.005, help="the greedy baseline's accuracy budget")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiles", type=int, default=None,
                        help="ALWANN's accelerator: this many hardware tiles, each layer mapped to one")
    parser.add_argument("--devices", default=None,
                        help='spread candidates over TensorFlow devices of this machine: "all" (every GPU) or '
                             "names, e.g. /GPU:0,/GPU:1")
    parser.add_argument("--ray", default=None, metavar="ADDRESS",
                        help='spread candidates over Ray actors: "auto" (the cluster this machine joined with '
                             '`ray start`), "ray://host:10001", or "local" (a new Ray on this machine); '
                             "see docs/exploration_cluster.md")
    parser.add_argument("--workers", type=int, default=None,
                        help="with --ray: the actors (each takes a GPU when the cluster has GPUs)")
    args = parser.parse_args(argv)
    if args.ray is not None and args.devices is not None:
        parser.error("--ray and --devices exclude each other")
    if (args.ray is None) != (args.workers is None):
        parser.error("--ray and --workers go together")
    if args.ray is not None and tf.config.list_physical_devices("GPU"):
        # The driver only dispatches candidates: leave the GPUs of this machine to the actors (TensorFlow
        # would otherwise take their memory as soon as it loads the model).
        tf.config.set_visible_devices([], "GPU")
    devices = None
    if args.devices == "all":
        devices = [d.name for d in tf.config.list_logical_devices("GPU")]
        if not devices:
            parser.error("--devices all: TensorFlow sees no GPU here; name devices instead, e.g. /CPU:0")
    elif args.devices is not None:
        devices = [d.strip() for d in args.devices.split(",") if d.strip()]

    model = keras.models.load_model(args.model)
    with np.load(args.data) as data:
        x, y = data["x"], data["y"]
    library, costs, exact = library_from(args.library)
    store = ResultStore(args.store)
    if args.ray is not None:
        evaluator = RayEvaluator(model, x, y, args.workers, store=store,
                                 address=None if args.ray == "local" else args.ray)
    elif devices is not None:
        evaluator = ParallelEvaluator(model, x, y, devices, store=store)
    else:
        evaluator = Evaluator(model, x, y, store=store)
    try:
        print(f"{len(evaluator.layers)} approximate layers, {len(library)} multipliers (exact: {exact}); "
              f"store {args.store} holds {store.count(*evaluator.keys)} results for this model and data")
        points = search(evaluator, library, costs, costs[exact], args.max_loss, args.population, args.generations,
                        args.seed, args.tiles)
        front = pareto_front(points)
        write_points(front, args.out)
        if args.plot:
            plot_points(points, args.plot, front)
        baseline = evaluator.accuracy({})
    finally:
        if args.ray is not None:
            evaluator.close()
    print(f"exact 8-bit accuracy {baseline:.4f}; {evaluator.evaluations} candidates evaluated now; front of "
          f"{len(front)} points written to {args.out}")
    for p in front:
        print(f"  energy {p['energy']:.3f}  accuracy {p['accuracy']:.4f}  ({baseline - p['accuracy']:+.4f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
