"""Precision benchmark: ``nrc analyze --precision exact`` against ``--precision mixed``.

For each workload (default: ``mlp512``, a 512-wide 6-layer MLP, at N = 2·10^5) runs, as
separate, freshly started processes and interleaved (forward, exact, mixed, forward, exact,
mixed, ...) so that drift in the machine's load hits every variant alike:

* ``forward`` the bare forward pass over the same file (benchmarks/bare_forward.py): the floor;
* ``exact``   ``python -m nrc_cli analyze CKPT --data DATA --format json -o ... --precision exact``;
* ``mixed``   the same with ``--precision mixed``.

Each process is measured by a fresh ``benchmarks/measure.py`` (wall and CPU time, peak RSS,
sampled anonymous memory, the cores other processes kept busy). The report gives, per variant,
the median and the spread of the repeats, the exact ÷ mixed ratio of the medians and of each
interleaved pair, and the largest difference between the two precisions' metrics (absolute,
relative, and as a share of the documented bound 1e-5 + 1e-4·|exact|).

    .venv/bin/python benchmarks/bench_precision.py                    # mlp512, N = 2e5, 3 repeats
    .venv/bin/python benchmarks/bench_precision.py --workloads mlp512,wide --n 1e5 --repeat 5
    .venv/bin/python benchmarks/bench_precision.py --quick            # smoke run, N = 4096
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402
from bench_scale import calibrate, machine_info, parse_n, snapshot_package  # noqa: E402

VARIANTS = ("forward", "exact", "mixed")
BOUND_ABS, BOUND_REL = 1e-5, 1e-4


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def command(variant: str, w: common.Workload, ckpt: Path, data: Path, n: int, out: Path, args):
    py = sys.executable
    bs = str(args.batch_size)
    if variant == "forward":
        cmd = [py, str(HERE / "bare_forward.py"), "--factory", w.factory, "--kwargs", w.kwargs_json]
        cmd += ["--ckpt", str(ckpt), "--data", str(data), "--n", str(n), "--batch-size", bs]
        return [*cmd, "--json", str(out), "--device", args.device]
    cmd = [py, "-m", "nrc_cli", "analyze", str(ckpt), "--data", str(data), "--batch-size", bs]
    cmd += ["--max-samples", str(n), "--format", "json", "-o", str(out), "--quiet"]
    cmd += ["--device", args.device, "--precision", variant, *shlex.split(args.nrc_args)]
    if w.arch:
        cmd += ["--arch", f"{HERE / 'models.py'}:{w.factory}", "--arch-kwargs", w.kwargs_json]
    return cmd


def measure(cmd: list[str], stem: Path, env: dict, cwd: Path) -> dict:
    mjson = stem.with_suffix(".measure.json")
    wrapper = [sys.executable, str(HERE / "measure.py"), "--json", str(mjson)]
    wrapper += ["--log", str(stem.with_suffix(".log")), "--"]
    subprocess.run([*wrapper, *cmd], check=True, env=env, cwd=cwd)
    with open(mjson) as f:
        return json.load(f)


def bound_share(exact: dict, mixed: dict) -> tuple[float, str]:
    """The largest |Δ| / (1e-5 + 1e-4·|exact|) over every metric, and where."""
    worst, where = 0.0, ""
    by_name = {r["layer"]: r for r in mixed["layers"]}
    pairs = [(f"summary.{k}", v, mixed["summary"].get(k)) for k, v in exact["summary"].items()]
    for row in exact["layers"]:
        pairs += [(f"{row['layer']}.{k}", v, by_name[row["layer"]].get(k)) for k, v in row.items()]
    for key, a, b in pairs:
        if not isinstance(a, float) or not isinstance(b, float) or key.endswith("nrc3_gamma"):
            continue
        share = abs(a - b) / (BOUND_ABS + BOUND_REL * abs(a))
        if share > worst:
            worst, where = share, key
    return worst, where


def fmt(s: float) -> str:
    return f"{s:.1f}" if s >= 10 else f"{s:.2f}"


def spread(values: list[float]) -> str:
    return f"{fmt(min(values))}–{fmt(max(values))}"


def report(args, info: dict, results: dict, elapsed: float | None) -> str:
    lines = ["# nrc precision benchmark: exact vs mixed", ""]
    if elapsed is None:
        lines += ["_(in progress: partial results)_", ""]
    lines += [
        f"- date: {info['date']}",
        f"- machine: {info['cpu']}, {info['cores']} cores; Python {info['python']}, torch "
        f"{info['torch']} ({info['torch_threads']} threads); matmul rate at start: "
        f"{info['gflops']['f32'] / 1e9:.0f} GFLOP/s float32, "
        f"{info['gflops']['f64'] / 1e9:.0f} GFLOP/s float64",
        f"- device: `{args.device}`" + (f" ({info['gpu']})" if args.device != "cpu" else ""),
        f"- nrc {info['nrc']}",
        f"- batch size {args.batch_size}; {args.repeat} interleaved repeat(s) of "
        f"{', '.join(args.variants)}, each a fresh process, after one untimed warm-up each",
        *([f"- extra nrc arguments: `{args.nrc_args}`"] if args.nrc_args else []),
        f"- forward pass threads: {args.floor_threads or 'torch default'}; load: the 1-minute "
        "load average before each run, in run order",
        "",
        "| workload | N | variant | wall s: median (min–max) | each run, wall s | CPU s | "
        "peak RSS MB | others busy | load | wall ÷ floor |",
        "|---|---:|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    summary = []
    for (name, n), runs in results.items():
        med = {}
        for variant in args.variants:
            ms = [r["measure"] for r in runs.get(variant, [])]
            if not ms:
                continue
            walls = [m["wall_s"] for m in ms]
            loads = [r["load"] for r in runs[variant]]
            med[variant] = statistics.median(walls)
            floor = med.get("forward")
            ratio = f"{med[variant] / floor:.2f}×" if floor else "–"
            lines.append(
                f"| {name} | {n:,} | {variant} | {fmt(med[variant])} ({spread(walls)}) | "
                f"{' / '.join(fmt(x) for x in walls)} | "
                f"{fmt(statistics.median(m['cpu_s'] for m in ms))} | "
                f"{statistics.median(m['maxrss_mb'] for m in ms):.0f} | "
                f"{statistics.median((m['other_cores_busy'] or 0) for m in ms):.2f} | "
                f"{' / '.join(f'{load:.1f}' for load in loads)} | {ratio} |"
            )
        ex, mx = runs.get("exact", []), runs.get("mixed", [])
        if ex and mx:
            pairs = [
                a["measure"]["wall_s"] / b["measure"]["wall_s"]
                for a, b in zip(ex, mx, strict=False)
            ]
            cpu = statistics.median(r["measure"]["cpu_s"] for r in ex) / statistics.median(
                r["measure"]["cpu_s"] for r in mx
            )
            cmp = common.compare_metrics(ex[0]["output"], mx[0]["output"])
            share, where = bound_share(ex[0]["output"], mx[0]["output"])
            summary += [
                f"- **{name}, N = {n:,}: exact ÷ mixed = {med['exact'] / med['mixed']:.2f}×** "
                f"(medians of wall time; interleaved pairs {' / '.join(f'{p:.2f}' for p in pairs)}"
                f", i.e. {min(pairs):.2f}–{max(pairs):.2f}×; CPU time {cpu:.2f}×)",
                f"  - largest metric difference, mixed vs exact: max |Δ| = {cmp['max_abs']:.1e} at "
                f"{cmp['max_abs_at']}; max relative {cmp['max_rel']:.1e} at {cmp['max_rel_at']}; "
                f"{share:.3f} of the bound 1e-5 + 1e-4·|exact| (at {where}) over "
                f"{cmp['compared']} values",
            ]
    lines += ["", *summary, ""]
    if elapsed is not None:
        lines.append(f"Total benchmark time: {elapsed / 60:.1f} min.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    ap.add_argument("--workloads", default="mlp512", help="comma list of mlp512, mlp, wide, conv")
    ap.add_argument(
        "--floor-threads", type=int, default=0, help="threads of the forward pass (0: torch's)"
    )
    ap.add_argument("--n", type=parse_n, default=200_000, help="samples per run")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved repeats")
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    ap.add_argument("--nrc-args", default="", help="extra arguments for both nrc variants")
    ap.add_argument("--no-floor", dest="floor", action="store_false", help="skip the forward pass")
    ap.add_argument("--quick", action="store_true", help="smoke run: N = 4096, 1 repeat")
    ap.add_argument("--out-dir", default=str(HERE / "out"), help="cache for data and run logs")
    ap.add_argument("--results", default=None, help="report (default OUT_DIR/precision.md)")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.repeat = 4096, 1
    args.variants = list(VARIANTS if args.floor else VARIANTS[1:])
    out = Path(args.out_dir).resolve()
    results_path = Path(args.results or out / "precision.md")
    data_dir, run_dir = out / "data", out / "runs" / results_path.stem
    data_dir.mkdir(parents=True, exist_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    all_workloads = common.workloads()
    names = [w.strip() for w in args.workloads.split(",") if w.strip()]
    for name in names:
        if name not in all_workloads:
            ap.error(f"--workloads: expected mlp512, mlp, wide or conv, found {name!r}")

    info = machine_info()
    info["gflops"] = calibrate()
    env = dict(os.environ, CI="1")
    snap = out / "nrc_snapshot" / f"run-{os.getpid()}"
    path, digest = snapshot_package(snap)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(path), os.environ.get("PYTHONPATH")]))
    env_for = dict.fromkeys(VARIANTS, env)
    if args.floor_threads:
        env_for["forward"] = dict(env, OMP_NUM_THREADS=str(args.floor_threads))
    info["nrc"] += f"; measured from a snapshot of nrc_cli/ (sha256 {digest[:12]})"
    started = time.perf_counter()
    results: dict[tuple[str, int], dict[str, list]] = {}
    try:
        for name in names:
            w = all_workloads[name]
            ckpt = data_dir / f"{w.tag()}.safetensors"
            if not ckpt.exists():
                common.make_checkpoint(w, ckpt)
            for n in (args.batch_size, args.n):
                data = data_dir / f"{w.tag()}_n{n}.npz"
                if not data.exists():
                    log(f"generating {data.name} ...")
                    common.generate_data(w, n, data)
            small = data_dir / f"{w.tag()}_n{args.batch_size}.npz"
            data = data_dir / f"{w.tag()}_n{args.n}.npz"
            for variant in args.variants:  # warm-up: imports, caches, allocator
                cmd = command(variant, w, ckpt, small, args.batch_size, run_dir / "warm.json", args)
                subprocess.run(cmd, check=False, capture_output=True, env=env, cwd=out)
            with open(data, "rb") as f:  # into the page cache
                while f.read(1 << 24):
                    pass
            cell = results.setdefault((name, args.n), {})
            for rep in range(args.repeat):
                for variant in args.variants:
                    stem = run_dir / f"{name}_n{args.n}_{variant}_{rep}"
                    out_json = stem.with_suffix(".out.json")
                    cmd = command(variant, w, ckpt, data, args.n, out_json, args)
                    load = os.getloadavg()[0]
                    m = measure(cmd, stem, env_for[variant], out)
                    if m["rc"] != 0:
                        raise SystemExit(f"{variant} failed (exit {m['rc']}): see {stem}.log")
                    with open(out_json) as f:
                        output = json.load(f)
                    cell.setdefault(variant, []).append(
                        {"measure": m, "output": output, "load": load}
                    )
                    log(
                        f"{name} N={args.n:,} {variant:7s} run {rep + 1}: {m['wall_s']:.1f} s "
                        f"wall, {m['cpu_s']:.1f} s CPU, {m['maxrss_mb']:.0f} MB, others busy "
                        f"{m['other_cores_busy'] or 0:.2f}, load before {load:.2f}"
                    )
                    results_path.write_text(report(args, info, results, None))
    finally:
        import shutil

        shutil.rmtree(snap, ignore_errors=True)
    text = report(args, info, results, time.perf_counter() - started)
    results_path.write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
