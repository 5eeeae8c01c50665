"""Error metrics on hand-built tables, the weighted variant, and display formatting."""

import math

import numpy as np
import pytest

from tensorflow_approx.multipliers import exact, kulkarni
from tensorflow_approx.multipliers.metrics import error_metrics, format_value
from tensorflow_approx.multipliers.multiplier import Multiplier, exact_products


def with_errors(changes, signed=False):
    """The exact table with (a_code, w_code) -> new product value."""
    t = exact_products(signed).copy()
    for (a, w), value in changes.items():
        t[a, w] = value
    return Multiplier("hand", t, signed=signed)


# Errors: +2 at (3, 5) (exact 15), -3 at (1, 7) (exact 7), +4 at (0, 9) (exact 0).
HAND = {(3, 5): 17, (1, 7): 4, (0, 9): 4}


def test_exact_has_no_error():
    assert all(v == 0 for v in exact().metrics().as_dict().values())


def test_hand_built_table():
    md = error_metrics(with_errors(HAND))
    n = 65536.0
    assert md.mae == 9 / n
    assert md.mae_percent == pytest.approx(100 * 9 / n / 65536, rel=1e-12)
    assert md.wce == 4 and md.wce_percent == pytest.approx(100 * 4 / 65536, rel=1e-12)
    assert md.ep_percent == pytest.approx(100 * 3 / n, rel=1e-12)
    # Relative errors only over the 255 * 255 pairs with a non-zero exact product: (0, 9) is out.
    assert md.mre_percent == pytest.approx(100 * (2 / 15 + 3 / 7) / (255 * 255), rel=1e-12)
    assert md.wcre_percent == pytest.approx(100 * 3 / 7, rel=1e-12)
    assert md.mse == (4 + 9 + 16) / n
    assert md.bias == (2 - 3 + 4) / n
    assert md.std == pytest.approx(math.sqrt(29 / n - (3 / n) ** 2), rel=1e-12)


def test_signed_errors_use_signed_products():
    # codes 255 = -1: exact (-1) * (-1) = 1, made 3; codes 128, 2 = -128 * 2 = -256, made -250.
    md = error_metrics(with_errors({(255, 255): 3, (128, 2): -250}, signed=True))
    assert md.wce == 6 and md.wcre_percent == pytest.approx(200.0)
    assert md.bias == pytest.approx((2 + 6) / 65536)


def test_weighted_one_hot_gives_that_pair():
    pa, pw = np.zeros(256), np.zeros(256)
    pa[3], pw[5] = 1, 1
    md = error_metrics(with_errors(HAND), pa, pw)
    assert (md.mae, md.wce, md.ep_percent, md.bias, md.std) == (2, 2, 100, 2, 0)
    assert md.mre_percent == pytest.approx(100 * 2 / 15)


def test_weighted_uniform_equals_unweighted():
    m = kulkarni()
    plain = m.metrics().as_dict()
    weighted = m.metrics(np.ones(256), np.full(256, 7)).as_dict()
    assert weighted == pytest.approx(plain, rel=1e-12)


def test_weighted_ignores_pairs_without_probability():
    rng = np.random.default_rng(0)
    pa = rng.integers(0, 100, 256).astype(float)
    pa[128:] = 0           # activations only use the lower half of the codes
    pw = rng.integers(1, 100, 256)
    m = kulkarni()
    md = m.metrics(pa, pw)
    err = np.abs(m.errors).astype(float)
    p = (pa / pa.sum())[:, None] * (pw / pw.sum())[None, :]
    assert md.wce == err[:128].max() < err.max()
    assert md.mae == pytest.approx((p * err).sum(), rel=1e-12)
    nz = (exact_products() != 0) & (p > 0)
    assert md.mre_percent == pytest.approx(
        100 * (p * np.where(nz, err / np.maximum(exact_products(), 1), 0)).sum() / p[nz].sum())


@pytest.mark.parametrize("hist,error,match", [
    (np.ones(255), ValueError, r"activation_hist: expected a histogram of shape \(256,\)"),
    (-np.ones(256), ValueError, "activation_hist: counts must be finite, non-negative"),
    (np.zeros(256), ValueError, "activation_hist: .*not all zero"),
    (np.full(256, np.nan), ValueError, "activation_hist: counts must be finite"),
    (np.ones(256, bool), TypeError, "activation_hist: expected numbers"),
])
def test_bad_histograms(hist, error, match):
    with pytest.raises(error, match=match):
        error_metrics(exact(), hist)


def test_bad_weight_histogram_is_named():
    with pytest.raises(ValueError, match="weight_hist"):
        error_metrics(exact(), None, np.ones((16, 16)))


def test_needs_a_multiplier():
    with pytest.raises(TypeError, match="multiplier: expected a Multiplier"):
        error_metrics(exact_products())


@pytest.mark.parametrize("x,text", [
    (0, "0"), (0.0, "0"), (79.0, "79"), (283.56, "284"), (0.43267, "0.43"), (4.83, "4.83"),
    (0.00095367, "0.00095"), (0.0374, "0.037"), (-128.25, "-128"), (7100.0, "7100"),
])
def test_format_value(x, text):
    assert format_value(x) == text
