"""Reviewer approval of registry versions: four-eyes, an optional reviewer list, gates must have passed.

Rules (each broken rule raises its own :class:`~cvplatform.registry.errors.ApprovalError`
subclass, before anything is written):

* the reviewer is named (``InvalidReviewerError``);
* the version exists and was registered by cvplatform, completely
  (``UnknownModelError`` / ``UnknownVersionError`` / ``UnmanagedVersionError``);
* a decision is final: approving an approved version or rejecting a rejected one,
  approving a rejected one or rejecting an approved one fail
  (``AlreadyApprovedError`` / ``AlreadyRejectedError``);
* a version whose must-pass gates failed cannot be approved (``GatesNotPassedError``,
  exit code 3); it can be rejected;
* the reviewer is not the version's author (``FourEyesError``);
* when ``registry.reviewers`` lists names, the reviewer is one of them
  (``ReviewerNotAllowedError``).

A decision writes ``approval.reviewer``, ``approval.time`` (UTC ISO),
``approval.comment``, then one audit event (:mod:`cvplatform.registry.audit`), and
last ``approval.status``: the status tag is the commit point, so an interrupted
decision never shows as taken.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from cvplatform.registry.audit import MAX_COMMENT, AuditEvent, new_event
from cvplatform.registry.client import (
    STATE_COMPLETE,
    STATUS_APPROVED,
    STATUS_PENDING,
    STATUS_REJECTED,
    TAG_APPROVAL_COMMENT,
    TAG_APPROVAL_REVIEWER,
    TAG_APPROVAL_STATUS,
    TAG_APPROVAL_TIME,
    TAG_AUTHOR,
    TAG_GATES_FAILED,
    TAG_GATES_PASSED,
    TAG_GATES_SUMMARY,
    TAG_REGISTRATION_STATE,
    RegistryClient,
)
from cvplatform.registry.errors import (
    AlreadyApprovedError,
    AlreadyRejectedError,
    FourEyesError,
    GatesNotPassedError,
    InvalidReviewerError,
    ReviewerNotAllowedError,
    UnmanagedVersionError,
)

if TYPE_CHECKING:  # pragma: no cover
    from mlflow.entities.model_registry import ModelVersion

    from cvplatform.config import Params

Decision = Literal["approved", "rejected"]


@dataclass
class ApprovalResult:
    """The recorded decision (what the CLI prints)."""

    model: str
    version: str
    status: str
    reviewer: str
    time: str
    comment: str
    author: str
    event: AuditEvent
    tracking_uri: str
    summary_path: None = None

    def lines(self) -> list[str]:
        out = [f"{self.model} v{self.version}: {self.status} by {self.reviewer} at {self.time} "
               f"(author {self.author}; {self.tracking_uri})"]
        if self.comment:
            out.append(f"  comment: {self.comment}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "version": self.version, "status": self.status, "reviewer": self.reviewer,
                "time": self.time, "comment": self.comment, "author": self.author, "event": self.event.to_dict(),
                "tracking_uri": self.tracking_uri}


def resolve_params(params: Params | None, root: str | os.PathLike[str] | None) -> Params:
    """``params`` if given, else ``<root>/params.yaml`` when it exists, else the defaults.

    The registry's rules (reviewer list, aliases, retries) come from ``params.yaml``;
    the Python API reads it from the project root so a notebook gets the same
    rules as the CLI.
    """
    from cvplatform.config import DEFAULT_PARAMS, Params, load_params

    if params is not None:
        return params
    p = Path(root or os.getcwd()) / DEFAULT_PARAMS
    return load_params(p) if p.is_file() else Params()


#: The reviewer name recorded when an approval request times out (Airflow's approval task).
#: It may only *reject*, and it is exempt from ``registry.reviewers`` (nobody answered).
TIMEOUT_REVIEWER = "approval-timeout"


def _same_person(a: str, b: str) -> bool:
    return a.strip().casefold() == b.strip().casefold()


def check_managed(mv: ModelVersion, what: str) -> dict[str, str]:
    """The version's tags, after checking it was registered (completely) by cvplatform."""
    tags = dict(mv.tags or {})
    if TAG_AUTHOR not in tags or TAG_APPROVAL_STATUS not in tags:
        raise UnmanagedVersionError(
            f"cannot {what} version {mv.version} of {mv.name!r}: it has no {TAG_AUTHOR!r} / "
            f"{TAG_APPROVAL_STATUS!r} tags, so it was not registered by cvplatform. Register the exported model "
            "with `cvplatform registry register`."
        )
    if tags.get(TAG_REGISTRATION_STATE, STATE_COMPLETE) != STATE_COMPLETE:
        raise UnmanagedVersionError(
            f"cannot {what} version {mv.version} of {mv.name!r}: its registration did not finish (state "
            f"{tags.get(TAG_REGISTRATION_STATE)!r}). Run `cvplatform registry register` again to complete it."
        )
    return tags


