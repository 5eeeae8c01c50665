"""from_c_source on C files in each EvoApprox signature style, and its errors."""

import shutil
import textwrap
import warnings

import numpy as np
import pytest

from tensorflow_approx.multipliers import c_source
from tensorflow_approx.multipliers.c_source import find_functions, from_c_source, header_metrics
from tensorflow_approx.multipliers.multiplier import exact_products, operand_values

pytestmark = pytest.mark.skipif(
    not any(shutil.which(c) for c in ("cc", "gcc", "clang")), reason="no C compiler installed")

U = operand_values(False)
A, W = np.meshgrid(U, U, indexing="ij")
S = operand_values(True)
SA, SW = np.meshgrid(S, S, indexing="ij")

EVOAPPROX_STYLE = """\
/***
* This code is a part of EvoApproxLib library (ehw.fit.vutbr.cz/approxlib) distributed under The MIT License.
* When used, please cite the following article(s): ... DATE 2017.
***/
// MAE% = 0.19 %
// MAE = 127.5
// WCE = 255
// MSE = 217.175e2
// PDK45_PWR = 0.386 mW
// PDK45_AREA = 676.3 um2
#include <stdint.h>
#include <stdlib.h>

uint64_t mul8u_TST(const uint64_t B,const uint64_t A)
{
   uint64_t O;   int avg=0;
   O = B * A + B;   /* the first argument is the row: B */
   return O;
}
"""


