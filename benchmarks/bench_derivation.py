"""Derivation and prediction (issue: recursions).  Targets: cold derivation of K, V, G1, Θ
< 5 s, cached < 0.1 s; the cold order-2 layer step (K, G1, V, G2, V1, U) < 60 s; the
layer-2 four-point vertex alone < 1 s; predict for tanh with L = 20 (N = 100 inputs for K
and Θ, N = 10 for V): time, and the memory of V's unique components against a dense N⁴
array.  ``--quick`` uses N = 20 and N = 4."""
from __future__ import annotations

import subprocess
import sys
import time

import numpy as np


def _fresh_process_seconds(body: str) -> float:
    """Run ``body`` in a new interpreter (cold caches) and return its own timing."""
    code = "import time\nt = time.perf_counter()\n" + body + "\nprint(time.perf_counter() - t)\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


COLD_DERIVATION = """
from derive.derivation.layerstep import derive_layer_step
derive_layer_step(names={"K", "V", "G1", "Theta"})  # the NTK's O(1/n) statistics: bench_ntk
"""

COLD_RESIDUAL = """
from derive.architectures.forward import XI, residual_equation
from derive.derivation.layerstep import derive_layer_step
derive_layer_step(residual_equation(), order=0)          # K, Θ with the skip
derive_layer_step(residual_equation().without([XI]), order=1,
                  names={"K", "V", "G1", "Theta"})        # ξ = 0: K, V, G1, Θ
"""

COLD_ORDER2 = """
from derive.derivation.layerstep import cached_layer_step
cached_layer_step(None, 2, frozenset(["K", "G1", "V", "G2", "V1", "U"]))
"""

LAYER2_VERTEX = """
import sympy as sp
from derive import NeuronSum, bias, nearly_gaussian_field, neuron_indices, sample_indices, split_sum, weight, wick
from derive.derivation.layerstep import SIGMA, WIDTH, expect_neuron_sums
n0 = sp.Symbol("n0", positive=True)
C_b, C_W = sp.symbols("C_b C_W")
i1, i2, i3, i4, j = neuron_indices("i1 i2 i3 i4 j")
a = sample_indices("alpha1:5")
z = nearly_gaussian_field("z", "K", "", "", n0)
zeta = nearly_gaussian_field("zeta", "K", "", "", n0, neuron=False)
W, b = weight("W", C_W, WIDTH), bias("b", C_b)
pre = lambda i, al: b[i] + NeuronSum(W[i, j] * SIGMA(z[j, al]), (j, WIDTH))
four = split_sum(wick(sp.Mul(*(pre(i, al) for i, al in zip((i1, i2, i3, i4), a))), over=[W, b]))
expect_neuron_sums(four, z, zeta, order=0)
"""


def run(quick: bool = False):
    import derive
    from derive import MLP

    rows = []
    cold = _fresh_process_seconds(COLD_DERIVATION)
    rows.append({"what": "cold derivation K, V, G1, Theta (fresh process)", "seconds": cold,
                 "target": "< 5 s", "ok": cold < 5.0})
    res = _fresh_process_seconds(COLD_RESIDUAL)
    rows.append({"what": "cold derivation ResMLP: K, Θ (ξ ≠ 0) and K, V, G1, Θ (ξ = 0)",
                 "seconds": res, "target": "< 5 s", "ok": res < 5.0})
    nnlo = _fresh_process_seconds(COLD_ORDER2)
    rows.append({"what": "cold order-2 layer step: K, G1, V, G2, V1, U (fresh process)",
                 "seconds": nnlo, "target": "< 60 s", "ok": nnlo < 60.0})
    spec = MLP(20, 64, "tanh", 0.0, 1.0)
    derive.derive(spec)
    t0 = time.perf_counter()
    derive.derive(spec)
    cached = time.perf_counter() - t0
    rows.append({"what": "cached derivation", "seconds": cached, "target": "< 0.1 s", "ok": cached < 0.1})
    v2 = _fresh_process_seconds(LAYER2_VERTEX)
    rows.append({"what": "layer-2 four-point vertex alone (fresh process)", "seconds": v2, "target": "< 1 s", "ok": v2 < 1.0})
    rng = np.random.default_rng(0)
    spec = MLP(20, 64, "tanh", 0.0, 1.0)
    N = 20 if quick else 100
    X = rng.normal(size=(N, 8))
    t0 = time.perf_counter()
    derive.predict(spec, X, order=0, targets=("K", "Theta"), warn_threshold=1.0)
    dt = time.perf_counter() - t0
    rows.append({"what": f"predict tanh L=20, N={N}: K and Theta (order 0, via the generated evaluator)",
                 "seconds": dt, "target": "N=100 (time printed; codegen issue: < 2.3 s)", "ok": None})
    N = 4 if quick else 10
    X = rng.normal(size=(N, 8))
    t0 = time.perf_counter()
    p = derive.predict(spec, X, order=1, warn_threshold=1.0)
    dt = time.perf_counter() - t0
    P = N * (N + 1) // 2
    unique = P * (P + 1) // 2
    rows.append({"what": f"predict tanh L=20, N={N}: K, G1, V, Theta (order 1); V: {unique} unique "
                         f"components computed = {8 * unique} B per layer vs dense N^4 "
                         f"{p.V[20].nbytes} B", "seconds": dt,
                 "target": "N=10 (time and memory printed)", "ok": None})
    return "Derivation and prediction (derive.derive, derive.predict)", rows
