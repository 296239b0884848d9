"""The derived layer-step recursions, evaluated numerically, against ensembles of actual
networks (docs/conventions.md §7): the NLO metric agrees within error bars, the LO metric's error shrinks
like 1/n, V agrees within error bars plus 2 % (the measured n·Cov carries V's own O(1/n)
correction, which the leading-order V omits); Θ (leading order only) is off by O(1/n)."""
import numpy as np
import pytest

from derive import MLP
from derive.numeric.evaluate import iterate_mlp
from derive.reality.montecarlo import sample

pytestmark = pytest.mark.slow


def test_tanh_single_input_widths():
    X = np.array([[1.0, -0.6, 0.8]])
    lo_err = {}
    for n in (8, 16, 32):
        spec = MLP(4, n, "tanh", C_b=0.0, C_W=1.0)
        pred = iterate_mlp(spec, X)
        ens = sample(spec, X, 40_000, seed=2, output_width=n)
        for l in range(1, 5):
            e = ens.layers[l]
            fan_in = 3 if l == 1 else n
            nlo = pred["K"][l][0, 0] + pred["G1"][l][0, 0] / fan_in
            assert abs(e.G[0, 0] - nlo) < 4.5 * e.G_err[0, 0], (n, l)
            assert abs(e.V[0, 0, 0, 0] - pred["V"][l][0, 0, 0, 0]) < 4.5 * e.V_err[0, 0, 0, 0] + 0.02 * pred["V"][l][0, 0, 0, 0], (n, l)
            assert abs(e.Theta[0, 0] / pred["Theta"][l][0, 0] - 1) < 2.0 / n, (n, l)
        lo_err[n] = abs(ens.layers[4].G[0, 0] - pred["K"][4][0, 0])
        assert lo_err[n] > 4 * ens.layers[4].G_err[0, 0]  # the 1/n correction is resolved
    ratio = lo_err[8] / lo_err[32]
    assert 2.5 < ratio < 6.5, ratio  # LO error ∝ 1/n: a factor 4 from n = 8 to 32


def test_erf_two_inputs_unequal_widths_per_layer_CW():
    X = np.array([[1.0, -0.6, 0.8], [0.3, 0.9, -0.5]])
    n = 12
    spec = MLP(3, [n, 2 * n], "erf", C_b=0.1, C_W=[1.0, np.pi / 4 * 1.2, 0.9])
    pred = iterate_mlp(spec, X)
    ens = sample(spec, X, 40_000, seed=4, output_width=8)
    for l in (2, 3):
        e = ens.layers[l]
        fan_in = [3, n, 2 * n][l - 1]
        nlo = pred["K"][l] + pred["G1"][l] / fan_in
        assert np.all(np.abs(e.G - nlo) < 4.5 * e.G_err), l
        assert np.all(np.abs(e.V - pred["V"][l]) < 4.5 * e.V_err + 0.02 * np.abs(pred["V"][l]).max()), l
        assert np.all(np.abs(e.Theta / pred["Theta"][l] - 1) < 3.0 / fan_in), l


def _fit_inverse_widths(ns, y, s):
    """Weighted least squares y = a/n + b/n²; returns (a, b), their standard errors."""
    ns, y, s = map(np.asarray, (ns, y, s))
    A = np.stack([1 / ns, 1 / ns**2], axis=1) / s[:, None]
    coef = np.linalg.lstsq(A, y / s, rcond=None)[0]
    return coef, np.sqrt(np.diag(np.linalg.inv(A.T @ A)))


def test_tanh_error_rates_lo_one_over_n_nlo_one_over_n_squared():
    # docs/conventions.md §7: compare across widths.  The Monte Carlo metric minus LO must have a 1/n term
    # equal to the derived G1; minus NLO, no 1/n term is left (what remains is O(1/n²)).
    X = np.array([[1.0, -0.6, 0.8]])
    ns = [3, 4, 6, 8]
    lo, nlo, err = [], [], []
    for n in ns:
        spec = MLP(3, n, "tanh", C_b=0.0, C_W=1.5)
        pred = iterate_mlp(spec, X)
        e = sample(spec, X, 1_000_000, seed=7, output_width=16).layers[3]
        G1 = pred["G1"][3][0, 0]
        lo.append(e.G[0, 0] - pred["K"][3][0, 0])
        nlo.append(lo[-1] - G1 / n)
        err.append(e.G_err[0, 0])
    (a_lo, _), (s_lo, _) = _fit_inverse_widths(ns, lo, err)
    (a_nlo, _), (s_nlo, _) = _fit_inverse_widths(ns, nlo, err)
    assert abs(a_lo) > 10 * s_lo                  # the LO error is resolved and ∝ 1/n …
    assert abs(a_lo - G1) < 3 * s_lo, (a_lo, G1)  # … with the derived coefficient G1
    assert abs(a_nlo) < 3 * s_nlo, (a_nlo, s_nlo)  # the NLO error has no 1/n part left
    assert all(abs(b) < abs(a) / 3 for a, b in zip(lo, nlo))


def test_relu_three_inputs_unequal_widths():
    # a kinked σ: the recursions are evaluated in their derivative-free form
    X = np.array([[1.0, 0.2, 0.0], [0.3, 1.0, 0.5], [-0.2, 0.4, 1.0]])
    spec = MLP(3, [10, 30], "relu", C_b=0.1, C_W=[1.5, 2.0, 1.8])
    pred = iterate_mlp(spec, X)
    assert np.abs(pred["G1"][3]).max() > 0.05  # off-diagonal G1 is not small here
    ens = sample(spec, X, 100_000, seed=11, output_width=8)
    for l in (2, 3):
        e = ens.layers[l]
        fan_in = [3, 10, 30][l - 1]
        nlo = pred["K"][l] + pred["G1"][l] / fan_in
        assert np.all(np.abs(e.G - nlo) < 4.5 * e.G_err), (l, e.G - nlo, e.G_err)
        # ReLU's V carries a large O(1/n) correction of its own (single input, exactly
        # (1 + 5/n)^{ℓ-1} − 1 against 5(ℓ−1)/n): allow 3/fan_in relative
        tol = 4.5 * e.V_err + 3.0 / fan_in * np.abs(pred["V"][l]).max()
        assert np.all(np.abs(e.V - pred["V"][l]) < tol), (l, np.abs(e.V - pred["V"][l]).max())


def test_user_string_activation_two_inputs():
    # a user's σ (kink at 0 plus a smooth part), given as a SymPy string
    X = np.array([[1.0, -0.6, 0.8], [0.3, 0.9, -0.5]])
    n = 12
    spec = MLP(3, n, "Max(0, z) - 0.2*Max(0, -z) + 0.3*tanh(z)", C_b=0.05, C_W=1.6)
    pred = iterate_mlp(spec, X)
    ens = sample(spec, X, 60_000, seed=12, output_width=8)
    for l in (2, 3):
        e = ens.layers[l]
        nlo = pred["K"][l] + pred["G1"][l] / (3 if l == 1 else n)
        assert np.all(np.abs(e.G - nlo) < 4.5 * e.G_err), (l, e.G - nlo, e.G_err)
        assert np.all(np.abs(e.V - pred["V"][l]) < 4.5 * e.V_err + 0.05 * np.abs(pred["V"][l]).max()), l
