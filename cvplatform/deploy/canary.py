"""The canary controller: roll a registry version out step by step on a serving deployment, then
promote it or roll it back.

Where the canary runs (:func:`run_deploy`, what the CLI and the DAG's ``canary_deploy`` call):

* **the long-running service** named by ``deploy.server`` (or ``$CVPLATFORM_DEPLOY_SERVER``): a
  ``cvplatform serve`` that users call and that follows the registry aliases. :func:`run_canary`
  drives it through its admin API (token ``$CVPLATFORM_ADMIN_TOKEN``) and judges the canary on the
  traffic that service actually receives. An unreachable service fails the canary; it never falls
  back to anything else.
* only when **no server is configured** (``deploy.server: null``, the embedded default) or with
  ``--local``: :func:`run_canary_local` starts the same ``cvplatform serve`` code as a separate
  process on a private loopback port, plus a separate replay process sending held-out images
  (``deploy.local``), runs :func:`run_canary` against it, then stops both.

What :func:`run_canary` does on the server:

1. load the version as the canary (``POST /admin/canary``; a version that cannot be loaded is
   rolled back at once and never receives traffic), shadow mode on (``policy.shadow``);
2. for each step of the policy (default 10 % -> 50 % -> 100 %): set the canary share, reset the
   statistics, wait for the bake time and the minimum number of canary requests (rolling back
   early when the canary is clearly failing), then analyse canary vs champion
   (:func:`cvplatform.deploy.analysis.analyze_step`);
3. **promote** after the last step passes (``POST /admin/promote``: the server moves the
   registry's ``champion`` alias through :func:`cvplatform.registry.promote`, which records the
   previous champion, and swaps the model in), or **roll back** at the first failing step
   (``POST /admin/canary/abort``: share 0, canary unloaded, alias removed; the champion is
   untouched) and record the rollback in the registry
   (:func:`cvplatform.registry.mark_rolled_back`: audit event, ``approval.status=rolled_back``,
   ``challenger`` alias removed). A step that only lacked traffic until ``step_timeout_s`` is
   **inconclusive**: the canary is aborted the same way, but the version is not judged and stays
   approved (try again when there is traffic).

Every step is appended to ``artifacts/deploy/steps.jsonl`` and logged to MLflow (a run in the
``deploy.experiment`` experiment, metrics with ``step`` = step index); the result goes to
``artifacts/deploy/summary.json``. If the controller itself fails midway, it aborts the canary
before re-raising (a half-finished rollout never keeps traffic).
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
DECISION_INCONCLUSIVE = "inconclusive"
"""Too little traffic to judge before ``step_timeout_s``: aborted without a verdict, the version stays approved."""
ENV_DEPLOY_SERVER = "CVPLATFORM_DEPLOY_SERVER"
"""Environment variable naming the serving deployment; wins over ``deploy.server``."""
TRAFFIC_LIVE = "live"
TRAFFIC_REPLAY = "replay"


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
            f"cannot reach the inference server at {self.url} ({type(last).__name__}: {last}). Check that the "
            f"service named by deploy.server / ${ENV_DEPLOY_SERVER} is up (`cvplatform serve`), or set deploy.server "
            "to null for the loopback canary (`cvplatform deploy canary --local`)."
        )

    # convenience wrappers
    def status(self) -> dict[str, Any]:
        return self.request("GET", "/admin/status")

    def stats(self, feedback: bool = True) -> dict[str, Any]:
        """``GET /admin/stats``; ``feedback=False`` skips scoring the labelled feedback (a detector's mAP50)."""
        return self.request("GET", "/admin/stats" if feedback else "/admin/stats?feedback=false")

    def reset_stats(self) -> dict[str, Any]:
        return self.request("POST", "/admin/stats/reset")

    def set_canary(self, version: str, **kw: Any) -> dict[str, Any]:
        return self.request("POST", "/admin/canary", {"version": str(version), **kw})

    def set_traffic(self, **kw: Any) -> dict[str, Any]:
        return self.request("POST", "/admin/traffic", kw)

    def abort(self, reason: str, version: str | None = None, status: str = "rolled_back") -> dict[str, Any]:
        body: dict[str, Any] = {"reason": reason, "status": status}
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
    """promote | rollback | inconclusive."""
    reasons: list[str] = field(default_factory=list)
    failed_checks: list[str] = field(default_factory=list)
    """Names of the checks that failed (empty on promotion)."""
    champion_before: str | None = None
    champion_after: str | None = None
    previous_champion: str | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)
    server: str = ""
    traffic: str = TRAFFIC_LIVE
    """live (the service's own traffic) | replay (loopback canary with replayed held-out images)."""
    served_version: str | None = None
    """Version the server answers with after the decision (its champion), read back from the server."""
    registry: dict[str, Any] | None = None
    """What the rollback recorded in the registry (:func:`cvplatform.registry.mark_rolled_back`)."""
    notes: list[str] = field(default_factory=list)
    mlflow_run_id: str | None = None
    duration_s: float = 0.0
    policy: dict[str, Any] = field(default_factory=dict)

    @property
    def promoted(self) -> bool:
        return self.decision == DECISION_PROMOTE

    def one_line(self) -> str:
        """The decision in one line (what the Airflow task ends with).

        Example:
            >>> CanaryResult(model="m", version="4", decision="rollback", reasons=["agreement: 12/200"],
            ...              champion_after="3", server="http://s:8080").one_line()
            'ROLLED BACK: m v4 on http://s:8080 (live traffic): agreement: 12/200; champion v3 unchanged'
        """
        where = f"{self.model} v{self.version} on {self.server} ({self.traffic} traffic)"
        if self.promoted:
            return f"PROMOTED: {where}; the server now answers with v{self.served_version or self.champion_after}"
        why = self.reasons[0] if self.reasons else "no reason recorded"
        if len(self.reasons) > 1:
            why += f" (+{len(self.reasons) - 1} more)"
        head = "ROLLED BACK" if self.decision == DECISION_ROLLBACK else self.decision.upper()
        return f"{head}: {where}: {why}; champion v{self.champion_after or self.champion_before} unchanged"

    def lines(self) -> list[str]:
        source = "its live traffic" if self.traffic == TRAFFIC_LIVE else "replayed held-out traffic (loopback)"
        out = [f"deploy: canary {self.model} v{self.version} on {self.server} with {source} -> "
               f"{self.decision.upper()} ({len(self.steps)} step(s), {self.duration_s:.0f}s)"]
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
        if self.served_version is not None:
            out.append(f"  the server now answers with v{self.served_version}")
        if self.registry:
            out.append(f"  registry: v{self.version} approval status {self.registry.get('status_after')}, "
                       f"aliases removed: {', '.join(self.registry.get('aliases_removed') or []) or 'none'}")
        out += [f"  note: {n}" for n in self.notes]
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
        from cvplatform.registry.rollout import STATUS_ROLLED_BACK, TAG_DEPLOY_REASON
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
    if status == STATUS_ROLLED_BACK:
        why = tags.get(TAG_DEPLOY_REASON) or "see its history"
        raise DeployError(
            f"{model} v{version} was rolled back by an earlier canary ({why}); it is neither promoted nor canaried "
            f"again without a new decision. See `cvplatform registry history {model}` and "
            "docs/runbooks/rolled-back-canary.md."
        )
    if status is not None and status != "approved":
        raise DeployError(
            f"{model} v{version} is {status!r}, not approved: it could not be promoted after the canary. "
            f"Approve it first: `cvplatform registry approve {model} {version} --reviewer NAME --comment TEXT`."
        )


