"""cvplatform.airflow_local without starting Airflow: users, environment, commands, refusals.
(The real start/stop is exercised by tests/e2e/test_airflow_e2e.py.)"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from cvplatform.airflow_local import (
    COMPONENTS,
    AirflowLaunchError,
    AirflowLocal,
    free_port,
    parse_users,
)

REPO = Path(__file__).resolve().parents[2]


def test_parse_users_normalises_roles_and_rejects_bad_entries():
    assert parse_users("admin:ADMIN, alice:user,bob") == (("admin", "ADMIN"), ("alice", "USER"), ("bob", "USER"))
    with pytest.raises(AirflowLaunchError, match="ROLE one of"):
        parse_users("admin:ROOT")
    with pytest.raises(AirflowLaunchError, match="at least one"):
        parse_users(" , ")


def test_env_configures_every_component_for_loopback_sqlite_and_named_users(tmp_path, monkeypatch):
    monkeypatch.delenv("CVPLATFORM_ROOT", raising=False)
    monkeypatch.setenv("AIRFLOW__CORE__PARALLELISM", "99")  # ours wins
    monkeypatch.setenv("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")  # others pass through
    af = AirflowLocal(repo=REPO, home=tmp_path / "home", port=8123, users=parse_users("admin:ADMIN,alice:USER"),
                      pipeline_user="pipeline-bot", parallelism=3)
    env = af.env()
    assert env["AIRFLOW_HOME"] == str(tmp_path / "home")
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(REPO / "dags")
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert env["AIRFLOW__CORE__PARALLELISM"] == "3"
    assert env["AIRFLOW__LOGGING__LOGGING_LEVEL"] == "WARNING"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == f"sqlite:///{tmp_path / 'home'}/airflow.db"
    assert env["AIRFLOW__API__HOST"] == "127.0.0.1" and env["AIRFLOW__API__PORT"] == "8123"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:8123/execution/"
    assert env["AIRFLOW__CORE__AUTH_MANAGER"].endswith("SimpleAuthManager")
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] == "admin:ADMIN,alice:USER"
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS"] == "False"
    assert env["CVPLATFORM_ROOT"] == str(REPO) and env["CVPLATFORM_USER"] == "pipeline-bot"
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent)
    assert af.url == "http://127.0.0.1:8123"
    # every component gets the same JWT/api secrets, persisted (0600) so a restart keeps logins valid
    again = AirflowLocal(repo=REPO, home=tmp_path / "home", port=8123).env()
    assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == again["AIRFLOW__API_AUTH__JWT_SECRET"]
    assert len(env["AIRFLOW__API_AUTH__JWT_SECRET"]) >= 32
    assert env["AIRFLOW__API__SECRET_KEY"] != env["AIRFLOW__API_AUTH__JWT_SECRET"]
    assert (tmp_path / "home" / "cvplatform-airflow-secrets.json").stat().st_mode & 0o077 == 0


def test_commands_skip_the_log_servers_that_would_bind_every_interface(tmp_path):
    af = AirflowLocal(repo=REPO, home=tmp_path, port=8124)
    cmds = {c: af.command(c) for c in COMPONENTS}
    assert cmds["api-server"][-6:] == ["--host", "127.0.0.1", "--port", "8124", "--workers", "1"]
    assert "--skip-serve-logs" in cmds["scheduler"] and "--skip-serve-logs" in cmds["triggerer"]
    assert all(c[:3] == [sys.executable, "-m", "airflow"] for c in cmds.values())
    with pytest.raises(AirflowLaunchError, match="unknown Airflow component"):
        af.command("webserver")


def test_refuses_a_repo_without_dags_and_a_busy_port(tmp_path):
    with pytest.raises(AirflowLaunchError, match="cv_retrain.py"):
        AirflowLocal(repo=tmp_path, home=tmp_path / "home")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        af = AirflowLocal(repo=REPO, home=tmp_path / "home", port=port)
        with pytest.raises(AirflowLaunchError, match="already in use"):
            af.start()
    assert not (tmp_path / "home").exists()  # refused before touching anything


def test_port_zero_picks_a_free_port_and_passwords_error_names_the_file(tmp_path):
    af = AirflowLocal(repo=REPO, home=tmp_path / "home", port=0)
    assert 1024 < af.port < 65536
    assert free_port() > 0
    with pytest.raises(AirflowLaunchError, match="simple_auth_manager_passwords"):
        af.passwords()
