"""The command line: the main job runs; every failure is one line on stderr with exit status 2
(Ctrl-C 130, a closed output pipe quiet); spec files are validated; outputs are written safely
(staged, swapped in whole, never replacing a user's files without --force)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import derive
from derive.cli.main import main
from derive.cli.outputs import MANIFEST, read_manifest, sha256_file

CLI = [sys.executable, "-m", "derive.cli.main"]
ENV = {**os.environ, "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"}


def _one_error_line(err: str, command: str, kind: str = "error") -> str:
    # progress lines of predict may come first; the failure itself is one line, the last
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("predict: ")]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"derive {command}: {kind}: "), err
    assert "Traceback" not in err
    return lines[0]


def _toml(tmp_path, text: str, name: str = "net.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


SMALL = 'activation = "relu"\ndepth = 2\nwidths = 512\nC_W = 2.0\ninputs = [[1.0, 0.5]]\n'


# -- commands that work ---------------------------------------------------------------------------

def test_wick_and_expect(capsys):
    assert main(["wick", "z[i,a]*z[j,b]", "--trace"]) == 0
    out = capsys.readouterr().out
    assert "KroneckerDelta(i, j)*K[a, b]" in out
    assert main(["expect", "erf(z1)*erf(z2)", "--K", "1,0.5;0.5,1"]) == 0
    assert "0.2163468959387" in capsys.readouterr().out  # (2/π) asin(1/3)


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"derive {derive.__version__}"


def test_predict_targets_and_tol(tmp_path, capsys, monkeypatch):
    import derive.numeric.prediction as prediction

    spec = _toml(tmp_path, 'activation = "erf"\ndepth = 2\nwidths = 5\n'
                           'inputs = [[1.0, 0.5], [0.2, -1.0]]\n')
    assert main(["predict", spec, "--targets", "K", "Theta", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["derive_version"] == derive.__version__
    assert "Theta" in data["layers"][1] and "V" not in data["layers"][1]
    assert "G1" not in data["layers"][1]
    # --tol reaches derive.predict only when given (works with and without a tol keyword)
    calls = []
    real = prediction.predict

    def with_tol(*a, tol=None, **k):
        calls.append((tol, k["targets"], k["order"]))
        return real(*a, **k)

    monkeypatch.setattr(prediction, "predict", with_tol)
    assert main(["predict", spec, "--targets", "K", "--tol", "1e-9"]) == 0
    assert calls[-1] == (1e-9, ("K",), 0)  # the order follows the targets
    assert main(["predict", spec, "--targets", "G1"]) == 0
    assert calls[-1] == (None, ("G1",), 1)
    out = capsys.readouterr().out
    assert "metric K + G1/n" in out and "Theta" not in out

    def without_tol(*a, **k):
        calls.append(("no tol", k["targets"]))
        return real(*a, **k)

    monkeypatch.setattr(prediction, "predict", without_tol)
    assert main(["predict", spec]) == 0
    assert calls[-1] == ("no tol", ("K", "V", "G1", "Theta"))


# -- one line, exit 2 ---------------------------------------------------------------------------

def test_errors_are_one_line(capsys):
    assert main(["wick", "z[a,i]"]) == 2
    assert "neuron slot" in _one_error_line(capsys.readouterr().err, "wick")
    assert main(["expect", "tanh(z1)*foo(z2)", "--K", "1"]) == 2
    line = _one_error_line(capsys.readouterr().err, "expect")
    assert "unknown function" in line and "foo" in line
    assert main(["expect", "tanh(z1)", "--K", "-1"]) == 2
    assert "negative variance" in _one_error_line(capsys.readouterr().err, "expect")
    assert main(["expect", "tanh(z1)", "--K", "1", "--tol", "0"]) == 2
    assert "--tol 0: give a positive finite number" in capsys.readouterr().err
    assert main([]) == 2


def test_usage_errors_keep_argparse(capsys):
    with pytest.raises(SystemExit) as info:
        main(["predict"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: derive predict") and "Traceback" not in err
    with pytest.raises(SystemExit):
        main(["predict", "x.toml", "--targets", "W"])
    assert "invalid choice: 'W'" in capsys.readouterr().err


def test_internal_errors_and_os_errors_are_one_line(capsys, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(derive, "wick", boom)
    assert main(["wick", "z[i,a]*z[j,b]"]) == 2
    line = _one_error_line(capsys.readouterr().err, "wick", "internal error")
    assert line == ("derive wick: internal error: RuntimeError: boom second line (please report; "
                    "rerun with --debug for the traceback)")
    with pytest.raises(RuntimeError):
        main(["--debug", "wick", "z[i,a]*z[j,b]"])
    with pytest.raises(RuntimeError):
        main(["wick", "z[i,a]*z[j,b]", "--debug"])

    class Wrapped(derive.DeriveError):  # what an API boundary makes of a bug
        def __init__(self, message, cause):
            super().__init__(message)
            self.cause = cause

    def wrapped(*a, **k):
        try:
            {}["missing"]
        except KeyError as exc:
            raise Wrapped("wick failed unexpectedly (KeyError: 'missing')", exc) from None

    monkeypatch.setattr(derive, "wick", wrapped)
    assert main(["wick", "z[i,a]*z[j,b]"]) == 2
    line = _one_error_line(capsys.readouterr().err, "wick", "internal error")
    assert "KeyError: 'missing'" in line and line.endswith("--debug for the traceback)")
    with pytest.raises(KeyError):  # --debug shows the cause's traceback
        main(["--debug", "wick", "z[i,a]*z[j,b]"])

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied", "/some/file")

    monkeypatch.setattr(derive, "wick", denied)
    assert main(["wick", "z[i,a]*z[j,b]"]) == 2
    assert _one_error_line(capsys.readouterr().err, "wick") == \
        "derive wick: error: /some/file: Permission denied"

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(derive, "wick", interrupted)
    assert main(["wick", "z[i,a]*z[j,b]"]) == 130
    assert capsys.readouterr().err == "derive wick: interrupted\n"


def test_debug_shows_the_traceback():
    r = subprocess.run([*CLI, "--debug", "wick", "z[a,i]"], capture_output=True, text=True,
                       timeout=120, env=ENV)
    assert r.returncode != 0 and "Traceback" in r.stderr and "neuron slot" in r.stderr
    r = subprocess.run([*CLI, "wick", "z[a,i]"], capture_output=True, text=True, timeout=120,
                       env=ENV)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    _one_error_line(r.stderr, "wick")


def test_closed_stdout_pipe_is_quiet():
    # the reader goes away before derive writes: EPIPE on the final flush
    p = subprocess.Popen([*CLI, "wick", "z[i,a]*z[j,b]", "--trace"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=ENV)
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141
    assert "Traceback" not in err and "Exception ignored" not in err and err == ""
    # `derive wick … | head -c1`: a reader that takes one byte and closes
    r = subprocess.run(" ".join([*CLI, "wick", "'z[i,a]*z[j,b]'", "--trace"]) +
                       " | " + sys.executable + " -c 'import sys; sys.stdin.buffer.read(1)'",
                       shell=True, capture_output=True, text=True, timeout=120, env=ENV)
    assert r.returncode == 0 and r.stdout == ""
    assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr


def test_ctrl_c_exits_130_and_leaves_no_partial_output(tmp_path):
    out = tmp_path / "demo"
    p = subprocess.Popen([*CLI, "demo", "--out", str(out)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=ENV)
    time.sleep(2.0)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    if p.returncode == 0:  # pragma: no cover - a very fast machine finished first
        _complete(out)
        return
    assert p.returncode == 130, err
    assert err.strip().splitlines()[-1] == "derive demo: interrupted" and "Traceback" not in err
    assert not out.exists() or _complete(out)
    assert not [q for q in tmp_path.iterdir() if q.name.startswith(".demo.")]


# -- spec files -----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ('inputs = [[1.0, 2.0], [3.0]]', "inputs is ragged (row 1 has 2 entries, row 2 has 1)"),
    ('inputs = [[1.0, "x"]]', "inputs row 1 entry 2 is a string 'x'; write a number"),
    ('inputs = [[1.0, true]]', "inputs row 1 entry 2 is a boolean"),
    ('inputs = []', "inputs is empty"),
    ('inputs = [1.0, 2.0]', "inputs must be a list of rows (a 2-D array), but entry 1"),
    ('inputs = [[[1.0]]]', "inputs must be 2-D"),
    ('inputs = [[1.0, nan]]', "inputs row 1 entry 2 is nan"),
    ('inputs = [[1.0, inf]]', "must be a finite number"),
    ('inputs = [[1e200]]', "inputs are too large"),
    ('inputs = "1, 2"', "inputs must be a list of rows"),
    ('input_gram = [[1.0, 0.3], [0.3]]', "input_gram is ragged"),
    ('input_gram = [[1.0, 0.3]]', "input_gram must be a symmetric N × N matrix"),
    ('input_gram = [[1.0, 2.0], [2.0, 1.0]]', "not positive semi-definite"),
    ('inputs = [[1.0]]\ntargets = 5', "targets must be a list of names"),
    ('inputs = [[1.0]]\ntargets = "K"', 'write targets = ["K"]'),
    ('inputs = [[1.0]]\ntargets = ["K", "W"]', "unknown target(s) ['W']; known targets are K, Theta, G1, V, H1"),
    ('inputs = [[1.0]]\ntargets = []', "targets is empty"),
    ('inputs = [[1.0]]\ntargets = [1]', "targets must be names"),
    ('inputs = [[1.0]]\norder = 3', "order must be 0 (leading order), 1"),
    ('inputs = [[1.0]]\norder = true', "order must be 0 (leading order), 1"),
    ('inputs = [[1.0]]\norder = 1.0', "order must be 0"),
])
def test_spec_values_are_checked(tmp_path, capsys, text, expected):
    spec = _toml(tmp_path, 'activation = "tanh"\ndepth = 2\n' + text + "\n")
    assert main(["predict", spec]) == 2
    line = _one_error_line(capsys.readouterr().err, "predict")
    assert expected in line and spec in line


@pytest.mark.parametrize("text, expected", [
    ('activation = "tanh"\ndepth = 1000000000', "depth = 1000000000 is outside 1 … 10000"),
    ('activation = "tanh"\ndepth = 0', "outside 1 … 10000"),
    ('activation = "tanh"\ndepth = 3.0', "depth must be a whole number of layers"),
    ('activation = "tanh"\ndepth = "3"', "depth must be a whole number of layers"),
    ('activation = "tanh"\ndepth = 3\nwidths = 64.0', "widths must be a whole number ≥ 1"),
    ('activation = "tanh"\ndepth = 3\nwidths = [8, "x"]', "widths entry 2 must be a whole"),
    ('activation = "tanh"\ndepth = 3\nwidths = [8]', "widths lists 1 hidden widths but"),
    ('activation = "tanh"\ndepth = 3\nwidths = true', "widths must be a whole number"),
    ('activation = 3\ndepth = 3', "activation must be a name such as"),
    ('activation = "tanh"\ndepth = 3\nC_W = "x"', "C_W of layer 1 must be a number"),
])
def test_spec_network_keys_are_checked_promptly(tmp_path, capsys, text, expected):
    spec = _toml(tmp_path, text + "\ninputs = [[1.0]]\n")
    start = time.perf_counter()
    assert main(["derive", spec, "--out", str(tmp_path / "o")]) == 2
    assert time.perf_counter() - start < 5
    assert expected in _one_error_line(capsys.readouterr().err, "derive")
    assert not (tmp_path / "o").exists()


def test_spec_file_problems(tmp_path, capsys):
    spec = _toml(tmp_path, 'activation = "erf"\ndepth = 3\nwidth = 20\ninputs = [[1.0]]\n')
    assert main(["predict", spec]) == 2
    err = capsys.readouterr().err
    assert "unknown key(s) ['width']" in err and "widths" in err
    assert main(["predict", str(tmp_path / "missing.toml")]) == 2
    assert "no spec file" in _one_error_line(capsys.readouterr().err, "predict")
    assert main(["predict", str(tmp_path)]) == 2
    assert "(it is a directory)" in capsys.readouterr().err
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe\x00")
    assert main(["predict", str(tmp_path / "bin.toml")]) == 2
    assert "not a text file" in capsys.readouterr().err
    assert main(["predict", _toml(tmp_path, "depth = [")]) == 2
    assert "is not valid TOML" in _one_error_line(capsys.readouterr().err, "predict")


# -- check: options validated before any Monte Carlo ------------------------------------------------

@pytest.mark.parametrize("args, expected", [
    (["--samples", "0"], "--samples 0: give a whole number ≥ 200 networks per width"),
    (["--samples", "199"], "--samples 199: give a whole number ≥ 200"),
    (["--samples", "many"], "--samples 'many' is not a whole number"),
    (["--seed", "-1"], "--seed -1: give a whole number ≥ 0"),
    (["--seed", "1.5"], "--seed '1.5' is not a whole number"),
    (["--widths", "0,4"], "every width must be a whole number ≥ 2"),
    (["--widths", "4,x"], "'x' is not a whole number"),
    (["--widths", ","], "is empty"),
    (["--out", "/dev/null/x"], "--out /dev/null/x: cannot create the directory"),
])
def test_check_options_are_validated(tmp_path, capsys, monkeypatch, args, expected):
    import derive.reality.check as reality

    def never(*a, **k):  # pragma: no cover - the point is that it is not reached
        raise AssertionError("the Monte Carlo started")

    monkeypatch.setattr(reality, "check", never)
    assert main(["check", "demo", "--out", str(tmp_path / "c"), *args]) == 2
    assert expected in _one_error_line(capsys.readouterr().err, "check")
    assert not (tmp_path / "c").exists()


# -- outputs ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("out, expected", [
    ("file", "--out {tmp}/file: is an existing file; give a directory"),
    ("/dev/null/x", "--out /dev/null/x: cannot create the directory: /dev/null is not a directory"),
    ("/proc/derive-x", "--out /proc/derive-x: cannot create the directory"),
])
def test_bad_out_is_refused_before_the_derivation(tmp_path, capsys, monkeypatch, out, expected):
    import derive.derivation.derivation as derivation

    def never(*a, **k):  # pragma: no cover
        raise AssertionError("the derivation started")

    monkeypatch.setattr(derivation, "derive", never)
    (tmp_path / "file").write_text("x")
    out = out.replace("file", str(tmp_path / "file"))
    assert main(["derive", _toml(tmp_path, SMALL), "--out", out]) == 2
    assert expected.format(tmp=tmp_path) in _one_error_line(capsys.readouterr().err, "derive")
    assert (tmp_path / "file").read_text() == "x"


def _complete(out: Path) -> dict:
    """{name: bytes} of ``out`` after checking it is exactly its manifest's set."""
    man = read_manifest(out)
    assert man is not None, sorted(os.listdir(out))
    assert sorted(os.listdir(out)) == sorted([*man["files"], MANIFEST])
    for name, rec in man["files"].items():
        assert sha256_file(out / name) == rec["sha256"], name
    return {p.name: p.read_bytes() for p in out.iterdir()}


