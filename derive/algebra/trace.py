"""Derivation steps: which rule fired, on what, giving what.

Every pass of the engine accepts an optional :class:`Trace` and appends a :class:`Step` when
its rule *fired* (changed the expression).  Later stages print the steps (LaTeX, Markdown);
tests assert on the rule ids.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import sympy as sp

from ..base.rules import EngineRule, engine_rule

__all__ = ["Step", "Trace"]


@dataclass(frozen=True)
class Step:
    """One applied rule: ``rule`` (an id of rules/engine.toml), ``before`` → ``after``."""

    rule: str
    before: sp.Basic
    after: sp.Basic
    note: str = ""

    @property
    def info(self) -> EngineRule:
        return engine_rule(self.rule)

    @property
    def reference(self) -> str:
        return self.info.reference

    def __str__(self) -> str:
        note = f"  [{self.note}]" if self.note else ""
        return f"{self.rule} ({self.info.title}; {self.reference}){note}\n    {sp.sstr(self.after)}"


@dataclass
class Trace:
    """An ordered record of :class:`Step` objects.

    Pass one as ``trace=`` to an engine function; every rule that fires appends a step.
    ``rules()`` lists their ids, ``str(trace)`` prints them numbered.

    Parameters
    ----------
    steps : list of Step, optional
        The steps recorded so far (default: none).

    Returns
    -------
    Trace
        The (mutable) record.

    Raises
    ------
    DeriveError
        ``record`` refuses a rule id that rules/engine.toml does not define.

    Examples
    --------
    >>> from derive import bias, neuron_indices, wick
    >>> b = bias(); (i,) = neuron_indices('i'); t = Trace()
    >>> wick(b[i] ** 2, trace=t)
    C_b
    >>> t.rules()
    ['wick.isserlis']
    """

    steps: list[Step] = field(default_factory=list)

    def record(self, rule: str, before, after, note: str = "") -> None:
        engine_rule(rule)  # reject unknown rule ids early
        self.steps.append(Step(rule, before, after, note))

    def rules(self) -> list[str]:
        """Ids of the rules that fired, in order."""
        return [s.rule for s in self.steps]

    def __iter__(self):
        return iter(self.steps)

    def __len__(self) -> int:
        return len(self.steps)

    def __str__(self) -> str:
        return "\n".join(f"{k + 1}. {s}" for k, s in enumerate(self.steps))

    # -- rich display (Jupyter) -----------------------------------------------------------------
    # SymPy's own LaTeX printer only: the book's printer belongs to a later stage (derive.emit)

    #: results whose LaTeX is longer than this are not shown in the Markdown form
    MAX_LATEX = 800

    def _repr_markdown_(self) -> str:
        """A numbered list: rule id, title, reference, note, and the result (SymPy's LaTeX)."""
        if not self.steps:
            return "*(no steps)*"
        lines = []
        for k, s in enumerate(self.steps):
            note = f" — {s.note}" if s.note else ""
            lines.append(f"{k + 1}. `{s.rule}` — {s.info.title} ({s.reference}){note}")
            tex = _latex(s.after)
            if tex and len(tex) <= self.MAX_LATEX:
                lines.append(f"   $${tex}$$")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        """A table of the steps: number, rule id, title, reference, note."""
        from html import escape

        rows = "".join(
            f"<tr><td>{k + 1}</td><td><code>{escape(s.rule)}</code></td>"
            f"<td>{escape(s.info.title)}</td><td>{escape(s.reference)}</td>"
            f"<td>{escape(s.note)}</td></tr>" for k, s in enumerate(self.steps))
        return (f"<div><table><caption style=\"text-align:left\">{len(self.steps)} derivation "
                "steps</caption><thead><tr><th>#</th><th>rule</th><th>title</th><th>reference</th>"
                f"<th>note</th></tr></thead><tbody>{rows}</tbody></table></div>")


def _latex(expr) -> str:
    """SymPy's LaTeX of ``expr``, or "" where it cannot be printed."""
    try:
        return sp.latex(expr)
    except Exception:  # a display must not fail on an exotic expression
        return ""
