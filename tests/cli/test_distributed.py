"""``nrc`` under torchrun: two ranks on the CPU over gloo, on 127.0.0.1, each with one thread
and a timeout, compared with one process."""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_case
from helpers import CNN_FACTORY, invoke, make_audit_data, make_audit_zoo, save_model, save_npz
from ranks import run_ranks, torchrun
from torch import nn

from nrc_cli.audit import parts_dir

NRC = ["-m", "nrc_cli"]


@pytest.fixture
def zoo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_audit_zoo(tmp_path / "zoo", n=5)
    make_audit_data(tmp_path / "data.npz")
    (tmp_path / "zoo" / "broken.safetensors").write_bytes(b"not a checkpoint")
    return tmp_path


AUDIT = ["audit", "zoo", "--data", "data.npz", "--max-samples", "48", "--batch-size", "16"]


def test_audit_on_two_ranks_writes_the_table_of_one_audit(zoo):
    one = invoke([*AUDIT, "--output", "one.csv", "--errors", "e1.csv"])
    assert one.exit_code == 0, one.stderr
    # Resume: the first of three shards (broken.safetensors and m02) was run before.
    part = invoke([*AUDIT, "--shard", "1/3", "--output", "two.csv"])
    assert part.exit_code == 0, part.stderr
    ended, _ = run_ranks(
        [*NRC, *AUDIT, "--output", "two.csv", "--errors", "e2.csv"], cwd=zoo, timeout=240
    )
    assert [e.returncode for e in ended] == [0, 0], [e.stderr for e in ended]
    lead, other = ended
    assert other.stdout == other.stderr == ""
    assert lead.stdout == ""
    assert lead.stderr.splitlines()[-1] == (
        "audit (2 ranks): 6 checkpoint(s): 4 analyzed, 1 skipped (already done), 1 failed; "
        "15 row(s) -> two.csv; errors -> e2.csv"
    )
    assert "warning: failed: zoo/broken.safetensors" in lead.stderr
    assert Path("two.csv").read_bytes() == Path("one.csv").read_bytes()
    assert Path("e2.csv").read_bytes() == Path("e1.csv").read_bytes()
    assert len(list(parts_dir("two.csv").glob("*.json"))) == 5