def test_refuse_to_overwrite_edited_outputs(tmp_path, capsys):
    spec = _toml(tmp_path, SMALL + 'targets = ["K"]\n')
    out = tmp_path / "o"
    argv = ["derive", spec, "--out", str(out)]
    assert main(argv) == 0
    first = _complete(out)
    man = json.loads(first[MANIFEST])
    assert man["command"] == ["derive", *argv] and man["derive_version"] == derive.__version__
    assert man["spec"]["activation"] == "relu" and man["spec"]["targets"] == ["K"]
    assert man["spec"]["order"] == 0 and man["spec"]["inputs"] == [[1.0, 0.5]]
    assert sorted(man["files"]) == ["derivation.md", "derivation.tex", "evaluator.py",
                                    "plot.png", "predictions.json"]
    assert f"derive {derive.__version__}".encode() in first["plot.png"]  # PNG text fields
    assert b'"activation":"relu"' in first["plot.png"]
    # the same run again: replaced without asking, byte for byte the same
    assert main(argv) == 0
    assert _complete(out) == first
    # a hand-edited derivation.tex stops the run, nothing is written
    (out / "derivation.tex").write_text(first["derivation.tex"].decode() + "% my note\n")
    edited = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert main(argv) == 2
    line = _one_error_line(capsys.readouterr().err, "derive")
    assert "derivation.tex (changed since derive wrote it)" in line
    assert "use --force to replace them, or choose another --out" in line
    assert {p.name: p.read_bytes() for p in out.iterdir()} == edited
    # a file derive did not write is refused before the derivation starts
    (out / "notes.txt").write_text("mine")
    assert main(argv) == 2
    assert "notes.txt (not in derive-manifest.json" in capsys.readouterr().err
    # --force replaces them
    assert main([*argv, "--force"]) == 0
    files = _complete(out)
    assert files["derivation.tex"] == first["derivation.tex"] and "notes.txt" not in files
    assert not [q for q in tmp_path.iterdir() if q.name.startswith(".o.")]


