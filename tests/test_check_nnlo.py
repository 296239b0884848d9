"""derive check at O(1/n²) (order 2): the three-neuron cumulant estimator against distributions
whose cumulant is known, the new columns, bad input, and a tanh check against G2, V1 and U."""
import csv
import itertools

import numpy as np
import pytest

import derive
from derive.cli.main import main
from derive.reality.check import Z_MAX, CheckError
from derive.reality.montecarlo import BLOCKS, _ThreeAccumulator, three_neuron

X1 = np.array([[1.0, 0.5]])


def _rows(res, quantity, component=None):
    return [r for r in res.rows if r["quantity"] == quantity
            and (component is None or r["component"] == component)]


def _estimate(z, chunk=5000):
    """n² κ3 with n = 1 (plain κ3) and its error from the estimator, fed in chunks."""
    acc = _ThreeAccumulator(z.shape[2])
    for s in range(0, len(z), chunk):
        acc.add(np.arange(s, min(len(z), s + chunk)) % BLOCKS, z[s:s + chunk])
    return acc.finish(1.0)


def test_three_neuron_estimator_per_network_sums_match_explicit_triples():
    # the within-network averages from sums over neurons against loops over ordered triples
    rng = np.random.default_rng(0)
    z = rng.normal(size=(3, 5, 2))
    g, p, t = _ThreeAccumulator.per_network(z)
    a = np.einsum("cia,cib->ciab", z, z).reshape(3, 5, 4)
    pp = sum(np.einsum("ca,cb->cab", a[:, i], a[:, j])
             for i, j in itertools.permutations(range(5), 2)) / 20
    tt = sum(np.einsum("ca,cb,cd->cabd", a[:, i], a[:, j], a[:, k])
             for i, j, k in itertools.permutations(range(5), 3)) / 60
    assert np.allclose(g, a.mean(axis=1)) and np.allclose(p, pp) and np.allclose(t, tt)


def test_three_neuron_estimator_is_zero_for_independent_gaussian_neurons():
    # neurons independent (and Gaussian) in every network: every κ3 of three neurons is 0
    rng = np.random.default_rng(1)
    L = np.linalg.cholesky(np.array([[1.0, 0.4], [0.4, 0.7]]))
    z = rng.normal(size=(100_000, 6, 2)) @ L.T
    val, err = _estimate(z)
    assert val.shape == (2,) * 6 and np.all(err > 0)
    assert np.all(np.abs(val) < 4 * err), np.max(np.abs(val) / err)
    assert err[0, 0, 0, 0, 0, 0] < 0.05       # a meaningful bound (E[z⁶-ish] ≈ 1)


def test_three_neuron_estimator_recovers_a_known_cumulant():
    # per network a random pair of scales (u, v) (three atoms, u and v correlated), shared by
    # the neurons: z_{i;1} = √u ε_{i;1}, z_{i;2} = √v ε_{i;2}, ε_i iid N(0, Σ).  Given (u, v)
    # different neurons are independent, so κ3 of three different neurons is the third joint
    # central moment of the conditional means m = (u Σ11, √(uv) Σ12, √(uv) Σ12, v Σ22),
    # written here from the atoms directly (no cumulant formula of the estimator).
    Sigma = np.array([[1.0, 0.5], [0.5, 0.8]])
    atoms = np.array([[1.0, 1.0], [3.0, 1.5], [1.0, 4.0]])
    probs = np.array([0.5, 0.3, 0.2])
    m = np.stack([atoms[:, 0] * Sigma[0, 0], np.sqrt(atoms.prod(1)) * Sigma[0, 1],
                  np.sqrt(atoms.prod(1)) * Sigma[1, 0], atoms[:, 1] * Sigma[1, 1]], axis=1)
    d = m - probs @ m
    exact = np.einsum("k,ka,kb,kc->abc", probs, d, d, d).reshape((2,) * 6)
    rng = np.random.default_rng(2)
    S, n = 200_000, 5
    pick = rng.choice(3, size=S, p=probs)
    eps = rng.normal(size=(S, n, 2)) @ np.linalg.cholesky(Sigma).T
    z = eps * np.sqrt(atoms[pick])[:, None, :]
    val, err = _estimate(z)
    assert np.all(np.abs(val - exact) < 4 * err), np.max(np.abs(val - exact) / err)
    # the components told apart (a misplaced index of E[p] E[g] would break (11)(22)(11))
    assert abs(exact[0, 0, 1, 1, 0, 0] - exact[0, 0, 0, 0, 1, 1]) < 1e-12
    assert np.abs(exact).max() > 20 * np.abs(err).max()


