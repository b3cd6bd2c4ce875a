"""Great Expectations checks of a detection manifest's boxes: inside the image, minimum size, boxes per
image, class set and class balance by box count, on a real ingest of the built-in scenes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cvplatform.config import BoxSuiteConfig, ManifestSuiteConfig
from cvplatform.data.ingest import run_ingest
from cvplatform.data.manifest import read_manifest
from cvplatform.data.validate import run_validate, validate_manifest
from cvplatform.errors import DataError, ValidationFailed
from tests.conftest import build_params

REPO = Path(__file__).resolve().parents[3]
BOX_CHECKS = ["boxes:inside", "boxes:min_side", "boxes:per_image", "boxes:min_per_class", "boxes:max_imbalance"]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scenes")
    run_ingest(build_params("ingest.source=scenes", "ingest.scenes.count=24", "ingest.scenes.size=48",
                            "ingest.workers=1"), root=root)
    shutil.copytree(REPO / "configs", root / "configs")
    return root


def _suite(**boxes) -> ManifestSuiteConfig:
    # the manifest-level class checks are not what this file tests (24 scenes are few images per class)
    return ManifestSuiteConfig(min_per_class=1, max_imbalance=100.0, boxes=BoxSuiteConfig(**boxes))


def _inputs(root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    return (read_manifest(root / "data/processed/manifest.parquet"),
            pd.read_parquet(root / "data/processed/annotations.parquet"))


def test_the_stage_checks_the_ingested_boxes(scenes):
    suite = yaml.safe_load((scenes / "configs/expectations/manifest.yaml").read_text())
    suite.update(min_per_class=1, max_imbalance=100.0)
    suite["boxes"].update(min_boxes_per_class=1, max_box_imbalance=100.0)
    (scenes / "configs/expectations/scenes.yaml").write_text(yaml.safe_dump(suite))
    res = run_validate(build_params("validate.suite=configs/expectations/scenes.yaml"), root=scenes)
    checks = {c.name: c for c in res.checks}
    assert all(checks[n].status == "passed" for n in BOX_CHECKS), [checks[n].message for n in BOX_CHECKS]
    assert checks["boxes:classes"].status == "skipped"  # boxes.classes: null


def test_bad_boxes_fail_their_checks_naming_the_image(scenes):
    df, boxes = _inputs(scenes)
    sha = boxes["sha256"].iloc[0]
    width = int(df.loc[df["sha256"] == sha, "width"].iloc[0])
    bad = boxes.copy()
    bad.loc[0, ["x0", "x1"]] = [width - 5.0, width + 7.0]  # 7 px outside the image
    bad.loc[1, ["x1"]] = bad.loc[1, "x0"] + 0.5  # half a pixel wide
    crowded = pd.concat([bad, *[bad[bad["sha256"] == sha]] * 30], ignore_index=True)
    res = validate_manifest(df, _suite(max_boxes_per_image=20, classes=("circle",), min_boxes_per_class=10_000,
                                       max_box_imbalance=1.0), boxes=crowded)
    checks = {c.name: c for c in res.checks}
    assert not res.success
    assert checks["boxes:inside"].status == "failed" and sha[:12] in checks["boxes:inside"].message
    assert checks["boxes:min_side"].status == "failed"
    assert checks["boxes:per_image"].status == "failed" and sha[:12] in checks["boxes:per_image"].message
    assert checks["boxes:min_per_class"].status == "failed" and checks["boxes:max_imbalance"].status == "failed"
    assert checks["boxes:classes"].status == "failed"  # the scenes have more classes than 'circle'


def test_classification_manifests_have_no_box_checks_and_a_missing_table_is_a_clear_error(scenes, tmp_path):
    df, _ = _inputs(scenes)
    res = validate_manifest(df.drop(columns=["annotations"]), _suite())
    assert not [c.name for c in res.checks if c.name.startswith("boxes:")]  # no boxes, no box checks
    moved = tmp_path / "project"
    shutil.copytree(scenes, moved)
    (moved / "data/processed/annotations.parquet").unlink()
    with pytest.raises(DataError, match=r"annotations.parquet: annotation table named by the manifest is missing"):
        run_validate(build_params(), root=moved)
    with pytest.raises(ValidationFailed):  # the shipped suite's per-class floors fail 24 scenes, and say so
        run_validate(build_params(), root=scenes)
