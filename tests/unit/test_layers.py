"""The package's shape, checked over its import graph (docs/architecture.md, docs/development.md).

* a module imports only from the layers above it;
* no import cycle among the modules of ``nrc_cli`` (imports inside functions count too);
* no private name (a leading underscore) imported from another package: a private module or
  name is private to the package that holds it;
* no module over 700 lines.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "nrc_cli"
# The line of docs/architecture.md, top first; helpers shared by every layer sit above it.
LAYERS = [
    ("_version", "_threads", "_memory", "_glob"),
    # The atomic file write raises the errors of errors.py: a helper of every layer below it.
    ("errors", "_atomic"),
    ("results",),
    ("grammar",),
    ("options",),
    ("io",),
    ("model",),
    # Rows of parts (atoms, edges) pooled per sample, and pooled features kept on disk: beside
    # the pooling of capture.py.
    ("capture", "segments", "spill"),
    ("accumulate",),
    # The process group and its collectives need only the accumulators' interface (a state's
    # declared sums and align_); the monitor's passes reduce through it.
    ("distributed",),
    ("linalg",),
    ("metrics",),
    ("planning",),
    ("families",),
    # The state a monitor accumulates through a family, and how it merges, joins and reduces.
    ("passes",),
    ("monitor",),
    ("pipeline",),
    ("gates", "audit"),
    ("report",),
    # The trainer callbacks: the monitor inside Lightning or the Hugging Face Trainer.
    ("integrations",),
    ("cli", "__init__", "__main__"),
]


# Known exceptions, each with its reason; none today.
ALLOWED: set[tuple[str, str]] = set()


def _layer(module: str) -> int:
    top = module.split(".")[0]
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"nrc_cli.{module} is in no layer of the line of docs/architecture.md")


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


# -- the import graph ------------------------------------------------------------------------

MAX_LINES = 700

# Known exceptions, each with its reason; the list only ever shrinks.
LONG_ALLOWED: dict[str, str] = {}


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


@cache
def _graph() -> dict[str, set[str]]:
    """module -> the modules it imports (``from pkg import mod`` names the module itself).

    The implicit import of a parent package's ``__init__`` is not an edge (as in import-linter).
    """
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for target, _ in _imported(module, path):
            graph[module].add(target)
    return graph


def _imported(module: str, path: Path):
    """(target module, imported names) for every ``nrc_cli`` import of one module."""
    modules = _modules()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nrc_cli"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                if sub in modules:
                    yield sub, ()
                else:
                    yield _owner(node.module, modules), (alias.name,)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("nrc_cli"):
                    yield _owner(alias.name, modules), ()


def _owner(name: str, modules) -> str:
    while name not in modules:
        name = name.rpartition(".")[0]
        assert name, "an import of a module that is not in the package"
    return name


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_no_import_cycle():
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v] - {v}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_no_private_name_crosses_a_package():
    """``from a.b._c import x`` or ``from a.b import _x`` only from inside ``a.b``."""
    wrong = []
    for module, path in _modules().items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for target, names in _imported(module, path):
            dotted = target.split(".") + list(names)
            for i, part in enumerate(dotted):
                owner = ".".join(dotted[:i])
                inside = package == owner or package.startswith(owner + ".")
                if _is_private(part) and not inside:
                    wrong.append(f"{module} imports {'.'.join(dotted[: i + 1])}")
    assert not wrong, "\n".join(wrong)


def test_no_module_over_700_lines():
    long = {}
    for module, path in _modules().items():
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_LINES and module not in LONG_ALLOWED:
            long[module] = lines
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_the_exceptions_are_still_needed():
    modules = _modules()
    for module in LONG_ALLOWED:
        assert module in modules, f"{module} is gone: drop it from LONG_ALLOWED"
        lines = len(modules[module].read_text(encoding="utf-8").splitlines())
        assert lines > MAX_LINES, f"{module} has {lines} lines now: drop it from LONG_ALLOWED"
