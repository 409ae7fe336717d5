"""Running an audit: every checkpoint analyzed with the same options, one table out.

:func:`run_audit` analyzes the checkpoints in this process, in worker processes (``jobs``) or
on the ranks of a distributed run, commits each analyzed checkpoint to the parts store
(:mod:`nrc_cli.audit.store`) and rebuilds the table from the parts from time to time and at
the end. A checkpoint that cannot be analyzed becomes a row of a separate errors table, and
the audit goes on; so does a worker process that dies (its checkpoint fails, a fresh worker
takes its place). The table is a function of the set of parts alone, sorted by checkpoint path
and layer index, so a resumed run, ``jobs=2`` and merged shards give exactly the table of one
uninterrupted run.

Nothing here prints; progress is reported through a callback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.context import SpawnContext
from typing import TYPE_CHECKING

from nrc_cli.audit.discover import select_shard
from nrc_cli.audit.store import Store, file_key, fingerprint, new_part, rows_of
from nrc_cli.errors import CheckpointError, ConfigError, NrcError
from nrc_cli.options import AnalysisOptions
from nrc_cli.pipeline import resolve_device, run
from nrc_cli.results.tables import audit_frame, errors_frame, table_format, write_table

if TYPE_CHECKING:
    import pandas as pd

    from nrc_cli.distributed import Group

__all__ = ["AuditProgress", "AuditResult", "run_audit"]

# progress(done, total, checkpoint, status): once before the first checkpoint (0, total, "",
# "start"), then after each checkpoint this run analyzes, with status "ok" or "failed";
# ``total`` counts only the checkpoints to analyze (not the skipped).
AuditProgress = Callable[[int, int, str, str], None]


@dataclass
class AuditResult:
    """The outcome of :func:`run_audit`.

    Attributes
    ----------
    frame : pandas.DataFrame
        The audit table (every checkpoint of the selection that has been analyzed, this run or
        an earlier one).
    errors : pandas.DataFrame
        One row per checkpoint that failed in this run (see :data:`ERROR_COLUMNS`).
    checkpoints : list of str
        The selection (after sharding), sorted.
    analyzed, skipped, failed : int
        Checkpoints analyzed now, found already done (resumed), and failed.
    """

    frame: pd.DataFrame
    errors: pd.DataFrame
    checkpoints: list[str]
    analyzed: int
    skipped: int
    failed: int

    @property
    def total(self) -> int:
        return len(self.checkpoints)

    @classmethod
    def of(
        cls,
        rows: list[dict],
        errors: list[dict],
        checkpoints: list[str],
        *,
        analyzed: int,
        skipped: int,
        failed: int,
    ) -> AuditResult:
        """The result of the audit rows and error rows of ``checkpoints``."""
        return cls(
            frame=audit_frame(rows),
            errors=errors_frame(errors),
            checkpoints=checkpoints,
            analyzed=analyzed,
            skipped=skipped,
            failed=failed,
        )


@dataclass(frozen=True)
class _Settings:
    """How one audit runs: what :func:`run_audit` was given besides the checkpoints."""

    data: str
    options: AnalysisOptions
    output: str | os.PathLike | None
    fmt: str | None
    jobs: int
    threads: int | None
    fresh: bool
    flush_every: float
    progress: AuditProgress | None

    def checked(self, group: Group | None) -> _Settings:
        """Refuse bad ``jobs`` and ``threads``; the table's format settled (from ``output``)."""
        if group is not None and self.jobs != 1:
            raise ConfigError(
                f"--jobs {self.jobs}: under torchrun the ranks are the workers",
                hint="drop --jobs and start more ranks: torchrun --nproc-per-node N",
            )
        if self.jobs < 1:
            raise ConfigError(f"--jobs: expected an integer >= 1, found {self.jobs}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads: expected an integer >= 1, found {self.threads}")
        if self.output is None:
            return self
        return dataclasses.replace(self, fmt=table_format(self.output, self.fmt))


