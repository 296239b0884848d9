"""Wick pairings up to the symmetry of the product (issue 15, goal 3).

``wick`` pairs a term whose blocks of summed indices are interchangeable — the k factors of
(Σ_j z_{j;α1} z_{j;α2})^k — one representative per class of equivalent pairings
(:func:`derive.algebra.pairings.orbit_pairings`).  The result must be the very expression the
full enumeration gives (``contractions._ORBITS = False``), and the classes must count every
pairing once.
"""
import importlib
import itertools
from collections import Counter
from contextlib import contextmanager

import pytest
import sympy as sp
from hypothesis import given, settings, strategies as st

from derive import (NeuronSum, bias, gaussian_field, neuron_indices, sample_indices, tensor,
                    weight, wick)
from derive.algebra.pairings import double_factorial, orbit_pairings, perfect_matchings
from derive.algebra.trace import Trace
from derive.base.errors import DeriveError

C = importlib.import_module("derive.algebra.contractions")

z = gaussian_field("z", "K")
s = gaussian_field("s", "S")
W = weight("W", "C_W", "n")
b = bias("b", "C_b")
K = tensor("K")
n = sp.Symbol("n", positive=True)
i1, i2, j, k, l = neuron_indices("i1 i2 j k l")
a1, a2, a3 = sample_indices("alpha1:4")


@contextmanager
def _orbits(on: bool, min_fields: int | None = None):
    old = C._ORBITS, C._ORBIT_MIN_FIELDS
    C._ORBITS = on
    if min_fields is not None:
        C._ORBIT_MIN_FIELDS = min_fields
    try:
        yield
    finally:
        C._ORBITS, C._ORBIT_MIN_FIELDS = old


@contextmanager
def _count_orbit_runs():
    """Counts the calls of the orbit enumeration made by wick (so a test knows it ran)."""
    calls = []
    real = C.orbit_pairings

    def spy(*args, **kw):
        calls.append(args)
        return real(*args, **kw)

    C.orbit_pairings = spy
    try:
        yield calls
    finally:
        C.orbit_pairings = real


def _both(expr, min_fields=None, **kw):
    with _orbits(True, min_fields), _count_orbit_runs() as calls:
        fast = wick(expr, **kw)
    with _orbits(False):
        full = wick(expr, **kw)
    return fast, full, len(calls)


# ---------------------------------------------------------------------------------------------
# known results, written by hand
# ---------------------------------------------------------------------------------------------

def test_square_of_sum_of_squares_single_sample():
    # E[(Σ_j z_j z_j)^2] = n²K² + 2nK²  (Σ_j z_j² is K times a χ² with n degrees of freedom)
    fast, full, runs = _both(NeuronSum(z[j, a1] ** 2, (j, n)) ** 2, min_fields=2)
    assert runs == 1
    assert fast == n ** 2 * K[a1, a1] ** 2 + 2 * n * K[a1, a1] ** 2
    assert sp.srepr(fast) == sp.srepr(full)


@pytest.mark.parametrize("p", [3, 4, 5])
def test_chi_square_moments(p):
    # E[(χ²_n)^p] = n (n+2) … (n+2p−2)
    fast, full, runs = _both(NeuronSum(z[j, a1] ** 2, (j, n)) ** p)
    assert runs == 1
    expected = sp.prod([n + 2 * r for r in range(p)]) * K[a1, a1] ** p
    assert sp.expand(fast - expected) == 0
    assert sp.srepr(fast) == sp.srepr(full)


def test_cube_of_neuron_sum_two_samples():
    # FORM, dd_(x1,…,x6) with x_{2r−1} → z_{j_r;α1}, x_{2r} → z_{j_r;α2} (benchmarks/bench_wick.py)
    K11, K12, K22 = K[a1, a1], K[a1, a2], K[a2, a2]
    expected = (n ** 3 * K12 ** 3 + 3 * n ** 2 * K11 * K12 * K22 + 3 * n ** 2 * K12 ** 3
                + 6 * n * K11 * K12 * K22 + 2 * n * K12 ** 3)
    fast, full, runs = _both(NeuronSum(z[j, a1] * z[j, a2], (j, n)) ** 3)
    assert runs == 1
    assert sp.expand(fast - expected) == 0
    assert sp.srepr(fast) == sp.srepr(full)


