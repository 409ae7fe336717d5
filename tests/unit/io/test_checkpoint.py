"""Tests for :mod:`nrc_cli.io.checkpoint`: files, Hugging Face folders and shards, refusals.

Every checkpoint is written in ``tmp_path`` with the real libraries (torch.save,
safetensors.torch.save_file); the CLI tests run ``nrc analyze`` through typer's CliRunner.
"""

from __future__ import annotations

import argparse
import json
import struct

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from typer.testing import CliRunner

from nrc_cli.cli import app
from nrc_cli.errors import CheckpointError
from nrc_cli.io.checkpoint import Checkpoint, open_checkpoint

# ------------------------------------------------------------------------------------------------
# Builders
# ------------------------------------------------------------------------------------------------


class _Net(nn.Module):
    """A plain MLP whose keys (net.0.weight, ...) nrc infers without --arch."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2)
        )


class _Custom:
    """A class a training script might pickle into a checkpoint."""

    def __init__(self) -> None:
        self.weights = torch.ones(3)


def _state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v.detach().clone().contiguous() for k, v in _Net().state_dict().items()}


# The shards split net.2 across two files, as save_pretrained may do.
_SHARD_OF = {
    "net.0.weight": "model-00001-of-00002.safetensors",
    "net.0.bias": "model-00001-of-00002.safetensors",
    "net.2.weight": "model-00001-of-00002.safetensors",
    "net.2.bias": "model-00002-of-00002.safetensors",
    "net.4.weight": "model-00002-of-00002.safetensors",
    "net.4.bias": "model-00002-of-00002.safetensors",
}


def _sharded(folder, state, *, weight_map=None, config=True, metadata=None):
    """Write a Hugging Face style sharded folder; return it."""
    folder.mkdir(parents=True, exist_ok=True)
    for shard in sorted(set(_SHARD_OF.values())):
        part = {k: v for k, v in state.items() if _SHARD_OF[k] == shard}
        save_file(part, str(folder / shard), metadata=metadata or {"format": "pt"})
    index = {
        "metadata": {"total_size": sum(v.numel() * v.element_size() for v in state.values())},
        "weight_map": dict(_SHARD_OF if weight_map is None else weight_map),
    }
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    if config:
        (folder / "config.json").write_text(json.dumps({"hidden_size": 16, "model_type": "mlp"}))
    return folder


def _data(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((96, 6)).astype(np.float32)
    y = rng.standard_normal((96, 2)).astype(np.float32)
    path = tmp_path / "data.npz"
    np.savez(path, x=x, y=y)
    return path


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _analyze_json(ckpt, data) -> dict:
    result = _invoke("analyze", ckpt, "--data", data, "--format", "json", "--batch-size", "32")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    return {"layers": doc["layers"], "summary": doc["summary"]}


def _assert_same_state(a: dict, b: dict) -> None:
    assert list(a) == list(b) or sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------
# Same weights, every container
# ------------------------------------------------------------------------------------------------


def _containers(tmp_path) -> dict[str, object]:
    state = _state()
    out = {}
    single = tmp_path / "single.safetensors"
    save_file(state, str(single))
    out["safetensors"] = single
    out["sharded"] = _sharded(tmp_path / "sharded", state)
    hf_single = tmp_path / "hf_single"
    hf_single.mkdir()
    save_file(state, str(hf_single / "model.safetensors"))
    out["hf_single"] = hf_single
    for name, obj in {
        "plain": state,
        "model": {"model": state, "epoch": 3, "optimizer": {"lr": 0.1}},
        "state_dict": {"state_dict": state, "step": 10},
    }.items():
        p = tmp_path / f"{name}.pt"
        torch.save(obj, p)
        out[f"pt_{name}"] = p
    hf_bin = tmp_path / "hf_bin"
    hf_bin.mkdir()
    torch.save(state, hf_bin / "pytorch_model.bin")
    out["hf_bin"] = hf_bin
    return out


def test_every_container_gives_the_same_state_dict(tmp_path):
    ref = _state()
    for name, path in _containers(tmp_path).items():
        ckpt = open_checkpoint(path)
        assert isinstance(ckpt, Checkpoint)
        assert sorted(ckpt.tensors) == sorted(ref), name
        assert ckpt.n_parameters == sum(v.numel() for v in ref.values()), name
        _assert_same_state(ckpt.state_dict(), ref)


def test_every_container_gives_the_same_analysis(tmp_path):
    data = _data(tmp_path)
    containers = _containers(tmp_path)
    ref = _analyze_json(containers.pop("safetensors"), data)
    assert [row["layer"] for row in ref["layers"]] == ["net.0", "net.2", "net.4"]
    for name, path in containers.items():
        assert _analyze_json(path, data) == ref, name


def test_sharded_folder_attributes(tmp_path):
    folder = _sharded(tmp_path / "m", _state(), metadata={"format": "pt", "nrc.note": "hi"})
    ckpt = open_checkpoint(folder)
    assert ckpt.path == folder
    assert ckpt.format == "safetensors-sharded"
    assert ckpt.container == "folder"
    assert [f.name for f in ckpt.files] == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ]
    assert ckpt.metadata == {"format": "pt", "nrc.note": "hi"}
    assert ckpt.config == {"hidden_size": 16, "model_type": "mlp"}
    assert ckpt.tensors["net.2.bias"].shape == (16,)
    assert ckpt.tensors["net.2.bias"].dtype == "F32"


def test_index_file_given_directly(tmp_path):
    folder = _sharded(tmp_path / "m", _state())
    ckpt = open_checkpoint(folder / "model.safetensors.index.json")
    assert ckpt.format == "safetensors-sharded"
    assert ckpt.config is not None
    _assert_same_state(ckpt.state_dict(), _state())


def test_single_file_and_folder_attributes(tmp_path):
    c = _containers(tmp_path)
    single = open_checkpoint(c["safetensors"])
    assert (single.format, single.container, single.files, single.config) == (
        "safetensors",
        "file",
        [c["safetensors"]],
        None,
    )
    hf = open_checkpoint(c["hf_bin"])
    assert (hf.format, hf.container) == ("pt", "folder")
    assert hf.files == [c["hf_bin"] / "pytorch_model.bin"]


def test_folder_with_one_oddly_named_file(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    torch.save({"model": _state()}, folder / "last.pth")
    (folder / "notes.txt").write_text("lr=0.1")
    ckpt = open_checkpoint(folder)
    assert ckpt.format == "pt"
    assert ckpt.files == [folder / "last.pth"]


def test_folder_prefers_model_safetensors(tmp_path):
    """transformers' order: model.safetensors wins over pytorch_model.bin."""
    folder = tmp_path / "m"
    folder.mkdir()
    state = _state()
    save_file(state, str(folder / "model.safetensors"))
    torch.save({"other": torch.zeros(1)}, folder / "pytorch_model.bin")
    assert open_checkpoint(folder).format == "safetensors"


