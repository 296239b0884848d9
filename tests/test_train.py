"""derive.train at order 0 (kernel learning, book ch. 10; issue 17 part 1) and the ensembles of
actually trained networks of derive.reality.training."""
from __future__ import annotations

import math

import numpy as np
import pytest

import derive
from derive.numeric.training import UnstableStepWarning
from derive.reality.training import train_ensemble


def _data(seed: int, NA: int = 3, NB: int = 2, n0: int = 3, n_out: int | None = None):
    rng = np.random.default_rng(seed)
    XA, XB = rng.normal(size=(NA, n0)), rng.normal(size=(NB, n0))
    y = rng.normal(size=NA) if n_out is None else rng.normal(size=(NA, n_out))
    return XA, y, XB


def _iterate(K, Th, y, NA, eta, T):
    """Mean and covariance step by step with the linear update (no matrix powers):
    z ← z − η Θ_{:,A} (z_A − y), from z(0) ~ N(0, K)."""
    N = K.shape[0]
    Y = y[:, None] if y.ndim == 1 else y
    M = np.eye(N)
    M[:, :NA] -= eta * Th[:, :NA]
    m = np.zeros((N, Y.shape[1]))
    C = K.copy()
    out = {0: (m.copy(), C.copy())}
    for t in range(1, T + 1):
        m = M @ m + eta * Th[:, :NA] @ Y
        C = M @ C @ M.T
        out[t] = (m.copy(), C.copy())
    return out


SPECS = [
    (derive.MLP(3, 16, "tanh", C_b=0.1, C_W=1.0), 0.15, 1, None),
    (derive.MLP(2, 16, "relu", C_b=0.0, C_W=2.0, lambda_b=0.5, lambda_W=2.0), 0.1, 2, 2),
    (derive.MLP(4, 16, "erf", C_b=0.2, C_W=[1.5, 1.0, 1.2, 0.8], lambda_b=[1, 2, 1, 0.5],
                lambda_W=[0.5, 1, 2, 1]), 0.05, 3, None),
]


@pytest.mark.parametrize("spec, eta, seed, n_out", SPECS)
def test_order0_against_stepwise_iteration(spec, eta, seed, n_out):
    XA, y, XB = _data(seed, n_out=n_out)
    T = 40
    tr = derive.train(spec, XA, y, XB, eta, T)
    assert tr.times == (0, 1, 2, 4, 8, 16, 32, 40)
    ref = _iterate(tr.K, tr.Theta, np.asarray(y), len(XA), eta, T)
    for t in range(T + 1):
        m, C = ref[t]
        m = m[:, 0] if n_out is None else m
        assert tr.mean(t).shape == m.shape
        np.testing.assert_allclose(tr.mean(t), m, rtol=0, atol=1e-10)
        np.testing.assert_allclose(tr.cov(t), C, rtol=0, atol=1e-10)
        np.testing.assert_array_equal(tr.mean0(t), tr.mean(t))
        np.testing.assert_array_equal(tr.cov0(t), tr.cov(t))
    assert np.all(tr.ntk_drift == 0) and tr.ntk_drift.shape == (5, 5)
    # t = ∞ is the limit of the iteration
    assert tr.stable
    far = _iterate(tr.K, tr.Theta, np.asarray(y), len(XA), eta, 20000)[20000]
    np.testing.assert_allclose(tr.mean(math.inf), far[0][:, 0] if n_out is None else far[0],
                               atol=1e-8)
    np.testing.assert_allclose(tr.cov(math.inf), far[1], atol=1e-8)
    # training outputs reach the targets with no variance; the test error splits as stated
    np.testing.assert_allclose(tr.mean(math.inf)[:len(XA)], y, atol=1e-8)
    yt = np.ones(len(XB)) if n_out is None else np.ones((len(XB), n_out))
    e = tr.test_error(T, yt)
    mB = tr.mean(T)[len(XA):]
    assert e.bias == pytest.approx(0.5 * np.sum((mB - yt) ** 2), abs=1e-12)
    assert e.variance == pytest.approx(0.5 * (n_out or 1) * np.trace(tr.cov(T)[len(XA):, len(XA):]),
                                       abs=1e-12)
    assert e.total == pytest.approx(e.bias + e.variance)


