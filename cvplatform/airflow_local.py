"""A real local Airflow 3 for this project: ``make airflow`` (``python -m cvplatform.airflow_local``).

It starts the four Airflow components as subprocesses — ``api-server`` (UI + REST API +
execution API), ``scheduler`` (LocalExecutor), ``dag-processor`` and ``triggerer`` — on
a SQLite metadata DB, all bound to 127.0.0.1, with Airflow 3's SimpleAuthManager and a
few named users so a person can log in and approve a model version in the UI:

* ``AIRFLOW_HOME`` (default ``<repo>/airflow_home``, git-ignored) holds ``airflow.cfg``
  (written once by ``airflow db migrate``), ``airflow.db``, the task logs, each
  component's own log under ``component-logs/``, the generated passwords
  (``simple_auth_manager_passwords.json.generated``) and the JWT/api secrets every
  component must share (``cvplatform-airflow-secrets.json``, mode 0600, passed as
  ``AIRFLOW__API_AUTH__JWT_SECRET`` / ``AIRFLOW__API__SECRET_KEY``).
* ``AIRFLOW__CORE__DAGS_FOLDER`` is ``<repo>/dags``; the example DAGs are off.
* The tasks run in the project named by ``CVPLATFORM_ROOT`` (default: the repo), as the
  pipeline user ``CVPLATFORM_USER`` (default ``pipeline-bot``): that name is the *author*
  of every model version the DAG registers, so a human reviewer (``alice``, ``bob``,
  ``admin``) may approve it (four-eyes).
* The scheduler and triggerer run with ``--skip-serve-logs`` (their log servers would bind
  every interface); the api-server reads task logs from the local ``AIRFLOW_HOME/logs``.

Everything is plain environment configuration (``AIRFLOW__SECTION__KEY``). PostgreSQL + the
CeleryExecutor with two workers is the production setting: ``make stack`` (:mod:`cvplatform.stack`)
starts it (see docs/production.md).

Example:
    >>> from cvplatform.airflow_local import AirflowLocal
    >>> with AirflowLocal(home="/tmp/af", port=8793) as af:  # doctest: +SKIP
    ...     token = af.token("alice")
    ...     af.url
    'http://127.0.0.1:8793'
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from cvplatform.errors import CVPlatformError

log = logging.getLogger(__name__)

#: Components started, in start order (stopped in reverse).
COMPONENTS: tuple[str, ...] = ("api-server", "dag-processor", "triggerer", "scheduler")
#: (user, SimpleAuthManager role): ADMIN may do everything, USER may trigger runs and answer approvals.
DEFAULT_USERS: tuple[tuple[str, str], ...] = (("admin", "ADMIN"), ("alice", "USER"), ("bob", "USER"))
#: Author of the versions the DAG registers (``CVPLATFORM_USER`` of the Airflow processes).
DEFAULT_PIPELINE_USER = "pipeline-bot"
SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
PASSWORDS_FILE = "simple_auth_manager_passwords.json.generated"
SECRETS_FILE = "cvplatform-airflow-secrets.json"
ROLES = ("VIEWER", "USER", "OP", "ADMIN")


class AirflowLaunchError(CVPlatformError):
    """The local Airflow could not be set up, started, or stopped working."""


def repo_root() -> Path:
    """The project repository: the current folder if it holds ``dags/``, else the one above this package.

    Example:
        >>> (repo_root() / "dags").is_dir()  # doctest: +SKIP
        True
    """
    cwd = Path.cwd()
    if (cwd / "dags").is_dir() and (cwd / "params.yaml").is_file():
        return cwd
    return Path(__file__).resolve().parent.parent


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now.

    Example:
        >>> 0 < free_port() < 65536
        True
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_in_use(host: str, port: int) -> bool:
    """True if something already accepts connections on ``host:port``.

    Example:
        >>> port_in_use("127.0.0.1", free_port())
        False
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        return s.connect_ex((host, port)) == 0