@pytest.mark.slow
def test_demo_outputs_are_deterministic(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "a")]) == 0
    text = capsys.readouterr().out
    for name in ("derivation.tex", "derivation.md", "evaluator.py", "predictions.json", "plot.png",
                 MANIFEST):
        assert str(tmp_path / "a" / name) in text
    shutil.move(tmp_path / "a", tmp_path / "b")
    assert main(["demo", "--out", str(tmp_path / "a")]) == 0
    assert _complete(tmp_path / "a") == _complete(tmp_path / "b")


@pytest.mark.slow
def test_check_writes_safely(tmp_path, capsys):
    spec = _toml(tmp_path, 'activation = "erf"\ndepth = 3\nwidths = 4\nC_W = 0.9\n'
                           'inputs = [[1.0, 0.5]]\n')
    argv = ["check", spec, "--widths", "4,8", "--samples", "400", "--seed", "3",
            "--out", str(tmp_path / "c")]
    assert main(argv) == 0
    first = _complete(tmp_path / "c")
    assert {"check.csv", "check_fits.csv", "check.png"} <= set(first)
    man = json.loads(first[MANIFEST])
    assert man["check"] == {"widths": [4, 8], "samples": 400, "seed": 3, "ntk": False}
    assert man["spec"]["activation"] == "erf" and "targets" not in man["spec"]
    assert main(argv) == 0
    assert _complete(tmp_path / "c") == first  # Monte Carlo, CSV and PNG byte-identical
    (tmp_path / "c" / "check.csv").write_text("edited")
    assert main(argv) == 2
    assert "check.csv (changed since derive wrote it)" in capsys.readouterr().err
    assert (tmp_path / "c" / "check.csv").read_text() == "edited"


