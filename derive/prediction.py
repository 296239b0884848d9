r"""``derive.predict``: numbers from the derived recursions (THEORY §4 quantities, any spec).

``predict(spec, X, order=1)`` returns a :class:`Prediction` with mappings ``.K``, ``.G1``,
``.V``, ``.Theta`` keyed by layer ℓ = 1 … L (float64 arrays of shapes (N, N), (N, N),
(N, N, N, N), (N, N)) and ``.metric(ℓ)`` = K + G1/n_{ℓ−1}.  The numbers come from the
derived expressions (:mod:`derive.layerstep` → :mod:`derive.evaluate`), never from a second,
hand-written recursion.  ``.expansion[ℓ]`` estimates the relative size of the first neglected
term, (V/(n_{ℓ−1} K²))^{order+1} on the diagonal; a warning names the first layer where it
exceeds ``warn_threshold`` (at criticality it grows like ℓ/n, THEORY §5).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from .contractions import check_order
from .errors import DeriveError
from .evaluate import iterate_mlp
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
        return self.K[layer] + self.G1[layer] / self.fan_in(layer)


def predict(spec: MLP, X, order: int = 1, warn_threshold: float = 0.1) -> Prediction:
    """Evaluate the derived recursions of ``spec`` on inputs ``X`` (N × n_0); see the module."""
    if not isinstance(spec, MLP):
        raise DeriveError(f"spec must be a derive.MLP, got {type(spec).__name__}")
    order = check_order(order)
    X = np.asarray(X, dtype=float)
    if X.ndim != 2 or X.shape[0] < 1 or X.shape[1] < 1:
        raise DeriveError(f"X must have shape (N inputs, n_0 features), got {X.shape}")
    if not np.all(np.isfinite(X)):
        raise DeriveError("X contains NaN or infinite entries")
    r = iterate_mlp(spec, X, order)
    expansion = {}
    for l in range(1, spec.depth + 1):
        d = np.diagonal(r["K"][l])
        if not np.all(np.isfinite(r["K"][l])) or np.any(d <= 0):
            raise DeriveError(f"the kernel becomes singular at layer {l} (a variance ≤ 0 or not "
                              f"finite: diag K = {d}); check C_b, C_W and the inputs")
        n_in = [X.shape[1], *spec.widths][l - 1]
        v = np.array([r["V"][l][a, a, a, a] for a in range(len(d))])
        expansion[l] = float(np.max(np.abs(v) / (n_in * d ** 2)) ** (order + 1))
    bad = [l for l, e in expansion.items() if e > warn_threshold]
    if bad:
        warnings.warn(f"the first neglected term of the 1/n expansion is estimated at "
                      f"{expansion[bad[0]]:.2g} of the kept ones from layer {bad[0]} on (threshold "
                      f"{warn_threshold}); widen the network or expect large corrections",
                      ExpansionWarning, stacklevel=2)
    return Prediction(spec, X, order, r["K"], r["G1"], r["V"], r["Theta"], expansion)