def test_an_error_on_rank_0_ends_both_ranks_with_one_error_line(zoo):
    # Another audit holds the output's lock: rank 0 cannot take it, and both ranks stop.
    folder = parts_dir(zoo / "out.csv")
    folder.mkdir()
    with (folder / ".lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        ended, wall = run_ranks([*NRC, *AUDIT, "--output", "out.csv"], cwd=zoo, timeout=120)
    assert [e.returncode for e in ended] == [2, 2], [e.stderr for e in ended]
    lead, other = ended
    assert other.stderr == "" and other.stdout == "" and lead.stdout == ""
    lines = lead.stderr.splitlines()
    assert lines[0].startswith("error: rank 0: --output 'out.csv': another nrc audit is writing")
    assert lines[1].startswith("hint: ") and len(lines) == 2
    assert not Path("out.csv").exists()
    assert wall < 60


# ------------------------------------------------------------------------------------------------
# nrc analyze: two ranks give the single process's report
# ------------------------------------------------------------------------------------------------


def assert_same_report(got: dict, want: dict, rel: float = 1e-9) -> None:
    """Equal reports up to float64 summation order: numbers to ``rel``, all else exactly."""
    assert got["summary"].pop("world_size") == 2 and want["summary"].pop("world_size") == 1
    # A classifier's nearest-class-mean pass: spilled features in one process, the model
    # again on each rank of a distributed run (the plan says which); the numbers agree.
    if "ncc_source" in want["summary"]["plan"]:
        assert got["summary"]["plan"].pop("ncc_source") == "forward"
        assert "a distributed run" in got["summary"]["plan"].pop("ncc_note")
        want["summary"]["plan"].pop("ncc_source")
        want["summary"]["plan"].pop("ncc_note", None)

    def same(a, b, where):
        if isinstance(a, dict):
            assert a.keys() == b.keys(), where
            for k in a:
                same(a[k], b[k], f"{where}.{k}")
        elif isinstance(a, list):
            assert len(a) == len(b), where
            for i, (u, v) in enumerate(zip(a, b, strict=True)):
                same(u, v, f"{where}[{i}]")
        elif isinstance(a, float) and isinstance(b, float):
            assert math.isclose(a, b, rel_tol=rel, abs_tol=rel), (where, a, b)
        else:
            assert a == b, (where, a, b)

    same(got, want, "report")


def one_process_json(*args) -> dict:
    result = invoke(["analyze", *args, "--format", "json"])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def two_ranks_json(cwd: Path, *args) -> dict:
    ended, _ = run_ranks(
        [*NRC, "analyze", *map(str, args), "--format", "json"], cwd=cwd, timeout=240
    )
    assert [e.returncode for e in ended] == [0, 0], [e.stderr for e in ended]
    assert ended[1].stdout == "" and ended[1].stderr == ""
    return json.loads(ended[0].stdout)


def test_jobs_under_torchrun_is_one_usage_error_from_rank_0(zoo):
    ended, _ = run_ranks([*NRC, *AUDIT, "--output", "out.csv", "--jobs", "2"], cwd=zoo)
    assert [e.returncode for e in ended] == [2, 2], [e.stderr for e in ended]
    lead, other = ended
    assert other.stderr == "" and other.stdout == "" and lead.stdout == ""
    assert lead.stderr.splitlines() == [
        "error: rank 0: --jobs 2: under torchrun the ranks are the workers",
        "hint: drop --jobs and start more ranks: torchrun --nproc-per-node N",
    ]
    assert not Path("out.csv").exists() and not parts_dir("out.csv").exists()


def test_analyze_mlp_under_torchrun_equals_one_process(tmp_path):
    case = make_tiny_case(tmp_path, n=301, dyadic=False)
    args = [case.checkpoint, "--data", case.data, "--batch-size", "32", "--device", "cpu"]
    one = one_process_json(*args)
    done = torchrun(
        [*NRC, "analyze", *map(str, args), "--format", "json"], cwd=tmp_path, timeout=240
    )
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["summary"]["n_samples"] == 301 and got["summary"]["device"] == "cpu"
    assert_same_report(got, one)


def test_analyze_conv_net_from_an_arch_file_on_two_ranks(tmp_path):
    src = tmp_path / "cnn.py"
    src.write_text(CNN_FACTORY)
    namespace: dict = {}
    exec(compile(CNN_FACTORY, str(src), "exec"), namespace)
    torch.manual_seed(0)
    ckpt = save_model(tmp_path / "m.safetensors", namespace["Net"](channels=4).eval())
    rng = np.random.default_rng(5)
    x = rng.standard_normal((150, 2, 6, 5)).astype(np.float32)
    y = (x.mean(axis=(2, 3)) @ rng.standard_normal((2, 2))).astype(np.float32)
    data = save_npz(tmp_path / "d.npz", x=x, y=y, compressed=True)
    args = [ckpt, "--data", data, "--arch", f"{src}:make", "--batch-size", "40"]
    one = one_process_json(*args)
    assert_same_report(two_ranks_json(tmp_path, *args), one)


def test_analyze_sketched_layers_in_several_passes_on_two_ranks(tmp_path):
    g = np.random.default_rng(3)
    x = (g.standard_normal((400, 3)) @ g.standard_normal((3, 16))).astype(np.float32)
    y = (np.tanh(x[:, :3]) + 0.05 * g.standard_normal((400, 3))).astype(np.float32)
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(16, 700), nn.ReLU(), nn.Linear(700, 700), nn.ReLU())
    net.append(nn.Linear(700, 3))
    ckpt = save_model(tmp_path / "wide.safetensors", nn.ModuleDict({"net": net}))
    data = save_npz(tmp_path / "wide.npz", x=x, y=y)
    args = [ckpt, "--data", data, "--batch-size", "64", "--memory-budget", "3.5MB", "-q"]
    one = one_process_json(*args)
    modes = {row["accumulator"] for row in one["summary"]["plan"]["layers"]}
    assert modes == {"exact", "sketch"} and one["summary"]["passes"] > 1
    assert_same_report(two_ranks_json(tmp_path, *args), one)


def test_a_bad_slice_on_rank_1_ends_both_ranks_with_exit_2(tmp_path):
    case = make_tiny_case(tmp_path, n=200, dyadic=False)
    x = case.x.copy()
    x[170, 2] = np.nan  # batch 5 of 7: in rank 1's share (batches 4..6)
    save_npz(case.data, x=x, y=case.y)
    args = [case.checkpoint, "--data", case.data, "--batch-size", "32", "--output", "out.json"]
    ended, wall = run_ranks([*NRC, "analyze", *map(str, args)], cwd=tmp_path, timeout=120)
    assert [e.returncode for e in ended] == [2, 2], [e.stderr for e in ended]
    lead, other = ended
    assert other.stdout == other.stderr == lead.stdout == ""
    lines = lead.stderr.splitlines()
    assert lines[0] == (
        f"error: rank 1: {case.data}: array 'x' has a non-finite value (nan) at sample 170"
    )
    assert lines[1].startswith("hint: ") and len(lines) == 2
    assert not (tmp_path / "out.json").exists()
    assert wall < 60


