r"""Nearly-Gaussian perturbation theory (docs/conventions.md §3, §6 step 4, §10; PDLT §4.3).

Two entry points, for the two kinds of integrand:

:func:`nearly_gaussian_expectation`
    E[f] for a *polynomial* f in the variables of a nearly-Gaussian family
    (:func:`derive.nearly_gaussian_field`): the cumulant expansion into two-point blocks
    (K + G1/n + G2/n²), connected four-point blocks ((V + V1/n)/n) and six-point blocks
    (U/n²), truncated at the order asked (1 by default; 2 needs the family's O(1/n²) data).
    Neuron indices, δ's and neuron sums are handled by the contraction engine.

:func:`perturbative_expectation`
    E[f] for a *general* function f of one neuron's vector (σ(z_α) σ(z_β), ...), in the
    operator form

    .. math::
        \mathbb{E}[f] = \langle f\rangle_K + \frac1n\Big[\tfrac12\sum G^{\{1\}}_{\beta_1\beta_2}
        \langle\partial_{\beta_1}\partial_{\beta_2} f\rangle_K + \tfrac18\sum
        V_{(\beta_1\beta_2)(\beta_3\beta_4)}\langle\partial_{\beta_1}\cdots\partial_{\beta_4} f\rangle_K\Big],

    and, given a second function g of a *different* neuron, E[f(z_j) g(z_k)] including the
    connected part (1/(4n)) Σ V ⟨∂∂f⟩_K ⟨∂∂g⟩_K; to second order in 1/n (G2, V1 and the
    six-point vertex U, and the squares of the first-order terms) and for any number of
    functions of different neurons, or their joint cumulant.  Averages stay inert
    (:class:`derive.GaussianAverage`) until evaluated numerically or, for polynomials, by
    :func:`evaluate_averages`.

The sums over sample indices β collapse onto the samples at which f is evaluated: ∂/∂z_β
of a function of z_{α1}, z_{α2} is δ_{βα1}∂_1 + δ_{βα2}∂_2, so Σ_β T_β ∂_β f is a sum over
the distinct sample indices in f (exact also when two of them take the same value).
"""
from __future__ import annotations

from functools import lru_cache
from itertools import combinations_with_replacement

import sympy as sp
from sympy.core.sorting import default_sort_key

from ..base.errors import DeriveError, boundary
from ..base.parsing import as_expr
from .contractions import check_order, expectation_parts, wick
from .graded import Graded
from .symbols import (SAMPLE, DerivativeContraction, Family, GaussianAverage, RandomVar,
                      SampleTensor, gaussian_field, summation_dummies)
from .trace import Trace

__all__ = ["nearly_gaussian_expectation", "perturbative_expectation", "evaluate_averages",
           "integrate_by_parts", "collapse_contractions"]


@boundary
def nearly_gaussian_expectation(expr, order: int = 1, over=None, trace: Trace | None = None) -> Graded:
    """E[expr] to ``order`` in 1/n for a polynomial in nearly-Gaussian variables.

    Parameters
    ----------
    expr : sympy.Expr
        A polynomial in variables of (nearly-)Gaussian families.
    order : int, optional
        The highest order in 1/n (0, 1 or 2; default 1).  Order 2 needs the family's O(1/n²)
        data (``nearly_gaussian_field(..., G2=, V1=, U=)``): G2 in the two-point blocks, V1
        in the four-point ones, U in six-point blocks (docs/conventions.md §10).
    over : iterable of Family, optional
        The families integrated over (default: all of them).
    trace : Trace, optional
        Where to record the rules that fired.

    Returns
    -------
    Graded
        ``r[k]`` is the coefficient of 1/n^k.

    Raises
    ------
    DeriveError
        For an order other than 0, 1 or 2 (2 without the family's O(1/n²) data), a string
        instead of a SymPy expression, or inconsistent indices.

    Examples
    --------
    >>> from derive import nearly_gaussian_field, neuron_indices, sample_indices
    >>> z = nearly_gaussian_field('z', 'K', 'G1', 'V', 'n')
    >>> (i,), (a,) = neuron_indices('i'), sample_indices('alpha')
    >>> r = nearly_gaussian_expectation(z[i, a] ** 4)
    >>> r[0], r[1]
    (3*K[alpha, alpha]**2, 6*G1[alpha, alpha]*K[alpha, alpha] + 3*V[alpha, alpha, alpha, alpha])
    """
    order = check_order(order)
    parts, widths = expectation_parts(expr, over=over, trace=trace, order=order)
    n = next(iter(widths)) if widths else sp.Symbol("n", positive=True)
    return Graded(parts, n, order)


