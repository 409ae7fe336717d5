"""Shared pieces of the benchmark scripts: workloads, data files, checkpoints, metric formulas.

Nothing here imports ``nrc_cli``: the baselines must be independent of the code they are compared
with. Data files are ``.npz`` archives written member by member (``numpy.lib.format`` header, then
raw float32 rows) into a ``ZIP_STORED`` zip, chunk by chunk, so that generating 10^6 samples never
holds the whole array in memory; ``np.load`` and ``nrc`` read them like any ``np.savez`` output.
"""

from __future__ import annotations

import argparse
import json
import math
import mmap
import os
import struct
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import models
import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
CHUNK_ROWS = 1 << 15  # rows generated and written per step

# ------------------------------------------------------------------------------------------------
# Workloads
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """One benchmark model plus the recipe of its synthetic data.

    ``factory``/``kwargs`` name a function of ``models.py``; ``arch`` says whether ``nrc`` needs
    ``--arch`` (the conv net) or infers the model from the checkpoint keys (the MLPs).
    """

    name: str
    factory: str
    kwargs: dict
    x_shape: tuple[int, ...]  # one sample
    t: int
    arch: bool
    description: str
    seed: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def kwargs_json(self) -> str:
        return json.dumps(self.kwargs, sort_keys=True)

    def build(self) -> nn.Module:
        return models.build(self.factory, self.kwargs)

    def tag(self) -> str:
        """Short id for file names: differs whenever the model or the data recipe differs."""
        parts = [self.name] + [f"{k}{v}" for k, v in sorted(self.kwargs.items()) if k != "dims"]
        if "dims" in self.kwargs:
            parts.append("d" + "-".join(str(d) for d in self.kwargs["dims"]))
        return "_".join(parts) + f"_s{self.seed}"


def workloads(conv_width: int = 16) -> dict[str, Workload]:
    """The benchmark workloads (``mlp512`` is bench_precision.py's; the rest bench_scale.py's)."""
    return {
        "mlp": Workload(
            name="mlp",
            factory="mlp",
            kwargs={"in_dim": 32, "width": 1024, "depth": 8, "out_dim": 4},
            x_shape=(32,),
            t=4,
            arch=False,
            description="MLP 32 -> 7x1024 -> 4 (8 Linear layers, ReLU), random init",
        ),
        "conv": Workload(
            name="conv",
            factory="resnet18",
            kwargs={"width": conv_width, "num_outputs": 4},
            x_shape=(3, 32, 32),
            t=4,
            arch=True,
            description=(
                f"ResNet-18 (BasicBlocks [2,2,2,2], BN, 1x1 downsample shortcuts, GAP, Linear "
                f"head) on 3x32x32, base width {conv_width} (standard: 64), random init"
            ),
        ),
        "mlp512": Workload(
            name="mlp512",
            factory="mlp",
            kwargs={"in_dim": 32, "width": 512, "depth": 6, "out_dim": 4},
            x_shape=(32,),
            t=4,
            arch=False,
            description="MLP 32 -> 5x512 -> 4 (6 Linear layers, ReLU), random init",
        ),
        "wide": Workload(
            name="wide",
            factory="mlp_dims",
            kwargs={"dims": [64, 512, 4096, 512, 4]},
            x_shape=(64,),
            t=4,
            arch=False,
            description="MLP 64 -> 512 -> 4096 -> 512 -> 4 (one 4096-wide layer input), random init",
        ),
    }


def weight_layer_widths(model: nn.Module, x_shape: tuple[int, ...]) -> list[int]:
    """Input widths p of the Linear/Conv layers in forward order (one dry run on one sample)."""
    widths: list[int] = []

    def hook(m: nn.Module, _a: tuple) -> None:
        widths.append(m.in_features if isinstance(m, nn.Linear) else m.in_channels)

    _dry_run(model, x_shape, lambda m: m.register_forward_pre_hook(hook))
    return widths


