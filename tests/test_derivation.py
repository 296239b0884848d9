"""derive.derive (recursions + plan) and derive.predict (numbers) — issue 4 entry points."""
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import sympy as sp
import pytest

import derive
from derive.numeric.evaluate import iterate_mlp
from derive import MLP
from derive.base.errors import DeriveError, OrderError, UnknownNameError
from derive.numeric.prediction import ExpansionWarning


@pytest.fixture(scope="module")
def d3():
    return derive.derive(MLP(3, 16, "tanh", 0.0, 1.0))


def test_plan_signature_and_closure(d3):
    assert d3.signature() == ("K1 Theta1 G11 V1 K2<K1 Theta2<K1,Theta1 G12<K1,G11,V1 V2<K1,V1 "
                              "K3<K2 Theta3<K2,Theta2 G13<K2,G12,V2 V3<K2,V2")
    assert d3.needed("K", 3) == [("K", 1, 0), ("K", 2, 0), ("K", 3, 0)]
    assert ("V", 1, 1) in d3.needed("G1", 3)
    order = d3.evaluation_order()
    assert order.index(("V", 2, 1)) < order.index(("G1", 3, 1))
    assert set(d3.recursions) == {"K", "G1", "V", "Theta"}
    lo = derive.derive(MLP(3, 16, "tanh", 0.0, 1.0), targets=["K", "Theta"], order=0)
    assert lo.signature() == "K1 Theta1 K2<K1 Theta2<K1,Theta1 K3<K2 Theta3<K2,Theta2"


def test_steps_per_target(d3):
    rules = {t: d3.steps_for(t).rules() for t in d3.recursions}
    # every chain starts with the Wick contraction over the layer's parameters
    assert all("wick.isserlis" in r for r in rules.values())
    assert "sum.split" in rules["V"] and "sum.split" not in rules["K"]
    assert rules["Theta"][0] == "ntk.chain_rule"  # the NTK equation is derived, then averaged
    assert "nearly_gaussian.leading_order" in rules["Theta"]
    assert "nearly_gaussian.leading_order" not in rules["V"]
    assert rules["G1"][-1] == rules["V"][-1] == "derivative.collapse"
    # the last step of each chain ends in the recursion itself
    assert d3.steps_for("V").steps[-1].after == d3.recursions["V"]
    assert d3.steps_for("G1").steps[-1].after == d3.recursions["G1"]
    assert d3.steps_for("Theta").steps[-1].after == d3.recursions["Theta"]
    assert all(s.reference for t in d3.recursions for s in d3.steps_for(t))
    # the compact form keeps the sample sums: Σ_β V_β ⟨∂∂f⟩⟨∂∂g⟩ in V's recursion
    from derive import DerivativeContraction, collapse_contractions
    assert d3.contracted["V"].atoms(DerivativeContraction)
    assert sp.expand(collapse_contractions(d3.contracted["V"])) == d3.recursions["V"]
    with pytest.raises(UnknownNameError):
        d3.steps_for("H1")


def test_bad_requests(d3):
    spec = MLP(2, 8, "tanh", 0.0, 1.0)
    with pytest.raises(UnknownNameError, match="Theta"):
        derive.derive(spec, targets=["Qx"])
    with pytest.raises(DeriveError, match="order=1"):
        derive.derive(spec, targets=["V"], order=0)
    with pytest.raises(DeriveError, match="order=2"):
        derive.derive(spec, targets=["K", "U"], order=1)
    for bad in (3, -1, 0.5):
        with pytest.raises(OrderError):
            derive.derive(spec, order=bad)
    with pytest.raises(DeriveError, match="shape"):
        derive.predict(spec, np.ones(3))
    with pytest.raises(DeriveError, match="NaN"):
        derive.predict(spec, np.array([[np.nan, 1.0]]))
    with pytest.raises(DeriveError, match="not in this plan"):
        d3.needed("K", 7)


def test_linear_oracles_unequal_widths():
    """σ(z) = z, C_b = 0: K_ℓ = C_W…G0 exactly, G1 = 0 (the metric is exact), and from the exact
    recursion Q_{ℓ+1} = C_W²(1 + 2/n_ℓ) Q_ℓ the leading-order V_ℓ = 2 K_ℓ² n_{ℓ−1} Σ_{m<ℓ} 1/n_m."""
    widths = [5, 9, 3]
    C_W = [1.2, 0.9, 1.5, 0.8]
    spec = MLP(4, widths, "linear", 0.0, C_W)
    X = np.array([[1.0, 0.5], [-0.3, 0.8]])
    with pytest.warns(ExpansionWarning):  # widths 3 … 9 are narrow: the warning is due
        p = derive.predict(spec, X)
    G0 = X @ X.T / 2
    K = C_W[0] * G0
    for l in range(1, 5):
        if l > 1:
            K = C_W[l - 1] * K
        assert np.allclose(p.K[l], K, rtol=1e-12, atol=1e-14)
        assert np.allclose(p.G1[l], 0.0, atol=1e-12)
        fan_in = [2, *widths][l - 1]
        for a in range(2):
            ref = 2 * K[a, a] ** 2 * fan_in * sum(1 / widths[m - 1] for m in range(1, l))
            assert p.V[l][a, a, a, a] == pytest.approx(ref, rel=1e-10, abs=1e-14)
    assert np.allclose(p.metric(3), p.K[3])


