"""Exact low-rank int8 decompositions of multiplier tables (issue 14, the decomposer).

Many approximate multipliers' tables are exactly a few products of functions of one operand. This
module finds, for a table T (activation code a = row, weight code w = column), integers

    T[a, w] = c0 + alpha[a] + beta[w] + sum_{r < R} U[r, a] * V[r, w]        (for all 65536 pairs)

with U, V int8 arrays of shape (R, 256) and alpha, beta int64 vectors (their values fit int32),
c0 an int. A kernel computes the sum as one int8 GEMM over the reduction axis extended R times
(U gathered by activation code, V by weight code) with int32 accumulation, and adds the free
terms: alpha summed over the activations, beta over the weights, c0 times the reduction length.
There are no per-term scales: every factor of 128, 255, ... is folded into the int8 entries.

`decompose(table)` tries several routes, verifies each candidate exactly (int64, all 65536 pairs)
and returns the one with the fewest terms R, or None when every route needs more than max_terms.
See docs/decomposition.md for the routes and the plane split. Depends on numpy (and the
multiplier module's exact products) only.

Command line: python -m tensorflow_approx.multipliers.decompose DIR_OR_SPEC ... prints a table of
term counts and the total time.
"""

import math
import os
import sys
import time

import numpy as np

from tensorflow_approx.multipliers.multiplier import exact_products, operand_values

_CODES = np.arange(256, dtype=np.int64)
_PRIME = 2147483629              # < 2^31: products of residues fit int64
_SAFE = 1 << 40                  # coefficient magnitude above which a route gives up
_DEFAULT_MAX_TERMS = 64


class Decomposition:
    """An exact decomposition T[a, w] = c0 + alpha[a] + beta[w] + sum_r U[r, a] * V[r, w].

    Attributes:
      U, V: int8 arrays of shape (terms, 256): U[r, a] for activation code a, V[r, w] for weight
        code w (codes are table indices; for signed tables, two's-complement bit patterns).
      alpha, beta: int64 arrays of shape (256,) (values fit int32), the per-row and per-column
        free terms; c0: int, the constant.
      route: str, the route that produced it (see docs/decomposition.md).
      signed: bool, whether the table held signed (int16) products.
      rank: the rank of T modulo row/column terms (a lower bound on `terms` for any exact
        decomposition of this form).
    """

    def __init__(self, U, V, c0, alpha, beta, route, signed=False, rank=None):
        self.U = np.asarray(U, dtype=np.int8).reshape(-1, 256)
        self.V = np.asarray(V, dtype=np.int8).reshape(-1, 256)
        self.c0 = int(c0)
        self.alpha = np.asarray(alpha, dtype=np.int64)
        self.beta = np.asarray(beta, dtype=np.int64)
        self.route = route
        self.signed = bool(signed)
        self.rank = rank

    @property
    def terms(self):
        """R, the number of int8 product terms."""
        return int(self.U.shape[0])

    def reconstruct(self):
        """The table's product values from the decomposition: int64 array of shape (65536,)."""
        full = (self.c0 + self.alpha[:, None] + self.beta[None, :]
                + self.U.astype(np.int64).T @ self.V.astype(np.int64))
        return full.reshape(-1)

    def describe(self):
        rank = "" if self.rank is None else f", rank {self.rank}"
        return (f"{self.terms} int8 term(s) via {self.route}{rank}: T[a,w] = c0 + alpha[a] + "
                f"beta[w] + sum_r U[r,a]*V[r,w] (c0 = {self.c0}, |alpha| <= "
                f"{int(np.abs(self.alpha).max())}, |beta| <= {int(np.abs(self.beta).max())})")

    def __repr__(self):
        return f"Decomposition(terms={self.terms}, route={self.route!r})"


# ----- inputs ----------------------------------------------------------------------------------------

