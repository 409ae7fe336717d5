"""The models people bring: conv and residual nets, layer selection, non-tensor outputs."""

from __future__ import annotations

import json
import textwrap
import weakref

import numpy as np
import pytest
import torch
from helpers import assert_close, assert_collected, dense_layer
from safetensors.torch import save_file
from torch import nn
from typer.testing import CliRunner

from nrc_cli.capture import Capture, weight_layers
from nrc_cli.cli import app
from nrc_cli.errors import ConfigError

RESNET_SOURCE = textwrap.dedent(
    """
    import torch
    from torch import nn


    class BasicBlock(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
                )

        def forward(self, x):
            out = torch.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            short = x if self.downsample is None else self.downsample(x)
            return torch.relu(out + short)


    class ResNet18(nn.Module):
        def __init__(self, width=8, targets=2):
            super().__init__()
            self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            chans = [width, 2 * width, 4 * width, 8 * width]
            cin = width
            for i, c in enumerate(chans, start=1):
                stride = 1 if i == 1 else 2
                setattr(self, f"layer{i}", nn.Sequential(BasicBlock(cin, c, stride), BasicBlock(c, c, 1)))
                cin = c
            self.fc = nn.Linear(cin, targets)

        def forward(self, x):
            x = torch.relu(self.bn1(self.conv1(x)))
            for i in range(1, 5):
                x = getattr(self, f"layer{i}")(x)
            return self.fc(x.mean(dim=(2, 3)))


    def resnet18(width=8, targets=2):
        torch.manual_seed(0)
        return ResNet18(width, targets)
    """
)

PAPER_LAYERS = ["--layers", "layer*.**", "--layers", "fc", "--exclude", "**.downsample.**"]


def load_arch(path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("resnet_arch_for_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def resnet_case(tmp_path_factory):
    root = tmp_path_factory.mktemp("resnet")
    arch = root / "arch.py"
    arch.write_text(RESNET_SOURCE)
    model = load_arch(arch).resnet18(width=8, targets=2)
    # Non-trivial BatchNorm statistics, so eval mode is visibly different from train mode.
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
            m.weight.data.copy_(1 + 0.2 * torch.randn(m.num_features, generator=g))
    model.eval()
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, root / "resnet.safetensors"
    )
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 3, 32, 32)).astype(np.float32)
    y = np.stack([x[:, 0].mean(axis=(1, 2)), x[:, 1, :16].std(axis=(1, 2))], axis=1)
    np.savez(root / "images.npz", x=x, y=y.astype(np.float32))
    return root, model, x, y


def dense_features(model: nn.Module, x: np.ndarray) -> tuple[dict, np.ndarray]:
    """Every weight layer's input over all samples, pooled as docs/metrics.md says, in float64."""
    feats: dict[str, list] = {}
    order: list[str] = []

    def hook(name):
        def fn(module, args):
            inp = args[0].detach().to(torch.float64)
            if isinstance(module, nn.Linear):
                z = inp if inp.ndim == 2 else inp.mean(dim=tuple(range(1, inp.ndim - 1)))
            else:
                z = inp.mean(dim=tuple(range(2, inp.ndim)))
            if name not in feats:
                order.append(name)
                feats[name] = []
            feats[name].append(z.numpy())

        return fn

    handles = [
        m.register_forward_pre_hook(hook(n))
        for n, m in model.named_modules()
        if isinstance(m, (nn.Linear, nn.Conv2d))
    ]
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), 64):
            outs.append(model(torch.from_numpy(x[i : i + 64])).numpy())
    for h in handles:
        h.remove()
    return {n: np.concatenate(feats[n]) for n in order}, np.concatenate(outs)


def run_cli(*args) -> dict:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_resnet_with_the_paper_layer_convention_matches_a_dense_reference(resnet_case):
    root, model, x, y = resnet_case
    report = run_cli(
        "analyze",
        root / "resnet.safetensors",
        "--data",
        root / "images.npz",
        "--arch",
        f"{root / 'arch.py'}:resnet18",
        "--arch-kwargs",
        '{"width": 8, "targets": 2}',
        *PAPER_LAYERS,
        "-f",
        "json",
        "--batch-size",
        "64",
    )
    feats, out = dense_features(model, x)
    expected_names = [n for n in feats if n.startswith("layer") and "downsample" not in n] + ["fc"]
    assert [row["layer"] for row in report["layers"]] == expected_names
    assert [row["index"] for row in report["layers"]] == list(range(1, len(expected_names) + 1))
    assert not any("downsample" in row["layer"] for row in report["layers"])
    model_mse = float(np.mean((out - y) ** 2))
    assert_close(report["summary"]["model_mse"], model_mse, rel=1e-4, abs_=1e-6)
    modules = dict(model.named_modules())
    for row in report["layers"]:
        w = modules[row["layer"]].weight.detach().to(torch.float64).numpy()
        want = dense_layer(feats[row["layer"]], y, w, 2, model_mse)
        for col, value in want.items():
            assert_close(row[col], value, rel=1e-4, abs_=1e-6, what=f"{row['layer']}.{col}")
    conv_row = report["layers"][0]
    assert conv_row["type"] == "Conv2d" and conv_row["in_dim"] == 8


