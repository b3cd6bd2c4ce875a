"""cv_retrain on a REAL Airflow 3 (api-server + scheduler + dag-processor + triggerer, LocalExecutor,
SQLite), driven only through its public REST API like an operator and a reviewer would:

trigger -> the run stops at the `approval` human-in-the-loop task -> its detail shows the gate summary ->
a user who is not an assigned reviewer is refused -> reviewer `alice` approves with her own token ->
record_approval records alice (the version's author is the pipeline user `pipeline-bot`: four-eyes) ->
canary_deploy promotes the version to `champion` -> `cvplatform serve` answers with that version.
Headless Chromium then logs in as alice through the login page and screenshots the DAG's grid view
and the approval's "Required Actions" page; last, a cleared `register` task re-runs without a
duplicate registry version.

Airflow runs on a throw-away copy of the repo with the real params.yaml shrunk (the TINY dict of
tests/dags/test_cv_retrain.py). Component logs are under the test's tmp dir; on a failure they are
printed and copied to tests/e2e/artifacts/airflow-logs/ (git-ignored), like the screenshot.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from cvplatform.airflow_local import AirflowLocal
from tests.dags.test_cv_retrain import TINY
from tests.e2e.conftest import ARTIFACTS
from tests.fixtures.repo import copy_repo, shrink_params

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(1800)]

DAG = "cv_retrain"
TASKS = ("prepare", "ingest", "validate", "train", "export", "evaluate", "register", "route", "approval",
         "record_approval", "canary_deploy")
REVIEWER, OPERATOR, PIPELINE_USER = "alice", "admin", "pipeline-bot"
COMMENT = "gate summary read in Airflow; approved for canary"
# The real params, shrunk. No schedule: unpausing must not start a scheduled run next to ours
# (max_active_runs=1). Reviewers alice/bob become the approval task's assigned users.
E2E_PARAMS = {
    **TINY,
    "orchestration.schedule": None,
    "orchestration.monitor_schedule": None,
    "orchestration.retry_delay_s": 5,
    "registry.reviewers": ["alice", "bob"],
}
FAILED = {"failed", "upstream_failed"}


@dataclass
class Stack:
    """The running Airflow, the project it works on, and REST clients per user."""

    af: AirflowLocal
    project: Path
    base: Path
    timings: dict[str, float] = field(default_factory=dict)
    run_id: str | None = None
    notes: list[str] = field(default_factory=list)
    _clients: dict[str, httpx.Client] = field(default_factory=dict)

    def client(self, user: str) -> httpx.Client:
        """REST client for /api/v2 with ``user``'s own JWT (POST /auth/token)."""
        if user not in self._clients:
            self._clients[user] = httpx.Client(
                base_url=f"{self.af.url}/api/v2", timeout=60.0,
                headers={"Authorization": f"Bearer {self.af.token(user)}", "Accept": "application/json"},
            )
        return self._clients[user]

    def task_instances(self, run_id: str) -> dict[str, dict[str, Any]]:
        r = ok(self.client(OPERATOR).get(f"/dags/{DAG}/dagRuns/{run_id}/taskInstances"))
        return {ti["task_id"]: ti for ti in r.json()["task_instances"]}

    def run_state(self, run_id: str) -> str:
        return str(ok(self.client(OPERATOR).get(f"/dags/{DAG}/dagRuns/{run_id}")).json()["state"])

    def task_log(self, run_id: str, task_id: str, try_number: int, lines: int = 80) -> str:
        r = self.client(OPERATOR).get(f"/dags/{DAG}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}")
        if r.status_code != 200:
            return f"(log of {task_id} try {try_number}: HTTP {r.status_code} {r.text[:300]})"
        content = r.json().get("content") or []
        out = [f"{c.get('timestamp', '')} {c.get('level', '')} {c.get('event', '')}" if isinstance(c, dict) else str(c)
               for c in content]
        return "\n".join(out[-lines:])

    def diagnostics(self) -> str:
        """Task states + logs of failed tasks of the current run + the end of every component log."""
        parts = []
        if self.run_id:
            try:
                tis = self.task_instances(self.run_id)
                parts.append("task states: " + ", ".join(f"{t}={ti['state']}(try {ti['try_number']})"
                                                         for t, ti in tis.items()))
                for t, ti in tis.items():
                    if ti["state"] in FAILED or (ti["state"] == "up_for_retry"):
                        parts.append(f"===== log of {t} =====\n{self.task_log(self.run_id, t, ti['try_number'])}")
            except Exception as exc:  # the api-server itself may be the problem
                parts.append(f"(could not read task states: {exc!r})")
        parts.append(self.af.logs_tail(2500))
        return "\n".join(parts)

    def wait_until(self, what: str, check: Callable[[], Any], timeout_s: float, interval_s: float = 2.0) -> Any:
        """Poll ``check`` until it returns something truthy; fail with diagnostics on timeout or a dead component."""
        deadline = time.monotonic() + timeout_s
        last: Any = None
        while time.monotonic() < deadline:
            self.af.check_alive()
            last = check()
            if last:
                return last
            time.sleep(interval_s)
        raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what} (last: {last!r})\n{self.diagnostics()}")

    def close(self) -> None:
        for c in self._clients.values():
            c.close()
        self._clients.clear()


