"""Straight-line numpy code for an elementwise expression on N × N arrays with few temporaries.

The closed-form averages and the K, Θ steps of a generated evaluator are elementwise
expressions in N × N arrays (K_pq, Θ_pq, the averages), columns and rows (K_pp, K_qq) and
scalars.  Printed as one Python expression, every operation allocates a fresh N × N
temporary: at N = 3000 that is 72 MB of new pages per operation, and more time than the
arithmetic.  :func:`fused_lines` prints the same expression as a few statements that allocate
one array per independent branch and then work in place (``numpy.multiply(t0, x, out=t0)``),
with the scalar and vector parts of every sum and product folded into one operand first, so
an N × N array is touched once per operation that needs it.

The expression is evaluated exactly as written (no reassociation beyond grouping the scalar
and vector factors of a product and the scalar and vector terms of a sum), so the result
equals the one-expression form to rounding.
"""
from __future__ import annotations

import re

import sympy as sp

#: a unary ufunc as the printer prints it, f(_x): it takes out=
_UFUNC = re.compile(r"^((?:numpy|scipy\.special)\.\w+)\(_x\)$")


class _Fused:
    def __init__(self, printer, matrices: set, stem: str):
        self.printer, self.matrices, self.stem = printer, matrices, stem
        self.lines: list[str] = []
        self.count = 0

    def is_matrix(self, e: sp.Expr) -> bool:
        return any(s in self.matrices for s in e.free_symbols)

    def new(self) -> str:
        name = f"{self.stem}{self.count}"
        self.count += 1
        return name

    def code(self, e: sp.Expr) -> str:
        return self.printer.doprint(e)

    def value(self, e: sp.Expr) -> tuple[str, bool]:
        """(code, owned): the variable holding e's value, owned = a temporary of ours that
        may be overwritten; for a non-matrix e or a matrix symbol, its plain code."""
        if not self.is_matrix(e) or e.is_Symbol:
            return self.code(e), False
        if e.is_Add or e.is_Mul:
            return self.fold(e)
        if e.is_Pow:
            return self.power(e)
        if isinstance(e, sp.Function) and len(e.args) == 1:
            m = _UFUNC.match(self.code(e.func(sp.Symbol("_x"))))
            if m:
                return self.unary(m.group(1) + "({x})", m.group(1) + "({x}, out={x})",
                                  e.args[0])
        return self.whole(e)

    def whole(self, e: sp.Expr) -> tuple[str, bool]:
        """e as one expression into a new temporary."""
        t = self.new()
        self.lines.append(f"{t} = {self.code(e)}")
        return t, True

    def unary(self, fresh: str, inplace: str, arg: sp.Expr) -> tuple[str, bool]:
        """An elementwise function of arg: ``inplace`` on arg's temporary when it is ours, else
        ``fresh`` into a new one (templates with {x} for the argument)."""
        x, owned = self.value(arg)
        if owned:
            self.lines.append(inplace.format(x=x))
            return x, True
        t = self.new()
        self.lines.append(f"{t} = {fresh.format(x=x)}")
        return t, True

    def power(self, e: sp.Pow) -> tuple[str, bool]:
        base, exp = e.args
        if exp == -1:  # 1 / base
            return self.unary("1.0 / {x}", "numpy.divide(1.0, {x}, out={x})", base)
        if exp == sp.Rational(-1, 2):  # 1 / sqrt(base)
            root, _ = self.unary("numpy.sqrt({x})", "numpy.sqrt({x}, out={x})", base)
            self.lines.append(f"numpy.divide(1.0, {root}, out={root})")
            return root, True
        ufunc = {sp.Rational(1, 2): "numpy.sqrt", sp.Integer(2): "numpy.square"}.get(exp)
        if ufunc is None:
            return self.whole(e)
        return self.unary(ufunc + "({x})", ufunc + "({x}, out={x})", base)

    def fold(self, e: sp.Expr) -> tuple[str, bool]:
        """A sum or product: its scalar and vector operands as one cheap operand, the matrix
        operands accumulated into the first owned temporary (divisions for x**-1 factors)."""
        add = e.is_Add
        op, inverse = ("add", "subtract") if add else ("multiply", "divide")
        cheap, heavy = [], []
        for a in e.args:
            (heavy if self.is_matrix(a) else cheap).append(a)
        # in a product a matrix divisor x**-1 is divided by, not inverted and multiplied
        steps = []
        for a in heavy:
            if not add and a.is_Pow and a.args[1] == -1:
                steps.append((inverse, a.args[0]))
            elif add and a.is_Mul and a.args[0] == -1:
                steps.append((inverse, sp.Mul(*a.args[1:])))
            else:
                steps.append((op, a))
        # the accumulator: the first owned operand, else a fresh array from the first step
        values = [(kind, *self.value(x)) for kind, x in steps]
        first = next((k for k, v in enumerate(values) if v[0] == op and v[2]), None)
        if first is None:
            first = next(k for k, v in enumerate(values) if v[0] == op) \
                if any(v[0] == op for v in values) else None
        rest = [v for k, v in enumerate(values) if k != first]
        if first is None:  # only divisors / subtrahends: start from the cheap part
            start = self.code(sp.Add(*cheap) if add else sp.Mul(*cheap))
            kind, arg, owned = rest.pop(0)
            acc = arg if owned else self.new()
            self.lines.append(f"numpy.{kind}({start}, {arg}, out={acc})" if owned
                              else f"{acc} = numpy.{kind}({start}, {arg})")
            cheap = []
        else:
            _, arg, owned = values[first]
            if owned:
                acc = arg
            else:
                acc = self.new()
                if rest:
                    kind, other, _ = rest.pop(0)
                    self.lines.append(f"{acc} = numpy.{kind}({arg}, {other})")
                elif cheap:
                    self.lines.append(
                        f"{acc} = numpy.{op}({arg}, {self.code(sp.Add(*cheap) if add else sp.Mul(*cheap))})")
                    cheap = []
                else:
                    self.lines.append(f"{acc} = numpy.array({arg})")
        for kind, arg, _ in rest:
            self.lines.append(f"numpy.{kind}({acc}, {arg}, out={acc})")
        if cheap:
            c = sp.Add(*cheap) if add else sp.Mul(*cheap)
            if c != (0 if add else 1):
                self.lines.append(f"numpy.{op}({acc}, {self.code(c)}, out={acc})")
        return acc, True


def fused_lines(printer, expr: sp.Expr, matrices: set, stem: str = "t") -> tuple[list[str], str]:
    """Statements computing ``expr`` (an elementwise expression; ``matrices``: its symbols
    that are N × N arrays, the others scalars or broadcasting vectors) and the variable that
    holds the result (an input itself when ``expr`` is a bare symbol, or plain code when it
    holds no matrix: inputs are never written to).  Temporaries are named ``{stem}0``,
    ``{stem}1``, …"""
    f = _Fused(printer, set(matrices), stem)
    out, _ = f.value(expr)
    return f.lines, out
