"""The command line, run as `python -m tensorflow_approx.multipliers` in a subprocess."""

import csv
import importlib.util
import io
import os
import subprocess
import sys

import numpy as np
import pytest

from tensorflow_approx.multipliers import FAMILIES, Multiplier, drum, exact, family
from tensorflow_approx.multipliers.metrics import format_value

# The directory holding the tensorflow_approx package, found from this file (not the cwd).
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=PACKAGE_PARENT)
    return subprocess.run([sys.executable, "-m", "tensorflow_approx.multipliers", *args],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


def test_list_prints_every_family_and_table_files(tmp_path):
    drum(6).save(str(tmp_path / "d6.bin"))
    (tmp_path / "notes.txt").write_text("x")
    r = run("list", str(tmp_path))
    assert r.returncode == 0, r.stderr
    first_words = [line.split()[0] for line in r.stdout.splitlines() if line.strip()]
    for fam in FAMILIES:
        assert fam.pattern in first_words
    assert "1 table file(s)" in r.stdout and "d6.bin" in r.stdout and "notes.txt" not in r.stdout


def test_info_prints_the_metrics(tmp_path):
    r = run("info", "drum6", cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    values = {line.split()[0]: line.split()[1] for line in r.stdout.splitlines() if line.strip()}
    md = drum(6).metrics().as_dict()
    assert values["name:"] == "drum6"
    for label in ("MAE", "MAE%", "WCE", "EP%", "MRE%", "WCRE%", "MSE", "bias", "std"):
        assert values[label] == format_value(md[label]), label
    assert "Hashemi" in r.stdout
    assert values["terms:"] == "1"     # drum6 = r(a) * r(w): one int8 term


def test_info_and_compare_show_the_term_count(tmp_path):
    rng = np.random.default_rng(0)
    Multiplier("noise", rng.integers(0, 65536, (256, 256))).save(str(tmp_path / "noise.bin"))
    r = run("info", str(tmp_path / "noise.bin"))
    assert r.returncode == 0, r.stderr
    assert "terms:   -  (exact int8 decomposition: over 64 terms)" in r.stdout
    r = run("compare", "exact", "optrunc3", str(tmp_path / "noise.bin"))
    assert r.returncode == 0, r.stderr
    assert [line.split()[-1] for line in r.stdout.splitlines()] == ["terms", "1", "1", "-"]


def test_convert_family_and_c_source_to_bin(tmp_path):
    out = tmp_path / "bam.bin"
    r = run("convert", "bam_h1_v6", str(out))
    assert r.returncode == 0, r.stderr
    assert f"wrote {out}: bam_h1_v6" in r.stdout
    assert Multiplier.load(str(out)) == family("bam_h1_v6")

    src = tmp_path / "m.c"
    src.write_text("#include <stdint.h>\nuint16_t mul8u_X(uint8_t a, uint8_t b) { return a * b; }\n")
    r = run("convert", str(src), str(tmp_path / "c.npy"))
    assert r.returncode == 0, r.stderr
    assert Multiplier.load(str(tmp_path / "c.npy")) == exact()


def test_convert_rejects_other_destinations(tmp_path):
    r = run("convert", "drum6", str(tmp_path / "x.txt"))
    assert r.returncode == 2
    assert "dst:" in r.stderr and "x.txt" in r.stderr
    assert not (tmp_path / "x.txt").exists()


def test_compare_prints_one_row_per_multiplier(tmp_path):
    path = drum(4).save(str(tmp_path / "mine.bin"))
    r = run("compare", "exact", "drum6", path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:3] == ["name", "MAE", "MAE%"]
    assert [line.split()[0] for line in lines[1:]] == ["exact", "drum6", "mine"]
    assert lines[1].split()[1:] == ["0"] * 10 + ["1"]       # metrics, then the term count
    assert lines[0].split()[-1] == "terms"


def test_compare_csv_is_exact_and_sortable(tmp_path):
    r = run("compare", "--csv", "--sort", "MRE%", "etm4", "exact", "roba", "drum6")
    assert r.returncode == 0, r.stderr
    table = list(csv.DictReader(io.StringIO(r.stdout)))
    assert [row["name"] for row in table] == ["exact", "drum6", "roba", "etm4"]
    for row in table:
        md = family(row["name"]).metrics().as_dict()
        assert {k: float(row[k]) for k in md} == md


def test_plot(tmp_path):
    out = tmp_path / "drum6.png"
    r = run("plot", "drum6", "-o", str(out))
    if importlib.util.find_spec("matplotlib") is None:
        assert r.returncode == 1
        assert "plot needs matplotlib" in r.stderr and "pip install matplotlib" in r.stderr
        assert not out.exists()
    else:
        assert r.returncode == 0, r.stderr
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args,message", [
    (("info", "nosuch"), "'nosuch' is neither a family name"),
    (("info", "drum0"), "k: 0 is outside 1..8"),
    (("compare", "exact", "--sort", "speed"), "--sort: 'speed' is not one of"),
    (("list", "/nonexistent/dir"), "'/nonexistent/dir' is not a directory"),
])
def test_bad_input_is_a_clear_error(args, message):
    r = run(*args)
    assert r.returncode == 2
    # The last line: where TensorFlow is installed, `import tensorflow_approx` loads it, and its
    # start-up logging comes first.
    assert r.stderr.splitlines()[-1].startswith("error: ") and message in r.stderr
    assert "Traceback" not in r.stderr
