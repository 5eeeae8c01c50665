"""Tests of the approximate Keras layers: exactness against keras on fake-quantized values,
gradients, range modes, dtypes, saving, training and errors."""

import os
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import tensorflow_approx as ta
from tensorflow_approx.multipliers.multiplier import TABLE_BYTES
from tensorflow_approx import multipliers as mx
from tensorflow_approx.testing import reference as ref
from tensorflow_approx.testing.reference import exact_table, write_table

EPS32 = float(np.finfo(np.float32).eps)
EPS64 = float(np.finfo(np.float64).eps)
APPROX_KEYS = ("num_bits", "mul_map_file", "range_mode", "ema_decay", "table_in_weights", "weight_bits",
               "weight_quantization", "input_scheme", "weight_scheme", "gradient", "signed_products")


@pytest.fixture(autouse=True)
def _seed_and_policy():
    keras.utils.set_random_seed(1234)
    yield
    keras.config.set_dtype_policy("float32")


def truncated_table(path, bits):
    """An approximate multiplier of our own: both operands lose their `bits` low bits."""
    a, w = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    mask = 255 & ~((1 << bits) - 1)
    return write_table(path, (a & mask) * (w & mask))


def range_with_zero(values):
    values = np.asarray(values, np.float32)
    return min(float(values.min()), 0.0), max(float(values.max()), 0.0)


def fake_quant(values, lo, hi, num_bits):
    return tf.quantization.fake_quant_with_min_max_vars(
        tf.cast(values, tf.float32), lo, hi, num_bits=num_bits
    )


def channels_first(layer):
    return getattr(layer, "data_format", None) == "channels_first"


def accurate_twin(layer):
    """The keras layer of the same configuration as an approximate layer, built, weights copied.
    A channels-first layer's twin is channels-last (call it through `twin_call`): TensorFlow's CPU
    Conv2D takes NCHW only where oneDNN is on, which TensorFlow enables only on processors with
    AVX-512 VNNI, BF16 or AMX (on a Zen 3 every channels-first twin failed)."""
    base = {
        ta.FakeApproxConv2D: keras.layers.Conv2D,
        ta.FakeApproxDepthwiseConv2D: keras.layers.DepthwiseConv2D,
        ta.FakeApproxDense: keras.layers.Dense,
    }[type(layer)]
    config = {k: v for k, v in layer.get_config().items() if k not in APPROX_KEYS}
    build_config = layer.get_build_config()
    if channels_first(layer):
        config["data_format"] = "channels_last"
        shape = list(build_config["input_shape"])
        build_config = {**build_config, "input_shape": [shape[0], *shape[2:], shape[1]]}
    twin = base.from_config(config)
    twin.build_from_config(build_config)
    twin.set_weights(layer.get_weights()[: len(twin.weights)])
    return twin


def twin_call(layer, twin, x):
    """twin (accurate_twin(layer)) on x in layer's data format."""
    if not channels_first(layer):
        return twin(x)
    return tf.transpose(twin(tf.transpose(x, [0, 2, 3, 1])), [0, 3, 1, 2])


def reference(layer, x):
    """The accurate keras layer applied to fake-quantized input and kernel (batch ranges)."""
    twin = accurate_twin(layer)
    kernel = twin.kernel.numpy()
    twin.kernel.assign(fake_quant(kernel, *range_with_zero(kernel), layer.num_bits))
    return twin_call(layer, twin, fake_quant(x, *range_with_zero(x), layer.num_bits)), twin


def taps(layer):
    """K: products summed per output element (depthwise: one input channel per output)."""
    kernel = layer.kernel.shape
    if isinstance(layer, ta.FakeApproxDepthwiseConv2D):
        return int(kernel[0] * kernel[1])
    return int(np.prod(kernel[:-1]))


