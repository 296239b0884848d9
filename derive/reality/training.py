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

Progress and checkpoints (``progress=``, ``checkpoint=``): a chunk of networks is the unit of
both.  A checkpoint ``STEM`` is the pair of files :mod:`derive.reality.distributed` writes for
the initialisation Monte Carlo, through the same helpers: ``STEM.json`` (the run's identity —
spec, activation, hashes of the data, η, steps, recorded steps, number of networks, seed, chunk
size — the number of networks done and the generator's state after drawing them) and
``STEM.npz`` (the recorded outputs and NTKs of those networks), both written atomically after
a finished chunk (at most about once a second, and always at the end and when the run stops
early).  A run given the same stem and identity continues from the saved generator state with
the next chunk; since each chunk is trained on its own, the result is the uninterrupted run's,
bit for bit.
"""
from __future__ import annotations

import hashlib
import math
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from ..architectures.mlp import MLP
from ..base.errors import DeriveError
from ..numeric.training import _check_data, _check_eta_steps, _check_times
from . import distributed

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


def _digest(a: np.ndarray) -> str:
    """A checkpoint's fingerprint of a data array: its shape and float64 values."""
    a = np.ascontiguousarray(a, dtype=np.float64)
    return hashlib.sha256(repr(a.shape).encode() + a.tobytes()).hexdigest()


def _check_progress(progress):
    """None (no report), True (a line on stderr per chunk) or the callable ``progress``."""
    if progress is None or isinstance(progress, (bool, np.bool_)):
        return True if progress else None
    if callable(progress):
        return progress
    raise DeriveError(f"progress must be None, True/False (a line on stderr per finished chunk "
                      f"of networks) or a callable progress(done, total), got {progress!r:.60}")


class _Checkpoint:
    """``STEM.json`` + ``STEM.npz`` of one :func:`train_ensemble` run (module docstring)."""

    def __init__(self, checkpoint, params: dict):
        self.jpath, self.npath = distributed._paths(checkpoint)
        self.params = params

    def load(self, Z: np.ndarray, H: np.ndarray, rng) -> int:
        """Networks done by the saved run; their records copied into ``Z``, ``H`` and the
        generator ``rng`` set to the state after drawing them.  0 when there is none yet."""
        meta, done = distributed._read_meta(self.jpath, self.params, "networks_done")
        if meta is None:
            return 0
        n, chunk = self.params["n_networks"], self.params["chunk"]
        bad = None
        if not 0 <= done <= n or (done % chunk and done != n):
            bad = f"{done} networks done, not a whole number of chunks of {chunk} up to {n}"
        elif done:
            data = distributed._read_arrays(self.npath, self.jpath)
            z, ntk = data.get("z"), data.get("ntk")
            if z is None or ntk is None:
                bad = "it lacks the arrays 'z' and 'ntk'"
            elif z.shape[0] < done or z.shape[1:] != Z.shape[1:] \
                    or ntk.shape[0] < done or ntk.shape[1:] != H.shape[1:]:
                bad = f"arrays of shapes {z.shape} and {ntk.shape} for {done} networks"
            else:
                Z[:done], H[:done] = z[:done], ntk[:done]
        if bad is None and done < n:
            try:
                rng.bit_generator.state = meta["rng"]
            except (KeyError, TypeError, ValueError) as err:
                bad = f"no usable generator state: {err}"
        if bad is not None:
            raise DeriveError(f"checkpoint {str(self.jpath)!r} cannot be resumed ({bad}); "
                              f"delete {self.jpath.name} and {self.npath.name}, or give another "
                              "checkpoint path")
        return done

    def save(self, Z: np.ndarray, H: np.ndarray, done: int, state: dict) -> None:
        distributed._write(self.jpath, self.npath, {"z": Z[:done], "ntk": H[:done]},
                           {"params": self.params, "networks_done": done, "rng": state})


def train_ensemble(spec: MLP, X_train, y_train, X_test, eta, steps, n_networks: int,
                   seed: int = 0, times=None, progress=None,
                   checkpoint=None) -> EnsembleTraining:
    """Train ``n_networks`` networks of ``spec`` (hidden widths from the spec, output width the
    number of target columns) by full-batch gradient descent and record their outputs and
    empirical NTK (module docstring).  ``times``: as for :func:`derive.train` (default 0, every
    power of two below ``steps``, ``steps``).  Raises a DeriveError when the outputs overflow.

    ``progress``: None or False (silent, the default), True (a line on stderr per finished
    chunk of networks: networks done of all, seconds elapsed, an estimate of those left) or a
    callable ``progress(done, total)`` called after each finished chunk (an exception it
    raises stops the run, after the checkpoint is saved).

    ``checkpoint``: a path stem; ``STEM.json`` and ``STEM.npz`` are written as chunks finish
    (module docstring), and a call with the same stem and the same arguments resumes after the
    last saved chunk — the result bit-identical to an uninterrupted run — or, for a finished
    run, only reads them.  A checkpoint of a call with other arguments, or files that cannot be
    read, are refused with a DeriveError (delete them or give another stem).  It needs a whole
    number ``seed``."""
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
    report = _check_progress(progress)
    if checkpoint is not None and (isinstance(seed, bool) or
                                   not isinstance(seed, (int, np.integer))):
        raise DeriveError(f"a checkpointed run needs a whole number seed (to be resumed with "
                          f"the same networks), got {seed!r:.40}")
    rng = np.random.default_rng(seed)
    chunk = _chunk(widths, N, n_networks)
    Z = np.empty((n_networks, len(rec), n_out, N))
    H = np.empty((n_networks, len(rec), N, N))
    recset = {t: k for k, t in enumerate(rec)}
    done = 0
    ck = None
    if checkpoint is not None:
        ck = _Checkpoint(checkpoint, {
            "kind": "train_ensemble", "spec": repr(spec),
            "activation": str(spec.activation.expr), "X_train": _digest(XA),
            "y_train": _digest(Y), "X_test": _digest(XB), "eta": eta, "steps": steps,
            "times": list(rec), "n_networks": n_networks, "seed": int(seed), "chunk": chunk})
        done = ck.load(Z, H, rng)
        if report is True and done:
            print(f"train_ensemble: {ck.jpath.name} holds {done}/{n_networks} networks"
                  f"{'' if done < n_networks else ' (a finished run)'}", file=sys.stderr,
                  flush=True)
    t0 = last_save = time.perf_counter()
    first = saved = done
    state = None                     # the generator's state after the networks done
    try:
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
                    raise DeriveError(f"the outputs overflowed at step {t} (NaN/inf): eta = "
                                      f"{eta:g} is too large for these networks")
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
            if ck is not None:
                state = rng.bit_generator.state
                now = time.perf_counter()
                if done == n_networks or now - last_save > distributed._SAVE_EVERY:
                    ck.save(Z, H, done, state)
                    saved, last_save = done, now
            if report is True:
                el = time.perf_counter() - t0
                left = el / (done - first) * (n_networks - done)
                print(f"train_ensemble: {done}/{n_networks} networks, {el:.1f} s elapsed, "
                      f"about {left:.1f} s left", file=sys.stderr, flush=True)
            elif report is not None:
                report(done, n_networks)
    finally:
        if ck is not None and done > saved:    # stopped early: keep the chunks finished
            ck.save(Z, H, done, state)
    return EnsembleTraining(times=rec, n_networks=n_networks, n_train=NA,
                            single_output=single, z=Z, ntk=H)