def test_hugging_face_cache_layout_with_symlinks(tmp_path):
    """snapshots/<rev>/ holds symbolic links into blobs/, as huggingface_hub writes them."""
    src = _sharded(tmp_path / "src", _state())
    blobs = tmp_path / "hub" / "blobs"
    snap = tmp_path / "hub" / "snapshots" / "abc123"
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    for i, f in enumerate(sorted(src.iterdir())):
        blob = blobs / f"{i:040x}"
        f.rename(blob)
        (snap / f.name).symlink_to(blob)
    ckpt = open_checkpoint(snap)
    assert ckpt.format == "safetensors-sharded" and ckpt.config is not None
    _assert_same_state(ckpt.state_dict(), _state())


def test_sharded_pt_bin(tmp_path):
    folder = tmp_path / "bin"
    folder.mkdir()
    state = _state()
    wm = {
        k: v.replace(".safetensors", ".bin").replace("model-", "pytorch_model-")
        for k, v in _SHARD_OF.items()
    }
    for shard in set(wm.values()):
        torch.save({k: v for k, v in state.items() if wm[k] == shard}, folder / shard)
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": wm}))
    ckpt = open_checkpoint(folder)
    assert ckpt.format == "pt-sharded"
    assert len(ckpt.files) == 2
    _assert_same_state(ckpt.state_dict(), state)


