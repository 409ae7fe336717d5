"""Peak memory of ``nrc analyze --task classification`` against the number of classes C.

The architecture of the sample classifiers (``sample_checkpoints/classifiers/``: an MLP
10 → 32 → 32 → 32 → C, ReLU, random init) with a head of C outputs, on synthetic data of C
classes: ``SAMPLES_PER_CLASS`` samples per class (at most ``--max-samples``), each class a
Gaussian blob about its own random centre, labels int64. For each C, one freshly started
process under ``measure.py`` (peak RSS from ``ru_maxrss``), with both passes (the
nearest-class-mean columns) and, separately, the label bomb: one sample labelled 10^12 among
labels 0 and 1, with ``--no-prediction`` (nothing bounds the labels).

The state is O(C·p + p²) per layer (docs/classification.md, "Memory"): a C×C matrix at
C = 10^5 would be 80 GB alone.

    python benchmarks/bench_many_classes.py                        # C = 10^3, 10^4, 10^5
    python benchmarks/bench_many_classes.py --classes 1000 --quick

Data and checkpoints go to ``benchmarks/out/`` (git-ignored). Prints a markdown table (also
written to ``--results``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

HERE = Path(__file__).resolve().parent
OUT = HERE / "out" / "many_classes"
SAMPLES_PER_CLASS = 4
WIDTHS = (10, 32, 32, 32)


def make_checkpoint(c: int, path: Path) -> Path:
    """The sample classifiers' MLP with a head of ``c`` outputs, random init (seed 0)."""
    if path.exists():
        return path
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(WIDTHS):
        layers += [nn.Linear(a, b), nn.ReLU()]
    net = nn.Sequential(*layers, nn.Linear(WIDTHS[-1], c))
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {f"net.{k}": v.contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(path))
    return path


def make_data(c: int, n: int, path: Path) -> Path:
    """``x`` (n, 10) float32 about one random centre per class, ``y`` (n,) int64, every class
    present (n >= c)."""
    if path.exists():
        return path
    rng = np.random.default_rng([c, n])
    y = np.arange(n, dtype=np.int64) % c
    rng.shuffle(y)
    centres = rng.standard_normal((c, WIDTHS[0])).astype(np.float32) * 3
    x = centres[y] + rng.standard_normal((n, WIDTHS[0])).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=x, y=y)
    return path


def make_bomb(path: Path) -> Path:
    """200 samples, labels 0 and 1 but for one labelled 10^12."""
    rng = np.random.default_rng(1)
    y = np.arange(200, dtype=np.int64) % 2
    y[7] = 10**12
    x = rng.standard_normal((200, WIDTHS[0])).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=x, y=y)
    return path


def measure(name: str, cmd: list[str], folder: Path, timeout: float) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{name}.json"
    wrapper = [sys.executable, str(HERE / "measure.py"), "--json", str(out)]
    wrapper += ["--timeout", str(timeout), "--log", str(folder / f"{name}.log"), "--"]
    subprocess.run(wrapper + cmd, check=False)
    return json.loads(out.read_text())


def _mb(cell: dict) -> str:
    return f"{cell['maxrss_mb']:.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--classes", default="1e3,1e4,1e5", help="comma list of class counts")
    ap.add_argument("--max-samples", type=int, default=200_000)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--results", default=str(OUT / "many_classes.md"))
    ap.add_argument("--quick", action="store_true", help="smoke run: C = 10^3 only")
    args = ap.parse_args()
    sizes = [1000] if args.quick else sorted({int(float(s)) for s in args.classes.split(",")})
    nrc = [sys.executable, "-m", "nrc_cli", "analyze"]
    rows = []
    for c in sizes:
        n = min(SAMPLES_PER_CLASS * c, args.max_samples)
        ckpt = make_checkpoint(c, OUT / f"mlp_c{c}.safetensors")
        data = make_data(c, n, OUT / f"blobs_c{c}_n{n}.npz")
        folder = OUT / f"runs_c{c}"
        cmd = [*nrc, str(ckpt), "--data", str(data), "--task", "classification"]
        cmd += ["--batch-size", str(args.batch_size), "--format", "json", "--quiet"]
        cmd += ["--output", str(folder / "report.json")]
        cell = measure("nrc", cmd, folder, args.timeout)
        report = json.loads((folder / "report.json").read_text()) if cell["rc"] == 0 else {}
        classes = report.get("summary", {}).get("n_classes")
        rows.append((c, n, cell, classes))
        print(f"C={c}: rc {cell['rc']}, {cell['wall_s']:.1f} s, peak RSS {_mb(cell)} MB")
    bomb_ckpt = make_checkpoint(2, OUT / "mlp_c2.safetensors")
    bomb_data = make_bomb(OUT / "bomb.npz")
    folder = OUT / "runs_bomb"
    cmd = [*nrc, str(bomb_ckpt), "--data", str(bomb_data), "--task", "classification"]
    cmd += ["--no-prediction", "--format", "json", "--quiet", "--output", str(folder / "r.json")]
    bomb = measure("bomb", cmd, folder, args.timeout)
    print(f"label 10^12, --no-prediction: rc {bomb['rc']}, peak RSS {_mb(bomb)} MB")

    lines = [
        "# nrc analyze --task classification: peak memory against the number of classes",
        "",
        f"{dt.date.today()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, torch "
        f"{torch.__version__}; MLP 10 → 32 → 32 → 32 → C (the sample classifiers' "
        f"architecture), {SAMPLES_PER_CLASS} samples per class (at most {args.max_samples}), "
        f"batch size {args.batch_size}, both passes; every cell a fresh process.",
        "",
        "| C | N | exit | n_classes | wall s | peak RSS MB |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for c, n, cell, classes in rows:
        lines.append(
            f"| {c:,} | {n:,} | {cell['rc']} | {classes} | {cell['wall_s']:.1f} | {_mb(cell)} |"
        )
    lines += [
        "",
        f"One label of 10^12 among 0 and 1, `--no-prediction`: exit {bomb['rc']}, "
        f"peak RSS {_mb(bomb)} MB.",
    ]
    text = "\n".join(lines) + "\n"
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
