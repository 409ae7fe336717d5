"""``nrc analyze``: checkpoint + data -> per-layer Deep NRC report."""

from __future__ import annotations

import typer
from rich.markup import escape

from nrc_cli.cli import _options as o
from nrc_cli.cli._console import progress_enabled, stderr_console, stdout_to_stderr
from nrc_cli.cli._output import emit
from nrc_cli.metrics.summary import DEFAULT_COLLAPSE_RULE
from nrc_cli.pipeline import AnalyzeConfig, run
from nrc_cli.report.table import render
from nrc_cli.report.writers import (
    check_not_input,
    check_output_path,
    csv_text,
    json_text,
    parquet_bytes,
    resolve_format,
)
from nrc_cli.results import Results

# The analysis options every analyzing command (analyze, check, audit) takes, by parameter name.
ANALYSIS_OPTIONS = (
    "x_key",
    "y_key",
    "batch_size",
    "max_samples",
    "rank",
    "collapse_rule",
    "arch",
    "arch_kwargs",
    "activation",
    "layers",
    "exclude",
    "inputs",
    "mask_key",
    "output_key",
    "no_prediction",
    "svd",
    "oversample",
    "power_iters",
    "seed",
    "device",
    "dtype",
    "memory_budget",
)


def build_config(checkpoint: str, data: str, options: dict) -> AnalyzeConfig:
    """The frozen analysis config from a command's parameters.

    ``options`` is the command's ``locals()`` (or any mapping holding every name of
    ``ANALYSIS_OPTIONS``); other entries are ignored, so each command declares the shared
    options once in its signature and passes them on in one line.
    """
    opt = {name: options[name] for name in ANALYSIS_OPTIONS}
    config = AnalyzeConfig(
        checkpoint=checkpoint,
        data=data,
        x_key=opt["x_key"],
        y_key=opt["y_key"],
        batch_size=opt["batch_size"],
        max_samples=opt["max_samples"],
        rank=opt["rank"],
        collapse_rule=opt["collapse_rule"],
        arch=opt["arch"],
        arch_kwargs=opt["arch_kwargs"],
        activation=opt["activation"],
        svd=opt["svd"],
        oversample=opt["oversample"],
        power_iters=opt["power_iters"],
        seed=opt["seed"],
        device=opt["device"],
        dtype=opt["dtype"],
        layers=tuple(opt["layers"] or ()),
        exclude=tuple(opt["exclude"] or ()),
        memory_budget=opt["memory_budget"],
        output_key=opt["output_key"],
        prediction=not opt["no_prediction"],
        inputs=tuple(opt["inputs"] or ()),
        mask_key=opt["mask_key"],
    )
    config.validate()
    return config


def run_with_progress(config: AnalyzeConfig, *, quiet: bool, threads: int | None) -> Results:
    """Run the pipeline, with a transient progress bar on an interactive stderr."""
    if threads is not None:
        import torch

        if threads < 1:
            from nrc_cli.errors import ConfigError

            raise ConfigError(f"--threads: expected an integer >= 1, found {threads}")
        torch.set_num_threads(threads)

    def on_plan(plan: dict) -> None:
        if not quiet:
            for line in describe_plan(plan):
                stderr_console().print(escape(line), style="dim")

    with stdout_to_stderr():
        results = _run(config, quiet, on_plan)
    say_messages(results, quiet=quiet)
    return results


def say_messages(results: Results, *, quiet: bool) -> None:
    """The run's warnings (always) and notes (unless --quiet), one stderr line each."""
    console = stderr_console()
    if not quiet:
        for line in results.summary.get("notes") or ():
            console.print(escape(f"note: {line}"), style="dim", soft_wrap=True)
    for line in results.summary.get("warnings") or ():
        console.print(escape(f"warning: {line}"), style="yellow", soft_wrap=True)


def _run(config: AnalyzeConfig, quiet: bool, on_plan) -> Results:
    if not progress_enabled(quiet):
        return run(config, on_plan=on_plan)
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("data pass"),
        BarColumn(),
        TextColumn("{task.completed:,}/{task.total:,} samples"),
        TimeRemainingColumn(),
        console=stderr_console(),
        transient=True,
    ) as bar:
        task = bar.add_task("pass", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        return run(config, progress=progress, on_plan=on_plan)


def describe_plan(plan: dict) -> list[str]:
    """Short stderr lines about a plan; nothing for the common one-pass, all-exact case."""
    layers = plan["layers"]
    special = [row for row in layers if row["accumulator"] != "exact" or row["spectrum"] != "exact"]
    if plan["passes"] == 1 and not special:
        return []
    lines = [f"plan: {plan['passes']} data pass(es) within memory budget {plan['memory_budget']}"]
    for row in layers:
        size = f", sketch size {row['sketch_size']}" if row["sketch_size"] else ""
        lines.append(
            f"  {row['layer']}: pass {row['pass']}, {row['accumulator']} accumulator, "
            f"{row['spectrum']} spectrum{size}, {row['bytes'] / 1e6:.1f} MB"
        )
    return lines


def emit_results(results: Results, fmt: str, output: str | None) -> None:
    emit(
        fmt,
        output,
        text=lambda: (
            json_text(results.to_dict()) if fmt == "json" else csv_text(results.to_frame())
        ),
        render=lambda: render(results),
        binary=lambda: parquet_bytes(results.to_frame()),
    )


def analyze(
    checkpoint: o.Checkpoint,
    data: o.Data,
    x_key: o.XKey = "x",
    y_key: o.YKey = "y",
    batch_size: o.BatchSize = 1024,
    max_samples: o.MaxSamples = None,
    rank: o.Rank = None,
    collapse_rule: o.CollapseRuleOpt = DEFAULT_COLLAPSE_RULE,
    arch: o.Arch = None,
    arch_kwargs: o.ArchKwargs = None,
    activation: o.Activation = None,
    layers: o.Layers = None,
    exclude: o.Exclude = None,
    inputs: o.Inputs = None,
    mask_key: o.MaskKey = None,
    output_key: o.OutputKey = None,
    no_prediction: o.NoPrediction = False,
    svd: o.Svd = "auto",
    oversample: o.Oversample = 10,
    power_iters: o.PowerIters = 4,
    seed: o.Seed = 0,
    device: o.Device = "auto",
    dtype: o.Dtype = "float32",
    memory_budget: o.MemoryBudget = None,
    threads: o.Threads = None,
    format: o.Format = None,
    output: o.Output = None,
    quiet: o.Quiet = False,
    debug: o.Debug = False,
) -> None:
    """Stream DATA through CHECKPOINT once and report Deep NRC for every weight layer."""
    fmt = resolve_format(format, output)
    check_output_path(output)
    check_not_input(output, {"the checkpoint": checkpoint, "--data": data})
    config = build_config(checkpoint, data, locals())
    results = run_with_progress(config, quiet=quiet, threads=threads)
    emit_results(results, fmt, output)


def register(app: typer.Typer) -> None:
    app.command("analyze")(analyze)
