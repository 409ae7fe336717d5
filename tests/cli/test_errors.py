"""Bad input and bad usage: exit code 2, one ``error:`` line (and a ``hint:``), no traceback.

Every case runs ``nrc analyze`` with ``--output`` into an empty folder and checks that nothing
was written there (no result, no temporary file). The wording is pinned on its key parts: what
was expected, what was found and where (file, key, layer, sample).
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_case
from helpers import (
    BROKEN_FACTORY,
    Wrapped,
    error_line,
    invoke,
    mlp,
    overflow_case,
    save_model,
    save_npz,
)
from safetensors.torch import save_file


@pytest.fixture
def case(tmp_path):
    return make_tiny_case(tmp_path / "in", dims=(4, 6, 2), n=60)


@pytest.fixture
def out_dir(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def _analyze(checkpoint, data, out_dir: Path, *extra, env=None):
    """Run analyze writing to ``out_dir/report.json``; check the error contract; return it."""
    result = invoke(
        ["analyze", checkpoint, "--data", data, "--output", out_dir / "report.json", *extra],
        env=env,
    )
    line = error_line(result)
    assert list(out_dir.iterdir()) == [], "an output (or temporary) file was left behind"
    return line, result.stderr


def _hint(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    return lines[1] if len(lines) > 1 else ""


# ------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------


def test_missing_data_key(case, out_dir):
    save_npz(case.data, x=case.x, targets=case.y)
    line, err = _analyze(case.checkpoint, case.data, out_dir)
    assert re.search(
        r"no array 'y' for the targets \(--y-key\); the file holds: 'x', 'targets'", line
    )
    assert str(case.data) in line
    assert "--y-key" in _hint(err)


def test_missing_custom_x_key(case, out_dir):
    line, _ = _analyze(case.checkpoint, case.data, out_dir, "--x-key", "inputs")
    assert "no array 'inputs' for the inputs (--x-key)" in line


def test_object_array_is_refused_without_unpickling(case, out_dir):
    objects = np.empty(len(case.y), dtype=object)
    objects[:] = [{"y": float(v)} for v in case.y[:, 0]]
    np.savez(case.data, x=case.x, y=objects)
    line, _ = _analyze(case.checkpoint, case.data, out_dir)
    assert re.search(r"array 'y' has dtype object .*pickle", line)


def test_sample_counts_of_x_and_y_differ(case, out_dir):
    save_npz(case.data, x=case.x, y=case.y[:-5])
    line, _ = _analyze(case.checkpoint, case.data, out_dir)
    assert "same number of samples" in line
    assert "'x' has shape (60, 4)" in line and "'y' has shape (55, 2)" in line


def test_zero_samples(case, out_dir):
    save_npz(case.data, x=case.x[:0], y=case.y[:0])
    line, _ = _analyze(case.checkpoint, case.data, out_dir)
    assert "zero samples" in line and "(0, 4)" in line


def test_feature_count_differs_from_the_model_input(case, out_dir):
    save_npz(case.data, x=np.ones((60, 5), np.float32), y=case.y)
    line, _ = _analyze(case.checkpoint, case.data, out_dir)
    assert re.search(r"input 'x' has 5 features .*first layer 'net\.0' expects 4", line)


def test_target_width_differs_from_the_model_output(case, out_dir):
    save_npz(case.data, x=case.x, y=np.ones((60, 3), np.float32))
    line, err = _analyze(case.checkpoint, case.data, out_dir)
    assert re.search(r"targets 'y' have 3 column\(s\) .*the model outputs 2", line)
    assert "--y-key" in _hint(err)


def test_nan_in_x_names_the_sample(case, out_dir):
    x = case.x.copy()
    x[37, 2] = np.nan
    save_npz(case.data, x=x, y=case.y)
    line, _ = _analyze(case.checkpoint, case.data, out_dir, "--batch-size", 16)
    assert re.search(r"array 'x' has a non-finite value \(nan\) at sample 37\b", line)


def test_inf_in_y_names_the_sample(case, out_dir):
    y = case.y.copy()
    y[12, 1] = -np.inf
    save_npz(case.data, x=case.x, y=y)
    line, _ = _analyze(case.checkpoint, case.data, out_dir, "--batch-size", 5)
    assert re.search(r"array 'y' has a non-finite value \(-inf\) at sample 12\b", line)


def test_non_finite_features_name_the_layer_and_the_sample(tmp_path, out_dir):
    """The first Linear overflows float32 only on sample 123; the next layer's input is inf."""
    ckpt, data = overflow_case(tmp_path)
    line, _ = _analyze(ckpt, data, out_dir, "--batch-size", 50)
    assert re.search(r"layer 'net\.2': non-finite features \(nan or inf\) at sample 123\b", line)


