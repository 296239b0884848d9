r"""Gradient descent at O(1/n) (issue 17 part 3; docs/conventions.md §3).

The update equations.  A step θ → θ − ηλ∇L moves every function of θ by its Taylor series in
the step Δθ_μ = −η λ_μ Σ_α ∂_μz_α ε_α (ε_α = z_α − y_α, α ∈ A).  Written with the tangent
fields of the output layer (:data:`derive.architectures.forward.TANGENT_FIELDS`) and truncated
at O(1/n) — fields with four or more λ-contracted derivatives are O(1/n²) — they are derived by
the engine (:func:`derive.derivation.dynamics.gradient_step`) and evaluated from that derivation
(:func:`step_terms`); for one output they read

    z_δ(t+1)        = z_δ − η Ĥ_{δα} ε_α + (η²/2) dĤ_{δαβ} ε_α ε_β − (η³/6) ddIĤ_{δαβγ} ε_α ε_β ε_γ
    Ĥ_{δ1δ2}(t+1)   = Ĥ_{δ1δ2} − η (dĤ_{δ1δ2α} + dĤ_{δ2δ1α}) ε_α
                      + (η²/2) (ddIĤ_{δ1δ2αβ} + ddIĤ_{δ2δ1αβ} + 2 ddIIĤ_{δ1δ2αβ}) ε_α ε_β
    dĤ_{δ0δ1δ2}(t+1) = dĤ_{δ0δ1δ2} − η (ddIĤ_{δ0δ1δ2α} + ddIIĤ_{δ0δ1δ2α} + ddIIĤ_{δ0δ2δ1α}) ε_α

(sums over α, β, γ ∈ A; the ddNTKs do not move at this order).  With several outputs every
field carries its output neurons (Ĥ_{i1i2;δ1δ2}, …) and each ε_{j;α} its own, summed with the
field's matching slot: z_{i;δ}(t+1) = z_{i;δ} − η Σ_j Ĥ_{ji;αδ} ε_{j;α} + …

The average.  At initialisation (z, ΔĤ = Ĥ − E Ĥ, dĤ, ddĤ) are jointly nearly Gaussian
(docs/conventions.md §3): to O(1/n) every expectation is the one at the leading-order point —
z(0) ~ N(0, K), Ĥ = Θ, dĤ = ddĤ = 0, where the dynamics are kernel learning, linear in z(0) —
plus one insertion of each O(1/n) cumulant (the same rule as the layer step's, §6 step 4):

    E[Φ] = ⟨Φ⟩ + (1/n) ⟨ ∂_Ĥ Φ · H1 + ½ ∂²_z Φ · G1 + ½ ∂²_Ĥ Φ · C_HH + ½ ∂_Ĥ ∂²_z Φ · C_Hzz
                         + ∂_dĤ ∂_z Φ · C_dz + ∂_ddIĤ Φ · E_I + ∂_ddIIĤ Φ · E_II ⟩,

with the output neurons' δ-structures (:func:`cumulants`; docs/conventions.md §3), e.g.
n C_HH_{i1i2i3i4;abcd} = δ_{i1i2}δ_{i3i4} A_{abcd} + δ_{i1i3}δ_{i2i4} B_{acbd} + δ_{i1i4}δ_{i2i3}
B_{adbc} — for one output neuron they all coincide: n C_HH = A_{abcd} + B_{acbd} + B_{adbc},
n C_Hzz = D_{abcd} + F_{acbd} + F_{adbc}, n C_dz = P_{abcd} + P_{acbd} + Q_{abcd}, n E_I =
R_{abcd} + R_{acbd} + R_{adbc}, n E_II = S + T + Udd (the other cumulants are O(1/n²) or
leave a polynomial of too low a degree in z: V does not enter).  The
z-derivatives are traded for Hermite weights by Gaussian integration by parts
(⟨∂_c g⟩ = ⟨g u_c⟩, ⟨∂_c∂_d g⟩ = ⟨g (u_c u_d − K⁻¹_cd)⟩, u = K⁻¹z; evaluated in the
whitened variables, where they lose digits like cond(K), not cond(K)²), so every first-order
insertion is one directional derivative of the dynamics along

    Ĥ(0) → Θ + s [H1 + ½ C_Hzz : He(z)],  dĤ(0) → s C_dz · u,  ddIĤ → s E_I,  ddIIĤ → s E_II,

averaged over z ~ N(0, K) with the weight 1 + ½ G1 : He(z); the integrands are polynomials of
degree ≤ 5 in z, so a Gaussian cubature of degree 5 in the D = n_out N dimensions of the
outputs (:func:`cubature_degree5`: D² + 3D + 3 points, on a simplex's vertices and edge
midpoints, for D ≥ 4) gives the average exactly.  The insertions are linear at this
order, so the run goes in two parts that add up: the ddNTKs' E_I and E_II are the same at
every point, and the dynamics read z only at training samples (through ε), so their part of
z(t) depends on z_A(0) alone and is recorded at most linearly in z(0): it is averaged exactly
over a rule of degree 5 in the n_out N_A training dimensions, z_B(0) at its mean given z_A(0)
(133 points instead of 463 at 10 + 10 inputs, for the largest contractions of every step;
and with less rounding: at cond(K) = 6e10 rotations of its rule move it by about 1e-12 of the
coefficients, where over all N dimensions they moved the whole by up to 3e-3).  The
second-order insertion C_HH is Σ_r w_r × the s² coefficient along Ĥ(0) →
Θ + s U_r for the eigenpairs (w_r, U_r) of C_HH; there z(t) is affine in z(0) (Ĥ constant, no
dĤ), the integrands quadratic, and a cubature of degree 2 (D + 1 points) is exact.  Every run
propagates truncated Taylor coefficients in s ("jets") through the derived update equations.
Caveat: the statistics are the output layer's at O(1/n) only — z(0)'s higher cumulants and the
fields' mixed ones (ΔĤ dĤ, dĤ dĤ) enter at O(1/n²).
"""
from __future__ import annotations

import functools
import itertools
import math
import operator
import warnings
from functools import lru_cache
from typing import NamedTuple

import numpy as np
import sympy as sp

from ..activations.gaussian import map_blocks
from ..algebra.symbols import NeuronSum
from ..architectures.forward import TANGENT_FIELDS
from ..base.errors import DeriveError

__all__ = ["cubature_degree5", "cubature_degree2", "simplex_vertices", "degree5_points",
           "dynamics_work", "nlo_dynamics",
           "cumulants", "cumulant_structures", "dense_component", "step_terms"]

_FIELD_OF = {func: name for name, (func, _) in TANGENT_FIELDS.items()}


