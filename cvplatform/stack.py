"""The production topology on one machine: ``make stack`` / ``make stack-down`` (``python -m cvplatform.stack``).

``up`` starts, as child processes in their own sessions, each bound to ``host`` on the ports of
``configs/stack.yaml`` (:class:`StackConfig`), with a pid file and a log under ``state_dir``
(default ``.cvplatform/stack/``):

1. ``s3``: a local S3 endpoint (moto in server mode) when ``s3.start_local``; then the MLflow and
   DVC buckets are created if absent (on any endpoint: moto, MinIO or AWS);
2. the PostgreSQL databases of MLflow, of MLflow's auth app and of Airflow, created if absent on
   the PostgreSQL server this machine runs (the stack never starts or stops PostgreSQL);
3. ``mlflow``: ``mlflow server --app-name basic-auth`` with the PostgreSQL backend store and
   ``--artifacts-destination s3://<mlflow_bucket>/<mlflow_prefix>`` (clients get
   ``mlflow-artifacts:/`` URIs, the server alone talks to S3); the admin and ``mlflow.users``
   accounts are created with generated passwords, kept in ``state_dir/credentials.json`` (0600);
4. DVC: the project's default remote is ``s3://<dvc_bucket>/<dvc_prefix>`` with the endpoint
   and keys, written to ``.dvc/config.local`` (git-ignored; the committed ``.dvc/config`` is never
   rewritten; the previous ``config.local`` is restored by ``down``);
5. ``replica-N``: one ``cvplatform serve`` per ``serving.replica_ports`` port, following the
   registry aliases of that MLflow server (as ``mlflow.serving_user``);
6. ``balancer``: :mod:`cvplatform.serving.balancer`, the one entry point spreading requests
   over the healthy replicas;
7. Airflow 3 with the CeleryExecutor (``airflow.enabled``): ``airflow db migrate`` on its own
   PostgreSQL database, then ``airflow-api-server`` (UI, REST API, execution API),
   ``airflow-scheduler``, ``airflow-dag-processor``, ``airflow-triggerer`` and one
   ``airflow celery worker`` per ``airflow.workers`` name (``airflow-worker-1``, ...): broker the
   machine's Redis (``airflow.broker_url``), Celery results in the Airflow database, one JWT secret
   and the execution API URL shared by all (:func:`airflow_celery_env`). Each worker runs in its own
   clone of the project at the commit of ``up`` (``state_dir/workers/<name>``: its working folder,
   ``CVPLATFORM_ROOT`` and DAG folder) and its task instances carry its name as ``hostname``
   (:mod:`cvplatform.airflow_hostname`).

``up`` is idempotent: with everything running it says so and changes nothing; services that
died are started again. ``down`` stops every process it started (SIGTERM to the process group,
SIGKILL after a grace period) and checks that none is left. ``status`` prints what runs.
``state_dir/stack.json`` holds the URLs, ``state_dir/env.sh`` (0600) the variables a client
needs (``source .cvplatform/stack/env.sh`` then ``cvplatform ...`` / ``dvc push``).

``state_dir/airflow-celery.env`` (0600) lists the CeleryExecutor settings every Airflow process got.

Example:
    >>> cfg = StackConfig()
    >>> cfg.serving.replica_ports
    (8181, 8182)
    >>> Stack(cfg, repo=Path("/srv/cv")).s3_endpoint  # doctest: +SKIP
    'http://127.0.0.1:9100'
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from cvplatform.config import StrictModel, load_config
from cvplatform.errors import CVPlatformError

log = logging.getLogger(__name__)

#: Airflow's own services, in start order; the Celery workers (``airflow.workers``) start after them.
AIRFLOW_SERVICES = ("api-server", "scheduler", "dag-processor", "triggerer")
SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
DEFAULT_CONFIG = "configs/stack.yaml"
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"
_BUCKET = r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$"
_DB = r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"


class StackError(CVPlatformError):
    """The stack could not be configured, started or stopped."""


# --------------------------------------------------------------------------- configuration
class S3Config(StrictModel):
    start_local: bool = True
    """Start a local S3 endpoint (moto server mode, in memory); false = use ``endpoint_url`` as is."""
    port: int = Field(9100, ge=1, le=65535)
    """Port of the local endpoint."""
    endpoint_url: str | None = None
    """S3 endpoint; None = the local one when ``start_local``, else AWS's default endpoint."""
    region: str = Field("us-east-1", min_length=1)
    access_key_id: str | None = "cvplatform-local"
    """None = boto3's default credential chain (environment, profile, instance role)."""
    secret_access_key: str | None = "cvplatform-local"
    create_buckets: bool = True
    mlflow_bucket: str = Field("cvplatform-mlflow", pattern=_BUCKET)
    mlflow_prefix: str = "artifacts"
    dvc_bucket: str = Field("cvplatform-dvc", pattern=_BUCKET)
    dvc_prefix: str = "dvc"

    @model_validator(mode="after")
    def _keys_together(self) -> S3Config:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("access_key_id and secret_access_key are set together (both null = default chain)")
        return self


class PostgresConfig(StrictModel):
    host: str = "127.0.0.1"
    port: int = Field(5432, ge=1, le=65535)
    user: str = Field("postgres", min_length=1)
    password_env: str = "CVPLATFORM_PG_PASSWORD"
    create_databases: bool = True
    mlflow_db: str = Field("cvplatform_mlflow", pattern=_DB)
    mlflow_auth_db: str = Field("cvplatform_mlflow_auth", pattern=_DB)
    airflow_db: str = Field("cvplatform_airflow", pattern=_DB)

    @model_validator(mode="after")
    def _distinct(self) -> PostgresConfig:
        names = [self.mlflow_db, self.mlflow_auth_db, self.airflow_db]
        if len(set(names)) != 3:
            raise ValueError(f"mlflow_db, mlflow_auth_db and airflow_db must differ (each migrates its own "
                             f"schema), got {names}")
        return self

    def password(self) -> str | None:
        return os.environ.get(self.password_env) or None

    def url(self, db: str, driver: str = "postgresql+psycopg2") -> str:
        """SQLAlchemy URL of database ``db`` (the password, if any, from ``password_env``)."""
        from urllib.parse import quote

        pw = self.password()
        auth = quote(self.user, safe="") + (f":{quote(pw, safe='')}" if pw else "")
        return f"{driver}://{auth}@{self.host}:{self.port}/{db}"


