"""Exact averages of functions polynomial on each half-line (ReLU, leaky ReLU, abs, steps and
their products with polynomials) from orthant moments (derive/activations/moments.py, the
orthant tier of derive.gaussian_expectation), against an independent nested quadrature
written here (scipy's adaptive quad in one dimension; a composite Gauss–Legendre rule split at
the kinks, the last variable in closed form, beyond), and the whole batched vertex route
against the quadrature route it replaces."""
from math import comb

import numpy as np
import pytest
import sympy as sp
from scipy import integrate
from scipy.special import ndtr

import derive
from derive.activations import gaussian
from derive.activations.gaussian import gaussian_expectation
from derive.numeric.evaluate import iterate_mlp
from derive.activations.moments import (half_moment, orthant_moments, orthant_probability,
                                    quadrant_moments)

SQ2PI = np.sqrt(2 * np.pi)


# ---------------------------------------------------------------------------------------------
# the independent reference: nested adaptive quadrature over the conditional variables
# ---------------------------------------------------------------------------------------------

def _poly(c, x):
    return sum(a * x ** j for j, a in enumerate(c))


def _tail_moments(a, top):
    """J_j = ∫_a^∞ η^j φ(η) dη for j ≤ top (standard normal φ; a an array): J_0 = 1 − Φ(a),
    J_1 = φ(a), J_j = a^(j−1) φ(a) + (j − 1) J_(j−2)."""
    a = np.clip(a, -40.0, 40.0)
    phi = np.exp(-0.5 * a * a) / SQ2PI
    J = [ndtr(-a), phi]
    for j in range(2, top + 1):
        J.append(a ** (j - 1) * phi + (j - 1) * J[j - 2])
    return J


def _inner(f, mu, s):
    """E[f(mu + s η)] for η ~ N(0, 1) (mu an array, s ≥ 0 a number), f piecewise polynomial
    with its kink at 0, in closed form: on x > 0, E[x^k ; x > 0] = Σ_j C(k, j) μ^(k−j) s^j
    J_j(−μ/s); on x < 0 the same for −x."""
    if s == 0.0:
        return np.where(mu > 0, _poly(f[0], mu), _poly(f[1], mu))
    out = np.zeros_like(mu)
    for side, coeffs in ((1.0, f[0]), (-1.0, f[1])):
        m = side * mu  # x' = side · x ~ N(side μ, s²), x' > 0
        J = _tail_moments(-m / s, len(coeffs))
        for k, a in enumerate(coeffs):
            if a:
                e = sum(comb(k, j) * m ** (k - j) * s ** j * J[j] for j in range(k + 1))
                out = out + a * side ** k * e
    return out


_BASE = np.array([-12.0, -8.0, -5.0, -3.0, -1.5, 0.0, 1.5, 3.0, 5.0, 8.0, 12.0])
_GEO = np.array([0.25, 1.0, 4.0, 16.0])


