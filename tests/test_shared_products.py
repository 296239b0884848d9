"""Averages of products of one-variable functions computed together (one grid per covariance,
``derive.activations.gaussian.product_expectations``), and the batched evaluator's two passes
that feed it (record what the rank-4 steps need, compute it, then read it).

The references are independent of the code under test: Gaussian averages of products of
exponentials, cosines and sines follow from E[exp(wᵀz)] = exp(½ wᵀKw) for complex w, written
out here; tanh products are compared with ``gaussian_expectation`` product by product (its own
rule, the established tier)."""
from itertools import permutations, product as cartesian

import numpy as np
import pytest
import sympy as sp

import derive
from derive.activations.gaussian import (gaussian_expectation, product_expectations,
                                         product_integrand)
from derive.numeric import evaluate as E

x = sp.Symbol("x")


def _exponentials(g):
    """g(x) as Σ c e^{w x} (complex c, w) for exp(a x), cos(a x), sin(a x)."""
    a = sp.Wild("a")
    for fun, terms in ((sp.exp, lambda a: [(1.0, a)]),
                       (sp.cos, lambda a: [(0.5, 1j * a), (0.5, -1j * a)]),
                       (sp.sin, lambda a: [(-0.5j, 1j * a), (0.5j, -1j * a)])):
        m = g.match(fun(a * x))
        if m is not None and isinstance(g, fun):
            return terms(complex(m[a]))
    raise AssertionError(g)


def _exact(factors, prod, K):
    """E[Π_k g_{p_k}(z_k)] for z ~ N(0, K), g exponentials, cosines, sines."""
    total = 0.0
    for choice in cartesian(*(_exponentials(factors[p]) for p in prod)):
        c = np.prod([t[0] for t in choice])
        w = np.array([t[1] for t in choice])
        total += c * np.exp(0.5 * w @ K @ w)
    return total.real


def _covariances(d, rank, n, seed):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        A = rng.standard_normal((d, rank)) * rng.uniform(0.4, 1.2)
        out.append(A @ A.T + (1e-3 * np.eye(d) if rank == d else 0.0))
    return np.array(out)


FACTORS = [sp.exp(x / 3), sp.cos(x), sp.sin(7 * x / 10), sp.exp(-x / 2), sp.cos(3 * x / 2)]


def _assert_exact(factors, prods, K, tol):
    """product_expectations computes every product to ``tol`` (value and error estimate)."""
    value, error, ok = product_expectations(factors, prods, K, tol=tol)
    assert ok.all()
    for j, p in enumerate(prods):
        exact = np.array([_exact(factors, p, k) for k in K])
        np.testing.assert_allclose(value[:, j], exact, rtol=0, atol=tol)
        assert np.all(error[:, j] <= tol)


@pytest.mark.parametrize("d,rank", [(3, 3), (4, 4), (4, 3)])
def test_products_against_closed_forms(d, rank):
    K = _covariances(d, rank, 6, seed=d + rank)
    rng = np.random.default_rng(1)
    prods = [tuple(int(v) for v in rng.integers(0, len(FACTORS), d)) for _ in range(12)]
    tol = 1e-8 if d == 3 else 1e-7  # what the ladders reach here (4-D default: 1e-6)
    _assert_exact(FACTORS, prods, K, tol)


