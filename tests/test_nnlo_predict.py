"""``predict(order=2)`` and ``derive(order=2)``: the O(1/n²) statistics G2, V1, U of one and
two inputs, against exact finite-width statistics written here independently.

Oracles:

* **Deep linear networks, two inputs** (σ(z) = z, any C_b).  Conditional on layer ℓ, the
  n_ℓ neurons' sample vectors z_j ∈ R² are i.i.d. N(0, Ĝ^{(ℓ)}), and
  Ĝ^{(ℓ+1)} = C_b J + (C_W/n_ℓ) S with S = Σ_j z_j z_jᵀ (J the all-ones matrix).  A moment
  E[Π_k S_{a_k b_k} | Ĝ] is a sum over set partitions of the factors (factors in one block
  share a neuron: n(n−1)…(n−b+1) ways for b blocks) of products of Isserlis sums over each
  block.  Pushing the moments of degree ≤ 3 down to layer 1 (deterministic) gives E[Ĝ],
  Cov(Ĝ_{ab}, Ĝ_{cd}) and κ3(Ĝ_{ab}, Ĝ_{cd}, Ĝ_{ef}) exactly as polynomials in 1/n, whose
  coefficients are K, G1 = G2 = 0, V, V1 and U (for different neurons i, j, k,
  κ3(z_i z_i, z_j z_j, z_k z_k) = κ3 of the metric's entries, docs/conventions.md §10).
* **Layer 2 of a tanh network, two inputs.**  Layer 1 is exactly Gaussian, so
  Ĝ^{(2)} = C_b + (C_W/n_1) Σ_j σ(z_j)σ(z_j)ᵀ is a sum of i.i.d. terms: V^{(2)} =
  C_W² Cov(σ_aσ_b, σ_cσ_d), U^{(2)} = C_W³ κ3(σ_aσ_b, σ_cσ_d, σ_eσ_f) under N(0, K^{(1)}),
  by a two-dimensional Gauss–Hermite rule written here; G1, G2, V1 vanish at layer 2.
* **Closure:** the diagonal components of a pair's prediction are each input's own.
"""
from __future__ import annotations

import itertools
from fractions import Fraction
from functools import lru_cache

import numpy as np
import pytest
import sympy as sp

import derive
from derive import MLP, DeriveError

pytestmark = pytest.mark.slow  # the first order-2 call of a process derives the recursions

n = sp.Symbol("n", positive=True)


# -- the Wishart chain of a deep linear network ------------------------------------------------

def _isserlis(idx: tuple, Q) -> sp.Expr:
    """E[Π_k z_{idx_k}] for z ~ N(0, Q)."""
    if not idx:
        return sp.Integer(1)
    if len(idx) % 2:
        return sp.Integer(0)
    a, rest = idx[0], idx[1:]
    return sp.Add(*(Q[a][rest[k]] * _isserlis(rest[:k] + rest[k + 1:], Q)
                    for k in range(len(rest))))


def _set_partitions(items: list):
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in _set_partitions(rest):
        yield [[first]] + part
        for k in range(len(part)):
            yield part[:k] + [[first] + part[k]] + part[k + 1:]


def _falling(b: int) -> sp.Expr:
    return sp.Mul(*(n - r for r in range(b)))


Q_SYMS = {(0, 0): sp.Symbol("q00"), (0, 1): sp.Symbol("q01"), (1, 1): sp.Symbol("q11")}
Q = [[Q_SYMS[0, 0], Q_SYMS[0, 1]], [Q_SYMS[0, 1], Q_SYMS[1, 1]]]


@lru_cache(maxsize=None)
def _pushdown(pairs: tuple, Cb, CW) -> sp.Expr:
    """E[Π_k Ĝ'_{pairs[k]} | Ĝ = Q] as a polynomial in Q's entries and n."""
    total = sp.Integer(0)
    m = len(pairs)
    for chosen in itertools.product((0, 1), repeat=m):  # each factor: C_b, or (C_W/n) S
        ks = [k for k in range(m) if chosen[k]]
        term = Cb ** (m - len(ks)) * (CW / n) ** len(ks)
        moment = sp.Integer(0)
        for part in _set_partitions(ks):
            prod = _falling(len(part))
            for block in part:
                prod *= _isserlis(tuple(a for k in block for a in pairs[k]), Q)
            moment += prod
        total += term * moment
    return sp.expand(total)


