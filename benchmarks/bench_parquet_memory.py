"""Peak memory of ``nrc analyze`` on a Parquet file larger than 1 GB, through a data spec.

    python benchmarks/bench_parquet_memory.py [--dir DIR] [--gb 1.1] [--batch-size 4096] [--keep]

Writes a Parquet file of float32 columns ``f0..f63`` (inputs) and ``y0, y1`` (targets), one row
group at a time so that generating it never holds more than one row group, plus a small MLP
checkpoint (``model.safetensors``, keys ``net.0.weight`` ... that ``nrc`` infers) and two data
specs: the whole file, and its first tenth (``[range] stop``). Then runs ``nrc analyze`` on each
in a fresh child process and prints a markdown table of the file size, the rows analysed, the
child's peak resident set size (``ru_maxrss`` of that child, from ``os.wait4``), its peak anonymous memory (``RssAnon`` from ``/proc/<pid>/status`` sampled every
20 ms: heap and tensors, without file pages) and the wall time. Memory that does not grow from
the tenth to the whole file is memory that does not grow with N. The big file is deleted at the
end (``--keep`` keeps it).

Until ``nrc_cli.pipeline.prepare`` opens data through ``nrc_cli.io.data.open_dataset`` (and so
accepts a ``.toml`` spec for ``--data``), the child runs the same command with that one call
switched in; the table's note says which ran.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

N_INPUTS = 64
N_TARGETS = 2
GROUP_ROWS = 1 << 16  # rows per Parquet row group (about 17 MB of float32 here)

# Runs `nrc` with prepare() reading data through open_dataset, for a pipeline not yet switched.
_SHIM = """
import sys
import nrc_cli.pipeline as pipeline
from nrc_cli.io.data import open_dataset
pipeline.NpzDataset = lambda path, **kw: open_dataset(path, **kw)
from nrc_cli.cli import main
sys.argv = ["nrc", *sys.argv[1:]]
main()
"""


def _pipeline_reads_specs() -> bool:
    import nrc_cli.pipeline

    return hasattr(nrc_cli.pipeline, "open_dataset")


def write_parquet(path: Path, target_bytes: float, seed: int = 0) -> int:
    """Write about ``target_bytes`` of float32 columns, one row group at a time; return N."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = [f"f{j}" for j in range(N_INPUTS)] + [f"y{j}" for j in range(N_TARGETS)]
    row_bytes = 4 * len(names)
    n = int(target_bytes // row_bytes)
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((N_INPUTS, N_TARGETS)).astype(np.float32) / 8
    schema = pa.schema([(c, pa.float32()) for c in names])
    # Uncompressed: random floats do not compress, and the size on disk is then the data size.
    with pq.ParquetWriter(
        path, schema, compression="none", use_dictionary=False, write_statistics=False
    ) as writer:
        for start in range(0, n, GROUP_ROWS):
            rows = min(GROUP_ROWS, n - start)
            x = rng.standard_normal((rows, N_INPUTS), dtype=np.float32)
            y = np.tanh(x @ w) + 0.1 * rng.standard_normal((rows, N_TARGETS), dtype=np.float32)
            cols = [x[:, j] for j in range(N_INPUTS)] + [y[:, j] for j in range(N_TARGETS)]
            writer.write_table(pa.Table.from_arrays(cols, schema=schema), row_group_size=rows)
    return n


def write_checkpoint(path: Path, seed: int = 0) -> None:
    """A plain MLP 64 -> 64 -> 64 -> 2 as safetensors; nrc infers it from the keys."""
    import torch
    from safetensors.torch import save_file
    from torch import nn

    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Linear(N_INPUTS, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, N_TARGETS)
    )
    save_file({f"net.{k}": v.contiguous() for k, v in net.state_dict().items()}, str(path))


def write_spec(path: Path, data: Path, stop: int | None = None) -> None:
    text = f'file = "{data.name}"\n[inputs]\ncolumns = "f*"\n[targets]\ncolumns = ["y0", "y1"]\n'
    if stop is not None:
        text += f"[range]\nstop = {stop}\n"
    path.write_text(text)


