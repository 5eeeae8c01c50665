"""The table op under the quantization schemes, against the NumPy model (reference.approx_conv_scheme).

Signed codes (symmetric ranges), signed products (int16 tables), mixed signedness and a code width per
operand, per tensor; the model computes the same integer sums, so the float64 outputs agree to the
rounding of the last formula's few terms.
"""

import numpy as np
import pytest
import tensorflow as tf

import tensorflow_approx as ta
from tensorflow_approx.testing import reference as ref


def run_op(x, f, in_range, f_range, products, bits, schemes, **kwargs):
    table = products.astype(np.int16 if products.min() < 0 else np.uint16)
    return ta.approx_conv2d_with_table(
        tf.constant(x, tf.float64), tf.constant(f, tf.float64), *in_range, *f_range, table,
        [1, 1, 1, 1], "SAME", num_bits=bits[0], filter_num_bits=bits[1], input_scheme=schemes[0],
        filter_scheme=schemes[1], **kwargs).numpy()


CASES = [
    # (symmetric activations, symmetric weights), bits, products
    ((False, True), (8, 8), "exact"),
    ((False, True), (8, 4), "exact"),
    ((True, True), (8, 8), "exact"),
    ((True, True), (6, 8), "random"),
    ((False, True), (8, 8), "random"),
    ((False, False), (8, 5), "random"),
    ((True, False), (7, 8), "random"),
]


@pytest.mark.parametrize("symmetric, bits, kind", CASES)
def test_schemes_match_the_numpy_model(symmetric, bits, kind):
    rng = np.random.default_rng(sum(map(ord, f"{symmetric}{bits}{kind}")))
    x = rng.normal(0.3, 1.0, (2, 7, 6, 3)).astype(np.float32)
    f = rng.normal(0, 0.4, (3, 3, 3, 4)).astype(np.float32)
    in_range, f_range = (-1.7, 2.9), (float(f.min()), float(f.max()))
    signed_products = any(symmetric)
    if kind == "exact":
        products = ref.byte_products(np.multiply, *symmetric)
    else:
        lo, hi = (-32768, 32768) if signed_products else (0, 65536)
        products = rng.integers(lo, hi, 65536).astype(np.int64)
    got = run_op(x, f, in_range, f_range, products, bits, ["symmetric" if s else "asymmetric" for s in symmetric])
    want = ref.approx_conv_scheme(x, f, in_range, f_range, products, bits, symmetric)
    # The same integer sums; the op's four-term float64 formula and the model's factored one round
    # differently by a few ulps of the terms' magnitudes.
    terms = np.abs(want).max() + 1.0
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * terms * 2**16)
    if kind == "exact":  # and then the float conv of the dequantized operands
        codes_x, sx, zx = ref.scheme_codes(x, *in_range, bits[0], symmetric[0])
        codes_f, sf, zf = ref.scheme_codes(f, *f_range, bits[1], symmetric[1])
        conv = tf.nn.conv2d((codes_x - zx) * np.float64(sx), (codes_f - zf) * np.float64(sf), 1, "SAME").numpy()
        np.testing.assert_allclose(got, conv, rtol=0, atol=1e-12 * terms * 2**16)


@pytest.mark.parametrize("schemes, bits, per_channel", [
    (("asymmetric", "symmetric_narrow"), (8, 8), False),
    (("symmetric_narrow", "symmetric_narrow"), (8, 4), True),
    (("symmetric_narrow", "symmetric"), (6, 8), False),
])
def test_narrow_range_matches_the_numpy_model(schemes, bits, per_channel):
    rng = np.random.default_rng(bits[0] * 10 + bits[1])
    x = rng.normal(0.3, 1.0, (2, 7, 6, 3)).astype(np.float32)
    f = rng.normal(0, 0.4, (3, 3, 3, 4)).astype(np.float32)
    # Ranges narrower than the data, so that values fall below the lowest code and are clamped there.
    in_range = (-1.0, 1.5)
    f_range = (f.min(axis=(0, 1, 2)) * 0.7, f.max(axis=(0, 1, 2)) * 0.7) if per_channel else (-0.5, 0.5)
    products = rng.integers(-32768, 32768, 65536).astype(np.int64)
    symmetric = tuple(s != "asymmetric" for s in schemes)
    narrow = tuple(s == "symmetric_narrow" for s in schemes)
    got = run_op(x, f, in_range, f_range, products, bits, schemes)
    want = ref.approx_conv_scheme(x, f, in_range, f_range, products, bits, symmetric, narrow)
    terms = np.abs(want).max() + 1.0
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * terms * 2**16)


