r"""The objects the symbolic engine works with: indices, random families, sums, averages.

Index kinds (docs/conventions.md §1)
    :class:`NeuronIndex` (i, j, k …) and :class:`SampleIndex` (α, β …) are SymPy symbols of
    two distinct classes, so ``i`` the neuron index and ``i`` a sample index never compare
    equal.  Neuron indices never carry an implicit sum; every neuron sum is a
    :class:`NeuronSum` with an explicit range (``Σ_j 1 = n``).

Random families
    A :class:`Family` declares a set of jointly Gaussian, zero-mean variables
    ``F[idx…]`` and their covariance, built from the δ structures of docs/conventions.md §2:

    ==========================  ===========================  ================================
    constructor                 variable                     covariance
    ==========================  ===========================  ================================
    ``gaussian_field('z','K')``  z_{i;α}                      δ_{i1 i2} K_{α1 α2}
    ``bias('b', 'C_b')``         b_i                          δ_{i1 i2} C_b
    ``weight('W','C_W','n')``    W_{ij}                       δ_{i1 i2} δ_{j1 j2} C_W / n
    ==========================  ===========================  ================================

    Variables of different families are independent.  ``F[i, alpha]`` returns an inert
    :class:`RandomVar`; nothing is evaluated until :func:`derive.wick` (or ``E(...).doit()``).

Sample tensors
    :class:`SampleTensor` gives symmetric tensors with sample indices whose components are
    stored with canonically ordered indices (K_{βα} is K_{αβ}; V_{(γδ)(αβ)} is V_{(αβ)(γδ)}),
    so equal components hash equal and like terms merge.

All classes here are inert SymPy expressions: constructors validate and canonicalise, but
never expand or evaluate.
"""
from __future__ import annotations

from functools import lru_cache
from itertools import permutations, product
from math import factorial, prod
from typing import Iterable

import sympy as sp
from sympy.core.symbol import Str
from sympy.core.sorting import default_sort_key

from ..base.errors import DeriveError, IndexStructureError, boundary
from ..base.parsing import as_expr
from .pairings import perfect_matchings

__all__ = [
    "SymmetricBase",
    "PairSymmetricBase",
    "SymmetricIndexed",
    "NeuronIndex",
    "SampleIndex",
    "neuron_indices",
    "sample_indices",
    "SampleTensor",
    "tensor",
    "Family",
    "RandomVar",
    "gaussian_field",
    "nearly_gaussian_field",
    "ORDER_WEIGHT",
    "bias",
    "weight",
    "NeuronSum",
    "GaussianAverage",
    "neuron_indices_in",
    "random_vars_in",
]

NEURON = "neuron"
SAMPLE = "sample"


class NeuronIndex(sp.Symbol):
    """A neuron index (i, j, k …).  Never summed implicitly."""


class SampleIndex(sp.Symbol):
    """A sample index (α, β …) labelling an input of the data set."""


@boundary
def neuron_indices(names: str) -> tuple[NeuronIndex, ...]:
    """``neuron_indices('i j k')`` → three :class:`NeuronIndex` symbols.

    Parameters
    ----------
    names : str
        Names separated by spaces or commas, or a SymPy range such as ``'i1:5'``.

    Returns
    -------
    tuple of NeuronIndex
        One neuron index per name, in order.

    Raises
    ------
    DeriveError
        When ``names`` holds no name (an empty string) or cannot be read as symbol names.

    Examples
    --------
    >>> i, j = neuron_indices('i j')
    >>> i, type(j).__name__
    (i, 'NeuronIndex')
    """
    return _indices(names, NeuronIndex, "neuron_indices")


@boundary
def sample_indices(names: str) -> tuple[SampleIndex, ...]:
    """``sample_indices('alpha beta')`` → :class:`SampleIndex` symbols (printed α, β).

    Parameters
    ----------
    names : str
        Names separated by spaces or commas, or a SymPy range such as ``'alpha1:5'``.

    Returns
    -------
    tuple of SampleIndex
        One sample index per name, in order.

    Raises
    ------
    DeriveError
        When ``names`` holds no name (an empty string) or cannot be read as symbol names.

    Examples
    --------
    >>> sample_indices('alpha1:3')
    (alpha1, alpha2)
    """
    return _indices(names, SampleIndex, "sample_indices")


def _indices(names, cls, what: str) -> tuple:
    """Index symbols of class ``cls`` from ``names`` (the common body of neuron_indices and
    sample_indices): a DeriveError that says what to write when no name is given."""
    if not isinstance(names, str):
        raise DeriveError(f"{what} takes the names as one string, e.g. {what}('i j'), got "
                          f"{type(names).__name__}")
    try:
        return tuple(sp.symbols(names, cls=cls, seq=True))
    except ValueError:
        raise DeriveError(f"{what}({names!r:.40}) names no index; write names separated by "
                          f"spaces or commas, e.g. {what}('i j'), or a range such as 'i1:5'") \
            from None


def _sympify_label(x, what: str) -> sp.Expr:
    if isinstance(x, str):
        if not x.isidentifier():
            raise DeriveError(f"{what} {x!r} is not a valid name; use letters, digits and _")
        return sp.Symbol(x, positive=True) if what == "width" else sp.Symbol(x)
    try:
        return as_expr(x)
    except (sp.SympifyError, TypeError):
        raise DeriveError(f"{what} must be a name or a SymPy expression, got {x!r}") from None


def _is_index_like(x, kind) -> bool:
    return isinstance(x, kind) or (isinstance(x, sp.Integer) and x >= 1)


# ---------------------------------------------------------------------------------------------
# sample tensors
# ---------------------------------------------------------------------------------------------

