r"""``derive.check_train``: the trained network at O(1/n) (:func:`derive.train`) against ensembles of
actually trained networks (issue 17 part 4; docs/conventions.md §3, §7).

For each hidden width n of ``widths`` (every hidden layer at n), ``samples`` networks of the
spec are drawn and trained by full-batch gradient descent with the learning-rate tensor of the
spec (:func:`derive.reality.training.train_ensemble`: float64, a hand-written backward pass),
with one output neuron or several (``y_train`` (N_A,) or (N_A, n_out)), and at every recorded
step t are measured

* ``mean``: E[z_{i;α}(t)] on every training and test input α (and output i; component
  ``"α"`` for one output, ``"α:i"`` for several).  Variance reduction: each network's
  own kernel-learning prediction from its z(0), A_t z(0) + c_t (docs/conventions.md §3), is
  subtracted and c_t added back — a control variate whose mean is known exactly
  (E z(0) = 0), which leaves the O(1/√n) spread of the finite-width dynamics only;
* ``cov``: Cov[z_α(t), z_β(t)] (plain sample covariance, standard error from the spread of the
  per-network products; with several outputs averaged over them, as ``train``'s ``cov``);
* ``cov_out`` (several outputs): Cov[z_{i;α}(t), z_{j;β}(t)] between outputs i < j (component
  ``"α,β:i,j"``), zero at infinite width and coupled at O(1/n) (``cov1_by_output``).  Control
  variate: the per-network products of the kernel-learning parts A_t z(0) of outputs i and j,
  whose mean is zero exactly at any width, are subtracted;
* ``drift``: E[Ĥ_{αβ}(T) − Ĥ_{αβ}(0)] of the empirical NTK of output neuron 0, T the last
  step.

Across widths each (quantity, step, component) is fitted by weighted least squares to A + B/n
(+ C/n² with four widths or more): the n → ∞ intercept A against the infinite-width prediction
(``mean0``, ``cov0``; zero for ``cov_out`` and the drift) and the slope B against the O(1/n)
coefficient (``mean1``, ``cov1``, ``cov1_by_output``, ``ntk_drift1``; n = n_{L−1}), each with its
z-score.

``checkpoint=FOLDER`` keeps each width's ensemble in ``FOLDER/width<n>.json``/``.npz``
(:func:`~derive.reality.training.train_ensemble`'s checkpoints, as :func:`derive.check` keeps
its Monte Carlo): the same call again resumes where it stopped, with the same result.
"""
from __future__ import annotations

import csv
import math
import sys
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from ..architectures.mlp import MLP
from ..base.errors import DeriveError, boundary
from .check import _checkpoint_folder, _fit, _num

__all__ = ["check_train", "TrainCheck", "DEFAULT_TRAIN_SAMPLES", "DEFAULT_TRAIN_WIDTHS"]

#: networks per width of a training check (the trained statistics have small spreads once the
#: control variate is subtracted)
DEFAULT_TRAIN_SAMPLES = 5000
DEFAULT_TRAIN_WIDTHS = (32, 64, 128)


@dataclass
class TrainCheck:
    """The result of :func:`check_train`: ``rows`` (one dict per quantity, step, component and
    width: ``measured``, ``se``, ``lo``, ``nlo``), ``fits`` (one dict per quantity, step and
    component: intercept ``A`` ± ``A_se`` against ``lo`` (``z_lo``), slope ``B`` ± ``B_se``
    against ``slope_nlo`` (``z_slope``)), ``seconds``; ``table()``, ``to_csv(path)``."""

    spec: MLP
    widths: tuple
    samples: int
    eta: float
    steps: int
    rows: list = field(default_factory=list)
    fits: list = field(default_factory=list)
    seconds: float = 0.0

    def table(self) -> str:
        head = (f"{'quantity':8s} {'t':>5s} {'comp':>7s} {'LO':>10s} {'A (n→∞)':>10s} "
                f"{'± se':>8s} {'z':>6s} {'B pred':>10s} {'B fit':>10s} {'± se':>8s} {'z':>6s}")
        lines = [f"training check: {self.spec!r}, η = {self.eta:g}, {self.steps} steps, widths "
                 f"{list(self.widths)}, {self.samples} networks each", head, "-" * len(head)]
        for f in self.fits:
            lines.append(f"{f['quantity']:8s} {f['t']:5d} {f['component']:>7s} "
                         f"{_num(f['lo'], 10, '.5f')} {_num(f['A'], 10, '.5f')} "
                         f"{_num(f['A_se'], 8, '.5f')} {_num(f['z_lo'], 6, '.2f')} "
                         f"{_num(f['slope_nlo'], 10, '.4f')} {_num(f['B'], 10, '.4f')} "
                         f"{_num(f['B_se'], 8, '.4f')} {_num(f['z_slope'], 6, '.2f')}")
        worst = max((abs(f["z_slope"]) for f in self.fits if np.isfinite(f["z_slope"])),
                    default=float("nan"))
        lines.append(f"largest |z| of a 1/n slope against its prediction: {worst:.2f} "
                     f"(fits of {'A + B/n + C/n²' if len(self.widths) >= 4 else 'A + B/n'})")
        return "\n".join(lines)

    def to_csv(self, path) -> None:
        """The rows to ``path`` and the fits to ``<stem>_fits.csv`` beside it."""
        from pathlib import Path

        path = Path(path)
        for rows, p in ((self.rows, path), (self.fits, path.with_name(path.stem + "_fits.csv"))):
            with open(p, "w", newline="", encoding="utf-8") as fh:
                w = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["quantity"])
                w.writeheader()
                w.writerows(rows)


