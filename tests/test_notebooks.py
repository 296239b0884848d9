"""Execute every notebook under notebooks/ (each asserts its own results in plain cells).

The notebooks are found by glob, so a new ``notebooks/chNN_*.ipynb`` is picked up without
editing this file.  Each one runs with nbclient in a temporary working directory, on a kernel
that is guaranteed to be *this* interpreter importing *this* ``derive``:

* the kernel spec is written for the test into a private directory, with ``argv[0] =
  sys.executable`` and searched alone (``KernelSpecManager(kernel_dirs=[...])``).  The usual
  ``kernel_name="python3"`` would take the first ``python3`` spec on the Jupyter path, and a
  user-level spec (``ipykernel install --user``) made from another environment wins over the
  one shipped in this venv;
* the directory holding the ``derive`` package that pytest imported is put first on the
  kernel's ``PYTHONPATH`` (source tree or installed copy alike);
* ``MPLBACKEND=Agg`` (no display) and one BLAS thread.
"""
from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402  (after the skips)
from jupyter_client.manager import AsyncKernelManager  # noqa: E402

import derive  # noqa: E402

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
KERNEL = "derive-tests"
CELL_TIMEOUT = 300  # seconds, per cell
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # colour codes in IPython tracebacks


def _kernel_env() -> dict[str, str]:
    package_root = str(Path(derive.__file__).resolve().parent.parent)
    path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p)
    return {"MPLBACKEND": "Agg", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": path}


@pytest.fixture(scope="module")
def kernel_specs(tmp_path_factory) -> KernelSpecManager:
    root = tmp_path_factory.mktemp("kernels")
    (root / KERNEL).mkdir()
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": f"derive tests ({sys.executable})", "language": "python",
            "env": _kernel_env()}
    (root / KERNEL / "kernel.json").write_text(json.dumps(spec, indent=1))
    return KernelSpecManager(kernel_dirs=[str(root)], ensure_native_kernel=False)


def _execute(nb, workdir: Path, kernel_specs: KernelSpecManager):
    """Run ``nb`` in place in ``workdir``; a failing cell fails the test with its traceback."""
    km = AsyncKernelManager(kernel_name=KERNEL, kernel_spec_manager=kernel_specs)
    client = nbclient.NotebookClient(nb, km=km, timeout=CELL_TIMEOUT, kernel_name=KERNEL,
                                     resources={"metadata": {"path": str(workdir)}})
    failure = None
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as exc:  # carries the cell source and traceback
        failure = _ANSI.sub("", str(exc))
    if failure is not None:  # failed outside the except block: no chained, coloured copy
        pytest.fail(failure, pytrace=False)
    return nb


@pytest.mark.slow
@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, kernel_specs):
    work = tmp_path / path.name
    work.write_bytes(path.read_bytes())  # a private copy: the stored notebook is never touched
    nb = _execute(nbformat.read(work, as_version=4), tmp_path, kernel_specs)
    errors = [out for cell in nb.cells if cell.cell_type == "code"
              for out in cell.get("outputs", []) if out.get("output_type") == "error"]
    assert not errors, f"{path.name}: {[e.get('ename') for e in errors]}"


@pytest.mark.slow
@pytest.mark.notebook
def test_kernel_is_this_interpreter(tmp_path, kernel_specs):
    code = ("import sys, os, derive, matplotlib\n"
            "print(sys.executable); print(derive.__file__); print(matplotlib.get_backend())")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    nb = _execute(nb, tmp_path, kernel_specs)
    lines = "".join(o.get("text", "") for o in nb.cells[0].outputs).split()
    assert Path(lines[0]).resolve() == Path(sys.executable).resolve()
    assert Path(lines[1]).resolve() == Path(derive.__file__).resolve()
    assert lines[2].lower() == "agg"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_stored_without_outputs(path):
    """Notebooks are committed with cleared outputs so that diffs stay reviewable."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for k, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert not cell.get("outputs") and cell.get("execution_count") is None, \
                f"{path.name}: cell {k} holds stored output"


def test_notebooks_exist():
    assert any(p.name.startswith("ch01_") for p in NOTEBOOKS)
