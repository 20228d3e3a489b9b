"""The import graph of model/ and tinystories/, read with ast: one way only, and no cycles."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("model", "tinystories")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The project modules `path` imports, anywhere in the file (inside functions too)."""
    found = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in known}
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")}
    return {name: imported_modules(path, set(files)) - {name} for name, path in files.items()}


def test_the_graph_is_read():
    graph = import_graph()
    assert "tinystories.training" in graph and "model.model" in graph["tinystories.training"]
    assert "tinystories.data.batches" in graph["tinystories.run_state"]


def test_the_network_imports_nothing_from_the_library():
    graph = import_graph()
    for name, imports in graph.items():
        if name.startswith("model"):
            assert not {m for m in imports if m.startswith("tinystories")}, (name, imports)


def test_there_is_no_import_cycle():
    graph = import_graph()
    finished, on_path = set(), []

    def visit(name: str) -> None:
        if name in on_path:
            raise AssertionError("import cycle: " + " -> ".join(on_path[on_path.index(name):] + [name]))
        if name in finished:
            return
        on_path.append(name)
        for imported in sorted(graph[name]):
            # `from package import module` names the package too; importing a package's own module is no cycle
            if not imported or name.startswith(imported + "."):
                continue
            visit(imported)
        on_path.pop()
        finished.add(name)

    for name in sorted(graph):
        visit(name)
