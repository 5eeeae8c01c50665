"""Writes a home-made approximate 8x8 multiplier table: both operands lose their low bits.

python examples/make_truncated_table.py --bits 2 --out trunc2.bin
"""

import common
from absl import app, flags

BITS = flags.DEFINE_integer("bits", 2, "low bits dropped from each operand (0..7)", 0, 7)
OUT = flags.DEFINE_string("out", None, "path of the table to write", required=True)


def main(_):
    common.write_truncated_table(OUT.value, BITS.value)
    print(f"wrote {OUT.value}: 8x8 multiplier with {BITS.value} low bits of each operand dropped")


if __name__ == "__main__":
    app.run(main)
