"""Tests for :mod:`nrc_cli.audit`: discovery, sharding, rows, errors, the resumable store, merge.

Every test builds a tiny zoo of real safetensors checkpoints and a real ``.npz`` in ``tmp_path``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import mlp, save_model, save_npz
from pandas.testing import assert_frame_equal

from nrc_cli.audit import (
    ERROR_COLUMNS,
    IDENTITY_COLUMNS,
    audit_columns,
    audit_frame,
    discover,
    merge_tables,
    parse_shard,
    parts_dir,
    read_table,
    resolve_column,
    run_audit,
    select_shard,
    write_table,
)
from nrc_cli.errors import ConfigError, DataError
from nrc_cli.options import AnalysisOptions
from nrc_cli.pipeline import run

REPO = Path(__file__).resolve().parents[2]
IN, OUT = 6, 2


def make_checkpoint(path, *, weight_decay=0.0, seed=0, in_dim=IN, extra_meta=None):
    """A random 3-layer ReLU MLP (in_dim -> 16 -> 16 -> 2) with sweep-like metadata."""
    meta = {
        "weight_decay": repr(float(weight_decay)),
        "seed": str(seed),
        "epochs": "100",
        "optimizer": "sgd",
        **(extra_meta or {}),
    }
    model = mlp((in_dim, 16, 16, OUT), seed=seed + int(weight_decay * 1e6))
    return save_model(path, model, meta)


def make_zoo(folder, weight_decays=(0.0, 1e-4, 1e-3), seeds=(0, 1)):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for wd in weight_decays:
        for seed in seeds:
            paths.append(
                make_checkpoint(
                    folder / f"wd{wd:g}_seed{seed}.safetensors", weight_decay=wd, seed=seed
                )
            )
    return paths


def make_data(path, n=96, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, IN)).astype(np.float32)
    y = np.stack([np.tanh(x[:, 0]), np.sin(x[:, 1])], axis=1).astype(np.float32)
    return save_npz(path, x=x, y=y)


@pytest.fixture
def zoo(tmp_path, monkeypatch):
    """A zoo in ``tmp_path/zoo`` and data ``tmp_path/data.npz``; cwd is ``tmp_path`` so that
    checkpoint paths are short and relative, as a user would type them."""
    monkeypatch.chdir(tmp_path)
    make_zoo(tmp_path / "zoo")
    make_data(tmp_path / "data.npz")
    return tmp_path


def config(**options) -> tuple[str, AnalysisOptions]:
    """The data set and the options of an audit, for ``run_audit(paths, *config(...))``."""
    return "data.npz", AnalysisOptions(**options)


def labels_of(frame) -> list[str]:
    return list(dict.fromkeys(frame["checkpoint"]))


# ------------------------------------------------------------------------------------------------
# Discovery and sharding
# ------------------------------------------------------------------------------------------------


def test_discover_expands_folders_recursively_and_sorts(zoo):
    nested = zoo / "zoo" / "deeper"
    nested.mkdir()
    make_checkpoint(nested / "a.safetensors")
    (zoo / "zoo" / "notes.txt").write_text("not a checkpoint")
    hidden = zoo / "zoo" / ".cache"
    hidden.mkdir()
    make_checkpoint(hidden / "b.safetensors")
    found = discover(["zoo"])
    assert found == sorted(found)
    assert "zoo/deeper/a.safetensors" in found
    assert not any(".cache" in f or f.endswith(".txt") for f in found)
    assert len(found) == 7


def test_discover_globs_files_and_dedupes(zoo):
    os.symlink(zoo / "zoo" / "wd0_seed0.safetensors", zoo / "link.safetensors")
    found = discover(["zoo/wd0_*.safetensors", "zoo/wd0_seed0.safetensors", "link.safetensors"])
    # One entry per file: the first path in sorted order names it.
    assert found == ["link.safetensors", "zoo/wd0_seed1.safetensors"]


def test_model_folders_are_one_checkpoint_each(zoo):
    hf = zoo / "zoo" / "hf_model"
    hf.mkdir()
    make_checkpoint(hf / "model.safetensors", weight_decay=0.25)
    sharded = zoo / "zoo" / "sharded"
    sharded.mkdir()
    (sharded / "model.safetensors.index.json").write_text('{"weight_map": {}}')
    for i in (1, 2):
        make_checkpoint(sharded / f"model-0000{i}-of-00002.safetensors")
    found = discover(["zoo"])
    assert "zoo/hf_model" in found and "zoo/sharded" in found
    assert not any(f.startswith(("zoo/hf_model/", "zoo/sharded/")) for f in found)
    assert discover(["zoo/hf_model"]) == ["zoo/hf_model"]
    result = run_audit(["zoo/hf_model"], *config(max_samples=32), output="out.csv")
    assert result.analyzed == 1
    assert set(result.frame["meta.weight_decay"]) == {0.25}
    # Replacing a file inside the folder makes it a new checkpoint for the resume key.
    target = hf / "model.safetensors"
    make_checkpoint(target, weight_decay=0.5)
    st = os.stat(target)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    again = run_audit(["zoo/hf_model"], *config(max_samples=32), output="out.csv")
    assert again.analyzed == 1
    assert set(again.frame["meta.weight_decay"]) == {0.5}


def test_discover_keeps_an_explicit_file_whatever_its_suffix(zoo):
    (zoo / "model.weights").write_bytes(b"junk")
    assert discover(["model.weights"]) == ["model.weights"]


@pytest.mark.parametrize(
    ("arg", "match"),
    [
        ("missing.safetensors", "found nothing there"),
        ("zoo/*.pt", "the glob matches no file"),
        ("empty", "holds no checkpoint file"),
    ],
)
def test_discover_refuses_arguments_that_name_nothing(zoo, arg, match):
    (zoo / "empty").mkdir()
    with pytest.raises(ConfigError, match=match):
        discover([arg])


@pytest.mark.parametrize("text", ["0/2", "3/2", "1/0", "a/b", "1-2", "2"])
def test_parse_shard_refuses_bad_text(text):
    with pytest.raises(ConfigError, match="--shard"):
        parse_shard(text)


def test_shards_partition_the_sorted_list():
    items = [f"m{i:02d}" for i in range(11)]
    shards = [select_shard(list(reversed(items)), parse_shard(f"{i}/3")) for i in (1, 2, 3)]
    assert shards[0] == ["m00", "m03", "m06", "m09"]
    assert sorted(item for shard in shards for item in shard) == items
    assert select_shard(items, None) == items
    assert parse_shard(" 2 / 3 ") == (2, 3)


SLURM = {"SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "4"}


@pytest.mark.parametrize(
    ("environ", "text", "expected"),
    [
        ({**SLURM, "SLURM_ARRAY_TASK_ID": "1"}, "auto", (1, 4)),
        ({**SLURM, "SLURM_ARRAY_TASK_ID": "4"}, "auto", (4, 4)),
        ({**SLURM, "SLURM_ARRAY_TASK_ID": "3"}, " auto / 4 ", (3, 4)),
        # --array=0-6:2 -> tasks 0, 2, 4, 6
        (
            {"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_MIN": "0"}
            | {"SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_STEP": "2"},
            "auto",
            (3, 4),
        ),
        ({"JOB_COMPLETION_INDEX": "0"}, "auto/3", (1, 3)),
        ({"JOB_COMPLETION_INDEX": "2", "NRC_SHARD_COUNT": "3"}, "auto", (3, 3)),
        ({"JOB_COMPLETION_INDEX": "2", "NRC_SHARD_COUNT": "3"}, "auto/3", (3, 3)),
        ({"SLURM_ARRAY_TASK_ID": ""}, "2/5", (2, 5)),  # an explicit shard ignores the env
    ],
)
def test_shard_auto_reads_the_array_job(environ, text, expected):
    assert parse_shard(text, environ) == expected


@pytest.mark.parametrize(
    ("environ", "text", "match"),
    [
        ({}, "auto", "not a task of an array job"),
        ({"SLURM_JOB_ID": "7"}, "auto", "neither SLURM_ARRAY_TASK_ID nor JOB_COMPLETION_INDEX"),
        ({"JOB_COMPLETION_INDEX": "1"}, "auto", "not the number of shards"),
        ({"JOB_COMPLETION_INDEX": "3", "NRC_SHARD_COUNT": "3"}, "auto", "not below the number"),
        ({"JOB_COMPLETION_INDEX": "x"}, "auto/2", "whole number >= 0 in JOB_COMPLETION_INDEX"),
        ({**SLURM, "SLURM_ARRAY_TASK_ID": "2"}, "auto/3", "has 4 task\\(s\\), not 3"),
        ({**SLURM, "SLURM_ARRAY_TASK_ID": "9"}, "auto", "not one of 4 evenly spaced"),
        ({"SLURM_ARRAY_TASK_ID": "2"}, "auto", "SLURM_ARRAY_TASK_MIN"),
        ({}, "auto/x", "auto or auto/N"),
    ],
)
def test_shard_auto_refuses_what_is_not_an_array_task(environ, text, match):
    with pytest.raises(ConfigError, match=match):
        parse_shard(text, environ)


# ------------------------------------------------------------------------------------------------
# Rows, metadata columns, errors
# ------------------------------------------------------------------------------------------------


def test_rows_are_the_analysis_of_each_checkpoint_plus_identity_and_metadata(zoo):
    found = discover(["zoo"])
    result = run_audit(found, *config(max_samples=64))
    frame = result.frame
    assert (result.analyzed, result.skipped, result.failed, result.total) == (6, 0, 0, 6)
    assert len(frame) == 6 * 3
    fixed = [n for n, _ in audit_columns()]
    assert list(frame.columns[: len(fixed)]) == fixed
    assert list(frame.columns[len(fixed) :]) == [
        "meta.epochs",
        "meta.optimizer",
        "meta.seed",
        "meta.weight_decay",
    ]
    assert labels_of(frame) == found
    assert frame[["checkpoint", "index"]].duplicated().sum() == 0
    # Each checkpoint's rows are exactly what `nrc analyze` gives for it.
    one = "zoo/wd0.001_seed1.safetensors"
    expected = run(one, "data.npz", AnalysisOptions(max_samples=64)).to_frame()
    got = frame[frame["checkpoint"] == one].reset_index(drop=True)
    assert_frame_equal(got[list(expected.columns)], expected, check_exact=True)
    stat = os.stat(one)
    assert (got["checkpoint_size"] == stat.st_size).all()
    assert got["checkpoint_mtime"].str.endswith("Z").all()
    # Metadata: numeric strings became numbers, one dtype per column.
    assert frame["meta.weight_decay"].dtype == "float64"
    assert frame["meta.seed"].dtype == "Int64"
    assert frame["meta.optimizer"].dtype == "string"
    assert sorted(frame["meta.weight_decay"].unique()) == [0.0, 1e-4, 1e-3]
    # The question the table is for: one group-by away.
    last = frame[frame["index"] == frame["index"].max()]
    by_wd = last.groupby("meta.weight_decay")["nrc3_alignment"].mean()
    assert list(by_wd.index) == [0.0, 1e-4, 1e-3]


def test_metadata_typing_over_a_column():
    base = {"checkpoint": "a", "index": 1}
    rows = [
        {
            **base,
            "checkpoint": "a",
            "meta.i": "3",
            "meta.f": "1e-3",
            "meta.mix": "1",
            "meta.t": "adam",
            "meta.big": "123456789012345678901234567890",
            "meta.pad": " 1",
        },
        {
            **base,
            "checkpoint": "b",
            "meta.i": "-4",
            "meta.f": "2",
            "meta.mix": "1e-3",
            "meta.t": "5",
        },
    ]
    frame = audit_frame(rows)
    assert frame["meta.i"].dtype == "Int64" and list(frame["meta.i"]) == [3, -4]
    assert frame["meta.f"].dtype == "float64" and list(frame["meta.f"]) == [1e-3, 2.0]
    assert frame["meta.mix"].dtype == "float64"
    # A column with any text keeps every value's original text.
    assert frame["meta.t"].dtype == "string" and list(frame["meta.t"]) == ["adam", "5"]
    assert frame["meta.big"].dtype == "string"
    assert frame["meta.pad"].dtype == "string" and frame["meta.pad"][0] == " 1"
    assert frame["meta.big"].isna()[1]


def test_failures_become_error_rows_and_the_audit_goes_on(zoo):
    (zoo / "zoo" / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00not a header")
    make_checkpoint(zoo / "zoo" / "wide.safetensors", in_dim=IN + 3)
    found = discover(["zoo"])
    calls = []
    result = run_audit(found, *config(max_samples=32), progress=lambda *a: calls.append(a))
    assert (result.analyzed, result.failed) == (6, 2)
    errors = result.errors
    assert list(errors.columns) == [n for n, _ in ERROR_COLUMNS]
    assert list(errors["checkpoint"]) == ["zoo/corrupt.safetensors", "zoo/wide.safetensors"]
    assert list(errors["error_type"]) == ["CheckpointError", "DataError"]
    assert "zoo/corrupt.safetensors" in errors["message"][0]
    assert "has 6 features" in errors["message"][1]
    assert "zoo/corrupt.safetensors" not in set(result.frame["checkpoint"])
    assert calls[0] == (0, 8, "", "start")
    assert [c[0] for c in calls] == list(range(9))
    assert {c[1] for c in calls} == {8}
    assert [c[3] for c in calls].count("failed") == 2


# A model factory whose first model, in whichever worker builds it, kills its process (as the
# kernel's out-of-memory killer would); the O_EXCL marker makes it exactly one.
_DIES_ONCE = """
import os, signal
from pathlib import Path
from torch import nn

