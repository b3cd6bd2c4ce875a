"""The append-only audit log of the registry, kept on the model versions themselves.

Every decision (registered, approved, rejected, promoted, rolled back) is one
**new model-version tag** ``audit.<NNNN>.<id>`` whose value is a JSON
:class:`AuditEvent`. ``NNNN`` is one more than the highest sequence number already
on the version (ordered), ``<id>`` is random (unique): two writers racing for the
same number still write two different keys, so an event is never overwritten.
Only the MLflow API is used, so the log lives wherever the registry lives (SQLite
file, PostgreSQL behind a tracking server) with no extra storage; see
``docs/adr/0003-registry-approvals-and-audit.md``.

:func:`history` gathers the events of every version of a model, oldest first;
:func:`show` summarises the versions (aliases, approval, gates).
"""

from __future__ import annotations

import json
import os
import re
import uuid
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from cvplatform.registry.client import (
    STATUS_PENDING,
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
    TAG_REGISTRATION_STATE,
    TAG_SHA256,
    TAG_TRAIN_RUN,
    RegistryClient,
    utc_now,
)

if TYPE_CHECKING:  # pragma: no cover
    from mlflow.entities.model_registry import ModelVersion

    from cvplatform.config import Params

AUDIT_PREFIX = "audit."
_KEY = re.compile(r"^audit\.(\d+)\.([0-9a-f]+)$")
#: Longest comment kept in an event / approval tag (MLflow allows 100,000 characters per tag value).
MAX_COMMENT = 5000


@dataclass(frozen=True)
class AuditEvent:
    """One registry decision.

    Attributes:
        model: Registered model name.
        version: Model version the event is recorded on.
        action: ``registered`` | ``approved`` | ``rejected`` | ``promoted`` | ``rolled_back``.
        actor: Who did it.
        time: UTC ISO 8601 time.
        comment: Free text (reviewer comment, reason).
        details: Action-specific facts (e.g. ``{"previous": "2"}`` for a promotion).
        seq: Sequence number on the version (1, 2, ...).
        key: The tag key holding the event.

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

    def to_json(self) -> str:
        """The tag value (model, version, ``seq`` and ``key`` are implied by where the tag is)."""
        d = asdict(self)
        for implied in ("seq", "key", "model", "version"):  # implied by the tag's key and the version it is on
            d.pop(implied)
        return json.dumps(d, sort_keys=True)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        """One line for terminals."""
        extra = ", ".join(f"{k}={v}" for k, v in sorted(self.details.items()))
        text = f"{self.time}  {self.model} v{self.version}  {self.action:<12} by {self.actor}"
        if self.comment:
            text += f": {self.comment}"
        if extra:
            text += f" ({extra})"
        return text


def _parse(model: str, version: str, key: str, raw: str) -> AuditEvent | None:
    m = _KEY.match(key)
    if not m:
        return None
    try:
        d = json.loads(raw)
    except (TypeError, ValueError):
        d = {"action": "unreadable", "actor": "?", "time": "", "comment": raw[:200]}
    if not isinstance(d, dict):
        return None
    return AuditEvent(
        model=model, version=version, action=str(d.get("action", "?")),
        actor=str(d.get("actor", "?")), time=str(d.get("time", "")), comment=str(d.get("comment", "")),
        details=dict(d.get("details") or {}), seq=int(m.group(1)), key=key,
    )


def version_events(mv: ModelVersion) -> list[AuditEvent]:
    """The audit events on one model version, in order.

    Example:
        >>> events = version_events(client.version("cvplatform", 3))  # doctest: +SKIP
    """
    events = [e for k, v in (mv.tags or {}).items() if (e := _parse(mv.name, str(mv.version), k, v)) is not None]
    return sorted(events, key=lambda e: (e.seq, e.time, e.key))


def new_event(
    model: str, version: str | int, action: str, actor: str, comment: str = "",
    details: dict[str, Any] | None = None, *, existing: dict[str, str] | None = None,
) -> AuditEvent:
    """Build the next event for a version whose current tags are ``existing`` (key not yet written).

    Example:
        >>> new_event("m", 1, "registered", "alice", existing={}).key.startswith("audit.0001.")
        True
    """
    seqs = [int(m.group(1)) for k in (existing or {}) if (m := _KEY.match(k))]
    seq = max(seqs, default=0) + 1
    key = f"{AUDIT_PREFIX}{seq:04d}.{uuid.uuid4().hex[:12]}"
    return AuditEvent(model, str(version), action, actor, utc_now(), (comment or "")[:MAX_COMMENT],
                      dict(details or {}), seq, key)


def record_event(
    client: RegistryClient, model: str, version: str | int, action: str, actor: str, comment: str = "",
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append an event to a version's audit log (one new tag; nothing is overwritten).

    Example:
        >>> record_event(client, "cvplatform", 3, "approved", "bob", "looks good")  # doctest: +SKIP
    """
    mv = client.version(model, version)
    event = new_event(model, mv.version, action, actor, comment, details, existing=mv.tags)
    client.call(
        f"record {action} event on version {mv.version} of {model!r}",
        lambda: client.mlflow.set_model_version_tag(model, str(mv.version), event.key, event.to_json()),
    )
    return event


# --------------------------------------------------------------------------- read side
@dataclass
class HistoryResult:
    """All audit events of a model, oldest first (what ``cvplatform registry history`` prints)."""

    model: str
    tracking_uri: str
    events: list[AuditEvent]
    summary_path: None = None

    def lines(self) -> list[str]:
        out = [f"history of {self.model!r} ({self.tracking_uri}): {len(self.events)} event(s)"]
        out.extend(f"  {e.line()}" for e in self.events)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "tracking_uri": self.tracking_uri, "events": [e.to_dict() for e in self.events]}


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
    events = [e for mv in c.versions(name) for e in version_events(mv)]
    events.sort(key=lambda e: (e.time, int(e.version), e.seq))
    return HistoryResult(name, c.uri, events)


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

    def line(self) -> str:
        gates = {True: "passed", False: "FAILED", None: "unknown"}[self.gates_passed]
        if self.gates_failed_must_pass:
            gates += f" ({self.gates_failed_must_pass} must-pass failed)"
        acc = f"{self.accuracy:.4f}" if self.accuracy is not None else "n/a"
        f1 = f"{self.macro_f1:.4f}" if self.macro_f1 is not None else "n/a"
        approval = self.approval + (f" by {self.reviewer}" if self.reviewer else "")
        aliases = f" [{', '.join(self.aliases)}]" if self.aliases else ""
        state = "" if self.registration_state in (None, "complete") else f" (registration {self.registration_state})"
        return (f"v{self.version}{aliases}: approval {approval}; gates {gates}; acc {acc}, macro-F1 {f1}; "
                f"{self.precision or '?'}; author {self.author or '?'}{state}")


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
    versions = [summarize_version(mv, [a for a, v in aliases.items() if v == str(mv.version)])
                for mv in c.versions(name)]
    return ModelOverview(name, c.uri, aliases, versions, model.description)


__all__ = [
    "AUDIT_PREFIX",
    "AuditEvent",
    "HistoryResult",
    "ModelOverview",
    "VersionSummary",
    "history",
    "new_event",
    "record_event",
    "show",
    "summarize_version",
    "version_events",
]
