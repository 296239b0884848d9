"""Integer pairing enumerations (derive.algebra.pairings) against brute force."""
import itertools
from collections import Counter
from math import factorial

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from derive.algebra.pairings import (block_partitions, double_factorial, gaussian_monomial_moment,
                             perfect_matchings, typed_pairings)


@pytest.mark.parametrize("k", range(0, 7))
def test_matching_count_is_double_factorial(k):
    assert sum(1 for _ in perfect_matchings(2 * k)) == double_factorial(2 * k - 1)
    assert list(perfect_matchings(2 * k + 1)) == []


def test_matchings_are_distinct_and_perfect():
    ms = list(perfect_matchings(8))
    assert len({frozenset(m) for m in ms}) == len(ms) == 105
    for m in ms:
        assert sorted(x for p in m for x in p) == list(range(8))


@settings(max_examples=60, deadline=2000)
@given(st.lists(st.integers(0, 3), min_size=1, max_size=4))
def test_typed_pairings_match_brute_force(counts):
    if sum(counts) % 2:
        counts = counts + [1]
    types = [a for a, c in enumerate(counts) for _ in range(c)]
    brute = Counter()
    for pm in perfect_matchings(len(types)):
        key = Counter(tuple(sorted((types[x], types[y]))) for x, y in pm)
        brute[tuple(sorted(key.items()))] += 1
    assert dict(typed_pairings(counts)) == dict(brute)


def _bell_like_count(m, sizes, cap4):
    # brute force: all set partitions with block sizes restricted
    def parts(rest):
        if not rest:
            yield []
            return
        a = rest[0]
        for r in range(len(rest)):
            for others in itertools.combinations(rest[1:], r):
                block = (a,) + others
                if len(block) not in sizes:
                    continue
                remaining = [x for x in rest[1:] if x not in others]
                for p in parts(remaining):
                    yield [block] + p
    return sum(1 for p in parts(list(range(m))) if sum(len(b) == 4 for b in p) <= cap4)


@pytest.mark.parametrize("m", [2, 4, 6, 8])
def test_block_partitions_count(m):
    got = list(block_partitions(m, (2, 4), {4: 1}))
    assert len(got) == _bell_like_count(m, (2, 4), 1)
    assert len({tuple(p) for p in got}) == len(got)


def test_monomial_moment_against_quadrature():
    # independent: E[z1^2 z2^2] for correlated pair by Monte-Carlo-free Gauss-Hermite on 2D
    K = np.array([[1.3, 0.4], [0.4, 0.7]])
    L = np.linalg.cholesky(K)
    x, w = np.polynomial.hermite_e.hermegauss(30)
    w = w / w.sum()
    U1, U2 = np.meshgrid(x, x, indexing="ij")
    W = np.outer(w, w)
    Z1 = L[0, 0] * U1
    Z2 = L[1, 0] * U1 + L[1, 1] * U2
    for e in [(2, 2), (3, 1), (4, 0), (1, 3), (2, 4)]:
        ref = float((W * Z1 ** e[0] * Z2 ** e[1]).sum())
        assert gaussian_monomial_moment(e, K) == pytest.approx(ref, rel=1e-12, abs=1e-12)
    assert gaussian_monomial_moment((1, 2), K) == 0.0
    assert double_factorial(7) == factorial(7) // (2 ** 3 * factorial(3))
