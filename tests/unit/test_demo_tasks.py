"""`make demo TASK=...`: each task's demo overrides are valid params and run in their own working copy."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cvplatform.config import load_params
from cvplatform.demo import TASK_DEMOS, _demo_root, task_overrides
from cvplatform.errors import ConfigError
from tests.fixtures.repo import REPO, copy_repo


@pytest.mark.parametrize("task", sorted(TASK_DEMOS))
def test_each_demo_overrides_the_shipped_params_into_a_valid_project(task):
    params = load_params(REPO / "params.yaml", task_overrides(REPO, task))
    assert params.project.task == task
    if task == "detection":  # the detector has its own registered model and the detection suite
        assert params.registry.model_name != load_params(REPO / "params.yaml").registry.model_name
        assert params.evaluate.suite == "configs/scenarios/detection.yaml"
        assert params.ingest.source == "configs/sources/scenes.yaml"


def test_unknown_task_and_bad_overrides_file_are_named(tmp_path):
    with pytest.raises(ConfigError, match="unknown --task 'segmentation'"):
        task_overrides(REPO, "segmentation")
    (tmp_path / "configs/demo").mkdir(parents=True)
    with pytest.raises(ConfigError, match="detection.yaml is missing"):
        task_overrides(tmp_path, "detection")
    (tmp_path / "configs/demo/detection.yaml").write_text("overrides: {project.task: detection}\n")
    with pytest.raises(ConfigError, match="key.path=value strings"):
        task_overrides(tmp_path, "detection")


def test_detection_demo_runs_in_a_working_copy_and_leaves_params_untouched(tmp_path, monkeypatch):
    monkeypatch.setenv("CVPLATFORM_RUNS_DIR", str(tmp_path / "runs"))
    from cvplatform.tracking import ENV_RUN_OVERRIDES, ENV_STORE_ROOT

    for name in (ENV_STORE_ROOT, ENV_RUN_OVERRIDES):  # the demo activates the copy's env: restored after the test
        monkeypatch.setenv(name, "unset")
    project = copy_repo(tmp_path / "project")
    before = (project / "params.yaml").read_bytes()
    assert _demo_root(project, "classification") == project
    root = _demo_root(project, "detection")
    assert root != project and Path(root, "dvc.yaml").is_file()
    assert (project / "params.yaml").read_bytes() == before
    assert load_params(root / "params.yaml").project.task == "detection"
    assert os.environ[ENV_STORE_ROOT] == str(project)  # the project's MLflow store and registry