def forward_flops(model: nn.Module, x_shape: tuple[int, ...]) -> float:
    """Multiply-adds x 2 of the Linear and Conv layers for one sample."""
    total = 0.0

    def hook(m: nn.Module, _a: tuple, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(m, nn.Linear):
            total += 2.0 * m.in_features * m.out_features
        else:
            k = math.prod(m.kernel_size)
            total += 2.0 * out[0].numel() * (m.in_channels // m.groups) * k

    _dry_run(model, x_shape, lambda m: m.register_forward_hook(hook))
    return total


def _dry_run(model: nn.Module, x_shape: tuple[int, ...], register) -> None:
    """One forward pass on one zero sample, with ``register(m)`` hooks on every weight layer."""
    handles = [register(m) for m in model.modules() if isinstance(m, WEIGHT_TYPES)]
    try:
        with torch.inference_mode():
            model.eval()(torch.zeros(1, *x_shape))
    finally:
        for h in handles:
            h.remove()


# ------------------------------------------------------------------------------------------------
# Data files
# ------------------------------------------------------------------------------------------------


def _chunk_rng(seed: int, member: int, chunk: int) -> np.random.Generator:
    return np.random.default_rng([seed, member, chunk])


def _x_chunk(w: Workload, chunk: int, rows: int) -> np.ndarray:
    return _chunk_rng(w.seed, 0, chunk).standard_normal((rows, *w.x_shape), dtype=np.float32)


def _y_chunk(w: Workload, chunk: int, x: np.ndarray) -> np.ndarray:
    """Targets: a smooth nonlinear function of the inputs plus 10 % noise, float32 (N, t)."""
    rows = x.shape[0]
    proj_rng = np.random.default_rng([w.seed, 99])
    if x.ndim == 2:
        a = proj_rng.standard_normal((x.shape[1], w.t)).astype(np.float32) / math.sqrt(x.shape[1])
        signal = np.tanh(x @ a)
    else:
        # Images: per-channel means over the four quadrants, mixed to t targets.
        h, wd = x.shape[2] // 2, x.shape[3] // 2
        quads = [
            x[:, :, :h, :wd],
            x[:, :, :h, wd:],
            x[:, :, h:, :wd],
            x[:, :, h:, wd:],
        ]
        feats = np.concatenate([q.mean(axis=(2, 3)) for q in quads], axis=1)  # (rows, 4C)
        feats *= math.sqrt(x.shape[2] * x.shape[3] / 4)  # unit variance
        a = proj_rng.standard_normal((feats.shape[1], w.t)).astype(np.float32)
        signal = np.tanh(feats @ a / math.sqrt(feats.shape[1]))
    noise = _chunk_rng(w.seed, 1, chunk).standard_normal((rows, w.t), dtype=np.float32)
    return (signal + 0.1 * noise).astype(np.float32)


def _write_member(
    zf: zipfile.ZipFile, key: str, shape: tuple[int, ...], chunks: Iterator[np.ndarray]
) -> None:
    header = {
        "descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
        "fortran_order": False,
        "shape": shape,
    }
    written = 0
    with zf.open(f"{key}.npy", "w", force_zip64=True) as f:
        np.lib.format.write_array_header_1_0(f, header)
        for c in chunks:
            c = np.ascontiguousarray(c, dtype=np.float32)
            f.write(memoryview(c).cast("B"))
            written += c.shape[0]
    if written != shape[0]:
        raise RuntimeError(f"{key}: wrote {written} rows, header says {shape[0]}")


def generate_data(w: Workload, n: int, path: Path) -> Path:
    """Write ``n`` samples of workload ``w`` to ``path`` (.npz, stored, float32) in chunks."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # concurrent runs may share the cache
    starts = range(0, n, CHUNK_ROWS)

    def xs() -> Iterator[np.ndarray]:
        for i, s in enumerate(starts):
            yield _x_chunk(w, i, min(CHUNK_ROWS, n - s))

    def ys() -> Iterator[np.ndarray]:
        for i, s in enumerate(starts):
            yield _y_chunk(w, i, _x_chunk(w, i, min(CHUNK_ROWS, n - s)))

    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        _write_member(zf, "x", (n, *w.x_shape), xs())
        _write_member(zf, "y", (n, w.t), ys())
    os.replace(tmp, path)
    return path


_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")


def npz_memmap(path: str | os.PathLike, key: str) -> np.memmap:
    """Memory-map an uncompressed member of an ``.npz`` file (no copy, no pickle)."""
    path = os.fspath(path)
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(f"{key}.npy")
    if info.compress_type != zipfile.ZIP_STORED:
        raise ValueError(f"{path}: member {key} is compressed; benchmarks need stored members")
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        fields = _LOCAL_HEADER.unpack(f.read(_LOCAL_HEADER.size))
        name_len, extra_len = fields[9], fields[10]
        f.seek(info.header_offset + _LOCAL_HEADER.size + name_len + extra_len)
        version = np.lib.format.read_magic(f)
        read_header = {
            (1, 0): np.lib.format.read_array_header_1_0,
            (2, 0): np.lib.format.read_array_header_2_0,
        }[version]
        shape, fortran, dtype = read_header(f)
        offset = f.tell()
    if fortran or dtype.hasobject:
        raise ValueError(f"{path}: member {key} is Fortran-ordered or holds objects")
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


class _PageDropper:
    """Give back the pages of a memory map once they have been copied out (``MADV_DONTNEED``).

    Without it, every page of the data file that a pass has read stays in the process's resident
    set (file-backed, but counted by ``ru_maxrss``), so peak RSS would grow with N by up to the
    file's size. ``nrc`` streams the same way; the baselines must too, for a fair memory column.
    """

    def __init__(self, mm: np.memmap) -> None:
        self._mm = getattr(mm, "_mmap", None)
        if not hasattr(mmap, "MADV_DONTNEED"):
            self._mm = None
        self._base = mm.offset % mmap.ALLOCATIONGRANULARITY  # where the array starts in the map
        self._row = mm.itemsize * math.prod(mm.shape[1:])
        self._done = 0  # bytes of the map already dropped

    def upto(self, rows: int) -> None:
        if self._mm is None:
            return
        hi = self._base + rows * self._row
        hi -= hi % mmap.PAGESIZE
        if hi > self._done:
            self._mm.madvise(mmap.MADV_DONTNEED, self._done, hi - self._done)
            self._done = hi


def batches(path: str | os.PathLike, n: int, batch_size: int, *, with_y: bool = True):
    """Yield ``(x, y)`` torch batches (float32 x, float64 y) of the first ``n`` samples.

    Memory-mapped, one batch copied at a time; pages already read are given back, so memory does
    not grow with ``n``.
    """
    xm = npz_memmap(path, "x")
    ym = npz_memmap(path, "y") if with_y else None
    drops = [_PageDropper(m) for m in (xm, ym) if m is not None]
    n = min(n, xm.shape[0])
    for s in range(0, n, batch_size):
        e = min(s + batch_size, n)
        x = torch.from_numpy(np.array(xm[s:e]))
        y = None
        if ym is not None:
            y = torch.from_numpy(np.array(ym[s:e], dtype=np.float64).reshape(e - s, -1))
        for d in drops:
            d.upto(e)
        yield x, y


def n_samples(path: str | os.PathLike) -> int:
    return npz_memmap(path, "x").shape[0]


# ------------------------------------------------------------------------------------------------
# Checkpoints
# ------------------------------------------------------------------------------------------------


def make_checkpoint(w: Workload, path: Path) -> Path:
    """Random-init weights of workload ``w`` (seeded) saved with safetensors."""
    from safetensors.torch import save_file

    torch.manual_seed(w.seed)
    model = w.build()
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    save_file(state, str(tmp), metadata={"benchmark_workload": w.name, "model": w.kwargs_json})
    os.replace(tmp, path)
    return path


def method_parser(doc: str, json_help: str) -> argparse.ArgumentParser:
    """The command line every measured method shares: model, checkpoint, data, N, batch size
    and where to write its JSON (the baselines add their own options to it)."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--factory", required=True, help="a factory of benchmarks/models.py")
    ap.add_argument("--kwargs", default="{}", help="JSON keyword arguments of the factory")
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--n", type=int, required=True, help="use the first N samples")
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--json", required=True, help=json_help)
    return ap


def load_model(factory: str, kwargs_json: str, ckpt: str | os.PathLike) -> nn.Module:
    """Rebuild a benchmark model and load a checkpoint strictly; eval mode."""
    from safetensors.torch import load_file

    model = models.build(factory, json.loads(kwargs_json))
    model.load_state_dict(load_file(os.fspath(ckpt)), strict=True)
    return model.eval()


# ------------------------------------------------------------------------------------------------
# Weight layers, pooling, and metric formulas shared by the baselines
# ------------------------------------------------------------------------------------------------

WEIGHT_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def weight_modules_in_forward_order(model: nn.Module, sample: torch.Tensor) -> list[str]:
    """Names of the Linear/Conv modules in the order in which they first run."""
    order: list[str] = []
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, WEIGHT_TYPES):
            handles.append(
                m.register_forward_pre_hook(
                    lambda _m, _a, name=name: order.append(name) if name not in order else None
                )
            )
    try:
        with torch.inference_mode():
            model(sample)
    finally:
        for h in handles:
            h.remove()
    return order


