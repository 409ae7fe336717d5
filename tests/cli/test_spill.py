"""A classifier's nearest-class-mean pass from spilled features instead of a second forward pass.

The first pass writes the pooled features (float64), labels and predicted classes of every
layer to a nameless temporary file in ``--spill-dir`` when they fit ``--spill-budget``; the
second pass reads them back. Checked here: the report equals the one of a second forward pass
(every number, exactly); the model runs once; a budget too small, a full disk or
``--spill-budget 0`` fall back to running the model again, said in the plan and on stderr; the
file is never left behind (an error, Ctrl-C, SIGTERM, SIGKILL); bad options exit 2.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import error_line, invoke, save_model, small_tmpfs
from torch import nn

from nrc_cli import CollapseMonitor
from nrc_cli.spill import FeatureSpill, spill_bytes

REPO = Path(__file__).resolve().parents[2]

# A conv classifier (float64 pooling over positions) that counts its forward passes.
_NET = """
import os
from pathlib import Path
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, classes=5, delay=0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.fc1 = nn.Linear(8, 12)
        self.fc2 = nn.Linear(12, classes)
        self.delay = delay

    def forward(self, x):
        counter = os.environ.get("NRC_TEST_COUNTER")
        if counter:
            with open(counter, "a") as f:
                f.write("x")
        if self.delay:
            import time
            time.sleep(self.delay)
        h = torch.relu(self.conv2(torch.relu(self.conv1(x)))).mean(dim=(2, 3))
        return self.fc2(torch.relu(self.fc1(h)))


def make(**kwargs):
    torch.manual_seed(0)
    return Net(**kwargs)
