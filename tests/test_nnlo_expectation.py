"""The nearly-Gaussian expectation step at second order in 1/n (docs/conventions.md §10), against
brute-force expectations over explicit quartic-plus-sextic actions written here.

Each distribution is exp(−S0 − ε S1 − ε² S2) with S0 Gaussian; every expectation is expanded
to ε² directly, as ratios of Gaussian moments of polynomials (exact rationals, no cumulant
operator): E[f] = ⟨f w⟩₀ / ⟨w⟩₀ with w = 1 − ε S1 + ε² (S1²/2 − S2).  The family data the
operator form needs (K, G1, G2, V, V1, U) are read off the distribution's own cumulants, and
ε plays 1/n: a quartic vertex makes the four-point cumulant O(ε), the six-point O(ε²) and the
eight-point O(ε³), the nearly-Gaussian scaling.
"""
from __future__ import annotations

import pytest
import sympy as sp

from derive import nearly_gaussian_field, perturbative_expectation, sample_indices
from derive.algebra.nearly_gaussian import evaluate_averages
from derive.algebra.symbols import GaussianAverage
from derive.base.errors import DeriveError, OrderError

eps = sp.Symbol("epsilon")
TOP = 2  # the order kept in ε


def trunc(e):
    e = sp.expand(e)
    return sum(e.coeff(eps, k) * eps ** k for k in range(TOP + 1))


def gaussian_moment(poly, variables, cov):
    """⟨poly⟩ over independent N(0, cov[v]) variables (exact)."""
    total = sp.S.Zero
    for monom, coeff in sp.Poly(sp.expand(poly), *variables).terms():
        term = coeff
        for p, v in zip(monom, variables):
            term *= 0 if p % 2 else sp.factorial2(p - 1) * cov[v] ** (p // 2)
        total += term
    return total


def expectation(f, S1, S2, moment):
    """E[f] to ε² for the weight exp(−ε S1 − ε² S2) against the Gaussian ⟨·⟩₀ = moment."""
    w = 1 - eps * S1 + eps ** 2 * (S1 ** 2 / 2 - S2)
    num = trunc(sum(eps ** k * moment(sp.expand(f * w).coeff(eps, k)) for k in range(TOP + 1)))
    Z = trunc(sum(eps ** k * moment(sp.expand(w).coeff(eps, k)) for k in range(TOP + 1)))
    z1, z2 = Z.coeff(eps, 1) / Z.coeff(eps, 0), Z.coeff(eps, 2) / Z.coeff(eps, 0)
    return trunc(num / Z.coeff(eps, 0) * (1 - z1 * eps + (z1 ** 2 - z2) * eps ** 2))


def coefficients(series):
    return [sp.cancel(sp.expand(series).coeff(eps, k)) for k in range(TOP + 1)]


def values_of(expr, data, index_of):
    """Put numbers into the tensor components (data[label][indices], the sample indices mapped
    by index_of) of a derive result."""
    rep = {}
    for x in expr.atoms(sp.Indexed):
        label = str(x.base)
        rep[x] = data[label][tuple(index_of[i] for i in x.indices)]
    return expr.xreplace(rep)


# ---------------------------------------------------------------------------------------------
# one neuron, one sample
# ---------------------------------------------------------------------------------------------

k0 = sp.Rational(3, 2)
x = sp.Symbol("x")
S1_ONE = sp.Rational(1, 2) * x ** 4 / 24 + sp.Rational(1, 3) * x ** 2 / 2
S2_ONE = sp.Rational(2, 5) * x ** 6 / 720 + sp.Rational(1, 7) * x ** 4 / 24 + sp.Rational(1, 5) * x ** 2 / 2


def moment_one(poly):
    return gaussian_moment(poly, [x], {x: k0})


def one_sample_data():
    """K, G1, G2, V, V1, U of the one-variable distribution, from its cumulants."""
    m = {r: expectation(x ** r, S1_ONE, S2_ONE, moment_one) for r in (2, 4, 6)}
    k2 = m[2]
    k4 = trunc(m[4] - 3 * m[2] ** 2)
    k6 = trunc(m[6] - 15 * m[4] * m[2] + 30 * m[2] ** 3)
    c2, c4, c6 = coefficients(k2), coefficients(k4), coefficients(k6)
    assert c4[0] == 0 and c6[0] == 0 and c6[1] == 0  # nearly Gaussian: κ4 = O(ε), κ6 = O(ε²)
    return {"K": c2[0], "G1": c2[1], "G2": c2[2], "V": c4[1] / 3, "V1": c4[2] / 3,
            "U": c6[2] / 15}


Z = nearly_gaussian_field("z", "K", "G1", "V", "n", neuron=False, G2="G2", V1="V1", U="U")
(AL,) = sample_indices("alpha")


def derive_value(f_expr, power, data, cosine=False):
    """The 1/n^power coefficient of derive's operator form, with the numbers put in."""
    r = perturbative_expectation(f_expr, order=2)[power]
    if cosine:  # ⟨d^r cos(z)⟩_K over N(0, K): (−1)^(r/2) e^(−K/2) for even r, 0 for odd
        def avg(node):
            h = node.function
            d = h.args[1][1] if isinstance(h, sp.Derivative) else 0
            assert isinstance(h, sp.Derivative) or isinstance(h, sp.cos)
            return 0 if d % 2 else (-1) ** (d // 2) * sp.exp(-data["K"] / 2)
        r = r.replace(lambda e: isinstance(e, GaussianAverage), avg)
    else:
        r = evaluate_averages(r)
    # the components all carry the one sample index
    rep = {}
    for t in r.atoms(sp.Indexed):
        rep[t] = data[str(t.base)]
    return sp.cancel(sp.expand(r.xreplace(rep)))


@pytest.mark.parametrize("power", [4, 6, 8])
def test_one_sample_polynomials_to_second_order(power):
    """E[z^p] at 1/n and 1/n² (p = 8 reaches the ⅟₁₂₈ V V ∂⁸ term)."""
    data = one_sample_data()
    want = coefficients(expectation(x ** power, S1_ONE, S2_ONE, moment_one))
    for k in (0, 1, 2):
        assert derive_value(Z[AL] ** power, k, data) == want[k], k


def test_one_sample_cosine_to_second_order():
    """A non-polynomial function, E[cos z]: every derivative order up to ∂⁸ contributes."""
    data = one_sample_data()
    # ⟨cos(x) x^(2m)⟩ over N(0, k) = (−1)^m d^(2m)/dt^(2m) exp(−k t²/2) at t = 1
    t = sp.Symbol("t")

    def moment_cos(poly):
        total = sp.S.Zero
        for (p,), c in sp.Poly(sp.expand(poly), x).terms():
            if p % 2 == 0:
                total += c * (-1) ** (p // 2) * sp.diff(sp.exp(-k0 * t ** 2 / 2), t, p).subs(t, 1)
        return total

    w = 1 - eps * S1_ONE + eps ** 2 * (S1_ONE ** 2 / 2 - S2_ONE)
    num = trunc(sum(eps ** k * moment_cos(sp.expand(w).coeff(eps, k)) for k in range(3)))
    Zs = trunc(sum(eps ** k * moment_one(sp.expand(w).coeff(eps, k)) for k in range(3)))
    z1, z2 = Zs.coeff(eps, 1) / Zs.coeff(eps, 0), Zs.coeff(eps, 2) / Zs.coeff(eps, 0)
    want = trunc(num / Zs.coeff(eps, 0) * (1 - z1 * eps + (z1 ** 2 - z2) * eps ** 2))
    for k in (1, 2):
        got = derive_value(sp.cos(Z[AL]), k, data, cosine=True)
        assert sp.simplify(got - sp.expand(want).coeff(eps, k)) == 0, k


# ---------------------------------------------------------------------------------------------
# one neuron, two samples: the sample sums
# ---------------------------------------------------------------------------------------------

y1, y2, w_ = sp.symbols("y1 y2 w")
KM = sp.Matrix([[sp.Rational(3, 2), sp.Rational(1, 2)], [sp.Rational(1, 2), 1]])
S1_TWO = (sp.Rational(1, 3) * (y1 ** 2 + y1 * y2 + 2 * y2 ** 2) ** 2 / 8
          + sp.Rational(1, 4) * y1 * y2 + sp.Rational(1, 6) * y1 ** 3 * y2 / 6)
S2_TWO = (sp.Rational(1, 5) * (y1 ** 2 + y2 ** 2) ** 3 / 48 + sp.Rational(1, 7) * y1 ** 2 * y2 ** 2
          + sp.Rational(1, 9) * y2 ** 2)


def moment_two(poly):
    """⟨poly(y1, y2)⟩ over N(0, KM): y2 = r y1 + w with w independent of y1."""
    r = KM[0, 1] / KM[0, 0]
    s = KM[1, 1] - KM[0, 1] ** 2 / KM[0, 0]
    return gaussian_moment(sp.expand(poly.subs(y2, r * y1 + w_)), [y1, w_], {y1: KM[0, 0], w_: s})


def two_sample_data():
    from itertools import combinations_with_replacement as cwr

    from sympy.utilities.iterables import multiset_partitions

    ys = (y1, y2)
    mom = {}

    def M(idx):  # E[Π y_idx] as a series
        key = tuple(sorted(idx))
        if key not in mom:
            mom[key] = expectation(sp.Mul(*(ys[i] for i in key)), S1_TWO, S2_TWO, moment_two)
        return mom[key]

    def cumulant(idx):  # by the moment–cumulant formula over set partitions
        total = sp.S.Zero
        for part in multiset_partitions(list(range(len(idx)))):
            q = len(part)
            total += (-1) ** (q - 1) * sp.factorial(q - 1) * sp.Mul(
                *(M([idx[j] for j in block]) for block in part))
        return coefficients(trunc(total))

    data = {name: {} for name in ("K", "G1", "G2", "V", "V1", "U")}
    import itertools
    for idx in itertools.product((0, 1), repeat=2):
        c = cumulant(idx)
        data["K"][idx], data["G1"][idx], data["G2"][idx] = c
    for idx in itertools.product((0, 1), repeat=4):
        c = cumulant(idx)
        assert c[0] == 0
        # one neuron: the three pairings of V_{(..)(..)} are one fully symmetric tensor, κ4 / 3
        data["V"][idx], data["V1"][idx] = c[1] / 3, c[2] / 3
    for idx in cwr((0, 1), 6):
        c = cumulant(idx)
        assert c[0] == 0 and c[1] == 0
        for perm in set(itertools.permutations(idx)):
            data["U"][perm] = c[2] / 15  # the 15 pairings of δδδ U, fully symmetric
    return data, M


@pytest.mark.parametrize("p,q", [(1, 3), (2, 2), (3, 3), (4, 4), (2, 4)])
def test_two_samples_polynomials_to_second_order(p, q):
    data, M = two_sample_data()
    a, b = sample_indices("alpha beta")
    want = coefficients(M([0] * p + [1] * q))
    r = perturbative_expectation(Z[a] ** p * Z[b] ** q, order=2)
    for k in (0, 1, 2):
        got = sp.cancel(sp.expand(values_of(evaluate_averages(r[k]), data, {a: 0, b: 1})))
        assert got == want[k], (k, got, want[k])


# ---------------------------------------------------------------------------------------------
# different neurons: δ structure of the vertices across neurons
# ---------------------------------------------------------------------------------------------

def rotation_invariant(variables):
    """A distribution of several neurons' preactivations (one sample) invariant under
    rotations mixing them, so its cumulants have the δ structure of §3 and §10."""
    r2 = sum(v ** 2 for v in variables)
    S1 = sp.Rational(1, 2) * r2 ** 2 / 8 + sp.Rational(1, 3) * r2 / 2
    S2 = sp.Rational(2, 5) * r2 ** 3 / 48 + sp.Rational(1, 7) * r2 ** 2 / 8 + sp.Rational(1, 5) * r2 / 2
    cov = {v: k0 for v in variables}
    return S1, S2, (lambda poly: gaussian_moment(poly, list(variables), cov))


def neuron_data(variables):
    S1, S2, mom = rotation_invariant(variables)
    u, v = variables[0], variables[1]
    m2 = expectation(u ** 2, S1, S2, mom)
    m4 = expectation(u ** 4, S1, S2, mom)
    m22 = expectation(u ** 2 * v ** 2, S1, S2, mom)
    m6 = expectation(u ** 6, S1, S2, mom)
    k2, k4 = coefficients(m2), coefficients(trunc(m4 - 3 * m2 ** 2))
    k22 = coefficients(trunc(m22 - m2 ** 2))  # κ4(u, u, v, v): one pairing of the δδ structure
    k6 = coefficients(trunc(m6 - 15 * m4 * m2 + 30 * m2 ** 3))
    assert k22[1] * 3 == k4[1] and k22[2] * 3 == k4[2]  # the δ structure, as rotations demand
    data = {"K": k2[0], "G1": k2[1], "G2": k2[2], "V": k22[1], "V1": k22[2], "U": k6[2] / 15}
    return data, S1, S2, mom


def put_numbers(expr, data):
    r = evaluate_averages(expr)
    return sp.cancel(sp.expand(r.xreplace({t: data[str(t.base)] for t in r.atoms(sp.Indexed)})))


@pytest.mark.parametrize("p,q", [(2, 2), (4, 2), (2, 6), (4, 4)])
def test_two_neurons_to_second_order(p, q):
    """E[f(z_j) g(z_k)], j ≠ k, at 1/n² (¼ V1 ∂²∂², 1/16 U ∂⁴∂², 1/32 V V ∂⁴∂⁴, …)."""
    u, v = sp.symbols("u v")
    data, S1, S2, mom = neuron_data((u, v))
    want = coefficients(expectation(u ** p * v ** q, S1, S2, mom))
    r = perturbative_expectation(Z[AL] ** p, other=Z[AL] ** q, order=2)
    for k in (0, 1, 2):
        assert put_numbers(r[k], data) == want[k], k


def test_three_neurons_connected_to_second_order():
    """The joint cumulant of z_j², z_k², z_l² (three different neurons) starts at 1/n²: ⅛ U
    ⟨∂²⟩⟨∂²⟩⟨∂²⟩ and the chains of two V's, against the brute-force cumulant."""
    u, v, s = sp.symbols("u v s")
    data, S1, S2, mom = neuron_data((u, v, s))
    E = {}
    for key, f in {"uvs": u * v * s, "uv": u * v, "us": u * s, "vs": v * s,
                   "u": u, "v": v, "s": s}.items():
        E[key] = expectation(f.subs({u: u ** 2, v: v ** 2, s: s ** 2}), S1, S2, mom)
    kappa = trunc(E["uvs"] - E["uv"] * E["s"] - E["us"] * E["v"] - E["vs"] * E["u"]
                  + 2 * E["u"] * E["v"] * E["s"])
    want = coefficients(kappa)
    assert want[0] == 0 and want[1] == 0
    r = perturbative_expectation(Z[AL] ** 2, other=[Z[AL] ** 2, Z[AL] ** 2], order=2,
                                 connected=True)
    assert r[0] == 0 and r[1] == 0
    assert put_numbers(r[2], data) == want[2]
    # and the full product E[z_j² z_k² z_l²]
    full = perturbative_expectation(Z[AL] ** 2, other=[Z[AL] ** 2, Z[AL] ** 2], order=2)
    got = [put_numbers(full[k], data) for k in (0, 1, 2)]
    assert got == coefficients(E["uvs"])


def test_first_order_unchanged_and_errors():
    z1 = nearly_gaussian_field("z", "K", "G1", "V", "n", neuron=False)
    a, b = sample_indices("alpha beta")
    s = sp.Function("sigma")
    with pytest.raises(DeriveError, match="G2"):
        perturbative_expectation(s(z1[a]), order=2)
    with pytest.raises(OrderError, match="0, 1 or 2"):
        perturbative_expectation(s(z1[a]), order=3)
    with pytest.raises(DeriveError, match="connected"):
        perturbative_expectation(s(z1[a]), connected="yes")
    from derive import nearly_gaussian_expectation

    with pytest.raises(OrderError, match="0, 1 or 2"):
        nearly_gaussian_expectation(Z[a] ** 2, order=3)
    with pytest.raises(DeriveError, match="G2"):
        nearly_gaussian_expectation(z1[a] ** 2, order=2)
    # an exactly Gaussian family has nothing at any order
    g = nearly_gaussian_field("z", "K", "", "", "n", neuron=False)
    assert perturbative_expectation(s(g[a]), order=2)[2] == 0
    # the second-order family at first order is the first-order family's result (the two
    # families differ, so their variables do: compare as printed)
    r1 = perturbative_expectation(s(z1[a]), other=s(z1[b]))
    r2 = perturbative_expectation(s(Z[a]), other=s(Z[b]), order=1)
    assert str(r1[1]) == str(r2[1]) and "V[alpha, alpha, beta, beta]/4" in str(r1[1])
    with pytest.raises(DeriveError, match="name"):
        nearly_gaussian_field("z", U="U 6")


# ---------------------------------------------------------------------------------------------
# the cumulant form (polynomials, neuron indices): the same references
# ---------------------------------------------------------------------------------------------

def cumulant_form(expr, data, index_of=None):
    """The coefficients of derive's cumulant form with the numbers put in (every sample index
    mapped by index_of, or all of them the one sample)."""
    from derive import nearly_gaussian_expectation

    r = nearly_gaussian_expectation(expr, order=2)
    out = []
    for k in (0, 1, 2):
        e = sp.sympify(r[k])
        if index_of is None:
            e = e.xreplace({t: data[str(t.base)] for t in e.atoms(sp.Indexed)})
        else:
            e = values_of(e, data, index_of)
        out.append(sp.cancel(sp.expand(e)))
    return out


@pytest.mark.parametrize("power", [4, 6, 8])
def test_cumulant_form_one_sample_to_second_order(power):
    data = one_sample_data()
    want = coefficients(expectation(x ** power, S1_ONE, S2_ONE, moment_one))
    assert cumulant_form(Z[AL] ** power, data) == want


@pytest.mark.parametrize("p,q", [(1, 3), (2, 4), (3, 3)])
def test_cumulant_form_two_samples_to_second_order(p, q):
    data, M = two_sample_data()
    a, b = sample_indices("alpha beta")
    want = coefficients(M([0] * p + [1] * q))
    assert cumulant_form(Z[a] ** p * Z[b] ** q, data, {a: 0, b: 1}) == want


def test_cumulant_form_different_neurons_to_second_order():
    """Neuron-indexed variables: E[z_1^p z_2^q] and E[z_1² z_2² z_3²] of different neurons
    (the δ structure of V, V1 and U across neurons) against the rotation-invariant actions."""
    zn = nearly_gaussian_field("z", "K", "G1", "V", "n", G2="G2", V1="V1", U="U")
    u, v, w = sp.symbols("u v w")
    data, S1, S2, mom = neuron_data((u, v))
    for p, q in ((2, 2), (4, 2), (2, 4)):
        want = coefficients(expectation(u ** p * v ** q, S1, S2, mom))
        assert cumulant_form(zn[1, AL] ** p * zn[2, AL] ** q, data) == want, (p, q)
    data3, S1, S2, mom = neuron_data((u, v, w))
    want = coefficients(expectation(u ** 2 * v ** 2 * w ** 2, S1, S2, mom))
    assert cumulant_form(zn[1, AL] ** 2 * zn[2, AL] ** 2 * zn[3, AL] ** 2, data3) == want
