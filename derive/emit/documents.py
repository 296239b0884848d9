r"""Emitted outputs of a derivation: LaTeX, step-by-step documents (two output layers).

The SymPy printers of :mod:`derive.emit.printing` turn every expression into a string; the jinja2
templates in ``templates/`` (shipped as ``derive/_templates``) only lay out structure.  The
LaTeX templates use LaTeX-safe delimiters (``((* *))``, ``((( )))``, ``((= =))``), every
environment is ``StrictUndefined``, and the output is deterministic: the same derivation gives
byte-identical text on every run and every ``PYTHONHASHSEED``.

* :func:`recursions_latex` — ``Derivation.latex()``: the recursions in one ``align``;
* :func:`derivation_document` — ``Derivation.document("tex" | "md")``: a complete LaTeX
  document (compiles with pdflatex) or Markdown, with for every step the rule applied, its
  statement, the expression after it and its conventions/book reference, then the recursions.
"""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import jinja2
import sympy as sp

from ..algebra.symbols import tensor
from ..base.errors import DeriveError
from ..derivation.quantities import quantity
from .printing import _group, book_latex, latex_terms, notation, tex_text

__all__ = ["templates_dir", "render", "recursions_latex", "derivation_document", "docstring_text",
           "Formula", "formula"]


def templates_dir() -> Path:
    """``templates/`` of a checkout, or ``derive/_templates`` of an installed wheel."""
    package = Path(__file__).resolve().parent.parent  # the derive/ folder
    for cand in (package.parent / "templates", package / "_templates"):
        if (cand / "derivation.tex.j2").is_file():
            return cand
    raise DeriveError(f"the templates were not found next to {package}; reinstall derive")


