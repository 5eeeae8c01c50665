"""Parameterized approximate 8x8 unsigned multipliers, written from their published definitions.

Each builder returns a Multiplier whose name carries its parameters (e.g. "drum6", "bam_h1_v6");
`family(name)` parses such a name back. Operand a is the row (activation code), w the column
(weight code); bit i of a is a_i. All tables are unsigned: codes 0..255, products 0..65535.
"""

import collections
import re

import numpy as np

from tensorflow_approx.multipliers.multiplier import Multiplier

_CODES = np.arange(256, dtype=np.int64)
# Position of the leading one (floor(log2 x)) of each code; -1 for 0.
_MSB = np.array([int(x).bit_length() - 1 for x in range(256)], dtype=np.int64)


def _grid():
    """Row and column operands: two int64 arrays of shape (256, 256)."""
    return np.meshgrid(_CODES, _CODES, indexing="ij")


def _make(name, family_key, params, products, doc):
    return Multiplier(name, products, metadata={
        "family": family_key, "params": dict(params), "doc": doc})


def _partial_product_sum(keep):
    """Sum of the kept partial products a_i * w_j * 2^(i+j) of an array multiplier.

    keep: bool array of shape (8, 8), keep[i, j] for activation bit i and weight bit j. The kept bits
    are added exactly (the adder array itself is exact in the column-truncated and BAM designs).
    Returns int64 (256, 256).
    """
    bits = (_CODES[:, None] >> np.arange(8)) & 1                    # (256 codes, 8 bits)
    weight = np.where(keep, 2 ** np.add.outer(np.arange(8), np.arange(8)), 0)
    return bits @ weight @ bits.T


def _coltrunc_keep(t):
    """The cells a column-truncated array keeps: keep[i, j] iff column i + j >= t (bool (8, 8))."""
    i, j = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
    return i + j >= t


def _bam_keep(h, v):
    """The cells a broken array keeps: keep[i, j] iff row j >= h and column i + j >= v (bool (8, 8))."""
    i, j = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
    return (j >= h) & (i + j >= v)


def exact():
    """The exact product a * w."""
    a, w = _grid()
    return _make("exact", "exact", {}, a * w, "exact product")


def column_truncated(t):
    """Column-truncated array multiplier: partial products a_i w_j in columns i + j < t are dropped.

    t = 0 is exact; t = 15 drops every column (the product is 0). No correction constant is added
    (the plain truncated multiplier; see M. J. Schulte and E. E. Swartzlander, "Truncated
    multiplication with correction constant", VLSI Signal Processing VI, IEEE, 1993, for the
    scheme and its corrected variant).
    """
    t = _check_int("t", t, 0, 15)
    doc = "partial products in columns i+j < t dropped (Schulte & Swartzlander 1993, uncorrected)"
    return _make(f"coltrunc{t}", "coltrunc", {"t": t}, _partial_product_sum(_coltrunc_keep(t)), doc)


def operand_truncated(k):
    """Operand truncation: the k low bits of both operands are zeroed before an exact multiply.

    P = ((a >> k) << k) * ((w >> k) << k); k = 0 is exact, k = 8 gives 0. The baseline
    "data truncation" of the approximate-arithmetic literature (e.g. H. Jiang, F. J. H. Santiago,
    H. Mo, L. Liu and J. Han, "Approximate Arithmetic Circuits: A Survey, Characterization, and
    Recent Applications", Proceedings of the IEEE 108(12), 2020).
    """
    k = _check_int("k", k, 0, 8)
    a, w = _grid()
    doc = "k low operand bits zeroed, then exact product (operand/data truncation)"
    return _make(f"optrunc{k}", "optrunc", {"k": k}, ((a >> k) << k) * ((w >> k) << k), doc)


