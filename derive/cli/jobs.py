r"""The main job: derive, emit every output, evaluate, plot (``derive demo``, ``derive derive``).

:func:`run_job` writes into ``out``:

* ``derivation.tex`` — the step-by-step derivation, a complete LaTeX document;
* ``derivation.md`` — the same in Markdown;
* ``evaluator.py`` — the standalone numpy/scipy evaluator (:meth:`Derivation.numpy_module`);
* ``predictions.json`` — the numbers of :func:`derive.predict` per layer, with the spec and the
  derive version;
* ``plot.png`` — K, V/(n_{ℓ−1}K²), G1/(n_{ℓ−1}K) and Θ against depth, with the asymptotic
  reference curves at criticality (:func:`derive.reality.plots.prediction_figure`; needs
  matplotlib; skipped with a note otherwise; its PNG text fields hold the derive version and
  the spec);
* ``derive-manifest.json`` — derive version, command, spec and the sha256 of every file.

The files are staged next to ``out`` and moved into place together once all are written
(:mod:`derive.cli.outputs`): ``out`` is checked before the derivation starts, a run killed part-way
leaves the previous complete set, and files a user edited or derive did not write are not
replaced unless ``force=True``.  The same run twice writes byte-identical files.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from ..base.errors import DeriveError
from ..derivation.quantities import NNLO, NTK_FOUR

__all__ = ["run_job", "predictions_json", "predict_reporting_warnings", "spec_json", "JOB_FILES"]

#: the files :func:`run_job` writes (besides the manifest)
JOB_FILES = ("derivation.tex", "derivation.md", "evaluator.py", "predictions.json", "plot.png")


def _say(msg: str, start: float, quiet: bool) -> None:
    if not quiet:
        print(f"[{time.perf_counter() - start:6.1f} s] {msg}", flush=True)


def predict_reporting_warnings(spec, X, order, targets, progress: bool = False, tol=None):
    """:func:`derive.predict`, its warnings (e.g. a large expansion parameter) printed as one
    line each on stderr instead of Python's warning format."""
    import warnings

    from ..numeric.prediction import predict

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        p = predict(spec, X, order=order, targets=targets, progress=progress, tol=tol)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    return p


def spec_json(spec, X=None, targets=None, order=None) -> dict:
    """The spec as JSON-ready data: activation, depth, widths, per-layer C_b, C_W, lambda_b,
    lambda_W, and (when given) inputs, targets and order."""
    layers = range(1, spec.depth + 1)
    data = {"activation": spec.activation.name, "depth": spec.depth, "widths": list(spec.widths),
            "C_b": [spec.C_b(l) for l in layers], "C_W": [spec.C_W(l) for l in layers],
            "lambda_b": [spec.lambda_b(l) for l in layers],
            "lambda_W": [spec.lambda_W(l) for l in layers]}
    eq = spec.equation
    if eq.name != "mlp":  # the layer equation of layers 2 … L and its scalars there
        data["layer_equation"] = eq.description
        data["scalars"] = {str(sym): [spec.scalar_values(l)[k] for l in layers if l >= 2]
                           for k, sym in enumerate(eq.scalars)}
    if X is not None:
        data["inputs"] = np.asarray(X, dtype=float).tolist()
    if targets is not None:
        data["targets"] = list(targets)
    if order is not None:
        data["order"] = int(order)
    return data


def predictions_json(p) -> dict:
    """A JSON-ready mapping of a :class:`~derive.Prediction` (derive version, spec, inputs,
    per-layer arrays)."""
    from .. import __version__

    spec = p.spec
    layers = []
    for l in range(1, spec.depth + 1):
        row = {"layer": l, "fan_in": p.fan_in(l), "K": p.K[l].tolist()}
        if l in p.G1:
            row["G1"] = p.G1[l].tolist()
            if p.order < 2 or l in p.G2:  # to the order of the prediction
                row["metric"] = p.metric(l).tolist()
        if l in p.V:
            row["V"] = p.V[l].tolist()
        if l in p.Theta:
            row["Theta"] = p.Theta[l].tolist()
        if l in p.H1:
            row["H1"] = p.H1[l].tolist()
            if l in p.Theta:
                row["ntk_mean"] = p.ntk_mean(l).tolist()
        for q in NTK_FOUR + NNLO:  # B and F in the order of their names (§3)
            if l in getattr(p, q):
                row[q] = np.asarray(getattr(p, q)[l]).tolist()
        if l in p.expansion:  # no estimate without a derived V (a skip term)
            row["expansion_estimate"] = p.expansion[l]
        layers.append(row)
    return {"derive_version": __version__, "spec": spec_json(spec), "order": p.order,
            "inputs": p.X.tolist(), "layers": layers}


