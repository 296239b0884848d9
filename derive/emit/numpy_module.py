r"""Generated numpy evaluators of derived recursions (``Derivation.numpy_module()``).

The emitted module (template ``templates/evaluator.py.j2``) imports only numpy, scipy
and the standard library (threads for the blocks of rows of K and Θ).
What it contains is printed from the derivation, not written by hand:

* the recursions of K and Θ on all pairs of inputs, from the derived component forms
  specialised to the activation (:func:`derive.derivation.specialise.specialise`);
* the diagonal recursions of G1 and V (single input, V_{(αα)(αα)}), from the derived
  *contracted* forms Σ_β T_β ⟨∂_β f⟩ with every sample index set equal: each contraction is
  T_αα… Π_k ⟨∂^{r_k} F_k⟩, printed as a derivative of F (smooth σ) or, for σ with kinks, as
  the derivative-free Hermite weight ⟨F He_r(z/√K)⟩/K^{r/2} (docs/conventions.md §4);
* G1 on all pairs and V on the components whose samples take at most two values p, q
  (V_{(pp)(pq)}, V_{(pp)(qq)}, V_{(pq)(pq)}; :class:`_PairFrame`): the contracted forms at
  each component pattern, the sample sums run over β ∈ {p, q} only (the derivatives vanish
  on samples the averaged functions do not depend on, so these components close on
  themselves), each ⟨∂_β F⟩ a derivative average (smooth σ) or, for σ with kinks, ⟨F H_β⟩
  with the Hermite weight H in y = P z, P the inverse of the pair's kernel;
* when the derivation's targets hold the NTK's O(1/n) statistics (docs/conventions.md §3),
  those and the ones their recursions read (H1 reads D and F, A reads D), the same way:
  each one's diagonal recursion, and H1 on all pairs, A, B, D, F on the components with at
  most two distinct samples — one pattern per orbit of the quantity's *own* index group
  (:data:`derive.algebra.symbols.GROUPS`: "pairs" for V and A, "cross" for B, "within" for D,
  "swap" for F) and p ↔ q (:func:`_orbit_table`); plain components such as Θ_{α1α3} and free
  sample indices of a contraction's tensor (D_{α1α2β1β2}) are read at the pattern's samples,
  single derivatives ⟨∂_β F⟩ by Hermite weights y_β (kinked σ; ⟨z F⟩/K on one variable);
  without NTK targets the module is what it was;
* when the targets hold the O(1/n²) statistics G2, V1, U (an order-2 derivation,
  docs/conventions.md §10; smooth σ only, σ with kinks refused), those the same way, by the
  same mechanism (:func:`_extra_steps`), computed at ``evaluate(order=2)``: each one's
  diagonal, G2 on all pairs, V1 and U on the components with at most two distinct samples
  (U's six indices: group "three_pairs", five orbits with p ↔ q); their contractions sum
  over products of components (G1_{β1β2} V_{(β3β4)(β5β6)} …) and up to eighth derivatives;
* every average ⟨f(z1) g(z2)⟩ as a closed form of ``rules/kernels`` where one applies
  (printed as straight-line code with few temporaries, :mod:`derive.emit.fused`, and for K
  and Θ evaluated in blocks of rows when N is large), exact quadrant moments where f and g
  are polynomials on each half-line, else the separable quadrature with precomputed rules;
  a step's quadratures (pairs, and single inputs) are one call on a group of their
  functions, σ evaluated once per node (:meth:`_Emitter.group`);
* σ and the functions under the averages as numpy code (:class:`NumpyPrinter`).

Four-index components with three or four distinct samples are not emitted (predict
evaluates V, A, B, D, F of N ≥ 3 inputs with :mod:`derive.numeric.evaluate`).
"""
from __future__ import annotations

import inspect
import re
from functools import lru_cache

import numpy as np
import sympy as sp
from sympy.core.sorting import default_sort_key
from sympy.printing.numpy import SciPyPrinter

from ..activations import moments
from ..activations.gaussian import _PANELS as _GAUSS_PANELS
from ..activations.gaussian import (_classify, _closed_form_plan, _half_line_polynomials,
                                    separable_terms)
from ..algebra.symbols import (GROUPS, DerivativeContraction, GaussianAverage, RandomVar,
                               sample_indices)
from ..algebra.nearly_gaussian import cached_derivative
from ..base.errors import DeriveError
from ..base.parsing import as_expr
from ..derivation.quantities import ALL_QUANTITIES, quantity
from ..derivation.specialise import specialise
from .fused import fused_lines
from .printing import book_latex

__all__ = ["numpy_module_source", "NumpyPrinter"]