def ok(r: httpx.Response) -> httpx.Response:
    assert 200 <= r.status_code < 300, f"{r.request.method} {r.request.url} -> {r.status_code}: {r.text[:1500]}"
    return r


def _save_logs(af: AirflowLocal, name: str) -> Path:
    dest = ARTIFACTS / "airflow-logs" / name
    shutil.rmtree(dest, ignore_errors=True)
    if af.log_dir.is_dir():
        shutil.copytree(af.log_dir, dest)
    return dest


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("airflow_e2e")
    project = copy_repo(base / "repo")
    shrink_params(project / "params.yaml", E2E_PARAMS)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "e2e params"],
                   cwd=project, check=True)
    subprocess.run([str(Path(sys.executable).parent / "dvc"), "remote", "modify", "--local", "local", "url",
                    str(base / "dvc-remote")], cwd=project, check=True, capture_output=True)  # this test's remote
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)  # the copy's own SQLite registry
    mp.setenv("CVPLATFORM_RUNS_DIR", str(base / "runs"))  # the runs' working copies
    af = AirflowLocal(repo=project, home=base / "airflow_home", project=project, port=0,
                      pipeline_user=PIPELINE_USER, parallelism=2)
    failed_before = request.session.testsfailed
    t0 = time.monotonic()
    try:
        af.start(timeout_s=300)
    except BaseException:
        _save_logs(af, "start")
        af.stop()
        mp.undo()
        raise
    st = Stack(af, project, base, timings={"airflow_start_s": round(time.monotonic() - t0, 1)})
    try:
        yield st
    finally:
        st.close()
        codes = af.stop()
        mp.undo()
        if request.session.testsfailed > failed_before:
            _save_logs(af, "run")
            print(f"airflow stopped (exit codes {codes}); component logs: {af.log_dir}")


@pytest.fixture(autouse=True)
def _print_diagnostics_on_failure(request: pytest.FixtureRequest, stack: Stack) -> Iterator[None]:
    """A failed test shows the task states, failed task logs and every component's log tail."""
    yield
    rep = getattr(request.node, "rep_call", None)  # set by tests/e2e/conftest.py
    if rep is not None and rep.failed:
        print(stack.diagnostics())


@dataclass
class Run:
    run_id: str
    detail: dict[str, Any]
    denied: httpx.Response
    answer: dict[str, Any]
    registered: dict[str, Any]


def _settle_park(stack: Stack, run_id: str, try_number: int, timeout_s: float = 60.0) -> bool:
    """Wait (like a reviewer reading the summary) until the scheduler has processed the exit of the
    task process that parked ``approval`` in AWAITING_INPUT.

    An answer that lands before that (about a second after parking) races the scheduler in Airflow
    3.3: the answer moves the task to SCHEDULED/QUEUED, then the late "process exited" event makes
    the scheduler think the queued task was killed externally, and it retries the task, which asks
    again. The scheduler logs "TaskInstance Finished ... state=awaiting_input" when it has processed
    the event. Returns False (and lets the caller go on) if that line never shows up.
    """
    needle = f"task_id=approval, run_id={run_id},"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        log = (stack.af.log_dir / "scheduler.log").read_text(encoding="utf-8", errors="replace")
        if any("TaskInstance Finished" in ln and needle in ln and "state=awaiting_input" in ln
               and f"try_number={try_number}," in ln for ln in log.splitlines()):
            return True
        time.sleep(0.5)
    stack.notes.append(f"the scheduler never logged the park of approval try {try_number}; answered anyway")
    return False


