"""The MLflow model registry: register with lineage, approve/reject, promote/rollback, audit, load verified.

Public API (heavy libraries are imported only when a function is called)::

    from cvplatform.registry import register_model, approve, reject, promote, rollback, load_model
    res = register_model(params)                       # -> models:/cvplatform/4 @challenger, pending
    approve("cvplatform", 4, reviewer="bob", comment="report reviewed")
    promote("cvplatform", 4)                           # champion -> v4 (previous champion remembered)
    rollback("cvplatform")                             # champion -> previous champion
    verify_version("cvplatform", 4).ok                 # the signed audit trail verifies
    mark_rolled_back("cvplatform", 5, "agreement ...")  # a canary rolled v5 back: status, alias, history
    m = load_model("models:/cvplatform@champion")      # sha256-verified onnxruntime session + contract

Modules: :mod:`~cvplatform.registry.client` (retrying MLflow client, tag names),
:mod:`~cvplatform.registry.register`, :mod:`~cvplatform.registry.approvals`,
:mod:`~cvplatform.registry.aliases`, :mod:`~cvplatform.registry.audit` (signed audit trail,
verify, history, show), :mod:`~cvplatform.registry.keys` (platform key),
:mod:`~cvplatform.registry.identity` (who decides), :mod:`~cvplatform.registry.compat`
(compatibility with the champion), :mod:`~cvplatform.registry.rollout` (what a canary rollback records),
:mod:`~cvplatform.registry.loading`, :mod:`~cvplatform.registry.errors`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cvplatform.utils.lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "register_model": "cvplatform.registry.register",
    "RegisterResult": "cvplatform.registry.register",
    "approve": "cvplatform.registry.approvals",
    "reject": "cvplatform.registry.approvals",
    "ApprovalResult": "cvplatform.registry.approvals",
    "promote": "cvplatform.registry.aliases",
    "rollback": "cvplatform.registry.aliases",
    "PromotionResult": "cvplatform.registry.aliases",
    "history": "cvplatform.registry.audit",
    "show": "cvplatform.registry.audit",
    "verify_version": "cvplatform.registry.audit",
    "record_event": "cvplatform.registry.audit",
    "AuditEvent": "cvplatform.registry.audit",
    "mark_rolled_back": "cvplatform.registry.rollout",
    "RolledBackVersion": "cvplatform.registry.rollout",
    "load_model": "cvplatform.registry.loading",
    "LoadedModel": "cvplatform.registry.loading",
    "RegistryClient": "cvplatform.registry.client",
    "RetryPolicy": "cvplatform.registry.client",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from cvplatform.registry.aliases import PromotionResult, promote, rollback  # noqa: F401
    from cvplatform.registry.approvals import ApprovalResult, approve, reject  # noqa: F401
    from cvplatform.registry.audit import AuditEvent, history, record_event, show, verify_version  # noqa: F401
    from cvplatform.registry.client import RegistryClient, RetryPolicy  # noqa: F401
    from cvplatform.registry.loading import LoadedModel, load_model  # noqa: F401
    from cvplatform.registry.register import RegisterResult, register_model  # noqa: F401
    from cvplatform.registry.rollout import RolledBackVersion, mark_rolled_back  # noqa: F401


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