#: the panels of the two-dimensional rules of derive.activations.gaussian (a boundary at 0 for kinks)
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

    def _print_Pow(self, expr, rational=False) -> str:
        # small integer powers of a variable as products: numpy's ** 3, ** 4 go through pow(),
        # several times slower on large arrays (** 2 has its own fast path)
        if expr.base.is_Symbol and expr.exp.is_Integer and 3 <= int(expr.exp) <= 4:
            base = self._print(expr.base)
            return "(" + "*".join([base] * int(expr.exp)) + ")"
        if expr.exp == 4:  # of anything else: the base evaluated once, squared twice
            return f"numpy.square(numpy.square({self._print(expr.base)}))"
        return super()._print_Pow(expr, rational=rational)


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
        #: name of a generated function -> its expression (for the grouped functions)
        self.exprs: dict = {}
        #: print new functions with their common subexpressions computed once (the NTK's
        #: statistics: high derivatives of σ'σ', tanh(z) many times in one polynomial)
        self.cse = False
        #: the highest power of z in the averages by exact quadrant moments (_moment_average);
        #: None when there are none
        self.moments = None
        #: when set, pair averages of functions with more operations than this are not
        #: classified for a closed form of rules/kernels (quadrature instead): the O(1/n²)
        #: steps average up to eighth derivatives of σ's products, whose classification
        #: (simplification of every factor) took most of the generation time
        self.closed_ops = None

    def uses_moments(self, *polys: tuple) -> None:
        """Record averages by exact moments of the polynomials ``polys`` (coefficient tuples)."""
        self.moments = max(self.moments or 0, *(len(c) - 1 for c in polys))

    def function(self, expr: sp.Expr, what: str) -> str:
        """The name of a generated one-variable function z ↦ expr (deduplicated)."""
        expr = as_expr(expr)
        if expr.has(sp.DiracDelta):
            raise DeriveError(f"{expr} holds a Dirac delta; use the derivative-free form")
        key = sp.srepr(expr)
        if key not in self._by_expr:
            name = f"_f{len(self.functions)}"
            self._by_expr[key] = name
            lines = []
            if not expr.free_symbols:
                body = f"numpy.full(numpy.shape(z), {float(expr)!r})"
            elif self.cse:
                reps, (reduced,) = sp.cse(expr, symbols=sp.numbered_symbols("t"))
                lines = [f"{t} = {self.printer.doprint(e)}" for t, e in reps]
                body = self.printer.doprint(reduced)
            else:
                body = self.printer.doprint(expr)
            self.functions.append({"name": name, "doc": f"z -> {sp.sstr(expr)} ({what})",
                                   "lines": lines, "body": body})
            self.exprs[name] = expr
        return self._by_expr[key]

    def group(self, names: list[str]) -> str:
        """The name of a generated function z ↦ (f_1(z), f_2(z), …) of the functions ``names``
        (generated by :meth:`function`), their common subexpressions computed once: the
        averages of one step are taken on one grid, where σ(z) and its exponentials are then
        evaluated once per node instead of once per function."""
        key = ("group", *names)
        if key not in self._by_expr:
            name = f"_g{sum(1 for f in self.functions if f['name'].startswith('_g'))}"
            self._by_expr[key] = name
            reps, reduced = sp.cse([self.exprs[n] for n in names],
                                   symbols=sp.numbered_symbols("t"))
            lines = [f"{t} = {self.printer.doprint(e)}" for t, e in reps]
            # a constant function is a full array, as in function()
            body = ", ".join(self.printer.doprint(e) if e.free_symbols else
                             f"numpy.full(numpy.shape(z), {float(e)!r})" for e in reduced)
            shown = ", ".join(sp.sstr(self.exprs[n]) for n in names)
            self.functions.append({"name": name, "doc": f"z -> ({shown}), computed together",
                                   "lines": lines, "body": f"({body},)"})
        return self._by_expr[key]

    def closed_form(self, formula: sp.Expr, doc: str) -> str:
        """The name of a generated function K ↦ a closed-form average on all pairs: the
        formula in K11 = K_pp, K22 = K_qq (broadcasting vectors), K12 = K_pq and the per-layer
        scale, rho, theta (N × N), printed as statements with few temporaries
        (:func:`~derive.emit.fused.fused_lines`)."""
        matrices = {sp.Symbol(x) for x in ("K12", "scale", "rho", "theta")}
        lines, result = fused_lines(self.printer, formula, matrices, "_t")
        if not formula.free_symbols & matrices:  # a full array all the same
            result = f"numpy.broadcast_to({result}, K.shape)"
        body = "\n".join(lines + [result])
        for c in self.closed:
            if c["body"] == body:
                return c["name"]
        name = f"_c{len(self.closed)}"
        self.closed.append({"name": name, "doc": doc, "body": body, "lines": lines,
                            "result": result})
        return name

    def code(self, expr: sp.Expr) -> str:
        return self.printer.doprint(expr)


def _hoist(lines: list[str], name: str, call: str) -> str:
    """Append ``name = call`` unless the same call was made already (common subexpressions are
    computed once); returns the variable holding it."""
    for line in lines:
        var, _, rhs = line.partition(" = ")
        if rhs == call and not var.startswith("_t"):  # _t…: temporaries worked on in place
            return var
    lines.append(f"{name} = {call}")
    return name


def _terms_by_slot(h: sp.Expr, slots: list) -> list[list[sp.Expr]]:
    """h = Σ_k Π_j g_kj(slot_j) as [[g_kj(z)]] (:func:`derive.activations.gaussian.separable_terms`); an
    error if a term couples two slots."""
    rows = separable_terms(h, slots)
    if rows is None:
        raise DeriveError(f"the average of {h} does not split into products of functions of one "
                          "sample each; the generated evaluator cannot compute it")
    return [[g.xreplace({slots[k]: _Z}) for k, g in enumerate(per)] for per in rows]


def _emit_separable_average(em: "_Emitter", lines: list[str], name: str, h: sp.Expr, slots: list,
                            kinked: bool) -> str:
    """Hoist ⟨h(z_p, z_q)⟩ on all pairs as the sum of the pair averages of its separable
    terms; returns the variable holding it."""
    terms = _terms_by_slot(h, slots)
    if len(terms) == 1:
        return _emit_pair_average(em, lines, name, *terms[0], kinked)
    parts = [_emit_pair_average(em, lines, f"{name}_{k}", f, g, kinked)
             for k, (f, g) in enumerate(terms)]
    return _hoist(lines, name, " + ".join(parts))


@lru_cache(maxsize=1024)
def _may_have_closed_form(f: sp.Expr) -> bool:
    """False when a factor of the one-variable f is none of the functions of rules/kernels
    (its base classified once, whatever it is multiplied with): then no product with f has a
    closed form, and the classification of the product, which simplifies every factor
    again, is skipped."""
    for part in sp.Mul.make_args(sp.expand_power_exp(f)):
        if part.is_number:
            continue
        base, exp = part.args if isinstance(part, sp.Pow) else (part, sp.S.One)
        if not (exp.is_Integer and exp > 0) or len(base.free_symbols) != 1:
            return False
        if _classify_base(base) is None:
            return False
    return True


@lru_cache(maxsize=1024)
def _classify_base(base: sp.Expr):
    (var,) = base.free_symbols
    return _classify(base, var)


@lru_cache(maxsize=1024)
def _piecewise_polynomial(f: sp.Expr):
    """((P₊), (P₋)): the coefficients (lowest degree first, as floats) of the polynomials that
    the one-variable ``f`` (of z) equals for z > 0 and for z < 0, when it is a polynomial on
    each half-line — σ of the scale-invariant family (ReLU, leaky ReLU, linear: a kink at 0
    only) and products of such σ, their derivatives and polynomials; else None (a kink
    elsewhere, or any other function).  The batched route's decomposition
    (:func:`derive.activations.gaussian._half_line_polynomials`), so both routes take the
    same averages as exact moments."""
    return _half_line_polynomials(f, _Z)


def _diag_call(em: _Emitter, f: sp.Expr, what: str, hermite: int = 0) -> str:
    """The call computing ⟨f(z) He_r(z/√K)⟩ / K^{r/2} (r = ``hermite``) for every input:
    exact half-line moments when f is a polynomial on each half-line, else the quadrature."""
    pf = _piecewise_polynomial(f)
    if pf is not None:
        em.uses_moments(*pf)
        return f"_diag_moment_average({pf!r}, Kd{f', hermite={hermite}' if hermite else ''})"
    return f"_diag_average({em.function(f, what)}, Kd{f', hermite={hermite}' if hermite else ''})"


