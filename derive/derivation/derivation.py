r"""``derive.derive``: derived recursions for a spec, with their plan and steps.

The plan is a ``networkx.DiGraph``.  Schema (written down in one place):

* **nodes** are tuples ``(quantity, layer, order)`` — ``quantity`` one of the names of
  :data:`TARGETS` (``"K"``, ``"G1"``, ``"V"``, ``"Theta"``, …); ``layer`` 1 … L; ``order`` the
  power of 1/n at which the quantity enters (K, Θ: 0; G1, V, H1, A, B, D, F: 1; G2, V1, U:
  2).  Node attributes: ``latex`` (the book's symbol), ``kind`` (``"initial"`` at layer 1,
  where the values are exact, else ``"recursion"``).
* **edges** ``u → v`` mean "the recursion for v reads u"; they are read off the derived
  expressions (which tensors and which averages over which kernel each one contains), not
  stored.  Edge attribute ``via``: the symbols through which v reads u.
* ``plan.graph`` holds ``targets``, ``order`` and ``depth``.

:meth:`Derivation.needed` is the backward closure ("what must be computed for X at layer ℓ"),
:meth:`Derivation.evaluation_order` a stable topological order, and :meth:`Derivation.signature`
a compact text form for tests.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import sympy as sp

from ..algebra.contractions import check_order
from ..algebra.symbols import GaussianAverage
from ..algebra.trace import Trace
from ..architectures.mlp import MLP
from ..base.errors import DeriveError, UnknownNameError, boundary
from .layerstep import LayerStep, closed_layer_step, closure_error
from .quantities import TARGETS, quantity

__all__ = ["derive", "Derivation", "TARGETS", "check_targets", "finite_targets", "order_for"]


@dataclass(frozen=True)
class Derivation:
    """Recursions (layer ℓ → ℓ+1, σ abstract, widths ``n_l``, ``n_lm1`` symbolic), the plan, and
    the steps that produced them.

    The result of :func:`derive`: ``spec`` (the network), ``targets`` and ``order`` (what was
    derived), ``recursions`` (target → SymPy recursion), ``plan`` (a graph of which quantity
    feeds which), ``steps`` (the :class:`Trace` of the derivation), ``target_steps`` and
    ``contracted`` (per target) and ``layer_step`` (the generic layer step it came from).
    """

    spec: MLP
    targets: tuple[str, ...]
    order: int
    recursions: dict = field(repr=False)
    plan: nx.DiGraph = field(repr=False)
    steps: Trace = field(repr=False)
    #: target → the steps that produced its recursion
    target_steps: dict = field(repr=False, default_factory=dict)
    #: the recursions with their sample sums Σ_β T_β ⟨∂_β f⟩ kept (the book's compact form)
    contracted: dict = field(repr=False, default_factory=dict)
    #: the layer step the recursions come from (its forward equation, scalars, all its forms)
    layer_step: LayerStep | None = field(repr=False, default=None, compare=False)

    def latex(self) -> str:
        """The recursions in the book's notation, one ``align`` environment."""
        from ..emit.documents import recursions_latex

        return recursions_latex(self)

    def formula(self, name: str):
        """The recursion ``name`` for display: a :class:`derive.emit.documents.Formula`, shown
        by Jupyter in the book's notation (``_repr_latex_``) and printed as compact text."""
        from ..emit.documents import formula

        return formula(self, name)

    def document(self, format: str = "tex") -> str:
        """The step-by-step derivation: a complete LaTeX document (``"tex"``) or Markdown."""
        from ..emit.documents import derivation_document

        return derivation_document(self, format)

    def numpy_module(self) -> str:
        """Source of a standalone numpy/scipy evaluator of these recursions (see
        :mod:`derive.emit.numpy_module`)."""
        from ..emit.numpy_module import numpy_module_source

        return numpy_module_source(self)

    # -- rich display (Jupyter) ------------------------------------------------------------

    def _summary(self) -> list[tuple[str, str]]:
        """(label, value) pairs of the short summary shown by ``_repr_html_``."""
        spec = self.spec
        widths = list(spec.widths)
        ws = (str(widths[0]) if widths and len(set(widths)) == 1 else str(widths)) if widths \
            else "—"
        return [("architecture", type(spec).__name__),
                ("equation", spec.equation.description or "—"),
                ("activation", spec.activation_name),
                ("depth", str(spec.depth)),
                ("hidden widths", ws),
                ("targets", ", ".join(self.targets)),
                ("order", f"{self.order} (" + ("with the 1/n correction" if self.order >= 1
                                               else "leading order") + ")")]

    def _repr_latex_(self) -> str | None:
        """The recursions in the book's notation (what :meth:`latex` returns: one ``align``
        environment, which MathJax and amsmath take as it is); None when they cannot be
        printed, so that the front end falls back to the text form."""
        try:
            return self.latex()
        except DeriveError:
            return None

    def _repr_html_(self) -> str:
        """A short summary: architecture, equation, activation, depth, widths, targets, order."""
        from html import escape

        rows = "".join(f"<tr><th style=\"text-align:left\">{escape(k)}</th>"
                       f"<td style=\"text-align:left\">{escape(v)}</td></tr>"
                       for k, v in self._summary())
        return (f"<div><b>Derivation</b> ({len(self.recursions)} recursions, layer ℓ → ℓ+1; "
                f"<code>.latex()</code> for the formulas)<table>{rows}</table></div>")

    def steps_for(self, target: str) -> Trace:
        """The steps that produced the recursion of ``target`` (rule, before, after, reference)."""
        if target not in self.recursions:
            raise UnknownNameError("target", target, self.recursions)
        return self.target_steps[target]

    def needed(self, quantity: str, layer: int) -> list[tuple]:
        """Every node the value of ``quantity`` at ``layer`` depends on (itself included)."""
        node = self._node(quantity, layer)
        return sorted(nx.ancestors(self.plan, node) | {node}, key=_node_key)

    def evaluation_order(self) -> list[tuple]:
        return list(nx.lexicographical_topological_sort(self.plan, key=_node_key))

    def signature(self) -> str:
        """Compact text form: ``K1 K2<K1 …`` (each node with its sorted parents)."""
        parts = []
        for node in self.evaluation_order():
            preds = sorted(self.plan.predecessors(node), key=_node_key)
            label = f"{node[0]}{node[1]}"
            parts.append(label + ("<" + ",".join(f"{p[0]}{p[1]}" for p in preds) if preds else ""))
        return " ".join(parts)

    def _node(self, quantity: str, layer: int) -> tuple:
        if quantity not in TARGETS:
            raise UnknownNameError("target", quantity, TARGETS)
        node = (quantity, int(layer), TARGETS[quantity][0])
        if node not in self.plan:
            raise DeriveError(f"{quantity} at layer {layer} is not in this plan (targets "
                              f"{list(self.targets)}, order {self.order}, depth {self.spec.depth})")
        return node


