"""Time the reduction of accumulator states across ranks (the fixed cost of a distributed run).

Run under torchrun; each rank fills ``--layers`` exact accumulators of width ``--width`` (t = 4)
with one random batch, then the ranks reduce them as ``nrc analyze`` does after a pass, and
rank 0 prints the time (median of ``--repeat``)::

    torchrun --standalone --nproc-per-node 2 benchmarks/allreduce_time.py --width 1024 --layers 8
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from nrc_cli.accumulate.moments import CrossMoments
from nrc_cli.distributed import launch_from_env, process_group


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    launch = launch_from_env()
    if launch is None:
        raise SystemExit("run under torchrun (WORLD_SIZE > 1)")
    device = torch.device(args.device if args.device == "cpu" else f"cuda:{launch.local_rank}")
    g = torch.Generator(device="cpu").manual_seed(launch.rank)
    times = []
    with process_group(launch, device) as group:
        for _ in range(args.repeat):
            accs = []
            for _ in range(args.layers):
                acc = CrossMoments(device)
                z = torch.randn(256, args.width, generator=g, dtype=torch.float64)
                acc.update(z.to(device), torch.randn(256, 4, generator=g).to(device))
                accs.append(acc)
            group.check()
            start = time.perf_counter()
            for acc in accs:
                group.reduce(acc)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
    if launch.rank == 0:
        mb = args.layers * (args.width**2 + args.width * 4 + 16 + args.width + 4 + 1) * 8 / 1e6
        print(
            f"{launch.world_size} ranks, {args.layers} layers of width {args.width} "
            f"({mb:.1f} MB per rank): reduction {statistics.median(times) * 1e3:.0f} ms "
            f"(median of {args.repeat})"
        )


if __name__ == "__main__":
    main()
