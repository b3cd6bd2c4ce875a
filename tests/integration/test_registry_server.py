"""The registry against a real `mlflow server` on PostgreSQL, including the server going away mid-call.

One server per module: ``mlflow server --app-name basic-auth`` (MLflow's auth app: the
reviewer is the user it authenticates) on a free loopback port, backend store a freshly
created PostgreSQL database (dropped afterwards), users in an auth SQLite file in tmp,
artifacts in tmp (``--artifacts-destination``, so clients see ``mlflow-artifacts:/`` URIs).
Each test uses its own registered model name. Tests that stop the server leave it to the
``server`` fixture to start it again for the next test. One test starts a second,
unauthenticated server to show that it cannot establish anybody's identity.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.unit.registry.project import make_project, onnx_model_bytes, stored_onnx_path

pytestmark = pytest.mark.integration

PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ADMIN_PASSWORD = "admin-" + uuid.uuid4().hex
USERS = {"alice": "alice-" + uuid.uuid4().hex, "bob": "bob-" + uuid.uuid4().hex,
         "pipeline-bot": "bot-" + uuid.uuid4().hex}
AUDIT_KEY = "integration-test-platform-key-" + uuid.uuid4().hex


class MlflowServer:
    """An `mlflow server` subprocess (its own process group, so stopping it stops its workers too)."""

    def __init__(self, backend: str, artifacts: Path, log: Path, *, auth: bool = True) -> None:
        self.backend, self.artifacts, self.log, self.auth = backend, artifacts, log, auth
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        """Launch the process (does not wait for it to answer)."""
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        for k in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            env.pop(k, None)
        extra: list[str] = []
        if self.auth:
            ini = self.artifacts.parent / "basic_auth.ini"
            ini.write_text(
                "[mlflow]\ndefault_permission = MANAGE\n"
                f"database_uri = sqlite:///{self.artifacts.parent / 'basic_auth.db'}\n"
                "admin_username = admin\n"
                "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n",
                encoding="utf-8",
            )
            env.update({"MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD,
                        "MLFLOW_FLASK_SERVER_SECRET_KEY": uuid.uuid4().hex})
            extra = ["--app-name", "basic-auth"]
        with self.log.open("a") as fh:
            self.proc = subprocess.Popen(
                [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1",
                 "--port", str(self.port), "--workers", "1", "--backend-store-uri", self.backend,
                 "--artifacts-destination", str(self.artifacts), *extra],
                stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=self.artifacts.parent, start_new_session=True,
            )

    def create_users(self) -> None:
        """alice, bob and pipeline-bot, created through the auth app's admin API."""
        from mlflow.server.auth.client import AuthServiceClient

        old = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
        os.environ.update({"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": ADMIN_PASSWORD})
        try:
            admin = AuthServiceClient(self.url)
            for user, pw in USERS.items():
                admin.create_user(user, pw)
        finally:
            for k, v in old.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def wait_healthy(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.healthy():
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, "mlflow server did not start:\n" + self.log.read_text()[-3000:]
            time.sleep(0.3)

    def ensure_running(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        self.wait_healthy()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        pgid = os.getpgid(self.proc.pid)
        os.killpg(pgid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        deadline = time.monotonic() + 30
        while self.healthy() and time.monotonic() < deadline:  # workers gone, port closed
            time.sleep(0.2)


@pytest.fixture(scope="module")
def pg_database():
    """A uniquely named, empty PostgreSQL database; dropped at the end of the module."""
    psycopg2 = pytest.importorskip("psycopg2")
    try:
        admin = psycopg2.connect(dbname="postgres", connect_timeout=5, **PG)
    except psycopg2.OperationalError as exc:
        why = f"PostgreSQL not reachable at {PG['host']}:{PG['port']}: {exc}"
        if os.environ.get("CI"):  # CI machines run PostgreSQL: a missing server is a failure there
            pytest.fail(why)
        pytest.skip(why)
    admin.autocommit = True
    name = f"cvp_registry_{uuid.uuid4().hex[:10]}"
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg2://{PG['user']}@{PG['host']}:{PG['port']}/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(scope="module")
def mlflow_server(pg_database, tmp_path_factory):
    base = tmp_path_factory.mktemp("mlflow-server")
    (base / "artifacts").mkdir()
    server = MlflowServer(pg_database, base / "artifacts", base / "server.log")
    server.start()
    try:
        server.wait_healthy()
        server.create_users()
        yield server
    finally:
        server.stop()


def login(monkeypatch, user: str) -> None:
    """Act as ``user`` of the auth app (what MLflow clients read: MLFLOW_TRACKING_USERNAME / _PASSWORD)."""
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", USERS[user])


@pytest.fixture
def server(mlflow_server, monkeypatch):
    """The module's server, running, as the tracking URI; logged in as 'alice'; the platform audit key set."""
    mlflow_server.ensure_running()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    monkeypatch.setenv("CVPLATFORM_USER", "someone-else")  # ignored: on a server the authenticated user counts
    monkeypatch.setenv("CVPLATFORM_AUDIT_KEY", AUDIT_KEY)
    monkeypatch.delenv("AIRFLOW_CTX_DAG_RUN_ID", raising=False)
    login(monkeypatch, "alice")
    return mlflow_server


@pytest.fixture(scope="module")
def model_bytes() -> bytes:
    return onnx_model_bytes(seed=3)


def _params(name: str, *overrides: str):
    from tests.conftest import build_params

    return build_params(f"registry.model_name={name}", *overrides)


def test_review_cycle_on_a_tracking_server(server, tmp_path, model_bytes, monkeypatch):
    import urllib.request

    from mlflow.tracking import MlflowClient

    from cvplatform.orchestration import approval_body
    from cvplatform.registry import (
        approve,
        history,
        load_model,
        promote,
        register_model,
        rollback,
        show,
        verify_version,
    )
    from cvplatform.registry.errors import FourEyesError, IdentityError, NoPreviousChampionError

    name = "srv-cycle"
    project = make_project(tmp_path / "project", model_bytes)
    params = _params(name)
    res = register_model(params, root=project.root)
    assert res.tracking_uri == server.url and (res.version, res.created) == ("1", True)
    assert res.author == "alice"  # the authenticated user, not $CVPLATFORM_USER
    assert not (project.root / "mlflow.db").exists()  # nothing embedded
    again = register_model(params, root=project.root)
    assert (again.version, again.created) == ("1", False)

    client = MlflowClient(tracking_uri=server.url, registry_uri=server.url)
    mv = client.get_model_version(name, "1")
    assert mv.tags["artifact.sha256"] == project.sha256 and mv.tags["approval.status"] == "pending"
    assert mv.tags["lineage.train_run_id"] == project.train_run_id and mv.aliases == ["challenger"]
    assert len(client.search_model_versions(f"name = '{name}'")) == 1

    # alice is authenticated: she cannot approve her own version, nor pass herself off as bob
    with pytest.raises(FourEyesError):
        approve(name, 1, comment="mine", params=params, root=project.root)
    with pytest.raises(IdentityError, match="authenticated you as 'alice'"):
        approve(name, 1, reviewer="bob", comment="it's me, bob", params=params, root=project.root)
    login(monkeypatch, "bob")
    ok = approve(name, 1, comment="ok", params=params, root=project.root)
    assert (ok.reviewer, ok.identity.source, ok.identity.verified) == ("bob", "mlflow-auth", True)
    assert verify_version(name, 1, params=params, root=project.root).ok

    # the approval page links open in a browser: the report is served by the tracking server
    body = approval_body(project.root, {"model_name": name, "version": "1", "model_uri": res.model_uri,
                                        "precision": "fp32", "artifact_sha256": res.artifact_sha256, "author": "alice"})
    assert f"[MLflow model version]({server.url}/#/models/{name}/versions/1)" in body
    assert f"({server.url}/#/experiments/" in body and "/artifacts/registration/report.html)" in body
    req = urllib.request.Request(f"{server.url}/get-artifact?path=registration/report.html&run_uuid={mv.run_id}")
    import base64

    req.add_header("Authorization", "Basic " + base64.b64encode(f"bob:{USERS['bob']}".encode()).decode())
    with urllib.request.urlopen(req, timeout=10) as r:
        assert b"report" in r.read()

    promote(name, 1, params=params, root=project.root)
    with pytest.raises(NoPreviousChampionError):
        rollback(name, params=params, root=project.root)

    m = load_model(f"models:/{name}@champion", params=params, root=project.root)
    assert m.info.version == "1" and m.info.sha256 == project.sha256
    assert m.contract.class_names == ("cat", "dog")

    events = history(name, params=params, root=project.root).events
    assert [e.action for e in events] == ["registered", "approved", "promoted"]
    assert [e.actor for e in events] == ["alice", "bob", "bob"]
    assert show(name, params=params, root=project.root).aliases == {"challenger": "1", "champion": "1"}


def test_a_hand_set_approval_tag_on_the_server_does_not_promote(server, tmp_path, model_bytes, monkeypatch):
    from mlflow.tracking import MlflowClient

    from cvplatform.registry import promote, register_model
    from cvplatform.registry.errors import NotApprovedError

    name = "srv-hand-tag"
    project = make_project(tmp_path / "project", model_bytes)
    params = _params(name)
    register_model(params, root=project.root)
    login(monkeypatch, "bob")  # any user with write access to the model can edit tags in the UI
    MlflowClient(tracking_uri=server.url).set_model_version_tag(name, "1", "approval.status", "approved")
    with pytest.raises(NotApprovedError, match="tag set by hand does not count"):
        promote(name, 1, params=params, root=project.root)


def test_airflow_reviewers_are_recorded_only_by_a_trusted_service_account(server, tmp_path, model_bytes,
                                                                           monkeypatch):
    from cvplatform.registry import approve, register_model
    from cvplatform.registry.errors import IdentityError

    name = "srv-airflow"
    project = make_project(tmp_path / "project", model_bytes)
    login(monkeypatch, "pipeline-bot")
    res = register_model(_params(name), root=project.root, triggered_by="carol")
    assert res.author == "pipeline-bot"
    with pytest.raises(IdentityError, match="not in registry.trusted_services"):
        approve(name, 1, comment="from the UI", params=_params(name), root=project.root, airflow_user="bob")
    trusted = _params(name, "registry.trusted_services=[pipeline-bot]")
    from cvplatform.registry.errors import FourEyesError

    with pytest.raises(FourEyesError, match="triggered the run"):
        approve(name, 1, comment="mine", params=trusted, root=project.root, airflow_user="carol")
    ok = approve(name, 1, comment="from the UI", params=trusted, root=project.root, airflow_user="bob")
    assert (ok.reviewer, ok.identity.source, ok.identity.recorded_by) == ("bob", "airflow", "pipeline-bot")


def test_a_server_without_authentication_cannot_establish_identity(tmp_path, model_bytes, monkeypatch):
    from cvplatform.registry import approve, register_model
    from cvplatform.registry.errors import IdentityError

    (tmp_path / "artifacts").mkdir()
    plain = MlflowServer(f"sqlite:///{tmp_path / 'plain.db'}", tmp_path / "artifacts", tmp_path / "plain.log",
                         auth=False)
    plain.start()
    try:
        plain.wait_healthy()
        monkeypatch.setenv("MLFLOW_TRACKING_URI", plain.url)
        monkeypatch.setenv("CVPLATFORM_AUDIT_KEY", AUDIT_KEY)
        monkeypatch.setenv("CVPLATFORM_USER", "alice")
        project = make_project(tmp_path / "project", model_bytes)
        register_model(_params("srv-plain"), root=project.root)
        with pytest.raises(IdentityError, match="does not authenticate users") as info:
            approve("srv-plain", 1, reviewer="bob", comment="ok", root=project.root)
        assert info.value.exit_code == 3
    finally:
        plain.stop()


def test_tampered_artifact_on_the_server_is_refused(server, tmp_path, model_bytes):
    from cvplatform.registry import load_model, register_model
    from cvplatform.registry.errors import ArtifactIntegrityError

    name = "srv-tamper"
    project = make_project(tmp_path / "project", model_bytes)
    register_model(_params(name), root=project.root)
    stored = stored_onnx_path(server.url, name, "1", server.artifacts)
    assert stored.is_file() and stored.read_bytes() == model_bytes
    stored.write_bytes(model_bytes[:-1] + bytes([model_bytes[-1] ^ 0xFF]))
    with pytest.raises(ArtifactIntegrityError, match="modified after registration"):
        load_model(f"models:/{name}/1")


def _restart_later(server: MlflowServer, delay: float) -> threading.Thread:
    t = threading.Thread(target=lambda: (time.sleep(delay), server.start()), daemon=True)
    t.start()
    return t


#: Enough budget to outlast a ~2 s outage plus the server's start-up (waits 0.5, 1, 2, 4, 4, ... s).
PATIENT = ("registry.retry.attempts=20", "registry.retry.backoff_s=0.5", "registry.retry.max_backoff_s=4")


def _retried(caplog) -> bool:
    return any("retrying in" in r.getMessage() for r in caplog.records if r.name == "cvplatform.mlflow_store")


def test_register_survives_a_server_restart(server, tmp_path, model_bytes, caplog):
    from mlflow.tracking import MlflowClient

    from cvplatform.registry import register_model

    name = "srv-restart-register"
    project = make_project(tmp_path / "project", model_bytes)  # training run logged while the server is up
    server.stop()
    assert not server.healthy()
    restarter = _restart_later(server, 2.0)
    res = register_model(_params(name, *PATIENT), root=project.root)
    restarter.join(timeout=60)
    assert (res.version, res.created, res.aliases) == ("1", True, ["challenger"])
    assert _retried(caplog)  # it did fail at first, and recovered by retrying
    client = MlflowClient(tracking_uri=server.url, registry_uri=server.url)
    assert len(client.search_model_versions(f"name = '{name}'")) == 1
    assert client.get_model_version(name, "1").tags["registration.state"] == "complete"


def test_show_survives_a_server_restart(server, tmp_path, model_bytes, caplog):
    from cvplatform.registry import register_model, show

    name = "srv-restart-show"
    project = make_project(tmp_path / "project", model_bytes)
    register_model(_params(name), root=project.root)
    server.stop()
    restarter = _restart_later(server, 2.0)
    overview = show(name, params=_params(name, *PATIENT), root=project.root)
    restarter.join(timeout=60)
    assert [v.version for v in overview.versions] == ["1"] and overview.aliases == {"challenger": "1"}
    assert _retried(caplog)


def test_server_down_longer_than_the_budget_fails_naming_the_uri(server, tmp_path):
    from cvplatform.registry import show
    from cvplatform.registry.errors import RegistryUnavailableError

    server.stop()
    params = _params("srv-down", "registry.retry.attempts=3", "registry.retry.backoff_s=0.2")
    with pytest.raises(RegistryUnavailableError) as info:
        show("srv-down", params=params, root=tmp_path)
    msg = str(info.value)
    assert server.url in msg and "3 time(s)" in msg and "is running and reachable" in msg
