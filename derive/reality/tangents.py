r"""The O(1/n) statistics of the dNTK and the two ddNTKs of an MLP's output layer, estimated
from actual random networks (the "reality" for their symbolic derivation).

``tangent_statistics(spec, X, n_networks, seed=0)`` draws ``n_networks`` initialisations of
the plain MLP ``spec`` (docs/conventions.md §2: z^{(1)} = b^{(1)} + W^{(1)} x,
z^{(ℓ+1)} = b^{(ℓ+1)} + W^{(ℓ+1)} σ(z^{(ℓ)}), b^{(ℓ)} ~ N(0, C_b^{(ℓ)}),
W^{(ℓ)}_{ij} ~ N(0, C_W^{(ℓ)}/n_{ℓ−1})), and for its output layer L (fan-in n = n_{L−1})
differentiates each network's outputs z_{i;δ} by all its parameters θ (layers 1 … L) with
PyTorch's autograd, in float64 on the CPU.  The learning-rate tensor λ is diagonal:
λ_b^{(ℓ)} for each bias of layer ℓ and λ_W^{(ℓ)}/n_{ℓ−1} for each weight.  The tensors are

    dĤ_{i0i1i2;δ0δ1δ2} = Σ_{μ1μ2} λ_{μ1} λ_{μ2} ∂²z_{i0;δ0}/∂θ_{μ1}∂θ_{μ2} ∂z_{i1;δ1}/∂θ_{μ1} ∂z_{i2;δ2}/∂θ_{μ2},
    ddIĤ_{i0i1i2i3;δ0δ1δ2δ3} = Σ λ_{μ1}λ_{μ2}λ_{μ3} ∂³z_{i0;δ0}/∂θ_{μ1}∂θ_{μ2}∂θ_{μ3}
                               ∂z_{i1;δ1}/∂θ_{μ1} ∂z_{i2;δ2}/∂θ_{μ2} ∂z_{i3;δ3}/∂θ_{μ3},
    ddIIĤ_{i1i2i3i4;δ1δ2δ3δ4} = Σ λ_{μ1}λ_{μ2}λ_{μ3} ∂²z_{i1;δ1}/∂θ_{μ1}∂θ_{μ2} ∂²z_{i2;δ2}/∂θ_{μ1}∂θ_{μ3}
                                ∂z_{i3;δ3}/∂θ_{μ2} ∂z_{i4;δ4}/∂θ_{μ3};

with u_{i;δ} = λ ⊙ ∇_θ z_{i;δ} and H_{i;δ} = ∇²_θ z_{i;δ} they are dĤ = u_{i1;δ1}·H_{i0;δ0} u_{i2;δ2},
ddIĤ = D³z_{i0;δ0}[u_{i1;δ1}, u_{i2;δ2}, u_{i3;δ3}] and
ddIIĤ = (H_{i1;δ1} u_{i3;δ3})·diag(λ) (H_{i2;δ2} u_{i4;δ4}).  Their O(1/n) statistics are defined by

    E[dĤ_{i0i1i2;δ0δ1δ2} z_{i3;δ3}] = (1/n)[δ_{i0i1}δ_{i2i3} P_{δ0δ1δ2δ3} + δ_{i0i2}δ_{i1i3} P_{δ0δ2δ1δ3}
                                          + δ_{i0i3}δ_{i1i2} Q_{δ0δ1δ2δ3}] + O(1/n²),
    E[ddIĤ_{i0i1i2i3;δ0δ1δ2δ3}] = (1/n)[δ_{i0i1}δ_{i2i3} R_{δ0δ1δ2δ3} + δ_{i0i2}δ_{i1i3} R_{δ0δ2δ1δ3}
                                       + δ_{i0i3}δ_{i1i2} R_{δ0δ3δ1δ2}] + O(1/n²),
    E[ddIIĤ_{i1i2i3i4;δ1δ2δ3δ4}] = (1/n)[δ_{i1i2}δ_{i3i4} S_{δ1δ2δ3δ4} + δ_{i1i3}δ_{i2i4} T_{δ1δ2δ3δ4}
                                        + δ_{i1i4}δ_{i2i3} Udd_{δ1δ2δ3δ4}] + O(1/n²),

and estimated, for two *different* output neurons a ≠ b, as

    P = n E[dĤ_{aab;δ0δ1δ2} z_{b;δ3}],   Q = n E[dĤ_{abb;δ0δ1δ2} z_{a;δ3}],
    R = n E[ddIĤ_{aabb;δ0δ1δ2δ3}],
    S = n E[ddIIĤ_{aabb}],   T = n E[ddIIĤ_{abab}],   Udd = n E[ddIIĤ_{abba}]

(δ order as in the definitions; the dNTK's mean is exactly zero, so nothing is subtracted from
E[dĤ z]).  Each network's value is the average over all ordered pairs (a, b), a ≠ b, of its
output neurons; the estimate is the mean of those values over the networks, its standard error
their standard deviation / √(networks).  With N inputs every statistic is an (N, N, N, N) array.
The output neurons are independent given the hidden layers, so the statistics do not depend on
the output width (``output_width``, default 2: the cost grows like its square, see
:func:`tangent_statistics`); they are exact n × (expectation) at the width sampled, so they
differ from their n → ∞ limits by O(1/n).

Independence from the engine: nothing here uses the engine's recursions or the sampler's
forward-NTK pass.  The network is written once as a plain batched forward function of its
parameters, and every derivative comes from torch.func: the gradients u from reverse mode
(vjp), the Hessian-vector products H_{i;δ} u_{j;δ'} (all of them, as vectors in parameter
space) from reverse-over-forward (vjp of jvp), and the third derivatives from three nested
forward-mode jvps.  dĤ = u·(H u), ddIIĤ is the λ-weighted dot product of two Hessian-vector
products, ddIĤ the third directional derivative.  Only σ's torch form is shared with the
sampler (:meth:`derive.reality.montecarlo._TorchBackend.function`, from the activation's SymPy
expression).  For an activation with kinks (ReLU, …) autograd gives the derivatives almost
everywhere: the Dirac deltas of σ'' or σ''' at a kink are never seen by an actual network.

The parameters: network k of the run is the k-th block of P consecutive standard normals of
``numpy.random.default_rng(seed)`` (P parameters per network), laid out as
W^{(1)} (row-major, n_1 × n_0), b^{(1)}, W^{(2)}, b^{(2)}, …, W^{(L)}, b^{(L)} and scaled by
√(C_W^{(ℓ)}/n_{ℓ−1}) and √C_b^{(ℓ)}.  The draws are made chunk by chunk from one generator,
so a seed gives the same networks, and the same estimates, whatever the chunk size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..architectures.mlp import MLP
from .shards import MonteCarloError

__all__ = ["tangent_statistics", "TangentStatistics"]

#: the statistics, in the order of the per-network arrays
NAMES = ("P", "Q", "R", "S", "T", "Udd")

#: the default number of output neurons (the statistics do not depend on it)
DEFAULT_OUTPUT_WIDTH = 2

#: memory budget (float64 numbers) of one chunk of networks
_CHUNK_FLOATS = 12_000_000
#: the most networks in one chunk (larger chunks gain nothing)
_MAX_CHUNK = 1024

_TORCH_MISSING = ("tangent_statistics differentiates actual networks with PyTorch, which is not "
                  "installed: pip install 'derive[torch]'")


@dataclass(frozen=True, eq=False)
class TangentStatistics:
    """The result of :func:`tangent_statistics`: the six statistics P, Q, R, S, T, Udd of the
    output layer, each an (N, N, N, N) array, with standard errors ``P_se`` …; ``fan_in`` is n
    = n_{L−1}, the width they are multiplied by."""

    spec: MLP
    X: np.ndarray
    n_networks: int
    seed: int
    fan_in: int
    output_width: int
    P: np.ndarray
    Q: np.ndarray
    R: np.ndarray
    S: np.ndarray
    T: np.ndarray
    Udd: np.ndarray
    P_se: np.ndarray
    Q_se: np.ndarray
    R_se: np.ndarray
    S_se: np.ndarray
    T_se: np.ndarray
    Udd_se: np.ndarray

    def value(self, name: str) -> np.ndarray:
        """The estimate of the statistic ``name`` (one of P, Q, R, S, T, Udd)."""
        return getattr(self, _checked_name(name))

    def se(self, name: str) -> np.ndarray:
        """The standard error of the statistic ``name``."""
        return getattr(self, _checked_name(name) + "_se")


def _checked_name(name) -> str:
    if name not in NAMES:
        raise MonteCarloError(f"unknown statistic {name!r}; the statistics are {', '.join(NAMES)}")
    return name


def _torch():
    try:
        import torch
        import torch.func  # noqa: F401
    except ImportError:
        raise MonteCarloError(_TORCH_MISSING) from None
    return torch


def _sigma(activation):
    """σ as a torch function that autograd can differentiate (the sampler's torch form, from
    the activation's SymPy expression); refused when only the sampler's numpy fallback works."""
    torch = _torch()
    from .montecarlo import _TorchBackend

    fn = _TorchBackend("float64", "cpu").function(activation.numpy(0), activation.expr,
                                                  (activation.z,), ())
    probe = torch.linspace(-2.0, 2.0, 9, dtype=torch.float64, requires_grad=True)
    out = fn(probe)
    if not out.requires_grad and activation.derivative(1) != 0:
        raise MonteCarloError(f"the activation {activation.name} has no PyTorch form that "
                              "autograd can differentiate (SymPy's torch printer fails on it), "
                              "so its networks cannot be differentiated here")
    return fn


class _Network:
    """c networks of ``spec`` on inputs ``X`` as one function of their parameters
    ``(W^{(1)}, b^{(1)}, …, W^{(L)}, b^{(L)})``, each with a leading network axis (W^{(ℓ)}:
    (c, n_ℓ, n_{ℓ−1}), b^{(ℓ)}: (c, n_ℓ)); the output is z (c, N, n_L), input-major."""

    def __init__(self, spec: MLP, X: np.ndarray, output_width: int):
        torch = _torch()
        self.torch = torch
        self.spec = spec
        self.L = spec.depth
        self.N = X.shape[0]
        self.widths = [X.shape[1], *spec.widths, int(output_width)]
        self.n_out = int(output_width)
        self.fan_in = self.widths[self.L - 1]
        self.X = torch.as_tensor(np.ascontiguousarray(X), dtype=torch.float64)
        self.sigma = _sigma(spec.activation)
        # per parameter block (W^{(1)}, b^{(1)}, W^{(2)}, …): its shape per network, its λ and
        # the standard deviation of its entries
        self.shapes, self.lam, self.std = [], [], []
        for l in range(1, self.L + 1):
            n_in, n_l = self.widths[l - 1], self.widths[l]
            self.shapes += [(n_l, n_in), (n_l,)]
            self.lam += [spec.lambda_W(l) / n_in, spec.lambda_b(l)]
            self.std += [math.sqrt(spec.C_W(l) / n_in), math.sqrt(spec.C_b(l))]
        self.sizes = [math.prod(s) for s in self.shapes]
        self.n_params = sum(self.sizes)

    def __call__(self, params):
        z = None
        for l in range(self.L):
            W, b = params[2 * l], params[2 * l + 1]
            inp = self.X if l == 0 else self.sigma(z)
            z = self.torch.matmul(inp, W.transpose(-1, -2)) + b.unsqueeze(-2)
        return z

    def draw(self, rng: np.random.Generator, c: int) -> tuple:
        """The next c networks of ``rng``: c blocks of P standard normals, in layout order."""
        flat = rng.standard_normal((c, self.n_params))
        out, s = [], 0
        for shape, size, std in zip(self.shapes, self.sizes, self.std):
            block = flat[:, s:s + size].reshape((c,) + shape) * std
            out.append(self.torch.from_numpy(np.ascontiguousarray(block)))
            s += size
        return tuple(out)

    def given(self, Ws, bs) -> tuple:
        """Parameters given as lists of arrays, layer by layer, as the function's tuple."""
        out = []
        for W, b in zip(Ws, bs):
            out += [self.torch.as_tensor(np.asarray(W, dtype=float), dtype=self.torch.float64),
                    self.torch.as_tensor(np.asarray(b, dtype=float), dtype=self.torch.float64)]
        return tuple(out)


def _derivatives(net: _Network, params: tuple):
    """The building blocks of one chunk of c networks, with M = N n_L and the output index
    m = δ n_L + i:

    ``z``: the outputs (c, N, n_L);
    ``U``: u_m = λ ⊙ ∇_θ z_m per parameter block, (M, c, block…);
    ``Y``: Y[d, f] = H_f u_d, the Hessian of output f applied to u_d, per block (M, M, c, block…).
    """
    torch = net.torch
    from torch.func import jvp, vjp, vmap

    c = params[0].shape[0]
    M = net.N * net.n_out
    E = torch.eye(M, dtype=torch.float64).reshape(M, 1, net.N, net.n_out).expand(
        M, c, net.N, net.n_out)
    z, pull = vjp(net, params)
    grads = vmap(pull)(E)[0]
    U = tuple(g * lam for g, lam in zip(grads, net.lam))

    def hessian_rows(*v):      # H_f v for every output f
        _, pull_v = vjp(lambda t: jvp(net, (t,), (v,))[1], params)
        return vmap(pull_v)(E)[0]

    Y = vmap(hessian_rows)(*U)
    return z.detach(), U, Y


def _third(net: _Network, params: tuple, v, w, x):
    """D³z[v, w, x] of every output (c, N, n_L), by three nested forward-mode derivatives."""
    from torch.func import jvp

    def d1(t):
        return jvp(net, (t,), (v,))[1]

    def d2(t):
        return jvp(d1, (t,), (w,))[1]

    return jvp(d2, (params,), (x,))[1]


def _flat(blocks, lead: int):
    """Per parameter block, the array with its ``lead`` leading axes kept and the rest
    flattened (views where possible)."""
    return [b.reshape(b.shape[:lead] + (-1,)) for b in blocks]


def _per_network(net: _Network, params: tuple) -> np.ndarray:
    """n times each network's average over the ordered pairs a ≠ b of its output neurons:
    an array (c, 6, N, N, N, N), the statistics in the order of :data:`NAMES`."""
    torch = net.torch
    N, nL, n = net.N, net.n_out, net.fan_in
    z, U, Y = _derivatives(net, params)
    c = z.shape[0]
    off = 1.0 - torch.eye(nL, dtype=torch.float64)              # [a, b]: 1 where a ≠ b
    Uf = [u.reshape(N, nL, c, -1) for u in _flat(U, 2)]          # [δ, a, c, p]
    Yf = [y.reshape(N, nL, N, nL, c, -1) for y in _flat(Y, 3)]   # [δd, b(dir), δf, a(fn), c, p]
    stats = torch.zeros((c, 6) + (N,) * 4, dtype=torch.float64)
    for u, y, lam in zip(Uf, Yf, net.lam):
        # dĤ_{aab;δ0δ1δ2} = u_{a;δ1}·Y[(b,δ2), (a,δ0)],  dĤ_{abb;δ0δ1δ2} = u_{b;δ1}·Y[(b,δ2), (a,δ0)]
        d_aab = torch.einsum("kacp,jbiacp->cikjab", u, y)
        d_abb = torch.einsum("kbcp,jbiacp->cikjab", u, y)
        zT = z.transpose(1, 2)                                   # (c, n_L, N)
        stats[:, 0] += torch.einsum("cikjab,ab,cbl->cikjl", d_aab, off, zT)
        stats[:, 1] += torch.einsum("cikjab,ab,cal->cikjl", d_abb, off, zT)
        ym = y * off.T[None, :, None, :, None, None]             # Y[(b,·), (a,·)] with a ≠ b
        # S: Y[(b,δ3),(a,δ1)]·λ Y[(b,δ4),(a,δ2)];  Udd: Y[(b,δ3),(a,δ1)]·λ Y[(a,δ4),(b,δ2)]
        stats[:, 3] += lam * torch.einsum("kbiacp,lbjacp->cijkl", ym, y)
        stats[:, 5] += lam * torch.einsum("kbiacp,lajbcp->cijkl", ym, y)
        # T: Y[(a,δ3),(a,δ1)]·λ Y[(b,δ4),(b,δ2)], a ≠ b
        yd = torch.diagonal(y, dim1=1, dim2=3)                   # [δd, δf, c, p, a]
        full = torch.einsum("kicpa,ljcpb->cijkl", yd, yd)
        same = torch.einsum("kicpa,ljcpa->cijkl", yd, yd)
        stats[:, 4] += lam * (full - same)
    stats[:, 2] = _R(net, params, U)
    return (stats * (n / (nL * (nL - 1)))).numpy()


def _R(net: _Network, params: tuple, U):
    """Σ_{a≠b} D³z_{a;δ0}[u_{a;δ1}, u_{b;δ2}, u_{b;δ3}] per network, (c, N, N, N, N)."""
    torch = net.torch
    from torch.func import vmap

    N, nL = net.N, net.n_out
    pairs = [(a, b) for a in range(nL) for b in range(nL) if a != b]
    A = torch.tensor([p[0] for p in pairs])
    B = torch.tensor([p[1] for p in pairs])
    Ur = [u.reshape((N, nL) + u.shape[1:]) for u in U]           # [δ, a, c, block…]
    ua = tuple(u[:, A].transpose(0, 1) for u in Ur)               # [pair, δ1, c, …]
    ub = tuple(u[:, B].transpose(0, 1) for u in Ur)

    def one_pair(va, vb):
        def over_d3(x):
            def over_d2(w):
                return vmap(lambda v: _third(net, params, v, w, x))(va)   # [δ1, c, N, n_L]
            return vmap(over_d2)(vb)                                    # [δ2, δ1, …]
        return vmap(over_d3)(vb)                                        # [δ3, δ2, δ1, …]

    out = vmap(one_pair)(ua, ub)                       # [pair, δ3, δ2, δ1, c, δ0, n_L]
    sel = out[torch.arange(len(pairs)), ..., A]        # neuron a of each pair: [pair, δ3, δ2, δ1, c, δ0]
    return torch.einsum("qlkjci->cijkl", sel)


def derivative_tensors(spec: MLP, X, Ws, bs) -> dict:
    """The raw tensors of given networks (a hook for tests): ``Ws[ℓ−1]`` (c, n_ℓ, n_{ℓ−1})
    and ``bs[ℓ−1]`` (c, n_ℓ) are the weights and biases of layer ℓ of c networks of ``spec``
    (the output width is ``Ws[-1].shape[1]``).  Returns ``z`` (c, n_L, N), ``u`` (c, n_L, N, P:
    λ ⊙ ∇_θ z in the layout of the module docstring), ``dH`` (c, i0, i1, i2, δ0, δ1, δ2),
    ``ddIH`` (c, i0, i1, i2, i3, δ0, δ1, δ2, δ3) and ``ddIIH`` (c, i1, i2, i3, i4, δ1, δ2, δ3,
    δ4), all of them (meant for small networks: the arrays are (n_L N)³ and (n_L N)⁴)."""
    torch = _torch()
    from torch.func import vmap

    X = np.asarray(X, dtype=float)
    net = _Network(spec, X, int(np.shape(Ws[-1])[1]))
    params = net.given(Ws, bs)
    N, nL = net.N, net.n_out
    M = N * nL
    z, U, Y = _derivatives(net, params)
    c = z.shape[0]
    Uf = torch.cat(_flat(U, 2), dim=-1)                            # [m, c, P]
    Yf = torch.cat(_flat(Y, 3), dim=-1)                            # [d, f, c, P]
    lam = torch.cat([torch.full((s,), l, dtype=torch.float64) for s, l in zip(net.sizes, net.lam)])
    dH = torch.einsum("ecp,dfcp->cfed", Uf, Yf)                    # [c, f(i0δ0), e(i1δ1), d(i2δ2)]
    ddII = torch.einsum("dfcp,p,hgcp->cfgdh", Yf, lam, Yf)        # [c, (i1δ1), (i2δ2), (i3δ3), (i4δ4)]
    third = vmap(lambda x: vmap(lambda w: vmap(lambda v: _third(net, params, v, w, x))(U))(U))(U)
    ddI = third.reshape(M, M, M, c, M).permute(3, 4, 2, 1, 0)     # [c, f, v, w, x]

    def neurons_first(t, k):     # [c, (δ, i) × k] → [c, i…, δ…]
        t = t.reshape((c,) + (N, nL) * k)
        return t.permute((0,) + tuple(2 + 2 * j for j in range(k)) +
                         tuple(1 + 2 * j for j in range(k))).numpy()

    u = Uf.reshape(N, nL, c, -1).permute(2, 1, 0, 3).numpy()
    return {"z": z.transpose(1, 2).numpy(), "u": u, "dH": neurons_first(dH, 3),
            "ddIH": neurons_first(ddI, 4), "ddIIH": neurons_first(ddII, 4)}


def _checked(spec, X, n_networks, seed, output_width, chunk) -> tuple:
    if type(spec) is not MLP:
        raise MonteCarloError(f"spec must be a plain derive.MLP (the statistics are defined for "
                              f"it), got {type(spec).__name__}")
    if spec.depth < 1:
        raise MonteCarloError(f"the network needs depth ≥ 1, got {spec.depth}")
    try:
        X = np.array(X, dtype=float)
    except (TypeError, ValueError):
        raise MonteCarloError("X must be an array of numbers of shape (N inputs, n_0 features)") \
            from None
    if X.ndim != 2 or X.shape[0] < 1 or X.shape[1] < 1:
        raise MonteCarloError(f"X must have shape (N inputs, n_0 features), got {X.shape}")
    if not np.all(np.isfinite(X)):
        raise MonteCarloError("X contains NaN or infinite entries; give finite inputs")
    if isinstance(n_networks, bool) or not isinstance(n_networks, (int, np.integer)) \
            or n_networks < 2:
        raise MonteCarloError(f"n_networks must be a whole number ≥ 2 (the standard errors come "
                              f"from the spread over networks), got {n_networks!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise MonteCarloError(f"seed must be a whole number ≥ 0, got {seed!r}")
    if output_width is None:
        output_width = DEFAULT_OUTPUT_WIDTH
    if isinstance(output_width, bool) or not isinstance(output_width, (int, np.integer)) \
            or output_width < 2:
        raise MonteCarloError(f"the statistics need two different output neurons a ≠ b; give "
                              f"the last layer width ≥ 2 (output_width), got {output_width!r}")
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer))
                              or chunk < 1):
        raise MonteCarloError(f"chunk must be a whole number ≥ 1 of networks, got {chunk!r}")
    spec.activation.require_ntk("the dNTK and ddNTKs of the sampled networks")
    return X, int(output_width)


