"""derive check: Monte Carlo of actual networks against the derived predictions, 1/n fits."""
import csv

import numpy as np
import pytest

import derive
from derive.cli.main import main
from derive.reality.check import CheckError

X1 = np.array([[1.0, -0.4, 0.7]])


def _rows(res, quantity, component):
    return [r for r in res.rows if r["quantity"] == quantity and r["component"] == component]


@pytest.mark.slow
@pytest.mark.parametrize("act, C_W, growth", [("relu", 2.0, 5.0), ("linear", 1.0, 2.0)])
def test_check_recovers_exact_finite_width_oracles(act, C_W, growth):
    # docs/conventions.md §4 (single input, C_b = 0, equal hidden widths n): the metric is K exactly (no 1/n
    # correction), and n·Cov(z_i², z_j²) = n K² [(1 + g/n)^{ℓ−1} − 1] exactly (g = 5 ReLU, 2 linear)
    spec = derive.MLP(4, 8, act, 0.0, C_W)
    res = derive.check(spec, X1, widths=(6, 12, 24), samples=30_000, seed=1)
    G0 = float((X1 @ X1.T)[0, 0]) / X1.shape[1]

    def K(l):  # linear: C_W^ℓ G0; ReLU at C_W = 2: 2 G0 at every layer
        return C_W ** l * G0 if act == "linear" else C_W * G0

    for r in _rows(res, "metric", "11"):
        assert abs(r["mc_mean"] - K(r["layer"])) < 4 * r["mc_stderr"], r
    for r in _rows(res, "V", "(11)(11)"):
        n, l = r["width"], r["layer"]
        exact = n * K(l) ** 2 * ((1 + growth / n) ** (l - 1) - 1)
        assert abs(r["mc_mean"] - exact) <= 4 * r["mc_stderr"] + 1e-12, r
        assert r["lo"] == pytest.approx((l - 1) * growth * K(l) ** 2, rel=1e-9, abs=1e-12)


@pytest.mark.slow
def test_check_tanh_intercepts_match_leading_order():
    spec = derive.MLP(5, 32, "tanh", 0.0, 1.0)
    X = np.array([[1.0, 0.5, -0.3], [0.2, -1.0, 0.4]])
    res = derive.check(spec, X, widths=(16, 32, 64), samples=20_000, seed=2)
    assert len(res.fits) == 5 * (3 + 6)   # 3 metric and 6 V components per layer
    for f in res.fits:
        assert abs(f["z_lo"]) < 4, f
    metric = [f for f in res.fits if f["quantity"] == "metric" and f["layer"] >= 2]
    assert all(f["slope_agrees"] for f in metric)
    # the NLO metric is closer to Monte Carlo than LO at the smallest width, last layer
    r = next(r for r in _rows(res, "metric", "11") if r["layer"] == 5 and r["width"] == 16)
    assert abs(r["mc_mean"] - r["nlo"]) < abs(r["mc_mean"] - r["lo"])


