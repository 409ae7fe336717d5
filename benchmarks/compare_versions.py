"""Every metric of two versions of nrc, side by side: the largest relative difference.

Runs ``nrc analyze ... --format json --device cpu --quiet`` on the golden cases of
``scripts/golden.py`` (the samples and the reference cases: regression, randomized SVD, three
passes, classification) with this checkout's code and with the code of another git revision
(a temporary worktree), each in a fresh process, and compares every float of the two reports.
Fields made from the float32 model output alone (``model_mse``, ``nrc4_ratio``) are listed
apart: they carry float32's last bits whatever the accumulation does.

    python benchmarks/compare_versions.py 954fb4a            # against that revision
    python benchmarks/compare_versions.py 954fb4a --precision exact --threads 1
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("golden", REPO / "scripts" / "golden.py")
golden = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(golden)

OUTPUT_FIELDS = ("model_mse", "nrc4_ratio")


def report(code: Path, args: list[str], extra: list[str], cwd: str) -> dict:
    """The JSON report of ``code``'s nrc; run from ``cwd`` (``-m`` puts the working folder
    first on the path, ahead of PYTHONPATH), the case's files named from this checkout."""
    env = dict(os.environ, PYTHONPATH=str(code))
    args = [str(REPO / a) if (REPO / a).is_file() else a for a in args]
    cmd = [sys.executable, "-m", "nrc_cli", "analyze", *args, "--format", "json"]
    cmd += ["--device", "cpu", "--quiet", *extra]
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def floats(doc, where: str = ""):
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from floats(v, f"{where}.{k}")
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from floats(v, f"{where}[{i}]")
    elif isinstance(doc, float):
        yield where, doc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rev", help="the git revision to compare with")
    ap.add_argument("--new", default=None, help="a second revision instead of this checkout")
    ap.add_argument("--threads", default=None, help="--threads for both")
    args = ap.parse_args()
    extra = ["--threads", args.threads] if args.threads else []
    with tempfile.TemporaryDirectory() as tmp:
        old, new = Path(tmp) / "old", REPO
        trees = [(old, args.rev)] + ([(Path(tmp) / "new", args.new)] if args.new else [])
        for tree, rev in trees:
            subprocess.run(
                ["git", "worktree", "add", "-q", "--detach", str(tree), rev], cwd=REPO, check=True
            )
        if args.new:
            new = trees[1][0]
        try:
            rows = []
            for name, case in golden.CASES.items():
                a, b = report(old, case, extra, tmp), report(new, case, extra, tmp)
                worst = {"metric": (0.0, ""), "output": (0.0, "")}
                pairs = dict(floats(b))
                for where, x in floats(a):
                    y = pairs.get(where)
                    if y is None or where.endswith(("_s", "seconds")) or "elapsed" in where:
                        continue
                    rel = abs(x - y) / max(abs(x), abs(y), 1e-300) if x != y else 0.0
                    kind = "output" if where.rsplit(".", 1)[-1] in OUTPUT_FIELDS else "metric"
                    worst[kind] = max(worst[kind], (rel, where))
                rows.append((name, worst))
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(old)], cwd=REPO, check=False
            )
    print("| case | max rel. diff, metrics (field) | max rel. diff, float32 output fields |")
    print("|---|---|---|")
    for name, w in rows:
        m, o = w["metric"], w["output"]
        print(f"| {name} | {m[0]:.1e} ({m[1] or '-'}) | {o[0]:.1e} |")


if __name__ == "__main__":
    main()
