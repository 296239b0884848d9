r"""Forward equations as data (docs/conventions.md §2, §8): what a layer does, written once, as SymPy.

An architecture is the forward equation of the preactivations of layer ℓ+1 in terms of
layer ℓ, an expression over the engine's inert objects:

* ``Z[j, ALPHA]`` — the preactivation z^{(ℓ)}_{j;α} of layer ℓ (a nearly-Gaussian field);
* ``W[i, j]``, ``B[i]`` — the weights and biases of layer ℓ+1 (zero-mean Gaussians,
  Var W = C_W/n_ℓ, Var b = C_b, docs/conventions.md §2);
* ``SIGMA`` — the abstract activation σ; :class:`~derive.NeuronSum` over the neurons of layer ℓ;
* scalar hyperparameters of the layer (the residual ξ, γ; a user's own names).

The first layer is the MLP's, z^{(1)} = b + W x, for every architecture here.  The equation for
neuron ``I`` on sample ``ALPHA`` is :attr:`ForwardEquation.expr`; :meth:`ForwardEquation.at`
renames it.  The class of equations the engine accepts (checked when one is made):

    z^{(ℓ+1)}_{i;α} = ξ z^{(ℓ)}_{i;α} + c b_i + Σ_j W_{ij} g(z^{(ℓ)}_{j;α})

with ξ, c scalars (ξ may be 0) and g any function of σ and z_j: conditional on layer ℓ,
z^{(ℓ+1)} is then Gaussian with mean ξ z^{(ℓ)} and covariance δ (c² C_b + (C_W/n_ℓ) Σ_j g g),
the structure the layer step relies on (docs/conventions.md §6 step 1).

The NTK forward equation is *derived* from it (:meth:`ForwardEquation.ntk`) by the chain rule
with the learning-rate tensor of docs/conventions.md §3 (λ_b per bias, λ_W/n_ℓ per weight of layer ℓ+1):

    Ĥ^{(ℓ+1)}_{i1i2;α1α2} = Σ_{k1,k2} J_{i1k1;α1} J_{i2k2;α2} Ĥ^{(ℓ)}_{k1k2;α1α2}
                           + Σ_{θ of layer ℓ+1} λ_θ (∂z_{i1;α1}/∂θ)(∂z_{i2;α2}/∂θ),
    J_{ik;α} = ∂z^{(ℓ+1)}_{i;α}/∂z^{(ℓ)}_{k;α},

each derivative taken symbolically through the neuron sums (∂z_j/∂z_k = δ_jk, then the δ's
contracted by :func:`derive.simplify_sums`).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from functools import lru_cache

import sympy as sp
from sympy.core.sorting import default_sort_key

from ..algebra.contractions import simplify_sums
from ..algebra.symbols import (NeuronIndex, NeuronSum, RandomVar, SampleIndex, bias,
                               nearly_gaussian_field, neuron_indices, weight)
from ..algebra.trace import Trace
from ..base.errors import DeriveError, ParseError

__all__ = ["ForwardEquation", "SIGMA", "NTK", "DNTK", "DDNTK_I", "DDNTK_II", "TANGENT_FIELDS", "WIDTH", "WIDTH_PREV", "WIDTH_NEXT", "C_B", "C_W",
           "LAMBDA_B", "LAMBDA_W", "Z", "W", "B", "I", "J", "ALPHA", "XI", "GAMMA", "U", "mlp_equation",
           "residual_equation", "parse_forward_equation", "BASE_SCALARS"]

#: the abstract activation σ
SIGMA = sp.Function("sigma")
#: the NTK of layer ℓ, Ĥ^{(ℓ)}_{j1 j2; α1 α2}, as a function of its indices
NTK = sp.Function("Hhat")
#: the dNTK dĤ^{(ℓ)}_{j0 j1 j2; δ0 δ1 δ2} and the two ddNTKs of layer ℓ (docs/conventions.md §3),
#: as functions of their neuron indices then their sample indices
DNTK = sp.Function("dHhat")
DDNTK_I = sp.Function("ddIHhat")
DDNTK_II = sp.Function("ddIIHhat")
#: every λ-contracted product of parameter derivatives of one layer's preactivations (the
#: "tangent fields"): field name → (its function, the derivative slots of each z factor).
#: Factor f carries the parameters (edges) ``slots[f]``; each edge is one λ_{μν} contracting
#: the two factors that carry it (docs/conventions.md §3):
#:   Ĥ_{i0i1}      = Σ λ ∂z_{i0} ∂z_{i1}                              edges (0,), (0,)
#:   dĤ_{i0i1i2}   = Σ λλ ∂²z_{i0} ∂z_{i1} ∂z_{i2}                     (0, 1), (0,), (1,)
#:   ddIĤ_{i0…i3}  = Σ λλλ ∂³z_{i0} ∂z_{i1} ∂z_{i2} ∂z_{i3}            (0, 1, 2), (0,), (1,), (2,)
#:   ddIIĤ_{i1…i4} = Σ λλλ ∂²z_{i1} ∂²z_{i2} ∂z_{i3} ∂z_{i4}  (μ1μ2)(μ1μ3)(μ2)(μ3)
TANGENT_FIELDS = {
    "Hhat": (NTK, ((0,), (0,))),
    "dHhat": (DNTK, ((0, 1), (0,), (1,))),
    "ddIHhat": (DDNTK_I, ((0, 1, 2), (0,), (1,), (2,))),
    "ddIIHhat": (DDNTK_II, ((0, 1), (0, 2), (1,), (2,))),
}
#: ∂^r z^{(ℓ)}_{k;α}/∂θ_{e1}…∂θ_{er}, θ the parameters of layers 1 … ℓ, edges e named: a formal
#: derivative, only ever inside a λ-contracted product (which is one of the tangent fields)
_DZ = sp.Function("Dz")
#: n_ℓ (the width of layer ℓ, the fan-in of layer ℓ+1), n_{ℓ−1}, and n_{ℓ+1}
WIDTH = sp.Symbol("n_l", positive=True)
WIDTH_PREV = sp.Symbol("n_lm1", positive=True)
WIDTH_NEXT = sp.Symbol("n_lp1", positive=True)
#: the hyperparameters of layer ℓ+1 every architecture has (docs/conventions.md §2, §3)
C_B, C_W = sp.symbols("C_b C_W")
LAMBDA_B, LAMBDA_W = sp.symbols("lambda_b lambda_W")
BASE_SCALARS = (C_B, C_W, LAMBDA_B, LAMBDA_W)
#: the residual network's scalars (docs/conventions.md §8)
XI, GAMMA = sp.symbols("xi gamma")
#: layer ℓ's preactivations (nearly Gaussian: metric K + G1/n_{ℓ−1}, vertex V/n_{ℓ−1})
Z = nearly_gaussian_field("z", "K", "G1", "V", WIDTH_PREV)
#: layer ℓ+1's parameters
W = weight("W", C_W, WIDTH)
B = bias("b", C_B)
#: the neuron of layer ℓ+1 the equation is written for, the summed neuron of layer ℓ, the sample
I, J = neuron_indices("i j")
ALPHA = SampleIndex("alpha")
#: a plain variable standing for z_j in :meth:`ForwardEquation.parts`
U = sp.Symbol("u")
#: parameters of layer ℓ+1 with their learning rates (docs/conventions.md §3: λ_b per bias, λ_W/n_ℓ per weight)
_LEARNING_RATES = ((B, LAMBDA_B), (W, LAMBDA_W / WIDTH))


def _by_structure(e: sp.Expr, d) -> sp.Expr | None:
    """The rules every derivative ``d`` here shares: through a neuron sum, a sum, a product
    (the product rule) and an integer power; None when ``e`` is none of those."""
    if isinstance(e, NeuronSum):
        inner = d(e.function)
        return sp.S.Zero if inner == 0 else NeuronSum(inner, *e.limits, distinct=e.distinct,
                                                      exclude=e.exclude)
    if e.is_Add:
        return sp.Add(*(d(a) for a in e.args))
    if e.is_Mul:
        out = sp.S.Zero
        for k, a in enumerate(e.args):
            da = d(a)
            if da != 0:
                out += sp.Mul(*e.args[:k], da, *e.args[k + 1:])
        return out
    if e.is_Pow and e.exp.is_Integer:
        return e.exp * e.base ** (e.exp - 1) * d(e.base)
    return None


def _derivative(e: sp.Expr, x: RandomVar) -> sp.Expr:
    """∂e/∂x for one component x of a family: through sums (∂z_j/∂z_k = δ_jk per index), by
    the product rule, and by the chain rule through σ (SymPy differentiates a function of a
    component directly: a component is a differentiable symbol)."""
    if not e.has(x.family):
        return sp.S.Zero
    if isinstance(e, RandomVar):
        return _delta(e, x)
    if not e.has(NeuronSum):
        out = sp.S.Zero
        for r in sorted((r for r in e.atoms(RandomVar) if r.family == x.family),
                        key=default_sort_key):
            d = _delta(r, x)
            if d != 0:
                out += e.diff(r) * d
        return out
    out = _by_structure(e, lambda a: _derivative(a, x))
    if out is None:
        raise DeriveError(f"cannot differentiate {e} by {x}: a neuron sum inside a function")
    return out


def _delta(r: RandomVar, x: RandomVar) -> sp.Expr:
    """∂r/∂x for two components of one family: a product of δ's of their indices."""
    if r.family != x.family:
        return sp.S.Zero
    return sp.Mul(*(sp.KroneckerDelta(a, b) for a, b in zip(r.indices, x.indices)))


