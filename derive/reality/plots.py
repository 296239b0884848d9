r"""The plots of derive, in one style: the prediction plot (``plot.png`` of ``derive demo`` and
``derive derive``, :func:`prediction_figure`) and the Monte Carlo check plot (``derive check``,
:meth:`derive.Check.plot`, :func:`check_figure`).

Both take plain objects (a :class:`~derive.Prediction`, a :class:`~derive.Check`) and return
the matplotlib Figure, so that tests can inspect its axes; :func:`save` writes it.  matplotlib
is optional: it is imported inside the functions (``pip install 'derive[plot]'``).

Conventions (docs/conventions.md):

* samples are numbered from 1, α = 1 … N, and labelled ``$\alpha=1$``; components are written
  with the same indices, ``11``, ``12``, ``(11)(11)`` (as in check.csv and the check table);
* every quantity is normalised by the fan-in n_{ℓ−1} of its layer (:meth:`Prediction.fan_in`),
  so that layers of unequal widths are comparable: V/(n_{ℓ−1} K²), G1/(n_{ℓ−1} K);
* reference curves are drawn only where derive knows that they apply (:func:`reference`): at
  criticality (:func:`derive.criticality`) of an MLP or a residual MLP,

  - K*=0 class: K^{(ℓ)} ≈ 1/(−a1 ℓ) (tanh: 1/(2ℓ)) on log–log axes, and
    V/(n_{ℓ−1} K²) ≈ (2/3) Σ_{k<ℓ} 1/n_k (asymptotically (2/3) ℓ/n at equal widths);
  - scale-invariant class: K constant and V/(n_{ℓ−1} K²) = ν Σ_{k<ℓ} 1/n_k exactly, with
    ν = C_W² (⟨σ⁴⟩ − ⟨σ²⟩²)/K² (ReLU at C_W = 2: ν = 5);
  - K*>0 class: K → K* (the fixed point);

  away from criticality, or for an architecture without such a result, none;
* a quantity that is not derived (V and G1 of a residual network with a skip term,
  docs/conventions.md §8) or not requested gets a panel that says so, never an empty one.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["reference", "Reference", "prediction_figure", "check_figure", "save", "sample_label",
           "component_label", "widths_text", "STYLE", "style"]

#: the shared matplotlib style (rcParams)
STYLE = {"figure.dpi": 110, "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9,
         "legend.fontsize": 7, "legend.frameon": False, "axes.grid": True, "grid.alpha": 0.3,
         "lines.markersize": 4, "axes.spines.top": False, "axes.spines.right": False}


def style() -> None:
    """Apply the shared style (:data:`STYLE`) to matplotlib's rcParams — for notebooks and
    scripts that draw their own figures: call once after importing matplotlib.  (The figures
    of this module apply it themselves, inside ``plt.rc_context``.)"""
    import matplotlib

    matplotlib.rcParams.update(STYLE)


#: ν of the K*=0 class: V/(n K²) ≈ ν ℓ/n at large depth (PDLT ch. 5)
NU_K0 = 2.0 / 3.0


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# -- labels ------------------------------------------------------------------------------------


def sample_label(a: int) -> str:
    r"""The label of sample ``a`` (0-based index): ``$\alpha=1$`` for a = 0."""
    return rf"$\alpha={a + 1}$"


def component_label(*idx: int) -> str:
    """A component written with 1-based sample indices: (0, 1) → ``12``, (0, 0, 0, 0) →
    ``(11)(11)``, six indices → ``(11)(11)(11)``."""
    s = [str(i + 1) for i in idx]
    if len(s) == 2:
        return "".join(s)
    return "".join(f"({s[k]}{s[k + 1]})" for k in range(0, len(s), 2))


def widths_text(widths) -> str:
    """``widths 64, 64, 128`` — every hidden width; equal ones as ``widths 64 (all 9 hidden
    layers)``."""
    ws = [int(w) for w in widths]
    if not ws:
        return "no hidden layer"
    if len(set(ws)) == 1 and len(ws) > 1:
        return f"widths {ws[0]} (all {len(ws)} hidden layers)"
    return "widths " + ", ".join(map(str, ws))


def _arch(spec) -> str:
    return type(spec).__name__


# -- reference curves --------------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """What derive knows about a critical spec's depth dependence (see the module docstring)."""

    universality_class: str
    criticality: object
    #: K^{(ℓ)} ≈ 1/(−a1 ℓ) (K*=0 class), else None
    a1: float | None
    #: V/(n_{ℓ−1} K²) ≈ ν Σ_{k<ℓ} 1/n_k, else None
    nu: float | None
    #: the fixed point K* (K*>0 class), else None
    K_star: float | None

    def K(self, layers) -> np.ndarray | None:
        if self.a1 is None:
            return None
        return 1.0 / (-self.a1 * np.asarray(layers, dtype=float))

    def V(self, layers, fan_ins) -> np.ndarray | None:
        """ν Σ_{k<ℓ} 1/n_k with n_k = fan_ins[k] (fan_ins[ℓ−1] = n_{ℓ−1}; layer 1 has none)."""
        if self.nu is None:
            return None
        inv = [0.0] + [1.0 / n for n in fan_ins[1:]]
        cum = np.cumsum(inv)
        return self.nu * np.array([cum[l - 1] for l in layers])

    def V_label(self, equal_width: int | None) -> str:
        nu = r"\frac{2}{3}" if self.universality_class == "K*=0" else f"{self.nu:.4g}"
        if equal_width:
            return rf"${nu}\,(\ell-1)/n$" + (" (asymptotic)" if self.universality_class == "K*=0"
                                             else "")
        return rf"${nu}\,\sum_{{k<\ell}} 1/n_k$" + (" (asymptotic)"
                                                    if self.universality_class == "K*=0" else "")


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))


