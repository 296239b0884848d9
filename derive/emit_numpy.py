r"""Generated numpy evaluators of derived recursions (``Derivation.numpy_module()``).

The emitted module (template ``templates/evaluator.py.j2``) imports only numpy and scipy.
What it contains is printed from the derivation, not written by hand:

* the recursions of K and Θ on all pairs of inputs, from the derived component forms
  specialised to the activation (:func:`derive.evaluate.specialise`);
* the diagonal recursions of G1 and V (single input, V_{(αα)(αα)}), from the derived
  *contracted* forms Σ_β T_β ⟨∂_β f⟩ with every sample index set equal: each contraction is
  T_αα… Π_k ⟨∂^{r_k} F_k⟩, printed as a derivative of F (smooth σ) or, for σ with kinks, as
  the derivative-free Hermite weight ⟨F He_r(z/√K)⟩/K^{r/2} (THEORY §4);
* every average ⟨f(z1) g(z2)⟩ as a closed form of ``rules/kernels`` where one applies
  (printed inline), else a call of the fixed separable quadrature with precomputed nodes;
* σ and the functions under the averages as numpy code (:class:`NumpyPrinter`).

Off-diagonal G1 and V (multi-input) are not emitted yet: they need the coincidence-pattern
machinery of :mod:`derive.evaluate` (predict still uses it for them).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import sympy as sp
from sympy.core.sorting import default_sort_key
from sympy.printing.numpy import SciPyPrinter

from .errors import DeriveError
from .evaluate import cached_layer_step, specialise
from .gaussian import _PANELS as _GAUSS_PANELS
from .gaussian import _closed_form_plan, _gauss_legendre, one_variable_factors, panel_rule
from .printing import book_latex
from .symbols import DerivativeContraction, GaussianAverage, RandomVar

__all__ = ["numpy_module_source", "NumpyPrinter", "load_generated"]

#: the panels of the two-dimensional rules of derive.gaussian (a boundary at 0 for kinks)
_PANELS = _GAUSS_PANELS[2]
_Z = sp.Symbol("z")


class NumpyPrinter(SciPyPrinter):
    """SciPy/numpy code with elementwise Max/Min/Heaviside (arrays of any shape)."""

    def __init__(self, settings=None):
        super().__init__({"fully_qualified_modules": True, **(settings or {})})

    def _nested(self, fn: str, args) -> str:
        out = self._print(args[0])
        for a in args[1:]:
            out = f"numpy.{fn}({out}, {self._print(a)})"
        return out

    def _print_Max(self, expr) -> str:
        return self._nested("maximum", expr.args)

    def _print_Min(self, expr) -> str:
        return self._nested("minimum", expr.args)

    def _print_Heaviside(self, expr) -> str:
        return f"numpy.heaviside({self._print(expr.args[0])}, 0.5)"

    def _print_Pi(self, expr) -> str:
        return "numpy.pi"


def _rule(points: int) -> tuple[np.ndarray, np.ndarray]:
    return panel_rule(points, _PANELS)


def _hermite_rule(points: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss–Hermite nodes for t ~ N(0, 1), weights normalised to sum 1."""
    t, w = np.polynomial.hermite_e.hermegauss(points)
    return t, w / w.sum()


def _array_text(a: np.ndarray) -> str:
    items = [repr(float(x)) for x in a]
    lines = ["    " + ", ".join(items[k:k + 4]) for k in range(0, len(items), 4)]
    return "[\n" + ",\n".join(lines) + ",\n]"


class _Emitter:
    def __init__(self, act):
        self.act = act
        self.printer = NumpyPrinter()
        self.functions: list[dict] = []
        self.closed: list[dict] = []
        self._by_expr: dict = {}

    def function(self, expr: sp.Expr, what: str) -> str:
        """The name of a generated one-variable function z ↦ expr (deduplicated)."""
        expr = sp.sympify(expr)
        if expr.has(sp.DiracDelta):
            raise DeriveError(f"{expr} holds a Dirac delta; use the derivative-free form")
        key = sp.srepr(expr)
        if key not in self._by_expr:
            name = f"_f{len(self.functions)}"
            self._by_expr[key] = name
            body = self.printer.doprint(expr) if expr.free_symbols else \
                f"numpy.full(numpy.shape(z), {float(expr)!r})"
            self.functions.append({"name": name, "doc": f"z -> {sp.sstr(expr)} ({what})",
                                   "body": body})
        return self._by_expr[key]

    def closed_form(self, body: str, doc: str) -> str:
        """The name of a generated function K ↦ a closed-form average on all pairs."""
        for c in self.closed:
            if c["body"] == body:
                return c["name"]
        name = f"_c{len(self.closed)}"
        self.closed.append({"name": name, "doc": doc, "body": body})
        return name

    def code(self, expr: sp.Expr) -> str:
        return self.printer.doprint(expr)


