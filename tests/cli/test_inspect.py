"""``nrc inspect``: tensors, metadata, the model route and the weight layers, no data needed."""

from __future__ import annotations

import io
import json
import re

import pandas as pd
import pytest
import torch
from conftest import SAMPLES_DIR, make_tiny_case
from helpers import Wrapped, error_line, invoke, mlp, save_model
from safetensors.torch import save_file


def _inspect_json(*args) -> dict:
    result = invoke(["inspect", *args, "--format", "json"])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_inferred_mlp_tensors_metadata_and_forward_order(tmp_path):
    dims = (3, *[4] * 10, 2)  # 11 Linear layers: net.0 ... net.20
    case = make_tiny_case(
        tmp_path,
        dims=dims,
        norm="batchnorm",
        dyadic=False,
        n=20,
        metadata={"epochs": "5", "note": "tiny"},
    )
    doc = _inspect_json(case.checkpoint)
    state = case.model.state_dict()
    assert doc["checkpoint"] == str(case.checkpoint)
    assert doc["format"] == "safetensors"
    assert doc["metadata"] == {"epochs": "5", "note": "tiny"}
    assert {t["name"] for t in doc["tensors"]} == set(state)
    for t in doc["tensors"]:
        assert t["shape"] == list(state[t["name"]].shape)
        assert t["numel"] == state[t["name"]].numel()
    assert doc["n_parameters"] == sum(v.numel() for v in state.values())
    assert doc["model"]["route"] == "inferred"
    assert "batchnorm" in doc["model"]["description"]
    assert doc["layer_order"] == "forward"
    linears = [f"net.{3 * i}" for i in range(11)]  # Linear, BatchNorm1d, ReLU per block
    assert [r["layer"] for r in doc["layers"]] == linears
    assert [r["index"] for r in doc["layers"]] == list(range(1, 12))
    assert [r["in_dim"] for r in doc["layers"]] == [3, *[4] * 10]
    assert doc["layers"][-1]["weight_shape"] == [2, 4]
    assert all(r["type"] == "Linear" for r in doc["layers"])


def test_metadata_route_is_reported():
    doc = _inspect_json(SAMPLES_DIR / "mlp_wd.safetensors")
    assert doc["model"]["route"] == "metadata"
    assert json.loads(doc["metadata"]["nrc.arch"])["type"] == "mlp"
    assert [r["layer"] for r in doc["layers"]] == [f"net.{2 * i}" for i in range(6)]
    assert "weight_decay" in doc["metadata"]


def test_arch_route_is_reported(tmp_path):
    src = tmp_path / "f.py"
    src.write_text(
        "from torch import nn\n\n\ndef make(width=3):\n"
        "    return nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Linear(width, 2))\n"
    )
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))
    ckpt = save_model(tmp_path / "m.safetensors", model)
    doc = _inspect_json(ckpt, "--arch", f"{src}:make", "--arch-kwargs", '{"width": 5}')
    assert doc["model"]["route"] == "arch"
    assert [r["layer"] for r in doc["layers"]] == ["0", "2"]
    assert [r["weight_shape"] for r in doc["layers"]] == [[5, 4], [2, 5]]


@pytest.mark.parametrize(
    ("state", "reason"),
    [
        ({"block.weight": torch.zeros(2, 3, 4)}, r"module 'block' .* is neither a Linear"),
        ({"a.weight": torch.zeros(5, 4), "b.weight": torch.zeros(2, 6)}, r"in_features 6"),
    ],
)
def test_uninferable_checkpoint_still_exits_0_with_the_reason(tmp_path, state, reason):
    path = tmp_path / "odd.safetensors"
    save_file(state, str(path))
    doc = _inspect_json(path)
    assert doc["model"] is None
    assert re.search(reason, doc["model_error"])
    assert "--arch" in doc["model_error"]  # the hint travels with the reason
    assert doc["layers"] == []
    assert {t["name"] for t in doc["tensors"]} == set(state)


