"""The generated numpy evaluator of the NTK's O(1/n) statistics (derive.emit.numpy_module):
H1 on all pairs of inputs, A, B, D, F on their components with at most two distinct samples,
against the batched evaluator of the same derived forms (derive.numeric.evaluate.iterate_mlp),
predict's route through it, determinism and no user text in the module."""
import itertools
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import derive
from derive.algebra.symbols import GROUPS
from derive.base.errors import DeriveError
from derive.derivation.quantities import quantity
from derive.emit.numpy_module import _orbit_table, _pair_patterns
from derive.numeric.prediction import load_generated
from derive.numeric.evaluate import iterate_mlp
from derive.numeric.prediction import _route

FOUR = ("A", "B", "D", "F")
TARGETS = ("K", "Theta", "H1", "A", "B", "D", "F")
#: the targets predict's generated route asks load_generated for (the same cached module)
MODULE_TARGETS = ("K", "Theta", "G1", "H1", "A", "B", "D", "F")
X3 = np.array([[1.0, 0.2, 0.0], [0.3, 1.0, 0.5], [-0.4, 0.1, 0.8]])


def _spec(act):
    return derive.MLP(depth=4, widths=[20, 30, 25], activation=act, C_b=[0.1, 0.05, 0.2, 0.0],
                      C_W=[1.2, 0.9, 1.1, 1.0], lambda_b=[0.5, 0.3, 0.7, 0.2],
                      lambda_W=[1.0, 0.8, 1.3, 0.9])


def _close(got, want, what, rel=1e-9):
    """|got − want| ≤ rel · max|want| (a quantity that vanishes analytically, ReLU's H1 of one
    input, is rounding noise of 1e-16: compared against 1e-6 instead)."""
    got, want = np.asarray(got, dtype=float), np.asarray(want, dtype=float)
    assert got.shape == want.shape, what
    assert np.abs(got - want).max() <= rel * max(np.abs(want).max(), 1e-6), \
        f"{what}: {np.abs(got - want).max():.3g} against {np.abs(want).max():.3g}"


# -- the orbit tables: each quantity's own index symmetries ---------------------------------------

@pytest.mark.parametrize("name", ["G1", "V", "H1", "A", "B", "D", "F"])
def test_orbit_tables_follow_each_quantitys_symmetry(name):
    # a random tensor on two samples with exactly the quantity's symmetry (docs/conventions.md §3):
    # every pattern's component is its orbit representative's, transposed (p ↔ q) when flagged
    q = quantity(name)
    perms = ((0, 1), (1, 0)) if q.rank == 2 else GROUPS[q.symmetry]
    rng = np.random.default_rng(0)
    T = rng.normal(size=(2,) * q.rank + (2, 2))       # pattern bits, then samples [p, q]
    T = sum(T.transpose(*p, *range(q.rank, q.rank + 2)) for p in perms)  # symmetrise
    T = T + T[(slice(None, None, -1),) * q.rank].swapaxes(-1, -2)  # p ↔ q is a transpose
    table = _orbit_table(q.symmetry)
    assert len(table) == 2 ** q.rank - 2
    for pat, (rep, transposed) in table.items():
        want = T[rep].T if transposed else T[rep]
        np.testing.assert_allclose(T[pat], want, rtol=0, atol=1e-12, err_msg=str(pat))
    reps = _pair_patterns(q.symmetry)
    assert reps == sorted({rep for rep, _ in table.values()})
    # the representatives are independent: no two of them are tied by the symmetries
    for a, b in itertools.combinations(reps, 2):
        assert not np.allclose(T[a], T[b]) and not np.allclose(T[a], T[b].T), (a, b)


def test_route_takes_the_generated_module_unless_a_four_index_quantity_has_three_samples():
    for N in (1, 2):
        assert _route(N, TARGETS) == "generated"
        assert _route(N, ("K", "V", "A")) == "generated"
    for N in (3, 50):
        assert _route(N, ("K", "Theta", "H1")) == "generated"
        assert _route(N, ("K", "Theta", "G1", "H1")) == "generated"
        for q in ("V", *FOUR):
            assert _route(N, ("K", "Theta", q)) == "batched"