def _reference(fs, K, points=12):
    """⟨Π_k f_k(z_k)⟩ over N(0, K) by a nested composite Gauss–Legendre rule written here:
    z_k given z_1 … z_{k−1} is N(b_k·z, s_k²), integrated in the standardised u over fixed
    panels, split where z_k crosses its kink 0 and where the mean of each later z_j given
    z_1 … z_k crosses 0 (with panels graded around that point on the scale of z_j's remaining
    spread: there the inner integrals bend); the last variable in closed form (:func:`_inner`)."""
    d = len(fs)
    x, w = np.polynomial.legendre.leggauss(points)

    def regress(j, k):  # z_j on z_0 … z_k: coefficients and residual sd
        A = K[:k + 1, :k + 1]
        c = np.linalg.lstsq(A, K[:k + 1, j], rcond=1e-13)[0]
        return c, np.sqrt(max(K[j, j] - K[:k + 1, j] @ c, 0.0))

    Z = np.zeros((1, 0))
    W = np.ones(1)
    for k in range(d):
        if k:
            b, s = regress(k, k - 1)
            mu = Z @ b
        else:
            mu, s = np.zeros(1), np.sqrt(K[0, 0])
        if k == d - 1:
            return float(W @ _inner(fs[k], mu, s))
        if s == 0.0:
            Z = np.concatenate([Z, mu[:, None]], axis=1)
            W = W * np.where(mu > 0, _poly(fs[k][0], mu), _poly(fs[k][1], mu))
            continue
        splits = [np.broadcast_to(_BASE, (len(mu), len(_BASE))), (-mu / s)[:, None]]
        for j in range(k + 1, d):
            c, r = regress(j, k)
            alpha = Z @ c[:k] + c[k] * mu
            beta = c[k] * s
            if abs(beta) < 1e-300:
                continue
            u0 = -alpha / beta
            width = r / abs(beta)
            splits.append(u0[:, None])
            if width < 1.0:
                splits.append(u0[:, None] + width * np.concatenate([_GEO, -_GEO])[None, :])
        S = np.sort(np.clip(np.concatenate(splits, axis=1), -12.0, 12.0), axis=1)
        lo, hi = S[:, :-1], S[:, 1:]
        u = (0.5 * (lo + hi))[..., None] + (0.5 * (hi - lo))[..., None] * x
        wu = (0.5 * (hi - lo))[..., None] * w * np.exp(-0.5 * u * u) / SQ2PI
        z = mu[:, None, None] + s * u
        fz = np.where(z > 0, _poly(fs[k][0], z), _poly(fs[k][1], z))
        W = (W[:, None, None] * wu * fz).reshape(-1)
        Z = np.concatenate([np.repeat(Z, u.shape[1] * points, axis=0), z.reshape(-1, 1)], axis=1)
        keep = W != 0
        Z, W = Z[keep], W[keep]


RELU = ((0.0, 1.0), (0.0,))
STEP = ((1.0,), (0.0,))
ABS = ((0.0, 1.0), (0.0, -1.0))
LEAKY = ((0.0, 1.0), (0.0, 0.1))
ONE = ((1.0,), (1.0,))
#: the same functions as SymPy strings (variable X)
EXPR = {RELU: "Max(0, X)", STEP: "Heaviside(X)", ABS: "Abs(X)", LEAKY: "Max(X, X/10)", ONE: "1"}


def _covariance(d, seed, kind="generic", eps=1e-3):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((d, d + 1))
    if kind == "parallel":  # the last two nearly parallel
        A[-1] = A[-2] + eps * A[-1]
    elif kind == "antiparallel":
        A[-1] = -A[-2] + eps * A[-1]
    return A @ A.T


# ---------------------------------------------------------------------------------------------
# the moments themselves
# ---------------------------------------------------------------------------------------------

def test_half_moments_against_quadrature():
    for k in range(7):
        for v in (0.3, 2.0):
            ref = integrate.quad(lambda x: x ** k * np.exp(-x * x / (2 * v)) / np.sqrt(2 * np.pi * v),
                                 0, np.inf, epsabs=1e-14, epsrel=1e-13)[0]
            assert abs(half_moment(k, v) - ref) <= 1e-12 * max(1.0, ref)
    assert half_moment(0, 0.0) == 0.5


def _adaptive_pair(f, g, K):
    """⟨f(z1) g(z2)⟩ by scipy's adaptive quad over z1 = sqrt(K11) u, z2 given z1 in closed form
    (:func:`_inner`); break points at the kink u = 0, graded around it on the scale of z2's
    conditional spread (where the inner function steps for a nearly (anti)parallel pair)."""
    s1 = np.sqrt(K[0, 0])
    c = K[0, 1] / K[0, 0]
    r = np.sqrt(max(K[1, 1] - K[0, 1] * c, 0.0))

    def h(u):
        z1 = s1 * u
        fz = _poly(f[0], z1) if z1 > 0 else _poly(f[1], z1)
        return fz * float(_inner(g, np.array([c * z1]), r)[0]) * np.exp(-0.5 * u * u) / SQ2PI

    width = r / max(abs(c) * s1, 1e-300)
    pts = sorted({0.0} | {sg * width * t for t in _GEO for sg in (1, -1) if width * t < 12})
    edges = [-12.0] + pts + [12.0]
    return sum(integrate.quad(h, a, b, epsabs=1e-14, epsrel=1e-13, limit=200)[0]
               for a, b in zip(edges[:-1], edges[1:]))