@pytest.mark.parametrize("k_", [2, 3, 4, 5, 6])
def test_neuron_sum_pattern_equals_full_enumeration(k_):
    fast, full, runs = _both(NeuronSum(z[j, a1] * z[j, a2], (j, n)) ** k_, min_fields=4)
    assert runs == 1
    assert fast.args == full.args and sp.srepr(fast) == sp.srepr(full)


@pytest.mark.slow
def test_fourteen_fields_equal_full_enumeration():
    fast, full, runs = _both(NeuronSum(z[j, a1] * z[j, a2], (j, n)) ** 7)
    assert runs == 1
    assert sp.srepr(fast) == sp.srepr(full)


def test_blocks_of_two_indices():
    # the factors of (Σ_{j,k} W_jk z_j z_k)^2 are interchangeable only as whole blocks (j, k)
    exprs = [NeuronSum(W[j, k] * z[j, a1] * z[k, a2], (j, n), (k, n)) ** 2,
             NeuronSum(W[j, k] ** 2, (j, n), (k, n)) ** 3,
             NeuronSum(z[j, a1] * z[k, a2], (j, n), (k, n), distinct=True) ** 3]
    for e in exprs:
        fast, full, runs = _both(e)
        assert runs == 1, e
        assert sp.srepr(fast) == sp.srepr(full)
    # Σ_{j,k} W_jk² counts n² C_W / n per factor: E[(Σ W²)^3] = E[(C_W χ²_{n²}/n)^3]
    fast, _, _ = _both(exprs[1])
    cw = sp.Symbol("C_W")
    N = n ** 2
    assert sp.expand(fast - (cw / n) ** 3 * N * (N + 2) * (N + 4)) == 0


def test_no_symmetry_no_orbit_run():
    # free indices distinguish the factors: nothing to exchange, the typed route runs
    e = NeuronSum(W[i1, j] * z[j, a1], (j, n)) * NeuronSum(W[i2, k] * z[k, a2], (k, n)) \
        * z[i1, a1] * z[i2, a2] * z[i1, a3] * z[i2, a3]
    fast, full, runs = _both(e, min_fields=2)
    assert runs == 0
    assert sp.srepr(fast) == sp.srepr(full)


def test_trace_keeps_full_enumeration():
    e = NeuronSum(z[j, a1] * z[j, a2], (j, n)) ** 3
    t = Trace()
    with _count_orbit_runs() as calls:
        traced = wick(e, trace=t)
    assert calls == []
    assert traced == wick(e)
    notes = [st_.note for st_ in t.steps if st_.rule == "wick.isserlis"]
    assert notes and notes[0].startswith("15 typed pairings")


def test_bad_input_still_refused():
    with pytest.raises(DeriveError, match="polynomial"):
        wick(NeuronSum(sp.tanh(z[j, a1]) * z[j, a2], (j, n)) ** 3)
    with pytest.raises(DeriveError):
        wick("NeuronSum(z[j, alpha1]**2, (j, n))**3")


# ---------------------------------------------------------------------------------------------
# random products: orbit route against the full enumeration
# ---------------------------------------------------------------------------------------------

_FIXED = [z[i1, a1], z[i1, a2], z[i2, a1], z[i2, a3], s[i1, a1], b[i1], b[i2]]


