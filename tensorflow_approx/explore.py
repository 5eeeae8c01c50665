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
- `ParallelEvaluator` runs an Evaluator per device of this process, one thread each (logical CPU
  devices, or GPUs); `ProcessEvaluator` one per device in a process of its own (one per GPU: no
  interpreter lock shared between devices); `RayEvaluator` Evaluators in Ray actors over the machines
  of a cluster, the store staying with the driver (docs/exploration_cluster.md). Each spreads a batch
  of candidates (a generation, a layer's sensitivity) over its workers. They live in
  tensorflow_approx.evaluators.
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
        [--tiles K] [--devices all [--threads] | --ray auto --workers N]
"""

import csv
import json
import os

import keras
import numpy as np
import tensorflow as tf

from tensorflow_approx.evaluators import (Evaluator, ParallelEvaluator, ProcessEvaluator, RayEvaluator, ResultStore,
                                          data_key, in_threads, layer_macs, model_key)
from tensorflow_approx.python.ops.approx_conv_ops import lut_values

# The evaluators and the store live in tensorflow_approx.evaluators; they are also this module's names.
__all__ = ["Evaluator", "ParallelEvaluator", "ProcessEvaluator", "RayEvaluator", "ResultStore", "data_key",
           "family_library", "greedy", "in_threads", "layer_macs", "library_from", "load_library", "model_key",
           "nsga2", "pareto_front", "plot_points", "relative_energy", "search", "sensitivity", "write_points"]


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
                        help='spread candidates over devices of this machine, one worker process each: "all" '
                             "(every GPU) or names, e.g. /GPU:0,/GPU:1")
    parser.add_argument("--threads", action="store_true",
                        help="with --devices: one thread per device in this process instead of a process per "
                             "device (for logical devices; on GPUs the processes scale better)")
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
    if args.threads and args.devices is None:
        parser.error("--threads goes with --devices")
    if args.ray is not None and tf.config.list_physical_devices("GPU"):
        # The driver only dispatches candidates: leave the GPUs of this machine to the actors (TensorFlow
        # would otherwise take their memory as soon as it loads the model).
        tf.config.set_visible_devices([], "GPU")
    devices = None
    if args.devices == "all":
        # Physical GPUs: listing logical devices would start TensorFlow here, on every GPU's memory.
        devices = [f"/GPU:{i}" for i in range(len(tf.config.list_physical_devices("GPU")))]
        if not devices:
            parser.error("--devices all: TensorFlow sees no GPU here; name devices instead, e.g. /CPU:0")
    elif args.devices is not None:
        devices = [d.strip() for d in args.devices.split(",") if d.strip()]
    if devices is not None and not args.threads:
        for gpu in tf.config.list_physical_devices("GPU"):  # the worker processes need the GPUs' memory
            tf.config.experimental.set_memory_growth(gpu, True)

    model = keras.models.load_model(args.model)
    with np.load(args.data) as data:
        x, y = data["x"], data["y"]
    library, costs, exact = library_from(args.library)
    store = ResultStore(args.store)
    if args.ray is not None:
        evaluator = RayEvaluator(model, x, y, args.workers, store=store,
                                 address=None if args.ray == "local" else args.ray)
    elif devices is not None and args.threads:
        evaluator = ParallelEvaluator(model, x, y, devices, store=store)
    elif devices is not None:
        evaluator = ProcessEvaluator(model, x, y, devices, store=store)
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
        if hasattr(evaluator, "close"):  # the Ray actors or worker processes
            evaluator.close()
    print(f"exact 8-bit accuracy {baseline:.4f}; {evaluator.evaluations} candidates evaluated now; front of "
          f"{len(front)} points written to {args.out}")
    for p in front:
        print(f"  energy {p['energy']:.3f}  accuracy {p['accuracy']:.4f}  ({baseline - p['accuracy']:+.4f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
