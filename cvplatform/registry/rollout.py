"""What a canary rollback leaves in the registry: :func:`mark_rolled_back`.

The canary controller (:mod:`cvplatform.deploy.canary`) calls it after it rolled a
version back on the server. Through the registry's existing primitives only (one
audit event via :func:`~cvplatform.registry.audit.record_event`, version tags, alias
deletion) it makes the version's state say what happened:

* the audit history gets a ``canary_rolled_back`` event (reasons, failed checks,
  champion kept, server, MLflow run of the canary);
* ``deploy.status`` = ``rolled_back`` with ``deploy.rollback_reason`` and ``deploy.time``;
* the version loses the ``challenger`` alias (``registry.challenger_alias``) and the
  serving ``canary`` alias when they still point at it; ``champion`` is never touched;
* ``approval.status`` goes from ``approved`` (or ``pending``) to ``rolled_back``, written
  last as the commit point. The registry's promote rule (approved versions only) then
  refuses it, and another canary refuses it before any traffic; a ``rejected`` status is
  kept as it is.

Calling it again for the same version records nothing new (idempotent: a retried task
or a repeated rollback leaves one event).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cvplatform.registry.audit import AuditEvent, record_event, version_events
from cvplatform.registry.client import (
    STATUS_APPROVED,
    STATUS_PENDING,
    TAG_APPROVAL_STATUS,
    RegistryClient,
    current_user,
    utc_now,
)

if TYPE_CHECKING:  # pragma: no cover
    from cvplatform.config import Params

log = logging.getLogger(__name__)

#: ``approval.status`` of a version the canary rolled back (not promotable until decided again).
STATUS_ROLLED_BACK = "rolled_back"
#: Audit event action recorded by :func:`mark_rolled_back`.
ACTION_CANARY_ROLLED_BACK = "canary_rolled_back"
TAG_DEPLOY_STATUS = "deploy.status"
TAG_DEPLOY_REASON = "deploy.rollback_reason"
TAG_DEPLOY_TIME = "deploy.time"
_MAX_TAG = 5000


@dataclass
class RolledBackVersion:
    """What :func:`mark_rolled_back` recorded (or found already recorded)."""

    model: str
    version: str
    reason: str
    status_before: str
    status_after: str
    aliases_removed: list[str] = field(default_factory=list)
    event: AuditEvent | None = None
    """The new audit event; None when the rollback was already recorded."""
    tracking_uri: str = ""

    @property
    def recorded(self) -> bool:
        return self.event is not None

    def lines(self) -> list[str]:
        removed = ", ".join(self.aliases_removed) or "none"
        head = (f"registry: {self.model} v{self.version} marked rolled back (status {self.status_before} -> "
                f"{self.status_after}; aliases removed: {removed})")
        if not self.recorded:
            head = f"registry: {self.model} v{self.version} was already marked rolled back (status {self.status_after})"
        return [head, f"  reason: {self.reason}"]

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "version": self.version, "reason": self.reason,
                "status_before": self.status_before, "status_after": self.status_after,
                "aliases_removed": list(self.aliases_removed),
                "event": self.event.to_dict() if self.event else None, "tracking_uri": self.tracking_uri}


def _remove_aliases(c: RegistryClient, name: str, version: str, aliases: list[str]) -> list[str]:
    """Delete each alias of ``aliases`` that points at ``version``; return those deleted."""
    current = {a: str(v) for a, v in (c.model(name).aliases or {}).items()}
    removed = []
    for alias in aliases:
        if current.get(alias) == version:
            c.call(f"delete alias {alias!r} of {name!r} (v{version} was rolled back)",
                   lambda a=alias: c.mlflow.delete_registered_model_alias(name, a))
            removed.append(alias)
    return removed


def mark_rolled_back(
    name: str,
    version: str | int,
    reason: str,
    *,
    details: dict[str, Any] | None = None,
    actor: str | None = None,
    extra_aliases: tuple[str, ...] = ("canary",),
    params: Params | None = None,
    root: str | os.PathLike[str] | None = None,
    client: RegistryClient | None = None,
) -> RolledBackVersion:
    """Record in the registry that a canary of ``version`` was rolled back (see the module docstring).

    Args:
        name: Registered model name.
        version: The version the canary rolled back.
        reason: Why (the failed checks, one sentence each); kept in the event and ``deploy.rollback_reason``.
        details: Facts for the audit event (failed checks, champion kept, server, MLflow run id).
        actor: Who rolled it back (default ``$CVPLATFORM_USER`` or the OS user).
        extra_aliases: Aliases removed besides ``registry.challenger_alias`` when they point at the version.
        params: Params (alias names, retries); default ``<root>/params.yaml``.
        root: Project root; default cwd.
        client: An existing :class:`RegistryClient`.

    Returns:
        What was recorded.

    Raises:
        UnknownModelError / UnknownVersionError: no such model or version.
        RegistryUnavailableError: the registry cannot be reached.

    Example:
        >>> from cvplatform.registry import mark_rolled_back
        >>> mark_rolled_back("cvplatform", 4, "agreement: 71% where the champion is confident").lines()[0]
        ...  # doctest: +SKIP
        'registry: cvplatform v4 marked rolled back (status approved -> rolled_back; aliases removed: challenger)'
    """
    from cvplatform.registry.approvals import resolve_params

    cfg = resolve_params(params, root)
    c = client or RegistryClient.from_params(cfg, root)
    mv = c.version(name, version)
    v = str(mv.version)
    tags = dict(mv.tags or {})
    status = tags.get(TAG_APPROVAL_STATUS, STATUS_PENDING)
    text = (reason or "canary rolled back").strip()[:_MAX_TAG]
    aliases = [cfg.registry.challenger_alias, *[a for a in extra_aliases if a != cfg.registry.champion_alias]]
    already = (tags.get(TAG_DEPLOY_STATUS) == STATUS_ROLLED_BACK
               and any(e.action == ACTION_CANARY_ROLLED_BACK for e in version_events(mv)))
    if already:
        removed = _remove_aliases(c, name, v, aliases)
        return RolledBackVersion(name, v, tags.get(TAG_DEPLOY_REASON, text), status, status, removed, None, c.uri)
    new_status = STATUS_ROLLED_BACK if status in (STATUS_APPROVED, STATUS_PENDING) else status
    event = record_event(c, name, v, ACTION_CANARY_ROLLED_BACK, (actor or current_user()).strip(), text,
                         {**(details or {}), "previous_status": status},
                         status=new_status if new_status != status else None)  # signed: promote refuses it
    writes = [(TAG_DEPLOY_STATUS, STATUS_ROLLED_BACK), (TAG_DEPLOY_REASON, text), (TAG_DEPLOY_TIME, utc_now())]
    for key, value in writes:
        c.call(f"set {key} on version {v} of {name!r}",
               lambda k=key, val=value: c.mlflow.set_model_version_tag(name, v, k, val))
    removed = _remove_aliases(c, name, v, aliases)
    if new_status != status:  # last: the commit point
        c.call(f"set {TAG_APPROVAL_STATUS} on version {v} of {name!r}",
               lambda: c.mlflow.set_model_version_tag(name, v, TAG_APPROVAL_STATUS, new_status))
    log.info("registry: %s v%s marked rolled back (%s -> %s, aliases removed: %s)", name, v, status, new_status,
             removed)
    return RolledBackVersion(name, v, text, status, new_status, removed, event, c.uri)


__all__ = [
    "ACTION_CANARY_ROLLED_BACK",
    "STATUS_ROLLED_BACK",
    "TAG_DEPLOY_REASON",
    "TAG_DEPLOY_STATUS",
    "TAG_DEPLOY_TIME",
    "RolledBackVersion",
    "mark_rolled_back",
]
