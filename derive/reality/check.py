r"""``derive.check``: the derived predictions against ensembles of actual networks (docs/conventions.md §7).

``check(spec, X, widths, samples, seed=0)`` samples ``samples`` random networks of ``spec``
with every hidden width set to n, for each n in ``widths`` (:mod:`derive.reality.montecarlo`), and
compares per layer ℓ, quantity and component

* ``metric``: E[z_{i;α} z_{i;β}] with the leading order K and the NLO metric K + G1/n_{ℓ−1};
* ``V``: n_{ℓ−1} × the connected four-point function of two different neurons with the
  leading-order vertex V (its own 1/n correction is not derived: ``nlo`` is NaN);
* with ``ntk=True``, the NTK: ``ntk`` is its mean E[Ĥ_{ii;αβ}] against Θ and the NLO mean
  Θ + H1/n_{ℓ−1}; ``A``, ``B``, ``D``, ``F`` the cross-neuron estimators of the sampler
  (n_{ℓ−1} Cov(Ĥ_ii, Ĥ_jj), n_{ℓ−1} E[Ĥ_ij Ĥ_ij], n_{ℓ−1} Cov(Ĥ_ii, z_j z_j),
  n_{ℓ−1} E[Ĥ_ij z_i z_j], i ≠ j; docs/conventions.md §3) against their leading order (their own
  1/n corrections are not derived: ``nlo`` is NaN), one component per orbit of each one's
  index symmetry; B and F are labelled in the order of their names (B_{(ab)(cd)} is
  B_{abcd}).

* at order 2 (``order=2``: MLPs), also the O(1/n²) statistics of
  docs/conventions.md §10: the metric's ``nnlo`` K + G1/n + G2/n² (the fit's 1/n² curvature
  against G2), V's ``nlo`` V + V1/n (the 1/n slope of n·Cov against V1), and ``U``:
  n_{ℓ−1}² × the joint cumulant κ3(z_i z_i, z_j z_j, z_k z_k) of three different neurons
  against its leading order U (V1 and U for at most two inputs).  What stays unpredicted at
  order 2 — the metric's O(1/n³), V's O(1/n²), U's O(1/n) — is measured, never compared, and
  the notes say so.

The predictions go by default to the order of ``spec.max_order`` (1; ``order=`` chooses).
Where that is the leading order only (a residual network with a skip term, docs/conventions.md §8: its
O(1/n) statistics G1 and V are not derived), the metric's intercept is still compared with K,
but its slope has no NLO prediction and V none at all: ``lo``/``nlo``/``slope_nlo`` are NaN,
nothing is compared, and every row, fit, the table and the plot say so in words (``note``).
Nothing is ever substituted for a prediction that does not exist.

Across widths each (quantity, component, layer) is fitted by weighted least squares to
A + B/n (and A + B/n + C/n² when there are at least four widths), giving the n → ∞ intercept A
with its z-score against LO, and the slope B against the one the NLO term predicts
(G1 for the metric at equal widths, n_{ℓ−1} = n; nothing at layer 1, whose metric is exact).

The result (:class:`Check`) has ``.rows`` (one dict per layer, quantity, component and width),
``.fits`` (one dict per layer, quantity and component), ``.table()``, ``.to_csv(path)`` and
``.plot(path)``.  Bad input stops with :class:`CheckError` naming the cause; if an ensemble
fails part-way (NaN/inf: a diverging spec), the error carries the widths done so far as
``.partial`` (a :class:`Check`).
"""
from __future__ import annotations

import csv
import sys
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from ..architectures.mlp import MLP
from ..base.errors import DeriveError, boundary
from ..derivation.quantities import NTK_FOUR, quantity
from ..numeric.evaluate import orbits
from ..numeric.prediction import NNLO_MULTI_INPUTS as _NNLO_INPUTS
from ..numeric.prediction import ExpansionWarning, predict
from .montecarlo import BLOCKS, MonteCarloError, sample, three_neuron

__all__ = ["check", "Check", "CheckError", "DEFAULT_WIDTHS", "DEFAULT_SAMPLES", "PRECISE_SAMPLES",
           "DEFAULT_WIDTHS_NNLO", "PRECISE_SAMPLES_NNLO"]