def tangent_statistics(spec: MLP, X, n_networks: int, seed: int = 0, *, chunk: int | None = None,
                       progress=None, output_width: int | None = None) -> TangentStatistics:
    r"""Estimate P, Q, R, S, T, Udd (module docstring) of the output layer of ``spec`` on the
    inputs ``X`` (N × n_0) from ``n_networks`` random networks drawn from
    ``numpy.random.default_rng(seed)``.

    ``output_width``: the number of output neurons n_L (≥ 2; default 2).  The statistics do not
    depend on it; more output neurons average more pairs per network but cost like n_L² (the
    Hessian-vector products) and n_L² N³ (the third derivatives) per network.
    ``chunk``: networks differentiated at once (default: from a memory budget of about 100 MB).
    ``progress``: a callable ``progress(done, total)`` called after each chunk.
    The call runs PyTorch on one thread (restored afterwards): the work is many small batched
    operations, for which more threads were slower or erratic.  Depth 3, width 32, tanh, two
    output neurons on a 2-core machine: about 1900 networks/s with N = 1 and 440 with N = 2.

    Returns a :class:`TangentStatistics`.  Raises a :class:`~derive.DeriveError` for a spec
    that is not a plain MLP, fewer than two output neurons or networks, X that is not a finite
    (N, n_0) array, an activation whose NTK is infinite, and when PyTorch is missing.
    """
    X, n_out = _checked(spec, X, n_networks, seed, output_width, chunk)
    torch = _torch()
    net = _Network(spec, X, n_out)
    N = X.shape[0]
    M = N * n_out
    if chunk is None:
        pairs = n_out * (n_out - 1)
        per_net = 6 * M * M * net.n_params + 16 * pairs * N ** 4 * sum(net.widths[1:])
        chunk = int(max(1, min(_MAX_CHUNK, _CHUNK_FLOATS // per_net)))
    rng = np.random.default_rng(int(seed))
    count, mean, m2 = 0, np.zeros((6,) + (N,) * 4), np.zeros((6,) + (N,) * 4)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        while count < n_networks:
            c = min(int(chunk), n_networks - count)
            vals = _per_network(net, net.draw(rng, c))
            if not np.all(np.isfinite(vals)):
                raise MonteCarloError("the derivatives overflowed (NaN/inf); the "
                                      "initialisation diverges for this spec")
            # merge the chunk's mean and sum of squared deviations (Chan et al.)
            c_mean = vals.mean(axis=0)
            c_m2 = ((vals - c_mean) ** 2).sum(axis=0)
            delta = c_mean - mean
            total = count + c
            mean = mean + delta * (c / total)
            m2 = m2 + c_m2 + delta ** 2 * (count * c / total)
            count = total
            if progress is not None:
                progress(count, int(n_networks))
    finally:
        torch.set_num_threads(threads)
    se = np.sqrt(m2 / (count - 1) / count)
    values = dict(zip(NAMES, mean))
    errors = {name + "_se": e for name, e in zip(NAMES, se)}
    return TangentStatistics(spec=spec, X=X, n_networks=int(n_networks), seed=int(seed),
                             fan_in=int(net.fan_in), output_width=n_out, **values, **errors)

