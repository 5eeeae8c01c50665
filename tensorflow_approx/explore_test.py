"""The exploration's evaluator, results store and per-layer sensitivity."""

import os

import keras
import numpy as np
import pytest

import tensorflow_approx as ta
from tensorflow_approx import explore
from tensorflow_approx import multipliers as mx

ZEROS = np.zeros(65536, np.uint16)  # a "multiplier" that always answers 0


@pytest.fixture(scope="module")
def trained():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (256, 8, 8, 1)).astype(np.float32)
    y = (x[:, :4].mean(axis=(1, 2, 3)) > x[:, 4:].mean(axis=(1, 2, 3))).astype(np.int64)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
                              keras.layers.DepthwiseConv2D(3, activation="relu", name="dw"),
                              keras.layers.Flatten(), keras.layers.Dense(2, activation="softmax", name="fc")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=30, verbose=0)
    return model, x, y


def test_layer_macs(trained):
    model, _, _ = trained
    macs = {layer.name: explore.layer_macs(layer) for layer in model.layers if hasattr(layer, "kernel")}
    assert macs == {"conv": 6 * 6 * 4 * 3 * 3 * 1, "dw": 4 * 4 * 4 * 3 * 3, "fc": 2 * 64}


def test_swapped_tables_give_what_a_fresh_model_gives(trained):
    model, x, y = trained
    evaluator = explore.Evaluator(model, x, y, batch_size=100)  # batches of 100, 100 and 56
    fresh = ta.approximate_model(model, {"conv": "", "dw": "", "fc": ""})
    fresh.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    assert evaluator.accuracy({}) == fresh.evaluate(x, y, batch_size=100, verbose=0)[1]
    fresh = ta.approximate_model(model, {"conv": "", "dw": ZEROS, "fc": mx.get("drum4")})
    fresh.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    got = evaluator.accuracy({"dw": ZEROS, "fc": mx.get("drum4")})
    assert got == fresh.evaluate(x, y, batch_size=100, verbose=0)[1]
    # Labels as a column, as Keras also takes them: the same count.
    assert explore.Evaluator(model, x, y[:, None], batch_size=100).accuracy({"dw": ZEROS, "fc": mx.get("drum4")}) == got
    assert evaluator.accuracy({}) > got  # the layers really swapped back to the exact product
    with pytest.raises(ValueError, match=r"not approximate layers of the model: \['nope'\]"):
        evaluator.accuracy({"nope": "drum4"})


def test_sensitivity_rows_and_resume(trained, tmp_path):
    model, x, y = trained
    path = str(tmp_path / "results.sqlite")
    library = {"exact": "", "zeros": ZEROS, "drum4": mx.get("drum4")}
    evaluator = explore.Evaluator(model, x, y, store=explore.ResultStore(path))
    rows = explore.sensitivity(evaluator, library, progress=False)
    assert [(r["layer"], r["multiplier"]) for r in rows] == [(l, m) for l in ("conv", "dw", "fc") for m in library]
    by = {(r["layer"], r["multiplier"]): r for r in rows}
    assert all(by[(l, "exact")]["loss"] == 0 for l in ("conv", "dw", "fc"))
    assert all(by[(l, "zeros")]["loss"] > 0 for l in ("conv", "dw", "fc"))
    assert evaluator.evaluations == 1 + 3 * 2  # a layer given the exact product is the baseline itself
    assert evaluator.accuracy({"fc": "drum4"}) == by[("fc", "drum4")]["accuracy"]  # the same table by name
    assert evaluator.evaluations == 1 + 3 * 2
    # A new process on the same store evaluates nothing and returns the same rows.
    again = explore.Evaluator(model, x, y, store=explore.ResultStore(path))
    assert explore.sensitivity(again, library, progress=False) == rows and again.evaluations == 0
    # Other data: other keys.
    other = explore.Evaluator(model, x[:100], y[:100], store=explore.ResultStore(path))
    explore.sensitivity(other, {"zeros": ZEROS}, progress=False)
    assert other.evaluations == 1 + 3


