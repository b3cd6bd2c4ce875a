"""The stack launcher's configuration and bookkeeping (no service started here: tests/integration/test_stack.py
starts the real stack)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cvplatform.errors import ConfigError
from cvplatform.stack import (
    Stack,
    StackConfig,
    airflow_celery_env,
    group_members,
    load_stack_config,
)

REPO = Path(__file__).resolve().parents[2]
STACK_YAML = REPO / "configs" / "stack.yaml"


def test_the_shipped_config_loads_and_matches_the_defaults():
    assert load_stack_config(STACK_YAML) == StackConfig()


def test_every_stack_key_has_a_type_comment():
    for n, line in enumerate(STACK_YAML.read_text().splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        key, _, rest = stripped.partition(":")
        if rest.split("#")[0].strip():
            assert "# (" in rest, f"configs/stack.yaml:{n}: key {key!r} lacks a '# (type) meaning' comment"


@pytest.mark.parametrize(("override", "message"), [
    ({"mlflow": {"port": 8181}}, "ports must all differ"),
    ({"mlflow": {"serving_user": "carol"}}, "serving_user 'carol' must be one of users"),
    ({"mlflow": {"users": ["admin", "serving"]}}, "admin_user 'admin' is created by the auth app"),
    ({"postgres": {"airflow_db": "cvplatform_mlflow"}}, "must differ"),
    ({"postgres": {"mlflow_db": "x; DROP"}}, "postgres.mlflow_db"),
    ({"s3": {"mlflow_bucket": "Bad_Bucket"}}, "s3.mlflow_bucket"),
    ({"s3": {"secret_access_key": None}}, "set together"),
    ({"serving": {"replica_port": [1]}}, "serving.replica_port: unknown key"),
])
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_stack_config(STACK_YAML, override)


def test_urls_and_aws_endpoint_are_a_config_change(tmp_path):
    local = Stack(StackConfig(), tmp_path)
    assert local.s3_endpoint == "http://127.0.0.1:9100"
    assert local.components() == ["s3", "mlflow", "replica-1", "replica-2", "balancer"]
    assert local.mlflow_artifacts == "s3://cvplatform-mlflow/artifacts"
    aws = Stack(load_stack_config(None, {"s3": {"start_local": False, "access_key_id": None,
                                                "secret_access_key": None, "region": "eu-west-1"}}), tmp_path)
    assert aws.s3_endpoint is None and aws.components()[0] == "mlflow"  # no local endpoint started
    assert aws.s3_env() == {"AWS_DEFAULT_REGION": "eu-west-1"}  # keys from boto3's default chain
    minio = Stack(load_stack_config(None, {"s3": {"start_local": False, "endpoint_url": "http://minio:9000/"}}),
                  tmp_path)
    assert minio.s3_env()["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"


def test_postgres_password_comes_from_the_environment(monkeypatch):
    pg = StackConfig().postgres
    monkeypatch.delenv(pg.password_env, raising=False)
    assert pg.url("db") == "postgresql+psycopg2://postgres@127.0.0.1:5432/db"
    monkeypatch.setenv(pg.password_env, "p@ss/word")
    assert pg.url("db") == "postgresql+psycopg2://postgres:p%40ss%2Fword@127.0.0.1:5432/db"


def test_credentials_are_generated_once_and_private(tmp_path):
    st = Stack(load_stack_config(None, {"state_dir": str(tmp_path / "state")}), tmp_path)
    first = st.credentials()
    assert set(first["mlflow_users"]) == {"admin", "alice", "bob", "pipeline-bot", "serving"}
    assert len(set(first["mlflow_users"].values())) == 5
    assert st.credentials() == first
    for name in ("credentials.json", "audit.key"):
        assert (st.state / name).stat().st_mode & 0o777 == 0o600


def test_a_recycled_pid_is_not_taken_for_a_running_service(tmp_path):
    st = Stack(load_stack_config(None, {"state_dir": str(tmp_path / "state")}), tmp_path)
    st.pids.mkdir(parents=True)
    (st.pids / "mlflow.json").write_text(json.dumps({"pid": os.getpid(), "pgid": os.getpid(), "start": 1}))
    assert not st.running("mlflow")  # our pid, but not the start time recorded: another process


def test_stop_ends_the_whole_process_group(tmp_path):
    st = Stack(load_stack_config(None, {"state_dir": str(tmp_path / "state")}), tmp_path)
    code = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); " \
           "time.sleep(600)"
    pid = st.spawn("s3", [sys.executable, "-c", code], dict(os.environ), tmp_path)
    assert st.running("s3")
    deadline = time.monotonic() + 30
    while len(group_members(pid)) < 2:  # parent and child
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert st.stop("s3", grace_s=10) is True
    assert group_members(pid) == [] and st.record("s3") is None
    assert st.stop("s3") is False


def test_down_with_nothing_running_says_so(tmp_path):
    cfg = tmp_path / "stack.yaml"
    cfg.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state")}))
    r = subprocess.run([sys.executable, "-m", "cvplatform.stack", "down", "--config", str(cfg)], cwd=tmp_path,
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert r.returncode == 0 and "nothing was running" in r.stdout


def test_celery_settings_share_the_secret_and_execution_api(tmp_path):
    st = Stack(StackConfig(), tmp_path)
    env = airflow_celery_env(st, {"airflow_jwt_secret": "s" * 32, "airflow_api_secret_key": "k" * 32})
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"] == "db+postgresql://postgres@127.0.0.1:5432/cvplatform_airflow"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"].endswith("/execution/")
    assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == "s" * 32 and env["AIRFLOW__API__SECRET_KEY"] == "k" * 32
