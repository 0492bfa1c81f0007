"""No function in src/latlab is longer than 60 lines (from ``def`` to its last line).

A function that long does several things; split it where a name can say what each part does.
Nested functions count toward their parent and are checked themselves too.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
MAX_LINES = 60


def long_functions(source: str, limit: int = MAX_LINES) -> list[tuple[str, int, int]]:
    """(name, first line, length) of each function in ``source`` longer than ``limit``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = node.end_lineno - node.lineno + 1
            if length > limit:
                found.append((node.name, node.lineno, length))
    return found


def test_the_check_measures_def_to_last_line():
    body = "".join(f"    x{i} = {i}\n" for i in range(60))
    assert long_functions(f"def f():\n{body}") == [("f", 1, 61)]
    assert long_functions(f"async def g():\n{body[: -len('    x59 = 59') - 1]}") == []


def test_no_function_in_src_is_over_60_lines():
    offenders = [
        f"{path.relative_to(SRC)}:{line} {name} ({length} lines)"
        for path in sorted(SRC.rglob("*.py"))
        for name, line, length in long_functions(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []
