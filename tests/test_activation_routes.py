"""Every activation works everywhere: each named activation of rules/ and a list of kinked and
jumping user strings, through predict's two evaluators (the generated module and the batched
evaluator of derive.numeric.evaluate) for N = 1, 2, 3 inputs and every target, against each other and
against an independent quadrature written here (scipy.integrate.quad, split at the kinks).

σ that jump (Heaviside, sign, a Piecewise step) have an infinite NTK: Θ must be refused, and
everything else must still work.
"""
import warnings

import numpy as np
import pytest
import sympy as sp
from scipy import integrate

import derive
from derive.activations.catalogue import known_activations
from derive.numeric.prediction import load_generated
from derive.numeric.evaluate import iterate_mlp
from derive.numeric.prediction import _generated

USER_STRINGS = [
    "Abs(z)",                              # kink, scale-invariant
    "sign(z)",                             # jump
    "Heaviside(z)",                        # jump
    "Max(0, z) - 0.1*Max(0, -z)",          # leaky ReLU by hand
    "3*Max(0, z) - Max(0, -z) + 0.2*sin(z)",  # kink + smooth part
    "Min(1, Max(-1, z))",                  # hard tanh: two kinks
    "tanh(z) + 0.5*Heaviside(z - 0.5)",    # smooth + a jump off zero
    "Piecewise((z, z > 0), (exp(z) - 1, True))",  # ELU: kink in σ', none in σ
    "0.5*z*(1 + erf(z/sqrt(2)))",          # GELU typed out
]
CASES = known_activations() + USER_STRINGS
SPEC_KW = dict(depth=3, widths=[5, 7], C_b=0.1, C_W=[1.3, 1.1, 0.9], lambda_b=0.7,
               lambda_W=[1.0, 0.8, 1.2])
X3 = np.array([[0.9, -0.2, 0.4], [0.1, 0.8, -0.5], [-0.6, 0.3, 0.7]])


def _spec(act):
    kw = dict(SPEC_KW)
    return derive.MLP(kw.pop("depth"), kw.pop("widths"), act, **kw)


# -- the independent quadrature ----------------------------------------------------------

def _pieces(c, lo=-12.0, hi=12.0):
    pts = sorted({lo, hi, *[x for x in c if lo < x < hi]})
    return list(zip(pts[:-1], pts[1:]))


def avg1(f, K, kinks):
    """⟨f(z)⟩ over N(0, K), adaptive quadrature split at the kinks."""
    s = np.sqrt(K)
    g = lambda t: f(s * t) * np.exp(-t * t / 2) / np.sqrt(2 * np.pi)  # noqa: E731
    return sum(integrate.quad(g, a, b, epsabs=1e-13, epsrel=1e-12, limit=200)[0]
               for a, b in _pieces([c / s for c in kinks]))


def avg2(f, g, K11, K12, K22, kinks):
    """⟨f(z1) g(z2)⟩ over N(0, [[K11, K12], [K12, K22]]), nested adaptive quadrature split at
    every kink of z1 and of z2 (z1 = s t1, z2 = a t1 + b t2)."""
    s = np.sqrt(K11)
    a = K12 / s
    b = np.sqrt(max(K22 - a * a, 0.0))
    phi = lambda t: np.exp(-t * t / 2) / np.sqrt(2 * np.pi)  # noqa: E731

    def inner(t1):
        if b < 1e-12:
            return g(a * t1)
        h = lambda t2: g(a * t1 + b * t2) * phi(t2)  # noqa: E731
        return sum(integrate.quad(h, lo, hi, epsabs=1e-13, epsrel=1e-12, limit=200)[0]
                   for lo, hi in _pieces([(c - a * t1) / b for c in kinks]))

    cuts = [c / s for c in kinks] + ([c / a for c in kinks] if b < 1e-12 and a else [])
    return sum(integrate.quad(lambda t1: f(s * t1) * inner(t1) * phi(t1), lo, hi,
                              epsabs=1e-12, epsrel=1e-11, limit=200)[0]
               for lo, hi in _pieces(cuts))


def _numpy(expr):
    z = sp.Symbol("z")
    fn = sp.lambdify(z, expr.xreplace({derive.activation("tanh").z: z}),
                     modules=[{"Heaviside": lambda x, h=0.5: np.heaviside(x, h),
                               "Max": np.maximum, "Min": np.minimum}, "scipy", "numpy"])
    return lambda x: float(fn(x))


def _jump_points(act):
    return list(act.kinks)


@pytest.mark.slow
@pytest.mark.parametrize("act_name", CASES)
def test_layer_two_against_independent_quadrature(act_name):
    """K, Θ at layer 2 for three inputs, and G1, V at layer 3 for one input, from predict
    against the docs/conventions.md §4 forms evaluated here by adaptive quadrature."""
    act = derive.activation(act_name)
    spec = _spec(act)
    z = act.z
    sigma = _numpy(act.expr)
    kinks = _jump_points(act)
    G0 = X3 @ X3.T / X3.shape[1]
    K1 = spec.C_b(1) + spec.C_W(1) * G0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = derive.predict(spec, X3, targets=["K"] + ([] if act.ntk_obstacle else ["Theta"]))
    for i in range(3):
        for j in range(i, 3):
            want = spec.C_b(2) + spec.C_W(2) * avg2(sigma, sigma, K1[i, i], K1[i, j], K1[j, j],
                                                    kinks)
            assert p.K[2][i, j] == pytest.approx(want, rel=1e-9, abs=1e-11), (i, j)
            if not act.ntk_obstacle:
                ds = _numpy(sp.diff(act.expr, z).replace(
                    lambda e: isinstance(e, sp.DiracDelta), lambda e: sp.S.Zero))
                T1 = spec.lambda_b(1) + spec.lambda_W(1) * G0
                want = (spec.lambda_b(2) + spec.lambda_W(2) * avg2(sigma, sigma, K1[i, i], K1[i, j],
                                                                   K1[j, j], kinks)
                        + spec.C_W(2) * avg2(ds, ds, K1[i, i], K1[i, j], K1[j, j], kinks)
                        * T1[i, j])
                assert p.Theta[2][i, j] == pytest.approx(want, rel=1e-9, abs=1e-11), (i, j)
    # single input: V and G1 at layer 3 by the single-input forms (derivative-free for kinks:
    # ⟨F''⟩ = ⟨F He2(z/√K)⟩/K, ⟨F''''⟩ = ⟨F He4(z/√K)⟩/K², Gaussian integration by parts)
    x = X3[:1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = derive.predict(spec, x, targets=["K", "G1", "V"])
    K = spec.C_b(1) + spec.C_W(1) * float((x @ x.T)[0, 0]) / x.shape[1]
    V, G1 = 0.0, 0.0
    n = [x.shape[1], *spec.widths]
    for l in (1, 2):
        CW = spec.C_W(l + 1)
        s2 = avg1(lambda t: sigma(t) ** 2, K, kinks)
        s4 = avg1(lambda t: sigma(t) ** 4, K, kinks)
        chi = CW / (2 * K * K) * avg1(lambda t: sigma(t) ** 2 * (t * t - K), K, kinks)
        he4 = avg1(lambda t: sigma(t) ** 2 * ((t * t / K) ** 2 - 6 * t * t / K + 3), K, kinks) / K ** 2
        r = n[l] / n[l - 1]
        G1_next = r * (chi * G1 + CW / 8 * he4 * V)
        V_next = CW ** 2 * (s4 - s2 ** 2) + r * chi ** 2 * V
        K = spec.C_b(l + 1) + CW * s2
        V, G1 = V_next, G1_next
    assert q.K[3][0, 0] == pytest.approx(K, rel=1e-9)
    assert q.V[3][0, 0, 0, 0] == pytest.approx(V, rel=1e-7, abs=1e-10)
    assert q.G1[3][0, 0] == pytest.approx(G1, rel=1e-6, abs=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("N", [1, 2, 3])
@pytest.mark.parametrize("act_name", CASES)
def test_routes_agree(act_name, N):
    """The generated module and the batched evaluator give the same K, Θ, G1 and V (for
    N = 3: the components with at most two distinct samples, the rest only the batched one
    has) through three layers with unequal widths and per-layer hyperparameters."""
    act = derive.activation(act_name)
    spec = _spec(act)
    X = X3[:N]
    targets = ["K", "G1", "V"] + ([] if act.ntk_obstacle else ["Theta"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batched = iterate_mlp(spec, X, 1, targets=targets)
        gen = _generated(spec, X, 1, True, N <= 2)
        p = derive.predict(spec, X, targets=targets)
    assert p.route == ("batched" if N >= 3 else "generated")
    for l in range(1, spec.depth + 1):
        for q in ["K", "G1"] + ([] if act.ntk_obstacle else ["Theta"]):
            scale = max(1.0, np.abs(batched[q][l]).max())
            np.testing.assert_allclose(gen[q][l], batched[q][l], rtol=0, atol=2e-9 * scale,
                                       err_msg=f"{q} at layer {l}")
        if N <= 2:
            scale = max(1.0, np.abs(batched["V"][l]).max())
            np.testing.assert_allclose(gen["V"][l], batched["V"][l], rtol=0, atol=2e-8 * scale,
                                       err_msg=f"V at layer {l}")
        else:
            mod = load_generated(spec, ("K", "G1") + (() if act.ntk_obstacle else ("Theta",)))
            g = mod.evaluate(X, order=1, nlo="pairs")
            Vb = batched["V"][l]
            scale = max(1.0, np.abs(Vb).max())
            for a, b, c, d in [(0, 0, 0, 1), (0, 1, 0, 1), (0, 0, 1, 1), (1, 2, 2, 2), (2, 0, 2, 0)]:
                got = mod.vertex_component(g["V"][l], g["V_pairs"][l], a, b, c, d)
                assert got == pytest.approx(Vb[a, b, c, d], abs=2e-8 * scale), (l, a, b, c, d)
    if act.ntk_obstacle:
        with pytest.raises(derive.DeriveError, match="infinite"):
            derive.predict(spec, X, targets=["K", "Theta"])
        assert p.Theta == {}