DEFAULT_WIDTHS = (32, 64, 128)
#: the default widths of a check at order 2: small, so that the 1/n² terms are visible
DEFAULT_WIDTHS_NNLO = (4, 6, 8, 12, 16)
#: networks per width of the default run (the demo spec finishes in about a minute on 2 cores)
DEFAULT_SAMPLES = 20_000
#: networks per width of ``--precise``
PRECISE_SAMPLES = 200_000
#: networks per width of ``--precise`` at order 2, with :data:`DEFAULT_WIDTHS_NNLO`.  Measured
#: on the shared 2-core machine (numpy, float64, one input x = (1, 0.5), depth 4, widths 4, 6, 8,
#: 12, 16, seed 0; significance = |prediction| / its error at layer 4):
#:
#: * U (n²κ3 of three neurons, intercept of A + B/n): tanh at criticality (C_b 0, C_W 1,
#:   U = 0.0213) 6.7σ with 200 000 networks, 14σ with 1 000 000; 3σ needs ≈ 45 000;
#: * V's 1/n slope against V1, intercept held at V (``slope_at_lo``): tanh (V1 = −0.011)
#:   2.8σ with 200 000, 6.5σ with 1 000 000; 3σ needs ≈ 230 000 (erf at criticality, C_W = π/4:
#:   3.4σ with 200 000; tanh C_W 1.2: 2.3σ).  The free fit A + B/n + C/n² has ≈ 4× the error
#:   on B: 3σ would take ≈ 3 500 000; at layer 3 (|V1| ≈ 0.004) even the held fit needs ≈ 3e6;
#: * the metric's 1/n² curvature against G2: out of reach (tanh layer 4: G2 = 1.7e-4 against an
#:   error of 0.014 with 1 000 000, i.e. ≈ 10¹¹ networks for 3σ; tanh C_W 1.2 and erf, |G2| ≈
#:   0.003–0.01: ≈ 10⁸).
#:
#: 1 000 000 per width (tanh, depth 4: ≈ 6 min for the five widths) puts V1 at ≈ 6σ and U at
#: ≈ 14σ in layer 4; G2 is then reported (``curvature_nnlo``, ``z_curvature``) but not resolved.
PRECISE_SAMPLES_NNLO = 1_000_000
#: a z-score above this counts as disagreement
Z_MAX = 4.0

#: the columns of check.csv; ``nnlo`` (the metric K + G1/n + G2/n² at order 2, NaN otherwise)
#: was added after the others, so that readers of the older columns keep working
_ROW_KEYS = ("quantity", "component", "layer", "width", "mc_mean", "mc_stderr", "lo", "nlo",
             "note", "nnlo")
#: the columns of check_fits.csv; ``curvature_nnlo`` (G2, the metric's predicted 1/n²
#: coefficient, at order 2) and ``z_curvature`` ((curvature − G2)/its error) were added last
_FIT_KEYS = ("quantity", "component", "layer", "widths", "intercept", "intercept_err", "lo",
             "z_lo", "slope", "slope_err", "slope_nlo", "z_slope", "slope_agrees", "curvature",
             "curvature_err", "chi2_dof", "note", "curvature_nnlo", "z_curvature",
             "slope_at_lo", "slope_at_lo_err", "z_slope_at_lo")


class CheckError(DeriveError):
    """A check that cannot run or could not finish; ``partial`` holds what was done."""

    def __init__(self, message: str, partial: "Check | None" = None):
        super().__init__(message)
        self.partial = partial


def _components(N: int):
    """The metric's pairs (α ≤ β) and one V component per orbit of its pair symmetries."""
    pairs = [(a, b) for a in range(N) for b in range(a, N)]
    quads = [p + q for i, p in enumerate(pairs) for q in pairs[i:]]
    return pairs, quads




def _orbit_components(N: int, name: str) -> list[tuple]:
    """One component per orbit of the index symmetry of the rank-4 quantity ``name``."""
    return [tuple(int(x) for x in c) for c in orbits(N, quantity(name).symmetry, "full")]


def _label(c) -> str:
    """A component with 1-based sample indices (α = 1 … N): (0, 1) → "12", (0, 0, 0, 0) →
    "(11)(11)", six indices → "(11)(11)(11)" (the convention of every output,
    :mod:`derive.reality.plots`)."""
    s = [str(i + 1) for i in c]
    if len(s) == 2:
        return "".join(s)
    return "".join(f"({s[k]}{s[k + 1]})" for k in range(0, len(s), 2))


def _notes(spec: MLP, order: int, N: int = 1) -> dict:
    """The note of each quantity's rows and fits: what is not predicted, and why."""
    if order >= 2:
        own = {q: f"no NLO prediction: {q}'s own 1/n correction is not derived"
               for q in NTK_FOUR}
        few = N <= _NNLO_INPUTS
        return {"metric": "1/n² curvature vs G2; O(1/n³) not derived",
                "ntk": "NTK mean to O(1/n) only (its 1/n² term is not derived)",
                "V": ("1/n slope vs V1; V's O(1/n²) term is not derived" if few else
                      f"no NLO prediction: V1 is evaluated for at most {_NNLO_INPUTS} inputs"),
                "U": "n²κ3 vs U (LO); U's own 1/n correction is not derived", **own}
    if order >= 1:
        own = {q: f"no NLO prediction: {q}'s own 1/n correction is not derived"
               for q in ("V", *NTK_FOUR)}
        return {"metric": "", "ntk": "", **own}
    why = spec.nlo_reason
    return {"metric": f"no NLO prediction: {why}", "ntk": f"no NLO prediction: {why}",
            **{q: f"no prediction: {q} is O(1/n), {why}" for q in ("V", *NTK_FOUR)}}


