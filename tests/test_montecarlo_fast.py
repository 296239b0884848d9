"""The sampler's fast path (issue 15, goal 4): the weights are drawn piece by piece and each
piece multiplied at once, the scale √(C_W/n) applied to the products W x.  Checked against a
plain numpy forward pass written here from numpy's generator (the same draws, taken in one
call per array), for the metric and the four-point function."""
import numpy as np
import pytest

from derive import MLP, ResMLP
from derive.reality import montecarlo as mc
from derive.reality import shards
from derive.reality.montecarlo import sample

X2 = np.array([[1.0, 0.5, -0.3], [0.2, -1.0, 0.4]])


def reference(spec, X, widths, n_networks, seed, shard, dtype=np.float64):
    """Per network (in order) the preactivations of every layer, from the draws of each shard
    made here in one call per array (W^{(1)}, b^{(1)}, W^{(2)}, …; shard k from
    SeedSequence(seed).spawn(...)[k]), the forward equation z' = ξ z + c b + W g(z) evaluated
    network by network with numpy's matrix product."""
    kids = np.random.SeedSequence(seed).spawn(-(-n_networks // shard))
    out = []
    for k, kid in enumerate(kids):
        c = min(shard, n_networks - k * shard)
        rng = np.random.default_rng(kid)
        layers = []
        for l in range(1, len(widths)):
            W = rng.standard_normal((c, widths[l], widths[l - 1])) * np.sqrt(spec.C_W(l) / widths[l - 1])
            b = rng.standard_normal((c, widths[l])) * np.sqrt(spec.C_b(l))
            layers.append((W.astype(dtype), b.astype(dtype)))
        steps = mc._steps(spec, widths)
        for s in range(c):
            zs, z = [], None
            for l, (W, b) in enumerate(layers, 1):
                if l == 1:
                    z = W[s] @ X.T.astype(dtype) + b[s][:, None]
                else:
                    st = steps[l]
                    z = st.xi * z + st.c * b[s][:, None] + W[s] @ np.asarray(st.g(z), dtype=dtype)
                zs.append(z.astype(float))
            out.append(zs)
    return out


def metric_and_V(nets, layer):
    """G and V of one layer from the per-network preactivations (the module's definitions:
    pair averages over i ≠ j within a network, products of means over distinct networks)."""
    zs = [net[layer - 1] for net in nets]
    S = len(zs)
    n = zs[0].shape[0]
    g = np.array([z.T @ z / n for z in zs])
    pair = []
    for z in zs:
        A = np.einsum("ia,ib->iab", z, z)
        tot = A.sum(axis=0)
        pair.append((np.einsum("ab,cd->abcd", tot, tot) - np.einsum("iab,icd->abcd", A, A))
                    / (n * (n - 1)))
    gsum = g.sum(axis=0)
    U = (np.einsum("ab,cd->abcd", gsum, gsum) - np.einsum("sab,scd->abcd", g, g)) / (S * (S - 1))
    return g.mean(axis=0), np.mean(pair, axis=0), U


@pytest.mark.parametrize("case", ["mlp", "rows", "resnet", "float32"])
def test_sampled_statistics_are_those_of_the_drawn_networks(case, monkeypatch):
    """G and V from ``sample`` equal those of the same networks pushed through a plain loop:
    weights in whole-network pieces, in row pieces (a small piece size, as at width ≥ 256),
    a residual network (skip term and c ≠ 1), and float32."""
    dtype = np.float32 if case == "float32" else np.float64
    spec = (ResMLP(3, 6, "tanh", C_b=0.2, C_W=1.1, xi=1.0, gamma=0.6) if case == "resnet"
            else MLP(3, 7, "tanh", C_b=0.1, C_W=1.3))
    monkeypatch.setattr(shards, "_SHARD_MAX", 17)               # 3 shards, the last one short
    if case == "rows":
        monkeypatch.setattr(mc, "_PIECE", 10)               # pieces of 1 row (widths 7, 6)
    width = spec.widths[-1]
    widths = [X2.shape[1], *spec.widths, width]
    S = 45
    ens = sample(spec, X2, S, seed=8, ntk=False, progress=False,
                 dtype="float32" if case == "float32" else "float64")
    nets = reference(spec, X2, widths, S, 8, mc.shard_size(widths), dtype)
    tol = 2e-6 if case == "float32" else 1e-12
    for l in range(1, spec.depth + 1):
        G, P, U = metric_and_V(nets, l)
        e = ens.layers[l]
        np.testing.assert_allclose(e.G, G, rtol=tol, atol=tol, err_msg=f"G, layer {l}")
        V = widths[l - 1] * (P - U)
        np.testing.assert_allclose(e.V, V, rtol=50 * tol, atol=50 * tol * np.abs(V).max(),
                                   err_msg=f"V, layer {l}")


def test_pieces_cover_the_weights_once_in_order():
    """Each piece is a run of W's elements, the runs in order and together all of W."""
    for shape, piece in [((5, 3, 4), 12), ((5, 3, 4), 30), ((2, 7, 5), 10), ((3, 4, 9), 5),
                         ((1, 6, 6), 1000)]:
        W = np.arange(np.prod(shape)).reshape(shape)
        old = mc._PIECE
        try:
            mc._PIECE = piece
            got = np.concatenate([W[n, r].ravel() for n, r in mc._pieces(*shape)])
        finally:
            mc._PIECE = old
        assert np.array_equal(got, np.arange(W.size)), (shape, piece)


def test_ntk_and_no_ntk_give_the_same_metric_bit_for_bit():
    """The NTK path scales W itself (for Ĥ) but forms z exactly as the path without it."""
    spec = MLP(3, 9, "tanh", C_b=0.1, C_W=1.2)
    a = sample(spec, X2, 60, seed=2, ntk=True, progress=False)
    b = sample(spec, X2, 60, seed=2, ntk=False, progress=False)
    for l in a.layers:
        assert np.array_equal(a.layers[l].G, b.layers[l].G)
        assert np.array_equal(a.layers[l].V, b.layers[l].V)


@pytest.mark.parametrize("name", ["gelu", "swish", "erf", "tanh"])
def test_torch_backend_evaluates_sigma_in_torch(name):
    """The torch backend's σ is SymPy's torch printer, not the host numpy fallback (GELU's
    erf(z/√2) once failed in the printer, silently moving every σ to the host)."""
    torch = pytest.importorskip("torch")
    from derive.activations.catalogue import activation

    act = activation(name)
    fn = mc._TorchBackend("float64", "cpu").function(act.numpy(0), act.expr, (act.z,), ())
    assert fn.__name__ == "g", "fell back to numpy on the host"
    x = torch.linspace(-3, 3, 13, dtype=torch.float64)
    assert np.allclose(fn(x).numpy(), act.numpy(0)(x.numpy()), rtol=1e-13, atol=1e-13)