def _node_key(node: tuple) -> str:
    return f"{node[1]:04d}-{list(TARGETS).index(node[0])}"


def _reads(expr: sp.Expr) -> dict[str, set]:
    """Which layer-ℓ quantities a recursion reads, and through which symbols."""
    out: dict[str, set] = {}
    for t in expr.atoms(sp.Indexed):
        label = str(t.base)
        if label in TARGETS:
            out.setdefault(label, set()).add(label)
    for avg in expr.atoms(GaussianAverage):
        out.setdefault(avg.kernel, set()).add(f"<·>_{avg.kernel}")
    return out


#: what derive and predict compute when no targets are given (the NTK's O(1/n) statistics
#: only on request: they cost more than all of these together)
DEFAULT_TARGETS = ("K", "V", "G1", "Theta", "G2", "V1", "U")


def finite_targets(act, order: int = 1) -> tuple[str, ...]:
    """The default targets: every quantity of :data:`DEFAULT_TARGETS` that enters at ``order``
    or below and is finite for the activation ``act`` (Θ is infinite when σ jumps)."""
    return tuple(t for t in DEFAULT_TARGETS if TARGETS[t][0] <= order
                 and not (t == "Theta" and act.ntk_obstacle))


def order_for(spec, order) -> int:
    """``order`` checked (0, 1 or 2) against what the architecture closes at; None → the
    default (``spec.max_order``: 1, or 0 with a skip term).  Beyond what is derived for it
    (``spec.highest_order``): the layer step's error, which says why."""
    if order is None:
        return spec.max_order
    order = check_order(order)
    if order > spec.highest_order:
        raise closure_error(spec.equation)
    return order


def check_targets(targets, act=None, spec=None) -> tuple[str, ...]:
    """``targets`` (a name or a list of names of :data:`TARGETS`) as a tuple without repeats,
    or a DeriveError; with ``act``, Θ is refused when it is infinite for that activation; with
    ``spec``, quantities beyond the order its architecture closes at are refused."""
    if isinstance(targets, str):
        targets = [targets]
    try:
        targets = tuple(targets)
    except TypeError:
        raise DeriveError(f"targets must be a list of names from {sorted(TARGETS)}, got "
                          f"{targets!r:.60}") from None
    if not targets:
        raise DeriveError(f"give at least one target; known targets are {sorted(TARGETS)}")
    for t in targets:
        if not isinstance(t, str) or t not in TARGETS:
            raise UnknownNameError("target", str(t)[:40], TARGETS)
    if act is not None and any(set(quantity(t).correlator.fields) - {"z"} for t in targets):
        act.require_ntk()
    tangent = [t for t in targets if set(quantity(t).correlator.fields) - {"z", "Hhat"}]
    if act is not None and tangent and act.kinks:
        raise DeriveError(
            f"{', '.join(tangent)} (the dNTK's and ddNTKs' statistics) are not available for "
            f"σ = {act.name}, which has kinks: its σ'' is a δ-function, and the dNTK of an actual "
            "network (σ'' = 0 almost everywhere) differs from the one the expansion integrates; "
            "use a smooth activation (tanh, erf, gelu, swish, …) or a linear one")
    if spec is not None and any(TARGETS[t][0] > spec.highest_order for t in targets):
        raise closure_error(spec.equation)
    return tuple(dict.fromkeys(targets))


