"""Gaussian expectations ⟨f⟩_K: single calls and vectorised batches (issue: foundation).

⟨tanh(z1) tanh(z2)⟩ to 1e-12 by quadrature, per call and per batch of 10 000 random
covariance matrices; ReLU and erf through their closed forms.  The achieved error is checked
against references written here, independent of derive: Gauss–Hermite of degree 300 for
tanh, the arc-cosine and arcsine formulas for ReLU and erf.
"""
from __future__ import annotations

import time

import numpy as np
import sympy as sp

from derive import gaussian_expectation

z1, z2 = sp.symbols("z1 z2")


def _random_covariances(B: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    diag = rng.uniform(0.2, 2.0, size=(B, 2))
    rho = rng.uniform(-0.95, 0.95, size=B)
    K = np.empty((B, 2, 2))
    K[:, 0, 0], K[:, 1, 1] = diag[:, 0], diag[:, 1]
    K[:, 0, 1] = K[:, 1, 0] = rho * np.sqrt(diag[:, 0] * diag[:, 1])
    return K


def _reference(K: np.ndarray, g, n: int = 300) -> np.ndarray:
    x, w = np.polynomial.hermite_e.hermegauss(n)
    w = w / w.sum()
    out = np.empty(len(K))
    for b, Kb in enumerate(K):
        L = np.linalg.cholesky(Kb)
        U1, U2 = np.meshgrid(x, x, indexing="ij")
        out[b] = (np.outer(w, w) * g(L[0, 0] * U1) * g(L[1, 0] * U1 + L[1, 1] * U2)).sum()
    return out


def _arccos_relu(K: np.ndarray) -> np.ndarray:
    """Cho & Saul's arc-cosine kernel of degree 1, written here independently."""
    a, b, c = K[:, 0, 0], K[:, 1, 1], K[:, 0, 1]
    th = np.arccos(np.clip(c / np.sqrt(a * b), -1, 1))
    return np.sqrt(a * b) / (2 * np.pi) * (np.sin(th) + (np.pi - th) * np.cos(th))


def _arcsin_erf(K: np.ndarray) -> np.ndarray:
    a, b, c = K[:, 0, 0], K[:, 1, 1], K[:, 0, 1]
    return 2 / np.pi * np.arcsin(2 * c / np.sqrt((1 + 2 * a) * (1 + 2 * b)))


def _time(fn, repeat: int = 1):
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def run(quick: bool = False):
    B = 1000 if quick else 10_000
    Ks = _random_covariances(B)
    rows = []
    cases = [("tanh", sp.tanh(z1) * sp.tanh(z2), lambda K: _reference(K, np.tanh)),
             ("relu", sp.Max(0, z1) * sp.Max(0, z2), _arccos_relu),
             ("erf", sp.erf(z1) * sp.erf(z2), _arcsin_erf)]
    for name, f, ref in cases:
        gaussian_expectation(f, Ks[0])  # warm caches (parsing, lambdify)
        t1, v1 = _time(lambda: gaussian_expectation(f, Ks[0]), repeat=5)
        tb, vb = _time(lambda: gaussian_expectation(f, Ks))
        sub = slice(0, 50)
        achieved = float(np.max(np.abs(vb.value[sub] - ref(Ks[sub]))))
        rows.append({"integrand": f"<{name}(z1) {name}(z2)>", "method": v1.method,
                     "per call ms": 1e3 * t1, f"batch {B} s": tb,
                     "per matrix us": 1e6 * tb / B, "max est. error": float(vb.error.max()),
                     "max |err| vs reference (50)": achieved,
                     "target": "1e-12",
                     "ok": float(vb.error.max()) <= 1e-12 and achieved <= 1e-12})
    return "Gaussian expectations (derive.gaussian_expectation)", rows
