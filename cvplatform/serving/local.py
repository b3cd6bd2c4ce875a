"""Run the server and the traffic replay as local subprocesses on loopback (demo, tests, benchmarks).

:class:`LocalServer` starts ``python -m cvplatform serve`` on a free 127.0.0.1 port in a
project root and waits until it answers (and, by default, until a champion is loaded);
:class:`ReplayProcess` starts ``python -m cvplatform.serving.replay`` against it. Both stop
their own process (SIGTERM, then SIGKILL after a grace period) and keep its log for error
messages.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cvplatform.errors import CVPlatformError
from cvplatform.serving.schemas import ADMIN_TOKEN_ENV

log = logging.getLogger(__name__)


class LocalProcessError(CVPlatformError):
    """A local server or replay process failed to start or died."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now.

    Example:
        >>> 0 < free_port() < 65536
        True
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-n:]
    except OSError:
        return ""


def _stop_process(proc: subprocess.Popen, grace_s: float) -> int | None:
    if proc.poll() is not None:
        return proc.returncode
    try:
        proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(timeout=10)
    except ProcessLookupError:
        return proc.returncode


class LocalServer:
    """``cvplatform serve`` as a subprocess on a free loopback port.

    Args:
        root: project root (working directory of the server: params.yaml, mlflow.db, configs/).
        params_file: params file, relative to ``root``.
        overrides: ``--set`` overrides for the server.
        model: serve this local ONNX file instead of registry aliases.
        config: serving config path (default ``serve.config``).
        token: admin token (default: a fresh random one; read it from :attr:`token`).
        env: extra environment variables.
        wait_ready: also wait for a loaded champion (``/v2/health/ready``), not just liveness.
        startup_timeout_s: how long to wait.

    Example:
        >>> with LocalServer("/srv/project") as srv:  # doctest: +SKIP
        ...     httpx.get(f"{srv.url}/v2/health/ready").status_code
        200
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        params_file: str = "params.yaml",
        overrides: Sequence[str] = (),
        model: str | os.PathLike[str] | None = None,
        config: str | os.PathLike[str] | None = None,
        token: str | None = None,
        env: Mapping[str, str] | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        wait_ready: bool = True,
        startup_timeout_s: float = 120.0,
        log_level: str = "warning",
    ) -> None:
        self.root = Path(root).resolve()
        self.params_file = params_file
        self.overrides = list(overrides)
        self.model = model
        self.config = config
        self.token = token or secrets.token_urlsafe(24)
        self.env = dict(env or {})
        self.host = host
        self.port = port
        self.wait_ready = wait_ready
        self.startup_timeout_s = startup_timeout_s
        self.log_level = log_level
        self.proc: subprocess.Popen | None = None
        self.log_path: Path | None = None
        self._log_fh: Any = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "cvplatform", "serve", "--host", self.host, "--port", str(self.port),
               "--params", self.params_file, "--log-level", self.log_level]
        for o in self.overrides:
            cmd += ["--set", o]
        if self.model is not None:
            cmd += ["--model", str(self.model)]
        if self.config is not None:
            cmd += ["--config", str(self.config)]
        return cmd

    def start(self) -> LocalServer:
        import httpx

        if self.port is None:
            self.port = free_port(self.host)
        fd, name = tempfile.mkstemp(prefix="cvplatform-serve-", suffix=".log")
        os.close(fd)
        self.log_path = Path(name)
        self._log_fh = self.log_path.open("wb")
        env = {**os.environ, **self.env, ADMIN_TOKEN_ENV: self.token, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(self.command(), cwd=self.root, env=env, stdout=self._log_fh,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        path = "/v2/health/ready" if self.wait_ready else "/v2/health/live"
        deadline = time.monotonic() + self.startup_timeout_s
        last = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise LocalProcessError(
                    f"the server exited with code {self.proc.returncode} while starting "
                    f"({' '.join(self.command())} in {self.root}). Its log:\n{_tail(self.log_path)}"
                )
            try:
                r = httpx.get(self.url + path, timeout=2.0)
                if r.status_code == 200:
                    log.info("server ready at %s (pid %s)", self.url, self.proc.pid)
                    return self
                last = f"{r.status_code} {r.text[:200]}"
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}"
            time.sleep(0.25)
        self.stop()
        raise LocalProcessError(
            f"the server at {self.url} did not become {'ready' if self.wait_ready else 'live'} within "
            f"{self.startup_timeout_s:g}s (last answer: {last}). Is a champion set in the registry? Its log:\n"
            f"{_tail(self.log_path) if self.log_path else ''}"
        )

    def stop(self, grace_s: float = 15.0) -> int | None:
        rc = None
        if self.proc is not None:
            rc = _stop_process(self.proc, grace_s)
            with contextlib.suppress(ProcessLookupError, PermissionError):  # its own session: anything it left
                os.killpg(self.proc.pid, signal.SIGKILL)
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None
        return rc

    def log_text(self) -> str:
        return _tail(self.log_path, 20000) if self.log_path else ""

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ReplayProcess:
    """``python -m cvplatform.serving.replay`` as a subprocess; :meth:`stop` returns its report.

    Example:
        >>> with ReplayProcess(url, root=".", split="test", corrupt=0.3) as rp:  # doctest: +SKIP
        ...     time.sleep(10)
        >>> rp.report["failures"]  # doctest: +SKIP
        0
    """

    def __init__(
        self,
        url: str,
        *,
        root: str | os.PathLike[str],
        manifest: str = "data/processed/manifest.parquet",
        split: str = "test",
        corrupt: float = 0.0,
        concurrency: int = 2,
        rate: float | None = None,
        sessions: int = 50,
        seed: int = 0,
        duration_s: float | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.url = url
        self.root = Path(root).resolve()
        self.args = ["--url", url, "--manifest", manifest, "--root", str(self.root), "--split", split,
                     "--corrupt", str(corrupt), "--concurrency", str(concurrency), "--sessions", str(sessions),
                     "--seed", str(seed)]
        if rate:
            self.args += ["--rate", str(rate)]
        if duration_s is not None:
            self.args += ["--duration", str(duration_s)]
        self.args += list(extra_args)
        self.proc: subprocess.Popen | None = None
        self.report: dict[str, Any] | None = None
        self.report_path: Path | None = None
        self.log_path: Path | None = None
        self._log_fh: Any = None

    def start(self) -> ReplayProcess:
        fd, name = tempfile.mkstemp(prefix="cvplatform-replay-", suffix=".json")
        os.close(fd)
        self.report_path = Path(name)
        self.report_path.unlink()
        fd, name = tempfile.mkstemp(prefix="cvplatform-replay-", suffix=".log")
        os.close(fd)
        self.log_path = Path(name)
        self._log_fh = self.log_path.open("wb")
        cmd = [sys.executable, "-m", "cvplatform.serving.replay", *self.args, "--report", str(self.report_path)]
        self.proc = subprocess.Popen(cmd, cwd=self.root, stdout=self._log_fh, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace_s: float = 30.0) -> dict[str, Any] | None:
        if self.proc is not None:
            _stop_process(self.proc, grace_s)
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None
        if self.report_path is not None and self.report_path.is_file():
            self.report = json.loads(self.report_path.read_text(encoding="utf-8"))
        return self.report

    def log_text(self) -> str:
        return _tail(self.log_path, 20000) if self.log_path else ""

    def __enter__(self) -> ReplayProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["LocalProcessError", "LocalServer", "ReplayProcess", "free_port"]
