"""The NTK at finite width (issue: NTK at finite width).  Cold derivation of all the NTK's
O(1/n) statistics (H1, A, B, D, F), and ``predict`` for tanh, depth 20: H1 for N = 1, 10 and
100 inputs (generated route), A, B, D, F for N = 1, 2 (generated) and 3 (batched) — time, and
the memory of the unique components (one per orbit of each quantity's index symmetry) against
dense N⁴ arrays.  A, B, D, F for N = 10 are not run (the batched route's 3-D and 4-D averages
take tens of minutes; the table shows predict's own announcement) and N = 100 is refused by
predict (dense N⁴ arrays); the table says so.  ``--quick`` uses depth 5."""
from __future__ import annotations

import subprocess
import sys
import time
import warnings

import numpy as np

COLD = """
from derive.derivation.layerstep import derive_layer_step
derive_layer_step(names=frozenset(["Theta", "H1", "A", "B", "D", "F"]))
"""

COLD_ALL = """
from derive.derivation.layerstep import derive_layer_step
derive_layer_step()
"""


def _fresh_process_seconds(body: str) -> float:
    code = "import time\nt = time.perf_counter()\n" + body + "\nprint(time.perf_counter() - t)\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def run(quick: bool = False):
    import derive
    from derive.base.errors import DeriveError
    from derive.numeric.evaluate import orbits
    from derive.numeric.prediction import ExpansionWarning, plan_work

    rows = []
    cold = _fresh_process_seconds(COLD)
    rows.append({"what": "cold derivation of Θ, H1, A, B, D, F (and what they read; fresh process)",
                 "seconds": cold, "memory": "-", "target": "time printed", "ok": None})
    cold = _fresh_process_seconds(COLD_ALL)
    rows.append({"what": "cold derivation of every declared quantity (fresh process)",
                 "seconds": cold, "memory": "-", "target": "time printed", "ok": None})
    L = 5 if quick else 20
    spec = derive.MLP(L, 64, "tanh", 0.0, 1.0)
    rng = np.random.default_rng(0)
    cases = [(1, "KH"), (4 if quick else 10, "KH"), (10 if quick else 100, "KH"),
             (1, "all"), (2, "all"), (3, "all"), (10, "all"), (100, "all")]
    for N, targets in cases:
        names = ["K", "Theta", "H1"] if targets == "KH" else ["K", "Theta", "H1", "A", "B", "D", "F"]
        what = f"predict tanh L={L}, N={N}: {', '.join(names)}"
        X = rng.normal(size=(N, 8))
        if targets == "all" and N >= 10:
            # not run: the batched route's 3-D and 4-D averages (its own estimate, or a refusal)
            said = []
            try:
                plan_work(spec, N, tuple(names), said.append)
                rows.append({"what": what, "seconds": None,
                             "memory": f"not run here; predict announces: {said[-1][-90:]}",
                             "target": "time printed", "ok": None})
            except DeriveError as err:
                rows.append({"what": what, "seconds": None, "memory": f"refused: {str(err)[:80]}…",
                             "target": "refused with advice", "ok": True})
            continue
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExpansionWarning)
            p = derive.predict(spec, X, targets=names)
        dt = time.perf_counter() - t0
        if targets == "KH":
            mem = f"{L * N * N * 8 * 3} B (N² per layer)"
        else:
            unique = sum(len(orbits(N, s, "full")) for s in ("pairs", "cross", "within", "swap"))
            mem = f"{8 * unique} B unique vs {4 * 8 * N ** 4} B dense, per layer"
        rows.append({"what": what + f" ({p.route} route)", "seconds": dt, "memory": mem,
                     "target": "time printed", "ok": None})
    return "The NTK at finite width (derive.predict)", rows
