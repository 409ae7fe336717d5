"""The Lightning callback in real Lightning runs: what it logs equals ``nrc analyze`` of the
checkpoint saved at that epoch, on one process and under 2-process DDP; bad options fail at
``on_fit_start``, before a training step."""

from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path

import numpy as np
import pytest

L = pytest.importorskip("lightning")

import torch  # noqa: E402
from helpers import invoke  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from lightning.pytorch.loggers import CSVLogger  # noqa: E402
from ranks import free_port  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from integrations.docs_examples import example, run_script  # noqa: E402
from nrc_cli import analyze  # noqa: E402
from nrc_cli.errors import ConfigError, DataError, NrcError  # noqa: E402
from nrc_cli.integrations.lightning import CollapseCallback  # noqa: E402
from nrc_cli.results import Results  # noqa: E402

TOL = 1e-9


def logged_epochs(metrics_csv: Path) -> dict[int, dict[str, float]]:
    """The ``nrc/`` values each epoch logged, from a CSVLogger's metrics.csv."""
    epochs: dict[int, dict[str, float]] = {}
    with metrics_csv.open(newline="") as f:
        for row in csv.DictReader(f):
            values = {k: float(v) for k, v in row.items() if k.startswith("nrc/") and v != ""}
            if values:
                epochs.setdefault(int(row["epoch"]), {}).update(values)
    return epochs


def assert_scalars_equal(got: dict[str, float], want: dict[str, float], what: str) -> None:
    assert set(got) == set(want), (what, sorted(set(got) ^ set(want)))
    for key, value in want.items():
        assert math.isclose(got[key], value, rel_tol=TOL, abs_tol=TOL), (what, key, got[key], value)


def checkpoint_of(folder: Path, epoch: int) -> Path:
    (path,) = sorted(folder.glob(f"epoch={epoch}-step=*.ckpt"))
    return path


def check_against_checkpoints(run: Path, epochs: int, **analyze_options) -> None:
    logged = logged_epochs(run / "logs" / "run" / "version_0" / "metrics.csv")
    assert sorted(logged) == list(range(epochs))
    for epoch, values in logged.items():
        ckpt = checkpoint_of(run / "checkpoints", epoch)
        want = analyze(ckpt, run / "val.npz", batch_size=64, **analyze_options).scalars()
        assert_scalars_equal(values, want, f"epoch {epoch}")
        assert "nrc/nrc1_noise/net.2" in values


# -- the documentation's example, run as its reader runs it ------------------------------------


def test_docs_example_logs_what_nrc_analyze_computes_on_each_checkpoint(tmp_path):
    done = run_script(tmp_path, example("lightning.md"))
    check_against_checkpoints(tmp_path, epochs=3)
    assert done.stdout.strip().splitlines()[-1] in ("net.0", "net.2", "net.4", "None")

    # The history: one row per (epoch, layer), the table nrc plot draws curves from.
    import pandas as pd

    frame = pd.read_parquet(tmp_path / "history.parquet")
    assert len(frame) == 3 * 3
    assert sorted(frame["meta.epoch"].unique()) == [0, 1, 2]
    last = analyze(checkpoint_of(tmp_path / "checkpoints", 2), tmp_path / "val.npz", batch_size=64)
    row = frame[(frame["meta.epoch"] == 2) & (frame["layer"] == "net.2")].iloc[0]
    assert math.isclose(row["nrc1_noise"], last.layers[1]["nrc1_noise"], rel_tol=TOL)
    png = tmp_path / "curves.png"
    result = invoke(
        ["plot", tmp_path / "history.parquet", "--x", "epoch", "--metric", "nrc1_noise", "-o", png]
    )
    assert result.exit_code == 0, result.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_docs_example_under_two_process_ddp_logs_the_one_process_numbers(tmp_path):
    source = example("lightning.md")
    ddp = source.replace('accelerator="cpu",', 'accelerator="cpu", strategy="ddp", devices=2,')
    assert ddp != source
    done = run_script(
        tmp_path,
        ddp,
        env={"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())},
        timeout=400,
    )
    assert "DistributedSampler repeats" not in done.stderr  # 128 samples: no padding
    # Two ranks took half the 6 training batches each: 3 steps per epoch.
    assert checkpoint_of(tmp_path / "checkpoints", 2).name == "epoch=2-step=9.ckpt"
    # Each epoch's logged numbers, from two ranks' all-reduced states, equal one process
    # (nrc analyze) on the weights of that epoch.
    check_against_checkpoints(tmp_path, epochs=3)


# -- a classifier, in this process ---------------------------------------------------------


class Classifier(L.LightningModule):
    def __init__(self, classes: int = 3):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh())
        self.net.append(nn.Linear(16, classes))
        self.steps = 0

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        self.steps += 1
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, weight_decay=1e-3)


def classes_data(n: int = 192, classes: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centers = 2.0 * torch.randn(classes, 6, generator=g)
    y = torch.arange(n) % classes
    x = centers[y] + 0.5 * torch.randn(n, 6, generator=g)
    return x, y


def fit(tmp_path: Path, model, callback, *, epochs: int = 2, val=True, loader_batch=32):
    torch.manual_seed(0)
    x, y = classes_data()
    train = DataLoader(TensorDataset(x[:128], y[:128]), batch_size=loader_batch, shuffle=True)
    val_loader = DataLoader(TensorDataset(x[128:], y[128:]), batch_size=loader_batch)
    np.savez(tmp_path / "val.npz", x=x[128:].numpy(), y=y[128:].numpy())
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        callbacks=[callback, ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_top_k=-1)],
        logger=CSVLogger(tmp_path / "logs", name="run"),
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer.fit(model, train, val_loader if val else None)
    return trainer


