"""The CLI's JSON reports on the samples and the reference cases, against the golden files.

``scripts/golden.py --check`` compares them byte for byte (run it after a refactor); here the
comparison allows the last bits of a float to differ, as another BLAS build may round them, and
is exact for everything else (keys, order, strings, integers, nulls).
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
from helpers import invoke

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("golden", ROOT / "scripts" / "golden.py")
golden = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(golden)


# The model's float32 prediction is rounded differently by other CPU kernels (AVX2 and AVX-512
# GEMMs add in another order): the numbers made from it alone carry float32's last bits.
_OUTPUT_FIELDS = ("model_mse", "nrc4_ratio")
_FROM_FLOAT32_OUTPUT = 1e-6


def _same(got, want, where: str) -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict) and list(got) == list(want), where
        for key in want:
            _same(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _same(g, w, f"{where}[{i}]")
    elif isinstance(want, float) and not isinstance(want, bool):
        assert isinstance(got, float), where
        rel = _FROM_FLOAT32_OUTPUT if where.rsplit(".", 1)[-1] in _OUTPUT_FIELDS else 1e-9
        assert math.isclose(got, want, rel_tol=rel, abs_tol=1e-12), (where, got, want)
    else:
        assert got == want and type(got) is type(want), (where, got, want)


@pytest.mark.parametrize("name", sorted(golden.CASES))
def test_cli_json_matches_golden(name: str, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    args = [*golden.CASES[name], "--format", "json", "--device", "cpu", "--quiet"]
    result = invoke(["analyze", *args])
    assert result.exit_code == 0, result.output
    want = json.loads((ROOT / "tests" / "golden" / f"{name}.json").read_text())
    _same(json.loads(result.stdout), want, name)
