"""The integrations are extras: ``import nrc_cli`` (and its command line) never imports
Lightning or transformers."""

from __future__ import annotations

import subprocess
import sys

from ranks import REPO


def test_import_nrc_cli_imports_no_framework():
    code = (
        "import sys, nrc_cli\n"
        "nrc_cli.CollapseMonitor, nrc_cli.History, nrc_cli.Results\n"
        "import nrc_cli.cli, nrc_cli.integrations, nrc_cli.segments\n"
        "heavy = sorted(m for m in ('lightning', 'pytorch_lightning', 'transformers',"
        " 'accelerate', 'torch_geometric') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""