def _plot(p, path: Path) -> bool:
    """plot.png: :func:`derive.reality.plots.prediction_figure`; False without matplotlib."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    from .. import __version__
    from ..reality.plots import prediction_figure, save

    fig = prediction_figure(p)
    # no matplotlib version or time stamp (the same run writes the same bytes); the derive
    # version and the spec instead, so that a stale plot is recognisable on its own
    spec = json.dumps(spec_json(p.spec, p.X, order=p.order), separators=(",", ":"))
    save(fig, path, metadata={"Software": f"derive {__version__}", "Description": f"spec {spec}"})
    return True


def run_job(spec, X, targets=("K", "V", "G1", "Theta"), order: int = 1, out="derive-out",
            quiet: bool = False, force: bool = False, command=None, pdf: bool = False) -> dict:
    """Derive, write the documents and the evaluator, predict and plot into ``out`` (staged,
    then moved into place together: see the module docstring); returns {name: path}.
    ``out`` is checked before anything is computed; ``force`` replaces files of ``out`` that a
    user edited or derive did not write; ``command`` (argv) is recorded in the manifest;
    ``pdf`` also compiles derivation.pdf (staged and recorded like every other file)."""
    from ..derivation.derivation import derive
    from .outputs import OutputDir

    start = time.perf_counter()
    X = np.asarray(X, dtype=float)
    outdir = OutputDir(out, force=force, command=command,
                       planned=JOB_FILES + (("derivation.pdf",) if pdf else ()),
                       spec=spec_json(spec, X, targets, order))
    with outdir:
        _say(f"deriving {', '.join(targets)} to order {order} in 1/n (docs/conventions.md §6) …", start, quiet)
        d = derive(spec, targets=targets, order=order)
        _say("writing derivation.tex, derivation.md …", start, quiet)
        for fmt in ("tex", "md"):
            outdir.write_text(f"derivation.{fmt}", d.document(fmt))
        if pdf:
            data = compile_pdf(d.document("tex"))
            if data is not None:
                outdir.write_bytes("derivation.pdf", data)
        _say("generating evaluator.py …", start, quiet)
        outdir.write_text("evaluator.py", d.numpy_module())
        _say(f"evaluating the recursions for {X.shape[0]} input(s) through {spec.depth} layers …",
             start, quiet)
        p = predict_reporting_warnings(spec, X, order, targets, progress=not quiet)
        outdir.write_text("predictions.json", json.dumps(predictions_json(p), indent=1) + "\n")
        if not _plot(p, outdir.file("plot.png")) and not quiet:
            print("note: matplotlib is not installed, no plot.png (pip install 'derive[plot]')")
        written = outdir.commit()
    _say("done", start, quiet)
    return written


def compile_pdf(tex: str) -> bytes | None:
    """The PDF of the LaTeX document ``tex``, compiled by pdflatex in a scratch folder (its
    .aux and .log stay there); None, with one line on stderr, when pdflatex is not on PATH; a
    DeriveError (with the end of the log) when it does not compile."""
    import shutil
    import subprocess
    import tempfile

    exe = shutil.which("pdflatex")
    if exe is None:
        print("derive: --pdf: pdflatex is not on PATH, so derivation.pdf was not made "
              "(compile derivation.tex with any LaTeX installation)", file=sys.stderr)
        return None
    with tempfile.TemporaryDirectory(prefix="derive-pdf-") as tmp:
        src = Path(tmp) / "derivation.tex"
        src.write_text(tex, encoding="utf-8")
        try:
            run = subprocess.run([exe, "-interaction=nonstopmode", "-halt-on-error", src.name],
                                 cwd=tmp, stdin=subprocess.DEVNULL, capture_output=True,
                                 timeout=300)
        except subprocess.TimeoutExpired:
            raise DeriveError("--pdf: pdflatex took more than 300 s on derivation.tex") from None
        out = src.with_suffix(".pdf")
        if run.returncode != 0 or not out.is_file():
            log = src.with_suffix(".log")
            tail = log.read_text(errors="replace")[-600:] if log.is_file() else ""
            raise DeriveError(f"--pdf: pdflatex could not compile derivation.tex (exit "
                              f"{run.returncode}); the end of its log:\n{tail}")
        return out.read_bytes()