@pytest.mark.parametrize("rho", [0.3, -0.7, 0.999999, -0.999999, 1.0, -1.0, 0.0])
def test_quadrant_moments_against_adaptive_quadrature(rho):
    A, B = 1.7, 0.6
    C = rho * np.sqrt(A * B)
    K = np.array([[A, C], [C, B]])
    M = quadrant_moments(np.array(A), np.array(B), np.array(C), 4)
    for m in range(5):
        for k in range(5):
            ref = _adaptive_pair(((0.0,) * m + (1.0,), (0.0,)), ((0.0,) * k + (1.0,), (0.0,)), K)
            assert abs(float(M[m][k]) - ref) <= 1e-11 * max(1.0, abs(ref)), (m, k, M[m][k], ref)
            # the composite rule used for 3 and 4 variables agrees as well
            gl = _reference([((0.0,) * m + (1.0,), (0.0,)), ((0.0,) * k + (1.0,), (0.0,))], K)
            assert abs(gl - ref) <= 1e-11 * max(1.0, abs(ref)), (m, k, gl, ref)


@pytest.mark.parametrize("d,kind", [(3, "generic"), (3, "parallel"), (3, "antiparallel"),
                                    (4, "generic"), (4, "parallel")])
def test_orthant_moments_against_nested_quadrature(d, kind):
    K = _covariance(d, 7 + d, kind)
    M = orthant_moments(K, (2,) + (1,) * (d - 1))
    for m in [(0,) * d, (1,) * d, (2,) + (1,) * (d - 1), (0, 1) + (0,) * (d - 2)]:
        fs = [((0.0,) * e + (1.0,), (0.0,)) for e in m]
        ref = _reference(fs, K)
        tol = 1e-8 if d == 4 else 1e-10
        assert abs(float(M[m]) - ref) <= tol * max(1.0, abs(ref)), (m, M[m], ref)


def test_orthant_probability_four_variables_converged_and_symmetric():
    """The path integral against a much finer rule, on generic, nearly singular and singular
    correlations (the grading toward the end of the path), and invariant under relabelling."""
    rng = np.random.default_rng(3)
    Ks = []
    for n in range(60):
        A = rng.standard_normal((4, 4))
        if n % 3 == 1:
            A[3] = A[0] + A[1] + A[2] + 10.0 ** rng.uniform(-7, -1) * A[3]
        elif n % 3 == 2:
            A = A[:, :3]  # rank 3
        Ks.append(A @ A.T)
    Ks = np.array(Ks)
    fine = orthant_probability(Ks, nodes=24, panels=12)
    assert np.max(np.abs(orthant_probability(Ks) - fine)) < 1e-9
    perm = [2, 0, 3, 1]
    assert np.max(np.abs(orthant_probability(Ks[:, perm][:, :, perm]) - orthant_probability(Ks))) < 1e-12
    # the limits: independent variables 1/16; z4 = z3 (the 3-D probability of the others)
    assert abs(float(orthant_probability(np.eye(4))) - 1 / 16) < 1e-15


# ---------------------------------------------------------------------------------------------
# the orthant tier of gaussian_expectation
# ---------------------------------------------------------------------------------------------

def _expr(fs):
    return "*".join(f"({EXPR[f].replace('X', f'z{k + 1}')})" for k, f in enumerate(fs))


@pytest.mark.parametrize("fs", [(RELU, RELU), (ABS, STEP), (LEAKY, RELU),
                                (RELU, RELU, RELU), (ABS, LEAKY, STEP), (RELU, ONE, RELU),
                                (RELU, RELU, RELU, RELU), (LEAKY, ABS, STEP, RELU)])
def test_products_against_nested_quadrature(fs):
    d = len(fs)
    for kind in ("generic", "parallel", "antiparallel"):
        K = _covariance(d, 20 + d, kind)
        v = gaussian_expectation(_expr(fs), K)
        ref = _reference(list(fs), K)
        # two factors of the arc-cosine family (ReLU, leaky ReLU) have a closed form
        assert v.method.startswith(("exact: orthant moments", "closed form"))
        # within the stated error (which grows as 1/λ for nearly dependent variables: the
        # Schur complements of the recursion cancel), and that is small
        assert abs(float(v) - ref) <= max(v.error, 1e-13), (fs, kind, float(v), ref, v.error)
        assert v.error <= (1e-10 if kind == "generic" else 1e-7), (fs, kind, v.error)


