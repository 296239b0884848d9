"""Criticality: critical (C_b, C_W), χ_∥ and χ_⊥, universality classes (docs/conventions.md §4, §5)."""
import math
import warnings

import numpy as np
import pytest

import derive
from derive.activations.catalogue import load_rule_file
from derive.activations.criticality import NoCriticalPoint, chi_parallel, chi_perp, fixed_points


def _gh(f, K, points=None):
    """<f(z)> over N(0, K) by adaptive scipy quadrature, written here (test-only reference)."""
    from scipy.integrate import quad

    s = math.sqrt(K)
    val, err = quad(lambda t: float(f(s * t)) * math.exp(-t * t / 2) / math.sqrt(2 * math.pi),
                    -40, 40, points=[0.0], limit=400, epsabs=1e-14, epsrel=1e-13)
    assert err < 1e-11
    return val


@pytest.mark.parametrize("act, C_W", [("relu", 2.0), ("tanh", 1.0), ("erf", math.pi / 4),
                                      ("linear", 1.0), ("sin", 1.0)])
def test_critical_points_of_the_issue(act, C_W):
    c = derive.criticality(act)
    assert c.C_b == 0.0
    assert c.C_W == pytest.approx(C_W, rel=1e-14)
    assert c.chi_par == pytest.approx(1.0, abs=1e-9)
    assert c.chi_perp == pytest.approx(1.0, abs=1e-9)


def test_classes_and_exact_values():
    assert derive.criticality("relu").universality_class == "scale-invariant"
    assert derive.criticality("tanh").universality_class == "K*=0"
    erf = derive.criticality("erf")
    assert str(erf.exact[1]) == "pi/4" and erf.K_star == 0.0
    assert derive.criticality("tanh").a1 == -2.0      # K ≈ 1/(2ℓ) at large depth (PDLT §5.3)
    leaky = derive.criticality("3*Max(0, z) - Max(0, -z)")  # a user string: 2/(9 + 1)
    assert leaky.universality_class == "scale-invariant" and leaky.C_W == pytest.approx(0.2)


@pytest.mark.parametrize("name", ["relu", "leaky_relu", "linear", "tanh", "erf", "sin"])
def test_class_agrees_with_the_rules_table(name):
    # the class is computed, the rules table states it independently
    assert derive.criticality(name).universality_class == \
        load_rule_file(f"activations/{name}")["universality_class"]


def test_chis_against_theory_values_and_independent_quadrature():
    # docs/conventions.md §4: tanh at K = 1: χ_∥ ≈ 0.182, χ_⊥ ≈ 0.464
    assert chi_parallel("tanh", 1.0)[0] == pytest.approx(0.182, abs=5e-4)
    assert chi_perp("tanh", 1.0)[0] == pytest.approx(0.464, abs=5e-4)
    for K in (0.3, 1.0, 2.5):
        ref_par = _gh(lambda x: 1 / np.cosh(x) ** 4 - 2 * np.tanh(x) ** 2 / np.cosh(x) ** 2, K)
        assert chi_parallel("tanh", K, C_W=1.3)[0] == pytest.approx(1.3 * ref_par, abs=1e-10)
        assert chi_perp("tanh", K)[0] == pytest.approx(_gh(lambda x: 1 / np.cosh(x) ** 4, K), abs=1e-10)


