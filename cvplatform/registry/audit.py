"""The registry's audit trail: append-only, hash-chained and signed events on the model versions.

Every decision (registered, approved, rejected, promoted, rolled back, ...) is one
**new model-version tag** ``audit.<NNNN>.<id>`` whose value is a JSON
:class:`AuditEvent`. ``NNNN`` is one more than the highest sequence number already
on the version, ``<id>`` is random (two writers never overwrite each other's key).
Only the MLflow API is used, so the trail lives wherever the registry lives.

**Tamper evidence.** Each event carries ``prev`` (the ``mac`` of the event before it
on the same version; the first event starts from a genesis value bound to the model
name and the version's ``registration.id``) and ``mac``, an HMAC-SHA256 with the
platform key (:mod:`cvplatform.registry.keys`) over the event, its position (sequence
number and tag key), the registration id and ``prev``. The tag ``audit.head`` names
the newest event. :func:`verify_version` (``cvplatform registry verify NAME VERSION``)
recomputes the chain and reports an edited, reordered, inserted or deleted event,
a missing head, and status / artifact tags that disagree with the signed history.
Without the key nobody can write an event that verifies, so a tag edited by hand
(``approval.status = approved`` in the MLflow UI) never counts: promotion trusts only
the verified chain (:func:`verified_status`). See
``docs/adr/0007-audit-trail-integrity-and-identity.md``.

**Appending.** :func:`record_event` is the public way to add an event (the canary
controller, the serving admin API and the registry's own actions use it):
``record_event(client, model, version, action, actor, comment, details, status=...)``.
An event with ``status`` changes the version's approval status (e.g. ``rolled_back``),
and the ``approval.status`` tag (a display copy) follows it.

:func:`history` gathers the events of every version of a model, oldest first;
:func:`show` summarises the versions (aliases, approval, gates).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import uuid
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from cvplatform.registry.client import (
    STATUS_APPROVED,
    STATUS_PENDING,
    STATUS_REJECTED,
    TAG_ACCURACY,
    TAG_APPROVAL_COMMENT,
    TAG_APPROVAL_REVIEWER,
    TAG_APPROVAL_STATUS,
    TAG_APPROVAL_TIME,
    TAG_AUTHOR,
    TAG_GATES_FAILED,
    TAG_GATES_PASSED,
    TAG_GATES_SUMMARY,
    TAG_MACRO_F1,
    TAG_PRECISION,
    TAG_PREVIOUS_CHAMPION,
    TAG_REGISTRATION_ID,
    TAG_REGISTRATION_STATE,
    TAG_SHA256,
    TAG_TRAIN_RUN,
    RegistryClient,
    utc_now,
)
from cvplatform.registry.keys import AuditKey, AuditKeyError, load_key

if TYPE_CHECKING:  # pragma: no cover
    from mlflow.entities.model_registry import ModelVersion

    from cvplatform.config import Params

AUDIT_PREFIX = "audit."
#: The tag naming the newest event of a version: ``<seq>:<mac>``.
TAG_HEAD = "audit.head"
_KEY = re.compile(r"^audit\.(\d+)\.([0-9a-f]+)$")
#: Longest comment kept in an event / approval tag (MLflow allows 100,000 characters per tag value).
MAX_COMMENT = 5000
#: Version of the signed event format.
FORMAT = 2
#: Actions that decide the approval status; any other event may set it through ``details["status"]``.
DECISIONS = {"approved": STATUS_APPROVED, "rejected": STATUS_REJECTED}


@dataclass(frozen=True)
class AuditEvent:
    """One registry decision.

    Attributes:
        model: Registered model name.
        version: Model version the event is recorded on.
        action: ``registered`` | ``approved`` | ``rejected`` | ``promoted`` | ``rolled_back`` | ...
        actor: Who did it (:func:`cvplatform.registry.identity.display_name`).
        time: UTC ISO 8601 time.
        comment: Free text (reviewer comment, reason).
        details: Action-specific facts (e.g. ``{"previous": "2"}`` for a promotion).
        seq: Sequence number on the version (1, 2, ...).
        key: The tag key holding the event.
        identity: How the actor's identity was established (``source``: ``mlflow-auth`` |
            ``airflow`` | ``self-declared``, ``verified``, ...).
        prev: ``mac`` of the previous event (or the version's genesis value).
        mac: HMAC-SHA256 of the event with the platform key.
        kid: Id of the key that signed it (first 12 hex digits of its sha256).

    Example:
        >>> e = AuditEvent("cvplatform", "3", "approved", "bob", "2025-01-01T00:00:00+00:00", "ok")
        >>> e.line()
        '2025-01-01T00:00:00+00:00  cvplatform v3  approved     by bob: ok'
    """

    model: str
    version: str
    action: str
    actor: str
    time: str
    comment: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    seq: int = 0
    key: str = ""
    identity: dict[str, Any] = field(default_factory=dict)
    prev: str = ""
    mac: str = ""
    kid: str = ""

    @property
    def status(self) -> str | None:
        """The approval status this event sets, if any."""
        if self.action in DECISIONS:
            return DECISIONS[self.action]
        s = self.details.get("status") if isinstance(self.details, dict) else None
        return str(s) if s else None

    def to_json(self) -> str:
        """The tag value (model, version, ``seq`` and ``key`` are implied by where the tag is)."""
        d = {"action": self.action, "actor": self.actor, "time": self.time, "comment": self.comment,
             "details": self.details, "identity": self.identity, "prev": self.prev, "mac": self.mac,
             "kid": self.kid, "format": FORMAT}
        return json.dumps(d, sort_keys=True, ensure_ascii=False)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        """One line for terminals."""
        extra = ", ".join(f"{k}={v}" for k, v in sorted(self.details.items()) if not isinstance(v, dict | list))
        text = f"{self.time}  {self.model} v{self.version}  {self.action:<12} by {self.actor}"
        src = self.identity.get("source") if self.identity else None
        if src and src != "mlflow-auth":
            text += f" [{src}]"
        if self.comment:
            text += f": {self.comment}"
        if extra:
            text += f" ({extra})"
        return text


def signed_payload(event: AuditEvent, anchor: str) -> bytes:
    """The bytes the event's ``mac`` covers: everything about it, its position and its version's anchor."""
    body = {"anchor": anchor, "model": event.model, "seq": event.seq, "tag": event.key, "action": event.action,
            "actor": event.actor, "time": event.time, "comment": event.comment, "details": event.details,
            "identity": event.identity, "prev": event.prev, "kid": event.kid, "format": FORMAT}
    return json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def sign(event: AuditEvent, anchor: str, key: AuditKey) -> str:
    """HMAC-SHA256 (hex) of :func:`signed_payload` with the platform key."""
    return hmac.new(key.secret, signed_payload(event, anchor), hashlib.sha256).hexdigest()


def genesis(model: str, anchor: str) -> str:
    """The ``prev`` of a version's first event: bound to the model name and the registration id."""
    return hashlib.sha256(f"cvplatform-audit:{FORMAT}:{model}:{anchor}".encode()).hexdigest()


def _parse(model: str, version: str, key: str, raw: str) -> AuditEvent | None:
    m = _KEY.match(key)
    if not m:
        return None
    try:
        d = json.loads(raw)
    except (TypeError, ValueError):
        d = {"action": "unreadable", "actor": "?", "time": "", "comment": str(raw)[:200]}
    if not isinstance(d, dict):
        d = {"action": "unreadable", "actor": "?", "time": "", "comment": str(raw)[:200]}
    return AuditEvent(
        model=model, version=version, action=str(d.get("action", "?")),
        actor=str(d.get("actor", "?")), time=str(d.get("time", "")), comment=str(d.get("comment", "")),
        details=dict(d.get("details") or {}) if isinstance(d.get("details"), dict) else {},
        seq=int(m.group(1)), key=key,
        identity=dict(d.get("identity") or {}) if isinstance(d.get("identity"), dict) else {},
        prev=str(d.get("prev", "")), mac=str(d.get("mac", "")), kid=str(d.get("kid", "")),
    )


def version_events(mv: ModelVersion) -> list[AuditEvent]:
    """The audit events on one model version, in order (unverified: see :func:`verify_version`).

    Example:
        >>> events = version_events(client.version("cvplatform", 3))  # doctest: +SKIP
    """
    events = [e for k, v in (mv.tags or {}).items() if (e := _parse(mv.name, str(mv.version), k, v)) is not None]
    return sorted(events, key=lambda e: (e.seq, e.time, e.key))


def _tail(existing: dict[str, str] | None) -> tuple[int, str | None]:
    """Highest sequence number on the version and the ``mac`` of that event (None when unreadable)."""
    best, mac = 0, None
    for k, v in (existing or {}).items():
        m = _KEY.match(k)
        if m and int(m.group(1)) >= best:
            best = int(m.group(1))
            try:
                mac = str(json.loads(v).get("mac") or "") or None
            except (TypeError, ValueError, AttributeError):
                mac = None
    return best, mac


def new_event(
    model: str, version: str | int, action: str, actor: str, comment: str = "",
    details: dict[str, Any] | None = None, *, existing: dict[str, str] | None = None,
    key: AuditKey, identity: dict[str, Any] | None = None,
) -> AuditEvent:
    """Build and sign the next event for a version whose current tags are ``existing`` (key not yet written).

    ``existing`` must hold the version's ``registration.id`` (the chain's anchor); for the
    ``registered`` event, pass the tags the version is about to be created with.

    Example:
        >>> from cvplatform.registry.keys import AuditKey
        >>> k = AuditKey(b"k" * 32, "test", "test")
        >>> new_event("m", 1, "registered", "alice", existing={"registration.id": "r1"}, key=k).key[:11]
        'audit.0001.'
    """
    tags = dict(existing or {})
    anchor = str(tags.get(TAG_REGISTRATION_ID) or "")
    seq, last_mac = _tail(tags)
    prev = last_mac if seq and last_mac else genesis(model, anchor)
    tag = f"{AUDIT_PREFIX}{seq + 1:04d}.{uuid.uuid4().hex[:12]}"
    draft = AuditEvent(model, str(version), action, actor, utc_now(), (comment or "")[:MAX_COMMENT],
                       dict(details or {}), seq + 1, tag, dict(identity or {}), prev, "", key.kid)
    return AuditEvent(**{**asdict(draft), "mac": sign(draft, anchor, key)})


def head_value(event: AuditEvent) -> str:
    """The ``audit.head`` tag value naming ``event`` as the newest."""
    return f"{event.seq}:{event.mac}"


def event_tags(event: AuditEvent) -> list[tuple[str, str]]:
    """The tag writes that append ``event``: the event itself, then the head (in this order)."""
    return [(event.key, event.to_json()), (TAG_HEAD, head_value(event))]


def _set_tags(client: RegistryClient, model: str, version: str, writes: list[tuple[str, str]]) -> None:
    for k, val in writes:
        client.call(f"set {k} on version {version} of {model!r}",
                    lambda k=k, val=val: client.mlflow.set_model_version_tag(model, version, k, val))


def record_event(
    client: RegistryClient, model: str, version: str | int, action: str, actor: str, comment: str = "",
    details: dict[str, Any] | None = None, *, status: str | None = None, identity: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append a signed event to a version's audit trail (new tags only; nothing is overwritten).

    This is the stable public API for adding an event.

    Args:
        client: The registry client.
        model: Registered model name.
        version: The version the event is about.
        action: What happened (e.g. ``canary_rolled_back``).
        actor: Who did it (a user or a service name).
        comment: Free text.
        details: Facts (JSON-serialisable).
        status: A new approval status this event sets (e.g. ``rolled_back``): recorded in the
            signed event (``details["status"]``) and copied to the ``approval.status`` tag afterwards.
        identity: How ``actor`` was established (default: declared by the caller).

    Raises:
        AuditKeyError: no platform key is configured for this registry.

    Example:
        >>> record_event(client, "cvplatform", 3, "canary_rolled_back", "deploy", "p95 latency x1.8",
        ...              {"from_step": 2}, status="rolled_back")  # doctest: +SKIP
    """
    mv = client.version(model, version)
    key = load_key(client.uri, create=True)
    d = dict(details or {})
    if status:
        d["status"] = status
    event = new_event(model, mv.version, action, actor, comment, d, existing=dict(mv.tags or {}), key=key,
                      identity=identity or {"source": "declared", "verified": False})
    writes = event_tags(event)
    if status:
        writes.append((TAG_APPROVAL_STATUS, status))
    _set_tags(client, model, str(mv.version), writes)
    return event


# --------------------------------------------------------------------------- verification
@dataclass
class TrailCheck:
    """The verified audit trail of one version (what ``cvplatform registry verify`` prints).

    Attributes:
        ok: The chain verifies and the tags agree with it.
        status: The approval status according to the signed events (``pending`` when none decided).
        events: The events, in chain order.
        problems: What is wrong, one line each (empty when ``ok``).
    """

    model: str
    version: str
    tracking_uri: str
    ok: bool
    status: str
    events: list[AuditEvent]
    problems: list[str]
    key_source: str = ""
    chain_ok: bool = True
    """The signed chain itself verifies (``ok`` also needs the tags to agree with it)."""
    summary_path: None = None

    @property
    def registration(self) -> AuditEvent | None:
        """The signed ``registered`` event (first of the chain), or None."""
        return self.events[0] if self.events and self.events[0].action == "registered" else None

    def last(self, action: str) -> AuditEvent | None:
        """The newest event with ``action`` (e.g. the approval), or None."""
        found = [e for e in self.events if e.action == action]
        return found[-1] if found else None

    def lines(self) -> list[str]:
        verdict = "intact" if self.ok else f"BROKEN ({len(self.problems)} problem(s))"
        out = [f"{self.model} v{self.version}: audit trail {verdict}; {len(self.events)} event(s); signed status "
               f"{self.status} ({self.tracking_uri}; key {self.key_source or 'n/a'})"]
        out.extend(f"  {e.seq:>3}. {e.line()}" for e in self.events)
        out.extend(f"  PROBLEM: {p}" for p in self.problems)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "version": self.version, "tracking_uri": self.tracking_uri, "ok": self.ok,
                "status": self.status, "events": [e.to_dict() for e in self.events], "problems": self.problems,
                "key_source": self.key_source}


def _chain_problems(model: str, anchor: str, events: list[AuditEvent], key: AuditKey) -> list[str]:
    problems: list[str] = []
    seqs = [e.seq for e in events]
    for s in sorted({s for s in seqs if seqs.count(s) > 1}):
        problems.append(f"two events claim position #{s} (an inserted event, or two concurrent writers)")
    expected = set(range(1, max(seqs, default=0) + 1))
    for s in sorted(expected - set(seqs)):
        problems.append(f"event #{s} is missing: it was deleted")
    prev = genesis(model, anchor)
    for e in events:
        who = f"event #{e.seq} ({e.action} by {e.actor}, {e.key})"
        if not e.mac:
            problems.append(f"{who} is not signed: it was not written by the registry (or predates signing)")
        elif e.kid and e.kid != key.kid:
            problems.append(f"{who} was signed with another platform key (id {e.kid}, the configured key is "
                            f"{key.kid}): the key was changed or the event was copied from another registry")
        elif not hmac.compare_digest(e.mac, sign(e, anchor, key)):
            problems.append(f"{who} was edited after it was written: its signature does not match")
        if e.prev != prev:
            problems.append(f"{who} does not follow the event before it (reordered, replaced or moved)")
        prev = e.mac
    if events and events[0].action != "registered":
        problems.append(f"the first event is {events[0].action!r}, not 'registered'")
    return problems


def _tag_problems(tags: dict[str, str], events: list[AuditEvent], status: str) -> list[str]:
    problems: list[str] = []
    head = tags.get(TAG_HEAD)
    if events:
        last = events[-1]
        if head is None:
            problems.append(f"the {TAG_HEAD} tag is missing (deleted): the newest events cannot be vouched for")
        elif head != head_value(last):
            seq = head.split(":", 1)[0]
            problems.append(f"{TAG_HEAD} names event #{seq}, but the newest event is #{last.seq}: events after "
                            f"#{last.seq} were deleted, or the head was edited")
    reg = events[0] if events and events[0].action == "registered" else None
    if reg is not None:
        for tag, detail in ((TAG_SHA256, "sha256"), (TAG_GATES_PASSED, "gates_passed")):
            signed = reg.details.get(detail)
            if signed is not None and tags.get(tag) != str(signed):
                problems.append(f"tag {tag} is {tags.get(tag)!r} but the signed registration recorded {signed!r}: "
                                "the tag was edited")
    shown = tags.get(TAG_APPROVAL_STATUS)
    if shown is not None and shown != status:
        problems.append(f"tag {TAG_APPROVAL_STATUS} is {shown!r} but the signed history says {status!r}: the tag "
                        "was edited by hand (it does not count), or a decision was interrupted before the tag was "
                        "updated (repeat the decision to repair it)")
    return problems


def status_of(events: list[AuditEvent]) -> str:
    """The approval status the events set, in order (``pending`` when none decided).

    Example:
        >>> status_of([AuditEvent("m", "1", "registered", "a", "t"), AuditEvent("m", "1", "approved", "b", "t")])
        'approved'
    """
    status = STATUS_PENDING
    for e in events:
        status = e.status or status
    return status


def check_trail(mv: ModelVersion, key: AuditKey, tracking_uri: str = "") -> TrailCheck:
    """Verify the audit trail of a fetched model version with ``key`` (pure: no I/O).

    Example:
        >>> check_trail(client.version("cvplatform", 3), load_key(client.uri)).ok  # doctest: +SKIP
        True
    """
    tags = dict(mv.tags or {})
    name, version = str(mv.name), str(mv.version)
    problems: list[str] = []
    anchor = tags.get(TAG_REGISTRATION_ID)
    if not anchor:
        problems.append(f"version {version} has no {TAG_REGISTRATION_ID!r} tag: it was not registered by cvplatform "
                        "(or the tag was deleted), so its history cannot be verified")
        anchor = ""
    for k in tags:
        if k.startswith(AUDIT_PREFIX) and k != TAG_HEAD and not _KEY.match(k):
            problems.append(f"unexpected tag {k!r} in the audit namespace")
    events = sorted((e for k, v in tags.items() if (e := _parse(name, version, k, v)) is not None),
                    key=lambda e: (e.seq, e.key))
    problems += _chain_problems(name, anchor, events, key)
    chain_ok = not problems
    status = status_of(events) if chain_ok else status_of(
        [e for e in events if e.mac and hmac.compare_digest(e.mac, sign(e, anchor, key))])
    problems += _tag_problems(tags, events, status)
    return TrailCheck(name, version, tracking_uri, not problems, status, events, problems, key.source, chain_ok)


def verify_version(
    name: str, version: str | int, *, params: Params | None = None, root: str | os.PathLike[str] | None = None,
    client: RegistryClient | None = None,
) -> TrailCheck:
    """Verify one version's audit trail (``cvplatform registry verify NAME VERSION``).

    Raises:
        UnknownModelError / UnknownVersionError: no such model or version.
        AuditKeyError: no platform key is configured (exit code 2).

    Example:
        >>> from cvplatform.registry import verify_version
        >>> verify_version("cvplatform", 3).ok  # doctest: +SKIP
        True
    """
    c = _client(params, root, client)
    mv = c.version(name, version)
    return check_trail(mv, load_key(c.uri), c.uri)


def verified_status(client: RegistryClient, mv: ModelVersion) -> TrailCheck:
    """:func:`check_trail` with the registry's key: what promotion trusts (never the ``approval.status`` tag)."""
    return check_trail(mv, load_key(client.uri), client.uri)


# --------------------------------------------------------------------------- read side
@dataclass
class HistoryResult:
    """All audit events of a model, oldest first (what ``cvplatform registry history`` prints).

    ``integrity`` maps each version to ``intact``, ``BROKEN: <first problem>`` or
    ``unverified: <why>`` (no platform key in this process).
    """

    model: str
    tracking_uri: str
    events: list[AuditEvent]
    integrity: dict[str, str] = field(default_factory=dict)
    summary_path: None = None

    def lines(self) -> list[str]:
        out = [f"history of {self.model!r} ({self.tracking_uri}): {len(self.events)} event(s)"]
        out.extend(f"  {e.line()}" for e in self.events)
        if self.integrity:
            out.append("  integrity: " + "; ".join(f"v{v} {state}" for v, state in self.integrity.items()))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "tracking_uri": self.tracking_uri, "events": [e.to_dict() for e in self.events],
                "integrity": self.integrity}


def _integrity(c: RegistryClient, versions: list[ModelVersion]) -> dict[str, str]:
    """Per version: ``intact`` / ``BROKEN: ...`` / ``unverified: ...`` (never raises for a missing key)."""
    try:
        key = load_key(c.uri)
    except AuditKeyError as exc:
        return {str(mv.version): f"unverified: {str(exc).split(':')[0]} (no platform key)" for mv in versions}
    out = {}
    for mv in versions:
        check = check_trail(mv, key, c.uri)
        out[str(mv.version)] = "intact" if check.ok else f"BROKEN: {check.problems[0]} (registry verify)"
    return out


def _client(params: Params | None, root: str | os.PathLike[str] | None, client: RegistryClient | None,
            tracking_uri: str | None = None) -> RegistryClient:
    if client is not None:
        return client
    return RegistryClient.from_params(params, root, tracking_uri=tracking_uri)


def history(
    name: str, *, params: Params | None = None, root: str | os.PathLike[str] | None = None,
    client: RegistryClient | None = None,
) -> HistoryResult:
    """Every audit event of every version of ``name``, in chronological order.

    Raises:
        UnknownModelError: no such registered model.
        RegistryUnavailableError: the tracking server cannot be reached.

    Example:
        >>> from cvplatform.registry import history
        >>> for e in history("cvplatform").events:  # doctest: +SKIP
        ...     print(e.line())
    """
    c = _client(params, root, client)
    c.model(name)
    versions = c.versions(name)
    events = [e for mv in versions for e in version_events(mv)]
    events.sort(key=lambda e: (e.time, int(e.version), e.seq))
    return HistoryResult(name, c.uri, events, _integrity(c, versions))


@dataclass(frozen=True)
class VersionSummary:
    """One row of :func:`show`."""

    version: str
    aliases: list[str]
    approval: str
    reviewer: str | None
    approval_time: str | None
    approval_comment: str | None
    author: str | None
    gates_passed: bool | None
    gates_failed_must_pass: int | None
    gates_summary: str | None
    accuracy: float | None
    macro_f1: float | None
    precision: str | None
    sha256: str | None
    train_run_id: str | None
    previous_champion: str | None
    registration_state: str | None
    created: str | None
    trail: str | None = None
    """``intact`` / ``BROKEN: ...`` / ``unverified: ...`` (see :func:`verify_version`)."""

    def line(self) -> str:
        gates = {True: "passed", False: "FAILED", None: "unknown"}[self.gates_passed]
        if self.gates_failed_must_pass:
            gates += f" ({self.gates_failed_must_pass} must-pass failed)"
        acc = f"{self.accuracy:.4f}" if self.accuracy is not None else "n/a"
        f1 = f"{self.macro_f1:.4f}" if self.macro_f1 is not None else "n/a"
        approval = self.approval + (f" by {self.reviewer}" if self.reviewer else "")
        aliases = f" [{', '.join(self.aliases)}]" if self.aliases else ""
        state = "" if self.registration_state in (None, "complete") else f" (registration {self.registration_state})"
        trail = "" if self.trail in (None, "intact") else f"; audit trail {self.trail}"
        return (f"v{self.version}{aliases}: approval {approval}; gates {gates}; acc {acc}, macro-F1 {f1}; "
                f"{self.precision or '?'}; author {self.author or '?'}{state}{trail}")


@dataclass
class ModelOverview:
    """What ``cvplatform registry show`` prints: versions, aliases, approvals and gate results."""

    model: str
    tracking_uri: str
    aliases: dict[str, str]
    versions: list[VersionSummary]
    description: str | None = None
    summary_path: None = None

    def lines(self) -> list[str]:
        shown = ", ".join(f"{a} -> v{v}" for a, v in sorted(self.aliases.items())) or "none"
        out = [f"model {self.model!r} ({self.tracking_uri}): {len(self.versions)} version(s); aliases: {shown}"]
        for v in self.versions:
            out.append(f"  {v.line()}")
            if v.gates_summary and v.gates_passed is False:
                out.append(f"      gates: {v.gates_summary}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "tracking_uri": self.tracking_uri, "aliases": self.aliases,
                "versions": [asdict(v) for v in self.versions]}


def _float(v: str | None) -> float | None:
    try:
        return float(v) if v not in (None, "") else None
    except ValueError:
        return None


def _int(v: str | None) -> int | None:
    try:
        return int(v) if v not in (None, "") else None
    except ValueError:
        return None


def summarize_version(mv: ModelVersion, aliases: list[str] | None = None) -> VersionSummary:
    """The registry facts of one version, read from its tags and ``aliases`` (default: ``mv.aliases``).

    Search results carry no aliases in MLflow, so :func:`show` passes them from the registered model.
    """
    from datetime import UTC, datetime

    t = mv.tags or {}
    gp = t.get(TAG_GATES_PASSED)
    created = None
    if getattr(mv, "creation_timestamp", None):
        created = datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC).isoformat(timespec="seconds")
    return VersionSummary(
        version=str(mv.version), aliases=sorted(mv.aliases or [] if aliases is None else aliases),
        approval=t.get(TAG_APPROVAL_STATUS, "unmanaged" if TAG_AUTHOR not in t else STATUS_PENDING),
        reviewer=t.get(TAG_APPROVAL_REVIEWER), approval_time=t.get(TAG_APPROVAL_TIME),
        approval_comment=t.get(TAG_APPROVAL_COMMENT), author=t.get(TAG_AUTHOR),
        gates_passed=None if gp is None else gp == "true", gates_failed_must_pass=_int(t.get(TAG_GATES_FAILED)),
        gates_summary=t.get(TAG_GATES_SUMMARY), accuracy=_float(t.get(TAG_ACCURACY)),
        macro_f1=_float(t.get(TAG_MACRO_F1)), precision=t.get(TAG_PRECISION), sha256=t.get(TAG_SHA256),
        train_run_id=t.get(TAG_TRAIN_RUN), previous_champion=t.get(TAG_PREVIOUS_CHAMPION),
        registration_state=t.get(TAG_REGISTRATION_STATE), created=created,
    )


