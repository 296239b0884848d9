r"""Combinatorics of Wick contractions on plain integers.

Everything symbolic in :mod:`derive.algebra.contractions` reduces to the enumerations here: fields are
numbered ``0 … m-1`` (or grouped into *types* of identical fields), and only the merged result
is turned into SymPy.  Four enumerations are provided:

* :func:`perfect_matchings` — all (2k−1)!! pairings of 2k distinct fields;
* :func:`typed_pairings` — pairings of a *multiset* of fields, returned as pair-count
  matrices with their multiplicities, so that E[z^{12}] is one term rather than 10 395;
* :func:`orbit_pairings` — pairings of a multiset of fields *up to a symmetry group* that
  permutes blocks of summed (dummy) indices, e.g. the k interchangeable factors of
  (Σ_j z_{j;α1} z_{j;α2})^k: one representative per class of equivalent pairings, weighted
  by the size of the class;
* :func:`block_partitions` — set partitions into blocks of prescribed sizes, the skeleton of
  the cumulant (connected-correlator) expansion used by nearly-Gaussian perturbation theory.

:func:`gaussian_monomial_moment` evaluates E[∏ z_a^{e_a}] for numeric covariances with the
typed enumeration; it is the exact tier of polynomial activations.

>>> sum(1 for _ in perfect_matchings(6))
15
>>> [(dict(p), mult) for p, mult in typed_pairings((4,))]
[({(0, 0): 2}, 3)]
"""
from __future__ import annotations

from collections import Counter, defaultdict
from functools import lru_cache
from math import factorial, prod
from typing import Iterator, Sequence

import numpy as np

__all__ = [
    "double_factorial",
    "perfect_matchings",
    "typed_pairings",
    "orbit_pairings",
    "block_partitions",
    "gaussian_monomial_moment",
]


def double_factorial(k: int) -> int:
    """k!! for k ≥ −1 (with (−1)!! = 0!! = 1).

    >>> [double_factorial(k) for k in (-1, 0, 1, 3, 5, 13)]
    [1, 1, 1, 3, 15, 135135]
    """
    if k < -1:
        raise ValueError(f"double factorial needs k ≥ -1, got {k}")
    return prod(range(k, 0, -2)) if k > 0 else 1


def perfect_matchings(m: int) -> Iterator[tuple[tuple[int, int], ...]]:
    """All perfect matchings of ``range(m)`` as tuples of pairs ``(a, b)`` with ``a < b``.

    The order is deterministic: the lowest unmatched field is paired with each later one in
    increasing order.  An odd ``m`` yields nothing (odd Gaussian moments vanish).
    """
    if m % 2:
        return
    pairs: list[tuple[int, int]] = []

    def rec(rest: tuple[int, ...]):
        if not rest:
            yield tuple(pairs)
            return
        a = rest[0]
        for pos in range(1, len(rest)):
            pairs.append((a, rest[pos]))
            yield from rec(rest[1:pos] + rest[pos + 1:])
            pairs.pop()

    yield from rec(tuple(range(m)))