def exact_bound(layer, x, op_eps=EPS32):
    """Largest |approximate layer - reference| possible with the exact table.

    Both compute sum over K taps of x^ * w^ (fake-quantized values), which with ranges of widths
    Rx, Rk containing 0 are bounded by |x^| <= Rx, |w^| <= Rk. The reference sums K float32
    products: error <= K * eps * K * Rx * Rk (the dot product bound gamma_K * sum|x^ w^|). The op
    evaluates s1*s2*acc + s1*m2*sa + s2*m1*sw + K*m1*m2, four terms each bounded by K * Rx * Rk,
    with about 8 roundings each: <= 32 * eps * K * Rx * Rk. Its x^ = s1*q + m1 is not rounded to
    float32 as fake quant's is: 2 * eps32 * K * Rx * Rk more. (Bias add and ReLU are applied to
    both alike and do not grow the difference.)
    """
    k = layer.kernel.numpy()
    x_lo, x_hi = range_with_zero(x)
    k_lo, k_hi = range_with_zero(k)
    K = taps(layer)
    return K * (x_hi - x_lo) * (k_hi - k_lo) * (2 * EPS32 + (K + 32) * op_eps)


def random_conv(rng):
    """A random FakeApproxConv2D configuration and an input for it."""
    channels_first = rng.random() < 0.25
    groups = int(rng.choice([1, 2]))
    cin = groups * int(rng.integers(1, 3))
    stride = int(rng.integers(1, 3))
    dilation = 1 if stride > 1 else int(rng.integers(1, 3))
    layer = ta.FakeApproxConv2D(
        filters=groups * int(rng.integers(1, 4)),
        kernel_size=(int(rng.integers(1, 4)), int(rng.integers(1, 4))),
        strides=stride,
        dilation_rate=dilation,
        groups=groups,
        padding=str(rng.choice(["valid", "same"])),
        data_format="channels_first" if channels_first else "channels_last",
        use_bias=bool(rng.random() < 0.5),
        bias_initializer="random_normal",
        activation=str(rng.choice(["linear", "relu"])),
        num_bits=int(rng.choice([8, 8, 5])),
    )
    hw = (int(rng.integers(6, 10)), int(rng.integers(6, 10)))
    shape = (2, cin, *hw) if channels_first else (2, *hw, cin)
    x = random_input(rng, shape)
    return layer, x


def random_input(rng, shape):
    """Signed data, non-negative data (ReLU-like) or data away from 0 (range widened to 0)."""
    kind = rng.integers(3)
    x = rng.normal(size=shape)
    if kind == 1:
        x = np.maximum(x, 0)
    elif kind == 2:
        x = 2.0 + np.abs(x)
    return x.astype(np.float32)


@pytest.mark.parametrize("seed", range(8))
def test_conv2d_exact_table_is_keras_conv2d_on_fake_quantized_values(seed):
    layer, x = random_conv(np.random.default_rng(seed))
    y = layer(x).numpy()
    expected, _ = reference(layer, x)
    assert y.shape == expected.shape
    np.testing.assert_allclose(y, expected.numpy(), rtol=0, atol=exact_bound(layer, x))


@pytest.mark.parametrize("seed", range(4))
def test_depthwise_exact_table_is_keras_depthwise_on_fake_quantized_values(seed):
    rng = np.random.default_rng(100 + seed)
    stride = int(rng.integers(1, 3))
    layer = ta.FakeApproxDepthwiseConv2D(
        kernel_size=int(rng.integers(1, 4)),
        strides=stride,
        dilation_rate=1 if stride > 1 else int(rng.integers(1, 3)),
        depth_multiplier=int(rng.integers(1, 4)),
        padding=str(rng.choice(["valid", "same"])),
        bias_initializer="random_normal",
        activation="relu",
    )
    x = random_input(rng, (2, 8, 7, int(rng.integers(1, 5))))
    y = layer(x).numpy()
    expected, _ = reference(layer, x)
    np.testing.assert_allclose(y, expected.numpy(), rtol=0, atol=exact_bound(layer, x))


@pytest.mark.parametrize("shape", [(5, 12), (2, 3, 12), (2, 2, 2, 12)])
def test_dense_exact_table_is_keras_dense_on_fake_quantized_values(shape):
    rng = np.random.default_rng(len(shape))
    layer = ta.FakeApproxDense(6, bias_initializer="random_normal", activation="relu")
    x = random_input(rng, shape)
    y = layer(x).numpy()
    expected, _ = reference(layer, x)
    assert y.shape == shape[:-1] + (6,)
    np.testing.assert_allclose(y, expected.numpy(), rtol=0, atol=exact_bound(layer, x))


