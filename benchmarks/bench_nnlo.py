"""O(1/n²) (issue: O(1/n²)).  ``predict(spec, X, order=2)`` for tanh at criticality
(C_b = 0, C_W = 1), depth 10, N = 1 and 2 inputs: the first call in a fresh process (it
derives, specialises and compiles the order-2 recursions) and a warm call; target: the cold
call under a minute, a warm call seconds.  ``--quick``: depth 4."""
from __future__ import annotations

import subprocess
import sys

COLD = """
import numpy as np, derive
spec = derive.MLP({depth}, 64, "tanh", 0.0, 1.0)
X = np.array([[0.8, -0.3, 0.5], [0.1, 0.4, -0.9]])[:{N}]
t0 = time.perf_counter()
derive.predict(spec, X, order=2, warn_threshold=1.0)
cold = time.perf_counter() - t0
t0 = time.perf_counter()
p = derive.predict(spec, X, order=2, warn_threshold=1.0)
warm = time.perf_counter() - t0
print(cold, warm, p.route, float(np.asarray(p.U[{depth}]).flat[0]))
"""


def _fresh(body: str) -> list[str]:
    code = "import time\n" + body
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1].split()


def run(quick: bool):
    depth = 4 if quick else 10
    rows = []
    for N in (1, 2):
        cold, warm, route, u = _fresh(COLD.format(depth=depth, N=N))
        cold, warm = float(cold), float(warm)
        rows.append({"what": f"predict(order=2), tanh, depth {depth}, N = {N}", "route": route,
                     "cold s": cold, "warm s": warm, f"U^({depth})_11..": float(u),
                     "target": "cold < 60 s, warm seconds", "ok": cold < 60.0 and warm < 10.0})
    return "O(1/n²): predict(order=2) (fresh process per row)", rows
