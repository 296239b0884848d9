"""Wick expansion with canonical merging, k = 2…7 (issue: foundation, speed targets).

Patterns, each E[·] of 2k fields z_{i;α} with neuron and sample indices:

* ``distinct``   z_{i1;α1} … z_{i2k;α2k}: every one of the (2k−1)!! pairings is its own term;
* ``repeated``   z_{i_{r mod 2}; α_{r mod 3}}: pairings merge into a few δ·K products;
* ``neuron-sum`` (Σ_j z_{j;α1} z_{j;α2})^k: dummy indices contracted, sums counted, the
                 result a polynomial in n;
* ``power``      z_{i;α}^{2k}: one typed pairing, (2k−1)!! K^k.

Targets (issue #3): 12 fields in < 1.5 s, 14 fields in < 10 s.
"""
from __future__ import annotations

import time

import sympy as sp

from derive import NeuronSum, gaussian_field, neuron_indices, sample_indices, wick
from derive.algebra.pairings import double_factorial

TARGETS = {12: 1.5, 14: 10.0}


def _patterns(k: int):
    m = 2 * k
    z = gaussian_field("z", "K")
    I = neuron_indices(f"i1:{m + 1}")
    A = sample_indices(f"alpha1:{m + 1}")
    (j,) = neuron_indices("j")
    n = sp.Symbol("n", positive=True)
    yield "distinct", sp.Mul(*[z[I[r], A[r]] for r in range(m)])
    yield "repeated", sp.Mul(*[z[I[r % 2], A[r % 3]] for r in range(m)])
    yield "neuron-sum", NeuronSum(z[j, A[0]] * z[j, A[1]], (j, n)) ** k
    yield "power", z[I[0], A[0]] ** m


def run(quick: bool = False):
    rows = []
    for k in range(2, 6 if quick else 8):
        for name, expr in _patterns(k):
            t0 = time.perf_counter()
            result = wick(expr)
            dt = time.perf_counter() - t0
            target = TARGETS.get(2 * k)
            rows.append({
                "fields": 2 * k,
                "pattern": name,
                "pairings": double_factorial(2 * k - 1),
                "terms out": len(sp.Add.make_args(result)),
                "seconds": dt,
                "target s": target,
                "ok": None if target is None else dt < target,
            })
    return "Wick expansion with canonical merging (derive.wick)", rows


if __name__ == "__main__":
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from run import print_table

    print_table(*run())