#: the index permutations that leave a rank-4 tensor unchanged, by symmetry name: T[idx] =
#: T[idx[p] for p in perm] for every perm of the group these generate (docs/conventions.md §3)
GROUP_GENERATORS = {
    # V, A: symmetric within (a1 a2), within (a3 a4), and under exchanging the pairs
    "pairs": ((1, 0, 2, 3), (0, 1, 3, 2), (2, 3, 0, 1)),
    # D_{α1α2α3α4}: symmetric within each pair, the pairs not exchangeable
    "within": ((1, 0, 2, 3), (0, 1, 3, 2)),
    # F_{α1α3α2α4}: the two (NTK index, z index) pairs exchanged
    "swap": ((2, 3, 0, 1),),
    # B_{α1α3α2α4}: the pairs exchanged, or both pairs reversed
    "cross": ((2, 3, 0, 1), (1, 0, 3, 2)),
    # U_{(α1α2)(α3α4)(α5α6)} (rank 6): symmetric within each pair and under permuting the pairs
    "three_pairs": ((1, 0, 2, 3, 4, 5), (2, 3, 0, 1, 4, 5), (0, 1, 4, 5, 2, 3)),
    # the dNTK's and ddNTKs' statistics (docs/conventions.md §3): P_{δ0δ1δ2δ3} none;
    # Q_{δ0δ1δ2δ3} symmetric in δ1δ2; R_{δ0δ1δ2δ3} in δ2δ3; S, T, U^dd under (δ1δ3) ↔ (δ2δ4)
    "plain": ((0, 1, 2, 3),),
    "middle": ((0, 2, 1, 3),),
    "last": ((0, 1, 3, 2),),
    "pairswap": ((1, 0, 3, 2),),
}


def _group(generators: tuple) -> tuple:
    """All permutations generated by ``generators`` (closure under composition)."""
    ident = tuple(range(len(generators[0])))
    group, frontier = {ident}, [ident]
    while frontier:
        g = frontier.pop()
        for h in generators:
            gh = tuple(g[k] for k in h)
            if gh not in group:
                group.add(gh)
                frontier.append(gh)
    return tuple(sorted(group))


GROUPS = {name: _group(gens) for name, gens in GROUP_GENERATORS.items()}
_GROUP_RANK = {name: len(gens[0]) for name, gens in GROUP_GENERATORS.items()}


@lru_cache(maxsize=1 << 16)
def _canonical_indices(symmetry: str, idx: tuple) -> tuple:
    """The canonical order of a component's indices under its symmetry (cached: the same
    index tuples recur in every canonical-form search of a contraction)."""
    if symmetry == "sym":
        return tuple(sorted(idx, key=default_sort_key))
    if symmetry in GROUPS:
        keys = {x: default_sort_key(x) for x in idx}
        images = (tuple(idx[k] for k in perm) for perm in GROUPS[symmetry])
        return min(images, key=lambda t: [keys[x] for x in t])
    return idx


class SymmetricBase(sp.IndexedBase):
    """An ``IndexedBase`` whose components are fully symmetric in their indices."""

    symmetry = "sym"

    def __getitem__(self, indices, **kw_args):
        if not isinstance(indices, tuple):
            indices = (indices,)
        return SymmetricIndexed(self, *indices, **kw_args)


class PairSymmetricBase(SymmetricBase):
    """Components V[a, b, c, d] symmetric within (a b), within (c d) and under exchanging
    the two pairs."""

    symmetry = "pairs"


def _group_base(name: str) -> type:
    """The ``IndexedBase`` class whose components are canonical under the group ``name``."""
    if name == "pairs":
        return PairSymmetricBase
    return type(f"{name.capitalize()}SymmetricBase", (SymmetricBase,), {
        "symmetry": name, "__doc__": f"Components canonical under the index group {name!r} "
                                     f"(generators {GROUP_GENERATORS[name]})."})


_BASES = {"sym": SymmetricBase, "none": sp.IndexedBase,
          **{name: _group_base(name) for name in GROUP_GENERATORS}}


class SymmetricIndexed(sp.Indexed):
    """A component of a symmetric tensor; its indices are put in canonical order every time
    it is built, also when SymPy rebuilds it after a substitution (K[b, a] is K[a, b])."""

    def __new__(cls, base, *args, **kw_args):
        if isinstance(base, SymmetricBase):
            if base.symmetry in GROUPS and len(args) != _GROUP_RANK[base.symmetry]:
                raise IndexStructureError(f"{base} has {_GROUP_RANK[base.symmetry]} sample "
                                          f"indices, got {len(args)}")
            args = _canonical_indices(base.symmetry, tuple(as_expr(x) for x in args))
        return super().__new__(cls, base, *args, **kw_args)


class SampleTensor:
    r"""A tensor with sample indices and a declared symmetry.

    ``symmetry`` is one of

    * ``"sym"`` – fully symmetric in all indices (K_{αβ}, G^{\{1\}}_{αβ});
    * ``"pairs"`` – four indices, symmetric within each pair and under exchange of the pairs
      (V_{(α1α2)(α3α4)}, A);
    * ``"within"``, ``"swap"``, ``"cross"`` – four indices with the symmetries of D, F and B
      (:data:`GROUP_GENERATORS`);
    * ``"three_pairs"`` – six indices, symmetric within each of three pairs and under
      permuting the pairs (the six-point vertex U);
    * ``"none"``.

    ``T[a, b]`` returns a SymPy ``Indexed`` whose indices are in canonical order, and stay
    so under substitution.

    >>> a, b = sample_indices('alpha beta')
    >>> K = tensor('K')
    >>> K[b, a] == K[a, b]
    True
    >>> K[a, b].xreplace({a: b, b: a}) == K[a, b]
    True
    """

    _SYMMETRIES = ("sym", *GROUP_GENERATORS, "none")

    def __init__(self, label: str, rank: int = 2, symmetry: str = "sym"):
        if symmetry not in self._SYMMETRIES:
            raise DeriveError(f"unknown tensor symmetry {symmetry!r}; use one of {self._SYMMETRIES}")
        if symmetry in GROUPS and rank != _GROUP_RANK[symmetry]:
            raise DeriveError(f"symmetry {symmetry!r} needs a rank-{_GROUP_RANK[symmetry]} tensor "
                              "(V_{(a1 a2)(a3 a4)}, A, B, D, F: rank 4; U: rank 6)")
        self.label = label
        self.rank = rank
        self.symmetry = symmetry
        self.base = _BASES[symmetry](label)

    def __repr__(self) -> str:
        return f"tensor({self.label!r}, rank={self.rank}, symmetry={self.symmetry!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, SampleTensor) and (self.label, self.rank, self.symmetry) == (
            other.label, other.rank, other.symmetry)

    def __hash__(self) -> int:
        return hash((SampleTensor, self.label, self.rank, self.symmetry))

    def __getitem__(self, idx) -> sp.Indexed:
        if not isinstance(idx, tuple):
            idx = (idx,)
        idx = tuple(as_expr(x) for x in idx)
        if len(idx) != self.rank:
            raise IndexStructureError(
                f"tensor {self.label} has {self.rank} sample indices, got {len(idx)}: {idx}")
        for x in idx:
            if not _is_index_like(x, SampleIndex):
                raise IndexStructureError(
                    f"tensor {self.label} takes sample indices (SampleIndex or integer ≥ 1), "
                    f"got {x!r}; make it with derive.sample_indices(...)")
        return self.base[idx]


