"""The DAG's ``canary_deploy`` task against a separately started, long-running ``cvplatform serve``.

The server is started first, on its own (a real subprocess on a free loopback port, real SQLite
MLflow registry in tmp_path, its admin token in its environment), and a separate client process
sends it traffic the whole time: the service "users call". The task is the DAG file's own
``canary_deploy`` callable, loaded through a real DagBag with ``CVPLATFORM_ROOT`` pointing at
the project and the service named by ``CVPLATFORM_DEPLOY_SERVER`` / ``CVPLATFORM_ADMIN_TOKEN``,
and called with what the ``register`` task hands it, exactly as the DAG wires it.

* A good version: the task moves traffic on that server step by step, the server then
  answers with the new champion (asked over HTTP), and the task returns the outcome.
* A disagreeing version: the task ends with one line saying ``ROLLED BACK`` and why
  (``AirflowFailException``: no retry); the version lost ``challenger``, its status says
  rolled back, the history shows the rollback, and the server still answers with the
  unchanged champion.
"""

from __future__ import annotations

import pytest
import yaml

from tests.dags.conftest import REPO
from tests.fixtures.serving_models import get_alias, register_version, set_alias, write_model
from tests.fixtures.tiny_dataset import make_tiny_project

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "tiny"
#: configs/deploy/canary.yaml with its bake times and request minimums shrunk (analysis thresholds unchanged).
STEPS = ("steps=[{traffic: 0.25, min_requests: 20, bake_s: 3}, {traffic: 0.5, min_requests: 20, bake_s: 3},"
         " {traffic: 1.0, min_requests: 20, bake_s: 3}]")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    from cvplatform.config import apply_overrides, read_yaml

    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    root = make_tiny_project(tmp_path_factory.mktemp("canary_task"), per_class=15, size=16,
                             overrides=[f"registry.model_name={MODEL}",
                                        "deploy.policy=configs/deploy/canary-task.yaml"])
    policy = apply_overrides(read_yaml(root / "configs/deploy/canary.yaml"), [
        STEPS, "poll_interval_s=0.4", "step_timeout_s=60", "thresholds.min_shadow_pairs=12",
        "thresholds.confidence_shift.min_samples=20",
        "thresholds.min_labelled=12"], "canary.yaml")
    (root / "configs/deploy/canary-task.yaml").write_text(yaml.safe_dump(policy, sort_keys=False), encoding="utf-8")
    serving = root / "configs/deploy/serving.yaml"
    cfg = apply_overrides(read_yaml(serving), ["models.intra_op_threads=1"], "serving")
    serving.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    work = {"slow_channels": 64, "work_layers": 2}
    versions = {kind: register_version(root, MODEL, write_model(root / "models" / f"{kind}.onnx", kind, **work))
                for kind in ("champion", "good", "permuted")}
    set_alias(root, MODEL, "champion", versions["champion"])
    yield root, versions
    mp.undo()


@pytest.fixture(scope="module")
def service(project):
    """The long-running service, started on its own before any task runs, with a client sending it traffic."""
    from cvplatform.serving.local import LocalServer, ReplayProcess

    root, _ = project
    srv = LocalServer(root, token="task-test-admin-token-0123456789abcdef")
    srv.start()
    client = ReplayProcess(srv.url, root=root, split="test", corrupt=0.5, concurrency=2, rate=80)
    client.start()
    yield srv, client
    client.stop()
    srv.stop()


def _canary_task(project, service, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    root, _ = project
    srv, _ = service
    monkeypatch.setenv("CVPLATFORM_ROOT", str(root))
    monkeypatch.setenv("CVPLATFORM_DEPLOY_SERVER", srv.url)
    monkeypatch.setenv("CVPLATFORM_ADMIN_TOKEN", srv.token)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    bag = DagBag(str(REPO / "dags"))
    assert bag.import_errors == {}
    return bag.dags["cv_retrain"].task_dict["canary_deploy"].python_callable


def _reg(root, version: str) -> dict:
    """What the DAG's `register` task hands on: the version and the run's working copy (here the project)."""
    from cvplatform.workspace import RunWorkspace

    ws = RunWorkspace(root=str(root), project=str(root), run_id="manual__canary-task-test", revision="")
    return {"model_name": MODEL, "version": version, "workspace": ws.to_ref()}


def _answering_version(url: str, root) -> str:
    from cvplatform.serving.replay import load_items, predict_once

    return str(predict_once(url, load_items("data/processed/manifest.parquet", root=root, limit=1)[0].data)["version"])


def test_the_dag_canary_moves_traffic_on_the_running_server_which_then_serves_the_new_champion(
        airflow_home, project, service, monkeypatch):
    import json

    root, versions = project
    srv, client = service
    assert _answering_version(srv.url, root) == versions["champion"]
    task = _canary_task(project, service, monkeypatch)
    out = task(_reg(root, versions["good"]))
    assert out["decision"] == "promote" and out["traffic"] == "live" and out["server"] == srv.url
    assert out["served_version"] == versions["good"] and out["summary"].startswith("PROMOTED")
    summary = json.loads((root / "artifacts/deploy/summary.json").read_text())
    assert [s["traffic"] for s in summary["steps"]] == [0.25, 0.5, 1.0]
    assert all(s["canary_requests"] >= 20 for s in summary["steps"])  # real traffic moved on that server
    # the same, still running server process now answers with the new champion
    assert srv.proc.poll() is None
    assert _answering_version(srv.url, root) == versions["good"]
    assert get_alias(root, MODEL, "champion") == versions["good"]
    assert not (root / "artifacts/deploy/replay.json").exists()  # no loopback replay was started
    assert client.running()


def test_the_dag_canary_of_a_bad_version_ends_in_one_line_and_the_registry_says_rolled_back(
        airflow_home, project, service, monkeypatch):
    from airflow.sdk.exceptions import AirflowFailException

    from cvplatform.config import load_params
    from cvplatform.registry import history, show

    root, versions = project
    srv, _ = service
    champion = get_alias(root, MODEL, "champion")
    bad = versions["permuted"]
    set_alias(root, MODEL, "challenger", bad)  # what registration leaves
    task = _canary_task(project, service, monkeypatch)
    with pytest.raises(AirflowFailException) as info:
        task(_reg(root, bad))
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"ROLLED BACK: {MODEL} v{bad} on {srv.url} (live traffic)")
    assert f"champion v{champion} unchanged" in message and "rolled-back-canary.md" in message
    params = load_params(root / "params.yaml")
    overview = show(MODEL, params=params, root=root)
    row = {v.version: v for v in overview.versions}[bad]
    assert row.approval == "rolled_back" and "challenger" not in row.aliases
    assert overview.aliases.get("champion") == champion and "challenger" not in overview.aliases
    events = [e for e in history(MODEL, params=params, root=root).events if e.version == bad]
    assert events[-1].action == "canary_rolled_back" and events[-1].details["traffic"] == "live"
    assert "agreement" in events[-1].details["failed_checks"] and events[-1].details["failed_checks"][0] in message
    # the champion is unchanged and still served by the same server
    assert srv.proc.poll() is None and _answering_version(srv.url, root) == champion


def test_clients_never_saw_a_failure(service):
    _, client = service
    report = client.stop()
    assert report is not None and report["sent"] > 50
    assert report["failures"] == 0, report["failure_examples"]