def test_kernels_are_those_of_predict():
    spec = derive.MLP(3, 8, "tanh", C_b=0.1, C_W=1.2, lambda_b=0.7, lambda_W=1.3)
    XA, y, XB = _data(7)
    tr = derive.train(spec, XA, y, XB, 0.1, 5)
    p = derive.predict(spec, np.vstack([XA, XB]), order=0, targets=["K", "Theta"])
    np.testing.assert_allclose(tr.K, p.K[3], atol=1e-14)
    np.testing.assert_allclose(tr.Theta, p.Theta[3], atol=1e-14)
    np.testing.assert_allclose(tr.cov(0), p.K[3], atol=1e-14)


def test_singular_theta_duplicate_inputs():
    """Two equal training inputs: Θ_AA is singular; the closed form still equals the iteration."""
    spec = derive.MLP(2, 8, "tanh", C_b=0.1, C_W=1.0)
    XA, y, XB = _data(4)
    XA[1] = XA[0]
    tr = derive.train(spec, XA, y, XB, 0.2, 30)
    ref = _iterate(tr.K, tr.Theta, y, 3, 0.2, 30)
    for t in (1, 7, 30):
        np.testing.assert_allclose(tr.mean(t), ref[t][0][:, 0], atol=1e-9)
        np.testing.assert_allclose(tr.cov(t), ref[t][1], atol=1e-9)


def test_unstable_eta_warns_and_refuses_infinity():
    spec = derive.MLP(2, 8, "tanh", C_b=0.1, C_W=1.0)
    XA, y, XB = _data(5)
    with pytest.warns(UnstableStepWarning, match="≥ 2"):
        tr = derive.train(spec, XA, y, XB, 5.0, 10)
    assert not tr.stable
    ref = _iterate(tr.K, tr.Theta, y, 3, 5.0, 10)
    np.testing.assert_allclose(tr.mean(10), ref[10][0][:, 0], rtol=1e-9)
    with pytest.raises(derive.DeriveError, match="stable"):
        tr.mean(math.inf)


def test_bad_input_and_order1():
    spec = derive.MLP(2, 8, "tanh", C_b=0.1, C_W=1.0)
    XA, y, XB = _data(6)
    with pytest.raises(derive.DeriveError, match="order"):
        derive.train(spec, XA, y, XB, 0.1, 10, order=2)
    bad = [dict(eta=0.0), dict(eta=-1), dict(eta=float("nan")), dict(steps=2.5),
           dict(steps=-1), dict(steps="10"), dict(y_train=y[:2]), dict(y_train=np.ones((3, 2, 1))),
           dict(X_test=np.ones((2, 4))), dict(X_train=np.array([[1.0, np.nan, 0]] * 3)),
           dict(y_train=np.array([1.0, np.inf, 0])), dict(times=[0, 11]), dict(times=[1.5])]
    for kw in bad:
        args = dict(spec=spec, X_train=XA, y_train=y, X_test=XB, eta=0.1, steps=10)
        args.update(kw)
        with pytest.raises(derive.DeriveError):
            derive.train(**args)
    tr = derive.train(spec, XA, y, XB, 0.1, 10.0)
    assert tr.steps == 10
    with pytest.raises(derive.DeriveError):
        tr.mean(-1)
    with pytest.raises(derive.DeriveError):
        tr.test_error(10, np.ones(3))
    no_test = derive.train(spec, XA, y, None, 0.1, 10)
    assert no_test.mean(10).shape == (3,)
    with pytest.raises(derive.DeriveError):
        no_test.test_error(10, np.ones(0))
    with pytest.raises(derive.DeriveError):
        train_ensemble(derive.ResMLP(2, 8, "tanh", C_b=0.1, C_W=1.0), XA, y, XB, 0.1, 3, 4)
    with pytest.raises(derive.DeriveError):
        train_ensemble(spec, XA, y, XB, 0.1, 3, 1)


