r"""Ensembles of actually trained networks (issue 17, reality side of :func:`derive.train`).

:func:`train_ensemble` draws ``n_networks`` MLPs as :mod:`derive.reality.montecarlo` draws them
(per layer ℓ = 1 … L in turn, W^{(ℓ)} ~ N(0, C_W/n_{ℓ−1}) then b^{(ℓ)} ~ N(0, C_b), from
``numpy.random.default_rng(seed)``, a chunk of networks at a time), and trains each by full-batch
gradient descent on L = ½ Σ_{α∈A} Σ_i (z_{i;α} − y_{i;α})² with the learning-rate tensor of
docs/conventions.md §3: b ← b − η λ_b ∂L/∂b, W ← W − η (λ_W/n_{ℓ−1}) ∂L/∂W (a hand-written
backward pass, float64, vectorised over the networks of a chunk; σ' from the activation's numpy
derivative).  At each recorded step it keeps the outputs on the training and test inputs and the
empirical NTK of output neuron 0,

    Ĥ_{αβ} = Σ_ℓ [λ_b^{(ℓ)} δ^{(ℓ)}_α·δ^{(ℓ)}_β + (λ_W^{(ℓ)}/n_{ℓ−1}) (δ^{(ℓ)}_α·δ^{(ℓ)}_β)(a^{(ℓ−1)}_α·a^{(ℓ−1)}_β)],

δ^{(ℓ)}_α = ∂z^{(L)}_{0;α}/∂z^{(ℓ)}_α, a^{(ℓ−1)} the input of layer ℓ (x or σ(z^{(ℓ−1)})): the
λ-weighted Jacobian product Σ_μ λ_μ ∂z_{0;α}/∂θ_μ ∂z_{0;β}/∂θ_μ.

Only plain MLPs (no residual term) are trained here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..architectures.mlp import MLP
from ..base.errors import DeriveError
from ..numeric.training import _check_data, _check_eta_steps, _check_times

__all__ = ["train_ensemble", "EnsembleTraining"]

#: most float64 numbers of parameters held at once (a chunk of networks)
CHUNK_NUMBERS = 4_000_000


@dataclass(frozen=True, repr=False)
class EnsembleTraining:
    """The result of :func:`train_ensemble`.

    ``times`` (recorded steps), ``n_networks``, ``n_train``, ``z`` (n_networks, len(times),
    n_out, N) the outputs on the training then test inputs, ``ntk`` (n_networks, len(times),
    N, N) the empirical NTK of output neuron 0.  ``mean(t)``, ``mean_se(t)``: the mean over
    networks of each output ((N,) for one output, else (N, n_out)) and its standard error;
    ``cov(t)``, ``cov_se(t)``: the covariance (N, N) over networks, pooled over the output
    neurons, and its standard error; ``ntk_mean(t)``; ``ntk_drift``, ``ntk_drift_se``:
    the mean of Ĥ(T) − Ĥ(0) (T the last recorded step) and its standard error."""

    times: tuple
    n_networks: int
    n_train: int
    single_output: bool
    z: np.ndarray = field(repr=False)
    ntk: np.ndarray = field(repr=False)

    def _k(self, t) -> int:
        try:
            return self.times.index(int(t))
        except (ValueError, TypeError):
            raise DeriveError(f"step {t!r} was not recorded; recorded: {list(self.times)}") \
                from None

    def mean(self, t) -> np.ndarray:
        m = self.z[:, self._k(t)].mean(axis=0).T          # (N, n_out)
        return m[:, 0] if self.single_output else m

    def mean_se(self, t) -> np.ndarray:
        s = (self.z[:, self._k(t)].std(axis=0, ddof=1) / math.sqrt(self.n_networks)).T
        return s[:, 0] if self.single_output else s

    def _products(self, t) -> np.ndarray:
        z = self.z[:, self._k(t)]                           # (c, n_out, N)
        d = z - z.mean(axis=0)
        return np.einsum("cia,cib->cab", d, d) / z.shape[1]  # per network, pooled over outputs

    def cov(self, t) -> np.ndarray:
        c = self.n_networks
        return self._products(t).sum(axis=0) / (c - 1)

    def cov_se(self, t) -> np.ndarray:
        return self._products(t).std(axis=0, ddof=1) / math.sqrt(self.n_networks)

    def ntk_mean(self, t) -> np.ndarray:
        return self.ntk[:, self._k(t)].mean(axis=0)

    @property
    def ntk_drift(self) -> np.ndarray:
        return (self.ntk[:, -1] - self.ntk[:, 0]).mean(axis=0)

    @property
    def ntk_drift_se(self) -> np.ndarray:
        return (self.ntk[:, -1] - self.ntk[:, 0]).std(axis=0, ddof=1) / math.sqrt(self.n_networks)

    def __repr__(self) -> str:
        return (f"EnsembleTraining({self.n_networks} networks, {self.n_train} training inputs of "
                f"{self.z.shape[-1]}, {self.z.shape[2]} output(s), times {list(self.times)})")


def _chunk(widths: list, N: int, n_networks: int) -> int:
    per = sum(a * b + b for a, b in zip(widths[:-1], widths[1:])) * 2 \
        + 6 * N * sum(widths)
    return max(1, min(n_networks, CHUNK_NUMBERS // max(per, 1)))


def train_ensemble(spec: MLP, X_train, y_train, X_test, eta, steps, n_networks: int,
                   seed: int = 0, times=None) -> EnsembleTraining:
    """Train ``n_networks`` networks of ``spec`` (hidden widths from the spec, output width the
    number of target columns) by full-batch gradient descent and record their outputs and
    empirical NTK (module docstring).  ``times``: as for :func:`derive.train` (default 0, every
    power of two below ``steps``, ``steps``).  Raises a DeriveError when the outputs overflow."""
    if type(spec) is not MLP:
        raise DeriveError("train_ensemble trains plain MLPs only (derive.MLP); got "
                          f"{type(spec).__name__}")
    XA, Y, single, XB = _check_data(X_train, y_train, X_test)
    eta, steps = _check_eta_steps(eta, steps)
    rec = _check_times(times, steps)
    if isinstance(n_networks, bool) or not isinstance(n_networks, int) or n_networks < 2:
        raise DeriveError(f"n_networks must be a whole number ≥ 2, got {n_networks!r:.40}")
    X = np.vstack([XA, XB])
    NA, N = XA.shape[0], X.shape[0]
    n_out = Y.shape[1]
    L = spec.depth
    widths = [X.shape[1], *spec.widths, n_out]
    act, dact = spec.activation.numpy(0), spec.activation.numpy(1)
    lam_b = [spec.lambda_b(l) for l in range(1, L + 1)]
    lam_W = [spec.lambda_W(l) / widths[l - 1] for l in range(1, L + 1)]
    rng = np.random.default_rng(seed)
    chunk = _chunk(widths, N, n_networks)
    Z = np.empty((n_networks, len(rec), n_out, N))
    H = np.empty((n_networks, len(rec), N, N))
    recset = {t: k for k, t in enumerate(rec)}
    done = 0
    while done < n_networks:
        c = min(chunk, n_networks - done)
        Ws, bs = [], []
        for l in range(1, L + 1):
            n_in, n_l = widths[l - 1], widths[l]
            Ws.append(rng.standard_normal((c, n_l, n_in)) * math.sqrt(spec.C_W(l) / n_in))
            bs.append(rng.standard_normal((c, n_l)) * math.sqrt(spec.C_b(l)))
        for t in range(steps + 1):
            # forward on all inputs: a[l] (c, N, n_l) is the input of layer l + 1
            a, zs = [np.broadcast_to(X, (c,) + X.shape)], []
            for l in range(L):
                z = np.matmul(a[-1], np.swapaxes(Ws[l], 1, 2)) + bs[l][:, None, :]
                zs.append(z)
                if l < L - 1:
                    a.append(act(z))
            out = zs[-1]                                            # (c, N, n_out)
            if not np.all(np.isfinite(out)):
                raise DeriveError(f"the outputs overflowed at step {t} (NaN/inf): eta = {eta:g} "
                                  "is too large for these networks")
            if t in recset:
                k = recset[t]
                Z[done:done + c, k] = np.swapaxes(out, 1, 2)
                # empirical NTK of output neuron 0 on all inputs
                d = np.zeros((c, N, n_out))
                d[:, :, 0] = 1.0
                Hk = np.zeros((c, N, N))
                for l in range(L - 1, -1, -1):
                    dd = np.matmul(d, np.swapaxes(d, 1, 2))
                    aa = np.matmul(a[l], np.swapaxes(a[l], 1, 2))
                    Hk += lam_b[l] * dd + lam_W[l] * dd * aa
                    if l > 0:
                        d = np.matmul(d, Ws[l]) * dact(zs[l - 1])
                H[done:done + c, k] = Hk
            if t == steps:
                break
            # backward of the loss on the training inputs
            g = out[:, :NA, :] - Y[None]                            # (c, N_A, n_out)
            for l in range(L - 1, -1, -1):
                aA = a[l][:, :NA, :]
                gW = np.matmul(np.swapaxes(g, 1, 2), aA)           # (c, n_l, n_in)
                gb = g.sum(axis=1)
                if l > 0:
                    g = np.matmul(g, Ws[l]) * dact(zs[l - 1][:, :NA, :])
                Ws[l] -= eta * lam_W[l] * gW
                bs[l] -= eta * lam_b[l] * gb
        done += c
    return EnsembleTraining(times=rec, n_networks=n_networks, n_train=NA,
                            single_output=single, z=Z, ntk=H)
