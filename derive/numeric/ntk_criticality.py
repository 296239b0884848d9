r"""NTK criticality (PDLT ch. 9): learning rates and the large-depth laws of Θ, A, B, D, F.

``ntk_criticality(σ)`` puts σ at its kernel criticality (:func:`derive.criticality`: C_b, C_W
and the universality class) and *derives* what the NTK does with depth there, from the
recursions the layer step derived (:func:`derive.derivation.layerstep.cached_layer_step`);
nothing below is a stored formula.

**1. The single-input recursions.**  The derived forms (their inert sample sums
Σ_β T_β ⟨∂_β f⟩, ``LayerStep.contracted``) at one input and equal widths (n_ℓ = n_{ℓ−1}) are
reduced to scalar recursions in K, Θ, V, A, B, D, F whose coefficients are averages
⟨∂^k f⟩_K of one variable, f a product of σ and σ' (:func:`single_input_recursions`; a sample
sum over one sample is its one term, ∂_β is d/dz).  With χ_∥ = (C_W/2)⟨∂²σ²⟩ and
χ_⊥ = C_W⟨σ'σ'⟩ they read

* Θ' = λ_b + λ_W⟨σ²⟩ + χ_⊥ Θ,   B' = χ_⊥² B + C_W²⟨σ'⁴⟩Θ²,   F' = χ_∥² F + C_W²⟨σ²σ'²⟩Θ,
* D' = χ_∥χ_⊥ D + (C_W²/4)⟨∂²σ²⟩⟨∂²σ'²⟩ΘV + C_W²(⟨σ²σ'²⟩ − ⟨σ²⟩⟨σ'²⟩)Θ + λ_W(…),
* A' = χ_⊥² A + … (D, V, Θ and λ_W terms),

each *linear in itself* with a multiplier m(K) that is 1 at criticality (m ∈ {χ_⊥, χ_⊥², χ_∥²,
χ_∥χ_⊥}) and a source S from the quantities before it (order K, V, Θ, B, F, D, A).

**2. The large-depth laws.**

* *Scale-invariant* σ (ReLU, leaky ReLU, linear; C_b = 0, C_W = 2/(a₊² + a₋²)): every K is a
  fixed point, K^{(ℓ)} = K* exactly, the averages are exact (σ = a± z on each half-line, the
  derivatives by Gaussian integration by parts, ⟨∂^k f⟩_K = K^{−k/2}⟨f He_k(z/√K)⟩_K: closed
  half-line moments), m = 1 exactly, so X^{(ℓ)} = X^{(1)} + Σ_{k<ℓ} S(k) is summed in closed
  form (SymPy): exact polynomials in ℓ, whose leading terms give the laws.
* *K* = 0 class* (tanh, erf, sin; C_b = 0, C_W = 1/σ'(0)²): the averages are expanded for small
  K by Wick on the Taylor series of σ, ⟨g⟩_K = Σ_m g_{2m}(2m−1)!! K^m.  The kernel map gives
  K' = K + a₁K² + …, so K ≈ κ/ℓ with κ = −1/a₁; then, quantity by quantity, m(K) = 1 + m₁K + …
  and the source with the laws found so far substituted, S ≈ s ℓ^{−p}, give
  X ≈ x ℓ^{e} with e = 1 − p and x = s/(e − m₁κ) (balance of x e ℓ^{e−1} = m₁κ x ℓ^{e−1}
  + s ℓ^{−p}).  Checks made on the way, each a :class:`~derive.base.errors.DeriveError` or a
  law marked *not determined* when it fails: the truncation order of the averages is raised
  until the leading term no longer depends on it; the leading term must not be reached by the
  relative O(log ℓ/ℓ) corrections of the laws it was built from (when leading terms cancel
  between quantities, the next order needs those corrections, which this leading-order
  solution does not have); and e − m₁κ > 0 (otherwise the homogeneous solution ℓ^{m₁κ}, set
  by the first layers, dominates).

Reported (single input, equal widths n): Θ^{(ℓ)} ≈ θ ℓ^{e}, and the dimensionless ratios
V/(nK²), A/(nΘ²), B/(nΘ²) (A and B are n × covariances of Ĥ: Θ² is their scale) and
D/(nKΘ), F/(nKΘ) (D and F are n × covariances of Ĥ with z²: KΘ is their scale), each
≈ c ℓ^{e}/n.  The coefficients are exact SymPy numbers in the symbols λ_b, λ_W (and K* for the
scale-invariant class); ``value`` is the number at the given rates.  For the K* = 0 class
the law depends on whether λ_b > 0 (Θ grows ∝ ℓ, the bias term dominates) or λ_b = 0.

**3. Learning rates** (conventions §3: λ_b per bias, λ_W/n_{ℓ−1} per weight).  Θ's recursion
is linear in the rates: layer ℓ's parameters add [λ_b^{(ℓ)} + λ_W^{(ℓ)}⟨σ²⟩_{K^{(ℓ−1)}}]
Π_{ℓ'=ℓ}^{L−1} χ_⊥^{(ℓ')} to Θ^{(L)}.  At criticality the product is 1 (scale-invariant) or
≈ (ℓ/L)^{p⊥} with χ_⊥ ≈ 1 − p⊥/ℓ (K* = 0 class).  Hence (:class:`LearningRates`)

* layer-independent rates λ = λ̃ L^{−e}, with e the exponent of Θ driven by that rate alone
  (derived above with (λ_b, λ_W) = (1, 0) and (0, 1)), give a finite Θ^{(L)} as L → ∞
  — scale-invariant: λ_b = λ̃_b/L, λ_W = λ̃_W/L and Θ^{(L)} = λ̃_b + λ̃_W ⟨σ²⟩_{K*} exactly; K* = 0
  class: λ_b = λ̃_b/L, λ_W = λ̃_W L⁰;
* the *learning-rate equivalence principle* (every layer contributes equally, 1/L of Θ^{(L)}):
  with ⟨σ²⟩_{K^{(ℓ)}} ≈ c_σ ℓ^{−s}, λ_b^{(ℓ)} = λ̃_b L^{p⊥−1} ℓ^{−p⊥} and
  λ_W^{(ℓ)} = λ̃_W L^{p⊥−1} ℓ^{s−p⊥}, and Θ^{(L)} → λ̃_b + λ̃_W c_σ — scale-invariant: p⊥ = s = 0,
  c_σ = ⟨σ²⟩_{K*}, the same λ̃/L; K* = 0 class: s = 1, and for tanh, erf, sin p⊥ = 1, so
  λ_b^{(ℓ)} = λ̃_b/ℓ, λ_W^{(ℓ)} = λ̃_W.
  Because a weight's rate λ_W/n_{ℓ−1} carries the same 1/fan-in as its initial variance
  C_W/n_{ℓ−1}, none of this involves the width: criticality fixes (C_b, C_W), and the depth
  fixes the rates.  Criticality alone does not make Θ depth-independent (e.g. λ = C: the
  NTK parametrisation of conventions §9 gives Θ^{(ℓ)} = ℓK* for ReLU).

**4. Numbers** (:meth:`NTKCriticality.iterate`, :meth:`~NTKCriticality.check`,
:meth:`~NTKCriticality.rates_check`): the same single-input recursions iterated layer by layer,
the averages by :func:`derive.gaussian_expectation` (kink-aware quadrature or closed forms;
for a kinked σ through the derivative-free Hermite form), then the exponents and coefficients
fitted at large ℓ.  The iteration agrees with ``derive.predict`` on one input and with the
independent hand-written reference of the tests (tests/test_ntk_criticality.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import sympy as sp
from sympy.core.function import AppliedUndef

from ..activations.catalogue import Activation, activation, probe_scale_invariant
from ..activations.catalogue import z as _ZC
from ..activations.criticality import Criticality, criticality
from ..activations.gaussian import gaussian_expectation
from ..algebra.symbols import DerivativeContraction, GaussianAverage, RandomVar
from ..base.errors import DeriveError, boundary
from ..base.parsing import as_expr
from ..derivation.layerstep import SIGMA, cached_layer_step

__all__ = ["ntk_criticality", "NTKCriticality", "PowerLaw", "LearningRates", "NTKCheck",
           "RatesCheck", "Average", "single_input_recursions"]

#: the quantities of the single-input recursions, in the order they are solved
ORDER = ("K", "V", "Theta", "B", "F", "D", "A")
#: the laws reported: name → (numerator, powers of K and Θ in the denominator, 1/n?)
LAWS = {
    "K": ("K", 0, 0, False),
    "Theta": ("Theta", 0, 0, False),
    "V/(nK²)": ("V", 2, 0, True),
    "A/(nΘ²)": ("A", 0, 2, True),
    "B/(nΘ²)": ("B", 0, 2, True),
    "D/(nKΘ)": ("D", 1, 1, True),
    "F/(nKΘ)": ("F", 1, 1, True),
}
#: the symbols the coefficients are written in
LAMBDA_B, LAMBDA_W = sp.symbols("lambda_b lambda_W", positive=True)
K_STAR = sp.Symbol("K_star", positive=True)
LAMBDA_B_TILDE, LAMBDA_W_TILDE = sp.symbols("lambda_b_tilde lambda_W_tilde", positive=True)
ELL = sp.Symbol("ell", positive=True, integer=True)

_Z = sp.Symbol("z", real=True)          # the one variable of a single-input average
_KS = sp.Symbol("K", positive=True)     # the kernel inside the series / exact averages
_T = sp.Symbol("t", positive=True)      # 1/ℓ
_EPS = sp.Symbol("eps_truncation")      # marks the truncated orders of a small-K series
_N_MIN, _N_MAX = 3, 10                  # truncation orders tried (averages to O(K^N))


class Average(sp.Function):
    r"""⟨∂^k f⟩_K: the Gaussian average of the k-th derivative of f(z), z ~ N(0, K), one
    variable (args ``(f, k)``; σ abstract in f).  Inert: :func:`single_input_recursions`
    writes the recursions in it."""

    nargs = 2

    @classmethod
    def eval(cls, f, k):  # noqa: D102 - stays unevaluated
        return None

    def _sympystr(self, printer):
        f, k = self.args
        d = "" if k == 0 else ("d " if k == 1 else f"d^{k} ")
        return f"<{d}{printer._print(f)}>_K"


# ---------------------------------------------------------------------------------------------
# 1. the single-input recursions, from the derived layer step
# ---------------------------------------------------------------------------------------------

def _label(T) -> str:
    base = T.base
    return str(getattr(base, "label", base))


def _one_variable(f: sp.Expr) -> sp.Expr:
    return f.replace(lambda x: isinstance(x, RandomVar), lambda x: _Z)


def _reduce(expr: sp.Expr) -> sp.Expr:
    """Single input: every sample index the same.  A contraction Σ_β T_β Π_k ⟨∂_{β∈B_k} f_k⟩
    is its one term T Π_k ⟨∂^{|B_k|} f_k⟩; ⟨f⟩ is ⟨∂⁰ f⟩; T_{α…} is the scalar T."""
    def contraction(node):
        out = sp.Symbol(_label(node.tensor))
        for f, g in zip(node.functions, node.groups):
            out *= Average(_one_variable(f), len(g))
        return out

    expr = expr.replace(lambda x: isinstance(x, DerivativeContraction), contraction)
    expr = expr.replace(lambda x: isinstance(x, GaussianAverage),
                        lambda x: Average(_one_variable(x.function), 0))
    return expr.replace(lambda x: isinstance(x, sp.Indexed), lambda x: sp.Symbol(_label(x)))


@lru_cache(maxsize=1)
def _recursions() -> dict:
    step = cached_layer_step(None, 1)
    names = {s.name: s for s in step.scalars}
    to_ours = {names["n_l"]: names["n_lm1"], names["lambda_b"]: LAMBDA_B,
               names["lambda_W"]: LAMBDA_W}
    out = {}
    for q in ORDER:
        r = sp.expand(_reduce(step.contracted[q]).xreplace(to_ours))
        if r.has(names["n_lm1"]) or r.has(RandomVar) or r.has(DerivativeContraction) \
                or r.has(GaussianAverage):
            raise DeriveError(f"the single-input reduction of {q} kept a width or a sample "
                              f"variable ({r}); internal error")
        out[q] = r
    return out


def single_input_recursions() -> dict:
    """The derived recursions at one input and equal widths: quantity → SymPy expression of
    layer ℓ+1 in layer ℓ's scalars K, Θ (``Theta``), V, A, B, D, F, the hyperparameters
    ``C_b``, ``C_W``, ``lambda_b``, ``lambda_W`` and inert :class:`Average` atoms ⟨∂^k f⟩_K
    (σ abstract).

    Returns
    -------
    dict
        ``{"K": …, "V": …, "Theta": …, "B": …, "F": …, "D": …, "A": …}``.

    Examples
    --------
    >>> r = single_input_recursions()
    >>> print(r["B"])
    B*C_W**2*<Derivative(sigma(z), z)**2>_K**2 + C_W**2*Theta**2*<Derivative(sigma(z), z)**4>_K
    """
    return dict(_recursions())


def _atoms(exprs) -> list:
    found = set()
    for e in exprs:
        found |= e.atoms(Average)
    return sorted(found, key=sp.default_sort_key)


def _put(f: sp.Expr, g) -> sp.Expr:
    """σ → g (a callable on the argument) in f, derivatives carried out."""
    return f.replace(lambda x: isinstance(x, AppliedUndef) and x.func == SIGMA,
                     lambda x: g(x.args[0])).doit()


def _hyper(crit: Criticality) -> dict:
    C_b, C_W = crit.exact if crit.exact is not None else (crit.C_b, crit.C_W)
    return {sp.Symbol("C_b"): sp.nsimplify(C_b), sp.Symbol("C_W"): sp.nsimplify(C_W)}


# ---------------------------------------------------------------------------------------------
# 2a. averages: exact (scale-invariant σ), small-K series (smooth σ), numbers
# ---------------------------------------------------------------------------------------------

def _derivative_order(f: sp.Expr) -> int:
    return max([0] + [int(d.derivative_count) for d in f.atoms(sp.Derivative)])


def _half_moment(j: int) -> sp.Expr:
    """∫_0^∞ z^j N(z; 0, K) dz."""
    return _KS ** sp.Rational(j, 2) * 2 ** sp.Rational(j, 2) * sp.gamma(sp.Rational(j + 1, 2)) \
        / (2 * sp.sqrt(sp.pi))


def _exact_average(f: sp.Expr, k: int, a_plus, a_minus) -> sp.Expr:
    """⟨∂^k f⟩_K for σ = a₊ z (z ≥ 0), a₋ z (z < 0), f a product of σ and σ': the
    derivative-free form K^{−k/2}⟨f He_k(z/√K)⟩ (valid across the kink), half-line moments."""
    if _derivative_order(f) > 1 and a_plus != a_minus:
        raise DeriveError(f"the average {Average(f, k)} holds σ'' or higher, a distribution "
                          "for a kinked σ; not handled (internal)")
    weight = sp.expand(sp.hermite_prob(k, _Z / sp.sqrt(_KS)) / _KS ** sp.Rational(k, 2))
    out = sp.S.Zero
    for a, sign in ((a_plus, 1), (a_minus, -1)):
        g = sp.expand(_put(f, lambda u, a=a: a * u) * weight)
        for (j,), c in sp.Poly(g, _Z).terms():
            out += c * sign ** j * _half_moment(j)
    return sp.simplify(out)


@lru_cache(maxsize=32)
def _taylor(expr: sp.Expr, P: int) -> tuple:
    """Taylor coefficients c_0 … c_P of σ at 0 (exact SymPy)."""
    ser = sp.series(expr, _ZC, 0, P + 1).removeO()
    return tuple(sp.nsimplify(ser.coeff(_ZC, j)) if ser.coeff(_ZC, j).is_Float
                 else ser.coeff(_ZC, j) for j in range(P + 1))


def _trunc(p: dict, D: int) -> dict:
    return {j: c for j, c in p.items() if j <= D and c != 0}


def _mul(p: dict, q: dict, D: int) -> dict:
    out: dict = {}
    for i, a in p.items():
        for j, b in q.items():
            if i + j <= D:
                out[i + j] = out.get(i + j, 0) + a * b
    return {j: sp.expand(c) for j, c in out.items() if c != 0}


def _series_average(act: Activation, f: sp.Expr, k: int, N: int) -> sp.Expr:
    """⟨∂^k f⟩_K to O(K^N) for smooth σ (Wick on the Taylor series: ⟨z^{2m}⟩ = (2m−1)!! K^m),
    plus ε K^{N+1} marking the truncation.  f is a polynomial in σ, σ', … (and z): each is
    replaced by its Taylor polynomial, products truncated at degree 2N + k."""
    D = 2 * N + k
    dmax = _derivative_order(f)
    coeffs = _taylor(act.expr, 2 * _N_MAX + 8)
    if D + dmax >= len(coeffs):
        raise DeriveError("series order too high (internal)")
    gens, polys = [], []
    for d in range(dmax + 1):
        g = SIGMA(_Z) if d == 0 else sp.Derivative(SIGMA(_Z), (_Z, d))
        u = sp.Symbol(f"u{d}")
        gens.append((g, u))
        # σ^{(d)}(z) = Σ_j c_{j+d} (j+d)!/j! z^j
        polys.append({j: coeffs[j + d] * sp.factorial(j + d) / sp.factorial(j)
                      for j in range(D + 1) if coeffs[j + d] != 0})
    fu = f.xreplace({g: u for g, u in gens})
    syms = [u for _, u in gens] + [_Z]
    polys.append({1: sp.S.One})
    if fu.has(SIGMA):
        raise DeriveError(f"the average {Average(f, k)} is not a polynomial in σ and its "
                          "derivatives (internal)")
    total: dict = {}
    powers: dict = {}

    def power(i, e):
        if (i, e) not in powers:
            powers[i, e] = {0: sp.S.One} if e == 0 else _mul(power(i, e - 1), polys[i], D)
        return powers[i, e]

    for monom, c in sp.Poly(fu, *syms).terms():
        term = {0: c}
        for i, e in enumerate(monom):
            if e:
                term = _mul(term, power(i, e), D)
        for j, v in term.items():
            total[j] = total.get(j, 0) + v
    out = sp.S.Zero
    for j, v in total.items():
        jj = j - k                               # the k-th derivative of z^j
        if jj >= 0 and jj % 2 == 0 and jj <= 2 * N:
            out += v * sp.ff(j, k) * sp.factorial2(jj - 1) * _KS ** (jj // 2)
    return sp.expand(out) + _EPS * _KS ** (N + 1)


def _numeric_average(act: Activation, f: sp.Expr, k: int, K: np.ndarray) -> np.ndarray:
    """⟨∂^k f⟩_K for an array of K > 0 through :func:`derive.gaussian_expectation`: the
    derivative taken symbolically for smooth σ, else the Hermite form
    Σ_j h_j K^{−(j+k)/2}⟨f z^j⟩_K (He_k(z/√K) K^{−k/2} = Σ_j h_j z^j K^{−(j+k)/2})."""
    z1 = sp.Symbol("z1")
    K = np.asarray(K, dtype=float)
    fa = _put(f, act)
    # the closed-form tier only where σ has a kernel family (its symbolic matching of, e.g.,
    # tanh's derivatives costs seconds and finds nothing)
    method = "auto" if act.kernel_family else "quadrature"

    def avg(g):
        g = as_expr(g).subs(_Z, z1)
        if not g.has(z1):
            return np.full(K.shape, float(g))
        return np.asarray(gaussian_expectation(g, K[:, None, None], method=method).value,
                          dtype=float)

    if act.smooth:
        return avg(sp.diff(fa, _Z, k))
    out = np.zeros_like(K)
    for (j,), h in sp.Poly(sp.hermite_prob(k, _Z), _Z).terms():
        out += float(h) * K ** (-(j + k) / 2) * avg(fa * _Z ** j)
    return out


# ---------------------------------------------------------------------------------------------
# 2b. the laws
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PowerLaw:
    """A derived large-depth law ``quantity ≈ coefficient · ℓ^exponent`` (· 1/n when
    ``per_width``).

    ``coefficient``: exact SymPy, in λ_b, λ_W (and K_star); ``value``: its number at the
    rates given; ``exact``: the closed form in ℓ where the recursions were summed exactly
    (scale-invariant class), else None; ``note``: why a law is not determined (then
    ``exponent`` or ``coefficient`` is None), else "".
    """

    name: str
    exponent: sp.Expr | None
    coefficient: sp.Expr | None
    value: float | None
    per_width: bool
    exact: sp.Expr | None = None
    note: str = ""

    @property
    def determined(self) -> bool:
        return self.exponent is not None and self.coefficient is not None

    def __str__(self) -> str:
        if not self.determined:
            e = "" if self.exponent is None else f" (∝ ℓ^{self.exponent})"
            return f"{self.name}: not determined{e} — {self.note}"
        e = self.exponent
        ell = "" if e == 0 else ("ℓ" if e == 1 else f"ℓ^{sp.sstr(e)}")
        n = "/n" if self.per_width else ""
        core = f"{ell}{n}" if ell else ("1/n" if n else "")
        coef = sp.sstr(self.coefficient)
        num = f" = {self.value:.6g}" if not self.coefficient.is_Rational else ""
        joint = f"({coef}) · {core}" if core else f"{coef}"
        return f"{self.name} ≈ {joint}{'' if not num else f'   [coefficient{num}]'}"


def _ratio(name: str, base: dict, kappa) -> tuple:
    """(exponent, coefficient) of the law ``name`` from the component laws ``base``
    (quantity → (exponent, coefficient)); ``kappa``: K's law (exponent, coefficient)."""
    num, kp, tp = LAWS[name][:3]
    e, c = base[num]
    eK, cK = kappa
    eT, cT = base["Theta"]
    return (sp.nsimplify(e - kp * eK - tp * eT), sp.simplify(c / (cK ** kp * cT ** tp)))


