"""Tabulating an EvoApprox-style C multiplier by compiling it with the system C compiler.

EvoApprox distributes each circuit as a C function with a header of metrics, e.g.

    // MAE% = 2.15 %
    // PDK45_PWR = 0.034 mW
    uint64_t mul8u_T83(const uint64_t B, const uint64_t A) { ... }

Signatures vary (uint64_t (uint64_t, uint64_t), uint16_t (uint8_t, uint8_t), int16_t (int8_t, int8_t),
...), so the file is not called through ctypes directly: a small C harness #includes it and lets the
compiler convert arguments and results while it fills the whole table. The harness runs as a child
process, so a function that crashes or never returns costs an error here, not this process.
"""

import math
import numbers
import os
import re
import shutil
import signal
import subprocess
import tempfile
import warnings

import numpy as np

from tensorflow_approx.multipliers.multiplier import Multiplier, integer_products

_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)
_STRING = re.compile(r'"(?:\\.|[^"\\\n])*"')
_METRIC_LINE = re.compile(
    r"^[\s/*]*([A-Za-z][\w%]*)\s*=\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*(\S*)\s*$")
# A function definition: return type, name, parameter list, then the opening brace.
_DEFINITION = re.compile(
    r"(?P<ret>\b[A-Za-z_][\w\s\*]*?)\b(?P<name>[A-Za-z_]\w*)\s*\((?P<params>[^()]*)\)\s*\{")
_NOT_FUNCTIONS = {"if", "for", "while", "switch", "return", "sizeof", "else", "do"}
# EvoApprox names say the signedness: mul8u_T83 is unsigned, mul8s_1L2H signed.
_EVOAPPROX_NAME = re.compile(r"mul8([su])_")