def test_finite_features_whose_float32_sum_overflows_are_analysed(tmp_path):
    """Every feature ~2e36 is finite in float32; 200 of them sum past float32's 3.4e38."""
    body = mlp((3, 4, 2), seed=1)
    with torch.no_grad():
        body[0].weight.fill_(0.0)
        body[0].weight[:, 0] = torch.tensor([1e36, 2e36, 3e36, 4e36])
        body[0].bias.zero_()
        body[2].weight.fill_(1e-3)
    ckpt = save_model(tmp_path / "m.safetensors", Wrapped(body))
    rng = np.random.default_rng(0)
    x = rng.uniform(0.5, 1.0, (200, 3)).astype(np.float32)
    data = save_npz(tmp_path / "d.npz", x=x, y=rng.standard_normal((200, 2)).astype(np.float32))
    result = invoke(["analyze", ckpt, "--data", data, "--format", "json"])
    assert result.exit_code == 0, result.stderr
    layers = json.loads(result.stdout)["layers"]
    assert layers[1]["layer"] == "net.2"
    assert layers[1]["nrc1_noise"] == pytest.approx(0.0, abs=1e-9)  # features of rank 1


def test_data_file_not_found(case, out_dir):
    line, _ = _analyze(case.checkpoint, case.data.with_name("nope.npz"), out_dir)
    assert "nope.npz: data file not found" in line


def test_data_file_that_is_not_an_npz(case, out_dir):
    case.data.write_text("x,y\n1,2\n")
    line, _ = _analyze(case.checkpoint, case.data, out_dir)
    assert "expected an .npz file" in line and "a text file" in line


# ------------------------------------------------------------------------------------------------
# Checkpoints and models
# ------------------------------------------------------------------------------------------------


def test_checkpoint_not_found(case, out_dir):
    line, _ = _analyze(case.checkpoint.with_name("missing.safetensors"), case.data, out_dir)
    assert "missing.safetensors: checkpoint not found" in line


def test_truncated_safetensors(case, out_dir):
    raw = case.checkpoint.read_bytes()
    case.checkpoint.write_bytes(raw[: len(raw) - 20])
    line, _ = _analyze(case.checkpoint, case.data, out_dir)
    assert re.search(r"truncated: tensor '[\w.]+' ends at byte \d+", line)


def test_non_safetensors_bytes_with_the_suffix(case, out_dir):
    case.checkpoint.write_bytes(b"this is certainly not a safetensors checkpoint" * 3)
    line, err = _analyze(case.checkpoint, case.data, out_dir)
    assert "not a safetensors file" in line
    assert "safetensors" in _hint(err)


def test_tiny_file_with_the_suffix(case, out_dir):
    case.checkpoint.write_bytes(b"abc")
    line, _ = _analyze(case.checkpoint, case.data, out_dir)
    assert "not a safetensors file: 3 bytes" in line


def test_corrupt_json_header(case, out_dir):
    header = b'{"net.0.weight": {"dtype": "F32", "shape": [6, 4], '  # cut mid-object
    case.checkpoint.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 96)
    line, _ = _analyze(case.checkpoint, case.data, out_dir)
    assert "corrupt safetensors header" in line