def _num(x: float, width: int, fmt: str) -> str:
    """A table cell: the number, or a dash where there is none (no prediction)."""
    return f"{x:{width}{fmt}}" if np.isfinite(x) else f"{'—':>{width}s}"


def _fit(inv_n: np.ndarray, y: np.ndarray, err: np.ndarray, degree: int):
    """Weighted least squares of y = Σ_k c_k (1/n)^k, k ≤ degree: (coefficients, their
    standard errors, χ²/dof or NaN)."""
    A = np.vander(inv_n, degree + 1, increasing=True)
    w = 1.0 / np.maximum(err, 1e-300)
    Aw, yw = A * w[:, None], y * w
    cov = np.linalg.pinv(Aw.T @ Aw)
    coef = cov @ Aw.T @ yw
    dof = len(y) - degree - 1
    chi2 = float(np.sum((Aw @ coef - yw) ** 2) / dof) if dof > 0 else float("nan")
    return coef, np.sqrt(np.diagonal(cov)), chi2


@dataclass
class Check:
    """The result of :func:`check` (see the module docstring).

    Attributes: ``spec``, ``X``, ``widths``, ``samples``, ``seed`` and ``order`` (what was run),
    ``rows`` (one dict per layer, quantity, component and width: Monte Carlo mean and standard
    error, LO and NLO predictions, a ``note``), ``fits`` (one dict per layer, quantity and
    component: the 1/n fit's intercept and slope with their z-scores) and ``seconds`` (the run
    time).  ``table()``, ``to_csv(path)`` and ``plot(path)`` present them.
    """

    spec: MLP
    X: np.ndarray
    widths: tuple
    samples: int
    seed: int
    rows: list = field(default_factory=list)
    fits: list = field(default_factory=list)
    seconds: float = 0.0
    #: the order in 1/n of the predictions compared (``spec.max_order``)
    order: int = 1

    # -- fits ---------------------------------------------------------------------------------

    def _refit(self) -> None:
        self.fits = []
        groups: dict = {}
        for r in self.rows:
            groups.setdefault((r["quantity"], r["component"], r["layer"]), []).append(r)
        for (q, comp, layer), rs in groups.items():
            rs = sorted(rs, key=lambda r: r["width"])
            if len(rs) < 2:
                continue
            inv_n = np.array([1.0 / r["width"] for r in rs])
            y = np.array([r["mc_mean"] for r in rs])
            e = np.array([r["mc_stderr"] for r in rs])
            if np.all(e <= 1e-12 * np.maximum(1.0, np.abs(y))):
                continue  # exact up to round-off (layer 1's V, A, B, D, F): nothing to fit
            # at order 2 the metric's 1/n² coefficient is predicted (G2): fitted with ≥ 3 widths
            nnlo_fit = q == "metric" and self.order >= 2
            deg = 2 if len(rs) >= 4 or (nnlo_fit and len(rs) >= 3) else 1
            coef, cerr, chi2 = _fit(inv_n, y, e, deg)
            lo = rs[0]["lo"]
            z_lo = (coef[0] - lo) / cerr[0] if cerr[0] > 0 and np.isfinite(lo) else float("nan")
            # the predicted slope: n (NLO − LO) at equal widths (n_{ℓ−1} = n for ℓ ≥ 2; at
            # layer 1 G1 = 0, so NLO = LO and the slope is 0: the metric is exact there)
            nlo = np.array([r["nlo"] for r in rs])
            slope_nlo = float(np.mean((nlo - lo) * np.array([r["width"] for r in rs]))) \
                if np.all(np.isfinite(nlo)) else float("nan")
            z_slope = (coef[1] - slope_nlo) / cerr[1] if np.isfinite(slope_nlo) and cerr[1] > 0 \
                else float("nan")
            # the predicted curvature: n² (NNLO − NLO) = G2 at equal widths (metric, order 2)
            widths_ = np.array([r["width"] for r in rs], dtype=float)
            nn = np.array([r.get("nnlo", float("nan")) for r in rs])
            curv_nnlo = float(np.mean((nn - nlo) * widths_ ** 2)) \
                if nnlo_fit and np.all(np.isfinite(nn)) and np.all(np.isfinite(nlo)) \
                else float("nan")
            z_curv = (coef[2] - curv_nnlo) / cerr[2] \
                if deg == 2 and np.isfinite(curv_nnlo) and cerr[2] > 0 else float("nan")
            # order 2: the 1/n slope again with the intercept held at LO (tested by z_lo), y − LO =
            # B/n (+ C/n² with ≥ 3 widths): about 4× smaller errors on B than the free fit
            # (widths 4 … 16), what makes V's slope against V1 resolvable (PRECISE_SAMPLES_NNLO)
            b_lo = b_lo_err = z_b_lo = float("nan")
            if self.order >= 2 and np.isfinite(lo):
                k = 2 if len(rs) >= 3 else 1
                X_ = np.vander(inv_n, k + 1, increasing=True)[:, 1:]
                w = 1.0 / np.maximum(e, 1e-300)
                cov = np.linalg.pinv((X_ * w[:, None]).T @ (X_ * w[:, None]))
                bc = cov @ (X_ * w[:, None]).T @ ((y - lo) * w)
                b_lo, b_lo_err = float(bc[0]), float(np.sqrt(cov[0, 0]))
                if np.isfinite(slope_nlo) and b_lo_err > 0:
                    z_b_lo = (b_lo - slope_nlo) / b_lo_err
            note = rs[0].get("note", "")
            if nnlo_fit and deg < 2:
                note = (f"the 1/n² curvature (vs G2) needs ≥ 3 widths, got {len(rs)}: not "
                        "fitted" + ("; " + note if note else ""))
            self.fits.append({
                "quantity": q, "component": comp, "layer": layer,
                "widths": ",".join(str(r["width"]) for r in rs),
                "intercept": float(coef[0]), "intercept_err": float(cerr[0]), "lo": lo,
                "z_lo": float(z_lo), "slope": float(coef[1]), "slope_err": float(cerr[1]),
                "slope_nlo": slope_nlo, "z_slope": float(z_slope),
                "slope_agrees": (bool(abs(z_slope) < Z_MAX) if np.isfinite(z_slope) else None),
                "curvature": float(coef[2]) if deg == 2 else float("nan"),
                "curvature_err": float(cerr[2]) if deg == 2 else float("nan"),
                "chi2_dof": chi2, "note": note, "curvature_nnlo": curv_nnlo,
                "z_curvature": float(z_curv), "slope_at_lo": b_lo, "slope_at_lo_err": b_lo_err,
                "z_slope_at_lo": float(z_b_lo)})

    # -- output -------------------------------------------------------------------------------

    def table(self) -> str:
        """The fits as a text table (one line per quantity, component and layer)."""
        nnlo = self.order >= 2
        cw = 12 if nnlo else 8
        head = (f"{'quantity':8s} {'comp':{cw}s} {'l':>3s} {'n→∞ intercept':>24s} {'LO':>12s} "
                f"{'z(LO)':>7s} {'1/n slope':>24s} {'NLO slope':>11s} {'agree':>5s}"
                + (f" {'1/n slope at LO':>24s} {'z':>6s} {'1/n² curvature':>24s} {'G2':>11s}"
                   f" {'z(C)':>7s}" if nnlo else "")
                + "  note")
        lines = [head, "-" * len(head)]
        notes: dict = {}
        for f in self.fits:
            agree = {True: "yes", False: "NO", None: "-"}[f["slope_agrees"]]
            note = f.get("note", "")
            if note:
                notes.setdefault(note, set()).add(f["quantity"])
            curv = ""
            if nnlo:
                c, ce = f.get("curvature", np.nan), f.get("curvature_err", np.nan)
                b, be = f.get("slope_at_lo", np.nan), f.get("slope_at_lo_err", np.nan)
                curv = (f" {b:12.5g} ± {be:9.2g}" if np.isfinite(b) else f" {'—':>24s}") + \
                    f" {_num(f.get('z_slope_at_lo', np.nan), 6, '.2f')}"
                curv += (f" {c:12.5g} ± {ce:9.2g}" if np.isfinite(c) else f" {'—':>24s}") + \
                    f" {_num(f.get('curvature_nnlo', np.nan), 11, '.5g')}" \
                    f" {_num(f.get('z_curvature', np.nan), 7, '.2f')}"
            lines.append(
                f"{f['quantity']:8s} {f['component']:{cw}s} {f['layer']:3d} "
                f"{f['intercept']:12.6g} ± {f['intercept_err']:9.2g} {_num(f['lo'], 12, '.6g')} "
                f"{_num(f['z_lo'], 7, '.2f')} {f['slope']:12.5g} ± {f['slope_err']:9.2g} "
                f"{_num(f['slope_nlo'], 11, '.5g')} {agree:>5s}{curv}  {note}".rstrip())
        bad = [f for f in self.fits if abs(f["z_lo"]) > Z_MAX]
        lines.append(f"{len(self.fits)} fits over widths {list(self.widths)}, {self.samples} networks "
                     f"per width; intercepts more than {Z_MAX:g}σ from LO: {len(bad)}")
        if nnlo:
            off_s = [f for f in self.fits if any(np.isfinite(f.get(k, np.nan))
                                                 and abs(f[k]) > Z_MAX
                                                 for k in ("z_slope", "z_slope_at_lo"))]
            off_c = [f for f in self.fits
                     if np.isfinite(f.get("z_curvature", np.nan)) and abs(f["z_curvature"]) > Z_MAX]
            lines.append(
                f"order 2 (O(1/n²)): metric's 1/n² curvature vs G2, V's 1/n slope vs V1 (free, "
                f"and with the intercept held at LO), U = n²κ3 of three different neurons vs U; "
                f"1/n slopes more than {Z_MAX:g}σ off: "
                f"{len(off_s)}, curvatures: {len(off_c)}.  Not derived (measured, not compared): "
                "the metric's O(1/n³), V's O(1/n²), U's O(1/n)"
                + ("" if self.X.shape[0] <= _NNLO_INPUTS else
                   f"; V1 and U are evaluated for at most {_NNLO_INPUTS} inputs, so V's slope "
                   "and U are not compared here"))
        if self.order < 1:
            lines.append(f"predictions to leading order only ({self.spec.nlo_reason}, docs/conventions.md §8): "
                         "the 1/n slopes are measured, not compared")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"Check({self.spec!r}, {len(self.X)} input(s), widths {list(self.widths)}, "
                f"{self.samples} networks per width, {len(self.rows)} rows, "
                f"{len(self.fits)} fits, order {self.order}, {self.seconds:.1f} s)")

    def _repr_html_(self) -> str:
        """The fits of :meth:`table` as an HTML table, with its closing lines below."""
        from html import escape

        def num(x, fmt: str) -> str:
            return format(x, fmt) if np.isfinite(x) else "—"

        nnlo = self.order >= 2
        head = ("<tr><th>quantity</th><th>component</th><th>ℓ</th><th>n→∞ intercept</th>"
                "<th>LO</th><th>z(LO)</th><th>1/n slope</th><th>NLO slope</th><th>agree</th>"
                + ("<th>1/n slope at LO</th><th>z</th><th>1/n² curvature</th><th>G2</th>"
                   "<th>z(C)</th>" if nnlo else "") + "<th>note</th></tr>")
        body = []
        for f in self.fits:
            agree = {True: "yes", False: "<b>NO</b>", None: "—"}[f["slope_agrees"]]
            z = num(f["z_lo"], ".2f")
            if np.isfinite(f["z_lo"]) and abs(f["z_lo"]) > Z_MAX:
                z = f"<b>{z}</b>"
            body.append(
                f"<tr><td>{escape(f['quantity'])}</td><td>{escape(f['component'])}</td>"
                f"<td>{f['layer']}</td>"
                f"<td>{f['intercept']:.6g} ± {f['intercept_err']:.2g}</td>"
                f"<td>{num(f['lo'], '.6g')}</td><td>{z}</td>"
                f"<td>{f['slope']:.5g} ± {f['slope_err']:.2g}</td>"
                f"<td>{num(f['slope_nlo'], '.5g')}</td><td>{agree}</td>"
                + (f"<td>{num(f['slope_at_lo'], '.5g')} ± {num(f['slope_at_lo_err'], '.2g')}</td>"
                   f"<td>{num(f['z_slope_at_lo'], '.2f')}</td>"
                   f"<td>{num(f['curvature'], '.5g')} ± {num(f['curvature_err'], '.2g')}</td>"
                   f"<td>{num(f['curvature_nnlo'], '.5g')}</td>"
                   f"<td>{num(f['z_curvature'], '.2f')}</td>" if nnlo else "")
                + f"<td>{escape(f.get('note', ''))}</td></tr>")
        tail = self.table().split("\n")[2 + len(self.fits):]
        caption = escape(f"derive check: {self.spec!r}")
        foot = "".join(f"<p>{escape(t)}</p>" for t in tail)
        return (f"<div><table><caption style=\"text-align:left\">{caption}</caption>"
                f"<thead>{head}</thead><tbody>{''.join(body)}</tbody></table>{foot}</div>")

    def to_csv(self, path) -> None:
        """Write the rows (``path``) and the fits (same name with ``_fits``)."""
        from pathlib import Path

        path = Path(path)
        with open(path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=_ROW_KEYS)
            w.writeheader()
            w.writerows(self.rows)
        with open(path.with_name(path.stem + "_fits" + path.suffix), "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=_FIT_KEYS)
            w.writeheader()
            w.writerows(self.fits)

    def plot(self, path) -> None:
        """PNG: per quantity (diagonal component (11)/(11)(11) of sample α = 1), the LO/NLO
        curves vs depth with the Monte Carlo points of every width; and the residual MC − LO
        vs 1/n at the last layer with the fitted line and the NLO slope
        (:func:`derive.reality.plots.check_figure`)."""
        from .plots import check_figure, save

        save(check_figure(self), path)


@boundary
def check(spec: MLP, X, widths=None, samples: int | None = None, seed: int = 0,
          progress: bool | None = None, ntk: bool = False, *, order: int | None = None,
          dtype: str = "float64", backend: str = "numpy", device: str | None = None,
          workers: int | None = None, scheduler=None, checkpoint=None) -> Check:
    """Monte Carlo of ``spec`` at every hidden width in ``widths`` against the derived LO and
    NLO predictions, with 1/n fits (see the module docstring).  ``progress`` (default: when
    stderr is a terminal) prints a bar with ETA per width and a line per width.

    Parameters
    ----------
    spec : MLP, ResMLP or Network
        The network; its hidden widths are replaced by each width in ``widths``.
    X : array_like of shape (N, n_0)
        The inputs.
    widths : tuple of int, optional
        The hidden widths to sample (default (32, 64, 128); at order 2 (4, 6, 8, 12, 16),
        :data:`DEFAULT_WIDTHS_NNLO`).
    samples : int, optional
        Networks per width (≥ 200; default 20000).  At order 2 a significant check needs
        far more: :data:`PRECISE_SAMPLES_NNLO` (``derive check --order 2 --precise``; the
        measurement behind it is below).
    seed : int, optional
        The seed of the random generator (default 0).
    progress : bool, optional
        Print progress to stderr (default: when stderr is a terminal).
    ntk : bool, optional
        Also compare the NTK: its mean (LO Θ, NLO Θ + H1/n) and its O(1/n) statistics A, B,
        D, F (default False: the NTK of every network costs n² N² per layer).
    order : {0, 1, 2}, optional
        The order in 1/n of the predictions (default ``spec.max_order``: 1, or 0 for a
        residual network with a skip term).  Order 2 (MLPs; every width ≥ 3) adds, per
        layer,

        * metric: ``nnlo`` = K + G1/n + G2/n² (``nlo`` stays K + G1/n), and with ≥ 3 widths
          the fit A + B/n + C/n², whose curvature C is compared with G2
          (``curvature_nnlo``, ``z_curvature``); the metric's O(1/n³) is not derived;
        * V: ``nlo`` = V + V1/n, so the 1/n slope of n·Cov is compared with V1 (V's own
          O(1/n²) is not derived: with ≥ 4 widths the curvature is measured only);
        * ``U``: n² κ3(z_i z_i, z_j z_j, z_k z_k) of three different neurons (one component
          per orbit of U's index symmetry), sampled over the same networks by
          :func:`derive.reality.montecarlo.three_neuron` — a second forward pass, in this
          process (``workers``, ``scheduler`` and ``checkpoint`` apply to the first only) —
          against its leading order U (U's own 1/n correction is not derived: no slope is
          compared).

        V1 and U are evaluated for at most two inputs; with more, V's slope and U are not
        compared and the notes say so.  At order 2 the fits also give the 1/n slope with the
        intercept held at LO (``slope_at_lo``, ``z_slope_at_lo``: y − LO = B/n + C/n²),
        about 4× more precise than the free fit's.  How many networks a significant check
        needs was measured on this project's 2-core machine (tanh at criticality C_b = 0,
        C_W = 1 and erf, depth 4, one input, widths 4 … 16): see
        :data:`PRECISE_SAMPLES_NNLO` (1 000 000 per width, what ``--precise`` uses at order
        2): V1 and U are resolved in layer 4, G2 is not (it would take ≈ 10⁸ networks or
        more).
    dtype, backend, device : optional
        The forward pass: 'float64' (default) or 'float32', on 'numpy' (default) or 'torch'
        (``derive[torch]``) on ``device`` (:func:`derive.reality.montecarlo.sample`).
    workers, scheduler : optional
        Run the shards of every ensemble on a local Dask cluster of ``workers`` processes, or
        on the Dask scheduler at ``scheduler`` ('tcp://host:port'), started once for all
        widths (``derive[distributed]``); the results are those of a run here, bit for bit.
    checkpoint : path, optional
        A folder (created if missing) where each width's ensemble saves its progress
        (``width<n>.npz``/``.json``); run again with the same arguments to resume.

    Returns
    -------
    Check
        ``.rows``, ``.fits``, ``.table()``, ``.to_csv(path)``, ``.plot(path)``.

    Raises
    ------
    DeriveError
        :class:`CheckError` for bad input (too few samples, bad widths or inputs), or an
        ensemble that diverges (with the widths done so far as ``.partial``).

    Examples
    --------
    >>> import numpy as np
    >>> from derive import MLP
    >>> c = check(MLP(2, 8, 'relu', 0.0, 2.0), np.array([[1.0]]), widths=(8,), samples=200,
    ...           progress=False)
    >>> c.rows[0]['quantity'], c.rows[0]['lo']
    ('metric', 2.0)
    """
    if not isinstance(spec, MLP):
        raise CheckError(f"spec must be a derive.MLP, got {type(spec).__name__}")
    if order is None:
        order = spec.max_order
    if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or order not in (0, 1, 2):
        raise CheckError(f"order must be 0, 1 or 2 (the order in 1/n of the predictions), got "
                         f"{order!r}")
    order = int(order)
    if order > spec.highest_order:
        raise CheckError(f"order={order} is not available for this network: its O(1/n) "
                         f"statistics are {spec.nlo_reason} (docs/conventions.md §8); use "
                         f"order={spec.highest_order}")
    if widths is None:
        widths = DEFAULT_WIDTHS_NNLO if order >= 2 else DEFAULT_WIDTHS
    if samples is None:
        samples = DEFAULT_SAMPLES
    X = np.asarray(X, dtype=float)
    if X.ndim != 2 or X.shape[0] < 1 or not np.all(np.isfinite(X)):
        raise CheckError(f"X must be a finite array of shape (N inputs, n_0 features), got {X.shape}")
    try:
        widths = tuple(sorted({int(n) for n in widths}))
    except (TypeError, ValueError):
        raise CheckError(f"widths must be whole numbers, got {widths!r}") from None
    if not widths or min(widths) < 2:
        raise CheckError(f"every width must be ≥ 2 (two different neurons are needed for the "
                         f"four-point function), got {list(widths)}")
    if spec.depth < 2:
        raise CheckError("a depth-1 network has no hidden width to vary; use depth ≥ 2")
    if order >= 2 and min(widths) < 3:
        raise CheckError(f"order=2 compares U, the cumulant of three different neurons: every "
                         f"width must be ≥ 3, got {list(widths)}")
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 10 * BLOCKS:
        raise CheckError(f"samples must be a whole number ≥ {10 * BLOCKS} networks per width, so that "
                         f"each of the {BLOCKS} jackknife blocks behind an error bar holds ≥ 10; "
                         f"got {samples!r}")
    from .distributed import connect
    from .montecarlo import _backend, _check_dtype_backend

    try:
        dtype, backend = _check_dtype_backend(dtype, backend)
        _backend(backend, dtype, device)
    except MonteCarloError as err:
        raise CheckError(str(err)) from None
    ckdir = _checkpoint_folder(checkpoint)
    with connect(workers, scheduler) as client:
        return _check(spec, X, widths, samples, seed, progress, ntk,
                      dict(dtype=dtype, backend=backend, device=device, scheduler=client),
                      ckdir, order)


def _checkpoint_folder(checkpoint):
    """The folder ``checkpoint`` (a Path, made if missing; its parent must exist) where each
    width's ensemble keeps ``width<n>.json``/``.npz``, or None; a CheckError if it is no path."""
    if checkpoint is None:
        return None
    from pathlib import Path

    if isinstance(checkpoint, bool) or not isinstance(checkpoint, (str, Path)) \
            or not str(checkpoint).strip():
        raise CheckError(f"checkpoint must be a folder path, got {checkpoint!r}")
    ckdir = Path(checkpoint)
    try:
        ckdir.mkdir(exist_ok=True)
    except OSError as err:
        raise CheckError(f"checkpoint folder {str(ckdir)!r} cannot be made ({err}); its "
                         "parent folder must exist") from None
    return ckdir


def _check(spec, X, widths, samples, seed, progress, ntk, run: dict, ckdir, order: int) -> Check:
    """:func:`check` after its arguments are checked; ``run`` goes to every ``sample``."""
    show = sys.stderr.isatty() if progress is None else bool(progress)
    N = X.shape[0]
    pairs, quads = _components(N)
    targets = ("K", "G1", "V") if order >= 1 else ("K",)
    nnlo = order >= 2
    if nnlo:
        targets += ("G2", "V1", "U") if N <= _NNLO_INPUTS else ("G2",)
        sixes = _orbit_components(N, "U") if N <= _NNLO_INPUTS else []
    ntk = bool(ntk)
    if ntk:
        spec.activation.require_ntk("the NTK compared by check(..., ntk=True)")
        targets += ("Theta", "H1", *NTK_FOUR) if order >= 1 else ("Theta",)
        fours = {q: _orbit_components(X.shape[0], q) for q in NTK_FOUR}
    notes = _notes(spec, order, N)
    res = Check(spec, X, widths, int(samples), int(seed), order=order)
    t0 = time.perf_counter()
    cost = {n: spec.depth * n * n + 1 for n in widths}  # work per network ∝ Σ_ℓ n_ℓ n_{ℓ−1}
    for k, n in enumerate(widths):
        net = spec.with_widths(n)
        try:
            ens = sample(net, X, int(samples), seed=seed + k, ntk=ntk, progress=show,
                         checkpoint=None if ckdir is None else ckdir / f"width{n}", **run)
            if nnlo and sixes:   # the same networks again, here: n² κ3 of three neurons
                three = three_neuron(net, X, int(samples), seed=seed + k, progress=show,
                                     dtype=run["dtype"], backend=run["backend"],
                                     device=run["device"])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExpansionWarning)
                pred = predict(net, X, order=order, targets=targets)
        except (MonteCarloError, DeriveError) as err:
            res._refit()
            res.seconds = time.perf_counter() - t0
            raise CheckError(f"width {n}: {err} (results kept for widths {list(widths[:k])})",
                             partial=res) from None
        nan = float("nan")
        for l in range(1, spec.depth + 1):
            est = ens.layers[l]
            fan = pred.fan_in(l)
            if order >= 1:
                nlo_metric = pred.K[l] + pred.G1[l] / fan    # K + G1/n at every order ≥ 1
            if nnlo and N <= _NNLO_INPUTS:
                nlo_V = pred.V[l] + pred.V1[l] / fan
            for c in pairs:
                res.rows.append({"quantity": "metric", "component": _label(c), "layer": l,
                                 "width": n, "mc_mean": float(est.G[c]),
                                 "mc_stderr": float(est.G_err[c]), "lo": float(pred.K[l][c]),
                                 "nlo": float(nlo_metric[c]) if order >= 1 else nan,
                                 "note": notes["metric"],
                                 "nnlo": float(pred.metric(l)[c]) if nnlo else nan})
            for c in quads:
                res.rows.append({"quantity": "V", "component": _label(c), "layer": l, "width": n,
                                 "mc_mean": float(est.V[c]), "mc_stderr": float(est.V_err[c]),
                                 "lo": float(pred.V[l][c]) if order >= 1 else nan,
                                 "nlo": float(nlo_V[c]) if nnlo and N <= _NNLO_INPUTS else nan,
                                 "note": notes["V"], "nnlo": nan})
            if nnlo and sixes:
                for c in sixes:
                    res.rows.append({"quantity": "U", "component": _label(c), "layer": l,
                                     "width": n, "mc_mean": float(three.U[l][c]),
                                     "mc_stderr": float(three.U_err[l][c]),
                                     "lo": float(pred.U[l][c]), "nlo": nan, "note": notes["U"],
                                     "nnlo": nan})
            if not ntk:
                continue
            for c in pairs:
                res.rows.append({"quantity": "ntk", "component": _label(c), "layer": l,
                                 "width": n, "mc_mean": float(est.Theta[c]),
                                 "mc_stderr": float(est.Theta_err[c]),
                                 "lo": float(pred.Theta[l][c]),
                                 "nlo": float(pred.ntk_mean(l)[c]) if order >= 1 else float("nan"),
                                 "note": notes["ntk"], "nnlo": nan})
            for q in NTK_FOUR:
                mc, err = getattr(est, q), getattr(est, q + "_err")
                for c in fours[q]:
                    res.rows.append({"quantity": q, "component": _label(c), "layer": l,
                                     "width": n, "mc_mean": float(mc[c]),
                                     "mc_stderr": float(err[c]),
                                     "lo": float(getattr(pred, q)[l][c]) if order >= 1
                                     else float("nan"), "nlo": float("nan"), "note": notes[q],
                                     "nnlo": nan})
        if show:
            el = time.perf_counter() - t0
            left = sum(cost[w] for w in widths[k + 1:]) / sum(cost[w] for w in widths[:k + 1]) * el
            print(f"check: width {n} done ({k + 1}/{len(widths)}), {el:.1f} s, ETA {left:.0f} s",
                  file=sys.stderr, flush=True)
    res._refit()
    res.seconds = time.perf_counter() - t0
    return res
