"""Scale benchmark: wall time and peak memory of ``nrc analyze`` against three baselines.

For each workload (an 8-layer MLP, a ResNet-18-style conv net, a model with a 4096-wide layer)
and each sample count N, runs as separate, freshly started processes:

* ``nrc``     ``python -m nrc_cli analyze CKPT --data DATA.npz --format json -o ...``
* ``forward`` a bare forward pass over the same file, same batch size, under inference_mode
  (the floor: no measurement can be cheaper);
* ``naive``   the published per-layer method (benchmarks/naive_baseline.py: one data pass per
  layer, N×N Gram CKA, pinv probe);
* ``inmem``   one pass keeping all layers' pooled features in memory, covariances and eigh
  (benchmarks/inmemory_baseline.py).

Each process is started by a fresh ``benchmarks/measure.py`` wrapper, which reads the child's
peak RSS from ``getrusage(RUSAGE_CHILDREN)``. Data and checkpoints are generated once into
``benchmarks/out/`` (git-ignored) and reused. Prints a markdown report (also written to
``--results``) with the machine, the tables and the acceptance ratios.

    .venv/bin/python benchmarks/bench_scale.py                 # full run (~30 min, idle machine)
    .venv/bin/python benchmarks/bench_scale.py --quick         # smoke run (~2-3 min)
    .venv/bin/python benchmarks/bench_scale.py --workloads mlp --sizes 1e4,1e6
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402

METHODS = ("forward", "nrc", "inmem", "naive")
METHOD_LABEL = {
    "nrc": "nrc analyze",
    "forward": "bare forward (floor)",
    "inmem": "in-memory feature space",
    "naive": "naive (published method)",
}
GB = 1e9
MB = 1024 * 1024


# ------------------------------------------------------------------------------------------------
# Small helpers
# ------------------------------------------------------------------------------------------------


def parse_n(text: str) -> int:
    value = float(text)
    if value < 1 or value != int(value):
        raise argparse.ArgumentTypeError(f"expected a positive integer count, found {text!r}")
    return int(value)


def parse_n_or_zero(text: str) -> int:
    return 0 if float(text) == 0 else parse_n(text)


def parse_sizes(text: str) -> list[int]:
    return sorted({parse_n(t) for t in text.split(",") if t.strip()})


def parse_caps(text: str) -> dict[str, int]:
    caps = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        caps[name.strip()] = parse_n(value)
    return caps


def fmt_n(n: int) -> str:
    if n >= 10 and 10 ** round(math.log10(n)) == n:
        return f"10^{round(math.log10(n))}"
    return f"{n:,}"


def fmt_s(s: float) -> str:
    """Seconds as a bare number (table cells, where the column says the unit)."""
    if s >= 100:
        return f"{s:.0f}"
    if s >= 10:
        return f"{s:.1f}"
    return f"{s:.2f}"


def fmt_dur(s: float) -> str:
    """A duration with its unit, for prose."""
    return f"{s / 60:.0f} min" if s >= 600 else f"{s:.0f} s"


def fmt_bytes(b: float) -> str:
    if b >= 1e12:
        return f"{b / 1e12:.1f} TB"
    if b >= GB:
        return f"{b / GB:.1f} GB"
    return f"{b / 1e6:.0f} MB"


def mem_available() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 8 * GB


def machine_info() -> dict:
    import numpy as np
    import torch

    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    ram = 0
    try:
        with open("/proc/meminfo") as f:
            ram = int(f.readline().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        from importlib.metadata import version

        nrc_version = version("nrc-cli")
    except Exception:
        nrc_version = "unknown"
    git = "unknown"
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "nrc_cli"],
            cwd=REPO,
            capture_output=True,
            text=True,
        ).stdout.splitlines()
        git = f"{head}" + (f" + {len(dirty)} uncommitted change(s) in nrc_cli/" if dirty else "")
    except OSError:
        pass
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram": ram,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "torch_threads": torch.get_num_threads(),
        "nrc": f"{nrc_version} (git {git})",
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def snapshot_package(dest: Path) -> tuple[Path, str]:
    """Copy nrc_cli/ to ``dest``/nrc_cli, so that one run measures one version of the code.

    The working tree may change while a long benchmark runs; the measured commands get ``dest``
    first on PYTHONPATH (and run from the output folder, so the tree's own copy is not found
    through the current directory). ``dest`` is private to one run and removed at its end.
    Returns the folder and a digest of the copied sources.
    """
    import hashlib
    import shutil

    target = dest / "nrc_cli"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(REPO / "nrc_cli", target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    h = hashlib.sha256()
    for f in sorted(target.rglob("*")):
        if f.is_file():
            h.update(str(f.relative_to(target)).encode())
            h.update(f.read_bytes())
    return dest, h.hexdigest()


def calibrate() -> dict[str, float]:
    """Matrix-multiply rate (FLOP/s) in float32 and float64, for a priori time estimates."""
    import torch

    rates = {}
    for key, dtype in (("f32", torch.float32), ("f64", torch.float64)):
        a = torch.randn(1024, 1024, dtype=dtype)
        a @ a
        t, reps = time.perf_counter(), 0
        while time.perf_counter() - t < 0.5:
            a @ a
            reps += 1
        rates[key] = reps * 2 * 1024**3 / (time.perf_counter() - t)
    return rates


# ------------------------------------------------------------------------------------------------
# Cells
# ------------------------------------------------------------------------------------------------


@dataclass
class Cell:
    workload: str
    n: int
    method: str
    status: str = "pending"  # ok | skipped | failed
    reason: str = ""
    measure: dict = field(default_factory=dict)  # the run with the median wall time
    output: dict = field(default_factory=dict)
    runs: list[dict] = field(default_factory=list)  # every repetition's measurement

    @property
    def wall(self) -> float | None:
        return self.measure.get("wall_s") if self.status == "ok" else None


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out_dir).resolve()
        self.data_dir = self.out / "data"
        # Per report, so that two runs with different --results never share files.
        self.run_dir = self.out / "runs" / Path(args.results).stem
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.all_workloads = common.workloads(conv_width=args.conv_width)
        self.cells: list[Cell] = []
        self.notes: list[str] = []
        self.info = machine_info()
        self.started = time.perf_counter()
        self.meta: dict[str, dict] = {}
        self.gflops = calibrate()
        self.info["gflops"] = self.gflops
        self.env = dict(os.environ, CI="1")  # CI: no progress bars
        self.snapshot: Path | None = None
        if args.snapshot:
            self.snapshot = self.out / "nrc_snapshot" / f"run-{os.getpid()}"
            snap, digest = snapshot_package(self.snapshot)
            self.env["PYTHONPATH"] = os.pathsep.join(
                filter(None, [str(snap), os.environ.get("PYTHONPATH")])
            )
            self.info["nrc"] += f"; measured from a snapshot of nrc_cli/ (sha256 {digest[:12]})"

    # -- files ----------------------------------------------------------------------------------

    def checkpoint(self, w: common.Workload) -> Path:
        path = self.data_dir / f"{w.tag()}.safetensors"
        if not path.exists():
            common.make_checkpoint(w, path)
        return path

    def data(self, w: common.Workload, n: int) -> Path:
        path = self.data_dir / f"{w.tag()}_n{n}.npz"
        if not path.exists():
            t = time.perf_counter()
            log(f"  generating {path.name} ({fmt_bytes(n * math.prod(w.x_shape) * 4)}) ...")
            common.generate_data(w, n, path)
            log(f"  generated in {time.perf_counter() - t:.1f} s")
        return path

    @staticmethod
    def warm_page_cache(path: Path) -> None:
        with open(path, "rb") as f:
            while f.read(1 << 24):
                pass

    # -- commands -------------------------------------------------------------------------------

    def command(self, w, method, ckpt, data, n, out_json) -> list[str]:
        py = sys.executable
        bs = str(self.args.batch_size)
        if method == "nrc":
            cmd = [py, "-m", "nrc_cli", "analyze", str(ckpt), "--data", str(data)]
            cmd += ["--batch-size", bs, "--max-samples", str(n), "--format", "json"]
            cmd += ["-o", str(out_json), "--quiet", "--device", self.args.device]
            if w.arch:
                cmd += ["--arch", f"{HERE / 'models.py'}:{w.factory}"]
                cmd += ["--arch-kwargs", w.kwargs_json]
            cmd += shlex.split(self.args.nrc_args)
            return cmd
        script = {
            "forward": "bare_forward.py",
            "inmem": "inmemory_baseline.py",
            "naive": "naive_baseline.py",
        }[method]
        cmd = [py, str(HERE / script), "--factory", w.factory, "--kwargs", w.kwargs_json]
        cmd += ["--ckpt", str(ckpt), "--data", str(data), "--n", str(n), "--batch-size", bs]
        cmd += ["--json", str(out_json)]
        if method == "forward":
            cmd += ["--device", self.args.device]
        return cmd

    def measure(self, cmd: list[str], stem: str, timeout: float | None) -> dict:
        mjson = self.run_dir / f"{stem}.measure.json"
        logf = self.run_dir / f"{stem}.log"
        wrapper = [sys.executable, str(HERE / "measure.py"), "--json", str(mjson)]
        wrapper += ["--log", str(logf)]
        if timeout:
            wrapper += ["--timeout", str(timeout)]
        subprocess.run([*wrapper, "--", *cmd], check=True, env=self.env, cwd=self.out)
        with open(mjson) as f:
            return json.load(f)

    # -- skip rules -----------------------------------------------------------------------------

    def skip_reason(self, w: common.Workload, n: int, method: str) -> str | None:
        meta = self.meta[w.name]
        widths = meta["widths"]
        avail = mem_available() * 0.85
        if method in ("inmem", "naive") and self.args.device != "cpu":
            return "CPU only (these baselines are measured on the CPU)"
        if method == "inmem":
            item, kind = (4, "float32") if len(w.x_shape) == 1 else (8, "float64")
            need = n * sum(widths) * item + n * max(widths) * (item + 8 + 8)
            if need > avail:
                return (
                    f"features {fmt_n(n)}×{sum(widths)} {kind} + one layer in float64 "
                    f"= {fmt_bytes(need)} > {fmt_bytes(avail)} free"
                )
        if method == "naive":
            gram = n * n * 8
            raw = n * meta["max_raw"] * 4 * 2
            need = 6 * gram + raw
            if need > avail:
                return (
                    f"N×N float64 Gram = {fmt_bytes(gram)} (6 such matrices live) "
                    f"> {fmt_bytes(avail)} free"
                )
        if method == "nrc":
            return None  # nrc runs wherever the workload's --max-n allows
        est, how = self.estimate(w, n, method), "extrapolated from smaller N"
        if est is None and method == "naive":
            est, how = self.estimate_naive(w, n), "from the measured floor and GFLOP/s"
        if est is not None and est > self.args.cell_budget:
            return (
                f"time: est. {fmt_dur(est)} ({how}) > cell budget {fmt_dur(self.args.cell_budget)}"
            )
        return None

    def estimate_naive(self, w: common.Workload, n: int) -> float | None:
        """A priori: one forward pass per layer plus 7 N×N×N float64 products per layer."""
        floor = self.find(w.name, n, "forward")
        if floor is None or not floor.wall:
            return None
        widths = self.meta[w.name]["widths"]
        pass_s = floor.output.get("pass_s", floor.wall)
        cka = len(widths) * 7 * 2 * float(n) ** 3 / self.gflops["f64"]
        dense = sum(10 * n * p * p + 20 * p**3 for p in widths) / self.gflops["f64"]
        return len(widths) * pass_s + cka + dense

    def estimate(self, w: common.Workload, n: int, method: str) -> float | None:
        done = sorted(
            (c for c in self.cells if c.workload == w.name and c.method == method and c.wall),
            key=lambda c: c.n,
        )
        done = [c for c in done if c.n < n]
        if not done:
            return None
        last = done[-1]
        r = n / last.n
        if method == "naive":
            t = last.output.get("timings", {})
            fixed = last.wall - t.get("total_s", last.wall) + t.get("weight_s", 0.0)
            linear = t.get("pass_s", 0) + t.get("cov_svd_s", 0) + t.get("probe_s", 0)
            return fixed + linear * r + t.get("cka_s", 0) * r**3
        if len(done) >= 2:
            a, b = done[-2], done[-1]
            slope = (b.wall - a.wall) / (b.n - a.n)
            if slope > 0:
                return b.wall + slope * (n - b.n)
        return last.wall * r

    # -- the run --------------------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._run()
        finally:
            if self.snapshot is not None:
                import shutil

                shutil.rmtree(self.snapshot, ignore_errors=True)

    def _run(self) -> None:
        args = self.args
        for name in args.workloads:
            w = self.all_workloads[name]
            model = w.build()
            widths = common.weight_layer_widths(model, w.x_shape)
            max_raw = max(widths) * (math.prod(w.x_shape[1:]) if len(w.x_shape) > 1 else 1)
            self.meta[name] = {
                "widths": widths,
                "max_raw": max_raw,
                "flops": common.forward_flops(model, w.x_shape),
                "params": sum(p.numel() for p in model.parameters()),
            }
            del model
            cap = args.max_n.get(name)
            sizes = list(args.sizes)
            if name == "mlp" and args.compare_n:
                sizes.append(args.compare_n)
            sizes = sorted(set(sizes))
            log(f"== {name}: {w.description}; sizes {', '.join(fmt_n(s) for s in sizes)}")
            ckpt = self.checkpoint(w)
            self.warm_up(w, ckpt)
            for n in sizes:
                if cap is not None and n > cap:
                    for method in args.methods:
                        self.cells.append(
                            Cell(name, n, method, "skipped", self.cap_reason(w, n, cap))
                        )
                    self.write_report()
                    continue
                data = self.data(w, n)
                self.warm_page_cache(data)
                for rep in range(args.repeat):  # interleaved, so drift hits every method alike
                    for method in args.methods:
                        self.run_cell(w, n, method, ckpt, data, rep)
                        self.write_report()
        self.write_report(final=True)

    def cap_reason(self, w: common.Workload, n: int, cap: int) -> str:
        size = n * math.prod(w.x_shape) * 4
        est = self.estimate(w, n, "nrc")
        parts = [f"N > --max-n {w.name}={fmt_n(cap)}"]
        if est is not None:
            parts.append(f"nrc alone est. {fmt_dur(est)}")
        parts.append(f"data file {fmt_bytes(size)}")
        return "; ".join(parts)

    def warm_up(self, w: common.Workload, ckpt: Path) -> None:
        """One untimed run of each method on one batch: imports, caches, allocator."""
        n = self.args.batch_size
        data = self.data(w, n)
        for method in self.args.methods:
            if method == "naive":
                continue  # same imports and model code as the in-memory baseline
            out = self.run_dir / f"warmup_{w.name}_{method}.json"
            cmd = self.command(w, method, ckpt, data, n, out)
            subprocess.run(cmd, check=False, capture_output=True, env=self.env, cwd=self.out)

    def run_cell(self, w, n, method, ckpt, data, rep: int = 0) -> None:
        if rep == 0:
            cell = Cell(w.name, n, method)
            self.cells.append(cell)
            reason = self.skip_reason(w, n, method)
            if reason:
                cell.status, cell.reason = "skipped", reason
                log(f"  {method:8s} N={fmt_n(n):>7s}: skipped ({reason})")
                return
        else:
            cell = self.find(w.name, n, method)
            if cell is None or cell.status != "ok":
                return
        stem = f"{w.tag()}_n{n}_{method}"
        out_json = self.run_dir / f"{stem}.out.json"
        if out_json.exists():
            out_json.unlink()
        cmd = self.command(w, method, ckpt, data, n, out_json)
        # Generous: estimates are rough and the machine may be shared.
        timeout = max(self.args.cell_budget * 3, 1200.0) if method != "nrc" else None
        m = self.measure(cmd, stem, timeout)
        if m["rc"] != 0 or not out_json.exists():
            cell.status, cell.measure = "failed", m
            why = "timed out" if m.get("timed_out") else f"exit code {m['rc']}"
            cell.reason = f"{why}; log: {self.run_dir.relative_to(self.out)}/{stem}.log"
            log(f"  {method:8s} N={fmt_n(n):>7s}: FAILED ({cell.reason})")
            return
        with open(out_json) as f:
            cell.output = json.load(f)
        cell.runs.append(m)
        by_wall = sorted(cell.runs, key=lambda r: r["wall_s"])
        cell.measure = by_wall[(len(by_wall) - 1) // 2]  # median (lower middle for even counts)
        cell.status = "ok"
        log(
            f"  {method:8s} N={fmt_n(n):>7s}: {m['wall_s']:8.1f} s wall, {m['cpu_s']:8.1f} s CPU, "
            f"peak RSS {m['maxrss_mb']:7.0f} MB (others busy: {m['other_cores_busy'] or 0:.2f} "
            f"cores)"
        )

    # -- report ---------------------------------------------------------------------------------

    def find(self, workload: str, n: int, method: str) -> Cell | None:
        for c in self.cells:
            if (c.workload, c.n, c.method) == (workload, n, method):
                return c
        return None

    def report(self, final: bool) -> str:
        a, info = self.args, self.info
        lines = ["# nrc scale benchmark", ""]
        if not final:
            lines += ["_(in progress: partial results)_", ""]
        lines += [
            f"- date: {info['date']}",
            f"- machine: {info['cpu']}, {info['cores']} cores, "
            f"{info['ram'] / 2**30:.1f} GiB RAM; Python {info['python']}, torch {info['torch']} "
            f"({info['torch_threads']} threads, the default), numpy {info['numpy']}; "
            f"matmul rate at start: {info['gflops']['f32'] / 1e9:.0f} GFLOP/s float32, "
            f"{info['gflops']['f64'] / 1e9:.0f} GFLOP/s float64",
            f"- device: `{a.device}`" + (f" ({info['gpu']})" if a.device != "cpu" else ""),
            f"- nrc {info['nrc']}",
            f"- command: `{' '.join(shlex.quote(x) for x in a.argv)}`",
            f"- batch size {a.batch_size} everywhere; each cell is a fresh process "
            f"({a.repeat} run(s) per cell, median reported) after one "
            "untimed warm-up run per workload; data files pre-read into the page cache; "
            f"baselines skipped when their estimate exceeds {fmt_dur(a.cell_budget)} or free RAM",
        ]
        if a.nrc_args:
            lines.append(f"- extra nrc arguments: `{a.nrc_args}`")
        lines += ["", "## Workloads", ""]
        for name in a.workloads:
            w, meta = self.all_workloads[name], self.meta.get(name)
            if meta is None:
                continue
            lines.append(
                f"- **{name}**: {w.description}; {meta['params'] / 1e6:.2f} M parameters, "
                f"{meta['flops'] / 1e6:.1f} MFLOP/sample forward, {len(meta['widths'])} weight "
                f"layers, feature widths p = {sorted(set(meta['widths']))}, t = {w.t}"
            )
        lines += ["", "## Results", ""]
        lines += [
            "| workload | N | method | wall s | CPU s | peak RSS MB | peak anon MB | "
            "wall ÷ floor | others busy | note |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for c in sorted(self.cells, key=lambda c: (a.workloads.index(c.workload), c.n)):
            floor = self.find(c.workload, c.n, "forward")
            if c.status != "ok":
                lines.append(
                    f"| {c.workload} | {fmt_n(c.n)} | {METHOD_LABEL[c.method]} | – | – | – | – "
                    f"| – | – | {c.status}: {c.reason} |"
                )
                continue
            m = c.measure
            ratio = f"{c.wall / floor.wall:.2f}×" if floor and floor.wall else "–"
            note = self.cell_note(c)
            if len(c.runs) > 1:
                walls = " / ".join(fmt_s(r["wall_s"]) for r in c.runs)
                note = f"median of {len(c.runs)} runs, wall s: {walls}; {note}"
            lines.append(
                f"| {c.workload} | {fmt_n(c.n)} | {METHOD_LABEL[c.method]} | {fmt_s(m['wall_s'])} "
                f"| {fmt_s(m['cpu_s'])} | {m['maxrss_mb']:.0f} | "
                f"{m['peak_anon_mb_sampled']:.0f} | {ratio} | "
                f"{m['other_cores_busy'] or 0:.2f} | {note} |"
            )
        lines += ["", *self.acceptance(), ""]
        if final:
            lines.append(f"Total benchmark time: {fmt_dur(time.perf_counter() - self.started)}.")
        return "\n".join(lines) + "\n"

    def cell_note(self, c: Cell) -> str:
        t = c.output.get("timings", {})
        if c.method == "naive" and t:
            return (
                f"passes {t['pass_s']:.0f} s, cov+SVD {t['cov_svd_s']:.0f} s, "
                f"N×N CKA {t['cka_s']:.0f} s, W SVD {t['weight_s']:.0f} s, "
                f"pinv probe {t['probe_s']:.0f} s"
            )
        if c.method == "inmem" and t:
            return f"pass {t['pass_s']:.0f} s, covariances+eigh {t['metrics_s']:.0f} s"
        if c.method == "forward" and "pass_s" in c.output:
            return f"pass {c.output['pass_s']:.1f} s"
        if c.method == "nrc":
            s = c.output.get("summary", {})
            return f"svd {s.get('svd', '?')}, passes {s.get('passes', '?')}"
        return ""

    def acceptance(self) -> list[str]:
        out = ["## Acceptance", ""]
        # 1. Peak RSS flat in N (MLP).
        nrc_mlp = sorted(
            (c for c in self.cells if c.workload == "mlp" and c.method == "nrc" and c.wall),
            key=lambda c: c.n,
        )
        big = [c for c in nrc_mlp if c.n >= 10**6]
        small = [c for c in nrc_mlp if c.n == 10**4] or nrc_mlp[:1]
        if big and small and big[-1] is not small[0]:
            lo, hi = small[0], big[-1]
            r = hi.measure["maxrss_mb"] / lo.measure["maxrss_mb"]
            ra = hi.measure["peak_anon_mb_sampled"] / max(lo.measure["peak_anon_mb_sampled"], 1)
            out.append(
                f"- peak RSS of nrc analyze, MLP, N={fmt_n(hi.n)} vs N={fmt_n(lo.n)}: "
                f"{hi.measure['maxrss_mb']:.0f} / {lo.measure['maxrss_mb']:.0f} MB = {r:.3f} "
                f"(limit 1.15): **{'PASS' if r <= 1.15 else 'FAIL'}**; anonymous memory only "
                f"(sampled, without mapped data pages): {ra:.3f}"
            )
        else:
            out.append("- peak RSS N=10^6 vs 10^4 (MLP): not measured in this run")
        # 2. Wall time vs the floor at N = 1e5.
        for name, limit in (("mlp", 3.0), ("conv", 1.5), ("wide", None)):
            c, f = self.find(name, 10**5, "nrc"), self.find(name, 10**5, "forward")
            if c and f and c.wall and f.wall:
                r = c.wall / f.wall
                rc = c.measure["cpu_s"] / f.measure["cpu_s"]
                verdict = (
                    f"(limit {limit}): **{'PASS' if r <= limit else 'FAIL'}**"
                    if limit
                    else "(no limit set; for information)"
                )
                out.append(
                    f"- nrc ÷ bare forward, {name}, N=10^5: wall {c.wall:.1f} / {f.wall:.1f} s "
                    f"= {r:.2f}× {verdict}; CPU time {rc:.2f}×"
                )
            elif name in self.args.workloads:
                out.append(f"- nrc ÷ bare forward, {name}, N=10^5: not measured in this run")
        # 3. Against the naive baseline.
        n = self.args.compare_n
        c, nv = self.find("mlp", n, "nrc"), self.find("mlp", n, "naive")
        if c and nv and c.wall and nv.wall:
            r = nv.wall / c.wall
            t = nv.output.get("timings", {})
            out.append(
                f"- naive ÷ nrc, MLP, N={fmt_n(n)}: wall {nv.wall:.1f} / {c.wall:.1f} s = "
                f"{r:.1f}× (limit ≥ 20×): **{'PASS' if r >= 20 else 'FAIL'}**; CPU time "
                f"{nv.measure['cpu_s'] / c.measure['cpu_s']:.1f}×"
            )
            if t:
                rest = nv.wall - t["cka_s"]
                out.append(
                    f"  - without its O(N³) Gram centring (naive wall − {t['cka_s']:.0f} s "
                    f"of published CKA = {rest:.1f} s, a lower bound for an O(N²·p) centring): "
                    f"{rest / c.wall:.1f}×"
                )
            cmp = common.compare_metrics(c.output, nv.output)
            out.append(
                f"- metrics, nrc vs naive (correct full-feature CKA, affine probe), MLP "
                f"N={fmt_n(n)}: max |Δ| = {cmp['max_abs']:.2e} at {cmp['max_abs_at']} over "
                f"{cmp['compared']} values (limit 1e-6): "
                f"**{'PASS' if cmp['max_abs'] <= 1e-6 else 'FAIL'}**; max relative "
                f"{cmp['max_rel']:.2e} at {cmp['max_rel_at']}"
            )
            per = ", ".join(f"{k} {v:.1e}" for k, v in cmp["per_column_max_abs"].items())
            out.append(f"  - per column max |Δ|: {per}")
        else:
            out.append(f"- naive vs nrc at N={fmt_n(n)} (MLP): not measured in this run")
        # Extra: every in-memory run against nrc on the same data.
        diffs = []
        for cell in self.cells:
            if cell.method == "inmem" and cell.wall:
                c = self.find(cell.workload, cell.n, "nrc")
                if c and c.wall:
                    cmp = common.compare_metrics(c.output, cell.output)
                    diffs.append(
                        f"{cell.workload} N={fmt_n(cell.n)}: {cmp['max_abs']:.1e} "
                        f"({cmp['max_abs_at']})"
                    )
        if diffs:
            out.append(f"- metrics, nrc vs in-memory eigh, max |Δ|: {'; '.join(diffs)}")
        return out

    def write_report(self, final: bool = False) -> None:
        text = self.report(final)
        path = Path(self.args.results)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
        if final:
            print(text, end="")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--quick", action="store_true", help="smoke run: small N, mlp and conv only")
    ap.add_argument("--workloads", default="mlp,conv,wide", help="comma list of mlp, conv, wide")
    ap.add_argument("--sizes", default="1e4,1e5,1e6", help="comma list of sample counts N")
    ap.add_argument(
        "--compare-n",
        type=parse_n_or_zero,
        default=5000,
        help="extra MLP size for the nrc-vs-naive comparison (0: none)",
    )
    ap.add_argument(
        "--max-n",
        default="conv=1e5",
        help="largest N per workload (time budget); larger sizes are listed as skipped",
    )
    ap.add_argument(
        "--methods", default=",".join(METHODS), help="comma list of " + ",".join(METHODS)
    )
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run every cell this many times (interleaved) and report the median wall time",
    )
    ap.add_argument(
        "--conv-width",
        type=int,
        default=16,
        help="base width of the ResNet-18 (standard: 64, hours on 2 cores at N=1e5)",
    )
    ap.add_argument(
        "--cell-budget",
        type=float,
        default=600.0,
        help="skip a baseline cell whose estimated time exceeds this many seconds",
    )
    ap.add_argument(
        "--device",
        default="cpu",
        help="where nrc analyze and the bare forward pass run: cpu or cuda[:i] "
        "(the in-memory and naive baselines are CPU only)",
    )
    ap.add_argument("--nrc-args", default="", help="extra arguments for nrc analyze")
    ap.add_argument(
        "--no-snapshot",
        dest="snapshot",
        action="store_false",
        help="run nrc from the working tree instead of a copy of nrc_cli/ taken at the start",
    )
    ap.add_argument("--out-dir", default=str(HERE / "out"), help="cache for data and run logs")
    ap.add_argument("--results", default=None, help="markdown report (default OUT_DIR/results.md)")
    args = ap.parse_args(argv)
    if args.quick:
        defaults = {"workloads": "mlp,conv", "sizes": "1024", "max_n": "", "cell_budget": 30.0}
        if args.conv_width == ap.get_default("conv_width"):
            args.conv_width = 8
        for key, value in defaults.items():
            if getattr(args, key) == ap.get_default(key):
                setattr(args, key, value)
        if args.compare_n == ap.get_default("compare_n"):
            args.compare_n = 1024
    args.argv = ["benchmarks/bench_scale.py", *argv]
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    args.sizes = parse_sizes(args.sizes)
    args.max_n = parse_caps(args.max_n)
    for w in args.workloads:
        if w not in ("mlp", "conv", "wide"):
            ap.error(f"--workloads: unknown workload {w!r}")
    for m in args.methods:
        if m not in METHODS:
            ap.error(f"--methods: unknown method {m!r}")
    if args.results is None:
        args.results = str(Path(args.out_dir) / "results.md")
    Bench(args).run()


if __name__ == "__main__":
    main()
