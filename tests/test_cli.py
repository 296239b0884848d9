"""The command line: the main job runs, errors are one line with exit status 2."""
from derive.cli import main


def test_wick_and_expect(capsys):
    assert main(["wick", "z[i,a]*z[j,b]", "--trace"]) == 0
    out = capsys.readouterr().out
    assert "KroneckerDelta(i, j)*K[a, b]" in out
    assert main(["expect", "erf(z1)*erf(z2)", "--K", "1,0.5;0.5,1"]) == 0
    assert "0.2163468959387" in capsys.readouterr().out  # (2/π) asin(1/3)


def test_errors_are_one_line(capsys):
    assert main(["wick", "z[a,i]"]) == 2
    assert "neuron slot" in capsys.readouterr().err
    assert main(["expect", "tanh(z1)*foo(z2)", "--K", "1"]) == 2
    assert "unknown function(s) foo" in capsys.readouterr().err
    assert main(["expect", "tanh(z1)", "--K", "-1"]) == 2
    assert "negative variance" in capsys.readouterr().err
    assert main([]) == 2
