r"""The shards of a Monte Carlo ensemble: what one shard is (:class:`_Plan`, its size
:func:`shard_size` and seed :func:`shard_seed`) and what it yields — the block sums of the
estimators (:class:`_Accumulator`), merged in shard order into the estimates and their
jackknife errors (:class:`LayerEstimate`).

:mod:`derive.reality.montecarlo` draws and pushes a shard's networks through (its
``_run_shard``); :mod:`derive.reality.distributed` runs the shards, here or on Dask workers,
and merges them.  Both import this module, which imports neither.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import numpy as np

from ..architectures.mlp import MLP
from ..base.errors import DeriveError

#: jackknife blocks for standard errors
BLOCKS = 20


class MonteCarloError(DeriveError):
    """A Monte Carlo run that cannot give a meaningful answer (bad sizes, overflow)."""


@dataclass(frozen=True)
class LayerEstimate:
    """Estimates for one layer: values and standard errors (defined in
    :mod:`derive.reality.montecarlo`)."""

    G: np.ndarray
    G_err: np.ndarray
    V: np.ndarray
    V_err: np.ndarray
    Theta: np.ndarray | None
    Theta_err: np.ndarray | None
    A: np.ndarray | None = None
    A_err: np.ndarray | None = None
    B: np.ndarray | None = None
    B_err: np.ndarray | None = None
    D: np.ndarray | None = None
    D_err: np.ndarray | None = None
    F: np.ndarray | None = None
    F_err: np.ndarray | None = None


class _Accumulator:
    """Block sums for the estimators of one layer."""

    #: the NTK's O(1/n) statistics (:mod:`derive.reality.montecarlo`): their within-network
    #: pair averages
    NTK4 = ("A", "B", "D", "F")

    def __init__(self, N: int, ntk: bool):
        self.count = np.zeros(BLOCKS)
        self.g = np.zeros((BLOCKS, N, N))
        self.gg = np.zeros((BLOCKS, N, N, N, N))
        self.p = np.zeros((BLOCKS, N, N, N, N))
        self.h = np.zeros((BLOCKS, N, N)) if ntk else None
        self.hh = np.zeros((BLOCKS, N, N)) if ntk else None
        # Σ over networks of the pair averages p_A … p_F, and of h ⊗ h and h ⊗ g (U-statistics)
        self.q = {k: np.zeros((BLOCKS, N, N, N, N)) for k in self.NTK4} if ntk else None
        self.hh4 = np.zeros((BLOCKS, N, N, N, N)) if ntk else None
        self.hg = np.zeros((BLOCKS, N, N, N, N)) if ntk else None

    #: the arrays of the state, in the order of :meth:`state` (None ones are absent)
    FIELDS = ("count", "g", "gg", "p", "h", "hh", "hh4", "hg")

    def add(self, blocks: np.ndarray, z, H, xp):
        """z: (c, n, N) preactivations of c networks; H: their NTK (c, n, n, N, N) or None,
        as arrays of the backend ``xp`` (:mod:`derive.reality.montecarlo`'s numpy or torch
        backend).  The per-network statistics are formed in float64 whatever the dtype of
        the forward pass (on the backend's device), and only they (c × N⁴ numbers) come back
        to the host, where the block sums are made."""
        z = xp.f64(z)
        n = z.shape[1]
        c, _, N = z.shape
        # z_i z_i per neuron, built with the neurons innermost (c, N², n), then seen as (c, n, N²)
        zt = xp.contiguous(xp.swapaxes(z, 1, 2))
        At = (zt[:, :, None, :] * zt[:, None, :, :]).reshape(c, N * N, n)
        A2 = xp.swapaxes(At, 1, 2)
        S2 = At.sum(axis=2)                                # Σ_i z_i z_i (c, N²)
        S = S2.reshape(c, N, N)
        same = xp.matmul(At, A2)                           # Σ_i A_i ⊗ A_i (c, N², N²)
        p = (S2[:, :, None] * S2[:, None, :] - same) / (n * (n - 1))   # mean over i != j
        g = xp.host(S / n)                                 # per-network metric
        cols = [g.reshape(c, -1), (g.reshape(c, -1, 1) * g.reshape(c, 1, -1)).reshape(c, -1),
                xp.host(p).reshape(c, -1)]
        if H is not None:
            H = xp.f64(H)
            H_diag = xp.einsum("ciiab->ciab", H)
            h = xp.host(H_diag.mean(axis=1)).reshape(c, -1)
            q = self._pairs(z, A2, S, H_diag, H, xp)
            cols += [h, h * h, (h[:, :, None] * h[:, None, :]).reshape(c, -1),
                     (h[:, :, None] * g.reshape(c, 1, -1)).reshape(c, -1)]
            cols += [xp.host(q[k]).reshape(c, -1) for k in self.NTK4]
        # the block sums of every per-network statistic at once: (blocks × c)(c × columns)
        onehot = (blocks[None, :] == np.arange(BLOCKS)[:, None]).astype(np.float64)
        sums = onehot @ np.concatenate(cols, axis=1)
        self.count += onehot.sum(axis=1)
        at = 0
        for name in self._COLUMNS[:3 if H is None else len(self._COLUMNS)]:
            arr = self.q[name[1:]] if name.startswith("q") else getattr(self, name)
            size = arr[0].size
            arr += sums[:, at:at + size].reshape(arr.shape)
            at += size

    #: the per-network statistics summed by :meth:`add`, in the order of its columns
    _COLUMNS = ("g", "gg", "p", "h", "hh", "hh4", "hg", "qA", "qB", "qD", "qF")

    def merge(self, other: "_Accumulator") -> None:
        """Add ``other``'s block sums to these (the merge of two shards)."""
        for k, v in self.state().items():
            v += other.state()[k]

    def state(self) -> dict:
        """The block sums as a flat dict of arrays (for checkpoints and for Dask workers)."""
        out = {k: getattr(self, k) for k in self.FIELDS if getattr(self, k) is not None}
        if self.q is not None:
            out.update({f"q{k}": v for k, v in self.q.items()})
        return out

    @classmethod
    def from_state(cls, N: int, ntk: bool, state: dict) -> "_Accumulator":
        acc = cls(N, ntk)
        for k, v in acc.state().items():
            if k not in state or state[k].shape != v.shape:
                raise MonteCarloError(f"a saved accumulator lacks {k!r} or has the wrong shape")
            v[...] = state[k]
        return acc

    @staticmethod
    def _pairs(z, A2, S, Hd, H, xp) -> dict:
        """Per network, the averages over ordered pairs i ≠ j of the layer's neurons of
        Ĥ_{ii;ab} Ĥ_{jj;cd}, Ĥ_{ij;ac} Ĥ_{ij;bd}, Ĥ_{ii;ab} z_{j;c} z_{j;d} and
        Ĥ_{ij;ac} z_{i;b} z_{j;d} (each (c, N, N, N, N), indexed abcd), as Σ_{i,j} − Σ_{i=j}:
        sums over neurons, never an array over pairs.  ``A2`` = z_i z_i (c, n, N²), ``S`` its
        sum over neurons (c, N, N)."""
        c, n, N = z.shape
        pairs = n * (n - 1)
        Hs = Hd.sum(axis=1).reshape(c, N * N)                          # Σ_i Ĥ_ii
        S2 = S.reshape(c, N * N)
        # the i = j terms, as (N² × n)(n × N²) products:
        # dHH = Σ_i Ĥ_{ii;ab} Ĥ_{ii;cd}, dHz = Σ_i Ĥ_{ii;ab} z_{i;c} z_{i;d}
        Hd2 = xp.swapaxes(Hd.reshape(c, n, N * N), 1, 2)
        dHH = xp.matmul(Hd2, Hd.reshape(c, n, N * N)).reshape(c, N, N, N, N)
        dHz = xp.matmul(Hd2, A2).reshape(c, N, N, N, N)
        pA = ((Hs[:, :, None] * Hs[:, None, :]).reshape(c, N, N, N, N) - dHH) / pairs
        pD = ((Hs[:, :, None] * S2[:, None, :]).reshape(c, N, N, N, N) - dHz) / pairs
        # B and F are built in the order [s, a, c, b, d] (Ĥ_{ij;ac} first), where their i = j
        # terms are dHH and dHz as they stand, then turned to [s, a, b, c, d]
        # Σ_{ij} Ĥ_{ij;ac} Ĥ_{ij;bd}: one (N² × n²)(n² × N²) product per network
        M = H.reshape(c, n * n, N * N)
        full = xp.matmul(xp.swapaxes(M, 1, 2), M).reshape(c, N, N, N, N)
        pB = xp.swapaxes(full - dHH, 2, 3) / pairs
        # Σ_{ij} Ĥ_{ij;ac} z_{i;b} z_{j;d}: contract i with z (an (N × n)(n × n N²) product), then j
        Y = xp.matmul(xp.swapaxes(z, 1, 2), H.reshape(c, n, n * N * N)).reshape(c, N, n, N, N)
        full = xp.einsum("sbjac,sjd->sacbd", Y, z)
        pF = xp.swapaxes(full - dHz, 2, 3) / pairs
        return {"A": pA, "B": pB, "D": pD, "F": pF}

    @staticmethod
    def _estimates(count, g, gg, p, h, fan_in):
        """G, V, Θ from the sums over ``count`` networks; the arrays may carry a leading axis
        (one estimate per jackknife sample, ``count`` then an array of that length)."""
        S = np.reshape(count, np.shape(count) + (1, 1))
        S4 = S[..., None, None]
        G = g / S
        U = (np.einsum("...ab,...gd->...abgd", g, g) - gg) / (S4 * (S4 - 1))  # E[A]E[B], distinct networks
        V = fan_in * (p / S4 - U)
        Th = None if h is None else h / S
        return G, V, Th

    @staticmethod
    def _ntk_estimates(count, g, h, q, hh4, hg, fan_in):
        """A, B, D, F: n (pair average − U-statistic of the means) for A and D; n · pair average
        for B and F (Ĥ_ij, i ≠ j, has mean zero).  A leading axis as in :meth:`_estimates`."""
        S = np.reshape(count, np.shape(count) + (1, 1, 1, 1))
        Uhh = (np.einsum("...ab,...cd->...abcd", h, h) - hh4) / (S * (S - 1))
        Uhg = (np.einsum("...ab,...cd->...abcd", h, g) - hg) / (S * (S - 1))
        return (fan_in * (q["A"] / S - Uhh), fan_in * q["B"] / S,
                fan_in * (q["D"] / S - Uhg), fan_in * q["F"] / S)

    def finish(self, fan_in: float):
        """The estimates and their jackknife errors: the 20 leave-one-block-out estimates at
        once, as arrays with a leading axis (the total less each block)."""
        tot = lambda x: None if x is None else x.sum(axis=0)  # noqa: E731
        out = lambda x: None if x is None else x.sum(axis=0) - x  # noqa: E731
        n_all, n_out = self.count.sum(), self.count.sum() - self.count

        def err(vals):
            return np.sqrt((BLOCKS - 1) / BLOCKS * ((vals - vals.mean(axis=0)) ** 2).sum(axis=0))

        G, V, Th = self._estimates(n_all, tot(self.g), tot(self.gg), tot(self.p), tot(self.h),
                                   fan_in)
        jG, jV, jTh = self._estimates(n_out, out(self.g), out(self.gg), out(self.p),
                                      out(self.h), fan_in)
        ntk4 = dict.fromkeys(f"{k}{e}" for k in self.NTK4 for e in ("", "_err"))
        if self.q is not None:
            args = lambda x: (x(self.g), x(self.h),  # noqa: E731
                              {k: x(v) for k, v in self.q.items()}, x(self.hh4), x(self.hg), fan_in)
            vals = self._ntk_estimates(n_all, *args(tot))
            jk = self._ntk_estimates(n_out, *args(out))
            for i, k in enumerate(self.NTK4):
                ntk4[k], ntk4[f"{k}_err"] = vals[i], err(jk[i])
        return LayerEstimate(G, err(jG), V, err(jV), Th, None if Th is None else err(jTh), **ntk4)


#: weights (floats) drawn per shard: a shard's networks are as many as hold this many weights
_SHARD_FLOATS = 4_000_000
#: at most this many networks per shard (so that small networks still give several shards)
_SHARD_MAX = 4096


def shard_size(widths) -> int:
    """Networks per shard for layer widths ``widths`` = [n_0, n_1, …, n_L]: as many as hold
    about 4 million weights (at most 4096, at least 1).  It depends on the widths only — not on
    the number of workers, the dtype, the backend or ``ntk`` — so a seed draws the same
    networks whatever runs them."""
    per = sum(w * w0 + w for w, w0 in zip(widths[1:], widths[:-1]))
    return int(max(1, min(_SHARD_MAX, _SHARD_FLOATS // max(per, 1))))


@dataclass(frozen=True)
class _Plan:
    """Everything a shard needs (sent to Dask workers as is): the run's parameters."""

    spec: MLP
    X: np.ndarray
    widths: tuple
    n_networks: int
    seed: int
    ntk: bool
    dtype: str
    backend: str
    device: str | None
    shard: int
    chunk: int

    @property
    def n_shards(self) -> int:
        return -(-self.n_networks // self.shard)

    def networks(self, k: int) -> tuple:
        """(first network, number of networks) of shard ``k``."""
        start = k * self.shard
        return start, min(self.shard, self.n_networks - start)

    def params(self) -> dict:
        """The run's parameters as JSON data (a checkpoint's identity)."""
        return {"spec": repr(self.spec), "activation": str(self.spec.activation.expr),
                "X": self.X.tolist(), "widths": list(self.widths), "n_networks": self.n_networks,
                "seed": self.seed, "ntk": self.ntk, "dtype": self.dtype, "backend": self.backend,
                "shard": self.shard, "blocks": BLOCKS}


def shard_seed(seed: int, k: int) -> np.random.SeedSequence:
    """The seed of shard ``k``: ``numpy.random.SeedSequence(seed).spawn(n_shards)[k]`` (a
    child's spawn key is its index, so this needs no list of all children)."""
    return np.random.SeedSequence(seed, spawn_key=(k,))


def _progress(enabled: bool, done: int, total: int, t0: float, start: int = 0):
    """The progress bar: ``done`` of ``total`` networks, the ETA from the rate since ``t0``, when
    ``start`` of them were done (a resumed checkpoint's networks are not counted in the rate)."""
    if not enabled:
        return
    el = time.perf_counter() - t0
    eta = el / max(done - start, 1) * (total - done)
    bar = "#" * int(30 * done / total)
    sys.stderr.write(f"\rmontecarlo [{bar:<30s}] {done}/{total} networks, ETA {eta:5.1f} s")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()
