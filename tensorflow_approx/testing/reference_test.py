"""The NumPy model of the quantization schemes (reference.approx_conv_scheme) against float TensorFlow.

With exact products the model is a float convolution of the dequantized operands, so every scheme is
checked against tf.nn.conv2d on TensorFlow's own fake-quantized values (per tensor or per channel);
the default scheme is the ops' contract (reference.approx_conv), bit for bit.
"""

import numpy as np
import pytest
import tensorflow as tf

from tensorflow_approx.testing import reference as ref


def exact_products(signed_a, signed_w):
    """The exact product of every (activation byte, weight byte) pair, int64[65536]."""
    codes = np.arange(256)
    a = codes - 256 * (codes >= 128) if signed_a else codes
    w = codes - 256 * (codes >= 128) if signed_w else codes
    return (a[:, None] * w[None, :]).reshape(-1).astype(np.int64)


def dequantized(x, lo, hi, bits, symmetric, narrow):
    codes, scale, zp = ref.scheme_codes(x, lo, hi, bits, symmetric, narrow)
    return (codes - zp) * scale.astype(np.float64)


@pytest.mark.parametrize("symmetric_a, symmetric_w", [(False, False), (False, True), (True, True)])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("bits", [(8, 8), (8, 4), (6, 8)])
@pytest.mark.parametrize("narrow", [False, True])
def test_exact_products_give_the_float_conv_of_dequantized_operands(symmetric_a, symmetric_w, per_channel,
                                                                    bits, narrow):
    rng = np.random.default_rng(sum(map(ord, f"{symmetric_a}{symmetric_w}{per_channel}{bits}{narrow}")))
    x = rng.normal(0.5, 1.0, (2, 7, 6, 4)).astype(np.float32)
    f = rng.normal(0, 0.3, (3, 3, 4, 5)).astype(np.float32)
    in_range = (-1.5, 2.5)
    if per_channel:
        f_range = (f.min(axis=(0, 1, 2)), f.max(axis=(0, 1, 2)))
    else:
        f_range = (float(f.min()), float(f.max()))
    got = ref.approx_conv_scheme(x, f, in_range, f_range, exact_products(symmetric_a, symmetric_w), bits,
                                 (symmetric_a, symmetric_w), (False, narrow))
    xd = dequantized(x, *in_range, bits[0], symmetric_a, False)
    fd = dequantized(f, *f_range, bits[1], symmetric_w, narrow)
    want = tf.nn.conv2d(xd, fd, 1, "SAME").numpy()
    # Both are float64 sums of the same exact products, in other orders: K = 36 terms.
    np.testing.assert_allclose(got, want, rtol=0, atol=64 * np.finfo(np.float64).eps * np.abs(want).max())
    if symmetric_w:
        codes, _, zp = ref.scheme_codes(f, *f_range, bits[1], True, narrow)
        q = 2 ** (bits[1] - 1) - 1
        assert np.all(zp == 0) and codes.min() >= -q - (0 if narrow else 1) and codes.max() <= q
        assert codes.min() < 0 < codes.max()


def test_default_scheme_is_the_ops_contract():
    rng = np.random.default_rng(3)
    x = rng.normal(0.5, 1.0, (2, 6, 6, 3)).astype(np.float32)
    f = rng.normal(0, 0.3, (3, 3, 3, 4)).astype(np.float32)
    table = rng.integers(0, 65536, 65536).astype(np.int64)
    ranges = (-1.0, 2.0, float(f.min()), float(f.max()))
    want = ref.approx_conv(x, f, ranges, table)
    got = ref.approx_conv_scheme(x, f, ranges[:2], ranges[2:], table)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-9 * np.abs(want).max())


def test_per_channel_ranges_quantize_each_channel_on_its_own():
    rng = np.random.default_rng(5)
    f = rng.normal(0, 1, (3, 3, 2, 4)).astype(np.float32) * np.array([0.01, 0.1, 1, 10], np.float32)
    lo, hi = f.min(axis=(0, 1, 2)), f.max(axis=(0, 1, 2))
    codes, scale, zp = ref.scheme_codes(f, lo, hi, 8)
    assert scale.shape == (4,) and zp.shape == (4,)
    # Each channel uses its whole code range; a per-tensor range would leave the small ones near zp.
    assert np.all(codes.max(axis=(0, 1, 2)) - codes.min(axis=(0, 1, 2)) >= 250)
    per_tensor, _, _ = ref.scheme_codes(f, float(lo.min()), float(hi.max()), 8)
    assert np.ptp(per_tensor[..., 0]) <= 2


def test_signed_bytes_index_the_table():
    """A signed code c indexes the table by its two's-complement byte: row (a & 0xFF), column (w & 0xFF)."""
    products = ref.signed_products(np.arange(65536, dtype=np.uint16))  # entry = its own index, as int16
    qa = np.array([[[[-1, 2]]]])  # bytes 255, 2
    qw = np.array([[[[-128], [3]]]])  # bytes 128, 3
    acc, act_sum, filter_sum, taps = ref.conv_sums(qa, qw, products, (1, 1), "VALID", (1, 1), 0)
    index = [(255 << 8) | 128, (2 << 8) | 3]
    assert acc.item() == sum(products[i] for i in index)
    assert act_sum.item() == 1 and filter_sum.item() == -125 and taps == 2
