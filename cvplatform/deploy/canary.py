"""The canary controller: roll a registry version out step by step, then promote it or roll it back.

:func:`run_canary` drives a *running* inference server through its admin API
(``cvplatform.serving.app``; ``deploy.server`` or ``--server``):

1. load the version as the canary (``POST /admin/canary``; a version that cannot be loaded is
   rolled back at once and never receives traffic), shadow mode on (``policy.shadow``);
2. for each step of the policy (default 10 % -> 50 % -> 100 %): set the canary share, reset the
   statistics, wait for the bake time and the minimum number of canary requests (rolling back
   early when the canary is clearly failing, and failing the step after ``step_timeout_s``), then
   analyse canary vs champion (:func:`cvplatform.deploy.analysis.analyze_step`);
3. **promote** after the last step passes (``POST /admin/promote``: the server moves the
   registry's ``champion`` alias through :func:`cvplatform.registry.promote`, which records the
   previous champion, and swaps the model in) or **roll back** at the first failing step
   (``POST /admin/canary/abort``: share 0, canary unloaded, alias removed, the reason tagged on
   the version as ``deploy.rollback_reason``; the champion is untouched).

Every step is appended to ``artifacts/deploy/steps.jsonl`` and logged to MLflow (a run in the
``deploy.experiment`` experiment, metrics with ``step`` = step index); the result goes to
``artifacts/deploy/summary.json``. If the controller itself fails midway, it aborts the canary
before re-raising (a half-finished rollout never keeps traffic).

:func:`run_canary_local` does everything on loopback for the demo and Airflow: start the server
(subprocess), replay held-out traffic from another process, run the canary, stop both.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvplatform.deploy.analysis import (
    CanaryPolicy,
    StepAnalysis,
    analyze_step,
    early_abort,
    load_canary_policy,
)
from cvplatform.errors import CVPlatformError
from cvplatform.stage import StageResult

log = logging.getLogger(__name__)

DECISION_PROMOTE = "promote"
DECISION_ROLLBACK = "rollback"


class DeployError(CVPlatformError):
    """The canary cannot be run (server unreachable, wrong token, version already champion, ...)."""


# --------------------------------------------------------------------------- admin client
class AdminClient:
    """A small client of the server's admin API (``Authorization: Bearer <token>``).

    Example:
        >>> api = AdminClient("http://127.0.0.1:8080", token="s3cret")  # doctest: +SKIP
        >>> api.status()["champion"]["version"]  # doctest: +SKIP
        '3'
    """

    def __init__(self, url: str, token: str | None, *, timeout_s: float = 30.0, retries: int = 3) -> None:
        import httpx

        self.url = url.rstrip("/")
        self.token = token
        self.retries = retries
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.Client(base_url=self.url, timeout=timeout_s, headers=headers)

    def close(self) -> None:
        self._client.close()

    def request(self, method: str, path: str, body: dict[str, Any] | None = None,
                params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Call the admin API; raise :class:`ServerRefused` on a 4xx/5xx, DeployError when unreachable."""
        import httpx

        last: Exception | None = None
        for attempt in range(1, self.retries + 1):
            try:
                resp = self._client.request(method, path, json=body, params=params)
            except httpx.TransportError as exc:  # connection refused / reset / timeout: retry a little
                last = exc
                time.sleep(min(2.0, 0.25 * 2 ** attempt))
                continue
            try:
                data = resp.json()
            except ValueError:
                data = {"error": "not_json", "detail": resp.text[:300]}
            if resp.status_code >= 400:
                raise ServerRefused(resp.status_code, data.get("error", "error"), data.get("detail", ""),
                                    f"{method} {self.url}{path}")
            return data
        raise DeployError(
            f"cannot reach the inference server at {self.url} ({type(last).__name__}: {last}). Start it with "
            "`cvplatform serve` (or pass --server URL / deploy.server), or use `cvplatform deploy canary --local`."
        )

    # convenience wrappers
    def status(self) -> dict[str, Any]:
        return self.request("GET", "/admin/status")

    def stats(self) -> dict[str, Any]:
        return self.request("GET", "/admin/stats")

    def reset_stats(self) -> dict[str, Any]:
        return self.request("POST", "/admin/stats/reset")

    def set_canary(self, version: str, **kw: Any) -> dict[str, Any]:
        return self.request("POST", "/admin/canary", {"version": str(version), **kw})

    def set_traffic(self, **kw: Any) -> dict[str, Any]:
        return self.request("POST", "/admin/traffic", kw)

    def abort(self, reason: str, version: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"reason": reason}
        if version is not None:
            body["version"] = str(version)
        return self.request("POST", "/admin/canary/abort", body)

    def promote(self, version: str, reason: str) -> dict[str, Any]:
        return self.request("POST", "/admin/promote", {"version": str(version), "reason": reason})


