"""Codegen: the book-notation printer, documents, the generated numpy evaluator, the CLI."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest
import sympy as sp

import derive
from derive import MLP, DerivativeContraction, GaussianAverage, sample_indices, tensor
from derive.cli.main import main
from derive.base.errors import DeriveError
from derive.emit.printing import book_latex, latex_terms, tex_text

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("DERIVE_UPDATE_GOLDEN") == "1"  # regenerate deliberately, then review
a1, a2, a3, a4, b1, b2 = sample_indices("alpha1 alpha2 alpha3 alpha4 beta1 beta2")


# -- printer, inline cases -------------------------------------------------------------------

def test_printer_tensors_and_scalars():
    assert book_latex(tensor("K")[a2, a1]) == r"K^{(\ell)}_{\alpha_{1}\alpha_{2}}"
    assert book_latex(tensor("G1")[a1, a1]) == r"G^{\{1\}(\ell)}_{\alpha_{1}\alpha_{1}}"
    assert book_latex(tensor("V", 4, "pairs")[a3, a4, a1, a2]) == \
        r"V^{(\ell)}_{(\alpha_{1}\alpha_{2})(\alpha_{3}\alpha_{4})}"
    assert book_latex(tensor("Theta")[a1, a2], layer=r"\ell+1") == \
        r"\Theta^{(\ell+1)}_{\alpha_{1}\alpha_{2}}"
    assert book_latex(sp.Symbol("C_W") ** 2) == r"\left(C_W^{(\ell+1)}\right)^{2}"
    assert book_latex(sp.Symbol("n_lm1", positive=True)) == r"n_{\ell-1}"
    assert book_latex(sp.Symbol("lambda_b")) == r"\lambda_b^{(\ell+1)}"


def test_printer_averages_derivatives_contractions():
    zeta = derive.gaussian_field("zeta", "K", neuron=False)
    s = sp.Function("sigma")
    avg = GaussianAverage(s(zeta[a1]) * sp.diff(s(zeta[a2]), zeta[a2], 2), "K")
    assert book_latex(avg) == \
        r"\left\langle \sigma_{\alpha_{1}} \sigma''_{\alpha_{2}} \right\rangle_{K^{(\ell)}}"
    assert book_latex(sp.diff(s(zeta[a1]), zeta[a1], 4)) == r"\sigma^{(4)}_{\alpha_{1}}"
    dc = DerivativeContraction(tensor("G1")[b1, b2], [s(zeta[a1]) * s(zeta[a2])], [(b1, b2)], "K")
    assert book_latex(dc) == (
        r"\sum_{\beta_{1}\beta_{2}} G^{\{1\}(\ell)}_{\beta_{1}\beta_{2}} \left\langle "
        r"\partial_{\beta_{1}}\partial_{\beta_{2}}\!\left[\sigma_{\alpha_{1}} \sigma_{\alpha_{2}}"
        r"\right] \right\rangle_{K^{(\ell)}}")
    assert latex_terms(sp.Symbol("C_b") - 2 * sp.Symbol("C_W")) == \
        [("-", r"2 C_W^{(\ell+1)}"), ("+", r"C_b^{(\ell+1)}")]


def test_tex_text_escapes():
    assert tex_text("sum_{j != k} 50% & ε ∝ 1/n, §6") == \
        r"sum\_\{j != k\} 50\% \& $\varepsilon$ $\propto$ 1/n, \S{}6"


# -- golden documents and modules ------------------------------------------------------------

def _outputs():
    d = derive.derive(MLP(3, 16, "tanh", 0.0, 1.0))
    relu = derive.derive(MLP(3, 16, "relu", 0.0, 2.0))
    return {"derivation_tanh.tex": d.document("tex"), "derivation_tanh.md": d.document("md"),
            "recursions_tanh.tex": d.latex(), "evaluator_tanh.py": d.numpy_module(),
            "evaluator_relu.py": relu.numpy_module()}


@pytest.mark.parametrize("name", ["derivation_tanh.tex", "derivation_tanh.md", "recursions_tanh.tex",
                                  "evaluator_tanh.py", "evaluator_relu.py"])
def test_golden_files(name):
    text = _outputs_cached()[name]
    path = GOLDEN / name
    if UPDATE:
        path.write_text(text)
    assert path.read_text() == text, f"{name} changed; review and run with DERIVE_UPDATE_GOLDEN=1"


_CACHE = {}


def _outputs_cached():
    if not _CACHE:
        _CACHE.update(_outputs())
    return _CACHE


def test_document_errors():
    with pytest.raises(DeriveError, match="'tex' or 'md'"):
        derive.derive(MLP(2, 8, "tanh", 0.0, 1.0)).document("pdf")


@pytest.mark.slow
def test_outputs_identical_across_hash_seeds(tmp_path):
    code = textwrap.dedent("""
        import sys, derive
        d = derive.derive(derive.MLP(3, 16, "tanh", 0.0, 1.0))
        out = sys.argv[1]
        open(out + ".tex", "w").write(d.document("tex"))
        open(out + ".md", "w").write(d.document("md"))
        open(out + ".py", "w").write(d.numpy_module())
    """)
    for seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        subprocess.run([sys.executable, "-c", code, str(tmp_path / seed)], check=True, env=env)
    for ext in (".tex", ".md", ".py"):
        assert (tmp_path / f"0{ext}").read_bytes() == (tmp_path / f"12345{ext}").read_bytes()
        assert (tmp_path / f"0{ext}").read_bytes() == (GOLDEN / f"{'evaluator' if ext == '.py' else 'derivation'}_tanh{ext}").read_bytes()


def test_tex_compiles(tmp_path):
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex not installed (apt-get install texlive-latex-base "
                    "texlive-latex-recommended); .ci/run installs it")
    (tmp_path / "d.tex").write_text(_outputs_cached()["derivation_tanh.tex"])
    r = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "d.tex"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:]
    assert (tmp_path / "d.pdf").stat().st_size > 10_000


# -- the generated evaluator: numbers ---------------------------------------------------------

def _load(src: str) -> types.ModuleType:
    mod = types.ModuleType("generated")
    exec(compile(src, "generated", "exec"), mod.__dict__)
    return mod


def test_generated_module_imports_only_numpy_and_scipy():
    """numpy, scipy and the standard library (threads for the blocks of rows) only."""
    src = _outputs_cached()["evaluator_tanh.py"]
    imports = {line.split()[1] for line in src.splitlines() if line.startswith(("import ", "from "))}
    assert imports == {"numpy", "scipy.special", "os", "threading", "concurrent.futures"}


@pytest.mark.parametrize("act, C_b, C_W", [("tanh", 0.1, 1.2), ("relu", 0.1, 1.8), ("erf", 0.0, 0.9),
                                          ("3*Max(0, z) - Max(0, -z) + 0.2*sin(z)", 0.05, 0.25)])
def test_generated_module_matches_batched_evaluator(act, C_b, C_W):
    # the generated module against the other evaluator of the same derived forms
    # (derive.numeric.evaluate: lambdified component forms, batched adaptive quadrature), three inputs:
    # G1 on all pairs, V on every component with at most two distinct samples
    from derive.numeric.evaluate import iterate_mlp

    spec = MLP(5, [30, 20, 40, 25], act, C_b, C_W)
    mod = _load(derive.derive(spec).numpy_module())
    X = np.array([[1.0, 0.2, 0.0], [0.3, 1.0, 0.5], [-0.4, 0.1, 0.8]])
    got = mod.evaluate(X)
    ref = iterate_mlp(spec, X, order=1)
    comps = [c for c in np.ndindex(3, 3, 3, 3) if len(set(c)) <= 2]
    for l in range(1, 6):  # 1e-10, relative to the size of the quantity where that exceeds 1
        for q in ("K", "Theta", "G1"):
            scale = max(1.0, np.abs(ref[q][l]).max())
            assert np.abs(got[q][l] - ref[q][l]).max() < 1e-10 * scale, (q, l)
        V = [mod.vertex_component(got["V"][l], got["V_pairs"][l], *c) for c in comps]
        scale = max(1.0, np.abs(ref["V"][l]).max())
        assert np.abs(np.array(V) - [ref["V"][l][c] for c in comps]).max() < 1e-10 * scale, l
    diag = mod.evaluate(X, nlo="diagonal")
    for l in range(1, 6):
        assert np.abs(diag["G1"][l] - np.diagonal(got["G1"][l])).max() < 1e-14
        assert np.array_equal(diag["V"][l], got["V"][l])


def test_predict_uses_generated_module_for_g1():
    # predict's K, Θ, G1 come from the generated module (same numbers, no N⁴ array)
    spec = MLP(4, 16, "tanh", 0.1, 1.1)
    X = np.random.default_rng(3).normal(size=(5, 3))
    p = derive.predict(spec, X, targets=("K", "Theta", "G1"), warn_threshold=10)
    g = _load(derive.derive(spec).numpy_module()).evaluate(X)
    assert p.V == {} and p.G1[4].shape == (5, 5)
    assert np.array_equal(p.G1[4], g["G1"][4]) and np.array_equal(p.K[4], g["K"][4])


def _gauss_2d(C, points=120):
    """Nodes z (M × 2) and weights (M) of N(0, C) by a product Gauss–Hermite rule (test-only)."""
    t, w = np.polynomial.hermite_e.hermegauss(points)
    w = w / w.sum()
    T = np.stack(np.meshgrid(t, t, indexing="ij"), axis=-1).reshape(-1, 2)
    return T @ np.linalg.cholesky(C).T, np.outer(w, w).reshape(-1)


def test_generated_pairs_against_independent_derivative_free_forms():
    # two tanh inputs through layers 1 → 2 → 3, written here from docs/conventions.md §4 / §6 step 4 in the
    # derivative-free form (Hermite weights with P = K⁻¹), independently of derive:
    #   V3 = C_W² [<σσσσ> − <σσ><σσ>] + (C_W²/4)(n2/n1) Σ_β V2_β <σσ H_β1β2> <σσ H_β3β4>
    #   G1_3 = C_W (n2/n1) [½ Σ G1_2 <σσ H2> + ⅛ Σ_β V2_β <σσ H_β1β2β3β4>],  G1_2 = 0
    Cb, CW, n1, n2 = 0.1, 1.3, 12, 20
    spec = MLP(3, [n1, n2], "tanh", Cb, CW)
    X = np.array([[1.0, -0.5], [0.4, 0.9]])
    K1 = Cb + CW * X @ X.T / 2

    def moments(K):
        z, w = _gauss_2d(K)
        s = np.tanh(z)                                    # (M, 2)
        P = np.linalg.inv(K)
        y = z @ P
        ss = np.einsum("m,ma,mb->ab", w, s, s)
        s4 = np.einsum("m,ma,mb,mc,md->abcd", w, s, s, s, s)
        H2 = np.einsum("mi,mj->mij", y, y) - P
        yy = np.einsum("mi,mj->mij", y, y)
        H4 = (np.einsum("mi,mj,mk,ml->mijkl", y, y, y, y)
              - sum(np.einsum(f"{a},m{b}->mijkl", P, yy) for a, b in
                    (("ij", "kl"), ("ik", "jl"), ("il", "jk"), ("jk", "il"), ("jl", "ik"), ("kl", "ij")))
              + sum(np.einsum(f"{a},{b}->ijkl", P, P) for a, b in (("ij", "kl"), ("ik", "jl"), ("il", "jk")))[None])
        D2 = np.einsum("m,ma,mb,mij->abij", w, s, s, H2)  # <σ_a σ_b H_ij>
        D4 = np.einsum("m,ma,mb,mijkl->abijkl", w, s, s, H4)
        return ss, s4, D2, D4

    ss1, s41, _, _ = moments(K1)
    K2 = Cb + CW * ss1
    V2 = CW ** 2 * (s41 - np.einsum("ab,cd->abcd", ss1, ss1))
    ss2, s42, D2, D4 = moments(K2)
    K3 = Cb + CW * ss2
    V3 = CW ** 2 * (s42 - np.einsum("ab,cd->abcd", ss2, ss2)) \
        + CW ** 2 / 4 * n2 / n1 * np.einsum("ijkl,abij,cdkl->abcd", V2, D2, D2)
    G13 = CW * n2 / n1 / 8 * np.einsum("ijkl,abijkl->ab", V2, D4)
    mod = _load(derive.derive(spec).numpy_module())
    got = mod.evaluate(X)
    assert np.abs(got["K"][3] - K3).max() < 1e-10
    assert np.abs(got["G1"][3] - G13).max() < 1e-10
    assert np.abs(G13).max() > 1e-3  # not a comparison of zeros
    for c in np.ndindex(2, 2, 2, 2):
        assert mod.vertex_component(got["V"][3], got["V_pairs"][3], *c) == pytest.approx(V3[c], abs=1e-10)


def test_generated_module_against_independent_quadrature():
    # one layer step of K and Θ for tanh, against Gauss–Hermite written here (300 nodes)
    spec = MLP(2, 10, "tanh", 0.2, 1.3, lambda_b=0.5, lambda_W=2.0)
    mod = _load(derive.derive(spec, targets=["K", "Theta"], order=0).numpy_module())
    X = np.array([[1.0, -0.5], [0.4, 0.9], [-1.2, 0.3]])
    got = mod.evaluate(X, order=0)
    K1 = 0.2 + 1.3 * X @ X.T / 2
    Th1 = 0.5 + 2.0 * X @ X.T / 2
    t, w = np.polynomial.hermite_e.hermegauss(300)
    w = w / w.sum()
    for p in range(3):
        for q in range(3):
            C = K1[np.ix_([p, q], [p, q])] + 1e-300 * np.eye(2)
            s = np.sqrt(C[0, 0]); a = C[0, 1] / s; b = np.sqrt(max(C[1, 1] - a * a, 0.0))
            z1 = s * t[:, None]; z2 = a * t[:, None] + b * t[None, :]
            W = w[:, None] * w[None, :]
            ss = np.sum(W * np.tanh(z1) * np.tanh(z2))
            dd = np.sum(W / np.cosh(z1) ** 2 / np.cosh(z2) ** 2)
            assert got["K"][2][p, q] == pytest.approx(0.2 + 1.3 * ss, abs=1e-10)
            assert got["Theta"][2][p, q] == pytest.approx(0.5 + 2.0 * ss + 1.3 * dd * Th1[p, q], abs=1e-10)


def test_generated_module_bad_input():
    mod = _load(_outputs_cached()["evaluator_tanh.py"])
    with pytest.raises(ValueError, match="shape"):
        mod.evaluate(np.ones(3))
    with pytest.raises(ValueError, match="one value per layer"):
        mod.evaluate(np.ones((1, 2)), C_W=[1.0, 1.0])
    with pytest.raises(ValueError, match="nlo"):
        mod.evaluate(np.ones((1, 2)), nlo="full")
    # hyperparameters equal in every layer of the spec fit any depth
    assert sorted(mod.evaluate(np.ones((1, 2)), depth=5)["K"]) == [1, 2, 3, 4, 5]


# -- command line -------------------------------------------------------------------------------

def test_cli_demo_writes_everything(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    for name in ("derivation.tex", "derivation.md", "evaluator.py", "predictions.json", "plot.png"):
        assert (tmp_path / "demo" / name).is_file(), name
        assert name in out
    data = json.loads((tmp_path / "demo" / "predictions.json").read_text())
    assert data["spec"]["depth"] == 10 and len(data["layers"]) == 10
    spec = importlib.util.spec_from_file_location("ev", tmp_path / "demo" / "evaluator.py")
    ev = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ev)
    r = ev.evaluate(np.array(data["inputs"]))
    assert np.allclose(r["K"][10], data["layers"][9]["K"], atol=1e-10)


def test_cli_spec_files(tmp_path, capsys):
    spec = tmp_path / "net.toml"
    spec.write_text('activation = "erf"\ndepth = 3\nwidths = [20, 30]\nC_W = 0.8\n'
                    'input_gram = [[1.0, 0.3], [0.3, 0.7]]\n')
    assert main(["predict", str(spec), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    K = data["layers"][0]["K"]
    assert [round(x, 12) for row in K for x in row] == [0.8, 0.24, 0.24, 0.56]
    assert main(["derive", str(spec), "--targets", "K", "Theta", "--order", "0",
                 "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "derivation.tex").is_file()
    spec.write_text('activation = "erf"\ndepth = 3\nwidth = 20\ninputs = [[1.0]]\n')
    assert main(["predict", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "unknown key(s) ['width']" in err and "widths" in err
    assert main(["predict", str(tmp_path / "missing.toml")]) == 2
    assert "no spec file" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_in_a_fresh_venv(tmp_path):
    repo = Path(__file__).resolve().parents[1]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = venv / "bin" / "pip"
    subprocess.run([str(pip), "install", "-q", str(repo)], check=True, timeout=1200)
    r = subprocess.run([str(venv / "bin" / "derive"), "demo", "--out", str(tmp_path / "d")],
                       capture_output=True, text=True, timeout=600,
                       env={**os.environ, "MPLBACKEND": "Agg"})
    assert r.returncode == 0, r.stderr
    for name in ("derivation.tex", "derivation.md", "evaluator.py", "predictions.json"):
        assert (tmp_path / "d" / name).is_file()


def test_generated_tanh_deep_reaches_1e_10():
    # the rule ladder's error control holds through 20 layers (K and Θ), against the adaptive
    # quadrature route of derive.numeric.evaluate
    from derive.numeric.evaluate import iterate_mlp

    spec = MLP(20, 64, "tanh", 0.0, 1.0)
    X = np.random.default_rng(0).normal(size=(6, 8))
    got = _load(derive.derive(spec, targets=["K", "Theta"], order=0).numpy_module()).evaluate(X, order=0)
    ref = iterate_mlp(spec, X, order=0, targets=("K", "Theta"))
    for l in range(1, 21):  # relative to the size (Θ grows to about 9)
        for q in ("K", "Theta"):
            assert np.abs(got[q][l] - ref[q][l]).max() < 1e-10 * max(1.0, np.abs(ref[q][l]).max()), l