# The harness: argv = output file, "1" for signed operands, time limit in microseconds. It writes
# one kind byte ('i' int64 or 'f' double results) and the 65536 results in native byte order. On
# a fatal signal (SIGALRM: the time limit) or an exit() from inside the function it writes a
# _MARKER line naming the pair being evaluated, so the error can say which call failed.
_MARKER = "@tfapprox-harness@"
_HARNESS = r"""#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/time.h>
#include <unistd.h>

static volatile sig_atomic_t tfapprox_row_ = -1, tfapprox_col_ = -1;

/* Appends s, then v >= 0 in decimal unless v < 0; no stdio, so safe in a signal handler. */
static char *tfapprox_put_(char *p, const char *s, long v) {
  char digits[24];
  int n = 0;
  while (*s) *p++ = *s++;
  if (v < 0) return p;
  do digits[n++] = (char)('0' + v % 10); while ((v /= 10) > 0);
  while (n) *p++ = digits[--n];
  return p;
}

static void tfapprox_report_(const char *what, long code) {
  char buf[128], *p = buf;
  p = tfapprox_put_(p, "\n@MARKER@ ", -1);
  p = tfapprox_put_(p, what, code);
  p = tfapprox_put_(p, " at ", tfapprox_row_);
  p = tfapprox_put_(p, " ", tfapprox_col_);
  *p++ = '\n';
  (void)!write(2, buf, (size_t)(p - buf));
}

static void tfapprox_on_signal_(int sig) {
  tfapprox_report_("signal ", sig);
  _exit(125);  /* rather than the default action: no core dump */
}

static void tfapprox_on_exit_(void) {
  if (tfapprox_row_ >= 0) tfapprox_report_("exit ", 0);
}

static int tfapprox_write_(int fd, const void *data, size_t n) {
  const char *p = data;
  for (ssize_t k; n > 0; p += k, n -= (size_t)k)
    if ((k = write(fd, p, n)) <= 0) return -1;
  return 0;
}

/* A main() in the source would clash with the harness's. */
#define main tfapprox_source_main_
#include "source.c"
#undef main

static int tfapprox_signed_;
#define TFAPPROX_OPERAND(x) (tfapprox_signed_ && (x) >= 128 ? (x) - 256 : (x))
#define TFAPPROX_CALL(a, w) (@FUNCTION@(TFAPPROX_OPERAND(a), TFAPPROX_OPERAND(w)))
/* Not evaluated: whether the function returns a floating-point type. */
#define TFAPPROX_FLOATING \
  _Generic(TFAPPROX_CALL(0, 0), float: 1, double: 1, long double: 1, default: 0)

int main(int argc, char **argv) {
  /* static: zero-initialized without <string.h>, which only costs compile time */
  static int64_t ints[65536];
  static double floats[65536];
  static char alt_stack[1 << 16];  /* the handler still runs after a stack overflow */
  static stack_t ss;
  static struct sigaction sa;
  static struct itimerval limit, no_limit;
  const int fatal[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT, SIGTRAP, SIGSYS, SIGALRM};
  const char kind = TFAPPROX_FLOATING ? 'f' : 'i';
  long long usec;
  int fd;
  if (argc != 4) return 2;
  tfapprox_signed_ = argv[2][0] == '1';
  usec = atoll(argv[3]);
  ss.ss_sp = alt_stack;
  ss.ss_size = sizeof alt_stack;
  sigaltstack(&ss, NULL);
  sa.sa_handler = tfapprox_on_signal_;
  sa.sa_flags = SA_ONSTACK;
  sigemptyset(&sa.sa_mask);
  for (size_t i = 0; i < sizeof fatal / sizeof fatal[0]; ++i) sigaction(fatal[i], &sa, NULL);
  atexit(tfapprox_on_exit_);
  limit.it_value.tv_sec = (time_t)(usec / 1000000);
  limit.it_value.tv_usec = (suseconds_t)(usec % 1000000);
  setitimer(ITIMER_REAL, &limit, NULL);
  for (int a = 0; a < 256; ++a)
    for (int w = 0; w < 256; ++w) {
      tfapprox_row_ = a;
      tfapprox_col_ = w;
      if (kind == 'f')
        floats[(a << 8) | w] = (double)TFAPPROX_CALL(a, w);
      else
        ints[(a << 8) | w] = (int64_t)TFAPPROX_CALL(a, w);
    }
  tfapprox_row_ = -1;
  setitimer(ITIMER_REAL, &no_limit, NULL);
  fd = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (fd < 0 || tfapprox_write_(fd, &kind, 1) ||
      tfapprox_write_(fd, kind == 'f' ? (void *)floats : (void *)ints, sizeof ints) || close(fd)) {
    (void)!write(2, "cannot write the table\n", 23);
    return 2;
  }
  return 0;
}
"""
_REPORT = re.compile(re.escape(_MARKER) + r" (signal (?P<sig>\d+)|exit 0) at (?P<a>\d+) (?P<w>\d+)")
# Beyond the harness's own timer, the wait for a child that cannot even be interrupted.
_GRACE_S = 10.0

# Header metrics that tell the two readings of a table apart, each with one unit of its scale (so
# that near-zero values compare by absolute difference). They are absolute errors, which the
# wrong reading inflates by orders of magnitude: a negative product read as unsigned is off by
# about 2^16. MAE% and WCE% stand in for MAE and WCE in headers that print only those.
_EVIDENCE_UNITS = {"MAE": 1.0, "WCE": 1.0, "MSE": 1.0, "MAE%": 100 / 2 ** 16, "WCE%": 100 / 2 ** 16}
_AGREE = 1.5      # within this factor a reading matches the header (printed to 2-4 digits)
_DISAGREE = 10.0  # beyond this factor the header rules a reading out


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


