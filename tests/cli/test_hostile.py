"""Hostile input and faults: never a crash, a hang, a replaced device, or a lost table.

One test (or one parametrized family) per cause. Each checks the contract of docs/analyzing.md, "Bad
input and faults": the documented exit code, exactly one ``error:`` line (and at most a
``hint:``), no traceback, no output or temporary file, and the previous output byte-identical.
Real files in ``tmp_path``; the disk-full and read-only cases mount a small tmpfs and run only
as root.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import signal
import stat
import struct
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_case
from helpers import error_line, invoke, save_model, small_tmpfs
from safetensors.torch import save_file
from torch import nn

from nrc_cli.errors import os_error_hint, os_error_line, os_error_reason

PREVIOUS = b'{"previous": "report"}\n'
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def case(tmp_path):
    # The checkpoint says its activation and N is well above every width, so that a run
    # prints no warning and stderr holds nothing but the error under test.
    arch = json.dumps({"type": "mlp", "activation": "relu", "norm": None})
    return make_tiny_case(tmp_path / "in", dims=(4, 6, 2), n=80, metadata={"nrc.arch": arch})


@pytest.fixture
def out_dir(tmp_path):
    """A folder holding the previous report; a failed run must leave exactly that."""
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "report.json").write_bytes(PREVIOUS)
    return folder


def assert_untouched(folder: Path, name: str = "report.json", previous: bytes = PREVIOUS) -> None:
    assert sorted(p.name for p in folder.iterdir()) == [name], "a file was left behind"
    assert (folder / name).read_bytes() == previous, "the previous output changed"


def fails(args, out_dir: Path | None = None, *, env=None) -> str:
    """Run nrc; check exit 2, one error line, no traceback and an untouched ``out_dir``."""
    result = invoke(args, env=env)
    line = error_line(result)
    if out_dir is not None:
        assert_untouched(out_dir)
    return line


@contextlib.contextmanager
def no_hang(seconds: int = 60):
    """Fail (instead of hanging the suite) when the block blocks, e.g. on a FIFO."""

    def expire(signum, frame):
        raise TimeoutError(f"blocked for more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def nrc_subprocess(*args, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "nrc_cli", *map(str, args)],
        capture_output=True,
        env=env,
        timeout=kwargs.pop("timeout", 120),
        **kwargs,
    )


def safetensors_file(path: Path, header: dict, data: bytes = b"", size: int | None = None) -> Path:
    raw = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + data)
        if size is not None:
            f.truncate(8 + len(raw) + size)  # sparse: claims bytes the disk does not hold
    return path


def npy_bytes(header_text: str, data: bytes = b"", version: int = 1) -> bytes:
    """An .npy member with a hand-written header (format 1.0, or 3.0: uint32 length, UTF-8)."""
    body = header_text.encode("utf-8")
    prefix = 10 if version == 1 else 12
    body += b" " * (63 - (prefix + len(body)) % 64) + b"\n"
    length = struct.pack("<H", len(body)) if version == 1 else struct.pack("<I", len(body))
    return b"\x93NUMPY" + bytes([version, 0]) + length + body + data


def npz_of(path: Path, **members: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for key, raw in members.items():
            zf.writestr(f"{key}.npy", raw)
    return path


def npy_of(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------
# 1. --output onto a special file
# ------------------------------------------------------------------------------------------------


def test_output_into_a_pipe_is_written_through_not_replaced(case, tmp_path):
    fifo = tmp_path / "results.pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    with no_hang():
        result = invoke(
            ["analyze", case.checkpoint, "--data", case.data, "-f", "json", "-o", fifo, "-q"]
        )
    reader.join(30)
    assert result.exit_code == 0, result.stderr
    assert stat.S_ISFIFO(os.stat(fifo).st_mode), "the pipe was replaced by a file"
    assert json.loads(got[0])["summary"]["n_samples"] == 80
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_output_onto_a_character_device_leaves_the_device(case, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("creating a device node needs root")
    node = tmp_path / "null"
    try:
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # the same device as /dev/null
        node.write_bytes(b"probe")
    except OSError as exc:  # a nodev mount, or a container without mknod
        pytest.skip(f"no usable device node here: {exc}")
    result = invoke(["analyze", case.checkpoint, "--data", case.data, "-f", "json", "-o", node])
    assert result.exit_code == 0, result.stderr
    assert stat.S_ISCHR(os.stat(node).st_mode), "the device was replaced by a regular file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "null"]


def test_output_through_a_symlink_replaces_the_target_and_keeps_the_link(case, tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    target = results / "run.json"
    target.write_bytes(PREVIOUS)
    link = tmp_path / "latest.json"
    link.symlink_to(target)
    result = invoke(["analyze", case.checkpoint, "--data", case.data, "-o", link, "-q"])
    assert result.exit_code == 0, result.stderr
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert json.loads(target.read_text())["summary"]["n_samples"] == 80
    assert sorted(p.name for p in results.iterdir()) == ["run.json"]


def test_output_to_dev_stdout_goes_to_stdout(case):
    done = nrc_subprocess(
        "analyze", case.checkpoint, "--data", case.data, "-f", "json", "-o", "/dev/stdout", "-q"
    )
    assert done.returncode == 0, done.stderr.decode()
    assert json.loads(done.stdout)["summary"]["n_samples"] == 80
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


# ------------------------------------------------------------------------------------------------
# 2. Write errors: disk full, read-only, permission denied
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "reason", "hint"),
    [
        (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "out/r.json"), "(ENOSPC)", "space"),
        (OSError(errno.EROFS, os.strerror(errno.EROFS), "out/r.json"), "(EROFS)", "read-only"),
        (PermissionError(errno.EACCES, os.strerror(errno.EACCES), "r.json"), "(EACCES)", "may not"),
        (OSError(errno.EDQUOT, os.strerror(errno.EDQUOT)), "(EDQUOT)", "quota"),
    ],
)
def test_os_errors_become_one_line_naming_path_and_reason(exc, reason, hint):
    line = os_error_line(exc)
    assert line.startswith("error: ") and "\n" not in line and len(line) <= 300
    assert line.endswith(reason)
    assert os_error_reason(exc)[0].islower()
    if exc.filename:
        assert f"'{exc.filename}'" in line
    assert hint in os_error_hint(exc)


def test_an_os_error_without_errno_still_reads_well():
    assert os_error_line(OSError("something odd")) == "error: something odd"


def _fill(folder: Path) -> None:
    """Use up the free space of ``folder``'s file system."""
    with contextlib.suppress(OSError), open(folder / "filler", "wb") as f:
        while True:
            f.write(b"\0" * 4096)
            f.flush()


