"""A run's working copy: overrides stay in the copy, the project's files are never edited, runs are isolated."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from cvplatform.errors import ConfigError
from cvplatform.workspace import RunWorkspace, WorkspaceError, prepare_workspace, prune_workspaces, runs_dir
from tests.fixtures.repo import copy_repo


@pytest.fixture()
def project(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("CVPLATFORM_RUNS_DIR", str(tmp_path / "runs"))
    return copy_repo(tmp_path / "project")


def test_overrides_go_to_the_copy_only_and_runs_are_isolated(project):
    before = (project / "params.yaml").read_bytes()
    a = prepare_workspace(project, "manual__a", ["train.epochs=2", "ingest.source=folder:/data/cams"])
    b = prepare_workspace(project, "manual__b", ["train.epochs=9"])
    assert (project / "params.yaml").read_bytes() == before  # byte-identical
    pa, pb = a.params(), b.params()
    assert (pa.train.epochs, pb.train.epochs) == (2, 9)  # neither run sees the other's values
    assert pa.ingest.source == "/data/cams"  # written in the spelling DVC tracks
    assert pb.ingest.source == "configs/sources/digits.yaml"
    assert a.overrides == ("train.epochs=2", "ingest.source=/data/cams")
    assert a.path.parent == runs_dir(project) and a.path != b.path
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True).stdout.strip()
    assert a.revision == head
    # only the overridden lines differ: comments and nulls are kept
    diff = [ln for ln in (a.path / "params.yaml").read_text().splitlines()
            if ln not in before.decode().splitlines()]
    assert len(diff) == 2 and all("# (" in ln for ln in diff)
    # the copy shares the project's DVC cache
    cfg = (a.path / ".dvc" / "config.local").read_text()
    assert str(project / ".dvc" / "cache") in cfg


def test_local_changes_are_carried_and_recorded(project):
    recipe = project / "configs/augment/default.yaml"
    recipe.write_text(recipe.read_text() + "# an uncommitted edit\n")
    (project / "configs/scenarios/extra.yaml").write_text("# untracked, not ignored\n")
    ws = prepare_workspace(project, "scheduled__1")
    assert (ws.path / "configs/augment/default.yaml").read_text().endswith("# an uncommitted edit\n")
    assert (ws.path / "configs/scenarios/extra.yaml").is_file()
    assert {"configs/augment/default.yaml", "configs/scenarios/extra.yaml"} <= set(ws.local_changes)
    record = json.loads((ws.path / ".git" / "cvplatform-run.json").read_text())
    assert record["workspace"]["local_changes"] == list(ws.local_changes)


def test_a_retried_prepare_reuses_the_copy_and_the_ref_roundtrips(project):
    ws = prepare_workspace(project, "manual__r", ["train.epochs=3"])
    marker = ws.path / "artifacts" / "marker"
    marker.parent.mkdir(parents=True)
    marker.write_text("kept")
    again = prepare_workspace(project, "manual__r", ["train.epochs=3"])
    assert again == ws and marker.is_file()
    assert RunWorkspace.from_ref(json.loads(json.dumps(ws.to_ref()))) == ws
    changed = prepare_workspace(project, "manual__r", ["train.epochs=4"])  # same run id, other overrides: remade
    assert changed.params().train.epochs == 4 and not marker.exists()


def test_a_bad_override_makes_nothing_and_names_the_key(project):
    with pytest.raises(ConfigError, match="train.epohcs"):
        prepare_workspace(project, "manual__bad", ["train.epohcs=2"])
    assert not runs_dir(project).exists()


def test_a_project_without_git_is_refused_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("CVPLATFORM_RUNS_DIR", str(tmp_path / "runs"))
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "params.yaml").write_text((Path(__file__).resolve().parents[2] / "params.yaml").read_text())
    with pytest.raises(WorkspaceError, match="git init"):
        prepare_workspace(bare, "manual__x")


def test_old_copies_are_pruned(project):
    made = [prepare_workspace(project, f"run_{i}", keep=100).path for i in range(4)]
    removed = prune_workspaces(project, keep=2)
    assert len(removed) == 2 and all(not p.exists() for p in removed)
    assert sum(p.exists() for p in made) == 2


def test_env_points_the_stages_at_the_projects_store(project, monkeypatch):
    from cvplatform.tracking import tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    ws = prepare_workspace(project, "manual__env", ["train.epochs=2"])
    monkeypatch.setattr("os.environ", {**__import__("os").environ})
    ws.activate()
    assert tracking_uri(ws.root) == f"sqlite:///{project.resolve() / 'mlflow.db'}"
    assert json.loads(ws.env()["CVPLATFORM_RUN_OVERRIDES"]) == ["train.epochs=2"]
