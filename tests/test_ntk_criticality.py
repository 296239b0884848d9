"""NTK criticality (derive.ntk_criticality, PDLT ch. 9): the large-depth laws derived from the
single-input recursions agree with a fit to the iterated recursions, with closed forms written
by hand here, and the derived learning-rate scaling makes Θ^{(L)} depth-independent.

Tolerances (fits over ℓ = depth/4 … depth, corrections O(log ℓ/ℓ, 1/ℓ, 1/ℓ²) fitted
alongside): scale-invariant σ, whose recursions are exact polynomials in ℓ: exponents to
1e-6, coefficients to 1e-9 relative; K* = 0 class at depth 400: exponents to 2e-3,
coefficients to 5e-4 relative (what is seen: ≤ 1e-4).
"""
from __future__ import annotations


import numpy as np
import pytest
import sympy as sp

import derive
from derive.numeric.ntk_criticality import (ELL, K_STAR, LAMBDA_B, LAMBDA_W, Average,
                                            single_input_recursions)

import ntk_reference as _ref  # registered by conftest.py

RATIOS = ("V/(nK²)", "A/(nΘ²)", "B/(nΘ²)", "D/(nKΘ)", "F/(nKΘ)")


@pytest.fixture(scope="module")
def relu():
    return derive.ntk_criticality("relu")


@pytest.fixture(scope="module")
def tanh():
    return derive.ntk_criticality("tanh")


def _agree(check, exp_tol, coef_tol):
    for r in check.rows:
        assert abs(r["fitted_exponent"] - r["exponent"]) < exp_tol, r
        assert r["relative_difference"] < coef_tol, r


# -- the laws against a numerical fit --------------------------------------------------------

def test_relu_laws_and_fit(relu):
    laws = relu.laws
    assert relu.universality_class == "scale-invariant"
    # Θ ∝ ℓ with the rates fixed (χ_⊥ = 1), every ratio ∝ ℓ/n
    assert laws["Theta"].exponent == 1
    assert sp.simplify(laws["Theta"].coefficient - (LAMBDA_B + LAMBDA_W * K_STAR / 2)) == 0
    assert all(laws[k].exponent == 1 and laws[k].per_width for k in RATIOS)
    assert laws["B/(nΘ²)"].coefficient == sp.Rational(2, 3)
    assert laws["F/(nKΘ)"].coefficient == 1
    assert laws["V/(nK²)"].coefficient == 5
    # at λ_b = λ_W = K* = 1 (the values)
    assert laws["A/(nΘ²)"].value == pytest.approx(17 / 27, rel=1e-14)
    assert laws["D/(nKΘ)"].value == pytest.approx(4 / 3, rel=1e-14)
    check = relu.check(depth=400)
    assert len(check.rows) == 7
    _agree(check, 1e-6, 1e-9)


@pytest.mark.parametrize("name", ["tanh", "erf"])
def test_k_star_zero_laws_and_fit(name, tanh):
    r = tanh if name == "tanh" else derive.ntk_criticality(name)
    assert r.universality_class == "K*=0"
    laws = r.laws
    assert r.info["kappa"] == sp.Rational(1, 2)            # K ≈ 1/(2ℓ): a₁ = −2
    assert r.info["p_perp"] == 1 and r.info["p_par"] == 2  # χ_⊥ ≈ 1 − 1/ℓ, χ_∥ ≈ 1 − 2/ℓ
    assert (laws["K"].exponent, laws["K"].coefficient) == (-1, sp.Rational(1, 2))
    assert laws["Theta"].exponent == 1 and laws["Theta"].coefficient == LAMBDA_B / 2
    expected = {"V/(nK²)": sp.Rational(2, 3), "A/(nΘ²)": sp.Rational(1, 15),
                "B/(nΘ²)": sp.Rational(1, 5), "D/(nKΘ)": sp.Rational(-1, 6),
                "F/(nKΘ)": sp.Rational(1, 5)}
    for k, c in expected.items():
        assert (laws[k].exponent, laws[k].coefficient) == (1, c), laws[k]
    check = r.check(depth=400)
    assert len(check.rows) == 7
    _agree(check, 2e-3, 5e-4)