def test_symmetries_and_shapes():
    p = derive.predict(MLP(3, 8, "erf", 0.1, 1.0), np.array([[1.0, 0.2], [0.3, -0.9]]))
    for l in (1, 2, 3):
        assert p.K[l].shape == (2, 2) and p.V[l].shape == (2, 2, 2, 2) and p.Theta[l].shape == (2, 2)
        assert np.allclose(p.K[l], p.K[l].T)
        V = p.V[l]
        assert np.allclose(V, V.transpose(1, 0, 2, 3)) and np.allclose(V, V.transpose(2, 3, 0, 1))


def test_expansion_warning_names_layer():
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        p = derive.predict(MLP(6, 2, "tanh", 0.0, 1.0), np.ones((1, 3)))
    msgs = [str(x.message) for x in w if issubclass(x.category, ExpansionWarning)]
    assert msgs and "layer" in msgs[0]
    assert p.expansion[6] > p.expansion[2]


def _scale_invariant_vertex_step(a_plus, a_minus, C_W):
    # independent: <σ²>_K = K (a+² + a-²)/2, <σ⁴>_K = 3K² (a+⁴ + a-⁴)/2, χ_∥ = C_W (a+² + a-²)/2
    chi = C_W * (a_plus**2 + a_minus**2) / 2
    return C_W**2 * (1.5 * (a_plus**4 + a_minus**4) - (a_plus**2 + a_minus**2) ** 2 / 4), chi


@pytest.mark.parametrize("act, a_plus, a_minus", [("relu", 1.0, 0.0),
                                                   ("3*Max(0, z) - Max(0, -z)", 3.0, 1.0)])
def test_kinked_activations_single_input_oracles(act, a_plus, a_minus):
    # scale-invariant σ at criticality: K constant, G1 = 0, V/K² grows by a fixed step per layer
    C_W = 2 / (a_plus**2 + a_minus**2)
    step, chi = _scale_invariant_vertex_step(a_plus, a_minus, C_W)
    assert chi == pytest.approx(1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExpansionWarning)
        p = derive.predict(MLP(5, 40, act, 0.0, C_W), np.array([[1.0, 0.5]]))
    K1 = C_W * 0.625
    for l in range(1, 6):
        assert p.K[l][0, 0] == pytest.approx(K1, rel=1e-12)
        assert abs(p.G1[l][0, 0]) < 1e-12
        assert p.V[l][0, 0, 0, 0] / K1**2 == pytest.approx(step * (l - 1), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("act", ["tanh", "erf"])
def test_derivative_free_forms_equal_derivative_forms(act):
    # the two evaluations of the sample sums (product rule vs Gaussian integration by parts)
    # are independent numerical routes to the same derived quantity
    X = np.array([[1.0, 0.2, 0.0], [0.3, 1.0, 0.5], [-0.2, 0.4, 1.0]])
    spec = MLP(3, [20, 30], act, 0.1, 1.3)
    a = iterate_mlp(spec, X)
    b = iterate_mlp(spec, X, derivative_free=True)
    for q in ("K", "G1", "V", "Theta"):
        assert np.allclose(a[q][3], b[q][3], rtol=0, atol=1e-11), q
    assert np.abs(a["G1"][3]).max() > 1e-3 and np.abs(a["V"][3]).max() > 1e-2


def test_targets_and_diagonal_vertex():
    X = np.random.default_rng(0).normal(size=(6, 3))
    spec = MLP(4, 30, "tanh", 0.0, 1.0)
    full = derive.predict(spec, X, order=1, warn_threshold=1.0)
    light = derive.predict(spec, X, order=0, targets=("K", "Theta"), warn_threshold=1.0)
    assert light.V == {} and set(light.Theta) == {1, 2, 3, 4}
    for l in range(1, 5):
        # K and Θ alone come from the generated evaluator: an independent evaluation
        assert np.allclose(light.K[l], full.K[l], rtol=0, atol=1e-11)
        assert np.allclose(light.Theta[l], full.Theta[l], rtol=0, atol=1e-11)
        # the expansion estimate needs only the diagonal of V, computed on its own
        assert light.expansion[l] == pytest.approx(full.expansion[l] ** 0.5, rel=1e-9)
    # V alone (the batched route for N ≥ 3): its averages are over K, which is computed too
    alone = derive.predict(spec, X[:3], order=1, targets=("V",), warn_threshold=1.0)
    assert np.allclose(alone.V[4], full.V[4][:3, :3, :3, :3], rtol=0, atol=1e-10)
    with pytest.raises(DeriveError, match="unknown target"):
        derive.predict(spec, X, targets=("K", "G3"))
    with pytest.raises(DeriveError, match="order=2"):
        derive.predict(spec, X, targets=("K", "G2"))
    with pytest.raises(DeriveError, match="order 3"):
        derive.predict(spec, X, order=3)
    with pytest.raises(DeriveError, match="needs G1"):
        light.metric(2)


def test_parallel_inputs_with_kinked_activation_are_refused():
    X = np.array([[1.0, 0.5], [2.0, 1.0]])  # parallel: the 2×2 kernel of ReLU is singular
    with pytest.raises(DeriveError, match="linearly independent"):
        derive.predict(MLP(3, 10, "relu", 0.0, 2.0), X)


@pytest.mark.slow
def test_derivation_deterministic_across_hash_seeds():
    code = textwrap.dedent("""
        import sympy as sp
        from derive.derivation.layerstep import derive_layer_step
        s = derive_layer_step()
        print(sp.srepr(s.K), sp.srepr(s.G1), sp.srepr(s.V), sp.srepr(s.Theta), s.trace.rules())
    """)
    outs = set()
    for seed in ("0", "7"):
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=dict(os.environ, PYTHONHASHSEED=seed))
        assert res.returncode == 0, res.stderr
        outs.add(res.stdout)
    assert len(outs) == 1
