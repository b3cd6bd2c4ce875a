"""What every stage returns: a small result object with a machine summary and a human one.

``run_<stage>`` functions return a subclass of :class:`StageResult`; they write
``artifacts/<stage>/summary.json`` themselves (so the CLI, DVC, Airflow and
notebooks all get the same file) and the CLI prints :meth:`StageResult.lines`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, ClassVar

from cvplatform.utils.io import write_json


@dataclass
class StageResult:
    """Base result. Subclasses are dataclasses with JSON-friendly fields."""

    stage: ClassVar[str] = "stage"
    summary_model: ClassVar[str | None] = None
    """Name of the :mod:`cvplatform.artifacts` model the summary is written through (typed, versioned)."""
    summary_path: Path | None = field(default=None, kw_only=True)

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in fields(self):
            if f.name == "summary_path":
                continue
            v = getattr(self, f.name)
            out[f.name] = asdict(v) if is_dataclass(v) and not isinstance(v, type) else v
        out["stage"] = self.stage
        return _jsonable(out)

    def lines(self) -> list[str]:
        """One screen of human summary (override in subclasses)."""
        return [f"{self.stage}: done"]

    def write_summary(self, artifacts_dir: Path) -> Path:
        """Write ``summary.json`` (through its :mod:`cvplatform.artifacts` model when the stage has one)."""
        path = Path(artifacts_dir) / "summary.json"
        if self.summary_model:
            from cvplatform import artifacts

            self.summary_path = getattr(artifacts, self.summary_model).model_validate(self.to_dict()).write(path)
        else:
            self.summary_path = write_json(path, self.to_dict())
        return self.summary_path


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj
