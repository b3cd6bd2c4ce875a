"""What a canary rollback leaves in the registry: status, aliases and history (real SQLite MLflow store)."""

from __future__ import annotations

import pytest

from cvplatform.registry import approve, history, mark_rolled_back, promote, register_model, reject, show
from cvplatform.registry.errors import NotApprovedError, UnknownVersionError
from tests.unit.registry.project import Project, new_training


def _aliases(client) -> dict[str, str]:
    return {a: str(v) for a, v in client.model("cvplatform").aliases.items()}


@pytest.fixture
def champion_and_challenger(registered, project: Project, params, client) -> Project:
    """v1 approved and champion; v2 registered (alias challenger), approved, canary alias set by a server."""
    approve("cvplatform", 1, reviewer="bob", comment="ok", root=project.root)
    promote("cvplatform", 1, root=project.root)
    new_training(project)
    register_model(params, root=project.root)
    approve("cvplatform", 2, reviewer="bob", comment="ok", root=project.root)
    client.mlflow.set_registered_model_alias("cvplatform", "canary", "2")
    return project


def test_a_rolled_back_version_loses_its_aliases_and_approval_and_the_history_says_why(
        champion_and_challenger, client, monkeypatch):
    root = champion_and_challenger.root
    assert _aliases(client) == {"champion": "1", "challenger": "2", "canary": "2"}
    monkeypatch.setenv("CVPLATFORM_USER", "canary-controller")
    res = mark_rolled_back("cvplatform", 2, "agreement: 12/200 where the champion is confident",
                           details={"failed_checks": ["agreement"], "champion": "1"}, root=root)
    assert res.recorded and (res.status_before, res.status_after) == ("approved", "rolled_back")
    assert sorted(res.aliases_removed) == ["canary", "challenger"]
    assert _aliases(client) == {"champion": "1"}  # the champion is untouched
    tags = client.version("cvplatform", 2).tags
    assert tags["approval.status"] == "rolled_back" and tags["deploy.status"] == "rolled_back"
    assert "agreement" in tags["deploy.rollback_reason"]
    summary = {v.version: v for v in show("cvplatform", root=root).versions}["2"]
    assert summary.approval == "rolled_back" and summary.aliases == []
    last = history("cvplatform", root=root).events[-1]
    assert (last.version, last.action, last.actor) == ("2", "canary_rolled_back", "canary-controller")
    assert last.details["failed_checks"] == ["agreement"] and last.details["previous_status"] == "approved"
    assert "agreement" in last.comment
    # the registry's promote rule now refuses it
    with pytest.raises(NotApprovedError, match="rolled_back"):
        promote("cvplatform", 2, root=root)


def test_marking_again_records_nothing_new(champion_and_challenger, client):
    root = champion_and_challenger.root
    mark_rolled_back("cvplatform", 2, "error_rate: 30/100", root=root)
    n = len(history("cvplatform", root=root).events)
    again = mark_rolled_back("cvplatform", 2, "error_rate: 30/100", root=root)
    assert not again.recorded and again.status_after == "rolled_back"
    assert len(history("cvplatform", root=root).events) == n
    assert "already" in again.lines()[0]


def test_a_rejected_version_stays_rejected_and_the_champion_alias_is_never_removed(registered, project, client):
    root = project.root
    reject("cvplatform", 1, reviewer="bob", comment="no", root=root)
    client.mlflow.set_registered_model_alias("cvplatform", "champion", "1")  # by hand, for the test
    res = mark_rolled_back("cvplatform", 1, "load_failed", extra_aliases=("champion",), root=root)
    assert res.status_after == "rejected" and client.version("cvplatform", 1).tags["approval.status"] == "rejected"
    assert _aliases(client)["champion"] == "1" and "challenger" not in _aliases(client)
    with pytest.raises(UnknownVersionError):
        mark_rolled_back("cvplatform", 9, "x", root=root)
