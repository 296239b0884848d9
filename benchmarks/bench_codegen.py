"""Generated numpy evaluators (issue: codegen).  K + Θ through L = 20 layers for N inputs:
the generated module (``Derivation.numpy_module()``) against the lambdified recursions of
``derive.numeric.evaluate`` (the same derived forms, SymPy lambdify + batched gaussian_expectation).
Reference points on this machine (the issue): neural-tangents ReLU NNGP+NTK, N = 100, L = 20:
about 4 ms per call after compilation; tanh about 2.3 s at only 1e-5 (Gauss–Hermite 25).
Targets: ReLU/erf no slower than that; tanh at 1e-10 faster than 2.3 s.  Also K + Θ + G1 with
G1 on all pairs (no target; the lambdify route needs the full N⁴ vertex for it)."""
from __future__ import annotations

import time

import numpy as np


def _time(fn, repeat=1):
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def run(quick: bool = False):
    import derive
    from derive.numeric.prediction import load_generated
    from derive.numeric.evaluate import iterate_mlp

    rows = []
    rng = np.random.default_rng(0)
    cases = [("relu", 0.0, 2.0, (100,) if quick else (100, 1000), 0.004),
             ("erf", 0.0, np.pi / 4, (100,) if quick else (100, 1000), 0.004),
             ("tanh", 0.0, 1.0, (20,) if quick else (100,), 2.3)]
    for act, C_b, C_W, Ns, ref in cases:
        spec = derive.MLP(20, 64, act, C_b, C_W)
        t0 = time.perf_counter()
        mod = load_generated(spec, ("K", "Theta"))
        gen = time.perf_counter() - t0
        rows.append({"what": f"{act}: derive + generate + load the evaluator", "seconds": gen,
                     "target": "-", "ok": None})
        for N in Ns:
            X = rng.normal(size=(N, 8))
            t_gen = _time(lambda: mod.evaluate(X, order=0, nlo="none"), repeat=3 if N <= 100 else 1)
            target = f"< {ref:g} s" if N == 100 else "-"
            rows.append({"what": f"{act}: generated evaluator, K + Theta, N={N}, L=20",
                         "seconds": t_gen, "target": target,
                         "ok": (t_gen < ref) if N == 100 else None})
            if N <= 100:
                t_lam = _time(lambda: iterate_mlp(spec, X, order=0, targets=("K", "Theta")))
                rows.append({"what": f"{act}: lambdify route (derive.numeric.evaluate), same job, N={N}",
                             "seconds": t_lam, "target": "-", "ok": None})
        # NLO: G1 on all pairs with V on the components of at most two distinct samples
        # (what G1 needs); the lambdify route needs the full V (N⁴) for the same G1
        nlo = load_generated(spec, ("K", "Theta", "G1"))
        # (kinked σ: the kink-split pair rule is slow, ~0.5 s per layer at N = 30)
        for N in ((10,) if quick else (10, 30 if act == "relu" else 100)):
            X = rng.normal(size=(N, 8))
            t_gen = _time(lambda: nlo.evaluate(X, order=1, nlo="pairs"))
            rows.append({"what": f"{act}: generated evaluator, K + Theta + G1 (pairs), N={N}, L=20",
                         "seconds": t_gen, "target": "-", "ok": None})
            if N <= 10 and act != "relu":  # ReLU: 4-D kinked averages of the full V fail at tol
                t_lam = _time(lambda: iterate_mlp(spec, X, order=1, targets=("K", "Theta", "G1")))
                rows.append({"what": f"{act}: lambdify route, same job (full V), N={N}",
                             "seconds": t_lam, "target": "-", "ok": None})
    return "Generated evaluators vs lambdify (K + Theta, L = 20)", rows
