r"""Running the shards of a Monte Carlo ensemble: here, or on Dask workers; checkpoints.

:func:`derive.reality.montecarlo.sample` splits its networks into shards of a size fixed by
the widths (:func:`~derive.reality.shards.shard_size`), shard k drawn from
``numpy.random.SeedSequence(seed).spawn(n_shards)[k]``.  :func:`run` has each shard's block
sums (:class:`~derive.reality.shards._Accumulator`) computed by the function it is given
(the sampler's ``_run_shard``) and merges them **in shard order** on the caller's side,
whoever computed them, so that

* ``workers=None`` (the shards one after the other in this process), ``workers=1``,
  ``workers=3`` or a remote ``scheduler`` give the same statistics, bit for bit;
* a checkpoint holds the merge of shards 0 … k−1 and a resumed run merges shard k onwards
  onto it: the same sums, in the same order, as a run that was never interrupted.

Dask (``pip install 'derive[distributed]'``) is used as it is: a ``LocalCluster`` of k
single-threaded worker processes for ``workers=k``, a ``Client`` for a user's scheduler; no
scheduling of our own beyond submitting one task per shard and merging in order.  Shards
that finish out of order wait in memory for the ones before them.

Checkpoint files (``checkpoint="STEM"``): ``STEM.json`` (the run's parameters, the number
of shards merged) and ``STEM.npz`` (the merged block sums), both written atomically (a
temporary file, then a rename) at most about once a second while shards complete, and when
the run ends or stops.  The npz keeps its own copy of the record, so a run stopped between
the two renames (a new npz beside the old json) resumes from what the sums hold, merging no
shard twice.  A run given an existing checkpoint resumes from it only if its
parameters are the same; otherwise it stops with a :class:`MonteCarloError` naming them.
"""
from __future__ import annotations

import json
import os
import time
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .shards import MonteCarloError, _Accumulator, _Plan, _progress

__all__ = ["run", "connect", "DASK_MISSING"]

DASK_MISSING = ("workers= and scheduler= need Dask's distributed scheduler, which is not "
                "installed: pip install 'derive[distributed]'")
#: format of the checkpoint files
_FORMAT = 1
#: seconds between checkpoint writes while shards complete
_SAVE_EVERY = 1.0
#: how long to wait for a user's scheduler to answer
_CONNECT_TIMEOUT = "10s"
#: a private hook for tests: stop (as an interruption would) once this many shards are merged
_stop_after: int | None = None


class _Stopped(MonteCarloError):
    """The run stopped early (the ``_stop_after`` hook); the checkpoint holds what was done."""


# -- checkpoints -------------------------------------------------------------------------------

def _paths(checkpoint) -> tuple:
    if isinstance(checkpoint, bool) or not isinstance(checkpoint, (str, os.PathLike)) \
            or not str(checkpoint).strip():
        raise MonteCarloError(f"checkpoint must be a path (a file name stem: STEM.npz and "
                              f"STEM.json are written), got {checkpoint!r}")
    stem = Path(checkpoint)
    if stem.suffix in (".npz", ".json"):
        stem = stem.with_suffix("")
    if not stem.parent.is_dir():
        raise MonteCarloError(f"checkpoint {str(checkpoint)!r}: the folder {str(stem.parent)!r} "
                              "does not exist; create it or give another path")
    return stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".npz")


def _read_meta(jpath: Path, want: dict, counter: str) -> tuple:
    """(the record in ``jpath``, its whole number ``counter``), or (None, 0) when there is no
    checkpoint yet.  Refuses (MonteCarloError) a file that cannot be read and the record of a
    run whose parameters are not ``want`` (JSON data), naming those that differ."""
    if not jpath.exists():
        return None, 0
    def unreadable(err):
        return MonteCarloError(f"checkpoint {str(jpath)!r} cannot be read ({err}); delete it or "
                               "give another checkpoint path")

    try:
        meta = json.loads(jpath.read_text())
        saved = meta["params"]
        if not isinstance(saved, dict):
            raise TypeError("its 'params' are not a table")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise unreadable(err) from None
    want = json.loads(json.dumps(want))
    if meta.get("format") != _FORMAT or saved != want:
        diff = sorted(k for k in set(saved) | set(want) if saved.get(k) != want.get(k))
        raise MonteCarloError(
            f"checkpoint {str(jpath)!r} belongs to a run with other parameters (different: "
            f"{', '.join(diff) or 'format'}); it is not resumed.  Give the same parameters to "
            "resume it, or another checkpoint path (or delete it) to start afresh")
    try:
        done = int(meta[counter])
        if done < 0:
            raise ValueError(f"{counter} = {done}")
    except (ValueError, KeyError, TypeError) as err:
        raise unreadable(err) from None
    return meta, done


