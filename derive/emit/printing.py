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

import re
from functools import lru_cache

import sympy as sp
from sympy.printing.latex import LatexPrinter

from ..base.parsing import as_expr
from ..base.rules import load_rule_file

__all__ = ["notation", "BookLatexPrinter", "book_latex", "latex_terms", "tex_text",
           "latex_width", "LINE_WIDTH"]


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
        if entry.get("pairs") and len(idx) in (4, 6):
            text = "".join(f"({self._join(idx[k:k + 2])})" for k in range(0, len(idx), 2))
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

    def _contraction_pieces(self, expr) -> list[str]:
        """Σ_β T_β ⟨∂_β[f]⟩ ⟨∂_β[g]⟩ … as [``\\sum_β T``, ⟨…⟩, ⟨…⟩, …] (a line may break
        between the pieces)."""
        dummies = "".join(self._print(b) for g in expr.groups for b in g)
        avgs = []
        for f, g in zip(expr.functions, expr.groups):
            ds = "".join(rf"\partial_{{{self._print(b)}}}" for b in g)
            avgs.append(self._fill(self.table["average"]["latex"],
                                   f=rf"{ds}\!\left[{self._print(f)}\right]"))
        return [rf"\sum_{{{dummies}}} {self._print(expr.tensor)}"] + avgs

    def _print_DerivativeContraction(self, expr) -> str:
        return " ".join(self._contraction_pieces(expr))

    def _print_E(self, expr) -> str:
        return expr._latex(self)

    def _print_NeuronSum(self, expr) -> str:
        return expr._latex(self)

    def _print_Tuple(self, expr) -> str:
        return r",\quad ".join(self._print(x) for x in expr)


def book_latex(expr, layer: str = r"\ell", next: str = r"\ell+1") -> str:
    """``expr`` in the book's notation (see the module docstring)."""
    return BookLatexPrinter(layer, next).doprint(as_expr(expr))


#: the budget of one displayed line, in :func:`latex_width` units (about one math-italic
#: letter at 10pt; the documents' landscape text block holds about 125 of them, less the
#: ``&\quad +`` indent and a margin for the estimate's error)
LINE_WIDTH = 88

#: the text a term's continuation lines start with, inside an ``aligned``/``align*`` row
CONTINUE = "\\\\\n&\\qquad\\qquad "



def _group(s: str, i: int) -> tuple[str, int]:
    """The balanced ``{…}`` group starting at ``s[i]`` (its inside, the index after it)."""
    depth = 0
    for j in range(i, len(s)):
        if s[j] == "{":
            depth += 1
        elif s[j] == "}":
            depth -= 1
            if depth == 0:
                return s[i + 1:j], j + 1
    return s[i + 1:], len(s)


_ZERO = {"left", "right", "bigl", "bigr", "Bigl", "Bigr", "!", ",", "limits", "mathrm",
         "operatorname", "mathtt", "text", "widehat"}
_WIDE = {"quad": 2.0, "qquad": 4.0, "sum": 2.0, "prod": 2.0, "langle": 0.7, "rangle": 0.7,
         "cdot": 1.5, "times": 2.0, "mapsto": 2.5, "to": 2.5, "leq": 2.0, "geq": 2.0,
         "neq": 2.0, "le": 2.0, "ge": 2.0, "infty": 1.5}


def latex_width(s: str, scale: float = 1.0, nested: bool = False) -> float:
    """A conservative estimate of the typeset width of the math-mode LaTeX ``s``, in units of
    about one math-italic letter at the text size: fractions count their wider part, sub- and
    superscripts at 0.7, binary operators and relations with their spacing.  The printers
    use it to decide where to break a line (docs/conventions.md §1)."""
    w = 0.0
    i, n = 0, len(s)
    while i < n:
        c = s[i]
        if c == "\\":
            m = re.match(r"\\([A-Za-z]+|.)", s[i:])
            name = m.group(1)
            i += len(m.group(0))
            if name in ("frac", "dfrac", "tfrac"):
                while i < n and s[i] == " ":
                    i += 1
                a, i = _group(s, i)
                while i < n and s[i] == " ":
                    i += 1
                b, i = _group(s, i)
                inner = scale * 0.7 if nested else scale  # display style: text-size parts
                w += scale * 0.4 + max(latex_width(a, inner, True), latex_width(b, inner, True))
            elif name in ("mathtt", "text", "mathrm", "operatorname") and i < n and s[i] == "{":
                a, i = _group(s, i)
                w += scale * len(a)
            elif name in _ZERO:
                continue
            else:
                w += scale * _WIDE.get(name, 1.0)
        elif c in "_^":
            i += 1
            if i < n and s[i] == "{":
                a, i = _group(s, i)
            else:
                m = re.match(r"\\[A-Za-z]+|.", s[i:])
                a = m.group(0)
                i += len(a)
            w += latex_width(a, scale * 0.7, True)
        elif c in "{} ":
            i += 1
        elif c in "+-=<>":
            w += scale * 2.0
            i += 1
        else:
            w += scale * (0.5 if c in "()[]|,;'." else 1.0)
            i += 1
    return w


