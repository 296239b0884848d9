"""Connected correlators from moments and back."""
from fractions import Fraction
from itertools import product

import numpy as np
import pytest
import sympy as sp

from derive import (cumulant, gaussian_field, moment_from_cumulants, neuron_indices,
                    sample_indices, tensor, wick)


def test_generic_formula_low_orders():
    x1, x2, x3 = sp.symbols("x1:4")
    from derive import E
    assert cumulant([x1]) == E(x1)
    assert cumulant([x1, x2]) == E(x1 * x2) - E(x1) * E(x2)
    c3 = cumulant([x1, x2, x3])
    assert c3.coeff(E(x1) * E(x2) * E(x3)) == 2


def _discrete_moment_factory():
    """Moments of a small non-Gaussian joint distribution over (x, y), exact rationals."""
    support = [(-1, 2), (0, 1), (2, -1), (1, 1)]
    probs = [Fraction(1, 8), Fraction(3, 8), Fraction(1, 4), Fraction(1, 4)]
    x, y = sp.symbols("x y")

    def moment(expr):
        p = sp.Poly(expr, x, y)
        total = 0
        for (a, b), pr in zip(support, probs):
            total += pr * p.eval({x: a, y: b})
        return sp.Rational(total)

    return x, y, moment


@pytest.mark.parametrize("items", ["xx", "xy", "xxy", "xyyx", "xxxyy"])
def test_round_trip_on_non_gaussian_distribution(items):
    x, y, moment = _discrete_moment_factory()
    xs = [x if c == "x" else y for c in items]
    back = moment_from_cumulants(xs, lambda block: cumulant(block, moment))
    assert sp.simplify(back - moment(sp.Mul(*xs))) == 0


def test_gaussian_connected_correlators_vanish_beyond_two():
    z = gaussian_field("z", "K")
    i = neuron_indices("i1:7")
    a = sample_indices("a1:7")
    fields = [z[i[r], a[r]] for r in range(6)]
    assert sp.expand(cumulant(fields[:4], wick)) == 0
    assert sp.expand(cumulant(fields, wick)) == 0
    assert cumulant(fields[:2], wick) == sp.KroneckerDelta(i[0], i[1]) * tensor("K")[a[0], a[1]]