class _Tracker:
    """MLflow logging that never stops a rollout (failures are logged and remembered)."""

    def __init__(self, root: Path, experiment: str, run_name: str, tags: dict[str, str]) -> None:
        import uuid

        self.run = None
        self.error: str | None = None
        self._key = uuid.uuid4().hex  # warn_once per rollout
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
        except Exception as exc:  # once per rollout: a dead server would otherwise warn at every step
            from cvplatform.mlflow_store import warn_once

            warn_once(log, f"deploy:{self._key}:mlflow", "deploy: MLflow logging failed (%s); further failures of "
                      "this rollout's logging are not repeated", exc)

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
        feedback = s.get("feedback") if isinstance(s.get("feedback"), dict) else {}
        if isinstance(feedback.get("map50"), int | float):  # a detector's mAP50 on labelled requests
            out[f"{v}_feedback_map50"] = float(feedback["map50"])
        for q in ("p50", "p95"):
            value = (s.get("latency_ms") or {}).get(q)
            if isinstance(value, int | float):
                out[f"{v}_latency_{q}_ms"] = float(value)
    for c in analysis.checks:
        if c.value is not None:
            out[f"check_{c.name}"] = float(c.value)
    return out


def configured_server(params: Any) -> str | None:
    """The serving deployment the canary drives: ``$CVPLATFORM_DEPLOY_SERVER``, else ``deploy.server``.

    None means no server is configured: the canary runs on loopback (:func:`run_canary_local`).

    Raises:
        ConfigError: ``$CVPLATFORM_DEPLOY_SERVER`` is set but is not an http(s) URL.

    Example:
        >>> from cvplatform.config import Params
        >>> configured_server(Params()) is None  # doctest: +SKIP
        True
    """
    from cvplatform.config import deploy_server_url
    from cvplatform.errors import ConfigError

    env = os.environ.get(ENV_DEPLOY_SERVER, "").strip()
    if env:
        try:
            return deploy_server_url(env)
        except ValueError as exc:
            raise ConfigError(f"${ENV_DEPLOY_SERVER}: {exc}. Fix or unset the variable.") from None
    dep = getattr(params, "deploy", None)
    return getattr(dep, "server", None)


