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

from functools import lru_cache
from pathlib import Path

import jinja2
import sympy as sp

from ..algebra.symbols import tensor
from ..base.errors import DeriveError
from .printing import book_latex, latex_terms, notation, tex_text

__all__ = ["templates_dir", "render", "recursions_latex", "derivation_document", "docstring_text"]


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
    """(title, tensor symmetry, rank) of a quantity, from the notation table."""
    entry = notation()["tensor"][name]
    title = entry["title"]
    pairs = bool(entry.get("pairs"))
    return title[0].upper() + title[1:], "pairs" if pairs else "sym", 4 if pairs else 2


def _lhs(name: str, alphas) -> str:
    _, sym, rank = _quantity(name)
    return book_latex(tensor(name, rank, sym)[tuple(alphas[:rank])], layer=r"\ell+1")


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("derive")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a checkout
        return "(checkout)"


def _context(d, text) -> dict:
    step = d.layer_step
    spec = d.spec
    act = spec.activation
    eq = spec.equation
    rows = [("activation", text(f"{act.name}: sigma(z) = {sp.sstr(act.expr)}")),
            ("depth L", str(spec.depth)),
            ("hidden widths n_1 ... n_{L-1}", text(", ".join(map(str, spec.widths)) or "(none)")),
            ("C_b per layer", text(", ".join(f"{spec.C_b(l):g}" for l in range(1, spec.depth + 1)))),
            ("C_W per layer", text(", ".join(f"{spec.C_W(l):g}" for l in range(1, spec.depth + 1)))),
            ("lambda_b, lambda_W (layer 1)", text(f"{spec.lambda_b(1):g}, {spec.lambda_W(1):g}")),
            ("order in 1/n", str(d.order)), ("targets", text(", ".join(d.targets)))]
    if eq.name != "mlp":  # the layer equation and its scalars (layers 2 … L)
        extra = [("layers 2 ... L", text(eq.description))]
        for k, sym in enumerate(eq.scalars):
            vals = [spec.scalar_values(l)[k] for l in range(2, spec.depth + 1)]
            extra.append((f"{sym} per layer (2 ... L)", text(", ".join(f"{v:g}" for v in vals))))
        rows[5:5] = extra
    rows = [(text(k), v) for k, v in rows]
    recs = []
    for name in d.recursions:
        title = _quantity(name)[0]
        steps = []
        for s in d.steps_for(name):
            info = s.info
            after = s.after
            parts = list(after) if isinstance(after, sp.Tuple) else [after]
            lines = [tl for p in parts for tl in latex_terms(p)]
            steps.append({"title": text(info.title), "rule": text(s.rule),
                          "reference": text(info.reference), "statement": text(info.statement),
                          "latex": info.latex, "note": text(s.note), "lines": lines})
        contracted = d.contracted.get(name)
        recs.append({"name": name, "title": title, "lhs": _lhs(name, step.alphas),
                     "lines": latex_terms(d.recursions[name]),
                     "contracted": latex_terms(contracted) if contracted is not None
                     and contracted != d.recursions[name] else [],
                     "steps": steps})
    kind = "MLP" if eq.name == "mlp" else ("residual network" if eq.name == "residual"
                                           else "network")
    return {"title": text(f"Layer recursions of a {spec.depth}-layer {act.name} {kind}"),
            "version": text(_version()), "spec_rows": rows, "recursions": recs,
            "recursion_note": text("(sigma abstract; sample indices general; widths n_l, "
                                   "n_{l-1} symbolic; C_b, C_W, lambda of layer l+1)"),
            "signature": text(d.signature())}


def recursions_latex(d) -> str:
    """The recursions of a :class:`~derive.Derivation` in one ``align`` environment."""
    return render("recursions.tex.j2", **_context(d, tex_text))


def derivation_document(d, format: str = "tex") -> str:
    """The step-by-step derivation as a complete LaTeX document or as Markdown."""
    if format not in ("tex", "md"):
        raise DeriveError(f"format must be 'tex' or 'md', got {format!r}")
    if format == "tex":
        return render("derivation.tex.j2", **_context(d, tex_text))
    return render("derivation.md.j2", **_context(d, str))
