"""The Hugging Face ``Trainer`` callback in real ``Trainer`` runs on a tiny BERT built from a
config: the scalars are in ``log_history``, each saved checkpoint has its report, and ``nrc
audit`` over the run folder computes the same numbers from the saved weights."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import torch  # noqa: E402
from helpers import invoke  # noqa: E402

from integrations.docs_examples import example, run_script  # noqa: E402
from nrc_cli.errors import ConfigError, NrcError  # noqa: E402
from nrc_cli.integrations.transformers import CollapseCallback  # noqa: E402
from nrc_cli.results import Results  # noqa: E402

TOL = 1e-9


def test_docs_example_reports_scalars_and_a_report_per_checkpoint(tmp_path):
    run_script(tmp_path, example("transformers.md"))
    run = tmp_path / "bert-run"
    steps = sorted(int(p.name.split("-")[1]) for p in run.glob("checkpoint-*"))
    assert steps == [6, 12]

    state = json.loads((run / "checkpoint-12" / "trainer_state.json").read_text())
    evaluations = [e for e in state["log_history"] if "eval_loss" in e]
    assert [e["step"] for e in evaluations] == steps
    reports = {s: Results.load(run / f"checkpoint-{s}" / "nrc_report.json") for s in steps}
    for entry in evaluations:
        report = reports[entry["step"]]
        scalars = report.scalars()
        assert "nrc/nrc1_noise/classifier" in scalars
        assert "nrc/nrc1_noise/bert.encoder.layer.1.output.dense" in scalars
        for key, value in scalars.items():  # the logged numbers are the saved report's
            assert entry[key] == value, key
        assert report.summary["n_samples"] == 96

    # nrc audit over the run folder finds a report's numbers again, from the saved weights.
    out = tmp_path / "audit.csv"
    result = invoke(
        [
            "audit", run, "--data", tmp_path / "eval.npz", "--arch", "hf",
            "--output-key", "logits", "--input", "input_ids", "--input", "attention_mask",
            "--batch-size", "32", "-o", out,
        ]
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    import pandas as pd

    table = pd.read_csv(out)
    for step, report in reports.items():
        rows = table[table["checkpoint"].str.endswith(f"checkpoint-{step}")]
        assert len(rows) == len(report.layers) > 10
        for layer in report.layers:
            row = rows[rows["layer"] == layer["layer"]].iloc[0]
            for column in ("nrc1_noise", "nrc2_cka", "nrc4_probe_mse", "stable_rank_h"):
                if layer[column] is not None:
                    assert math.isclose(row[column], layer[column], rel_tol=TOL, abs_tol=TOL)

    history = pd.read_parquet(tmp_path / "history.parquet")
    assert sorted(history["meta.step"].unique()) == steps


# -- in this process: options, the evaluation's metrics, bad options -------------------------


def tiny_bert(classes: int = 1):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=8,
        num_labels=classes,
    )
    return BertForSequenceClassification(config)


class Tokens(torch.utils.data.Dataset):
    def __init__(self, n: int = 40, classes: int = 1):
        g = torch.Generator().manual_seed(1)
        self.ids = torch.randint(1, 30, (n, 6), generator=g)
        self.mask = torch.ones(n, 6, dtype=torch.long)
        self.mask[::2, 4:] = 0
        if classes == 1:
            self.y = self.ids.float().mean(1) / 30
        else:
            self.y = self.ids[:, 0] % classes

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i], "labels": self.y[i]}


def trainer_for(tmp_path: Path, model, *, eval_strategy="epoch", epochs=1, **args):
    from transformers import Trainer, TrainingArguments

    classes = model.config.num_labels
    arguments = TrainingArguments(
        str(tmp_path / "out"),
        num_train_epochs=epochs,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=16,
        eval_strategy=eval_strategy,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        **args,
    )
    data = Tokens(classes=classes)
    return Trainer(model=model, args=arguments, train_dataset=data, eval_dataset=data)


def test_evaluate_returns_the_scalars_of_a_classifier_with_the_ncc_pass(tmp_path):
    trainer = trainer_for(tmp_path, tiny_bert(classes=3))
    callback = CollapseCallback(layers=["bert.encoder.**", "classifier"]).attach(trainer)
    metrics = trainer.evaluate()
    results = callback.results
    assert results is not None and results.task == "classification"
    scalars = results.scalars()
    assert "nrc/nc4_ncc_mismatch/classifier" in scalars  # the second pass ran
    for key, value in scalars.items():
        assert metrics[key] == value
    assert trainer.state.log_history[-1]["nrc/nc1/classifier"] == scalars["nrc/nc1/classifier"]
    assert all(row["layer"].startswith(("bert.encoder.", "classifier")) for row in results.layers)


def test_added_after_the_reporters_it_still_fills_log_history_and_warns(tmp_path):
    trainer = trainer_for(tmp_path, tiny_bert())
    callback = CollapseCallback(rank=1)
    trainer.add_callback(callback)
    with pytest.warns(UserWarning, match=r"attach\(trainer\)"):
        trainer.evaluate()
    assert callback.results is not None
    key = "nrc/nrc1_noise/classifier"
    assert trainer.state.log_history[-1][key] == callback.results.scalars()[key]


@pytest.mark.parametrize(
    ("callback", "strategy", "error", "match"),
    [
        (lambda: CollapseCallback(layers=["encoder.nothing*"]), "epoch", ConfigError, r"^layers"),
        (
            lambda: CollapseCallback(dataloader=torch.utils.data.DataLoader(Tokens(n=0))),
            "epoch",
            ConfigError,
            r"^dataloader: the dataloader yields no batch",
        ),
        (lambda: CollapseCallback(), "no", ConfigError, r"^dataloader: .*eval_strategy='no'"),
    ],
    ids=["unknown-glob", "empty-dataloader", "never-evaluates"],
)
def test_bad_options_fail_at_train_begin(tmp_path, callback, strategy, error, match):
    trainer = trainer_for(tmp_path, tiny_bert(), eval_strategy=strategy)
    callback().attach(trainer)
    with pytest.raises(error, match=match), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    assert trainer.state.global_step == 0


def test_a_model_without_weight_layers_fails_at_train_begin(tmp_path):
    from transformers import Trainer, TrainingArguments

    class Scale(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(()))

        def forward(self, input_ids, attention_mask, labels=None):
            out = input_ids.float().mean(1) * self.scale
            return {"loss": ((out - labels) ** 2).mean(), "logits": out}

    arguments = TrainingArguments(
        str(tmp_path / "out"), eval_strategy="epoch", report_to=[], use_cpu=True, save_strategy="no"
    )
    trainer = Trainer(model=Scale(), args=arguments, train_dataset=Tokens(), eval_dataset=Tokens())
    CollapseCallback().attach(trainer)
    with pytest.raises(NrcError, match=r"weight layer|no layer|Linear"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_options_are_checked_when_the_callback_is_built():
    with pytest.raises(ConfigError, match=r"^precision"):
        CollapseCallback(precision="float8")
    with pytest.raises(ConfigError, match=r"^report_name"):
        CollapseCallback(report_name="a/b.json")