def typed_pairings(counts: Sequence[int]) -> Iterator[tuple[tuple[tuple[tuple[int, int], int], ...], int]]:
    r"""Pairings of a multiset of fields, grouped by which *types* get paired.

    ``counts[a]`` fields are of type ``a`` (fields of one type are interchangeable).  Yields
    ``(pair_counts, multiplicity)`` where ``pair_counts`` is a sorted tuple of
    ``((a, b), m_ab)`` with ``a ≤ b`` and ``m_ab > 0`` — the number of pairs joining a field of
    type ``a`` to one of type ``b`` — and ``multiplicity`` is how many of the
    (Σc − 1)!! perfect matchings have exactly these counts:

    .. math:: \frac{\prod_a c_a!}{\prod_{a<b} m_{ab}!\ \prod_a m_{aa}!\, 2^{m_{aa}}} .

    >>> sorted(typed_pairings((2, 2)))
    [((((0, 0), 1), ((1, 1), 1)), 1), ((((0, 1), 2),), 2)]
    """
    counts = tuple(int(c) for c in counts)
    if any(c < 0 for c in counts):
        raise ValueError(f"field counts must be non-negative, got {counts}")
    if sum(counts) % 2:
        return
    T = len(counts)
    numer = prod(factorial(c) for c in counts)
    chosen: list[tuple[tuple[int, int], int]] = []

    def rec(a: int, rem: list[int], denom: int):
        # skip exhausted types
        while a < T and rem[a] == 0:
            a += 1
        if a == T:
            yield tuple(chosen), numer // denom
            return
        r = rem[a]
        # m_aa self pairs, then distribute the remaining r - 2 m_aa among types b > a
        for maa in range(r // 2, -1, -1):
            left = r - 2 * maa
            d0 = denom * factorial(maa) * (2 ** maa)
            if maa:
                chosen.append(((a, a), maa))
            rem[a] = 0
            yield from distribute(a, a + 1, left, rem, d0, a)
            rem[a] = r
            if maa:
                chosen.pop()

    def distribute(a: int, b: int, left: int, rem: list[int], denom: int, owner: int):
        if left == 0:
            yield from rec(owner + 1, rem, denom)
            return
        if b >= T:
            return
        # capacity check: remaining fields of types ≥ b must absorb `left`
        if sum(rem[b:]) < left:
            return
        for mab in range(min(left, rem[b]), -1, -1):
            if mab:
                chosen.append(((a, b), mab))
                rem[b] -= mab
            yield from distribute(a, b + 1, left - mab, rem, denom * factorial(mab), owner)
            if mab:
                rem[b] += mab
                chosen.pop()

    yield from rec(0, list(counts), 1)


def orbit_pairings(counts: Sequence[int], shapes: Sequence[int], slots: Sequence[Sequence[int]],
                   blocks: Sequence[Sequence[int]], block_classes: Sequence[int],
                   kinds: Sequence[int] | None = None
                   ) -> Iterator[tuple[tuple[tuple[tuple[int, int], int], ...], int]]:
    r"""Pairings of a multiset of fields up to permutations of interchangeable index blocks.

    Fields come in *types* as for :func:`typed_pairings` (``counts[a]`` identical fields of
    type ``a``).  A type carries summed (dummy) indices ``slots[a]`` (integer ids, in the
    order they occur) and a ``shapes[a]`` id standing for everything else.  The dummies are
    grouped into *blocks* — ``blocks[b]`` is a tuple of dummy ids, e.g. the indices summed in
    one factor of (Σ_{j,k} W_{jk} z_j z_k)^3 — and blocks of one class
    (``block_classes[b]``, blocks of equal length) are interchangeable: the symmetry group G
    is the product over classes of all permutations of the blocks of the class, a permutation
    σ sending the p-th dummy of block b to the p-th dummy of block σ(b), and a type to the
    type of the same shape with the renamed slots.  The multiset of fields must be invariant
    under G (``ValueError`` otherwise).  ``kinds`` (optional) forbids pairs between fields of
    different kinds (independent families).

    Yields ``(pair_counts, multiplicity)`` in the format of :func:`typed_pairings`.  Each
    yielded pair-count matrix stands for ``multiplicity`` perfect matchings of the fields,
    all images of it under G, and the yielded classes partition the (m−1)!! matchings
    (m = Σ counts; the product of (m_k − 1)!! over kinds with ``kinds``).  Any function of a
    pairing that is invariant under G — the δ-contracted, canonically renamed value of a Wick
    term under neuron sums — therefore sums to the same total over the yielded classes as
    over all matchings.

    The enumeration pairs the first unpaired field (preferring fields whose blocks are
    already touched) with each possible partner, but of the partners that one permutation of
    the still *untouched* blocks maps into one another — a permutation that fixes everything
    paired so far — only the first is followed, weighted by their number.  A G-orbit may
    still be split over several yielded classes (different paths to images of one pairing);
    callers merge after canonical renaming.  For the 7 factors of (Σ_j z_{j;α1} z_{j;α2})^7
    this yields 729 classes instead of 135 135 matchings.  Output order is deterministic.

    >>> # (Σ_j x_j y_j)^2: fields x_0 y_0 x_1 y_1; dummies 0, 1, one block each, one class
    >>> [(dict(p), m) for p, m in orbit_pairings((1, 1, 1, 1), (0, 1, 0, 1),
    ...                                          ((0,), (0,), (1,), (1,)), ((0,), (1,)), (0, 0))]
    [({(0, 1): 1, (2, 3): 1}, 1), ({(0, 2): 1, (1, 3): 1}, 1), ({(0, 3): 1, (1, 2): 1}, 1)]
    >>> sum(m for _, m in orbit_pairings((1,) * 6, (0, 1) * 3, ((0,), (0,), (1,), (1,), (2,), (2,)),
    ...                                  ((0,), (1,), (2,)), (0, 0, 0)))
    15
    """
    counts = tuple(int(c) for c in counts)
    T = len(counts)
    shapes = tuple(shapes)
    slots = tuple(tuple(int(d) for d in s) for s in slots)
    blocks = tuple(tuple(int(d) for d in b) for b in blocks)
    block_classes = tuple(int(c) for c in block_classes)
    kinds = tuple(kinds) if kinds is not None else (0,) * T
    if not (len(shapes) == len(slots) == len(kinds) == T) or len(blocks) != len(block_classes):
        raise ValueError("counts, shapes, slots and kinds need one entry per type, block_classes "
                         "one per block")
    if any(c < 0 for c in counts):
        raise ValueError(f"field counts must be non-negative, got {counts}")
    where: dict[int, tuple[int, int]] = {}  # dummy -> (block, position)
    for b, ds in enumerate(blocks):
        for p, d in enumerate(ds):
            if d in where:
                raise ValueError(f"dummy {d} lies in two blocks")
            where[d] = (b, p)
    if any(d not in where for s in slots for d in s):
        raise ValueError(f"every dummy of slots {slots} must lie in a block {blocks}")
    index = {(shapes[a], slots[a]): a for a in range(T)}
    if len(index) != T:
        raise ValueError("two types share a shape and dummies: merge them into one count")
    members = defaultdict(list)
    for b, c in enumerate(block_classes):
        members[c].append(b)
    # invariance under G: the exchanges of neighbouring blocks of a class generate it
    for bs in members.values():
        for b, e in zip(bs, bs[1:]):
            if len(blocks[b]) != len(blocks[e]):
                raise ValueError(f"blocks {blocks[b]} and {blocks[e]} of one class differ in length")
            swap = dict(zip(blocks[b], blocks[e]))
            swap.update(zip(blocks[e], blocks[b]))
            for a in range(T):
                t = index.get((shapes[a], tuple(swap.get(x, x) for x in slots[a])))
                if t is None or counts[t] != counts[a] or kinds[t] != kinds[a]:
                    raise ValueError(f"the fields are not invariant under exchanging blocks "
                                     f"{blocks[b]} and {blocks[e]}: no orbit enumeration")
    per_kind = Counter()
    for a in range(T):
        per_kind[kinds[a]] += counts[a]
    if any(c % 2 for c in per_kind.values()):
        return

    rem = list(counts)
    touch = [0] * len(blocks)  # paired fields (and the current one) holding a dummy of block b
    type_blocks = [tuple(sorted({where[d][0] for d in s})) for s in slots]
    slot_pos = [tuple(where[d] for d in s) for s in slots]
    pairs: dict[tuple[int, int], int] = {}
    found: dict[tuple, int] = {}

    def rec(left: int, weight: int) -> None:
        if left == 0:
            key = tuple(sorted(pairs.items()))
            found[key] = found.get(key, 0) + weight
            return
        # the current field: fewest untouched blocks first, then the lowest type
        c = min((a for a in range(T) if rem[a]),
                key=lambda a: (sum(1 for b in type_blocks[a] if not touch[b]), a))
        rem[c] -= 1
        for b in type_blocks[c]:
            touch[b] += 1
        groups: dict[tuple, list[int]] = {}
        for t in range(T):
            if not rem[t] or kinds[t] != kinds[c]:
                continue
            order: dict[int, int] = {}
            key = [shapes[t]]
            for b, p in slot_pos[t]:
                if touch[b]:
                    key.append(blocks[b][p])
                else:  # untouched: only its class and place of first occurrence matter
                    key.append((order.setdefault(b, len(order)), block_classes[b], p))
            key = tuple(key)
            if key in groups:
                groups[key][1] += rem[t]
            else:
                groups[key] = [t, rem[t]]
        for t, w in groups.values():
            rem[t] -= 1
            for b in type_blocks[t]:
                touch[b] += 1
            p = (c, t) if c <= t else (t, c)
            pairs[p] = pairs.get(p, 0) + 1
            rec(left - 2, weight * w)
            if pairs[p] == 1:
                del pairs[p]
            else:
                pairs[p] -= 1
            for b in type_blocks[t]:
                touch[b] -= 1
            rem[t] += 1
        for b in type_blocks[c]:
            touch[b] -= 1
        rem[c] += 1

    rec(sum(counts), 1)
    yield from found.items()


def block_partitions(m: int, sizes: Sequence[int], max_blocks: dict[int, int] | None = None
                     ) -> Iterator[tuple[tuple[int, ...], ...]]:
    """Set partitions of ``range(m)`` into blocks whose sizes lie in ``sizes``.

    ``max_blocks`` optionally caps how many blocks of a given size may appear (e.g.
    ``{4: 1}``: at most one four-point block, as in first-order perturbation theory).
    Blocks are sorted tuples; the lowest unplaced field always opens the next block, so
    each partition is produced exactly once, in a deterministic order.

    >>> sum(1 for _ in block_partitions(6, (2, 4), {4: 1}))
    30
    """
    sizes = sorted(set(int(s) for s in sizes))
    caps = dict(max_blocks or {})
    blocks: list[tuple[int, ...]] = []
    used: dict[int, int] = {s: 0 for s in sizes}

    def combos(pool: tuple[int, ...], k: int):
        if k == 0:
            yield ()
            return
        for pos in range(len(pool) - k + 1):
            for rest in combos(pool[pos + 1:], k - 1):
                yield (pool[pos],) + rest

    def rec(rest: tuple[int, ...]):
        if not rest:
            yield tuple(blocks)
            return
        a, pool = rest[0], rest[1:]
        for s in sizes:
            if s > len(rest) or (s in caps and used[s] >= caps[s]):
                continue
            used[s] += 1
            for others in combos(pool, s - 1):
                blocks.append((a,) + others)
                yield from rec(tuple(x for x in pool if x not in others))
                blocks.pop()
            used[s] -= 1

    yield from rec(tuple(range(m)))


@lru_cache(maxsize=4096)
def _typed_pairing_table(exponents: tuple[int, ...]):
    return tuple(typed_pairings(exponents))


def gaussian_monomial_moment(exponents: Sequence[int], K) -> np.ndarray:
    r"""E[∏_a z_a^{e_a}] for z ~ N(0, K), exactly (Isserlis), vectorised over leading axes of K.

    ``K`` has shape ``(..., m, m)`` with ``m = len(exponents)``.

    >>> float(gaussian_monomial_moment((4,), np.array([[2.0]])))
    12.0
    >>> float(gaussian_monomial_moment((1, 1), np.array([[1.0, 0.3], [0.3, 1.0]])))
    0.3
    """
    K = np.asarray(K, dtype=float)
    exps = tuple(int(e) for e in exponents)
    if K.shape[-2:] != (len(exps), len(exps)):
        raise ValueError(f"K must end in shape ({len(exps)}, {len(exps)}), got {K.shape}")
    out = np.zeros(K.shape[:-2])
    with np.errstate(over="ignore", invalid="ignore"):  # callers check for overflow
        for pair_counts, mult in _typed_pairing_table(exps):
            term = np.full(K.shape[:-2], float(mult))
            for (a, b), mab in pair_counts:
                term = term * K[..., a, b] ** mab
            out = out + term
    return out
