"""register_model on the embedded SQLite store: tags, aliases, attachments, idempotency, bad inputs."""

from __future__ import annotations

import json
import socket

import pytest

from cvplatform.registry import register_model
from cvplatform.registry.client import RegistryClient
from cvplatform.registry.errors import RegistrationInputError, RegistryUnavailableError
from tests.unit.registry.project import make_project, new_training, read_json


def _aliases(client, name: str) -> dict[str, str]:
    return {a: str(v) for a, v in client.model(name).aliases.items()}


LINEAGE_KEYS = (
    "author", "lineage.train_run_id", "lineage.git_commit", "lineage.data_hash", "lineage.params_hash",
    "artifact.sha256", "artifact.precision", "gates.passed", "gates.failed_must_pass", "gates.summary",
    "metrics.clean_accuracy", "metrics.clean_macro_f1", "approval.status", "registration.state",
)


def test_register_creates_a_tagged_version_with_challenger_alias(project, params, client, monkeypatch):
    from cvplatform.config import params_hash

    monkeypatch.setenv("AIRFLOW_CTX_DAG_RUN_ID", "scheduled__2025-01-01")
    res = register_model(params, root=project.root)

    assert (res.model_name, res.version, res.created) == ("cvplatform", "1", True)
    assert res.model_uri == "models:/cvplatform/1"
    assert res.aliases == ["challenger"] and res.approval_status == "pending" and res.gates_passed
    mv = client.version("cvplatform", 1)
    tags = mv.tags
    for key in LINEAGE_KEYS:
        assert tags.get(key), key
    assert tags["author"] == "alice"
    assert tags["lineage.train_run_id"] == project.train_run_id
    assert tags["artifact.sha256"] == project.sha256
    assert tags["artifact.precision"] == "fp32"
    assert tags["lineage.data_hash"] == "d41d8cd98f00b204e9800998ecf8427e"
    assert tags["lineage.params_hash"] == params_hash(params)
    assert tags["lineage.airflow_run_id"] == "scheduled__2025-01-01"
    assert tags["gates.passed"] == "true" and tags["gates.failed_must_pass"] == "0"
    assert "gaussian_noise_s3/min_accuracy" in tags["gates.summary"]  # the warning is named
    assert float(tags["metrics.clean_accuracy"]) == pytest.approx(0.9125)
    assert json.loads(tags["model.class_names"]) == ["cat", "dog"]
    assert tags["registration.state"] == "complete"
    events = [k for k in tags if k.startswith("audit.") and k != "audit.head"]
    assert len(events) == 1 and json.loads(tags[events[0]])["action"] == "registered"
    assert tags["audit.head"] == f"1:{json.loads(tags[events[0]])['mac']}"
    assert sorted(mv.aliases) == ["challenger"]

    summary = read_json(project.root / "artifacts" / "register" / "summary.json")
    assert summary["stage"] == "register" and summary["version"] == "1" and summary["created"] is True


def test_model_run_is_a_child_of_the_training_run_and_holds_the_attachments(registered, project, client):
    run = client.get_run(registered.run_id)
    assert run.data.tags["mlflow.parentRunId"] == project.train_run_id
    assert run.info.status == "FINISHED"
    train = client.get_run(project.train_run_id)
    assert run.info.experiment_id == train.info.experiment_id
    attached = {a.path for a in client.list_artifacts(registered.run_id, "registration")}
    assert {"registration/model_card.md", "registration/gate_report.json", "registration/report.md",
            "registration/report.html", "registration/scenarios.json"} <= attached


def test_logged_model_has_the_onnx_flavour_and_a_signature(registered, project, client):
    import mlflow.models

    with client.fluent():
        info = mlflow.models.get_model_info("models:/cvplatform/1")
    assert "onnx" in info.flavors
    inputs = info.signature.inputs.to_dict()
    outputs = info.signature.outputs.to_dict()
    assert inputs[0]["tensor-spec"]["dtype"] == "float32" and list(inputs[0]["tensor-spec"]["shape"]) == [-1, 3, 8, 8]
    assert outputs[0]["tensor-spec"]["dtype"] == "float32" and list(outputs[0]["tensor-spec"]["shape"]) == [-1, 2]
    assert inputs[0]["name"] == "input" and outputs[0]["name"] == "logits"


