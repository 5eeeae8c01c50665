"""Tabulating an EvoApprox-style C multiplier by compiling it with the system C compiler.

EvoApprox distributes each circuit as a C function with a header of metrics, e.g.

    // MAE% = 2.15 %
    // PDK45_PWR = 0.034 mW
    uint64_t mul8u_T83(const uint64_t B, const uint64_t A) { ... }

Signatures vary (uint64_t (uint64_t, uint64_t), uint16_t (uint8_t, uint8_t), int16_t (int8_t, int8_t),
...), so the file is not called through ctypes directly: a small C wrapper #includes it and lets the
compiler convert arguments and results while it fills the whole table in one call.
"""

import ctypes
import os
import re
import shutil
import subprocess
import tempfile

import numpy as np

from tensorflow_approx.multipliers.multiplier import Multiplier

_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)
_STRING = re.compile(r'"(?:\\.|[^"\\\n])*"')
_METRIC_LINE = re.compile(
    r"^[\s/*]*([A-Za-z][\w%]*)\s*=\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*(\S*)\s*$")
# A function definition: return type, name, parameter list, then the opening brace.
_DEFINITION = re.compile(
    r"(?P<ret>\b[A-Za-z_][\w\s\*]*?)\b(?P<name>[A-Za-z_]\w*)\s*\((?P<params>[^()]*)\)\s*\{")
_NOT_FUNCTIONS = {"if", "for", "while", "switch", "return", "sizeof", "else", "do"}
_WRAPPER = "tfapprox_tabulate_"


def header_metrics(text):
    """The `KEY = value [unit]` lines of the comments in C source `text`.

    Returns {key: float}, e.g. {"MAE%": 2.15, "MSE": 3086511.0, "PDK45_PWR": 0.034}.
    """
    out = {}
    for comment in _COMMENT.findall(text):
        for line in comment.splitlines():
            m = _METRIC_LINE.match(line)
            if m:
                out[m.group(1)] = float(m.group(2))
    return out


def _param_signed(param, path):
    """Signedness of one parameter declaration such as "const uint64_t B" or "int8_t a"."""
    words = re.findall(r"[A-Za-z_]\w*", param)
    types = words[:-1] if len(words) > 1 else words  # drop the parameter's name
    text = " ".join(types)
    if re.search(r"\b(unsigned|uint\w*_t|size_t|bool|_Bool)\b", text):
        return False
    if re.search(r"\b(signed|int\w*_t|int|short|long|char)\b", text):
        return True
    raise ValueError(f"path: {path!r}: cannot tell the signedness of parameter {param.strip()!r}")


def find_functions(text):
    """Definitions with exactly two parameters: [(name, [param, param])] in source order."""
    code = _STRING.sub('""', _COMMENT.sub(" ", text))
    found = []
    for m in _DEFINITION.finditer(code):
        name = m.group("name")
        params = [p.strip() for p in m.group("params").split(",")]
        if name in _NOT_FUNCTIONS or m.group("ret").split()[-1] in _NOT_FUNCTIONS:
            continue
        if len(params) == 2 and all(params) and "void" not in params:
            found.append((name, params))
    return found


def _compiler():
    for candidate in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    raise RuntimeError("from_c_source needs a C compiler: none of $CC, cc, gcc, clang was found")


def from_c_source(path, function=None, name=None, signed=None):
    """Compiles the C file `path` and tabulates its multiplier function on all 65536 pairs.

    path: a C file defining the function (it may #include system headers).
    function: the function's name; None picks the only two-parameter function, or the only one
      whose name starts with "mul".
    name: the Multiplier's name (default: the function's name).
    signed: None infers it from the parameter types (int8_t -> signed, uint8_t/uint64_t -> unsigned).
    The first positional argument is the row (activation code), the second the column. A signed
    function gets int8 operands and may return the int16 product or its uint16 bit pattern.
    The `KEY = value` lines of the file's comments become metadata (plus "source" and "function").
    Raises ValueError for a missing file, no matching function, or a file that does not compile.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"path: {path!r} is not an existing file")
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    candidates = find_functions(text)
    if function is not None:
        chosen = [c for c in candidates if c[0] == function]
        if not chosen:
            raise ValueError(f"function: {path!r} has no two-parameter function {function!r} "
                             f"(found: {[c[0] for c in candidates] or 'none'})")
    else:
        chosen = candidates if len(candidates) == 1 else \
            [c for c in candidates if c[0].lower().startswith("mul")]
        if len(chosen) != 1:
            raise ValueError(
                f"path: {path!r} has {'no' if not candidates else 'several'} candidate "
                f"two-parameter functions {[c[0] for c in candidates]}; pass function=")
    fname, params = chosen[0]
    if signed is None:
        kinds = {_param_signed(p, path) for p in params}
        if len(kinds) != 1:
            raise ValueError(f"path: {path!r}: {fname} mixes signed and unsigned parameters; "
                             "pass signed=")
        signed = kinds.pop()

    # Signed operands are passed as the int8 value of the code; C converts to the parameter type.
    operand = "(x >= 128 ? x - 256 : x)" if signed else "x"
    with tempfile.TemporaryDirectory(prefix="tfapprox_c_") as tmp:
        shutil.copyfile(path, os.path.join(tmp, "source.c"))
        wrapper = os.path.join(tmp, "wrapper.c")
        with open(wrapper, "w") as f:
            f.write(f"""#include <stdint.h>
#include "source.c"
#define OPERAND(x) {operand}
void {_WRAPPER}(int64_t *out) {{
  for (int a = 0; a < 256; ++a)
    for (int w = 0; w < 256; ++w)
      out[(a << 8) | w] = (int64_t)({fname}(OPERAND(a), OPERAND(w)));
}}
""")
        lib_path = os.path.join(tmp, "multiplier.so")
        cmd = [_compiler(), "-O1", "-w", "-shared", "-fPIC", "-o", lib_path, wrapper]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            log = proc.stderr.replace(os.path.join(tmp, "source.c"), path).strip()
            raise ValueError(f"path: {path!r} does not compile:\n{log[-3000:]}")
        lib = ctypes.CDLL(lib_path)
        out = np.zeros(65536, dtype=np.int64)
        getattr(lib, _WRAPPER)(out.ctypes.data_as(ctypes.c_void_p))
        _unload(lib)

    metadata = header_metrics(text)
    metadata.update(source=os.path.abspath(path), function=fname)
    try:
        return Multiplier(name or fname, out, signed=signed, metadata=metadata)
    except ValueError as e:
        raise ValueError(f"path: {path!r}: {fname} returns products that do not fit a "
                         f"table: {e}") from None


def _unload(lib):
    # ctypes never unloads a library; dlclose it so repeated calls do not accumulate mappings.
    try:
        import _ctypes
        _ctypes.dlclose(lib._handle)
    except (ImportError, AttributeError, OSError):
        pass