def _lower(e: sp.Expr, edge: sp.Symbol) -> sp.Expr:
    """∂e/∂θ_edge for a parameter θ_edge of the layers below (1 … ℓ): by the chain rule through
    every z^{(ℓ)}_{k;α} (∂z_{k;α}/∂θ → Dz(k, α, edge)) and through the formal derivatives
    already there (Dz(k, α, e…) → Dz(k, α, e…, edge)); the parameters of layer ℓ+1 do not
    depend on θ_edge."""
    if not (e.has(Z) or e.has(_DZ)):
        return sp.S.Zero
    if isinstance(e, RandomVar):
        return _DZ(*e.indices, edge) if e.family == Z else sp.S.Zero
    if isinstance(e, sp.core.function.AppliedUndef) and e.func == _DZ:
        k, a, *edges = e.args
        return _DZ(k, a, *sorted(edges + [edge], key=default_sort_key))
    out = _by_structure(e, lambda a: _lower(a, edge))
    if out is not None:
        return out
    if e.has(NeuronSum) or e.has(_DZ):
        raise DeriveError(f"cannot differentiate {e} by a parameter of the layers below")
    # a function of components (σ(z_j), its derivatives): the chain rule
    out = sp.S.Zero
    for r in sorted((r for r in e.atoms(RandomVar) if r.family == Z), key=default_sort_key):
        out += e.diff(r) * _DZ(*r.indices, edge)
    return out