def cubature_degree5(m: int) -> tuple[np.ndarray, np.ndarray]:
    """Points (P, m) and weights (P,) of a cubature rule of degree 5 for the standard normal in
    m dimensions: E[p(x)] exactly for every polynomial p of degree ≤ 5.  The rule with fewer
    points of two: the simplex rule of Lu and Darmofal (SIAM J. Sci. Comput. 26, 613 (2004),
    their rule I; P = m² + 3m + 3, fewer for m ≥ 4 — 463 points where the other has 801 at
    m = 20) and Stroud's rule 5-2 (P = 2m² + 1).  Both have negative weights for larger m
    (the simplex rule from m = 8, Stroud's from m = 5); the sums of |weights| stay below 3
    (2.0 and 2.3 at m = 20)."""
    if m == 0:
        return np.zeros((1, 0)), np.ones(1)
    if degree5_points(m) < 2 * m * m + 1:
        return _simplex_degree5(m)
    r1 = math.sqrt(m + 2.0)
    r2 = math.sqrt((m + 2.0) / 2.0)
    pts = [np.zeros(m)]
    wts = [2.0 / (m + 2.0)]
    w1 = (4.0 - m) / (2.0 * (m + 2.0) ** 2)
    w2 = 1.0 / (m + 2.0) ** 2
    eye = np.eye(m)
    for i in range(m):
        for s in (1.0, -1.0):
            pts.append(s * r1 * eye[i])
            wts.append(w1)
    for i in range(m):
        for j in range(i + 1, m):
            for si in (1.0, -1.0):
                for sj in (1.0, -1.0):
                    pts.append(r2 * (si * eye[i] + sj * eye[j]))
                    wts.append(w2)
    return np.array(pts), np.array(wts)


def degree5_points(m: int) -> int:
    """The number of points of :func:`cubature_degree5` in m dimensions."""
    return 1 if m == 0 else min(m * m + 3 * m + 3, 2 * m * m + 1)


def simplex_vertices(m: int) -> np.ndarray:
    """The m + 1 unit vectors (rows) to the vertices of a regular simplex centred at the
    origin of R^m (a_k · a_l = −1/m for k ≠ l): the corners e_k of R^(m+1) less their mean,
    written in the Helmert basis of the hyperplane Σ x = 0 and normalised."""
    helmert = np.zeros((m, m + 1))
    for k in range(1, m + 1):
        helmert[k - 1, :k] = 1.0
        helmert[k - 1, k] = -float(k)
        helmert[k - 1] /= math.sqrt(k * (k + 1.0))
    a = (np.eye(m + 1) - 1.0 / (m + 1)) @ helmert.T
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def _simplex_degree5(m: int) -> tuple[np.ndarray, np.ndarray]:
    """Lu and Darmofal's rule I of degree 5 (:func:`cubature_degree5`), for the standard normal:
    the origin (weight 2/(m+2)); ±r a_k at the m + 1 vertices of a regular simplex (weight
    m²(7 − m) / (2 (m+1)² (m+2)²) each) and ±r b_kl at the m(m+1)/2 normalised edge midpoints
    b_kl ∝ a_k + a_l (weight 2 (m−1)² / ((m+1)² (m+2)²) each), all at radius r = √(m + 2)."""
    a = simplex_vertices(m)
    k, l = np.triu_indices(m + 1, 1)
    b = a[k] + a[l]
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    r = math.sqrt(m + 2.0)
    pts = np.concatenate([np.zeros((1, m)), r * a, -r * a, r * b, -r * b])
    wa = m * m * (7.0 - m) / (2.0 * (m + 1.0) ** 2 * (m + 2.0) ** 2)
    wb = 2.0 * (m - 1.0) ** 2 / ((m + 1.0) ** 2 * (m + 2.0) ** 2)
    wts = np.concatenate([[2.0 / (m + 2.0)], np.full(2 * (m + 1), wa), np.full(m * (m + 1), wb)])
    return pts, wts


def cubature_degree2(m: int) -> tuple[np.ndarray, np.ndarray]:
    """Points √m a_k at the m + 1 vertices of a regular simplex (:func:`simplex_vertices`),
    weights 1/(m+1): exact for the standard normal on every polynomial of degree ≤ 2 (Σ a_k = 0
    and Σ a_k a_kᵀ = (m+1)/m · 1)."""
    if m == 0:
        return np.zeros((1, 0)), np.ones(1)
    return math.sqrt(m) * simplex_vertices(m), np.full(m + 1, 1.0 / (m + 1))


#: the three ways of pairing four neuron slots by Kronecker δs (a cumulant's δ-structures)
PAIRINGS = (((0, 1), (2, 3)), ((0, 2), (1, 3)), ((0, 3), (1, 2)))


def cumulant_structures(st: dict) -> dict:
    """The O(1/n) cumulants of the output layer's fields, times n, by δ-structure (module
    docstring; docs/conventions.md §3): cumulant → {pairing of its four neuron slots
    (:data:`PAIRINGS`): its sample tensor (N, N, N, N)}, e.g. "HH" → {((0, 1), (2, 3)): A_abcd,
    ((0, 2), (1, 3)): B_acbd, ((0, 3), (1, 2)): B_adbc}, meaning n E[ΔĤ_{i1i2;ab} ΔĤ_{i3i4;cd}]
    = δ_{i1i2}δ_{i3i4} A_abcd + δ_{i1i3}δ_{i2i4} B_acbd + δ_{i1i4}δ_{i2i3} B_adbc.  The
    slots of "Hzz" are (Ĥ's two, z's, z's), of "dz" (dĤ's three, z's), of "I" and "II" the
    ddNTK's four."""
    A, B, D, F, P, Q, R, S, T, Udd = (np.asarray(st[k], dtype=float) for k in
                                      ("A", "B", "D", "F", "P", "Q", "R", "S", "T", "Udd"))

    def swap(x, spec):                     # swap(B, "acbd")[a, b, c, d] = B[a, c, b, d]
        return np.einsum(spec + "->abcd", x)

    parts = {"HH": (A, swap(B, "acbd"), swap(B, "adbc")),
             "Hzz": (D, swap(F, "acbd"), swap(F, "adbc")),
             "dz": (P, swap(P, "acbd"), Q),
             "I": (R, swap(R, "acbd"), swap(R, "adbc")),
             "II": (S, T, Udd)}
    return {name: dict(zip(PAIRINGS, xs)) for name, xs in parts.items()}


def dense_component(a: np.ndarray, pattern: tuple, slots: int, n_out: int,
                    batch: int = 0) -> np.ndarray:
    """The dense array (batch …, n_out × ``slots`` neurons, samples …) of a field's component
    ``a`` (batch …, its unpaired neuron slots in order, samples …) whose neuron slots
    ``pattern`` (pairs) are joined by Kronecker δs."""
    letters = "ABCDEFGH"[:slots]
    paired = {s for pair in pattern for s in pair}
    own = "".join(letters[s] for s in range(slots) if s not in paired)
    nb, ns = batch, a.ndim - batch - len(own)
    bl, sl = "pqr"[:nb], "stuvwxyz"[:ns]
    spec = ",".join([f"{letters[s]}{letters[t]}" for s, t in pattern]
                    + [bl + own + sl]) + f"->{bl}{letters}{sl}"
    return np.einsum(spec, *([np.eye(n_out)] * len(pattern)), a)


