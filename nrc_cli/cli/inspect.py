"""``nrc inspect``: what a checkpoint holds and the model nrc would build from it, no data needed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import typer
from rich.console import Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from nrc_cli.capture import weight_layers
from nrc_cli.cli import _options as o
from nrc_cli.cli._console import stdout_to_stderr
from nrc_cli.cli._output import emit, output_format
from nrc_cli.errors import CheckpointError
from nrc_cli.io.checkpoint import open_checkpoint
from nrc_cli.model.build import build_model
from nrc_cli.options import parse_arch_kwargs
from nrc_cli.report.writers import FORMATS

InspectFormat = Annotated[str | None, o.format_option(FORMATS, default="from --output, else table")]


def describe(
    checkpoint: str,
    *,
    arch=None,
    arch_kwargs=None,
    activation=None,
    layers: Sequence[str] = (),
    exclude: Sequence[str] = (),
    state_key: str | None = None,
) -> dict:
    """The inspect document: tensors, metadata, and the model (or why none can be built).

    With ``layers``/``exclude`` globs, the weight layers listed are those an analysis with the
    same ``--layers``/``--exclude`` would measure (an include glob that matches nothing is the
    same error as there).
    """
    ckpt = open_checkpoint(checkpoint, state_key=state_key)
    doc: dict = {
        "checkpoint": str(checkpoint),
        "format": ckpt.format,
        "container": getattr(ckpt, "container", "file"),
        "files": [str(f) for f in getattr(ckpt, "files", None) or [ckpt.path]],
        "config_json": getattr(ckpt, "config", None) is not None,
        "n_parameters": ckpt.n_parameters,
        "metadata": dict(ckpt.metadata),
        # torch.save files: every dict of tensors inside, by dotted path ("" = the top level).
        "state_key": ckpt.state_key,
        "state_paths": list(ckpt.state_paths),
        "tensors": [
            {"name": t.name, "shape": list(t.shape), "dtype": t.dtype, "numel": t.numel}
            for t in ckpt.tensors.values()
        ],
    }
    # Bad options (--arch, --arch-kwargs, a factory that fails) are usage errors (exit 2); only
    # a checkpoint that yields no model is reported in the document.
    kwargs = parse_arch_kwargs(arch_kwargs)
    try:
        built = build_model(
            ckpt, arch=arch, arch_kwargs=kwargs, activation=activation, weights=False
        )
    except CheckpointError as err:
        doc["model"] = None
        doc["model_error"] = err.message + (f" (hint: {err.hint})" if err.hint else "")
        doc["layers"] = []
        return doc
    doc["model"] = {
        "route": built.route,
        "description": built.description,
        "notes": built.notes(),
        "warnings": built.warnings(),
    }
    if built.spec is not None:
        order = [b.linear for b in built.spec.blocks]
        doc["layer_order"] = "forward"
    else:
        order = None
        # A model built from code runs its layers in an order only a forward pass shows.
        doc["layer_order"] = "registration"
    found = weight_layers(built.module, include=tuple(layers), exclude=tuple(exclude))
    if order is not None:
        rank_of = {n: i for i, n in enumerate(order)}
        found.sort(key=lambda w: rank_of.get(w.name, len(order)))
    doc["selection"] = {
        "layers": list(layers),
        "exclude": list(exclude),
        "of": len(weight_layers(built.module)),
    }
    doc["layers"] = [
        {
            "index": i,
            "layer": w.name,
            "type": w.type,
            "in_dim": w.in_dim,
            "weight_shape": w.weight_shape,
        }
        for i, w in enumerate(found, start=1)
    ]
    return doc


def _render(doc: dict):
    tensors = Table(title=escape(f"{doc['checkpoint']} ({doc['format']})"), title_justify="left")
    for col in ("name", "shape", "dtype", "numel"):
        tensors.add_column(col, justify="right" if col == "numel" else "left")
    for t in doc["tensors"]:
        tensors.add_row(escape(t["name"]), str(t["shape"]), t["dtype"], f"{t['numel']:,}")
    parts: list[RenderableType] = [tensors, Text(f"parameters: {doc['n_parameters']:,}")]
    paths = [p or "(top level)" for p in doc.get("state_paths") or ()]
    if len(paths) > 1:
        chosen = doc.get("state_key") or "the first of the usual wrappers"
        parts.append(
            Text(
                f"state dicts in this file: {', '.join(paths)}; shown: {chosen} "
                "(pick one with --state-key)"
            )
        )
    if doc["metadata"]:
        meta = Table(title="metadata", title_justify="left", show_header=False)
        meta.add_column("key")
        meta.add_column("value")
        for k, v in sorted(doc["metadata"].items()):
            meta.add_row(escape(k), escape(v))
        parts.append(meta)
    if doc["model"] is None:
        parts.append(Text(f"model: cannot build one: {doc['model_error']}", style="yellow"))
        return Group(*parts)
    parts.append(Text(f"model ({doc['model']['route']}): {doc['model']['description']}"))
    for kind in ("notes", "warnings"):
        for line in doc["model"].get(kind, ()):
            style = "yellow" if kind == "warnings" else ""
            parts.append(Text(f"{kind[:-1]}: {line}", style=style))
    title = (
        "weight layers, in forward order"
        if doc["layer_order"] == "forward"
        else "weight layers, in registration order (the data pass finds the forward order)"
    )
    selection = doc.get("selection") or {}
    if selection.get("layers") or selection.get("exclude"):
        globs = [f"--layers {p}" for p in selection["layers"]]
        globs += [f"--exclude {p}" for p in selection["exclude"]]
        title += f": {len(doc['layers'])} of {selection['of']} selected by {' '.join(globs)}"
    layers = Table(title=escape(title), title_justify="left")
    for col in ("#", "layer", "type", "in_dim", "weight_shape"):
        layers.add_column(col)
    for row in doc["layers"]:
        layers.add_row(
            str(row["index"]),
            escape(row["layer"]),
            row["type"],
            str(row["in_dim"]),
            str(row["weight_shape"]),
        )
    parts.append(layers)
    return Group(*parts)


def _frame(doc: dict):
    import pandas as pd

    rows = [
        {"checkpoint": doc["checkpoint"], **t, "shape": "x".join(map(str, t["shape"]))}
        for t in doc["tensors"]
    ]
    return pd.DataFrame(rows, columns=["checkpoint", "name", "shape", "dtype", "numel"])


def inspect(
    checkpoint: o.Checkpoint,
    arch: o.Arch = None,
    arch_kwargs: o.ArchKwargs = None,
    activation: o.Activation = None,
    layers: o.Layers = None,
    exclude: o.Exclude = None,
    state_key: o.StateKey = None,
    format: InspectFormat = None,
    output: o.Output = None,
) -> None:
    """Show CHECKPOINT's tensors, metadata and the model nrc would build (no data needed)."""
    fmt = output_format(format, output, allowed=FORMATS, inputs={"the checkpoint": checkpoint})
    with stdout_to_stderr():  # an --arch factory may print
        doc = describe(
            checkpoint,
            arch=arch,
            arch_kwargs=arch_kwargs,
            activation=activation,
            layers=layers or (),
            exclude=exclude or (),
            state_key=state_key,
        )
    emit(fmt, output, doc=lambda: doc, frame=lambda: _frame(doc), render=lambda: _render(doc))


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect)
