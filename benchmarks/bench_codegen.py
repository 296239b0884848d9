"""Generated numpy evaluators (issue: codegen).  K + Θ through L = 20 layers for N inputs:
the generated module (``Derivation.numpy_module()``) against the lambdified recursions of
``derive.evaluate`` (the same derived forms, SymPy lambdify + batched gaussian_expectation).
Reference points on this machine (the issue): neural-tangents ReLU NNGP+NTK, N = 100, L = 20:
about 4 ms per call after compilation; tanh about 2.3 s at only 1e-5 (Gauss–Hermite 25).
Targets: ReLU/erf no slower than that; tanh at 1e-10 faster than 2.3 s."""
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
    from derive.emit_numpy import load_generated
    from derive.evaluate import iterate_mlp

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
            t_gen = _time(lambda: mod.evaluate(X, order=0, diagonal=False), repeat=3 if N <= 100 else 1)
            target = f"< {ref:g} s" if N == 100 else "-"
            rows.append({"what": f"{act}: generated evaluator, K + Theta, N={N}, L=20",
                         "seconds": t_gen, "target": target,
                         "ok": (t_gen < ref) if N == 100 else None})
            if N <= 100:
                t_lam = _time(lambda: iterate_mlp(spec, X, order=0, targets=("K", "Theta")))
                rows.append({"what": f"{act}: lambdify route (derive.evaluate), same job, N={N}",
                             "seconds": t_lam, "target": "-", "ok": None})
    return "Generated evaluators vs lambdify (K + Theta, L = 20)", rows
