"""Monte Carlo ensembles of actual networks against exact finite-width oracles (docs/conventions.md §4)."""
import numpy as np
import pytest

from derive import MLP
from derive.reality.montecarlo import MonteCarloError, sample


def z_score(est, err, exact):
    return abs(est - exact) / max(err, 1e-12)


def linear_oracle(widths, C_W, G0):
    """Exact single-input statistics of a linear net (C_b = 0), derived here: conditional on
    layer ℓ, z^{(ℓ+1)} is Gaussian with Ĝ = (C_W/n_ℓ) Σ_k z_k², so with Q_ℓ = E[Ĝ^{(ℓ)2}],
    Q_{ℓ+1} = C_W^{(ℓ+1)2} (n_ℓ E[z⁴] + n_ℓ(n_ℓ−1) E[z_k² z_l²]) / n_ℓ² = C_W^{(ℓ+1)2}(1 + 2/n_ℓ) Q_ℓ.
    Returns K_ℓ and n_{ℓ−1}·Cov(z_i², z_j²) = n_{ℓ−1}(Q_ℓ − K_ℓ²) for ℓ = 1 … L."""
    K = [C_W[0] * G0]
    Q = [K[0] ** 2]
    for l in range(1, len(C_W)):
        K.append(C_W[l] * K[-1])
        Q.append(C_W[l] ** 2 * (1 + 2 / widths[l - 1]) * Q[-1])
    fan = [None] + list(widths)
    V = [0.0] + [fan[l] * (Q[l] - K[l] ** 2) for l in range(1, len(C_W))]
    return K, V


def test_linear_unequal_widths_per_layer_CW():
    spec = MLP(4, [3, 6, 4], "linear", C_b=0.0, C_W=[1.3, 0.8, 1.6, 1.1])
    X = np.array([[1.0, -0.5, 0.7, 0.2]])
    G0 = (X @ X.T)[0, 0] / 4
    ens = sample(spec, X, 40_000, seed=3, output_width=5)
    K, V = linear_oracle([3, 6, 4], [1.3, 0.8, 1.6, 1.1], G0)
    for l in range(1, 5):
        e = ens.layers[l]
        assert z_score(e.G[0, 0], e.G_err[0, 0], K[l - 1]) < 4.5, l
        assert z_score(e.V[0, 0, 0, 0], e.V_err[0, 0, 0, 0], V[l - 1]) < 4.5, l


@pytest.mark.slow
@pytest.mark.parametrize("n", [4, 8])
def test_relu_criticality_oracle(n):
    """ReLU at C_W = 2, C_b = 0: K = 2G0 at every width and n·Cov(z_i², z_j²) = n K²[(1+5/n)^{ℓ−1} − 1]."""
    spec = MLP(4, n, "relu", C_b=0.0, C_W=2.0)
    X = np.array([[0.9, -1.1]])
    G0 = (X @ X.T)[0, 0] / 2
    ens = sample(spec, X, 60_000, seed=7, output_width=n, ntk=False)
    K = 2 * G0
    for l in range(1, 5):
        e = ens.layers[l]
        exact = n * K ** 2 * ((1 + 5 / n) ** (l - 1) - 1) if l > 1 else 0.0
        assert z_score(e.G[0, 0], e.G_err[0, 0], K) < 4.5
        assert z_score(e.V[0, 0, 0, 0], e.V_err[0, 0, 0, 0], exact) < 4.5, (l, e.V[0, 0, 0, 0], exact)


def test_linear_ntk_mean():
    """For σ(z) = z the NTK mean obeys Θ^{(ℓ+1)} = λ_b + λ_W K^{(ℓ)} + C_W Θ^{(ℓ)} exactly
    (W^{(ℓ+1)} is independent of Ĥ^{(ℓ)}), two inputs, unequal λ's."""
    spec = MLP(3, [5, 3], "linear", C_b=0.2, C_W=[1.0, 1.4, 0.7], lambda_b=[0.5, 1.0, 2.0],
               lambda_W=[1.0, 0.3, 1.5])
    X = np.array([[1.0, 0.0, 0.5], [0.2, -0.8, 0.4]])
    G0 = X @ X.T / 3
    ens = sample(spec, X, 20_000, seed=11, output_width=4)
    K = spec.C_b(1) + spec.C_W(1) * G0
    Th = spec.lambda_b(1) + spec.lambda_W(1) * G0
    for l in range(1, 4):
        if l > 1:
            Th = spec.lambda_b(l) + spec.lambda_W(l) * K + spec.C_W(l) * Th
            K = spec.C_b(l) + spec.C_W(l) * K
        e = ens.layers[l]
        for a in range(2):
            for b in range(2):
                assert z_score(e.Theta[a, b], e.Theta_err[a, b], Th[a, b]) < 4.5, (l, a, b)
                assert z_score(e.G[a, b], e.G_err[a, b], K[a, b]) < 4.5, (l, a, b)


def test_first_layer_is_gaussian_and_seeded():
    spec = MLP(2, 6, "tanh", C_b=0.1, C_W=1.0)
    X = np.array([[1.0, 2.0], [-1.0, 0.5]])
    a = sample(spec, X, 400, seed=5)
    b = sample(spec, X, 400, seed=5)
    assert np.array_equal(a.layers[2].V, b.layers[2].V)
    assert np.all(np.abs(a.layers[1].V) <= 5 * a.layers[1].V_err + 1e-12)  # V^{(1)} = 0
    assert a.layers[1].V.shape == (2, 2, 2, 2) and a.G[2].shape == (2, 2)


def test_bad_input():
    spec = MLP(2, 6, "tanh", C_b=0.0, C_W=1.0)
    with pytest.raises(MonteCarloError, match="≥ 40"):
        sample(spec, np.ones((1, 2)), 10)
    with pytest.raises(MonteCarloError, match="shape"):
        sample(spec, np.ones(3), 100)
    with pytest.raises(MonteCarloError, match="NaN"):
        sample(spec, np.array([[np.nan, 1.0]]), 100)
    with pytest.raises(MonteCarloError, match="≥ 2 neurons"):
        sample(MLP(2, 1, "tanh", 0.0, 1.0), np.ones((1, 2)), 100)
    with pytest.raises(MonteCarloError, match="layer 2: preactivations overflowed"):
        sample(MLP(3, 50, "exp(z)", 0.0, 1e6), np.ones((1, 2)), 40)
