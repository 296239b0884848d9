"""Forward equations as data: the derived NTK equation, residual networks, user equations.

The expected forms here are written independently from docs/conventions.md §3 and §8 (not taken from
derive/), and the linear residual network is checked against its exact finite-width recursion
(a linear residual net is a product of (ξ + γW) matrices).
"""
import numpy as np
import pytest
import sympy as sp

import derive
from derive import DeriveError, NeuronSum, neuron_indices, sample_indices, simplify_sums
from derive.architectures.forward import (GAMMA, LAMBDA_B, LAMBDA_W, NTK, SIGMA, WIDTH, XI, Z,
                                          W, mlp_equation, parse_forward_equation,
                                          residual_equation)
from derive.derivation.layerstep import derive_layer_step

i1, i2, j1, j2 = neuron_indices("i1 i2 j1 j2")
a1, a2 = sample_indices("alpha1 alpha2")


def s(j, a):
    return SIGMA(Z[j, a])


def ds(j, a):
    return sp.Derivative(SIGMA(Z[j, a]), Z[j, a])


def theory_mlp_ntk():
    """docs/conventions.md §3: Ĥ' = δ[λ_b + (λ_W/n) Σ_j σσ] + Σ_{j1j2} W W σ' σ' Ĥ."""
    return (sp.KroneckerDelta(i1, i2) * (LAMBDA_B + LAMBDA_W / WIDTH
                                         * NeuronSum(s(j1, a1) * s(j1, a2), (j1, WIDTH)))
            + NeuronSum(W[i1, j1] * W[i2, j2] * ds(j1, a1) * ds(j2, a2) * NTK(j1, j2, a1, a2),
                        (j1, WIDTH), (j2, WIDTH)))


def test_mlp_ntk_equation_is_theory_s_form():
    derived = mlp_equation().ntk(i1, i2, a1, a2)
    assert simplify_sums(derived - theory_mlp_ntk()) == 0


def test_residual_ntk_equation_is_J_H_J_plus_own_parameters():
    """docs/conventions.md §8: Ĥ' = J Ĥ Jᵀ + γ² δ [λ_b + (λ_W/n) Σ σσ], J_ij = ξ δ_ij + γ W_ij σ'(z_j)."""
    def J(i, j, a):
        return XI * sp.KroneckerDelta(i, j) + GAMMA * W[i, j] * ds(j, a)

    expected = (NeuronSum(J(i1, j1, a1) * J(i2, j2, a2) * NTK(j1, j2, a1, a2), (j1, WIDTH), (j2, WIDTH))
                + GAMMA ** 2 * sp.KroneckerDelta(i1, i2)
                * (LAMBDA_B + LAMBDA_W / WIDTH * NeuronSum(s(j1, a1) * s(j1, a2), (j1, WIDTH))))
    derived = residual_equation().ntk(i1, i2, a1, a2)
    assert simplify_sums(derived - expected) == 0


def test_residual_with_xi_0_gamma_1_is_the_mlp_symbolically():
    mlp = derive_layer_step(order=0)
    res = derive_layer_step(residual_equation(), order=0)
    for q in ("K", "Theta"):
        assert sp.expand(res.recursions[q].subs({XI: 0, GAMMA: 1}) - mlp.recursions[q]) == 0
    # at leading order with the skip: K' = ξ²K + γ²(C_b + C_W⟨σσ⟩), Θ' = ξ²Θ + γ²(…) (docs/conventions.md §8)
    K = derive.tensor("K")
    assert sp.expand(res.K - GAMMA ** 2 * mlp.K - XI ** 2 * K[a1, a2]) == 0
    Th = derive.tensor("Theta")
    assert sp.expand(res.Theta - GAMMA ** 2 * mlp.Theta - XI ** 2 * Th[a1, a2]) == 0


def test_residual_without_skip_closes_at_nlo():
    """ξ = 0 at every layer drops the skip: the O(1/n) step is the MLP's with γ² C_b, γ² C_W."""
    mlp = derive_layer_step(order=1)
    res = derive_layer_step(residual_equation().without([XI]), order=1)
    C_b, C_W = sp.symbols("C_b C_W")
    for q in ("K", "G1", "V"):
        scaled = mlp.recursions[q].subs({C_b: GAMMA ** 2 * C_b, C_W: GAMMA ** 2 * C_W},
                                        simultaneous=True)
        assert sp.expand(res.recursions[q] - scaled) == 0