#: the most λ-contracted derivatives (edges) of a declared tangent field (the ddNTKs' three)
MAX_EDGES = max(1 + max(e for slot in slots for e in slot) for _, slots in TANGENT_FIELDS.values())


def _as_tangent_field(nodes: list, drop_beyond: bool = False) -> sp.Expr:
    """The tangent field of layer ℓ (:data:`TANGENT_FIELDS`) that a λ-contracted product of
    formal derivatives Dz(k, α, edges…) is, its indices in the canonical order (the least under
    the field's own symmetries, so equal fields print alike).  With ``drop_beyond`` a product
    with more than :data:`MAX_EDGES` edges (a fourth or higher derivative tensor, O(1/n²)) is 0."""
    have = [set(n.args[2:]) for n in nodes]
    if drop_beyond and len(set().union(*have)) > MAX_EDGES:
        return sp.S.Zero
    for name, (func, slots) in TANGENT_FIELDS.items():
        if len(slots) != len(nodes) or sorted(map(len, slots)) != sorted(map(len, have)):
            continue
        best = None
        for perm in itertools.permutations(range(len(nodes))):
            edge_of: dict = {}  # edge label → the field's edge number
            ok = True
            for f, slot in enumerate(slots):
                labels = have[perm[f]]
                if len(labels) != len(slot):
                    ok = False
                    break
            if not ok:
                continue
            # each label must be carried by exactly the factors that carry one edge number
            carriers = {lab: {f for f in range(len(slots)) if lab in have[perm[f]]}
                        for lab in set().union(*have)}
            wanted = {e: {f for f, slot in enumerate(slots) if e in slot}
                      for e in set().union(*map(set, slots))}
            edge_of = {}
            for lab, fs in carriers.items():
                match = [e for e, ws in wanted.items() if ws == fs and e not in edge_of.values()]
                if not match:
                    ok = False
                    break
                edge_of[lab] = match[0]
            if not ok:
                continue
            neurons = tuple(nodes[perm[f]].args[0] for f in range(len(slots)))
            samples = tuple(nodes[perm[f]].args[1] for f in range(len(slots)))
            key = default_sort_key(sp.Tuple(*samples, *neurons))  # the samples in order first
            if best is None or key < best[0]:
                best = (key, neurons + samples)
        if best is not None:
            return func(*best[1])
    raise DeriveError(f"the λ-contracted derivatives {nodes} are none of the tangent fields "
                      f"{sorted(TANGENT_FIELDS)} (internal error)")


