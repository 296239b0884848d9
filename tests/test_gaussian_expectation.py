"""Gaussian expectations: every closed form against quadrature, quadrature against
independent references (high-degree Gauss–Hermite written here, mpmath, factorisation,
Wick), batches, and bad input."""
from functools import lru_cache

import mpmath
import numpy as np
import pytest
import sympy as sp

from derive import activation, gaussian_expectation, known_activations
from derive.activations.catalogue import kernel_rules, z
from derive.base.errors import CovarianceError, DeriveError, QuadratureError

z1, z2, z3, z4 = sp.symbols("z1:5")
COVS = [np.array([[1.0, 0.5], [0.5, 1.0]]),
        np.array([[2.0, -1.2], [-1.2, 0.9]]),
        np.array([[0.3, 0.299], [0.299, 0.3]]),
        np.array([[1.7, 0.0], [0.0, 0.2]])]


def pair(act, d1, d2):
    return act.derivative(d1).subs(z, z1) * act.derivative(d2).subs(z, z2)


# --- every closed form of every activation against quadrature ------------------------------

def _closed_form_cases():
    cases = []
    for name in known_activations():
        act = activation(name)
        for cf in act.closed_forms:
            cases.append((name, cf.id, cf.gives))
    return cases


CLOSED_FORM_CASES = _closed_form_cases()


@pytest.mark.parametrize("name,rule,gives", CLOSED_FORM_CASES)
def test_closed_form_against_quadrature(name, rule, gives):
    act = activation(name)
    tol = 1e-12 if act.smooth else 1e-10
    for K in COVS:
        if len(gives) == 2:
            f = pair(act, *gives)
        else:
            f = act.derivative(gives[0]).subs(z, z1)
            K = K[:1, :1]
        exact = gaussian_expectation(f, K)
        quad = gaussian_expectation(f, K, method="quadrature")
        if exact.method.startswith("closed form"):
            assert exact.method == f"closed form: {rule}"
        assert abs(exact - quad) <= tol, (name, rule, K)
        assert quad.error <= tol


# --- quadrature against an independent reference --------------------------------------------

@lru_cache(None)
def _hermite(n):
    return np.polynomial.hermite_e.hermegauss(n)


def reference_2d(f_np, K, n=300):
    """Tensor Gauss–Hermite of degree n on the Cholesky-whitened variables (test-only code)."""
    x, w = _hermite(n)
    w = w / w.sum()
    L = np.linalg.cholesky(K)
    U1, U2 = np.meshgrid(x, x, indexing="ij")
    Z1 = L[0, 0] * U1
    Z2 = L[1, 0] * U1 + L[1, 1] * U2
    return float((np.outer(w, w) * f_np(Z1, Z2)).sum())


SMOOTH = [n for n in known_activations() if activation(n).smooth]
NONSMOOTH = [n for n in known_activations() if not activation(n).smooth]


@pytest.mark.parametrize("name", SMOOTH)
def test_smooth_quadrature_2d_to_1e12(name):
    act = activation(name)
    for K in COVS[:2] + [np.array([[0.6, -0.3], [-0.3, 1.4]])]:
        for d in (0, 1):
            f = pair(act, d, d)
            got = gaussian_expectation(f, K, method="quadrature")
            s = act.numpy(d)
            ref = reference_2d(lambda a, b: s(a) * s(b), K)
            assert abs(got - ref) <= 1e-12, (name, d, K)


@pytest.mark.parametrize("name", SMOOTH)
def test_smooth_quadrature_1d_against_mpmath(name):
    act = activation(name)
    mpmath.mp.dps = 30
    g = sp.lambdify(z, act.expr ** 2, modules="mpmath")
    for K in (0.05, 1.0, 10.0):
        ref = mpmath.quad(lambda x: g(x) * mpmath.npdf(x, 0, mpmath.sqrt(K)), [-mpmath.inf, -3, 0, 3, mpmath.inf])
        got = gaussian_expectation(act.expr.subs(z, z1) ** 2, np.array([[K]]), method="quadrature")
        assert abs(got - float(ref)) <= 1e-12, (name, K)


@pytest.mark.parametrize("name", NONSMOOTH)
def test_kinked_quadrature_against_mpmath_split_at_kink(name):
    act = activation(name)
    mpmath.mp.dps = 30
    g = sp.lambdify(z, act.expr ** 3, modules="mpmath")
    for K in (0.5, 3.0):
        ref = mpmath.quad(lambda x: g(x) * mpmath.npdf(x, 0, mpmath.sqrt(K)), [-mpmath.inf, 0, mpmath.inf])
        got = gaussian_expectation(act.expr.subs(z, z1) ** 3, np.array([[K]]), method="quadrature")
        assert abs(got - float(ref)) <= 1e-12, (name, K)


