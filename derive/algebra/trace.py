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
    """An ordered record of :class:`Step` objects."""

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
