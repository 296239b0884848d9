"""Every rule of rules/engine.toml must fire somewhere: a rule nothing applies is a defect."""
import sympy as sp

from derive import (E, GaussianAverage, NeuronSum, cumulant, gaussian_field,
                    integrate_by_parts, moment_from_cumulants, nearly_gaussian_expectation,
                    nearly_gaussian_field, neuron_indices, perturbative_expectation,
                    sample_indices, split_sum, weight, bias, wick)
from derive.base.rules import engine_rules
from derive.algebra.trace import Trace


def test_every_engine_rule_fires():
    t = Trace()
    z = gaussian_field("z", "K")
    W, b = weight("W", "C_W", "n0"), bias("b", "C_b")
    s = gaussian_field("s", "S")
    i1, i2, j, k = neuron_indices("i1 i2 j k")
    a1, a2 = sample_indices("alpha1 alpha2")
    n0 = sp.Symbol("n0", positive=True)
    pre = lambda i, a: b[i] + NeuronSum(W[i, j] * s[j, a], (j, n0))
    wick(pre(i1, a1) * pre(i2, a2), over=[W, b], trace=t)                 # linearity, isserlis, δ
    wick(NeuronSum(z[j, a1] * z[j, a2], (j, n0)) ** 2, trace=t)          # counting, merge
    split_sum(NeuronSum(s[j, a1] * s[k, a2], (j, n0), (k, n0)), trace=t)  # split
    zn = nearly_gaussian_field("z", "K", "G1", "V", "n")
    nearly_gaussian_expectation(zn[i1, a1] ** 4, trace=t)                # cumulants, truncate
    zs = nearly_gaussian_field("zeta", "K", "G1", "V", "n", neuron=False)
    perturbative_expectation(sp.Function("sigma")(zs[a1]), trace=t)      # operator form
    x = sp.symbols("x1:4")
    cumulant(x, trace=t)
    moment_from_cumulants(x, trace=t)
    zg = gaussian_field("zeta", "K", neuron=False)
    integrate_by_parts(GaussianAverage(zg[a1] * sp.Function("sigma")(zg[a2]), "K"), trace=t)
    from derive.architectures.forward import mlp_equation
    from derive.derivation.layerstep import derive_layer_step
    mlp_equation().ntk(i1, i2, a1, a2, trace=t)                          # NTK chain rule
    t.steps.extend(derive_layer_step(order=0).steps["Theta"].steps)      # NTK mean, LO
    t.steps.extend(derive_layer_step(names={"H1"}).steps["H1"].steps)     # NTK mean, O(1/n)
    t.steps.extend(derive_layer_step(names={"P"}).steps["P"].steps)       # dNTK chain rule
    fired = set(t.rules())
    missing = set(engine_rules()) - fired
    assert not missing, f"engine rules never exercised: {sorted(missing)}"
    for step in t:
        assert step.info.reference and step.info.title
