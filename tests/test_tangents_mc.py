r"""The Monte Carlo of the dNTK and ddNTK statistics (derive.reality.tangents) against references
that share nothing with it:

* the raw tensors dĤ, ddIĤ, ddIIĤ of given small networks against finite differences of a plain
  numpy forward pass written here (its own flat parameter layout, its own λ vector, its own
  finite-difference gradient u);
* each network's pair average against explicit loops over the pairs a ≠ b of those raw
  tensors (the bookkeeping of the estimator's contractions);
* exact values, derived by hand in the docstrings below, of depth-2 networks: linear σ with two
  inputs, and tanh with one input (the first layer is exactly Gaussian at any width, so every
  statistic is an exact Gaussian integral at the width sampled);
* a depth-1 network (z linear in θ): every statistic is exactly 0.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from derive import MLP, DeriveError  # noqa: E402
from derive.reality import tangents  # noqa: E402
from derive.reality.tangents import (NAMES, derivative_tensors,  # noqa: E402
                                     tangent_statistics)

X2 = np.array([[1.0, 0.5, -0.3], [0.2, -1.0, 0.4]])


# --- a plain numpy network, written here -------------------------------------------------

def forward(spec, X, theta, widths):
    """z (n_L, N) of one network from the flat θ = (W1 row-major, b1, W2, b2, …)."""
    h, s = X.T, 0
    for l in range(1, len(widths)):
        n_in, n_l = widths[l - 1], widths[l]
        W = theta[s:s + n_l * n_in].reshape(n_l, n_in)
        s += n_l * n_in
        b = theta[s:s + n_l]
        s += n_l
        z = W @ h + b[:, None]
        h = np.tanh(z) if spec.activation_name == "tanh" else z
    return z


def lam_vector(spec, widths):
    out = []
    for l in range(1, len(widths)):
        out += [np.full(widths[l] * widths[l - 1], spec.lambda_W(l) / widths[l - 1]),
                np.full(widths[l], spec.lambda_b(l))]
    return np.concatenate(out)


def flat(Ws, bs, k):
    return np.concatenate([np.concatenate([W[k].ravel(), b[k]]) for W, b in zip(Ws, bs)])


def random_network(spec, widths, c, seed):
    rng = np.random.default_rng(seed)
    Ws, bs = [], []
    for l in range(1, len(widths)):
        Ws.append(rng.standard_normal((c, widths[l], widths[l - 1])) *
                  np.sqrt(spec.C_W(l) / widths[l - 1]))
        bs.append(rng.standard_normal((c, widths[l])) * np.sqrt(spec.C_b(l)) + 0.1)
    return Ws, bs


SPEC3 = MLP(3, [4, 3], "tanh", C_b=[0.2, 0.3, 0.1], C_W=[1.5, 2.0, 1.2],
            lambda_b=[0.7, 1.3, 0.9], lambda_W=[1.1, 0.6, 1.4])
WIDTHS3 = [3, 4, 3, 2]


@pytest.fixture(scope="module")
def raw3():
    Ws, bs = random_network(SPEC3, WIDTHS3, 2, seed=5)
    return Ws, bs, derivative_tensors(SPEC3, X2, Ws, bs)


def fd_reference(spec, X, theta, widths):
    """u, dĤ, ddIĤ, ddIIĤ of one network by central finite differences of ``forward``."""
    P = theta.size
    lam = lam_vector(spec, widths)

    def z(t):
        return forward(spec, X, t, widths)

    nL, N = z(theta).shape
    h1 = 1e-6
    grad = np.array([(z(theta + h1 * e) - z(theta - h1 * e)) / (2 * h1) for e in np.eye(P)])
    u = (lam[:, None, None] * grad).transpose(1, 2, 0)             # (n_L, N, P)
    U = u.reshape(nL * N, P)                                        # row i N + δ

    def mixed2(v, w, h=1e-4):         # D²z[v, w], all outputs
        hv, hw = h / np.linalg.norm(v), h / np.linalg.norm(w)
        d = (z(theta + hv * v + hw * w) - z(theta + hv * v - hw * w)
             - z(theta - hv * v + hw * w) + z(theta - hv * v - hw * w))
        return d / (4 * hv * hw)

    def central3(v, w, x, h):
        hv, hw, hx = (h / np.linalg.norm(a) for a in (v, w, x))
        d = 0.0
        for sv in (1, -1):
            for sw in (1, -1):
                for sx in (1, -1):
                    d = d + sv * sw * sx * z(theta + sv * hv * v + sw * hw * w + sx * hx * x)
        return d / (8 * hv * hw * hx)

    def mixed3(v, w, x, h=4e-3):      # D³z[v, w, x], all outputs (Richardson: error O(h⁴))
        return (4 * central3(v, w, x, h / 2) - central3(v, w, x, h)) / 3

    M = nL * N
    D2 = np.array([[mixed2(U[e], U[d]) for d in range(M)] for e in range(M)])   # [e, d, i0, δ0]
    dH = D2.reshape(nL, N, nL, N, nL, N).transpose(4, 0, 2, 5, 1, 3)         # i0 i1 i2 δ0 δ1 δ2
    D3 = np.array([[[mixed3(U[a], U[b], U[e]) for e in range(M)] for b in range(M)]
                   for a in range(M)])
    ddI = D3.reshape((nL, N) * 3 + (nL, N)).transpose(6, 0, 2, 4, 7, 1, 3, 5)
    # H_f u_d as a vector: component p is D²z_f[e_p, u_d]
    HU = np.array([[mixed2(e, U[d]) for e in np.eye(P)] for d in range(M)])    # [d, p, i, δ]
    HU = HU.reshape(nL, N, P, nL, N)                                            # [i_d, δ_d, p, i_f, δ_f]
    ddII = np.einsum("hkpfi,p,lmpgj->fghlijkm", HU, lam, HU)  # i1 i2 i3 i4 δ1 δ2 δ3 δ4
    return u, dH, ddI, ddII


def test_raw_tensors_against_finite_differences(raw3):
    Ws, bs, got = raw3
    for k in range(2):
        theta = flat(Ws, bs, k)
        u, dH, ddI, ddII = fd_reference(SPEC3, X2, theta, WIDTHS3)
        np.testing.assert_allclose(got["z"][k], forward(SPEC3, X2, theta, WIDTHS3), rtol=1e-13)
        np.testing.assert_allclose(got["u"][k], u, rtol=0, atol=1e-8 * np.abs(u).max())
        for name, ref, rel in (("dH", dH, 1e-6), ("ddIH", ddI, 2e-6), ("ddIIH", ddII, 1e-6)):
            scale = np.abs(ref).max()
            assert scale > 1e-2, name          # a nontrivial tensor
            err = np.abs(got[name][k] - ref).max() / scale
            assert err < rel, (name, k, err)


def test_dntk_is_the_split_derivative_of_the_ntk(raw3):
    """D_{u_{i2}} Ĥ_{i0i1} = dĤ_{i0i1i2} + dĤ_{i1i0i2}, with Ĥ = u·∇z by finite differences."""
    Ws, bs, got = raw3
    theta = flat(Ws, bs, 0)
    lam = lam_vector(SPEC3, WIDTHS3)
    P = theta.size

    def ntk(t):
        h = 1e-6
        g = np.array([(forward(SPEC3, X2, t + h * e, WIDTHS3) - forward(SPEC3, X2, t - h * e, WIDTHS3))
                      / (2 * h) for e in np.eye(P)])                 # (P, n_L, N)
        return np.einsum("pia,p,pjb->ijab", g, lam, g)

    u = got["u"][0]
    h = 1e-3
    for i2 in range(2):
        for d2 in range(2):
            v = u[i2, d2] / np.linalg.norm(u[i2, d2])
            dd = (ntk(theta + h * v) - ntk(theta - h * v)) / (2 * h) * np.linalg.norm(u[i2, d2])
            dH = got["dH"][0][:, :, i2, :, :, d2]                  # [i0, i1, δ0, δ1]
            want = dH + dH.transpose(1, 0, 3, 2)
            assert np.abs(dd - want).max() < 1e-5 * np.abs(want).max()


def test_pair_average_against_explicit_loops():
    spec = MLP(3, [4, 3], "tanh", C_b=0.2, C_W=1.7, lambda_b=0.8, lambda_W=1.3)
    widths = [3, 4, 3, 3]
    Ws, bs = random_network(spec, widths, 2, seed=9)
    raw = derivative_tensors(spec, X2, Ws, bs)
    net = tangents._Network(spec, X2, 3)
    got = tangents._per_network(net, net.given(Ws, bs))
    n, nL, N = 3, 3, 2
    for k in range(2):
        z, dH, ddI, ddII = raw["z"][k], raw["dH"][k], raw["ddIH"][k], raw["ddIIH"][k]
        want = np.zeros((6,) + (N,) * 4)
        pairs = [(a, b) for a in range(nL) for b in range(nL) if a != b]
        for a, b in pairs:
            for d0 in range(N):
                for d1 in range(N):
                    for d2 in range(N):
                        for d3 in range(N):
                            want[0, d0, d1, d2, d3] += dH[a, a, b, d0, d1, d2] * z[b, d3]
                            want[1, d0, d1, d2, d3] += dH[a, b, b, d0, d1, d2] * z[a, d3]
                            want[2, d0, d1, d2, d3] += ddI[a, a, b, b, d0, d1, d2, d3]
                            want[3, d0, d1, d2, d3] += ddII[a, a, b, b, d0, d1, d2, d3]
                            want[4, d0, d1, d2, d3] += ddII[a, b, a, b, d0, d1, d2, d3]
                            want[5, d0, d1, d2, d3] += ddII[a, b, b, a, d0, d1, d2, d3]
        want *= n / len(pairs)
        np.testing.assert_allclose(got[k], want, rtol=1e-11, atol=1e-13 * np.abs(want).max())
        assert np.abs(want).min(axis=(1, 2, 3, 4)).max() > 0


def test_depth_one_is_exactly_zero():
    spec = MLP(1, [], "tanh", C_b=0.5, C_W=1.3, lambda_b=0.7, lambda_W=2.0)
    r = tangent_statistics(spec, X2, 6, output_width=3)
    assert r.fan_in == 3 and r.output_width == 3 and r.n_networks == 6
    for name in NAMES:
        assert r.value(name).shape == (2, 2, 2, 2)
        assert np.abs(r.value(name)).max() < 1e-12 and np.abs(r.se(name)).max() < 1e-12


def _within(r, exact, k=4.0):
    for name, want in exact.items():
        got, se = r.value(name), r.se(name)
        assert np.all(np.abs(got - want) <= k * se + 1e-12 * (1 + np.abs(want))), \
            (name, got, want, se)


def test_depth_two_linear_exact():
    r"""Depth 2, σ(z) = z, N = 2.  With u_i = λ ⊙ ∇z_i, Θ1 = λ_b1 + λ_W1 G0, K1 = C_b1 + C_W1 G0:
    u_i has the parts λ_b2 (b2_i), (λ_W2/n1) z1_j (W2_ij), λ_b1 W2_ij (b1_j), (λ_W1/n0) W2_ij x_k
    (W1_jk); the only second derivatives are ∂²z_i/∂W2_ij∂b1_j = 1, ∂²z_i/∂W2_ij∂W1_jk = x_k, so
    dĤ_{i0i1i2} = (λ_W2/n1)[δ_{i0i1} Θ1_{δ0δ2} Σ_j z1_{j;δ1} W2_{i2j} + (i1,δ1 ↔ i2,δ2)], and
    E[Σ_j z1_{j;δ1} W2_{bj} z_{b;δ3}] = C_W2 K1_{δ1δ3}: P = λ_W2 C_W2 Θ1_{δ0δ2} K1_{δ1δ3}, Q = 0.
    H_{i;δ} u_{m;δ'} has the parts δ_{ii'} W2_mj Θ1_{δδ'} (W2_{i'j}), (λ_W2/n1) δ_{im} z1_{j;δ'}
    (b1_j) and x_{k;δ} times that (W1_jk), so ddIIĤ_{i1i2i3i4} = (λ_W2/n1) δ_{i1i2} Θ1_{13} Θ1_{24}
    Σ_j W2_{i3j} W2_{i4j} + (λ_W2/n1)² δ_{i1i3} δ_{i2i4} Θ1_{12} Σ_j z1_{j;3} z1_{j;4}:
    S = λ_W2 C_W2 Θ1_{δ1δ3} Θ1_{δ2δ4}, T = λ_W2² Θ1_{δ1δ2} K1_{δ3δ4}, Udd = 0.  No third
    derivatives: R = 0.  Exact at every width (layer 1 is Gaussian, W2 independent of it)."""
    Cb, CW, lb, lW = [0.3, 0.2], [1.5, 0.8], [0.7, 1.3], [1.1, 0.6]
    spec = MLP(2, 5, "linear", C_b=Cb, C_W=CW, lambda_b=lb, lambda_W=lW)
    r = tangent_statistics(spec, X2, 3000, seed=3, output_width=3)
    G0 = X2 @ X2.T / X2.shape[1]
    K1, Th = Cb[0] + CW[0] * G0, lb[0] + lW[0] * G0
    zero = np.zeros((2,) * 4)
    exact = {"P": lW[1] * CW[1] * np.einsum("ac,bd->abcd", Th, K1), "Q": zero, "R": zero,
             "S": lW[1] * CW[1] * np.einsum("ac,bd->abcd", Th, Th),
             "T": lW[1] ** 2 * np.einsum("ab,cd->abcd", Th, K1), "Udd": zero}
    assert r.fan_in == 5
    _within(r, exact)
    # the test has power: the same forms with the sample indices paired differently are refused
    wrong = {"P": lW[1] * CW[1] * np.einsum("bd,ac->abcd", Th, K1),
             "S": lW[1] * CW[1] * np.einsum("ab,cd->abcd", Th, Th),
             "T": lW[1] ** 2 * np.einsum("cd,ab->abcd", Th, K1)}
    for name, alt in wrong.items():
        assert r.se(name).max() < 0.03 * np.abs(exact[name]).max()
        with pytest.raises(AssertionError):
            _within(r, {name: alt})


@pytest.mark.parametrize("act", ["tanh", "relu"])
def test_depth_two_nonlinear_exact(act):
    r"""Depth 2, σ = tanh or ReLU, N = 1, s_j = σ(z1_j), ⟨·⟩ over z ~ N(0, K1).  With
    ŵ_j(v) = v_{b1_j} + Σ_k x_k v_{W1_jk} (so ŵ_j(u_m) = Θ1 W2_mj s'_j),
    D²z_i[v, w] = Σ_j [v_{W2_ij} s'_j ŵ_j(w) + w_{W2_ij} s'_j ŵ_j(v) + W2_ij s''_j ŵ_j(v) ŵ_j(w)],
    D³z_i[v, w, x] = Σ_j [v_{W2_ij} s''_j ŵ_j(w) ŵ_j(x) + (2 perms) + W2_ij s'''_j ŵ_j(v) ŵ_j(w) ŵ_j(x)],
    and H_i u_m has the parts δ_{ii'} Θ1 W2_mj s'_j² (W2_{i'j}) and β_j = (λ_W2/n1) δ_{im} s_j s'_j
    + Θ1 W2_ij W2_mj s'_j s''_j (b1_j; x_k β_j for W1_jk).  Averaging over W2 (E W2² = C_W2/n1):
    P = λ_W2 C_W2 Θ1 ⟨σ²σ'²⟩ + C_W2² Θ1² ⟨σσ'²σ''⟩,  Q = C_W2² Θ1² ⟨σσ'²σ''⟩,
    R = λ_W2 C_W2 Θ1² ⟨σσ'²σ''⟩ + C_W2² Θ1³ ⟨σ'³σ'''⟩,
    S = λ_W2 C_W2 Θ1² ⟨σ'⁴⟩ + C_W2² Θ1³ ⟨σ'²σ''²⟩,
    T = Θ1 [λ_W2² ⟨σ²σ'²⟩ + 2 λ_W2 C_W2 Θ1 ⟨σσ'²σ''⟩ + C_W2² Θ1² ⟨σ'²σ''²⟩],
    Udd = C_W2² Θ1³ ⟨σ'²σ''²⟩ — exact at every width.  For ReLU autograd's σ'' and σ''' vanish
    (almost everywhere: an actual network never sits on the kink), so Q = R = Udd = 0, and
    ⟨σ²σ'²⟩ = K1/2, ⟨σ'⁴⟩ = 1/2."""
    Cb, CW, lb, lW = [0.2, 0.1], [1.3, 1.6], [0.8, 1.2], [1.4, 0.9]
    spec = MLP(2, 4, act, C_b=Cb, C_W=CW, lambda_b=lb, lambda_W=lW)
    X = np.array([[0.9, -0.4, 0.6]])
    G0 = float(X[0] @ X[0]) / 3
    K1, Th = Cb[0] + CW[0] * G0, lb[0] + lW[0] * G0
    if act == "tanh":
        nodes, w = np.polynomial.hermite_e.hermegauss(80)
        w = w / w.sum()
        t = np.tanh(nodes * np.sqrt(K1))
        s1 = 1 - t ** 2
        s2 = -2 * t * s1
        s3 = s1 * (6 * t ** 2 - 2)

        def E(f):
            return float(w @ f)

        m = {"ss": E(t ** 2 * s1 ** 2), "s2": E(t * s1 ** 2 * s2), "s3": E(s1 ** 3 * s3),
             "p4": E(s1 ** 4), "pp": E(s1 ** 2 * s2 ** 2)}
    else:
        m = {"ss": K1 / 2, "s2": 0.0, "s3": 0.0, "p4": 0.5, "pp": 0.0}
    l2, c2 = lW[1], CW[1]
    exact = {"P": l2 * c2 * Th * m["ss"] + c2 ** 2 * Th ** 2 * m["s2"],
             "Q": c2 ** 2 * Th ** 2 * m["s2"],
             "R": l2 * c2 * Th ** 2 * m["s2"] + c2 ** 2 * Th ** 3 * m["s3"],
             "S": l2 * c2 * Th ** 2 * m["p4"] + c2 ** 2 * Th ** 3 * m["pp"],
             "T": Th * (l2 ** 2 * m["ss"] + 2 * l2 * c2 * Th * m["s2"] + c2 ** 2 * Th ** 2 * m["pp"]),
             "Udd": c2 ** 2 * Th ** 3 * m["pp"]}
    r = tangent_statistics(spec, X, 20000, seed=1)
    assert r.value("P").shape == (1, 1, 1, 1)
    _within(r, exact)
    # power: each nonzero statistic to better than 5 %; for tanh the σ'' term of P (its Q)
    # is many errors
    for name, want in exact.items():
        assert r.se(name).item() < 0.05 * abs(want) or want == 0
    if act == "tanh":
        assert abs(exact["Q"]) > 10 * r.se("P").item()


def test_seeded_and_chunk_independent():
    spec = MLP(3, 4, "tanh", C_b=0.1, C_W=1.5)
    a = tangent_statistics(spec, X2, 10, seed=4, chunk=3)
    b = tangent_statistics(spec, X2, 10, seed=4, chunk=10)
    c = tangent_statistics(spec, X2, 10, seed=5, chunk=10)
    for name in NAMES:
        np.testing.assert_allclose(a.value(name), b.value(name), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(a.se(name), b.se(name), rtol=1e-10, atol=1e-14)
    assert not np.allclose(a.value("P"), c.value("P"))


def test_progress_and_names():
    calls = []
    spec = MLP(2, 3, "tanh", C_b=0.1, C_W=1.5)
    r = tangent_statistics(spec, X2[:1], 7, chunk=3, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(3, 7), (6, 7), (7, 7)]
    assert r.value("Udd") is r.Udd and r.se("T") is r.T_se
    with pytest.raises(DeriveError, match="unknown statistic"):
        r.value("V")


@pytest.mark.parametrize("kwargs, message", [
    (dict(output_width=1), "two different output neurons"),
    (dict(n_networks=1), "n_networks"),
    (dict(X=np.array([[1.0, np.nan, 0.0]])), "finite"),
    (dict(X=np.ones(3)), "shape"),
    (dict(chunk=0), "chunk"),
    (dict(seed=-1), "seed"),
])
def test_refusals(kwargs, message):
    args = dict(spec=MLP(2, 3, "tanh", 0.1, 1.5), X=X2, n_networks=4)
    args.update(kwargs)
    with pytest.raises(DeriveError, match=message):
        tangent_statistics(**args)


def test_refuses_other_architectures():
    from derive import ResMLP

    with pytest.raises(DeriveError, match="plain derive.MLP"):
        tangent_statistics(ResMLP(2, 3, "tanh", 0.1, 1.5, xi=1.0, gamma=1.0), X2, 4)
    with pytest.raises(DeriveError, match="plain derive.MLP"):
        tangent_statistics("mlp", X2, 4)


def test_torch_missing(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(DeriveError, match=r"pip install 'derive\[torch\]'"):
        tangent_statistics(MLP(2, 3, "tanh", 0.1, 1.5), X2, 4)


@pytest.mark.parametrize("name", ["tanh", "gelu", "softplus", "erf", "relu", "swish"])
def test_activation_in_torch_with_autograd(name):
    """σ's torch form (the sampler's, with GELU's √2 made a float) equals numpy's and carries
    gradients."""
    from derive import activation

    a = activation(name)
    t = torch.linspace(-3.0, 3.0, 25, dtype=torch.float64, requires_grad=True)
    out = tangents._sigma(a)(t)
    assert out.requires_grad
    np.testing.assert_allclose(out.detach().numpy(), a.numpy(0)(t.detach().numpy()), rtol=1e-13,
                               atol=1e-15)
