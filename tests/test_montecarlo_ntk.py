"""Monte Carlo estimators of the NTK's O(1/n) statistics A, B, D, F (docs/conventions.md §3).

For neurons i ≠ j of layer ℓ, with n = n_{ℓ−1}:
A[a,b,c,d] = n Cov(Ĥ_{ii;ab}, Ĥ_{jj;cd}),  B[a,b,c,d] = n E[Ĥ_{ij;ac} Ĥ_{ij;bd}],
D[a,b,c,d] = n Cov(Ĥ_{ii;ab}, z_{j;c} z_{j;d}),  F[a,b,c,d] = n E[Ĥ_{ij;ac} z_{i;b} z_{j;d}].

Every expected value here is computed in this file: the NTK by central differences on every
parameter, the estimators by explicit loops over neuron pairs and networks, and an exact
finite-width oracle for a linear network derived by hand.
"""
import numpy as np
import pytest

from derive import MLP, ResMLP
from derive.reality import montecarlo
from derive.reality.montecarlo import sample

X2 = np.array([[1.0, 0.5, -0.3], [0.2, -1.0, 0.4]])
NTK4 = ("A", "B", "D", "F")


def z_score(est, err, exact):
    return np.abs(est - exact) / np.maximum(err, 1e-12)


# -- the NTK of one network, by finite differences ------------------------------------------------

def forward(Ws, bs, X, sig, xi, gamma):
    """z^{(ℓ)} (n_ℓ × N) of one network for ℓ = 1 … L: z^{(1)} = b + W x and
    z^{(ℓ+1)} = ξ z^{(ℓ)} + γ (b + W σ(z^{(ℓ)})) (the MLP: ξ = 0, γ = 1)."""
    zs = [bs[0][:, None] + Ws[0] @ X.T]
    for k in range(1, len(Ws)):
        new = gamma[k - 1] * (bs[k][:, None] + Ws[k] @ sig(zs[-1]))
        zs.append(new + xi[k - 1] * zs[-1] if xi[k - 1] else new)   # (a skip: equal widths)
    return zs


def fd_ntk(Ws, bs, X, lam_b, lam_W, sig=np.tanh, xi=None, gamma=None, h=1e-5):
    """Ĥ^{(ℓ)}_{i1i2;α1α2} = Σ_θ λ_θ ∂z^{(ℓ)}_{i1;α1}/∂θ ∂z^{(ℓ)}_{i2;α2}/∂θ (n_ℓ × n_ℓ × N × N) for
    every layer, with λ_b^{(m)} per bias and λ_W^{(m)}/n_{m−1} per weight of layer m, and every
    derivative a central difference."""
    L = len(Ws)
    xi = [0.0] * (L - 1) if xi is None else xi
    gamma = [1.0] * (L - 1) if gamma is None else gamma
    Ws = [W.copy() for W in Ws]
    bs = [b.copy() for b in bs]
    zs = forward(Ws, bs, X, sig, xi, gamma)
    Hs = [np.zeros((z.shape[0], z.shape[0], X.shape[0], X.shape[0])) for z in zs]
    for m in range(L):
        for arr, lam in ((Ws[m], lam_W[m] / Ws[m].shape[1]), (bs[m], lam_b[m])):
            for idx in np.ndindex(arr.shape):
                v = arr[idx]
                arr[idx] = v + h
                up = forward(Ws, bs, X, sig, xi, gamma)
                arr[idx] = v - h
                dn = forward(Ws, bs, X, sig, xi, gamma)
                arr[idx] = v
                for l in range(L):
                    d = (up[l] - dn[l]) / (2 * h)                   # (n_ℓ, N)
                    Hs[l] += lam * np.einsum("ia,jb->ijab", d, d)
    return zs, Hs