"""


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    folder = tmp_path_factory.mktemp("spill")
    (folder / "net.py").write_text(_NET)
    sys.path.insert(0, str(folder))
    try:
        import net  # the factory file, as --arch reads it
    finally:
        sys.path.remove(str(folder))
    model = net.make()
    ckpt = save_model(folder / "net.safetensors", model)
    rng = np.random.default_rng(1)
    n = 300
    y = rng.integers(0, 5, n)
    x = rng.normal(size=(n, 2, 5, 4)).astype(np.float32) + y[:, None, None, None] * 0.3
    data = folder / "data.npz"
    np.savez(data, x=x, y=y)
    return {"ckpt": ckpt, "data": data, "arch": f"{folder / 'net.py'}:make", "folder": folder}


def _analyze(case, tmp_path, *extra, name="count"):
    counter = tmp_path / name
    result = invoke(
        ["analyze", case["ckpt"], "--data", case["data"], "--arch", case["arch"],
         "--task", "classification", "--batch-size", "64", "--format", "json", *extra],
        env={"NRC_TEST_COUNTER": str(counter)},
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    calls = len(counter.read_text()) if counter.exists() else 0
    return json.loads(result.stdout), result.stderr, calls


def _numbers(report: dict) -> tuple:
    return report["layers"], {
        k: v for k, v in report["summary"].items() if k not in ("plan", "notes")
    }


def test_the_spill_gives_the_numbers_of_a_second_forward_pass_running_the_model_once(
    case, tmp_path
):
    spilled, err, calls = _analyze(case, tmp_path, "--spill-dir", tmp_path)
    again, err_again, calls_again = _analyze(case, tmp_path, "--spill-budget", "0", name="c2")
    assert _numbers(spilled) == _numbers(again)  # every number, exactly
    assert all(row["ncc_accuracy"] is not None for row in spilled["layers"])
    assert spilled["summary"]["plan"]["ncc_source"] == "spill"
    assert again["summary"]["plan"]["ncc_source"] == "forward"
    # 300 samples in batches of 64: 5 forward passes (+1 shape probe) once, or twice
    assert calls_again - calls == 5, (calls, calls_again)
    assert err == "" and err_again == ""  # an explicit --spill-budget 0 needs no note
    assert list(tmp_path.glob("*")) == [tmp_path / "count", tmp_path / "c2"]


def test_a_budget_too_small_runs_the_model_again_and_says_so(case, tmp_path):
    got, err, _ = _analyze(case, tmp_path, "--spill-budget", "10KB")
    want, _, _ = _analyze(case, tmp_path, "--spill-budget", "0", name="c2")
    assert _numbers(got) == _numbers(want)
    plan = got["summary"]["plan"]
    need = spill_bytes(300, {"conv1": 2, "conv2": 6, "fc1": 8, "fc2": 12})
    assert plan["ncc_source"] == "forward"
    assert f"take {need / 1e3:.1f} kB, more than the spill budget of 10.0 kB" in plan["ncc_note"]
    assert err == f"{plan['ncc_note']}\n"  # one line, however narrow the terminal


def test_a_full_disk_falls_back_to_a_second_forward_pass(case, tmp_path):
    with small_tmpfs(tmp_path / "small", "16k") as small:
        got, err, calls = _analyze(case, tmp_path, "--spill-dir", small, "--spill-budget", "1GB")
        assert list(small.iterdir()) == []
        assert os.statvfs(small).f_bfree == os.statvfs(small).f_blocks  # nothing held
    want, _, calls_want = _analyze(case, tmp_path, "--spill-budget", "0", name="c2")
    assert _numbers(got) == _numbers(want) and calls == calls_want
    assert got["summary"]["plan"]["ncc_source"] == "forward"
    assert "writing the spill file failed" in got["summary"]["plan"]["ncc_note"]
    assert "writing the spill file failed" in err


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--spill-dir", "{missing}"], "is not a directory"),
        (["--spill-budget", "lots"], "--spill-budget: expected a size like 4GB"),
        (["--spill-budget", "-3MB"], "--spill-budget: expected a size like 4GB"),
    ],
)
def test_bad_spill_options_exit_2(case, tmp_path, args, words):
    args = [a.format(missing=tmp_path / "nowhere") for a in args]
    result = invoke(
        ["analyze", case["ckpt"], "--data", case["data"], "--arch", case["arch"],
         "--task", "classification", *args],
    )  # fmt: skip
    assert words in error_line(result)


def _spill_fd(pid: int, folder: Path) -> bool:
    """True once process ``pid`` holds a file open in ``folder`` (the nameless spill)."""
    fds = Path(f"/proc/{pid}/fd")
    try:
        for fd in fds.iterdir():
            try:
                if os.readlink(fd).startswith(str(folder) + "/"):
                    return True
            except OSError:
                continue
    except OSError:
        return False
    return False


@pytest.mark.parametrize(
    ("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, None), (signal.SIGKILL, -9)]
)
def test_no_spill_file_outlives_an_interrupted_run(case, tmp_path, sig, code):
    if not Path("/proc/self/fd").exists():
        pytest.skip("needs /proc to see the open spill file")
    folder = tmp_path / "spill"
    folder.mkdir()
    out = tmp_path / "report.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "nrc_cli", "analyze", str(case["ckpt"]), "--data",
         str(case["data"]), "--arch", case["arch"], "--arch-kwargs", '{"delay": 0.2}',
         "--task", "classification", "--batch-size", "8", "--spill-dir", str(folder),
         "-o", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not _spill_fd(proc.pid, folder) and proc.poll() is None:
        assert time.monotonic() < deadline, "the spill file never opened"
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    if code is not None:
        assert proc.returncode == code, stderr
    else:
        assert proc.returncode != 0, stderr
    assert "Traceback" not in stderr.decode()
    assert list(folder.iterdir()) == [] and not out.exists()


def test_the_monitor_runs_its_second_pass_from_a_spill(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 4))
    x = torch.randn(200, 6)
    y = torch.randint(0, 4, (200,))
    batches = [(x[i : i + 32], y[i : i + 32]) for i in range(0, 200, 32)]
    two = CollapseMonitor(model, task="classification")
    spilled = CollapseMonitor(model, task="classification")
    with FeatureSpill(str(tmp_path)) as spill:
        spilled.keep_features(spill)
        for monitor in (two, spilled):
            with monitor, torch.no_grad():
                for xb, yb in batches:
                    monitor.update(yb, model(xb))
        with two, torch.no_grad():
            two.begin_second_pass()
            for xb, yb in batches:
                two.update(yb, model(xb))
        spilled.second_pass_from(spill)
    a, b = two.compute().to_dict(), spilled.compute().to_dict()
    assert a["layers"] == b["layers"]
    assert all(row["ncc_accuracy"] is not None for row in b["layers"])


def test_a_spill_reads_back_what_it_wrote_or_stops_at_its_budget(tmp_path):
    z = {"a": torch.randn(5, 3, dtype=torch.float32), "b": torch.randn(5, 2, dtype=torch.float64)}
    y = torch.arange(5, dtype=torch.float64).unsqueeze(1)
    pred = torch.tensor([4, 3, 2, 1, 0])
    with FeatureSpill(str(tmp_path)) as spill:
        spill.write(10, z, y, pred)
        spill.write(15, z, y, None)
        (s1, f1, y1, p1), (s2, f2, y2, p2) = list(spill.read())
        assert (s1, s2) == (10, 15) and p2 is None and torch.equal(p1, pred)
        assert torch.equal(f1["a"], z["a"].double()) and torch.equal(f2["b"], z["b"])
        assert f1["a"].dtype == torch.float64 and torch.equal(y1, y) and torch.equal(y2, y)
        assert spill.bytes == 5 * (8 * 5 + 16) + 5 * (8 * 5 + 8)
    small = FeatureSpill(str(tmp_path), budget=100)
    small.write(0, z, y, pred)
    assert not small.complete and "outgrew the spill budget (100 bytes)" in str(small.reason)
    with pytest.raises(RuntimeError, match="incomplete"):
        next(small.read())
    assert list(tmp_path.iterdir()) == []