def test_every_activation_has_a_tier_cross_check():
    """Fails when an activation file escapes both cross-checks above (e.g. a kernel family
    without closed forms, or a non-smooth activation that is not tested)."""
    covered_cf = {name for name, _, _ in CLOSED_FORM_CASES}
    for name in known_activations():
        act = activation(name)
        assert name in SMOOTH or name in NONSMOOTH
        if act.kernel_family:
            assert name in covered_cf, f"{name} names kernel family {act.kernel_family} but no closed form is tested"
        if not act.smooth:
            assert name in covered_cf or name in NONSMOOTH
    for family in {activation(n).kernel_family for n in known_activations()} - {""}:
        gives = {cf.gives for cf in kernel_rules(family)}
        assert {(0, 0), (1, 1)} <= gives, family


def test_kink_aware_quadrature_converges_fast():
    """ReLU is integrated to roundoff, not with the algebraic convergence of plain rules."""
    K = np.array([[1.3, 0.7], [0.7, 0.9]])
    relu = activation("relu")
    q = gaussian_expectation(pair(relu, 0, 0), K, method="quadrature")
    cf = gaussian_expectation(pair(relu, 0, 0), K)
    assert abs(q - cf) < 1e-13 and "kinks" in q.method
    hard = sp.Min(1, sp.Max(-1, z1))
    ref = mpmath.quad(lambda x: min(1, max(-1, x)) ** 2 * mpmath.npdf(x, 0, 1.5), [-mpmath.inf, -1, 1, mpmath.inf])
    assert abs(gaussian_expectation(hard ** 2, np.array([[2.25]])) - float(ref)) < 1e-12


# --- 3D and 4D ------------------------------------------------------------------------------

def test_3d_4d_factorising_products():
    t = sp.tanh
    Kb = np.zeros((4, 4))
    Kb[:2, :2] = [[1.0, 0.4], [0.4, 0.8]]
    Kb[2:, 2:] = [[1.2, -0.3], [-0.3, 0.7]]
    two_a = gaussian_expectation(t(z1) * t(z2), Kb[:2, :2])
    two_b = gaussian_expectation(t(z1) * t(z2), Kb[2:, 2:])
    one = gaussian_expectation(t(z1) ** 2, Kb[2:3, 2:3])
    v3 = gaussian_expectation(t(z1) * t(z2) * t(z3) ** 2, Kb[:3, :3])
    assert abs(v3 - two_a * one) <= 1e-9 and v3.error <= 1e-9
    v4 = gaussian_expectation(t(z1) * t(z2) * t(z3) * t(z4), Kb)
    assert abs(v4 - two_a * two_b) <= 1e-7 and v4.error <= 1e-7


def test_3d_4d_polynomials_against_wick():
    K = np.array([[1.0, 0.3, 0.2, 0.1], [0.3, 1.2, 0.3, 0.2], [0.2, 0.3, 0.9, 0.3], [0.1, 0.2, 0.3, 1.1]])
    for f in (z1 ** 2 * z2 * z3, z1 * z2 * z3 * z4, z1 ** 2 * z2 ** 2 * z3 ** 2):
        exact = gaussian_expectation(f, K[:3, :3] if f.free_symbols <= {z1, z2, z3} else K)
        assert exact.method.startswith("exact")
        quad = gaussian_expectation(f, K[:3, :3] if f.free_symbols <= {z1, z2, z3} else K, method="quadrature")
        assert abs(exact - quad) <= 1e-7


def test_relu_4d_products():
    """⟨ReLU⁴⟩ over a rank-1 K equals ⟨ReLU(z)⁴⟩ in 1D (= 3K²/2): singular K, kinks, 4D."""
    v = np.array([1.0, 0.8, 1.2, 0.9])
    K = np.outer(v, v)
    got = gaussian_expectation(sp.Max(0, z1) * sp.Max(0, z2) * sp.Max(0, z3) * sp.Max(0, z4), K)
    assert abs(got - 1.5 * np.prod(v)) <= 1e-7


# --- polynomials, batches, degenerate covariances --------------------------------------------