def _correlated(d, n, seed, spread):
    """Covariances of d nearly equal variables: a common part and small independent ones."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        A = rng.uniform(0.4, 0.9) * np.ones((d, 1))
        B = spread * rng.standard_normal((d, d))
        out.append(A @ A.T + B @ B.T)
    return np.array(out)


@pytest.mark.parametrize("d,spread", [(3, 0.05), (4, 0.05), (4, 0.2)])
def test_slowly_varying_axes_against_closed_forms(d, spread):
    """Nearly equal variables: the later axes of the conditional rule move the variables little
    and take small Gauss–Hermite rules sized on the factors themselves (cos(2x) bends sooner
    than the others and gets more nodes); the values are still exact to the tolerance."""
    from derive.activations import gaussian as G

    factors = FACTORS + [sp.cos(2 * x)]
    K = _correlated(d, 8, seed=d, spread=spread)
    classes = G._axis_classes(G._tolerant_cholesky(K))
    slow = classes[:, 1:] < len(G._SLOW_SCALES)      # the later axes: slow ones, or a mix
    assert slow.all() if spread < 0.1 else (slow.any() and not slow.all())
    def values(ids, z):
        return [np.asarray(G.numpy_function(factors[i], (x,))(z)) for i in ids]
    smooth = G._slow_sizes(values, tuple(range(len(FACTORS))), 0, 3, (30, 36, 42))
    fast = G._slow_sizes(values, tuple(range(len(factors))), 0, 3, (30, 36, 42))
    assert np.all(smooth[:3] > 0) and np.all(fast >= smooth) and np.any(fast > smooth)
    rng = np.random.default_rng(2)
    prods = [tuple(int(v) for v in rng.integers(0, len(factors), d)) for _ in range(12)]
    prods.append((len(factors) - 1,) * d)
    _assert_exact(factors, prods, K, 1e-8 if d == 3 else 1e-7)


@pytest.mark.parametrize("d", [3, 4])
def test_variables_reordered_where_that_is_cheaper(d):
    """A pair of nearly equal variables first and others apart: the rule is cheaper with the
    pair last (its later axes then move the variables little), so the matrices are integrated
    in another order of their variables, each product's factors following their variables;
    the values are still exact to the tolerance (exponential and trigonometric factors, each
    product different under the exchange)."""
    from derive.activations import gaussian as G

    rng = np.random.default_rng(d)
    K = []
    for _ in range(6):
        A = rng.standard_normal((d, d)) * 0.8
        A[1] = A[0] + 0.02 * rng.standard_normal(d)        # z_1 ≈ z_0
        K.append(A @ A.T)
    K = np.array(K)
    sizes = G._slow_sizes(lambda ids, z: [np.asarray(G.numpy_function(FACTORS[i], (x,))(z))
                                          for i in ids], tuple(range(len(FACTORS))), 0, 1, (30,))
    pick, L = G._cheapest_orders(K, G._tolerant_cholesky(K), sizes, 30)
    assert np.sum(pick > 0) >= 4                         # most of them reordered
    orders = list(permutations(range(d)))
    for k, i in enumerate(pick):
        o = list(orders[i])
        np.testing.assert_allclose(L[k] @ L[k].T, K[k][np.ix_(o, o)], atol=1e-12)
    prods = [tuple(int(v) for v in rng.integers(0, len(FACTORS), d)) for _ in range(10)]
    prods.append(tuple(range(d)))
    _assert_exact(FACTORS, prods, K, 1e-8 if d == 3 else 1e-7)


def test_tanh_products_against_the_product_by_product_rule():
    z = sp.Symbol("z")
    s = sp.tanh(z)
    factors = [f.subs(z, x) for f in (s, sp.diff(s, z), sp.diff(s, z, 2), sp.diff(s, z, 3))]
    K = np.concatenate([_covariances(4, 4, 4, seed=5), _covariances(4, 3, 2, seed=6)])
    prods = [(0, 0, 0, 0), (1, 0, 2, 0), (3, 1, 1, 0), (2, 2, 1, 1), (0, 3, 0, 2)]
    value, _, ok = product_expectations(factors, prods, K)  # default: 1e-6 relative in 4-D
    assert ok[:4].all()  # full rank; the rank-3 ones are held to the 3-D default, 1e-9
    assert ok[4:].mean() > 0.5
    zs = sp.symbols("z1:5")
    for j, p in enumerate(prods):
        f = sp.Mul(*(factors[k].subs(x, zs[i]) for i, k in enumerate(p)))
        ref = np.asarray(gaussian_expectation(f, K))
        np.testing.assert_allclose(value[ok[:, j], j], ref[ok[:, j]], rtol=0, atol=2e-6)


@pytest.mark.parametrize("scale,rank", [(0.3, 4), (1.0, 4), (1.0, 3)])
def test_a_coarse_tolerance_starts_at_24_nodes_and_still_reaches_it(scale, rank):
    """A tolerance of 1e-7 or coarser (train(order=1) asks 1e-6) starts the ladder at 24 nodes
    an axis and stops where 24 and 30 agree: every value is within the tolerance of the one a
    fine tolerance (starting at 30 and 36 nodes, in three dimensions at 48) gives, and so is
    its error estimate — on tanh and its first three derivatives, the factors of the
    statistics train(order=1) reads, at full rank (4-D) and at rank 3 (four inputs of a
    layer that sees three input dimensions)."""
    z = sp.Symbol("z")
    s = sp.tanh(z)
    factors = [f.subs(z, x) for f in (s, sp.diff(s, z), sp.diff(s, z, 2), sp.diff(s, z, 3))]
    K = scale * _covariances(4, rank, 8, seed=7)
    prods = [(0, 0, 0, 0), (1, 0, 2, 0), (3, 1, 1, 0), (2, 2, 1, 1), (0, 3, 0, 2), (3, 3, 1, 1),
             (1, 1, 1, 1)]
    value, error, ok = product_expectations(factors, prods, K, tol=1e-6)
    fine, _, fine_ok = product_expectations(factors, prods, K, tol=1e-8)
    assert ok.all() and np.all(error <= 1e-6) and fine_ok.mean() > 0.7
    np.testing.assert_allclose(value[fine_ok], fine[fine_ok], rtol=0, atol=1e-6)


def test_what_is_left_to_gaussian_expectation():
    """Kinked factors, products of polynomials, fewer than three variables: not computed here
    (ok False), so the caller's product-by-product route (exact where it can be) decides."""
    K = _covariances(3, 3, 2, seed=0)
    factors = [sp.Max(x, 0), x ** 2, sp.tanh(x), sp.Heaviside(x)]
    value, error, ok = product_expectations(factors, [(0, 2, 2), (1, 1, 1), (2, 2, 3), (2, 2, 2)],
                                            K)
    assert ok.tolist() == [[False, False, False, True]] * 2
    assert not product_expectations(factors, [(2, 2)], K[:, :2, :2])[2].any()


