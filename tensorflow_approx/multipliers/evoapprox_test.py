"""Computed metrics of the 36 EvoApprox tables agree with the values printed in their C headers.

Signed EvoApprox C files declared with uint8_t operands, where present beside the tables, are read
as signed (their headers' metrics say so).

The tables and METRICS.csv live outside the repository (<repo root>/../shared/axmul_8x8, or
$TFAPPROX_AXMUL_DIR); the tests skip with a reason when they are absent.
"""

import csv
import io
import os
import shutil

import pytest

from tensorflow_approx.multipliers import Multiplier, cli, from_c_source

# The METRICS.csv columns that are error metrics, and our labels for them (the same names).
METRIC_COLUMNS = ("MAE%", "MAE", "WCE%", "WCE", "WCRE%", "EP%", "MRE%", "MSE")


def find_axmul_dir():
    """$TFAPPROX_AXMUL_DIR, else ../shared/axmul_8x8 next to the repository of this file.

    The real path comes first: under Bazel this file sits in a runfiles tree whose symlinks lead
    back to the source tree.
    """
    candidates = [os.environ.get("TFAPPROX_AXMUL_DIR")]
    for here in (os.path.realpath(__file__), os.path.abspath(__file__)):
        repo_root = os.path.dirname(os.path.dirname(os.path.dirname(here)))
        candidates.append(os.path.join(repo_root, os.pardir, "shared", "axmul_8x8"))
    for c in candidates:
        if c and os.path.isfile(os.path.join(c, "METRICS.csv")):
            return os.path.normpath(c)
    return None


AXMUL = find_axmul_dir()
pytestmark = pytest.mark.skipif(
    AXMUL is None, reason="EvoApprox tables not found: no ../shared/axmul_8x8/METRICS.csv next to "
                          "the repository and $TFAPPROX_AXMUL_DIR unset")


def rows():
    with open(os.path.join(AXMUL, "METRICS.csv"), newline="") as f:
        return list(csv.DictReader(f))


def printed_half_unit(text):
    """Half a unit of the last printed digit of a number such as "0.62", "284" or "15608.397e3"."""
    mantissa, _, exponent = text.lower().partition("e")
    decimals = len(mantissa.partition(".")[2])
    return 0.5 * 10.0 ** (int(exponent or 0) - decimals)


def test_printed_half_unit():
    assert printed_half_unit("284") == 0.5
    assert printed_half_unit("0.00095") == pytest.approx(5e-6)
    assert printed_half_unit("15608.397e3") == pytest.approx(0.5)
    assert printed_half_unit("55767.68e2") == pytest.approx(0.5)
    assert printed_half_unit("6.0") == pytest.approx(0.05)


def test_all_36_tables_match_their_published_metrics():
    table_rows = rows()
    assert len(table_rows) == 36
    assert set(table_rows[0]) >= set(METRIC_COLUMNS)
    mismatches = []
    for row in table_rows:
        m = Multiplier.load(os.path.join(AXMUL, row["name"] + ".bin"))
        computed = m.metrics().as_dict()
        for col in METRIC_COLUMNS:
            printed = row[col]
            # A tiny slack on top of half a unit: printed ties (0.625 -> "0.62") sit exactly on it.
            if abs(computed[col] - float(printed)) > printed_half_unit(printed) * (1 + 1e-9):
                mismatches.append(f"{row['name']} {col}: computed {computed[col]!r}, "
                                  f"printed {printed}")
    assert not mismatches, "\n".join(mismatches)


def test_exact_table_and_published_metadata():
    m = Multiplier.load(os.path.join(AXMUL, "mul8u_1JFF.bin"))
    assert m.is_exact()
    assert m.metadata["PDK45_PWR"] == 0.391 and m.metadata["MAE"] == 0.0
    assert m.path.endswith("mul8u_1JFF.bin")
    # Most EvoApprox tables are not symmetric: operand order matters.
    tables = [Multiplier.load(os.path.join(AXMUL, r["name"] + ".bin")).table for r in rows()]
    asymmetric = [t for t in tables if (t != t.T).any()]
    assert len(asymmetric) >= 30


def test_info_prints_computed_next_to_published():
    out = io.StringIO()
    assert cli.main(["info", os.path.join(AXMUL, "mul8u_JV3.bin")], out=out) == 0
    lines = {line.split()[0]: line.split()[1:] for line in out.getvalue().splitlines() if line}
    assert lines["metric"][:2] == ["value", "published"]
    assert lines["WCRE%"][:2] == ["7100", "7100"]
    assert lines["MAE"][:2] == ["1409", "1409"]
    assert lines["bias"][1] == "-"           # not published by EvoApprox
    assert "PDK45_PWR" in out.getvalue()


@pytest.mark.parametrize("name", ["mul8s_1L2H", "mul8s_1L1G", "mul8s_1L2D"])
def test_signed_c_files_declared_unsigned_are_read_as_signed(name):
    path = os.path.join(AXMUL, name + ".c")
    if not os.path.isfile(path):
        pytest.skip(f"{name}.c is not in {AXMUL}")
    if not any(shutil.which(c) for c in ("cc", "gcc", "clang")):
        pytest.skip("no C compiler installed")
    with pytest.warns(UserWarning, match=f"{name} is declared unsigned but read as signed"):
        m = from_c_source(path)
    assert m.signed
    computed = m.metrics().as_dict()
    for col in ("MAE", "WCE", "MSE", "EP%", "MRE%", "WCRE%"):
        # The header's digits are not kept: a percent of slack covers its rounding.
        assert computed[col] == pytest.approx(m.metadata[col], rel=0.01, abs=0.5), col