def test_uninferable_checkpoint_in_the_table(tmp_path):
    path = tmp_path / "odd.safetensors"
    save_file({"block.weight": torch.zeros(2, 3, 4)}, str(path))
    result = invoke(["inspect", path], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.stderr
    assert "block.weight" in result.stdout
    assert "model: cannot build one:" in result.stdout


def test_table_lists_tensors_metadata_and_layers(tmp_path):
    case = make_tiny_case(tmp_path, dims=(4, 6, 2), metadata={"epochs": "5"})
    result = invoke(["inspect", case.checkpoint], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.stderr
    for name in ("net.0.weight", "net.2.bias", "epochs", "model (inferred)"):
        assert name in result.stdout
    assert "weight layers, in forward order" in result.stdout
    assert result.stderr == ""


def test_csv_lists_one_row_per_tensor(tmp_path):
    case = make_tiny_case(tmp_path, dims=(4, 6, 2))
    result = invoke(["inspect", case.checkpoint, "--format", "csv"])
    assert result.exit_code == 0, result.stderr
    frame = pd.read_csv(io.StringIO(result.stdout))
    assert set(frame["name"]) == set(case.model.state_dict())
    assert dict(zip(frame["name"], frame["shape"], strict=True))["net.0.weight"] == "6x4"


def test_json_to_a_file(tmp_path):
    case = make_tiny_case(tmp_path, dims=(4, 6, 2))
    out = tmp_path / "inspect.json"
    result = invoke(["inspect", case.checkpoint, "--output", out])
    assert result.exit_code == 0 and result.stdout == ""
    assert json.loads(out.read_text()) == _inspect_json(case.checkpoint)


def test_pt_state_dict(tmp_path):
    model = Wrapped(mlp((4, 6, 2)))
    path = tmp_path / "m.pt"
    torch.save(model.state_dict(), path)
    doc = _inspect_json(path)
    assert doc["format"] == "pt" and doc["metadata"] == {}
    assert [r["layer"] for r in doc["layers"]] == ["net.0", "net.2"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--arch-kwargs", "{width"], "--arch-kwargs: expected a JSON object"),
        (["--arch", "nowhere_at_all.py:make"], "--arch: file 'nowhere_at_all.py' does not exist"),
        (["--activation", "swish"], "--activation: unknown activation 'swish'"),
        (["--format", "xml"], "--format: expected one of"),
    ],
)
def test_bad_options_are_usage_errors(tmp_path, args, message):
    case = make_tiny_case(tmp_path, dims=(4, 6, 2))
    line = error_line(invoke(["inspect", case.checkpoint, *args]))
    assert message in line


def test_unreadable_checkpoint_is_an_error(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x00" * 4)
    assert "not a safetensors file" in error_line(invoke(["inspect", path]))
    assert "checkpoint not found" in error_line(invoke(["inspect", tmp_path / "x.safetensors"]))


def test_inspect_lists_the_layers_a_glob_selects(tmp_path):
    from conftest import make_tiny_case

    case = make_tiny_case(tmp_path / "tiny")
    done = invoke(["inspect", case.checkpoint, "--layers", "net.*", "--exclude", "net.[46]"])
    assert done.exit_code == 0, done.stderr
    doc = json.loads(
        invoke(
            ["inspect", case.checkpoint, "--layers", "net.*", "--exclude", "net.[46]", "-f", "json"]
        ).stdout
    )
    assert [row["layer"] for row in doc["layers"]] == ["net.0", "net.2"]
    assert doc["selection"] == {"layers": ["net.*"], "exclude": ["net.[46]"], "of": 4}
    assert "2 of 4" in done.stdout and "forward order" in done.stdout
    bad = invoke(["inspect", case.checkpoint, "--layers", "**.dense"])
    assert bad.exit_code == 2 and "--layers '**.dense' matches no weight layer" in bad.stderr
