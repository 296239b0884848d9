r"""Symbolic Gaussian expectations with neuron and sample indices (docs/conventions.md §6 steps 1–3).

Entry points
    :func:`wick` (``wick(expr, over=None, trace=None)``) returns E[expr] as a SymPy expression;
    :class:`E` is the inert form (``E(expr).doit()``); :func:`simplify_sums` contracts δ's and
    counts neuron sums without taking an expectation; :func:`split_sum` splits
    Σ_{j,k} = Σ_{j=k} + Σ_{j≠k}.

Pipeline (each pass a function on a list of :class:`_Term`; each records a step in a
:class:`~derive.algebra.trace.Trace` when it fires)

1. ``expectation.linearity`` — :func:`_expand`: the expression becomes a sum of monomials
   ``mult · coeff · δ… · Π random vars`` under neuron sums, with every summed index renamed
   to a fresh dummy so that no two sums share a name.
2. ``wick.isserlis`` — :func:`_wick_pass`: the random variables of the integrated families
   are paired.  Identical variables are grouped into *types* and paired with
   :func:`derive.algebra.pairings.typed_pairings`, so E[z^{12}] is one typed pairing, not 10 395.
   A term whose blocks of summed indices are interchangeable (the k factors of
   (Σ_j z_{j;α1} z_{j;α2})^k) is paired up to that symmetry instead
   (:func:`_orbit_pairings_of_term`, :func:`derive.algebra.pairings.orbit_pairings`): 729
   weighted classes rather than 135 135 pairings at k = 7, with the same merged result.
   Nearly-Gaussian families (``nearly_gaussian.cumulants``) are expanded instead into
   two-point blocks (K, G1) and four-point blocks (V) with
   :func:`derive.algebra.pairings.block_partitions`, each 1/n counted by ``ORDER_WEIGHT``, and
   ``truncate`` (:func:`_truncate_pass`) drops what lies beyond the requested order.
3. ``delta.contract`` — :func:`_contract_pass`: δ's are contracted by union–find on the
   neuron indices: in each connected class a free index (or, failing one, a summed one)
   represents the rest; summed indices represented by another leave their sum.
4. ``sum.count`` — :func:`_count_pass`: sums whose index no longer appears count their range
   (``n``, or ``n − m`` when the index must differ from ``m`` others).
5. ``canonical.merge`` — :func:`_to_sympy`: summed indices get canonical names (j, k, l …)
   chosen so that equal contractions print equal, and like terms are added by SymPy.

Only the merged result of each pass is turned into SymPy; the enumeration works on tuples.
Two assembly shortcuts (:func:`_fast_add`, :func:`_distinct_fields_moment`) build large
results in SymPy's canonical order without its O(N log N) comparisons; tests check that they
give the same expressions as the general route.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from itertools import permutations, product
from typing import Iterable

import sympy as sp
from sympy.core.sorting import default_sort_key

from ..base.errors import DeriveError, IndexStructureError, OrderError, boundary
from ..base.parsing import as_expr
from .pairings import block_partitions, orbit_pairings, perfect_matchings, typed_pairings
from .symbols import (ORDER_WEIGHT, Family, GaussianAverage, NeuronIndex, NeuronSum, RandomVar,
                      SampleIndex)
from .trace import Trace

__all__ = ["wick", "E", "simplify_sums", "split_sum", "expectation_parts", "check_order"]

#: canonical names for summed neuron indices, in order of preference
DUMMY_NAMES = ("j", "k", "l", "m", "p", "q", "r", "s", "t", "u", "v", "w")
#: beyond this many summed indices in one term, canonical naming stops searching permutations
MAX_PERMUTATION_SEARCH = 6


class _Term:
    """One monomial: ``mult · coeff · Π deltas · Π factors · Π randoms`` under ``sums``.

    * ``coeff`` – non-random SymPy factor (may hold neuron indices and non-integrated
      random variables);
    * ``randoms`` – sorted tuple of integrated :class:`RandomVar` (with repetition);
    * ``deltas`` – frozenset of 2-element frozensets of neuron indices (uncontracted δ's);
    * ``factors`` – frozenset of (SymPy factor, power) items made by Wick (tensors, scales);
    * ``sums`` – tuple of (index, range), sorted by index name;
    * ``excl`` – frozenset of 2-element frozensets: index pairs that must differ.
    """

    __slots__ = ("coeff", "randoms", "deltas", "factors", "sums", "excl")

    def __init__(self, coeff=sp.S.One, randoms=(), deltas=frozenset(), factors=frozenset(),
                 sums=(), excl=frozenset()):
        self.coeff = coeff
        self.randoms = randoms
        self.deltas = deltas
        self.factors = factors
        self.sums = sums
        self.excl = excl

    def key(self):
        return (self.coeff, self.randoms, self.deltas, self.factors, self.sums, self.excl)

    def times(self, other: "_Term") -> "_Term":
        f = Counter(dict(self.factors))
        f.update(dict(other.factors))
        return _Term(self.coeff * other.coeff,
                     tuple(sorted(self.randoms + other.randoms, key=default_sort_key)),
                     self.deltas | other.deltas, frozenset(f.items()),
                     tuple(sorted(self.sums + other.sums, key=lambda s: s[0].name)),
                     self.excl | other.excl)

    def summed(self) -> set:
        return {s[0] for s in self.sums}


def _add(acc: dict, term: _Term, mult) -> None:
    k = term.key()
    if k in acc:
        t, m = acc[k]
        acc[k] = (t, m + mult)
    else:
        acc[k] = (term, mult)


def _prune(acc: dict) -> dict:
    return {k: v for k, v in acc.items() if v[1] != 0 and v[0].coeff != 0}


# ---------------------------------------------------------------------------------------------
# 1. expansion into monomials
# ---------------------------------------------------------------------------------------------

class _Expander:
    def __init__(self, integrate):
        self.integrate = integrate  # Family -> bool
        self.count = 0

    def fresh(self) -> NeuronIndex:
        self.count += 1
        return NeuronIndex(f"_s{self.count}")

    def structured(self, e) -> bool:
        return e.has(RandomVar, NeuronSum, sp.KroneckerDelta)

    def expand(self, e) -> list[tuple[_Term, object]]:
        """List of (term, multiplicity)."""
        if not isinstance(e, sp.Basic):
            e = as_expr(e)
        if isinstance(e, (E, GaussianAverage)) or not self.structured(e):
            return [(_Term(coeff=e), 1)]
        if isinstance(e, sp.Add):
            out = []
            for a in e.args:
                out.extend(self.expand(a))
            return out
        if isinstance(e, sp.Mul):
            acc = [(_Term(), 1)]
            for f in e.args:
                part = self.expand(f)
                acc = [(t1.times(t2), m1 * m2) for (t1, m1), (t2, m2) in product(acc, part)]
            return acc
        if isinstance(e, sp.Pow):
            base, ex = e.args
            if ex.is_Integer and ex > 0:
                if isinstance(base, RandomVar):
                    if self.integrate(base.family):
                        return [(_Term(randoms=(base,) * int(ex)), 1)]
                    return [(_Term(coeff=e), 1)]
                acc = [(_Term(), 1)]
                for _ in range(int(ex)):
                    part = self.expand(base)  # fresh dummies for every copy
                    acc = [(t1.times(t2), m1 * m2) for (t1, m1), (t2, m2) in product(acc, part)]
                return acc
            if not any(self.integrate(r.family) for r in e.atoms(RandomVar)) and not e.has(NeuronSum):
                return [(_Term(coeff=e), 1)]
            raise DeriveError(
                f"cannot take a Gaussian expectation of {e}: only polynomials (non-negative "
                "integer powers) of Gaussian variables are expanded by Wick's theorem; for a "
                "function of a Gaussian use derive.perturbative_expectation or "
                "derive.gaussian_expectation")
        if isinstance(e, RandomVar):
            if self.integrate(e.family):
                return [(_Term(randoms=(e,)), 1)]
            return [(_Term(coeff=e), 1)]
        if isinstance(e, sp.KroneckerDelta):
            a, b = e.args[:2]
            if isinstance(a, NeuronIndex) and isinstance(b, NeuronIndex):
                return [(_Term(deltas=frozenset({frozenset((a, b))})), 1)]
            if isinstance(a, SampleIndex) or isinstance(b, SampleIndex):
                if not (isinstance(a, SampleIndex) and isinstance(b, SampleIndex)):
                    raise IndexStructureError(
                        f"{e} joins a sample index to a neuron index; a Kronecker delta "
                        "relates indices of one kind")
            return [(_Term(coeff=e), 1)]
        if isinstance(e, NeuronSum):
            mapping = {v: self.fresh() for v in e.variables}
            inner = self.expand(e.function.xreplace(mapping))
            sums = tuple((mapping[v], r) for v, r in e.limits)
            excl = frozenset(frozenset(mapping.get(x, x) for x in p) for p in e.exclude)
            wrap = _Term(sums=tuple(sorted(sums, key=lambda s: s[0].name)), excl=excl)
            return [(wrap.times(t), m) for t, m in inner]
        # any other function: allowed only when it holds no integrated random variable
        if any(self.integrate(r.family) for r in e.atoms(RandomVar)):
            raise DeriveError(
                f"cannot take a Gaussian expectation of {e}: Wick's theorem needs a polynomial "
                "in the Gaussian variables; for a function of a Gaussian use "
                "derive.perturbative_expectation (symbolic) or derive.gaussian_expectation "
                "(numeric)")
        if e.has(NeuronSum):
            raise DeriveError(f"a neuron sum inside the function {e.func} cannot be expanded")
        return [(_Term(coeff=e), 1)]


def _expand(expr, integrate) -> dict:
    acc: dict = {}
    for t, m in _Expander(integrate).expand(expr):
        _add(acc, t, m)
    return _prune(acc)


# ---------------------------------------------------------------------------------------------
# 2. Wick pairings
# ---------------------------------------------------------------------------------------------

#: one instance per equal factor / δ edge within a process, so that dict and set look-ups
#: hit CPython's identity shortcut instead of SymPy's structural ``__eq__``
_INTERN: dict = {}


def _intern(x):
    if len(_INTERN) > 100_000:  # keep the table bounded in long sessions
        _INTERN.clear()
    return _INTERN.setdefault(x, x)


def _edges(pairs) -> list | None:
    """δ edges of a monomial as interned frozensets; None when a δ between two different
    fixed neurons makes it vanish."""
    out = []
    for x, y in pairs:
        if x == y:
            continue
        if isinstance(x, sp.Integer) and isinstance(y, sp.Integer):
            return None
        out.append(_intern(frozenset((x, y))))
    return out


def _family_pairings(variables: tuple[RandomVar, ...], order: int):
    """For the variables of one family: list of (multiplicity, deltas, factor items)."""
    fam: Family = variables[0].family
    if not fam.is_gaussian:
        return _family_blocks(variables, order)
    counts = Counter(variables)
    types = sorted(counts, key=default_sort_key)
    cnt = [counts[t] for t in types]
    cov_cache = {}

    def cov(a, b):
        if (a, b) not in cov_cache:  # computed once per pair of types
            (pairs, factors, _), = fam.two_point(types[a].indices, types[b].indices)
            cov_cache[(a, b)] = (_edges(pairs), [_intern(f) for f in factors])
        return cov_cache[(a, b)]

    out = []
    if all(c == 1 for c in cnt):
        pairings = ((tuple((p, 1) for p in pm), 1) for pm in perfect_matchings(len(cnt)))
    else:
        pairings = typed_pairings(cnt)
    for pc, mult in pairings:
        items = _pairing_items(pc, cov)
        if items is not None:
            out.append((mult, *items))
    return out


def _pairing_items(pc, cov):
    """(deltas, factor items) of one pairing, given as pair counts ((a, b), m) of variable
    types, with ``cov(a, b)`` → (δ edges, covariance factors) of a pair; None when a pair's
    covariance vanishes (edges None)."""
    deltas, fac = [], {}
    for (a, b), m in pc:
        edges, factors = cov(a, b)
        if edges is None:
            return None
        deltas += edges
        for f in factors:
            fac[f] = fac.get(f, 0) + m
    return frozenset(deltas), frozenset(fac.items())


def _family_blocks(variables: tuple[RandomVar, ...], order: int):
    """Cumulant expansion of a nearly-Gaussian family: set partitions into two-point blocks
    (K, or G1, G2 at orders 1, 2), at most ``order`` connected four-point blocks (V at order
    1, V1 at 2) and at most ``order // 2`` six-point blocks (U, order 2; docs/conventions.md
    §10).  The order of each monomial is carried as a power of ``ORDER_WEIGHT`` and removed
    beyond ``order`` by the explicit truncation pass."""
    fam: Family = variables[0].family
    fields = sorted(variables, key=default_sort_key)
    m = len(fields)
    caps = {4: order if fam.V is not None else 0, 6: order // 2 if fam.U is not None else 0}
    cache = {}
    point = {2: fam.two_point, 4: fam.four_point, 6: fam.six_point}

    def monomials(block):
        key = tuple(fields[x] for x in block)
        if key not in cache:
            idx = [f.indices for f in key]
            raw = point[len(block)](*idx)
            cache[key] = [(e, [_intern(f) for f in fs], k) for pairs, fs, k in raw
                          if (e := _edges(pairs)) is not None]
        return cache[key]

    out = []
    for blocks in block_partitions(m, (2, 4, 6), caps):
        for combo in product(*(monomials(b) for b in blocks)):
            deltas, fac, k = [], {}, 0
            for e, fs, kk in combo:
                deltas += e
                k += kk
                for f in fs:
                    fac[f] = fac.get(f, 0) + 1
            if k:
                fac[ORDER_WEIGHT] = k
            out.append((1, frozenset(deltas), frozenset(fac.items())))
    return out


#: whether untraced expectations pair up to the symmetry of a term (tests switch it off to
#: compare with the full enumeration)
_ORBITS = True
#: the orbit enumeration is tried for terms with at least this many integrated variables
_ORBIT_MIN_FIELDS = 6


class _DummyFactor(Exception):
    """A covariance factor of an orbit pairing holds a summed index (the shortcut of
    :func:`_orbit_pairings_of_term` does not apply)."""


def _dummy_blocks(term: _Term) -> list[list[tuple]]:
    """Classes of interchangeable blocks of summed indices of ``term``.

    A block is a connected set of summed indices (two are connected when they occur in one
    random variable, δ, exclusion or factor of the coefficient) — the dummies of one factor
    of (Σ_{j,k} W_{jk} z_j z_k)^3, say.  Two blocks are in one class when exchanging them
    (index by index, in some order) leaves the term — coefficient, δ's, exclusions, factors
    and the multiset of random variables — unchanged.  Exchanges with one representative
    generate all permutations of a class (an exchange conjugated by a symmetry is one), so
    each block is compared with one representative per class.  Each class is returned as a
    list of blocks (tuples of indices) ordered consistently with its first block."""
    summed = [x for x, _ in term.sums]
    ranges = dict(term.sums)
    parent = {x: x for x in summed}

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def link(xs):
        xs = [x for x in xs if x in parent]
        for y in xs[1:]:
            parent[find(y)] = find(xs[0])

    for r in term.randoms:
        link(r.indices)
    for p in term.deltas | term.excl:
        link(tuple(p))
    for f in sp.Mul.make_args(term.coeff):
        link(sorted(f.free_symbols & parent.keys(), key=default_sort_key))
    comps: dict = {}
    for x in summed:
        comps.setdefault(find(x), []).append(x)
    rand = Counter((r.family, r.indices) for r in term.randoms)
    free = term.coeff.free_symbols

    def symmetric(sw: dict) -> bool:
        if any(ranges[x] != ranges[y] for x, y in sw.items()):
            return False
        if free & sw.keys() and term.coeff.xreplace(sw) != term.coeff:
            return False
        for edges in (term.deltas, term.excl):
            if frozenset(frozenset(sw.get(x, x) for x in p) for p in edges) != edges:
                return False
        if any(f.has(*sw) for f, _ in term.factors):
            return False
        swapped = Counter()
        for (fam, idx), c in rand.items():
            swapped[(fam, tuple(sw.get(x, x) for x in idx))] += c
        return swapped == rand

    classes: list[list[tuple]] = []
    for block in comps.values():
        for cls in classes:
            rep = cls[0]
            if len(rep) != len(block) or len(block) > 4:
                continue
            for order in permutations(block):
                sw = dict(zip(rep, order))
                sw.update(zip(order, rep))
                if symmetric(sw):
                    cls.append(tuple(order))
                    break
            else:
                continue
            break
        else:
            classes.append([tuple(block)])
    return classes


def _orbit_pairings_of_term(term: _Term):
    """Wick pairings of all of ``term``'s (Gaussian) random variables up to the exchange of
    interchangeable blocks of summed indices (:func:`_dummy_blocks`,
    :func:`derive.algebra.pairings.orbit_pairings`): a list of (multiplicity, deltas, factor
    items) like :func:`_family_pairings`, or None when the term has no such symmetry or the
    shortcut could change the merged result.

    The shortcut relies on stage 5 giving equal expressions for terms that differ only by
    the names of their summed indices, which holds while no more than
    ``MAX_PERMUTATION_SEARCH`` summed indices can survive δ contraction and counting: only
    indices in the coefficient or in an exclusion can (δ's are contracted onto free indices,
    and the covariance factors are checked to hold no summed index)."""
    if len(term.randoms) < _ORBIT_MIN_FIELDS or len(term.sums) < 2 or term.factors:
        return None
    if any(not r.family.is_gaussian for r in term.randoms):
        return None
    summed = term.summed()
    survivors = (term.coeff.free_symbols | {x for p in term.excl for x in p}) & summed
    if len(survivors) > MAX_PERMUTATION_SEARCH:
        return None
    classes = [c for c in _dummy_blocks(term) if len(c) > 1]
    if not classes:
        return None
    dummy_id, blocks, block_classes = {}, [], []
    for k, cls in enumerate(classes):
        for block in cls:
            for d in block:
                dummy_id[d] = len(dummy_id)
            blocks.append(tuple(dummy_id[d] for d in block))
            block_classes.append(k)
    counts = Counter(term.randoms)
    types = sorted(counts, key=default_sort_key)
    fams = sorted({t.family for t in types}, key=lambda f: f.name)
    shape_id: dict = {}
    shapes, slots, kinds = [], [], []
    for t in types:
        shape = (t.family, tuple(None if x in dummy_id else x for x in t.indices))
        shapes.append(shape_id.setdefault(shape, len(shape_id)))
        slots.append(tuple(dummy_id[x] for x in t.indices if x in dummy_id))
        kinds.append(fams.index(t.family))
    cov_cache = {}

    def cov(a, b):
        if (a, b) not in cov_cache:
            (pairs, factors, _), = types[a].family.two_point(types[a].indices, types[b].indices)
            cov_cache[(a, b)] = (_edges(pairs), [_intern(f) for f in factors],
                                 any(f.free_symbols & summed for f in factors))
        edges, factors, has_dummy = cov_cache[(a, b)]
        if has_dummy:
            raise _DummyFactor
        return edges, factors

    out = []
    try:
        for pc, mult in orbit_pairings([counts[t] for t in types], shapes, slots, blocks,
                                       block_classes, kinds):
            items = _pairing_items(pc, cov)
            if items is not None:
                out.append((mult, *items))
    except _DummyFactor:  # a covariance holds a summed index: pair this term in full
        return None
    return out


def _wick_pass(acc: dict, order: int = 0, orbits: bool = False) -> tuple[dict, int]:
    """Replace integrated random variables by their Wick pairings; returns (terms, #pairings).

    With ``orbits`` a term whose summed indices can be exchanged (the k factors of
    (Σ_j z_{j;α1} z_{j;α2})^k) is paired up to that symmetry (:func:`_orbit_pairings_of_term`);
    the merged result is the same, the intermediate terms and the pairing count are not, so
    a traced expectation does not use it."""
    out: dict = {}
    npair_total = 0
    for term, mult in acc.values():
        if not term.randoms:
            _add(out, term, mult)
            continue
        by_family = defaultdict(list)
        for r in term.randoms:
            by_family[r.family].append(r)
        fams = sorted(by_family, key=lambda f: f.name)
        if any(len(by_family[f]) % 2 for f in fams):
            continue  # odd moment of a zero-mean (nearly-)Gaussian family: 0
        joint = _orbit_pairings_of_term(term) if orbits else None
        if joint is not None:
            per_family = [joint]
        else:
            per_family = [_family_pairings(tuple(by_family[f]), order) for f in fams]
        if len(per_family) == 1 and not term.factors:
            c, sm, ex, d0 = term.coeff, term.sums, term.excl, term.deltas
            for m, d, f in per_family[0]:
                if d0:
                    d = d0 | d
                k = (c, (), d, f, sm, ex)
                if k in out:
                    out[k] = (out[k][0], out[k][1] + mult * m)
                else:
                    out[k] = (_Term(c, (), d, f, sm, ex), mult * m)
            npair_total += len(per_family[0])
            continue
        for combo in product(*per_family):
            m_tot, deltas, fac = mult, term.deltas, dict(term.factors)
            for m, d, f in combo:
                m_tot *= m
                deltas = deltas | d
                for factor, p in f:
                    fac[factor] = fac.get(factor, 0) + p
            npair_total += 1
            _add(out, _Term(term.coeff, (), deltas, frozenset(fac.items()),
                            term.sums, term.excl), m_tot)
    return _prune(out), npair_total


# ---------------------------------------------------------------------------------------------
# 3. δ contraction
# ---------------------------------------------------------------------------------------------

def _name_key(x) -> tuple:
    return (0, int(x), "") if isinstance(x, sp.Integer) else (1, 0, x.name)


def _contract_term(term: _Term) -> list[tuple[_Term, int]]:
    """Contract one term's δ's; returns [(term, sign)] (an exclusion between two indices that
    both became free turns into 1 − δ, hence possibly two terms)."""
    if not term.deltas:
        return [(term, 1)]
    if not term.sums and not term.excl:
        # nothing summed: contraction only renames free indices inside the coefficient and
        # merges chains; with pairwise disjoint δ's not touching the coefficient it is a no-op
        seen = set()
        for d in term.deltas:
            if seen & d or (len(d) == 2 and all(isinstance(x, sp.Integer) for x in d)):
                break
            seen |= d
        else:
            if not (seen & term.coeff.free_symbols):
                return [(term, 1)]
    parent: dict = {}

    def find(x):
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for pair in term.deltas:
        a, b = tuple(pair) if len(pair) == 2 else (next(iter(pair)),) * 2
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[ra] = rb
    classes = defaultdict(list)
    for x in parent:
        classes[find(x)].append(x)
    summed = term.summed()
    mapping, deltas = {}, set()
    for members in classes.values():
        fixed = sorted({m for m in members if isinstance(m, sp.Integer)}, key=_name_key)
        if len(fixed) > 1:
            return []  # δ between two different fixed neurons
        free = sorted((m for m in members if m not in summed), key=_name_key)
        if free:
            rep = free[0]
        else:
            rep = min(members, key=_name_key)
        for m in members:
            if m != rep:
                mapping[m] = rep
        for f in free[1:]:
            if not isinstance(rep, sp.Integer) or not isinstance(f, sp.Integer):
                deltas.add(frozenset((rep, f)))
    sums = tuple(s for s in term.sums if s[0] not in mapping)
    # exclusions: map; a collapsed pair kills the term; a pair with no summed index left
    # becomes a factor (1 − δ)
    new_excl, free_pairs = set(), []
    still_summed = {s[0] for s in sums}
    for pair in term.excl:
        a, b = (mapping.get(x, x) for x in pair)
        if a == b:
            return []
        p = frozenset((a, b))
        if a in still_summed or b in still_summed:
            new_excl.add(p)
        else:
            free_pairs.append(p)
    coeff = term.coeff.xreplace(mapping) if mapping else term.coeff
    base = _Term(coeff, term.randoms, frozenset(deltas), term.factors, sums, frozenset(new_excl))
    out = [(base, 1)]
    for p in sorted(free_pairs, key=lambda p: sorted(map(_name_key, p))):
        nxt = []
        for t, sign in out:
            nxt.append((t, sign))
            with_delta = _Term(t.coeff, t.randoms, t.deltas | {p}, t.factors, t.sums, t.excl)
            nxt.extend((u, -sign * s2) for u, s2 in _contract_term(with_delta))
        out = nxt
    return out


def _trivially_contracted(acc: dict) -> bool:
    """True when no term has sums, exclusions, δ chains or δ's touching its coefficient."""
    for term, _ in acc.values():
        if term.sums or term.excl:
            return False
        if term.deltas:
            ids = [x for d in term.deltas for x in d]
            if len(set(ids)) != len(ids) or any(len(d) != 2 for d in term.deltas):
                return False
            if term.coeff != 1 and term.coeff.free_symbols & set(ids):
                return False
    return True


def _contract_pass(acc: dict) -> dict:
    if _trivially_contracted(acc):
        return acc
    out: dict = {}
    for term, mult in acc.values():
        for t, sign in _contract_term(term):
            _add(out, t, sign * mult)
    return _prune(out)


# ---------------------------------------------------------------------------------------------
# 4. counting sums
# ---------------------------------------------------------------------------------------------

def _count_term(term: _Term) -> tuple[_Term, sp.Expr]:
    if not term.sums:
        return term, sp.S.One
    used = set(term.coeff.free_symbols)
    for d in term.deltas:
        used |= d
    factor = sp.S.One
    sums, excl = list(term.sums), set(term.excl)
    changed = True
    while changed:
        changed = False
        for s in list(sums):
            idx, rng = s
            if idx in used:
                continue
            partners = {x for p in excl if idx in p for x in p if x != idx}
            clique = all(frozenset((a, b)) in excl for a in partners for b in partners if a != b)
            if not clique:
                continue
            factor *= rng - len(partners)
            sums.remove(s)
            excl = {p for p in excl if idx not in p}
            changed = True
    return _Term(term.coeff, term.randoms, term.deltas, term.factors, tuple(sums),
                 frozenset(excl)), factor


def _count_pass(acc: dict) -> dict:
    if not any(t.sums for t, _ in acc.values()):
        return acc
    out: dict = {}
    for term, mult in acc.values():
        t, f = _count_term(term)
        if f != 1:
            t = _Term(t.coeff * f, t.randoms, t.deltas, t.factors, t.sums, t.excl)
        _add(out, t, mult)
    return _prune(out)


# ---------------------------------------------------------------------------------------------
# 5. canonical names and conversion to SymPy
# ---------------------------------------------------------------------------------------------

def _term_body(term: _Term, mult) -> sp.Expr:
    parts = [as_expr(mult), term.coeff]
    parts += [sp.KroneckerDelta(*sorted(d, key=_name_key)) for d in term.deltas]
    parts += [f ** p for f, p in term.factors]
    if term.randoms:
        parts.append(E(sp.Mul(*term.randoms)))
    return sp.Mul(*parts)


def _dummy_pool(taken: set[str]) -> list[str]:
    pool = [n for n in DUMMY_NAMES if n not in taken]
    k = 1
    while len(pool) < 32:
        if f"j{k}" not in taken:
            pool.append(f"j{k}")
        k += 1
    return pool


def _term_to_sympy(term: _Term, mult, pool: list[str], search: bool) -> sp.Expr:
    body = _term_body(term, mult)
    if not term.sums:
        return body
    dummies = [s[0] for s in term.sums]
    ranges = dict(term.sums)

    def build(order):
        mapping = {d: NeuronIndex(pool[k]) for k, d in enumerate(order)}
        b = body.xreplace(mapping)
        inside, outside = [], []
        targets = set(mapping.values())
        for f in sp.Mul.make_args(b):
            (inside if f.free_symbols & targets else outside).append(f)
        lims = sorted(((mapping[d], ranges[d]) for d in order), key=lambda s: s[0].name)
        ex = [tuple(mapping.get(x, x) for x in p) for p in term.excl]
        return sp.Mul(*outside) * NeuronSum(sp.Mul(*inside), *lims, exclude=ex)

    if search and len(dummies) <= MAX_PERMUTATION_SEARCH:
        cands = [build(order) for order in permutations(dummies)]
        return min(cands, key=default_sort_key)
    return build(dummies)


def _to_sympy(acc: dict, search: bool = True, taken: set[str] | None = None) -> sp.Expr:
    fast = _fast_add(acc)
    if fast is not None:
        return fast
    taken = set(taken or ())
    for term, _ in acc.values():
        for x in term.coeff.free_symbols:
            if isinstance(x, NeuronIndex) and x not in term.summed():
                taken.add(x.name)
        for d in term.deltas:
            taken |= {x.name for x in d if isinstance(x, NeuronIndex) and x not in term.summed()}
        for r in term.randoms:
            taken |= {x.name for x in r.indices if isinstance(x, NeuronIndex) and x not in term.summed()}
    pool = _dummy_pool(taken)
    return sp.Add(*(_term_to_sympy(t, m, pool, search) for t, m in acc.values()))


#: below this many terms the plain SymPy constructors are fast enough
_FAST_ADD_MIN_TERMS = 64


def _fast_add(acc: dict):
    r"""Build ``Add(*terms)`` for many plain δ·tensor products without SymPy's O(N log N)
    calls to ``Basic.compare``.

    Applies when every term is ``mult · Π δ · Π tensor^p`` (coefficient 1, no sums, no random
    variables).  The few distinct factors are ranked once with ``Basic.compare``; each term's
    ``Mul`` args and the ``Add`` args are then sorted by those ranks, which is the order
    ``Basic.compare`` gives (class, then length, then args lexicographically).  Returns None
    (use the plain constructors) when the preconditions fail; the tests check that both
    routes give identical expressions.
    """
    if len(acc) < _FAST_ADD_MIN_TERMS:
        return None
    atoms, rows, made = {}, [], {}

    def delta(d):
        if d not in made:
            made[d] = sp.KroneckerDelta(*sorted(d, key=_name_key))
        return made[d]

    def power(fp):
        if fp not in made:
            made[fp] = fp[0] if fp[1] == 1 else sp.Pow(*fp)
        return made[fp]

    for term, mult in acc.values():
        if term.coeff != 1 or term.sums or term.randoms or term.excl:
            return None
        mult = sp.Integer(mult) if isinstance(mult, int) else as_expr(mult)
        if not mult.is_Number:
            return None
        parts = [delta(d) for d in term.deltas]
        parts += [power(fp) for fp in term.factors]
        if len(parts) < 1 or (len(parts) == 1 and mult == 1):
            return None
        rows.append((mult, parts))
    for x in made.values():
        if not isinstance(x, (sp.KroneckerDelta, sp.Indexed, sp.Symbol)) and not (
                isinstance(x, sp.Pow) and isinstance(x.base, (sp.Indexed, sp.Symbol))):
            return None
        atoms[x] = None
    return _canonical_add(rows, list(atoms))


def _canonical_add(rows: list, atoms: list):
    """``Add`` of ``mult · Mul(*parts)`` rows in SymPy's canonical order, with ``Basic.compare``
    called only to rank the distinct ``atoms`` (every part is one of them)."""
    from functools import cmp_to_key

    ordered = sorted(atoms, key=cmp_to_key(lambda a, b: a.compare(b)))
    rank = {a: r for r, a in enumerate(ordered)}
    if len(rank) != len(ordered):
        return None
    muls, seen = [], set()
    for mult, parts in rows:
        parts.sort(key=rank.__getitem__)
        key = tuple(rank[x] for x in parts)
        if key in seen:
            return None  # two terms with the same non-numeric part: let Add combine them
        seen.add(key)
        args = tuple(parts) if mult == 1 else (mult,) + tuple(parts)
        muls.append((key, mult, sp.Mul._from_args(args, is_commutative=True)))
    # Basic.compare between Muls: same class; then number of args; then args in order.
    # A numeric coefficient is args[0] and Numbers sort before every other class.
    num_ranked = sorted({m for _, m, _ in muls if m != 1}, key=cmp_to_key(lambda a, b: a.compare(b)))
    nrank = {m: r for r, m in enumerate(num_ranked)}

    def sort_key(row):
        key, mult, _ = row
        body = tuple((1, r) for r in key)
        if mult != 1:
            return (len(key) + 1, ((0, nrank[mult]),) + body)
        return (len(key), body)

    muls.sort(key=sort_key)
    return sp.Add._from_args(tuple(m for _, _, m in muls), is_commutative=True)


def _distinct_fields_moment(expr):
    """E[x_1 … x_2k] for 2k *distinct* variables of one Gaussian family with nothing else in
    the product: every perfect matching is its own term, so the result is assembled directly
    (no per-term bookkeeping).  Returns None when ``expr`` is not of that form."""
    factors = sp.Mul.make_args(expr)
    if len(factors) < 2 * _FAST_DISTINCT_MIN_PAIRS or not all(isinstance(f, RandomVar) for f in factors):
        return None
    fam = factors[0].family
    if not fam.is_gaussian or any(f.family != fam for f in factors) or len(set(factors)) != len(factors):
        return None
    if len(factors) % 2:
        return sp.S.Zero
    if fam.scale != 1:
        return None
    fields = sorted(factors, key=default_sort_key)
    m = len(fields)
    cov = [[None] * m for _ in range(m)]
    atoms = {}
    for a in range(m):
        for b in range(a + 1, m):
            c = fam.covariance(fields[a].indices, fields[b].indices)
            if c == 0 or c.is_Add:
                return None
            parts = [x for x in sp.Mul.make_args(c) if x != 1]
            if any(x.is_Number for x in parts):
                return None
            cov[a][b] = parts
            for x in parts:
                if x in atoms:
                    return None  # a factor shared by two pairs could form a power
                atoms[x] = None
    if any(not cov[a][b] for a in range(m) for b in range(a + 1, m)):
        rows = []
        for pm in perfect_matchings(m):
            parts = []
            for a, b in pm:
                parts += cov[a][b]
            rows.append((1, parts))
        return _canonical_add(rows, list(atoms))
    # what _canonical_add does, on integers: rank the atoms once (Basic.compare), give each
    # pair its sorted ranks, and build every matching's rank tuple directly (one recursion,
    # no generator chain, no SymPy hashing); every atom belongs to one pair, so the tuples
    # are distinct, and sorting them by (length, ranks) is SymPy's order of the Muls
    from functools import cmp_to_key

    ordered = sorted(atoms, key=cmp_to_key(lambda x, y: x.compare(y)))
    rank = {x: r for r, x in enumerate(ordered)}
    pair_ranks = [[tuple(sorted(rank[x] for x in cov[a][b])) if b > a else None
                   for b in range(m)] for a in range(m)]
    keys: list = []

    def rec(rest: tuple, acc: tuple) -> None:
        if not rest:
            keys.append(sorted(acc))
            return
        row = pair_ranks[rest[0]]
        for pos in range(1, len(rest)):
            rec(rest[1:pos] + rest[pos + 1:], acc + row[rest[pos]])

    rec(tuple(range(m)), ())
    keys.sort(key=lambda k: (len(k), k))
    mul = sp.Mul._from_args
    return sp.Add._from_args(tuple(mul(tuple(ordered[r] for r in k), is_commutative=True)
                                   for k in keys), is_commutative=True)


#: the direct route for distinct fields is used from this many pairs on
_FAST_DISTINCT_MIN_PAIRS = 4


def _free_names(expr) -> set[str]:
    return {s.name for s in expr.free_symbols if isinstance(s, NeuronIndex)}


# ---------------------------------------------------------------------------------------------
# public entry points
# ---------------------------------------------------------------------------------------------

def _integrator(over):
    if over is None:
        return lambda fam: True
    fams = set(over)
    for f in fams:
        if not isinstance(f, Family):
            raise DeriveError(f"`over` lists random families (derive.gaussian_field, bias, "
                              f"weight); got {f!r}")
    return lambda fam: fam in fams


def _finish(acc: dict, trace: Trace | None, taken: set[str], before_label,
            n=sp.S.One) -> dict[int, sp.Expr]:
    """Passes 3–5 with step recording; returns {order: expression} (order = power of the
    nearly-Gaussian weight, 0 only for Gaussian families)."""
    state = before_label
    acc2 = _contract_pass(acc)
    if trace is not None and acc2.keys() != acc.keys():
        after = _to_sympy(acc2, search=False, taken=taken)
        trace.record("delta.contract", state, after)
        state = after
    acc3 = _count_pass(acc2)
    if trace is not None and acc3.keys() != acc2.keys():
        after = _to_sympy(acc3, search=False, taken=taken)
        trace.record("sum.count", state, after)
        state = after
    groups: dict[int, dict] = defaultdict(dict)
    for key, (term, mult) in acc3.items():
        fac = dict(term.factors)
        k = fac.pop(ORDER_WEIGHT, 0)
        t = _Term(term.coeff, term.randoms, term.deltas, frozenset(fac.items()), term.sums, term.excl)
        _add(groups[k], t, mult)
    result = {k: _to_sympy(groups[k], search=True, taken=taken) for k in sorted(groups)}
    if trace is not None:
        merged = _weighted_sum(result, n)
        if merged != state:
            trace.record("canonical.merge", state, merged)
    return result


def _weighted_sum(parts: dict[int, sp.Expr], n) -> sp.Expr:
    return sp.Add(*(expr / n ** k for k, expr in parts.items()))


def _truncate_pass(acc: dict, order: int) -> tuple[dict, int]:
    """Drop monomials with more than ``order`` nearly-Gaussian insertions (docs/conventions.md §6 step 5)."""
    out, dropped = {}, 0
    for key, (term, mult) in acc.items():
        if dict(term.factors).get(ORDER_WEIGHT, 0) > order:
            dropped += 1
            continue
        out[key] = (term, mult)
    return out, dropped


def check_order(order, highest: int = 2) -> int:
    """Validate an order of the 1/n expansion (0 … ``highest``: the expectation steps, the
    cumulant and the operator forms, and the layer step go to 2)."""
    whole = ", ".join(str(k) for k in range(highest)) + f" or {highest}"
    if isinstance(order, bool) or not isinstance(order, (int, sp.Integer)) or int(order) != order:
        raise OrderError(f"the order of the 1/n expansion is a whole number ({whole}), got {order!r:.40}")
    order = int(order)
    if order < 0:
        raise OrderError(f"the order of the 1/n expansion cannot be negative, got {order}")
    if order > highest:
        raise OrderError(f"order {order} is not implemented: use order {whole}")
    return order


def expectation_parts(expr, over=None, trace: Trace | None = None, order=None):
    """E[expr] split by order: ``({k: coefficient of n^-k}, widths)`` where ``widths`` is
    the set of expansion widths of the nearly-Gaussian families involved."""
    expr = as_expr(expr)
    integrate = _integrator(over)
    families = {r.family for r in expr.atoms(RandomVar) if integrate(r.family)}
    widths = {f.n for f in families if not f.is_gaussian}
    if widths:
        if order is None:
            raise OrderError("the expression holds nearly-Gaussian variables "
                             f"({', '.join(sorted(f.name for f in families if not f.is_gaussian))}); "
                             "say to which order in 1/n with order=0, 1 or 2")
        if len(widths) > 1:
            raise DeriveError(f"nearly-Gaussian families with different widths {sorted(map(str, widths))} "
                              "in one expectation are not supported")
        order = check_order(order)
        lacking = sorted(f.name for f in families if not f.is_gaussian and not f.second_order)
        if order >= 2 and lacking:
            raise DeriveError(
                f"order 2 needs the O(1/n²) data of family {', '.join(lacking)}: declare them "
                "with nearly_gaussian_field(..., G2='G2', V1='V1', U='U') (a label left out is "
                "zero)")
    else:
        order = 0 if order is None else check_order(order)
    if trace is None and over is None and not widths:
        direct = _distinct_fields_moment(expr)
        if direct is not None:
            return {0: direct}, widths
    taken = _free_names(expr)
    acc = _expand(expr, integrate)
    state = E(expr, over) if over is not None else E(expr)
    if trace is not None:
        expanded = _to_sympy(acc, search=False, taken=taken)
        if expanded != state:
            trace.record("expectation.linearity", state, expanded)
            state = expanded
    acc_w, npairs = _wick_pass(acc, order, orbits=trace is None and _ORBITS)
    if trace is not None:
        rule = "nearly_gaussian.cumulants" if widths else "wick.isserlis"
        after = _to_sympy(acc_w, search=False, taken=taken)
        if widths:
            after = after.subs(ORDER_WEIGHT, 1 / next(iter(widths)))
        trace.record(rule, state, after,
                     note=f"{npairs} {'partitions' if widths else 'typed pairings'}, "
                          f"{len(acc_w)} distinct terms")
        state = after
    if widths:
        acc_t, dropped = _truncate_pass(acc_w, order)
        if trace is not None and dropped:
            after = _to_sympy(acc_t, search=False, taken=taken).subs(ORDER_WEIGHT, 1 / next(iter(widths)))
            trace.record("truncate", state, after, note=f"kept orders ≤ {order}, dropped {dropped} terms")
            state = after
        acc_w = acc_t
    return _finish(acc_w, trace, taken, state, next(iter(widths)) if widths else sp.S.One), widths


@boundary
def wick(expr, over: Iterable[Family] | None = None, trace: Trace | None = None,
         order: int | None = None) -> sp.Expr:
    """E[expr] for a polynomial in zero-mean (nearly-)Gaussian variables.

    Gaussian families are paired by Isserlis–Wick; nearly-Gaussian families
    (:func:`derive.nearly_gaussian_field`) are expanded in cumulants to ``order`` (0, 1 or 2)
    in 1/n.  ``over`` lists the families integrated over (default: every family in
    ``expr``); the variables of other families are held fixed (a conditional expectation).
    Neuron sums are contracted and counted, dummy indices renamed canonically and like terms
    merged.  For the result split by order use :func:`derive.nearly_gaussian_expectation`.

    Parameters
    ----------
    expr : sympy.Expr
        A polynomial in variables of families (``z[i, alpha]``, ``W[i, j]`` …), possibly inside
        :class:`NeuronSum` terms.
    over : iterable of Family, optional
        The families integrated over (default: all of them).
    trace : Trace, optional
        Where to record the rules that fired.
    order : int, optional
        The order in 1/n for nearly-Gaussian families (0, 1 or 2; default 1; 2 needs their
        O(1/n²) data).

    Returns
    -------
    sympy.Expr
        The expectation.

    Raises
    ------
    DeriveError
        For a string instead of a SymPy expression (parse it with :func:`derive.parse`), an
        order other than 0, 1 or 2, or inconsistent neuron / sample indices.

    Examples
    --------
    >>> from derive import gaussian_field, neuron_indices, sample_indices
    >>> z = gaussian_field('z', 'K')
    >>> i1, i2, i3, i4 = neuron_indices('i1:5'); a1, a2, a3, a4 = sample_indices('alpha1:5')
    >>> r = wick(z[i1, a1] * z[i2, a2] * z[i3, a3] * z[i4, a4])
    >>> len(r.args)
    3
    >>> wick(z[i1, a1] ** 4)
    3*K[alpha1, alpha1]**2
    """
    parts, widths = expectation_parts(expr, over, trace, order)
    n = next(iter(widths)) if widths else sp.S.One
    return _weighted_sum(parts, n)


@boundary
def simplify_sums(expr, trace: Trace | None = None) -> sp.Expr:
    """Contract δ's against neuron sums, count sums, rename dummies canonically (no expectation).

    Parameters
    ----------
    expr : sympy.Expr
        An expression that may hold :class:`NeuronSum` and ``KroneckerDelta`` factors.
    trace : Trace, optional
        Where to record the rules that fired.

    Returns
    -------
    sympy.Expr
        The simplified expression.

    Raises
    ------
    DeriveError
        For a string instead of a SymPy expression, or inconsistent index structure.

    Examples
    --------
    >>> from derive import NeuronSum, neuron_indices
    >>> import sympy as sp
    >>> i, j = neuron_indices('i j'); n = sp.Symbol('n')
    >>> simplify_sums(NeuronSum(sp.KroneckerDelta(j, j), (j, n)))
    n
    """
    expr = as_expr(expr)
    acc = _expand(expr, lambda fam: False)
    return _finish(acc, trace, _free_names(expr), expr).get(0, sp.S.Zero)


@boundary
def split_sum(expr, trace: Trace | None = None) -> sp.Expr:
    """Split sums over several neuron indices of one range into coinciding / distinct parts.

    Σ_{j,k} f(j,k) = Σ_j f(j,j) + Σ_{j≠k} f(j,k) (docs/conventions.md §6 step 3); with three indices, the
    five set partitions.  Pairs already required to differ are never merged.

    Parameters
    ----------
    expr : sympy.Expr
        An expression that may hold :class:`NeuronSum` terms.
    trace : Trace, optional
        Where to record the rules that fired.

    Returns
    -------
    sympy.Expr
        The same value with every multiple sum split into coinciding and distinct parts.

    Raises
    ------
    DeriveError
        For a string instead of a SymPy expression, or inconsistent index structure.

    Examples
    --------
    >>> from derive import NeuronSum, neuron_indices
    >>> import sympy as sp
    >>> j, k = neuron_indices('j k'); n = sp.Symbol('n'); f = sp.Function('f')
    >>> split_sum(NeuronSum(f(j, k), (j, n), (k, n)))
    NeuronSum(f(j, j), (j, n)) + NeuronSum(f(j, k), (j, n), (k, n), exclude=[(j, k)])
    """
    from sympy.utilities.iterables import multiset_partitions

    expr = as_expr(expr)
    acc = _expand(expr, lambda fam: False)
    out: dict = {}
    fired = False
    for term, mult in acc.values():
        groups = defaultdict(list)
        for idx, rng in term.sums:
            groups[rng].append(idx)
        options = []
        for rng in sorted(groups, key=default_sort_key):
            idxs = groups[rng]
            parts = list(multiset_partitions(idxs)) if len(idxs) > 1 else [[idxs]]
            options.append(parts)
        for choice in product(*options):
            mapping, reps_by_group = {}, []
            for partition in choice:
                reps = []
                for block in partition:
                    rep = block[0]
                    reps.append(rep)
                    for x in block[1:]:
                        mapping[x] = rep
                reps_by_group.append(reps)
            excl = set()
            ok = True
            for p in term.excl:
                a, b = (mapping.get(x, x) for x in p)
                if a == b:
                    ok = False
                    break
                excl.add(frozenset((a, b)))
            if not ok:
                continue
            for reps in reps_by_group:
                excl |= {frozenset((a, b)) for a in reps for b in reps if a != b}
            if mapping or excl != set(term.excl):
                fired = True
            sums = tuple(s for s in term.sums if s[0] not in mapping)
            _add(out, _Term(term.coeff.xreplace(mapping), term.randoms,
                            frozenset(frozenset(mapping.get(x, x) for x in d) for d in term.deltas),
                            term.factors, sums, frozenset(excl)), mult)
    out = _prune(out)
    taken = _free_names(expr)
    if trace is not None and fired:
        after = _to_sympy(out, search=False, taken=taken)
        trace.record("sum.split", expr, after)
        return _finish(out, trace, taken, after).get(0, sp.S.Zero)
    return _finish(out, trace, taken, expr).get(0, sp.S.Zero)


class E(sp.Expr):
    """Inert expectation E[expr]; ``E(expr).doit()`` evaluates it with :func:`wick`.

    ``E(expr, over=[W, b])`` integrates only the listed families (the others are held fixed).
    ``doit(trace=t)`` records the steps in the :class:`~derive.algebra.trace.Trace` ``t``.

    Parameters
    ----------
    expr : sympy.Expr
        The integrand, a polynomial in variables of (nearly-)Gaussian families.
    over : sequence of Family, optional
        The families integrated over (default: every family in ``expr``).

    Returns
    -------
    E
        The inert expectation; ``.doit()`` gives the value as :func:`wick` does.

    Raises
    ------
    DeriveError
        For a string instead of a SymPy expression or an ``over`` that is not a list of
        families; ``.doit()`` raises what :func:`wick` raises.

    Examples
    --------
    >>> from derive import bias, neuron_indices
    >>> b = bias(); (i,) = neuron_indices('i')
    >>> E(b[i] ** 2).doit()
    C_b
    """

    is_commutative = True

    def __new__(cls, expr, over=None):
        expr = as_expr(expr)
        if over is None:
            return super().__new__(cls, expr)
        over = tuple(over)
        _integrator(over)
        return super().__new__(cls, expr, sp.Tuple(*sorted(over, key=lambda f: f.name)))

    @property
    def over(self):
        return tuple(self.args[1]) if len(self.args) > 1 else None

    def doit(self, trace: Trace | None = None, **hints):
        return wick(self.args[0], over=self.over, trace=trace)

    @property
    def free_symbols(self):
        return self.args[0].free_symbols

    def _sympystr(self, printer) -> str:
        return f"E[{printer._print(self.args[0])}]"

    def _latex(self, printer) -> str:
        sub = ""
        if self.over:
            sub = "_{" + ",".join(f.name for f in self.over) + "}"
        return rf"\mathbb{{E}}{sub}\left[{printer._print(self.args[0])}\right]"
