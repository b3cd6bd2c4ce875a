"""Several server processes on one port (``serve.workers`` > 1), consistent for the canary controller.

One uvicorn process runs one event loop: HTTP parsing, decoding and preprocessing all share it, so
a second core barely helps. With ``serve.workers: N`` the ``cvplatform serve`` process becomes a
**supervisor**: it binds the listening socket once, starts N worker processes
(``python -m cvplatform.serving.workers``) that inherit it, and the kernel hands each new connection
to one of the workers blocked in ``accept``. Each worker loads its own model sessions and runs the
same app as a single-process server.

**Consistency** goes through a private folder of the supervisor (the :class:`WorkerBus`):

* ``control.json`` holds a generation, the shared serving state (champion and canary versions and
  the traffic split, :meth:`ModelManager.shared_state`), a stats-reset counter and a stats-request
  counter. It is written under an ``flock`` and replaced atomically.
* A worker that takes an admin action (canary, traffic, abort, promote, rollback, reload) does it
  as before (registry aliases included), then publishes its state with a new generation. Every
  other worker reads ``control.json`` every ``serve.sync_interval_s`` and applies a new generation
  with :meth:`ModelManager.apply_shared` (loading a model if needed, never touching the registry),
  then writes ``ack-<i>.json``. The admin call returns when every worker has acknowledged, at most
  ``serve.sync_timeout_s`` later; its answer says which workers applied it (``workers``).
* ``POST /admin/stats/reset`` bumps the reset counter and waits for every worker to reset.
  ``GET /admin/stats`` bumps the request counter; each worker writes its raw statistics
  (:meth:`StatsBook.export`) to ``stats-<i>.json`` and the answering worker sums them
  (:meth:`StatsBook.merged`), so the canary controller sees every request of every worker.
* ``/metrics`` works the same way: a scrape bumps the ``metrics`` counter, each worker writes its
  metric families (:meth:`ServingMetrics.export_samples`) to ``metrics-<i>.json``, and the answering
  worker renders their sum (:func:`~cvplatform.serving.metrics.render_merged`). Requests pay nothing
  for this; a scrape does.

The supervisor restarts a worker that dies after its startup finished (a new worker loads the models the
aliases name, then applies the last published state before it accepts connections), stops every worker on SIGTERM/SIGINT
(SIGKILL after a grace period) and removes its folder. Workers die with it (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import logging
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from cvplatform.serving.metrics import ServingMetrics, StatsBook
    from cvplatform.serving.models import ModelManager

log = logging.getLogger(__name__)

WORKER_ENV = "CVPLATFORM_SERVE_WORKER"
"""Set in each worker process: its index (0..N-1)."""


def _write_json(path: Path, data: dict[str, Any]) -> None:
    # a temporary name of its own per write: one worker may answer the same stats request twice at once (the
    # request's handler and its follower loop, each in a thread), and a shared name let one rename the other's file
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    tmp.write_bytes(json.dumps(data).encode())
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------- the bus between workers
class WorkerBus:
    """One worker's end of the shared control folder (see the module docstring).

    Args:
        directory: the supervisor's private folder.
        index: this worker (0..workers-1).
        workers: how many workers share the port.
        interval_s: how often :meth:`run` reads ``control.json``.
        timeout_s: how long an admin call waits for the other workers.
    """

    def __init__(self, directory: str | os.PathLike[str], index: int, workers: int, *, interval_s: float = 0.02,
                 timeout_s: float = 60.0) -> None:
        self.dir = Path(directory)
        self.index = int(index)
        self.workers = int(workers)
        self.interval_s = float(interval_s)
        self.timeout_s = float(timeout_s)
        self.pid = os.getpid()
        self.applied = {"gen": 0, "reset": 0, "stats": 0, "metrics": 0}
        self.errors: dict[str, str] = {}
        self._applying: asyncio.Task | None = None

    @property
    def control(self) -> Path:
        return self.dir / "control.json"

    def _update_control(self, **bump: Any) -> dict[str, Any]:
        """Change ``control.json`` under the folder's lock: counters in ``bump`` go up by one, ``state`` is set."""
        with (self.dir / "lock").open("a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            ctl = _read_json(self.control) or {"gen": 0, "reset": 0, "stats": 0, "metrics": 0, "state": None}
            for key, value in bump.items():
                if key == "state":
                    ctl["gen"] += 1
                    ctl["state"] = value
                else:
                    ctl[key] += 1
            _write_json(self.control, ctl)
            return ctl

    def _ack(self) -> None:
        _write_json(self.dir / f"ack-{self.index}.json", {**self.applied, "pid": self.pid, "errors": self.errors})

    async def _wait(self, key: str, target: int, files: str = "ack") -> dict[int, dict[str, Any]]:
        """Every worker's ``<files>-<i>.json`` whose ``key`` reached ``target`` (waits up to the timeout)."""
        deadline = time.monotonic() + self.timeout_s
        got: dict[int, dict[str, Any]] = {}
        while True:
            for i in range(self.workers):
                if i not in got:
                    data = _read_json(self.dir / f"{files}-{i}.json")
                    if data is not None and int(data.get(key, 0)) >= target:
                        got[i] = data
            if len(got) == self.workers or time.monotonic() >= deadline:
                return got
            await asyncio.sleep(self.interval_s / 2)

    def _report(self, acks: dict[int, dict[str, Any]]) -> dict[str, Any]:
        pending = [i for i in range(self.workers) if i not in acks]
        if pending:
            log.warning("workers %s did not apply the change within serve.sync_timeout_s=%gs", pending,
                        self.timeout_s)
        return {"count": self.workers, "applied": sorted(acks), "pending": pending,
                "pids": {str(i): a.get("pid") for i, a in sorted(acks.items())},
                "errors": {str(i): a["errors"] for i, a in sorted(acks.items()) if a.get("errors")}}

    # ---------------------------------------------------------------- the admin side
    async def publish(self, manager: ModelManager) -> dict[str, Any]:
        """Share this worker's serving state after an admin action; wait until every worker applied it."""
        ctl = self._update_control(state=manager.shared_state())
        self.applied["gen"] = max(self.applied["gen"], ctl["gen"])
        self.errors = {}
        self._ack()
        return self._report(await self._wait("gen", ctl["gen"]))

    async def reset_stats(self, stats: StatsBook) -> dict[str, Any]:
        """Reset the statistics of every worker (``POST /admin/stats/reset``)."""
        ctl = self._update_control(reset=True)
        stats.reset()
        self.applied["reset"] = max(self.applied["reset"], ctl["reset"])
        self._ack()
        return self._report(await self._wait("reset", ctl["reset"]))

    async def gather_stats(self, stats: StatsBook) -> tuple[StatsBook, dict[str, Any]]:
        """Every worker's statistics summed into one book, and which workers reported (``GET /admin/stats``)."""
        from cvplatform.serving.metrics import StatsBook

        ctl = self._update_control(stats=True)
        await self._answer_stats(stats, ctl["stats"])
        parts = await self._wait("stats", ctl["stats"], files="stats")
        book = StatsBook.merged([parts[i]["book"] for i in sorted(parts)], stats.window, stats.bins,
                                stats.disagreements_kept, stats.feedback_kept)
        report = self._report(parts)
        report["requests"] = {str(i): {k: v["requests"] + v["fallbacks"] for k, v in parts[i]["book"]["variants"].items()}
                              for i in sorted(parts)}
        return book, report

    async def gather_metrics(self, metrics: ServingMetrics) -> tuple[bytes, str]:
        """Every worker's Prometheus metrics in one exposition (``GET /metrics``)."""
        from cvplatform.serving.metrics import render_merged

        ctl = self._update_control(metrics=True)
        await self._answer_metrics(metrics, ctl["metrics"])
        parts = await self._wait("metrics", ctl["metrics"], files="metrics")
        self._report(parts)
        return render_merged([parts[i]["families"] for i in sorted(parts)])

    async def _answer_metrics(self, metrics: ServingMetrics, n: int) -> None:
        data = {"metrics": n, "pid": self.pid, "families": metrics.export_samples()}
        await asyncio.to_thread(_write_json, self.dir / f"metrics-{self.index}.json", data)
        self.applied["metrics"] = max(self.applied["metrics"], n)

    async def _answer_stats(self, stats: StatsBook, n: int) -> None:
        data = {"stats": n, "pid": self.pid, "book": stats.export()}
        await asyncio.to_thread(_write_json, self.dir / f"stats-{self.index}.json", data)
        self.applied["stats"] = max(self.applied["stats"], n)

    # ---------------------------------------------------------------- the follower side
    async def catch_up(self, manager: ModelManager, stats: StatsBook) -> None:
        """Apply what was published before this worker started (a restarted worker), before it serves."""
        await self.poll(manager, stats)
        if self._applying is not None:
            await asyncio.shield(self._applying)
        self._ack()  # tells the supervisor this worker started: from now on it is restarted when it dies

    async def run(self, manager: ModelManager, stats: StatsBook) -> None:
        """Follow ``control.json`` until cancelled: apply new states, resets and stats requests."""
        self._ack()
        while True:
            with contextlib.suppress(Exception):
                await self.poll(manager, stats)
            await asyncio.sleep(self.interval_s)

    async def poll(self, manager: ModelManager, stats: StatsBook) -> None:
        """One look at ``control.json`` (a state being loaded does not hold up resets and stats requests)."""
        ctl = _read_json(self.control)
        if ctl is None:
            return
        changed = False
        if ctl["reset"] > self.applied["reset"]:
            stats.reset()
            self.applied["reset"] = ctl["reset"]
            changed = True
        if ctl["stats"] > self.applied["stats"]:
            await self._answer_stats(stats, ctl["stats"])
        if ctl.get("metrics", 0) > self.applied["metrics"] and manager is not None:
            await self._answer_metrics(manager.metrics, ctl["metrics"])
        if ctl["gen"] > self.applied["gen"] and ctl["state"] is not None and self._applying is None:
            self._applying = asyncio.create_task(self._apply(manager, ctl["gen"], ctl["state"]))
        if changed:
            self._ack()

    async def _apply(self, manager: ModelManager, gen: int, state: dict[str, Any]) -> None:
        try:
            self.errors = await manager.apply_shared(state)
        except Exception as exc:  # never kill the follower loop; the admin call reports it
            self.errors = {"state": f"{type(exc).__name__}: {exc}"}
            log.error("worker %d could not apply generation %d: %s", self.index, gen, exc)
        finally:
            self.applied["gen"] = max(self.applied["gen"], gen)
            self._ack()
            self._applying = None


def bus_from_env() -> WorkerBus | None:
    """The :class:`WorkerBus` of this worker process (None outside a multi-worker server)."""
    spec = os.environ.get("CVPLATFORM_SERVE_BUS")
    if not spec:
        return None
    d = json.loads(spec)
    return WorkerBus(d["dir"], int(os.environ[WORKER_ENV]), d["workers"], interval_s=d["interval_s"],
                     timeout_s=d["timeout_s"])


# --------------------------------------------------------------------------- the supervisor
@dataclass
class _Worker:
    index: int
    proc: subprocess.Popen


def bind_socket(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """The listening socket every worker inherits.

    Raises:
        ConfigError: the address cannot be bound (in use, or not an address of this machine).
    """
    from cvplatform.errors import ConfigError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"serve: cannot listen on {host}:{port} ({exc.strerror}); pick another --port / "
                          "serve.port, or stop what holds it.") from None
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def _spawn(index: int, sock: socket.socket, spec_path: Path, env: dict[str, str]) -> _Worker:
    cmd = [sys.executable, "-m", "cvplatform.serving.workers", "--spec", str(spec_path), "--fd", str(sock.fileno())]
    proc = subprocess.Popen(cmd, env={**env, WORKER_ENV: str(index)}, pass_fds=(sock.fileno(),))
    return _Worker(index, proc)


def run_workers(params: Any, *, host: str, port: int, workers: int, root: Any = None, model: Any = None,
                config_path: Any = None, log_level: str = "info", grace_s: float = 20.0) -> int:
    """Serve with ``workers`` processes on one socket until SIGTERM/SIGINT; returns the exit code."""
    serve = params.serve
    sock = bind_socket(host, port)
    folder = Path(tempfile.mkdtemp(prefix="cvplatform-workers-"))
    spec_path = folder / "spec.pickle"
    spec_path.write_bytes(pickle.dumps({"params": params, "root": str(root) if root else os.getcwd(),
                                        "model": str(model) if model else None,
                                        "config_path": str(config_path) if config_path else None,
                                        "log_level": log_level}))
    env = {**os.environ, "CVPLATFORM_SERVE_BUS": json.dumps(
        {"dir": str(folder), "workers": workers, "interval_s": serve.sync_interval_s,
         "timeout_s": serve.sync_timeout_s})}
    stopping: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        stopping.append(signum)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    procs = [_spawn(i, sock, spec_path, env) for i in range(workers)]
    log.info("serving on http://%s:%d with %d worker processes (pids %s)", host, port, workers,
             [w.proc.pid for w in procs])
    code = 0
    try:
        code = _supervise(procs, sock, spec_path, env, stopping)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        _stop_all(procs, grace_s)
        sock.close()
        shutil.rmtree(folder, ignore_errors=True)
    return code


def _supervise(procs: list[_Worker], sock: socket.socket, spec_path: Path, env: dict[str, str],
               stopping: list[int]) -> int:
    """Restart workers that die after they started serving; give up (exit code) when one dies while starting.

    A worker has started serving once it wrote its ``ack-<i>.json`` (after its models loaded, before it accepts).
    """
    while not stopping:
        time.sleep(0.2)
        for k, w in enumerate(procs):
            rc = w.proc.poll()
            if rc is None or stopping:
                continue
            ack = _read_json(spec_path.parent / f"ack-{w.index}.json") or {}
            if ack.get("pid") != w.proc.pid:
                log.error("worker %d exited with code %s while starting; stopping the server", w.index, rc)
                return rc or 1
            log.warning("worker %d (pid %d) exited with code %s; starting a new one", w.index, w.proc.pid, rc)
            procs[k] = _spawn(w.index, sock, spec_path, env)
    return 0


def _stop_all(procs: list[_Worker], grace_s: float) -> None:
    for w in procs:
        if w.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                w.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for w in procs:
        try:
            w.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            w.proc.kill()
            w.proc.wait(timeout=10)


# --------------------------------------------------------------------------- one worker
def _die_with_parent() -> None:
    """Ask Linux to SIGTERM this process when the supervisor dies (no orphaned workers)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def worker_main(argv: list[str] | None = None) -> int:
    """Entry point of one worker: build the app, then serve on the inherited socket until SIGTERM."""
    import uvicorn

    from cvplatform.errors import CVPlatformError
    from cvplatform.serving.app import build_app
    from cvplatform.serving.budget import return_large_buffers_to_os
    from cvplatform.serving.protocol import protocol_class

    ap = argparse.ArgumentParser(prog="cvplatform.serving.workers")
    ap.add_argument("--spec", required=True)
    ap.add_argument("--fd", type=int, required=True)
    args = ap.parse_args(argv)
    _die_with_parent()
    spec = pickle.loads(Path(args.spec).read_bytes())
    logging.basicConfig(level=getattr(logging, str(spec["log_level"]).upper(), logging.INFO),
                        format=f"%(asctime)s worker-{os.environ.get(WORKER_ENV, '?')} %(levelname)s %(name)s: "
                               "%(message)s")
    return_large_buffers_to_os()
    sock = socket.socket(fileno=args.fd)
    try:
        app = build_app(spec["params"], root=spec["root"], model=spec["model"], config_path=spec["config_path"])
    except CVPlatformError as exc:  # the supervisor stops the server with this exit code
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    limits = app.state.cv.config.limits
    config = uvicorn.Config(app, log_level=spec["log_level"], access_log=False, ws="none",
                            http=protocol_class(limits), timeout_keep_alive=limits.keep_alive_timeout_s)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(worker_main())


__all__ = ["WORKER_ENV", "WorkerBus", "bind_socket", "bus_from_env", "run_workers", "worker_main"]