# ---------------------------------------------------------------------------------------------
# operator form for general functions
# ---------------------------------------------------------------------------------------------

def _single_neuron_family(f: sp.Expr, field: Family | None) -> Family:
    fams = {r.family for r in f.atoms(RandomVar)}
    if field is not None:
        fams |= {field}
    if len(fams) != 1:
        raise DeriveError(
            "perturbative_expectation needs a function of the components z[alpha] of one "
            "nearly-Gaussian family with only a sample index (nearly_gaussian_field(..., "
            f"neuron=False)); found families {sorted(f.name for f in fams) or 'none'}")
    fam = fams.pop()
    if fam.slots != (SAMPLE,):
        raise DeriveError(
            f"family {fam.name} has slots {fam.slots}; the operator form acts on one neuron's "
            "vector z_alpha: declare it with neuron=False and write f in z[alpha]")
    return fam


def _components(f: sp.Expr, fam: Family) -> list[RandomVar]:
    return sorted((r for r in f.atoms(RandomVar) if r.family == fam), key=default_sort_key)


#: the cumulant data of a nearly-Gaussian family by the power of 1/n they come with: (the
#: family's tensor, the number of index pairs of its δ structure) — the metric corrections
#: (one pair), the four-point vertex (two) and the six-point vertex (three)
_CUMULANTS = {1: (("G1", 1), ("V", 2)), 2: (("G2", 1), ("V1", 2), ("U", 3))}


def _vertices(fam: Family, m: int, power: int) -> list[tuple]:
    """The terms of the cumulant operator log E[exp(Σ J·z)] at 1/n^power for m functions of
    m different neurons: (coefficient, tensor, the function each of its pairs acts on).

    A connected 2p-point function is Σ over the pairings of its fields of δ(neurons of each
    pair) T_{(pair)(pair)…}.  For c_j pairs on function j the fields' arrangements and the
    pairings whose δ's do not vanish give (2p)!/Π(2c_j)! × Π(2c_j − 1)!! equal terms, and the
    exponential's 1/(2p)!: the coefficient Π_j 1/(2c_j)!! (½ G ∂², ⅛ V ∂⁴, 1/48 U ∂⁶ on one
    function; ¼ V ∂²∂², 1/16 U ∂⁴∂², ⅛ U ∂²∂²∂² across them)."""
    out = []
    for attr, pairs in _CUMULANTS[power]:
        T = getattr(fam, attr)
        if T is None:
            continue
        for where in combinations_with_replacement(range(m), pairs):
            coeff = sp.Mul(*(sp.Rational(1, 2 ** c * sp.factorial(c))
                             for c in (where.count(j) for j in set(where))))
            out.append((coeff, T, where))
    return out


def _operator_terms(fam: Family, m: int, order: int) -> dict[int, list[tuple]]:
    """exp(cumulant operator) to 1/n^order: power → [(coefficient, factors)], each factor a
    (tensor, positions) of :func:`_vertices`; the power-2 terms are the second-order vertices
    and the products of two first-order ones (½ w² for the same one twice)."""
    first = _vertices(fam, m, 1) if order >= 1 else []
    terms = {1: [(c, ((T, w),)) for c, T, w in first]}
    if order >= 2:
        terms[2] = [(c, ((T, w),)) for c, T, w in _vertices(fam, m, 2)]
        for a, (ca, Ta, wa) in enumerate(first):
            for cb, Tb, wb in first[a:]:
                same = (Ta, wa) == (Tb, wb)
                terms[2].append((ca * cb / (2 if same else 1), ((Ta, wa), (Tb, wb))))
    return {k: v for k, v in terms.items() if k <= order}


