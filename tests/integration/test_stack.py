"""`make stack` for real: ``python -m cvplatform.stack up|down`` as a subprocess, on free loopback ports.

One stack per module: moto's S3 server, the PostgreSQL server of this machine (databases with unique
names, dropped by ``down --purge``), ``mlflow server --app-name basic-auth`` with S3 artifacts, the
DVC remote of a throwaway project (git + ``dvc init``, committed with the probe DAG of
``tests/fixtures/stack_dags/``), two ``cvplatform serve`` replicas, the balancer, and Airflow with the
CeleryExecutor (the machine's Redis as broker, database 15, a queue of its own) with two Celery workers,
each in its own clone of the project. Nothing is mocked: the assertions read the S3 buckets through
boto3, the MLflow and Airflow servers through their REST APIs, and /proc for leftover processes. The
last test stops the stack.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
import yaml

from cvplatform.stack import Stack, alive, group_members, load_stack_config, process_tree

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
REDIS = ("127.0.0.1", 6379)
PROBE_DAG = REPO / "tests" / "fixtures" / "stack_dags" / "cvplatform_stack_probe.py"


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def _pg_available() -> bool:
    return _listening(PG["host"], PG["port"])


def _stack_cli(config: Path, *args: str, timeout: float = 400.0) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-m", "cvplatform.stack", *args, "--config", str(config)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """The running stack (started once; stopped by test_stack_down_leaves_no_process, or here as a fallback)."""
    if not _pg_available():
        if os.environ.get("CI"):  # CI machines run PostgreSQL: a missing server is a failure there
            pytest.fail("no PostgreSQL server on 127.0.0.1:5432 (CI must start one)")
        pytest.skip("no PostgreSQL server on 127.0.0.1:5432")
    if not _listening(*REDIS):
        if os.environ.get("CI"):  # the Celery broker: CI runs Redis next to PostgreSQL
            pytest.fail("no Redis server on 127.0.0.1:6379 (CI must start one: the stack's Celery broker)")
        pytest.skip("no Redis server on 127.0.0.1:6379")
    base = tmp_path_factory.mktemp("stack")
    project = base / "project"
    project.mkdir()
    shutil.copy2(REPO / "params.yaml", project / "params.yaml")
    shutil.copytree(REPO / "configs", project / "configs")
    serving_yaml = project / "configs" / "deploy" / "serving.yaml"  # the replicas check the aliases every second
    serving_yaml.write_text(serving_yaml.read_text().replace("poll_interval_s: 30", "poll_interval_s: 1"))
    (project / "dags").mkdir()
    shutil.copy2(PROBE_DAG, project / "dags" / PROBE_DAG.name)  # the workers read it from their clones
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    subprocess.run([str(Path(sys.executable).with_name("dvc")), "init", "-q"], cwd=project, check=True)
    subprocess.run(["git", "add", "-A"], cwd=project, check=True)
    subprocess.run(["git", "-c", "user.name=stack-test", "-c", "user.email=stack-test@localhost", "commit", "-q",
                    "-m", "project"], cwd=project, check=True)
    s3_port, mlflow_port, bal, r1, r2, af = _free_ports(6)
    tag = uuid.uuid4().hex[:10]
    cfg = {
        "state_dir": str(base / "state"), "project": str(project), "niceness": 10, "start_timeout_s": 240,
        "s3": {"port": s3_port, "mlflow_bucket": f"mlflow-{tag}", "dvc_bucket": f"dvc-{tag}"},
        "postgres": {"mlflow_db": f"t_{tag}_mlflow", "mlflow_auth_db": f"t_{tag}_auth",
                     "airflow_db": f"t_{tag}_airflow"},
        "mlflow": {"port": mlflow_port},
        "serving": {"balancer_port": bal, "replica_ports": [r1, r2], "health_interval_s": 0.5},
        "airflow": {"api_port": af, "broker_url": f"redis://{REDIS[0]}:{REDIS[1]}/15", "queue": f"test-{tag}"},
    }
    path = base / "stack.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    up = _stack_cli(path, "up")
    st = Stack(load_stack_config(path), REPO)
    assert up.returncode == 0, up.stdout + up.stderr + _logs(st)
    yield st, path, up.stdout
    if st.pids.is_dir() and any(st.pids.glob("*.json")):  # the down test did not run or failed
        _stack_cli(path, "down", "--purge")


def _logs(st: Stack) -> str:
    return "".join(f"\n--- {p.name}\n{p.read_text(errors='replace')[-2000:]}" for p in sorted(st.logs.glob("*.log"))) \
        if st.logs.is_dir() else ""


def _creds(st: Stack) -> dict:
    return json.loads((st.state / "credentials.json").read_text())


def test_up_reports_every_url_and_keeps_secrets_private(stack):
    st, _, out = stack
    assert "stack up" in out and st.mlflow_url in out and st.balancer_url in out
    assert all(st.status().values()), st.status()
    for name in ("credentials.json", "env.sh", "audit.key", "mlflow_basic_auth.ini", "airflow-celery.env",
                 "airflow/simple_auth_manager_passwords.json.generated"):
        assert (st.state / name).stat().st_mode & 0o777 == 0o600, name
    creds = _creds(st)
    assert set(creds["mlflow_users"]) == {"admin", "alice", "bob", "pipeline-bot", "serving"}
    summary = json.loads((st.state / "stack.json").read_text())
    assert summary["serving_url"] == st.balancer_url and summary["mlflow_tracking_uri"] == st.mlflow_url


def test_second_up_reports_already_running_and_starts_nothing(stack):
    st, path, _ = stack
    before = {n: st.record(n)["pid"] for n in st.components()}
    again = _stack_cli(path, "up")
    assert again.returncode == 0, again.stderr
    assert "already running" in again.stdout
    assert {n: st.record(n)["pid"] for n in st.components()} == before


def test_mlflow_run_artifact_lands_in_the_s3_bucket_as_an_authenticated_user(stack, monkeypatch, tmp_path):
    st, _, _ = stack
    alice = _creds(st)["mlflow_users"]["alice"]
    anonymous = httpx.get(f"{st.mlflow_url}/api/2.0/mlflow/experiments/search?max_results=1", timeout=30)
    assert anonymous.status_code == 401  # the auth app is on: nobody is anonymous
    wrong = httpx.get(f"{st.mlflow_url}/api/2.0/mlflow/experiments/search?max_results=1",
                      auth=("alice", "not-her-password"), timeout=30)
    assert wrong.status_code == 401

    import mlflow
    from mlflow import MlflowClient

    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL"):
        monkeypatch.delenv(k, raising=False)  # the client needs no S3 keys: the server proxies artifacts
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", alice)
    client = MlflowClient(tracking_uri=st.mlflow_url)
    exp = client.create_experiment(f"stack-{uuid.uuid4().hex[:8]}")
    run = client.create_run(exp)
    art = tmp_path / "weights.bin"
    art.write_bytes(os.urandom(4096))
    client.log_artifact(run.info.run_id, str(art))
    client.set_terminated(run.info.run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")

    me = httpx.get(f"{st.mlflow_url}/api/2.0/mlflow/users/current", auth=("alice", alice), timeout=30)
    assert me.status_code == 200 and me.json()["user"]["username"] == "alice"
    # the server recorded who created it: alice (authenticated) MANAGEs it, bob gets default_permission READ
    admin = ("admin", _creds(st)["mlflow_users"]["admin"])
    for user, expected in (("alice", "MANAGE"), ("bob", "READ")):
        perm = httpx.get(f"{st.mlflow_url}/api/3.0/mlflow/users/permissions/get", auth=admin, timeout=30,
                         params={"username": user, "resource_type": "experiment", "resource_id": exp})
        assert perm.status_code == 200 and perm.json()["permission"] == expected, (user, perm.text)

    s3 = st.s3_client()
    key = f"{st.cfg.s3.mlflow_prefix}/{exp}/{run.info.run_id}/artifacts/weights.bin"
    obj = s3.get_object(Bucket=st.cfg.s3.mlflow_bucket, Key=key)
    assert obj["Body"].read() == art.read_bytes()
    mlflow.set_tracking_uri(None)  # type: ignore[arg-type]


def test_dvc_push_puts_the_file_in_the_dvc_bucket(stack):
    st, _, _ = stack
    dvc = str(Path(sys.executable).with_name("dvc"))
    payload = os.urandom(2048)
    (st.project / "small.bin").write_bytes(payload)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}  # keys come from .dvc/config.local
    for args in (["add", "-q", "small.bin"], ["push"]):
        r = subprocess.run([dvc, *args], cwd=st.project, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
    assert "stack" in (st.project / ".dvc" / "config.local").read_text()
    assert "stack" not in (st.project / ".dvc" / "config").read_text()  # the committed config is untouched
    md5 = hashlib.md5(payload).hexdigest()
    key = f"{st.cfg.s3.dvc_prefix}/files/md5/{md5[:2]}/{md5[2:]}"
    assert st.s3_client().get_object(Bucket=st.cfg.s3.dvc_bucket, Key=key)["Body"].read() == payload


def _replica_counts(url: str, n: int) -> dict[str, int]:
    seen: dict[str, int] = {}
    with httpx.Client(timeout=30) as c:
        for _ in range(n):
            r = c.get(f"{url}/v2/health/live")
            assert r.status_code == 200, r.text
            name = r.headers["x-cvplatform-replica"]
            seen[name] = seen.get(name, 0) + 1
    return seen


def test_balancer_spreads_requests_over_both_replicas(stack):
    st, _, _ = stack
    seen = _replica_counts(st.balancer_url, 10)
    assert seen == {"replica-1": 5, "replica-2": 5}
    # a status the replica sets passes through unchanged: no champion is registered, so not ready (503)
    ready = httpx.get(f"{st.balancer_url}/v2/health/ready", timeout=30)
    assert ready.status_code == 503 and ready.headers["x-cvplatform-replica"] in seen
    # the replica's Date and Server headers arrive once (the balancer adds no second copy)
    assert len(ready.headers.get_list("date")) == 1 and len(ready.headers.get_list("server")) == 1
    index = httpx.get(f"{st.balancer_url}/", timeout=30).json()
    assert index["model"] == "cvplatform" and index["ready"] is False  # both follow the registry's model
    status = httpx.get(f"{st.balancer_url}/_balancer/status", timeout=30).json()
    assert [r["healthy"] for r in status["replicas"]] == [True, True]


def test_a_stopped_replica_is_skipped_and_up_restarts_only_it(stack):
    st, path, _ = stack
    rec = st.record("replica-1")
    others = {n: st.record(n)["pid"] for n in st.components() if n != "replica-1"}
    os.killpg(int(rec["pgid"]), signal.SIGTERM)
    deadline = time.monotonic() + 60
    while group_members(int(rec["pgid"])) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not st.running("replica-1")
    # every request is still answered: refused connections fail over, health checks take it out of rotation
    assert _replica_counts(st.balancer_url, 6) == {"replica-2": 6}
    again = _stack_cli(path, "up")
    assert again.returncode == 0, again.stdout + again.stderr + _logs(st)
    assert "started: replica-1" in again.stdout
    assert {n: st.record(n)["pid"] for n in others} == others  # nothing else restarted
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # back in rotation after its next health check
        if set(_replica_counts(st.balancer_url, 4)) == {"replica-1", "replica-2"}:
            break
        time.sleep(0.5)
    assert set(_replica_counts(st.balancer_url, 4)) == {"replica-1", "replica-2"}


def test_both_replicas_follow_the_champion_alias_of_the_stacks_registry(stack, monkeypatch, tmp_path):
    """pipeline-bot registers, alice (granted EDIT) approves and promotes; both replicas load the champion
    (fetched through the MLflow server from the S3 bucket, audit trail checked with the stack's key)."""
    from cvplatform.registry import approve, promote, register_model
    from tests.conftest import build_params
    from tests.fixtures.serving_models import colour_image, encode_png
    from tests.unit.registry.project import make_project, onnx_model_bytes

    st, _, _ = stack
    creds = _creds(st)["mlflow_users"]
    name = "cvplatform"  # registry.model_name of the stack's project: what the replicas serve
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL",
              "CVPLATFORM_AUDIT_KEY", "AIRFLOW_CTX_DAG_RUN_ID"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", st.mlflow_url)
    monkeypatch.setenv("CVPLATFORM_AUDIT_KEY_FILE", str(st.state / "audit.key"))
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "pipeline-bot")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", creds["pipeline-bot"])
    project = make_project(tmp_path / "project", onnx_model_bytes(seed=5))
    params = build_params(f"registry.model_name={name}")
    res = register_model(params, root=project.root)
    assert (res.version, res.author) == ("1", "pipeline-bot")

    grant = httpx.post(f"{st.mlflow_url}/api/3.0/mlflow/users/permissions/grant", timeout=30,
                       auth=("admin", creds["admin"]),
                       json={"username": "alice", "resource_type": "registered_model", "resource_id": name,
                             "permission": "EDIT"})
    assert grant.status_code == 200, grant.text
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", creds["alice"])
    ok = approve(name, 1, comment="stack test", params=params, root=project.root)
    assert (ok.reviewer, ok.identity.verified) == ("alice", True)
    promote(name, 1, params=params, root=project.root)

    ready: set[str] = set()
    deadline = time.monotonic() + 120
    with httpx.Client(timeout=30) as c:
        while ready != {"replica-1", "replica-2"}:
            assert time.monotonic() < deadline, f"replicas ready: {ready}" + _logs(st)
            r = c.get(f"{st.balancer_url}/v2/health/ready")
            if r.status_code == 200:
                ready.add(r.headers["x-cvplatform-replica"])
            else:
                time.sleep(0.3)
        png = encode_png(colour_image(0, seed=0))
        served = {}
        for _ in range(4):
            r = c.post(f"{st.balancer_url}/v1/predict", files=[("files", ("0.png", png, "image/png"))])
            assert r.status_code == 200, r.text
            pred = r.json()["predictions"][0]
            served[r.headers["x-cvplatform-replica"]] = (pred["model"], str(pred["version"]), pred["variant"])
    assert served == {"replica-1": (name, "1", "champion"), "replica-2": (name, "1", "champion")}
    keys = [o["Key"] for o in st.s3_client().list_objects_v2(Bucket=st.cfg.s3.mlflow_bucket)["Contents"]]
    assert any(k.endswith(".onnx") for k in keys), keys  # the served model's file lives in the S3 bucket