def _peak_rss_anon(pid: int, stop: threading.Event, out: dict) -> None:
    status = f"/proc/{pid}/status"
    while not stop.wait(0.02):
        try:
            with open(status) as f:
                for line in f:
                    if line.startswith("RssAnon:"):
                        kb = int(line.split()[1])
                        out["anon_kb"] = max(out.get("anon_kb", 0), kb)
        except (OSError, ValueError):
            return


def run_nrc(args: list[str], shim: bool, workdir: Path) -> dict:
    """Run ``nrc ARGS`` in a child; return its wall time, peak RSS and peak RssAnon."""
    cmd = [sys.executable, "-c", _SHIM, *args] if shim else [sys.executable, "-m", "nrc_cli", *args]
    env = dict(os.environ, CI="1")  # no progress bar
    out_path, err_path = workdir / "stdout.json", workdir / "stderr.txt"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        stop, sampled = threading.Event(), {}
        sampler = threading.Thread(
            target=_peak_rss_anon, args=(proc.pid, stop, sampled), daemon=True
        )
        sampler.start()
        # wait4 gives the resource usage of this one child: ru_maxrss is its own peak RSS.
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        stop.set()
        sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"nrc failed ({proc.returncode}):\n{err_path.read_text()}")
    maxrss_kb = usage.ru_maxrss // (1024 if sys.platform == "darwin" else 1)  # bytes on macOS
    return {
        "wall_s": wall,
        "maxrss_mb": maxrss_kb / 1024,
        "anon_mb": sampled.get("anon_kb", 0) / 1024 or None,
        "json": json.loads(out_path.read_text()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, help="where to write the files (default: a temp dir)")
    ap.add_argument("--gb", type=float, default=1.1, help="size of the Parquet file in GB")
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--keep", action="store_true", help="keep the files")
    opts = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="nrc-parquet-", dir=opts.dir))
    try:
        data = root / "table.parquet"
        t0 = time.perf_counter()
        n = write_parquet(data, opts.gb * 1e9)
        gen_s = time.perf_counter() - t0
        size = data.stat().st_size
        write_checkpoint(root / "model.safetensors")
        write_spec(root / "tenth.toml", data, stop=n // 10)
        write_spec(root / "all.toml", data)
        shim = not _pipeline_reads_specs()
        rows = []
        for spec, count in ((root / "tenth.toml", n // 10), (root / "all.toml", n)):
            args = ["analyze", str(root / "model.safetensors"), "--data", str(spec)]
            args += ["--format", "json", "--batch-size", str(opts.batch_size), "--threads", "2"]
            r = run_nrc(args, shim, root)
            assert r["json"]["summary"]["n_samples"] == count, r["json"]["summary"]
            rows.append((count, r))
    finally:
        if not opts.keep:
            shutil.rmtree(root, ignore_errors=True)

    print(
        f"Parquet: {N_INPUTS + N_TARGETS} float32 columns, uncompressed, row groups of "
        f"{GROUP_ROWS} rows; written in {gen_s:.0f} s. MLP {N_INPUTS}-64-64-{N_TARGETS}, "
        f"--batch-size {opts.batch_size}, --threads 2, CPU."
    )
    if shim:
        print(
            "(nrc ran with prepare() switched to open_dataset: the pipeline does not read "
            "specs yet.)"
        )
    print()
    print("| data | file size | rows analysed | peak RSS | peak RssAnon | wall time |")
    print("|---|---:|---:|---:|---:|---:|")
    for count, r in rows:
        which = "first tenth ([range])" if count < n else "whole file"
        anon = f"{r['anon_mb']:.0f} MB" if r["anon_mb"] else "n/a"
        print(
            f"| {which} | {size / 1e9:.2f} GB | {count:,} | {r['maxrss_mb']:.0f} MB | {anon} | "
            f"{r['wall_s']:.1f} s |"
        )
    if not opts.keep:
        print(f"\n(deleted {root})")
    else:
        print(f"\n(kept {root})")


if __name__ == "__main__":
    main()
