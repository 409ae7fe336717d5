"""Which checkpoints an audit runs on: files, folders and globs expanded into a sorted list of
checkpoint paths (:func:`discover`), and the deterministic ``I/N`` slice of that list a shard
takes (:func:`parse_shard`, :func:`array_shard` for a cluster's array job,
:func:`select_shard`)."""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from nrc_cli.errors import ConfigError
from nrc_cli.io.checkpoint import SUFFIXES, is_model_folder_listing
from nrc_cli.io.files import special_kind

__all__ = ["SHARD_COUNT_VAR", "array_shard", "discover", "parse_shard", "select_shard"]


def _is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def _is_model_folder(folder: Path) -> bool:
    """A Hugging Face style model folder, which ``open_checkpoint`` opens as one checkpoint:
    it holds ``model.safetensors``, ``pytorch_model.bin`` or a ``*.index.json`` of shards."""
    try:
        names = {entry.name for entry in os.scandir(folder) if entry.is_file()}
    except OSError:
        return False
    return is_model_folder_listing(names)


def _walk(folder: Path, skipped: list[str] | None = None) -> list[Path]:
    """Checkpoints under ``folder``, recursively: checkpoint files, and model folders taken
    whole (their shards are one checkpoint). Hidden files and folders are skipped (``.git``,
    ``.ipynb_checkpoints``, temporary files of interrupted writes), and so are special files
    (a FIFO would block the audit forever), each with a line in ``skipped``."""
    found = []
    for root, dirs, files in os.walk(folder):
        keep = []
        for d in sorted(dirs):
            if d.startswith("."):
                continue
            if _is_model_folder(Path(root) / d):
                found.append(Path(root) / d)
            else:
                keep.append(d)
        dirs[:] = keep
        for name in files:
            if not name.startswith(".") and name.endswith(SUFFIXES):
                path = Path(root) / name
                kind = special_kind(path)
                if kind is None:
                    found.append(path)
                elif skipped is not None:
                    skipped.append(f"{path.as_posix()}: {kind}, not a checkpoint file")
    return found


def discover(paths: Sequence[str], *, skipped: list[str] | None = None) -> list[str]:
    """Expand files, folders and globs into a sorted list of checkpoint paths.

    Parameters
    ----------
    paths : sequence of str
        Each a checkpoint file (taken whatever its suffix: a wrong one becomes an error row),
        a model folder (Hugging Face style: one checkpoint), a folder (searched recursively for
        ``.safetensors``, ``.pt``, ``.pth`` and ``.bin`` files and model folders) or a glob
        (``**`` allowed; matched folders are treated as folders).
    skipped : list of str, optional
        Receives one line per file found in a folder but left out: a named pipe (FIFO), a
        device or a socket with a checkpoint suffix.

    Returns
    -------
    list of str
        Paths as given (joined with what was found below a folder, ``/``-separated), sorted,
        each file once even when reached twice (through two arguments or a symlink).

    Raises
    ------
    ConfigError
        When an argument names nothing: a missing path, a glob without matches, or a folder
        holding no checkpoint file.
    """
    if not paths:
        raise ConfigError("expected at least one checkpoint, folder or glob, found none")
    found: list[Path] = []
    for arg in paths:
        p = Path(arg)
        if p.exists():
            targets = [p]
        elif _is_glob(arg):
            targets = [Path(m) for m in sorted(glob.glob(arg, recursive=True))]
            if not targets:
                raise ConfigError(
                    f"'{arg}': the glob matches no file or folder",
                    hint="quote globs for nrc to expand them ('zoo/**/*.safetensors'), "
                    "and check the pattern",
                )
        else:
            raise ConfigError(
                f"'{arg}': expected a checkpoint file, a folder or a glob, found nothing there",
                hint="check the path",
            )
        for target in targets:
            if target.is_dir() and _is_model_folder(target):
                found.append(target)
            elif target.is_dir():
                inside = _walk(target, skipped)
                if not inside and not _is_glob(arg):
                    raise ConfigError(
                        f"'{arg}': the folder holds no checkpoint file "
                        f"({', '.join(SUFFIXES)}), searched recursively",
                        hint="point at the folder that holds the checkpoints",
                    )
                found.extend(inside)
            elif target.exists():
                found.append(target)
    if not found:
        raise ConfigError(
            f"no checkpoint file found in {', '.join(repr(a) for a in paths)}",
            hint=f"checkpoints are files ending in {', '.join(SUFFIXES)}",
        )
    labels = sorted({p.as_posix() for p in found})
    seen: set[str] = set()
    out = []
    for label in labels:
        real = os.path.realpath(label)
        if real not in seen:
            seen.add(real)
            out.append(label)
    return out