def _connected(factors, m: int) -> bool:
    """Whether the factors' positions link all m functions into one piece."""
    seen, frontier = {0}, [0]
    while frontier:
        j = frontier.pop()
        for _, where in factors:
            if j in where:
                for k in where:
                    if k not in seen:
                        seen.add(k)
                        frontier.append(k)
    return len(seen) == m


def _term(coeff, factors, fs: list, fam: Family, K: str) -> tuple[sp.Expr, sp.Expr]:
    """coeff × Σ Π_factors T_{pairs} Π_j ⟨∂_{β of the pairs on j} f_j⟩_K as (the plain
    averages of the functions no derivative acts on, coeff × a
    :class:`DerivativeContraction`); zero when a derivative acts on a function of no
    component."""
    total = sum(2 * len(where) for _, where in factors)
    b = iter(summation_dummies(total, set().union(*(f.free_symbols for f in fs))))
    tensors, groups = [], [[] for _ in fs]
    for T, where in factors:
        idx = []
        for j in where:
            pair = (next(b), next(b))
            groups[j].extend(pair)
            idx.extend(pair)
        tensors.append(T[tuple(idx)])
    acted = [j for j in range(len(fs)) if groups[j]]
    rest = sp.Mul(*(_average(fs[j], K) for j in range(len(fs)) if not groups[j]))
    if any(not _components(fs[j], fam) for j in acted):
        return rest, sp.S.Zero
    return rest, coeff * DerivativeContraction(sp.Mul(*tensors), [fs[j] for j in acted],
                                               [tuple(groups[j]) for j in acted], K)


def _average(h: sp.Expr, K: str) -> sp.Expr:
    """⟨h⟩_K with the constant factors taken out (⟨c f⟩_K = c ⟨f⟩_K, ⟨c⟩_K = c)."""
    rand = [x for x in sp.Mul.make_args(h) if x.has(RandomVar)]
    const = [x for x in sp.Mul.make_args(h) if not x.has(RandomVar)]
    return sp.Mul(*const) * (GaussianAverage(sp.Mul(*rand), K) if rand else sp.S.One)


@lru_cache(maxsize=1 << 14)
def cached_derivative(h: sp.Expr, variables: tuple) -> sp.Expr:
    """∂h by each of ``variables`` in turn (h itself for none), taken once per process: the
    contractions of one expansion act on the same few functions and take the same derivatives
    in every order of their dummies; specialising σ and printing evaluators take the same high
    derivatives of σ and of its products again and again (the O(1/n²) forms: up to the eighth)."""
    return sp.diff(h, *variables) if variables else h


def _collapse_one(node: DerivativeContraction) -> sp.Expr:
    """The sample sums of one contraction carried out: ∂_β of a function of ζ_{α1}, ζ_{α2}, …
    is Σ_k δ_{βαk} ∂_k, so each β runs over the sample slots of its function (in order: T
    need not be symmetric, e.g. F_{α1β1α2β2}; T's own canonical order merges equal terms)."""
    fam_of = {}
    for f in node.functions:
        for r in f.atoms(RandomVar):
            fam_of.setdefault(r.family, r)
    (fam,) = fam_of or (None,)
    terms = [(sp.S.One, {}, [])]  # (coefficient, dummy → sample index, averages so far)
    for f, grp in zip(node.functions, node.groups):
        comps = _components(f, fam)
        partial = [({}, f)]
        for b in grp:
            partial = [({**bind, b: c.indices[0]}, d) for bind, h in partial for c in comps
                       for d in (cached_derivative(h, (c,)),) if d != 0]
        terms = [(c0, {**b0, **b1}, avgs + [h]) for c0, b0, avgs in terms for b1, h in partial]
    out = [c * node.tensor.xreplace(bind) * sp.Mul(*(_average(h, node.kernel) for h in avgs))
           for c, bind, avgs in terms]
    return sp.Add(*out)  # (one Add: adding the terms one by one rebuilt the growing sum each time)