def test_only_selected_layers_are_hooked(resnet_case):
    _, model, images, _ = resnet_case
    selected = weight_layers(model, include=["layer4.**", "fc"], exclude=["**.downsample.**"])
    assert [w.name for w in selected] == [
        "layer4.0.conv1",
        "layer4.0.conv2",
        "layer4.1.conv1",
        "layer4.1.conv2",
        "fc",
    ]

    x = torch.from_numpy(images[:4])
    reported: list[str] = []
    capture = Capture(selected, lambda name, z: reported.append(name))
    with capture, torch.no_grad():
        assert capture.hooked
        model(x)
        # One hook on each selected layer, on no other module.
        assert reported == [w.name for w in selected]
    assert not capture.hooked
    reported.clear()
    with torch.no_grad():
        model(x)
    assert reported == []  # every hook is gone: the forward pass reports nothing
    ref = weakref.ref(capture)
    del capture
    assert_collected(ref, "the capture")  # no hook on the model holds it


def test_a_glob_matching_nothing_lists_the_layers(resnet_case):
    root, *_ = resnet_case
    result = CliRunner().invoke(
        app,
        [
            "analyze",
            str(root / "resnet.safetensors"),
            "--data",
            str(root / "images.npz"),
            "--arch",
            f"{root / 'arch.py'}:resnet18",
            "--layers",
            "block*",
        ],
    )
    assert result.exit_code == 2
    assert "error: --layers 'block*' matches no weight layer" in result.stderr
    assert "layer1.0.conv1" in result.stderr and "fc" in result.stderr


def test_excluding_everything_is_refused(resnet_case):
    _, model, _, _ = resnet_case
    with pytest.raises(ConfigError, match="no weight layer"):
        weight_layers(model, exclude=["**"])


# -- models whose output is not the prediction ------------------------------------------------

HEADS_SOURCE = textwrap.dedent(
    """
    import torch
    from torch import nn


    class Backbone(nn.Module):
        def __init__(self, kind="tuple"):
            super().__init__()
            self.kind = kind
            self.body = nn.Linear(6, 16)
            self.head = nn.Linear(16, 2)

        def forward(self, x):
            h = torch.relu(self.body(x))
            pred = self.head(h)
            if self.kind == "tuple":
                return pred, h
            if self.kind == "dict":
                return {"features": h, "prediction": pred}
            return h  # "backbone": no prediction at all


    def make(kind="tuple"):
        torch.manual_seed(0)
        return Backbone(kind)
    """
)


@pytest.fixture(scope="module")
def heads_case(tmp_path_factory):
    root = tmp_path_factory.mktemp("heads")
    (root / "heads.py").write_text(HEADS_SOURCE)
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))
    state = {"body.weight": ref[0].weight, "body.bias": ref[0].bias}
    state |= {"head.weight": ref[2].weight, "head.bias": ref[2].bias}
    save_file({k: v.detach().contiguous() for k, v in state.items()}, root / "m.safetensors")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((200, 6)).astype(np.float32)
    y = rng.standard_normal((200, 2)).astype(np.float32)
    np.savez(root / "d.npz", x=x, y=y)
    # The same weights as a plain MLP: the reference for every number.
    save_file(
        {f"net.{k}": v.detach().contiguous() for k, v in ref.state_dict().items()},
        root / "plain.safetensors",
    )
    return root


def heads_args(root, kind, *extra):
    return [
        "analyze",
        str(root / "m.safetensors"),
        "--data",
        str(root / "d.npz"),
        "--arch",
        f"{root / 'heads.py'}:make",
        "--arch-kwargs",
        json.dumps({"kind": kind}),
        "-f",
        "json",
        *extra,
    ]


@pytest.mark.parametrize(("kind", "key"), [("tuple", "0"), ("dict", "prediction")])
def test_output_key_picks_the_prediction(heads_case, kind, key):
    plain = run_cli(
        "analyze", heads_case / "plain.safetensors", "--data", heads_case / "d.npz", "-f", "json"
    )
    report = run_cli(*heads_args(heads_case, kind, "--output-key", key))
    assert report["summary"]["model_mse"] == pytest.approx(plain["summary"]["model_mse"], rel=1e-12)
    assert report["summary"]["prediction"] == f"output[{key}]"
    for a, b in zip(report["layers"], plain["layers"], strict=True):
        assert a["nrc4_ratio"] == pytest.approx(b["nrc4_ratio"], rel=1e-12)


