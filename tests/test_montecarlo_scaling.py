"""Monte Carlo that scales (issue 15, goal 4): shards that make a seed's statistics the same
whatever runs them (here, 1 or 3 Dask workers), checkpoints that resume exactly, float32
forward passes, the PyTorch backend, and clear errors for bad arguments."""
import json

import numpy as np
import pytest

from derive import MLP, ResMLP
from derive.base.errors import DeriveError
from derive.reality import distributed
from derive.reality import montecarlo as mc
from derive.reality import shards
from derive.reality.montecarlo import MonteCarloError, sample

X2 = np.array([[1.0, 0.5, -0.3], [0.2, -1.0, 0.4]])
FIELDS = ("G", "G_err", "V", "V_err", "Theta", "Theta_err", "A", "A_err", "B", "B_err",
          "D", "D_err", "F", "F_err")


def assert_identical(a, b, fields=FIELDS):
    for l in a.layers:
        for k in fields:
            x, y = getattr(a.layers[l], k), getattr(b.layers[l], k)
            assert (x is None and y is None) or np.array_equal(x, y), (l, k)


@pytest.fixture
def small_shards(monkeypatch):
    """Shards of 25 networks for these small widths (so that a few hundred networks make
    several shards, as big runs do); the plan carries the size to the workers."""
    monkeypatch.setattr(shards, "_SHARD_MAX", 25)


# -- shards and seeds --------------------------------------------------------------------------

def test_shard_size_depends_on_the_widths_only():
    assert mc.shard_size([3, 64, 64, 64]) == mc.shard_size([3, 64, 64, 64])
    assert mc.shard_size([3, 1024, 1024, 1024]) < mc.shard_size([3, 64, 64, 64]) <= shards._SHARD_MAX
    assert mc.shard_size([3, 4096, 4096, 4096, 4096]) == 1


def test_shard_seed_is_the_spawned_child():
    kids = np.random.SeedSequence(17).spawn(5)
    for k in range(5):
        a = np.random.default_rng(kids[k]).standard_normal(4)
        b = np.random.default_rng(mc.shard_seed(17, k)).standard_normal(4)
        assert np.array_equal(a, b)


def test_draws_do_not_depend_on_ntk_dtype_or_chunk(small_shards, monkeypatch):
    """The same seed, the same networks: the metric with and without the NTK is the same bit
    for bit, also when the forward pass is cut into chunks of 7 networks."""
    spec = MLP(3, 6, "tanh", C_b=0.1, C_W=1.2)
    a = sample(spec, X2, 120, seed=3, ntk=True, progress=False)
    b = sample(spec, X2, 120, seed=3, ntk=False, progress=False)
    assert_identical(a, b, ("G", "G_err", "V", "V_err"))
    monkeypatch.setattr(mc, "_CHUNK_FLOATS", 7 * 6 * 6 * 2 * 2 * 4)
    c = sample(spec, X2, 120, seed=3, ntk=True, progress=False)
    for l in a.layers:   # chunks change the order of the sums, not the networks
        np.testing.assert_allclose(c.layers[l].G, a.layers[l].G, rtol=1e-13)
        np.testing.assert_allclose(c.layers[l].A, a.layers[l].A, rtol=1e-9, atol=1e-12)


