"""The one MLflow adapter: URIs resolved once, the only MlflowClient, tenacity retries, global URIs, warn once."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pytest
import requests
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

from cvplatform.errors import RegistryError
from cvplatform.mlflow_store import MlflowStore, RetriesExhausted, RetryPolicy, warn_once

PACKAGE = Path(__file__).resolve().parents[2] / "cvplatform"


def _store(attempts: int = 4) -> MlflowStore:
    return MlflowStore("sqlite:///unused.db", retry=RetryPolicy(attempts=attempts, backoff_s=0.5, backoff_factor=2))


def test_uris_resolve_from_the_environment_once(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.delenv("CVPLATFORM_STORE_ROOT", raising=False)
    store = MlflowStore.at(tmp_path)
    assert store.tracking_uri == store.registry_uri == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", "http://registry:5000")
    store = MlflowStore.at(tmp_path)
    assert (store.tracking_uri, store.registry_uri) == ("http://tracking:5000", "http://registry:5000")
    client = store.client()
    assert client.tracking_uri == "http://tracking:5000" and client._registry_uri == "http://registry:5000"


def test_transient_failures_are_retried_with_the_policy_waits():
    waits: list[float] = []
    calls: list[int] = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise requests.exceptions.ConnectionError("refused")
        return "ok"

    assert _store().call("flaky", flaky, sleep=waits.append) == "ok"
    assert len(calls) == 3 and waits == [0.5, 1.0]


def test_an_exhausted_budget_says_how_often_and_keeps_the_last_error():
    waits: list[float] = []

    def down():
        raise requests.exceptions.ConnectionError("refused")

    with pytest.raises(RetriesExhausted, match=r"ping failed 3 time\(s\) .*ConnectionError: refused") as info:
        _store(3).call("ping", down, sleep=waits.append)
    assert waits == [0.5, 1.0] and isinstance(info.value.last, requests.exceptions.ConnectionError)


def test_non_transient_and_registry_errors_propagate_at_once():
    waits: list[float] = []
    calls: list[int] = []

    def missing():
        calls.append(1)
        raise MlflowException("gone", error_code=RESOURCE_DOES_NOT_EXIST)

    with pytest.raises(MlflowException, match="gone"):
        _store().call("get", missing, sleep=waits.append)

    def refused():
        calls.append(1)
        raise RegistryError("refused") from requests.exceptions.ConnectionError("a transient cause")

    with pytest.raises(RegistryError, match="refused"):
        _store().call("get", refused, sleep=waits.append)
    assert calls == [1, 1] and waits == []


def test_recover_prevents_a_duplicate_after_a_lost_response():
    created: list[str] = []

    def create():
        created.append("v1")
        if len(created) == 1:
            raise requests.exceptions.ConnectionError("connection reset")
        return "second copy"

    out = _store().call("create", create, recover=lambda: created[0] if created else None, sleep=lambda s: None)
    assert out == "v1" and created == ["v1"]


@pytest.mark.parametrize("preset", [None, "http://elsewhere:5000"])
def test_active_points_mlflow_at_the_store_and_restores_the_caller_state(monkeypatch, preset, tmp_path):
    import mlflow

    if preset is None:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", preset)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    before = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    store = MlflowStore(f"sqlite:///{tmp_path / 't.db'}", f"sqlite:///{tmp_path / 'r.db'}")
    with store.active():
        assert (mlflow.get_tracking_uri(), mlflow.get_registry_uri()) == (store.tracking_uri, store.registry_uri)
        assert os.environ["MLFLOW_TRACKING_URI"] == store.tracking_uri  # subprocesses inherit it
    assert os.environ.get("MLFLOW_TRACKING_URI") == preset and "MLFLOW_REGISTRY_URI" not in os.environ
    assert (mlflow.get_tracking_uri(), mlflow.get_registry_uri()) == before
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://later:5000")  # nothing stays pinned afterwards
    assert mlflow.get_tracking_uri() == "http://later:5000"
    assert not list(tmp_path.iterdir())  # switching URIs touches no store


def test_http_settings_apply_during_calls_only(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    store = MlflowStore("sqlite:///unused.db", retry=RetryPolicy(request_timeout_s=9, http_max_retries=0))
    seen = store.call("read env", lambda: (os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"],
                                           os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"]))
    assert seen == ("0", "9")
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "7" and "MLFLOW_HTTP_REQUEST_TIMEOUT" not in os.environ


def test_warn_once_logs_a_repeated_warning_once(caplog):
    logger = logging.getLogger("cvplatform.test_warn_once")
    with caplog.at_level(logging.WARNING, logger=logger.name):
        assert warn_once(logger, "test-key-1", "server down (%s)", "a") is True
        assert warn_once(logger, "test-key-1", "server down (%s)", "b") is False
        assert warn_once(logger, "test-key-2", "other (%s)", "c") is True
    assert [r.getMessage() for r in caplog.records] == ["server down (a)", "other (c)"]


def test_only_the_adapter_builds_clients_and_nothing_pokes_mlflow_private_state():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        rel = path.relative_to(PACKAGE.parent).as_posix()
        if rel != "cvplatform/mlflow_store.py" and re.search(r"\bMlflowClient\(", text):
            offenders.append(f"{rel}: MlflowClient(")
        if re.search(r"\b_registry_uri\b|_tracking_service\.utils|_model_registry\.utils", text):
            offenders.append(f"{rel}: MLflow private URI state")
    assert offenders == []