def run_deploy(
    params: Any,
    version: str | int,
    *,
    root: str | os.PathLike[str] | None = None,
    server: str | None = None,
    local: bool = False,
    params_file: str = "params.yaml",
    overrides: list[str] | None = None,
    policy: CanaryPolicy | None = None,
) -> CanaryResult:
    """Canary ``version`` where the configuration says: the long-running service, or loopback when there is none.

    Args:
        params: project params.
        version: the registry version to roll out.
        root: project root (default cwd).
        server: the service's base URL (default :func:`configured_server`).
        local: use the loopback canary even when a server is configured.
        params_file, overrides: what the loopback server loads (relative to ``root``).
        policy: the canary policy (default ``deploy.policy``).

    Returns:
        The :class:`CanaryResult` (``traffic`` says ``live`` or ``replay``).

    Raises:
        DeployError: the configured service cannot be reached or refuses (never replaced by a loopback canary).

    Example:
        >>> from cvplatform.config import load_params
        >>> run_deploy(load_params(), 4).one_line()  # doctest: +SKIP
        'PROMOTED: cvplatform v4 on http://serving:8080 (live traffic); the server now answers with v4'
    """
    if server is not None and not local:
        from cvplatform.config import deploy_server_url
        from cvplatform.errors import ConfigError

        try:
            server = deploy_server_url(server)
        except ValueError as exc:
            raise ConfigError(f"--server: {exc}") from None
    url = None if local else (server or configured_server(params))
    if url is None:
        log.info("deploy: no serving deployment configured (deploy.server is null): canary on a loopback "
                 "`cvplatform serve` with replayed traffic")
        return run_canary_local(params, version, root=root, params_file=params_file, overrides=overrides,
                                policy=policy)
    return run_canary(params, version, server=url, root=root, policy=policy)


def _check_model(params: Any, model: str, url: str, version: str) -> None:
    """Refuse to canary a version of one registered model on a server that serves another."""
    expected = getattr(getattr(params, "registry", None), "model_name", None)
    if expected and model != expected:
        raise DeployError(
            f"the server at {url} serves registered model {model!r}, but version {version} belongs to {expected!r} "
            "(registry.model_name). Point deploy.server at the service of that model, or start that server "
            "with the same registry.model_name."
        )


def _record_rollback(params: Any, root: Path, result: CanaryResult) -> None:
    """The registry side of a rollback (status, aliases, history); a failure is logged and noted, not raised."""
    from cvplatform.registry.rollout import mark_rolled_back

    details = {"failed_checks": list(result.failed_checks), "champion": result.champion_after or
               result.champion_before, "server": result.server, "traffic": result.traffic,
               "mlflow_run_id": result.mlflow_run_id}
    try:
        mark = mark_rolled_back(result.model, result.version, "; ".join(result.reasons), details=details,
                                params=params, root=root)
    except Exception as exc:
        note = (f"the registry was NOT updated ({type(exc).__name__}: {exc}); v{result.version} may still be "
                "approved with the challenger alias: record it with cvplatform.registry.mark_rolled_back")
        log.error("deploy: %s", note)
        result.notes.append(note)
        return
    result.registry = mark.to_dict()