# ------------------------------------------------------------------------------------------------
# Refusals (library)
# ------------------------------------------------------------------------------------------------


def test_pickled_custom_class_is_refused(tmp_path):
    p = tmp_path / "obj.pt"
    torch.save(_Custom(), p)
    with pytest.raises(CheckpointError, match=r"obj\.pt: refused: .*_Custom.*pickle"):
        open_checkpoint(p)


def test_namespace_next_to_the_weights_is_refused(tmp_path):
    p = tmp_path / "ckpt.pt"
    torch.save({"model": _state(), "args": argparse.Namespace(lr=0.1)}, p)
    with pytest.raises(CheckpointError, match=r"argparse\.Namespace, which would need pickle"):
        open_checkpoint(p)


def test_whole_module_is_refused(tmp_path):
    p = tmp_path / "module.pt"
    torch.save(_Net(), p)
    with pytest.raises(CheckpointError, match="pickle") as info:
        open_checkpoint(p)
    assert "\x1b" not in str(info.value)  # torch's ANSI escapes are stripped
    assert "state_dict" in info.value.hint


def test_missing_shard(tmp_path):
    folder = _sharded(tmp_path / "m", _state())
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(
        CheckpointError,
        match=r"shard 'model-00002-of-00002\.safetensors' is missing .* 3 tensor\(s\) there, "
        r"e\.g\. 'net\.2\.bias'",
    ):
        open_checkpoint(folder)


def test_index_names_a_key_its_shard_lacks(tmp_path):
    wm = dict(_SHARD_OF, **{"net.6.weight": "model-00002-of-00002.safetensors"})
    folder = _sharded(tmp_path / "m", _state(), weight_map=wm)
    with pytest.raises(
        CheckpointError,
        match=r"places tensor 'net\.6\.weight' in shard 'model-00002-of-00002\.safetensors', "
        r"but that shard does not hold it",
    ):
        open_checkpoint(folder)


def test_shard_holds_a_key_the_index_omits(tmp_path):
    wm = {k: v for k, v in _SHARD_OF.items() if k != "net.4.bias"}
    folder = _sharded(tmp_path / "m", _state(), weight_map=wm)
    with pytest.raises(CheckpointError, match=r"holds tensor 'net\.4\.bias', which the index"):
        open_checkpoint(folder)


def test_key_in_two_shards(tmp_path):
    state = _state()
    folder = _sharded(tmp_path / "m", state)
    # Shard 2 also carries net.0.bias (which the index places in shard 1).
    part = {k: v for k, v in state.items() if _SHARD_OF[k].startswith("model-00002")}
    part["net.0.bias"] = state["net.0.bias"]
    save_file(part, str(folder / "model-00002-of-00002.safetensors"))
    with pytest.raises(CheckpointError, match=r"tensor 'net\.0\.bias' is stored twice"):
        open_checkpoint(folder)


def test_shards_disagree_on_metadata(tmp_path):
    state = _state()
    folder = _sharded(tmp_path / "m", state)
    part = {k: v for k, v in state.items() if _SHARD_OF[k].startswith("model-00002")}
    save_file(part, str(folder / "model-00002-of-00002.safetensors"), metadata={"format": "tf"})
    with pytest.raises(CheckpointError, match="shards disagree on metadata 'format'"):
        open_checkpoint(folder)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{not json", "not valid JSON"),
        ('{"metadata": {}}', r"expected an object with a non-empty 'weight_map'.*\['metadata'\]"),
        ('{"weight_map": {"a": 3}}', "entry 'a' is 3, expected a shard file name"),
        ('{"weight_map": {"a": "../x.safetensors"}}', "outside the folder"),
    ],
)
def test_corrupt_index(tmp_path, text, match):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.safetensors.index.json").write_text(text)
    with pytest.raises(CheckpointError, match=match):
        open_checkpoint(folder)