@boundary
def collapse_contractions(expr: sp.Expr, trace: Trace | None = None) -> sp.Expr:
    """Carry out the sample sums of every :class:`DerivativeContraction` in ``expr``:
    Σ_β T_β ⟨∂_β f⟩ with f a function of ζ_{α1} … becomes Σ_k T_{αk} ⟨∂_k f⟩ by the product
    rule (rule ``derivative.collapse``).  The result holds ordinary averages of derivatives
    of σ, exact for smooth σ (for a kinked σ the numeric evaluator uses the uncollapsed form).

    Parameters
    ----------
    expr : sympy.Expr
        An expression holding :class:`DerivativeContraction` terms.
    trace : Trace, optional
        Where to record the rule that fired.

    Returns
    -------
    sympy.Expr
        ``expr`` with every contraction replaced by averages of derivatives.

    Raises
    ------
    DeriveError
        For a string instead of a SymPy expression.

    Examples
    --------
    >>> import sympy as sp
    >>> from derive import nearly_gaussian_field, sample_indices
    >>> z = nearly_gaussian_field('z', 'K', 'G1', 'V', 'n', neuron=False)
    >>> (a,) = sample_indices('alpha'); s = sp.Function('sigma')
    >>> r = perturbative_expectation(s(z[a]), collapse=False)[1]
    >>> r
    Sum_(beta1,beta2) G1[beta1, beta2]*<d(beta1,beta2) sigma(z[alpha])>_K/2 + Sum_(beta1,beta2,beta3,beta4) V[beta1, beta2, beta3, beta4]*<d(beta1,beta2,beta3,beta4) sigma(z[alpha])>_K/8
    >>> collapse_contractions(r)
    <Derivative(sigma(z[alpha]), (z[alpha], 2))>_K*G1[alpha, alpha]/2 + <Derivative(sigma(z[alpha]), (z[alpha], 4))>_K*V[alpha, alpha, alpha, alpha]/8
    """
    out = expr.replace(lambda x: isinstance(x, DerivativeContraction), _collapse_one)
    if trace is not None and out != expr:
        trace.record("derivative.collapse", expr, out)
    return out