class ServerRefused(DeployError):
    """The server answered an admin call with an error status."""

    def __init__(self, status: int, code: str, detail: str, where: str) -> None:
        hint = ""
        if status == 401:
            hint = " Pass the admin token (env CVPLATFORM_ADMIN_TOKEN or admin.token in the serving config)."
        elif status == 403:
            hint = " The admin token is wrong, or the server was started without one."
        super().__init__(f"{where}: {status} {code}: {detail}.{hint}")
        self.status = status
        self.code = code
        self.detail = detail


# --------------------------------------------------------------------------- result
@dataclass
class CanaryResult(StageResult):
    """What the canary controller decided and why."""

    stage = "deploy"
    model: str = ""
    version: str = ""
    decision: str = ""
    """promote | rollback."""
    reasons: list[str] = field(default_factory=list)
    failed_checks: list[str] = field(default_factory=list)
    """Names of the checks that failed (empty on promotion)."""
    champion_before: str | None = None
    champion_after: str | None = None
    previous_champion: str | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)
    server: str = ""
    mlflow_run_id: str | None = None
    duration_s: float = 0.0
    policy: dict[str, Any] = field(default_factory=dict)

    @property
    def promoted(self) -> bool:
        return self.decision == DECISION_PROMOTE

    def lines(self) -> list[str]:
        out = [f"deploy: canary {self.model} v{self.version} -> {self.decision.upper()} "
               f"({len(self.steps)} step(s), {self.duration_s:.0f}s)"]
        for s in self.steps:
            a = s.get("analysis", {})
            out.append(f"  step {s['index'] + 1}: {s['traffic']:.0%} traffic, {s.get('canary_requests', 0)} canary "
                       f"requests -> {'pass' if a.get('passed') else 'FAIL'}")
            for c in a.get("checks", []):
                out.append(f"      {c['status']:>4}  {c['name']}: {c['detail']}")
        if self.promoted:
            out.append(f"  champion: v{self.champion_before} -> v{self.champion_after}")
        else:
            out.append(f"  champion unchanged: v{self.champion_after}")
            out += [f"  reason: {r}" for r in self.reasons]
        if self.mlflow_run_id:
            out.append(f"  mlflow run: {self.mlflow_run_id}")
        return out


# --------------------------------------------------------------------------- controller
def _admin_token(params: Any, root: Path) -> str | None:
    env = os.environ.get("CVPLATFORM_ADMIN_TOKEN", "").strip()
    if env:
        return env
    serve = getattr(params, "serve", None)
    if serve is not None and getattr(serve, "config", None):
        from cvplatform.serving.schemas import load_serving_config

        p = Path(serve.config)
        p = p if p.is_absolute() else root / p
        if p.is_file():
            return load_serving_config(p).admin_token()
    return None