def test_classifier_logs_deep_nc_equal_to_nrc_analyze_with_the_ncc_pass(tmp_path):
    callback = CollapseCallback()
    trainer = fit(tmp_path, Classifier(), callback, loader_batch=32)
    assert len(callback.history) == 2
    for entry in callback.history:
        assert entry.epoch in (0, 1)
        ckpt = checkpoint_of(tmp_path / "checkpoints", int(entry.epoch))
        want = analyze(
            ckpt, tmp_path / "val.npz", batch_size=32, task="classification", activation="tanh"
        )
        assert want.task == "classification" and entry.results.task == "classification"
        got = entry.results.scalars()
        assert "nrc/nc4_ncc_mismatch/net.2" in got  # the second pass ran
        assert_scalars_equal(got, want.scalars(), f"epoch {entry.epoch}")
    # The logged numbers are the history's, and arrive as float64.
    logged = trainer.callback_metrics
    last = callback.history.entries[-1].results.scalars()
    for key, value in last.items():
        assert logged[key].dtype == torch.float64
        assert logged[key].item() == value
    check_logged = logged_epochs(tmp_path / "logs" / "run" / "version_0" / "metrics.csv")
    assert_scalars_equal(check_logged[1], last, "metrics.csv")


def test_a_dataloader_of_ones_own_every_second_epoch(tmp_path):
    x, y = classes_data(seed=1)
    probe = DataLoader(TensorDataset(x[:96], y[:96]), batch_size=48)
    np.savez(tmp_path / "probe.npz", x=x[:96].numpy(), y=y[:96].numpy())
    callback = CollapseCallback(dataloader=probe, every_n_epochs=2, ncc=False, layers=["net.*"])
    fit(tmp_path, Classifier(), callback, epochs=2, val=False)
    (entry,) = callback.history.entries
    assert entry.epoch == 1
    ckpt = checkpoint_of(tmp_path / "checkpoints", 1)
    want = analyze(
        ckpt,
        tmp_path / "probe.npz",
        batch_size=48,
        task="classification",
        ncc=False,
        activation="tanh",
    )
    assert_scalars_equal(entry.results.scalars(), want.scalars(), "dataloader=")
    assert not any(k.startswith(("nrc/ncc", "nrc/nc4")) for k in entry.results.scalars())


def test_validation_step_calling_a_submodule_is_measured_with_module(tmp_path):
    class Wrapped(Classifier):
        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", nn.functional.cross_entropy(self.net(x), y))

    callback = CollapseCallback(module="net", ncc=False)
    fit(tmp_path, Wrapped(), callback, epochs=1)
    (entry,) = callback.history.entries
    assert [row["layer"] for row in entry.results.layers] == ["0", "2", "4"]


# -- bad options fail before the first training step -----------------------------------------


def test_options_are_checked_when_the_callback_is_built():
    with pytest.raises(ConfigError, match=r"^rank: expected an integer >= 1"):
        CollapseCallback(rank=0)
    with pytest.raises(ConfigError, match=r"^every_n_epochs"):
        CollapseCallback(every_n_epochs=0)
    with pytest.raises(ConfigError, match=r"^layers/exclude: expected a list"):
        CollapseCallback(layers="net.*")
    with pytest.raises(NrcError, match=r"history"):
        CollapseCallback(history_path="history.txt")


class NoWeights(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.steps = 0

    def forward(self, x):
        return x[:, :3] * self.scale

    def training_step(self, batch, batch_idx):
        self.steps += 1
        return self(batch[0]).sum()

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize(
    ("make_model", "callback", "error", "match"),
    [
        (Classifier, lambda: CollapseCallback(layers=["net.9*"]), ConfigError, r"^layers"),
        (
            Classifier,
            lambda: CollapseCallback(dataloader=DataLoader(TensorDataset(torch.zeros(0, 6)))),
            ConfigError,
            r"^dataloader: the dataloader yields no batch",
        ),
        (NoWeights, lambda: CollapseCallback(), NrcError, r"weight layer|no layer|Linear"),
    ],
    ids=["unknown-glob", "empty-dataloader", "no-weight-layers"],
)
def test_bad_options_fail_at_fit_start(tmp_path, make_model, callback, error, match):
    model = make_model()
    with pytest.raises(error, match=match):
        fit(tmp_path, model, callback(), epochs=1)
    assert model.steps == 0


def test_no_validation_data_fails_at_fit_start_naming_dataloader(tmp_path):
    model = Classifier()
    with pytest.raises(ConfigError, match=r"^dataloader: the validation dataloader yields no"):
        fit(tmp_path, model, CollapseCallback(), epochs=1, val=False)
    assert model.steps == 0


def test_two_forward_passes_per_validation_batch_are_refused_with_the_remedy(tmp_path):
    class Twice(Classifier):
        def validation_step(self, batch, batch_idx):
            self(batch[0])
            self(batch[0])

    with pytest.raises(DataError, match="more than once in one batch") as info:
        fit(tmp_path, Twice(), CollapseCallback(), epochs=1)
    assert "dataloader=" in (info.value.hint or "")


def test_results_round_trip_keeps_the_scalars(tmp_path):
    callback = CollapseCallback(ncc=False)
    fit(tmp_path, Classifier(), callback, epochs=1)
    results = callback.results
    assert results is not None
    again = Results.from_dict(results.to_dict())
    assert again.scalars() == results.scalars()
