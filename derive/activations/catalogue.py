r"""Activations as data (``rules/activations/*.toml``) and what the engine needs of them.

Each rule file records an activation's SymPy definition in the symbol ``z``, its parameters,
smoothness and kink locations, its universality class where docs/conventions.md §5 states one, and — when
its Gaussian expectations have a closed form — the *kernel family* that provides them
(``rules/kernels/*.toml``: arc-cosine for the scale-invariant family, arcsine for erf, trig for
sin).  The closed forms are written once per family; activations point at them with their
parameters (one source of truth per fact).

A user-supplied string in ``z`` is an activation too: it is parsed by
:func:`derive.base.parsing.parse`, which walks its syntax tree against a whitelist and evaluates
nothing; ``Abs`` and ``sign`` are rewritten as ``Max`` and ``Heaviside`` (the same function on
the real line, with real derivatives); σ is validated (finite and real on the real line, not
constant, no growth like exp(c z²), finitely many jumps); its kinks are found from its
``Max``/``Min``/``Piecewise``/``Heaviside`` nodes and its jumps by probing them; and it joins
the arc-cosine family automatically when it is scale-invariant (a₊ z for z ≥ 0, a₋ z below).

>>> act = activation("tanh")
>>> act.expr
tanh(z)
>>> activation("relu").kernel_family, activation("relu").universality_class
('arccos', 'scale-invariant')
>>> activation("2*Max(0, z)").kernel_params
(('a_minus', 0.0), ('a_plus', 2.0))
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from numbers import Integral, Real
from typing import Callable

import numpy as np
import sympy as sp

from ..base.errors import DeriveError, ParseError, UnknownNameError, boundary
from ..base.parsing import FUNCTIONS, as_expr, parse
from ..base.rules import load_rule_file, rule_sets

__all__ = ["z", "Activation", "ClosedForm", "activation", "known_activations", "kernel_rules",
           "parse_function", "probe_scale_invariant", "kinks_of", "numpy_function",
           "numpy_functions",
           "real_line_problems", "risky_nodes", "check_nodes"]

#: the variable of every activation expression
z = sp.Symbol("z")

def parse_function(text: str, variables: dict, what: str = "expression") -> sp.Expr:
    """Parse ``text`` with :func:`derive.base.parsing.parse` (nothing is evaluated): SymPy values of
    ``variables`` are the names that may appear, other values (objects with ``__getitem__``)
    are fields that may be subscripted; the safe functions and constants are in scope."""
    plain = {k: v for k, v in variables.items() if isinstance(v, sp.Basic)}
    fields = {k: v for k, v in variables.items() if not isinstance(v, sp.Basic)}
    expr = parse(text, plain, what=what, fields=fields)
    bad = sorted({type(f).__name__ for f in expr.atoms(sp.core.function.AppliedUndef)})
    if bad:
        raise ParseError(f"the {what} {text!r} calls unknown function(s) {', '.join(bad)}; known "
                         f"functions are {', '.join(sorted(FUNCTIONS))}")
    return expr


# ---------------------------------------------------------------------------------------------
# kernel families (closed forms)
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ClosedForm:
    """One closed-form Gaussian expectation of a kernel family (a rule of rules/kernels)."""

    id: str
    family: str
    gives: tuple[int, ...]  # derivative orders of the factors: (0, 0) is <σ σ>, (1,) is <σ'>
    formula: sp.Expr
    variables: tuple[str, ...]
    preconditions: str
    tier: str
    source: str
    latex: str

    @property
    def evaluate(self) -> Callable:
        """Vectorised numpy function of ``variables`` (θ is computed from K's for arccos)."""
        return _compile_closed_form(self)


@lru_cache(maxsize=None)
def _compile_closed_form(cf: ClosedForm) -> Callable:
    syms = [sp.Symbol(v) for v in cf.variables]
    theta = sp.Symbol("theta")
    # sqrt(a b) → sqrt(a) sqrt(b): the product of two large variances overflows long before
    # the average does (⟨|z1||z2|⟩ at K = 1e300 is 6e299); exact only when every factor is
    # non-negative whatever the variances K11, K22 ≥ 0 are (K11, 1 + 2 K22, π, …)
    nonneg = {sp.Symbol(v): sp.Dummy(v, nonnegative=True) for v in ("K11", "K22")}
    expr = cf.formula.replace(
        lambda e: (isinstance(e, sp.Pow) and abs(e.exp) == sp.S.Half and isinstance(e.base, sp.Mul)
                   and all(a.xreplace(nonneg).is_nonnegative for a in e.base.args)),
        lambda e: sp.Mul(*(sp.Pow(a, e.exp) for a in e.base.args)))
    if theta in expr.free_symbols:
        fn = sp.lambdify(syms + [theta], expr, modules="numpy")

        def with_theta(K11v, K12v, K22v, *rest):
            K11v, K12v, K22v = (np.asarray(x, float) for x in (K11v, K12v, K22v))
            denom = np.sqrt(K11v) * np.sqrt(K22v)
            cos = np.clip(np.divide(K12v, denom, out=np.ones_like(denom), where=denom > 0), -1.0, 1.0)
            # one variable twice: exactly 1 (K / sqrt(K)² can round to 1 − 2e-16, which arccos
            # turns into an angle of 2e-8 and the step-function form into an error of 1e-8)
            cos = np.where((K12v == K11v) & (K11v == K22v), 1.0, cos)
            with np.errstate(over="ignore", invalid="ignore"):
                return fn(K11v, K12v, K22v, *rest, np.arccos(cos))

        return with_theta
    fn = sp.lambdify(syms, expr, modules="numpy")

    def quiet(*args):
        with np.errstate(over="ignore", invalid="ignore"):
            return fn(*args)

    return quiet


@lru_cache(maxsize=None)
def kernel_rules(family: str) -> tuple[ClosedForm, ...]:
    """The closed forms of a kernel family (``rules/kernels/<family>.toml``)."""
    known = [s.split("/", 1)[1] for s in rule_sets() if s.startswith("kernels/")]
    if family not in known:
        raise UnknownNameError("kernel family", family, known)
    data = load_rule_file(f"kernels/{family}")
    variables = tuple(data["variables"])
    names = {v: sp.Symbol(v) for v in variables + ("theta",)}
    out = []
    for entry in data.get("closed_form", []):
        formula = parse_function(entry["formula"], names, f"closed form {entry['id']}")
        out.append(ClosedForm(entry["id"], family, tuple(entry["gives"]), formula, variables,
                              entry.get("preconditions", ""), entry.get("tier", "exact"),
                              data.get("source", ""), entry.get("latex", "")))
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# activations
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Activation:
    r"""An activation function σ(z) and everything the engine needs to know about it.

    ``expr`` is SymPy in :data:`z`; ``derivative(k)`` is σ^{(k)}; ``act(arg)`` substitutes;
    ``numpy(k)`` is a vectorised numpy function of σ^{(k)}; ``closed_forms`` are the kernel
    family's rules (empty when there is none: quadrature is used).  ``kinks`` are the points
    where σ or a derivative switches branch (quadrature splits there), ``jumps`` those where σ
    itself is discontinuous; ``ntk_obstacle`` says why ⟨σ'σ'⟩ (the NTK Θ, χ_⊥) is infinite,
    or is empty when it is finite.  Use :func:`activation` to make one: it validates σ.
    """

    name: str
    expr: sp.Expr
    parameters: tuple[tuple[str, float], ...] = ()
    smooth: bool = True
    kinks: tuple[float, ...] = ()
    universality_class: str = ""
    reference: str = ""
    latex: str = ""
    kernel_family: str = ""
    kernel_params: tuple[tuple[str, float], ...] = ()
    z: sp.Symbol = field(default=z, repr=False)
    jumps: tuple[float, ...] = ()
    ntk_obstacle: str = ""

    def __post_init__(self):
        if not isinstance(self.name, str) or not isinstance(self.expr, sp.Expr):
            raise DeriveError(f"an Activation needs a name (str) and a SymPy expression in z, got "
                              f"{type(self.name).__name__} and {type(self.expr).__name__}; use "
                              "derive.activation(...)")

    def derivative(self, k: int = 1) -> sp.Expr:
        if isinstance(k, bool) or not isinstance(k, Integral) or k < 0:
            raise DeriveError(f"derivative order must be a whole number ≥ 0, got {k!r}")
        return sp.diff(self.expr, z, int(k)) if k else self.expr

    def __call__(self, arg) -> sp.Expr:
        return self.expr.subs(z, as_expr(arg, "argument of σ"))

    def numpy(self, k: int = 0) -> Callable[[np.ndarray], np.ndarray]:
        return numpy_function(self.derivative(k), (z,))

    @property
    def closed_forms(self) -> tuple[ClosedForm, ...]:
        return kernel_rules(self.kernel_family) if self.kernel_family else ()

    @property
    def is_polynomial(self) -> bool:
        return self.expr.is_polynomial(z)

    def require_ntk(self, what: str = "the NTK mean Θ") -> None:
        """Raise a :class:`~derive.base.errors.DeriveError` when ⟨σ'σ'⟩ is infinite (σ jumps, or
        σ' has a singularity), naming ``what`` needed it."""
        if self.ntk_obstacle:
            raise DeriveError(f"{what} is infinite for the activation {self.name}: "
                              f"{self.ntk_obstacle}; leave it out (e.g. targets without "
                              "'Theta') or use an activation without jumps")


def known_activations() -> list[str]:
    """Names of the activations in rules/activations (aliases not included).

    Parameters
    ----------
    None

    Returns
    -------
    list of str
        The names, sorted.

    Raises
    ------
    DeriveError
        When the rule files cannot be read.

    Examples
    --------
    >>> known_activations()[:4]
    ['erf', 'gelu', 'leaky_relu', 'linear']
    """
    return sorted(s.split("/", 1)[1] for s in rule_sets() if s.startswith("activations/"))


@lru_cache(maxsize=1)
def _aliases() -> dict[str, str]:
    out = {}
    for name in known_activations():
        data = load_rule_file(f"activations/{name}")
        out[name.lower()] = name
        for a in data.get("aliases", []):
            out[a.lower()] = name
    return out


@boundary
def activation(name_or_expr, **params) -> Activation:
    """An activation by name (``"tanh"``, ``"relu"``, ``"silu"`` …) or from a SymPy string in z.

    Parameters of named activations (e.g. ``a_minus`` of ``leaky_relu``) are keyword
    arguments.  An unknown name that is not a valid expression in ``z`` is rejected with the
    list of known names.  Strings are parsed by :func:`derive.base.parsing.parse` (nothing is
    evaluated).  σ is refused when it is constant, not finite or not real somewhere on the
    real line (a pole, a log or square root of a negative number), grows like exp(c z²) or
    faster (its Gaussian averages diverge), or has infinitely many jumps (floor, ceiling).

    Parameters
    ----------
    name_or_expr : str
        A known name (see :func:`known_activations`) or an expression in ``z``.
    **params : float
        Parameters of a named activation.

    Returns
    -------
    Activation
        σ with its derivatives, kinks, jumps and universality class.

    Raises
    ------
    DeriveError
        For an unknown name that is not an expression in ``z`` (listing the known names), a
        string that does not parse, unknown parameters, or a σ refused as above.

    Examples
    --------
    >>> act = activation('tanh')
    >>> act.expr, act.universality_class
    (tanh(z), 'K*=0')
    >>> activation('relu').derivative(1)
    Heaviside(z)
    """
    if isinstance(name_or_expr, Activation):
        if params:
            raise DeriveError(f"parameters {sorted(params)} were given with an Activation object; "
                              "pass them with its name instead")
        return name_or_expr
    if isinstance(name_or_expr, sp.Expr):
        if params:
            raise DeriveError(f"parameters {sorted(params)} were given for an expression, which "
                              "has none")
        return _from_expr(name_or_expr, sp.sstr(name_or_expr))
    if not isinstance(name_or_expr, str):
        raise DeriveError(f"an activation is a name or a SymPy string in z, got "
                          f"{type(name_or_expr).__name__} {name_or_expr!r:.80}")
    key = name_or_expr.strip()
    canonical = _aliases().get(key.lower())
    if canonical is not None:
        return _named(canonical, _parameter_values(canonical, params))
    if params:
        raise DeriveError(f"parameters {sorted(params)} were given for {key!r:.80}, which is not a "
                          "named activation")
    if key.isidentifier():
        raise UnknownNameError("activation", key, known_activations())
    return _from_string(key)


def _parameter_values(name: str, params: dict) -> tuple:
    """The parameters of a named activation as a sorted tuple of (name, float), validated."""
    defaults = dict(load_rule_file(f"activations/{name}").get("parameters", {}))
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise DeriveError(f"activation {name!r} has no parameter(s) {unknown}; its parameters "
                          f"are {sorted(defaults) or 'none'}")
    out = []
    for k, v in sorted({**defaults, **params}.items()):
        if isinstance(v, bool) or not isinstance(v, Real):
            raise DeriveError(f"parameter {k} of {name} must be a number, got {v!r:.80}")
        try:
            fv = float(v)
        except (OverflowError, ValueError):
            fv = math.inf
        if not math.isfinite(fv) or abs(fv) > 1e12:
            raise DeriveError(f"parameter {k} of {name} must be a finite number of moderate size "
                              f"(|{k}| ≤ 1e12), got {v!r:.80}")
        out.append((k, fv))
    return tuple(out)


@lru_cache(maxsize=256)
def _named(name: str, values: tuple) -> Activation:
    data = load_rule_file(f"activations/{name}")
    symbols = {k: sp.Symbol(k) for k, _ in values}
    expr = parse_function(data["expr"], {"z": z, **symbols}, f"definition of {name}")
    expr = expr.subs({symbols[k]: sp.nsimplify(v) if float(v).is_integer() else sp.Float(v)
                      for k, v in values})
    kernel = dict(data.get("kernel", {}))
    family = kernel.pop("family", "")
    floats = {k: sp.Float(v) for k, v in values}
    kparams = tuple(sorted((k, float(parse(str(v), floats, what=f"kernel parameter {k} of {name}")))
                           for k, v in kernel.items()))
    checked = _validated(expr, name)
    return Activation(name=name, expr=expr, parameters=values,
                      smooth=bool(data.get("smooth", True)),
                      kinks=tuple(float(x) for x in data.get("kinks", [])),
                      universality_class=data.get("universality_class", ""),
                      reference=data.get("reference", ""), latex=data.get("latex", ""),
                      kernel_family=family, kernel_params=kparams, jumps=checked.jumps,
                      ntk_obstacle=checked.ntk_obstacle)


@lru_cache(maxsize=256)
def _from_string(text: str) -> Activation:
    expr = parse_function(text, {"z": z}, "activation")
    # the name is the parsed expression printed by SymPy, never the raw text: it reaches
    # documents and generated code
    return _from_expr(expr, sp.sstr(expr))


@lru_cache(maxsize=256)
def _from_expr(expr: sp.Expr, name: str) -> Activation:
    extra = expr.free_symbols - {z}
    if extra:
        raise ParseError(f"activation {name!r:.80} depends on {sorted(map(str, extra))}; only z "
                         "is allowed")
    check_nodes(expr, f"the activation {name!r:.80}")
    real = _real_form(expr)
    checked = _validated(real, name)
    si = probe_scale_invariant(real, z, order=0)
    family, kparams, uclass = "", (), ""
    if si is not None:
        family, uclass = "arccos", "scale-invariant"
        kparams = (("a_minus", si[1]), ("a_plus", si[0]))
    return Activation(name=name, expr=real, smooth=not checked.kinks and not _has_nonsmooth(real),
                      kinks=checked.kinks, universality_class=uclass, kernel_family=family,
                      kernel_params=kparams, reference="user-supplied", jumps=checked.jumps,
                      ntk_obstacle=checked.ntk_obstacle)


_NONSMOOTH = (sp.Max, sp.Min, sp.Abs, sp.Piecewise, sp.Heaviside, sp.sign, sp.floor, sp.ceiling)


def _has_nonsmooth(expr: sp.Expr) -> bool:
    return any(expr.atoms(t) for t in _NONSMOOTH)


# ---------------------------------------------------------------------------------------------
# validation: what σ must be for its Gaussian averages to exist
# ---------------------------------------------------------------------------------------------

#: the SymPy node types an activation may consist of (besides the FUNCTIONS)
_ALLOWED_NODES = (sp.Symbol, sp.Number, sp.NumberSymbol, sp.Add, sp.Mul, sp.Pow,
                  sp.core.relational.Relational, sp.logic.boolalg.BooleanAtom, sp.And, sp.Or,
                  sp.Not, sp.functions.elementary.piecewise.ExprCondPair, sp.Max, sp.Min,
                  sp.Tuple)
#: points where σ is probed numerically (plus its kinks and their neighbourhoods)
_GRID = np.linspace(-60.0, 60.0, 24001)


@dataclass(frozen=True)
class _Checked:
    kinks: tuple
    jumps: tuple
    ntk_obstacle: str


def _refuse(name: str, why: str):
    raise DeriveError(f"the activation {name!r:.80} cannot be used: {why}")


def check_nodes(expr: sp.Expr, what: str) -> None:
    """A :class:`~derive.base.errors.DeriveError` unless ``expr`` consists of numbers, symbols,
    arithmetic, the functions of :data:`derive.base.parsing.FUNCTIONS` and Piecewise conditions
    (what a parsed string can hold)."""
    allowed = tuple(sorted({f for f in FUNCTIONS.values() if isinstance(f, type)}, key=str))
    for node in sp.preorder_traversal(expr):
        if not isinstance(node, _ALLOWED_NODES + allowed):
            raise DeriveError(f"{what} contains {type(node).__name__} ({sp.sstr(node)[:60]}); it "
                              "may use only numbers, its variables, arithmetic and the functions "
                              f"{', '.join(sorted(FUNCTIONS, key=str.lower))}")


def _real_form(expr: sp.Expr) -> sp.Expr:
    """|u| → Max(u, −u), sign(u) → H(u) − H(−u): the same function on the real line, with
    derivatives SymPy takes as real ones (Abs of a symbol not declared real differentiates
    into re/im parts)."""
    return expr.replace(lambda e: isinstance(e, sp.Abs),
                        lambda e: sp.Max(e.args[0], -e.args[0])) \
               .replace(lambda e: isinstance(e, sp.sign),
                        lambda e: sp.Heaviside(e.args[0]) - sp.Heaviside(-e.args[0]))


def _values(expr: sp.Expr, points: np.ndarray, var: sp.Symbol = z) -> np.ndarray:
    """``expr`` as a function of ``var`` on ``points`` (complex results and overflows come out
    as NaN/inf)."""
    fn = _numpy_function(_without_deltas(expr), (var,))
    with np.errstate(all="ignore"):
        return np.broadcast_to(np.asarray(fn(points), dtype=float), points.shape)


def _without_deltas(expr: sp.Expr) -> sp.Expr:
    return expr.replace(lambda e: isinstance(e, sp.DiracDelta), lambda e: sp.S.Zero)


def risky_nodes(expr: sp.Expr) -> list[sp.Expr]:
    """The subexpressions that can fail to be finite and real on the real line: powers other
    than whole non-negative ones, log, tan, asin, acos, atanh (with a variable inside)."""
    return [node for node in sp.preorder_traversal(expr)
            if ((isinstance(node, sp.Pow) and not (node.exp.is_Integer and node.exp >= 0))
                or isinstance(node, (sp.log, sp.tan, sp.asin, sp.acos, sp.atanh)))
            and node.free_symbols]


def real_line_problems(expr: sp.Expr, var: sp.Symbol, probe: np.ndarray | None = None) -> str:
    """Where ``expr`` (a function of ``var``) is not finite or not real on the real line, in
    words ('' if nowhere): each node of :func:`risky_nodes` is checked symbolically (SymPy's
    continuous domain) or, where SymPy cannot tell, on the probe points (default: a grid on
    [−60, 60] with 0)."""
    if probe is None:
        probe = np.unique(np.concatenate([_GRID, [0.0]]))
    return _problems(expr, probe, var)


def _problems(expr: sp.Expr, probe: np.ndarray, var: sp.Symbol = z) -> str:
    from sympy.calculus.util import continuous_domain

    for node in risky_nodes(expr):
        if var not in node.free_symbols:
            continue
        try:
            dom = continuous_domain(node, var, sp.S.Reals)
        except Exception:  # noqa: BLE001 - SymPy cannot tell: decide on the probe points
            dom = None
        if dom is not None and dom != sp.S.Reals:
            bad = sp.S.Reals - dom
            where = f"{var} in {sp.sstr(bad)}" if len(sp.sstr(bad)) < 80 else f"some real {var}"
            return f"{sp.sstr(node)} is not finite and real for {where}"
        if dom is None:
            vals = _values(node, probe, var)
            if not np.all(np.isfinite(vals)):
                k = int(np.nonzero(~np.isfinite(vals))[0][0])
                return f"{sp.sstr(node)} is not finite and real at {var} = {probe[k]:.6g}"
            base = node.base if isinstance(node, sp.Pow) else node.args[0]
            if isinstance(node, (sp.Pow, sp.log)) and base.free_symbols:
                b = _values(base, probe, var)
                if np.any(np.diff(np.sign(b)) != 0):
                    k = int(np.nonzero(np.diff(np.sign(b)) != 0)[0][0])
                    return (f"{sp.sstr(base)} changes sign near {var} = {probe[k]:.6g}, so "
                            f"{sp.sstr(node)} is not finite and real there")
    return ""


def _growth(expr: sp.Expr) -> str:
    """'' unless |σ(z)| grows like exp(c z²), c > 0, or faster (then ⟨σ²⟩_K diverges once
    K ≥ 1/(4c)): read from log|σ|/z² at |z| = 30 and 60, or from an overflow before 60."""
    for sgn in (1.0, -1.0):
        t = sgn * np.linspace(1.0, 60.0, 600)
        v = np.abs(_values(expr, t))
        if not np.all(np.isfinite(v)):
            k = int(np.nonzero(~np.isfinite(v))[0][0])
            return (f"|σ(z)| exceeds double precision already at z = {t[k]:.3g}: it grows too "
                    "fast for its Gaussian averages to be computed")
        r30, r60 = (np.log(max(v[np.argmin(np.abs(np.abs(t) - a))], 1e-300)) / a ** 2
                    for a in (30.0, 60.0))
        if r60 > 1e-4 and r60 >= 0.9 * r30:
            return (f"|σ(z)| grows like exp(c z²) (c ≈ {r60:.3g} at z = {sgn * 60:g}), so its "
                    "Gaussian averages diverge once K ≥ 1/(4c)")
    return ""


def _validated(expr: sp.Expr, name: str) -> _Checked:
    """Refuse σ that is constant, not finite, complex, has a pole or grows too fast on the
    real line, or has infinitely many jumps; find its kinks and jumps and whether ⟨σ'σ'⟩ is
    finite."""
    if expr.has(sp.floor, sp.ceiling):
        _refuse(name, "floor and ceiling jump at every integer, and a Gaussian average would need "
                "a split at each of them; write the few steps you need with Heaviside or "
                "Piecewise")
    if expr.has(sp.I, sp.zoo, sp.nan, sp.oo, sp.S.NegativeInfinity):
        _refuse(name, "it holds an infinite, undefined or imaginary number")
    if z not in expr.free_symbols:
        _refuse(name, f"it is the constant {sp.sstr(expr)[:60]}; σ must depend on z")
    kinks = kinks_of(expr, z)
    probe = np.unique(np.concatenate([_GRID, np.asarray(kinks, float), [0.0]]))
    why = _problems(expr, probe) or _growth(expr)
    if why:
        _refuse(name, why)
    vals = _values(expr, probe)
    if not np.all(np.isfinite(vals)):
        k = int(np.nonzero(~np.isfinite(vals))[0][0])
        _refuse(name, f"σ is not finite and real at z = {probe[k]:.6g}")
    if np.ptp(vals) <= 1e-12 * max(1.0, float(np.max(np.abs(vals)))):
        _refuse(name, f"it is constant (σ = {vals[0]:.6g} everywhere); σ must depend on z")
    jumps = []
    for c in kinks:
        h = 1e-7 * max(1.0, abs(c))
        lo, hi = _values(expr, np.array([c - h, c + h]))
        if abs(hi - lo) > 1e-4 * max(1.0, abs(lo), abs(hi)):
            jumps.append(c)
    obstacle = ""
    if jumps:
        obstacle = (f"σ jumps at z = {', '.join(f'{c:g}' for c in jumps)}, so σ' holds a Dirac "
                    "delta and ⟨σ'σ'⟩ diverges")
    else:
        d1 = _without_deltas(sp.diff(expr, z))
        why = _problems(d1, probe)
        if not why and not np.all(np.isfinite(_values(d1, probe))):
            why = "σ' is not finite on the real line"
        if why:
            obstacle = f"σ' is singular ({why}), so ⟨σ'σ'⟩ is not finite"
    return _Checked(tuple(kinks), tuple(jumps), obstacle)


def kinks_of(expr: sp.Expr, var: sp.Symbol) -> tuple[float, ...]:
    """Real points where a piecewise node of ``expr`` switches, as a function of ``var``."""
    candidates = []
    for node in sp.preorder_traversal(expr):
        if isinstance(node, (sp.Max, sp.Min)):
            args = node.args
            candidates += [a - b for k, a in enumerate(args) for b in args[k + 1:]]
        elif isinstance(node, (sp.Abs, sp.Heaviside, sp.sign, sp.floor, sp.ceiling)):
            candidates.append(node.args[0])
        elif isinstance(node, sp.Piecewise):
            for _, cond in node.args:
                for rel in cond.atoms(sp.core.relational.Relational):
                    candidates.append(rel.lhs - rel.rhs)
    points = set()
    for c in candidates:
        if var not in c.free_symbols:
            continue
        try:
            sols = sp.solve(sp.Eq(c, 0), var)
        except (NotImplementedError, TypeError, ValueError):
            continue
        for s in sols:
            if s.is_real is not False and s.is_number:
                v = complex(s.evalf())
                if abs(v.imag) < 1e-14:
                    points.add(round(v.real, 15))
    return tuple(sorted(points))


def probe_scale_invariant(expr: sp.Expr, var: sp.Symbol, order: int = 0):
    """(a₊, a₋) when ``expr`` is a₊·var^{1-order}… on var > 0 and a₋… on var < 0, else None.

    With ``order=0`` the test is σ(t) = a₊ t, σ(−t) = −a₋ t for t > 0 (scale-invariant σ);
    with ``order=1`` it is σ'(t) = a₊, σ'(−t) = a₋ (the step function that is its derivative).
    """
    t = sp.Symbol("t_probe", positive=True)
    try:
        up = sp.simplify(expr.subs(var, t))
        down = sp.simplify(expr.subs(var, -t))
        if order == 0:
            ap, am = sp.simplify(up / t), sp.simplify(down / (-t))
        else:
            ap, am = up, down
    except (TypeError, ValueError, AttributeError):
        return None
    if ap.free_symbols or am.free_symbols or not (ap.is_number and am.is_number):
        return None
    if not (ap.is_real and am.is_real):
        return None
    if order == 0 and ap == 0 and am == 0:
        return None
    return float(ap), float(am)


_NUMPY_OVERRIDES = {
    "Heaviside": lambda x, h0=0.5: np.heaviside(x, h0),
    "Max": lambda *a: np.maximum.reduce(np.broadcast_arrays(*a)) if len(a) > 1 else a[0],
    "Min": lambda *a: np.minimum.reduce(np.broadcast_arrays(*a)) if len(a) > 1 else a[0],
}


@lru_cache(maxsize=4096)
def _has_delta(expr: sp.Expr) -> bool:
    return expr.has(sp.DiracDelta)


def _refuse_deltas(expr: sp.Expr) -> None:
    if _has_delta(expr):
        raise DeriveError(
            f"{expr} contains a Dirac delta (a derivative of a kink), which has no pointwise "
            "values; use the derivative-free forms of docs/conventions.md §4 (Gaussian integration by parts, "
            "derive.integrate_by_parts) for non-smooth activations")


def numpy_function(expr: sp.Expr, variables: tuple) -> Callable:
    """Vectorised numpy/scipy function of ``expr`` (Max/Min/Heaviside made array-safe)."""
    _refuse_deltas(expr)
    return _numpy_function(expr, tuple(variables))


def numpy_functions(exprs: tuple, variable: sp.Symbol) -> Callable:
    """Several functions of one variable evaluated together: ``fn(x)`` gives the list of their
    values, each of x's shape; the subexpressions they share (tanh(x) in σ, σ′, σ″, σ‴) are
    computed once."""
    exprs = tuple(exprs)
    for e in exprs:
        _refuse_deltas(e)
    return _numpy_functions(exprs, variable)


def _lambdified(exprs: tuple, variables: tuple) -> Callable:
    """lambdify of one expression or a list of them, Max/Min/Heaviside made array-safe,
    common subexpressions computed once."""
    import scipy.special  # noqa: F401  (erf and friends)

    def safe(expr):
        rep = {}
        for node in expr.atoms(sp.Max, sp.Min):
            rep[node] = sp.Function("_DeriveMax" if isinstance(node, sp.Max) else "_DeriveMin")(*node.args)
        for node in expr.atoms(sp.Heaviside):
            rep[node] = sp.Function("_DeriveHeaviside")(node.args[0])
        return expr.xreplace(rep) if rep else expr

    mods = [{"_DeriveMax": _NUMPY_OVERRIDES["Max"], "_DeriveMin": _NUMPY_OVERRIDES["Min"],
             "_DeriveHeaviside": _NUMPY_OVERRIDES["Heaviside"]}, "scipy", "numpy"]
    body = [safe(e) for e in exprs] if isinstance(exprs, tuple) else safe(exprs)
    return sp.lambdify(variables, body, modules=mods, cse=True)  # tanh(z) once in σ‴(z)


@lru_cache(maxsize=512)
def _numpy_function(expr: sp.Expr, variables: tuple) -> Callable:
    fn = _lambdified(expr, variables)

    def wrapped(*xs):
        with np.errstate(over="ignore", invalid="ignore"):
            out = fn(*xs)
        return np.broadcast_to(np.asarray(out, dtype=float), np.broadcast(*xs).shape) if xs else out

    return wrapped


@lru_cache(maxsize=256)
def _numpy_functions(exprs: tuple, variable: sp.Symbol) -> Callable:
    fn = _lambdified(exprs, (variable,))

    def values(x):
        x = np.asarray(x, dtype=float)
        with np.errstate(over="ignore", invalid="ignore"):
            # an array of x's shape as it comes (most of them); a constant broadcast
            return [v if type(v) is np.ndarray and v.dtype == np.float64 and v.shape == x.shape
                    else np.broadcast_to(np.asarray(v, dtype=float), x.shape) for v in fn(x)]

    return values