def _components(N: int, what: str, n_out: int | None = None) -> list:
    """The components compared: (α,) of the mean for one output (``n_out`` None), (α, i) for
    several; (α, β), α ≤ β, of the covariance and the drift; (i, α, j, β), i < j, of the
    covariance between outputs."""
    if what == "mean":
        return [(a,) for a in range(N)] if n_out is None else \
            [(a, i) for a in range(N) for i in range(n_out)]
    if what == "cov_out":
        return [(i, a, j, b) for i in range(n_out) for j in range(i + 1, n_out)
                for a in range(N) for b in range(N)]
    return [(a, b) for a in range(N) for b in range(a, N)]


def _label(what: str, comp: tuple) -> str:
    """A component's label: "α" or "α:i" of the mean, "α,β" of the covariance and the drift,
    "α,β:i,j" of the covariance of outputs i and j."""
    if what == "mean":
        return ":".join(map(str, comp))
    if what == "cov_out":
        i, a, j, b = comp
        return f"{a},{b}:{i},{j}"
    return ",".join(map(str, comp))


def _cross_covariance(z: np.ndarray, lin: np.ndarray) -> tuple:
    """Cov[z_{i;α}, z_{j;β}] of different outputs i ≠ j over the networks (z: (S, n_out, N))
    and its standard error, (n_out, N, n_out, N) each (the blocks i = j are left at zero).
    Control variate: ``lin``, each network's kernel-learning part A_t z(0), whose outputs are
    uncorrelated exactly (E[z_{i;α}(0) z_{j;β}(0)] = 0 for i ≠ j at any width): the
    per-network products of its centred outputs are subtracted from those of z."""
    S, n_out, N = z.shape
    cov, se = np.zeros((n_out, N, n_out, N)), np.zeros((n_out, N, n_out, N))
    dz, dl = z - z.mean(axis=0), lin - lin.mean(axis=0)
    for i in range(n_out):
        for j in range(i + 1, n_out):
            p = np.einsum("sa,sb->sab", dz[:, i], dz[:, j]) \
                - np.einsum("sa,sb->sab", dl[:, i], dl[:, j])
            cov[i, :, j] = p.sum(axis=0) / (S - 1)
            se[i, :, j] = p.std(axis=0, ddof=1) / math.sqrt(S)
            cov[j, :, i], se[j, :, i] = cov[i, :, j].T, se[i, :, j].T
    return cov, se