def test_registering_the_same_training_run_again_returns_the_existing_version(registered, project, params, client):
    again = register_model(params, root=project.root)
    assert (again.version, again.created) == ("1", False)
    assert [str(mv.version) for mv in client.versions("cvplatform")] == ["1"]
    assert read_json(project.root / "artifacts" / "register" / "summary.json")["created"] is False


def test_a_new_training_run_makes_a_new_version_and_moves_challenger(registered, project, params, client):
    second = new_training(project)
    res = register_model(params, root=project.root)
    assert (res.version, res.created) == ("2", True)
    assert client.version("cvplatform", 2).tags["lineage.train_run_id"] == second.train_run_id
    assert _aliases(client, "cvplatform") == {"challenger": "2"}


def test_same_run_with_a_different_artifact_is_a_new_version(registered, project, params, other_model_bytes, client):
    from tests.unit.registry.project import write_evaluation, write_export

    write_export(project.root, other_model_bytes, project.train_run_id, precision="int8")
    write_evaluation(project.root)  # the gates judged the new artifact
    res = register_model(params, root=project.root)
    assert res.version == "2" and res.precision == "int8"
    assert client.version("cvplatform", 2).tags["artifact.precision"] == "int8"


def test_failed_gates_register_without_challenger(failed_project, params, client):
    res = register_model(params, root=failed_project.root)
    assert res.gates_passed is False and res.aliases == []
    tags = client.version("cvplatform", 1).tags
    assert tags["gates.passed"] == "false" and tags["gates.failed_must_pass"] == "2"
    assert "clean/min_accuracy" in tags["gates.summary"] and tags["gates.summary"].startswith("FAILED")
    assert any("cannot be approved" in n for n in res.notes)


def test_interrupted_registration_is_finished_not_duplicated(registered, project, params, client):
    # the state a crash between "version created" and "alias set" leaves behind
    client.set_model_version_tag("cvplatform", "1", "registration.state", "verifying")
    client.delete_registered_model_alias("cvplatform", "challenger")
    res = register_model(params, root=project.root)
    assert (res.version, res.created) == ("1", False)
    mv = client.version("cvplatform", 1)
    assert mv.tags["registration.state"] == "complete" and mv.aliases == ["challenger"]
    assert len(client.versions("cvplatform")) == 1


def test_author_comes_from_cvplatform_user(project, params, client, monkeypatch):
    monkeypatch.setenv("CVPLATFORM_USER", "dora")
    register_model(params, root=project.root)
    assert client.version("cvplatform", 1).tags["author"] == "dora"


def test_configured_model_name_is_used(project, make_params, client):
    res = register_model(make_params("registry.model_name=shapes-classifier"), root=project.root)
    assert res.model_uri == "models:/shapes-classifier/1"
    assert _aliases(client, "shapes-classifier") == {"challenger": "1"}


# --------------------------------------------------------------------------- bad input
def _no_versions(client) -> bool:
    return not client.mlflow.search_registered_models()


def test_missing_export_summary_names_the_file(project_root, params, client):
    with pytest.raises(RegistrationInputError) as info:
        register_model(params, root=project_root)
    assert "artifacts/export/summary.json" in str(info.value) and "cvplatform export" in str(info.value)


def test_modified_export_is_refused_before_anything_is_registered(project, params, client):
    project.onnx_path.write_bytes(project.onnx_path.read_bytes() + b"\0")
    with pytest.raises(RegistrationInputError) as info:
        register_model(params, root=project.root)
    assert "changed after export" in str(info.value) and str(project.onnx_path) in str(info.value)
    assert _no_versions(client)


def test_missing_gate_report_is_refused(project, params, client):
    (project.root / "artifacts" / "evaluate" / "gate_report.json").unlink()
    with pytest.raises(RegistrationInputError, match=r"gate_report\.json: evaluation gate report not found"):
        register_model(params, root=project.root)
    assert _no_versions(client)


