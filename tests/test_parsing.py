"""User strings never run code: the one parser (derive.base.parsing) walks a whitelist of the syntax
tree, and generated modules never carry user text.

The payload of the hardening issue — a call through a parenthesised attribute chain that
reaches ``os.system`` — and variants are sent through every door a user string has: the API
(activation, gaussian_expectation, parse), the command line (wick, expect), a TOML spec run by
``derive predict``/``derive derive``, and a generated module that is then imported.  None may
create its marker file.
"""
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sympy as sp

import derive
from derive.cli.main import main
from derive.base.errors import DeriveError, ParseError
from derive.base.parsing import (FUNCTIONS, MAX_ARGS, MAX_DEPTH, MAX_EXPONENT, MAX_INT_DIGITS,
                            MAX_LENGTH, MAX_NODES, as_expr, parse)

ROOT = Path(__file__).resolve().parents[1]
z = sp.Symbol("z")


def _payloads(marker: Path) -> list[str]:
    m = str(marker)
    return [
        f"((z.diff.__func__.__globals__['__builtins__']['__import__'])('os').system)('touch {m}')*0 + tanh(z)",
        f"(z.diff.__func__.__globals__)['__builtins__']['__import__']('os').system('touch {m}')",
        f"__import__('os').system('touch {m}')",
        f"(lambda: __import__('os').system('touch {m}'))()",
        f"[c for c in ().__class__.__base__.__subclasses__()][0]('touch {m}')",
        f"getattr(z, 'diff')",
        f"tanh(z) if __import__('os').system('touch {m}') else z",
        f"Symbol('x').__class__",
        f"\"\"\"; import os; os.system('touch {m}'); \"\"\"",
        f"exec(\"import os; os.system('touch {m}')\")",
        f"tanh(z)\n__import__('os').system('touch {m}')",
        f"tanh(z); __import__('os').system('touch {m}')",
    ]


def test_the_issue_payload_and_variants_through_the_api(tmp_path):
    marker = tmp_path / "pwned"
    for text in _payloads(marker):
        for call in (lambda t: derive.activation(t),
                     lambda t: derive.gaussian_expectation(t.replace("z", "z1"), np.eye(1)),
                     lambda t: parse(t, {"z": z})):
            with pytest.raises(DeriveError):
                call(text)
        assert not marker.exists(), text
    # strings never reach sympify through the symbolic API either
    for call in (derive.wick, derive.simplify_sums, derive.split_sum,
                 derive.nearly_gaussian_expectation):
        with pytest.raises(DeriveError, match="string"):
            call(f"__import__('os').system('touch {marker}')")
    assert not marker.exists()


