r"""Graded expressions: c_0 + c_1/n + c_2/n² + …, kept as a map order → coefficient.

Orders are explicit (STYLE lesson 4): a :class:`Graded` is built by the engine with one
coefficient per power of 1/n, truncated by :meth:`Graded.truncate` (a named pass), and turned
into one SymPy expression only on request (:meth:`Graded.as_expr`).  ``O(1/n^{k+1})`` appears
only in printed output.
"""
from __future__ import annotations

from typing import Mapping

import sympy as sp

from ..base.errors import OrderError
from ..base.parsing import as_expr

__all__ = ["Graded"]


class Graded:
    """``Σ_k coeffs[k] / n^k`` with ``k ≥ 0`` (orders with a zero coefficient are dropped).

    ``order`` is the highest order that was *computed*: coefficients above it are unknown,
    not zero, and printing shows ``+ O(1/n^{order+1})``.  Attributes: ``n`` (the expansion
    parameter, a SymPy expression) and ``order`` (an int); ``g[k]`` is the coefficient of
    1/n^k (zero where none was stored).  The constructor raises :class:`DeriveError`
    (``OrderError``) for an order that is not a whole number ≥ 0 or a coefficient above
    ``order``.
    """

    __slots__ = ("_coeffs", "n", "order")

    def __init__(self, coeffs: Mapping[int, sp.Expr], n, order: int):
        self.n = as_expr(n)
        self.order = int(order)
        bad = [k for k in coeffs if int(k) != k or k < 0]
        if bad:
            raise OrderError(f"orders of a graded expression are whole numbers ≥ 0, got {bad}")
        if any(k > order for k in coeffs):
            raise OrderError(f"coefficient of order {max(coeffs)} given for an expansion "
                             f"computed to order {order}")
        self._coeffs = {int(k): as_expr(v) for k, v in sorted(coeffs.items()) if v != 0}

    def __getitem__(self, k: int) -> sp.Expr:
        if k > self.order:
            raise OrderError(f"order {k} was not computed (this expansion stops at order "
                             f"{self.order})")
        return self._coeffs.get(k, sp.S.Zero)

    def items(self):
        return [(k, self[k]) for k in range(self.order + 1)]

    def truncate(self, order: int) -> "Graded":
        """Keep orders ≤ ``order`` (docs/conventions.md §6 step 5)."""
        if order < 0:
            raise OrderError(f"cannot truncate at a negative order ({order})")
        return Graded({k: v for k, v in self._coeffs.items() if k <= order}, self.n,
                      min(order, self.order))

    def as_expr(self) -> sp.Expr:
        """The expression c_0 + c_1/n + … (without the O(…) of the neglected orders)."""
        return sp.Add(*(v / self.n ** k for k, v in self._coeffs.items()))

    def map(self, fn) -> "Graded":
        """Apply ``fn`` to every coefficient."""
        return Graded({k: fn(v) for k, v in self._coeffs.items()}, self.n, self.order)

    def __eq__(self, other) -> bool:
        if not isinstance(other, Graded):
            return NotImplemented
        return (self.n, self.order) == (other.n, other.order) and all(
            sp.simplify(self[k] - other[k]) == 0 for k in range(self.order + 1))

    __hash__ = None

    def __repr__(self) -> str:
        terms = " + ".join(f"({sp.sstr(v)})/{sp.sstr(self.n)}**{k}" if k else f"({sp.sstr(v)})"
                           for k, v in self._coeffs.items()) or "0"
        return f"{terms} + O(1/{sp.sstr(self.n)}**{self.order + 1})"

    def _repr_latex_(self) -> str:
        body = sp.latex(self.as_expr()) if self._coeffs else "0"
        return rf"$\displaystyle {body} + O\!\left(\frac{{1}}{{{sp.latex(self.n ** (self.order + 1))}}}\right)$"
