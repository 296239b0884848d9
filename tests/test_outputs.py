"""derive.cli.outputs: output directories staged next to --out and moved into place all at once,
with a manifest, refusing to overwrite files a user edited or derive did not write."""
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from derive.cli import outputs
from derive.base.errors import DeriveError
from derive.cli.outputs import MANIFEST, OutputDir, OutputError, read_manifest, sha256_file


def _run(out, files, **kw):
    """Stage ``files`` ({name: text}) into ``out`` and commit; returns {name: path}."""
    with OutputDir(out, planned=tuple(files), **kw) as od:
        for name, text in files.items():
            od.write_text(name, text)
        return od.commit()


def _leftovers(parent: Path, name: str):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _consistent(out: Path) -> dict:
    """The files of ``out`` ({name: bytes}) after checking they are exactly the manifest's set
    with the recorded hashes."""
    man = read_manifest(out)
    assert man is not None
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([*man["files"], MANIFEST])
    for name, rec in man["files"].items():
        assert sha256_file(out / name) == rec["sha256"], name
    return {n: (out / n).read_bytes() for n in names}


def test_fresh_directory_gets_files_and_manifest(tmp_path):
    out = tmp_path / "a" / "b" / "out"  # missing parents are created
    written = _run(out, {"x.txt": "one\n", "y.txt": "two\n"}, command=["derive", "demo"],
                   spec={"depth": 3}, extra={"note": "n"})
    assert list(written) == ["x.txt", "y.txt", MANIFEST]
    assert written["x.txt"] == out / "x.txt"
    files = _consistent(out)
    assert files["x.txt"] == b"one\n"
    man = json.loads(files[MANIFEST])
    import derive

    assert man["derive_version"] == derive.__version__
    assert man["command"] == ["derive", "demo"] and man["spec"] == {"depth": 3}
    assert man["note"] == "n" and man["files"]["y.txt"]["bytes"] == 4
    assert _leftovers(out.parent, "out") == []


def test_same_run_twice_is_byte_identical(tmp_path):
    _run(tmp_path / "o1", {"x.txt": "one\n"}, command=["c"], spec={"a": [1.0, 2.5]})
    _run(tmp_path / "o2", {"x.txt": "one\n"}, command=["c"], spec={"a": [1.0, 2.5]})
    for name in ("x.txt", MANIFEST):
        assert (tmp_path / "o1" / name).read_bytes() == (tmp_path / "o2" / name).read_bytes()


def test_untouched_outputs_are_replaced_and_stale_ones_removed(tmp_path):
    out = tmp_path / "out"
    _run(out, {"x.txt": "old\n", "gone.txt": "old\n"})
    _run(out, {"x.txt": "new\n"})
    assert _consistent(out) == {"x.txt": b"new\n", MANIFEST: (out / MANIFEST).read_bytes()}
    assert _leftovers(tmp_path, "out") == []


def test_edited_output_is_refused_before_and_after_the_run(tmp_path):
    out = tmp_path / "out"
    _run(out, {"derivation.tex": "old\n", "other.txt": "old\n"})
    (out / "derivation.tex").write_text("my edits\n")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    # a planned file is judged against the new content: refused at commit, nothing written
    with pytest.raises(OutputError, match=r"derivation.tex \(changed since derive wrote it\).*"
                                          r"use --force to replace them, or choose another --out"):
        _run(out, {"derivation.tex": "new\n"})
    # not planned: refused when the directory is opened, before any work
    with pytest.raises(OutputError, match="derivation.tex"):
        OutputDir(out, planned=("other.txt",)).open()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert _leftovers(tmp_path, "out") == []
    # content identical to what the run writes is fine (nothing would be lost)
    _run(out, {"derivation.tex": "my edits\n", "other.txt": "x\n"})
    (out / "derivation.tex").write_text("edited again\n")
    _run(out, {"derivation.tex": "new\n"}, force=True)
    assert (out / "derivation.tex").read_text() == "new\n"


def test_foreign_files_are_refused_unless_forced(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "x.txt").write_text("an older x")  # no manifest: not derive's
    with pytest.raises(OutputError) as info:
        OutputDir(out, planned=("x.txt",)).open()
    msg = str(info.value)
    assert "notes.txt (not in derive-manifest.json" in msg and "x.txt" in msg and "--force" in msg
    assert "\n" not in msg
    assert (out / "notes.txt").read_text() == "mine"
    _run(out, {"x.txt": "new"}, force=True)
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "x.txt"]


def test_a_broken_manifest_is_not_trusted(tmp_path):
    out = tmp_path / "out"
    _run(out, {"x.txt": "old"})
    (out / MANIFEST).write_text("{not json")
    with pytest.raises(OutputError, match="not a derive manifest"):
        _run(out, {"y.txt": "new"})


def test_directories_and_links_are_never_deleted(tmp_path):
    out = tmp_path / "out"
    _run(out, {"x.txt": "old"})
    (out / "figures").mkdir()
    with pytest.raises(OutputError, match=r"figures \(a directory\).*never deletes"):
        _run(out, {"x.txt": "new"}, force=True)
    (out / "figures").rmdir()
    (out / "link").symlink_to(tmp_path)
    with pytest.raises(OutputError, match=r"link \(a symbolic link\)"):
        _run(out, {"x.txt": "new"}, force=True)
    assert (out / "x.txt").read_text() == "old"


