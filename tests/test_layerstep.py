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


def ntk_references(step):
    """The NTK's O(1/n) recursions (docs/conventions.md §3), multi-input, written by hand from the
    method of §6: Wick over layer ℓ+1's weights, j = k / j ≠ k split, then the joint
    nearly-Gaussian expectation over (z, ΔĤ) of layer ℓ — E[ΔĤ O(z)] = ½ Σ κ(ΔĤ, z, z) ⟨∂∂O⟩,
    E[ΔĤ ΔĤ O] = E[ΔĤ ΔĤ] ⟨O⟩.  B and F in the order of their names (B_{α1α3α2α4} is
    B[b1, b2, b3, b4] with (b1, b2, b3, b4) = (α1, α3, α2, α4))."""
    a1, a2, a3, a4 = step.alphas
    zeta = step.zeta
    C_W, lam_W = step.C_W, step.lambda_W
    Th, H1t, G1t = tensor("Theta"), tensor("H1"), tensor("G1")
    Vt, At = tensor("V", 4, "pairs"), tensor("A", 4, "pairs")
    Bt, Dt, Ft = tensor("B", 4, "cross"), tensor("D", 4, "within"), tensor("F", 4, "swap")
    s = lambda a: SIGMA(zeta[a])  # noqa: E731
    ds = lambda a: sp.diff(s(a), zeta[a])  # noqa: E731
    half, quarter, eighth = sp.Rational(1, 2), sp.Rational(1, 4), sp.Rational(1, 8)

    def avg(f):  # ⟨·⟩_K, linear, constants (tensors, scalars) taken out
        out = sp.S.Zero
        for term in sp.Add.make_args(sp.expand(f)):
            rand = [x for x in sp.Mul.make_args(term) if x.has(zeta[a1].func)]
            const = sp.Mul(*[x for x in sp.Mul.make_args(term) if x not in rand])
            out += const * (GaussianAverage(sp.Mul(*rand), "K") if rand else 1)
        return out

    def d(f, *betas):
        for b in betas:
            f = sp.diff(f, zeta[b])
        return f

    def first(f, P):  # the 1/n_{ℓ-1} coefficient of E[f(z_j)]: ½ Σ G1 ⟨∂∂f⟩ + ⅛ Σ V ⟨∂⁴f⟩
        return (sum(half * G1t[b] * avg(d(f, *b)) for b in product(P, repeat=2))
                + sum(eighth * Vt[b] * avg(d(f, *b)) for b in product(P, repeat=4)))

    def vv(f, P, g, Q):  # Σ V_{(β1β2)(β3β4)} ⟨∂β1∂β2 f⟩⟨∂β3∂β4 g⟩
        return sum(Vt[b + c] * avg(d(f, *b)) * avg(d(g, *c))
                   for b in product(P, repeat=2) for c in product(Q, repeat=2))

    ratio = WIDTH / WIDTH_PREV
    P12, P34 = (a1, a2), (a3, a4)
    f12, f34 = s(a1) * s(a2), s(a3) * s(a4)
    g12, g34 = ds(a1) * ds(a2), ds(a3) * ds(a4)
    # Ĥ' = δ[λ_b + (1/n_ℓ) Σ_j Y_j] + (cross terms W_{i1 j} W_{i2 k}), Y_j = λ_W σσ + C_W σ'σ' Ĥ_jj;
    # Y with Ĥ_jj by its mean:
    Y12 = lam_W * f12 + C_W * Th[a1, a2] * g12
    Y34 = lam_W * f34 + C_W * Th[a3, a4] * g34
    # H1: the 1/n parts of λ_W E[σσ] + C_W E[σ'σ' Ĥ_jj]
    H1 = ratio * (lam_W * first(f12, P12) + C_W * Th[a1, a2] * first(g12, P12)
                  + C_W * H1t[a1, a2] * avg(g12)
                  + C_W * half * sum((Dt[a1, a2, b1, b2] + Ft[a1, b1, a2, b2] + Ft[a1, b2, a2, b1])
                                     * avg(d(g12, b1, b2)) for b1, b2 in product(P12, repeat=2)))
    # A = n_ℓ Cov(X12, X34), X = (1/n_ℓ) Σ_j Y_j: the j = k terms, then j ≠ k: Cov(Y_j, Y'_k) through
    # V, through D (ΔĤ_kk with z_j; ΔĤ_jj with z_k) and A (ΔĤ_jj with ΔĤ_kk)
    A = avg(Y12 * Y34) - avg(Y12) * avg(Y34)
    A += ratio * (quarter * vv(Y12, P12, Y34, P34)
                  + half * C_W * sum(Dt[a3, a4, b1, b2] * avg(d(Y12, b1, b2))
                                     for b1, b2 in product(P12, repeat=2)) * avg(g34)
                  + half * C_W * sum(Dt[a1, a2, b1, b2] * avg(d(Y34, b1, b2))
                                     for b1, b2 in product(P34, repeat=2)) * avg(g12)
                  + C_W ** 2 * At[a1, a2, a3, a4] * avg(g12) * avg(g34))
    # B (indices b = (α1, α3, α2, α4)): W_{i1 j1}–W_{i3 j3}, W_{i2 j2}–W_{i4 j4} paired;
    # j1 = j2: Θ Θ ⟨σ'σ'σ'σ'⟩; j1 ≠ j2: E[Ĥ_jk Ĥ_jk] = B/n_{ℓ-1}
    b1, b2, b3, b4 = a1, a2, a3, a4
    B = (C_W ** 2 * avg(ds(b1) * ds(b2) * ds(b3) * ds(b4)) * Th[b1, b3] * Th[b2, b4]
         + ratio * C_W ** 2 * Bt[b1, b2, b3, b4] * avg(ds(b1) * ds(b2)) * avg(ds(b3) * ds(b4)))
    # D = n_ℓ Cov(X12, Ĝ34), Ĝ = C_b + (C_W/n_ℓ) Σ_k σσ
    D = C_W * (avg(Y12 * f34) - avg(Y12) * avg(f34))
    D += ratio * C_W * (quarter * vv(Y12, P12, f34, P34)
                        + half * C_W * avg(g12) * sum(Dt[a1, a2, c1, c2] * avg(d(f34, c1, c2))
                                                      for c1, c2 in product(P34, repeat=2)))
    # F (indices b = (α1, α3, α2, α4)): W_{i1 j1}–W_{i3 k}, W_{i2 j2}–W_{i4 k'}; j1 = j2: Θ ⟨σ'σσ'σ⟩;
    # j ≠ k: E[Ĥ_jk f(z_j) g(z_k)] = Σ F_{α1β1α2β2} ⟨∂β1 f⟩⟨∂β2 g⟩ / n_{ℓ-1}
    fj, fk = ds(b1) * s(b2), ds(b3) * s(b4)
    F = (C_W ** 2 * Th[b1, b3] * avg(fj * fk)
         + ratio * C_W ** 2 * sum(Ft[b1, c1, b3, c2] * avg(d(fj, c1)) * avg(d(fk, c2))
                                  for c1 in (b1, b2) for c2 in (b3, b4)))
    return {"H1": H1, "A": A, "B": B, "D": D, "F": F}


@pytest.mark.parametrize("name", ["H1", "A", "B", "D", "F"])
def test_ntk_statistics_match_reference_forms(step, name):
    ref = ntk_references(step)[name]
    assert sp.expand(step.recursions[name] - ref) == 0


def test_layer_step_records_the_method(step):
    rules = step.trace.rules()
    for r in ("wick.isserlis", "delta.contract", "sum.split", "nearly_gaussian.operator", "truncate",
              "ntk.chain_rule", "nearly_gaussian.ntk"):
        assert r in rules
    assert "nearly_gaussian.leading_order" in derive_layer_step(order=0).trace.rules()
    v = step.steps["V"].rules()  # the four-point chain, in the order of docs/conventions.md §6
    assert v.index("wick.isserlis") < v.index("sum.split") < v.index("nearly_gaussian.operator") \
        < v.index("truncate") < v.index("derivative.collapse")