def _served_version(api: AdminClient, result: CanaryResult) -> None:
    """Read back which version the server now answers with (its champion)."""
    try:
        result.champion_after = (api.status().get("champion") or {}).get("version")
        result.served_version = result.champion_after
    except DeployError as exc:
        log.warning("deploy: could not read the final status: %s", exc)


def run_canary(
    params: Any,
    version: str | int,
    *,
    server: str | None = None,
    root: str | os.PathLike[str] | None = None,
    token: str | None = None,
    policy: CanaryPolicy | None = None,
    traffic: str = TRAFFIC_LIVE,
    sleep: Callable[[float], None] = time.sleep,
) -> CanaryResult:
    """Canary-deploy registry ``version`` on a running server; promote it or roll it back.

    Args:
        params: project params (``deploy.policy``, ``deploy.server``, ``deploy.experiment``).
        version: the registry version to roll out.
        server: server base URL (default :func:`configured_server`).
        root: project root (artifacts, MLflow store; default cwd).
        token: admin token (default ``$CVPLATFORM_ADMIN_TOKEN``, else the serving config's ``admin.token``).
        policy: the canary policy (default: loaded from ``deploy.policy``).
        traffic: what the server's traffic is, for the record: ``live`` or ``replay``.
        sleep: how to wait between statistics reads.

    Returns:
        :class:`CanaryResult` (``decision`` = ``"promote"``, ``"rollback"`` or ``"inconclusive"``, with reasons);
        also written to ``artifacts/deploy/summary.json``.

    Raises:
        DeployError: no server configured, the server cannot be reached, refuses the admin token, or serves
            another registered model; or the version is not approved.

    Example:
        >>> from cvplatform.config import load_params
        >>> res = run_canary(load_params(), 4, server="http://127.0.0.1:8080")  # doctest: +SKIP
        >>> res.decision, res.reasons  # doctest: +SKIP
        ('rollback', ['agreement: canary and champion agree on 3/120 shadowed images ... need 95.0%'])
    """
    from cvplatform.utils.io import ProjectPaths

    paths = ProjectPaths.at(root)
    dep = getattr(params, "deploy", None)
    if policy is None:
        policy = load_canary_policy(paths.resolve(dep.policy if dep is not None else "configs/deploy/canary.yaml"))
    url = server or configured_server(params)
    if url is None:
        raise DeployError("no serving deployment to canary on: set deploy.server (or $CVPLATFORM_DEPLOY_SERVER), "
                          "pass --server URL, or use the loopback canary (`cvplatform deploy canary --local`).")
    token = token or _admin_token(params, paths.root)
    version = str(version)
    t0 = time.monotonic()
    api = AdminClient(url, token, timeout_s=policy.request_timeout_s)
    try:
        status = api.status()
        model = str(status.get("model"))
        _check_model(params, model, url, version)
        champion_before = (status.get("champion") or {}).get("version")
        result = CanaryResult(model=model, version=version, champion_before=champion_before, server=url,
                              traffic=traffic, policy=policy.model_dump(mode="json"))
        if champion_before is not None and str(champion_before) == version:
            # idempotent: a retried deploy of the version that already won changes nothing
            log.info("deploy: %s v%s is already the champion on %s; nothing to roll out", model, version, url)
            result.decision = DECISION_PROMOTE
            result.champion_after = result.served_version = version
            result.reasons = [f"v{version} is already the champion: nothing to roll out"]
            result.write_summary(paths.artifacts("deploy"))
            return result
        _check_approved(params, paths.root, model, version)
        _run_tracked(params, api, policy, result, paths, sleep)
        result.duration_s = time.monotonic() - t0
        return result
    finally:
        api.close()


