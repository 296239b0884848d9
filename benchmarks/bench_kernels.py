"""K + Θ through the public ``derive.predict`` against neural-tangents (issue: performance,
goal 1), and G1 on all pairs against the same spec's K + Θ (goal 2).

Depth-20 MLPs (ReLU C_b 0, C_W 2; erf and tanh C_b 0.1, C_W 1), λ_b = C_b, λ_W = C_W (the
NTK neural-tangents computes in its "ntk" parameterisation), random inputs in 8 dimensions.
derive's time is of a warm ``predict(spec, X, targets=["K", "Theta"])`` (the generated
evaluator cached, as in a session), the best of 3; neural-tangents' of its jitted
``kernel_fn(X, None, get=("nngp", "ntk"))`` in float64 after a warm-up, best of 3, run in its
own interpreter between two derive runs (interleaved).  tanh goes through neural-tangents'
``ElementwiseNumerical`` (Gauss–Hermite, deg 25).  "max |ΔK|" is the largest difference of
the two output kernels.

neural-tangents is not a dependency of derive: point ``DERIVE_BENCH_NT_PYTHON`` at a Python
that has it (``pip install neural-tangents==0.6.5 jax==0.4.30 jaxlib==0.4.30
tf2jax==0.3.6``); without it the neural-tangents columns say "-".
"""
from __future__ import annotations

import json
import os
import subprocess
import time
import warnings

import numpy as np

DEPTH = 20
SPECS = {"relu": (0.0, 2.0), "erf": (0.1, 1.0), "tanh": (0.1, 1.0)}

NT_SCRIPT = r"""
import json, sys, time
import numpy as np
import jax
jax.config.update("jax_enable_x64", True)
from neural_tangents import stax
act, N, depth, Cb, CW = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
a = {"relu": stax.Relu, "erf": stax.Erf}.get(act)
a = a() if a else stax.ElementwiseNumerical(jax.numpy.tanh, deg=25)
layers = []
for _ in range(depth - 1):
    layers += [stax.Dense(64, W_std=CW ** 0.5, b_std=Cb ** 0.5), a]
layers += [stax.Dense(1, W_std=CW ** 0.5, b_std=Cb ** 0.5)]
kf = jax.jit(stax.serial(*layers)[2], static_argnames="get")
X = np.random.default_rng(0).normal(size=(N, 8))
out = kf(X, None, get=("nngp", "ntk"))
out[0].block_until_ready()
best = float("inf")
for _ in range(3):
    t = time.perf_counter()
    out = kf(X, None, get=("nngp", "ntk"))
    out[0].block_until_ready()
    best = min(best, time.perf_counter() - t)
np.save(sys.argv[6], np.asarray(out[0]))
print(json.dumps({"seconds": best}))
"""


def _nt(act: str, N: int, out: str):
    python = os.environ.get("DERIVE_BENCH_NT_PYTHON")
    if not python:
        return None
    Cb, CW = SPECS[act]
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", JAX_PLATFORMS="cpu")
    res = subprocess.run([python, "-c", NT_SCRIPT, act, str(N), str(DEPTH), str(Cb), str(CW), out],
                         capture_output=True, text=True, env=env, timeout=3600)
    if res.returncode != 0:
        return {"error": res.stderr.strip().splitlines()[-1][:80]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def _derive(spec, X, targets) -> tuple[float, object]:
    import derive
    from derive.numeric.prediction import ExpansionWarning

    best, p = float("inf"), None
    for _ in range(3):
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExpansionWarning)
            p = derive.predict(spec, X, targets=targets)
        best = min(best, time.perf_counter() - t)
    return best, p


def run(quick: bool = False):
    import tempfile

    import derive

    rows = []
    cases = [("relu", 100), ("erf", 100), ("tanh", 100), ("relu", 1000), ("erf", 1000),
             ("relu", 3000), ("erf", 3000)]
    if quick:
        cases = [("relu", 100), ("erf", 100), ("tanh", 30)]
    tmp = tempfile.mkdtemp()
    for act, N in cases:
        Cb, CW = SPECS[act]
        spec = derive.MLP(DEPTH, 64, act, Cb, CW, lambda_b=Cb, lambda_W=CW)
        X = np.random.default_rng(0).normal(size=(N, 8))
        _derive(spec, X[:2], ["K", "Theta"])  # generate the evaluator (cold) once
        t1, p = _derive(spec, X, ["K", "Theta"])
        nt = _nt(act, N, f"{tmp}/k.npy")
        t2, _ = _derive(spec, X, ["K", "Theta"])
        t = min(t1, t2)
        row = {"case": f"K + Θ, {act}, N = {N}", "derive s": t, "neural-tangents s": None,
               "derive / nt": None, "max |ΔK|": None, "target": "derive / nt ≤ 1", "ok": None}
        if nt and "seconds" in nt:
            row["neural-tangents s"] = nt["seconds"]
            row["derive / nt"] = t / nt["seconds"]
            row["max |ΔK|"] = float(np.abs(np.load(f"{tmp}/k.npy") - p.K[DEPTH]).max())
            row["ok"] = t <= nt["seconds"]
        elif nt:
            row["neural-tangents s"] = nt["error"]
        rows.append(row)
    for act in ("relu", "tanh"):
        N = 30 if quick else 100
        Cb, CW = SPECS[act]
        spec = derive.MLP(DEPTH, 64, act, Cb, CW)
        X = np.random.default_rng(0).normal(size=(N, 8))
        _derive(spec, X[:2], ["K", "Theta", "G1"])
        tk, _ = _derive(spec, X, ["K", "Theta"])
        tg, _ = _derive(spec, X, ["K", "Theta", "G1"])
        rows.append({"case": f"G1 on all pairs, {act}, N = {N}", "derive s": tg,
                     "neural-tangents s": "(none computes it)", "derive / nt": None,
                     "max |ΔK|": f"{tg / tk:.1f}× its K + Θ", "target": "≤ 10× K + Θ",
                     "ok": tg <= 10 * tk})
    return f"K + Θ and G1 through derive.predict, depth {DEPTH}, against neural-tangents", rows