def _contract_edges(e: sp.Expr, drop_beyond: bool = False) -> sp.Expr:
    """Every product of formal derivatives Dz, grouped by the edges they share (a λ contracts
    the two factors carrying one edge), replaced by the tangent field it is (``drop_beyond``:
    those beyond the declared fields are O(1/n²) and dropped, see :func:`_as_tangent_field`)."""
    if not e.has(_DZ):
        return e
    if isinstance(e, NeuronSum):
        return NeuronSum(_contract_edges(e.function, drop_beyond), *e.limits, distinct=e.distinct,
                         exclude=e.exclude)
    if e.is_Add:
        return sp.Add(*(_contract_edges(a, drop_beyond) for a in e.args))
    e = sp.expand(e)
    if e.is_Add:
        return sp.Add(*(_contract_edges(a, drop_beyond) for a in e.args))
    factors = sp.Mul.make_args(e)
    sums = [f for f in factors if isinstance(f, NeuronSum) and f.has(_DZ)]
    outside = [f for f in factors if not isinstance(f, NeuronSum) and f.has(_DZ)]
    if len(sums) > 1 or (sums and outside):
        # derivatives contracted across a sum (a skip term's ∂z_i beside Σ_j W_ij σ'_j ∂z_j):
        # the factors outside go inside, the sums become one (their dummies are distinct)
        if any(s.distinct or s.exclude for s in sums):
            raise DeriveError(f"formal derivatives across restricted sums in {e} (internal error)")
        body = sp.Mul(*outside, *(s.function for s in sums))
        merged = NeuronSum(body, *(lim for s in sums for lim in s.limits))
        rest = [f for f in factors if f not in sums and f not in outside]
        return sp.Mul(*rest) * _contract_edges(merged, drop_beyond)
    nodes, rest = [], []
    for f in sp.Mul.make_args(e):
        base, k = f.as_base_exp()
        if isinstance(base, sp.core.function.AppliedUndef) and base.func == _DZ:
            nodes += [base] * int(k)
        elif isinstance(f, NeuronSum):
            rest.append(_contract_edges(f, drop_beyond))  # contracted inside it
        elif f.has(_DZ):
            raise DeriveError(f"formal derivatives inside {f} (internal error)")
        else:
            rest.append(f)
    if nodes and any(f.has(_DZ) for f in rest):
        raise DeriveError(f"formal derivatives both in and outside a neuron sum in {e} "
                          "(internal error)")
    # connected components under shared edges
    comps: list = []
    for node in nodes:
        labels = set(node.args[2:])
        joined = [c for c in comps if labels & c[0]]
        merged = (labels.union(*(c[0] for c in joined)), [node] + [x for c in joined for x in c[1]])
        comps = [c for c in comps if c not in joined] + [merged]
    return sp.Mul(*rest, *(_as_tangent_field(sorted(c[1], key=default_sort_key), drop_beyond)
                           for c in comps))


