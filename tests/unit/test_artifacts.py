"""Typed, versioned stage artifacts: field names kept, extras kept, clear errors naming the file and the fix."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

import pytest

from cvplatform.artifacts import (
    ArtifactError,
    ExportSummary,
    GateReportFile,
    IngestSummary,
    TrainSummary,
)
from cvplatform.stage import StageResult


def test_round_trip_keeps_the_field_names_and_the_extra_fields(tmp_path):
    path = tmp_path / "summary.json"
    ExportSummary(artifact="artifacts/export/model.onnx", sha256="ab" * 32, chosen="int8",
                  parity={"passed": True}).write(path)
    raw = json.loads(path.read_text())
    assert raw["artifact"] == "artifacts/export/model.onnx" and raw["parity"] == {"passed": True}
    assert raw["schema_version"] == 1
    back = ExportSummary.read(path)
    assert back.sha256 == "ab" * 32 and back.get("parity") == {"passed": True}


def test_older_files_without_a_schema_version_and_the_old_run_id_key_still_read(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text(json.dumps({"mlflow_run_id": "r1", "best_checkpoint": "best.ckpt"}))
    s = TrainSummary.read(path)
    assert s.schema_version == 1 and s.train_run_id == "r1"


@pytest.mark.parametrize(("content", "needle"), [
    (None, r"training summary not found\. Run `cvplatform train` first"),
    ("{not json", r"training summary is not readable JSON .*Re-run `cvplatform train`"),
    ("[1, 2]", r"training summary must be a JSON object, got list"),
    (json.dumps({"best_metrics": "high"}), r"training summary is invalid \(best_metrics: .*Re-run `cvplatform train`"),
    (json.dumps({"schema_version": 99}), r"schema_version 99, newer than this cvplatform reads \(1\)"),
])
def test_missing_or_invalid_files_name_the_file_and_what_to_do(tmp_path, content, needle):
    path = tmp_path / "summary.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ArtifactError, match=needle) as info:
        TrainSummary.read(path)
    assert str(info.value).startswith(str(path))


def test_read_if_present_and_an_invalid_gate_verdict(tmp_path):
    assert IngestSummary.read_if_present(tmp_path / "nope.json") is None
    path = tmp_path / "gate_report.json"
    path.write_text(json.dumps({"model_sha256": "x", "passed": "maybe"}))
    with pytest.raises(ArtifactError, match=r"evaluation gate report is invalid \(passed: "):
        GateReportFile.read(path)
    assert GateReportFile.at(tmp_path) == tmp_path / "artifacts/evaluate/gate_report.json"


def test_stage_results_write_their_summary_through_the_model(tmp_path):
    @dataclass
    class Fake(StageResult):
        stage: ClassVar[str] = "ingest"
        summary_model: ClassVar[str | None] = "IngestSummary"
        source: str
        seen: int
        accepted: int

    path = Fake("digits", 3, 2).write_summary(tmp_path)
    raw = json.loads(path.read_text())
    assert raw == {"schema_version": 1, "stage": "ingest", "source": "digits", "seen": 3, "accepted": 2}
    assert IngestSummary.read(path).accepted == 2
