"""Basic contract of :func:`nrc_cli.io.checkpoint.open_checkpoint` on single files.

Headers are read (names, shapes, dtypes, metadata) before any tensor; tensors come back exactly
as saved; ``.pt`` files are read without unpickling; the ``nrc.arch`` metadata is parsed as
data. (Folders and shards are covered by ``test_io_checkpoint.py``.)
"""

from __future__ import annotations

import json
import struct

import pytest
import torch
from helpers import Wrapped, mlp, save_model
from safetensors.torch import save_file

from nrc_cli.errors import CheckpointError
from nrc_cli.io.checkpoint import open_checkpoint, parse_arch_metadata


def _header(path) -> dict:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n])


def test_header_gives_names_shapes_dtypes_and_metadata(tmp_path):
    state = {
        "a.weight": torch.zeros(3, 4),
        "a.bias": torch.zeros(3, dtype=torch.float16),
        "b.weight": torch.zeros(2, 3, dtype=torch.float64),
        "steps": torch.tensor([7], dtype=torch.int64),
    }
    path = tmp_path / "m.safetensors"
    save_file(state, str(path), metadata={"epochs": "12", "note": "hello"})
    ckpt = open_checkpoint(path)
    assert ckpt.format == "safetensors"
    assert ckpt.metadata == {"epochs": "12", "note": "hello"}
    assert set(ckpt.tensors) == set(state)
    on_disk = {k: v for k, v in _header(path).items() if k != "__metadata__"}
    assert list(ckpt.tensors) == list(on_disk)  # file order
    for name, tensor in state.items():
        info = ckpt.tensors[name]
        assert info.shape == tuple(tensor.shape)
        assert info.dtype == on_disk[name]["dtype"]
        assert info.numel == tensor.numel()
    assert ckpt.n_parameters == 12 + 3 + 6 + 1


def test_state_dict_returns_the_saved_tensors(tmp_path):
    model = Wrapped(mlp((4, 5, 3), norm="batchnorm", seed=2))
    path = save_model(tmp_path / "m.safetensors", model)
    loaded = open_checkpoint(path).state_dict()
    expected = model.state_dict()
    assert list(loaded) == list(open_checkpoint(path).tensors)
    assert set(loaded) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(loaded[name], tensor), name
        assert loaded[name].dtype == tensor.dtype


@pytest.mark.parametrize("wrap", [None, "model", "state_dict"])
def test_pt_state_dict_reads_like_safetensors(tmp_path, wrap):
    model = Wrapped(mlp((4, 5, 3), seed=3))
    state = model.state_dict()
    path = tmp_path / "m.pt"
    torch.save(state if wrap is None else {wrap: state, "epoch": 3}, path)
    ckpt = open_checkpoint(path)
    assert ckpt.format == "pt"
    assert ckpt.metadata == {}
    assert {k: v.shape for k, v in ckpt.tensors.items()} == {
        k: tuple(v.shape) for k, v in state.items()
    }
    loaded = ckpt.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_pt_with_a_pickled_object_is_refused(tmp_path):
    path = tmp_path / "m.pt"
    torch.save(Wrapped(mlp((4, 5, 3))), path)
    with pytest.raises(CheckpointError, match=r"refused: .*pickle") as info:
        open_checkpoint(path)
    assert "state_dict" in info.value.hint


def test_missing_and_unknown_files(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.safetensors: checkpoint not found"):
        open_checkpoint(tmp_path / "nope.safetensors")
    odd = tmp_path / "weights.h5"
    odd.write_bytes(b"\x89HDF\r\n\x1a\n")
    with pytest.raises(CheckpointError, match=r"unknown checkpoint type '\.h5'"):
        open_checkpoint(odd)


def test_truncated_file_is_caught_from_the_header(tmp_path):
    path = save_model(tmp_path / "m.safetensors", Wrapped(mlp((4, 5, 3))))
    raw = path.read_bytes()
    path.write_bytes(raw[:-1])
    with pytest.raises(CheckpointError, match="truncated"):
        open_checkpoint(path)


def test_header_length_beyond_the_file(tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_bytes(struct.pack("<Q", 10_000) + b"{}")
    with pytest.raises(CheckpointError, match=r"header claims 10000 bytes, file has 10 bytes"):
        open_checkpoint(path)


def test_arch_metadata_is_parsed_as_data(tmp_path):
    model = Wrapped(mlp((4, 5, 3)))
    arch = {"type": "mlp", "activation": "tanh", "norm": None}
    path = save_model(tmp_path / "m.safetensors", model, {"nrc.arch": json.dumps(arch)})
    assert parse_arch_metadata(open_checkpoint(path)) == arch
    plain = save_model(tmp_path / "p.safetensors", model)
    assert parse_arch_metadata(open_checkpoint(plain)) is None
    bad = save_model(tmp_path / "b.safetensors", model, {"nrc.arch": "{type: mlp"})
    with pytest.raises(CheckpointError, match=r"metadata 'nrc\.arch' is not valid JSON"):
        parse_arch_metadata(open_checkpoint(bad))
    listed = save_model(tmp_path / "l.safetensors", model, {"nrc.arch": '["mlp"]'})
    with pytest.raises(CheckpointError, match="must be a JSON object"):
        parse_arch_metadata(open_checkpoint(listed))
