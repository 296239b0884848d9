"""The symbolic Wick engine (derive.algebra.contractions) with neuron and sample indices."""
import importlib
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import sympy as sp
from hypothesis import given, settings, strategies as st

import derive
from derive import (E, NeuronSum, bias, gaussian_field, neuron_indices, sample_indices,
                    simplify_sums, split_sum, tensor, weight, wick)
from derive.base.errors import DeriveError, IndexStructureError
from derive.algebra.pairings import double_factorial
from derive.algebra.trace import Trace

C = importlib.import_module("derive.algebra.contractions")

z = gaussian_field("z", "K")
K = tensor("K")
n, n0 = sp.symbols("n n0", positive=True)
i1, i2, i3, i4, i, j, k = neuron_indices("i1 i2 i3 i4 i j k")
a1, a2, a3, a4 = sample_indices("alpha1:5")
d = sp.KroneckerDelta


def test_two_point():
    assert wick(z[i1, a1] * z[i2, a2]) == d(i1, i2) * K[a1, a2]


def test_four_point_is_exactly_three_terms():
    r = wick(z[i1, a1] * z[i2, a2] * z[i3, a3] * z[i4, a4])
    ref = (d(i1, i2) * d(i3, i4) * K[a1, a2] * K[a3, a4]
           + d(i1, i3) * d(i2, i4) * K[a1, a3] * K[a2, a4]
           + d(i1, i4) * d(i2, i3) * K[a1, a4] * K[a2, a3])
    assert isinstance(r, sp.Add) and len(r.args) == 3
    assert r == ref


def test_single_variable_moments():
    # E[z^{2k}] = (2k-1)!! K^k, odd moments vanish
    for kk in range(1, 6):
        assert wick(z[i, a1] ** (2 * kk)) == double_factorial(2 * kk - 1) * K[a1, a1] ** kk
        assert wick(z[i, a1] ** (2 * kk - 1)) == 0
    assert wick(z[i, a1] ** 4) == 3 * K[a1, a1] ** 2
    assert wick(z[i, a1] ** 6) == 15 * K[a1, a1] ** 3


def test_same_neuron_two_samples():
    # E[z_{i;a}^2 z_{i;b}^2] = K_aa K_bb + 2 K_ab^2
    assert wick(z[i, a1] ** 2 * z[i, a2] ** 2) == K[a1, a1] * K[a2, a2] + 2 * K[a1, a2] ** 2
    # different neurons: E[z_{i;a}^2 z_{j;b}^2] = K_aa K_bb + 2 δ_ij K_ab^2
    assert wick(z[i, a1] ** 2 * z[j, a2] ** 2) == K[a1, a1] * K[a2, a2] + 2 * d(i, j) * K[a1, a2] ** 2


def test_delta_sum_counts_width():
    assert simplify_sums(NeuronSum(d(j, j), (j, n))) == n
    assert simplify_sums(NeuronSum(d(i, j) * z[j, a1], (j, n))) == z[i, a1]
    assert simplify_sums(NeuronSum(1, (j, n), (k, n), distinct=True)) == n * (n - 1)
    assert simplify_sums(NeuronSum(d(j, k), (j, n), (k, n), distinct=True)) == 0
    assert wick(NeuronSum(z[j, a1] ** 2, (j, n))) == n * K[a1, a1]


def test_sum_of_squares_variance():
    # E[(Σ_j z_j;a z_j;b)^2] = n^2 K_ab^2 + n (K_aa K_bb + K_ab^2)
    x = NeuronSum(z[j, a1] * z[j, a2], (j, n))
    got = wick(x ** 2)
    ref = n ** 2 * K[a1, a2] ** 2 + n * (K[a1, a1] * K[a2, a2] + K[a1, a2] ** 2)
    assert sp.expand(got - ref) == 0


def test_split_sum():
    f = sp.Function("f")
    r = split_sum(NeuronSum(f(j, k), (j, n), (k, n)))
    assert r == NeuronSum(f(j, j), (j, n)) + NeuronSum(f(j, k), (j, n), (k, n), distinct=True)
    # three indices: Bell(3) = 5 pieces
    g = sp.Function("g")
    r3 = split_sum(NeuronSum(g(i1, i2, i3), (i1, n), (i2, n), (i3, n)))
    assert len(sp.Add.make_args(r3)) == 5
    # splitting then counting the constant: n + n(n-1) = n^2
    assert sp.expand(simplify_sums(split_sum(NeuronSum(1, (j, n), (k, n))))) == n ** 2


