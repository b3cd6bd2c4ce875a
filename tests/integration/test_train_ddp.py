"""Scale-out: ``train.strategy=ddp, train.devices=2`` on CPU (gloo), two processes, one MLflow run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.tiny_dataset import make_tiny_project

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_ddp_on_cpu_logs_one_run(tmp_path):
    from mlflow.tracking import MlflowClient

    root = make_tiny_project(tmp_path, per_class=10, overrides=["train.strategy=ddp", "train.devices=2"])
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    res = subprocess.run([sys.executable, "-m", "cvplatform", "train"], cwd=root, env=env,
                         capture_output=True, text=True, timeout=400)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    assert "distributed_backend=gloo" in out
    assert "train: rank 1 finished" in out  # the second process really trained

    summary = json.loads((root / "artifacts/train/summary.json").read_text())
    assert summary["world_size"] == 2 and summary["rank"] == 0
    client = MlflowClient(summary["tracking_uri"])
    runs = client.search_runs([summary["experiment_id"]])
    assert [r.info.run_id for r in runs] == [summary["run_id"]]  # ONE run, from rank 0
    assert runs[0].info.status == "FINISHED"
    assert runs[0].data.params["train.strategy"] == "ddp"
    for key in ("train_loss", "val_loss", "val_acc"):
        assert [m.step for m in client.get_metric_history(summary["run_id"], key)] == [0]