#: a hoisted single-input quadrature: ``var = _diag_average(_fK, Kd[, hermite=r])[suffix]``
_DIAG_LINE = re.compile(r"^(\w+) = _diag_average\((_f\d+), Kd(?:, hermite=(\d))?\)(.*)$")


def _group_diag_averages(em: _Emitter, lines: list[str]) -> list[str]:
    """A step's single-input quadratures as one call: ``_diag_averages`` of the generated group
    of their functions (:meth:`_Emitter.group`), on one grid, σ evaluated once per node; the
    lines then read its results.  Steps with fewer than two such lines are returned as is."""
    found = [(k, m) for k, line in enumerate(lines) if (m := _DIAG_LINE.match(line))]
    if len(found) < 2:
        return lines
    names = list(dict.fromkeys(m.group(2) for _, m in found))
    # one result per distinct (function, weight); the lines read it (with their suffix)
    items = list(dict.fromkeys((names.index(m.group(2)), int(m.group(3) or 0))
                               for _, m in found))
    targets = [f"_d{j}" for j in range(len(items))]
    reads = []
    for _, m in found:
        j = items.index((names.index(m.group(2)), int(m.group(3) or 0)))
        reads.append(f"{m.group(1)} = {targets[j]}{m.group(4)}")
    call = (f"{', '.join(targets)}, = _diag_averages({em.group(names)}, Kd, "
            f"{tuple(items)!r})")
    first = found[0][0]
    drop = {k for k, _ in found}
    return ([line for k, line in enumerate(lines[:first]) if k not in drop] + [call] + reads
            + [line for k, line in enumerate(lines) if k > first and k not in drop])


def _emit_pair_average(em: _Emitter, lines: list[str], name: str, f: sp.Expr, g: sp.Expr,
                       kinked: bool) -> str:
    """Hoist ⟨f(z_p) g(z_q)⟩ on all pairs (N, N): a closed form of rules/kernels where one
    applies, else the pair quadrature; returns the variable holding it."""
    z1, z2 = sp.symbols("z1 z2")
    plan = None
    if em.closed_ops is not None and max(sp.count_ops(f), sp.count_ops(g)) > em.closed_ops:
        pass  # (a high derivative of σ: no closed form is looked for, see _Emitter.closed_ops)
    elif _may_have_closed_form(f) and _may_have_closed_form(g):
        plan = _closed_form_plan(f.xreplace({_Z: z1}) * g.xreplace({_Z: z2}), ((z1, 0), (z2, 1)))
    if plan is not None and (plan[2] == (0, 1) or f == g):
        cf, coeff, _, params = plan
        formula = cf.formula.xreplace({sp.Symbol(p): sp.Integer(int(v)) if float(v).is_integer()
                                       else sp.Float(v) for p, v in params})
        # θ = acos(ρ): cos θ → ρ and sin θ → sqrt(1 − ρ²) (SymPy does it on construction);
        # numpy's cos/sin cost several times an arccos or a sqrt
        theta, rho = sp.Symbol("theta"), sp.Symbol("rho")
        formula = formula.xreplace({theta: sp.acos(rho)}).xreplace({sp.acos(rho): theta})
        K11, K22 = sp.Symbol("K11"), sp.Symbol("K22")
        formula = formula.xreplace({sp.sqrt(K11 * K22): sp.Symbol("scale")})  # shared per layer
        # the variances are positive: a square root of their product splits into vectors
        formula = formula.xreplace({K11: sp.Symbol("K11", positive=True),
                                    K22: sp.Symbol("K22", positive=True)})
        fn = em.closed_form(formula if coeff == 1 else sp.Float(coeff, 17) * formula,
                            f"<{sp.sstr(f)} | {sp.sstr(g)}> by the closed form {cf.id} "
                            f"({cf.source})")
        return _hoist(lines, name, f"_closed({fn}, K)")
    pf, pg = _piecewise_polynomial(f), _piecewise_polynomial(g)
    if pf is not None and pg is not None:  # σ of the scale-invariant family: exact moments
        em.uses_moments(*pf, *pg)
        return _hoist(lines, name, f"_moment_average({pf!r}, {pg!r}, K)")
    flag = ", kinked=True" if kinked else ""
    return _hoist(lines, name, f"_pair_average({em.function(f, 'first factor')}, "
                               f"{em.function(g, 'second factor')}, K{flag})")


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
        reps[atom] = sp.Symbol(_emit_separable_average(em, lines, f"avg{k}", atom.function,
                                                       slots, bool(em.act.kinks)))
    # K, Θ and the pair averages are N × N; the rest are scalars
    fused, result = fused_lines(em.printer, expr.xreplace(reps), set(reps.values()), "_t")
    return lines + fused, result


# ---------------------------------------------------------------------------------------------
# G1 and V on pairs of inputs: the components whose samples take at most two values p, q
# ---------------------------------------------------------------------------------------------

#: the two sample variables of a pair frame: z0 = z_p (array axis 0), z1 = z_q (axis 1)
_PZ = sp.symbols("z0 z1")
#: entries of the inverse of the pair's kernel [[K_pp, K_pq], [K_pq, K_qq]] (kinked σ)
_P = {(0, 0): sp.Symbol("P00"), (0, 1): sp.Symbol("P01"), (1, 0): sp.Symbol("P01"),
      (1, 1): sp.Symbol("P11")}


def _hermite_weight(idx: tuple) -> sp.Expr:
    """The weight H with ⟨∂_{i1}…∂_{ir} F⟩ = ⟨F H⟩ over N(0, P⁻¹) (Gaussian integration by
    parts, docs/conventions.md §4): y_i for r = 1, y_i y_j − P_ij for r = 2, its fourth-order
    analogue for r = 4; y = P z."""
    y = [sum(_P[i, c] * _PZ[c] for c in (0, 1)) for i in (0, 1)]
    if len(idx) == 1:
        return y[idx[0]]
    if len(idx) == 2:
        i, j = idx
        return y[i] * y[j] - _P[i, j]
    if len(idx) == 4:
        i, j, k, l = idx
        pairs = (((i, j), (k, l)), ((i, k), (j, l)), ((i, l), (j, k)))
        yy = sum(_P[a] * y[b[0]] * y[b[1]] + _P[b] * y[a[0]] * y[a[1]] for a, b in pairs)
        pp = sum(_P[a] * _P[b] for a, b in pairs)
        return y[i] * y[j] * y[k] * y[l] - yy + pp
    raise DeriveError(f"integration by parts is implemented for 1, 2 and 4 derivatives, got "
                      f"{len(idx)}")


