"""Progress and checkpoints of derive.reality.training.train_ensemble (issue 17 part 4):
a run stopped after a chunk and resumed from its checkpoint gives the uninterrupted run's
result bit for bit; checkpoints of other runs and damaged files are refused with a
DeriveError; check_train and `derive check --train --checkpoint DIR` keep one per width."""
import json

import numpy as np
import pytest

import derive
from derive import DeriveError
from derive.cli.main import main
from derive.reality import distributed
from derive.reality import training
from derive.reality.montecarlo import sample
from derive.reality.training import train_ensemble

XA = np.array([[0.8, -0.5, 1.2], [0.1, 0.9, -0.4]])
YA = np.array([0.5, -0.3])
XB = np.array([[-0.6, 0.4, 0.7]])
SPEC = derive.MLP(2, 8, "tanh", 0.1, 1.2, lambda_b=0.6, lambda_W=1.2)
ARGS = (SPEC, XA, YA, XB, 0.3, 4, 40)


class Stop(Exception):
    pass


@pytest.fixture
def chunks(monkeypatch):
    """Chunks of 5 networks at these sizes (8 chunks for 40 networks)."""
    per = (3 * 8 + 8 + 8 * 1 + 1) * 2 + 6 * 3 * (3 + 8 + 1)    # numbers held per network
    monkeypatch.setattr(training, "CHUNK_NUMBERS", 5 * per)
    assert training._chunk([3, 8, 1], 3, 40) == 5


def identical(a, b):
    return (a.times == b.times and np.array_equal(a.z, b.z) and np.array_equal(a.ntk, b.ntk)
            and a.n_networks == b.n_networks)


def stop_after(k):
    def progress(done, total):
        if done >= k:
            raise Stop(done)
    return progress


def test_resume_after_an_interruption_is_bit_identical(chunks, tmp_path, monkeypatch):
    full = train_ensemble(*ARGS, seed=3)
    stem = tmp_path / "run"
    with pytest.raises(Stop):
        train_ensemble(*ARGS, seed=3, progress=stop_after(5), checkpoint=stem)
    meta = json.loads((tmp_path / "run.json").read_text())
    assert meta["networks_done"] == 5 and meta["params"]["chunk"] == 5
    with np.load(tmp_path / "run.npz") as data:
        assert data["z"].shape[0] == 5 and np.array_equal(data["ntk"], full.ntk[:5])
    calls = []
    resumed = train_ensemble(*ARGS, seed=3, progress=lambda d, t: calls.append((d, t)),
                             checkpoint=stem)
    assert calls == [(d, 40) for d in range(10, 41, 5)]      # only the chunks not saved
    assert identical(full, resumed)
    assert json.loads((tmp_path / "run.json").read_text())["networks_done"] == 40
    calls.clear()
    again = train_ensemble(*ARGS, seed=3, progress=lambda d, t: calls.append(d), checkpoint=stem)
    assert calls == [] and identical(full, again)             # a finished run: only read


def test_saves_while_running_and_resumes_twice(chunks, tmp_path, monkeypatch):
    """Saved after every chunk (no wait between saves), stopped twice, resumed: the same."""
    monkeypatch.setattr(distributed, "_SAVE_EVERY", -1.0)
    full = train_ensemble(*ARGS, seed=4, times=[0, 1, 4])
    stem = str(tmp_path / "run")
    for k in (10, 25):
        with pytest.raises(Stop):
            train_ensemble(*ARGS, seed=4, times=[0, 1, 4], progress=stop_after(k),
                           checkpoint=stem)
        assert json.loads((tmp_path / "run.json").read_text())["networks_done"] == k
    assert identical(full, train_ensemble(*ARGS, seed=4, times=[0, 1, 4], checkpoint=stem))


def test_without_the_new_arguments_nothing_changes(chunks, tmp_path):
    a = train_ensemble(*ARGS, seed=2)
    b = train_ensemble(*ARGS, seed=2, progress=False, checkpoint=None)
    c = train_ensemble(*ARGS, seed=2, checkpoint=tmp_path / "c")
    assert identical(a, b) and identical(a, c)
    assert not np.array_equal(a.z, train_ensemble(*ARGS, seed=5).z)


def test_progress_counts_up_and_prints_lines(chunks, capsys):
    calls = []
    train_ensemble(*ARGS, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(d, 40) for d in range(5, 41, 5)]
    train_ensemble(*ARGS, progress=True)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 8 and err[0].startswith("train_ensemble: 5/40 networks")
    assert "elapsed" in err[-1] and "40/40 networks" in err[-1]


def test_other_arguments_are_refused(chunks, tmp_path):
    stem = tmp_path / "run"
    with pytest.raises(Stop):
        train_ensemble(*ARGS, seed=3, progress=stop_after(5), checkpoint=stem)
    cases = [(dict(seed=4), "seed"),
             (dict(args=(SPEC, XA, YA, XB, 0.31, 4, 40)), "eta"),
             (dict(args=(SPEC, XA, YA, XB, 0.3, 5, 40)), "steps"),
             (dict(args=(SPEC, XA, YA, XB, 0.3, 4, 41)), "n_networks"),
             (dict(args=(SPEC, XA, YA + 0.1, XB, 0.3, 4, 40)), "y_train"),
             (dict(args=(SPEC.with_widths(9), XA, YA, XB, 0.3, 4, 40)), "spec"),
             (dict(times=[0, 4]), "times")]
    for kw, name in cases:
        args = kw.pop("args", ARGS)
        kw.setdefault("seed", 3)
        with pytest.raises(DeriveError, match=rf"other parameters \(different: [a-z_, ]*{name}"
                                              r".*another checkpoint path \(or delete it\)"):
            train_ensemble(*args, checkpoint=stem, **kw)
    # the Monte Carlo of derive.check refuses it as well (and the other way round)
    with pytest.raises(DeriveError, match="other parameters"):
        sample(SPEC, XA, 200, checkpoint=stem, progress=False)


