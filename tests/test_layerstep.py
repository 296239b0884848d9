"""The derived layer step equals independently written reference forms (docs/conventions.md §4, multi-input,
unequal widths n_ℓ ≠ n_{ℓ−1})."""
from itertools import product

import pytest
import sympy as sp

from derive import GaussianAverage, tensor
from derive.derivation.layerstep import SIGMA, WIDTH, WIDTH_PREV, derive_layer_step


@pytest.fixture(scope="module")
def step():
    return derive_layer_step()


def references(step):
    a1, a2, a3, a4 = step.alphas
    zeta = step.zeta
    C_b, C_W = step.C_b, step.C_W
    G1t, Vt = tensor("G1"), tensor("V", 4, "pairs")
    s = lambda a: SIGMA(zeta[a])  # noqa: E731
    avg = lambda f: GaussianAverage(f, "K")  # noqa: E731

    def d(f, *betas):
        for b in betas:
            f = sp.diff(f, zeta[b])
        return f

    ratio = WIDTH / WIDTH_PREV
    # K^{(l+1)} = C_b + C_W <σσ>
    K = C_b + C_W * avg(s(a1) * s(a2))
    # G1^{(l+1)} = (n_l/n_{l-1}) C_W [ 1/2 Σ G1 <∂∂ σσ> + 1/8 Σ V <∂⁴ σσ> ]   (β's over the dataset;
    # only β ∈ {α1, α2} give non-zero derivatives of σ(z_α1)σ(z_α2))
    pair = (a1, a2)
    g1 = sum(sp.Rational(1, 2) * G1t[b1, b2] * avg(d(s(a1) * s(a2), b1, b2))
             for b1, b2 in product(pair, repeat=2))
    g1 += sum(sp.Rational(1, 8) * Vt[b1, b2, b3, b4] * avg(d(s(a1) * s(a2), b1, b2, b3, b4))
              for b1, b2, b3, b4 in product(pair, repeat=4))
    G1 = ratio * C_W * g1
    # V^{(l+1)} = C_W² [<σσσσ> − <σσ><σσ>] + (C_W²/4)(n_l/n_{l-1}) Σ V <∂∂ σσ><∂∂ σσ>
    V = C_W ** 2 * (avg(s(a1) * s(a2) * s(a3) * s(a4)) - avg(s(a1) * s(a2)) * avg(s(a3) * s(a4)))
    V += sp.Rational(1, 4) * C_W ** 2 * ratio * sum(
        Vt[b1, b2, b3, b4] * avg(d(s(a1) * s(a2), b1, b2)) * avg(d(s(a3) * s(a4), b3, b4))
        for b1, b2 in product((a1, a2), repeat=2) for b3, b4 in product((a3, a4), repeat=2))
    # Θ^{(l+1)} = λ_b + λ_W <σσ> + C_W <σ'σ'> Θ   (leading order, docs/conventions.md §4)
    ds = lambda a: sp.diff(s(a), zeta[a])  # noqa: E731
    Theta = step.lambda_b + step.lambda_W * avg(s(a1) * s(a2)) + C_W * avg(ds(a1) * ds(a2)) * tensor("Theta")[a1, a2]
    return K, G1, V, Theta


def test_layer_step_matches_reference_forms(step):
    K, G1, V, Theta = references(step)
    assert sp.expand(step.K - K) == 0
    assert sp.expand(step.G1 - G1) == 0
    assert sp.expand(step.V - V) == 0
    assert sp.expand(step.Theta - Theta) == 0


def test_layer_step_records_the_method(step):
    rules = step.trace.rules()
    for r in ("wick.isserlis", "delta.contract", "sum.split", "nearly_gaussian.operator", "truncate",
              "ntk.chain_rule", "nearly_gaussian.leading_order"):
        assert r in rules
    v = step.steps["V"].rules()  # the four-point chain, in the order of docs/conventions.md §6
    assert v.index("wick.isserlis") < v.index("sum.split") < v.index("nearly_gaussian.operator") \
        < v.index("truncate") < v.index("derivative.collapse")
