"""The ``derive`` command line.

    derive demo [--out DIR]           the main job on the built-in default example
    derive derive SPEC.toml           the main job on your spec (documents, evaluator, numbers)
    derive predict SPEC.toml [--json] the numbers only
    derive check SPEC.toml            Monte Carlo of actual networks vs the predictions, 1/n fits
    derive wick EXPR [--trace]        E[EXPR] for a product of Gaussian fields z[i,alpha]
    derive expect F --K MATRIX        ⟨F⟩_K for F in z1 … zm (closed form or quadrature)

Every sub-command has ``--help``.  Bad input ends with one line saying what to change
(exit status 2), never with a traceback.
"""
from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def _write_report(written: dict) -> None:
    print("wrote:")
    for name, path in written.items():
        print(f"  {path}")


def _demo(args) -> int:
    import numpy as np

    from .jobs import run_job
    from .specfile import DEMO, spec_from_mapping

    spec, X, targets, order = spec_from_mapping(DEMO, "the demo spec")
    print(f"derive demo: a {spec.depth}-layer tanh MLP at criticality (C_b = 0, C_W = 1), width "
          f"{spec.widths[0]}, two inputs; conventions: THEORY.md")
    written = run_job(spec, np.asarray(X), targets, order, args.out)
    _write_report(written)
    return 0


def _derive_cmd(args) -> int:
    from .jobs import run_job
    from .specfile import load_spec

    spec, X, targets, order = load_spec(args.spec)
    if args.targets:
        targets = tuple(args.targets)
    if args.order is not None:
        order = args.order
    written = run_job(spec, X, targets, order, args.out)
    _write_report(written)
    return 0


def _predict_cmd(args) -> int:
    import json

    import numpy as np

    from .jobs import predict_reporting_warnings, predictions_json
    from .specfile import load_spec

    spec, X, targets, order = load_spec(args.spec)
    p = predict_reporting_warnings(spec, X, order, targets, progress=not args.json)
    if args.json:
        print(json.dumps(predictions_json(p), indent=1))
        return 0
    np.set_printoptions(precision=6, suppress=False, linewidth=100)
    for l in range(1, spec.depth + 1):
        print(f"layer {l} (fan-in n = {p.fan_in(l)})")
        print("  K =", np.array2string(p.K[l], prefix="  K = "))
        if l in p.G1:
            print("  metric K + G1/n =", np.array2string(p.metric(l), prefix="  metric K + G1/n = "))
        if l in p.Theta:
            print("  Theta =", np.array2string(p.Theta[l], prefix="  Theta = "))
        if l in p.V:
            N = p.X.shape[0]
            diag = [p.V[l][a, a, a, a] for a in range(N)]
            print("  V_(aa)(aa) =", np.array2string(np.array(diag)))
    return 0


def _check_cmd(args) -> int:
    from pathlib import Path

    from .errors import DeriveError
    from .reality import DEFAULT_SAMPLES, PRECISE_SAMPLES, CheckError, check
    from .specfile import DEMO, load_spec, spec_from_mapping

    if args.spec == "demo":
        spec, X, _, _ = spec_from_mapping(DEMO, "the demo spec")
    else:
        spec, X, _, _ = load_spec(args.spec)
    try:
        widths = [int(w) for w in args.widths.split(",") if w.strip()]
    except ValueError:
        raise DeriveError(f"--widths {args.widths!r}: give whole numbers separated by commas, "
                          "e.g. --widths 32,64,128") from None
    samples = args.samples or (PRECISE_SAMPLES if args.precise else DEFAULT_SAMPLES)
    out = Path(args.out)
    print(f"derive check: {spec!r}, widths {widths}, {samples} networks per width (seed "
          f"{args.seed}); progress on stderr")
    failure = None
    try:
        res = check(spec, X, widths, samples, seed=args.seed, progress=True)
    except CheckError as err:
        if err.partial is None or not err.partial.rows:
            raise
        res, failure = err.partial, err
    out.mkdir(parents=True, exist_ok=True)
    print(res.table())
    res.to_csv(out / "check.csv")
    written = {"rows": out / "check.csv", "fits": out / "check_fits.csv"}
    if res.fits:
        res.plot(out / "check.png")
        written["plot"] = out / "check.png"
    _write_report(written)
    print(f"{res.seconds:.1f} s")
    if failure is not None:
        print(f"derive check: error: {failure} (partial results written above)", file=sys.stderr)
        return 2
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
    d = sub.add_parser("demo", help="the main job on the built-in default example",
                       description="Derive K, V, G1, Theta for a tanh MLP at criticality (depth "
                                   "10, width 64, two inputs) and write derivation.tex, "
                                   "derivation.md, evaluator.py, predictions.json and plot.png.")
    d.add_argument("--out", default="derive-demo", help="output directory (default ./derive-demo)")
    d.set_defaults(func=_demo)
    r = sub.add_parser("derive", help="the main job on your spec (TOML)",
                       description="Derive the recursions of the network in SPEC.toml and write "
                                   "the same outputs as 'derive demo'. Spec keys: activation, "
                                   "depth, widths, C_b, C_W, lambda_b, lambda_W, inputs (or "
                                   "input_gram), targets, order.")
    r.add_argument("spec", help="path of the spec file (TOML)")
    r.add_argument("--targets", nargs="+", choices=["K", "V", "G1", "Theta"],
                   help="quantities to derive (default: the spec's, else all)")
    r.add_argument("--order", type=int, choices=[0, 1], help="order in 1/n (default: the spec's)")
    r.add_argument("--out", default="derive-out", help="output directory (default ./derive-out)")
    r.set_defaults(func=_derive_cmd)
    q = sub.add_parser("predict", help="the numbers only, for your spec (TOML)",
                       description="Evaluate the derived recursions for the network and inputs of "
                                   "SPEC.toml and print K, the NLO metric, Theta and V's diagonal "
                                   "per layer.")
    q.add_argument("spec", help="path of the spec file (TOML)")
    q.add_argument("--json", action="store_true", help="print JSON (all arrays) instead")
    q.set_defaults(func=_predict_cmd)
    c = sub.add_parser("check", help="Monte Carlo of actual networks vs the predictions",
                       description="Sample random networks of SPEC.toml (or the built-in 'demo') "
                                   "at several hidden widths, compare per layer the metric and "
                                   "the four-point vertex with the derived LO and NLO "
                                   "predictions, and fit A + B/n (+ C/n² with ≥ 4 widths): the "
                                   "n → ∞ intercept against LO, the 1/n slope against the NLO "
                                   "term. Writes check.csv, check_fits.csv and check.png.")
    c.add_argument("spec", help="path of the spec file (TOML), or 'demo'")
    c.add_argument("--widths", default="32,64,128",
                   help="comma-separated hidden widths (default 32,64,128)")
    c.add_argument("--samples", type=int, default=None,
                   help="networks per width (default 20000; about a minute for the demo)")
    c.add_argument("--precise", action="store_true",
                   help="200000 networks per width (about 10× longer, 3× smaller error bars)")
    c.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    c.add_argument("--out", default="derive-check", help="output directory (default ./derive-check)")
    c.set_defaults(func=_check_cmd)
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