def test_chis_are_derivatives_of_the_derived_kernel_recursion():
    # χ_∥ = ∂K^{(2)}/∂K^{(1)} on one input, χ_⊥ = ∂K^{(2)}_{12}/∂K^{(1)}_{12} at coinciding inputs,
    # by finite differences of predict (the derived recursions), erf at C_W = 1.1
    spec = derive.MLP(2, 8, "erf", 0.0, 1.1)
    h = 1e-5

    def K2(gram):
        X = np.linalg.cholesky(np.asarray(gram, dtype=float) / 1.1 + 1e-300 * np.eye(len(gram)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return derive.predict(spec, X * np.sqrt(len(gram)), order=0, targets=("K",)).K[2]

    K = 0.8
    par = (K2([[K + h]])[0, 0] - K2([[K - h]])[0, 0]) / (2 * h)
    assert chi_parallel("erf", K, C_W=1.1)[0] == pytest.approx(par, rel=1e-7)
    perp = (K2([[K, K - h], [K - h, K]])[0, 1] - K2([[K, K - 2 * h], [K - 2 * h, K]])[0, 1]) / h
    assert chi_perp("erf", K, C_W=1.1)[0] == pytest.approx(perp, rel=1e-4)


@pytest.mark.parametrize("act, K_star, C_b, C_W", [("swish", 14.3, 0.555, 1.988),
                                                   ("gelu", 3.56, 0.173, 1.983)])
def test_nonzero_fixed_point_class(act, K_star, C_b, C_W):
    # PDLT §5.3.4 (SWISH, GELU: criticality at K* > 0); checked here by independent quadrature
    c = derive.criticality(act)
    assert c.universality_class == "K*>0"
    assert c.K_star == pytest.approx(K_star, rel=5e-3)
    assert c.C_b == pytest.approx(C_b, rel=5e-3) and c.C_W == pytest.approx(C_W, rel=5e-3)
    f = c.activation.numpy(0)
    df = c.activation.numpy(1)
    assert c.C_b + c.C_W * _gh(lambda x: f(x) ** 2, c.K_star) == pytest.approx(c.K_star, rel=1e-8)
    assert c.C_W * _gh(lambda x: df(x) ** 2, c.K_star) == pytest.approx(1.0, abs=1e-8)
    assert c.chi_par == pytest.approx(1.0, abs=1e-8)


def test_no_critical_point_and_bad_input():
    with pytest.raises(NoCriticalPoint, match="no critical initialisation"):
        derive.criticality("sigmoid")
    with pytest.raises(NoCriticalPoint, match="no critical initialisation"):
        derive.criticality("softplus")
    with pytest.raises(derive.DeriveError, match="unknown activation"):
        derive.criticality("tanhh")
    with pytest.raises(derive.DeriveError, match="variances"):
        fixed_points("tanh", -1.0, 1.0)


def test_fixed_points():
    # tanh at C_b = 0.3, C_W = 1.5: one K* > 0, checked by independent quadrature
    (K,) = fixed_points("tanh", 0.3, 1.5)
    assert 0.3 + 1.5 * _gh(lambda x: np.tanh(x) ** 2, K) == pytest.approx(K, abs=1e-10)
    assert fixed_points("tanh", 0.0, 0.5) == [0.0]      # only K* = 0 (χ_∥ < 1: it attracts)


def test_fixed_points_no_duplicates_and_large_variances():
    # a crossing next to a touching-point probe was listed twice; χ at large K kept a fixed
    # absolute quadrature tolerance (the integrand grows like K²) and failed
    roots = fixed_points("tanh", 0.0, 2.0)
    assert roots[0] == 0.0 and len(roots) == 2
    assert 2.0 * _gh(lambda x: np.tanh(x) ** 2, roots[1]) == pytest.approx(roots[1], abs=1e-10)
    assert chi_parallel("relu", 100.0, 2.0)[0] == pytest.approx(1.0, rel=1e-10)
    assert chi_perp("relu", 100.0, 2.0)[0] == pytest.approx(1.0, rel=1e-10)
    assert np.isfinite(chi_parallel("swish", 100.0)[0])


# --- residual layers z' = ξ z + γ [b + W σ(z)] (docs/conventions.md §8) -----------------------------------

def _res_map(f, K, C_b, C_W, xi, gamma):
    """The residual single-input kernel map ξ²K + γ²(C_b + C_W⟨σ²⟩_K), by scipy quadrature."""
    return xi ** 2 * K + gamma ** 2 * (C_b + C_W * _gh(lambda x: f(x) ** 2, K))


def _res_map_two(f, K, K12, C_b, C_W, xi, gamma, n=160):
    """K'_{12} = ξ²K_{12} + γ²(C_b + C_W⟨σ(z1)σ(z2)⟩) for Var z1 = Var z2 = K, Cov = K12, by a
    product Gauss–Hermite rule (numpy only; test-only reference)."""
    t, w = np.polynomial.hermite_e.hermegauss(n)
    w = w / w.sum()
    rho = K12 / K
    u, v = np.meshgrid(t, t, indexing="ij")
    z1 = np.sqrt(K) * u
    z2 = np.sqrt(K) * (rho * u + np.sqrt(max(1 - rho ** 2, 0.0)) * v)
    avg = float(np.einsum("i,j,ij->", w, w, f(z1) * f(z2)))
    return xi ** 2 * K12 + gamma ** 2 * (C_b + C_W * avg)


@pytest.mark.parametrize("act", ["relu", "tanh", "erf"])
def test_residual_defaults_are_the_mlp(act):
    mlp, res = derive.criticality(act), derive.criticality(act, xi=0.0, gamma=1.0)
    assert res == mlp and res.exact == mlp.exact and (res.xi, res.gamma) == (0.0, 1.0)
    assert derive.critical_gamma(act, 0.0) == pytest.approx(1.0, rel=1e-15)


def test_residual_relu_and_tanh_critical_values():
    relu = derive.criticality("relu", xi=0.6, gamma=1.0)
    assert relu.universality_class == "scale-invariant" and relu.C_b == 0.0
    assert relu.C_W == pytest.approx(2 * (1 - 0.36), rel=1e-14)
    assert relu.chi_par == pytest.approx(1.0, abs=1e-10) and relu.chi_perp == pytest.approx(1.0, abs=1e-10)
    import sympy as sp
    exact = derive.criticality("relu", xi=sp.Rational(3, 5), gamma=sp.Rational(1, 2))
    assert exact.exact[1] == sp.Rational(128, 25)              # 2 (1 − 9/25) · 4
    for gamma in (1.0, 0.5, 0.3):
        tanh = derive.criticality("tanh", xi=0.8, gamma=gamma)
        assert tanh.universality_class == "K*=0" and tanh.C_b == 0.0 and tanh.K_star == 0.0
        assert tanh.C_W * gamma ** 2 == pytest.approx(0.36, rel=1e-13)
        assert tanh.chi_par == pytest.approx(1.0, abs=1e-12) and tanh.chi_perp == pytest.approx(1.0, abs=1e-12)
        assert tanh.a1 == pytest.approx(-2.0 * 0.36)            # K ≈ 1/(2 (1 − ξ²) ℓ)
    assert derive.critical_gamma("tanh", 0.8) == pytest.approx(0.6, rel=1e-14)
    assert derive.critical_gamma("tanh", 0.8, C_W=0.36) == pytest.approx(1.0, rel=1e-14)
    assert derive.critical_gamma("relu", 0.6, C_W=1.0) == pytest.approx(np.sqrt(2 * 0.64), rel=1e-14)
    erf = derive.criticality("erf", xi=0.5, gamma=2)
    assert erf.C_W == pytest.approx(math.pi / 4 * 0.75 / 4, rel=1e-14)


def test_residual_refuses_no_critical_point():
    for act in ("relu", "tanh", "erf"):
        for xi in (1.0, -1.0, 1.3):
            with pytest.raises(NoCriticalPoint, match=r"ξ² = .* ≥ 1 has no critical"):
                derive.criticality(act, xi=xi)
            with pytest.raises(derive.DeriveError, match="no critical"):
                derive.critical_gamma(act, xi)
    with pytest.raises(derive.DeriveError, match="γ ≠ 0"):
        derive.criticality("tanh", xi=0.5, gamma=0.0)
    with pytest.raises(derive.DeriveError, match="C_W must be"):
        derive.critical_gamma("tanh", 0.5, C_W=-1.0)
    for bad in (None, "a", 1j, [0.5]):
        with pytest.raises(derive.DeriveError, match="must be a real number"):
            derive.criticality("tanh", xi=bad)
        with pytest.raises(derive.DeriveError, match="must be a real number"):
            derive.critical_gamma("tanh", bad)
    with pytest.raises(derive.DeriveError, match="C_W must be"):
        derive.critical_gamma("tanh", 0.5, C_W="x")


def test_residual_nonzero_fixed_point_class():
    # K*>0 (GELU): the same K*, (C_b, C_W) scaled by (1 − ξ²)/γ²; K* is a fixed point of the
    # residual map with χ_∥ = χ_⊥ = 1 (independent quadrature)
    mlp, res = derive.criticality("gelu"), derive.criticality("gelu", xi=0.5, gamma=0.7)
    assert res.K_star == mlp.K_star
    assert res.C_W == pytest.approx(mlp.C_W * 0.75 / 0.49, rel=1e-14)
    assert res.C_b == pytest.approx(mlp.C_b * 0.75 / 0.49, rel=1e-14)
    f, df = res.activation.numpy(0), res.activation.numpy(1)
    K = res.K_star
    assert _res_map(f, K, res.C_b, res.C_W, 0.5, 0.7) == pytest.approx(K, rel=1e-8)
    assert 0.25 + 0.49 * res.C_W * _gh(lambda x: df(x) ** 2, K) == pytest.approx(1.0, abs=1e-8)
    assert res.chi_par == pytest.approx(1.0, abs=1e-8) and res.chi_perp == pytest.approx(1.0, abs=1e-8)


@pytest.mark.parametrize("act, K", [("tanh", 0.5), ("tanh", 1.7), ("relu", 0.8), ("erf", 1.2)])
def test_residual_chis_are_finite_differences_of_the_kernel_map(act, K):
    # χ_∥ = ∂K'/∂K of ξ²K + γ²(C_b + C_W⟨σ²⟩_K); χ_⊥ = ∂K'_{12}/∂K_{12} at coinciding inputs,
    # both by finite differences of maps computed here with scipy/numpy quadrature
    xi, gamma, C_b, C_W = 0.6, 0.7, 0.2, 1.3
    f = derive.activation(act).numpy(0)
    h = 1e-4
    par = (_res_map(f, K + h, C_b, C_W, xi, gamma) - _res_map(f, K - h, C_b, C_W, xi, gamma)) / (2 * h)
    assert chi_parallel(act, K, C_W, xi=xi, gamma=gamma)[0] == pytest.approx(par, rel=1e-7)
    if act == "relu":
        # the kink makes the product rule converge slowly: ⟨σ'σ'⟩ = 1/2 at every K exactly
        assert chi_perp(act, K, C_W, xi=xi, gamma=gamma)[0] == pytest.approx(xi ** 2 + gamma ** 2 * C_W / 2, rel=1e-12)
        return
    h = 1e-3
    m = [_res_map_two(f, K, K - k * h, C_b, C_W, xi, gamma) for k in range(3)]
    perp = (3 * m[0] - 4 * m[1] + m[2]) / (2 * h)        # one-sided, second order
    assert chi_perp(act, K, C_W, xi=xi, gamma=gamma)[0] == pytest.approx(perp, rel=2e-5)


def test_residual_chis_against_predict_across_layers():
    # depth-2 ResMLP: K^{(1)} = C_b + C_W x·x/n₀ (layer 1 is the MLP's), K^{(2)} from the derived
    # residual recursion (predict, order 0); ∂K^{(2)}/∂K^{(1)} by varying the input scale
    C_b, C_W, xi, gamma = 0.1, 1.1, 0.6, 0.7
    spec = derive.ResMLP(2, 8, "tanh", C_b, C_W, xi=xi, gamma=gamma)
    h = 1e-5

    def K2(gram):
        X = np.linalg.cholesky(np.asarray(gram, dtype=float) / C_W + 1e-300 * np.eye(len(gram)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p = derive.predict(spec, X * np.sqrt(len(gram)), order=0, targets=("K",))
        return p.K[2]

    K = 0.8                                    # K^{(1)} = C_b + (gram entry)
    g = K - C_b
    par = (K2([[g + h]])[0, 0] - K2([[g - h]])[0, 0]) / (2 * h)
    assert chi_parallel("tanh", K, C_W, xi=xi, gamma=gamma)[0] == pytest.approx(par, rel=1e-7)
    perp = (K2([[g, g - h], [g - h, g]])[0, 1] - K2([[g, g - 2 * h], [g - 2 * h, g]])[0, 1]) / h
    assert chi_perp("tanh", K, C_W, xi=xi, gamma=gamma)[0] == pytest.approx(perp, rel=1e-4)
    # and at the critical point of ξ = 0.6, γ = 0.7 the map is marginal: χ = 1 at K → 0
    c = derive.criticality("tanh", xi=xi, gamma=gamma)
    assert chi_perp("tanh", 1e-6, c.C_W, xi=xi, gamma=gamma)[0] == pytest.approx(1.0, abs=1e-5)
