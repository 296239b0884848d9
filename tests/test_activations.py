"""Activations as data: loading, parsing, kinks, errors."""
import numpy as np
import pytest
import sympy as sp

from derive import activation, known_activations
from derive.activations.catalogue import z
from derive.base.errors import DeriveError, ParseError, UnknownNameError

REQUIRED = {"linear", "relu", "leaky_relu", "tanh", "erf", "sigmoid", "softplus", "gelu", "swish", "sin"}


def test_required_set_present():
    assert REQUIRED <= set(known_activations())
    assert activation("silu").name == "swish"


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_numpy_matches_sympy(name):
    act = activation(name)
    x = np.array([-2.3, -0.7, 0.4, 1.9])
    for k in (0, 1, 2):
        if act.derivative(k).has(sp.DiracDelta):
            with pytest.raises(DeriveError, match="Dirac delta"):
                act.numpy(k)
            continue
        ref = [float(act.derivative(k).subs(z, xv)) for xv in x]
        assert np.allclose(act.numpy(k)(x), ref, rtol=1e-13, atol=1e-15)


def test_definitions_and_classes():
    assert activation("tanh").expr == sp.tanh(z)
    assert activation("relu").derivative(1) == sp.Heaviside(z)
    assert activation("relu").kinks == (0.0,) and not activation("relu").smooth
    assert activation("tanh").universality_class == "K*=0"
    assert activation("leaky_relu").universality_class == "scale-invariant"
    lk = activation("leaky_relu", a_minus=0.2)
    assert dict(lk.kernel_params) == {"a_plus": 1.0, "a_minus": 0.2}
    assert activation("erf")(sp.Symbol("x")) == sp.erf(sp.Symbol("x"))


def test_user_strings():
    cubic = activation("z**3 - z")
    assert cubic.is_polynomial and cubic.smooth
    sq = activation("Max(0, z)**2")
    assert sq.kinks == (0.0,) and not sq.smooth
    hard = activation("Min(1, Max(-1, z))")
    assert hard.kinks == (-1.0, 1.0)
    si = activation("3*Max(0, z) - Max(0, -z)")
    assert si.kernel_family == "arccos" and dict(si.kernel_params) == {"a_plus": 3.0, "a_minus": 1.0}


def test_errors():
    with pytest.raises(UnknownNameError) as e:
        activation("relux")
    assert "tanh" in str(e.value) and "relux" in str(e.value)
    with pytest.raises(ParseError, match=r"'z\+\*'"):
        activation("z+*")
    with pytest.raises(ParseError, match="unknown name 'y'.*the names E, pi, z "):
        activation("z*y")
    with pytest.raises(ParseError, match="unknown"):
        activation("bogus(z)")
    with pytest.raises(ParseError):
        activation("__import__('os').system('true')")
    with pytest.raises(DeriveError, match="no parameter"):
        activation("tanh", slope=2)
    with pytest.raises(DeriveError, match="finite"):
        activation("leaky_relu", a_minus=float("nan"))