def _values(table, signed):
    """(int64 (256, 256) product values, signed flag) from a Multiplier or an integer array."""
    from tensorflow_approx.multipliers.multiplier import Multiplier
    if isinstance(table, Multiplier):
        return table.products, table.signed
    arr = np.asarray(table)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"table: expected a Multiplier or an integer array, got dtype {arr.dtype}")
    if arr.shape not in ((256, 256), (65536,)):
        raise ValueError(f"table: expected shape (256, 256) or (65536,), got {arr.shape}")
    t = arr.reshape(256, 256).astype(np.int64)
    signed = bool(signed)
    if signed and arr.dtype == np.uint16:      # stored int16 bit patterns
        t = t - 65536 * (t >= 32768)
    if np.abs(t).max() >= 1 << 40:
        raise ValueError("table: values beyond 2^40 are not products of 8-bit codes")
    return t, signed


# ----- exact arithmetic helpers ---------------------------------------------------------------------

def _dd(M):
    """M with row 0 and column 0 subtracted: equal to M modulo c0 + alpha[a] + beta[w]."""
    return M - M[:, :1] - M[:1, :] + M[0, 0]


class _ModBasis:
    """Incremental linear independence modulo a prime (an echelon basis of residues)."""

    def __init__(self, n=256, p=_PRIME):
        self.p, self.rows, self.pivots = p, [], []

    def reduce(self, x):
        p = self.p
        x = np.mod(x, p)
        for row, c in zip(self.rows, self.pivots):
            f = int(x[c])
            if f:
                x = (x - (f * row) % p) % p
        return x

    def add(self, x):
        """Adds x when independent of the basis; returns True then."""
        x = self.reduce(x)
        nz = np.flatnonzero(x)
        if len(nz) == 0:
            return False
        c = int(nz[0])
        x = (x * pow(int(x[c]), self.p - 2, self.p)) % self.p
        self.rows.append(x)
        self.pivots.append(c)
        return True


def rank_mod_p(M, p=_PRIME, stop=None):
    """Rank of an integer matrix modulo the prime p (a lower bound on its rank over Q).

    stop: return as soon as the rank exceeds it (the result is then stop + 1).
    """
    A = np.mod(np.asarray(M, dtype=np.int64), p)
    n, m = A.shape
    r = 0
    for c in range(m):
        if r == n:
            break
        nz = np.flatnonzero(A[r:, c])
        if len(nz) == 0:
            continue
        i = r + int(nz[0])
        A[[r, i]] = A[[i, r]]
        A[r] = (A[r] * pow(int(A[r, c]), p - 2, p)) % p
        f = A[:, c].copy()
        f[r] = 0
        rows = np.flatnonzero(f)
        if len(rows):
            A[rows] = (A[rows] - (f[rows, None] * A[r][None, :]) % p) % p
        r += 1
        if stop is not None and r > stop:
            return r
    return r


def moebius(M):
    """Bit-monomial (Moebius) coefficients over the row index: C[S] = sum_{T subset S} +-M[T].

    M[a] = sum over subsets S of bits(a) of C[S], i.e. M[a, w] = sum_S [S subset bits(a)] C[S, w].
    """
    C = np.array(M, dtype=np.int64)
    for i in range(8):
        hi = (_CODES >> i) & 1 == 1
        C[hi] -= C[_CODES[hi] ^ (1 << i)]
    return C


# ----- splitting one product u(a) v(w) into int8 planes ---------------------------------------------

