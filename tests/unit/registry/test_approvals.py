"""Approval rules: four-eyes, reviewer list, gates, final decisions; each refusal writes nothing."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from cvplatform.errors import GateFailed, RegistryError
from cvplatform.registry import approve, register_model, reject
from cvplatform.registry.errors import (
    AlreadyApprovedError,
    AlreadyRejectedError,
    FourEyesError,
    GatesNotPassedError,
    InvalidReviewerError,
    ReviewerNotAllowedError,
    UnknownModelError,
    UnknownVersionError,
    UnmanagedVersionError,
)


def _tags(client, version: int = 1) -> dict[str, str]:
    return dict(client.version("cvplatform", version).tags)


def test_approve_records_the_decision_on_the_version(registered, project, client):
    res = approve("cvplatform", 1, reviewer="bob", comment="report and gates reviewed", root=project.root)
    assert (res.status, res.reviewer, res.author) == ("approved", "bob", "alice")
    tags = _tags(client)
    assert tags["approval.status"] == "approved"
    assert tags["approval.reviewer"] == "bob"
    assert tags["approval.comment"] == "report and gates reviewed"
    when = datetime.fromisoformat(tags["approval.time"])
    assert when.utcoffset().total_seconds() == 0  # UTC
    events = sorted((k, json.loads(v)) for k, v in tags.items() if k.startswith("audit.") and k != "audit.head")
    assert [e["action"] for _, e in events] == ["registered", "approved"]
    assert events[1][1]["actor"] == "bob" and events[1][1]["comment"] == "report and gates reviewed"
    assert events[0][0] < events[1][0]  # ordered keys: audit.0001..., audit.0002...


def test_reject_records_the_decision(registered, project, client):
    res = reject("cvplatform", "1", reviewer="bob", comment="fails on dark images", root=project.root)
    assert res.status == "rejected"
    tags = _tags(client)
    assert tags["approval.status"] == "rejected" and tags["approval.comment"] == "fails on dark images"


@pytest.mark.parametrize("reviewer", ["alice", "ALICE", " alice "])
def test_author_cannot_approve_own_version(registered, project, client, reviewer):
    before = _tags(client)
    with pytest.raises(FourEyesError) as info:
        approve("cvplatform", 1, reviewer=reviewer, comment="lgtm", root=project.root)
    assert "registered it" in str(info.value) and "version 1" in str(info.value)
    assert _tags(client) == before


def test_author_cannot_reject_own_version(registered, project, client):
    with pytest.raises(FourEyesError):
        reject("cvplatform", 1, reviewer="alice", comment="no", root=project.root)
    assert _tags(client)["approval.status"] == "pending"


def test_reviewer_list_is_enforced(registered, project, client, make_params):
    params = make_params("registry.reviewers=[carol, dave]")
    before = _tags(client)
    with pytest.raises(ReviewerNotAllowedError) as info:
        approve("cvplatform", 1, reviewer="bob", comment="ok", params=params, root=project.root)
    assert "bob" in str(info.value) and "carol, dave" in str(info.value)
    assert _tags(client) == before
    assert approve("cvplatform", 1, reviewer="Carol", comment="ok", params=params, root=project.root).status == \
        "approved"


def test_reviewer_list_is_read_from_the_project_params_yaml(registered, project, client):
    (project.root / "params.yaml").write_text("registry:\n  reviewers: [carol]\n", encoding="utf-8")
    with pytest.raises(ReviewerNotAllowedError):
        approve("cvplatform", 1, reviewer="bob", comment="ok", root=project.root)


def test_approving_twice_is_an_error(registered, project, client):
    approve("cvplatform", 1, reviewer="bob", comment="ok", root=project.root)
    before = _tags(client)
    with pytest.raises(AlreadyApprovedError) as info:
        approve("cvplatform", 1, reviewer="carol", comment="me too", root=project.root)
    assert "already approved by bob" in str(info.value)
    assert _tags(client) == before


def test_approving_a_rejected_version_is_an_error(registered, project, client):
    reject("cvplatform", 1, reviewer="bob", comment="bad", root=project.root)
    with pytest.raises(AlreadyRejectedError) as info:
        approve("cvplatform", 1, reviewer="carol", comment="actually fine", root=project.root)
    assert "already rejected by bob" in str(info.value) and "(bad)" in str(info.value)
    assert _tags(client)["approval.status"] == "rejected"


def test_rejecting_an_approved_version_is_an_error(registered, project, client):
    approve("cvplatform", 1, reviewer="bob", comment="ok", root=project.root)
    with pytest.raises(AlreadyApprovedError):
        reject("cvplatform", 1, reviewer="carol", comment="changed my mind", root=project.root)
    assert _tags(client)["approval.status"] == "approved"


def test_rejecting_twice_is_an_error(registered, project, client):
    reject("cvplatform", 1, reviewer="bob", comment="bad", root=project.root)
    with pytest.raises(AlreadyRejectedError):
        reject("cvplatform", 1, reviewer="carol", comment="very bad", root=project.root)


def test_failed_gates_block_approval_but_not_rejection(failed_project, params, client):
    register_model(params, root=failed_project.root)
    with pytest.raises(GatesNotPassedError) as info:
        approve("cvplatform", 1, reviewer="bob", comment="ship it", root=failed_project.root)
    assert isinstance(info.value, GateFailed) and info.value.exit_code == 3
    assert "2 must-pass" in str(info.value) and "clean/min_accuracy" in str(info.value)
    assert _tags(client)["approval.status"] == "pending"
    assert reject("cvplatform", 1, reviewer="bob", comment="gates failed", root=failed_project.root).status == \
        "rejected"


def test_unknown_model_and_version(registered, project):
    with pytest.raises(UnknownModelError) as info:
        approve("no-such-model", 1, reviewer="bob", comment="ok", root=project.root)
    assert "'no-such-model' does not exist" in str(info.value) and "cvplatform" in str(info.value)
    with pytest.raises(UnknownVersionError) as info:
        approve("cvplatform", 7, reviewer="bob", comment="ok", root=project.root)
    assert "no version 7" in str(info.value) and "versions: 1" in str(info.value)
    with pytest.raises(UnknownVersionError, match="not a version number"):
        approve("cvplatform", "latest", reviewer="bob", comment="ok", root=project.root)


def test_reviewer_and_reason_are_required(registered, project):
    with pytest.raises(InvalidReviewerError, match="no reviewer"):
        approve("cvplatform", 1, reviewer="  ", comment="ok", root=project.root)
    with pytest.raises(InvalidReviewerError, match="without a reason"):
        reject("cvplatform", 1, reviewer="bob", comment="", root=project.root)


def test_versions_not_registered_by_cvplatform_are_refused(registered, project, client):
    # a version someone created by hand with the plain MLflow API: no author / approval tags
    src = client.get_model_version_download_uri("cvplatform", "1")
    client.mlflow.create_model_version("cvplatform", src, tags={"note": "manual"})
    with pytest.raises(UnmanagedVersionError, match="not registered by cvplatform"):
        approve("cvplatform", 2, reviewer="bob", comment="ok", root=project.root)


def test_incomplete_registration_cannot_be_approved(registered, project, client):
    client.set_model_version_tag("cvplatform", "1", "registration.state", "verifying")
    with pytest.raises(UnmanagedVersionError, match="registration did not finish"):
        approve("cvplatform", 1, reviewer="bob", comment="ok", root=project.root)


def test_all_approval_errors_are_registry_errors():
    for cls in (FourEyesError, ReviewerNotAllowedError, GatesNotPassedError, AlreadyApprovedError,
                AlreadyRejectedError, InvalidReviewerError):
        assert issubclass(cls, RegistryError)
