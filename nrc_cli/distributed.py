"""Data-parallel runs on ``torch.distributed``: the launch, each rank's share, errors, reduction.

``torchrun --nproc-per-node N nrc …`` (or any launcher that sets the same variables) starts N
copies of one command. Each copy, a *rank*, finds its place in the environment
(:func:`launch_from_env`), joins the process group (:func:`process_group`: gloo on the CPU,
NCCL for CUDA tensors on ``cuda:LOCAL_RANK``) and does its share of the work:

* **Shares.** The batches of a data set are cut into ``WORLD_SIZE`` contiguous runs of whole
  batches (:func:`share`), the same on every rank, so that no rank reads another's rows and
  every batch is the batch a single process would have read.
* **Lockstep and errors.** Ranks meet after every step (a batch, a checkpoint) in one small
  all-reduce of error flags (:meth:`Group.check`, :meth:`Group.each`). An error on one rank
  thus ends every rank within one step, with the same :class:`RankFailed` everywhere: rank 0
  reports it, naming the rank, and every rank exits with its code (2, or 3 for a bug). A rank
  that stops answering is a timeout (``NRC_DIST_TIMEOUT`` seconds, default 1800) with a
  message, not a hang.
* **Reduction.** The float64 accumulator states are summed with all-reduce exactly as
  :meth:`merge` would combine them (:meth:`Group.reduce`). The exact accumulators sum about a
  shift (their first batch's mean), which differs between ranks; so the ranks first agree on
  one shift, the global mean (one all-reduce of p + t + 1 numbers), re-express their sums
  about it, then add them: p² + p·t + t² + p + t numbers per layer, once per pass. A
  classifier's per-class sums agree on one shift per class (its global mean) the same way,
  then add p² + L·(p + 1) numbers per layer (L label values); the counts of its second pass
  (the nearest class means) are plain sums. Sums add up only over alike states: before any
  sum, a monitor's ranks compare one checksum of their layers (accumulator kinds, widths, the
  sketches' test matrices, which layers ran), and each accumulator's ``align_`` checks its own
  (widths; a sketch's test matrix), so that ranks built differently get the same error on
  every rank instead of a wrong sum.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from nrc_cli.accumulate.base import Accumulator
from nrc_cli.errors import ConfigError, DataError, NrcError

__all__ = [
    "DEFAULT_TIMEOUT",
    "TIMEOUT_VAR",
    "Group",
    "Launch",
    "RankFailed",
    "RankLost",
    "launch_from_env",
    "process_group",
    "share",
    "steps",
]

TIMEOUT_VAR = "NRC_DIST_TIMEOUT"
DEFAULT_TIMEOUT = 1800.0  # seconds; torch's own default for gloo
_F64 = torch.float64
_HINT_LAUNCH = "start every rank with torchrun, e.g. torchrun --nproc-per-node 2 --no-python nrc …"
T = TypeVar("T")


@dataclass(frozen=True)
class Launch:
    """Where this process stands in a torchrun launch (its environment variables).

    Attributes
    ----------
    rank : int
        ``RANK``: 0 … world_size − 1 over all nodes; rank 0 reports and writes.
    world_size : int
        ``WORLD_SIZE`` (> 1).
    local_rank : int
        ``LOCAL_RANK``: the index among the ranks of this node, hence its GPU.
    master : str
        ``MASTER_ADDR:MASTER_PORT``, where the ranks meet.
    timeout : float
        Seconds a rank waits for the others at any meeting point (``NRC_DIST_TIMEOUT``).
    """

    rank: int
    world_size: int
    local_rank: int
    master: str
    timeout: float = DEFAULT_TIMEOUT


def launch_from_env(environ: Mapping[str, str] | None = None) -> Launch | None:
    """The launch this process is part of, or None when it runs alone (``WORLD_SIZE`` unset
    or 1).

    Raises
    ------
    ConfigError
        ``WORLD_SIZE`` > 1 with the other variables of torchrun missing or inconsistent.
    """
    env = os.environ if environ is None else environ
    if env.get("WORLD_SIZE", "").strip() in ("", "1"):
        return None

    def number(name: str, default: str | None = None) -> int:
        text = env.get(name, default)
        if text is None or not text.strip().isdigit():
            found = "it is not set" if text is None else f"found '{text}'"
            raise ConfigError(
                f"WORLD_SIZE={env.get('WORLD_SIZE')} asks for a distributed run, but {name} "
                f"should be a whole number >= 0: {found}",
                hint=_HINT_LAUNCH,
            )
        return int(text)

    world, rank = number("WORLD_SIZE"), number("RANK")
    local = number("LOCAL_RANK", "0")
    if world < 1 or rank >= world:
        raise ConfigError(f"RANK={rank} is not below WORLD_SIZE={world}", hint=_HINT_LAUNCH)
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not env.get(name):
            raise ConfigError(
                f"WORLD_SIZE={world} asks for a distributed run, but {name} is not set",
                hint=_HINT_LAUNCH,
            )
    port = number("MASTER_PORT")
    text = env.get(TIMEOUT_VAR, "").strip()
    try:
        timeout = float(text) if text else DEFAULT_TIMEOUT
    except ValueError:
        timeout = -1.0
    if not (math.isfinite(timeout) and timeout > 0):
        raise ConfigError(
            f"{TIMEOUT_VAR}: expected a number of seconds > 0, found '{text}'",
            hint=f"{TIMEOUT_VAR}=600 waits ten minutes for a rank that does not answer",
        )
    return Launch(rank, world, local, f"{env['MASTER_ADDR']}:{port}", timeout)


def share(n_samples: int, batch_size: int, rank: int, world_size: int) -> tuple[int, int]:
    """The samples ``[start, stop)`` of ``rank``: a contiguous run of whole batches.

    The ⌈N/b⌉ batches of one process are dealt out in ``world_size`` runs whose lengths
    differ by at most one, the longer runs first, so the union over ranks is every sample
    once, each batch is the batch a single process reads, rank 0 always has a batch, and a
    later rank may have none (more ranks than batches).
    """
    batches = (n_samples + batch_size - 1) // batch_size
    base, extra = divmod(batches, world_size)
    first = rank * base + min(rank, extra)
    last = first + base + (1 if rank < extra else 0)
    return min(first * batch_size, n_samples), min(last * batch_size, n_samples)


def steps(n_samples: int, batch_size: int, world_size: int) -> int:
    """Batches in the largest share: the lockstep count every rank goes through."""
    batches = (n_samples + batch_size - 1) // batch_size
    return (batches + world_size - 1) // world_size


class RankFailed(NrcError):
    """A rank failed, raised on every rank; rank 0 reports it, the others exit quietly.

    Attributes
    ----------
    failed_rank : int
        The lowest rank that failed.
    exit_code : int
        2 for an error of the input or options, 3 for a bug.
    reported_elsewhere : bool
        True on ranks other than 0: the error line comes from rank 0.
    """

    def __init__(
        self, message: str, *, hint: str | None, failed_rank: int, exit_code: int, quiet: bool
    ) -> None:
        super().__init__(message, hint=hint)
        self.failed_rank = failed_rank
        self.exit_code = exit_code
        self.reported_elsewhere = quiet


class RankLost(NrcError):
    """The other ranks stopped answering (a timeout) or the connection to them broke."""


class Group:
    """This rank's handle on the process group: lockstep, error agreement and reduction.

    Built by :func:`process_group`. Every method is a collective: every rank calls it, in
    the same order, or the others wait (until the timeout).
    """

    def __init__(self, launch: Launch, device: torch.device, pg: Any = None) -> None:
        self.launch = launch
        self.rank = launch.rank
        self.world_size = launch.world_size
        self.device = device  # where this rank computes; CUDA tensors go through NCCL
        self.pg = pg  # the torch ProcessGroup the collectives use; None: the default group
        # Where the small tensors of agreement go: the CPU, unless the group is NCCL alone.
        self.small = torch.device("cpu")
        self.finished = False

    @classmethod
    def of(cls, pg: Any = None) -> Group:
        """A handle on an initialised torch ``ProcessGroup`` (None: the default group).

        Raises
        ------
        ConfigError
            When torch.distributed is not initialised.
        """
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()):
            raise ConfigError(
                "all_reduce(): torch.distributed is not initialised in this process",
                hint="call torch.distributed.init_process_group() first (under torchrun, "
                "with the env:// defaults), then pass its group or None",
            )
        rank, world = dist.get_rank(pg), dist.get_world_size(pg)
        backend = str(dist.get_backend(pg)).lower()
        device = torch.device("cpu")
        if "nccl" in backend and torch.cuda.is_available():
            device = torch.device("cuda", torch.cuda.current_device())
        group = cls(Launch(rank, world, rank, "", DEFAULT_TIMEOUT), device, pg)
        if "gloo" not in backend and device.type == "cuda":
            group.small = device
        return group

    def finish(self) -> None:
        """Say the ranks have met for the last time: from now on each goes its own way, and
        :meth:`check` raises this rank's own error without waiting for the others (who may
        have exited)."""
        self.finished = True

    # -- errors and lockstep --------------------------------------------------------------------

    def check(self, error: BaseException | None = None) -> None:
        """Meet the other ranks; when any rank brings an error, raise :class:`RankFailed`
        on every rank (named after the lowest failing rank, with its message and hint).

        An :class:`NrcError` counts as exit code 2 (or its own code); any other exception as
        a bug (exit code 3, ``internal error`` and its type, as for one process).
        """
        if self.finished or isinstance(error, (RankFailed, RankLost)):
            # Already known to every rank (or the others are gone): nothing to agree on.
            if error is not None:
                raise error
            return
        code = 0
        if error is not None:
            code = error.exit_code if isinstance(error, NrcError) else 3
        flags = torch.zeros(self.world_size, dtype=torch.int64, device=self.small)
        flags[self.rank] = code
        self._collective(lambda: torch.distributed.all_reduce(flags, group=self.pg))
        flags = flags.cpu()
        failed = [r for r in range(self.world_size) if flags[r]]
        if not failed:
            return
        words: list = [None] * self.world_size
        self._collective(
            lambda: torch.distributed.all_gather_object(words, _describe(error), group=self.pg)
        )
        first = failed[0]
        message, hint = words[first]
        # Other ranks that failed otherwise (the same error everywhere is said once).
        others = [r for r in failed if r != first and words[r] != words[first]]
        also = f" (rank(s) {', '.join(map(str, others))} failed too)" if others else ""
        raise RankFailed(
            f"rank {first}: {message}{also}",
            hint=hint,
            failed_rank=first,
            exit_code=int(flags[first]),
            quiet=self.rank != 0,
        ) from error

    def each(self, items: Iterable[T], count: int, work: Callable[[T], None]) -> None:
        """``work(item)`` for this rank's items, in lockstep: ``count`` rounds (the same on
        every rank: the length of the longest share), each ending in :meth:`check`.

        A rank out of items, or whose item failed, still meets the others each round; the
        failure surfaces on every rank at the end of the round in which it happened. Reading
        an item (``next``) counts as part of the work.
        """
        it = iter(items)
        done = object()
        for _ in range(count):
            error = None
            try:
                item = next(it, done)
                if item is not done:
                    work(item)  # type: ignore[arg-type]
            except Exception as exc:  # every kind: a bug on one rank must not hang the others
                error = exc
            self.check(error)

    def agree(self, value: int, op: str = "max") -> int:
        """``value`` combined over the ranks (``max``, ``min`` or ``sum``)."""
        ops = {
            "max": torch.distributed.ReduceOp.MAX,
            "min": torch.distributed.ReduceOp.MIN,
            "sum": torch.distributed.ReduceOp.SUM,
        }
        t = torch.tensor([value], dtype=torch.int64, device=self.small)
        self._collective(lambda: torch.distributed.all_reduce(t, op=ops[op], group=self.pg))
        return int(t[0])

    def gather(self, value: object) -> list | None:
        """Every rank's ``value`` (picklable) as a list on rank 0; None on the others."""
        out: list | None = [None] * self.world_size if self.rank == 0 else None
        dst = 0 if self.pg is None else torch.distributed.get_global_rank(self.pg, 0)
        self._collective(
            lambda: torch.distributed.gather_object(value, out, dst=dst, group=self.pg)
        )
        return out

    # -- reduction ------------------------------------------------------------------------------

    def reduce(self, acc: Accumulator) -> Accumulator:
        """Sum ``acc``'s state over the ranks, in place and in float64, exactly as a merge of
        every rank's state would; every rank ends with the total. Returns ``acc``.

        Every state declared ``reduce="sum"`` is summed, once the ranks have brought their
        states to one form (:meth:`Accumulator.align_`): a shift-based accumulator
        (:class:`ShiftedSums`) agrees on one shift, the global mean (one all-reduce of
        p + t + 1 numbers), and re-expresses its sums about it (``reshift_``); the per-class
        sums of a classifier (:class:`~nrc_cli.accumulate.classes.ClassMoments`,
        ``ClassSketch``) agree on the number of label values and on one shift per class, the
        class's global mean (an all-reduce of L·(p + 1) numbers), so that a class that some
        ranks never saw adds nothing there. An accumulator
        empty on every rank (a layer that did not run) stays empty; one empty on some ranks
        only is an error (their statistics would cover different samples).
        """
        has = int(acc.n > 0)
        if self.agree(has, "max") == 0:
            return acc
        if self.agree(has, "min") == 0:
            raise DataError(
                f"rank {self.rank}: a layer ran on the samples of some ranks only",
                hint="exclude layers that do not run on every batch",
            )
        acc.align_(self)
        numbers = [name for name in acc.summed_states if not torch.is_tensor(getattr(acc, name))]
        if numbers:  # counts and float sums: one float64 vector (counts exact below 2^53)
            values = torch.tensor([float(getattr(acc, k)) for k in numbers], dtype=_F64)
            self.sum_(values)
            for name, value in zip(numbers, values.tolist(), strict=True):
                setattr(acc, name, round(value) if isinstance(getattr(acc, name), int) else value)
        for name in acc.summed_states:
            value = getattr(acc, name)
            if torch.is_tensor(value):
                if not value.is_contiguous():
                    value = value.contiguous()
                    setattr(acc, name, value)
                self.sum_(value)
        return acc

    def sum_(self, tensor: torch.Tensor) -> None:
        """Replace ``tensor`` (contiguous) by its sum over the ranks, in place."""
        if not tensor.is_contiguous():
            raise ValueError("all_reduce needs a contiguous tensor")
        if tensor.device.type == "cpu" and self.small.type != "cpu":  # NCCL alone: via the GPU
            moved = tensor.to(self.small)
            self._collective(lambda: torch.distributed.all_reduce(moved, group=self.pg))
            tensor.copy_(moved)
            return
        self._collective(lambda: torch.distributed.all_reduce(tensor, group=self.pg))

    def _collective(self, call: Callable[[], object]) -> None:
        """Run a collective; a timeout or a lost peer becomes an :class:`NrcError`."""
        try:
            call()
        except (RuntimeError, torch.distributed.DistError) as exc:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if "timeout" in text.lower() or "timed out" in text.lower():
                raise RankLost(
                    f"rank {self.rank}: the other ranks did not answer within "
                    f"{self.launch.timeout:g} s ({TIMEOUT_VAR}): a rank died, hangs, or one "
                    "step (a batch, a checkpoint) takes longer than that",
                    hint=f"look for the rank that failed above; or set {TIMEOUT_VAR} to a "
                    "longer time in seconds",
                ) from exc
            raise RankLost(
                f"rank {self.rank}: lost contact with the other ranks: {text}",
                hint="another rank probably died (out of memory, or killed); see its output",
            ) from exc