def test_three_neuron_of_a_network_layer_one_is_zero_and_bad_input():
    # layer 1 of an MLP: z = b + W x, neurons independent Gaussians → U-estimate 0
    res = three_neuron(derive.MLP(2, 6, "tanh", 0.0, 1.0), X1, 20_000, seed=4)
    assert abs(res.U[1][(0,) * 6]) < 4 * res.U_err[1][(0,) * 6]
    assert res.U_err[2][(0,) * 6] > 0
    with pytest.raises(derive.DeriveError, match="≥ 3 neurons"):
        three_neuron(derive.MLP(2, 2, "tanh", 0.0, 1.0), X1, 1000)


def test_check_order_two_bad_input():
    with pytest.raises(CheckError, match="order must be 0, 1 or 2"):
        derive.check(derive.MLP(3, 4, "tanh", 0.0, 1.0), X1, widths=(4, 8), samples=400,
                     order=3)
    with pytest.raises(CheckError, match="width must be ≥ 3"):
        derive.check(derive.MLP(3, 4, "tanh", 0.0, 1.0), X1, widths=(2, 8), samples=400,
                     order=2)
    with pytest.raises(CheckError, match="skip connections.*order=0"):
        derive.check(derive.ResMLP(3, 8, "tanh", 0.05, 1.0, xi=1.0, gamma=0.5), X1,
                     widths=(4, 8), samples=400, order=2)


def test_check_order_one_has_the_new_columns_as_nan(tmp_path):
    res = derive.check(derive.MLP(3, 4, "erf", 0.1, 0.9), X1, widths=(4, 8), samples=400,
                       order=1)
    assert res.order == 1 and not _rows(res, "U")
    assert all(np.isnan(r["nnlo"]) for r in res.rows)
    assert all(np.isnan(r["nlo"]) for r in _rows(res, "V"))
    new = ("curvature_nnlo", "z_curvature", "slope_at_lo", "slope_at_lo_err", "z_slope_at_lo")
    assert all(np.isnan(f[k]) for f in res.fits for k in new)
    assert "1/n² curvature" not in res.table() and "1/n slope at LO" not in res._repr_html_()
    res.to_csv(tmp_path / "c.csv")
    with open(tmp_path / "c.csv") as fh:
        head = next(csv.reader(fh))
    # the older columns first and in their order; the new one appended
    assert head == ["quantity", "component", "layer", "width", "mc_mean", "mc_stderr", "lo",
                    "nlo", "note", "nnlo"]
    with open(tmp_path / "c_fits.csv") as fh:
        head = next(csv.reader(fh))
    assert head[:17] == ["quantity", "component", "layer", "widths", "intercept", "intercept_err",
                         "lo", "z_lo", "slope", "slope_err", "slope_nlo", "z_slope",
                         "slope_agrees", "curvature", "curvature_err", "chi2_dof", "note"]
    assert head[17:] == list(new)