# One checkpoint to analyze: (label, the key of its part, the job a worker runs), where the job
# is (checkpoint, data, options), the arguments of nrc_cli.pipeline.run.
_Job = tuple[str, str, AnalysisOptions]
_Todo = tuple[str, dict, _Job]
# What happens when a checkpoint is done: finish(label, key, outcome, count).
_Finish = Callable[[str, dict, dict, int], None]


def _check_once(data: str, config: AnalysisOptions) -> None:
    """Refuse, before any checkpoint runs, what would make every checkpoint fail the same way."""
    from nrc_cli.io import data as data_io
    from nrc_cli.model.build import load_factory

    resolve_device(config.device)
    if config.arch is not None and config.arch != "hf":  # "hf" builds from each folder
        load_factory(config.arch)
    # Opened as the pipeline opens it (an .npz or a .toml data spec); keyword inputs change
    # which arrays must exist.
    data_io.open_dataset(data, x_key=config.x_key, y_key=config.y_key, inputs=config.inputs).close()


def run_audit(
    checkpoints: Sequence[str],
    data: str,
    options: AnalysisOptions,
    *,
    output: str | os.PathLike | None = None,
    fmt: str | None = None,
    jobs: int = 1,
    threads: int | None = None,
    fresh: bool = False,
    flush_every: float = 5.0,
    progress: AuditProgress | None = None,
    group: Group | None = None,
) -> AuditResult:
    """Analyze every checkpoint on ``data`` with ``options``; failures become error rows.

    Parameters
    ----------
    checkpoints : sequence of str
        Checkpoint paths (see :func:`discover` and :func:`select_shard`).
    data : str
        The data set every checkpoint is analyzed on.
    options : AnalysisOptions
        Options for every analysis.
    output : path, optional
        The audit table (``.parquet`` or ``.csv``). Its parts folder makes the audit resumable;
        without it everything stays in memory.
    fmt : str, optional
        ``csv`` or ``parquet``; from the suffix of ``output`` by default.
    jobs : int
        Worker processes (``spawn``ed); 1 runs in this process.
    threads : int, optional
        torch threads per worker (default 1 with several workers, torch's default with one).
    fresh : bool
        Discard committed parts and start over.
    flush_every : float
        Seconds between rewrites of ``output`` while the audit runs (0: after each checkpoint);
        it is always rewritten at the end.
    progress : callable(done, total, checkpoint, status), optional
    group : nrc_cli.distributed.Group, optional
        Under torchrun: this rank audits the ``RANK+1/WORLD_SIZE`` shard of ``checkpoints``
        (one checkpoint at a time, in lockstep with the other ranks, so that an error on one
        rank ends them all), committing parts to the shared ``OUTPUT.parts/``; rank 0 then
        writes the one table of every rank's rows and returns the whole result, the other
        ranks return their own. ``jobs`` must be 1 (the ranks are the workers).

    Returns
    -------
    AuditResult
    """
    settings = _Settings(
        data=data,
        options=options,
        output=output,
        fmt=fmt,
        jobs=jobs,
        threads=threads,
        fresh=fresh,
        flush_every=flush_every,
        progress=progress,
    )
    if group is not None:
        return _run_ranked(checkpoints, settings, group)
    settings = settings.checked(None)
    labels = sorted(dict.fromkeys(str(c) for c in checkpoints))
    _check_once(data, options)
    settings_key = fingerprint(data, options)
    output = settings.output
    store = Store(output, settings_key, fresh=fresh) if output is not None else None
    try:
        result, _ = _audit(labels, settings, store)
        return result
    finally:
        if store is not None:
            store.close()


