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
    alive,
    group_members,
    load_stack_config,
    process_tree,
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
    ({"airflow": {"api_port": 5100}}, "ports must all differ"),
    ({"airflow": {"workers": ["worker-1", "worker-1"]}}, "worker names must differ"),
    ({"airflow": {"workers": ["worker_1"]}}, "worker names are host names"),
    ({"airflow": {"workers": []}}, "airflow.workers"),
    ({"airflow": {"users": ["alice:BOSS"]}}, "users are NAME:ROLE"),
    ({"airflow": {"dags_folder": "/srv/dags"}}, "dags_folder is a folder inside the project"),
    ({"airflow": {"broker_url": "amqp://rabbit"}}, "airflow.broker_url"),
])
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_stack_config(STACK_YAML, override)


def test_urls_and_aws_endpoint_are_a_config_change(tmp_path):
    local = Stack(StackConfig(), tmp_path)
    assert local.s3_endpoint == "http://127.0.0.1:9100"
    assert local.components() == ["s3", "mlflow", "replica-1", "replica-2", "balancer", "airflow-api-server",
                                  "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
                                  "airflow-worker-1", "airflow-worker-2"]
    assert local.worker_dir("worker-2") == tmp_path / ".cvplatform" / "stack" / "workers" / "worker-2"
    no_airflow = Stack(load_stack_config(None, {"airflow": {"enabled": False}}), tmp_path)
    assert no_airflow.components()[-1] == "balancer"
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
    st = Stack(load_stack_config(None, {"airflow": {"api_port": 8299, "queue": "cv"}}), tmp_path)
    env = airflow_celery_env(st, {"airflow_jwt_secret": "s" * 32, "airflow_api_secret_key": "k" * 32})
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CELERY__BROKER_URL"] == "redis://127.0.0.1:6379/0"
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"] == \
        "db+postgresql+psycopg2://postgres@127.0.0.1:5432/cvplatform_airflow"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == "postgresql+psycopg2://postgres@127.0.0.1:5432/cvplatform_airflow"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:8299/execution/"
    assert env["AIRFLOW__OPERATORS__DEFAULT_QUEUE"] == "cv"
    assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == "s" * 32 and env["AIRFLOW__API__SECRET_KEY"] == "k" * 32


def test_airflow_settings_are_verified_names_of_the_installed_airflow():
    """Every AIRFLOW__SECTION__KEY the stack sets is an option of the installed Airflow or its celery provider."""
    from airflow.configuration import conf

    st = Stack(StackConfig(), Path("/srv/cv"))
    creds = {"airflow_jwt_secret": "j", "airflow_api_secret_key": "k", "airflow_fernet_key": "f",
             "airflow_users": {"admin": "a", "alice": "b", "bob": "c"},
             "mlflow_users": {u: "p" for u in ("admin", "alice", "bob", "pipeline-bot", "serving")},
             "serving_admin_token": "t"}
    env = st.worker_env(creds, "worker-1")
    keys = [k for k in env if k.startswith("AIRFLOW__")]
    assert len(keys) > 20
    described = conf.configuration_description  # config.yml of Airflow and of its providers (celery)

    def known(key: str) -> bool:
        section, option = key[len("AIRFLOW__"):].lower().split("__", 1)
        return option in described.get(section, {}).get("options", {})

    assert not known("AIRFLOW__CORE__NO_SUCH_OPTION")
    unknown = [k for k in keys if not known(k)]
    assert unknown == [], unknown
    assert env["CVPLATFORM_ROOT"] == "/srv/cv/.cvplatform/stack/workers/worker-1"
    assert env["CVPLATFORM_RUNS_DIR"] == "/srv/cv/.cvplatform/stack/runs/worker-1"
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == "/srv/cv/.cvplatform/stack/workers/worker-1/dags"
    assert env["AIRFLOW__CORE__HOSTNAME_CALLABLE"] == "cvplatform.airflow_hostname.worker_hostname"
    assert st.airflow_env(creds)["AIRFLOW__CORE__DAGS_FOLDER"] == "/srv/cv/dags"  # scheduler, dag-processor


def test_airflow_credentials_are_generated_once(tmp_path):
    st = Stack(load_stack_config(None, {"state_dir": str(tmp_path / "state")}), tmp_path)
    first = st.credentials()
    assert set(first["airflow_users"]) == {"admin", "alice", "bob"}
    import base64

    assert len(base64.urlsafe_b64decode(first["airflow_fernet_key"])) == 32  # a Fernet key
    assert st.credentials() == first


def test_workers_need_a_committed_project(tmp_path):
    from cvplatform.stack import StackError

    st = Stack(StackConfig(), tmp_path)
    with pytest.raises(StackError, match="has no commit"):
        st._project_commit()


def test_worker_clone_follows_the_projects_commit(tmp_path):
    project = tmp_path / "project"
    (project / "dags").mkdir(parents=True)
    (project / "dags" / "a.py").write_text("A = 1\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    subprocess.run([*git, "add", "-A"], cwd=project, check=True)
    subprocess.run([*git, "commit", "-qm", "1"], cwd=project, check=True)
    st = Stack(load_stack_config(None, {"state_dir": str(tmp_path / "state")}), project)
    wd = st._checkout_worker("worker-1", st._project_commit())
    assert (wd / "dags" / "a.py").read_text() == "A = 1\n"
    (project / "dags" / "a.py").write_text("A = 2\n")
    (project / "dags" / "b.py").write_text("B = 1\n")  # not committed: the worker does not see it
    subprocess.run([*git, "commit", "-qam", "2"], cwd=project, check=True)
    assert st._checkout_worker("worker-1", st._project_commit()) == wd
    assert (wd / "dags" / "a.py").read_text() == "A = 2\n" and not (wd / "dags" / "b.py").exists()


def test_stop_also_ends_descendants_in_a_process_group_of_their_own(tmp_path):
    """Airflow's task processes leave the worker's process group: stop finds them by parentage."""
    st = Stack(load_stack_config(None, {"state_dir": str(tmp_path / "state")}), tmp_path)
    child = "import os, time; os.setpgid(0, 0); time.sleep(600)"
    code = ("import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(0)); "
            f"subprocess.Popen([sys.executable, '-c', {child!r}]); time.sleep(600)")
    pid = st.spawn("airflow-worker-1", [sys.executable, "-c", code], dict(os.environ), tmp_path)
    deadline = time.monotonic() + 30
    while not (outside := [p for p in process_tree(pid) if os.getpgid(p) != pid]):  # once the child moved
        assert time.monotonic() < deadline
        time.sleep(0.05)
    tree = process_tree(pid)
    assert len(outside) == 1 and len(tree) == 2 and group_members(pid) == [pid]  # the child left the group
    assert st.stop("airflow-worker-1", grace_s=2) is True
    assert alive(tree) == []


def test_a_missing_broker_is_named(tmp_path):
    from cvplatform.airflow_local import free_port
    from cvplatform.stack import StackError

    port = free_port()
    st = Stack(load_stack_config(None, {"airflow": {"broker_url": f"redis://127.0.0.1:{port}/3"}}), tmp_path)
    with pytest.raises(StackError, match=f"Celery broker 127.0.0.1:{port} .*airflow.broker_url.*start Redis"):
        st._check_broker()
