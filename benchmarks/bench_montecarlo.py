"""Monte Carlo throughput (issue: reality checks): network-layers per second of
``derive.reality.montecarlo.sample`` (batched over networks, metric + four-point estimators, no NTK) at
widths 64, 256, 1024, against a plain per-network numpy loop doing only the forward pass
(one matmul per layer and network, no estimators); and the notebooks' total run time
(executed as scripts in a subprocess, without the Jupyter kernel start-up)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _plain_loop(spec, X, n_networks, rng):
    """The baseline: one network at a time, forward pass only."""
    sigma = spec.activation.numpy(0)
    for _ in range(n_networks):
        h = X.T
        for l in range(1, spec.depth + 1):
            n_in = h.shape[0]
            n_out = spec.widths[l - 1] if l <= len(spec.widths) else spec.widths[-1]
            W = rng.standard_normal((n_out, n_in)) * np.sqrt(spec.C_W(l) / n_in)
            z = W @ h
            h = sigma(z)


def _notebook_seconds(path: Path) -> float:
    nb = json.loads(path.read_text())
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    code = "from IPython.display import display\n" + "\n".join(
        line for line in code.splitlines() if not line.lstrip().startswith(("%", "!")))
    env = {**os.environ, "MPLBACKEND": "Agg", "OPENBLAS_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=env,
                   capture_output=True, timeout=1800)
    return time.perf_counter() - t0


def run(quick: bool = False):
    import derive
    from derive.reality.montecarlo import sample

    rows = []
    X = np.array([[1.0, 0.5, -0.3], [0.2, -1.0, 0.4]])
    depth = 6
    for n in ((64, 256) if quick else (64, 256, 1024)):
        spec = derive.MLP(depth, n, "tanh", 0.0, 1.0)
        S = max(40, int(4_000_000 / n ** 2))          # about the same work per width
        t0 = time.perf_counter()
        sample(spec, X, S, seed=0, ntk=False, progress=False)
        t_mc = time.perf_counter() - t0
        S_loop = max(20, S // 4)
        t0 = time.perf_counter()
        _plain_loop(spec, X, S_loop, np.random.default_rng(0))
        t_loop = time.perf_counter() - t0
        rows.append({"what": f"width {n}, depth {depth}, N=2: derive.reality.montecarlo.sample",
                     "networks": S, "layers/s": S * depth / t_mc, "seconds": t_mc})
        rows.append({"what": f"width {n}: plain per-network numpy loop (forward only)",
                     "networks": S_loop, "layers/s": S_loop * depth / t_loop, "seconds": t_loop})
    if not quick:
        total = 0.0
        for nb in sorted((ROOT / "notebooks").glob("ch*.ipynb")):
            t = _notebook_seconds(nb)
            total += t
            rows.append({"what": f"notebook {nb.name} (as a script)", "networks": None,
                         "layers/s": None, "seconds": t})
        rows.append({"what": "notebooks, total", "networks": None, "layers/s": None,
                     "seconds": total})
    return "Monte Carlo throughput and notebook run time", rows
