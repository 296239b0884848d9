"""The derived layer-step recursions, evaluated numerically, against ensembles of actual
networks (THEORY §7): the NLO metric agrees within error bars, the LO metric's error shrinks
like 1/n, V agrees within error bars plus 2 % (the measured n·Cov carries V's own O(1/n)
correction, which the leading-order V omits); Θ (leading order only) is off by O(1/n)."""
import numpy as np
import pytest

from derive import MLP
from derive.evaluate import iterate_mlp
from derive.montecarlo import sample

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