@boundary
def tensor(label: str, rank: int = 2, symmetry: str = "sym") -> SampleTensor:
    """Declare a sample tensor; see :class:`SampleTensor`.

    Parameters
    ----------
    label : str
        The tensor's name (``"K"``, ``"G1"``, ``"V"`` …).
    rank : int, optional
        The number of sample indices (default 2).
    symmetry : {"sym", "pairs", "within", "swap", "cross", "three_pairs", "none"}, optional
        Fully symmetric (default), symmetric within and between two index pairs (V, A; rank 4
        only), the rank-4 symmetries of D, F, B (:data:`GROUP_GENERATORS`), within and between
        three pairs (U; rank 6), or no symmetry.

    Returns
    -------
    SampleTensor
        Indexing it, ``T[a, b]``, gives a SymPy ``Indexed`` with its indices in canonical order.

    Raises
    ------
    DeriveError
        For an unknown ``symmetry``, or ``"pairs"`` with a rank other than 4.

    Examples
    --------
    >>> a, b = sample_indices('alpha beta')
    >>> K = tensor('K')
    >>> K
    tensor('K', rank=2, symmetry='sym')
    >>> K[b, a]
    K[alpha, beta]
    """
    return SampleTensor(label, rank, symmetry)


# ---------------------------------------------------------------------------------------------
# random families
# ---------------------------------------------------------------------------------------------

#: weight symbol counting 1/n insertions (G1 or V) in nearly-Gaussian expansions; it is
#: replaced by 1/n only when a graded result is turned into an expression (STYLE lesson 4)
ORDER_WEIGHT = sp.Symbol("varepsilon_1/n")