@boundary
def perturbative_expectation(f, field: Family | None = None, order: int = 1, other=None,
                             trace: Trace | None = None, collapse: bool = True,
                             connected: bool = False) -> Graded:
    r"""E[f] to ``order`` in 1/n for a general function of one neuron's nearly-Gaussian vector.

    ``f`` is a SymPy expression in components ``z[alpha]`` of a family made with
    ``nearly_gaussian_field(..., neuron=False)``; activations may be undefined functions
    (``sympy.Function('sigma')``) or concrete ones.  With ``other=g`` the result is
    E[f(z_j) g(z_k)] for two *different* neurons j ≠ k (docs/conventions.md §6 step 4); with
    ``other=[g, h, …]`` E[f(z_j) g(z_k) h(z_l) …] for as many different neurons.

    The expectation is the cumulant operator exponentiated and applied to the Gaussian
    averages, E[Π_j f_j] = exp(W) Π_j ⟨f_j⟩_K, truncated at 1/n^order, with

    .. math::
        W = \sum_j \big[\tfrac12 \Delta G\,\partial_j^2 + \tfrac18 V\partial_j^4
              + \tfrac1{48} U\partial_j^6\big]
            + \sum_{j<k} \big[\tfrac14 V\partial_j^2\partial_k^2
              + \tfrac1{16} U(\partial_j^4\partial_k^2 + \partial_j^2\partial_k^4)\big]
            + \sum_{j<k<l} \tfrac18 U\partial_j^2\partial_k^2\partial_l^2

    (sample sums implied; ΔG = G1/n + G2/n², V → V/n + V1/n², U/n²), so the 1/n² coefficient
    holds G2, V1 and U once and the squares of the first-order terms (⅛ G1 G1 ∂⁴, 1/16 G1 V ∂⁶,
    1/128 V V ∂⁸ on one function, and their products across functions).

    Parameters
    ----------
    f : sympy.Expr
        A function of components ``z[alpha]`` of one sample-only nearly-Gaussian family.
    field : Family, optional
        That family (default: found in ``f``).
    order : int, optional
        The highest order in 1/n (0, 1 or 2; default 1).  Order 2 needs the family's O(1/n²)
        data: ``nearly_gaussian_field(..., G2="G2", V1="V1", U="U")`` (any left out is zero).
    other : sympy.Expr or list of sympy.Expr, optional
        Functions of further neurons, each different from the others and from f's.
    trace : Trace, optional
        Where to record the rules that fired.
    collapse : bool, optional
        Carry out the sample sums with :func:`collapse_contractions` (default True); False keeps
        the :class:`DerivativeContraction` form.
    connected : bool, optional
        The joint cumulant of f(z_j), g(z_k), … instead of the expectation of their product:
        the terms whose vertices link all the neurons (e.g. for three neurons at 1/n²,
        ⅛ Σ U ⟨∂²f⟩⟨∂²g⟩⟨∂²h⟩ and the chains of two V's).  Default False.

    Returns
    -------
    Graded
        ``r[k]`` is the coefficient of 1/n^k, written with Gaussian averages ⟨…⟩_K.

    Raises
    ------
    DeriveError
        For an order other than 0, 1 or 2, order 2 on a family without its O(1/n²) data, or
        an ``f`` that is not a function of one sample-only nearly-Gaussian family.

    Examples
    --------
    >>> import sympy as sp
    >>> from derive import nearly_gaussian_field, sample_indices
    >>> z = nearly_gaussian_field('z', 'K', 'G1', 'V', 'n', neuron=False)
    >>> (a,) = sample_indices('alpha'); s = sp.Function('sigma')
    >>> r = perturbative_expectation(s(z[a]))
    >>> r[0]
    <sigma(z[alpha])>_K
    >>> z2 = nearly_gaussian_field('z', 'K', 'G1', 'V', 'n', neuron=False, G2='G2', V1='V1', U='U')
    >>> perturbative_expectation(z2[a] ** 2, order=2)[2]
    G2[alpha, alpha]
    """
    order = check_order(order)
    if not isinstance(connected, (bool, sp.logic.boolalg.BooleanAtom)):
        raise DeriveError(f"connected must be True or False, got {connected!r:.40}")
    fs = [as_expr(f)]
    if other is not None:
        fs += [as_expr(g) for g in (other if isinstance(other, (list, tuple)) else [other])]
    fam = _single_neuron_family(sp.Add(*fs), field)
    if order >= 2 and not fam.is_gaussian and not fam.second_order:
        raise DeriveError(
            f"order 2 needs the O(1/n²) data of family {fam.name}: declare them with "
            "nearly_gaussian_field(..., G2='G2', V1='V1', U='U') (a label left out is zero)")
    K = fam.tensor.label  # an exactly Gaussian family (no G1, no V) has no 1/n corrections
    m = len(fs)
    parts = {0: sp.Mul(*(_average(h, K) for h in fs)) if m == 1 or not connected else sp.S.Zero}
    for power, terms in _operator_terms(fam, m, order).items():
        by_rest = {}  # grouped by the plain averages they multiply: E[f]₁ ⟨g⟩ + ⟨f⟩ E[g]₁ + …
        for coeff, factors in terms:
            if connected and not _connected(factors, m):
                continue
            rest, term = _term(coeff, factors, fs, fam, K)
            by_rest[rest] = by_rest.get(rest, sp.S.Zero) + term
        part = sp.Add(*(rest * total for rest, total in by_rest.items()))
        parts[power] = collapse_contractions(part, trace=trace) if collapse else part
    for power in range(1, order + 1):
        parts.setdefault(power, sp.S.Zero)
    result = Graded(parts, fam.n, order)
    if trace is not None:
        from .contractions import E

        trace.record("nearly_gaussian.operator", E(sp.Mul(*fs)), result.as_expr())
    return result


