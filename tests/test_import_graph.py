"""The import graph of model/ and tinystories/, read with ast: down the layers only, and no cycles."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("model", "tinystories")
# Bottom to top (docs/architecture.md): a module may import from its own layer and the layers below it only.
LAYERS = ("model", "shared", "tinystories.data", "tinystories.training", "tinystories.generation",
          "tinystories.serving", "tinystories.interop", "tinystories.evaluation", "tinystories.bench")


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
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in known}
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")}
    return {name: imported_modules(path, set(files)) - {name} for name, path in files.items()}


def layer_of(module: str) -> int:
    """The index in LAYERS of a module's layer; modules directly in tinystories/ are the shared helpers."""
    for index, layer in reversed(list(enumerate(LAYERS))):
        if module == layer or module.startswith(layer + "."):
            return index
    assert module.startswith("tinystories") and module.count(".") <= 1, f"{module} is in no layer"
    return LAYERS.index("shared")


def test_the_graph_is_read():
    graph = import_graph()
    assert "tinystories.training.trainer" in graph and "model.model" in graph["tinystories.training.trainer"]
    assert "tinystories.data.batches" in graph["tinystories.training.run_state"]
    assert "tinystories.generation.engine" in graph["tinystories.serving.service"]


def test_every_library_folder_is_a_layer():
    folders = {path.parent.name for path in (ROOT / "tinystories").glob("*/__init__.py")}
    assert {f"tinystories.{folder}" for folder in folders} == set(LAYERS[2:])


def test_imports_run_down_the_layers():
    upward = [(name, imported) for name, imports in import_graph().items() for imported in imports
              if imported and layer_of(imported) > layer_of(name)]
    assert not upward, "imports against the layer order (docs/architecture.md): " + ", ".join(
        f"{name} -> {imported}" for name, imported in upward)


def test_the_layer_check_sees_an_upward_import():
    assert layer_of("tinystories.serving.app") > layer_of("tinystories.generation.engine")
    assert layer_of("tinystories.errors") == 1 and layer_of("tinystories") == 1 and layer_of("model.loss") == 0
    assert layer_of("tinystories.bench.run") == len(LAYERS) - 1


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