def test_narrow_range_drops_only_the_lowest_code():
    """A table whose entry is its own activation byte: below the range, "symmetric" gives the code -128
    (byte 128) and "symmetric_narrow" -127 (byte 129); inside it, both give the same codes."""
    x = np.array([-5.0, -1.0, -0.5, 0.0, 0.5, 1.0], np.float32).reshape(1, 1, 6, 1)
    f = np.ones((1, 1, 1, 1), np.float32)
    products = ref.byte_products(lambda a, w: (a & 0xFF) + 0 * w, True, True)
    s = 1.0 / 127
    scaled = {scheme: run_op(x, f, (-1.0, 1.0), (-1.0, 1.0), products, (8, 8), (scheme, "symmetric")).reshape(-1)
              / (s * np.float32(1 / 127)) for scheme in ("symmetric", "symmetric_narrow")}
    np.testing.assert_allclose(scaled["symmetric"], [128, 129, 193, 0, 64, 127], rtol=1e-6)
    np.testing.assert_allclose(scaled["symmetric_narrow"], [129, 129, 193, 0, 64, 127], rtol=1e-6)


def test_narrow_range_table_gradient_equals_symmetric_inside_the_range():
    """Inside the range the two schemes give the same codes, scale and zero point: outputs and table
    gradients equal (a wrong zero point or scale of the narrow quantizer would differ)."""
    rng = np.random.default_rng(5)
    x = tf.constant(rng.uniform(-0.9, 0.9, (1, 5, 5, 2)).astype(np.float32))
    f = tf.constant(rng.uniform(-0.9, 0.9, (3, 3, 2, 3)).astype(np.float32))
    table = tf.constant(rng.integers(-20000, 20000, 65536).astype(np.int16))
    results = {}
    for scheme in ("symmetric", "symmetric_narrow"):
        with tf.GradientTape() as tape:
            tape.watch([x, f])
            y = ta.approx_conv2d_with_table(x, f, -1.0, 1.0, -1.0, 1.0, table, [1, 1, 1, 1], "SAME",
                                            input_scheme=scheme, filter_scheme=scheme, gradient="table")
            loss = tf.reduce_sum(y * y)
        results[scheme] = (y.numpy(), *[g.numpy() for g in tape.gradient(loss, [x, f])])
    for a, b in zip(results["symmetric"], results["symmetric_narrow"]):
        np.testing.assert_array_equal(a, b)
    assert np.abs(results["symmetric"][1]).max() > 0


def test_symmetric_codes_really_are_signed_and_index_by_bytes():
    """A table whose entry is its own activation byte: the output exposes the codes' bytes."""
    x = np.array([-1.0, -0.5, 0.0, 0.5, 1.0], np.float32).reshape(1, 1, 5, 1)
    f = np.ones((1, 1, 1, 1), np.float32)
    products = ref.byte_products(lambda a, w: (a & 0xFF) + 0 * w, True, True)  # = the activation byte
    out = run_op(x, f, (-1.0, 1.0), (-1.0, 1.0), products, (8, 8), ("symmetric", "symmetric"))
    # Codes -127, -63, 0, 64, 127 (scale 1/127; halves round up, as TensorFlow's): bytes 129, 193, 0,
    # 64, 127; the filter's code is 127 (value 1), the output byte * (1/127)^2.
    s = 1.0 / 127
    np.testing.assert_allclose(out.reshape(-1) / (s * np.float32(1 / 127)),
                               [129, 193, 0, 64, 127], rtol=1e-6)


def test_bad_schemes_and_dtypes_fail_clearly():
    x, f = tf.ones([1, 2, 2, 1]), tf.ones([1, 1, 1, 1])
    with pytest.raises(ValueError, match="input_scheme must be one of"):
        ta.approx_conv2d_with_table(x, f, 0.0, 1.0, 0.0, 1.0, "", [1] * 4, "SAME", input_scheme="signed")
    with pytest.raises(tf.errors.InvalidArgumentError, match="filter_num_bits must be -1 or in"):
        ta.approx_conv2d_with_table(x, f, 0.0, 1.0, 0.0, 1.0, "", [1] * 4, "SAME", filter_num_bits=9)
    with pytest.raises(ValueError, match="outside -32768..32767"):
        ta.approx_conv2d_with_table(x, f, 0.0, 1.0, 0.0, 1.0, np.full(65536, -1) * np.arange(65536), [1] * 4,
                                    "SAME")
    with pytest.raises(ValueError, match="weight_quantization must be one of"):
        ta.FakeApproxConv2D(2, 1, weight_quantization="per_row")
    with pytest.raises(ValueError, match="weight_scheme must be None"):
        ta.FakeApproxConv2D(2, 1, weight_scheme="signed")
    with pytest.raises(ValueError, match="weight_bits must be an integer in 2..8"):
        ta.FakeApproxConv2D(2, 1, weight_bits=9)


