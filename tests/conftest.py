"""Fixtures shared by several test files."""
import pytest


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
