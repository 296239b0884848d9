r"""``derive.predict``: numbers from the derived recursions (THEORY §4 quantities, any spec).

``predict(spec, X, order=1)`` returns a :class:`Prediction` with mappings ``.K``, ``.G1``,
``.V``, ``.Theta`` keyed by layer ℓ = 1 … L (float64 arrays of shapes (N, N), (N, N),
(N, N, N, N), (N, N)) and ``.metric(ℓ)`` = K + G1/n_{ℓ−1}.  ``targets`` limits the work to
some of them (e.g. ``targets=("K", "Theta", "G1")`` for many inputs: the full V costs N⁴
memory; the mappings of quantities not asked for are empty).  Kinked activations (ReLU,
leaky ReLU, user strings with Max/Abs/Heaviside) are evaluated with the derivative-free forms.

The numbers come from the derived expressions, never from a second, hand-written recursion:
K, Θ, G1 (and V for N ≤ 2) through the module generated from the derivation
(:mod:`derive.emit_numpy`, cached per spec), in which G1 is fed by the components of V with at
most two distinct samples (they close on themselves); the full V of N ≥ 3 inputs through the
batched evaluator of the same derived forms (:mod:`derive.evaluate`).

``.expansion[ℓ]`` estimates the relative size of the first neglected term,
(V/(n_{ℓ−1} K²))^{order+1} on the diagonal; a warning names the first layer where it exceeds
``warn_threshold`` (at criticality it grows like ℓ/n, THEORY §5).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from .contractions import check_order
from .errors import DeriveError
from .evaluate import TARGETS, _DiagonalVertex, iterate_mlp
from .spec import MLP

__all__ = ["predict", "Prediction", "ExpansionWarning"]


class ExpansionWarning(UserWarning):
    """The 1/n expansion is no longer small at some layer."""


@dataclass(frozen=True)
class Prediction:
    spec: MLP
    X: np.ndarray
    order: int
    K: dict = field(repr=False)
    G1: dict = field(repr=False)
    V: dict = field(repr=False)
    Theta: dict = field(repr=False)
    expansion: dict = field(repr=False)

    def fan_in(self, layer: int) -> int:
        """n_{ℓ−1} (n_0 is the input dimension)."""
        return [self.X.shape[1], *self.spec.widths][layer - 1]

    def metric(self, layer: int) -> np.ndarray:
        """K + G1/n_{ℓ−1} (with G1 = 0 at order 0)."""
        if layer not in self.K:
            raise DeriveError(f"layer must be 1 … {self.spec.depth}, got {layer!r}")
        if layer not in self.G1:
            raise DeriveError("the metric needs G1: call predict with 'G1' among the targets")
        return self.K[layer] + self.G1[layer] / self.fan_in(layer)


def _generated(spec: MLP, X: np.ndarray, order: int, nlo: bool, dense_v: bool) -> dict:
    """K, Θ (and G1, V) from the generated module of ``spec`` (cached per spec)."""
    from .emit_numpy import load_generated

    mod = load_generated(spec, ("K", "Theta", "G1") if nlo and order >= 1 else ("K", "Theta"))
    try:
        g = mod.evaluate(X, order=order, nlo="pairs" if nlo else "diagonal")
    except (ValueError, ArithmeticError) as err:
        raise DeriveError(str(err)) from None
    r = {"K": g["K"], "Theta": g["Theta"], "G1": g["G1"]}
    if dense_v:  # N ≤ 2: every component has at most two distinct samples
        N = X.shape[0]
        r["V"] = {l: (mod._pair_tensors(g["G1"][l], v, g["V_pairs"][l])[1][..., 0, N - 1]
                      if N == 2 else v.reshape(1, 1, 1, 1)) for l, v in g["V"].items()}
    else:
        r["V"] = {l: _DiagonalVertex(v) for l, v in g["V"].items()}
    return r


def predict(spec: MLP, X, order: int = 1, warn_threshold: float = 0.1, targets=None,
            progress: bool = False) -> Prediction:
    """Evaluate the derived recursions of ``spec`` on inputs ``X`` (N × n_0); see the module.
    ``progress=True`` prints one line per layer to stderr."""
    if not isinstance(spec, MLP):
        raise DeriveError(f"spec must be a derive.MLP, got {type(spec).__name__}")
    order = check_order(order)
    if order > 1:
        raise DeriveError(f"order {order} is not implemented: predict evaluates the recursions "
                          "to order 0 (leading) or 1 (first correction in 1/n)")
    X = np.asarray(X, dtype=float)
    if X.ndim != 2 or X.shape[0] < 1 or X.shape[1] < 1:
        raise DeriveError(f"X must have shape (N inputs, n_0 features), got {X.shape}")
    if not np.all(np.isfinite(X)):
        raise DeriveError("X contains NaN or infinite entries")
    if targets is None:
        targets = TARGETS
    elif isinstance(targets, str):
        targets = (targets,)
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        raise DeriveError(f"unknown target(s) {unknown}; predict computes {list(TARGETS)}")
    report = None
    if progress:
        import sys
        import time

        start = time.perf_counter()

        def report(l, L):
            print(f"predict: layer {l}/{L} done ({time.perf_counter() - start:.1f} s)",
                  file=sys.stderr, flush=True)

    N = X.shape[0]
    nlo_wanted = bool({"G1", "V"} & set(targets))
    if set(targets) <= {"K", "Theta", "G1"} or N <= 2:
        # the generated evaluator (derive.emit_numpy): K, Θ and G1 on all pairs, V on the
        # components with at most two distinct samples (all of V for N ≤ 2)
        r = _generated(spec, X, order, nlo_wanted, "V" in targets)
        if report is not None:
            report(spec.depth, spec.depth)
    else:
        r = iterate_mlp(spec, X, order, targets=targets, progress=report)
    expansion = {}
    for l in range(1, spec.depth + 1):
        d = np.diagonal(r["K"][l])
        n_in = [X.shape[1], *spec.widths][l - 1]
        V = r["V"][l]
        idx = np.arange(len(d))
        v = np.asarray(V[idx, idx, idx, idx])
        expansion[l] = float(np.max(np.abs(v) / (n_in * d ** 2)) ** (order + 1))
    bad = [l for l, e in expansion.items() if e > warn_threshold]
    if bad:
        warnings.warn(f"the first neglected term of the 1/n expansion is estimated at "
                      f"{expansion[bad[0]]:.3g} of the kept ones from layer {bad[0]} on (threshold "
                      f"{warn_threshold}); widen the network or expect large corrections",
                      ExpansionWarning, stacklevel=2)

    def kept(name):
        return dict(r[name]) if name in targets and name in r else {}

    G1 = kept("G1")
    if "G1" in targets and not G1:
        G1 = {l: np.zeros_like(r["K"][l]) for l in r["K"]}
    return Prediction(spec, X, order, dict(r["K"]), G1, kept("V"), kept("Theta"), expansion)
