"""No function under metakl/stages longer than ~60 lines without a reason: a line `Why long: ...` in its docstring
(issue 22: long functions doing two jobs are split into named steps; what stays long says why)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 60  # lines from `def` to the last line of the body, docstring included


def long_functions(folder: Path, limit: int = LIMIT, root: Path = ROOT) -> list[tuple[str, int, bool]]:
    """(file:line name, lines, whether its docstring says why it is long) for every function over `limit` lines."""
    found = []
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    doc = ast.get_docstring(node) or ""
                    says_why = any(line.strip().lower().startswith("why long:") for line in doc.splitlines())
                    found.append((f"{path.relative_to(root)}:{node.lineno} {node.name}", lines, says_why))
    return found


def test_long_functions_in_stages_say_why():
    unexplained = [f"{where} ({lines} lines)" for where, lines, why in long_functions(ROOT / "metakl" / "stages")
                   if not why]
    assert not unexplained, ("split these into named steps, or add a 'Why long: ...' line to the docstring: "
                             + "; ".join(unexplained))


def test_the_check_sees_long_functions_and_reasons(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(LIMIT))
    (tmp_path / "m.py").write_text(f'def short():\n    pass\n\n\ndef plain():\n{body}\n\n\n'
                                   f'def explained():\n    """Does one thing.\n\n    Why long: one table.\n    """\n{body}\n')
    found = long_functions(tmp_path, root=tmp_path)
    assert [(w.split()[1], lines, why) for w, lines, why in found] == [("plain", LIMIT + 1, False),
                                                                     ("explained", LIMIT + 5, True)]
