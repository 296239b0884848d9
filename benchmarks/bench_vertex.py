"""The full four-point vertex V of N ≥ 3 inputs on the batched route (issue 15, goal 2):
``predict(spec, X, targets=["K", "V"], dense=False)`` for ReLU (C_W = 2, C_b = 0), tanh and
erf (C_b = 0.1, C_W = 1), depth 5, N = 3, 10, 30 inputs of dimension 4.  Each run is timed in
a fresh interpreter (so the derivation of the recursions, about 10 s, is included).  Targets:
N = 10 under 60 s; N = 30 "minutes" (no hard target).  ``--quick``: N = 3 and 10, tanh only.
Also the storage of V (one number per orbit) against the dense N⁴ array, and plan_work's
estimate beside the measured time (a run plan_work would refuse as too long is measured all
the same, its refusal lifted inside the benchmark's interpreter, and the row says so).
ReLU's averages are exact orthant moments (derive/activations/moments.py); tanh and erf take the
conditional quadrature rule."""
from __future__ import annotations

import json
import subprocess
import sys

_BODY = """
import json, time, numpy as np, derive
from derive.numeric.prediction import plan_work
act, N, L = {act!r}, {N}, {L}
spec = derive.MLP(L, 64, act, 0.0, 2.0) if act == "relu" else derive.MLP(L, 64, act, 0.1, 1.0)
X = np.random.default_rng(0).standard_normal((N, 4))
said, refused = [], ""
try:
    plan_work(spec, N, ("K", "V"), said.append, dense=False)
except derive.DeriveError as err:
    refused = "plan_work refuses (" + str(err).split("roughly ", 1)[-1].split(";")[0] + ")"
    import derive.numeric.prediction as prediction
    prediction.MAX_SECONDS = float("inf")  # measured all the same
    plan_work(spec, N, ("K", "V"), said.append, dense=False)
t = time.perf_counter()
p = derive.predict(spec, X, targets=["K", "V"], dense=False, warn_threshold=1e9)
sec = time.perf_counter() - t
v = p.V[L]
print(json.dumps({{"seconds": sec, "error": p.quadrature_error, "stored": v.nbytes,
                  "dense": 8 * N ** 4, "estimate": said[0].rsplit("roughly ", 1)[-1],
                  "note": refused}}))
"""


def _one(act: str, N: int, L: int, timeout: float) -> dict:
    code = _BODY.format(act=act, N=N, L=L)
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"seconds": None, "error": None, "stored": None, "dense": 8 * N ** 4,
                "estimate": "-", "note": f"over {timeout:.0f} s"}
    if out.returncode:
        tail = (out.stderr.strip().splitlines() or ["?"])[-1]
        return {"seconds": None, "error": None, "stored": None, "dense": 8 * N ** 4,
                "estimate": "-", "note": tail[:60]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(quick: bool = False):
    L = 5
    acts = ("tanh",) if quick else ("relu", "tanh", "erf")
    Ns = (3, 10) if quick else (3, 10, 30)
    rows = []
    for act in acts:
        for N in Ns:
            r = _one(act, N, L, timeout=3600)
            target = "< 60 s" if N == 10 else "-"
            ok = (r["seconds"] is not None and r["seconds"] < 60) if N == 10 else None
            rows.append({"activation": act, "N": N, "depth": L, "seconds": r["seconds"],
                         "plan_work estimate": r["estimate"],
                         "largest average error": r["error"],
                         "V bytes (per orbit)": r["stored"], "V bytes (dense)": r["dense"],
                         "note": r["note"], "target": target, "ok": ok})
    return "full four-point vertex V, batched route (issue 15 goal 2)", rows