class Family(sp.Basic):
    r"""A family of zero-mean, jointly (nearly-)Gaussian variables ``F[idx…]``.

    ``args = (name, slots, scale, K, G1, V, n, G2, V1, U)``: ``slots`` is a tuple of
    ``"neuron"`` / ``"sample"`` strings giving the kind of each index.  The two-point function
    of ``F[a…]`` and ``F[b…]`` is ``scale · Π_{neuron slots} δ(a_s, b_s) · (K + G1/n +
    G2/n²)[a_sample, b_sample]`` with ``K`` (and ``G1``, ``G2``) symmetric sample tensors.  With
    a vertex label ``V`` the connected four-point function is, as in docs/conventions.md §3,
    ``(1/n)[δ_{12}δ_{34} V_{(12)(34)} + δ_{13}δ_{24} V_{(13)(24)} + δ_{14}δ_{23} V_{(14)(23)}]``
    (V + V1/n in place of V to O(1/n²)); with ``U`` the connected six-point function is
    (1/n²) Σ over the 15 pairings of δδδ U_{(..)(..)(..)} (docs/conventions.md §10).  A label left empty is a
    correction that is zero.  Without any the family is exactly Gaussian.  Use
    :func:`gaussian_field`, :func:`nearly_gaussian_field`, :func:`bias`, :func:`weight` to
    build one.
    """

    def __new__(cls, name, slots, scale=sp.S.One, tensor_label="", G1="", V="", n=sp.S.One,
                G2="", V1="", U=""):
        name = Str(str(name))
        slots = tuple(str(s) for s in slots)
        for s in slots:
            if s not in (NEURON, SAMPLE):
                raise DeriveError(f"family slot kinds are 'neuron' or 'sample', got {s!r}")
        if slots.count(SAMPLE) > 1:
            raise DeriveError("a family has at most one sample slot")
        if slots.count(SAMPLE) == 1 and not str(tensor_label):
            raise DeriveError(f"family {name} has a sample slot and needs a covariance tensor")
        for what, label in (("name", name.name), ("covariance label", tensor_label),
                            ("G1 label", G1), ("V label", V), ("G2 label", G2),
                            ("V1 label", V1), ("U label", U)):
            if not isinstance(label, (str, Str)) or (str(label) and not str(label).isidentifier()):
                raise DeriveError(f"the {what} of family {name} must be a name (letters, digits "
                                  f"and _), got {str(label)!r:.40}")
        corrections = any(str(x) for x in (G1, V, G2, V1, U))
        if corrections and slots.count(SAMPLE) != 1:
            raise DeriveError(f"family {name}: G1, V (and G2, V1, U) are sample tensors; the "
                              "family needs a sample slot")
        scale = as_expr(scale)
        if scale.is_negative:
            raise DeriveError(f"the variance scale of family {name} is negative ({scale}); "
                              "variances must be ≥ 0")
        n = as_expr(n)
        if corrections and (n == 1 or n.is_positive is False):
            raise DeriveError(f"family {name} has 1/n corrections and needs a positive width "
                              f"symbol n, got {n}")
        return super().__new__(cls, name, sp.Tuple(*(Str(s) for s in slots)), scale,
                               Str(str(tensor_label)), Str(str(G1)), Str(str(V)), n,
                               Str(str(G2)), Str(str(V1)), Str(str(U)))

    @property
    def name(self) -> str:
        return self.args[0].name

    @property
    def slots(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.args[1])

    @property
    def scale(self) -> sp.Expr:
        return self.args[2]

    @property
    def tensor(self) -> SampleTensor | None:
        lab = self.args[3].name
        return SampleTensor(lab, 2, "sym") if lab else None

    @property
    def G1(self) -> SampleTensor | None:
        lab = self.args[4].name
        return SampleTensor(lab, 2, "sym") if lab else None

    @property
    def V(self) -> SampleTensor | None:
        lab = self.args[5].name
        return SampleTensor(lab, 4, "pairs") if lab else None

    @property
    def n(self) -> sp.Expr:
        """The width whose inverse counts the corrections (n_{ℓ-1} for layer ℓ)."""
        return self.args[6]

    @property
    def G2(self) -> SampleTensor | None:
        """The second metric correction: E[zz] = δ (K + G1/n + G2/n²) (docs/conventions.md §10)."""
        lab = self.args[7].name
        return SampleTensor(lab, 2, "sym") if lab else None

    @property
    def V1(self) -> SampleTensor | None:
        """The 1/n correction of the four-point vertex: V + V1/n in the connected four-point
        function (docs/conventions.md §10)."""
        lab = self.args[8].name
        return SampleTensor(lab, 4, "pairs") if lab else None

    @property
    def U(self) -> SampleTensor | None:
        """The six-point vertex: κ3(z_i z_i, z_j z_j, z_k z_k) = U/n² for distinct neurons (§10),
        symmetric under the exchange of its three pairs and within each pair."""
        lab = self.args[9].name
        return SampleTensor(lab, 6, "three_pairs") if lab else None

    @property
    def second_order(self) -> bool:
        """Whether the family declares any of its O(1/n²) data (G2, V1, U)."""
        return any(self.args[k].name for k in (7, 8, 9))

    @property
    def is_gaussian(self) -> bool:
        return not any(self.args[k].name for k in (4, 5, 7, 8, 9))

    #: not a container, though it is indexed: SymPy's ``iterable`` must not take it for one
    #: (``simplify`` then indexed it with 0, 1, … and hit the index checks)
    _iterable = False

    def __getitem__(self, idx) -> "RandomVar":
        if not isinstance(idx, tuple):
            idx = (idx,)
        return RandomVar(self, *idx)

    def _pair_parts(self, a: tuple, b: tuple, tensor: SampleTensor | None):
        """(neuron δ edges as (x, y) tuples, sample factor or None) of a pair."""
        edges, factor = [], None
        for kind, x, y in zip(self.slots, a, b):
            if kind == NEURON:
                edges.append((x, y))
            else:
                factor = tensor[x, y]
        return edges, factor

    def two_point(self, a: tuple, b: tuple) -> list[tuple[list, list, int]]:
        """Monomials of E[F[a] F[b]]: a list of (δ edges, factors, order) where ``order``
        counts the powers of 1/n."""
        edges, fk = self._pair_parts(a, b, self.tensor)
        scale = [self.scale] if self.scale != 1 else []
        out = [(edges, scale + ([fk] if fk is not None else []), 0)]
        for tensor, order in ((self.G1, 1), (self.G2, 2)):
            if tensor is not None:
                _, fg = self._pair_parts(a, b, tensor)
                out.append((edges, scale + [fg], order))
        return out

    def _deltas(self, x: tuple, y: tuple) -> list:
        """The neuron δ edges of a pair of components."""
        return [(u, v) for kind, u, v in zip(self.slots, x, y) if kind == NEURON]

    def four_point(self, a, b, c, d) -> list[tuple[list, list, int]]:
        """Monomials of the connected E[F[a]F[b]F[c]F[d]] (docs/conventions.md §3): three
        δδV terms at order 1, and with V1 the three δδV1 at order 2 (§10)."""
        if self.V is None:
            return []
        sample = self.slots.index(SAMPLE)
        out = []
        for tensor, order in ((self.V, 1), (self.V1, 2)):
            if tensor is None:
                continue
            for (p, q), (r, t) in (((a, b), (c, d)), ((a, c), (b, d)), ((a, d), (b, c))):
                vf = tensor[p[sample], q[sample], r[sample], t[sample]]
                out.append((self._deltas(p, q) + self._deltas(r, t), [vf], order))
        return out

    def six_point(self, *comps) -> list[tuple[list, list, int]]:
        """Monomials of the connected six-point function of six components: the 15 pairings
        of δδδ U at order 2 (docs/conventions.md §10); none without U."""
        if self.U is None:
            return []
        sample = self.slots.index(SAMPLE)
        out = []
        for pairing in perfect_matchings(6):
            edges, idx = [], []
            for i, j in pairing:
                edges += self._deltas(comps[i], comps[j])
                idx += [comps[i][sample], comps[j][sample]]
            out.append((edges, [self.U[tuple(idx)]], 2))
        return out

    def covariance(self, a: tuple, b: tuple) -> sp.Expr:
        """E[F[a] F[b]] as a SymPy expression (δ's and sample tensors; G1 enters as G1/n)."""
        total = sp.S.Zero
        for edges, factors, order in self.two_point(a, b):
            term = sp.Mul(*(sp.KroneckerDelta(x, y) for x, y in edges), *factors)
            total += term / self.n ** order
        return total

    def _sympystr(self, printer) -> str:
        return self.name


