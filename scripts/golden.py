"""Write (or check) the golden JSON reports of the CLI on the samples and the reference cases.

The golden files pin what ``nrc analyze --format json`` prints, so that a refactor of the
analysis core can be shown to change nothing: ``python scripts/golden.py --check`` compares
byte for byte and names every file that differs; ``python scripts/golden.py`` writes them
anew (do that only for a change of output that the commit explains).
tests/cli/test_golden.py compares the same runs with a float tolerance, so the suite also passes
on a machine whose BLAS rounds the last bits differently.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"

# name -> arguments of `nrc analyze` after the checkpoint, relative to the repository root.
CASES: dict[str, list[str]] = {
    "mlp_wd": ["sample_checkpoints/mlp_wd.safetensors", "--data", "sample_checkpoints/lowrank.npz"],
    "mlp_nowd": [
        "sample_checkpoints/mlp_nowd.safetensors",
        "--data",
        "sample_checkpoints/lowrank.npz",
    ],
    "mlp_wd_rank1_randomized": [
        "sample_checkpoints/mlp_wd.safetensors",
        "--data",
        "sample_checkpoints/lowrank.npz",
        "--rank",
        "1",
        "--svd",
        "randomized",
    ],
    "mlp_wd_three_passes": [
        "sample_checkpoints/mlp_wd.safetensors",
        "--data",
        "sample_checkpoints/lowrank.npz",
        "--memory-budget",
        "150KB",
        "--batch-size",
        "64",
    ],
    "ref_mlp_relu": [
        "tests/reference_cases/mlp_relu/model.safetensors",
        "--data",
        "tests/reference_cases/mlp_relu/data.npz",
    ],
    "ref_mlp_layernorm_1d_target": [
        "tests/reference_cases/mlp_layernorm_1d_target/model.safetensors",
        "--data",
        "tests/reference_cases/mlp_layernorm_1d_target/data.npz",
    ],
    "ref_nc_gauss_mlp": [
        "tests/reference_cases/nc_gauss_mlp/model.safetensors",
        "--data",
        "tests/reference_cases/nc_gauss_mlp/data.npz",
        "--task",
        "classification",
    ],
    "classifier_wd1e-2_seed0_no_ncc": [
        "sample_checkpoints/classifiers/wd1e-2_seed0.safetensors",
        "--data",
        "sample_checkpoints/blobs.npz",
        "--no-ncc",
    ],
}


def run_case(args: list[str]) -> bytes:
    """stdout of `nrc analyze ARGS --format json --device cpu --quiet`, run from the repo root."""
    env = dict(os.environ, NO_COLOR="1")
    cmd = [sys.executable, "-m", "nrc_cli", "analyze", *args]
    cmd += ["--format", "json", "--device", "cpu", "--quiet"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr.decode()}")
    return done.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    opts = parser.parse_args()
    GOLDEN.mkdir(parents=True, exist_ok=True)
    differ = []
    for name, args in CASES.items():
        out = run_case(args)
        path = GOLDEN / f"{name}.json"
        if opts.check:
            if not path.exists() or path.read_bytes() != out:
                differ.append(name)
        else:
            path.write_bytes(out)
    if differ:
        print("differs from the golden output: " + ", ".join(differ))
        return 1
    print("golden outputs " + ("identical" if opts.check else "written"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
