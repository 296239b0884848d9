"""Monte Carlo throughput (issue 15, goal 4): networks per second of
``derive.reality.montecarlo.sample`` (metric and four-point estimators, no NTK; depth 6, tanh,
N = 2 inputs) against a plain batched numpy forward pass with the same widths, inputs and
activation and no statistics: the weights and biases of c networks drawn with numpy's
generator and scaled, one batched matmul per layer, the activation — what one would write by
hand.  Also float32 against float64, 1 against 2 Dask worker processes (when
``dask.distributed`` is installed), and (not with --quick) the notebooks' total run time,
executed as scripts in a subprocess without the Jupyter kernel start-up.

    python benchmarks/run.py montecarlo           # widths 64, 256, 1024
    python benchmarks/run.py montecarlo --quick   # widths 64, 256

Each time is the best of a few repeats, the contenders run in turn (other processes on the
machine add noise).  The sampler and the plain loop are timed in CPU seconds of this process:
both run single-threaded (OPENBLAS_NUM_THREADS=1), so that is their wall time on an idle
machine, without the time other processes take the core away; the Dask rows are timed in
wall seconds (their work is done in other processes).  The ratio is the plain float64 loop's
time over ``sample``'s (for the float32 rows too), ≥ 1 meaning the sampler is at least as
fast.  The plain loop gets the better of two chunk sizes (the sampler's shard, and 4 times
that).

What the two do with the same draws (numpy's standard normals, ~85-90 % of either's time):
the plain loop draws each W and b into a fresh array, scales it, and forms W h for both
inputs with one batched matmul (BLAS gemm, which repacks W first), adds b and applies tanh.
The sampler draws W into a reused buffer in cache-sized pieces, forms W x_α piece by piece,
one BLAS gemv per input while the piece is in cache, scales the c n N products by √(C_W/n)
instead of the c n² weights, then adds b, applies tanh, and on top accumulates its
statistics (metric, four-point function, block sums for the jackknife)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

X = np.array([[1.0, 0.5, -0.3], [0.2, -1.0, 0.4]])
DEPTH = 6
ROOT = Path(__file__).resolve().parents[1]


def _plain(spec, X, S, seed, chunk, dtype=np.float64):
    """The baseline: c networks at a time, forward pass only, no statistics."""
    rng = np.random.default_rng(seed)
    widths = [X.shape[1], *spec.widths, spec.widths[-1]]
    done = 0
    while done < S:
        c = min(chunk, S - done)
        h = np.broadcast_to(X.T.astype(dtype), (c,) + X.T.shape)
        for l in range(1, spec.depth + 1):
            n_in, n_out = widths[l - 1], widths[l]
            W = rng.standard_normal((c, n_out, n_in)) * np.sqrt(spec.C_W(l) / n_in)
            b = rng.standard_normal((c, n_out)) * np.sqrt(spec.C_b(l))
            W, b = W.astype(dtype, copy=False), b.astype(dtype, copy=False)
            h = np.tanh(np.matmul(W, h) + b[:, :, None])
        done += c


def _best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _best_interleaved(fns: dict, repeats: int) -> dict:
    """Best CPU time of each function (seconds of this process), run in turn (a b c a b c …),
    so that a burst of load from other processes does not fall on one of them only."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.process_time()
            fn()
            best[k] = min(best[k], time.process_time() - t0)
    return best


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


def _notebooks() -> list:
    rows, total = [], 0.0
    for nb in sorted((ROOT / "notebooks").glob("ch*.ipynb")):
        t = _notebook_seconds(nb)
        total += t
        rows.append({"what": f"notebook {nb.name} (as a script), seconds", "networks": None,
                     "networks/s": t, "plain networks/s": None, "ratio": None, "target": "-",
                     "ok": None})
    rows.append({"what": "notebooks, total seconds", "networks": None, "networks/s": total,
                 "plain networks/s": None, "ratio": None, "target": "-", "ok": None})
    return rows


def run(quick: bool = False):
    rows = _throughput(quick)
    return "Monte Carlo throughput (networks per second)", rows + ([] if quick else _notebooks())


def _throughput(quick: bool) -> list:
    import derive
    from derive.reality.montecarlo import sample, shard_size

    rows = []
    reps = 2 if quick else 5
    for n in ((64, 256) if quick else (64, 256, 1024)):
        spec = derive.MLP(DEPTH, n, "tanh", 0.1, 1.0)
        S = max(40, int((4_000_000 if quick else 12_000_000) / n ** 2))
        # the baseline's chunk: the sampler's shard, or 4 times as many networks if faster
        chunk = shard_size([X.shape[1]] + [n] * DEPTH)
        t = _best_interleaved({
            "plain": lambda: _plain(spec, X, S, 0, chunk),
            "plain4": lambda: _plain(spec, X, S, 0, 4 * chunk),
            "64": lambda: sample(spec, X, S, seed=0, ntk=False, progress=False),
            "32": lambda: sample(spec, X, S, seed=0, ntk=False, progress=False, dtype="float32"),
        }, reps)
        t_plain, t64, t32 = min(t["plain"], t["plain4"]), t["64"], t["32"]
        rows.append({"what": f"width {n}: sample, float64", "networks": S,
                     "networks/s": S / t64, "plain networks/s": S / t_plain,
                     "ratio": t_plain / t64, "target": "ratio ≥ 1",
                     "ok": t_plain / t64 >= 1.0})
        rows.append({"what": f"width {n}: sample, float32", "networks": S,
                     "networks/s": S / t32, "plain networks/s": S / t_plain,
                     "ratio": t_plain / t32, "target": "-", "ok": None})
    import importlib.util

    from derive.reality.distributed import connect

    if importlib.util.find_spec("distributed") is None:
        rows.append({"what": "Dask workers: dask.distributed not installed", "networks": None,
                     "networks/s": None, "plain networks/s": None, "ratio": None,
                     "target": "-", "ok": None})
        return rows
    n = 256
    spec = derive.MLP(DEPTH, n, "tanh", 0.1, 1.0)
    S = 400 if quick else 1200
    t_here = _best(lambda: sample(spec, X, S, seed=0, ntk=False, progress=False), 1)
    rows.append({"what": f"width {n}: sample in this process (no Dask)", "networks": S,
                 "networks/s": S / t_here, "plain networks/s": None, "ratio": None,
                 "target": "-", "ok": None})
    for k in (1, 2):
        with connect(workers=k) as client:     # cluster start-up not timed
            sample(spec, X, 40, seed=1, ntk=False, progress=False, scheduler=client)  # warm
            t = _best(lambda: sample(spec, X, S, seed=0, ntk=False, progress=False,
                                     scheduler=client), 1)
        rows.append({"what": f"width {n}: {k} Dask worker process(es), {os.cpu_count()} cores",
                     "networks": S, "networks/s": S / t, "plain networks/s": None,
                     "ratio": t_here / t, "target": "-", "ok": None})
    return rows
