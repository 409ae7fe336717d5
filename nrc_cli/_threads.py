"""CPU thread control for the parts of an analysis that do not gain from threads.

Two kinds of work do not: LAPACK decompositions of matrices of a few thousand rows, and the
memory-bound elementwise passes (casts, means, shifts, column sums) over one batch of
features. On a busy or CPU-capped machine their OpenMP threads wait on each other: on this
project's 2-core CI machine every such pass over a 1024×1024 float64 array took 8 ms on two
threads against 0.3–0.7 ms on one, and a 1024×1024 ``eigh`` 0.9 to 25 s against 0.4 s. The
large matrix products keep every thread.
"""

from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def threads_for_load(cores: int, load: float) -> int:
    """How many threads to run on: the ``cores`` that other work leaves free, at least 1.

    ``load`` is how many cores other processes keep busy (see :func:`others_busy`). Free
    cores are ``cores − load``, rounded half up: on 2 cores, 2 threads up to a load of 0.5, 1
    above it. On a shared 2-core machine (docs/performance.md), two threads with one core
    taken by other jobs made every multi-threaded product wait on a descheduled partner
    thread: a 512-wide float64 Gram took 24 ms on two threads against 1.5 ms on one, and a
    whole exact analysis 2-3.5 times as long; on an idle machine two threads are faster.
    """
    if cores < 1:
        return 1
    if not math.isfinite(load) or load < 0:
        return cores
    return max(1, min(cores, math.floor(cores - load + 0.5)))


# The shortest and the longest window over which other processes' CPU use is read.
MIN_WINDOW_S = 0.1
MAX_WINDOW_S = 5.0


def _cpu_sample() -> tuple[float, int, int] | None:
    """(monotonic time, busy jiffies of all CPUs, this process's jiffies), None off Linux.

    Busy is user + system + irq + softirq + steal: time that niced processes take (the
    ``nice`` column) is left out while this process is not niced itself, since the scheduler
    gives it way to this one. This process's own jiffies (all its threads) are subtracted by
    the caller.
    """
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(v) for v in f.readline().split()[1:9]]
        with open("/proc/self/stat", encoding="ascii") as f:
            own = f.read().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return None
    if len(fields) < 8:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    busy = user + system + irq + softirq + steal
    try:
        if os.getpriority(os.PRIO_PROCESS, 0) > 0:
            busy += nice
    except (AttributeError, OSError):  # pragma: no cover - no getpriority
        pass
    # utime and stime are fields 14 and 15 of /proc/self/stat, 12 and 13 after the ")".
    return time.monotonic(), busy, int(own[11]) + int(own[12])


_START = _cpu_sample()


def others_busy() -> float | None:
    """How many cores other processes keep busy now: their CPU time over a short window.

    The window runs from the previous reading (the first: when this module was imported, so
    that the imports that follow fill it) to now, at least ``MIN_WINDOW_S`` (it waits for the
    rest) and at most ``MAX_WINDOW_S`` (an older start is read afresh). Unlike the load
    average, it does not remember a process that ended a few seconds ago: a benchmark's
    forward pass, or the training job before an analysis. None where the OS has no
    ``/proc/stat``.
    """
    global _START
    start = _START
    now = _cpu_sample()
    if now is None:
        return None
    if start is None or now[0] - start[0] > MAX_WINDOW_S:
        start, now = now, None
    if now is None or now[0] - start[0] < MIN_WINDOW_S:
        time.sleep(max(0.0, MIN_WINDOW_S - (time.monotonic() - start[0])))
        now = _cpu_sample()
        if now is None:  # pragma: no cover - /proc/stat went away
            return None
    _START = now
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    elapsed = now[0] - start[0]
    others = ((now[1] - start[1]) - (now[2] - start[2])) / ticks
    return max(0.0, others / elapsed)


def default_threads(load: float | None = None) -> int:
    """The CPU threads an analysis runs on unless told (``--threads``).

    Where ``OMP_NUM_THREADS`` is set (torchrun sets it to 1 per rank), torch's count, which
    follows it; otherwise :func:`threads_for_load` of torch's default count (one per core)
    and ``load``: the cores other processes keep busy, read now (:func:`others_busy`) unless
    given, or else the 1-minute load average, where the OS reports one.
    """
    import torch

    cores = torch.get_num_threads()
    if os.environ.get("OMP_NUM_THREADS"):
        return cores
    if load is None:
        load = others_busy()
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):  # no load average (Windows)
            return cores
    return threads_for_load(cores, load)


@contextmanager
def single_threaded(device: torch.device | str | None = None):
    """Run the enclosed CPU work on one thread (no effect for CUDA tensors)."""
    import torch

    if (device is not None and torch.device(device).type != "cpu") or (
        torch.get_num_threads() == 1
    ):
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# The entry points that set an OpenBLAS library's thread count, in the order tried: scipy's
# wheels ship OpenBLAS with a ``scipy_`` prefix. numpy's ILP64 build (``...64_``) is left as
# it is: its products are not nrc's.
_OPENBLAS_SETTERS = ("scipy_openblas_set_num_threads", "openblas_set_num_threads")


def _openblas_libraries() -> list[str]:
    """Paths of the OpenBLAS libraries loaded into this process (Linux: /proc/self/maps)."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.lower()}
    except OSError:
        return []
    return sorted(p for p in paths if p.startswith("/"))


def blas_threads(threads: int) -> int:
    """Set the thread count of scipy's BLAS (OpenBLAS) to ``threads``, like torch's.

    torch's products use its own BLAS (MKL or OpenBLAS, set by ``torch.set_num_threads``);
    the symmetric rank-k updates of :mod:`nrc_cli.accumulate.gram` go through scipy's, which
    has a thread pool of its own, sized by the number of cores unless told. Loads
    ``scipy.linalg.blas`` first (so that its library is mapped) and returns how many
    libraries were set; 0 where none could be (another BLAS, another OS): those keep their
    own default.
    """
    import ctypes

    try:
        import scipy.linalg.blas  # noqa: F401  (maps scipy's BLAS into the process)
    except ImportError:
        return 0
    done = 0
    for path in _openblas_libraries():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in _OPENBLAS_SETTERS:
            setter = getattr(lib, name, None)
            if setter is not None:
                setter(ctypes.c_int(threads))
                done += 1
                break
    return done