def parse_shard(
    text: str | None, environ: Mapping[str, str] | None = None
) -> tuple[int, int] | None:
    """Parse ``--shard I/N`` (1 <= I <= N) into ``(I, N)``; None stays None.

    ``auto`` and ``auto/N`` take the shard from the array job this process runs in (see
    :func:`array_shard`, which reads ``environ``, by default the process environment).
    """
    if text is None:
        return None
    auto = re.fullmatch(r"\s*auto\s*(?:/\s*(\d+)\s*)?", text)
    if auto is not None:
        count = int(auto.group(1)) if auto.group(1) is not None else None
        return array_shard(os.environ if environ is None else environ, count=count)
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if m is None:
        raise ConfigError(
            f"--shard: expected I/N with integers 1 <= I <= N (e.g. 2/8), auto or auto/N, "
            f"found '{text}'",
        )
    index, count = int(m.group(1)), int(m.group(2))
    if count < 1 or not 1 <= index <= count:
        raise ConfigError(
            f"--shard: expected I/N with 1 <= I <= N, found I={index}, N={count}",
            hint="shards are numbered from 1: --shard 1/4 ... --shard 4/4",
        )
    return index, count


# The environment variable that gives the number of shards of a Kubernetes Indexed Job (which
# tells each pod its index, JOB_COMPLETION_INDEX, but not the job's completions).
SHARD_COUNT_VAR = "NRC_SHARD_COUNT"
_ARRAY_HINT = (
    "run inside a Slurm array job (sbatch --array=0-7) or a Kubernetes Indexed Job "
    f"(JOB_COMPLETION_INDEX, with {SHARD_COUNT_VAR} or --shard auto/N), or give --shard I/N"
)


def array_shard(environ: Mapping[str, str], *, count: int | None = None) -> tuple[int, int]:
    """The ``(I, N)`` shard of this task of a cluster array job, from its environment.

    * Slurm array (``sbatch --array=A-B[:S]``): I = (SLURM_ARRAY_TASK_ID −
      SLURM_ARRAY_TASK_MIN) / S + 1 (S = SLURM_ARRAY_TASK_STEP, default 1) and
      N = SLURM_ARRAY_TASK_COUNT, so ``--array=1-8`` and ``--array=0-7`` both give 1/8 … 8/8.
    * Kubernetes Indexed Job: I = JOB_COMPLETION_INDEX + 1, N from ``count`` (``--shard
      auto/N``) or else the environment variable ``NRC_SHARD_COUNT``.

    ``count``, when given, must agree with what the environment says.

    Raises
    ------
    ConfigError
        Neither kind of array job is found, or its variables do not describe a shard.
    """

    def number(name: str) -> int:
        text = environ.get(name, "")
        if not re.fullmatch(r"\s*\d+\s*", text):
            raise ConfigError(
                f"--shard auto: expected a whole number >= 0 in {name}, found '{text}'",
                hint=_ARRAY_HINT,
            )
        return int(text)

    if environ.get("SLURM_ARRAY_TASK_ID"):
        task, low, total = (
            number("SLURM_ARRAY_TASK_ID"),
            number("SLURM_ARRAY_TASK_MIN"),
            number("SLURM_ARRAY_TASK_COUNT"),
        )
        step = number("SLURM_ARRAY_TASK_STEP") if environ.get("SLURM_ARRAY_TASK_STEP") else 1
        index, rest = divmod(task - low, max(step, 1))
        if rest or not 0 <= index < total:
            raise ConfigError(
                f"--shard auto: Slurm array task {task} is not one of {total} evenly spaced "
                f"tasks from {low} (step {step})",
                hint="use a plain range such as --array=0-7 (a limit like %4 is fine), "
                "or give --shard I/N yourself",
            )
        source = "Slurm array"
    elif environ.get("JOB_COMPLETION_INDEX"):
        index = number("JOB_COMPLETION_INDEX")
        if count is None:
            if not environ.get(SHARD_COUNT_VAR):
                raise ConfigError(
                    "--shard auto: a Kubernetes Indexed Job gives this pod's index "
                    f"(JOB_COMPLETION_INDEX={index}) but not the number of shards",
                    hint=f"pass --shard auto/N or set {SHARD_COUNT_VAR} to the job's completions",
                )
            total = number(SHARD_COUNT_VAR)
        else:
            total = count
        if not 0 <= index < total:
            raise ConfigError(
                f"--shard auto: JOB_COMPLETION_INDEX={index} is not below the number of "
                f"shards, {total}",
                hint=f"set {SHARD_COUNT_VAR} (or N of --shard auto/N) to the job's completions",
            )
        source = "Kubernetes Indexed Job"
    else:
        raise ConfigError(
            "--shard auto: this process is not a task of an array job (neither "
            "SLURM_ARRAY_TASK_ID nor JOB_COMPLETION_INDEX is set)",
            hint=_ARRAY_HINT,
        )
    if count is not None and count != total:
        raise ConfigError(
            f"--shard auto/{count}: the {source} has {total} task(s), not {count}",
            hint="pass --shard auto and let the array job give the count",
        )
    if total < 1:
        raise ConfigError(f"--shard auto: the {source} has {total} tasks", hint=_ARRAY_HINT)
    return index + 1, total


def select_shard(items: Sequence[str], shard: tuple[int, int] | None) -> list[str]:
    """The deterministic ``I/N`` slice of the sorted list: items whose position ``% N == I - 1``.

    Striding (rather than cutting into blocks) spreads a sweep's settings evenly over shards.
    """
    if shard is None:
        return list(items)
    index, count = shard
    return [item for i, item in enumerate(sorted(items)) if i % count == index - 1]