def from_c_source(path, function=None, name=None, signed=None, timeout=60.0):
    """Compiles the C file `path` and tabulates its multiplier function on all 65536 pairs.

    path: a C file defining the function (it may #include system headers).
    function: the function's name; None picks the only two-parameter function, or the only one
      whose name starts with "mul".
    name: the Multiplier's name (default: the function's name).
    signed: None infers it from the parameter types (int8_t -> signed, uint8_t/uint64_t ->
      unsigned), overruled, with a warning, where the file says otherwise (EvoApprox declares
      some signed multipliers, e.g. mul8s_1L2H, with uint8_t parameters):
        - when the header's MAE/WCE/MSE (or MAE%/WCE%) differ by more than a factor 10 from those
          of the table read as declared and agree within a factor 1.5 with the other reading,
          the other reading is used;
        - when they agree with neither, the declared reading is kept, with a warning (not an
          error: a hand-written header may be stale, and the table is still what the C computes);
        - when the header has none of these metrics, an EvoApprox name (mul8s_..., mul8u_...)
          that contradicts the declaration decides, if the table fits that reading.
      True or False is taken as given, without checks.
    timeout: seconds the tabulation may take; it runs in a child process, stopped at that limit.
    The first positional argument is the row (activation code), the second the column. A signed
    function gets int8 operands and may return the int16 product or its uint16 bit pattern;
    floating-point results must be whole numbers.
    The `KEY = value` lines of the file's comments become metadata (plus "source" and "function").
    Raises ValueError for a missing file, no matching function, a file that does not compile, a
    function that crashes, exits, returns non-integers or runs past `timeout` (naming the operand
    pair it was evaluating), or results that do not fit a table.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"path: {path!r} is not an existing file")
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
        raise TypeError(f"timeout: expected seconds, got {timeout!r}")
    if not 0 < timeout < math.inf:
        raise ValueError(f"timeout: {timeout!r} is not a positive, finite number of seconds")
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
    declared = signed
    if signed is None:
        kinds = {_param_signed(p, path) for p in params}
        if len(kinds) != 1:
            raise ValueError(f"path: {path!r}: {fname} mixes signed and unsigned parameters; "
                             "pass signed=")
        declared = kinds.pop()
    header = header_metrics(text)
    metadata = dict(header, source=os.path.abspath(path), function=fname)

    with tempfile.TemporaryDirectory(prefix="tfapprox_c_") as tmp:
        harness = _compile(path, fname, tmp)

        def read_as(reading):
            """(Multiplier, None) under `reading`, or (None, ValueError) if it fits no table."""
            results = _tabulate(harness, reading, timeout, path, fname, tmp)
            products = integer_products(results.reshape(256, 256), f"path: {path!r}: {fname}")
            try:
                return Multiplier(name or fname, products, signed=reading, metadata=metadata), None
            except ValueError as e:
                return None, ValueError(f"path: {path!r}: {fname} returns products that do not "
                                        f"fit a table: {e}")

        m, error = read_as(declared)
        if signed is None:
            m, error = _settle_signedness(path, fname, declared, header, m, error, read_as)
    if error is not None:
        raise error
    return m


def _compile(path, fname, tmp):
    """Builds the harness around the C file `path` in directory `tmp`; returns the executable."""
    shutil.copyfile(path, os.path.join(tmp, "source.c"))
    source = os.path.join(tmp, "harness.c")
    with open(source, "w") as f:
        f.write(_HARNESS.replace("@MARKER@", _MARKER).replace("@FUNCTION@", fname))
    exe = os.path.join(tmp, "harness")
    # -lm: the shared library this replaced could use libm through the Python process.
    cmd = [_compiler(), "-O1", "-w", "-o", exe, source, "-lm"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        log = proc.stderr.replace(os.path.join(tmp, "source.c"), path).strip()
        raise ValueError(f"path: {path!r} does not compile:\n{log[-3000:]}")
    return exe


def _tabulate(harness, signed, timeout, path, fname, tmp):
    """Runs the harness; returns its 65536 results (int64 or float64) in table order."""
    out_path = os.path.join(tmp, f"table_{'s' if signed else 'u'}.bin")
    cmd = [harness, out_path, "1" if signed else "0", str(max(1, round(timeout * 1e6)))]
    failed = f"path: {path!r}: {fname}"
    try:
        proc = subprocess.run(cmd, cwd=tmp, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, timeout=timeout + _GRACE_S)
    except subprocess.TimeoutExpired:
        raise ValueError(f"{failed} did not finish within the time limit (timeout={timeout:g} s)"
                         ) from None
    stderr = proc.stderr.decode("utf-8", "replace")
    reports = list(_REPORT.finditer(stderr))
    if proc.returncode == 0 and not reports:
        with open(out_path, "rb") as f:
            data = f.read()
        if len(data) == 1 + 65536 * 8 and data[:1] in (b"i", b"f"):
            return np.frombuffer(data[1:], dtype=np.int64 if data[:1] == b"i" else np.float64)
    # What the function itself printed may say why (an assert's message, say).
    own = _REPORT.sub("", stderr).replace(os.path.join(tmp, "source.c"), path).strip()
    own = f"; its output ends: {own[-500:]}" if own else ""
    if not reports:
        rc = proc.returncode
        how = (f"was killed by {_signal_name(-rc)}" if rc < 0 else
               f"ended with exit status {rc}" if rc > 0 else "ended without writing the table")
        raise ValueError(f"{failed}: the tabulating process {how} at an unknown operand pair{own}")
    report = reports[-1]
    a, w = int(report.group("a")), int(report.group("w"))
    if signed:
        call = f"{fname}({a - 256 * (a >= 128)}, {w - 256 * (w >= 128)}) (a={a}, w={w})"
    else:
        call = f"{fname}({a}, {w})"
    sig = report.group("sig")
    if sig is None:
        raise ValueError(f"{failed} ended the process (exit() with status {proc.returncode}) "
                         f"in the call {call}{own}")
    if int(sig) == signal.SIGALRM:
        raise ValueError(f"{failed} did not finish within the time limit (timeout={timeout:g} s): "
                         f"still in the call {call}; pass a larger timeout= if it is only slow")
    raise ValueError(f"{failed} crashed with {_signal_name(int(sig))} in the call {call}{own}")


def _signal_name(number):
    try:
        sig = signal.Signals(number)
    except ValueError:
        return f"signal {number}"
    description = signal.strsignal(sig) if hasattr(signal, "strsignal") else None
    return f"{sig.name} ({description})" if description else sig.name


def _settle_signedness(path, fname, declared, header, m, error, read_as):
    """The (Multiplier, error) to keep: the declared reading's unless the evidence says otherwise.

    m, error: the declared reading's result; read_as(signed) gives a reading's result.
    """
    kind = {True: "signed", False: "unsigned"}

    def other_reading():
        # Failing there (a crash on operands the declaration never meant, say) only rules it out.
        try:
            return read_as(not declared)[0]
        except ValueError:
            return None

    off = _disagreement(m, header)
    if off is not None:   # the header has metrics to compare
        if off <= _DISAGREE:
            return m, error
        other = other_reading()
        if _disagreement(other, header) <= _AGREE:
            warnings.warn(
                f"path: {path!r}: {fname} is declared {kind[declared]} but read as "
                f"{kind[not declared]}: the metrics in its header match that reading, not the "
                "declared one; pass signed= to choose", stacklevel=3)
            return other, None
        if error is None:
            warnings.warn(
                f"path: {path!r}: the metrics in the header of {fname} match neither its "
                f"declared ({kind[declared]}) nor the {kind[not declared]} reading of its table; "
                "kept the declared one; pass signed= to choose", stacklevel=3)
        return m, error
    named = _EVOAPPROX_NAME.match(fname)
    if named is None or (named.group(1) == "s") == declared:
        return m, error
    other = other_reading()
    if other is None:
        return m, error
    warnings.warn(
        f"path: {path!r}: {fname} is declared {kind[declared]} but read as {kind[not declared]}, "
        "as its EvoApprox name says (its header has no metrics to check); pass signed= to choose",
        stacklevel=3)
    return other, None


def _disagreement(m, header):
    """The largest factor between a header metric and the same metric of Multiplier `m` (1 when
    equal; inf when m is None), or None when the header has none of _EVIDENCE_UNITS."""
    keys = [key for key in _EVIDENCE_UNITS if key in header]
    if not keys:
        return None
    if m is None:
        return math.inf
    computed = m.metrics().as_dict()
    factors = []
    for key in keys:
        low, high = sorted((computed[key], abs(header[key])))
        factors.append((high + _EVIDENCE_UNITS[key]) / (low + _EVIDENCE_UNITS[key]))
    return max(factors)