def cumulants(st: dict, n_out: int = 1) -> dict:
    """The O(1/n) cumulants of the output layer's fields, times n, with their neuron indices
    (module docstring; docs/conventions.md §3), from the output layer's statistics ``st`` (A, B,
    D, F, P, Q, R, S, T, Udd (N, N, N, N), dense) for ``n_out`` output neurons: "HH"
    (i1, i2, i3, i4, a, b, c, d) = n E[ΔĤ_{i1i2;ab} ΔĤ_{i3i4;cd}], "Hzz" = n E[ΔĤ_{i1i2;ab}
    z_{i3;c} z_{i4;d}], "dz" = n E[dĤ_{i0i1i2;abc} z_{i3;d}], "I" = n E[ddIĤ_{i0i1i2i3;abcd}],
    "II" = n E[ddIIĤ_{i1i2i3i4;abcd}] — each the sum of its three δ-structures
    (:func:`cumulant_structures`)."""
    return {name: _dense_cumulant(parts, n_out)
            for name, parts in cumulant_structures(st).items()}


def _dense_cumulant(parts: dict, n_out: int) -> np.ndarray:
    """One cumulant of :func:`cumulant_structures` with its neuron indices: the sum of its
    δ-structures."""
    return functools.reduce(operator.add, [dense_component(x, pattern, 4, n_out)
                                           for pattern, x in parts.items()])


def step_terms(eta: float) -> dict:
    """The derived update equations (:func:`derive.derivation.dynamics.gradient_step`) as
    numbers: field → [(coefficient, tangent field, its neuron slots, its sample slots, the
    number of ε factors)].  A sample slot is ("free", k) for the updated field's k-th own
    sample or ("sum", m) for the training sample of the term's m-th ε factor ε_{j_m;α_m}; a
    neuron slot likewise ("free", r) for the updated field's r-th own neuron or ("sum", m) for
    the output neuron j_m of the m-th ε (the sums over j_m and α_m are the contractions)."""
    from ..derivation.dynamics import EPS, ETA, gradient_step

    g = gradient_step()
    out = {}
    for name, expr in g.updates.items():
        # the sums over output neurons become contractions with the ε factors that carry them
        e = sp.expand(expr.replace(lambda x: isinstance(x, NeuronSum), lambda x: x.function))
        free = {a: k for k, a in enumerate(g.samples[name])}
        free_n = {i: r for r, i in enumerate(g.neurons[name])}
        terms = []
        for term in sp.Add.make_args(e):
            coeff, field, eps = sp.S.One, None, []
            for f in sp.Mul.make_args(term):
                if isinstance(f, sp.core.function.AppliedUndef) and f.func in _FIELD_OF:
                    field = f
                elif isinstance(f, sp.core.function.AppliedUndef) and f.func == EPS:
                    eps.append(f.args)
                else:
                    coeff *= f
            if field is None:
                raise DeriveError(f"the update term {term} holds no tangent field (internal error)")
            k = len(field.args) // 2
            summed = {a: m for m, (_, a) in enumerate(eps)}
            summed_n = {j: m for m, (j, _) in enumerate(eps)}
            if len(summed) != len(eps) or len(summed_n) != len(eps):
                raise DeriveError(f"the update term {term} repeats a summed index (internal error)")
            slots = tuple(("free", free[a]) if a in free else ("sum", summed[a])
                          for a in field.args[k:])
            nslots = tuple(("free", free_n[i]) if i in free_n else ("sum", summed_n[i])
                           for i in field.args[:k])
            terms.append((float(coeff.subs(ETA, eta)), _FIELD_OF[field.func], nslots, slots,
                          len(eps)))
        out[name] = terms
    return out


_LETTERS = "abcdefgh"


#: np.einsum's contraction order, per (spec, operand shapes): found once, not every step
_PATHS: dict = {}


def _einsum(spec: str, ops: list) -> np.ndarray:
    key = (spec, tuple(op.shape for op in ops))
    if key not in _PATHS:
        _PATHS[key] = np.einsum_path(spec, *ops, optimize="greedy")[0] if len(ops) > 1 else False
    return np.einsum(spec, *ops, optimize=_PATHS[key])


def _batch(a: np.ndarray, letters: str) -> int:
    """The number of leading batch axes of an operand ``a`` whose own axes are ``letters``."""
    return a.ndim - len(letters)


def _constant(a: np.ndarray, nb: int) -> bool:
    """Whether ``a`` is the same along its ``nb`` batch axes (broadcast or of length one)."""
    return all(st == 0 or n == 1 for st, n in zip(a.strides[:nb], a.shape[:nb]))


def _contract(spec: str, ops: list) -> np.ndarray:
    """np.einsum(spec, *ops) for a field (ops[0]) and its ε factors, the batch axes "..." (the
    cubature points; in the C_HH run a direction and a point, broadcast against each other).
    A field that is the same for every point (a constant field broadcast along the batch)
    enters once, without those axes: the ε factors (small, P × n_out × N_A each) are
    multiplied into one tensor per point first (summing a neuron index two of them share
    through a δ of the field's structure), which then meets the field in one matrix product —
    where np.einsum's own plan would loop over the points and all indices at once (ten times
    slower for three ε); an ε's index the field lacks (an output neuron it reaches through a
    δ) rides along as a batch axis.  When every operand is constant the result is computed
    once and broadcast.  Operands whose batches differ (a field per direction, ε per point)
    meet in a planned contraction (twenty times faster than repeating the field per point)."""
    ins, out = spec.split("->")
    terms = [t[3:] for t in ins.split(",")]
    nb = _batch(ops[0], terms[0])
    if not _constant(ops[0], nb):
        # planned (np.einsum's batched matrix products) where the batches differ or an ε
        # brings an index of the result (an outer product); else np.einsum's own loop, faster
        # for a field summed with ε in its middle axes (one output neuron: 10×)
        if len({op.shape[:_batch(op, t)] for op, t in zip(ops, terms)}) > 1 \
                or any(c in out for t in terms[1:] for c in t):
            return _einsum(spec, ops)
        v = _chain(terms, out[3:], ops, nb)
        return np.einsum(spec, *ops) if v is None else v
    field, fterm, res = ops[0][(0,) * nb], terms[0], out[3:]
    if len(ops) == 1:
        v = np.einsum(f"{fterm}->{res}", field)
        return np.broadcast_to(v, ops[0].shape[:nb] + v.shape)
    eps, eterm = ops[1], terms[1]
    for k in range(2, len(ops)):                 # the ε factors' product, per point
        later = fterm + res + "".join(terms[k + 1:])
        joined = "".join(dict.fromkeys(c for c in eterm + terms[k] if c in later))
        eps, eterm = np.einsum(f"...{eterm},...{terms[k]}->...{joined}", eps, ops[k]), joined
    rides = "".join(c for c in eterm if c not in fterm)          # in the result, not the field
    summed = "".join(c for c in eterm if c in fterm)
    kept = "".join(c for c in res if c in fterm)
    if any(c in res for c in summed) or sorted(rides + kept) != sorted(res):
        return _einsum(spec, ops)                # not one matrix product (no such term yet)
    if rides and eterm != rides + summed:
        eps = np.einsum(f"...{eterm}->...{rides}{summed}", eps)
    # one matrix product: (points, rides, the summed letters) × (summed letters, the rest)
    mat = np.einsum(f"{fterm}->{summed}{kept}", field)
    batch = eps.shape[:eps.ndim - len(summed)]
    v = np.ascontiguousarray(eps).reshape(-1, math.prod(mat.shape[:len(summed)])) \
        @ mat.reshape(-1, math.prod(mat.shape[len(summed):]))
    v = v.reshape(batch + mat.shape[len(summed):])
    return v if rides + kept == res else np.einsum(f"...{rides}{kept}->...{res}", v)