def _chunks(x, width=255):
    """x >= 0 as a sum of vectors with entries in 0..width (clipped slices)."""
    top = int(x.max())
    return [np.clip(x - width * j, 0, width) for j in range(max(1, -(-top // width)))]


def _split_fixed(u, v):
    """Planes for u v^T with u, v >= 0 (min 0), given this balance. Returns [(u_i, v_i)]."""
    du, dv = int(u.max()), int(v.max())
    if du <= 255 and dv <= 255:
        return [(u, v)]
    if du > 255 and dv > 255:
        return [p for part in _chunks(u) for p in _split_fixed(part, v)]
    if du > 255:
        return [(b, a) for a, b in _split_fixed(v, u)]
    # du <= 255 < dv: v = r + s * q with s * u still within 0..255; q in chunks of 255.
    s = 255 // du
    r, q = v % s, v // s
    planes = [(u, r)] if r.any() else []
    return planes + [(s * u, part) for part in _chunks(q)]


def _balances(g, du, dv):
    """Divisors d of g worth trying as the share of g put on u: those that bring u's range
    (du * d) or v's (dv * g / d) within 255, plus 1 and g."""
    small = np.arange(1, 256, dtype=np.int64)
    ds = {1, g}
    ds.update(int(d) for d in small[(g % small == 0) & (small * du <= 255)])
    ds.update(g // int(d) for d in small[(g % small == 0) & (small * dv <= 255)])
    return sorted(ds)


def split_term(u, v):
    """One product u(a) v(w) (integer vectors, any range) as int8-ready planes.

    Returns [(u_i, v_i)] with entries in 0..255 whose products sum to u v^T modulo row/column
    terms (shifting u or v by a constant only changes alpha/beta). The common factor of u and v
    is moved between them to need the fewest planes. An empty list when u or v is constant.
    """
    u = np.asarray(u, dtype=np.int64)
    v = np.asarray(v, dtype=np.int64)
    u, v = u - u.min(), v - v.min()
    gu, gv = int(np.gcd.reduce(u)), int(np.gcd.reduce(v))
    if gu == 0 or gv == 0:
        return []
    u, v, g = u // gu, v // gv, gu * gv
    best = None
    for d in _balances(g, int(u.max()), int(v.max())):
        planes = _split_fixed(u * d, v * (g // d))
        if best is None or len(planes) < len(best):
            best = planes
            if len(best) == 1:
                break
    return best


# ----- routes: each gives [(u, v)] integer pairs with T == sum u v^T modulo free terms --------------

def _moebius_pairs(C, over_w):
    """Bit-monomial route over a (or w): one indicator-times-coefficients pair per subset.
    C: moebius(M) over a, or moebius(M.T) over w."""
    pairs = []
    for S in range(1, 256):
        if np.ptp(C[S]) == 0:
            continue   # constant coefficients: a function of one operand only, a free term
        ind = ((_CODES & S) == S).astype(np.int64)
        pairs.append((C[S], ind) if over_w else (ind, C[S]))
    return pairs


def _primitive(x):
    x = x - x[0]
    g = int(np.gcd.reduce(x))
    return x // g if g else None


def _candidates(D, extra):
    """Distinct primitive nonzero vectors among D's rows and `extra`, smallest range first."""
    seen, out = set(), []
    for x in list(D) + list(extra):
        x = _primitive(x)
        if x is None:
            continue
        if x[np.flatnonzero(x)[0]] < 0:
            x = -x
        key = x.tobytes()
        if key not in seen:
            seen.add(key)
            out.append(x)
    out.sort(key=lambda x: (int(np.ptp(x)), int(np.abs(x).sum())))
    return out


def _hnf_rows(rows, n):
    """A basis (n lists of Python ints) of the lattice generated by integer `rows` of length n,
    by gcd row operations (an echelon form; the rows span a rank-n lattice)."""
    rows = [list(r) for r in rows if any(r)]
    basis = []
    for c in range(n):
        live = [r for r in rows if r[c]]
        rest = [r for r in rows if not r[c]]
        while len(live) > 1:
            live.sort(key=lambda r: abs(r[c]))
            piv = live[0]
            nxt = [piv]
            for r in live[1:]:
                f = r[c] // piv[c]
                r = [x - f * y for x, y in zip(r, piv)]
                (nxt if r[c] else rest).append(r)
            live = nxt
        if not live:
            return None
        basis.append(live[0])
        rows = [r for r in rest if any(r)]
    return basis


def _lll(B, delta=0.75):
    """LLL-reduces the integer rows of B (unimodular integer row operations; floating-point
    Gram-Schmidt only decides which operations to apply, so the lattice is exactly kept)."""
    B = [np.array(b, dtype=np.int64) for b in B]
    n, k = len(B), 1
    def gs():
        Q, mu = [], np.zeros((n, n))
        for i in range(n):
            v = B[i].astype(float)
            for j in range(i):
                mu[i, j] = B[i].astype(float) @ Q[j] / (Q[j] @ Q[j])
                v = v - mu[i, j] * Q[j]
            Q.append(v)
        return Q, mu
    Q, mu = gs()
    steps = 0
    while k < n and steps < 5000:
        steps += 1
        for j in range(k - 1, -1, -1):
            m = int(round(mu[k, j]))
            if m:
                B[k] = B[k] - m * B[j]
                Q, mu = gs()
        if Q[k] @ Q[k] >= (delta - mu[k, k - 1] ** 2) * (Q[k - 1] @ Q[k - 1]):
            k += 1
        else:
            B[k], B[k - 1] = B[k - 1], B[k]
            Q, mu = gs()
            k = max(k - 1, 1)
    return np.array(B)


def _row_lattice_basis(D, B, J):
    """An integer basis of the lattice generated by D's rows, given a rational basis B of D's row
    space whose columns J are invertible: coordinates of D's rows in B (exact fractions), their
    lattice by _hnf_rows, mapped back and LLL-reduced. None when impossible."""
    from fractions import Fraction
    r = len(B)
    A = [[Fraction(int(B[i][j])) for j in J] + [Fraction(int(i == k)) for k in range(r)]
         for i in range(r)]
    for c in range(r):                       # Gauss-Jordan: A[:, :r] -> I, A[:, r:] -> inverse
        p = next(i for i in range(c, r) if A[i][c])
        A[c], A[p] = A[p], A[c]
        inv = 1 / A[c][c]
        A[c] = [x * inv for x in A[c]]
        for i in range(r):
            if i != c and A[i][c]:
                f = A[i][c]
                A[i] = [x - f * y for x, y in zip(A[i], A[c])]
    Binv = [row[r:] for row in A]
    rows = {tuple(int(x) for x in d[J]) for d in D if d.any()}
    coords = [[sum(Fraction(x) * Binv[i][k] for i, x in enumerate(row) if x) for k in range(r)]
              for row in rows]
    q = 1
    for row in coords:
        for x in row:
            q = q * x.denominator // math.gcd(q, x.denominator)
    H = _hnf_rows([[int(x * q) for x in row] for row in coords], r)
    if H is None:
        return None
    Bint = [[int(x) for x in b] for b in B]
    out = []
    for h in H:
        v = [sum(h[i] * Bint[i][w] for i in range(r)) for w in range(256)]
        if any(x % q for x in v) or max(abs(x) for x in v) // q >= _SAFE:
            return None
        out.append([x // q for x in v])
    return _lll(out)


def _rank_pairs(D, extra, rank):
    """Rank route: a row basis B of D chosen greedily among small integer vectors of its row space,
    the coefficients X (D = X B) solved and required to be integers. None when they are not."""
    basis = _ModBasis()
    chosen = []
    for x in _candidates(D, extra):
        if basis.add(x):
            chosen.append(x)
            if len(chosen) == rank:
                break
    if len(chosen) < rank:
        return None
    if rank == 0:
        return []
    B = np.array(chosen)
    J = basis.pivots                       # B[:, J] is invertible (it is modulo the prime)
    X = _coefficients(D, B, J)
    if X is None and rank <= 32:
        # Not integral: B spans a sublattice. Use a reduced basis of the rows' own lattice.
        B = _row_lattice_basis(D, B, J)
        if B is not None:
            check = _ModBasis()
            if all(check.add(b) for b in B):
                X = _coefficients(D, B, check.pivots)
    if X is None:
        return None
    return [(X[:, k], B[k]) for k in range(rank)]


def _coefficients(D, B, J):
    """The integer X with X B == D (verified exactly), or None."""
    X = np.linalg.solve(B[:, J].T.astype(float), D[:, J].T.astype(float)).T
    if not np.all(np.isfinite(X)) or np.abs(X).max() >= _SAFE:
        return None
    X = np.rint(X).astype(np.int64)
    if np.abs(B).max() * max(1, np.abs(X).max()) * len(B) >= 1 << 62:
        return None
    return X if np.array_equal(X @ B, D) else None


def _count(du, dv):
    """The number of planes _split_fixed gives for ranges du, dv (a remainder plane always
    counted: an upper bound, used to compare candidates quickly)."""
    if du <= 255 and dv <= 255:
        return 1
    if du > 255 and dv > 255:
        full, rest = divmod(du, 255)
        return full * _count(255, dv) + (_count(rest, dv) if rest else 0)
    if du > 255:
        return _count(dv, du)
    return 1 + -(-(dv // (255 // du)) // 255)


def _cost(u, v):
    """Quick plane count of the product u v^T (see split_term)."""
    u, v = u - u.min(), v - v.min()
    gu, gv = int(np.gcd.reduce(u)), int(np.gcd.reduce(v))
    if gu == 0 or gv == 0:
        return 0
    du, dv, g = int(u.max()) // gu, int(v.max()) // gv, gu * gv
    return min(_count(du * d, dv * (g // d)) for d in _balances(g, du, dv))


def _improve(pairs, rounds=2, seconds=0.4):
    """Unimodular clean-up of a rank route's pairs: v_k += m v_j, u_j -= m u_k (m = +-1) keeps
    sum u v^T and is kept when it lowers the plane count of terms j and k together."""
    deadline = time.perf_counter() + seconds
    pairs = [(np.asarray(u), np.asarray(v)) for u, v in pairs]
    cost = [_cost(u, v) for u, v in pairs]
    n = len(pairs)
    for _ in range(rounds):
        changed = False
        for k in range(n):
            if cost[k] <= 1:
                continue
            for j in range(n):
                if j == k or cost[k] <= 1 or time.perf_counter() > deadline:
                    continue
                for m in (1, -1):
                    for side in (0, 1):
                        (uj, vj), (uk, vk) = pairs[j], pairs[k]
                        if side == 0:      # v_k += m v_j, u_j -= m u_k
                            nj, nk = (uj - m * uk, vj), (uk, vk + m * vj)
                        else:              # u_k += m u_j, v_j -= m v_k
                            nj, nk = (uj, vj - m * vk), (uk + m * uj, vk)
                        cj, ck = _cost(*nj), _cost(*nk)
                        if cj + ck < cost[j] + cost[k]:
                            pairs[j], pairs[k], cost[j], cost[k] = nj, nk, cj, ck
                            changed = True
        if not changed:
            break
    return pairs


def _routes(T, signed, rank, max_terms):
    """Yields (route name, [(u, v)]) candidates."""
    v_exact = operand_values(signed)
    E = T - exact_products(signed)
    for base, M, prefix in (("table", T, []), ("error+exact", E, [(v_exact, v_exact)])):
        Ca, Cw = moebius(M), moebius(M.T)  # each once: the moebius and rank routes share them
        yield f"moebius-a/{base}", prefix + _moebius_pairs(Ca, over_w=False)
        yield f"moebius-w/{base}", prefix + _moebius_pairs(Cw, over_w=True)
        D = _dd(M)
        r = rank if base == "table" else rank_mod_p(D, stop=max_terms)
        if r <= max_terms:
            rows = _rank_pairs(D, Ca - Ca[:, :1], r)
            if rows is not None:
                yield f"rank-rows/{base}", prefix + _improve(rows)
            cols = _rank_pairs(D.T, Cw - Cw[:, :1], r)
            if cols is not None:
                yield f"rank-cols/{base}", prefix + _improve([(u, v) for v, u in cols])


def _build(T, planes, route, signed, rank):
    """int8 arrays and free terms from planes (entries 0..255), verified exactly; None if wrong."""
    n = len(planes)
    U = np.array([u - 128 for u, _ in planes], dtype=np.int64).reshape(n, 256)
    V = np.array([v - 128 for _, v in planes], dtype=np.int64).reshape(n, 256)
    if U.size and (U.min() < -128 or U.max() > 127 or V.min() < -128 or V.max() > 127):
        return None
    res = T - U.T @ V
    c0 = int(res[0, 0])
    alpha, beta = res[:, 0] - c0, res[0, :] - c0
    if not np.array_equal(res, c0 + alpha[:, None] + beta[None, :]):
        return None
    d = Decomposition(U.astype(np.int8), V.astype(np.int8), c0, alpha, beta, route, signed, rank)
    if not np.array_equal(d.reconstruct(), T.reshape(-1)):   # the final, independent check
        return None
    return d


def decompose(table, max_terms=_DEFAULT_MAX_TERMS, signed=False):
    """The exact int8 decomposition with the fewest terms found, or None above max_terms.

    table: a Multiplier (its product values are decomposed; signed tables as int16 values over
      two's-complement codes), or an integer array of shape (256, 256) or (65536,) holding product
      values in the (a << 8) | w order (uint16 with signed=True: int16 bit patterns).
    max_terms: the budget; None is returned when no route needs at most this many terms. When the
      rank alone exceeds it, None comes back after one modular elimination (a fraction of a second).
    Every returned decomposition has been reconstructed in int64 and compared with the table on
    all 65536 pairs.
    """
    if isinstance(max_terms, bool) or not isinstance(max_terms, (int, np.integer)) or max_terms < 0:
        raise ValueError(f"max_terms: expected an int >= 0, got {max_terms!r}")
    T, signed = _values(table, signed)
    rank = rank_mod_p(_dd(T), stop=max_terms)
    if rank > max_terms:
        return None
    best = None
    for route, pairs in _routes(T, signed, rank, max_terms):
        planes = []
        for u, v in pairs:
            planes += split_term(u, v)
            if len(planes) > max_terms or (best is not None and len(planes) >= best.terms):
                break
        else:  # the loop breaks when the planes reach best.terms: this route does better
            d = _build(T, planes, route, signed, rank)
            if d is not None:
                best = d
                if best.terms == rank:
                    break          # cannot do better than the rank
    return best


def term_count(table, max_terms=_DEFAULT_MAX_TERMS):
    """decompose(table).terms, or None over the budget."""
    d = decompose(table, max_terms=max_terms)
    return None if d is None else d.terms


# ----- command line ----------------------------------------------------------------------------------

def _specs(args):
    for spec in args:
        if os.path.isdir(spec):
            for f in sorted(os.listdir(spec)):
                if f.lower().endswith((".bin", ".npy", ".c")):
                    yield os.path.join(spec, f)
        else:
            yield spec


def main(argv=None, out=None):
    """python -m tensorflow_approx.multipliers.decompose [--max-terms N] DIR|SPEC ..."""
    import argparse
    from tensorflow_approx.multipliers import get
    out = out or sys.stdout
    parser = argparse.ArgumentParser(prog="python -m tensorflow_approx.multipliers.decompose",
                                     description="int8 term counts of exact table decompositions")
    parser.add_argument("specs", nargs="+", metavar="DIR|NAME|PATH")
    parser.add_argument("--max-terms", type=int, default=_DEFAULT_MAX_TERMS)
    args = parser.parse_args(argv)
    rows = [("name", "rank", "terms", "route", "seconds")]
    start = time.perf_counter()
    counts = []
    for spec in _specs(args.specs):
        m = get(spec)
        t = time.perf_counter()
        d = decompose(m, max_terms=args.max_terms)
        dt = time.perf_counter() - t
        rank = d.rank if d is not None else rank_mod_p(_dd(m.products))
        counts.append(None if d is None else d.terms)
        rows.append((m.name, str(rank), "-" if d is None else str(d.terms),
                     "-" if d is None else d.route, f"{dt:.2f}"))
    total = time.perf_counter() - start
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        out.write("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |\n")
    ok = [c for c in counts if c is not None]
    out.write(f"\n{len(counts)} table(s) in {total:.1f} s; within 8/16/32/{args.max_terms} terms: "
              f"{sum(c <= 8 for c in ok)}/{sum(c <= 16 for c in ok)}/{sum(c <= 32 for c in ok)}/"
              f"{len(ok)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
