"""The O(1/n²) recursions (G2, V1, U) derived by the layer step at order 2, against the exact
finite-width statistics of deep linear networks, written here independently.

For σ(z) = z and C_b = 0, conditional on layer ℓ the preactivations of layer ℓ+1 are Gaussian
with variance Ĝ^{(ℓ+1)} = (C_W/n_ℓ) Σ_j z_j², and Σ_i z_i² = Ĝ χ²_{n} (a χ² variable with n
degrees of freedom, independent of Ĝ).  So for one input, with E[(χ²_n)^m] = n(n+2)…(n+2m−2),

    E[Ĝ^{(ℓ)m}] = (C_W |x|²/n_0)^m Π_{k=1}^{ℓ−1} C_W^m Π_{r<m} (1 + 2r/n_k),

and every statistic follows: E[z²] = E[Ĝ], κ4 across two neurons E[Ĝ²] − E[Ĝ]², the three-neuron
cumulant κ3(z_i², z_j², z_k²) = E[Ĝ³] − 3E[Ĝ²]E[Ĝ] + 2E[Ĝ]³.  Expanded in 1/n these give K,
G1 = G2 = 0, V, V1 and U at every depth; the derived recursions, iterated from layer 1, must
reproduce them exactly (rationals).
"""
from __future__ import annotations

import pytest
import sympy as sp

from derive import sample_indices
from derive.algebra.nearly_gaussian import evaluate_averages
import numpy as np

from derive import MLP
from derive.derivation.layerstep import WIDTH, WIDTH_PREV, cached_layer_step

n = sp.Symbol("n", positive=True)
CW = sp.Rational(3, 2)
X2 = sp.Rational(5, 4)  # |x|² / n_0


def exact(depth: int) -> dict:
    """K, G1, G2, V, V1, U of layer ``depth`` of a linear net (widths n), from the χ² moments."""
    def moment(m):
        out = (CW * X2) ** m
        for _ in range(depth - 1):
            out *= CW ** m * sp.Mul(*(1 + 2 * r / n for r in range(m)))
        return out

    g1, g2, g3 = moment(1), moment(2), moment(3)
    eps = sp.Symbol("eps")

    def coeffs(e):
        s = sp.series(sp.expand(e).subs(n, 1 / eps), eps, 0, 3).removeO()
        return [sp.expand(s).coeff(eps, k) for k in range(3)]

    metric = coeffs(g1)
    four = coeffs(g2 - g1 ** 2)
    six = coeffs(g3 - 3 * g2 * g1 + 2 * g1 ** 3)
    assert four[0] == 0 and six[0] == 0 and six[1] == 0
    return {"K": metric[0], "G1": metric[1], "G2": metric[2], "V": four[1], "V1": four[2],
            "U": six[2]}


@pytest.fixture(scope="module")
def step():
    # the quantities of one input (shared with derive.numeric.nnlo; cold: about 90 s here)
    from derive.numeric.nnlo import NNLO_NAMES

    return cached_layer_step(None, 2, frozenset(NNLO_NAMES))


@pytest.mark.slow
def test_second_order_quantities_are_derived(step):
    for name in ("G2", "V1", "U"):
        assert name in step.recursions
        assert step.recursions[name] != 0
    # U reads the six-point vertex and V's square, G2 reads U (the ∂⁶ term)
    labels = {str(t.base) for t in step.recursions["G2"].atoms(sp.Indexed)}
    assert {"G2", "V1", "U", "V", "G1"} <= labels


def _one_sample(expr, values, C_W):
    """A recursion at one input with σ(z) = z: every sample index the same, averages by Wick,
    layer ℓ's tensors by ``values``, C_b = 0, equal widths n."""
    from derive.activations.catalogue import activation
    from derive.architectures.forward import C_B
    from derive.architectures.forward import C_W as CW_SYMBOL
    from derive.derivation.specialise import specialise

    (a,) = sample_indices("alpha")
    e = specialise(expr, activation("linear"))
    e = e.xreplace({x: a for x in e.free_symbols if str(x).startswith("alpha")})
    e = evaluate_averages(e)
    e = e.xreplace({t: values[str(t.base)] for t in e.atoms(sp.Indexed)})
    return sp.expand(e.subs({C_B: 0, CW_SYMBOL: C_W, WIDTH: n, WIDTH_PREV: n}))


@pytest.mark.slow
def test_linear_network_matches_exact_statistics_to_second_order(step):
    values = exact(1)
    for depth in range(1, 5):
        want = exact(depth)
        for name in want:
            assert sp.simplify(values[name] - want[name]) == 0, (depth, name)
        values = {name: _one_sample(step.recursions[name], values, CW)
                  for name in ("K", "G1", "V", "G2", "V1", "U")}


