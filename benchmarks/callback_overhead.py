"""What the Lightning callback costs per epoch: an epoch with it against an epoch without it.

A small MLP on the CPU (``--width`` wide, 4 Linear layers), ``--train`` training and ``--val``
validation samples, batch 256. Each configuration trains ``--epochs`` epochs in a fresh
``Trainer`` (the first epoch is left out of the timing: warm-up); the configurations are run
interleaved, ``--repeat`` rounds, and the table gives the median seconds per epoch and the
overhead against the round's plain epoch::

    python benchmarks/callback_overhead.py            # about 3 minutes on 2 cores
    python benchmarks/callback_overhead.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
import warnings

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from nrc_cli.integrations.lightning import CollapseCallback


class MLP(L.LightningModule):
    def __init__(self, width: int, out: int, classify: bool) -> None:
        super().__init__()
        self.classify = classify
        self.net = nn.Sequential(
            nn.Linear(32, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
            nn.Linear(width, width), nn.ReLU(), nn.Linear(width, out),
        )  # fmt: skip

    def forward(self, x):
        return self.net(x)

    def loss(self, batch):
        x, y = batch
        out = self(x)
        return (
            nn.functional.cross_entropy(out, y) if self.classify else nn.functional.mse_loss(out, y)
        )

    def training_step(self, batch, batch_idx):
        return self.loss(batch)

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self.loss(batch))

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3, weight_decay=1e-2)


class EpochTimer(L.Callback):
    """Wall time of each whole epoch: training, validation and every callback's work."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer, pl_module):
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        # Runs after validation and after the callbacks listed before it (the collapse one).
        self.times.append(time.perf_counter() - self._start)


def data(n: int, classify: bool, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 32, generator=g)
    if classify:
        return TensorDataset(x, (x[:, :4].sum(1) > 0).long() + 2 * (x[:, 4] > 0).long())
    return TensorDataset(x, x[:, :8] @ torch.randn(8, 8, generator=g))


def epoch_time(config: str, args) -> float:
    classify = config.startswith("classification")
    train = DataLoader(data(args.train, classify, 0), batch_size=256, shuffle=True)
    val = DataLoader(data(args.val, classify, 1), batch_size=256)
    callbacks: list[L.Callback] = []
    if config.endswith("callback"):
        callbacks.append(CollapseCallback())
    elif config.endswith("dataloader="):
        callbacks.append(CollapseCallback(dataloader=val))
    timer = EpochTimer()
    callbacks.append(timer)
    torch.manual_seed(0)
    trainer = L.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(MLP(args.width, 4 if classify else 8, classify), train, val)
    return statistics.median(timer.times[1:])


CONFIGS = {
    "regression": ["regression", "regression + callback", "regression + dataloader="],
    "classification": ["classification", "classification + callback"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--train", type=int, default=16384)
    ap.add_argument("--val", type=int, default=4096)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.train, args.val, args.epochs, args.repeat = 2048, 512, 2, 1
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    times: dict[str, list[float]] = {c: [] for group in CONFIGS.values() for c in group}
    for _ in range(args.repeat):
        for group in CONFIGS.values():
            for config in group:
                times[config].append(epoch_time(config, args))
    print(
        f"MLP 32 -> {args.width} x3 -> t, {args.train} training and {args.val} validation "
        f"samples, batch 256, torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"median of {args.repeat} interleaved rounds\n"
    )
    print("| configuration | extra passes | s / epoch | overhead |")
    print("|---|---|---|---|")
    passes = {"callback": "0", "dataloader=": "1"}
    for group in CONFIGS.values():
        base = statistics.median(times[group[0]])
        for config in group:
            t = statistics.median(times[config])
            extra = "–" if config == group[0] else passes[config.split()[-1]]
            if config == "classification + callback":
                extra = "1 (NCC)"
            over = "–" if config == group[0] else f"{100 * (t / base - 1):+.0f}%"
            print(f"| {config} | {extra} | {t:.3f} | {over} |")


if __name__ == "__main__":
    main()
