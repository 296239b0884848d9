"""Wick expansion with canonical merging, k = 2…7, against FORM (issue 3 and issue 15, goal 3).

Patterns, each E[·] of 2k fields z_{i;α} with neuron and sample indices:

* ``distinct``   z_{i1;α1} … z_{i2k;α2k}: every one of the (2k−1)!! pairings is its own term;
* ``repeated``   z_{i_{r mod 2}; α_{r mod 3}}: pairings merge into a few δ·K products;
* ``neuron-sum`` (Σ_j z_{j;α1} z_{j;α2})^k: dummy indices contracted, sums counted, the
                 result a polynomial in n; derive pairs it up to the exchange of the k
                 factors (derive.algebra.pairings.orbit_pairings: 3^{k−1} weighted classes);
* ``power``      z_{i;α}^{2k}: one typed pairing, (2k−1)!! K^k.

FORM (when the ``form`` binary is on PATH) is timed on the same pairings, enumerated naively:
for each pattern a program written to a temporary directory declares 2k indices x1…x2k and
computes ``dd_(x1,…,x2k)`` — FORM's built-in sum of the (2k−1)!! products of Kronecker deltas
d_(x_a,x_b), one term per pairing — and in the same module (no intermediate sort) replaces
every d_(x_a,x_b), with one ``repeat id`` over set-indexed wildcards, by the covariance of
fields a and b: δ(i_a,i_b)·K(α_a,α_b), where δ is a symmetric function D set to 1 on equal
arguments (and δ² = δ) for the fixed neuron indices, and FORM's own d_ over indices of dimension n for the
summed neuron indices of ``neuron-sum`` (so FORM contracts the δ's and counts Σ_j δ_jj = n
itself).  FORM's sort at the end of the module merges like terms; the result is not printed.
Its time is the CPU time (user + sys) of the ``form`` process, start-up included (about
0.01 s); derive's ``cpu s`` is the CPU time of the ``wick`` call in this process, and
``derive/FORM`` is the ratio of the two CPU times (wall clock is noisy on a shared machine;
``seconds`` is derive's wall time as before).  Without ``form`` the FORM columns say "-".

Targets: 12 fields in < 1.5 s, 14 fields in < 10 s (issue 3); the 14-field neuron-sum pattern
no slower than FORM's naive enumeration (issue 15; derive/FORM ≤ 1).
"""
from __future__ import annotations

import os
import resource
import shutil
import subprocess
import tempfile
import time

import sympy as sp

from derive import NeuronSum, gaussian_field, neuron_indices, sample_indices, wick
from derive.algebra.pairings import double_factorial

TARGETS = {12: 1.5, 14: 10.0}
#: patterns whose 14-field time must not exceed FORM's
FORM_TARGETS = {(14, "neuron-sum")}


def _fields(name: str, k: int) -> list[tuple[str, str]]:
    """(neuron, sample) label of each of the 2k fields, as in :func:`_patterns`."""
    m = 2 * k
    if name == "distinct":
        return [(f"i{r + 1}", f"a{r + 1}") for r in range(m)]
    if name == "repeated":
        return [(f"i{r % 2 + 1}", f"a{r % 3 + 1}") for r in range(m)]
    if name == "neuron-sum":
        return [(f"j{r // 2 + 1}", f"a{r % 2 + 1}") for r in range(m)]
    return [("i1", "a1")] * m


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


def form_program(name: str, k: int) -> str:
    """The FORM program that enumerates the pairings of pattern ``name`` (see the module doc)."""
    m = 2 * k
    fields = _fields(name, k)
    summed = name == "neuron-sum"
    neu = ",".join(f for f, _ in fields)
    sam = ",".join(a for _, a in fields)
    delta = "d_(N[k1],N[k2])" if summed else "D(N[k1],N[k2])"
    return "\n".join([
        "#-",
        "Off statistics;",
        "Symbols n, k1, k2;",
        "Dimension n;",
        f"Indices x1,...,x{m};",
        f"Indices j1,...,j{k};",  # summed neuron indices: FORM contracts and counts them
        f"Symbols i1,...,i{m}, a1,...,a{m};",  # fixed neuron and sample indices
        "CFunctions K(symmetric), D(symmetric);",
        f"Set X: x1,...,x{m};",
        f"Set N: {neu};",
        f"Set A: {sam};",
        f"Local F = dd_(x1,...,x{m});",
        f"repeat id d_(x1?X[k1], x2?X[k2]) = {delta}*K(A[k1],A[k2]);",
        "id D(i1?, i1?) = 1;",
        "repeat id D(i1?, i2?)^2 = D(i1, i2);",
        ".end",
        "",
    ])


def time_form(name: str, k: int, form: str) -> float:
    """CPU seconds (user + sys) of ``form`` running :func:`form_program`."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "wick.frm")
        with open(path, "w") as fh:
            fh.write(form_program(name, k))
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        res = subprocess.run([form, "-q", path], cwd=tmp, capture_output=True, text=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if res.returncode != 0 or "rror" in res.stdout:
        raise RuntimeError(f"FORM failed on {name}, k={k}:\n{res.stdout}\n{res.stderr}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def run(quick: bool = False):
    form = shutil.which("form")
    rows = []
    for k in range(2, 6 if quick else 8):
        for name, expr in _patterns(k):
            t0, c0 = time.perf_counter(), time.process_time()
            result = wick(expr)
            dt, cpu = time.perf_counter() - t0, time.process_time() - c0
            t_form = time_form(name, k, form) if form else None
            ratio = cpu / t_form if t_form else None
            limit = TARGETS.get(2 * k)
            with_form = (2 * k, name) in FORM_TARGETS
            target, ok = "-", None
            if limit is not None:
                target, ok = f"< {limit:g} s", dt < limit
            if with_form and ratio is None:
                target += " (≤ FORM: no form on PATH)"
            elif with_form:
                target += ", ≤ FORM"
                ok = ok and ratio <= 1.0
            rows.append({
                "fields": 2 * k,
                "pattern": name,
                "pairings": double_factorial(2 * k - 1),
                "terms out": len(sp.Add.make_args(result)),
                "seconds": dt,
                "cpu s": cpu,
                "FORM cpu s": t_form,
                "derive/FORM": ratio,
                "target": target,
                "ok": ok,
            })
    return "Wick expansion with canonical merging (derive.wick) and FORM's naive enumeration", rows


if __name__ == "__main__":
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from run import print_table

    print_table(*run())