def test_a_killed_run_resumes_without_repeating(trained, tmp_path, monkeypatch):
    model, x, y = trained
    path = str(tmp_path / "results.sqlite")
    library = {"zeros": ZEROS, "drum4": mx.get("drum4"), "mitchell": mx.get("mitchell")}
    evaluator = explore.Evaluator(model, x, y, store=explore.ResultStore(path))
    real_count, calls = evaluator._count_right, []  # one call per candidate: the data is one batch

    def dies_on_the_fifth(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real_count(*args, **kwargs)

    monkeypatch.setattr(evaluator, "_count_right", dies_on_the_fifth)
    with pytest.raises(KeyboardInterrupt):
        explore.sensitivity(evaluator, library, progress=False)
    resumed = explore.Evaluator(model, x, y, store=explore.ResultStore(path))
    rows = explore.sensitivity(resumed, library, progress=False)
    assert resumed.evaluations == (1 + 9) - 4  # the four finished before the kill are not repeated
    fresh = explore.Evaluator(model, x, y)
    assert rows == explore.sensitivity(fresh, library, progress=False)


def test_family_library_costs_follow_the_cells_kept():
    from tensorflow_approx.multipliers.families import estimated_cost

    library, costs, exact = explore.family_library()
    assert exact == "exact" and costs["exact"] == 1.0 and set(costs) == set(library)
    # Fewer partial-product cells, lower cost: more truncated columns, more truncated operand bits.
    assert [costs[f"coltrunc{t}"] for t in (2, 4, 6, 8)] == sorted([costs[f"coltrunc{t}"] for t in (2, 4, 6, 8)],
                                                                  reverse=True)
    assert costs["optrunc2"] == 36 / 64 and costs["coltrunc2"] == 61 / 64
    assert costs["drum4"] == (16 + 16) / 64
    assert estimated_cost(mx.get("mitchell")) is None
    with pytest.raises(ValueError, match="'mitchell' has no cost estimate"):
        explore.family_library(["exact", "mitchell"])
    with pytest.raises(ValueError, match="must include 'exact'"):
        explore.family_library(["drum4"])


def test_library_entries_are_checked_first(trained):
    model, x, y = trained
    evaluator = explore.Evaluator(model, x, y)
    with pytest.raises(ValueError, match="library entry 'bad'"):
        explore.sensitivity(evaluator, {"drum4": "drum4", "bad": np.zeros(10)}, progress=False)
    assert evaluator.evaluations == 0


def test_relative_energy_and_pareto_front():
    macs = {"a": 100, "b": 300}
    costs = {"half": 0.5, "exact": 1.0}
    assert explore.relative_energy({}, macs, costs, 1.0) == 1.0
    assert explore.relative_energy({"b": "half"}, macs, costs, 1.0) == (100 + 150) / 400
    points = [dict(accuracy=0.9, energy=1.0), dict(accuracy=0.8, energy=0.5), dict(accuracy=0.7, energy=0.6),
              dict(accuracy=0.85, energy=0.5), dict(accuracy=0.6, energy=0.2)]
    assert [(p["accuracy"], p["energy"]) for p in explore.pareto_front(points)] == [(0.6, 0.2), (0.85, 0.5),
                                                                                    (0.9, 1.0)]


def test_greedy_and_nsga2_search_with_a_store(trained, tmp_path):
    model, x, y = trained
    library = {"exact": "", "zeros": ZEROS, "drum4": mx.get("drum4"), "drum6": mx.get("drum6")}
    costs = {"exact": 1.0, "zeros": 0.0, "drum4": 0.4, "drum6": 0.6}
    store = explore.ResultStore(str(tmp_path / "r.sqlite"))
    evaluator = explore.Evaluator(model, x, y, store=store)
    rows = explore.sensitivity(evaluator, library, progress=False)
    path = explore.greedy(evaluator, library, costs, 1.0, rows, max_loss=0.02)
    baseline = evaluator.accuracy({})
    kept = [p for p in path if baseline - p["accuracy"] <= 0.02]
    assert path[0]["energy"] == 1.0 and min(p["energy"] for p in kept) < 1.0  # it found savings
    points = explore.nsga2(evaluator, library, costs, 1.0, population=8, generations=3, seed=1, progress=False)
    assert len(points) >= 8
    front = explore.pareto_front(points + path)
    energies = [p["energy"] for p in front]
    accuracies = [p["accuracy"] for p in front]
    assert energies == sorted(energies) and accuracies == sorted(accuracies)
    for p in front:  # nobody dominates a front point
        assert not any(q["accuracy"] > p["accuracy"] and q["energy"] < p["energy"] for q in points + path)
    # Every distinct candidate was evaluated once: the store holds no more rows than evaluations made.
    assert store.count(*evaluator.keys) == evaluator.evaluations
    again = explore.Evaluator(model, x, y, store=store)
    assert explore.nsga2(again, library, costs, 1.0, population=8, generations=3, seed=1, progress=False) == points
    assert again.evaluations == 0  # the same search, resumed from the store, evaluates nothing


def test_points_are_written_as_csv_json_and_a_plot(tmp_path):
    import csv
    import json

    points = [dict(assignment={"conv": "drum4"}, accuracy=0.9, energy=0.8),
              dict(assignment={"fc": "zeros", "conv": "drum6"}, accuracy=0.7, energy=0.3)]
    explore.write_points(points, str(tmp_path / "p.json"))
    assert json.load(open(tmp_path / "p.json")) == points
    explore.write_points(points, str(tmp_path / "p.csv"))
    rows = list(csv.reader(open(tmp_path / "p.csv")))
    assert rows == [["accuracy", "energy", "conv", "fc"], ["0.9", "0.8", "drum4", ""], ["0.7", "0.3", "drum6", "zeros"]]
    explore.plot_points(points, str(tmp_path / "p.png"))
    assert open(tmp_path / "p.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_command_line(trained, tmp_path, capsys):
    model, x, y = trained
    model.save(str(tmp_path / "m.keras"))
    np.savez(tmp_path / "val.npz", x=x, y=y)
    folder = tmp_path / "lib"
    folder.mkdir()
    tables = {"mul_exact": mx.exact(), "mul_d4": mx.get("drum4"), "mul_d6": mx.get("drum6"), "mul_nocost": mx.get("roba")}
    for name, m in tables.items():
        m.save(str(folder / f"{name}.bin"))
    (folder / "METRICS.csv").write_text("name,PDK45_PWR\nmul_exact,0.4\nmul_d4,0.1\nmul_d6,0.2\n")
    argv = ["--model", str(tmp_path / "m.keras"), "--data", str(tmp_path / "val.npz"), "--library", str(folder),
            "--store", str(tmp_path / "s.sqlite"), "--out", str(tmp_path / "front.json"),
            "--plot", str(tmp_path / "front.png"), "--population", "6", "--generations", "2"]
    with pytest.warns(UserWarning, match="mul_nocost.bin: no PDK45_PWR"):
        assert explore.main(argv) == 0
    import json

    front = json.load(open(tmp_path / "front.json"))
    assert front and all(0.0 < p["energy"] <= 1.0 for p in front)
    assert all(set(p["assignment"].values()) <= {"mul_exact", "mul_d4", "mul_d6"} for p in front)
    assert (tmp_path / "front.png").exists()
    first = capsys.readouterr().out
    with pytest.warns(UserWarning):
        explore.main(argv)  # resumed: everything from the store
    assert "0 candidates evaluated now" in capsys.readouterr().out and "candidates evaluated now" in first


PARALLEL_SCRIPT = r"""
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras, numpy as np
from tensorflow_approx import explore, multipliers as mx
keras.utils.set_random_seed(0)
rng = np.random.default_rng(0)
x = rng.uniform(0, 1, (128, 8, 8, 1)).astype(np.float32)
y = (x[:, :4].mean(axis=(1, 2, 3)) > x[:, 4:].mean(axis=(1, 2, 3))).astype(np.int64)
model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
                          keras.layers.Flatten(), keras.layers.Dense(2, activation="softmax", name="fc")])
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
model.fit(x, y, epochs=10, verbose=0)
library = {"exact": "", "drum4": mx.get("drum4"), "zeros": np.zeros(65536, np.uint16)}
costs = {"exact": 1.0, "drum4": 0.4, "zeros": 0.0}
devices = [d.name for d in tf.config.list_logical_devices("CPU")]
parallel = explore.ParallelEvaluator(model, x, y, devices, store=explore.ResultStore(sys.argv[1]))
points = explore.nsga2(parallel, library, costs, 1.0, population=8, generations=3, seed=2, progress=False)
single = explore.nsga2(explore.Evaluator(model, x, y), library, costs, 1.0, population=8, generations=3, seed=2,
                       progress=False)
print(json.dumps(dict(devices=devices, per_device=[w.evaluations for w in parallel.workers],
                      rows=parallel.store.count(*parallel.keys), same=points == single)))
"""


def test_parallel_evaluator_spreads_candidates_over_logical_devices(tmp_path):
    """Two logical CPU devices (set before TensorFlow starts, hence a child process): the same front as
    one evaluator, work on both devices, every candidate once in the shared store."""
    import json
    import subprocess
    import sys

    script = tmp_path / "parallel.py"
    script.write_text(PARALLEL_SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "s.sqlite")], capture_output=True, text=True,
                         env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(result["devices"]) == 2 and result["same"]
    assert all(n > 0 for n in result["per_device"])
    assert result["rows"] == sum(result["per_device"])  # no candidate evaluated twice


def test_nsga2_with_shared_tiles(trained):
    model, x, y = trained
    library = {"exact": "", "zeros": ZEROS, "drum4": mx.get("drum4"), "drum6": mx.get("drum6")}
    costs = {"exact": 1.0, "zeros": 0.0, "drum4": 0.4, "drum6": 0.6}
    evaluator = explore.Evaluator(model, x, y)
    points = explore.nsga2(evaluator, library, costs, 1.0, population=8, generations=3, seed=3, progress=False,
                           tiles=2)
    assert points and all(len(p["tiles"]) == 2 for p in points)
    for p in points:  # every layer's multiplier is one of its accelerator's tiles
        assert set(p["assignment"].values()) <= set(p["tiles"])
    assert any(len(set(p["assignment"].values())) == 2 for p in points)
    with pytest.raises(ValueError, match="tiles must be None or a positive"):
        explore.nsga2(evaluator, library, costs, 1.0, tiles=0, progress=False)


def test_ray_evaluator_gives_an_evaluators_results_and_fills_the_store(trained, tmp_path):
    """Two local Ray actors on the CPU: the accuracies of a plain Evaluator, a candidate repeated in a
    batch evaluated once, every result in the driver's store, and a second RayEvaluator on that store
    evaluating nothing; the command line's --ray and --devices give the front of a plain run."""
    import json

    import ray

    model, x, y = trained
    batch = [{}, {"dw": ZEROS}, {"fc": mx.get("drum4")}, {"conv": "drum6", "fc": ZEROS}, {"dw": ZEROS},
             {"fc": "drum4"}, {"conv": ""}, {"conv": mx.get("drum4"), "dw": "drum6"}]
    distinct = 5  # {} = {"conv": ""}; {"dw": ZEROS} twice; drum4 in fc as a Multiplier and by name
    plain = explore.Evaluator(model, x, y)
    expected = plain.accuracies(batch)
    path = str(tmp_path / "ray.sqlite")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with explore.RayEvaluator(model, x, y, num_workers=2, store=explore.ResultStore(path)) as evaluator:
            assert evaluator.macs == plain.macs and list(evaluator.layers) == list(plain.layers)
            assert evaluator.accuracies(batch) == expected
            assert evaluator.evaluations == distinct
            assert evaluator.store.count(*evaluator.keys) == distinct
            assert evaluator.accuracy({"fc": "drum4"}) == expected[2] and evaluator.evaluations == distinct
            with pytest.raises(ValueError, match=r"not approximate layers of the model: \['nope'\]"):
                evaluator.accuracy({"nope": "drum4"})
        again = explore.RayEvaluator(model, x, y, num_workers=1, store=explore.ResultStore(path))
        try:
            assert again.accuracies(batch) == expected and again.evaluations == 0
        finally:
            again.close()
        with pytest.raises(ValueError, match=r"num_workers=3 x num_cpus_per_worker=1 needs more CPUs"):
            explore.RayEvaluator(model, x, y, num_workers=3)
        # The command line: the same front with --ray (this process's Ray), --devices and neither.
        argv = _write_search_inputs(trained, tmp_path) + ["--generations", "2"]  # a shorter search: 3 runs
        fronts = {}
        for name, extra in (("cli_ray", ["--ray", "auto", "--workers", "2"]), ("devices", ["--devices", "/CPU:0"]),
                            ("threads", ["--devices", "/CPU:0", "--threads"]), ("one", [])):
            explore.main(argv + extra + ["--store", str(tmp_path / f"{name}.sqlite"),
                                         "--out", str(tmp_path / f"{name}.json")])
            fronts[name] = json.load(open(tmp_path / f"{name}.json"))
        assert fronts["cli_ray"] == fronts["devices"] == fronts["threads"] == fronts["one"]
        assert _rows(str(tmp_path / "cli_ray.sqlite")) == _rows(str(tmp_path / "one.sqlite"))
    finally:
        ray.shutdown()


def test_process_evaluator_gives_an_evaluators_results(trained, tmp_path, monkeypatch):
    """Two worker processes on the CPU: a plain Evaluator's accuracies, a repeated candidate evaluated once,
    the store filled here, tables sent once and named by digest afterwards (a worker cache of 2 tables,
    so that tables also leave it and travel again), a worker's error raised here with the evaluator still
    usable, and a killed worker closing the evaluator with a clear error."""
    from tensorflow_approx import evaluators

    model, x, y = trained
    batch = [{}, {"dw": ZEROS}, {"fc": mx.get("drum4")}, {"conv": "drum6", "fc": ZEROS}, {"dw": ZEROS},
             {"fc": "drum4"}, {"conv": ""}, {"conv": mx.get("drum4"), "dw": "drum6", "fc": "drum6"},
             {"conv": "drum6", "dw": mx.get("drum4"), "fc": ZEROS}]
    plain = explore.Evaluator(model, x, y)
    expected = plain.accuracies(batch)
    monkeypatch.setattr(evaluators, "_WORKER_TABLES", 2)
    store = explore.ResultStore(str(tmp_path / "p.sqlite"))
    with explore.ProcessEvaluator(model, x, y, ["/CPU:0", "/CPU:0"], store=store, cpu_threads=1) as evaluator:
        assert evaluator.macs == plain.macs and list(evaluator.layers) == list(plain.layers)
        assert evaluator.accuracies(batch) == expected
        assert evaluator.evaluations == 6 and store.count(*evaluator.keys) == 6
        assert all(len(kept) <= 2 for kept in evaluator._tables)
        # A worker's error comes back with its traceback; the workers stay usable.
        evaluator._local._tables = lambda a: ({"fc": ("bad", np.zeros(3, np.uint16))}, "bad-key")
        with pytest.raises(RuntimeError, match="the worker of /CPU:0 failed"):
            evaluator.accuracy({"fc": "drum4"})
        del evaluator._local._tables
        assert evaluator.accuracies(batch[::-1]) == expected[::-1] and evaluator.evaluations == 6
        fresh = {"conv": ZEROS, "dw": ZEROS}
        evaluator.workers[0].kill()
        evaluator.workers[1].kill()
        with pytest.raises(RuntimeError, match=r"ended \(exit code -9\); this ProcessEvaluator is closed"):
            evaluator.accuracy(fresh)
        assert evaluator.workers == []
    with pytest.raises(ValueError, match="devices: '/TPU:0' is not a device name"):
        explore.ProcessEvaluator(model, x, y, ["/TPU:0"])
    with pytest.raises(ValueError, match=r"devices: '/GPU:7': this machine has \d+ GPU"):
        explore.ProcessEvaluator(model, x, y, ["/GPU:7"])
    with pytest.raises(ValueError, match="devices: give a list"):
        explore.ProcessEvaluator(model, x, y, "/CPU:0")
    with pytest.raises(ValueError, match="cpu_threads must be None or a positive integer"):
        explore.ProcessEvaluator(model, x, y, ["/CPU:0"], cpu_threads=0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_workers=0), "num_workers must be a positive integer"),
    (dict(num_workers="2"), "num_workers must be a positive integer"),
    (dict(num_workers=2, num_gpus_per_worker=-1), "num_gpus_per_worker must be None or a number >= 0"),
    (dict(num_workers=2, num_cpus_per_worker=0), "num_cpus_per_worker must be a positive integer"),
    (dict(num_workers=2, address=6379), "address must be None"),
    (dict(num_workers=2, max_restarts=-1), "max_restarts must be an integer >= 0"),
])
def test_ray_evaluator_names_bad_arguments(trained, kwargs, match):
    model, x, y = trained
    with pytest.raises(ValueError, match=match):
        explore.RayEvaluator(model, x, y, **kwargs)


