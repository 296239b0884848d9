"""User-facing errors.

Every error that bad input can provoke is a :class:`DeriveError` (or a subclass) whose
message says what is wrong *and what to change*.  Errors raised deep inside SymPy, NumPy or
SciPy are caught at the public boundary and re-raised as one of these, so a user never has to
read a traceback from a library they did not call.
"""
from __future__ import annotations


class DeriveError(ValueError):
    """Base class of every error `derive` raises on purpose."""


class UnknownNameError(DeriveError, KeyError):
    """A name (activation, rule set, target, ...) that is not known; lists the known ones."""

    def __init__(self, what: str, name: str, known):
        self.what, self.name, self.known = what, name, sorted(known)
        super().__init__(
            f"unknown {what} {name!r}; known {what}s are: {', '.join(self.known)}"
        )

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return self.args[0]


class ParseError(DeriveError):
    """A string that could not be parsed as a SymPy expression."""


class CovarianceError(DeriveError):
    """A covariance matrix that is not symmetric, not finite or not positive semi-definite."""


class IndexStructureError(DeriveError):
    """Inconsistent neuron / sample indices in a symbolic expression."""


class QuadratureError(DeriveError):
    """A numeric integral that could not reach the requested tolerance."""


class OrderError(DeriveError):
    """An impossible or unsupported order of the 1/n expansion."""