CASES = {
    "mlp": dict(make=lambda: MLP(3, [3, 4], "tanh", C_b=[0.2, 0.1, 0.3], C_W=[1.0, 1.3, 0.7],
                                 lambda_b=[0.5, 1.0, 2.0], lambda_W=[1.0, 0.3, 1.5]),
                widths=[3, 4, 3], xi=None, gamma=None),
    "resmlp": dict(make=lambda: ResMLP(3, 4, "tanh", C_b=0.2, C_W=[1.0, 0.9, 1.3], xi=[1.0, 0.6],
                                       gamma=[0.5, 0.9], lambda_b=[0.5, 1.0, 2.0],
                                       lambda_W=[1.0, 0.3, 1.5]),
                   widths=[4, 4, 4], xi=[1.0, 0.6], gamma=[0.5, 0.9]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_ntk_of_one_network_is_its_parameter_gradient_ntk(case):
    """The sampler's Ĥ^{(ℓ)} (all neurons, off-diagonal included, two inputs) is the
    parameter-gradient NTK of the same weights, by central differences."""
    cfg = CASES[case]
    spec = cfg["make"]()
    rng = np.random.default_rng(0)
    n = [X2.shape[1]] + cfg["widths"]
    Ws = [rng.standard_normal((n[l], n[l - 1])) * np.sqrt(1.2 / n[l - 1]) for l in range(1, 4)]
    bs = [rng.standard_normal(n[l]) * 0.4 for l in range(1, 4)]
    lam_b = [spec.lambda_b(l) for l in range(1, 4)]
    lam_W = [spec.lambda_W(l) for l in range(1, 4)]
    zs, Hs = fd_ntk(Ws, bs, X2, lam_b, lam_W, xi=cfg["xi"], gamma=cfg["gamma"])
    got = montecarlo._network(spec, X2, [W[None] for W in Ws], [b[None] for b in bs])
    for l, ((z, H), z_ref, H_ref) in enumerate(zip(got, zs, Hs), 1):
        np.testing.assert_allclose(z[0], z_ref, rtol=1e-12, atol=1e-12, err_msg=f"z, layer {l}")
        np.testing.assert_allclose(H[0], H_ref, rtol=1e-7, atol=1e-8, err_msg=f"Ĥ, layer {l}")
        off = ~np.eye(n[l], dtype=bool)
        assert l == 1 or np.abs(H_ref[off]).max() > 1e-3    # the off-diagonal Ĥ_ij are compared


# -- the estimators, by explicit loops ------------------------------------------------------------

def brute_force(zs, Hs, fan_in, keep):
    """A, B, D, F from networks ``keep``: z (n × N) and Ĥ (n × n × N × N) per network, with
    explicit loops over ordered pairs i ≠ j, and products of means over pairs of different
    networks s ≠ t."""
    n, N = zs[0].shape
    out = {k: np.zeros((N,) * 4) for k in NTK4}
    o = np.multiply.outer
    for s in keep:
        z, H = zs[s], Hs[s]
        for i in range(n):
            for j in range(n):
                if i != j:
                    out["A"] += o(H[i, i], H[j, j])
                    out["B"] += np.einsum("ac,bd->abcd", H[i, j], H[i, j])
                    out["D"] += o(H[i, i], o(z[j], z[j]))
                    out["F"] += np.einsum("ac,b,d->abcd", H[i, j], z[i], z[j])
    S = len(keep)
    out = {k: v / (S * n * (n - 1)) for k, v in out.items()}
    h = {s: np.mean([Hs[s][i, i] for i in range(n)], axis=0) for s in keep}
    g = {s: zs[s].T @ zs[s] / n for s in keep}
    Uhh = sum(o(h[s], h[t]) for s in keep for t in keep if s != t) / (S * (S - 1))
    Uhg = sum(o(h[s], g[t]) for s in keep for t in keep if s != t) / (S * (S - 1))
    out["A"] -= Uhh
    out["D"] -= Uhg
    return {k: fan_in * v for k, v in out.items()}


def test_estimators_are_the_pair_and_network_averages(monkeypatch, recorded_draws):
    """On the very networks drawn (weights recorded), A, B, D, F and their 20-block jackknife
    errors equal the definitions evaluated by loops over i ≠ j and s ≠ t, with Ĥ from finite
    differences: this pins every index order (two inputs, so B[a,b,c,d] ≠ B[a,c,b,d])."""
    recs = recorded_draws
    cfg = CASES["mlp"]
    spec = cfg["make"]()
    S = 40
    n = [X2.shape[1]] + cfg["widths"]
    ens = sample(spec, X2, S, seed=4, output_width=n[3], progress=False)
    monkeypatch.undo()
    draws = recs[0].draws
    assert [d.shape for d in draws] == [(S, n[1], n[0]), (S, n[1]), (S, n[2], n[1]), (S, n[2]),
                                        (S, n[3], n[2]), (S, n[3])]
    Ws = [draws[2 * k] * np.sqrt(spec.C_W(k + 1) / n[k]) for k in range(3)]
    bs = [draws[2 * k + 1] * np.sqrt(spec.C_b(k + 1)) for k in range(3)]
    lam_b = [spec.lambda_b(l) for l in range(1, 4)]
    lam_W = [spec.lambda_W(l) for l in range(1, 4)]
    nets = [fd_ntk([W[s] for W in Ws], [b[s] for b in bs], X2, lam_b, lam_W) for s in range(S)]
    blocks = np.arange(S) % 20
    for l in (2, 3):
        zs = [net[0][l - 1] for net in nets]
        Hs = [net[1][l - 1] for net in nets]
        est = brute_force(zs, Hs, n[l - 1], list(range(S)))
        jack = [brute_force(zs, Hs, n[l - 1], list(np.flatnonzero(blocks != b))) for b in range(20)]
        e = ens.layers[l]
        for k in NTK4:
            vals = np.stack([j[k] for j in jack])
            err = np.sqrt(19 / 20 * ((vals - vals.mean(axis=0)) ** 2).sum(axis=0))
            scale = np.abs(est[k]).max()
            np.testing.assert_allclose(getattr(e, k), est[k], rtol=1e-6, atol=1e-8 * scale,
                                       err_msg=f"{k}, layer {l}")
            np.testing.assert_allclose(getattr(e, k + "_err"), err, rtol=1e-5, atol=1e-8 * scale,
                                       err_msg=f"{k}_err, layer {l}")
            assert scale > 1e-3, (k, l)                                      # not trivially 0


# -- layer 1 -----------------------------------------------------------------------------------

def test_first_layer_ntk_statistics_vanish():
    """Ĥ^{(1)} = δ_ij (λ_b + λ_W G0) is the same in every network: A = B = D = F = 0 there."""
    spec = MLP(3, 6, "tanh", C_b=0.1, C_W=1.2, lambda_b=0.7, lambda_W=1.3)
    ens = sample(spec, X2, 200, seed=2, progress=False)
    e1, e2 = ens.layers[1], ens.layers[2]
    for k in NTK4:
        v = getattr(e1, k)
        assert v.shape == (2, 2, 2, 2)
        scale = np.abs(getattr(e2, k)).max()        # the size these statistics have at layer 2
        assert scale > 1e-2, k
        assert np.abs(v).max() < 1e-10 * scale, (k, np.abs(v).max())
        assert np.abs(getattr(e1, k + "_err")).max() < 1e-10 * scale, k
    assert ens.A[1] is e1.A and ens.F[3] is ens.layers[3].F
    plain = sample(spec, X2, 200, seed=2, ntk=False, progress=False)
    assert all(getattr(plain.layers[2], k) is None and getattr(plain.layers[2], k + "_err") is None
               for k in NTK4)
    # the same draws; without the NTK a chunk holds more networks, so V's sums run in another
    # order (equal to rounding: with numpy 2.4.6 they differ in the last bit)
    np.testing.assert_allclose(plain.layers[3].V, ens.layers[3].V, rtol=1e-13, atol=0)


# -- an exact oracle: a linear network, layer 2 --------------------------------------------------

def linear_layer2_oracle(G0, C_b, C_W, lam_b, lam_W):
    r"""Exact A, B, D, F of layer 2 of a linear network (σ(z) = z), any widths, derived here.

    Layer 1: u_k := z^{(1)}_k = b_k + Σ_m W^{(1)}_{km} x_m, independent across k, each a Gaussian
    vector over inputs with covariance K = C_b1 + C_W1 G0; Ĥ^{(1)} = δ (Θ) with Θ = λ_b1 + λ_W1 G0.
    Layer 2 (n = n_1, C = C_W2, W_{ik} ~ N(0, C/n), b_i ~ N(0, C_b2)):
        z_i = b_i + Σ_k W_ik u_k,
        Ĥ_{ij;ab} = δ_ij [λ_b2 + (λ_W2/n) Q_ab] + Θ_ab Σ_k W_ik W_jk,   Q_ab = Σ_k u_{k;a} u_{k;b}.
    Cov(Q_ab, Q_cd) = n (K_ac K_bd + K_ad K_bc) (Isserlis, n independent neurons).
    For i ≠ j, rows i and j of W (and b_i, b_j) are independent of each other and of u:
    A: Cov(Ĥ_ii;ab, Ĥ_jj;cd) = (λ_W2/n)² Cov(Q_ab, Q_cd) (Σ_k W_ik² and Σ_k W_jk² are independent
       of each other and of Q) ⇒ A = λ_W2² (K_ac K_bd + K_ad K_bc).
    B: E[Ĥ_ij;ac Ĥ_ij;bd] = Θ_ac Θ_bd Σ_{k,l} E[W_ik W_il] E[W_jk W_jl] = Θ_ac Θ_bd n (C/n)²
       ⇒ B = C² Θ_ac Θ_bd.
    D: given u, Ĥ_ii (row i) and z_j (row j, b_j) are independent and E[z_jc z_jd | u] =
       C_b2 + (C/n) Q_cd, so Cov(Ĥ_ii;ab, z_jc z_jd) = (λ_W2/n)(C/n) Cov(Q_ab, Q_cd)
       ⇒ D = λ_W2 C (K_ac K_bd + K_ad K_bc).
    F: E[Ĥ_ij;ac z_ib z_jd] = Θ_ac Σ_{k,l,m} E[W_ik W_il] E[W_jk W_jm] E[u_lb u_md]
       (the terms with b_i or b_j vanish: E[b] = 0 and b is independent of the rest)
       = Θ_ac Σ_k (C/n)² K_bd ⇒ F = C² Θ_ac K_bd.
    All four are exact at every width (n · O(1/n) with no higher orders)."""
    K = C_b[0] + C_W[0] * G0
    Th = lam_b[0] + lam_W[0] * G0
    C = C_W[1]
    KK = np.einsum("ac,bd->abcd", K, K) + np.einsum("ad,bc->abcd", K, K)
    return {"A": lam_W[1] ** 2 * KK,
            "B": C ** 2 * np.einsum("ac,bd->abcd", Th, Th),
            "D": lam_W[1] * C * KK,
            "F": C ** 2 * np.einsum("ac,bd->abcd", Th, K)}


def test_linear_layer2_exact_oracle():
    C_b, C_W, lam_b, lam_W = [0.3, 0.2], [1.1, 0.8], [0.5, 0.4], [1.2, 0.9]
    spec = MLP(2, [4], "linear", C_b=C_b, C_W=C_W, lambda_b=lam_b, lambda_W=lam_W)
    G0 = X2 @ X2.T / X2.shape[1]
    ens = sample(spec, X2, 4000, seed=21, output_width=3, progress=False)
    exact = linear_layer2_oracle(G0, C_b, C_W, lam_b, lam_W)
    e = ens.layers[2]
    for k in NTK4:
        z = z_score(getattr(e, k), getattr(e, k + "_err"), exact[k])
        assert z.max() < 4.5, (k, getattr(e, k), exact[k], z)
        # the errors are small enough for this to test something: a few % of the values
        assert np.all(getattr(e, k + "_err") < 0.1 * np.abs(exact[k]).max()), k


# -- statistics at a deeper tanh layer ------------------------------------------------------------

def test_tanh_deep_layer_seeds_agree_and_errors_scale():
    """Layer 4 of a tanh MLP: two seeds agree within errors, and 4× the networks halve them."""
    spec = MLP(4, 8, "tanh", C_b=0.1, C_W=1.2, lambda_b=0.5, lambda_W=1.0)
    small = sample(spec, X2, 2000, seed=1, progress=False)
    other = sample(spec, X2, 2000, seed=2, progress=False)
    big = sample(spec, X2, 8000, seed=3, progress=False)
    for l in (3, 4):
        for k in NTK4:
            a, ea = getattr(small.layers[l], k), getattr(small.layers[l], k + "_err")
            b, eb = getattr(other.layers[l], k), getattr(other.layers[l], k + "_err")
            assert np.all(np.abs(a - b) < 4.5 * np.hypot(ea, eb)), (l, k)
            assert np.abs(a).max() > 5 * ea.max(), (l, k)          # resolved, not noise
            ratio = np.median(ea / getattr(big.layers[l], k + "_err"))
            assert 1.4 < ratio < 2.9, (l, k, ratio)