def test_float64_policy_runs_the_op_in_float64():
    keras.config.set_dtype_policy("float64")
    layer = ta.FakeApproxConv2D(4, 3, bias_initializer="random_normal")
    x = np.random.default_rng(0).normal(size=(2, 6, 6, 3))
    y = layer(x)
    expected, _ = reference(layer, x)
    assert y.dtype == tf.float64
    # Much tighter than float32's bound: only the float32 rounding of x^ by fake quant remains.
    bound = exact_bound(layer, x, op_eps=EPS64)
    assert bound < exact_bound(layer, x) / 10
    np.testing.assert_allclose(y.numpy(), expected.numpy(), rtol=0, atol=bound)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_policies(policy):
    """Under a mixed policy the layer is the float32 layer on half-precision operands, rounded.

    Keras hands the layer its input and kernel cast to the half type; from there the layer works in
    float32 (ranges, codes, op) and casts the op's result back before adding the bias in half
    precision. So the float32 layer, given the same half-rounded input and kernel, computes the same
    codes and the same float32 op result `a`; the mixed layer returns fl(fl(a) + fl(b)) for the
    float32 bias b. Each rounding to the half type errs by at most u = half an ulp (2^-11 float16,
    2^-8 bfloat16) relative, plus 2^-25 absolute in float16's subnormal range, so
    |y - (a + b)| <= u * (|fl(a) + fl(b)|) + u * (|a| + |b|) <= u * (|a + b| + 2 (|a| + |b|))
    (+ 3 subnormal half-steps). No code-step term: the quantization sees the same operands.
    """
    half = tf.float16 if policy == "mixed_float16" else tf.bfloat16
    u = 2.0**-11 if half == tf.float16 else 2.0**-8
    tiny = 3 * 2.0**-25 if half == tf.float16 else 0.0
    x = np.random.default_rng(1).normal(size=(2, 6, 6, 3)).astype(np.float32)
    exact32 = ta.FakeApproxConv2D(4, 3, bias_initializer="random_normal")
    y32 = exact32(x).numpy()
    kernel, bias = exact32.get_weights()[:2]
    keras.config.set_dtype_policy(policy)
    layer = ta.FakeApproxConv2D(4, 3, bias_initializer="random_normal")
    layer.build(x.shape)
    layer.set_weights(exact32.get_weights())
    y = layer(x)
    assert y.dtype == policy.split("_")[1]
    y = y.numpy().astype(np.float64)

    def rounded(v):
        return tf.cast(tf.cast(v, half), tf.float32).numpy()

    keras.config.set_dtype_policy("float32")
    no_bias = ta.FakeApproxConv2D(4, 3, use_bias=False)
    no_bias.build(x.shape)
    no_bias.kernel.assign(rounded(kernel))
    a = no_bias(rounded(x)).numpy().astype(np.float64)
    b = bias.astype(np.float64)
    bound = u * (np.abs(a + b) + 2 * (np.abs(a) + np.abs(b))) + tiny
    assert np.all(np.abs(y - (a + b)) <= bound)
    # A real bound: a few half-type ulps of the largest output (0.4% for float16), where a bound of
    # one code step per operand per tap (2 K Rx Rk / 255) would be as large as the outputs.
    assert bound.max() < 8 * u * np.abs(y32).max()
    # And the half-rounded operands do matter: some codes moved, so the unrounded float32 layer is
    # not within that bound (the comparison above is against the right reference).
    assert np.any(np.abs(y - y32) > bound)


def test_range_that_excludes_zero_is_widened_not_collapsed():
    """Data in [2, 3]: TF fake quant on the raw range would map every value to one code."""
    layer = ta.FakeApproxDense(3, use_bias=False)
    x = np.random.default_rng(2).uniform(2.0, 3.0, size=(16, 8)).astype(np.float32)
    y = layer(x).numpy()
    exact = x @ layer.kernel.numpy()
    # Widened to [0, 3]: step 3/255 for x (error <= 3/510) and Rk/255 for w, over 8 taps.
    k = layer.kernel.numpy()
    bound = 8 * (3 / 510 * np.abs(k).max() + 3 * np.ptp(range_with_zero(k)) / 510 + 1e-3)
    np.testing.assert_allclose(y, exact, rtol=0, atol=bound)
    assert np.ptp(y, axis=0).min() > 0.1  # outputs still vary with the input


