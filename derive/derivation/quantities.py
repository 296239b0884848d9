r"""Statistics as declarations: what each named quantity of a layer *is* (docs/conventions.md §3).

A :class:`Quantity` says which correlator of which fields of layer ℓ+1 it is read from, which
δ-structure of the neuron indices it is the coefficient of, and at which order in 1/n it
enters (with the normalisation of docs/conventions.md §3: a quantity entering at order k is n_ℓ^k times
the ε^k part, n_ℓ being layer ℓ+1's fan-in).  The layer step
(:func:`derive.derivation.layerstep.derive_layer_step`) computes every declared quantity the
same way: conditional Wick over the layer's parameters → neuron-sum split → joint
nearly-Gaussian expectation over layer ℓ's fields → explicit truncation → the coefficient of
the declared δ-structure.  Nothing below is specific to one quantity.

Fields (the factors of a correlator):

* ``"z"`` — z^{(ℓ+1)}_{i;α}: one neuron index, one sample index;
* ``"Hhat"`` — the NTK Ĥ^{(ℓ+1)}_{i1i2;α1α2}: two neuron indices, two sample indices.

The NTK's O(1/n) statistics are declared the same way: H1 on ``Hhat`` at order 1; A, B as
the connected ``(Hhat, Hhat)`` correlator with structures δ_{i1i2}δ_{i3i4} and
δ_{i1i3}δ_{i2i4}; D, F as the connected ``(Hhat, z, z)`` correlator.  B and F are read with
their sample indices in the order of their names (B_{α1α3α2α4}: ``samples=(0, 2, 1, 3)``).
The O(1/n²) ones (docs/conventions.md §10) are declared the same way in
:data:`NNLO_QUANTITIES`: G2 on ``(z, z)`` at order 2, V1 on the connected four-point function
at order 2, U on the connected six-point function with δ_{i1i2}δ_{i3i4}δ_{i5i6}.  The layer step
derives them (``derive_layer_step(order=2)``); they are in :data:`TARGETS` (the names the
public API accepts), after the first-order ones.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FIELDS", "Correlator", "Quantity", "QUANTITIES", "NNLO_QUANTITIES",
           "TANGENT_QUANTITIES", "ALL_QUANTITIES", "TARGETS", "quantity", "RANK4", "MULTI", "NNLO",
           "TANGENT"]

#: field → (neuron indices, sample indices) of one factor: the preactivations, the NTK, the dNTK
#: and the two ddNTKs (docs/conventions.md §3; :data:`derive.architectures.forward.TANGENT_FIELDS`)
FIELDS = {"z": (1, 1), "Hhat": (2, 2), "dHhat": (3, 3), "ddIHhat": (4, 4), "ddIIHhat": (4, 4)}


@dataclass(frozen=True)
class Correlator:
    """E[Π fields] of layer ℓ+1 (``connected``: its cumulant, the products of the lower
    correlators over every partition subtracted); ``what`` names it in the steps."""

    fields: tuple
    connected: bool
    what: str

    @property
    def neurons(self) -> int:
        return sum(FIELDS[f][0] for f in self.fields)

    @property
    def samples(self) -> int:
        return sum(FIELDS[f][1] for f in self.fields)


@dataclass(frozen=True)
class Quantity:
    """A named statistic: the coefficient of the δ-structure ``structure`` (pairs of neuron
    slots, 0-based over the correlator's neuron indices; slots in different pairs are
    different neurons) of ``correlator``, at order ``order`` in 1/n, times n_ℓ^order.
    ``samples[k]`` is the correlator's sample slot that is the quantity's k-th index."""

    name: str
    correlator: Correlator
    structure: tuple
    order: int
    latex: str
    #: the symmetry of its sample indices (a :class:`derive.SampleTensor` symmetry name)
    symmetry: str
    title: str
    definition: str
    samples: tuple = (0, 1, 2, 3)

    @property
    def rank(self) -> int:
        return self.correlator.samples

    def tensor(self):
        """Layer ℓ's value of the quantity, as the sample tensor the recursions are written in."""
        # imported here: the declarations import nothing heavy (the CLI's parser reads them)
        from ..algebra.symbols import SampleTensor

        return SampleTensor(self.name, self.rank, self.symmetry)


METRIC = Correlator(("z", "z"), False, "metric")
FOUR_POINT = Correlator(("z", "z", "z", "z"), True,
                        "connected four-point function (the metric products subtracted)")
NTK_MEAN = Correlator(("Hhat",), False, "NTK mean")
NTK_VARIANCE = Correlator(("Hhat", "Hhat"), True, "NTK two-point function (connected)")
NTK_CROSS = Correlator(("Hhat", "z", "z"), True,
                       "NTK–preactivation three-point function (connected)")
