r"""σ → the activation in the derived recursions (docs/conventions.md §6 step 6).

The layer step (:mod:`derive.derivation.layerstep`) keeps σ abstract; :func:`specialise` puts a concrete
activation in.  Both numeric back ends start from its output: the batched evaluator
(:mod:`derive.numeric.evaluate`) and the generated numpy modules (:mod:`derive.emit.numpy_module`).
"""
from __future__ import annotations

import sympy as sp
from sympy.core.function import AppliedUndef

from ..activations.catalogue import Activation
from ..algebra.nearly_gaussian import _average, cached_derivative
from ..algebra.symbols import DerivativeContraction, GaussianAverage
from .layerstep import SIGMA

__all__ = ["specialise"]


def specialise(expr: sp.Expr, act: Activation) -> sp.Expr:
    """σ → the activation in every average and contraction (docs/conventions.md §6 step 6); derivatives
    of σ written in a function are carried out, the sample derivatives a contraction takes are
    kept for evaluation."""
    def nth(x, k):
        return cached_derivative(act.expr, (act.z,) * k).subs(act.z, x)

    def put(f):
        # σ^{(k)}(ζ) is the k-th derivative of the activation at ζ, taken once per k (the
        # O(1/n²) recursions hold hundreds of them, up to the eighth: differentiating each
        # one again cost most of the time); other derivatives are carried out by doit below
        f = f.replace(lambda x: (isinstance(x, sp.Derivative) and isinstance(x.expr, AppliedUndef)
                                 and x.expr.func == SIGMA and len(x.variable_count) == 1
                                 and x.variable_count[0][0] == x.expr.args[0]),
                      lambda x: nth(x.expr.args[0], int(x.variable_count[0][1])))
        return f.replace(lambda x: isinstance(x, AppliedUndef) and x.func == SIGMA,
                         lambda x: nth(x.args[0], 0))

    # a contraction's functions may hold derivatives of σ themselves (σ'σ' of the NTK's
    # statistics): carried out; the derivatives the contraction takes are kept
    expr = expr.replace(lambda x: isinstance(x, DerivativeContraction),
                        lambda x: DerivativeContraction(x.tensor, [put(f).doit() for f in x.functions],
                                                        x.groups, x.kernel))
    return expr.replace(lambda x: isinstance(x, GaussianAverage),
                        lambda x: _average(put(x.function).doit(), x.kernel))
