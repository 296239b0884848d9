"""Sphinx configuration for the derive documentation (Sphinx + MyST-NB).

Two things are produced at build time and never committed (see .gitignore):

* ``docs/notebooks/`` — copies of ``../notebooks/*.ipynb`` with their outputs stripped, which
  MyST-NB executes during the build (a notebook that raises fails the build);
* ``docs/_generated/`` — derivation documents written by ``derive.derive(spec).document("md")``
  for the specs of the gallery page.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MPLBACKEND", "Agg")

import derive  # noqa: E402

project = "derive"
author = "derive contributors"
copyright = "derive contributors"
release = version = derive.__version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]
html_theme = "alabaster"
html_title = f"derive {release}"

myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_heading_anchors = 3

# the chapter notebooks are executed at build time; an error in one fails the build
nb_execution_mode = "force"
nb_execution_timeout = 300
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": False}
napoleon_numpy_docstring = True
napoleon_google_docstring = False


def _copy_notebooks() -> None:
    """docs/notebooks/ ← ../notebooks/*.ipynb, outputs stripped (MyST-NB executes them)."""
    import nbformat

    src, dst = ROOT / "notebooks", DOCS / "notebooks"
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir()
    for path in sorted(src.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
        nbformat.write(nb, dst / path.name)


GALLERY = {
    "tanh_mlp": ('derive.MLP(depth=6, widths=64, activation="tanh", C_b=0.0, C_W=1.0)',
                 ["K", "V", "G1", "Theta"], 1),
    "relu_mlp": ('derive.MLP(depth=6, widths=64, activation="relu", C_b=0.0, C_W=2.0)',
                 ["K", "V", "G1", "Theta"], 1),
    "residual_tanh": ('derive.ResMLP(depth=6, widths=64, activation="tanh", C_b=0.0, C_W=1.0, '
                      "xi=1.0, gamma=0.5)", ["K", "Theta"], 0),
}


def _generate_gallery() -> None:
    """docs/_generated/<name>.md: the step-by-step derivation document of each gallery spec."""
    out = DOCS / "_generated"
    out.mkdir(exist_ok=True)
    for name, (code, targets, order) in GALLERY.items():
        spec = eval(code, {"derive": derive})  # our own constant strings, not user input
        doc = derive.derive(spec, targets=targets, order=order).document("md")
        title, _, body = doc.partition("\n")
        how = (f"```python\nspec = {code}\n"
               f"d = derive.derive(spec, targets={targets!r}, order={order})\n"
               f"d.document(\"md\")\n```\n")
        text = f"{title}\n\n{how}\n{body}"
        path = out / f"{name}.md"
        if not path.exists() or path.read_text() != text:
            path.write_text(text)


_copy_notebooks()
_generate_gallery()