def _commands(case, tmp_path: Path, out: Path) -> dict:
    """Every command that writes a file, writing ``out`` (suffix chosen per command)."""
    report = tmp_path / "run.json"
    invoke(["analyze", case.checkpoint, "--data", case.data, "-o", report, "-q"])
    table = tmp_path / "audit.csv"
    invoke(["audit", case.checkpoint, "--data", case.data, "-o", table, "-q"])
    return {
        "analyze": ["analyze", case.checkpoint, "--data", case.data, "-o", out, "-q"],
        "audit": ["audit", case.checkpoint, "--data", case.data, "-o", out, "-q"],
        "audit merge": ["audit", "merge", out, table],
        "check --junit": [
            "check",
            "--report",
            report,
            "--require",
            "n_samples >= 1",
            "--junit",
            out,
        ],
        "plot": ["plot", report, "-o", out, "-q"],
    }


_SUFFIX = {"analyze": ".json", "audit": ".csv", "audit merge": ".csv", "check --junit": ".xml"}


@pytest.mark.parametrize("command", ["analyze", "audit", "audit merge", "check --junit", "plot"])
def test_disk_full_is_exit_2_naming_the_path_and_keeping_the_old_file(case, tmp_path, command):
    if command == "plot":
        pytest.importorskip("matplotlib")
    with small_tmpfs(tmp_path / "disk", "256k") as disk:
        out = disk / ("result" + _SUFFIX.get(command, ".png"))
        args = _commands(case, tmp_path, out)[command]
        out.write_bytes(PREVIOUS)
        _fill(disk)
        result = invoke(args)
        line = error_line(result) if command != "check --junit" else None
        if command == "check --junit":  # stdout holds the passing check table
            assert result.exit_code == 2 and "Traceback" not in result.stderr
            line = result.stderr.splitlines()[0]
        # (an audit names its progress file, OUT.parts/...: the first file it could not write)
        assert line.startswith(f"error: cannot write '{out}")
        assert "no space left on device (ENOSPC)" in line
        assert out.read_bytes() == PREVIOUS
        left = [p.name for p in disk.rglob("*") if p.name.endswith(".tmp")]
        assert left == [], left


def test_read_only_folder_is_exit_2_and_keeps_the_old_file(case, tmp_path):
    with small_tmpfs(tmp_path / "ro", "1m") as folder:
        (folder / "report.json").write_bytes(PREVIOUS)
        remount = subprocess.run(["mount", "-o", "remount,ro", str(folder)], capture_output=True)
        if remount.returncode != 0:
            pytest.skip("cannot remount read-only")
        line = fails(
            ["analyze", case.checkpoint, "--data", case.data, "-o", folder / "report.json"],
            folder,
        )
        assert f"'{folder / 'report.json'}'" in line
        assert "read-only file system (EROFS)" in line


