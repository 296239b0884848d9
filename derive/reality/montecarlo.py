r"""Ensembles of actual random networks, sampled with the conventions of docs/conventions.md §2.

``sample(spec, X, n_networks, seed=0)`` draws ``n_networks`` independent initialisations of
the network ``spec`` (an MLP or any architecture with a forward equation — a residual network,
…; any widths, per-layer hyperparameters, any activation), pushes the inputs ``X`` (shape
N × n_0) through them, and estimates for every layer ℓ = 1 … L:

``G[ℓ]``
    the metric E[z_{i;α} z_{i;β}] (N × N);
``V[ℓ]``
    n_{ℓ−1} times the connected four-point function across two *different* neurons,
    n_{ℓ−1} (E[z_{i;α1} z_{i;α2} z_{j;α3} z_{j;α4}] − E[z_{i;α1} z_{i;α2}] E[z_{j;α3} z_{j;α4}]), i ≠ j
    (N × N × N × N), which tends to V_{(α1α2)(α3α4)} as n → ∞ (docs/conventions.md §3);
``Theta[ℓ]``
    the NTK mean E[Ĥ_{ii;αβ}] from the NTK forward equation of docs/conventions.md §3 (N × N);
``A[ℓ]``, ``B[ℓ]``, ``D[ℓ]``, ``F[ℓ]``
    the NTK's fluctuations and its correlation with the preactivations, n_{ℓ−1} times a
    statistic of two *different* neurons i ≠ j (N × N × N × N each):
    A_{α1α2α3α4} = n_{ℓ−1} (E[Ĥ_{ii;α1α2} Ĥ_{jj;α3α4}] − E[Ĥ_{ii;α1α2}] E[Ĥ_{jj;α3α4}]),
    B_{α1α2α3α4} = n_{ℓ−1} E[Ĥ_{ij;α1α3} Ĥ_{ij;α2α4}],
    D_{α1α2α3α4} = n_{ℓ−1} (E[Ĥ_{ii;α1α2} z_{j;α3} z_{j;α4}]
                            − E[Ĥ_{ii;α1α2}] E[z_{j;α3} z_{j;α4}]),
    F_{α1α2α3α4} = n_{ℓ−1} E[Ĥ_{ij;α1α3} z_{i;α2} z_{j;α4}],
    which tend to A, B, D, F of docs/conventions.md §3 as n → ∞ (B and F in the index order of
    their δ_{i1i3} δ_{i2i4} terms there; Ĥ_{ij} has mean zero for i ≠ j, so nothing is
    subtracted from them).  At ℓ = 1 Ĥ is the same in every network and all four are 0.  None
    with ``ntk=False``;

each with a standard error (``G_err`` …).  Estimators are unbiased: products of means are
U-statistics across *different* networks (no O(1/S) bias from mean(a·b) − mean(a)·mean(b),
docs/conventions.md §7), and errors come from a 20-block jackknife over networks.  Within a
network, V, A, B, D, F average over all ordered pairs i ≠ j of the layer's neurons, each such
sum being the sum over all i, j less its i = j terms (Σ_{i≠j} x_i y_j = Σx Σy − Σ x_i y_i;
Σ_{i≠j} Ĥ_{ij;αγ} Ĥ_{ij;βδ} = Σ_{i,j} − Σ_i, one matrix product): no array over pairs is
formed.  Everything is float64, vectorised over networks (batched matmuls; set
OPENBLAS_NUM_THREADS=1 for best throughput), seeded, and reports progress on long runs.

Every architecture goes through one forward pass written from its forward equation's parts
(:meth:`~derive.architectures.forward.ForwardEquation.parts`): layer 1 is z = b + W x, and for
ℓ ≥ 1, with the layer's scalars (ξ, γ, …) bound to their values,

    z^{(ℓ+1)} = ξ z^{(ℓ)} + c b + W g(z^{(ℓ)}),
    Ĥ^{(ℓ+1)}_{αβ} = J_α Ĥ^{(ℓ)}_{αβ} J_βᵀ + δ [c² λ_b + (λ_W/n_ℓ) Σ_j g_{j;α} g_{j;β}],
    J_α = ξ 1 + W diag(g'(z^{(ℓ)}_α))

(the chain rule of the equation with λ_b per bias and λ_W/n_ℓ per weight, docs/conventions.md §3).  The MLP
is ξ = 0, c = 1, g = σ; the residual network ξ, c = γ, g = γ σ, which gives
Ĥ' = J Ĥ Jᵀ + γ² δ [λ_b + (λ_W/n_ℓ) Σ σσ] with J = ξ 1 + γ W σ'.  A layer with ξ ≠ 0 adds
neuron i of layer ℓ to neuron i of layer ℓ+1, so both have the same width (the output layer's
too).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import numpy as np
import sympy as sp

from ..activations.catalogue import Activation, numpy_function
from ..architectures.forward import (C_B, C_W, LAMBDA_B, LAMBDA_W, SIGMA, U, WIDTH,
                                     ForwardEquation)
from ..architectures.mlp import MLP
from ..base.errors import DeriveError

__all__ = ["sample", "Ensemble", "LayerEstimate", "MonteCarloError"]

#: jackknife blocks for standard errors
BLOCKS = 20
#: memory budget (floats) for one chunk of networks
_CHUNK_FLOATS = 20_000_000


class MonteCarloError(DeriveError):
    """A Monte Carlo run that cannot give a meaningful answer (bad sizes, overflow)."""


@dataclass(frozen=True)
class LayerEstimate:
    """Estimates for one layer: values and standard errors (see the module docstring)."""

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


def _by_layer(name: str) -> property:
    """An :class:`Ensemble` property: layer → that layer's estimate ``name``."""
    return property(lambda self: {l: getattr(e, name) for l, e in self.layers.items()},
                    doc=f"layer → the estimate of {name} (:class:`LayerEstimate`)")