def pool(module: nn.Module, inp: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """One p-vector per sample: conv inputs averaged over space, Linear inputs over tokens."""
    if isinstance(module, nn.Linear):
        if inp.ndim == 2:
            return inp.to(dtype)
        return inp.mean(dim=tuple(range(1, inp.ndim - 1)), dtype=dtype)
    return inp.mean(dim=tuple(range(2, inp.ndim)), dtype=dtype)


def weight_basis(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Input-subspace basis of a weight (columns) and its singular values, float64."""
    w = module.weight.detach().to(torch.float64)
    if isinstance(module, nn.Linear):
        _, s, vh = torch.linalg.svd(w, full_matrices=False)
        return vh.T, s
    wt = w.transpose(0, 1).reshape(w.shape[1], -1)
    u, s, _ = torch.linalg.svd(wt, full_matrices=False)
    return u, s


def principal_alignment(q1: torch.Tensor, q2: torch.Tensor) -> float:
    return float(torch.linalg.svdvals(q1.T @ q2).clamp(max=1.0).mean())


def stable_rank(s: torch.Tensor) -> float:
    """sum(s^2) / s_0^2 for singular values (or eigenvalues) s, descending."""
    return float((s * s).sum() / (s[0] * s[0]))


def target_summary(y: torch.Tensor) -> dict:
    yc = y - y.mean(dim=0)
    cov_y = yc.T @ yc / y.shape[0]
    mu = torch.linalg.eigvalsh(cov_y).flip(0)
    return {"stable_rank_y": stable_rank(mu)}


METRIC_COLUMNS = (
    "nrc1_noise",
    "nrc2_cka",
    "nrc2_cka_signal",
    "nrc3_alignment",
    "nrc4_probe_mse",
    "nrc4_ratio",
    "stable_rank_h",
    "stable_rank_w",
)
SUMMARY_COLUMNS = ("model_mse", "stable_rank_y")


def compare_metrics(ref: dict, other: dict) -> dict:
    """Largest absolute and relative differences between two results JSONs (same layers).

    Both are ``{"summary": {...}, "layers": [{"layer": ..., column: value, ...}]}``; columns
    missing from ``other`` (or null in either) are skipped.
    """
    worst_abs = (0.0, None)
    worst_rel = (0.0, None)
    per_column: dict[str, float] = {}
    compared = 0
    by_name = {r["layer"]: r for r in other["layers"]}
    pairs = [
        ("summary", c, ref["summary"].get(c), other["summary"].get(c)) for c in SUMMARY_COLUMNS
    ]
    for row in ref["layers"]:
        o = by_name.get(row["layer"])
        if o is None:
            continue
        pairs += [(row["layer"], c, row.get(c), o.get(c)) for c in METRIC_COLUMNS]
    for where, col, a, b in pairs:
        if a is None or b is None:
            continue
        compared += 1
        d = abs(float(a) - float(b))
        rel = d / max(abs(float(a)), 1e-300)
        per_column[col] = max(per_column.get(col, 0.0), d)
        if d >= worst_abs[0]:
            worst_abs = (d, f"{where}.{col}")
        if rel >= worst_rel[0]:
            worst_rel = (rel, f"{where}.{col}")
    return {
        "compared": compared,
        "max_abs": worst_abs[0],
        "max_abs_at": worst_abs[1],
        "max_rel": worst_rel[0],
        "max_rel_at": worst_rel[1],
        "per_column_max_abs": per_column,
    }


def write_json(path: str | os.PathLike, obj: dict) -> None:
    tmp = f"{os.fspath(path)}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
    os.replace(tmp, path)
