"""Fixtures shared by several test files, and the independent NTK references.

``tests/ntk_reference.py`` and ``tests/tangent_reference.py`` (plain numpy, nothing from derive)
are registered here as the modules ``ntk_reference`` and ``tangent_reference``, so that test
files can import them whatever pytest's import mode (conftest runs before the test modules are
collected)."""
import importlib.util
import pathlib
import sys

import pytest

for _name in ("ntk_reference", "tangent_reference"):  # the second imports the first
    if _name not in sys.modules:
        _spec = importlib.util.spec_from_file_location(
            _name, pathlib.Path(__file__).with_name(f"{_name}.py"))
        sys.modules[_name] = importlib.util.module_from_spec(_spec)
        _spec.loader.exec_module(sys.modules[_name])


def _only_declarations(src: str) -> None:
    """A generated module holds nothing but its docstring, imports (and the thread pool's
    ``from concurrent.futures import``), assignments, function definitions, the fixed
    per-thread cache class ``_PerThread`` and the script entry point
    ``if __name__ == "__main__": _main()``: no statement a user's text could have become."""
    import ast

    main_guard = ast.dump(ast.parse('if __name__ == "__main__":\n    _main()').body[0])
    for node in ast.parse(src).body:  # valid Python
        if isinstance(node, ast.If):
            assert ast.dump(node) == main_guard, ast.dump(node)[:120]
            continue
        if isinstance(node, ast.ImportFrom):  # the thread pool of the blocks of rows
            assert node.module == "concurrent.futures", ast.dump(node)[:120]
            continue
        if isinstance(node, ast.ClassDef):  # the per-thread cache, a fixed class
            assert node.name == "_PerThread", ast.dump(node)[:120]
            continue
        assert isinstance(node, (ast.Expr, ast.Import, ast.Assign, ast.FunctionDef)), \
            ast.dump(node)[:120]
        if isinstance(node, ast.Expr):
            assert isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


@pytest.fixture
def only_declarations():
    """The check that a generated module's source holds only declarations (see
    :func:`_only_declarations`)."""
    return _only_declarations


@pytest.fixture
def fail_at_second_width(monkeypatch) -> list:
    """derive.check's sampler fails at the second width it is asked for (as a diverging
    ensemble would); the fixture's value is the list of widths it was called with."""
    import derive.reality.check as reality
    from derive.reality.montecarlo import MonteCarloError

    real, calls = reality.sample, []

    def failing(spec, *a, **k):
        calls.append(spec.widths[0])
        if len(calls) == 2:
            raise MonteCarloError("layer 3: preactivations overflowed (NaN/inf)")
        return real(spec, *a, **k)

    monkeypatch.setattr(reality, "sample", failing)
    return calls


class _Recorder:
    """A numpy Generator that keeps every standard_normal draw (the sampler's W and b)."""

    def __init__(self, real, seed):
        self.rng, self.draws = real(seed), []

    def standard_normal(self, shape):
        out = self.rng.standard_normal(shape)
        self.draws.append(out.copy())
        return out


@pytest.fixture
def recorded_draws(monkeypatch) -> list:
    """``numpy.random.default_rng`` replaced by generators that record their standard_normal
    draws; the fixture's value is the list of them (one per generator made).  Undo with
    ``monkeypatch.undo()`` once the sampler has run."""
    import numpy as np

    real, recs = np.random.default_rng, []

    def recording(seed):
        recs.append(_Recorder(real, seed))
        return recs[-1]

    monkeypatch.setattr(np.random, "default_rng", recording)
    return recs


@pytest.fixture(autouse=True)
def _fresh_training_statistics(monkeypatch):
    """Each test starts without the output-layer statistics that derive.train(order=1) keeps
    from earlier calls (a test that compares two calls, or spies on predict, must see both
    computed)."""
    from derive.numeric import training

    monkeypatch.setattr(training, "_STATISTICS", {})
