r"""LaTeX in the book's notation (PDLT; docs/conventions.md §1, §3).

:class:`BookLatexPrinter` is a SymPy ``LatexPrinter`` with ``_print_<Class>`` methods for the
engine's inert classes; every symbol it prints comes from one table, ``rules/notation.toml``
(:func:`notation`).  A recursion's right-hand side lives at layer ``\ell`` and its parameters
at ``\ell+1``: ``book_latex(expr)`` prints K[α1, α2] as ``K^{(\ell)}_{\alpha_{1}\alpha_{2}}``,
V's four indices as ``(\alpha_1\alpha_2)(\alpha_3\alpha_4)``, averages as
``\left\langle … \right\rangle_{K^{(\ell)}}``, σ(z_α) as ``\sigma_{\alpha}`` with primes for
its derivatives.

>>> import sympy as sp
>>> from derive import tensor, sample_indices
>>> a, b = sample_indices("alpha1 alpha2")
>>> book_latex(sp.Symbol("C_W") * tensor("K")[b, a] / sp.Symbol("n_lm1", positive=True))
'\\frac{C_W^{(\\ell+1)} K^{(\\ell)}_{\\alpha_{1}\\alpha_{2}}}{n_{\\ell-1}}'
"""
from __future__ import annotations

from functools import lru_cache

import sympy as sp
from sympy.printing.latex import LatexPrinter

from ..base.parsing import as_expr
from ..base.rules import load_rule_file

__all__ = ["notation", "BookLatexPrinter", "book_latex", "latex_terms", "tex_text"]


@lru_cache(maxsize=1)
def notation() -> dict:
    """The notation table: {"tensor"|"scalar"|"field"|"function": {name: entry}, "average": …}."""
    data = load_rule_file("notation")
    out = {kind: {e["name"]: e for e in data.get(kind, [])}
           for kind in ("tensor", "scalar", "field", "function")}
    out["average"] = data["average"]
    return out


class BookLatexPrinter(LatexPrinter):
    """LaTeX in the book's notation; ``layer`` / ``next`` are the layer of the quantities read
    and of the parameters (``\\ell`` and ``\\ell+1`` in a recursion)."""

    printmethod = "_book_latex"  # our classes' generic ``_latex`` must not take precedence

    def __init__(self, layer: str = r"\ell", next: str = r"\ell+1", settings=None):
        super().__init__(settings)
        self.layer = layer
        self.next = next
        self.table = notation()

    def _fill(self, template: str, **parts) -> str:
        out = template.replace("<layer>", self.layer).replace("<next>", self.next)
        for key, val in parts.items():
            out = out.replace(f"<{key}>", val)
        return out

    def _join(self, xs) -> str:
        return "".join(self._print(x) for x in xs)

    # -- tensors and scalars ---------------------------------------------------------------

    def _print_Indexed(self, expr) -> str:
        label = str(expr.base.label)
        entry = self.table["tensor"].get(label)
        if entry is None:
            return super()._print_Indexed(expr)
        idx = expr.indices
        if entry.get("pairs") and len(idx) == 4:
            text = f"({self._join(idx[:2])})({self._join(idx[2:])})"
        else:
            text = self._join(idx)
        return self._fill(entry["latex"], idx=text)

    def _print_Symbol(self, expr, style="plain") -> str:
        entry = self.table["scalar"].get(expr.name)
        if entry is not None:
            return self._fill(entry["latex"])
        return super()._print_Symbol(expr, style=style)

    # -- random variables, functions of them ----------------------------------------------------

    def _indices_of(self, var) -> tuple[str, str]:
        neu, sam = var._split()
        return self._join(neu), self._join(sam)

    def _print_RandomVar(self, expr) -> str:
        entry = self.table["field"].get(expr.family.name)
        if entry is None:
            return expr._latex(self)
        neu, sam = self._indices_of(expr)
        if expr.family.name in ("W", "b"):
            neu = self._join(expr.indices)
        return self._fill(entry["latex"], neu=neu, idx=sam).replace("_{;", "_{")

    def _sub_of(self, arg) -> str | None:
        from ..algebra.symbols import RandomVar

        if isinstance(arg, RandomVar):
            neu, sam = self._indices_of(arg)
            return f"{neu};{sam}" if neu else sam
        return None

    def _print_Function(self, expr, exp=None) -> str:
        name = expr.func.__name__
        entry = self.table["function"].get(name)
        if entry is not None and name == "Hhat" and len(expr.args) == 4:
            out = self._fill(entry["latex"], neu=self._join(expr.args[:2]),
                             idx=self._join(expr.args[2:]))
            return out if exp is None else rf"\left({out}\right)^{{{exp}}}"
        if entry is not None and len(expr.args) == 1:
            sub = self._sub_of(expr.args[0])
            if sub is not None:
                out = f"{entry['latex']}_{{{sub}}}"
                return out if exp is None else f"{out}^{{{exp}}}"
        return super()._print_Function(expr, exp)

    def _print_Derivative(self, expr) -> str:
        inner = expr.expr
        if (isinstance(inner, sp.core.function.AppliedUndef) and len(inner.args) == 1
                and inner.func.__name__ in self.table["function"]
                and all(v == inner.args[0] for v, _ in expr.variable_count)):
            k = sum(int(c) for _, c in expr.variable_count)
            sub = self._sub_of(inner.args[0])
            if sub is not None:
                mark = "'" * k if k <= 3 else f"^{{({k})}}"
                return f"{self.table['function'][inner.func.__name__]['latex']}{mark}_{{{sub}}}"
        return super()._print_Derivative(expr)

    # -- inert engine classes ----------------------------------------------------------------

    def _print_GaussianAverage(self, expr) -> str:
        return self._fill(self.table["average"]["latex"], f=self._print(expr.function))

    def _print_DerivativeContraction(self, expr) -> str:
        dummies = "".join(self._print(b) for g in expr.groups for b in g)
        avgs = []
        for f, g in zip(expr.functions, expr.groups):
            ds = "".join(rf"\partial_{{{self._print(b)}}}" for b in g)
            avgs.append(self._fill(self.table["average"]["latex"],
                                   f=rf"{ds}\!\left[{self._print(f)}\right]"))
        return rf"\sum_{{{dummies}}} {self._print(expr.tensor)} " + " ".join(avgs)

    def _print_E(self, expr) -> str:
        return expr._latex(self)

    def _print_NeuronSum(self, expr) -> str:
        return expr._latex(self)

    def _print_Tuple(self, expr) -> str:
        return r",\quad ".join(self._print(x) for x in expr)