class MlflowConfig(StrictModel):
    port: int = Field(5100, ge=1, le=65535)
    workers: int = Field(1, ge=1, le=32)
    default_permission: Literal["READ", "EDIT", "MANAGE", "NO_PERMISSIONS"] = "READ"
    admin_user: str = Field("admin", pattern=_NAME)
    users: tuple[str, ...] = ("alice", "bob", "pipeline-bot", "serving")
    serving_user: str = Field("serving", pattern=_NAME)

    @field_validator("users")
    @classmethod
    def _names(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        import re

        bad = [u for u in v if not re.match(_NAME, u)]
        if bad:
            raise ValueError(f"user names must match {_NAME}, got {bad}")
        return v

    @model_validator(mode="after")
    def _serving_user_exists(self) -> MlflowConfig:
        if self.serving_user not in self.users:
            raise ValueError(f"serving_user {self.serving_user!r} must be one of users {list(self.users)}")
        if self.admin_user in self.users:
            raise ValueError(f"admin_user {self.admin_user!r} is created by the auth app: do not list it in users")
        return self


class DvcConfig(StrictModel):
    configure_remote: bool = True
    remote_name: str = Field("stack", pattern=_NAME)


class ServingStackConfig(StrictModel):
    balancer_port: int = Field(8180, ge=1, le=65535)
    replica_ports: tuple[int, ...] = Field((8181, 8182), min_length=1, max_length=16)
    health_path: str = Field("/v2/health/live", pattern=r"^/")
    health_interval_s: float = Field(2.0, gt=0.0, le=600.0)
    config: str = "configs/deploy/serving.yaml"


class AirflowStackConfig(StrictModel):
    enabled: bool = True
    """Start Airflow with the CeleryExecutor (false = the stack without Airflow)."""
    api_port: int = Field(8280, ge=1, le=65535)
    """Port of the api-server: UI, REST API and the execution API the workers' tasks call."""
    broker_url: str = Field("redis://127.0.0.1:6379/0", pattern=r"^rediss?://")
    """Celery broker: the Redis server this machine runs (not started by the stack)."""
    queue: str = Field("default", pattern=_NAME)
    """Celery queue the tasks are sent to and every worker consumes."""
    workers: tuple[str, ...] = Field(("worker-1", "worker-2"), min_length=1, max_length=16)
    """One ``airflow celery worker`` per name (its Celery hostname and the ``hostname`` of its task instances)."""
    worker_concurrency: int = Field(1, ge=1, le=64)
    """Task instances each worker runs at once."""
    parallelism: int = Field(4, ge=1, le=1024)
    """Task instances running at once in the whole installation."""
    dags_folder: str = "dags"
    """DAG files, relative to ``project`` (each worker reads them from its own clone)."""
    users: tuple[str, ...] = ("admin:ADMIN", "alice:USER", "bob:USER")
    """SimpleAuthManager ``NAME:ROLE`` accounts (passwords generated once, in credentials.json)."""
    pipeline_user: str = Field("pipeline-bot", pattern=_NAME)
    """``CVPLATFORM_USER`` of the tasks, and the MLflow account they use when it is in ``mlflow.users``."""

    @field_validator("workers")
    @classmethod
    def _worker_names(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        import re

        bad = [w for w in v if not re.match(r"^[A-Za-z0-9][A-Za-z0-9\-]{0,62}$", w)]
        if bad:
            raise ValueError(f"worker names are host names (letters, digits, '-'), got {bad}")
        if len(set(v)) != len(v):
            raise ValueError(f"worker names must differ, got {list(v)}")
        return v

    @field_validator("users")
    @classmethod
    def _user_roles(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        import re

        bad = [u for u in v if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*:(VIEWER|USER|OP|ADMIN)$", u)]
        if bad:
            raise ValueError(f"users are NAME:ROLE with ROLE one of VIEWER, USER, OP, ADMIN, got {bad}")
        return v

    @field_validator("dags_folder")
    @classmethod
    def _relative(cls, v: str) -> str:
        if Path(v).is_absolute() or ".." in Path(v).parts:
            raise ValueError(f"dags_folder is a folder inside the project (relative, no '..'), got {v!r}: "
                             "each worker reads it from its own clone of the project")
        return v

    def user_names(self) -> list[str]:
        return [u.split(":", 1)[0] for u in self.users]


class StackConfig(StrictModel):
    """``configs/stack.yaml``: every key documented there.

    Example:
        >>> StackConfig(serving={"replica_ports": [9001, 9001]})  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        pydantic_core._pydantic_core.ValidationError: ports must all differ
    """

    host: str = Field("127.0.0.1", min_length=1)
    state_dir: str = ".cvplatform/stack"
    project: str = "."
    niceness: int = Field(0, ge=0, le=19)
    start_timeout_s: float = Field(180.0, gt=0.0)
    s3: S3Config = S3Config()
    postgres: PostgresConfig = PostgresConfig()
    mlflow: MlflowConfig = MlflowConfig()
    dvc: DvcConfig = DvcConfig()
    serving: ServingStackConfig = ServingStackConfig()
    airflow: AirflowStackConfig = AirflowStackConfig()

    @model_validator(mode="after")
    def _ports_differ(self) -> StackConfig:
        ports = [self.mlflow.port, self.serving.balancer_port, *self.serving.replica_ports]
        if self.airflow.enabled:
            ports.append(self.airflow.api_port)
        if self.s3.start_local:
            ports.append(self.s3.port)
        dup = sorted({p for p in ports if ports.count(p) > 1})
        if dup:
            raise ValueError(f"ports must all differ: {dup} used twice (s3.port, mlflow.port, "
                             "serving.balancer_port, serving.replica_ports, airflow.api_port)")
        return self


def load_stack_config(path: str | os.PathLike[str] | None, overrides: Mapping[str, Any] | None = None) -> StackConfig:
    """Load ``configs/stack.yaml`` (None = defaults); ``overrides`` replace top-level sections' keys.

    Example:
        >>> load_stack_config(None, {"mlflow": {"port": 5999}}).mlflow.port
        5999
    """
    from cvplatform.config import load_model, read_yaml

    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        raw = read_yaml(path)
        data = dict(raw or {}) if isinstance(raw, Mapping) else raw
        if not isinstance(data, dict):
            return load_config(path, StackConfig)  # raises the ConfigError naming the file
    for key, value in (overrides or {}).items():
        if isinstance(value, Mapping) and isinstance(data.get(key), Mapping):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return load_model(StackConfig, data, source)


# --------------------------------------------------------------------------- processes
def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, process group, start time in clock ticks) of ``pid`` from /proc, or None when gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()  # after "pid (comm) "
    return fields[0], int(fields[2]), int(fields[19])


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid``.

    Example:
        >>> os.getpid() in group_members(os.getpgid(0))
        True
    """
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _proc_stat(int(entry))
            if st is not None and st[1] == pgid and st[0] not in ("Z", "X"):
                out.append(int(entry))
    return out


def process_tree(pgid: int) -> dict[int, int]:
    """pid -> start time of every live member of process group ``pgid`` and of all their descendants,
    including those that moved to a process group of their own (Airflow's task processes do).

    Example:
        >>> os.getpid() in process_tree(os.getpgid(0))
        True
    """
    table: dict[int, tuple[str, int, int, int]] = {}  # pid -> (state, ppid, pgrp, start)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        f = raw[raw.rindex(")") + 2:].split()
        if f[0] not in ("Z", "X"):
            table[int(entry)] = (f[0], int(f[1]), int(f[2]), int(f[19]))
    tree = {pid: v[3] for pid, v in table.items() if v[2] == pgid}
    grew = True
    while grew:
        grew = False
        for pid, v in table.items():
            if pid not in tree and v[1] in tree:
                tree[pid] = v[3]
                grew = True
    return tree


def alive(tree: Mapping[int, int]) -> list[int]:
    """The processes of ``tree`` (pid -> start time, :func:`process_tree`) still running (same start time)."""
    out = []
    for pid, start in tree.items():
        st = _proc_stat(pid)
        if st is not None and st[0] not in ("Z", "X") and st[2] == start:
            out.append(pid)
    return sorted(out)


def port_open(host: str, port: int) -> bool:
    """True if something accepts TCP connections on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        return s.connect_ex((host, port)) == 0


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (0600), atomically."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-n:]
    except OSError:
        return "(no log)"


def _http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return 200 <= r.status < 300
    except (OSError, urllib.error.URLError):
        return False


# --------------------------------------------------------------------------- the stack
class Stack:
    """One stack: its config, repository and state folder.

    Args:
        config: the stack configuration.
        repo: the repository (``configs/``, relative paths); default the current folder.
    """

    def __init__(self, config: StackConfig, repo: str | os.PathLike[str] | None = None) -> None:
        self.cfg = config
        self.repo = Path(repo or Path.cwd()).resolve()
        self.state = (self.repo / config.state_dir).resolve()
        self.project = (self.repo / config.project).resolve()
        self.logs = self.state / "logs"
        self.pids = self.state / "pids"
        self._procs: dict[str, subprocess.Popen] = {}  # children of this launcher (reaped while stopping)

    # -- derived settings ----------------------------------------------------------------------------
    @property
    def host(self) -> str:
        return self.cfg.host

    @property
    def s3_endpoint(self) -> str | None:
        """The S3 endpoint URL every component uses (None = AWS's default)."""
        if self.cfg.s3.endpoint_url:
            return self.cfg.s3.endpoint_url.rstrip("/")
        if self.cfg.s3.start_local:
            return f"http://{self.host}:{self.cfg.s3.port}"
        return None

    @property
    def mlflow_url(self) -> str:
        return f"http://{self.host}:{self.cfg.mlflow.port}"

    @property
    def balancer_url(self) -> str:
        return f"http://{self.host}:{self.cfg.serving.balancer_port}"

    @property
    def mlflow_artifacts(self) -> str:
        s = self.cfg.s3
        return f"s3://{s.mlflow_bucket}/{s.mlflow_prefix.strip('/')}".rstrip("/")

    @property
    def dvc_remote_url(self) -> str:
        s = self.cfg.s3
        return f"s3://{s.dvc_bucket}/{s.dvc_prefix.strip('/')}".rstrip("/")

    def replicas(self) -> list[tuple[str, int]]:
        """(name, port) of every serving replica."""
        return [(f"replica-{i + 1}", p) for i, p in enumerate(self.cfg.serving.replica_ports)]

    @property
    def airflow_url(self) -> str:
        return f"http://{self.host}:{self.cfg.airflow.api_port}"

    @property
    def airflow_home(self) -> Path:
        """``AIRFLOW_HOME`` of every Airflow process: airflow.cfg, task logs, the passwords file."""
        return self.state / "airflow"

    def worker_dir(self, worker: str) -> Path:
        """The working copy of worker ``worker``: a clone of the project at its commit of ``up``."""
        return self.state / "workers" / worker

    def airflow_components(self) -> list[str]:
        """The Airflow processes, in start order (api-server first, the Celery workers last)."""
        a = self.cfg.airflow
        if not a.enabled:
            return []
        return [f"airflow-{c}" for c in AIRFLOW_SERVICES] + [f"airflow-{w}" for w in a.workers]

    def components(self) -> list[str]:
        """Every process the stack runs, in start order."""
        names = ["s3"] if self.cfg.s3.start_local else []
        return [*names, "mlflow", *(n for n, _ in self.replicas()), "balancer", *self.airflow_components()]

    def s3_env(self) -> dict[str, str]:
        """AWS variables for a process that talks to the stack's S3 (boto3, MLflow, DVC)."""
        s = self.cfg.s3
        env = {"AWS_DEFAULT_REGION": s.region}
        if s.access_key_id is not None and s.secret_access_key is not None:
            env.update({"AWS_ACCESS_KEY_ID": s.access_key_id, "AWS_SECRET_ACCESS_KEY": s.secret_access_key})
        if self.s3_endpoint:
            env["MLFLOW_S3_ENDPOINT_URL"] = self.s3_endpoint
            env["AWS_ENDPOINT_URL_S3"] = self.s3_endpoint
        return env

    def s3_client(self) -> Any:
        """A boto3 S3 client for the stack's endpoint and keys."""
        import boto3

        s = self.cfg.s3
        kw: dict[str, Any] = {"region_name": s.region}
        if self.s3_endpoint:
            kw["endpoint_url"] = self.s3_endpoint
        if s.access_key_id is not None:
            kw.update(aws_access_key_id=s.access_key_id, aws_secret_access_key=s.secret_access_key)
        return boto3.client("s3", **kw)

    # -- secrets -------------------------------------------------------------------------------------
    def credentials(self) -> dict[str, Any]:
        """The generated secrets (``state_dir/credentials.json``, 0600), created once and then reused."""
        path = self.state / "credentials.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {}
        users = dict(data.get("mlflow_users") or {})
        changed = False
        for name in (self.cfg.mlflow.admin_user, *self.cfg.mlflow.users):
            if not users.get(name):
                users[name] = secrets.token_urlsafe(24)
                changed = True
        for key in ("serving_admin_token", "mlflow_flask_secret", "audit_key", "airflow_jwt_secret",
                    "airflow_api_secret_key", "airflow_fernet_key"):
            if not data.get(key):
                if key == "audit_key":
                    data[key] = secrets.token_hex(32)
                elif key == "airflow_fernet_key":  # what cryptography.fernet.Fernet.generate_key() returns
                    data[key] = base64.urlsafe_b64encode(os.urandom(32)).decode()
                else:
                    data[key] = secrets.token_urlsafe(32)
                changed = True
        af_users = dict(data.get("airflow_users") or {})
        for name in self.cfg.airflow.user_names():
            if not af_users.get(name):
                af_users[name] = secrets.token_urlsafe(18)
                changed = True
        data["mlflow_users"] = users
        data["airflow_users"] = af_users
        if changed or not path.is_file():
            self.state.mkdir(parents=True, exist_ok=True)
            _write_private(path, json.dumps(data, indent=2) + "\n")
            _write_private(self.state / "audit.key", data["audit_key"] + "\n")
        return data

    # -- pid files -------------------------------------------------------------------------------------
    def _pidfile(self, name: str) -> Path:
        return self.pids / f"{name}.json"

    def record(self, name: str) -> dict[str, Any] | None:
        try:
            return dict(json.loads(self._pidfile(name).read_text(encoding="utf-8")))
        except (OSError, ValueError):
            return None

    def running(self, name: str) -> bool:
        """True if ``name``'s recorded process is alive (and is the same process: start time checked)."""
        rec = self.record(name)
        if rec is None:
            return False
        st = _proc_stat(int(rec["pid"]))
        return st is not None and st[0] not in ("Z", "X") and st[2] == int(rec["start"])

    def spawn(self, name: str, argv: Sequence[str], env: Mapping[str, str], cwd: Path) -> int:
        """Start ``argv`` in its own session (process group), log to ``logs/<name>.log``, write its pid file."""
        self.logs.mkdir(parents=True, exist_ok=True)
        self.pids.mkdir(parents=True, exist_ok=True)
        logf = self.logs / f"{name}.log"
        niceness = self.cfg.niceness
        with logf.open("ab") as fh:
            fh.write(f"\n--- {time.strftime('%Y-%m-%dT%H:%M:%S')} starting {name}: {' '.join(argv)}\n".encode())
            fh.flush()
            proc = subprocess.Popen(list(argv), stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=dict(env), cwd=cwd, start_new_session=True,
                                    preexec_fn=(lambda: os.nice(niceness)) if niceness else None)
        st = _proc_stat(proc.pid)
        rec = {"pid": proc.pid, "pgid": proc.pid, "start": st[2] if st else 0, "argv": list(argv), "log": str(logf)}
        _write_private(self._pidfile(name), json.dumps(rec) + "\n")
        self._procs[name] = proc
        return proc.pid

    def stop(self, name: str, grace_s: float = 20.0) -> bool:
        """Stop ``name``'s process group: SIGTERM, then SIGKILL after ``grace_s``. False if nothing ran.

        Descendants that left the group (an Airflow task process runs in a group of its own) are
        found first (:func:`process_tree`) and get SIGKILL too if they outlive the grace period.
        """
        rec = self.record(name)
        if rec is None:
            return False
        pgid = int(rec.get("pgid", rec["pid"]))
        was = self.running(name)
        tree = process_tree(pgid)
        outside = {pid: start for pid, start in tree.items() if (_proc_stat(pid) or ("", pgid, 0))[1] != pgid}

        def left_over() -> list[int]:
            return sorted({*group_members(pgid), *alive(outside)})

        if was:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while left_over() and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.2)
        if left_over():
            log.warning("%s did not stop within %.0f s: SIGKILL", name, grace_s)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
            for pid in alive(outside):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10.0
            while left_over() and time.monotonic() < deadline:
                self._reap()
                time.sleep(0.1)
        self._reap()
        left = left_over()
        if left:
            raise StackError(f"{name}: processes {left} of group {pgid} survived SIGKILL; stop them by hand "
                             f"(kill -9 {' '.join(map(str, left))}) and run stack-down again")
        self._pidfile(name).unlink(missing_ok=True)
        return was

    def _reap(self) -> None:
        for p in list(self._procs.values()):
            p.poll()

    def _wait(self, name: str, ready: Any, what: str) -> None:
        deadline = time.monotonic() + self.cfg.start_timeout_s
        while not ready():
            if not self.running(name):
                raise StackError(f"{name} exited while starting ({what}). Its log "
                                 f"({self.logs / (name + '.log')}):\n{_tail(self.logs / (name + '.log'))}")
            if time.monotonic() > deadline:
                raise StackError(f"{name} did not answer {what} within {self.cfg.start_timeout_s:.0f} s "
                                 f"(stack.yaml start_timeout_s). Its log:\n{_tail(self.logs / (name + '.log'))}")
            time.sleep(0.3)

    def _check_port_free(self, name: str, port: int) -> None:
        if port_open(self.host, port):
            raise StackError(f"{name}: port {self.host}:{port} is already in use by a process this stack did not "
                             f"start. Free it or choose another port in {DEFAULT_CONFIG}.")

    # -- lifecycle -------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold ``state_dir/lock`` so two ``up``/``down`` never interleave."""
        self.state.mkdir(parents=True, exist_ok=True)
        with (self.state / "lock").open("w") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StackError(f"another `make stack` / `make stack-down` holds {self.state / 'lock'}; "
                                 "wait for it to finish") from None
            yield

    def status(self) -> dict[str, bool]:
        """component -> running."""
        return {name: self.running(name) for name in self.components()}

    def up(self) -> dict[str, Any]:
        """Start what is not running (idempotent). Returns the summary also written to ``stack.json``."""
        with self.locked():
            before = self.status()
            if all(before.values()):
                summary = self.summary()
                summary["already_running"] = True
                return summary
            if not (self.project / "params.yaml").is_file():
                raise StackError(f"stack.yaml project: {self.project} has no params.yaml; point `project` at a "
                                 "cvplatform project")
            creds = self.credentials()
            self._start_s3()
            self._buckets()
            self._databases()
            self._start_mlflow(creds)
            self._mlflow_users(creds)
            self._dvc_remote()
            self._start_serving(creds)
            self._start_airflow(creds)
            summary = self.summary()
            summary["already_running"] = False
            summary["started"] = [n for n, was in before.items() if not was]
            self._write_client_files(summary, creds)
            return summary

    def down(self, *, purge: bool = False) -> list[str]:
        """Stop every component (reverse order), restore ``.dvc/config.local``; ``purge`` also drops the
        databases and deletes the state folder. Returns the components that were running."""
        stopped = []
        with self.locked():
            names = self.components()
            extra = sorted(p.stem for p in self.pids.glob("*.json") if p.stem not in names) if self.pids.is_dir() \
                else []
            for name in [*reversed(names), *extra]:  # pid files of an older config are stopped too
                if self.stop(name):
                    stopped.append(name)
            self._restore_dvc_config()
            if purge:
                self._drop_databases()
                self._purge_broker()
        if purge:
            shutil.rmtree(self.state, ignore_errors=True)
        return stopped

    def summary(self) -> dict[str, Any]:
        return {
            "mlflow_tracking_uri": self.mlflow_url,
            "s3_endpoint_url": self.s3_endpoint,
            "mlflow_artifacts": self.mlflow_artifacts,
            "dvc_remote": {"name": self.cfg.dvc.remote_name, "url": self.dvc_remote_url}
            if self.cfg.dvc.configure_remote else None,
            "serving_url": self.balancer_url,
            "replicas": {n: f"http://{self.host}:{p}" for n, p in self.replicas()},
            "airflow": {"url": self.airflow_url, "broker_url": self.cfg.airflow.broker_url,
                        "queue": self.cfg.airflow.queue,
                        "workers": {w: str(self.worker_dir(w)) for w in self.cfg.airflow.workers}}
            if self.cfg.airflow.enabled else None,
            "postgres": {k: getattr(self.cfg.postgres, k) for k in ("mlflow_db", "mlflow_auth_db", "airflow_db")},
            "state_dir": str(self.state),
            "credentials": str(self.state / "credentials.json"),
            "running": self.status(),
        }

    # -- S3 --------------------------------------------------------------------------------------------
    def _start_s3(self) -> None:
        if not self.cfg.s3.start_local or self.running("s3"):
            return
        port = self.cfg.s3.port
        self._check_port_free("s3", port)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.spawn("s3", [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(port)], env, self.state)
        self._wait("s3", lambda: _http_ok(f"http://{self.host}:{port}/moto-api/"), f"http://{self.host}:{port}")

    def _buckets(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        s3 = self.s3_client()
        for bucket in dict.fromkeys((self.cfg.s3.mlflow_bucket, self.cfg.s3.dvc_bucket)):
            try:
                s3.head_bucket(Bucket=bucket)
                continue
            except ClientError as exc:
                code = str(exc.response.get("Error", {}).get("Code"))
                if code not in ("404", "NoSuchBucket", "NotFound"):
                    raise StackError(f"S3 bucket {bucket!r} at {self.s3_endpoint or 'AWS'}: {exc}. Check "
                                     "stack.yaml s3.access_key_id / secret_access_key (or AWS_* variables)") from None
            except BotoCoreError as exc:
                raise StackError(f"S3 endpoint {self.s3_endpoint or 'AWS'} unreachable: {exc}") from None
            if not self.cfg.s3.create_buckets:
                raise StackError(f"S3 bucket {bucket!r} does not exist and stack.yaml s3.create_buckets is false: "
                                 "create it or set create_buckets: true")
            kw: dict[str, Any] = {"Bucket": bucket}
            if self.cfg.s3.region != "us-east-1":
                kw["CreateBucketConfiguration"] = {"LocationConstraint": self.cfg.s3.region}
            s3.create_bucket(**kw)
            log.info("created bucket s3://%s", bucket)

    # -- PostgreSQL ------------------------------------------------------------------------------------
    def _pg(self, db: str = "postgres") -> Any:
        import psycopg2

        pg = self.cfg.postgres
        try:
            conn = psycopg2.connect(host=pg.host, port=pg.port, user=pg.user, password=pg.password(), dbname=db,
                                    connect_timeout=10)
        except psycopg2.Error as exc:
            raise StackError(f"PostgreSQL {pg.user}@{pg.host}:{pg.port}/{db}: {str(exc).strip()}. Check that the "
                             f"server runs and stack.yaml postgres.* (password in ${pg.password_env})") from None
        conn.autocommit = True
        return conn

    def _databases(self) -> None:
        pg = self.cfg.postgres
        conn = self._pg()
        try:
            with conn.cursor() as cur:
                for db in (pg.mlflow_db, pg.mlflow_auth_db, pg.airflow_db):
                    cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,))
                    if cur.fetchone():
                        continue
                    if not pg.create_databases:
                        raise StackError(f"PostgreSQL database {db!r} does not exist and stack.yaml "
                                         "postgres.create_databases is false: create it (createdb) first")
                    cur.execute(f'CREATE DATABASE "{db}"')  # name checked against _DB by the config
                    log.info("created PostgreSQL database %s", db)
        finally:
            conn.close()

    def _drop_databases(self) -> None:
        pg = self.cfg.postgres
        conn = self._pg()
        try:
            with conn.cursor() as cur:
                for db in (pg.mlflow_db, pg.mlflow_auth_db, pg.airflow_db):
                    cur.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        finally:
            conn.close()

    # -- MLflow ----------------------------------------------------------------------------------------
    def mlflow_env(self, creds: Mapping[str, Any]) -> dict[str, str]:
        pg, m = self.cfg.postgres, self.cfg.mlflow
        ini = self.state / "mlflow_basic_auth.ini"
        ini.write_text(
            "[mlflow]\n"
            f"default_permission = {m.default_permission}\n"
            f"database_uri = {pg.url(pg.mlflow_auth_db)}\n"
            f"admin_username = {m.admin_user}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n",
            encoding="utf-8",
        )
        os.chmod(ini, 0o600)  # it may hold the PostgreSQL password
        env = dict(os.environ)
        for k in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            env.pop(k, None)
        env.update(self.s3_env())
        env.update({
            "PYTHONUNBUFFERED": "1",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "MLFLOW_AUTH_CONFIG_PATH": str(ini),
            "MLFLOW_AUTH_ADMIN_USERNAME": m.admin_user,
            "MLFLOW_AUTH_ADMIN_PASSWORD": creds["mlflow_users"][m.admin_user],
            "MLFLOW_FLASK_SERVER_SECRET_KEY": creds["mlflow_flask_secret"],
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        })
        return env

    def _start_mlflow(self, creds: Mapping[str, Any]) -> None:
        if self.running("mlflow"):
            return
        m, pg = self.cfg.mlflow, self.cfg.postgres
        self._check_port_free("mlflow", m.port)
        argv = [str(Path(sys.executable).with_name("mlflow")), "server", "--host", self.host, "--port", str(m.port),
                "--workers", str(m.workers), "--app-name", "basic-auth",
                "--backend-store-uri", pg.url(pg.mlflow_db), "--artifacts-destination", self.mlflow_artifacts]
        self.spawn("mlflow", argv, self.mlflow_env(creds), self.state)
        self._wait("mlflow", lambda: _http_ok(f"{self.mlflow_url}/health"), f"{self.mlflow_url}/health")

    def _mlflow_users(self, creds: Mapping[str, Any]) -> None:
        """Create the accounts that do not exist yet (as the admin)."""
        import base64

        m = self.cfg.mlflow
        users = creds["mlflow_users"]
        token = base64.b64encode(f"{m.admin_user}:{users[m.admin_user]}".encode()).decode()
        headers = {"Authorization": f"Basic {token}", "Content-Type": "application/json"}

        def call(method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, str]:
            req = urllib.request.Request(f"{self.mlflow_url}{path}", method=method, headers=headers,
                                         data=json.dumps(body).encode() if body is not None else None)
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    return r.status, r.read().decode("utf-8", "replace")
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read().decode("utf-8", "replace")

        from urllib.parse import quote

        code, text = call("GET", f"/api/2.0/mlflow/users/get?username={quote(m.admin_user)}")
        if code in (401, 403):
            raise StackError(
                f"the MLflow auth database {self.cfg.postgres.mlflow_auth_db!r} rejects the admin password in "
                f"{self.state / 'credentials.json'} ({code}): it was created by another stack state. Run "
                "`make stack-down PURGE=1` (drops the stack's databases) or restore that state folder")
        for user in m.users:
            code, text = call("GET", f"/api/2.0/mlflow/users/get?username={quote(user)}")
            if code == 200:
                continue
            code, text = call("POST", "/api/2.0/mlflow/users/create", {"username": user, "password": users[user]})
            if code != 200:
                raise StackError(f"creating MLflow user {user!r} failed ({code}): {text[:300]}")
            log.info("created MLflow user %s", user)

    # -- DVC -------------------------------------------------------------------------------------------
    def _dvc(self, *args: str) -> None:
        dvc = str(Path(sys.executable).with_name("dvc"))
        r = subprocess.run([dvc, *args], cwd=self.project, capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise StackError(f"`dvc {' '.join(args)}` in {self.project} failed ({r.returncode}): "
                             f"{(r.stderr or r.stdout)[-1500:]}")

    def _dvc_remote(self) -> None:
        if not self.cfg.dvc.configure_remote:
            return
        if not (self.project / ".dvc").is_dir():
            raise StackError(f"stack.yaml project: {self.project} is not a DVC repository (no .dvc/): run "
                             "`dvc init` there or set dvc.configure_remote: false")
        local = self.project / ".dvc" / "config.local"
        backup = self.state / "dvc-config.local.backup"
        marker = self.state / "dvc-config.local.absent"
        if not backup.exists() and not marker.exists():  # the developer's own config.local, restored by down
            if local.is_file():
                shutil.copy2(local, backup)
            else:
                marker.touch()
        name, s = self.cfg.dvc.remote_name, self.cfg.s3
        self._dvc("remote", "add", "--local", "--default", "--force", name, self.dvc_remote_url)
        if self.s3_endpoint:
            self._dvc("remote", "modify", "--local", name, "endpointurl", self.s3_endpoint)
        self._dvc("remote", "modify", "--local", name, "region", s.region)
        if s.access_key_id is not None and s.secret_access_key is not None:
            self._dvc("remote", "modify", "--local", name, "access_key_id", s.access_key_id)
            self._dvc("remote", "modify", "--local", name, "secret_access_key", s.secret_access_key)
        os.chmod(local, 0o600)

    def _restore_dvc_config(self) -> None:
        local = self.project / ".dvc" / "config.local"
        backup = self.state / "dvc-config.local.backup"
        marker = self.state / "dvc-config.local.absent"
        if backup.exists():
            shutil.copy2(backup, local)
            backup.unlink()
        elif marker.exists():
            local.unlink(missing_ok=True)
            marker.unlink()

    # -- serving ---------------------------------------------------------------------------------------
    def _code_env(self) -> dict[str, str]:
        """The caller's environment with this cvplatform package first on ``PYTHONPATH`` (a checkout's code
        wins over another editable install of the package in the same virtual environment)."""
        code = str(Path(__file__).resolve().parent.parent)
        prior = os.environ.get("PYTHONPATH")
        return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": code + (os.pathsep + prior if prior else "")}

    def serving_env(self, creds: Mapping[str, Any]) -> dict[str, str]:
        m = self.cfg.mlflow
        env = self._code_env()
        env.update(self.s3_env())
        env.update({
            "PYTHONUNBUFFERED": "1",
            "MLFLOW_TRACKING_URI": self.mlflow_url,
            "MLFLOW_TRACKING_USERNAME": m.serving_user,
            "MLFLOW_TRACKING_PASSWORD": creds["mlflow_users"][m.serving_user],
            "CVPLATFORM_ADMIN_TOKEN": creds["serving_admin_token"],
            "CVPLATFORM_AUDIT_KEY_FILE": str(self.state / "audit.key"),
        })
        return env

    def _start_serving(self, creds: Mapping[str, Any]) -> None:
        sv = self.cfg.serving
        env = self.serving_env(creds)
        config = (self.project / sv.config).resolve()
        for name, port in self.replicas():
            if self.running(name):
                continue
            self._check_port_free(name, port)
            argv = [sys.executable, "-m", "cvplatform", "serve", "--host", self.host, "--port", str(port),
                    "--params", str(self.project / "params.yaml"), "--config", str(config), "--log-level", "warning"]
            tag = {"CVPLATFORM_SERVING_REPLICA": name.replace("-", "")}  # its own request-log files
            self.spawn(name, argv, {**env, **tag}, self.project)
        for name, port in self.replicas():
            url = f"http://{self.host}:{port}{sv.health_path}"
            self._wait(name, lambda u=url: _http_ok(u), url)
        if not self.running("balancer"):
            self._check_port_free("balancer", sv.balancer_port)
            argv = [sys.executable, "-m", "cvplatform.serving.balancer", "--host", self.host,
                    "--port", str(sv.balancer_port), "--health-path", sv.health_path,
                    "--health-interval", str(sv.health_interval_s), "--log-level", "warning"]
            for name, port in self.replicas():
                argv += ["--replica", f"{name}=http://{self.host}:{port}"]
            self.spawn("balancer", argv, self._code_env(), self.project)
        self._wait("balancer", lambda: _http_ok(f"{self.balancer_url}/_balancer/status"),
                   f"{self.balancer_url}/_balancer/status")

    # -- Airflow (CeleryExecutor) ------------------------------------------------------------------------
    def airflow_env(self, creds: Mapping[str, Any]) -> dict[str, str]:
        """The environment of every Airflow process (the workers add theirs: :meth:`worker_env`).

        The caller's own ``AIRFLOW__*`` / ``AIRFLOW_HOME`` variables are dropped: every setting is here.
        """
        a = self.cfg.airflow
        env = {k: v for k, v in self._code_env().items()
               if not k.startswith("AIRFLOW__") and k not in ("AIRFLOW_HOME", "AIRFLOW_CONFIG")}
        home = self.airflow_home
        env.update(airflow_celery_env(self, creds))
        env.update({
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "AIRFLOW_HOME": str(home),
            "AIRFLOW_CONFIG": str(home / "airflow.cfg"),
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.project / a.dags_folder),
            "AIRFLOW__CORE__PARALLELISM": str(a.parallelism),
            "AIRFLOW__CORE__FERNET_KEY": str(creds["airflow_fernet_key"]),
            "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(a.users),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.airflow_passwords_file),
            "AIRFLOW__API__HOST": self.host,
            "AIRFLOW__API__PORT": str(a.api_port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "60",
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            "CVPLATFORM_ROOT": str(self.project),
            "CVPLATFORM_USER": a.pipeline_user,
        })
        return env

    def worker_env(self, creds: Mapping[str, Any], worker: str) -> dict[str, str]:
        """A Celery worker's environment: its clone is ``CVPLATFORM_ROOT`` and its DAG folder, its name the
        ``hostname`` of its task instances; S3 and MLflow (as ``airflow.pipeline_user``) for the tasks."""
        a = self.cfg.airflow
        wd = self.worker_dir(worker)
        env = self.airflow_env(creds)
        if a.pipeline_user in self.cfg.mlflow.users:
            env.update(self.client_env(creds, a.pipeline_user))
        else:
            env.update(self.s3_env())
        env.update({
            "AIRFLOW__CORE__DAGS_FOLDER": str(wd / a.dags_folder),
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "cvplatform.airflow_hostname.worker_hostname",
            "CVPLATFORM_AIRFLOW_WORKER": worker,
            "CVPLATFORM_ROOT": str(wd),
            # per-run working copies (cvplatform.workspace) of this worker's tasks: not ~/.cache, shared by all
            "CVPLATFORM_RUNS_DIR": str(self.state / "runs" / worker),
        })
        return env

    @property
    def airflow_passwords_file(self) -> Path:
        return self.airflow_home / "simple_auth_manager_passwords.json.generated"

    def airflow_token(self, user: str) -> str:
        """A JWT for the REST API of the stack's Airflow as ``user`` (send it as ``Authorization: Bearer``)."""
        from cvplatform.airflow_local import api_token

        users = self.credentials().get("airflow_users", {})
        if user not in users:
            raise StackError(f"no Airflow user {user!r} (stack.yaml airflow.users: {list(self.cfg.airflow.users)})")
        return api_token(self.airflow_url, user, users[user])

    def _project_commit(self) -> str:
        r = subprocess.run(["git", "-C", str(self.project), "rev-parse", "--verify", "--quiet", "HEAD^{commit}"],
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise StackError(
                f"each Airflow worker runs in its own clone of the project at its current commit, but "
                f"{self.project} has no commit (not a git repository, or nothing committed yet): commit it "
                "(git init; git add -A; git commit) or set airflow.enabled: false in stack.yaml")
        return r.stdout.strip()

    def _git(self, cwd: Path, *args: str) -> None:
        r = subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            raise StackError(f"`git {' '.join(args)}` in {cwd} failed ({r.returncode}): {(r.stderr or r.stdout)[-800:]}")

    def _checkout_worker(self, worker: str, commit: str) -> Path:
        """Clone the project into the worker's folder (once), then check out ``commit`` there (forced:
        the clone belongs to the stack), with the project's ``.dvc/config.local`` (the stack's remote)."""
        wd = self.worker_dir(worker)
        if not (wd / ".git").is_dir():
            shutil.rmtree(wd, ignore_errors=True)
            wd.parent.mkdir(parents=True, exist_ok=True)
            self._git(wd.parent, "clone", "--quiet", "--no-checkout", str(self.project), wd.name)
        self._git(wd, "fetch", "--quiet", str(self.project), commit)
        self._git(wd, "checkout", "--quiet", "--force", "--detach", commit)
        local = self.project / ".dvc" / "config.local"
        if local.is_file() and (wd / ".dvc").is_dir():
            shutil.copy2(local, wd / ".dvc" / "config.local")
            os.chmod(wd / ".dvc" / "config.local", 0o600)
        dags = wd / self.cfg.airflow.dags_folder
        if not dags.is_dir():
            raise StackError(f"{worker}: the project's commit {commit[:12]} has no {self.cfg.airflow.dags_folder}/ "
                             f"(stack.yaml airflow.dags_folder): the workers read the DAGs of the commit; "
                             "commit the DAG folder first")
        return wd

    def _check_broker(self) -> None:
        from urllib.parse import urlsplit

        u = urlsplit(self.cfg.airflow.broker_url)
        host, port = u.hostname or "127.0.0.1", u.port or 6379
        if not port_open(host, port):
            raise StackError(f"the Celery broker {host}:{port} (stack.yaml airflow.broker_url) does not answer: start "
                             "Redis (the stack uses the machine's server, it does not start one)")

    def broker_keys(self) -> list[str]:
        """The Redis keys of the stack's Celery queue (its messages and kombu's bindings)."""
        q = self.cfg.airflow.queue
        return [q, f"_kombu.binding.{q}", f"_kombu.binding_permanent.{q}"]

    def _purge_broker(self) -> None:
        """``down --purge``: delete the keys of the stack's queue in Redis (not the keys other queues use)."""
        if not self.cfg.airflow.enabled:
            return
        import redis

        try:
            client = redis.Redis.from_url(self.cfg.airflow.broker_url, socket_connect_timeout=5)
            client.delete(*self.broker_keys())
            client.close()
        except redis.RedisError as exc:
            log.warning("could not delete the queue %r from %s (%s): delete keys %s by hand",
                        self.cfg.airflow.queue, self.cfg.airflow.broker_url, exc, self.broker_keys())

    def _airflow(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "airflow", *args]

    def _airflow_migrate(self, env: Mapping[str, str]) -> None:
        """``airflow db migrate`` on the Airflow database (creates airflow.cfg in AIRFLOW_HOME once)."""
        out = self.logs / "airflow-db-migrate.log"
        niceness = self.cfg.niceness
        log.info("airflow db migrate (%s)", self.cfg.postgres.airflow_db)
        with out.open("ab") as fh:
            try:
                rc = subprocess.run(self._airflow("db", "migrate"), env=dict(env), cwd=self.airflow_home, stdout=fh,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    timeout=max(600.0, self.cfg.start_timeout_s),
                                    preexec_fn=(lambda: os.nice(niceness)) if niceness else None).returncode
            except subprocess.TimeoutExpired:
                rc = None
        if rc != 0:
            raise StackError(f"`airflow db migrate` {'timed out' if rc is None else f'failed ({rc})'} on database "
                             f"{self.cfg.postgres.airflow_db!r}. Its log ({out}):\n{_tail(out)}")

    def airflow_health(self) -> dict[str, Any] | None:
        """``GET /api/v2/monitor/health`` of the api-server (no login), or None while it does not answer."""
        try:
            with urllib.request.urlopen(f"{self.airflow_url}/api/v2/monitor/health", timeout=5) as r:
                return dict(json.loads(r.read()))
        except (OSError, ValueError, urllib.error.URLError):
            return None

    def _start_airflow(self, creds: Mapping[str, Any]) -> None:
        a = self.cfg.airflow
        if not a.enabled or all(self.running(n) for n in self.airflow_components()):
            return
        self._check_broker()
        if not (self.project / a.dags_folder).is_dir():
            raise StackError(f"stack.yaml airflow.dags_folder: {self.project / a.dags_folder} is not a folder")
        commit = self._project_commit()
        dirty = subprocess.run(["git", "-C", str(self.project), "status", "--porcelain", "--", a.dags_folder],
                               capture_output=True, text=True, timeout=60).stdout.strip()
        if dirty:
            log.warning("%s has changes not committed: the scheduler sees them, the workers run commit %s "
                        "(commit, then restart the workers):\n%s", self.project / a.dags_folder, commit[:12], dirty)
        self.airflow_home.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        users = creds["airflow_users"]
        _write_private(self.airflow_passwords_file, json.dumps({u: users[u] for u in a.user_names()}) + "\n")
        env = self.airflow_env(creds)
        services = [f"airflow-{c}" for c in AIRFLOW_SERVICES]
        if not all(self.running(n) for n in services):
            self._airflow_migrate(env)
        for comp, name in zip(AIRFLOW_SERVICES, services, strict=True):
            if self.running(name):
                continue
            if comp == "api-server":
                self._check_port_free(name, a.api_port)
                argv = self._airflow("api-server", "--host", self.host, "--port", str(a.api_port), "--workers", "1")
            elif comp in ("scheduler", "triggerer"):  # their log servers would bind every interface
                argv = self._airflow(comp, "--skip-serve-logs")
            else:
                argv = self._airflow(comp)
            self.spawn(name, argv, env, self.airflow_home)

        def healthy() -> bool:
            for name in services:
                if not self.running(name):
                    raise StackError(f"{name} exited while starting. Its log ({self.logs / (name + '.log')}):\n"
                                     f"{_tail(self.logs / (name + '.log'))}")
            h = self.airflow_health() or {}
            return all((h.get(k) or {}).get("status") == "healthy"
                       for k in ("metadatabase", "scheduler", "dag_processor", "triggerer"))

        self._wait("airflow-api-server", healthy, f"{self.airflow_url}/api/v2/monitor/health (all healthy)")
        started: dict[str, int] = {}
        for worker in a.workers:
            name = f"airflow-{worker}"
            if self.running(name):
                continue
            wd = self._checkout_worker(worker, commit)
            logf = self.logs / f"{name}.log"
            started[worker] = logf.stat().st_size if logf.exists() else 0
            argv = self._airflow("celery", "worker", "--celery-hostname", worker, "--queues", a.queue,
                                 "--concurrency", str(a.worker_concurrency), "--skip-serve-logs",
                                 "--pid", str(self.pids / f"{name}.celery.pid"))
            self.spawn(name, argv, self.worker_env(creds, worker), wd)
        for worker, offset in started.items():
            name = f"airflow-{worker}"

            def ready(w: str = worker, o: int = offset, n: str = name) -> bool:
                with (self.logs / f"{n}.log").open("rb") as fh:
                    fh.seek(o)
                    return f"celery@{w} ready".encode() in fh.read()

            self._wait(name, ready, f"'celery@{worker} ready' in {self.logs / (name + '.log')}")

    # -- files for clients -------------------------------------------------------------------------------
    def client_env(self, creds: Mapping[str, Any], user: str) -> dict[str, str]:
        """What a client (CLI, DVC, boto3) needs to use the stack as MLflow user ``user``."""
        env = self.s3_env()
        env.update({"MLFLOW_TRACKING_URI": self.mlflow_url, "MLFLOW_TRACKING_USERNAME": user,
                    "MLFLOW_TRACKING_PASSWORD": creds["mlflow_users"][user],
                    "CVPLATFORM_DEPLOY_SERVER": self.balancer_url,
                    "CVPLATFORM_ADMIN_TOKEN": creds["serving_admin_token"],
                    "CVPLATFORM_AUDIT_KEY_FILE": str(self.state / "audit.key")})
        return env

    def _write_client_files(self, summary: Mapping[str, Any], creds: Mapping[str, Any]) -> None:
        import shlex

        (self.state / "stack.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        user = "pipeline-bot" if "pipeline-bot" in self.cfg.mlflow.users else self.cfg.mlflow.users[0]
        lines = ["# source me: the stack as MLflow user " + user + " (other users: credentials.json)"]
        lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted(self.client_env(creds, user).items())]
        _write_private(self.state / "env.sh", "\n".join(lines) + "\n")
        if self.cfg.airflow.enabled:
            _write_private(self.state / "airflow-celery.env",
                           "# the CeleryExecutor settings every Airflow process of the stack runs with\n"
                           + "\n".join(f"{k}={v}" for k, v in sorted(airflow_celery_env(self, creds).items())) + "\n")


def airflow_celery_env(stack: Stack, creds: Mapping[str, Any]) -> dict[str, str]:
    """The CeleryExecutor settings every Airflow process of the stack shares (also written to
    ``state_dir/airflow-celery.env``): metadata database and Celery result backend on the stack's
    PostgreSQL (``postgres.airflow_db``), broker ``airflow.broker_url``, the JWT secret the api-server
    and the scheduler sign and check task tokens with, and the execution API URL the workers' tasks call.

    Example:
        >>> env = airflow_celery_env(Stack(StackConfig(), "/srv/cv"),
        ...                          {"airflow_jwt_secret": "j", "airflow_api_secret_key": "k"})
        >>> env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"]
        'http://127.0.0.1:8280/execution/'
    """
    pg, a = stack.cfg.postgres, stack.cfg.airflow
    return {
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": pg.url(pg.airflow_db),
        "AIRFLOW__CELERY__BROKER_URL": a.broker_url,
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + pg.url(pg.airflow_db),  # db+postgresql+psycopg2://
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(a.worker_concurrency),
        "AIRFLOW__CELERY__SYNC_PARALLELISM": "1",  # the scheduler sends tasks without a process pool (small machine)
        "AIRFLOW__CELERY__OPERATION_TIMEOUT": "10",  # seconds to hand a task to Redis on a loaded machine
        "AIRFLOW__OPERATORS__DEFAULT_QUEUE": a.queue,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{stack.airflow_url}/execution/",
        "AIRFLOW__API__BASE_URL": stack.airflow_url,
        "AIRFLOW__API_AUTH__JWT_SECRET": str(creds["airflow_jwt_secret"]),
        "AIRFLOW__API__SECRET_KEY": str(creds["airflow_api_secret_key"]),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cvplatform.stack up|down|status [--config configs/stack.yaml] [--purge]``."""
    ap = argparse.ArgumentParser(prog="python -m cvplatform.stack",
                                 description="The production topology on one machine (configs/stack.yaml).")
    ap.add_argument("action", choices=("up", "down", "status"))
    ap.add_argument("--config", default=None, help=f"stack config (default {DEFAULT_CONFIG} when present)")
    ap.add_argument("--repo", default=None, help="repository root (default: the current folder)")
    ap.add_argument("--purge", action="store_true", help="down: also drop the stack's databases and state folder")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    repo = Path(args.repo or Path.cwd()).resolve()
    cfg_path = Path(args.config) if args.config else (repo / DEFAULT_CONFIG)
    try:
        cfg = load_stack_config(cfg_path if (args.config or cfg_path.is_file()) else None)
        stack = Stack(cfg, repo)
        if args.action == "up":
            summary = stack.up()
            if summary["already_running"]:
                print(f"stack already running (state: {stack.state}); nothing started")
            else:
                print(f"stack up (started: {', '.join(summary['started'])})")
            print(f"  MLflow     {summary['mlflow_tracking_uri']}  (users/passwords: {summary['credentials']}, 0600)")
            print(f"  S3         {summary['s3_endpoint_url'] or 'AWS'}  artifacts {summary['mlflow_artifacts']}")
            if summary["dvc_remote"]:
                print(f"  DVC remote {summary['dvc_remote']['name']} = {summary['dvc_remote']['url']} (default, "
                      ".dvc/config.local)")
            print(f"  serving    {summary['serving_url']}  -> {', '.join(summary['replicas'].values())}")
            if summary["airflow"]:
                af = summary["airflow"]
                print(f"  Airflow    {af['url']}  (CeleryExecutor, broker {af['broker_url']}, queue {af['queue']}; "
                      f"users/passwords: credentials.json airflow_users)")
                for worker, folder in af["workers"].items():
                    print(f"    worker   {worker}  in {folder}")
            print(f"  clients:   source {stack.state / 'env.sh'}")
            print("  stop:      make stack-down")
        elif args.action == "down":
            stopped = stack.down(purge=args.purge)
            print(f"stack down: stopped {', '.join(stopped) if stopped else 'nothing (nothing was running)'}"
                  + ("; databases dropped, state folder removed" if args.purge else ""))
            if "s3" in stopped and not args.purge:
                print("note: the local S3 endpoint (moto) kept its objects in memory: they are gone, while the runs "
                      "in PostgreSQL remain and point at them. PURGE=1 starts clean; MinIO or AWS S3 "
                      "(s3.start_local: false) keep artifacts.")
        else:
            st = stack.status()
            for name, ok in st.items():
                print(f"  {name:<24} {'running' if ok else 'stopped'}")
            return 0 if all(st.values()) else 3
    except CVPlatformError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if args.action == "up":
            print("what did start keeps running (logs under the state folder): fix the cause and run `make stack` "
                  "again, or stop it with `make stack-down`", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
