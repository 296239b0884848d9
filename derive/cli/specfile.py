r"""Network specs as TOML files (``derive derive SPEC.toml``, ``derive predict SPEC.toml``).

Keys (all optional except ``activation`` and ``depth``)::

    activation = "tanh"          # a known name or a SymPy string in z
    depth = 10                   # 1 … 10000 layers
    widths = 64                  # one number, or the depth-1 hidden widths
    C_b = 0.0                    # a number or one value per layer
    C_W = 1.0
    lambda_b = 1.0
    lambda_W = 1.0
    inputs = [[1.0, 0.5, -0.3], [0.2, -1.0, 0.4]]   # N × n_0
    # or, instead of inputs, the input Gram matrix G0_{ab} = x_a·x_b / n_0:
    # input_gram = [[1.0, 0.3], [0.3, 0.8]]
    targets = ["K", "V", "G1", "Theta"]
    # the NTK's O(1/n) statistics too: "H1", "A", "B", "D", "F" (docs/conventions.md §3);
    # the O(1/n²) ones: "G2", "V1", "U" (order 2, docs/conventions.md §10)
    order = 1                    # 0, 1 or 2; default: the highest order a target enters at
    # the architecture (default "mlp"):
    # architecture = "residual"  # z' = xi z + gamma (b + W sigma(z)), docs/conventions.md §8
    # xi = 1.0                   # residual only: a number or one value per layer 2 … L
    # gamma = 0.5
    # or a forward equation of one's own (read by the safe parser), with its scalars:
    # forward = "a*z[i] + c*(b[i] + sum_j(W[i,j]*sigma(z[j])))"
    # scalars = { a = 1.0, c = [0.5, 0.4] }
    # gradient descent for `derive check --train` (the inputs above are the training inputs;
    # targets one per input for one output neuron, or one row per input for several, e.g.
    # targets = [[0.5, 0.1], [-0.5, 0.2]]):
    # train = { targets = [0.5, -0.5], test_inputs = [[0.6, 0.6, 0.1]], eta = 0.1, steps = 16 }

With a skip term (xi ≠ 0, or a*z[i] in a forward equation) only the leading order (K, Θ) is
derived: the default targets are then K and Θ, and G1, V or order 1 are refused with the reason.

A spec file is user input: every value is checked before anything is computed, and a bad
one stops with a :class:`~derive.base.errors.DeriveError` that names the key and says what to write
instead (unknown keys, ragged or non-numeric ``inputs``, NaN/inf, unknown targets, an order
other than 0, 1 or 2, a depth beyond :data:`MAX_DEPTH`, ...).  ``targets`` and ``order`` given on
the command line override the file's (:func:`load_spec`); when the order is given nowhere it
follows the final targets.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

from ..architectures.mlp import MAX_DEPTH, MLP
from ..base.errors import DeriveError
from ..derivation.quantities import TARGETS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["KNOWN_KEYS", "KNOWN_TARGETS", "MAX_DEPTH", "load_spec", "load_mapping",
           "spec_from_mapping", "check_targets", "default_order", "train_settings", "DEMO",
           "DEMO_TRAIN"]

KNOWN_KEYS = ("activation", "depth", "widths", "C_b", "C_W", "lambda_b", "lambda_W", "inputs",
              "input_gram", "targets", "order", "architecture", "xi", "gamma", "forward", "scalars",
              "train")
#: the keys of the ``train`` table
TRAIN_KEYS = ("targets", "test_inputs", "eta", "steps")
#: the ``architecture`` key's values
ARCHITECTURES = ("mlp", "residual")

#: the quantities derive can derive and evaluate (the ``targets`` key, ``--targets``): the
#: declarations of derive.derivation.quantities, in the planner's order
KNOWN_TARGETS = tuple(TARGETS)

#: the built-in default example: tanh at criticality, depth 10, width 64, two inputs
DEMO = {"activation": "tanh", "depth": 10, "widths": 64, "C_b": 0.0, "C_W": 1.0,
        "inputs": [[1.0, 0.5, -0.3], [0.2, -1.0, 0.4]], "targets": ["K", "V", "G1", "Theta"],
        "order": 1}
#: the demo's gradient descent (``derive check demo --train``): its two inputs as training
#: inputs, one test input
DEMO_TRAIN = {"targets": [0.5, -0.5], "test_inputs": [[0.6, 0.6, 0.1]], "eta": 0.1, "steps": 16}


def _short(value, limit: int = 60) -> str:
    """``repr`` of a user value, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 4] + " …" + text[-2:]


def _kind(value) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, float):
        return "a float"
    return type(value).__name__


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) \
        and not isinstance(value, (bool, np.bool_))


