"""Loading the facts in ``rules/`` (TOML data files), lazily and once.

The directory is found next to the package in a source checkout (``<repo>/rules``) and as
the package ``derive._rules`` in an installed wheel.  Rule sets are named by their file path
relative to ``rules/`` without extension (``"engine"``, ``"activations/tanh"``); an unknown
name is rejected with the list of known ones.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .errors import DeriveError, UnknownNameError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = ["rules_dir", "load_rule_file", "rule_sets", "EngineRule", "engine_rule", "engine_rules"]


@lru_cache(maxsize=1)
def rules_dir() -> Path:
    """The directory holding the rule files."""
    package = Path(__file__).resolve().parent.parent  # the derive/ folder
    for candidate in (package.parent / "rules",  # source checkout or editable install
                      package / "_rules"):        # wheel: rules/ is shipped as derive/_rules
        if (candidate / "engine.toml").is_file():
            return candidate
    raise DeriveError("cannot find the rules/ directory; reinstall derive (pip install .)")


def rule_sets() -> list[str]:
    """Names of all rule files, e.g. ``['activations/relu', ..., 'engine']``."""
    root = rules_dir()
    return sorted(str(p.relative_to(root).with_suffix("")).replace("\\", "/")
                  for p in root.rglob("*.toml"))


@lru_cache(maxsize=None)
def load_rule_file(name: str) -> dict:
    """Parse ``rules/<name>.toml`` (cached)."""
    path = rules_dir() / f"{name}.toml"
    if not path.is_file():
        raise UnknownNameError("rule set", name, rule_sets())
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise DeriveError(f"rule file {path} is not valid TOML: {exc}") from None


@dataclass(frozen=True)
class EngineRule:
    """One rule of ``rules/engine.toml``: what a derivation step cites."""

    id: str
    title: str
    statement: str
    reference: str
    latex: str


@lru_cache(maxsize=1)
def engine_rules() -> dict[str, EngineRule]:
    data = load_rule_file("engine")
    out = {}
    for entry in data.get("rule", []):
        r = EngineRule(**{k: entry[k] for k in ("id", "title", "statement", "reference", "latex")})
        if r.id in out:
            raise DeriveError(f"rules/engine.toml defines rule {r.id!r} twice")
        out[r.id] = r
    return out


def engine_rule(rule_id: str) -> EngineRule:
    """The engine rule ``rule_id``; unknown ids are rejected with the known ones."""
    rules = engine_rules()
    if rule_id not in rules:
        raise UnknownNameError("engine rule", rule_id, rules)
    return rules[rule_id]