def _nonzero(c) -> bool:
    """Whether an exact coefficient (rational in the rates, with numbers such as π) is ≠ 0."""
    c = sp.expand(c)
    if c == 0:
        return False
    if c.has(_EPS):
        return True
    # a generic positive point decides what expand leaves undecided (e.g. sqrt products)
    v = sp.N(c.subs({LAMBDA_B: sp.Rational(7, 5), LAMBDA_W: sp.Rational(11, 7),
                     K_STAR: sp.Rational(13, 11)}), 40)
    return not (v.is_number and abs(v) < sp.Float(1e-30)) or sp.simplify(c) != 0


def _by_power(expr: sp.Expr) -> dict:
    """t-power → coefficient of an expanded Laurent polynomial in t."""
    out: dict = {}
    for term in sp.Add.make_args(sp.expand(expr)):
        p = sp.nsimplify(term.as_powers_dict().get(_T, 0))
        out[p] = out.get(p, 0) + term / _T ** p
    return out


def _leading(S: sp.Expr, subs: dict):
    """The leading term s t^p of S with the laws ``subs`` (symbol → its law in t = 1/ℓ)
    substituted: (p, s, kind) with kind "" when valid, "truncation" when the small-K series
    is too short to decide, "cancel" when the relative O(log ℓ/ℓ) corrections of a law S is
    built from reach order t^p (its leading terms cancelled between quantities),
    "vanishes".  The corrections are the linear ones, (∂S/∂Y) Y τ_Y, one Y at a time."""
    table = _by_power(S.xreplace(subs))
    corrections, trunc = [], [sp.oo]
    for Y, law in subs.items():
        if not S.has(Y):
            continue
        for q, c in _by_power(sp.diff(S, Y).xreplace(subs) * law).items():
            if _nonzero(c.subs(_EPS, 0)):
                corrections.append(q + 1)
            elif _nonzero(c):
                trunc.append(q + 1)
    trunc += [p for p, c in table.items() if _nonzero(c - c.subs(_EPS, 0))]
    trunc = min(trunc)
    plain = sorted((p, c.subs(_EPS, 0)) for p, c in table.items())
    p, c = next(((p, c) for p, c in plain if _nonzero(c)), (sp.oo, None))
    if p >= trunc:
        # not decided by the exact terms: by corrections below the truncation, or not yet
        if any(o < trunc for o in corrections):
            return None, None, "cancel"
        return (None, None, "truncation") if trunc < sp.oo else (None, None, "vanishes")
    if any(o <= p for o in corrections):
        return p, sp.simplify(c), "cancel"
    return p, sp.simplify(c), ""