def _read_arrays(npath: Path, jpath: Path) -> dict:
    """The arrays saved in ``npath`` {name: array}, or a MonteCarloError saying to delete both
    files when it is missing or cannot be read."""
    try:
        with np.load(npath) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise MonteCarloError(f"checkpoint {str(npath)!r} cannot be read ({err}); delete "
                              f"{str(jpath)!r} and it, or give another checkpoint path") from None


#: the name under which ``STEM.npz`` keeps its own copy of the record (:func:`_write`)
_META = "__meta__"


def _write(jpath: Path, npath: Path, arrays: dict, meta: dict) -> None:
    """``arrays`` to ``npath``, then ``meta`` (with ``format``) to ``jpath``, each written to a
    temporary file and renamed over the old one.  The npz holds a copy of ``meta`` too
    (:data:`_META`): a run stopped between the two renames leaves a new npz beside the old
    json, and the npz's own record says what its arrays hold (:func:`_arrays_record`)."""
    record = json.dumps({"format": _FORMAT, **meta}, indent=1)
    tmp = npath.with_name(npath.name + ".tmp.npz")
    np.savez(tmp, **arrays, **{_META: np.array(record)})
    os.replace(tmp, npath)
    tmp = jpath.with_name(jpath.name + ".tmp")
    tmp.write_text(record)
    os.replace(tmp, jpath)


def _arrays_record(data: dict, jpath: Path) -> dict | None:
    """The record the npz ``data`` was written with (None for files written before it kept
    one); a MonteCarloError when it cannot be read."""
    if _META not in data:
        return None
    try:
        record = json.loads(str(data[_META][()]))
        if not isinstance(record, dict):
            raise TypeError("not a table")
        return record
    except (ValueError, TypeError) as err:
        raise MonteCarloError(f"checkpoint {str(jpath.with_suffix('.npz'))!r} cannot be read "
                              f"({err}); delete {str(jpath)!r} and it, or give another "
                              "checkpoint path") from None


def _load(plan: _Plan, checkpoint) -> tuple:
    """(shards merged, {ℓ: accumulator} or None) from the checkpoint, if there is one."""
    jpath, npath = _paths(checkpoint)
    _, done = _read_meta(jpath, plan.params(), "shards_done")
    if done == 0:
        return 0, None
    data = _read_arrays(npath, jpath)
    record = _arrays_record(data, jpath)
    if record is not None:   # the arrays' own count (ahead of the json after a stop between saves)
        if record.get("params") != json.loads(json.dumps(plan.params())):
            raise MonteCarloError(f"checkpoint {str(npath)!r} belongs to a run with other "
                                  f"parameters than {str(jpath)!r}; delete both, or give another "
                                  "checkpoint path")
        try:
            done = int(record["shards_done"])
        except (KeyError, TypeError, ValueError) as err:
            raise MonteCarloError(f"checkpoint {str(npath)!r} cannot be read (no shard count: "
                                  f"{err}); delete {str(jpath)!r} and it, or give another "
                                  "checkpoint path") from None
    N = plan.X.shape[0]
    acc = {}
    for l in range(1, plan.spec.depth + 1):
        pre = f"layer{l}/"
        acc[l] = _Accumulator.from_state(
            N, plan.ntk, {k[len(pre):]: v for k, v in data.items() if k.startswith(pre)})
    return min(done, plan.n_shards), acc


def _save(plan: _Plan, checkpoint, done: int, acc: dict) -> None:
    jpath, npath = _paths(checkpoint)
    arrays = {f"layer{l}/{k}": v for l, a in acc.items() for k, v in a.state().items()}
    _write(jpath, npath, arrays,
           {"params": plan.params(), "shards_done": done, "n_shards": plan.n_shards,
            "networks_done": min(done * plan.shard, plan.n_networks)})


# -- executors ---------------------------------------------------------------------------------

def _client(workers, scheduler):
    """(client, things to close) for ``workers``/``scheduler``; (None, []) to run here."""
    if workers is None and scheduler is None:
        return None, []
    if workers is not None and (isinstance(workers, bool) or
                                not isinstance(workers, (int, np.integer)) or workers < 1):
        raise MonteCarloError(f"workers must be a whole number ≥ 1 (Dask worker processes), "
                              f"got {workers!r}")
    if workers is not None and scheduler is not None:
        raise MonteCarloError("give workers= (a local cluster of that many processes) or "
                              "scheduler= (a running Dask scheduler), not both")
    bad_address = MonteCarloError(f"scheduler must be a Dask scheduler address such as "
                                  f"'tcp://host:8786' (or a distributed.Client), got {scheduler!r}")
    if isinstance(scheduler, str) and "://" not in scheduler:  # wrong whether Dask is there or not
        raise bad_address
    try:
        import distributed
    except ImportError:
        raise MonteCarloError(DASK_MISSING) from None
    if scheduler is not None:
        if isinstance(scheduler, distributed.Client):
            return scheduler, []
        if not isinstance(scheduler, str):
            raise bad_address
        try:
            client = distributed.Client(scheduler, timeout=_CONNECT_TIMEOUT)
        except (OSError, TimeoutError, ValueError) as err:
            raise MonteCarloError(f"cannot reach the Dask scheduler {scheduler!r} ({err}); start "
                                  "it (dask scheduler, then dask worker ADDRESS on each machine, "
                                  "with derive installed) or check the address") from None
        return client, [client]
    cluster = distributed.LocalCluster(n_workers=int(workers), threads_per_worker=1,
                                       processes=True, dashboard_address=None)
    client = distributed.Client(cluster)
    return client, [client, cluster]


