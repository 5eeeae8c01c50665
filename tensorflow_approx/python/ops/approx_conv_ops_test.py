"""Tests of the op through TensorFlow: the contract (semantics.md), gradients and every misuse."""

import glob
import os

import numpy as np
import pytest
import tensorflow as tf

import tensorflow_approx as ta
from tensorflow_approx.testing import reference as ref
from tensorflow_approx.testing.conv_cases import random_config

op = ta.approx_conv2d_with_min_max_vars


def to_nchw(x):
    return np.transpose(x, (0, 3, 1, 2))


def run_op(x, f, ranges, table_path="", num_bits=8, strides=(1, 1), padding="SAME",
           dilations=(1, 1), explicit=None, data_format="NHWC", dtype=tf.float64):
    """Calls the op on NHWC x and returns NHWC numpy output, whatever data_format it runs in."""
    nhwc = data_format == "NHWC"
    s = [1, *strides, 1] if nhwc else [1, 1, *strides]
    d = [1, *dilations, 1] if nhwc else [1, 1, *dilations]
    pads = []
    if padding == "EXPLICIT":
        (pt, pb), (pl, pr) = explicit
        pads = [0, 0, pt, pb, pl, pr, 0, 0] if nhwc else [0, 0, 0, 0, pt, pb, pl, pr]
    xin = x if nhwc else to_nchw(x)
    out = op(tf.constant(xin, dtype), tf.constant(f, dtype), *(tf.constant(r, dtype) for r in ranges),
             strides=s, num_bits=num_bits, mul_map_file=table_path, padding=padding,
             explicit_paddings=pads, data_format=data_format, dilations=d)
    out = tf.cast(out, tf.float64).numpy()
    return out if nhwc else np.transpose(out, (0, 2, 3, 1))


def random_ranges(rng):
    lo = float(rng.uniform(-2, 0.5))
    return (lo, lo + float(rng.uniform(0.1, 3)), float(rng.uniform(-1, 0)), float(rng.uniform(0, 1)))


@pytest.mark.parametrize("table_kind", ["exact", "random"])
def test_matches_reference_model_on_random_configs(table_kind, tmp_path):
    """T = double: the op equals the NumPy model (same integer sums, same float64 epilogue)."""
    rng = np.random.default_rng(11 if table_kind == "exact" else 12)
    table = ref.exact_table() if table_kind == "exact" else rng.integers(0, 65536, 65536)
    path = "" if table_kind == "exact" else ref.write_table(tmp_path / "t.bin", table)
    for _ in range(40):
        cfg = random_config(rng)
        ranges = random_ranges(rng)
        x = rng.uniform(ranges[0] - 0.5, ranges[1] + 0.5, cfg["shape"])  # some values get clamped
        f = rng.normal(0, 0.5, cfg["filter_shape"])
        want = ref.approx_conv(x, f, ranges, table, cfg["num_bits"], cfg["strides"],
                               cfg["padding"], cfg["dilations"], cfg["explicit"])
        got = run_op(x, f, ranges, path, cfg["num_bits"], cfg["strides"], cfg["padding"],
                     cfg["dilations"], cfg["explicit"], cfg["data_format"])
        # Same integers and the same float64 expression: equal up to the last bit or two.
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * np.abs(want).max(),
                                   err_msg=str(cfg))


def test_scale_one_double_gives_the_integer_sum_exactly_for_large_k(tmp_path):
    """Ranges [0, 255] give scale 1 and zero point 0, so out = acc; K = 3*3*2304 > 20000 taps."""
    rng = np.random.default_rng(3)
    table = rng.integers(0, 65536, 65536)
    path = ref.write_table(tmp_path / "r.bin", table)
    x = rng.integers(0, 256, (2, 4, 3, 2304)).astype(np.float64)
    f = rng.integers(0, 256, (3, 3, 2304, 3)).astype(np.float64)
    acc, _, _, taps = ref.conv_sums(x.astype(np.int64), f.astype(np.int64), table, (1, 1), "VALID",
                                    (1, 1), 0)
    assert taps > 20000 and acc.max() > 2**24  # beyond float32's exact integers
    got = run_op(x, f, (0.0, 255.0, 0.0, 255.0), path, padding="VALID")
    np.testing.assert_array_equal(got, acc.astype(np.float64))


