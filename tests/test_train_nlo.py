"""derive.train(order=1): gradient descent at O(1/n) (issue 17 part 3) — the update equations
derived by the engine, checked against hand-written forms and against an actual step of a
network; the averaging (exact cubature, the insertion rule) checked on its own; the whole
against trained ensembles of actual networks (slow)."""
import itertools
import math
import warnings

import numpy as np
import pytest
import sympy as sp

import derive
from derive import DeriveError
from derive.algebra.symbols import NeuronSum
from derive.architectures.forward import DDNTK_I, DDNTK_II, DNTK, NTK
from derive.derivation.dynamics import EPS, ETA, N_OUT, gradient_step
from derive.numeric.training_nlo import cubature_degree2, cubature_degree5, simplex_vertices

XA = np.array([[0.8, -0.5, 1.2], [0.1, 0.9, -0.4]])
YA = np.array([0.5, -0.3])
XB = np.array([[-0.6, 0.4, 0.7]])


def _isserlis(powers) -> float:
    """E[Π x_k^p_k] for independent standard normals."""
    return float(np.prod([0 if p % 2 else math.prod(range(p - 1, 0, -2)) for p in powers]))


@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 9, 20])
def test_cubature_is_exact_to_degree_five_and_not_six(m):
    X, w = cubature_degree5(m)
    # Stroud's rule 5-2 up to m = 3, the simplex rule (fewer points) from m = 4
    assert len(w) == min(2 * m * m + 1, m * m + 3 * m + 3)
    rng = np.random.default_rng(m)
    for _ in range(40):  # random monomials of degree ≤ 5 against Isserlis
        powers = rng.multinomial(rng.integers(0, 6), np.ones(m) / m)
        got = float(w @ np.prod(X ** powers, axis=1))
        assert got == pytest.approx(_isserlis(powers), abs=1e-12)
    for k, l in [(0, 0), (0, m - 1), (m - 1, m - 1)]:   # every x_k² x_l² and x_k⁴ at the edges
        powers = np.zeros(m, int)
        powers[k] += 2
        powers[l] += 2
        assert float(w @ np.prod(X ** powers, axis=1)) == pytest.approx(_isserlis(powers))
    assert float(w @ X[:, 0] ** 6) != pytest.approx(15.0)  # E[x⁶] = 15: beyond its degree


@pytest.mark.parametrize("m", [1, 2, 5, 20])
def test_simplex_rule_of_degree_two(m):
    a = simplex_vertices(m)
    gram = a @ a.T
    assert np.allclose(np.diag(gram), 1.0)
    assert np.allclose(gram[~np.eye(m + 1, dtype=bool)], -1.0 / m)
    X, w = cubature_degree2(m)
    assert len(w) == m + 1
    assert np.allclose(w @ X, 0.0)
    assert np.allclose(np.einsum("p,pk,pl->kl", w, X, X), np.eye(m))
    if m > 1:   # not of degree 3 (Σ_k a_k⊗a_k⊗a_k ≠ 0)
        assert np.abs(np.einsum("p,pk,pl,pj->klj", w, X, X, X)).max() > 0.1


def test_update_equations_are_the_hand_derived_ones():
    """Book ch. ∞, one step of −ηλ∇L expanded in the tangent fields, written out by hand."""
    g = gradient_step()
    i0, i1, i2 = g.neurons["dHhat"]
    d0, d1, d2 = g.samples["dHhat"]
    from derive.algebra.symbols import neuron_indices, sample_indices
    j, k, m = neuron_indices("j k m")
    a1, a2, a3 = sample_indices("alpha1 alpha2 alpha3")

    def S(e, *js):
        return NeuronSum(e, *((x, N_OUT) for x in js))

    e1, e2, e3 = EPS(j, a1), EPS(k, a2), EPS(m, a3)
    z_i, z_d = g.neurons["z"][0], g.samples["z"][0]
    dz = (-ETA * S(NTK(z_i, j, z_d, a1) * e1, j)
          + ETA ** 2 / 2 * S(DNTK(z_i, j, k, z_d, a1, a2) * e1 * e2, j, k)
          - ETA ** 3 / 6 * S(DDNTK_I(z_i, j, k, m, z_d, a1, a2, a3) * e1 * e2 * e3, j, k, m))
    h0, h1 = g.neurons["Hhat"]
    s0, s1 = g.samples["Hhat"]
    dH = (-ETA * S((DNTK(h0, h1, j, s0, s1, a1) + DNTK(h1, h0, j, s1, s0, a1)) * e1, j)
          + ETA ** 2 / 2 * S((DDNTK_I(h0, h1, j, k, s0, s1, a1, a2)
                              + DDNTK_I(h1, h0, j, k, s1, s0, a1, a2)
                              + 2 * DDNTK_II(h0, h1, j, k, s0, s1, a1, a2)) * e1 * e2, j, k))
    ddH = -ETA * S((DDNTK_I(i0, i1, i2, j, d0, d1, d2, a1) + DDNTK_II(i0, i1, i2, j, d0, d1, d2, a1)
                    + DDNTK_II(i0, i2, i1, j, d0, d2, d1, a1)) * e1, j)

    def same(a, b):
        # the fields' symmetries (Ĥ_{ab;xy} = Ĥ_{ba;yx}, the leaves of dĤ, ddIĤ exchangeable with
        # their samples, ddIIĤ's pair exchange) are resolved by evaluating both on random tensors
        return _numeric(a) == pytest.approx(_numeric(b), rel=1e-12)

    assert same(g.updates["z"], dz)
    assert same(g.updates["Hhat"], dH)
    assert same(g.updates["dHhat"], ddH)