def test_table_file_with_exact_products_equals_empty_table(tmp_path):
    x = np.random.default_rng(3).normal(size=(2, 7, 7, 3)).astype(np.float32)
    exact = ta.FakeApproxConv2D(5, 3)
    y_exact = exact(x).numpy()
    from_file = ta.FakeApproxConv2D(
        5, 3, mul_map_file=write_table(tmp_path / "exact.bin", exact_table())
    )
    from_file.build(x.shape)
    from_file.copy_accurate_weights(exact)
    np.testing.assert_array_equal(from_file(x).numpy(), y_exact)
    coarse = ta.FakeApproxConv2D(5, 3, mul_map_file=truncated_table(tmp_path / "t4.bin", 4))
    coarse.build(x.shape)
    coarse.copy_accurate_weights(exact)
    assert np.abs(coarse(x).numpy() - y_exact).max() > 0.05


def grads(fn, x, variable):
    x = tf.constant(x)
    upstream = tf.constant(np.random.default_rng(7).normal(size=fn(x).shape), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = fn(x)
    return tape.gradient(y, [x, variable], output_gradients=upstream)


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: ta.FakeApproxConv2D(4, 3, padding="same", activation="relu"), (2, 6, 6, 3)),
        (lambda: ta.FakeApproxConv2D(4, 3, groups=2, dilation_rate=2), (2, 8, 8, 4)),
        (lambda: ta.FakeApproxDepthwiseConv2D(3, depth_multiplier=2), (2, 6, 6, 3)),
        (lambda: ta.FakeApproxDense(5, activation="tanh"), (4, 3, 6)),
    ],
)
def test_gradients_are_the_accurate_layers_on_fake_quantized_values(make, shape):
    layer = make()
    x = np.random.default_rng(4).normal(size=shape).astype(np.float32)
    layer.build(shape)
    # Training calls fake-quantize the operands; their gradients clip outside the ranges.
    gx, gk = grads(lambda v: layer(v, training=True), x, layer.trainable_variables[0])
    # Inference calls pass raw operands to the op, which quantizes them to the same codes.
    np.testing.assert_array_equal(layer(x).numpy(), layer(x, training=True).numpy())

    kernel = tf.constant(layer.kernel.numpy())
    k_lo, k_hi = range_with_zero(kernel)
    x_lo, x_hi = range_with_zero(x)
    twin = accurate_twin(layer)
    twin.kernel.assign(fake_quant(kernel, k_lo, k_hi, 8))
    rx, rk = grads(lambda v: twin_call(layer, twin, fake_quant(v, x_lo, x_hi, 8)), x, twin.kernel)
    # Fake quant's straight-through gradient for the kernel: 1 inside its nudged range, else 0.
    with tf.GradientTape() as tape:
        tape.watch(kernel)
        mask = tape.gradient(fake_quant(kernel, k_lo, k_hi, 8), kernel)
    rk = rk * mask
    for got, want in ((gx, rx), (gk, rk)):
        assert np.all(np.isfinite(got.numpy()))
        # The same float32 products summed in another order (patch or backprop kernels): the
        # reassociation error is below n * eps of the sum of |terms|, n <= 200 here.
        scale = np.abs(want.numpy()).max()
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=200 * EPS32 * scale)
    assert np.abs(gx.numpy()).max() > 0


def test_moving_average_updates_only_in_training():
    layer = ta.FakeApproxDense(
        2, range_mode="moving_average", ema_decay=0.75, bias_initializer="random_normal"
    )
    a = np.array([[-1.0, 2.0]], np.float32)
    b = np.array([[-3.0, 6.0]], np.float32)
    layer(b, training=False)  # never trained: batch range, nothing recorded
    assert layer.range_ready.numpy() == 0
    layer(a, training=True)  # the first update starts the average at the batch range
    assert (layer.input_min.numpy(), layer.input_max.numpy()) == (-1.0, 2.0)
    layer(b, training=False)
    assert (layer.input_min.numpy(), layer.input_max.numpy()) == (-1.0, 2.0)
    layer(b, training=True)
    # 0.75 * -1 + 0.25 * -3 and 0.75 * 2 + 0.25 * 6, both exact in float32.
    assert (layer.input_min.numpy(), layer.input_max.numpy()) == (-1.5, 3.0)
    # Inference quantizes on [-1.5, 3]: b is clamped to it. A batch-mode layer given the clamped
    # batch (whose own range is exactly [-1.5, 3]) computes the same thing.
    batch = ta.FakeApproxDense(2, bias_initializer="random_normal")
    batch.build(b.shape)
    batch.copy_accurate_weights(layer)
    np.testing.assert_array_equal(
        layer(b, training=False).numpy(), batch(np.clip(b, -1.5, 3.0)).numpy()
    )