def reference(spec) -> Reference | None:
    """The asymptotic depth dependence derive knows for ``spec``, or None: only for an MLP or
    a residual MLP (uniform ξ, γ) whose layers 2 … L are at the critical (C_b, C_W) of its
    activation (layer 1 only sets the initial kernel)."""
    from ..activations.criticality import criticality
    from ..architectures.mlp import MLP
    from ..architectures.residual import ResMLP
    from ..base.errors import DeriveError

    if spec.depth < 2:
        return None
    layers = range(2, spec.depth + 1)
    try:
        if type(spec) is MLP:
            crit = criticality(spec.activation)
        elif type(spec) is ResMLP:
            xis, gammas = set(spec.xi_), set(spec.gamma_)
            if len(xis) != 1 or len(gammas) != 1:
                return None
            crit = criticality(spec.activation, xi=xis.pop(), gamma=gammas.pop())
        else:
            return None
    except DeriveError:
        return None
    if not all(_close(spec.C_b(l), crit.C_b) and _close(spec.C_W(l), crit.C_W) for l in layers):
        return None
    cls = crit.universality_class
    residual = type(spec) is ResMLP
    if cls == "K*=0":
        return Reference(cls, crit, float(crit.a1), None if residual else NU_K0, None)
    if cls == "scale-invariant":
        nu = None if residual else _nu_scale_invariant(spec.activation, crit.C_W)
        return Reference(cls, crit, None, nu, None)
    if cls == "K*>0" and crit.K_star is not None:
        return Reference(cls, crit, None, None, float(crit.K_star))
    return None


def _nu_scale_invariant(act, C_W: float) -> float:
    """ν = C_W² (⟨σ⁴⟩ − ⟨σ²⟩²)/K² (the same at every K for a scale-invariant σ; at K = 1)."""
    import sympy as sp

    from ..activations.catalogue import z
    from ..activations.gaussian import gaussian_expectation

    f = act.expr.xreplace({z: sp.Symbol("z1")})
    K = np.ones((1, 1))
    s4 = float(gaussian_expectation(f ** 4, K))
    s2 = float(gaussian_expectation(f ** 2, K))
    return C_W ** 2 * (s4 - s2 ** 2)


# -- axes helpers --------------------------------------------------------------------------------


