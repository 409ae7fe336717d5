"""Sequence models: a tiny BERT-style encoder, masked mean pooling, forward keyword inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import assert_close, dense_layer
from torch import nn
from typer.testing import CliRunner

from nrc_cli.cli import app

transformers = pytest.importorskip("transformers")


def tiny_bert():
    config = transformers.BertConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=24,
        max_position_embeddings=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    model = transformers.BertModel(config)
    model.eval()
    return model


def token_data(n: int, length: int, pad_to: int, seed: int = 0):
    """Sequences of 3..length real tokens, padded with id 0 and mask 0 up to ``pad_to``."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, length + 1, size=n)
    ids = np.zeros((n, pad_to), dtype=np.int64)
    mask = np.zeros((n, pad_to), dtype=np.int64)
    for i, m in enumerate(lengths):
        ids[i, :m] = rng.integers(1, 40, size=m)
        mask[i, :m] = 1
    y = np.stack([lengths / length, (ids[:, 0] % 7) / 7.0], axis=1).astype(np.float32)
    return ids, mask, y


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("bert")
    model = tiny_bert()
    model.save_pretrained(root / "model")
    return root, model


def dense_masked_features(model, ids, mask):
    """Inputs of every Linear, masked-mean pooled over tokens, in float64."""
    feats: dict[str, list] = {}

    def hook(name):
        def fn(module, args):
            inp = args[0].detach().to(torch.float64)
            if inp.ndim == 3:
                w = torch.from_numpy(current["mask"]).to(torch.float64).unsqueeze(-1)
                z = (inp * w).sum(1) / w.sum(1).clamp_min(1.0)
            else:
                z = inp
            feats.setdefault(name, []).append(z.numpy())

        return fn

    current: dict = {}
    handles = [
        m.register_forward_pre_hook(hook(n))
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear)
    ]
    with torch.no_grad():
        for i in range(0, len(ids), 50):
            current["mask"] = mask[i : i + 50]
            model(
                input_ids=torch.from_numpy(ids[i : i + 50]),
                attention_mask=torch.from_numpy(mask[i : i + 50]),
            )
    for h in handles:
        h.remove()
    return {n: np.concatenate(v) for n, v in feats.items()}


def analyze(folder, data, *extra) -> dict:
    args = [
        "analyze",
        str(folder),
        "--data",
        str(data),
        "--arch",
        "hf",
        "--input",
        "input_ids",
        "--input",
        "attention_mask",
        "--no-prediction",
        "--batch-size",
        "50",
        "-f",
        "json",
        *extra,
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_bert_encoder_matches_a_dense_masked_reference(bert_folder, tmp_path):
    root, model = bert_folder
    ids, mask, y = token_data(200, 10, 12)
    np.savez(tmp_path / "tokens.npz", input_ids=ids, attention_mask=mask, y=y)
    report = analyze(root / "model", tmp_path / "tokens.npz")
    feats = dense_masked_features(model, ids, mask)
    modules = dict(model.named_modules())
    assert [row["layer"] for row in report["layers"]] == list(feats)
    assert report["summary"]["model_mse"] is None
    assert report["summary"]["prediction"] == "none"
    for row in report["layers"]:
        w = modules[row["layer"]].weight.detach().to(torch.float64).numpy()
        want = dense_layer(feats[row["layer"]], y, w, 2, None)
        for col, value in want.items():
            assert_close(row[col], value, rel=1e-4, abs_=1e-6, what=f"{row['layer']}.{col}")


def test_padding_does_not_change_the_result(bert_folder, tmp_path):
    root, _ = bert_folder
    ids, mask, y = token_data(150, 10, 10, seed=4)
    wide_ids = np.pad(ids, ((0, 0), (0, 9)))
    wide_mask = np.pad(mask, ((0, 0), (0, 9)))
    np.savez(tmp_path / "short.npz", input_ids=ids, attention_mask=mask, y=y)
    np.savez(tmp_path / "long.npz", input_ids=wide_ids, attention_mask=wide_mask, y=y)
    short = analyze(root / "model", tmp_path / "short.npz")
    long = analyze(root / "model", tmp_path / "long.npz")
    for a, b in zip(short["layers"], long["layers"], strict=True):
        assert a["layer"] == b["layer"]
        for col in ("nrc1_noise", "nrc2_cka", "nrc3_alignment", "nrc4_probe_mse"):
            assert_close(b[col], a[col], rel=1e-5, abs_=1e-7, what=f"{a['layer']}.{col}")
    # Without the mask, padding tokens enter the attention and the mean and move the numbers.
    args = ["analyze", str(root / "model"), "--data", str(tmp_path / "long.npz"), "--arch", "hf"]
    args += ["--input", "input_ids", "--no-prediction", "-f", "json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.stderr
    unmasked = json.loads(result.stdout)
    moved = [
        abs(u["nrc2_cka"] - a["nrc2_cka"])
        for u, a in zip(unmasked["layers"], short["layers"], strict=True)
    ]
    assert max(moved) > 1e-3


def test_arch_hf_needs_a_config(tmp_path):
    from safetensors.torch import save_file

    save_file({"w.weight": torch.zeros(2, 2)}, tmp_path / "m.safetensors")
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 2), np.float32), y=np.zeros(4, np.float32))
    result = CliRunner().invoke(
        app,
        [
            "analyze",
            str(tmp_path / "m.safetensors"),
            "--data",
            str(tmp_path / "d.npz"),
            "--arch",
            "hf",
        ],
    )
    assert result.exit_code == 2
    assert "error: --arch hf:" in result.stderr and "config.json" in result.stderr