class RandomVar(sp.Expr):
    r"""One random variable ``F[idx…]`` of a :class:`Family` (inert).

    Printed ``z[i, alpha]`` as text and ``z_{i;\alpha}`` in LaTeX (neuron indices, then a
    semicolon, then the sample index, as in the book).
    """

    is_commutative = True
    #: components of one neuron's vector can be differentiated (docs/conventions.md §6 step 4)
    _diff_wrt = True

    def __new__(cls, family: Family, *indices):
        if not isinstance(family, Family):
            raise DeriveError(f"RandomVar needs a Family, got {family!r}")
        indices = tuple(as_expr(x) for x in indices)
        if len(indices) != len(family.slots):
            raise IndexStructureError(
                f"{family.name} takes {len(family.slots)} indices {family.slots}, "
                f"got {len(indices)}: {indices}")
        for kind, x in zip(family.slots, indices):
            want = NeuronIndex if kind == NEURON else SampleIndex
            if not _is_index_like(x, want):
                raise IndexStructureError(
                    f"index {x!r} of {family.name} sits in a {kind} slot and must be a "
                    f"{want.__name__} (make it with derive.{kind}_indices(...)) or an integer ≥ 1")
        return super().__new__(cls, family, *indices)

    @property
    def family(self) -> Family:
        return self.args[0]

    @property
    def indices(self) -> tuple:
        return self.args[1:]

    def _eval_derivative(self, s):
        # ∂z_α/∂z_β for two components: 1 for the same component, else 0 (independent slots)
        return sp.S.One if s == self else sp.S.Zero

    @property
    def free_symbols(self):
        return set().union(*(x.free_symbols for x in self.indices)) if self.indices else set()

    def _split(self):
        neu = [x for k, x in zip(self.family.slots, self.indices) if k == NEURON]
        sam = [x for k, x in zip(self.family.slots, self.indices) if k == SAMPLE]
        return neu, sam

    def _sympystr(self, printer) -> str:
        return f"{self.family.name}[{', '.join(printer._print(x) for x in self.indices)}]"

    def _latex(self, printer) -> str:
        neu, sam = self._split()
        parts = ["".join(printer._print(x) for x in neu)] if neu else []
        if sam:
            parts.append("".join(printer._print(x) for x in sam))
        sub = ";".join(parts)
        name = self.family.name
        if getattr(printer, "printmethod", None) == "_latex":  # SymPy's printer: ζ, not "zeta"
            name = printer._print(sp.Symbol(name))
        return f"{name}_{{{sub}}}"


@boundary
def gaussian_field(name: str = "z", K: str = "K", neuron: bool = True) -> Family:
    """A Gaussian field with E[z_{i1;α1} z_{i2;α2}] = δ_{i1i2} K_{α1α2} (docs/conventions.md §3).

    With ``neuron=False`` the field has only a sample index (one neuron's vector z_α).

    Parameters
    ----------
    name : str, optional
        The field's name (default ``"z"``); components are ``z[i, alpha]``.
    K : str, optional
        The label of its covariance, a symmetric sample tensor (default ``"K"``).
    neuron : bool, optional
        Whether the field has a neuron index (default True).

    Returns
    -------
    Family
        The (exactly Gaussian) family; ``z[i, alpha]`` is one of its variables.

    Raises
    ------
    DeriveError
        For a name or label that is not a valid identifier.

    Examples
    --------
    >>> z = gaussian_field('z', 'K')
    >>> i, j = neuron_indices('i j'); a, b = sample_indices('alpha beta')
    >>> z.covariance((i, a), (j, b))
    KroneckerDelta(i, j)*K[alpha, beta]
    """
    slots = (NEURON, SAMPLE) if neuron else (SAMPLE,)
    return Family(name, slots, sp.S.One, K)


@boundary
def nearly_gaussian_field(name: str = "z", K: str = "K", G1: str = "G1", V: str = "V",
                          n="n", neuron: bool = True, G2: str = "", V1: str = "",
                          U: str = "") -> Family:
    r"""A nearly-Gaussian field to first order in 1/n (docs/conventions.md §3), or to second
    order with ``G2``, ``V1``, ``U`` (§10):

    E[z_{i1;α1} z_{i2;α2}] = δ_{i1i2} (K + G^{\{1\}}/n + G^{\{2\}}/n²)_{α1α2}, connected
    four-point function (1/n)[δ_{i1i2}δ_{i3i4} (V + V^{\{1\}}/n)_{(α1α2)(α3α4)} + 2
    permutations], connected six-point function (1/n²) Σ_{15 pairings} δδδ U, higher
    cumulants O(1/n³).  Pass ``G1=""`` or ``V=""`` to leave out either correction (the
    second-order ones are left out unless named).  A width name ``n`` becomes
    ``Symbol(n, positive=True)`` (or pass the symbol itself).

    Parameters
    ----------
    name : str, optional
        The field's name (default ``"z"``).
    K : str, optional
        The label of the leading-order metric (default ``"K"``).
    G1 : str, optional
        The label of the 1/n metric correction (default ``"G1"``; ``""`` leaves it out).
    V : str, optional
        The label of the four-point vertex (default ``"V"``; ``""`` leaves it out).
    n : str or sympy.Symbol, optional
        The width the corrections are divided by (default ``"n"``).
    neuron : bool, optional
        Whether the field has a neuron index (default True).
    G2, V1, U : str, optional
        The labels of the O(1/n²) data: the second metric correction, the 1/n correction of
        the four-point vertex and the six-point vertex (default: left out, i.e. zero).

    Returns
    -------
    Family
        The nearly-Gaussian family.

    Raises
    ------
    DeriveError
        For a name, label or width that is not a valid identifier or symbol.

    Examples
    --------
    >>> z = nearly_gaussian_field('z', 'K', 'G1', 'V', 'n')
    >>> i = neuron_indices('i')[0]; a = sample_indices('alpha')[0]
    >>> z.covariance((i, a), (i, a))
    K[alpha, alpha] + G1[alpha, alpha]/n
    """
    slots = (NEURON, SAMPLE) if neuron else (SAMPLE,)
    return Family(name, slots, sp.S.One, K, G1, V, _sympify_label(n, "width"), G2, V1, U)