def write(tmp_path, text, name="m.c"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


@pytest.mark.filterwarnings("error")  # the header's metrics match the table: nothing to say
def test_evoapprox_uint64_style_and_header_metadata(tmp_path):
    m = from_c_source(write(tmp_path, EVOAPPROX_STYLE))
    assert m.name == "mul8u_TST" and not m.signed
    assert (m.products == A * W + A).all()       # first positional argument = row = activation
    assert m.metadata["MAE%"] == 0.19 and m.metadata["MSE"] == 21717.5
    assert m.metadata["PDK45_PWR"] == 0.386 and m.metadata["PDK45_AREA"] == 676.3
    assert m.metadata["function"] == "mul8u_TST" and m.metadata["source"].endswith("m.c")


def test_uint16_of_uint8_style_with_helpers(tmp_path):
    path = write(tmp_path, """\
        #include <stdint.h>
        // uint16_t commented_out(uint8_t a, uint8_t b) { return 0; }
        static int bump(int x) { return x > 0; }
        static int three(int x, int y, int z) { return x + y + z; }
        uint16_t approx(uint8_t a, uint8_t b) {
            if (a > b) { return (uint16_t)((a * b) | bump(a)); }
            return (uint16_t)(a * b);
        }
        """)
    assert [name for name, _ in find_functions(open(path).read())] == ["approx"]
    m = from_c_source(path, name="custom")
    assert m.name == "custom" and not m.signed
    assert (m.products == np.where(A > W, (A * W) | 1, A * W)).all()


def test_int16_of_int8_signed_style(tmp_path):
    path = write(tmp_path, """\
        #include <stdint.h>
        int16_t mul8s_TST(int8_t A, int8_t B) { return (int16_t)(A * B + (A < 0 ? 1 : 0)); }
        """)
    m = from_c_source(path)
    assert m.signed
    assert (m.products == SA * SW + (SA < 0)).all()
    assert m.table[255, 1] == 0  # (-1) * 1 + 1


def test_signed_function_returning_uint16_bits(tmp_path):
    path = write(tmp_path, """\
        #include <stdint.h>
        uint16_t mul8s_BITS(int8_t a, int8_t b) { return (uint16_t)(a * b); }
        """)
    m = from_c_source(path)
    assert m.signed and (m.products == exact_products(True)).all()


def test_signed_override_reads_unsigned_parameters_as_int8(tmp_path):
    path = write(tmp_path, """\
        int mul(int a, int b) { return a * b; }
        """)
    assert from_c_source(path).signed           # plain int is signed
    m = from_c_source(path, signed=False)
    assert not m.signed and m.is_exact()


def test_choosing_among_several_functions(tmp_path):
    path = write(tmp_path, """\
        unsigned mul_a(unsigned a, unsigned b) { return a * b; }
        unsigned mul_b(unsigned a, unsigned b) { return (a * b) & ~1u; }
        """)
    with pytest.raises(ValueError, match=r"several candidate .*'mul_a', 'mul_b'.*pass function="):
        from_c_source(path)
    m = from_c_source(path, function="mul_b")
    assert m.name == "mul_b" and (m.products == (A * W) & ~1).all()
    with pytest.raises(ValueError, match=r"function: .*m\.c' has no two-parameter function 'mul_c'"):
        from_c_source(path, function="mul_c")


def test_no_two_parameter_function(tmp_path):
    path = write(tmp_path, "int one(int a) { return a; }\n")
    with pytest.raises(ValueError, match=r"m\.c' has no candidate two-parameter functions"):
        from_c_source(path)


def test_source_that_does_not_compile(tmp_path):
    path = write(tmp_path, """\
        #include <stdint.h>
        uint16_t mul8u_BAD(uint8_t a, uint8_t b) { return a * undefined_name; }
        """)
    with pytest.raises(ValueError, match=r"(?s)m\.c' does not compile:.*undefined_name"):
        from_c_source(path)


def test_products_that_do_not_fit(tmp_path):
    path = write(tmp_path, "unsigned long mul(unsigned a, unsigned b) { return 2ul * a * b; }\n")
    with pytest.raises(ValueError, match=r"m\.c': mul returns products that do not fit.*65535"):
        from_c_source(path)


def test_missing_file(tmp_path):
    with pytest.raises(ValueError, match=r"path: .*absent\.c' is not an existing file"):
        from_c_source(str(tmp_path / "absent.c"))


def test_header_metrics_reads_comments_only():
    text = """\
        /* MAE = 3 */
        // EP% = 75.00 %
        // PDK45_DELAY = 1.40 ns
        //  not a metric line
        int x = 5;
        """
    assert header_metrics(textwrap.dedent(text)) == {"MAE": 3.0, "EP%": 75.0, "PDK45_DELAY": 1.4}


# ----- a function that crashes, exits or hangs: an error here, never a crash or hang of pytest


@pytest.mark.parametrize("body,match", [
    ("if (a == 3 && b == 200) return *(volatile int *)0;",
     r"crashed with SIGSEGV.* in the call mul8u_C\(3, 200\)"),
    ("if (a == 7 && b == 9) abort();", r"crashed with SIGABRT.* in the call mul8u_C\(7, 9\)"),
    ("if (a == 255 && b == 0) raise(SIGFPE);", r"crashed with SIGFPE.* mul8u_C\(255, 0\)"),
    ("if (a == 100 && b == 1) return mul8u_C(a, b) + 1;",   # endless recursion: stack overflow
     r"crashed with SIGSEGV.* in the call mul8u_C\(100, 1\)"),
    ("if (a == 2 && b == 2) exit(4);", r"ended the process \(exit\(\) with status 4\) in the "
                                       r"call mul8u_C\(2, 2\)"),
    ("if (a == 5 && b == 5) raise(SIGKILL);",   # no chance to report: the pair is unknown
     r": the tabulating process was killed by SIGKILL.* at an unknown operand pair"),
])
def test_crash_is_an_error_naming_the_path_function_and_pair(tmp_path, body, match):
    path = write(tmp_path, f"""\
        #include <signal.h>
        #include <stdint.h>
        #include <stdlib.h>
        uint16_t mul8u_C(uint8_t a, uint8_t b) {{
            {body}
            return a * b;
        }}
        """)
    with pytest.raises(ValueError, match=r"path: .*m\.c': mul8u_C ?" + match):
        from_c_source(path)


def test_crash_of_a_signed_function_names_operands_and_codes_and_its_message(tmp_path):
    path = write(tmp_path, """\
        #include <assert.h>
        int mul8s_C(int a, int b) { assert(!(a == -1 && b == 5)); return a * b; }
        """)
    with pytest.raises(ValueError, match=r"(?s)SIGABRT.* mul8s_C\(-1, 5\) \(a=255, w=5\); its "
                                         r"output ends: .*m\.c:2: .*Assertion"):
        from_c_source(path)


def test_a_function_that_never_returns_hits_the_time_limit(tmp_path):
    path = write(tmp_path, """\
        unsigned mul(unsigned a, unsigned b) { while (a == 7 && b == 9) {} return a * b; }
        """)
    with pytest.raises(ValueError, match=r"m\.c': mul did not finish within the time limit "
                                         r"\(timeout=0\.5 s\): still in the call mul\(7, 9\)"):
        from_c_source(path, timeout=0.5)


def test_the_time_limit_holds_even_if_the_function_blocks_the_harness_timer(tmp_path, monkeypatch):
    monkeypatch.setattr(c_source, "_GRACE_S", 0.5)
    path = write(tmp_path, """\
        #include <signal.h>
        unsigned mul(unsigned a, unsigned b) {
            sigset_t all;
            sigfillset(&all);
            sigprocmask(SIG_BLOCK, &all, 0);
            for (;;) {}
        }
        """)
    with pytest.raises(ValueError, match=r"mul did not finish within the time limit "
                                         r"\(timeout=0\.5 s\)$"):
        from_c_source(path, timeout=0.5)


@pytest.mark.parametrize("timeout,error", [(0, ValueError), (-1, ValueError),
                                           (float("inf"), ValueError), (float("nan"), ValueError),
                                           (True, TypeError), ("60", TypeError)])
def test_bad_timeout(tmp_path, timeout, error):
    path = write(tmp_path, "unsigned mul(unsigned a, unsigned b) { return a * b; }\n")
    with pytest.raises(error, match="timeout: "):
        from_c_source(path, timeout=timeout)


def test_a_main_in_the_source_does_not_clash(tmp_path):
    path = write(tmp_path, """\
        unsigned mul(unsigned a, unsigned b) { return a * b; }
        int main(void) { return 1; }
        """)
    assert from_c_source(path).is_exact()


# ----- floating-point results


def test_floating_point_results_must_be_whole(tmp_path):
    path = write(tmp_path, "double mul(unsigned a, unsigned b) { return a * b / 2.0; }\n")
    with pytest.raises(ValueError, match=r"m\.c': mul returned non-integer values "
                                         r"\(first: 0\.5 at \(a=1, w=1\)\)"):
        from_c_source(path)
    path = write(tmp_path, "float mul(int a, int b) { return a * b; }\n", name="f.c")
    assert from_c_source(path, signed=True).is_exact()
    path = write(tmp_path, "double mul(int a, int b) { return 1e30; }\n", name="huge.c")
    with pytest.raises(ValueError, match=r"mul returned values beyond any product"):
        from_c_source(path)


# ----- signedness: the declaration, checked against the header's metrics and the EvoApprox name

# EvoApprox's generator declares some signed multipliers (mul8s_1L2H, ...) with uint8_t operands
# and a uint16_t result holding the int16 product's bits. This one is exact when read as signed.
SIGNED_AS_UINT8 = """\
    {header}
    #include <stdint.h>
    uint16_t {name}(uint8_t A, uint8_t B) {{ return (uint16_t)((int8_t)A * (int8_t)B); }}
    """


def test_header_metrics_overrule_unsigned_parameters(tmp_path):
    path = write(tmp_path, SIGNED_AS_UINT8.format(
        header="// MAE = 0\n    // WCE = 0\n    // MSE = 0", name="mul8s_TST"))
    with pytest.warns(UserWarning, match=r"m\.c': mul8s_TST is declared unsigned but read as "
                                         r"signed: the metrics in its header match"):
        m = from_c_source(path)
    assert m.signed and m.is_exact()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not from_c_source(path, signed=False).signed   # an explicit choice is not checked


def test_header_metrics_decide_whatever_the_name(tmp_path):
    # Only MAE% printed, a name that says nothing; the unsigned reading is off by orders of
    # magnitude. And a result type too narrow for the declared reading (int16_t, negative).
    path = write(tmp_path, """\
        // MAE% = 0.0 %
        #include <stdint.h>
        int16_t approx(uint8_t A, uint8_t B) { return (int8_t)A * (int8_t)B; }
        """)
    with pytest.warns(UserWarning, match="approx is declared unsigned but read as signed"):
        m = from_c_source(path)
    assert m.signed and m.is_exact()


def test_header_metrics_that_match_no_reading_keep_the_declaration(tmp_path):
    path = write(tmp_path, SIGNED_AS_UINT8.format(header="// MAE = 3.0", name="mul8s_TST"))
    with pytest.warns(UserWarning, match=r"metrics in the header of mul8s_TST match neither its "
                                         r"declared \(unsigned\) nor the signed reading"):
        m = from_c_source(path)
    assert not m.signed


def test_metrics_that_roughly_agree_keep_the_declaration_silently(tmp_path):
    path = write(tmp_path, """\
        // MAE = 40
        // WCE = 200
        unsigned mul8s_TST(unsigned a, unsigned b) { return a * b + (a & 63); }
        """)   # MAE 31.5, WCE 63: off by less than the factor that rules a reading out
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not from_c_source(path).signed


@pytest.mark.parametrize("declaration,name,signed", [
    ("uint16_t {name}(uint8_t A, uint8_t B)", "mul8s_TST", True),
    ("int {name}(int A, int B)", "mul8u_TST", False),
])
def test_without_metrics_the_evoapprox_name_overrules_the_declaration(tmp_path, declaration,
                                                                         name, signed):
    body = "{ return (uint16_t)(%s)A * (%s)B; }" % (("int8_t",) * 2 if signed else ("uint8_t",) * 2)
    path = write(tmp_path, "#include <stdint.h>\n" + declaration.format(name=name) + body + "\n")
    with pytest.warns(UserWarning, match=f"{name} is declared {'un' if signed else ''}signed but "
                                         f"read as {'' if signed else 'un'}signed, as its "
                                         "EvoApprox name says"):
        m = from_c_source(path)
    assert m.signed == signed and m.is_exact()