def test_stochastic_metric_from_parameters():
    """Conditional on layer ℓ, Wick over W, b gives δ(C_b + C_W/n Σ_j σσ) (docs/conventions.md §6 step 1)."""
    W, b = weight("W", "C_W", "n0"), bias("b", "C_b")
    s = gaussian_field("s", "S")  # stands for σ of the previous layer (held fixed)
    Cb, Cw = sp.symbols("C_b C_W")

    def z1(ii, a):
        return b[ii] + NeuronSum(W[ii, j] * s[j, a], (j, n0))

    t = Trace()
    r = wick(z1(i1, a1) * z1(i2, a2), over=[W, b], trace=t)
    ref = d(i1, i2) * (Cb + Cw / n0 * NeuronSum(s[j, a1] * s[j, a2], (j, n0)))
    assert sp.expand(r - ref) == 0
    assert t.rules()[:2] == ["expectation.linearity", "wick.isserlis"]
    assert "delta.contract" in t.rules()
    for step in t:
        assert step.reference


def test_weights_pair_only_with_weights():
    W, b = weight("W", "C_W", "n0"), bias("b", "C_b")
    assert wick(W[i, j] * b[i]) == 0
    Cw = sp.Symbol("C_W")
    assert wick(W[i1, j] * W[i2, k]) == d(i1, i2) * d(j, k) * Cw / n0


def _to_numeric(expr, Kmat, labels):
    """Substitute concrete neuron values and a numeric K."""
    e = expr.xreplace(labels)
    e = e.replace(lambda x: isinstance(x, sp.Indexed) and x.base == K.base,
                  lambda x: sp.Float(Kmat[int(x.indices[0]) - 1, int(x.indices[1]) - 1], 30))
    return float(e)


def _moment_by_characteristic_function(cov):
    """E[x_1…x_m] = ∂^m/∂t_1…∂t_m exp(½ tᵀ C t) at t = 0 — independent of any pairing code."""
    m = cov.shape[0]
    t = sp.symbols(f"t0:{m}")
    quad = sum(sp.Rational(1, 2) * sp.nsimplify(cov[a, b]) * t[a] * t[b] for a in range(m) for b in range(m))
    f = sp.exp(quad)
    for a in range(m):
        f = sp.diff(f, t[a])
    return float(f.subs({x: 0 for x in t}))


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 3).flatmap(lambda kk: st.tuples(
    st.lists(st.integers(0, 2), min_size=2 * kk, max_size=2 * kk),
    st.lists(st.integers(0, 2), min_size=2 * kk, max_size=2 * kk))))
def test_random_products_numeric(labels):
    neu, sam = labels
    I = neuron_indices("p0:3")
    A = sample_indices("s1:4")
    expr = sp.Mul(*[z[I[u], A[v]] for u, v in zip(neu, sam)])
    r = wick(expr)
    Kmat = np.array([[1.0, 0.3, -0.2], [0.3, 0.8, 0.1], [-0.2, 0.1, 1.5]])
    for values in ([1, 1, 1], [1, 2, 1], [1, 2, 3]):
        sub = {I[u]: sp.Integer(values[u]) for u in range(3)}
        sub.update({A[v]: sp.Integer(v + 1) for v in range(3)})
        got = _to_numeric(r, Kmat, sub)
        m = len(neu)
        cov = np.array([[Kmat[sam[x], sam[y]] * (values[neu[x]] == values[neu[y]]) for y in range(m)]
                        for x in range(m)])
        assert got == pytest.approx(_moment_by_characteristic_function(cov), rel=1e-10, abs=1e-12)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.permutations(range(8)))
def test_pairing_count_and_relabelling_symmetry(kk, perm):
    m = 2 * kk
    I = neuron_indices(f"q0:{m}")
    A = sample_indices(f"b0:{m}")
    expr = sp.Mul(*[z[I[r], A[r]] for r in range(m)])
    r = wick(expr)
    ones = r.replace(lambda x: isinstance(x, (sp.KroneckerDelta, sp.Indexed)), lambda x: sp.S.One)
    assert ones == double_factorial(m - 1)
    p = [x for x in perm if x < m]
    relabel = {I[r]: I[p[r]] for r in range(m)}
    relabel.update({A[r]: A[p[r]] for r in range(m)})
    assert sp.expand(wick(expr.xreplace(relabel)) - r.xreplace(relabel)) == 0