def test_tanh_without_bias_rate():
    """λ_b = 0: Θ tends to a constant; the laws whose leading terms cancel (D, then A) are
    reported as not determined, with the reason, and not fitted."""
    r = derive.ntk_criticality("tanh", lambda_b=0.0)
    laws = r.laws
    assert (laws["Theta"].exponent, laws["Theta"].coefficient) == (0, LAMBDA_W / 2)
    assert laws["B/(nΘ²)"].coefficient == sp.Rational(1, 3)
    assert laws["F/(nKΘ)"].coefficient == sp.Rational(1, 4)
    assert not laws["D/(nKΘ)"].determined and "cancel" in laws["D/(nKΘ)"].note
    assert not laws["A/(nΘ²)"].determined and "D" in laws["A/(nΘ²)"].note
    check = r.check(depth=400)
    assert {row["law"] for row in check.rows} == {"K", "Theta", "V/(nK²)", "B/(nΘ²)", "F/(nKΘ)"}
    _agree(check, 2e-3, 5e-4)


# -- coefficients written by hand ----------------------------------------------------------------

def test_relu_closed_forms_by_hand(relu):
    """ReLU at C_W = 2, C_b = 0, one input: K = K*, ⟨σ'σ'⟩ = ⟨σ'⁴⟩ = 1/2, ⟨σ²⟩ = K/2,
    ⟨σ²σ'²⟩ = K/2, ⟨σ⁴⟩ = 3K²/2, ⟨∂²σ²⟩ = 1, ⟨∂²σ'²⟩ = 0, χ_∥ = χ_⊥ = 1.  So
    Θ' = λ_b + λ_W K/2 + Θ with Θ^{(1)} = λ_b + λ_W K/2: Θ = cℓ, c = λ_b + λ_W K/2;
    B' = C_W²⟨σ'⁴⟩Θ² + χ_⊥²B = 2c²ℓ² + B, B^{(1)} = 0: B = 2c² Σ_{k<ℓ} k²;
    F' = C_W²⟨σ²σ'²⟩Θ + χ_∥²F = 2Kcℓ + F: F = Kc ℓ(ℓ−1);
    V' = C_W²(⟨σ⁴⟩ − ⟨σ²⟩²) + V = 5K² + V: V = 5(ℓ−1)K²;
    D' = χ_∥χ_⊥D + C_W²(⟨σ²σ'²⟩ − ⟨σ²⟩⟨σ'²⟩)Θ + C_Wλ_W(⟨σ⁴⟩ − ⟨σ²⟩² + ¼⟨∂²σ²⟩²V)
       = D + Kcℓ + λ_W(5K²/2 + V/2)."""
    c, K, l, k = LAMBDA_B + LAMBDA_W * K_STAR / 2, K_STAR, ELL, sp.Symbol("k", integer=True)
    theta = c * l
    B = 2 * c ** 2 * (l - 1) * l * (2 * l - 1) / 6
    F = K * c * l * (l - 1)
    V = 5 * (l - 1) * K ** 2
    D = sp.summation(K * c * k + LAMBDA_W * (5 * K ** 2 / 2 + 5 * (k - 1) * K ** 2 / 2),
                     (k, 1, l - 1))
    ex = relu.info["exact"]
    for name, mine in (("Theta", theta), ("B", B), ("F", F), ("V", V), ("D", D)):
        assert sp.simplify(ex[name] - mine) == 0, name
    # the large-ℓ coefficients: B/Θ² → (2/3)ℓ, F/(KΘ) → ℓ, D/(KΘ) → (1/2 + 5λ_W K/(4c))ℓ
    assert sp.limit(B / theta ** 2 / l, l, sp.oo) == relu.laws["B/(nΘ²)"].coefficient
    assert sp.limit(F / (K * theta) / l, l, sp.oo) == relu.laws["F/(nKΘ)"].coefficient
    assert sp.simplify(sp.Rational(1, 2) + 5 * LAMBDA_W * K / (4 * c)
                       - relu.laws["D/(nKΘ)"].coefficient) == 0