@boundary
def check_train(spec: MLP, X_train, y_train, X_test, eta, steps, widths=None,
                samples: int | None = None, seed: int = 0, times=None,
                progress: bool = False, checkpoint=None) -> TrainCheck:
    """Train ensembles of ``spec`` at each hidden width of ``widths`` (default 32, 64, 128) and
    compare the per-step mean, covariance and NTK drift with :func:`derive.train` at orders 0
    and 1 (see the module docstring).  One output (``y_train`` of shape (N_A,)) or several
    ((N_A, n_out)).

    ``progress``: lines on stderr — each step of the check and, while an ensemble trains, each
    finished chunk of its networks (:func:`~derive.reality.training.train_ensemble`).
    ``checkpoint``: a folder (made if missing) where the ensemble of width n is saved as it
    trains, ``width<n>.json`` and ``width<n>.npz``; the same call again resumes from them
    (refused, with a DeriveError, if they belong to other arguments)."""
    from ..numeric.training import _check_data, _check_eta_steps, _check_times, train
    from .training import train_ensemble

    if type(spec) is not MLP:
        raise DeriveError(f"check_train trains plain MLPs (derive.MLP); got {type(spec).__name__}")
    XA, Y, single, XB = _check_data(X_train, y_train, X_test)
    y = Y[:, 0] if single else Y
    eta, steps = _check_eta_steps(eta, steps)
    rec = _check_times(times, steps)
    widths = tuple(sorted(set(DEFAULT_TRAIN_WIDTHS if widths is None else widths)))
    if len(widths) < 2 or any(isinstance(n, bool) or not isinstance(n, (int, np.integer))
                              or n < 2 for n in widths):
        raise DeriveError(f"widths must be at least two different whole numbers ≥ 2 (for the "
                          f"1/n fit), got {list(widths)!r:.60}")
    samples = DEFAULT_TRAIN_SAMPLES if samples is None else samples
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 100:
        raise DeriveError(f"samples must be a whole number ≥ 100, got {samples!r:.40}")
    ckdir = _checkpoint_folder(checkpoint)
    start = time.perf_counter()
    say = (lambda m: print(m, file=sys.stderr, flush=True)) if progress else (lambda m: None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")        # the expansion estimates: judged by the fits
        say("check_train: deriving the O(1/n) prediction (train(order=1)) …")
        pred = train(spec.with_widths(widths[0]), XA, y, XB, eta, steps, order=1, times=rec)
    N = XA.shape[0] + XB.shape[0]
    res = TrainCheck(spec, widths, int(samples), eta, steps)
    measured = {}
    for n in widths:
        sn = spec.with_widths(n)
        say(f"check_train: width {n}: training {int(samples)} networks …")
        ens = train_ensemble(sn, XA, y, XB, eta, steps, int(samples), seed=seed + n,
                             times=rec, progress=bool(progress),
                             checkpoint=None if ckdir is None else ckdir / f"width{n}")
        z = ens.z                                               # (S, times, n_out, N)
        S = z.shape[0]
        for k, t in enumerate(ens.times):
            A, _, _ = pred._map(t)
            m0 = pred.mean0(t)                                  # (N,) or (N, n_out)
            part = np.einsum("ab,sib->sia", A, z[:, 0])       # each network's A_t z(0)
            d = z[:, k] - (part + m0.reshape(N, -1).T)
            mean, se = d.mean(0).T, d.std(0, ddof=1).T / math.sqrt(S)      # (N, n_out)
            measured["mean", t, n] = (m0 + mean.reshape(m0.shape), se.reshape(m0.shape))
            measured["cov", t, n] = (ens.cov(t), ens.cov_se(t))
            if not single:
                measured["cov_out", t, n] = _cross_covariance(z[:, k], part)
        measured["drift", steps, n] = (ens.ntk_drift, ens.ntk_drift_se)
        say(f"check_train: width {n}: {S} networks trained ({time.perf_counter() - start:.1f} s)")
    inv = 1.0 / np.array(widths, dtype=float)
    degree = 2 if len(widths) >= 4 else 1
    for what, t in sorted({(q, t) for q, t, _ in measured}, key=lambda x: (x[0], x[1])):
        c1 = {"mean": pred.mean1, "cov": pred.cov1, "cov_out": pred.cov1_by_output}.get(
            what, lambda t: pred.ntk_drift1)(t)
        lo = {"mean": pred.mean0, "cov": pred.cov0}.get(what, lambda t: np.zeros_like(c1))(t)
        for comp in _components(N, what, None if single else Y.shape[1]):
            label = _label(what, comp)
            ys = np.array([measured[what, t, n][0][comp] for n in widths])
            es = np.array([measured[what, t, n][1][comp] for n in widths])
            for n, y, e in zip(widths, ys, es):
                res.rows.append({"quantity": what, "t": t, "component": label, "width": n,
                                 "measured": float(y), "se": float(e), "lo": float(lo[comp]),
                                 "nlo": float(lo[comp] + c1[comp] / n)})
            if np.all(es <= 1e-12):    # reproduced by construction (the mean at step 0)
                continue
            coef, se, chi2 = _fit(inv, ys, np.maximum(es, 1e-15), degree)
            res.fits.append({"quantity": what, "t": t, "component": label,
                             "lo": float(lo[comp]), "A": float(coef[0]), "A_se": float(se[0]),
                             "z_lo": float((coef[0] - lo[comp]) / se[0]),
                             "slope_nlo": float(c1[comp]), "B": float(coef[1]),
                             "B_se": float(se[1]), "z_slope": float((coef[1] - c1[comp]) / se[1]),
                             "chi2_dof": chi2})
    res.seconds = time.perf_counter() - start
    return res