@lru_cache(maxsize=2)
def _environment(latex: bool) -> jinja2.Environment:
    opts = dict(loader=jinja2.FileSystemLoader(str(templates_dir())),
                undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    if latex:
        opts.update(block_start_string="((*", block_end_string="*))",
                    variable_start_string="(((", variable_end_string=")))",
                    comment_start_string="((=", comment_end_string="=))",
                    trim_blocks=True)
    env = jinja2.Environment(**opts)
    env.filters["doc"] = docstring_text
    return env


def docstring_text(text) -> str:
    """``text`` made safe inside a generated (raw, triple-quoted) docstring: no quote character
    that could end it, no NUL, no trailing backslash.  Generated modules are imported and run,
    so nothing printed into them may be able to leave its string."""
    text = str(text).replace("\x00", "").replace('"', "'")
    return text + " " if text.endswith("\\") else text


def render(name: str, **context) -> str:
    """Render ``templates/<name>`` (LaTeX delimiters for ``*.tex.j2``)."""
    return _environment(name.endswith(".tex.j2")).get_template(name).render(**context)


def _quantity(name: str) -> tuple[str, str, int]:
    """(title, tensor symmetry, rank) of a quantity: the title from the notation table, the
    rest from its declaration (:mod:`derive.derivation.quantities`)."""
    title = notation()["tensor"][name]["title"]
    q = quantity(name)
    return title[0].upper() + title[1:], q.symmetry, q.rank


def _lhs(name: str, alphas) -> str:
    _, sym, rank = _quantity(name)
    return book_latex(tensor(name, rank, sym)[tuple(alphas[:rank])], layer=r"\ell+1")


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("derive")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a checkout
        return "(checkout)"


def _num(v) -> str:
    return f"{v:g}"


def _per_layer(values) -> str:
    """``0 (every layer)`` when all equal, else the list, as math."""
    values = list(values)
    if len(set(values)) == 1:
        return rf"${_num(values[0])}$ (every layer)"
    return "$" + ",\\ ".join(_num(v) for v in values) + "$"


def _network_rows(d) -> list[tuple[str, str]]:
    """The network as (label, value) rows, both in LaTeX text mode with ``$…$`` math (valid in
    the .tex and in the Markdown's math)."""
    spec, eq, act = d.spec, d.spec.equation, d.spec.activation
    L = spec.depth
    layers = range(1, L + 1)
    rows = [("activation", rf"{tex_text(act.name)}: $\sigma(z) = {book_latex(act.expr)}$"),
            ("depth $L$", f"${L}$"),
            (r"hidden widths $n_1,\dots,n_{L-1}$",
             ("$" + ",\\ ".join(map(str, spec.widths)) + "$") if spec.widths else "(none)"),
            (r"$C_b^{(\ell)}$, $\ell = 1,\dots,L$", _per_layer(spec.C_b(l) for l in layers)),
            (r"$C_W^{(\ell)}$, $\ell = 1,\dots,L$", _per_layer(spec.C_W(l) for l in layers)),
            (r"$\lambda_b^{(\ell)}$, $\ell = 1,\dots,L$", _per_layer(spec.lambda_b(l) for l in layers)),
            (r"$\lambda_W^{(\ell)}$, $\ell = 1,\dots,L$", _per_layer(spec.lambda_W(l) for l in layers))]
    if eq.name != "mlp":
        for k, sym in enumerate(eq.scalars):
            vals = [spec.scalar_values(l)[k] for l in range(2, L + 1)]
            rows.append((rf"${book_latex(sym)}$, $\ell+1 = 2,\dots,L$", _per_layer(vals)))
    rows.append(("order in $1/n$", f"${d.order}$"))
    rows.append(("targets", "$" + ",\\ ".join(_symbol(t, r"\ell") for t in d.targets) + "$"))
    return rows


def _symbol(name: str, layer) -> str:
    r"""The book's symbol of a quantity at ``layer`` (``G^{\{1\}(2)}``, never ``G12``)."""
    from ..derivation.quantities import quantity

    return quantity(name).latex.replace(r"\ell", str(layer))


def _correlator(q) -> tuple[str, str]:
    """E[fields] of layer ℓ+1 that ``q`` is read from, with its δ-structure, as math."""
    c = q.correlator
    fields, i, a = [], 1, 1
    for f in c.fields:
        if f == "z":
            fields.append(rf"z^{{(\ell+1)}}_{{i_{{{i}}};\alpha_{{{a}}}}}")
            i, a = i + 1, a + 1
        else:
            fields.append(rf"\widehat{{H}}^{{(\ell+1)}}_{{i_{{{i}}}i_{{{i + 1}}};"
                          rf"\alpha_{{{a}}}\alpha_{{{a + 1}}}}}")
            i, a = i + 2, a + 2
    e = r"\mathbb{E}\left[" + " ".join(fields) + r"\right]"
    if c.connected:
        e += r"\big|_{\mathrm{connected}}"
    delta = "".join(rf"\delta_{{i_{{{x + 1}}}i_{{{y + 1}}}}}" for x, y in q.structure)
    return e, delta


def _starting_point(d) -> dict:
    from ..derivation.quantities import quantity

    eq = d.spec.equation
    lhs = r"z^{(\ell+1)}_{i;\alpha}"
    first = r"z^{(1)}_{i;\alpha} = \sum_{j=1}^{n_0} W^{(1)}_{ij} x_{j;\alpha} + b^{(1)}_{i}"
    quantities = []
    for name in d.recursions:
        q = quantity(name)
        corr, delta = _correlator(q)
        scale = "" if q.order == 0 else (r"n_{\ell}" if q.order == 1 else rf"n_{{\ell}}^{{{q.order}}}")
        quantities.append({"symbol": _symbol(name, r"\ell+1"), "title": q.title,
                           "correlator": corr, "delta": delta, "order": q.order,
                           "scale": scale,
                           "power": "1/n" if q.order == 1 else rf"1/n^{{{q.order}}}"})
    return {"equation": f"{lhs} = {book_latex(eq.expr)}", "first": first,
            "residual": eq.name != "mlp", "description": tex_text(eq.description),
            "quantities": quantities}


def _plan_rows(d) -> list[tuple[str, str]]:
    """The plan: one (node, the nodes it reads) row per node, in evaluation order."""
    rows = []
    for node in d.evaluation_order():
        preds = sorted(d.plan.predecessors(node), key=lambda n: d.evaluation_order().index(n))
        reads = ", ".join(f"${_symbol(p[0], p[1])}$" for p in preds) or "the inputs $x$"
        rows.append((f"${_symbol(node[0], node[1])}$", reads))
    return rows


def _shared_prefix(steps, earlier) -> tuple[str, int]:
    """(name, count) of the earlier recursion whose steps open ``steps`` the longest."""
    best = ("", 0)
    for name, other in earlier:
        k = 0
        while k < min(len(steps), len(other)) and _same(steps[k], other[k]):
            k += 1
        if k > best[1]:
            best = (name, k)
    return best


def _same(a: dict, b: dict) -> bool:
    return all(a[k] == b[k] for k in ("rule", "lines", "note", "latex"))


def _context(d, text) -> dict:
    step = d.layer_step
    spec = d.spec
    act = spec.activation
    eq = spec.equation
    recs = []
    earlier = []
    for name in d.recursions:
        title = _quantity(name)[0]
        steps = []
        for k, s in enumerate(d.steps_for(name), 1):
            info = s.info
            after = s.after
            parts = list(after) if isinstance(after, sp.Tuple) else [after]
            lines = [tl for p in parts for tl in latex_terms(p)]
            steps.append({"index": k, "title": text(info.title), "rule": text(s.rule),
                          "reference": text(info.reference), "statement": text(info.statement),
                          "latex": info.latex, "note": text(s.note), "lines": lines})
        shared_with, shared = _shared_prefix(steps, earlier)
        earlier.append((name, steps))
        contracted = d.contracted.get(name)
        recs.append({"name": name, "title": title, "lhs": _lhs(name, step.alphas),
                     "symbol": _symbol(name, r"\ell"),
                     "lines": latex_terms(d.recursions[name]),
                     "contracted": latex_terms(contracted) if contracted is not None
                     and contracted != d.recursions[name] else [],
                     "steps": steps[shared:], "shared": shared,
                     "shared_with": _quantity(shared_with)[0] if shared else "",
                     "shared_symbol": _symbol(shared_with, r"\ell") if shared else ""})
    kind = "MLP" if eq.name == "mlp" else ("residual network" if eq.name == "residual"
                                           else "network")
    return {"title": text(f"Layer recursions of a {spec.depth}-layer {act.name} {kind}"),
            "version": text(_version()), "spec_rows": _network_rows(d), "recursions": recs,
            "start": _starting_point(d),
            "recursion_note": (r"($\sigma$ abstract; sample indices general; widths $n_\ell$, "
                               r"$n_{\ell-1}$ symbolic; $C_b$, $C_W$, $\lambda$ of layer "
                               r"$\ell+1$)"),
            "plan": _plan_rows(d), "signature": text(d.signature())}


def recursions_latex(d) -> str:
    """The recursions of a :class:`~derive.Derivation` in one ``align`` environment."""
    return render("recursions.tex.j2", **_context(d, tex_text))


#: LaTeX → text replacements of :meth:`Formula.__str__` (applied in order)
_TEXT_FORM = [(r"\left", ""), (r"\right", ""), (r"\langle", "⟨"), (r"\rangle", "⟩"),
              (r"\sigma", "σ"), (r"\alpha", "α"), (r"\beta", "β"), (r"\gamma", "γ"),
              (r"\lambda", "λ"), (r"\delta", "δ"), (r"\Theta", "Θ"), (r"\ell", "ℓ"),
              (r"\xi", "ξ"), (r"\mu", "μ"), (r"\nu", "ν"), (r"\prime", "'"),
              (r"\cdot", "·"), (r"\,", " "), (r"\!", ""), (r"\;", " "),
              (r"\quad", " "), (r"\qquad", " ")]


_PLAIN = re.compile(r"[^\s+\-()/^_]*$")  # a brace group shown without parentheses
_SUBSCRIPT = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")


class Formula:
    r"""One derived recursion, for display: ``_repr_latex_`` is the book printer's LaTeX with
    its left-hand side (``K^{(\ell+1)}_{\alpha_1\alpha_2} = …``, one ``aligned``
    environment, the long terms broken over lines); ``str``/``repr`` a compact one-line text
    form of the same (σ', ⟨…⟩, α₁ …) — not SymPy's ``Derivative(sigma(zeta[alpha1]), …)``.
    ``expr`` is the SymPy expression itself."""

    def __init__(self, name: str, lhs: str, expr):
        self.name = name
        self.lhs = lhs
        self.expr = expr

    def latex(self) -> str:
        """The ``aligned`` environment (no math delimiters)."""
        rows = []
        for k, (sign, term) in enumerate(latex_terms(self.expr)):
            if k == 0:
                rows.append(("- " if sign == "-" else "") + term)
            else:
                rows.append(f"\\\\\n&\\quad {sign} {term}")
        return "\\begin{aligned}\n" + f"{self.lhs} &= " + "".join(rows) + "\n\\end{aligned}"

    def _repr_latex_(self) -> str:
        return f"$$\n{self.latex()}\n$$"

    def text(self) -> str:
        """The one-line text form (see the class docstring)."""
        s = f"{self.lhs} = {book_latex(self.expr)}"
        for a, b in _TEXT_FORM:
            s = s.replace(a, b)
        s = re.sub(r"\\(?:mathrm|operatorname|mathcal|mathbf|text)\{([^{}]*)\}", r"\1", s)
        s = re.sub(r"_\{(\d+)\}", lambda m: m.group(1).translate(_SUBSCRIPT), s)
        while (i := s.find("\\frac{")) >= 0:
            num, j = _group(s, i + 5)
            den, k = _group(s, j)
            s = s[:i] + f"({num})/({den})" + s[k:]
        brace = re.compile(r"\{([^{}]*)\}")
        while brace.search(s):
            s = brace.sub(lambda m: m.group(1) if _PLAIN.match(m.group(1)) or m.group(1)[0] == "("
                          else f"({m.group(1)})", s)
        return re.sub(r"\s+", " ", s).strip()

    def __str__(self) -> str:
        return self.text()

    def __repr__(self) -> str:
        return self.text()


def formula(d, name: str) -> Formula:
    """The recursion ``name`` of the derivation ``d`` as a :class:`Formula`."""
    if name not in d.recursions:
        raise DeriveError(f"no recursion {name!r}; this derivation has {', '.join(d.recursions)}")
    return Formula(name, _lhs(name, d.layer_step.alphas), d.recursions[name])


def derivation_document(d, format: str = "tex") -> str:
    """The step-by-step derivation as a complete LaTeX document or as Markdown."""
    if format not in ("tex", "md"):
        raise DeriveError(f"format must be 'tex' or 'md', got {format!r}")
    if format == "tex":
        return render("derivation.tex.j2", **_context(d, tex_text))
    return render("derivation.md.j2", **_context(d, str))
