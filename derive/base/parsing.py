r"""The one parser of user strings: activations, ``derive wick``/``derive expect`` expressions,
spec values.  It cannot execute code.

User text is parsed with Python's :mod:`ast` into a syntax tree and *that tree* is walked with a
whitelist; nothing is ever passed to ``eval``, ``exec``, ``sympy.parse_expr`` or
``sympy.sympify`` (all of which end in ``eval``).  Allowed are:

* numbers: whole numbers (at most :data:`MAX_INT_DIGITS` digits) and finite decimals;
* the names given by the caller (``variables``: ``z``, ``z1``, index names …) and the
  constants ``pi`` and ``E``;
* calls of the functions in :data:`FUNCTIONS` (the table the activations use), positional
  arguments only;
* ``+ - * / **`` (and ``^``, read as ``**``, with its precedence) and unary ``+ -``;
* inside ``Piecewise((value, condition), …)`` only: the pairs, comparisons
  (``< <= > >= == !=``), ``&``, ``|``, ``~`` and ``True``/``False``;
* subscripts ``name[i, alpha]`` of the fields the caller allows (``derive wick``), with the
  caller's index names inside.

Everything else — attribute access, lambdas, comprehensions, strings, keyword arguments,
starred arguments, names not in the tables, calls of anything but a listed function name — is
refused with a :class:`~derive.base.errors.ParseError` that quotes the offending part.  Limits on
the length (:data:`MAX_LENGTH`), the number of syntax nodes (:data:`MAX_NODES`) and of
arguments of a call (:data:`MAX_ARGS`), the nesting depth (:data:`MAX_DEPTH`), the size of
whole numbers and of exponents (:data:`MAX_EXPONENT`; numeric powers must stay within float
range) keep SymPy from being asked to build something that takes minutes or all the memory.

>>> import sympy as sp
>>> z = sp.Symbol("z")
>>> parse("0.5*z*(1 + erf(z/sqrt(2)))", {"z": z})
0.5*z*(erf(sqrt(2)*z/2) + 1)
>>> parse("z.diff", {"z": z})  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
derive.base.errors.ParseError: the expression 'z.diff' uses attribute access ('z.diff'), which is not allowed: write arithmetic of numbers, the names E, pi, z and the functions Abs, acos, ...
"""
from __future__ import annotations

import ast
import math
from typing import Mapping

import sympy as sp

from .errors import DeriveError, ParseError, boundary

__all__ = ["parse", "as_expr", "FUNCTIONS", "CONSTANTS", "MAX_LENGTH", "MAX_DEPTH",
           "MAX_NODES", "MAX_ARGS", "MAX_INT_DIGITS", "MAX_EXPONENT"]

#: functions a user expression may call (name → SymPy class); one table for every parser use
FUNCTIONS = {name: getattr(sp, name) for name in (
    "sin", "cos", "tan", "sinh", "cosh", "tanh", "asin", "acos", "atan", "asinh", "atanh", "exp",
    "log", "sqrt", "erf", "erfc", "Abs", "Max", "Min", "Heaviside", "Piecewise", "sign", "floor",
    "ceiling")}
#: named constants
CONSTANTS = {"pi": sp.pi, "E": sp.E}
#: longest accepted string
MAX_LENGTH = 2000
#: deepest accepted nesting of the syntax tree
MAX_DEPTH = 60
#: most nodes of the syntax tree (SymPy's work grows faster than the text: Max of 300
#: arguments takes seconds to build and minutes to analyse)
MAX_NODES = 200
#: most arguments of one function call (Piecewise: pieces)
MAX_ARGS = 12
#: most digits of a whole number
MAX_INT_DIGITS = 30
#: largest |exponent| of a power of a non-number (z**100 is fine, z**10**10 is not)
MAX_EXPONENT = 100
#: numeric powers must stay below 10**MAX_LOG10 in magnitude (float range)
MAX_LOG10 = 300

_BINARY = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**"}
_COMPARE = {ast.Lt: sp.Lt, ast.LtE: sp.Le, ast.Gt: sp.Gt, ast.GtE: sp.Ge, ast.Eq: sp.Eq,
            ast.NotEq: sp.Ne}
_DESCRIBE = {ast.Attribute: "attribute access", ast.Lambda: "a lambda",
             ast.ListComp: "a comprehension", ast.SetComp: "a comprehension",
             ast.DictComp: "a comprehension", ast.GeneratorExp: "a comprehension",
             ast.List: "a list", ast.Dict: "a dict", ast.Set: "a set", ast.Tuple: "a tuple",
             ast.IfExp: "a conditional expression", ast.NamedExpr: "an assignment",
             ast.Starred: "a starred argument", ast.JoinedStr: "a string",
             ast.Await: "await", ast.Yield: "yield", ast.YieldFrom: "yield",
             ast.BoolOp: "'and'/'or' (write & or | inside Piecewise conditions)",
             ast.Slice: "a slice", ast.FormattedValue: "a string"}


