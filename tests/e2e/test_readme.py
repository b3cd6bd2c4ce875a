"""The README's code blocks, run as written.

Every ```bash / ```python block of README.md carries a marker on the line before it:
``<!-- readme-test: run -->`` (optionally ``run (exit 0 or 3)``) or
``<!-- readme-test: skip: <why, and which test covers it instead> -->``. A new block without a
marker fails the first test, so the README cannot grow commands nobody runs.

The second test does what a new user does: ``make demo`` (``python -m cvplatform.demo`` on a
copy of the repository, with a ``.venv`` that is this environment), then every ``run`` block
in order, in the project folder, with the venv first on PATH.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.repo import copy_repo, shrink_params

REPO = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"(?:<!-- readme-test: (?P<directive>[^\n]*?) -->\n)?```(?P<lang>bash|python)\n(?P<code>.*?)```",
                   re.S)


@dataclass(frozen=True)
class Block:
    line: int
    lang: str
    code: str
    directive: str | None

    @property
    def runs(self) -> bool:
        return bool(self.directive) and self.directive.startswith("run")

    @property
    def allowed_exit_codes(self) -> set[int]:
        m = re.search(r"\(exit ([0-9 or,]+)\)", self.directive or "")
        return {int(x) for x in re.findall(r"\d+", m.group(1))} if m else {0}


def readme_blocks(text: str) -> list[Block]:
    return [Block(text.count("\n", 0, m.start("code")), m["lang"], m["code"], m["directive"])
            for m in BLOCK.finditer(text)]


def test_every_readme_block_says_whether_it_runs():
    blocks = readme_blocks((REPO / "README.md").read_text(encoding="utf-8"))
    assert len(blocks) >= 10
    unmarked = [b.line for b in blocks if not b.directive]
    assert unmarked == [], f"README.md blocks at lines {unmarked} have no <!-- readme-test: ... --> marker"
    for b in blocks:
        assert b.runs or re.match(r"skip: \S.{20,}", b.directive), (b.line, b.directive)
    assert sum(b.runs for b in blocks) >= 3


@pytest.fixture(scope="module")
def project_after_demo(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A clone after `make demo`: the embedded defaults, this test's own HOME (so its own DVC remote)."""
    base = tmp_path_factory.mktemp("readme")
    root = copy_repo(base / "repo")
    # the real params, shrunk only where the release gates do not look
    shrink_params(root / "params.yaml", {
        "ingest.workers": 1, "train.progress_bar": False, "evaluate.bootstrap_samples": 200,
        "export.parity.max_images": 60, "export.int8.calibration_images": 40, "export.int8.max_images": 60,
        "export.benchmark.iterations": 10, "export.benchmark.warmup": 2,
    })
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "shrink"], cwd=root,
                   check=True)
    (root / ".venv").symlink_to(Path(sys.prefix))  # this environment, where `make setup` would have made it
    env = {**os.environ, "HOME": str(base / "home"), "PATH": f"{root / '.venv' / 'bin'}:{os.environ['PATH']}",
           "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("CVPLATFORM_ADMIN_TOKEN", None)
    demo = subprocess.run([str(root / ".venv" / "bin" / "python"), "-m", "cvplatform.demo"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=1800)
    assert demo.returncode == 0, demo.stdout[-4000:] + demo.stderr[-4000:]
    assert "=== cvplatform demo: results ===" in demo.stdout, demo.stdout[-3000:]
    return root, env


@pytest.mark.e2e
@pytest.mark.slow
def test_the_readme_blocks_run_as_written_after_make_demo(project_after_demo):
    root, env = project_after_demo
    blocks = [b for b in readme_blocks((REPO / "README.md").read_text(encoding="utf-8")) if b.runs]
    for b in blocks:
        if b.lang == "bash":
            cmd = ["bash", "-euo", "pipefail", "-c", b.code]
        else:
            script = root / f"readme_block_{b.line}.py"
            script.write_text(b.code, encoding="utf-8")
            cmd = [str(root / ".venv" / "bin" / "python"), str(script)]
        res = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=1800)
        assert res.returncode in b.allowed_exit_codes, (
            f"README.md block at line {b.line} exited {res.returncode}:\n{b.code}\n--- stdout\n{res.stdout[-4000:]}"
            f"\n--- stderr\n{res.stderr[-4000:]}")