def _run_ranked(checkpoints: Sequence[str], settings: _Settings, group: Group) -> AuditResult:
    """One rank's part of a distributed audit (see :func:`run_audit`)."""
    from nrc_cli.distributed import rank_device

    store = None
    try:
        try:
            settings = settings.checked(group)
            output = settings.output
            every = sorted(dict.fromkeys(str(c) for c in checkpoints))
            labels = select_shard(every, (group.rank + 1, group.world_size))
            _check_once(settings.data, settings.options)
            settings_key = fingerprint(settings.data, settings.options)
            # Rank 0 takes the output's lock (another audit writing there is an error for
            # all); the other ranks commit their parts under it, after rank 0 has it.
            if output is not None and group.rank == 0:
                store = Store(output, settings_key, fresh=settings.fresh)
        except Exception as exc:
            group.check(exc)
            raise
        group.check()
        try:
            if output is not None and group.rank != 0:
                store = Store(output, settings_key, fresh=False, lock=False)
        except Exception as exc:
            group.check(exc)
            raise
        group.check()
        # Each rank on its own device; the parts' key (the fingerprint) keeps the option as
        # given, so that a rerun on another number of ranks resumes them. Rank 0 writes the
        # table once, from every rank's rows.
        options = settings.options
        mine = dataclasses.replace(options, device=rank_device(options.device, group.launch))
        this_rank = dataclasses.replace(settings, options=mine, output=None, flush_every=0.0)
        result, rows = _audit(labels, this_rank, store, group=group)
    finally:
        if store is not None:
            store.close()
    everyone = group.gather(
        {
            "rows": rows,
            "errors": result.errors.to_dict("records"),
            "counts": (result.analyzed, result.skipped, result.failed),
        }
    )
    group.finish()
    if everyone is None:
        return result
    rows = [r for part in everyone for r in part["rows"]]
    errors = sorted((e for part in everyone for e in part["errors"]), key=lambda e: e["checkpoint"])
    analyzed, skipped, failed = (sum(part["counts"][i] for part in everyone) for i in range(3))
    merged = AuditResult.of(rows, errors, every, analyzed=analyzed, skipped=skipped, failed=failed)
    if output is not None:
        write_table(merged.frame, output, settings.fmt)
    return merged


def _audit(
    labels: list[str], settings: _Settings, store: Store | None, group: Group | None = None
) -> tuple[AuditResult, list[dict]]:
    """Analyze the checkpoints of ``labels`` that ``store`` does not hold yet; the result and
    every row (held before or analyzed now)."""
    output, fmt, progress = settings.output, settings.fmt, settings.progress
    done: dict[str, list[dict]] = {}
    errors: dict[str, dict] = {}
    todo: list[tuple[str, dict]] = []
    for label in labels:
        try:
            size, mtime_ns = file_key(label)
        except OSError as exc:
            err = CheckpointError(f"{label}: cannot read: {exc}")
            errors[label] = {"checkpoint": label, **_error_fields(err)}
            continue
        key = {"size": size, "mtime_ns": mtime_ns, "settings": store.fingerprint if store else ""}
        part = store.load(label, key) if store is not None else None
        if part is not None:
            done[label] = rows_of(part)
        else:
            todo.append((label, key))
    skipped = len(done)
    analyzed = 0
    last_flush = time.monotonic()

    def rows() -> list[dict]:
        return [r for held in done.values() for r in held]

    def write() -> None:
        if output is not None:
            write_table(audit_frame(rows()), output, fmt)

    def finish(label: str, key: dict, outcome: dict, count: int) -> None:
        nonlocal analyzed, last_flush
        if outcome["ok"]:
            part = new_part(label, key, outcome["report"], outcome["metadata"])
            if store is not None:
                store.commit(part)
            done[label] = rows_of(part)
            analyzed += 1
        else:
            if store is not None:
                store.drop(label)  # an older part of a file that has changed since
            fields = ("error_type", "message", "hint")
            errors[label] = {"checkpoint": label, **{k: outcome.get(k) for k in fields}}
        if output is not None and time.monotonic() - last_flush >= settings.flush_every:
            write()
            last_flush = time.monotonic()
        if progress is not None:
            progress(count, len(todo), label, "ok" if outcome["ok"] else "failed")

    configs: list[_Todo] = [
        (label, key, (label, settings.data, settings.options)) for label, key in todo
    ]
    threads = settings.threads
    if progress is not None:
        progress(0, len(todo), "", "start")
    if group is not None:
        # Lockstep: every rank meets the others after each checkpoint (see Group.each).
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        count = iter(range(1, len(configs) + 1))
        group.each(
            configs,
            group.agree(len(configs)),
            lambda item: finish(item[0], item[1], _analyze_one(item[2]), next(count)),
        )
    elif settings.jobs == 1 or len(configs) <= 1:
        _run_here(configs, threads, finish)
    else:
        _run_pool(configs, min(settings.jobs, len(configs)), threads or 1, finish)
    write()
    held = rows()
    result = AuditResult.of(
        held,
        list(errors.values()),
        list(labels),
        analyzed=analyzed,
        skipped=skipped,
        failed=len(errors),
    )
    return result, held


