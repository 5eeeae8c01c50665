"""Approximate 8-bit multipliers: tables, built-in families, error metrics and a command line.

A multiplier is a 256 x 256 table (activation code = row = first operand, weight code = column);
`Multiplier.save()` writes the .bin file the op's mul_map_file takes. Depends on numpy only.

    from tensorflow_approx import multipliers as mx
    m = mx.get("drum6")                      # a family name, or a .bin/.npy/.c path
    print(m.metrics().as_dict())
    path = m.save()                          # -> mul_map_file

Command line: python -m tensorflow_approx.multipliers {list,info,convert,compare,plot} ...
"""

import os

from tensorflow_approx.multipliers.decompose import Decomposition, decompose
from tensorflow_approx.multipliers.c_source import from_c_source, header_metrics
from tensorflow_approx.multipliers.families import (FAMILIES, broken_array, column_truncated,
                                                    drum, etm, exact, family, is_family_name,
                                                    kulkarni, mitchell, operand_truncated, roba)
from tensorflow_approx.multipliers.metrics import ErrorMetrics, error_metrics
from tensorflow_approx.multipliers.multiplier import (Multiplier, exact_products, from_function,
                                                      operand_values)

load = Multiplier.load


def get(spec, signed=None, function=None):
    """A Multiplier from a family name ("drum6") or a file path (.bin, .npy or .c).

    signed: for .bin/.npy files (which do not record it; default unsigned) and .c files (default:
      inferred from the parameter types, checked against the header; see from_c_source).
    function: the C function to use in a .c file.
    """
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"spec: expected a family name or a path, got {type(spec).__name__}")
    spec = os.fspath(spec)
    if is_family_name(spec) and not os.path.exists(spec):
        return family(spec)
    ext = os.path.splitext(spec)[1].lower()
    if ext == ".c":
        return from_c_source(spec, function=function, signed=signed)
    if ext in (".bin", ".npy"):
        return Multiplier.load(spec, signed=bool(signed))
    raise ValueError(f"spec: {spec!r} is neither a family name ("
                     f"{', '.join(f.pattern for f in FAMILIES)}) nor a .bin/.npy/.c file")


__all__ = [
    "Decomposition", "ErrorMetrics", "FAMILIES", "Multiplier", "broken_array", "column_truncated",
    "decompose", "drum",
    "error_metrics", "etm", "exact", "exact_products", "family", "from_c_source", "from_function",
    "get", "header_metrics", "is_family_name", "kulkarni", "load", "mitchell", "operand_truncated",
    "operand_values", "roba",
]