def broken_array(h, v):
    """Broken-array multiplier (BAM) with horizontal break level h and vertical break level v.

    H. R. Mahdiani, A. Ahmadi, S. M. Fakhraie and C. Lucas, "Bio-Inspired Imprecise Computational
    Blocks for Efficient VLSI Implementation of Soft-Computing Applications", IEEE Trans. Circuits
    and Systems I 57(4):850-862, 2010. In the array multiplier, row j holds the partial products
    a_i w_j (the weight is the multiplier operand whose bits select rows); the cells of the h
    topmost rows (j < h) and of the columns right of the vertical break (i + j < v) are omitted and
    the remaining partial products are added exactly:
        P = sum of a_i w_j 2^(i+j) over j >= h and i + j >= v.
    h = v = 0 is exact; h in 0..8, v in 0..15.
    """
    h = _check_int("h", h, 0, 8)
    v = _check_int("v", v, 0, 15)
    doc = "broken array: a_i w_j kept iff j >= h and i+j >= v (Mahdiani et al. 2010)"
    return _make(f"bam_h{h}_v{v}", "bam", {"h": h, "v": v}, _partial_product_sum(_bam_keep(h, v)), doc)


def drum(k):
    """DRUM-k: Dynamic Range Unbiased Multiplier.

    S. Hashemi, R. I. Bahar and S. Reda, "DRUM: A Dynamic Range Unbiased Multiplier for Approximate
    Applications", ICCAD 2015. Each operand x >= 2^k is reduced to the k bits starting at its
    leading one, the lowest of those k bits is set to 1 (which makes the truncation error unbiased)
    and the k x k product is shifted back; an operand below 2^k is used as is:
        r(x) = x                          if x < 2^k
             = ((x >> s) | 1) << s,  s = floor(log2 x) - k + 1, otherwise
        P = r(a) * r(w).
    k in 1..8; k = 8 is exact for 8-bit operands.
    """
    k = _check_int("k", k, 1, 8)
    s = np.maximum(_MSB - k + 1, 0)
    r = np.where(_CODES < 2 ** k, _CODES, ((_CODES >> s) | 1) << s)
    doc = "k bits from the leading one, LSB forced to 1, exact k x k product (Hashemi et al. 2015)"
    return _make(f"drum{k}", "drum", {"k": k}, np.outer(r, r), doc)


def mitchell():
    """Mitchell's logarithmic multiplier.

    J. N. Mitchell, "Computer Multiplication and Division Using Binary Logarithms", IRE Trans.
    Electronic Computers EC-11(4):512-517, 1962. With x = 2^k (1 + f), 0 <= f < 1, log2 x is
    approximated by k + f; the logs are added and the sum converted back with the same linear
    approximation:
        P = 2^(ka+kw) (1 + fa + fw)    if fa + fw < 1
          = 2^(ka+kw+1) (fa + fw)      otherwise;   P = 0 if a or w is 0.
    With 8-bit operands and full-precision fractions every P is an integer, computed exactly here
    as 2^(ka+kw) (fa + fw) = (a - 2^ka) 2^kw + (w - 2^kw) 2^ka.
    """
    a, w = _grid()
    ka, kw = np.maximum(_MSB[a], 0), np.maximum(_MSB[w], 0)   # 0 for a zero operand, masked below
    base = 1 << (ka + kw)
    frac_sum = (a - (1 << ka)) * (1 << kw) + (w - (1 << kw)) * (1 << ka)
    p = np.where((a == 0) | (w == 0), 0, np.where(frac_sum < base, base + frac_sum, 2 * frac_sum))
    doc = "logarithmic: log2 x ~ k + f, antilog likewise (Mitchell 1962)"
    return _make("mitchell", "mitchell", {}, p, doc)


def kulkarni():
    """Kulkarni's underdesigned multiplier built from approximate 2x2 blocks.

    P. Kulkarni, P. Gupta and M. Ercegovac, "Trading Accuracy for Power with an Underdesigned
    Multiplier Architecture", VLSI Design 2011. The 2x2 block is exact except 3 x 3 = 7 (binary 111,
    a 3-bit output instead of 1001); larger multipliers add the block products exactly, so with
    2-bit digits a_d = (a >> 2d) & 3:
        P = sum over d, e of M2(a_d, w_e) 4^(d+e),  M2(x, y) = 7 if x = y = 3 else x y.
    """
    a, w = _grid()
    p = np.zeros_like(a)
    for d in range(4):
        for e in range(4):
            x, y = (a >> 2 * d) & 3, (w >> 2 * e) & 3
            p += np.where((x == 3) & (y == 3), 7, x * y) << 2 * (d + e)
    doc = "2x2 blocks with 3x3=7, block products added exactly (Kulkarni et al. 2011)"
    return _make("kulkarni", "kulkarni", {}, p, doc)


