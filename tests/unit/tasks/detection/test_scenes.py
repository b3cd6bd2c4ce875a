"""The built-in detection scenes: reproducible, readable by the COCO reader, every box visible."""

from __future__ import annotations

import csv
import hashlib

import numpy as np
import pytest

from cvplatform.errors import ConfigError
from cvplatform.tasks.detection.annotations import check_boxes, read_annotations
from cvplatform.tasks.detection.scenes import ScenesParams, generate_scenes, render_scene


def _digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_and_the_coco_reader_accepts_every_box(tmp_path):
    params = ScenesParams(count=24, size=64, seed=3)
    generate_scenes(params, tmp_path / "a")
    generate_scenes(params, tmp_path / "b")
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(generate_scenes(ScenesParams(count=24, size=64, seed=4), tmp_path / "c").parent)

    ann = read_annotations(tmp_path / "a")  # detected: annotations.json
    assert ann.format == "coco" and ann.problems == [] and set(ann.classes) <= {"circle", "square", "triangle"}
    counts = []
    for origin, boxes in ann.boxes.items():
        kept, problem = check_boxes(boxes, 64, 64, ann.classes, tolerance=0.0)
        assert problem is None and len(kept) == len(boxes), (origin, problem)
        counts.append(len(boxes))
    assert len(counts) == 24 and min(counts) >= 1 and max(counts) <= 8 and len(set(counts)) > 2
    with (tmp_path / "a/labels.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 24 and {r["background"] for r in rows} == {"china", "flower"}
    assert {r["object_size"] for r in rows} <= {"small", "medium", "large"} and len({r["object_size"] for r in rows}) > 1
    assert [int(r["objects"]) for r in rows] == [len(ann.boxes[r["path"]]) for r in rows]


def test_later_objects_never_hide_earlier_ones_below_min_visible():
    from cvplatform.tasks.detection.scenes import _photos

    photo = _photos()["china"]
    rng = np.random.default_rng(0)
    seen_occlusion = False
    for _ in range(20):
        img, objects = render_scene(64, ("circle", "square"), 8, photo, "normal", rng, min_visible=0.6)
        assert img.shape == (64, 64, 3) and img.dtype == np.uint8
        assert all(o.visible >= 0.6 for o in objects)
        seen_occlusion |= any(o.visible < 1.0 for o in objects)
        for o in objects:
            x0, y0, x1, y1 = o.box
            assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
    assert seen_occlusion  # partial occlusion does happen


def test_bad_scene_params_are_configuration_errors(tmp_path):
    with pytest.raises(ConfigError, match="hexagon"):
        generate_scenes(ScenesParams(count=1, classes=("hexagon",)), tmp_path)
    with pytest.raises(ConfigError, match="min_objects 5 > max_objects 2"):
        generate_scenes(ScenesParams(count=1, min_objects=5, max_objects=2), tmp_path)
