r"""Criticality (PDLT ch. 5, docs/conventions.md §5): fixed points, χ_∥ and χ_⊥, the critical (C_b, C_W).

The single-input kernel recursion derived by the layer step (docs/conventions.md §4),
K^{(ℓ+1)} = C_b + C_W ⟨σ²⟩_{K^{(ℓ)}}, has the two susceptibilities

* χ_∥(K) = ∂K^{(ℓ+1)}/∂K^{(ℓ)} = C_W d⟨σ²⟩_K/dK = (C_W/(2K²)) ⟨σ² (z² − K)⟩_K
  (Gaussian integration by parts; the derivative-free form holds for σ with kinks too),
* χ_⊥(K) = C_W ⟨σ'σ'⟩_K (the response of K_{12} to a splitting of two coinciding inputs).

Criticality is χ_∥ = χ_⊥ = 1 at a fixed point K* of the recursion.  :func:`criticality` finds
it for any σ:

* **scale-invariant** σ (a₊ z for z ≥ 0, a₋ z otherwise; detected symbolically): χ_∥ = χ_⊥ =
  C_W (a₊² + a₋²)/2 at every K, so C_b = 0 and C_W = 2/(a₊² + a₋²) exactly, and every K is
  a fixed point (``K_star`` is None);
* **K*=0**: σ(0) = 0, σ'(0) ≠ 0, smooth at 0: at K* = 0 the averages are values at z = 0, so
  χ_∥ = C_W (σ'(0)² + σ(0)σ''(0)) and χ_⊥ = C_W σ'(0)², both 1 at C_b = 0, C_W = 1/σ'(0)²
  (exact, SymPy).  The class also needs the fixed point to attract: with σ_k = σ^{(k)}(0),
  K^{(ℓ+1)} = K + a1 K² + O(K³), a1 = σ3/σ1 + (3/4)(σ2/σ1)², must have a1 < 0 (tanh: −2);
  SiLU/swish and GELU have a1 > 0 and fall into the next class;
* **K*>0** (any other σ, e.g. SiLU/swish, GELU): χ_∥(K)/χ_⊥(K) = 1 solved numerically for K*
  (bracketed on a grid, then Brent), C_W = 1/⟨σ'σ'⟩_{K*}, C_b = K* − C_W⟨σ²⟩_{K*}, accepted only
  where C_b ≥ 0 (a variance).  Without such a point :class:`NoCriticalPoint` says why.

**Residual networks** (docs/conventions.md §8): the layer map z' = ξ z + γ [b + W σ(z)] has the kernel map
K ↦ ξ² K + γ² (C_b + C_W ⟨σ²⟩_K), so χ_∥ = ξ² + γ² χ̂_∥ and χ_⊥ = ξ² + γ² χ̂_⊥ with χ̂ the MLP
susceptibilities at (C_b, C_W).  χ_∥ = χ_⊥ = 1 needs χ̂_∥ = χ̂_⊥ = (1 − ξ²)/γ²: the fixed point K*
and the class are the MLP's, and the critical (C_b, C_W) are the MLP's times (1 − ξ²)/γ²
(C_b from K* = ξ² K* + γ²(C_b + C_W⟨σ²⟩_{K*})).  ``criticality(σ, xi=…, gamma=…)`` returns them;
ξ² ≥ 1 has no critical C_W > 0 (refused).  :func:`critical_gamma` is the converse: γ for given ξ
and C_W.  In the K*=0 class the residual kernel flows like K' = K + (1 − ξ²) a1 K² + …, i.e.
K ≈ 1/(−(1 − ξ²) a1 ℓ): a strong skip slows the power law.

All Gaussian averages go through :func:`derive.gaussian_expectation` (closed form where one
exists, else quadrature with an error bound).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import sympy as sp

from ..base.errors import DeriveError, QuadratureError, boundary
from ..base.parsing import as_expr
from .catalogue import Activation, activation, probe_scale_invariant, z
from .gaussian import gaussian_expectation

__all__ = ["criticality", "critical_gamma", "Criticality", "NoCriticalPoint", "chi_parallel",
           "chi_perp", "kernel_map", "fixed_points"]

#: the K grid on which χ_∥/χ_⊥ − 1 is bracketed for the K*>0 class
_K_GRID = np.geomspace(1e-3, 1e2, 201)
#: quadrature tolerance of the averages here
_TOL = 1e-12


class NoCriticalPoint(DeriveError):
    """The activation has no critical initialisation (χ_∥ = χ_⊥ = 1 with C_b ≥ 0)."""


def _act(a) -> Activation:
    return a if isinstance(a, Activation) else activation(a)


def _tol(K: np.ndarray) -> float:
    """The quadrature tolerance for averages at variances K: _TOL relative to K² (the size of
    ⟨σ² z²⟩ for σ of linear growth), at least _TOL."""
    return _TOL * max(1.0, float(np.max(K)) ** 2)


def _avg(f: sp.Expr, K) -> np.ndarray:
    """⟨f(z)⟩ over N(0, K) for an array of variances K (> 0)."""
    K = np.atleast_1d(np.asarray(K, dtype=float))
    return np.asarray(gaussian_expectation(f.xreplace({z: sp.Symbol("z1")}), K[:, None, None],
                                           tol=_tol(K)).value, dtype=float)


def _residual(xi, gamma) -> tuple[float, float]:
    """(ξ², γ²) as floats, with γ ≠ 0 (γ = 0 has no trainable layer)."""
    vals = []
    for name, v in (("ξ (xi)", xi), ("γ (gamma)", gamma)):
        if isinstance(v, (str, bool)) or v is None:
            raise DeriveError(f"{name} must be a real number, got {v!r}")
        try:
            vals.append(float(v))
        except (TypeError, ValueError):
            raise DeriveError(f"{name} must be a real number, got {v!r}") from None
    xi2, g2 = vals[0] ** 2, vals[1] ** 2
    if not (np.isfinite(xi2) and np.isfinite(g2)) or g2 == 0:
        raise DeriveError(f"ξ and γ must be finite and γ ≠ 0, got ξ = {xi}, γ = {gamma}")
    return xi2, g2


def kernel_map(act, K, C_b: float = 0.0, C_W: float = 1.0, xi: float = 0.0,
               gamma: float = 1.0) -> np.ndarray:
    """K^{(ℓ+1)} = ξ² K + γ² (C_b + C_W ⟨σ²⟩_K) for variances K (the derived single-input
    recursion; ξ = 0, γ = 1 is the MLP's)."""
    a = _act(act)
    xi2, g2 = _residual(xi, gamma)
    K = np.atleast_1d(np.asarray(K, dtype=float))
    return xi2 * K + g2 * (C_b + C_W * _avg(a.expr ** 2, K))


def chi_parallel(act, K, C_W: float = 1.0, xi: float = 0.0, gamma: float = 1.0) -> np.ndarray:
    """χ_∥(K) = ξ² + γ² (C_W/(2K²)) ⟨σ²(z² − K)⟩_K (derivative-free; any σ), for variances
    K > 0 (ξ = 0, γ = 1: the MLP)."""
    a = _act(act)
    xi2, g2 = _residual(xi, gamma)
    K = np.atleast_1d(np.asarray(K, dtype=float))
    if np.any(K <= 0):
        raise DeriveError("χ_∥ is evaluated at variances K > 0 (the K → 0 limit of a smooth σ is "
                          "C_W (σ'(0)² + σ(0)σ''(0)))")
    mlp = C_W * (_avg(a.expr ** 2 * z ** 2, K) - K * _avg(a.expr ** 2, K)) / (2 * K ** 2)
    return mlp if (xi2, g2) == (0.0, 1.0) else xi2 + g2 * mlp


def chi_perp(act, K, C_W: float = 1.0, xi: float = 0.0, gamma: float = 1.0) -> np.ndarray:
    """χ_⊥(K) = ξ² + γ² C_W ⟨σ'σ'⟩_K for variances K > 0 (ξ = 0, γ = 1: the MLP)."""
    a = _act(act)
    xi2, g2 = _residual(xi, gamma)
    a.require_ntk("χ_⊥ = C_W ⟨σ'σ'⟩")
    mlp = C_W * _avg(a.derivative(1) ** 2, K)
    return mlp if (xi2, g2) == (0.0, 1.0) else xi2 + g2 * mlp


def fixed_points(act, C_b: float, C_W: float, K_max: float = 1e2, xi: float = 0.0,
                 gamma: float = 1.0) -> list[float]:
    """Fixed points K* > 0 of K ↦ ξ²K + γ²(C_b + C_W⟨σ²⟩_K) on [1e-3, K_max] (ξ = 0, γ = 1: the
    MLP's; for ξ² < 1 they are the MLP's fixed points at (C_b, C_W) γ²/(1 − ξ²)): sign changes of the map
    minus K (Brent), and touching points (at criticality χ_∥ = 1, so the map is tangent to the
    identity there and does not cross it: local minima of |map − K| on the grid that reach
    zero; a touching point in the same grid cell as a crossing is not resolved — the critical
    K* itself is what :func:`criticality` reports); K* = 0 is listed first when C_b = 0 and
    σ(0) = 0."""
    from scipy.optimize import brentq, minimize_scalar

    if C_b < 0 or C_W <= 0:
        raise DeriveError(f"C_b must be ≥ 0 and C_W > 0 (they are variances), got {C_b}, {C_W}")
    a = _act(act)
    grid = _K_GRID[_K_GRID <= K_max]

    def g(K):
        return float(kernel_map(a, K, C_b, C_W, xi, gamma)[0] - K)

    vals = kernel_map(a, grid, C_b, C_W, xi, gamma) - grid
    out = [0.0] if C_b == 0 and a.expr.subs(z, 0) == 0 else []
    for k in range(len(grid) - 1):
        if vals[k] == 0:
            out.append(float(grid[k]))
        elif vals[k] * vals[k + 1] < 0:
            out.append(float(brentq(g, grid[k], grid[k + 1], xtol=1e-14, rtol=1e-13)))
        elif 0 < k and abs(vals[k]) <= min(abs(vals[k - 1]), abs(vals[k + 1])):
            r = minimize_scalar(lambda K: abs(g(K)), bounds=(grid[k - 1], grid[k + 1]),
                                method="bounded", options={"xatol": 1e-12 * grid[k]})
            if abs(g(r.x)) < 1e-9 * max(1.0, r.x):
                out.append(float(r.x))
    # a touching-point probe next to a crossing finds the crossing again: keep one root per
    # cluster (the one with the smaller residual)
    merged: list[float] = []
    for K in sorted(out):
        if merged and abs(K - merged[-1]) <= 1e-6 * max(1.0, K):
            if merged[-1] > 0 and abs(g(K)) < abs(g(merged[-1])):
                merged[-1] = K
            continue
        merged.append(K)
    return merged


@dataclass(frozen=True)
class Criticality:
    """The critical initialisation of an activation (see the module docstring).

    ``C_b``, ``C_W``: floats; ``chi_par``, ``chi_perp``: χ_∥, χ_⊥ there; ``K_star``: the
    fixed point (None for scale-invariant σ: every K is one); ``universality_class``:
    "scale-invariant", "K*=0" or "K*>0"; ``exact``: SymPy values of (C_b, C_W) where known in
    closed form, else None (for a residual layer with float ξ, γ the factor (1 − ξ²)/γ² is a
    SymPy Float); ``method``: how it was found; ``a1`` (K*=0 class): the coefficient
    of K^{(ℓ+1)} = K + a1 K² + …, so that K^{(ℓ)} ≈ 1/(−a1 ℓ) at large depth (for a residual
    layer (1 − ξ²) times the MLP's); ``xi``, ``gamma``: the residual layer's ξ, γ (0 and 1:
    the MLP).
    """

    activation: Activation = field(repr=False)
    C_b: float
    C_W: float
    chi_par: float
    chi_perp: float
    K_star: float | None
    universality_class: str
    exact: tuple | None = None
    method: str = ""
    a1: float | None = None
    xi: float = 0.0
    gamma: float = 1.0

    def __str__(self) -> str:
        exact = f" (exactly C_b = {self.exact[0]}, C_W = {self.exact[1]})" \
            if self.exact and not any(as_expr(v).has(sp.Float) for v in self.exact) else ""
        k = "every K" if self.K_star is None else f"K* = {self.K_star:.6g}"
        res = "" if (self.xi, self.gamma) == (0.0, 1.0) else \
            f" (residual, ξ = {self.xi:.6g}, γ = {self.gamma:.6g})"
        return (f"{self.activation.name}{res}: {self.universality_class}, critical at C_b = "
                f"{self.C_b:.6g}, C_W = {self.C_W:.6g}{exact}; {k}; χ_∥ = {self.chi_par:.6g}, "
                f"χ_⊥ = {self.chi_perp:.6g}")


def _is_exact(v) -> bool:
    return isinstance(v, (int, Fraction)) or (isinstance(v, sp.Basic) and v.is_number
                                              and not v.has(sp.Float))


def _residual_factor(xi, gamma):
    """(1 − ξ²)/γ² — SymPy-exact for exact ξ, γ (ints, Fractions, SymPy numbers), exactly 1
    for the MLP (ξ = 0, γ = 1), a SymPy Float otherwise; NoCriticalPoint for ξ² ≥ 1."""
    xi2, _ = _residual(xi, gamma)
    if xi2 >= 1:
        raise NoCriticalPoint(
            f"a residual layer with ξ² = {xi2:.6g} ≥ 1 has no critical initialisation: χ_∥ and "
            f"χ_⊥ are ξ² + γ² C_W χ̂ with χ̂ > 0, so χ = 1 would need C_W ≤ 0 (a variance; "
            f"at ξ = 1 the skip alone is marginal, χ = 1 + γ² C_W χ̂, and a small γ²C_W keeps "
            f"the kernel nearly marginal, but no C_W > 0 makes it critical)")
    if float(xi) == 0 and float(gamma) ** 2 == 1:
        return sp.S.One
    if _is_exact(xi) and _is_exact(gamma):
        return sp.nsimplify((1 - as_expr(xi) ** 2) / as_expr(gamma) ** 2)
    return sp.Float((1 - float(xi) ** 2) / float(gamma) ** 2)


@boundary
def criticality(act, xi=0.0, gamma=1.0) -> Criticality:
    """The critical (C_b, C_W) of ``act`` (a name, a SymPy string in z or an Activation), its
    fixed point, χ_∥ and χ_⊥ there and its universality class; :class:`NoCriticalPoint` when
    there is none.

    ``xi``, ``gamma``: a residual layer z' = ξ z + γ [b + W σ(z)] (docs/conventions.md §8; the defaults are
    the MLP).  Its χ's are ξ² + γ² × the MLP's, so the class and K* are the MLP's and the
    critical (C_b, C_W) are the MLP's times (1 − ξ²)/γ²; ξ² ≥ 1 is refused (no C_W > 0).

    Parameters
    ----------
    act : str or Activation
        The activation.
    xi : float, optional
        The residual layer's ξ (default 0: the MLP).
    gamma : float, optional
        The residual layer's γ (default 1: the MLP).

    Returns
    -------
    Criticality
        ``C_b``, ``C_W``, ``chi_par``, ``chi_perp``, ``K_star``, ``universality_class`` …

    Raises
    ------
    DeriveError
        :class:`NoCriticalPoint` when σ has no critical initialisation or ξ² ≥ 1; an unknown
        or invalid activation as in :func:`activation`.

    Examples
    --------
    >>> c = criticality('relu')
    >>> c.C_b, c.C_W, c.universality_class
    (0.0, 2.0, 'scale-invariant')
    """
    factor = _residual_factor(xi, gamma)
    c = _criticality_mlp(_act(act))
    if factor == 1 and float(xi) == 0:
        return c
    xi_f, g_f = float(xi), float(gamma)
    f = float(factor)
    C_b, C_W = c.C_b * f, c.C_W * f
    exact = None if c.exact is None else tuple(as_expr(v) * factor for v in c.exact)
    a, K_eval = c.activation, (1.0 if c.K_star is None else c.K_star)
    if c.universality_class == "K*=0":
        # at K* = 0 the MLP's χ's at C_W are C_W σ'(0)² (…): scale them as the layer map does
        chi_par = xi_f ** 2 + g_f ** 2 * f * c.chi_par
        chi_p = xi_f ** 2 + g_f ** 2 * f * c.chi_perp
    else:
        chi_par = float(chi_parallel(a, K_eval, C_W, xi_f, g_f)[0])
        chi_p = float(chi_perp(a, K_eval, C_W, xi_f, g_f)[0]) \
            if not a.derivative(1).has(sp.DiracDelta) else chi_par
    a1 = None if c.a1 is None else (1 - xi_f ** 2) * c.a1
    return Criticality(a, C_b, C_W, chi_par, chi_p, c.K_star, c.universality_class, exact,
                       f"residual (ξ = {xi}, γ = {gamma}): the MLP's critical (C_b, C_W) times "
                       f"(1 − ξ²)/γ² = {factor}; MLP: {c.method}", a1, xi_f, g_f)


@boundary
def critical_gamma(act, xi, C_W=None) -> float:
    """γ of a critical residual layer z' = ξ z + γ [b + W σ(z)] at given ξ and C_W (default:
    the MLP's critical C_W): γ² = (1 − ξ²)/(C_W χ̂), χ̂ the MLP's χ at C_W = 1 at its fixed
    point, i.e. γ² = (1 − ξ²) C_W^{MLP}/C_W.  For the K*>0 class C_b must be
    ``criticality(act, xi, gamma).C_b`` too.  ξ² ≥ 1 and C_W ≤ 0 are refused.

    Parameters
    ----------
    act : str or Activation
        The activation.
    xi : float
        The residual layer's ξ (ξ² < 1).
    C_W : float, optional
        The weight variance (default: the MLP's critical C_W).

    Returns
    -------
    float
        γ > 0.

    Raises
    ------
    DeriveError
        For ξ² ≥ 1 or C_W ≤ 0 (:class:`NoCriticalPoint`), or an activation without a critical
        initialisation.

    Examples
    --------
    >>> round(critical_gamma('relu', 0.6), 12)
    0.8
    """
    _residual_factor(xi, 1.0)                       # refuses ξ² ≥ 1
    c = _criticality_mlp(_act(act))
    if C_W is not None:
        if isinstance(C_W, (str, bool)):
            raise DeriveError(f"C_W must be a finite variance > 0, got {C_W!r}")
        try:
            C_W = float(C_W)
        except (TypeError, ValueError):
            raise DeriveError(f"C_W must be a finite variance > 0, got {C_W!r}") from None
    C_W = c.C_W if C_W is None else C_W
    if not (np.isfinite(C_W) and C_W > 0):
        raise DeriveError(f"C_W must be a finite variance > 0, got {C_W}")
    return float(np.sqrt((1 - float(xi) ** 2) * c.C_W / C_W))


def _criticality_mlp(a: Activation) -> Criticality:
    if a.ntk_obstacle:
        raise NoCriticalPoint(f"{a.name} has no critical initialisation: χ_⊥ = C_W ⟨σ'σ'⟩ is "
                              f"infinite ({a.ntk_obstacle})")
    si = probe_scale_invariant(a.expr, z, order=0)
    if si is not None:
        a_plus, a_minus = (sp.nsimplify(v) for v in si)
        norm = a_plus ** 2 + a_minus ** 2
        if norm == 0:
            raise NoCriticalPoint(f"{a.name} is identically zero")
        C_W = sp.Integer(2) / norm
        chi_par = float(chi_parallel(a, 1.0, float(C_W))[0])
        chi_p = float(chi_perp(a, 1.0, float(C_W))[0]) if not a.derivative(1).has(sp.DiracDelta) \
            else chi_par
        return Criticality(a, 0.0, float(C_W), chi_par, chi_p, None, "scale-invariant",
                           (sp.S.Zero, C_W), "scale-invariant: χ_∥ = χ_⊥ = C_W (a₊² + a₋²)/2 at every K")
    s0 = sp.simplify(a.expr.subs(z, 0))
    s1 = sp.simplify(a.derivative(1).subs(z, 0))
    if a.smooth and s0 == 0 and s1 != 0 and s1.is_finite:
        s2 = sp.simplify(a.derivative(2).subs(z, 0))
        s3 = sp.simplify(a.derivative(3).subs(z, 0))
        # near K = 0 at C_W = 1/σ1²: K' = K + a1 K² + O(K³) (Wick on the Taylor series of σ²)
        a1 = sp.nsimplify(sp.simplify(s3 / s1 + sp.Rational(3, 4) * (s2 / s1) ** 2), [sp.pi])
        if a1 < 0:
            C_W = sp.nsimplify(sp.simplify(1 / s1 ** 2), [sp.pi])
            chi_par = float(C_W * (s1 ** 2 + s0 * s2))
            chi_p = float(C_W * s1 ** 2)
            return Criticality(a, 0.0, float(C_W), chi_par, chi_p, 0.0, "K*=0", (sp.S.Zero, C_W),
                               "K*=0: averages at K = 0 are values at z = 0; C_W = 1/σ'(0)²; the "
                               f"kernel flows into K* = 0 like 1/(−a1 ℓ), a1 = {a1}", float(a1))
        # a1 ≥ 0: K* = 0 repels (the kernel grows away from it): not this class
    return _nonzero_fixed_point(a)


def _nonzero_fixed_point(a: Activation) -> Criticality:
    from scipy.optimize import brentq

    def excess(K):
        return chi_parallel(a, K) / chi_perp(a, K) - 1.0

    g = np.full(len(_K_GRID), np.nan)
    for k, K in enumerate(_K_GRID):  # one at a time: where quadrature fails, that K is skipped
        try:
            with np.errstate(divide="ignore", invalid="ignore"):
                g[k] = excess(K)[0]
        except QuadratureError:
            continue
    found, rejected = [], []
    for k in range(len(_K_GRID) - 1):
        if not (np.isfinite(g[k]) and np.isfinite(g[k + 1])) or g[k] * g[k + 1] > 0:
            continue
        K = float(brentq(lambda K: float(excess(K)[0]), _K_GRID[k], _K_GRID[k + 1],
                         xtol=1e-14, rtol=1e-13)) if g[k] != 0 else float(_K_GRID[k])
        C_W = 1.0 / float(chi_perp(a, K)[0])
        C_b = K - C_W * float(_avg(a.expr ** 2, K)[0])
        (found if C_b >= -1e-12 else rejected).append((K, max(C_b, 0.0), C_W, C_b))
    if not found:
        why = (f"χ_∥ = χ_⊥ only at K = {', '.join(f'{r[0]:.4g}' for r in rejected)}, where it "
               f"would need C_b = {', '.join(f'{r[3]:.4g}' for r in rejected)} < 0") if rejected \
            else f"χ_∥/χ_⊥ never crosses 1 for K in [{_K_GRID[0]:g}, {_K_GRID[-1]:g}]"
        raise NoCriticalPoint(f"{a.name} has no critical initialisation: it is neither "
                              f"scale-invariant nor of the K*=0 class (σ(0) = 0, σ'(0) ≠ 0), and {why}")
    K, C_b, C_W, _ = found[0]
    return Criticality(a, C_b, C_W, float(chi_parallel(a, K, C_W)[0]), float(chi_perp(a, K, C_W)[0]),
                       K, "K*>0", None,
                       f"K*>0: χ_∥/χ_⊥ = 1 solved at K* (smallest of {len(found)} root(s)), "
                       "C_W = 1/⟨σ'σ'⟩_{K*}, C_b = K* − C_W⟨σ²⟩_{K*}")