def _chain(terms: list, res: str, ops: list, nb: int):
    """A field that varies over the batch (``ops[0]``, its letters ``terms[0]``) contracted with
    its ε factors one at a time, each a batched vector–matrix product (np.matmul, about 2.5×
    faster than np.einsum's loop for dĤ_{δαβ} ε_α ε_β and dĤ_{δ1αδ2} ε_α per cubature point),
    where each ε sums one axis of the field and its other letters are of length one (one
    output neuron); else None.  The batch axes (``nb`` of them) are the same on every operand."""
    field, letters = ops[0], terms[0]
    sizes = dict(zip(letters, field.shape[nb:]))
    for op, t in zip(ops[1:], terms[1:]):
        sizes.update((c, n) for c, n in zip(t, op.shape[nb:]) if n != 1)
    long = {c for c, n in sizes.items() if n != 1}
    if any(c in long for c in res if c not in letters) or any(c not in letters for c in long):
        return None
    vecs = []
    for op, t in zip(ops[1:], terms[1:]):
        own = [c for c in t if c in long]
        if len(own) != 1 or own[0] in res or own[0] in (u for _, u in vecs):
            return None
        vecs.append((op.reshape(op.shape[:nb] + (sizes[own[0]],)), own[0]))
    # the field without its axes of length one, then one summed axis at a time
    keep = [c for c in letters if c in long]
    g = field.reshape(field.shape[:nb] + tuple(sizes[c] for c in keep))
    for e, c in vecs:
        i, rest = keep.index(c), len(keep) - 1
        if rest == 0:               # the field's last axis: a dot product
            g = (g[..., None, :] @ e[..., :, None])[..., 0, 0]
        elif i == rest:             # its last axis: matrix × vector
            g = (g @ e.reshape(e.shape[:nb] + (1,) * (rest - 1) + (-1, 1)))[..., 0]
        else:                       # another: that axis next to last, vector × matrix
            g = np.moveaxis(g, nb + i, -2) if i != rest - 1 else g
            g = (e.reshape(e.shape[:nb] + (1,) * (rest - 1) + (1, -1)) @ g)[..., 0, :]
        keep = keep[:i] + keep[i + 1:]
    kept = "".join(keep)
    g = np.einsum(f"...{kept}->...{''.join(c for c in res if c in long)}", g) \
        if len(kept) > 1 else g
    return g.reshape(g.shape[:nb] + tuple(sizes.get(c, 1) for c in res))


#: einsum letters: free samples, summed (training) samples, free neurons, summed neurons
_FREE, _SUMMED, _FREE_N, _SUMMED_N = "wxyz", _LETTERS, "IJKL", "ABCD"
#: the component of a field without δs between its neuron slots (every field of one output)
DENSE = ()


def training_slots(terms: dict, recorded=("z", "Hhat")) -> dict:
    """The sample slots of each updated field that the dynamics only ever read at training
    samples (field → frozenset of slot numbers): a slot is read at every sample where a term
    of another field's update puts one of that field's own samples, unless that slot is itself
    one of these; the ``recorded`` fields are read everywhere.  For the derived updates: the
    middle slot of dĤ (dĤ_{δαβ} in z's update, dĤ_{δ1αδ2} in Ĥ's, as the engine orders the
    symmetric pair), so dĤ is carried on N × N_A × N samples instead of N³."""
    sizes = {term[1]: len(term[3]) for ts in terms.values() for term in ts}
    cut = {name: (set() if name in recorded else set(range(sizes.get(name, 0))))
           for name in terms}
    changed = True
    while changed:
        changed = False
        for target, ts in terms.items():
            for _, field, _, slots, _ in ts:
                if field not in cut:
                    continue
                for s, (kind, k) in enumerate(slots):
                    if kind == "free" and k not in cut[target] and s in cut[field]:
                        cut[field].discard(s)
                        changed = True
    return {name: frozenset(v) for name, v in cut.items()}


@lru_cache(maxsize=None)
def _term_plan(term, pattern: tuple, NA: int, order: int, cut: frozenset = frozenset()) -> tuple:
    """What :func:`_term_value` does for one update term on one component of its field (the
    component whose neuron slots ``pattern`` are joined by Kronecker δs; :func:`nlo_dynamics`),
    worked out once: (the updated field's component it adds to, the plan).  The plan holds the
    field's component, its index (the summed sample slots cut to the training samples, and the
    free ones that the updated field keeps only there, ``cut``: :func:`training_slots`), the
    einsum spec, and the ways of distributing the jet orders (field's, each ε's) with total
    ≤ ``order``.  A δ joining two neuron slots of the field is carried out in the letters: a
    free slot and a summed one give that ε the free neuron; two summed ones give their two ε
    one neuron, summed; two free ones make a δ of the result (its component).  A component's
    array is (batch …, its unpaired neurons …, its samples …); an ε's (batch …, n_out, N_A)."""
    coeff, field, nslots, slots, neps = term
    paired = {s for pair in pattern for s in pair}
    eps_n = [_SUMMED_N[m] for m in range(neps)]          # each ε's neuron letter
    out_pairs = []
    for s1, s2 in pattern:
        (k1, a), (k2, b) = nslots[s1], nslots[s2]
        if k1 == "sum" and k2 == "sum":
            eps_n[b] = _SUMMED_N[a]
        elif k1 == "sum":
            eps_n[a] = _FREE_N[b]
        elif k2 == "sum":
            eps_n[b] = _FREE_N[a]
        else:
            out_pairs.append((min(a, b), max(a, b)))
    own = [s for s in range(len(nslots)) if s not in paired]
    index = (Ellipsis,) + (slice(None),) * len(own) + tuple(
        slice(None) if kind == "free" and k not in cut else slice(0, NA) for kind, k in slots)
    letters = "".join((_FREE_N if nslots[s][0] == "free" else _SUMMED_N)[nslots[s][1]]
                      for s in own) \
        + "".join((_FREE if kind == "free" else _SUMMED)[k] for kind, k in slots)
    joined = {k for pair in out_pairs for k in pair}
    out_letters = "".join(_FREE_N[k] for k in sorted(k for kind, k in nslots
                                                     if kind == "free" and k not in joined)) \
        + "".join(_FREE[k] for k in sorted(k for kind, k in slots if kind == "free"))
    spec = "..." + letters + "".join(",..." + eps_n[m] + _SUMMED[m] for m in range(neps)) \
        + "->..." + out_letters
    splits = tuple(ks for ks in itertools.product(range(order + 1), repeat=1 + neps)
                   if sum(ks) <= order)
    return tuple(sorted(out_pairs)), (coeff, (field, pattern), index, spec, splits)