def net():
    try:
        os.close(os.open(Path(__file__).with_suffix(".died"), os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                             nn.Linear(16, 2))
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_worker_that_dies_fails_its_checkpoint_and_the_audit_goes_on(zoo):
    (zoo / "dies.py").write_text(_DIES_ONCE)
    found = discover(["zoo"])
    data, options = config(max_samples=32, arch=f"{zoo / 'dies.py'}:net")
    result = run_audit(found, data, options, output="out.parquet", jobs=2)
    assert (result.analyzed, result.failed) == (5, 1)
    (died,) = result.errors.to_dict("records")
    assert died["error_type"] == "WorkerDied" and died["checkpoint"] in found
    assert "died" in died["message"] and "rerun the same command" in died["hint"]
    assert died["checkpoint"] not in set(result.frame["checkpoint"])
    # Rerun: only the failed checkpoint runs, and the table is that of one process.
    again = run_audit(found, data, options, output="out.parquet", jobs=2)
    assert (again.analyzed, again.skipped, again.failed) == (1, 5, 0)
    alone = run_audit(found, data, options)
    assert_frame_equal(read_table("out.parquet"), alone.frame, check_exact=True)


def test_problems_common_to_every_checkpoint_are_refused_before_any_runs(zoo):
    with pytest.raises(DataError, match=r"missing\.npz"):
        run_audit(discover(["zoo"]), "missing.npz", AnalysisOptions())
    with pytest.raises(ConfigError, match="rank: expected"):
        run_audit(discover(["zoo"]), *config(rank=0))
    with pytest.raises(ConfigError, match="--jobs"):
        run_audit(discover(["zoo"]), *config(), jobs=0)
    assert not parts_dir(zoo / "out.parquet").exists()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"jobs": 0}, "--jobs: expected an integer >= 1, found 0"),
        ({"threads": 0}, "--threads: expected an integer >= 1, found 0"),
        ({"jobs": 2, "threads": -1}, "--threads: expected an integer >= 1, found -1"),
        ({"output": "out.json"}, "'out.json': expected a .parquet or .csv table"),
        ({"output": "out.parquet", "fmt": "json"}, "'out.parquet': expected a .parquet or"),
    ],
)
def test_bad_settings_are_refused_before_any_checkpoint_runs(zoo, settings, message):
    # The data set is missing too: the settings are checked first, then the data.
    seen = []
    with pytest.raises(ConfigError) as err:
        run_audit(
            discover(["zoo"]),
            "missing.npz",
            AnalysisOptions(),
            progress=lambda *args: seen.append(args),
            **settings,
        )
    assert err.value.message.startswith(message)
    assert seen == []
    assert sorted(p.name for p in zoo.iterdir()) == ["data.npz", "zoo"]


