"""The layers hold: library code never imports the CLI layer, and the modules of metakl and gdpo import no circle.

Read from the source with `ast` (nothing is imported): every import statement counts, at module level and inside
functions, since a function-level import runs as surely as a top-level one, only later. An import resolves to the
module it names (`from a.b import c` is a.b.c when that is a module, else a.b).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("metakl", "gdpo")

CLI = "metakl.commands"
# Only metakl's command line imports its verbs; everything else (the pipeline, the stages, the model layer, the demo,
# gdpo's training and evaluation) is library code that a verb calls, never the other way round.
CLI_LAYER = ("metakl.commands", "metakl.cli", "metakl.__main__")
# Below the CLI no module imports typer (a user error is metakl.errors.UserError; the CLI turns it into one line).
NO_TYPER = ("metakl.stages", "metakl.pipeline", "metakl.llm", "gdpo")
OWN_CLI = ("gdpo.cli", "gdpo.eval.cli")  # gdpo's own command lines


def module_files() -> dict[str, Path]:
    """Every module of the packages by dotted name (a package by its __init__.py)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = module_files()


def _within(name: str, prefixes: tuple[str, ...] | str) -> bool:
    prefixes = (prefixes,) if isinstance(prefixes, str) else prefixes
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def imports(name: str, path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import in the file, resolved to the modules it names."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: `from .x import y` inside package p is p.x
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.append((node.lineno, full if full in MODULES else base))
    return found


def graph() -> dict[str, set[str]]:
    """module -> the modules of the packages it imports."""
    return {name: {target for _, target in imports(name, path) if target in MODULES and target != name}
            for name, path in MODULES.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One circle per strongly connected group of modules (Tarjan), each as a path back to its start."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:  # recursion depth is bounded by the number of modules (a few hundred)
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return [_circle(edges, set(g)) for g in groups]


def _circle(edges: dict[str, set[str]], group: set[str]) -> list[str]:
    """A shortest path from the group's first module back to itself, inside the group (breadth first)."""
    start = min(group)
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(edges[v] & group):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if w not in came_from:
                    came_from[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no circle through {start} in {sorted(group)}")


def test_the_walk_sees_the_packages_and_their_imports() -> None:
    # The rules below hold only if the walk reads what it claims to: the CLI package, library modules, and both
    # import forms (module level, inside a function, relative).
    assert {"metakl.commands", "metakl.commands._llm_options", "metakl.pipeline", "metakl.stages.score",
            "metakl.llm", "gdpo.eval.data", "gdpo.cli"} <= set(MODULES)
    edges = graph()
    assert "metakl.stages" in edges["metakl.pipeline"]  # a function-level import in load_plan
    assert "metakl.errors" in edges["gdpo.eval.data"]
    assert "metakl.commands._runner" in edges["metakl.commands.filter"]  # the CLI layer's own imports are seen


def test_relative_and_from_imports_resolve_to_modules(tmp_path: Path) -> None:
    source = tmp_path / "x.py"
    source.write_text("from . import errors\nfrom .llm import base\nfrom metakl.stages import score, get_stage\n"
                      "def f():\n    import metakl.commands._runner\n")
    found = [target for _, target in imports("metakl.x", source)]
    assert found == ["metakl.errors", "metakl.llm.base", "metakl.stages.score", "metakl.stages",
                     "metakl.commands._runner"]


def test_cycles_finds_and_prints_a_circle() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"d"}}
    assert cycles(edges) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_library_code_never_imports_the_cli_layer() -> None:
    wrong = sorted({f"{MODULES[name].relative_to(ROOT)}:{line} imports {target}"
                    for name, path in MODULES.items() if not _within(name, CLI_LAYER)
                    for line, target in imports(name, path) if _within(target, CLI)})
    assert not wrong, "library code imports the CLI layer (metakl.commands):\n" + "\n".join(wrong)


def test_no_typer_below_the_cli() -> None:
    wrong = sorted({f"{MODULES[name].relative_to(ROOT)}:{line} imports {target}"
                    for name, path in MODULES.items() if _within(name, NO_TYPER) and name not in OWN_CLI
                    for line, target in imports(name, path) if _within(target, "typer")})
    assert not wrong, "typer imported below the CLI (raise metakl.errors.UserError instead):\n" + "\n".join(wrong)


def test_the_modules_import_no_circle() -> None:
    found = cycles(graph())
    assert not found, "import circles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_gdpo_reads_metakl_ingest_through_its_public_entry_point() -> None:
    # gdpo's evaluation data comes through `ingest_rows`, not ingest's parts assembled by hand (IngestConfig,
    # SourceSpec, load_mapping, ...): those may change with the stage.
    public = {"ingest_rows", "load_preset"}  # the rows; a preset's own description (what --list-presets shows)
    wrong = []
    for name, path in MODULES.items():
        if not _within(name, "gdpo"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and _within(node.module or "", "metakl.stages.ingest"):
                names = {alias.name for alias in node.names}
                if node.module != "metakl.stages.ingest" or names - public:
                    wrong.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {', '.join(sorted(names))} "
                                 f"from {node.module}")
            elif isinstance(node, ast.Import):
                wrong += [f"{path.relative_to(ROOT)}:{node.lineno} imports {alias.name}" for alias in node.names
                          if _within(alias.name, "metakl.stages.ingest")]
    assert not wrong, "gdpo reaches into ingest's internals (use metakl.stages.ingest.ingest_rows):\n" + "\n".join(wrong)