def _check_approved(params: Any, root: Path, model: str, version: str) -> None:
    """Refuse to start a rollout the registry would refuse to promote (best effort: a registry this
    process cannot read is left to the server's promote call to enforce)."""
    try:
        from cvplatform.registry.client import TAG_APPROVAL_STATUS, RegistryClient
        from cvplatform.registry.errors import UnknownModelError, UnknownVersionError
    except ImportError:  # pragma: no cover - registry package absent
        return
    try:
        tags = dict(RegistryClient.from_params(params, root).version(model, version).tags or {})
    except (UnknownModelError, UnknownVersionError) as exc:
        raise DeployError(f"cannot roll out {model} v{version}: {exc}") from None
    except Exception as exc:
        log.warning("deploy: cannot check the approval of %s v%s (%s); the server enforces it at promotion",
                    model, version, exc)
        return
    status = tags.get(TAG_APPROVAL_STATUS)
    if status is not None and status != "approved":
        raise DeployError(
            f"{model} v{version} is {status!r}, not approved: it could not be promoted after the canary. "
            f"Approve it first: `cvplatform registry approve {model} {version} --reviewer NAME --comment TEXT`."
        )


class _Tracker:
    """MLflow logging that never stops a rollout (failures are logged and remembered)."""

    def __init__(self, root: Path, experiment: str, run_name: str, tags: dict[str, str]) -> None:
        self.run = None
        self.error: str | None = None
        try:
            from cvplatform.tracking import TrackingRun

            self.run = TrackingRun.start(root, experiment, run_name, tags)
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            log.warning("deploy: MLflow logging disabled (%s)", self.error)

    @property
    def run_id(self) -> str | None:
        return self.run.run_id if self.run is not None else None

    def _safe(self, fn: Callable[[], Any]) -> None:
        if self.run is None:
            return
        try:
            fn()
        except Exception as exc:
            log.warning("deploy: MLflow logging failed (%s)", exc)

    def step(self, index: int, metrics: dict[str, float]) -> None:
        self._safe(lambda: self.run.log_epoch(index, metrics))

    def tags(self, tags: dict[str, Any]) -> None:
        self._safe(lambda: self.run.set_tags(tags))

    def artifact(self, path: Path) -> None:
        self._safe(lambda: self.run.log_artifact(path, "deploy"))

    def finish(self, status: str = "FINISHED") -> None:
        self._safe(lambda: self.run.finish(status))


def _step_metrics(index: int, traffic: float, stats: dict[str, Any], analysis: StepAnalysis) -> dict[str, float]:
    out: dict[str, float] = {"traffic": traffic, "passed": 1.0 if analysis.passed else 0.0}
    for v in ("champion", "canary"):
        s = (stats.get("variants") or {}).get(v) or {}
        for k in ("requests", "attempts", "failures"):
            if isinstance(s.get(k), int | float):
                out[f"{v}_{k}"] = float(s[k])
        for k in ("error_rate", "accuracy"):
            if isinstance(s.get(k), int | float):
                out[f"{v}_{k}"] = float(s[k])
        p95 = (s.get("latency_ms") or {}).get("p95")
        if isinstance(p95, int | float):
            out[f"{v}_latency_p95_ms"] = float(p95)
    for c in analysis.checks:
        if c.value is not None:
            out[f"check_{c.name}"] = float(c.value)
    return out