class _PairFrame:
    """Emits the code of one component pattern of a recursion on pairs: sample slots mapped
    to p (0) or q (1), averages as (N, N) arrays (one-variable ones broadcast from the
    diagonal), sample sums run over β ∈ {p, q} (the derivatives vanish elsewhere)."""

    def __init__(self, em: _Emitter, kinked: bool):
        self.em, self.kinked = em, kinked
        self.lines: list[str] = []
        self.memo: dict = {}
        #: the one-variable averages (a column or a row, broadcast against the N × N arrays)
        self.vectors: set = set()

    def _name(self, stem: str) -> str:
        return f"{stem}{len(self.lines)}"

    def average(self, h: sp.Expr, hermite: int = 0) -> sp.Symbol:
        """⟨h(z0, z1)⟩ (with ``hermite`` r: of h He_r, h depending on one variable only)."""
        key = (sp.srepr(h), hermite)
        if key in self.memo:
            return self.memo[key]
        dep = [k for k, v in enumerate(_PZ) if h.has(v)]
        if not dep:
            out = sp.Float(float(h)) if not hermite else sp.S.Zero
        elif len(dep) == 1:
            (k,) = dep
            call = _diag_call(self.em, h.xreplace({_PZ[k]: _Z}), "under the average", hermite)
            call += "[:, None]" if k == 0 else "[None, :]"
            out = sp.Symbol(_hoist(self.lines, self._name("a"), call))
            self.vectors.add(out)
        else:
            out = sp.Symbol(_emit_separable_average(self.em, self.lines, self._name("a"), h,
                                                    list(_PZ), self.kinked))
        self.memo[key] = out
        return out

    def derivative(self, F: sp.Expr, idx: tuple) -> sp.Expr:
        """⟨∂_{idx} F(z0, z1)⟩ (idx: 0 for ∂/∂z_p, 1 for ∂/∂z_q)."""
        idx = tuple(sorted(idx))
        if any(not F.has(_PZ[i]) for i in idx):
            return sp.S.Zero
        key = (sp.srepr(F), idx)
        if key in self.memo:
            return self.memo[key]
        dep = [k for k, v in enumerate(_PZ) if F.has(v)]
        if not self.kinked:
            out = self.average(cached_derivative(F, tuple(_PZ[i] for i in idx)))
        elif len(dep) == 1 and len(idx) == 1:  # ⟨∂F⟩ = ⟨z F⟩ / K over one variable
            (k,) = dep
            avg = self.average(F * _PZ[k])
            out = sp.Symbol(_hoist(self.lines, self._name("d"),
                                   f"{avg} / Kd{'[:, None]' if k == 0 else '[None, :]'}"))
        elif len(dep) == 1:
            out = self.average(F, hermite=len(idx))
        else:
            H = sp.Poly(sp.expand(_hermite_weight(idx)), *_PZ)
            terms = [self._powers(c) * self.average(F * _PZ[0] ** i * _PZ[1] ** j)
                     for (i, j), c in sorted(H.terms())]
            out = sp.Symbol(self._fused(sp.Add(*terms), self._name("d")))
        self.memo[key] = out
        return out

    def _powers(self, c: sp.Expr) -> sp.Expr:
        """The polynomial ``c`` in the pair's inverse kernel P00, P01, P11 with each monomial
        of degree ≥ 2 a hoisted array (:meth:`_monomial`: the weights of the fourth
        derivatives repeat them in every term)."""
        syms = (_P[0, 0], _P[0, 1], _P[1, 1])
        return sp.Add(*(coeff * self._monomial(exps)
                        for exps, coeff in sp.Poly(c, *syms).terms()))

    def _monomial(self, exps: tuple) -> sp.Expr:
        """P00^a P01^b P11^c as an array computed once per step (``P00_2_P01_1 = P00_2 * P01``:
        one product from the monomial of one degree less)."""
        syms = (_P[0, 0], _P[0, 1], _P[1, 1])
        if sum(exps) < 2:
            return sp.Mul(*(x ** e for x, e in zip(syms, exps)))
        i = next(k for k, e in enumerate(exps) if e)
        lower = tuple(e - (k == i) for k, e in enumerate(exps))
        name = "_".join(f"{x}_{e}" for x, e in zip(syms, exps) if e)
        return sp.Symbol(_hoist(self.lines, name, f"{self._monomial(lower)} * {syms[i]}"))

    def component(self, label: str, comp: tuple) -> sp.Symbol:
        """The previous layer's component of ``label`` with samples (p, q)[comp[0]], … (an
        (N, N) array read from the argument ``{label}P``)."""
        return sp.Symbol(_hoist(self.lines, f"{label}_{''.join(map(str, comp))}",
                                f"{label}P[{', '.join(map(str, comp))}]"))

    def contraction(self, node: DerivativeContraction, slot: dict) -> sp.Expr:
        """Σ_{β ∈ {p, q}^r} T_β Π_k ⟨∂_{β ∈ B_k} F_k⟩ as a sum over the 2^r assignments of the
        summed indices (T's free sample indices, if any, at the component's samples)."""
        from itertools import product

        factors = _components(node.tensor)
        summed = {b for grp in node.groups for b in grp}
        dummies = tuple(dict.fromkeys(i for x in factors for i in x.indices if i in summed))
        fs = [F.xreplace({r: _PZ[slot[r.indices[0]]] for r in F.atoms(RandomVar)})
              for F in node.functions]
        terms = []  # (added at once: a growing sum rebuilt at each of up to 2^8 terms is slow)
        for assign in product((0, 1), repeat=len(dummies)):
            val = dict(zip(dummies, assign))
            term = sp.S.One
            for F, grp in zip(fs, node.groups):
                term *= self.derivative(F, tuple(val[b] for b in grp))
                if term == 0:
                    break
            if term != 0:
                for x in factors:  # T's component (a product's: each factor's) at β
                    comp = tuple(val[i] if i in val else slot[i] for i in x.indices)
                    term *= self.component(str(x.base), comp)
                terms.append(term)
        return sp.Add(*terms)

    def step(self, expr: sp.Expr, alphas: tuple, pattern: tuple) -> str:
        """The code of ``expr`` at the component α_i ↦ (p, q)[pattern[i]]; returns the result."""
        slot = {a: pattern[k] for k, a in enumerate(alphas[:len(pattern)])}
        reps = {}
        walk = sp.preorder_traversal(expr)
        for node in walk:
            if isinstance(node, GaussianAverage):
                h = node.function.xreplace({r: _PZ[slot[r.indices[0]]]
                                            for r in node.function.atoms(RandomVar)})
                reps[node] = self.average(h)
                walk.skip()
            elif isinstance(node, DerivativeContraction):
                reps[node] = self.contraction(node, slot)
                walk.skip()
            elif isinstance(node, sp.Indexed):  # a component of the previous layer's tensor
                if any(i not in slot for i in node.indices):
                    raise DeriveError(f"{node} is not read on pairs of inputs")
                reps[node] = self.component(str(node.base), tuple(slot[i] for i in node.indices))
                walk.skip()
        out = expr.xreplace(reps)
        # one product per distinct derivative array: Σ_β V_β d_β with many β sharing one d
        shared = sorted((x for x in out.free_symbols if str(x).startswith("d")), key=str)
        if shared:  # (each coefficient with its scalar factor taken out of the sum)
            parts = sp.collect(sp.expand(out), shared, evaluate=False)
            out = sp.Add(*(d * sp.factor_terms(c) for d, c in
                           sorted(parts.items(), key=lambda dc: default_sort_key(dc[0]))))
        return self._fused(out)

    def _fused(self, expr: sp.Expr, name: str | None = None) -> str:
        """Append the lines computing ``expr`` with few temporaries (the scalar factors of each
        product folded first; :func:`~derive.emit.fused.fused_lines`); returns the variable
        holding it (``name`` when given)."""
        matrices = {x for x in expr.free_symbols if x not in self.vectors
                    and str(x) not in _SCALAR_VALUES and not re.fullmatch(r"s\d+", str(x))}
        lines, result = fused_lines(self.em.printer, expr, matrices, f"_t{len(self.lines)}_")
        self.lines.extend(lines)
        if name is not None:
            self.lines.append(f"{name} = {result}")
            return name
        return result


