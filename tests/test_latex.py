"""The derivation document as a theorist would print it (issue 14, item 3): it compiles with
pdflatex with no line running off the page, rule statements are typeset once in math (no
text-mode ``<``/``>`` turning into ¡/¿), the forward equation is stated before step 1, the plan
names its nodes unambiguously, and ``--pdf`` compiles it.  Skipped without pdflatex."""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest

import derive
from derive.emit.printing import latex_terms, latex_width, LINE_WIDTH

needs_tex = pytest.mark.skipif(shutil.which("pdflatex") is None or shutil.which("pdftotext") is None,
                               reason="pdflatex/pdftotext not installed")

SPECS = {
    "tanh": lambda: derive.derive(derive.MLP(10, 64, "tanh", 0.0, 1.0), order=1),
    "relu": lambda: derive.derive(derive.MLP(4, 32, "relu", 0.0, 2.0), order=1),
    "user_sigma": lambda: derive.derive(derive.MLP(4, 32, "Max(0, z) - 0.1*Max(0, -z)", 0.0, 2.0),
                                        order=1),
    "unequal": lambda: derive.derive(derive.MLP(4, [16, 32, 64], "tanh", 0.0, 1.0), order=1),
    "residual": lambda: derive.derive(derive.ResMLP(4, 32, "tanh", 0.0, 1.0, xi=1.0, gamma=0.5)),
}


def _compile(tex: str, folder) -> tuple[str, str]:
    (folder / "derivation.tex").write_text(tex)
    run = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error",
                          "derivation.tex"], cwd=folder, capture_output=True, timeout=300)
    log = (folder / "derivation.log").read_text(errors="replace")
    assert run.returncode == 0, log[-3000:]
    text = subprocess.run(["pdftotext", str(folder / "derivation.pdf"), "-"],
                          capture_output=True, text=True, check=True).stdout
    return log, text


@needs_tex
@pytest.mark.parametrize("name", sorted(SPECS))
def test_document_compiles_without_overfull_boxes(name, tmp_path):
    log, text = _compile(SPECS[name]().document("tex"), tmp_path)
    overfull = [line for line in log.splitlines() if line.startswith("Overfull \\hbox")]
    assert overfull == [], overfull
    assert "¡" not in text and "¿" not in text


def test_forward_equation_before_step_one():
    d = SPECS["tanh"]()
    for fmt in ("tex", "md"):
        doc = d.document(fmt)
        start = doc.index("Starting point")
        eq = doc.index(r"z^{(\ell+1)}_{i;\alpha} = \sum_{j=1}^{n_{\ell}}")
        first_step = doc.index("Linearity of the expectation")
        assert start < eq < first_step
        assert r"\mathbb{E}\left[z^{(\ell+1)}_{i_{1};\alpha_{1}}" in doc[start:first_step]


def test_no_ascii_statement_in_tex():
    doc = SPECS["tanh"]().document("tex")
    assert "<f>_K" not in doc and "sum_j" not in doc


def test_plan_has_unambiguous_labels():
    d = SPECS["tanh"]()
    doc = d.document("tex")
    plan = doc[doc.index(r"\section*{Plan}"):]
    assert "G11" not in plan and "G110" not in plan and "Theta1" not in plan
    assert r"$G^{\{1\}(10)}$ & $K^{(9)}$, $G^{\{1\}(9)}$, $V^{(9)}$" in plan
    assert r"$G^{\{1\}(1)}$ & the inputs $x$" in plan


def test_shared_steps_cited_once():
    doc = SPECS["tanh"]().document("tex")
    g1 = doc[doc.index(r"\subsection*{NLO metric correction ($G^{\{1\}(\ell)}$): steps}"):]
    g1 = g1[:g1.index(r"\subsection*", 10)]
    assert "Steps 1--3 are those of the kernel" in g1
    assert "Linearity of the expectation" not in g1


def test_long_terms_are_broken():
    import sympy as sp

    d = SPECS["tanh"]()
    widest = 0.0
    for s in d.steps_for("V"):
        parts = list(s.after) if isinstance(s.after, sp.Tuple) else [s.after]
        for part in parts:
            for _, term in latex_terms(part):
                for line in term.split("\\\\\n"):
                    widest = max(widest, latex_width(line.replace(r"&\qquad\qquad", "")))
    assert widest <= LINE_WIDTH


@needs_tex
def test_cli_pdf(tmp_path, capsys):
    from derive.cli.main import main

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--pdf"]) == 0
    assert (out / "derivation.pdf").is_file()
    assert "derivation.pdf" in capsys.readouterr().out
    # staged with the other files and recorded in the manifest: no stray .aux/.log, and the
    # same command again (or without --pdf) replaces the set without --force
    import json

    assert "derivation.pdf" in json.loads((out / "derive-manifest.json").read_text())["files"]
    assert not list(out.glob("*.aux")) and not list(out.glob("*.log"))
    assert main(["demo", "--out", str(out), "--pdf"]) == 0
    assert main(["demo", "--out", str(out)]) == 0
    assert not (out / "derivation.pdf").exists()


def test_cli_pdf_without_pdflatex(tmp_path, capsys, monkeypatch):
    from derive.cli.main import main

    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--pdf"]) == 0
    assert not (out / "derivation.pdf").exists()
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if "pdflatex" in line]
    assert len(said) == 1 and "pdflatex is not on PATH" in said[0]