def test_exact_table_equals_conv2d_of_fake_quantized_values():
    """float32, exact table: matches tf.nn.conv2d on fake-quantized input and filter.

    Both compute sum(x^ * w^) in float32 by different routes. The op's rounding error is a few ulps
    of the largest of its four terms; conv2d's is at most K ulps of sum|x^ w^|. The bound below is
    8 * eps * (sum of |terms| + sum |x^ w^|), which both errors stay inside.
    """
    rng = np.random.default_rng(5)
    eps = np.finfo(np.float32).eps
    for _ in range(15):
        cfg = random_config(rng)
        ranges = random_ranges(rng)
        x = rng.uniform(ranges[0], ranges[1], cfg["shape"]).astype(np.float32)
        f = rng.normal(0, 0.5, cfg["filter_shape"]).astype(np.float32)
        nb = cfg["num_bits"]
        fx = tf.quantization.fake_quant_with_min_max_vars(x, ranges[0], ranges[1], num_bits=nb)
        ff = tf.quantization.fake_quant_with_min_max_vars(f, ranges[2], ranges[3], num_bits=nb)
        pad = cfg["padding"]
        if pad == "EXPLICIT":
            pad = [[0, 0], list(cfg["explicit"][0]), list(cfg["explicit"][1]), [0, 0]]
        want = tf.nn.conv2d(fx, ff, [1, *cfg["strides"], 1], pad, dilations=cfg["dilations"]).numpy()
        got = run_op(x, f, ranges, "", nb, cfg["strides"], cfg["padding"], cfg["dilations"],
                     cfg["explicit"], cfg["data_format"], dtype=tf.float32)
        magnitude = tf.nn.conv2d(tf.abs(fx), tf.abs(ff), [1, *cfg["strides"], 1], pad,
                                 dilations=cfg["dilations"]).numpy()
        s1, m1, _ = ref.quant_params(ranges[0], ranges[1], nb)
        s2, m2, _ = ref.quant_params(ranges[2], ranges[3], nb)
        k = np.prod(cfg["filter_shape"][:3])
        # Largest possible terms: codes at most 255 per tap.
        terms = k * 255 * (abs(s1 * s2) * 255 + abs(s1 * m2) + abs(s2 * m1)) + k * abs(m1 * m2)
        assert np.all(np.abs(got - want) <= 8 * eps * (terms + magnitude)), cfg


@pytest.mark.skipif(ref.shared_tables_dir() is None,
                    reason="../shared/axmul_8x8 (real EvoApprox tables) is not present")
def test_real_evoapprox_tables():
    tables = sorted(glob.glob(os.path.join(ref.shared_tables_dir(), "*.bin")))[:6]
    assert tables
    rng = np.random.default_rng(8)
    for path in tables:
        table = np.fromfile(path, "<u2")
        cfg = random_config(rng)
        ranges = random_ranges(rng)
        x = rng.uniform(ranges[0], ranges[1], cfg["shape"])
        f = rng.normal(0, 0.5, cfg["filter_shape"])
        want = ref.approx_conv(x, f, ranges, table, cfg["num_bits"], cfg["strides"],
                               cfg["padding"], cfg["dilations"], cfg["explicit"])
        got = run_op(x, f, ranges, path, cfg["num_bits"], cfg["strides"], cfg["padding"],
                     cfg["dilations"], cfg["explicit"], cfg["data_format"])
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * np.abs(want).max())
        # Scale-1 integer check with the real table.
        xi = rng.integers(0, 256, (1, 5, 5, 8)).astype(np.float64)
        fi = rng.integers(0, 256, (3, 3, 8, 4)).astype(np.float64)
        acc, *_ = ref.conv_sums(xi.astype(np.int64), fi.astype(np.int64), table, (1, 1), "SAME",
                                (1, 1), 0)
        np.testing.assert_array_equal(run_op(xi, fi, (0.0, 255.0, 0.0, 255.0), path), acc)


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16, tf.float32])
def test_low_precision_types_follow_the_float32_path(dtype):
    """Inputs are cast to float32 before quantizing; the float32 result is cast to T."""
    rng = np.random.default_rng(9)
    x = rng.uniform(-1, 1, (2, 6, 6, 4)).astype(np.float32)
    f = rng.normal(0, 0.3, (3, 3, 4, 5)).astype(np.float32)
    x_t, f_t = tf.cast(x, dtype), tf.cast(f, dtype)
    ranges = (-1.0, 1.0, -1.0, 1.0)
    args = dict(strides=[1, 1, 1, 1], num_bits=8, mul_map_file="", padding="SAME")
    got = op(x_t, f_t, *(tf.constant(r, dtype) for r in ranges), **args)
    assert got.dtype == dtype
    want = op(tf.cast(x_t, tf.float32), tf.cast(f_t, tf.float32),
              *(tf.constant(r, tf.float32) for r in ranges), **args)
    np.testing.assert_array_equal(tf.cast(got, tf.float32).numpy(),
                                  tf.cast(tf.cast(want, dtype), tf.float32).numpy())