def test_fixed_mode_needs_calibration_then_uses_the_union_of_batches():
    layer = ta.FakeApproxDense(3, range_mode="fixed")
    model = keras.Sequential([keras.Input((4,)), layer])
    x = np.random.default_rng(5).normal(size=(8, 4)).astype(np.float32)
    with pytest.raises(tf.errors.InvalidArgumentError, match="calibrate"):
        model(x)
    model.compile(loss="mse")
    with pytest.raises(tf.errors.InvalidArgumentError, match="calibrate"):
        model.predict(x, verbose=0)
    ranges = ta.calibrate(model, x, batch_size=3)
    assert ranges[layer.name] == pytest.approx(range_with_zero(x))
    assert (layer.input_min.numpy(), layer.input_max.numpy()) == pytest.approx(range_with_zero(x))
    model.predict(x, verbose=0)  # the function traced before calibration now runs
    # The frozen range clamps new, larger data; batch mode would not.
    big = 10 * x
    frozen = model.predict(big, verbose=0)
    np.testing.assert_allclose(
        frozen, model.predict(np.clip(big, *range_with_zero(x)), verbose=0), atol=1e-5
    )


def asserts_in_inference(model, x):
    graph = tf.function(lambda v: model(v, training=False)).get_concrete_function(tf.constant(x)).graph
    return sum(op.type in ("Assert", "If") for op in graph.get_operations())  # an Assert inside an If


def test_a_recorded_fixed_range_is_not_checked_at_every_call(tmp_path):
    """The per-call check (an Assert, a host op: ~0.16 ms per layer on the GPU) is gone once calibrate()
    recorded the range or a recorded one was loaded; an unrecorded one is still refused."""
    layer = ta.FakeApproxDense(3, range_mode="fixed")
    model = keras.Sequential([keras.Input((4,)), layer])
    x = np.random.default_rng(6).normal(size=(8, 4)).astype(np.float32)
    assert asserts_in_inference(model, x) == 1
    model.save(tmp_path / "raw.keras")
    ta.calibrate(model, x)
    assert asserts_in_inference(model, x) == 0
    want = model(x, training=False).numpy()
    model.save(tmp_path / "calibrated.keras")
    loaded = keras.models.load_model(tmp_path / "calibrated.keras")
    assert asserts_in_inference(loaded, x) == 0
    np.testing.assert_array_equal(loaded(x, training=False).numpy(), want)
    raw = keras.models.load_model(tmp_path / "raw.keras")
    assert asserts_in_inference(raw, x) == 1
    with pytest.raises(tf.errors.InvalidArgumentError, match="calibrate"):
        raw(x, training=False)
    # A calibration that fails part way leaves the range unrecorded, hence checked again.
    with pytest.raises(ValueError, match="no batch"):
        ta.calibrate(model, x[:0])
    assert asserts_in_inference(model, x) == 1


def test_a_recorded_moving_average_range_skips_the_batch_range_in_inference():
    layer = ta.FakeApproxConv2D(3, 3, range_mode="moving_average", ema_decay=0.5)
    model = keras.Sequential([keras.Input((6, 6, 2)), layer])
    x = np.random.default_rng(7).normal(size=(4, 6, 6, 2)).astype(np.float32)

    def range_ops():
        graph = tf.function(lambda v: model(v, training=False)).get_concrete_function(tf.constant(x)).graph
        return sum(op.type == "ApproxRangeWithZero" for op in graph.get_operations())

    assert range_ops() == 2  # the input's (in case no range is recorded) and the kernel's
    ta.calibrate(model, x[:2])
    assert range_ops() == 1
    got = model(x, training=False).numpy()
    layer._range_known = False  # the graph that reduces the batch range and selects the recorded one
    np.testing.assert_array_equal(got, model(x, training=False).numpy())