@boundary
def derive(spec: MLP, targets=None, order: int | None = None) -> Derivation:
    """Derive the layer recursions of ``spec`` for ``targets`` to ``order`` in 1/n (docs/conventions.md §6).

    ``order=0`` gives the leading order (K, Θ); ``order=1`` adds the O(1/n) data (G1, V, and
    for the NTK H1, A, B, D, F); ``order=2`` the O(1/n²) data G2, V1, U (docs/conventions.md
    §10; a cold derivation takes about a minute, once per process).
    The default is ``spec.max_order``: 1, or 0 for a forward equation with a skip term, whose
    O(1/n) closure is not derived (asking for it is an error that says why).
    ``targets`` defaults to all of them at ``order`` (without Θ when σ jumps: it is infinite).
    The recursions are derived once per process (the generic layer step does not depend on
    the spec; the spec fixes depth, widths and hyperparameters used by the plan and by
    :func:`derive.predict`).

    Parameters
    ----------
    spec : MLP, ResMLP or Network
        The network.
    targets : list of str, optional
        Names from ``("K", "Theta", "G1", "V", "H1", "A", "B", "D", "F", "G2", "V1", "U")``
        (default: K, Θ, G1, V, and G2, V1, U at order 2, those that enter at ``order``).
    order : {0, 1, 2}, optional
        The order in 1/n (default ``spec.max_order``).

    Returns
    -------
    Derivation
        The recursions, the plan and the steps that produced them.

    Raises
    ------
    DeriveError
        For an unknown target, an order other than 0, 1 or 2 or above what the architecture
        closes at, a target that enters above ``order``, or Θ asked for a σ that jumps.

    Examples
    --------
    >>> from derive import MLP
    >>> d = derive(MLP(3, 64, 'relu', 0.0, 2.0), order=0)
    >>> d.targets, sorted(d.recursions)
    (('K', 'Theta'), ['K', 'Theta'])
    """
    if not isinstance(spec, MLP):
        raise DeriveError(f"spec must be a derive.MLP, got {type(spec).__name__}")
    order = order_for(spec, order)
    targets = finite_targets(spec.activation, order) if targets is None else \
        check_targets(targets, spec.activation, spec)
    too_high = [t for t in targets if TARGETS[t][0] > order]
    if too_high:
        need = max(TARGETS[t][0] for t in too_high)
        raise DeriveError(f"targets {too_high} enter at order {need} in 1/n (O(1/n"
                          f"{'²' if need == 2 else ''})); ask for order={need} to get them")
    # the step at the highest order the architecture closes at (the leading-order recursions
    # are its ε⁰ parts); asking for more is refused by the layer step with the reason
    # (the default quantities K, V, G1, Θ always: the evaluators estimate the expansion
    # parameter from V's diagonal; the NTK's O(1/n) statistics and the O(1/n²) ones only when
    # asked for)
    top = max(order, spec.max_order)
    base = tuple(t for t in DEFAULT_TARGETS if TARGETS[t][0] <= min(top, 1))
    step: LayerStep = closed_layer_step(spec.equation, top, tuple(targets) + base)
    recursions = {name: e for name, e in step.recursions.items() if TARGETS[name][0] <= order}
    # plan: backward closure of the requested targets through the derived dependencies
    deps = {name: _reads(expr) for name, expr in recursions.items()}
    plan = nx.DiGraph(targets=targets, order=order, depth=spec.depth)

    def add(q: str, layer: int) -> tuple:
        node = (q, layer, TARGETS[q][0])
        plan.add_node(node, latex=TARGETS[q][1].replace(r"\ell", str(layer)),
                      kind="initial" if layer == 1 else "recursion")
        return node

    # layer by layer from the top (a loop, not a recursion: depth may be thousands of layers)
    current = []
    for t in targets:
        add(t, spec.depth)
        current.append(t)
    for layer in range(spec.depth, 1, -1):
        below = []
        for q in current:
            for dep, via in sorted(deps[q].items()):
                if dep not in recursions:
                    raise DeriveError(f"the recursion for {q} reads {dep}, which is not derived at "
                                      f"order {order}")
                if (dep, layer - 1, TARGETS[dep][0]) not in plan:
                    add(dep, layer - 1)
                    below.append(dep)
                plan.add_edge((dep, layer - 1, TARGETS[dep][0]), (q, layer, TARGETS[q][0]),
                              via=tuple(sorted(via)))
        current = below
    # only what the plan reads: the targets and the quantities their recursions need
    planned = {node[0] for node in plan}
    recursions = {name: e for name, e in recursions.items() if name in planned}
    return Derivation(spec, targets, order, recursions, plan, step.trace,
                      {name: step.steps[name] for name in recursions},
                      {name: step.contracted[name] for name in recursions}, step)
