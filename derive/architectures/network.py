r"""A network with a user's forward equation: ``Network(depth, widths, activation, C_b, C_W,
equation, scalars, …)``.

``equation`` is text read by the safe parser (:func:`~derive.architectures.forward.parse_forward_equation`;
e.g. ``"xi*z[i] + gamma*(b[i] + sum_j(W[i,j]*sigma(z[j])))"``) or a
:class:`~derive.architectures.forward.ForwardEquation`; ``scalars`` maps each scalar name the
equation uses to one number or one value per layer 2 … L (a list of length L−1).  Layer 1 is
the MLP's.  With a skip term the hidden widths must be equal.

>>> net = Network(3, 16, "tanh", 0.0, 1.0, "b[i] + sum_j(W[i,j]*sigma(z[j]))")
>>> net.max_order
1
"""
from __future__ import annotations

from dataclasses import dataclass

from ..base.errors import DeriveError
from .forward import ForwardEquation, parse_forward_equation
from .mlp import MLP, _upper_layers

__all__ = ["Network"]


@dataclass(frozen=True, repr=False)
class Network(MLP):
    """A network whose layers 2 … L follow a user's forward equation (see the module).

    Parameters
    ----------
    depth, widths, activation, C_b, C_W, lambda_b, lambda_W
        As for :class:`MLP`.
    equation : str or ForwardEquation
        The forward equation of layers 2 … L in ``z[i]``, ``z[j]``, ``W[i,j]``, ``b[i]``,
        ``sigma(…)``, ``sum_j(…)`` and the scalars.
    scalars : mapping of str to float or list of float, optional
        The value of each scalar the equation uses: one number or one per layer 2 … L.

    Returns
    -------
    Network
        The spec; ``max_order`` is the highest order in 1/n derived for it.

    Raises
    ------
    DeriveError
        As for :class:`MLP`, and for an equation that does not parse (names outside the list
        above, undeclared scalars) or that the engine cannot derive.

    Examples
    --------
    >>> net = Network(3, 16, 'tanh', 0.0, 1.0, 'b[i] + sum_j(W[i,j]*sigma(z[j]))')
    >>> net.max_order
    1
    """

    equation_: ForwardEquation | None = None
    scalars_: tuple = ()

    def __init__(self, depth, widths, activation, C_b, C_W, equation, scalars=None,
                 lambda_b=1.0, lambda_W=1.0):
        super().__init__(depth, widths, activation, C_b, C_W, lambda_b, lambda_W)
        scalars = dict(scalars or {})
        if isinstance(equation, str):
            eq = parse_forward_equation(equation, list(scalars))
        elif isinstance(equation, ForwardEquation):
            eq = equation
        else:
            raise DeriveError(f"equation must be a string or a ForwardEquation, got "
                              f"{type(equation).__name__}")
        names = [str(s) for s in eq.scalars]
        missing = [s for s in names if s not in scalars]
        extra = [s for s in scalars if s not in names]
        if missing or extra:
            raise DeriveError(f"the equation's scalars are {names}; "
                              + (f"give values for {missing}" if missing else "")
                              + ("; " if missing and extra else "")
                              + (f"{extra} are not in the equation" if extra else ""))
        values = [_upper_layers(scalars[s], self.depth, f"scalar {s}") for s in names]
        zero = [sym for sym, vals in zip(eq.scalars, values) if not any(vals)]
        kept = [(str(sym), vals) for sym, vals in zip(eq.scalars, values) if any(vals)]
        eq = eq.without(zero)
        if eq.has_skip() and len(set(self.widths)) > 1:
            raise DeriveError(f"the equation adds z[i] of layer ℓ to neuron i of layer ℓ+1, so the "
                              f"hidden widths must be equal; got {list(self.widths)}")
        object.__setattr__(self, "equation_", eq)
        object.__setattr__(self, "scalars_", tuple(kept))

    @property
    def equation(self) -> ForwardEquation:
        return self.equation_

    def scalar_values(self, layer: int) -> tuple:
        layer = self._check_layer(layer)
        if layer < 2:
            raise DeriveError("layer 1 is the MLP's: the equation's scalars belong to layers 2 … L")
        return tuple(vals[layer - 2] for _, vals in self.scalars_)

    def with_widths(self, widths) -> "Network":
        return Network(self.depth, widths, self.activation, list(self.C_b_), list(self.C_W_),
                       self.equation_, {s: list(v) for s, v in self.scalars_},
                       list(self.lambda_b_), list(self.lambda_W_))

    def __repr__(self) -> str:
        base = super().__repr__()[len("MLP("):-1]
        sc = ", ".join(f"{s}={v[0]!r}" if len(set(v)) == 1 else f"{s}={list(v)!r}"
                       for s, v in self.scalars_)
        return f"Network({base}, equation={self.equation_.description!r}, scalars={{{sc}}})"