@pytest.mark.parametrize("symmetric_filter, kind", [(False, "random"), (True, "exact"), (True, "random")])
def test_per_channel_filter_ranges_match_the_numpy_model(symmetric_filter, kind):
    """filter_min/filter_max of shape [out_channels]: each channel its own scale (and zero point)."""
    rng = np.random.default_rng(7 + symmetric_filter)
    x = np.maximum(rng.normal(0.2, 1.0, (2, 6, 5, 3)), 0).astype(np.float32)
    # Channels of very different magnitudes: what per-tensor ranges quantize badly.
    f = (rng.normal(0, 1, (3, 3, 3, 4)) * np.array([0.01, 0.1, 1.0, 10.0])).astype(np.float32)
    lo, hi = f.min(axis=(0, 1, 2)), f.max(axis=(0, 1, 2))
    schemes = ("asymmetric", "symmetric" if symmetric_filter else "asymmetric")
    products = (ref.byte_products(np.multiply, False, symmetric_filter) if kind == "exact"
                else rng.integers(-32768 if symmetric_filter else 0, 32768 if symmetric_filter else 65536,
                                  65536).astype(np.int64))
    got = run_op(x, f, (0.0, float(x.max())), (lo, hi), products, (8, 8), schemes)
    want = ref.approx_conv_scheme(x, f, (0.0, float(x.max())), (lo, hi), products, (8, 8),
                                  (False, symmetric_filter))
    terms = np.abs(want).max() + 1.0
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * terms * 2**16)
    # The same channel ranges given one at a time agree with the per-channel call, channel by channel.
    for co in range(4):
        one = run_op(x, f[..., co:co + 1], (0.0, float(x.max())), (float(lo[co]), float(hi[co])), products,
                     (8, 8), schemes)
        np.testing.assert_array_equal(got[..., co:co + 1], one)


def test_per_channel_ranges_beat_per_tensor_on_unequal_channels():
    """The exact product with per-channel ranges stays close to the float conv where per-tensor loses
    the small channel entirely."""
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 1, (1, 6, 6, 2)).astype(np.float32)
    f = (rng.normal(0, 1, (3, 3, 2, 2)) * np.array([0.001, 1.0])).astype(np.float32)
    exact = ref.byte_products(np.multiply, False, False)
    conv = tf.nn.conv2d(x, f, 1, "SAME").numpy()
    per_tensor = run_op(x, f, (0.0, 1.0), (float(f.min()), float(f.max())), exact, (8, 8), ("asymmetric",) * 2)
    per_channel = run_op(x, f, (0.0, 1.0), (f.min(axis=(0, 1, 2)), f.max(axis=(0, 1, 2))), exact, (8, 8),
                         ("asymmetric",) * 2)
    small = np.abs(conv[..., 0]).max()
    assert np.abs(per_channel[..., 0] - conv[..., 0]).max() < 0.05 * small
    assert np.abs(per_tensor[..., 0] - conv[..., 0]).max() > 0.5 * small


def test_per_channel_range_errors_name_the_argument():
    x, f = tf.ones([1, 3, 3, 2]), tf.ones([1, 1, 2, 3])
    conv = dict(table="", strides=[1] * 4, padding="SAME")
    with pytest.raises(tf.errors.InvalidArgumentError, match="filter_min must be a scalar or a vector of the filter's 3"):
        ta.approx_conv2d_with_table(x, f, 0.0, 1.0, tf.zeros([2]), tf.ones([2]), **conv)
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="filter_min and filter_max must have the same shape"):
        ta.approx_conv2d_with_table(x, f, 0.0, 1.0, tf.zeros([3]), 1.0, **conv)
    with pytest.raises(tf.errors.InvalidArgumentError, match="output channel 1: filter_min must not exceed"):
        ta.approx_conv2d_with_table(x, f, 0.0, 1.0, tf.constant([0.0, 2.0, 0.0]), tf.ones([3]), **conv)
    with pytest.raises(tf.errors.InvalidArgumentError, match="input_min must be a scalar, got"):
        ta.approx_conv2d_with_table(x, f, tf.zeros([3]), tf.ones([3]), 0.0, 1.0, **conv)
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="filter_min must be a scalar|rank 0"):
        ta.approx_conv2d_with_min_max_vars(x, f, 0.0, 1.0, tf.zeros([3]), tf.ones([3]), [1] * 4, 8, "", "SAME")