@boundary
def evaluate_averages(expr: sp.Expr) -> sp.Expr:
    """Evaluate every ⟨polynomial⟩_K in ``expr`` by Wick's theorem (exact).

    Averages of non-polynomial functions are left as they are (they are evaluated
    numerically by :func:`derive.gaussian_expectation`).

    Parameters
    ----------
    expr : sympy.Expr
        An expression holding :class:`GaussianAverage` terms.

    Returns
    -------
    sympy.Expr
        ``expr`` with every average of a polynomial replaced by its value.

    Raises
    ------
    DeriveError
        For a string instead of a SymPy expression.

    Examples
    --------
    >>> from derive import gaussian_field, sample_indices, GaussianAverage
    >>> z = gaussian_field('z', 'K', neuron=False); (a,) = sample_indices('alpha')
    >>> evaluate_averages(GaussianAverage(z[a] ** 2, 'K'))
    K[alpha, alpha]
    """
    def ev(node: GaussianAverage):
        h = node.function
        fams = {r.family for r in h.atoms(RandomVar)}
        if not h.is_polynomial(*h.atoms(RandomVar)):
            return node
        # ⟨·⟩_K: the components are exactly Gaussian with covariance K
        rep = {}
        for fam in fams:
            gauss = gaussian_field(fam.name, node.kernel, neuron=len(fam.slots) == 2)
            rep.update({r: gauss[r.indices] for r in h.atoms(RandomVar) if r.family == fam})
        return wick(h.xreplace(rep))

    return expr.replace(lambda x: isinstance(x, GaussianAverage), ev)


@boundary
def integrate_by_parts(expr: sp.Expr, trace: Trace | None = None) -> sp.Expr:
    r"""Gaussian integration by parts on every ⟨z_β g⟩_K in ``expr`` (docs/conventions.md §6 step 4):

    .. math:: \langle z_\beta\, g\rangle_K = \sum_\gamma K_{\beta\gamma}\langle\partial_\gamma g\rangle_K .

    In each average one explicit factor ``z[beta]`` (the first in canonical order) is traded
    for a derivative of the rest; the sum over γ runs over the components ``g`` depends on.
    Averages without a polynomial factor are left alone.

    Parameters
    ----------
    expr : sympy.Expr
        An expression holding :class:`GaussianAverage` terms.
    trace : Trace, optional
        Where to record the rule that fired.

    Returns
    -------
    sympy.Expr
        ``expr`` with one polynomial factor of each average integrated by parts.

    Raises
    ------
    DeriveError
        For a string instead of a SymPy expression.

    Examples
    --------
    >>> import sympy as sp
    >>> from derive import gaussian_field, sample_indices, GaussianAverage
    >>> z = gaussian_field('z', 'K', neuron=False); a, b = sample_indices('alpha beta')
    >>> s = sp.Function('sigma')
    >>> integrate_by_parts(GaussianAverage(z[a] * s(z[b]), 'K'))
    <Derivative(sigma(z[beta]), z[beta])>_K*K[alpha, beta]
    """
    def ibp(node: GaussianAverage):
        h = node.function
        factors = sp.Mul.make_args(h)
        lone = sorted((f for f in factors
                       if isinstance(f, RandomVar) or (isinstance(f, sp.Pow) and isinstance(f.base, RandomVar)
                                                        and f.exp.is_Integer and f.exp > 0)),
                      key=default_sort_key)
        if not lone:
            return node
        pick = lone[0]
        zb = pick if isinstance(pick, RandomVar) else pick.base
        rest = h / zb
        fam = zb.family
        if fam.slots != (SAMPLE,):
            raise DeriveError(f"integration by parts acts on one neuron's vector; {zb} has slots {fam.slots}")
        Kt = SampleTensor(node.kernel, 2, "sym")
        out = sp.S.Zero
        for zg in _components(rest, fam):
            d = sp.diff(rest, zg)
            if d != 0:
                out += Kt[zb.indices[0], zg.indices[0]] * (GaussianAverage(d, node.kernel)
                                                           if d.has(RandomVar) else d)
        return out

    result = expr.replace(lambda x: isinstance(x, GaussianAverage), ibp)
    if trace is not None and result != expr:
        trace.record("gaussian.ibp", expr, result)
    return result