def run_canary(
    params: Any,
    version: str | int,
    *,
    server: str | None = None,
    root: str | os.PathLike[str] | None = None,
    token: str | None = None,
    policy: CanaryPolicy | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> CanaryResult:
    """Canary-deploy registry ``version`` on a running server; promote it or roll it back.

    Args:
        params: project params (``deploy.policy``, ``deploy.server``, ``deploy.experiment``).
        version: the registry version to roll out.
        server: server base URL (default ``deploy.server``).
        root: project root (artifacts, MLflow store; default cwd).
        token: admin token (default ``$CVPLATFORM_ADMIN_TOKEN``, else the serving config's ``admin.token``).
        policy: the canary policy (default: loaded from ``deploy.policy``).
        sleep: how to wait between statistics reads.

    Returns:
        :class:`CanaryResult` (``decision`` = ``"promote"`` or ``"rollback"``, with reasons); also written
        to ``artifacts/deploy/summary.json``.

    Raises:
        DeployError: the server cannot be reached or refuses the admin token, or the version is already
            the champion.

    Example:
        >>> from cvplatform.config import load_params
        >>> res = run_canary(load_params(), 4, server="http://127.0.0.1:8080")  # doctest: +SKIP
        >>> res.decision, res.reasons  # doctest: +SKIP
        ('rollback', ['agreement: canary and champion agree on 3/120 shadowed images (2.5%); need 95.0%'])
    """
    from cvplatform.utils.io import ProjectPaths

    paths = ProjectPaths.at(root)
    dep = getattr(params, "deploy", None)
    if policy is None:
        policy_path = paths.resolve(dep.policy if dep is not None else "configs/deploy/canary.yaml")
        policy = load_canary_policy(policy_path)
    url = server or (dep.server if dep is not None else "http://127.0.0.1:8080")
    token = token or _admin_token(params, paths.root)
    version = str(version)
    t0 = time.monotonic()
    api = AdminClient(url, token, timeout_s=policy.request_timeout_s)
    try:
        status = api.status()
        model = str(status.get("model"))
        champion_before = (status.get("champion") or {}).get("version")
        if champion_before is not None and str(champion_before) == version:
            # idempotent: a retried deploy of the version that already won changes nothing
            log.info("deploy: %s v%s is already the champion on %s; nothing to roll out", model, version, url)
            done = CanaryResult(model=model, version=version, decision=DECISION_PROMOTE, champion_before=version,
                                champion_after=version, server=url, policy=policy.model_dump(mode="json"),
                                reasons=[f"v{version} is already the champion: nothing to roll out"])
            done.write_summary(paths.artifacts("deploy"))
            return done
        _check_approved(params, paths.root, model, version)
        out_dir = paths.artifacts("deploy")
        out_dir.mkdir(parents=True, exist_ok=True)
        steps_path = out_dir / "steps.jsonl"
        steps_path.write_text("", encoding="utf-8")
        result = CanaryResult(model=model, version=version, champion_before=champion_before, server=url,
                              policy=policy.model_dump(mode="json"))
        experiment = dep.experiment if dep is not None else "deploy"
        tracker = _Tracker(paths.root, experiment, f"canary-{model}-v{version}", {
            "deploy.model": model, "deploy.version": version, "deploy.server": url,
            "deploy.champion_before": str(champion_before), "deploy.policy": json.dumps(result.policy)[:5000],
        })
        result.mlflow_run_id = tracker.run_id
        try:
            _rollout(api, policy, result, tracker, steps_path, sleep)
        except BaseException as exc:  # never leave a half-finished rollout with traffic
            reason = f"controller error: {type(exc).__name__}: {exc}"
            log.error("deploy: %s; aborting the canary", reason)
            try:
                api.abort(reason[:4000], version)
            except Exception as exc2:
                log.error("deploy: abort failed too: %s", exc2)
            tracker.tags({"deploy.decision": "error", "deploy.error": reason[:5000]})
            tracker.finish("FAILED")
            raise
        result.duration_s = time.monotonic() - t0
        try:
            result.champion_after = (api.status().get("champion") or {}).get("version")
        except DeployError as exc:
            log.warning("deploy: could not read the final status: %s", exc)
        result.write_summary(out_dir)
        tracker.tags({"deploy.decision": result.decision, "deploy.reasons": "; ".join(result.reasons)[:5000],
                      "deploy.failed_checks": ",".join(result.failed_checks),
                      "deploy.champion_after": str(result.champion_after),
                      "deploy.previous_champion": str(result.previous_champion)})
        tracker.artifact(steps_path)
        if result.summary_path is not None:
            tracker.artifact(result.summary_path)
        tracker.finish()
        return result
    finally:
        api.close()


def _rollout(api: AdminClient, policy: CanaryPolicy, result: CanaryResult, tracker: _Tracker,
             steps_path: Path, sleep: Callable[[float], None]) -> None:
    version = result.version
    th = policy.thresholds

    def record(entry: dict[str, Any]) -> None:
        result.steps.append(entry)
        with steps_path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry, sort_keys=True, default=str) + "\n")

    def rollback(reasons: list[str], failed: list[str]) -> None:
        result.decision = DECISION_ROLLBACK
        result.reasons = reasons
        result.failed_checks = failed
        api.abort(("canary rolled back: " + "; ".join(reasons))[:4000], version)
        log.warning("deploy: %s v%s rolled back: %s", result.model, version, "; ".join(reasons))

    if result.champion_before is None:
        if policy.first_deploy == "fail":
            raise DeployError(f"{result.model} has no champion on {api.url}; promote a first version with "
                              "`cvplatform registry promote NAME VERSION` (or set first_deploy: promote).")
        try:
            api.set_canary(version, share=0.0, shadow=False)
        except ServerRefused as exc:
            rollback([f"load_failed: {exc.detail}"], ["load_failed"])
            return
        try:
            info = api.promote(version, "first deployment: no champion to compare with")
        except ServerRefused as exc:
            rollback([f"promotion_refused: {exc.detail}"], ["promotion_refused"])
            return
        result.decision = DECISION_PROMOTE
        result.reasons = ["no champion yet: promoted without canary analysis (first_deploy: promote)"]
        result.previous_champion = info.get("previous_champion")
        return

    try:
        api.set_canary(version, share=0.0, shadow=policy.shadow, shadow_share=policy.shadow_share)
    except ServerRefused as exc:
        if exc.code == "canary_load_failed":
            record({"index": 0, "traffic": 0.0, "event": "load_failed", "detail": exc.detail,
                    "analysis": {"passed": False, "failed": ["load_failed"], "checks": []}})
            rollback([f"load_failed: {exc.detail}"], ["load_failed"])
            return
        raise
    for index, step in enumerate(policy.steps):
        api.set_traffic(canary_share=step.traffic, shadow=policy.shadow, shadow_share=policy.shadow_share)
        api.reset_stats()
        started = time.monotonic()
        log.info("deploy: step %d/%d: %.0f%% of traffic to v%s", index + 1, len(policy.steps), step.traffic * 100,
                 version)
        analysis: StepAnalysis | None = None
        stats: dict[str, Any] = {}
        event = "analysed"
        while True:
            sleep(policy.poll_interval_s)
            stats = api.stats()
            loaded = (stats.get("versions") or {}).get("canary")
            if loaded != version:
                analysis = StepAnalysis()
                record({"index": index, "traffic": step.traffic, "event": "canary_unloaded",
                        "analysis": {"passed": False, "failed": ["canary_unloaded"], "checks": []}})
                rollback([f"canary_unloaded: the server no longer serves v{version} as the canary (now {loaded})"],
                         ["canary_unloaded"])
                return
            elapsed = time.monotonic() - started
            canary_requests = int(((stats.get("variants") or {}).get("canary") or {}).get("requests") or 0)
            early = early_abort(stats, th, policy.early_abort_min_failures)
            if early is not None:
                analysis, event = early, "early_abort"
                break
            if elapsed >= step.bake_s and canary_requests >= step.min_requests:
                analysis = analyze_step(stats, th, min_requests=step.min_requests)
                break
            if elapsed >= policy.step_timeout_s:
                analysis, event = analyze_step(stats, th, min_requests=step.min_requests), "timeout"
                break
        variants = stats.get("variants") or {}
        entry = {
            "index": index,
            "traffic": step.traffic,
            "event": event,
            "elapsed_s": round(time.monotonic() - started, 3),
            "canary_requests": int((variants.get("canary") or {}).get("requests") or 0),
            "champion_requests": int((variants.get("champion") or {}).get("requests") or 0),
            "analysis": analysis.to_dict(),
            "stats": _compact_stats(stats),
            "time": time.time(),
        }
        record(entry)
        tracker.step(index, _step_metrics(index, step.traffic, stats, analysis))
        if not analysis.passed:
            rollback(analysis.reasons, analysis.failed)
            return
    try:
        info = api.promote(version, f"canary passed {len(policy.steps)} step(s)")
    except ServerRefused as exc:  # e.g. the registry refuses (approval withdrawn meanwhile)
        rollback([f"promotion_refused: {exc.detail}"], ["promotion_refused"])
        return
    result.decision = DECISION_PROMOTE
    result.reasons = [f"all {len(policy.steps)} step(s) passed"]
    result.previous_champion = info.get("previous_champion") or result.champion_before
    log.info("deploy: %s v%s promoted (previous champion v%s)", result.model, version, result.previous_champion)