def test_model_without_contract_is_refused(project, params, client):
    import onnx

    from tests.unit.registry.project import write_export

    proto = onnx.load(str(project.onnx_path))
    del proto.metadata_props[:]
    write_export(project.root, proto.SerializeToString(), project.train_run_id)
    with pytest.raises(RegistrationInputError, match="preprocessing contract"):
        register_model(params, root=project.root)
    assert _no_versions(client)


def test_unknown_training_run_is_refused(project_root, model_bytes, params, client):
    make_project(project_root, model_bytes, train_run_id="0123456789abcdef0123456789abcdef")
    with pytest.raises(RegistrationInputError) as info:
        register_model(params, root=project_root)
    assert "0123456789abcdef0123456789abcdef" in str(info.value) and "does not exist" in str(info.value)
    assert _no_versions(client)


def test_stale_export_is_refused(project, params):
    from cvplatform.utils.io import write_json

    write_json(project.root / "artifacts" / "train" / "summary.json", {"run_id": "ffffffffffffffffffffffffffffffff"})
    with pytest.raises(RegistrationInputError, match="stale"):
        register_model(params, root=project.root)


def test_unreachable_tracking_server_fails_with_the_uri(project, make_params, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("CVPLATFORM_AUDIT_KEY", "k" * 40)  # a server needs a configured platform key
    params = make_params("registry.retry.attempts=2", "registry.retry.backoff_s=0.01")
    with pytest.raises(RegistryUnavailableError) as info:
        register_model(params, root=project.root)
    assert uri in str(info.value) and "curl" in str(info.value)
    assert not (project.root / "artifacts" / "register" / "summary.json").exists()


def test_client_is_reusable_across_calls(registered, project, params):
    client = RegistryClient.from_params(params, project.root)
    assert register_model(params, root=project.root, client=client).version == "1"


def test_git_commit_is_the_one_recorded_at_export(project, params, client):
    from cvplatform.utils.io import write_json

    summary_path = project.root / "artifacts" / "export" / "summary.json"
    summary = read_json(summary_path)
    write_json(summary_path, {**summary, "lineage": {"git_commit": "0badc0de" * 5}})
    register_model(params, root=project.root)
    assert client.version("cvplatform", 1).tags["lineage.git_commit"] == "0badc0de" * 5


def test_an_artifact_the_gates_did_not_judge_is_refused(project, params, other_model_bytes, client, monkeypatch):
    from typer.testing import CliRunner

    from cvplatform.cli import app
    from cvplatform.registry.errors import GateReportMismatchError
    from tests.unit.registry.project import write_export

    write_export(project.root, other_model_bytes, project.train_run_id)  # model.onnx replaced after evaluate
    with pytest.raises(GateReportMismatchError, match="the gates were not run on what would ship"):
        register_model(params, root=project.root)
    assert client.mlflow.search_registered_models() == [] or client.versions("cvplatform") == []
    monkeypatch.chdir(project.root)
    res = CliRunner().invoke(app, ["registry", "register"])
    assert res.exit_code == 3 and "judged a model with sha256" in res.output


def test_headline_tags_carry_each_tasks_clean_numbers_per_class_ap_and_rpc():
    """Registry tags hold what a reviewer compares: classification's accuracy / macro-F1, a detector's mAP numbers,
    its AP per class (class names made safe for a tag key) and rPC; intervals are not tags."""
    from cvplatform.registry.register import _headline

    cls = _headline({"clean": {"accuracy": 0.9, "accuracy_low": 0.85, "accuracy_high": 0.95, "macro_f1": 0.88}})
    assert cls == {"metrics.clean_accuracy": "0.900000", "metrics.clean_macro_f1": "0.880000"}
    det = _headline({"clean": {"map": 0.2877, "map50": 0.6125, "map_large": None,
                               "per_class": {"ap": {"circle": 0.4063, "traffic light?": 0.2, "none": None}}},
                     "robustness": {"mpc": 0.2005, "rpc": 0.6968, "change_map": -0.08}})
    assert det == {"metrics.clean_map": "0.287700", "metrics.clean_map50": "0.612500",
                   "metrics.clean_ap.circle": "0.406300", "metrics.clean_ap.traffic light_": "0.200000",
                   "metrics.mpc": "0.200500", "metrics.rpc": "0.696800"}