def test_skip_refuses_nlo_with_the_reason():
    with pytest.raises(DeriveError, match="trajectory"):
        derive_layer_step(residual_equation(), order=1)
    net = derive.ResMLP(3, 16, "tanh", C_b=0.0, C_W=1.0, xi=1.0, gamma=0.5)
    with pytest.raises(DeriveError, match="trajectory"):
        derive.derive(net, order=1)
    with pytest.raises(DeriveError, match="trajectory"):
        derive.predict(net, np.ones((1, 3)), order=1)
    # the default order is the highest the architecture closes at: leading order here
    p = derive.predict(net, np.ones((1, 3)))
    assert p.order == 0 and 3 in p.K and not p.G1


def test_resmlp_xi_0_gamma_1_is_the_mlp_numerically():
    X = np.array([[1.0, 0.3, -0.5], [0.2, -1.0, 0.4]])
    for act in ("tanh", "relu"):
        mlp = derive.MLP(4, 32, act, C_b=0.1, C_W=1.5, lambda_b=0.5, lambda_W=2.0)
        res = derive.ResMLP(4, 32, act, C_b=0.1, C_W=1.5, xi=0.0, gamma=1.0, lambda_b=0.5,
                            lambda_W=2.0)
        targets = ["K", "G1", "V"] + (["Theta"] if act == "tanh" else [])
        pm = derive.predict(mlp, X, targets=targets)
        pr = derive.predict(res, X, targets=targets)
        assert pr.order == 1
        for q in targets:
            for layer in range(1, 5):
                np.testing.assert_allclose(getattr(pr, q)[layer], getattr(pm, q)[layer],
                                           rtol=1e-12, atol=1e-14)