def _describe(error: BaseException | None) -> tuple[str, str | None] | None:
    """(message, hint) of an error as rank 0 will print it; None for no error."""
    if error is None:
        return None
    if isinstance(error, NrcError):
        return getattr(error, "cli_message", error.message), error.hint
    where = "".join(traceback.format_exception_only(type(error), error)).strip()
    return (
        f"internal error: {where}",
        "this is a bug in nrc; rerun with NRC_DEBUG=1 for the traceback and report it",
    )


def rank_device(name: str, launch: Launch) -> str:
    """The device option of one rank: ``auto`` and ``cuda`` become ``cuda:LOCAL_RANK`` (when
    CUDA is available, for ``auto``); ``cpu`` stays. ``cuda:i`` is refused: every rank of a
    node would take the same card."""
    if name.startswith("cuda:"):
        raise ConfigError(
            f"--device {name}: under torchrun each rank takes its own card, cuda:LOCAL_RANK",
            hint="pass --device cuda (or auto); choose the cards with CUDA_VISIBLE_DEVICES",
        )
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return f"cuda:{launch.local_rank}"
    return "cpu" if name == "auto" else name


@contextlib.contextmanager
def process_group(launch: Launch, device: torch.device | str) -> Iterator[Group]:
    """Join the process group of ``launch`` for the life of the block, then leave it.

    With a CUDA ``device`` the group carries CUDA tensors over NCCL and CPU tensors (the
    error flags) over gloo; otherwise everything goes over gloo. ``device`` must be this
    rank's own card, ``cuda:LOCAL_RANK``.

    Raises
    ------
    ConfigError
        The ranks do not meet within the timeout, or the backend cannot start.
    """
    import torch.distributed as dist

    device = torch.device(device)
    if not dist.is_available():
        raise ConfigError(
            "this build of torch has no torch.distributed; distributed runs need it",
            hint="install a torch build with distributed support (the Linux and macOS wheels)",
        )
    backend = "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
        backend = "cpu:gloo,cuda:nccl"
    try:
        dist.init_process_group(
            backend,
            init_method="env://",
            rank=launch.rank,
            world_size=launch.world_size,
            timeout=datetime.timedelta(seconds=launch.timeout),
        )
    except (RuntimeError, ValueError, dist.DistError) as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"rank {launch.rank} of {launch.world_size}: cannot join the other ranks at "
            f"{launch.master} within {launch.timeout:g} s: {text}",
            hint=f"start all {launch.world_size} ranks (torchrun does), check MASTER_ADDR and "
            f"MASTER_PORT, or set {TIMEOUT_VAR} to wait longer",
        ) from exc
    try:
        yield Group(launch, device)
    finally:
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