def test_more_ranks_than_batches_is_one_usage_error(tmp_path):
    case = make_tiny_case(tmp_path, n=40, dyadic=False)
    args = [case.checkpoint, "--data", case.data, "--batch-size", "64"]
    ended, _ = run_ranks([*NRC, "analyze", *map(str, args)], cwd=tmp_path, timeout=120)
    assert [e.returncode for e in ended] == [2, 2], [e.stderr for e in ended]
    assert ended[1].stderr == "" and ended[0].stdout == ""
    assert ended[0].stderr.splitlines() == [
        "error: rank 0: 40 samples in batches of 64 make 1 batch(es) for 2 ranks; every rank "
        "needs at least one",
        "hint: lower --batch-size, or start fewer ranks",
    ]


def test_a_classifier_under_torchrun_equals_one_process(tmp_path):
    # Both passes (the class moments, then the nearest class means) on two ranks.
    args = [REPO / "sample_checkpoints/classifiers/wd1e-2_seed0.safetensors", "--task"]
    args += ["classification", "--data", REPO / "sample_checkpoints/blobs.npz"]
    args += ["--batch-size", "256", "--device", "cpu"]
    one = one_process_json(*map(str, args))
    done = torchrun(
        [*NRC, "analyze", *map(str, args), "--format", "json"], cwd=tmp_path, timeout=240
    )
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["summary"]["n_samples"] == 1500 and got["summary"]["passes"] == 2
    assert all(row["ncc_accuracy"] is not None for row in got["layers"])
    assert_same_report(got, one)


def test_an_audit_of_classifiers_on_two_ranks_writes_the_table_of_one_audit(tmp_path, monkeypatch):
    # Each rank audits whole checkpoints in one process: no state crosses the ranks.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "zoo").mkdir()
    for name in ("wd0_seed0", "wd1e-2_seed1", "wd5e-3_seed0"):
        source = REPO / "sample_checkpoints/classifiers" / f"{name}.safetensors"
        (tmp_path / "zoo" / f"{name}.safetensors").write_bytes(source.read_bytes())
    args = ["audit", "zoo", "--data", str(REPO / "sample_checkpoints/blobs.npz")]
    args += ["--max-samples", "300", "--task", "classification"]
    one = invoke([*args, "--output", "one.csv"])
    assert one.exit_code == 0, one.stderr
    ended, _ = run_ranks([*NRC, *args, "--output", "two.csv"], cwd=tmp_path, timeout=240)
    assert [e.returncode for e in ended] == [0, 0], [e.stderr for e in ended]
    assert "audit (2 ranks): 3 checkpoint(s): 3 analyzed" in ended[0].stderr
    assert (tmp_path / "two.csv").read_bytes() == (tmp_path / "one.csv").read_bytes()


def test_a_wide_classifier_sketched_in_several_passes_on_two_ranks(tmp_path):
    g = np.random.default_rng(3)
    y = g.integers(0, 4, 400)
    x = (g.standard_normal((4, 16))[y] + g.standard_normal((400, 16))).astype(np.float32)
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(16, 700), nn.ReLU(), nn.Linear(700, 700), nn.ReLU())
    net.append(nn.Linear(700, 4))
    ckpt = save_model(tmp_path / "wide.safetensors", nn.ModuleDict({"net": net}))
    data = save_npz(tmp_path / "wide.npz", x=x, y=y)
    args = [ckpt, "--data", data, "--batch-size", "64", "--memory-budget", "3.5MB", "-q"]
    one = one_process_json(*args)
    modes = {row["accumulator"] for row in one["summary"]["plan"]["layers"]}
    assert modes == {"exact", "sketch"} and one["summary"]["passes"] == 3
    assert one["summary"]["task"] == "classification"
    assert 0 < min(row["ncc_accuracy"] for row in one["layers"]) < 1
    assert all(row["nc1"] is not None for row in one["layers"])  # sketched: from the NCC pass
    assert_same_report(two_ranks_json(tmp_path, *args), one)