def test_linear_residual_network_against_exact_recursion():
    """σ(z) = z: z' = (ξ + γW) z + γ b, so E[z'z'ᵀ] = ξ² G + γ² (C_b + C_W G) and
    E[Ĥ'] = ξ² Θ + γ² (λ_b + λ_W G + C_W Θ), exactly at every width (W is independent of
    layer ℓ and has zero mean); written here as the matrix products, per layer."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((3, 5))
    L = 6
    xi = [1.0, 0.8, 1.0, 0.9, 1.1]
    gamma = [0.5, 0.7, 0.2, 1.0, 0.3]
    C_b, C_W, lb, lW = 0.2, 1.3, 0.7, 1.9
    net = derive.ResMLP(L, 64, "linear", C_b=C_b, C_W=C_W, xi=xi, gamma=gamma, lambda_b=lb,
                        lambda_W=lW)
    p = derive.predict(net, X, order=0)
    G0 = X @ X.T / X.shape[1]
    G, T = C_b + C_W * G0, lb + lW * G0
    for layer in range(2, L + 1):
        x, g = xi[layer - 2], gamma[layer - 2]
        G, T = (x ** 2 * G + g ** 2 * (C_b + C_W * G),
                x ** 2 * T + g ** 2 * (lb + lW * G + C_W * T))
        np.testing.assert_allclose(p.K[layer], G, rtol=1e-12)
        np.testing.assert_allclose(p.Theta[layer], T, rtol=1e-12)


def test_user_equation_for_the_mlp_gives_the_preset_recursions():
    user = parse_forward_equation("b[i] + sum_j(W[i,j]*sigma(z[j]))")
    a = derive_layer_step(user, order=1)
    b = derive_layer_step(order=1)
    for q in ("K", "G1", "V", "Theta"):
        assert a.recursions[q] == b.recursions[q]
    res = parse_forward_equation("xi*z[i] + gamma*(b[i] + sum_j(W[i,j]*sigma(z[j])))",
                                 ["xi", "gamma"])
    assert res.expr == residual_equation().expr


@pytest.mark.parametrize("text, match", [
    ("z[j]", "scalar times z"),
    ("b[i] + sum_j(W[i,j]*W[i,j]*sigma(z[j]))", "exactly once"),
    ("1 + b[i] + sum_j(W[i,j]*sigma(z[j]))", "nonzero mean"),
    ("b[i] + sum_j(W[i,j]*sigma(z[i]))", "functions of z\\[j\\]"),
    ("b[i]", "no weight sum"),
    ("b[i] + sum_j(W[i,j]*sigma(z[j])) + q*z[i]", "unknown name 'q'"),
    ("b[i] + sum_j(W[i,j]*sigma(z[j])).real", "attribute access"),
    ("b[i] + sum_j(W[j,i]*sigma(z[j]))", "W\\[i,j\\]"),
])
def test_malformed_user_equation_is_refused_clearly(text, match):
    with pytest.raises(DeriveError, match=match):
        parse_forward_equation(text, [])


def test_resmlp_validation():
    with pytest.raises(DeriveError, match="equal"):
        derive.ResMLP(3, [16, 32], "tanh", C_b=0.0, C_W=1.0)
    with pytest.raises(DeriveError, match="residual layer"):
        derive.ResMLP(3, 16, "tanh", C_b=0.0, C_W=1.0, xi=[1.0, 1.0, 1.0])
    net = derive.ResMLP(3, 16, "tanh", C_b=0.0, C_W=1.0, xi=[1.0, 0.5], gamma=0.2)
    assert net.xi(3) == 0.5 and net.gamma(2) == 0.2
    assert net.with_widths(8).xi(3) == 0.5 and net.with_widths(8).widths == (8, 8)
    assert "ResMLP(" in repr(net)


def test_spec_file_forward_equation_and_residual_architecture():
    from derive.cli.specfile import spec_from_mapping

    base = {"activation": "tanh", "depth": 4, "widths": 16, "C_W": 1.0,
            "inputs": [[1.0, 0.5, -0.3], [0.2, -1.0, 0.4]]}
    user, X, targets, order = spec_from_mapping(
        {**base, "forward": "b[i] + sum_j(W[i,j]*sigma(z[j]))"})
    preset, *_ = spec_from_mapping(base)
    du, dp = derive.derive(user, targets, order), derive.derive(preset, targets, order)
    assert du.recursions == dp.recursions and order == 1
    pu, pp = derive.predict(user, X), derive.predict(preset, X)
    for q in ("K", "G1", "V", "Theta"):
        np.testing.assert_array_equal(getattr(pu, q)[4], getattr(pp, q)[4])
    res, _, targets, order = spec_from_mapping({**base, "architecture": "residual", "xi": 1.0,
                                                "gamma": [0.5, 0.4, 0.3]})
    assert isinstance(res, derive.ResMLP) and targets == ("K", "Theta") and order == 0
    with pytest.raises(DeriveError, match="trajectory"):
        spec_from_mapping({**base, "architecture": "residual", "targets": ["V"]})
    with pytest.raises(DeriveError, match="attribute access"):
        spec_from_mapping({**base, "forward": "b[i] + sum_j(W[i,j]*sigma(z[j])).conjugate"})
    with pytest.raises(DeriveError, match="unknown name .a."):
        spec_from_mapping({**base, "forward": "a*z[i] + b[i] + sum_j(W[i,j]*sigma(z[j]))"})
    with pytest.raises(DeriveError, match="architecture must be"):
        spec_from_mapping({**base, "architecture": "transformer"})


def test_generated_evaluator_runs_as_a_script(tmp_path):
    """``python evaluator.py --inputs X.npy`` prints the numbers predict gives (MLP and a
    residual network, whose module offers the leading order only)."""
    import subprocess
    import sys

    X = np.array([[1.0, 0.3], [0.2, -1.0]])
    np.save(tmp_path / "X.npy", X)
    for spec, order in ((derive.MLP(3, 16, "tanh", 0.0, 1.0), "1"),
                        (derive.ResMLP(3, 16, "relu", 0.0, 1.0, xi=1.0, gamma=0.5), "0")):
        path = tmp_path / "evaluator.py"
        path.write_text(derive.derive(spec).numpy_module())
        r = subprocess.run([sys.executable, str(path), "--inputs", str(tmp_path / "X.npy"),
                            "--order", order], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        k3 = derive.predict(spec, X).K[3]
        assert f"{k3[0, 0]:.6f}" in r.stdout and "layer 3" in r.stdout
    r = subprocess.run([sys.executable, str(path), "--inputs", str(tmp_path / "X.npy"),
                        "--order", "1"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "not derived" in r.stderr
