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


def _start_server(port: int, store: Path) -> subprocess.Popen:
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    return subprocess.Popen(
        [str(mlflow_cli), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
         "--artifacts-destination", str(store / "artifacts")],
        cwd=store, stdout=(store / "server.log").open("a"), stderr=subprocess.STDOUT,
    )


def _wait_healthy(url: str, proc: subprocess.Popen, store: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, (store / "server.log").read_text()[-3000:]
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        assert time.monotonic() < deadline, "mlflow server did not start"
        time.sleep(0.3)


@pytest.mark.integration
def test_a_tracking_run_survives_a_server_restart(tmp_path, monkeypatch, caplog):
    """The tracking server goes away between two epochs and comes back on the same address: the run's
    next calls are retried (connection refused is transient) and every epoch is logged exactly once."""
    import threading

    from mlflow.tracking import MlflowClient

    from cvplatform.tracking import RetryPolicy, TrackingRun

    caplog.set_level("WARNING", logger="cvplatform.mlflow_store")
    port, store = _free_port(), tmp_path / "server"
    store.mkdir()
    url = f"http://127.0.0.1:{port}"
    proc = _start_server(port, store)
    procs = [proc]
    try:
        _wait_healthy(url, proc, store)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        policy = RetryPolicy(attempts=60, backoff_s=0.5, backoff_factor=1.0, max_backoff_s=0.5, request_timeout_s=5)
        run = TrackingRun.start(tmp_path, "restart-exp", "train-restart", {"stage": "train"}, retry=policy)
        run.log_epoch(0, {"val_loss": 1.0})

        proc.terminate()
        proc.wait(timeout=30)
        restarted: list[subprocess.Popen] = []

        def restart() -> None:
            time.sleep(2.0)  # the run's next call finds nobody listening, then retries
            restarted.append(_start_server(port, store))

        t = threading.Thread(target=restart)
        t.start()
        run.log_epoch(1, {"val_loss": 0.5})  # blocks through the outage
        run.log_artifact(store / "server.log", "logs")
        run.finish()
        t.join()
        procs.extend(restarted)

        client = MlflowClient(url)
        assert [m.step for m in client.get_metric_history(run.run_id, "val_loss")] == [0, 1]
        assert client.get_run(run.run_id).info.status == "FINISHED"
        assert [a.path for a in client.list_artifacts(run.run_id, "logs")] == ["logs/server.log"]
        retried = [r.getMessage() for r in caplog.records if "failed (try" in r.getMessage()]
        assert retried and all("log epoch 1 metrics" in m for m in retried), retried
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