@dataclass(frozen=True)
class ForwardEquation:
    """The forward equation z^{(ℓ+1)}_{I;ALPHA} = ``expr`` of one architecture (see the module).

    ``scalars`` are the per-layer hyperparameters it holds besides C_b, C_W (and λ_b, λ_W of
    the NTK), in the order the evaluators take them; ``description`` says in words what it is.
    """

    name: str
    expr: sp.Expr
    scalars: tuple = ()
    description: str = ""
    _cache: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    def __post_init__(self):
        _check_equation(self.expr, self.scalars)

    # -- the equation and its parts ----------------------------------------------------------

    def at(self, i: NeuronIndex, alpha: SampleIndex) -> sp.Expr:
        """z^{(ℓ+1)}_{i;α}: the equation for neuron ``i`` on sample ``alpha``."""
        return self.expr.xreplace({I: i, ALPHA: alpha})

    @property
    def skip(self) -> sp.Expr:
        """The coefficient ξ of the parameter-free term ξ z^{(ℓ)}_{i;α} (0 for the MLP)."""
        if "skip" not in self._cache:  # read on every max_order: computed once
            self._cache["skip"] = self.parts()[0]
        return self._cache["skip"]

    def has_skip(self) -> bool:
        return self.skip != 0

    def without(self, zero) -> "ForwardEquation":
        """The same equation with the scalars in ``zero`` set to 0 (a residual layer with ξ = 0
        at every layer is an MLP layer; dropping the term lets the engine see that)."""
        zero = tuple(s for s in self.scalars if s in set(zero))
        if not zero:
            return self
        if ("without", zero) in self._cache:
            return self._cache["without", zero]
        expr = sp.expand(self.expr.xreplace({s: 0 for s in zero}))
        expr = simplify_sums(expr) if expr.has(NeuronSum) else expr
        out = ForwardEquation(self.name, expr, tuple(s for s in self.scalars if s not in zero),
                              self.description)
        self._cache["without", zero] = out
        return out

    def parts(self) -> tuple:
        """``(xi, c, g)`` with z^{(ℓ+1)}_i = xi z_i + c b_i + Σ_j W_ij g(z_j) (the class every
        equation here belongs to): ``xi`` and ``c`` in the scalars, ``g`` an expression in the
        plain symbol :data:`U` (standing for z_j), ``SIGMA(U)`` and the scalars.  Samplers of
        actual networks (:mod:`derive.reality.montecarlo`) are written from these."""
        expr = sp.expand(self.expr)
        xi = expr.coeff(Z[I, ALPHA]) if expr.has(Z[I, ALPHA]) else sp.S.Zero
        c = expr.coeff(B[I]) if expr.has(B[I]) else sp.S.Zero
        g = sp.S.Zero
        for t in sp.Add.make_args(expr):
            for f in sp.Mul.make_args(t):
                if isinstance(f, NeuronSum):
                    (j, _), = f.limits
                    inner = sp.expand(f.function * t / f).xreplace({W[I, j]: 1, Z[j, ALPHA]: U})
                    g += inner
        return sp.expand(xi), sp.expand(c), sp.expand(g)

    def ntk(self, i1: NeuronIndex, i2: NeuronIndex, a1: SampleIndex, a2: SampleIndex,
            trace: Trace | None = None) -> sp.Expr:
        """Ĥ^{(ℓ+1)}_{i1i2;α1α2} derived by the chain rule (see the module docstring; the
        tangent field ``"Hhat"`` of :meth:`tangent`); the derivation is recorded in ``trace``
        (rule ``ntk.chain_rule``)."""
        out = self.tangent("Hhat", (i1, i2), (a1, a2))
        if trace is not None:
            trace.record("ntk.chain_rule", sp.Tuple(self.at(i1, a1), self.at(i2, a2)), out,
                         note="Ĥ' = Σ J Ĥ Jᵀ + Σ_θ λ_θ ∂z'∂z' over layer ℓ+1's parameters, "
                         "δ's contracted")
        return out

    def tangent(self, name: str, neurons: tuple, samples: tuple,
                trace: Trace | None = None) -> sp.Expr:
        """The tangent field ``name`` of layer ℓ+1 (:data:`TANGENT_FIELDS`: the dNTK, the
        ddNTKs) at the given neuron and sample indices, derived by the chain rule: each
        λ-contracted parameter is either one of layer ℓ+1 (a bias, λ_b; a weight, λ_W/n_ℓ;
        summed over its components) or one of the layers below, through which every derivative
        of z^{(ℓ+1)} runs into derivatives of layer ℓ's preactivations; those, contracted by
        the same λ's, are layer ℓ's tangent fields.  Recorded in ``trace`` (rule
        ``tangent.chain_rule``)."""
        func, slots = TANGENT_FIELDS[name]
        key = (name, tuple(neurons), tuple(samples))
        if key not in self._cache:
            nedges = 1 + max(e for slot in slots for e in slot)
            labels = sp.symbols(f"mu1:{nedges + 1}")
            ms, ps = neuron_indices("m1:4"), neuron_indices("p1:4")
            total = sp.S.Zero
            for kinds in itertools.product((None,) + _LEARNING_RATES, repeat=nedges):
                params, limits, lam = {}, [], sp.S.One
                for e, kind in enumerate(kinds):
                    if kind is None:
                        continue
                    fam, rate = kind
                    if len(fam.slots) == 1:
                        params[e] = fam[ms[e]]
                        limits.append((ms[e], WIDTH_NEXT))
                    else:
                        params[e] = fam[ms[e], ps[e]]
                        limits += [(ms[e], WIDTH_NEXT), (ps[e], WIDTH)]
                    lam *= rate
                prod = lam
                for f, slot in enumerate(slots):
                    d = self.at(neurons[f], samples[f])
                    for e in slot:
                        d = _derivative(d, params[e]) if e in params else _lower(d, labels[e])
                        if d == 0:
                            break
                    prod *= d
                    if d == 0:
                        break
                if prod != 0:
                    total += NeuronSum(prod, *limits) if limits else prod
            self._cache[key] = _contract_edges(simplify_sums(total))
        out = self._cache[key]
        if trace is not None:
            trace.record("tangent.chain_rule",
                         sp.Tuple(*(self.at(i, a) for i, a in zip(neurons, samples))), out,
                         note=f"{name}' by the chain rule: λ-contracted derivatives of z' over "
                         "layer ℓ+1's parameters and the layers below, δ's contracted")
        return out


