"""Training tracked on a real MLflow tracking server (MLFLOW_TRACKING_URI), sqlite backend in tmp_path."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.fixtures.tiny_dataset import make_tiny_project


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    store = tmp_path / "server"
    store.mkdir()
    log = (store / "server.log").open("w")
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen(
        [str(mlflow_cli), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
         "--artifacts-destination", str(store / "artifacts")],
        cwd=store, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (store / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(0.5)
        yield url, store
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.mark.integration
def test_train_logs_to_tracking_server(tmp_path, monkeypatch, mlflow_server):
    from mlflow.tracking import MlflowClient

    from cvplatform.config import load_params
    from cvplatform.train import run_train

    url, store = mlflow_server
    root = make_tiny_project(tmp_path / "project", overrides=["train.epochs=2", "train.experiment=server-exp"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    result = run_train(load_params(root / "params.yaml"), root=root)

    assert result.tracking_uri == url
    assert not (root / "mlflow.db").exists() and not (root / "mlartifacts").exists()  # nothing embedded
    client = MlflowClient(url)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "server-exp"
    assert run.data.params["train.epochs"] == "2"
    assert run.data.tags["data_version"] == result.data_version
    for key in ("train_loss", "val_loss", "val_acc", "val_f1"):
        assert [m.step for m in client.get_metric_history(result.run_id, key)] == [0, 1]
    ckpts = [a.path for a in client.list_artifacts(result.run_id, "checkpoints")]
    assert ckpts == ["checkpoints/best.ckpt"]
    # the server stored the artifact itself (proxied artifact storage under --artifacts-destination)
    stored = list((store / "artifacts").rglob("best.ckpt"))
    assert len(stored) == 1 and stored[0].read_bytes() == Path(result.best_checkpoint).read_bytes()
    local = client.download_artifacts(result.run_id, "checkpoints/best.ckpt", str(tmp_path))
    assert os.path.getsize(local) == os.path.getsize(result.best_checkpoint)