# ------------------------------------------------------------------------------------------------
# 3. Deeply nested JSON and TOML
# ------------------------------------------------------------------------------------------------

DEEP = "[" * 100_000 + "]" * 100_000


def test_deep_nrc_arch_metadata(case, out_dir):
    state = {k: v.contiguous() for k, v in case.model.state_dict().items()}
    save_file(state, str(case.checkpoint), metadata={"nrc.arch": DEEP})
    line = fails(["analyze", case.checkpoint, "--data", case.data, "-o", out_dir / "report.json"])
    assert "metadata 'nrc.arch' is not valid JSON: nested too deeply" in line
    assert_untouched(out_dir)


def test_deep_shard_index(case, tmp_path, out_dir):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors.index.json").write_text('{"weight_map": ' + DEEP + "}")
    line = fails(["analyze", folder, "--data", case.data, "-o", out_dir / "report.json"], out_dir)
    assert "corrupt shard index" in line and "nested too deeply" in line


def test_deep_arch_kwargs(case, out_dir):
    args = ["--arch", "torch.nn:Identity", "--arch-kwargs", DEEP]
    line = fails(
        ["analyze", case.checkpoint, "--data", case.data, "-o", out_dir / "report.json", *args],
        out_dir,
    )
    assert "--arch-kwargs" in line and "nested too deeply" in line


def test_deep_data_spec(case, tmp_path, out_dir):
    spec = tmp_path / "data.toml"
    spec.write_text("[inputs]\nfile = " + DEEP + "\n")
    line = fails(
        ["analyze", case.checkpoint, "--data", spec, "-o", out_dir / "report.json"], out_dir
    )
    assert "invalid TOML: nested too deeply" in line


@pytest.mark.parametrize("command", ["check --baseline", "check --require-file", "compare"])
def test_deep_reports_and_requirement_files(case, tmp_path, out_dir, command):
    report = tmp_path / "run.json"
    assert invoke(["analyze", case.checkpoint, "--data", case.data, "-o", report]).exit_code == 0
    deep_json, deep_toml = tmp_path / "deep.json", tmp_path / "deep.toml"
    deep_json.write_text(DEEP)
    deep_toml.write_text("require = " + DEEP + "\n")
    out = ["-o", out_dir / "report.json"]
    args = {
        "check --baseline": ["check", "--report", report, "--baseline", deep_json, *out],
        "check --require-file": ["check", "--report", report, "--require-file", deep_toml, *out],
        "compare": ["compare", deep_json, report, *out],
    }[command]
    line = fails(args, out_dir)
    assert "nested too deeply" in line


# ------------------------------------------------------------------------------------------------
# 4. Other exit-3 crashes on bad input
# ------------------------------------------------------------------------------------------------


def test_zero_width_layer(tmp_path, case, out_dir):
    ckpt = tmp_path / "zero.safetensors"
    save_file({"net.0.weight": torch.zeros(0, 4), "net.2.weight": torch.zeros(2, 0)}, str(ckpt))
    result = invoke(["analyze", ckpt, "--data", case.data, "-o", out_dir / "report.json"])
    line = error_line(result)
    assert "'net.0.weight' has shape [0, 4], a layer of width 0" in line
    assert "UserWarning" not in result.stderr
    assert_untouched(out_dir)


def test_zero_width_layer_of_an_arch_model(tmp_path, case, out_dir):
    code = tmp_path / "zero_arch.py"
    code.write_text(
        "from torch import nn\n"
        "def make():\n"
        "    return nn.Sequential(nn.Linear(4, 0), nn.Linear(0, 2))\n"
    )
    save_model(case.checkpoint, nn.Sequential(nn.Linear(4, 0), nn.Linear(0, 2)))
    args = ["--arch", f"{code}:make", "-o", out_dir / "report.json"]
    line = fails(["analyze", case.checkpoint, "--data", case.data, *args], out_dir)
    assert "layer '1' has no input features (width 0)" in line


@pytest.mark.parametrize(
    ("arch", "found"),
    [
        ({"type": "mlp", "activation": ["relu"]}, "unknown activation ['relu']"),
        ({"type": "mlp", "activation": {"relu": 1}}, "unknown activation {'relu': 1}"),
        ({"type": "mlp", "norm": ["layernorm"]}, "unknown norm ['layernorm']"),
        ({"type": ["mlp"]}, "unknown type ['mlp']"),
        ({"type": "mlp", "norm": 3}, "unknown norm 3"),
    ],
)
def test_nrc_arch_fields_of_the_wrong_json_type(case, out_dir, arch, found):
    state = {k: v.contiguous() for k, v in case.model.state_dict().items()}
    save_file(state, str(case.checkpoint), metadata={"nrc.arch": json.dumps(arch)})
    line = fails(
        ["analyze", case.checkpoint, "--data", case.data, "-o", out_dir / "report.json"], out_dir
    )
    assert found in line


