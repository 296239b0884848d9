"""The plots (derive.reality.plots): their data and labels, not their pixels — axes scales,
mathtext labels, reference curves exactly where the spec is critical, titles naming the actual
widths, G1 plotted, 1-based sample labels, and a residual network's panels saying that V and
G1 are not derived."""
from __future__ import annotations

import numpy as np
import pytest

import derive
from derive.reality import plots

pytest.importorskip("matplotlib")

X = np.array([[1.0, 0.5, -0.3], [0.2, -1.0, 0.4]])


def _predict(spec, **kw):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return derive.predict(spec, X, **kw)


def _labels(ax):
    return [line.get_label() for line in ax.get_lines()]


def _texts(fig):
    return " ".join(t.get_text() for ax in fig.axes for t in ax.texts)


@pytest.fixture(scope="module")
def demo():
    from derive.cli.specfile import DEMO, spec_from_mapping

    spec, X_demo, targets, order = spec_from_mapping(DEMO, "the demo spec")
    p = derive.predict(spec, X_demo, order=order, targets=targets)
    fig = plots.prediction_figure(p)
    yield p, fig
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_demo_plot_kernel_log_log_with_the_power_law(demo):
    p, fig = demo
    axK, axV, axG, axT = fig.axes[:4]
    assert axK.get_xscale() == "log" and axK.get_yscale() == "log"
    assert r"$K^{(\ell)}$" in axK.get_ylabel()
    ref = [ln for ln in axK.get_lines() if "1/(2\\ell)" in ln.get_label()]
    assert len(ref) == 1
    x, y = ref[0].get_data()
    assert np.allclose(y, 1 / (2 * np.asarray(x)))
    # at depth 10 the kernel is within 10 % of the asymptote
    assert p.K[10][0, 0] == pytest.approx(1 / 20, rel=0.1)


def test_demo_plot_V_normalised_with_reference_and_G1_plotted(demo):
    p, fig = demo
    axK, axV, axG, axT = fig.axes[:4]
    assert r"$V^{(\ell)}/(n_{\ell-1}K^2)$" in axV.get_ylabel()
    assert axV.get_xscale() == "linear"
    refs = [ln for ln in axV.get_lines() if "asymptotic" in ln.get_label()]
    assert len(refs) == 1 and r"\frac{2}{3}" in refs[0].get_label()
    line = next(ln for ln in axV.get_lines() if r"\alpha=1" in ln.get_label())
    l, y = line.get_data()
    assert y[-1] == pytest.approx(p.V[10][0, 0, 0, 0] / (64 * p.K[10][0, 0] ** 2))
    # G1/(n K) is plotted, per sample
    g = [ln for ln in axG.get_lines() if "G^{\\{1\\}}" in ln.get_label()]
    assert len(g) == 2
    assert g[0].get_data()[1][-1] == pytest.approx(p.G1[10][0, 0] / (64 * p.K[10][0, 0]))
    assert r"\Theta^{(\ell)}" in axT.get_ylabel()


def test_demo_plot_title_and_one_based_labels(demo):
    p, fig = demo
    title = fig._suptitle.get_text()
    assert "widths 64 (all 9 hidden layers)" in title and "tanh" in title
    labels = " ".join(lab for ax in fig.axes[:4] for lab in _labels(ax))
    assert r"\alpha=1" in labels and r"\alpha=2" in labels
    assert r"\alpha=0" not in labels and "K^{(\\ell)}_{11}" in labels
    assert "(11)(11)" in labels and "(00)" not in labels
    assert "Theta[" not in labels and "K^2" not in labels  # no raw-text labels


def test_unequal_widths_title_and_per_layer_fan_in():
    spec = derive.MLP(6, [64, 64, 128, 128, 64], "relu", C_b=0.0, C_W=2.0)
    p = _predict(spec)
    fig = plots.prediction_figure(p)
    assert "widths 64, 64, 128, 128, 64" in fig._suptitle.get_text()
    axK, axV = fig.axes[:2]
    assert axK.get_xscale() == "linear"  # scale-invariant: K is constant, no power law
    ref = next(ln for ln in axV.get_lines() if r"\sum_{k<\ell}" in ln.get_label())
    data = next(ln for ln in axV.get_lines() if r"\alpha=1" in ln.get_label())
    # ReLU at C_W = 2: V/(n_{ℓ−1} K²) = 5 Σ_{k<ℓ} 1/n_k exactly, continuous across widths
    assert np.allclose(ref.get_data()[1], data.get_data()[1], rtol=1e-9, atol=1e-12)
    assert ref.get_data()[1][-1] == pytest.approx(5 * (2 / 64 + 2 / 128 + 1 / 64))