# -- numbers: against the batched evaluator of the same derived forms ------------------------

@pytest.mark.slow
@pytest.mark.parametrize("act", ["tanh", "erf", "relu"])
def test_generated_ntk_statistics_match_batched_evaluator(act):
    spec = _spec(act)
    mod = load_generated(spec, MODULE_TARGETS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # H1 on all pairs of three inputs
        ref3 = iterate_mlp(spec, X3, 1, targets=("K", "Theta", "G1", "H1"))
        ref2 = iterate_mlp(spec, X3[:2], 1, targets=TARGETS)
        ref1 = iterate_mlp(spec, X3[:1], 1, targets=TARGETS)
    got3 = mod.evaluate(X3)
    for l in range(1, spec.depth + 1):
        for q in ("K", "Theta", "G1", "H1"):
            _close(got3[q][l], ref3[q][l], f"{q} at layer {l}")
    assert np.abs(ref3["H1"][spec.depth]).max() > 1e-3  # not a comparison of zeros
    # A, B, D, F: every component of one and of two inputs
    for X, ref in ((X3[:2], ref2), (X3[:1], ref1)):
        N = len(X)
        got = mod.evaluate(X)
        for l in range(1, spec.depth + 1):
            _close(got["H1"][l], ref["H1"][l], f"H1 at layer {l}, N = {N}")
            for q in FOUR:
                comps = list(np.ndindex(*(N,) * 4))
                val = [mod.ntk_component(got, q, l, *c) for c in comps]
                _close(val, [ref[q][l][c] for c in comps], f"{q} at layer {l}, N = {N}")
        for q in FOUR:
            assert np.abs(ref[q][spec.depth]).max() > 1e-3, q
        # the diagonal alone closes on itself; order 0 leaves out the 1/n correction H1
        diag = mod.evaluate(X, nlo="diagonal")
        zero = mod.evaluate(X, order=0)
        for l in range(1, spec.depth + 1):
            np.testing.assert_allclose(diag["H1"][l], np.diagonal(got["H1"][l]), rtol=1e-13,
                                       atol=1e-15)
            assert not np.any(zero["H1"][l])
            for q in FOUR:
                assert np.array_equal(diag[q][l], got[q][l])
    # predict takes the generated route for these cases, with the batched route's numbers
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for X, ref, targets in ((X3[:2], ref2, TARGETS), (X3[:1], ref1, TARGETS),
                                (X3, ref3, ("K", "Theta", "H1"))):
            p = derive.predict(spec, X, targets=targets)
            assert p.route == "generated"
            for q in targets:
                for l in range(1, spec.depth + 1):
                    _close(getattr(p, q)[l], ref[q][l], f"predict {q} at layer {l}, N = {len(X)}")
            for l in range(1, spec.depth + 1):
                _close(p.ntk_mean(l), ref["Theta"][l] + ref["H1"][l] / p.fan_in(l),
                       f"ntk_mean({l})")
            if "B" in targets:
                assert p.B[spec.depth].shape == (len(X),) * 4
            else:
                assert p.B == {} and p.H1[spec.depth].shape == (3, 3)


@pytest.mark.slow
def test_predict_ntk_statistics_on_other_architectures():
    # a forward equation of the user's (Network) and a residual network without a skip term
    # (ξ = 0, its γ a scalar argument of the generated code): the same numbers on both routes
    X = X3[:2]
    for spec in (derive.Network(3, [12, 16], "tanh", 0.1, 1.1, "b[i] + sum_j(W[i,j]*sigma(z[j]))"),
                 derive.ResMLP(3, 16, "erf", 0.0, 1.0, xi=0.0, gamma=[0.6, 0.8])):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p = derive.predict(spec, X, targets=TARGETS)
            ref = iterate_mlp(spec, X, 1, targets=TARGETS)
        assert p.route == "generated"
        for q in TARGETS:
            for l in range(1, spec.depth + 1):
                _close(getattr(p, q)[l], ref[q][l], f"{type(spec).__name__} {q} at layer {l}")


@pytest.mark.slow
def test_predict_ntk_order_zero_as_on_the_batched_route():
    # order 0: H1 is zero, and A, B, D, F are left out on both routes — asked for by name,
    # predict says they need order=1 (an empty dict would read as a result)
    spec = _spec("erf")
    p = derive.predict(spec, X3[:2], targets=[q for q in TARGETS if q not in FOUR], order=0)
    assert p.route == "generated"
    assert all(not np.any(p.H1[l]) for l in p.K) and p.A == p.B == p.D == p.F == {}
    for q in (*FOUR, "P", "Udd"):
        with pytest.raises(DeriveError, match="order=1"):
            derive.predict(spec, X3[:2], targets=["K", q], order=0)
    ref = iterate_mlp(spec, X3[:2], 0, targets=TARGETS)
    assert not any(q in ref for q in FOUR)


# -- the module text ------------------------------------------------------------------------------

@pytest.mark.slow
def test_generated_ntk_module_is_deterministic(tmp_path):
    # byte-identical for the same spec and targets: twice in one process, and in processes with
    # other hash seeds
    spec = derive.MLP(3, 16, "relu", 0.0, 2.0)
    first = derive.derive(spec, targets=TARGETS).numpy_module()
    assert derive.derive(spec, targets=TARGETS).numpy_module() == first
    assert "def ntk_variance_a_pairs(" in first and "ORBIT_TABLES = " in first
    code = ("import sys, derive\n"
            "spec = derive.MLP(3, 16, 'relu', 0.0, 2.0)\n"
            f"src = derive.derive(spec, targets={list(TARGETS)!r}).numpy_module()\n"
            "open(sys.argv[1], 'w').write(src)\n")
    for seed in ("0", "4242"):
        out = tmp_path / f"{seed}.py"
        subprocess.run([sys.executable, "-c", code, str(out)], check=True, timeout=600,
                       env={**os.environ, "PYTHONHASHSEED": seed})
        assert out.read_text() == first


@pytest.mark.slow
def test_generated_ntk_module_carries_no_user_text(tmp_path, only_declarations):
    # an Activation with a hostile name: the NTK module's docstrings are escaped, it holds only
    # the docstring, imports, assignments, functions, the per-thread cache class and the
    # script guard, and it runs
    marker = tmp_path / "pwned"
    hostile = f'x"""\nimport os; os.system("touch {marker}")\n"""'
    evil = derive.Activation(name=hostile, expr=derive.activation("erf").expr)
    src = derive.derive(derive.MLP(3, 8, evil, 0.0, 1.0), targets=TARGETS).numpy_module()
    assert "ntk_mean_correction_pairs" in src
    only_declarations(src)
    (tmp_path / "evaluator_evil.py").write_text(src)
    r = subprocess.run([sys.executable, "-c", "import evaluator_evil as ev, numpy;"
                        "out = ev.evaluate(numpy.eye(2));"
                        "print(out['H1'][3][0, 1], ev.ntk_component(out, 'A', 3, 0, 0, 1, 1))"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert not marker.exists()


@pytest.mark.slow
def test_default_modules_unchanged():
    # without NTK targets the modules are byte-identical to tests/golden (the NTK code appears
    # only when an NTK statistic is a target)
    golden = Path(__file__).parent / "golden"
    for name, spec in (("evaluator_tanh.py", derive.MLP(3, 16, "tanh", 0.0, 1.0)),
                       ("evaluator_relu.py", derive.MLP(3, 16, "relu", 0.0, 2.0))):
        src = derive.derive(spec).numpy_module()
        assert src == (golden / name).read_text(), name
        assert "ORBIT_TABLES" not in src and "ntk_mean_correction" not in src