def _numeric(expr):
    """One output neuron, three samples (0, 1 free; training samples summed over {0, 1, 2}):
    the expression's value for fixed random tensors with the symmetries of the definitions."""
    rng = np.random.default_rng(0)
    N = 3
    H = rng.standard_normal((N, N))
    H = H + H.T
    d = rng.standard_normal((N, N, N))
    d = d + d.transpose(0, 2, 1)
    dI = rng.standard_normal((N,) * 4)
    dI = sum(dI.transpose(0, *p) for p in ((1, 2, 3), (1, 3, 2), (2, 1, 3), (2, 3, 1), (3, 1, 2),
                                           (3, 2, 1)))
    dII = rng.standard_normal((N,) * 4)
    dII = dII + dII.transpose(1, 0, 3, 2)
    eps = rng.standard_normal(N)
    tables = {NTK: H, DNTK: d, DDNTK_I: dI, DDNTK_II: dII}
    e = expr.replace(lambda x: isinstance(x, NeuronSum), lambda x: x.function)
    total = 0.0
    free = sorted({a for a in e.free_symbols if str(a).startswith(("delta", "alpha"))
                   and not str(a).startswith("alpha")}, key=str)
    summed = sorted({a for a in e.free_symbols if str(a).startswith("alpha")}, key=str)
    import itertools
    for vals in itertools.product(range(N), repeat=len(summed)):
        rep = dict(zip(summed, vals))
        rep.update({f: k for k, f in enumerate(free)})
        for term in sp.Add.make_args(sp.expand(e)):
            v = 1.0
            for f in sp.Mul.make_args(term):
                if isinstance(f, sp.core.function.AppliedUndef) and f.func in tables:
                    k = len(f.args) // 2
                    v *= tables[f.func][tuple(int(rep[a]) for a in f.args[k:])]
                elif isinstance(f, sp.core.function.AppliedUndef) and f.func == EPS:
                    v *= eps[int(rep[f.args[1]])]
                else:
                    v *= float(f.subs({ETA: 0.3, N_OUT: 1}))
            total += v
    return total


def test_update_equations_match_an_actual_step_of_a_network():
    """One gradient-descent step of an actual tanh network against the derived update with its
    own tangent tensors (torch autograd): the remainders shrink as η⁴ (z), η³ (Ĥ), η² (dĤ),
    the first neglected orders."""
    pytest.importorskip("torch")
    from derive.reality.tangents import derivative_tensors

    spec = derive.MLP(3, [4, 5], "tanh", 0.2, 1.3, lambda_b=0.6, lambda_W=1.2)
    X = np.vstack([XA, XB])
    widths, NA = [3, 4, 5, 1], 2
    rng = np.random.default_rng(3)
    Ws = [rng.standard_normal((1, widths[l + 1], widths[l])) * math.sqrt(1.3 / widths[l])
          for l in range(3)]
    bs = [rng.standard_normal((1, widths[l + 1])) * math.sqrt(0.2) for l in range(3)]
    lam = np.concatenate([np.concatenate([np.full(widths[l + 1] * widths[l],
                                                  spec.lambda_W(l + 1) / widths[l]),
                                          np.full(widths[l + 1], spec.lambda_b(l + 1))])
                          for l in range(3)])

    def tensors(Ws, bs):
        r = derivative_tensors(spec, X, Ws, bs)
        u = r["u"][0, 0]
        return (r["z"][0, 0], u, (u / lam) @ u.T, r["dH"][0, 0, 0, 0], r["ddIH"][0, 0, 0, 0, 0],
                r["ddIIH"][0, 0, 0, 0, 0])

    def unflat(v):
        out, k = ([], []), 0
        for l in range(3):
            a, b = widths[l + 1], widths[l]
            out[0].append(v[k:k + a * b].reshape(1, a, b))
            k += a * b
            out[1].append(v[k:k + a].reshape(1, a))
            k += a
        return out

    flat = np.concatenate([np.concatenate([W[0].ravel(), b[0]]) for W, b in zip(Ws, bs)])
    z, u, H, dH, ddI, ddII = tensors(Ws, bs)
    from derive.numeric.training_nlo import _term_value, step_terms

    errors = []
    for eta in (0.1, 0.05):
        e = z[:NA] - YA
        z2, _, H2, dH2, _, _ = tensors(*unflat(flat - eta * u[:NA].T @ e))
        # one output neuron: every field gets its neuron axes (of length 1) after the batch axis
        one = {"z": 1, "Hhat": 2, "dHhat": 3, "ddIHhat": 4, "ddIIHhat": 4}
        fields = {"z": z, "Hhat": H, "dHhat": dH, "ddIHhat": ddI, "ddIIHhat": ddII}
        states = {k: [v.reshape((1,) * (1 + one[k]) + v.shape)] for k, v in fields.items()}
        new = {}
        for name, terms in step_terms(eta).items():
            new[name] = fields[name] + sum(
                _term_value(t, states, [e.reshape(1, 1, NA)], NA, 0)[0].reshape(fields[name].shape)
                for t in terms)
        errors.append([np.abs(z2 - new["z"]).max(), np.abs(H2 - new["Hhat"]).max(),
                       np.abs(dH2 - new["dHhat"]).max()])
    ratios = np.array(errors[0]) / np.array(errors[1])
    assert ratios[0] > 11 and ratios[1] > 5.5 and ratios[2] > 3, ratios   # 16, 8, 4 ideally


@pytest.fixture(scope="module")
def trained():
    spec = derive.MLP(3, [32, 32], "tanh", 0.1, 1.3, lambda_b=0.6, lambda_W=1.2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return derive.train(spec, XA, YA, XB, eta=0.3, steps=16, order=1)


def test_order_one_at_step_zero_is_the_metric(trained):
    p = derive.predict(trained.spec, np.vstack([XA, XB]), targets=["K", "G1"])
    L = trained.spec.depth
    assert np.allclose(trained.mean1(0), 0.0, atol=1e-12)
    assert np.allclose(trained.cov1(0), p.G1[L], atol=1e-10)
    assert np.allclose(trained.cov(0), p.metric(L), atol=1e-10)
    assert np.allclose(trained.mean(8), trained.mean0(8) + trained.mean1(8) / 32)


def test_the_cubature_reproduces_kernel_learning(trained):
    for t in trained.times:
        m0 = trained._nlo["mean0"][t][0]                  # output neuron 0 of (n_out, N)
        assert np.allclose(m0, trained.mean0(t), atol=1e-11)
        assert np.allclose(trained._nlo["second0"][t][0, :, 0] - np.outer(m0, m0),
                           trained.cov0(t), atol=1e-11)


def test_converged_training_outputs_stop_moving(trained):
    """At convergence the training outputs sit at their targets whatever the NTK did: their
    O(1/n) mean and covariance fade with the residual (1 − ηθ)^t."""
    early, late = np.abs(trained.mean1(4)[:2]).max(), np.abs(trained.mean1(16)[:2]).max()
    assert late < 0.1 * early
    assert np.abs(trained.cov1(16)[:2, :2]).max() < 1e-3
    assert np.abs(trained.ntk_drift1).max() > 0.1     # but the NTK has moved


def test_the_first_order_run_in_blocks_and_on_workers(trained, monkeypatch, capsys):
    """The first-order run over blocks of cubature points (10 + 10 inputs: two blocks of
    about 230) sums the blocks' parts in their order: to rounding the one-block numbers, and
    the same numbers, bit for bit, on one process and on two; progress counts the whole run."""
    from derive.numeric import training_nlo

    args = (trained.spec, XA, YA, XB)
    monkeypatch.setattr(training_nlo, "POINT_BLOCK", 8)     # the 19 points in three blocks
    assert [(b.start, b.stop) for b in training_nlo._point_blocks(19)] == [(0, 6), (6, 12),
                                                                          (12, 19)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one = derive.train(*args, eta=0.3, steps=16, order=1, progress=True)
        err = capsys.readouterr().err
        assert "run 1/2, step 16/16" in err and "step 17" not in err   # the three blocks' steps
        two = derive.train(*args, eta=0.3, steps=16, order=1, workers=2)
    for t in trained.times:
        assert np.array_equal(one.mean1(t), two.mean1(t))
        assert np.array_equal(one.cov1(t), two.cov1(t))
        assert np.allclose(one.mean1(t), trained.mean1(t), rtol=1e-12, atol=1e-13)
        assert np.allclose(one.cov1(t), trained.cov1(t), rtol=1e-12, atol=1e-13)
    assert np.array_equal(one.ntk_drift1, two.ntk_drift1)
    assert np.allclose(one.ntk_drift1, trained.ntk_drift1, rtol=1e-12, atol=1e-13)


def test_order_one_refusals(trained):
    spec = trained.spec
    with pytest.raises(DeriveError, match="recorded steps"):
        trained.mean1(3)
    with pytest.raises(DeriveError, match="order=1"):
        derive.train(spec, XA, YA, XB, eta=0.3, steps=4).mean1(4)
    with pytest.raises(DeriveError, match="kinks"):
        derive.train(derive.MLP(2, 8, "relu", 0.0, 2.0), XA, YA, XB, eta=0.3, steps=4, order=1)


def _ensemble_fit(spec_at, widths, S, eta, steps, seed=0, Y=YA):
    """Per width: the control-variate estimate of E[z(t)] (the network's own kernel-learning
    prediction from its z(0) subtracted: its mean is known exactly) and its standard error,
    shaped as ``mean0(t)`` ((N,) for one output, (N, n_out) otherwise), n·E[Ĥ(T) − Ĥ(0)]
    (of output neuron 0), and the covariances between different outputs with theirs
    (check_train's control variate; zero with one output)."""
    from derive.reality.check_train import _cross_covariance
    from derive.reality.training import train_ensemble

    out = {}
    for n in widths:
        spec = spec_at(n)
        lin = derive.train(spec, XA, Y, XB, eta=eta, steps=steps)
        ens = train_ensemble(spec, XA, Y, XB, eta, steps, S, seed=seed + n)
        z = ens.z                                        # (S, times, n_out, N)
        means, cross = {}, {}
        for k, t in enumerate(ens.times):
            A, _, _ = lin._map(t)
            m0 = lin.mean0(t)
            part = np.einsum("ab,sib->sia", A, z[:, 0])
            d = z[:, k] - (part + m0.reshape(len(A), -1).T)
            mean, se = d.mean(0).T, d.std(0, ddof=1).T / math.sqrt(S)    # (N, n_out)
            means[t] = (m0 + mean.reshape(m0.shape), se.reshape(m0.shape))
            cross[t] = _cross_covariance(z[:, k], part)
        out[n] = (means, n * ens.ntk_drift, n * ens.ntk_drift_se, cross)
    return out


def _slope(fits, widths, t, comp, lo, what=0):
    """The fitted 1/n coefficient b of E[z(t)]_comp − lo = b/n + c/n² (``what`` 3: of the
    covariance between outputs) and its standard error."""
    ns = np.array(widths, float)
    v = np.array([fits[n][what][t][0][comp] for n in widths]) - lo
    e = np.array([fits[n][what][t][1][comp] for n in widths])
    A = np.stack([1 / ns, 1 / ns ** 2], 1) / e[:, None]
    coef, *_ = np.linalg.lstsq(A, v / e, rcond=None)
    return coef[0], math.sqrt(np.linalg.inv(A.T @ A)[0, 0])


@pytest.mark.slow
def test_trained_tanh_ensembles_agree_with_the_order_one_prediction():
    """tanh, depth 3, widths 32–256, 6000 networks each: the 1/n slope of the trained mean
    (fitted with the exactly known n → ∞ intercept, a + b/n + c/n²) equals mean1 within 3
    standard errors at t = 2, 4, 8, and n × the NTK drift approaches ntk_drift1."""
    def spec_at(n):
        return derive.MLP(3, [n, n], "tanh", 0.1, 1.3, lambda_b=0.6, lambda_W=1.2)

    widths, eta, steps = (32, 64, 128, 256), 0.3, 8
    fits = _ensemble_fit(spec_at, widths, 6000, eta, steps)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pred = derive.train(spec_at(64), XA, YA, XB, eta=eta, steps=steps, order=1)
    for t in (2, 4, 8):
        for a in range(3):
            b, se = _slope(fits, widths, t, a, pred.mean0(t)[a])
            assert abs(b - pred.mean1(t)[a]) < 3 * se + 0.02, (t, a, b, se)
    # the drift: at the widest width within 3 se + 15 % (its 1/n² part is still visible)
    d, dse = fits[256][1], fits[256][2]
    assert np.all(np.abs(d - pred.ntk_drift1) < 3 * dse + 0.15 * np.abs(pred.ntk_drift1))


def test_one_step_of_a_two_layer_linear_network_is_exact_at_any_width():
    """z = b2 + W2 (b1 + W1 x) is quadratic in θ, so one step is exactly z − ηĤε + η²/2 dĤεε,
    and with layer 1 Gaussian the layer-2 statistics Θ, P, Q are exact at every width: the mean
    after one step is mean0 + mean1/n exactly, even at n = 3 (Monte Carlo, 200 000 networks).
    The same ensemble is many standard errors from kernel learning alone."""
    from derive.reality.training import train_ensemble

    spec = derive.MLP(2, 3, "linear", 0.2, 1.1, lambda_b=0.6, lambda_W=1.2)
    pred = derive.train(spec, XA, YA, XB, eta=0.4, steps=1, order=1)
    ens = train_ensemble(spec, XA, YA, XB, 0.4, 1, 200_000, seed=3)
    z1 = (ens.mean(1) - pred.mean(1)) / ens.mean_se(1)
    z0 = (ens.mean(1) - pred.mean0(1)) / ens.mean_se(1)
    assert np.all(np.abs(z1) < 4), z1
    assert np.max(np.abs(z0)) > 15, z0


# -- several outputs ------------------------------------------------------------------------------

YA2 = np.array([[0.5, -0.2], [-0.3, 0.9]])


def test_several_outputs_one_step_of_a_two_layer_linear_network_is_exact():
    """Two outputs: one step of the two-layer linear network is exact at O(1/n) at any width
    (as for one output), so the mean after it is mean0 + mean1/n even at n = 3 (400 000
    networks).  The outputs are coupled at O(1/n) — the NTK's and the dNTK's fluctuations have
    δ-structures across output neurons — so the prediction made one output at a time is many
    standard errors off."""
    from derive.reality.training import train_ensemble

    spec = derive.MLP(2, 3, "linear", 0.2, 1.1, lambda_b=0.6, lambda_W=1.2)
    pred = derive.train(spec, XA, YA2, XB, eta=0.4, steps=1, order=1)
    alone = np.stack([derive.train(spec, XA, YA2[:, i], XB, eta=0.4, steps=1, order=1).mean(1)
                      for i in range(2)], 1)
    ens = train_ensemble(spec, XA, YA2, XB, 0.4, 1, 400_000, seed=5)
    assert pred.mean(1).shape == (3, 2) and pred.cov_by_output(1).shape == (2, 3, 2, 3)
    z = (ens.mean(1) - pred.mean(1)) / ens.mean_se(1)
    assert np.all(np.abs(z) < 4), z
    assert np.max(np.abs((ens.mean(1) - alone) / ens.mean_se(1))) > 15


def test_several_outputs_are_exchangeable():
    """Swapping the two outputs' targets swaps the outputs in every O(1/n) coefficient; the
    pooled covariance is the mean of the outputs' own blocks, and at order 0 the outputs are
    independent with one covariance."""
    spec = derive.MLP(3, [32, 32], "tanh", 0.1, 1.3, lambda_b=0.6, lambda_W=1.2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = derive.train(spec, XA, YA2, XB, eta=0.3, steps=4, order=1)
        b = derive.train(spec, XA, YA2[:, ::-1], XB, eta=0.3, steps=4, order=1)
    for t in (1, 4):
        assert np.allclose(a.mean1(t), b.mean1(t)[:, ::-1], atol=1e-10)
        ca, cb = a.cov1_by_output(t), b.cov1_by_output(t)
        assert np.allclose(ca, cb[::-1][:, :, ::-1], atol=1e-10)
        assert np.allclose(a.cov1(t), 0.5 * (ca[0, :, 0] + ca[1, :, 1]), atol=1e-14)
        assert np.abs(ca[0, :, 1]).max() > 1e-3              # coupled at O(1/n)
        assert np.allclose(ca, ca.transpose(2, 3, 0, 1))
    da, db = a.ntk_drift1_by_output, b.ntk_drift1_by_output
    assert np.allclose(da, db[::-1, ::-1], atol=1e-10)
    assert np.allclose(a.ntk_drift1, da[0, 0])
    c0 = a.cov0(4)
    lo = derive.train(spec, XA, YA2, XB, eta=0.3, steps=4)
    assert np.allclose(lo.cov_by_output(4), np.einsum("ij,ab->iajb", np.eye(2), c0))


@pytest.mark.slow
def test_trained_tanh_ensembles_with_two_outputs_agree_with_the_order_one_prediction():
    """tanh, depth 3, two outputs, widths 16–128, 20 000 networks each: the 1/n slope of each
    output's trained mean at t = 4 equals mean1 within 3 standard errors (+ 0.03), and the
    prediction made one output at a time is excluded.  So does the 1/n slope of the covariance
    between the two outputs (zero at infinite width) equal cov1_by_output within 3 standard
    errors (+ 0.005); on the training inputs it is far from zero (measured with 40 000
    networks: n Cov ≈ ±0.03 ± 0.002 there, every component within 2.3 standard errors)."""
    def spec_at(n):
        return derive.MLP(3, [n, n], "tanh", 0.1, 1.3, lambda_b=0.6, lambda_W=1.2)

    widths, eta, steps = (16, 32, 64, 128), 0.3, 4
    fits = _ensemble_fit(spec_at, widths, 20_000, eta, steps, Y=YA2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pred = derive.train(spec_at(64), XA, YA2, XB, eta=eta, steps=steps, order=1)
        alone = np.stack([derive.train(spec_at(64), XA, YA2[:, i], XB, eta=eta, steps=steps,
                                       order=1).mean1(steps) for i in range(2)], 1)
    off = []
    for comp in np.ndindex(3, 2):
        b, se = _slope(fits, widths, steps, comp, pred.mean0(steps)[comp])
        assert abs(b - pred.mean1(steps)[comp]) < 3 * se + 0.03, (comp, b, se)
        off.append(abs(b - alone[comp]) / se)
    assert max(off) > 5, off
    c1, away = pred.cov1_by_output(steps), []
    for a, b in np.ndindex(3, 3):
        slope, se = _slope(fits, widths, steps, (0, a, 1, b), 0.0, what=3)
        assert abs(slope - c1[0, a, 1, b]) < 3 * se + 0.005, (a, b, slope, se, c1[0, a, 1, b])
        away.append(abs(slope) / se)
    assert max(away) > 5, away


# -- the statistics only where the dynamics read them ---------------------------------------------

XT = np.array([[0.8, -0.5, 1.2], [0.1, 0.9, -0.4], [0.5, 0.3, 0.2],
               [-0.6, 0.4, 0.7], [0.3, -0.8, 0.1], [-0.2, -0.3, -0.9]])


def test_predict_on_the_training_components():
    """training_inputs=3 of 6 inputs: the four-index statistics on every component with at most
    two distinct test inputs among its samples equal the full run's (the same quadrature
    tolerance), and the others — three or four distinct test inputs — are NaN."""
    from derive.numeric.evaluate import outside_training

    spec = derive.MLP(3, 16, "tanh", 0.1, 1.3, lambda_b=0.6, lambda_W=1.2)
    targets = ["K", "A", "D", "P", "R", "Udd"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = derive.predict(spec, XT, order=1, targets=targets, tol=1e-7)
        part = derive.predict(spec, XT, order=1, targets=targets, tol=1e-7, training_inputs=3)
    skipped = outside_training(np.indices((6,) * 4).transpose(1, 2, 3, 4, 0), 3) > 2
    # all three test inputs among the four samples: 6⁴ − 3·5⁴ + 3·4⁴ − 3⁴ = 108 components
    assert skipped.sum() == 108
    for q in targets[1:]:
        a, b = np.asarray(getattr(full, q)[3]), np.asarray(getattr(part, q)[3])
        assert np.all(np.isnan(b[skipped])) and np.all(np.isfinite(b[~skipped]))
        assert np.allclose(a[~skipped], b[~skipped], rtol=1e-6, atol=1e-7), q
        assert np.abs(a[~skipped]).max() > 1e-2
    for bad in (-1, 7, True, 2.0):
        with pytest.raises(DeriveError, match="training_inputs"):
            derive.predict(spec, XT, order=1, targets=["A"], training_inputs=bad)


def test_train_reads_only_the_training_components(monkeypatch):
    """train(order=1) computes the statistics with training_inputs (3 training, 3 test inputs,
    two outputs): what it predicts equals the prediction from the full statistics."""
    import derive.numeric.prediction as prediction

    spec = derive.MLP(3, 16, "tanh", 0.1, 1.3, lambda_b=0.6, lambda_W=1.2)
    Y = np.array([[0.5, -0.2], [-0.3, 0.9], [0.1, 0.4]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        part = derive.train(spec, XT[:3], Y, XT[3:], eta=0.3, steps=8, order=1)
        real = prediction.predict
        monkeypatch.setattr(prediction, "predict",
                            lambda *a, training_inputs=None, **k: real(*a, **k))
        full = derive.train(spec, XT[:3], Y, XT[3:], eta=0.3, steps=8, order=1)
    for t in part.times:
        for f in ("mean1", "cov1_by_output"):
            a, b = getattr(full, f)(t), getattr(part, f)(t)
            assert np.allclose(a, b, rtol=1e-6, atol=1e-7 * max(1.0, np.abs(a).max())), (f, t)
    assert np.allclose(full.ntk_drift1_by_output, part.ntk_drift1_by_output, rtol=1e-6,
                       atol=1e-6 * np.abs(full.ntk_drift1_by_output).max())
    assert np.abs(full.mean1(8)).max() > 1e-2


def _random_statistics(rng, N: int):
    """A positive-definite K (N, N) and random output-layer statistics A … Udd (N, N, N, N):
    numbers for comparing two ways of running the same dynamics."""
    A = rng.standard_normal((N, N + 2))
    st = {q: 0.05 * rng.standard_normal((N,) * 4)
          for q in ("A", "B", "D", "F", "P", "Q", "R", "S", "T", "Udd")}
    return A @ A.T / N, st


def test_several_outputs_by_delta_structure_are_the_dense_fields(monkeypatch):
    """With several outputs the dynamics carry the fields by δ-structure (dĤ as three
    components with one output neuron each, the ddNTKs as three sample tensors, Ĥ as a δ part
    and a dense part): on random statistics the same numbers as the dense fields (n_out³ and
    n_out⁴ output neurons), for two and three outputs."""
    import derive.numeric.training_nlo as tn

    rng = np.random.default_rng(3)
    N, NA = 4, 2
    K, st = _random_statistics(rng, N)
    starts = []
    run = tn._run
    monkeypatch.setattr(tn, "_run", lambda terms, cuts, start, *a, **k: (
        starts.append(sorted(start)), run(terms, cuts, start, *a, **k))[1])
    for n_out in (2, 3):
        args = (K, K + 0.4, 0.1 * K, 0.2 * K, st, rng.standard_normal((NA, n_out)), NA, 0.2,
                (0, 3, 7))
        monkeypatch.setattr(tn, "STRUCTURED_FROM", 2)
        starts.clear()
        split = tn.nlo_dynamics(*args)
        first = {key for start in starts[:-1] for key in start}     # run 1's parts
        assert ("dHhat", ((0, 1),)) in first and ("ddIHhat", tn.PAIRINGS[2]) in first
        monkeypatch.setattr(tn, "STRUCTURED_FROM", 99)
        starts.clear()
        dense = tn.nlo_dynamics(*args)
        assert all(pattern == tn.DENSE for start in starts[:-1] for _, pattern in start)
        for key in ("mean1", "second1"):
            for t in (3, 7):
                scale = np.abs(dense[key][t]).max()
                assert np.allclose(split[key][t], dense[key][t], rtol=0, atol=1e-12 * scale)
        scale = np.abs(dense["drift1"]).max()
        assert np.allclose(split["drift1"], dense["drift1"], rtol=0, atol=1e-12 * scale)
        assert np.abs(dense["mean1"][7]).max() > 1e-2
        # the outputs are coupled at this order: outputs 0 and 1 covary
        assert np.abs(dense["second1"][7][0, :, 1, :]).max() > 1e-3


def test_dynamics_that_cannot_finish_are_refused_before_the_statistics(monkeypatch, capsys):
    """Ten outputs on 20 inputs (a cubature of 40 603 points in 200 dimensions) or 10⁹ steps are
    refused with the estimate and what to change, before the statistics are computed; a run
    that goes ahead says what it will cost."""
    from derive.numeric import training

    def never(*a, **k):
        raise AssertionError("the statistics were computed")

    monkeypatch.setattr(training, "_output_statistics", never)
    spec = derive.MLP(3, 16, "tanh", 0.0, 1.0)
    rng = np.random.default_rng(1)
    X20 = rng.standard_normal((20, 3))
    with pytest.raises(DeriveError, match=r"10 outputs on 20 inputs.*40603 points.*not "
                                          r"practical.*fewer inputs, outputs or steps"):
        derive.train(spec, X20[:10], rng.standard_normal((10, 10)), X20[10:], eta=0.1,
                     steps=1000, order=1)
    with pytest.raises(DeriveError, match=r"1 output on 3 inputs over 1000000000 steps.* h "):
        derive.train(spec, XA, YA, XB, eta=0.1, steps=10 ** 9, order=1)
    with pytest.raises(DeriveError, match="statistics were computed"):
        derive.train(spec, XA, YA, XB, eta=0.1, steps=100, order=1, progress=True)
    assert "train: the O(1/n) dynamics of 1 output on 3 inputs over 100 steps average over a " \
        "cubature in n_out N = 3 dimensions (19 points): roughly 1 s" in capsys.readouterr().err


def test_dntk_is_carried_at_training_samples_only(monkeypatch):
    """The dynamics read dĤ only with a training sample in its middle slot (dĤ_{δαβ} in z's
    update, dĤ_{δ1αδ2} in Ĥ's): training_slots finds that slot from the derived updates, and
    carrying dĤ there only changes nothing (against the dynamics on all N³ samples)."""
    import derive.numeric.training_nlo as tn

    cuts = tn.training_slots(tn.step_terms(0.3))
    assert cuts == {"z": frozenset(), "Hhat": frozenset(), "dHhat": frozenset({1})}
    rng = np.random.default_rng(0)
    N, NA = 5, 2
    K, st = _random_statistics(rng, N)
    args = (K, K + 0.4, 0.1 * K, 0.2 * K, st, np.array([[0.5, -0.1], [0.2, 0.3]]), NA, 0.2,
            (0, 3, 7))
    cut = tn.nlo_dynamics(*args)
    monkeypatch.setattr(tn, "training_slots",
                        lambda terms: {name: frozenset() for name in terms})
    full = tn.nlo_dynamics(*args)
    for key in ("mean1", "second1"):
        for t in (3, 7):
            assert np.allclose(cut[key][t], full[key][t], rtol=1e-12, atol=1e-13)
    assert np.allclose(cut["drift1"], full["drift1"], rtol=1e-12, atol=1e-13)
    assert np.abs(full["mean1"][7]).max() > 1e-2


def test_order_one_reports_progress(capsys):
    """progress=True: the statistics layer by layer, then each run of the dynamics, to stderr;
    the numbers are those without it."""
    spec = derive.MLP(3, 16, "tanh", 0.1, 1.3, lambda_b=0.6, lambda_W=1.2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loud = derive.train(spec, XA, YA, XB, eta=0.3, steps=8, order=1, progress=True)
        err = capsys.readouterr().err
        quiet = derive.train(spec, XA, YA, XB, eta=0.3, steps=8, order=1)
    assert "predict: layer 3/3 done" in err
    assert "run 1/2" in err and "run 2/2, step 8/8" in err
    assert capsys.readouterr().err == ""
    assert np.array_equal(loud.mean1(8), quiet.mean1(8))
    with pytest.raises(DeriveError, match="progress"):
        derive.train(spec, XA, YA, XB, eta=0.3, steps=8, order=1, progress="yes")


def test_a_test_input_close_to_a_training_input_is_resolved():
    """A test input at distance h from a training input: K is nearly singular (cond ~ 1e7 at
    h = 1e-3, ~ 5e9 at h = 1e-4), yet the O(1/n) coefficients are smooth in h, so the
    difference quotients (row of the copy − row of the original) / h must agree between
    h = 1e-3 and 1e-4.  The Hermite weights once formed K⁻¹ and u uᵀ − K⁻¹, which lost digits
    like cond(K)²: those quotients were 10–40 times off at h = 1e-4."""
    spec = derive.MLP(2, 64, "tanh", 0.0, 1.0, lambda_b=0.5, lambda_W=1.0)
    XT = np.array([[0.8, -0.5, 1.2], [0.1, 0.9, -0.4], [-0.6, 0.4, 0.7]])
    YT = np.array([0.5, -0.3, 0.2])

    def quotients(h):
        XB = np.array([XT[0] + h * np.array([0.3, -0.2, 0.5]), [0.2, 0.2, -0.9]])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            r = derive.train(spec, XT, YT, XB, eta=0.1, steps=16, order=1)
        # the rounding is announced where it may matter (cond(K) > 1e9), not before
        assert any("nearly singular" in str(w.message) for w in caught) == (h < 5e-4)
        q = []
        for t in (1, 4, 16):
            m, c = r.mean1(t), r.cov1(t)
            q += [m[3] - m[0], c[3, 3] - c[0, 0], c[3, 1] - c[0, 1]]
        d = r.ntk_drift1
        return np.array(q + [d[3, 1] - d[0, 1], d[3, 3] - d[0, 0]]) / h

    coarse, fine = quotients(1e-3), quotients(1e-4)
    assert np.abs(coarse).max() > 1e-2
    assert np.allclose(fine, coarse, rtol=0.03, atol=2e-4), np.c_[coarse, fine]


def test_a_scan_over_eta_and_targets_computes_the_statistics_once(monkeypatch, capsys):
    """train(order=1) keeps the output layer's statistics of its last calls (they depend on
    the network and the inputs, not on η, the steps or the targets): a second call with
    another η and other targets does not call predict, and gives what a fresh call gives."""
    import derive.numeric.prediction as prediction
    from derive.numeric import training

    spec = derive.MLP(3, 16, "tanh", 0.1, 1.3, lambda_b=0.6, lambda_W=1.2)
    calls = []
    real = prediction.predict
    monkeypatch.setattr(prediction, "predict", lambda *a, **k: calls.append(1) or real(*a, **k))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        derive.train(spec, XA, YA, XB, eta=0.3, steps=8, order=1)
        assert len(calls) == 2                       # order 0 (K, Θ) and the statistics
        kept = derive.train(spec, XA, -YA, XB, eta=0.1, steps=8, order=1, progress=True)
        assert len(calls) == 3                       # order 0 only
        assert "statistics of an earlier call" in capsys.readouterr().err
        derive.train(derive.MLP(3, 16, "tanh", 0.1, 1.3, lambda_b=0.6, lambda_W=1.1),
                     XA, YA, XB, eta=0.3, steps=8, order=1)      # another network: computed
        assert len(calls) == 5
        derive.train(spec, XA, YA, XB[:, ::-1], eta=0.3, steps=8, order=1)   # other inputs
        assert len(calls) == 7
        monkeypatch.setattr(training, "_STATISTICS", {})
        fresh = derive.train(spec, XA, -YA, XB, eta=0.1, steps=8, order=1)
    for t in kept.times:
        assert np.array_equal(kept.mean1(t), fresh.mean1(t))
        assert np.array_equal(kept.cov1(t), fresh.cov1(t))
    assert np.array_equal(kept.ntk_drift1, fresh.ntk_drift1)


def test_first_order_run_against_a_plain_simulation_of_the_perturbed_start():
    """Run 1 (every first-order insertion but C_HH) against a plain simulation written here:
    the update equations of the module docstring on dense fields, from the perturbed start
    Ĥ(0) = Θ + s (H1 + ½ C_Hzz : He), dĤ(0) = s C_dz u, ddIĤ = s E_I, ddIIĤ = s E_II, with
    the weight 1 + s ½ G1 : He, averaged over a product Gauss–Hermite rule (3 nodes an axis,
    exact to degree 5 in each variable) in all N dimensions and differentiated in s by a
    central difference.  nlo_dynamics averages the ddNTK part over the training dimensions
    only (z_B(0) at its conditional mean); the two must agree.  tanh, 3 + 2 inputs, the
    actual output-layer statistics; A = B = 0 so that C_HH (run 2) does not enter."""
    from derive.numeric import training_nlo as tn
    from derive.numeric.training import _output_statistics

    rng = np.random.default_rng(5)
    X = rng.standard_normal((5, 3))
    NA, N, eta, T = 3, 5, 0.25, 6
    spec = derive.MLP(3, [8, 8], "tanh", 0.1, 1.4, lambda_b=0.7, lambda_W=1.1)
    st = dict(_output_statistics(spec, X, NA)[0])
    st["A"] = st["B"] = np.zeros((N,) * 4)
    y = np.array([0.4, -0.7, 0.2])
    K, Th, G1, H1 = st["K"], st["Theta"], st["G1"], st["H1"]
    got = tn.nlo_dynamics(K, Th, G1, H1, st, y, NA, eta, (0, 2, 6))
    # the cumulants of one output neuron, written out (δs all 1)
    R, S, Tt, U, P, Q, D, F = (st[k] for k in ("R", "S", "T", "Udd", "P", "Q", "D", "F"))
    EI = R + R.transpose(0, 2, 1, 3) + R.transpose(0, 2, 3, 1)     # R_abcd + R_acbd + R_adbc
    EII = S + Tt + U
    Cdz = P + P.transpose(0, 2, 1, 3) + Q                           # P_abcd + P_acbd + Q_abcd
    Chzz = D + F.transpose(0, 2, 1, 3) + F.transpose(0, 2, 3, 1)   # D_abcd + F_acbd + F_adbc
    nodes, weights = np.polynomial.hermite_e.hermegauss(3)
    x = np.array(list(itertools.product(nodes, repeat=N)))
    w = np.prod(np.array(list(itertools.product(weights, repeat=N))), axis=1) / math.sqrt(
        2 * math.pi) ** N
    z0 = x @ np.linalg.cholesky(K).T
    Kinv = np.linalg.inv(K)
    u = z0 @ Kinv
    He = np.einsum("pa,pb->pab", u, u) - Kinv

    def simulate(s):
        z = z0.copy()
        H = Th + s * (H1 + 0.5 * np.einsum("abcd,pcd->pab", Chzz, He))
        dH = s * np.einsum("abcd,pd->pabc", Cdz, u)
        dI, dII = s * EI, s * EII
        weight = w * (1 + s * 0.5 * np.einsum("ab,pab->p", G1, He))
        H0, out = H.copy(), {}
        for t in range(T + 1):
            out[t] = (np.einsum("p,pa->a", weight, z), np.einsum("p,pa,pb->ab", weight, z, z))
            if t == T:
                break
            e = z[:, :NA] - y
            z, H, dH = (
                z - eta * np.einsum("pda,pa->pd", H[:, :, :NA], e)
                + eta ** 2 / 2 * np.einsum("pdab,pa,pb->pd", dH[:, :, :NA, :NA], e, e)
                - eta ** 3 / 6 * np.einsum("dabc,pa,pb,pc->pd", dI[:, :NA, :NA, :NA], e, e, e),
                H - eta * (np.einsum("pxya,pa->pxy", dH[..., :NA], e)
                           + np.einsum("pyxa,pa->pxy", dH[..., :NA], e))
                + eta ** 2 / 2 * np.einsum("xyab,pa,pb->pxy", dI[..., :NA, :NA]
                                           + dI.transpose(1, 0, 2, 3)[..., :NA, :NA]
                                           + 2 * dII[..., :NA, :NA], e, e),
                dH - eta * np.einsum("xyza,pa->pxyz", dI[..., :NA] + dII[..., :NA]
                                     + dII.transpose(0, 2, 1, 3)[..., :NA], e))
        return out, np.einsum("p,pxy->xy", weight, H - H0)

    h = 1e-5        # the difference's error is about 10 h² of the coefficients here
    (up, dup), (down, ddown) = simulate(h), simulate(-h)
    for t in (2, 6):
        mean1 = (up[t][0] - down[t][0]) / (2 * h)
        second1 = (up[t][1] - down[t][1]) / (2 * h)
        assert np.allclose(got["mean1"][t][0], mean1, rtol=1e-7, atol=1e-8 * np.abs(mean1).max())
        assert np.allclose(got["second1"][t][0, :, 0], second1, rtol=1e-7,
                           atol=1e-8 * np.abs(second1).max())
    drift1 = (dup - ddown) / (2 * h)
    assert np.allclose(got["drift1"][0, 0], drift1, rtol=1e-7, atol=1e-8 * np.abs(drift1).max())
    assert np.abs(mean1[NA:]).max() > 1e-3 and np.abs(drift1).max() > 1e-3


@pytest.mark.parametrize("spec, shapes", [
    ("...IABwab,...Aa,...Bb->...Iw", [(7, 1, 1, 1, 5, 3, 5), (7, 1, 3), (7, 1, 3)]),
    ("...IAJwax,...Aa->...IJwx", [(7, 1, 1, 1, 5, 3, 5), (7, 1, 3)]),
    ("...AIaw,...Aa->...Iw", [(7, 1, 1, 3, 5), (7, 1, 3)]),
    ("...IAawx,...Aa->...Iwx", [(7, 1, 1, 3, 5, 4), (7, 1, 3)]),
    ("...IABCwabc,...Aa,...Bb,...Cc->...Iw", [(7, 1, 1, 1, 1, 5, 3, 3, 3)] + [(7, 1, 3)] * 3),
    ("...Aa,...Aa->...", [(7, 1, 3), (7, 1, 3)]),
    ("...IAJwax,...Aa->...IJwx", [(7, 2, 2, 2, 5, 3, 5), (7, 2, 3)]),      # two outputs
])
def test_a_varying_field_meets_its_eps_factors_as_einsum_does(spec, shapes):
    """The dynamics' contraction of a field that varies over the cubature points with its ε
    factors (batched matrix products, one summed axis at a time, where every ε sums one axis
    of the field and its neuron axes are of length one) gives np.einsum's numbers, in every
    position of the summed axes; with two outputs it is np.einsum itself."""
    from derive.numeric import training_nlo as tn

    rng = np.random.default_rng(7)
    ops = [rng.standard_normal(s) for s in shapes]
    if spec.startswith("...IABwab"):      # dĤ_{δαβ}: its last slot cut to the training samples
        ops[0] = ops[0][..., :3]
    ins, out = spec.split("->")
    terms = [t[3:] for t in ins.split(",")]
    fast = tn._chain(terms, out[3:], ops, 1)
    assert (fast is None) == (shapes[0][1] == 2)
    got = tn._contract(spec, ops)
    assert got.shape == np.einsum(spec, *ops).shape
    assert np.allclose(got, np.einsum(spec, *ops), rtol=1e-13, atol=1e-13)
