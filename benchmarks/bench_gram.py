"""One batch's float64 Gram ``target += ZᵀZ``: full product, blocked triangle, BLAS ``syrk``.

The exact accumulators add each batch's Gram of shifted features (b×p, float64, C order) into
a p×p float64 state of which only one triangle is read. Three ways to form it on the CPU:

* ``full``: ``target.addmm_(Z.T, Z)``, torch's GEMM, all p² entries (what a plain
  implementation does);
* ``blocked``: the p×p product taken in column blocks of ``--block`` (default 256) on and above
  the diagonal only (``nrc_cli.accumulate.moments`` before ``syrk``: at p = 1024, 10 of 16
  blocks);
* ``syrk``: ``scipy.linalg.blas.dsyrk`` on the tensors' own memory (a C-order Z is a Fortran
  p×b array, so ``syrk`` with ``trans=0`` gives ZᵀZ; one triangle, half the multiply-adds);
  the BLAS is scipy's, whose threads are set alongside torch's.

Each cell (width p, batch b, threads) runs the variants interleaved (full, blocked, syrk,
full, ...) ``--repeat`` times after one warm-up and reports the median milliseconds, the
ratio to ``full`` and the 1-minute load average of the machine before the cell. A cell whose
full product would exceed ``--max-gflop`` is skipped (listed as such).

    python benchmarks/bench_gram.py                         # widths 64-4096, batch 256-4096
    python benchmarks/bench_gram.py --widths 512,1024 --batches 1024 --threads 1,2 --repeat 7
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nrc_cli._threads import blas_threads
from nrc_cli.accumulate import gram


def _blocked(block: int):
    def run(target: torch.Tensor, z: torch.Tensor) -> None:
        p = z.shape[1]
        edges = [*range(0, p, block), p]
        spans = [slice(lo, hi) for lo, hi in itertools.pairwise(edges)]
        for i, rows in enumerate(spans):
            for cols in spans[i:]:
                target[rows, cols].addmm_(z[:, rows].T, z[:, cols])

    return run


def _full(target: torch.Tensor, z: torch.Tensor) -> None:
    target.addmm_(z.T, z)


def _syrk(target: torch.Tensor, z: torch.Tensor) -> None:
    gram.syrk_upper_(target, z)


def _time(fn, target, z) -> float:
    t0 = time.perf_counter()
    fn(target, z)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--widths", default="64,128,256,512,1024,2048,4096")
    ap.add_argument("--batches", default="256,1024,4096")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--block", type=int, default=256)
    ap.add_argument("--max-gflop", type=float, default=40.0, help="skip larger full products")
    args = ap.parse_args(argv)
    variants = {"full": _full, "blocked": _blocked(args.block), "syrk": _syrk}
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs; median of {args.repeat}, interleaved")
    print("| p | b | threads | full ms | blocked ms | syrk ms | blocked/full | syrk/full | load |")
    print("|---|---|---|---|---|---|---|---|---|")
    gen = torch.Generator().manual_seed(0)
    for threads in map(int, args.threads.split(",")):
        torch.set_num_threads(threads)
        blas_threads(threads)
        for p in map(int, args.widths.split(",")):
            for b in map(int, args.batches.split(",")):
                gflop = 2 * b * p * p / 1e9
                if gflop > args.max_gflop:
                    print(f"| {p} | {b} | {threads} | skipped: full product {gflop:.0f} GFLOP |")
                    continue
                z = torch.randn(b, p, dtype=torch.float64, generator=gen)
                target = torch.zeros(p, p, dtype=torch.float64)
                load = os.getloadavg()[0]
                for fn in variants.values():
                    fn(target, z)  # warm-up
                times: dict[str, list[float]] = {k: [] for k in variants}
                for _ in range(args.repeat):
                    for name, fn in variants.items():
                        times[name].append(_time(fn, target, z))
                ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
                print(
                    f"| {p} | {b} | {threads} | {ms['full']:.2f} | {ms['blocked']:.2f} | "
                    f"{ms['syrk']:.2f} | {ms['blocked'] / ms['full']:.2f} | "
                    f"{ms['syrk'] / ms['full']:.2f} | {load:.2f} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
