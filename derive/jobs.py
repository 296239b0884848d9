r"""The main job: derive, emit every output, evaluate, plot (``derive demo``, ``derive derive``).

:func:`run_job` writes into ``out``:

* ``derivation.tex`` — the step-by-step derivation, a complete LaTeX document;
* ``derivation.md`` — the same in Markdown;
* ``evaluator.py`` — the standalone numpy/scipy evaluator (:meth:`Derivation.numpy_module`);
* ``predictions.json`` — the numbers of :func:`derive.predict` per layer;
* ``plot.png`` — K, V/K² and Θ against depth (needs matplotlib; skipped with a note otherwise).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["run_job", "predictions_json", "predict_reporting_warnings"]


def _say(msg: str, start: float, quiet: bool) -> None:
    if not quiet:
        print(f"[{time.perf_counter() - start:6.1f} s] {msg}", flush=True)


def predict_reporting_warnings(spec, X, order, targets, progress: bool = False):
    """:func:`derive.predict`, its warnings (e.g. a large expansion parameter) printed as one
    line each on stderr instead of Python's warning format."""
    import warnings

    from .prediction import predict

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        p = predict(spec, X, order=order, targets=targets, progress=progress)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    return p


def predictions_json(p) -> dict:
    """A JSON-ready mapping of a :class:`~derive.Prediction` (spec, inputs, per-layer arrays)."""
    spec = p.spec
    layers = []
    for l in range(1, spec.depth + 1):
        row = {"layer": l, "fan_in": p.fan_in(l), "K": p.K[l].tolist()}
        if l in p.G1:
            row["G1"] = p.G1[l].tolist()
            row["metric"] = p.metric(l).tolist()
        if l in p.V:
            row["V"] = p.V[l].tolist()
        if l in p.Theta:
            row["Theta"] = p.Theta[l].tolist()
        row["expansion_estimate"] = p.expansion[l]
        layers.append(row)
    return {"spec": {"activation": spec.activation.name, "depth": spec.depth,
                     "widths": list(spec.widths),
                     "C_b": [spec.C_b(l) for l in range(1, spec.depth + 1)],
                     "C_W": [spec.C_W(l) for l in range(1, spec.depth + 1)],
                     "lambda_b": [spec.lambda_b(l) for l in range(1, spec.depth + 1)],
                     "lambda_W": [spec.lambda_W(l) for l in range(1, spec.depth + 1)]},
            "order": p.order, "inputs": p.X.tolist(), "layers": layers}


def _plot(p, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    L = p.spec.depth
    ls = np.arange(1, L + 1)
    N = p.X.shape[0]
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.8))
    for a in range(N):
        for b in range(a, N):
            ax[0].plot(ls, [p.K[l][a, b] for l in ls], "o-", ms=3, label=f"K[{a + 1},{b + 1}]")
            if p.Theta:
                ax[2].plot(ls, [p.Theta[l][a, b] for l in ls], "o-", ms=3,
                           label=f"Theta[{a + 1},{b + 1}]")
        if p.V:
            ax[1].plot(ls, [p.V[l][a, a, a, a] / p.K[l][a, a] ** 2 for l in ls], "o-", ms=3,
                       label=f"V[({a + 1}{a + 1})({a + 1}{a + 1})] / K[{a + 1},{a + 1}]^2")
    ax[0].set_title("kernel K")
    ax[1].set_title("four-point vertex V / K^2")
    ax[2].set_title("NTK mean Theta (leading order)")
    for a in ax:
        a.set_xlabel("layer")
        if a.has_data():
            a.legend(fontsize=7)
    fig.suptitle(f"{p.spec.activation.name} MLP, widths {p.spec.widths[0] if p.spec.widths else '-'}")
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return True


def run_job(spec, X, targets=("K", "V", "G1", "Theta"), order: int = 1, out=".",
            quiet: bool = False) -> dict:
    """Derive, write the documents and the evaluator, predict and plot; returns {name: path}."""
    from .derivation import derive

    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _say(f"deriving {', '.join(targets)} to order {order} in 1/n (THEORY §6) …", start, quiet)
    d = derive(spec, targets=targets, order=order)
    written = {}
    _say("writing derivation.tex, derivation.md …", start, quiet)
    for fmt in ("tex", "md"):
        path = out / f"derivation.{fmt}"
        path.write_text(d.document(fmt))
        written[f"derivation.{fmt}"] = path
    _say("generating evaluator.py …", start, quiet)
    path = out / "evaluator.py"
    path.write_text(d.numpy_module())
    written["evaluator.py"] = path
    _say(f"evaluating the recursions for {X.shape[0]} input(s) through {spec.depth} layers …",
         start, quiet)
    p = predict_reporting_warnings(spec, X, order, targets)
    path = out / "predictions.json"
    path.write_text(json.dumps(predictions_json(p), indent=1) + "\n")
    written["predictions.json"] = path
    path = out / "plot.png"
    if _plot(p, path):
        written["plot.png"] = path
    elif not quiet:
        print("note: matplotlib is not installed, no plot.png (pip install 'derive[plot]')")
    _say("done", start, quiet)
    return written
