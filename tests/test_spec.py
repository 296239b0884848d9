"""The MLP spec: frozen, hashable, validated with errors that say what to change."""
import pytest

from derive import MLP
from derive.base.errors import DeriveError, UnknownNameError


def test_accessors_and_hash():
    s = MLP(3, [64, 32], "tanh", C_b=0.1, C_W=[1.0, 1.5, 2.0], lambda_W=[1, 2, 3])
    assert (s.width(1), s.width(2)) == (64, 32)
    assert (s.C_W(1), s.C_W(3), s.C_b(2), s.lambda_W(2), s.lambda_b(1)) == (1.0, 2.0, 0.1, 2.0, 1.0)
    assert s == MLP(3, [64, 32], "tanh", C_b=0.1, C_W=[1.0, 1.5, 2.0], lambda_W=[1, 2, 3])
    assert hash(s) == hash(MLP(3, [64, 32], "tanh", C_b=0.1, C_W=[1.0, 1.5, 2.0], lambda_W=[1, 2, 3]))
    assert MLP(4, 16, "relu", 0, 2).widths == (16, 16, 16)
    assert MLP(1, 16, "relu", 0, 2).widths == ()
    assert MLP(2, 8, "silu", 0, 1).activation_name == "swish"
    assert MLP(2, 8, "z**3", 0, 1).activation.is_polynomial
    assert s.with_widths([8, 4]).widths == (8, 4)
    with pytest.raises(AttributeError):
        s.depth = 4


@pytest.mark.parametrize("kwargs,match", [
    (dict(depth=0), "depth"),
    (dict(depth=2.5), "depth"),
    (dict(widths=[8, 8, 8]), "hidden widths"),
    (dict(widths=0), "width n_1"),
    (dict(C_W=-1.0), "variance"),
    (dict(C_b=[0.0, 0.0]), "3 layers"),
    (dict(C_W=float("nan")), "finite"),
    (dict(lambda_b="x"), "number"),
])
def test_validation(kwargs, match):
    base = dict(depth=3, widths=8, activation="tanh", C_b=0.0, C_W=1.0)
    base.update(kwargs)
    with pytest.raises(DeriveError, match=match):
        MLP(**base)


def test_unknown_activation_lists_known():
    with pytest.raises(UnknownNameError, match="tanh"):
        MLP(2, 8, "tanhh", 0, 1)
    with pytest.raises(DeriveError, match="hidden layers"):
        MLP(2, 8, "tanh", 0, 1).width(2)
