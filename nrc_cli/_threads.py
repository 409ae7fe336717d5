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
from contextlib import contextmanager

import torch


def threads_for_load(cores: int, load: float) -> int:
    """How many threads to run on: the ``cores`` that other work leaves free, at least 1.

    ``load`` is the 1-minute load average (runnable processes). Free cores are ``cores −
    load``, rounded half up: on 2 cores, 2 threads up to a load of 0.5, 1 above it. On a
    shared 2-core machine (docs/performance.md), two threads with one core taken by other
    jobs made every multi-threaded product wait on a descheduled partner thread: a 512-wide
    float64 Gram took 24 ms on two threads against 1.5 ms on one, and a whole exact analysis
    2-3.5 times as long; on an idle machine two threads are faster.
    """
    if cores < 1:
        return 1
    if not math.isfinite(load) or load < 0:
        return cores
    return max(1, min(cores, math.floor(cores - load + 0.5)))


def default_threads() -> int:
    """The CPU threads an analysis runs on unless told (``--threads``).

    Where ``OMP_NUM_THREADS`` is set (torchrun sets it to 1 per rank), torch's count, which
    follows it; otherwise :func:`threads_for_load` of torch's default count (one per core)
    and the 1-minute load average, where the OS reports one.
    """
    cores = torch.get_num_threads()
    if os.environ.get("OMP_NUM_THREADS"):
        return cores
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average (Windows)
        return cores
    return threads_for_load(cores, load)


@contextmanager
def single_threaded(device: torch.device | str | None = None):
    """Run the enclosed CPU work on one thread (no effect for CUDA tensors)."""
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
