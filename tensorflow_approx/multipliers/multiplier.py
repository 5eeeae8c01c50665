"""The Multiplier object: a named 256 x 256 table of an approximate 8-bit multiplier.

Table layout (docs/semantics.md): entry [a, w] (flat index (a << 8) | w) is the approximate
product of activation code a (row, first operand) and weight code w (column, second operand), stored
as uint16. For a signed multiplier the codes are two's-complement int8 bit patterns (code 255 is -1)
and the entry is the int16 product's bit pattern; `products` gives the signed values.
"""

import csv
import hashlib
import os
import tempfile
import warnings

import numpy as np

TABLE_SHAPE = (256, 256)
TABLE_BYTES = 65536 * 2

_SIGNED_RANGE = (-32768, 65535)  # int16 products, or their uint16 bit patterns
_UNSIGNED_RANGE = (0, 65535)


def operand_values(signed):
    """The operand value of each code 0..255: int64 array of shape (256,).

    Unsigned: the code itself. Signed: the code read as a two's-complement int8 (128..255 -> -128..-1).
    """
    codes = np.arange(256, dtype=np.int64)
    return codes - 256 * (codes >= 128) if signed else codes


def exact_products(signed=False):
    """The exact product of every (row, column) operand pair: int64 array of shape (256, 256)."""
    v = operand_values(signed)
    return v[:, None] * v[None, :]


def _as_table(values, signed, what):
    """Checks `values` and returns it as a read-only uint16 (256, 256) table.

    A uint16 array is taken as stored bits. Any other integer array holds product values: 0..65535
    when unsigned; when signed, int16 products (-32768..32767) or their uint16 bit patterns.
    Why this split: .bin/.npy files hold bits, while functions naturally return signed products.
    """
    arr = np.asarray(values)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{what}: expected an integer array, got dtype {arr.dtype}")
    if arr.shape not in (TABLE_SHAPE, (65536,)):
        raise ValueError(f"{what}: expected shape (256, 256) or (65536,), got {arr.shape}")
    arr = arr.reshape(TABLE_SHAPE)
    if arr.dtype != np.uint16:
        lo, hi = _SIGNED_RANGE if signed else _UNSIGNED_RANGE
        wide = arr.astype(np.int64)
        bad = (wide < lo) | (wide > hi)
        if bad.any():
            a, w = np.argwhere(bad)[0]
            raise ValueError(
                f"{what}: value {int(wide[a, w])} at (a={a}, w={w}) is outside {lo}..{hi} "
                f"({'signed' if signed else 'unsigned'} 8x8 products must fit 16 bits)")
        arr = (wide & 0xFFFF).astype(np.uint16)
    table = np.array(arr, dtype=np.uint16, order="C")  # own copy, native byte order
    table.flags.writeable = False
    return table


class Multiplier:
    """An approximate 8x8 multiplier given by its table.

    Attributes:
      name: str, e.g. "drum6" or "mul8u_1JFF".
      table: read-only uint16 array of shape (256, 256); table[a, w] = product of activation code a
        (row, first operand) and weight code w (column); signed tables hold int16 bit patterns.
      signed: bool; codes are two's-complement int8 when True.
      metadata: dict, free-form (e.g. "PDK45_PWR", "PDK45_AREA", "PDK45_DELAY", "source", "doc").
      path: the .bin file holding exactly this table (the op's mul_map_file), or None until saved.
    """

    def __init__(self, name, table, signed=False, metadata=None):
        if not isinstance(name, str) or not name:
            raise TypeError(f"name: expected a non-empty str, got {name!r}")
        if not isinstance(signed, (bool, np.bool_)):
            raise TypeError(f"signed: expected a bool, got {signed!r}")
        if metadata is not None and not isinstance(metadata, dict):
            raise TypeError(f"metadata: expected a dict, got {type(metadata).__name__}")
        self.name = name
        self.signed = bool(signed)
        self.table = _as_table(table, self.signed, f"table of {name!r}")
        self.metadata = dict(metadata or {})
        self.path = None

    # ----- views -------------------------------------------------------------------------------------

    @property
    def lut(self):
        """The table flattened in the op's index order (a << 8) | w: uint16 array of shape (65536,)."""
        return self.table.reshape(-1)

    @property
    def products(self):
        """The product values: int64 array of shape (256, 256) (int16-interpreted when signed)."""
        t = self.table.astype(np.int64)
        return t - 65536 * (t >= 32768) if self.signed else t

    @property
    def errors(self):
        """Approximate minus exact product for every pair: int64 array of shape (256, 256)."""
        return self.products - exact_products(self.signed)

    def is_exact(self):
        """True when every entry equals the exact product."""
        return not self.errors.any()

    def metrics(self, activation_hist=None, weight_hist=None):
        """Error metrics (see tensorflow_approx.multipliers.metrics.error_metrics)."""
        from tensorflow_approx.multipliers.metrics import error_metrics
        return error_metrics(self, activation_hist, weight_hist)

    def __eq__(self, other):
        if not isinstance(other, Multiplier):
            return NotImplemented
        return self.signed == other.signed and np.array_equal(self.table, other.table)

    __hash__ = None  # mutable name/metadata; equality is by table

    def __repr__(self):
        kind = "signed" if self.signed else "unsigned"
        return f"Multiplier({self.name!r}, {kind}{', path=' + repr(self.path) if self.path else ''})"

    # ----- files -------------------------------------------------------------------------------------

    def save(self, path=None):
        """Writes the table and returns the path written.

        path: a ".bin" file (65536 little-endian uint16, the op's mul_map_file format) or a ".npy"
        file (uint16 array of shape (256, 256)). None writes a .bin named after the name and the
        table's hash in the temporary directory (the same table reuses the same file).
        Raises OSError naming `path` when it cannot be written (nothing is left behind then).
        """
        if path is None:
            digest = hashlib.sha256(self.table.tobytes()).hexdigest()[:16]
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in self.name)
            path = os.path.join(tempfile.gettempdir(), f"tfapprox_{safe}_{digest}.bin")
        path = os.fspath(path)
        ext = os.path.splitext(path)[1].lower()
        if ext == ".bin":
            _write_replacing(path, lambda f: f.write(self.table.astype("<u2").tobytes()))
            self.path = path
        elif ext == ".npy":
            _write_replacing(path, lambda f: np.save(f, self.table))
        else:
            raise ValueError(f"path: {path!r} must end in .bin or .npy")
        return path

    @classmethod
    def load(cls, path, name=None, signed=False):
        """Reads a .bin (131072 bytes, little-endian uint16) or .npy (uint16, 256x256 or 65536) file.

        A METRICS.csv beside a .bin/.npy file (columns name, MAE%, ..., PDK45_PWR, ...) with a row
        for the file's stem adds that row to the metadata (the published values of EvoApprox tables).
        """
        path = os.fspath(path)
        ext = os.path.splitext(path)[1].lower()
        if ext not in (".bin", ".npy"):
            raise ValueError(f"path: {path!r} must end in .bin or .npy")
        if not os.path.exists(path):
            raise ValueError(f"path: {path!r} does not exist")
        if not os.path.isfile(path):
            raise ValueError(f"path: {path!r} is not a regular file")
        if ext == ".bin":
            size = os.path.getsize(path)
            if size != TABLE_BYTES:
                raise ValueError(f"path: {path!r} has {size} bytes; a table file has exactly "
                                 f"{TABLE_BYTES} (65536 little-endian uint16)")
            with open(path, "rb") as f:
                data = f.read(TABLE_BYTES)
            table = np.frombuffer(data, dtype="<u2").astype(np.uint16)
        else:
            try:
                arr = np.load(path, allow_pickle=False)
            except (ValueError, OSError) as e:
                raise ValueError(f"path: {path!r} is not a readable .npy array ({e})") from None
            if arr.dtype.kind != "u" or arr.dtype.itemsize != 2:
                raise ValueError(f"path: {path!r} holds dtype {arr.dtype}; a table is uint16")
            if arr.shape not in (TABLE_SHAPE, (65536,)):
                raise ValueError(f"path: {path!r} holds shape {arr.shape}; a table is (256, 256)")
            table = arr.astype(np.uint16)
        stem = os.path.splitext(os.path.basename(path))[0]
        metadata = {"source": os.path.abspath(path)}
        metadata.update(_metrics_csv_row(os.path.dirname(os.path.abspath(path)), stem))
        m = cls(name or stem, table, signed=signed, metadata=metadata)
        if ext == ".bin":
            m.path = path
        return m


