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


class InternalError(DeriveError):
    """An unexpected failure inside derive (a bug): the input looked valid but something broke.
    ``cause`` holds the original exception (``derive --debug`` prints its traceback)."""

    def __init__(self, message: str, cause: BaseException | None = None):
        super().__init__(message)
        self.cause = cause


def boundary(fn):
    """Make ``fn`` a public entry point: every failure leaves it as a :class:`DeriveError`.

    Errors raised on purpose pass through, and so do warnings a caller made errors
    (``warnings.simplefilter("error")``: the caller's own choice); running out of memory or
    recursion depth becomes a DeriveError saying to make the input smaller; anything else (a
    bug, or a library refusing an input nobody checked) becomes an :class:`InternalError`
    naming the function and the cause, with the original exception kept as ``.cause`` instead
    of a library traceback.
    """
    import functools

    name = fn.__qualname__

    @functools.wraps(fn)
    def public(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DeriveError:
            raise
        except MemoryError:
            raise DeriveError(f"{name}: out of memory; make the input smaller (fewer inputs, "
                              "lower depth, fewer targets)") from None
        except RecursionError:
            raise DeriveError(f"{name}: the input is nested too deeply; simplify it") from None
        except Warning:
            raise   # a warning the caller turned into an error (warnings.simplefilter("error"))
        except Exception as exc:  # noqa: BLE001 - the boundary: nothing else may escape
            err = InternalError(f"{name} failed unexpectedly ({type(exc).__name__}: "
                                f"{str(exc)[:300]}); if the input is valid this is a bug in "
                                "derive, please report it with the call that caused it", exc)
        raise err

    public.__wrapped_by_boundary__ = True
    return public
