"""The package's import map (docs/architecture.md): every import points down the layers, there is no cycle, no
library imports a command-line module, and no module imports another file's private names. Read with ``ast``, so a
lazy import inside a function counts as much as one at the top."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fairseq_quant"
# lower imports nothing above it; packages of one rank do not import each other
RANKS = {"core": 0, "kernels": 1, "plugin": 2, "data": 3, "ptq": 4, "deploy": 4, "cli": 5}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = PACKAGE.parent / name.replace(".", "/")
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def imports(path: Path) -> list[tuple[str, list[str], int]]:
    """``(module imported, names imported from it, line)`` for every import of ``fairseq_quant`` in ``path``."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "fairseq_quant":
                continue
            names = [a.name for a in node.names]
            # `from . import x` where x is a module: the module is what is imported
            modules = [f"{target}.{n}" for n in names if is_module(f"{target}.{n}")]
            found += [(m, [], node.lineno) for m in modules]
            if len(modules) < len(names):
                found.append((target, [n for n in names if f"{target}.{n}" not in modules], node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] == "fairseq_quant"]
    return found


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in RANKS else None


def edges() -> list[tuple[str, str, list[str], int]]:
    return [(m, t, names, line) for m, p in MODULES.items() for t, names, line in imports(p)]


def test_every_package_has_a_rank():
    packages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert packages == set(RANKS), "give a new package its rank in RANKS and in docs/architecture.md"


def test_imports_point_down_the_layers():
    wrong = []
    for src, dst, _, line in edges():
        a, b = layer(src), layer(dst)
        if a is None or b is None or a == b:
            continue  # the package root re-exports; a package imports itself freely
        if RANKS[b] >= RANKS[a]:
            wrong.append(f"{src}:{line} imports {dst} ({a} rank {RANKS[a]} -> {b} rank {RANKS[b]})")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle():
    graph: dict[str, set[str]] = {}
    for src, dst, _, _ in edges():
        while dst not in MODULES and "." in dst:  # a name imported from a package's __init__
            dst = dst.rpartition(".")[0]
        if dst != src and not MODULES[src].name == "__init__.py":
            graph.setdefault(src, set()).add(dst)
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, path: list[str]) -> bool:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle.extend(path[path.index(nxt):] + [node, nxt] if nxt in path else [node, nxt])
                return True
            if state.get(nxt) is None and visit(nxt, path + [node]):
                return True
        state[node] = 2
        return False

    for module in sorted(graph):
        if state.get(module) is None and visit(module, []):
            break
    assert not cycle, " -> ".join(dict.fromkeys(cycle))


def test_no_library_imports_a_command_line_module():
    wrong = [f"{src}:{line} imports {dst}" for src, dst, _, line in edges()
             if layer(dst) == "cli" and layer(src) != "cli"]
    assert not wrong, "\n".join(wrong)


def test_no_module_imports_another_files_private_names():
    wrong = [f"{src}:{line} imports {n} from {dst}" for src, dst, names, line in edges() for n in names
             if n.startswith("_") and not n.startswith("__")]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("bad", ["core_to_plugin", "cycle"])
def test_the_checks_catch_what_they_look_for(bad, tmp_path, monkeypatch):
    """The walker finds an upward import and a cycle when there is one (so the tests above can fail)."""
    root = tmp_path / "fairseq_quant"
    for pkg in RANKS:
        (root / pkg).mkdir(parents=True)
        (root / pkg / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    if bad == "core_to_plugin":
        (root / "core" / "a.py").write_text("from ..plugin import b\n")
        (root / "plugin" / "b.py").write_text("")
    else:
        (root / "plugin" / "a.py").write_text("from .b import x\n")
        (root / "plugin" / "b.py").write_text("from .a import y\nx = 1\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", root)
    monkeypatch.setattr(__import__(__name__), "MODULES", {module_name(p): p for p in root.rglob("*.py")})
    check = test_imports_point_down_the_layers if bad == "core_to_plugin" else test_no_import_cycle
    with pytest.raises(AssertionError):
        check()
