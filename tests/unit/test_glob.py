"""Module-path globs: '*' within one dotted segment, '**' across segments (nrc_cli/_glob.py)."""

from __future__ import annotations

import pytest

from nrc_cli._glob import glob_match
from nrc_cli.capture import weight_layers


@pytest.mark.parametrize(
    ("name", "pattern", "matches"),
    [
        ("encoder.layer.0.output.dense", "encoder.layer.*.output.dense", True),
        ("encoder.layer.0.attention.output.dense", "encoder.layer.*.output.dense", False),
        ("encoder.dense", "encoder.**.dense", True),
        ("encoder.a.b.dense", "encoder.**.dense", True),
        ("encoder.a.b.dense", "encoder.**.**.dense", True),
        ("dense", "**.dense", True),
        ("x.y.dense", "**.dense", True),
        ("xdense", "**.dense", False),
        ("encoder", "encoder.**", True),
        ("encoder.a.b", "encoder.**", True),
        ("encoderx.a", "encoder.**", False),
        ("layer4.0.downsample.0", "**.downsample.**", True),
        ("layer4.0.downsample.0", "**downsample**", True),
        ("layer4.0.downsample.0", "*downsample*", False),
        ("layer1", "layer*", True),
        ("layer1.0.conv1", "layer*", False),
        ("layer1.0.conv1", "layer*.**", True),
        ("net.2", "net.[0-2]", True),
        ("net.3", "net.[!0-2]", True),
        ("net.2", "net.[!0-2]", False),
        ("anb", "a?b", True),
        ("a.b", "a?b", False),
        ("a.b.c", "**", True),
        ("blocks[0].fc", "blocks[[]0].fc", True),
        ("fc", "fc", True),
        ("fc2", "fc", False),
    ],
)
def test_glob(name, pattern, matches):
    assert glob_match(name, pattern) is matches


def test_bert_output_projections_are_not_the_attention_ones():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=8,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=16,
    )
    model = transformers.BertModel(config)
    picked = [w.name for w in weight_layers(model, include=["encoder.layer.*.output.dense"])]
    assert picked == ["encoder.layer.0.output.dense", "encoder.layer.1.output.dense"]
    every = [w.name for w in weight_layers(model, include=["**.output.dense"])]
    assert "encoder.layer.0.attention.output.dense" in every and len(every) == 4
    rest = [w.name for w in weight_layers(model, exclude=["encoder.**.attention.**"])]
    assert not any("attention" in n for n in rest) and "pooler.dense" in rest


def test_a_glob_that_matches_nothing_names_the_parameter_in_python():
    import torch

    from nrc_cli import CollapseMonitor
    from nrc_cli.errors import ConfigError

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    with pytest.raises(ConfigError) as info:
        CollapseMonitor(model, layers=["*.0"])
    assert info.value.message == "layers: '*.0' matches no weight layer"
    assert info.value.cli_message == "--layers '*.0' matches no weight layer"
    assert "'**' across segments" in info.value.hint
