"""The signed audit trail: hand-edited tags never count, and `registry verify` finds every kind of tampering."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cvplatform.cli import app
from cvplatform.registry import approve, promote, register_model, verify_version
from cvplatform.registry.audit import record_event
from cvplatform.registry.errors import AuditIntegrityError, NotApprovedError
from cvplatform.registry.keys import AuditKeyError, embedded_key_path
from tests.unit.registry.project import new_training

runner = CliRunner()


def _events(client, version: int = 1) -> list[tuple[str, dict]]:
    tags = client.version("cvplatform", version).tags
    return sorted((k, json.loads(v)) for k, v in tags.items() if k.startswith("audit.") and k != "audit.head")


def _verify_cli(root, monkeypatch, version: str = "1"):
    monkeypatch.chdir(root)
    return runner.invoke(app, ["registry", "verify", "cvplatform", version])


@pytest.fixture
def approved(registered, project):
    approve("cvplatform", 1, reviewer="bob", comment="gates and report read", root=project.root)
    return project


def test_a_fresh_and_an_approved_history_verify(approved, client, monkeypatch):
    check = verify_version("cvplatform", 1, root=approved.root)
    assert check.ok and check.status == "approved" and check.problems == []
    assert [e.action for e in check.events] == ["registered", "approved"]
    assert check.events[1].identity["source"] == "self-declared"
    res = _verify_cli(approved.root, monkeypatch)
    assert res.exit_code == 0 and "audit trail intact" in res.output


def test_a_hand_edited_approval_tag_does_not_allow_promotion(registered, project, client, monkeypatch):
    # what the MLflow UI pencil (or any client with write access) can do
    client.mlflow.set_model_version_tag("cvplatform", "1", "approval.status", "approved")
    client.mlflow.set_model_version_tag("cvplatform", "1", "approval.reviewer", "bob")
    with pytest.raises(NotApprovedError) as info:
        promote("cvplatform", 1, root=project.root)
    assert "a tag set by hand does not count" in str(info.value) or "tag set by hand" in str(info.value)
    assert "champion" not in client.model("cvplatform").aliases
    check = verify_version("cvplatform", 1, root=project.root)
    assert not check.ok and check.status == "pending"
    assert any("approval.status is 'approved' but the signed history says 'pending'" in p for p in check.problems)
    res = _verify_cli(project.root, monkeypatch)
    assert res.exit_code == 3 and "BROKEN" in res.output


def test_an_edited_event_breaks_the_chain_and_blocks_promotion(approved, client, monkeypatch):
    key, event = _events(client)[1]
    client.mlflow.set_model_version_tag("cvplatform", "1", key, json.dumps({**event, "actor": "mallory"}))
    check = verify_version("cvplatform", 1, root=approved.root)
    assert not check.ok and not check.chain_ok
    assert any("event #2 (approved by mallory" in p and "edited" in p for p in check.problems)
    with pytest.raises(AuditIntegrityError, match="does not verify"):
        promote("cvplatform", 1, root=approved.root)
    assert _verify_cli(approved.root, monkeypatch).exit_code == 3


def test_a_forged_approval_event_without_the_key_does_not_verify(registered, project, client):
    # someone who can write tags but does not hold the platform key writes a plausible approval
    (key1, ev1) = _events(client)[0]
    forged = {"action": "approved", "actor": "bob", "time": ev1["time"], "comment": "", "details": {},
              "identity": {"source": "self-declared"}, "prev": ev1["mac"], "mac": "0" * 64, "kid": ev1["kid"],
              "format": 2}
    client.mlflow.set_model_version_tag("cvplatform", "1", "audit.0002.abcdef012345", json.dumps(forged))
    client.mlflow.set_model_version_tag("cvplatform", "1", "audit.head", "2:" + "0" * 64)
    client.mlflow.set_model_version_tag("cvplatform", "1", "approval.status", "approved")
    check = verify_version("cvplatform", 1, root=project.root)
    assert not check.ok and check.status == "pending"
    assert any("edited" in p for p in check.problems)
    with pytest.raises(AuditIntegrityError):
        promote("cvplatform", 1, root=project.root)


def test_a_deleted_middle_event_and_a_deleted_newest_event_are_reported(approved, project, client, monkeypatch):
    promote("cvplatform", 1, root=approved.root)
    events = _events(client)
    assert [e["action"] for _, e in events] == ["registered", "approved", "promoted"]
    client.mlflow.delete_model_version_tag("cvplatform", "1", events[1][0])  # the approval disappears
    check = verify_version("cvplatform", 1, root=approved.root)
    assert any("event #2 is missing: it was deleted" in p for p in check.problems)
    assert any("does not follow" in p for p in check.problems)
    assert _verify_cli(approved.root, monkeypatch).exit_code == 3


def test_deleting_the_newest_event_is_caught_by_the_head(approved, client):
    key, _ = _events(client)[-1]
    client.mlflow.delete_model_version_tag("cvplatform", "1", key)
    check = verify_version("cvplatform", 1, root=approved.root)
    assert not check.ok and any("audit.head names event #2, but the newest event is #1" in p for p in check.problems)
    client.mlflow.delete_model_version_tag("cvplatform", "1", "audit.head")
    check = verify_version("cvplatform", 1, root=approved.root)
    assert any("audit.head tag is missing" in p for p in check.problems)


def test_reordered_events_are_reported(approved, client):
    (k1, e1), (k2, e2) = _events(client)
    # swap the two events' positions (keys): each one now claims the other's place in the chain
    client.mlflow.set_model_version_tag("cvplatform", "1", k1, json.dumps(e2))
    client.mlflow.set_model_version_tag("cvplatform", "1", k2, json.dumps(e1))
    check = verify_version("cvplatform", 1, root=approved.root)
    assert not check.ok and len(check.problems) >= 2


def test_an_event_copied_from_another_version_does_not_verify(approved, project, params, client):
    new_training(project)
    register_model(params, root=project.root)  # v2, pending
    key, event = _events(client, 1)[1]  # v1's approval by bob
    client.mlflow.set_model_version_tag("cvplatform", "2", "audit.0002.0123456789ab",
                                        json.dumps({**event, "prev": _events(client, 2)[0][1]["mac"]}))
    check = verify_version("cvplatform", 2, root=project.root)
    assert not check.ok and check.status == "pending"
    with pytest.raises((AuditIntegrityError, NotApprovedError)):
        promote("cvplatform", 2, root=project.root)


def test_a_changed_artifact_or_gate_tag_contradicts_the_signed_registration(registered, project, client):
    client.mlflow.set_model_version_tag("cvplatform", "1", "gates.passed", "true")  # unchanged: still fine
    assert verify_version("cvplatform", 1, root=project.root).ok
    client.mlflow.set_model_version_tag("cvplatform", "1", "artifact.sha256", "0" * 64)
    check = verify_version("cvplatform", 1, root=project.root)
    assert any("artifact.sha256" in p and "signed registration" in p for p in check.problems)


def test_the_key_is_needed_and_must_be_the_same(approved, client, monkeypatch):
    key_file = embedded_key_path(client.uri)
    assert key_file is not None and key_file.is_file() and oct(key_file.stat().st_mode)[-3:] == "600"
    monkeypatch.setenv("CVPLATFORM_AUDIT_KEY", "another-platform-key-" + "x" * 20)
    check = verify_version("cvplatform", 1, root=approved.root)
    assert not check.ok and any("signed with another platform key" in p for p in check.problems)
    monkeypatch.delenv("CVPLATFORM_AUDIT_KEY")
    key_file.unlink()
    with pytest.raises(AuditKeyError, match="does not exist"):
        verify_version("cvplatform", 1, root=approved.root)
    res = _verify_cli(approved.root, monkeypatch)
    assert res.exit_code == 2 and "audit key" in res.output


def test_record_event_is_signed_and_can_change_the_status(approved, client):
    ev = record_event(client, "cvplatform", 1, "canary_rolled_back", "deploy", "p95 latency x1.8",
                      {"step": 2}, status="rolled_back")
    assert ev.seq == 3 and ev.prev == _events(client)[1][1]["mac"]
    check = verify_version("cvplatform", 1, root=approved.root)
    assert check.ok and check.status == "rolled_back"
    assert client.version("cvplatform", 1).tags["approval.status"] == "rolled_back"
    with pytest.raises(NotApprovedError, match="'rolled_back'"):
        promote("cvplatform", 1, root=approved.root)


def test_an_interrupted_approval_is_repaired_by_repeating_it(registered, project, client):
    from cvplatform.registry.errors import AlreadyApprovedError

    approve("cvplatform", 1, reviewer="bob", comment="ok", root=project.root)
    client.mlflow.set_model_version_tag("cvplatform", "1", "approval.status", "pending")  # the last write was lost
    with pytest.raises(AuditIntegrityError):
        promote("cvplatform", 1, root=project.root)
    with pytest.raises(AlreadyApprovedError, match="already approved by bob"):
        approve("cvplatform", 1, reviewer="carol", comment="again", root=project.root)
    assert client.version("cvplatform", 1).tags["approval.status"] == "approved"
    assert promote("cvplatform", 1, root=project.root).version == "1"


def test_history_and_show_report_integrity(approved, client, monkeypatch):
    from cvplatform.registry import history, show

    assert history("cvplatform", root=approved.root).integrity == {"1": "intact"}
    client.mlflow.set_model_version_tag("cvplatform", "1", "approval.status", "rejected")
    h = history("cvplatform", root=approved.root)
    assert h.integrity["1"].startswith("BROKEN")
    line = show("cvplatform", root=approved.root).versions[0].line()
    assert "audit trail BROKEN" in line


def test_check_promotable_refuses_before_anything_is_done(registered, project, client):
    from cvplatform.registry.aliases import check_promotable

    client.mlflow.set_model_version_tag("cvplatform", "1", "approval.status", "approved")  # by hand
    with pytest.raises(NotApprovedError):
        check_promotable("cvplatform", 1, root=project.root)
    client.mlflow.set_model_version_tag("cvplatform", "1", "approval.status", "pending")
    approve("cvplatform", 1, reviewer="bob", comment="ok", root=project.root)
    assert check_promotable("cvplatform", 1, root=project.root).status == "approved"
    assert "champion" not in client.model("cvplatform").aliases  # nothing was moved


def test_a_hand_edited_gates_tag_does_not_allow_approval(failed_project, params, client):
    from cvplatform.registry.errors import GatesNotPassedError

    register_model(params, root=failed_project.root)
    client.mlflow.set_model_version_tag("cvplatform", "1", "gates.passed", "true")  # by hand
    with pytest.raises((GatesNotPassedError, AuditIntegrityError)):
        approve("cvplatform", 1, reviewer="bob", comment="ship it", root=failed_project.root)
    check = verify_version("cvplatform", 1, root=failed_project.root)
    assert any("gates.passed" in p and "signed registration recorded 'false'" in p for p in check.problems)