@boundary
def bias(name: str = "b", C="C_b") -> Family:
    """Biases with E[b_{i1} b_{i2}] = δ_{i1i2} C_b (docs/conventions.md §2).

    Parameters
    ----------
    name : str, optional
        The family's name (default ``"b"``); components are ``b[i]``.
    C : str or sympy.Expr, optional
        The bias variance C_b (default the symbol ``C_b``).

    Returns
    -------
    Family
        A Gaussian family with one neuron index.

    Raises
    ------
    DeriveError
        For a name that is not a valid identifier or a variance that is not a SymPy expression.

    Examples
    --------
    >>> from derive import wick
    >>> b = bias(); i, j = neuron_indices('i j')
    >>> wick(b[i] * b[j])
    C_b*KroneckerDelta(i, j)
    """
    return Family(name, (NEURON,), _sympify_label(C, "variance"))


@boundary
def weight(name: str = "W", C="C_W", fan_in="n") -> Family:
    """Weights with E[W_{i1j1} W_{i2j2}] = δ_{i1i2} δ_{j1j2} C_W / n (docs/conventions.md §2).

    ``fan_in`` is the width of the layer the weights read from (n_{ℓ-1} for layer ℓ).  A name
    becomes ``Symbol(name, positive=True)``: use the same positive symbol as the range of the
    neuron sums it meets (or pass the symbol itself).

    Parameters
    ----------
    name : str, optional
        The family's name (default ``"W"``); components are ``W[i, j]``.
    C : str or sympy.Expr, optional
        The weight variance C_W (default the symbol ``C_W``).
    fan_in : str or sympy.Symbol, optional
        The width the variance is divided by (default ``"n"``).

    Returns
    -------
    Family
        A Gaussian family with two neuron indices.

    Raises
    ------
    DeriveError
        For a name that is not a valid identifier, or a variance or fan-in that is not a SymPy
        expression.

    Examples
    --------
    >>> from derive import wick
    >>> W = weight(); i, j = neuron_indices('i j')
    >>> wick(W[i, j] ** 2)
    C_W/n
    """
    return Family(name, (NEURON, NEURON),
                  _sympify_label(C, "variance") / _sympify_label(fan_in, "width"))


# ---------------------------------------------------------------------------------------------
# neuron sums
# ---------------------------------------------------------------------------------------------

class NeuronSum(sp.Expr):
    """Inert sum over neuron indices: ``NeuronSum(f, (j, n), (k, n), distinct=False, exclude=())``.

    ``distinct=True`` makes the summed indices pairwise different (Σ_{j≠k}); ``exclude`` adds
    further pairs ``(x, y)`` that must differ, where ``y`` may also be a free index
    (Σ_{k≠i}).  Nothing is contracted or counted in the constructor: that is the job of
    :func:`derive.simplify_sums` (δ contraction, Σ_j 1 = n) and :func:`derive.split_sum`
    (Σ_{j,k} = Σ_{j=k} + Σ_{j≠k}).

    Parameters
    ----------
    expr : sympy.Expr
        The summand.
    *limits : tuple of (NeuronIndex, range)
        One ``(index, n)`` per summed index; ``n`` is the number of neurons it runs over.
    distinct : bool, optional
        Make the summed indices pairwise different (default False).
    exclude : sequence of (NeuronIndex, NeuronIndex), optional
        Further pairs of indices that must differ.

    Returns
    -------
    NeuronSum
        The inert sum (a SymPy expression).

    Raises
    ------
    DeriveError
        When a summed index is not a :class:`NeuronIndex` or no limit is given.

    Examples
    --------
    >>> import sympy as sp
    >>> j, k = neuron_indices('j k'); n = sp.Symbol('n')
    >>> NeuronSum(sp.KroneckerDelta(j, k), (j, n), (k, n))
    NeuronSum(KroneckerDelta(j, k), (j, n), (k, n))
    """

    is_commutative = True

    def __new__(cls, expr, *limits, distinct=False, exclude=()):
        expr = as_expr(expr)
        if (len(limits) == 2 and isinstance(limits[0], sp.Tuple) and len(limits[0]) > 0
                and all(isinstance(x, sp.Tuple) and len(x) == 2 for x in limits[0])
                and isinstance(limits[1], sp.Tuple)
                and all(isinstance(x, sp.Tuple) for x in limits[1])):
            # SymPy rebuilding an existing sum (subs, xreplace): func(*args)
            exclude = tuple(tuple(p) for p in limits[1]) + tuple(exclude)
            limits = tuple(tuple(x) for x in limits[0])
        lims = []
        for lim in limits:
            try:
                idx, rng = lim
            except (TypeError, ValueError):
                raise DeriveError(f"a neuron-sum limit is (index, range), got {lim!r}") from None
            idx, rng = as_expr(idx), as_expr(rng)
            if not isinstance(idx, NeuronIndex):
                raise IndexStructureError(
                    f"sums run over NeuronIndex symbols; {idx!r} is a {type(idx).__name__}")
            if rng.is_positive is False:
                raise DeriveError(f"the range of a neuron sum must be a positive width, got {rng}")
            lims.append(sp.Tuple(idx, rng))
        if not lims:
            raise DeriveError("NeuronSum needs at least one (index, range) limit")
        names = [lim[0] for lim in lims]
        if len(set(names)) != len(names):
            raise IndexStructureError(f"a summed index appears twice in one sum: {names}")
        pairs = set()
        if distinct:
            pairs |= {frozenset((a, b)) for a in names for b in names if a != b}
        for pair in exclude:
            a, b = (as_expr(x) for x in pair)
            if a == b or not (isinstance(a, NeuronIndex) and isinstance(b, NeuronIndex)):
                raise IndexStructureError(f"an excluded pair is two different neuron indices, got {pair}")
            if a not in names and b not in names:
                raise IndexStructureError(f"excluded pair {pair} names no summed index")
            pairs.add(frozenset((a, b)))
        ranges = {str(lim[0]): lim[1] for lim in lims}
        for pr in pairs:
            a, b = sorted(pr, key=default_sort_key)
            if str(a) in ranges and str(b) in ranges and ranges[str(a)] != ranges[str(b)]:
                raise IndexStructureError(
                    f"indices {a} and {b} run over different ranges and cannot be required to differ")
        excl = sp.Tuple(*sorted((sp.Tuple(*sorted(pr, key=default_sort_key)) for pr in pairs),
                                key=default_sort_key))
        return super().__new__(cls, expr, sp.Tuple(*lims), excl)

    @property
    def function(self) -> sp.Expr:
        return self.args[0]

    @property
    def limits(self) -> tuple:
        return tuple(tuple(lim) for lim in self.args[1])

    @property
    def variables(self) -> tuple:
        return tuple(lim[0] for lim in self.args[1])

    @property
    def exclude(self) -> tuple:
        """Pairs of indices that must differ (each a 2-tuple)."""
        return tuple(tuple(p) for p in self.args[2])

    @property
    def distinct(self) -> bool:
        """True when every pair of summed indices is required to differ."""
        vs = self.variables
        ex = {frozenset(p) for p in self.exclude}
        return len(vs) > 1 and all(frozenset((a, b)) in ex for a in vs for b in vs if a != b)

    @property
    def free_symbols(self):
        inner = self.function.free_symbols - set(self.variables)
        extra = {x for p in self.exclude for x in p} - set(self.variables)
        return inner.union(extra, *(lim[1].free_symbols for lim in self.args[1]))

    def _sympystr(self, printer) -> str:
        lims = ", ".join(f"({printer._print(i)}, {printer._print(r)})" for i, r in self.limits)
        ex = ""
        if self.exclude:
            ex = ", exclude=[" + ", ".join(
                f"({printer._print(a)}, {printer._print(b)})" for a, b in self.exclude) + "]"
        return f"NeuronSum({printer._print(self.function)}, {lims}{ex})"

    def _latex(self, printer) -> str:
        vs = self.variables
        if not self.exclude:
            head = "".join(
                rf"\sum_{{{printer._print(i)}=1}}^{{{printer._print(r)}}}" for i, r in self.limits)
        else:
            conds = []
            rest = list(self.exclude)
            if self.distinct:
                conds.append(r" \neq ".join(printer._print(v) for v in vs) if len(vs) == 2 else
                             ",".join(printer._print(v) for v in vs) + r"\ \mathrm{distinct}")
                rest = [p for p in rest if not set(p) <= set(vs)]
            for x, y in rest:
                if x not in vs:  # the summed index first: k \neq i
                    x, y = y, x
                conds.append(rf"{printer._print(x)} \neq {printer._print(y)}")
            head = rf"\sum_{{{', '.join(conds)}}}"
        body = printer.parenthesize(self.function, sp.printing.precedence.PRECEDENCE["Mul"] - 1)
        return rf"{head} {body}"