def book_latex(expr, layer: str = r"\ell", next: str = r"\ell+1") -> str:
    """``expr`` in the book's notation (see the module docstring)."""
    return BookLatexPrinter(layer, next).doprint(as_expr(expr))


def latex_terms(expr, layer: str = r"\ell", next: str = r"\ell+1") -> list[tuple[str, str]]:
    """The terms of a sum as (sign, LaTeX of the term without its sign), in the printer's
    order — for templates that break long recursions over several lines."""
    p = BookLatexPrinter(layer, next)
    expr = as_expr(expr)
    terms = p._as_ordered_terms(expr, order=None) if isinstance(expr, sp.Add) else [expr]
    out = []
    for t in terms:
        if t.could_extract_minus_sign():
            out.append(("-", p.doprint(-t)))
        else:
            out.append(("+", p.doprint(t)))
    return out


_TEXT_MAP = {
    "\\": r"\textbackslash{}", "_": r"\_", "{": r"\{", "}": r"\}", "^": r"\^{}", "&": r"\&",
    "%": r"\%", "#": r"\#", "$": r"\$", "~": r"\~{}",
    "ε": r"$\varepsilon$", "ℓ": r"$\ell$", "∝": r"$\propto$", "δ": r"$\delta$", "Σ": r"$\Sigma$",
    "σ": r"$\sigma$", "β": r"$\beta$", "α": r"$\alpha$", "≠": r"$\neq$", "×": r"$\times$",
    "→": r"$\to$", "⁰": r"$^0$", "¹": r"$^1$", "²": r"$^2$", "≤": r"$\leq$", "≥": r"$\geq$",
    "§": r"\S{}", "⟨": r"$\langle$", "⟩": r"$\rangle$", "∂": r"$\partial$", "Θ": r"$\Theta$",
    "–": "--", "—": "---", "’": "'",
}


def tex_text(s: str) -> str:
    """Plain text (rule statements, notes) made safe for LaTeX text mode, ASCII only."""
    out = []
    for ch in str(s):
        if ch in _TEXT_MAP:
            out.append(_TEXT_MAP[ch])
        elif ord(ch) < 128:
            out.append(ch)
        else:
            out.append("?")
    return "".join(out)