LAYER_KINDS = {
    "conv2d": (lambda **kw: ta.FakeApproxConv2D(4, 3, padding="same", **kw), (2, 6, 6, 3)),
    "depthwise": (lambda **kw: ta.FakeApproxDepthwiseConv2D(3, depth_multiplier=2, **kw),
                  (2, 6, 6, 3)),
    "dense": (lambda **kw: ta.FakeApproxDense(5, **kw), (4, 6)),
}


def layer_with_state(kind, range_mode, x):
    """A layer of `kind` in `range_mode`, inside a model, its range state set from x when it has one
    (a training call for "moving_average", calibrate for "fixed")."""
    make, shape = LAYER_KINDS[kind]
    layer = make(range_mode=range_mode, ema_decay=0.75, bias_initializer="random_normal")
    model = keras.Sequential([keras.Input(shape[1:]), layer])
    if range_mode == "moving_average":
        layer(x, training=True)
    elif range_mode == "fixed":
        ta.calibrate(model, x)
    if range_mode != "batch":
        assert layer.range_ready.numpy() == 1
        assert (layer.input_min.numpy(), layer.input_max.numpy()) == pytest.approx(
            range_with_zero(x))
    return layer, model


@pytest.mark.parametrize("range_mode", ta.layers.RANGE_MODES)
@pytest.mark.parametrize("kind", LAYER_KINDS)
def test_calls_without_training_argument_leave_the_ranges_alone(kind, range_mode):
    """training=None (a plain call, a model call, a tf.function, predict) is inference: no range
    variable moves, and the output is that of training=False."""
    shape = LAYER_KINDS[kind][1]
    rng = np.random.default_rng(20)
    a = rng.normal(size=shape).astype(np.float32)
    b = 3 * a + 1  # another range: an update would move the state
    layer, model = layer_with_state(kind, range_mode, a)
    before = [v.numpy().copy() for v in layer.weights]
    inference = layer(b, training=False).numpy()
    outputs = [layer(b), model(b), tf.function(lambda v: layer(v))(b), tf.function(model)(b),
               model.predict(b, verbose=0)]
    for variable, value in zip(layer.weights, before, strict=True):
        np.testing.assert_array_equal(variable.numpy(), value, err_msg=variable.path)
    for out in outputs:
        np.testing.assert_array_equal(np.asarray(out), inference)
    if range_mode == "batch":
        assert layer._range_variables() == []


@pytest.mark.parametrize("kind", LAYER_KINDS)
def test_moving_average_layer_never_trained_stays_unready_without_training(kind):
    make, shape = LAYER_KINDS[kind]
    layer = make(range_mode="moving_average")
    x = np.random.default_rng(21).normal(size=shape).astype(np.float32)
    layer(x)
    tf.function(lambda v: layer(v))(x)
    assert (layer.range_ready.numpy(), layer.input_min.numpy(), layer.input_max.numpy()) == (0, 0, 0)


@pytest.mark.parametrize("range_mode", ta.layers.RANGE_MODES)
def test_training_calls_update_only_moving_averages(range_mode):
    """training=True moves a moving average (decay 0.75 toward the batch range); a fixed range stays
    frozen; batch mode has no state."""
    shape = LAYER_KINDS["conv2d"][1]
    rng = np.random.default_rng(22)
    a = rng.normal(size=shape).astype(np.float32)
    b = 3 * a + 1
    layer, _ = layer_with_state("conv2d", range_mode, a)
    before = [v.numpy().copy() for v in layer.weights]
    layer(b, training=True)
    if range_mode == "moving_average":
        lo, hi = (np.float32(v) for v in range_with_zero(a))
        b_lo, b_hi = (np.float32(v) for v in range_with_zero(b))
        want = (np.float32(0.75) * lo + np.float32(0.25) * b_lo,
                np.float32(0.75) * hi + np.float32(0.25) * b_hi)
        got = (layer.input_min.numpy(), layer.input_max.numpy())
        assert got == pytest.approx(want, rel=1e-6) and got[1] > hi
    else:
        for variable, value in zip(layer.weights, before, strict=True):
            np.testing.assert_array_equal(variable.numpy(), value, err_msg=variable.path)