def test_tanh_coefficient_by_hand(tanh):
    """tanh at C_W = 1: tanh z = z − z³/3 + …, so ⟨tanh²⟩_K = K − 2K² + …, ⟨tanh'²⟩ = 1 − 2K
    + …, ⟨tanh'⁴⟩ = 1 + O(K).  K' = K − 2K² gives K ≈ 1/(2ℓ); χ_⊥ ≈ 1 − 1/ℓ.  Θ' = λ_b +
    (1 − 1/ℓ)Θ + O(1/ℓ): Θ ≈ θℓ with θ = λ_b − θ, θ = λ_b/2.  B' = (1 − 1/ℓ)²B + Θ²: with
    B ≈ bℓ³, 3b = −2b + θ², b = θ²/5, so B/(nΘ²) ≈ ℓ/(5n)."""
    theta = LAMBDA_B / 2
    b = theta ** 2 / 5
    assert tanh.laws["Theta"].coefficient == theta
    assert tanh.laws["B/(nΘ²)"].coefficient == sp.simplify(b / theta ** 2) == sp.Rational(1, 5)


def test_single_input_recursions_have_the_hand_forms():
    r = single_input_recursions()
    s, z = sp.Function("sigma"), sp.Symbol("z", real=True)
    C_W, Theta, B, F = sp.symbols("C_W Theta B F")
    d = sp.Derivative(s(z), z)
    chi_perp = C_W * Average(d ** 2, 0)
    assert sp.expand(r["B"] - (chi_perp ** 2 * B + C_W ** 2 * Average(d ** 4, 0) * Theta ** 2)) == 0
    chi_par = C_W * Average(s(z) * d, 1)        # C_W ⟨∂(σσ')⟩ = χ_∥
    assert sp.expand(r["F"] - (chi_par ** 2 * F + C_W ** 2 * Average(s(z) ** 2 * d ** 2, 0)
                               * Theta)) == 0
    assert set(r) == {"K", "Theta", "V", "A", "B", "D", "F"}


# -- the learning rates ----------------------------------------------------------------------------

def test_rates_relu_exact(relu):
    rates = relu.rates
    assert rates.exponents == {"lambda_b": -1, "lambda_W": -1} and rates.exact_for_all_L
    for scheme in ("depth", "equal"):
        chk = relu.rates_check((50, 100, 200), 0.7, 1.3, scheme)
        assert chk.limit == pytest.approx(0.7 + 1.3 / 2)
        assert np.allclose(chk.theta, chk.limit, rtol=1e-12, atol=0)
    # without the 1/L the NTK grows linearly with depth
    theta = [relu.iterate(L)["Theta"][-1] for L in (50, 100)]
    assert theta[1] / theta[0] == pytest.approx(2.0, rel=1e-12)


@pytest.mark.parametrize("name", ["tanh", "erf"])
def test_rates_k_star_zero_make_theta_depth_independent(name, tanh):
    r = tanh if name == "tanh" else derive.ntk_criticality(name)
    rates = r.rates
    assert rates.exponents == {"lambda_b": -1, "lambda_W": 0}
    c_sigma = sp.Rational(1, 2) if name == "tanh" else 2 / sp.pi   # σ'(0)² × κ
    assert sp.simplify(rates.theta_limit - (sp.Symbol("lambda_b_tilde", positive=True) / 2
                                            + sp.Symbol("lambda_W_tilde", positive=True) * c_sigma)) == 0
    for scheme, worst in (("depth", 0.02), ("equal", 0.01)):
        chk = r.rates_check((50, 100, 200), 1.0, 1.0, scheme)
        dev = np.abs(np.array(chk.theta) / chk.limit - 1)
        assert dev[-1] < worst, chk
        if scheme == "depth":     # approached like 1/L
            assert dev[0] > dev[1] > dev[2], chk
    # unscaled rates: Θ^{(L)} grows ∝ L (λ_b's contribution, L/2)
    th = r.iterate(200)["Theta"]
    assert th[199] / th[99] == pytest.approx(2.0, rel=0.02)


# -- against derive.predict, display, errors -------------------------------------------------------