# ------------------------------------------------------------------------------------------------
# The page docs/distributed.md ("Beyond one machine"), run as far as this machine allows
# ------------------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]
DOC_PAGE = REPO / "docs" / "distributed.md"


def doc_blocks() -> list[tuple[str, str]]:
    text = DOC_PAGE.read_text(encoding="utf-8")
    assert text.startswith("# Beyond one machine\n")
    return re.findall(r"^```(\w+)\n(.*?)^```", text, flags=re.S | re.M)


@pytest.fixture
def samples(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sample_checkpoints").symlink_to(REPO / "sample_checkpoints")
    for name in ("SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX", "NRC_SHARD_COUNT"):
        monkeypatch.delenv(name, raising=False)
    # torchrun and nrc from this interpreter's environment, on 127.0.0.1, one thread a rank.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return tmp_path, {
        **os.environ,
        "PATH": path,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }


def test_doc_torchrun_commands_run_as_written(samples):
    folder, env = samples
    blocks = doc_blocks()
    commands = [body.strip() for lang, body in blocks if body.startswith("torchrun ")]
    assert len(commands) == 2
    for command in commands:
        done = subprocess.run(
            shlex.split(command), cwd=folder, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, (command, done.stderr)
        said = done.stdout + done.stderr
    (shown,) = [body for lang, body in blocks if lang == "text"]
    assert shown.strip() in said
    report = json.loads((folder / "report.json").read_text())
    assert report["summary"]["world_size"] == 2
    one = one_process_json(
        "sample_checkpoints/mlp_wd.safetensors", "--data", "sample_checkpoints/lowrank.npz"
    )
    one["summary"]["device"] = "cpu"
    assert_same_report(report, one)
    ranked = invoke(["audit", *shlex.split(commands[1])[7:-2], "--output", "one.parquet"])
    assert ranked.exit_code == 0, ranked.stderr
    assert (folder / "ranked.parquet").read_bytes() != b""
    from pandas.testing import assert_frame_equal

    from nrc_cli.audit import read_table

    # Two ranks add their float64 sums in another order than one process: equal to rounding
    # (the contract is 1e-9), not bit for bit.
    assert_frame_equal(
        read_table("ranked.parquet"),
        read_table("one.parquet"),
        check_exact=False,
        rtol=1e-9,
        atol=1e-12,
    )


def test_doc_slurm_script_and_kubernetes_job_give_one_audit(samples):
    blocks = doc_blocks()
    (script,) = [body for lang, body in blocks if body.startswith("#!/bin/bash")]
    low, high = map(int, re.search(r"--array=(\d+)-(\d+)", script).group(1, 2))
    (command,) = [line for line in script.splitlines() if line.startswith("nrc ")]
    for task in range(low, high + 1):  # what sbatch --array=0-3 gives each task
        array = {"SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_MIN": str(low)}
        array["SLURM_ARRAY_TASK_COUNT"] = str(high - low + 1)
        # In this process (a fresh one per task costs seconds): bash's expansion, then nrc.
        argv = shlex.split(command.replace("$SLURM_ARRAY_TASK_ID", str(task)))
        done = invoke(argv[1:], env=array)
        assert done.exit_code == 0, done.stderr
        assert f"audit (shard {task - low + 1}/{high - low + 1}):" in done.stderr
    yaml = pytest.importorskip("yaml")
    (manifest,) = [body for lang, body in blocks if lang == "yaml"]
    job = yaml.safe_load(manifest)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    pod_env = {e["name"]: e["value"] for e in container["env"]}
    for index in range(job["spec"]["completions"]):
        # Kubernetes expands $(NAME) in a command from the container's variables.
        argv = [a.replace("$(JOB_COMPLETION_INDEX)", f"k{index}") for a in container["command"]]
        done = invoke(argv[1:], env={**pod_env, "JOB_COMPLETION_INDEX": str(index)})
        assert done.exit_code == 0, done.stderr
    whole = invoke(["audit", *shlex.split(command)[2:-4], "--output", "one.csv"])
    assert whole.exit_code == 0, whole.stderr
    for prefix in ("", "k"):
        parts = [f"audit.{prefix}{i}.parquet" for i in range(4)]
        merged = invoke(["audit", "merge", f"merged{prefix}.csv", *parts])
        assert merged.exit_code == 0, merged.stderr
        assert Path(f"merged{prefix}.csv").read_bytes() == Path("one.csv").read_bytes()