def test_empty_batch_returns_empty_output():
    x = tf.zeros([0, 5, 5, 3])
    f = tf.ones([3, 3, 3, 2])
    out = op(x, f, -1.0, 1.0, -1.0, 1.0, [1, 1, 1, 1], 8, "", "SAME")
    assert out.shape == (0, 5, 5, 2)


def test_inputs_outside_the_range_are_clamped():
    f = tf.ones([1, 1, 1, 1])
    big = op(tf.fill([1, 1, 1, 1], 100.0), f, 0.0, 1.0, 0.0, 1.0, [1] * 4, 8, "", "VALID")
    top = op(tf.fill([1, 1, 1, 1], 1.0), f, 0.0, 1.0, 0.0, 1.0, [1] * 4, 8, "", "VALID")
    assert big.numpy().item() == top.numpy().item() == pytest.approx(1.0, rel=1e-6)


def grad_config_cases():
    return [
        dict(data_format="NHWC", padding="SAME", groups=1, dilations=(1, 1), strides=(1, 1)),
        dict(data_format="NCHW", padding="VALID", groups=2, dilations=(2, 1), strides=(2, 1)),
        dict(data_format="NHWC", padding="EXPLICIT", groups=1, dilations=(1, 2), strides=(1, 2)),
        dict(data_format="NCHW", padding="EXPLICIT", groups=4, dilations=(1, 1), strides=(2, 2)),
        dict(data_format="NHWC", padding="SAME", groups=4, dilations=(2, 2), strides=(1, 1)),
        dict(data_format="NHWC", padding="VALID", groups=2, dilations=(1, 1), strides=(1, 1)),
    ]


def linear_gradients(x, f, conv, upstream):
    """Gradients of sum(conv(x, f) * upstream) from forward convolutions only.

    conv is linear in each argument, so d/dx_i = sum(conv(e_i, f) * upstream) for the basis
    image e_i (likewise for f). Independent of TensorFlow's backprop kernels.
    """
    def grad_of(arg, make):
        basis = np.eye(arg.size, dtype=np.float64).reshape(arg.size, *arg.shape)
        return np.array([np.sum(make(b) * upstream) for b in basis]).reshape(arg.shape)

    gx = grad_of(x, lambda b: conv(b, f))
    gf = grad_of(f, lambda b: conv(x, b))
    return gx, gf


@pytest.mark.parametrize("cfg", grad_config_cases(),
                         ids=lambda c: f"{c['data_format']}-{c['padding']}-g{c['groups']}-d{c['dilations'][0]}{c['dilations'][1]}")