def test_tensor_named_with_an_empty_module_name(tmp_path, case, out_dir):
    ckpt = tmp_path / "dots.safetensors"
    save_file({"net..weight": torch.zeros(6, 4), "net.2.weight": torch.zeros(2, 6)}, str(ckpt))
    line = fails(["analyze", ckpt, "--data", case.data, "-o", out_dir / "report.json"], out_dir)
    assert "tensor 'net..weight' is not '<module>.<param>' (a module name is empty)" in line


@pytest.mark.parametrize(
    ("header", "version", "found"),
    [
        ("{'descr': 5, 'fortran_order': False, 'shape': (60, 4), }", 1, "descr"),
        ("{'descr': 5, 'fortran_order': False, 'shape': (60, 4), }", 3, "not iterable"),
        ("{'descr': None, 'fortran_order': False, 'shape': (60, 4), }", 3, "not iterable"),
        ("{'descr': '<f4', 'fortran_order': False, 'shape': (-60, 4), }", 1, "(-60, 4)"),
        ("{'descr': '<f4', 'fortran_order': False, 'shape': (60, -4), }", 3, "shape"),
    ],
)
def test_npy_header_with_a_bad_descr_or_a_negative_shape(case, out_dir, header, version, found):
    data = npz_of(
        case.data, x=npy_bytes(header, bytes(960), version), y=npy_of(case.y.astype(np.float32))
    )
    line = fails(
        ["analyze", case.checkpoint, "--data", data, "-o", out_dir / "report.json"], out_dir
    )
    assert "member 'x' is not a valid .npy array" in line and found in line


def test_negative_shape_in_a_npy_file_of_a_spec(case, tmp_path, out_dir):
    (tmp_path / "x.npy").write_bytes(
        npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (-60, 4), }")
    )
    np.save(tmp_path / "y.npy", case.y)
    spec = tmp_path / "data.toml"
    spec.write_text('[inputs]\nfile = "x.npy"\n[targets]\nfile = "y.npy"\n')
    line = fails(
        ["analyze", case.checkpoint, "--data", spec, "-o", out_dir / "report.json"], out_dir
    )
    assert "(-60, 4)" in line


@pytest.mark.parametrize(
    ("option", "found"),
    [
        (["--memory-budget", "1e400GB"], "--memory-budget: '1e400GB' is too large"),
        (["--memory-budget", "1e30"], "too large"),
        (["--seed", str(2**64)], "--seed: expected an integer from 0 to 2**63 - 1"),
        (["--seed", "-1"], "--seed: expected an integer from 0 to 2**63 - 1"),
        (["--rank", str(2**70)], "--rank: "),
    ],
)
def test_option_values_beyond_range(case, out_dir, option, found):
    line = fails(
        ["analyze", case.checkpoint, "--data", case.data, "-o", out_dir / "report.json", *option],
        out_dir,
    )
    assert found in line


def test_largest_seed_is_accepted_and_written_to_parquet(case, tmp_path):
    out = tmp_path / "r.parquet"
    args = ["--seed", str(2**63 - 1), "--svd", "randomized", "-o", out, "-q"]
    result = invoke(["analyze", case.checkpoint, "--data", case.data, *args])
    assert result.exit_code == 0, result.stderr
    import pandas as pd

    assert int(pd.read_parquet(out)["seed"].iloc[0]) == 2**63 - 1


def test_audit_merge_of_a_parquet_file_that_is_not_an_audit_table(tmp_path):
    import pandas as pd

    other = tmp_path / "other.parquet"
    pd.DataFrame({"a": [1, 2], "b": ["x", "y"]}).to_parquet(other)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "merged.parquet").write_bytes(PREVIOUS)
    line = error_line(invoke(["audit", "merge", out_dir / "merged.parquet", other]))
    assert "not an audit table: it lacks the column(s) 'checkpoint'" in line
    assert_untouched(out_dir, "merged.parquet")


# ------------------------------------------------------------------------------------------------
# 5. Memory bombs from small files
# ------------------------------------------------------------------------------------------------


def test_safetensors_header_with_an_unknown_dtype_is_refused_by_analyze_and_inspect(
    tmp_path, case, out_dir
):
    ckpt = safetensors_file(
        tmp_path / "bomb.safetensors",
        {"net.0.weight": {"dtype": "X9", "shape": [100000, 100000], "data_offsets": [0, 0]}},
    )
    for command in (["analyze", ckpt, "--data", case.data], ["inspect", ckpt]):
        line = fails([*command, "-o", out_dir / "report.json"], out_dir)
        assert "tensor 'net.0.weight': unknown dtype 'X9'" in line