def test_check_reads_the_spec_files_order(tmp_path):
    """The spec file's 'order' key sets derive check's order (it was ignored); --order wins."""
    spec = _toml(tmp_path, 'activation = "erf"\ndepth = 2\nwidths = 4\nC_W = 0.9\n'
                           'inputs = [[1.0, 0.5]]\norder = 0\n')
    for extra, want in (([], 0), (["--order", "1"], 1)):
        out = tmp_path / f"c{want}"
        assert main(["check", spec, "--widths", "4,8", "--samples", "200", "--out", str(out),
                     *extra]) == 0
        assert json.loads(_complete(out)[MANIFEST])["check"]["order"] == want


@pytest.mark.slow
def test_check_ntk(tmp_path, capsys):
    spec = _toml(tmp_path, 'activation = "tanh"\ndepth = 3\nwidths = 4\nC_W = 1.2\n'
                           'lambda_b = 0.5\ninputs = [[1.0, 0.5]]\n')
    argv = ["check", spec, "--widths", "6,12", "--samples", "400", "--ntk",
            "--out", str(tmp_path / "c")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    for q in ("ntk", "A", "B", "D", "F"):
        assert any(line.startswith(f"{q} ") for line in out.splitlines()), q
    rows = (tmp_path / "c" / "check_fits.csv").read_text()
    assert "\nntk,11,3," in rows and "\nF,(11)(11),3," in rows
    assert json.loads(_complete(tmp_path / "c")[MANIFEST])["check"]["ntk"] is True


# -- a run killed part-way --------------------------------------------------------------------------

def _kill_when(cmd, parent: Path, prefix: str, trigger, timeout: float = 120):
    """Run ``cmd``; SIGKILL it when ``trigger`` (a delay in seconds, or the name of a file that
    appears in the run's staging directory) happens.  Returns what was seen."""
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    prefix = f"{prefix}{p.pid}-"  # this run's staging directory, not a killed run's leftover
    start = time.perf_counter()
    try:
        while p.poll() is None and time.perf_counter() - start < timeout:
            if isinstance(trigger, float):
                if time.perf_counter() - start >= trigger:
                    break
                time.sleep(0.01)
                continue
            if any((d / trigger).exists() for d in parent.glob(prefix + "*")):
                break
            time.sleep(0.001)
        finished = p.poll() is not None
        p.kill()
    finally:
        p.wait()
    return "finished" if finished else "killed"


@pytest.mark.slow
def test_killed_runs_leave_the_old_or_the_new_set(tmp_path):
    out = tmp_path / "D"
    r = subprocess.run([*CLI, "demo", "--out", str(out)], capture_output=True, text=True,
                       timeout=300, env=ENV)
    assert r.returncode == 0, r.stderr
    old = _complete(out)
    backup = tmp_path / "old"
    shutil.copytree(out, backup)
    spec = _toml(tmp_path, 'activation = "relu"\ndepth = 3\nwidths = 16\nC_W = 2.0\n'
                           'inputs = [[1.0, -0.5]]\n')
    cmd = [*CLI, "derive", spec, "--out", str(out), "--force"]
    # the phases of the run: the staging directory holds these files in turn; and delays
    triggers = [0.5, 1.5, "derivation.tex", "evaluator.py", "predictions.json", "plot.png",
                MANIFEST, 3.0]
    outcomes = []
    for trigger in triggers:
        seen = _kill_when(cmd, tmp_path, ".D.tmp-", trigger)
        files = _complete(out)
        new = files != old
        if new:  # the complete new set: a relu spec, not the demo's
            assert json.loads(files[MANIFEST])["spec"]["activation"] == "relu"
            shutil.rmtree(out)
            shutil.copytree(backup, out)
        outcomes.append((trigger, seen, "new" if new else "old"))
    # killed before the swap the old set stays; after it (or finished) the new one is there
    assert ("derivation.tex", "killed", "old") in outcomes, outcomes
    # the next run tidies up what the killed ones left next to D
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ENV)
    assert r.returncode == 0, r.stderr
    assert json.loads(_complete(out)[MANIFEST])["spec"]["activation"] == "relu"
    assert not [q.name for q in tmp_path.iterdir() if q.name.startswith(".D.")]


def test_check_failing_part_way_writes_the_partial_set(tmp_path, capsys, fail_at_second_width):
    spec = _toml(tmp_path, 'activation = "tanh"\ndepth = 3\nwidths = 4\ninputs = [[1.0, 0.5]]\n')
    assert main(["check", spec, "--widths", "4,8", "--samples", "400",
                 "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("derive check: error: width 8: layer 3: preactivations overflowed")
    assert err[-1].endswith("(partial results written above)") and "Traceback" not in "".join(err)
    files = _complete(tmp_path / "c")
    assert "stopped early: width 8" in json.loads(files[MANIFEST])["partial"]
    assert b",4," in files["check.csv"] and b",8," not in files["check.csv"]
