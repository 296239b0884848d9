"""Fuzzing the public API and the command line (hypothesis, time-budgeted, slow set).

Properties: only DeriveErrors escape; nothing runs past a time budget; finite valid input never
gives NaN/inf.  Strings come from a grammar of activation-like expressions that mixes valid
pieces with hostile ones (attribute chains, lambdas, huge numbers, unknown names, strings) and
from plain random text; covariances span 1e-6 … 1e6; CLI argument lists and TOML spec files are
drawn from the commands' own options and random values.  The examples are derandomised so a
CI run is reproducible.
"""
import json
import math
import signal
import warnings

import numpy as np
import pytest
import sympy as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import derive
from derive.cli.main import main
from derive.base.errors import DeriveError
from derive.base.parsing import FUNCTIONS

pytestmark = [pytest.mark.slow,
              # hypothesis warns that the repr of a large drawn example is expensive: harmless
              pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")]

BUDGET_S = 90  # no single call may take longer
SETTINGS = dict(derandomize=True, database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                       HealthCheck.data_too_large,
                                       # capsys/tmp_path_factory are read and reset per example
                                       HealthCheck.function_scoped_fixture])


class Hang(Exception):
    pass


def _budgeted(fn, *args, **kwargs):
    """fn(*args, **kwargs) within BUDGET_S seconds; a DeriveError is a fine outcome (None)."""
    def alarm(signum, frame):
        raise Hang(f"{getattr(fn, '__name__', fn)} ran past {BUDGET_S} s with {args!r:.200}")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(BUDGET_S)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn(*args, **kwargs)
    except DeriveError:
        return None
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# -- strings ------------------------------------------------------------------------------

NUMBERS = st.one_of(st.integers(-10 ** 40, 10 ** 40).map(str),
                    st.floats(allow_nan=False, allow_infinity=False).map(repr),
                    st.sampled_from(["1e400", "0.5", "2", "10**10", "1/3", "0"]))
HOSTILE = st.sampled_from([
    "z.diff", "z.__class__", "(lambda: 1)()", "__import__('os')", "'text'", "[1, 2]",
    "z[0]", "x", "oo", "nan", "Float('nan')", "Symbol('q')", "exec", "{}", "z if z else 1",
    "z @ z", "z // 2", "1j", "True", "...", "getattr(z, 'x')", "z;z", "\n", "#"])
FUNCS = st.sampled_from(sorted(FUNCTIONS) + ["foo", "Integer", "eval"])


def _combine(children):
    return st.one_of(
        st.tuples(children, st.sampled_from(["+", "-", "*", "/", "**", "^"]), children)
        .map(lambda t: f"({t[0]}){t[1]}({t[2]})"),
        st.tuples(FUNCS, st.lists(children, min_size=1, max_size=2))
        .map(lambda t: f"{t[0]}({', '.join(t[1])})"),
        children.map(lambda c: f"-({c})"),
        st.tuples(children, children).map(lambda t: f"Piecewise(({t[0]}, z > 0), ({t[1]}, True))"),
    )


Z = st.just("z")
# mostly z and numbers (expressions that may well be valid), a hostile piece now and then
EXPRESSIONS = st.recursive(st.one_of(Z, Z, Z, NUMBERS, NUMBERS, HOSTILE), _combine, max_leaves=8)
TEXT = st.one_of(EXPRESSIONS, EXPRESSIONS, st.text(max_size=40))


@settings(max_examples=120, **SETTINGS)
@given(text=TEXT, n_inputs=st.integers(1, 2), cw=st.floats(0.1, 3.0))
def test_activation_strings(text, n_inputs, cw):
    act = _budgeted(derive.activation, text)
    if act is None:
        return
    assert isinstance(act, derive.Activation)
    X = np.array([[1.0, 0.3], [-0.4, 0.9]])[:n_inputs]
    targets = ["K", "G1"] + ([] if act.ntk_obstacle else ["Theta"])
    p = _budgeted(derive.predict, derive.MLP(3, 6, act, 0.05, cw), X, targets=targets)
    if p is not None:  # finite valid input: finite numbers or a DeriveError, nothing else
        for q in (p.K, p.G1, p.Theta):
            for a in q.values():
                assert np.all(np.isfinite(a)), (text, q)