@dataclass(frozen=True)
class Ensemble:
    """The result of :func:`sample`: ``layers[ℓ]`` is a :class:`LayerEstimate`."""

    spec: MLP
    X: np.ndarray
    n_networks: int
    seed: int
    layers: dict = field(repr=False)

    G = _by_layer("G")
    V = _by_layer("V")
    Theta = _by_layer("Theta")
    A = _by_layer("A")
    B = _by_layer("B")
    D = _by_layer("D")
    F = _by_layer("F")


class _Accumulator:
    """Block sums for the estimators of one layer."""

    #: the NTK's O(1/n) statistics (module docstring): their within-network pair averages
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

    def add(self, blocks: np.ndarray, z: np.ndarray, H: np.ndarray | None):
        """z: (c, n, N) preactivations of c networks; H: their NTK (c, n, n, N, N) or None."""
        n = z.shape[1]
        H_diag = None if H is None else np.einsum("ciiab->ciab", H)
        A = np.einsum("cia,cib->ciab", z, z)              # z_i z_i per neuron
        g = A.mean(axis=1)                                 # per-network metric
        S = A.sum(axis=1)
        same = np.einsum("ciab,cigd->cabgd", A, A)
        p = (np.einsum("cab,cgd->cabgd", S, S) - same) / (n * (n - 1))   # mean over i != j
        gg = np.einsum("cab,cgd->cabgd", g, g)
        q = None if H_diag is None else self._pairs(z, A, S, H_diag, H)
        for b in range(BLOCKS):
            sel = blocks == b
            if not sel.any():
                continue
            self.count[b] += sel.sum()
            self.g[b] += g[sel].sum(axis=0)
            self.gg[b] += gg[sel].sum(axis=0)
            self.p[b] += p[sel].sum(axis=0)
            if H_diag is not None:
                h = H_diag[sel].mean(axis=1)
                self.h[b] += h.sum(axis=0)
                self.hh[b] += (h * h).sum(axis=0)
                self.hh4[b] += np.einsum("sab,scd->abcd", h, h)
                self.hg[b] += np.einsum("sab,scd->abcd", h, g[sel])
                for k in self.NTK4:
                    self.q[k][b] += q[k][sel].sum(axis=0)

    @staticmethod
    def _pairs(z, A, S, Hd, H) -> dict:
        """Per network, the averages over ordered pairs i ≠ j of the layer's neurons of
        Ĥ_{ii;ab} Ĥ_{jj;cd}, Ĥ_{ij;ac} Ĥ_{ij;bd}, Ĥ_{ii;ab} z_{j;c} z_{j;d} and
        Ĥ_{ij;ac} z_{i;b} z_{j;d} (each (c, N, N, N, N), indexed abcd), as Σ_{i,j} − Σ_{i=j}:
        sums over neurons, never an array over pairs.  ``A`` = z_i z_i (c, n, N, N), ``S`` its
        sum over neurons."""
        c, n, N = z.shape
        pairs = n * (n - 1)
        Hs = Hd.sum(axis=1)                                            # Σ_i Ĥ_ii
        # the i = j terms, as (N² × n)(n × N²) products:
        # dHH = Σ_i Ĥ_{ii;ab} Ĥ_{ii;cd}, dHz = Σ_i Ĥ_{ii;ab} z_{i;c} z_{i;d}
        Hd2 = np.swapaxes(Hd.reshape(c, n, N * N), 1, 2)
        dHH = np.matmul(Hd2, Hd.reshape(c, n, N * N)).reshape(c, N, N, N, N)
        dHz = np.matmul(Hd2, A.reshape(c, n, N * N)).reshape(c, N, N, N, N)
        pA = (np.einsum("sab,scd->sabcd", Hs, Hs) - dHH) / pairs
        pD = (np.einsum("sab,scd->sabcd", Hs, S) - dHz) / pairs
        # B and F are built in the order [s, a, c, b, d] (Ĥ_{ij;ac} first), where their i = j
        # terms are dHH and dHz as they stand, then turned to [s, a, b, c, d]
        # Σ_{ij} Ĥ_{ij;ac} Ĥ_{ij;bd}: one (N² × n²)(n² × N²) product per network
        M = H.reshape(c, n * n, N * N)
        full = np.matmul(np.swapaxes(M, 1, 2), M).reshape(c, N, N, N, N)
        pB = np.swapaxes(full - dHH, 2, 3) / pairs
        # Σ_{ij} Ĥ_{ij;ac} z_{i;b} z_{j;d}: contract i with z (an (N × n)(n × n N²) product), then j
        Y = np.matmul(np.swapaxes(z, 1, 2), H.reshape(c, n, n * N * N)).reshape(c, N, n, N, N)
        full = np.einsum("sbjac,sjd->sacbd", Y, z)
        pF = np.swapaxes(full - dHz, 2, 3) / pairs
        return {"A": pA, "B": pB, "D": pD, "F": pF}

    @staticmethod
    def _estimates(count, g, gg, p, h, fan_in):
        S = count
        G = g / S
        U = (np.einsum("ab,gd->abgd", g, g) - gg) / (S * (S - 1))  # E[A]E[B] from distinct networks
        V = fan_in * (p / S - U)
        Th = None if h is None else h / S
        return G, V, Th

    @staticmethod
    def _ntk_estimates(count, g, h, q, hh4, hg, fan_in):
        """A, B, D, F: n (pair average − U-statistic of the means) for A and D; n · pair average
        for B and F (Ĥ_ij, i ≠ j, has mean zero)."""
        S = count
        Uhh = (np.einsum("ab,cd->abcd", h, h) - hh4) / (S * (S - 1))
        Uhg = (np.einsum("ab,cd->abcd", h, g) - hg) / (S * (S - 1))
        return (fan_in * (q["A"] / S - Uhh), fan_in * q["B"] / S,
                fan_in * (q["D"] / S - Uhg), fan_in * q["F"] / S)

    def finish(self, fan_in: float):
        tot = lambda x: None if x is None else x.sum(axis=0)  # noqa: E731
        G, V, Th = self._estimates(self.count.sum(), tot(self.g), tot(self.gg), tot(self.p),
                                   tot(self.h), fan_in)
        jack = []
        for b in range(BLOCKS):
            keep = lambda x: None if x is None else x.sum(axis=0) - x[b]  # noqa: E731
            jack.append(self._estimates(self.count.sum() - self.count[b], keep(self.g),
                                        keep(self.gg), keep(self.p), keep(self.h), fan_in))
        def err(k, jack=jack):
            vals = np.stack([j[k] for j in jack])
            return np.sqrt((BLOCKS - 1) / BLOCKS * ((vals - vals.mean(axis=0)) ** 2).sum(axis=0))
        ntk4 = dict.fromkeys(f"{k}{e}" for k in self.NTK4 for e in ("", "_err"))
        if self.q is not None:
            args = lambda x: (x(self.g), x(self.h),  # noqa: E731
                              {k: x(v) for k, v in self.q.items()}, x(self.hh4), x(self.hg), fan_in)
            vals = self._ntk_estimates(self.count.sum(), *args(tot))
            jk = [self._ntk_estimates(self.count.sum() - self.count[b],
                                      *args(lambda x, b=b: x.sum(axis=0) - x[b]))
                  for b in range(BLOCKS)]
            for i, k in enumerate(self.NTK4):
                ntk4[k], ntk4[f"{k}_err"] = vals[i], err(i, jk)
        return LayerEstimate(G, err(0), V, err(1), Th, None if Th is None else err(2), **ntk4)