def test_pt_file_holding_a_pickled_object_is_refused(case, tmp_path, out_dir):
    path = tmp_path / "model.pt"
    torch.save({"model": Wrapped(mlp((4, 6, 2)))}, path)  # a whole module: needs pickle
    line, err = _analyze(path, case.data, out_dir)
    assert "refused" in line and "pickle" in line
    assert "state_dict" in _hint(err)


def test_uninferable_checkpoint_names_arch(case, tmp_path, out_dir):
    path = tmp_path / "odd.safetensors"
    save_file({"block.weight": torch.zeros(2, 3, 4)}, str(path))
    line, err = _analyze(path, case.data, out_dir)
    assert "cannot infer an MLP" in line and "'block'" in line
    assert "--arch" in _hint(err)


def test_arch_file_that_does_not_exist(case, tmp_path, out_dir):
    missing = tmp_path / "nowhere.py"
    line, _ = _analyze(case.checkpoint, case.data, out_dir, "--arch", f"{missing}:make")
    assert f"--arch: file '{missing}' does not exist" in line


def test_arch_factory_that_raises(case, tmp_path, out_dir):
    src = tmp_path / "factory.py"
    src.write_text("def make(width=3):\n    raise ValueError(f'no model of width {width}')\n")
    line, err = _analyze(
        case.checkpoint,
        case.data,
        out_dir,
        "--arch",
        f"{src}:make",
        "--arch-kwargs",
        '{"width": 9}',
    )
    assert re.search(
        r"--arch: the factory '.*factory\.py:make' raised ValueError: no model of width 9", line
    )
    assert "--arch-kwargs" in _hint(err)


def test_arch_callable_missing(case, tmp_path, out_dir):
    src = tmp_path / "factory.py"
    src.write_text("def build():\n    return None\n")
    line, err = _analyze(case.checkpoint, case.data, out_dir, "--arch", f"{src}:make")
    assert "has no callable 'make'" in line
    assert "build" in _hint(err)


def test_arch_factory_with_lazy_layers(case, tmp_path, out_dir):
    """Lazy layers have no shape before a forward pass: refused, not an internal error."""
    src = tmp_path / "lazy.py"
    src.write_text(
        "from torch import nn\n\n\ndef make():\n"
        "    return nn.Sequential(nn.LazyLinear(6), nn.ReLU(), nn.Linear(6, 2))\n"
    )
    line, err = _analyze(case.checkpoint, case.data, out_dir, "--arch", f"{src}:make")
    assert "--arch: the model has uninitialized lazy parameters (0.bias, 0.weight)" in line
    assert "nn.LazyLinear" in _hint(err)


@pytest.mark.parametrize("kwargs", ["{width: 3}", "[1, 2]"])
def test_arch_kwargs_not_a_json_object(case, tmp_path, out_dir, kwargs):
    src = tmp_path / "factory.py"
    src.write_text("def make(**kw):\n    return None\n")
    line, _ = _analyze(
        case.checkpoint, case.data, out_dir, "--arch", f"{src}:make", "--arch-kwargs", kwargs
    )
    assert "--arch-kwargs: expected a JSON object" in line


# ------------------------------------------------------------------------------------------------
# Options
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value", "pattern"),
    [
        ("--rank", "0", r"--rank: expected an integer >= 1, found 0"),
        ("--rank", "-3", r"--rank: expected an integer >= 1, found -3"),
        ("--batch-size", "0", r"--batch-size: expected an integer >= 1, found 0"),
        ("--max-samples", "0", r"--max-samples: expected an integer >= 1, found 0"),
        (
            "--format",
            "yaml",
            r"--format: expected one of table, markdown, json, csv, parquet, found 'yaml'",
        ),
        ("--activation", "swish", r"unknown activation 'swish'"),
        ("--dtype", "int8", r"--dtype: expected one of .*found 'int8'"),
        ("--rank", "two", r"Invalid value for '--rank'"),
    ],
)
def test_bad_option_values(case, out_dir, option, value, pattern):
    line, _ = _analyze(case.checkpoint, case.data, out_dir, option, value)
    assert re.search(pattern, line), line


