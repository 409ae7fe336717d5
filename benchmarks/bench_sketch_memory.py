"""Memory of the sketch path: a 4096-wide layer analyzed exactly, then sketched.

Builds a random-init MLP 64 -> 4096 -> 4096 -> 4 (two layers whose inputs are 4096 wide) and a
data set, then runs ``nrc analyze`` three times in fresh processes: with the default budget (an
exact 4096x4096 float64 covariance per wide layer, randomized top spectrum), and with budgets
too small for that, so that each wide layer is accumulated as a sketch Sigma_Z Omega of O(p*s)
memory. Prints a markdown table of peak RSS, wall time and the plan, and the largest difference
between the sketched and the exact metrics.

    python benchmarks/bench_sketch_memory.py [--n 20000] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def build(folder: Path, n: int) -> tuple[Path, Path]:
    import torch
    from safetensors.torch import save_file
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(64, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 4)
    )
    ckpt = folder / "wide.safetensors"
    save_file({f"net.{k}": v.contiguous() for k, v in net.state_dict().items()}, ckpt)
    rng = np.random.default_rng(0)
    # Inputs of rank 8: the wide features then have a decaying spectrum, as trained ones do.
    x = (rng.standard_normal((n, 8)) @ rng.standard_normal((8, 64))).astype(np.float32)
    y = rng.standard_normal((n, 4)).astype(np.float32)
    data = folder / "wide.npz"
    np.savez(data, x=x, y=y)
    return ckpt, data


def run(ckpt: Path, data: Path, out: Path, *extra: str) -> dict:
    """One ``nrc analyze`` in a fresh child; its peak RSS from a wrapper process."""
    code = (
        "import resource, subprocess, sys, json\n"
        "rc = subprocess.call(sys.argv[1:])\n"
        "print(json.dumps({'rc': rc, "
        "'rss': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))\n"
    )
    cmd = [sys.executable, "-m", "nrc_cli", "analyze", str(ckpt), "--data", str(data)]
    cmd += ["-f", "json", "-o", str(out), "-q", *extra]
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - start
    info = json.loads(done.stdout.strip().splitlines()[-1])
    if info["rc"] != 0:
        raise SystemExit(f"nrc analyze failed: {done.stderr}")
    return {"wall": wall, "rss_mb": info["rss"] / 1024, "report": json.loads(out.read_text())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp)
        ckpt, data = build(folder, args.n)
        cases = [
            ("default budget (exact accumulators)", ()),
            ("--memory-budget 256MB", ("--memory-budget", "256MB")),
            ("--memory-budget 96MB", ("--memory-budget", "96MB")),
        ]
        rows = []
        for label, extra in cases:
            rows.append((label, run(ckpt, data, folder / "out.json", *extra)))
    exact = rows[0][1]["report"]
    print(f"N = {args.n:,}; model 64 -> 4096 -> 4096 -> 4; batch 1024; CPU\n")
    print(
        "| run | peak RSS MB | wall s | plan (layer: accumulator, spectrum) | max abs diff vs exact |"
    )
    print("|---|---:|---:|---|---:|")
    for label, r in rows:
        plan = r["report"]["summary"]["plan"]["layers"]
        desc = ", ".join(f"{p['layer']}: {p['accumulator']}/{p['spectrum']}" for p in plan)
        diff = max(
            abs(a[c] - b[c])
            for a, b in zip(exact["layers"], r["report"]["layers"], strict=True)
            for c in ("nrc1_noise", "nrc2_cka", "nrc3_alignment")
            if a[c] is not None and b[c] is not None
        )
        print(f"| {label} | {r['rss_mb']:.0f} | {r['wall']:.1f} | {desc} | {diff:.1e} |")


if __name__ == "__main__":
    main()