def as_expr(x, what: str = "expression") -> sp.Basic:
    """A SymPy object from a SymPy object or a Python number, never from a string: strings are
    parsed only by :func:`parse` (``sympify`` of a string would ``eval`` it)."""
    if isinstance(x, str):
        raise ParseError(f"the {what} is the string {_quote(x)}; pass a SymPy expression, or "
                         "parse the text with derive.parse(text, names) (which evaluates "
                         "nothing)")
    if isinstance(x, sp.Basic):
        return x
    if isinstance(x, bool) or x is None:
        raise DeriveError(f"the {what} must be a SymPy expression or a number, got {x!r}")
    try:
        out = sp.sympify(x, strict=True)
    except (sp.SympifyError, TypeError, ValueError, AttributeError):
        out = None
    if not isinstance(out, sp.Basic):
        raise DeriveError(f"the {what} must be a SymPy expression or a number, got "
                          f"{type(x).__name__} {_quote(repr(x))}")
    return out


def _quote(text: str, limit: int = 80) -> str:
    text = str(text)
    return repr(text if len(text) <= limit else text[:limit] + "…")


class _Builder:
    def __init__(self, text: str, what: str, variables: Mapping, fields: Mapping,
                 functions: Mapping):
        self.text, self.what = text, what
        self.variables, self.fields, self.functions = variables, fields, functions

    # -- messages -------------------------------------------------------------------------

    def _part(self, node) -> str:
        seg = ast.get_source_segment(self.text, node)
        return _quote(seg if seg is not None else ast.dump(node))

    def _allowed(self) -> str:
        names = sorted(set(self.variables) | set(CONSTANTS))
        fields = sorted(self.fields)
        out = "arithmetic of numbers, the names " + ", ".join(names)
        if fields:
            out += ", the fields " + ", ".join(f"{f}[...]" for f in fields)
        return out + " and the functions " + ", ".join(sorted(self.functions, key=str.lower))

    def fail(self, node, why: str):
        raise ParseError(f"the {self.what} {_quote(self.text)} uses {why} ({self._part(node)}), "
                         f"which is not allowed: write {self._allowed()}")

    # -- the walk -------------------------------------------------------------------------

    def build(self, node, depth: int = 0, cond: bool = False):
        if depth > MAX_DEPTH:
            raise ParseError(f"the {self.what} {_quote(self.text)} is nested more than "
                             f"{MAX_DEPTH} levels deep; simplify it")
        d = depth + 1
        if isinstance(node, ast.Expression):
            return self.build(node.body, d, cond)
        if isinstance(node, ast.Constant):
            return self.constant(node, cond)
        if isinstance(node, ast.Name):
            return self.name(node, cond)
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.Invert) and cond:
                return sp.Not(self.build(node.operand, d, True))
            if not isinstance(node.op, (ast.USub, ast.UAdd)):
                self.fail(node, f"the operator {type(node.op).__name__}")
            arg = self.expr(node.operand, d)
            return -arg if isinstance(node.op, ast.USub) else arg
        if isinstance(node, ast.BinOp):
            if cond and isinstance(node.op, (ast.BitAnd, ast.BitOr)):
                a, b = self.build(node.left, d, True), self.build(node.right, d, True)
                return sp.And(a, b) if isinstance(node.op, ast.BitAnd) else sp.Or(a, b)
            if type(node.op) not in _BINARY:
                self.fail(node, f"the operator {type(node.op).__name__}")
            a, b = self.expr(node.left, d), self.expr(node.right, d)
            return self.binary(node, type(node.op), a, b)
        if isinstance(node, ast.Compare):
            if not cond:
                self.fail(node, "a comparison outside a Piecewise condition")
            parts = [self.expr(node.left, d)] + [self.expr(c, d) for c in node.comparators]
            rels = []
            for k, op in enumerate(node.ops):
                if type(op) not in _COMPARE:
                    self.fail(node, f"the comparison {type(op).__name__}")
                rels.append(_COMPARE[type(op)](parts[k], parts[k + 1]))
            return rels[0] if len(rels) == 1 else sp.And(*rels)
        if isinstance(node, ast.Call):
            return self.call(node, d)
        if isinstance(node, ast.Subscript):
            return self.subscript(node, d)
        self.fail(node, _DESCRIBE.get(type(node), f"a {type(node).__name__} node"))

    def expr(self, node, depth: int) -> sp.Expr:
        out = self.build(node, depth)
        if not isinstance(out, sp.Expr):
            self.fail(node, f"a {type(out).__name__} where a number or expression belongs")
        return out

    def constant(self, node, cond: bool):
        v = node.value
        if isinstance(v, bool):
            if cond:
                return sp.true if v else sp.false
            self.fail(node, "a truth value outside a Piecewise condition")
        if isinstance(v, int):
            if len(str(abs(v))) > MAX_INT_DIGITS:
                raise ParseError(f"the {self.what} {_quote(self.text)} has a whole number with "
                                 f"more than {MAX_INT_DIGITS} digits ({self._part(node)[:40]}…); "
                                 "write it as a decimal, e.g. 1.5e40")
            return sp.Integer(v)
        if isinstance(v, float):
            if not math.isfinite(v):
                raise ParseError(f"the {self.what} {_quote(self.text)} has a number that is not "
                                 f"finite in double precision ({self._part(node)})")
            return sp.Float(v)
        if isinstance(v, (str, bytes)):
            self.fail(node, "a string")
        if isinstance(v, complex):
            self.fail(node, "a complex number")
        self.fail(node, f"the constant {v!r}")

    def name(self, node, cond: bool):
        n = node.id
        if n in self.variables:
            return self.variables[n]
        if n in CONSTANTS:
            return CONSTANTS[n]
        if cond and n in ("True", "False"):
            return sp.true if n == "True" else sp.false
        if n in self.functions:
            self.fail(node, f"the function {n} without calling it")
        if n in self.fields:
            self.fail(node, f"the field {n} without indices")
        self.fail(node, f"the unknown name {n!r}")

    def binary(self, node, op, a, b):
        if op is ast.Pow:
            if b.is_number:
                e = complex(b.evalf(20)) if not b.is_Integer else complex(int(b))
                if a.is_number and a != 0:
                    size = e.real * math.log10(max(abs(complex(a.evalf(20))), 1e-300))
                    if abs(size) > MAX_LOG10:
                        raise ParseError(f"the {self.what} {_quote(self.text)} has a power "
                                         f"{self._part(node)} of about 10**{size:.0f}, outside "
                                         "double precision")
                elif not a.is_number and abs(e) > MAX_EXPONENT:
                    raise ParseError(f"the {self.what} {_quote(self.text)} has the exponent "
                                     f"{self._part(node.right)}, larger than {MAX_EXPONENT} in "
                                     "magnitude")
            return a ** b
        if op is ast.Add:
            return a + b
        if op is ast.Sub:
            return a - b
        if op is ast.Mult:
            return a * b
        if b == 0:
            raise ParseError(f"the {self.what} {_quote(self.text)} divides by zero "
                             f"({self._part(node)})")
        return a / b

    def call(self, node, depth: int):
        if not isinstance(node.func, ast.Name):
            self.fail(node.func, "a call of something other than a function name")
        fname = node.func.id
        if fname not in self.functions:
            if fname in self.variables or fname in CONSTANTS or fname in self.fields:
                self.fail(node, f"a call of {fname}, which is not a function")
            self.fail(node, f"the unknown function {fname}")
        if node.keywords:
            self.fail(node.keywords[0], "a keyword argument")
        for a in node.args:
            if isinstance(a, ast.Starred):
                self.fail(a, "a starred argument")
        if not node.args:
            self.fail(node, f"{fname} with no arguments")
        if len(node.args) > MAX_ARGS:
            raise ParseError(f"the {self.what} {_quote(self.text)} calls {fname} with "
                             f"{len(node.args)} arguments, more than {MAX_ARGS}; nest the calls "
                             "or simplify")
        if fname == "Piecewise":
            pieces = []
            for a in node.args:
                if not (isinstance(a, ast.Tuple) and len(a.elts) == 2):
                    self.fail(a, "a Piecewise argument that is not a pair (value, condition)")
                pieces.append((self.expr(a.elts[0], depth + 1),
                               self.build(a.elts[1], depth + 1, cond=True)))
            return self._apply(node, fname, *pieces)
        args = [self.expr(a, depth) for a in node.args]
        return self._apply(node, fname, *args)

    def _apply(self, node, fname, *args):
        try:
            return self.functions[fname](*args)
        except DeriveError:
            raise
        except Exception as exc:  # noqa: BLE001 - a SymPy constructor refusing its arguments
            raise ParseError(f"the {self.what} {_quote(self.text)}: {fname} does not accept "
                             f"{self._part(node)} ({exc.__class__.__name__}: {exc})") from None

    def subscript(self, node, depth: int):
        if not (isinstance(node.value, ast.Name) and node.value.id in self.fields):
            self.fail(node, "a subscript of something other than a field"
                      + (f" (fields: {', '.join(sorted(self.fields))})" if self.fields else ""))
        sl = node.slice
        items = sl.elts if isinstance(sl, ast.Tuple) else [sl]
        idx = []
        for it in items:
            if not (isinstance(it, ast.Name) and it.id in self.variables):
                self.fail(it, "an index that is not one of the index names "
                          + ", ".join(sorted(self.variables)))
            idx.append(self.variables[it.id])
        try:
            return self.fields[node.value.id][tuple(idx) if len(idx) > 1 else idx[0]]
        except DeriveError:
            raise
        except Exception as exc:  # noqa: BLE001 - the field refusing its indices
            raise ParseError(f"the {self.what} {_quote(self.text)}: {self._part(node)} is not a "
                             f"valid component ({exc.__class__.__name__}: {exc})") from None


