r"""Network specifications as plain, frozen, validated data (docs/conventions.md §2).

``MLP(depth, widths, activation, C_b, C_W, lambda_b=1, lambda_W=1)`` describes

    z^{(1)}_{i;α} = b^{(1)}_i + Σ_j W^{(1)}_{ij} x_{j;α},
    z^{(ℓ+1)}_{i;α} = b^{(ℓ+1)}_i + Σ_j W^{(ℓ+1)}_{ij} σ(z^{(ℓ)}_{j;α}),   ℓ = 1 … L−1,

with Var b^{(ℓ)} = C_b^{(ℓ)}, Var W^{(ℓ)} = C_W^{(ℓ)}/n_{ℓ−1}, and learning rates λ_b^{(ℓ)},
λ_W^{(ℓ)}/n_{ℓ−1} for the NTK.  ``widths`` is one int (every hidden layer) or the list of the
L−1 hidden widths n_1 … n_{L−1}; n_0 comes from the inputs.  Hyperparameters are scalars or
per-layer lists of length L (index 0 is layer 1).  Nothing assumes equal widths or
layer-independent hyperparameters.

>>> spec = MLP(3, [64, 32], "tanh", C_b=0.0, C_W=[1.0, 1.0, 2.0])
>>> spec.width(2), spec.C_W(3), spec.C_b(1)
(32, 2.0, 0.0)
"""
from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral, Real

from ..activations.catalogue import Activation, activation
from ..base.errors import DeriveError
from .forward import mlp_equation

__all__ = ["MLP", "MAX_DEPTH", "MAX_WIDTH"]

#: the deepest network accepted.  The recursions are evaluated layer by layer (milliseconds
#: to tens of milliseconds per layer), and the 1/n expansion they come from needs depth ≪ width
#: (its parameter grows like depth/width, docs/conventions.md §5): 10000 layers is far beyond any width one
#: can sample, and a typo like ``depth = 1000000000`` must not run for days.
MAX_DEPTH = 10_000
#: widest layer accepted (widths enter as exact floats: below 2**53)
MAX_WIDTH = 2 ** 53


def _per_layer(value, depth: int, name: str, nonneg: bool, first: int = 1) -> tuple[float, ...]:
    """``value`` (one number, or one per layer) as ``depth`` finite floats; messages number the
    layers from ``first`` (2 for the values of layers 2 … L)."""
    if isinstance(value, (list, tuple)):
        if len(value) != depth:
            raise DeriveError(f"{name} has {len(value)} entries but the network has {depth} layers; "
                              f"give one value or a list of length {depth} (layer 1 first)")
        vals = list(value)
    else:
        vals = [value] * depth
    out = []
    for k, v in enumerate(vals, first):
        if isinstance(v, bool) or not isinstance(v, Real):
            raise DeriveError(f"{name} of layer {k} must be a number, got {v!r:.60}")
        try:
            v = float(v)
        except (OverflowError, ValueError):
            v = float("inf")
        if v != v or v in (float("inf"), float("-inf")):
            raise DeriveError(f"{name} of layer {k} must be a finite number, got "
                              f"{vals[k - first]!r:.60}")
        if nonneg and v < 0:
            raise DeriveError(f"{name} of layer {k} is a variance and must be ≥ 0, got {v}")
        out.append(v)
    return tuple(out)


def _upper_layers(value, depth: int, name: str, which: str = "layer") -> tuple[float, ...]:
    """The values of a scalar of layers 2 … L (an architecture's own, such as ξ and γ): one
    number, or a list of L − 1 (``which`` names those layers in the message)."""
    if isinstance(value, (list, tuple)) and len(value) != depth - 1:
        raise DeriveError(f"{name} has {len(value)} entries; give one number or one per {which} "
                          f"2 … {depth} ({depth - 1} entries)")
    return _per_layer(value, depth - 1, name, False, first=2) if depth > 1 else ()