@pytest.fixture(scope="module")
def retrain_run(stack: Stack) -> Run:
    """Unpause, trigger through the REST API, approve as alice, wait for the run to succeed."""
    admin, alice = stack.client(OPERATOR), stack.client(REVIEWER)
    t0 = time.monotonic()
    stack.wait_until("the dag-processor to parse cv_retrain",
                     lambda: admin.get(f"/dags/{DAG}").status_code == 200, timeout_s=180)
    errors = ok(admin.get("/importErrors")).json()["import_errors"]
    assert not [e for e in errors if "cv_retrain" in e.get("filename", "")], errors
    ok(admin.patch(f"/dags/{DAG}", json={"is_paused": False}))
    run_id = f"e2e__{uuid.uuid4().hex[:10]}"
    stack.run_id = run_id
    trig = ok(admin.post(f"/dags/{DAG}/dagRuns",
                         json={"dag_run_id": run_id, "logical_date": None, "conf": {"source": "digits"}})).json()
    assert trig["dag_run_id"] == run_id and trig["conf"] == {"source": "digits"}

    def approval_waiting() -> dict[str, Any] | None:
        tis = stack.task_instances(run_id)
        bad = {t: ti["state"] for t, ti in tis.items() if ti["state"] in FAILED}
        assert not bad and stack.run_state(run_id) != "failed", f"run {run_id} failed: {bad}\n{stack.diagnostics()}"
        return tis["approval"] if tis["approval"]["state"] == "awaiting_input" else None

    parked = stack.wait_until("the approval task to wait for input", approval_waiting, timeout_s=900, interval_s=3)
    stack.timings["trigger_to_approval_s"] = round(time.monotonic() - t0, 1)

    hitl = f"/dags/{DAG}/dagRuns/{run_id}/taskInstances/approval/-1/hitlDetails"
    detail = ok(alice.get(hitl)).json()
    # the operator (admin) is not one of the assigned reviewers: the HITL endpoint refuses him
    denied = admin.patch(hitl, json={"chosen_options": ["Approve"], "params_input": {"comment": "self-service"}})
    _settle_park(stack, run_id, parked["try_number"])
    answer = ok(alice.patch(hitl, json={"chosen_options": ["Approve"], "params_input": {"comment": COMMENT}})).json()
    answered_try = parked["try_number"]
    t1 = time.monotonic()

    def finished() -> str | None:
        nonlocal answered_try
        state = stack.run_state(run_id)
        assert state != "failed", f"run {run_id} failed\n{stack.diagnostics()}"
        if state == "success":
            return state
        ti = stack.task_instances(run_id)["approval"]
        if ti["state"] == "awaiting_input" and ti["try_number"] > answered_try:
            # Airflow lost the answer to the race _settle_park guards against and asks again: answer again
            stack.notes.append(f"approval asked again (try {ti['try_number']}): Airflow lost the first answer")
            _settle_park(stack, run_id, ti["try_number"])
            ok(alice.patch(hitl, json={"chosen_options": ["Approve"], "params_input": {"comment": COMMENT}}))
            answered_try = ti["try_number"]
        return None

    stack.wait_until("the run to succeed after the approval", finished, timeout_s=600, interval_s=3)
    stack.timings["approval_to_success_s"] = round(time.monotonic() - t1, 1)
    reg = ok(admin.get(f"/dags/{DAG}/dagRuns/{run_id}/taskInstances/register/xcomEntries/return_value")).json()
    return Run(run_id, detail, denied, answer, reg["value"])