def _run_tracked(params: Any, api: AdminClient, policy: CanaryPolicy, result: CanaryResult, paths: Any,
                 sleep: Callable[[float], None]) -> None:
    """:func:`_rollout` inside an MLflow run; record a rollback in the registry; write the summary."""
    dep = getattr(params, "deploy", None)
    out_dir = paths.artifacts("deploy")
    out_dir.mkdir(parents=True, exist_ok=True)
    steps_path = out_dir / "steps.jsonl"
    steps_path.write_text("", encoding="utf-8")
    experiment = dep.experiment if dep is not None else "deploy"
    tracker = _Tracker(paths.root, experiment, f"canary-{result.model}-v{result.version}", {
        "deploy.model": result.model, "deploy.version": result.version, "deploy.server": result.server,
        "deploy.traffic": result.traffic, "deploy.champion_before": str(result.champion_before),
        "deploy.policy": json.dumps(result.policy)[:5000],
    })
    result.mlflow_run_id = tracker.run_id
    try:
        _rollout(api, policy, result, tracker, steps_path, sleep)
    except BaseException as exc:  # never leave a half-finished rollout with traffic
        reason = f"controller error: {type(exc).__name__}: {exc}"
        log.error("deploy: %s; aborting the canary", reason)
        try:
            api.abort(reason[:4000], result.version, status="aborted")
        except Exception as exc2:
            log.error("deploy: abort failed too: %s", exc2)
        tracker.tags({"deploy.decision": "error", "deploy.error": reason[:5000]})
        tracker.finish("FAILED")
        raise
    _served_version(api, result)
    if result.decision == DECISION_ROLLBACK:
        _record_rollback(params, paths.root, result)
    result.write_summary(out_dir)
    tracker.tags({"deploy.decision": result.decision, "deploy.reasons": "; ".join(result.reasons)[:5000],
                  "deploy.failed_checks": ",".join(result.failed_checks),
                  "deploy.champion_after": str(result.champion_after),
                  "deploy.previous_champion": str(result.previous_champion)})
    tracker.artifact(steps_path)
    if result.summary_path is not None:
        tracker.artifact(result.summary_path)
    tracker.finish()


class _Outcome:
    """How the controller ends a rollout on the server (abort with a status, or promote)."""

    def __init__(self, api: AdminClient, result: CanaryResult, steps_path: Path) -> None:
        self.api, self.result, self.steps_path = api, result, steps_path

    def record(self, entry: dict[str, Any]) -> None:
        self.result.steps.append(entry)
        with self.steps_path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry, sort_keys=True, default=str) + "\n")

    def rollback(self, reasons: list[str], failed: list[str]) -> None:
        r = self.result
        r.decision, r.reasons, r.failed_checks = DECISION_ROLLBACK, reasons, failed
        self.api.abort(("canary rolled back: " + "; ".join(reasons))[:4000], r.version)
        log.warning("deploy: %s v%s rolled back: %s", r.model, r.version, "; ".join(reasons))

    def inconclusive(self, reasons: list[str], failed: list[str]) -> None:
        r = self.result
        r.decision, r.reasons, r.failed_checks = DECISION_INCONCLUSIVE, reasons, failed
        self.api.abort(("canary inconclusive (not judged): " + "; ".join(reasons))[:4000], r.version,
                       status="aborted")
        log.warning("deploy: %s v%s inconclusive, canary aborted without a verdict: %s", r.model, r.version,
                    "; ".join(reasons))

    def promote(self, reason: str) -> bool:
        r = self.result
        try:
            info = self.api.promote(r.version, reason)
        except ServerRefused as exc:  # e.g. the registry refuses (approval withdrawn meanwhile)
            self.rollback([f"promotion_refused: {exc.detail}"], ["promotion_refused"])
            return False
        r.decision = DECISION_PROMOTE
        r.previous_champion = info.get("previous_champion") or r.champion_before
        return True


def _first_deploy(api: AdminClient, policy: CanaryPolicy, out: _Outcome) -> None:
    r = out.result
    if policy.first_deploy == "fail":
        raise DeployError(f"{r.model} has no champion on {api.url}; promote a first version with "
                          "`cvplatform registry promote NAME VERSION` (or set first_deploy: promote).")
    try:
        api.set_canary(r.version, share=0.0, shadow=False)
    except ServerRefused as exc:
        out.rollback([f"load_failed: {exc.detail}"], ["load_failed"])
        return
    if out.promote("first deployment: no champion to compare with"):
        r.reasons = ["no champion yet: promoted without canary analysis (first_deploy: promote)"]


