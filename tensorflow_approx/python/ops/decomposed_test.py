"""Registered table decompositions: the CPU kernel's decomposed path (an integer GEMM: AVX-512 VNNI, or
AVX2 on its direct path) gives the lookups' outputs bit for bit, under every scheme, and the registration
checks what it is given."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

import tensorflow_approx as ta
from tensorflow_approx import multipliers as mx
from tensorflow_approx.python.ops import approx_conv_ops
from tensorflow_approx.testing import reference as ref


def _cpu_has(*flags):
    try:
        with open("/proc/cpuinfo") as f:
            words = set(f.read().split())
    except OSError:
        return False
    return all(flag in words for flag in flags)


# What the decomposed path needs; elsewhere the op keeps the lookups (and the outputs are the same).
VNNI = _cpu_has("avx512_vnni", "avx512vbmi", "avx512bw")
# The kernel the trace names where PreferDecomposed takes a one-group layer: VNNI's, else AVX2's (the direct
# path only), else none.
DECOMPOSED = "avx512vnni-decomposed" if VNNI else "avx2-decomposed" if _cpu_has("avx2") else None


def run(x, f, table, **kwargs):
    """The op on the CPU with ranges from the data (per channel when asked)."""
    kwargs = dict(kwargs)
    per_channel = kwargs.pop("per_channel", False)
    axis = [0, 1, 2] if per_channel else None
    ranges = (min(float(x.min()), 0.0), max(float(x.max()), 0.0),
              tf.minimum(tf.reduce_min(f, axis=axis), 0.0), tf.maximum(tf.reduce_max(f, axis=axis), 0.0))
    with tf.device("/CPU:0"):
        return ta.approx_conv2d_with_table(tf.constant(x), tf.constant(f), *ranges, table=tf.constant(table),
                                           strides=[1, 1, 1, 1], padding="SAME", **kwargs).numpy()


def low_rank_table(rng, terms, signed):
    """A table of our own, never registered before (each test draws a new one): products c0 + alpha[a]
    + beta[w] + sum of `terms` int8 products, inside uint16 (unsigned) or int16 (signed)."""
    # (Factors up to 60 in size: past 7 terms the decomposer's integer factors of such a table leave int8,
    # so 8 terms take factors up to 20.)
    limit = 60 if terms <= 7 else 20
    u = rng.integers(-limit, limit + 1, (terms, 256))
    v = rng.integers(-limit, limit + 1, (terms, 256))
    products = (rng.integers(0, 900, 256)[:, None] + rng.integers(0, 900, 256)[None, :] + u.T @ v
                + (0 if signed else 30000))
    return products.reshape(-1).astype(np.int16 if signed else np.uint16)


CASES = [
    # terms, signed products, shape (batch, size, in, out, k), op arguments
    # (the decomposed kernel runs where PreferDecomposed says: in one group (its direct path) up to 8 terms
    # from 128 taps, and on fewer taps (1x1 filters, 3-channel stems) at strides 1; with groups from 128
    # taps, 16-31 channels per group with up to 6 terms, 8 at strides 1, 32+ channels with up to 8 terms
    # and 36864 entries, 5-6 terms from 288 taps, 7-8 terms from 512; a case it declines keeps the
    # lookups, same outputs)
    (1, False, (2, 9, 32, 64, 3), {}),
    (2, False, (1, 7, 40, 64, 3), {"per_channel": True}),
    (2, False, (2, 6, 16, 96, 3), {"num_bits": 6, "filter_num_bits": 4}),
    (1, True, (1, 8, 24, 64, 3), {"input_scheme": "symmetric", "filter_scheme": "symmetric"}),
    (2, True, (1, 8, 24, 64, 3), {"input_scheme": "symmetric_narrow", "filter_scheme": "symmetric",
                                  "per_channel": True}),
    (1, False, (1, 8, 24, 64, 3), {"input_scheme": "asymmetric", "filter_scheme": "symmetric"}),
    (1, False, (1, 5, 48, 128, 3), {"data_format": "NCHW"}),
    (4, False, (1, 5, 48, 40, 3), {}),
    (2, False, (2, 6, 32, 32, 3), {"per_channel": True}),
    (2, False, (1, 6, 16, 16, 3), {}),
    (2, False, (1, 6, 16, 16, 1), {}),
    (1, False, (2, 9, 32, 64, 1), {"per_channel": True}),
    (6, False, (2, 8, 16, 16, 3), {"per_channel": True}),
    (7, False, (2, 8, 16, 16, 3), {}),
    (8, False, (2, 8, 16, 16, 3), {"per_channel": True}),
    (6, False, (2, 9, 16, 32, 1), {}),
    (5, False, (2, 10, 3, 16, 3), {}),
]


@pytest.mark.parametrize("terms, signed, shape, kwargs", CASES)
def test_registered_tables_give_the_lookups_outputs(terms, signed, shape, kwargs):
    batch, size, cin, cout, k = shape
    rng = np.random.default_rng(100 * terms + cout + signed)
    x = np.maximum(rng.normal(0.2, 1.0, (batch, size, size, cin)), 0).astype(np.float32)
    f = (rng.normal(0, 0.2, (k, k, cin, cout)) * rng.uniform(0.5, 2, cout)).astype(np.float32)
    if kwargs.get("data_format") == "NCHW":
        x = x.transpose(0, 3, 1, 2)
    table = low_rank_table(rng, terms, signed)
    before = run(x, f, table, **kwargs)  # the lookups: the table is new to this process
    decomposition = ta.register_decomposition(table)
    assert decomposition is not None and decomposition.terms <= terms
    np.testing.assert_array_equal(run(x, f, table, **kwargs), before)


def run_traced(script, name):
    """Runs `script` in a fresh Python with TFAPPROX_TRACE (read once, at the op's first call): its stdout
    and the kernels the trace names, in order (a line per configuration and kernel)."""
    trace = os.path.join(os.environ.get("TEST_TMPDIR", "/tmp"), f"{name}_trace_{os.getpid()}.tsv")
    if os.path.exists(trace):
        os.remove(trace)
    env = {**os.environ, "TFAPPROX_TRACE": trace, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    with open(trace) as f:
        kernels = [dict(field.split("=", 1) for field in line.split("\t"))["kernel"] for line in f.read().split("\n")
                   if line]
    # (Where the processor has AMX, VNNI's kernel runs its GEMM on the tile unit for some shapes and terms
    # (UsesAmx) and the trace says so; the tests here ask which kernel family ran.)
    return out.stdout, ["avx512vnni-decomposed" if k == "amx-decomposed" else k for k in kernels]


def test_decomposed_kernel_is_the_one_that_runs():
    """In a fresh process with TFAPPROX_TRACE: the unregistered table takes the lookups, the registered
    one the decomposed kernel where the processor has VNNI or AVX2 (the lookups elsewhere), same outputs."""
    script = textwrap.dedent("""
        import numpy as np, tensorflow as tf
        import tensorflow_approx as ta
        x = tf.constant(np.maximum(np.random.default_rng(0).normal(size=(2, 8, 8, 64)), 0).astype("float32"))
        f = tf.constant(np.random.default_rng(1).normal(0, 0.2, (3, 3, 64, 64)).astype("float32"))
        table = tf.constant(ta.multipliers.get("drum6").lut.astype("uint16"))
        call = lambda: ta.approx_conv2d_with_table(x, f, 0.0, 3.0, -0.5, 0.5, table, [1, 1, 1, 1], "SAME").numpy()
        before = call()
        ta.register_decomposition("drum6")
        print("equal", np.array_equal(before, call()))
    """)
    stdout, kernels = run_traced(script, "decomposed")
    assert "equal True" in stdout
    assert kernels[0] != DECOMPOSED
    assert kernels[-1] == (DECOMPOSED or kernels[0])


def test_strided_pointwise_filters_run_over_the_pixels_they_read():
    """A 1x1 stride-2 projection (ResNet-20's 16->32) runs at strides 1 over the pixels it reads
    (FastKernelShape): with a 2-term table the trace names the decomposed kernel on a VNNI or AVX2 processor (as
    PreferDecomposed takes up to eight terms on a 1x1 filter at strides 1), the outputs are the lookups' and
    the NumPy model's, and a NaN in a pixel the filter skips changes nothing."""
    script = textwrap.dedent("""
        import numpy as np, tensorflow as tf
        import tensorflow_approx as ta
        from tensorflow_approx.testing import reference as ref
        rng = np.random.default_rng(5)
        x = np.maximum(rng.normal(size=(2, 9, 11, 16)), 0).astype("float32")
        x[0, 1, 1, 3] = np.nan  # (odd row and column: no tap reads it at stride 2)
        f = rng.normal(0, 0.2, (1, 1, 16, 32)).astype("float32")
        u, v = rng.integers(-60, 61, (2, 256)), rng.integers(-60, 61, (2, 256))  # a 2-term table
        lut = (rng.integers(0, 900, 256)[:, None] + rng.integers(0, 900, 256)[None, :] + u.T @ v
               + 30000).reshape(-1).astype(np.uint16)
        table = tf.constant(lut)
        call = lambda: ta.approx_conv2d_with_table(tf.constant(x), tf.constant(f), 0.0, 3.0, -0.5, 0.5, table,
                                                   [1, 2, 2, 1], "SAME").numpy()
        before = call()
        assert ta.register_decomposition(table).terms == 2
        after = call()
        want = ref.approx_conv_scheme(np.nan_to_num(x), f, (0.0, 3.0), (-0.5, 0.5), lut.astype(np.int64),
                                      strides=(2, 2))
        print("equal", np.array_equal(before, after), "nan", int(np.isnan(after).sum()),
              "close", np.allclose(after, want, rtol=1e-5, atol=1e-5 * np.abs(want).max()))
    """)
    stdout, kernels = run_traced(script, "subsampled")
    assert "equal True nan 0 close True" in stdout, stdout
    assert kernels[-1] == (DECOMPOSED or kernels[0]), kernels
    assert kernels[0] != DECOMPOSED, kernels


def test_tables_without_a_small_decomposition_are_not_registered():
    random_table = np.random.default_rng(3).integers(0, 65536, 65536).astype(np.uint16)
    assert ta.register_decomposition(random_table) is None
    assert ta.register_decomposition(random_table) is None  # remembered: not decomposed again
    with pytest.raises(ValueError, match="max_terms must be an integer in 0..64"):
        ta.register_decomposition("drum6", max_terms=65)


def test_a_wrong_decomposition_is_refused_with_the_pair():
    d = mx.decompose(mx.exact())
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"gives .* at a = 0, w = 0 where the table holds 0"):
        approx_conv_ops._ops.approx_register_table_decomposition(
            table=tf.constant(mx.exact().lut.astype(np.uint16)), u=tf.constant(d.U), v=tf.constant(d.V),
            alpha=tf.constant(d.alpha.astype(np.int32)), beta=tf.constant(d.beta.astype(np.int32)),
            c0=tf.constant(d.c0 + 1, tf.int64))
    with pytest.raises(tf.errors.InvalidArgumentError, match="u and v must have the same shape"):
        approx_conv_ops._ops.approx_register_table_decomposition(
            table=tf.constant(mx.exact().lut.astype(np.uint16)), u=tf.constant(d.U), v=tf.constant(d.V[:, :128]),
            alpha=tf.constant(d.alpha.astype(np.int32)), beta=tf.constant(d.beta.astype(np.int32)),
            c0=tf.constant(d.c0, tf.int64))


def test_layers_register_their_tables_and_keep_their_outputs():
    """A layer registers its table when built and when its multiplier is swapped; its outputs are the
    NumPy model's."""
    rng = np.random.default_rng(4)
    x = np.maximum(rng.normal(0.2, 1.0, (2, 8, 8, 32)), 0).astype(np.float32)
    layer = ta.FakeApproxConv2D(64, 3, padding="same", use_bias=False, mul_map_file="optrunc2")
    layer.build(x.shape)
    layer.set_multiplier("drum5")
    got = layer(x, training=False).numpy()
    k = layer.kernel.numpy()
    want = ref.approx_conv_scheme(x, k, (0.0, float(x.max())), (min(float(k.min()), 0), max(float(k.max()), 0)),
                                  mx.get("drum5").lut.astype(np.int64))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    values = approx_conv_ops.lut_values("drum5")[0]
    assert any(key[0] == __import__("hashlib").sha1(values.tobytes()).hexdigest()
               for key in approx_conv_ops._registered)


def test_keras_layers_register_tables_of_up_to_16_terms():
    """A Keras layer registers its table's decomposition when built, up to 16 terms (DEFAULT_MAX_TERMS,
    the GPU kernel's reach; the budget was 4). In a fresh process with TFAPPROX_TRACE: a 6-term table, once a layer with it
    is built, takes the decomposed kernel on a 3x3 64->64 call (576 taps, where PreferDecomposed takes 5-8
    terms) on a VNNI or AVX2 processor, with the lookups' outputs; a table that needs more than 16 terms keeps the
    lookups."""
    script = textwrap.dedent("""
        import numpy as np, tensorflow as tf
        import tensorflow_approx as ta
        rng = np.random.default_rng(7)
        def table(terms):  # c0 + alpha[a] + beta[w] + `terms` int8 products, inside uint16
            u, v = rng.integers(-60, 61, (terms, 256)), rng.integers(-60, 61, (terms, 256))
            return (rng.integers(0, 900, 256)[:, None] + rng.integers(0, 900, 256)[None, :] + u.T @ v
                    + 30000).reshape(-1).astype(np.uint16)
        x = tf.constant(np.maximum(rng.normal(size=(2, 8, 8, 64)), 0).astype("float32"))
        f = tf.constant(rng.normal(0, 0.2, (3, 3, 64, 64)).astype("float32"))
        for terms in (6, 20):
            t = table(terms)
            call = lambda: ta.approx_conv2d_with_table(x, f, 0.0, 3.0, -0.5, 0.5, tf.constant(t), [1, 1, 1, 1],
                                                       "SAME").numpy()
            before = call()
            ta.FakeApproxConv2D(64, 3, padding="same", mul_map_file=t).build(x.shape)
            print(terms, "equal", np.array_equal(before, call()))
    """)
    stdout, kernels = run_traced(script, "layer_terms")
    assert "6 equal True" in stdout and "20 equal True" in stdout
    # The 6-term table: lookups, then (registered) the decomposed kernel; the 20-term one: lookups only.
    assert kernels.count(DECOMPOSED) == (1 if DECOMPOSED else 0), kernels
    if DECOMPOSED:
        assert kernels.index(DECOMPOSED) == 1, kernels
