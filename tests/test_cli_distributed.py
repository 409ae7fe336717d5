"""``nrc`` under torchrun: two ranks on the CPU over gloo, on 127.0.0.1, each with one thread
and a timeout, compared with one process."""

from __future__ import annotations

import fcntl
from pathlib import Path

import pytest
from helpers import invoke
from ranks import run_ranks, torchrun
from test_cli_audit import make_data, make_zoo

from nrc_cli.audit import parts_dir

NRC = ["-m", "nrc_cli"]


@pytest.fixture
def zoo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_zoo(tmp_path / "zoo", n=5)
    make_data(tmp_path / "data.npz")
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


def test_audit_under_torchrun_prints_the_table_of_one_audit(zoo):
    one = invoke([*AUDIT, "--format", "csv"])
    assert one.exit_code == 0, one.stderr
    done = torchrun([*NRC, *AUDIT, "--format", "csv", "--quiet"], cwd=zoo, timeout=240)
    assert done.returncode == 0, done.stderr
    assert done.stdout == one.stdout
    assert "zoo/m04.safetensors" in done.stdout


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
