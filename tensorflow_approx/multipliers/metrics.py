"""Error metrics of an approximate multiplier over all 65536 operand pairs.

Conventions are EvoApprox's (Mrazek et al., "EvoApprox8b: Library of approximate adders and
multipliers for circuit design and benchmarking of approximation methods", DATE 2017), checked
against the values printed in the headers of its 8x8 unsigned multipliers:

  error e = approximate - exact product, over every (a, w) pair, each pair equally likely;
  MAE  = mean |e|              MAE% = 100 * MAE / 2^16   (relative to the 16-bit output range)
  WCE  = max |e|               WCE% = 100 * WCE / 2^16
  EP%  = 100 * share of pairs with e != 0
  MRE% = 100 * mean of |e| / |exact| over pairs whose exact product is non-zero
  WCRE% = 100 * max of |e| / |exact| over the same pairs
  MSE  = mean e^2
and, beyond EvoApprox, bias = mean e and std = standard deviation of e (population).

The weighted variant replaces "each pair equally likely" by P(a, w) = pa(a) * pw(w) from code
histograms (e.g. measured activation and weight codes of a layer, taken as independent); WCE and
WCRE then range over pairs with non-zero probability, and MRE is the mean over the probability
mass of pairs with a non-zero exact product.
"""

import dataclasses

import numpy as np

from tensorflow_approx.multipliers.multiplier import Multiplier, exact_products

OUTPUT_RANGE = 2.0 ** 16  # the denominator of MAE% and WCE%

# (attribute, label as EvoApprox prints it, description); the one list the CLI and as_dict use.
FIELDS = (
    ("mae", "MAE", "mean absolute error"),
    ("mae_percent", "MAE%", "MAE relative to 2^16, in %"),
    ("wce", "WCE", "worst-case absolute error"),
    ("wce_percent", "WCE%", "WCE relative to 2^16, in %"),
    ("ep_percent", "EP%", "share of pairs with an error, in %"),
    ("mre_percent", "MRE%", "mean relative error over non-zero exact products, in %"),
    ("wcre_percent", "WCRE%", "worst-case relative error over non-zero exact products, in %"),
    ("mse", "MSE", "mean squared error"),
    ("bias", "bias", "mean error (approximate - exact)"),
    ("std", "std", "standard deviation of the error"),
)


@dataclasses.dataclass(frozen=True)
class ErrorMetrics:
    """Error metrics of one multiplier (floats; see the module docstring for definitions)."""
    mae: float
    mae_percent: float
    wce: float
    wce_percent: float
    ep_percent: float
    mre_percent: float
    wcre_percent: float
    mse: float
    bias: float
    std: float

    def as_dict(self):
        """{label: value} in FIELDS order, labels as EvoApprox prints them ("MAE%", ...)."""
        return {label: getattr(self, attr) for attr, label, _ in FIELDS}


def _histogram(h, arg):
    """Validates a code histogram and returns it normalized: float64 array of shape (256,)."""
    if h is None:
        return np.full(256, 1.0 / 256)
    arr = np.asarray(h)
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.integer)
                                     or np.issubdtype(arr.dtype, np.floating)):
        raise TypeError(f"{arg}: expected numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if arr.shape != (256,):
        raise ValueError(f"{arg}: expected a histogram of shape (256,) over codes, got {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0) or arr.sum() <= 0:
        raise ValueError(f"{arg}: counts must be finite, non-negative and not all zero")
    return arr / arr.sum()


def error_metrics(multiplier, activation_hist=None, weight_hist=None):
    """Error metrics of `multiplier` over all 65536 pairs, or weighted by code histograms.

    multiplier: a Multiplier.
    activation_hist, weight_hist: None (uniform) or counts/probabilities of shape (256,) over the
      row (activation) and column (weight) codes.
    Returns an ErrorMetrics.
    """
    if not isinstance(multiplier, Multiplier):
        raise TypeError(f"multiplier: expected a Multiplier, got {type(multiplier).__name__}")
    p = _histogram(activation_hist, "activation_hist")[:, None] * \
        _histogram(weight_hist, "weight_hist")[None, :]
    exact = exact_products(multiplier.signed)
    e = multiplier.products - exact
    ae = np.abs(e).astype(np.float64)
    live = p > 0
    nonzero = live & (exact != 0)
    rel = np.zeros_like(ae)
    rel[nonzero] = ae[nonzero] / np.abs(exact[nonzero])
    mass = p[nonzero].sum()

    mae = float((p * ae).sum())
    wce = float(ae[live].max())
    bias = float((p * e).sum())
    return ErrorMetrics(
        mae=mae,
        mae_percent=100.0 * mae / OUTPUT_RANGE,
        wce=wce,
        wce_percent=100.0 * wce / OUTPUT_RANGE,
        ep_percent=100.0 * float(p[e != 0].sum()),
        mre_percent=100.0 * float((p * rel).sum() / mass) if mass > 0 else 0.0,
        wcre_percent=100.0 * float(rel[nonzero].max()) if nonzero.any() else 0.0,
        mse=float((p * ae * ae).sum()),
        bias=bias,
        std=float(np.sqrt((p * (e - bias) ** 2).sum())),
    )


def format_value(x):
    """A metric for display, in EvoApprox's style: whole numbers and values from 100 without
    decimals, 2 decimals from 0.1, else 2 significant digits (so 0.00095 keeps its digits)."""
    x = float(x)
    if x == 0:
        return "0"
    if abs(x) >= 100 or x == round(x):
        return f"{x:.0f}"
    if abs(x) >= 0.1:
        return f"{x:.2f}"
    return f"{x:.2g}"