@pytest.mark.parametrize("name", ["relu", "tanh", "erf"])
def test_iteration_equals_independent_reference(name, relu, tanh):
    """The single-input recursions iterated here (reduced from the derived layer step)
    against tests/ntk_reference.py (written by hand, validated by Monte Carlo), per-layer
    rates, 40 layers, equal widths."""
    r = {"relu": relu, "tanh": tanh}.get(name) or derive.ntk_criticality(name)
    L, G0 = 40, 0.8
    lb = np.linspace(0.5, 1.5, L)
    lw = np.linspace(2.0, 0.3, L)
    mine = r.iterate(L, lambda_b=lb, lambda_W=lw, G0=G0)
    ref = _ref.reference(name, L, [64] * (L - 1), r.criticality.C_b, r.criticality.C_W, lb, lw,
                         G0)
    for q in ("K", "Theta", "V", "A", "B", "D", "F"):
        theirs = np.array([ref[q][l] for l in range(1, L + 1)])
        np.testing.assert_allclose(mine[q], theirs, rtol=1e-10, atol=1e-14, err_msg=q)


@pytest.mark.slow
@pytest.mark.parametrize("name,C_W", [("relu", 2.0), ("erf", np.pi / 4)])
def test_iteration_equals_predict(name, C_W):
    """The single-input reduction iterated here is the project's evaluator of the same
    derived recursions (derive.predict, one input, equal widths)."""
    L = 6
    r = derive.ntk_criticality(name)
    p = derive.predict(derive.MLP(L, 50, name, 0.0, C_W, 0.7, 1.3), np.array([[1.1]]),
                       targets=["K", "Theta", "V", "A", "B", "D", "F"], warn_threshold=1e9)
    mine = r.iterate(L, lambda_b=0.7, lambda_W=1.3, G0=1.21)
    for q in ("K", "Theta", "V", "A", "B", "D", "F"):
        theirs = np.array([np.ravel(getattr(p, q)[l])[0] for l in range(1, L + 1)])
        np.testing.assert_allclose(mine[q], theirs, rtol=1e-9, atol=1e-12, err_msg=q)


def test_display(relu, tanh):
    text = repr(tanh)
    assert "K*=0 class" in text and "A/(nΘ²) ≈ (1/15) · ℓ/n" in text
    assert "λ_b = λ̃_b/L, λ_W = λ̃_W" in text
    assert "<table>" in relu._repr_html_() and "B/(nΘ²)" in relu._repr_html_()
    chk = relu.check(depth=60)
    assert "fitted" in repr(chk) and "<table>" in chk._repr_html_()
    assert chk.row("Theta")["coefficient"] == pytest.approx(1.5)
    assert "ntk_criticality" in derive.__all__ and "NTKCriticality" in derive.__all__


@pytest.mark.parametrize("call,match", [
    (lambda: derive.ntk_criticality("sigmoid"), "no critical initialisation"),
    (lambda: derive.ntk_criticality("gelu"), "K\\*>0"),
    (lambda: derive.ntk_criticality("Heaviside(z)"), "infinite"),
    (lambda: derive.ntk_criticality("relu", lambda_b=-1.0), "lambda_b"),
    (lambda: derive.ntk_criticality("relu", lambda_b=0, lambda_W=0), "both 0"),
    (lambda: derive.ntk_criticality("relu", K_star=0.0), "K_star"),
    (lambda: derive.ntk_criticality("relu", lambda_W="1"), "lambda_W"),
])
def test_errors(call, match):
    with pytest.raises(derive.DeriveError, match=match):
        call()


def test_method_errors(relu):
    with pytest.raises(derive.DeriveError, match="depth"):
        relu.check(depth=3)
    with pytest.raises(derive.DeriveError, match="window"):
        relu.check(depth=100, window=(90, 95))
    with pytest.raises(derive.DeriveError, match="scheme"):
        relu.rates_check((10,), scheme="bogus")
    with pytest.raises(derive.DeriveError, match="lambda_b"):
        relu.iterate(5, lambda_b=[1.0, 2.0])
    with pytest.raises(derive.DeriveError, match="G0"):
        relu.iterate(5, G0="x")


def test_a_kernel_criticality_can_be_passed_on():
    via = derive.ntk_criticality(derive.criticality("relu"), lambda_b=0.5, lambda_W=2.0)
    direct = derive.ntk_criticality("relu", lambda_b=0.5, lambda_W=2.0)
    assert str(via) == str(direct)
    with pytest.raises(derive.DeriveError, match="residual"):
        derive.ntk_criticality(derive.criticality("tanh", xi=0.5, gamma=0.5))
