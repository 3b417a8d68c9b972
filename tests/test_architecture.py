"""The layout keeps its promises: no import cycles, the engine never imports its clients, and only the loop
builds a selection context."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "cincer"
CLIENTS = ("cincer.experiments", "cincer.app", "cincer.commands", "cincer.cli")


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every cincer module ``path`` imports (at any depth of the file, lazy imports included)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("cincer")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            if base.startswith("cincer"):
                found.add(base)
                found |= {f"{base}.{a.name}" for a in node.names}
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in SRC.rglob("*.py")}
    packages = {m for m, p in modules.items() if p.name == "__init__.py"}
    # edges between modules; a package's __init__ only re-exports, so edges into it are not followed
    return {m: {i for i in imports(p) if i in modules and i not in packages and i != m}
            for m, p in modules.items() if m not in packages}


def test_no_import_cycles():
    edges, state, cycles = graph(), {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_the_engine_never_imports_its_clients():
    for module, deps in graph().items():
        if not module.startswith(CLIENTS):
            assert not {d for d in deps if d.startswith(CLIENTS)}, module


def test_only_the_loop_builds_a_selection_context():
    builders = sorted(module_name(p) for p in SRC.rglob("*.py") if "SelectionContext(" in p.read_text())
    assert builders == ["cincer.loop"]