@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf_function"])
def test_gradient_is_that_of_conv2d(cfg, graph):
    rng = np.random.default_rng(2)
    c, groups = 4, cfg["groups"]
    x = rng.uniform(-1, 1, (1, 6, 5, c))
    f = rng.normal(0, 0.4, (3, 3, c // groups, 4))
    nhwc = cfg["data_format"] == "NHWC"
    s, d = cfg["strides"], cfg["dilations"]
    pads, conv_pad = [], cfg["padding"]
    if cfg["padding"] == "EXPLICIT":
        pads = [0, 0, 1, 2, 2, 0, 0, 0] if nhwc else [0, 0, 0, 0, 1, 2, 2, 0]
        conv_pad = [[0, 0], [1, 2], [2, 0], [0, 0]]

    def conv(x, f):  # the accurate layer, forward only
        return tf.nn.conv2d(x, f, [1, *s, 1], conv_pad, dilations=[1, *d, 1]).numpy()

    upstream = rng.normal(size=conv(x, f).shape)
    want_x, want_f = linear_gradients(x, f, conv, upstream)

    def grads(x, f):
        with tf.GradientTape() as tape:
            tape.watch([x, f])
            xin = x if nhwc else tf.transpose(x, [0, 3, 1, 2])
            y = op(xin, f, -1.0, 1.0, -1.0, 1.0, [1, *s, 1] if nhwc else [1, 1, *s], 8, "",
                   cfg["padding"], pads, cfg["data_format"], [1, *d, 1] if nhwc else [1, 1, *d])
            y = y if nhwc else tf.transpose(y, [0, 2, 3, 1])
            loss = tf.reduce_sum(y * upstream)
        return tape.gradient(loss, [x, f])

    fn = tf.function(grads) if graph else grads
    gx, gf = fn(tf.constant(x), tf.constant(f))
    np.testing.assert_allclose(gx.numpy(), want_x, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(gf.numpy(), want_f, rtol=1e-9, atol=1e-9)


def test_min_max_get_no_gradient():
    x, f = tf.ones([1, 3, 3, 1]), tf.ones([1, 1, 1, 1])
    lo, hi = tf.constant(-1.0), tf.constant(1.0)
    with tf.GradientTape() as tape:
        tape.watch([lo, hi])
        y = op(x, f, lo, hi, lo, hi, [1] * 4, 8, "", "SAME")
    assert tape.gradient(y, [lo, hi]) == [None, None]


# ---- Bad input: every misuse is an InvalidArgumentError naming the argument. ----

GOOD = dict(strides=[1, 1, 1, 1], num_bits=8, mul_map_file="", padding="SAME")


def call(x=None, f=None, ranges=(-1.0, 1.0, -1.0, 1.0), **overrides):
    x = tf.ones([1, 5, 5, 4]) if x is None else x
    f = tf.ones([3, 3, 4, 2]) if f is None else f
    return op(x, f, *ranges, **{**GOOD, **overrides})


def write_bytes(path, n):
    path.write_bytes(bytes(range(256)) * (n // 256) + bytes(n % 256))
    return str(path)


@pytest.mark.parametrize("case,message", [
    (dict(x=tf.ones([5, 5, 4])), "input must be 4-dimensional"),
    (dict(f=tf.ones([3, 3, 4])), "filter must be 4-dimensional"),
    (dict(f=tf.ones([3, 3, 3, 2])), "multiple of the filter's input depth"),
    (dict(f=tf.ones([3, 3, 2, 3])), "multiple of the number of groups"),
    (dict(strides=[1, 0, 1, 1]), "strides must be positive"),
    (dict(strides=[1, -2, 1, 1]), "strides must be positive"),
    (dict(strides=[1, 1, 1]), "strides must have 4 elements"),
    (dict(strides=[2, 1, 1, 1]), "strides in the batch and depth"),
    (dict(dilations=[1, 0, 1, 1]), "dilations must be positive"),
    (dict(padding="EXPLICIT", explicit_paddings=[0, 0, 1, 1]), "explicit_paddings must have 8"),
    (dict(padding="EXPLICIT", explicit_paddings=[0, 0, -1, 1, 0, 0, 0, 0]), "non-negative"),
    (dict(explicit_paddings=[0, 0, 1, 1, 1, 1, 0, 0]), "explicit_paddings must be empty"),
    (dict(num_bits=1), "num_bits must be in [2, 8]"),
    (dict(num_bits=9), "num_bits must be in [2, 8]"),
    (dict(ranges=(1.0, -1.0, -1.0, 1.0)), "input_min must not exceed input_max"),
    (dict(ranges=(-1.0, 1.0, 2.0, 1.0)), "filter_min must not exceed filter_max"),
    (dict(ranges=(-1.0, float("inf"), -1.0, 1.0)), "must be finite"),
    (dict(ranges=(-1.0, 1.0, float("nan"), 1.0)), "must be finite"),
    (dict(ranges=(tf.constant([-1.0]), 1.0, -1.0, 1.0)), "input_min must be a scalar"),
    (dict(f=tf.ones([7, 7, 4, 2]), padding="VALID"), "larger than the padded input"),
    (dict(mul_map_file="/nonexistent/table.bin"), "cannot open"),
    (dict(mul_map_file="/tmp"), "is a directory"),
    (dict(mul_map_file="/dev/zero"), "not a regular file"),
])
def test_bad_input_is_an_invalid_argument_error(case, message):
    # Shape inference may reject some cases first (ValueError in graph building); eager gives
    # InvalidArgumentError. Both name the problem.
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match=_escape(message)):
        call(**case)


def _escape(text):
    import re
    return re.escape(text)


@pytest.mark.parametrize("size,message", [(131070, "131070 bytes"), (131073, "131073 bytes"), (0, "0 bytes")])
def test_table_file_of_the_wrong_size(tmp_path, size, message):
    path = write_bytes(tmp_path / "bad.bin", size)
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        call(mul_map_file=path)


def test_table_fifo_does_not_hang(tmp_path):
    fifo = tmp_path / "table.fifo"
    os.mkfifo(fifo)
    with pytest.raises(tf.errors.InvalidArgumentError, match="not a regular file"):
        call(mul_map_file=str(fifo))


def test_output_too_large_is_an_error():
    x = tf.zeros([1, 1 << 16, 1 << 15, 1], tf.float16)  # 2^31 elements of input: 4 GB, too large
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="2\\^31 - 1"):
        op(x, tf.ones([1, 1, 1, 1], tf.float16), *(tf.constant(v, tf.float16) for v in (0, 1, 0, 1)),
           **GOOD)


def test_missing_library_error_names_the_build_command(tmp_path, monkeypatch):
    from tensorflow_approx.python.ops import approx_conv_ops

    monkeypatch.setattr(approx_conv_ops, "_LIBRARY", str(tmp_path / "missing.so"))
    with pytest.raises(ImportError, match="bazel build //tensorflow_approx"):
        approx_conv_ops._load_library()


def test_concurrent_calls_share_the_table(tmp_path):
    """One kernel (one loaded table) serves calls from several threads at once, with the same result."""
    import concurrent.futures

    rng = np.random.default_rng(4)
    path = ref.write_table(tmp_path / "t.bin", rng.integers(0, 65536, 65536))
    x = tf.constant(rng.uniform(-1, 1, (4, 12, 12, 8)).astype(np.float32))
    f = tf.constant(rng.normal(0, 0.3, (3, 3, 8, 16)).astype(np.float32))

    @tf.function
    def conv(x):
        return op(x, f, -1.0, 1.0, -1.0, 1.0, [1, 1, 1, 1], 8, path, "SAME")

    want = conv(x).numpy()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: conv(x).numpy(), range(16)))
    for got in results:
        np.testing.assert_array_equal(got, want)


# ---- Rounding of half codes, integer sums past 2^31 / 2^32, wide layers and several passes. ----

table_op = ta.approx_conv2d_with_table


def run_either(which, x, f, ranges, table, **kwargs):
    """The op `which` ("min_max_vars": exact table only, or "table") in float64 on NHWC x."""
    args = [tf.constant(v, tf.float64) for v in (x, f, *ranges)]
    kwargs = {"strides": [1, 1, 1, 1], "padding": "VALID", **kwargs}
    if which == "min_max_vars":
        assert np.array_equal(table, ref.exact_table())
        return op(*args, num_bits=kwargs.pop("num_bits", 8), mul_map_file="", **kwargs).numpy()
    return table_op(*args, table=tf.constant(np.asarray(table, np.uint16)), **kwargs).numpy()


# (lo, hi, num_bits): scale a power of two, so nudged_min + (k + 0.5) * scale is exact in float32.
TIE_RANGES = [
    (0.0, 255.0, 8),            # scale 1, zero point 0
    (-128.0, 127.0, 8),         # scale 1, zero point 128: ties below and above zero
    (0.0, 255.0 / 64, 8),       # scale 1/64
    (-2.0, 1.984375, 8),        # scale 1/64, zero point 128
    (-5.0, 10.0, 4),            # num_bits 4: scale 1, zero point 5
]


@pytest.mark.parametrize("which", ["min_max_vars", "table"])
@pytest.mark.parametrize("lo,hi,num_bits", TIE_RANGES)
def test_half_code_ties_round_up_as_fake_quant(which, lo, hi, num_bits):
    """Values exactly halfway between two codes take the upper code, as TensorFlow's
    floor(v + 0.5): not the even one (np.round, rint) nor the one away from zero.

    With a 1x1 filter of ones whose range [0, 2^b - 1] has scale 1 and zero point 0 (code 1, value
    1), out = s1*q + m1 is the dequantized input, which must equal
    tf.quantization.fake_quant_with_min_max_vars bit for bit; likewise for filter ties with an input
    of ones. The halfway points nudged_min + (k + 0.5) * scale are exact in float32 here.
    """
    qmax = 2**num_bits - 1
    scale, nudged_min, zp = ref.quant_params(lo, hi, num_bits)
    assert scale == (hi - lo) / qmax and float(scale) == 2.0 ** np.round(np.log2(scale))
    k = np.arange(qmax)  # ties between codes k and k + 1
    ties = nudged_min + (k + 0.5) * np.float64(scale)
    assert np.array_equal(ties.astype(np.float32), ties)  # exactly representable
    want_codes = k + 1
    # The test discriminates: ties-to-even gives code k for every even k (rounding v - zp half away
    # from zero gives k for every k below the zero point).
    assert np.sum(np.round(ties / scale - nudged_min / scale) != want_codes) >= qmax // 2
    fake_quant = tf.quantization.fake_quant_with_min_max_vars(
        tf.constant(ties, tf.float32), lo, hi, num_bits=num_bits).numpy()
    np.testing.assert_array_equal(fake_quant, nudged_min + want_codes * scale)
    table = ref.exact_table()
    unit = (0.0, float(qmax))  # scale 1, zero point 0: 1.0 has code 1
    # Input ties along the width, a 1x1 filter of ones: out = s1 * q + m1.
    got = run_either(which, ties.reshape(1, 1, -1, 1), np.ones((1, 1, 1, 1)), (lo, hi, *unit),
                     table, num_bits=num_bits).reshape(-1)
    np.testing.assert_array_equal(got, fake_quant)
    np.testing.assert_array_equal((got - nudged_min) / scale, want_codes)
    # Filter ties along the output channels, an input of ones: out = s2 * q + m2.
    got = run_either(which, np.ones((1, 1, 1, 1)), ties.reshape(1, 1, 1, -1), (*unit, lo, hi),
                     table, num_bits=num_bits).reshape(-1)
    np.testing.assert_array_equal(got, fake_quant)


def high_table(rng):
    """A table whose every entry is in [65100, 65535]: any 65976 taps or more sum past 2^32."""
    return rng.integers(65100, 65536, 65536)


# (name, input shape, filter shape, table): ranges [0, 255] for input and filter in float64, so
# the output is the integer sum itself (semantics.md), exact in float64 below 2^53. The fast CPU
# kernel takes its scalar loop (64-bit registers) below 32 output channels per group, and, on a
# processor with AVX-512BW, its permute path (32-bit lanes, safe while taps * 65535 < 2^31) from
# 32 channels per group when taps < 32768.
LARGE_SUM_CASES = [
    # Scalar loop, sums past 2^32: a 32-bit accumulator (signed or not) wraps.
    ("scalar_1x1_past_2^32", (1, 1, 3, 66000), (1, 1, 66000, 3), "high"),
    ("scalar_3x3_past_2^32", (2, 3, 3, 7400), (3, 3, 7400, 2), "high"),
    # Between 2^31 and 2^32: a signed 32-bit accumulator wraps.
    ("scalar_past_2^31", (1, 1, 2, 40000), (1, 1, 40000, 2), "max"),
    # Permute path at its limit: 32767 taps of 65535 sum to 2^31 - 98302, still exact in int32
    # lanes; two groups of 32 channels.
    ("permute_32767_taps", (1, 1, 3, 2 * 32767), (1, 1, 32767, 64), "max"),
    # 32768 taps: the scalar loop (the permute path would still be exact: 2^31 - 32768).
    ("channels64_32768_taps", (1, 1, 3, 32768), (1, 1, 32768, 64), "max"),
    # 32769 taps of 65535 pass 2^31: int32 lanes would wrap if the permute path took them.
    ("channels64_32769_taps_past_2^31", (1, 1, 3, 32769), (1, 1, 32769, 64), "max"),
    # 64 channels past 2^32: wraps 32-bit lanes even read as unsigned, and a 32-bit accumulator.
    ("channels64_past_2^32", (1, 1, 3, 66000), (1, 1, 66000, 64), "high"),
]


@pytest.mark.parametrize("name,shape,filter_shape,kind", LARGE_SUM_CASES,
                         ids=[c[0] for c in LARGE_SUM_CASES])
def test_integer_sums_past_2_31_and_2_32_are_exact(name, shape, filter_shape, kind, tmp_path):
    rng = np.random.default_rng(sum(map(ord, name)))
    table = high_table(rng) if kind == "high" else np.full(65536, 65535)
    # Codes near the top, so that the products differ per channel.
    x = rng.integers(192, 256, shape).astype(np.float64)
    f = rng.integers(192, 256, filter_shape).astype(np.float64)
    kh, kw, cg, cout = filter_shape
    taps = kh * kw * cg
    groups = shape[-1] // cg
    per_group = cout // groups
    # The reference sums in int64: one output pixel at a time (1x1 filters, or VALID 3x3 on 3x3).
    xi, fi = x.astype(np.int64), f.astype(np.int64)
    lut = table.astype(np.int64)
    want = np.zeros(shape[:1] + (1 if kh > 1 else shape[1], 1 if kw > 1 else shape[2], cout),
                    np.int64)
    for n, oh, ow in np.ndindex(*want.shape[:3]):
        patch = xi[n, oh:oh + kh, ow:ow + kw].reshape(kh * kw, groups, cg)
        for g in range(groups):
            a = patch[:, g].reshape(-1)
            w = fi[..., g * per_group:(g + 1) * per_group].reshape(taps, per_group)
            want[n, oh, ow, g * per_group:(g + 1) * per_group] = lut[(a[:, None] << 8) | w].sum(0)
    if kind == "max":
        assert np.all(want == 65535 * taps)  # the closed form
    if "2^32" in name:
        assert want.min() > 2**32
    elif "2^31" in name:
        assert 2**31 < want.min() and want.max() < 2**32
    else:
        assert want.max() < 2**31
    ranges = (0.0, 255.0, 0.0, 255.0)
    if name.startswith("scalar"):
        path = ref.write_table(tmp_path / "t.bin", table)
        got = run_op(x, f, ranges, path, padding="VALID")
    else:
        got = run_either("table", x, f, ranges, table)
    np.testing.assert_array_equal(got, want.astype(np.float64))


EPS64 = float(np.finfo(np.float64).eps)

# kAccumulatorElementsPerPass (approx_conv_cpu.h): the CPU op sums and dequantizes the output in
# passes of 2^18 / out_depth pixels.
ACCUMULATORS_PER_PASS = 2**18

# (input shape NHWC, filter shape, padding, data_format): out_depth 64 and 128 with >= 32 channels
# per group (the AVX-512 permute path), one with 16 per group (scalar loop); 2 to 4 passes, the last
# one short in two cases.
WIDE_CASES = [
    ((2, 64, 64, 3), (3, 3, 3, 64), "SAME", "NHWC"),         # 8192 pixels, passes of 4096
    ((2, 66, 66, 4), (3, 3, 2, 128), "VALID", "NCHW"),       # 2 groups of 64, passes of 2048
    ((3, 37, 41, 5), (1, 3, 5, 128), "SAME", "NHWC"),        # 4551 pixels: 3 passes, last short
    ((3, 30, 47, 8), (3, 3, 2, 64), "SAME", "NCHW"),         # 4 groups of 16: scalar loop
]


@pytest.mark.parametrize("shape,filter_shape,padding,data_format", WIDE_CASES,
                         ids=[f"cout{c[1][3]}-{c[3]}-{c[0][0]}x{c[0][1]}x{c[0][2]}" for c in WIDE_CASES])
def test_many_output_channels_over_several_passes_match_the_reference(
        shape, filter_shape, padding, data_format, tmp_path):
    """Every output of a wide layer whose output takes several accumulator passes.

    float64 with random ranges (nonzero nudged minimums, so all four terms of the epilogue count):
    the op and the model compute the same integers and then out = s1*s2*acc + s1*m2*sa + s2*m1*sw
    + K*m1*m2 from the same float64 values. Evaluated in any order, each product rounds at most
    twice and the sum three times, so the two agree within 5 * eps64 * (sum of |terms|); the bound
    below is 8 * eps64 * that sum (in practice they are bit-identical). A pass that wrote its
    outputs at the wrong pixels, or dropped a term, is off by a whole output value.
    """
    rng = np.random.default_rng(filter_shape[3] + shape[1])
    table = rng.integers(0, 65536, 65536)
    path = ref.write_table(tmp_path / "t.bin", table)
    ranges = (-0.75, 1.5, -0.5, 0.25)
    x = rng.uniform(-1, 2, shape)
    f = rng.normal(0, 0.3, filter_shape)
    got = run_op(x, f, ranges, path, padding=padding, data_format=data_format)
    cout = filter_shape[3]
    pixels = got.shape[0] * got.shape[1] * got.shape[2]
    assert got.shape[-1] == cout and pixels > ACCUMULATORS_PER_PASS // cout  # 2 passes or more
    s1, m1, zp1 = ref.quant_params(*ranges[:2], 8)
    s2, m2, _ = ref.quant_params(*ranges[2:], 8)
    assert m1 != 0 and m2 != 0
    acc, sa, sw, taps = ref.conv_sums(ref.codes(x, *ranges[:2], 8), ref.codes(f, *ranges[2:], 8),
                                      table, (1, 1), padding, (1, 1), zp1)
    sa = np.repeat(sa, cout // sa.shape[-1], axis=-1)
    s1, m1, s2, m2 = (np.float64(v) for v in (s1, m1, s2, m2))
    terms = (s1 * s2 * acc, s1 * m2 * sa, s2 * m1 * sw, np.float64(taps) * m1 * m2)
    want = terms[0] + terms[1] + terms[2] + terms[3]
    bound = 8 * EPS64 * sum(np.abs(t) for t in terms)
    np.testing.assert_array_less(np.abs(got - want), bound + np.finfo(np.float64).tiny)
    assert np.ptp(want) > 1  # the outputs vary: a misplaced pass cannot go unnoticed


@pytest.mark.parametrize("op", ["file", "table"])
def test_wrong_dtypes_are_type_errors_naming_the_argument(op):
    """An int32 input (a Python list of ints, say) used to fail deep in TensorFlow's op machinery."""
    call = {
        "file": lambda x, w, lo: ta.approx_conv2d_with_min_max_vars(
            x, w, lo, 1.0, 0.0, 1.0, [1, 1, 1, 1], 8, "", "VALID"),
        "table": lambda x, w, lo: ta.approx_conv2d_with_table(
            x, w, lo, 1.0, 0.0, 1.0, "", [1, 1, 1, 1], "VALID"),
    }[op]
    ones = tf.ones([1, 1, 1, 1])
    with pytest.raises(TypeError, match="input must be a half, bfloat16, float32 or float64 tensor, got int32"):
        call([[[[1]]]], ones, 0.0)
    with pytest.raises(TypeError, match="filter must have the input's dtype float32, got float64"):
        call(ones, tf.ones([1, 1, 1, 1], tf.float64), 0.0)
    with pytest.raises(TypeError, match="input_min must be a half, bfloat16, float32 or float64 tensor, got int32"):
        call(ones, ones, tf.constant(0))
    # Python numbers and NumPy values take the input's dtype.
    assert call(ones, np.ones([1, 1, 1, 1]), np.float64(0.0)).dtype == tf.float32


@pytest.mark.parametrize("dtype", [tf.float32, tf.uint16, tf.int16])
def test_a_table_changed_in_place_is_used_at_the_next_call(dtype):
    # The kernel keeps what it prepared from a table (PreparedTable) while the table's bytes stay the same:
    # a variable assigned in place (same buffer, new bytes), back and forth, and one row changed, must
    # each give that table's outputs, never the kept table's.
    rng = np.random.default_rng(5)
    x = rng.uniform(0, 2, (2, 6, 6, 3)).astype(np.float32)
    f = rng.normal(0, 0.5, (3, 3, 3, 4)).astype(np.float32)
    signed = dtype == tf.int16
    base = np.outer(np.arange(256) - 128 * signed, np.arange(256) - 128 * signed).reshape(-1)
    tables = [base, (base // 3) * 2, base.copy()]
    tables[2][:256] += 1  # one row: activation code 0, which the padded taps read
    np_dtype = {tf.float32: np.float32, tf.uint16: np.uint16, tf.int16: np.int16}[dtype]
    scheme = "symmetric" if signed else "asymmetric"
    with tf.device("/CPU:0"):
        lut = tf.Variable(tables[0].astype(np_dtype))

    @tf.function
    def call():
        return ta.approx_conv2d_with_table(x, f, 0.0, 2.0, -1.0, 1.0, table=lut, strides=[1, 1, 1, 1],
                                           padding="SAME", input_scheme=scheme, filter_scheme=scheme)

    def fresh(table):  # a new kernel's answer for this table
        return ta.approx_conv2d_with_table(x, f, 0.0, 2.0, -1.0, 1.0, table=tf.constant(table.astype(np_dtype)),
                                           strides=[1, 1, 1, 1], padding="SAME", input_scheme=scheme,
                                           filter_scheme=scheme).numpy()

    outputs = []
    for i in (0, 1, 0, 2, 0):
        lut.assign(tables[i].astype(np_dtype))
        got = call().numpy()
        np.testing.assert_array_equal(got, fresh(tables[i]))
        outputs.append(got)
    assert not np.array_equal(outputs[0], outputs[1]) and not np.array_equal(outputs[0], outputs[3])
