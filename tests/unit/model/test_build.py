"""Tests for :mod:`nrc_cli.model`: rebuilding models from checkpoints (docs/analyzing.md).

Three routes, first match wins: ``--arch`` factories, the declarative ``nrc.arch`` metadata, and
inference of a plain MLP from the tensors (natural sort, prefixes kept, LayerNorm/BatchNorm1d
detection, ``--activation``). Rebuilt models must compute exactly what the saved one computed.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import make_tiny_case
from helpers import (
    Wrapped,
    analyze_json,
    assert_close,
    dense_report,
    error_line,
    invoke,
    mlp,
    save_model,
    save_npz,
)
from safetensors.torch import save_file
from torch import nn

from nrc_cli.errors import CheckpointError, ConfigError
from nrc_cli.io.checkpoint import open_checkpoint
from nrc_cli.model.build import build_model
from nrc_cli.model.mlp import infer_mlp_spec, natural_key


def _same_outputs(built, model: nn.Module, n_in: int, seed: int = 0) -> None:
    x = torch.from_numpy(np.random.default_rng(seed).standard_normal((64, n_in))).float()
    with torch.no_grad():
        torch.testing.assert_close(built.module(x), model.eval()(x), rtol=1e-6, atol=1e-6)


def _assert_numbers_match(got: dict, want: dict, rel: float = 1e-5) -> None:
    assert [r["layer"] for r in got["layers"]] == [r["layer"] for r in want["layers"]]
    for g, w in zip(got["layers"], want["layers"], strict=True):
        for col in ("nrc1_noise", "nrc2_cka", "nrc3_alignment", "nrc4_probe_mse"):
            assert_close(g[col], w[col], rel=rel, abs_=1e-9, what=f"{g['layer']}.{col}")
    assert_close(got["summary"]["model_mse"], want["summary"]["model_mse"], rel=rel)


# ------------------------------------------------------------------------------------------------
# Inference of a plain MLP
# ------------------------------------------------------------------------------------------------


def test_natural_key_orders_numbers_by_value():
    names = ["net.10", "net.9", "net.2", "net.0", "net.1", "head", "net.22"]
    assert sorted(names, key=natural_key) == [
        "head",
        "net.0",
        "net.1",
        "net.2",
        "net.9",
        "net.10",
        "net.22",
    ]


def test_deep_mlp_layers_come_in_natural_order(tmp_path):
    """12 Linear layers in an nn.Sequential: net.0, net.2, ..., net.10, ..., net.22."""
    dims = (3, *[5] * 11, 2)
    case = make_tiny_case(tmp_path, dims=dims, dyadic=False, n=150)
    expected = [f"net.{2 * i}" for i in range(12)]
    assert sorted(expected) != expected  # plain string order would put net.10 after net.0
    spec = infer_mlp_spec(open_checkpoint(case.checkpoint))
    assert [b.linear for b in spec.blocks] == expected
    got = analyze_json(case.checkpoint, case.data)
    assert [r["layer"] for r in got["layers"]] == expected
    assert [r["index"] for r in got["layers"]] == list(range(1, 13))
    _assert_numbers_match(got, dense_report(case.model, case.x, case.y))


@pytest.mark.parametrize(
    ("prefix", "names"),
    [
        (None, ["0", "2", "4"]),
        ("net", ["net.0", "net.2", "net.4"]),
        ("body", ["body.0", "body.2", "body.4"]),
    ],
)
def test_module_paths_keep_the_checkpoint_prefix(tmp_path, prefix, names):
    case = make_tiny_case(tmp_path, dims=(4, 6, 6, 2), prefix=prefix, n=80)
    got = analyze_json(case.checkpoint, case.data)
    assert [r["layer"] for r in got["layers"]] == names


def test_nested_prefix_is_kept(tmp_path):
    model = Wrapped(Wrapped(mlp((4, 6, 2), seed=5), "body"), "model")
    ckpt = save_model(tmp_path / "m.safetensors", model)
    built = build_model(open_checkpoint(ckpt))
    assert [n for n, m in built.module.named_modules() if isinstance(m, nn.Linear)] == [
        "model.body.0",
        "model.body.2",
    ]
    _same_outputs(built, model, 4)


@pytest.mark.parametrize("norm", ["layernorm", "batchnorm"])
def test_norm_layers_are_detected_and_run_as_saved(tmp_path, norm):
    model = Wrapped(mlp((4, 6, 6, 3), norm=norm, seed=6))
    ckpt = save_model(tmp_path / "m.safetensors", model)
    built = build_model(open_checkpoint(ckpt))
    assert built.route == "inferred"
    assert [(b.linear, b.norm, b.norm_kind) for b in built.spec.blocks] == [
        ("net.0", "net.1", norm),
        ("net.3", "net.4", norm),
        ("net.6", None, None),
    ]
    kind = nn.LayerNorm if norm == "layernorm" else nn.BatchNorm1d
    assert isinstance(built.module.get_submodule("net.1"), kind)
    assert not built.module.training
    _same_outputs(built, model, 4)
    if norm == "batchnorm":
        bn = built.module.get_submodule("net.4")
        torch.testing.assert_close(bn.running_mean, model.net[4].running_mean, rtol=0, atol=0)
        torch.testing.assert_close(bn.running_var, model.net[4].running_var, rtol=0, atol=0)


def test_layernorm_without_bias(tmp_path):
    body = nn.Sequential(nn.Linear(4, 5), nn.LayerNorm(5, bias=False), nn.ReLU(), nn.Linear(5, 2))
    with torch.no_grad():
        body[1].weight.uniform_(0.5, 1.5)
    ckpt = save_model(tmp_path / "m.safetensors", body)
    built = build_model(open_checkpoint(ckpt))
    assert built.spec.blocks[0].norm_kind == "layernorm"
    assert built.spec.blocks[0].norm_bias is False
    _same_outputs(built, body, 4)


def test_activation_option_changes_the_numbers(tmp_path):
    case = make_tiny_case(tmp_path, dims=(5, 8, 8, 2), dyadic=False, activation=nn.GELU)
    relu = analyze_json(case.checkpoint, case.data)
    gelu = analyze_json(case.checkpoint, case.data, "--activation", "gelu")
    # The first layer sees the data itself; later layers see the activation's output.
    assert relu["layers"][0]["nrc1_noise"] == gelu["layers"][0]["nrc1_noise"]
    assert relu["layers"][1]["nrc1_noise"] != pytest.approx(gelu["layers"][1]["nrc1_noise"])
    assert relu["summary"]["model_mse"] != pytest.approx(gelu["summary"]["model_mse"])
    _assert_numbers_match(gelu, dense_report(case.model, case.x, case.y))


@pytest.mark.parametrize("name", ["tanh", "sigmoid", "silu", "elu", "leaky_relu", "identity"])
def test_every_activation_name_builds_the_matching_module(tmp_path, name):
    modules = {
        "tanh": nn.Tanh,
        "sigmoid": nn.Sigmoid,
        "silu": nn.SiLU,
        "elu": nn.ELU,
        "leaky_relu": nn.LeakyReLU,
        "identity": nn.Identity,
    }
    model = Wrapped(mlp((4, 6, 2), activation=modules[name], seed=7))
    ckpt = save_model(tmp_path / "m.safetensors", model)
    built = build_model(open_checkpoint(ckpt), activation=name)
    _same_outputs(built, model, 4)


# ------------------------------------------------------------------------------------------------
# The nrc.arch metadata route
# ------------------------------------------------------------------------------------------------


def test_metadata_activation_is_honoured(tmp_path):
    arch = {"type": "mlp", "activation": "tanh", "norm": None}
    case = make_tiny_case(
        tmp_path,
        dims=(5, 8, 8, 2),
        dyadic=False,
        activation=nn.Tanh,
        metadata={"nrc.arch": json.dumps(arch)},
    )
    built = build_model(open_checkpoint(case.checkpoint))
    assert built.route == "metadata" and built.spec.activation == "tanh"
    got = analyze_json(case.checkpoint, case.data)
    _assert_numbers_match(got, dense_report(case.model, case.x, case.y))
    # Without the metadata the same tensors are read as a ReLU MLP: different numbers.
    save_model(case.checkpoint, case.model)
    relu = analyze_json(case.checkpoint, case.data)
    assert relu["summary"]["model_mse"] != pytest.approx(got["summary"]["model_mse"])


def test_metadata_norm_is_checked_against_the_tensors(tmp_path):
    arch = {"type": "mlp", "activation": "relu", "norm": "layernorm"}
    ckpt = save_model(
        tmp_path / "m.safetensors", Wrapped(mlp((4, 6, 2))), {"nrc.arch": json.dumps(arch)}
    )
    with pytest.raises(CheckpointError, match=r"says norm 'layernorm' but the tensors show"):
        build_model(open_checkpoint(ckpt))


@pytest.mark.parametrize(
    ("arch", "match"),
    [
        ({"type": "resnet"}, r"unknown type 'resnet', expected 'mlp'"),
        ({"type": "mlp", "activation": "swish"}, r"unknown activation 'swish'"),
        ({"type": "mlp", "norm": "groupnorm"}, r"unknown norm 'groupnorm'"),
    ],
)
def test_bad_metadata_is_refused(tmp_path, arch, match):
    ckpt = save_model(
        tmp_path / "m.safetensors", Wrapped(mlp((4, 6, 2))), {"nrc.arch": json.dumps(arch)}
    )
    with pytest.raises(CheckpointError, match=match):
        build_model(open_checkpoint(ckpt))


# ------------------------------------------------------------------------------------------------
# The --arch route
# ------------------------------------------------------------------------------------------------

FACTORY = """
from torch import nn