def _compact_stats(stats: dict[str, Any]) -> dict[str, Any]:
    """The stats snapshot without the raw confidence samples (kept small in steps.jsonl)."""
    out = {k: v for k, v in stats.items() if k != "variants"}
    out["variants"] = {
        name: {k: v for k, v in (s or {}).items() if k != "confidence_samples"}
        for name, s in (stats.get("variants") or {}).items()
    }
    return out


# --------------------------------------------------------------------------- everything on loopback
def run_canary_local(
    params: Any,
    version: str | int,
    *,
    root: str | os.PathLike[str] | None = None,
    params_file: str = "params.yaml",
    overrides: list[str] | None = None,
    policy: CanaryPolicy | None = None,
    manifest: str | None = None,
    split: str | None = None,
    corrupt: float | None = None,
    concurrency: int | None = None,
    rate: float | None = None,
) -> CanaryResult:
    """Start a server and a traffic replay on loopback, run the canary, stop both (demo / Airflow).

    Args:
        params: project params (``deploy.local.*`` give the replay defaults).
        version: registry version to roll out.
        root: project root (the server runs there: params file, MLflow store, manifest).
        params_file: params file the server loads (relative to ``root``).
        overrides: ``--set`` overrides for the server.
        policy: canary policy (default ``deploy.policy``).
        manifest, split, corrupt, concurrency, rate: replay settings (default ``deploy.local.*``).

    Example:
        >>> from cvplatform.config import load_params
        >>> res = run_canary_local(load_params(), 2, root=".")  # doctest: +SKIP
        >>> res.decision  # doctest: +SKIP
        'promote'
    """
    from cvplatform.serving.local import LocalServer, ReplayProcess
    from cvplatform.utils.io import ProjectPaths, write_json

    paths = ProjectPaths.at(root)
    dep = getattr(params, "deploy", None)
    local = getattr(dep, "local", None)
    manifest = manifest or (local.manifest if local is not None else "data/processed/manifest.parquet")
    split = split or (local.split if local is not None else "test")
    corrupt = corrupt if corrupt is not None else (local.corrupt if local is not None else 0.2)
    concurrency = concurrency or (local.concurrency if local is not None else 2)
    rate = rate if rate is not None else (local.rate if local is not None else None)
    with LocalServer(paths.root, params_file=params_file, overrides=overrides or [], wait_ready=False) as srv:
        import httpx

        if httpx.get(f"{srv.url}/v2/health/ready", timeout=30).status_code != 200:
            # no champion yet: nothing to compare with, no traffic needed (policy.first_deploy decides)
            return run_canary(params, version, server=srv.url, root=paths.root, token=srv.token, policy=policy)
        replay = ReplayProcess(srv.url, root=paths.root, manifest=manifest, split=split, corrupt=corrupt,
                               concurrency=concurrency, rate=rate)
        replay.start()
        try:
            result = run_canary(params, version, server=srv.url, root=paths.root, token=srv.token, policy=policy)
        finally:
            report = replay.stop()
        if report is not None:
            write_json(paths.artifacts("deploy") / "replay.json", report)
            if report.get("failures"):
                log.warning("deploy: %d replayed request(s) failed during the canary (see artifacts/deploy/"
                            "replay.json)", report["failures"])
        return result


__all__ = [
    "AdminClient",
    "CanaryResult",
    "DeployError",
    "ServerRefused",
    "run_canary",
    "run_canary_local",
]
