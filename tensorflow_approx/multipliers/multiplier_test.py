"""Multiplier: table layout, .bin/.npy round trips, from_function, and clear errors on bad input."""

import os
import struct

import numpy as np
import pytest

from tensorflow_approx.multipliers import drum, get
from tensorflow_approx.multipliers.multiplier import (Multiplier, exact_products, from_function,
                                                      operand_values)


def asymmetric():
    # a * w + a fits 16 bits (max 65535) and tells the row operand from the column operand.
    return from_function(lambda a, w: a * w + a, name="asym")


def test_row_is_the_first_operand_in_table_lut_and_bin(tmp_path):
    m = asymmetric()
    assert m.table[200, 3] == 200 * 3 + 200 and m.table[3, 200] == 3 * 200 + 3
    assert m.lut[(200 << 8) | 3] == 800
    path = m.save(str(tmp_path / "asym.bin"))
    data = open(path, "rb").read()
    assert len(data) == 131072
    for a, w in [(0, 0), (200, 3), (3, 200), (255, 255), (1, 254)]:
        (value,) = struct.unpack_from("<H", data, 2 * ((a << 8) | w))
        assert value == a * w + a, (a, w)


def test_bin_npy_object_round_trips(tmp_path):
    m = drum(5)
    bin1 = m.save(str(tmp_path / "d.bin"))
    assert m.path == bin1
    npy = Multiplier.load(bin1).save(str(tmp_path / "d.npy"))
    back = Multiplier.load(npy)
    assert back == m and back.path is None and back.name == "d"
    bin2 = back.save(str(tmp_path / "d2.bin"))
    assert open(bin1, "rb").read() == open(bin2, "rb").read()
    loaded = Multiplier.load(bin2, name="drum5_copy")
    assert loaded.name == "drum5_copy" and loaded.path == bin2
    assert np.load(npy).dtype == np.uint16 and np.load(npy).shape == (256, 256)


def test_save_without_path_writes_a_reusable_bin():
    m = drum(4)
    p1, p2 = m.save(), drum(4).save()
    assert p1 == p2 and p1.endswith(".bin") and m.path == p1
    assert Multiplier.load(p1) == m
    assert drum(5).save() != p1


def test_flat_npy_and_big_endian_npy_are_accepted(tmp_path):
    m = asymmetric()
    np.save(tmp_path / "flat.npy", m.lut.copy())
    np.save(tmp_path / "be.npy", m.table.astype(">u2"))
    assert Multiplier.load(str(tmp_path / "flat.npy")) == m
    assert Multiplier.load(str(tmp_path / "be.npy")) == m


def test_metrics_csv_beside_a_table_becomes_metadata(tmp_path):
    drum(6).save(str(tmp_path / "mine.bin"))
    (tmp_path / "METRICS.csv").write_text("name,MAE,PDK45_PWR\nother,1,2\nmine,233,0.125\n")
    m = Multiplier.load(str(tmp_path / "mine.bin"))
    assert m.metadata["MAE"] == 233.0 and m.metadata["PDK45_PWR"] == 0.125
    assert m.metadata["source"] == str(tmp_path / "mine.bin")


def test_metrics_csv_that_is_not_utf8_warns_and_the_table_still_loads(tmp_path):
    drum(6).save(str(tmp_path / "mine.bin"))
    (tmp_path / "METRICS.csv").write_bytes("name,MAE,note\nmine,233,Dürr\n".encode("latin-1"))
    with pytest.warns(UserWarning, match=r"METRICS\.csv' is unreadable .*loading 'mine' without "
                                         r"its published metrics"):
        m = Multiplier.load(str(tmp_path / "mine.bin"))
    assert m == drum(6) and "MAE" not in m.metadata


def test_metrics_csv_with_a_byte_order_mark(tmp_path):
    drum(6).save(str(tmp_path / "mine.bin"))
    (tmp_path / "METRICS.csv").write_bytes("\ufeffname,MAE\nmine,233\n".encode("utf-8"))
    assert Multiplier.load(str(tmp_path / "mine.bin")).metadata["MAE"] == 233.0


@pytest.mark.parametrize("ext", [".bin", ".npy"])
def test_failed_save_names_the_destination_and_leaves_no_temporary(tmp_path, ext):
    m = drum(6)
    missing = str(tmp_path / "no_such_dir" / f"t{ext}")
    with pytest.raises(FileNotFoundError) as info:
        m.save(missing)
    assert info.value.filename == missing and ".tmp" not in str(info.value)
    directory = tmp_path / f"taken{ext}"          # the rename onto a directory fails
    directory.mkdir()
    with pytest.raises(OSError) as info:
        m.save(str(directory))
    assert info.value.filename == str(directory) and ".tmp" not in str(info.value)
    assert sorted(os.listdir(tmp_path)) == [f"taken{ext}"]   # no temporary left behind
    assert m.path is None