def _hoist(lines: list[str], name: str, call: str) -> str:
    """Append ``name = call`` unless the same call was made already (common subexpressions are
    computed once); returns the variable holding it."""
    for line in lines:
        var, _, rhs = line.partition(" = ")
        if rhs == call:
            return var
    lines.append(f"{name} = {call}")
    return name


def _factor_by_slot(h: sp.Expr, slots: list) -> list[sp.Expr]:
    """h = Π_k g_k(slot_k) as [g_k(z)]; an error if a factor couples two slots."""
    per = one_variable_factors(h, slots)
    if per is None:
        raise DeriveError(f"the average of {h} does not factor over its samples")
    return [g.xreplace({slots[k]: _Z}) for k, g in enumerate(per)]


def _pair_step(em: _Emitter, expr: sp.Expr, alphas: tuple) -> tuple[list[str], str]:
    """Code lines and result for a recursion on all pairs (α1, α2)."""
    lines, reps = [], {}
    atoms = set()
    walk = sp.preorder_traversal(expr)
    for node in walk:
        if isinstance(node, (GaussianAverage, sp.Indexed)):
            atoms.add(node)
            walk.skip()
    for k, atom in enumerate(sorted(atoms, key=default_sort_key)):
        if isinstance(atom, sp.Indexed):
            label = str(atom.base)
            if label not in ("K", "Theta") or set(atom.indices) != set(alphas[:2]):
                raise DeriveError(f"{atom} cannot be read on pairs of inputs")
            reps[atom] = sp.Symbol(label)
            continue
        slots = sorted({r for r in atom.function.atoms(RandomVar)}, key=default_sort_key)
        if [r.indices[0] for r in slots] != list(alphas[:2]):
            raise DeriveError(f"{atom} is not an average over the pair (α1, α2)")
        f, g = _factor_by_slot(atom.function, slots)
        name = f"avg{k}"
        z1, z2 = sp.symbols("z1 z2")
        plan = _closed_form_plan(f.xreplace({_Z: z1}) * g.xreplace({_Z: z2}), ((z1, 0), (z2, 1)))
        if plan is not None and (plan[2] == (0, 1) or f == g):
            cf, coeff, _, params = plan
            formula = cf.formula.xreplace({sp.Symbol(p): sp.Float(v) for p, v in params})
            fn = em.closed_form(f"{coeff!r} * ({em.code(formula)})",
                                f"<{sp.sstr(f)} | {sp.sstr(g)}> by the closed form {cf.id} "
                                f"({cf.source})")
            name = _hoist(lines, name, f"_closed({fn}, K)")
        else:
            kinked = ", kinked=True" if em.act.kinks else ""
            call = (f"_pair_average({em.function(f, 'first factor')}, "
                    f"{em.function(g, 'second factor')}, K{kinked})")
            name = _hoist(lines, name, call)
        reps[atom] = sp.Symbol(name)
    return lines, em.code(expr.xreplace(reps))


def _diag_step(em: _Emitter, expr: sp.Expr, alphas: tuple, kinked: bool) -> tuple[list[str], str]:
    """Code lines and result for a recursion on the diagonal (all sample indices equal)."""
    a = alphas[0]
    expr = expr.xreplace({x: a for x in alphas})
    lines, reps = [], {}
    atoms = set()
    walk = sp.preorder_traversal(expr)
    for node in walk:
        if isinstance(node, (GaussianAverage, DerivativeContraction, sp.Indexed)):
            atoms.add(node)
            walk.skip()

    def one_variable(f):
        (r,) = {x for x in f.atoms(RandomVar)} or (None,)
        return f.xreplace({r: _Z}) if r is not None else f

    for k, atom in enumerate(sorted(atoms, key=default_sort_key)):
        name = f"avg{k}"
        if isinstance(atom, sp.Indexed):
            label = str(atom.base)
            if label not in ("G1", "V"):
                raise DeriveError(f"{atom} is not read on the diagonal")
            reps[atom] = sp.Symbol(label)
            continue
        if isinstance(atom, GaussianAverage):
            f = one_variable(atom.function)
            call = f"_diag_average({em.function(f, 'under the average')}, Kd)"
            reps[atom] = sp.Symbol(_hoist(lines, name, call))
            continue
        label = str(atom.tensor.base)
        factors = []
        for j, (F, grp) in enumerate(zip(atom.functions, atom.groups)):
            F1 = one_variable(F)
            r = len(grp)
            sub = f"{name}_{j}"
            if kinked:
                call = f"_diag_average({em.function(F1, 'integrated by parts')}, Kd, hermite={r})"
            else:
                call = (f"_diag_average({em.function(sp.diff(F1, _Z, r), f'derivative {r} of {F1}')}"
                        ", Kd)")
            factors.append(sp.Symbol(_hoist(lines, sub, call)))
        reps[atom] = sp.Symbol(label) * sp.Mul(*factors)
    return lines, em.code(expr.xreplace(reps))


