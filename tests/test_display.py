"""Rich display in Jupyter: ``_repr_latex_`` / ``_repr_html_`` / ``_repr_markdown_`` of
Derivation, Prediction, Check and Trace (issue 14, item 5).

The LaTeX compiles with pdflatex inside a minimal amsmath document (skipped without pdflatex);
the HTML parses with the standard library's ``html.parser`` with balanced tags and holds the
expected numbers; the step listings name the rules.
"""
from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
import sympy as sp

import derive

#: elements without an end tag
VOID = {"br", "hr", "img", "meta", "link", "input", "col", "wbr"}


class _Balance(HTMLParser):
    def __init__(self):
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.text: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def parse_html(html: str) -> _Balance:
    """Parse ``html``; assert its tags are balanced; return the parser (``.text``, ``.tags``)."""
    assert isinstance(html, str) and html.strip()
    p = _Balance()
    p.feed(html)
    p.close()
    assert not p.errors, p.errors
    assert not p.stack, f"unclosed: {p.stack}"
    return p


def text_of(html: str) -> str:
    return " ".join(parse_html(html).text)


def compile_latex(body: str, tmp_path) -> None:
    """Compile ``body`` inside a minimal amsmath document; fail with the log on an error."""
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex not installed")
    doc = ("\\documentclass{article}\n\\usepackage{amsmath,amssymb}\n\\begin{document}\n"
           f"{body}\n\\end{{document}}\n")
    (tmp_path / "d.tex").write_text(doc, encoding="utf-8")
    r = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "d.tex"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:]
    assert (tmp_path / "d.pdf").is_file()


X2 = np.array([[1.0, 0.0], [0.5, 0.5]])


@pytest.fixture(scope="module")
def mlp():
    return derive.MLP(3, 16, "tanh", 0.0, 1.0)


@pytest.fixture(scope="module")
def res():
    return derive.ResMLP(3, 16, "tanh", 0.0, 1.0, xi=0.5, gamma=0.5)


@pytest.fixture(scope="module")
def d_mlp(mlp):
    return derive.derive(mlp)


@pytest.fixture(scope="module")
def d_res(res):
    return derive.derive(res)


# -- Derivation ----------------------------------------------------------------------------------

def test_derivation_latex_is_the_align_environment(d_mlp, tmp_path):
    tex = d_mlp._repr_latex_()
    assert tex == d_mlp.latex()
    assert tex.lstrip().startswith(r"\begin{align}") and tex.rstrip().endswith(r"\end{align}")
    for q in (r"K^{(\ell+1)}", r"\Theta^{(\ell+1)}", r"G^{\{1\}(\ell+1)}", r"V^{(\ell+1)}"):
        assert q in tex, q
    assert "zeta" not in tex
    compile_latex(tex, tmp_path)


def test_derivation_latex_of_a_residual_network(d_res, tmp_path):
    tex = d_res._repr_latex_()
    assert r"K^{(\ell+1)}" in tex and r"\Theta^{(\ell+1)}" in tex
    assert r"\xi" in tex and r"\gamma" in tex
    assert r"G^{\{1\}" not in tex  # leading order only for a skip term
    compile_latex(tex, tmp_path)


def test_derivation_html_summary(d_mlp, d_res):
    t = text_of(d_mlp._repr_html_())
    for word in ("MLP", "tanh", "multilayer perceptron", "K, V, G1, Theta", "16", "3"):
        assert word in t, word
    t = text_of(d_res._repr_html_())
    for word in ("ResMLP", "residual network", "K, Theta", "leading order"):
        assert word in t, word
    # the text form stays short (no recursions in it)
    assert len(repr(d_mlp)) < 300 and "tanh" in repr(d_mlp)


# -- Prediction ----------------------------------------------------------------------------------

def test_prediction_html_table(mlp):
    p = derive.predict(mlp, X2)
    h = parse_html(p._repr_html_())
    assert h.tags.count("tr") == 1 + mlp.depth  # header + one row per layer
    t = " ".join(h.text)
    for name in ("K", "Θ", "G", "V", "expansion"):
        assert name in t, name
    for l in (1, 2, 3):
        for q in ("K", "Theta", "G1"):
            for a in range(2):
                assert f"{getattr(p, q)[l][a, a]:.6g}" in t, (q, l, a)
        assert f"{p.V[l][1, 1, 1, 1]:.6g}" in t
        assert f"{p.expansion[l]:.3g}" in t
    assert "16" in t  # fan-in of layers 2, 3
    r = repr(p)
    assert "MLP" in r and "tanh" in r and "2 input(s)" in r and "[" not in r.split("(", 1)[1]


