"""The PyTorch Monte Carlo backend on a GPU (skipped where PyTorch sees no CUDA device, as on
CI): the same ensembles as the numpy backend, float64 to round-off and float32 within errors,
and a check of the derived predictions run on the GPU.  Run on a machine with a GPU with
``python -m pytest -q tests/test_montecarlo_gpu.py``."""
from __future__ import annotations

import numpy as np
import pytest

from derive import MLP, ResMLP
from derive.reality.montecarlo import sample

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

X2 = np.array([[1.0, 0.5, -0.3], [0.2, -1.0, 0.4]])
STATS = ("G", "V", "Theta", "A", "B", "D", "F")


@pytest.mark.parametrize("act", ["tanh", "relu", "erf"])
def test_cuda_float64_equals_numpy(act):
    spec = MLP(3, 9, act, C_b=0.1, C_W=1.3, lambda_b=0.5, lambda_W=1.2)
    a = sample(spec, X2, 200, seed=4, progress=False)
    b = sample(spec, X2, 200, seed=4, progress=False, backend="torch", device="cuda")
    for k in STATS:
        if getattr(a.layers[1], k) is None:
            continue
        scale = max(np.abs(getattr(a.layers[l], k)).max() for l in a.layers)
        for l in a.layers:
            np.testing.assert_allclose(getattr(b.layers[l], k), getattr(a.layers[l], k),
                                       rtol=1e-9, atol=1e-12 * scale, err_msg=f"{k}, layer {l}")


def test_cuda_float32_within_errors():
    spec = ResMLP(3, 16, "tanh", C_b=0.1, C_W=1.0, xi=1.0, gamma=0.6)
    a = sample(spec, X2, 2000, seed=1, progress=False)
    b = sample(spec, X2, 2000, seed=1, progress=False, backend="torch", device="cuda",
               dtype="float32")
    for k in ("G", "V", "Theta", "A"):
        scale = max(np.abs(getattr(a.layers[l], k)).max() for l in a.layers)
        for l in a.layers:
            x, y, e = (getattr(a.layers[l], k), getattr(b.layers[l], k),
                       getattr(a.layers[l], k + "_err"))
            assert np.all(np.abs(x - y) <= 0.05 * e + 1e-5 * scale), (l, k)


def test_check_on_the_gpu_agrees_with_the_derived_predictions():
    import derive
    from derive.reality.check import Z_MAX

    spec = MLP(4, 32, "tanh", 0.0, 1.0)
    res = derive.check(spec, X2, widths=(16, 32, 64), samples=20_000, seed=3, progress=False,
                       backend="torch", device="cuda")
    bad = [f for f in res.fits if np.isfinite(f["z_lo"]) and abs(f["z_lo"]) > Z_MAX]
    assert not bad, bad
