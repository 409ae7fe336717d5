"""The package's layers: a module imports only from the layers above it (README, STYLE)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "nrc_cli"
# The README's line, top first; helpers shared by every layer sit above it.
LAYERS = [
    ("_version", "_threads", "_memory"),
    ("errors",),
    ("options",),
    ("results",),
    ("io",),
    ("model",),
    ("capture",),
    ("accumulate",),
    ("linalg",),
    ("metrics",),
    ("planning",),
    ("families",),
    ("monitor",),
    ("distributed",),
    ("pipeline",),
    ("gates", "audit"),
    ("report",),
    ("cli", "__init__", "__main__"),
]


# Known exceptions, each with its reason. The audit writes its tables atomically with the
# report layer's writers (atomic_write, csv_text, parquet_bytes); they are plain serialisation
# and would move down to io/ with the next change to either module.
ALLOWED = {("audit", "report.writers")}


def _layer(module: str) -> int:
    top = module.split(".")[0]
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"nrc_cli.{module} is in no layer of the README's line")


def _imports(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nrc_cli"):
            yield node.module
            for alias in node.names:  # from nrc_cli import audit
                if node.module == "nrc_cli":
                    yield f"nrc_cli.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("nrc_cli"):
                    yield alias.name


def test_every_import_goes_up_the_layers():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = path.relative_to(PACKAGE).with_suffix("").as_posix().replace("/", ".")
        mine = _layer(own)
        for target in _imports(path):
            name = target.removeprefix("nrc_cli").lstrip(".")
            if not name or name in ("__init__",):
                continue
            if _layer(name) > mine and (own, name) not in ALLOWED:
                wrong.append(f"nrc_cli.{own} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_only_the_command_line_imports_typer():
    users = [
        p.relative_to(PACKAGE).as_posix()
        for p in PACKAGE.rglob("*.py")
        if any(
            (
                isinstance(n, (ast.Import, ast.ImportFrom))
                and any(a.name.split(".")[0] == "typer" for a in n.names)
            )
            or (isinstance(n, ast.ImportFrom) and (n.module or "").split(".")[0] == "typer")
            for n in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
        )
    ]
    assert users and all(u.startswith("cli/") for u in users), users