@pytest.mark.parametrize(
    ("kind", "needle"), [("tuple", "tuple of 2 items"), ("dict", "features, prediction")]
)
def test_a_non_tensor_output_without_a_key_is_explained(heads_case, kind, needle):
    result = CliRunner().invoke(app, heads_args(heads_case, kind))
    assert result.exit_code == 2
    assert result.stderr.startswith("error: the model returned a")
    assert needle in result.stderr
    assert "--output-key" in result.stderr and "--no-prediction" in result.stderr


def test_bad_output_keys_are_explained(heads_case):
    result = CliRunner().invoke(app, heads_args(heads_case, "dict", "--output-key", "logits"))
    assert result.exit_code == 2
    assert "'logits'" in result.stderr and "features, prediction" in result.stderr
    result = CliRunner().invoke(app, heads_args(heads_case, "tuple", "--output-key", "5"))
    assert result.exit_code == 2 and "index 0..1" in result.stderr


def test_no_prediction_keeps_everything_but_the_model_error(heads_case):
    plain = run_cli(
        "analyze", heads_case / "plain.safetensors", "--data", heads_case / "d.npz", "-f", "json"
    )
    report = run_cli(*heads_args(heads_case, "backbone", "--no-prediction"))
    assert report["summary"]["model_mse"] is None
    assert report["summary"]["prediction"] == "none"
    for a, b in zip(report["layers"], plain["layers"], strict=True):
        assert a["nrc4_ratio"] is None
        for col in ("nrc1_noise", "nrc2_cka", "nrc3_alignment", "nrc4_probe_mse"):
            assert a[col] == pytest.approx(b[col], rel=1e-12)


def test_resnet_saved_without_num_batches_tracked_loads_as_torch_loads_it(resnet_case, tmp_path):
    # How old torchvision weights and many converted checkpoints come: BatchNorm without its
    # num_batches_tracked counter, which load_state_dict(strict=True) fills in itself.
    root, model, x, y = resnet_case
    full = model.state_dict()
    counters = sorted(k for k in full if k.endswith("num_batches_tracked"))
    assert len(counters) == 20
    state = {k: v.contiguous() for k, v in full.items() if k not in counters}
    save_file(state, tmp_path / "old.safetensors")
    load_arch(root / "arch.py").resnet18(width=8, targets=2).load_state_dict(state, strict=True)
    result = CliRunner().invoke(
        app,
        [
            "analyze", str(tmp_path / "old.safetensors"), "--data", str(root / "images.npz"),
            "--arch", f"{root / 'arch.py'}:resnet18", "--max-samples", "128",
            "--batch-size", "64", "-f", "json",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    note = f"loading: filled in by the model's own loading code: {', '.join(counters)}"
    assert [line for line in result.stderr.splitlines() if line.startswith("note:")] == [
        f"note: {note}"
    ]
    assert report["summary"]["notes"] == [note]
    assert report["summary"]["build"] == "arch"
    # Same batches as the run, so the same float32 forward; features pooled in float64 both ways.
    feats, out = dense_features(model, x[:128])
    model_mse = float(np.mean((out.astype(np.float64) - y[:128].astype(np.float64)) ** 2))
    assert_close(report["summary"]["model_mse"], model_mse, rel=1e-9)
    modules = dict(model.named_modules())
    assert [row["layer"] for row in report["layers"]] == list(feats)
    for row in report["layers"]:
        w = modules[row["layer"]].weight.detach().to(torch.float64).numpy()
        want = dense_layer(feats[row["layer"]], y[:128], w, 2, model_mse)
        for col, value in want.items():
            assert_close(row[col], value, rel=1e-9, abs_=1e-12, what=f"{row['layer']}.{col}")


def test_resnet_with_genuinely_missing_weights_is_refused_naming_every_key(resnet_case, tmp_path):
    root, model, _, _ = resnet_case
    gone = ["fc.bias", "layer2.0.bn1.running_var", "layer3.1.conv2.weight"]
    state = {
        k: v.contiguous()
        for k, v in model.state_dict().items()
        if k not in gone and not k.endswith("num_batches_tracked")
    }
    save_file(state, tmp_path / "broken.safetensors")
    result = CliRunner().invoke(
        app,
        [
            "analyze", str(tmp_path / "broken.safetensors"), "--data", str(root / "images.npz"),
            "--arch", f"{root / 'arch.py'}:resnet18",
        ],
    )  # fmt: skip
    assert result.exit_code == 2
    assert result.stdout == ""
    (line, hint) = result.stderr.splitlines()
    assert line.endswith(f"the weights do not fit the model: missing keys: {', '.join(gone)}")
    assert hint.startswith("hint: ")
