"""Drift monitoring of a detection project through the task seam: the reference holds the training annotations'
boxes (per image, area share, class mix; ``task.reference_objects``), the inference log each served image's boxes
(``objects``), and ``run_monitor`` judges boxes per image, box area, class mix and the mean box score beside the
image statistics. Real ingest (scenes), real annotation table, real logger, real images."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import yaml

from cvplatform.config import load_params
from cvplatform.data.manifest import read_manifest
from cvplatform.monitoring.inference_log import InferenceLogger, read_log
from cvplatform.monitoring.reference import get_reference
from cvplatform.monitoring.run import run_monitor
from cvplatform.monitoring.stats import read_rgb
from cvplatform.tasks import get_task
from tests.fixtures.detection_project import CLASSES, ingest_detection_project

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = ingest_detection_project(tmp_path_factory.mktemp("det-drift"), count=40, size=48, input_size=32,
                                    overrides=["monitor.log_to_mlflow=false"])
    policy_file = root / "configs/monitor/drift.yaml"
    policy = yaml.safe_load(policy_file.read_text())
    policy["min_samples"] = 30
    policy_file.write_text(yaml.safe_dump(policy))
    return root


def _train_boxes(root: Path) -> list[tuple[str, str, dict]]:
    """Each train image's path, label (its largest box's class) and annotated boxes as served objects (a perfect
    detector, scores 0.9)."""
    task = get_task("detection")
    df = read_manifest(root / "data/processed/manifest.parquet")
    train = df[df["split"] == "train"].reset_index(drop=True)
    out = []
    for row in train.to_dict("records"):
        ref = task.reference_objects(train[train["sha256"] == row["sha256"]], root)
        classes = [c for c, n in ref["classes"].items() for _ in range(n)]
        out.append((row["path"], str(row["label"]), {"scores": [0.9] * len(ref["areas"]), "classes": classes, "areas": ref["areas"]}))
    return out


def _log(root: Path, at: datetime, objects_of, repeat: int = 3, version: str = "1") -> int:
    logger = InferenceLogger.from_params(load_params(root / "params.yaml"), root)
    logger = InferenceLogger(logger.directory, logger.max_bytes, clock=lambda: at)
    n = 0
    with logger:
        for r in range(repeat):
            for i, (path, label, boxes) in enumerate(_train_boxes(root)):
                obj = objects_of(boxes)
                best = label if obj is boxes else (obj["classes"][0] if obj["classes"] else "")
                logger.log(read_rgb(root / path), model="det", version=version, variant="champion",
                           request_id=f"{r}-{i}", predicted=best if obj["scores"] else "",
                           confidence=max(obj["scores"], default=0.0), objects=obj)
                n += 1
    return n


def _clear_log(root: Path) -> None:
    for f in (root / "artifacts/serving/requests").glob("requests-*.jsonl"):
        f.unlink()


def test_the_reference_holds_the_training_boxes(project):
    ref, cached = get_reference("data/processed/manifest.parquet", project, task=get_task("detection"))
    obj = ref.objects
    assert obj is not None and not cached
    df = read_manifest(project / "data/processed/manifest.parquet")
    n_train = int((df["split"] == "train").sum())
    assert len(obj["per_image"]) == n_train and sum(obj["per_image"]) == len(obj["areas"]) == sum(obj["classes"].values())
    assert set(obj["classes"]) <= set(CLASSES) and all(0.0 < a <= 1.0 for a in obj["areas"])
    # a reference cached without objects (before the task reported them) is rebuilt for a task with objects
    again, cached = get_reference("data/processed/manifest.parquet", project, task=get_task("detection"))
    assert cached and again.objects == obj
    plain, cached = get_reference("data/processed/manifest.parquet", project, rebuild=True)
    assert plain.objects is None
    rebuilt, cached = get_reference("data/processed/manifest.parquet", project, task=get_task("detection"))
    assert not cached and rebuilt.objects == obj


def test_training_like_boxes_are_not_drift_and_a_detector_that_misses_objects_is(project):
    _clear_log(project)
    params = load_params(project / "params.yaml")
    # a week of baseline traffic, then a window of the same boxes
    _log(project, NOW - timedelta(days=2), lambda o: o)
    _log(project, NOW - timedelta(hours=1), lambda o: o)
    assert "objects" in read_log(project / "artifacts/serving/requests").columns
    result = run_monitor(params, root=project, until=NOW)
    statuses = {c["name"]: c["status"] for c in result.checks}
    assert not result.drifted, result.lines()
    for name in ("objects_per_image.psi", "object_area.psi", "object_class.psi", "object_score.drop"):
        assert statuses[name] == "passed", (name, result.checks)
    assert statuses["brightness.psi"] == "passed"

    # the window's detector answers only the first box of each image, of one class, at a lower score
    _clear_log(project)
    _log(project, NOW - timedelta(days=2), lambda o: o)

    def misses(o: dict) -> dict:
        k = 1 if o["scores"] else 0
        return {"scores": [0.5] * k, "classes": [CLASSES[0]] * k, "areas": [a * 0.2 for a in o["areas"][:k]]}

    _log(project, NOW - timedelta(hours=1), misses)
    result = run_monitor(params, root=project, until=NOW)
    failed = {c["name"] for c in result.checks if c["status"] == "failed"}
    assert result.drifted and {"objects_per_image.psi", "object_area.psi", "object_class.psi",
                               "object_score.drop"} <= failed, result.lines()
    assert not any(n.startswith(("brightness", "contrast", "sharpness")) for n in failed)
    assert any(r.startswith("objects per image PSI") for r in result.reasons)
    report = (project / "artifacts/monitor/report.md").read_text()
    assert "## Objects" in report and "| objects per image |" in report
    assert np.isclose(result.objects["current_per_image"], 1.0)