def _registry(project: Path):
    from cvplatform.config import load_params
    from cvplatform.registry import history, show

    params = load_params(project / "params.yaml")
    return show("cvplatform", params=params, root=project), history("cvplatform", params=params, root=project)


def test_rest_trigger_reviewer_approval_promotes_champion_and_serves_it(stack: Stack, retrain_run: Run):
    run = retrain_run
    version = str(run.registered["version"])
    tis = stack.task_instances(run.run_id)
    assert {t: ti["state"] for t, ti in tis.items()} == dict.fromkeys(TASKS, "success")

    # what the reviewer read: the gate summary of this version, its author, the links
    body = run.detail["body"]
    assert f"cvplatform version {version}" in run.detail["subject"]
    assert f"### cvplatform version {version}" in body
    assert "#### Release gates: 🟢 PASSED" in body and "clean accuracy" in body
    assert "**10 classes**: `0`, `1`" in body and "**test set**: 280 images" in body
    assert f"author `{PIPELINE_USER}`" in body and "[evaluation report](" in body and "[model card](" in body
    assert "latency p50, batch 1" in body and "#### What changed since the champion" in body
    assert run.detail["options"] == ["Approve", "Reject"] and run.detail["defaults"] == ["Reject"]
    assert {u["id"] for u in run.detail["assigned_users"]} == {"alice", "bob"}
    assert run.detail["response_received"] is False  # read before anybody answered

    assert run.denied.status_code == 403, run.denied.text  # admin is not an assigned reviewer
    assert run.answer["responded_by"] == {"id": REVIEWER, "name": REVIEWER}
    assert run.answer["chosen_options"] == ["Approve"]

    # the registry: a new champion = this version, approved by alice (not its author), deployed by the canary
    overview, hist = _registry(stack.project)
    v = {x.version: x for x in overview.versions}[version]
    assert overview.aliases.get("champion") == version
    assert (v.approval, v.reviewer, v.author, v.approval_comment) == ("approved", REVIEWER, PIPELINE_USER, COMMENT)
    assert run.registered["author"] == PIPELINE_USER and run.registered["gates_passed"] is True
    actions = [(e.action, e.actor) for e in hist.events if e.version == version]
    assert [a for a, _ in actions] == ["registered", "approved", "promoted"], actions
    assert actions[0][1] == PIPELINE_USER and actions[1][1] == REVIEWER
    workspace = Path(run.registered["workspace"]["root"])  # the run's own working copy of the project
    deploy = json.loads((workspace / "artifacts/deploy/summary.json").read_text())
    assert deploy["decision"] == "promote" and str(deploy["champion_after"]) == version

    # the serving endpoint answers with that champion
    from cvplatform.data.manifest import read_manifest
    from cvplatform.serving.local import LocalServer

    df = read_manifest(workspace / "data/processed/manifest.parquet")
    test = df[df["split"] == "test"].head(40)
    assert len(test) >= 8
    correct = 0
    with LocalServer(stack.project, startup_timeout_s=180) as srv, httpx.Client(base_url=srv.url, timeout=60) as http:
        for start in range(0, len(test), 8):
            rows = test.iloc[start:start + 8]
            files = [("files", (Path(p).name, (workspace / p).read_bytes(), "image/png")) for p in rows["path"]]
            r = http.post("/v1/predict", files=files)
            assert r.status_code == 200, f"{r.status_code} {r.text[:500]}\n{srv.log_text()[-2000:]}"
            answer = r.json()
            assert answer["version"] == version and answer["variant"] == "champion", answer
            assert len(answer["predictions"]) == len(rows)
            for p, label in zip(answer["predictions"], rows["label"], strict=True):
                assert p["version"] == version
                correct += str(p["class"]) == str(label)
    assert correct / len(test) >= 0.5, f"the served champion got {correct}/{len(test)} test images right"


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", "not a PNG"
    return struct.unpack(">II", data[16:24])


