r"""Exact Gaussian orthant moments: ⟨z_1^m_1 … z_d^m_d ; z > 0⟩ for z ~ N(0, K), d ≤ 4.

Every average of a product of one-variable functions that are polynomials on each half-line
(ReLU, leaky ReLU, abs, their derivatives, products of these with polynomials) is a finite
sum of such moments: split each factor at its kink 0, and a quadrant with z_k < 0 is the
positive one of the covariance with row and column k negated.  The moments follow from the
orthant probability by Gaussian integration by parts,

    ⟨z_i g(z) ; z > 0⟩ = Σ_j K_ij ⟨∂_j g(z) ; z > 0⟩ + Σ_j K_ij p_j(0) ⟨g ; z > 0 given z_j = 0⟩,

each step lowering the degree by one and leaving at the kink z_j = 0 a boundary term: a moment
of one fewer variable under the conditional covariance (a Schur complement), weighted by the
density of z_j at 0.  The orthant probabilities are closed up to three variables
(1/2; 1/4 + asin ρ/(2π); 1/8 + Σ asin ρ_ij/(4π)); in four, Plackett's identity
∂P/∂ρ_ij = φ₂(0, 0; ρ_ij) P(the other two > 0 given z_i = z_j = 0) is integrated along a
path that switches on the correlations of one variable (Gauss–Legendre, substitution
t = sin θ / ρ which removes the 1/sqrt(1 − t²ρ²) of φ₂).

The functions here are plain numpy (no imports from the package), written so that their
source can be copied into a generated evaluator module: arrays of any common shape are
batches of covariances.
"""
from __future__ import annotations

import numpy

__all__ = ["half_moments", "half_moment", "quadrant_moment_table", "quadrant_moments",
           "orthant_probability", "orthant_moments"]


def half_moments(v, top, scale=1.0):
    """[scale ⟨x^k ; x > 0⟩ for k = 0 … top], x ~ N(0, v), v ≥ 0 (array): v^(k/2) (k−1)!! times
    1/2 (k even) or 1/sqrt(2π) (k odd), the powers of sqrt(v) by products (a fractional power
    costs many); 1/2 for k = 0 also at v = 0, the limit of a degenerate pair."""
    root = numpy.sqrt(v)
    double = [1.0, 1.0]  # (k − 1)!!
    for k in range(2, top + 1):
        double.append((k - 1) * double[k - 2])
    out, power = [], scale
    for k in range(top + 1):
        out.append(power * (double[k] * (0.5 if k % 2 == 0 else 1.0 / numpy.sqrt(2 * numpy.pi))))
        power = power * root
    return out


def half_moment(k, v):
    """⟨x^k ; x > 0⟩ for x ~ N(0, v), v ≥ 0 (array) (:func:`half_moments`)."""
    return half_moments(numpy.asarray(v, dtype=float), k)[k]


def quadrant_moment_table(A, B, C, top, rho=None):
    """moment(m, k) = ⟨x^m y^k ; x > 0, y > 0⟩ for (x, y) ~ N(0, [[A, C], [C, B]]) (arrays that
    broadcast together, A > 0, B > 0, C² ≤ AB), m, k ≤ top: exact, from the quadrant
    probability 1/4 + arcsin(ρ)/(2π) (ρ = C / sqrt(AB) unless given) by Gaussian integration
    by parts, which lowers m (or k) and leaves the boundary terms ⟨y^k ; y > 0 given x = 0⟩
    p_x(0) of the kink at 0 (and the same with x, y exchanged).  Stable up to ρ = ±1 (the
    conditional variances are clipped at 0).  Each entry, and those it recurses on, is
    computed when first asked for."""
    if rho is None:
        rho = numpy.clip(C / numpy.sqrt(A * B), -1.0, 1.0)
    # the boundary terms: x = 0 (D1[k]) and y = 0 (D2[m]), with the conditional variance of the
    # other variable
    D1 = half_moments(numpy.maximum(B - C * C / A, 0.0), top, 1.0 / numpy.sqrt(2 * numpy.pi * A))
    D2 = half_moments(numpy.maximum(A - C * C / B, 0.0), top, 1.0 / numpy.sqrt(2 * numpy.pi * B))
    memo = {}

    def moment(m, k):
        if (m, k) not in memo:
            if m == 0 and k == 0:
                value = 0.25 + numpy.arcsin(rho) / (2 * numpy.pi)
            elif m == 0:
                value = B * ((k - 1) * moment(0, k - 2) if k >= 2 else D2[0]) + C * D1[k - 1]
            else:
                value = (A * ((m - 1) * moment(m - 2, k) if m >= 2 else D1[k])
                         + C * (k * moment(m - 1, k - 1) if k >= 1 else D2[m - 1]))
            memo[m, k] = value
        return memo[m, k]

    return moment


