"""The retrying client: what counts as transient, the backoff budget, recovery, and MLflow's global state."""

from __future__ import annotations

import os
import socket

import pytest
import requests
from mlflow.exceptions import MlflowException, RestException
from mlflow.protos.databricks_pb2 import (
    INTERNAL_ERROR,
    INVALID_PARAMETER_VALUE,
    RESOURCE_DOES_NOT_EXIST,
    TEMPORARILY_UNAVAILABLE,
)

from cvplatform.errors import RegistryError
from cvplatform.registry.client import RegistryClient, RetryPolicy, current_user, is_transient, tag_filter
from cvplatform.registry.errors import RegistryUnavailableError


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_delays_grow_exponentially_and_are_capped():
    policy = RetryPolicy(attempts=6, backoff_s=0.5, backoff_factor=2.0, max_backoff_s=3.0)
    assert policy.delays() == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert policy.max_wait_s == pytest.approx(9.5)
    assert RetryPolicy(attempts=1).delays() == []


def test_policy_from_params_reads_the_registry_section(make_params):
    p = make_params("registry.retry.attempts=3", "registry.retry.backoff_s=0.25", "registry.retry.request_timeout_s=7")
    policy = RetryPolicy.from_params(p.registry.retry)
    assert (policy.attempts, policy.backoff_s, policy.request_timeout_s, policy.http_max_retries) == (3, 0.25, 7, 0)


def _wrapped_connection_error() -> MlflowException:
    # how MLflow's REST client reports a refused connection: a generic MlflowException raised
    # while handling the requests exception (which becomes its __context__)
    try:
        try:
            raise requests.exceptions.ConnectionError("Max retries exceeded ... Connection refused")
        except Exception as e:
            raise MlflowException(f"API request to http://127.0.0.1:1/api failed with exception {e}")  # noqa: B904
    except MlflowException as exc:
        return exc


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (requests.exceptions.ConnectionError("refused"), True),
        (requests.exceptions.ReadTimeout("slow"), True),
        (ConnectionResetError("reset by peer"), True),
        (MlflowException("db down", error_code=TEMPORARILY_UNAVAILABLE), True),
        (RestException({"error_code": "INTERNAL_ERROR", "message": "boom"}), True),
        (RestException({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "busy"}), True),
        (MlflowException("API request to endpoint /x failed with error code 502 != 200. Response body: ''"), True),
        (MlflowException("no such version", error_code=RESOURCE_DOES_NOT_EXIST), False),
        (RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "missing"}), False),
        (RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "bad"}), False),
        (MlflowException("API request to endpoint /x failed with error code 404 != 200. Response body: ''"), False),
        (MlflowException("a local bug", error_code=INTERNAL_ERROR), False),
        (ValueError("not a network problem"), False),
    ],
)
def test_transient_classification(exc, expected):
    assert is_transient(exc) is expected


def test_connection_error_inside_mlflow_exception_is_transient():
    assert is_transient(_wrapped_connection_error()) is True


def test_http_error_status_decides():
    def http_error(status: int) -> requests.exceptions.HTTPError:
        resp = requests.Response()
        resp.status_code = status
        return requests.exceptions.HTTPError(f"{status}", response=resp)

    assert is_transient(http_error(503)) is True
    assert is_transient(http_error(404)) is False


def test_unreachable_server_exhausts_the_budget_and_names_the_uri():
    uri = f"http://127.0.0.1:{_closed_port()}"
    waits: list[float] = []
    client = RegistryClient(uri, RetryPolicy(attempts=3, backoff_s=0.01, backoff_factor=3.0), sleep=waits.append)
    with pytest.raises(RegistryUnavailableError) as info:
        client.version("cvplatform", 1)
    msg = str(info.value)
    assert uri in msg and "3 time(s)" in msg and "registry.retry" in msg
    assert waits == pytest.approx([0.01, 0.03])  # our backoff, attempts - 1 waits
    assert isinstance(info.value.__cause__, MlflowException)


def test_mlflow_http_settings_apply_during_calls_only(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    client = RegistryClient("sqlite:///unused.db", RetryPolicy(request_timeout_s=9, http_max_retries=0))
    seen = client.call("read env", lambda: (os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"],
                                            os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"]))
    assert seen == ("0", "9")
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "7"
    assert "MLFLOW_HTTP_REQUEST_TIMEOUT" not in os.environ


def test_non_transient_errors_are_not_retried():
    waits: list[float] = []
    client = RegistryClient("sqlite:///unused.db", RetryPolicy(attempts=5, backoff_s=0.01), sleep=waits.append)
    calls = []

    def missing():
        calls.append(1)
        raise MlflowException("gone", error_code=RESOURCE_DOES_NOT_EXIST)

    with pytest.raises(MlflowException):
        client.call("get", missing)
    assert calls == [1] and waits == []


def test_other_refusals_become_registry_errors_naming_the_call():
    client = RegistryClient("sqlite:///unused.db", RetryPolicy(attempts=3, backoff_s=0.0), sleep=lambda s: None)

    def bad():
        raise MlflowException("Invalid tag key", error_code=INVALID_PARAMETER_VALUE)

    with pytest.raises(RegistryError) as info:
        client.call("set tag 'x y' on version 1", bad)
    assert "refused to set tag 'x y' on version 1" in str(info.value) and "sqlite:///unused.db" in str(info.value)
    assert not isinstance(info.value, RegistryUnavailableError)


def test_transient_failure_then_success_is_retried():
    waits: list[float] = []
    client = RegistryClient("sqlite:///unused.db", RetryPolicy(attempts=4, backoff_s=0.01), sleep=waits.append)
    outcomes = [requests.exceptions.ConnectionError("refused"), requests.exceptions.ConnectionError("refused")]

    def flaky():
        if outcomes:
            raise outcomes.pop(0)
        return "ok"

    assert client.call("flaky", flaky) == "ok"
    assert len(waits) == 2


def test_recover_returns_what_the_lost_attempt_already_did():
    client = RegistryClient("sqlite:///unused.db", RetryPolicy(attempts=3, backoff_s=0.0), sleep=lambda s: None)
    created: list[str] = []

    def create():
        created.append("v1")
        if len(created) == 1:  # the server did the work but the response was lost
            raise requests.exceptions.ConnectionError("connection reset")
        return "second copy"

    assert client.call("create", create, recover=lambda: created[0] if created else None) == "v1"
    assert created == ["v1"]  # never created twice


@pytest.mark.parametrize("preset", [None, "http://elsewhere:5000"])
def test_fluent_restores_mlflow_global_state_exactly(monkeypatch, preset):
    import mlflow

    if preset is None:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", preset)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    before = mlflow.get_tracking_uri()
    client = RegistryClient("sqlite:////tmp/cvplatform-fluent-test.db")
    with client.fluent():
        assert mlflow.get_tracking_uri() == client.uri
        assert mlflow.get_registry_uri() == client.uri
    assert os.environ.get("MLFLOW_TRACKING_URI") == preset
    assert "MLFLOW_REGISTRY_URI" not in os.environ
    assert mlflow.get_tracking_uri() == before


def test_current_user_prefers_the_env(monkeypatch):
    monkeypatch.setenv("CVPLATFORM_USER", "  carol ")
    assert current_user() == "carol"
    monkeypatch.delenv("CVPLATFORM_USER")
    assert current_user()  # the OS user (or "unknown"), never empty


def test_tag_filter_quotes_keys_and_values():
    assert tag_filter("artifact.sha256", "o'clock") == "tags.`artifact.sha256` = 'o\\'clock'"