def _ui_login(browser, url: str, user: str, password: str) -> None:
    """Log in through SimpleAuthManager's login page like a person: type, click *Sign in*.

    The page stores the JWT in the ``_token`` cookie that the UI and the API read.
    """
    browser.open(f"{url}/dags")  # not logged in: redirected to /auth/login?next=/dags
    browser.wait_for_text(["Sign in"], timeout_s=60)
    for name, value in (("username", user), ("password", password)):
        browser.evaluate(f"document.querySelector('input[name={name}]').focus()")
        browser.call("Input.insertText", text=value)
    browser.evaluate("document.querySelector('button[type=submit]').click()")
    deadline = time.monotonic() + 60
    cookies: list[str] = []
    while time.monotonic() < deadline and "_token" not in cookies:
        time.sleep(0.5)
        cookies = [c["name"] for c in browser.call("Network.getCookies").get("cookies", [])]
    assert "_token" in cookies, f"logging in as {user} set no _token cookie; the page shows:\n{browser.text()[:1500]}"


def test_grid_view_screenshot_shows_every_task(stack: Stack, retrain_run: Run, chromium):
    url = stack.af.url
    _ui_login(chromium, url, REVIEWER, stack.af.passwords()[REVIEWER])
    chromium.open(f"{url}/dags/{DAG}")
    text = chromium.wait_for_text([DAG, *TASKS], timeout_s=120)
    assert "Page Not Found" not in text and "Sign in" not in text
    # the grid has one cell per task for this run (loaded after the task names), each linking to its task instance
    links: list[str] = []
    cells: set[str] = set()
    deadline = time.monotonic() + 90
    while cells != set(TASKS) and time.monotonic() < deadline:
        time.sleep(0.5)
        links = chromium.evaluate("Array.from(document.querySelectorAll('a[href]')).map(a => a.getAttribute('href'))")
        cells = {t for t in TASKS if any(f"/runs/{retrain_run.run_id}/tasks/{t}" in (h or "") for h in links or [])}
    assert cells == set(TASKS), f"grid cells link to {sorted(cells)}; links: {links}"
    time.sleep(1.0)  # let the last layout pass paint
    shot = chromium.screenshot(stack.project / "artifacts/test-screenshots/cv_retrain_grid.png")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    kept = shutil.copy2(shot, ARTIFACTS / "cv_retrain_grid.png")
    data = Path(kept).read_bytes()
    assert _png_size(data) == (chromium.width, chromium.height)
    assert len(data) > 20_000  # a rendered page, not a blank canvas

    # the approval task's "Required Actions" page: the gate summary the reviewer read, and who answered
    chromium.open(f"{url}/dags/{DAG}/runs/{retrain_run.run_id}/tasks/approval/required_actions")
    text = chromium.wait_for_text(["PASSED: 0 must-pass check(s) failed", f"cvplatform version {retrain_run.registered['version']}",
                                   REVIEWER], timeout_s=120)
    time.sleep(1.0)
    hitl_shot = chromium.screenshot(stack.project / "artifacts/test-screenshots/cv_retrain_approval.png")
    shutil.copy2(hitl_shot, ARTIFACTS / "cv_retrain_approval.png")
    assert _png_size(hitl_shot.read_bytes()) == (chromium.width, chromium.height)
    print(f"screenshots: {kept}, {ARTIFACTS / 'cv_retrain_approval.png'}; timings so far: {stack.timings}")


def test_trigger_form_submits_untouched_and_a_run_with_nothing_new_ends_early(stack: Stack, retrain_run: Run,
                                                                                 chromium):
    """The form as shipped: no field error, Trigger enabled, submitted as it is. Nothing changed since the
    version `retrain_run` registered, so the new run ends after `prepare`, green, with no new version."""
    params_before = (stack.project / "params.yaml").read_bytes()
    url = stack.af.url
    _ui_login(chromium, url, OPERATOR, stack.af.passwords()[OPERATOR])
    chromium.open(f"{url}/dags/{DAG}")
    chromium.wait_for_text([DAG, "Trigger"], timeout_s=120)
    time.sleep(2)
    chromium.evaluate("Array.from(document.querySelectorAll('button')).find(b => b.innerText.trim() === 'Trigger').click()")
    chromium.wait_for_text(["Run Parameters", "Data source", "Architecture", "(params.yaml)"], timeout_s=60)
    time.sleep(1)
    shot = chromium.screenshot(stack.project / "artifacts/test-screenshots/cv_retrain_trigger_form.png")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy2(shot, ARTIFACTS / "cv_retrain_trigger_form.png")
    buttons = chromium.evaluate("Array.from(document.querySelectorAll('[role=dialog] button'))"
                                ".filter(b => b.innerText.trim() === 'Trigger').map(b => b.disabled)")
    assert buttons == [False], buttons  # the submit button is enabled with every field at its default
    dialog = chromium.evaluate("document.querySelector('[role=dialog]').innerText")
    assert "required" not in dialog.lower() and "error" not in dialog.lower(), dialog
    chromium.evaluate("Array.from(document.querySelectorAll('[role=dialog] button'))"
                      ".filter(b => b.innerText.trim() === 'Trigger').pop().click()")
    deadline = time.monotonic() + 60
    run_id = None
    while time.monotonic() < deadline and not run_id:
        time.sleep(0.5)
        path = chromium.evaluate("location.pathname") or ""
        if "/runs/" in path:
            run_id = path.split("/runs/")[1].split("/")[0]
    assert run_id, f"submitting the form opened no run page: {chromium.evaluate('location.href')}"
    from urllib.parse import unquote

    run_id = unquote(run_id)
    stack.run_id = run_id
    stack.wait_until("the untouched-form run to finish", lambda: stack.run_state(run_id) in ("success", "failed"),
                     timeout_s=600, interval_s=3)
    assert stack.run_state(run_id) == "success", stack.diagnostics()
    states = {t: ti["state"] for t, ti in stack.task_instances(run_id).items()}
    assert states["prepare"] == "success" and all(v == "skipped" for t, v in states.items() if t != "prepare"), states
    log = stack.task_log(run_id, "prepare", 1, lines=400)
    assert "NOTHING NEW" in log, log
    overview, _ = _registry(stack.project)
    assert [v.version for v in overview.versions] == [str(retrain_run.registered["version"])]
    assert (stack.project / "params.yaml").read_bytes() == params_before
    stack.run_id = retrain_run.run_id


def test_cleared_register_task_reruns_without_a_duplicate_version(stack: Stack, retrain_run: Run):
    admin = stack.client(OPERATOR)
    before = stack.task_instances(retrain_run.run_id)
    r = ok(admin.post(f"/dags/{DAG}/clearTaskInstances", json={
        "dry_run": False, "only_failed": False, "task_ids": ["register"], "dag_run_id": retrain_run.run_id,
        "include_upstream": False, "include_downstream": False, "reset_dag_runs": True,
    })).json()
    assert [t["task_id"] for t in r["task_instances"]] == ["register"]
    t0 = time.monotonic()

    def rerun_done() -> bool:
        ti = stack.task_instances(retrain_run.run_id)["register"]
        assert ti["state"] not in FAILED, stack.diagnostics()
        return (ti["try_number"] > before["register"]["try_number"] and ti["state"] == "success"
                and stack.run_state(retrain_run.run_id) == "success")

    stack.wait_until("the cleared register task to succeed again", rerun_done, timeout_s=300)
    stack.timings["clear_register_s"] = round(time.monotonic() - t0, 1)

    after = stack.task_instances(retrain_run.run_id)
    for t in TASKS:  # only register ran again
        assert after[t]["try_number"] == before[t]["try_number"] + (t == "register"), (t, before[t], after[t])
    again = ok(admin.get(f"/dags/{DAG}/dagRuns/{retrain_run.run_id}/taskInstances/register/xcomEntries/return_value"))
    reg = again.json()["value"]
    assert reg["version"] == retrain_run.registered["version"] and reg["created"] is False, reg
    assert reg["artifact_sha256"] == retrain_run.registered["artifact_sha256"]
    overview, hist = _registry(stack.project)
    assert [v.version for v in overview.versions] == [reg["version"]]  # one training run -> one version
    assert [e.action for e in hist.events].count("registered") == 1
    assert overview.aliases.get("champion") == reg["version"]  # the re-run did not move the champion
    print(f"timings: {stack.timings}; notes: {stack.notes}")
