"""The ``derive`` command line.

    derive demo                       the built-in default example
    derive wick EXPR [--trace]        E[EXPR] for a product of Gaussian fields z[i,alpha]
    derive expect F --K MATRIX        ⟨F⟩_K for F in z1 … zm (closed form or quadrature)

Every sub-command has ``--help``.  Bad input ends with one line saying what to change
(exit status 2), never with a traceback.
"""
from __future__ import annotations

import argparse
import sys
import time

__all__ = ["main"]


def _demo(args) -> int:
    import numpy as np
    import sympy as sp

    from . import (activation, gaussian_expectation, gaussian_field, neuron_indices,
                   nearly_gaussian_expectation, nearly_gaussian_field, sample_indices, weight,
                   bias, NeuronSum, wick)
    from .trace import Trace

    t0 = time.perf_counter()
    print("derive demo — the Gaussian/Wick engine and Gaussian expectations of activations")
    print("(conventions: THEORY.md; the full MLP derivation arrives with the recursion issue)\n")

    i1, i2, i3, i4, j = neuron_indices("i1 i2 i3 i4 j")
    a1, a2, a3, a4 = sample_indices("alpha1:5")
    z = gaussian_field("z", "K")
    print("1. Four-point function of a Gaussian field, E[z_{i1;a1} z_{i2;a2} z_{i3;a3} z_{i4;a4}]:")
    print("   " + sp.sstr(wick(z[i1, a1] * z[i2, a2] * z[i3, a3] * z[i4, a4])) + "\n")

    print("2. One layer, conditional on the previous one (THEORY §6 step 1):")
    W, b = weight("W", "C_W", "n0"), bias("b", "C_b")
    s = gaussian_field("sigma", "S")  # stands for σ(z) of the previous layer, held fixed
    n0 = sp.Symbol("n0", positive=True)

    def pre(i, a):
        return b[i] + NeuronSum(W[i, j] * s[j, a], (j, n0))

    trace = Trace()
    metric = wick(pre(i1, a1) * pre(i2, a2), over=[W, b], trace=trace)
    print("   E[z_{i1;a1} z_{i2;a2} | layer] = " + sp.sstr(metric))
    print("   steps:")
    for k, step in enumerate(trace, 1):
        print(f"     {k}. {step.rule:24s} {step.info.title} ({step.reference})")
    print()

    print("3. Nearly-Gaussian field (metric K + G1/n, vertex V/n), E[z^4] to O(1/n):")
    zn = nearly_gaussian_field("z", "K", "G1", "V", "n")
    print("   " + repr(nearly_gaussian_expectation(zn[i1, a1] ** 4)) + "\n")

    print("4. Gaussian expectations <f>_K of activations, K = [[1, 0.5], [0.5, 1]]:")
    K = np.array([[1.0, 0.5], [0.5, 1.0]])
    z1, z2 = sp.symbols("z1 z2")
    rows = []
    for name in args.activations:
        act = activation(name)
        for label, f in ((f"<{name}(z1) {name}(z2)>", act(z1) * act(z2)),
                         (f"<{name}'(z1) {name}'(z2)>",
                          act.derivative(1).subs(act.z, z1) * act.derivative(1).subs(act.z, z2))):
            v = gaussian_expectation(f, K)
            rows.append((label, float(v), float(v.error), v.method))
    w = max(len(r[0]) for r in rows)
    print(f"   {'expectation':{w}s}  {'value':>19s}  {'error':>8s}  method")
    for label, v, e, m in rows:
        print(f"   {label:{w}s}  {v:19.15f}  {e:8.1e}  {m}")
    print(f"\ndone in {time.perf_counter() - t0:.1f} s")
    return 0


def _wick(args) -> int:
    import sympy as sp

    from . import gaussian_field, neuron_indices, sample_indices, wick
    from .trace import Trace

    z = gaussian_field("z", "K")
    names = {}
    for tok in args.neuron.split(","):
        if tok.strip():
            names[tok.strip()] = neuron_indices(tok.strip())[0]
    for tok in args.sample.split(","):
        if tok.strip():
            names[tok.strip()] = sample_indices(tok.strip())[0]

    class _Z:
        def __getitem__(self, idx):
            return z[idx]

    from .activations import parse_function

    expr = parse_function(args.expr, {**names, "z": _Z()}, "expression")
    trace = Trace() if args.trace else None
    result = wick(expr, trace=trace)
    if trace is not None:
        print(trace)
        print()
    print(sp.latex(result) if args.latex else sp.sstr(result))
    return 0


def _expect(args) -> int:
    import numpy as np

    from . import gaussian_expectation
    from .errors import DeriveError

    try:
        K = np.array([[float(x) for x in row.split(",")] for row in args.K.split(";")])
    except ValueError:
        raise DeriveError(f"--K {args.K!r} is not a matrix; write rows separated by ';' and "
                          "entries by ',', e.g. --K '1,0.5;0.5,1'") from None
    v = gaussian_expectation(args.f, K, tol=args.tol)  # the string is parsed in z1 … zm
    print(f"{float(v):.16g}  ± {float(v.error):.1e}  ({v.method})")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="derive", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    d = sub.add_parser("demo", help="run the built-in default example")
    d.add_argument("--activations", nargs="+", default=["relu", "erf", "tanh"],
                   help="activations for the expectation table (default: relu erf tanh)")
    d.set_defaults(func=_demo)
    w = sub.add_parser("wick", help="symbolic Gaussian expectation of a product of fields",
                       description="E[EXPR] where EXPR is a polynomial in z[i,alpha] "
                                   "(E[z_{i;a} z_{j;b}] = δ_ij K_ab). Example: "
                                   "derive wick 'z[i,a]*z[j,b]*z[k,a]*z[l,b]'")
    w.add_argument("expr")
    w.add_argument("--neuron", default="i,j,k,l,m,i1,i2,i3,i4",
                   help="comma-separated neuron index names")
    w.add_argument("--sample", default="a,b,c,d,alpha,beta,gamma,delta",
                   help="comma-separated sample index names")
    w.add_argument("--trace", action="store_true", help="print the derivation steps")
    w.add_argument("--latex", action="store_true", help="print LaTeX")
    w.set_defaults(func=_wick)
    e = sub.add_parser("expect", help="numeric Gaussian expectation <F>_K",
                       description="<F>_K for F a function of z1 … zm, e.g. "
                                   "derive expect 'tanh(z1)*tanh(z2)' --K '1,0.5;0.5,1'")
    e.add_argument("f")
    e.add_argument("--K", required=True, help="covariance: rows ';'-separated, entries ','")
    e.add_argument("--tol", type=float, default=1e-12, help="absolute tolerance (default 1e-12)")
    e.set_defaults(func=_expect)
    return p


def main(argv=None) -> int:
    from .errors import DeriveError

    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except DeriveError as exc:
        print(f"derive {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