def _term_value(term, states: dict, eps: list, NA: int, order: int,
                cut: frozenset = frozenset()) -> list:
    """The jet (Taylor coefficients in s up to ``order``; None for zero) of one update term,
    its fields dense (``states``: field name → jet; of a field kept at training samples only
    in its slots ``cut``)."""
    _, plan = _term_plan(term, DENSE, NA, order, cut)
    return _plan_value(plan, {(name, DENSE): jet for name, jet in states.items()}, eps, order)


def _field_letters(spec: str) -> str:
    """The field's own letters in a plan's einsum spec ("...IAJwax,...Aa->..." → "IAJwax")."""
    return spec.split(",")[0][3:]


def _fused_plans(plans: list, start: dict, updated, order: int) -> list:
    """The plans (:func:`_term_plan`) of the terms adding to one field component, with those
    whose tangent field is a constant — not ``updated`` and the same at every point of the
    batch in ``start`` (the ddNTKs) — summed into one constant per contraction: the terms with
    the same ε factors and result, and the same letters on the field, have their fields (each
    cut and laid out in one common order of its letters) summed, times their coefficients.
    Each step then contracts the ε factors with one tensor where it contracted three or four.
    A fused plan carries its field's jet itself (a list) in place of the component's key."""
    out, groups = [], {}
    for plan in plans:
        field, spec = plan[1], plan[3]
        letters = _field_letters(spec)
        jets = start.get(field, ())
        if field[0] in updated or not any(j is not None for j in jets) or \
                any(j is not None and not _constant(j, _batch(j, letters)) for j in jets):
            out.append(plan)
        else:
            ins, res = spec.split("->")
            key = (tuple(ins.split(",")[1:]), res, "".join(sorted(letters)), plan[4])
            groups.setdefault(key, []).append(plan)
    for (eterms, res, canon, splits), group in groups.items():
        if len(group) == 1:
            out.extend(group)
            continue
        jets = []
        for k in range(order + 1):
            total, batch = None, ()
            for coeff, field, index, spec, _ in group:
                jet = start[field][k]
                if jet is None:
                    continue
                letters = _field_letters(spec)
                nb = _batch(jet, letters)
                v = coeff * np.einsum(f"{letters}->{canon}", jet[(0,) * nb][index[1:]])
                total = v if total is None else total + v
                batch = np.broadcast_shapes(batch, jet.shape[:nb])
            jets.append(None if total is None else np.broadcast_to(total, batch + total.shape))
        spec = "..." + canon + "".join("," + e for e in eterms) + "->" + res
        out.append((1.0, jets, (Ellipsis,), spec, splits))
    return out


def _mirrored(plans: list) -> list:
    """``plans`` as [(plan, None) or (None, (j, spec))]: a plan whose term is an earlier one's
    (plan j) with its free letters exchanged — the same field, coefficient, cut and ε factors,
    its letters (the field's and the ε factors') a relabelling of plan j's that permutes the
    result's letters and fixes the others (dĤ_{δ2αδ1} ε_α beside dĤ_{δ1αδ2} ε_α in Ĥ's
    update) — is that plan's value with its axes exchanged, np.einsum(spec, ·), instead of a
    second contraction of the same field."""
    out = []
    for p, (coeff, field, index, spec, splits) in enumerate(plans):
        mirror = None
        ins, res = spec.split("->")
        for j in range(p):
            c2, f2, i2, s2, sp2 = plans[j]
            ins2, res2 = s2.split("->")
            if not (isinstance(field, tuple) and f2 == field and c2 == coeff and i2 == index
                    and sp2 == splits and res2 == res
                    and [len(t) for t in ins2.split(",")] == [len(t) for t in ins.split(",")]):
                continue
            sigma = {}
            for a, b in zip(ins2.replace("...", ""), ins.replace("...", "")):  # j's → p's
                if sigma.setdefault(a, b) != b:
                    break
            else:
                free = res[3:]
                if all(a in sigma for a in free) \
                        and all(sigma[a] == a for a in sigma if a not in free) \
                        and sorted(sigma[a] for a in free) == sorted(free):
                    mirror = (j, f"...{''.join(sigma[a] for a in free)}->...{free}")
                    break
        out.append((None if mirror else plans[p], mirror))
    return out


def _plan_value(plan, states: dict, eps: list, order: int) -> list:
    """The jet of one update term from its plan (:func:`_term_plan`, :func:`_fused_plans`)."""
    coeff, field, index, spec, splits = plan
    fj = states[field] if isinstance(field, tuple) else field
    result = [None] * (order + 1)
    for ks in splits:
        head = fj[ks[0]]
        if head is None:
            continue
        parts = [eps[k] for k in ks[1:]]
        if any(x is None for x in parts):
            continue
        if parts:   # the coefficient on the smallest operand, an ε (P × n_out × N_A)
            parts[0] = parts[0] * coeff
            v = _contract(spec, [head[index], *parts])
        else:
            v = _contract(spec, [head[index]]) * coeff
        total = sum(ks)
        result[total] = v if result[total] is None else result[total] + v
    return result


def _at_training(a: np.ndarray, cut: frozenset, first: int, NA: int) -> np.ndarray:
    """``a`` with its sample axes first + s, s in ``cut``, cut to the training samples."""
    index = [slice(None)] * a.ndim
    for s in cut:
        index[first + s] = slice(0, NA)
    return a[tuple(index)]


def _whiten(c: np.ndarray, white: np.ndarray, k: int) -> np.ndarray:
    """``c`` with each of its last ``k`` (sample) axes a contracted with white_{ma} (u = K⁻¹ z =
    x @ white): the cumulant as a function of the whitened variables x."""
    for axis in range(c.ndim - k, c.ndim):
        c = np.moveaxis(np.tensordot(c, white, axes=([axis], [1])), -1, axis)
    return c


#: the fewest outputs whose fields the dynamics carry by δ-structure (:func:`nlo_dynamics`).
#: Measured 2026-12-01, T = 1000, three outputs: 3 + 2 inputs 4.1 s against 7.4 s dense,
#: 4 + 2 7.1 s against 14.7 s; two outputs: 3 + 2 1.8 s against 1.3 s, 4 + 2 2.6 s against
#: 2.3 s, 6 + 4 12.7 s against 12.1 s — three components of dĤ with two neurons each are
#: more contractions for about as many numbers as the dense n_out³ = 8
STRUCTURED_FROM = 3

