"""MLflow helpers: URI selection, lineage (DVC data version, params), epoch logging on a real sqlite store."""

from __future__ import annotations

from pathlib import Path

import pytest

from cvplatform.errors import ConfigError
from cvplatform.tracking import (
    TrackingRun,
    data_version,
    default_artifact_location,
    file_md5,
    flatten_params,
    plot_curves,
    tracking_uri,
)


def test_tracking_uri_env_wins(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert default_artifact_location(tmp_path) == (tmp_path.resolve() / "mlartifacts").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking_uri(tmp_path) == "http://127.0.0.1:5999"
    assert default_artifact_location(tmp_path) is None  # the server decides


def test_flatten_params():
    flat = flatten_params({"train": {"model": {"arch": "resnet", "kwargs": {"blocks": [1, 2]}}, "seed": None}})
    assert flat == {"train.model.arch": "resnet", "train.model.kwargs.blocks": "[1, 2]", "train.seed": "None"}


def test_file_md5_is_dvc_hash(tmp_path):
    from dvc_data.hashfile.hash import file_md5 as dvc_md5

    f = tmp_path / "m.parquet"
    f.write_bytes(bytes(range(256)) * 1000)
    assert file_md5(f) == dvc_md5(str(f))


def test_data_version_prefers_current_dvc_lock(tmp_path):
    m = tmp_path / "data/processed/manifest.parquet"
    m.parent.mkdir(parents=True)
    m.write_bytes(b"manifest-v1")
    md5 = file_md5(m)
    assert data_version(m, tmp_path).source == "computed"
    lock = tmp_path / "dvc.lock"
    lock.write_text(
        "schema: '2.0'\nstages:\n  ingest:\n    cmd: cvplatform ingest\n    outs:\n"
        f"    - path: data/processed/manifest.parquet\n      md5: {md5}\n      size: 11\n"
    )
    assert data_version("data/processed/manifest.parquet", tmp_path) == (dv := data_version(m, tmp_path))
    assert dv.md5 == md5 and dv.source == "dvc.lock"
    m.write_bytes(b"manifest-v2")  # changed after dvc.lock was written
    stale = data_version(m, tmp_path)
    assert stale.md5 == file_md5(m) != md5 and "stale" in stale.source


@pytest.fixture
def run(tmp_path, monkeypatch) -> TrackingRun:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return TrackingRun.start(tmp_path, "exp", "r1", tags={"stage": "train", "none": None})


def test_run_epochs_params_and_resume(run, tmp_path):
    assert (tmp_path / "mlflow.db").is_file()
    exp = run.client.get_experiment(run.experiment_id)
    assert exp.artifact_location == (tmp_path.resolve() / "mlartifacts").as_uri()
    run.log_params({"a": "1", "b": "x"})
    run.log_epoch(0, {"val_acc": 0.5, "val_loss": None})
    run.log_epoch(1, {"val_acc": 0.7})
    assert run.logged_steps(["val_acc", "val_loss"]) == {"val_acc": {0, 1}, "val_loss": set()}
    run.check_params({"a": "1"}, "params.yaml")
    with pytest.raises(ConfigError, match=r"a \(run: '1', now: '2'\)"):
        run.check_params({"a": "2"}, "params.yaml")
    run.log_metrics_once({"best": 1.0})
    run.log_metrics_once({"best": 2.0})
    assert [m.value for m in run.client.get_metric_history(run.run_id, "best")] == [1.0]
    run.finish("KILLED")
    again = TrackingRun.resume(tmp_path, run.run_id)
    assert again.client.get_run(run.run_id).info.status == "KILLED"  # untouched until it really continues
    again.mark_running()
    assert again.client.get_run(run.run_id).info.status == "RUNNING"
    data = again.client.get_run(run.run_id).data
    assert data.tags["stage"] == "train" and "none" not in data.tags


def test_resume_unknown_run(tmp_path, monkeypatch):
    from cvplatform.errors import RegistryError

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    TrackingRun.start(tmp_path, "exp")
    with pytest.raises(RegistryError, match="without --resume"):
        TrackingRun.resume(tmp_path, "0" * 32)


def test_plot_curves(tmp_path):
    hist = [{"epoch": 0, "train_loss": 1.0, "val_loss": 0.9, "val_acc": 0.5, "val_f1": 0.4},
            {"epoch": 1, "train_loss": 0.5, "val_loss": 0.6, "val_acc": 0.8, "val_f1": 0.7}]
    p = plot_curves(hist, tmp_path / "c.png")
    assert Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