def _terms(expr: sp.Expr) -> list[sp.Expr]:
    return list(sp.Add.make_args(sp.expand(expr)))


def _check_equation(expr: sp.Expr, scalars: tuple) -> None:
    """Refuse an equation outside the class the engine handles (see the module docstring),
    saying what to change."""
    if not isinstance(expr, sp.Expr):
        raise DeriveError(f"a forward equation must be an expression, got {type(expr).__name__}")
    allowed = set(scalars) | set(BASE_SCALARS) | {WIDTH}
    free = {s for s in expr.free_symbols if not isinstance(s, (NeuronIndex, SampleIndex))}
    if free - allowed:
        raise DeriveError(f"the forward equation holds {sorted(map(str, free - allowed))}, which "
                          "are not declared scalar hyperparameters")
    has_weight = False
    for t in _terms(expr):
        rvs = t.atoms(RandomVar)
        fams = {r.family for r in rvs}
        sums = [f for f in sp.Mul.make_args(t) if isinstance(f, NeuronSum)]
        if sums:
            if len(sums) > 1 or len(sums[0].limits) != 1 or sums[0].exclude or sums[0].distinct:
                raise DeriveError(f"the term {t} of the forward equation must be one sum "
                                  "Σ_j W[i,j] g(z[j]) over the neurons j of layer ℓ")
            s = sums[0]
            j, rng = s.limits[0]
            if rng != WIDTH:
                raise DeriveError(f"the sum in {t} must run over the n_ℓ neurons of layer ℓ")
            coeff = sp.Mul(*[f for f in sp.Mul.make_args(t) if f is not s])
            if coeff.atoms(RandomVar):
                raise DeriveError(f"the term {t}: only scalars may multiply the weight sum")
            for u in _terms(s.function):
                ws = [f for f in sp.Mul.make_args(u) if isinstance(f, RandomVar) and f.family == W]
                rest = sp.Mul(*[f for f in sp.Mul.make_args(u) if f not in ws])
                if len(ws) != 1 or ws[0].indices != (I, j):
                    raise DeriveError(f"inside the sum, every term must hold the weight W[i,j] "
                                      f"exactly once (linear in the weights); got {u}")
                for r in rest.atoms(RandomVar):
                    if r.family != Z or r.indices[0] != j:
                        raise DeriveError(f"inside the sum, the weight W[i,j] may multiply only "
                                          f"functions of z[j]; got {u}")
            has_weight = True
        elif B in fams:
            if t.atoms(RandomVar) != {B[I]} or t.as_independent(B[I])[1] != B[I]:
                raise DeriveError(f"the bias may enter only as a scalar times b[i]; got {t}")
        elif W in fams:
            raise DeriveError(f"the weights may enter only inside the sum over j; got {t}")
        elif rvs:
            if rvs != {Z[I, ALPHA]} or t.as_independent(Z[I, ALPHA])[1] != Z[I, ALPHA]:
                raise DeriveError(
                    f"the term {t} is not allowed: the part without parameters must be a scalar "
                    "times z[i] (a skip connection ξ z^{(ℓ)}_i); anything else gives z^{(ℓ+1)} a "
                    "nonzero mean or a non-Gaussian conditional law")
        elif t != 0:
            raise DeriveError(f"the constant term {t} gives the preactivations a nonzero mean; "
                              "the engine assumes zero-mean preactivations (docs/conventions.md §2)")
    if not has_weight:
        raise DeriveError("the forward equation has no weight sum Σ_j W[i,j] g(z[j]); "
                          "layer ℓ+1 would not depend on the other neurons of layer ℓ")