def _error_fields(err: NrcError) -> dict:
    message = getattr(err, "cli_message", err.message)  # an audit is a command: flags
    return {"error_type": type(err).__name__, "message": message, "hint": err.hint}


def _run_here(configs: list[_Todo], threads: int | None, finish: _Finish) -> None:
    import torch

    from nrc_cli._threads import default_threads

    torch.set_num_threads(default_threads() if threads is None else threads)
    for count, (label, key, cfg) in enumerate(configs, start=1):
        finish(label, key, _analyze_one(cfg), count)


# ------------------------------------------------------------------------------------------------
# Worker processes
# ------------------------------------------------------------------------------------------------


def _analyze_one(job: _Job) -> dict:
    """Analyze one (checkpoint, data, options); any failure comes back as data instead of an
    exception."""
    try:
        results = run(*job)
    except NrcError as err:
        return {"ok": False, **_error_fields(err)}
    except Exception as exc:  # a bug or an exotic model: record it, keep auditing
        return {
            "ok": False,
            "error_type": type(exc).__name__,
            "message": f"internal error: {type(exc).__name__}: {exc}",
            "hint": "this may be a bug in nrc; run nrc analyze on this checkpoint with "
            "NRC_DEBUG=1 for the traceback",
        }
    assert results is not None  # one process (no group): always a result
    return {"ok": True, "report": results.to_dict(), "metadata": dict(results.metadata)}


def _init_worker(threads: int, parent: int) -> None:
    """Worker set-up: one torch thread each (N workers share the cores), and exit when the
    parent is gone, so a killed audit never leaves orphans computing for nobody."""
    import torch

    # Ctrl-C reaches the whole process group: the parent stops the workers itself, and a
    # worker must not print a traceback of its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="nrc-parent-watch", daemon=True).start()


def _serve(conn: Connection, threads: int, parent: int) -> None:
    """A worker process's life: analyze each job received on ``conn`` and send back its
    outcome, until None comes (or the parent's end of the pipe closes)."""
    if hasattr(signal, "pthread_sigmask"):  # started with both blocked: see _Worker.start
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    _init_worker(threads, parent)
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        try:
            conn.send(_analyze_one(job))
        except OSError:  # the parent is gone
            return


