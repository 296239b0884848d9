r"""One layer of an MLP, derived from its forward equation (THEORY §6, steps 1–6).

:func:`derive_layer_step` takes layer ℓ to be nearly Gaussian (metric K + G1/n_{ℓ−1}, vertex
V/n_{ℓ−1}, THEORY §3) and derives the statistics of layer ℓ+1,

    z^{(ℓ+1)}_{i;α} = b_i + Σ_{j=1}^{n_ℓ} W_{ij} σ(z^{(ℓ)}_{j;α}),   Var b = C_b,  Var W = C_W / n_ℓ,

with σ an abstract function and every index general.  The steps, each recorded in the
returned trace:

1. Wick over the parameters of layer ℓ+1, conditional on layer ℓ (``wick(..., over=[W, b])``):
   the two- and four-point functions of z^{(ℓ+1)} as polynomials in the stochastic metric,
   i.e. in neuron sums of σ's;
2. the neuron-sum split Σ_{j,k} = Σ_{j=k} + Σ_{j≠k} (``split_sum``);
3. the nearly-Gaussian expectation over layer ℓ of every neuron sum: Σ_j f(z_j) → n_ℓ E[f(z)],
   Σ_{j≠k} f(z_j) g(z_k) → n_ℓ(n_ℓ−1) E[f(z_j) g(z_k)], each E by the operator form
   (:func:`derive.perturbative_expectation`);
4. truncation at first order in 1/n, with n_ℓ and n_{ℓ−1} of the same order (their ratio is
   kept): every width is scaled as n → n/ε and the ε⁰, ε¹ coefficients are taken (no ``O()``);
5. collection: K^{(ℓ+1)} is the ε⁰ metric, G1^{(ℓ+1)} = n_ℓ × its ε¹ part, and V^{(ℓ+1)} is
   n_ℓ × the δ_{i1i2}δ_{i3i4} coefficient of the connected four-point function.

The NTK mean Θ^{(ℓ+1)} comes the same way from the NTK forward equation of THEORY §3 at
leading order: Wick over W, δ contraction, then ``ntk.decouple_lo`` (Ĥ_{j1j2} → δ_{j1j2}Θ, its
fluctuations and correlations with z being O(1/n)) and the expectation of the neuron sums.

Gaussian averages stay inert (:class:`derive.GaussianAverage` over the layer-ℓ vector ζ).
The 1/n terms are first obtained with their sample sums kept (Σ_β T_β ⟨∂_β f⟩, inert
:class:`derive.DerivativeContraction`, stored in ``LayerStep.contracted``) and then collapsed
by the product rule (rule ``derivative.collapse``) into the component forms ``K``, ``G1``,
``V``, ``Theta``; ``LayerStep.steps`` holds the steps per target.  Numbers:
:mod:`derive.numeric.evaluate`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import sympy as sp

from ..algebra.contractions import split_sum, wick
from ..algebra.nearly_gaussian import collapse_contractions, perturbative_expectation
from ..algebra.symbols import (Family, NeuronIndex, NeuronSum, RandomVar, bias,
                               nearly_gaussian_field, neuron_indices, sample_indices, weight)
from ..algebra.trace import Trace
from ..base.errors import DeriveError

__all__ = ["LayerStep", "derive_layer_step", "cached_layer_step", "expect_neuron_sums", "ntk_mean_lo", "SIGMA", "NTK",
           "WIDTH", "WIDTH_PREV"]

#: the abstract activation
SIGMA = sp.Function("sigma")
#: the NTK of layer ℓ, Ĥ^{(ℓ)}_{j1 j2; α1 α2}, as a function of its indices
NTK = sp.Function("Hhat")
#: n_ℓ (width of layer ℓ, the fan-in of layer ℓ+1) and n_{ℓ−1}
WIDTH = sp.Symbol("n_l", positive=True)
WIDTH_PREV = sp.Symbol("n_lm1", positive=True)
_EPS = sp.Symbol("epsilon_width", positive=True)


@dataclass(frozen=True)
class LayerStep:
    """The derived recursions of one layer step (layer ℓ → ℓ+1), σ abstract.

    ``K``, ``G1`` are expressions in the sample indices ``alphas[:2]``; ``V`` in all four.
    Averages ⟨·⟩ are over ``zeta`` (layer ℓ's single-neuron vector, covariance ``K``).
    """

    K: sp.Expr
    G1: sp.Expr
    V: sp.Expr
    Theta: sp.Expr
    alphas: tuple
    zeta: Family
    C_b: sp.Symbol
    C_W: sp.Symbol
    lambda_b: sp.Symbol
    lambda_W: sp.Symbol
    trace: Trace
    #: the same recursions before the sample sums are carried out (inert
    #: :class:`derive.DerivativeContraction`); the numeric evaluator of kinked σ uses these
    contracted: dict = field(default_factory=dict, compare=False)
    #: target → the steps that produced its recursion (the shared ones repeated)
    steps: dict = field(default_factory=dict, compare=False)


def _neuron_of(factor: sp.Expr, summed: set) -> NeuronIndex | None:
    idx = {x for r in factor.atoms(RandomVar) for x in r.indices if isinstance(x, NeuronIndex)}
    idx &= summed
    if len(idx) > 1:
        raise DeriveError(f"factor {factor} couples several summed neurons; expected a product of "
                          "functions of one neuron each")
    return next(iter(idx)) if idx else None


def ntk_mean_lo(expr: sp.Expr, Theta: str = "Theta", trace: Trace | None = None) -> sp.Expr:
    """Replace Ĥ_{j1j2;α1α2} by its leading-order mean δ_{j1j2} Θ_{α1α2} (rule ntk.decouple_lo)."""
    from ..algebra.symbols import SampleTensor

    T = SampleTensor(Theta, 2, "sym")
    out = expr.replace(lambda x: isinstance(x, sp.core.function.AppliedUndef) and x.func == NTK,
                       lambda x: sp.KroneckerDelta(x.args[0], x.args[1]) * T[x.args[2], x.args[3]])
    out = out.replace(lambda x: isinstance(x, NeuronSum),
                      lambda x: NeuronSum(x.function.replace(
                          lambda y: isinstance(y, sp.KroneckerDelta) and y.args[0] == y.args[1],
                          lambda y: sp.S.One), *x.limits, exclude=x.exclude))
    if trace is not None and out != expr:
        trace.record("ntk.decouple_lo", expr, out)
    return out


def expect_neuron_sums(expr: sp.Expr, layer: Family, zeta: Family, order: int = 1,
                       collapse: bool = True) -> sp.Expr:
    r"""Replace every neuron sum of functions of layer-ℓ preactivations by its nearly-Gaussian
    expectation (THEORY §6 step 4): Σ_j f(z_j) → n E[f], Σ_{j≠k} f(z_j) g(z_k) → n(n−1) E[f g].

    ``layer`` is the family z_{j;α} of layer ℓ, ``zeta`` the matching single-neuron family whose
    averages the result is written in.  Terms without neuron sums must not hold ``layer``.
    With ``collapse=False`` the sample sums of the 1/n terms stay inert
    (:class:`derive.DerivativeContraction`).
    """
    out = sp.S.Zero
    for term in sp.Add.make_args(sp.expand(expr)):
        sums = [f for f in sp.Mul.make_args(term) if isinstance(f, NeuronSum)]
        rest = sp.Mul(*[f for f in sp.Mul.make_args(term) if not isinstance(f, NeuronSum)])
        if not sums:
            if any(r.family == layer for r in term.atoms(RandomVar)):
                raise DeriveError(f"term {term} holds layer variables outside a neuron sum")
            out += term
            continue
        if len(sums) > 1:
            raise DeriveError(f"term {term} holds several neuron sums; split them first")
        s = sums[0]
        vs = list(s.variables)
        summed = set(vs)
        groups = {v: sp.S.One for v in vs}
        coeff = rest
        for f in sp.Mul.make_args(s.function):
            v = _neuron_of(f, summed)
            if v is None:
                coeff *= f
            else:
                groups[v] *= f
        fs = []
        for v in vs:
            g = groups[v].replace(lambda x: isinstance(x, RandomVar) and x.family == layer,
                                  lambda x: zeta[x.indices[1]])
            fs.append(g)
        rng = s.limits[0][1]
        if len(vs) == 1:
            if s.exclude:
                raise DeriveError(f"sum {s} excludes free neurons; not handled")
            E = perturbative_expectation(fs[0], zeta, order, collapse=collapse)
            count = rng
        elif len(vs) == 2 and s.distinct and len(s.exclude) == 1:
            E = perturbative_expectation(fs[0], zeta, order, other=fs[1], collapse=collapse)
            count = rng * (rng - 1)
        else:
            raise DeriveError(f"sum {s}: only Σ_j and Σ_(j≠k) are handled at this order")
        out += coeff * count * E.as_expr()
    return out


def _series(expr: sp.Expr, widths: tuple, order: int) -> list[sp.Expr]:
    """Coefficients ε⁰ … ε^order of ``expr`` with every width n scaled to n/ε (THEORY §6
    step 5: an explicit truncation, no O()).  After expansion every term is a monomial in ε
    because the widths enter only through powers of n (sum counts) and 1/n (variances,
    nearly-Gaussian corrections); a negative power of ε means a growing term and is an error."""
    scaled = sp.expand(expr.xreplace({w: w / _EPS for w in widths}))
    out = [sp.S.Zero] * (order + 1)
    for term in sp.Add.make_args(scaled):
        k = term.as_powers_dict().get(_EPS, sp.S.Zero)
        if not k.is_Integer:
            raise DeriveError(f"term {term} is not a power series in 1/n")
        if k < 0:
            raise DeriveError(f"term {term} grows with the width; the expansion is inconsistent")
        if k <= order:
            out[int(k)] += term / _EPS ** k
    # the substitution also reached the width labels of families inside averages: restore them
    restore = {w / _EPS: w for w in widths}
    return [sp.expand(c.xreplace(restore)) for c in out]


def derive_layer_step(order: int = 1, trace: Trace | None = None) -> LayerStep:
    """Derive K, G1 and V of layer ℓ+1 from those of layer ℓ (see the module docstring)."""
    trace = trace if trace is not None else Trace()
    t2, t4, tH = Trace(), Trace(), Trace()  # the two-point, four-point and NTK chains
    C_b, C_W = sp.symbols("C_b C_W")
    z = nearly_gaussian_field("z", "K", "G1", "V", WIDTH_PREV)
    zeta = nearly_gaussian_field("zeta", "K", "G1", "V", WIDTH_PREV, neuron=False)
    W, b = weight("W", C_W, WIDTH), bias("b", C_b)
    i1, i2, i3, i4, j = neuron_indices("i1 i2 i3 i4 j")
    a = sample_indices("alpha1:5")

    def pre(i, al):
        return b[i] + NeuronSum(W[i, j] * SIGMA(z[j, al]), (j, WIDTH))

    two = wick(pre(i1, a[0]) * pre(i2, a[1]), over=[W, b], trace=t2)
    four = wick(sp.Mul(*(pre(i, al) for i, al in zip((i1, i2, i3, i4), a))), over=[W, b], trace=t4)
    four = split_sum(four, trace=t4)
    E2 = expect_neuron_sums(two, z, zeta, order, collapse=False)
    E4 = expect_neuron_sums(four, z, zeta, order, collapse=False)
    t2.record("nearly_gaussian.operator", two, E2, note="expectation of the neuron sums over layer ℓ")
    t4.record("nearly_gaussian.operator", four, E4, note="expectation of the neuron sums over layer ℓ")

    def metric(ia, ib, aa, ab):
        return E2.xreplace({i1: ia, i2: ib, a[0]: aa, a[1]: ab})

    widths = (WIDTH, WIDTH_PREV)
    M = E2.xreplace({i2: i1})  # δ_{i1 i2} → 1
    K0, K1 = _series(M, widths, 1)
    G1 = sp.expand(K1 * WIDTH)
    connected = E4 - (metric(i1, i2, a[0], a[1]) * metric(i3, i4, a[2], a[3])
                      + metric(i1, i3, a[0], a[2]) * metric(i2, i4, a[1], a[3])
                      + metric(i1, i4, a[0], a[3]) * metric(i2, i3, a[1], a[2]))
    # the δ_{i1i2}δ_{i3i4} structure: i2 = i1, i4 = i3, and i1 ≠ i3
    c12 = connected.xreplace({i2: i1, i4: i3}).replace(
        lambda x: isinstance(x, sp.KroneckerDelta), lambda x: sp.S.One if x.args[0] == x.args[1] else sp.S.Zero)
    V0, V1 = _series(c12, widths, 1)
    if V0 != 0:
        raise DeriveError(f"the connected four-point function has an O(1) part {V0}; the layer is "
                          "not nearly Gaussian (internal error)")
    V = sp.expand(V1 * WIDTH)
    t2.record("truncate", M, sp.Tuple(K0, G1), note="metric: ε-expansion with n_ℓ, n_{ℓ-1} ∝ 1/ε; "
              "K = ε⁰ part, G1 = n_ℓ × ε¹ part")
    t4.record("truncate", connected, V, note="connected four-point function (the metric products "
              "subtracted), δ_{i1i2}δ_{i3i4} part: V = n_ℓ × ε¹ part")

    # the NTK forward equation (THEORY §3), leading order
    lam_b, lam_W = sp.symbols("lambda_b lambda_W")
    (k,) = neuron_indices("k")

    def dsig(i, al):
        return sp.diff(SIGMA(z[i, al]), z[i, al])

    ntk = (sp.KroneckerDelta(i1, i2) * (lam_b + lam_W / WIDTH * NeuronSum(
        SIGMA(z[j, a[0]]) * SIGMA(z[j, a[1]]), (j, WIDTH)))
        + NeuronSum(W[i1, j] * W[i2, k] * dsig(j, a[0]) * dsig(k, a[1]) * NTK(j, k, a[0], a[1]),
                    (j, WIDTH), (k, WIDTH)))
    EH = wick(ntk, over=[W], trace=tH)
    EH = expect_neuron_sums(ntk_mean_lo(EH, trace=tH), z, zeta, 0)
    Theta0, = _series(EH.xreplace({i2: i1}), widths, 0)
    tH.record("truncate", EH, Theta0, note="leading order (ε⁰) of the NTK mean")
    contracted = {"K": sp.expand(K0), "G1": G1, "V": V, "Theta": sp.expand(Theta0)}
    # carry out the sample sums Σ_β T_β ⟨∂_β f⟩ (product rule): the book's component form
    collapsed = {name: sp.expand(collapse_contractions(e)) for name, e in contracted.items()}
    per_target = {"K": Trace(list(t2.steps)), "G1": Trace(list(t2.steps)),
                  "V": Trace(list(t4.steps)), "Theta": Trace(list(tH.steps))}
    for name in ("G1", "V"):
        per_target[name].record("derivative.collapse", contracted[name], collapsed[name])
    for t in (t2, t4, tH):
        trace.steps.extend(t.steps)
    trace.record("derivative.collapse", sp.Tuple(contracted["G1"], contracted["V"]),
                 sp.Tuple(collapsed["G1"], collapsed["V"]))
    return LayerStep(collapsed["K"], collapsed["G1"], collapsed["V"], collapsed["Theta"], a, zeta,
                     C_b, C_W, lam_b, lam_W, trace, contracted, per_target)


@lru_cache(maxsize=1)
def cached_layer_step() -> LayerStep:
    """The generic layer step, derived once per process."""
    return derive_layer_step()
