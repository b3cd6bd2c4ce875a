"""dvc.yaml lists all the code each stage runs: the static import closure of its entry point is covered by its deps.

A stage's code is ``cvplatform/cli.py`` (``cmd: cvplatform <stage>``), the package ``__init__`` files on the
way, and every ``cvplatform`` module its entry module imports, transitively (imports inside functions too,
since the stage calls them; ``TYPE_CHECKING`` blocks excluded; lazy-export maps of ``__init__`` files are strings,
not imports). A module calling ``get_task(`` also runs the built-in task modules (loaded by name). Two edges
of ``cvplatform/config.py`` are not followed, named in ``NOT_RUN_BY_STAGES`` with the reason.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]

STAGES = {
    "ingest": "cvplatform.data.ingest",
    "validate": "cvplatform.data.validate",
    "train": "cvplatform.train",
    "export": "cvplatform.export.run",
    "evaluate": "cvplatform.evaluation.run",
    "champion": "cvplatform.evaluation.champion",
}
#: (module file, function) whose imports no stage runs: `cvplatform config` checks every configuration file,
#: and the reviewer-name check only validates registry.reviewers (it cannot change a stage's outputs).
NOT_RUN_BY_STAGES = {("cvplatform/config.py", "check_params"), ("cvplatform/config.py", "_clean_reviewers")}


def _loaded_by_name(path: Path) -> list[str]:
    """Modules a file loads by name: a module calling ``get_task(`` runs the built-in tasks' modules."""
    from cvplatform.tasks import BUILTIN_TASKS

    if "get_task(" not in path.read_text(encoding="utf-8") or path.parent.name == "tasks":
        return []
    return [target.partition(":")[0] for target in BUILTIN_TASKS.values()]


def _file(module: str) -> Path | None:
    for p in (REPO / (module.replace(".", "/") + ".py"), REPO / module.replace(".", "/") / "__init__.py"):
        if p.is_file():
            return p
    return None


def _imports(path: Path) -> set[str]:
    rel = path.relative_to(REPO).as_posix()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test) or (
                isinstance(node, ast.FunctionDef) and (rel, node.name) in NOT_RUN_BY_STAGES):
            skip.update(id(x) for x in ast.walk(node))
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("cvplatform"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cvplatform") and not node.level:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names if _file(f"{node.module}.{a.name}"))
    return out


def code_of(module: str) -> set[str]:
    """Repository-relative files a stage whose entry point is ``module`` runs (plus cvplatform/cli.py)."""
    seen: set[str] = set()
    stack = ["cvplatform.cli", module]
    files: set[str] = set()
    while stack:
        m = stack.pop()
        f = _file(m)
        if m in seen or f is None:
            continue
        seen.add(m)
        files.add(f.relative_to(REPO).as_posix())
        parts = m.split(".")
        stack.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        stack.extend(_loaded_by_name(f))
        if m != "cvplatform.cli":  # its commands import their stage lazily: only this stage's is followed
            stack.extend(_imports(f))
    return files


def _deps(stage: str) -> list[str]:
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]
    return [d if isinstance(d, str) else next(iter(d)) for d in spec.get("deps", [])]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_stage_depends_on_all_the_code_it_runs(stage):
    deps = _deps(stage)
    missing = sorted(f for f in code_of(STAGES[stage]) if not any(f == d or f.startswith(d.rstrip("/") + "/")
                                                                   for d in deps))
    assert missing == [], f"dvc.yaml stage {stage!r} runs these files but does not depend on them: {missing}"


def test_code_deps_exist_and_are_not_wider_than_needed():
    """Every code dep exists, and a folder is only listed when the stage runs code in it."""
    for stage, module in STAGES.items():
        code = code_of(module)
        for d in _deps(stage):
            if not d.startswith("cvplatform"):
                continue
            assert (REPO / d).exists(), f"dvc.yaml stage {stage!r}: dependency {d} does not exist"
            assert any(f == d or f.startswith(d.rstrip("/") + "/") for f in code), \
                f"dvc.yaml stage {stage!r} depends on {d} but runs no code in it"


def test_evaluate_depends_on_the_champion_reference():
    from cvplatform.evaluation.champion import CHAMPION_REF

    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert CHAMPION_REF in _deps("evaluate")
    outs = [o if isinstance(o, str) else next(iter(o)) for o in spec["champion"]["outs"]]
    assert outs == [CHAMPION_REF]
