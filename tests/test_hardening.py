"""Bad input gets a DeriveError that says what to change — never a library traceback, a hang or
a silently wrong number (the cases of the hardening issue, each reproduced first)."""
import time
import warnings

import numpy as np
import pytest

import derive
from derive.base.errors import DeriveError, InternalError, boundary
from derive.numeric.prediction import ExpansionWarning
from derive.numeric.training import UnstableStepWarning

# narrow networks on purpose (fast): the expansion warning is expected
pytestmark = pytest.mark.filterwarnings("ignore::derive.numeric.prediction.ExpansionWarning")

X2 = np.array([[1.0, 0.5, -0.3], [0.2, -1.0, 0.4]])
TANH = derive.MLP(3, 8, "tanh", 0.0, 1.0)


@pytest.mark.parametrize("call, match", [
    (lambda: derive.activation("leaky_relu", a_minus=True), "must be a number"),
    (lambda: derive.activation("leaky_relu", a_minus=[1]), "must be a number"),
    (lambda: derive.activation("leaky_relu", a_minus=10 ** 400), "finite number"),
    (lambda: derive.activation(None), "name or a SymPy string"),
    (lambda: derive.activation(3.5), "name or a SymPy string"),
    (lambda: derive.gaussian_expectation(None, np.eye(1)), "SymPy expression"),
    (lambda: derive.gaussian_expectation("tanh(z1)", np.eye(1), tol="x"), "tol must be"),
    (lambda: derive.gaussian_expectation("tanh(z1)", [["a"]]), "numeric array"),
    (lambda: derive.gaussian_expectation("tanh(z1)", np.eye(1), method=[1]), "method"),
    (lambda: derive.MLP(2 ** 70, 8, "tanh", 0, 1), "layers"),
    (lambda: derive.MLP(3, 2 ** 70, "tanh", 0, 1), "width"),
    (lambda: derive.MLP(3, 8, "tanh", 10 ** 400, 1), "finite"),
    (lambda: derive.MLP(3, 8, ["tanh"], 0, 1), "activation must be"),
    (lambda: derive.derive(TANH, 5, 1), "targets"),
    (lambda: derive.derive(TANH, ["K", 3], 1), "unknown target"),
    (lambda: derive.derive("spec", None, 1), "derive.MLP"),
    (lambda: derive.predict(TANH, "abc"), "array of inputs"),
    (lambda: derive.predict(TANH, [[1, 2], [3]]), "rectangular"),
    (lambda: derive.predict(TANH, [[1j, 2]]), "real numbers"),
    (lambda: derive.predict(TANH, np.ones((2, 0))), "shape"),
    (lambda: derive.predict(TANH, X2, targets=5), "targets"),
    (lambda: derive.predict(TANH, X2, warn_threshold=float("nan")), "warn_threshold"),
    (lambda: derive.predict(TANH, X2, tol=-1.0), "tol must be"),
    (lambda: derive.predict(TANH, X2, order=3), "order"),
    (lambda: derive.predict(TANH, np.ones((3, 2)), order=2, targets=["U"]), "at most 2"),
    (lambda: derive.wick(None), "SymPy expression"),
    (lambda: derive.wick([1, 2]), "SymPy expression"),
    (lambda: derive.wick("z[i,a]"), "string"),
    (lambda: derive.criticality(None), "name or a SymPy string"),
    (lambda: derive.check(TANH, X2, widths=[8], samples=0), "samples"),
])
def test_bad_calls_raise_derive_errors(call, match):
    with pytest.raises(DeriveError, match=match):
        call()


@pytest.mark.parametrize("text, match", [
    ("0*z", "constant"),
    ("sin(z)**2 + cos(z)**2", "constant"),
    ("Max()", "no arguments"),
    ("Float('nan')*z", "unknown function Float"),
    ("oo*z", "unknown name 'oo'"),
    ("z**0.5", "not finite and real"),
    ("log(Abs(z))", "not finite and real"),
    ("1/z", "not finite and real"),
    ("tan(z)", "not finite and real"),
    ("1/(z - 0.3001)", "not finite and real"),
    ("asin(z)", "not finite and real"),
    ("exp(z**2)", "grows too fast|exp\\(c z²\\)"),
    ("exp(0.01*z**2)", "exp\\(c z²\\)"),
    ("floor(z)", "every integer"),
    ("ceiling(z/2)", "every integer"),
])
def test_activations_that_cannot_work_are_refused_when_created(text, match):
    with pytest.raises(DeriveError, match=match):
        derive.activation(text)


def test_abs_sign_and_jumps():
    """Abs and sign have real derivatives (they reach the code printer as Max and Heaviside);
    σ that jump are accepted for K, G1, V and refused for Θ, χ_⊥ and the Monte Carlo NTK."""
    a = derive.activation("Abs(z)")
    assert a.kinks == (0.0,) and not a.jumps and not a.ntk_obstacle
    assert a.kernel_family == "arccos"  # scale-invariant with a₊ = 1, a₋ = −1
    p = derive.predict(derive.MLP(3, 8, "Abs(z)", 0.0, 1.0), X2)
    assert np.all(np.isfinite(p.Theta[3])) and np.all(np.isfinite(p.V[3]))
    for text in ("sign(z)", "Heaviside(z)", "Piecewise((1, z > 0), (0, True))",
                 "tanh(z) + Heaviside(z - 1)"):
        act = derive.activation(text)
        assert act.jumps and "diverges" in act.ntk_obstacle, text
        spec = derive.MLP(3, 8, text, 0.0, 1.0)
        with pytest.raises(DeriveError, match="infinite"):
            derive.predict(spec, X2, targets=["K", "Theta"])
        with pytest.raises(DeriveError, match="infinite"):
            derive.derive(spec, ["K", "Theta"], 0)
        with pytest.raises(derive.activations.criticality.NoCriticalPoint, match="infinite"):
            derive.criticality(text)
        with pytest.raises(DeriveError, match="infinite"):
            derive.reality.montecarlo.sample(spec, X2, 200, ntk=True)
        p = derive.predict(spec, X2)  # the default targets leave Θ out
        assert p.Theta == {} and np.all(np.isfinite(p.G1[3]))
        assert "Theta" not in derive.derive(spec).targets
    # a singular σ' (a cusp) makes Θ infinite too
    assert "σ' is singular" in derive.activation("sqrt(Abs(z))").ntk_obstacle


def test_named_activation_parameters_travel_with_the_spec():
    """MLP(..., activation('leaky_relu', a_minus=0.5)) used to fall back to the default
    a_minus = 0.01 (a silently wrong number)."""
    act = derive.activation("leaky_relu", a_minus=0.5)
    spec = derive.MLP(3, 8, act, 0.0, 1.0)
    assert spec.activation == act and "0.5*z" in str(spec.activation.expr)
    default = derive.predict(derive.MLP(3, 8, "leaky_relu", 0.0, 1.0), X2, targets=["K"])
    custom = derive.predict(spec, X2, targets=["K"])
    assert not np.allclose(default.K[3], custom.K[3])
    # independent: ⟨σ²⟩ of a₊ = 1, a₋ = 0.5 at K = k is (1 + 0.25) k / 2 per layer (one input)
    x = X2[:1]
    k = float((x @ x.T)[0, 0]) / 3
    for _ in range(2):
        k = 1.25 * k / 2
    assert derive.predict(spec, x, targets=["K"]).K[3][0, 0] == pytest.approx(k, rel=1e-12)


def test_user_strings_get_their_canonical_name():
    """The name that reaches documents and generated code is SymPy's print of the parsed
    expression, not the raw text."""
    a = derive.activation("  Max(0,z)   -0.1*Max(0,-z)  ")
    assert a.name == "-0.1*Max(0, -z) + Max(0, z)"
    assert derive.activation(a.name) == a