def roba():
    """RoBA: rounding-based approximate multiplier (unsigned).

    R. Zendegani, M. Kamal, M. Bahadori, A. Afzali-Kusha and M. Pedram, "RoBA Multiplier: A
    Rounding-Based Approximate Multiplier for High-Speed yet Energy-Efficient Digital Signal
    Processing", IEEE Trans. VLSI Systems 25(2):393-401, 2017. Each operand is rounded to the
    nearest power of two (x_r; at the tie x = 3 * 2^(p-1) the larger, 2^(p+1), as the paper
    chooses for simpler hardware; 0 stays 0) and
        P = a_r w + w_r a - a_r w_r  (= a w - (a - a_r)(w - w_r)).
    In bits: with p the leading-one position, x_r = 2^(p+1) if bit p-1 of x is set, else 2^p.
    """
    msb = np.maximum(_MSB, 0)
    up = (msb >= 1) & (((_CODES >> np.maximum(msb - 1, 0)) & 1) == 1)
    r = np.where(_CODES == 0, 0, 1 << (msb + up))
    a, w = _grid()
    ar, wr = r[a], r[w]
    doc = "operands rounded to powers of two, P = ar*w + wr*a - ar*wr (Zendegani et al. 2017)"
    return _make("roba", "roba", {}, ar * w + wr * a - ar * wr, doc)


def etm(k):
    """ETM-k: error-tolerant multiplier with a k-bit non-multiplication part.

    K. Y. Kyaw, W. L. Goh and K. S. Yeo, "Low-power high-speed multiplier for error-tolerant
    application", IEEE EDSSC 2010. Each operand is split into a high part (x >> k, the
    multiplication part) and a low part (x mod 2^k, the non-multiplication part):
      - if both high parts are zero, the low parts are multiplied exactly;
      - otherwise the high parts are multiplied exactly (placed at 2^(2k)), the cross terms are
        not computed, and the 2k low product bits are set without multiplication by scanning the
        k low bit pairs from the most significant, pair i standing for product bit k + i: while
        both bits are 0 the product bit is 0; from the first pair with a 1 on, that product bit
        and every lower one down to bit 0 are 1:
        P = (a_h w_h) 2^(2k) + (2^(k+L) - 1),  L = bit length of (a_l | w_l)  (P's low part is 0
        when a_l = w_l = 0).
    Why 2k bits: the non-multiplication part stands in for the product of the two k-bit low
    parts, which has 2k bits, and the multiplication part's product starts at bit 2k; a scan
    setting only bits k-1..0 would leave bits k..2k-1 with no source at all. The public hardware
    descriptions we know of (NEURAghe's etm.sv, aproposorg/approx's ETM.scala) read it the same
    way. k in 0..8; k = 0 and k = 8 are exact.
    """
    k = _check_int("k", k, 0, 8)
    a, w = _grid()
    low = (1 << k) - 1
    ah, wh, al, wl = a >> k, w >> k, a & low, w & low
    scan_length = _MSB[al | wl] + 1                       # L (0 when both low parts are 0)
    ones = np.where(scan_length > 0, (1 << (scan_length + k)) - 1, 0)   # 2^(k+L) - 1
    p = np.where((ah == 0) & (wh == 0), al * wl, ((ah * wh) << 2 * k) + ones)
    doc = ("high parts exact, 2k low product bits by a leading-one scan, exact when high parts "
           "are 0 (Kyaw 2010)")
    return _make(f"etm{k}", "etm", {"k": k}, p, doc)


# Cost estimates for searches over the families (tensorflow_approx.explore.family_library), relative to
# the exact 8x8 array multiplier's 64 partial-product cells (an AND gate and its full adder each). A
# design that keeps a subset of the array's cells costs that share: column truncation and the broken
# array their kept cells, operand truncation a (8-k) x (8-k) array. DRUM-k is a k x k array plus, per
# operand, a leading-one detector and the shifters around it, which we count as 8 cells each (an
# assumption, not a published figure). Designs whose cost is not a count of array cells (Mitchell,
# Kulkarni, RoBA, ETM) get none: a search leaves them out rather than rank them on a guess.
_LOD_AND_SHIFTERS_CELLS = 8