def test_a_second_state_folder_on_the_same_databases_is_refused_clearly(stack, tmp_path):
    """Lost credentials.json (another state folder, same auth database): up stops with what to do."""
    st, path, _ = stack
    cfg = yaml.safe_load(path.read_text())
    s3_port, mlflow_port, bal, r1, r2, af = _free_ports(6)
    cfg.update({"state_dir": str(tmp_path / "other-state"), "mlflow": {"port": mlflow_port},
                "serving": {"balancer_port": bal, "replica_ports": [r1, r2]},
                "airflow": {**cfg["airflow"], "api_port": af}})
    cfg["s3"] = {**cfg["s3"], "port": s3_port}
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(cfg))
    up = _stack_cli(other, "up")
    try:
        assert up.returncode != 0
        assert "rejects the admin password" in up.stderr and "make stack-down PURGE=1" in up.stderr, up.stderr
        assert "make stack-down" in up.stderr.splitlines()[-1]  # and how to stop what did start
    finally:
        down = _stack_cli(other, "down")  # no purge: the databases belong to the module's stack
    assert down.returncode == 0 and "mlflow" in down.stdout, down.stdout + down.stderr
    assert all(st.status().values())  # the first stack is untouched


def _processes_using(folder: Path) -> list[str]:
    """Live processes whose working folder or command line is inside ``folder`` (the ps view of orphans)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state not in ("Z", "X") and (cwd.startswith(str(folder)) or str(folder) in cmd):
            out.append(f"{entry}: cwd={cwd} cmd={cmd[:200]}")
    return out


def _airflow_api(st: Stack):
    client = httpx.Client(base_url=f"{st.airflow_url}/api/v2", timeout=60,
                          headers={"Authorization": f"Bearer {st.airflow_token('admin')}"})
    return client


def test_airflow_runs_the_tasks_on_both_celery_workers_each_in_its_own_clone(stack):
    """The probe DAG (four tasks holding a one-task worker for 4 s each), triggered through the REST API:
    task instances ran on worker-1 and on worker-2, each in, and from the DAG file of, its own clone."""
    st, path, _ = stack
    assert httpx.get(f"{st.airflow_url}/api/v2/dags", timeout=60).status_code == 401  # no anonymous access
    workers = list(st.cfg.airflow.workers)
    assert workers == ["worker-1", "worker-2"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=st.project, capture_output=True, text=True,
                          check=True).stdout.strip()
    for w in workers:
        wd = st.worker_dir(w)
        assert wd != st.project and (wd / ".git").is_dir()
        assert subprocess.run(["git", "rev-parse", "HEAD"], cwd=wd, capture_output=True, text=True,
                              check=True).stdout.strip() == head
        assert os.readlink(f"/proc/{st.record(f'airflow-{w}')['pid']}/cwd") == str(wd)
    status = _stack_cli(path, "status")
    assert status.returncode == 0, status.stdout + status.stderr
    for name in ("airflow-api-server", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
                 "airflow-worker-1", "airflow-worker-2"):
        assert f"{name} " in status.stdout and status.stdout.split(name, 1)[1].split()[0] == "running", status.stdout
    settings = dict(line.split("=", 1) for line in (st.state / "airflow-celery.env").read_text().splitlines()
                    if "=" in line and not line.startswith("#"))
    assert settings["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert settings["AIRFLOW__API_AUTH__JWT_SECRET"] == _creds(st)["airflow_jwt_secret"]
    assert settings["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == f"{st.airflow_url}/execution/"

    dag = "cvplatform_stack_probe"
    with _airflow_api(st) as api:
        deadline = time.monotonic() + 120
        while (r := api.get(f"/dags/{dag}")).status_code != 200:  # parsed by the dag-processor
            assert time.monotonic() < deadline, r.text + _logs(st)
            time.sleep(1)
        assert r.json()["is_paused"] is False
        run = api.post(f"/dags/{dag}/dagRuns", json={"logical_date": None})
        assert run.status_code == 200, run.text
        run_id = run.json()["dag_run_id"]
        deadline = time.monotonic() + 180
        while (state := api.get(f"/dags/{dag}/dagRuns/{run_id}").json()["state"]) not in ("success", "failed"):
            assert time.monotonic() < deadline, f"run still {state}" + _logs(st)
            time.sleep(1)
        tis = api.get(f"/dags/{dag}/dagRuns/{run_id}/taskInstances").json()["task_instances"]
        assert state == "success", [(t["task_id"], t["state"], t["hostname"]) for t in tis] + [_logs(st)]
        reports = {}
        for ti in tis:
            x = api.get(f"/dags/{dag}/dagRuns/{run_id}/taskInstances/{ti['task_id']}/xcomEntries/return_value",
                        params={"stringify": False})
            assert x.status_code == 200, x.text
            reports[ti["task_id"]] = (ti["hostname"], x.json()["value"])
    assert len(reports) == 4
    assert {host for host, _ in reports.values()} == set(workers), reports  # both Celery workers ran tasks
    for task_id, (host, rep) in reports.items():
        wd = str(st.worker_dir(host))
        assert rep["hostname"] == host, (task_id, rep)
        assert (rep["cwd"], rep["root"]) == (wd, wd), (task_id, rep)  # its worker's clone, not the project
        assert rep["dag_file"] == str(Path(wd) / "dags" / PROBE_DAG.name), (task_id, rep)


def test_stack_down_leaves_no_process(stack):
    st, path, _ = stack
    pgids = {n: int(st.record(n)["pgid"]) for n in st.components()}
    assert all(group_members(g) for g in pgids.values())
    trees = {n: process_tree(g) for n, g in pgids.items()}  # with descendants in groups of their own
    assert _processes_using(st.state)  # the probe sees the running stack (its workers run in the state folder)
    down = _stack_cli(path, "down", "--purge")
    assert down.returncode == 0, down.stdout + down.stderr
    assert {n: group_members(g) for n, g in pgids.items()} == {n: [] for n in pgids}
    assert {n: alive(t) for n, t in trees.items()} == {n: [] for n in trees}
    assert _processes_using(st.state) == []
    for name, port in [("s3", st.cfg.s3.port), ("mlflow", st.cfg.mlflow.port),
                       ("balancer", st.cfg.serving.balancer_port), ("airflow", st.cfg.airflow.api_port),
                       *st.replicas()]:
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"{name} still listens on {port}"
    assert not (st.project / ".dvc" / "config.local").exists()  # the project had none before the stack
    assert not st.state.exists()
    import psycopg2

    conn = psycopg2.connect(dbname="postgres", **PG)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT datname FROM pg_database WHERE datname = ANY(%s)",
                        ([st.cfg.postgres.mlflow_db, st.cfg.postgres.mlflow_auth_db, st.cfg.postgres.airflow_db],))
            assert cur.fetchall() == []
    finally:
        conn.close()
    import redis

    broker = redis.Redis.from_url(st.cfg.airflow.broker_url)
    assert [k for k in st.broker_keys() if broker.exists(k)] == []  # the stack's queue is gone from Redis
    broker.close()
    again = _stack_cli(path, "down")
    assert again.returncode == 0 and "nothing was running" in again.stdout