def parse_users(spec: str) -> tuple[tuple[str, str], ...]:
    """``"admin:ADMIN,alice:USER"`` -> ``(("admin", "ADMIN"), ("alice", "USER"))`` (role checked).

    Example:
        >>> parse_users("admin:ADMIN, alice:user")
        (('admin', 'ADMIN'), ('alice', 'USER'))
    """
    users: list[tuple[str, str]] = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        name, _, role = item.partition(":")
        role = (role or "USER").strip().upper()
        if not name.strip() or role not in ROLES:
            raise AirflowLaunchError(
                f"--users: {item!r} is not NAME:ROLE with ROLE one of {', '.join(ROLES)} "
                "(e.g. admin:ADMIN,alice:USER)"
            )
        users.append((name.strip(), role))
    if not users:
        raise AirflowLaunchError("--users: give at least one NAME:ROLE, e.g. admin:ADMIN,alice:USER")
    return tuple(users)


def api_token(url: str, username: str, password: str, *, timeout_s: float = 30.0) -> str:
    """A JWT for Airflow's REST API (``POST /auth/token``, SimpleAuthManager); send it as ``Bearer``.

    The Airflow UI keeps the same token in its ``_token`` cookie.

    Example:
        >>> tok = api_token("http://127.0.0.1:8080", "alice", "s3cret")  # doctest: +SKIP
        >>> httpx.get(f"{url}/api/v2/dags", headers={"Authorization": f"Bearer {tok}"})  # doctest: +SKIP
    """
    import httpx

    r = httpx.post(f"{url.rstrip('/')}/auth/token", json={"username": username, "password": password},
                   timeout=timeout_s)
    if r.status_code not in (200, 201):
        raise AirflowLaunchError(
            f"POST {url}/auth/token as {username!r} answered {r.status_code}: {r.text[:300]}. "
            "Check the user name and the password in AIRFLOW_HOME/" + PASSWORDS_FILE
        )
    return str(r.json()["access_token"])


def _all_healthy(health: Mapping[str, Any]) -> bool:
    return all((health.get(k) or {}).get("status") == "healthy"
               for k in ("metadatabase", "scheduler", "dag_processor", "triggerer"))


def _signal_group(pid: int, sig: int) -> None:
    """Signal the process group led by ``pid`` (a component started with ``start_new_session``)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-n:]
    except OSError:
        return ""


@dataclass
class AirflowLocal:
    """The four Airflow 3 components for one project, as subprocesses on loopback.

    Args:
        repo: repository whose ``dags/`` folder is served (default :func:`repo_root`).
        home: ``AIRFLOW_HOME`` (default ``<repo>/airflow_home``).
        project: ``CVPLATFORM_ROOT`` the tasks run in (default ``repo``).
        host: interface every component binds (keep 127.0.0.1 unless you know why).
        port: api-server port (UI, REST API, execution API); ``0`` = a free port.
        users: SimpleAuthManager users as (name, role); passwords are generated once per home.
        pipeline_user: ``CVPLATFORM_USER`` of the tasks (author of registered versions);
            default ``$CVPLATFORM_USER`` or ``pipeline-bot``.
        parallelism: most task instances running at once (LocalExecutor).
        extra_env: more environment variables for every component (e.g. ``MLFLOW_TRACKING_URI``).

    Example:
        >>> af = AirflowLocal(home="/tmp/af", port=0).start()  # doctest: +SKIP
        >>> af.passwords()["alice"]  # doctest: +SKIP
        'x7Jk...'
        >>> af.stop()  # doctest: +SKIP
    """

    repo: Path | None = None
    home: Path | None = None
    project: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    users: Sequence[tuple[str, str]] = DEFAULT_USERS
    pipeline_user: str | None = None
    parallelism: int = 4
    extra_env: Mapping[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict, init=False, repr=False)
    _logs: dict[str, IO[bytes]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.repo = Path(self.repo or repo_root()).resolve()
        self.home = Path(self.home or self.repo / "airflow_home").resolve()
        self.project = Path(self.project or os.environ.get("CVPLATFORM_ROOT") or self.repo).resolve()
        if self.port == 0:
            self.port = free_port(self.host)
        self.users = tuple(self.users)
        self.pipeline_user = self.pipeline_user or os.environ.get("CVPLATFORM_USER") or DEFAULT_PIPELINE_USER
        if not (self.dags_folder / "cv_retrain.py").is_file():
            raise AirflowLaunchError(f"{self.dags_folder} holds no cv_retrain.py: pass the repository "
                                     "that contains dags/ (--repo) or run from its root")
        if not (self.project / "params.yaml").is_file():
            raise AirflowLaunchError(f"CVPLATFORM_ROOT={self.project} has no params.yaml: point --project "
                                     "(or CVPLATFORM_ROOT) at a cvplatform project")

    # -- configuration -------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """Base URL of the UI and REST API, e.g. ``http://127.0.0.1:8080``."""
        return f"http://{self.host}:{self.port}"

    @property
    def dags_folder(self) -> Path:
        assert self.repo is not None
        return self.repo / "dags"

    @property
    def log_dir(self) -> Path:
        """Where each component's stdout/stderr goes (``<home>/component-logs/<component>.log``)."""
        assert self.home is not None
        return self.home / "component-logs"

    @property
    def passwords_file(self) -> Path:
        assert self.home is not None
        return self.home / PASSWORDS_FILE

    def env(self) -> dict[str, str]:
        """The environment of every component (and, through them, of every task)."""
        bindir = str(Path(sys.executable).parent)
        env = dict(os.environ)  # the caller's AIRFLOW__* settings pass through unless set below
        env.update({
            "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1",
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW_CONFIG": str(Path(str(self.home)) / "airflow.cfg"),
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": str(self.parallelism),
            "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{u}:{r}" for u, r in self.users),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(self.passwords_file),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home}/airflow.db",
            "AIRFLOW__API__HOST": self.host,
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__BASE_URL": self.url,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "60",
            "CVPLATFORM_ROOT": str(self.project),
            "CVPLATFORM_USER": str(self.pipeline_user),
        })
        for key, value in self.shared_secrets().items():
            env.setdefault(key, value)  # a caller's own secrets win
        env.update(self.extra_env)
        return env

    def shared_secrets(self) -> dict[str, str]:
        """The JWT secret and api secret key every component must share, kept in ``<home>`` (mode 0600).

        Airflow writes them into a *new* ``airflow.cfg`` only; passing them explicitly keeps the
        components agreeing even with a hand-made or older ``airflow.cfg``.
        """
        import secrets

        assert self.home is not None
        path = self.home / SECRETS_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {}
        if not data.get("jwt_secret") or not data.get("secret_key"):
            data = {"jwt_secret": secrets.token_urlsafe(32), "secret_key": secrets.token_urlsafe(32)}
            self.home.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh)
        return {"AIRFLOW__API_AUTH__JWT_SECRET": data["jwt_secret"], "AIRFLOW__API__SECRET_KEY": data["secret_key"]}

    def _airflow(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "airflow", *args]

    # -- lifecycle -----------------------------------------------------------------------------
    def migrate(self, timeout_s: float = 600.0) -> None:
        """``airflow db migrate``: create or upgrade the SQLite metadata DB (and airflow.cfg once)."""
        assert self.home is not None
        self.home.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        out = self.log_dir / "db-migrate.log"
        log.info("airflow db migrate (AIRFLOW_HOME=%s)", self.home)
        with out.open("wb") as fh:
            try:
                rc = subprocess.run(self._airflow("db", "migrate"), env=self.env(), stdout=fh,
                                    stderr=subprocess.STDOUT, timeout=timeout_s, cwd=self.project).returncode
            except subprocess.TimeoutExpired:
                rc = None
        if rc != 0:
            raise AirflowLaunchError(
                f"`airflow db migrate` {'timed out' if rc is None else f'failed (exit {rc})'} for "
                f"AIRFLOW_HOME={self.home}. Its log ({out}):\n{_tail(out)}"
            )

    def command(self, component: str) -> list[str]:
        """The command line of one component."""
        if component == "api-server":
            return self._airflow("api-server", "--host", self.host, "--port", str(self.port), "--workers", "1")
        if component in ("scheduler", "triggerer"):
            return self._airflow(component, "--skip-serve-logs")
        if component == "dag-processor":
            return self._airflow("dag-processor")
        raise AirflowLaunchError(f"unknown Airflow component {component!r}; expected one of {COMPONENTS}")

    def start(self, timeout_s: float = 300.0, *, migrate: bool = True) -> AirflowLocal:
        """Migrate the DB, start the four components and wait until :meth:`healthy` (or raise, stopping all)."""
        if port_in_use(self.host, int(self.port)):
            raise AirflowLaunchError(
                f"{self.host}:{self.port} is already in use (another Airflow, or `cvplatform serve`?). "
                "Stop it or choose another port: python -m cvplatform.airflow_local --port 8081"
            )
        if migrate:
            self.migrate()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = self.env()
        try:
            for comp in COMPONENTS:
                path = self.log_dir / f"{comp}.log"
                fh = path.open("ab")
                self._logs[comp] = fh
                log.info("starting airflow %s (log: %s)", comp, path)
                self.procs[comp] = subprocess.Popen(self.command(comp), env=env, cwd=self.project, stdout=fh,
                                                    stderr=subprocess.STDOUT, start_new_session=True)
            self.wait_healthy(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def health(self) -> dict[str, Any] | None:
        """``GET /api/v2/monitor/health`` (no login needed), or None while the api-server is not answering."""
        import httpx

        try:
            r = httpx.get(f"{self.url}/api/v2/monitor/health", timeout=5.0)
        except httpx.HTTPError:
            return None
        return r.json() if r.status_code == 200 else None

    def healthy(self) -> bool:
        """True when the DB, scheduler, dag-processor and triggerer all report healthy."""
        return _all_healthy(self.health() or {})

    def check_alive(self) -> None:
        """Raise :class:`AirflowLaunchError` (with its log) if a component has exited."""
        for comp, proc in self.procs.items():
            if proc.poll() is not None:
                raise AirflowLaunchError(
                    f"airflow {comp} exited with code {proc.returncode} "
                    f"(AIRFLOW_HOME={self.home}). Its log ({self.log_dir / (comp + '.log')}):\n"
                    f"{_tail(self.log_dir / f'{comp}.log')}"
                )

    def wait_healthy(self, timeout_s: float = 300.0) -> None:
        """Poll the health endpoint until every component is healthy and the passwords file exists."""
        deadline = time.monotonic() + timeout_s
        last: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            self.check_alive()
            last = self.health()
            if last is not None and _all_healthy(last) and self.passwords_file.is_file():
                log.info("airflow is healthy at %s", self.url)
                return
            time.sleep(1.0)
        raise AirflowLaunchError(
            f"airflow at {self.url} was not healthy within {timeout_s:g}s (last health: {last}). "
            f"Component logs are in {self.log_dir}:\n{self.logs_tail(1500)}"
        )

    def stop(self, grace_s: float = 20.0) -> dict[str, int | None]:
        """SIGTERM each component's process group (reverse start order), SIGKILL what is left after ``grace_s``.

        Returns:
            The exit code of each component that was running.
        """
        codes: dict[str, int | None] = {}
        order = list(reversed(list(self.procs)))
        for comp in order:
            if self.procs[comp].poll() is None:
                _signal_group(self.procs[comp].pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for comp in order:
            proc = self.procs[comp]
            try:
                codes[comp] = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("airflow %s did not stop within %gs; killing it", comp, grace_s)
                _signal_group(proc.pid, signal.SIGKILL)
                codes[comp] = proc.wait(timeout=30)
            _signal_group(proc.pid, signal.SIGKILL)  # children left in its group (task runners, uvicorn workers)
        for fh in self._logs.values():
            fh.close()
        self._logs.clear()
        self.procs.clear()
        return codes

    def __enter__(self) -> AirflowLocal:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- users ---------------------------------------------------------------------------------
    def passwords(self) -> dict[str, str]:
        """User -> password, as generated by SimpleAuthManager into ``<home>/`` :data:`PASSWORDS_FILE`."""
        try:
            return dict(json.loads(self.passwords_file.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            raise AirflowLaunchError(
                f"cannot read the generated passwords in {self.passwords_file} ({exc}); they are written "
                "by the api-server on its first start: is it running?"
            ) from None

    def token(self, user: str) -> str:
        """A REST API JWT for ``user`` (see :func:`api_token`)."""
        pw = self.passwords()
        if user not in pw:
            raise AirflowLaunchError(f"no Airflow user {user!r} in {self.passwords_file} "
                                     f"(users: {', '.join(sorted(pw))}); add it with --users")
        return api_token(self.url, user, pw[user])

    def logs_tail(self, n: int = 3000) -> str:
        """The end of every component's log, one block each (for error messages and test failures)."""
        return "\n".join(f"----- {c} ({self.log_dir / (c + '.log')}) -----\n{_tail(self.log_dir / f'{c}.log', n)}"
                         for c in ("db-migrate", *COMPONENTS) if (self.log_dir / f"{c}.log").is_file())

    def banner(self, *, show_passwords: bool = True) -> list[str]:
        """What to tell the person at the keyboard: URL, users (+ passwords), where things are, how to stop."""
        roles = dict(self.users)
        pw = self.passwords() if show_passwords else {}
        users = [f"    {u:<12} {roles[u]:<6} password: {pw.get(u, '(see the passwords file)')}" for u in roles]
        return [
            "",
            f"Airflow is up: {self.url}   (REST API {self.url}/api/v2, API docs {self.url}/docs)",
            "  log in as (SimpleAuthManager; reviewers answer the `approval` task, ADMIN may do everything):",
            *users,
            f"  passwords are generated once per AIRFLOW_HOME and kept in {self.passwords_file}",
            f"  DAGs: {self.dags_folder}; tasks run in CVPLATFORM_ROOT={self.project} "
            f"as CVPLATFORM_USER={self.pipeline_user} (the author of the versions they register)",
            f"  AIRFLOW_HOME={self.home}; component logs: {self.log_dir}",
            "  Next: unpause cv_retrain, Trigger it, then approve its `approval` task as a reviewer",
            "  (Browse -> Required Actions) after reading the gate summary. See README, 'Operator: Airflow'.",
            "Press Ctrl-C to stop every component.",
        ]

    def wait_forever(self, poll_s: float = 2.0) -> None:
        """Block until Ctrl-C / SIGTERM (then return) or a component dies (then raise)."""
        while True:
            self.check_alive()
            time.sleep(poll_s)


def main(argv: Sequence[str] | None = None) -> int:
    """``make airflow``: start a local Airflow for this project and keep it running until Ctrl-C.

    Example:
        $ python -m cvplatform.airflow_local --port 8080 --users admin:ADMIN,alice:USER,bob:USER
    """
    import argparse

    p = argparse.ArgumentParser(prog="python -m cvplatform.airflow_local", description=main.__doc__.splitlines()[0])
    p.add_argument("--repo", type=Path, default=None, help="repository holding dags/ (default: this one)")
    p.add_argument("--home", type=Path, default=os.environ.get("CVPLATFORM_AIRFLOW_HOME"),
                   help="AIRFLOW_HOME (default <repo>/airflow_home)")
    p.add_argument("--project", type=Path, default=None, help="CVPLATFORM_ROOT the tasks run in (default: repo)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=int(os.environ.get("CVPLATFORM_AIRFLOW_PORT", "8080")),
                   help="api-server port (default 8080; 0 = any free port)")
    p.add_argument("--users", default=",".join(f"{u}:{r}" for u, r in DEFAULT_USERS),
                   help="NAME:ROLE list (roles VIEWER, USER, OP, ADMIN)")
    p.add_argument("--pipeline-user", default=None,
                   help="CVPLATFORM_USER of the tasks = author of registered versions (default pipeline-bot)")
    p.add_argument("--parallelism", type=int, default=4, help="most task instances at once")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for a healthy Airflow")
    args = p.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        af = AirflowLocal(repo=args.repo, home=args.home, project=args.project, host=args.host, port=args.port,
                          users=parse_users(args.users), pipeline_user=args.pipeline_user,
                          parallelism=args.parallelism)
    except AirflowLaunchError as exc:
        log.error("error: %s", exc)
        return 2

    def _interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # Ctrl-C and SIGTERM stop everything, even when SIGINT arrives ignored (a job started in the background)
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        af.start(args.timeout)
        for line in af.banner():
            log.info("%s", line)
        af.wait_forever()
    except KeyboardInterrupt:
        log.info("stopping Airflow ...")
        return 0
    except AirflowLaunchError as exc:
        log.error("error: %s", exc)
        return 1
    finally:
        af.stop()
        log.info("stopped (AIRFLOW_HOME=%s kept: DB, logs, passwords)", af.home)
    return 0


__all__ = [
    "COMPONENTS",
    "DEFAULT_USERS",
    "AirflowLaunchError",
    "AirflowLocal",
    "api_token",
    "free_port",
    "main",
    "parse_users",
    "repo_root",
]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
