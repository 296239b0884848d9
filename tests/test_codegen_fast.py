"""Fast paths of the generated evaluator (issue: performance), each pinned against an
independent computation:

* the exact quadrant moments of the scale-invariant family (ReLU, leaky ReLU): the
  generated module's pair averages against nested adaptive quadrature written here (the
  conditional Gaussian of z_q given z_p, split at the kink), and whole runs of K, Θ, G1, V,
  H1 against the batched evaluator, whose averages are derive's generic quadrature;
* the ladder of pair rules (each rule judged against the next rule of its own family): tanh
  and erf K, Θ against the batched evaluator;
* the single-input averages (grouped per step, their rule chosen by the same ladder): G1 and V
  on the diagonal against the batched evaluator.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import integrate

import derive
from derive.numeric.prediction import load_generated
from derive.numeric.evaluate import iterate_mlp
from derive.numeric.prediction import _generated


def _pair_reference(f, g, Kpp, Kpq, Kqq):
    """⟨f(z_p) g(z_q)⟩ by nested adaptive quadrature: z_p = s t, z_q | z_p ~ N(c z_p, v), each
    integral split at the kink z = 0."""
    s = math.sqrt(Kpp)
    c = Kpq / Kpp
    v = max(Kqq - Kpq * Kpq / Kpp, 0.0)
    phi = lambda t: math.exp(-0.5 * t * t) / math.sqrt(2 * math.pi)  # noqa: E731

    def inner(zp):
        mu = c * zp
        if v == 0.0:
            return g(mu)
        sd = math.sqrt(v)
        cut = -mu / sd  # z_q = 0
        h = lambda t: g(mu + sd * t) * phi(t)  # noqa: E731
        cut = min(max(cut, -14.0), 14.0)
        return sum(integrate.quad(h, a, b, epsabs=1e-15, epsrel=1e-13, limit=200)[0]
                   for a, b in ((-14.0, cut), (cut, 14.0)) if b > a)

    out = 0.0
    for a, b in ((-14.0, 0.0), (0.0, 14.0)):
        out += integrate.quad(lambda t: f(s * t) * inner(s * t) * phi(t), a, b,
                              epsabs=1e-15, epsrel=1e-13, limit=200)[0]
    return out


def relu(z):
    return max(z, 0.0)


CASES = [  # (f, g) as the generated module gets them: ((P₊), (P₋)) and a plain function
    (((0.0, 1.0), (0.0,)), relu, ((0.0, 1.0), (0.0,)), relu),
    (((0.0, 0.0, 1.0), (0.0,)), lambda z: relu(z) ** 2, ((0.0, 0.0, 0.0, 1.0), (0.0,)),
     lambda z: z * z * relu(z)),
    (((0.0, 1.0), (0.0, 0.1)), lambda z: z if z > 0 else 0.1 * z,
     ((0.0, 0.0, 0.0, 0.0, 0.0, 1.0), (0.0, 0.0, 0.0, 0.0, 0.0, 0.0)), lambda z: z ** 4 * relu(z)),
    (((1.0, 0.0, 2.0), (3.0, -1.0)), lambda z: 1 + 2 * z * z if z > 0 else 3 - z,
     ((0.0, 0.0, 0.0, 1.0), (0.0, 0.0, 0.5)), lambda z: z ** 3 if z > 0 else 0.5 * z * z),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_quadrant_moments_against_adaptive_quadrature(case):
    mod = load_generated(derive.MLP(3, 16, "relu", 0.0, 2.0), ("K", "Theta", "G1", "V"))
    assert "_moment_average" in mod.SOURCE
    pf, f, pg, g = CASES[case]
    rng = np.random.default_rng(case)
    X = rng.normal(size=(4, 3))
    X[3] = -0.9 * X[2] + 0.05 * X[1]  # a nearly anti-parallel pair
    K = X @ X.T / 3 + 0.1
    mod._CACHE.clear()
    got = mod._moment_average(pf, pg, K)
    for p in range(4):
        for q in range(4):
            ref = _pair_reference(f, g, K[p, p], K[p, q], K[q, q])
            assert got[p, q] == pytest.approx(ref, rel=1e-10, abs=1e-12), (p, q)


def test_diagonal_moments_against_adaptive_quadrature():
    mod = load_generated(derive.MLP(3, 16, "relu", 0.0, 2.0), ("K", "Theta", "G1", "V"))
    Kd = np.array([0.3, 1.0, 2.7])
    f = ((0.0, 0.0, 1.0), (0.0, 0.5))  # z² for z > 0, z/2 below
    for r, he in ((0, lambda t: 1.0), (2, lambda t: t * t - 1), (4, lambda t: t ** 4 - 6 * t * t + 3)):
        got = mod._diag_moment_average(f, Kd, hermite=r)
        for k, K in enumerate(Kd):
            s = math.sqrt(K)
            h = lambda t: ((s * t) ** 2 if t > 0 else 0.5 * s * t) * he(t) * math.exp(-t * t / 2)  # noqa: E731
            ref = sum(integrate.quad(h, a, b, epsabs=1e-15, epsrel=1e-13)[0]
                      for a, b in ((-14, 0), (0, 14))) / math.sqrt(2 * math.pi) / K ** (r / 2)
            assert got[k] == pytest.approx(ref, rel=1e-11, abs=1e-13), (r, k)


@pytest.mark.parametrize("act, C_b, C_W", [("relu", 0.0, 2.0), ("relu", 0.2, 1.5),
                                           ("leaky_relu", 0.1, 1.8)])
def test_scale_invariant_runs_equal_the_batched_evaluator(act, C_b, C_W):
    """K, Θ, G1 and H1 on all pairs and V on the pair components, through the generated exact
    moments, against the batched evaluator (derive's generic quadrature, a separate code path)."""
    spec = derive.MLP(4, [20, 30, 25], act, C_b, C_W, lambda_b=0.7, lambda_W=1.3)
    X = np.random.default_rng(5).normal(size=(4, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = _generated(spec, X, 1, True, False, ("H1",))
        b = iterate_mlp(spec, X, 1, targets=("K", "Theta", "G1", "H1"))
    for name in ("K", "Theta", "G1", "H1"):
        for l in range(1, 5):
            scale = max(1.0, np.abs(b[name][l]).max())
            assert np.abs(g[name][l] - b[name][l]).max() <= 1e-8 * scale, (name, l)


@pytest.mark.parametrize("act", ["tanh", "erf"])
def test_pair_rule_ladder_equals_the_batched_evaluator(act):
    """K and Θ by the ladder of pair rules (tanh: ⟨σσ⟩ and ⟨σ'σ'⟩ in one call per layer on
    rules chosen for both, σ evaluated once per node) against the batched evaluator."""
    spec = derive.MLP(6, 32, act, 0.1, 1.2)
    src = load_generated(spec, ("K", "Theta")).SOURCE
    ntk_step = src[src.index("def ntk_step"):src.index("def ", src.index("def ntk_step") + 4)]
    assert ("_pair_averages(_g" in ntk_step) == (act == "tanh")  # erf's are closed forms
    mod = load_generated(spec, ("K", "Theta"))
    X = np.random.default_rng(6).normal(size=(5, 4)) * np.array([[0.3], [1.0], [1.7], [0.8], [1.2]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = _generated(spec, X, 0, False, False)
        b = iterate_mlp(spec, X, 0, targets=("K", "Theta"))
        # the chunks of pairs (of one pair each here) in two threads: the same numbers
        mod._BLOCK, block = 1, mod._BLOCK
        try:
            one = mod.evaluate(X, nlo="none", threads=1)
            two = mod.evaluate(X, nlo="none", threads=2)
        finally:
            mod._BLOCK = block
    for name in ("K", "Theta"):
        for l in range(1, 7):
            assert np.abs(g[name][l] - b[name][l]).max() <= 1e-10 * max(1.0, np.abs(b[name][l]).max())
            assert np.array_equal(one[name][l], two[name][l])


def test_expansion_estimate_on_a_subset_of_inputs(monkeypatch):
    """For many inputs and no O(1/n) target the expansion estimate is computed on inputs
    spanning the range of |x|² (a single input's recursions depend on its norm only): exact
    when there are few distinct norms, and the extreme norms are always among them."""
    import derive.numeric.prediction as P

    rng = np.random.default_rng(7)
    base = rng.normal(size=(2, 6))
    X = np.concatenate([base * s for s in (0.5, 1.0, 2.0, 3.0, 4.0)])
    X = np.concatenate([X, -X])  # 20 inputs, 10 distinct norms
    Y = rng.normal(size=(300, 4))
    on = P._estimate_inputs(Y)
    norms = (Y * Y).sum(1)
    assert len(on) == P.ESTIMATE_INPUTS and norms.argmin() in on and norms.argmax() in on
    spec = derive.MLP(6, 16, "erf", 0.1, 1.2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        few = derive.predict(spec, X, targets=["K", "Theta"])
        monkeypatch.setattr(P, "ESTIMATE_INPUTS", 10 ** 6)
        full = derive.predict(spec, X, targets=["K", "Theta"])
    assert len(np.unique((X * X).sum(1))) == 10 and len(P._estimate_inputs(X)) == 10
    assert few.expansion == pytest.approx(full.expansion, rel=1e-12)


@pytest.mark.parametrize("act", ["tanh", "erf"])
def test_single_input_ladder_and_grouped_functions(act):
    """The single-input averages (one call per step for all its functions, the rule chosen by
    the ladder at the input of largest variance, kept while no variance exceeds it): G1_αα and V_(αα)(αα) against the batched evaluator, over variances from about 0.2 to 10
    (a rule that suits the small ones fails the large ones), and evaluate(diagonal_of=…)
    equal to the same inputs of the full run."""
    spec = derive.MLP(5, 32, act, 0.1, 1.5)
    X = np.random.default_rng(8).normal(size=(6, 4))
    X *= np.array([[0.5], [0.8], [1.2], [2.0], [3.5], [5.0]]) / np.linalg.norm(X, axis=1)[:, None]
    mod = load_generated(spec, ("K", "Theta", "G1"))
    assert "_diag_averages(_g" in mod.SOURCE  # the steps' averages are grouped
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = mod.evaluate(X, order=1, nlo="diagonal")
        b = iterate_mlp(spec, X, 1, targets=("K", "Theta", "G1", "V"))
        sub = mod.evaluate(X, order=1, nlo="diagonal", diagonal_of=[1, 4])
    assert np.diagonal(b["K"][1]).max() > 10 * np.diagonal(b["K"][1]).min()
    for l in range(2, 6):
        bd = np.array([b["V"][l][a, a, a, a] for a in range(6)])
        assert np.abs(g["V"][l] - bd).max() <= 1e-10 * max(1.0, np.abs(bd).max()), l
        g1 = np.diagonal(b["G1"][l])
        assert np.abs(g["G1"][l] - g1).max() <= 1e-10 * max(1.0, np.abs(g1).max()), l
        # both runs to TOL (their rules are judged at different largest variances)
        assert np.abs(sub["V"][l] - g["V"][l][[1, 4]]).max() <= 2 * mod.TOL * max(1.0, np.abs(bd).max())
    with pytest.raises(ValueError, match="diagonal_of"):
        mod.evaluate(X, nlo="pairs", diagonal_of=[0])


@pytest.mark.parametrize("act", ["relu", "erf"])
def test_blocks_of_rows_give_the_same_numbers(act, monkeypatch):
    """K and Θ from closed forms, computed in blocks of rows (large N), in one thread or several,
    are the numbers of the whole-layer computation, bit for bit, with blocks that do not divide
    N (the diagonal of each block, where ReLU's angle must be exactly 0, sits at an offset)."""
    spec = derive.MLP(5, 32, act, 0.1, 1.5, lambda_b=0.3, lambda_W=1.1)
    mod = load_generated(spec, ("K", "Theta"))
    assert mod.BLOCK_PAIRS > 0
    X = np.random.default_rng(9).normal(size=(23, 4))
    X[5] = X[4]  # two equal inputs: ρ = 1 off the diagonal too
    monkeypatch.setattr(mod, "BLOCK_PAIRS", 0)
    whole = mod.evaluate(X, nlo="none")  # the layers in one store (STORE_BYTES)
    assert whole["K"][3].base is not None and whole["K"][3].base is whole["Theta"][4].base
    monkeypatch.setattr(mod, "STORE_BYTES", 0)
    loose = mod.evaluate(X, nlo="none")  # each layer its own array
    assert loose["K"][3].base is None
    for pairs, threads in ((1, 1), (50, 1), (100, 1), (1, 3), (50, 2)):  # 1, 2, 4 rows a block
        monkeypatch.setattr(mod, "BLOCK_PAIRS", pairs)
        part = mod.evaluate(X, nlo="none", threads=threads)
        for name in ("K", "Theta"):
            for l in range(1, 6):
                assert np.array_equal(part[name][l], whole[name][l]), (pairs, name, l)
                assert np.array_equal(loose[name][l], whole[name][l]), (name, l)


def test_grouped_pair_averages_of_the_nlo_steps():
    """tanh's G1 on all pairs and V on the pair components: every pair quadrature of a step in
    one call (rules chosen for all, tanh once per node, each average and its swap) against the
    batched evaluator."""
    spec = derive.MLP(4, [20, 30, 25], "tanh", 0.1, 1.3)
    assert "_pair_averages(_g" in load_generated(spec, ("K", "Theta", "G1")).SOURCE
    X = np.random.default_rng(10).normal(size=(2, 3)) * np.array([[0.6], [1.4]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = _generated(spec, X, 1, True, True)
        b = iterate_mlp(spec, X, 1, targets=("K", "Theta", "G1", "V"))
    for name in ("G1", "V"):
        for l in range(2, 5):
            ref = np.asarray(b[name][l])
            scale = max(1.0, np.abs(ref).max())
            assert np.abs(np.asarray(g[name][l]) - ref).max() <= 1e-9 * scale, (name, l)


def test_fused_lines_compute_the_expression_and_leave_the_inputs_alone():
    """derive.emit.fused prints an elementwise expression as in-place statements: the same
    numbers as the expression evaluated by numpy directly, and the input arrays unchanged."""
    import sympy as sp

    from derive.emit.fused import fused_lines
    from derive.emit.numpy_module import NumpyPrinter

    A, B, C = sp.symbols("A B C")  # N × N arrays
    u, v = sp.symbols("u v")  # a column and a row
    c = sp.Symbol("c")  # a scalar
    exprs = [
        2 * sp.asin(2 * A / sp.sqrt((2 * u + 1) * (2 * v + 1))) / sp.pi,
        1 / sp.sqrt(-4 * A ** 2 + (2 * u + 1) * (2 * v + 1)),
        c * B * (A * (sp.pi - C) + sp.sqrt(1 - A ** 2)) / (2 * sp.pi),
        1 - A, c / A, -A - B, A * B * C * u * v * c - A / B + 3,
        sp.exp(-A ** 2) * sp.erf(B) + u * v, (A + B) ** 3, A, A ** sp.Rational(-1, 2),
    ]
    rng = np.random.default_rng(11)
    env = {"numpy": np, "scipy": __import__("scipy.special"), "A": rng.uniform(0.1, 0.5, (4, 4)),
           "B": rng.uniform(0.2, 0.9, (4, 4)), "C": rng.uniform(0.0, 3.0, (4, 4)),
           "u": rng.uniform(0.5, 2.0, (4, 1)), "v": rng.uniform(0.5, 2.0, (1, 4)), "c": 0.7}
    printer = NumpyPrinter()
    for e in exprs:
        ref = eval(printer.doprint(e), dict(env))  # noqa: S307 - our own test expression
        inputs = {k: np.copy(env[k]) for k in "ABCuv"}
        local = dict(env)
        lines, out = fused_lines(printer, e, {A, B, C}, "_t")
        exec("\n".join(lines), local)  # noqa: S102 - our own test expression
        got = eval(out, local)  # noqa: S307
        assert np.allclose(got, ref, rtol=1e-14, atol=0), e
        for k, arr in inputs.items():
            assert np.array_equal(local[k], arr), (e, k)


def test_quadrature_tolerance_is_a_choice_of_the_call():
    """predict(tol=…) sets the generated evaluator's quadrature tolerance (default TOL, 1e-11
    for smooth σ): finer rules agree with the default ones within it, and the prediction says
    which it used; a tolerance outside (0, 1) is refused."""
    spec = derive.MLP(8, 32, "tanh", 0.1, 1.2, lambda_b=0.1, lambda_W=1.0)
    X = np.random.default_rng(11).normal(size=(5, 3))
    mod = load_generated(spec, ("K", "Theta"))
    assert mod.TOL == 1e-11
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        coarse = derive.predict(spec, X, targets=["K", "Theta"])
        fine = derive.predict(spec, X, targets=["K", "Theta"], tol=3e-13)
    assert coarse.quadrature_error == 1e-11 and fine.quadrature_error == 3e-13
    for q in ("K", "Theta"):
        for l in range(1, 9):
            a, b = getattr(coarse, q)[l], getattr(fine, q)[l]
            assert np.abs(a - b).max() <= 1e-10 * max(1.0, np.abs(b).max()), (q, l)
    assert mod.evaluate(X, nlo="none", tol=1e-4)["K"][8].shape == (5, 5)
    with pytest.raises(ValueError, match="tol"):
        mod.evaluate(X, nlo="none", tol=2.0)