_CANCEL = ("its leading terms cancel between the quantities it is built from, and the next "
           "order needs their O(log ℓ/ℓ) corrections (not derived: leading order only)")


def _solve_K0(act: Activation, crit: Criticality, lam_b, lam_W, only=None):
    """Leading laws (exponent, coefficient) of the K* = 0 class (module docstring, step 2):
    returns (laws, notes, info); a quantity missing from ``laws`` has its reason in
    ``notes``.  The truncation order N of the averages is raised until no leading term
    depends on it."""
    rec = _recursions()
    hyper = _hyper(crit)
    rates = {LAMBDA_B: lam_b, LAMBDA_W: lam_W}
    names = [q for q in ORDER[1:] if only is None or q in only]
    for N in range(_N_MIN, _N_MAX + 1):
        cache: dict = {}

        def spec(e):
            e = e.xreplace(hyper).xreplace(rates)
            e = e.replace(lambda x: isinstance(x, Average),
                          lambda x: cache.setdefault(x, _series_average(
                              act, x.args[0], int(x.args[1]), N)))
            return sp.expand(e.xreplace({sp.Symbol("K"): _KS}))

        FK = spec(rec["K"]).subs(_EPS, 0)
        c0, c1, a1 = (sp.simplify(FK.coeff(_KS, j)) for j in (0, 1, 2))
        if c0 != 0 or c1 != 1:
            raise DeriveError(f"{act.name}: the kernel map at criticality is not K + O(K²) "
                              f"(K⁰: {c0}, K¹: {c1}); not the K* = 0 class")
        if not a1.is_negative:
            raise DeriveError(f"{act.name}: K' = K + a₁K² + … with a₁ = {a1} ≥ 0; K* = 0 does "
                              "not attract")
        kappa = sp.simplify(-1 / a1)
        laws = {"K": (sp.Integer(-1), kappa)}
        notes: dict = {}
        info = {"a1": a1, "kappa": kappa, "N": N, "multiplier": {}}
        short = False
        for q in names:
            X = sp.Symbol(q)
            R = spec(rec[q])
            m = sp.expand(sp.diff(R, X))
            if sp.diff(m, X) != 0:
                raise DeriveError(f"the recursion of {q} is not linear in {q} (internal)")
            S = sp.expand(R - m * X)
            m0, m1 = (sp.simplify(m.coeff(_KS, j).subs(_EPS, 0)) for j in (0, 1))
            if m0 != 1:
                raise DeriveError(f"the multiplier of {q} is {m0} ≠ 1 at K = 0: not critical")
            info["multiplier"][q] = m1
            blocked = sorted(Y.name for Y in S.free_symbols if Y.name in notes)
            if blocked:
                notes[q] = f"it is built from {', '.join(blocked)}, which is not determined"
                continue
            subs = {_KS: kappa * _T}
            for Y, (e, c) in laws.items():
                if Y != "K":
                    subs[sp.Symbol(Y)] = c * _T ** (-e)
            p, s, kind = _leading(S, subs)
            if kind == "truncation":
                short = True
                break
            if kind == "vanishes":
                notes[q] = "its source vanishes at leading order"
                continue
            if kind == "cancel":
                notes[q] = _CANCEL
                continue
            e = 1 - p
            den = sp.simplify(e - m1 * kappa)
            if not den.is_positive:
                notes[q] = (f"the homogeneous solution ℓ^{sp.sstr(m1 * kappa)} of its recursion "
                            f"is not dominated by the source (ℓ^{sp.sstr(e)}): its coefficient "
                            "is set by the first layers")
                continue
            laws[q] = (sp.nsimplify(e), sp.simplify(s / den))
        if not short:
            return laws, notes, info
    raise DeriveError(f"{act.name}: the small-K series of the averages to O(K^{_N_MAX}) do not "
                      "reach the leading terms")


