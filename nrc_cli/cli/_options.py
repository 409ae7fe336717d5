"""Options declared once and reused by every command, so help text and defaults never drift."""

from __future__ import annotations

from typing import Annotated

import typer

from nrc_cli.metrics.summary import DEFAULT_COLLAPSE_RULE

Checkpoint = Annotated[
    str,
    typer.Argument(
        help="Checkpoint: .safetensors, .pt/.pth, a model folder (single or sharded "
        "safetensors), or a *.index.json."
    ),
]
Data = Annotated[
    str,
    typer.Option("--data", "-d", help="Data set: .npz with arrays x and y, or a .toml data spec."),
]
XKey = Annotated[str, typer.Option("--x-key", help="Name of the input array in the data file.")]
YKey = Annotated[str, typer.Option("--y-key", help="Name of the target array in the data file.")]
BatchSize = Annotated[int, typer.Option("--batch-size", help="Samples per forward pass.")]
MaxSamples = Annotated[
    int | None, typer.Option("--max-samples", help="Use only the first N samples.")
]
Rank = Annotated[
    int | None,
    typer.Option("--rank", help="Analysis rank k (default: the target dimension t)."),
]
CollapseRuleOpt = Annotated[
    str,
    typer.Option(
        "--collapse-rule",
        help=f"Comma-separated COLUMN<=V / COLUMN>=V terms (default {DEFAULT_COLLAPSE_RULE}).",
    ),
]
Arch = Annotated[
    str | None,
    typer.Option("--arch", help="MODULE:CALLABLE or file.py:CALLABLE returning an nn.Module."),
]
ArchKwargs = Annotated[
    str | None, typer.Option("--arch-kwargs", help="JSON object of keyword arguments for --arch.")
]
Activation = Annotated[
    str | None,
    typer.Option(
        "--activation",
        help="Activation of an inferred MLP: relu (default), gelu, tanh, sigmoid, silu, "
        "leaky_relu, elu, identity.",
    ),
]
Svd = Annotated[
    str,
    typer.Option("--svd", help="Spectrum method: auto, exact or randomized."),
]
Oversample = Annotated[int, typer.Option("--oversample", help="Randomized SVD oversampling.")]
PowerIters = Annotated[int, typer.Option("--power-iters", help="Randomized SVD power iterations.")]
Seed = Annotated[int, typer.Option("--seed", help="Seed for every randomized step.")]
Device = Annotated[
    str,
    typer.Option("--device", help="auto (CUDA when available, else CPU), cpu or cuda[:i]."),
]
Dtype = Annotated[
    str, typer.Option("--dtype", help="Forward-pass dtype: float32, bfloat16 or float16.")
]
Threads = Annotated[
    int | None, typer.Option("--threads", help="CPU threads for torch (default: torch's).")
]
Layers = Annotated[
    list[str] | None,
    typer.Option("--layers", help="Only layers whose module path matches this glob (repeatable)."),
]
Exclude = Annotated[
    list[str] | None,
    typer.Option("--exclude", help="Skip layers whose module path matches this glob (repeatable)."),
]
Format = Annotated[
    str | None,
    typer.Option(
        "--format", "-f", help="table, json, csv or parquet (default: from --output, else table)."
    ),
]
Output = Annotated[
    str | None,
    typer.Option("--output", "-o", help="Write to this file (atomically) instead of stdout."),
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar, no notes.")]
Debug = Annotated[bool, typer.Option("--debug", help="Show tracebacks of internal errors.")]
MemoryBudget = Annotated[
    str | None,
    typer.Option(
        "--memory-budget",
        help="Memory for the accumulators, e.g. 4GB (default: half the available memory, "
        "the GPU's on CUDA). "
        "Layers are split over several passes, or sketched, to fit.",
    ),
]
OutputKey = Annotated[
    str | None,
    typer.Option(
        "--output-key",
        help="Which part of a tuple/dict/ModelOutput result is the prediction (key or index).",
    ),
]
NoPrediction = Annotated[
    bool,
    typer.Option(
        "--no-prediction",
        help="The model has no regression head: model_mse and nrc4_ratio are null.",
    ),
]
Inputs = Annotated[
    list[str] | None,
    typer.Option(
        "--input",
        help="Data array passed as a forward keyword argument of the same name (repeatable), "
        "e.g. --input input_ids --input attention_mask.",
    ),
]
MaskKey = Annotated[
    str | None,
    typer.Option(
        "--mask-key",
        help="Input used as the token mask for masked mean pooling (default: attention_mask "
        "when it is an input).",
    ),
]
