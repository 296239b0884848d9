r"""Output directories written all at once (``derive demo``, ``derive derive``, ``derive check``).

A run never writes into ``--out`` itself.  :class:`OutputDir`

1. checks ``--out`` before any computation starts (:meth:`OutputDir.open`): it must not be
   an existing file, the current directory or one above it, and its parent must be a writable
   directory (created if missing); the entries of an existing ``--out`` are classified (see
   below) and a run that would have to be refused is refused now, not after the work;
2. stages every file of the run in a fresh directory next to ``--out`` (same parent, hence
   same filesystem: ``.NAME.tmp-PID-XXXXXXXX``), in which the caller writes
   (:meth:`OutputDir.file`, :meth:`OutputDir.write_text`);
3. on :meth:`OutputDir.commit` adds the manifest :data:`MANIFEST` (derive version, command,
   spec, and the sha256 and size of every file), flushes everything to disk and moves the
   complete set into place: ``rename(tmp, out)`` if ``--out`` does not exist, otherwise one
   atomic ``renameat2(tmp, out, RENAME_EXCHANGE)`` (Linux ≥ 3.15, through ctypes), after which
   the old set, now at the temporary name, is deleted.  Where the exchange is not available
   (another OS, a filesystem without it) two renames are used, ``out → .NAME.old-PID-…`` then
   ``tmp → out``: between them ``--out`` is briefly absent, and a run killed exactly there
   leaves the complete old set at the ``.old`` name, which the next run puts back.

So a run killed at any point leaves ``--out`` holding the complete old set or the complete new
set.  Temporary directories of killed runs (their process no longer exists) are removed by the
next run into the same ``--out``; those of a run still in progress are left alone.

**Refusing to overwrite.**  An entry of an existing ``--out`` is replaced without asking when
it is ``derive``'s: listed in the old manifest with the same sha256 (an untouched earlier
output), or byte-identical to what the run writes under that name.  Anything else — a file a
user edited since derive wrote it (say a hand-edited ``derivation.tex``), or a file derive did
not write (not in the manifest) — stops the run with an :class:`OutputError` listing them,
and nothing is written; ``force=True`` (``--force``) replaces them.  Directories, symbolic
links and other non-files derive did not write are never deleted, not even with ``--force``.

Writing is deterministic (no time stamps, sorted JSON), so the same run twice gives
byte-identical files.
"""
from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import secrets
import shutil
import stat
from pathlib import Path

from ..base.errors import DeriveError

__all__ = ["OutputDir", "OutputError", "MANIFEST", "sha256_file", "read_manifest"]

#: the manifest every run writes into its output directory
MANIFEST = "derive-manifest.json"
_FORMAT = 1
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


class OutputError(DeriveError):
    """An output directory that cannot be written, or whose files derive would not replace."""


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(directory) -> dict | None:
    """The manifest of ``directory`` as a dict, or None when absent or not derive's."""
    try:
        with open(Path(directory) / MANIFEST, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("sha256"), str) for v in files.values()):
        return None
    return data


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap the directories ``a`` and ``b`` (Linux renameat2 RENAME_EXCHANGE);
    False when the system or the filesystem cannot."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # not Linux / glibc < 2.28
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def _fsync(path: Path, directory: bool = False) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _describe(path: Path) -> str:
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return "gone"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "not a regular file"


