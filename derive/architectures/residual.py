r"""Residual networks (docs/conventions.md §8): ``ResMLP(depth, widths, activation, C_b, C_W, xi, gamma, …)``.

    z^{(1)}_{i;α}   = b^{(1)}_i + Σ_j W^{(1)}_{ij} x_{j;α}                               (as the MLP)
    z^{(ℓ+1)}_{i;α} = ξ^{(ℓ+1)} z^{(ℓ)}_{i;α} + γ^{(ℓ+1)} [ b^{(ℓ+1)}_i + Σ_j W^{(ℓ+1)}_{ij} σ(z^{(ℓ)}_{j;α}) ]

with the parameter distributions of the MLP (Var b = C_b, Var W = C_W/n_ℓ).  The skip adds
neuron i of layer ℓ to neuron i of layer ℓ+1, so every hidden layer has the same width.
ξ and γ are one number or one value per residual layer 2 … L (a list of length L−1); they
are ignored at layer 1.  ξ = 0, γ = 1 is the MLP.

>>> net = ResMLP(4, 32, "tanh", C_b=0.0, C_W=1.0, xi=1.0, gamma=[0.5, 0.5, 0.3])
>>> net.xi(2), net.gamma(4)
(1.0, 0.3)
"""
from __future__ import annotations

from dataclasses import dataclass

from ..base.errors import DeriveError
from .forward import GAMMA, XI, residual_equation
from .mlp import MLP, _upper_layers

__all__ = ["ResMLP"]


@dataclass(frozen=True, repr=False)
class ResMLP(MLP):
    """A residual MLP at initialisation (see the module docstring).

    Layers 2 … L are z' = ξ z + γ [b + W σ(z)]; layer 1 is the MLP's.

    Parameters
    ----------
    depth, widths, activation, C_b, C_W, lambda_b, lambda_W
        As for :class:`MLP`; the hidden widths must be equal.
    xi : float or list of float, optional
        ξ of layers 2 … L: one number or L − 1 of them (default 1).
    gamma : float or list of float, optional
        γ of layers 2 … L: one number or L − 1 of them (default 1).

    Returns
    -------
    ResMLP
        The spec; ``xi(ℓ)`` and ``gamma(ℓ)`` give per-layer values.

    Raises
    ------
    DeriveError
        As for :class:`MLP`, and for unequal hidden widths or lists of ξ, γ of the wrong length.

    Examples
    --------
    >>> spec = ResMLP(3, 16, 'tanh', 0.0, 1.0, xi=0.8, gamma=0.6)
    >>> spec.xi(2), spec.gamma(3)
    (0.8, 0.6)
    """

    xi_: tuple = ()
    gamma_: tuple = ()

    def __init__(self, depth, widths, activation, C_b, C_W, xi=1.0, gamma=1.0, lambda_b=1.0,
                 lambda_W=1.0):
        super().__init__(depth, widths, activation, C_b, C_W, lambda_b, lambda_W)
        if len(set(self.widths)) > 1:
            raise DeriveError(f"a residual network adds neuron i of layer ℓ to neuron i of layer "
                              f"ℓ+1, so its hidden widths must be equal; got {list(self.widths)}")
        for name, value in (("xi", xi), ("gamma", gamma)):
            object.__setattr__(self, f"{name}_", _upper_layers(value, self.depth, name,
                                                                "residual layer"))

    def xi(self, layer: int) -> float:
        """ξ^{(ℓ)} of a residual layer ℓ = 2 … L."""
        return self.xi_[self._residual_layer(layer) - 2]

    def gamma(self, layer: int) -> float:
        """γ^{(ℓ)} of a residual layer ℓ = 2 … L."""
        return self.gamma_[self._residual_layer(layer) - 2]

    def _residual_layer(self, layer) -> int:
        layer = self._check_layer(layer)
        if layer < 2:
            raise DeriveError("layer 1 is the MLP's (z = b + W x): ξ and γ belong to layers 2 … L")
        return layer

    @property
    def equation(self):
        # a scalar that is 0 at every layer drops out of the equation (ξ = 0 everywhere is an
        # MLP layer with variances scaled by γ², and then its O(1/n) statistics close)
        zero = [s for s, vals in ((XI, self.xi_), (GAMMA, self.gamma_)) if not any(vals)]
        return residual_equation().without(zero)

    def scalar_values(self, layer: int) -> tuple:
        """The values of the equation's scalars at ``layer`` ≥ 2, in the equation's order."""
        vals = {XI: self.xi(layer), GAMMA: self.gamma(layer)}
        return tuple(vals[s] for s in self.equation.scalars)

    def with_widths(self, widths) -> "ResMLP":
        return ResMLP(self.depth, widths, self.activation, list(self.C_b_), list(self.C_W_),
                      list(self.xi_), list(self.gamma_), list(self.lambda_b_), list(self.lambda_W_))

    def __repr__(self) -> str:
        base = super().__repr__()[len("MLP("):-1]

        def short(t):
            return repr(t[0]) if len(set(t)) == 1 else repr(list(t))
        return (f"ResMLP({base}, xi={short(self.xi_) if self.xi_ else '[]'}, "
                f"gamma={short(self.gamma_) if self.gamma_ else '[]'})")