class Net(nn.Module):
    def __init__(self, width=3, n_in=4, n_out=2):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(n_in, width), nn.Tanh(), nn.Linear(width, width))
        self.head = nn.Linear(width, n_out)

    def forward(self, x):
        return self.head(self.encoder(x).relu())


def make(**kwargs):
    return Net(**kwargs)
"""


def _factory_module(tmp_path, name="factory"):
    src = tmp_path / f"{name}.py"
    src.write_text(FACTORY)
    namespace: dict = {}
    exec(compile(FACTORY, str(src), "exec"), namespace)
    return src, namespace["Net"]


def test_arch_file_factory_with_kwargs(tmp_path):
    src, net = _factory_module(tmp_path)
    torch.manual_seed(8)
    model = net(width=5).eval()
    ckpt = save_model(tmp_path / "m.safetensors", model)
    rng = np.random.default_rng(9)
    x = rng.standard_normal((200, 4)).astype(np.float32)
    y = rng.standard_normal((200, 2)).astype(np.float32)
    data = save_npz(tmp_path / "d.npz", x=x, y=y)
    got = analyze_json(ckpt, data, "--arch", f"{src}:make", "--arch-kwargs", '{"width": 5}')
    assert [r["layer"] for r in got["layers"]] == ["encoder.0", "encoder.2", "head"]
    assert [r["in_dim"] for r in got["layers"]] == [4, 5, 5]
    _assert_numbers_match(got, dense_report(model, x, y))


def test_arch_module_callable_from_the_python_path(tmp_path, monkeypatch):
    src, net = _factory_module(tmp_path, "my_nrc_factory")
    monkeypatch.syspath_prepend(str(tmp_path))
    model = net(width=3)
    ckpt = save_model(tmp_path / "m.safetensors", model)
    built = build_model(open_checkpoint(ckpt), arch="my_nrc_factory:make")
    assert built.route == "arch"
    _same_outputs(built, model, 4)
    del src


def test_arch_wins_over_metadata(tmp_path):
    src, net = _factory_module(tmp_path)
    model = net(width=3)
    meta = {"nrc.arch": json.dumps({"type": "mlp", "activation": "tanh", "norm": None})}
    ckpt = save_model(tmp_path / "m.safetensors", model, meta)
    assert build_model(open_checkpoint(ckpt), arch=f"{src}:make").route == "arch"


def test_strict_loading_reports_missing_and_unexpected_keys_together_sorted(tmp_path):
    src, net = _factory_module(tmp_path)
    state = net(width=3).state_dict()
    state["encoder.9.weight"] = torch.zeros(3, 3)
    state["aux.bias"] = torch.zeros(3)
    del state["head.weight"], state["encoder.2.bias"]
    ckpt = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(ckpt))
    with pytest.raises(CheckpointError) as info:
        build_model(open_checkpoint(ckpt), arch=f"{src}:make")
    msg = info.value.message
    assert (
        "missing keys: encoder.2.bias, head.weight; unexpected keys: aux.bias, encoder.9.weight"
        in msg
    )
    # The same through the CLI: one error line.
    data = save_npz(tmp_path / "d.npz", x=np.zeros((3, 4), np.float32), y=np.zeros((3, 2)))
    line = error_line(invoke(["analyze", ckpt, "--data", data, "--arch", f"{src}:make"]))
    assert "missing keys: encoder.2.bias, head.weight; unexpected keys: aux.bias" in line


def test_strict_loading_reports_shape_mismatches(tmp_path):
    src, net = _factory_module(tmp_path)
    ckpt = save_model(tmp_path / "m.safetensors", net(width=5))
    with pytest.raises(
        CheckpointError,
        match=r"shape mismatches: encoder\.0\.bias \(checkpoint \[5\], model \[3\]\)",
    ):
        build_model(open_checkpoint(ckpt), arch=f"{src}:make", arch_kwargs={"width": 3})


def test_factory_returning_something_else(tmp_path):
    src = tmp_path / "f.py"
    src.write_text("def make():\n    return {'not': 'a module'}\n")
    ckpt = save_model(tmp_path / "m.safetensors", Wrapped(mlp((4, 6, 2))))
    with pytest.raises(ConfigError, match=r"returned dict, expected an? torch\.nn\.Module"):
        build_model(open_checkpoint(ckpt), arch=f"{src}:make")


@pytest.mark.parametrize("arch", ["nocolon", ":make", "file.py:"])
def test_malformed_arch_spec(tmp_path, arch):
    ckpt = save_model(tmp_path / "m.safetensors", Wrapped(mlp((4, 6, 2))))
    with pytest.raises(ConfigError, match=r"--arch: expected MODULE:CALLABLE"):
        build_model(open_checkpoint(ckpt), arch=arch)


# ------------------------------------------------------------------------------------------------
# What inference refuses
# ------------------------------------------------------------------------------------------------


def _ckpt(tmp_path, state: dict) -> object:
    path = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return open_checkpoint(path)


def test_shapes_that_do_not_chain(tmp_path):
    ckpt = _ckpt(tmp_path, {"a.weight": torch.zeros(5, 4), "b.weight": torch.zeros(2, 6)})
    with pytest.raises(
        CheckpointError, match=r"'b\.weight' has in_features 6 but .* 'a' has out_features 5"
    ) as info:
        infer_mlp_spec(ckpt)
    assert "--arch" in info.value.hint


def test_three_dimensional_weight_names_arch(tmp_path):
    ckpt = _ckpt(tmp_path, {"conv.weight": torch.zeros(4, 3, 3)})
    with pytest.raises(CheckpointError, match=r"module 'conv' .* is neither a Linear") as info:
        infer_mlp_spec(ckpt)
    assert "--arch" in info.value.hint


def test_last_linear_followed_by_a_norm(tmp_path):
    ckpt = _ckpt(
        tmp_path,
        {"a.weight": torch.zeros(5, 4), "n.weight": torch.ones(5), "n.bias": torch.zeros(5)},
    )
    with pytest.raises(CheckpointError, match=r"last Linear 'a' is followed by a norm 'n'"):
        infer_mlp_spec(ckpt)


def test_norm_of_the_wrong_width(tmp_path):
    ckpt = _ckpt(
        tmp_path,
        {
            "a.weight": torch.zeros(5, 4),
            "a_norm.weight": torch.ones(3),
            "a_norm.bias": torch.zeros(3),
            "b.weight": torch.zeros(2, 5),
        },
    )
    with pytest.raises(CheckpointError, match=r"norm 'a_norm' has shapes .* expected \[5\]"):
        infer_mlp_spec(ckpt)


def test_unknown_activation(tmp_path):
    ckpt = _ckpt(tmp_path, {"a.weight": torch.zeros(2, 4)})
    with pytest.raises(ConfigError, match=r"--activation: unknown activation 'swish'"):
        infer_mlp_spec(ckpt, "swish")


# ------------------------------------------------------------------------------------------------
# Loading as the model's own framework loads, and saying how the model was built
# ------------------------------------------------------------------------------------------------

BUFFERS = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 3)
        self.head = nn.Linear(3, 4)
        self.back = nn.Linear(4, 3)
        self.back.weight = self.body.weight  # tied: one tensor under two names
        self.register_buffer("scale", torch.full((3,), 2.0), persistent=False)

    def forward(self, x):
        return self.head(self.body(x) * self.scale) + 0 * self.back(self.head(self.body(x))).sum()


def make():
    torch.manual_seed(0)
    return Net()
"""