@dataclass(frozen=True)
class MLP:
    """A multilayer perceptron at initialisation (see the module docstring).

    Parameters
    ----------
    depth : int
        The number of layers L (≥ 1).
    widths : int or list of int
        The hidden widths n_1 … n_{L−1}: one number for all, or L − 1 of them.
    activation : str or Activation
        σ: a name, an expression in ``z`` or a :func:`derive.activation`.
    C_b, C_W : float or list of float
        The bias and weight variances (≥ 0): one number or one per layer.
    lambda_b, lambda_W : float or list of float, optional
        The learning-rate factors of biases and weights (default 1; used by Θ).

    Returns
    -------
    MLP
        The (frozen) spec; ``C_b(ℓ)``, ``C_W(ℓ)``, ``width(ℓ)`` … give per-layer values.

    Raises
    ------
    DeriveError
        For a depth or width that is not a whole number in range, a list of the wrong length,
        a negative or non-finite variance, or an invalid activation.

    Examples
    --------
    >>> spec = MLP(3, 64, 'relu', 0.0, 2.0)
    >>> spec.widths
    (64, 64)
    """

    depth: int
    widths: tuple[int, ...]
    activation: Activation
    C_b_: tuple[float, ...]
    C_W_: tuple[float, ...]
    lambda_b_: tuple[float, ...]
    lambda_W_: tuple[float, ...]

    def __init__(self, depth, widths, activation, C_b, C_W, lambda_b=1.0, lambda_W=1.0):
        if isinstance(depth, bool) or not isinstance(depth, Integral) or depth < 1:
            raise DeriveError(f"depth must be a whole number ≥ 1 (the number of layers L), got "
                              f"{depth!r:.40}")
        if depth > MAX_DEPTH:
            raise DeriveError(f"depth {depth} is more than {MAX_DEPTH} layers; the 1/n expansion "
                              "needs depth ≪ width anyway (docs/conventions.md §5): give a smaller depth")
        depth = int(depth)
        if isinstance(widths, (list, tuple)):
            if len(widths) != depth - 1:
                raise DeriveError(f"widths lists the {depth - 1} hidden widths n_1 … n_{depth - 1} "
                                  f"of a depth-{depth} network; got {len(widths)} entries")
            ws = list(widths)
        else:
            ws = [widths] * (depth - 1)
        for k, w in enumerate(ws, 1):
            if isinstance(w, bool) or not isinstance(w, Integral) or not 1 <= w <= MAX_WIDTH:
                raise DeriveError(f"width n_{k} must be a whole number from 1 to {MAX_WIDTH}, "
                                  f"got {w!r:.40}")
        if not isinstance(activation, (str, Activation)):
            raise DeriveError(f"activation must be a name, a string in z or a derive.activation(...)"
                              f", got {type(activation).__name__}")
        # validates (unknown names list the known ones); the object is kept, so the parameters
        # of a named activation (leaky_relu's a_minus, …) travel with the spec
        act = activation if isinstance(activation, Activation) else _activation(activation)
        object.__setattr__(self, "depth", depth)
        object.__setattr__(self, "widths", tuple(int(w) for w in ws))
        object.__setattr__(self, "activation", act)
        object.__setattr__(self, "C_b_", _per_layer(C_b, depth, "C_b", True))
        object.__setattr__(self, "C_W_", _per_layer(C_W, depth, "C_W", True))
        object.__setattr__(self, "lambda_b_", _per_layer(lambda_b, depth, "lambda_b", True))
        object.__setattr__(self, "lambda_W_", _per_layer(lambda_W, depth, "lambda_W", True))

    # per-layer accessors, layers counted from 1 as in the book -----------------------------

    def _check_layer(self, layer: int) -> int:
        if isinstance(layer, bool) or not isinstance(layer, Integral) or not 1 <= layer <= self.depth:
            raise DeriveError(f"layer must be 1 … {self.depth}, got {layer!r}")
        return int(layer)

    def width(self, layer: int) -> int:
        """n_ℓ for a hidden layer ℓ = 1 … L−1."""
        if isinstance(layer, bool) or not isinstance(layer, Integral) or not 1 <= layer <= self.depth - 1:
            raise DeriveError(f"hidden layers are 1 … {self.depth - 1}; n_0 comes from the inputs "
                              f"and the output width is not part of the spec; got {layer!r}")
        return self.widths[layer - 1]

    def C_b(self, layer: int) -> float:
        return self.C_b_[self._check_layer(layer) - 1]

    def C_W(self, layer: int) -> float:
        return self.C_W_[self._check_layer(layer) - 1]

    def lambda_b(self, layer: int) -> float:
        return self.lambda_b_[self._check_layer(layer) - 1]

    def lambda_W(self, layer: int) -> float:
        return self.lambda_W_[self._check_layer(layer) - 1]

    # the forward equation (architectures as data) -----------------------------------------

    @property
    def equation(self):
        """The forward equation of layers 2 … L (:mod:`derive.architectures.forward`)."""
        return mlp_equation()

    def scalar_values(self, layer: int) -> tuple:
        """The values at ``layer`` of the equation's scalars besides C_b, C_W (none here)."""
        return ()

    @property
    def max_order(self) -> int:
        """The order in 1/n that derive, predict and check use by default: 1, or 0 when the
        forward equation has a skip term (its O(1/n) closure is not derived).  Order 2 (the
        O(1/n²) statistics G2, V1, U) is derived on request (:attr:`highest_order`)."""
        return 0 if self.equation.has_skip() else 1

    @property
    def highest_order(self) -> int:
        """The highest order in 1/n the engine derives for this architecture: 2 (the next
        order is the same layer step with one more term kept, docs/conventions.md §10), or 0
        when the forward equation has a skip term."""
        return 0 if self.equation.has_skip() else 2

    @property
    def nlo_reason(self) -> str:
        """Why the O(1/n) statistics of this architecture are not derived, in a few words, for
        the outputs that say so (relevant when :attr:`max_order` is 0)."""
        return ("not derived for skip connections" if self.equation.has_skip()
                else "not derived for this architecture")

    @property
    def activation_name(self) -> str:
        return self.activation.name

    def with_widths(self, widths) -> "MLP":
        """The same network at other hidden widths (for 1/n fits)."""
        return MLP(self.depth, widths, self.activation, list(self.C_b_), list(self.C_W_),
                   list(self.lambda_b_), list(self.lambda_W_))

    def __repr__(self) -> str:
        def short(t):
            return repr(t[0]) if len(set(t)) == 1 else repr(list(t))
        ws = short(self.widths) if self.widths else "[]"
        return (f"MLP(depth={self.depth}, widths={ws}, activation={self.activation_name!r}, "
                f"C_b={short(self.C_b_)}, C_W={short(self.C_W_)}, lambda_b={short(self.lambda_b_)}, "
                f"lambda_W={short(self.lambda_W_)})")


def _activation(name: str) -> Activation:
    return activation(name)
