"""Writes NAME.decomp beside every NAME.bin table of a folder that decomposes within the term budget.

The GPU harness (benchmarks/gpu/gpu_harness.cu) checks its decomposed tensor-core kernel with these
files: it verifies on the host that each reproduces its .bin exactly, then runs the kernel with it.

    PYTHONPATH=. python benchmarks/gpu/export_decompositions.py .gpu_tables [--max-terms 16]

File format (little-endian), the decomposition in the kernels' codes (for the unsigned .bin tables of
this folder, the table's own indices: lut[(a << 8) | w] = c0 + alpha[a] + beta[w] + sum_r u[r][a] v[r][w]):
    int32 terms
    int8  u[terms][256]
    int8  v[terms][256]
    int32 alpha[256]
    int32 beta[256]
    int64 c0
Tables are read as unsigned (the .bin files do not record signedness; signed tables would need their
codes translated to the kernels' codes, which this exporter does not do).
"""

import argparse
import os
import sys
import time

import numpy as np

from tensorflow_approx.multipliers import decompose, load


def write_decomposition(path, d):
    """Writes `d` (a Decomposition) in the harness's .decomp format; raises ValueError if it does not fit."""
    for name, values in (("alpha", d.alpha), ("beta", d.beta)):
        if values.min() < -2**31 or values.max() >= 2**31:
            raise ValueError(f"{name} does not fit int32")
    if not -2**63 <= d.c0 < 2**63:
        raise ValueError("c0 does not fit int64")
    payload = b"".join([
        np.array([d.terms], dtype="<i4").tobytes(),
        d.U.astype(np.int8).tobytes(),
        d.V.astype(np.int8).tobytes(),
        d.alpha.astype("<i4").tobytes(),
        d.beta.astype("<i4").tobytes(),
        np.array([d.c0], dtype="<i8").tobytes(),
    ])
    # Written beside and renamed, so that a harness reading the folder never sees half a file.
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(payload)
    os.replace(tmp, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description="export int8 decompositions of .bin tables for the GPU harness")
    parser.add_argument("folder", help="folder of .bin tables (e.g. .gpu_tables)")
    parser.add_argument("--max-terms", type=int, default=16,
                        help="term budget: tables needing more get no .decomp (default 16)")
    args = parser.parse_args(argv)
    names = sorted(f for f in os.listdir(args.folder) if f.lower().endswith(".bin"))
    if not names:
        print(f"no .bin tables in {args.folder}", file=sys.stderr)
        return 1
    written = 0
    start = time.perf_counter()
    for name in names:
        path = os.path.join(args.folder, name)
        stem = os.path.splitext(name)[0]
        out = os.path.join(args.folder, stem + ".decomp")
        t = time.perf_counter()
        m = load(path)
        d = decompose(m, max_terms=args.max_terms)
        seconds = time.perf_counter() - t
        if d is None:
            # A stale file from an earlier budget would otherwise be used as if it were current.
            if os.path.exists(out):
                os.remove(out)
            print(f"{stem}: more than {args.max_terms} terms ({seconds:.1f} s)")
            continue
        # decompose() verified the reconstruction; check once more against the file's uint16 values,
        # which is what the harness compares with.
        if not np.array_equal(d.reconstruct(), m.lut.astype(np.int64)):
            print(f"{stem}: decomposition does not reproduce the table (skipped)", file=sys.stderr)
            continue
        try:
            write_decomposition(out, d)
        except ValueError as e:
            print(f"{stem}: not written: {e}", file=sys.stderr)
            continue
        written += 1
        print(f"{stem}: {d.terms} term(s) via {d.route} ({seconds:.1f} s) -> {out}")
    print(f"{written} of {len(names)} table(s) written in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
