"""Typed, versioned stage artifacts: the JSON one stage writes and another reads.

One pydantic model per file, each with a ``schema_version``:

================================  ==========================  =======================
file                              model                       written by
================================  ==========================  =======================
``artifacts/ingest/summary.json``  :class:`IngestSummary`      ``cvplatform ingest``
``artifacts/validate/summary.json`` :class:`ValidateSummary`   ``cvplatform validate``
``artifacts/train/summary.json``   :class:`TrainSummary`       ``cvplatform train``
``artifacts/export/summary.json``  :class:`ExportSummary`      ``cvplatform export``
``artifacts/evaluate/summary.json`` :class:`EvaluateSummary`   ``cvplatform evaluate``
``artifacts/evaluate/gate_report.json`` :class:`GateReportFile` ``cvplatform evaluate``
================================  ==========================  =======================

The JSON field names are the stages' own (``StageResult.to_dict``); the models type the fields
other modules read and keep every other field (``extra="allow"``). :meth:`StageArtifact.read`
raises :class:`ArtifactError` naming the file and the command that writes it when the file is
missing, is not JSON, does not match its model, or was written by a newer schema;
:meth:`StageArtifact.read_if_present` returns None for a missing file instead.

Example:
    >>> from cvplatform.artifacts import TrainSummary
    >>> summary = TrainSummary.read("artifacts/train/summary.json")  # doctest: +SKIP
    >>> summary.train_run_id, summary.best_checkpoint  # doctest: +SKIP
    ('3f2a...', 'artifacts/train/best.ckpt')
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from cvplatform.errors import DataError

A = TypeVar("A", bound="StageArtifact")


class ArtifactError(DataError):
    """A stage artifact is missing or invalid (the message names the file and the command that writes it)."""


class StageArtifact(BaseModel):
    """Base of every stage artifact: versioned, extra fields kept, read/write with clear errors."""

    model_config = ConfigDict(extra="allow")

    SCHEMA_VERSION: ClassVar[int] = 1
    RELPATH: ClassVar[str] = ""
    """Where the artifact lives, relative to the project root."""
    PRODUCER: ClassVar[str] = ""
    """The command that writes it (named in errors)."""
    WHAT: ClassVar[str] = ""
    """What it is, for errors (e.g. ``training summary``)."""

    schema_version: int = 1

    # ---------------------------------------------------------------- reading
    @classmethod
    def read(cls: type[A], path: str | os.PathLike[str]) -> A:
        """Load and validate ``path``.

        Raises:
            ArtifactError: missing, unreadable, not a JSON object, invalid fields, or a newer schema.
        """
        p = Path(path)
        if not p.is_file():
            raise ArtifactError(f"{p}: {cls._what()} not found. Run `{cls.PRODUCER}` first.")
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"{p}: {cls._what()} is not readable JSON ({exc}). Re-run `{cls.PRODUCER}`.") from None
        if not isinstance(data, dict):
            raise ArtifactError(f"{p}: {cls._what()} must be a JSON object, got {type(data).__name__}. "
                                f"Re-run `{cls.PRODUCER}`.")
        try:
            obj = cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ArtifactError(f"{p}: {cls._what()} is invalid ({problems}). Re-run `{cls.PRODUCER}`.") from None
        if obj.schema_version > cls.SCHEMA_VERSION:
            raise ArtifactError(
                f"{p}: {cls._what()} has schema_version {obj.schema_version}, newer than this cvplatform reads "
                f"({cls.SCHEMA_VERSION}). Upgrade cvplatform, or re-run `{cls.PRODUCER}` with this version."
            )
        return obj

    @classmethod
    def read_if_present(cls: type[A], path: str | os.PathLike[str]) -> A | None:
        """Like :meth:`read`, but None when the file does not exist."""
        return cls.read(path) if Path(path).is_file() else None

    @classmethod
    def at(cls: type[A], root: str | os.PathLike[str]) -> Path:
        """The artifact's path in project ``root``."""
        return Path(root) / cls.RELPATH

    @classmethod
    def _what(cls) -> str:
        return cls.WHAT or cls.__name__

    # ---------------------------------------------------------------- writing
    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write as pretty, key-sorted JSON, atomically (with ``schema_version``)."""
        from cvplatform.utils.io import write_json

        return write_json(path, self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        """The fields the file holds (the extra ones included) and ``schema_version``, as JSON types.

        Typed fields the file does not hold are left out (a reader's ``get`` gives its default).
        """
        return {**self.model_dump(mode="json", exclude_unset=True), "schema_version": self.schema_version}

    def get(self, key: str, default: Any = None) -> Any:
        """A field by its JSON name (also the extra ones), or ``default``."""
        value = self.model_dump(mode="json").get(key, default)
        return default if value is None else value


class IngestSummary(StageArtifact):
    """The ingest summary."""

    RELPATH: ClassVar[str] = "artifacts/ingest/summary.json"
    PRODUCER: ClassVar[str] = "cvplatform ingest"
    WHAT: ClassVar[str] = "ingest summary"

    source: str | None = None
    seen: int = 0
    accepted: int = 0
    quarantined: int = 0
    duplicates: int = 0
    manifest: str = ""


class ValidateSummary(StageArtifact):
    """The validation summary."""

    RELPATH: ClassVar[str] = "artifacts/validate/summary.json"
    PRODUCER: ClassVar[str] = "cvplatform validate"
    WHAT: ClassVar[str] = "validation summary"

    success: bool = False


class TrainSummary(StageArtifact):
    """The training summary."""

    RELPATH: ClassVar[str] = "artifacts/train/summary.json"
    PRODUCER: ClassVar[str] = "cvplatform train"
    WHAT: ClassVar[str] = "training summary"

    run_id: str | None = None
    mlflow_run_id: str | None = None
    """Older summaries name the MLflow run here instead of ``run_id``."""
    tracking_uri: str | None = None
    best_checkpoint: str | None = None
    best_metrics: dict[str, Any] = {}
    data_version: str | None = None
    class_names: list[str] = []

    @property
    def train_run_id(self) -> str | None:
        """The MLflow run of the training (``mlflow_run_id`` or ``run_id``)."""
        return self.mlflow_run_id or self.run_id


class ExportSummary(StageArtifact):
    """The export summary."""

    RELPATH: ClassVar[str] = "artifacts/export/summary.json"
    PRODUCER: ClassVar[str] = "cvplatform export"
    WHAT: ClassVar[str] = "export summary"

    chosen: str | None = None
    artifact: str | None = None
    """The ONNX file that ships (relative to the project root)."""
    sha256: str | None = None
    train_run_id: str | None = None
    class_names: list[str] | None = None
    lineage: dict[str, Any] = {}


class EvaluateSummary(StageArtifact):
    """The evaluation summary."""

    RELPATH: ClassVar[str] = "artifacts/evaluate/summary.json"
    PRODUCER: ClassVar[str] = "cvplatform evaluate"
    WHAT: ClassVar[str] = "evaluation summary"

    model: str = ""
    model_sha256: str | None = None
    passed: bool | None = None


class GateReportFile(StageArtifact):
    """The evaluation gate report."""

    RELPATH: ClassVar[str] = "artifacts/evaluate/gate_report.json"
    PRODUCER: ClassVar[str] = "cvplatform evaluate"
    WHAT: ClassVar[str] = "evaluation gate report"

    passed: bool | None = None
    """The verdict (always written by ``evaluate``; ``register`` refuses a report without it)."""
    model_sha256: str | None = None
    checks: list[dict[str, Any]] = []


__all__ = [
    "ArtifactError",
    "EvaluateSummary",
    "ExportSummary",
    "GateReportFile",
    "IngestSummary",
    "StageArtifact",
    "TrainSummary",
    "ValidateSummary",
]