class _Worker:
    """One worker process this audit owns, with its end of the pipe and the checkpoint it is
    analyzing (``job``: (label, key), None while idle)."""

    def __init__(self, context: SpawnContext, threads: int) -> None:
        self.conn, self._theirs = context.Pipe()
        self.process = context.Process(
            target=_serve, args=(self._theirs, threads, os.getpid()), name="nrc-audit-worker"
        )
        self.job: tuple[str, dict] | None = None

    def start(self) -> None:
        """Start the process with SIGINT and SIGTERM blocked (the new interpreter inherits the
        mask). In the worker, SIGINT stays blocked: a Ctrl-C reaches the whole process group,
        the parent stops the workers, and a worker still importing torch must not print a
        traceback of its own. In the parent, a signal that comes meanwhile waits until the
        process has started, so that an interrupt never leaves a worker nobody stops."""
        block = getattr(signal, "pthread_sigmask", None)  # not on Windows
        previous = block(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM}) if block else None
        try:
            self.process.start()
        finally:
            self._theirs.close()
            if block is not None and previous is not None:
                block(signal.SIG_SETMASK, previous)

    @property
    def label(self) -> str:
        return self.job[0] if self.job is not None else ""

    def give(self, label: str, key: dict, cfg: _Job) -> None:
        """Send a job (a worker that has died meanwhile shows as such: see :meth:`outcome`)."""
        self.job = (label, key)
        with contextlib.suppress(OSError):
            self.conn.send(cfg)

    def take(self) -> tuple[str, dict]:
        """The job in flight, now done (or lost): the worker is idle again."""
        assert self.job is not None
        job, self.job = self.job, None
        return job

    def outcome(self) -> dict | None:
        """The outcome of the job once ready; None when the worker died before sending it."""
        try:
            if self.conn.poll():
                outcome = self.conn.recv()
                return outcome if isinstance(outcome, dict) else None
        except (EOFError, OSError):
            pass
        return None

    def stop(self, *, now: bool) -> None:
        """Let the worker exit, or (``now``) kill it whatever it is doing; then reap it."""
        if not now:
            with contextlib.suppress(OSError):
                self.conn.send(None)
        self.conn.close()
        if self.process.pid is None:  # never started
            return
        if now:
            self.process.kill()
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


def _run_pool(configs: list[_Todo], jobs: int, threads: int, finish: _Finish) -> None:
    """Run in ``jobs`` spawned worker processes, one checkpoint in flight per worker.

    A worker that dies (out of memory, a segfault in an extension, killed) fails only the
    checkpoint it was analyzing: an error row (see :func:`_died`); a fresh worker takes its
    place and the audit goes on. When this is interrupted (Ctrl-C, or SIGTERM turned into an
    exit by the command line), every worker is killed at once, not after its checkpoint.
    """
    # fork after torch has started its thread pools can deadlock; spawn starts clean.
    context = multiprocessing.get_context("spawn")
    queue = deque(configs)
    workers: list[_Worker] = []
    count = 0
    interrupted = True
    try:
        while queue or any(w.job is not None for w in workers):
            for gone in [w for w in workers if w.job is None and not w.process.is_alive()]:
                gone.stop(now=True)  # died between two checkpoints: replaced below
                workers.remove(gone)
            while queue and len(workers) < jobs:
                workers.append(_Worker(context, threads))
                workers[-1].start()  # listed first: stopped below whatever happens
            for worker in workers:
                if worker.job is None and queue:
                    worker.give(*queue.popleft())
            busy = [w for w in workers if w.job is not None]
            ready = set(wait([h for w in busy for h in (w.conn, w.process.sentinel)]))
            done = [w for w in busy if w.conn in ready or w.process.sentinel in ready]
            for worker in sorted(done, key=lambda w: w.label):
                label, key = worker.take()
                outcome = worker.outcome()
                if outcome is None or not worker.process.is_alive():
                    worker.stop(now=True)
                    workers.remove(worker)
                count += 1
                finish(label, key, _died() if outcome is None else outcome, count)
        interrupted = False
    finally:
        for worker in workers:
            worker.stop(now=interrupted)


def _died() -> dict:
    return {
        "ok": False,
        "error_type": "WorkerDied",
        "message": "the worker process analyzing this checkpoint died (out of memory, or killed)",
        "hint": "rerun the same command: failed checkpoints are retried; or use fewer --jobs",
    }