def _solve_scale_invariant(crit: Criticality, a_plus, a_minus, lam_b, lam_W, K_star):
    """Exact X^{(ℓ)} (polynomials in ℓ) of the scale-invariant class: K = K*, m = 1."""
    rec = _recursions()
    hyper = _hyper(crit)
    C_W = hyper[sp.Symbol("C_W")]
    cache: dict = {}

    def spec(e):
        e = e.xreplace(hyper).xreplace({LAMBDA_B: lam_b, LAMBDA_W: lam_W})
        e = e.replace(lambda x: isinstance(x, Average),
                      lambda x: cache.setdefault(x, _exact_average(x.args[0], int(x.args[1]),
                                                                  a_plus, a_minus)))
        return sp.expand(e.xreplace({sp.Symbol("K"): _KS}).xreplace({_KS: K_star}))

    FK = sp.simplify(spec(rec["K"]))
    if sp.simplify(FK - K_star) != 0:
        raise DeriveError(f"the kernel map at criticality gives {FK}, not K* (internal)")
    G0 = K_star / C_W                                   # K^{(1)} = C_W G^{(0)} = K*
    first = {"V": 0, "Theta": lam_b + lam_W * G0, "B": 0, "F": 0, "D": 0, "A": 0}
    exact = {"K": K_star}
    k = sp.Symbol("k", positive=True, integer=True)
    for q in ORDER[1:]:
        X = sp.Symbol(q)
        R = spec(rec[q])
        m = sp.simplify(sp.diff(R, X))
        if m != 1:
            raise DeriveError(f"the multiplier of {q} is {m} ≠ 1: not critical (internal)")
        S = sp.expand(R - X).xreplace({sp.Symbol(Y): v.subs(ELL, k) for Y, v in exact.items()})
        exact[q] = sp.factor(sp.expand(first[q] + sp.summation(S, (k, 1, ELL - 1))))
    return exact