# -- Dask ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_one_and_three_workers_and_local_are_identical(small_shards, tmp_path, monkeypatch):
    """1 and 3 Dask worker processes and no Dask at all: identical statistics for one seed
    (shards merged in shard order whoever computes them); 8 shards, uneven last one.  A run
    stopped here resumes on the workers to the same numbers."""
    pytest.importorskip("distributed")
    spec = ResMLP(3, 5, "tanh", C_b=0.1, C_W=1.0, xi=1.0, gamma=0.7)
    local = sample(spec, X2, 190, seed=9, progress=False)
    monkeypatch.setattr(distributed, "_stop_after", 5)
    with pytest.raises(MonteCarloError, match="stopped after 5 of 8"):
        sample(spec, X2, 190, seed=9, progress=False, checkpoint=tmp_path / "ck")
    monkeypatch.setattr(distributed, "_stop_after", None)
    with distributed.connect(workers=3) as client:
        three = sample(spec, X2, 190, seed=9, progress=False, scheduler=client)
        resumed = sample(spec, X2, 190, seed=9, progress=False, scheduler=client,
                         checkpoint=tmp_path / "ck")
    assert_identical(local, resumed)
    one = sample(spec, X2, 190, seed=9, progress=False, workers=1)
    assert_identical(local, three)
    assert_identical(local, one)
    other = sample(spec, X2, 190, seed=10, progress=False)
    assert not np.array_equal(other.layers[2].G, local.layers[2].G)


def test_progress_bar_counts_networks_over_shards(small_shards, capsys):
    sample(MLP(2, 4, "tanh", 0.0, 1.0), X2, 60, progress=True)
    err = capsys.readouterr().err
    assert err.count("\rmontecarlo [") == 3                  # one update per shard of 25
    assert "25/60 networks" in err and "50/60 networks" in err
    assert err.rstrip().endswith("60/60 networks, ETA   0.0 s")


def test_progress_eta_after_a_resume_counts_only_this_runs_networks(capsys, monkeypatch):
    """50 of 100 networks came from a checkpoint; 10 more took 10 s: 40 left take about 40 s
    (not 60 networks in 10 s: 6.7 s)."""
    monkeypatch.setattr(shards.time, "perf_counter", lambda: 110.0)
    shards._progress(True, 60, 100, 100.0, start=50)
    assert capsys.readouterr().err.endswith("60/100 networks, ETA  40.0 s")


# -- checkpoints --------------------------------------------------------------------------------

def _stop_run(spec, stem, monkeypatch, after: int, match: str = "stopped"):
    """Run 210 networks (9 shards) with a checkpoint, stopped after ``after`` shards."""
    monkeypatch.setattr(distributed, "_stop_after", after)
    with pytest.raises(MonteCarloError, match=match):
        sample(spec, X2, 210, seed=5, progress=False, checkpoint=stem)
    monkeypatch.setattr(distributed, "_stop_after", None)


def _shards_run(monkeypatch) -> list:
    """The list the shards computed from now on are appended to."""
    ran = []
    real = mc._run_shard
    monkeypatch.setattr(mc, "_run_shard", lambda p, k: ran.append(k) or real(p, k))
    return ran


def test_checkpoint_resume_equals_an_uninterrupted_run(small_shards, tmp_path, monkeypatch):
    spec = MLP(3, 6, "tanh", C_b=0.1, C_W=1.2)
    full = sample(spec, X2, 210, seed=5, progress=False)
    stem = tmp_path / "run"
    _stop_run(spec, stem, monkeypatch, 3, match="stopped after 3 of 9 shards")
    meta = json.loads((tmp_path / "run.json").read_text())
    assert meta["shards_done"] == 3 and meta["networks_done"] == 75
    ran = _shards_run(monkeypatch)
    resumed = sample(spec, X2, 210, seed=5, progress=False, checkpoint=stem)
    assert ran == list(range(3, 9))                 # only the shards not saved are run
    assert_identical(full, resumed)
    again = sample(spec, X2, 210, seed=5, progress=False, checkpoint=stem)   # complete: no work
    assert ran == list(range(3, 9))
    assert_identical(full, again)


def test_checkpoint_stopped_between_its_two_files_resumes_exactly(small_shards, tmp_path,
                                                                   monkeypatch):
    """A stop between writing STEM.npz and STEM.json leaves new block sums beside an old record:
    the npz's own record says how many shards its sums hold, so none is merged twice."""
    spec = MLP(3, 6, "tanh", C_b=0.1, C_W=1.2)
    full = sample(spec, X2, 210, seed=5, progress=False)
    stem = tmp_path / "run"
    _stop_run(spec, stem, monkeypatch, 3)
    old = (tmp_path / "run.json").read_text()
    _stop_run(spec, stem, monkeypatch, 5)
    (tmp_path / "run.json").write_text(old)          # as if stopped before the json's rename
    assert json.loads(old)["shards_done"] == 3
    ran = _shards_run(monkeypatch)
    resumed = sample(spec, X2, 210, seed=5, progress=False, checkpoint=stem)
    assert ran == list(range(5, 9))
    assert_identical(full, resumed)