def numpy_module_source(d, tol: float = 3e-13) -> str:
    """Source of the standalone evaluator of a :class:`~derive.Derivation` (see module doc)."""
    from .codegen import _version, render

    spec = d.spec
    act = spec.activation
    kinked = bool(act.kinks)
    step = cached_layer_step()
    em = _Emitter(act)
    al = step.alphas
    steps, calls = [], []
    pair_sig = "K, Theta, C_b, C_W, lambda_b, lambda_W"
    diag_sig = "Kd, G1, V, C_W, n_l, n_lm1"
    plan = [("kernel_step", "K", "pair", "The kernel K^{(l+1)} of every pair of inputs."),
            ("ntk_step", "Theta", "pair", "The leading-order NTK mean Theta^{(l+1)} of every pair."),
            ("metric_correction_step", "G1", "diag",
             "The NLO metric correction G1^{(l+1)}_{aa} of each input (diagonal)."),
            ("vertex_step", "V", "diag",
             "The four-point vertex V^{(l+1)}_{(aa)(aa)} of each input (diagonal).")]
    # K and Θ on pairs always (Θ is cheap and shares K's averages), V's diagonal always (the
    # expansion estimate needs it), G1's diagonal when it was derived
    for fname, q, kind, doc in plan:
        if q == "G1" and q not in d.recursions:
            calls.append("if diagonal: G1[l + 1] = numpy.zeros(N)")
            continue
        if kind == "pair":
            lines, result = _pair_step(em, specialise(getattr(step, q), act), al)
            sig = pair_sig
            calls.append(f"{q}[l + 1] = {fname}(K[l], Theta[l], Cb[l], CW[l], lb[l], lW[l])")
        else:
            lines, result = _diag_step(em, specialise(step.contracted[q], act), al, kinked)
            sig = diag_sig
            calls.append(f"if diagonal: {q}[l + 1] = {fname}(Kd, G1[l], V[l], CW[l], n[l], n[l - 1])")
        # the docstring states the form the code implements (the contracted one on the diagonal)
        shown = getattr(step, q) if kind == "pair" else step.contracted[q]
        steps.append({"name": fname, "args": sig, "doc": doc + " Implements, at α1 = α2 = … :"
                      if kind == "diag" else doc + " Implements:",
                      "latex": book_latex(shown), "lines": lines, "result": result})
    em.functions.insert(0, {"name": "sigma", "doc": f"the activation {act.name}",
                            "body": em.printer.doprint(act.expr.xreplace({act.z: _Z}))})
    ladder = [(f"hermite{q}", _hermite_rule(q)) for q in (12, 16, 20, 24, 32)]
    ladder += [(f"panels{q}", _rule(q)) for q in (6, 8, 12, 16, 24)]
    ladder.sort(key=lambda r: len(r[1][0]))
    rules2 = [(name, _array_text(t), _array_text(w)) for name, (t, w) in ladder]
    t1, w1 = _rule(32)
    defaults = {"depth": spec.depth, "widths": list(spec.widths),
                "C_b": [spec.C_b(l) for l in range(1, spec.depth + 1)],
                "C_W": [spec.C_W(l) for l in range(1, spec.depth + 1)],
                "lambda_b": [spec.lambda_b(l) for l in range(1, spec.depth + 1)],
                "lambda_W": [spec.lambda_W(l) for l in range(1, spec.depth + 1)]}
    note = ("closed forms of rules/kernels where they apply, else composite Gauss–Legendre "
            f"(pairs: Gauss–Hermite or panel rules, 12 to 192 nodes per dimension, chosen to reach {tol:g}; {len(t1)} nodes for "
            "single inputs)")
    return render("evaluator.py.j2", activation_name=act.name, version=_version(),
                  activation_repr=repr(sp.sstr(act.expr)), defaults_repr=repr(defaults),
                  rules2=rules2, tol=repr(tol), t1=_array_text(t1), w1=_array_text(w1),
                  panels=_array_text(_PANELS), xq=_array_text(_gauss_legendre(16)[0]),
                  wq=_array_text(_gauss_legendre(16)[1]),
                  kinks="[" + ", ".join(repr(float(c)) for c in act.kinks) + "]",
                  chunk=400, functions=em.functions, closed=em.closed, steps=steps, calls=calls,
                  average_note=note)


@lru_cache(maxsize=16)
def load_generated(spec, targets: tuple = ("K", "Theta")):
    """The generated evaluator of ``spec`` as a module object (cached per spec and targets)."""
    import types

    from .derivation import derive

    order = 1 if any(t in ("G1", "V") for t in targets) else 0
    src = derive(spec, targets=targets, order=order).numpy_module()
    mod = types.ModuleType(f"derive_generated_{abs(hash((spec, targets)))}")
    exec(compile(src, mod.__name__, "exec"), mod.__dict__)  # noqa: S102 - our own generated code
    mod.SOURCE = src
    return mod
