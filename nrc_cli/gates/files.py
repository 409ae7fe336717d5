"""Files in: saved JSON reports and TOML gate files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nrc_cli.errors import ConfigError, DataError
from nrc_cli.gates.diff import (
    DEFAULT_TOLERANCE,
    Tolerances,
    check_tolerance_column,
    tolerance_value,
)
from nrc_cli.grammar import Requirement, parse_requirement
from nrc_cli.io.files import require_regular, toml_module
from nrc_cli.results import JSON_REPORT, Results


def load_report(path: str, *, option: str = "--report", expected: str = JSON_REPORT) -> Results:
    """Read a report written by ``nrc analyze --format json`` (:meth:`Results.from_json`).

    Parameters
    ----------
    path : str
        The JSON file.
    option : str
        How the user named it (``--report``, ``--baseline``, ``A``), for messages.
    expected : str
        What the file should have been, for the message when it is not a report.

    Returns
    -------
    Results

    Raises
    ------
    DataError
        When the file is missing, unreadable, not JSON, or not a report (no ``summary`` object
        or no ``layers`` list of objects with ``layer`` and ``index``).
    """
    where = f"{option} '{path}'"
    make = "write one with: nrc analyze CHECKPOINT --data DATA --format json --output " + str(path)
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{where}: no such file", hint=make)
    if p.is_dir():
        raise DataError(f"{where}: is a folder, expected a JSON report file")
    require_regular(p, where, DataError, expected="a JSON report file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{where}: cannot read it: {exc}") from exc
    return Results.from_json(text, where, hint=make, expected=expected)


@dataclass(frozen=True)
class GateFile:
    """The contents of a ``--require-file`` (TOML).

    Attributes
    ----------
    path : str
    requirements : list of Requirement
    baseline : str or None
        The baseline report, relative paths resolved against the TOML file's folder.
    tolerances : Tolerances or None
        ``[baseline] tolerance`` and ``[baseline.tolerances]``; None when neither is set.
    has_default_tolerance : bool
        Whether ``[baseline] tolerance`` was set.
    """

    path: str
    requirements: list[Requirement]
    baseline: str | None = None
    tolerances: Tolerances | None = None
    has_default_tolerance: bool = False


def load_gate_file(path: str) -> GateFile:
    """Read a gates file::

        require = ["nrc1_noise[-1] <= 0.05", "first_collapsed_index <= 3"]

        [baseline]
        path = "baselines/model.json"   # relative to this file
        tolerance = 0.02

        [baseline.tolerances]
        nrc1_noise = 0.01

    Returns
    -------
    GateFile

    Raises
    ------
    ConfigError
        When the file is missing or not TOML, for unknown keys, wrong types, or a malformed
        requirement (the message names the file and the entry).
    """
    where = f"--require-file '{path}'"
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(
            f"{where}: no such file" if not p.exists() else f"{where}: is not a file",
        )
    tomllib = toml_module(where)
    try:
        doc = tomllib.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot read it: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from exc
    except RecursionError as exc:
        raise ConfigError(f"{where}: not valid TOML: nested too deeply to read") from exc
    _only_keys(doc, {"require", "baseline"}, where)
    require = doc.get("require", [])
    if not isinstance(require, list) or not all(isinstance(r, str) for r in require):
        raise ConfigError(
            f"{where}: 'require' should be a list of strings, found {require!r}",
            hint='e.g. require = ["nrc1_noise[-1] <= 0.05"]',
        )
    reqs = [parse_requirement(r, source=f"{path}: require[{i}]") for i, r in enumerate(require)]
    section = doc.get("baseline")
    if section is None:
        return GateFile(str(path), reqs)
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: 'baseline' should be a table ([baseline]), found {section!r}")
    _only_keys(section, {"path", "tolerance", "tolerances"}, f"{where}: [baseline]")
    base = section.get("path")
    if base is not None:
        if not isinstance(base, str) or not base:
            raise ConfigError(f"{where}: [baseline] path should be a file name, found {base!r}")
        base = str(p.parent / base) if not Path(base).expanduser().is_absolute() else base
    tolerances = None
    has_default = "tolerance" in section
    if has_default or "tolerances" in section:
        default = (
            tolerance_value(section["tolerance"], f"{where}: [baseline] tolerance")
            if has_default
            else DEFAULT_TOLERANCE
        )
        per = section.get("tolerances", {})
        if not isinstance(per, dict):
            raise ConfigError(f"{where}: [baseline.tolerances] should be a table, found {per!r}")
        checked = {}
        for column, value in per.items():
            key = f"{where}: [baseline.tolerances] {column}"
            check_tolerance_column(column, key)
            checked[column] = tolerance_value(value, key)
        tolerances = Tolerances(default, checked)
    return GateFile(str(path), reqs, base, tolerances, has_default)


def _only_keys(table: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(repr(k) for k in unknown)}; expected "
            f"{', '.join(sorted(allowed))}",
        )