def _buffers_module(tmp_path):
    src = tmp_path / "buffers.py"
    src.write_text(BUFFERS)
    namespace: dict = {}
    exec(compile(BUFFERS, str(src), "exec"), namespace)
    return src, namespace["make"]()


def test_non_persistent_buffers_are_dropped_and_tied_weights_loaded_through_their_twin(tmp_path):
    src, model = _buffers_module(tmp_path)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "back.weight"}
    state["scale"] = torch.full((3,), 99.0)  # saved by an older version; never loaded
    ckpt = tmp_path / "m.safetensors"
    save_file(state, str(ckpt))
    built = build_model(open_checkpoint(ckpt), arch=f"{src}:make")
    assert built.loaded.dropped == ("scale",)
    assert built.loaded.tied == ("back.weight",)
    assert built.loaded.filled == ()
    assert torch.equal(built.module.scale, torch.full((3,), 2.0))
    assert built.module.back.weight is built.module.body.weight
    assert built.notes() == [
        "loading: loaded through the weights they are tied to: back.weight; checkpoint keys "
        "not loaded (the model computes them itself): scale"
    ]
    # A key that is neither the model's nor one of its buffers is still refused.
    state["extra.weight"] = torch.zeros(2)
    save_file(state, str(ckpt))
    with pytest.raises(CheckpointError, match=r"unexpected keys: extra\.weight$"):
        build_model(open_checkpoint(ckpt), arch=f"{src}:make")