#: the permutations of the sample indices under which each symmetry keeps a quantity
#: (docs/conventions.md §3: "sym" for the rank-2 ones, derive.algebra.symbols.GROUPS for V, A,
#: B, D, F)
_PERMUTATIONS = {"sym": ((0, 1), (1, 0)), **GROUPS}


def _pair_patterns(symmetry: str) -> list[tuple]:
    """Representatives of the component patterns in {0, 1}^rank with both samples present,
    up to the index symmetries ``symmetry`` of the quantity and the exchange p ↔ q (a
    transpose)."""
    return sorted({rep for rep, _ in _orbit_table(symmetry).values()})


def _pattern_text(pat: tuple, symmetry: str = "pairs") -> str:
    x = ["p" if v == 0 else "q" for v in pat]
    if symmetry == "pairs":
        return f"({x[0]}{x[1]})({x[2]}{x[3]})"
    if symmetry == "three_pairs":
        return f"({x[0]}{x[1]})({x[2]}{x[3]})({x[4]}{x[5]})"
    return "".join(x)


def _symmetry_images(pat: tuple, symmetry: str) -> list[tuple]:
    """Images of a pattern under the index symmetries ``symmetry`` (:data:`_PERMUTATIONS`)."""
    return [tuple(pat[k] for k in perm) for perm in _PERMUTATIONS[symmetry]]


def _orbit_table(symmetry: str) -> dict:
    """pattern → (representative, transposed) for every pattern of {0, 1}^rank with both
    0 and 1 in it: the component equals the representative's array (transposed if flagged)."""
    from itertools import product

    table = {}
    for pat in product((0, 1), repeat=len(_PERMUTATIONS[symmetry][0])):
        if len(set(pat)) < 2:
            continue
        cands = [(img, False) for img in _symmetry_images(pat, symmetry)]
        cands += [(tuple(1 - v for v in img), True) for img in _symmetry_images(pat, symmetry)]
        rep, transposed = min(cands)
        table[pat] = (rep, transposed)
    return table


def _components(T: sp.Expr) -> tuple:
    """The components of a contraction's tensor: T itself, or the factors of a product of
    components (the O(1/n²) forms: G1_{β1β2} V_{(β3β4)(β5β6)} …)."""
    return tuple(T.args) if isinstance(T, sp.Mul) else (T,)


def _diag_step(em: _Emitter, expr: sp.Expr, alphas: tuple, kinked: bool,
               tensors: tuple = ("G1", "V")) -> tuple[list[str], str]:
    """Code lines and result for a recursion on the diagonal (all sample indices equal); the
    previous layer's ``tensors`` are read as their diagonals (arguments named by label)."""
    a = alphas[0]
    # a contraction's free tensor indices (D_{α1α2β1β2}) are renamed apart first: it may not
    # hold one index twice, and on the diagonal the tensor is read as its diagonal anyway
    apart = dict(zip(alphas, sample_indices("gamma1 gamma2 gamma3 gamma4")))

    def free_apart(node):
        summed = {b for grp in node.groups for b in grp}
        if all(i in summed for x in _components(node.tensor) for i in x.indices):
            return node
        return DerivativeContraction(node.tensor.xreplace(apart), node.functions, node.groups,
                                     node.kernel)

    expr = expr.replace(lambda x: isinstance(x, DerivativeContraction), free_apart)
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
            if label not in tensors:
                raise DeriveError(f"{atom} is not read on the diagonal")
            reps[atom] = sp.Symbol(label)
            continue
        if isinstance(atom, GaussianAverage):
            f = one_variable(atom.function)
            call = _diag_call(em, f, "under the average")
            reps[atom] = sp.Symbol(_hoist(lines, name, call))
            continue
        factors = []
        for j, (F, grp) in enumerate(zip(atom.functions, atom.groups)):
            F1 = one_variable(F)
            r = len(grp)
            sub = f"{name}_{j}"
            if kinked and r == 1:  # ⟨F'⟩ = ⟨z F⟩ / K
                call = _diag_call(em, _Z * F1, "z times, integrated by parts") + " / Kd"
            elif kinked:
                call = _diag_call(em, F1, "integrated by parts", r)
            else:
                call = _diag_call(em, cached_derivative(F1, (_Z,) * r), f"derivative {r} of {F1}")
            factors.append(sp.Symbol(_hoist(lines, sub, call)))
        # T's diagonal (a product's: its factors' diagonals)
        tensor = sp.Mul(*(sp.Symbol(str(x.base)) for x in _components(atom.tensor)))
        reps[atom] = tensor * sp.Mul(*factors)
    return lines, em.code(expr.xreplace(reps))


# ---------------------------------------------------------------------------------------------
# the statistics beside K, Θ, G1, V that the targets need: the NTK's O(1/n) statistics H1, A,
# B, D, F and the O(1/n²) statistics G2, V1, U, the rank-2 ones on all pairs, the others on
# the components with ≤ 2 samples
# ---------------------------------------------------------------------------------------------