def test_the_format_of_the_table_follows_its_suffix_or_fmt(zoo):
    found = discover(["zoo"])[:2]
    run_audit(found, *config(max_samples=32), output="a.csv")
    run_audit(found, *config(max_samples=32), output="b.table", fmt="csv")
    assert Path("a.csv").read_bytes() == Path("b.table").read_bytes()
    assert read_table("a.csv").shape[0] == 2 * 3


# ------------------------------------------------------------------------------------------------
# The resumable store
# ------------------------------------------------------------------------------------------------


def test_rerun_skips_what_is_done_and_gives_the_same_table(zoo):
    found = discover(["zoo"])
    first = run_audit(found[:4], *config(max_samples=32), output="out.parquet")
    assert first.analyzed == 4
    full = run_audit(found, *config(max_samples=32), output="out.parquet")
    assert (full.analyzed, full.skipped) == (2, 4)
    again = run_audit(found, *config(max_samples=32), output="out.parquet")
    assert (again.analyzed, again.skipped) == (0, 6)
    fresh = run_audit(found, *config(max_samples=32), output="fresh.csv")
    assert_frame_equal(full.frame, fresh.frame, check_exact=True)
    assert_frame_equal(read_table("out.parquet"), fresh.frame, check_exact=True)
    assert_frame_equal(read_table("fresh.csv"), fresh.frame, check_exact=True)


