"""The layers of docs/architecture.md hold: imports point down, never in a circle, and a module
imports ours inside a function only where it says why (``# deferred: …``)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CORE = {"hap_runtime", "hap"}
DOMAIN = {"samples", "expectations", "models", "registry", "serving"}
# What each package may import besides itself: the layer rule of docs/architecture.md, one line each.
ALLOWED: dict[str, set[str]] = {
    "hap_runtime": set(),  # ships inside every archive: torch and the standard library only
    "hap": {"hap_runtime"},
    "samples": CORE,
    "expectations": CORE,
    "models": CORE,
    "registry": CORE,
    "serving": CORE | {"registry"},  # a deploy moves the registry's production pointer
    "components": CORE | DOMAIN,
    "workflow": CORE | DOMAIN | {"components"},
    "dags": CORE | DOMAIN | {"workflow"},
}
PACKAGES = set(ALLOWED)


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _resolve(name: str) -> str:
    """The module an import names: ``pkg.mod`` when that file exists, else the package."""
    parts = name.split(".")
    while parts:
        base = ROOT.joinpath(*parts)
        if base.with_suffix(".py").exists() or (base / "__init__.py").exists():
            return ".".join(parts)
        parts.pop()
    return name


def _imports() -> list[tuple[str, str, int, bool, Path]]:
    """(importer, imported module, line, inside a function, file) for every import of ours."""
    found = []
    for pkg in sorted(PACKAGES):
        for path in sorted((ROOT / pkg).glob("*.py")):
            tree = ast.parse(path.read_text())
            in_function = {
                id(sub)
                for fn in ast.walk(tree)
                if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
                for sub in ast.walk(fn)
            }
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    if node.module.split(".")[0] not in PACKAGES:
                        continue
                    targets = {_resolve(f"{node.module}.{a.name}") for a in node.names}
                elif isinstance(node, ast.Import):
                    targets = {_resolve(a.name) for a in node.names if a.name.split(".")[0] in PACKAGES}
                else:
                    continue
                for target in targets:
                    found.append((_module_name(path), target, node.lineno, id(node) in in_function, path))
    return found


IMPORTS = _imports()


def test_the_scan_sees_the_code():
    """A guard for the guards below: the scan finds the imports we know are there."""
    edges = {(a, b) for a, b, *_ in IMPORTS}
    assert ("workflow.flow", "registry.store") in edges
    assert ("models.worker", "models.distributed") in edges
    assert ("dags.hap_daily", "workflow.flow") in edges  # inside a task body
    assert len(IMPORTS) > 100


def test_imports_point_down_the_layers():
    upward = [
        f"{path.relative_to(ROOT)}:{line} {src} imports {dst}"
        for src, dst, line, _, path in IMPORTS
        if (a := src.split(".")[0]) != (b := dst.split(".")[0]) and b not in ALLOWED[a]
    ]
    assert not upward, "imports against docs/architecture.md's layers:\n" + "\n".join(upward)


def test_no_import_circles():
    """Strongly connected components of the module graph (function-local imports included)."""
    graph: dict[str, set[str]] = {}
    for src, dst, *_ in IMPORTS:
        if src != dst:
            graph.setdefault(src, set()).add(dst)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


def test_function_local_imports_of_ours_say_why():
    """Only where a heavy dependency must stay out of DAG parsing or a command's start (or KFP runs
    the body alone) — and the code says so in a ``# deferred:`` comment above or beside it."""
    silent = []
    for src, dst, line, local, path in IMPORTS:
        if not local:
            continue
        lines = path.read_text().splitlines()
        i = line - 1
        said = "# deferred:" in lines[i]
        while not said and i > 0:
            i -= 1
            text = lines[i].strip()
            if "# deferred:" in text:
                said = True
            elif text.startswith(("def ", "async def ", "@")):
                break
        if not said:
            silent.append(f"{path.relative_to(ROOT)}:{line} {src} imports {dst}")
    assert not silent, "function-local imports without a `# deferred:` reason:\n" + "\n".join(silent)


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_every_package_is_declared_in_the_architecture_doc(package):
    assert f"`{package}/`" in (ROOT / "docs" / "architecture.md").read_text()
