r"""One layer step, derived from an architecture's forward equation (docs/conventions.md §6, steps 1–6).

:func:`derive_layer_step` takes layer ℓ to be nearly Gaussian (metric K + G1/n_{ℓ−1}, vertex
V/n_{ℓ−1}, docs/conventions.md §3; the NTK Ĥ with mean δΘ at leading order) and derives every declared
quantity of layer ℓ+1 (:mod:`derive.derivation.quantities`) for the forward equation of the
architecture (:class:`derive.architectures.forward.ForwardEquation`; the MLP's by default),
σ abstract and every index general.  For each declared correlator:

1. the fields of layer ℓ+1 are written from the forward equation — z from the equation itself,
   Ĥ from the NTK forward equation *derived* from it by the chain rule (rule ``ntk.chain_rule``);
2. Wick over the parameters of layer ℓ+1, conditional on layer ℓ (``wick(..., over=[W, b])``):
   polynomials in the stochastic metric, i.e. in neuron sums of σ's, and in the layer-ℓ fields
   that enter directly (a skip connection);
3. the neuron-sum split Σ_{j,k} = Σ_{j=k} + Σ_{j≠k} (``split_sum``);
4. the nearly-Gaussian expectation over layer ℓ: fields whose connected statistics are
   O(1/n) and not needed at this order are replaced by their means (the NTK at leading order:
   rule ``nearly_gaussian.leading_order``); a neuron sum Σ_j f(z_j) → n_ℓ E[f(z)],
   Σ_{j≠k} f(z_j) g(z_k) → n_ℓ(n_ℓ−1) E[f(z_j) g(z_k)], each E by the operator form
   (:func:`derive.perturbative_expectation`); fields of the free neurons outside sums
   (a skip connection) by Wick over the nearly-Gaussian field;
5. truncation in 1/n, with n_ℓ and n_{ℓ−1} of the same order (their ratio is kept): every
   width is scaled as n → n/ε and the ε^k coefficients are taken (no ``O()``);
6. each quantity is the coefficient of its δ-structure (connected correlators: the products
   of the lower ones subtracted first) at its order, times n_ℓ^order.

Gaussian averages stay inert (:class:`derive.GaussianAverage` over the layer-ℓ vector ζ).
The 1/n terms are first obtained with their sample sums kept (Σ_β T_β ⟨∂_β f⟩, inert
:class:`derive.DerivativeContraction`, in ``LayerStep.contracted``) and then collapsed by the
product rule (rule ``derivative.collapse``) into component forms; ``LayerStep.steps`` holds
the steps per quantity.  Numbers: :mod:`derive.numeric.evaluate`.

At order 2 (docs/conventions.md §10) layer ℓ also carries G2, V1 and U, the neuron sums run
over up to three distinct neurons, every sum's expectation is taken only to the order its
prefactor leaves, and the moments are read at the quantity's δ-structure and truncated before
the products of the cumulant (``_Correlators.structure_series``).

With a skip connection (ξ ≠ 0) neuron i of layer ℓ enters z^{(ℓ+1)}_i twice, directly and
inside the stochastic metric; a description of layer ℓ by K, G1 and V alone then misses the
coupling along one neuron's trajectory across layers (docs/conventions.md §8), so the O(1/n) quantities of
such an equation are refused (:class:`SkipClosureError`) rather than derived wrongly.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import sympy as sp
from sympy.utilities.iterables import multiset_partitions

from ..algebra.contractions import split_sum, wick
from ..algebra.nearly_gaussian import collapse_contractions, perturbative_expectation
from ..algebra.symbols import (DerivativeContraction, Family, NeuronIndex, NeuronSum, RandomVar,
                               SampleTensor, nearly_gaussian_field, neuron_indices, sample_indices,
                               summation_dummies)
from ..algebra.trace import Trace
from ..architectures.forward import (BASE_SCALARS, DDNTK_I, DDNTK_II, DNTK, NTK, SIGMA,
                                     TANGENT_FIELDS, WIDTH, WIDTH_PREV, B, ForwardEquation, W, Z,
                                     mlp_equation)
from ..base.errors import DeriveError
from .quantities import (ALL_QUANTITIES, FIELDS, NNLO_QUANTITIES, QUANTITIES, TANGENT_QUANTITIES,
                         TARGETS, Correlator, Quantity, quantity)

__all__ = ["LayerStep", "derive_layer_step", "cached_layer_step", "closed_layer_step", "reads",
           "expect_neuron_sums",
           "SkipClosureError", "closure_error", "SIGMA", "NTK", "WIDTH", "WIDTH_PREV"]

_EPS = sp.Symbol("epsilon_width", positive=True)


class SkipClosureError(DeriveError):
    """O(1/n) statistics were asked of a forward equation with a skip connection."""


@dataclass(frozen=True)
class LayerStep:
    """The derived recursions of one layer step (layer ℓ → ℓ+1), σ abstract.

    ``recursions[name]`` is the component form of each derived quantity, in the sample indices
    ``alphas`` (the first two for K, G1, Θ, G2; four for V and V1; at order 2 six, for U); the
    quantities are also attributes (``step.K``).  Averages ⟨·⟩ are over ``zeta`` (layer ℓ's
    single-neuron vector, covariance ``K``).  ``scalars`` are the symbols an evaluator binds
    per layer, in order.
    """

    equation: ForwardEquation
    order: int
    recursions: dict
    alphas: tuple
    zeta: Family
    scalars: tuple
    trace: Trace
    #: the same recursions before the sample sums are carried out (inert
    #: :class:`derive.DerivativeContraction`); the numeric evaluator of kinked σ uses these
    contracted: dict = field(default_factory=dict, compare=False)
    #: quantity → the steps that produced its recursion (the shared ones repeated)
    steps: dict = field(default_factory=dict, compare=False)

    def __getattr__(self, name):
        recs = self.__dict__.get("recursions", {})
        if name in recs:
            return recs[name]
        raise AttributeError(name)

    # the base hyperparameters, by name
    C_b, C_W, lambda_b, lambda_W = BASE_SCALARS


def _neuron_of(factor: sp.Expr, summed: set) -> NeuronIndex | None:
    idx = {x for r in factor.atoms(RandomVar) for x in r.indices if isinstance(x, NeuronIndex)}
    idx &= summed
    if len(idx) > 1:
        raise DeriveError(f"factor {factor} couples several summed neurons; expected a product of "
                          "functions of one neuron each")
    return next(iter(idx)) if idx else None


#: the tangent fields of layer ℓ as they appear in a layer step's expressions
_TANGENTS = tuple(func for func, _ in TANGENT_FIELDS.values())


def _is_tangent(x) -> bool:
    return isinstance(x, sp.core.function.AppliedUndef) and x.func in _TANGENTS


def _leading_order_fields(expr: sp.Expr, Theta: str = "Theta") -> sp.Expr:
    """Ĥ_{j1j2;α1α2} → δ_{j1j2} Θ_{α1α2}: the NTK field by its mean, its connected statistics
    (with itself and with the preactivations) being O(1/n); the dNTK and the ddNTKs → 0, their
    means being zero or O(1/n) (rule nearly_gaussian.leading_order)."""
    T = SampleTensor(Theta, 2, "sym")
    out = expr.replace(_is_tangent, lambda x: sp.KroneckerDelta(x.args[0], x.args[1])
                       * T[x.args[2], x.args[3]] if x.func == NTK else sp.S.Zero)
    return out.replace(lambda x: isinstance(x, NeuronSum),
                       lambda x: NeuronSum(x.function.replace(
                           lambda y: isinstance(y, sp.KroneckerDelta) and y.args[0] == y.args[1],
                           lambda y: sp.S.One), *x.limits, exclude=x.exclude))


def expect_neuron_sums(expr: sp.Expr, layer: Family, zeta: Family, order: int = 1,
                       collapse: bool = True, truncate: bool = False) -> sp.Expr:
    r"""Replace every neuron sum of functions of layer-ℓ preactivations by its nearly-Gaussian
    expectation (docs/conventions.md §6 step 4): Σ_j f(z_j) → n E[f], Σ_{j≠k} f(z_j) g(z_k) → n(n−1) E[f g];
    a term with layer variables of free neurons and no sum (a skip connection) by Wick over
    the nearly-Gaussian ``layer`` field.

    ``layer`` is the family z_{j;α} of layer ℓ, ``zeta`` the matching single-neuron family whose
    averages the result is written in.  With ``collapse=False`` the sample sums of the 1/n
    terms stay inert (:class:`derive.DerivativeContraction`).

    ``order`` is the order in 1/n of layer ℓ's corrections.  With ``truncate`` the whole result
    is wanted only to ``order`` in 1/n with every width of the same order (the layer step,
    which truncates there anyway): a sum whose prefactor is already O(1/n^p) then gets its
    expectation only to order − p, and is left out when p > order.
    """
    out = sp.S.Zero
    for term in sp.Add.make_args(sp.expand(expr)):
        sums = [f for f in sp.Mul.make_args(term) if isinstance(f, NeuronSum)]
        rest = sp.Mul(*[f for f in sp.Mul.make_args(term) if not isinstance(f, NeuronSum)])
        if not sums:
            if any(r.family == layer for r in term.atoms(RandomVar)):
                out += wick(term, over=[layer], order=order)
            else:
                out += term
            continue
        if len(sums) > 1:
            raise DeriveError(f"term {term} holds several neuron sums; split them first")
        if any(r.family == layer for r in rest.atoms(RandomVar)):
            raise DeriveError(f"term {term} couples a free neuron of layer ℓ with a neuron sum; "
                              "not handled")
        s = sums[0]
        vs = list(s.variables)
        summed = set(vs)
        groups = {v: sp.S.One for v in vs}
        coeff = rest
        ntks = []
        for f in sp.Mul.make_args(s.function):
            if f.has(*_TANGENTS):
                base, k = f.as_base_exp()
                if not (_is_tangent(base) and k.is_Integer and k > 0
                        and set(base.args[:len(base.args) // 2]) <= summed):
                    raise DeriveError(f"factor {f}: the NTK (dNTK, ddNTK) of layer ℓ enters "
                                      "only with summed neurons at this order")
                ntks += [base] * int(k)
                continue
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
        m = len(vs)
        if m == 1 and s.exclude:
            raise DeriveError(f"sum {s} excludes free neurons; not handled")
        if m > 1 and not (s.distinct and len(s.exclude) == m * (m - 1) // 2):
            raise DeriveError(f"sum {s}: only sums over distinct neurons are handled (split "
                              "the sums first)")
        count = sp.Mul(*(rng - k for k in range(m)))  # n (n − 1) … (n − m + 1)
        # with truncate, the expectation only to the order the prefactor leaves
        need = order - _leading_power(coeff * count, (rng, zeta.n)) if truncate else order
        if need < 0:
            continue
        E = _expect_functions(fs, zeta, need, collapse)
        if ntks:
            E = _expect_with_ntk(fs, vs, ntks, E, zeta, order, collapse)
        out += coeff * count * E
    return out


def _eps_terms(expr: sp.Expr, widths: tuple) -> list[tuple]:
    """(power of ε, term) of every term of ``expr`` with every width n scaled to n/ε."""
    scaled = sp.expand(expr.xreplace({w: w / _EPS for w in widths}))
    return [(term.as_powers_dict().get(_EPS, sp.S.Zero), term) for term in sp.Add.make_args(scaled)]


def _leading_power(expr: sp.Expr, widths: tuple) -> int:
    """The lowest power of ε in ``expr`` with every width n scaled to n/ε."""
    return int(min(k for k, _ in _eps_terms(expr, widths)))


def _expect_functions(fs: list, zeta: Family, order: int, collapse: bool) -> sp.Expr:
    """E[Π_v f_v(z_v)] for functions of different neurons (constants allowed)."""
    const = sp.Mul(*(f for f in fs if not f.has(RandomVar)))
    live = [f for f in fs if f.has(RandomVar)]
    if not live:
        return const
    E = perturbative_expectation(live[0], zeta, order, other=live[1:] or None,
                                 collapse=collapse)
    return const * E.as_expr()


def _expect_with_ntk(fs: list, vs: list, ntks: list, E0: sp.Expr, zeta: Family, order: int,
                     collapse: bool) -> sp.Expr:
    r"""E[Π_v f_v(z_v) Π_m X_m] over layer ℓ, to ``order`` (rule ``nearly_gaussian.ntk``), for
    tangent fields X_m (the NTK Ĥ, the dNTK dĤ, the ddNTKs) of layer ℓ, given E0 = E[Π_v f_v].
    Write Ĥ_{ab;xy} = δ_ab Θ_xy + ΔĤ_{ab;xy}; ΔĤ, dĤ, ddĤ and z are jointly nearly Gaussian
    (docs/conventions.md §3, §6 step 4), the mean of dĤ is zero and that of each ddĤ O(1/n), so to
    O(1/n_{ℓ−1}):

    * E[ΔĤ_{ab;xy} O(z)] = (1/n_{ℓ−1}) [δ_ab H1_xy ⟨O⟩_K + ½ Σ_{c,d} Σ_{β1β2}
      n_{ℓ−1} κ(ΔĤ_{ab;xy}, z_{c;β1}, z_{d;β2}) ⟨∂_{c;β1} ∂_{d;β2} O⟩_K], the three-point
      cumulant being δ_ab δ_cd D_{xyβ1β2} + δ_ac δ_bd F_{xβ1yβ2} + δ_ad δ_bc F_{xβ2yβ1}
      (c, d run over the neurons O depends on; for c ≠ d each f gets one derivative);
    * E[ΔĤ_{ab;xy} ΔĤ_{cd;uw} O(z)] = (1/n_{ℓ−1}) [δ_ab δ_cd A_{xyuw} + δ_ac δ_bd B_{xuyw}
      + δ_ad δ_bc B_{xwyu}] ⟨O⟩_K;
    * E[dĤ_{abc;xyw} O(z)] = Σ_d Σ_β κ(dĤ_{abc;xyw}, z_{d;β}) ⟨∂_{d;β} O⟩_K with
      n_{ℓ−1} κ = δ_ab δ_cd P_{xywβ} + δ_ac δ_bd P_{xwyβ} + δ_ad δ_bc Q_{xywβ} (a field linearly
      correlated with z: Gaussian integration by parts);
    * E[ddIĤ_{abcd;xyuw} O(z)] = (1/n_{ℓ−1}) [δ_ab δ_cd R_{xyuw} + δ_ac δ_bd R_{xuyw}
      + δ_ad δ_bc R_{xwyu}] ⟨O⟩_K and E[ddIIĤ_{abcd;xyuw} O(z)] = (1/n_{ℓ−1}) [δ_ab δ_cd S_{xyuw}
      + δ_ac δ_bd T_{xyuw} + δ_ad δ_bc U^dd_{xyuw}] ⟨O⟩_K;
    * any other product of two fluctuating fields (ΔĤ dĤ, dĤ dĤ, …) or of three: O(1/n²)
      or beyond.

    At order 0 only the means remain (rule ``nearly_gaussian.leading_order``)."""
    Theta, H1, A, B, D, F = (quantity(q).tensor() for q in ("Theta", "H1", "A", "B", "D", "F"))
    delta = lambda a, b: sp.S.One if a == b else sp.S.Zero  # noqa: E731 (distinct summed neurons)

    def mean(h):
        return delta(h.args[0], h.args[1]) * Theta[h.args[2], h.args[3]] if h.func == NTK \
            else sp.S.Zero

    fn = dict(zip(vs, fs))
    out = sp.Mul(*(mean(h) for h in ntks)) * E0
    if order < 1 or not ntks:
        return out
    lo = {v: _expect_functions([f], zeta, 0, collapse) for v, f in fn.items()}
    n = zeta.n
    used = set().union(*(f.free_symbols for f in fs), *(h.free_symbols for h in ntks))
    b1, b2 = summation_dummies(2, used)

    def others(*skip):
        return sp.Mul(*(lo[v] for v in vs if v not in skip))

    def contraction(T, fs_, derivs):
        dc = DerivativeContraction(T, fs_, derivs, zeta.tensor.label)
        return collapse_contractions(dc) if collapse else dc

    def single_ntk(h):
        a, b, x, y = h.args
        res = delta(a, b) * H1[x, y] * others()
        for c in vs:
            for d in vs:
                if not (fn[c].has(RandomVar) and fn[d].has(RandomVar)):
                    continue
                for w, T in ((delta(a, b) * delta(c, d), D[x, y, b1, b2]),
                             (delta(a, c) * delta(b, d), F[x, b1, y, b2]),
                             (delta(a, d) * delta(b, c), F[x, b2, y, b1])):
                    if w == 0:
                        continue
                    if c == d:
                        dc = contraction(T, (fn[c],), ((b1, b2),))
                    else:
                        dc = contraction(T, (fn[c], fn[d]), ((b1,), (b2,)))
                    res += sp.Rational(1, 2) * w * dc * others(c, d)
        return res

    def single_dntk(h):
        a, b, c, x, y, w = h.args
        P, Q = quantity("P").tensor(), quantity("Q").tensor()
        res = sp.S.Zero
        for d in vs:
            if not fn[d].has(RandomVar):
                continue
            for k, T in ((delta(a, b) * delta(c, d), P[x, y, w, b1]),
                         (delta(a, c) * delta(b, d), P[x, w, y, b1]),
                         (delta(a, d) * delta(b, c), Q[x, y, w, b1])):
                if k != 0:
                    res += k * contraction(T, (fn[d],), ((b1,),)) * others(d)
        return res

    def single_ddntk(h):
        a, b, c, d, x, y, u, w = h.args
        if h.func == DDNTK_I:
            R = quantity("R").tensor()
            parts = ((delta(a, b) * delta(c, d), R[x, y, u, w]),
                     (delta(a, c) * delta(b, d), R[x, u, y, w]),
                     (delta(a, d) * delta(b, c), R[x, w, y, u]))
        else:
            S, T, Udd = (quantity(q).tensor() for q in ("S", "T", "Udd"))
            parts = ((delta(a, b) * delta(c, d), S[x, y, u, w]),
                     (delta(a, c) * delta(b, d), T[x, y, u, w]),
                     (delta(a, d) * delta(b, c), Udd[x, y, u, w]))
        return sp.Add(*(k * T for k, T in parts)) * others()

    single = {NTK: single_ntk, DNTK: single_dntk, DDNTK_I: single_ddntk, DDNTK_II: single_ddntk}

    def pair(h, g):
        if h.func != NTK or g.func != NTK:
            return sp.S.Zero
        a, b, x, y = h.args
        c, d, u, w = g.args
        return (delta(a, b) * delta(c, d) * A[x, y, u, w] + delta(a, c) * delta(b, d) * B[x, u, y, w]
                + delta(a, d) * delta(b, c) * B[x, w, y, u]) * others()

    def means_except(*skip):
        return sp.Mul(*(mean(h) for k, h in enumerate(ntks) if k not in skip))

    for m, h in enumerate(ntks):
        rest = means_except(m)
        if rest != 0:
            out += rest * single[h.func](h) / n
    for m in range(len(ntks)):
        for m2 in range(m + 1, len(ntks)):
            rest = means_except(m, m2)
            if rest != 0:
                out += rest * pair(ntks[m], ntks[m2]) / n
    return out


def _series(expr: sp.Expr, widths: tuple, order: int) -> list[sp.Expr]:
    """Coefficients ε⁰ … ε^order of ``expr`` with every width n scaled to n/ε (docs/conventions.md §6
    step 5: an explicit truncation, no O()).  After expansion every term is a monomial in ε
    because the widths enter only through powers of n (sum counts) and 1/n (variances,
    nearly-Gaussian corrections); a negative power of ε means a growing term and is an error."""
    out = [[] for _ in range(order + 1)]  # the terms of each coefficient, added at the end
    for k, term in _eps_terms(expr, widths):
        if not k.is_Integer:
            raise DeriveError(f"term {term} is not a power series in 1/n")
        if k < 0:
            raise DeriveError(f"term {term} grows with the width; the expansion is inconsistent")
        if k <= order:
            out[int(k)].append(term / _EPS ** k)
    # the substitution also reached the width labels of families inside averages: restore them
    restore = {w / _EPS: w for w in widths}
    return [sp.expand(sp.Add(*c).xreplace(restore)) for c in out]


class _Correlators:
    """E[Π fields of layer ℓ+1] over layer ℓ and its parameters, at given neuron and sample
    indices, for one forward equation (each moment derived once, then renamed)."""

    def __init__(self, eq: ForwardEquation, zeta: Family):
        self.eq, self.zeta = eq, zeta
        self.cache: dict = {}

    def field(self, name: str, neurons: tuple, samples: tuple, trace: Trace) -> sp.Expr:
        if name == "z":
            return self.eq.at(neurons[0], samples[0])
        if name == "Hhat":
            return self.eq.ntk(neurons[0], neurons[1], samples[0], samples[1], trace)
        if name in TANGENT_FIELDS:
            return self.eq.tangent(name, neurons, samples, trace)
        raise DeriveError(f"no forward equation for the field {name!r}")

    def moment(self, fields: tuple, neurons: tuple, samples: tuple, order: int,
               trace: Trace | None = None):
        """E[Π fields] to ``order`` in 1/n (``trace``: its steps)."""
        key = (fields, order)
        if key not in self.cache:
            t = Trace()
            nn = [FIELDS[f] for f in fields]
            ni = neuron_indices(" ".join(f"i{k}" for k in range(1, sum(a for a, _ in nn) + 1)))
            si = sample_indices(" ".join(f"alpha{k}" for k in range(1, sum(b for _, b in nn) + 1)))
            prod, p, q = sp.S.One, 0, 0
            for (a, b), f in zip(nn, fields):
                prod *= self.field(f, ni[p:p + a], si[q:q + b], t)
                p, q = p + a, q + b
            e = wick(prod, over=[W, B], trace=t)
            if any(len(s.variables) > 1 for s in e.atoms(NeuronSum)):
                e = split_sum(e, trace=t)
            if e.has(*_TANGENTS) and order < 1:
                lo = _leading_order_fields(e)
                t.record("nearly_gaussian.leading_order", e, lo)
                e = lo
            E = expect_neuron_sums(e, Z, self.zeta, order, collapse=False, truncate=True)
            if e.has(*_TANGENTS):
                t.record("nearly_gaussian.ntk", e, E, note="joint expectation of the neuron sums "
                         "of σ's and of the NTK over layer ℓ")
            else:
                t.record("nearly_gaussian.operator", e, E,
                         note="expectation of the neuron sums over layer ℓ")
            self.cache[key] = (ni, si, E, t)
        ni, si, E, t = self.cache[key]
        if trace is not None:
            trace.steps.extend(t.steps)
        # (identity pairs left out: xreplace would rebuild every node they reach, and each
        # DerivativeContraction rebuilt searches its canonical form again)
        rename = {a: b for a, b in zip(ni + si, tuple(neurons) + tuple(samples)) if a != b}
        return E.xreplace(rename) if rename else E

    def structure_series(self, corr: Correlator, neurons, samples, order: int, structure,
                         widths: tuple, trace: Trace) -> list:
        """The ε⁰ … ε^order coefficients of the δ-structure ``structure`` of the correlator
        (connected: its cumulant over the partitions of the fields): every moment is read
        (:func:`_read_structure`, a substitution, so it commutes with the products) and
        truncated (:func:`_series`) before it is multiplied."""
        def read(fields, ns, ss, t=None):
            m = self.moment(fields, ns, ss, order, t)
            return _series(_read_structure(m, neurons, structure), widths, order)

        out = read(corr.fields, neurons, samples, trace)
        if not corr.connected:
            return out
        # each block recurs in many partitions (U's six fields: 62 blocks in 202 partitions):
        # read once
        blocks_read = {}
        for blocks in _partitions(corr, neurons, samples):
            prod = None
            for block in blocks:
                if block not in blocks_read:
                    blocks_read[block] = read(*block)
                s = blocks_read[block]
                prod = s if prod is None else [
                    sp.expand(sum(prod[a] * s[k - a] for a in range(k + 1)))
                    for k in range(order + 1)]
                if not any(prod):
                    break
            k = len(blocks)
            out = [o + (-1) ** (k - 1) * sp.factorial(k - 1) * c for o, c in zip(out, prod)]
        return [sp.expand(c) for c in out]

    def cumulant(self, corr: Correlator, neurons, samples, order: int, trace: Trace) -> sp.Expr:
        """The correlator at the given indices; connected: minus the products of the lower
        moments over every partition of the fields (cumulants from moments)."""
        M = self.moment(corr.fields, neurons, samples, order, trace)
        if not corr.connected:
            return M
        out = sp.S.Zero
        for blocks in _partitions(corr, neurons, samples):
            k = len(blocks)
            out += (-1) ** (k - 1) * sp.factorial(k - 1) * sp.Mul(
                *(self.moment(fs, ns, ss, order) for fs, ns, ss in blocks))
        return M + out


def _partitions(corr: Correlator, neurons, samples):
    """For every partition of the correlator's fields into two or more blocks: its blocks as
    (fields, neuron indices, sample indices) of each."""
    slots, p, q = [], 0, 0
    for f in corr.fields:
        a, b = FIELDS[f]
        slots.append((tuple(neurons[p:p + a]), tuple(samples[q:q + b])))
        p, q = p + a, q + b
    for part in multiset_partitions(list(range(len(corr.fields)))):
        if len(part) > 1:
            yield [(tuple(corr.fields[x] for x in block),
                    tuple(i for x in block for i in slots[x][0]),
                    tuple(a for x in block for a in slots[x][1])) for block in part]


def _read_structure(expr: sp.Expr, neurons: tuple, structure: tuple) -> sp.Expr:
    """The coefficient of the δ-structure: the neurons of a pair set equal, those of different
    pairs different (their δ's → 0)."""
    rep = {neurons[b]: neurons[a] for a, b in structure}

    def read(x):
        return x.xreplace(rep).replace(
            lambda d: isinstance(d, sp.KroneckerDelta),
            lambda d: sp.S.One if d.args[0] == d.args[1] else sp.S.Zero)

    # term by term, the δ's that multiply a whole term first: most terms of a moment belong
    # to other δ-structures and are dropped before the rest of them is rebuilt (substituting
    # in the whole sum rebuilt every term, 0 × a large sum included)
    out = []
    for term in sp.Add.make_args(expr):
        factors = sp.Mul.make_args(term)
        deltas = sp.Mul(*(read(f) for f in factors if isinstance(f, sp.KroneckerDelta)))
        if deltas != 0:
            out.append(deltas * read(sp.Mul(*(f for f in factors
                                               if not isinstance(f, sp.KroneckerDelta)))))
    return sp.Add(*out)


def _truncation_note(corr: Correlator, qs: list[Quantity]) -> str:
    parts = [f"{q.name} = ε⁰ part" if q.order == 0 else
             f"{q.name} = n_ℓ × ε{'¹²³'[q.order - 1]} part" for q in qs]
    if corr.connected:
        pairs = "".join(f"δ_{{i{a + 1}i{b + 1}}}" for a, b in qs[0].structure)
        return f"{corr.what}, {pairs} part: " + ", ".join(parts)
    if qs[0].order == 0 and len(qs) == 1:
        return f"leading order (ε⁰) of the {corr.what}"
    return f"{corr.what}: ε-expansion with n_ℓ, n_{{ℓ-1}} ∝ 1/ε; " + ", ".join(parts)


def closure_error(eq: ForwardEquation) -> SkipClosureError:
    """Why the O(1/n) statistics of ``eq`` (with a skip term) are not derived."""
    return SkipClosureError(
        f"the O(1/n) statistics (G1, V) of the {eq.description} are not derived: with the skip "
        f"term {sp.sstr(eq.skip)}·z_i, neuron i of layer ℓ enters z_i of layer ℓ+1 twice "
        "(directly and inside the stochastic metric), and a nearly-Gaussian description of "
        "layer ℓ by K, G1 and V misses the coupling along one neuron's trajectory across "
        "layers (docs/conventions.md §8); ask for the leading order (order=0: K, Θ), or set ξ = 0")


@lru_cache(maxsize=None)
def _correlators(eq: ForwardEquation) -> _Correlators:
    """The moments of ``eq``'s layer ℓ+1, shared by every group (each derived once)."""
    return _Correlators(eq, nearly_gaussian_field("zeta", "K", "G1", "V", WIDTH_PREV, neuron=False,
                                                  G2="G2", V1="V1", U="U"))


@lru_cache(maxsize=None)
def _derive_group(eq: ForwardEquation, corr: Correlator, at: int, names: tuple):
    """The quantities ``names`` (declared on ``corr`` at order ``at``), derived together:
    ({name: contracted form}, their steps)."""
    qs = [quantity(n) for n in names]
    alphas = sample_indices("alpha1:7")
    widths = (WIDTH, WIDTH_PREV)
    t = Trace()
    ni = neuron_indices(" ".join(f"i{k}" for k in range(1, corr.neurons + 1)))
    corrs = _correlators(eq)
    # at order 2 each moment is read and truncated before the products of the cumulant (the
    # whole six-point function is far too large to expand); below, as before (the documents
    # show the whole connected function)
    full = None if at >= 2 else corrs.cumulant(corr, ni, alphas[:corr.samples], at, t)
    values, shown_read = {}, []
    for q in qs:
        # the quantity's k-th sample index is the correlator's slot q.samples[k]
        rename = {alphas[q.samples[k]]: alphas[k] for k in range(corr.samples)}
        if full is None:
            series = corrs.structure_series(corr, ni, alphas[:corr.samples], at, q.structure,
                                            widths, t)
            series = [c.xreplace({a: b for a, b in rename.items() if a != b}) for c in series]
            shown_read.append(sp.Add(*series))
        else:
            read = _read_structure(full, ni, q.structure)
            read = read.xreplace({a: b for a, b in rename.items() if a != b})
            series = _series(read, widths, q.order)
        # a connected function of p pairs of neurons starts at order p − 1 (V at 1/n, U at 1/n²)
        start = len(q.structure) - 1
        if corr.connected and any(c != 0 for c in series[:start]):
            low = next(k for k, c in enumerate(series[:start]) if c != 0)
            raise DeriveError(f"the {corr.what} has a part of order {low} < {start} in 1/n "
                              f"({series[low]}); layer ℓ+1 is not nearly Gaussian (internal "
                              "error)")
        values[q.name] = sp.expand(series[q.order] * WIDTH ** q.order)
    # shown: a connected function whole (its δ-structures are many), else the one read
    if full is None:
        shown = shown_read[0]
    else:
        shown = full if corr.connected else _read_structure(full, ni, qs[0].structure)
    vals = list(values.values())
    t.record("truncate", shown, sp.Tuple(*vals) if len(vals) > 1 else vals[0],
             note=_truncation_note(corr, qs))
    return values, t


def derive_layer_step(equation: ForwardEquation | None = None, order: int = 1,
                      trace: Trace | None = None, names=None) -> LayerStep:
    """Derive every declared quantity of layer ℓ+1 that enters at ``order`` or below (only
    those in ``names`` if given) from those of layer ℓ, for ``equation`` (the MLP's by
    default); see the module docstring.  The quantities read from one correlator at one order
    are derived together, once per process."""
    eq = mlp_equation() if equation is None else equation
    trace = trace if trace is not None else Trace()
    if order >= 1 and eq.has_skip():
        raise closure_error(eq)
    # the dNTK's and ddNTKs' statistics only when asked for (the default set does not read them)
    tangent = names is not None and any(q.name in names for q in TANGENT_QUANTITIES)
    declared = QUANTITIES + (NNLO_QUANTITIES if order >= 2 else ()) \
        + (TANGENT_QUANTITIES if tangent else ())
    wanted = [q for q in declared if q.order <= order and (names is None or q.name in names)]
    if names is not None:
        unknown = sorted(set(names) - {q.name for q in declared})
        if unknown:
            raise DeriveError(f"no declared quantity {unknown}; known: "
                              f"{[q.name for q in declared]}")
    by_corr: dict = {}
    for q in wanted:  # each quantity's steps at its own order (K's at leading order, …)
        by_corr.setdefault((q.correlator, q.order), []).append(q.name)
    # the preactivations' correlators first, then those holding the NTK (it reads them)
    by_corr = dict(sorted(by_corr.items(), key=lambda kv: sum(f != "z" for f in kv[0][0].fields)))
    contracted, per_corr = {}, {}
    for (corr, at), group in by_corr.items():
        values, t = _derive_group(eq, corr, at, tuple(group))
        contracted.update(values)
        per_corr[corr, at] = t
    # carry out the sample sums Σ_β T_β ⟨∂_β f⟩ (product rule): the book's component form
    contracted = {q.name: contracted[q.name] for q in wanted}  # in the declarations' order
    collapsed = {name: sp.expand(collapse_contractions(e)) for name, e in contracted.items()}
    per_target = {}
    for q in wanted:
        per_target[q.name] = Trace(list(per_corr[q.correlator, q.order].steps))
        if collapsed[q.name] != contracted[q.name]:
            per_target[q.name].record("derivative.collapse", contracted[q.name], collapsed[q.name])
    for t in per_corr.values():
        trace.steps.extend(t.steps)
    nlo = [q.name for q in wanted if collapsed[q.name] != contracted[q.name]]
    if nlo:
        trace.record("derivative.collapse", sp.Tuple(*(contracted[n] for n in nlo)),
                     sp.Tuple(*(collapsed[n] for n in nlo)))
    scalars = BASE_SCALARS + tuple(eq.scalars) + (WIDTH, WIDTH_PREV)
    zeta = _correlators(eq).zeta
    # as many sample indices as the largest correlator derived has (U's six at order 2)
    alphas = sample_indices("alpha1:7" if order >= 2 else "alpha1:5")
    return LayerStep(eq, order, collapsed, alphas, zeta, scalars, trace, contracted, per_target)


def reads(expr: sp.Expr) -> set:
    """The declared quantities of layer ℓ a recursion reads (its tensors)."""
    labels = {str(t.base) for t in expr.atoms(sp.Indexed)}  # (also those inside contractions)
    return labels & set(TARGETS)


def closed_layer_step(equation: ForwardEquation | None, order: int, names) -> LayerStep:
    """The layer step of ``names`` and of every quantity their recursions read, recursively
    (the targets' closure), derived once per process."""
    have = frozenset(names)
    while True:
        step = cached_layer_step(equation, order, have)
        more = set().union(*(reads(e) for e in step.recursions.values())) - have
        more = {n for n in more
                if n in {q.name for q in ALL_QUANTITIES if q.order <= order}}
        if not more:
            return step
        have = have | more


@lru_cache(maxsize=64)
def cached_layer_step(equation: ForwardEquation | None = None, order: int = 1,
                      names: frozenset | None = None) -> LayerStep:
    """The layer step of ``equation`` (the MLP's by default), of the quantities ``names`` (all
    declared ones by default), derived once per process."""
    return derive_layer_step(equation, order, names=names)