@pytest.mark.parametrize("bad, why", [
    ("file", "is an existing file"),
    ("/dev/null/x", "cannot create the directory: /dev/null is not a directory"),
    ("/proc/derive-test-out", "cannot create the directory"),
    (".", "is the current directory"),
    ("..", "is the current directory or contains it"),
    ("", "--out is empty"),
])
def test_unusable_out_is_refused_at_open(tmp_path, monkeypatch, bad, why):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match=why) as info:
        OutputDir(bad).open()
    assert isinstance(info.value, DeriveError) and "\n" not in str(info.value)
    assert _leftovers(tmp_path, "file") == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_parent_is_refused_at_open(tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="cannot create the directory: Permission denied"):
            OutputDir(parent / "out").open()
    finally:
        parent.chmod(0o755)


def test_an_error_in_the_run_leaves_the_old_set(tmp_path):
    out = tmp_path / "out"
    _run(out, {"x.txt": "old"})
    before = _consistent(out)
    with pytest.raises(ZeroDivisionError):
        with OutputDir(out) as od:
            od.write_text("x.txt", "half")
            1 / 0
    assert _consistent(out) == before
    assert _leftovers(tmp_path, "out") == []


def test_leftovers_of_dead_runs_are_removed_live_ones_kept(tmp_path):
    out = tmp_path / "out"
    dead = tmp_path / f".out.tmp-{_dead_pid()}-0000abcd"
    live = tmp_path / f".out.tmp-{os.getpid()}-0000abcd"
    other = tmp_path / ".out.tmp-notes"
    for d in (dead, live, other):
        d.mkdir()
        (d / "x.txt").write_text("partial")
    _run(out, {"x.txt": "new"})
    assert not dead.exists() and live.exists() and other.exists()


def test_fallback_without_exchange(tmp_path, monkeypatch):
    monkeypatch.setattr(outputs, "_exchange", lambda a, b: False)
    out = tmp_path / "out"
    _run(out, {"x.txt": "old"})
    _run(out, {"x.txt": "new"})
    assert (out / "x.txt").read_text() == "new"
    assert _leftovers(tmp_path, "out") == []
    # a run killed between the two renames left the old set aside and no --out: put back
    aside = tmp_path / f".out.old-{_dead_pid()}-0000abcd"
    out.rename(aside)
    OutputDir(out).open().discard()
    assert (out / "x.txt").read_text() == "new" and not aside.exists()


_KILLED = textwrap.dedent("""
    import os, signal, sys
    from derive.cli import outputs
    out, where = sys.argv[1], sys.argv[2]

    def die(*a, **k):
        os.kill(os.getpid(), signal.SIGKILL)

    real_rename = os.rename
    renames = []

    def rename(a, b):
        renames.append(a)
        if where == "between-renames" and len(renames) == 2:
            die()
        return real_rename(a, b)

    if where == "before-swap":
        outputs._exchange = die
    elif where == "after-swap":
        outputs.shutil.rmtree = die
    elif where == "between-renames":
        outputs._exchange = lambda a, b: False
        outputs.os.rename = rename
    with outputs.OutputDir(out) as od:
        od.write_text("x.txt", "new")
        od.write_text("y.txt", "new")
        od.commit()
""")


@pytest.mark.parametrize("where, result", [("before-swap", "old"), ("after-swap", "new"),
                                           ("between-renames", "old")])
def test_killed_in_the_commit_window(tmp_path, where, result):
    out = tmp_path / "out"
    _run(out, {"x.txt": "old", "z.txt": "old"})
    old = _consistent(out)
    r = subprocess.run([sys.executable, "-c", _KILLED, str(out), where], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert _leftovers(tmp_path, "out")  # the killed run's staging (or the old set aside)
    OutputDir(out).open().discard()  # the next run tidies up (and puts an old set back)
    assert _leftovers(tmp_path, "out") == []
    files = _consistent(out)
    if result == "old":
        assert files == old
    else:
        assert files["x.txt"] == files["y.txt"] == b"new" and "z.txt" not in files


def test_file_names_stay_inside(tmp_path):
    with OutputDir(tmp_path / "out") as od:
        for bad in ("../x", "a/b", "", MANIFEST, ".."):
            with pytest.raises(ValueError):
                od.file(bad)
        od.discard()


def test_replacement_keeps_permissions_and_a_refused_commit_cleans_up(tmp_path):
    out = tmp_path / "out"
    _run(out, {"x.txt": "old"})
    out.chmod(0o750)
    _run(out, {"x.txt": "new"})
    assert (out.stat().st_mode & 0o777) == 0o750
    (out / "x.txt").write_text("edited")
    od = OutputDir(out, planned=("x.txt",)).open()  # without `with`
    od.write_text("x.txt", "newer")
    with pytest.raises(OutputError, match="changed since derive wrote it"):
        od.commit()
    assert _leftovers(tmp_path, "out") == [] and (out / "x.txt").read_text() == "edited"