class OutputDir:
    """The output directory of one run (see the module docstring).

    ``out`` as the user gave it; ``force`` replaces files derive would otherwise refuse to;
    ``command`` (argv), ``spec`` (a JSON-ready dict) and ``extra`` (more JSON-ready keys) go
    into the manifest; ``planned`` names the files the run expects to write, so that a file
    that can only be judged against the new content is not refused before it is known.
    Use as a context manager: the staging directory is removed if the block raises.
    """

    def __init__(self, out, *, force: bool = False, command=None, spec=None, extra=None,
                 planned=()):
        if out is None or str(out).strip() == "":
            raise OutputError("--out is empty; give a directory, e.g. --out derive-out")
        self.shown = Path(out)
        self.force = bool(force)
        self.command = [str(a) for a in command] if command is not None else None
        self.spec = spec
        self.extra = dict(extra or {})
        self.planned = tuple(planned)
        self.target = Path(os.path.realpath(os.path.abspath(out)))
        self.staging: Path | None = None
        self._names: list[str] = []
        self._prefix = "." + self.target.name[:200]

    # -- before the run -----------------------------------------------------------------------

    def _fail(self, why: str) -> OutputError:
        return OutputError(f"--out {self.shown}: {why}")

    def open(self) -> "OutputDir":
        """Check ``--out`` and create the staging directory (before the long computation)."""
        target, parent = self.target, self.target.parent
        cwd = Path(os.path.realpath(os.getcwd()))
        if target == cwd or target in cwd.parents:
            raise self._fail("is the current directory or contains it; derive replaces the whole "
                             "output directory, so give a new subdirectory, e.g. --out derive-out")
        if os.path.lexists(target) and not target.is_dir():
            raise self._fail(f"is an existing {'file' if target.is_file() else 'non-directory'}; "
                             "give a directory (derive writes several files)")
        # the parent: the nearest existing ancestor must be a directory, then create the rest
        anc = parent
        while not os.path.lexists(anc) and anc != anc.parent:
            anc = anc.parent
        if not anc.is_dir():
            raise self._fail(f"cannot create the directory: {anc} is not a directory")
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise self._fail(f"cannot create the directory {err.filename or parent}: "
                             f"{err.strerror or err}") from None
        self._clean_leftovers()
        if target.is_dir():
            self._judge(None)
        for _ in range(100):
            path = parent / f"{self._prefix}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
            try:
                os.mkdir(path)
                break
            except FileExistsError:
                continue
            except OSError as err:
                raise self._fail(f"cannot create the directory: {err.strerror or err} (derive "
                                 f"stages its files in {parent} first)") from None
        else:  # pragma: no cover
            raise self._fail(f"cannot create a temporary directory in {parent}")
        self.staging = path
        return self

    __enter__ = open

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.discard()

    def _clean_leftovers(self) -> None:
        """Remove staging directories of killed runs; put back an old set a killed fallback
        swap left aside."""
        parent = self.target.parent
        try:
            names = os.listdir(parent)
        except OSError:
            return
        for name in sorted(names):
            for kind in ("tmp", "old"):
                head = f"{self._prefix}.{kind}-"
                if not name.startswith(head):
                    continue
                pid = name[len(head):].split("-")[0]
                if not pid.isdigit() or _alive(int(pid)):
                    continue
                path = parent / name
                if kind == "old" and not os.path.lexists(self.target):
                    try:
                        os.rename(path, self.target)
                        continue
                    except OSError:
                        pass
                shutil.rmtree(path, ignore_errors=True)

    def _judge(self, new: dict | None) -> None:
        """Refuse (OutputError) if ``--out`` holds entries derive must not replace.  ``new``:
        {name: sha256} of the new set, or None before the run (then a changed file that the run
        plans to write is judged later)."""
        target = self.target
        old = read_manifest(target)
        recorded = {} if old is None else {k: v["sha256"] for k, v in old["files"].items()}
        names = set(self.planned) if new is None else set(new)
        edited, foreign, blocking, pending = [], [], [], []
        try:
            entries = sorted(os.scandir(target), key=lambda e: e.name)
        except OSError as err:
            raise self._fail(f"cannot read the directory: {err.strerror or err}") from None
        for entry in entries:
            name = entry.name
            try:
                is_file = entry.is_file(follow_symlinks=False)
            except OSError:
                is_file = False
            if not is_file:
                blocking.append(f"{name} ({_describe(Path(entry.path))})")
                continue
            if name == MANIFEST and old is not None:
                continue
            digest = None
            if name in recorded or name in names:
                try:
                    digest = sha256_file(entry.path)
                except OSError as err:
                    raise self._fail(f"cannot read {name}: {err.strerror or err}") from None
            if digest is not None and recorded.get(name) == digest:
                continue  # an untouched earlier output
            if name in recorded:
                why = f"{name} (changed since derive wrote it)"
            elif name == MANIFEST:
                why = f"{name} (not a derive manifest)"
            else:
                why = f"{name} (not in {MANIFEST}: not written by derive)"
            if name in names and new is None:
                pending.append(why)  # judged once the new content is known
            elif name in names and new.get(name) == digest:
                continue  # identical to what this run writes
            elif name in recorded:
                edited.append(why)
            else:
                foreign.append(why)
        if blocking:
            raise self._fail(f"holds {_listing(blocking)} that derive did not write and never "
                             "deletes; move them away or choose another --out")
        if (edited or foreign) and not self.force:
            # before the run, the files still to be judged are listed too: unless the run
            # happens to write exactly their content, they would be refused next
            refused = sorted(edited + foreign + pending)
            raise self._fail(f"holds {_listing(refused)}; use --force to replace them, "
                             "or choose another --out")

    # -- during the run -----------------------------------------------------------------------

    def file(self, name: str) -> Path:
        """The staging path of the output ``name`` (a plain file name), for writers that take a
        path."""
        if self.staging is None:
            raise RuntimeError("OutputDir.file() before open()")
        if not name or name != Path(name).name or name in (".", "..", MANIFEST):
            raise ValueError(f"not an output file name: {name!r}")
        if name not in self._names:
            self._names.append(name)
        return self.staging / name

    def write_text(self, name: str, text: str) -> Path:
        path = self.file(name)
        with open(path, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
        return path

    def write_bytes(self, name: str, data: bytes) -> Path:
        path = self.file(name)
        with open(path, "wb") as fh:
            fh.write(data)
        return path

    # -- after the run ------------------------------------------------------------------------

    def manifest(self, files: dict) -> dict:
        from .. import __version__

        data = {"derive_manifest": _FORMAT, "derive_version": __version__,
                "command": self.command, "spec": self.spec}
        data.update(self.extra)
        data["files"] = files
        return data

    def commit(self) -> dict:
        """Write the manifest and move the complete set into place; {name: path as shown}.
        On any failure nothing reaches ``--out`` and the staging directory is removed."""
        if self.staging is None:
            raise RuntimeError("OutputDir.commit() before open()")
        try:
            return self._commit()
        except BaseException:
            self.discard()
            raise

    def _commit(self) -> dict:
        staging = self.staging
        names = sorted(os.listdir(staging))
        files = {}
        for name in names:
            path = staging / name
            if not path.is_file() or path.is_symlink():
                raise RuntimeError(f"staged output {name} is not a regular file")
            _fsync(path)
            files[name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
        text = json.dumps(self.manifest(files), indent=1, ensure_ascii=False)
        with open(staging / MANIFEST, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        _fsync(staging, directory=True)
        target = self.target
        if target.is_dir():
            self._judge({name: rec["sha256"] for name, rec in files.items()})
            try:  # the new directory keeps the old one's permissions
                os.chmod(staging, stat.S_IMODE(os.stat(target).st_mode))
            except OSError:
                pass
        try:
            self._move_into_place()
        except OSError as err:
            raise self._fail(f"cannot move the new files into place: {err.strerror or err}") \
                from None
        _fsync(target.parent, directory=True)
        self.staging = None
        order = [n for n in self._names if n in files] + \
            [n for n in names if n not in self._names] + [MANIFEST]
        return {name: self.shown / name for name in order}

    def _move_into_place(self) -> None:
        staging, target = self.staging, self.target
        if not os.path.lexists(target):
            try:
                os.rename(staging, target)
                return
            except OSError as err:
                if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                raise self._fail("appeared while derive was writing (another run into the same "
                                 "directory?); run again") from None
        if _exchange(staging, target):
            # staging now holds the old set
            shutil.rmtree(staging, ignore_errors=True)
            return
        # fallback without an atomic exchange: --out is absent between the two renames; a run
        # killed there leaves the old set at .NAME.old-PID-…, which the next run puts back
        aside = target.parent / f"{self._prefix}.old-{os.getpid()}-{secrets.token_hex(4)}"
        os.rename(target, aside)
        try:
            os.rename(staging, target)
        except OSError:
            os.rename(aside, target)
            raise
        shutil.rmtree(aside, ignore_errors=True)

    def discard(self) -> None:
        """Remove the staging directory (nothing of this run reaches ``--out``)."""
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None


def _listing(items: list, limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")
