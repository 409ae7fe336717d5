"""CPU thread control for the parts of an analysis that do not gain from threads.

Two kinds of work do not: LAPACK decompositions of matrices of a few thousand rows, and the
memory-bound elementwise passes (casts, means, shifts, column sums) over one batch of
features. On a busy or CPU-capped machine their OpenMP threads wait on each other: on this
project's 2-core CI machine every such pass over a 1024×1024 float64 array took 8 ms on two
threads against 0.3–0.7 ms on one, and a 1024×1024 ``eigh`` 0.9 to 25 s against 0.4 s. The
large matrix products keep every thread.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


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