@pytest.mark.slow
def test_single_input_evaluator(step):
    """derive.numeric.nnlo evaluates the same recursions numerically: for the linear net it
    gives the exact statistics; for tanh the second layer, whose inputs are exactly Gaussian,
    has G2 = V1 = 0, V = C_W² (⟨σ⁴⟩ − ⟨σ²⟩²) and U = C_W³ κ3(σ², σ², σ²), here by an
    independent quadrature (scipy's adaptive one)."""
    from scipy import integrate

    from derive.numeric.nnlo import single_input_nnlo

    lin = single_input_nnlo(MLP(4, 8, "linear", 0.0, float(CW)), np.array([1.5, 0.5]))  # |x|²/n_0 = X2
    for depth in (1, 2, 3, 4):
        for name, value in exact(depth).items():
            assert lin[depth][name] == pytest.approx(float(value), rel=1e-12, abs=1e-12), (depth, name)
    x = np.array([1.0, 0.5])  # |x|²/n_0 = 5/8
    spec = MLP(3, 16, "tanh", 0.1, 1.2)
    r = single_input_nnlo(spec, x)
    K1 = 0.1 + 1.2 * 0.625

    def avg(f):
        return integrate.quad(lambda z: f(z) * np.exp(-z * z / (2 * K1)) / np.sqrt(2 * np.pi * K1),
                              -np.inf, np.inf, epsabs=1e-14, epsrel=1e-13)[0]

    s2, s4, s6 = (avg(lambda z, p=p: np.tanh(z) ** p) for p in (2, 4, 6))
    assert r[2]["K"] == pytest.approx(0.1 + 1.2 * s2, rel=1e-12)
    assert r[2]["V"] == pytest.approx(1.2 ** 2 * (s4 - s2 ** 2), rel=1e-10)
    assert r[2]["U"] == pytest.approx(1.2 ** 3 * (s6 - 3 * s4 * s2 + 2 * s2 ** 3), rel=1e-9)
    assert abs(r[2]["G2"]) < 1e-14 and abs(r[2]["V1"]) < 1e-14 and abs(r[2]["G1"]) < 1e-14
    assert r[3]["G2"] != 0 and r[3]["V1"] != 0


@pytest.mark.slow
def test_tanh_three_neuron_cumulant_against_monte_carlo(step):
    """Reality at 1/n²: the joint cumulant κ3(z_i², z_j², z_k²) of three different neurons of
    layer 3 of random tanh networks (C_b 0, C_W 1, one input) is U/n² + O(1/n³).  Sampled here
    with a plain numpy forward pass (widths 6 and 12, 400 000 networks each), estimated from
    the within-network means over distinct neuron triples, pairs and singles, errors by a
    20-block jackknife; n² κ3 must equal derive's U within 3 standard errors."""
    from derive.numeric.nnlo import single_input_nnlo

    x = np.array([1.0, 0.5])
    U = single_input_nnlo(MLP(3, 8, "tanh", 0.0, 1.0), x)[3]["U"]
    for width, seed in ((6, 1), (12, 2)):
        rng = np.random.default_rng(seed)
        e1, e2, e3 = [], [], []
        for _ in range(20):  # 20 blocks of 20 000 networks
            c = 20000
            z = rng.normal(size=(c, width, 2)) @ x * np.sqrt(1.0 / 2)
            for _layer in (2, 3):
                W = rng.normal(size=(c, width, width)) * np.sqrt(1.0 / width)
                z = np.einsum("cij,cj->ci", W, np.tanh(z))
            s = z * z
            S1, S2, S3 = s.sum(1), (s * s).sum(1), (s ** 3).sum(1)
            e1.append(S1.mean() / width)
            e2.append(((S1 ** 2 - S2) / (width * (width - 1))).mean())
            e3.append(((S1 ** 3 - 3 * S1 * S2 + 2 * S3) / (width * (width - 1) * (width - 2))).mean())
        e1, e2, e3 = map(np.array, (e1, e2, e3))

        def k3(keep):
            a, b, c3 = e1[keep].mean(), e2[keep].mean(), e3[keep].mean()
            return c3 - 3 * b * a + 2 * a ** 3

        every = np.ones(20, bool)
        jack = np.array([k3(np.arange(20) != k) for k in range(20)])
        se = np.sqrt(19 / 20 * ((jack - jack.mean()) ** 2).sum())
        assert abs(k3(every) * width ** 2 - U) < 3 * se * width ** 2, (width, k3(every) * width ** 2, U)