def test_divergent_integrals_are_errors_not_numbers():
    for f in ("1/z1", "tan(z1)", "1/(z1 - z2)", "log(Abs(z1))"):
        with pytest.raises(DeriveError, match="cannot be computed"):
            derive.gaussian_expectation(f, np.eye(2))
    with pytest.raises(DeriveError, match="diverges"):
        derive.gaussian_expectation("exp(z1**2)", np.eye(1))
    with pytest.raises(DeriveError, match="diverges"):
        derive.gaussian_expectation("exp(z1**2/4)", 3 * np.eye(1))  # c K = 3/4 ≥ 1/2
    v = derive.gaussian_expectation("exp(z1**2/8)", np.eye(1))  # c K = 1/8: 1/sqrt(1 − 2c)
    assert float(v) == pytest.approx(1 / np.sqrt(0.75), rel=1e-12)
    # c K = 1/4: finite (√2), but 2e-12 of it lies beyond the rules' 10 standard deviations
    with pytest.raises(derive.base.errors.QuadratureError, match="decays too slowly"):
        derive.gaussian_expectation("exp(z1**2/4)", np.eye(1))
    v = derive.gaussian_expectation("exp(z1**2/4)", np.eye(1), tol=1e-10)
    assert abs(float(v) - np.sqrt(2)) < 1e-10 and v.error >= abs(float(v) - np.sqrt(2))
    with pytest.raises(DeriveError, match="double precision"):
        derive.gaussian_expectation("z1**4", np.array([[1e300]]))


def test_huge_and_tiny_variances_are_scaled_not_overflowed():
    big = derive.gaussian_expectation("Abs(z1)*Abs(z2)", np.diag([1e300, 1e300]))
    assert float(big) == pytest.approx(2 / np.pi * 1e300, rel=1e-12)
    K = np.array([[1e300, 0.5e300], [0.5e300, 1e300]])
    erf = derive.gaussian_expectation("erf(z1)*erf(z2)", K)
    assert float(erf) == pytest.approx(2 / np.pi * np.arcsin(0.5), rel=1e-12)
    tiny = derive.gaussian_expectation("Max(0, z1)*Max(0, z2)", 1e-300 * np.array([[1, .5], [.5, 1]]))
    theta = np.arccos(0.5)
    want = 1e-300 / (2 * np.pi) * (np.sin(theta) + (np.pi - theta) * 0.5)
    assert float(tiny) == pytest.approx(want, rel=1e-12)


def test_diagonal_angles_are_exactly_zero():
    """K_pp / sqrt(K_pp)² rounds to 1 − 2e-16 for some K_pp; arccos made that an angle of 2e-8
    and the step-function closed form (ReLU's Θ, sign's K) an error of 1e-8."""
    for K in (1.2, 0.1 + 0.3, 1.1 * 3):
        v = derive.gaussian_expectation("Heaviside(z1)**2", np.array([[K]]))
        assert float(v) == 0.5
        v = derive.gaussian_expectation("Heaviside(z1)*Heaviside(z2)", np.full((2, 2), K))
        assert float(v) == 0.5
    spec = derive.MLP(3, [5, 7], "sign(z)", 0.1, [1.3, 1.1, 0.9])
    p = derive.predict(spec, np.array([[0.9, -0.2, 0.4]]), targets=["K"])
    assert p.K[3][0, 0] == 0.1 + 0.9  # ⟨sign²⟩ = 1 exactly


def test_hopeless_runs_are_refused_up_front_and_long_ones_announced(capsys):
    X = np.random.default_rng(0).standard_normal((60, 3))
    t = time.perf_counter()
    # V of 120 inputs through 8 layers: about 8 million four-sample averages a layer, half a
    # day (kept once per orbit, 3 GiB: within the memory limit)
    with pytest.raises(DeriveError, match="not practical.*Leave V out"):
        derive.predict(derive.MLP(8, 100, "tanh", 0.0, 1.0),
                       np.random.default_rng(1).standard_normal((120, 3)), targets=["K", "V"],
                       dense=False)
    assert time.perf_counter() - t < 20
    with pytest.raises(DeriveError, match="GiB"):
        derive.predict(derive.MLP(8, 100, "relu", 0.0, 2.0), np.ones((20_000, 2)))
    # the announcement names the work; K, Θ, G1 of many inputs take the generated route
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExpansionWarning)
        p = derive.predict(derive.MLP(3, 100, "relu", 0.0, 2.0), X, targets=["K", "G1", "Theta"],
                           progress=True)
    err = capsys.readouterr().err
    assert p.route == "generated" and "generated evaluator" in err


def test_the_vertex_estimate_knows_which_kinked_activations_have_exact_moments():
    """ReLU-like σ (a polynomial on each half-line) take the exact orthant moments and are
    estimated as such: 30 inputs through 5 layers are announced in minutes, not refused; a σ
    with a kink elsewhere takes the kink-split quadrature and the same run is refused."""
    from derive.numeric.prediction import _vertex_kind, plan_work

    relu, tanh = derive.MLP(5, 64, "relu", 0.0, 2.0), derive.MLP(5, 64, "tanh", 0.1, 1.0)
    shifted = derive.MLP(5, 64, "Max(0, z - 1/2)", 0.0, 2.0)
    assert [_vertex_kind(s.activation) for s in (relu, tanh, shifted)] == \
        ["orthant", "smooth", "kinked"]
    said = []
    assert plan_work(relu, 30, ("K", "V"), said.append, dense=False) == "batched"
    assert "min" in said[0] or " s on" in said[0]
    with pytest.raises(DeriveError, match="not practical"):
        plan_work(shifted, 30, ("K", "V"), dense=False)


def test_vertex_work_counts_the_orbits_the_batched_evaluator_computes():
    from derive.numeric.evaluate import _vertex_orbits
    from derive.numeric.prediction import vertex_work

    for N in (1, 2, 3, 5, 10):
        C = np.sort(_vertex_orbits(N), axis=1)
        distinct = 1 + np.count_nonzero(np.diff(C, axis=1), axis=1)
        assert vertex_work(N) == {k: int(np.sum(distinct == k)) for k in (1, 2, 3, 4)}
    from derive.numeric.evaluate import orbits

    for N, n_train in ((6, 3), (7, 2), (5, 0)):         # at most two test inputs among them
        C = np.sort(orbits(N, "pairs", "training", n_train), axis=1)
        distinct = 1 + np.count_nonzero(np.diff(C, axis=1), axis=1)
        assert vertex_work(N, n_train) == {k: int(np.sum(distinct == k)) for k in (1, 2, 3, 4)}


def test_spec_files_are_refused_before_the_derivation_when_predict_would_refuse(tmp_path):
    from derive.cli.specfile import load_spec

    rows = ", ".join(f"[{k}.0, {k % 3}.5, 1.0]" for k in range(60))
    path = tmp_path / "big.toml"
    # a kink away from 0 takes the kink-split quadrature: V of 60 inputs, days
    path.write_text(f'activation = "Max(0, z - 1/2)"\ndepth = 8\nwidths = 100\nC_W = 2.0\n'
                    f'inputs = [{rows}]\ntargets = ["K", "V"]\n')
    with pytest.raises(DeriveError, match="big.toml.*not practical"):
        load_spec(path)


def test_expansion_warning_threshold_is_validated_and_used():
    with pytest.warns(ExpansionWarning):
        derive.predict(derive.MLP(30, 4, "tanh", 0, 1), X2, warn_threshold=0.01)


def test_boundary_turns_unexpected_failures_into_derive_errors():
    @boundary
    def broken(x):
        return {}[x]

    with pytest.raises(InternalError, match="broken failed unexpectedly.*KeyError") as e:
        broken("k")
    assert isinstance(e.value.cause, KeyError)
    # no chained library traceback under it (the original is kept as .cause)
    assert e.value.__cause__ is None and e.value.__context__ is None

    @boundary
    def hungry():
        raise MemoryError

    with pytest.raises(DeriveError, match="out of memory"):
        hungry()

    # a warning the caller turned into an error is theirs, not an internal failure
    spec = derive.MLP(2, 8, "tanh", 0.0, 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UnstableStepWarning):
            derive.train(spec, X2, [0.1, 0.2], None, eta=50.0, steps=2)


def test_kinked_averages_of_singular_kernels_converge():
    """More inputs than input dimensions make K singular; the kinks of the dependent variables
    are split on the axes of the others, so the 4-variable ReLU average of a rank-3 kernel
    converges (it failed after minutes), against Monte Carlo."""
    rng = np.random.default_rng(1)
    A = rng.standard_normal((4, 3))
    K = A @ A.T
    v = derive.gaussian_expectation("Max(0,z1)*Max(0,z2)*Max(0,z3)*Max(0,z4)", K)
    z = rng.standard_normal((2_000_000, 3)) @ A.T
    s = np.prod(np.maximum(z, 0), axis=1)
    assert abs(float(v) - s.mean()) < 4 * s.std() / np.sqrt(len(s))
    assert v.error < 1e-6
