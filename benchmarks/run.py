"""Run the benchmarks and print one table per benchmark.

    python benchmarks/run.py            # all of them
    python benchmarks/run.py wick       # only benchmarks/bench_wick.py
    python benchmarks/run.py --quick    # smaller sizes, for a smoke run
    python benchmarks/run.py train --full --workers 2   # bench_train's own options

Each ``benchmarks/bench_<name>.py`` defines ``run(quick: bool) -> (title, rows)`` where rows
is a list of dicts with the same keys; a key ``target`` (string) and ``ok`` (bool or None)
make the table say whether the issue's target is met.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

HERE = Path(__file__).resolve().parent


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def print_table(title: str, rows: list[dict]) -> None:
    print(f"\n== {title}")
    if not rows:
        print("(no rows)")
        return
    keys = list(rows[0])
    cells = [[_fmt(r.get(k)) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    print("  ".join(k.ljust(w) for k, w in zip(keys, widths)))
    print("  ".join("-" * w for w in widths))
    for c in cells:
        print("  ".join(x.ljust(w) for x, w in zip(c, widths)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="benchmark names (bench_<name>.py); default: all")
    ap.add_argument("--quick", action="store_true", help="smaller sizes")
    # a benchmark's own options (bench_train: --full, --workers K) are read from sys.argv
    args, extra = ap.parse_known_args(argv)
    own = [x for i, x in enumerate(extra)
           if x not in ("--full", "--workers") and not (i and extra[i - 1] == "--workers")]
    if own:
        ap.error(f"unrecognized arguments: {' '.join(own)}")
    found = {p.stem[len("bench_"):]: p for p in sorted(HERE.glob("bench_*.py"))}
    names = args.names or list(found)
    unknown = [n for n in names if n not in found]
    if unknown:
        ap.error(f"unknown benchmark(s) {unknown}; known: {sorted(found)}")
    for name in names:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", found[name])
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        title, rows = mod.run(quick=args.quick)
        print_table(title, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