def test_reference_only_at_criticality():
    assert plots.reference(derive.MLP(5, 32, "tanh", 0.0, 1.0)).a1 == pytest.approx(-2.0)
    assert plots.reference(derive.MLP(5, 32, "relu", 0.0, 2.0)).nu == pytest.approx(5.0)
    assert plots.reference(derive.MLP(5, 32, "tanh", 0.0, 1.5)) is None
    assert plots.reference(derive.MLP(5, 32, "relu", 0.1, 2.0)) is None
    assert plots.reference(derive.MLP(5, 32, "linear", 0.0, 1.0)).nu == pytest.approx(2.0)
    p = _predict(derive.MLP(6, 32, "tanh", 0.0, 1.5))
    fig = plots.prediction_figure(p)
    axK, axV = fig.axes[:2]
    assert axK.get_xscale() == "linear"
    assert not any("asymptotic" in lab or "\\ell)" in lab and lab.startswith("$1/")
                   for ax in (axK, axV) for lab in _labels(ax))
    assert "not at criticality" in fig._suptitle.get_text()


def test_residual_network_says_V_and_G1_are_not_derived():
    c = derive.criticality("tanh", xi=0.8, gamma=1.0)
    spec = derive.ResMLP(6, 32, "tanh", C_b=0.0, C_W=c.C_W, xi=0.8, gamma=1.0)
    p = _predict(spec, order=0)
    fig = plots.prediction_figure(p)
    axK, axV, axG, axT = fig.axes[:4]
    assert not axV.get_lines() and not axG.get_lines()
    texts = [t.get_text() for t in axV.texts + axG.texts]
    assert len(texts) == 2 and all("not derived for skip connections" in t for t in texts)
    assert "ResMLP" in fig._suptitle.get_text()
    # the kernel's power law is the residual one, 1/(−(1 − ξ²) a1 ℓ)
    assert axK.get_xscale() == "log"
    ref = next(ln for ln in axK.get_lines() if "K^*=0" in ln.get_label())
    x, y = ref.get_data()
    assert np.allclose(y, 1 / (2 * (1 - 0.64) * x))


def test_missing_targets_say_so():
    p = _predict(derive.MLP(4, 32, "tanh", 0.0, 1.0), targets=["K"], order=0)
    fig = plots.prediction_figure(p)
    assert "not requested" in _texts(fig)


def test_check_plot_labels(tmp_path):
    spec = derive.MLP(4, 8, "tanh", 0.0, 1.0)
    res = derive.check(spec, X[:1], widths=(4, 8), samples=400, seed=0)
    assert {r["component"] for r in res.rows if r["quantity"] == "metric"} == {"11"}
    fig = plots.check_figure(res)
    ax_m, ax_v, ax_r = fig.axes[:3]
    assert ax_m.get_xscale() == "log" and ax_m.get_yscale() == "log"
    assert any("1/(2\\ell)" in lab for lab in _labels(ax_m))
    assert "G^{(\\ell)}_{11}" in ax_m.get_title() and r"\alpha=1" in ax_m.get_title()
    assert "(11)(11)" in ax_v.get_title() and "{00}" not in ax_v.get_title()
    assert "every hidden layer of width n = 4, 8" in fig._suptitle.get_text()
    assert ax_r.get_xlabel() == "$1/n$"
    res.plot(tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_job_writes_the_plot(tmp_path):
    from derive.cli.jobs import _plot

    p = _predict(derive.MLP(4, 16, "tanh", 0.0, 1.0))
    assert _plot(p, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_labels():
    assert plots.sample_label(0) == r"$\alpha=1$"
    assert plots.component_label(0, 1) == "12"
    assert plots.component_label(0, 0, 1, 1) == "(11)(22)"
    assert plots.widths_text([64, 64, 128]) == "widths 64, 64, 128"