@dataclass(frozen=True)
class _Compiled:
    """A forward equation's parts for one activation: ``xi``, ``c`` as SymPy expressions in
    the layer's scalars, and numpy functions ``g(z, *g_args values)``, ``dg(z, *dg_args
    values)`` (``dg`` None when g' has no pointwise values)."""

    xi: sp.Expr
    c: sp.Expr
    g: object
    dg: object
    g_args: tuple
    dg_args: tuple


_COMPILED: dict = {}


def _compile(activation: Activation, equation: ForwardEquation) -> _Compiled:
    """``equation.parts()`` with σ replaced by ``activation`` (in the activation's own variable,
    so an MLP's g and g' are σ and σ' exactly), g' taken symbolically, both lambdified; cached
    per (activation, equation)."""
    key = (activation, equation)
    if key in _COMPILED:
        return _COMPILED[key]
    xi, c, g = equation.parts()
    zs = activation.z
    names = tuple(equation.scalars) + (C_B, C_W, LAMBDA_B, LAMBDA_W, WIDTH)
    ge = g.xreplace({U: zs}).replace(SIGMA, lambda arg: activation.expr.xreplace({zs: arg}))
    stray = (ge.free_symbols | xi.free_symbols | c.free_symbols) - set(names) - {zs}
    if stray or ge.has(SIGMA):
        raise MonteCarloError(f"the forward equation {equation.name!r} has parts {(xi, c, g)} "
                              f"the sampler cannot evaluate (unbound: {sorted(map(str, stray))})")
    g_args = tuple(s for s in names if s in ge.free_symbols)
    dge = sp.diff(ge, zs)
    dg_args = tuple(s for s in names if s in dge.free_symbols)
    try:
        dg = numpy_function(dge, (zs,) + dg_args)
    except DeriveError:    # g' holds a Dirac delta (σ jumps): the NTK is refused before use
        dg = None
    out = _Compiled(xi, c, numpy_function(ge, (zs,) + g_args), dg, g_args, dg_args)
    _COMPILED[key] = out
    return out