def test_checkpoint_refuses_other_parameters(small_shards, tmp_path, monkeypatch):
    spec = MLP(3, 6, "tanh", C_b=0.1, C_W=1.2)
    stem = tmp_path / "run"
    monkeypatch.setattr(distributed, "_stop_after", 2)
    with pytest.raises(MonteCarloError, match="stopped"):
        sample(spec, X2, 200, seed=5, progress=False, checkpoint=stem)
    monkeypatch.setattr(distributed, "_stop_after", None)
    with pytest.raises(MonteCarloError, match=r"other parameters \(different: seed\).*another"):
        sample(spec, X2, 200, seed=6, progress=False, checkpoint=stem)
    with pytest.raises(MonteCarloError, match=r"different: dtype"):
        sample(spec, X2, 200, seed=5, progress=False, checkpoint=stem, dtype="float32")
    with pytest.raises(MonteCarloError, match=r"different: spec"):
        sample(MLP(3, 6, "tanh", C_b=0.1, C_W=1.3), X2, 200, seed=5, progress=False,
               checkpoint=stem)
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(MonteCarloError, match="cannot be read"):
        sample(spec, X2, 200, seed=5, progress=False, checkpoint=stem)


def test_checkpoint_with_damaged_files_says_so(small_shards, tmp_path, monkeypatch):
    """A truncated STEM.npz (a broken zip) and a STEM.json whose parameters are not a table
    are refused with a MonteCarloError naming the file, not a traceback."""
    spec = MLP(3, 6, "tanh", C_b=0.1, C_W=1.2)
    stem = tmp_path / "run"
    monkeypatch.setattr(distributed, "_stop_after", 2)
    with pytest.raises(MonteCarloError, match="stopped"):
        sample(spec, X2, 200, seed=5, progress=False, checkpoint=stem)
    monkeypatch.setattr(distributed, "_stop_after", None)
    npz = tmp_path / "run.npz"
    npz.write_bytes(npz.read_bytes()[:200])
    with pytest.raises(MonteCarloError, match=r"run\.npz' cannot be read.*delete"):
        sample(spec, X2, 200, seed=5, progress=False, checkpoint=stem)
    meta = json.loads((tmp_path / "run.json").read_text())
    (tmp_path / "run.json").write_text(json.dumps({**meta, "params": [1, 2]}))
    with pytest.raises(MonteCarloError, match=r"run\.json' cannot be read"):
        sample(spec, X2, 200, seed=5, progress=False, checkpoint=stem)


# -- float32 ------------------------------------------------------------------------------------

def test_float32_agrees_with_float64_within_errors():
    """The same networks (drawn in float64), the forward pass in float32, statistics in
    float64: every estimate, the connected ones (V, A, B, D, F) included, is within a small
    fraction of its error bar of float64's — rounding is far below the sampling noise."""
    spec = MLP(4, 48, "tanh", C_b=0.1, C_W=1.5, lambda_b=0.5, lambda_W=1.2)
    a = sample(spec, X2, 200, seed=2, progress=False)
    b = sample(spec, X2, 200, seed=2, progress=False, dtype="float32")
    worst = 0.0
    for l in range(2, 5):
        for k in ("G", "V", "Theta", "A", "B", "D", "F"):
            x, y, e = getattr(a.layers[l], k), getattr(b.layers[l], k), getattr(a.layers[l], k + "_err")
            assert not np.array_equal(x, y), (l, k)          # float32 did run
            worst = max(worst, float(np.max(np.abs(x - y) / e)))
    assert worst < 0.05, worst


