"""derive.check_train and `derive check --train` (issue 17 part 4): trained ensembles of actual
networks against derive.train at orders 0 and 1.  The statistical agreement itself is tested at
larger widths in tests/test_train_nlo.py; here the mechanics, the control variate and the
refusals."""
import csv
import json

import numpy as np
import pytest

import derive
from derive import DeriveError
from derive.cli.main import main
from derive.cli.specfile import spec_from_mapping, train_settings

XA = np.array([[0.8, -0.5, 1.2], [0.1, 0.9, -0.4]])
YA = np.array([0.5, -0.3])
XB = np.array([[-0.6, 0.4, 0.7]])


@pytest.fixture(scope="module")
def small():
    spec = derive.MLP(2, 16, "erf", 0.1, 0.9, lambda_b=0.6, lambda_W=1.2)
    return derive.check_train(spec, XA, YA, XB, 0.5, 4, widths=[16, 32, 64], samples=400)


def test_rows_and_fits(small):
    kinds = {r["quantity"] for r in small.rows}
    assert kinds == {"mean", "cov", "drift"}
    assert {r["width"] for r in small.rows} == {16, 32, 64}
    # the mean at step 0 is reproduced exactly by the control variate: no fit
    assert not [f for f in small.fits if f["quantity"] == "mean" and f["t"] == 0]
    fits = {(f["quantity"], f["t"], f["component"]): f for f in small.fits}
    f = fits["mean", 4, "0"]
    tr = derive.train(small.spec.with_widths(16), XA, YA, XB, 0.5, 4, order=1)
    assert f["lo"] == pytest.approx(tr.mean0(4)[0])
    assert f["slope_nlo"] == pytest.approx(tr.mean1(4)[0])
    assert np.isfinite(f["z_slope"]) and f["B_se"] > 0
    assert "largest |z|" in small.table()


def test_control_variate_shrinks_the_error_of_the_mean(small):
    """The mean's standard error with the kernel-learning prediction subtracted is far below
    the plain spread of the outputs (their covariance's diagonal / √S)."""
    rows = {(r["quantity"], r["t"], r["component"], r["width"]): r for r in small.rows}
    for a in range(3):
        cv = rows["mean", 1, str(a), 64]["se"]
        plain = np.sqrt(rows["cov", 1, f"{a},{a}", 64]["measured"] / 400)
        assert cv < 0.5 * plain


def test_csv(small, tmp_path):
    small.to_csv(tmp_path / "t.csv")
    rows = list(csv.DictReader(open(tmp_path / "t.csv")))
    fits = list(csv.DictReader(open(tmp_path / "t_fits.csv")))
    assert len(rows) == len(small.rows) and len(fits) == len(small.fits)
    assert {"measured", "se", "lo", "nlo"} <= set(rows[0])


def test_refusals():
    spec = derive.MLP(2, 16, "tanh", 0.1, 1.0)
    with pytest.raises(DeriveError, match="widths"):
        derive.check_train(spec, XA, YA, XB, 0.5, 4, widths=[16], samples=200)
    with pytest.raises(DeriveError, match="samples"):
        derive.check_train(spec, XA, YA, XB, 0.5, 4, widths=[8, 16], samples=10)


def test_two_outputs():
    """Several outputs: the mean per input and output ("α:i"), the covariance averaged over the
    outputs, the drift of output 0 — each against train(order=1)'s."""
    spec = derive.MLP(2, 16, "erf", 0.1, 0.9, lambda_b=0.6, lambda_W=1.2)
    Y2 = np.array([[0.5, -0.2], [-0.3, 0.9]])
    res = derive.check_train(spec, XA, Y2, XB, 0.5, 2, widths=[8, 16], samples=200)
    tr = derive.train(spec.with_widths(8), XA, Y2, XB, 0.5, 2, order=1)
    fits = {(f["quantity"], f["t"], f["component"]): f for f in res.fits}
    assert {c for q, t, c in fits if q == "mean" and t == 2} == \
        {f"{a}:{i}" for a in range(3) for i in range(2)}
    assert fits["mean", 2, "2:1"]["slope_nlo"] == pytest.approx(tr.mean1(2)[2, 1])
    assert fits["mean", 2, "2:1"]["lo"] == pytest.approx(tr.mean0(2)[2, 1])
    assert fits["cov", 2, "0,2"]["slope_nlo"] == pytest.approx(tr.cov1(2)[0, 2])
    assert fits["drift", 2, "0,1"]["slope_nlo"] == pytest.approx(tr.ntk_drift1[0, 1])
    # the covariances between the two outputs, every (α, β): zero at infinite width
    assert {c for q, t, c in fits if q == "cov_out" and t == 2} == \
        {f"{a},{b}:0,1" for a in range(3) for b in range(3)}
    f = fits["cov_out", 2, "2,0:0,1"]
    assert f["lo"] == 0.0
    assert f["slope_nlo"] == pytest.approx(tr.cov1_by_output(2)[0, 2, 1, 0])
    assert f["slope_nlo"] != pytest.approx(tr.cov1_by_output(2)[0, 0, 1, 2])   # not symmetric
    assert "2,0:0,1" in res.table()