@boundary
def parse(text: str, variables: Mapping | None = None, *, what: str = "expression",
          fields: Mapping | None = None, functions: Mapping | None = None) -> sp.Expr:
    """A SymPy expression from ``text``, built by walking its syntax tree (see the module).

    ``variables`` maps the names that may appear to SymPy objects (symbols, indices);
    ``fields`` maps names that may be subscripted (``z[i, alpha]``) to objects with
    ``__getitem__``; ``functions`` restricts :data:`FUNCTIONS`; ``what`` names the string in
    error messages.  Only the given names may appear; any other construct is a
    :class:`~derive.base.errors.ParseError` quoting it.

    Parameters
    ----------
    text : str
        The expression.
    variables : mapping of str to sympy.Basic, optional
        The names that may appear.
    what : str, optional
        What the string is, for error messages (default ``"expression"``).
    fields : mapping of str to object, optional
        Names that may be subscripted.
    functions : mapping of str to callable, optional
        The functions that may be called (default: :data:`FUNCTIONS`).

    Returns
    -------
    sympy.Expr
        The expression; nothing in ``text`` is evaluated.

    Raises
    ------
    DeriveError
        :class:`~derive.base.errors.ParseError` for a syntax error, an unknown name or function,
        or any construct outside the whitelist (attributes, lambdas, imports …).

    Examples
    --------
    >>> import sympy as sp
    >>> x = sp.Symbol('x')
    >>> parse('x**2 + sin(x)', {'x': x})
    x**2 + sin(x)
    """
    if not isinstance(text, str) or not text.strip():
        raise ParseError(f"the {what} must be a non-empty string, got {_quote(repr(text))}")
    if len(text) > MAX_LENGTH:
        raise ParseError(f"the {what} has {len(text)} characters, more than the limit of "
                         f"{MAX_LENGTH}; split it up or simplify it")
    variables = dict(variables or {})
    fields = dict(fields or {})
    functions = FUNCTIONS if functions is None else dict(functions)
    for name in list(variables) + list(fields):
        if not name.isidentifier() or name in functions or name in CONSTANTS:
            raise DeriveError(f"{name!r} cannot be a variable name here: use an identifier that "
                              "is not a function or constant name")
    # ^ is a power, as in SymPy's convert_xor: replaced in the text (before Python's grammar,
    # where ^ binds more loosely than -, would read z^2 - 1 as z^(2 - 1)); a ^ inside a string
    # does not matter, strings are refused anyway
    src = text.strip().replace("^", "**")
    try:
        tree = ast.parse(src, mode="eval")
    except SyntaxError as err:
        where = f" at column {err.offset}" if err.offset else ""
        raise ParseError(f"the {what} {_quote(src)} is not a valid expression{where}: "
                         f"{err.msg}") from None
    except (ValueError, RecursionError, MemoryError) as err:
        raise ParseError(f"the {what} {_quote(src)} could not be read: "
                         f"{err.__class__.__name__}") from None
    nodes = sum(1 for _ in ast.walk(tree))
    if nodes > MAX_NODES:
        raise ParseError(f"the {what} {_quote(src)} has {nodes} syntax nodes, more than the limit "
                         f"of {MAX_NODES}; simplify it")
    builder = _Builder(src, what, variables, fields, functions)
    try:
        out = builder.build(tree)
    except DeriveError:
        raise
    except RecursionError:
        raise ParseError(f"the {what} {_quote(src)} is nested too deeply; simplify it") from None
    except (TypeError, ValueError, ArithmeticError, AttributeError) as exc:
        raise ParseError(f"the {what} {_quote(src)} could not be built: "
                         f"{exc.__class__.__name__}: {exc}") from None
    if not isinstance(out, sp.Expr):
        raise ParseError(f"the {what} {_quote(src)} is not an expression (it is a "
                         f"{type(out).__name__})")
    if out.has(sp.zoo, sp.nan, sp.oo, sp.S.NegativeInfinity):
        raise ParseError(f"the {what} {_quote(src)} evaluates to something infinite or undefined "
                         f"({sp.sstr(out)[:80]})")
    return out