#: rough seconds per cubature point and step of the first-order run, a + b × (its
#: multiply-adds: :func:`dynamics_work`), for one output, for several with the fields dense
#: and by δ-structure; and per direction, point and step of the C_HH run (a + b × its
#: multiply-adds), per (n_out N)⁶ of C_HH's eigendecomposition, per step (the runs' Python
#: overhead, 0.4–0.7 ms a step at 2 + 1 … 6 + 4 inputs, T = 10 000) and once per call
#: ("setup": the cubature, the start, the plans).  Measured 2026-12-01 on 2 cores, one
#: process, T = 1000, one output: 3 + 2, 4 + 2, 6 + 4, 3 + 10 and 10 + 10 inputs 0.45, 0.42,
#: 0.67, 0.76 and 4.0 s; two outputs: 3 + 2 1.3 s, 4 + 2 2.3 s, 6 + 4 12 s; three (by
#: δ-structure): 3 + 2 4.1 s, 4 + 2 7.1 s — the estimates within 1.25× of each
_DYNAMICS_SECONDS = {"one": (3e-8, 5.4e-11), "dense": (3.2e-6, 2.0e-10),
                     "structured": (6.7e-6, 1.9e-10),
                     "C_HH": (5e-8, 1.2e-9), "eigh": 2e-9, "step": 4e-4, "setup": 0.05}


def dynamics_work(N: int, NA: int, n_out: int, steps: int) -> tuple[float, float]:
    """Rough (seconds, bytes) of :func:`nlo_dynamics` for N inputs (NA of them training
    inputs), n_out outputs and ``steps`` steps, on one process: the first-order run's two
    parts, over :func:`degree5_points` (n_out N) cubature points reading dĤ at each step and
    over degree5_points(n_out N_A) points also contracting the ddNTKs with ε (the
    multiply-adds counted below), the C_HH run over up to n_out² N² directions and n_out N + 1
    points, and C_HH's eigendecomposition; the bytes of the largest arrays (the Hermite
    weights and Ĥ's start at every point, C_HH as a matrix, one block's dĤ)."""
    P, PA = degree5_points(n_out * N), degree5_points(n_out * NA)
    structured = n_out >= STRUCTURED_FROM
    n, M, D2 = n_out, N * NA, n_out * n_out * N * N
    if structured:     # three δ-structures, each with at most one or two neurons left
        dd = 3 * (n * M * M + (2 * n * n + 1) * M * M / 3 + n * N * NA ** 3)
        reads, dH = 2 * n * n * N * M, 3 * n * N * M
    else:
        dd = n ** 4 * (M * M + M * M + N * NA ** 3)
        reads, dH = 2 * n ** 3 * N * M, n ** 3 * N * M
    a, b = _DYNAMICS_SECONDS["structured" if structured else "one" if n == 1 else "dense"]
    c, d = _DYNAMICS_SECONDS["C_HH"]
    seconds = steps * (_DYNAMICS_SECONDS["step"] + (P + PA) * a
                       + b * (P * reads + PA * (dd + reads))
                       + D2 * (n * N + 1) * (c + d * n * n * M)) \
        + _DYNAMICS_SECONDS["eigh"] * D2 ** 3 + _DYNAMICS_SECONDS["setup"]
    dd_bytes = (6 * N ** 4 if structured else 3 * n ** 4 * N ** 4)
    nbytes = 8 * (3 * P * D2 + 4 * min(P, POINT_BLOCK) * dH + 3 * D2 * D2 + dd_bytes)
    return seconds, nbytes


#: cubature points per block of the first-order run, at most (:func:`_point_blocks`)
POINT_BLOCK = 256