def weight_truncating_multiplier():
    """a * (w with its 2 low bits cleared): truncates the weight operand only, so not symmetric."""
    return mx.from_function(lambda a, w: a * (w >> 2 << 2), name="wtrunc2")


def op_reference(layer, x, table):
    """The layer's output from the NumPy model of the op (tensorflow_approx.testing.reference), with
    the layer's ranges (batch range of x, kernel range, both widened to 0), in float64."""
    kernel = layer.kernel.numpy()
    ranges = (*range_with_zero(x), *range_with_zero(kernel))
    if isinstance(layer, ta.FakeApproxDense):
        images = x.reshape(-1, 1, 1, x.shape[-1])
        out = ref.approx_conv(images, kernel.reshape(1, 1, *kernel.shape), ranges, table,
                              padding="VALID")
        out = out.reshape(*x.shape[:-1], kernel.shape[-1])
    else:
        if isinstance(layer, ta.FakeApproxDepthwiseConv2D):
            kh, kw, c, m = kernel.shape
            kernel = kernel.reshape(kh, kw, 1, c * m)
        out = ref.approx_conv(x, kernel, ranges, table, padding=layer.padding.upper())
    return out, ranges


@pytest.mark.parametrize("kind", LAYER_KINDS)
def test_asymmetric_table_takes_activation_code_as_row(kind):
    """A table that is not symmetric tells LUT[(a << 8) | w] from LUT[(w << 8) | a]: the layer must
    equal the NumPy model with the table as given, not with its transpose.

    float64 policy: the layer and the model compute the same integer sums and then the same float64
    expression s1*s2*acc + s1*m2*sa + s2*m1*sw + K*m1*m2 (semantics.md), each term at most
    K * max|term per tap|; rounding (at most 5 roundings per term, however associated) stays within
    8 * eps64 * K * (|s1 s2| 65535 + (|s1 m2| + |s2 m1|) 255 + |m1 m2|).
    """
    multiplier = weight_truncating_multiplier()
    table = np.asarray(multiplier.lut, np.int64)
    square = table.reshape(256, 256)
    assert np.count_nonzero(square != square.T) > 40000  # truly asymmetric
    keras.config.set_dtype_policy("float64")
    make, shape = LAYER_KINDS[kind]
    layer = make(mul_map_file=multiplier, use_bias=False)
    rng = np.random.default_rng(23)
    x = rng.normal(size=shape)
    y = layer(x).numpy()
    assert y.dtype == np.float64
    want, ranges = op_reference(layer, x, table)
    swapped, _ = op_reference(layer, x, square.T.reshape(-1))
    s1, m1, _ = ref.quant_params(*ranges[:2], 8)
    s2, m2, _ = ref.quant_params(*ranges[2:], 8)
    s1, m1, s2, m2 = (abs(float(v)) for v in (s1, m1, s2, m2))
    bound = 8 * EPS64 * taps(layer) * (s1 * s2 * 65535 + (s1 * m2 + s2 * m1) * 255 + m1 * m2)
    np.testing.assert_allclose(y, want, rtol=0, atol=bound)
    # The test discriminates: the swapped operand order is far outside the bound.
    assert np.abs(swapped - want).max() > 1e6 * bound