def _matrix(value, key: str, where: str, example: str) -> np.ndarray:
    """A finite 2-D float array from nested lists, every structural problem named."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    hint = f"write e.g. {key} = {example}"
    if not isinstance(value, (list, tuple)):
        raise DeriveError(f"{where}: {key} must be a list of rows (a 2-D array), got "
                          f"{_kind(value)} {_short(value)}; {hint}")
    if not value:
        raise DeriveError(f"{where}: {key} is empty; give at least one row, {hint}")
    if not all(isinstance(row, (list, tuple)) for row in value):
        bad = next(r for r, row in enumerate(value, 1) if not isinstance(row, (list, tuple)))
        raise DeriveError(f"{where}: {key} must be a list of rows (a 2-D array), but entry {bad} "
                          f"is {_kind(value[bad - 1])} {_short(value[bad - 1])}; {hint}")
    lengths = [len(row) for row in value]
    if 0 in lengths:
        raise DeriveError(f"{where}: {key} row {lengths.index(0) + 1} is empty; every row needs "
                          f"at least one number, {hint}")
    if len(set(lengths)) > 1:
        raise DeriveError(f"{where}: {key} is ragged (row 1 has {lengths[0]} entries, row "
                          f"{next(r for r, n in enumerate(lengths, 1) if n != lengths[0])} has "
                          f"{next(n for n in lengths if n != lengths[0])}); every row needs the "
                          f"same number of entries")
    for r, row in enumerate(value, 1):
        for c, x in enumerate(row, 1):
            if isinstance(x, (list, tuple)):
                raise DeriveError(f"{where}: {key} must be 2-D (rows of numbers), but row {r} "
                                  f"entry {c} is a list; {hint}")
            if not _is_number(x):
                raise DeriveError(f"{where}: {key} row {r} entry {c} is {_kind(x)} {_short(x)}; "
                                  f"write a number (no quotes), {hint}")
            if not math.isfinite(float(x)):
                raise DeriveError(f"{where}: {key} row {r} entry {c} is {x}; every entry must be "
                                  f"a finite number")
    return np.array(value, dtype=float)


def check_targets(targets, where: str = "targets") -> tuple:
    """``targets`` as a tuple of known names without repeats (order kept), or a DeriveError."""
    if isinstance(targets, str):
        raise DeriveError(f"{where} must be a list of names, got the string {targets!r}; write "
                          f'targets = ["{targets}"] (known: {", ".join(KNOWN_TARGETS)})')
    if not isinstance(targets, (list, tuple)):
        raise DeriveError(f"{where} must be a list of names such as [\"K\", \"Theta\"], got "
                          f"{_kind(targets)} {_short(targets)} (known: {', '.join(KNOWN_TARGETS)})")
    if not targets:
        raise DeriveError(f"{where} is empty; name at least one of {', '.join(KNOWN_TARGETS)}")
    not_str = [t for t in targets if not isinstance(t, str)]
    if not_str:
        raise DeriveError(f"{where} must be names (strings in quotes), got {_short(not_str[0])}; "
                          f"known: {', '.join(KNOWN_TARGETS)}")
    unknown = [t for t in targets if t not in KNOWN_TARGETS]
    if unknown:
        raise DeriveError(f"{where}: unknown target(s) {unknown}; known targets are "
                          f"{', '.join(KNOWN_TARGETS)} (case matters)")
    return tuple(dict.fromkeys(targets))


def default_order(targets) -> int:
    """The highest order at which a target enters: 2 if an O(1/n²) quantity (G2, V1, U) is
    among ``targets``, else 1 if an O(1/n) one (G1, V, H1, A, B, D, F) is, else 0."""
    return max(TARGETS[t][0] for t in targets)


def _check_order(order, where: str) -> int:
    if not _is_int(order) or int(order) not in (0, 1, 2):
        raise DeriveError(f"{where}: order must be 0 (leading order), 1 (first correction in "
                          f"1/n) or 2 (O(1/n²): G2, V1, U), got {_kind(order)} {_short(order)}")
    return int(order)


def _check_depth(depth, where: str) -> int:
    if not _is_int(depth):
        raise DeriveError(f"{where}: depth must be a whole number of layers (e.g. depth = 10), got "
                          f"{_kind(depth)} {_short(depth)}")
    if not 1 <= depth <= MAX_DEPTH:
        raise DeriveError(f"{where}: depth = {depth} is outside 1 … {MAX_DEPTH}; the 1/n "
                          f"expansion needs depth ≪ width and the recursions run layer by layer, "
                          f"so give a depth of at most {MAX_DEPTH} layers")
    return int(depth)


def _check_widths(widths, depth: int, where: str):
    def bad(w):
        return not _is_int(w) or w < 1

    if isinstance(widths, (list, tuple)):
        if len(widths) != depth - 1:
            raise DeriveError(f"{where}: widths lists {len(widths)} hidden widths but a "
                              f"depth-{depth} network has {depth - 1} (n_1 … n_{depth - 1}); give "
                              f"one number for all of them or a list of {depth - 1}")
        for k, w in enumerate(widths, 1):
            if bad(w):
                raise DeriveError(f"{where}: widths entry {k} must be a whole number ≥ 1 (a "
                                  f"width), got {_kind(w)} {_short(w)}")
        return [int(w) for w in widths]
    if bad(widths):
        raise DeriveError(f"{where}: widths must be a whole number ≥ 1 (every hidden layer) or a "
                          f"list of {depth - 1} of them, got {_kind(widths)} {_short(widths)}; "
                          f"e.g. widths = 64")
    return int(widths)


def _network(data: dict, depth: int, widths, act, kw: dict, where: str):
    """The spec object of the ``architecture`` / ``forward`` keys (default: the MLP)."""
    arch = data.get("architecture", "mlp")
    if not isinstance(arch, str) or arch not in ARCHITECTURES:
        raise DeriveError(f"architecture must be one of {list(ARCHITECTURES)} (or give a forward "
                          f"equation with 'forward'), got {_kind(arch)} {_short(arch)}")
    C_b, C_W = kw.pop("C_b", 0.0), kw.pop("C_W", 1.0)
    if "forward" in data:
        if "architecture" in data or "xi" in data or "gamma" in data:
            raise DeriveError("give either 'forward' (with 'scalars') or 'architecture' (with "
                              "'xi', 'gamma' for a residual network), not both")
        scalars = data.get("scalars", {})
        if not isinstance(scalars, dict):
            raise DeriveError(f"scalars must be a table, e.g. scalars = {{ a = 1.0 }}, got "
                              f"{_kind(scalars)} {_short(scalars)}")
        if not isinstance(data["forward"], str):
            raise DeriveError(f"forward must be a string such as \"b[i] + sum_j(W[i,j]*sigma(z[j]))"
                              f"\", got {_kind(data['forward'])} {_short(data['forward'])}")
        from ..architectures.network import Network

        return Network(depth, widths, act, C_b, C_W, data["forward"], scalars, **kw)
    if "scalars" in data:
        raise DeriveError("'scalars' belong to a 'forward' equation")
    if arch == "residual":
        from ..architectures.residual import ResMLP

        return ResMLP(depth, widths, act, C_b, C_W, data.get("xi", 1.0), data.get("gamma", 1.0),
                      **kw)
    if "xi" in data or "gamma" in data:
        raise DeriveError("'xi' and 'gamma' belong to architecture = \"residual\"")
    return MLP(depth, widths, act, C_b, C_W, **kw)


def spec_from_mapping(data: dict, where: str = "spec", targets=None,
                      order=None) -> tuple[MLP, np.ndarray, tuple, int]:
    """(MLP, inputs X, targets, order) from a mapping with the keys above; ``targets`` and
    ``order`` (when not None) override the mapping's."""
    if not isinstance(data, dict):
        raise DeriveError(f"{where}: a spec is a table of keys {list(KNOWN_KEYS)}")
    unknown = sorted(set(data) - set(KNOWN_KEYS))
    if unknown:
        raise DeriveError(f"{where}: unknown key(s) {unknown}; known keys are {list(KNOWN_KEYS)}")
    for key in ("activation", "depth"):
        if key not in data:
            raise DeriveError(f"{where}: the key {key!r} is required (known keys: {list(KNOWN_KEYS)})")
    act = data["activation"]
    if not isinstance(act, str) or not act.strip():
        raise DeriveError(f"{where}: activation must be a name such as \"tanh\" or a SymPy string "
                          f"in z such as \"Max(0, z)\", got {_kind(act)} {_short(act)}")
    depth = _check_depth(data["depth"], where)
    widths = _check_widths(data.get("widths", 64), depth, where)
    kw = {k: data[k] for k in ("C_b", "C_W", "lambda_b", "lambda_W") if k in data}
    try:
        spec = _network(data, depth, widths, act, kw, where)
    except DeriveError as err:
        raise DeriveError(f"{where}: {err}") from None
    if "inputs" in data and "input_gram" in data:
        raise DeriveError(f"{where}: give either 'inputs' or 'input_gram', not both")
    if "inputs" in data:
        X = _matrix(data["inputs"], "inputs", where, "[[1.0, 0.5, -0.3], [0.2, -1.0, 0.4]]")
        with np.errstate(over="ignore", invalid="ignore"):
            G0 = X @ X.T / X.shape[1]
        if not np.all(np.isfinite(G0)):
            raise DeriveError(f"{where}: inputs are too large (x·x/n_0 overflows a float); "
                              f"rescale them")
    elif "input_gram" in data:
        G = _matrix(data["input_gram"], "input_gram", where, "[[1.0, 0.3], [0.3, 0.8]]")
        if G.shape[0] != G.shape[1] or not np.allclose(G, G.T):
            raise DeriveError(f"{where}: input_gram must be a symmetric N × N matrix "
                              f"(G0_ab = x_a·x_b / n_0), got shape {G.shape[0]} × {G.shape[1]}"
                              + ("" if G.shape[0] != G.shape[1] else " and not symmetric"))
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
    if targets is not None:
        targets = check_targets(targets, "--targets")
    elif "targets" in data:
        targets = check_targets(data["targets"], f"{where}: targets")
    else:  # everything that is finite for this σ (Θ is infinite when σ jumps)
        from ..derivation.derivation import finite_targets

        targets = finite_targets(spec.activation, spec.max_order)
    if order is not None:
        order = _check_order(order, "--order")
    elif "order" in data:
        order = _check_order(data["order"], where)
    else:
        order = default_order(targets)
    # what predict would refuse (memory, hours of vertex averages, O(1/n) of a skip
    # connection) is refused now, before the derivation and the documents
    from ..derivation.derivation import check_targets as _closes, order_for
    from ..numeric.prediction import plan_work

    try:
        _closes(targets, None, spec)
        order_for(spec, order)
        plan_work(spec, X.shape[0], targets)
    except DeriveError as err:
        raise DeriveError(f"{where}: {err}") from None
    return spec, X, targets, order