def _covariance(scale, rho, m):
    d = np.full(m, scale)
    K = np.outer(np.sqrt(d), np.sqrt(d)) * rho
    np.fill_diagonal(K, d)
    return K


@settings(max_examples=120, **SETTINGS)
@given(text=TEXT, log_scale=st.floats(-6, 6), rho=st.floats(-0.99, 0.99), m=st.integers(1, 2))
def test_gaussian_expectation(text, log_scale, rho, m):
    f = text.replace("z", "z1") if m == 1 else text.replace("z", "z1") + "*tanh(z2)"
    v = _budgeted(derive.gaussian_expectation, f, _covariance(10.0 ** log_scale, rho, m))
    if v is not None:
        assert math.isfinite(float(v)) and math.isfinite(v.error), (f, v)


@settings(max_examples=60, **SETTINGS)
@given(args=st.lists(st.one_of(st.sampled_from([1, "x", None, -1, 2 ** 70, 1e308, [1, [2]],
                                                float("nan"), "tanh", "relu", (), {}]),
                               st.integers(), st.floats()), min_size=5, max_size=5))
def test_constructors_and_entry_points(args):
    depth, widths, C_b, C_W, lam = args
    spec = _budgeted(derive.MLP, depth, widths, "tanh", C_b, C_W, lam)
    if spec is not None:
        assert isinstance(spec, derive.MLP)
    for fn, a in ((derive.derive, (spec, widths, C_b)), (derive.predict, (spec, C_b)),
                  (derive.wick, (depth,)), (derive.criticality, (widths,)),
                  (derive.gaussian_expectation, (depth, C_W))):
        _budgeted(fn, *a)


# -- the command line ---------------------------------------------------------------------

def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if v != v else ("inf" if v == math.inf else "-inf" if v == -math.inf
                                     else repr(v))
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, str):
        return json.dumps(v)
    return str(v)


VALUES = st.recursive(st.one_of(st.integers(-10 ** 12, 10 ** 12), st.floats(), st.booleans(),
                                st.text(max_size=12), st.sampled_from(["tanh", "relu", "K", "V"])),
                      lambda c: st.lists(c, max_size=3), max_leaves=6)
KEYS = st.sampled_from(["activation", "depth", "widths", "C_b", "C_W", "lambda_b", "lambda_W",
                        "inputs", "input_gram", "targets", "order", "bogus"])


@settings(max_examples=60, **SETTINGS)
@given(spec=st.dictionaries(KEYS, VALUES, max_size=8), extra=st.lists(
    st.sampled_from(["--json", "--targets", "K", "Theta", "--tol", "1e-9", "-1", "x", "--order",
                     "0", "2", "--debug"]), max_size=3))
def test_cli_predict_spec_files(tmp_path_factory, spec, extra):
    path = tmp_path_factory.mktemp("spec") / "spec.toml"
    path.write_text("".join(f"{k} = {_toml_value(v)}\n" for k, v in spec.items()))
    if "--debug" in extra:
        extra = [e for e in extra if e != "--debug"]
    try:
        code = _budgeted(main, ["predict", str(path), *extra])
    except SystemExit as e:  # argparse usage errors
        code = e.code
    assert code in (0, 2, None), (spec, extra, code)


@settings(max_examples=60, **SETTINGS)
@given(cmd=st.sampled_from(["wick", "expect"]), text=TEXT,
       K=st.sampled_from(["1", "1,0.5;0.5,1", "x", "1;2", "-1", "1e308", ""]))
def test_cli_wick_and_expect(capsys, cmd, text, K):
    argv = [cmd, text] + (["--K", K] if cmd == "expect" else [])
    try:
        code = _budgeted(main, argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code in (0, 2), (argv, code)
    assert "Traceback" not in err, err
    if "usage:" not in err:  # argparse's usage message (text starting with '-') spans lines
        assert err.count("\n") <= 1, err