@pytest.mark.parametrize("size", [0, 131070, 131074, 65536])
def test_wrong_size_bin_is_an_error_naming_the_path(tmp_path, size):
    path = tmp_path / "bad.bin"
    path.write_bytes(b"\0" * size)
    with pytest.raises(ValueError, match=rf"bad\.bin.*has {size} bytes.*131072"):
        Multiplier.load(str(path))


def test_missing_directory_and_wrong_extension_are_errors(tmp_path):
    with pytest.raises(ValueError, match="nope.bin' does not exist"):
        Multiplier.load(str(tmp_path / "nope.bin"))
    os.mkdir(tmp_path / "dir.bin")
    with pytest.raises(ValueError, match="dir.bin' is not a regular file"):
        Multiplier.load(str(tmp_path / "dir.bin"))
    with pytest.raises(ValueError, match=r"must end in \.bin or \.npy"):
        Multiplier.load(str(tmp_path / "t.txt"))
    with pytest.raises(ValueError, match=r"must end in \.bin or \.npy"):
        drum(6).save(str(tmp_path / "t.txt"))


@pytest.mark.parametrize("array,match", [
    (np.zeros((256, 256), np.int32), "holds dtype int32; a table is uint16"),
    (np.zeros((256, 256), np.float64), "holds dtype float64"),
    (np.zeros((128, 512), np.uint16), r"holds shape \(128, 512\)"),
])
def test_bad_npy_is_an_error_naming_the_path(tmp_path, array, match):
    path = tmp_path / "bad.npy"
    np.save(path, array)
    with pytest.raises(ValueError, match=f"bad.npy.*{match}"):
        Multiplier.load(str(path))


def test_unreadable_npy_is_an_error(tmp_path):
    path = tmp_path / "junk.npy"
    path.write_bytes(b"not numpy")
    with pytest.raises(ValueError, match="junk.npy' is not a readable .npy"):
        Multiplier.load(str(path))


def test_table_values_are_checked():
    big = exact_products().copy()
    big[255, 255] = 65536
    with pytest.raises(ValueError, match=r"value 65536 at \(a=255, w=255\) is outside 0\.\.65535"):
        Multiplier("big", big)
    neg = exact_products().copy()
    neg[1, 2] = -1
    with pytest.raises(ValueError, match=r"value -1 at \(a=1, w=2\)"):
        Multiplier("neg", neg)
    with pytest.raises(TypeError, match="expected an integer array, got dtype float64"):
        Multiplier("f", exact_products().astype(np.float64))
    with pytest.raises(ValueError, match=r"expected shape \(256, 256\) or \(65536,\)"):
        Multiplier("s", np.zeros((255, 256), np.int64))
    with pytest.raises(TypeError, match="name: expected a non-empty str"):
        Multiplier("", exact_products())
    with pytest.raises(TypeError, match="signed: expected a bool"):
        Multiplier("x", exact_products(), signed=1)


def test_table_is_read_only_and_equality_is_by_table():
    m = drum(6)
    with pytest.raises(ValueError):
        m.table[0, 0] = 1
    assert m == Multiplier("other name", m.table)
    assert m != drum(5)


def test_signed_tables_hold_int16_bit_patterns():
    assert list(operand_values(True)[[0, 1, 127, 128, 255]]) == [0, 1, 127, -128, -1]
    m = from_function(lambda a, w: a * w, name="s8", signed=True)
    assert m.signed and m.is_exact()
    assert m.table[255, 1] == 0xFFFF and m.products[255, 1] == -1
    assert m.table[128, 128] == 16384 and m.products[128, 255] == 128
    # Stored bits (uint16) give the same multiplier as the values they encode.
    assert Multiplier("bits", m.table, signed=True) == m
    with pytest.raises(ValueError, match="outside -32768..65535"):
        from_function(lambda a, w: a * w - 40000, signed=True)


def test_from_function_checks_what_f_returns():
    assert from_function(lambda a, w: np.floor(a * w / 2.0)).products[3, 3] == 4
    assert (from_function(lambda a, w: 7).products == 7).all()  # a constant broadcasts
    with pytest.raises(ValueError, match=r"f: returned non-integer values \(first: 0\.333.* at "
                                         r"\(a=1, w=1\)\)"):
        from_function(lambda a, w: a * w / 3.0)
    with pytest.raises(ValueError, match=r"f: returned non-integer values \(first: nan at "):
        from_function(lambda a, w: np.where(a > 5, np.nan, 1.0))
    with pytest.raises(ValueError, match="not broadcastable to .256, 256."):
        from_function(lambda a, w: (a * w)[:10, :10])
    with pytest.raises(TypeError, match="f: expected a callable"):
        from_function(42)
    with pytest.raises(TypeError, match="f: returned dtype bool"):
        from_function(lambda a, w: a > w)


def test_get_resolves_names_and_paths(tmp_path):
    assert get("drum6") == drum(6)
    path = drum(6).save(str(tmp_path / "x.npy"))
    assert get(path) == drum(6)
    with pytest.raises(ValueError, match="'nosuch' is neither a family name"):
        get("nosuch")
    with pytest.raises(TypeError, match="spec: expected a family name or a path"):
        get(3)
