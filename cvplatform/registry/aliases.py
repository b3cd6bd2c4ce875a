"""Promotion and rollback: moving the ``champion`` alias between approved versions.

* :func:`promote` points ``champion`` at an **approved** version: approved according to
  its *signed, verified* audit trail (:func:`cvplatform.registry.audit.verified_status`),
  never the ``approval.status`` tag, which anyone with write access could edit. A version
  whose task, class list or input contract differs from the current champion's is
  promoted only when its signed approval confirmed exactly that change
  (:mod:`cvplatform.registry.compat`). It first records
  the version that held ``champion`` before (tag ``champion.previous`` on the new
  champion, ``none`` if there was none) and an audit event ``promoted``, then moves
  the alias (the commit point). Promoting the current champion again changes nothing.
* :func:`rollback` moves ``champion`` back to the current champion's
  ``champion.previous`` (which must still exist and be approved), recording a
  ``rolled_back`` event on the restored version. Repeated rollbacks walk further
  back along the chain of promotions; the chain ends at a version promoted when
  there was no champion.

Aliases (not the deprecated MLflow stages) carry the state, so any MLflow client
(the serving image, evaluation's champion comparison) resolves
``models:/NAME@champion`` the same way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cvplatform.registry.approvals import (
    champion_facts,
    check_managed,
    require_intact,
    resolve_params,
    signed_facts,
)
from cvplatform.registry.audit import AuditEvent, TrailCheck, event_tags, new_event, verified_status
from cvplatform.registry.client import (
    STATUS_APPROVED,
    TAG_APPROVAL_STATUS,
    TAG_PREVIOUS_CHAMPION,
    RegistryClient,
)
from cvplatform.registry.compat import differences
from cvplatform.registry.errors import (
    IncompatibleVersionError,
    NoChampionError,
    NoPreviousChampionError,
    NotApprovedError,
    UnknownVersionError,
)
from cvplatform.registry.identity import resolve_actor
from cvplatform.registry.keys import load_key

if TYPE_CHECKING:  # pragma: no cover
    from cvplatform.config import Params

NONE = "none"


@dataclass
class PromotionResult:
    """Where the champion alias points now and where it pointed before."""

    model: str
    alias: str
    version: str
    previous: str | None
    action: str
    """``promoted`` | ``rolled_back`` | ``unchanged``."""
    actor: str
    event: AuditEvent | None
    tracking_uri: str
    summary_path: None = None

    @property
    def changed(self) -> bool:
        return self.action != "unchanged"

    def lines(self) -> list[str]:
        if not self.changed:
            return [f"{self.model}@{self.alias} is already v{self.version}; nothing changed ({self.tracking_uri})"]
        verb = "promoted to" if self.action == "promoted" else "rolled back to"
        before = f"v{self.previous}" if self.previous else "no champion"
        return [f"{self.model}@{self.alias} {verb} v{self.version} by {self.actor} (was {before}; {self.tracking_uri})"]

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "alias": self.alias, "version": self.version, "previous": self.previous,
                "action": self.action, "actor": self.actor, "tracking_uri": self.tracking_uri,
                "event": self.event.to_dict() if self.event else None}


def _write(c: RegistryClient, name: str, version: str, writes: list[tuple[str, str]]) -> None:
    for key, value in writes:
        c.call(f"set {key} on version {version} of {name!r}",
               lambda k=key, val=value: c.mlflow.set_model_version_tag(name, version, k, val))


def _move_alias(c: RegistryClient, name: str, alias: str, version: str) -> None:
    c.call(f"point {name}@{alias} at version {version}",
           lambda: c.mlflow.set_registered_model_alias(name, alias, version))


def _require_approved(trail: TrailCheck, tags: dict[str, str], name: str, alias: str) -> None:
    if trail.status == STATUS_APPROVED:
        return
    shown = tags.get(TAG_APPROVAL_STATUS)
    edited = (f" (its {TAG_APPROVAL_STATUS} tag says {shown!r}, but no approval was recorded through the registry's "
              "approve path: a tag set by hand does not count)") if shown == STATUS_APPROVED else ""
    raise NotApprovedError(
        f"cannot promote version {trail.version} of {name!r} to {alias!r}: its approval status is "
        f"{trail.status!r}, not 'approved'{edited}. A reviewer other than its author must approve it first: "
        f"`cvplatform registry approve {name} {trail.version} --comment TEXT` (on the embedded store also "
        "--reviewer NAME)."
    )


def _require_compatible(c: RegistryClient, trail: TrailCheck, tags: dict[str, str], name: str, alias: str) -> None:
    champ = champion_facts(c, name, alias)
    if champ is None or champ[0] == trail.version:
        return
    diffs = differences(signed_facts(trail, tags)[3], champ[1])
    if not diffs:
        return
    approval = trail.last("approved")
    conf = (approval.details.get("confirmed_incompatible") if approval is not None else None) or {}
    if conf.get("champion_facts") == champ[1].fingerprint():
        return
    why = ("its approval did not confirm this change" if not conf else
           f"its approval confirmed the change from v{conf.get('champion_version')}, whose contract differs from "
           f"the current champion v{champ[0]}")
    raise IncompatibleVersionError(
        f"cannot promote version {trail.version} of {name!r}: it is not a drop-in replacement for the champion "
        f"v{champ[0]} ({'; '.join(diffs)}) and {why}. Register the version again and approve it with "
        "--confirm-incompatible once every client of the service is ready for the change."
    )


def _promotable(c: RegistryClient, mv: Any, tags: dict[str, str], name: str, alias: str, *,
                compatibility: bool = True) -> TrailCheck:
    trail = verified_status(c, mv)
    require_intact(trail, "promote")
    _require_approved(trail, tags, name, alias)  # before the tag check: a hand-set status gets the clearer refusal
    require_intact(trail, "promote", tags_too=True)
    if compatibility:
        _require_compatible(c, trail, tags, name, alias)
    return trail


def check_promotable(
    name: str, version: str | int, *, params: Params | None = None, root: str | os.PathLike[str] | None = None,
    client: RegistryClient | None = None,
) -> TrailCheck:
    """Raise unless :func:`promote` would accept ``version`` now (verified approval, intact trail, compatible
    with the champion or confirmed); changes nothing. For callers that must refuse *before* acting, e.g. a
    canary rollout that would otherwise send traffic to a version that can never be promoted.

    Raises:
        NotApprovedError / AuditIntegrityError / IncompatibleVersionError / UnmanagedVersionError.

    Example:
        >>> check_promotable("cvplatform", 3).status  # doctest: +SKIP
        'approved'
    """
    cfg = resolve_params(params, root)
    c = client or RegistryClient.from_params(cfg, root)
    mv = c.version(name, version)
    return _promotable(c, mv, check_managed(mv, "promote"), name, cfg.registry.champion_alias)


def promote(
    name: str,
    version: str | int,
    *,
    comment: str = "",
    actor: str | None = None,
    params: Params | None = None,
    root: str | os.PathLike[str] | None = None,
    client: RegistryClient | None = None,
) -> PromotionResult:
    """Point the champion alias at an approved version, remembering the previous champion.

    Args:
        name: Registered model name.
        version: The approved version to promote.
        comment: Why (recorded in the audit event).
        actor: Who promotes (default ``$CVPLATFORM_USER`` or the OS user).
        params: Params (alias names, retries); default ``<root>/params.yaml``.
        root: Project root; default cwd.
        client: An existing :class:`RegistryClient`.

    Raises:
        UnknownModelError / UnknownVersionError: no such model or version.
        NotApprovedError: the signed history holds no approval (pending, rejected, rolled back,
            or only a hand-edited ``approval.status`` tag).
        AuditIntegrityError: the version's audit trail does not verify.
        IncompatibleVersionError: task / classes / input contract differ from the champion's and
            the approval did not confirm it.

    Example:
        >>> from cvplatform import promote
        >>> promote("cvplatform", 3).lines()  # doctest: +SKIP
        ['cvplatform@champion promoted to v3 by alice (was v2; sqlite:///.../mlflow.db)']
    """
    cfg = resolve_params(params, root)
    alias = cfg.registry.champion_alias
    c = client or RegistryClient.from_params(cfg, root)
    who, ident = resolve_actor(c, actor)
    mv = c.version(name, version)
    v = str(mv.version)
    tags = check_managed(mv, "promote")
    trail = _promotable(c, mv, tags, name, alias, compatibility=False)
    current = c.version_by_alias(name, alias)
    previous = str(current.version) if current is not None else None
    if previous == v:
        return PromotionResult(name, alias, v, tags.get(TAG_PREVIOUS_CHAMPION), "unchanged", who, None, c.uri)
    _require_compatible(c, trail, tags, name, alias)
    event = new_event(name, v, "promoted", who, comment, {"alias": alias, "previous": previous or NONE},
                      existing=tags, key=load_key(c.uri, create=True), identity=ident)
    _write(c, name, v, [(TAG_PREVIOUS_CHAMPION, previous or NONE), *event_tags(event)])
    _move_alias(c, name, alias, v)
    return PromotionResult(name, alias, v, previous, "promoted", who, event, c.uri)


def rollback(
    name: str,
    *,
    comment: str = "",
    actor: str | None = None,
    params: Params | None = None,
    root: str | os.PathLike[str] | None = None,
    client: RegistryClient | None = None,
) -> PromotionResult:
    """Move the champion alias back to the version that held it before the current champion.

    Raises:
        UnknownModelError: no such model.
        NoChampionError: no version holds the champion alias.
        NoPreviousChampionError: the champion was promoted when there was no champion, or the
            previous champion no longer exists / is no longer approved.

    Example:
        >>> from cvplatform import rollback
        >>> rollback("cvplatform", comment="latency regression").version  # doctest: +SKIP
        '2'
    """
    cfg = resolve_params(params, root)
    alias = cfg.registry.champion_alias
    c = client or RegistryClient.from_params(cfg, root)
    who, ident = resolve_actor(c, actor)
    current = c.version_by_alias(name, alias)
    if current is None:
        raise NoChampionError(
            f"cannot roll back {name!r}: no version holds the {alias!r} alias. Promote an approved version "
            "with `cvplatform registry promote NAME VERSION`."
        )
    cur = str(current.version)
    prev = (current.tags or {}).get(TAG_PREVIOUS_CHAMPION)
    if not prev or prev == NONE:
        raise NoPreviousChampionError(
            f"cannot roll back {name}@{alias} (v{cur}): v{cur} was promoted when there was no champion, so there "
            "is nothing to return to. Promote another approved version instead."
        )
    try:
        target = c.version(name, prev)
    except UnknownVersionError:
        raise NoPreviousChampionError(
            f"cannot roll back {name}@{alias} (v{cur}) to v{prev}: that version no longer exists. Promote "
            "another approved version instead."
        ) from None
    tags = check_managed(target, "roll back to")
    trail = verified_status(c, target)
    require_intact(trail, "roll back to", tags_too=True)
    if trail.status != STATUS_APPROVED:
        raise NoPreviousChampionError(
            f"cannot roll back {name}@{alias} (v{cur}) to v{prev}: the signed history of v{prev} says "
            f"{trail.status!r}, not approved. Promote another approved version instead."
        )
    event = new_event(name, prev, "rolled_back", who, comment, {"alias": alias, "from": cur}, existing=tags,
                      key=load_key(c.uri, create=True), identity=ident)
    _write(c, name, prev, event_tags(event))
    _move_alias(c, name, alias, prev)
    return PromotionResult(name, alias, prev, cur, "rolled_back", who, event, c.uri)


__all__ = ["PromotionResult", "check_promotable", "promote", "rollback"]