# ---------------------------------------------------------------------------------------------
# Gaussian averages ⟨f⟩_K
# ---------------------------------------------------------------------------------------------

class GaussianAverage(sp.Expr):
    r"""Inert ⟨f⟩_K: the expectation of ``f`` over one neuron's Gaussian vector with covariance K.

    ``f`` is a SymPy expression in the components ``zeta[alpha]`` of a sample-only family
    (``gaussian_field('zeta', 'K', neuron=False)``).  ``GaussianAverage(f, 'K')``; the label
    names the covariance tensor.  Numbers come from :func:`derive.gaussian_expectation`.
    """

    is_commutative = True

    def __new__(cls, f, K="K"):
        return super().__new__(cls, as_expr(f), Str(str(K)))

    @property
    def function(self) -> sp.Expr:
        return self.args[0]

    @property
    def kernel(self) -> str:
        return self.args[1].name

    @property
    def free_symbols(self):
        return self.function.free_symbols

    def _sympystr(self, printer) -> str:
        return f"<{printer._print(self.function)}>_{self.kernel}"

    def _latex(self, printer) -> str:
        return rf"\left\langle {printer._print(self.function)} \right\rangle_{{{self.kernel}}}"



def summation_dummies(r: int, avoid=()) -> tuple:
    """r summed sample indices β1 … βr (γ1 …, δ1 … if those names are taken in ``avoid``)."""
    names = {str(x) for x in avoid}
    for base in ("beta", "gamma", "delta", "eta", "kappa"):
        cand = [f"{base}{m + 1}" for m in range(r)]
        if not names & set(cand):
            return tuple(SampleIndex(c) for c in cand)
    raise IndexStructureError(f"no free names for {r} summed sample indices (avoid {sorted(names)})")


def _tensor_indices(T) -> tuple:
    """The indices of a tensor component, or of a product of components in order."""
    if isinstance(T, sp.Indexed):
        return tuple(T.indices)
    if isinstance(T, sp.Mul) and all(isinstance(x, sp.Indexed) for x in T.args):
        return tuple(i for x in T.args for i in x.indices)
    raise IndexStructureError(f"a DerivativeContraction needs a tensor component or a product "
                              f"of components, got {T}")


def _renamed_components(factors: tuple, fresh: dict) -> frozenset:
    """The components ``factors`` (of a tensor or a product of them) with their indices
    renamed by ``fresh``, as the multiset of (class, base, indices in the order the class
    puts them): two renamings give the same product exactly when these agree."""
    out = {}
    for x in factors:
        idx = tuple(fresh.get(i, i) for i in x.indices)
        if isinstance(x, SymmetricIndexed) and isinstance(x.base, SymmetricBase):
            idx = _canonical_indices(x.base.symmetry, idx)
        key = (type(x), x.base, idx)
        out[key] = out.get(key, 0) + 1
    return frozenset(out.items())


