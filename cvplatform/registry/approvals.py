"""Reviewer approval of registry versions: who decides, four-eyes, reviewer list, gates, compatibility.

Rules (each broken rule raises its own :class:`~cvplatform.registry.errors.ApprovalError`
subclass, exit code 3, before anything is written):

* the reviewer's identity can be established (:mod:`cvplatform.registry.identity`): on a
  tracking server the authenticated user (a ``--reviewer`` naming someone else is
  refused), from Airflow the UI user who answered, on the embedded local store a
  self-declared name (``IdentityError`` / ``InvalidReviewerError``: empty or mixed-script);
* the version exists, was registered by cvplatform, completely, and its signed audit
  trail is intact (``UnmanagedVersionError`` / ``AuditIntegrityError``);
* a decision is final, judged on the *signed* history, never on the ``approval.status``
  tag (``AlreadyApprovedError`` / ``AlreadyRejectedError``);
* a version whose must-pass gates failed (as signed at registration) cannot be approved
  (``GatesNotPassedError``); it can be rejected;
* the reviewer is neither the version's author nor the user who triggered the run that
  registered it, compared after Unicode normalisation and look-alike folding (``FourEyesError``);
* when ``registry.reviewers`` lists names, the reviewer is one of them (``ReviewerNotAllowedError``);
* a version whose task, class list or input contract differs from the champion's is
  approved only with ``confirm_incompatible=True`` (``--confirm-incompatible``); the
  differences and the champion they were confirmed against go into the signed approval
  event (``IncompatibleVersionError``).

A decision writes ``approval.reviewer``, ``approval.time`` (UTC ISO), ``approval.comment``,
then one signed audit event (:mod:`cvplatform.registry.audit`) and the ``audit.head`` tag,
and last ``approval.status`` (a display copy of the signed status).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from cvplatform.registry.audit import (
    MAX_COMMENT,
    AuditEvent,
    TrailCheck,
    event_tags,
    new_event,
    verified_status,
)
from cvplatform.registry.client import (
    STATE_COMPLETE,
    STATUS_APPROVED,
    STATUS_PENDING,
    STATUS_REJECTED,
    TAG_APPROVAL_REVIEWER,
    TAG_APPROVAL_STATUS,
    TAG_APPROVAL_TIME,
    TAG_AUTHOR,
    TAG_GATES_FAILED,
    TAG_GATES_PASSED,
    TAG_GATES_SUMMARY,
    TAG_REGISTRATION_STATE,
    TAG_TRIGGERED_BY,
    RegistryClient,
)
from cvplatform.registry.compat import ModelFacts, differences
from cvplatform.registry.errors import (
    AlreadyApprovedError,
    AlreadyRejectedError,
    ApprovalError,
    AuditIntegrityError,
    FourEyesError,
    GatesNotPassedError,
    IncompatibleVersionError,
    InvalidReviewerError,
    ReviewerNotAllowedError,
    UnmanagedVersionError,
)
from cvplatform.registry.identity import (
    Identity,
    check_name,
    normalize_name,
    resolve_actor,
    resolve_reviewer,
    same_person,
)
from cvplatform.registry.keys import load_key

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
    identity: Identity | None = None
    confirmed_changes: list[str] | None = None
    summary_path: None = None

    def lines(self) -> list[str]:
        how = f"; identity {self.identity.source}" if self.identity else ""
        out = [f"{self.model} v{self.version}: {self.status} by {self.reviewer} at {self.time} "
               f"(author {self.author}{how}; {self.tracking_uri})"]
        if self.comment:
            out.append(f"  comment: {self.comment}")
        for d in self.confirmed_changes or []:
            out.append(f"  confirmed change vs the champion: {d}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "version": self.version, "status": self.status, "reviewer": self.reviewer,
                "time": self.time, "comment": self.comment, "author": self.author, "event": self.event.to_dict(),
                "tracking_uri": self.tracking_uri, "identity": self.identity.to_dict() if self.identity else None,
                "confirmed_changes": self.confirmed_changes}


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


def require_intact(trail: TrailCheck, what: str, *, tags_too: bool = False) -> None:
    """Raise :class:`AuditIntegrityError` when the signed chain (and with ``tags_too`` the tags) do not verify."""
    if trail.chain_ok and (trail.ok or not tags_too):
        return
    shown = "; ".join(trail.problems[:4]) + (f"; ... ({len(trail.problems) - 4} more)" if len(trail.problems) > 4
                                             else "")
    raise AuditIntegrityError(
        f"cannot {what} version {trail.version} of {trail.model!r}: its audit trail does not verify ({shown}). "
        f"Nothing was changed. Inspect it with `cvplatform registry verify {trail.model} {trail.version}` and "
        "docs/runbooks/rejected-approval.md; a tampered version cannot be trusted: register a new one."
    )


def signed_facts(trail: TrailCheck, tags: dict[str, str]) -> tuple[str, str | None, bool | None, ModelFacts]:
    """``(author, triggered_by, gates_passed, facts)`` from the signed registration, falling back to the tags."""
    reg = trail.registration
    d = reg.details if reg is not None else {}
    author = reg.actor if reg is not None else tags.get(TAG_AUTHOR, "")
    trig = d.get("triggered_by") if reg is not None else tags.get(TAG_TRIGGERED_BY)
    gp = d.get("gates_passed")
    gates = (str(gp).lower() == "true") if gp is not None else (tags.get(TAG_GATES_PASSED) == "true" if
                                                                  TAG_GATES_PASSED in tags else None)
    facts = ModelFacts(d["facts"]["task"], tuple(d["facts"]["class_names"]), dict(d["facts"]["contract"])) \
        if isinstance(d.get("facts"), dict) else ModelFacts.from_tags(tags)
    return author, (str(trig) if trig else None), gates, facts


def champion_facts(c: RegistryClient, name: str, alias: str) -> tuple[str, ModelFacts] | None:
    """``(version, facts)`` of the champion (signed registration facts when its trail verifies), or None."""
    from cvplatform.registry.audit import check_trail

    champ = c.version_by_alias(name, alias)
    if champ is None:
        return None
    tags = dict(champ.tags or {})
    trail = check_trail(champ, load_key(c.uri), c.uri)
    return str(champ.version), signed_facts(trail, tags)[3] if trail.chain_ok else ModelFacts.from_tags(tags)


def _identity(c: RegistryClient, cfg: Params, decision: Decision, reviewer: str | None, airflow_user: str | None,
              verb: str) -> Identity:
    if airflow_user is None and reviewer is not None and same_person(reviewer, TIMEOUT_REVIEWER):
        if decision == STATUS_APPROVED:
            raise ReviewerNotAllowedError(
                f"{TIMEOUT_REVIEWER!r} records timed-out approval requests and can only reject; a named reviewer "
                "must approve."
            )
        actor, ident = resolve_actor(c)
        return Identity(TIMEOUT_REVIEWER, ident["source"], ident["verified"], actor,
                        "no reviewer answered before the approval timeout")
    return resolve_reviewer(c, reviewer, airflow_user=airflow_user, trusted_services=cfg.registry.trusted_services,
                            verb=verb)


def _already(trail: TrailCheck, decision: Decision, tags: dict[str, str], c: RegistryClient) -> None:
    """Refuse a second decision (the signed status decides); repair a display tag left behind by an interrupted one."""
    status, name, v = trail.status, trail.model, trail.version
    verb = "approve" if decision == STATUS_APPROVED else "reject"
    if status == STATUS_PENDING:
        return
    last = trail.last(status) or (trail.events[-1] if trail.events else None)
    by = last.actor if last else "?"
    at = last.time if last else "?"
    if status == decision and tags.get(TAG_APPROVAL_STATUS) != status:  # repair the display copy
        c.call(f"repair {TAG_APPROVAL_STATUS} of version {v}",
               lambda: c.mlflow.set_model_version_tag(name, v, TAG_APPROVAL_STATUS, status))
    if status == STATUS_APPROVED:
        raise AlreadyApprovedError(
            f"cannot {verb} version {v} of {name!r}: it was already approved by {by} at {at}. Decisions are "
            f"final; {'nothing to do' if decision == STATUS_APPROVED else 'to stop it, promote another version or roll back'}."
        )
    if status == STATUS_REJECTED:
        why = f" ({last.comment})" if last and last.comment else ""
        raise AlreadyRejectedError(
            f"cannot {verb} version {v} of {name!r}: it was already rejected by {by} at {at}{why}. Decisions are "
            f"final; {'nothing to do' if decision == STATUS_REJECTED else 'register a new version and approve that'}."
        )
    raise ApprovalError(
        f"cannot {verb} version {v} of {name!r}: its signed status is {status!r} (set by {by} at {at}), not pending. "
        "Register a new version for a new decision."
    )


def _four_eyes(who: Identity, author: str, triggered_by: str | None, cfg: Params, name: str, v: str,
               verb: str) -> None:
    for role, person in (("registered it (author)", author), ("triggered the run that registered it", triggered_by)):
        if person and same_person(who.name, person):
            others = [r for r in cfg.registry.reviewers or () if not same_person(r, author)
                      and not same_person(r, triggered_by)]
            raise FourEyesError(
                f"{who.name} cannot {verb} version {v} of {name!r}: {who.name} {role}"
                + ("" if normalize_name(who.name) == normalize_name(person) else f" as {person!r}")
                + ". Four-eyes rule: ask another reviewer" + (f" ({', '.join(others)})" if others else "") + "."
            )
    allowed = cfg.registry.reviewers
    if allowed is not None and who.name != TIMEOUT_REVIEWER and \
            not any(normalize_name(who.name) == normalize_name(r) for r in allowed):
        raise ReviewerNotAllowedError(
            f"{who.name} cannot {verb} version {v} of {name!r}: not in registry.reviewers ({', '.join(allowed)}). "
            "Ask one of them, or add the name to registry.reviewers in params.yaml."
        )


def _compatibility(c: RegistryClient, cfg: Params, name: str, v: str, facts: ModelFacts,
                   confirm: bool) -> dict[str, Any] | None:
    champ = champion_facts(c, name, cfg.registry.champion_alias)
    if champ is None or champ[0] == v:
        return None
    diffs = differences(facts, champ[1])
    if not diffs:
        return None
    if not confirm:
        raise IncompatibleVersionError(
            f"cannot approve version {v} of {name!r} as it is: it is not a drop-in replacement for the champion "
            f"(v{champ[0]}): " + "; ".join(diffs) + ". Every client of the service would see different outputs or "
            "inputs. If that is intended and the clients are ready, approve again with --confirm-incompatible "
            "(Python: confirm_incompatible=True); the confirmation is recorded."
        )
    return {"champion_version": champ[0], "champion_facts": champ[1].fingerprint(), "differences": diffs}


def _decide(
    decision: Decision, name: str, version: str | int, reviewer: str | None, comment: str,
    params: Params | None, root: str | os.PathLike[str] | None, client: RegistryClient | None,
    *, airflow_user: str | None = None, confirm_incompatible: bool = False,
) -> ApprovalResult:
    verb = "approve" if decision == STATUS_APPROVED else "reject"
    text = (comment or "").strip()
    if decision == STATUS_REJECTED and not text:
        raise InvalidReviewerError(
            f"cannot reject version {version} of {name!r} without a reason: pass --comment TEXT saying why."
        )
    if reviewer is not None and reviewer.strip():
        check_name(reviewer)
    cfg = resolve_params(params, root)
    c = client or RegistryClient.from_params(cfg, root)
    who = _identity(c, cfg, decision, reviewer, airflow_user, verb)
    mv = c.version(name, version)
    v = str(mv.version)
    tags = check_managed(mv, verb)
    trail = verified_status(c, mv)
    require_intact(trail, verb)
    _already(trail, decision, tags, c)
    author, triggered_by, gates_passed, facts = signed_facts(trail, tags)
    if decision == STATUS_APPROVED and gates_passed is not True:
        raise GatesNotPassedError(
            f"cannot approve version {v} of {name!r}: its evaluation gates did not pass "
            f"({tags.get(TAG_GATES_FAILED, '?')} must-pass check(s) failed: "
            f"{tags.get(TAG_GATES_SUMMARY, 'no gate summary recorded')}). Reject it, or fix the model, re-run "
            "export/evaluate and register a new version. See docs/runbooks/failed-gate.md."
        )
    _four_eyes(who, author, triggered_by, cfg, name, v, verb)
    confirmation = _compatibility(c, cfg, name, v, facts, confirm_incompatible) \
        if decision == STATUS_APPROVED else None

    text = text[:MAX_COMMENT]
    details: dict[str, Any] = {"previous_status": trail.status, "author": author}
    if confirmation:
        details["confirmed_incompatible"] = confirmation
    event = new_event(name, v, decision, who.name, text, details, existing=tags, key=load_key(c.uri, create=True),
                      identity=who.to_dict())
    writes = [(TAG_APPROVAL_REVIEWER, who.name), (TAG_APPROVAL_TIME, event.time), ("approval.comment", text),
              *event_tags(event), (TAG_APPROVAL_STATUS, decision)]  # status last: a display copy of the signed one
    for key, value in writes:
        c.call(f"set {key} on version {v} of {name!r}",
               lambda k=key, val=value: c.mlflow.set_model_version_tag(name, v, k, val))
    return ApprovalResult(name, v, decision, who.name, event.time, text, author, event, c.uri, who,
                          confirmation["differences"] if confirmation else None)


def approve(
    name: str,
    version: str | int,
    reviewer: str | None = None,
    comment: str = "",
    *,
    params: Params | None = None,
    root: str | os.PathLike[str] | None = None,
    client: RegistryClient | None = None,
    airflow_user: str | None = None,
    confirm_incompatible: bool = False,
) -> ApprovalResult:
    """Approve a registered version (identity, four-eyes, reviewer list, gates, compatibility; see the module).

    Args:
        name: Registered model name.
        version: Version number.
        reviewer: Who approves: required on the embedded store (self-declared); on a tracking
            server optional and, when given, must be the authenticated user.
        comment: Why (recorded on the version and in the audit log).
        params: Params (``registry.reviewers``, ``trusted_services``, retries); default ``<root>/params.yaml``.
        root: Project root; default cwd.
        client: An existing :class:`RegistryClient`.
        airflow_user: The Airflow UI user who answered the approval task (the DAG passes it).
        confirm_incompatible: The reviewer confirms that the version's task / classes / input
            contract may differ from the champion's (recorded in the signed event).

    Returns:
        The recorded decision.

    Raises:
        ApprovalError: a rule is broken (see the module docstring); nothing is written.

    Example:
        >>> from cvplatform import approve
        >>> approve("cvplatform", 3, reviewer="bob", comment="gates and report reviewed")  # doctest: +SKIP
    """
    return _decide(STATUS_APPROVED, name, version, reviewer, comment, params, root, client,
                   airflow_user=airflow_user, confirm_incompatible=confirm_incompatible)


def reject(
    name: str,
    version: str | int,
    reviewer: str | None,
    comment: str,
    *,
    params: Params | None = None,
    root: str | os.PathLike[str] | None = None,
    client: RegistryClient | None = None,
    airflow_user: str | None = None,
) -> ApprovalResult:
    """Reject a registered version (four-eyes and reviewer list apply; a reason is required).

    Raises:
        ApprovalError: a rule is broken or no reason was given; nothing is written.

    Example:
        >>> from cvplatform import reject
        >>> reject("cvplatform", 4, reviewer="bob", comment="fails on night images")  # doctest: +SKIP
    """
    return _decide(STATUS_REJECTED, name, version, reviewer, comment, params, root, client,
                   airflow_user=airflow_user)


__all__ = ["TIMEOUT_REVIEWER", "ApprovalResult", "approve", "champion_facts", "check_managed", "reject",
           "require_intact", "resolve_params", "signed_facts"]
