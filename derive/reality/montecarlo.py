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
formed.  Everything is vectorised over networks (batched matmuls; set
OPENBLAS_NUM_THREADS=1 for best throughput), seeded, and reports progress on long runs.

The networks are drawn in *shards* of a size fixed by the widths (:func:`shard_size`), shard k
from ``numpy.random.SeedSequence(seed).spawn(n_shards)[k]``, parameters always in float64;
each shard's block sums are merged in shard order (:mod:`derive.reality.distributed`), so a
seed gives the same statistics bit for bit whether the shards run here or on any number of
Dask workers, and a checkpointed run resumes exactly.  The forward pass runs in float64
(default) or float32 (``dtype``), in numpy or PyTorch (``backend``, on a GPU when there is
one); the per-network statistics are formed and accumulated in float64 in every case, so the
connected correlators (V, A, D: differences of nearly equal sums) are never differenced in
float32 — only the preactivations and Ĥ carry float32's rounding (≈ 1e-7 relative, unbiased;
tests/test_montecarlo_scaling.py measures its effect at below 5 % of an error bar).

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

import threading
from dataclasses import dataclass, field

import numpy as np
import sympy as sp

from ..activations.catalogue import Activation, numpy_function
from ..architectures.forward import (C_B, C_W, LAMBDA_B, LAMBDA_W, SIGMA, U, WIDTH,
                                     ForwardEquation)
from ..architectures.mlp import MLP
from ..base.errors import DeriveError
from .distributed import run
from .shards import (BLOCKS, LayerEstimate, MonteCarloError, _Accumulator, _Plan, shard_seed,
                     shard_size)

__all__ = ["sample", "three_neuron", "Ensemble", "ThreeNeuron", "LayerEstimate", "MonteCarloError"]

#: memory budget (floats) for one chunk of networks
_CHUNK_FLOATS = 20_000_000


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
    #: the SymPy expressions of g and g' and their variables (z first), for other backends
    g_expr: sp.Expr = None
    dg_expr: sp.Expr = None
    z: sp.Symbol = None


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
    out = _Compiled(xi, c, numpy_function(ge, (zs,) + g_args), dg, g_args, dg_args,
                    ge, dge if dg is not None else None, zs)
    _COMPILED[key] = out
    return out


@dataclass(frozen=True)
class _Step:
    """Layer ℓ+1's equation with its values bound: z' = xi z + c b + W g(z)."""

    xi: float
    c: float
    g: object
    dg: object


def _steps(spec: MLP, widths: list, xp=None) -> dict:
    """The bound equation of every layer ℓ = 2 … L (keyed by ℓ), with g and g' as functions
    of the backend ``xp``'s arrays (numpy float64 by default)."""
    xp = xp or _NUMPY
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
        g = xp.function(comp.g, comp.g_expr, (comp.z,) + comp.g_args, ga)
        dg = None if comp.dg is None else \
            xp.function(comp.dg, comp.dg_expr, (comp.z,) + comp.dg_args, da)
        steps[l] = _Step(xi, c, g, dg)
    return steps


# -- array backends ----------------------------------------------------------------------------

#: the array dtypes of the forward pass (statistics are always accumulated in float64)
DTYPES = ("float64", "float32")
#: the array backends of the forward pass
BACKENDS = ("numpy", "torch")


class _NumpyBackend:
    """The forward pass in numpy arrays of ``dtype`` (the default backend)."""

    name = "numpy"
    matmul = staticmethod(np.matmul)
    einsum = staticmethod(np.einsum)
    swapaxes = staticmethod(np.swapaxes)
    moveaxis = staticmethod(np.moveaxis)

    def __init__(self, dtype: str = "float64"):
        self.dtype = np.dtype(dtype)

    def f64(self, a):
        return a if a.dtype == np.float64 else a.astype(np.float64)

    @staticmethod
    def contiguous(a):
        return np.ascontiguousarray(a)

    @staticmethod
    def host(a) -> np.ndarray:
        return a

    def asarray(self, a: np.ndarray):
        return a if a.dtype == self.dtype else a.astype(self.dtype)

    @staticmethod
    def expand(a, shape):
        return np.broadcast_to(a, shape)

    #: up to this many inputs W x is one matrix-vector product per input (BLAS gemv, reading W
    #: once per input), beyond it one matrix product (gemm, which copies W into its packed
    #: layout first: twice the time of two gemv's for N = 2)
    GEMV_INPUTS = 4

    def affine(self, W, xT, b, scale: float = 1.0, c_b: float = 1.0, fill=None):
        """s W x_α + c_b b for every input α, input-major: W (c, m, n), xT (c, N, n) (input
        α's activations in row α), b (c, m) → (c, N, m); s = ``scale``.  The products are
        formed piece by piece (:func:`_pieces`, fixed by the shape); ``fill``, when given, is
        called with each piece of W (a view) just before it is used — the draws, so that each
        piece is multiplied while it is still in the cache — and ``b`` is then a callable
        giving b (drawn after all of W)."""
        c, m, n = W.shape
        N = xT.shape[1]
        out = np.empty((c, N, m), dtype=np.result_type(W, xT))
        for nets, rows in _pieces(c, m, n):
            w = W[nets, rows]
            if fill is not None:
                fill(w)
            if N <= self.GEMV_INPUTS:
                for a in range(N):
                    np.matmul(w, xT[nets, a, :, None], out=out[nets, a, rows, None])
            else:
                np.matmul(xT[nets], np.swapaxes(w, 1, 2), out=out[nets, :, rows])
        if scale != 1:
            out *= scale
        b = b() if callable(b) else b
        out += (b if c_b == 1 else c_b * b)[:, None, :]
        return out

    def eye(self, n: int):
        return np.eye(n, dtype=self.dtype)

    @staticmethod
    def all_finite(a) -> bool:
        return bool(np.all(np.isfinite(a)))

    @staticmethod
    def errstate():
        return np.errstate(over="ignore", invalid="ignore")

    def function(self, f, expr, variables, args):
        """``f(z, *args)`` (f a numpy function of g or g', float64) in this dtype."""
        if self.dtype == np.float64:
            return f if not args else (lambda z: f(z, *args))
        return lambda z: f(z, *args).astype(self.dtype)


_NUMPY = _NumpyBackend()

#: floats of W in one piece of the products W x (512 KB, half a core's L2 cache)
_PIECE = 65536


def _pieces(c: int, m: int, n: int) -> list:
    """(networks, rows) slices cutting weights W (c, m, n) into pieces of about ``_PIECE``
    floats, in the order of W's elements: k whole networks at a time, or, when one network's
    W is larger, R of its rows at a time.  They depend on the shape only (a row's product can
    depend on the piece it is in, through BLAS's kernels), so every path of the sampler forms
    W x in the same pieces."""
    if m * n <= _PIECE:
        k = _PIECE // (m * n)
        return [(slice(s, min(c, s + k)), slice(None)) for s in range(0, c, k)]
    R = max(1, _PIECE // n)
    return [(slice(i, i + 1), slice(r, min(m, r + R))) for i in range(c) for r in range(0, m, R)]


class _TorchBackend:
    """The forward pass in PyTorch tensors of ``dtype`` on ``device`` (``derive[torch]``).
    Parameters are drawn by numpy's generator, as in the numpy backend, and copied to the
    device, so that a seed gives the same networks on every backend."""

    name = "torch"

    def __init__(self, dtype: str, device):
        import torch

        self.torch = torch
        self.dtype = getattr(torch, dtype)
        self.device = torch.device(device)
        self.matmul, self.einsum = torch.matmul, torch.einsum
        self.swapaxes, self.moveaxis = torch.swapaxes, torch.moveaxis

    def f64(self, a):
        return a.to(self.torch.float64)

    @staticmethod
    def contiguous(a):
        return a.contiguous()

    @staticmethod
    def host(a) -> np.ndarray:
        return a.detach().cpu().numpy()

    def asarray(self, a: np.ndarray):
        return self.torch.from_numpy(np.ascontiguousarray(a)).to(device=self.device,
                                                                 dtype=self.dtype)

    @staticmethod
    def expand(a, shape):
        return a.expand(shape)

    def affine(self, W, xT, b, scale: float = 1.0, c_b: float = 1.0, fill=None):
        """As :meth:`_NumpyBackend.affine` (without ``fill``): s W x_α + c_b b per input α,
        input-major (c, N, m)."""
        out = self.torch.matmul(xT, W.transpose(1, 2))
        if scale != 1:
            out = out * scale
        return out + (b if c_b == 1 else c_b * b)[:, None, :]

    def eye(self, n: int):
        return self.torch.eye(n, dtype=self.dtype, device=self.device)

    def all_finite(self, a) -> bool:
        return bool(self.torch.isfinite(a).all())

    @staticmethod
    def errstate():
        from contextlib import nullcontext

        return nullcontext()

    def function(self, f, expr, variables, args):
        """g or g' as a torch function (SymPy's torch printer); where that printer fails or
        disagrees with numpy on a test grid, numpy on the host (exact, slower)."""
        torch = self.torch
        grid = np.linspace(-3.0, 3.0, 13)
        ref = np.broadcast_to(np.asarray(f(grid, *args), dtype=float), grid.shape)
        try:
            fn = _torch_lambdify(expr, variables)
            got = fn(torch.from_numpy(grid), *args)
            got = torch.as_tensor(got, dtype=torch.float64).expand(grid.shape).numpy()
            ok = np.allclose(got, ref, rtol=1e-12, atol=1e-12, equal_nan=True)
        except Exception:  # noqa: BLE001 (any failure of the printer: use numpy instead)
            ok = False
        if ok:
            def g(z):
                return torch.as_tensor(fn(z, *args), dtype=z.dtype, device=z.device).expand(z.shape)
            return g

        def g_host(z):
            out = np.asarray(f(z.detach().cpu().numpy().astype(float), *args), dtype=float)
            return torch.from_numpy(np.array(np.broadcast_to(out, z.shape))).to(
                device=z.device, dtype=z.dtype)
        return g_host


def _torch_lambdify(expr, variables):
    """SymPy's torch lambdify, with Max/Min/Heaviside made tensor-safe."""
    import torch

    def as_t(a, like):
        return a if torch.is_tensor(a) else torch.as_tensor(a, dtype=like.dtype, device=like.device)

    def folded(op):  # Max/Min of any number of arguments, numbers among them
        def fold(*a):
            t = next(x for x in a if torch.is_tensor(x))
            out = as_t(a[0], t)
            for x in a[1:]:
                out = op(out, as_t(x, t))
            return out
        return fold

    tmax, tmin = folded(torch.maximum), folded(torch.minimum)

    def heaviside(x, h0=0.5):
        return torch.heaviside(x, torch.as_tensor(h0, dtype=x.dtype, device=x.device))

    rep = {}
    for node in expr.atoms(sp.Max, sp.Min):
        rep[node] = sp.Function("_DeriveMax" if isinstance(node, sp.Max) else "_DeriveMin")(*node.args)
    for node in expr.atoms(sp.Heaviside):
        rep[node] = sp.Function("_DeriveHeaviside")(node.args[0])
    # constants such as sqrt(pi) as numbers (torch.sqrt takes tensors only), also inside a
    # function's argument (GELU's erf(z/√2)), where evalf leaves them
    e = (expr.xreplace(rep) if rep else expr).replace(
        lambda x: x.is_number and not x.is_Number, lambda x: sp.Float(x.evalf(17), 17)).evalf(17)
    from sympy.printing.pytorch import TorchPrinter

    return sp.lambdify(variables, e, modules=[{"_DeriveMax": tmax, "_DeriveMin": tmin,
                                               "_DeriveHeaviside": heaviside}, "torch"],
                       printer=TorchPrinter({"strict": False}))


_TORCH_MISSING = ("backend='torch' needs PyTorch, which is not installed: pip install "
                  "'derive[torch]' (or use backend='numpy', the default)")


def _backend(backend: str, dtype: str, device):
    """The backend object for (``backend``, ``dtype``, ``device``); checked arguments."""
    if backend == "numpy":
        if device is not None:
            raise MonteCarloError(f"device={device!r} needs backend='torch'; the numpy backend "
                                  "runs on the CPU (leave device out)")
        return _NUMPY if dtype == "float64" else _NumpyBackend(dtype)
    try:
        import torch
    except ImportError:
        raise MonteCarloError(_TORCH_MISSING) from None
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
        torch.zeros(1, device=dev)
    except (RuntimeError, TypeError, ValueError, AssertionError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise MonteCarloError(f"device={device!r} is not usable by PyTorch ({first}); give "
                              f"'cpu', 'cuda' or 'cuda:K' for an available GPU") from None
    return _TorchBackend(dtype, str(dev))


def _check_dtype_backend(dtype, backend) -> tuple:
    """``dtype`` as 'float64'/'float32' and ``backend`` as a known name, or a clear error."""
    try:
        name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    except TypeError:
        name = repr(dtype)
    if name not in DTYPES:
        raise MonteCarloError(f"dtype must be one of {list(DTYPES)} (the forward pass; statistics "
                              f"are accumulated in float64 either way), got {dtype!r}")
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise MonteCarloError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    return name, backend


_LOCAL = threading.local()


def _buffer(key, k, shape, dtype=np.float64) -> np.ndarray:
    """The reused array ``k`` of the draws ``key`` (per thread), of ``shape`` (c networks
    first): no fresh pages for every shard.  An array made for more networks serves a shard
    of fewer (its first c, contiguous), so a run's short last shard does not make new ones."""
    bufs = getattr(_LOCAL, "bufs", None)
    if bufs is None or bufs.get("key") != key:
        bufs = _LOCAL.bufs = {"key": key}
    buf = bufs.get(k)
    if buf is None or buf.shape[0] < shape[0] or buf.shape[1:] != tuple(shape[1:]):
        buf = bufs[k] = np.empty(shape, dtype=dtype)
    return buf[:shape[0]]


def _draw(plan: _Plan, rng, c: int, dtype=np.float64, lazy: bool = False,
          pieces: bool = False):
    """The parameters of ``c`` networks, drawn in the order W^{(1)}, b^{(1)}, W^{(2)}, …: per
    layer (W (c, n_ℓ, n_{ℓ−1}), b (c, n_ℓ), s), the weights being s W.  In float64 W is the
    standard normals as drawn and s = √(C_W/n_{ℓ−1}), which the forward pass applies to the
    products W x (c n_ℓ N numbers instead of c n_ℓ n_{ℓ−1}); in float32 W is already scaled
    (the float64 weights, rounded) and s = 1.  b is scaled by √C_b in float64 (then rounded to
    ``dtype``).  ``lazy``: a generator that draws each layer when asked for it, into one
    reused array per shape (the caller is done with a layer before it asks for the next);
    otherwise a list, each layer in an array of its own.  ``pieces`` (with ``lazy``, for the
    numpy forward pass): per layer (W, b, s, fill), W not yet drawn: ``fill(w)`` draws the
    next piece w of it (a view, in the order of W's elements; :meth:`_NumpyBackend.affine`
    asks for them) and ``b()`` draws b once all of W is drawn — the same numbers as at once."""
    real = type(rng) is np.random.Generator      # a test double only has standard_normal(shape)
    pieces = pieces and lazy and real
    shapes = tuple(s for n_in, n_l in zip(plan.widths[:-1], plan.widths[1:])
                   for s in ((c, n_l, n_in), (c, n_l)))
    key = (tuple(s[1:] for s in shapes), np.dtype(dtype).name, lazy)
    f64 = np.dtype(dtype) == np.float64

    def scale_of(k):
        l, n_in = k // 2 + 1, plan.widths[k // 2]
        return np.sqrt(plan.spec.C_W(l) / n_in) if k % 2 == 0 else np.sqrt(plan.spec.C_b(l))

    def one(k, shape):
        scale = scale_of(k)
        slot = shape[1:] if lazy else k
        raw = _buffer(key, slot if f64 else ("raw", shape[1:]), shape)
        a = rng.standard_normal(shape, out=raw) if real else rng.standard_normal(shape)
        if f64:
            if k % 2 == 0:
                return a, scale
            a *= scale
            return a, 1.0
        return np.multiply(a, scale, out=_buffer(key, slot, shape, dtype),
                           casting="same_kind"), 1.0

    def later(k, shape):
        """Layer k // 2's W, to be drawn piece by piece, and its fill."""
        W = _buffer(key, shape[1:], shape, dtype)
        if f64:
            return W, scale_of(k), lambda w: rng.standard_normal(w.shape, out=w)
        scale = scale_of(k)

        def fill(w):
            raw = np.empty(w.shape)
            np.multiply(rng.standard_normal(w.shape, out=raw), scale, out=w, casting="same_kind")
        return W, 1.0, fill

    def layers():
        for k in range(0, len(shapes), 2):
            if pieces:
                W, s, fill = later(k, shapes[k])
                yield W, (lambda k=k: one(k + 1, shapes[k + 1])[0]), s, fill
            else:
                (W, s), (b, _) = one(k, shapes[k]), one(k + 1, shapes[k + 1])
                yield W, b, s
    return layers() if lazy else list(layers())


_BACKENDS: dict = {}


def _plan_backend(plan: _Plan):
    key = (plan.backend, plan.dtype, plan.device)
    if key not in _BACKENDS:
        _BACKENDS[key] = _backend(*key)
    return _BACKENDS[key]


def _run_shard(plan: _Plan, k: int) -> dict:
    """Shard ``k`` of the run: its networks drawn with its own generator (:func:`shard_seed`),
    pushed through in chunks of ``plan.chunk``, accumulated; returns {ℓ: _Accumulator}."""
    xp = _plan_backend(plan)
    acc = {l: _Accumulator(plan.X.shape[0], plan.ntk) for l in range(1, plan.spec.depth + 1)}
    for blocks, l, z, H in _shard_pass(plan, k):
        acc[l].add(blocks, z, H, xp)
    return acc


def _shard_pass(plan: _Plan, k: int):
    """The forward pass of shard ``k``'s networks (drawn with :func:`shard_seed`, in chunks
    of ``plan.chunk``): yields ``(blocks, ℓ, z, H)`` per chunk and layer, ``blocks`` the
    jackknife block of each network of the chunk (its index in the run, modulo BLOCKS)."""
    xp = _plan_backend(plan)
    key = (repr(plan.spec), str(plan.spec.activation.expr), plan.spec.equation, plan.widths, xp)
    if getattr(_LOCAL, "steps", (None,))[0] != key:       # the same for every shard of a run
        _LOCAL.steps = (key, _steps(plan.spec, list(plan.widths), xp))
    steps = _LOCAL.steps[1]
    start, c = plan.networks(k)
    rng = np.random.default_rng(shard_seed(plan.seed, k))
    dtype = xp.dtype if plan.backend == "numpy" else np.float64
    if plan.chunk >= c:
        # one chunk: each layer drawn just before the forward pass needs it
        if plan.backend == "numpy":     # each piece of W multiplied as soon as it is drawn
            layers = _draw(plan, rng, c, dtype, lazy=True, pieces=True)
        else:
            layers = ((xp.asarray(W), xp.asarray(b), s)
                      for W, b, s in _draw(plan, rng, c, dtype, lazy=True))
        chunks = [(0, c, layers)]
    else:
        params = _draw(plan, rng, c, dtype)
        chunks = [(s, min(c, s + plan.chunk), _slices(xp, params, s, min(c, s + plan.chunk)))
                  for s in range(0, c, plan.chunk)]
    for s, e, sub in chunks:
        blocks = np.arange(start + s, start + e) % BLOCKS
        for l, z, H in _forward(plan.spec, steps, plan.X, sub, plan.ntk, xp):
            yield blocks, l, z, H


# -- the three-neuron cumulant (the O(1/n²) check) -----------------------------------------------


class _ThreeAccumulator:
    r"""Block sums for n_{ℓ−1}² κ3(z_i z_i, z_j z_j, z_k z_k) of one layer, i, j, k distinct.

    Per network, with a_i = z_{i;α1} z_{i;α2} (one of N² components, flattened), the averages
    over the layer's neurons: g (singles), p (ordered pairs i ≠ j) and t (ordered triples of
    distinct neurons), from the sums S1 = Σ a_i, S2 = Σ a_i ⊗ a_i, S3 = Σ a_i ⊗ a_i ⊗ a_i:
    Σ_{i≠j} a_i ⊗ b_j = S1 ⊗ S1 − S2 and Σ_{i,j,k distinct} a_i b_j c_k =
    S1⊗S1⊗S1 − S2_{ab} S1_c − S2_{ac} S1_b − S2_{bc} S1_a + 2 S3_{abc} (no array over triples).
    By exchangeability E[t] = E[a_i b_j c_k], E[p] = E[a_i b_j], E[g] = E[a_i], and

        κ3 = E[t]_{abc} − E[p]_{ab} E[g]_c − E[p]_{ac} E[g]_b − E[p]_{bc} E[g]_a
             + 2 E[g]_a E[g]_b E[g]_c,

    each product of expectations estimated by a U-statistic over *different* networks (as V's
    E[g]E[g] in :class:`~derive.reality.shards._Accumulator`), so the estimate is unbiased; the
    block sums of g, p, t and of the per-network g⊗g, p⊗g, g⊗g⊗g are kept per jackknife block."""

    FIELDS = ("count", "g", "gg", "ggg", "p", "pg", "t")

    def __init__(self, N: int):
        M = N * N
        self.N = N
        self.count = np.zeros(BLOCKS)
        self.g = np.zeros((BLOCKS, M))
        self.gg = np.zeros((BLOCKS, M, M))
        self.ggg = np.zeros((BLOCKS, M, M, M))
        self.p = np.zeros((BLOCKS, M, M))
        self.pg = np.zeros((BLOCKS, M, M, M))
        self.t = np.zeros((BLOCKS, M, M, M))

    @staticmethod
    def per_network(z: np.ndarray) -> tuple:
        """z (c, n, N) float64 → the per-network averages g (c, M), p (c, M, M), t (c, M, M, M)
        over singles, ordered pairs and ordered triples of distinct neurons (M = N²)."""
        c, n, N = z.shape
        a = (z[:, :, :, None] * z[:, :, None, :]).reshape(c, n, N * N)     # a_i (c, n, M)
        S1 = a.sum(axis=1)
        aT = np.swapaxes(a, 1, 2)                                          # (c, M, n)
        S2 = np.matmul(aT, a)
        aa = (a[:, :, :, None] * a[:, :, None, :]).reshape(c, n, -1)       # (c, n, M²)
        S3 = np.matmul(np.swapaxes(aa, 1, 2), a).reshape(c, *(S2.shape[1:] + S2.shape[2:]))
        g = S1 / n
        p = (S1[:, :, None] * S1[:, None, :] - S2) / (n * (n - 1))
        t = (S1[:, :, None, None] * S1[:, None, :, None] * S1[:, None, None, :]
             - S2[:, :, :, None] * S1[:, None, None, :]
             - S2[:, :, None, :] * S1[:, None, :, None]
             - S2[:, None, :, :] * S1[:, :, None, None]
             + 2 * S3) / (n * (n - 1) * (n - 2))
        return g, p, t

    def add(self, blocks: np.ndarray, z) -> None:
        g, p, t = self.per_network(np.asarray(z, dtype=np.float64))
        c = g.shape[0]
        gg = (g[:, :, None] * g[:, None, :]).reshape(c, -1)
        cols = {"g": g, "gg": gg, "ggg": (gg[:, :, None] * g[:, None, :]).reshape(c, -1),
                "p": p.reshape(c, -1), "pg": (p.reshape(c, -1, 1) * g[:, None, :]).reshape(c, -1),
                "t": t.reshape(c, -1)}
        # the block sums of every per-network statistic at once: (blocks × c)(c × columns)
        onehot = (blocks[None, :] == np.arange(BLOCKS)[:, None]).astype(np.float64)
        sums = onehot @ np.concatenate(list(cols.values()), axis=1)
        self.count += onehot.sum(axis=1)
        at = 0
        for k, v in cols.items():
            arr = getattr(self, k)
            arr += sums[:, at:at + v.shape[1]].reshape(arr.shape)
            at += v.shape[1]

    def merge(self, other: "_ThreeAccumulator") -> None:
        for k in self.FIELDS:
            getattr(self, k)[...] += getattr(other, k)

    @staticmethod
    def _kappa(S, g, gg, ggg, p, pg, t):
        """κ3 (…, M, M, M) from sums over S networks (a leading axis allowed, as in the
        jackknife: S then an array)."""
        S = np.reshape(S, np.shape(S) + (1, 1, 1))
        G = np.einsum("...a,...b,...d->...abd", g, g, g)
        # E[g]E[g]E[g] over three different networks
        g3 = (G - np.einsum("...ab,...d->...abd", gg, g) - np.einsum("...ad,...b->...abd", gg, g)
              - np.einsum("...bd,...a->...abd", gg, g) + 2 * ggg) / (S * (S - 1) * (S - 2))
        # E[p]_{ab} E[g]_d over two different networks, and its two other placements
        pg_ab_d = (np.einsum("...ab,...d->...abd", p, g) - pg) / (S * (S - 1))
        pg_all = pg_ab_d + np.swapaxes(pg_ab_d, -1, -2) + np.moveaxis(pg_ab_d, -1, -3)
        return t / S - pg_all + 2 * g3

    def finish(self, fan_in: float) -> tuple:
        """(n² κ3, its jackknife standard error), each of shape (N,)*6."""
        N = self.N
        tot = {k: getattr(self, k).sum(axis=0) for k in self.FIELDS}
        out = {k: tot[k] - getattr(self, k) for k in self.FIELDS}
        args = ("g", "gg", "ggg", "p", "pg", "t")
        val = fan_in ** 2 * self._kappa(tot["count"], *(tot[k] for k in args))
        jk = fan_in ** 2 * self._kappa(out["count"], *(out[k] for k in args))
        err = np.sqrt((BLOCKS - 1) / BLOCKS * ((jk - jk.mean(axis=0)) ** 2).sum(axis=0))
        return val.reshape((N,) * 6), err.reshape((N,) * 6)


@dataclass(frozen=True)
class ThreeNeuron:
    """The result of :func:`three_neuron`: ``U[ℓ]`` = n_{ℓ−1}² κ3(z_i z_i, z_j z_j, z_k z_k)
    (i, j, k distinct neurons of layer ℓ; shape (N,)*6, indexed α1 … α6) and ``U_err[ℓ]``
    its standard error (20-block jackknife over networks)."""

    spec: MLP
    X: np.ndarray
    n_networks: int
    seed: int
    U: dict = field(repr=False)
    U_err: dict = field(repr=False)


def _checked_run(spec, X, n_networks, seed, minimum: int) -> np.ndarray:
    """The arguments of a Monte Carlo run checked (a MonteCarloError saying what is wrong);
    returns X as a float array.  ``minimum``: the fewest networks the jackknife accepts."""
    if not isinstance(spec, MLP):
        raise MonteCarloError(f"spec must be a derive.MLP, got {type(spec).__name__}")
    X = np.asarray(X, dtype=float)
    if X.ndim != 2 or X.shape[0] < 1 or X.shape[1] < 1:
        raise MonteCarloError(f"X must have shape (N inputs, n_0 features), got {X.shape}")
    if not np.all(np.isfinite(X)):
        raise MonteCarloError("X contains NaN or infinite entries")
    if isinstance(n_networks, bool) or not isinstance(n_networks, (int, np.integer)) \
            or n_networks < minimum:
        raise MonteCarloError(f"n_networks must be a whole number ≥ {minimum} (error bars come "
                              f"from a {BLOCKS}-block jackknife), got {n_networks!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise MonteCarloError(f"seed must be a whole number ≥ 0, got {seed!r}")
    return X


def three_neuron(spec: MLP, X, n_networks: int, seed: int = 0, *, progress: bool | None = None,
                 dtype: str = "float64", backend: str = "numpy",
                 device: str | None = None) -> ThreeNeuron:
    r"""n_{ℓ−1}² times the joint cumulant κ3(z_{i;α1} z_{i;α2}, z_{j;α3} z_{j;α4},
    z_{k;α5} z_{k;α6}) of three *different* neurons, per layer, from ``n_networks`` random
    networks of ``spec`` on inputs ``X`` (N × n_0, N ≤ 2 advised: the arrays are N⁶); it tends to
    U of docs/conventions.md §10 as n → ∞ (κ3 = U/n² + O(1/n³)).

    The networks are exactly those of :func:`sample` with the same arguments (the same shards,
    seeds and draws; the NTK is not formed), pushed through once more here: the pass runs in
    this process (not on Dask workers, not checkpointed).  Within each network the estimator
    averages over all ordered triples of distinct neurons (from sums over neurons:
    :class:`_ThreeAccumulator`), across networks the products of means are U-statistics of
    different networks, and the error is a 20-block jackknife.  Every layer needs ≥ 3
    neurons (the output layer has the last hidden width)."""
    X = _checked_run(spec, X, n_networks, seed, 3 * BLOCKS)
    dtype, backend = _check_dtype_backend(dtype, backend)
    xp = _backend(backend, dtype, device)
    L, N = spec.depth, X.shape[0]
    widths = [X.shape[1], *spec.widths, int(spec.widths[-1] if spec.widths else 8)]
    if min(widths[1:]) < 3:
        raise MonteCarloError(f"the three-neuron cumulant needs ≥ 3 neurons in every layer; "
                              f"widths are {widths[1:]}")
    if any(st.xi != 0 for st in _steps(spec, widths).values()):
        raise MonteCarloError("the three-neuron cumulant is sampled for networks without a skip "
                              "term only (its prediction U is not derived for them)")
    per_net = max(widths) * N ** 6 + sum(widths) * N
    shard = shard_size(widths)
    chunk = int(max(1, min(shard, _CHUNK_FLOATS // max(per_net, 1))))
    plan = _Plan(spec, X, tuple(widths), int(n_networks), int(seed), False, dtype, backend,
                 None if backend == "numpy" else str(xp.device), shard, chunk)
    _BACKENDS[(backend, dtype, plan.device)] = xp
    from .shards import _progress
    import sys
    import time

    show = sys.stderr.isatty() if progress is None else bool(progress)
    total = {l: _ThreeAccumulator(N) for l in range(1, L + 1)}
    t0 = time.perf_counter()
    for k in range(plan.n_shards):
        part = {l: _ThreeAccumulator(N) for l in range(1, L + 1)}
        for blocks, l, z, _ in _shard_pass(plan, k):
            part[l].add(blocks, xp.host(xp.f64(z)))
        for l in total:
            total[l].merge(part[l])
        _progress(show, min((k + 1) * shard, plan.n_networks), plan.n_networks, t0)
    U, U_err = {}, {}
    for l in range(1, L + 1):
        U[l], U_err[l] = total[l].finish(widths[l - 1])
    return ThreeNeuron(spec, X, int(n_networks), int(seed), U, U_err)


def _slices(xp, params: list, s: int, e: int):
    """Networks s … e−1 of every layer's parameters, as arrays of ``xp``, layer by layer."""
    for W, b, scale in params:
        yield xp.asarray(W[s:e]), xp.asarray(b[s:e]), scale


def sample(spec: MLP, X, n_networks: int, seed: int = 0, *, output_width: int | None = None,
           ntk: bool = True, progress: bool | None = None, dtype: str = "float64",
           backend: str = "numpy", device: str | None = None, workers: int | None = None,
           scheduler=None, checkpoint=None) -> Ensemble:
    r"""Sample ``n_networks`` random networks of ``spec`` on inputs ``X`` (N × n_0).

    ``output_width`` is the width of layer L (not part of the spec; default: the last hidden
    width, or 8 for a one-layer network; an output layer with a skip term must keep the hidden
    width).  ``ntk=False`` skips the NTK (faster).
    ``progress`` (default: when stderr is a terminal and the run is long) prints a bar with ETA.

    The networks are split into shards of :func:`shard_size` networks (a number fixed by the
    widths), shard k drawn from ``SeedSequence(seed).spawn(n_shards)[k]``; the shards'
    statistics are merged in shard order, so a seed gives the same estimates, bit for bit,
    whether the shards run here one after the other or on any number of Dask workers.

    ``dtype``: 'float64' (default) or 'float32', the precision of the forward pass; the
    parameters are drawn in float64 (the same networks in both) and every statistic is formed
    and accumulated in float64 (the guide's Monte Carlo section says what float32 costs).
    ``backend``: 'numpy' (default) or 'torch' (``pip install 'derive[torch]'``) on ``device``
    (default 'cuda' when available, else 'cpu'); the same draws, statistics equal to numpy's
    within float rounding.
    ``workers=k`` runs the shards on a local Dask cluster of k processes, ``scheduler`` on a
    running Dask scheduler (its address 'tcp://host:port', or a ``distributed.Client``);
    ``pip install 'derive[distributed]'``.
    ``checkpoint``: a path stem; the merged statistics are saved to ``STEM.npz`` (with the
    run's parameters in ``STEM.json``) as shards complete, and a run given the same stem
    resumes from them (refused, with a :class:`MonteCarloError`, if its parameters differ).
    """
    X = _checked_run(spec, X, n_networks, seed, 2 * BLOCKS)
    dtype, backend = _check_dtype_backend(dtype, backend)
    xp = _backend(backend, dtype, device)
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
    # floats per network of one chunk of the forward pass: the NTK (Ĥ and its products: 3
    # arrays of n² N², 4 with a skip term) and the four-point products (V's; A … F's are N⁴
    # arrays and one of n N³, made while only Ĥ itself is held, so below the NTK's peak).  The
    # chunk only splits the work of a shard: the draws are the shard's, whatever the chunk.
    per_net = (max(widths[1:]) ** 2 * N * N * (4 if skip else 3) if ntk else 0) + \
        max(widths) * N * N * N * N + sum(widths) * N
    shard = shard_size(widths)
    chunk = int(max(1, min(shard, _CHUNK_FLOATS // max(per_net, 1))))
    plan = _Plan(spec, X, tuple(widths), int(n_networks), int(seed), bool(ntk), dtype, backend,
                 None if backend == "numpy" else str(xp.device), shard, chunk)
    _BACKENDS[(backend, dtype, plan.device)] = xp
    acc = run(plan, _run_shard, workers=workers, scheduler=scheduler, checkpoint=checkpoint,
              progress=progress)
    layers = {l: acc[l].finish(widths[l - 1]) for l in range(1, L + 1)}
    return Ensemble(spec, X, int(n_networks), int(seed), layers)


def _forward(spec: MLP, steps: dict, X: np.ndarray, params, ntk: bool, xp=None):
    """The forward pass of c networks of ``spec`` on inputs ``X`` (N × n_0), from the forward
    equation (module docstring).  ``params`` yields, for ℓ = 1 … L in turn, the layer's weights
    W^{(ℓ)} (c, n_ℓ, n_{ℓ−1}) and biases b^{(ℓ)} (c, n_ℓ) — the parameters θ the NTK
    differentiates by — optionally with a third item s, the weights then being s W, and a
    fourth, the fill of a W yet to be drawn, b then a callable (as :func:`_draw` gives them);
    it is read one layer at a time.  Yields ``(ℓ, z, H)`` per layer:
    the preactivations z (c, n_ℓ, N) and the NTK Ĥ (c, n_ℓ, n_ℓ, N, N), None when ``ntk`` is
    false, as arrays of the backend ``xp`` (numpy float64 by default; ``steps`` made for it).
    The pass holds the preactivations and activations input-major, (c, N, n_ℓ), the layout of
    the products W x_α it forms (:meth:`_NumpyBackend.affine`); z is yielded as a view."""
    xp = xp or _NUMPY
    G0 = X @ X.T / X.shape[1]
    XN = xp.asarray(np.ascontiguousarray(X))
    zT = H = prevT = dsT = None
    for l, (W, b, *rest) in enumerate(params, 1):
        s_W = rest[0] if rest else 1.0
        fill = rest[1] if len(rest) > 1 else None
        c, n_outl, n_in = W.shape
        if l == 1:
            prevT = xp.expand(XN, (c,) + tuple(XN.shape))     # (c, N, n_0): layer-0 "activations"
        st = steps.get(l)
        if l > 1:
            with xp.errstate():
                prevT = st.g(zT)
                if ntk:
                    dsT = st.dg(zT)
        with xp.errstate():
            zT_new = xp.affine(W, prevT, b, s_W, st.c if l > 1 else 1.0, fill)   # (c, N, n_ℓ)
            if l > 1 and st.xi != 0:
                zT_new = st.xi * zT + zT_new
        if not xp.all_finite(zT_new):
            hint = "" if xp.dtype == np.float64 or str(xp.dtype).endswith("float64") else \
                " (in float32, whose largest number is 3e38: dtype='float64' may get through)"
            raise MonteCarloError(f"layer {l}: preactivations overflowed (NaN/inf); the "
                                  f"initialisation diverges for this spec{hint}")
        if ntk:
            eye = xp.eye(n_outl)
            if l == 1:
                base = xp.asarray(spec.lambda_b(1) + spec.lambda_W(1) * G0)
                H = xp.einsum("ij,ab->ijab", eye, base)[None]
                H = xp.expand(H, (c,) + tuple(H.shape[1:]))
            else:
                lam_b = spec.lambda_b(l) if st.c == 1 else st.c * st.c * spec.lambda_b(l)
                base = lam_b + spec.lambda_W(l) * xp.einsum("caj,cbj->cab", prevT, prevT) / n_in
                Ws = W if s_W == 1 else W * s_W
                H = xp.einsum("ij,cab->cijab", eye, base) + \
                    _carried(H, Ws, xp.swapaxes(dsT, 1, 2), st.xi, xp)
        zT = zT_new
        yield l, xp.swapaxes(zT, 1, 2), H


def _network(spec: MLP, X, Ws, bs, ntk: bool = True) -> list:
    """The forward pass of given networks: ``Ws[ℓ−1]`` (c, n_ℓ, n_{ℓ−1}) and ``bs[ℓ−1]`` (c, n_ℓ)
    are the weights and biases of layer ℓ (c networks).  Returns ``[(z, H), …]`` for ℓ = 1 … L,
    exactly as :func:`sample` computes them (a hook for tests)."""
    X = np.asarray(X, dtype=float)
    widths = [X.shape[1]] + [W.shape[1] for W in Ws]
    steps = _steps(spec, widths)
    return [(z, H) for _, z, H in _forward(spec, steps, X, zip(Ws, bs), ntk)]


def _carried(H, W, dg, xi: float, xp=None):
    """Σ_{kl} J_{ik;α} J_{jl;β} Ĥ_{kl;αβ} with J_α = ξ 1 + W diag(g'(z_α)): ``H`` (c, n, n, N, N),
    ``W`` (c, n', n), ``dg`` (c, n, N); returns (c, n', n', N, N)."""
    xp = xp or _NUMPY
    Wt = xp.swapaxes(W, 1, 2)[:, None, None]
    if xi == 0:
        M = xp.einsum("cja,ckb,cjkab->cabjk", dg, dg, H)            # (c, N, N, n, n)
        WMW = xp.matmul(xp.matmul(W[:, None, None], M), Wt)
    else:
        # (ξ 1 + W D_α) Ĥ_αβ (ξ 1 + D_β Wᵀ) = ξ T + (T D_β) Wᵀ with T = ξ Ĥ_αβ + W D_α Ĥ_αβ
        Hs = xp.moveaxis(H, (3, 4), (1, 2))                         # (c, N, N, n, n) view
        dgT = xp.swapaxes(dg, 1, 2)                                 # (c, N, n)
        T = xp.matmul(W[:, None, None], dgT[:, :, None, :, None] * Hs)
        T += xi * Hs
        WMW = xp.matmul(T * dgT[:, None, :, None, :], Wt)
        WMW += xi * T
    return xp.moveaxis(WMW, (1, 2), (3, 4))