def test_polynomial_times_relu_and_batches():
    """ReLU times monomials (the moments of the derivative-free form) on a batch, one element
    of which is a pair at ρ = 1 (the diagonal) and one at ρ = −1."""
    rng = np.random.default_rng(1)
    Ks = [(lambda A: A @ A.T)(rng.standard_normal((2, 3))) for _ in range(3)]
    Ks += [np.array([[2.0, 1.0], [1.0, 0.5]]), np.array([[2.0, -1.0], [-1.0, 0.5]])]
    Ks = np.array(Ks)
    v = gaussian_expectation("z1**2*Max(0, z1)*Max(0, z2)*z2", Ks)
    for K, got in zip(Ks, v.value):
        ref = _reference([((0.0, 0.0, 0.0, 1.0), (0.0,)), ((0.0, 0.0, 1.0), (0.0,))], K)
        assert abs(got - ref) <= 1e-10 * max(1.0, abs(ref))


def test_nearly_singular_covariances_go_to_the_quadrature():
    K = _covariance(3, 5, "parallel", eps=1e-7)  # the last pair: a 2×2 minor ~ 1e-14
    v = gaussian_expectation("Max(0, z1)*Max(0, z2)*Max(0, z3)", K)
    assert "nearly singular" in v.method and "quadrature" in v.method
    ref = _reference([RELU, RELU, RELU], K)
    assert abs(float(v) - ref) <= 1e-6 * max(1.0, abs(ref))


def test_other_integrands_are_not_taken():
    K = _covariance(2, 1)
    for f in ("Max(0, z1 - 1)*Max(0, z2)", "tanh(z1)*Max(0, z2)", "Max(0, z1 + z2)"):
        assert not gaussian_expectation(f, K, tol=1e-4).method.startswith("exact: orthant")


def test_the_flag_restores_the_quadrature(monkeypatch):
    K = _covariance(3, 2)
    f = "Max(0, z1)*Max(0, z2)*Max(0, z3)"
    exact = gaussian_expectation(f, K)
    monkeypatch.setattr(gaussian, "_ORTHANT", False)
    quad = gaussian_expectation(f, K)
    assert quad.method.startswith("quadrature")
    assert abs(float(exact) - float(quad)) <= 10 * quad.error


# ---------------------------------------------------------------------------------------------
# the whole route: predict's K and V for ReLU against the quadrature route
# ---------------------------------------------------------------------------------------------

def test_relu_vertex_of_four_inputs_against_the_quadrature_route(monkeypatch):
    """V of ReLU (4 inputs, depth 3: components with 3 and 4 distinct samples) by the exact
    moments against the previous route (kink-aware quadrature; its own stated error bounds the
    difference, about 1e-7 relative: the 4-D quadrature resolves no better)."""
    spec = derive.MLP(3, 64, "relu", 0.0, 2.0)
    X = np.random.default_rng(0).standard_normal((4, 3))
    exact = iterate_mlp(spec, X, 1, targets=("K", "V"))
    with monkeypatch.context() as m:
        m.setattr(gaussian, "_ORTHANT", False)
        quad = iterate_mlp(spec, X, 1, targets=("K", "V"))
    assert exact["error"] < 1e-8
    for l in (2, 3):
        np.testing.assert_allclose(exact["K"][l], quad["K"][l], rtol=1e-12, atol=0)
        a, b = exact["V"][l], quad["V"][l]
        scale = float(np.max(np.abs(b)))
        assert scale > 1e-2  # not a comparison of zeros
        assert np.max(np.abs(a - b)) <= max(50 * quad["error"], 1e-9) * max(1.0, scale)
        assert np.max(np.abs(a - b)) <= 1e-6 * scale
    # the components with four distinct samples are among those compared
    assert abs(exact["V"][3][0, 1, 2, 3]) > 0


def test_an_error_estimate_above_the_tolerance_goes_to_the_quadrature():
    K = _covariance(3, 23, "parallel")  # stated error about 1e-8 (nearly parallel pair)
    f = "Max(0, z1)*Max(0, z2)*Max(0, z3)"
    loose = gaussian_expectation(f, K)
    assert loose.method == "exact: orthant moments" and 1e-10 < loose.error < 1e-7
    tight = gaussian_expectation(f, K, tol=1e-10)
    assert "nearly singular" in tight.method and tight.error <= 1e-10
    assert abs(float(tight) - float(loose)) <= loose.error