def _factor(code):
    """One interchangeable sub-product, from a small code (see the strategy below)."""
    kind, p = code
    return [
        lambda: NeuronSum(z[j, a1] * z[j, a2], (j, n)),
        lambda: NeuronSum(z[j, a1] ** 2, (j, n)),
        lambda: NeuronSum(z[j, a1] * z[j, a2] * z[j, a3] * z[j, a3], (j, n)),
        lambda: NeuronSum(z[j, a1] * s[j, a2], (j, n)),
        lambda: NeuronSum(z[j, a1] * z[i1, a2], (j, n)),
        lambda: NeuronSum(W[i1, j] * z[j, a1], (j, n)),
        lambda: NeuronSum(W[j, k] * z[j, a1] * z[k, a2], (j, n), (k, n)),
        lambda: NeuronSum(z[j, a1] * z[k, a2], (j, n), (k, n), distinct=True),
        lambda: NeuronSum(z[j, a1] * z[k, a1] * s[l, a2] * s[l, a3], (j, n), (k, n), (l, n)),
    ][kind]() ** p


def _fields(e) -> int:
    """The most random variables in one monomial of ``e``."""
    return max(len(t.randoms) for t, _ in C._expand(e, lambda fam: True).values())


def _product(codes, fixed, max_fields=10):
    """The product of the coded factors and fixed fields, trimmed (last factor's power
    lowered, then the factor dropped) to at most ``max_fields`` random variables."""
    codes, fixed = [list(c) for c in codes], list(fixed)
    while True:
        e = sp.Mul(*[_factor(c) for c in codes]) * sp.Mul(*[_FIXED[x] for x in fixed])
        if _fields(e) <= max_fields:
            return e
        if fixed:
            fixed.pop()
        elif codes[-1][1] > 1:
            codes[-1][1] -= 1
        else:
            codes.pop()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 8), st.integers(1, 4)), min_size=1, max_size=3),
       st.lists(st.integers(0, len(_FIXED) - 1), max_size=4),
       st.booleans())
def test_random_products_equal_full_enumeration(codes, fixed, with_sum):
    e = _product(codes, fixed)
    if with_sum:  # a sum of two products: the symmetry is found term by term
        e = e + NeuronSum(z[j, a1] * z[j, a2], (j, n)) ** 3
    fast, full, _ = _both(e, min_fields=4)
    assert sp.srepr(fast) == sp.srepr(full)


def test_random_products_exercise_the_orbit_route():
    # the strategy above is no use if the orbit route never runs: a few of its products do
    for codes in ([(0, 3)], [(6, 2)], [(7, 2), (1, 1)], [(3, 2), (5, 2)], [(8, 2)], [(2, 2)]):
        e = sp.Mul(*[_factor(c) for c in codes])
        fast, full, runs = _both(e, min_fields=4)
        assert runs >= 1, codes
        assert sp.srepr(fast) == sp.srepr(full)


# ---------------------------------------------------------------------------------------------
# the integer enumeration: classes partition the matchings, each inside one orbit
# ---------------------------------------------------------------------------------------------

def _structure(template, copies, fixed):
    """Types of ``copies`` copies of ``template`` (fields (label, block positions)) plus fixed
    fields; returns counts, shapes, slots, blocks, block_classes, kinds, instance list."""
    size = 1 + max((p for _, ps in template for p in ps), default=0)
    fields = []
    for q in range(copies):
        for label, ps in template:
            fields.append((label, tuple(q * size + p for p in ps)))
    fields += [(label, ()) for label in fixed]
    counts = Counter(fields)
    types = sorted(counts)
    shapes = [10 * t[0] + len(t[1]) for t in types]
    slots = [t[1] for t in types]
    blocks = [tuple(q * size + p for p in range(size)) for q in range(copies)]
    kinds = [t[0] % 2 for t in types]
    inst = [a for a, t in enumerate(types) for _ in range(counts[t])]
    return [counts[t] for t in types], shapes, slots, blocks, [0] * copies, kinds, inst


def _canonical(pc, shapes, slots, blocks):
    """Smallest image of a pair-count matrix under all permutations of the blocks."""
    index = {(shapes[a], tuple(slots[a])): a for a in range(len(slots))}
    best = None
    for perm in itertools.permutations(range(len(blocks))):
        ren = {d: blocks[perm[q]][p] for q, blk in enumerate(blocks) for p, d in enumerate(blk)}
        img = {a: index[(shapes[a], tuple(ren[d] for d in slots[a]))] for a in range(len(slots))}
        key = tuple(sorted((tuple(sorted((img[x], img[y]))), m) for (x, y), m in pc))
        best = key if best is None or key < best else best
    return best