def _leading_of(expr: sp.Expr) -> tuple:
    """(exponent, coefficient) of the leading power of a rational function of ℓ."""
    num, den = sp.fraction(sp.together(expr))
    pn, pd = sp.Poly(num, ELL), sp.Poly(den, ELL)
    return (sp.Integer(pn.degree() - pd.degree()), sp.simplify(pn.LC() / pd.LC()))


# ---------------------------------------------------------------------------------------------
# 3. learning rates
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LearningRates:
    """The derived depth scaling of the learning rates (module docstring, step 3).

    ``exponents``: rate → the power of L, λ = λ̃ L^{power}, for layer-independent rates
    (``lambda_b``, ``lambda_W``); ``theta_limit``: lim Θ^{(L)} in λ̃_b, λ̃_W (``exact_for_all_L``
    when it holds at every L); ``p_perp``: Π_{ℓ'=ℓ}^{L−1} χ_⊥ ≈ (ℓ/L)^{p⊥} (χ_⊥ ≈ 1 − p⊥/ℓ; 0 for
    scale-invariant σ); ``c_sigma``, ``s``: ⟨σ²⟩_{K^{(ℓ)}} ≈ c_σ ℓ^{−s} (s = 0 for scale-invariant
    σ, c_σ = ⟨σ²⟩_{K*}; s = 1 for the K* = 0 class); ``theta_limit_equal``: lim Θ^{(L)} under
    the equivalence principle, λ_b^{(ℓ)} = λ̃_b L^{p⊥−1} ℓ^{−p⊥},
    λ_W^{(ℓ)} = λ̃_W L^{p⊥−1} ℓ^{s−p⊥} (each layer then adds 1/L of the limit).
    """

    exponents: dict
    theta_limit: sp.Expr
    exact_for_all_L: bool
    p_perp: sp.Expr
    c_sigma: sp.Expr
    s: int
    theta_limit_equal: sp.Expr

    def per_layer(self, L: int, lambda_b_tilde: float = 1.0, lambda_W_tilde: float = 1.0,
                  scheme: str = "depth") -> tuple[np.ndarray, np.ndarray]:
        """(λ_b^{(ℓ)}, λ_W^{(ℓ)}) for ℓ = 1 … L under ``scheme`` "depth" (layer-independent,
        λ̃ L^{power}) or "equal" (the equivalence principle)."""
        if scheme not in ("depth", "equal"):
            raise DeriveError(f"scheme must be 'depth' or 'equal', got {scheme!r}")
        ell = np.arange(1, L + 1, dtype=float)
        if scheme == "depth":
            return (np.full(L, lambda_b_tilde * float(L) ** float(self.exponents["lambda_b"])),
                    np.full(L, lambda_W_tilde * float(L) ** float(self.exponents["lambda_W"])))
        p = float(self.p_perp)
        return (lambda_b_tilde * float(L) ** (p - 1) * ell ** (-p),
                lambda_W_tilde * float(L) ** (p - 1) * ell ** (self.s - p))

    def formulas(self) -> dict:
        """The per-layer rates of both schemes, as text."""
        def pw(var, e):
            e = sp.nsimplify(e)
            if e == 0:
                return ""
            a = abs(e)
            txt = var if a == 1 else (f"{var}^{a}" if a.is_Integer else f"{var}^({sp.sstr(a)})")
            return f"/{txt}" if e < 0 else f"·{txt}"
        p = self.p_perp
        return {"depth": (f"λ_b = λ̃_b{pw('L', self.exponents['lambda_b'])}",
                          f"λ_W = λ̃_W{pw('L', self.exponents['lambda_W'])}"),
                "equal": (f"λ_b^(ℓ) = λ̃_b{pw('L', p - 1)}{pw('ℓ', -p)}",
                          f"λ_W^(ℓ) = λ̃_W{pw('L', p - 1)}{pw('ℓ', self.s - p)}")}

    def __str__(self) -> str:
        def tilde(e):
            return sp.sstr(e).replace("lambda_b_tilde", "λ̃_b").replace("lambda_W_tilde", "λ̃_W")
        f = self.formulas()
        exact = " exactly, at every L" if self.exact_for_all_L else " as L → ∞"
        return (f"layer-independent rates {f['depth'][0]}, {f['depth'][1]}: Θ^(L) → "
                f"{tilde(self.theta_limit)}{exact}\n"
                f"equal contribution per layer (Π χ_⊥ ≈ (ℓ/L)^{_paren(self.p_perp)}): "
                f"{f['equal'][0]}, {f['equal'][1]}: Θ^(L) → {tilde(self.theta_limit_equal)}"
                f"{exact}")


def _rates(theta_b: tuple, theta_W: tuple, p_perp, c_sigma, s: int, exact: bool):
    """LearningRates from Θ's laws driven by λ_b alone (theta_b) and by λ_W alone."""
    (eb, cb), (ew, cw) = theta_b, theta_W
    limit = LAMBDA_B_TILDE * cb + LAMBDA_W_TILDE * cw
    lim_eq = LAMBDA_B_TILDE + LAMBDA_W_TILDE * c_sigma
    return LearningRates({"lambda_b": -eb, "lambda_W": -ew}, sp.simplify(limit), exact,
                         sp.nsimplify(p_perp), c_sigma, s, sp.simplify(lim_eq))


# ---------------------------------------------------------------------------------------------
# 4. numbers and fits
# ---------------------------------------------------------------------------------------------

def _fit(ell: np.ndarray, y: np.ndarray, exponent: float) -> tuple[float, float]:
    """(fitted exponent, fitted coefficient): least squares of log|y| on log ℓ, 1, 1/ℓ,
    log ℓ/ℓ, 1/ℓ², and of y/ℓ^exponent on 1, 1/ℓ, log ℓ/ℓ, 1/ℓ² (the intercept), over the
    window given (the corrections of the laws are O(log ℓ/ℓ))."""
    lg = np.log(ell)
    basis = np.stack([lg, np.ones_like(ell), 1 / ell, lg / ell, 1 / ell ** 2], axis=1)
    e_fit = np.linalg.lstsq(basis, np.log(np.abs(y)), rcond=None)[0][0]
    basis = np.stack([np.ones_like(ell), 1 / ell, lg / ell, 1 / ell ** 2], axis=1)
    c_fit = np.linalg.lstsq(basis, y / ell ** exponent, rcond=None)[0][0]
    return float(e_fit), float(c_fit)


