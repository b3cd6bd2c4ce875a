"""The champion reference: which registered version ``evaluate`` compares with, as a DVC dependency.

``evaluate`` compares the candidate with ``models:/<registry.model_name>@<registry.champion_alias>``,
which lives in the MLflow registry, outside DVC's view. :func:`write_champion_ref` writes that
champion's identity (version and artifact sha256) to ``artifacts/champion.json``, the output of the
``champion`` stage of ``dvc.yaml`` and a dependency of ``evaluate``:

* the file is rewritten only when the champion changed (a promotion or a rollback), so with the same
  champion ``dvc repro`` stays a no-op;
* after a change, ``dvc repro`` sees the modified output, re-runs ``champion`` and then ``evaluate``.

``cvplatform champion-ref`` runs it; :func:`cvplatform.pipeline.repro` runs it before every
``dvc repro evaluate`` (the Airflow task). Before a plain ``dvc repro`` run ``cvplatform champion-ref``.

Example:
    >>> path, changed = write_champion_ref(load_params(), ".")  # doctest: +SKIP
    >>> json.loads(path.read_text())["version"]  # doctest: +SKIP
    '3'
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from cvplatform.config import Params

#: Where the champion reference is written (relative to the project root); an output of dvc.yaml's `champion`.
CHAMPION_REF = "artifacts/champion.json"
SCHEMA_VERSION = 1


def champion_ref(params: Params, root: str | os.PathLike[str]) -> dict[str, Any]:
    """The current champion's identity: model, alias, version and artifact sha256 (None when there is none).

    With ``evaluate.compare_champion: false`` the champion is not looked up (``compare`` is false).

    Raises:
        RegistryError: the registry cannot be reached (naming the URI and what to check).
    """
    from cvplatform.registry.client import TAG_SHA256, RegistryClient
    from cvplatform.registry.errors import UnknownModelError

    name, alias = params.registry.model_name, params.registry.champion_alias
    ref: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "model": name, "alias": alias,
                           "compare": bool(params.evaluate.compare_champion), "version": None, "sha256": None}
    if not ref["compare"]:
        return ref
    client = RegistryClient.from_params(params, root)
    try:
        mv = client.version_by_alias(name, alias)
    except UnknownModelError:
        mv = None
    if mv is not None:
        ref["version"] = str(mv.version)
        ref["sha256"] = (mv.tags or {}).get(TAG_SHA256)
    return ref


def write_champion_ref(params: Params, root: str | os.PathLike[str] = ".") -> tuple[Path, bool]:
    """Write :func:`champion_ref` to ``artifacts/champion.json`` when it differs; ``(path, changed)``.

    Raises:
        RegistryError: the registry cannot be reached.
    """
    from cvplatform.utils.io import ProjectPaths, write_json

    path = ProjectPaths.at(root).resolve(CHAMPION_REF)
    ref = champion_ref(params, root)
    try:
        old = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, json.JSONDecodeError):
        old = None
    if old == ref:
        return path, False
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, ref)
    return path, True


def describe(ref: dict[str, Any]) -> str:
    """One line for people: which champion evaluate will compare with."""
    where = f"models:/{ref['model']}@{ref['alias']}"
    if not ref.get("compare"):
        return f"champion: not compared (evaluate.compare_champion is false; {where})"
    if ref.get("version") is None:
        return f"champion: {where} does not exist yet"
    return f"champion: {where} = version {ref['version']} (sha256 {str(ref.get('sha256'))[:12]})"


__all__ = ["CHAMPION_REF", "champion_ref", "describe", "write_champion_ref"]