def _bake(api: AdminClient, policy: CanaryPolicy, step: Any, version: str, sleep: Callable[[float], None]
          ) -> tuple[StepAnalysis | None, str, dict[str, Any], float]:
    """Wait out one step; return (analysis or None if the canary was unloaded, event, last stats, start time)."""
    th = policy.thresholds
    started = time.monotonic()
    while True:
        sleep(policy.poll_interval_s)
        stats = api.stats(feedback=False)  # the labelled feedback is scored only for the analysis (below)
        if (stats.get("versions") or {}).get("canary") != version:
            return None, "canary_unloaded", stats, started
        elapsed = time.monotonic() - started
        canary_requests = int(((stats.get("variants") or {}).get("canary") or {}).get("requests") or 0)
        early = early_abort(stats, th, policy.early_abort_min_failures)
        if early is not None:
            return early, "early_abort", stats, started
        event = ("analysed" if elapsed >= step.bake_s and canary_requests >= step.min_requests
                 else "timeout" if elapsed >= policy.step_timeout_s else None)
        if event is not None:
            stats = api.stats()  # again, with each variant's labelled-feedback score (detection: mAP50)
            if (stats.get("versions") or {}).get("canary") != version:
                return None, "canary_unloaded", stats, started
            return analyze_step(stats, th, min_requests=step.min_requests), event, stats, started


def _rollout(api: AdminClient, policy: CanaryPolicy, result: CanaryResult, tracker: _Tracker,
             steps_path: Path, sleep: Callable[[float], None]) -> None:
    version = result.version
    out = _Outcome(api, result, steps_path)
    if result.champion_before is None:
        _first_deploy(api, policy, out)
        return
    try:
        api.set_canary(version, share=0.0, shadow=policy.shadow, shadow_share=policy.shadow_share)
    except ServerRefused as exc:
        if exc.code == "canary_load_failed":
            out.record({"index": 0, "traffic": 0.0, "event": "load_failed", "detail": exc.detail,
                        "analysis": {"passed": False, "failed": ["load_failed"], "checks": []}})
            out.rollback([f"load_failed: {exc.detail}"], ["load_failed"])
            return
        raise
    for index, step in enumerate(policy.steps):
        api.set_traffic(canary_share=step.traffic, shadow=policy.shadow, shadow_share=policy.shadow_share)
        api.reset_stats()
        log.info("deploy: step %d/%d: %.0f%% of traffic to v%s", index + 1, len(policy.steps), step.traffic * 100,
                 version)
        analysis, event, stats, started = _bake(api, policy, step, version, sleep)
        if analysis is None:
            loaded = (stats.get("versions") or {}).get("canary")
            out.record({"index": index, "traffic": step.traffic, "event": event,
                        "analysis": {"passed": False, "failed": ["canary_unloaded"], "checks": []}})
            out.rollback([f"canary_unloaded: the server no longer serves v{version} as the canary (now {loaded})"],
                         ["canary_unloaded"])
            return
        variants = stats.get("variants") or {}
        out.record({
            "index": index, "traffic": step.traffic, "event": event,
            "elapsed_s": round(time.monotonic() - started, 3),
            "canary_requests": int((variants.get("canary") or {}).get("requests") or 0),
            "champion_requests": int((variants.get("champion") or {}).get("requests") or 0),
            "analysis": analysis.to_dict(), "stats": _compact_stats(stats), "time": time.time(),
        })
        tracker.step(index, _step_metrics(index, step.traffic, stats, analysis))
        if analysis.passed:
            continue
        if event == "timeout" and analysis.failed == ["min_requests"]:  # too little traffic: no verdict
            out.inconclusive(analysis.reasons, analysis.failed)
        else:
            out.rollback(analysis.reasons, analysis.failed)
        return
    if out.promote(f"canary passed {len(policy.steps)} step(s)"):
        result.reasons = [f"all {len(policy.steps)} step(s) passed"]
        log.info("deploy: %s v%s promoted (previous champion v%s)", result.model, version, result.previous_champion)