def test_fast_routes_equal_general_route():
    I = neuron_indices("i0:10")
    A = sample_indices("a0:10")
    for m, pat in [(8, 0), (8, 1), (10, 0), (10, 2)]:
        expr = sp.Mul(*[z[I[r] if pat != 1 else I[r % 3], A[r] if pat != 2 else A[r % 2]]
                        for r in range(m)])
        fast = wick(expr)
        # the general route (tracing disables the direct one; a huge threshold disables the
        # rank-ordered assembly)
        old = C._FAST_ADD_MIN_TERMS
        try:
            C._FAST_ADD_MIN_TERMS = 10 ** 9
            slow = wick(expr, trace=Trace())
        finally:
            C._FAST_ADD_MIN_TERMS = old
        assert fast.args == slow.args and fast == slow


def test_inert_expectation_and_trace():
    e = E(z[i, a1] ** 2)
    assert isinstance(e, E) and e.doit() == K[a1, a1]
    assert sp.latex(e).startswith(r"\mathbb{E}")
    t = Trace()
    E(z[i1, a1] * z[i2, a2]).doit(trace=t)
    assert t.rules() == ["wick.isserlis"]


def test_bad_input():
    with pytest.raises(IndexStructureError, match="neuron slot"):
        z[a1, a2]
    with pytest.raises(IndexStructureError, match="sample slot"):
        z[i, j]
    with pytest.raises(IndexStructureError, match="takes 2 indices"):
        z[i]
    with pytest.raises(DeriveError, match="polynomial"):
        wick(sp.tanh(z[i, a1]))
    with pytest.raises(DeriveError, match="negative"):
        bias("b", -1)
    with pytest.raises(DeriveError, match="polynomial"):
        wick(1 / z[i, a1])
    with pytest.raises(DeriveError):
        wick(z[i, a1] ** 2, over=["z"])


def test_latex_has_book_layout():
    assert sp.latex(z[i, a1]) == r"z_{i;\alpha_{1}}"
    s = NeuronSum(z[j, a1] * z[k, a2], (j, n), (k, n), distinct=True)
    assert r"\sum_{j \neq k}" in sp.latex(s)


def test_deterministic_across_hash_seeds():
    code = textwrap.dedent("""
        import sympy as sp
        from derive import (NeuronSum, bias, gaussian_field, neuron_indices, sample_indices,
                            split_sum, weight, wick)
        z = gaussian_field('z', 'K'); W = weight('W', 'C_W', 'n0'); b = bias('b', 'C_b')
        s = gaussian_field('s', 'S')
        i1, i2, i3, i4, j = neuron_indices('i1 i2 i3 i4 j'); A = sample_indices('a1:5')
        n0 = sp.Symbol('n0', positive=True)
        f = lambda ii, a: b[ii] + NeuronSum(W[ii, j] * s[j, a], (j, n0))
        r = wick(f(i1, A[0]) * f(i2, A[1]) * f(i3, A[2]) * f(i4, A[3]), over=[W, b])
        print(sp.srepr(split_sum(r)))
        print(sp.latex(wick(NeuronSum(z[j, A[0]] * z[j, A[1]], (j, n0)) ** 3)))
    """)
    outs = set()
    for seed in ("0", "1", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        assert res.returncode == 0, res.stderr
        outs.add(res.stdout)
    assert len(outs) == 1


def test_inert_objects_survive_sympy_rebuilds():
    """subs / xreplace rebuild nodes with func(*args): every inert class must accept that."""
    from derive import GaussianAverage
    s = NeuronSum(z[j, a1] * z[k, a2], (j, n), (k, n), distinct=True)
    assert s.func(*s.args) == s
    assert s.xreplace({a1: a3}) == NeuronSum(z[j, a3] * z[k, a2], (j, n), (k, n), distinct=True)
    assert s.subs(n, 7).limits == ((j, 7), (k, 7))
    ex = NeuronSum(z[j, a1], (j, n), exclude=[(j, i)])
    assert ex.xreplace({i: i1}).exclude == ((i1, j),) or ex.xreplace({i: i1}).exclude == ((j, i1),)
    for obj in (E(z[i, a1] ** 2), E(z[i, a1] ** 2, over=[z]), GaussianAverage(sp.tanh(z[i, a1]), "K"),
                z[i, a1], z.covariance((i, a1), (j, a2))):
        assert obj.func(*obj.args) == obj
        assert obj.xreplace({a1: a3}).has(a3)
    # a derivation result holding sums can be substituted into
    W, b = weight("W", "C_W", "n0"), bias("b", "C_b")
    r = wick((b[i1] + NeuronSum(W[i1, j] * z[j, a1], (j, n0))) ** 2, over=[W, b])
    assert r.subs(sp.Symbol("C_b"), 0).has(NeuronSum)
