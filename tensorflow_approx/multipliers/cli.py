"""Command line: python -m tensorflow_approx.multipliers {list,info,convert,compare,plot}.

A multiplier is named by a family name ("drum6", "bam_h1_v6", see `list`) or a file path
(.bin, .npy, or an EvoApprox-style .c file).
"""

import argparse
import csv
import os
import sys

import numpy as np

from tensorflow_approx.multipliers import FAMILIES, get
from tensorflow_approx.multipliers.decompose import decompose
from tensorflow_approx.multipliers.metrics import FIELDS, format_value

_HARDWARE = ("PDK45_PWR", "PDK45_AREA", "PDK45_DELAY")  # published hardware costs, when known
_TABLE_EXTS = (".bin", ".npy", ".c")


def _add_spec_options(p):
    p.add_argument("--signed", action="store_true",
                   help="read .bin/.npy tables as signed (int8 codes, int16 products)")
    p.add_argument("--function", help="the function to tabulate in a .c file")


def _load(spec, args):
    # For .c files signedness is inferred unless --signed forces it.
    return get(spec, signed=True if args.signed else None, function=args.function)


def _print_rows(rows, out, left=(0,)):
    """Aligned columns; the columns in `left` are text (left-aligned), the others numbers."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        out.write("  ".join(c.ljust(w) if i in left else c.rjust(w)
                            for i, (c, w) in enumerate(zip(r, widths))).rstrip() + "\n")


def cmd_list(args, out):
    rows = [("family", "parameters", "description")]
    for fam in FAMILIES:
        params = ", ".join(f"{n} in {lo}..{hi}" for n, lo, hi in fam.params) or "-"
        rows.append((fam.pattern, params, fam.summary))
    _print_rows(rows, out, left=(0, 1, 2))
    for folder in args.dirs:
        if not os.path.isdir(folder):
            raise ValueError(f"dirs: {folder!r} is not a directory")
        files = sorted(f for f in os.listdir(folder) if f.lower().endswith(_TABLE_EXTS))
        out.write(f"\n{folder}: {len(files)} table file(s)\n")
        for f in files:
            out.write(f"  {f}\n")
    return 0


def cmd_info(args, out):
    m = _load(args.spec, args)
    metrics = m.metrics().as_dict()
    out.write(f"name:    {m.name}\n")
    out.write(f"signed:  {'yes' if m.signed else 'no'}\n")
    for key in ("source", "doc"):
        if key in m.metadata:
            out.write(f"{key + ':':<8} {m.metadata[key]}\n")
    if m.path:
        out.write(f"table:   {os.path.abspath(m.path)}  (usable as mul_map_file)\n")
    published = any(label in m.metadata for _, label, _ in FIELDS)
    rows = [("metric", "value") + (("published",) if published else ()) + ("meaning",)]
    for _, label, meaning in FIELDS:
        row = (label, format_value(metrics[label]))
        if published:
            value = m.metadata.get(label)
            row += (format_value(value) if isinstance(value, float) else "-",)
        rows.append(row + (meaning,))
    _print_rows(rows, out, left=(0, len(rows[0]) - 1))
    d = decompose(m)
    out.write(f"terms:   {'-' if d is None else d.terms}  (exact int8 decomposition: "
              + (d.route if d else "over 64 terms") + ")\n")
    extra = {k: v for k, v in m.metadata.items()
             if k not in metrics and k not in ("source", "doc")}
    for key, value in extra.items():
        out.write(f"{key} = {value}\n")
    return 0


def cmd_convert(args, out):
    if os.path.splitext(args.dst)[1].lower() not in (".bin", ".npy"):
        raise ValueError(f"dst: {args.dst!r} must end in .bin or .npy")
    m = _load(args.src, args)
    path = m.save(args.dst)
    md = m.metrics()
    out.write(f"wrote {path}: {m.name} ({'signed' if m.signed else 'unsigned'}), "
              f"MAE {format_value(md.mae)}, WCE {format_value(md.wce)}\n")
    return 0


def cmd_compare(args, out):
    mults = [_load(spec, args) for spec in args.specs]
    metrics = [m.metrics().as_dict() for m in mults]
    hardware = [k for k in _HARDWARE if any(k in m.metadata for m in mults)]
    labels = [label for _, label, _ in FIELDS]
    if args.sort:
        if args.sort not in labels:
            raise ValueError(f"--sort: {args.sort!r} is not one of {labels}")
        order = sorted(range(len(mults)), key=lambda i: metrics[i][args.sort])
        mults, metrics = [mults[i] for i in order], [metrics[i] for i in order]
    header = ["name"] + labels + hardware + ["terms"]
    terms = [decompose(m) for m in mults]   # exact int8 decomposition; '-' over 64 terms
    rows = [[m.name] + [md[label] for label in labels] + [m.metadata.get(k, "") for k in hardware]
            + ["-" if d is None else d.terms]
            for m, md, d in zip(mults, metrics, terms)]
    if args.csv:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(header)
        writer.writerows([[repr(c) if isinstance(c, float) else c for c in r] for r in rows])
    else:
        # Published hardware figures are shown as printed; metrics in EvoApprox's style.
        text = [[r[0]] + [format_value(c) for c in r[1:1 + len(labels)]]
                + [f"{c:g}" if isinstance(c, float) else str(c) for c in r[1 + len(labels):]]
                for r in rows]
        _print_rows([header] + text, out)
    return 0


def cmd_plot(args, out):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.stderr.write("plot needs matplotlib, which is not installed; install it with "
                         "`pip install matplotlib` (or the package's [plot] extra)\n")
        return 1
    m = _load(args.spec, args)
    err = m.errors
    fig, (ax_map, ax_hist) = plt.subplots(1, 2, figsize=(12, 5))
    limit = max(1, int(np.abs(err).max()))
    im = ax_map.imshow(err, cmap="coolwarm", vmin=-limit, vmax=limit, origin="lower")
    ax_map.set_xlabel("weight code (column)")
    ax_map.set_ylabel("activation code (row)")
    ax_map.set_title(f"{m.name}: approximate - exact")
    fig.colorbar(im, ax=ax_map)
    ax_hist.hist(err.ravel(), bins=101)
    ax_hist.set_yscale("log")
    ax_hist.set_xlabel("error")
    ax_hist.set_ylabel("pairs")
    ax_hist.set_title("error histogram (65536 pairs)")
    fig.tight_layout()
    fig.savefig(args.output)
    plt.close(fig)
    out.write(f"wrote {args.output}\n")
    return 0


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m tensorflow_approx.multipliers",
                                     description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="list the built-in families (and table files in DIRS)")
    p.add_argument("dirs", nargs="*", metavar="DIR")
    p.set_defaults(run=cmd_list)
    p = sub.add_parser("info", help="error metrics and metadata of one multiplier")
    p.add_argument("spec", metavar="NAME|PATH")
    _add_spec_options(p)
    p.set_defaults(run=cmd_info)
    p = sub.add_parser("convert", help="write a family, .c, .bin or .npy as .bin (or .npy)")
    p.add_argument("src", metavar="SRC")
    p.add_argument("dst", metavar="DST")
    _add_spec_options(p)
    p.set_defaults(run=cmd_convert)
    p = sub.add_parser("compare", help="one row of metrics per multiplier")
    p.add_argument("specs", nargs="+", metavar="NAME|PATH")
    p.add_argument("--sort", metavar="METRIC", help="sort rows by a metric, e.g. MRE%%")
    p.add_argument("--csv", action="store_true", help="CSV output with full precision")
    _add_spec_options(p)
    p.set_defaults(run=cmd_compare)
    p = sub.add_parser("plot", help="error heat map and histogram (needs matplotlib)")
    p.add_argument("spec", metavar="NAME|PATH")
    p.add_argument("-o", "--output", required=True, metavar="FILE.png")
    _add_spec_options(p)
    p.set_defaults(run=cmd_plot)
    return parser


def main(argv=None, out=None):
    """Runs the command line; returns the exit status (0 ok, 1 missing matplotlib, 2 bad input)."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args, out or sys.stdout)
    except (ValueError, TypeError, OSError, RuntimeError) as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