def _moment(pairs: tuple, layer: int, K1, Cb, CW) -> sp.Expr:
    """E[Π_k Ĝ^{(layer)}_{pairs[k]}] exactly (a polynomial in 1/n)."""
    if layer == 1:
        return sp.Mul(*(K1[a][b] for a, b in pairs))
    poly = sp.Poly(_pushdown(tuple(sorted(tuple(sorted(p)) for p in pairs)), Cb, CW),
                   *Q_SYMS.values())
    out = sp.Integer(0)
    syms = list(Q_SYMS)
    for powers, coeff in poly.terms():
        lower = tuple(p for p, e in zip(syms, powers) for _ in range(e))
        out += coeff * _moment(lower, layer - 1, K1, Cb, CW)
    return sp.expand(out)


def _coefficients(e: sp.Expr, upto: int = 2) -> list:
    eps = sp.Symbol("eps")
    s = sp.expand(sp.expand(e).subs(n, 1 / eps))
    return [s.coeff(eps, k) for k in range(upto + 1)]


def linear_exact(layer: int, K1, Cb, CW) -> dict:
    """K, G1, G2 (2 × 2), V, V1 (2⁴), U (2⁶) of a linear net's layer ``layer``, exact."""
    def m(*pairs):
        return _moment(tuple(pairs), layer, K1, Cb, CW)

    out = {q: {} for q in ("K", "G1", "G2", "V", "V1", "U")}
    for a, b in itertools.product(range(2), repeat=2):
        c = _coefficients(m((a, b)))
        out["K"][a, b], out["G1"][a, b], out["G2"][a, b] = c
    for idx in itertools.product(range(2), repeat=4):
        p, q = (idx[0], idx[1]), (idx[2], idx[3])
        c = _coefficients(m(p, q) - m(p) * m(q))
        assert c[0] == 0
        out["V"][idx], out["V1"][idx] = c[1], c[2]
    for idx in itertools.product(range(2), repeat=6):
        p, q, r = (idx[0], idx[1]), (idx[2], idx[3]), (idx[4], idx[5])
        k3 = (m(p, q, r) - m(p, q) * m(r) - m(p, r) * m(q) - m(q, r) * m(p)
              + 2 * m(p) * m(q) * m(r))
        c = _coefficients(k3)
        assert c[0] == 0 and c[1] == 0
        out["U"][idx] = c[2]
    return out


def test_linear_network_pairs_match_the_wishart_chain():
    Cb, CW = sp.Rational(1, 5), sp.Rational(6, 5)
    X = [[Fraction(1), Fraction(1, 2), Fraction(-1, 4)], [Fraction(-1, 2), Fraction(1), Fraction(3, 4)]]
    n0 = 3
    G0 = [[sp.Rational(sum(x * y for x, y in zip(X[a], X[b]))) / n0 for b in range(2)]
          for a in range(2)]
    K1 = [[Cb + CW * G0[a][b] for b in range(2)] for a in range(2)]
    L = 4
    spec = MLP(L, 7, "linear", float(Cb), float(CW))
    p = derive.predict(spec, np.array(X, dtype=float), order=2, warn_threshold=1.0)
    assert p.order == 2 and p.route == "batched"
    for layer in (2, 3, 4):
        want = linear_exact(layer, K1, Cb, CW)
        for q, comps in want.items():
            got = np.asarray(getattr(p, q)[layer], dtype=float)
            for idx, value in comps.items():
                assert got[idx] == pytest.approx(float(value), rel=1e-10, abs=1e-12), (q, layer, idx)
        # the deeper layers are not trivial: V1 and U are nonzero off the diagonal too
        if layer >= 3:
            assert abs(float(want["V1"][0, 1, 0, 1])) > 1e-3
            assert abs(float(want["U"][0, 0, 0, 1, 1, 1])) > 1e-3
    # the metric to O(1/n²) is K + G1/n + G2/n² (zero corrections for a linear net)
    assert np.allclose(p.metric(4), p.K[4], rtol=0, atol=1e-14)


# -- layer 2 of a tanh network: exact cumulants of a sum of i.i.d. terms ----------------------

def _gauss_hermite_2d(K: np.ndarray, points: int = 300):
    t, w = np.polynomial.hermite_e.hermegauss(points)
    w = w / np.sqrt(2 * np.pi)
    L = np.linalg.cholesky(K)
    u1, u2 = np.meshgrid(t, t, indexing="ij")
    W = np.outer(w, w)
    z = np.einsum("ij,jab->iab", L, np.stack([u1, u2]))
    return z, W


def test_tanh_layer_two_pairs_are_exact_cumulants():
    Cb, CW = 0.1, 1.6
    X = np.array([[0.9, -0.4], [0.2, 1.1]])
    spec = MLP(2, 5, "tanh", Cb, CW)
    p = derive.predict(spec, X, order=2, warn_threshold=1.0)
    K1 = Cb + CW * X @ X.T / X.shape[1]
    z, W = _gauss_hermite_2d(K1)
    s = np.tanh(z)

    def E(f):
        return float(np.sum(W * f))

    def sig(a, b):
        return s[a] * s[b]

    for idx in itertools.product(range(2), repeat=4):
        A, B = sig(*idx[:2]), sig(*idx[2:])
        want = CW ** 2 * (E(A * B) - E(A) * E(B))
        assert p.V[2][idx] == pytest.approx(want, rel=1e-10, abs=1e-13)
        assert p.V1[2][idx] == 0.0
    for idx in itertools.product(range(2), repeat=6):
        A, B, C = sig(*idx[:2]), sig(*idx[2:4]), sig(*idx[4:])
        k3 = (E(A * B * C) - E(A * B) * E(C) - E(A * C) * E(B) - E(B * C) * E(A)
              + 2 * E(A) * E(B) * E(C))
        assert p.U[2][idx] == pytest.approx(CW ** 3 * k3, rel=1e-9, abs=1e-13), idx
    assert np.abs(p.U[2]).max() > 1e-3
    assert np.all(p.G1[2] == 0) and np.all(p.G2[2] == 0)


# -- closure, the single-input evaluator, and what is refused ---------------------------------

def test_pair_diagonals_are_each_inputs_own_and_match_the_single_input_evaluator():
    from derive.numeric.nnlo import single_input_nnlo

    spec = MLP(5, 8, "erf", 0.05, 1.1)
    X = np.array([[0.7, -0.2, 0.4], [-0.3, 0.9, 0.1]])
    pair = derive.predict(spec, X, order=2, warn_threshold=1.0)
    for a in range(2):
        one = derive.predict(spec, X[a:a + 1], order=2, warn_threshold=1.0)
        ref = single_input_nnlo(spec, X[a])  # Gauss–Hermite on the whole lambdified recursion
        for layer in range(1, 6):
            for q in ("K", "G1", "V", "G2", "V1", "U"):
                rank = {"K": 2, "G1": 2, "G2": 2, "V": 4, "V1": 4, "U": 6}[q]
                got = float(np.asarray(getattr(pair, q)[layer])[(a,) * rank])
                mine = float(np.asarray(getattr(one, q)[layer]).reshape(-1)[0])
                assert got == pytest.approx(mine, rel=1e-12, abs=1e-15), (q, layer)
                assert mine == pytest.approx(ref[layer][q], rel=1e-9, abs=1e-13), (q, layer)
    assert abs(pair.G2[5][0, 1]) > 1e-4 and abs(pair.U[5][0, 0, 0, 1, 1, 1]) > 1e-4
    # the metric to O(1/n²), and the expansion estimate from the computed G2
    n4 = 8
    assert np.allclose(pair.metric(5), pair.K[5] + pair.G1[5] / n4 + pair.G2[5] / n4 ** 2,
                       rtol=0, atol=0)
    d = np.arange(2)
    est = np.max(np.abs(pair.G2[5][d, d]) / (n4 ** 2 * pair.K[5][d, d])
                 * np.abs(pair.V[5][d, d, d, d]) / (n4 * pair.K[5][d, d] ** 2))
    assert pair.expansion[5] == pytest.approx(est, rel=1e-12)