@pytest.fixture(scope="module")
def old_bert_folder(tmp_path_factory):
    """A BERT folder as transformers < 4.31 wrote it: ``embeddings.position_ids`` (a buffer
    that is non-persistent today) stored in model.safetensors."""
    from safetensors.torch import load_file, save_file

    root = tmp_path_factory.mktemp("old_bert")
    model = tiny_bert()
    model.save_pretrained(root)
    state = load_file(root / "model.safetensors")
    assert "embeddings.position_ids" not in state
    state["embeddings.position_ids"] = torch.arange(32).expand((1, -1)).contiguous()
    save_file(state, root / "model.safetensors", metadata={"format": "pt"})
    # transformers itself loads this folder without complaint.
    transformers.BertModel.from_pretrained(root)
    return root, model


def test_old_bert_folder_with_position_ids_matches_a_float64_masked_reference(
    old_bert_folder, tmp_path
):
    root, model = old_bert_folder
    ids, mask, y = token_data(200, 30, 32, seed=7)
    np.savez(tmp_path / "tokens.npz", input_ids=ids, attention_mask=mask, y=y)
    args = ["analyze", str(root), "--data", str(tmp_path / "tokens.npz"), "--arch", "hf"]
    args += ["--input", "input_ids", "--input", "attention_mask", "--no-prediction"]
    result = CliRunner().invoke(app, [*args, "--batch-size", "50", "-f", "json"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    notes = [line for line in result.stderr.splitlines() if line.startswith("note:")]
    assert notes == [
        "note: loading: checkpoint keys not loaded (the model computes them itself): "
        "embeddings.position_ids"
    ]
    assert report["summary"]["notes"] == [notes[0].removeprefix("note: ")]
    assert report["summary"]["build"] == "hf"
    assert report["summary"]["model"].startswith("BertModel from ")
    # The masked mean is the default with an attention_mask, and it is taken in float64: the
    # features match a float64-pooled reference (same batches, so the same float32 forward).
    feats = dense_masked_features(model, ids, mask)
    modules = dict(model.named_modules())
    assert [row["layer"] for row in report["layers"]] == list(feats)
    for row in report["layers"]:
        w = modules[row["layer"]].weight.detach().to(torch.float64).numpy()
        want = dense_layer(feats[row["layer"]], y, w, 2, None)
        for col, value in want.items():
            assert_close(row[col], value, rel=1e-9, abs_=1e-12, what=f"{row['layer']}.{col}")


def test_arch_hf_on_the_weights_file_of_a_model_folder_uses_the_folder(old_bert_folder, tmp_path):
    root, _ = old_bert_folder
    ids, mask, y = token_data(40, 8, 8, seed=1)
    np.savez(tmp_path / "tokens.npz", input_ids=ids, attention_mask=mask, y=y)
    by_folder = analyze(root, tmp_path / "tokens.npz")
    by_file = analyze(root / "model.safetensors", tmp_path / "tokens.npz")
    assert by_file["layers"] == by_folder["layers"]


def test_inspect_suggests_arch_hf_for_a_folder_with_a_config(old_bert_folder):
    root, _ = old_bert_folder
    result = CliRunner().invoke(app, ["inspect", str(root), "-f", "json"])
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["model"] is None
    assert "--arch hf" in doc["model_error"]
    result = CliRunner().invoke(app, ["inspect", str(root), "--arch", "hf", "-f", "json"])
    assert result.exit_code == 0, result.stderr
    model = json.loads(result.stdout)["model"]
    assert model["route"] == "hf"
    assert model["notes"] == [
        "loading: checkpoint keys not loaded (the model computes them itself): "
        "embeddings.position_ids"
    ]


def test_without_input_the_hints_point_to_input(old_bert_folder, tmp_path):
    root, _ = old_bert_folder
    ids, mask, y = token_data(20, 8, 8)
    np.savez(tmp_path / "tokens.npz", input_ids=ids, attention_mask=mask, y=y)
    args = ["analyze", str(root), "--data", str(tmp_path / "tokens.npz"), "--arch", "hf"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    error, hint = result.stderr.splitlines()
    assert "no array 'x'" in error
    assert "--input NAME" in hint
    # A model that takes keyword arguments only, given one positional array.
    src = tmp_path / "kw.py"
    src.write_text(
        "from torch import nn\n\n"
        "class M(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.lin = nn.Linear(8, 2)\n\n"
        "    def forward(self, *, input_ids, attention_mask):\n"
        "        return self.lin(input_ids.float())\n\n"
        "def make():\n"
        "    return M()\n"
    )
    from safetensors.torch import save_file

    save_file(
        {"lin.weight": torch.zeros(2, 8), "lin.bias": torch.zeros(2)}, tmp_path / "kw.safetensors"
    )
    np.savez(tmp_path / "x.npz", x=ids.astype(np.float32), y=y)
    result = CliRunner().invoke(
        app,
        [
            "analyze",
            str(tmp_path / "kw.safetensors"),
            "--data",
            str(tmp_path / "x.npz"),
            "--arch",
            f"{src}:make",
        ],
    )
    assert result.exit_code == 2
    error, hint = result.stderr.splitlines()
    assert "the model failed on the batch starting at sample 0" in error
    assert "--input NAME" in hint
