r"""Gradient descent as equations: one step θ → θ − η λ ∇L, expanded in the output layer's tangent
fields (issue 17 part 3; docs/conventions.md §3).

With L = ½ Σ_{α∈A} Σ_j ε_{j;α}², ε_{j;α} = z_{j;α} − y_{j;α}, the step is
Δθ_μ = −η Σ_{j,α} λ_μ ∂_μ z_{j;α} ε_{j;α}.  Any function X(θ) of the parameters moves by its
Taylor series Σ_r (1/r!) ∂^r X · Δθ^r.  The fields are written, as in the chain rule of
:mod:`derive.architectures.forward`, as λ-contracted products of formal derivatives of the
output z (z itself; Ĥ, dĤ, ddIĤ, ddIIĤ of :data:`~derive.architectures.forward.TANGENT_FIELDS`):
each derivative by θ_μ adds an edge μ to one factor (the product rule, ``_lower``), each Δθ_μ adds
a factor −η ∂_μ z_{j;α} ε_{j;α} on the same edge, and the products are contracted into tangent
fields again (``_contract_edges``).  A product with four or more λ-contracted derivatives (a
fourth-derivative tensor) is O(1/n²) and dropped: that is the truncation at O(1/n) (book ch. ∞).

:func:`gradient_step` returns X(t+1) − X(t) for z, Ĥ and dĤ (the ddNTKs do not move at this
order), with repeated output neurons j_k summed (:class:`~derive.NeuronSum` over the n_L outputs)
and repeated training samples α_k summed over A (the convention of the printed equations).
The numeric dynamics of :mod:`derive.numeric.training_nlo` are evaluated from these expressions.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import sympy as sp

from ..algebra.contractions import simplify_sums
from ..algebra.symbols import NeuronSum, neuron_indices, sample_indices
from ..algebra.trace import Trace
from ..architectures.forward import _DZ, MAX_EDGES, TANGENT_FIELDS, _contract_edges, _lower

__all__ = ["EPS", "ETA", "N_OUT", "MOVING", "GradientStep", "gradient_step"]

#: ε_{j;α} = z_{j;α} − y_{j;α} on a training input α ∈ A
EPS = sp.Function("epsilon")
#: the global learning rate η
ETA = sp.Symbol("eta", positive=True)
#: the number of output neurons n_L (the range of the summed output neurons j)
N_OUT = sp.Symbol("n_L", positive=True)
#: the fields that move at O(1/n), in order; the ddNTKs are constant at this order
MOVING = ("z", "Hhat", "dHhat")


@dataclass(frozen=True)
class GradientStep:
    """X(t+1) − X(t) for each field of :data:`MOVING` (``updates[name]``), written at the neuron
    indices ``neurons[name]`` and sample indices ``samples[name]``; summed training samples
    are ``alpha1, alpha2, …`` (over A), summed output neurons ``j1, j2, …``."""

    updates: dict
    neurons: dict
    samples: dict
    trace: Trace


def _field(name: str, neurons: tuple, samples: tuple) -> sp.Expr:
    """The field as a λ-contracted product of formal derivatives of the output z."""
    if name == "z":
        return _DZ(neurons[0], samples[0])
    _, slots = TANGENT_FIELDS[name]
    edges = sp.symbols(f"nu0:{1 + max(e for slot in slots for e in slot)}")
    return sp.Mul(*(_DZ(i, a, *(edges[e] for e in slot))
                    for i, a, slot in zip(neurons, samples, slots)))


@lru_cache(maxsize=None)
def gradient_step() -> GradientStep:
    """The update equations of z, Ĥ and dĤ at O(1/n), derived (see the module docstring; rule
    ``tangent.chain_rule`` for the grouping into tangent fields)."""
    trace = Trace()
    updates, neurons, samples = {}, {}, {}
    js = neuron_indices("j1:5")
    alphas = sample_indices("alpha1:5")
    for name in MOVING:
        count = 1 if name == "z" else len(TANGENT_FIELDS[name][1])
        ni = neuron_indices(" ".join(f"i{k}" for k in range(count)))
        si = sample_indices(" ".join(f"delta{k}" for k in range(count)))
        base = _field(name, ni, si)
        total = sp.S.Zero
        for r in range(1, MAX_EDGES + 2):
            mus = sp.symbols(f"mu1:{r + 1}")
            term = base
            for mu in mus:
                term = _lower(term, mu)
            leaves = sp.Mul(*(-ETA * _DZ(js[k], alphas[k], mus[k]) * EPS(js[k], alphas[k])
                              for k in range(r)))
            expr = NeuronSum(sp.expand(term * leaves), *((js[k], N_OUT) for k in range(r)))
            step = simplify_sums(_contract_edges(expr, drop_beyond=True)) / sp.factorial(r)
            if step == 0:
                break  # every higher order has more derivatives still
            total += step
        updates[name], neurons[name], samples[name] = sp.expand(total), ni, si
        trace.record("tangent.chain_rule", base, updates[name],
                     note=f"{name}(t+1) − {name}(t): Taylor series in the step −ηλ∇L, grouped "
                     "into tangent fields, fourth derivatives (O(1/n²)) dropped")
    return GradientStep(updates, neurons, samples, trace)