def test_a_changed_file_or_changed_options_are_analyzed_again(zoo):
    found = discover(["zoo"])
    run_audit(found, *config(max_samples=32), output="out.csv")
    target = "zoo/wd0_seed1.safetensors"
    make_checkpoint(target, weight_decay=0.5, seed=1)
    st = os.stat(target)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    again = run_audit(found, *config(max_samples=32), output="out.csv")
    assert (again.analyzed, again.skipped) == (1, 5)
    assert set(again.frame.loc[again.frame["checkpoint"] == target, "meta.weight_decay"]) == {0.5}
    other = run_audit(found, *config(max_samples=48), output="out.csv")
    assert other.analyzed == 6
    assert set(other.frame["n_samples"]) == {48}
    assert run_audit(found, *config(max_samples=48), output="out.csv", fresh=True).analyzed == 6


def test_editing_a_file_a_data_spec_reads_analyzes_again(zoo):
    # The spec names a CSV of inputs and a Parquet file of targets; editing either, with the
    # spec file untouched, changes the numbers, so nothing may be reused.
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    rng = np.random.default_rng(3)
    x = rng.standard_normal((64, IN))
    y = np.stack([np.tanh(x[:, 0]), np.sin(x[:, 1])], axis=1)

    def write(scale: float) -> None:
        pcsv.write_csv(pa.table({f"f{j}": x[:, j] for j in range(IN)}), zoo / "x.csv")
        pq.write_table(pa.table({f"y{j}": scale * y[:, j] for j in range(OUT)}), zoo / "y.parquet")

    write(1.0)
    spec = zoo / "data.toml"
    spec.write_text(
        '[inputs]\nfile = "x.csv"\ncolumns = "f*"\n[targets]\nfile = "y.parquet"\ncolumns = "y*"\n'
    )
    found = discover(["zoo"])[:2]
    cfg = (str(spec), AnalysisOptions())
    first = run_audit(found, *cfg, output="out.csv")
    assert first.analyzed == 2
    assert run_audit(found, *cfg, output="out.csv").skipped == 2
    spec_stat = os.stat(spec)
    write(3.0)
    for name in ("x.csv", "y.parquet"):  # a later modification time, whatever the clock did
        st = os.stat(zoo / name)
        os.utime(zoo / name, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert os.stat(spec).st_mtime_ns == spec_stat.st_mtime_ns
    again = run_audit(found, *cfg, output="out.csv")
    assert (again.analyzed, again.skipped) == (2, 0)
    # The targets are 3 times larger now: every model's error grows.
    assert (again.frame["model_mse"].to_numpy() > first.frame["model_mse"].to_numpy()).all()


def test_a_checkpoint_that_breaks_loses_its_old_rows(zoo):
    found = discover(["zoo"])
    run_audit(found, *config(max_samples=32), output="out.parquet")
    target = zoo / "zoo" / "wd0_seed0.safetensors"
    target.write_bytes(b"broken now")
    again = run_audit(found, *config(max_samples=32), output="out.parquet")
    assert again.failed == 1 and again.skipped == 5
    assert "zoo/wd0_seed0.safetensors" not in set(read_table("out.parquet")["checkpoint"])


def test_leftovers_of_a_killed_job_are_harmless(zoo):
    found = discover(["zoo"])
    run_audit(found[:3], *config(max_samples=32), output="out.parquet")
    parts = parts_dir("out.parquet")
    (parts / ".abc.json.x1.tmp").write_text('{"half": ')
    damaged = sorted(parts.glob("*.json"))[0]
    damaged.write_text(damaged.read_text()[:40])
    result = run_audit(found, *config(max_samples=32), output="out.parquet")
    assert (result.analyzed, result.skipped) == (4, 2)
    assert not list(parts.glob(".*.tmp"))
    assert labels_of(read_table("out.parquet")) == found


def test_the_table_is_rewritten_as_checkpoints_are_committed(zoo):
    found = discover(["zoo"])
    seen = []

    def progress(done, total, label, status):
        if status != "start":
            seen.append(labels_of(read_table("out.parquet")))

    run_audit(
        found, *config(max_samples=32), output="out.parquet", flush_every=0, progress=progress
    )
    assert seen == [found[:i] for i in range(1, 7)]
    part = json.loads(next(parts_dir("out.parquet").glob("*.json")).read_text())
    assert set(part) == {"format", "checkpoint", "key", "report", "metadata"}


def test_two_audits_cannot_write_one_output_at_once(zoo):
    found = discover(["zoo"])

    def progress(*_):
        run_audit(found, *config(max_samples=32), output="out.parquet")

    with pytest.raises(ConfigError, match="another nrc audit is writing"):
        run_audit(found[:1], *config(max_samples=32), output="out.parquet", progress=progress)
    # The lock goes with the audit that held it.
    assert run_audit(found, *config(max_samples=32), output="out.parquet").total == 6


# Another process holds the store of out.parquet, as a running audit does, until it is killed.
_HOLD = """
import sys, time
from nrc_cli.audit.store import Store
store = Store(sys.argv[1], "settings", fresh=False)
print("locked", flush=True)
time.sleep(120)
"""


def test_an_audit_in_another_process_holds_the_output_until_it_dies(zoo):
    found = discover(["zoo"])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, "out.parquet"], stdout=subprocess.PIPE, env=env, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        with pytest.raises(ConfigError, match="another nrc audit is writing to it now"):
            run_audit(found, *config(max_samples=32), output="out.parquet")
        assert not Path("out.parquet").exists()
    finally:
        holder.kill()  # SIGKILL: no clean-up runs; the operating system drops the lock
        holder.communicate()
    assert run_audit(found, *config(max_samples=32), output="out.parquet").analyzed == 6


# ------------------------------------------------------------------------------------------------
# Tables: read back, merge, column names
# ------------------------------------------------------------------------------------------------


def test_tables_read_back_exactly_even_with_numeric_looking_layer_names(tmp_path):
    rows = [
        {
            "checkpoint": "a",
            "index": i,
            "layer": name,
            "nrc1_noise": v,
            "collapsed": c,
            "meta.lr": "0.1",
            "meta.tag": "01",
        }
        for i, (name, v, c) in enumerate([("0", 0.1 + 0.2, True), ("01", None, None)], 1)
    ]
    frame = audit_frame(rows)
    for name in ("t.csv", "t.parquet"):
        write_table(frame, tmp_path / name)
        assert_frame_equal(read_table(tmp_path / name), frame, check_exact=True)
    assert list(frame["layer"]) == ["0", "01"]


def test_merge_of_shards_equals_the_whole(zoo):
    found = discover(["zoo"])
    for i in (1, 2, 3):
        run_audit(select_shard(found, (i, 3)), *config(max_samples=32), output=f"s{i}.csv")
    whole = run_audit(found, *config(max_samples=32)).frame
    merged = merge_tables(["s2.csv", "s1.csv", "s3.csv"])
    assert_frame_equal(merged, whole, check_exact=True)
    write_table(whole, "whole.parquet")
    with pytest.raises(DataError, match=r"is in both 's1\.csv' and 'whole\.parquet'"):
        merge_tables(["s1.csv", "whole.parquet"])


