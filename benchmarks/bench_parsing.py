"""The safe parser (derive.base.parsing.parse): time per string (issue: hardening, target: the parser
adds less than 1 ms per activation string), beside the time SymPy itself takes to build the same
expression by direct calls (which any parser pays: Min/Max compare their arguments when built)
and the SymPy parser it replaced (parse_expr, which ends in eval and is timed here only as a
reference — derive no longer calls it).

Also timed, separately: creating an activation from a string (parse, then validation: domain,
growth, kinks and jumps), which runs once per distinct string (cached).
"""
from __future__ import annotations

import time

import sympy as sp
from sympy.parsing.sympy_parser import convert_xor, parse_expr, standard_transformations

from derive.base.parsing import FUNCTIONS, parse

_z = sp.Symbol("z")
#: each string with the same expression built directly by SymPy calls (what any parser pays)
STRINGS = {
    "tanh(z)": lambda z: sp.tanh(z),
    "Max(0, z) - 0.1*Max(0, -z)": lambda z: sp.Max(0, z) - sp.Float(0.1) * sp.Max(0, -z),
    "0.5*z*(1 + erf(z/sqrt(2)))": lambda z: sp.Float(0.5) * z * (1 + sp.erf(z / sp.sqrt(2))),
    "z/(1 + exp(-z))": lambda z: z / (1 + sp.exp(-z)),
    "Piecewise((z, z >= 0), (0.01*z, True))":
        lambda z: sp.Piecewise((z, z >= 0), (sp.Float(0.01) * z, True)),
    "3*Max(0, z) - Max(0, -z) + 0.2*sin(z)":
        lambda z: 3 * sp.Max(0, z) - sp.Max(0, -z) + sp.Float(0.2) * sp.sin(z),
    "log(1 + exp(z)) - log(2)": lambda z: sp.log(1 + sp.exp(z)) - sp.log(2),
    "Min(1, Max(-1, z)) + 0.05*z**3":
        lambda z: sp.Min(1, sp.Max(-1, z)) + sp.Float(0.05) * z ** 3,
}


def _per_call(fn, reps: int) -> float:
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - t) / reps)
    return best


def run(quick: bool = False):
    from derive.activations.catalogue import _from_string

    z = _z
    reps = 20 if quick else 200
    namespace = {**FUNCTIONS, "z": z, "pi": sp.pi, "E": sp.E}
    rows = []
    for text, build in STRINGS.items():
        ours = _per_call(lambda: parse(text, {"z": z}, what="activation"), reps)
        direct = _per_call(lambda: build(z), reps)
        ref = _per_call(lambda: parse_expr(text, local_dict=dict(namespace),
                                           transformations=standard_transformations
                                           + (convert_xor,)), reps)
        _from_string.cache_clear()
        t = time.perf_counter()
        _from_string(text)
        create = time.perf_counter() - t
        rows.append({"string": text, "parse (ms)": 1e3 * ours, "SymPy build (ms)": 1e3 * direct,
                     "parser adds (ms)": 1e3 * (ours - direct), "parse_expr (ms)": 1e3 * ref,
                     "activation, first time (ms)": 1e3 * create,
                     "target": "adds < 1 ms", "ok": ours - direct < 1e-3})
    return "Safe parser: time per string (best of 5)", rows