_TEMPLATE = st.lists(st.tuples(st.integers(0, 3), st.lists(st.integers(0, 1), max_size=2)
                               .map(tuple)), min_size=1, max_size=3)


@settings(max_examples=60, deadline=None)
@given(_TEMPLATE, st.integers(1, 4), st.lists(st.integers(0, 3), max_size=3))
def test_orbit_classes_match_brute_force(template, copies, fixed):
    counts, shapes, slots, blocks, bcls, kinds, inst = _structure(template, copies, fixed)
    if len(inst) > 10:
        return
    got = list(orbit_pairings(counts, shapes, slots, blocks, bcls, kinds))
    brute_all = Counter()
    for pm in perfect_matchings(len(inst)):
        if any(kinds[inst[x]] != kinds[inst[y]] for x, y in pm):
            continue
        pc = Counter(tuple(sorted((inst[x], inst[y]))) for x, y in pm)
        brute_all[tuple(sorted(pc.items()))] += 1
    # every matching is counted once: the weights add up to the number of matchings
    assert sum(m for _, m in got) == sum(brute_all.values())
    per_kind = Counter(kinds[a] for a in inst)
    if not any(c % 2 for c in per_kind.values()):
        assert sum(m for _, m in got) == sp.prod([double_factorial(c - 1) for c in per_kind.values()])
    # … and orbit by orbit: each class lies in one orbit, and the classes of an orbit add up
    # to its size
    want, have = Counter(), Counter()
    for pc, m in brute_all.items():
        want[_canonical(pc, shapes, slots, blocks)] += m
    for pc, m in got:
        assert pc in brute_all
        have[_canonical(pc, shapes, slots, blocks)] += m
    assert have == want


@pytest.mark.parametrize("k_", range(1, 8))
def test_neuron_sum_weights_are_double_factorial(k_):
    got = list(orbit_pairings((1,) * (2 * k_), (0, 1) * k_, [(r // 2,) for r in range(2 * k_)],
                              [(q,) for q in range(k_)], [0] * k_))
    assert sum(m for _, m in got) == double_factorial(2 * k_ - 1)
    assert len(got) == 3 ** (k_ - 1)  # far fewer than (2k−1)!! (729 against 135 135 at k = 7)


def test_orbit_pairings_refuses_a_non_invariant_input():
    # x_0 y_0 x_1: exchanging blocks 0 and 1 does not map the fields to themselves
    with pytest.raises(ValueError, match="not invariant"):
        list(orbit_pairings((1, 1, 1, 1), (0, 1, 0, 2), [(0,), (0,), (1,), ()], [(0,), (1,)], [0, 0]))
    with pytest.raises(ValueError, match="two types"):
        list(orbit_pairings((1, 1), (0, 0), [(0,), (0,)], [(0,)], [0]))


# ---------------------------------------------------------------------------------------------
# distinct fields: the direct assembly (rank tuples) against the general route
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("m", [8, 10])
def test_distinct_fields_direct_route_equals_general_route(m):
    y = gaussian_field("y", "S", neuron=False)
    I = neuron_indices(f"q1:{m + 1}")
    A = sample_indices(f"b1:{m + 1}")
    for e in (sp.Mul(*[z[I[r], A[r]] for r in range(m)]), sp.Mul(*[y[A[r]] for r in range(m)]),
              sp.Mul(*[z[I[m - 1 - r], A[(3 * r) % m]] for r in range(m)])):
        assert C._distinct_fields_moment(e) is not None
        fast = wick(e)
        general = wick(e, trace=Trace())  # tracing disables the direct route
        assert fast.args == general.args and sp.srepr(fast) == sp.srepr(general)
        assert len(fast.args) == double_factorial(m - 1)