_CROSSED = (0, 2, 1, 3)
#: the definitions that A, B (and D, F) are read from (docs/conventions.md §3)
_VARIANCE = (r"E[ΔĤ_{i1i2;α1α2} ΔĤ_{i3i4;α3α4}] = (1/n_{ℓ−1}) [δ_{i1i2}δ_{i3i4} A_{(α1α2)(α3α4)} "
             r"+ δ_{i1i3}δ_{i2i4} B_{α1α3α2α4} + δ_{i1i4}δ_{i2i3} B_{α1α4α2α3}]")
_CROSS = (r"E[ΔĤ_{i1i2;α1α2} z_{i3;α3} z_{i4;α4}] = (1/n_{ℓ−1}) [δ_{i1i2}δ_{i3i4} D_{α1α2α3α4} "
          r"+ δ_{i1i3}δ_{i2i4} F_{α1α3α2α4} + δ_{i1i4}δ_{i2i3} F_{α1α4α2α3}]")

#: every quantity the layer step derives, in the planner's order
QUANTITIES = (
    Quantity("K", METRIC, ((0, 1),), 0, r"K^{(\ell)}", "sym", "Kernel",
             r"E[z_{i1;α1} z_{i2;α2}] = δ_{i1i2} (K + G1/n_{ℓ−1} + …)_{α1α2}: the ε⁰ part"),
    Quantity("Theta", NTK_MEAN, ((0, 1),), 0, r"\Theta^{(\ell)}", "sym",
             "NTK mean (leading order)",
             r"E[Ĥ_{i1i2;α1α2}] = δ_{i1i2} (Θ + H1/n_{ℓ−1} + …)_{α1α2}: the ε⁰ part"),
    Quantity("G1", METRIC, ((0, 1),), 1, r"G^{\{1\}(\ell)}", "sym", "NLO metric correction",
             r"E[z_{i1;α1} z_{i2;α2}] = δ_{i1i2} (K + G1/n_{ℓ−1} + …)_{α1α2}: n_{ℓ−1} × the ε¹ part"),
    Quantity("V", FOUR_POINT, ((0, 1), (2, 3)), 1, r"V^{(\ell)}", "pairs", "Four-point vertex",
             r"connected E[z z z z] = (1/n_{ℓ−1}) [δ_{i1i2}δ_{i3i4} V_{(α1α2)(α3α4)} + 2 perms]"),
    Quantity("H1", NTK_MEAN, ((0, 1),), 1, r"H^{\{1\}(\ell)}", "sym",
             "NLO correction of the NTK mean",
             r"E[Ĥ_{i1i2;α1α2}] = δ_{i1i2} (Θ + H1/n_{ℓ−1} + …)_{α1α2}: n_{ℓ−1} × the ε¹ part"),
    Quantity("A", NTK_VARIANCE, ((0, 1), (2, 3)), 1, r"A^{(\ell)}", "pairs",
             "NTK variance, diagonal part",
             _VARIANCE),
    Quantity("B", NTK_VARIANCE, ((0, 2), (1, 3)), 1, r"B^{(\ell)}", "cross",
             "NTK variance, crossed part",
             _VARIANCE, _CROSSED),
    Quantity("D", NTK_CROSS, ((0, 1), (2, 3)), 1, r"D^{(\ell)}", "within",
             "NTK–preactivation cross-correlation, diagonal part",
             _CROSS),
    Quantity("F", NTK_CROSS, ((0, 2), (1, 3)), 1, r"F^{(\ell)}", "swap",
             "NTK–preactivation cross-correlation, crossed part",
             _CROSS, _CROSSED),
)

SIX_POINT = Correlator(("z",) * 6, True,
                      "connected six-point function (the products of the lower ones subtracted)")

#: the O(1/n²) statistics (docs/conventions.md §10), derived by the layer step at order 2
NNLO_QUANTITIES = (
    Quantity("G2", METRIC, ((0, 1),), 2, r"G^{\{2\}(\ell)}", "sym", "NNLO metric correction",
             r"E[z_{i1;α1} z_{i2;α2}] = δ_{i1i2} (K + G1/n_{ℓ−1} + G2/n_{ℓ−1}² + …)_{α1α2}: "
             r"n_{ℓ−1}² × the ε² part"),
    Quantity("V1", FOUR_POINT, ((0, 1), (2, 3)), 2, r"V^{\{1\}(\ell)}", "pairs",
             "NLO correction of the four-point vertex",
             r"connected E[z z z z] = (1/n_{ℓ−1}) [δ_{i1i2}δ_{i3i4} (V + V1/n_{ℓ−1})_{(α1α2)(α3α4)} "
             r"+ 2 perms]: n_{ℓ−1}² × the ε² part"),
    Quantity("U", SIX_POINT, ((0, 1), (2, 3), (4, 5)), 2, r"U^{(\ell)}", "three_pairs",
             "Six-point vertex",
             r"connected E[z⁶] = (1/n_{ℓ−1}²) [δ_{i1i2}δ_{i3i4}δ_{i5i6} U_{(α1α2)(α3α4)(α5α6)} "
             r"+ 14 pairings]", (0, 1, 2, 3, 4, 5)),
)