@pytest.mark.parametrize(
    ("entry", "found"),
    [
        ({"dtype": "F32", "shape": [-1, 4], "data_offsets": [0, 0]}, "non-negative integers"),
        ({"dtype": "F32", "shape": [2.5, 4], "data_offsets": [0, 40]}, "non-negative integers"),
        ({"dtype": "F32", "shape": [True, 4], "data_offsets": [0, 16]}, "non-negative integers"),
        ({"dtype": "F32", "shape": [1, 4], "data_offsets": [16, 0]}, "data_offsets [16, 0]"),
        ({"dtype": "F32", "shape": [1, 4], "data_offsets": [0]}, "data_offsets [0]"),
        ({"dtype": "F32", "shape": [1, 4], "data_offsets": [0, 8]}, "need 16 bytes"),
        ({"dtype": "F32", "shape": [1, 4]}, "expected an object with dtype, shape"),
        ([1, 2], "expected an object with dtype, shape"),
    ],
)
def test_every_safetensors_header_entry_is_checked(tmp_path, out_dir, entry, found):
    ckpt = safetensors_file(tmp_path / "bad.safetensors", {"net.0.weight": entry}, bytes(64))
    line = fails(["inspect", ckpt, "-o", out_dir / "report.json"], out_dir)
    assert "corrupt safetensors header: tensor 'net.0.weight'" in line and found in line


_PROBE = """
import json, sys
from typer.testing import CliRunner
from nrc_cli.cli import app

runs = []
for args in json.loads(sys.argv[1]):
    result = CliRunner().invoke(app, args)
    runs.append({"rc": result.exit_code, "out": result.stdout, "err": result.stderr})
# VmHWM: the peak of this process image only (ru_maxrss would also count the pytest process
# this one was forked from, whose size it inherits until exec).
with open("/proc/self/status") as status:
    peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
print(json.dumps({"peak_mb": peak / 1024, "runs": runs}))
"""


