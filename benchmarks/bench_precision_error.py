"""How far ``--precision mixed`` is from ``--precision exact``, metric by metric.

Runs ``nrc_cli.analyze`` in both precisions on the reference cases (tests/reference_cases/) and
on constructed worst cases, each an MLP p -> 32 -> 32 -> 3 (random init) whose first layer's
features are the data itself and whose targets are its own output plus 5% noise (so the
probe explains nearly all target variance: the probe MSE is the most sensitive metric):

* ``plain``             correlated Gaussian features (N = 4096, p = 20)
* ``large_means``       the same × 0.1 + 1e4: means 1e5 times the spread; the hidden features
  reach 3e4 with spreads of 0.07
* ``wide_range``        columns scaled from 1e-3 to 1e3
* ``drift``             data sorted along a drift of 50 spreads
* ``near_rank_def``     rank 3 plus noise 1e-3 (eigenvalues down to 1e-7 of the largest)
* ``nrc1_near_zero``    rank 3 plus noise 1e-5 around a mean of 5: nrc1_noise ~ 1e-9 at k = 3

and prints, per case, the largest |Δ| of each metric and the largest share of the bound
1e-5 + 1e-4·|exact| (docs/metrics.md, "Mixed precision"). A few seconds per case.

    .venv/bin/python benchmarks/bench_precision_error.py [--batch-size 1024]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

import models  # noqa: E402

from nrc_cli import analyze  # noqa: E402

BOUND_ABS, BOUND_REL = 1e-5, 1e-4
COLUMNS = (
    "nrc1_noise",
    "nrc2_cka",
    "nrc2_cka_signal",
    "nrc3_alignment",
    "nrc4_probe_mse",
    "nrc4_ratio",
    "stable_rank_h",
    "nrc1_last",
    "nrc2_last",
    "nrc3_last",
)


def _base(n: int = 4096, p: int = 20, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, p)) @ rng.standard_normal((p, p)) / math.sqrt(p)


def _low_rank(noise: float, mean: float = 0.0, p: int = 20) -> np.ndarray:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4096, 3)) @ rng.standard_normal((3, p)) + mean
    return x + noise * rng.standard_normal(x.shape)


CASES = {
    "plain": lambda: _base(),
    "large_means": lambda: _base() * 0.1 + 1e4,
    "wide_range": lambda: _base() * np.logspace(-3, 3, 20),
    "drift": lambda: _base() + np.linspace(0, 50, 4096)[:, None],
    "near_rank_def": lambda: _low_rank(1e-3),
    "nrc1_near_zero": lambda: _low_rank(1e-5, mean=5.0, p=16),
}


def constructed(folder: Path, name: str, x: np.ndarray) -> tuple[Path, Path]:
    torch.manual_seed(0)
    model = models.mlp_dims([x.shape[1], 32, 32, 3]).eval()
    x = x.astype(np.float32)
    with torch.no_grad():
        pred = model(torch.from_numpy(x)).double().numpy()
    rng = np.random.default_rng(1)
    y = pred + 0.05 * pred.std(axis=0) * rng.standard_normal(pred.shape)
    ckpt, data = folder / f"{name}.safetensors", folder / f"{name}.npz"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))
    np.savez(data, x=x, y=y.astype(np.float32))
    return ckpt, data


def compare(exact: dict, mixed: dict) -> dict:
    """Per column the largest |Δ|; overall the largest share of the bound, and where."""
    out: dict = {c: 0.0 for c in COLUMNS}
    out["share"], out["at"] = 0.0, ""
    rows = [(r["layer"], r, m) for r, m in zip(exact["layers"], mixed["layers"], strict=True)]
    rows.append(("summary", exact["summary"], mixed["summary"]))
    for where, e, m in rows:
        for key, a in e.items():
            b = m.get(key)
            if not isinstance(a, float) or not isinstance(b, float) or key == "nrc3_gamma":
                continue
            d = abs(a - b)
            if key in out:
                out[key] = max(out[key], d)
            share = d / (BOUND_ABS + BOUND_REL * abs(a))
            if share > out["share"]:
                out["share"], out["at"] = share, f"{where}.{key}"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch-size", type=int, default=1024)
    args = ap.parse_args()
    runs: list[tuple[str, Path, Path]] = []
    for folder in sorted((REPO / "tests" / "reference_cases").iterdir()):
        if (folder / "expected.json").is_file():
            runs.append((f"ref:{folder.name}", folder / "model.safetensors", folder / "data.npz"))
    with tempfile.TemporaryDirectory() as tmp:
        for name, make in CASES.items():
            runs.append((name, *constructed(Path(tmp), name, make())))
        header = " | ".join(COLUMNS)
        print(f"| case | worst share of the bound (at) | {header} |")
        print("|---|---|" + "---:|" * len(COLUMNS))
        for name, ckpt, data in runs:
            got = {
                p: analyze(ckpt, data, precision=p, batch_size=args.batch_size).to_dict()
                for p in ("exact", "mixed")
            }
            c = compare(got["exact"], got["mixed"])
            cells = " | ".join(f"{c[k]:.0e}" for k in COLUMNS)
            print(f"| {name} | {c['share']:.3f} ({c['at']}) | {cells} |", flush=True)


if __name__ == "__main__":
    main()
