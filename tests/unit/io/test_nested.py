"""Checkpoints as research code saves them (nrc_cli.io.nested): .pth.tar, nested dicts,
--state-key, and 1-D per-sample inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import analyze_json, error_line, invoke, mlp, save_model, save_npz
from torch import nn

from nrc_cli.errors import CheckpointError, ConfigError
from nrc_cli.io.checkpoint import open_checkpoint
from nrc_cli.io.nested import find_state, state_paths


@pytest.fixture
def case(tmp_path):
    model = mlp((6, 16, 3), seed=3)
    rng = np.random.default_rng(0)
    data = save_npz(
        tmp_path / "d.npz",
        x=rng.standard_normal((200, 6)).astype(np.float32),
        y=rng.standard_normal((200, 3)),
    )
    other = mlp((6, 16, 3), seed=4)
    nested = {
        "epoch": 90,
        "arch": "mlp",
        "model": {"state_dict": model.state_dict()},
        "ema": {"state_dict": other.state_dict(), "decay": 0.999},
        "optimizer": {"param_groups": [{"lr": 0.1}]},
    }
    zipped = tmp_path / "run.pth.tar"
    torch.save(nested, zipped)
    legacy = tmp_path / "legacy.pth.tar"
    torch.save(nested, legacy, _use_new_zipfile_serialization=False)
    plain = save_model(tmp_path / "plain.safetensors", model)
    ema = save_model(tmp_path / "ema.safetensors", other)
    return {"zipped": zipped, "legacy": legacy, "plain": plain, "ema": ema, "data": data}


def test_paths_are_found_and_followed():
    state = {"w": torch.zeros(2)}
    obj = {"epoch": 1, "model": {"state_dict": state}, "model.ema": state, "opt": {"s": {}}}
    assert state_paths(obj) == ["model.state_dict", "model.ema"]
    assert find_state(obj, "model.state_dict", where="f") == state
    assert find_state(obj, "model.ema", where="f") == state  # a key that holds a dot
    with pytest.raises(
        CheckpointError,
        match=r"f: --state-key 'model\.weights': no key 'weights' under 'model'; found "
        r"'state_dict'",
    ) as err:
        find_state(obj, "model.weights", where="f")
    assert err.value.hint == "dicts of tensors in this file: model.state_dict, model.ema"
    with pytest.raises(CheckpointError, match=r"no key 'net' at the top level; found 'epoch'"):
        find_state(obj, "net", where="f")
    with pytest.raises(CheckpointError, match=r"'epoch' holds int, not a dict"):
        find_state(obj, "epoch.x", where="f")
    with pytest.raises(CheckpointError, match="leads to dict, not a dict of tensors"):
        find_state(obj, "opt", where="f")
    with pytest.raises(ConfigError, match="expected a dotted path"):
        find_state(obj, "..", where="f")


@pytest.mark.parametrize("which", ["zipped", "legacy"])
def test_a_pth_tar_with_a_state_key_gives_the_numbers_of_the_plain_file(case, which):
    want = analyze_json(case["plain"], case["data"])
    got = analyze_json(case[which], case["data"], "--state-key", "model.state_dict")
    assert got["layers"] == want["layers"]
    ema = analyze_json(case[which], case["data"], "--state-key", "ema.state_dict")
    assert ema["layers"] == analyze_json(case["ema"], case["data"])["layers"]


def test_a_nested_file_without_a_state_key_names_the_candidates(case):
    result = invoke(["analyze", case["zipped"], "--data", case["data"]])
    line = error_line(result)
    assert "expected a state dict of tensors" in line and "found non-tensor entries" in line
    assert "hint: pick one with --state-key: model.state_dict, ema.state_dict" in result.stderr
    result = invoke(["analyze", case["zipped"], "--data", case["data"], "--state-key", "ema.sd"])
    assert "--state-key 'ema.sd': no key 'sd' under 'ema'; found 'state_dict', 'decay'" in (
        error_line(result)
    )
    result = invoke(["analyze", case["plain"], "--data", case["data"], "--state-key", "model"])
    assert "--state-key applies to torch.save files" in error_line(result)


def test_inspect_lists_the_state_dicts_of_a_file(case):
    result = invoke(["inspect", case["zipped"], "--state-key", "ema.state_dict", "-f", "json"])
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["state_paths"] == ["model.state_dict", "ema.state_dict"]
    assert doc["state_key"] == "ema.state_dict"
    assert [t["name"] for t in doc["tensors"]] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    table = invoke(["inspect", case["zipped"], "--state-key", "model.state_dict"])
    assert "state dicts in this file: model.state_dict, ema.state_dict" in table.stdout
    ckpt = open_checkpoint(case["legacy"], state_key="model.state_dict")
    assert ckpt.format == "pt" and len(ckpt.state_dict()) == 4


class Scaled(nn.Module):
    """A model with a per-sample count as a keyword input (1-D)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 8)
        self.b = nn.Linear(8, 1)

    def forward(self, x, n_atoms):
        return self.b(torch.relu(self.a(x))) * n_atoms.unsqueeze(1).to(x.dtype)


def make_scaled() -> nn.Module:
    torch.manual_seed(5)
    return Scaled()


def test_a_named_input_may_be_one_number_per_sample(tmp_path):
    ckpt = save_model(tmp_path / "m.safetensors", make_scaled())
    rng = np.random.default_rng(1)
    data = save_npz(
        tmp_path / "d.npz",
        x=rng.standard_normal((120, 4)).astype(np.float32),
        n_atoms=rng.integers(1, 5, 120),
        y=rng.standard_normal(120),
    )
    arch = f"{__name__}:make_scaled"
    doc = analyze_json(ckpt, data, "--arch", arch, "--input", "x", "--input", "n_atoms")
    assert [r["layer"] for r in doc["layers"]] == ["a", "b"]
    # A single positional input must still be (N, features).
    flat = save_npz(tmp_path / "flat.npz", x=rng.standard_normal(120), y=rng.standard_normal(120))
    result = invoke(["analyze", ckpt, "--data", flat, "--arch", arch])
    assert "must be 2-D or more" in error_line(result)