@lru_cache(maxsize=1 << 14)
def _canonical_contraction(T, functions: tuple, groups: tuple) -> tuple:
    """The canonical (T, functions, groups) of a :class:`DerivativeContraction` (cached: a
    substitution rebuilds every contraction it reaches, mostly into ones already met, and the
    search below is the costly part of building one)."""
    if len(functions) != len(groups) or not functions:
        raise IndexStructureError("a DerivativeContraction needs one group of summed "
                                  "indices per function")
    dummies = [b for g in groups for b in g]
    indices = _tensor_indices(T)
    if (len(set(dummies)) != len(dummies) or not set(dummies) <= set(indices)
            or len(indices) != len(set(indices))):
        raise IndexStructureError(f"the summed indices {dummies} must be distinct indices "
                                  f"of {T}, each used once")
    # canonical form: factors in sorted order, dummies renamed in order of appearance
    # (T's own symmetry then puts its indices in canonical order); the derivatives of one
    # group commute, so of the orders of each group the one giving the least T is kept
    order = sorted(range(len(functions)), key=lambda k: default_sort_key(
        (functions[k], len(groups[k]))))
    functions = tuple(functions[k] for k in order)
    groups = tuple(groups[k] for k in order)
    free = set(indices) - set(dummies)
    used = set().union(*(f.free_symbols for f in functions)) | free
    if used & set(dummies):
        raise IndexStructureError(f"the summed indices {dummies} of a DerivativeContraction "
                                  "also appear free in its functions; rename them")
    names = summation_dummies(len(dummies), used)
    best, best_key, seen = None, None, set()
    factors = T.args if isinstance(T, sp.Mul) else (T,)
    # (past 6! orders the search costs more than it saves: the given order is kept)
    search = prod(factorial(len(g)) for g in groups) <= 720
    for orders in product(*(permutations(g) for g in groups)) if search else [groups]:
        fresh = dict(zip((b for g in orders for b in g), names))
        # most orders give a T already met (T's own symmetry): those are told apart by
        # their components' canonical indices, without building and sorting T again
        # (an order equal to an earlier one can never replace the best)
        renamed = _renamed_components(factors, fresh)
        if renamed in seen:
            continue
        seen.add(renamed)
        cand = T.xreplace(fresh)
        key = default_sort_key(cand)
        if best is None or key < best_key:
            best, best_key = (cand, tuple(tuple(fresh[b] for b in g) for g in orders)), key
        if len(indices) == len(dummies) and isinstance(T, sp.Indexed) \
                and T.base.__class__ is SymmetricBase:
            break  # a fully symmetric T is the same whatever the order
    T, groups = best
    return T, functions, groups


class DerivativeContraction(sp.Expr):
    r"""Inert sample sum of the nearly-Gaussian operator form (docs/conventions.md §6 step 4),

    .. math:: \sum_{\beta_1\ldots\beta_r} T_{\beta_1\ldots\beta_r}
              \prod_k \big\langle \partial_{\beta\in B_k} f_k \big\rangle_K ,

    e.g. Σ G1_{β1β2} ⟨∂_{β1}∂_{β2} f⟩ or Σ V_{(β1β2)(β3β4)} ⟨∂_{β1}∂_{β2} f⟩⟨∂_{β3}∂_{β4} g⟩.
    The β run over *all* samples and ∂_β is the derivative by the sample variable ζ_β, so the
    sum is exact whatever values the samples of the f_k take (also coinciding ones).

    ``DerivativeContraction(T, functions, groups, K)``: ``T`` a tensor component whose
    indices are the summed dummies (sample indices) and possibly free sample indices
    (D_{α1α2β1β2} of the NTK's correlation with z), or a product of components (the O(1/n²)
    terms: G1_{β1β2} V_{(β3β4)(β5β6)} …), ``functions`` the f_k, ``groups`` one
    tuple of dummies per f_k (the derivatives acting on it; one or more each), ``K`` the
    kernel label.
    :func:`derive.collapse_contractions` carries out the sums (product rule, δ_{βα});
    the numeric evaluator keeps the form and, for a kinked σ, integrates by parts instead.
    """

    is_commutative = True

    def __new__(cls, T, functions, groups, K="K"):
        functions = tuple(as_expr(f) for f in functions)
        groups = tuple(tuple(as_expr(b) for b in g) for g in groups)
        _tensor_indices(T)  # (a T that is no tensor refused before it is looked up)
        T, functions, groups = _canonical_contraction(T, functions, groups)
        return super().__new__(cls, T, sp.Tuple(*functions),
                               sp.Tuple(*(sp.Tuple(*g) for g in groups)), Str(str(K)))

    @property
    def tensor(self) -> sp.Indexed:
        return self.args[0]

    @property
    def functions(self) -> tuple:
        return tuple(self.args[1])

    @property
    def groups(self) -> tuple:
        return tuple(tuple(g) for g in self.args[2])

    @property
    def kernel(self) -> str:
        return self.args[3].name

    @property
    def free_symbols(self):
        dummies = {b for g in self.groups for b in g}
        out = set()
        for f in self.functions:
            out |= f.free_symbols
        return (out | self.tensor.free_symbols) - dummies

    def _sympystr(self, printer) -> str:
        bs = ",".join(printer._print(b) for g in self.groups for b in g)
        avgs = "*".join(
            f"<d({','.join(printer._print(b) for b in g)}) {printer._print(f)}>_{self.kernel}"
            for f, g in zip(self.functions, self.groups))
        return f"Sum_({bs}) {printer._print(self.tensor)}*{avgs}"

    def _latex(self, printer) -> str:
        bs = "".join(printer._print(b) for g in self.groups for b in g)
        avgs = "".join(
            r"\left\langle " + "".join(rf"\partial_{{{printer._print(b)}}}" for b in g)
            + rf"\left({printer._print(f)}\right) \right\rangle_{{{self.kernel}}}"
            for f, g in zip(self.functions, self.groups))
        return rf"\sum_{{{bs}}} {printer._print(self.tensor)} {avgs}"


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def random_vars_in(expr: sp.Basic) -> set[RandomVar]:
    """All :class:`RandomVar` atoms in ``expr``."""
    return set(expr.atoms(RandomVar))


def neuron_indices_in(expr: sp.Basic) -> set[NeuronIndex]:
    """Free neuron indices of ``expr`` (summed ones excluded)."""
    return {s for s in expr.free_symbols if isinstance(s, NeuronIndex)}
