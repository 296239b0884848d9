r"""Numeric Gaussian expectations ⟨f⟩_K, closed form where one exists (docs/conventions.md §6 step 6).

``gaussian_expectation(f, K)`` evaluates ⟨f⟩_K = ∫ dz f(z) N(z; 0, K) for a SymPy expression
``f`` in the symbols ``z1 … zm`` and an m×m covariance ``K`` (or a batch of shape (B, m, m)).
The tiers, tried in order:

1. **polynomial** — exact, by Isserlis (:func:`derive.algebra.pairings.gaussian_monomial_moment`);
2. **closed form** — when ``f`` is a constant times one or two factors, each a function of
   one variable that belongs to a kernel family of ``rules/kernels`` (arc-cosine for
   scale-invariant σ and their step-function derivatives, arcsine for erf and erf', trig for
   sin and cos);
3. **orthant moments** — exact, when ``f`` is a sum of products of one-variable functions
   that are polynomials on each side of 0 (ReLU, leaky ReLU, abs, steps, their products with
   polynomials), in up to four variables: each factor split at 0, each sign region a positive
   orthant of the covariance with some signs flipped, each monomial's orthant moment by
   Gaussian integration by parts (:mod:`derive.activations.moments`).  Covariances with nearly
   dependent variables (the recursion divides by their densities at 0) go to the quadrature;
4. **quadrature** — nested conditional Gauss–Legendre: with K = L Lᵀ (a Cholesky factor that
   tolerates rank deficiency), z_k = Σ_{j<k} L_kj t_j + s_k t_k with t standard normal, and
   each one-dimensional integral over t_k ∈ [−10, 10] is split into panels *and at the kinks
   of f in z_k* (which move with the outer nodes).  Piecewise-analytic integrands therefore
   converge geometrically, kinks included.  The rule is applied at two node counts; their
   difference is the reported error, refined until it is below ``tol`` or a
   :class:`~derive.base.errors.QuadratureError` says what was reached.  A product of
   one-variable factors in three or four (effective) dimensions — ⟨σσσσ⟩ of the four-point
   vertex — uses the *conditional* rule: the last variable, Gaussian given the others, is
   integrated into the one-variable function G(u) = ⟨f_d(u + s η)⟩, averaged at every outer
   node in three dimensions and tabulated once per covariance in four (six-point
   interpolation, points near a kink computed directly; G's own average refined with the
   rungs), so the nested grid has d − 1 axes.  :func:`product_expectations`
   applies that rule to many products of smooth one-variable factors over the same
   covariances at once (one grid per covariance, each factor's values and each G made once):
   the batched evaluator's averages of two, three and four samples, where the recursions ask
   for dozens of products per set of samples.  There an axis along which the variables move
   little (nearly equal inputs) takes a Gauss–Hermite rule sized on the factors themselves,
   and G is averaged directly where that costs less than its table.

The result for one K is a :class:`GaussianValue` — a ``float`` with ``.error`` (absolute
error estimate) and ``.method`` — and for a batch a :class:`GaussianBatch` with arrays
``.value`` and ``.error`` (``np.asarray(batch)`` gives the values).

>>> import sympy as sp, numpy as np
>>> z1, z2 = sp.symbols('z1 z2')
>>> v = gaussian_expectation(sp.erf(z1) * sp.erf(z2), np.array([[1.0, 0.5], [0.5, 1.0]]))
>>> round(float(v), 12), v.method  # (2/π) asin(1/3)
(0.216346895939, 'closed form: arcsin.sigma_sigma')
>>> float(gaussian_expectation(z1**4, np.array([[2.0]])))
12.0
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import permutations
from functools import lru_cache

import numpy as np
import sympy as sp

from ..algebra.pairings import gaussian_monomial_moment
from ..base.errors import CovarianceError, DeriveError, QuadratureError, boundary
from ..base.parsing import as_expr
from .moments import ORTHANT_NODES, orthant_moments
from .catalogue import (check_nodes, kernel_rules, kinks_of, numpy_function, numpy_functions,
                        parse_function, probe_scale_invariant, real_line_problems, risky_nodes,
                        z as _z)

__all__ = ["gaussian_expectation", "GaussianValue", "GaussianBatch", "DEFAULT_TOL",
           "DEFAULT_TOL_KINKED",
           "check_covariance", "one_variable_factors", "separable_terms", "panel_rule",
           "product_expectations", "product_integrand", "FACTOR_VARIABLE"]

#: default tolerance by number of integrated dimensions (relative to max(1, |value|))
DEFAULT_TOL = {1: 1e-12, 2: 1e-12, 3: 1e-9, 4: 1e-6}
#: the same for integrands with kinks: in 3 and 4 dimensions the kinks of variables that are
#: (nearly) determined by the others — more inputs than input dimensions make K singular —
#: cross inside the inner integrals, which then bend where no panel ends, and the nested
#: rules reach about 1e-7 (3-D) and 1e-6 (4-D) at their finest (the error is reported)
DEFAULT_TOL_KINKED = {1: 1e-12, 2: 1e-12, 3: 1e-6, 4: 1e-5}
#: Gauss–Legendre points per panel, successive refinements, by dimension
_NODE_LADDER = {1: (12, 16, 24, 32, 48, 64, 128), 2: (10, 14, 20, 28, 40, 56, 96),
                3: (6, 9, 12, 16), 4: (3, 4, 6, 7)}
#: panel boundaries in units of the conditional standard deviation, by dimension (the
#: Gaussian tail beyond 10 is 1.5e-23, beyond 8 is 1.2e-15)
_PANELS = {1: np.array([-10.0, -6.0, -3.0, -1.5, 0.0, 1.5, 3.0, 6.0, 10.0]),
           2: np.array([-10.0, -6.0, -3.0, -1.5, 0.0, 1.5, 3.0, 6.0, 10.0]),
           3: np.array([-9.0, -4.5, -1.5, 0.0, 1.5, 4.5, 9.0]),
           4: np.array([-8.0, -4.0, -1.5, 0.0, 1.5, 4.0, 8.0])}
#: bound on nodes × batch elements held in memory at once
_CHUNK_NODES = 3_000_000


class GaussianValue(float):
    """⟨f⟩_K as a float, with ``.error`` (absolute error estimate) and ``.method``.

    The result of :func:`gaussian_expectation`: ``value`` (also ``float(v)``), ``error`` (the
    estimated absolute error, relative to ``max(1, |value|)``) and ``method`` (the tier that
    produced it, e.g. ``"exact: polynomial (Wick)"`` or a quadrature rule).
    """

    def __new__(cls, value: float, error: float, method: str):
        obj = super().__new__(cls, value)
        obj.error = float(error)
        obj.method = method
        return obj

    def __repr__(self) -> str:
        return f"{float(self)!r} ± {self.error:.1e} ({self.method})"


@dataclass(frozen=True)
class GaussianBatch:
    """⟨f⟩_K for a batch of covariances: arrays ``value`` and ``error`` of shape (B,)."""

    value: np.ndarray
    error: np.ndarray
    method: str

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.value, dtype=dtype)

    def __len__(self) -> int:
        return len(self.value)

    def __getitem__(self, k) -> GaussianValue:
        return GaussianValue(self.value[k], self.error[k], self.method)


# ---------------------------------------------------------------------------------------------
# input checks
# ---------------------------------------------------------------------------------------------

def check_covariance(K, name: str = "K") -> tuple[np.ndarray, bool]:
    """Validate a covariance (m×m or B×m×m); returns (array of shape (B, m, m), batched)."""
    try:
        arr = np.array(K, dtype=float)
    except (TypeError, ValueError):
        raise CovarianceError(f"covariance {name} is not a numeric array: {K!r}") from None
    batched = arr.ndim == 3
    if arr.ndim == 0:
        arr = arr.reshape(1, 1)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1] != arr.shape[2] or arr.shape[1] == 0:
        raise CovarianceError(f"covariance {name} must be square (m×m, or B×m×m for a batch); "
                              f"got shape {np.shape(K)}")
    if not np.all(np.isfinite(arr)):
        raise CovarianceError(f"covariance {name} has NaN or infinite entries")
    scale = np.maximum(np.abs(arr).max(axis=(1, 2)), 1e-300)
    asym = np.abs(arr - np.swapaxes(arr, 1, 2)).max(axis=(1, 2))
    bad = np.nonzero(asym > 1e-10 * scale)[0]
    if bad.size:
        raise CovarianceError(f"covariance {name}{_where(bad, batched)} is not symmetric "
                              f"(largest |K - Kᵀ| = {asym[bad[0]]:.3g})")
    arr = 0.5 * (arr + np.swapaxes(arr, 1, 2))
    diag = np.diagonal(arr, axis1=1, axis2=2)
    neg = np.nonzero((diag < 0).any(axis=1))[0]
    if neg.size:
        k = int(np.argmin(diag[neg[0]]))
        raise CovarianceError(f"covariance {name}{_where(neg, batched)} has a negative variance "
                              f"{name}[{k},{k}] = {diag[neg[0], k]:.6g}; variances must be ≥ 0")
    eig = np.linalg.eigvalsh(arr)[:, 0]
    npsd = np.nonzero(eig < -1e-10 * scale)[0]
    if npsd.size:
        raise CovarianceError(f"covariance {name}{_where(npsd, batched)} is not positive "
                              f"semi-definite (smallest eigenvalue {eig[npsd[0]]:.6g})")
    return arr, batched


def _where(idx, batched: bool) -> str:
    return f" (batch element {int(idx[0])})" if batched else ""


def _prepare(f, m: int) -> tuple[sp.Expr, dict]:
    """SymPy f and {symbol: position} for the z1 … zm it uses."""
    names = {f"z{k + 1}": sp.Symbol(f"z{k + 1}") for k in range(m)}
    if isinstance(f, str):
        f = parse_function(f, names, "integrand")
    try:
        f = as_expr(f)
    except (sp.SympifyError, TypeError):
        raise DeriveError(f"the integrand must be a SymPy expression in z1 … z{m}, got {f!r}") from None
    pos = {}
    for s in f.free_symbols:
        mt = re.fullmatch(r"z(\d+)", str(s))
        if s == _z:
            raise DeriveError(f"the integrand {f} uses the activation variable z; write it in "
                              f"z1 … z{m} (e.g. act(z1)*act(z2))")
        if not mt or not 1 <= int(mt.group(1)) <= m:
            raise DeriveError(f"the integrand {f} uses {s}; with a {m}×{m} covariance only "
                              f"z1 … z{m} may appear")
        pos[s] = int(mt.group(1)) - 1
    return f, pos


# ---------------------------------------------------------------------------------------------
# tier 1: polynomials
# ---------------------------------------------------------------------------------------------

def _polynomial(f, pos, K):
    syms = sorted(pos, key=pos.get)
    if syms and not f.is_polynomial(*syms):
        return None
    if not syms:
        c = complex(f.evalf()) if f.is_number else None
        if c is None or c.imag:
            return None
        v = np.full(K.shape[0], c.real)
        return v, np.zeros_like(v), "exact: constant"
    poly = sp.Poly(f, *syms)
    total = np.zeros(K.shape[0])
    size = np.zeros(K.shape[0])
    idx = [pos[s] for s in syms]
    sub = K[:, idx][:, :, idx]
    for exps, c in poly.terms():
        c = float(c)
        mom = gaussian_monomial_moment(exps, sub)
        total += c * mom
        size += np.abs(c * mom)
    return total, 1e-14 * np.maximum(size, 1.0), "exact: polynomial (Wick)"


# ---------------------------------------------------------------------------------------------
# tier 2: closed forms
# ---------------------------------------------------------------------------------------------

_ERF = sp.erf(_z)
_ERF1 = sp.diff(_ERF, _z)


#: (family, derivative order, reference function) recognised up to a constant factor
_KERNEL_FUNCTIONS = (("arcsin", 0, _ERF), ("arcsin", 1, _ERF1),
                     ("trig", 0, sp.sin(_z)), ("trig", 1, sp.cos(_z)))


def _may_be_constant(ratio: sp.Expr, points=("0.3712", "-0.8147", "1.2391")) -> bool:
    """False when ``ratio`` (a function of _z) takes different values at three ``points``, so
    that no simplification can make it a constant there (a tanh factor: the simplifications
    of :func:`_classify`, about 0.3 s, are not tried); True when it might be one (or a value
    is not a finite real number)."""
    values = []
    for x in points:
        v = sp.N(ratio.subs(_z, sp.Float(x, 30)), 20)
        if not (v.is_real and v.is_finite):
            return True
        values.append(float(v))
    return max(values) - min(values) <= 1e-9 * max(1.0, max(abs(v) for v in values))


def _classify(g: sp.Expr, var: sp.Symbol):
    """(family, derivative order, params, constant) of a one-variable factor, or None:
    ``g = constant · (the family's σ^{(order)})``."""
    h = g.subs(var, _z)
    for family, order, ref in _KERNEL_FUNCTIONS:
        if not _may_be_constant(h / ref):
            continue
        ratio = sp.simplify(h / ref)
        if ratio.is_number and ratio != 0:
            return family, order, (), ratio
    for order in (0, 1):
        r = h / _z if order == 0 else h      # a₊ on z > 0, a₋ on z < 0, if scale-invariant
        if not (_may_be_constant(r, ("0.3712", "1.2391", "2.71"))
                and _may_be_constant(r, ("-0.8147", "-1.93", "-0.42"))):
            continue
        slopes = probe_scale_invariant(h, _z, order)
        if slopes is not None:
            return "arccos", order, (("a_minus", slopes[1]), ("a_plus", slopes[0])), sp.S.One
    return None


@lru_cache(maxsize=512)
def _closed_form_plan(f: sp.Expr, pos_items: tuple):
    pos = dict(pos_items)
    # the kernel families have closed forms for one or two factors: a product of more (counted
    # with their powers) is not tried (classifying each factor costs SymPy simplifications)
    parts = [p for p in sp.Mul.make_args(sp.expand_power_exp(f)) if not p.is_number]
    count = sum(int(p.args[1]) if isinstance(p, sp.Pow) and p.args[1].is_Integer and p.args[1] > 0
                else 1 for p in parts)
    if len(f.free_symbols) > 2 or count > 2:
        return None
    coeff, factors = sp.S.One, []
    # SymPy merges exp(-z1**2)*exp(-z2**2) into one exp: split it back per variable
    for part in sp.Mul.make_args(sp.expand_power_exp(f)):
        if part.is_number:
            coeff *= part
            continue
        base, exp = part.args if isinstance(part, sp.Pow) else (part, sp.S.One)
        if not (exp.is_Integer and exp > 0):
            return None
        syms = base.free_symbols
        if len(syms) != 1:
            return None
        (var,) = syms
        cls = _classify(base, var)
        if cls is None:
            return None
        coeff *= cls[3] ** exp
        factors += [(pos[var], cls[:3])] * int(exp)
    if not 1 <= len(factors) <= 2 or len({c[1][0] for c in factors}) != 1 or \
            len({c[1][2] for c in factors}) != 1:
        return None
    family = factors[0][1][0]
    orders = tuple(c[1][1] for c in factors)
    for cf in kernel_rules(family):
        if cf.gives == orders:
            return cf, float(coeff), tuple(c[0] for c in factors), factors[0][1][2]
    return None


def _closed_form(f, pos, K):
    plan = _closed_form_plan(f, tuple(sorted(pos.items(), key=lambda kv: kv[1])))
    if plan is None:
        return None
    cf, coeff, idx, params = plan
    a = idx[0]
    b = idx[1] if len(idx) == 2 else a
    args = {"K11": K[:, a, a], "K12": K[:, a, b], "K22": K[:, b, b], **dict(params)}
    value = coeff * np.asarray(cf.evaluate(*(args[v] for v in cf.variables)), dtype=float)
    value = np.broadcast_to(value, (K.shape[0],)).astype(float)
    return value, 1e-14 * np.maximum(np.abs(value), 1.0), f"closed form: {cf.id}"


# ---------------------------------------------------------------------------------------------
# tier 3: exact orthant moments (products of functions polynomial on each half-line)
# ---------------------------------------------------------------------------------------------

#: whether averages of sums of products of one-variable functions that are polynomials on each
#: half-line (kink at 0 only: ReLU, leaky ReLU, abs, steps, their products with polynomials)
#: are computed exactly from orthant moments; False sends them to the quadrature (kept to
#: compare against)
_ORTHANT = True
#: a covariance whose correlation restricted to any d − 1 of its d variables has an eigenvalue
#: below this (or a zero variance) goes to the quadrature: the boundary terms of the moment
#: recursion divide by the densities of (nearly) dependent variables at 0
_ORTHANT_MIN_EIGEN = 1e-9
#: the 4-D orthant probability's path integral is also done with this many points per panel
#: (instead of ORTHANT_NODES): the difference is the error estimate
_ORTHANT_COARSE_NODES = 6
#: the largest degree of a half-line polynomial handled by the moment recursion
_ORTHANT_MAX_DEGREE = 12


def _half_line_polynomials(g: sp.Expr, var: sp.Symbol):
    """((P₊), (P₋)): the coefficients (lowest degree first, floats, as polynomials in z) of the
    polynomials that the one-variable ``g`` equals for var > 0 and var < 0, or None."""
    u = sp.Symbol("u_half", positive=True)
    sides = []
    for side in (1, -1):
        h = sp.expand(g.xreplace({var: side * u}))
        if h.has(sp.Heaviside, sp.Piecewise, sp.Abs, sp.sign, sp.Max, sp.Min):
            h = sp.expand(sp.piecewise_fold(h).simplify())
        if not h.is_polynomial(u):
            return None
        coeffs = sp.Poly(h, u).all_coeffs()[::-1] if h.has(u) else [h]
        if not all(c.is_number and c.is_real for c in coeffs):
            return None
        if len(coeffs) - 1 > _ORTHANT_MAX_DEGREE:
            return None
        sides.append(tuple(float(side ** m * c) for m, c in enumerate(coeffs)))
    return tuple(sides)


@lru_cache(maxsize=1024)
def _orthant_plan(f: sp.Expr, syms: tuple):
    """f = Σ_terms Π_k g_k(z_k) with every g_k polynomial on each half-line, as a tuple of terms,
    each a tuple (per variable of ``syms``) of (P₊, P₋) coefficient tuples; None otherwise."""
    if not syms or len(syms) > 4:
        return None
    rows = separable_terms(f, list(syms))
    if rows is None:
        return None
    plan = []
    for row in rows:
        term = []
        for g, var in zip(row, syms):
            pp = _half_line_polynomials(g, var)
            if pp is None:
                return None
            term.append(pp)
        plan.append(tuple(term))
    return tuple(plan)


def _orthant_sum(plan, sub: np.ndarray, d: int, nodes: int = ORTHANT_NODES):
    """Σ over the plan's terms and the 2^d sign regions of the moments, and the sum of the
    absolute values of the contributions (for the roundoff estimate)."""
    tops = tuple(max(len(term[k][side]) - 1 for term in plan for side in (0, 1)) for k in range(d))
    value = np.zeros(sub.shape[0])
    size = np.zeros(sub.shape[0])
    signs = np.array(np.meshgrid(*([[1.0, -1.0]] * d), indexing="ij")).reshape(d, -1).T
    signs = signs[signs[:, 0] > 0]  # −s has the same covariance D K D as s: computed with s
    # the quadrants' covariances D_s K D_s, all in one batch (n_signs × B)
    Ks = (sub[None] * signs[:, None, :, None] * signs[:, None, None, :]).reshape(-1, d, d)
    moments = {m: v.reshape(len(signs), -1) for m, v in orthant_moments(Ks, tops, nodes).items()}
    for n, s in enumerate(signs):
        M = {m: v[n] for m, v in moments.items()}
        for region in (s, -s):
            side = [0 if x > 0 else 1 for x in region]
            for term in plan:
                polys = [term[k][side[k]] for k in range(d)]
                if not all(any(p) for p in polys):
                    continue
                for m in np.ndindex(*(len(p) for p in polys)):
                    c = 1.0
                    for k in range(d):
                        c *= polys[k][m[k]] * region[k] ** m[k]
                    if c == 0.0:
                        continue
                    contrib = c * M[tuple(m)]
                    value += contrib
                    size += np.abs(contrib)
    return value, size


def _orthant(f, pos, K, tol):
    """⟨f⟩ exactly from orthant moments (:mod:`derive.activations.moments`) for f a sum of products
    of one-variable functions, each polynomial on either side of 0; covariances on which the
    recursion is ill-conditioned (a zero variance, or nearly dependent variables) go to the
    quadrature.  None when f is not of that form."""
    if not _ORTHANT:
        return None
    syms = tuple(sorted(f.free_symbols, key=pos.get))
    plan = _orthant_plan(f, syms)
    if plan is None:
        return None
    d = len(syms)
    idx = [pos[s] for s in syms]
    sub = K[:, idx][:, :, idx]
    var = np.diagonal(sub, axis1=1, axis2=2)
    ok = np.all(var > 1e-12 * np.maximum(var.max(axis=1, keepdims=True), 1e-300), axis=1)
    # the smallest eigenvalue of the correlation of any d − 1 of the variables: the boundary
    # terms' Schur complements lose about roundoff / that to cancellation
    lam = np.ones(K.shape[0])
    if d >= 3:
        sd = np.sqrt(np.where(ok[:, None], var, 1.0))
        R = sub / (sd[:, :, None] * sd[:, None, :])
        for drop in range(d):
            keep = [k for k in range(d) if k != drop]
            lam = np.minimum(lam, np.linalg.eigvalsh(R[:, keep][:, :, keep])[:, 0])
        ok &= lam > _ORTHANT_MIN_EIGEN
    value = np.empty(K.shape[0])
    error = np.empty(K.shape[0])
    good = np.nonzero(ok)[0]
    if good.size:
        v, size = _orthant_sum(plan, sub[good], d)
        # the integrand's magnitude in units of the standard deviations (what the recursion's
        # intermediate terms are of the order of, whatever cancels in the end)
        sdg = np.sqrt(var[good])
        scale = sum(np.prod([sum(abs(c) * sdg[:, k] ** j for side in term[k]
                                 for j, c in enumerate(side)) for k in range(d)], axis=0)
                    for term in plan)
        scale = np.maximum(np.maximum(size, scale), 1.0)
        err = 1e-14 * scale * 4 ** d + 1e-16 * scale / lam[good]
        if d == 4:  # the path integral of the 4-D orthant probability: against a coarser rule
            v2, _ = _orthant_sum(plan, sub[good], d, _ORTHANT_COARSE_NODES)
            err = np.maximum(err, np.abs(v - v2))
        value[good], error[good] = v, err
        # an estimate above the tolerance (nearly dependent variables): the quadrature instead
        limit = tol if tol is not None else DEFAULT_TOL_KINKED[d] * np.maximum(1.0, np.abs(v))
        ok[good] = err <= limit
    how = "exact: orthant moments"
    bad = np.nonzero(~ok)[0]
    if bad.size:
        qv, qe, qhow = _quadrature(f, pos, K[bad], tol)
        value[bad], error[bad] = qv, qe
        how += f" ({bad.size} of {K.shape[0]} nearly singular: {qhow})"
    return value, error, how


# ---------------------------------------------------------------------------------------------
# tier 4: quadrature
# ---------------------------------------------------------------------------------------------

def _tolerant_cholesky(K: np.ndarray) -> np.ndarray:
    """Lower-triangular L with L Lᵀ = K for PSD K of shape (B, d, d); a direction with zero
    conditional variance gets a zero column (the variable is then a function of the others)."""
    B, d, _ = K.shape
    L = np.zeros_like(K)
    scale = np.maximum(np.diagonal(K, axis1=1, axis2=2).max(axis=1), 1e-300)
    for k in range(d):
        s2 = K[:, k, k] - np.einsum("bj,bj->b", L[:, k, :k], L[:, k, :k])
        s2 = np.where(s2 > 1e-13 * scale, s2, 0.0)
        s = np.sqrt(s2)
        L[:, k, k] = s
        for i in range(k + 1, d):
            num = K[:, i, k] - np.einsum("bj,bj->b", L[:, i, :k], L[:, k, :k])
            L[:, i, k] = np.divide(num, s, out=np.zeros_like(num), where=s > 0)
    return L


@lru_cache(maxsize=64)
def _gauss_legendre(n: int):
    return np.polynomial.legendre.leggauss(n)


def _nested_nodes(L: np.ndarray, kinks: list, points: int, panels: np.ndarray,
                  levels: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes T (B, n, levels) and weights W (B, n) in t of the nested conditional rule over the
    first ``levels`` axes (``points`` Gauss–Legendre nodes per piece), each axis split at the
    panels and where a kink of its own variable or (nearly) one of a later variable (up to the
    last of L) is crossed."""
    B, d, _ = L.shape
    x, w = _gauss_legendre(points)
    T = np.zeros((B, 1, 0))
    W = np.ones((B, 1))
    for k in range(levels):
        N = T.shape[1]
        s = L[:, k, k][:, None, None]
        if not np.any(s > 0):  # z_k is a function of the outer variables in every element
            T = np.concatenate([T, np.zeros((B, N, 1))], axis=2)
            continue
        splits = [np.broadcast_to(panels, (B, N, len(panels)))]
        # split where a kink is crossed: of z_k itself, and of each later z_m whose conditional
        # spread is small against its dependence on t_k (at the point where z_m's mean given
        # t_1 … t_k crosses the kink).  With no spread (rank-deficient K) that kink is a point
        # on this axis; with little, the inner integral over t_m turns it into a bend narrower
        # than a panel.  Either converges only algebraically unless split.
        for m in range(k, d):
            if not kinks[m]:
                continue
            coef = L[:, m, k]
            if m > k:
                coef = np.where(L[:, m, m] < 2.0 * np.abs(coef), coef, 0.0)
                if not np.any(coef):
                    continue
            coef = coef[:, None, None]
            mu = np.matmul(T, L[:, m, :k, None])
            c = np.asarray(kinks[m])[None, None, :]
            with np.errstate(divide="ignore", invalid="ignore"):
                tk = np.where(coef != 0, (c - mu) / np.where(coef != 0, coef, 1.0), -np.inf)
            splits.append(np.clip(tk, panels[0], panels[-1]))
        S = np.sort(np.concatenate(splits, axis=2), axis=2)
        lo, hi = S[..., :-1], S[..., 1:]
        half = 0.5 * (hi - lo)
        mid = 0.5 * (hi + lo)
        t = (mid[..., None] + half[..., None] * x).reshape(B, N, -1)
        wt = (half[..., None] * w).reshape(B, N, -1) * np.exp(-0.5 * t * t) / np.sqrt(2 * np.pi)
        # zero conditional variance: z_k is fixed by the outer variables, integrate exactly
        wt = np.where(s > 0, wt, wt / wt.sum(axis=2, keepdims=True))
        Q = t.shape[2]
        T = np.concatenate([np.repeat(T, Q, axis=1), t.reshape(B, -1, 1)], axis=2)
        W = (W[:, :, None] * wt).reshape(B, -1)
    return T, W


def _nested_rule(fn, L: np.ndarray, kinks: list[tuple[float, ...]], rung: int,
                 deff: int) -> np.ndarray:
    """Σ w f(z) over the nested conditional rule at refinement ``rung`` of the ladders of
    effective dimension ``deff`` (the number of variables with conditional variance)."""
    B, d, _ = L.shape
    if not any(kinks):
        return _fixed_grid_rule(fn, L, rung, deff)
    T, W = _nested_nodes(L, kinks, _NODE_LADDER[deff][rung], _PANELS[deff], d)
    Z = np.matmul(T, np.swapaxes(L, 1, 2))  # z = L t at every node
    vals = fn(*(Z[..., i] for i in range(d)))
    vals = np.where(W == 0, 0.0, vals)
    return np.einsum("bn,bn->b", W, vals)


def panel_rule(points: int, panels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Composite Gauss–Legendre rule for t ~ N(0, 1): ``points`` nodes on each panel between
    successive ``panels`` boundaries, the standard normal density folded into the weights."""
    x, w = _gauss_legendre(points)
    lo, hi = panels[:-1, None], panels[1:, None]
    t = (0.5 * (lo + hi) + 0.5 * (hi - lo) * x).ravel()
    wt = (0.5 * (hi - lo) * w).ravel() * np.exp(-0.5 * t * t) / np.sqrt(2 * np.pi)
    return t, wt


@lru_cache(maxsize=32)
def _panel_rule_1d(deff: int, rung: int) -> tuple[np.ndarray, np.ndarray]:
    """The fixed rule of effective dimension ``deff`` at refinement ``rung``."""
    return panel_rule(_NODE_LADDER[deff][rung], _PANELS[deff])


@lru_cache(maxsize=64)
def _product_grid(deff: int, rung: int, active: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Tensor-product nodes (n × d) and weights of the fixed rule over the active axes."""
    t1, w1 = _panel_rule_1d(deff, rung)
    d = len(active)
    axes = [t1 if a else np.zeros(1) for a in active]
    waxes = [w1 if a else np.ones(1) for a in active]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, d)
    weights = np.prod(np.stack(np.meshgrid(*waxes, indexing="ij"), axis=-1).reshape(-1, d), axis=1)
    grid.setflags(write=False)
    weights.setflags(write=False)
    return grid, weights


def _fixed_grid_rule(fn, L: np.ndarray, rung: int, deff: int) -> np.ndarray:
    """The nested rule for integrands without kinks: the t-grid is the same for every matrix
    and outer node, so it is built once and mapped by each L (z = L t)."""
    B, d, _ = L.shape
    active = np.any(np.diagonal(L, axis1=1, axis2=2) > 0, axis=0)
    t1, w1 = _panel_rule_1d(deff, rung)
    grid, weights = _product_grid(deff, rung, tuple(bool(a) for a in active))
    Z = np.matmul(grid, np.swapaxes(L, 1, 2))  # (B, n, d): z = L t for every node
    out = fn(*(Z[..., i] for i in range(d))) @ weights
    # an element in which z_k has zero conditional variance (while it has some in another
    # element of the batch) does not depend on t_k: its t_k axis must integrate to exactly 1
    diag = np.diagonal(L, axis1=1, axis2=2)
    for k in np.nonzero(active)[0]:
        out = np.where(diag[:, k] > 0, out, out / w1.sum())
    return out


def one_variable_factors(f: sp.Expr, variables: list) -> list | None:
    """f = Π_k g_k(variables[k]) as [g_1, …] (constant factors go into g_1; a variable without
    a factor gets 1), or None when some factor depends on several of the variables."""
    per = [sp.S.One for _ in variables]
    for part in sp.Mul.make_args(sp.expand_power_exp(f)):
        hit = [k for k, v in enumerate(variables) if part.has(v)]
        if len(hit) > 1:
            return None
        per[hit[0] if hit else 0] *= part
    return per


def _distribute(f: sp.Expr, variables: set, budget: list | None = None) -> list | None:
    """f as a list of terms, multiplying out only the sums (and whole powers of sums) that
    depend on several of the variables; None if something else couples them or the
    expansion grows past 256 terms."""
    budget = [256] if budget is None else budget
    if len(f.free_symbols & variables) <= 1:
        return [f]
    if isinstance(f, sp.Add):
        out = []
        for a in f.args:
            part = _distribute(a, variables, budget)
            if part is None:
                return None
            out += part
        return out
    if isinstance(f, sp.Pow) and f.exp.is_Integer and f.exp > 1 and isinstance(f.base, sp.Add):
        return _distribute(sp.Mul(*([f.base] * int(f.exp)), evaluate=False), variables, budget)
    if isinstance(f, sp.Mul):
        out = [sp.S.One]
        for factor in sp.Mul.make_args(sp.expand_power_exp(f)):
            part = _distribute(factor, variables, budget)
            if part is None:
                return None
            out = [a * b for a in out for b in part]
            budget[0] -= len(out)
            if budget[0] < 0:
                return None
        return out
    return None


def separable_terms(f: sp.Expr, variables: list) -> list[list] | None:
    """f = Σ_k Π_j g_kj(variables[j]) as [[g_k1, g_k2, …], …]: one term when f factors (see
    :func:`one_variable_factors`), else the terms of f expanded (products of sums, exponentials
    of sums), those with equal factors but one merged; None when some term does not factor.
    (SymPy distributes numbers over sums, so σ'(z1)σ'(z2) of GELU arrives as a sum.)"""
    per = one_variable_factors(f, variables)
    if per is not None:
        return [per]
    terms = _distribute(f, set(variables))
    if terms is None:
        return None
    rows = []
    for term in terms:
        per = one_variable_factors(term, variables)
        if per is None:
            return None
        rows.append(per)
    # merge terms that differ in one factor only: Σ f ⊗ g_k = f ⊗ Σ g_k (fewer averages)
    for j in range(len(variables)):
        merged: dict = {}
        for row in rows:
            key = tuple(sp.srepr(g) for k, g in enumerate(row) if k != j)
            if key in merged:
                merged[key][j] += row[j]
            else:
                merged[key] = list(row)
        rows = list(merged.values())
    return rows


def _separable_factors(f: sp.Expr, syms: list) -> list | None:
    """numpy functions of the one-variable factors of f (None for a factor 1), or None."""
    per = one_variable_factors(f, syms)
    if per is None:
        return None
    return [numpy_function(g, (s,)) if g != 1 else None for s, g in zip(syms, per)]


def _separable_rule(fns: list, L: np.ndarray, rung: int, deff: int) -> np.ndarray:
    """The fixed rule for a product of one-variable factors, summed from the inside out:
    Σ_{t1} w f1(z1) Σ_{t2} w f2(z2) … with z = L t lower-triangular, so factor k is evaluated
    on Q^k nodes only (Q^d + Q^{d-1} + … evaluations instead of d·Q^d)."""
    B, d, _ = L.shape
    diag = np.diagonal(L, axis1=1, axis2=2)
    active = np.any(diag > 0, axis=0)
    t1, w1 = _panel_rule_1d(deff, rung)
    ts = [t1 if a else np.zeros(1) for a in active]
    ws = [w1 if a else np.ones(1) for a in active]
    # z_k on the grid of the first k+1 axes: shape (B, Q_0, …, Q_k)
    inner = None
    for k in range(d - 1, -1, -1):
        shape = [B] + [len(t) for t in ts[:k + 1]]
        # z_k = Σ_{j≤k} L_kj t_j, grown one axis at a time (each step costs the current size)
        z = L[:, k, 0][:, None] * ts[0][None, :]
        for j in range(1, k + 1):
            z = z[..., None] + (L[:, k, j][:, None] * ts[j][None, :]).reshape(
                B, *([1] * j), len(ts[j]))
        vals = fns[k](z) if fns[k] is not None else np.ones(shape)
        if inner is not None:
            vals = vals * inner
        w = ws[k]
        if active[k]:
            # an element in which z_k has no conditional variance does not depend on t_k
            w_b = np.where(diag[:, k:k + 1] > 0, w[None, :], w[None, :] / w.sum())
        else:
            w_b = np.broadcast_to(w[None, :], (B, len(w)))
        inner = np.einsum("b...q,bq->b...", vals, w_b)
    return inner


def _chunked_rule(fn, L, kinks, rung, deff, nodes) -> np.ndarray:
    """:func:`_nested_rule` (or, for a list of one-variable factors without kinks,
    :func:`_separable_rule`) over a batch, in chunks that keep nodes × matrices bounded."""
    chunk = max(1, _CHUNK_NODES // max(nodes, 1))
    if isinstance(fn, list):
        return np.concatenate([_separable_rule(fn, L[s:s + chunk], rung, deff)
                               for s in range(0, L.shape[0], chunk)]) if L.shape[0] else np.empty(0)
    return np.concatenate([_nested_rule(fn, L[s:s + chunk], kinks, rung, deff)
                           for s in range(0, L.shape[0], chunk)]) if L.shape[0] else np.empty(0)


# ---------------------------------------------------------------------------------------------
# tier 4, products of one-variable factors in three and four dimensions: the conditional rule
# ---------------------------------------------------------------------------------------------

#: whether ⟨f1(z1) … fd(zd)⟩ in three or four dimensions uses the conditional rule (the last
#: variable integrated out into a tabulated one-variable function, d−1 nested axes outside);
#: False restores the plain nested rule over all d axes (kept to compare against)
_CONDITIONAL = True
#: Gauss–Legendre points per panel of the outer axes of the conditional rule, by dimension
#: (of the outer axes + 1), successive refinements (in three and four dimensions without
#: kinks, per panel of :func:`_outer_rule`'s one mapped interval: 24, 30, 36 … nodes an axis;
#: where a run starts, :func:`_cond_ladder`)
_COND_LADDER = {2: (10, 14, 20, 28), 3: (4, 5, 6, 8, 10, 13, 16), 4: (4, 5, 6, 7, 9, 12)}
#: the rungs in front of _COND_LADDER[deff] that only a tolerance of 1e-7 or coarser starts on
#: (24 nodes an axis in three and four dimensions: on tanh networks' 4-D averages at most
#: 2.3e-7 from the converged value, so that 24 and 30 nodes confirm the 1e-6 of train(order=1)
#: where 30 and 36 did before, at 0.55 of the nodes)
_COARSE_RUNGS = {2: 0, 3: 1, 4: 1}
#: the same for integrands with kinks (piecewise, they start finer)
_COND_LADDER_KINKED = {2: (12, 16, 24, 32), 3: (8, 10, 13, 16), 4: (6, 7, 9, 12)}
#: the innermost function G(u) = ⟨f(u + s η)⟩_η is tabulated with at most this spacing (and at
#: most _TABLE_MAX nodes) and read back by six-point Lagrange interpolation
_TABLE_STEP = 0.05
_TABLE_MAX = 4096
#: Gauss–Legendre points per panel (panels of the 1-D rule) of G's own integral
_INNER_POINTS = 8
_STENCIL = np.arange(-2, 4)
#: up to this many variables the conditional rule averages the last one at every outer node
#: instead of reading a table: the table's six-point interpolation error (about 2e-9 for erf
#: products, common to every rung and so never seen) is above the 3-D default tolerance 1e-9
_DIRECT_DIMS = 3


def _smoothed_direct(fns, kinks: tuple, U: np.ndarray, s: np.ndarray,
                     rule: tuple | None = None) -> np.ndarray:
    """G(u) = ⟨f(u + s η)⟩ over η ~ N(0, 1) for the F functions of ``fns`` (x ↦ the list of
    their values at x) at the points U (B, n), s of shape (B,) or (B, n): (F, B, n), a 1-D panel
    rule (or, without kinks, ``rule``: nodes and weights in η), split where u + s η crosses a
    kink of f; s = 0 gives f(u)."""
    B, n = U.shape
    if n == 0:
        return np.empty((len(fns(np.zeros((B, 0)))), B, 0))
    s = np.broadcast_to(np.asarray(s, dtype=float).reshape(B, -1), (B, n))
    panels = _PANELS[1]
    per = (len(panels) - 1 + len(kinks)) * _INNER_POINTS
    out = None
    step = max(1, _CHUNK_NODES // max(B * per, 1))
    if not kinks:  # the same nodes in η for every point
        t, w = rule if rule is not None else panel_rule(_INNER_POINTS, panels)
        for a in range(0, n, step):
            u, sd = U[:, a:a + step], s[:, a:a + step]
            vals = [v @ w for v in fns(u[..., None] + sd[..., None] * t)]
            if out is None:
                out = np.empty((len(vals), B, n))
            out[:, :, a:a + step] = vals
        return out
    x, w = _gauss_legendre(_INNER_POINTS)
    c = np.asarray(kinks, dtype=float)
    for a in range(0, n, step):
        u, sd = U[:, a:a + step], s[:, a:a + step]
        m = u.shape[1]
        with np.errstate(divide="ignore", invalid="ignore"):
            tk = np.where(sd[..., None] > 0, (c - u[..., None]) / np.where(sd > 0, sd, 1.0)[..., None],
                          panels[0])
        S = np.sort(np.concatenate([np.broadcast_to(panels, (B, m, len(panels))),
                                    np.clip(tk, panels[0], panels[-1])], axis=2), axis=2)
        lo, hi = S[..., :-1], S[..., 1:]
        half, mid = 0.5 * (hi - lo), 0.5 * (hi + lo)
        t = (mid[..., None] + half[..., None] * x).reshape(B, m, -1)
        wt = (half[..., None] * w).reshape(B, m, -1) * np.exp(-0.5 * t * t) / np.sqrt(2 * np.pi)
        vals = [np.where(sd > 0, np.einsum("bmq,bmq->bm", v, wt), f)
                for v, f in zip(fns(u[..., None] + sd[..., None] * t), fns(u))]
        if out is None:
            out = np.empty((len(vals), B, n))
        out[:, :, a:a + step] = vals
    return out


def _smoothed_at_nodes(fns, u: np.ndarray, s: np.ndarray, rule: tuple) -> list:
    """G(u) = ⟨f(u + s η)⟩ for the functions of ``fns`` (x ↦ the list of their values at x) at
    every point of u (B, …), s of shape (B,): Σ_j w_j f(u + s t_j) on ``rule`` (nodes and
    weights in η), f(u) exactly where s = 0; a list, one array of u's shape per function."""
    sb = s.reshape((u.shape[0],) + (1,) * (u.ndim - 1))
    G = None
    for t, w in zip(*rule):
        vals = fns(u + sb * t)
        G = [v * w for v in vals] if G is None else [g + v * w for g, v in zip(G, vals)]
    if not np.all(sb > 0):
        G = [np.where(sb > 0, g, f) for g, f in zip(G, fns(u))]
    return G


#: monomial coefficients (in r, the position within a table interval) of the polynomial through
#: the six table values at offsets _STENCIL: coefficients = values @ _LAGRANGE.T
_LAGRANGE = np.linalg.inv(np.vander(_STENCIL.astype(float), 6, increasing=True))


def _smoothed(fn, kinks: tuple, U: np.ndarray, s: np.ndarray, sd_u: np.ndarray,
              rule: tuple | None = None) -> np.ndarray:
    """G(u) = ⟨f(u + s η)⟩ at the points U (B, n), s (B,): read from a table of G over
    |u| ≤ 9 sd_u (spacing ≤ _TABLE_STEP, six-point interpolation; points beyond, whose Gaussian
    weight is below e^-40, are read at the end of the table), and computed directly where a
    point lies within 9 s (plus the stencil) of a kink of f, where G bends on the scale s."""
    return _smoothed_many(lambda x: [fn(x)], U, s, sd_u, kinks, rule)[0]


@lru_cache(maxsize=32)
def _outer_rule(points: int, deff: int) -> tuple[np.ndarray, np.ndarray]:
    """The one-variable rule (nodes, weights; the standard normal density in the weights) of
    each outer axis of the conditional rule without kinks: as many Gauss–Legendre nodes as
    ``points`` on each panel of ``_PANELS[deff]`` would give, on one interval x ∈ [−1, 1]
    mapped by t = sinh(a x), a = arsinh(c), c the outermost panel boundary (9 in three
    dimensions, 8 in four) — dense near t = 0, sparse in the tails.  Products of σ and its
    derivatives up to σ‴ (tanh, erf, layers 2 and 3) converge about one rung sooner than on
    the panels: in four dimensions 36 nodes an axis give 1e-8 … 3e-7 where the panels give
    2e-5 … 2e-4, and 42 give 1e-8 where the panels give 3e-6 … 2e-5; in three, 30 give
    3e-8 … 7e-8 where 48 on the panels give 2e-8 … 4e-7 (both reach the 1e-9 of the
    tabulated inner function at 60).  (One and two dimensions: the panels.)"""
    panels = _PANELS[deff]
    if deff < 3:
        return panel_rule(points, panels)
    x, w = _gauss_legendre(points * (len(panels) - 1))
    a = np.arcsinh(panels[-1])
    t = np.sinh(a * x)
    return t, w * a * np.cosh(a * x) * np.exp(-0.5 * t * t) / np.sqrt(2 * np.pi)


def _cond_ladder(deff: int, tol: float) -> tuple[tuple, int]:
    """The conditional rule's ladder (without kinks) for a tolerance ``tol``, and the number of
    its first rung for :func:`_slow_target` (0 at 30 nodes an axis, −1 at 24).  A tolerance
    of 1e-7 or coarser starts at the first rung; a finer one skips :data:`_COARSE_RUNGS`
    (they would differ by more than it asks), in three dimensions starting at 8 points a panel
    (30 and 36 nodes differ by about 1e-8 … 1e-7 there, so comparing them would only add a
    rung)."""
    ladder = _COND_LADDER[deff]
    start = 0 if tol >= 1e-7 else _COARSE_RUNGS[deff] + (2 if deff == 3 else 0)
    return ladder[start:], start - _COARSE_RUNGS[deff]


def _outer_axes(L: np.ndarray, points: int, deff: int) -> tuple[list, list]:
    """The outer axes of the conditional rule without kinks: nodes t_k of each axis (one node
    t = 0 where z_k has no conditional variance in any matrix) and the weights per matrix
    (B, Q_k) — normalised to 1 in a matrix where z_k has none while others of the batch do."""
    B, d, _ = L.shape
    diag = np.diagonal(L, axis1=1, axis2=2)
    t1, w1 = _outer_rule(points, deff)
    ts, w_b = [], []
    for k in range(d - 1):
        if np.any(diag[:, k] > 0):
            ts.append(t1)
            w_b.append(np.where(diag[:, k:k + 1] > 0, w1[None, :], w1[None, :] / w1.sum()))
        else:
            ts.append(np.zeros(1))
            w_b.append(np.ones((B, 1)))
    return ts, w_b


def _on_grid(L: np.ndarray, ts: list, row: int, k: int) -> np.ndarray:
    """Σ_{j≤k} L[:, row, j] t_j on the grid of the first k+1 axes: shape (B, Q_0, …, Q_k)."""
    B = L.shape[0]
    z = L[:, row, 0][:, None] * ts[0][None, :]
    for j in range(1, k + 1):
        z = z[..., None] + (L[:, row, j][:, None] * ts[j][None, :]).reshape(
            B, *([1] * j), len(ts[j]))
    return z


def _smoothed_many(fns, U: np.ndarray, s: np.ndarray, sd_u: np.ndarray,
                   kinks: tuple = (), rule: tuple | None = None) -> np.ndarray:
    """:func:`_smoothed` for the F functions of ``fns`` (x ↦ the list of their values at x; the
    same kinks) at the same points U (B, n): (F, B, n).  The table's grid and each point's
    interval are found once; the functions are tabulated together (on ``rule`` in η where
    given, :func:`_smoothed_direct`), and each point's interpolating polynomial read for all
    of them (the points near a kink computed directly)."""
    B, n = U.shape
    lo = np.maximum(U.min(axis=1), -9.0 * sd_u)
    hi = np.minimum(U.max(axis=1), 9.0 * sd_u)
    span = np.maximum(hi - lo, 0.0)
    # at a kink G bends on the scale s: the table is made fine enough to follow it (where s is
    # too small for that, the points near the kink are computed directly, below)
    step = np.minimum(_TABLE_STEP, s / 12.0) if kinks else np.full(B, _TABLE_STEP)
    with np.errstate(divide="ignore"):
        M = int(np.clip(np.ceil(np.max(np.where(step > 0, span / np.maximum(step, 1e-300), np.inf)))
                        + 1, 8, _TABLE_MAX))
    h = np.maximum(span / (M - 1), 1e-12)
    grid = lo[:, None] + h[:, None] * (np.arange(M + 6) - 3)
    pos = np.clip((U - lo[:, None]) / h[:, None], 0.0, M - 1.0)
    i = np.minimum(np.floor(pos).astype(np.int64), M - 2)
    r = pos - i
    flat = (i + 1) + (M + 1) * np.arange(B)[:, None]  # the window starting 2 before i
    tables = _smoothed_direct(fns, kinks, grid, s, rule)  # (F, B, M + 6)
    F = tables.shape[0]
    coef = np.lib.stride_tricks.sliding_window_view(tables, 6, axis=2) @ _LAGRANGE.T
    coef = np.ascontiguousarray(np.moveaxis(coef, 3, 0)).reshape(6, F, -1)  # (6, F, B (M+1))
    g = np.take(coef[5], flat, axis=1)
    for k in range(4, -1, -1):
        g *= r
        g += np.take(coef[k], flat, axis=1)
    if kinks:
        gap = np.min(np.abs(U[..., None] - np.asarray(kinks, dtype=float)), axis=2)
        near = (gap < (9.0 * s + 4.0 * h)[:, None]) & (h > s / 12.0)[:, None]
        if np.any(near):
            rows = np.nonzero(near)
            g[:, near] = _smoothed_direct(fns, kinks, U[near][None, :], s[rows[0]][None, :])[:, 0]
    return g


def _conditional_rule(fns: list, kinks: list, L: np.ndarray, points: int, deff: int) -> np.ndarray:
    """⟨f1(z1) … fd(zd)⟩ for z = L t (lower-triangular L, B × d × d): the last variable, given
    the others, is Gaussian with mean u = Σ_{j<d} L_dj t_j and spread s = L_dd, so its factor
    integrates to the one-variable function G(u) = ⟨fd(u + s η)⟩ (:func:`_smoothed`); the
    d−1 outer axes take ``points`` Gauss–Legendre nodes per panel, split at kinks as in
    :func:`_nested_rule` (where G bends, at a kink of fd with small s, too).  Cost per matrix:
    (panels × points)^{d−1} instead of ^d."""
    B, d, _ = L.shape
    inner = d - 1
    s = L[:, inner, inner]
    sd_u = np.sqrt(np.einsum("bj,bj->b", L[:, inner, :inner], L[:, inner, :inner]))
    one = lambda z: np.ones_like(z)  # noqa: E731
    fns = [f if f is not None else one for f in fns]
    panels = _PANELS[deff]
    if not any(kinks):  # one grid for all matrices: factor k on the first k+1 axes only
        ts, w_b = _outer_axes(L, points, deff)
        u = _on_grid(L, ts, inner, inner - 1)
        # G's own average on the outer axes' rule: refined with them, so that the difference
        # of two rungs includes its error (a fixed 64-node rule left 7e-9 unseen at s ≈ 1);
        # in three dimensions at every outer node, in four from a table (its interpolation
        # error, about 1e-9 for σ″-like factors, is below the 4-D tolerances)
        eta = _outer_rule(points, deff)
        if d <= _DIRECT_DIMS:
            acc = _smoothed_at_nodes(lambda x: [fns[inner](x)], u, s, eta)[0]
        else:
            acc = _smoothed(fns[inner], (), u.reshape(B, -1), s, sd_u, eta).reshape(u.shape)
        for k in range(inner - 1, -1, -1):
            vals = fns[k](_on_grid(L, ts, k, k)) * acc
            acc = np.einsum("b...q,bq->b...", vals, w_b[k])
        return acc
    T, W = _nested_nodes(L, kinks, points, panels, inner)
    Z = np.matmul(L[:, :, :inner], np.swapaxes(T, 1, 2))  # (B, d, n): z_k (k < d−1), u
    vals = _smoothed(fns[inner], tuple(kinks[inner]), Z[:, inner], s, sd_u)
    for k in range(inner):
        vals *= fns[k](Z[:, k])
    return np.einsum("bn,bn->b", W, np.where(W == 0, 0.0, vals))


#: the outer axes of :func:`_shared_conditional` along which the integrand varies slowly take
#: Gauss–Hermite rules of their own size: axis k of a matrix is classed by c_k = max_{j≥k} |L_jk|
#: (how far a unit step in t_k moves any of its variables) into the first of these bounds it does
#: not exceed; beyond the last, and where no Gauss–Hermite rule of fewer nodes reaches a rung's
#: accuracy, the axis keeps the default rule (:func:`_outer_rule`).  An axis without conditional
#: variance (c_k = 0) is a single node.
_SLOW_SCALES = np.array([0.02, 0.05, 0.1, 0.2, 0.3, 0.4])
#: the shifts of the factors' arguments (the other axes' contribution) the calibration tries
_SLOW_OFFSETS = np.array([0.0, 0.3, 0.6, 1.0, 1.5, 2.5])
#: the Gauss–Hermite sizes the calibration tries
_SLOW_SIZES = (2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 18, 20, 23, 26, 30, 34, 38, 42, 48)
#: Gauss–Hermite nodes of the calibration's reference
_SLOW_REFERENCE = 150


def _slow_target(rung: int) -> float:
    """The one-dimensional accuracy a Gauss–Hermite axis is sized for at ``rung`` (numbered as
    :func:`_cond_ladder` does: 0 at 30 nodes an axis, −1 at 24) on the worst product of two
    factors: about what the default rule reaches at 30 nodes in four dimensions (1e-8 … 3e-7),
    ten times finer a rung.
    Measured on tanh networks' averages at 10 + 10 inputs: the values agree with the default
    rule's at a tolerance of 1e-9 to 2e-8 (the tolerance asked was 1e-6)."""
    return 1e-7 * 10.0 ** (-rung)


@lru_cache(maxsize=64)
def _gauss_hermite(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The n-node Gauss–Hermite rule for t ~ N(0, 1) (the density in the weights)."""
    t, w = np.polynomial.hermite_e.hermegauss(n)
    return t, w / w.sum()


def _slow_sizes(values, ids: tuple, first: int, rungs: int, default: tuple) -> np.ndarray:
    """Gauss–Hermite nodes per class of :data:`_SLOW_SCALES` (rows) and rung (columns) for the
    factors ``ids`` (``values(ids, x)`` their values): at rung r the fewest nodes (of
    :data:`_SLOW_SIZES`) that average every product of two of the factors, each of
    x = a + c t with the class's largest c and the shifts a of :data:`_SLOW_OFFSETS`, to
    :func:`_slow_target` of rung ``first + r`` — measured on the factors themselves, so that
    an activation that bends on a shorter scale than tanh gets more nodes.  0 where the
    default rule of ``default[r]`` nodes is no larger (or the factors are not finite there)."""
    tr, wr = _gauss_hermite(_SLOW_REFERENCE)
    out = np.zeros((len(_SLOW_SCALES), rungs), dtype=int)
    for cls, c in enumerate(_SLOW_SCALES):
        def averages(t, w):
            x = _SLOW_OFFSETS[:, None] + c * t[None, :]
            with np.errstate(all="ignore"):
                v = np.asarray(values(ids, x), dtype=float)          # (F, shifts, nodes)
                return np.einsum("fan,gan,n->afg", v, v, w)
        ref = averages(tr, wr)
        if not np.all(np.isfinite(ref)):
            continue
        errs = {}
        for r in range(rungs):
            target = _slow_target(first + r)
            for n in _SLOW_SIZES:
                if n >= default[r]:
                    break
                if n <= (out[cls, r - 1] if r else 1):
                    continue
                if n not in errs:
                    errs[n] = float(np.max(np.abs(averages(*_gauss_hermite(n)) - ref)))
                if errs[n] <= target:
                    out[cls, r] = n
                    break
            if out[cls, r] == 0:  # this rung and the finer ones keep the default rule
                out[cls, r:] = 0
                break
    return out


def _axis_classes(L: np.ndarray) -> np.ndarray:
    """The class (index into :data:`_SLOW_SCALES`, len for the default rule, −1 without
    conditional variance) of each axis k of each matrix, (B, d): the outer axes k < d − 1 by
    max_{j≥k} |L_jk|, the last variable by its conditional spread L_{d−1,d−1}."""
    B, d, _ = L.shape
    c = np.stack([np.abs(L[:, k:, k]).max(axis=1) for k in range(d)], axis=1)
    return np.where(c > 0, np.searchsorted(_SLOW_SCALES, c), -1)


def _profile_axes(profile: tuple, sizes: np.ndarray, rung: int, points: int,
                  deff: int) -> list:
    """The (nodes, weights) of each axis of matrices of one ``profile`` (their
    :func:`_axis_classes`) at ``rung``: one node, a Gauss–Hermite rule of :func:`_slow_sizes`,
    or the default rule of ``points`` a panel (:func:`_outer_rule`)."""
    axes = []
    for k, cls in enumerate(profile):
        if cls < 0:
            axes.append((np.zeros(1), np.ones(1)))
        elif cls < len(sizes) and sizes[cls, rung] > 0:
            axes.append(_gauss_hermite(int(sizes[cls, rung])))
        else:
            axes.append(_outer_rule(points, deff))
    return axes


#: a matrix takes another order of its variables (:func:`_cheapest_orders`) only where that
#: costs at most this fraction of its own order's nodes (each order is a block of its own)
_REORDER_GAIN = 0.8


def _cheapest_orders(K: np.ndarray, L: np.ndarray, sizes: np.ndarray, default: int) -> tuple:
    """For each covariance of K (B × d × d; L its :func:`_tolerant_cholesky` factor, which the
    caller has made already) the order of its variables whose conditional rule
    (:func:`_shared_conditional` at the first rung: ``default`` nodes on an axis that keeps
    the default rule, :func:`_slow_sizes` ``sizes`` on a slow one) costs the fewest nodes:
    the outer grid's nodes times 1 + a quarter of the last variable's own nodes.  The order
    matters: the later an axis, the less it may move the variables (a pair of nearly equal
    inputs put last leaves the last axes slow, so small Gauss–Hermite rules).  An order other
    than the given one is taken only where it costs at most :data:`_REORDER_GAIN` of it.
    Returns (index into ``permutations(range(d))``, the first being the given order; the
    Cholesky factors in those orders, B × d × d)."""
    B, d, _ = K.shape
    # nodes of an axis by its class (−1: one node; a slow class: its size, or the default)
    nodes = np.array([1] + [int(n) if n > 0 else default for n in sizes[:, 0]] + [default])

    def cost(L):
        q = nodes[_axis_classes(L) + 1]
        return np.prod(q[:, :-1], axis=1) * (1.0 + 0.25 * q[:, -1])

    orders = list(permutations(range(d)))
    L = L.copy()
    own = cost(L)
    best, pick = own * _REORDER_GAIN, np.zeros(B, dtype=int)
    for i, order in enumerate(orders[1:], 1):
        Li = _tolerant_cholesky(K[:, order][:, :, order])
        c = cost(Li)
        better = c < best
        if np.any(better):
            best, pick = np.where(better, c, best), np.where(better, i, pick)
            L[better] = Li[better]
    return pick, L


def _shared_conditional(factors, products: list, L: np.ndarray, axes: list) -> np.ndarray:
    """:func:`_conditional_rule` (without kinks) for many products Π_k f_{p_k}(z_k) over the
    same matrices at once, (B, len(products)), each axis k on the rule ``axes[k]`` (nodes,
    weights) shared by the matrices.  ``factors(ids, x)`` gives the values of the
    functions numbered ``ids`` at x (a list).  The last variable's G(u) = ⟨f(u + s η)⟩, η on
    ``axes[d − 1]``, is read from a table (:func:`_smoothed_many`), or, where that costs
    more, averaged at every node of the outer grid (:func:`_smoothed_at_nodes`).  The grid, the functions'
    values on each axis (those a product needs there, together) and G are made
    once, and the inside-out sums are shared by the products that end alike (their partial
    sums depend on the factors p_k … p_{d−1} only)."""
    B, d, _ = L.shape
    inner = d - 1
    s = L[:, inner, inner]
    sd_u = np.sqrt(np.einsum("bj,bj->b", L[:, inner, :inner], L[:, inner, :inner]))
    ts = [t for t, _ in axes[:inner]]
    u = _on_grid(L, ts, inner, inner - 1)
    last = tuple(sorted({prod[inner] for prod in products}))
    # the table costs its nodes in u times those in η, and reading it about as much as
    # evaluating the functions at four points; in two and three dimensions (few outer nodes)
    # G is always averaged directly (_DIRECT_DIMS)
    outer_nodes = u[0].size
    eta = axes[inner]
    table_nodes = min(np.ceil(18.0 * sd_u.max() / _TABLE_STEP) + 7, _TABLE_MAX + 6) * len(eta[0])
    if np.all(s > 0) and (
            d <= _DIRECT_DIMS or outer_nodes * len(eta[0]) <= table_nodes + 4 * outer_nodes):
        G = _smoothed_at_nodes(lambda x: factors(last, x), u, s, eta)
    elif np.any(s > 0):
        G = _smoothed_many(lambda x: factors(last, x), u.reshape(B, -1), s, sd_u, rule=eta)
        G = G.reshape((len(last),) + u.shape)
    else:  # G = f: the last variable is fixed by the others
        G = factors(last, u)
    partial = {(f,): G[j] for j, f in enumerate(last)}
    values: dict = {}
    for k in range(inner - 1, -1, -1):
        need = tuple(sorted({prod[k] for prod in products}))
        # z_k on the grid depends on row k of L only (the covariance of the first k + 1
        # inputs): matrices that share it (sets with the same first inputs) share its values
        row = L[:, k, :k + 1]
        _, first, back = np.unique(row, axis=0, return_index=True, return_inverse=True)
        if len(first) < B:
            vals = [v[back.reshape(-1)] for v in factors(need, _on_grid(L[first], ts, k, k))]
        else:
            vals = factors(need, _on_grid(L, ts, k, k))
        values.update({(k, f): vals[j] for j, f in enumerate(need)})
    out = np.empty((B, len(products)))
    for p, prod in enumerate(products):
        key = (prod[inner],)
        acc = partial[key]
        for k in range(inner - 1, -1, -1):
            key = (prod[k],) + key
            if key not in partial:
                partial[key] = (values[k, prod[k]] * acc) @ axes[k][1]
            acc = partial[key]
        out[:, p] = acc
    return out


#: the variable of the one-variable factors of :func:`product_expectations`
FACTOR_VARIABLE = sp.Symbol("x")


def product_integrand(factors: list, prod: tuple, syms) -> sp.Expr:
    """Π_j factors[prod[j]] with its variable x replaced by syms[j]."""
    return sp.Mul(*(factors[k].xreplace({FACTOR_VARIABLE: syms[j]}) for j, k in enumerate(prod)))


#: matrices per block of :func:`product_expectations`' ladder (the unit of work of a worker)
_LADDER_BLOCK = 64


def _ladder_block(values, prods: list, L: np.ndarray, deff: int, ladder: tuple, profile: tuple,
                  sizes: np.ndarray, lim_tol: float, relative: bool) -> tuple:
    """:func:`_shared_conditional` up ``ladder`` for the matrices L (B × d × d), all of one
    ``profile`` (:func:`_profile_axes`), until each product converges: (value, error
    estimate, not converged), arrays (B, P)."""
    def rule(rung, idx):
        axes = _profile_axes(profile, sizes, rung, ladder[rung], deff)
        chunk = max(1, _CHUNK_NODES // int(np.prod([len(a[0]) for a in axes[:-1]])))
        return np.concatenate([_shared_conditional(values, prods, L[idx[a:a + chunk]], axes)
                               for a in range(0, len(idx), chunk)])

    prev = rule(0, np.arange(L.shape[0]))
    err = np.full(prev.shape, np.inf)
    todo = np.ones(prev.shape, dtype=bool)
    for rung in range(1, len(ladder)):
        again = np.nonzero(todo.any(axis=1))[0]
        if again.size == 0:
            break
        cur = rule(rung, again)
        t = todo[again]
        err[again] = np.where(t, np.abs(cur - prev[again]), err[again])
        prev[again] = np.where(t, cur, prev[again])
        limit = lim_tol * (np.maximum(1.0, np.abs(prev[again])) if relative else 1.0)
        todo[again] = t & (err[again] > limit)
    return prev, err, todo


#: the task of the worker processes of :func:`map_blocks` (inherited when they fork)
_TASK = None


def _run_task(arg):
    return _TASK(arg)


def map_blocks(fn, args: list, workers: int) -> list:
    """[fn(a) for a in args], on ``workers`` forked processes when more than one."""
    global _TASK
    if workers <= 1 or len(args) <= 1:
        return [fn(a) for a in args]
    import multiprocessing

    _TASK = fn
    try:
        with multiprocessing.get_context("fork").Pool(min(workers, len(args))) as pool:
            return pool.map(_run_task, args, chunksize=1)
    finally:
        _TASK = None


def check_workers(workers) -> int:
    """``workers`` (processes for the Gaussian averages of many sample sets), checked."""
    import multiprocessing

    if isinstance(workers, (bool, np.bool_)) or not isinstance(workers, (int, np.integer)) \
            or workers < 1:
        raise DeriveError(f"workers must be a whole number ≥ 1, got {workers!r:.40}")
    if workers > 1 and "fork" not in multiprocessing.get_all_start_methods():
        raise DeriveError("workers > 1 needs processes started by fork (Linux, macOS); use "
                          "workers=1 here")
    return int(workers)


def product_expectations(factors: list, products: list, K: np.ndarray, tol: float | None = None,
                         workers: int = 1):
    """⟨Π_k g_{p_k}(z_k)⟩_K for many products of the one-variable functions ``factors``
    (SymPy expressions in :data:`FACTOR_VARIABLE`, x) over a batch of covariances K
    (B × d × d, d ≥ 2), sharing one conditional rule per matrix
    (:func:`_shared_conditional`): what :func:`gaussian_expectation` computes product by
    product.  The same ladder, panels,
    tolerances (``tol`` absolute; by default relative as there), tail estimate and error floor.

    Returns ``(value, error, ok)``, arrays (B, P): ``ok`` where the value is computed here to
    the tolerance.  Elsewhere — a factor with kinks, a product of polynomials (exact by Wick
    instead), two factors with a closed form, fewer than two effective dimensions (two only
    for d = 2 and a tolerance of 1e-10 or coarser), an integrand that cannot be averaged,
    no convergence on the ladder — the caller asks :func:`gaussian_expectation`, which computes
    the value by its own tier or says why it cannot.  The matrices are integrated in blocks of
    :data:`_LADDER_BLOCK`, on ``workers`` forked processes when more than one (the same
    values whatever their number)."""
    x = FACTOR_VARIABLE
    K = np.asarray(K, dtype=float)
    B, d, _ = K.shape
    P = len(products)
    value, error = np.zeros((B, P)), np.full((B, P), np.inf)
    ok = np.zeros((B, P), dtype=bool)
    if d < 2 or not _CONDITIONAL or B == 0 or P == 0:
        return value, error, ok
    smooth = [not kinks_of(g, x) for g in factors]
    poly = [g.is_polynomial(x) for g in factors]
    syms = sp.symbols(f"z1:{d + 1}")
    integrands = {}
    for p, prod in enumerate(products):
        f = product_integrand(factors, prod, syms)
        if not all(smooth[k] for k in prod) or all(poly[k] for k in prod):
            continue
        if d == 2 and _closed_form_plan(f, tuple(zip(syms, range(d)))) is not None:
            continue  # exact: gaussian_expectation's closed form
        try:
            if _integrand_problems(f, syms):
                continue
        except DeriveError:  # a function outside the safe table: gaussian_expectation says so
            continue
        integrands[p] = f
    if not integrands:
        return value, error, ok
    cols = sorted(integrands)
    prods = [products[p] for p in cols]

    functions: dict = {}        # ids → their numpy function (asked for at every grid)

    def values(ids, z, factors=tuple(factors)):
        if ids not in functions:
            functions[ids] = numpy_functions(tuple(factors[i] for i in ids), x)
        return functions[ids](z)

    L = _tolerant_cholesky(K)
    deffs = np.sum(np.diagonal(L, axis1=1, axis2=2) > 0, axis=1)
    relative = tol is None
    used = tuple(sorted({k for prod in prods for k in prod}))
    for deff in sorted(set(deffs.tolist()) & {2, 3, 4}):
        rows = np.nonzero(deffs == deff)[0]
        lim_tol = DEFAULT_TOL[deff] if relative else tol
        if deff == 2 and (d > 2 or lim_tol < 1e-10):
            continue  # rank 2 among more variables (left to the nested rule), or finer than
            #           the Gauss–Hermite ladder goes
        ladder, first = _cond_ladder(deff, lim_tol)
        default = tuple(n * (len(_PANELS[deff]) - 1) for n in ladder)
        sizes = _slow_sizes(values, used, first, len(ladder), default)
        # each matrix in the order of its variables that costs the fewest nodes; matrices of
        # one order and one profile (the rule of each outer axis) share their grid: sorted by
        # them, in fixed blocks (the same whatever the number of workers, so that every
        # number of workers gives the same values, bit for bit)
        pick, Lo = _cheapest_orders(K[rows], L[rows], sizes, default[0])
        keys = np.column_stack([pick, _axis_classes(Lo)])
        order = np.lexsort(keys.T[::-1])
        rows, Lo, keys = rows[order], Lo[order], keys[order]
        orders = list(permutations(range(d)))
        block = min(_LADDER_BLOCK, max(1, _CHUNK_NODES // (
            (len(_PANELS[deff]) - 1) * ladder[0]) ** (d - 1)))
        tasks = []
        for a in range(len(rows)):
            if a == 0 or np.any(keys[a] != keys[a - 1]) or a - tasks[-1][0] == block:
                # variable j of the reordered matrix is variable orders[...][j] of the given one
                o = orders[keys[a, 0]]
                tasks.append((a, tuple(keys[a, 1:].tolist()),
                               [tuple(prod[o[j]] for j in range(d)) for prod in prods]))
        ends = [a for a, *_ in tasks[1:]] + [len(rows)]
        parts = map_blocks(lambda task: _ladder_block(
            values, task[0][2], Lo[task[0][0]:task[1]], deff, ladder, task[0][1], sizes,
            lim_tol, relative), list(zip(tasks, ends)), workers)
        prev, err, todo = (np.concatenate([part[k] for part in parts]) for k in range(3))
        limit = lim_tol * (np.maximum(1.0, np.abs(prev)) if relative else np.ones(prev.shape))
        at_tail: dict = {}      # the factors' values at the tail's points, shared by the products

        def product_at(prod):
            def at(where, z):
                if where not in at_tail:
                    at_tail[where] = dict(zip(used, values(used, z)))
                return np.prod([at_tail[where][f][:, j] for j, f in enumerate(prod)], axis=0)
            return at

        for j, p in enumerate(cols):
            try:
                tail = _tail_mass(integrands[p], list(syms), L[rows], product_at(products[p]))
            except DeriveError:  # no finite value: gaussian_expectation says why
                continue
            e = np.maximum(np.maximum(err[:, j], 1e-16 * np.maximum(np.abs(prev[:, j]), 1.0) * d),
                           tail)
            value[rows, p] = prev[:, j]
            error[rows, p] = e
            ok[rows, p] = ~todo[:, j] & np.isfinite(prev[:, j]) & (e <= limit[:, j])
    return value, error, ok


def _quadrature(f, pos, K, tol):
    syms = sorted({s for s in f.free_symbols}, key=pos.get)
    d = len(syms)
    if d > 4:
        raise DeriveError(f"quadrature is implemented in 1–4 dimensions; the integrand uses {d} "
                          "variables")
    idx = [pos[s] for s in syms]
    sub = K[:, idx][:, :, idx]
    kinks = [kinks_of(f, s) for s in syms]
    L = _tolerant_cholesky(sub)
    active = [bool(np.any(L[:, k, k] > 0)) for k in range(d)]
    deff = max(1, sum(active))
    relative = tol is None  # the default tolerance is relative to max(1, |value|)
    if tol is None:
        tol = (DEFAULT_TOL_KINKED if any(kinks) else DEFAULT_TOL)[deff]
    factors = one_variable_factors(f, syms) if _CONDITIONAL and d >= 3 and deff >= 3 else None
    if factors is not None:  # a product of one-variable factors: the conditional rule
        fn = [numpy_function(g, (s,)) if g != 1 else None for s, g in zip(syms, factors)]
        ladder = _COND_LADDER_KINKED[deff] if any(kinks) else _cond_ladder(deff, tol)[0]
        outer = [a for a in active[:-1]]
    else:
        fn = (_separable_factors(f, syms) if not any(kinks) else None) or \
            numpy_function(f, tuple(syms))
        ladder = _NODE_LADDER[deff]
        outer = active
    rungs = len(ladder)
    tail = _tail_mass(f, syms, L)

    def nodes_per_matrix(rung):
        # an axis is split at the kinks of its variable and (at most) of every later one
        n = 1
        for k, act in enumerate(outer):
            if act:
                pieces = len(_PANELS[deff]) - 1 + sum(len(kk) for kk in kinks[k:])
                n *= pieces * ladder[rung]
        return n

    def rule(Lb, rung):
        if factors is None:
            return _chunked_rule(fn, Lb, kinks, rung, deff, nodes_per_matrix(rung))
        chunk = max(1, _CHUNK_NODES // max(nodes_per_matrix(rung), 1))
        return np.concatenate([_conditional_rule(fn, kinks, Lb[a:a + chunk], ladder[rung], deff)
                               for a in range(0, Lb.shape[0], chunk)]) if Lb.shape[0] else np.empty(0)

    B = K.shape[0]
    value = rule(L, 0)
    error = np.full(B, np.inf)
    todo = np.arange(B)
    used = 0
    for rung in range(1, rungs):
        cur = rule(L[todo], rung)
        error[todo] = np.abs(cur - value[todo])
        value[todo] = cur
        used = rung
        limit = tol * np.maximum(1.0, np.abs(value[todo])) if relative else tol
        todo = todo[error[todo] > limit]  # only what has not converged is refined further
        if todo.size == 0:
            break
    if not np.all(np.isfinite(value)):
        raise QuadratureError(f"the integrand {f} is not finite on the quadrature nodes "
                              "(overflow?); check the activation and the covariance scale")
    limit = tol * np.maximum(1.0, np.abs(value)) if relative else tol
    if np.any(tail > limit):
        k = int(np.argmax(tail / limit))
        raise QuadratureError(f"⟨{sp.sstr(f)[:80]}⟩: the integrand decays too slowly against "
                              "the Gaussian to be integrated to the tolerance: beyond 10 standard "
                              f"deviations lies about {tail[k]:.1e}, above "
                              f"{np.broadcast_to(limit, tail.shape)[k]:.1e}; pass a larger tol=... if "
                              "that accuracy suffices")
    # the difference of two rules cannot resolve below roundoff of the weighted sum, nor below
    # what lies beyond the panels
    error = np.maximum(np.maximum(error, 1e-16 * np.maximum(np.abs(value), 1.0) * d), tail)
    excess = error / (tol * np.maximum(1.0, np.abs(value)) if relative else tol)
    if excess.max() > 1:
        k = int(np.argmax(excess))
        worst = float(error[k])
        scale = f" × max(1, |value| = {abs(value[k]):.3g})" if relative else ""
        raise QuadratureError(
            f"quadrature of <{f}> in {deff} dimension(s) reached an estimated error of {worst:.2e}, "
            f"above the tolerance {tol:.0e}{scale} (finest rule: {nodes_per_matrix(rungs - 1)} nodes). "
            "Pass a larger tol=... if that accuracy suffices; kinks that are not of the form "
            "z_k = const (e.g. Max(z1, z2)) converge only algebraically.")
    kinked = any(kinks)
    return value, error, (f"quadrature: nested conditional {deff}D, {nodes_per_matrix(used)} nodes"
                          + ("" if factors is None else " outside a tabulated last variable"
                             if d > _DIRECT_DIMS or kinked else
                             " outside a last variable averaged at every node")
                          + (", split at kinks" if kinked else ""))


def _tail_mass(f: sp.Expr, syms: list, L: np.ndarray, values_at=None) -> np.ndarray:
    """An estimate of what the rules (t ∈ [−10, 10], z = L t) cut off, per matrix; a
    DeriveError when the integrand does not decay against the Gaussian at all.  Along each
    axis of t and the diagonal, |f(L t)| φ(|t|) is compared at |t| = 10 and 14: growing means
    ⟨f⟩ diverges (f grows like exp(c z²) with c K ≥ 1/2); otherwise the weight at 10 over its
    decay rate bounds the mass beyond.  ``values_at(where, z)``, where given, is f at the
    points z (B × d) in place of f's own function; ``where`` names them (direction, sign,
    radius), the same points for the same name (so that a caller may keep what it computed
    there for other integrands)."""
    B, d, _ = L.shape
    fn = numpy_function(f, tuple(syms)) if values_at is None else None
    mass = np.zeros(B)
    for k, u in enumerate([np.eye(d)[k] for k in range(d)] + [np.ones(d) / np.sqrt(d)]):
        both = np.zeros(B)
        for sgn in (1.0, -1.0):
            w = []
            for r in (10.0, 14.0):
                zz = np.einsum("bij,j->bi", L, sgn * r * u)
                with np.errstate(all="ignore"):
                    v = np.abs(np.asarray(fn(*(zz[:, i] for i in range(d))) if fn is not None
                                          else values_at((k, sgn, r), zz), dtype=float))
                w.append(np.broadcast_to(v, (B,)) * np.exp(-0.5 * r * r) / np.sqrt(2 * np.pi))
            lo, hi = w
            if np.any(~np.isfinite(hi) | ~np.isfinite(lo) | (hi > lo * (1 + 1e-9)) & (hi > 1e-300)):
                raise DeriveError(f"⟨{sp.sstr(f)[:80]}⟩ diverges: the integrand does not decay "
                                  "against the Gaussian (it grows like exp(c z²) with c at least "
                                  "1/(2 K), or overflows); no finite value exists")
            with np.errstate(all="ignore"):
                rate = np.maximum(np.log(np.maximum(lo, 1e-300) / np.maximum(hi, 1e-300)) / 4, 1.0)
            # the mean decay rate over [10, 14] exceeds the rate at 10: a factor 2 of margin
            both += 2 * lo / rate
        mass = np.maximum(mass, both)
    return mass


@lru_cache(maxsize=1024)
def _integrand_problems(f: sp.Expr, syms: tuple) -> str:
    """Why ⟨f⟩ cannot be a finite number whatever K is ('' if no reason is seen): functions
    outside the safe table, floor/ceiling, poles, logs or roots of negative numbers."""
    check_nodes(f, f"the integrand {sp.sstr(f)[:80]}")
    if f.has(sp.floor, sp.ceiling):
        return ("floor and ceiling jump at every integer, and the quadrature would need a split "
                "at each of them; write the few steps you need with Heaviside or Piecewise")
    if f.has(sp.I, sp.zoo, sp.nan, sp.oo, sp.S.NegativeInfinity):
        return "it holds an infinite, undefined or imaginary number"
    for node in risky_nodes(f):
        free = [s for s in syms if s in node.free_symbols]
        if len(free) == 1:
            why = real_line_problems(node, free[0])
        else:  # several variables: probe on normal samples (seeded: deterministic)
            rng = np.random.default_rng(0)
            pts = rng.standard_normal((4000, len(free))) * np.repeat([1.0, 4.0], 2000)[:, None]
            with np.errstate(all="ignore"):
                vals = np.asarray(numpy_function(node, tuple(free))(*pts.T), dtype=float)
                base = node.base if isinstance(node, sp.Pow) else node.args[0]
                bv = np.asarray(numpy_function(base, tuple(free))(*pts.T), dtype=float) \
                    if base.free_symbols else np.ones(1)
            why = ""
            if not np.all(np.isfinite(vals)):
                why = f"{sp.sstr(node)} is not finite and real everywhere"
            elif isinstance(node, (sp.Pow, sp.log)) and np.any(bv > 0) and np.any(bv < 0):
                why = (f"{sp.sstr(base)} takes both signs, so {sp.sstr(node)} has a pole or is "
                       "not real where it crosses 0")
        if why:
            return why
    return ""


def _check_tol(tol) -> float | None:
    if tol is None:
        return None
    if isinstance(tol, bool) or not isinstance(tol, (int, float, np.integer, np.floating)) \
            or not np.isfinite(tol) or not 0 < tol < 1:
        raise DeriveError(f"tol must be a number between 0 and 1 (an absolute tolerance such as "
                          f"1e-8), got {tol!r:.60}")
    return float(tol)


# ---------------------------------------------------------------------------------------------
# public entry point
# ---------------------------------------------------------------------------------------------

@boundary
def gaussian_expectation(f, K, *, tol: float | None = None, method: str = "auto"):
    """⟨f⟩_K for ``f`` in ``z1 … zm`` and an m×m covariance ``K`` (or a B×m×m batch).

    ``tol`` is the absolute tolerance of the quadrature tier; by default it is 1e-12 in one and
    two dimensions, 1e-9 in three, 1e-6 in four (1e-6 and 1e-5 for integrands with kinks;
    dimensions counted by the rank of K), relative to ``max(1, |value|)``.  The estimated error
    is returned with the value.  ``method`` forces a tier: ``"auto"`` (exact when possible),
    ``"quadrature"`` (used by the tests to cross-check closed forms).

    Integrands for which no finite value exists are refused with a
    :class:`~derive.base.errors.DeriveError`: poles, logarithms or roots of negative numbers on the
    real line (``1/z1``, ``tan(z1)``), growth like exp(c z²) that the Gaussian does not tame,
    floor/ceiling; so is a value that overflows double precision.

    Returns a :class:`GaussianValue` (float with ``.error`` and ``.method``), or a
    :class:`GaussianBatch` for a batch.  Odd moments of polynomials come out as 0.0.

    Parameters
    ----------
    f : str or sympy.Expr
        The integrand in ``z1 … zm``.
    K : array_like of shape (m, m) or (B, m, m)
        A symmetric positive semi-definite covariance, or a batch of them.
    tol : float, optional
        Absolute tolerance of the quadrature tier (default: by dimension, as above).
    method : {"auto", "quadrature"}, optional
        The tier (default ``"auto"``).

    Returns
    -------
    GaussianValue or GaussianBatch
        The value with ``.error`` and ``.method``.

    Raises
    ------
    DeriveError
        For an integrand with no finite value (as above), a covariance that is not symmetric,
        finite and positive semi-definite or whose size does not match ``f``, or a quadrature
        that cannot reach ``tol``.

    Examples
    --------
    >>> v = gaussian_expectation('z1**2', [[2.0]])
    >>> float(v), v.method
    (2.0, 'exact: polynomial (Wick)')
    """
    if method not in ("auto", "quadrature"):
        raise DeriveError(f"method must be 'auto' or 'quadrature', got {method!r:.60}")
    tol = _check_tol(tol)
    Kb, batched = check_covariance(K)
    f, pos = _prepare(f, Kb.shape[1])
    why = _integrand_problems(f, tuple(sorted(pos, key=pos.get)))
    if why:
        raise DeriveError(f"⟨{sp.sstr(f)[:80]}⟩ cannot be computed: {why}")
    out = None
    if method == "auto":
        out = _polynomial(f, pos, Kb) or _closed_form(f, pos, Kb) or _orthant(f, pos, Kb, tol)
    if out is None:
        if not pos:
            out = _polynomial(f, pos, Kb)
            if out is None:
                raise DeriveError(f"the integrand {f} is not a finite real number")
        else:
            out = _quadrature(f, pos, Kb, tol)
    value, error, how = out
    if not np.all(np.isfinite(value)):
        k = int(np.nonzero(~np.isfinite(value))[0][0])
        raise DeriveError(f"⟨{sp.sstr(f)[:80]}⟩ is not representable in double precision"
                          f"{_where([k], batched)} (it overflows: {value[k]}); rescale the "
                          "covariance or the integrand")
    if batched:
        return GaussianBatch(np.asarray(value, float), np.asarray(error, float), how)
    return GaussianValue(float(value[0]), float(error[0]), how)
