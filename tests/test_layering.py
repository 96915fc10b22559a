"""The layering of lowbit, read from the imports (DESIGN.md, "Layering").

Every ``import`` in ``src/lowbit`` counts, including imports inside functions (a lazy
import is still an arrow). Rules:

- the core (formats, ranges, packing, qtensor and the leaf plumbing) imports nothing
  above it;
- no library module imports ``lowbit.commands`` (or the old ``experiments``): only
  ``lowbit.cli`` and the command modules themselves do;
- ``lowbit.targets`` never imports ``train``, ``data``, ``models``, ``commands``;
- no cycle between the folders (subpackages) of ``lowbit``.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "lowbit"

CORE = ("formats", "ranges", "packing", "qtensor", "qtensor_storage")
# plumbing every layer may use; suggest ('did you mean'), safetensors_header (the header
# reader) and signatures (one parameter list for wrappers) are leaves too:
# test_leaves_import_nothing_of_lowbit holds that they stay leaves
LEAVES = ("fileio", "progress", "_util", "errors", "suggest", "safetensors_header", "signatures")
COMMAND_PACKAGES = ("commands", "experiments")


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Fully qualified ``lowbit.*`` modules that ``path`` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("lowbit"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("lowbit"):
                continue
            out.add(mod)
            for a in node.names:  # `from . import x` may name a submodule
                if (SRC.parent / (mod.replace(".", "/") + "/" + a.name + ".py")).exists() or (
                    SRC.parent / (mod.replace(".", "/") + "/" + a.name)
                ).is_dir():
                    out.add(f"{mod}.{a.name}")
    return out


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in SRC.rglob("*.py")}


def _top(mod: str) -> str:
    """``lowbit.x.y`` -> ``x`` (the folder or top-level module it lives in)."""
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else ""


def _is_alias(mod: str) -> bool:
    """Deprecated alias modules (kept for old import paths) re-export from anywhere; they are not layers."""
    path = SRC.parent / (mod.replace(".", "/") + ".py")
    if not path.exists():
        path = SRC.parent / mod.replace(".", "/") / "__init__.py"
    return path.exists() and "DeprecationWarning" in path.read_text() and len(path.read_text().splitlines()) < 60


GRAPH = _graph()


def test_the_core_imports_nothing_above_it():
    bad = []
    for mod, deps in GRAPH.items():
        if _top(mod) not in CORE or _is_alias(mod):
            continue
        for d in deps:
            if _top(d) not in CORE + LEAVES and d != "lowbit":
                bad.append(f"{mod} -> {d}")
    assert not bad, "core modules import above the core:\n" + "\n".join(sorted(bad))


def test_leaves_import_nothing_of_lowbit():
    bad = [f"{mod} -> {d}" for mod, deps in GRAPH.items() if _top(mod) in LEAVES for d in deps]
    assert not bad, "leaf plumbing imports lowbit modules:\n" + "\n".join(sorted(bad))


def test_no_library_module_imports_the_commands():
    bad = []
    for mod, deps in GRAPH.items():
        if _top(mod) in COMMAND_PACKAGES or mod in ("lowbit.cli", "lowbit.__main__") or _is_alias(mod):
            continue
        bad += [f"{mod} -> {d}" for d in deps if _top(d) in COMMAND_PACKAGES]
    assert not bad, "library modules import command modules:\n" + "\n".join(sorted(bad))


def test_targets_never_reach_back_into_training_data_or_models():
    bad = []
    for mod, deps in GRAPH.items():
        if _top(mod) != "targets" or _is_alias(mod):
            continue
        bad += [f"{mod} -> {d}" for d in deps if _top(d) in ("train", "training", "data", "models") + COMMAND_PACKAGES]
    assert not bad, "targets import training, data or models:\n" + "\n".join(sorted(bad))


def _folder_edges() -> dict[str, set[str]]:
    folders = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    edges: dict[str, set[str]] = {f: set() for f in folders}
    for mod, deps in GRAPH.items():
        a = _top(mod)
        if a not in folders or _is_alias(mod):
            continue
        for d in deps:
            b = _top(d)
            if b in folders and b != a:
                edges[a].add(b)
    return edges


def test_no_cycle_between_folders():
    edges = _folder_edges()
    cycles = []
    for a, outs in edges.items():
        for b in outs:
            if a < b and a in edges.get(b, set()):
                cycles.append(f"{a} <-> {b}")
    # longer cycles: depth-first search with colours
    state: dict[str, int] = {}

    def visit(n: str, path: list[str]) -> None:
        state[n] = 1
        for m in sorted(edges[n]):
            if state.get(m) == 1:
                cycles.append(" -> ".join(path[path.index(m):] + [m]) if m in path else f"{n} -> {m}")
            elif not state.get(m):
                visit(m, path + [m])
        state[n] = 2

    for n in sorted(edges):
        if not state.get(n):
            visit(n, [n])
    assert not cycles, "cycles between folders:\n" + "\n".join(sorted(set(cycles)))


def test_the_reader_sees_real_imports():
    """The checks above are only as good as the import reader: it must see known arrows."""
    assert "lowbit.api" in GRAPH and any(_top(d) == "nn" for d in GRAPH["lowbit.api"])
    assert any(d.startswith("lowbit.") for d in GRAPH["lowbit.cli"]) or GRAPH["lowbit.cli"] == set()
