"""Classification benchmark: ``nrc analyze --task classification`` against the bare forward pass.

The conv workload of ``bench_scale.py`` (a ResNet-18-style net, base width 16, 3×32×32 inputs)
with a 100-way head, on a synthetic data set with 100 classes: int64 labels, each the argmax of
a fixed random linear map of the image's per-channel quadrant means, so the classes depend on
the inputs. For each N, three freshly started processes, each under ``measure.py`` (wall time,
peak RSS):

* ``forward``  the bare forward pass (``bare_forward.py``), the floor;
* ``nrc``      ``nrc analyze --task classification``: one forward pass for the per-class
  moments, the nearest-class-mean columns from the features spilled to disk meanwhile;
* ``nrc --spill-budget 0``  the same with no spill: a second forward pass for the NCC columns;
* ``nrc --no-ncc``  no NCC columns at all.

With ``--repeat R`` the four cells run R times, interleaved (forward, spill, two-forward,
no-ncc, forward, ...), so drift in the machine's load hits every variant alike; the table gives
medians.

Data and checkpoints go to ``benchmarks/out/`` (git-ignored) and are reused. Prints a markdown
table (also written to ``--results``).

    python benchmarks/bench_classification.py                    # N = 10^4, 10^5 (~10 min)
    python benchmarks/bench_classification.py --sizes 2000 --quick
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OUT = HERE / "out"
sys.path.insert(0, str(HERE))

import common  # noqa: E402

N_CLASSES = 100
CHUNK = common.CHUNK_ROWS


def workload(width: int) -> common.Workload:
    w = common.workloads(conv_width=width)["conv"]
    kwargs = dict(w.kwargs, num_outputs=N_CLASSES)
    return common.Workload(
        name="conv_cls",
        factory=w.factory,
        kwargs=kwargs,
        x_shape=w.x_shape,
        t=1,
        arch=True,
        description=w.description.replace("Linear head", f"Linear head to {N_CLASSES} classes"),
    )


def _labels(x: np.ndarray, seed: int) -> np.ndarray:
    """Class of each image: argmax of a fixed random map of its per-channel quadrant means."""
    h, wd = x.shape[2] // 2, x.shape[3] // 2
    quads = [x[:, :, :h, :wd], x[:, :, :h, wd:], x[:, :, h:, :wd], x[:, :, h:, wd:]]
    feats = np.concatenate([q.mean(axis=(2, 3)) for q in quads], axis=1)
    a = np.random.default_rng([seed, 7]).standard_normal((feats.shape[1], N_CLASSES))
    return (feats @ a).argmax(axis=1).astype(np.int64)


def _write(zf: zipfile.ZipFile, key: str, shape: tuple, dtype, chunks) -> None:
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False}
    header["shape"] = shape
    with zf.open(f"{key}.npy", "w", force_zip64=True) as f:
        np.lib.format.write_array_header_1_0(f, header)
        for c in chunks:
            f.write(memoryview(np.ascontiguousarray(c, dtype=dtype)).cast("B"))


def make_data(w: common.Workload, n: int, path: Path) -> Path:
    """``x`` (n, 3, 32, 32) float32 and ``y`` (n,) int64 labels, written chunk by chunk."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    starts = range(0, n, CHUNK)

    def x_chunk(i: int, s: int) -> np.ndarray:
        rng = np.random.default_rng([w.seed, 0, i])
        return rng.standard_normal((min(CHUNK, n - s), *w.x_shape), dtype=np.float32)

    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        _write(zf, "x", (n, *w.x_shape), np.float32, (x_chunk(i, s) for i, s in enumerate(starts)))
        _write(
            zf,
            "y",
            (n,),
            np.int64,
            (_labels(x_chunk(i, s), w.seed) for i, s in enumerate(starts)),
        )
    os.replace(tmp, path)
    return path


def measure(name: str, cmd: list[str], folder: Path, timeout: float) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{name}.json"
    wrapper = [sys.executable, str(HERE / "measure.py"), "--json", str(out)]
    wrapper += ["--timeout", str(timeout), "--log", str(folder / f"{name}.log"), "--"]
    subprocess.run(wrapper + cmd, check=False)
    return json.loads(out.read_text())


VARIANTS = (
    ("nrc", []),
    ("nrc_two_forward", ["--spill-budget", "0"]),
    ("nrc_no_ncc", ["--no-ncc"]),
)