def test_float32_overflow_says_so():
    with pytest.raises(MonteCarloError, match="float32.*dtype='float64'"):
        sample(MLP(3, 20, "exp(z)", 0.0, 60.0), np.ones((1, 2)), 40, dtype="float32", ntk=False,
               progress=False)


# -- PyTorch --------------------------------------------------------------------------------------

@pytest.mark.parametrize("act", ["tanh", "relu", "erf"])
def test_torch_equals_numpy(act):
    pytest.importorskip("torch")
    spec = MLP(3, 7, act, C_b=0.1, C_W=1.3, lambda_b=0.5, lambda_W=1.2)
    a = sample(spec, X2, 60, seed=4, progress=False)
    b = sample(spec, X2, 60, seed=4, progress=False, backend="torch", device="cpu")
    # σ and σ' run as torch functions (not through numpy on the host)
    xp, comp = mc._backend("torch", "float64", "cpu"), mc._compile(spec.activation, spec.equation)
    assert xp.function(comp.g, comp.g_expr, (comp.z,), ()).__name__ == "g"
    assert xp.function(comp.dg, comp.dg_expr, (comp.z,), ()).__name__ == "g"
    for k in FIELDS:
        if getattr(a.layers[1], k) is None:
            assert all(getattr(b.layers[l], k) is None for l in b.layers)
            continue
        # the size of the statistic over all layers (layer 1's A … F are 0 up to round-off)
        scale = max(np.abs(getattr(a.layers[l], k)).max() for l in a.layers)
        for l in a.layers:
            x, y = getattr(a.layers[l], k), getattr(b.layers[l], k)
            np.testing.assert_allclose(y, x, rtol=1e-9, atol=1e-12 * scale,
                                       err_msg=f"{k}, layer {l}")


def test_torch_residual_float32_within_errors():
    pytest.importorskip("torch")
    spec = ResMLP(3, 6, "tanh", C_b=0.1, C_W=1.0, xi=1.0, gamma=0.6)
    a = sample(spec, X2, 80, seed=1, progress=False)
    b = sample(spec, X2, 80, seed=1, progress=False, backend="torch", device="cpu",
               dtype="float32")
    for k in ("G", "V", "Theta", "A"):
        scale = max(np.abs(getattr(a.layers[l], k)).max() for l in a.layers)
        for l in a.layers:     # (layer 1's A is 0 up to round-off, with no error bar)
            x, y, e = getattr(a.layers[l], k), getattr(b.layers[l], k), getattr(a.layers[l], k + "_err")
            assert np.all(np.abs(x - y) <= 0.05 * e + 1e-6 * scale), (l, k)