def test_polynomial_tier_exact():
    K = np.array([[2.0, 0.5], [0.5, 1.0]])
    assert gaussian_expectation(z1 ** 4, K) == 12.0
    assert gaussian_expectation(z1 ** 3 * z2, K) == 3 * 2.0 * 0.5
    assert gaussian_expectation(z1 ** 3, K) == 0.0
    cubic = activation("z**3 - z")
    v = gaussian_expectation(cubic(z1) * cubic(z2), K)
    assert v.method.startswith("exact")
    assert abs(v - reference_2d(lambda a, b: (a ** 3 - a) * (b ** 3 - b), K)) < 1e-11


def test_batch_matches_scalar():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(20, 2, 2))
    Ks = A @ np.swapaxes(A, 1, 2) + 0.05 * np.eye(2)
    for f in (sp.tanh(z1) * sp.tanh(z2), sp.Max(0, z1) * sp.Max(0, z2), sp.erf(z1) * sp.erf(z2)):
        batch = gaussian_expectation(f, Ks)
        assert batch.value.shape == (20,) and batch.error.shape == (20,)
        for k in (0, 7, 19):
            assert abs(batch.value[k] - gaussian_expectation(f, Ks[k])) <= 1e-12
        assert np.asarray(batch).shape == (20,)


def test_degenerate_covariance():
    K = np.array([[1.0, 1.0], [1.0, 1.0]])
    a = gaussian_expectation(sp.tanh(z1) * sp.tanh(z2), K)
    b = gaussian_expectation(sp.tanh(z1) ** 2, np.array([[1.0]]))
    assert abs(a - b) < 1e-12
    zero = gaussian_expectation(sp.tanh(z1) ** 2 + 1, np.array([[0.0]]))
    assert abs(zero - 1.0) < 1e-14


# --- bad input ------------------------------------------------------------------------------

def test_bad_covariances():
    f = sp.tanh(z1) * sp.tanh(z2)
    with pytest.raises(CovarianceError, match="symmetric"):
        gaussian_expectation(f, [[1.0, 0.2], [0.3, 1.0]])
    with pytest.raises(CovarianceError, match="negative variance"):
        gaussian_expectation(f, [[-1.0, 0.0], [0.0, 1.0]])
    with pytest.raises(CovarianceError, match="positive semi-definite"):
        gaussian_expectation(f, [[1.0, 2.0], [2.0, 1.0]])
    with pytest.raises(CovarianceError, match="NaN"):
        gaussian_expectation(f, [[np.nan, 0.0], [0.0, 1.0]])
    with pytest.raises(CovarianceError, match="square"):
        gaussian_expectation(f, [[1.0, 0.0]])
    with pytest.raises(CovarianceError, match="batch element 1"):
        gaussian_expectation(f, np.array([np.eye(2), [[1.0, 3.0], [3.0, 1.0]]]))


def test_bad_integrands():
    with pytest.raises(DeriveError, match="z3"):
        gaussian_expectation(sp.tanh(z3), np.eye(2))
    with pytest.raises(DeriveError, match="activation variable"):
        gaussian_expectation(sp.tanh(z), np.eye(1))
    with pytest.raises(DeriveError):
        gaussian_expectation("tanh(z1) +", np.eye(1))
    assert abs(gaussian_expectation("tanh(z1)**2", np.eye(1)) - gaussian_expectation(sp.tanh(z1) ** 2, np.eye(1))) < 1e-15


def test_unreachable_tolerance_is_reported():
    with pytest.raises(QuadratureError, match="tolerance"):
        gaussian_expectation(sp.Max(z1, z2) ** 2 * sp.Abs(z1 - z2) ** 0.5, np.array([[1.0, 0.2], [0.2, 1.0]]), tol=1e-15)


def test_separable_products_match_the_full_grid(monkeypatch):
    # products of one-variable factors are summed from the inside out; the plain tensor grid
    # (forced by disabling the factorisation) is an independent evaluation of the same rule
    import derive.activations.gaussian as G

    z1, z2, z3 = sp.symbols("z1:4")
    rng = np.random.default_rng(3)
    A = rng.normal(size=(20, 3, 3))
    K = A @ A.transpose(0, 2, 1) / 3 + 0.05 * np.eye(3)
    K[:4, 2, :] = K[:4, 0, :]  # some elements rank-deficient (z3 = z1)
    K[:4, :, 2] = K[:4, :, 0]
    f = sp.tanh(z1) * sp.sin(z2) ** 2 * sp.exp(-z3**2 / 4) * 3
    assert G._separable_factors(f, [z1, z2, z3]) is not None
    fast = G.gaussian_expectation(f, K)
    monkeypatch.setattr(G, "_separable_factors", lambda f, syms: None)
    slow = G.gaussian_expectation(f, K)
    assert np.max(np.abs(fast.value - slow.value)) < 1e-12