def test_check_outputs_and_cli(tmp_path, capsys):
    spec = derive.MLP(3, 4, "erf", 0.1, 0.9)
    res = derive.check(spec, X1, widths=(4, 8), samples=400, seed=0)
    keys = {"quantity", "layer", "width", "mc_mean", "mc_stderr", "lo", "nlo"}
    assert res.rows and all(keys <= set(r) for r in res.rows)
    res.plot(tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    res.to_csv(tmp_path / "c.csv")
    with open(tmp_path / "c.csv") as fh:
        assert len(list(csv.DictReader(fh))) == len(res.rows)
    spec_file = tmp_path / "s.toml"
    spec_file.write_text('activation = "erf"\ndepth = 3\nwidths = 4\nC_W = 0.9\ninputs = [[1.0, 0.5]]\n')
    assert main(["check", str(spec_file), "--widths", "4,8", "--samples", "400",
                 "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "n→∞ intercept" in out and "check.png" in out
    for name in ("check.csv", "check_fits.csv", "check.png"):
        assert (tmp_path / "o" / name).is_file()


def test_check_bad_input(tmp_path, capsys):
    spec = derive.MLP(3, 4, "tanh", 0.0, 1.0)
    with pytest.raises(CheckError, match="≥ 2"):
        derive.check(spec, X1, widths=(1, 4), samples=400)
    with pytest.raises(CheckError, match="jackknife"):
        derive.check(spec, X1, widths=(4, 8), samples=50)
    with pytest.raises(CheckError, match="depth"):
        derive.check(derive.MLP(1, [], "tanh", 0.0, 1.0), X1, widths=(4,), samples=400)
    # a diverging spec: the ensemble overflows, the error names it
    with pytest.raises(CheckError, match="overflowed"):
        derive.check(derive.MLP(40, 4, "exp(z)", 0.0, 3.0), X1, widths=(4, 8), samples=400)
    assert main(["check", "demo", "--widths", "0,4"]) == 2
    assert "≥ 2" in capsys.readouterr().err


def test_check_keeps_partial_results(fail_at_second_width):
    with pytest.raises(CheckError, match="width 8.*overflowed.*kept for widths \\[4\\]") as info:
        derive.check(derive.MLP(3, 4, "tanh", 0.0, 1.0), X1, widths=(4, 8), samples=400)
    part = info.value.partial
    assert part.rows and {r["width"] for r in part.rows} == {4}


def test_check_residual_network_leading_order_only(tmp_path, capsys, monkeypatch):
    """A residual network with a skip term: predictions to leading order only (spec.max_order =
    0). The metric's intercept is compared with K; its slope and V have no prediction, and the
    rows, fits, table, CSV, plot and CLI say so — nothing is invented in their place."""
    import derive.reality.check as reality

    orders, real = [], reality.predict

    def spy(spec, X, order=None, **kw):
        orders.append((order, kw.get("targets")))
        return real(spec, X, order=order, **kw)

    monkeypatch.setattr(reality, "predict", spy)
    spec = derive.ResMLP(3, 8, "tanh", 0.05, 1.0, xi=1.0, gamma=0.5)
    assert spec.max_order == 0
    res = derive.check(spec, X1, widths=(4, 8), samples=800, seed=3)
    assert orders == [(0, ("K",)), (0, ("K",))] and res.order == 0
    why = "not derived for skip connections"
    K = real(spec, X1, order=0, targets=("K",)).K
    for r in _rows(res, "metric", "11"):
        assert r["lo"] == K[r["layer"]][0, 0] and np.isnan(r["nlo"]) and why in r["note"]
    for r in _rows(res, "V", "(11)(11)"):
        assert np.isnan(r["lo"]) and np.isnan(r["nlo"]) and why in r["note"]
    for f in res.fits:
        assert np.isnan(f["slope_nlo"]) and np.isnan(f["z_slope"]) and f["slope_agrees"] is None
        assert why in f["note"]
        if f["quantity"] == "metric":
            assert abs(f["z_lo"]) < 4, f
        else:
            assert np.isnan(f["lo"]) and np.isnan(f["z_lo"])
    table = res.table()
    assert "no NLO prediction: " + why in table and "no prediction: V is O(1/n)" in table
    assert "leading order only" in table and "nan" not in table
    res.to_csv(tmp_path / "r.csv")
    with open(tmp_path / "r_fits.csv") as fh:
        assert all(why in row["note"] for row in csv.DictReader(fh))
    res.plot(tmp_path / "r.png")
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    # ξ = 0 at every layer: no skip, the MLP's O(1/n) closure, slopes compared again
    flat = derive.check(derive.ResMLP(3, 8, "tanh", 0.05, 1.0, xi=0.0, gamma=0.5), X1,
                        widths=(4, 8), samples=400, seed=3)
    assert flat.order == 1 and orders[-1] == (1, ("K", "G1", "V"))
    assert all(np.isfinite(f["slope_nlo"]) for f in flat.fits if f["quantity"] == "metric")
    # the command line, from a spec file
    spec_file = tmp_path / "res.toml"
    spec_file.write_text('architecture = "residual"\nactivation = "tanh"\ndepth = 3\nwidths = 4\n'
                         'C_W = 1.0\nxi = 1.0\ngamma = 0.5\ninputs = [[1.0, 0.5]]\n')
    capsys.readouterr()
    assert main(["check", str(spec_file), "--widths", "4,8", "--samples", "400",
                 "--out", str(tmp_path / "o")]) == 0
    assert "no NLO prediction: " + why in capsys.readouterr().out
