"""The exact int8 decomposer: T[a,w] = c0 + alpha[a] + beta[w] + sum_r U[r,a] V[r,w]."""

import os
import time

import numpy as np
import pytest

from tensorflow_approx import multipliers as mx
from tensorflow_approx.multipliers.decompose import (Decomposition, decompose, main, moebius,
                                                     rank_mod_p, split_term)

AXMUL = "/work/shared/axmul_8x8"
CODES = np.arange(256, dtype=np.int64)


def check(d, table):
    """d is well formed and reproduces the table's product values exactly."""
    assert isinstance(d, Decomposition)
    assert d.U.dtype == np.int8 and d.V.dtype == np.int8
    assert d.U.shape == d.V.shape == (d.terms, 256)
    assert d.alpha.shape == d.beta.shape == (256,)
    assert np.abs(d.alpha).max() < 2 ** 31 and np.abs(d.beta).max() < 2 ** 31
    values = table.products if isinstance(table, mx.Multiplier) else np.asarray(table)
    rec = d.reconstruct()
    assert rec.dtype == np.int64 and rec.shape == (65536,)
    np.testing.assert_array_equal(rec, values.reshape(-1).astype(np.int64))
    # The documented formula, evaluated independently of reconstruct().
    a, w = 201, 37
    direct = d.c0 + d.alpha[a] + d.beta[w] + sum(int(d.U[r, a]) * int(d.V[r, w])
                                                 for r in range(d.terms))
    assert direct == values.reshape(256, 256)[a, w]


def test_exact_product_is_one_term_of_shifted_codes():
    d = decompose(mx.exact())
    check(d, mx.exact())
    assert d.terms == 1
    # a*w = (a-128)(w-128) + 128a + 128w - 128^2, up to the sign of the int8 factors.
    u, v = d.U[0].astype(np.int64), d.V[0].astype(np.int64)
    assert np.array_equal(u * v[0] * np.sign(v[0]), (CODES - 128) * abs(v[0])) or \
        abs(int(u[255]) - int(u[0])) == 255
    assert d.c0 == -16384
    np.testing.assert_array_equal(d.alpha, 128 * CODES)
    np.testing.assert_array_equal(d.beta, 128 * CODES)


def test_signed_exact_product_is_one_term():
    m = mx.from_function(lambda a, w: a * w, "s_exact", signed=True)
    d = decompose(m)
    check(d, m)
    assert d.terms == 1 and d.signed
    # Also from the stored int16 bit patterns.
    d2 = decompose(m.table, signed=True)
    check(d2, m)


def test_separable_table_needs_no_term():
    t = (CODES[:, None] * 3 + (CODES[None, :] ^ 0x5A) * 7)
    d = decompose(t)
    check(d, t)
    assert d.terms == 0


def random_low_rank(r, seed, free=True):
    rng = np.random.default_rng(seed)
    U = rng.integers(-128, 128, (r, 256))
    V = rng.integers(-128, 128, (r, 256))
    t = U.T @ V
    if free:
        t = t + rng.integers(-5000, 5000, 256)[:, None] + rng.integers(-5000, 5000, 256)[None, :]
        t = t + 12345
    return t


@pytest.mark.parametrize("r", [1, 2, 3, 4, 5])
def test_rank_route_recovers_synthetic_int8_products(r):
    for seed in range(3):
        t = random_low_rank(r, seed)
        d = decompose(t)
        check(d, t)
        assert d.rank == r and d.terms <= r
        assert d.route.startswith("rank-")


def test_synthetic_rank_against_monomials():
    # A rank-2 table whose bit-monomial expansion needs many terms: the rank route wins.
    t = random_low_rank(2, 7, free=False)
    assert decompose(t).terms == 2
    nonconst = sum(np.ptp(c) > 0 for c in moebius(t)[1:])
    assert nonconst > 2


@pytest.mark.parametrize("name,most", [
    ("exact", 1), ("optrunc3", 1), ("optrunc6", 1), ("drum4", 1), ("drum6", 1), ("roba", 2),
    ("kulkarni", 2), ("coltrunc4", 8), ("bam_h1_v6", 8), ("etm4", 16),
])
def test_builtin_families_have_few_terms(name, most):
    m = mx.get(name)
    d = decompose(m)
    check(d, m)
    assert d.terms <= most, d.describe()


