"""The canary controller against a real server process and real replayed traffic.

One tiny project per module: a real SQLite MLflow registry holding a champion and candidates
(good, erroring, 3x slower, disagreeing, unloadable), one ``cvplatform serve`` subprocess and one
replay subprocess sending held-out images (clean and corrupted, with their true labels)
throughout. The champion, the good and the disagreeing candidates cost what the default model
costs (~0.15 ms of onnxruntime work per image); the slow one does exactly three times that work
with the same predictions. Each bad candidate must be rolled back for the right reason with the
champion untouched, and the registry must say so (status, aliases, history); the good one is
promoted through ``run_canary_local`` (its own server + replay) with the latency check judging it.
Clients never see a failed request.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from cvplatform.config import apply_overrides, load_params, read_yaml
from cvplatform.deploy.analysis import CanaryPolicy, load_canary_policy
from cvplatform.deploy.canary import run_canary, run_canary_local
from cvplatform.serving.local import LocalServer, ReplayProcess
from tests.fixtures.serving_models import get_alias, register_version, set_alias, version_tags, write_model
from tests.fixtures.tiny_dataset import make_tiny_project

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
MODEL = "tiny"
FIRST = "tiny-first"

#: The real configs/deploy/canary.yaml, shrunk so a rollout takes seconds (the latency check keeps its
#: production minimum of 20 like-for-like samples per variant, hence 3 s steps).
POLICY_OVERRIDES = (
    "steps=[{traffic: 0.25, min_requests: 20, bake_s: 3}, {traffic: 0.5, min_requests: 20, bake_s: 3},"
    " {traffic: 1.0, min_requests: 20, bake_s: 3}]",
    "poll_interval_s=0.4",
    "step_timeout_s=60",
    "early_abort_min_failures=5",
    "request_timeout_s=30",
    "thresholds.min_shadow_pairs=12",
    "thresholds.confidence_shift.min_samples=20",
    "thresholds.min_labelled=12",
)


def test_policy() -> CanaryPolicy:
    return load_canary_policy(REPO / "configs" / "deploy" / "canary.yaml", POLICY_OVERRIDES)


test_policy.__test__ = False  # a helper, not a test


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.delenv("CVPLATFORM_ADMIN_TOKEN", raising=False)
    mp.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    root = make_tiny_project(tmp_path_factory.mktemp("canary"), per_class=15, size=16,
                             overrides=[f"registry.model_name={MODEL}"])
    serving = root / "configs" / "deploy" / "serving.yaml"
    cfg = apply_overrides(read_yaml(serving), ["models.intra_op_threads=1", "models.poll_interval_s=0"], "serving")
    serving.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    versions = {}
    work = {"slow_channels": 64, "work_layers": 2}  # ~0.15 ms per image: the default model's scale
    for kind, kw in [("champion", work), ("erroring", {}), ("slow", {"slow_channels": 64, "slow_layers": 6}),
                     ("permuted", work), ("broken", {}), ("good", work)]:
        path = write_model(root / "models" / f"{kind}.onnx", kind, **kw)
        versions[kind] = register_version(root, MODEL, path)
    versions["permuted_cli"] = register_version(root, MODEL, root / "models" / "permuted.onnx")
    versions["pending"] = register_version(root, MODEL, root / "models" / "good.onnx",
                                           tags={"approval.status": "pending"})
    versions["first"] = register_version(root, FIRST, root / "models" / "champion.onnx")  # a model with no champion
    set_alias(root, MODEL, "champion", versions["champion"])
    yield root, versions
    mp.undo()


@pytest.fixture(scope="module")
def live(project):
    """A server and a replay running for the whole module."""
    root, versions = project
    srv = LocalServer(root)
    srv.start()
    replay = ReplayProcess(srv.url, root=root, split="test", corrupt=0.5, concurrency=2, rate=80)
    replay.start()
    yield srv, replay
    replay.stop()
    srv.stop()


def _run(project, live, kind: str):
    root, versions = project
    srv, replay = live
    assert replay.running(), replay.log_text()
    res = run_canary(load_params(root / "params.yaml"), versions[kind], server=srv.url, root=root,
                     token=srv.token, policy=test_policy())
    assert get_alias(root, MODEL, "champion") == versions["champion"], "\n".join(res.lines())
    assert get_alias(root, MODEL, "canary") is None
    return res


def _check(res, name):
    for step in res.steps:
        for c in step["analysis"]["checks"]:
            if c["name"] == name:
                return c["status"]
    return None


def test_unloadable_canary_is_rolled_back_and_never_serves(project, live):
    res = _run(project, live, "broken")
    assert res.decision == "rollback"
    assert res.failed_checks == ["load_failed"]
    assert "load_failed" in res.reasons[0]
    root, versions = project
    assert version_tags(root, MODEL, versions["broken"])["deploy.status"] == "rolled_back"


def test_erroring_canary_is_rolled_back_for_its_errors(project, live):
    res = _run(project, live, "erroring")
    assert res.decision == "rollback"
    assert "error_rate" in res.failed_checks
    root, versions = project
    tags = version_tags(root, MODEL, versions["erroring"])
    assert tags["deploy.status"] == "rolled_back" and "error_rate" in tags["deploy.rollback_reason"]
    lines = (root / "artifacts" / "deploy" / "steps.jsonl").read_text().splitlines()
    assert lines and json.loads(lines[-1])["analysis"]["failed"] == res.failed_checks
    summary = json.loads((root / "artifacts" / "deploy" / "summary.json").read_text())
    assert summary["decision"] == "rollback" and summary["version"] == versions["erroring"]


def _check_value(res, name):
    """The value of the check ``name`` at the last step that judged it."""
    values = [c["value"] for step in res.steps for c in step["analysis"]["checks"]
              if c["name"] == name and c["status"] != "skip"]
    return values[-1] if values else None


def test_a_3x_slower_canary_is_rolled_back_for_latency(project, live):
    res = _run(project, live, "slow")
    assert res.decision == "rollback"
    assert res.failed_checks == ["latency_ratio"], res.lines()
    # 3x the champion's work per image; the per-call overhead both pay keeps the served ratio nearer 2x
    assert _check_value(res, "latency_ratio") > test_policy().thresholds.max_latency_ratio, res.lines()
    assert _check(res, "agreement") == "pass"  # same predictions, just slower


def test_disagreeing_canary_is_rolled_back_and_the_registry_says_so(project, live):
    from cvplatform.registry import history, show

    root, versions = project
    v = versions["permuted"]
    set_alias(root, MODEL, "challenger", v)  # as registration leaves it
    res = _run(project, live, "permuted")
    assert res.decision == "rollback"
    assert "agreement" in res.failed_checks, res.lines()
    assert "error_rate" not in res.failed_checks and "latency_ratio" not in res.failed_checks
    assert "accuracy" in res.failed_checks  # the labelled replay traffic shows it too
    # the rolled-back version lost `challenger`, its status says rolled back, the history shows the rollback
    params = load_params(root / "params.yaml")
    assert get_alias(root, MODEL, "challenger") is None
    assert get_alias(root, MODEL, "champion") == versions["champion"]
    row = {r.version: r for r in show(MODEL, params=params, root=root).versions}[v]
    assert row.approval == "rolled_back" and row.aliases == []
    event = [e for e in history(MODEL, params=params, root=root).events if e.version == v][-1]
    assert event.action == "canary_rolled_back" and "agreement" in event.details["failed_checks"]
    assert event.details["champion"] == versions["champion"] and "agreement" in event.comment
    assert res.registry["status_after"] == "rolled_back" and "challenger" in res.registry["aliases_removed"]
    # the server still answers with the champion
    assert res.served_version == versions["champion"]


def test_a_rolled_back_version_is_not_canaried_again(project, live):
    import httpx

    from cvplatform.deploy.canary import DeployError

    root, versions = project
    srv, _ = live
    if version_tags(root, MODEL, versions["permuted"]).get("approval.status") != "rolled_back":
        pytest.skip("needs the disagreeing canary's rollback first")
    with pytest.raises(DeployError, match="rolled back by an earlier canary"):
        run_canary(load_params(root / "params.yaml"), versions["permuted"], server=srv.url, root=root,
                   token=srv.token, policy=test_policy())
    status = httpx.get(f"{srv.url}/admin/status", headers={"Authorization": f"Bearer {srv.token}"}).json()
    assert status["canary"]["loaded"] is False and status["traffic"]["canary_share"] == 0.0


def test_an_unapproved_version_is_refused_before_any_traffic(project, live):
    import httpx

    from cvplatform.deploy.canary import DeployError

    root, versions = project
    srv, _ = live
    with pytest.raises(DeployError, match="not approved"):
        run_canary(load_params(root / "params.yaml"), versions["pending"], server=srv.url, root=root,
                   token=srv.token, policy=test_policy())
    status = httpx.get(f"{srv.url}/admin/status", headers={"Authorization": f"Bearer {srv.token}"}).json()
    assert status["canary"]["loaded"] is False and status["traffic"]["canary_share"] == 0.0


def test_too_little_traffic_is_inconclusive_and_the_version_stays_approved(project, live):
    """A step that cannot reach its minimum requests before the timeout: aborted without a verdict."""
    from cvplatform.registry import history

    root, versions = project
    srv, _ = live
    policy = load_canary_policy(REPO / "configs" / "deploy" / "canary.yaml", (
        *POLICY_OVERRIDES, "steps=[{traffic: 0.25, min_requests: 100000, bake_s: 0}]", "step_timeout_s=3"))
    res = run_canary(load_params(root / "params.yaml"), versions["good"], server=srv.url, root=root,
                     token=srv.token, policy=policy)
    assert res.decision == "inconclusive" and res.failed_checks == ["min_requests"], res.lines()
    assert res.one_line().startswith("INCONCLUSIVE") and res.registry is None
    assert get_alias(root, MODEL, "champion") == versions["champion"] and get_alias(root, MODEL, "canary") is None
    tags = version_tags(root, MODEL, versions["good"])
    assert tags["approval.status"] == "approved" and tags["deploy.status"] == "aborted"
    assert not [e for e in history(MODEL, params=load_params(root / "params.yaml"), root=root).events
                if e.version == versions["good"] and e.action == "canary_rolled_back"]


def test_first_deployment_without_a_champion_is_promoted_directly(project):
    root, versions = project
    overrides = [f"registry.model_name={FIRST}"]
    res = run_canary_local(load_params(root / "params.yaml", overrides), versions["first"], root=root,
                           overrides=overrides, policy=test_policy())
    assert res.decision == "promote" and res.steps == [] and "no champion" in res.reasons[0]
    assert get_alias(root, FIRST, "champion") == versions["first"]


def test_clients_never_saw_a_failure_during_bad_canaries(project, live):
    srv, replay = live
    report = replay.stop()
    assert report is not None, replay.log_text()
    assert report["sent"] > 100
    assert report["failures"] == 0, report["failure_examples"]
    assert report["fallbacks"] > 0  # the erroring canary's requests were answered by the champion
    assert report["correct"] / report["labelled"] > 0.9


def test_good_canary_is_promoted_end_to_end(project):
    root, versions = project
    params = load_params(root / "params.yaml")
    res = run_canary_local(params, versions["good"], root=root, policy=test_policy(), corrupt=0.5, concurrency=2,
                           rate=80)
    assert res.decision == "promote", res.lines()
    assert [s["analysis"]["passed"] for s in res.steps] == [True, True, True]
    # an equal-cost canary passes a latency check that judged it (not skipped, not pinned by a floor) where both
    # variants have like-for-like samples (25 %, 50 %); at 100 % only the canary answers, so it is skipped there
    latency = [next(c for c in s["analysis"]["checks"] if c["name"] == "latency_ratio") for s in res.steps]
    judged = [c for c in latency if c["status"] != "skip"]
    assert judged and all(c["status"] == "pass" for c in judged), latency
    assert all(0.5 < c["value"] < 1.5 and c["value"] != 1.0 for c in judged), latency
    assert latency[-1]["status"] == "skip" and "100 %" in latency[-1]["detail"]
    assert res.traffic == "replay" and res.served_version == versions["good"]  # the loopback server now serves it
    assert get_alias(root, MODEL, "champion") == versions["good"]
    assert res.previous_champion == versions["champion"]
    assert version_tags(root, MODEL, versions["good"])["champion.previous"] == versions["champion"]
    replay = json.loads((root / "artifacts" / "deploy" / "replay.json").read_text())
    assert replay["failures"] == 0 and replay["sent"] > 0
    assert set(replay["by_variant"]) <= {"champion", "canary"}
    # the rollout is tracked in MLflow: one run per canary in the deploy experiment, metrics per step
    from mlflow.tracking import MlflowClient

    from cvplatform.tracking import tracking_uri

    client = MlflowClient(tracking_uri(root))
    run = client.get_run(res.mlflow_run_id)
    assert run.data.tags["deploy.decision"] == "promote"
    assert len(client.get_metric_history(res.mlflow_run_id, "traffic")) == 3
    assert client.get_experiment(run.info.experiment_id).name == "deploy"


def test_cli_rollback_exits_3(project):
    """`cvplatform deploy canary --local` on a disagreeing version: rolled back, exit code 3."""
    import subprocess
    import sys

    root, versions = project
    policy = root / "configs" / "deploy" / "canary_test.yaml"
    policy.write_text(yaml.safe_dump(test_policy().model_dump(mode="json"), sort_keys=False), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.run(
        [sys.executable, "-m", "cvplatform", "deploy", "canary", "--version", versions["permuted_cli"], "--local",
         "--set", f"deploy.policy={policy}", "--set", "deploy.local.rate=80", "--set", "deploy.local.corrupt=0.5"],
        cwd=root, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "ROLLBACK" in proc.stdout and "agreement" in proc.stdout and "loopback" in proc.stdout
