"""Hostile inputs on the command line, round three: outputs that are also inputs, names that
hold control characters, label values that nothing bounds.

Real files in ``tmp_path`` throughout; every refusal is exit 2 with one ``error:`` line and
leaves the inputs as they were.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import error_line, invoke, mlp, save_model

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def spec_case(tmp_path):
    """A classifier and a CSV table read through a TOML data spec."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 4)).astype(np.float32)
    y = np.arange(60) % 3
    lines = ["x0,x1,x2,x3,y"] + [
        ",".join([*map(str, row), str(c)]) for row, c in zip(x, y, strict=True)
    ]
    (tmp_path / "table.csv").write_text("\n".join(lines) + "\n")
    spec = tmp_path / "spec.toml"
    spec.write_text('file = "table.csv"\n[inputs]\ncolumns = ["x*"]\n[targets]\ncolumns = ["y"]\n')
    ckpt = save_model(tmp_path / "model.safetensors", mlp((4, 8, 3), seed=0))
    return tmp_path, ckpt, spec


def _links(folder: Path) -> dict[str, Path]:
    table = folder / "table.csv"
    (folder / "soft.csv").symlink_to(table)
    os.link(table, folder / "hard.csv")
    return {"itself": table, "symlink": folder / "soft.csv", "hard link": folder / "hard.csv"}


@pytest.mark.parametrize("how", ["itself", "symlink", "hard link"])
def test_an_output_onto_a_file_the_data_spec_reads_is_refused(spec_case, how):
    folder, ckpt, spec = spec_case
    out = _links(folder)[how]
    before = (folder / "table.csv").read_bytes()
    runs = {
        "analyze": ["analyze", ckpt, "--data", spec, "--output", out],
        "audit": ["audit", ckpt, "--data", spec, "--output", out],
        "audit --errors": ["audit", ckpt, "--data", spec, "--errors", out],
        "check": [
            "check",
            ckpt,
            "--data",
            spec,
            "--require",
            "nc1[-1] <= 9",
            "-f",
            "json",
            "-o",
            out,
        ],
    }
    for name, args in runs.items():
        if name == "audit --errors":
            args = [*args, "--output", folder / "audit.csv"]
        line = error_line(invoke(args))
        flag = "--errors" if name == "audit --errors" else "--output"
        assert f"error: {flag} '{out}' is the file '{folder / 'table.csv'}' read by --data" in line
        assert (folder / "table.csv").read_bytes() == before, name
    assert not (folder / "audit.csv").exists()
    # The spec itself is an input too; another path is fine.
    error_line(invoke(["analyze", ckpt, "--data", spec, "--output", spec]))
    good = folder / "report.json"
    result = invoke(["analyze", ckpt, "--data", spec, "--task", "classification", "-o", good])
    assert result.exit_code == 0, result.stderr


@pytest.mark.parametrize("where", ["checkpoint", "data"])
def test_a_missing_file_whose_name_holds_a_newline_is_one_error_line(tmp_path, where):
    ckpt = save_model(tmp_path / "model.safetensors", mlp((4, 8, 3), seed=0))
    np.savez(tmp_path / "data.npz", x=np.zeros((6, 4), np.float32), y=np.arange(6) % 3)
    bad = tmp_path / "no\nerror: forged\x1b[31m.npz"
    args = ["analyze", bad, "--data", tmp_path / "data.npz"]
    if where == "data":
        args = ["analyze", ckpt, "--data", bad]
    line = error_line(invoke(args))  # exactly one error: line, one hint: line at most
    assert "no\\nerror: forged\\x1b[31m.npz" in line
    assert "not found" in line


def test_one_label_of_10_12_without_an_output_is_one_class_in_little_memory(tmp_path):
    # --no-prediction: nothing bounds the labels. One label of 10^12 used to ask for 8.8 TB.
    ckpt = save_model(tmp_path / "model.safetensors", mlp((4, 8, 2), seed=0))
    rng = np.random.default_rng(1)
    y = np.arange(200, dtype=np.int64) % 2
    y[7] = 10**12
    np.savez(tmp_path / "data.npz", x=rng.standard_normal((200, 4)).astype(np.float32), y=y)
    out = tmp_path / "report.json"
    args = ["analyze", ckpt, "--data", tmp_path / "data.npz", "--no-prediction", "-o", out]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    done = subprocess.run(
        [sys.executable, "-m", "nrc_cli", *map(str, args)],
        capture_output=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    assert max(peak, before) < 1024 * 1024  # kB: under 1 GB
    doc = json.loads(out.read_text())
    assert doc["summary"]["n_classes"] == 3
    # Too many classes for the limit: a clear error, before anything is allocated.
    env["NRC_MAX_CLASSES"] = "2"
    done = subprocess.run(
        [sys.executable, "-m", "nrc_cli", *map(str, args)],
        capture_output=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 2
    lines = done.stderr.decode().strip().splitlines()
    assert lines[0].startswith("error: the labels hold 3 distinct values so far, more than the")
    assert "NRC_MAX_CLASSES" in lines[0]
