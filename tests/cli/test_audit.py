"""``nrc audit`` and ``nrc audit merge`` through the command line, on real files in ``tmp_path``.

The acceptance tests of the audit issue: the sample zoo plus a corrupt file; a job killed
(SIGTERM, then SIGKILL) and resumed gives the table of an uninterrupted run; shards merged equal
the whole; ``--jobs 2`` equals ``--jobs 1``.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import (
    error_line,
    invoke,
    make_audit_data,
    make_audit_zoo,
)
from pandas.testing import assert_frame_equal

from nrc_cli.audit import parts_dir, read_table

REPO = Path(__file__).resolve().parents[2]
SAMPLE_ZOO = REPO / "sample_checkpoints" / "zoo"
SAMPLE_DATA = REPO / "sample_checkpoints" / "lowrank.npz"


@pytest.fixture
def zoo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_audit_zoo(tmp_path / "zoo")
    make_audit_data(tmp_path / "data.npz")
    return tmp_path


def audit(*args):
    return invoke(["audit", *args])


def summary_line(stderr: str) -> str:
    return next(line for line in stderr.splitlines() if line.startswith("audit"))


# ------------------------------------------------------------------------------------------------
# Acceptance: the sample zoo plus one corrupt file
# ------------------------------------------------------------------------------------------------


def test_sample_zoo_plus_a_corrupt_file(tmp_path):
    zoo = sorted(SAMPLE_ZOO.glob("*.safetensors"))
    assert len(zoo) == 8, "the sample zoo (scripts/make_samples.py) has 8 checkpoints"
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(zoo[0].read_bytes()[:5000])  # a copy cut short
    out, errs = tmp_path / "audit.parquet", tmp_path / "errors.csv"
    args = [SAMPLE_ZOO, corrupt, "--data", SAMPLE_DATA, "--max-samples", "256"]
    args += ["--output", out, "--errors", errs]
    result = audit(*args)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    frame = read_table(out)
    assert sorted(set(frame["checkpoint"])) == [p.as_posix() for p in zoo]
    assert len(frame) == 8 * 6
    assert frame["meta.weight_decay"].dtype == "float64"
    assert sorted(frame["meta.weight_decay"].unique()) == [0.0, 1e-4, 1e-3, 5e-3]
    assert {"meta.epochs", "meta.seed", "meta.lr", "meta.optimizer", "meta.train_mse"} <= set(
        frame.columns
    )
    errors = pd.read_csv(errs)
    assert list(errors.columns) == ["checkpoint", "error_type", "message", "hint"]
    assert list(errors["checkpoint"]) == [corrupt.as_posix()]
    assert errors["error_type"][0] == "CheckpointError"
    assert "truncated" in errors["message"][0]
    assert "8 analyzed, 0 skipped (already done), 1 failed" in summary_line(result.stderr)
    assert f"warning: failed: {corrupt.as_posix()}: CheckpointError" in result.stderr
    # The same audit again, now as a gate: nothing to analyze, the failure still fails it.
    gated = audit(*args, "--fail-on-error")
    assert gated.exit_code == 1
    assert "0 analyzed, 8 skipped (already done), 1 failed" in summary_line(gated.stderr)
    assert f"error: 1 of 9 checkpoint(s) failed\nhint: see {errs}" in gated.stderr
    assert_frame_equal(read_table(out), frame, check_exact=True)


# ------------------------------------------------------------------------------------------------
# Killed and resumed
# ------------------------------------------------------------------------------------------------


def _count_parts(folder: Path) -> int:
    return len(list(folder.glob("*.json"))) if folder.is_dir() else 0


def _start(cwd: Path, args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "CI": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "nrc_cli", "audit", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _interrupt_after(proc: subprocess.Popen, parts: Path, n: int, sig: int, total: int) -> int:
    """Wait until ``n`` parts are committed, send ``sig``; return the parts left behind."""
    deadline = time.monotonic() + 120
    while _count_parts(parts) < n:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the audit made no progress"
        time.sleep(0.005)
    proc.send_signal(sig)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    done = _count_parts(parts)
    assert done < total, "the audit finished before it could be interrupted; make it longer"
    return done


def _check_valid(out: Path, per_checkpoint: int) -> None:
    """The output, if it exists yet, holds whole checkpoints only, each once."""
    if out.exists():
        frame = read_table(out)
        counts = frame.groupby("checkpoint")["index"].count()
        assert (counts == per_checkpoint).all()
        assert not frame[["checkpoint", "index"]].duplicated().any()


def test_a_killed_audit_resumes_to_the_uninterrupted_table(tmp_path, monkeypatch):
    # Enough work that a kill lands mid-way: 16 checkpoints, a few thousand samples each.
    monkeypatch.chdir(tmp_path)
    total = 16
    make_audit_zoo(tmp_path / "zoo", n=total)
    make_audit_data(tmp_path / "data.npz", n=3000)
    args = ["zoo", "--data", "data.npz", "--batch-size", "128", "--output", "out.parquet"]
    parts = parts_dir(tmp_path / "out.parquet")

    first = _start(tmp_path, args)
    done1 = _interrupt_after(first, parts, 2, signal.SIGTERM, total)
    assert first.returncode == 128 + signal.SIGTERM  # a clean exit on SIGTERM ...
    assert not list(parts.glob(".*.tmp")) and not list(tmp_path.glob(".out.parquet.*"))
    _check_valid(tmp_path / "out.parquet", 3)

    second = _start(tmp_path, args)
    done2 = _interrupt_after(second, parts, done1 + 2, signal.SIGKILL, total)
    assert second.returncode == -signal.SIGKILL  # ... and none on SIGKILL
    _check_valid(tmp_path / "out.parquet", 3)

    third = _start(tmp_path, args)
    _, stderr = third.communicate(timeout=300)
    assert third.returncode == 0, stderr
    assert f"{total - done2} analyzed, {done2} skipped (already done), 0 failed" in stderr

    reference = audit("zoo", "--data", "data.npz", "--batch-size", "128", "-o", "ref.parquet")
    assert reference.exit_code == 0, reference.stderr
    resumed, expected = read_table("out.parquet"), read_table("ref.parquet")
    assert not resumed[["checkpoint", "index"]].duplicated().any()
    assert_frame_equal(resumed, expected, check_exact=True)


# A model whose forward pass records the worker's pid, then takes long: interrupted there, an
# audit must stop its workers at once instead of waiting for their checkpoints.
_SLOW = """
import os, time
from pathlib import Path
from torch import nn

