"""from_c_source on C files in each EvoApprox signature style, and its errors."""

import shutil
import textwrap

import numpy as np
import pytest

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
// MAE% = 0.0015 %
// MAE = 1.0
// WCE = 3.0
// MSE = 30865.11e2
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


def test_evoapprox_uint64_style_and_header_metadata(tmp_path):
    m = from_c_source(write(tmp_path, EVOAPPROX_STYLE))
    assert m.name == "mul8u_TST" and not m.signed
    assert (m.products == A * W + A).all()       # first positional argument = row = activation
    assert m.metadata["MAE%"] == 0.0015 and m.metadata["MSE"] == 3086511.0
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