def quadrant_moments(A, B, C, top):
    """M[m][k] = ⟨x^m y^k ; x > 0, y > 0⟩ for m, k ≤ top, all of them
    (:func:`quadrant_moment_table`)."""
    A = numpy.asarray(A, dtype=float)
    B = numpy.asarray(B, dtype=float)
    C = numpy.asarray(C, dtype=float)
    moment = quadrant_moment_table(A, B, C, top)
    return [[moment(m, k) for k in range(top + 1)] for m in range(top + 1)]


#: Gauss–Legendre points per panel of the path integral of the four-variable orthant
#: probability (ORTHANT_PANELS panels graded geometrically toward the end point)
ORTHANT_NODES = 10
ORTHANT_PANELS = 5


def _graded_rule(nodes, panels=ORTHANT_PANELS, ratio=0.2):
    """Nodes and weights on [0, 1]: ``nodes`` Gauss–Legendre points on each of ``panels``
    panels whose ends approach 1 geometrically (1 − ratio^j), the last reaching 1.  A nearly
    singular covariance puts a square-root branch point just beyond the end 1 of the path
    integral, at a distance of about the square root of its smallest eigenvalue; the grading
    resolves it down to eigenvalues of about ratio^(2 panels)."""
    x, w = numpy.polynomial.legendre.leggauss(nodes)
    ends = numpy.concatenate([1.0 - ratio ** numpy.arange(panels), [1.0]])
    lo, hi = ends[:-1, None], ends[1:, None]
    v = (0.5 * (lo + hi) + 0.5 * (hi - lo) * x).ravel()
    return v, (0.5 * (hi - lo) * w).ravel()


def orthant_probability(K, nodes=ORTHANT_NODES, panels=ORTHANT_PANELS):
    """P(z > 0) for z ~ N(0, K), K of shape (..., d, d) with d ≤ 4 and positive variances.
    d ≤ 3: closed.  d = 4: P = P(R₀) + Σ_k ∫ ρ_0k ∂P/∂ρ_0k dt along R(t), the correlation R
    with the correlations of the variable 0 scaled by t (R(0): z_0 independent, P = P₃/2);
    ∂P/∂ρ_0k = φ₂(0, 0; tρ_0k) (1/4 + arcsin(c_k)/(2π)), c_k the correlation of the other two
    given z_0 = z_k = 0.  With t = sin θ / ρ_0k the φ₂ factor cancels, and θ = θ_max (1 − (1 −
    v)²) removes the square-root end point of a singular K; ``nodes`` Gauss–Legendre points
    on each of ``panels`` panels in v, graded toward v = 1 (where a nearly singular K has its
    branch point).  Variable 0 is the one whose largest correlation is smallest (P is
    symmetric)."""
    K = numpy.asarray(K, dtype=float)
    d = K.shape[-1]
    sd = numpy.sqrt(numpy.diagonal(K, axis1=-2, axis2=-1))
    R = numpy.clip(K / (sd[..., :, None] * sd[..., None, :]), -1.0, 1.0)
    if d == 0:
        return numpy.ones(K.shape[:-2])
    if d == 1:
        return numpy.full(K.shape[:-2], 0.5)
    if d == 2:
        return 0.25 + numpy.arcsin(R[..., 0, 1]) / (2 * numpy.pi)
    if d == 3:
        return 0.125 + (numpy.arcsin(R[..., 0, 1]) + numpy.arcsin(R[..., 0, 2])
                        + numpy.arcsin(R[..., 1, 2])) / (4 * numpy.pi)
    if d != 4:
        raise ValueError(f"orthant probabilities are implemented for at most 4 variables, not {d}")
    shape = K.shape[:-2]
    R = R.reshape(-1, 4, 4)
    # the pivot: the variable whose largest correlation is smallest, moved to position 0
    off = numpy.abs(R) - numpy.eye(4)
    pivot = numpy.argmin(off.max(axis=2), axis=1)
    order = numpy.array([[p] + [k for k in range(4) if k != p] for p in range(4)])[pivot]
    R = numpy.take_along_axis(numpy.take_along_axis(R, order[:, :, None], axis=1),
                              order[:, None, :], axis=2)
    three = R[:, 1:, 1:]
    P = 0.5 * (0.125 + (numpy.arcsin(three[:, 0, 1]) + numpy.arcsin(three[:, 0, 2])
                        + numpy.arcsin(three[:, 1, 2])) / (4 * numpy.pi))
    v, w = _graded_rule(nodes, panels)
    step = 4096  # rows at a time: the temporaries (rows × nodes) stay in cache
    for lo in range(0, R.shape[0], step):
        P[lo:lo + step] += _orthant_path(R[lo:lo + step], v, w)
    return P.reshape(shape)


