"""Tables that travel: saved models reloaded in a fresh process, table files rewritten in place,
table swaps without retracing, bounded memory over many table files, NaN propagation, degenerate
ranges, gradients with unknown shapes, and the table arguments of layers and approximate_model."""

import glob
import itertools
import json
import mmap
import os
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

import tensorflow_approx as ta
from tensorflow_approx import multipliers as mx
from tensorflow_approx.python.keras.layers import approx_layers
from tensorflow_approx.testing import reference as ref

file_op = ta.approx_conv2d_with_min_max_vars
table_op = ta.approx_conv2d_with_table
fq = tf.quantization.fake_quant_with_min_max_vars


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(2024)  # Python, NumPy and TensorFlow generators
    yield


# ---- helpers ---------------------------------------------------------------------------------


def grid():
    return np.meshgrid(np.arange(256), np.arange(256), indexing="ij")


def truncated_products(bits):
    """Both operands lose their `bits` low bits."""
    a, w = grid()
    mask = 255 & ~((1 << bits) - 1)
    return ((a & mask) * (w & mask)).astype(np.uint16).reshape(-1)


def halved_products():
    a, w = grid()
    return ((a * w) // 2).astype(np.uint16).reshape(-1)


def table_bytes(table):
    return np.asarray(table, dtype="<u2").reshape(-1).tobytes()


def range_with_zero(values):
    values = np.asarray(values, np.float32)
    return np.float32(min(float(values.min()), 0.0)), np.float32(max(float(values.max()), 0.0))


def call_op(kind, x, f, ranges, table, path, **kwargs):
    """One of the two ops with the same table: `table` (uint16[65536]) for the table op, `path`
    (a file holding that table) for the file op."""
    kwargs.setdefault("strides", [1, 1, 1, 1])
    kwargs.setdefault("padding", "SAME")
    if kind == "file":
        return file_op(x, f, *ranges, num_bits=8, mul_map_file=path, **kwargs)
    return table_op(x, f, *ranges, table=tf.constant(np.asarray(table, np.uint16)), **kwargs)


def vm_rss_kib():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


def small_base_model(seed=0):
    """An accurate functional model with a Conv2D, a DepthwiseConv2D and a Dense."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="conv")(inp)
    h = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, name="dw")(h)
    h = keras.layers.Flatten()(h)
    out = keras.layers.Dense(5, name="fc")(h)
    return keras.Model(inp, out)


# ---- a. saved models load in a fresh process that only imports tensorflow_approx -------------

CHILD = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np
    import tensorflow as tf
    import keras
    import tensorflow_approx

    work = sys.argv[1]
    x = tf.constant(np.load(os.path.join(work, "x.npy")))
    info = {"package": os.path.abspath(tensorflow_approx.__file__)}

    exported = tf.saved_model.load(os.path.join(work, "export"))
    np.save("export_serve.npy", exported.serve(x).numpy())

    saved = tf.saved_model.load(os.path.join(work, "saved_model"))
    signature = saved.signatures["serving_default"]
    (arg,) = signature.structured_input_signature[1]
    (result,) = signature(**{arg: x}).values()
    np.save("saved_model_signature.npy", result.numpy())

    model = keras.models.load_model(os.path.join(work, "m.keras"))
    np.save("keras_predict.npy", model.predict(x, verbose=0))
    np.save("keras_call.npy", model(x).numpy())
    info["layers"] = {}
    for layer in model.layers:
        if hasattr(layer, "lut"):
            np.save(f"lut_{layer.name}.npy", layer.lut.numpy())
            info["layers"][layer.name] = [type(layer).__name__, layer.mul_map_file]
    with open("info.json", "w") as out:
        json.dump(info, out)
    """
)


