"""The derive command line.

    derive demo [--out DIR] [--force]        the main job on the built-in default example
    derive derive SPEC.toml [--out DIR]      the main job on your spec (documents, evaluator,
                                             numbers)
    derive predict SPEC.toml [--json]        the numbers only
    derive check SPEC.toml [--out DIR]       Monte Carlo of actual networks vs the predictions,
                                             1/n fits
    derive wick EXPR [--trace]               E[EXPR] for a product of Gaussian fields z[i,alpha]
    derive expect F --K MATRIX               <F>_K for F in z1 ... zm (closed form or quadrature)

Every command has --help; derive --version prints the version.

Failures end with exit status 2 and one line on stderr, never a traceback:
"derive COMMAND: error: ..." for bad input (it says what to change) and for files that cannot
be read or written (which path, and why); "derive COMMAND: internal error: ..." for a bug
(derive --debug COMMAND ... shows its traceback), also when an API boundary of derive has
already wrapped it (an error carrying its cause).  Ctrl-C prints "derive COMMAND: interrupted"
(exit 130); a closed output pipe (derive wick ... | head -1) ends quietly (exit 141).
Mistakes in the argument syntax get argparse's usage message (exit 2).

Outputs of demo, derive and check are written safely (module derive.cli.outputs): --out is checked
before the computation starts; every file is staged next to it and the complete set replaces
the old one at once (a run killed part-way leaves the old set); derive-manifest.json records
the derive version, the command, the spec and the sha256 of every file; files in --out that a
user edited or derive did not write are replaced only with --force.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

__all__ = ["main"]


#: exit statuses besides 0 (success): 2 for every error, 130 = 128 + SIGINT for Ctrl-C (as a
#: shell reports a process killed by SIGINT), 141 = 128 + SIGPIPE for a closed output pipe
#: (what a shell reports for a process killed by SIGPIPE, e.g. ``yes | head -1``)
EXIT_ERROR, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 2, 130, 141


def _fail(message: str):
    from ..base.errors import DeriveError

    return DeriveError(message)


def _whole(text: str, flag: str, minimum: int, why: str = "") -> int:
    """A whole number ≥ ``minimum`` from a command-line value, or a DeriveError."""
    try:
        value = int(str(text).strip())
    except ValueError:
        raise _fail(f"{flag} {text!r} is not a whole number; give one ≥ {minimum}{why}") \
            from None
    if value < minimum:
        raise _fail(f"{flag} {value}: give a whole number ≥ {minimum}{why}")
    return value


def _positive_float(text: str, flag: str, example: str) -> float:
    try:
        value = float(str(text).strip())
    except ValueError:
        raise _fail(f"{flag} {text!r} is not a number; give a positive number, e.g. {flag} "
                    f"{example}") from None
    if not math.isfinite(value) or value <= 0:
        raise _fail(f"{flag} {text}: give a positive finite number, e.g. {flag} {example}")
    return value


def _command(args) -> list:
    return ["derive", *args.argv]


def _write_report(written: dict) -> None:
    print("wrote:")
    for path in written.values():
        print(f"  {path}")


def _demo(args) -> int:
    from .jobs import run_job
    from .specfile import DEMO, spec_from_mapping

    spec, X, targets, order = spec_from_mapping(DEMO, "the demo spec")
    print(f"derive demo: a {spec.depth}-layer tanh MLP at criticality (C_b = 0, C_W = 1), width "
          f"{spec.widths[0]}, two inputs; conventions: docs/conventions.md", flush=True)
    written = run_job(spec, X, targets, order, args.out, force=args.force,
                      command=_command(args), pdf=args.pdf)
    _write_report(written)
    return 0


def _derive_cmd(args) -> int:
    from .jobs import run_job
    from .specfile import load_spec

    spec, X, targets, order = load_spec(args.spec, targets=args.targets, order=args.order)
    written = run_job(spec, X, targets, order, args.out, force=args.force,
                      command=_command(args), pdf=args.pdf)
    _write_report(written)
    return 0


def _predict_cmd(args) -> int:
    import json

    import numpy as np

    from ..derivation.quantities import MULTI, quantity
    from .jobs import predict_reporting_warnings, predictions_json
    from .specfile import load_spec

    tol = None if args.tol is None else _positive_float(args.tol, "--tol", "1e-10")
    spec, X, targets, order = load_spec(args.spec, targets=args.targets, order=args.order)
    p = predict_reporting_warnings(spec, X, order, targets, progress=not args.json, tol=tol)
    if args.json:
        print(json.dumps(predictions_json(p), indent=1))
        return 0
    np.set_printoptions(precision=6, suppress=False, linewidth=100)
    for l in range(1, spec.depth + 1):
        print(f"layer {l} (fan-in n = {p.fan_in(l)})")
        print("  K =", np.array2string(p.K[l], prefix="  K = "))
        if l in p.G1 and (p.order < 2 or l in p.G2):
            label = "  metric K + G1/n" + (" + G2/n^2" if p.order >= 2 else "") + " = "
            print(label, np.array2string(p.metric(l), prefix=label), sep="")
        if l in p.Theta:
            print("  Theta =", np.array2string(p.Theta[l], prefix="  Theta = "))
        if l in p.H1 and l in p.Theta:
            print("  NTK mean Theta + H1/n =", np.array2string(
                p.ntk_mean(l), prefix="  NTK mean Theta + H1/n = "))
        N = p.X.shape[0]
        if l in p.G2:
            print("  G2 =", np.array2string(p.G2[l], prefix="  G2 = "))
        for q in MULTI:
            if l in getattr(p, q):
                diag = [getattr(p, q)[l][(a,) * quantity(q).rank] for a in range(N)]
                name = {"V": "V_(aa)(aa)", "V1": "V1_(aa)(aa)", "U": "U_(aa)(aa)(aa)"}.get(
                    q, f"{q}_aaaa")
                print(f"  {name} =", np.array2string(np.array(diag)))
    return 0


def _check_widths(text: str) -> list:
    example = "e.g. --widths 32,64,128"
    tokens = [t.strip() for t in str(text).split(",")]
    if not any(tokens):
        raise _fail(f"--widths {text!r} is empty; give hidden widths separated by commas, {example}")
    widths = []
    for t in tokens:
        if not t:
            continue
        try:
            n = int(t)
        except ValueError:
            raise _fail(f"--widths {text!r}: {t!r} is not a whole number; give whole numbers ≥ 2 "
                        f"separated by commas, {example}") from None
        if n < 2:
            raise _fail(f"--widths {text!r}: every width must be a whole number ≥ 2 (two "
                        f"different neurons are needed for the four-point function), {example}")
        widths.append(n)
    return widths


def _check_train_cmd(args) -> int:
    """``derive check SPEC --train``: trained ensembles against derive.train (orders 0 and 1)."""
    from .jobs import spec_json
    from .outputs import OutputDir
    from ..reality.check_train import DEFAULT_TRAIN_SAMPLES, DEFAULT_TRAIN_WIDTHS, check_train
    from .specfile import DEMO, DEMO_TRAIN, load_mapping, spec_from_mapping, train_settings

    if args.order not in (None, 1) or args.ntk or args.precise:
        raise _fail("--train compares the trained network at O(1/n): it takes neither --order "
                    "(other than 1), --ntk nor --precise")
    ignored = [flag for flag, given in (("--workers", args.workers is not None),
                                        ("--scheduler", args.scheduler is not None),
                                        ("--dtype", args.dtype != "float64"),
                                        ("--backend", args.backend != "numpy"),
                                        ("--device", args.device is not None)) if given]
    if ignored:
        raise _fail(f"--train trains float64 numpy networks in this process: {', '.join(ignored)} "
                    "apply to the initialisation check only; leave them out")
    data = {**DEMO, "train": DEMO_TRAIN} if args.spec == "demo" else load_mapping(args.spec)
    where = "the demo spec" if args.spec == "demo" else str(args.spec)
    spec, X, _, _ = spec_from_mapping(data, where)
    y, XB, eta, steps = train_settings(data.get("train"), X, where)
    widths = list(DEFAULT_TRAIN_WIDTHS) if args.widths is None else _check_widths(args.widths)
    samples = DEFAULT_TRAIN_SAMPLES if args.samples is None else _whole(
        args.samples, "--samples", 100, " networks per width")
    seed = _whole(args.seed, "--seed", 0)
    outdir = OutputDir(args.out, force=args.force, command=_command(args),
                       spec=spec_json(spec, X),
                       extra={"check_train": {"widths": sorted(set(widths)), "samples": samples,
                                              "seed": seed, "eta": eta, "steps": steps,
                                              "targets": y.tolist(),
                                              "test_inputs": XB.tolist()}},
                       planned=("train_check.csv", "train_check_fits.csv"))
    with outdir:
        print(f"derive check --train: {spec!r}, η = {eta:g}, {steps} steps, widths {widths}, "
              f"{samples} networks per width (seed {seed}); progress on stderr", flush=True)
        res = check_train(spec, X, y, XB, eta, steps, widths, samples, seed=seed, progress=True,
                          checkpoint=args.checkpoint)
        print(res.table())
        res.to_csv(outdir.file("train_check.csv"))
        outdir.file("train_check_fits.csv")  # written by to_csv next to train_check.csv
        written = outdir.commit()
    _write_report(written)
    print(f"{res.seconds:.1f} s")
    return 0


def _check_cmd(args) -> int:
    from .jobs import spec_json
    from ..reality.montecarlo import BLOCKS
    from .outputs import OutputDir
    from ..reality.check import (DEFAULT_SAMPLES, DEFAULT_WIDTHS, DEFAULT_WIDTHS_NNLO,
                                 PRECISE_SAMPLES, PRECISE_SAMPLES_NNLO, CheckError, check)
    from .specfile import DEMO, load_mapping, spec_from_mapping

    if args.train:
        return _check_train_cmd(args)
    data = DEMO if args.spec == "demo" else load_mapping(args.spec)
    spec, X, _, file_order = spec_from_mapping(
        data, "the demo spec" if args.spec == "demo" else str(args.spec))
    # --order, else the spec file's 'order' key, else None: the spec's max_order (derive.check's
    # default)
    order = args.order if args.order is not None else (
        file_order if "order" in data and args.spec != "demo" else None)
    nnlo = order == 2
    if args.widths is None:
        widths = list(DEFAULT_WIDTHS_NNLO if nnlo else DEFAULT_WIDTHS)
    else:
        widths = _check_widths(args.widths)
    minimum = 10 * BLOCKS  # what derive.check accepts
    if args.samples is None:
        samples = (PRECISE_SAMPLES_NNLO if nnlo else PRECISE_SAMPLES) if args.precise \
            else DEFAULT_SAMPLES
    else:
        samples = _whole(args.samples, "--samples", minimum,
                         f" networks per width, so that each of the {BLOCKS} jackknife blocks "
                         f"behind an error bar holds ≥ 10")
    seed = _whole(args.seed, "--seed", 0)
    workers = None if args.workers is None else _whole(args.workers, "--workers", 1)
    if workers is not None and args.scheduler is not None:
        raise _fail("give --workers N (a local Dask cluster) or --scheduler ADDRESS (a running "
                    "one), not both")
    run = {"dtype": args.dtype, "backend": args.backend, "device": args.device,
           "workers": workers, "scheduler": args.scheduler, "checkpoint": args.checkpoint}
    outdir = OutputDir(args.out, force=args.force, command=_command(args),
                       spec=spec_json(spec, X),
                       extra={"check": {"widths": sorted(set(widths)), "samples": samples,
                                        "seed": seed, "ntk": bool(args.ntk),
                                        **({"order": order} if order is not None else {}),
                                        # the forward pass, when not the default
                                        **({"dtype": args.dtype} if args.dtype != "float64"
                                           else {}),
                                        **({"backend": args.backend} if args.backend != "numpy"
                                           else {})}},
                       planned=("check.csv", "check_fits.csv", "check.png"))
    with outdir:  # --out checked before the Monte Carlo starts
        print(f"derive check: {spec!r}, widths {widths}, {samples} networks per width (seed "
              f"{seed}){', order 2' if nnlo else ''}; progress on stderr", flush=True)
        if nnlo and samples < PRECISE_SAMPLES_NNLO:
            print(f"derive check: order 2 with {samples} networks per width: the O(1/n²) terms "
                  f"are resolved with about {PRECISE_SAMPLES_NNLO} (--precise); fewer give "
                  "wide error bars", flush=True)
        failure = None
        try:
            res = check(spec, X, widths, samples, seed=seed, progress=True, ntk=args.ntk,
                        order=order, **run)
        except CheckError as err:
            if err.partial is None or not err.partial.rows:
                raise
            res, failure = err.partial, err
            outdir.extra["partial"] = f"stopped early: {err}"
        print(res.table())
        res.to_csv(outdir.file("check.csv"))
        outdir.file("check_fits.csv")  # written by to_csv next to check.csv
        if res.fits:
            res.plot(outdir.file("check.png"))
        written = outdir.commit()
    _write_report(written)
    print(f"{res.seconds:.1f} s")
    if failure is not None:
        print(f"derive check: error: {failure} (partial results written above)", file=sys.stderr)
        return EXIT_ERROR
    return 0


def _wick(args) -> int:
    import sympy as sp

    from .. import gaussian_field, neuron_indices, sample_indices, wick
    from ..algebra.trace import Trace

    z = gaussian_field("z", "K")
    names = {}
    for tok in args.neuron.split(","):
        if tok.strip():
            names[tok.strip()] = neuron_indices(tok.strip())[0]
    for tok in args.sample.split(","):
        if tok.strip():
            names[tok.strip()] = sample_indices(tok.strip())[0]

    from ..base.parsing import parse

    expr = parse(args.expr, names, fields={"z": z})
    trace = Trace() if args.trace else None
    result = wick(expr, trace=trace)
    if trace is not None:
        print(trace)
        print()
    print(sp.latex(result) if args.latex else sp.sstr(result))
    return 0


def _expect(args) -> int:
    import numpy as np

    from .. import gaussian_expectation

    tol = _positive_float(args.tol, "--tol", "1e-10")
    try:
        K = np.array([[float(x) for x in row.split(",")] for row in args.K.split(";")])
    except ValueError:
        raise _fail(f"--K {args.K!r} is not a matrix; write rows separated by ';' and "
                    "entries by ',', e.g. --K '1,0.5;0.5,1'") from None
    v = gaussian_expectation(args.f, K, tol=tol)  # the string is parsed in z1 … zm
    print(f"{float(v):.16g}  ± {float(v.error):.1e}  ({v.method})")
    return 0


def _parser() -> argparse.ArgumentParser:
    from .. import __version__

    p = argparse.ArgumentParser(prog="derive", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"derive {__version__}")
    debug_help = "on an error, show the Python traceback instead of one line (for bug reports)"
    p.add_argument("--debug", action="store_true", help=debug_help)
    # --debug is accepted after the command too (without overriding one given before it)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help=debug_help)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def add(name, **kw):
        return sub.add_parser(name, parents=[common], **kw)

    safe = (" The files are staged next to DIR and replace its previous contents all at once "
            "when every one is written (a run killed part-way leaves the old set); "
            "derive-manifest.json records the derive version, the command, the spec and the "
            "sha256 of each file. Files in DIR that a user edited or derive did not write are "
            "not replaced without --force.")
    force_help = ("replace files in the output directory that were edited or not written by "
                  "derive (never subdirectories or links)")

    def targets_arg(parser, what):
        from ..derivation.quantities import TARGETS  # the declarations (no SymPy import)

        parser.add_argument("--targets", nargs="+", choices=tuple(TARGETS), metavar="T",
                            help=f"quantities to {what}, any of {' '.join(TARGETS)} "
                                 "(default: the spec's, else K V G1 Theta)")
        parser.add_argument("--order", type=int, choices=[0, 1, 2],
                            help="order in 1/n (default: the spec's, else the highest order a "
                                 "target enters at: 2 for G2, V1, U, 1 for an O(1/n) quantity, "
                                 "else 0)")

    pdf_help = "also compile derivation.tex to derivation.pdf (needs pdflatex on PATH)"
    d = add("demo", help="the main job on the built-in default example",
            description="Derive K, V, G1, Theta for a tanh MLP at criticality (depth 10, width 64, "
                        "two inputs) and write derivation.tex, derivation.md, evaluator.py, "
                        "predictions.json, plot.png and derive-manifest.json into DIR." + safe)
    d.add_argument("--out", default="derive-demo", metavar="DIR",
                   help="output directory (default ./derive-demo)")
    d.add_argument("--force", action="store_true", help=force_help)
    d.add_argument("--pdf", action="store_true", help=pdf_help)
    d.set_defaults(func=_demo)

    r = add("derive", help="the main job on your spec (TOML)",
            description="Derive the recursions of the network in SPEC.toml and write the same "
                        "outputs as 'derive demo'. Spec keys: activation, depth (≤ 10000), widths, "
                        "C_b, C_W, lambda_b, lambda_W, inputs (or input_gram), targets, order; "
                        "architecture = \"residual\" with xi, gamma, or a forward equation of "
                        "your own with forward, scalars."
                        + safe)
    r.add_argument("spec", help="path of the spec file (TOML)")
    targets_arg(r, "derive")
    r.add_argument("--out", default="derive-out", metavar="DIR",
                   help="output directory (default ./derive-out)")
    r.add_argument("--force", action="store_true", help=force_help)
    r.add_argument("--pdf", action="store_true", help=pdf_help)
    r.set_defaults(func=_derive_cmd)

    q = add("predict", help="the numbers only, for your spec (TOML)",
            description="Evaluate the derived recursions for the network and inputs of SPEC.toml "
                        "and print K, the NLO metric, Theta and V's diagonal per layer.")
    q.add_argument("spec", help="path of the spec file (TOML)")
    targets_arg(q, "evaluate")
    q.add_argument("--tol", default=None, metavar="TOL",
                   help="absolute tolerance of the Gaussian quadratures, a positive number "
                        "(default: derive.predict's)")
    q.add_argument("--json", action="store_true", help="print JSON (all arrays) instead")
    q.set_defaults(func=_predict_cmd)

    c = add("check", help="Monte Carlo of actual networks vs the predictions",
            description="Sample random networks of SPEC.toml (or the built-in 'demo') at several "
                        "hidden widths, compare per layer the metric and the four-point vertex "
                        "(with --ntk also the NTK mean and A, B, D, F) "
                        "with the derived LO and NLO predictions, and fit A + B/n (+ C/n² with ≥ 4 "
                        "widths): the n → ∞ intercept against LO, the 1/n slope against the NLO "
                        "term. With --order 2 also the O(1/n²) terms: the metric's "
                        "1/n² curvature against G2, V's 1/n slope against V1 and n² × the "
                        "cumulant of three different neurons against U. "
                        "Writes check.csv, check_fits.csv, check.png and "
                        "derive-manifest.json into DIR." + safe)
    c.add_argument("spec", help="path of the spec file (TOML), or 'demo'")
    c.add_argument("--widths", default=None,
                   help="comma-separated hidden widths, each ≥ 2 (default 32,64,128; with "
                        "--order 2, ≥ 3 each, default 4,6,8,12,16)")
    c.add_argument("--samples", default=None, metavar="S",
                   help="networks per width, ≥ 200 (default 20000; about a minute for the demo)")
    c.add_argument("--precise", action="store_true",
                   help="200000 networks per width (about 10× longer, 3× smaller error bars); "
                        "with --order 2, 1000000 networks per width "
                        "(measured: V's 1/n slope against V1 at about 6σ and U at about 14σ in "
                        "layer 4 of tanh at criticality, widths 4 … 16, one input; about 6 min "
                        "on 2 cores; the metric's 1/n² term G2 stays unresolved)")
    c.add_argument("--order", type=int, choices=[0, 1, 2], default=None,
                   help="order in 1/n of the predictions compared (default: the spec's, 1 for "
                        "an MLP); 2 adds G2, V1 and U")
    c.add_argument("--seed", default="0", help="random seed, a whole number ≥ 0 (default 0)")
    c.add_argument("--train", action="store_true",
                   help="instead: train ensembles by gradient descent (the spec's 'train' "
                        "table: targets for its inputs — one per input, or one row of n_out per "
                        "input —, test_inputs, eta, steps) and "
                        "compare the per-step mean, covariance and NTK drift with "
                        "derive.train at orders 0 and 1 (fits A + B/n; default widths 32,64,128, "
                        "5000 networks each); writes train_check.csv and train_check_fits.csv")
    c.add_argument("--ntk", action="store_true",
                   help="also compare the NTK: its mean (LO Theta, NLO slope H1) and its O(1/n) "
                        "statistics A, B, D, F (the NTK of each network costs n² N² per layer)")
    c.add_argument("--dtype", default="float64", choices=("float64", "float32"),
                   help="precision of the forward pass (default float64); statistics are "
                        "accumulated in float64 either way")
    c.add_argument("--backend", default="numpy", choices=("numpy", "torch"),
                   help="array library of the forward pass (default numpy); torch runs on a "
                        "GPU when one is present (pip install 'derive[torch]')")
    c.add_argument("--device", default=None,
                   help="with --backend torch: 'cpu', 'cuda' or 'cuda:K' (default cuda if "
                        "available, else cpu)")
    c.add_argument("--workers", default=None, metavar="K",
                   help="run the networks on a local Dask cluster of K processes (pip install "
                        "'derive[distributed]'); the same results as without, bit for bit")
    c.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run on a running Dask scheduler, e.g. tcp://host:8786 (its workers "
                        "need derive installed)")
    c.add_argument("--checkpoint", default=None, metavar="DIR",
                   help="save progress into DIR as shards of networks complete (with "
                        "--train: each width's trained networks, chunk by chunk, in "
                        "DIR/width<n>.json and .npz); the same command again resumes (refused "
                        "if its parameters differ)")
    c.add_argument("--out", default="derive-check", metavar="DIR",
                   help="output directory (default ./derive-check)")
    c.add_argument("--force", action="store_true", help=force_help)
    c.set_defaults(func=_check_cmd)

    w = add("wick", help="symbolic Gaussian expectation of a product of fields",
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

    e = add("expect", help="numeric Gaussian expectation <F>_K",
            description="<F>_K for F a function of z1 … zm, e.g. "
                        "derive expect 'tanh(z1)*tanh(z2)' --K '1,0.5;0.5,1'")
    e.add_argument("f")
    e.add_argument("--K", required=True, help="covariance: rows ';'-separated, entries ','")
    e.add_argument("--tol", default="1e-12",
                   help="absolute tolerance, a positive number (default 1e-12)")
    e.set_defaults(func=_expect)
    return p


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _os_error(err: OSError) -> str:
    """'PATH: why' for an OSError that reached the boundary (a file derive could not read or
    write)."""
    why = err.strerror or str(err) or type(err).__name__
    if err.filename is None:
        return why
    where = err.filename if err.filename2 is None else f"{err.filename} -> {err.filename2}"
    return f"{where}: {why}"


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's final flush of a stdout whose
    reader has gone does not print 'Exception ignored … BrokenPipeError' (the recipe of the
    Python docs, signal module, 'Note on SIGPIPE')."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def main(argv=None) -> int:
    """Run the command line (``argv`` without the program name; default ``sys.argv[1:]``);
    returns the exit status (see the module docstring)."""
    from ..base.errors import DeriveError

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = _parser()
        args = parser.parse_args(argv)  # usage errors: argparse's message, SystemExit(2)
    except KeyboardInterrupt:
        _report("derive: interrupted")
        return EXIT_INTERRUPTED
    args.argv = argv
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_ERROR
    name = f"derive {args.command}"
    try:
        status = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the boundary
        return status
    except BrokenPipeError:
        if args.debug:
            raise
        # the reader of our stdout has gone (`derive wick … | head -1`): nothing more can be
        # said there, and saying it on stderr would only be noise; exit 141 like a shell does
        # for a process killed by SIGPIPE
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        if args.debug:
            raise
        _report(f"{name}: interrupted")
        return EXIT_INTERRUPTED
    except DeriveError as exc:
        cause = getattr(exc, "cause", None)  # an InternalError: a bug caught at an API boundary
        if args.debug:
            if isinstance(cause, BaseException):
                raise cause
            raise
        if isinstance(cause, BaseException):
            _report(f"{name}: internal error: {_one_line(exc)} (rerun with --debug for the "
                    f"traceback)")
        else:
            _report(f"{name}: error: {_one_line(exc)}")
        return EXIT_ERROR
    except OSError as exc:
        if args.debug:
            raise
        _report(f"{name}: error: {_one_line(_os_error(exc))}")
        return EXIT_ERROR
    except Exception as exc:  # a bug: say so, one line, with the way to the traceback
        if args.debug:
            raise
        _report(f"{name}: internal error: {type(exc).__name__}: {_one_line(exc)} (please report; "
                f"rerun with --debug for the traceback)")
        return EXIT_ERROR


def _report(line: str) -> None:
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):  # stderr closed too: the exit status is all that is left
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