def test_payloads_through_the_command_line(tmp_path, capsys):
    marker = tmp_path / "pwned"
    for text in _payloads(marker):
        assert main(["wick", text]) == 2
        assert main(["expect", text.replace("z", "z1"), "--K", "1"]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
    assert not marker.exists()


def test_payloads_in_a_spec_file_run_by_the_cli(tmp_path):
    marker = tmp_path / "pwned"
    for k, text in enumerate(_payloads(marker)[:4]):
        spec = tmp_path / f"evil{k}.toml"
        spec.write_text(f"activation = {json.dumps(text)}\ndepth = 2\ninputs = [[1.0, 0.5]]\n")
        for cmd in (["predict", str(spec)], ["derive", str(spec), "--out", str(tmp_path / f"o{k}")]):
            r = subprocess.run([sys.executable, "-m", "derive.cli.main", *cmd], capture_output=True,
                               text=True, timeout=120, cwd=tmp_path)
            assert r.returncode == 2, (cmd, r.stderr)
            assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert not marker.exists()


def test_generated_modules_carry_no_user_text(tmp_path, only_declarations):
    """An Activation with a hostile name (which a user can construct directly) and hostile
    expressions: the module's docstrings are escaped, it imports cleanly and its marker file
    is never made."""
    marker = tmp_path / "pwned"
    hostile = f'x"""\nimport os; os.system("touch {marker}")\n"""'
    act = derive.activation("tanh")
    evil = derive.Activation(name=hostile, expr=act.expr)
    for a in (evil, derive.activation("Abs(z) + 0.5*tanh(z)")):
        spec = derive.MLP(3, 8, a, 0.0, 1.0)
        src = derive.derive(spec).numpy_module()
        only_declarations(src)  # valid Python holding nothing a user's text became
        path = tmp_path / "evaluator_evil.py"
        path.write_text(src)
        r = subprocess.run([sys.executable, "-c", "import evaluator_evil, numpy;"
                            "print(evaluator_evil.evaluate(numpy.eye(2))['K'][3][0, 0])"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert not marker.exists()


def test_no_eval_of_text_anywhere_in_the_package():
    """No eval/parse_expr anywhere, sympify only in parsing.as_expr (which refuses strings),
    exec only of our own generated module."""
    for path in sorted((ROOT / "derive").glob("*.py")):
        text = path.read_text()
        assert "parse_expr" not in text or path.name == "parsing.py", path.name
        assert not re.search(r"(?<![\w.])eval\(", text), path.name
        for m in re.finditer(r"sympify\(", text):
            assert path.name == "parsing.py", f"{path.name}: sympify outside derive.base.parsing"
        for m in re.finditer(r"(?<![\w.])exec\(", text):
            assert path.name == "emit_numpy.py", f"{path.name}: exec"
    with pytest.raises(ParseError, match="string"):
        as_expr("x")


@pytest.mark.parametrize("text, what", [
    ("z.real", "attribute access"),
    ("(lambda: 1)()", "a call of something other than a function name"),
    ("[z for z in (1,)]", "a comprehension"),
    ("'tanh(z)'", "a string"),
    ("tanh(z, evaluate=False)", "a keyword argument"),
    ("tanh(*[z])", "a starred argument"),
    ("z if z else 1", "a conditional expression"),
    ("foo(z)", "the unknown function foo"),
    ("y*z", "the unknown name 'y'"),
    ("tanh", "the function tanh without calling it"),
    ("z > 0", "a comparison outside a Piecewise condition"),
    ("Piecewise(z, z > 0)", "not a pair"),
    ("z @ z", "the operator MatMult"),
    ("z // 2", "the operator FloorDiv"),
    ("1j*z", "a complex number"),
    ("True*z", "a truth value"),
    ("(z, z)", "a tuple"),
    ("z[0]", "a subscript"),
])
def test_refusals_quote_the_offending_part(text, what):
    with pytest.raises(ParseError) as e:
        parse(text, {"z": z}, what="activation")
    msg = str(e.value)
    assert what in msg and "which is not allowed" in msg, msg


def test_limits():
    with pytest.raises(ParseError, match="characters"):
        parse("z+" * MAX_LENGTH + "z", {"z": z})
    deep = "tanh(" * (MAX_DEPTH + 5) + "z" + ")" * (MAX_DEPTH + 5)
    with pytest.raises(ParseError, match="nested"):
        parse(deep, {"z": z})
    with pytest.raises(ParseError, match="digits"):
        parse("1" * (MAX_INT_DIGITS + 1) + "*z", {"z": z})
    with pytest.raises(ParseError, match="exponent"):
        parse(f"z**{MAX_EXPONENT + 1}", {"z": z})
    for text in ("z**10**10", "2**10**10*z", "10**400", "1e400*z", "2**-2000*z"):
        with pytest.raises(ParseError):
            parse(text, {"z": z})
    with pytest.raises(ParseError, match="infinite or undefined"):
        parse("z + 0**-1", {"z": z})
    with pytest.raises(ParseError, match="divides by zero"):
        parse("z/0", {"z": z})
    # SymPy's work grows faster than the text: Max of 300 arguments took 12 s to build and
    # its analysis did not finish in 5 minutes
    with pytest.raises(ParseError, match=f"more than {MAX_ARGS}"):
        parse("Max(" + ", ".join(f"{k}*z" for k in range(2, 2 + MAX_ARGS + 1)) + ")", {"z": z})
    with pytest.raises(ParseError, match="syntax nodes"):
        parse("+".join(f"Max(z - {k}, 0)" for k in range(MAX_NODES // 5)), {"z": z})
    # the limits are generous for real activations
    assert parse(f"z**{MAX_EXPONENT}", {"z": z}) == z ** MAX_EXPONENT


def test_parsed_expressions_equal_sympys_own():
    """Everything the rules files and the README write parses to the expression SymPy itself
    builds (goldens depend on it)."""
    cases = {
        "0.5*z*(1 + erf(z/sqrt(2)))": sp.Float(0.5) * z * (1 + sp.erf(z / sp.sqrt(2))),
        "Piecewise((z, z >= 0), (0.01*z, True))": sp.Piecewise((z, z >= 0),
                                                               (sp.Float(0.01) * z, True)),
        "Max(0, z) - 0.1*Max(0, -z)": sp.Max(0, z) - sp.Float(0.1) * sp.Max(0, -z),
        "1/(1 + exp(-z))": 1 / (1 + sp.exp(-z)),
        "z^2 - 3/4": z ** 2 - sp.Rational(3, 4),
        "E**z + pi": sp.exp(z) + sp.pi,
        "Piecewise((1, (z > 0) & (z < 1)), (0, True))":
            sp.Piecewise((1, (z > 0) & (z < 1)), (0, True)),
        "Heaviside(z, 0.5)": sp.Heaviside(z, sp.Float(0.5)),
    }
    for text, want in cases.items():
        got = parse(text, {"z": z})
        assert got == want and sp.srepr(got) == sp.srepr(want), text
    assert set(FUNCTIONS) >= {"tanh", "erf", "Max", "Heaviside", "Piecewise", "sqrt"}


def test_wick_fields_and_indices():
    i, j = derive.neuron_indices("i j")
    a, b = derive.sample_indices("a b")
    zf = derive.gaussian_field("z", "K")
    expr = parse("z[i,a]*z[j,b]", {"i": i, "j": j, "a": a, "b": b}, fields={"z": zf})
    assert expr == zf[i, a] * zf[j, b]
    with pytest.raises(ParseError, match="index"):
        parse("z[i, 1]", {"i": i}, fields={"z": zf})
    with pytest.raises(ParseError, match="without indices"):
        parse("z*z", {"i": i}, fields={"z": zf})
