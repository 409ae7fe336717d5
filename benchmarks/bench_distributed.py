"""Wall time of ``nrc analyze`` on 1 process against N ranks under torchrun, one thread each.

For each workload (the ``mlp`` and ``conv`` of ``bench_scale.py``) the same file is analyzed by
one process (``--threads 1``) and by ``torchrun --standalone --nproc-per-node R`` (one thread
per rank, gloo on the CPU; NCCL with ``--device cuda``), each a fresh process, and the reports
are compared (largest relative difference of any per-layer metric). The CPU seconds of all the
processes of a run (ranks and launcher) show the work the ranks add, which the wall time on a
busy machine hides. Also printed: the bytes one rank all-reduces per run, Σ over layers of
(p² + p·t + t² + p + t + 1)·8 (plus the normalised Gram of the head).

    .venv/bin/python benchmarks/bench_distributed.py                       # mlp and conv, 1 vs 2
    .venv/bin/python benchmarks/bench_distributed.py --workloads mlp --n mlp=4e4 --ranks 1,2,4
    .venv/bin/python benchmarks/bench_distributed.py --device cuda --ranks 1,2   # on a GPU node

Data and checkpoints are generated once into ``benchmarks/out/data/`` (shared with
``bench_scale.py``); the reports go to ``benchmarks/out/distributed/``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402

OUT = HERE / "out"


def command(w, ckpt: Path, data: Path, n: int, ranks: int, args, out: Path) -> list[str]:
    nrc = ["analyze", str(ckpt), "--data", str(data), "--max-samples", str(n)]
    nrc += ["--batch-size", str(args.batch_size), "--format", "json", "-o", str(out)]
    nrc += ["--quiet", "--device", args.device, "--threads", "1"]
    if w.arch:
        nrc += ["--arch", f"{HERE / 'models.py'}:{w.factory}", "--arch-kwargs", w.kwargs_json]
    if ranks == 1:
        return [sys.executable, "-m", "nrc_cli", *nrc]
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    return [*run, "--nproc-per-node", str(ranks), "-m", "nrc_cli", *nrc]


def reduction_bytes(report: dict) -> int:
    """Bytes of accumulator state one rank all-reduces in the run (float64)."""
    t = report["summary"]["target_dim"]
    total = 0
    for row in report["layers"]:
        p = row["in_dim"]
        total += (p * p + p * t + t * t + p + t + 1 + 1) * 8
    head = report["layers"][-1]["in_dim"]
    return total + head * head * 8  # the head's normalised Gram


def largest_difference(a: dict, b: dict) -> float:
    worst = 0.0
    for ra, rb in zip(a["layers"], b["layers"], strict=True):
        for key, va in ra.items():
            vb = rb[key]
            if isinstance(va, float) and isinstance(vb, float) and math.isfinite(va):
                worst = max(worst, abs(va - vb) / max(abs(va), 1e-12))
    return worst


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", default="mlp,conv")
    ap.add_argument("--n", default="mlp=20000,conv=20000", help="samples per workload")
    ap.add_argument("--ranks", default="1,2", help="comma list of rank counts")
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--conv-width", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=1, help="runs per cell; the median is kept")
    args = ap.parse_args(argv)
    sizes = dict(item.split("=") for item in args.n.split(","))
    catalog = common.workloads(args.conv_width)
    folder = OUT / "distributed"
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")])
    rows = []
    for name in args.workloads.split(","):
        w = catalog[name]
        n = int(float(sizes[name]))
        ckpt = OUT / "data" / f"{w.tag()}.safetensors"
        data = OUT / "data" / f"{w.tag()}_n{n}.npz"
        if not ckpt.exists():
            common.make_checkpoint(w, ckpt)
        if not data.exists():
            common.generate_data(w, n, data)
        reports = {}
        for ranks in map(int, args.ranks.split(",")):
            out = folder / f"{name}_n{n}_r{ranks}.json"
            walls, cpus = [], []
            load = os.getloadavg()[0]  # other work on the machine slows every cell
            for _ in range(args.repeat):
                cmd = command(w, ckpt, data, n, ranks, args, out)
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                start = time.perf_counter()
                done = subprocess.run(cmd, env=env, capture_output=True, text=True)
                walls.append(time.perf_counter() - start)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                # CPU seconds of every process of the run (ranks and launcher): unlike the
                # wall time, barely changed by other work sharing the cores.
                cpus.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
                if done.returncode != 0:
                    sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr}")
            reports[ranks] = json.loads(out.read_text())
            wall = sorted(walls)[len(walls) // 2]
            cpu = sorted(cpus)[len(cpus) // 2]
            rows.append((name, n, ranks, wall, reports[ranks], load, cpu))
            print(f"{name} N={n} ranks={ranks}: {wall:.1f} s, CPU {cpu:.1f} s (load {load:.1f})")
    lines = [
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, device {args.device}, one thread per rank, "
        f"batch size {args.batch_size}",
        "",
        "| workload | N | ranks | wall s | speed-up | CPU s, all processes | all-reduce MB per rank "
        "| max rel diff vs 1 | load before |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, n, ranks, wall, report, load, cpu in rows:
        base = next((r for r in rows if r[0] == name and r[2] == 1), None)
        speed = f"{base[3] / wall:.2f}×" if base else "—"
        diff = f"{largest_difference(report, base[4]):.1e}" if base and ranks > 1 else "—"
        mb = reduction_bytes(report) / 1e6 if ranks > 1 else 0.0
        cells = (
            f"| {name} | {n:,} | {ranks} | {wall:.1f} | {speed} | {cpu:.1f} | {mb:.1f} | {diff} |"
        )
        lines.append(f"{cells} {load:.1f} |")
    text = "\n".join(lines)
    (folder / "results.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