def _peak_rss_mb(*commands: list) -> tuple[float, list[dict]]:
    """Run nrc commands in one fresh process; return its peak RSS (MB) and each run's outcome."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps([[str(a) for a in c] for c in commands])],
        capture_output=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr.decode()
    report = json.loads(done.stdout)
    return report["peak_mb"], report["runs"]


def _fortran_bomb(path: Path, n: int, p: int) -> None:
    """An .npz whose x (n, p) float32 is compressed and Fortran-ordered: written as a stream."""
    from numpy.lib import format as npy_format

    header = io.BytesIO()
    npy_format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": True, "shape": (n, p)}
    )
    chunk = bytes(1 << 22)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        with zf.open("x.npy", "w", force_zip64=True) as member:
            member.write(header.getvalue())
            left = n * p * 4
            while left:
                member.write(chunk[: min(left, len(chunk))])
                left -= min(left, len(chunk))
        y = io.BytesIO()
        npy_format.write_array_header_1_0(
            y, {"descr": "<f4", "fortran_order": False, "shape": (n,)}
        )
        with zf.open("y.npy", "w", force_zip64=True) as member:
            member.write(y.getvalue())
            left = n * 4
            while left:
                member.write(chunk[: min(left, len(chunk))])
                left -= min(left, len(chunk))


def test_memory_bombs_stay_under_600_mb(tmp_path):
    if not Path("/proc/self/status").exists():
        pytest.skip("measures the peak RSS through /proc/self/status")
    """A compressed Fortran-ordered member of 500 MB (a ~2 MB file) and a header claiming a
    64 GB tensor (a sparse file) are refused, or read header-only, within 600 MB peak RSS
    (all three runs in one fresh process, so the peak covers each)."""
    model = save_model(tmp_path / "m.safetensors", nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 1)))
    bomb = tmp_path / "bomb.npz"
    _fortran_bomb(bomb, 31_250_000, 4)  # 500 MB of float32 once decompressed
    assert bomb.stat().st_size < 10 * 2**20

    n = 131_072  # 131072 x 131072 float32 = 64 GiB
    end = n * n * 4
    huge = safetensors_file(
        tmp_path / "huge.safetensors",
        {
            "0.weight": {"dtype": "F32", "shape": [n, n], "data_offsets": [0, end]},
            "1.weight": {"dtype": "F32", "shape": [1, n], "data_offsets": [end, end + 4 * n]},
        },
        size=end + 4 * n,
    )
    data = tmp_path / "d.npz"
    np.savez(data, x=np.zeros((8, n), np.float32), y=np.zeros(8, np.float32))
    try:
        peak, (fortran, claim, inspected) = _peak_rss_mb(
            ["analyze", model, "--data", bomb, "-q"],
            ["analyze", huge, "--data", data, "-q"],
            ["inspect", huge, "-f", "json"],
        )
    finally:
        bomb.unlink()
    assert fortran["rc"] == 2, fortran["err"]
    assert "compressed and stored in Fortran (column) order" in fortran["err"]
    assert "500 MB" in fortran["err"]
    assert claim["rc"] == 2, claim["err"]
    assert "the tensors need 68.7 GB once loaded" in claim["err"]
    assert "of memory available" in claim["err"]
    assert inspected["rc"] == 0, inspected["err"]
    assert json.loads(inspected["out"])["n_parameters"] == n * n + n
    assert peak < 600, f"peak RSS {peak:.0f} MB"


def test_small_fortran_ordered_compressed_member_is_still_read(case, tmp_path):
    """Below the limit a Fortran-ordered compressed member is loaded whole: same numbers."""
    fortran = tmp_path / "f.npz"
    np.savez_compressed(fortran, x=np.asfortranarray(case.x), y=case.y)
    with zipfile.ZipFile(fortran) as zf, zf.open("x.npy") as member:
        assert b"'fortran_order': True" in member.read(128)
    ref = invoke(["analyze", case.checkpoint, "--data", case.data, "-f", "json"])
    got = invoke(["analyze", case.checkpoint, "--data", fortran, "-f", "json"])
    assert got.exit_code == 0, got.stderr
    assert json.loads(got.stdout)["layers"] == json.loads(ref.stdout)["layers"]


# ------------------------------------------------------------------------------------------------
# 6. FIFOs and other special files
# ------------------------------------------------------------------------------------------------


def test_fifo_as_checkpoint_data_or_spec_file_is_refused_at_once(case, tmp_path, out_dir):
    fifo_ckpt, fifo_data, fifo_npy = (tmp_path / n for n in ("m.safetensors", "d.npz", "x.npy"))
    for fifo in (fifo_ckpt, fifo_data, fifo_npy):
        os.mkfifo(fifo)
    spec = tmp_path / "data.toml"
    np.save(tmp_path / "y.npy", case.y)
    spec.write_text('[inputs]\nfile = "x.npy"\n[targets]\nfile = "y.npy"\n')
    out = ["-o", out_dir / "report.json"]
    with no_hang():
        for args, where in (
            (["analyze", fifo_ckpt, "--data", case.data, *out], fifo_ckpt),
            (["inspect", fifo_ckpt, *out], fifo_ckpt),
            (["analyze", case.checkpoint, "--data", fifo_data, *out], fifo_data),
            (["analyze", case.checkpoint, "--data", spec, *out], fifo_npy),
            (["check", "--report", fifo_data, "--require", "n_samples >= 1", *out], fifo_data),
        ):
            line = fails(args, out_dir)
            assert str(where) in line and "a named pipe (FIFO)" in line, line


def test_fifo_inside_an_audited_folder_is_skipped_with_a_warning(case, tmp_path):
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    (zoo / "a.safetensors").write_bytes(case.checkpoint.read_bytes())
    os.mkfifo(zoo / "b.safetensors")
    out = tmp_path / "audit.csv"
    with no_hang():
        result = invoke(["audit", zoo, "--data", case.data, "-o", out, "-q"])
    assert result.exit_code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [
        f"warning: skipped {(zoo / 'b.safetensors').as_posix()}: a named pipe (FIFO), "
        "not a checkpoint file"
    ]
    import pandas as pd

    assert set(pd.read_csv(out)["checkpoint"]) == {(zoo / "a.safetensors").as_posix()}


# ------------------------------------------------------------------------------------------------
# 7. Tables lost or doubled by the options
# ------------------------------------------------------------------------------------------------


def test_audit_merge_of_the_same_shard_twice_is_refused(case, tmp_path):
    shard = tmp_path / "shard.csv"
    assert invoke(["audit", case.checkpoint, "--data", case.data, "-o", shard, "-q"]).exit_code == 0
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "merged.csv").write_bytes(PREVIOUS)
    line = error_line(invoke(["audit", "merge", out_dir / "merged.csv", shard, shard]))
    assert f"'{shard}' is given twice" in line
    assert_untouched(out_dir, "merged.csv")


def test_audit_merge_refuses_a_layer_present_twice(case, tmp_path):
    shard = tmp_path / "shard.csv"
    assert invoke(["audit", case.checkpoint, "--data", case.data, "-o", shard, "-q"]).exit_code == 0
    lines = shard.read_text().splitlines()
    doubled = tmp_path / "doubled.csv"
    doubled.write_text("\n".join([*lines, lines[1]]) + "\n")
    result = invoke(["audit", "merge", tmp_path / "merged.csv", doubled])
    line = error_line(result)
    assert "layer 'net.0' is twice in" in line and "duplicate" in line
    assert not (tmp_path / "merged.csv").exists()


def test_audit_errors_equal_to_output_is_refused(case, tmp_path, out_dir):
    table = out_dir / "report.json"
    line = fails(
        [
            "audit",
            case.checkpoint,
            "--data",
            case.data,
            "-o",
            table.with_suffix(".csv"),
            "--errors",
            table.with_suffix(".csv"),
        ],
        out_dir,
    )
    assert "--errors" in line and "is --output of this run" in line


@pytest.mark.parametrize("which", ["checkpoint", "data", "data via a symlink"])
def test_output_equal_to_an_input_is_refused(case, tmp_path, which):
    target = case.checkpoint if which == "checkpoint" else case.data
    if which == "data via a symlink":
        link = tmp_path / "alias.json"
        link.symlink_to(case.data)
        output = link
    else:
        output = target
    before = target.read_bytes()
    result = invoke(["analyze", case.checkpoint, "--data", case.data, "-f", "json", "-o", output])
    line = error_line(result)
    assert "of this run; writing it would destroy that input" in line
    assert target.read_bytes() == before


def test_check_junit_equal_to_the_report_is_refused(case, tmp_path):
    report = tmp_path / "run.json"
    assert invoke(["analyze", case.checkpoint, "--data", case.data, "-o", report]).exit_code == 0
    before = report.read_bytes()
    line = error_line(
        invoke(["check", "--report", report, "--require", "n_samples >= 1", "--junit", report])
    )
    assert "--junit" in line and "is --report of this run" in line
    assert report.read_bytes() == before


# ------------------------------------------------------------------------------------------------
# 8. User code and the streams
# ------------------------------------------------------------------------------------------------

_CHATTY = """
import os, sys
from torch import nn
print("importing the factory module")

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))

    def forward(self, x):
        print("forward")
        os.write(1, b"a write to file descriptor 1\\n")
        return self.net(x)

