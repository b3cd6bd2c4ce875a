"""e2e fixtures: a headless Chromium (installed from Debian's archive when missing) driven over the
Chrome DevTools Protocol, and each test's outcome on its item (so fixtures can print logs on failure)."""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
#: Screenshots and, on failure, Airflow component logs are copied here (git-ignored) for CI to keep.
ARTIFACTS = REPO / "tests" / "e2e" / "artifacts"
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


def _find_browser() -> str | None:
    explicit = os.environ.get("CVPLATFORM_CHROMIUM")
    if explicit:
        return explicit
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


def _apt_install(packages: list[str]) -> str:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    out = ""
    for attempt in range(3):
        cmd = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        out += res.stdout[-2000:] + res.stderr[-2000:]
        if res.returncode == 0:
            return out
        # a fresh machine has no package lists yet; a busy one may hold the dpkg lock for a moment
        subprocess.run(["apt-get", "update"], capture_output=True, text=True, env=env, timeout=600)
        time.sleep(5 * attempt)
    return out


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """Path of a Chromium; installs Debian's ``chromium`` (+ a font) with apt-get when we are root.

    ``CVPLATFORM_CHROMIUM=/path/to/chrome`` picks another browser. Where none can be had the
    screenshot test is skipped, except under CI (``CI`` set), where it fails.
    """
    found = _find_browser()
    log = ""
    if not found and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        log = _apt_install(["chromium", "fonts-dejavu-core"])
        found = _find_browser()
    if not found:
        why = ("no Chromium found (looked for CVPLATFORM_CHROMIUM, " + ", ".join(BROWSERS) + ") and it could not be "
               "installed (needs root + apt-get: `apt-get install -y chromium`). " + log[-1500:])
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    return found


class Chromium:
    """Headless Chromium with a minimal Chrome DevTools Protocol client (one page, sync websocket).

    Example:
        >>> with Chromium("/usr/bin/chromium", tmp_path) as br:  # doctest: +SKIP
        ...     br.open("http://127.0.0.1:8080/dags/cv_retrain")
        ...     br.wait_for_text(["ingest"], timeout_s=60)
        ...     br.screenshot(tmp_path / "grid.png")
    """

    FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0")

    def __init__(self, executable: str, workdir: Path, *, width: int = 1600, height: int = 1000) -> None:
        self.executable = executable
        self.workdir = Path(workdir)
        self.width, self.height = width, height
        self.proc: subprocess.Popen | None = None
        self.ws: Any = None
        self._ids = itertools.count(1)
        self.log_path = self.workdir / "chromium.log"

    def __enter__(self) -> Chromium:
        import httpx
        from websockets.sync.client import connect

        self.workdir.mkdir(parents=True, exist_ok=True)
        profile = Path(tempfile.mkdtemp(prefix="chromium-profile-", dir=self.workdir))
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [self.executable, *self.FLAGS, f"--user-data-dir={profile}",
             f"--window-size={self.width},{self.height}", "about:blank"],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        active = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not active.is_file() or not active.read_text().strip():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise AssertionError(f"chromium did not start: {self.log_path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)
        port = int(active.read_text().split()[0])
        pages = [t for t in httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json() if t["type"] == "page"]
        self._exit = contextlib.ExitStack()
        self.ws = self._exit.enter_context(
            connect(pages[0]["webSocketDebuggerUrl"], max_size=64 * 1024 * 1024, open_timeout=30))
        self.call("Page.enable")
        self.call("Network.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height,
                  deviceScaleFactor=1, mobile=False)
        return self

    def call(self, method: str, timeout_s: float = 60.0, **params: Any) -> dict[str, Any]:
        """Send one CDP command and return its result (events that arrive meanwhile are dropped)."""
        i = next(self._ids)
        self.ws.send(json.dumps({"id": i, "method": method, "params": params}))
        deadline = time.monotonic() + timeout_s
        while True:
            msg = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if msg.get("id") == i:
                if "error" in msg:
                    raise AssertionError(f"CDP {method} failed: {msg['error']}")
                return msg.get("result", {})

    def open(self, url: str) -> None:
        res = self.call("Page.navigate", url=url)
        assert not res.get("errorText"), f"navigating to {url} failed: {res}"

    def text(self) -> str:
        """The page's visible text (``document.body.innerText``)."""
        res = self.call("Runtime.evaluate", expression="document.body ? document.body.innerText : ''",
                        returnByValue=True)
        return str(res.get("result", {}).get("value") or "")

    def evaluate(self, expression: str) -> Any:
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True).get("result", {}).get("value")

    def wait_for_text(self, needles: list[str], timeout_s: float = 90.0) -> str:
        """Poll the page text until every needle is in it; returns the text (AssertionError on timeout)."""
        deadline = time.monotonic() + timeout_s
        text = ""
        while time.monotonic() < deadline:
            text = self.text()
            if all(n in text for n in needles):
                return text
            time.sleep(0.5)
        missing = [n for n in needles if n not in text]
        raise AssertionError(f"the page never showed {missing} within {timeout_s:g}s; it shows:\n{text[:3000]}")

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=False)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def __exit__(self, *exc: object) -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):  # the browser may already be gone
                self._exit.close()
            self.ws = None
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None


@pytest.fixture
def chromium(chromium_path: str, tmp_path: Path) -> Iterator[Chromium]:
    """A started headless Chromium (fresh profile under tmp_path), stopped after the test."""
    with Chromium(chromium_path, tmp_path / "chromium") as browser:
        yield browser