def _orthant_path(R, v, w):
    """The path integral of :func:`orthant_probability` (four variables, correlations R of
    shape (B, 4, 4) with the pivot at 0) on the nodes v and weights w in [0, 1]."""
    out = numpy.zeros(R.shape[0])
    for k in (1, 2, 3):
        a, b = [j for j in (1, 2, 3) if j != k]
        r0k = R[:, 0, k][:, None]
        tmax = numpy.arcsin(r0k)
        theta = tmax * (1.0 - (1.0 - v) ** 2)
        jac = tmax * 2.0 * (1.0 - v)
        small = numpy.abs(r0k) < 1e-300
        t = numpy.where(small, v, numpy.sin(theta) / numpy.where(small, 1.0, r0k))
        # the correlation of (z_a, z_b) given z_0 = z_k = 0 under R(t)
        r0a, r0b = t * R[:, 0, a][:, None], t * R[:, 0, b][:, None]
        rka, rkb, rab = R[:, k, a][:, None], R[:, k, b][:, None], R[:, a, b][:, None]
        c = t * r0k
        det = 1.0 - c * c
        # Σ_yx Σ_xx⁻¹ Σ_xy for x = (0, k), y = (a, b)
        saa = (r0a * r0a - 2 * c * r0a * rka + rka * rka) / det
        sbb = (r0b * r0b - 2 * c * r0b * rkb + rkb * rkb) / det
        sab = (r0a * r0b - c * (r0a * rkb + rka * r0b) + rka * rkb) / det
        vaa = numpy.maximum(1.0 - saa, 0.0)
        vbb = numpy.maximum(1.0 - sbb, 0.0)
        with numpy.errstate(invalid="ignore", divide="ignore"):
            cab = numpy.clip((rab - sab) / numpy.sqrt(vaa * vbb), -1.0, 1.0)
        cab = numpy.where(numpy.isfinite(cab), cab, 0.0)
        Q = 0.25 + numpy.arcsin(cab) / (2 * numpy.pi)
        out += (Q * jac) @ w / (2 * numpy.pi)
    return out


def orthant_moments(K, tops, nodes=ORTHANT_NODES):
    """{m: ⟨z_1^m_1 … z_d^m_d ; z > 0⟩} for z ~ N(0, K), K of shape (..., d, d), d ≤ 4, for
    every m (a tuple of d exponents) with m_k ≤ tops[k]: by Gaussian integration by parts down
    to orthant probabilities (module docstring).  A boundary term at z_j = 0 is a moment of
    the other variables under their covariance given z_j = 0 (conditions accumulate: given
    z_S = 0 for a set S), weighted by the density of z_S at 0; two variables left are closed
    (:func:`quadrant_moments`, stable for a degenerate pair), one is a half-line moment.  Needs
    positive variances and, for d ≥ 3, nonsingular principal submatrices of up to d − 2
    variables (their densities at 0 are divided by)."""
    K = numpy.asarray(K, dtype=float)
    d = K.shape[-1]
    tops = tuple(int(t) for t in tops)
    cond = {}    # S -> (the free variables R, their covariance given z_S = 0, p_S(0))
    cache = {}   # (S, m) -> array
    pair = {}    # S -> quadrant moments of the two free variables

    def given(S):
        if S not in cond:
            free = tuple(k for k in range(d) if k not in S)
            if not S:
                cond[S] = (free, K, numpy.ones(K.shape[:-2]))
            else:
                s, f = list(S), list(free)
                Kss = K[..., s, :][..., :, s]
                Ksf = K[..., s, :][..., :, f]
                Kff = K[..., f, :][..., :, f]
                Kc = Kff - numpy.swapaxes(Ksf, -1, -2) @ numpy.linalg.solve(Kss, Ksf)
                Kc = 0.5 * (Kc + numpy.swapaxes(Kc, -1, -2))
                dens = 1.0 / numpy.sqrt((2 * numpy.pi) ** len(S) * numpy.linalg.det(Kss))
                cond[S] = (free, Kc, dens)
        return cond[S]

    def moment(S, m):
        # m: the exponents of all d variables (those in S are 0)
        key = (S, m)
        if key in cache:
            return cache[key]
        free, Kc, dens = given(S)
        if len(free) == 1:
            out = dens * half_moment(m[free[0]], Kc[..., 0, 0])
        elif len(free) == 2:
            if S not in pair:
                top = max(tops[free[0]], tops[free[1]])
                pair[S] = quadrant_moments(Kc[..., 0, 0], Kc[..., 1, 1], Kc[..., 0, 1], top)
            out = dens * pair[S][m[free[0]]][m[free[1]]]
        elif not any(m):
            out = dens * orthant_probability(Kc, nodes)
        else:
            i = next(k for k in free if m[k] > 0)
            ii = free.index(i)
            low = list(m)
            low[i] -= 1
            out = 0.0
            for jj, j in enumerate(free):
                c = Kc[..., ii, jj]
                if low[j] > 0:
                    lower = list(low)
                    lower[j] -= 1
                    out = out + c * low[j] * moment(S, tuple(lower))
                else:
                    out = out + c * moment(tuple(sorted(S + (j,))), tuple(low))
        cache[key] = out
        return out

    grid = numpy.indices(tuple(t + 1 for t in tops)).reshape(d, -1).T
    return {tuple(int(e) for e in m): moment((), tuple(int(e) for e in m)) for m in grid}