def test_damaged_checkpoints_are_refused(chunks, tmp_path):
    stem = tmp_path / "run"
    with pytest.raises(Stop):
        train_ensemble(*ARGS, progress=stop_after(10), checkpoint=stem)
    jpath, npath = tmp_path / "run.json", tmp_path / "run.npz"
    good_json, good_npz = jpath.read_text(), npath.read_bytes()
    npath.write_bytes(good_npz[:100])
    with pytest.raises(DeriveError, match=r"run\.npz' cannot be read.*delete"):
        train_ensemble(*ARGS, checkpoint=stem)
    npath.unlink()
    with pytest.raises(DeriveError, match=r"run\.npz' cannot be read"):
        train_ensemble(*ARGS, checkpoint=stem)
    npath.write_bytes(good_npz)
    meta = json.loads(good_json)
    for bad in ("{not json", json.dumps({**meta, "networks_done": 7}),
                json.dumps({**meta, "networks_done": 45}),
                json.dumps({**meta, "rng": {"bit_generator": "PCG64"}}),
                json.dumps({k: v for k, v in meta.items() if k != "rng"})):
        jpath.write_text(bad)
        with pytest.raises(DeriveError, match=r"run\.json' cannot be (read|resumed).*delete"):
            train_ensemble(*ARGS, checkpoint=stem)
    # arrays of the wrong shape
    jpath.write_text(good_json)
    np.savez(npath, z=np.zeros((10, 3)), ntk=np.zeros((10, 3)))
    with pytest.raises(DeriveError, match="cannot be resumed.*shapes"):
        train_ensemble(*ARGS, checkpoint=stem)


def test_bad_arguments(tmp_path):
    for bad in (3, True, "", b"x"):
        with pytest.raises(DeriveError, match="checkpoint must be a path"):
            train_ensemble(*ARGS, checkpoint=bad)
    with pytest.raises(DeriveError, match="folder .* does not exist"):
        train_ensemble(*ARGS, checkpoint=tmp_path / "no" / "run")
    for bad in ("yes", 2, [1]):
        with pytest.raises(DeriveError, match="progress must be None, True/False .* callable"):
            train_ensemble(*ARGS, progress=bad)
    for seed in (None, 1.5, np.random.SeedSequence(1)):
        with pytest.raises(DeriveError, match="whole number seed"):
            train_ensemble(*ARGS, seed=seed, checkpoint=tmp_path / "run")
    assert not list(tmp_path.iterdir())


def test_check_train_keeps_one_checkpoint_per_width(tmp_path, monkeypatch):
    spec = derive.MLP(2, 8, "erf", 0.1, 0.9)
    args = (spec, XA, YA, XB, 0.5, 2)
    kw = dict(widths=[8, 16], samples=100, seed=1)
    plain = derive.check_train(*args, **kw)
    folder = tmp_path / "ck"
    first = derive.check_train(*args, **kw, checkpoint=folder)
    assert sorted(p.name for p in folder.iterdir()) == [
        "width16.json", "width16.npz", "width8.json", "width8.npz"]
    # resumed from the finished checkpoints: no network trained again
    monkeypatch.setattr(distributed, "_write", lambda *a: pytest.fail("trained again"))
    again = derive.check_train(*args, **kw, checkpoint=folder)
    assert first.rows == plain.rows == again.rows
    with pytest.raises(DeriveError, match="checkpoint must be a folder path"):
        derive.check_train(*args, **kw, checkpoint=3)


def test_cli_train_checkpoint(tmp_path, capsys):
    spec = tmp_path / "s.toml"
    spec.write_text('activation = "erf"\ndepth = 2\nwidths = 16\nC_b = 0.1\nC_W = 0.9\n'
                    'inputs = [[0.8, -0.5, 1.2], [0.1, 0.9, -0.4]]\n'
                    'train = { targets = [0.5, -0.3], test_inputs = [[-0.6, 0.4, 0.7]], '
                    'eta = 0.5, steps = 2 }\n')
    ck = tmp_path / "ck"
    cmd = ["check", str(spec), "--train", "--widths", "8,16", "--samples", "100",
           "--checkpoint", str(ck)]
    assert main(cmd + ["--out", str(tmp_path / "a")]) == 0
    assert sorted(p.name for p in ck.iterdir()) == [
        "width16.json", "width16.npz", "width8.json", "width8.npz"]
    assert json.loads((ck / "width8.json").read_text())["networks_done"] == 100
    first = (tmp_path / "a" / "train_check.csv").read_text()
    err = capsys.readouterr().err
    assert "train_ensemble: 100/100 networks" in err
    assert main(cmd + ["--out", str(tmp_path / "b")]) == 0           # resumed: finished
    assert "width8.json holds 100/100 networks" in capsys.readouterr().err
    assert (tmp_path / "b" / "train_check.csv").read_text() == first
    # other arguments with the same checkpoint: refused, saying what differs
    assert main(["check", str(spec), "--train", "--widths", "8,16", "--samples", "100",
                 "--seed", "2", "--checkpoint", str(ck), "--out", str(tmp_path / "c")]) != 0
    assert "different: seed" in capsys.readouterr().err
