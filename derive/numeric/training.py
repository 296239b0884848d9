r"""``derive.train``: the ensemble of networks trained by gradient descent (book ch. 10, issue 17).

Conventions (issue 17; docs/conventions.md §2–§3): training inputs x_α, α ∈ A, with targets
y_{i;α}; test inputs x_β, β ∈ B.  Loss L = ½ Σ_{α∈A} Σ_i (z^{(L)}_{i;α} − y_{i;α})², full-batch
gradient descent θ_μ(t+1) = θ_μ(t) − η Σ_ν λ_{μν} ∂L/∂θ_ν(t) with the learning-rate tensor of §3
(λ_b per bias, λ_W/n_{ℓ−1} per weight, taken from the spec).

Order 0 (infinite width, "kernel learning"): the NTK of the output layer is frozen at its mean
Θ = Θ^{(L)} and the outputs move linearly,

    z_A(t+1) = z_A(t) − η Θ_AA (z_A(t) − y),   z_B(t+1) = z_B(t) − η Θ_BA (z_A(t) − y),

from z(0) ~ N(0, K^{(L)}), independently for every output neuron i.  Hence, with
E_t = (1 − ηΘ_AA)^t and F_t = Σ_{s<t} η (1 − ηΘ_AA)^s (= Θ_AA⁻¹ (1 − E_t) where Θ_AA is
invertible; evaluated on the eigenvectors of Θ_AA, so a singular Θ_AA is fine),

    z_A(t) = E_t z_A(0) + (1 − E_t) y,   z_B(t) = z_B(0) − Θ_BA F_t (z_A(0) − y),

i.e. z(t) = A_t z(0) + c_t: mean c_t, covariance A_t K A_tᵀ (the same for every output).
t = ∞ is allowed when η is stable, 0 < ηθ < 2 for every nonzero eigenvalue θ of Θ_AA.

Order 1: the O(1/n) corrections through the NTK's fluctuations and the
dNTK and ddNTKs (:mod:`derive.numeric.training_nlo`: the gradient-descent step expanded with the
output layer's tangent fields, averaged with their derived statistics H1, G1, A, B, D, F, P, Q,
R, S, T, Udd).  ``mean(t) = mean0(t) + mean1(t)/n`` and ``cov(t) = cov0(t) + cov1(t)/n`` with
n = n_{L−1} the output layer's fan-in, at the recorded steps; ``ntk_drift = ntk_drift1/n``.
Several outputs are coupled at this order (each output's mean depends on all targets, outputs
are correlated): ``cov`` is then averaged over the output neurons, ``cov_by_output`` gives
every pair, ``ntk_drift`` is output neuron 0's and ``ntk_drift1_by_output`` every Ĥ_{ij}'s.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import NamedTuple

import numpy as np

from ..architectures.mlp import MLP
from ..base.errors import DeriveError, OrderError, boundary
from .evaluate import outside_training

__all__ = ["train", "Training", "TestError", "UnstableStepWarning", "default_times"]

#: an eigenvalue of Θ_AA at most this times the largest counts as zero (a flat direction)
ZERO_EIGENVALUE = 1e-12
#: most gradient-descent steps accepted
MAX_STEPS = 10 ** 12


class UnstableStepWarning(UserWarning):
    """η λ_max(Θ_AA) ≥ 2: the infinite-width dynamics do not converge (they grow or oscillate)."""


class TestError(NamedTuple):
    """The expected test loss E[½ Σ_{β∈B} Σ_i (z_{i;β}(t) − y_{i;β})²] = ``bias`` + ``variance``:
    ``bias`` = ½ Σ_{β,i} (E[z_{i;β}(t)] − y_{i;β})² (the squared bias, with the loss's ½),
    ``variance`` = ½ n_out Σ_β Var z_{i;β}(t) (the trace of the test block of the covariance,
    times the number of outputs), ``total`` = their sum."""

    __test__ = False   # not a pytest class
    bias: float
    variance: float
    total: float


def default_times(steps: int) -> tuple:
    """0, every power of two below ``steps``, and ``steps``."""
    out = {0, steps}
    p = 1
    while p < steps:
        out.add(p)
        p *= 2
    return tuple(sorted(out))


def _array(a, name: str, ndim: tuple) -> np.ndarray:
    if a is None or isinstance(a, (str, bytes)):
        raise DeriveError(f"{name} must be an array of numbers, got {type(a).__name__}")
    try:
        arr = np.asarray(a)
    except ValueError:
        arr = None
    if arr is None or arr.dtype == object or arr.dtype.kind not in "biuf":
        raise DeriveError(f"{name} must be a rectangular array of real numbers")
    arr = arr.astype(float)
    if arr.ndim not in ndim:
        raise DeriveError(f"{name} must have {' or '.join(map(str, ndim))} dimension(s), got "
                          f"shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise DeriveError(f"{name} contains NaN or infinite entries")
    return arr


def _check_data(X_train, y_train, X_test):
    """(X_A, Y (N_A, n_out), one output?, X_B (N_B, n_0)) or a DeriveError."""
    XA = _array(X_train, "X_train", (2,))
    if XA.shape[0] < 1 or XA.shape[1] < 1:
        raise DeriveError(f"X_train must have shape (N_A ≥ 1 inputs, n_0 ≥ 1 features), got "
                          f"{XA.shape}")
    y = _array(y_train, "y_train", (1, 2))
    single = y.ndim == 1
    Y = y[:, None] if single else y
    if Y.shape[0] != XA.shape[0] or Y.shape[1] < 1:
        raise DeriveError(f"y_train must have shape (N_A,) or (N_A, n_out) with N_A = "
                          f"{XA.shape[0]} (the rows of X_train), got {y.shape}")
    if X_test is None:
        XB = np.zeros((0, XA.shape[1]))
    else:
        XB = _array(X_test, "X_test", (1, 2) if np.size(X_test) == 0 else (2,))
        if XB.size == 0:
            XB = np.zeros((0, XA.shape[1]))
        elif XB.shape[1] != XA.shape[1]:
            raise DeriveError(f"X_test has {XB.shape[1]} features but X_train has "
                              f"{XA.shape[1]}: both are (N, n_0)")
    return XA, Y, single, XB


def _check_eta_steps(eta, steps):
    if isinstance(eta, bool) or not isinstance(eta, Real) or not math.isfinite(eta) or eta <= 0:
        raise DeriveError(f"eta (the global learning rate) must be a positive finite number, got "
                          f"{eta!r:.40}")
    if isinstance(steps, bool):
        raise DeriveError(f"steps must be a whole number ≥ 0, got {steps!r}")
    if isinstance(steps, Real) and not isinstance(steps, Integral):
        if not (math.isfinite(steps) and float(steps).is_integer()):
            raise DeriveError(f"steps must be a whole number ≥ 0, got {steps!r:.40}")
        steps = int(steps)
    if not isinstance(steps, Integral) or not 0 <= steps <= MAX_STEPS:
        raise DeriveError(f"steps must be a whole number from 0 to {MAX_STEPS}, got "
                          f"{steps!r:.40}")
    return float(eta), int(steps)


def _check_times(times, steps: int) -> tuple:
    if times is None:
        return default_times(steps)
    if isinstance(times, (str, bytes)):
        raise DeriveError("times must be a list of whole numbers of steps")
    out = []
    for t in np.atleast_1d(np.asarray(times, dtype=object)).tolist():
        out.append(_whole_step(t, steps, "times"))
    return tuple(sorted(set(out)))


def _whole_step(t, steps: int | None, what: str) -> int:
    ok = not isinstance(t, bool) and isinstance(t, (Integral, Real, np.integer, np.floating))
    if ok and not isinstance(t, (Integral, np.integer)):
        ok = math.isfinite(t) and float(t).is_integer()
    if not ok or t < 0 or (steps is not None and t > steps):
        bound = f"0 … {steps}" if steps is not None else "≥ 0"
        raise DeriveError(f"{what}: a step must be a whole number {bound}, got {t!r:.40}")
    return int(t)


@dataclass(frozen=True, repr=False)
class Training:
    """The result of :func:`train`: the statistics of the outputs z^{(L)} on the training inputs
    then the test inputs (N = N_A + N_B of them) along gradient descent.

    Attributes: ``spec``, ``order``, ``eta``, ``steps``, ``times`` (the recorded steps),
    ``n_train`` (N_A), ``n_test`` (N_B), ``K`` and ``Theta`` ((N, N): K^{(L)} and Θ^{(L)} of
    :func:`derive.predict` at order 0), ``y`` (the training targets), ``stable`` (η λ_max(Θ_AA)
    < 2), ``ntk_drift`` (E[Ĥ(T) − Ĥ(0)], (N, N): zeros at order 0, where the NTK is frozen).
    Methods: ``mean(t)``, ``cov(t)`` (any whole step t ≥ 0, or ``math.inf`` when stable),
    ``mean0``, ``cov0`` (their order-0 parts: the same at order 0), ``test_error(t, y_test)``.
    """

    spec: object
    order: int
    eta: float
    steps: int
    times: tuple
    n_train: int
    n_test: int
    K: np.ndarray
    Theta: np.ndarray
    y: np.ndarray
    single_output: bool
    stable: bool
    _eig: tuple = field(default=None)
    #: order 1: n_{L−1} and the O(1/n) coefficients of :func:`~derive.numeric.training_nlo.nlo_dynamics`
    fan_in: int = 0
    _nlo: dict = field(default=None)

    @property
    def ntk_drift(self) -> np.ndarray:
        """E[Ĥ(T) − Ĥ(0)] on the training then test inputs, (N, N) (with several outputs: of
        output neuron 0, Ĥ_{00}, as :func:`~derive.reality.training.train_ensemble` records it):
        zeros at order 0, ntk_drift1/n at order 1."""
        N = self.n_train + self.n_test
        return np.zeros((N, N)) if self._nlo is None else self.ntk_drift1 / self.fan_in

    @property
    def ntk_drift1(self) -> np.ndarray:
        """The coefficient of 1/n (n = n_{L−1}) of E[Ĥ(T) − Ĥ(0)] (order 1 only; with several
        outputs, of output neuron 0)."""
        return self.ntk_drift1_by_output[0, 0]

    @property
    def ntk_drift1_by_output(self) -> np.ndarray:
        """The coefficient of 1/n of E[Ĥ_{ij;ab}(T) − Ĥ_{ij;ab}(0)] for all output neurons i, j,
        (n_out, n_out, N, N) (order 1 only)."""
        self._need_nlo("ntk_drift1")
        d = self._nlo["drift1"]
        return 0.5 * (d + d.transpose(1, 0, 3, 2))

    def _need_nlo(self, what: str):
        if self._nlo is None:
            raise DeriveError(f"{what} is an O(1/n) coefficient: call train(..., order=1)")

    def _recorded(self, t) -> int:
        t = self._step(t)
        if math.isinf(t) or t not in self._nlo["mean1"]:
            raise DeriveError(f"the O(1/n) statistics are computed at the recorded steps "
                              f"{list(self.times)}; got t = {t!r} (pass times=[…] to train)")
        return t

    def mean1(self, t) -> np.ndarray:
        """The coefficient of 1/n of E[z(t)] (order 1, recorded steps only): (N,) for one
        output, (N, n_out) otherwise (as :meth:`mean0`)."""
        self._need_nlo("mean1")
        m = self._nlo["mean1"][self._recorded(t)]
        return m[0].copy() if self.single_output else m.T.copy()

    def cov1_by_output(self, t) -> np.ndarray:
        """The coefficient of 1/n of Cov[z_{i;a}(t), z_{j;b}(t)] for all output neurons i, j,
        (n_out, N, n_out, N) (order 1, recorded steps only): at O(1/n) the outputs are coupled
        (through the NTK's fluctuations and the dNTK, and each output's targets)."""
        self._need_nlo("cov1")
        t = self._recorded(t)
        m0, m1 = self._nlo["mean0"][t], self._nlo["mean1"][t]
        C = self._nlo["second1"][t] - np.einsum("ia,jb->iajb", m0, m1) \
            - np.einsum("ia,jb->iajb", m1, m0)
        return 0.5 * (C + C.transpose(2, 3, 0, 1))

    def cov1(self, t) -> np.ndarray:
        """The coefficient of 1/n of Cov[z_i(t)] (order 1, recorded steps only), (N, N); with
        several outputs averaged over the output neurons i (as ``cov(t)``)."""
        C = self.cov1_by_output(t)
        return np.einsum("iaib->ab", C) / C.shape[0]

    # -- the linear map z(t) = A_t z(0) + c_t -------------------------------------------------

    def _step(self, t):
        if isinstance(t, (float, np.floating)) and math.isinf(t) and t > 0:
            if not self.stable:
                raise DeriveError(
                    f"t = ∞ needs a stable step: η λ_max(Θ_AA) = {self.eta * self._eig[0].max():.6g}"
                    " ≥ 2, so the infinite-width dynamics do not converge; take a smaller eta")
            return math.inf
        return _whole_step(t, None, "mean/cov")

    def _map(self, t):
        """(A_t (N, N), E_t, F_t) of the linear dynamics after t steps."""
        theta, U = self._eig
        NA, N = self.n_train, self.n_train + self.n_test
        eta = self.eta
        flat = theta <= ZERO_EIGENVALUE * max(theta.max(), 0.0)
        with np.errstate(over="ignore", invalid="ignore"):
            if math.isinf(t):
                e = np.where(flat, 1.0, 0.0)
                f = np.where(flat, 0.0, 1.0 / np.where(flat, 1.0, theta))
            else:
                r = 1.0 - eta * theta
                e = r ** t
                # Σ_{s<t} η r^s = (1 − r^t)/θ, and η t on flat directions
                f = np.where(flat, eta * t, -np.expm1(t * np.log1p(-eta * theta))
                             / np.where(flat, 1.0, theta)) if np.all(r[~flat] > 0) else \
                    np.where(flat, eta * t, (1.0 - e) / np.where(flat, 1.0, theta))
        E = (U * e) @ U.T
        F = (U * f) @ U.T
        A = np.eye(N)
        A[:NA, :NA] = E
        A[NA:, :NA] = -self.Theta[NA:, :NA] @ F
        return A, E, F

    def mean0(self, t) -> np.ndarray:
        """E[z(t)] at order 0: (N,) for one output, (N, n_out) otherwise."""
        t = self._step(t)
        _, E, F = self._map(t)
        NA = self.n_train
        Y = self.y
        top = Y - E @ Y
        bottom = self.Theta[NA:, :NA] @ (F @ Y)
        m = np.vstack([top, bottom])
        return m[:, 0] if self.single_output else m

    def cov0(self, t) -> np.ndarray:
        """Cov[z_{i}(t)] at order 0, (N, N), the same for every output neuron i."""
        t = self._step(t)
        A, _, _ = self._map(t)
        C = A @ self.K @ A.T
        return 0.5 * (C + C.T)

    def mean(self, t) -> np.ndarray:
        """E[z(t)] on the training then test inputs (to the order of this result: + mean1/n at
        order 1)."""
        if self._nlo is None:
            return self.mean0(t)
        return self.mean0(t) + self.mean1(t) / self.fan_in

    def cov(self, t) -> np.ndarray:
        """Cov[z_i(t)] on the training then test inputs (to the order of this result: + cov1/n
        at order 1), (N, N).  With several outputs the average over the output neurons i
        (:class:`~derive.reality.training.EnsembleTraining` pools them the same way; at order 0
        it is the same for each); ``cov_by_output(t)`` gives every pair of outputs."""
        if self._nlo is None:
            return self.cov0(t)
        return self.cov0(t) + self.cov1(t) / self.fan_in

    def cov_by_output(self, t) -> np.ndarray:
        """Cov[z_{i;a}(t), z_{j;b}(t)] for all output neurons i, j, (n_out, N, n_out, N): δ_ij
        cov0(t) at order 0, + cov1_by_output(t)/n at order 1."""
        n_out = self.y.shape[1]
        C = np.einsum("ij,ab->iajb", np.eye(n_out), self.cov0(t))
        if self._nlo is None:
            return C
        return C + self.cov1_by_output(t) / self.fan_in

    def test_error(self, t, y_test) -> TestError:
        """The expected test loss at step t and its bias and variance parts (:class:`TestError`):
        E[½ Σ_{β,i} (z_{i;β}(t) − y_{i;β})²] = ½ Σ (E z − y)² + ½ n_out Σ_β Var z_β.
        ``y_test`` has the shape of ``y_train`` with N_B rows."""
        NA, NB = self.n_train, self.n_test
        if NB == 0:
            raise DeriveError("test_error needs test inputs: train was called without X_test")
        yt = _array(y_test, "y_test", (1, 2))
        Yt = yt[:, None] if yt.ndim == 1 else yt
        if Yt.shape != (NB, self.y.shape[1]) or (yt.ndim == 1) != self.single_output:
            want = f"({NB},)" if self.single_output else f"({NB}, {self.y.shape[1]})"
            raise DeriveError(f"y_test must have shape {want} (the test inputs, as y_train), got "
                              f"{yt.shape}")
        m = self.mean(t)
        m = (m[:, None] if self.single_output else m)[NA:]
        C = self.cov(t)[NA:, NA:]
        bias = 0.5 * float(np.sum((m - Yt) ** 2))
        variance = 0.5 * self.y.shape[1] * float(np.trace(C))
        return TestError(bias, variance, bias + variance)

    def __repr__(self) -> str:
        return (f"Training(order {self.order}, eta {self.eta:g}, steps {self.steps}, "
                f"{self.n_train} training and {self.n_test} test input(s), "
                f"{self.y.shape[1]} output(s), {'stable' if self.stable else 'UNSTABLE'}, "
                f"times {list(self.times)})")


@boundary
def train(spec, X_train, y_train, X_test, eta, steps, order: int = 0, times=None,
          progress: bool = False, workers: int = 1) -> Training:
    r"""The statistics of an ensemble of networks ``spec`` trained by full-batch gradient descent.

    Parameters
    ----------
    spec : derive.MLP (or any spec :func:`derive.predict` evaluates K and Θ for)
        The network; its ``lambda_b``, ``lambda_W`` are the learning-rate tensor (§3).
    X_train : (N_A, n_0) array
        The training inputs x_α.
    y_train : (N_A,) or (N_A, n_out) array
        The targets y_{i;α} (one output, or n_out outputs).
    X_test : (N_B, n_0) array or None
        The test inputs x_β (may be empty).
    eta : float > 0
        The global step η.  η λ_max(Θ_AA) ≥ 2 is accepted with an
        :class:`UnstableStepWarning` (the finite-t statistics are those of the diverging or
        oscillating linear dynamics); t = ∞ is then an error.
    steps : int ≥ 0
        T, the last step.
    order : 0 or 1
        0: infinite width (kernel learning, book ch. 10).  1: with the O(1/n) corrections
        through the NTK's fluctuations, the dNTK and the ddNTKs (book ch. ∞; any number of
        outputs, σ smooth or linear, a plain MLP; :mod:`derive.numeric.training_nlo`), at the
        recorded steps.  Their cost is estimated first (the statistics by
        :func:`derive.numeric.prediction.plan_work`, the dynamics by
        :func:`derive.numeric.training_nlo.dynamics_work`: about (n_out N)² cubature points,
        linear in the steps); a run beyond 6 h or 8 GiB is refused, saying what to change.
    times : list of int, optional
        The steps to record (default: 0, every power of two below ``steps``, and ``steps``).
    progress : bool, optional
        At order 1, print to stderr what the run does: the statistics layer by layer (as
        :func:`derive.predict` with ``progress=True``), then the averaged dynamics, at most a
        line every 5 s with the steps done and an estimate of the time left (N = 20 inputs
        take minutes).
    workers : int, optional
        At order 1, processes (forked) for the statistics' three- and four-sample averages
        (:func:`derive.predict`'s ``workers``) and for the dynamics' blocks of cubature points
        (more than one block from 257 points: N ≥ 15 inputs of one output); the same numbers
        whatever their number.

    Returns
    -------
    Training
        ``.mean(t)``, ``.cov(t)``, ``.mean0(t)``, ``.cov0(t)``, ``.ntk_drift``,
        ``.test_error(t, y_test)``, ``.times``, ``.K``, ``.Theta``, ``.cov_by_output(t)``; at
        order 1 also ``.mean1(t)``, ``.cov1(t)``, ``.ntk_drift1`` (coefficients of 1/n,
        n = n_{L−1}), ``.cov1_by_output(t)``, ``.ntk_drift1_by_output``.
    """
    if isinstance(order, bool) or order not in (0, 1):
        raise OrderError(f"order must be 0 or 1, got {order!r:.40}")
    if not isinstance(progress, (bool, np.bool_)):
        raise DeriveError(f"progress must be True or False, got {progress!r:.40}")
    from ..activations.gaussian import check_workers

    workers = check_workers(workers)
    XA, Y, single, XB = _check_data(X_train, y_train, X_test)
    if order == 1:
        if type(spec) is not MLP or spec.max_order < 1:
            raise DeriveError("train(order=1) needs the O(1/n) statistics of the NTK, dNTK and "
                              "ddNTKs, derived for plain MLPs (derive.MLP) only")
    eta, steps = _check_eta_steps(eta, steps)
    rec = _check_times(times, steps)
    from .prediction import predict

    X = np.vstack([XA, XB])
    if getattr(spec.activation, "ntk_obstacle", None):
        raise DeriveError(f"the NTK mean Θ of {spec.activation_name} is infinite "
                          f"({spec.activation.ntk_obstacle}): gradient descent is not defined")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")    # the expansion estimate is about order ≥ 1
        p = predict(spec, X, order=0, targets=["K", "Theta"])
    L = spec.depth
    K = np.asarray(p.K[L], dtype=float)
    Th = np.asarray(p.Theta[L], dtype=float)
    Th = 0.5 * (Th + Th.T)
    K = 0.5 * (K + K.T)
    NA = XA.shape[0]
    theta, U = np.linalg.eigh(Th[:NA, :NA])
    top = eta * max(theta.max(), 0.0)
    stable = bool(top < 2.0)
    if not stable:
        warnings.warn(f"η λ_max(Θ_AA) = {top:.6g} ≥ 2: the infinite-width gradient descent "
                      "does not converge (the training outputs grow or oscillate); the "
                      "statistics at finite t are those of these dynamics, t = ∞ is refused",
                      UnstableStepWarning, stacklevel=3)
    if not (np.all(np.isfinite(K)) and np.all(np.isfinite(Th))):
        raise DeriveError("K or Θ of the output layer is not finite for these inputs")
    nlo, n = None, 0
    if order == 1:
        nlo, n = _nlo(spec, X, Y, NA, eta, rec, bool(progress), workers)
    return Training(spec=spec, order=order, eta=eta, steps=steps, times=rec, n_train=NA,
                    n_test=XB.shape[0], K=K, Theta=Th, y=Y, single_output=single,
                    stable=stable, _eig=(theta, U), fan_in=n, _nlo=nlo)


#: the quadrature tolerance (absolute) of the statistics train(order=1) reads.  Their errors
#: reach the O(1/n) coefficients amplified by up to about η T (the dynamics accumulate them
#: over the steps): at N = 10 inputs, depth 3, T = 1000, η = 0.2, mean1, cov1 and ntk_drift1
#: at 1e-6 differ from those at 1e-8 by ≤ 6e-6, 1.3e-6 and 1.4e-5 (tanh; relative ≤ 5e-6;
#: erf ≤ 3.6e-6), far below what any ensemble resolves, for 6 % (tanh) to 30 % (erf) less time
NLO_TOL = 1e-6
#: the output layer's statistics train(order=1) reads
NLO_TARGETS = ("K", "G1", "Theta", "H1", "A", "B", "D", "F", "P", "Q", "R", "S", "T", "Udd")


#: the output layer's statistics of the last few calls (at most four), by (spec, inputs,
#: number of training inputs): they depend on neither η, the steps nor the targets, so a scan
#: over those computes them once (:func:`_output_statistics`)
_STATISTICS: dict = {}
_STATISTICS_KEPT = 4
_STATISTICS_BYTES = 1 << 30     # and no more than 1 GiB of them (one set is always kept)


def _nlo(spec, X, Y, NA, eta, times, progress=False, workers=1):
    """(the O(1/n) coefficients of :func:`derive.numeric.training_nlo.nlo_dynamics`, n_{L−1})."""
    from .training_nlo import nlo_dynamics

    _plan_dynamics(len(X), NA, Y.shape[1], max(times), progress)
    try:
        key = (spec, X.shape, X.tobytes(), NA)
        hash(key)
    except TypeError:        # a spec with a field that cannot be hashed: not kept
        key = None
    if key is not None and key in _STATISTICS:
        st, fan_in = _STATISTICS.pop(key)
        if progress:
            import sys
            print("train: the output layer's statistics of an earlier call (the same network "
                  "and inputs)", file=sys.stderr, flush=True)
    else:
        st, fan_in = _output_statistics(spec, X, NA, progress, workers)
    if key is not None:
        _STATISTICS[key] = (st, fan_in)         # the most recent last
        while len(_STATISTICS) > 1 and (len(_STATISTICS) > _STATISTICS_KEPT or sum(
                a.nbytes for kept, _ in _STATISTICS.values() for a in kept.values())
                > _STATISTICS_BYTES):
            del _STATISTICS[next(iter(_STATISTICS))]
    out = nlo_dynamics(st["K"], st["Theta"], st["G1"], st["H1"], st, Y, NA, eta, times,
                       _dynamics_progress() if progress else None, workers)
    return out, fan_in


def _plan_dynamics(N: int, NA: int, n_out: int, steps: int, progress: bool) -> None:
    """Refuse O(1/n) dynamics that cannot finish (more than MAX_SECONDS or MAX_BYTES of
    :func:`derive.numeric.prediction.plan_work`, by the estimate of
    :func:`derive.numeric.training_nlo.dynamics_work`), before the statistics are computed;
    with ``progress``, say what they will cost."""
    from .prediction import MAX_BYTES, MAX_SECONDS, _duration
    from .training_nlo import degree5_points, dynamics_work

    seconds, nbytes = dynamics_work(N, NA, n_out, steps)
    what = (f"the O(1/n) dynamics of {n_out} output{'s' if n_out > 1 else ''} on {N} inputs "
            f"over {steps} steps average over a cubature in n_out N = {n_out * N} dimensions "
            f"({degree5_points(n_out * N)} points)")
    if seconds > MAX_SECONDS or nbytes > MAX_BYTES:
        raise DeriveError(
            f"train(order=1): {what}, roughly {_duration(seconds)} and "
            f"{nbytes / 2 ** 30:.1f} GiB on one process; this is not practical.  The points "
            "grow like (n_out N)², the work at each point like n_out² N⁴, and the time "
            "linearly in the steps: use fewer inputs, outputs or steps, or order=0 (kernel "
            "learning, seconds)")
    if progress:
        import sys
        print(f"train: {what}: roughly {_duration(seconds)} on one process", file=sys.stderr,
              flush=True)


def _output_statistics(spec, X, NA, progress=False, workers=1):
    """The output layer's statistics :data:`NLO_TARGETS` that train(order=1) reads (dense,
    zero where not computed), and n_{L−1}."""
    from .prediction import predict

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")    # the expansion estimate: the caller's judgement
        # averages to NLO_TOL (the O(1/n) coefficients are compared with ensembles at ≳ 1e-3),
        # the four-index statistics only where the dynamics read them: at most two distinct
        # test inputs among a component's samples (the rest is NaN)
        p = predict(spec, X, order=1, targets=list(NLO_TARGETS), tol=NLO_TOL, training_inputs=NA,
                    progress=progress, workers=workers)
    L = spec.depth
    st = {q: np.asarray(getattr(p, q)[L], dtype=float) for q in NLO_TARGETS}
    # the components not computed enter the cubature's intermediate fields multiplied by zero
    # (e.g. Ĥ between two test inputs, which moves no output): zero, not NaN
    unread = outside_training(np.indices((len(X),) * 4).transpose(1, 2, 3, 4, 0), NA) > 2
    for q in NLO_TARGETS:
        if st[q].ndim == 4:
            st[q] = np.where(unread, 0.0, st[q])
        if not np.all(np.isfinite(st[q])):
            raise DeriveError(f"the output layer's {q} is not finite (the recursion overflowed); "
                              "check C_b, C_W and the scale of the inputs")
    for q in ("K", "G1", "Theta", "H1"):
        st[q] = 0.5 * (st[q] + st[q].T)
    for a in st.values():
        a.setflags(write=False)       # kept for later calls: nothing may change them
    return st, p.fan_in(L)


def _dynamics_progress():
    """progress(run, t, T, points) for :func:`nlo_dynamics`: a line to stderr when a run
    starts and at most every 5 s, with the steps done and an estimate of the time left."""
    import sys
    import time

    names = {1: "the first-order insertions", 2: "the NTK-fluctuation insertion (C_HH)"}
    state = {"run": None, "start": 0.0, "last": 0.0}

    def tick(run, t, T, points):
        now = time.perf_counter()
        if run != state["run"]:
            state.update(run=run, start=now, last=now)
            print(f"train: O(1/n) dynamics, run {run}/2 ({names[run]}) over {points} cubature "
                  f"points, {T} steps …", file=sys.stderr, flush=True)
        if now - state["last"] >= 5.0 or t == T:
            state["last"] = now
            spent = now - state["start"]
            left = spent * (T - t) / max(t, 1)
            print(f"train: run {run}/2, step {t}/{T} ({spent:.0f} s, about {left:.0f} s left)",
                  file=sys.stderr, flush=True)
    return tick