def test_evaluator_two_passes_equal_one(monkeypatch):
    """The recursions read the same numbers whether the products were computed together
    (recorded in a first pass) or one by one as they are asked for."""
    X = np.array([[1.0, 0.2], [0.3, -0.8], [-0.6, 0.5], [0.9, 0.9]])
    messages = []
    spec = derive.MLP(3, 16, "tanh", 0.1, 1.2)
    together = E.iterate_mlp(spec, X, order=1, targets=["V", "A", "D"], tol=1e-9,
                             detail=messages.append)
    assert any("4-D averages" in m and "sample sets" in m for m in messages)
    with monkeypatch.context() as m:
        m.setattr(E._Evaluator, "prefetch", lambda self: self.pending.clear())
        alone = E.iterate_mlp(spec, X, order=1, targets=["V", "A", "D"], tol=1e-9)
    for q in ("V", "A", "D"):
        np.testing.assert_allclose(np.asarray(together[q][3]), np.asarray(alone[q][3]),
                                   rtol=0, atol=5e-9)
        assert np.max(np.abs(np.asarray(together[q][3]))) > 1e-3  # not trivially zero


def test_canonical_products_are_shared():
    """⟨σ'(z_a) σ(z_b) σ(z_c)⟩ and the same integral with its variables permuted are one
    quadrature; values agree with gaussian_expectation."""
    K = _covariances(3, 3, 1, seed=3)[0]
    ev = E._Evaluator(K, {}, kinked=False, tol=1e-10)
    z1, z2, z3 = sp.symbols("z1:4")
    h = (1 - sp.tanh(z1) ** 2) * sp.tanh(z2) * sp.tanh(z3)
    a = ev.average(h, np.array([[0, 1, 2]]))
    calls = []
    orig = ev._expectation
    ev._expectation = lambda hh, S: calls.append(S) or orig(hh, S)
    b = ev.average(h.xreplace({z1: z2, z2: z1}), np.array([[1, 0, 2]]))
    c = ev.average(3 * h.xreplace({z1: z3, z3: z1}), np.array([[2, 1, 0]]))
    assert calls == []
    np.testing.assert_allclose([b[0], c[0] / 3], [a[0], a[0]], rtol=0, atol=1e-15)
    ref = gaussian_expectation(h, K, tol=1e-10)
    assert abs(a[0] - float(ref)) < 1e-9