def _say(ax, text: str) -> None:
    """A panel that holds a sentence instead of data."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", wrap=True,
            fontsize=8, color="0.3")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


def _auto_yscale(ax, values) -> None:
    """Log y where positive data span more than two decades (exponential growth or decay
    away from criticality), linear otherwise."""
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    if v.size and np.all(v > 0) and v.max() / v.min() > 100:
        ax.set_yscale("log")


def _title(spec, what: str, widths: str | None = None) -> str:
    ref = reference(spec)
    crit = f"at criticality ({ref.universality_class} class)" if ref else "not at criticality"
    return f"{what}: {spec.activation.name} {_arch(spec)}, depth {spec.depth}, " \
           f"{widths or widths_text(spec.widths)} — {crit}"


# -- the prediction plot ---------------------------------------------------------------------


def prediction_figure(p):
    """The figure of a :class:`~derive.Prediction` ``p``: four panels against the layer ℓ —
    K^{(ℓ)} (log–log with 1/(−a1 ℓ) at K*=0 criticality), V/(n_{ℓ−1} K²), G1/(n_{ℓ−1} K) and
    Θ^{(ℓ)}, diagonal components per sample α (K and Θ also off-diagonal ones), with the
    reference curves of :func:`reference`; a quantity not derived or not requested says so."""
    plt = _plt()
    spec = p.spec
    L = spec.depth
    ls = np.arange(1, L + 1)
    N = p.X.shape[0]
    fan = [p.fan_in(l) for l in ls]
    ref = reference(spec)
    equal = spec.widths[0] if spec.widths and len(set(spec.widths)) == 1 else None
    skip = spec.max_order < 1
    why = spec.nlo_reason + ("\n(docs/conventions.md §8)" if skip else "")
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
        axK, axV, axG, axT = axes.ravel()

        # K: diagonal per sample; off-diagonal as |K| when it changes sign or is negative
        kvals = []
        for a in range(N):
            y = np.array([p.K[l][a, a] for l in ls])
            kvals += list(y)
            axK.plot(ls, y, "o-", label=rf"$K^{{(\ell)}}_{{{component_label(a, a)}}}$, "
                                        + sample_label(a))
        for a in range(N):
            for b in range(a + 1, N):
                y = np.array([p.K[l][a, b] for l in ls])
                neg = np.any(y <= 0)
                axK.plot(ls, np.abs(y) if neg else y, "s--", ms=3, lw=1,
                         label=(rf"$|K^{{(\ell)}}_{{{component_label(a, b)}}}|$" if neg
                                else rf"$K^{{(\ell)}}_{{{component_label(a, b)}}}$"))
        if ref is not None and ref.a1 is not None:
            axK.set_xscale("log")
            axK.set_yscale("log")
            xx = np.geomspace(1, L, 100)
            lab = (r"$1/(2\ell)$" if _close(ref.a1, -2.0) else rf"$1/({-ref.a1:.4g}\,\ell)$")
            axK.plot(xx, ref.K(xx), "k:", lw=1.5, label=lab + r" ($K^*=0$ class, asymptotic)")
        elif ref is not None and ref.K_star is not None:
            axK.axhline(ref.K_star, color="k", ls=":", lw=1.5, label=rf"$K^*={ref.K_star:.4g}$")
        else:
            _auto_yscale(axK, kvals)
        axK.set_ylabel(r"$K^{(\ell)}$")
        axK.set_title(r"kernel $K^{(\ell)}$" + (" (log–log: power law at criticality)"
                                                if axK.get_xscale() == "log" else ""))

        # V/(n_{ℓ−1} K²)
        if not p.V:
            _say(axV, r"$V^{(\ell)}$: " + (why if skip else "not requested (targets)"))
        else:
            vv = []
            for a in range(N):
                y = np.array([p.V[l][a, a, a, a] / (p.fan_in(l) * p.K[l][a, a] ** 2) for l in ls])
                vv += list(y)
                axV.plot(ls, y, "o-", label=rf"$V_{{{component_label(a, a, a, a)}}}/"
                                            rf"(n_{{\ell-1}}K_{{{component_label(a, a)}}}^2)$, "
                                            + sample_label(a))
            r = ref.V(ls, fan) if ref is not None else None
            if r is not None:
                axV.plot(ls, r, "k:", lw=1.5, label=ref.V_label(equal))
            else:
                _auto_yscale(axV, vv)
            axV.set_ylabel(r"$V^{(\ell)}/(n_{\ell-1}K^2)$")
        axV.set_title(r"four-point vertex $V^{(\ell)}/(n_{\ell-1}K^{(\ell)2})$")

        # G1/(n_{ℓ−1} K)
        if not p.G1:
            _say(axG, r"$G^{\{1\}(\ell)}$: " + (why if skip else "not requested (targets)"))
        else:
            for a in range(N):
                y = np.array([p.G1[l][a, a] / (p.fan_in(l) * p.K[l][a, a]) for l in ls])
                axG.plot(ls, y, "o-", label=rf"$G^{{\{{1\}}}}_{{{component_label(a, a)}}}/"
                                            rf"(n_{{\ell-1}}K_{{{component_label(a, a)}}})$, "
                                            + sample_label(a))
            axG.axhline(0, color="k", lw=0.6)
            axG.set_ylabel(r"$G^{\{1\}(\ell)}/(n_{\ell-1}K^{(\ell)})$")
        axG.set_title(r"relative metric correction $G^{\{1\}(\ell)}/(n_{\ell-1}K^{(\ell)})$")

        # Θ
        if not p.Theta:
            _say(axT, r"$\Theta^{(\ell)}$: not requested (targets)")
        else:
            tv = []
            pairs = [(a, a) for a in range(N)] + [(a, b) for a in range(N)
                                                  for b in range(a + 1, N)]
            for a, b in pairs:
                y = np.array([p.Theta[l][a, b] for l in ls])
                tv += list(y)
                lab = rf"$\Theta^{{(\ell)}}_{{{component_label(a, b)}}}$"
                axT.plot(ls, y, "o-" if a == b else "s--", ms=4 if a == b else 3,
                         label=lab + (", " + sample_label(a) if a == b else ""))
            _auto_yscale(axT, tv)
            axT.set_ylabel(r"$\Theta^{(\ell)}$")
        axT.set_title(r"NTK mean $\Theta^{(\ell)}$ (leading order)")

        for ax in axes.ravel():
            if ax.has_data():
                ax.set_xlabel(r"layer $\ell$")
                ax.legend()
        fig.suptitle(_title(spec, "derive"), fontsize=9)
        fig.tight_layout()
    return fig


# -- the check plot ------------------------------------------------------------------------------


def check_figure(res):
    """The figure of a :class:`~derive.Check` ``res``: the metric G_{11} and n × the connected
    four-point function (11)(11) of sample α = 1 against ℓ, Monte Carlo per width with LO (and
    NLO) curves (log–log for the metric at K*=0 criticality, with 1/(−a1 ℓ)); and the residual
    (MC − LO)/|LO| against 1/n at the last layer with the fit and the NLO slope (also of the
    NTK mean, whose NLO slope is H1, when the check compared the NTK).  At order 2 the
    dashed curves are the metric's NNLO K + G1/n + G2/n² and V + V1/n, and a fourth panel shows
    n² × the three-neuron cumulant (11)(11)(11) per width against its leading order U."""
    plt = _plt()
    spec = res.spec
    L = spec.depth
    ref = reference(spec)
    c2, c4 = component_label(0, 0), component_label(0, 0, 0, 0)
    c6 = component_label(*(0,) * 6)
    has_u = any(r["quantity"] == "U" for r in res.rows)
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 4 if has_u else 3, figsize=(20 if has_u else 15, 4.8))
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        panels = (("metric", c2), ("V", c4)) + ((("U", c6),) if has_u else ())
        for ax, (q, comp) in zip([a for k, a in enumerate(axes) if k != 2], panels):
            rows = [r for r in res.rows if r["quantity"] == q and r["component"] == comp]
            note = next((r.get("note", "") for r in rows), "")
            for k, n in enumerate(res.widths):
                rs = sorted((r for r in rows if r["width"] == n), key=lambda r: r["layer"])
                if not rs:
                    continue
                x = [r["layer"] for r in rs]
                ax.errorbar(x, [r["mc_mean"] for r in rs], yerr=[r["mc_stderr"] for r in rs],
                            fmt="o", capsize=2, color=colors[k % len(colors)],
                            label=f"Monte Carlo $n={n}$")
                nn = [r.get("nnlo", np.nan) for r in rs]
                if q == "metric" and all(np.isfinite(nn)):
                    ax.plot(x, nn, "--", color=colors[k % len(colors)], lw=1,
                            label=rf"NNLO $K+G^{{\{{1\}}}}/n+G^{{\{{2\}}}}/n^2$, $n={n}$")
                elif all(np.isfinite(r["nlo"]) for r in rs):
                    lab = (r"NLO $K+G^{\{1\}}/n$" if q == "metric"
                           else r"NLO $V+V^{\{1\}}/n$")
                    ax.plot(x, [r["nlo"] for r in rs], "--", color=colors[k % len(colors)], lw=1,
                            label=lab + rf", $n={n}$")
            lo = sorted({(r["layer"], r["lo"]) for r in rows if np.isfinite(r["lo"])})
            if lo:
                ax.plot([x for x, _ in lo], [y for _, y in lo], "k-", lw=1.5,
                        label={"metric": rf"leading order $K_{{{c2}}}$", "V": rf"$V_{{{c4}}}$",
                               "U": rf"leading order $U_{{{c6}}}$"}[q])
            if q == "metric" and ref is not None and ref.a1 is not None:
                ax.set_xscale("log")
                ax.set_yscale("log")
                xx = np.geomspace(1, L, 100)
                lab = r"$1/(2\ell)$" if _close(ref.a1, -2.0) else rf"$1/({-ref.a1:.4g}\,\ell)$"
                ax.plot(xx, ref.K(xx), "k:", lw=1.5, label=lab + r" ($K^*=0$ class, asymptotic)")
            if note and res.order < 1:
                ax.text(0.02, 0.98, note, transform=ax.transAxes, va="top", fontsize=7,
                        color="0.3", wrap=True)
            ax.set_xlabel(r"layer $\ell$")
            if note and q == "U":
                ax.text(0.02, 0.02, note, transform=ax.transAxes, va="bottom", fontsize=7,
                        color="0.3", wrap=True)
            if q == "metric":
                ax.set_title(rf"metric $G^{{(\ell)}}_{{{c2}}}=\mathbb{{E}}[z_{{i;1}}z_{{i;1}}]$, "
                             + sample_label(0))
            elif q == "U":
                ax.set_title(rf"$n_{{\ell-1}}^2\times\kappa_3(z_i^2, z_j^2, z_k^2)$, "
                             rf"$i,j,k$ distinct, vs $U^{{(\ell)}}_{{{c6}}}$")
            else:
                ax.set_title(rf"$n_{{\ell-1}}\times$ connected 4-pt $({c4[1:3]})({c4[5:7]})$"
                             + (rf" vs $V^{{(\ell)}}_{{{c4}}}$" if res.order >= 1
                                else ", measured only"))
            ax.legend()
        ax = axes[2]
        names = {"metric": rf"$G_{{{c2}}}$", "V": rf"$V_{{{c4}}}$",
                 "ntk": rf"NTK mean $\mathbb{{E}}\widehat{{H}}_{{{c2}}}$"}
        for k, (q, comp) in enumerate((("metric", c2), ("V", c4), ("ntk", c2))):
            rs = sorted((r for r in res.rows if r["quantity"] == q and r["component"] == comp
                         and r["layer"] == L), key=lambda r: r["width"])
            if not rs or not np.isfinite(rs[0]["lo"]):
                continue  # (the NTK rows exist with check(..., ntk=True) only)
            x = np.array([1 / r["width"] for r in rs])
            scale = abs(rs[0]["lo"]) or 1.0
            name = names[q]
            ax.errorbar(x, [(r["mc_mean"] - r["lo"]) / scale for r in rs],
                        yerr=[r["mc_stderr"] / scale for r in rs], fmt="o", capsize=2,
                        color=colors[k], label=rf"{name}, $\ell={L}$: (MC − LO)/|LO|")
            fit = next((f for f in res.fits if f["quantity"] == q and f["component"] == comp
                        and f["layer"] == L), None)
            if fit is not None:
                xx = np.linspace(0, x.max() * 1.1, 50)
                yy = fit["intercept"] + fit["slope"] * xx + (0 if np.isnan(fit["curvature"])
                                                           else fit["curvature"] * xx ** 2)
                ax.plot(xx, (yy - fit["lo"]) / scale, "-", color=colors[k], lw=1, label="fit")
                if np.isfinite(fit["slope_nlo"]):
                    ax.plot(xx, fit["slope_nlo"] * xx / scale, ":", color=colors[k], lw=1.5,
                            label="NLO slope" + (r" ($V^{\{1\}}$)" if q == "V" and res.order >= 2
                                                 else ""))
                if np.isfinite(fit.get("curvature_nnlo", np.nan)):
                    ax.plot(xx, (fit["slope_nlo"] * xx + fit["curvature_nnlo"] * xx ** 2) / scale,
                            "-.", color=colors[k], lw=1, label=r"NNLO ($G^{\{1\}}$, $G^{\{2\}}$)")
        ax.axhline(0, color="k", lw=0.8)
        if res.order < 1:
            ax.text(0.02, 0.02, f"no NLO slope: {spec.nlo_reason}", transform=ax.transAxes,
                    va="bottom", fontsize=7, color="0.3")
        ax.set_xlabel(r"$1/n$")
        ax.set_title(rf"residual vs $1/n$ (last layer, $\ell={L}$)")
        ax.legend()
        ws = ", ".join(str(n) for n in res.widths)
        fig.suptitle(_title(spec, "derive check", f"every hidden layer of width n = {ws}")
                     + f"; {res.samples} networks per width",
                     fontsize=9)
        fig.tight_layout()
    return fig


def save(fig, path, metadata=None) -> None:
    """Write ``fig`` as PNG to ``path`` (``metadata``: PNG text fields) and close it."""
    plt = _plt()
    with plt.rc_context(STYLE):
        fig.savefig(path, dpi=STYLE["figure.dpi"], metadata=metadata)
    plt.close(fig)