DNTK_CROSS = Correlator(("dHhat", "z"), True,
                        "dNTK–preactivation two-point function (its mean is zero)")
DDNTK_I_MEAN = Correlator(("ddIHhat",), False, "mean of the first ddNTK")
DDNTK_II_MEAN = Correlator(("ddIIHhat",), False, "mean of the second ddNTK")
_DNTK_DEF = (r"E[dĤ_{i0i1i2;δ0δ1δ2} z_{i3;δ3}] = (1/n_{ℓ−1}) [δ_{i0i1}δ_{i2i3} P_{δ0δ1δ2δ3} "
             r"+ δ_{i0i2}δ_{i1i3} P_{δ0δ2δ1δ3} + δ_{i0i3}δ_{i1i2} Q_{δ0δ1δ2δ3}]")
_DDI_DEF = (r"E[ddIĤ_{i0i1i2i3;δ0δ1δ2δ3}] = (1/n_{ℓ−1}) [δ_{i0i1}δ_{i2i3} R_{δ0δ1δ2δ3} "
            r"+ δ_{i0i2}δ_{i1i3} R_{δ0δ2δ1δ3} + δ_{i0i3}δ_{i1i2} R_{δ0δ3δ1δ2}]")
_DDII_DEF = (r"E[ddIIĤ_{i1i2i3i4;δ1δ2δ3δ4}] = (1/n_{ℓ−1}) [δ_{i1i2}δ_{i3i4} S_{δ1δ2δ3δ4} "
             r"+ δ_{i1i3}δ_{i2i4} T_{δ1δ2δ3δ4} + δ_{i1i4}δ_{i2i3} U^{dd}_{δ1δ2δ3δ4}]")

#: the O(1/n) statistics of the dNTK and the ddNTKs (docs/conventions.md §3, book ch. 11 and ∞),
#: derived by the layer step at order 1 only when asked for (they are not part of the default
#: set: the NTK's own statistics do not read them)
TANGENT_QUANTITIES = (
    Quantity("P", DNTK_CROSS, ((0, 1), (2, 3)), 1, r"P^{(\ell)}", "plain",
             "dNTK–preactivation cross-correlation, first part", _DNTK_DEF),
    Quantity("Q", DNTK_CROSS, ((0, 3), (1, 2)), 1, r"Q^{(\ell)}", "middle",
             "dNTK–preactivation cross-correlation, second part", _DNTK_DEF),
    Quantity("R", DDNTK_I_MEAN, ((0, 1), (2, 3)), 1, r"R^{(\ell)}", "last",
             "mean of the first ddNTK", _DDI_DEF),
    Quantity("S", DDNTK_II_MEAN, ((0, 1), (2, 3)), 1, r"S^{(\ell)}", "pairswap",
             "mean of the second ddNTK, first part", _DDII_DEF),
    Quantity("T", DDNTK_II_MEAN, ((0, 2), (1, 3)), 1, r"T^{(\ell)}", "pairswap",
             "mean of the second ddNTK, second part", _DDII_DEF),
    Quantity("Udd", DDNTK_II_MEAN, ((0, 3), (1, 2)), 1, r"U^{\mathrm{dd}(\ell)}", "pairswap",
             "mean of the second ddNTK, third part", _DDII_DEF),
)

#: every declared quantity, in the planner's order
ALL_QUANTITIES = QUANTITIES + NNLO_QUANTITIES + TANGENT_QUANTITIES
#: quantity → (order at which it enters, LaTeX): the planner's table (the O(1/n²) ones after
#: the first-order ones, the dNTK's and ddNTKs' last)
TARGETS = {q.name: (q.order, q.latex) for q in ALL_QUANTITIES}
#: the dNTK's and ddNTKs' statistics: P, Q, R, S, T, Udd
TANGENT = tuple(q.name for q in TANGENT_QUANTITIES)
#: the quantities with four sample indices (N⁴ arrays): V, A, B, D, F, V1, P, Q, R, S, T, Udd
RANK4 = tuple(q.name for q in ALL_QUANTITIES if q.rank == 4)
#: the quantities with more than two sample indices (those of RANK4: N⁴ arrays; U: N⁶)
MULTI = tuple(q.name for q in ALL_QUANTITIES if q.rank > 2)
#: the O(1/n²) statistics (docs/conventions.md §10): G2, V1, U
NNLO = tuple(q.name for q in NNLO_QUANTITIES)
#: the NTK's O(1/n) statistics: H1, A, B, D, F
NTK_NLO = tuple(q.name for q in QUANTITIES if "Hhat" in q.correlator.fields and q.order >= 1)
#: those of them with four sample indices: A, B, D, F
NTK_FOUR = tuple(q for q in NTK_NLO if q in RANK4)


def quantity(name: str) -> Quantity:
    for q in ALL_QUANTITIES:
        if q.name == name:
            return q
    raise KeyError(name)