def estimated_cost(multiplier):
    """(relative cost, how it was estimated) of a family multiplier, or None (no structural estimate;
    the table's own metadata never counts here)."""
    fam, p = multiplier.metadata.get("family"), multiplier.metadata.get("params", {})
    if fam == "exact":
        return 1.0, "exact 8x8 array: 64 partial-product cells"
    if fam == "coltrunc":
        cells = int(np.sum(_coltrunc_keep(p["t"])))
        return cells / 64, f"{cells} of 64 partial-product cells (columns >= {p['t']})"
    if fam == "bam":
        cells = int(np.sum(_bam_keep(p["h"], p["v"])))
        return cells / 64, f"{cells} of 64 partial-product cells (broken array)"
    if fam == "optrunc":
        cells = (8 - p["k"]) ** 2
        return cells / 64, f"a {8 - p['k']}x{8 - p['k']} array: {cells} of 64 cells"
    if fam == "drum":
        cells = p["k"] ** 2 + 2 * _LOD_AND_SHIFTERS_CELLS
        return min(cells / 64, 1.0), (f"a {p['k']}x{p['k']} array ({p['k'] ** 2} cells) plus two leading-one "
                                      f"detectors with shifters ({_LOD_AND_SHIFTERS_CELLS} cells each, assumed)")
    return None


def _check_int(arg, value, lo, hi):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{arg}: expected an int, got {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{arg}: {value} is outside {lo}..{hi}")
    return int(value)


Family = collections.namedtuple("Family", "key pattern params build summary")

# The one registry: name pattern, parameter ranges (inclusive), builder and a one-line summary.
FAMILIES = (
    Family("exact", "exact", (), exact, "exact product"),
    Family("coltrunc", "coltrunc{t}", (("t", 0, 15),), column_truncated,
           "column-truncated array: partial products in columns < t dropped"),
    Family("optrunc", "optrunc{k}", (("k", 0, 8),), operand_truncated,
           "operand truncation: k low bits of both operands zeroed"),
    Family("bam", "bam_h{h}_v{v}", (("h", 0, 8), ("v", 0, 15)), broken_array,
           "broken-array multiplier (Mahdiani 2010): h rows, columns < v omitted"),
    Family("drum", "drum{k}", (("k", 1, 8),), drum,
           "DRUM (Hashemi 2015): k bits from the leading one, unbiased"),
    Family("mitchell", "mitchell", (), mitchell, "Mitchell logarithmic multiplier (1962)"),
    Family("kulkarni", "kulkarni", (), kulkarni,
           "Kulkarni underdesigned multiplier (2011): 2x2 blocks with 3x3=7"),
    Family("roba", "roba", (), roba, "RoBA (Zendegani 2017): rounding to powers of two"),
    Family("etm", "etm{k}", (("k", 0, 8),), etm,
           "error-tolerant multiplier (Kyaw 2010), k-bit non-multiplication part"),
)


def _pattern_regex(fam):
    rx = re.escape(fam.pattern)
    for pname, _, _ in fam.params:
        rx = rx.replace(re.escape("{" + pname + "}"), rf"(?P<{pname}>\d+)")
    return re.compile(rx + r"\Z")


def is_family_name(name):
    """True when `name` has the form of a family name (parameters not range-checked)."""
    return isinstance(name, str) and any(_pattern_regex(f).match(name) for f in FAMILIES)


def family(name):
    """The Multiplier for a family name such as "exact", "drum6", "bam_h1_v6" or "etm4"."""
    if not isinstance(name, str):
        raise TypeError(f"name: expected a str, got {type(name).__name__}")
    for fam in FAMILIES:
        match = _pattern_regex(fam).match(name)
        if match:
            return fam.build(**{p: int(match.group(p)) for p, _, _ in fam.params})
    patterns = ", ".join(f.pattern for f in FAMILIES)
    raise ValueError(f"name: {name!r} is not a family name (known: {patterns})")
