"""The pipeline state a registered version was built from, read back for "is anything new?".

``register_model`` attaches the project's ``dvc.lock`` to every version's registration run
(``registration/dvc.lock``): the exact source, params, configuration files, code and
outputs the version came from. :func:`latest_pipeline_lock` returns the newest version's
lock, which an Airflow run compares with its own inputs
(:func:`cvplatform.workspace.changes_since`) to end early when nothing changed.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cvplatform.registry.client import TAG_APPROVAL_STATUS, RegistryClient, is_not_found

if TYPE_CHECKING:  # pragma: no cover
    from cvplatform.config import Params

log = logging.getLogger(__name__)

LOCK_ARTIFACT = "registration/dvc.lock"
"""Where a version's ``dvc.lock`` is attached (on its registration run)."""


@dataclass(frozen=True)
class VersionLock:
    """A registered version and the ``dvc.lock`` text it was built from."""

    model_name: str
    version: str
    status: str
    """Its ``approval.status`` tag (pending | approved | rejected | ...)."""
    lock_text: str


def latest_pipeline_lock(params: Params, root: str | os.PathLike[str] = ".", *,
                         client: RegistryClient | None = None) -> VersionLock | None:
    """The newest version of ``registry.model_name`` that has a ``dvc.lock`` attached, or None.

    Example:
        >>> found = latest_pipeline_lock(load_params("params.yaml"))  # doctest: +SKIP
        >>> found.version, found.status  # doctest: +SKIP
        ('3', 'approved')
    """
    c = client or RegistryClient.from_params(params, root)
    name = params.registry.model_name
    try:
        versions = c.versions(name)
    except Exception as exc:  # no registered model yet
        if is_not_found(exc):
            return None
        raise
    for mv in sorted(versions, key=lambda v: int(v.version), reverse=True):
        if not mv.run_id:
            continue
        text = _download_text(c, mv.run_id, LOCK_ARTIFACT)
        if text is not None:
            status = (mv.tags or {}).get(TAG_APPROVAL_STATUS, "unknown")
            return VersionLock(name, str(mv.version), status, text)
    return None


def _download_text(c: RegistryClient, run_id: str, artifact: str) -> str | None:
    with tempfile.TemporaryDirectory(prefix="cvplatform-lock-") as tmp:
        try:
            local = c.call(f"download {artifact} of run {run_id}",
                           lambda: c.mlflow.download_artifacts(run_id, artifact, tmp))
        except Exception as exc:
            if is_not_found(exc) or isinstance(exc, OSError) or "No such file" in str(exc) \
                    or "not found" in str(exc).lower():
                return None
            raise
        p = Path(local)
        return p.read_text(encoding="utf-8") if p.is_file() else None


__all__ = ["LOCK_ARTIFACT", "VersionLock", "latest_pipeline_lock"]
