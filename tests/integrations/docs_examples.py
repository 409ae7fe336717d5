"""Run the complete examples of docs/integrations/*.md as their readers run them: the page's
first Python block saved as ``train.py`` in a fresh folder, started with ``python train.py``."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs" / "integrations"


def example(page: str) -> str:
    """The first ``python`` block of ``docs/integrations/PAGE``."""
    text = (DOCS / page).read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, f"{page} has no python example"
    return blocks[0]


def run_script(
    folder: Path, source: str, *, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``python train.py`` in ``folder``, in its own process group, killed whole on timeout."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.py").write_text(source, encoding="utf-8")
    full = dict(os.environ)
    full.update(
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(REPO), full.get("PYTHONPATH", "")]),
    )
    full.update(env or {})
    proc = subprocess.Popen(
        [sys.executable, "train.py"],
        cwd=folder,
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
        out, err = proc.communicate()
        raise AssertionError(f"train.py ran past {timeout}s:\n{err[-4000:]}") from None
    assert proc.returncode == 0, err[-6000:]
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