def make():
    print("building")
    return Net()

def leave():
    sys.exit(0)

def leave_quietly():
    raise SystemExit
"""


def test_printing_arch_code_cannot_corrupt_json_on_stdout(case, tmp_path):
    (tmp_path / "chatty.py").write_text(_CHATTY)
    args = ["--arch", f"{tmp_path / 'chatty.py'}:make", "-f", "json", "-q"]
    done = nrc_subprocess("analyze", case.checkpoint, "--data", case.data, *args)
    assert done.returncode == 0, done.stderr.decode()
    assert json.loads(done.stdout)["summary"]["n_samples"] == 80
    err = done.stderr.decode()
    for said in ("importing the factory module", "building", "forward", "file descriptor 1"):
        assert said in err
    inspected = nrc_subprocess(
        "inspect", case.checkpoint, "--arch", f"{tmp_path / 'chatty.py'}:make", "-f", "json"
    )
    assert inspected.returncode == 0 and json.loads(inspected.stdout)["layers"]


@pytest.mark.parametrize(
    ("name", "code"), [("leave", "sys.exit(0)"), ("leave_quietly", "sys.exit(None)")]
)
def test_factory_calling_sys_exit_is_an_error_of_the_factory(case, tmp_path, out_dir, name, code):
    (tmp_path / "chatty.py").write_text(_CHATTY)
    args = ["--arch", f"{tmp_path / 'chatty.py'}:{name}", "-o", out_dir / "report.json"]
    result = invoke(["analyze", case.checkpoint, "--data", case.data, *args])
    assert result.stdout == ""
    line = next(x for x in result.stderr.splitlines() if x.startswith("error:"))
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert f"the factory '{tmp_path / 'chatty.py'}:{name}' called {code}" in line
    assert_untouched(out_dir)


# ------------------------------------------------------------------------------------------------
# 9. Ctrl-C
# ------------------------------------------------------------------------------------------------


def _interrupt(args, *, ready, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "nrc_cli", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    deadline = time.monotonic() + 120
    while not ready(proc) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)


def _loading_torch(proc) -> bool:
    """True once libtorch is being mapped: nrc is in its start-up imports."""
    try:
        return "libtorch" in Path(f"/proc/{proc.pid}/maps").read_text()
    except OSError:
        return False


def test_ctrl_c_during_start_up(case, tmp_path):
    if not Path("/proc/self/maps").exists():
        pytest.skip("needs /proc to see the start-up")
    out = tmp_path / "report.json"
    done = _interrupt(
        ["analyze", case.checkpoint, "--data", case.data, "-o", out], ready=_loading_torch, out=out
    )
    assert done.returncode == 130, done.stderr
    assert done.stderr.decode() == "error: interrupted\n"
    assert not out.exists() and list(tmp_path.glob(".*.tmp")) == []


_SLOW = """
import time
from pathlib import Path
from torch import nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))

    def forward(self, x):
        Path(__file__).with_suffix(".running").touch()
        time.sleep(0.05)
        return self.net(x)
"""


def test_ctrl_c_during_a_run(case, tmp_path):
    (tmp_path / "slow.py").write_text(_SLOW)
    out = tmp_path / "report.json"
    running = tmp_path / "slow.running"
    args = [
        "analyze",
        case.checkpoint,
        "--data",
        case.data,
        "--arch",
        f"{tmp_path / 'slow.py'}:Net",
    ]
    done = _interrupt(
        [*args, "--batch-size", "1", "-o", out], ready=lambda p: running.exists(), out=out
    )
    assert done.returncode == 130, done.stderr
    assert done.stderr.decode() == "error: interrupted\n"
    assert not out.exists() and list(tmp_path.glob(".*.tmp")) == []


# ------------------------------------------------------------------------------------------------
# 10. Messages that mislead
# ------------------------------------------------------------------------------------------------


def test_torchscript_archive_is_named_as_such(tmp_path, case, out_dir):
    ckpt = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(nn.Linear(4, 2)), str(ckpt))
    result = invoke(["analyze", ckpt, "--data", case.data, "-o", out_dir / "report.json"])
    line = error_line(result)
    assert "TorchScript archive" in line and "corrupt" not in line
    assert "Warning" not in result.stderr
    assert_untouched(out_dir)


class _Boom:
    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.parametrize("protocol", [2, 4])
def test_refused_pickle_says_why_without_torchs_advice(tmp_path, case, out_dir, protocol):
    import pickle

    ckpt = tmp_path / "evil.pt"
    if protocol == 2:
        torch.save({"w": torch.zeros(2), "obj": _Boom()}, str(ckpt))
    else:
        ckpt.write_bytes(pickle.dumps(_Boom(), protocol=protocol))
    result = invoke(["analyze", ckpt, "--data", case.data, "-o", out_dir / "report.json"])
    line = error_line(result)
    assert line.startswith(f"error: {ckpt}: refused: the file holds")
    assert "weights_only" not in result.stderr and "Warning" not in result.stderr
    assert "this must never run" not in result.stdout + result.stderr
    assert len(line) <= 300
    assert_untouched(out_dir)


def test_damaged_parquet_is_not_called_not_a_parquet_file(case, tmp_path, out_dir):
    import pandas as pd

    table = tmp_path / "t.parquet"
    pd.DataFrame({"a": np.arange(60.0), "b": np.arange(60.0)}).to_parquet(table)
    table.write_bytes(table.read_bytes()[:-40] + b"PAR1")  # cut inside the footer
    spec = tmp_path / "data.toml"
    spec.write_text(
        '[inputs]\nfile = "t.parquet"\ncolumns = ["a"]\n[targets]\nfile = "t.parquet"\n'
        'columns = ["b"]\n'
    )
    line = fails(
        ["analyze", case.checkpoint, "--data", spec, "-o", out_dir / "report.json"], out_dir
    )
    assert "the Parquet file is damaged or truncated" in line
    assert "found a Parquet file" not in line


_NAN_HEAD = """
from torch import nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))

    def forward(self, x):
        return self.net(x) * float("nan")
"""


def test_nan_predictions_warn_on_stderr_and_in_json(case, tmp_path):
    (tmp_path / "nan_head.py").write_text(_NAN_HEAD)
    args = ["--arch", f"{tmp_path / 'nan_head.py'}:Net", "-f", "json", "-q"]
    result = invoke(["analyze", case.checkpoint, "--data", case.data, *args])
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)["summary"]
    assert summary["model_mse"] is None
    assert len(summary["warnings"]) == 1 and "model_mse is null" in summary["warnings"][0]
    assert result.stderr == f"warning: {summary['warnings'][0]}\n"


def test_no_warnings_when_nothing_is_wrong(case):
    result = invoke(["analyze", case.checkpoint, "--data", case.data, "-f", "json", "-q"])
    assert json.loads(result.stdout)["summary"]["warnings"] == []
    assert result.stderr == ""


def test_non_finite_weights_are_refused(case, out_dir):
    state = {k: v.clone().contiguous() for k, v in case.model.state_dict().items()}
    name = next(k for k in state if k.endswith("weight"))
    state[name][0, 0] = float("inf")
    save_file(state, str(case.checkpoint))
    line = fails(
        ["analyze", case.checkpoint, "--data", case.data, "-o", out_dir / "report.json"], out_dir
    )
    assert f"tensor '{name}' holds 1 non-finite value(s)" in line