def _compact_stats(stats: dict[str, Any]) -> dict[str, Any]:
    """The stats snapshot without the raw confidence and object score samples (kept small in steps.jsonl)."""
    out = {k: v for k, v in stats.items() if k != "variants"}
    out["variants"] = {
        name: {k: ({kk: vv for kk, vv in v.items() if kk != "score_samples"} if k == "objects" and isinstance(v, dict)
                   else v)
               for k, v in (s or {}).items() if k != "confidence_samples"}
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
    """The loopback canary (no serving deployment configured): a private ``cvplatform serve`` process and a
    replay process on 127.0.0.1, :func:`run_canary` against them, then both stopped.

    The server is the production serving code, started as its own long-running process
    (:class:`cvplatform.serving.local.LocalServer`, following the registry aliases); the traffic is
    held-out images (``deploy.local``) sent by another process
    (:class:`cvplatform.serving.local.ReplayProcess`). After the decision one image is sent to the
    server to read back the version that answers (``served_version``).

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
        >>> res.decision, res.traffic  # doctest: +SKIP
        ('promote', 'replay')
    """
    from cvplatform.serving.local import LocalServer, ReplayProcess
    from cvplatform.utils.io import ProjectPaths, write_json

    paths = ProjectPaths.at(root)
    local = getattr(getattr(params, "deploy", None), "local", None)
    project = getattr(params, "project", None)
    manifest = manifest or (project.manifest if project is not None else "data/processed/manifest.parquet")
    split = split or (local.split if local is not None else "test")
    corrupt = corrupt if corrupt is not None else (local.corrupt if local is not None else 0.2)
    concurrency = concurrency or (local.concurrency if local is not None else 2)
    rate = rate if rate is not None else (local.rate if local is not None else None)
    with LocalServer(paths.root, params_file=params_file, overrides=overrides or [], wait_ready=False) as srv:
        import httpx

        log.info("deploy: loopback canary: `cvplatform serve` pid %s at %s", srv.proc.pid if srv.proc else "?",
                 srv.url)
        if httpx.get(f"{srv.url}/v2/health/ready", timeout=30).status_code != 200:
            # no champion yet: nothing to compare with, no traffic needed (policy.first_deploy decides)
            result = run_canary(params, version, server=srv.url, root=paths.root, token=srv.token, policy=policy,
                                traffic=TRAFFIC_REPLAY)
        else:
            replay = ReplayProcess(srv.url, root=paths.root, manifest=manifest, split=split, corrupt=corrupt,
                                   concurrency=concurrency, rate=rate)
            replay.start()
            try:
                result = run_canary(params, version, server=srv.url, root=paths.root, token=srv.token,
                                    policy=policy, traffic=TRAFFIC_REPLAY)
            finally:
                report = replay.stop()
            if report is not None:
                write_json(paths.artifacts("deploy") / "replay.json", report)
                if report.get("failures"):
                    result.notes.append(f"{report['failures']} replayed request(s) failed during the canary "
                                        "(artifacts/deploy/replay.json)")
        _probe_served(srv.url, paths.root, manifest, split, result)
        return result


def _probe_served(url: str, root: Path, manifest: str, split: str, result: CanaryResult) -> None:
    """Send one held-out image to the (private) server: which version answers now? Rewrites the summary."""
    import httpx

    from cvplatform.errors import CVPlatformError
    from cvplatform.serving.replay import load_items, predict_once

    try:
        items = load_items(manifest, split=split, root=root, limit=1)
        result.served_version = str(predict_once(url, items[0].data).get("version"))
    except (CVPlatformError, OSError, ValueError, httpx.HTTPError) as exc:
        result.notes.append(f"could not ask the server which version answers ({exc})")
    if result.summary_path is not None:
        result.write_summary(result.summary_path.parent)


__all__ = [
    "DECISION_INCONCLUSIVE",
    "DECISION_PROMOTE",
    "DECISION_ROLLBACK",
    "ENV_DEPLOY_SERVER",
    "AdminClient",
    "CanaryResult",
    "DeployError",
    "ServerRefused",
    "configured_server",
    "run_canary",
    "run_canary_local",
    "run_deploy",
]