def train_settings(train, X: np.ndarray, where: str = "spec") -> tuple:
    """(y (N_A,) or (N_A, n_out), X_test (N_B, n_0), eta, steps) from a spec's ``train`` table
    (the spec's inputs X are the training inputs; ``targets`` a list of numbers for one output
    neuron or a list of rows for several), every value checked."""
    hint = ("write e.g. train = { targets = [0.5, -0.5], test_inputs = [[0.6, 0.6, 0.1]], "
            "eta = 0.1, steps = 16 }")
    if train is None:
        raise DeriveError(f"{where}: a training check needs a 'train' table; {hint}")
    if not isinstance(train, dict):
        raise DeriveError(f"{where}: train must be a table, got {_kind(train)}; {hint}")
    unknown = sorted(set(train) - set(TRAIN_KEYS))
    if unknown:
        raise DeriveError(f"{where}: unknown key(s) {unknown} in train; known: {list(TRAIN_KEYS)}")
    if "targets" not in train:
        raise DeriveError(f"{where}: train needs 'targets', one per input; {hint}")
    rows = train["targets"]
    if isinstance(rows, (list, tuple)) and rows and all(isinstance(r, (list, tuple)) for r in rows):
        y = _matrix(rows, "train.targets", where, "[[0.5, 0.1], [-0.5, 0.2]]")
    else:
        y = _matrix([rows], "train.targets", where, "[0.5, -0.5]")[0]
    if len(y) != X.shape[0]:
        raise DeriveError(f"{where}: train.targets has {len(y)} entries for {X.shape[0]} inputs "
                          "(one target per training input for one output neuron, or one row "
                          "of targets per training input for several)")
    XB = np.zeros((0, X.shape[1]))
    if train.get("test_inputs") not in (None, []):
        XB = _matrix(train["test_inputs"], "train.test_inputs", where, "[[0.6, 0.6, 0.1]]")
        if XB.shape[1] != X.shape[1]:
            raise DeriveError(f"{where}: train.test_inputs have {XB.shape[1]} features, the "
                              f"inputs {X.shape[1]}")
    from ..numeric.training import _check_eta_steps

    eta, steps = _check_eta_steps(train.get("eta", 0.1), train.get("steps", 16))
    return y, XB, eta, steps


def load_mapping(path) -> dict:
    """The table of a spec file (TOML), every reading problem named."""
    path = Path(path)
    if not path.is_file():
        raise DeriveError(f"no spec file {path}" + (" (it is a directory)" if path.is_dir() else ""))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DeriveError(f"{path} is not a text file (TOML must be UTF-8)") from None
    except OSError as err:
        raise DeriveError(f"cannot read the spec file {path}: {err.strerror}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise DeriveError(f"{path} is not valid TOML: {err}") from None


def load_spec(path, targets=None, order=None) -> tuple[MLP, np.ndarray, tuple, int]:
    """Read a spec file (see the module docstring); ``targets``/``order`` override the file's."""
    return spec_from_mapping(load_mapping(path), str(path), targets=targets, order=order)