def _sum_term() -> sp.Expr:
    return NeuronSum(W[I, J] * SIGMA(Z[J, ALPHA]), (J, WIDTH))


@lru_cache(maxsize=None)
def mlp_equation() -> ForwardEquation:
    """z^{(ℓ+1)}_{i;α} = b_i + Σ_j W_{ij} σ(z^{(ℓ)}_{j;α}) (docs/conventions.md §2)."""
    return ForwardEquation("mlp", B[I] + _sum_term(),
                           description="multilayer perceptron: z' = b + W σ(z)")


@lru_cache(maxsize=None)
def residual_equation() -> ForwardEquation:
    """z^{(ℓ+1)}_{i;α} = ξ z^{(ℓ)}_{i;α} + γ [b_i + Σ_j W_{ij} σ(z^{(ℓ)}_{j;α})] (docs/conventions.md §8)."""
    return ForwardEquation("residual", XI * Z[I, ALPHA] + GAMMA * (B[I] + _sum_term()), (XI, GAMMA),
                           description="residual network: z' = ξ z + γ (b + W σ(z))")


class _OneNeuron:
    """``z[i]``, ``z[j]`` in a user's equation: the field with the sample index implied."""

    def __init__(self, family):
        self.family = family

    def __getitem__(self, idx):
        idx = idx if isinstance(idx, tuple) else (idx,)
        want = len(self.family.slots) - (1 if self.family is Z else 0)
        if len(idx) != want:
            raise DeriveError(f"{self.family.name} takes {want} neuron "
                              f"ind{'ex' if want == 1 else 'ices'} here (i or j), got {len(idx)}")
        return self.family[idx + ((ALPHA,) if self.family is Z else ())]


def parse_forward_equation(text: str, scalars=()) -> ForwardEquation:
    """A user's forward equation from text, through the safe parser (:func:`derive.parse`).

    Write it for neuron ``i`` of layer ℓ+1 with ``z[i]``, ``z[j]`` (layer ℓ), ``W[i,j]``, ``b[i]``,
    ``sigma(...)`` and ``sum_j(...)`` (the sum over the n_ℓ neurons j of layer ℓ); the sample
    index is implied.  ``scalars`` names the per-layer hyperparameters it uses (their values come
    from the spec).  Example: ``"xi*z[i] + gamma*(b[i] + sum_j(W[i,j]*sigma(z[j])))"``.
    """
    from ..base.parsing import parse

    names = [str(s) for s in scalars]
    reserved = {"z", "W", "b", "i", "j", "sigma", "sum_j", "C_b", "C_W", "lambda_b", "lambda_W",
                "pi", "E"}
    for s in names:
        if not isinstance(s, str) or not s.isidentifier() or s in reserved:
            raise DeriveError(f"{s!r} cannot name a scalar of a forward equation: use an "
                              f"identifier other than {sorted(reserved)}")
    syms = tuple(sp.Symbol(s) for s in names)

    def neuron_sum(body):
        return NeuronSum(body, (J, WIDTH))

    try:
        expr = parse(text, {**{s: sp.Symbol(s) for s in names}, "i": I, "j": J},
                     what="forward equation",
                     fields={"z": _OneNeuron(Z), "W": _OneNeuron(W), "b": _OneNeuron(B)},
                     functions={"sigma": SIGMA, "sum_j": neuron_sum})
    except ParseError as err:
        raise ParseError(f"{err} — write the equation with z[i], z[j], W[i,j], b[i], sigma(…), "
                         f"sum_j(…) and the scalars {names} (a spec file declares its scalars under "
                         "'scalars')") from None
    # the description is printed from the parsed expression, never the user's text
    return ForwardEquation("user", expr, syms, description=f"user equation: z' = {sp.sstr(expr)}")