def test_cross_covariance_and_its_control_variate():
    """Cov[z_0;α, z_1;β] over networks against np.cov, and the control variate: with outputs
    made of a large linear part (whose cross-covariance has mean zero) and a small true
    cross-covariance, subtracting the linear parts' products recovers the true one with a
    standard error below a fifth of the plain estimate's."""
    from derive.reality.check_train import _cross_covariance

    rng = np.random.default_rng(3)
    S = 4000
    z0 = rng.standard_normal((S, 2, 3))
    lin = z0 @ np.array([[1.0, 0.2, 0.0], [0.0, 1.0, 0.3], [0.1, 0.0, 1.0]])
    noise = 0.1 * rng.standard_normal((S, 2, 3))
    z = lin + noise
    z[:, 1] += 0.5 * noise[:, 0]                       # a true cross-covariance beside lin's
    plain, se_plain = _cross_covariance(z, np.zeros_like(z))
    full = np.cov(z.reshape(S, 6).T).reshape(2, 3, 2, 3)
    assert np.allclose(plain[0, :, 1], full[0, :, 1]) and np.allclose(plain[1, :, 0], full[1, :, 0])
    assert np.all(plain[0, :, 0] == 0.0)
    cov, se = _cross_covariance(z, lin)
    truth = 0.5 * 0.01 * np.eye(3)                     # Cov[noise_0, 0.5 noise_0]
    assert np.all(np.abs(cov[0, :, 1] - truth) < 4 * se[0, :, 1] + 1e-4)
    assert np.all(se[0, :, 1] < 0.2 * se_plain[0, :, 1])


def test_spec_file_train_table():
    data = {"activation": "tanh", "depth": 2, "widths": 8, "inputs": XA.tolist(),
            "train": {"targets": [0.5, -0.3], "test_inputs": XB.tolist(), "eta": 0.2,
                      "steps": 8}}
    spec, X, _, _ = spec_from_mapping(data)
    y, xb, eta, steps = train_settings(data["train"], X)
    assert np.allclose(y, YA) and np.allclose(xb, XB) and (eta, steps) == (0.2, 8)
    for bad, msg in (({"targets": [0.5]}, "2 inputs"), ({"eta": 0.1}, "targets"),
                     ({"targets": [0.5, 0.1], "lr": 1}, "unknown"),
                     ({"targets": [0.5, 0.1], "test_inputs": [[1.0]]}, "features"),
                     ({"targets": [0.5, 0.1], "eta": -1}, "eta"), ("fast", "table")):
        with pytest.raises(DeriveError, match=msg):
            train_settings(bad, X)
    with pytest.raises(DeriveError, match="'train' table"):
        train_settings(None, X)
    # several outputs: one row of targets per input
    y2, _, _, _ = train_settings({"targets": [[0.5, 0.1], [-0.3, 0.2]]}, X)
    assert y2.shape == (2, 2)
    for bad, msg in (({"targets": [[0.5, 0.1]]}, "2 inputs"),
                     ({"targets": [[0.5, 0.1], [0.2]]}, "ragged")):
        with pytest.raises(DeriveError, match=msg):
            train_settings(bad, X)


def test_cli_train_check(tmp_path, capsys):
    spec = tmp_path / "s.toml"
    spec.write_text('activation = "erf"\ndepth = 2\nwidths = 16\nC_b = 0.1\nC_W = 0.9\n'
                    'inputs = [[0.8, -0.5, 1.2], [0.1, 0.9, -0.4]]\n'
                    'train = { targets = [0.5, -0.3], test_inputs = [[-0.6, 0.4, 0.7]], '
                    'eta = 0.5, steps = 2 }\n')
    out = tmp_path / "out"
    assert main(["check", str(spec), "--train", "--widths", "8,16", "--samples", "200",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "training check" in text and "drift" in text
    assert (out / "train_check.csv").is_file() and (out / "train_check_fits.csv").is_file()
    manifest = json.loads((out / "derive-manifest.json").read_text())
    assert manifest["check_train"]["steps"] == 2
    assert main(["check", str(spec), "--train", "--ntk", "--out", str(tmp_path / "x")]) != 0
    # the initialisation check's execution options would be silently ignored: refused
    for extra in (["--workers", "2"], ["--backend", "torch"], ["--dtype", "float32"]):
        assert main(["check", str(spec), "--train", *extra, "--out", str(tmp_path / "y")]) != 0
        assert "--train trains float64 numpy networks" in capsys.readouterr().err