@pytest.mark.parametrize(
    ("rule", "pattern"),
    [
        ("nrc1_noise<0.2", r"cannot parse term 'nrc1_noise<0\.2'"),
        ("nrc1_noise=0.2", r"cannot parse term 'nrc1_noise=0\.2'"),
        ("bogus<=0.2", r"unknown column 'bogus'"),
        ("nrc1_noise<=abc", r"'abc' in term 'nrc1_noise<=abc' is not a finite number"),
        ("nrc1_noise<=0.2,", r"cannot parse term ''"),
        ("", r"empty rule"),
    ],
)
def test_malformed_collapse_rule(case, out_dir, rule, pattern):
    line, _ = _analyze(case.checkpoint, case.data, out_dir, "--collapse-rule", rule)
    assert line.startswith("error: --collapse-rule:")
    assert re.search(pattern, line), line


def test_output_folder_that_does_not_exist(case, tmp_path):
    target = tmp_path / "no" / "such" / "folder" / "r.json"
    result = invoke(["analyze", case.checkpoint, "--data", case.data, "--output", target])
    line = error_line(result)
    assert re.search(r"--output '.*r\.json': the folder '.*folder' does not exist", line)
    assert not (tmp_path / "no").exists()


def test_output_suffix_without_a_format(case, out_dir):
    result = invoke(["analyze", case.checkpoint, "-d", case.data, "-o", out_dir / "r.xlsx"])
    assert "cannot tell the format from the suffix '.xlsx'" in error_line(result)
    assert list(out_dir.iterdir()) == []


def test_parquet_needs_an_output_file(case):
    result = invoke(["analyze", case.checkpoint, "--data", case.data, "--format", "parquet"])
    assert "--format parquet needs --output PATH" in error_line(result)


def test_unknown_option_is_a_usage_error(case):
    result = invoke(["analyze", case.checkpoint, "--data", case.data, "--colour", "red"])
    line = error_line(result)
    assert "--colour" in line


def test_missing_data_option_is_a_usage_error(case):
    line = error_line(invoke(["analyze", case.checkpoint]))
    assert "--data" in line


def test_existing_output_is_kept_when_the_run_fails(case, out_dir):
    """Atomic writes: a failed run leaves the previous report untouched."""
    report = out_dir / "report.json"
    ok = invoke(["analyze", case.checkpoint, "--data", case.data, "--output", report])
    assert ok.exit_code == 0, ok.stderr
    before = report.read_bytes()
    json.loads(before)
    save_npz(case.data, x=case.x[:, :3], y=case.y)
    result = invoke(["analyze", case.checkpoint, "--data", case.data, "--output", report])
    error_line(result)
    assert report.read_bytes() == before
    assert [p.name for p in out_dir.iterdir()] == ["report.json"]


# ------------------------------------------------------------------------------------------------
# Internal errors (exit code 3)
# ------------------------------------------------------------------------------------------------


def _internal(case, tmp_path, env=None):
    src = tmp_path / "broken.py"
    src.write_text(BROKEN_FACTORY)
    return invoke(
        ["analyze", case.checkpoint, "--data", case.data, "--arch", f"{src}:make"], env=env
    )


def test_internal_error_is_short_without_a_traceback(case, tmp_path):
    result = _internal(case, tmp_path, env={"NRC_DEBUG": "0"})
    assert result.exit_code == 3, result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert lines[0] == "error: internal error: RuntimeError: mode switch failed"
    assert lines[1].startswith("hint:") and "NRC_DEBUG=1" in lines[1]
    assert len(lines) == 2 and "Traceback" not in result.stderr


def test_internal_error_shows_the_traceback_with_nrc_debug(case, tmp_path):
    result = _internal(case, tmp_path, env={"NRC_DEBUG": "1"})
    assert result.exit_code == 3
    assert result.stderr.startswith("error: internal error: RuntimeError: mode switch failed\n")
    assert "Traceback (most recent call last)" in result.stderr
    assert "broken.py" in result.stderr
