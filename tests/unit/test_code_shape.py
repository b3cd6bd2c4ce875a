"""No function in cvplatform/ is longer than MAX_LINES: stages read as a sequence of named steps.

A function's length counts every line from its ``def`` to its last statement, the docstring included.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "cvplatform"
MAX_LINES = 100


def long_functions(root: Path = PACKAGE, limit: int = MAX_LINES) -> list[str]:
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    out.append(f"cvplatform/{rel}:{node.lineno} {node.name}() is {n} lines")
    return out


def test_no_function_is_longer_than_the_limit():
    assert long_functions() == [], f"split these into named steps (helpers with docstrings), at most {MAX_LINES} lines"


def test_the_check_finds_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    (tmp_path / "m.py").write_text(f"def short():\n    return 1\n\n\ndef long():\n{body}\n")
    assert long_functions(tmp_path) == [f"cvplatform/m.py:5 long() is {MAX_LINES + 1} lines"]
