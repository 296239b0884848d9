"""Criticality: critical (C_b, C_W), χ_∥ and χ_⊥, universality classes (THEORY §4, §5)."""
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
    # THEORY §4: tanh at K = 1: χ_∥ ≈ 0.182, χ_⊥ ≈ 0.464
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
