r"""Connected correlators (cumulants) from moments and back (PDLT §1.2).

.. math::
    \mathbb{E}[x_1\cdots x_m] = \sum_{\pi} \prod_{B\in\pi} \mathbb{E}[x_B]\big|_{\text{conn}},
    \qquad
    \mathbb{E}[x_1\cdots x_m]\big|_{\text{conn}} = \sum_{\pi} (-1)^{|\pi|-1}(|\pi|-1)!
        \prod_{B\in\pi}\mathbb{E}[x_B],

sums over the set partitions π of {1…m}.  The items may be any SymPy expressions (random
variables with indices, plain symbols); the moment of a block is computed by ``moment``
(default: the inert :class:`derive.E`, so the result is the generic formula; pass
:func:`derive.wick` to evaluate Gaussian moments).
"""
from __future__ import annotations

from math import factorial
from typing import Callable, Sequence

import sympy as sp
from sympy.utilities.iterables import multiset_partitions

from ..base.errors import DeriveError, boundary
from ..base.parsing import as_expr
from .contractions import E
from .trace import Trace

__all__ = ["cumulant", "moment_from_cumulants", "set_partitions"]


def set_partitions(m: int):
    """All set partitions of ``range(m)`` (lists of blocks), in a fixed order."""
    if m == 0:
        return [[]]
    return list(multiset_partitions(list(range(m))))


def _items(items) -> list[sp.Expr]:
    items = [as_expr(x) for x in items]
    if not items:
        raise DeriveError("a correlator needs at least one variable")
    return items


@boundary
def cumulant(items: Sequence, moment: Callable | None = None, trace: Trace | None = None) -> sp.Expr:
    """The connected correlator E[x_1 … x_m]|_conn by Möbius inversion over set partitions.

    Parameters
    ----------
    items : sequence
        The variables x_1 … x_m (SymPy expressions; repeats allowed).
    moment : callable, optional
        ``moment(block_items)`` gives the moment of a list of items (default: an inert
        ``E[…]``).
    trace : Trace, optional
        Where to record the rule that fired.

    Returns
    -------
    sympy.Expr
        The sum over set partitions of (−1)^{k−1} (k−1)! times products of moments.

    Raises
    ------
    DeriveError
        When ``items`` is empty.

    Examples
    --------
    >>> import sympy as sp
    >>> x, y = sp.symbols('x y')
    >>> cumulant([x, y])
    -E[x]*E[y] + E[x*y]
    """
    xs = _items(items)
    moment = moment or E
    out = sp.S.Zero
    cache: dict = {}
    for partition in set_partitions(len(xs)):
        k = len(partition)
        term = sp.Integer((-1) ** (k - 1) * factorial(k - 1))
        for block in partition:
            key = tuple(block)
            if key not in cache:
                cache[key] = moment(sp.Mul(*(xs[i] for i in block)))
            term *= cache[key]
        out += term
    if trace is not None:
        trace.record("cumulant.invert", E(sp.Mul(*xs)), out)
    return out


@boundary
def moment_from_cumulants(items: Sequence, connected: Callable | None = None,
                          trace: Trace | None = None) -> sp.Expr:
    """E[x_1 … x_m] as the sum over set partitions of products of connected correlators.

    ``connected(block_items)`` returns the connected correlator of a list of items (default:
    :func:`cumulant` with inert moments).

    Parameters
    ----------
    items : sequence
        The variables x_1 … x_m (SymPy expressions; repeats allowed).
    connected : callable, optional
        The connected correlator of a list of items (default: :func:`cumulant`).
    trace : Trace, optional
        Where to record the rule that fired.

    Returns
    -------
    sympy.Expr
        The moment as a sum of products of connected correlators.

    Raises
    ------
    DeriveError
        When ``items`` is empty.

    Examples
    --------
    >>> import sympy as sp
    >>> x, y = sp.symbols('x y')
    >>> sp.expand(moment_from_cumulants([x, y]))
    E[x*y]
    """
    xs = _items(items)
    connected = connected or (lambda block: cumulant(block))
    out = sp.S.Zero
    cache: dict = {}
    for partition in set_partitions(len(xs)):
        term = sp.S.One
        for block in partition:
            key = tuple(block)
            if key not in cache:
                cache[key] = connected([xs[i] for i in block])
            term *= cache[key]
        out += term
    if trace is not None:
        trace.record("cumulant.expand", E(sp.Mul(*xs)), out)
    return out