def _is_coefficient(f) -> bool:
    """A factor printed in a term's leading coefficient (numbers, parameters, widths)."""
    if f.is_number or isinstance(f, sp.Symbol):
        return True
    return isinstance(f, sp.Pow) and (f.base.is_number or isinstance(f.base, sp.Symbol))


def _pack(pieces: list[str], budget: float) -> list[str]:
    """Join ``pieces`` greedily into lines of at most ``budget`` (a piece wider than that
    gets a line of its own)."""
    lines: list[str] = []
    cur = ""
    for piece in pieces:
        if cur and latex_width(cur + " " + piece) > budget:
            lines.append(cur)
            cur = piece
        else:
            cur = f"{cur} {piece}" if cur else piece
    if cur:
        lines.append(cur)
    return lines


def _term_lines(p: BookLatexPrinter, t, budget: float) -> list[str]:
    """The LaTeX of the term ``t`` (no leading sign) as one or more lines of at most
    ``budget``: a term too wide is written coefficient × factors, with its inner sums in
    ``\\bigl( … \\bigr)`` (delimiters that may span lines) broken at their terms, and a
    contraction broken between its averages."""
    text = p.doprint(t)
    if latex_width(text) <= budget:
        return [text]
    num, den = sp.fraction(t)
    factors = list(sp.Mul.make_args(num))
    coeff = [f for f in factors if _is_coefficient(f)]
    rest = [f for f in factors if not _is_coefficient(f)]
    if not rest:
        return [text]
    pieces: list[str] = []
    c = sp.Mul(*coeff) / den
    if c != 1:
        pieces.append(p.doprint(c))
    for f in rest:
        pieces.extend(_factor_pieces(p, f, budget))
    return _pack(pieces, budget)


def _factor_pieces(p: BookLatexPrinter, f, budget: float) -> list[str]:
    from ..algebra.symbols import DerivativeContraction

    text = p.doprint(f)
    if isinstance(f, sp.Add):
        if latex_width(text) <= budget:
            return [text] if len(sp.Add.make_args(f)) == 1 else [rf"\left({text}\right)"]
        pieces = []
        for k, (sign, lines) in enumerate(_signed_lines(p, f, budget - 4)):
            lines = list(lines)
            if k == 0:
                lines[0] = r"\bigl(" + ("- " if sign == "-" else "") + lines[0]
            else:
                lines[0] = f"{sign} {lines[0]}"
            pieces.extend(lines)
        pieces[-1] += r" \bigr)"
        return pieces
    if isinstance(f, DerivativeContraction):
        return p._contraction_pieces(f)
    if isinstance(f, sp.Pow) and isinstance(f.base, sp.Add):
        return [rf"\left({p.doprint(f.base)}\right)^{{{p.doprint(f.exp)}}}"]
    return [text]


def _signed_lines(p: BookLatexPrinter, expr, budget: float) -> list[tuple[str, list[str]]]:
    terms = p._as_ordered_terms(expr, order=None) if isinstance(expr, sp.Add) else [expr]
    out = []
    for t in terms:
        if t.could_extract_minus_sign():
            out.append(("-", _term_lines(p, -t, budget)))
        else:
            out.append(("+", _term_lines(p, t, budget)))
    return out


def latex_terms(expr, layer: str = r"\ell", next: str = r"\ell+1",
                width: float = LINE_WIDTH) -> list[tuple[str, str]]:
    """The terms of a sum as (sign, LaTeX of the term without its sign), in the printer's
    order — for templates that break long recursions over several lines.  A term wider than
    ``width`` (:func:`latex_width`) is itself broken: its continuation lines start with
    :data:`CONTINUE`, so every line of the display fits the page."""
    p = BookLatexPrinter(layer, next)
    return [(sign, CONTINUE.join(lines))
            for sign, lines in _signed_lines(p, as_expr(expr), width)]


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