def _median(runs: list[dict]) -> dict:
    """The run of median wall time, with every run's wall time and the largest peak RSS."""
    order = sorted(runs, key=lambda r: r["wall_s"])
    cell = dict(order[len(order) // 2])
    cell["walls"] = [r["wall_s"] for r in runs]
    cell["maxrss_mb"] = max(r["maxrss_mb"] for r in runs)
    busy = [r["other_cores_busy"] for r in runs if r.get("other_cores_busy") is not None]
    cell["other_cores_busy"] = max(busy) if busy else None
    return cell


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1e4,1e5", help="comma list of sample counts")
    ap.add_argument("--width", type=int, default=16, help="base width of the conv net")
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--results", default=str(OUT / "classification.md"))
    ap.add_argument("--repeat", type=int, default=1, help="interleaved repeats (medians)")
    ap.add_argument("--skip", default="", help="comma list of cells to leave out at the largest N")
    ap.add_argument("--quick", action="store_true", help="smoke run: width 8")
    args = ap.parse_args()
    sizes = sorted({int(float(s)) for s in args.sizes.split(",") if s.strip()})
    width = 8 if args.quick else args.width
    w = workload(width)
    ckpt = common.make_checkpoint(w, OUT / "data" / f"{w.tag()}.safetensors")
    data = make_data(w, max(sizes), OUT / "data" / f"{w.tag()}_n{max(sizes)}.npz")
    arch = ["--arch", f"{HERE / 'models.py'}:{w.factory}", "--arch-kwargs", w.kwargs_json]
    skip = {c.strip() for c in args.skip.split(",") if c.strip()}
    rows = []
    for n in sizes:
        folder = OUT / "runs" / f"classification_{w.tag()}_n{n}"
        forward = [sys.executable, str(HERE / "bare_forward.py"), "--factory", w.factory]
        forward += ["--kwargs", w.kwargs_json, "--ckpt", str(ckpt), "--data", str(data)]
        forward += ["--n", str(n), "--batch-size", str(args.batch_size)]
        forward += ["--json", str(folder / "forward_inner.json")]
        nrc = [sys.executable, "-m", "nrc_cli", "analyze", str(ckpt), "--data", str(data), *arch]
        nrc += ["--task", "classification", "--max-samples", str(n)]
        nrc += ["--batch-size", str(args.batch_size), "--format", "json", "--quiet"]
        variants = [("forward", forward)]
        for name, extra in VARIANTS:
            if n == max(sizes) and name in skip:
                continue
            variants.append((name, [*nrc, *extra]))
        runs: dict[str, list[dict]] = {name: [] for name, _ in variants}
        for r in range(args.repeat):
            for name, cmd in variants:
                if name != "forward":
                    cmd = [*cmd, "--output", str(folder / f"{name}_report.json")]
                runs[name].append(measure(f"{name}_{r}", cmd, folder, args.timeout))
        cells = {name: _median(rs) for name, rs in runs.items()}
        rows.append((n, cells))
        print(f"N={n}: " + ", ".join(f"{k} {v['wall_s']:.1f}s" for k, v in cells.items()))

    lines = [
        "# nrc analyze --task classification against the bare forward pass",
        "",
        f"{dt.date.today()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}; {w.description}; "
        f"{N_CLASSES} classes; batch size {args.batch_size}; every cell a fresh process.",
        "",
        f"Medians of {args.repeat} interleaved run(s); RSS the largest peak of the runs.",
        "",
        "| N | forward (floor) s | nrc, spill s | ratio | nrc, two forward passes s | ratio "
        "| nrc --no-ncc s | ratio | peak RSS MB forward / spill / two-pass / no-ncc |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def cell(c: dict, k: str, f: dict) -> str:
        if k not in c:
            return "– | –"
        return f"{c[k]['wall_s']:.1f} | {c[k]['wall_s'] / f['wall_s']:.2f}×"

    for n, c in rows:
        f = c["forward"]
        rss = " / ".join(
            f"{c[k]['maxrss_mb']:.0f}" if k in c else "–"
            for k in ("forward", "nrc", "nrc_two_forward", "nrc_no_ncc")
        )
        lines.append(
            f"| {n:,} | {f['wall_s']:.1f} | {cell(c, 'nrc', f)} | {cell(c, 'nrc_two_forward', f)} "
            f"| {cell(c, 'nrc_no_ncc', f)} | {rss} |"
        )
    walls = {f"{n}/{k}": v["walls"] for n, c in rows for k, v in c.items()}
    lines += ["", "Every run's wall time (s): " + json.dumps(walls)]
    busy = [c[k].get("other_cores_busy") for _, c in rows for k in c]
    busy = [b for b in busy if b is not None]
    if busy:
        lines += ["", f"Other processes kept up to {max(busy):.1f} cores busy meanwhile."]
    text = "\n".join(lines) + "\n"
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
