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


def byte_products(fn, signed_a, signed_w):
    """fn(a, w) over every (activation byte, weight byte), values read as signed where asked: int64."""
    codes = np.arange(256)
    a = codes - 256 * (codes >= 128) if signed_a else codes
    w = codes - 256 * (codes >= 128) if signed_w else codes
    return fn(a[:, None], w[None, :]).reshape(-1).astype(np.int64)


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
        products = byte_products(np.multiply, *symmetric)
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


def test_symmetric_codes_really_are_signed_and_index_by_bytes():
    """A table whose entry is its own activation byte: the output exposes the codes' bytes."""
    x = np.array([-1.0, -0.5, 0.0, 0.5, 1.0], np.float32).reshape(1, 1, 5, 1)
    f = np.ones((1, 1, 1, 1), np.float32)
    products = byte_products(lambda a, w: (a & 0xFF) + 0 * w, True, True)  # = the activation byte
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
    with pytest.raises(ValueError, match="layers take unsigned tables"):
        ta.FakeApproxConv2D(2, 1, mul_map_file=-np.ones(65536, np.int64))
