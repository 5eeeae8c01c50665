"""Each family against an independent bit-level model, on all 65536 pairs, at its parameters' edges."""

import itertools
import re

import numpy as np
import pytest

from tensorflow_approx.multipliers import families as fam
from tensorflow_approx.multipliers.multiplier import exact_products

A, W = np.meshgrid(np.arange(256, dtype=np.int64), np.arange(256, dtype=np.int64), indexing="ij")
EXACT = A * W


def partial_products(keep):
    """Array-multiplier model: adds bit a_i AND bit w_j at weight 2^(i+j) when keep(i, j)."""
    p = np.zeros_like(A)
    for i in range(8):
        for j in range(8):
            if keep(i, j):
                p += (((A >> i) & 1) & ((W >> j) & 1)) << (i + j)
    return p


def assert_table(m, expected):
    bad = np.argwhere(m.products != expected)
    assert bad.size == 0, (f"{m.name}: {len(bad)} pairs differ, first (a, w) = {tuple(bad[0])}: "
                           f"{m.products[tuple(bad[0])]} != {expected[tuple(bad[0])]}")


def test_exact():
    assert_table(fam.exact(), partial_products(lambda i, j: True))
    assert_table(fam.exact(), EXACT)


@pytest.mark.parametrize("t", [0, 1, 7, 8, 14, 15])
def test_column_truncated(t):
    m = fam.column_truncated(t)
    assert m.name == f"coltrunc{t}"
    assert_table(m, partial_products(lambda i, j: i + j >= t))
    assert m.is_exact() == (t == 0)
    if t == 15:
        assert not m.products.any()


@pytest.mark.parametrize("k", [0, 1, 7, 8])
def test_operand_truncated(k):
    m = fam.operand_truncated(k)
    assert m.name == f"optrunc{k}"
    assert_table(m, partial_products(lambda i, j: i >= k and j >= k))
    assert m.is_exact() == (k == 0)


@pytest.mark.parametrize("h,v", list(itertools.product([0, 1, 7, 8], [0, 1, 14, 15])))
def test_broken_array(h, v):
    m = fam.broken_array(h, v)
    assert m.name == f"bam_h{h}_v{v}"
    assert_table(m, partial_products(lambda i, j: j >= h and i + j >= v))
    assert m.is_exact() == (h == 0 and v == 0)


def test_broken_array_rows_are_weight_bits():
    # h = 1 drops the row of weight bit 0: odd weights lose exactly the activation once.
    m = fam.broken_array(1, 0)
    assert m.products[200, 3] == 200 * 2 and m.products[3, 200] == 3 * 200


def drum_operand(x, k):
    """DRUM's operand approximation written on the binary string: keep k digits from the leading
    one, force the last kept digit to 1, pad with zeros."""
    digits = format(x, "b")
    if len(digits) <= k:
        return x
    return int(digits[:k - 1] + "1", 2) << (len(digits) - k)


@pytest.mark.parametrize("k", [1, 2, 3, 7, 8])
def test_drum(k):
    r = np.array([drum_operand(x, k) for x in range(256)], dtype=np.int64)
    m = fam.drum(k)
    assert m.name == f"drum{k}"
    assert_table(m, r[A] * r[W])
    assert m.is_exact() == (k == 8)


def test_drum_is_nearly_unbiased():
    # The point of DRUM's forced 1: the mean error is small relative to the mean absolute error.
    md = fam.drum(6).metrics()
    assert abs(md.bias) < 0.5 * md.mae


def test_mitchell():
    with np.errstate(divide="ignore", invalid="ignore"):
        la, lw = np.floor(np.log2(A)), np.floor(np.log2(W))
        fa, fw = A / 2.0 ** la - 1, W / 2.0 ** lw - 1
        s = fa + fw
        p = np.where(s < 1, 2.0 ** (la + lw) * (1 + s), 2.0 ** (la + lw + 1) * s)
    p = np.where((A == 0) | (W == 0), 0.0, p)
    m = fam.mitchell()
    assert_table(m, p.astype(np.int64))
    # Mitchell's known properties: never over-estimates, exact on powers of two, worst 1/9 below.
    assert (m.errors <= 0).all()
    powers = [1, 2, 4, 8, 16, 32, 64, 128]
    assert (m.errors[np.ix_(powers, powers)] == 0).all()
    assert m.metrics().wcre_percent == pytest.approx(100 / 9, abs=1e-9)


def test_kulkarni():
    def m2(x, y):
        return np.where((x == 3) & (y == 3), 7, x * y)

    def compose(sub, bits):  # a 2n x 2n multiplier from four n x n ones, added exactly
        def mul(x, y):
            lo = (1 << bits) - 1
            xh, xl, yh, yl = x >> bits, x & lo, y >> bits, y & lo
            return ((sub(xh, yh) << 2 * bits) + (sub(xh, yl) << bits) + (sub(xl, yh) << bits)
                    + sub(xl, yl))
        return mul

    m8 = compose(compose(m2, 2), 4)
    m = fam.kulkarni()
    assert_table(m, m8(A, W))
    # The 2x2 block's only error is 3 x 3 -> 7, so the worst relative error is 2/9.
    assert m.metrics().wcre_percent == pytest.approx(200 / 9, abs=1e-9)
    assert (m.errors <= 0).all()


def roba_round(x):
    """Nearest power of two by distance; ties go to the larger one; 0 stays 0."""
    if x == 0:
        return 0
    candidates = [2 ** n for n in range(10)]
    return min(candidates, key=lambda c: (abs(c - x), -c))


def test_roba():
    r = np.array([roba_round(x) for x in range(256)], dtype=np.int64)
    ar, wr = r[A], r[W]
    m = fam.roba()
    assert_table(m, ar * W + wr * A - ar * wr)
    assert r[3] == 4 and r[6] == 8 and r[5] == 4 and r[192] == 256 and r[191] == 128
    # Exact whenever one operand is a power of two.
    assert (m.errors[[1, 2, 64, 128], :] == 0).all()


@pytest.mark.parametrize("k", [0, 1, 4, 7, 8])
def test_etm(k):
    lo = (1 << k) - 1
    ah, wh, al, wl = A >> k, W >> k, A & lo, W & lo
    low = np.zeros_like(A)
    seen = np.zeros(A.shape, dtype=bool)
    for i in reversed(range(k)):   # scan the low bit pairs from the most significant
        seen |= (((al >> i) | (wl >> i)) & 1).astype(bool)
        low |= seen.astype(np.int64) << (k + i)          # pair i drives product bit k + i
    low |= np.where(seen, lo, 0)                         # and, once a 1 was seen, bits k-1..0
    expected = np.where((ah == 0) & (wh == 0), al * wl, ((ah * wh) << 2 * k) + low)
    m = fam.etm(k)
    assert m.name == f"etm{k}"
    assert_table(m, expected)
    assert m.is_exact() == (k in (0, 8))


@pytest.mark.parametrize("k,a,w,product", [
    # a_h w_h = 0 * 1: no high product; the scan of a_l | w_l = 0001 sets the 2k = 8 low bits
    # from product bit k + 0 = 4 down: 0001_1111 = 31 (reading only k low bits gave 1).
    (4, 0, 17, 31),
    (4, 17, 0, 31),
    (4, 17, 17, 256 + 31),          # 1 * 1 at 2^8, a_l | w_l = 0001
    (4, 200, 100, (12 * 6 << 8) + 255),   # 1100_1000 x 0110_0100: a_l | w_l = 1100 -> 1111_1111
    (4, 16, 16, 256),               # low parts 0: nothing set
    (4, 15, 15, 225),               # both high parts 0: low parts multiplied exactly
    (2, 1, 4, 7),                   # k = 2: a_l | w_l = 01 -> 0111
    (1, 3, 2, 7),                   # k = 1: 1 * 1 at 2^2, a_l | w_l = 1 -> 11
])
def test_etm_hand_checked_values(k, a, w, product):
    assert fam.etm(k).products[a, w] == product


ALL_NAMES = ["exact", "coltrunc5", "optrunc3", "bam_h2_v9", "drum4", "mitchell", "kulkarni",
             "roba", "etm4"]


@pytest.mark.parametrize("name", ALL_NAMES)
def test_family_names_round_trip(name):
    m = fam.family(name)
    assert m.name == name
    assert not m.signed
    assert m.metadata["family"] == re.match(r"[a-z]+", name).group(0)
    assert m == fam.family(name)


def test_every_family_documents_its_paper():
    assert len(fam.FAMILIES) == 9
    for f in fam.FAMILIES:
        assert f.build.__doc__, f.key
        if f.key != "exact":
            assert re.search(r"\b(19|20)\d\d\b", f.build.__doc__), f"{f.key}: no year cited"


def test_exact_settings_are_exact():
    for name in ["exact", "coltrunc0", "optrunc0", "bam_h0_v0", "drum8", "etm0", "etm8"]:
        assert (fam.family(name).products == exact_products()).all(), name


@pytest.mark.parametrize("name,error,match", [
    ("drum0", ValueError, r"k: 0 is outside 1\.\.8"),
    ("bam_h9_v0", ValueError, r"h: 9 is outside 0\.\.8"),
    ("coltrunc16", ValueError, r"t: 16"),
    ("drum", ValueError, r"not a family name"),
    ("Drum6", ValueError, r"not a family name"),
    ("drum6x", ValueError, r"not a family name"),
    (6, TypeError, r"name: expected a str"),
])
def test_bad_names(name, error, match):
    with pytest.raises(error, match=match):
        fam.family(name)


def test_bad_parameters():
    with pytest.raises(TypeError, match="k: expected an int"):
        fam.drum(True)
    with pytest.raises(TypeError, match="k: expected an int"):
        fam.etm(4.0)
    with pytest.raises(ValueError, match="v: -1"):
        fam.broken_array(0, -1)
