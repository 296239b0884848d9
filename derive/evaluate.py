r"""Numbers from derived recursions: specialise σ, evaluate ⟨·⟩_K, iterate over layers.

This is the numeric back end of the layer step (:mod:`derive.layerstep`): the derived
expressions are specialised to an activation (σ → its SymPy definition, derivatives done),
their sample indices are bound to concrete inputs, every Gaussian average ⟨f⟩_K is evaluated
by :func:`derive.gaussian_expectation` (closed form or quadrature, with the covariance
restricted to the inputs it involves) and every tensor component is read from the previous
layer's arrays.  :func:`iterate_mlp` runs the recursion through a network.

Averages with a Dirac delta (derivatives of a kink, e.g. ReLU'') are rejected by the numeric
tier; the derivative-free forms for non-smooth σ are part of the recursion issue's remaining
work.
"""
from __future__ import annotations

from functools import lru_cache
from itertools import product

import numpy as np
import sympy as sp

from .activations import Activation, activation as _activation
from .errors import DeriveError
from .gaussian import gaussian_expectation
from .layerstep import SIGMA, WIDTH, WIDTH_PREV, LayerStep, derive_layer_step
from .spec import MLP
from .symbols import GaussianAverage, RandomVar

__all__ = ["specialise", "evaluate_component", "iterate_mlp", "cached_layer_step"]


@lru_cache(maxsize=1)
def cached_layer_step() -> LayerStep:
    """The generic layer step, derived once per process."""
    return derive_layer_step()


def specialise(expr: sp.Expr, act: Activation) -> sp.Expr:
    """σ → the activation inside every average, derivatives carried out (THEORY §6 step 6)."""
    def spec_avg(node: GaussianAverage):
        f = node.function.replace(lambda x: isinstance(x, sp.core.function.AppliedUndef)
                                  and x.func == SIGMA, lambda x: act(x.args[0]))
        f = f.doit()
        if not f.has(RandomVar):
            return f  # <c>_K = c
        rand = [x for x in sp.Mul.make_args(f) if x.has(RandomVar)]
        const = [x for x in sp.Mul.make_args(f) if not x.has(RandomVar)]
        return sp.Mul(*const) * GaussianAverage(sp.Mul(*rand), node.kernel)

    return expr.replace(lambda x: isinstance(x, GaussianAverage), spec_avg)


def evaluate_component(expr: sp.Expr, bind: dict, K: np.ndarray, tensors: dict,
                       scalars: dict, cache: dict) -> float:
    """The value of ``expr`` with sample indices bound to input numbers (``bind``: SampleIndex →
    0-based input), averages over N(0, K), tensor components from ``tensors`` (label → array)."""
    e = expr.xreplace({k: sp.Integer(v + 1) for k, v in bind.items()})
    reps = {}
    for avg in e.atoms(GaussianAverage):
        comps = sorted({r for r in avg.function.atoms(RandomVar)}, key=lambda r: int(r.indices[0]))
        idx = [int(r.indices[0]) - 1 for r in comps]
        zs = sp.symbols(f"z1:{len(comps) + 1}")
        f = avg.function.xreplace(dict(zip(comps, zs)))
        sub = K[np.ix_(idx, idx)]
        key = (f, sub.tobytes())
        if key not in cache:
            cache[key] = float(gaussian_expectation(f, sub))
        reps[avg] = cache[key]
    for t in e.atoms(sp.Indexed):
        label = str(t.base)
        if label not in tensors:
            raise DeriveError(f"no values for tensor {label} (have {sorted(tensors)})")
        reps[t] = tensors[label][tuple(int(i) - 1 for i in t.indices)]
    value = e.xreplace(reps).xreplace(scalars)
    try:
        return float(value)
    except TypeError:
        raise DeriveError(f"could not evaluate {value} to a number (unbound symbols "
                          f"{sorted(map(str, value.free_symbols))})") from None


def iterate_mlp(spec: MLP, X, order: int = 1) -> dict:
    """K, G1, V and Θ of every layer of ``spec`` on inputs ``X`` (N × n_0) from the derived
    layer step.  Returns ``{"K": {ℓ: (N,N)}, "G1": …, "V": {ℓ: (N,N,N,N)}, "Theta": …}``."""
    X = np.asarray(X, dtype=float)
    if X.ndim != 2 or not np.all(np.isfinite(X)):
        raise DeriveError(f"X must be a finite array of shape (N, n_0), got shape {X.shape}")
    N, n0 = X.shape
    act = spec.activation
    step = cached_layer_step()
    forms = {name: specialise(getattr(step, name), act) for name in ("K", "G1", "V", "Theta")}
    a = step.alphas
    G0 = X @ X.T / n0
    K = {1: spec.C_b(1) + spec.C_W(1) * G0}
    G1 = {1: np.zeros((N, N))}
    V = {1: np.zeros((N, N, N, N))}
    Th = {1: spec.lambda_b(1) + spec.lambda_W(1) * G0}
    widths = [n0, *spec.widths]
    for l in range(1, spec.depth):
        scalars = {step.C_b: spec.C_b(l + 1), step.C_W: spec.C_W(l + 1),
                   step.lambda_b: spec.lambda_b(l + 1), step.lambda_W: spec.lambda_W(l + 1),
                   WIDTH: widths[l], WIDTH_PREV: widths[l - 1]}
        tensors = {"K": K[l], "G1": G1[l], "V": V[l], "Theta": Th[l]}
        cache: dict = {}
        new = {"K": np.empty((N, N)), "G1": np.empty((N, N)), "Theta": np.empty((N, N)),
               "V": np.empty((N, N, N, N))}
        for p, q in product(range(N), repeat=2):
            bind = {a[0]: p, a[1]: q}
            for name in ("K", "G1", "Theta"):
                if name == "G1" and order < 1:
                    new[name][p, q] = 0.0
                    continue
                new[name][p, q] = evaluate_component(forms[name], bind, K[l], tensors, scalars, cache)
        # V_{(α1α2)(α3α4)}: evaluate one component per orbit of its pair symmetries
        for idx in product(range(N), repeat=4):
            p1, p2 = tuple(sorted(idx[:2])), tuple(sorted(idx[2:]))
            if idx != min(p1 + p2, p2 + p1):
                continue
            bind = dict(zip(a, idx))
            v = evaluate_component(forms["V"], bind, K[l], tensors, scalars, cache)
            for x, y in ((p1, p2), (p2, p1)):
                for u in {x, x[::-1]}:
                    for w in {y, y[::-1]}:
                        new["V"][u + w] = v
        K[l + 1], G1[l + 1], V[l + 1], Th[l + 1] = new["K"], new["G1"], new["V"], new["Theta"]
    return {"K": K, "G1": G1, "V": V, "Theta": Th}
