r"""The O(1/n²) statistics of one input, layer by layer (docs/conventions.md §10).

:func:`single_input_nnlo` evaluates the recursions the layer step derives at order 2
(``derive_layer_step(order=2)``: K, G1, V, G2, V1, U) for one input x through an MLP with a
smooth activation: every sample index is the one input's, the Gaussian averages
⟨σ^{(a)} σ^{(b)} …⟩_K are one-dimensional and taken by Gauss–Hermite quadrature, and the
metric to second order is K + G1/n + G2/n² with n = n_{ℓ−1}.  It is the numeric core that
``predict(order=2)`` will use for single inputs; σ with kinks (whose averages of high
derivatives are distributions) are refused.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import sympy as sp

from ..algebra.symbols import GaussianAverage, RandomVar
from ..architectures.forward import C_B, C_W, WIDTH, WIDTH_PREV
from ..base.errors import DeriveError

__all__ = ["single_input_nnlo", "NNLO_NAMES"]

#: the quantities of one input, in the order they are returned
NNLO_NAMES = ("K", "G1", "V", "G2", "V1", "U")


@lru_cache(maxsize=8)
def _compiled(act):
    """The order-2 recursions at one input as numpy functions: (per quantity a function of
    (K, G1, V, G2, V1, U, C_b, C_W, n_l, n_lm1, averages…)), the averages' integrands; once
    per activation (specialising and compiling them takes tens of seconds)."""
    from ..derivation.layerstep import cached_layer_step
    from ..derivation.specialise import specialise

    step = cached_layer_step(None, 2, frozenset(NNLO_NAMES))
    a = step.alphas[0]  # every sample index becomes the one input's
    tensors = {name: sp.Symbol(name) for name in NNLO_NAMES}
    zeta = sp.Symbol("zeta_value")
    averages: dict = {}
    exprs = {}
    for name in NNLO_NAMES:
        e = specialise(step.recursions[name], act)
        e = e.xreplace({s: a for s in e.free_symbols if str(s).startswith("alpha")})
        e = e.xreplace({t: tensors[str(t.base)] for t in e.atoms(sp.Indexed)})

        def avg(node):
            h = node.function
            h = h.xreplace({r: zeta for r in h.atoms(RandomVar)})
            if h not in averages:
                averages[h] = sp.Symbol(f"avg{len(averages)}")
            return averages[h]

        exprs[name] = e.replace(lambda x: isinstance(x, GaussianAverage), avg)
    args = [tensors[n] for n in NNLO_NAMES] + [C_B, C_W, WIDTH, WIDTH_PREV] + list(averages.values())
    funcs = {n: sp.lambdify(args, exprs[n], modules="numpy") for n in NNLO_NAMES}
    integrands = [sp.lambdify([zeta], h, modules=["numpy", "scipy"]) for h in averages]
    return funcs, integrands


def single_input_nnlo(spec, x, points: int = 200) -> dict:
    """layer → {K, G1, V, G2, V1, U} (floats) of the input ``x`` (shape (n_0,)) through the
    MLP ``spec`` (smooth σ), from the order-2 recursions; Gaussian averages by ``points``-node
    Gauss–Hermite quadrature (no error control yet: for tanh at K ≈ 1, 120 nodes are good to
    about 1e-10 and 200 to 1e-14; larger K converges more slowly).  The metric of layer ℓ to
    O(1/n²) is K + G1/n_{ℓ−1} + G2/n_{ℓ−1}²."""
    act = spec.activation
    if act.kinks:
        raise DeriveError(f"the O(1/n²) recursions of one input are evaluated for smooth σ; "
                          f"{act.name} has kinks (its averages of high derivatives are "
                          "distributions)")
    x = np.asarray(x, dtype=float).ravel()
    funcs, integrands = _compiled(act)
    t, w = np.polynomial.hermite_e.hermegauss(points)
    w = w / np.sqrt(2 * np.pi)
    widths = [x.size, *spec.widths]  # n_0, n_1, … n_{L−1}
    out = {1: dict(K=spec.C_b(1) + spec.C_W(1) * float(x @ x) / x.size, G1=0.0, V=0.0, G2=0.0,
                   V1=0.0, U=0.0)}
    for l in range(1, spec.depth):
        cur = out[l]
        z = np.sqrt(cur["K"]) * t
        avgs = [float(np.dot(np.broadcast_to(f(z), z.shape), w)) for f in integrands]
        vals = [cur[n] for n in NNLO_NAMES] + [spec.C_b(l + 1), spec.C_W(l + 1), widths[l],
                                                widths[l - 1]] + avgs
        out[l + 1] = {n: float(funcs[n](*vals)) for n in NNLO_NAMES}
    return out