def test_workers_give_the_same_values_bit_for_bit(monkeypatch):
    """predict(workers=2) integrates the blocks of sample sets on forked processes: the values
    are those of workers=1, bit for bit (blocks of 4 matrices here, so that there are several);
    bad values are refused."""
    import warnings

    from derive import DeriveError
    from derive.activations import gaussian

    monkeypatch.setattr(gaussian, "_LADDER_BLOCK", 4)
    X = np.random.default_rng(1).standard_normal((6, 3))
    spec = derive.MLP(2, 16, "tanh", 0.1, 1.3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one, two = (derive.predict(spec, X, order=1, targets=["K", "A", "R"], workers=w)
                    for w in (1, 2))
    for q in ("A", "R"):
        assert np.array_equal(np.asarray(getattr(one, q)[2]), np.asarray(getattr(two, q)[2]))
    assert np.abs(np.asarray(one.R[2])).max() > 1e-3
    for bad in (0, True, 1.5, "2"):
        with pytest.raises(DeriveError, match="workers"):
            derive.predict(spec, X, order=1, targets=["A"], workers=bad)


#: three nearly equal inputs and erf · erf′ · erf″: the table's interpolation was 1.9e-9 off
ERF_K = np.array([[1.1822, 1.1586, 1.1396], [1.1586, 1.1625, 1.1442], [1.1396, 1.1442, 1.1559]])
ERF_PROD = (0, 1, 2)


@pytest.mark.parametrize("case", ["tanh", "erf"])
def test_the_last_variables_own_average_is_refined_with_the_rungs(monkeypatch, case):
    """G(u) = ⟨f(u + s η)⟩ of the conditional rule is averaged on the outer axes' rule of each
    rung, in three dimensions at every outer node: a fixed 64-node rule was off by 7e-9 with
    s ≈ 1 and a σ‴-like tanh factor, and the table's interpolation by 2e-9 for erf products of
    nearly equal inputs, while the two rungs agreed to 1e-11.  Both routes now agree with the
    plain nested rule (all three axes on a product grid, no G) to the tolerance."""
    from derive.activations import gaussian as G

    z = sp.symbols("z1:4")
    if case == "tanh":
        K = np.array([[0.47, 0.05, 0.1], [0.05, 0.6, 0.2], [0.1, 0.2, 1.3]])
        factors = [1 - sp.tanh(x) ** 2, (1 - sp.tanh(x) ** 2) ** 3]
        prod, tol = (0, 0, 1), 1e-10
    else:
        K = ERF_K
        factors = [sp.erf(x), sp.diff(sp.erf(x), x), sp.diff(sp.erf(x), x, 2)]
        prod, tol = ERF_PROD, 3e-10
    h = product_integrand(factors, prod, z)
    conditional = gaussian_expectation(h, K, tol=tol)
    shared = product_expectations(factors, [prod], K[None], tol=tol)
    assert shared[2].all()
    monkeypatch.setattr(G, "_CONDITIONAL", False)
    nested = gaussian_expectation(h, K, tol=tol)
    assert "last variable" in conditional.method and "last variable" not in nested.method
    assert abs(float(conditional) - float(nested)) < 1e-9
    assert abs(shared[0][0, 0] - float(nested)) < 1e-9