def test_g2_of_many_inputs_on_all_pairs():
    spec = MLP(3, 10, "tanh", 0.0, 1.3)
    X = np.random.default_rng(1).normal(size=(4, 3))
    many = derive.predict(spec, X, order=2, targets=["K", "G1", "G2"], warn_threshold=1.0)
    assert not many.V1 and not many.U
    for a, b in ((0, 1), (2, 3), (1, 3)):
        two = derive.predict(spec, X[[a, b]], order=2, targets=["G2"], warn_threshold=1.0)
        assert many.G2[3][a, b] == pytest.approx(two.G2[3][0, 1], rel=1e-12)
    with pytest.raises(DeriveError, match="at most 2 inputs"):
        derive.predict(spec, X, order=2, targets=["V1"])
    # the default targets at order 2 leave V1 and U out for more than two inputs
    assert set(derive.predict(spec, X[:3], order=2, warn_threshold=1.0).G2) == {1, 2, 3}


def test_derive_at_second_order_plans_and_prints():
    spec = MLP(4, 16, "tanh", 0.0, 1.0)
    d = derive.derive(spec, targets=["G2"], order=2)
    assert d.order == 2 and set(d.recursions) == {"K", "G1", "V", "G2", "V1", "U"}
    # G2 at layer ℓ+1 reads the O(1/n²) data of layer ℓ, which read only what they need
    parents = {u[0] for u in d.plan.predecessors(("G2", 4, 2))}
    assert parents == {"K", "G1", "V", "G2", "V1", "U"}
    assert {u[0] for u in d.plan.predecessors(("U", 3, 2))} == {"K", "V", "U"}
    assert ("U", 1, 2) in d.needed("G2", 4)
    tex = d.latex()
    assert r"U^{(\ell)}" in tex and r"G^{\{2\}(\ell+1)}" in tex
    assert d.latex() == tex  # deterministic
    md = d.document("md")
    assert "V1" in md or r"V^{\{1\}" in md


def test_relu_single_input_matches_the_exact_multiplicative_chain():
    """ReLU at C_W = 2, C_b = 0, one input: Ĝ^{(ℓ+1)} = Ĝ^{(ℓ)} Y_ℓ with Y_ℓ = (2/n) Σ_j u_j²
    θ(u_j), u_j i.i.d. standard normal, independent across layers: E[Y] = 1, Var Y = 5/n,
    κ3(Y) = 8 · (15/2 − 3 · 3/2 · 1/2 + 2/8)/n² = 44/n².  So E[Ĝ^{(ℓ)}] = K, E[Ĝ²] =
    K²(1 + 5/n)^{ℓ−1}, E[Ĝ³] = K³(1 + 15/n + 44/n²)^{ℓ−1} exactly, and V + V1/n, U follow
    (the issue's n K²[(1 + 5/n)^{ℓ−1} − 1] for the four-point function).  The derived
    recursions of a σ with kinks are evaluated by Gaussian integration by parts (Hermite
    weights up to the eighth), so this checks that route at second order."""
    L = 5
    spec = MLP(L, 10, "relu", 0.0, 2.0)
    x = np.array([[0.8, -0.3, 0.5]])
    p = derive.predict(spec, x, order=2, warn_threshold=10.0)
    K = float(p.K[1][0, 0])
    eps = sp.Symbol("eps")
    for layer in range(2, L + 1):
        m = layer - 1
        EG, EG2 = K, K ** 2 * (1 + 5 * eps) ** m
        EG3 = K ** 3 * (1 + 15 * eps + 44 * eps ** 2) ** m
        four = sp.expand(EG2 - EG ** 2)
        six = sp.expand(EG3 - 3 * EG2 * EG + 2 * EG ** 3)
        want = {"K": K, "G1": 0.0, "G2": 0.0, "V": float(four.coeff(eps, 1)),
                "V1": float(four.coeff(eps, 2)), "U": float(six.coeff(eps, 2))}
        assert float(six.coeff(eps, 1)) == 0.0
        for q, value in want.items():
            got = float(np.asarray(getattr(p, q)[layer]).reshape(-1)[0])
            assert got == pytest.approx(value, rel=1e-10, abs=1e-10), (q, layer)
    assert p.V1[L].reshape(-1)[0] > 1.0 and p.U[L].reshape(-1)[0] > 1.0
    # two inputs (Hermite weights in two variables, up to the eighth): each input's own
    # components are its single-input values
    two = derive.predict(spec, np.vstack([x, [[0.1, 0.9, -0.4]]]), order=2, warn_threshold=10.0)
    for q in ("K", "G1", "V", "G2", "V1", "U"):
        rank = np.ndim(getattr(p, q)[L])
        assert np.asarray(getattr(two, q)[L])[(0,) * rank] == pytest.approx(
            float(np.asarray(getattr(p, q)[L]).reshape(-1)[0]), rel=1e-12, abs=1e-12), q
    assert abs(two.U[L][0, 0, 0, 1, 1, 1]) > 1.0


