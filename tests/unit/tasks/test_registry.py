"""The task registry: `project.task` selects a task; an unknown name is a configuration error (exit 2)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cvplatform.config import load_params
from cvplatform.errors import ConfigError
from cvplatform.tasks import (
    UnknownTaskError,
    get_task,
    known_tasks,
    register_task,
    unregister_task,
)
from cvplatform.tasks.base import MonitorSpec
from cvplatform.tasks.classification import ClassificationTask

REPO = Path(__file__).resolve().parents[3]


def test_classification_is_the_default_and_is_listed():
    assert isinstance(get_task(None), ClassificationTask) and get_task("classification") is get_task(None)
    assert "classification" in known_tasks()


def test_an_unknown_task_names_the_key_and_lists_the_known_ones():
    with pytest.raises(UnknownTaskError) as err:
        get_task("segmentaton")
    msg = str(err.value)
    assert "project.task" in msg and "'segmentaton'" in msg and "classification" in msg
    assert err.value.exit_code == 2


def test_params_reject_an_unknown_task_with_exit_2(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("project:\n  task: detection-v9\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_params(f)
    assert "project.task" in str(err.value) and "detection-v9" in str(err.value) and "classification" in str(err.value)


def test_cli_config_exits_2_on_an_unknown_task(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text((REPO / "params.yaml").read_text(encoding="utf-8").replace(
        "task: classification", "task: nosuchtask"), encoding="utf-8")
    res = subprocess.run([sys.executable, "-m", "cvplatform", "config", "--params", str(f)], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "nosuchtask" in res.stderr and "classification" in res.stderr


def test_train_monitor_must_be_a_metric_of_the_task(make_params):
    with pytest.raises(ConfigError) as err:
        make_params("train.monitor=val_mae", "train.mode=min")
    assert "val_mae" in str(err.value) and "val_acc" in str(err.value)
    with pytest.raises(ConfigError, match="minimised"):
        make_params("train.monitor=val_loss", "train.mode=max")
    assert make_params("train.monitor=val_loss", "train.mode=min").train.monitor == "val_loss"


def test_a_registered_task_is_selectable_and_its_monitor_checked(make_params):
    class Fake(ClassificationTask):
        name = "fake"

        @property
        def monitor(self) -> MonitorSpec:
            return MonitorSpec({"val_mae": "min"}, default="val_mae")

    register_task("fake", Fake)
    try:
        assert "fake" in known_tasks()
        p = make_params("project.task=fake", "train.monitor=val_mae", "train.mode=min")
        assert p.project.task == "fake" and isinstance(get_task("fake"), Fake)
    finally:
        unregister_task("fake")
    assert "fake" not in known_tasks()


def test_classification_decodes_agrees_and_scores():
    task = get_task("classification")
    logits = np.array([[2.0, 0.0], [0.0, 3.0], [1.0, 0.5]], np.float32)
    preds = task.decode({"logits": logits}, ["cat", "dog"])
    assert [p["class"] for p in preds] == ["cat", "dog", "cat"]
    assert abs(sum(preds[0]["probs"]) - 1.0) < 1e-9 and preds[1]["confidence"] > 0.9
    body = task.response(preds[0], ["cat", "dog"])
    assert body["class"] == "cat" and set(body["probabilities"]) == {"cat", "dog"}
    flipped = logits.copy()
    flipped[2] = [0.0, 1.0]
    a = task.agreement({"logits": logits}, {"logits": flipped})
    assert (a.n, a.agree, a.detail["disagree_rows"]) == (3, 2, [2])
    scores = task.score({"logits": logits}, [0, 1, 1], ["cat", "dog"], n_bootstrap=20)
    assert scores["accuracy"] == pytest.approx(2 / 3) and scores["n"] == 3
    with pytest.raises(Exception, match="do not fit 3 class names"):
        task.decode({"logits": logits}, ["a", "b", "c"])
    assert [m.gate_key for m in task.metrics] == ["min_accuracy", "min_macro_f1", "max_ece"]