def test_torch_missing_says_how_to_install(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_torch(name, *a, **k):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("No module named 'torch'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    with pytest.raises(DeriveError, match=r"pip install 'derive\[torch\]'"):
        sample(MLP(2, 4, "tanh", 0.0, 1.0), X2, 40, backend="torch", progress=False)


# -- bad arguments ------------------------------------------------------------------------------

def test_bad_arguments(tmp_path):
    spec = MLP(2, 4, "tanh", 0.0, 1.0)
    cases = [
        (dict(dtype="float16"), r"dtype must be one of \['float64', 'float32'\]"),
        (dict(backend="jax"), r"backend must be one of \['numpy', 'torch'\]"),
        (dict(device="cuda"), "needs backend='torch'"),
        (dict(workers=0), "workers must be a whole number ≥ 1"),
        (dict(workers=True), "workers must be a whole number ≥ 1"),
        (dict(workers=2, scheduler="tcp://127.0.0.1:1"), "not both"),
        (dict(scheduler="__import__('os')"), "scheduler must be a Dask scheduler address"),
        (dict(checkpoint=tmp_path / "missing" / "run"), "does not exist"),
        (dict(checkpoint=3), "checkpoint must be a path"),
        (dict(seed=-1), "seed must be a whole number ≥ 0"),
    ]
    for kw, msg in cases:
        with pytest.raises(MonteCarloError, match=msg):
            sample(spec, X2, 40, progress=False, **kw)


def test_bad_torch_device():
    pytest.importorskip("torch")
    with pytest.raises(MonteCarloError, match="device='nonsense' is not usable"):
        sample(MLP(2, 4, "tanh", 0.0, 1.0), X2, 40, backend="torch", device="nonsense",
               progress=False)


def test_dask_missing_says_how_to_install(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_dask(name, globals=None, locals=None, fromlist=(), level=0):
        if level == 0 and (name == "distributed" or name.startswith(("distributed.", "dask"))):
            raise ImportError(f"No module named {name!r}")
        return real(name, globals, locals, fromlist, level)

    monkeypatch.setattr(builtins, "__import__", no_dask)
    with pytest.raises(DeriveError, match=r"pip install 'derive\[distributed\]'"):
        sample(MLP(2, 4, "tanh", 0.0, 1.0), X2, 40, workers=2, progress=False)


def test_unreachable_scheduler(monkeypatch):
    pytest.importorskip("distributed")
    monkeypatch.setattr(distributed, "_CONNECT_TIMEOUT", "1s")
    with pytest.raises(MonteCarloError, match="cannot reach the Dask scheduler"):
        sample(MLP(2, 4, "tanh", 0.0, 1.0), X2, 40, scheduler="tcp://127.0.0.1:9", progress=False)


# -- derive.check and the CLI ---------------------------------------------------------------------

@pytest.mark.slow
def test_check_passes_the_options_and_checkpoints(tmp_path):
    from derive.reality.check import CheckError, check

    spec = MLP(2, 4, "tanh", 0.1, 1.0)
    X = np.array([[1.0, 0.5]])
    a = check(spec, X, widths=(4, 6), samples=200, progress=False, checkpoint=tmp_path / "ck")
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == \
        ["width4.json", "width4.npz", "width6.json", "width6.npz"]
    b = check(spec, X, widths=(4, 6), samples=200, progress=False, checkpoint=tmp_path / "ck")
    assert [r["mc_mean"] for r in a.rows] == [r["mc_mean"] for r in b.rows]
    c = check(spec, X, widths=(4, 6), samples=200, progress=False, dtype="float32")
    np.testing.assert_allclose([r["mc_mean"] for r in c.rows], [r["mc_mean"] for r in a.rows],
                               rtol=1e-4, atol=1e-5)
    with pytest.raises(CheckError, match="dtype must be one of"):
        check(spec, X, widths=(4,), samples=200, progress=False, dtype="half")


def test_cli_check_flags(tmp_path, capsys):
    from derive.cli.main import main

    assert main(["check", "demo", "--widths", "4", "--samples", "200", "--dtype", "float32",
                 "--checkpoint", str(tmp_path / "ck"), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "ck" / "width4.npz").exists()
    assert main(["check", "demo", "--widths", "4", "--samples", "200", "--workers", "0",
                 "--out", str(tmp_path / "out2")]) == 2
    assert "--workers 0: give a whole number ≥ 1" in capsys.readouterr().err


def test_no_import_circle_between_sampler_and_runner():
    """The shard machinery sits below both the sampler and the runner: in a fresh
    interpreter, importing derive.reality.shards loads neither of them, and importing
    derive.reality.distributed does not load the sampler (which imports both)."""
    import subprocess
    import sys

    def loaded(module):
        code = (f"import sys, {module}; print(sorted(m for m in ('derive.reality.montecarlo', "
                "'derive.reality.distributed') if m in sys.modules))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True)
        return out.stdout.strip()

    assert loaded("derive.reality.shards") == "[]"
    assert loaded("derive.reality.distributed") == "['derive.reality.distributed']"
    assert loaded("derive.reality.montecarlo") == \
        "['derive.reality.distributed', 'derive.reality.montecarlo']"
    assert mc.MonteCarloError is shards.MonteCarloError and mc.BLOCKS == shards.BLOCKS