def test_relu_unequal_widths_keep_their_products_of_inverse_widths():
    """The same chain with widths n_1, n_2, n_3 (Var Y_k = 5/n_k, κ3(Y_k) = 44/n_k²): to second
    order in the a_k = 1/n_k, n_{ℓ−1} Cov(z_i², z_j²) = n_{ℓ−1} K² [5 Σ a_k + 25 Σ_{k<k'} a_k a_k']
    and κ3 = K³ [44 Σ a_k² + 150 Σ_{k<k'} a_k a_k'] (k, k' < ℓ); V, V1 and U are these times
    the powers of n_{ℓ−1} of their definitions (docs/conventions.md §10)."""
    widths = [6, 9, 5]
    spec = MLP(4, widths, "relu", 0.0, 2.0)
    p = derive.predict(spec, np.array([[0.5, 1.0]]), order=2, warn_threshold=10.0)
    K = float(p.K[1][0, 0])
    for layer in range(2, 5):
        a = [1 / w for w in widths[:layer - 1]]
        pairs = sum(a[k] * a[j] for k in range(len(a)) for j in range(k + 1, len(a)))
        fan_in = widths[layer - 2]
        want = {"V": fan_in * K ** 2 * 5 * sum(a), "V1": fan_in ** 2 * K ** 2 * 25 * pairs,
                "U": fan_in ** 2 * K ** 3 * (44 * sum(x * x for x in a) + 150 * pairs)}
        for q, value in want.items():
            got = float(np.asarray(getattr(p, q)[layer]).reshape(-1)[0])
            assert got == pytest.approx(value, rel=1e-10, abs=1e-12), (q, layer)


def test_command_line_predict_at_second_order(tmp_path, capsys):
    import json

    from derive.cli.main import main

    spec = tmp_path / "spec.toml"
    spec.write_text('activation = "tanh"\ndepth = 3\nwidths = 12\nC_b = 0.0\nC_W = 1.0\n'
                    'inputs = [[1.0, 0.5]]\ntargets = ["K", "G1", "V", "G2", "U"]\n')
    assert main(["predict", str(spec), "--json"]) == 0  # the order follows the targets: 2
    out = json.loads(capsys.readouterr().out)
    assert out["order"] == 2
    last = out["layers"][-1]
    p = derive.predict(MLP(3, 12, "tanh", 0.0, 1.0), np.array([[1.0, 0.5]]), order=2,
                       warn_threshold=1.0)
    assert last["G2"] == p.G2[3].tolist() and last["metric"] == p.metric(3).tolist()
    assert np.asarray(last["U"]).shape == (1,) * 6
    assert main(["predict", str(spec), "--order", "1", "--targets", "G2"]) == 2
    assert "order=2" in capsys.readouterr().err


def test_derivative_free_route_equals_derivatives_at_second_order_for_two_inputs():
    """The route σ with kinks take (Gaussian integration by parts, Hermite weights in two
    variables up to the eighth derivative) on a smooth σ equals the route by derivatives."""
    from derive.numeric.evaluate import iterate_mlp

    spec = MLP(4, 10, "tanh", 0.1, 1.3)
    X = np.array([[0.8, -0.3, 0.5], [0.1, 0.4, -0.9]])
    names = ("K", "G1", "V", "G2", "V1", "U")
    a = iterate_mlp(spec, X, order=2, targets=names)
    b = iterate_mlp(spec, X, order=2, targets=names, derivative_free=True)
    for q in names:
        A, B = np.asarray(a[q][4]), np.asarray(b[q][4])
        assert np.abs(A).max() > 1e-3
        np.testing.assert_allclose(B, A, rtol=0, atol=1e-11 * np.abs(A).max(), err_msg=q)
