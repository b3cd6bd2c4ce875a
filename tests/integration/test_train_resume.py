"""Crash-safe training: SIGKILL mid-epoch 2, ``cvplatform train --resume``, same MLflow run, every epoch once."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.tiny_dataset import make_tiny_project

REPO = Path(__file__).resolve().parents[2]
EPOCH_KEYS = ("lr", "train_loss", "train_acc", "train_f1", "val_loss", "val_acc", "val_f1")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _state(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


@pytest.mark.slow
def test_kill_mid_epoch_then_resume_continues_same_run(tmp_path):
    from mlflow.tracking import MlflowClient

    from cvplatform.models.checkpoint import read_checkpoint

    # ~50 batches of 2 images per epoch: an epoch lasts seconds, so the kill lands inside epoch 2
    root = make_tiny_project(
        tmp_path, per_class=60, size=32,
        overrides=["train.epochs=3", "train.batch_size=2", "train.model.small_cnn={width: 16}"],
    )
    art = root / "artifacts" / "train"
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "cvplatform", "train"], cwd=root, env=_env(),
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        # epochs_completed becomes 1 when epoch 1's checkpoint is on disk and epoch 2 starts
        while _state(art / "state.json").get("epochs_completed", 0) < 1:
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "epoch 1 did not finish in time"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
        log.close()
    assert proc.returncode == -signal.SIGKILL

    # the kill happened mid-epoch 2: only epoch 1 (index 0) is checkpointed and logged
    state = _state(art / "state.json")
    assert state["epochs_completed"] == 1 and state["status"] == "running"
    assert read_checkpoint(art / "last.ckpt")["epoch"] == 0
    run_id = state["run_id"]
    client = MlflowClient(state["tracking_uri"])
    assert [m.step for m in client.get_metric_history(run_id, "val_acc")] == [0]

    res = subprocess.run([sys.executable, "-m", "cvplatform", "train", "--resume"], cwd=root, env=_env(),
                         capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]

    summary = json.loads((art / "summary.json").read_text())
    assert summary["run_id"] == run_id and summary["resumed"] is True
    assert summary["epochs_completed"] == 3 and summary["max_epochs"] == 3
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert len(client.search_runs([run.info.experiment_id])) == 1  # no second run
    for key in EPOCH_KEYS:
        steps = [m.step for m in client.get_metric_history(run_id, key)]
        assert sorted(steps) == [0, 1, 2], (key, steps)  # each epoch exactly once
    assert len((art / "plots" / "curves.csv").read_text().strip().splitlines()) == 1 + 3
    assert _state(art / "state.json")["status"] == "finished"

    # every epoch's randomness depends on (seed, epoch) only: the resumed run equals an uninterrupted one
    from cvplatform.config import load_params
    from cvplatform.train import run_train

    ref = tmp_path / "uninterrupted"
    shutil.copytree(root, ref, ignore=shutil.ignore_patterns("artifacts", "mlflow.db", "mlartifacts"))
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        run_train(load_params(ref / "params.yaml"), root=ref)
    ref_art = ref / "artifacts" / "train"
    assert (ref_art / "plots" / "curves.csv").read_bytes() == (art / "plots" / "curves.csv").read_bytes()
    assert (ref_art / "metrics.json").read_bytes() == (art / "metrics.json").read_bytes()
