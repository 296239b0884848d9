"""The generated numpy evaluator at O(1/n²) (derive.emit.numpy_module, evaluate(order=2)): G2 on
all pairs, V1 and U on their diagonal and on their components with at most two distinct
samples (all of them for one or two inputs), against the batched evaluator of the same derived
forms (derive.numeric.evaluate.iterate_mlp, predict's "batched" route at order 2); the module
runs standalone; σ with kinks is refused at order 2."""
import itertools
import subprocess
import sys
import warnings

import numpy as np
import pytest

import derive
from derive.algebra.symbols import GROUPS
from derive.base.errors import DeriveError
from derive.emit.numpy_module import _orbit_table, _pair_patterns
from derive.numeric.prediction import load_generated
from derive.numeric.evaluate import iterate_mlp

NNLO = ("G2", "V1", "U")
#: the targets of the order-2 module (predict's generated route would ask for the same)
MODULE_TARGETS = ("K", "Theta", "G1", "V", "G2", "V1", "U")
X2 = np.array([[1.0, 0.2, 0.0], [0.3, 1.0, 0.5]])


def _close(got, want, what, rel=1e-9):
    got, want = np.asarray(got, dtype=float), np.asarray(want, dtype=float)
    assert got.shape == want.shape, what
    assert np.abs(got - want).max() <= rel * max(np.abs(want).max(), 1e-6), \
        f"{what}: {np.abs(got - want).max():.3g} against {np.abs(want).max():.3g}"


# -- U's orbit tables (rank 6, group three_pairs) ------------------------------------------------

def test_six_index_orbit_table():
    # U is symmetric within each of its three pairs and under permuting the pairs: on two
    # samples its 62 mixed patterns fall into 5 orbits with p ↔ q, (pp)(pp)(pq), (pp)(pp)(qq),
    # (pp)(pq)(pq), (pp)(pq)(qq), (pq)(pq)(pq); a random tensor with that symmetry has every
    # component equal to its representative's (transposed when flagged)
    table = _orbit_table("three_pairs")
    assert len(table) == 2 ** 6 - 2
    reps = _pair_patterns("three_pairs")
    assert reps == [(0, 0, 0, 0, 0, 1), (0, 0, 0, 0, 1, 1), (0, 0, 0, 1, 0, 1),
                    (0, 0, 0, 1, 1, 1), (0, 1, 0, 1, 0, 1)]
    rng = np.random.default_rng(1)
    T = rng.normal(size=(2,) * 6 + (2, 2))
    T = sum(T.transpose(*p, 6, 7) for p in GROUPS["three_pairs"])
    T = T + T[(slice(None, None, -1),) * 6].swapaxes(-1, -2)
    for pat, (rep, transposed) in table.items():
        np.testing.assert_allclose(T[pat], T[rep].T if transposed else T[rep], atol=1e-12)
    for a, b in itertools.combinations(reps, 2):
        assert not np.allclose(T[a], T[b]) and not np.allclose(T[a], T[b].T), (a, b)


# -- numbers: against the batched evaluator ----------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("act, depth", [("tanh", 4), ("erf", 5)])
def test_generated_nnlo_statistics_match_batched_evaluator(act, depth, tmp_path):
    spec = derive.MLP(depth, 24, act, 0.1, [1.2, 0.9, 1.1, 1.0, 1.05][:depth])
    mod = load_generated(spec, MODULE_TARGETS)
    for N in (1, 2):
        X = X2[:N]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = iterate_mlp(spec, X, 2, targets=("K", "G1", "V", *NNLO))
        got = mod.evaluate(X, order=2)
        for l in range(1, depth + 1):
            _close(got["G2"][l], ref["G2"][l], f"{act} G2 at layer {l}, N = {N}")
            for q in ("V", "V1", "U"):
                want = np.asarray(ref[q][l])
                comps = list(np.ndindex(*want.shape))
                val = [(mod.vertex_component(got["V"][l], got["V_pairs"][l], *c) if q == "V"
                        else mod.component(got, q, l, *c)) for c in comps]
                _close(val, [want[c] for c in comps], f"{act} {q} at layer {l}, N = {N}")
        for q in NNLO:  # not a comparison of zeros
            assert np.abs(np.asarray(ref[q][depth])).max() > 1e-3, q
        # the diagonal alone closes on itself; order < 2 leaves the O(1/n²) statistics out
        diag = mod.evaluate(X, order=2, nlo="diagonal")
        first = mod.evaluate(X, order=1)
        for l in range(1, depth + 1):
            np.testing.assert_allclose(diag["G2"][l], np.diagonal(got["G2"][l]), rtol=1e-13,
                                       atol=1e-16)
            for q in ("V1", "U"):
                assert np.array_equal(diag[q][l], got[q][l])
            for q in NNLO:
                assert not np.any(first[q][l])
            np.testing.assert_array_equal(first["G1"][l], got["G1"][l])
    # standalone: the source alone, in a fresh interpreter where derive and sympy cannot be
    # imported, gives the same numbers
    (tmp_path / "evaluator_nnlo.py").write_text(mod.SOURCE)
    np.save(tmp_path / "X.npy", X2)
    code = ("import sys; sys.modules['derive'] = sys.modules['sympy'] = None\n"
            "import numpy, evaluator_nnlo as ev\n"
            "out = ev.evaluate(numpy.load('X.npy'), order=2)\n"
            "assert not [m for m, v in sys.modules.items() if v is not None\n"
            "            and m.startswith(('derive', 'sympy'))]\n"
            f"print(repr(float(out['G2'][{depth}][0, 1])), "
            f"repr(ev.component(out, 'U', {depth}, 0, 1, 0, 1, 1, 1)))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    here = mod.evaluate(X2, order=2)
    assert r.stdout.split() == [repr(float(here["G2"][depth][0, 1])),
                                repr(mod.component(here, "U", depth, 0, 1, 0, 1, 1, 1))]


@pytest.mark.slow
def test_generated_nnlo_g2_on_all_pairs_of_three_inputs():
    # G2 of N ≥ 3 inputs on every pair: its recursion reads V1 and U only at components with
    # the pair's two samples, which the module computes for every pair
    spec = derive.MLP(4, 24, "tanh", 0.1, [1.2, 0.9, 1.1, 1.0])
    mod = load_generated(spec, MODULE_TARGETS)
    X3 = np.vstack([X2, [[-0.4, 0.1, 0.8]]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = iterate_mlp(spec, X3, 2, targets=("K", "G1", "G2"))
    got = mod.evaluate(X3, order=2)
    for l in range(1, spec.depth + 1):
        _close(got["G2"][l], ref["G2"][l], f"G2 at layer {l}, N = 3")


@pytest.mark.slow
def test_kinked_sigma_refused_at_order_two():
    spec = derive.MLP(3, 16, "relu", 0.0, 2.0)
    with pytest.raises(DeriveError, match="smooth"):
        derive.derive(spec, targets=MODULE_TARGETS, order=2).numpy_module()