@pytest.mark.slow
def test_check_order_two_tanh_against_G2_V1_U(tmp_path):
    """tanh, C_b 0, C_W 1.2, depth 4, one input, widths 6, 8, 12 (250 000 networks each):
    V's 1/n slope against V1 (free, and with the intercept held at V), n²κ3 against U and the
    metric's curvature against G2, all within Z_MAX standard errors; the predictions
    themselves are those of derive.predict at order 2, tested against exact cumulants in
    tests/test_nnlo_recursions.py."""
    spec = derive.MLP(4, 8, "tanh", 0.0, 1.2)
    res = derive.check(spec, X1, widths=(6, 8, 12), samples=250_000, seed=5, order=2,
                       progress=False)
    assert res.order == 2
    p = derive.predict(spec.with_widths(8), X1, order=2)
    for r in _rows(res, "metric", "11"):
        l, n = r["layer"], r["width"]
        assert r["nlo"] == pytest.approx(p.K[l][0, 0] + p.G1[l][0, 0] / (n if l > 1 else 2))
        assert np.isfinite(r["nnlo"]) and (r["nnlo"] != r["nlo"] or l <= 2)   # G2 = 0 at ℓ ≤ 2
    for r in _rows(res, "V", "(11)(11)"):
        assert np.isfinite(r["nlo"]) and "V's O(1/n²) term is not derived" in r["note"]
    us = _rows(res, "U", "(11)(11)(11)")
    assert {r["layer"] for r in us} == {1, 2, 3, 4} and all(np.isnan(r["nlo"]) for r in us)
    fits = {(f["quantity"], f["layer"]): f for f in res.fits}
    for l in (2, 3, 4):
        V = fits[("V", l)]
        assert V["slope_nlo"] == pytest.approx(p.V1[l][0, 0, 0, 0], rel=1e-9)
        assert abs(V["z_slope"]) < Z_MAX and abs(V["z_slope_at_lo"]) < Z_MAX, V
        assert abs(V["z_lo"]) < Z_MAX, V
        U = fits[("U", l)]
        assert U["lo"] == pytest.approx(p.U[l][(0,) * 6], rel=1e-9)
        assert abs(U["z_lo"]) < Z_MAX and np.isnan(U["slope_nlo"]), U
        # U is resolved from layer 3 on: its estimate at width 12 is many errors from 0
        r12 = next(r for r in us if r["layer"] == l and r["width"] == 12)
        assert l < 3 or abs(r12["mc_mean"]) > 5 * r12["mc_stderr"], r12
        M = fits[("metric", l)]
        assert M["curvature_nnlo"] == pytest.approx(p.G2[l][0, 0], rel=1e-6)
        assert abs(M["z_curvature"]) < Z_MAX, M
    table = res.table()
    assert "1/n² curvature" in table and "U's own 1/n correction is not derived" in table
    assert "1/n slope at LO" in table and "1/n slope at LO" in res._repr_html_()
    res.plot(tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_check_order_two_relu_two_inputs():
    """ReLU (derivative-free forms: Hermite weights in two variables up to the eighth) on a
    pair of inputs, where no exact chain exists: n²κ3 against every orbit of U and V's 1/n
    slope (intercept held at V) against V1, within Z_MAX standard errors."""
    X2 = np.array([[1.0, 0.5], [-0.3, 1.1]])
    spec = derive.MLP(3, 8, "relu", 0.0, 2.0)
    res = derive.check(spec, X2, widths=(6, 8, 12), samples=100_000, seed=11, order=2,
                       progress=False)
    fits = [f for f in res.fits if f["layer"] == 3]
    us = [f for f in fits if f["quantity"] == "U"]
    assert len(us) == 10  # U's orbits on two samples
    assert all(abs(f["z_lo"]) < Z_MAX for f in us), [(f["component"], f["z_lo"]) for f in us]
    assert max(abs(f["lo"]) / f["intercept_err"] for f in us) > 5  # resolved
    vs = [f for f in fits if f["quantity"] == "V"]
    assert vs and all(abs(f["z_slope_at_lo"]) < Z_MAX for f in vs), \
        [(f["component"], f["z_slope_at_lo"]) for f in vs]


@pytest.mark.slow
def test_cli_check_order_two(tmp_path, capsys):
    spec_file = tmp_path / "s.toml"
    spec_file.write_text('activation = "tanh"\ndepth = 3\nwidths = 4\nC_W = 1.0\n'
                         'inputs = [[1.0, 0.5]]\n')
    assert main(["check", str(spec_file), "--order", "2", "--widths", "4,6,8", "--samples",
                 "2000", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "1/n² curvature" in out and "(11)(11)(11)" in out
    with open(tmp_path / "o" / "check.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["quantity"] for r in rows} == {"metric", "V", "U"}
    assert main(["check", str(spec_file), "--order", "2", "--widths", "2,8", "--samples", "400",
                 "--out", str(tmp_path / "r")]) == 2
    assert "width must be ≥ 3" in capsys.readouterr().err


def test_cli_check_help_states_the_order_two_settings(capsys):
    from derive.reality.check import DEFAULT_WIDTHS_NNLO, PRECISE_SAMPLES_NNLO

    with pytest.raises(SystemExit) as info:
        main(["check", "--help"])
    assert info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"with --order 2, {PRECISE_SAMPLES_NNLO} networks per width" in out
    assert "default " + ",".join(map(str, DEFAULT_WIDTHS_NNLO)) in out
    assert "--order {0,1,2}" in out