def test_bad_config_json(tmp_path):
    folder = _sharded(tmp_path / "m", _state(), config=False)
    (folder / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match=r"config\.json: expected a JSON object .* list"):
        open_checkpoint(folder)


def test_empty_folder_lists_what_it_found(tmp_path):
    (tmp_path / "readme.md").write_text("hi")
    with pytest.raises(CheckpointError, match=r"no checkpoint in this folder.*found readme\.md"):
        open_checkpoint(tmp_path)


def test_folder_with_several_files_and_no_index(tmp_path):
    for i in range(2):
        save_file({"w": torch.zeros(2)}, str(tmp_path / f"part{i}.safetensors"))
    with pytest.raises(CheckpointError, match=r"several safetensors .* part0\.safetensors"):
        open_checkpoint(tmp_path)


def test_truncated_and_corrupt_safetensors(tmp_path):
    good = tmp_path / "good.safetensors"
    save_file(_state(), str(good))
    raw = good.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(raw[:-10])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors: truncated: tensor"):
        open_checkpoint(cut)
    bad = tmp_path / "bad.safetensors"
    (n,) = struct.unpack("<Q", raw[:8])
    bad.write_bytes(raw[:8] + b"{" * n + raw[8 + n :])
    with pytest.raises(CheckpointError, match=r"bad\.safetensors: corrupt safetensors header"):
        open_checkpoint(bad)


def test_truncated_shard_names_the_shard(tmp_path):
    folder = _sharded(tmp_path / "m", _state())
    shard = folder / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-4])
    with pytest.raises(CheckpointError, match=r"model-00002-of-00002\.safetensors: truncated"):
        open_checkpoint(folder)


# ------------------------------------------------------------------------------------------------
# Refusals through the command line: exit code 2, one error line
# ------------------------------------------------------------------------------------------------


def _bad_checkpoints(tmp_path) -> dict[str, tuple[object, str]]:
    state = _state()
    out: dict[str, tuple[object, str]] = {}
    p = tmp_path / "custom.pt"
    torch.save(_Custom(), p)
    out["custom class"] = (p, "pickle")
    p = tmp_path / "namespace.pt"
    torch.save({"model": state, "args": argparse.Namespace(lr=0.1)}, p)
    out["namespace"] = (p, "pickle")
    good = tmp_path / "good.safetensors"
    save_file(state, str(good))
    raw = good.read_bytes()
    p = tmp_path / "truncated.safetensors"
    p.write_bytes(raw[: len(raw) // 2])
    out["truncated"] = (p, "truncated")
    p = tmp_path / "corrupt.safetensors"
    p.write_bytes(raw[:8] + b"\xff" * 40 + raw[48:])
    out["corrupt header"] = (p, "corrupt safetensors header")
    folder = _sharded(tmp_path / "missing_shard", state)
    (folder / "model-00001-of-00002.safetensors").unlink()
    out["missing shard"] = (folder, "is missing")
    wm = dict(_SHARD_OF, **{"head.weight": "model-00001-of-00002.safetensors"})
    out["index names a missing key"] = (
        _sharded(tmp_path / "missing_key", state, weight_map=wm),
        "does not hold it",
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    out["no checkpoint"] = (empty, "no checkpoint in this folder")
    return out


def test_cli_refusals_exit_2(tmp_path):
    data = _data(tmp_path)
    for name, (path, words) in _bad_checkpoints(tmp_path).items():
        result = _invoke("analyze", path, "--data", data, "--format", "json")
        assert result.exit_code == 2, (name, result.stderr)
        assert result.stdout == "", name
        first = result.stderr.splitlines()[0]
        assert first.startswith("error: "), name
        assert words in first, (name, first)
        assert "Traceback" not in result.stderr, name
