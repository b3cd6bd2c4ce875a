"""Promotion and rollback of the champion alias, and the history / show views over the audit log."""

from __future__ import annotations

import json

import pytest

from cvplatform.registry import approve, history, promote, register_model, reject, rollback, show
from cvplatform.registry.errors import NoChampionError, NoPreviousChampionError, NotApprovedError
from tests.unit.registry.project import Project, new_training


def _aliases(client) -> dict[str, str]:
    return {a: str(v) for a, v in client.model("cvplatform").aliases.items()}


@pytest.fixture
def three_versions(registered, project: Project, params, client) -> Project:
    """Versions 1..3 of 'cvplatform' registered by alice; 1 and 2 approved by bob, 3 pending."""
    for _ in range(2):
        new_training(project)
        register_model(params, root=project.root)
    for v in (1, 2):
        approve("cvplatform", v, reviewer="bob", comment=f"v{v} ok", root=project.root)
    return project


def test_promoting_an_unapproved_version_is_refused(registered, project, client):
    with pytest.raises(NotApprovedError) as info:
        promote("cvplatform", 1, root=project.root)
    assert "'pending'" in str(info.value) and "registry approve cvplatform 1" in str(info.value)
    assert "champion" not in _aliases(client)


def test_promoting_a_rejected_version_is_refused(registered, project, client):
    reject("cvplatform", 1, reviewer="bob", comment="bad", root=project.root)
    with pytest.raises(NotApprovedError, match="'rejected'"):
        promote("cvplatform", 1, root=project.root)


def test_promote_and_rollback_sequence(three_versions, client, monkeypatch):
    root = three_versions.root
    monkeypatch.setenv("CVPLATFORM_USER", "ops")
    first = promote("cvplatform", 1, comment="first release", root=root)
    assert (first.version, first.previous, first.action) == ("1", None, "promoted")
    assert _aliases(client)["champion"] == "1"
    assert client.version("cvplatform", 1).tags["champion.previous"] == "none"

    second = promote("cvplatform", 2, root=root)
    assert (second.version, second.previous) == ("2", "1")
    assert client.version("cvplatform", 2).tags["champion.previous"] == "1"
    assert _aliases(client) == {"champion": "2", "challenger": "3"}

    back = rollback("cvplatform", comment="latency regression", root=root)
    assert (back.version, back.previous, back.action, back.actor) == ("1", "2", "rolled_back", "ops")
    assert _aliases(client)["champion"] == "1"

    with pytest.raises(NoPreviousChampionError, match="no champion"):
        rollback("cvplatform", root=root)
    assert _aliases(client)["champion"] == "1"

    # promote 2 again, then 3 cannot be promoted (pending), rollback returns to 1 again
    promote("cvplatform", 2, root=root)
    with pytest.raises(NotApprovedError):
        promote("cvplatform", 3, root=root)
    assert rollback("cvplatform", root=root).version == "1"


def test_promoting_the_current_champion_changes_nothing(three_versions, client):
    promote("cvplatform", 1, root=three_versions.root)
    events_before = [k for k in client.version("cvplatform", 1).tags if k.startswith("audit.")]
    again = promote("cvplatform", 1, root=three_versions.root)
    assert again.action == "unchanged" and not again.changed
    assert [k for k in client.version("cvplatform", 1).tags if k.startswith("audit.")] == events_before


def test_promoting_an_unknown_version_is_refused(registered, project):
    from cvplatform.registry.errors import UnknownModelError, UnknownVersionError

    with pytest.raises(UnknownVersionError, match="no version 5"):
        promote("cvplatform", 5, root=project.root)
    with pytest.raises(UnknownModelError):
        promote("other", 1, root=project.root)


def test_rollback_without_champion_is_refused(registered, project):
    with pytest.raises(NoChampionError, match="no version holds the 'champion' alias"):
        rollback("cvplatform", root=project.root)


def test_rollback_to_a_deleted_version_is_refused(three_versions, client):
    promote("cvplatform", 1, root=three_versions.root)
    promote("cvplatform", 2, root=three_versions.root)
    client.mlflow.delete_model_version("cvplatform", "1")
    with pytest.raises(NoPreviousChampionError, match="no longer exists"):
        rollback("cvplatform", root=three_versions.root)
    assert _aliases(client)["champion"] == "2"


def test_custom_champion_alias(three_versions, client, make_params):
    params = make_params("registry.champion_alias=production")
    promote("cvplatform", 1, params=params, root=three_versions.root)
    assert _aliases(client)["production"] == "1" and "champion" not in _aliases(client)


def test_history_is_chronological_across_versions(three_versions, client):
    root = three_versions.root
    promote("cvplatform", 1, root=root)
    promote("cvplatform", 2, root=root)
    rollback("cvplatform", comment="oops", root=root)
    reject("cvplatform", 3, reviewer="carol", comment="not better", root=root)

    events = history("cvplatform", root=root).events
    assert [(e.action, e.version) for e in events] == [
        ("registered", "1"), ("registered", "2"), ("registered", "3"),
        ("approved", "1"), ("approved", "2"),
        ("promoted", "1"), ("promoted", "2"), ("rolled_back", "1"), ("rejected", "3"),
    ]
    times = [e.time for e in events]
    assert times == sorted(times)
    assert events[6].details["previous"] == "1" and events[7].details["from"] == "2"
    assert events[7].comment == "oops"
    # append-only: every event is its own tag, nothing was overwritten
    keys = [k for v in (1, 2, 3) for k in client.version("cvplatform", v).tags
            if k.startswith("audit.") and k != "audit.head"]
    assert len(keys) == len(events) == len(set(keys))
    assert all(json.loads(client.version("cvplatform", e.version).tags[e.key])["action"] == e.action
               for e in events)


def test_show_lists_versions_aliases_approvals_and_gates(three_versions):
    root = three_versions.root
    promote("cvplatform", 2, root=root)
    overview = show("cvplatform", root=root)
    assert overview.aliases == {"champion": "2", "challenger": "3"}
    rows = {v.version: v for v in overview.versions}
    assert set(rows) == {"1", "2", "3"}
    assert rows["2"].aliases == ["champion"] and rows["2"].approval == "approved" and rows["2"].reviewer == "bob"
    assert rows["3"].approval == "pending" and rows["3"].gates_passed is True
    assert rows["1"].accuracy == pytest.approx(0.9125) and rows["1"].author == "alice"
    text = "\n".join(overview.lines())
    assert "champion -> v2" in text and "v3 [challenger]: approval pending" in text
