"""Launch a few ranks of a distributed run on this machine: 127.0.0.1 only, one thread each,
every process under a timeout.

Each rank gets the environment torchrun gives it (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT), so the code under test joins the group exactly as under torchrun (``env://``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(rank: int, world: int, port: int, extra: dict[str, str] | None = None) -> dict:
    env = dict(os.environ)
    env.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]),
        COLUMNS="160",
    )
    env.update(extra or {})
    return env


@dataclass
class Ended:
    """How one rank ended."""

    rank: int
    returncode: int
    stdout: str
    stderr: str


def run_ranks(
    argv: list[str],
    *,
    world: int = 2,
    cwd: Path,
    timeout: float = 120,
    env: dict[str, str] | None = None,
    per_rank: dict[int, dict[str, str]] | None = None,
) -> tuple[list[Ended], float]:
    """Run ``python ARGV`` as ``world`` ranks; return how each ended and the wall time.

    Every rank is killed once ``timeout`` seconds have passed (the test then fails).
    """
    port = free_port()
    procs = []
    start = time.monotonic()
    for rank in range(world):
        extra = {**(env or {}), **((per_rank or {}).get(rank, {}))}
        procs.append(
            subprocess.Popen(
                [sys.executable, *argv],
                cwd=cwd,
                env=rank_env(rank, world, port, extra),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    ended = []
    try:
        for rank, proc in enumerate(procs):
            left = max(1.0, timeout - (time.monotonic() - start))
            out, err = proc.communicate(timeout=left)
            ended.append(Ended(rank, proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return ended, time.monotonic() - start


def torchrun(
    argv: list[str], *, nproc: int = 2, cwd: Path, timeout: float = 180, env: dict | None = None
) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --nproc-per-node N … ARGV`` on 127.0.0.1."""
    port = free_port()
    full = dict(os.environ)
    full.update(
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(REPO), full.get("PYTHONPATH", "")]),
        COLUMNS="160",
    )
    full.update(env or {})
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        full.pop(name, None)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(nproc),
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(port),
        *argv,
    ]
    # A session of its own, so that a timeout ends torchrun and its ranks together.
    proc = subprocess.Popen(
        command,
        cwd=cwd,
        env=full,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(command, proc.returncode, out, err)