def test_calibrate_rejects_models_without_range_state():
    model = keras.Sequential([keras.Input((4,)), ta.FakeApproxDense(3)])
    with pytest.raises(ValueError, match="nothing to calibrate"):
        ta.calibrate(model, np.zeros((2, 4), np.float32))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"range_mode": "per_channel"}, "range_mode must be one of"),
        ({"mul_map_file": "/nonexistent/mul8u.bin"}, "is not a file"),
        ({"num_bits": 1}, "num_bits must be an integer in 2..8"),
        ({"num_bits": 9}, "num_bits must be an integer in 2..8"),
        ({"num_bits": 8.0}, "num_bits must be an integer in 2..8"),
        ({"ema_decay": 1.0}, "ema_decay"),
        ({"lora_rank": 2}, "LoRA"),
    ],
)
@pytest.mark.parametrize(
    "cls, args",
    [
        (ta.FakeApproxConv2D, (4, 3)),
        (ta.FakeApproxDepthwiseConv2D, (3,)),
        (ta.FakeApproxDense, (4,)),
    ],
)
def test_bad_arguments_fail_at_construction(cls, args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(*args, **kwargs)


def test_table_of_wrong_size_fails_naming_the_path(tmp_path):
    path = tmp_path / "short.bin"
    path.write_bytes(b"\0" * (TABLE_BYTES - 2))
    with pytest.raises(ValueError, match=f"short.bin.*{TABLE_BYTES - 2} bytes"):
        ta.FakeApproxConv2D(4, 3, mul_map_file=str(path))
    with pytest.raises(ValueError, match="is not a file"):
        ta.FakeApproxDense(4, mul_map_file=str(tmp_path))  # a directory


def small_model(table, range_mode="batch"):
    inputs = keras.Input((8, 8, 2))
    h = ta.FakeApproxConv2D(4, 3, activation="relu", mul_map_file=table, range_mode=range_mode)(
        inputs
    )
    h = ta.FakeApproxDepthwiseConv2D(
        3, depth_multiplier=2, mul_map_file=table, range_mode=range_mode
    )(h)
    h = keras.layers.Flatten()(h)
    return keras.Model(inputs, ta.FakeApproxDense(3, mul_map_file=table, range_mode=range_mode)(h))


@pytest.mark.parametrize("range_mode", ["batch", "fixed"])
def test_keras_file_round_trip_gives_identical_outputs(tmp_path, range_mode):
    table = truncated_table(tmp_path / "t2.bin", 2)
    model = small_model(table, range_mode)
    x = np.random.default_rng(6).normal(size=(4, 8, 8, 2)).astype(np.float32)
    if range_mode == "fixed":
        ta.calibrate(model, x)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    for layer in loaded.layers[1:]:
        if hasattr(layer, "mul_map_file"):
            assert (layer.mul_map_file, layer.range_mode) == (table, range_mode)
    np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())


def test_accurate_weights_copy_into_approximate_layers():
    """The seed's workflow: accurate layers trained, their weights evaluated approximately."""
    inputs = keras.Input((8, 8, 2))
    h = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    h = keras.layers.DepthwiseConv2D(3, depth_multiplier=2)(h)
    h = keras.layers.Flatten()(h)
    accurate = keras.Model(inputs, keras.layers.Dense(3)(h))
    for mode in ("batch", "moving_average"):
        approx = small_model("", mode)
        for source, target in zip(accurate.layers, approx.layers):
            if source.weights:
                target.copy_accurate_weights(source)
        # Each of the 3 layers adds its table, and 3 range variables unless in batch mode.
        assert len(approx.weights) == len(accurate.weights) + (3 if mode == "batch" else 12)
        for a, b in zip(accurate.trainable_weights, approx.trainable_weights):
            np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_compile_defaults_fit_and_no_xla():
    x = np.random.default_rng(8).normal(size=(32, 8, 8, 2)).astype(np.float32)
    y = (x[:, :4, :, 0].mean(axis=(1, 2)) > x[:, 4:, :, 1].mean(axis=(1, 2))).astype(np.int32)
    model = small_model("")
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    assert all(not layer.supports_jit for layer in ta.python.keras.layers.approx_layers(model))
    first = model.evaluate(x, y, verbose=0)
    history = model.fit(x, y, batch_size=8, epochs=4, verbose=0, shuffle=False)
    assert np.all(np.isfinite(history.history["loss"]))
    assert model.evaluate(x, y, verbose=0) < 0.8 * first
    # XLA is refused for the model (the op has no XLA kernel); an accurate model keeps it.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.compile(loss="mse", jit_compile=True)
    assert model.jit_compile is False
    assert any("jit_compile" in str(w.message) for w in caught)
    accurate = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    accurate.compile(loss="mse", jit_compile=True)
    assert accurate.jit_compile is True


def test_tf_function_and_eager_agree():
    model = small_model("")
    x = np.random.default_rng(9).normal(size=(3, 8, 8, 2)).astype(np.float32)
    np.testing.assert_array_equal(tf.function(model)(x).numpy(), model(x).numpy())


def test_public_names():
    import tensorflow_approx.layers as alias

    assert alias.FakeApproxConv2D is ta.layers.FakeApproxConv2D is ta.FakeApproxConv2D
    assert os.path.basename(ta.layers.__file__) == "layers.py"
