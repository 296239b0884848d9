r"""Network specs as TOML files (``derive derive SPEC.toml``, ``derive predict SPEC.toml``).

Keys (all optional except ``activation`` and ``depth``)::

    activation = "tanh"          # a known name or a SymPy string in z
    depth = 10
    widths = 64                  # one number, or the depth-1 hidden widths
    C_b = 0.0                    # a number or one value per layer
    C_W = 1.0
    lambda_b = 1.0
    lambda_W = 1.0
    inputs = [[1.0, 0.5, -0.3], [0.2, -1.0, 0.4]]   # N × n_0
    # or, instead of inputs, the input Gram matrix G0_{ab} = x_a·x_b / n_0:
    # input_gram = [[1.0, 0.3], [0.3, 0.8]]
    targets = ["K", "V", "G1", "Theta"]
    order = 1

Unknown keys are refused with the list of known ones.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from .errors import DeriveError
from .spec import MLP

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["KNOWN_KEYS", "load_spec", "spec_from_mapping", "DEMO"]

KNOWN_KEYS = ("activation", "depth", "widths", "C_b", "C_W", "lambda_b", "lambda_W", "inputs",
              "input_gram", "targets", "order")

#: the built-in default example: tanh at criticality, depth 10, width 64, two inputs
DEMO = {"activation": "tanh", "depth": 10, "widths": 64, "C_b": 0.0, "C_W": 1.0,
        "inputs": [[1.0, 0.5, -0.3], [0.2, -1.0, 0.4]], "targets": ["K", "V", "G1", "Theta"],
        "order": 1}


def spec_from_mapping(data: dict, where: str = "spec") -> tuple[MLP, np.ndarray, tuple, int]:
    """(MLP, inputs X, targets, order) from a mapping with the keys above."""
    unknown = sorted(set(data) - set(KNOWN_KEYS))
    if unknown:
        raise DeriveError(f"{where}: unknown key(s) {unknown}; known keys are {list(KNOWN_KEYS)}")
    for key in ("activation", "depth"):
        if key not in data:
            raise DeriveError(f"{where}: the key {key!r} is required (known keys: {list(KNOWN_KEYS)})")
    kw = {k: data[k] for k in ("C_b", "C_W", "lambda_b", "lambda_W") if k in data}
    spec = MLP(data["depth"], data.get("widths", 64), data["activation"],
               kw.pop("C_b", 0.0), kw.pop("C_W", 1.0), **kw)
    if "inputs" in data and "input_gram" in data:
        raise DeriveError(f"{where}: give either 'inputs' or 'input_gram', not both")
    if "inputs" in data:
        X = np.asarray(data["inputs"], dtype=float)
    elif "input_gram" in data:
        G = np.asarray(data["input_gram"], dtype=float)
        if G.ndim != 2 or G.shape[0] != G.shape[1] or not np.allclose(G, G.T):
            raise DeriveError(f"{where}: input_gram must be a symmetric N × N matrix")
        w, U = np.linalg.eigh(G)
        if w.min() < -1e-12 * max(1.0, abs(w).max()):
            raise DeriveError(f"{where}: input_gram is not positive semi-definite "
                              f"(eigenvalue {w.min():.3g})")
        # X Xᵀ / n_0 = G with n_0 = N
        X = U * np.sqrt(np.clip(w, 0, None) * len(w))
    else:
        raise DeriveError(f"{where}: give the inputs ('inputs' = N × n_0, or 'input_gram')")
    if X.ndim != 2 or X.size == 0 or not np.all(np.isfinite(X)):
        raise DeriveError(f"{where}: inputs must be a finite N × n_0 array, got shape {X.shape}")
    targets = tuple(data.get("targets", ("K", "V", "G1", "Theta")))
    order = data.get("order", 1 if any(t in ("G1", "V") for t in targets) else 0)
    return spec, X, targets, order


def load_spec(path) -> tuple[MLP, np.ndarray, tuple, int]:
    """Read a spec file (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise DeriveError(f"no spec file {path}")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise DeriveError(f"{path} is not valid TOML: {err}") from None
    return spec_from_mapping(data, str(path))
