"""Stage code holds no classification maths: softmax, argmax, cross-entropy and class probabilities
(``predict_proba``) live in cvplatform/tasks/.

docs/adr/0010-task-seam.md: a stage asks the project's task (``project.task``) what the model
predicts; it never applies a task's operation itself. This test reads every module of
``cvplatform/`` outside ``cvplatform/tasks/`` as Python (names, attributes, definitions and
imports; comments and docstrings are not code) and fails listing ``file:line`` for each
task-specific token. What has not moved yet is in :data:`ALLOWED`, one entry per file and token
with what must move; an entry that no longer matches anything fails too, so the list only shrinks.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[3] / "cvplatform"
#: Substrings of a name that mark task code (``log_softmax``, ``nanargmax``, ``CrossEntropyLoss`` too);
#: ``predict_proba`` is class probabilities, which only the task's ``decode``/``decode_top`` produce.
TOKENS = ("softmax", "argmax", "cross_entropy", "CrossEntropy", "predict_proba")

#: (path relative to cvplatform/, token) -> what must move behind the seam before the entry goes.
ALLOWED: dict[tuple[str, str], str] = {}


def _name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return node.name
    if isinstance(node, ast.alias):  # ``from numpy import argmax as top`` imports argmax
        return f"{node.name} as {node.asname}" if node.asname else node.name
    if isinstance(node, ast.arg):
        return node.arg
    if isinstance(node, ast.keyword):
        return node.arg
    return None


def find_task_code(source: str, filename: str = "<src>") -> list[tuple[int, str, str]]:
    """``(line, token, name)`` for every name in ``source`` holding one of :data:`TOKENS`."""
    hits = []
    for node in ast.walk(ast.parse(source, filename)):
        name = _name(node)
        if name:
            for token in TOKENS:
                if token in name:
                    hits.append((getattr(node, "lineno", 0), token, name))
    return sorted(set(hits))


def _stage_modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "tasks" not in p.relative_to(PACKAGE).parts[:1])


def test_the_scanner_sees_code_and_ignores_comments_and_docstrings():
    src = (
        '"""softmax and argmax in a docstring."""\n'
        "# torch.softmax in a comment\n"
        "import torch.nn.functional as F\n"
        "from numpy import argmax as top\n"
        "def f(z):\n"
        "    return F.cross_entropy(z, z), z.argmax(1), torch.nn.CrossEntropyLoss(), log_softmax(z)\n"
        "class M:\n"
        "    def predict_proba(self, x):\n"
        "        return self.model.predict_proba(x)\n"
    )
    assert find_task_code(src) == [
        (4, "argmax", "argmax as top"), (6, "CrossEntropy", "CrossEntropyLoss"), (6, "argmax", "argmax"),
        (6, "cross_entropy", "cross_entropy"), (6, "softmax", "log_softmax"),
        (8, "predict_proba", "predict_proba"), (9, "predict_proba", "predict_proba"),
    ]


def test_stage_code_has_no_task_operations():
    seen: set[tuple[str, str]] = set()
    offending = []
    for path in _stage_modules():
        rel = path.relative_to(PACKAGE).as_posix()
        for line, token, name in find_task_code(path.read_text(encoding="utf-8"), str(path)):
            if (rel, token) in ALLOWED:
                seen.add((rel, token))
                continue
            offending.append(f"cvplatform/{rel}:{line}: {name}")
    assert not offending, (
        "task-specific operations in stage code (ask the project's task instead, docs/adr/0010-task-seam.md):\n  "
        + "\n  ".join(offending)
    )
    stale = sorted(set(ALLOWED) - seen)
    assert not stale, f"allow-list entries that match nothing any more (remove them): {stale}"