def test_ensemble_ntk_at_init_and_gradient_step():
    """The trainer's empirical NTK and its update agree: for a tiny η one step moves the outputs
    by −η Ĥ_{:,A} (z_A − y) to O(η²) (a check of the backward pass and the λ scaling)."""
    spec = derive.MLP(3, 6, "tanh", C_b=0.1, C_W=1.0, lambda_b=0.7, lambda_W=1.9)
    XA, y, XB = _data(8, NA=2, NB=1)
    eta = 1e-6
    ens = train_ensemble(spec, XA, y, XB, eta, 1, n_networks=4, seed=1, times=[0, 1])
    z0, z1, H0 = ens.z[:, 0, 0], ens.z[:, 1, 0], ens.ntk[:, 0]
    pred = z0 - eta * np.einsum("cab,cb->ca", H0[:, :, :2], z0[:, :2] - y)
    np.testing.assert_allclose(z1 - z0, pred - z0, rtol=1e-4, atol=1e-14)


@pytest.mark.slow
def test_trained_ensembles_agree_with_kernel_learning():
    """Wide tanh networks (depth 2, widths 128 and 512, 1000 networks; depth 3, widths 128 and
    256, 300 networks), 2 training and 2 test inputs, η = 0.3, T = 32.  Allowance: 4 standard
    errors + 1/n (the O(1/n) corrections of issue 17 part 3 are not subtracted).  Measured when
    written (seed 3): |mean − mean0| ≤ 2.6 se, |cov − cov0| ≤ 0.008; the residual of the linear
    control variate z(t) − A_t z(0) − c_t has |mean| ≤ 2.5e-4 at n = 512; n·max|E[Ĥ(T) − Ĥ(0)]|
    ≈ 0.45 and 0.58 at n = 128 and 512 (depth 2), 1.36 and 1.34 at 128 and 256 (depth 3)."""
    rng = np.random.default_rng(1)
    XA, XB = rng.normal(size=(2, 3)), rng.normal(size=(2, 3))
    y = np.array([0.5, -0.3])
    eta, T = 0.3, 32
    for depth, widths, nets in ((2, (128, 512), 1000), (3, (128, 256), 300)):
        drift = {}
        for n in widths:
            spec = derive.MLP(depth, n, "tanh", C_b=0.1, C_W=1.0)
            tr = derive.train(spec, XA, y, XB, eta, T)
            ens = train_ensemble(spec, XA, y, XB, eta, T, nets, seed=3)
            assert ens.times == tr.times
            np.testing.assert_array_less(np.abs(ens.ntk_mean(0) - tr.Theta),
                                         4 * ens.ntk[:, 0].std(0) / math.sqrt(nets) + 1 / n)
            z0 = ens.z[:, 0, 0]
            for t in (0, 4, 16, 32):
                np.testing.assert_array_less(np.abs(ens.mean(t) - tr.mean(t)),
                                             4 * ens.mean_se(t) + 1 / n)
                np.testing.assert_array_less(np.abs(ens.cov(t) - tr.cov(t)),
                                             4 * ens.cov_se(t) + 1 / n)
                A = tr._map(t)[0]
                r = ens.z[:, ens.times.index(t), 0] - z0 @ A.T - tr.mean(t)
                np.testing.assert_array_less(np.abs(r.mean(0)),
                                             4 * r.std(0) / math.sqrt(nets) + 1 / n)
            drift[n] = np.abs(ens.ntk_drift).max()
            assert n * drift[n] < 3.0
            assert drift[n] > 3 * ens.ntk_drift_se.max()     # measured, not noise
        small, large = widths
        assert drift[large] < drift[small] * (small / large) * 2   # shrinks like 1/n