def test_saved_models_reload_in_a_fresh_process_without_table_files(tmp_path):
    work, child_dir = tmp_path / "work", tmp_path / "child"
    work.mkdir()
    child_dir.mkdir()
    drum4 = mx.get("drum4").save(str(work / "drum4.bin"))
    optrunc3 = mx.get("optrunc3").save(str(work / "optrunc3.bin"))
    keras.utils.set_random_seed(7)
    inp = keras.Input((8, 8, 3))
    h = ta.FakeApproxConv2D(6, 3, padding="same", activation="relu", mul_map_file=drum4,
                            name="conv")(inp)
    h = ta.FakeApproxDepthwiseConv2D(3, depth_multiplier=2, mul_map_file=optrunc3, name="dw")(h)
    h = keras.layers.Flatten()(h)
    out = ta.FakeApproxDense(5, mul_map_file=drum4, name="fc")(h)
    model = keras.Model(inp, out)
    x = np.random.default_rng(7).uniform(-1, 2, (4, 8, 8, 3)).astype(np.float32)
    np.save(work / "x.npy", x)
    reference = model.predict(x, verbose=0)
    np.save(work / "reference.npy", reference)
    model.export(str(work / "export"))
    tf.saved_model.save(model, str(work / "saved_model"))
    model.save(str(work / "m.keras"))
    os.remove(drum4)
    os.remove(optrunc3)

    # The tables matter: the same weights with the exact product give other outputs.
    for layer in approx_layers(model):
        layer.set_multiplier("")
    assert not np.array_equal(model.predict(x, verbose=0), reference)

    # The child imports tensorflow_approx from where this process did.
    root = os.path.dirname(os.path.dirname(os.path.abspath(ta.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [root, env.get("PYTHONPATH", "")] if p)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    proc = subprocess.run([sys.executable, "-c", CHILD, str(work)], cwd=child_dir, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]

    with open(child_dir / "info.json") as fh:
        info = json.load(fh)
    assert info["package"] == os.path.abspath(ta.__file__)
    for name in ("export_serve", "saved_model_signature", "keras_predict", "keras_call"):
        got = np.load(child_dir / f"{name}.npy")
        assert got.dtype == reference.dtype and got.shape == reference.shape, name
        assert np.array_equal(got.view(np.uint32), reference.view(np.uint32)), name  # bitwise
    assert info["layers"] == {
        "conv": ["FakeApproxConv2D", drum4],
        "dw": ["FakeApproxDepthwiseConv2D", optrunc3],
        "fc": ["FakeApproxDense", drum4],
    }
    for name, multiplier in (("conv", "drum4"), ("dw", "optrunc3"), ("fc", "drum4")):
        lut = np.load(child_dir / f"lut_{name}.npy")
        np.testing.assert_array_equal(lut, mx.get(multiplier).lut.reshape(-1).astype(np.float32))


# ---- b. a table file rewritten in place is seen at once, by every path ----------------------


def test_table_file_rewritten_in_place_is_seen_by_every_path(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, (2, 6, 6, 3))
    f = rng.normal(0, 0.5, (3, 3, 3, 4))
    ranges = (-1.0, 1.0, -1.0, 1.0)
    path = str(tmp_path / "rewritten.bin")
    tables = [("exact", ref.exact_table()), ("zeros", np.zeros(65536, np.uint16)),
              ("truncated", truncated_products(3)), ("halved", halved_products())]
    xt, ft = tf.constant(x), tf.constant(f)
    traces = []

    @tf.function(input_signature=[tf.TensorSpec([2, 6, 6, 3], tf.float64)])
    def graph_op(xin):
        traces.append(1)
        return file_op(xin, ft, *ranges, strides=[1] * 4, num_bits=8, mul_map_file=path,
                       padding="SAME")

    x32 = x.astype(np.float32)
    layer = ta.FakeApproxConv2D(4, 3, padding="same", use_bias=False)
    inp = keras.Input((6, 6, 3))
    model = keras.Model(inp, layer(inp))
    kernel = layer.kernel.numpy()
    xr, kr = range_with_zero(x32), range_with_zero(kernel)
    xq, kq = fq(x32, *xr), fq(kernel, *kr)

    eager_outs, layer_outs = [], []
    for i, (name, table) in enumerate(tables):
        with open(path, "r+b" if i % 2 else "wb") as fh:  # same path, same inode, same size
            fh.write(table_bytes(table))
        eager = file_op(xt, ft, *ranges, strides=[1] * 4, num_bits=8, mul_map_file=path,
                        padding="SAME").numpy()
        graph = graph_op(xt).numpy()
        want = table_op(xt, ft, *ranges, table=tf.constant(table), strides=[1] * 4,
                        padding="SAME").numpy()
        np.testing.assert_array_equal(eager, want, err_msg=name)
        np.testing.assert_array_equal(graph, want, err_msg=name)
        numpy_model = ref.approx_conv(x, f, ranges, table)
        np.testing.assert_allclose(eager, numpy_model, rtol=1e-12,
                                   atol=1e-12 * np.abs(numpy_model).max(), err_msg=name)

        layer.set_multiplier(path)
        assert layer.mul_map_file == path
        np.testing.assert_array_equal(layer.lut.numpy(), table.astype(np.float32), err_msg=name)
        got = layer(x32).numpy()
        want_layer = table_op(xq, kq, *xr, *kr, table=tf.constant(table), strides=[1] * 4,
                              padding="SAME").numpy()
        np.testing.assert_array_equal(got, want_layer, err_msg=name)
        np.testing.assert_array_equal(model.predict(x32, verbose=0), got, err_msg=name)
        eager_outs.append(eager)
        layer_outs.append(got)

    assert len(traces) == 1
    for (i, a), (j, b) in itertools.combinations(enumerate(eager_outs), 2):
        assert not np.array_equal(a, b), (tables[i][0], tables[j][0])
    for (i, a), (j, b) in itertools.combinations(enumerate(layer_outs), 2):
        assert not np.array_equal(a, b), (tables[i][0], tables[j][0])


def test_changes_to_a_trusted_cached_file_are_seen(tmp_path):
    """A file older than the trust delay is served from the cache; rewriting it in place with its
    old mtime restored (only ctime changes), or replacing it by another file of the same size and
    mtime (another inode), must still be noticed."""
    x, f = tf.ones([1, 1, 1, 1], tf.float64), tf.ones([1, 1, 1, 1], tf.float64)

    def product(path):  # codes 255 x 255, scale 1/255 each: LUT[65535] / 65025
        y = file_op(x, f, 0.0, 1.0, 0.0, 1.0, [1] * 4, 8, path, "VALID").numpy().item()
        return int(round(y * 65025))

    def table_with(value):
        table = ref.exact_table()
        table[65535] = value
        return table

    in_place, replaced = str(tmp_path / "in_place.bin"), str(tmp_path / "replaced.bin")
    ref.write_table(in_place, table_with(1001))
    ref.write_table(replaced, table_with(2002))
    time.sleep(2.3)  # older than the 2 s trust delay (ctime cannot be set back)
    for _ in range(2):  # the first call caches them as trusted, the second is served from there
        assert product(in_place) == 1001
        assert product(replaced) == 2002

    old = os.stat(in_place)
    with open(in_place, "r+b") as fh:
        fh.write(table_bytes(table_with(3003)))
    os.utime(in_place, ns=(old.st_atime_ns, old.st_mtime_ns))
    assert os.stat(in_place).st_mtime_ns == old.st_mtime_ns
    assert product(in_place) == 3003

    old = os.stat(replaced)
    ref.write_table(replaced + ".new", table_with(4004))
    os.utime(replaced + ".new", ns=(old.st_atime_ns, old.st_mtime_ns))
    os.replace(replaced + ".new", replaced)
    assert product(replaced) == 4004


def test_rapid_in_place_rewrites_are_each_seen(tmp_path):
    """Rewrites that leave dev/inode/size/mtime/ctime unchanged: writes through a shared mmap of the
    file (the kernel updates the timestamps only when a clean page is first written, so later
    writes to the dirty pages keep them), alternated with plain "r+b" writes. The file is recent,
    so the op must re-read it and serve each new content, in eager mode and in one tf.function."""
    x = tf.ones([1, 1, 1, 1], tf.float64)
    path = str(tmp_path / "rapid.bin")
    table = ref.exact_table()
    traces = []

    @tf.function(input_signature=[tf.TensorSpec([1, 1, 1, 1], tf.float64)])
    def graph_op(xin):
        traces.append(1)
        return file_op(xin, xin, 0.0, 1.0, 0.0, 1.0, [1] * 4, 8, path, "VALID")

    def eager_op(xin):
        return file_op(xin, xin, 0.0, 1.0, 0.0, 1.0, [1] * 4, 8, path, "VALID")

    ref.write_table(path, table)
    fd = os.open(path, os.O_RDWR)
    try:
        mapped = mmap.mmap(fd, 2 * 65536)
        same_stamp, previous = 0, os.stat(path)
        for k in range(1, 41):
            table[65535] = 100 + k
            if k % 4 == 0:
                with open(path, "r+b") as fh:
                    fh.write(table_bytes(table))
            else:
                mapped[:] = table_bytes(table)
            st = os.stat(path)
            same_stamp += (st.st_mtime_ns, st.st_ctime_ns, st.st_ino) == (
                previous.st_mtime_ns, previous.st_ctime_ns, previous.st_ino)
            previous = st
            for run in (eager_op, graph_op):
                y = run(x).numpy().item()
                assert int(round(y * 65025)) == 100 + k, (k, run.__name__, y * 65025)
        mapped.close()
    finally:
        os.close(fd)
    assert len(traces) == 1
    print(f"rapid rewrites: {same_stamp} of 40 kept the file's identity")


# ---- c. one compiled model, 36 tables, one trace ---------------------------------------------


def thirty_six_tables(tmp_path):
    """The 36 EvoApprox tables of ../shared/axmul_8x8 when present, else 36 distinct family tables
    written to tmp_path."""
    folder = ref.shared_tables_dir()
    if folder is not None:
        paths = sorted(glob.glob(os.path.join(folder, "*.bin")))
        if len(paths) >= 36:
            return paths[:36]
    names = (["exact", "mitchell", "kulkarni", "roba"] + [f"drum{k}" for k in range(2, 9)]
             + [f"optrunc{k}" for k in range(1, 8)] + [f"etm{k}" for k in range(1, 8)]
             + [f"coltrunc{t}" for t in range(2, 14)] + [f"bam_h{h}_v{v}" for h in (1, 2)
                                                         for v in range(4, 9)])
    paths, seen = [], set()
    for name in names:
        data = table_bytes(mx.get(name).lut)
        if data not in seen:
            seen.add(data)
            paths.append(mx.get(name).save(str(tmp_path / f"{name}.bin")))
        if len(paths) == 36:
            return paths
    raise AssertionError(f"only {len(paths)} distinct family tables")


def test_set_multiplier_over_36_tables_in_one_compiled_model_traces_once(tmp_path):
    paths = thirty_six_tables(tmp_path)
    assert len(set(paths)) == 36
    base = small_base_model(seed=5)
    approx = ta.approximate_model(base, mul_map_file=paths[0])
    approx.compile(loss="mse")
    layers = approx_layers(approx)
    assert [type(layer).__name__ for layer in layers] == [
        "FakeApproxConv2D", "FakeApproxDepthwiseConv2D", "FakeApproxDense"]
    x = np.random.default_rng(5).uniform(0, 1, (3, 8, 8, 3)).astype(np.float32)
    traces = []

    @tf.function(input_signature=[tf.TensorSpec([3, 8, 8, 3], tf.float32)])
    def forward(xin):
        traces.append(1)
        return approx(xin, training=False)

    outputs = []
    for i, path in enumerate(reversed(paths)):  # the first swap really changes the table
        for layer in layers:
            layer.set_multiplier(path)
            assert layer.mul_map_file == path
        got = forward(tf.constant(x)).numpy()
        fresh = ta.approximate_model(base, mul_map_file=path)
        want = fresh(x, training=False).numpy()
        np.testing.assert_array_equal(got, want, err_msg=path)
        if i in (0, 17, 35):
            np.testing.assert_array_equal(approx.predict(x, verbose=0), want, err_msg=path)
        outputs.append(got.tobytes())
    assert len(traces) == 1
    # The swaps are not vacuous: (nearly) every table gives its own outputs.
    print(f"36 tables: {len(set(outputs))} distinct outputs")
    assert len(set(outputs)) >= 30, len(set(outputs))


# ---- d. memory over many table files ---------------------------------------------------------


def test_3000_table_files_through_the_file_op_keep_memory_bounded(tmp_path):
    """3,000 distinct table files at 3,000 paths (each written, used once and deleted).

    More than the op's 32 cached tables, so eviction runs. Eager calls read the file through
    ApproxReadMulMap, whose path is an input: TensorFlow's eager runtime would otherwise keep one
    kernel (~48 KB) per new path attribute, +135 MiB over 3,000 paths.
    """
    x = tf.ones([1, 1, 1, 1], tf.float64)
    table = ref.exact_table()
    start, baseline = time.monotonic(), None
    for i in range(3000):
        path = str(tmp_path / f"t{i}.bin")
        table[65535] = i
        table[(i * 7919) % 65535] ^= 1  # more of the table changes from one file to the next
        ref.write_table(path, table)
        y = file_op(x, x, 0.0, 1.0, 0.0, 1.0, [1] * 4, 8, path, "VALID").numpy().item()
        assert int(round(y * 65025)) == i, (i, y * 65025)
        os.remove(path)
        if i == 99:
            baseline = vm_rss_kib()
    elapsed = time.monotonic() - start
    growth_mib = (vm_rss_kib() - baseline) / 1024
    print(f"3000 table files: {elapsed:.1f} s, RSS growth {growth_mib:.1f} MiB")
    assert growth_mib < 64, growth_mib


# ---- e. NaN, degenerate ranges and bad float tables -----------------------------------------

NAN_CASES = [
    dict(id="nhwc", data_format="NHWC", groups=1, stride=1, padding="VALID"),
    dict(id="nchw", data_format="NCHW", groups=1, stride=1, padding="SAME"),
    dict(id="grouped", data_format="NHWC", groups=2, stride=1, padding="SAME"),
    dict(id="grouped-nchw-s2", data_format="NCHW", groups=2, stride=2, padding="SAME"),
    dict(id="stride2-same", data_format="NHWC", groups=1, stride=2, padding="SAME"),
    dict(id="depthwise-s2-valid", data_format="NHWC", groups=4, stride=2, padding="VALID"),
]


def run_nhwc(kind, x, f, case, table, path, ranges=(-1.0, 1.0, -1.0, 1.0)):
    """Runs op `kind` in the case's data_format on NHWC x; returns NHWC numpy output."""
    s = case["stride"]
    if case["data_format"] == "NCHW":
        y = call_op(kind, tf.constant(np.transpose(x, (0, 3, 1, 2))), tf.constant(f), ranges,
                    table, path, strides=[1, 1, s, s], padding=case["padding"],
                    data_format="NCHW")
        return np.transpose(y.numpy(), (0, 2, 3, 1))
    y = call_op(kind, tf.constant(x), tf.constant(f), ranges, table, path, strides=[1, s, s, 1],
                padding=case["padding"])
    return y.numpy()


@pytest.mark.parametrize("kind", ["file", "table"])
@pytest.mark.parametrize("case", NAN_CASES, ids=lambda c: c["id"])
def test_nan_propagates_to_the_outputs_that_see_it(kind, case, tmp_path):
    rng = np.random.default_rng(17)
    table = mx.get("drum4").lut.reshape(-1).astype(np.uint16)
    path = ref.write_table(tmp_path / "drum4.bin", table)
    c, groups = 4, case["groups"]
    f = rng.normal(0, 0.5, (3, 3, c // groups, 4)).astype(np.float32)
    x = rng.uniform(-1, 1, (2, 7, 7, c)).astype(np.float32)
    s = case["stride"]
    clean = run_nhwc(kind, x, f, case, table, path)
    assert np.all(np.isfinite(clean))

    for position in [(1, 3, 2, 1), (0, 0, 0, 0), (1, 6, 5, 3), (0, 4, 6, 2)]:
        xn = x.copy()
        xn[position] = np.nan
        got = run_nhwc(kind, xn, f, case, table, path)
        want = np.isnan(tf.nn.conv2d(xn, f, [1, s, s, 1], case["padding"]).numpy())
        assert want.any() and not want.all(), position
        np.testing.assert_array_equal(np.isnan(got), want, err_msg=str(position))

    for tap, out_channel in [((1, 1, 0), 2), ((0, 2, c // groups - 1), 0)]:
        fn = f.copy()
        fn[(*tap, out_channel)] = np.nan
        got = run_nhwc(kind, x, fn, case, table, path)
        assert np.all(np.isnan(got[..., out_channel])), (tap, out_channel)
        others = np.delete(got, out_channel, axis=-1)
        assert np.all(np.isfinite(others)), (tap, out_channel)


@pytest.mark.parametrize("kind", ["file", "table"])
def test_degenerate_ranges(kind, tmp_path):
    table = truncated_products(2)
    path = ref.write_table(tmp_path / "t.bin", table)
    rng = np.random.default_rng(4)
    x = tf.constant(rng.uniform(-1, 1, (1, 5, 5, 2)).astype(np.float32))
    f = tf.constant(rng.normal(0, 1, (3, 3, 2, 3)).astype(np.float32))
    with pytest.raises(tf.errors.InvalidArgumentError, match="input_min"):
        call_op(kind, x, f, (3.0, 3.0, -1.0, 1.0), table, path)
    with pytest.raises(tf.errors.InvalidArgumentError, match="filter_min"):
        call_op(kind, x, f, (-1.0, 1.0, 3.0, 3.0), table, path)
    with pytest.raises(tf.errors.InvalidArgumentError, match="input_min"):
        call_op(kind, x, f, (-2.5, -2.5, -1.0, 1.0), table, path)
    for ranges in [(0.0, 0.0, -1.0, 1.0), (-1.0, 1.0, 0.0, 0.0), (0.0, 0.0, 0.0, 0.0)]:
        y = call_op(kind, x, f, ranges, table, path).numpy()
        assert y.shape == (1, 5, 5, 3)
        assert np.all(y == 0), ranges


@pytest.mark.parametrize("bad", [0.5, -1.0, 65536.0, float("nan")])
def test_bad_float32_table_entry_is_an_invalid_argument_error(bad):
    table = ref.exact_table().astype(np.float32)
    table[1234] = bad
    x, f = tf.ones([1, 3, 3, 1]), tf.ones([1, 1, 1, 1])
    with pytest.raises(tf.errors.InvalidArgumentError, match="table entry 1234"):
        table_op(x, f, 0.0, 1.0, 0.0, 1.0, tf.constant(table), [1] * 4, "SAME")
    # The same table as a variable, inside a tf.function.
    lut = tf.Variable(table, trainable=False)

    @tf.function
    def run():
        return table_op(x, f, 0.0, 1.0, 0.0, 1.0, lut, [1] * 4, "SAME")

    with pytest.raises(tf.errors.InvalidArgumentError, match="table entry 1234"):
        run()
    table[1234] = 4 * 210  # the exact product again (a = 4, w = 210): the same variable works
    lut.assign(table)
    np.testing.assert_allclose(run().numpy(), np.ones([1, 3, 3, 1]), rtol=1e-6)


# ---- f. gradients with unknown shapes --------------------------------------------------------

SPECS = {"unknown_dims": [None] * 4, "unknown_rank": None}


def grouped_conv(x, f, groups):
    """The accurate grouped conv2d as one tf.nn.conv2d per group."""
    cg, per = f.shape[2], f.shape[3] // groups
    return tf.concat([tf.nn.conv2d(x[..., g * cg:(g + 1) * cg], f[..., g * per:(g + 1) * per],
                                   [1, 1, 1, 1], "SAME") for g in range(groups)], axis=-1)


@pytest.mark.parametrize("spec", list(SPECS), ids=list(SPECS))
@pytest.mark.parametrize("groups", [1, 2, "1-filter-unknown"])
@pytest.mark.parametrize("kind", ["file", "table"])
def test_gradient_with_unknown_input_shape_is_that_of_conv2d(kind, groups, spec, tmp_path):
    """The filter is a constant of known shape, except in "1-filter-unknown" (one group), where it
    is a second argument of the same unknown shape as the input."""
    filter_unknown = groups == "1-filter-unknown"
    groups = 1 if filter_unknown else groups
    rng = np.random.default_rng(23 + groups)
    table = mx.get("mitchell").lut.reshape(-1).astype(np.uint16)
    path = ref.write_table(tmp_path / "mitchell.bin", table)
    x = rng.uniform(-1, 1, (2, 6, 5, 4))
    f = tf.constant(rng.normal(0, 0.5, (3, 3, 4 // groups, 6)))
    upstream = tf.constant(rng.normal(size=(2, 6, 5, 6)))
    ranges = (-1.0, 1.0, -1.5, 1.5)

    def grads_of(xin, fin):
        with tf.GradientTape() as tape:
            tape.watch([xin, fin])
            y = call_op(kind, xin, fin, [tf.constant(r, tf.float64) for r in ranges], table, path)
            loss = tf.reduce_sum(y * upstream)
        return tape.gradient(loss, [xin, fin])

    spec_of = tf.TensorSpec(SPECS[spec], tf.float64)
    if filter_unknown:
        grads = tf.function(grads_of, input_signature=[spec_of, spec_of])
    else:
        grads = tf.function(lambda xin: grads_of(xin, f), input_signature=[spec_of])

    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch([xt, f])
        loss = tf.reduce_sum(grouped_conv(xt, f, groups) * upstream)
    want_x, want_f = tape.gradient(loss, [xt, f])
    got_x, got_f = grads(xt, f) if filter_unknown else grads(xt)
    np.testing.assert_allclose(got_x.numpy(), want_x.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(got_f.numpy(), want_f.numpy(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("groups", [1, 2])
def test_layer_gradient_with_unknown_input_shape(groups, tmp_path):
    rng = np.random.default_rng(29)
    path = mx.get("drum4").save(str(tmp_path / "drum4.bin"))
    layer = ta.FakeApproxConv2D(6, 3, padding="same", groups=groups, mul_map_file=path)
    x = rng.uniform(-1, 2, (2, 6, 5, 4)).astype(np.float32)
    layer(x)
    layer.bias.assign(rng.normal(size=6).astype(np.float32))
    upstream = tf.constant(rng.normal(size=(2, 6, 5, 6)).astype(np.float32))
    traces = []

    @tf.function(input_signature=[tf.TensorSpec([None] * 4, tf.float32)])
    def grads(xin):
        traces.append(1)
        with tf.GradientTape() as tape:
            tape.watch(xin)
            y = layer(xin, training=True)
            loss = tf.reduce_sum(y * tf.slice(upstream, [0, 0, 0, 0], tf.shape(y)))
        return tape.gradient(loss, [xin, layer.kernel, layer.bias])

    # Straight-through: fake-quantized operands (same ranges), accurate grouped conv2d.
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        xq = fq(xt, *range_with_zero(x))
        kq = fq(layer.kernel, *range_with_zero(layer.kernel.numpy()))
        loss = tf.reduce_sum((grouped_conv(xq, kq, groups) + layer.bias) * upstream)
    want = tape.gradient(loss, [xt, layer.kernel, layer.bias])
    got = grads(xt)
    for g, w, name in zip(got, want, ["input", "kernel", "bias"]):
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-5, atol=1e-4, err_msg=name)
    assert np.any(want[0].numpy() != 0) and np.any(want[1].numpy() != 0)
    grads(tf.constant(x[:1, :4, :3]))  # another shape: same trace
    assert len(traces) == 1


# ---- g. table arguments of the layers and of approximate_model -------------------------------


def test_set_multiplier_on_an_unbuilt_layer(tmp_path):
    drum4 = mx.get("drum4")
    path = mx.get("optrunc3").save(str(tmp_path / "optrunc3.bin"))
    x = np.random.default_rng(31).uniform(0, 1, (2, 5, 5, 2)).astype(np.float32)

    layer = ta.FakeApproxConv2D(3, 3, mul_map_file="")
    layer.set_multiplier(drum4)
    assert layer.mul_map_file == "drum4"
    layer(x)
    np.testing.assert_array_equal(layer.lut.numpy(), drum4.lut.reshape(-1).astype(np.float32))

    dense = ta.FakeApproxDense(4)
    dense.set_multiplier(path)
    assert dense.mul_map_file == path
    dense.build((None, 7))
    np.testing.assert_array_equal(dense.lut.numpy(),
                                  truncated_products(3).astype(np.float32))

    depthwise = ta.FakeApproxDepthwiseConv2D(3)
    depthwise.set_multiplier(np.asarray(drum4.lut).reshape(256, 256).astype(np.int32))
    assert depthwise.mul_map_file == "array"
    depthwise(x)
    np.testing.assert_array_equal(depthwise.lut.numpy(), drum4.lut.reshape(-1).astype(np.float32))


def test_set_multiplier_is_saved_in_keras_files(tmp_path):
    base = small_base_model(seed=13)
    model = ta.approximate_model(base, mul_map_file="drum4")
    path = mx.get("kulkarni").save(str(tmp_path / "kulkarni.bin"))
    x = np.random.default_rng(13).uniform(0, 1, (2, 8, 8, 3)).astype(np.float32)
    before = model(x).numpy()
    model.get_layer("dw").set_multiplier(path)
    after = model(x).numpy()
    assert not np.array_equal(before, after)
    model.save(str(tmp_path / "swapped.keras"))
    os.remove(path)
    loaded = keras.models.load_model(str(tmp_path / "swapped.keras"))
    np.testing.assert_array_equal(loaded(x).numpy(), after)
    assert {layer.name: layer.mul_map_file for layer in approx_layers(loaded)} == {
        "conv": "drum4", "dw": path, "fc": "drum4"}
    np.testing.assert_array_equal(loaded.get_layer("dw").lut.numpy(),
                                  mx.get("kulkarni").lut.astype(np.float32))


def bad_tables():
    too_big = ref.exact_table().astype(np.int64)
    too_big[300] = 70000
    fractional = ref.exact_table().astype(np.float32)
    fractional[300] = 0.5
    return {"shape": np.zeros(1000, np.uint16), "70000": too_big, "0.5": fractional}


@pytest.mark.parametrize("bad", list(bad_tables()))
@pytest.mark.parametrize("built", [False, True], ids=["unbuilt", "built"])
def test_set_multiplier_rejects_bad_arrays(bad, built):
    table = bad_tables()[bad]
    layer = ta.FakeApproxConv2D(2, 3, mul_map_file="optrunc2")
    if built:
        layer(np.ones((1, 4, 4, 1), np.float32))
    with pytest.raises(ValueError, match="multiplier"):
        layer.set_multiplier(table)
    assert layer.mul_map_file == "optrunc2"
    if not built:
        layer(np.ones((1, 4, 4, 1), np.float32))
    np.testing.assert_array_equal(layer.lut.numpy(), truncated_products(2).astype(np.float32))
    with pytest.raises(ValueError, match="mul_map_file"):
        ta.FakeApproxDense(3, mul_map_file=table)
    with pytest.raises(ValueError, match="mul_map_file"):
        ta.approximate_model(small_base_model(), mul_map_file=table)


def test_approximate_model_takes_multipliers_arrays_and_paths(tmp_path):
    base = small_base_model(seed=11)
    x = np.random.default_rng(11).uniform(0, 1, (3, 8, 8, 3)).astype(np.float32)
    drum4, etm3 = mx.get("drum4"), mx.get("etm3")
    drum4_path = drum4.save(str(tmp_path / "drum4.bin"))
    etm3_path = etm3.save(str(tmp_path / "etm3.bin"))
    drum4_array = np.asarray(drum4.lut).reshape(-1).astype(np.uint16)

    by_path = ta.approximate_model(base, mul_map_file=drum4_path)
    want = by_path(x).numpy()
    exact = ta.approximate_model(base, mul_map_file="")(x).numpy()
    assert not np.array_equal(want, exact)
    for table, label in [(drum4, "drum4"), (drum4_array, "array"), ("drum4", "drum4"),
                         (drum4_array.reshape(256, 256).astype(np.float64), "array")]:
        model = ta.approximate_model(base, mul_map_file=table)
        np.testing.assert_array_equal(model(x).numpy(), want, err_msg=label)
        assert [layer.mul_map_file for layer in approx_layers(model)] == [label] * 3
    assert [layer.mul_map_file for layer in approx_layers(by_path)] == [drum4_path] * 3

    # Dicts of them: the named layers get their own table, the others stay accurate.
    mixed_paths = ta.approximate_model(base, mul_map_file={"conv": drum4_path, "fc": etm3_path})
    mixed = ta.approximate_model(base, mul_map_file={"conv": drum4, "fc": np.asarray(etm3.lut)})
    np.testing.assert_array_equal(mixed(x).numpy(), mixed_paths(x).numpy())
    assert not np.array_equal(mixed(x).numpy(), want)
    assert {layer.name: layer.mul_map_file for layer in approx_layers(mixed)} == {
        "conv": "drum4", "fc": "array"}
    assert {layer.name: layer.mul_map_file for layer in approx_layers(mixed_paths)} == {
        "conv": drum4_path, "fc": etm3_path}
    assert type(mixed.get_layer("dw")) is keras.layers.DepthwiseConv2D


def test_keras_files_saved_before_layers_held_tables_still_load(tmp_path):
    """A .keras file of the earlier format: no table weight, no table_in_weights, the table at its path.

    Made from a current file by removing both, as the earlier code wrote it; it loads with the table
    read from mul_map_file, and computes what the current model computes.
    """
    import h5py
    import io
    import json
    import zipfile

    path = mx.get("drum4").save(str(tmp_path / "drum4.bin"))
    inputs = keras.Input((6, 6, 2))
    model = keras.Model(inputs, ta.FakeApproxConv2D(3, 3, mul_map_file=path)(inputs))
    model.save(str(tmp_path / "new.keras"))
    x = np.random.default_rng(41).uniform(-1, 1, (2, 6, 6, 2)).astype(np.float32)
    with zipfile.ZipFile(tmp_path / "new.keras") as new, zipfile.ZipFile(tmp_path / "old.keras", "w") as old:
        config = json.loads(new.read("config.json"))
        for layer in config["config"]["layers"]:
            layer["config"].pop("table_in_weights", None)
        old.writestr("config.json", json.dumps(config))
        old.writestr("metadata.json", new.read("metadata.json"))
        weights = io.BytesIO(new.read("model.weights.h5"))
        with h5py.File(weights, "a") as h5:
            group = h5["layers/fake_approx_conv2d/vars"]
            assert group["2"].shape == (65536,)  # kernel, bias, then the table
            del group["2"]
        old.writestr("model.weights.h5", weights.getvalue())
    loaded = keras.models.load_model(str(tmp_path / "old.keras"))
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    np.testing.assert_array_equal(loaded.layers[1].lut.numpy(), np.asarray(mx.get("drum4").lut, np.float32))