def test_an_inferred_batchnorm_mlp_without_its_counter_loads(tmp_path):
    model = Wrapped(mlp((5, 6, 3), norm="batchnorm"))
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    save_file(state, str(tmp_path / "m.safetensors"))
    built = build_model(open_checkpoint(tmp_path / "m.safetensors"), activation="relu")
    assert built.loaded.filled == ("net.1.num_batches_tracked",)
    assert built.norm == "batchnorm"
    _same_outputs(built, model, 5)


def _gelu_layernorm_case(tmp_path):
    return make_tiny_case(
        tmp_path, dims=(6, 16, 16, 2), norm="layernorm", activation=nn.GELU, dyadic=False, n=400
    )


def test_an_assumed_activation_is_warned_about_and_recorded(tmp_path):
    case = _gelu_layernorm_case(tmp_path)
    result = invoke(["analyze", case.checkpoint, "--data", case.data, "-f", "json"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    s = report["summary"]
    assert (s["build"], s["activation"], s["norm"]) == ("inferred", "relu", "layernorm")
    assert s["model"] == "MLP 6 -> 16 -> 16 -> 2, activation relu (assumed), layernorm"
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1
    assert "activation relu, assumed" in warnings[0] and "--activation" in warnings[0]
    assert s["warnings"] == [warnings[0].removeprefix("warning: ")]
    # The assumption matters: the GELU model analyzed as ReLU gets another model_mse.
    stated = invoke(["analyze", case.checkpoint, "--data", case.data, "--activation", "gelu"])
    assert stated.exit_code == 0, stated.stderr
    assert "warning:" not in stated.stderr
    assert "model (inferred): MLP 6 -> 16 -> 16 -> 2, activation gelu, layernorm" in stated.stdout
    doc = analyze_json(case.checkpoint, case.data, "--activation", "gelu")
    assert doc["summary"]["warnings"] == [] and doc["summary"]["activation"] == "gelu"
    want = dense_report(case.model, case.x, case.y)
    assert_close(doc["summary"]["model_mse"], want["summary"]["model_mse"], rel=1e-5)
    assert abs(s["model_mse"] - want["summary"]["model_mse"]) > 1e-3 * want["summary"]["model_mse"]


def test_metadata_and_arch_routes_are_recorded_without_a_warning(tmp_path):
    meta = {"nrc.arch": json.dumps({"type": "mlp", "activation": "tanh", "norm": None})}
    case = make_tiny_case(tmp_path / "meta", dims=(4, 8, 2), activation=nn.Tanh, metadata=meta)
    result = invoke(["analyze", case.checkpoint, "--data", case.data, "-f", "json"])
    assert result.exit_code == 0 and "warning:" not in result.stderr
    s = json.loads(result.stdout)["summary"]
    assert (s["build"], s["activation"], s["norm"], s["notes"]) == ("metadata", "tanh", None, [])
    src, net = _factory_module(tmp_path)
    ckpt = save_model(tmp_path / "f.safetensors", net(width=3))
    data = save_npz(tmp_path / "d.npz", x=np.ones((30, 4), np.float32), y=np.ones((30, 2)))
    s = analyze_json(ckpt, data, "--arch", f"{src}:make")["summary"]
    assert (s["build"], s["model"], s["activation"]) == (
        "arch",
        f"Net from --arch {src}:make",
        None,
    )