def test_merge_refuses_what_is_not_an_audit_table(tmp_path):
    pd.DataFrame({"a": [1]}).to_csv(tmp_path / "x.csv", index=False)
    with pytest.raises(DataError, match="not an audit table"):
        merge_tables([tmp_path / "x.csv"])
    with pytest.raises(DataError, match="table not found"):
        merge_tables([tmp_path / "none.parquet"])
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 nope")
    with pytest.raises(DataError, match="cannot read as parquet"):
        merge_tables([tmp_path / "bad.parquet"])
    with pytest.raises(ConfigError, match=r"expected a \.parquet or \.csv table"):
        merge_tables([tmp_path / "x.json"])


def test_resolve_column_prefers_metadata(zoo):
    frame = run_audit(discover(["zoo/wd0_seed0.safetensors"]), *config(max_samples=32)).frame
    assert resolve_column(frame, "weight_decay") == "meta.weight_decay"
    assert resolve_column(frame, "meta.weight_decay") == "meta.weight_decay"
    assert resolve_column(frame, "seed") == "meta.seed"  # not the SVD seed of the summary
    assert resolve_column(frame, "nrc3_alignment") == "nrc3_alignment"
    with pytest.raises(DataError, match="--x 'lr': no such column") as info:
        resolve_column(frame, "lr")
    assert "weight_decay" in info.value.hint


def test_identity_columns_lead():
    assert [n for n, _ in audit_columns()[:3]] == [n for n, _ in IDENTITY_COLUMNS]
