"""`dvc repro` on a temporary copy of the repo: runs, is a no-op the second time,
re-runs only what a params change touches, and push/pull round-trips the data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.fixtures.repo import copy_repo

REPO = Path(__file__).resolve().parents[2]
DVC = str(Path(sys.executable).parent / "dvc")

# Shrink the real params (lightning-hydra-template style) instead of a parallel config.
SHRINK = {
    ("ingest", "workers"): 1,
    ("train", "progress_bar"): False,  # epochs and the evaluated split are not shrunk: the gates are real
    ("evaluate", "bootstrap_samples"): 200,
    ("export", "parity", "max_images"): 80,
    ("export", "int8", "calibration_images"): 50,
    ("export", "int8", "max_images"): 80,
    ("export", "benchmark", "iterations"): 10,
    ("export", "benchmark", "warmup"): 2,
}


def _shrink(params_file: Path, extra: dict | None = None) -> None:
    data = yaml.safe_load(params_file.read_text())
    for path, value in {**SHRINK, **(extra or {})}.items():
        node = data
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = value
    params_file.write_text(yaml.safe_dump(data, sort_keys=False))


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=900)
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout}\n{res.stderr}"
    return res


@pytest.fixture()
def repo_copy(tmp_path: Path) -> Path:
    """Tracked + untracked (not ignored) files of the working tree, as a fresh git repo."""
    dest = copy_repo(tmp_path / "repo")
    _shrink(dest / "params.yaml")
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "shrink"], dest)
    return dest


def _ran_stages(out: str) -> set[str]:
    return {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage '")}


@pytest.mark.e2e
@pytest.mark.slow
def test_dvc_repro_noop_partial_rerun_and_push_pull(repo_copy: Path):
    first = _run([DVC, "repro"], repo_copy)
    assert _ran_stages(first.stdout) == {"ingest", "validate", "train", "evaluate", "export"}, first.stdout
    summary = json.loads((repo_copy / "artifacts/ingest/summary.json").read_text())
    assert summary["accepted"] == 1797 and summary["seen"] == 1797
    assert (repo_copy / "artifacts/export/model.onnx").is_file()
    # evaluate ran after export, on the exported artifact: the gate report vouches for the bytes that ship
    gate = json.loads((repo_copy / "artifacts/evaluate/gate_report.json").read_text())
    exported = json.loads((repo_copy / "artifacts/export/summary.json").read_text())
    assert gate["model_sha256"] == exported["sha256"] and gate["passed"] is True
    assert first.stdout.index("Running stage 'export'") < first.stdout.index("Running stage 'evaluate'")
    metrics = _run([DVC, "metrics", "show", "--json"], repo_copy).stdout
    assert "val_acc" in metrics and "artifacts/export/metrics.json" in metrics

    second = _run([DVC, "repro"], repo_copy)
    assert _ran_stages(second.stdout) == set(), second.stdout

    # A change to one ingest key re-runs ingest; the manifest is byte-identical, so validate is skipped.
    _shrink(repo_copy / "params.yaml", {("ingest", "workers"): 2})
    third = _run([DVC, "repro"], repo_copy)
    assert _ran_stages(third.stdout) == {"ingest"}, third.stdout

    # push, wipe data + cache, pull: the same bytes come back.
    manifest = repo_copy / "data/processed/manifest.parquet"
    before = manifest.read_bytes()
    n_raw = sum(1 for _ in (repo_copy / "data/raw").rglob("*.png"))
    _run([DVC, "push"], repo_copy)
    shutil.rmtree(repo_copy / "data/raw")
    manifest.unlink()
    shutil.rmtree(repo_copy / ".dvc/cache")
    _run([DVC, "pull"], repo_copy)
    assert manifest.read_bytes() == before
    assert sum(1 for _ in (repo_copy / "data/raw").rglob("*.png")) == n_raw
    status = _run([DVC, "status"], repo_copy)
    assert "up to date" in status.stdout.lower()