def test_random_table_is_refused_quickly():
    t = np.random.default_rng(1).integers(0, 65536, (256, 256))
    start = time.perf_counter()
    assert decompose(t, max_terms=64) is None
    assert time.perf_counter() - start < 2.0


def test_budget_is_respected():
    t = random_low_rank(5, 3)
    assert decompose(t, max_terms=4) is None
    assert decompose(t, max_terms=5).terms == 5


def test_reconstruct_is_exact_whenever_returned():
    tables = [mx.get(n) for n in ("mitchell", "etm2", "coltrunc6", "bam_h2_v4", "drum3")]
    tables.append(mx.from_function(lambda a, w: (a >> 2) * (w >> 1) * 8 + (a & w), "mix"))
    tables.append(mx.from_function(lambda a, w: (a & 0xF0) * w + (a & 3) * (w & 0xC0), "mix2"))
    for m in tables:
        d = decompose(m, max_terms=64)
        if d is not None:
            check(d, m)
            assert d.terms >= d.rank


def test_split_term_planes_are_bytes_and_exact():
    rng = np.random.default_rng(4)
    for du, dv in ((1, 40000), (300, 300), (255, 255), (3, 70000), (1000, 5)):
        u, v = rng.integers(0, du + 1, 256), rng.integers(0, dv + 1, 256)
        planes = split_term(u, v)
        got = sum(np.outer(p, q) for p, q in planes)
        for p, q in planes:
            assert p.min() >= 0 and p.max() <= 255 and q.min() >= 0 and q.max() <= 255
        diff = np.outer(u, v) - got   # equal modulo row and column terms
        assert not (diff - diff[:, :1] - diff[:1, :] + diff[0, 0]).any()


def test_rank_mod_p_is_a_lower_bound_that_stops_early():
    assert rank_mod_p(random_low_rank(6, 0, free=False)) == 6
    t = np.random.default_rng(2).integers(0, 65536, (256, 256))
    assert rank_mod_p(t, stop=10) == 11


def test_bad_arguments():
    with pytest.raises(TypeError, match="integer array"):
        decompose(np.zeros((256, 256)))
    with pytest.raises(ValueError, match="shape"):
        decompose(np.zeros((16, 16), dtype=np.int64))
    with pytest.raises(ValueError, match="max_terms"):
        decompose(mx.exact(), max_terms=-1)


@pytest.mark.skipif(not os.path.isdir(AXMUL), reason=f"{AXMUL} (the 36 EvoApprox tables) is absent")
def test_evoapprox_tables_under_a_minute():
    files = sorted(f for f in os.listdir(AXMUL) if f.endswith(".bin"))
    assert len(files) == 36
    counts = {}
    start = time.perf_counter()
    for f in files:
        m = mx.load(os.path.join(AXMUL, f))
        t = time.perf_counter()
        d = decompose(m, max_terms=64)
        assert time.perf_counter() - t < 5.0, f
        counts[m.name] = None if d is None else d.terms
        if d is not None:
            check(d, m)
    assert time.perf_counter() - start < 60.0
    within = lambda n: sum(c is not None and c <= n for c in counts.values())  # noqa: E731
    assert within(8) >= 12 and within(16) >= 20 and within(32) >= 24, counts
    assert counts["mul8u_1JFF"] == 1 and counts["mul8u_199Z"] == 0
    assert counts["mul8u_17C8"] <= 4 and counts["mul8u_17QU"] <= 4
    assert counts["mul8u_L40"] is None and counts["mul8u_12N4"] is None


def test_command_line_prints_a_table(tmp_path, capsys):
    mx.exact().save(str(tmp_path / "e.bin"))
    t = np.random.default_rng(3).integers(0, 65536, (256, 256))
    mx.Multiplier("noise", t).save(str(tmp_path / "noise.bin"))
    assert main([str(tmp_path), "drum6"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line.split("|")[3].strip()
            for line in out.splitlines() if line.startswith("|")}
    assert rows["e"] == "1" and rows["noise"] == "-" and rows["drum6"] == "1"
    assert "3 table(s) in" in out
