"""docs/conventions.md, the page every output cites, against the one notation table
(rules/notation.toml), derive's declared quantities and the engine's rules: they must agree."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from derive.base.rules import load_rule_file
from derive.derivation.quantities import TARGETS

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "conventions.md"
NOT_DERIVED = "not derived yet"


def _page() -> str:
    return PAGE.read_text(encoding="utf-8")


def _table(text: str, header: str) -> list[list[str]]:
    """The rows (cells stripped) of the Markdown table whose header row starts with ``header``."""
    lines = text.splitlines()
    for at, line in enumerate(lines):
        if line.startswith("|") and line.strip("| ").startswith(header):
            rows = []
            for row in lines[at + 2:]:
                if not row.startswith("|"):
                    break
                rows.append([c.strip() for c in row.strip().strip("|").split("|")])
            return rows
    raise AssertionError(f"{PAGE.name} has no table whose header starts with {header!r}")


def _code_name(cell: str) -> str:
    m = re.fullmatch(r"`([^`]+)`", cell)
    return m.group(1) if m else cell


def _page_latex(latex: str) -> str:
    """The head of a notation.toml ``latex`` as the page writes it: <layer> → \\ell,
    <next> → \\ell+1, <f> → f, cut before the first sample/neuron index placeholder."""
    for idx in ("_{<idx>}", "_{<neu>", "<idx>", "<neu>"):
        if idx in latex:
            latex = latex[:latex.index(idx)]
    return (latex.replace("<layer>", r"\ell").replace("<next>", r"\ell+1")
            .replace("<f>", "f"))


def _notation_entries() -> list[tuple[str, str, str]]:
    """(kind, code name, page LaTeX) for every entry of rules/notation.toml."""
    table = load_rule_file("notation")
    entries = [(kind, e["name"], _page_latex(e["latex"]))
               for kind in ("tensor", "scalar", "field", "function") for e in table[kind]]
    entries.append(("average", "average", _page_latex(table["average"]["latex"])))
    return entries


def _notation_rows() -> dict[str, list[str]]:
    return {_code_name(r[0]): r for r in _table(_page(), "code name")}


def _latex_cell(cell: str) -> str:
    m = re.fullmatch(r"\$(.*)\$", cell)
    assert m, f"the LaTeX cell {cell!r} of {PAGE.name} is not $…$"
    return m.group(1)


@pytest.mark.parametrize("kind, name, latex", _notation_entries(),
                         ids=lambda v: v if isinstance(v, str) else None)
def test_every_notation_entry_is_on_the_page(kind, name, latex):
    rows = _notation_rows()
    assert name in rows, f"rules/notation.toml's {kind} {name!r} is missing from §11 of {PAGE.name}"
    row = rows[name]
    if kind != "average":
        assert row[1] == kind, f"{name}: the page says {row[1]!r}, rules/notation.toml {kind!r}"
    assert _latex_cell(row[2]) == latex, (
        f"{name}: the page writes ${_latex_cell(row[2])}$, rules/notation.toml {latex!r}")


def test_the_notation_table_lists_nothing_else():
    names = {name for _, name, _ in _notation_entries()}
    extra = set(_notation_rows()) - names
    assert not extra, f"§11 of {PAGE.name} lists {sorted(extra)}, not in rules/notation.toml"


def test_every_listed_quantity_exists_or_is_marked():
    rows = _table(_page(), "quantity")
    assert rows, "the quantities table of §3 is empty"
    tensors = {e["name"] for e in load_rule_file("notation")["tensor"]}
    scalars = {e["name"] for e in load_rule_file("notation")["scalar"]}
    for row in rows:
        name, status = _code_name(row[0]), row[-1]
        if NOT_DERIVED in status:
            assert name not in TARGETS, f"{name} is derived (TARGETS), not {NOT_DERIVED!r}"
            continue
        assert name in tensors | scalars | set(TARGETS) or name == "G", (
            f"the page lists {name!r}, neither in rules/notation.toml nor in "
            f"derive.derivation.quantities.TARGETS; mark it {NOT_DERIVED!r}")
        if name in tensors:
            assert name in TARGETS, (
                f"the page says {name} is derived ({status!r}), but derive.derivation.quantities."
                f"TARGETS does not declare it; mark it {NOT_DERIVED!r}")
        if name in TARGETS:
            assert TARGETS[name][1] in row[1], (
                f"{name}: the page writes {row[1]}, derive declares {TARGETS[name][1]}")
            assert status.startswith("yes"), f"{name} is derived (TARGETS), the page says {status!r}"


def test_every_derived_quantity_is_listed():
    listed = {_code_name(r[0]) for r in _table(_page(), "quantity")}
    missing = set(TARGETS) - listed
    assert not missing, f"derive derives {sorted(missing)}, which §3 of {PAGE.name} does not list"


def test_every_engine_rule_is_named_in_the_method():
    text = _page()
    method = text[text.index("(conventions-derivation)="):text.index("(conventions-reality)=")]
    for rule in load_rule_file("engine")["rule"]:
        assert f"`{rule['id']}`" in method, f"rule {rule['id']} is not named in §6 of {PAGE.name}"


def test_sections_are_numbered_and_labelled():
    text = _page()
    heads = re.findall(r"^\((conventions-[a-z-]+)\)=\n## §(\d+) ", text, flags=re.M)
    numbers = [int(n) for _, n in heads]
    assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) >= 10, numbers
    # every "docs/conventions.md §N" cited by the package, the rules and the templates exists
    cited = set()
    for folder in ("derive", "rules", "templates"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in (".py", ".toml", ".j2"):
                cited |= {int(n) for n in re.findall(r"docs/conventions\.md §(\d+)",
                                                     path.read_text(encoding="utf-8"))}
    assert cited <= set(numbers), f"cited sections {sorted(cited - set(numbers))} do not exist"