#: the NTK's O(1/n) statistics (docs/conventions.md §3) → the stem of their step functions
NTK_STEPS = {"H1": "ntk_mean_correction", "A": "ntk_variance_a", "B": "ntk_variance_b",
             "D": "ntk_cross_d", "F": "ntk_cross_f"}
#: the O(1/n²) statistics (docs/conventions.md §10) → the stem of their step functions
NNLO_STEPS = {"G2": "metric_correction_2", "V1": "vertex_correction", "U": "six_point_vertex"}
#: the most operations (sympy's count_ops) of a function of an O(1/n²) step's pair average
#: that is classified for a closed form (:attr:`_Emitter.closed_ops`)
_NNLO_CLOSED_OPS = 24
#: the dNTK's and ddNTKs' O(1/n) statistics (docs/conventions.md §3) → the stem of their step
#: functions
TANGENT_STEPS = {"P": "dntk_cross_p", "Q": "dntk_cross_q", "R": "ddntk_mean_r",
                 "S": "ddntk_mean_s", "T": "ddntk_mean_t", "Udd": "ddntk_mean_udd"}
#: every statistic computed by the shared mechanism of :func:`_extra_steps`
EXTRA_STEPS = {**NTK_STEPS, **NNLO_STEPS, **TANGENT_STEPS}
#: evaluate()'s per-layer values of the scalars of a step (layer l → l + 1)
_SCALAR_VALUES = {"C_b": "Cb[l]", "C_W": "CW[l]", "lambda_b": "lb[l]", "lambda_W": "lW[l]",
                  "n_l": "n[l]", "n_lm1": "n[l - 1]"}


def _tensors_read(expr: sp.Expr) -> list[str]:
    """The labels of the previous layer's quantities a form reads (in the order of
    :data:`~derive.derivation.quantities.QUANTITIES`, then the O(1/n²) ones)."""
    labels = {str(t.base) for t in expr.atoms(sp.Indexed)}
    return [q.name for q in ALL_QUANTITIES if q.name in labels]


def _extra_steps(d, step, em: _Emitter, local, steps: list, kinked: bool, rename: dict,
                 extra: list) -> dict | None:
    """Append the steps of the statistics beside K, Θ, G1 and V that the targets of ``d``
    need — the NTK's O(1/n) statistics (:data:`NTK_STEPS`) and the O(1/n²) ones
    (:data:`NNLO_STEPS`), with those their recursions read — to ``steps``: each one's diagonal
    and its pair components, printed from the derived contracted forms of ``step``; returns
    what the template prints into ``evaluate`` (None without any).  The O(1/n²) steps are
    evaluated only at evaluate(order ≥ 2) (their ``order``); their forms hold up to eighth
    derivatives of σ, taken for smooth σ only."""
    need = {t for t in d.targets if t in EXTRA_STEPS}
    if not need:
        return None
    if kinked and need & set(NNLO_STEPS):
        raise DeriveError(f"the O(1/n²) statistics {', '.join(sorted(need & set(NNLO_STEPS)))} "
                          f"are evaluated for smooth σ only: their recursions hold averages of up "
                          f"to eighth derivatives of σ, which for {em.act.name!r:.60} (it has "
                          "kinks) are distributions; derive to order ≤ 1, or use a smooth σ "
                          "(tanh, erf, gelu, swish, …)")
    em.cse = True
    if "V" not in step.recursions:  # derive() always carries V where the O(1/n) closure exists
        raise DeriveError("the statistics beyond V are computed beside V, which is not "
                          "derived here (internal error)")
    grow = True
    while grow:  # the statistics the targets' recursions read
        more = {t for q in need for t in _tensors_read(step.contracted[q]) if t in EXTRA_STEPS}
        grow = not more <= need
        need |= more
    names = [q.name for q in ALL_QUANTITIES if q.name in need]
    if need & {"H1", *NNLO_STEPS} and "G1" not in d.recursions:
        raise DeriveError("H1, G2, V1 and U read G1, which is not derived here (internal error)")
    scalar_values = {**_SCALAR_VALUES, **{e: f"{e}[l]" for e in extra}}
    # evaluate()'s names of layer l's values: diagonals, and the pair components (G1P, VP are
    # _pair_tensors'; the others are assembled once per layer, see pair_inputs)
    diag_args = {"G1": "G1d", "V": "V[l]"}
    diag_args.update({n: f"{n}d" for n in ("Theta", *names) if quantity(n).rank == 2})
    diag_args.update({n: f"{n}[l]" for n in names if quantity(n).rank >= 4})
    pair_args = {"G1": "G1P", "V": "VP"}
    pair_inputs, out = [], []
    for name in names:
        q = quantity(name)
        if name in NNLO_STEPS:
            em.closed_ops = _NNLO_CLOSED_OPS
        expr = local(step.contracted[name])
        labels = _tensors_read(expr)
        used = {str(x) for x in expr.atoms(sp.Symbol)}
        scalars = [str(rename.get(x, x)) for x in step.scalars if str(rename.get(x, x)) in used]
        values = [scalar_values[x] for x in scalars]
        shown = book_latex(step.contracted[name].xreplace(rename))
        what = f"{q.title} {name}^{{(l+1)}}"
        # on the diagonal: the single-input form (all sample indices equal)
        lines, result = _diag_step(em, expr, step.alphas, kinked, tensors=tuple(labels))
        diag_fn = EXTRA_STEPS[name] + "_step"
        steps.append({"name": diag_fn, "args": ", ".join(["Kd", *labels, *scalars]),
                      "doc": f"{what} of each input (diagonal, from the diagonals of the previous "
                      "layer's quantities). Implements, at α1 = α2 = … :",
                      "latex": shown, "lines": lines, "result": result})
        # on pairs: one component pattern per orbit of the quantity's symmetries and p ↔ q
        frame = _PairFrame(em, kinked)
        patterns = _pair_patterns(q.symmetry)
        results = []
        for pat in patterns:
            var = f"{name}_{''.join(map(str, pat))}_next"
            frame.lines.append(f"{var} = {frame.step(expr, step.alphas, pat)}")
            results.append(var)
        head = ["Kd = numpy.diagonal(K)"] + (["P00, P01, P11 = _pair_inverse(K)"] if kinked else [])
        pair_fn = EXTRA_STEPS[name] + "_pairs"
        comps = "" if q.rank == 2 else " at the components " + ", ".join(
            _pattern_text(p, q.symmetry) for p in patterns) + " (samples (p, q)[a], …)"
        steps.append({"name": pair_fn, "args": ", ".join(["K", *(f"{t}P" for t in labels),
                                                          *scalars]),
                      "doc": f"{what}{comps} of every pair. {', '.join(f'{t}P' for t in labels)} "
                      "hold the previous layer's components with samples (p, q)[a], … (see "
                      "_pair_matrix, _pair_tensor); the sample sums run over β ∈ {p, q}"
                      + (", by Gaussian integration by parts (P = the pair's inverse kernel)"
                         if kinked else "") + ". Implements:",
                      "latex": shown, "lines": head + frame.lines,
                      # always a tuple for a four- or six-index quantity (zipped with its
                      # ORBITS)
                      "result": ", ".join(results) + ("," if len(results) == 1 and q.rank >= 4
                                                      else "")})
        for t in labels:
            if t not in pair_args:
                pair_args[t] = f"{t}P"
                pair_inputs.append((f"{t}P", f"_pair_matrix({t}[l])" if quantity(t).rank == 2 else
                                    f'_pair_tensor({t}[l], {t}_pairs[l], ORBIT_TABLES["{t}"])'))
        diag_call = ", ".join(["Kd", *(diag_args[t] for t in labels), *values])
        pair_call = ", ".join(["K[l]", *(pair_args[t] for t in labels), *values])
        out.append({"name": name, "rank": q.rank, "var": name.lower(),
                    # evaluate(order=…) from which on it is computed (zeros below)
                    "order": 2 if name in NNLO_STEPS else 1,
                    "diag_call": f"{diag_fn}({diag_call})", "pair_call": f"{pair_fn}({pair_call})"})
    tables = {name: {pat: ("".join(map(str, rep)), flag)
                     for pat, (rep, flag) in sorted(_orbit_table(quantity(name).symmetry).items())}
              for name in names if quantity(name).rank >= 4}
    orbits = {name: ["".join(map(str, p)) for p in _pair_patterns(quantity(name).symmetry)]
              for name in tables}
    ntk = [n for n in names if n in NTK_STEPS]
    return {"names": names, "two": [n for n in names if n not in tables], "four": list(tables),
            "steps": out, "pair_inputs": pair_inputs, "orbits": repr(orbits),
            "tables": repr(tables),
            # the NTK's statistics and the O(1/n²) ones apart (the module's texts)
            "ntk_names": ntk, "ntk_two": [n for n in ntk if n not in tables],
            "nnlo": [n for n in names if n in NNLO_STEPS],
            "ranks": {n: quantity(n).rank for n in names}}