@contextmanager
def connect(workers=None, scheduler=None):
    """A context giving what to pass as ``sample(..., scheduler=)`` for ``workers``/``scheduler``
    (a Dask Client, or None to run here), started once for several ensembles and closed after."""
    client, close = _client(workers, scheduler)
    try:
        yield client
    finally:
        for c in close:
            c.close()


def run(plan: _Plan, shard, *, workers=None, scheduler=None, checkpoint=None,
        progress=None) -> dict:
    """The merged block sums {ℓ: _Accumulator} of every shard of ``plan`` (module docstring);
    ``shard(plan, k)`` computes shard k's (a module-level function, so that Dask can send it)."""
    import sys

    done, acc = (0, None) if checkpoint is None else _load(plan, checkpoint)
    if acc is None:
        acc = {l: _Accumulator(plan.X.shape[0], plan.ntk) for l in range(1, plan.spec.depth + 1)}
    client, close = _client(workers, scheduler)
    t0 = time.perf_counter()
    first = done
    show = progress
    last_save = time.perf_counter()
    state = {"done": done, "saved": done}

    def merged(k: int, part: dict) -> None:
        nonlocal show, last_save
        for l, a in acc.items():
            a.merge(part[l])
        state["done"] = k + 1
        nets = min((k + 1) * plan.shard, plan.n_networks)
        if show is None:
            frac = (nets - first * plan.shard) / max(plan.n_networks - first * plan.shard, 1)
            show = sys.stderr.isatty() and (time.perf_counter() - t0) / max(frac, 1e-9) > 2.0
        _progress(bool(show), nets, plan.n_networks, t0,
                  min(first * plan.shard, plan.n_networks))
        if checkpoint is not None and (time.perf_counter() - last_save > _SAVE_EVERY
                                       or k + 1 == plan.n_shards):
            _save(plan, checkpoint, k + 1, acc)
            state["saved"], last_save = k + 1, time.perf_counter()
        if _stop_after is not None and k + 1 >= _stop_after and k + 1 < plan.n_shards:
            raise _Stopped(f"stopped after {k + 1} of {plan.n_shards} shards (test hook)")

    try:
        if client is None:
            for k in range(done, plan.n_shards):
                merged(k, shard(plan, k))
        else:
            _run_dask(client, plan, shard, done, merged)
    finally:
        if checkpoint is not None and state["done"] > state["saved"]:
            _save(plan, checkpoint, state["done"], acc)
        for c in close:
            c.close()
    return acc


def _run_dask(client, plan: _Plan, shard, done: int, merged) -> None:
    """Submit one task per remaining shard; merge results in shard order as they arrive."""
    from distributed import as_completed

    shared = client.scatter(plan, broadcast=True, hash=False)   # sent to each worker once
    futures = {client.submit(_shard_state, shared, k, shard, pure=False): k
               for k in range(done, plan.n_shards)}
    pending: dict = {}
    nxt = done
    try:
        for fut in as_completed(list(futures)):
            k = futures[fut]
            try:
                pending[k] = fut.result()
            except MonteCarloError:
                raise
            except Exception as err:  # noqa: BLE001 (a worker lost, a pickling failure, ...)
                raise MonteCarloError(f"shard {k} failed on a Dask worker: {type(err).__name__}: "
                                      f"{err}") from None
            fut.release()
            while nxt in pending:
                part = pending.pop(nxt)
                merged(nxt, {l: _Accumulator.from_state(plan.X.shape[0], plan.ntk, s)
                             for l, s in part.items()})
                nxt += 1
    finally:
        client.cancel(list(futures) + [shared])


def _shard_state(plan: _Plan, k: int, shard) -> dict:
    """A Dask task: shard ``k``'s block sums (``shard(plan, k)``) as plain arrays
    {ℓ: {name: array}}."""
    return {l: a.state() for l, a in shard(plan, k).items()}