@dataclass(frozen=True)
class _Step:
    """Layer ℓ+1's equation with its values bound: z' = xi z + c b + W g(z)."""

    xi: float
    c: float
    g: object
    dg: object


def _steps(spec: MLP, widths: list) -> dict:
    """The bound equation of every layer ℓ = 2 … L (keyed by ℓ)."""
    eq = spec.equation
    comp = _compile(spec.activation, eq)
    steps = {}
    for l in range(2, spec.depth + 1):
        env = dict(zip(eq.scalars, spec.scalar_values(l)))
        env.update({C_B: spec.C_b(l), C_W: spec.C_W(l), LAMBDA_B: spec.lambda_b(l),
                    LAMBDA_W: spec.lambda_W(l), WIDTH: widths[l - 1]})
        xi, c = (float(e.xreplace(env)) for e in (comp.xi, comp.c))
        ga = tuple(env[s] for s in comp.g_args)
        da = tuple(env[s] for s in comp.dg_args)
        g = comp.g if not ga else (lambda z, f=comp.g, a=ga: f(z, *a))
        dg = comp.dg if comp.dg is None or not da else (lambda z, f=comp.dg, a=da: f(z, *a))
        steps[l] = _Step(xi, c, g, dg)
    return steps


def _progress(enabled: bool, done: int, total: int, t0: float):
    if not enabled:
        return
    el = time.perf_counter() - t0
    eta = el / max(done, 1) * (total - done)
    bar = "#" * int(30 * done / total)
    sys.stderr.write(f"\rmontecarlo [{bar:<30s}] {done}/{total} networks, ETA {eta:5.1f} s")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def sample(spec: MLP, X, n_networks: int, seed: int = 0, *, output_width: int | None = None,
           ntk: bool = True, progress: bool | None = None) -> Ensemble:
    r"""Sample ``n_networks`` random networks of ``spec`` on inputs ``X`` (N × n_0).

    ``output_width`` is the width of layer L (not part of the spec; default: the last hidden
    width, or 8 for a one-layer network; an output layer with a skip term must keep the hidden
    width).  ``ntk=False`` skips the NTK (faster).
    ``progress`` (default: when stderr is a terminal and the run is long) prints a bar with ETA.
    """
    if not isinstance(spec, MLP):
        raise MonteCarloError(f"spec must be a derive.MLP, got {type(spec).__name__}")
    X = np.asarray(X, dtype=float)
    if X.ndim != 2 or X.shape[0] < 1 or X.shape[1] < 1:
        raise MonteCarloError(f"X must have shape (N inputs, n_0 features), got {X.shape}")
    if not np.all(np.isfinite(X)):
        raise MonteCarloError("X contains NaN or infinite entries")
    if isinstance(n_networks, bool) or not isinstance(n_networks, (int, np.integer)) or n_networks < 2 * BLOCKS:
        raise MonteCarloError(f"n_networks must be a whole number ≥ {2 * BLOCKS} (error bars come from "
                              f"a {BLOCKS}-block jackknife), got {n_networks!r}")
    L = spec.depth
    n_out = output_width if output_width is not None else (spec.widths[-1] if spec.widths else 8)
    widths = [X.shape[1], *spec.widths, int(n_out)]
    if min(widths[1:]) < 2:
        raise MonteCarloError(f"every layer needs ≥ 2 neurons to estimate cross-neuron correlators; "
                              f"widths are {widths[1:]}")
    steps = _steps(spec, widths)
    for l, st in steps.items():
        if st.xi != 0 and widths[l] != widths[l - 1]:
            why = (f"layer {l} has the skip term ξ z^({l - 1})_i (ξ = {st.xi:g}), which adds neuron i "
                   f"of layer {l - 1} to neuron i of layer {l}, so both need the same width")
            if l == L:
                raise MonteCarloError(
                    f"output_width={n_out} is refused: {why}, n_{l - 1} = {widths[l - 1]}; leave "
                    f"output_width out (it defaults to the hidden width) or give {widths[l - 1]}")
            raise MonteCarloError(f"{why}, but n_{l - 1} = {widths[l - 1]} and n_{l} = {widths[l]}")
    skip = any(st.xi != 0 for st in steps.values())
    N = X.shape[0]
    if ntk:
        spec.activation.require_ntk("the NTK of the sampled networks")
        if any(st.dg is None for st in steps.values()):
            raise MonteCarloError("the NTK of the sampled networks needs g'(z) of the forward "
                                  "equation, which has no pointwise values (a Dirac delta)")
    # floats per network: weights, the NTK (Ĥ and its products: 3 arrays of n² N², 4 with a
    # skip term) and the four-point products (V's; A … F's are N⁴ arrays and one of n N³, made
    # while only Ĥ itself is held, so below the NTK's peak: the estimate, and with it the chunks
    # and the draws of a seed, stay as they were)
    per_net = sum(w * w0 for w, w0 in zip(widths[1:], widths[:-1])) + \
        (max(widths[1:]) ** 2 * N * N * (4 if skip else 3) if ntk else 0) + max(widths) * N * N * N * N
    chunk = int(max(BLOCKS, min(n_networks, _CHUNK_FLOATS // max(per_net, 1))))
    rng = np.random.default_rng(seed)
    acc = {l: _Accumulator(N, ntk) for l in range(1, L + 1)}
    t0 = time.perf_counter()
    show = progress
    done = 0
    while done < n_networks:
        c = min(chunk, n_networks - done)
        blocks = (np.arange(done, done + c)) % BLOCKS
        # drawn lazily, layer by layer, in the order W^{(1)}, b^{(1)}, W^{(2)}, …
        params = ((rng.standard_normal((c, n_l, n_in)) * np.sqrt(spec.C_W(l) / n_in),
                   rng.standard_normal((c, n_l)) * np.sqrt(spec.C_b(l)))
                  for l, n_in, n_l in zip(range(1, L + 1), widths[:-1], widths[1:]))
        for l, z, H in _forward(spec, steps, X, params, ntk):
            acc[l].add(blocks, z, H)
        done += c
        if show is None:
            show = sys.stderr.isatty() and (time.perf_counter() - t0) * n_networks / done > 2.0
        _progress(bool(show), done, n_networks, t0)
    layers = {l: acc[l].finish(widths[l - 1]) for l in range(1, L + 1)}
    return Ensemble(spec, X, int(n_networks), int(seed), layers)


def _forward(spec: MLP, steps: dict, X: np.ndarray, params, ntk: bool):
    """The forward pass of c networks of ``spec`` on inputs ``X`` (N × n_0), from the forward
    equation (module docstring).  ``params`` yields, for ℓ = 1 … L in turn, the layer's weights
    W^{(ℓ)} (c, n_ℓ, n_{ℓ−1}) and biases b^{(ℓ)} (c, n_ℓ) — the parameters θ the NTK
    differentiates by; it is read one layer at a time.  Yields ``(ℓ, z, H)`` per layer: the
    preactivations z (c, n_ℓ, N) and the NTK Ĥ (c, n_ℓ, n_ℓ, N, N), None when ``ntk`` is false."""
    G0 = X @ X.T / X.shape[1]
    z = None
    H = None
    prev = None
    for l, (W, b) in enumerate(params, 1):
        c, n_outl, n_in = W.shape
        if l == 1:
            prev = np.broadcast_to(X.T, (c,) + X.T.shape)       # (c, n_0, N): layer-0 "activations"
        st = steps.get(l)
        if l > 1:
            with np.errstate(over="ignore", invalid="ignore"):
                s = st.g(z)
                if ntk:
                    ds = st.dg(z)
            prev = s
            if st.c != 1:
                b = st.c * b
        with np.errstate(over="ignore", invalid="ignore"):
            z_new = np.matmul(W, prev) + b[:, :, None]
            if l > 1 and st.xi != 0:
                z_new = st.xi * z + z_new
        if not np.all(np.isfinite(z_new)):
            raise MonteCarloError(f"layer {l}: preactivations overflowed (NaN/inf); the "
                                  "initialisation diverges for this spec")
        if ntk:
            eye = np.eye(n_outl)
            if l == 1:
                base = spec.lambda_b(1) + spec.lambda_W(1) * G0
                H = np.einsum("ij,ab->ijab", eye, base)[None].repeat(c, axis=0)
            else:
                lam_b = spec.lambda_b(l) if st.c == 1 else st.c * st.c * spec.lambda_b(l)
                base = lam_b + spec.lambda_W(l) * np.einsum("cja,cjb->cab", prev, prev) / n_in
                H = np.einsum("ij,cab->cijab", eye, base) + _carried(H, W, ds, st.xi)
        z = z_new
        yield l, z, H


def _network(spec: MLP, X, Ws, bs, ntk: bool = True) -> list:
    """The forward pass of given networks: ``Ws[ℓ−1]`` (c, n_ℓ, n_{ℓ−1}) and ``bs[ℓ−1]`` (c, n_ℓ)
    are the weights and biases of layer ℓ (c networks).  Returns ``[(z, H), …]`` for ℓ = 1 … L,
    exactly as :func:`sample` computes them (a hook for tests)."""
    X = np.asarray(X, dtype=float)
    widths = [X.shape[1]] + [W.shape[1] for W in Ws]
    steps = _steps(spec, widths)
    return [(z, H) for _, z, H in _forward(spec, steps, X, zip(Ws, bs), ntk)]


def _carried(H: np.ndarray, W: np.ndarray, dg: np.ndarray, xi: float) -> np.ndarray:
    """Σ_{kl} J_{ik;α} J_{jl;β} Ĥ_{kl;αβ} with J_α = ξ 1 + W diag(g'(z_α)): ``H`` (c, n, n, N, N),
    ``W`` (c, n', n), ``dg`` (c, n, N); returns (c, n', n', N, N)."""
    Wt = np.swapaxes(W, 1, 2)[:, None, None]
    if xi == 0:
        M = np.einsum("cja,ckb,cjkab->cabjk", dg, dg, H)            # (c, N, N, n, n)
        WMW = np.matmul(np.matmul(W[:, None, None], M), Wt)
    else:
        # (ξ 1 + W D_α) Ĥ_αβ (ξ 1 + D_β Wᵀ) = ξ T + (T D_β) Wᵀ with T = ξ Ĥ_αβ + W D_α Ĥ_αβ
        Hs = np.moveaxis(H, (3, 4), (1, 2))                         # (c, N, N, n, n) view
        dgT = np.swapaxes(dg, 1, 2)                                 # (c, N, n)
        T = np.matmul(W[:, None, None], dgT[:, :, None, :, None] * Hs)
        T += xi * Hs
        WMW = np.matmul(T * dgT[:, None, :, None, :], Wt)
        WMW += xi * T
    return np.moveaxis(WMW, (1, 2), (3, 4))