@pytest.mark.parametrize("extra, match", [
    (["--workers", "2"], "--ray and --workers go together"),
    (["--ray", "auto"], "--ray and --workers go together"),
    (["--ray", "auto", "--workers", "2", "--devices", "all"], "--ray and --devices exclude each other"),
    (["--threads"], "--threads goes with --devices"),
])
def test_command_line_evaluator_options_are_checked(extra, match, capsys):
    with pytest.raises(SystemExit):
        explore.main(["--model", "m.keras", "--data", "d.npz", "--library", "lib", *extra])
    assert match in capsys.readouterr().err


def _write_search_inputs(trained, folder):
    """A saved model, its data and a library folder (the exact multiplier included) for the CLI."""
    model, x, y = trained
    model.save(str(folder / "m.keras"))
    np.savez(folder / "val.npz", x=x, y=y)
    library = folder / "lib"
    library.mkdir()
    mx.exact().save(str(library / "mul_exact.bin"))
    mx.get("drum6").save(str(library / "mul_d6.bin"))
    mx.get("drum4").save(str(library / "mul_d4.npy"))
    np.save(library / "mul_zeros.npy", ZEROS)
    (library / "METRICS.csv").write_text("name,PDK45_PWR\nmul_exact,0.4\nmul_d6,0.25\nmul_d4,0.15\nmul_zeros,0.01\n")
    return ["--model", str(folder / "m.keras"), "--data", str(folder / "val.npz"), "--library", str(library),
            "--population", "8", "--generations", "4", "--seed", "5"]