class Slow(nn.Sequential):
    def forward(self, x):
        (Path(__file__).parent / "running" / str(os.getpid())).touch()
        time.sleep(60)
        return super().forward(x)

def net():
    return Slow(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))
"""


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie left for an init that never reaps is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except OSError:
        return False


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_audit_stops_its_workers_at_once(zoo, sig):
    if not Path("/proc/self/stat").exists():
        pytest.skip("needs /proc to see the workers")
    (zoo / "slow.py").write_text(_SLOW)
    (zoo / "running").mkdir()
    args = ["zoo", "--data", "data.npz", "--arch", f"{zoo / 'slow.py'}:net", "--jobs", "2"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "nrc_cli", "audit", *args, "--output", "out.parquet"],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's job is
    )
    deadline = time.monotonic() + 120
    while len(list(Path("running").iterdir())) < 2:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the workers never started analyzing"
        time.sleep(0.01)
    workers = [int(p.name) for p in Path("running").iterdir()]
    sent = time.monotonic()
    if sig == signal.SIGINT:
        os.killpg(proc.pid, sig)  # Ctrl-C: the whole foreground process group gets it
    else:
        proc.send_signal(sig)  # a scheduler's stop: the audit's own process
    _, stderr = proc.communicate(timeout=60)
    assert time.monotonic() - sent < 20, "the audit waited for its workers' checkpoints"
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and stderr == "error: interrupted\n"
    else:
        assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in stderr, stderr
    assert not any(_alive(pid) for pid in workers)
    assert not Path("out.parquet").exists()
    assert not list(zoo.glob(".out.parquet.*"))  # no temporary file of the table
    assert _count_parts(Path("out.parquet.parts")) == 0
    assert not list(Path("out.parquet.parts").glob(".*.tmp"))


# ------------------------------------------------------------------------------------------------
# Shards, merge, workers
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["parquet", "csv"])
def test_merged_shards_equal_the_full_audit(zoo, suffix):
    common = ["zoo", "--data", "data.npz", "--max-samples", "64"]
    full = audit(*common, "--output", f"full.{suffix}")
    assert full.exit_code == 0, full.stderr
    for i in (1, 2):
        shard = audit(*common, "--shard", f"{i}/2", "--output", f"s{i}.{suffix}")
        assert shard.exit_code == 0, shard.stderr
        assert f"audit (shard {i}/2): 3 checkpoint(s): 3 analyzed" in shard.stderr
    merged = invoke(["audit", "merge", f"merged.{suffix}", f"s2.{suffix}", f"s1.{suffix}"])
    assert merged.exit_code == 0, merged.stderr
    assert "merged 2 table(s): 6 checkpoint(s), 18 row(s)" in merged.stderr
    assert_frame_equal(read_table(f"merged.{suffix}"), read_table(f"full.{suffix}"))
    if suffix == "csv":
        assert Path("merged.csv").read_bytes() == Path("full.csv").read_bytes()
    s1 = set(read_table(f"s1.{suffix}")["checkpoint"])
    assert s1 == {f"zoo/m{i:02d}.safetensors" for i in (0, 2, 4)}


ARRAY_VARS = (
    "SLURM_ARRAY_TASK_ID",
    "SLURM_ARRAY_TASK_MIN",
    "SLURM_ARRAY_TASK_COUNT",
    "SLURM_ARRAY_TASK_STEP",
    "JOB_COMPLETION_INDEX",
    "NRC_SHARD_COUNT",
)


@pytest.fixture
def no_array_job(monkeypatch):
    for name in ARRAY_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    ("env", "shard", "explicit"),
    [
        # sbatch --array=3-5: task 4 is the second of three
        (
            {"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_MIN": "3"}
            | {"SLURM_ARRAY_TASK_COUNT": "3"},
            "auto",
            "2/3",
        ),
        ({"JOB_COMPLETION_INDEX": "0", "NRC_SHARD_COUNT": "2"}, "auto", "1/2"),
        ({"JOB_COMPLETION_INDEX": "1"}, "auto/2", "2/2"),
    ],
)
def test_shard_auto_equals_the_explicit_shard(zoo, no_array_job, env, shard, explicit):
    common = ["zoo", "--data", "data.npz", "--max-samples", "64"]
    auto = invoke(["audit", *common, "--shard", shard, "--output", "auto.csv"], env=env)
    assert auto.exit_code == 0, auto.stderr
    assert f"audit (shard {explicit}):" in auto.stderr
    manual = audit(*common, "--shard", explicit, "--output", "manual.csv")
    assert manual.exit_code == 0, manual.stderr
    assert Path("auto.csv").read_bytes() == Path("manual.csv").read_bytes()
    assert len(read_table("auto.csv")) > 0


def test_shard_auto_outside_an_array_job_is_a_usage_error(zoo, no_array_job):
    line = error_line(audit("zoo", "--data", "data.npz", "--shard", "auto"))
    assert "--shard auto: this process is not a task of an array job" in line
    assert not Path("zoo.csv").exists()


def test_two_workers_give_the_table_of_one(zoo):
    Path("zoo", "bad.safetensors").write_bytes(b"nonsense")
    common = ["zoo", "--data", "data.npz", "--max-samples", "64"]
    one = audit(*common, "--jobs", "1", "--output", "j1.parquet", "--errors", "e1.csv")
    two = audit(*common, "--jobs", "2", "--output", "j2.parquet", "--errors", "e2.csv")
    assert one.exit_code == 0 and two.exit_code == 0, (one.stderr, two.stderr)
    assert "6 analyzed, 0 skipped (already done), 1 failed" in two.stderr
    assert_frame_equal(read_table("j2.parquet"), read_table("j1.parquet"), check_exact=True)
    assert Path("e2.csv").read_text() == Path("e1.csv").read_text()
    assert list(pd.read_csv("e2.csv")["checkpoint"]) == ["zoo/bad.safetensors"]


# ------------------------------------------------------------------------------------------------
# Streams and formats
# ------------------------------------------------------------------------------------------------


def test_without_output_csv_goes_to_stdout(zoo):
    result = audit(
        "zoo/m0[01].safetensors", "--data", "data.npz", "--max-samples", "32", "--format", "csv"
    )
    assert result.exit_code == 0, result.stderr
    from io import StringIO

    frame = pd.read_csv(StringIO(result.stdout))
    assert list(frame["checkpoint"].unique()) == ["zoo/m00.safetensors", "zoo/m01.safetensors"]
    assert "meta.weight_decay" in frame.columns
    assert not Path("zoo.parts").exists() and not list(Path().glob("*.parts"))


def test_without_output_a_table_per_checkpoint(zoo):
    result = invoke(
        ["audit", "zoo", "--data", "data.npz", "--max-samples", "32"], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.stderr
    assert "Deep NRC audit of zoo/" in result.stdout
    for i in range(6):
        assert f"│ m{i:02d}.safetensors" in result.stdout
    # The sweep's settings are columns; a per-run number such as `run` is not.
    header = next(line for line in result.stdout.splitlines() if "checkpoint" in line)
    assert "seed" in header and "weight_decay" in header and "run" not in header
    assert "6 analyzed" in result.stderr


def test_quiet_keeps_only_the_summary_line(zoo):
    Path("zoo", "bad.safetensors").write_bytes(b"nonsense")
    result = audit("zoo", "--data", "data.npz", "--max-samples", "32", "-o", "o.csv", "-q")
    assert result.exit_code == 0
    assert result.stderr.splitlines() == [summary_line(result.stderr)]


# ------------------------------------------------------------------------------------------------
# Bad usage: exit 2, one error line
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["zoo"], "expected --data DATA.npz"),
        (["zoo", "-d", "data.npz", "--shard", "3/2"], "--shard: expected I/N with 1 <= I <= N"),
        (["zoo", "-d", "data.npz", "-o", "out.json"], "cannot tell the format from the suffix"),
        (["zoo", "-d", "data.npz", "-f", "parquet"], "--format parquet needs --output"),
        (["zoo", "-d", "data.npz", "-o", "out.csv", "--errors", "e.txt"], "expected a .parquet"),
        (["zoo", "-d", "data.npz", "-o", "nowhere/out.csv"], "does not exist"),
        (["zoo", "-d", "missing.npz"], "missing.npz"),
        (["zoo", "-d", "data.npz", "--jobs", "0"], "--jobs: expected an integer >= 1"),
        (["nothing/", "-d", "data.npz"], "found nothing there"),
        (["merge", "out.parquet"], "expected OUT and at least one IN table"),
        (["merge", "out.parquet", "in.csv", "--jobs", "2"], "--jobs apply to an audit"),
        (["merge", "out.parquet", "none.csv"], "'none.csv': table not found"),
    ],
)
def test_usage_errors(zoo, args, message):
    line = error_line(audit(*args))
    assert message in line


def test_merge_refuses_overlapping_shards(zoo):
    assert audit("zoo", "-d", "data.npz", "--max-samples", "32", "-o", "a.csv").exit_code == 0
    shutil.copy("a.csv", "b.csv")
    line = error_line(invoke(["audit", "merge", "m.csv", "a.csv", "b.csv"]))
    assert "checkpoint 'zoo/m00.safetensors' is in both 'a.csv' and 'b.csv'" in line
    assert not Path("m.csv").exists()


# ------------------------------------------------------------------------------------------------
# The command group: run (the default) and merge
# ------------------------------------------------------------------------------------------------


def test_audit_help_lists_run_and_merge_and_says_run_is_the_default():
    result = invoke(["audit", "--help"], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "Usage: nrc audit [OPTIONS] [run|merge] ARGS..." in text
    commands = result.stdout[result.stdout.index("Commands:") :].split()
    assert "run" in commands and "merge" in commands
    assert "'nrc audit PATH... [OPTIONS]' means 'nrc audit run PATH... [OPTIONS]'" in text
    assert "nrc audit run ./merge" in text
    merge = invoke(["audit", "merge", "--help"], env={"COLUMNS": "100"})
    assert merge.exit_code == 0 and "Usage: nrc audit merge [OPTIONS] OUT IN..." in merge.stdout
    assert "--jobs" not in merge.stdout and "--output" not in merge.stdout
    run = invoke(["audit", "run", "--help"], env={"COLUMNS": "100"})
    assert run.exit_code == 0 and "Usage: nrc audit run [OPTIONS] {PATH}..." in run.stdout
    assert "--jobs" in run.stdout and "--shard" in run.stdout


def test_audit_run_is_what_audit_alone_runs(zoo):
    common = ["zoo", "--data", "data.npz", "--max-samples", "32"]
    plain = audit(*common, "--format", "csv")
    named = audit("run", *common, "--format", "csv")
    options_first = audit("--data", "data.npz", "--max-samples", "32", "zoo", "-f", "csv")
    for result in (plain, named, options_first):
        assert result.exit_code == 0, result.stderr
    assert named.stdout == plain.stdout == options_first.stdout
    assert len(plain.stdout.splitlines()) == 1 + 6 * 3
    assert summary_line(named.stderr) == summary_line(plain.stderr)


def test_a_checkpoint_folder_named_like_a_command_is_reached_through_run(zoo):
    shutil.move("zoo", "merge")
    common = ["--data", "data.npz", "--max-samples", "32", "-f", "csv"]
    for args in (["run", "merge", *common], ["./merge", *common]):
        result = audit(*args)
        assert result.exit_code == 0, (args, result.stderr)
        assert "6 analyzed" in summary_line(result.stderr)
    # Taken for the command, 'merge' says what a merge expects.
    line = error_line(audit("merge", *common))
    assert "option(s) --data, --max-samples apply to an audit, not to a merge" in line


def test_audit_merge_names_every_option_of_a_run_it_was_given(zoo):
    line = error_line(audit("merge", "o.csv", "a.csv", "-d", "data.npz", "--fresh", "-j2"))
    assert "option(s) --data, --jobs, --fresh apply to an audit, not to a merge" in line
    line = error_line(audit("merge", "o.csv", "a.csv", "--bogus"))
    assert "No such option: --bogus" in line
    line = error_line(audit("merge"))
    assert "expected OUT and at least one IN table, found 0 path(s)" in line
    line = error_line(audit("merge", "o.csv", "a.csv", "--output", "b.csv"))
    assert "the output is the first argument, found --output too" in line


def test_audit_alone_is_a_run_without_paths():
    result = invoke(["audit"])
    assert error_line(result) == "error: Missing argument 'PATH'."
    assert "nrc audit run --help" in result.stderr


# ------------------------------------------------------------------------------------------------
# The page docs/audits.md ("Auditing a model zoo"), run as written
# ------------------------------------------------------------------------------------------------

DOC_PAGE = REPO / "docs" / "audits.md"


def doc_section() -> str:
    text = DOC_PAGE.read_text(encoding="utf-8")
    assert text.startswith("# Auditing a model zoo\n")
    return text


def doc_blocks() -> list[tuple[str, str]]:
    """Tagged fenced blocks, in order: ``bash`` commands and the ``text`` output after them."""
    return re.findall(r"^```(\w+)\n(.*?)^```", doc_section(), flags=re.S | re.M)


def _squash(text: str) -> list[str]:
    return [" ".join(line.split()) for line in text.splitlines() if line.strip()]


def test_doc_commands_run_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.symlink(REPO / "sample_checkpoints", tmp_path / "sample_checkpoints")
    (tmp_path / "docs" / "img").mkdir(parents=True)
    said = ""  # stdout and stderr of the latest bash block
    checked = 0
    for lang, body in doc_blocks():
        if lang == "text":
            # Output shown after a block of commands is what those commands print.
            for line in _squash(body):
                assert line in _squash(said), line
                checked += 1
            continue
        assert lang == "bash"
        said = ""
        for line in body.splitlines():
            if line.startswith("nrc "):
                result = invoke(shlex.split(line)[1:])
                assert result.exit_code == 0, (line, result.stderr)
                said += result.stdout + result.stderr
            elif line.startswith("python "):
                argv = [sys.executable, *shlex.split(line)[1:]]
                done = subprocess.run(argv, capture_output=True, text=True, check=True)
                said += done.stdout + done.stderr
            elif line.strip():
                subprocess.run(["bash", "-c", line], check=True)
    assert checked >= 8
    # The pictures in docs/img/ are what the documented commands draw.
    from matplotlib.image import imread

    for name in ("zoo_alignment.png", "profile_wd.png"):
        drawn, shipped = imread(tmp_path / "docs" / "img" / name), imread(REPO / "docs/img" / name)
        assert drawn.shape == shipped.shape
        assert np.abs(drawn - shipped).mean() < 0.01
    assert_frame_equal(read_table("merged.parquet"), read_table("zoo.parquet"), check_exact=True)