def _point_blocks(P: int) -> list:
    """P cubature points in fixed slices of at most :data:`POINT_BLOCK`, as equal as may be
    (one block up to 256 points; 463 points, 10 + 10 inputs: two).  They depend on P alone,
    not on the number of workers."""
    nb = -(-P // POINT_BLOCK)
    edges = [P * k // nb for k in range(nb + 1)]
    return [slice(a, b) for a, b in zip(edges[:-1], edges[1:])]


def _component_plans(terms: dict, cuts: dict, start: dict, NA: int, order: int) -> dict:
    """The plans (:func:`_term_plan`) of every term on every component of its field, by the
    updated field's component they add to: {(field, pattern): [plan, …]}, over the components
    in ``start`` and those the updates make from them (until no new one appears)."""
    comps = {}
    for name, pattern in start:
        comps.setdefault(name, set()).add(pattern)
    plans, changed = {}, True
    while changed:
        changed = False
        for name, ts in terms.items():
            for term in ts:
                for pattern in sorted(comps.get(term[1], ())):
                    out, plan = _term_plan(term, pattern, NA, order, cuts[name])
                    got = plans.setdefault((name, out), [])
                    if plan not in got:
                        got.append(plan)
                        changed = True
                    comps.setdefault(name, set()).add(out)
    return {key: plans[key] for key in sorted(plans)}


def _run(terms: dict, cuts: dict, start: dict, y, NA: int, order: int, times, record,
         progress=None):
    """Propagate the jets ``start`` (field component (name, pattern): :func:`_term_plan` → list
    of order + 1 arrays or None, leading axes the batch of cubature points) through ``terms``
    for max(times) steps, each field kept at training samples only in its slots
    ``cuts[field]`` (:func:`training_slots`); ``record(t, states)`` at the recorded steps (z is
    ``states["z", DENSE]``).  ``y`` (n_out, N_A): the targets."""
    states = {k: list(v) for k, v in start.items()}
    plans = {key: _mirrored(_fused_plans(ps, start, terms, order))
             for key, ps in _component_plans(terms, cuts, start, NA, order).items()}
    for key in plans:
        states.setdefault(key, [None] * (order + 1))
    # owned[key][k]: the array states[key][k] was made by this run's own additions and is
    # read by nothing else, so the next step adds into it in place (instead of allocating a
    # new one, N × N_A × N per point for dĤ); the start's arrays and the terms' values are not
    owned = {key: [False] * (order + 1) for key in plans}
    last = max(times)
    for t in range(last + 1):
        if t in times:
            record(t, states)
        if t == last:
            break
        z = states["z", DENSE]
        eps = [None if z[k] is None else (z[k][..., :NA] - y if k == 0 else z[k][..., :NA])
               for k in range(order + 1)]
        # every term's value from the states of step t first, then the additions
        values = {}
        for key, ps in plans.items():
            vals = values[key] = []
            for plan, mirror in ps:
                if mirror is None:
                    vals.append(_plan_value(plan, states, eps, order))
                else:       # a view of an earlier term's value: that value is not added into
                    vals.append([None if v is None else np.einsum(mirror[1], v)
                                 for v in vals[mirror[0]]])
        for key, vals in values.items():
            acc, own = states[key], owned[key]
            for jet in vals:
                for k, v in enumerate(jet):
                    if v is None:
                        continue
                    if acc[k] is None:
                        acc[k], own[k] = v, False
                    elif own[k] and acc[k].shape == np.broadcast_shapes(acc[k].shape, v.shape):
                        acc[k] += v
                    else:
                        acc[k], own[k] = acc[k] + v, True
        if progress is not None:
            progress(t + 1, last)
    return states


class _Same(NamedTuple):
    """A start array the same at every cubature point: broadcast along the batch, not copied
    (:func:`_contract` then meets it once)."""
    a: np.ndarray


def _components(name: str, jets: list, slots: int, n_out: int, structured: bool,
                batch: tuple) -> dict:
    """A field's start for :func:`_run`: {(name, pattern): [array or None per order]} from its
    jets given by δ-structure (per order, {pattern: array (batch …, its unpaired neurons …,
    samples …) or :class:`_Same` (without the batch)} or None); with ``structured`` False all
    in one dense component (one output: the δs are 1, and one contraction does the work of
    three)."""
    out = {}
    for k, given in enumerate(jets):
        sums = {}
        for pattern, a in (given or {}).items():
            same = isinstance(a, _Same)
            a = a.a if same else a
            if not structured:
                a = dense_component(a, pattern, slots, n_out, 0 if same else len(batch))
                pattern = DENSE
            acc = sums.setdefault(pattern, [None, None])      # batched, the same everywhere
            acc[same] = a if acc[same] is None else acc[same] + a
        for pattern, (varied, same) in sums.items():
            jet = out.setdefault((name, pattern), [None] * len(jets))
            if same is not None:
                same = np.broadcast_to(same, batch + same.shape)
            jet[k] = same if varied is None else varied if same is None else varied + same
    return out


def nlo_dynamics(K, Th, G1, H1, st: dict, Y, NA: int, eta: float, times: tuple,
                 progress=None, workers: int = 1) -> dict:
    """The O(1/n) coefficients (times n) of E[z(t)], E[z(t) ⊗ z(t)] and E[Ĥ(T) − Ĥ(0)] of the
    n_out output neurons trained by gradient descent (module docstring), and the leading-order
    mean and second moment from the same cubature (a check of the order-0 closed form).  ``st``
    the output layer's A, B, D, F, P, Q, R, S, T, Udd (:func:`cumulants`); ``Y`` (N_A, n_out)
    or (N_A,); ``times`` the recorded steps (T = the last); ``progress(run, t, T, points)``
    after each step t of the first-order run (1) and of the C_HH run (2) over ``points``
    cubature points.  The first-order run goes in two parts (module docstring), each over
    fixed blocks of points (:func:`_point_blocks`), on ``workers`` forked processes when more
    than one: the same numbers whatever their number.  Returns {"mean0", "mean1": {t: (n_out,
    N)}, "second0", "second1": {t: (n_out, N, n_out, N)}, "drift1": (n_out, n_out, N, N)}."""
    K = np.asarray(K, dtype=float)
    N = K.shape[0]
    Y = np.asarray(Y, dtype=float).reshape(NA, -1)
    n_out = Y.shape[1]
    y = np.ascontiguousarray(Y.T)                 # (n_out, N_A)
    times = tuple(sorted(set(times)))
    lam, Vk = np.linalg.eigh(0.5 * (K + K.T))
    if lam.min() <= 1e-12 * max(lam.max(), 1e-300):
        raise DeriveError("train(order=1) needs a positive-definite kernel K on the training and "
                          "test inputs (remove repeated or parallel inputs)")
    cond = lam.max() / lam.min()
    # measured on the benchmark's 10 + 10 inputs (cond 6e10): exact rules of degree 5 that
    # differ only in their rounding (rotations of one another) disagree by 1e-4 to 4e-4 of the
    # coefficients' size (2e-4 to 3e-3 while the ddNTK part was averaged over all N
    # dimensions) — below cond × 1e-14 (2e-10 at cond 1.5e5, 6 + 4 inputs)
    if cond > 1e9:
        warnings.warn(f"the kernel K on the training and test inputs is nearly singular "
                      f"(condition number {cond:.1e}: inputs close together); the O(1/n) "
                      f"coefficients carry rounding errors of about {cond * 1e-14:.0e} of their "
                      f"size", UserWarning, stacklevel=3)
    cs = cumulant_structures(st)
    terms = step_terms(eta)
    cuts = training_slots(terms)
    delta = np.eye(n_out)
    root = (Vk * np.sqrt(lam)).T                  # x ↦ x @ root: N(0, 1) → N(0, K)
    # The Hermite weights in the whitened variables x (z = x @ root): u = K⁻¹ z = x @ white and
    # He_{(ia)(jb)} = u_ia u_jb − δ_ij K⁻¹_ab = white_ka white_lb (x_ik x_jl − δ_ij δ_kl).  The
    # cumulants are carried to x once (``_whiten``) and meet x x − 1, whose entries are O(1):
    # forming K⁻¹ and u u − K⁻¹ instead loses digits like cond(K)², 1e-9 of the result at
    # cond(K) ~ 1e5 and all of it at 1e10 (ill-conditioned K: inputs close together)
    white = (Vk / np.sqrt(lam)).T
    X, wts = cubature_degree5(n_out * N)
    P = len(wts)
    x = X.reshape(P, n_out, N)
    z0 = x @ root                                 # (P, n_out, N): z_i ~ N(0, K), independent
    Hx = np.einsum("pik,pjl->pikjl", x, x) - np.einsum("ij,kl->ikjl", delta, np.eye(N))[None]
    weight1 = 0.5 * np.einsum("kl,pikil->p", _whiten(G1, white, 2), Hx)   # the G1 insertion δ_ij G1
    # Several outputs: the fields carried by δ-structure (:func:`_components`; from
    # STRUCTURED_FROM outputs), so that dĤ holds 3 n_out numbers per samples, not n_out³, and
    # the ddNTKs 3, not n_out⁴
    structured = n_out >= STRUCTURED_FROM
    pair = ((0, 1),)                              # δ_{i1i2}: Ĥ's leading order, Θ δ
    # run 1: every first-order insertion along one direction s.  Ĥ(0) → Θ + s (H1 + ½ C_Hzz :
    # He(z)), each δ-structure of C_Hzz contracted with He in the neurons its δs reach
    hs = {pair: H1[None]}
    for pattern, c in cs["Hzz"].items():
        partner = {a: b for pr in pattern for a, b in (pr, pr[::-1])}
        name = {0: "i", 1: "j"}
        he = [name.get(partner[slot], "k") for slot in (2, 3)]
        own = "".join(name[slot] for slot in (0, 1) if partner[slot] >= 2)
        key = tuple(pr for pr in pattern if max(pr) < 2)
        v = 0.5 * np.einsum(f"abcd,p{he[0]}c{he[1]}d->p{own}ab", _whiten(c, white, 2), Hx)
        hs[key] = hs[key] + v if key in hs else v
    # dĤ(0) → s C_dz · u, each δ-structure of C_dz contracted with u in z's neuron: the slot
    # of dĤ δ-joined to it carries that neuron (its one unpaired slot)
    dH0 = {tuple(pr for pr in pattern if 3 not in pr):
           np.einsum("abcd,pkd->pkabc",
                     _whiten(_at_training(c, cuts["dHhat"], 0, NA), white, 1), x)
           for pattern, c in cs["dz"].items()}
    # Run 1 goes in two parts whose sums add up to the one directional derivative (at first
    # order in s the dynamics are linear in the insertions): "main", the insertions into Ĥ(0)
    # and dĤ(0) (they vary with z(0) at all N samples) with the G1 weight, over the P points;
    # "dd", the ddNTKs' E_I and E_II.  Those are the same at every point and the dynamics read
    # z only at training samples (ε), so that part's z(t) is a function of z_A(0) alone and is
    # recorded only linearly in z(0) (z1 ⊗ z0): its average is exact over a rule of degree 5
    # in the n_out N_A training dimensions (133 points for N_A = 10, not 463), with z_B(0) at
    # its conditional mean given z_A(0) — x_B = 0 in z = L x, L the Cholesky factor of K.
    # That part alone carries the ddNTK terms, the largest contractions of every step.
    main = {**_components("z", [{DENSE: z0}, None], 1, n_out, structured, (P,)),
            **_components("Hhat", [{pair: _Same(Th)}, hs], 2, n_out, structured, (P,)),
            **_components("dHhat", [None, dH0], 3, n_out, structured, (P,))}
    XA, wA = cubature_degree5(n_out * NA)
    PA = len(wA)
    try:    # cond(K) < 1e12 here: the factor exists in double precision, but say so if not
        chol = np.linalg.cholesky(0.5 * (K + K.T))
    except np.linalg.LinAlgError:
        raise DeriveError("train(order=1) needs a positive-definite kernel K on the training "
                          "and test inputs; its Cholesky factor failed (remove repeated or "
                          "parallel inputs)") from None
    zA0 = XA.reshape(PA, n_out, NA) @ chol[:, :NA].T  # (PA, n_out, N): E[z(0) | z_A(0)]
    dd = {**_components("z", [{DENSE: zA0}, None], 1, n_out, structured, (PA,)),
          **_components("Hhat", [{pair: _Same(Th)}, None], 2, n_out, structured, (PA,)),
          **_components("ddIHhat", [None, {k: _Same(v) for k, v in cs["I"].items()}],
                        4, n_out, structured, (PA,)),
          **_components("ddIIHhat", [None, {k: _Same(v) for k, v in cs["II"].items()}],
                        4, n_out, structured, (PA,))}
    # the "dd" part first: its blocks cost about twice the others' (on two workers, 10 + 10
    # inputs: one worker takes it, the other the two "main" blocks)
    tasks = [("dd", sl) for sl in _point_blocks(PA)] + [("main", sl) for sl in _point_blocks(P)]

    def run1(task: int) -> dict:
        """Run 1 on the points of one block of one part: their weighted sums (a part of each
        average; the "dd" part's of the first-order ones only)."""
        which, sl = tasks[task]
        start = main if which == "main" else dd
        w = (wts if which == "main" else wA)[sl]
        part = {k: {} for k in ("mean0", "second0", "mean1", "second1")}

        def record1(t, st):
            z, z1 = st["z", DENSE]
            if which == "main":
                part["mean0"][t] = np.einsum("p,pia->ia", w, z)
                part["second0"][t] = np.einsum("p,pia,pjb->iajb", w, z, z)
                s1 = np.einsum("p,pia,pjb->iajb", (wts * weight1)[sl], z, z)
            else:
                part["mean0"][t] = np.zeros((n_out, N))
                part["second0"][t] = s1 = np.zeros((n_out, N, n_out, N))
            m1 = np.zeros((n_out, N)) if z1 is None else np.einsum("p,pia->ia", w, z1)
            if z1 is not None:
                s1 = s1 + np.einsum("p,pia,pjb->iajb", w, z1, z) \
                    + np.einsum("p,pia,pjb->iajb", w, z, z1)
            part["mean1"][t], part["second1"][t] = m1, s1

        tick = None
        if progress is not None and (workers == 1 or task == 0):
            # in steps of the whole run: on one process the blocks' steps in turn, on several
            # block 0's (they go at one pace)
            nb = len(tasks) if workers == 1 else 1
            tick = lambda t, T: progress(1, (task * T + t) // nb, T, P + PA)  # noqa: E731
        begin = {k: [None if a is None else a[sl] for a in v] for k, v in start.items()}
        st = _run(terms, cuts, begin, y, NA, 1, times, record1, tick)
        # E[Ĥ(T) − Ĥ(0)] at first order: Ĥ's components' first-order parts less their start
        # (the run adds into arrays of its own, never into the start's)
        part["drift1"] = functools.reduce(operator.add, [
            np.einsum("p,pijab->ijab", w, dense_component(
                jet[1] - (begin[key][1] if begin.get(key, (None, None))[1] is not None
                          else 0.0), key[1], 2, n_out, 1))
            for key, jet in st.items() if key[0] == "Hhat" and jet[1] is not None],
            np.zeros((n_out, n_out, N, N)))
        return part

    # the blocks' parts summed in their order: the same numbers whatever the number of workers
    parts = map_blocks(run1, list(range(len(tasks))), workers)
    out = {k: {t: functools.reduce(operator.add, [part[k][t] for part in parts]) for t in times}
           for k in ("mean0", "second0", "mean1", "second1")}
    out["drift1"] = functools.reduce(operator.add, [part["drift1"] for part in parts])
    # run 2: the C_HH insertion, second order along the eigenvectors of C_HH (Ĥ constant)
    D2 = n_out * n_out * N * N
    M = np.einsum("ijklabcd->ijabklcd", _dense_cumulant(cs["HH"], n_out)).reshape(D2, D2)
    w, V = np.linalg.eigh(0.5 * (M + M.T))
    keep = np.abs(w) > 1e-13 * max(np.abs(w).max(initial=0.0), 1e-300)
    w, V = w[keep], V[:, keep]
    if len(w):
        # z(t) is affine in z(0) here (Ĥ constant, no dĤ), the integrands quadratic: a rule of
        # degree 2 (n_out N + 1 points) is exact
        X3, w3 = cubature_degree2(n_out * N)
        P3 = len(w3)
        z3 = X3.reshape(P3, n_out, N) @ root
        R = len(w)
        U = V.T.reshape(R, n_out, n_out, N, N)
        U = 0.5 * (U + U.transpose(0, 2, 1, 4, 3))      # Ĥ_{ij;ab} = Ĥ_{ji;ba}
        # two batch axes (direction r, point p), broadcast: z(0) and Θ are the same for every
        # direction, the direction U_r the same at every point, so neither is repeated
        start = {**_components("z", [{DENSE: z3[None]}, None, None], 1, n_out, structured,
                               (1, 1)),
                 **_components("Hhat", [{pair: _Same(Th)}, {DENSE: U[:, None]}, None], 2, n_out,
                               structured, (1, 1))}
        ww = w[:, None] * w3[None, :]                    # eigenvalue × cubature weight

        def record2(t, st):
            z = [np.zeros((R, P3, n_out, N)) if a is None else
                 np.broadcast_to(a, (R, P3, n_out, N)) for a in st["z", DENSE]]
            out["mean1"][t] = out["mean1"][t] + np.einsum("rp,rpia->ia", ww, z[2])
            out["second1"][t] = out["second1"][t] + (
                np.einsum("rp,rpia,rpjb->iajb", ww, z[0], z[2])
                + np.einsum("rp,rpia,rpjb->iajb", ww, z[1], z[1])
                + np.einsum("rp,rpia,rpjb->iajb", ww, z[2], z[0]))

        _run(terms, cuts, start, y, NA, 2, times, record2,
             None if progress is None else lambda t, T: progress(2, t, T, R * P3))
    return out