def _rows(path):
    import sqlite3

    try:
        with sqlite3.connect(path, timeout=5) as db:
            return db.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


def test_a_search_killed_at_a_random_point_restarts_to_the_same_front(trained, tmp_path):
    """The issue's goal: SIGKILL the command line at a random point of the search (once the store holds
    a random number of results), restart it: the front of an uninterrupted run, and no candidate
    evaluated twice."""
    import json
    import random
    import re
    import signal
    import subprocess
    import sys
    import time

    argv = _write_search_inputs(trained, tmp_path)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))

    def command(name):
        return [sys.executable, "-m", "tensorflow_approx.explore", *argv, "--store", str(tmp_path / f"{name}.sqlite"),
                "--out", str(tmp_path / f"{name}.json")]

    def run(name):
        out = subprocess.run(command(name), capture_output=True, text=True, env=env, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        return int(re.search(r"(\d+) candidates evaluated now", out.stdout).group(1))

    evaluated = run("whole")
    distinct = _rows(str(tmp_path / "whole.sqlite"))
    assert evaluated == distinct > 10  # the uninterrupted run evaluated each distinct candidate once

    kill_at = random.randint(1, distinct * 3 // 4)
    store = str(tmp_path / "killed.sqlite")
    # Output to a file: a pipe nobody reads could fill up and stop the search before the kill point.
    with open(tmp_path / "killed.log", "w") as log:
        process = subprocess.Popen(command("killed"), stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            while _rows(store) < kill_at and process.poll() is None:
                time.sleep(0.01)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
    at_kill = _rows(store)
    note = f"killed at {at_kill} of {distinct} results (aimed at {kill_at})"
    assert process.returncode == -signal.SIGKILL and at_kill < distinct, note
    assert run("killed") == distinct - at_kill, note  # the restart evaluated only what was missing
    assert _rows(store) == distinct, note
    assert json.load(open(tmp_path / "killed.json")) == json.load(open(tmp_path / "whole.json")), note
