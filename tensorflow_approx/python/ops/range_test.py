"""range_with_zero (ApproxRangeWithZero), the Keras layers' batch ranges, against a NumPy model: special
values (NaN of either sign, infinities, -0, subnormals), per channel, empty tensors, shards of TensorFlow's
CPU threads, and the bad arguments."""

import numpy as np
import pytest
import tensorflow as tf

import tensorflow_approx as ta


def model(x, per_channel):
    """min and max of x widened to hold 0 (+0 for a zero), NaN both where x holds a NaN; over all axes
    but the last with per_channel."""
    x = np.asarray(x, np.float32)
    flat = x.reshape(-1, x.shape[-1]) if per_channel else x.reshape(-1, 1)
    padded = np.concatenate([flat, np.zeros((1, flat.shape[1]), np.float32)])  # widened to hold 0
    # np.min / np.max are NaN where a NaN is; + 0 makes a zero +0.
    lo, hi = padded.min(axis=0) + np.float32(0), padded.max(axis=0) + np.float32(0)
    return (lo, hi) if per_channel else (lo[0], hi[0])


def same_bits(got, want):
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    # Any NaN is a NaN (the op writes the quiet NaN); everything else bit for bit, the sign of zero too.
    return got.shape == want.shape and np.array_equal(np.isnan(got), np.isnan(want)) and np.array_equal(
        got[~np.isnan(got)].view(np.uint32), want[~np.isnan(want)].view(np.uint32))


def special_values(rng, shape):
    x = rng.normal(0, 3, shape).astype(np.float32)
    flat = x.reshape(-1)
    picks = rng.choice(flat.size, size=min(flat.size, 6), replace=False)
    specials = np.array([-0.0, 0.0, np.inf, -np.inf, 1e-45, -1e-45], np.float32)
    flat[picks] = specials[: len(picks)]
    return x


@pytest.mark.parametrize("shape", [(7,), (3, 5, 4), (2, 9, 9, 16), (1000, 37), (3, 3, 64, 64)])
@pytest.mark.parametrize("per_channel", [False, True])
def test_matches_the_model(shape, per_channel):
    rng = np.random.default_rng(sum(shape) + per_channel)
    x = special_values(rng, shape)
    lo, hi = ta.range_with_zero(tf.constant(x), per_channel=per_channel)
    want_lo, want_hi = model(x, per_channel)
    assert same_bits(lo, want_lo) and same_bits(hi, want_hi)
    # The values the layers computed before with four TensorFlow ops, whose CPU reductions flush
    # subnormals to zero (range_with_zero takes every value as it is).
    axis = tuple(range(x.ndim - 1)) if per_channel else None
    flushed = np.where(np.abs(x) < np.finfo(np.float32).tiny, np.float32(0), x)
    lo, hi = ta.range_with_zero(tf.constant(flushed), per_channel=per_channel)
    np.testing.assert_array_equal(lo, tf.minimum(tf.reduce_min(flushed, axis=axis), 0.0))
    np.testing.assert_array_equal(hi, tf.maximum(tf.reduce_max(flushed, axis=axis), 0.0))


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_a_nan_of_either_sign_makes_both_sides_nan(sign):
    x = np.linspace(-2, 3, 4000, dtype=np.float32).reshape(100, 40)
    x[57, 3] = np.float32(sign) * np.float32(np.nan)
    lo, hi = ta.range_with_zero(tf.constant(x))
    assert np.isnan(lo) and np.isnan(hi)
    lo, hi = ta.range_with_zero(tf.constant(x), per_channel=True)
    assert np.isnan(lo[3]) and np.isnan(hi[3])
    assert not np.isnan(np.delete(lo.numpy(), 3)).any() and not np.isnan(np.delete(hi.numpy(), 3)).any()


def test_signs_and_zeros():
    for values, want in (([-0.0], (0.0, 0.0)), ([2.0, 3.0], (0.0, 3.0)), ([-2.0, -3.0], (-3.0, 0.0)),
                         ([np.inf], (0.0, np.inf)), ([-np.inf, 1.0], (-np.inf, 1.0))):
        lo, hi = ta.range_with_zero(tf.constant(values, tf.float32))
        assert same_bits(lo, np.float32(want[0])) and same_bits(hi, np.float32(want[1])), values


def test_empty_tensors():
    lo, hi = ta.range_with_zero(tf.zeros([0, 3], tf.float32))
    assert same_bits(lo, np.float32(0)) and same_bits(hi, np.float32(0))
    lo, hi = ta.range_with_zero(tf.zeros([0, 3], tf.float32), per_channel=True)
    assert same_bits(lo, np.zeros(3, np.float32)) and same_bits(hi, np.zeros(3, np.float32))
    lo, hi = ta.range_with_zero(tf.zeros([4, 0], tf.float32), per_channel=True)
    assert lo.shape == (0,) and hi.shape == (0,)


def test_large_tensor_split_over_threads():
    # Large enough for TensorFlow's CPU threads to take shards; the extremes sit in different shards.
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, (64, 32, 32, 16)).astype(np.float32)
    x[0, 0, 0, 0], x[-1, -1, -1, -1], x[31, 7, 9, 5] = -7.5, 9.25, -8.0
    lo, hi = ta.range_with_zero(tf.constant(x))
    assert float(lo) == -8.0 and float(hi) == 9.25
    lo, hi = ta.range_with_zero(tf.constant(x), per_channel=True)
    assert same_bits(lo, model(x, True)[0]) and same_bits(hi, model(x, True)[1])


def test_in_a_graph_and_no_gradient():
    x = tf.Variable(np.array([[-1.0, 2.0], [3.0, -4.0]], np.float32))

    @tf.function
    def f():
        with tf.GradientTape() as tape:
            lo, hi = ta.range_with_zero(x, per_channel=True)
            y = tf.reduce_sum(lo + hi)
        return lo, hi, tape.gradient(y, x)

    lo, hi, grad = f()
    np.testing.assert_array_equal(lo, [-1.0, -4.0])
    np.testing.assert_array_equal(hi, [3.0, 2.0])
    assert grad is None


def test_bad_arguments():
    with pytest.raises(TypeError, match="x must be float32"):
        ta.range_with_zero(tf.zeros([3], tf.float64))
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError), match="at least|rank"):
        ta.range_with_zero(tf.constant(1.0), per_channel=True)