def _write_replacing(path, write):
    """Calls write(f) on a sibling temporary file, then renames it over `path`.

    Why: a reader (the op loading a mul_map_file) never sees a partial file. A failure raises an
    OSError naming `path`, the file the caller asked for, not the temporary, which is removed.
    """
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.remove(tmp)
        except OSError:
            pass
        if not isinstance(e, OSError):
            raise
        if e.errno is None:
            raise OSError(f"cannot write {path!r}: {e}") from None
        raise OSError(e.errno, e.strerror, path) from None  # the errno's subclass, as raised


def _metrics_csv_row(folder, stem):
    """The row named `stem` of folder/METRICS.csv as {column: float}, or {} when absent.

    An unreadable METRICS.csv (not UTF-8, not CSV) only costs the published figures: it warns,
    naming the file, and gives {}, since the table beside it is fine.
    """
    csv_path = os.path.join(folder, "METRICS.csv")
    if not os.path.isfile(csv_path):
        return {}
    try:
        # utf-8-sig: spreadsheet programs often save a byte-order mark, which would hide "name".
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (UnicodeDecodeError, csv.Error, OSError) as e:
        warnings.warn(f"{csv_path!r} is unreadable ({e}); loading {stem!r} without its published "
                      "metrics", stacklevel=3)
        return {}
    for row in rows:
        if row.get("name") == stem:
            out = {}
            for key, value in row.items():
                if key and key != "name":
                    try:
                        out[key] = float(value)
                    except (TypeError, ValueError):
                        out[key] = value
            return out
    return {}


def integer_products(values, what):
    """`values`, the products of operand pairs, as int64; floats must hold whole numbers.

    Why: functions (NumPy or C) may compute in floating point; whole values are products, while
    truncating fractions would silently change the multiplier. Raises ValueError for non-integer
    or non-finite floats and TypeError for non-numeric dtypes, naming the first bad (a, w) entry.
    what: the source for the message, e.g. "f:" or "path: 'm.c': mul8u_X".
    """
    arr = np.asarray(values)
    if arr.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            fraction = ~np.isfinite(arr) | (arr != np.round(arr))
        if fraction.any():
            raise ValueError(f"{what} returned non-integer values (first: {_entry(arr, fraction)})")
        huge = np.abs(arr) >= 2.0 ** 63   # whole, but would wrap in the int64 conversion
        if huge.any():
            raise ValueError(f"{what} returned values beyond any product "
                             f"(first: {_entry(arr, huge)})")
    elif arr.dtype.kind not in "ui":
        raise TypeError(f"{what} returned dtype {arr.dtype}; expected integer products")
    return arr.astype(np.int64)


def _entry(table, mask):
    """The first entry of a (256, 256) `table` where `mask` holds, as "value at (a=.., w=..)"."""
    a, w = np.argwhere(mask)[0]
    return f"{table[a, w].item()!r} at (a={a}, w={w})"


def from_function(f, name="function", signed=False, metadata=None):
    """Tabulates a vectorized function of the two operands.

    f(a, w) is called once with int64 arrays of shape (256, 256): a holds the row (activation)
    operand values and w the column (weight) operand values (int8 values when signed). It returns
    an integer array (or integral floats) broadcastable to (256, 256).
    """
    if not callable(f):
        raise TypeError(f"f: expected a callable, got {type(f).__name__}")
    v = operand_values(signed)
    a, w = np.meshgrid(v, v, indexing="ij")
    out = np.asarray(f(a, w))
    try:
        out = np.broadcast_to(out, TABLE_SHAPE)
    except ValueError:
        raise ValueError(f"f: returned shape {out.shape}, not broadcastable to (256, 256); "
                         "f must be vectorized over numpy arrays") from None
    # As product values (not stored bits), so Multiplier range-checks them.
    return Multiplier(name, integer_products(out, "f:"), signed=signed, metadata=metadata)