#: the default tolerance of the generated evaluator's quadratures (relative to max(1, |average|)):
#: 10× below the 1e-10 accuracy asked of quadrature kernels; K and Θ of a depth-20 tanh network
#: then agree with the 3e-13 rules to 6e-14 and 7e-12, in 60–70 % of the time.  For σ with
#: kinks, whose pair rules are judged at 30 times the tolerance, 3e-13.
QUADRATURE_TOL = 1e-11
KINKED_TOL = 3e-13


def numpy_module_source(d, tol: float | None = None) -> str:
    """Source of the standalone evaluator of a :class:`~derive.Derivation` (see module doc);
    ``tol``: its quadratures' default TOL (QUADRATURE_TOL, for σ with kinks KINKED_TOL)."""
    from .documents import _version, render

    spec = d.spec
    act = spec.activation
    kinked = bool(act.kinks)
    tol = (KINKED_TOL if kinked else QUADRATURE_TOL) if tol is None else tol
    step = d.layer_step
    em = _Emitter(act)
    al = step.alphas
    steps = []
    # the forward equation's own scalars (ξ, γ, a user's) are positional arguments s0, s1, …
    # of the generated code: their names may be a user's text, which generated code never holds
    extra = [f"s{k}" for k in range(len(spec.equation.scalars))]
    rename = {sym: sp.Symbol(e) for sym, e in zip(spec.equation.scalars, extra)}
    tail = "".join(f", {e}" for e in extra)

    def local(expr):  # a derived form with the scalars renamed and σ specialised
        return specialise(expr, act).xreplace(rename)

    pair_sig = "K, Theta, C_b, C_W, lambda_b, lambda_W" + tail
    diag_sig = "Kd, G1, V, C_W, n_l, n_lm1" + tail
    plan = [("kernel_step", "K", "pair", "The kernel K^{(l+1)} of every pair of inputs."),
            ("ntk_step", "Theta", "pair", "The leading-order NTK mean Theta^{(l+1)} of every pair."),
            ("metric_correction_step", "G1", "diag",
             "The NLO metric correction G1^{(l+1)}_{aa} of each input (diagonal)."),
            ("vertex_step", "V", "diag",
             "The four-point vertex V^{(l+1)}_{(aa)(aa)} of each input (diagonal).")]
    # K and Θ on pairs always (Θ is cheap and shares K's averages; left out only when it is
    # infinite: σ jumps), V's diagonal always (the expansion estimate needs it), G1's diagonal
    # when it was derived
    # (V is not derived for a forward equation with a skip term: then K and Θ only)
    has_g1 = "G1" in d.recursions
    has_vertex = "V" in step.recursions
    has_theta = not act.ntk_obstacle
    for fname, q, kind, doc in plan:
        if (q == "G1" and not has_g1) or (q == "Theta" and not has_theta) or \
                (q == "V" and not has_vertex):
            continue
        if kind == "pair":
            lines, result = _pair_step(em, local(step.recursions[q]), al)
            sig = pair_sig
        else:
            lines, result = _diag_step(em, local(step.contracted[q]), al, kinked)
            sig = diag_sig
        # the docstring states the form the code implements (the contracted one on the diagonal)
        shown = (step.recursions[q] if kind == "pair" else step.contracted[q]).xreplace(rename)
        steps.append({"name": fname, "args": sig, "doc": doc + " Implements, at α1 = α2 = … :"
                      if kind == "diag" else doc + " Implements:",
                      "latex": book_latex(shown), "lines": lines, "result": result})
    # G1 and V on pairs: the components whose samples take at most two values p, q
    pairs = [("metric_correction_pairs", "G1", "The NLO metric correction G1^{(l+1)}_{pq} of "
              "every pair."),
             ("vertex_pairs", "V", "The four-point vertex V^{(l+1)} at the components "
              + ", ".join(_pattern_text(p) for p in _pair_patterns("pairs")) + " of every pair.")]
    for fname, q, doc in pairs:
        if (q == "G1" and not has_g1) or not has_vertex:
            continue
        frame = _PairFrame(em, kinked)
        expr = local(step.contracted[q])
        results = []
        for pat in _pair_patterns(quantity(q).symmetry):
            var = f"{q}_{''.join(map(str, pat))}_next"
            frame.lines.append(f"{var} = {frame.step(expr, al, pat)}")
            results.append(var)
        head = ["Kd = numpy.diagonal(K)"] + (["P00, P01, P11 = _pair_inverse(K)"] if kinked else [])
        steps.append({"name": fname, "args": "K, G1P, VP, C_W, n_l, n_lm1" + tail,
                      "doc": doc + " G1P[a, b], VP[a, b, c, d] hold the previous layer's "
                      "components with samples (p, q)[a], … (see _pair_tensors); the sample sums "
                      "run over β ∈ {p, q}" + (", by Gaussian integration by parts (P = the "
                      "pair's inverse kernel)" if kinked else "") + ". Implements:",
                      "latex": book_latex(step.contracted[q].xreplace(rename)),
                      "lines": head + frame.lines,
                      "result": ", ".join(results)})
    ntk = _extra_steps(d, step, em, local, steps, kinked, rename, extra)
    # a step's pair quadratures in one call on one set of rules: σ evaluated once per node for
    # all of them (a group of their functions); the K and Θ steps (⟨σσ⟩, ⟨σ'σ'⟩) as one
    if not kinked:
        pair_steps = [st for st in steps if st["name"] in ("kernel_step", "ntk_step")]
        for group in [pair_steps] + [[st] for st in steps if st not in pair_steps]:
            pairs = list(dict.fromkeys(
                m.groups() for st in group for line in st["lines"]
                if (m := re.search(r"_pair_average\((_f\d+), (_f\d+), K\)$", line))))
            if len(pairs) < 2:
                continue
            names = sorted({f for pair in pairs for f in pair}, key=lambda n: int(n[2:]))
            call = f"_pair_averages({em.group(names)}, {tuple(names)!r}, {tuple(pairs)!r}, K)"
            for st in group:
                st["lines"].insert(0, call)
    # K and Θ by blocks of rows when their steps read closed forms only (elementwise in the
    # pair, given the variances); quadrature and moment averages work on whole layers
    blocked = not any(re.search(r"_pair_average\(|_moment_average\(|_diag_average", line)
                      for st in steps if st["name"] in ("kernel_step", "ntk_step")
                      for line in st["lines"])
    for st in steps:
        st["lines"] = _group_diag_averages(em, st["lines"])
    # the functions only the grouped quadratures evaluated are not printed
    used = repr(steps) + repr(ntk)
    em.functions = [f for f in em.functions if not f["name"].startswith("_f")
                    or re.search(rf"\b{f['name']}\b", used)]
    orbits = ["".join(map(str, p)) for p in _pair_patterns("pairs")]
    assembly = []
    for pat, (rep, transposed) in sorted(_orbit_table("pairs").items()):
        ref = f'Vpairs["{"".join(map(str, rep))}"]' + (".T" if transposed else "")
        assembly.append(f"VP[{', '.join(map(str, pat))}] = {ref}")
    em.functions.insert(0, {"name": "sigma", "doc": f"the activation {act.name}", "lines": [],
                            "body": em.printer.doprint(act.expr.xreplace({act.z: _Z}))})
    # the quadrature rules are computed when the module is imported (numpy's Gauss rules, the
    # same calls as derive.activations.gaussian.panel_rule): only their sizes are printed here
    ladder = [(f"hermite{q}", "_hermite_rule", q, q) for q in (12, 16, 20, 24, 32, 40, 48, 64)]
    ladder += [(f"panels{q}", "_panel_rule", q, q * (len(_PANELS) - 1))
               for q in (6, 8, 12, 16, 24, 32)]
    ladder.sort(key=lambda r: r[3])
    rules2 = [r[:3] for r in ladder]
    defaults = {"depth": spec.depth, "widths": list(spec.widths),
                "C_b": [spec.C_b(l) for l in range(1, spec.depth + 1)],
                "C_W": [spec.C_W(l) for l in range(1, spec.depth + 1)],
                "lambda_b": [spec.lambda_b(l) for l in range(1, spec.depth + 1)],
                "lambda_W": [spec.lambda_W(l) for l in range(1, spec.depth + 1)]}
    for k, e in enumerate(extra):  # layer 1 is the MLP's for every architecture: 0 there, unused
        defaults[e] = [0.0] + [spec.scalar_values(l)[k] for l in range(2, spec.depth + 1)]
    exact = ("exact moments where the averaged functions are polynomials on each half-line "
             "(sums of quadrant moments <z_p^m z_q^k ; ±z_p > 0, ±z_q > 0>, by Gaussian "
             "integration by parts from the orthant probability), " if em.moments is not None
             else "")
    if kinked:
        note = (f"closed forms of rules/kernels where they apply, {exact}else Gauss–Legendre "
                "on panels split at the kinks (pairs: 4 to 24 nodes per piece, chosen to reach "
                f"{30 * tol:g}; single inputs: 16 per piece)")
    else:
        note = (f"closed forms of rules/kernels where they apply, {exact}else quadrature (pairs: "
                "Gauss–Hermite or panel Gauss–Legendre rules, 12 to 256 nodes per dimension, "
                f"chosen to reach {tol:g}; single inputs: the same rules and two finer ones, chosen "
                "at the input of largest variance)")
    # the exact moments' recursion, printed from its one source (plain numpy, no imports)
    moments_source = "\n\n\n".join(inspect.getsource(fn).rstrip() for fn in
                                  (moments.half_moments, moments.quadrant_moment_table))
    return render("evaluator.py.j2", activation_name=act.name, version=_version(),
                  activation_repr=repr(sp.sstr(act.expr)), defaults_repr=repr(defaults),
                  rules2=rules2, tol=repr(tol),
                  panels=_array_text(_PANELS), xq_points=16,
                  kinked_points=repr([4, 6, 8, 12, 16, 24]),
                  kinks="[" + ", ".join(repr(float(c)) for c in act.kinks) + "]",
                  block=15000, functions=em.functions, closed=em.closed, steps=steps,
                  average_note=note, has_g1=has_g1, has_theta=has_theta,
                  theta_note=act.ntk_obstacle,
                  pair_assembly=assembly, moments=em.moments,
                  vertex_orbits=repr(orbits), has_vertex=has_vertex, extra=extra,
                  extra_call="".join(f", {e}[l]" for e in extra),
                  equation=(f"z' = {sp.sstr(spec.equation.expr.xreplace(rename))}"
                            if spec.equation.name != "mlp" else ""),
                  kind="MLP" if spec.equation.name == "mlp" else "network", ntk=ntk,
                  blocked=blocked, moments_source=moments_source,
                  # evaluate()'s default order: 2 where the O(1/n²) statistics are computed
                  default_order=2 if ntk and ntk["nnlo"] else 1)
