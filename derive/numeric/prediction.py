r"""``derive.predict``: numbers from the derived recursions (docs/conventions.md §3 quantities, any spec).

``predict(spec, X, order=1)`` returns a :class:`Prediction` with mappings ``.K``, ``.G1``,
``.V``, ``.Theta`` keyed by layer ℓ = 1 … L (float64 arrays of shapes (N, N), (N, N),
(N, N, N, N), (N, N)) and ``.metric(ℓ)`` = K + G1/n_{ℓ−1}; with the NTK's O(1/n) statistics
among the targets also ``.H1`` (N, N), ``.A``, ``.B``, ``.D``, ``.F`` (N, N, N, N) and
``.ntk_mean(ℓ)`` = Θ + H1/n_{ℓ−1} (docs/conventions.md §3).  ``targets`` limits the work to
some of them (e.g. ``targets=("K", "Theta", "G1")`` for many inputs: the full V costs N⁴
memory; the mappings of quantities not asked for are empty).  Kinked activations (ReLU,
leaky ReLU, user strings with Max/Abs/Heaviside) are evaluated with the derivative-free forms.

The numbers come from the derived expressions, never from a second, hand-written recursion:
K, Θ, G1 and H1 (and V, A, B, D, F for N ≤ 2) through the module generated from the
derivation (:mod:`derive.emit.numpy_module`, cached per spec), in which G1 and H1 are fed by
the components of V, A, B, D, F with at most two distinct samples (they close on themselves);
a four-index quantity of N ≥ 3 inputs through the batched evaluator of the same derived forms
(:mod:`derive.numeric.evaluate`).

``.expansion[ℓ]`` estimates the relative size of the first neglected term,
(V/(n_{ℓ−1} K²))^{order+1} on the diagonal; a warning names the first layer where it exceeds
``warn_threshold`` (at criticality it grows like ℓ/n, docs/conventions.md §5).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from ..architectures.mlp import MLP
from ..base.errors import DeriveError, boundary
from ..derivation.derivation import check_targets, derive, finite_targets, order_for
from ..derivation.quantities import MULTI, NNLO, NTK_FOUR, NTK_NLO, RANK4, TANGENT, quantity
from .evaluate import _DiagonalVertex, iterate_mlp

__all__ = ["predict", "Prediction", "ExpansionWarning", "plan_work", "vertex_work",
           "load_generated"]


#: the O(1/n²) statistics with more than two sample indices: V1, U
NNLO_MULTI = tuple(q for q in NNLO if q in MULTI)
#: most inputs for which V1 and U are evaluated (their components with three or more distinct
#: samples hold averages over up to six samples, which no evaluator computes)
NNLO_MULTI_INPUTS = 2


class ExpansionWarning(UserWarning):
    """The 1/n expansion is no longer small at some layer."""


@dataclass(frozen=True)
class Prediction:
    """The result of :func:`predict`.

    Attributes: ``spec`` and ``X`` (the network and inputs), ``order``, ``K``, ``G1``, ``V``
    and ``Theta`` (layer → array over the inputs' indices), ``expansion`` (layer → estimate
    of the first neglected term), ``route`` (``"generated"`` or the batched route) and
    ``quadrature_error`` (the largest estimated error of an average, relative to
    ``max(1, |average|)``); ``metric(ℓ)`` gives K + G1/n at layer ℓ.
    """

    spec: MLP
    X: np.ndarray
    order: int
    K: dict = field(repr=False)
    G1: dict = field(repr=False)
    V: dict = field(repr=False)
    Theta: dict = field(repr=False)
    expansion: dict = field(repr=False)
    #: "generated" (the module of derive.emit.numpy_module) or "batched" (derive.numeric.evaluate)
    route: str = "generated"
    #: the largest estimated error of a Gaussian average, relative to max(1, |average|)
    quadrature_error: float = 0.0
    #: the NTK's O(1/n) statistics (docs/conventions.md §3): layer → (N, N) for H1, (N, N, N, N)
    #: for A, B, D, F (B and F in the order of their names: B[a, b, c, d] = B_{abcd})
    H1: dict = field(default_factory=dict, repr=False)
    A: dict = field(default_factory=dict, repr=False)
    B: dict = field(default_factory=dict, repr=False)
    D: dict = field(default_factory=dict, repr=False)
    F: dict = field(default_factory=dict, repr=False)
    #: the O(1/n²) statistics at order 2 (docs/conventions.md §10): layer → (N, N) for G2,
    #: (N, N, N, N) for V1, (N,)*6 for U (V1 and U for at most two inputs)
    G2: dict = field(default_factory=dict, repr=False)
    V1: dict = field(default_factory=dict, repr=False)
    U: dict = field(default_factory=dict, repr=False)
    #: the O(1/n) statistics of the dNTK and the ddNTKs (docs/conventions.md §3), when asked
    #: for: layer → (N, N, N, N), indices in the order of their definitions
    P: dict = field(default_factory=dict, repr=False)
    Q: dict = field(default_factory=dict, repr=False)
    R: dict = field(default_factory=dict, repr=False)
    S: dict = field(default_factory=dict, repr=False)
    T: dict = field(default_factory=dict, repr=False)
    Udd: dict = field(default_factory=dict, repr=False)

    def fan_in(self, layer: int) -> int:
        """n_{ℓ−1} (n_0 is the input dimension)."""
        return [self.X.shape[1], *self.spec.widths][layer - 1]

    def metric(self, layer: int) -> np.ndarray:
        """K + G1/n_{ℓ−1} (with G1 = 0 at order 0), and + G2/n_{ℓ−1}² at order 2."""
        if layer not in self.K:
            raise DeriveError(f"layer must be 1 … {self.spec.depth}, got {layer!r}")
        if layer not in self.G1:
            raise DeriveError("the metric needs G1: call predict with 'G1' among the targets")
        n = self.fan_in(layer)
        if self.order >= 2:
            if layer not in self.G2:
                raise DeriveError("the metric at order 2 needs G2: call predict with 'G2' among "
                                  "the targets")
            return self.K[layer] + self.G1[layer] / n + self.G2[layer] / n ** 2
        return self.K[layer] + self.G1[layer] / n

    def ntk_mean(self, layer: int) -> np.ndarray:
        """The NTK mean to O(1/n): Θ + H1/n_{ℓ−1} (docs/conventions.md §3)."""
        if layer not in self.Theta:
            raise DeriveError(f"the NTK mean needs Θ at layer {layer}: call predict with "
                              f"'Theta' and 'H1' among the targets (layers 1 … {self.spec.depth})")
        if layer not in self.H1:
            raise DeriveError("the NTK mean at O(1/n) needs H1: call predict with 'H1' among "
                              "the targets")
        return self.Theta[layer] + self.H1[layer] / self.fan_in(layer)

    # -- display --------------------------------------------------------------------------------

    #: most inputs whose diagonal entries the HTML table shows
    DISPLAY_INPUTS = 4

    def _diagonal(self, name: str, layer: int):
        """The diagonal of quantity ``name`` at ``layer`` (V: V_{(αα)(αα)}, …), or None."""
        a = getattr(self, name).get(layer)
        if a is None:
            return None
        idx = np.arange(self.X.shape[0])
        if name in MULTI:
            return np.asarray(a[(idx,) * quantity(name).rank], dtype=float)
        return np.asarray(a, dtype=float)[idx, idx]

    def _columns(self) -> list[tuple[str, str]]:
        """(attribute, HTML header) of the quantities this prediction holds, in table order."""
        heads = {"K": "K<sub>αα</sub>", "Theta": "Θ<sub>αα</sub>",
                 "G1": "G<sup>{1}</sup><sub>αα</sub>", "V": "V<sub>(αα)(αα)</sub>",
                 "H1": "H<sup>{1}</sup><sub>αα</sub>",
                 **{q: f"{q}<sub>αααα</sub>" for q in NTK_FOUR},
                 "G2": "G<sup>{2}</sup><sub>αα</sub>", "V1": "V<sup>{1}</sup><sub>(αα)(αα)</sub>",
                 "U": "U<sub>(αα)(αα)(αα)</sub>",
                 **{q: f"{q}<sub>αααα</sub>" for q in TANGENT}}
        return [(q, h) for q, h in heads.items() if getattr(self, q)]

    def __repr__(self) -> str:
        N, n0 = self.X.shape
        held = [q for q in ("K", "Theta", "G1", "V", *NTK_NLO, *NNLO, *TANGENT)
                if getattr(self, q)]
        worst = (f", largest expansion estimate {max(self.expansion.values()):.3g}"
                 if self.expansion else "")
        return (f"Prediction({type(self.spec).__name__} {self.spec.activation_name}, depth "
                f"{self.spec.depth}, {N} input(s) of dimension {n0}, order {self.order}, "
                f"quantities {', '.join(held) or 'none'}, route {self.route!r}{worst})")

    def _repr_html_(self) -> str:
        """Per layer: fan-in n_{ℓ−1}, the diagonals of K, Θ, G1 and V (the first
        :attr:`DISPLAY_INPUTS` inputs) and the expansion estimate."""
        from html import escape

        N = self.X.shape[0]
        shown = min(N, self.DISPLAY_INPUTS)
        cols = self._columns()

        def cell(v) -> str:
            if v is None:
                return "<td>—</td>"
            return "<td>" + "<br>".join(f"{x:.6g}" for x in v[:shown]) + "</td>"

        head = ("<tr><th>ℓ</th><th>n<sub>ℓ−1</sub></th>"
                + "".join(f"<th>{h}</th>" for _, h in cols)
                + ("<th>expansion</th>" if self.expansion else "") + "</tr>")
        body = []
        for l in range(1, self.spec.depth + 1):
            row = f"<tr><td>{l}</td><td>{self.fan_in(l)}</td>"
            row += "".join(cell(self._diagonal(q, l)) for q, _ in cols)
            if self.expansion:
                e = self.expansion.get(l)
                row += f"<td>{e:.3g}</td>" if e is not None else "<td>—</td>"
            body.append(row + "</tr>")
        more = (f"; diagonal entries of the first {shown} inputs, {N - shown} more not shown"
                if N > shown else "; diagonal entries, one line per input")
        caption = escape(f"Prediction: {type(self.spec).__name__}, σ = "
                         f"{self.spec.activation_name}, depth {self.spec.depth}, {N} input(s), "
                         f"order {self.order}, route {self.route}{more}")
        return (f"<div><table><caption style=\"text-align:left\">{caption}</caption>"
                f"<thead>{head}</thead><tbody>{''.join(body)}</tbody></table></div>")


@lru_cache(maxsize=16)
def load_generated(spec, targets: tuple = ("K", "Theta")):
    """The generated evaluator of ``spec`` (:func:`derive.emit.numpy_module.numpy_module_source`
    of its derivation) as a module object, cached per spec and targets: derived here, where it
    is run, so that the code generator does not import the derivation that feeds it."""
    import types

    from ..emit.numpy_module import NNLO_STEPS, NTK_STEPS

    order = (2 if any(t in NNLO_STEPS for t in targets) else
             1 if any(t in ("G1", "V", *NTK_STEPS) for t in targets) else 0)
    src = derive(spec, targets=targets, order=order).numpy_module()
    mod = types.ModuleType(f"derive_generated_{abs(hash((spec, targets)))}")
    exec(compile(src, mod.__name__, "exec"), mod.__dict__)  # noqa: S102 - our own generated code
    mod.SOURCE = src
    return mod


def _generated(spec: MLP, X: np.ndarray, order: int, nlo: bool, dense_v: bool,
               ntk: tuple = (), tol: float | None = None) -> dict:
    """K, Θ (and G1, V, and the NTK's O(1/n) statistics ``ntk``: H1 on all pairs, A, B, D, F
    dense for N ≤ 2) from the generated module of ``spec`` (cached per spec and targets), its
    quadratures to ``tol`` (default: the module's TOL)."""
    # at order 0 the NTK's statistics are not evaluated (as on the batched route: H1 is zero,
    # A, B, D, F are left out)
    ntk = tuple(q for q in NTK_NLO if q in ntk) if order >= 1 else ()
    wanted = ("K", "Theta", "G1") if (nlo or ntk) and order >= 1 else ("K", "Theta")
    mod = load_generated(spec, tuple(t for t in wanted if not (t == "Theta" and
                                                              spec.activation.ntk_obstacle))
                         + ntk)
    closes = spec.max_order >= 1  # else no V: K and Θ only
    N = X.shape[0]
    # V's diagonal only for the expansion estimate: on a few inputs spanning the range of
    # their norms (see _estimate_inputs) when there are many
    few = closes and not (nlo or ntk) and N > ESTIMATE_INPUTS
    on = _estimate_inputs(X) if few else None
    try:
        with np.errstate(all="ignore"):
            g = mod.evaluate(X, order=order, nlo=("pairs" if nlo or ntk else "diagonal")
                             if closes else "none", diagonal_of=on, tol=tol)
    except (ValueError, ArithmeticError) as err:
        raise DeriveError(str(err)) from None
    kinked = bool(spec.activation.kinks)
    r = {"K": g["K"], "Theta": g.get("Theta", {}), "G1": g["G1"], "V": g["V"],
         "error": float((mod.TOL if tol is None else tol) * (30 if kinked else 1))}
    if few:
        r["estimated_on"] = on
    if not closes:
        r.pop("V")
    elif dense_v:  # N ≤ 2: every component has at most two distinct samples
        r["V"] = {l: (mod._pair_tensors(g["G1"][l], v, g["V_pairs"][l])[1][..., 0, N - 1]
                      if N == 2 else v.reshape(1, 1, 1, 1)) for l, v in g["V"].items()}
    else:
        r["V"] = {l: _DiagonalVertex(v) for l, v in g["V"].items()}
    for q in ntk:
        if q == "H1":
            r["H1"] = g["H1"]
        elif N <= 2:  # dense N⁴: every component has at most two distinct samples
            r[q] = {l: (mod._pair_tensor(v, g[q + "_pairs"][l], mod.ORBIT_TABLES[q])[..., 0, N - 1]
                        if N == 2 else v.reshape(1, 1, 1, 1)) for l, v in g[q].items()}
    return r


#: the expansion estimate of a K, Θ prediction is computed on at most this many inputs
ESTIMATE_INPUTS = 16


def _estimate_inputs(X: np.ndarray) -> np.ndarray:
    """At most :data:`ESTIMATE_INPUTS` inputs spanning the range of the squared norms |x|²/n_0
    (the smallest, the largest, and evenly spaced ranks between).  A single input's own
    recursions (K_αα, V_αααα) depend on nothing but K^{(1)}_αα = C_b + C_W |x_α|²/n_0, so the
    expansion estimate (the largest V_αααα / (n K_αα²)) is a function of the norm, and it is
    exact when the inputs have at most that many distinct norms."""
    g0 = np.einsum("ai,ai->a", X, X) / X.shape[1]
    values, first = np.unique(g0, return_index=True)
    if len(values) <= ESTIMATE_INPUTS:
        return np.sort(first)
    ranks = np.unique(np.round(np.linspace(0, len(values) - 1, ESTIMATE_INPUTS)).astype(int))
    return np.sort(first[ranks])


#: most inputs accepted (the arrays are N × N per layer and quantity)
MAX_INPUTS = 20_000
#: most memory the arrays of a prediction may take, in bytes
MAX_BYTES = 8 * 2 ** 30
#: rough seconds per vertex component and layer on the batched route, by the kind of σ
#: (:func:`_vertex_kind`) and the number of distinct samples of the component (3 or 4); per pair
#: of inputs and layer ("pair": the 2-D averages, for σ with kinks the moments of the
#: derivative-free sample sums, to 1e-12); once per run ("setup": deriving and specialising the
#: recursions).  Smooth σ (derive.activations.gaussian.product_expectations: each set of
#: inputs averaged once for all its products), measured 2026-11-30 on 2 cores, one process
#: each: K, G1, V of 20 inputs (6840 three- and 14535 four-sample components a layer) tanh
#: 34 s at depth 3, 35–43 s at depth 5, erf 29 s at depth 3; of 10 inputs 4.2 s at depth 5;
#: the NTK's four-index statistics cost about twice V's (below); train(order=1)'s K … Udd on
#: 10 + 10 inputs 53 s at depth 3, 88 s at depth 5.  Since 2026-12-01 (a tolerance of 1e-6
#: confirmed on 24 and 30 nodes an axis, each set in its cheapest order of variables), on a
#: machine about twice as fast: K, G1, V of those 20 inputs tanh 7.0 s at depth 3, 9.9 s at
#: depth 5, erf 11.7 s at depth 3; train's K … Udd 10.3 s and 14.7 s (estimated now 16, 29,
#: 16, 21 and 39 s: on the long side, the deeper layers of tanh being cheaper than the first
#: ones — 5.2, 4.8, 4.2 and 3.0 s at layers 2 to 5).  Earlier measurements (depth 5, inputs
#: of dimension 4):
#: σ polynomial on each half-line (ReLU, leaky ReLU, abs: exact orthant moments,
#: derive.activations.moments), 10 inputs 2.2–4.3 s, 20 inputs 10–13 s, 30 inputs 54–107 s;
#: other σ with kinks (the kink-split quadrature), ReLU before the orthant moments: 6 inputs
#: 63 s, 10 inputs 470–560 s
_SECONDS = {"smooth": {3: 1e-4, 4: 3.5e-4, "pair": 0.003, "setup": 3.0},
            "orthant": {3: 5e-5, 4: 1.5e-4, "pair": 2e-3, "setup": 2.0},
            "kinked": {3: 8e-3, 4: 0.09, "pair": 0.6, "setup": 10.0}}


def _vertex_kind(act) -> str:
    """How the batched route averages σ's vertex terms: "smooth" (quadrature), "orthant" (σ a
    polynomial on each half-line: exact orthant moments) or "kinked" (kink-split quadrature)."""
    from ..activations.gaussian import _half_line_polynomials

    if not act.kinks:
        return "smooth"
    return "orthant" if _half_line_polynomials(act.expr, act.z) is not None else "kinked"


#: a batched-route estimate above this is refused (with the cheaper routes as advice)
MAX_SECONDS = 6 * 3600
#: rough seconds of an order-2 run (the batched route) once its recursions are derived:
#: specialising and compiling them ("setup"), and per layer and pair of inputs (measured: tanh,
#: 6 inputs, depth 4, 5 s in all; ReLU two inputs, depth 4, 8 s)
_NNLO_SETUP = 5.0
_NNLO_PAIR = 0.3


def _inputs(X) -> np.ndarray:
    """X as a finite float array of shape (N, n_0), or a DeriveError saying what is wrong."""
    if isinstance(X, (str, bytes)) or X is None:
        raise DeriveError(f"X must be an array of inputs of shape (N, n_0), got {type(X).__name__}")
    try:
        arr = np.asarray(X)
    except ValueError:
        arr = None
    if arr is None or arr.dtype == object:
        raise DeriveError("X must be a rectangular array of numbers, shape (N inputs, n_0 "
                          "features); rows of different lengths or non-numbers were given")
    if arr.dtype.kind not in "biuf":
        raise DeriveError(f"X must hold real numbers, got dtype {arr.dtype}")
    arr = arr.astype(float)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise DeriveError(f"X must have shape (N inputs, n_0 features), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise DeriveError("X contains NaN or infinite entries")
    if arr.shape[0] > MAX_INPUTS:
        raise DeriveError(f"{arr.shape[0]} inputs are more than {MAX_INPUTS}: the kernels are "
                          "N × N per layer; predict on a subset")
    return arr




def _route(N: int, targets: tuple, order: int = 1) -> str:
    """The one route decision: the generated evaluator (K, Θ, G1, H1 on all pairs, V, A, B, D,
    F on the components with at most two distinct samples, which for N ≤ 2 inputs are all of
    them) unless a four-index quantity is wanted for N ≥ 3 inputs, whose components with three
    and four distinct samples only the batched evaluator computes, or the order is 2 (the
    generated modules stop at O(1/n))."""
    if order >= 2 or any(t in TANGENT for t in targets):
        return "batched"
    return "batched" if N >= 3 and any(t in RANK4 for t in targets) else "generated"


def vertex_work(N: int, training_inputs: int | None = None) -> dict:
    """Vertex components per layer (one per orbit of V's pair symmetries, as the batched
    evaluator computes them) by their number of distinct samples: N with one, 4 C(N, 2) with
    two ((xx)(yy), (xy)(xy), (xx)(xy), (yy)(xy)), 6 C(N, 3) with three (a doubled sample beside
    a distinct pair, or two pairs sharing one sample: 3 ways each), 3 C(N, 4) with four.  With
    ``training_inputs`` (:func:`predict`'s), the sets of k distinct samples count only with at
    most two of the other inputs among them."""
    from math import comb

    def sets(k):
        if training_inputs is None:
            return comb(N, k)
        return sum(comb(training_inputs, k - j) * comb(N - training_inputs, j)
                   for j in range(min(k, 2) + 1))

    return {1: sets(1), 2: 4 * sets(2), 3: 6 * sets(3), 4: 3 * sets(4)}


def plan_work(spec: MLP, N: int, targets: tuple, say=None, dense: bool = True,
              order: int = 1, training_inputs: int | None = None) -> str:
    """The route for ``N`` inputs and ``targets`` at ``order``, after refusing what cannot
    finish (more than :data:`MAX_BYTES` of arrays, more than :data:`MAX_SECONDS` of vertex
    averages, with the cheaper alternatives, or V1 and U of more than
    :data:`NNLO_MULTI_INPUTS` inputs); ``say(message)`` is told what the run will do.
    ``dense=False``: the four-index quantities are kept once per orbit (about N⁴/8 components
    of 16 bytes).  ``training_inputs``: as :func:`predict`'s (fewer averages)."""
    L = spec.depth
    many = [t for t in targets if t in NNLO_MULTI]
    if many and N > NNLO_MULTI_INPUTS:
        raise DeriveError(
            f"{' and '.join(many)} are evaluated for at most {NNLO_MULTI_INPUTS} inputs (their "
            f"components with three or more distinct samples hold averages over up to six "
            f"samples); got {N} inputs.  Predict them for one or two inputs at a time, or leave "
            "them out: G2 (the metric at O(1/n²)) runs on all pairs of any number of inputs")
    four = [t for t in targets if t in RANK4 and t != "V1"]
    arrays = sum(1 for t in targets if t not in MULTI) + 1
    from ..algebra.symbols import GROUPS

    # dense: 8 bytes a component; per orbit: a code and a value (16 bytes) per orbit of the
    # quantity's index group (V: 8 images, about N⁴/8 orbits); V1 and U of at most two inputs
    per4 = [8 * N ** 4 if dense else 16 * N ** 4 // len(GROUPS[quantity(t).symmetry])
            for t in four]
    mem = L * N * N * 8 * arrays + L * sum(per4)
    if mem > MAX_BYTES:
        raise DeriveError(f"the requested arrays take about {mem / 2 ** 30:.0f} GiB ({N} inputs, "
                          f"{L} layers{', ' + ', '.join(four) + ' are N⁴' if four else ''}); ask "
                          "for fewer inputs or targets (K, Θ, G1, H1 need only N² per layer)"
                          + ("" if not four or not dense else
                             ", or pass dense=False (four-index quantities stored once per "
                             "orbit of their index symmetry)"))
    say = say or (lambda msg: None)
    route = _route(N, targets, order)
    if route == "generated":
        say(f"predict: {N} input(s), {L} layers, targets {', '.join(targets)}: generated "
            "evaluator (closed forms or fixed quadrature on all pairs)")
        return route
    if training_inputs is not None and N - training_inputs <= 2:
        training_inputs = None                    # every component is read
    work = vertex_work(N, training_inputs)
    kind = _vertex_kind(spec.activation)
    kinked = kind != "smooth"
    cost = _SECONDS[kind]
    # the NTK's four-index statistics (any of A … Udd: their products share each set's
    # Gaussian averages) cost about twice V's (measured: tanh, 20 inputs, depth 3, A, B, D, F
    # 48–68 s, V 34 s)
    weight = ("V" in four) + 2 * any(t != "V" for t in four)
    seconds = weight * (L - 1) * (work[3] * cost[3] + work[4] * cost[4])
    seconds += (L - 1) * N * (N + 1) // 2 * cost["pair"] + cost["setup"]
    if order >= 2:  # G2, V1, U on the components with at most two distinct samples of each pair
        seconds += _NNLO_SETUP + (L - 1) * N * (N + 1) // 2 * _NNLO_PAIR
    if order < 2:
        which = (f"the full {', '.join(four)}" if training_inputs is None else
                 f"{', '.join(four)} on their components with at most two of the "
                 f"{N - training_inputs} test inputs")
        say(f"predict: {N} inputs, {L} layers, targets {', '.join(targets)}: batched evaluator "
            f"for {which} — per layer {sum(work.values())} vertex components, "
            f"{work[3]} of them with 3 distinct samples (3-D averages) and {work[4]} with 4 (4-D "
            f"averages){', σ with kinks' if kinked else ''}; roughly {_duration(seconds)} on 2 "
            "cores")
    else:
        say(f"predict: {N} input(s), {L} layers, order 2, targets {', '.join(targets)}: batched "
            "evaluator on the components with at most two distinct samples of each pair"
            f"{' and for the full ' + ', '.join(four) if four and N >= 3 else ''}; roughly "
            f"{_duration(seconds)} on 2 cores (the first call in a session also derives the "
            "order-2 recursions, about a minute)")
    if seconds > MAX_SECONDS:
        if four and N >= 3:
            which = ", ".join(four)
            raise DeriveError(
                f"the full four-index {which} of {N} inputs through {L} layers need "
                f"{work[3] + work[4]} three- and four-dimensional averages per layer each, roughly "
                f"{_duration(seconds)}; this is not practical.  Leave {which} out (K, Θ, G1 and H1 "
                f"on all pairs take seconds), or predict {which} for at most 2 inputs at a time "
                "(pairs are exact through the generated evaluator), or for fewer inputs")
        raise DeriveError(f"the O(1/n²) statistics of {N} inputs ({N * (N + 1) // 2} pairs) "
                          f"through {L} layers would take roughly {_duration(seconds)}; predict "
                          "them for fewer inputs (order 1 on all of them takes seconds)")
    return route


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(seconds, 1):.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@boundary
def predict(spec: MLP, X, order: int | None = None, warn_threshold: float = 0.1, targets=None,
            progress: bool = False, tol: float | None = None, dense: bool = True,
            training_inputs: int | None = None, workers: int = 1) -> Prediction:
    r"""Evaluate the derived recursions of ``spec`` on inputs ``X`` (N × n_0).

    Parameters
    ----------
    spec : derive.MLP, derive.ResMLP or derive.Network
        The network (any architecture with a forward equation).
    X : array of shape (N, n_0)
        Finite numbers: the inputs x_α.
    order : {0, 1, 2}, optional
        0 is the leading order, 1 adds G1 and V (the first correction in 1/n), 2 the O(1/n²)
        statistics G2, V1, U (docs/conventions.md §10; V1 and U for at most two inputs, G2 on
        all pairs; for σ with kinks (ReLU) up to eighth derivatives by Gaussian integration by
        parts; the batched evaluator, after deriving the order-2 recursions once per process,
        about 20 s).  Default:
        ``spec.max_order`` (1; 0 for a residual network with a skip term, whose O(1/n)
        closure is not derived — order ≥ 1 is then an error that says why).
    warn_threshold : float, optional
        An :class:`ExpansionWarning` names the first layer where the estimated first neglected
        term exceeds this (default 0.1).
    targets : list of str, optional
        Names from ``("K", "Theta", "G1", "V", "H1", "A", "B", "D", "F", "G2", "V1", "U")``
        (default: K, Θ, G1, V, without Θ when σ jumps, where Θ is infinite; at order 2 also
        G2, and V1 and U for at most two inputs).  V for N ≥ 3 inputs is the
        expensive part (N⁴ components, 3-D and 4-D averages); without it everything runs
        through the generated evaluator.  The NTK's O(1/n) statistics H1 (N × N), A, B, D, F
        (N⁴ each; docs/conventions.md §3) run through the generated evaluator too, except A, B,
        D, F for N ≥ 3 inputs (like V: the batched evaluator).
    progress : bool, optional
        Print what the run will do and one line per layer to stderr.
    tol : float, optional
        Absolute tolerance of each quadrature (averages larger than 1: relative).  The
        generated evaluator's default is 1e-11 (``tol=3e-13`` takes finer rules, about 1.5×
        the time for tanh); the batched route's (V for N ≥ 3) is by dimension, relative to the
        size of each average, see :func:`derive.gaussian_expectation`.
    dense : bool, optional
        True (default): the four-index quantities (V, A, B, D, F) of each layer are dense
        (N, N, N, N) float arrays.  False: for N ≥ 3 inputs they are
        :class:`derive.numeric.evaluate.SymmetricTensor` objects that store one number per
        orbit of the quantity's index symmetry (for V about N⁴/8) and index like the dense
        array (``v[a, b, c, d]``, slices, integer arrays; ``.shape``, ``np.asarray(v)`` and
        ``.dense()`` give the array).  For N ≤ 2 the arrays are dense either way.
    training_inputs : int, optional
        The first ``training_inputs`` inputs are a training set and the rest test inputs: the
        four-index quantities are then computed only on their components with at most two
        distinct test inputs among their samples — all that :func:`derive.train` at order 1
        reads (they close on themselves through the layers) — and are NaN elsewhere.  With
        many test inputs most of the four-sample averages are skipped (3 training and 10 test
        inputs: 145 of 715 sets of four samples).  Default: all components.
    workers : int, optional
        Processes (forked) for the three- and four-sample averages of the batched evaluator,
        the bulk of the four-index quantities' cost for many inputs; every number of workers
        gives the same values, bit for bit.  Default 1 (this process).

    Returns
    -------
    Prediction
        With ``.K``, ``.G1``, ``.V``, ``.Theta``, ``.H1``, ``.A``, ``.B``, ``.D``, ``.F``,
        ``.G2``, ``.V1``, ``.U`` (layer → array; U has six indices),
        ``.metric(ℓ)`` (K + G1/n, and + G2/n² at order 2), ``.ntk_mean(ℓ)``,
        ``.expansion`` (layer → estimate of the first neglected term, the largest
        ``abs(V_αααα) / (n K_αα²)`` to the power order + 1; at order 2 the computed
        second-order term of the metric ``abs(G2_αα) / (n² K_αα)`` times that ratio once; for
        more than 16 inputs and no O(1/n) target it is computed on 16 inputs spanning the
        range of the squared norms of the inputs, on which alone it depends: for 200 random
        inputs of erf and tanh networks, within 0.5 % of the estimate on all of them),
        ``.route`` and ``.quadrature_error`` (the largest estimated error of an average,
        relative to ``max(1, |average|)``).

    Raises
    ------
    DeriveError
        for bad input (with what to change), a kernel that becomes singular, a run that
        cannot fit in memory or would take more than hours (with the cheaper alternatives).

    >>> import numpy as np, derive
    >>> p = derive.predict(derive.MLP(3, 64, "relu", 0.0, 2.0), np.array([[1.0, 0.0]]))
    >>> round(float(p.K[3][0, 0]), 12), p.route
    (1.0, 'generated')
    """
    import sys
    import time

    if not isinstance(spec, MLP):
        raise DeriveError(f"spec must be a derive.MLP, got {type(spec).__name__}")
    order = order_for(spec, order)
    if isinstance(warn_threshold, bool) or not isinstance(warn_threshold, (int, float)) \
            or not np.isfinite(warn_threshold) or warn_threshold < 0:
        raise DeriveError(f"warn_threshold must be a finite number ≥ 0, got {warn_threshold!r:.40}")
    from ..activations.gaussian import _check_tol, check_workers

    tol = _check_tol(tol)
    X = _inputs(X)
    N = X.shape[0]
    if training_inputs is not None and (isinstance(training_inputs, (bool, np.bool_))
                                        or not isinstance(training_inputs, (int, np.integer))
                                        or not 0 <= training_inputs <= N):
        raise DeriveError(f"training_inputs must be an integer from 0 to the number of inputs "
                          f"({N}), got {training_inputs!r:.40}")
    training_inputs = None if training_inputs is None else int(training_inputs)
    workers = check_workers(workers)
    # by default everything finite for σ, G1 and V included at order 0 (G1 then is zero); at
    # order 2 also G2, and V1 and U for at most NNLO_MULTI_INPUTS inputs
    if targets is None:
        targets = tuple(t for t in finite_targets(spec.activation, max(order, spec.max_order))
                        if not (t in NNLO_MULTI and N > NNLO_MULTI_INPUTS))
    else:
        targets = check_targets(targets, spec.activation, spec)
        late = [t for t in targets if t in NNLO and order < 2]
        if late:
            raise DeriveError(f"{', '.join(late)} enter at O(1/n²); ask for order=2 to get them")
        # the NTK's four-index O(1/n) statistics are evaluated from order 1 (as derive.derive
        # says): at order 0 they would come back empty
        early = [t for t in targets if t in NTK_FOUR + TANGENT and order < 1]
        if early:
            raise DeriveError(f"{', '.join(early)} enter at O(1/n) and are evaluated with "
                              "order=1; ask for order=1 to get them")
    start = time.perf_counter()

    def say(msg):
        if progress:
            print(msg, file=sys.stderr, flush=True)

    if not isinstance(dense, (bool, np.bool_)):
        raise DeriveError(f"dense must be True or False, got {dense!r:.40}")
    route = plan_work(spec, N, targets, say, dense=bool(dense), order=order,
                      training_inputs=training_inputs)

    def report(l, L):
        say(f"predict: layer {l}/{L} done ({time.perf_counter() - start:.1f} s)")

    last = [start]

    def detail(msg):  # at most one line every 5 s
        now = time.perf_counter()
        if now - last[0] >= 5.0:
            last[0] = now
            say(f"predict: {msg} ({now - start:.0f} s)")

    nlo_wanted = bool({"G1", "V"} & set(targets))
    if route == "generated":
        say("predict: deriving the recursions and generating the evaluator for σ = "
            f"{spec.activation.name} (cached for the rest of the session) …")
        r = _generated(spec, X, order, nlo_wanted, "V" in targets,
                       tuple(t for t in targets if t in NTK_NLO), tol)
        report(spec.depth, spec.depth)
    else:
        say("predict: deriving the recursions and specialising them to σ = "
            f"{spec.activation.name} …")
        r = iterate_mlp(spec, X, order, targets=targets, progress=report, tol=tol,
                        detail=detail if progress else None, dense=bool(dense),
                        training_inputs=training_inputs, workers=workers)
    expansion = {}  # empty without a derived V (a skip term): no estimate is given then
    on = r.get("estimated_on", slice(None))  # the inputs the estimate is computed on
    for l in range(1, spec.depth + 1 if "V" in r else 1):
        d = np.diagonal(r["K"][l])[on]
        n_in = [X.shape[1], *spec.widths][l - 1]
        V = r["V"][l]
        idx = np.arange(len(d))
        v = V.diag if isinstance(V, _DiagonalVertex) else np.asarray(V[idx, idx, idx, idx])
        step = np.abs(v) / (n_in * d ** 2)  # the ratio of consecutive orders, V/(n K²)
        if order >= 2 and "G2" in r:
            # the computed O(1/n²) term of the metric, G2/(n² K), times one more ratio
            g2 = np.abs(np.diagonal(r["G2"][l])[on]) / (n_in ** 2 * d)
            expansion[l] = float(np.max(g2 * step))
        else:
            expansion[l] = float(np.max(step) ** (order + 1))
    bad = [l for l, e in expansion.items() if e > warn_threshold]
    if bad:
        warnings.warn(f"the first neglected term of the 1/n expansion is estimated at "
                      f"{expansion[bad[0]]:.3g} of the kept ones from layer {bad[0]} on (threshold "
                      f"{warn_threshold}); widen the network or expect large corrections",
                      ExpansionWarning, stacklevel=3)  # the caller of the boundary wrapper

    def kept(name):
        return dict(r[name]) if name in targets and name in r else {}

    G1 = kept("G1")
    # the evaluators check K at every layer; Θ, G1 and H1 enter their own recursions linearly
    # (multiplied by averages of K), so a value that is not finite stays so in every later
    # layer: the deepest layer is checked (at N = 3000 every layer would cost 0.5 s)
    for name in ("K", "Theta", "G1", "H1", "G2"):
        layers = r.get(name) or {}
        if layers and not np.isfinite(layers[max(layers)]).all():
            raise DeriveError(f"{name} at layer {max(layers)} is not finite (the recursion "
                              "overflowed); check C_b, C_W and the scale of the inputs")
    if "G1" in targets and not G1:
        G1 = {l: np.zeros_like(r["K"][l]) for l in r["K"]}
    if "H1" in targets and not r.get("H1"):
        r["H1"] = {l: np.zeros_like(r["K"][l]) for l in r["K"]}
    return Prediction(spec, X, order, dict(r["K"]), G1, kept("V"), kept("Theta"), expansion,
                      route, float(r["error"]), *(kept(q) for q in NTK_NLO),
                      *(kept(q) for q in NNLO), *(kept(q) for q in TANGENT))