def show(
    name: str, *, params: Params | None = None, root: str | os.PathLike[str] | None = None,
    client: RegistryClient | None = None,
) -> ModelOverview:
    """Versions of ``name`` with their aliases, approval state and gate results.

    Raises:
        UnknownModelError: no such registered model.
        RegistryUnavailableError: the tracking server cannot be reached.

    Example:
        >>> from cvplatform.registry import show
        >>> print("\\n".join(show("cvplatform").lines()))  # doctest: +SKIP
    """
    c = _client(params, root, client)
    model = c.model(name)
    aliases = {a: str(v) for a, v in (model.aliases or {}).items()}
    found = c.versions(name)
    integrity = _integrity(c, found)
    versions = [replace(summarize_version(mv, [a for a, v in aliases.items() if v == str(mv.version)]),
                        trail=integrity.get(str(mv.version))) for mv in found]
    return ModelOverview(name, c.uri, aliases, versions, model.description)


__all__ = [
    "AUDIT_PREFIX",
    "TAG_HEAD",
    "AuditEvent",
    "HistoryResult",
    "ModelOverview",
    "TrailCheck",
    "VersionSummary",
    "check_trail",
    "event_tags",
    "history",
    "new_event",
    "record_event",
    "show",
    "status_of",
    "summarize_version",
    "verified_status",
    "verify_version",
    "version_events",
]