def _decide(
    decision: Decision, name: str, version: str | int, reviewer: str, comment: str,
    params: Params | None, root: str | os.PathLike[str] | None, client: RegistryClient | None,
) -> ApprovalResult:
    verb = "approve" if decision == STATUS_APPROVED else "reject"
    who = (reviewer or "").strip()
    if not who:
        raise InvalidReviewerError(
            f"cannot {verb} version {version} of {name!r}: no reviewer given. Pass --reviewer NAME (Python: "
            "reviewer=...)."
        )
    text = (comment or "").strip()
    if decision == STATUS_REJECTED and not text:
        raise InvalidReviewerError(
            f"cannot reject version {version} of {name!r} without a reason: pass --comment TEXT saying why."
        )
    cfg = resolve_params(params, root)
    c = client or RegistryClient.from_params(cfg, root)
    mv = c.version(name, version)
    v = str(mv.version)
    tags = check_managed(mv, verb)
    status = tags.get(TAG_APPROVAL_STATUS, STATUS_PENDING)
    by = tags.get(TAG_APPROVAL_REVIEWER, "?")
    at = tags.get(TAG_APPROVAL_TIME, "?")
    if status == STATUS_APPROVED:
        raise AlreadyApprovedError(
            f"cannot {verb} version {v} of {name!r}: it was already approved by {by} at {at}. Decisions are "
            f"final; {'nothing to do' if decision == STATUS_APPROVED else 'to stop it, promote another version or roll back'}."
        )
    if status == STATUS_REJECTED:
        raise AlreadyRejectedError(
            f"cannot {verb} version {v} of {name!r}: it was already rejected by {by} at {at}"
            f"{' (' + tags[TAG_APPROVAL_COMMENT] + ')' if tags.get(TAG_APPROVAL_COMMENT) else ''}. Decisions are "
            f"final; {'nothing to do' if decision == STATUS_REJECTED else 'register a new version and approve that'}."
        )
    if status != STATUS_PENDING:
        raise UnmanagedVersionError(
            f"cannot {verb} version {v} of {name!r}: unknown approval status {status!r} (expected pending). "
            "Fix the tag in the MLflow UI or register a new version."
        )
    if decision == STATUS_APPROVED and tags.get(TAG_GATES_PASSED) != "true":
        failed = tags.get(TAG_GATES_FAILED, "?")
        raise GatesNotPassedError(
            f"cannot approve version {v} of {name!r}: its evaluation gates did not pass ({failed} must-pass "
            f"check(s) failed: {tags.get(TAG_GATES_SUMMARY, 'no gate summary recorded')}). Reject it, or fix the "
            "model, re-run evaluate/export and register a new version."
        )
    author = tags.get(TAG_AUTHOR, "")
    if _same_person(who, author):
        raise FourEyesError(
            f"{who} cannot {verb} version {v} of {name!r}: {who} registered it (author). Four-eyes rule: "
            "ask another reviewer"
            + (f" ({', '.join(r for r in cfg.registry.reviewers if not _same_person(r, author))})"
               if cfg.registry.reviewers else "") + "."
        )
    allowed = cfg.registry.reviewers
    if _same_person(who, TIMEOUT_REVIEWER) and decision == STATUS_APPROVED:
        raise ReviewerNotAllowedError(
            f"{TIMEOUT_REVIEWER!r} records timed-out approval requests and can only reject; "
            f"version {v} of {name!r} needs a named reviewer to approve it."
        )
    if allowed is not None and not _same_person(who, TIMEOUT_REVIEWER) and not any(_same_person(who, r) for r in allowed):
        raise ReviewerNotAllowedError(
            f"{who} cannot {verb} version {v} of {name!r}: not in registry.reviewers ({', '.join(allowed)}). "
            "Ask one of them, or add the name to registry.reviewers in params.yaml."
        )

    text = text[:MAX_COMMENT]
    event = new_event(name, v, decision, who, text, {"previous_status": status, "author": author}, existing=tags)
    writes = [
        (TAG_APPROVAL_REVIEWER, who),
        (TAG_APPROVAL_TIME, event.time),
        (TAG_APPROVAL_COMMENT, text),
        (event.key, event.to_json()),
        (TAG_APPROVAL_STATUS, decision),  # last: the commit point
    ]
    for key, value in writes:
        c.call(f"set {key} on version {v} of {name!r}",
               lambda k=key, val=value: c.mlflow.set_model_version_tag(name, v, k, val))
    return ApprovalResult(name, v, decision, who, event.time, text, author, event, c.uri)


def approve(
    name: str,
    version: str | int,
    reviewer: str,
    comment: str = "",
    *,
    params: Params | None = None,
    root: str | os.PathLike[str] | None = None,
    client: RegistryClient | None = None,
) -> ApprovalResult:
    """Approve a registered version (four-eyes, reviewer list, gates must have passed).

    Args:
        name: Registered model name.
        version: Version number.
        reviewer: Who approves (must not be the version's author).
        comment: Why (recorded on the version and in the audit log).
        params: Params (``registry.reviewers``, retries); default ``<root>/params.yaml``.
        root: Project root; default cwd.
        client: An existing :class:`RegistryClient`.

    Returns:
        The recorded decision.

    Raises:
        ApprovalError: a rule is broken (see the module docstring); nothing is written.

    Example:
        >>> from cvplatform import approve
        >>> approve("cvplatform", 3, reviewer="bob", comment="gates and report reviewed")  # doctest: +SKIP
    """
    return _decide(STATUS_APPROVED, name, version, reviewer, comment, params, root, client)


def reject(
    name: str,
    version: str | int,
    reviewer: str,
    comment: str,
    *,
    params: Params | None = None,
    root: str | os.PathLike[str] | None = None,
    client: RegistryClient | None = None,
) -> ApprovalResult:
    """Reject a registered version (four-eyes and reviewer list apply; a reason is required).

    Raises:
        ApprovalError: a rule is broken or no reason was given; nothing is written.

    Example:
        >>> from cvplatform import reject
        >>> reject("cvplatform", 4, reviewer="bob", comment="fails on night images")  # doctest: +SKIP
    """
    return _decide(STATUS_REJECTED, name, version, reviewer, comment, params, root, client)


__all__ = ["ApprovalResult", "approve", "check_managed", "reject", "resolve_params"]
