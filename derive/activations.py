r"""Activations as data (``rules/activations/*.toml``) and what the engine needs of them.

Each rule file records an activation's SymPy definition in the symbol ``z``, its parameters,
smoothness and kink locations, its universality class where THEORY §5 states one, and — when
its Gaussian expectations have a closed form — the *kernel family* that provides them
(``rules/kernels/*.toml``: arc-cosine for the scale-invariant family, arcsine for erf, trig for
sin).  The closed forms are written once per family; activations point at them with their
parameters (one source of truth per fact).

A user-supplied SymPy string in ``z`` is an activation too: it is parsed with
``sympy.parse_expr`` in a fixed namespace (no Python ``eval`` of user text), its kinks are
found from its ``Max``/``Min``/``Abs``/``Piecewise``/``Heaviside``/``sign`` nodes, and it joins
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

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

import numpy as np
import sympy as sp
from sympy.parsing.sympy_parser import (convert_xor, implicit_multiplication_application,
                                        parse_expr, standard_transformations)

from .errors import DeriveError, ParseError, UnknownNameError
from .rules import load_rule_file, rule_sets

__all__ = ["z", "Activation", "ClosedForm", "activation", "known_activations", "kernel_rules",
           "parse_function", "probe_scale_invariant", "kinks_of", "numpy_function"]

#: the variable of every activation expression
z = sp.Symbol("z")

#: functions a user expression may use (the fixed parsing namespace)
SAFE_FUNCTIONS = {name: getattr(sp, name) for name in (
    "sin", "cos", "tan", "sinh", "cosh", "tanh", "asin", "acos", "atan", "asinh", "atanh", "exp",
    "log", "sqrt", "erf",
    "erfc", "Abs", "Max", "Min", "Heaviside", "Piecewise", "sign", "floor", "ceiling")}
SAFE_CONSTANTS = {"pi": sp.pi, "E": sp.E, "oo": sp.oo, "True": sp.true, "False": sp.false}


def parse_function(text: str, variables: dict[str, sp.Symbol], what: str = "expression") -> sp.Expr:
    """Parse ``text`` with only ``variables``, the safe functions and constants in scope."""
    if not isinstance(text, str) or not text.strip():
        raise ParseError(f"the {what} must be a non-empty string, got {text!r}")
    namespace = {**SAFE_FUNCTIONS, **SAFE_CONSTANTS, **variables,
                 "Integer": sp.Integer, "Float": sp.Float, "Rational": sp.Rational,
                 "Symbol": sp.Symbol}
    called = set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*\(", text))
    unknown = sorted(called - set(namespace))
    if unknown:
        raise ParseError(f"the {what} {text!r} calls unknown function(s) {', '.join(unknown)}; "
                         f"known functions are {', '.join(sorted(SAFE_FUNCTIONS))}")
    try:
        expr = parse_expr(text, local_dict=dict(namespace),
                          global_dict={"__builtins__": {}, **namespace},
                          transformations=standard_transformations + (convert_xor,),
                          evaluate=True)
    except DeriveError:
        raise  # the engine's own message (e.g. an index in the wrong slot) says what to change
    except NameError as exc:
        raise ParseError(f"the {what} {text!r} uses an unknown name ({exc}); known functions are "
                         f"{', '.join(sorted(SAFE_FUNCTIONS))}") from None
    except Exception as exc:  # noqa: BLE001 - any failure of the parser is the user's text
        raise ParseError(f"could not parse the {what} {text!r}: {exc.__class__.__name__}: {exc}") from None
    if not isinstance(expr, sp.Expr):
        raise ParseError(f"the {what} {text!r} is not an expression (got {type(expr).__name__})")
    extra = sorted(str(s) for s in expr.free_symbols if s not in set(variables.values()))
    if extra:
        raise ParseError(f"the {what} {text!r} uses unknown symbol(s) {', '.join(extra)}; only "
                         f"{', '.join(sorted(variables)) or 'numbers'} may appear")
    bad = sorted({type(f).__name__ for f in expr.atoms(sp.core.function.AppliedUndef)})
    if bad:
        raise ParseError(f"the {what} {text!r} calls unknown function(s) {', '.join(bad)}; known "
                         f"functions are {', '.join(sorted(SAFE_FUNCTIONS))}")
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
    expr = cf.formula
    if theta in expr.free_symbols:
        K11, K12, K22 = sp.symbols("K11 K12 K22")
        fn = sp.lambdify(syms + [theta], expr, modules="numpy")

        def with_theta(K11v, K12v, K22v, *rest):
            K11v, K12v, K22v = (np.asarray(x, float) for x in (K11v, K12v, K22v))
            denom = np.sqrt(K11v * K22v)
            cos = np.clip(np.divide(K12v, denom, out=np.ones_like(denom), where=denom > 0), -1.0, 1.0)
            return fn(K11v, K12v, K22v, *rest, np.arccos(cos))

        return with_theta
    return sp.lambdify(syms, expr, modules="numpy")


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
    family's rules (empty when there is none: quadrature is used).
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

    def derivative(self, k: int = 1) -> sp.Expr:
        if int(k) != k or k < 0:
            raise DeriveError(f"derivative order must be a whole number ≥ 0, got {k!r}")
        return sp.diff(self.expr, z, int(k)) if k else self.expr

    def __call__(self, arg) -> sp.Expr:
        return self.expr.subs(z, sp.sympify(arg))

    def numpy(self, k: int = 0) -> Callable[[np.ndarray], np.ndarray]:
        return numpy_function(self.derivative(k), (z,))

    @property
    def closed_forms(self) -> tuple[ClosedForm, ...]:
        return kernel_rules(self.kernel_family) if self.kernel_family else ()

    @property
    def is_polynomial(self) -> bool:
        return self.expr.is_polynomial(z)


def known_activations() -> list[str]:
    """Names of the activations in rules/activations (aliases not included)."""
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


def activation(name_or_expr, **params) -> Activation:
    """An activation by name (``"tanh"``, ``"relu"``, ``"silu"`` …) or from a SymPy string in z.

    Parameters of named activations (e.g. ``a_minus`` of ``leaky_relu``) are keyword
    arguments.  An unknown name that is not a valid expression in ``z`` is rejected with the
    list of known names.
    """
    if isinstance(name_or_expr, Activation):
        return name_or_expr
    if isinstance(name_or_expr, sp.Expr):
        return _from_expr(name_or_expr, sp.sstr(name_or_expr))
    if not isinstance(name_or_expr, str):
        raise DeriveError(f"an activation is a name or a SymPy string in z, got {name_or_expr!r}")
    key = name_or_expr.strip()
    canonical = _aliases().get(key.lower())
    if canonical is not None:
        return _named(canonical, tuple(sorted(params.items())))
    if params:
        raise DeriveError(f"parameters {sorted(params)} were given for {key!r}, which is not a "
                          "named activation")
    if key.isidentifier():
        raise UnknownNameError("activation", key, known_activations())
    return _from_string(key)


@lru_cache(maxsize=256)
def _named(name: str, params: tuple) -> Activation:
    data = load_rule_file(f"activations/{name}")
    defaults = dict(data.get("parameters", {}))
    unknown = sorted(set(dict(params)) - set(defaults))
    if unknown:
        raise DeriveError(f"activation {name!r} has no parameter(s) {unknown}; its parameters "
                          f"are {sorted(defaults) or 'none'}")
    values = {**defaults, **dict(params)}
    for k, v in values.items():
        if not isinstance(v, (int, float)) or not np.isfinite(v):
            raise DeriveError(f"parameter {k} of {name} must be a finite number, got {v!r}")
    symbols = {k: sp.Symbol(k) for k in values}
    expr = parse_function(data["expr"], {"z": z, **symbols}, f"definition of {name}")
    expr = expr.subs({symbols[k]: sp.nsimplify(v) if float(v).is_integer() else sp.Float(v)
                      for k, v in values.items()})
    kernel = dict(data.get("kernel", {}))
    family = kernel.pop("family", "")
    kparams = tuple(sorted((k, float(sp.sympify(v, locals={n: sp.Float(x) for n, x in values.items()})))
                           for k, v in kernel.items()))
    return Activation(name=name, expr=expr, parameters=tuple(sorted(values.items())),
                      smooth=bool(data.get("smooth", True)),
                      kinks=tuple(float(x) for x in data.get("kinks", [])),
                      universality_class=data.get("universality_class", ""),
                      reference=data.get("reference", ""), latex=data.get("latex", ""),
                      kernel_family=family, kernel_params=kparams)


@lru_cache(maxsize=256)
def _from_string(text: str) -> Activation:
    return _from_expr(parse_function(text, {"z": z}, "activation"), text)


def _from_expr(expr: sp.Expr, name: str) -> Activation:
    extra = expr.free_symbols - {z}
    if extra:
        raise ParseError(f"activation {name!r} depends on {sorted(map(str, extra))}; only z is allowed")
    kinks = kinks_of(expr, z)
    si = probe_scale_invariant(expr, z, order=0)
    family, kparams, uclass = "", (), ""
    if si is not None:
        family, uclass = "arccos", "scale-invariant"
        kparams = (("a_minus", si[1]), ("a_plus", si[0]))
    return Activation(name=name, expr=expr, smooth=not kinks and not _has_nonsmooth(expr),
                      kinks=kinks, universality_class=uclass, kernel_family=family,
                      kernel_params=kparams, reference="user-supplied")


_NONSMOOTH = (sp.Max, sp.Min, sp.Abs, sp.Piecewise, sp.Heaviside, sp.sign, sp.floor, sp.ceiling)


def _has_nonsmooth(expr: sp.Expr) -> bool:
    return any(expr.atoms(t) for t in _NONSMOOTH)


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


def numpy_function(expr: sp.Expr, variables: tuple) -> Callable:
    """Vectorised numpy/scipy function of ``expr`` (Max/Min/Heaviside made array-safe)."""
    if expr.has(sp.DiracDelta):
        raise DeriveError(
            f"{expr} contains a Dirac delta (a derivative of a kink), which has no pointwise "
            "values; use the derivative-free forms of THEORY §4 (Gaussian integration by parts, "
            "derive.integrate_by_parts) for non-smooth activations")
    return _numpy_function(expr, tuple(variables))


@lru_cache(maxsize=512)
def _numpy_function(expr: sp.Expr, variables: tuple) -> Callable:
    import scipy.special  # noqa: F401  (erf and friends)

    rep = {}
    for node in expr.atoms(sp.Max, sp.Min):
        rep[node] = sp.Function("_DeriveMax" if isinstance(node, sp.Max) else "_DeriveMin")(*node.args)
    for node in expr.atoms(sp.Heaviside):
        rep[node] = sp.Function("_DeriveHeaviside")(node.args[0])
    e = expr.xreplace(rep) if rep else expr
    mods = [{"_DeriveMax": _NUMPY_OVERRIDES["Max"], "_DeriveMin": _NUMPY_OVERRIDES["Min"],
             "_DeriveHeaviside": _NUMPY_OVERRIDES["Heaviside"]}, "scipy", "numpy"]
    fn = sp.lambdify(variables, e, modules=mods)

    def wrapped(*xs):
        with np.errstate(over="ignore", invalid="ignore"):
            out = fn(*xs)
        return np.broadcast_to(np.asarray(out, dtype=float), np.broadcast(*xs).shape) if xs else out

    return wrapped