def test_prediction_html_is_compact_for_many_inputs(mlp):
    X = np.random.default_rng(0).normal(size=(30, 3))
    p = derive.predict(mlp, X, targets=("K", "Theta"))
    html = p._repr_html_()
    t = text_of(html)
    assert "26 more not shown" in t
    assert f"{p.K[3][3, 3]:.6g}" in t and f"{p.K[3][4, 4]:.6g}" not in t
    assert "G<sup>" not in html  # G1 not asked for: no column
    assert len(repr(p)) < 300


def test_prediction_html_of_a_residual_network(res):
    p = derive.predict(res, X2)
    h = parse_html(p._repr_html_())
    t = " ".join(h.text)
    assert "ResMLP" in t and "expansion" not in t  # no V derived: no estimate
    for l in (1, 2, 3):
        assert f"{p.K[l][0, 0]:.6g}" in t and f"{p.Theta[l][1, 1]:.6g}" in t
    assert "ResMLP" in repr(p)


# -- Check ---------------------------------------------------------------------------------------

def test_check_html_table():
    spec = derive.MLP(2, 8, "tanh", 0.0, 1.0)
    c = derive.check(spec, X2[:1], widths=(4, 8), samples=400, seed=0)
    h = parse_html(c._repr_html_())
    assert h.tags.count("tr") == 1 + len(c.fits)
    t = " ".join(h.text)
    for f in c.fits:
        assert f"{f['intercept']:.6g}" in t and f"{f['slope']:.5g}" in t
    assert "intercepts more than" in t  # the table's closing line
    assert "(11)(11)" in t and "metric" in t
    r = repr(c)
    assert len(r) < 400 and "fits" in r


# -- Trace ---------------------------------------------------------------------------------------

def test_trace_lists_the_rules(d_mlp):
    tr = d_mlp.steps_for("K")
    html = tr._repr_html_()
    h = parse_html(html)
    assert h.tags.count("tr") == 1 + len(tr)
    t = " ".join(h.text)
    md = tr._repr_markdown_()
    for s in tr:
        assert s.rule in t and s.rule in md
        assert s.info.title in t and s.reference in md
    assert md.count("\n1. ") == 0 and md.startswith("1. ")


def test_trace_markdown_formulas_compile(d_mlp, tmp_path):
    md = d_mlp.steps_for("K")._repr_markdown_()
    formulas = [line.strip()[2:-2] for line in md.splitlines() if line.strip().startswith("$$")]
    assert formulas
    compile_latex("\n".join(rf"\[ {f} \]" for f in formulas), tmp_path)


def test_empty_trace_displays():
    from derive.algebra.trace import Trace

    tr = Trace()
    parse_html(tr._repr_html_())
    assert tr._repr_markdown_()


# -- SymPy's own printer on the inert objects ---------------------------------------------------------

def test_sympy_latex_of_recursions_prints_zeta_as_a_greek_letter(d_mlp, tmp_path):
    tex = sp.latex(d_mlp.recursions["K"])
    assert "zeta" not in tex.replace(r"\zeta", "") and r"\zeta_{\alpha_{1}}" in tex
    assert r"\left\langle" in tex
    compile_latex(rf"\[ {tex} \]", tmp_path)


def test_formula_prints_readably(tmp_path):
    """``Derivation.formula(name)``: the book's LaTeX of one recursion with its left-hand side
    for Jupyter, and a text form shorter than SymPy's ``str`` with no ``Derivative(``."""
    d = derive.derive(derive.MLP(3, 16, "tanh", 0.0, 1.0), order=1)
    f = d.formula("V")
    tex = f._repr_latex_()
    assert tex.startswith("$$") and tex.rstrip().endswith("$$")
    assert r"V^{(\ell+1)}" in tex and "zeta" not in tex
    text = str(f)
    assert "Derivative(" not in text and "zeta" not in text
    assert len(text) < len(str(d.recursions["V"]))
    assert repr(f) == text and text.startswith("V^(ℓ+1)")
    assert str(d.formula("K")).startswith("K^(ℓ+1)_α₁α₂ = ")
    with pytest.raises(derive.DeriveError):
        d.formula("nope")
    compile_latex(tex, tmp_path)