@dataclass(frozen=True)
class NTKCheck:
    """Derived laws against a fit to the iterated recursions (:meth:`NTKCriticality.check`).

    ``rows``: one dict per law with ``law``, ``exponent``/``fitted_exponent``,
    ``coefficient``/``fitted_coefficient``, ``relative_difference`` (of the coefficients),
    ``local_exponent`` (log y(L)/y(L/2) / log 2) and ``local_coefficient`` (y(L)/L^e);
    ``depth``, ``window`` (the ℓ fitted), ``seconds``.
    """

    activation: str
    depth: int
    window: tuple
    rows: tuple
    seconds: float

    def row(self, law: str) -> dict:
        for r in self.rows:
            if r["law"] == law:
                return r
        raise DeriveError(f"no law {law!r}; have {[r['law'] for r in self.rows]}")

    def __repr__(self) -> str:
        head = (f"{'law':10} {'exponent':>9} {'fitted':>10} {'coefficient':>13} {'fitted':>13} "
                f"{'rel. diff':>10}")
        lines = [f"NTKCheck({self.activation}: derived laws vs a fit to the iterated recursions, "
                 f"ℓ = {self.window[0]}…{self.window[1]}, {self.seconds:.1f} s)", head]
        for r in self.rows:
            lines.append(f"{r['law']:10} {r['exponent']:9.4g} {r['fitted_exponent']:10.6f} "
                         f"{r['coefficient']:13.6g} {r['fitted_coefficient']:13.6g} "
                         f"{r['relative_difference']:10.2e}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        from html import escape
        cells = "".join(
            f"<tr><td>{escape(r['law'])}</td><td>{r['exponent']:.4g}</td>"
            f"<td>{r['fitted_exponent']:.4f}</td><td>{r['coefficient']:.6g}</td>"
            f"<td>{r['fitted_coefficient']:.6g}</td><td>{r['relative_difference']:.2e}</td></tr>"
            for r in self.rows)
        return (f"<table><caption>{escape(self.activation)}: derived laws vs a fit, ℓ = "
                f"{self.window[0]}…{self.window[1]}</caption><tr><th>law</th><th>exponent</th>"
                "<th>fitted</th><th>coefficient</th><th>fitted</th><th>rel. diff</th></tr>"
                f"{cells}</table>")


@dataclass(frozen=True)
class RatesCheck:
    """Θ^{(L)} with the derived rate scaling at several depths (:meth:`NTKCriticality.rates_check`):
    ``depths``, ``theta`` (Θ^{(L)} per depth), ``limit`` (the derived L → ∞ value),
    ``scheme``."""

    activation: str
    scheme: str
    depths: tuple
    theta: tuple
    limit: float

    def __repr__(self) -> str:
        rows = "\n".join(f"  L = {L:5d}: Θ^(L) = {th:.8g}  (Θ^(L)/limit − 1 = {th / self.limit - 1:+.3e})"
                         for L, th in zip(self.depths, self.theta))
        return (f"RatesCheck({self.activation}, scheme {self.scheme!r}, derived limit "
                f"{self.limit:.8g})\n{rows}")


# ---------------------------------------------------------------------------------------------
# the result
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class NTKCriticality:
    """The NTK at criticality of an activation (see the module docstring).

    Attributes
    ----------
    activation : Activation
    criticality : Criticality
        C_b, C_W and the universality class (``universality_class``).
    lambda_b, lambda_W : float
        The (layer-independent) rates the laws' ``value`` are given at.
    K_star : float or None
        The kernel (scale-invariant class: every K is a fixed point; K* = 0 class: None).
    laws : dict
        Name → :class:`PowerLaw`: ``"K"``, ``"Theta"``, ``"V/(nK²)"``, ``"A/(nΘ²)"``,
        ``"B/(nΘ²)"``, ``"D/(nKΘ)"``, ``"F/(nKΘ)"``.
    rates : LearningRates
        The depth scaling of the learning rates.
    info : dict
        a₁, κ (K ≈ κ/ℓ), p⊥, p∥ (χ ≈ 1 − p/ℓ), the multipliers' m₁ and the truncation order of
        the small-K series (K* = 0 class); a₊, a₋ (scale-invariant).
    """

    activation: Activation = field(repr=False)
    criticality: Criticality = field(repr=False)
    lambda_b: float
    lambda_W: float
    K_star: float | None
    laws: dict = field(repr=False)
    rates: LearningRates = field(repr=False)
    info: dict = field(repr=False)
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def universality_class(self) -> str:
        return self.criticality.universality_class

    # -- numbers ---------------------------------------------------------------------------

    @boundary
    def iterate(self, depth: int, lambda_b=None, lambda_W=None, G0: float | None = None) -> dict:
        """The single-input recursions iterated to ``depth`` layers: quantity → array over
        ℓ = 1 … depth (index ℓ − 1) for K, Theta, V, A, B, D, F (equal widths; A … F and V
        are the n-independent coefficients of §3).

        ``lambda_b``, ``lambda_W``: one number or one per layer (default: the result's);
        ``G0``: the input's G^{(0)} (default: K^{(1)} = K* for scale-invariant σ, 1 otherwise).
        """
        L = _whole(depth, "depth", 2)
        lb = _per_layer(self.lambda_b if lambda_b is None else lambda_b, L, "lambda_b")
        lw = _per_layer(self.lambda_W if lambda_W is None else lambda_W, L, "lambda_W")
        hyper = _hyper(self.criticality)
        C_b, C_W = (float(v) for v in hyper.values())
        if G0 is None:
            G0 = (self.K_star / C_W) if self.K_star is not None else 1.0
        if isinstance(G0, bool) or not isinstance(G0, (int, float, np.floating)):
            raise DeriveError(f"G0 must be a finite input norm > 0, got {G0!r:.40}")
        G0 = float(G0)
        if not (np.isfinite(G0) and G0 > 0):
            raise DeriveError(f"G0 must be a finite input norm > 0, got {G0}")
        K, vals = self._kernel_and_averages(L, G0)
        rec = _recursions()
        atoms = _atoms(rec.values())
        names = ("K", "Theta", "V", "A", "B", "D", "F")
        syms = [sp.Symbol(q) for q in names]
        args = syms + [sp.Symbol("C_b"), sp.Symbol("C_W"), LAMBDA_B, LAMBDA_W] + \
            [sp.Symbol(f"avg{j}") for j in range(len(atoms))]
        rename = {a: sp.Symbol(f"avg{j}") for j, a in enumerate(atoms)}
        fns = {q: sp.lambdify(args, rec[q].xreplace(rename), "numpy") for q in names[1:]}
        out = {q: np.zeros(L) for q in names}
        out["K"] = K
        out["Theta"][0] = lb[0] + lw[0] * G0
        for l in range(1, L):
            now = [out[q][l - 1] for q in names]
            a = [vals[j][l - 1] for j in range(len(atoms))]
            for q in names[1:]:
                out[q][l] = fns[q](*now, C_b, C_W, lb[l], lw[l], *a)
        return out

    def _kernel_and_averages(self, L: int, G0: float):
        key = (L, G0)
        if key in self._cache:
            return self._cache[key]
        for (L2, G2), (K2, v2) in self._cache.items():
            if G2 == G0 and L2 >= L:
                return K2[:L], [v[:L] for v in v2]
        act = self.activation
        hyper = _hyper(self.criticality)
        C_b, C_W = (float(v) for v in hyper.values())
        K = np.empty(L)
        K[0] = C_b + C_W * G0
        rec = _recursions()["K"].xreplace(hyper)
        if self.universality_class == "scale-invariant":
            K[:] = K[0]
        else:
            # the derived kernel map, one layer at a time (K^{(ℓ+1)} needs K^{(ℓ)})
            (atom,) = rec.atoms(Average)
            lin = sp.lambdify([sp.Symbol("a")], rec.xreplace({atom: sp.Symbol("a")}))
            for l in range(1, L):
                K[l] = float(lin(_numeric_average(act, atom.args[0], int(atom.args[1]),
                                                  K[l - 1:l])[0]))
        atoms = _atoms(_recursions().values())
        if self.universality_class == "scale-invariant":
            vals = [np.full(L, _numeric_average(act, a.args[0], int(a.args[1]), K[:1])[0])
                    for a in atoms]
        else:
            vals = [_numeric_average(act, a.args[0], int(a.args[1]), K) for a in atoms]
        self._cache[key] = (K, vals)
        return K, vals

    def _series(self, name: str, out: dict) -> np.ndarray:
        num, kp, tp, _ = LAWS[name]
        return out[num] / (out["K"] ** kp * out["Theta"] ** tp)

    @boundary
    def check(self, depth: int = 400, window: tuple | None = None) -> NTKCheck:
        """Iterate the recursions to ``depth`` and fit each determined law over ``window``
        (default ℓ = depth/4 … depth): the fitted exponent (free) and the coefficient at the
        derived exponent, each with O(log ℓ/ℓ, 1/ℓ, 1/ℓ²) corrections fitted alongside.

        Returns
        -------
        NTKCheck
            A table of derived and fitted exponents and coefficients.
        """
        import time

        L = _whole(depth, "depth", 40)
        lo, hi = window if window is not None else (max(L // 4, 10), L)
        lo, hi = _whole(lo, "window start", 5), _whole(hi, "window end", 10)
        if not lo + 8 <= hi <= L:
            raise DeriveError(f"window must be (lo, hi) with lo + 8 ≤ hi ≤ depth = {L}, got "
                              f"({lo}, {hi})")
        start = time.perf_counter()
        out = self.iterate(L)
        ell = np.arange(lo, hi + 1, dtype=float)
        rows = []
        for name, law in self.laws.items():
            if not law.determined or law.value is None or law.value == 0:
                continue
            y = self._series(name, out)[lo - 1:hi]
            e = float(law.exponent)
            e_fit, c_fit = _fit(ell, y, e)
            rows.append({"law": name, "exponent": e, "fitted_exponent": e_fit,
                         "coefficient": law.value, "fitted_coefficient": c_fit,
                         "relative_difference": abs(c_fit / law.value - 1),
                         "local_exponent": float(np.log(y[-1] / y[(len(y) - 1) // 2])
                                                 / np.log(ell[-1] / ell[(len(y) - 1) // 2])),
                         "local_coefficient": float(y[-1] / ell[-1] ** e)})
        return NTKCheck(self.activation.name, L, (lo, hi), tuple(rows),
                        time.perf_counter() - start)

    @boundary
    def rates_check(self, depths=(50, 100, 200), lambda_b_tilde: float = 1.0,
                    lambda_W_tilde: float = 1.0, scheme: str = "depth") -> RatesCheck:
        """Θ^{(L)} at each depth L with the derived rates (``scheme`` "depth": λ̃ L^{power},
        layer-independent; "equal": the equivalence principle), and the derived limit."""
        Ls = tuple(_whole(L, "depth", 2) for L in depths)
        if not Ls:
            raise DeriveError("give at least one depth")
        for name, v in (("lambda_b_tilde", lambda_b_tilde), ("lambda_W_tilde", lambda_W_tilde)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) \
                    or v < 0:
                raise DeriveError(f"{name} must be a finite number ≥ 0, got {v!r}")
        if lambda_b_tilde == 0 and lambda_W_tilde == 0:
            raise DeriveError("lambda_b_tilde and lambda_W_tilde are both 0: Θ = 0")
        limit_expr = self.rates.theta_limit if scheme == "depth" else self.rates.theta_limit_equal
        sub = {LAMBDA_B_TILDE: lambda_b_tilde, LAMBDA_W_TILDE: lambda_W_tilde}
        if self.K_star is not None:
            sub[K_STAR] = self.K_star
        limit = float(limit_expr.subs(sub))
        self.iterate(max(Ls))           # the kernel and the averages once, for the deepest
        theta = []
        for L in Ls:
            lb, lw = self.rates.per_layer(L, lambda_b_tilde, lambda_W_tilde, scheme)
            theta.append(float(self.iterate(L, lb, lw)["Theta"][-1]))
        return RatesCheck(self.activation.name, scheme, Ls, tuple(theta), limit)

    # -- display ---------------------------------------------------------------------------

    def _header(self) -> str:
        c = self.criticality
        cw = sp.sstr(c.exact[1]) if c.exact else f"{c.C_W:.6g}"
        if self.universality_class == "scale-invariant":
            k = f"K^(ℓ) = K* = {self.K_star:.6g} at every layer (χ_∥ = χ_⊥ = 1 exactly)"
        else:
            i = self.info
            k = (f"K^(ℓ) ≈ {_paren(i['kappa'])}/ℓ (a₁ = {sp.sstr(i['a1'])}); χ_⊥ ≈ 1 − "
                 f"{_paren(i['p_perp'])}/ℓ, χ_∥ ≈ 1 − {_paren(i['p_par'])}/ℓ")
        return (f"NTK criticality of {self.activation.name} ({self.universality_class} class; "
                f"C_b = 0, C_W = {cw}); one input, equal widths n, rates λ_b = "
                f"{self.lambda_b:g}, λ_W = {self.lambda_W:g}\n  {k}")

    def __repr__(self) -> str:
        lines = [self._header(), "  large-ℓ laws, derived from the recursions:"]
        lines += [f"    {law}" for law in self.laws.values()]
        lines.append("  learning rates:")
        lines += [f"    {s}" for s in str(self.rates).splitlines()]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        from html import escape

        def cell(x):
            return escape("—" if x is None else sp.sstr(x))
        rows = "".join(
            f"<tr><td>{escape(n)}</td><td>{cell(law.exponent)}</td><td>{cell(law.coefficient)}"
            f"</td><td>{'' if law.value is None else f'{law.value:.6g}'}</td>"
            f"<td>{'1/n' if law.per_width else ''}</td><td>{escape(law.note)}</td></tr>"
            for n, law in self.laws.items())
        head = "<br>".join(escape(s) for s in self._header().splitlines())
        rates = "<br>".join(escape(s) for s in str(self.rates).splitlines())
        return (f"<div><p>{head}</p><table><tr><th>law</th><th>exponent of ℓ</th>"
                f"<th>coefficient</th><th>value</th><th></th><th>note</th></tr>{rows}</table>"
                f"<p>{rates}</p></div>")


def _paren(x) -> str:
    """x as text, in parentheses unless it is an integer or a symbol."""
    x = as_expr(x)
    return sp.sstr(x) if (x.is_Integer or x.is_Symbol) else f"({sp.sstr(x)})"


def _whole(v, name: str, least: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < least:
        raise DeriveError(f"{name} must be a whole number ≥ {least}, got {v!r:.40}")
    if v > 100_000:
        raise DeriveError(f"{name} = {v} is more than 100000 layers; the 1/n expansion behind "
                          "these recursions needs depth ≪ width anyway")
    return int(v)


def _per_layer(v, L: int, name: str) -> np.ndarray:
    arr = np.asarray(v, dtype=float) if not isinstance(v, (str, bytes)) else None
    if arr is None or arr.ndim > 1 or (arr.ndim == 1 and arr.shape[0] != L):
        raise DeriveError(f"{name} must be one number or one per layer ({L}), got {v!r:.60}")
    arr = np.broadcast_to(arr, (L,)).astype(float)
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise DeriveError(f"{name} must be finite and ≥ 0")
    return arr


def _rate(v, name: str) -> sp.Expr:
    if isinstance(v, bool) or not isinstance(v, (int, float, sp.Rational)) or not np.isfinite(
            float(v)) or float(v) < 0:
        raise DeriveError(f"{name} must be a finite number ≥ 0 (a learning rate), got {v!r:.40}")
    return sp.nsimplify(v, rational=True)


# ---------------------------------------------------------------------------------------------
# the public function
# ---------------------------------------------------------------------------------------------

@boundary
def ntk_criticality(act, lambda_b: float = 1.0, lambda_W: float = 1.0,
                    K_star: float = 1.0) -> NTKCriticality:
    r"""The NTK of an MLP at the kernel criticality of ``act``: derived large-depth laws of Θ,
    A, B, D, F and the depth scaling of the learning rates (PDLT ch. 9; module docstring).

    Parameters
    ----------
    act : str, Activation or Criticality
        The activation, or its kernel criticality (the result of :func:`derive.criticality`,
        of an MLP layer); it must have a critical initialisation of the scale-invariant or the
        K* = 0 class.
    lambda_b, lambda_W : float, optional
        Layer-independent rates (≥ 0, not both 0; conventions §3: λ_b per bias, λ_W/n_{ℓ−1}
        per weight) at which the laws' ``value`` are given; the laws' ``coefficient`` are
        exact in the symbols λ_b, λ_W.  For the K* = 0 class λ_b = 0 is a different regime
        (Θ tends to a constant instead of growing ∝ ℓ).
    K_star : float, optional
        The kernel of the scale-invariant class (every K is a fixed point; set by the input,
        K* = C_W G^{(0)}); ignored otherwise.

    Returns
    -------
    NTKCriticality
        ``.laws`` (name → :class:`PowerLaw`), ``.rates`` (:class:`LearningRates`), ``.info``;
        ``.check(depth)`` and ``.rates_check(depths)`` confirm them numerically.

    Raises
    ------
    DeriveError
        For an activation without a critical initialisation, or of the K* > 0 class (its
        asymptotics are not derived here), one with an infinite NTK (σ jumps), or rates that
        are negative, not finite or both zero.

    Examples
    --------
    >>> r = ntk_criticality('relu')
    >>> r.laws['B/(nΘ²)'].exponent, r.laws['B/(nΘ²)'].coefficient
    (1, 2/3)
    >>> print(r.laws['Theta'])
    Theta ≈ (K_star*lambda_W/2 + lambda_b) · ℓ   [coefficient = 1.5]
    """
    if isinstance(act, Criticality):
        if (act.xi, act.gamma) != (0.0, 1.0):
            raise DeriveError("the NTK at criticality is derived for the MLP only: a residual "
                              "layer's O(1/n) statistics are not derived (docs/conventions.md §8)")
        act = act.activation
    a = act if isinstance(act, Activation) else activation(act)
    if a.ntk_obstacle:
        raise DeriveError(f"{a.name}: the NTK is infinite ({a.ntk_obstacle}); no NTK criticality")
    lam_b, lam_W = _rate(lambda_b, "lambda_b"), _rate(lambda_W, "lambda_W")
    if lam_b == 0 and lam_W == 0:
        raise DeriveError("lambda_b and lambda_W are both 0: the NTK vanishes")
    crit = criticality(a)
    cls = crit.universality_class
    if cls == "K*>0":
        raise DeriveError(f"{a.name} is of the K*>0 class (critical at K* = {crit.K_star:.6g}); "
                          "the NTK's large-depth laws are derived here for the scale-invariant "
                          "and the K*=0 classes only")
    if cls == "scale-invariant":
        if isinstance(K_star, bool) or not isinstance(K_star, (int, float)) or \
                not np.isfinite(K_star) or K_star <= 0:
            raise DeriveError(f"K_star must be a finite kernel > 0, got {K_star!r:.40}")
        return _scale_invariant(a, crit, lam_b, lam_W, float(lambda_b), float(lambda_W),
                                float(K_star))
    return _k_star_zero(a, crit, lam_b, lam_W, float(lambda_b), float(lambda_W))


def _law(name: str, e, c, value_subs: dict, exact=None, note: str = "") -> PowerLaw:
    per_width = LAWS[name][3]
    value = None if c is None else float(sp.N(c.subs(value_subs)))
    return PowerLaw(name, e, c, value, per_width, exact, note)


def _scale_invariant(a, crit, lam_b, lam_W, fb, fw, K_star) -> NTKCriticality:
    si = probe_scale_invariant(a.expr, _ZC, order=0)
    a_plus, a_minus = (sp.nsimplify(v, rational=True) for v in si)
    exact = _solve_scale_invariant(crit, a_plus, a_minus, LAMBDA_B, LAMBDA_W, K_STAR)
    subs = {LAMBDA_B: lam_b, LAMBDA_W: lam_W, K_STAR: sp.nsimplify(K_star, rational=True)}
    laws = {}
    for name, (num, kp, tp, _) in LAWS.items():
        expr = sp.factor(sp.simplify(exact[num] / (exact["K"] ** kp * exact["Theta"] ** tp)))
        if expr.subs(subs) == 0:
            laws[name] = _law(name, None, None, subs, expr, "identically 0 at these rates")
            continue
        e, c = _leading_of(expr)
        laws[name] = _law(name, e, c, subs, expr)
    # the rates: Θ driven by λ_b alone and by λ_W alone (Θ is linear in the rates)
    th = exact["Theta"]
    theta_b = _leading_of(th.subs({LAMBDA_B: 1, LAMBDA_W: 0}))
    theta_W = _leading_of(th.subs({LAMBDA_B: 0, LAMBDA_W: 1}))
    c_sigma = theta_W[1]                                 # ⟨σ²⟩_{K*}
    rates = _rates(theta_b, theta_W, 0, c_sigma, 0, exact=True)
    info = {"a_plus": a_plus, "a_minus": a_minus, "p_perp": sp.S.Zero, "p_par": sp.S.Zero,
            "exact": exact}
    return NTKCriticality(a, crit, fb, fw, K_star, laws, rates, info)


@lru_cache(maxsize=16)
def _k_star_zero_laws(a: Activation, crit: Criticality, lam_b, lam_W):
    lb = LAMBDA_B if lam_b != 0 else sp.S.Zero
    lw = LAMBDA_W if lam_W != 0 else sp.S.Zero
    laws, notes, info = _solve_K0(a, crit, lb, lw)
    tb, nb, _ = _solve_K0(a, crit, sp.S.One, sp.S.Zero, only=("K", "Theta"))
    tw, nw, _ = _solve_K0(a, crit, sp.S.Zero, sp.S.One, only=("K", "Theta"))
    return laws, notes, info, tb, nb, tw, nw


def _k_star_zero(a, crit, lam_b, lam_W, fb, fw) -> NTKCriticality:
    laws_q, notes, info, tb, nb, tw, nw = _k_star_zero_laws(a, crit, lam_b, lam_W)
    info = dict(info)
    kappa = info["kappa"]
    m = info["multiplier"]
    info["p_perp"] = sp.simplify(-m["Theta"] * kappa)           # χ_⊥ ≈ 1 − p⊥/ℓ
    info["p_par"] = sp.simplify(-m["V"] * kappa / 2)            # χ_∥² ≈ 1 − 2p∥/ℓ
    subs = {LAMBDA_B: lam_b, LAMBDA_W: lam_W}
    laws = {}
    for name, (num, kp, tp, _) in LAWS.items():
        need = {num, *(["Theta"] if tp else [])}
        missing = [q for q in need if q not in laws_q]
        if missing:
            why = "; ".join(f"{q}: {notes.get(q, 'not determined')}" for q in missing)
            laws[name] = _law(name, None, None, subs, note=why)
            continue
        if name in ("K", "Theta"):
            e, c = laws_q[num]
        else:
            e, c = _ratio(name, laws_q, laws_q["K"])
        laws[name] = _law(name, e, c, subs)
    if "Theta" not in tb or "Theta" not in tw:
        raise DeriveError(f"{a.name}: Θ's law is not determined ({nb or nw}); no rate scaling")
    # ⟨σ²⟩_K ≈ c_σ K/C_W... read from Θ driven by λ_W alone: Θ_W ≈ c_σ/p⊥ → c_σ = p⊥ Θ_W
    c_sigma = sp.simplify(info["p_perp"] * tw["Theta"][1]) if tw["Theta"][0] == 0 else None
    if c_sigma is None:
        raise DeriveError(f"{a.name}: Θ driven by λ_W alone is not ∝ ℓ⁰; rates not derived")
    rates = _rates(tb["Theta"], tw["Theta"], info["p_perp"], c_sigma, 1, exact=False)
    return NTKCriticality(a, crit, fb, fw, None, laws, rates, info)
