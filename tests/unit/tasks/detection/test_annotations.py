"""Detection annotations: each format read, every bad file or object named, boxes moved with the pixels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageOps

from cvplatform.errors import DataError
from cvplatform.tasks.detection.annotations import (
    BOX_COLUMNS,
    Box,
    Letterbox,
    box_table,
    check_boxes,
    detect_format,
    exif_transform,
    from_coco,
    parse_spec,
    read_annotations,
    resize,
    to_coco,
)


def _image(path: Path, size=(40, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (10, 20, 30)).save(path)


def _reasons(ann) -> dict[str, tuple[str, str]]:
    return {p.detail.split(":")[0]: (p.origin, p.reason) for p in ann.problems}


# --------------------------------------------------------------------------- COCO
def _coco_source(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    _image(root / "images/a.png")
    _image(root / "images/b.png")
    doc = {
        "images": [{"id": 1, "file_name": "images/a.png", "width": 40, "height": 30},
                   {"id": 2, "file_name": "images/b.png", "width": 40, "height": 30},
                   {"id": 3, "file_name": "images/gone.png"},
                   {"file_name": "images/noid.png"}],
        "categories": [{"id": 7, "name": "cat"}, {"id": 9, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 2, 10, 5]},
            {"id": 2, "image_id": 1, "category_id": 9, "bbox": [20, 10, 5, 5], "iscrowd": 1},
            {"id": 3, "image_id": 2, "category_id": 8, "bbox": [1, 1, 2, 2]},  # unknown category
            {"id": 4, "image_id": 2, "category_id": 7, "bbox": [1, "x", 2, 2]},  # not a number
            {"id": 5, "image_id": 2, "category_id": 7, "bbox": [1, 1, 2]},  # three values
            {"id": 6, "image_id": 99, "category_id": 7, "bbox": [1, 1, 2, 2]},  # no such image
            {"id": 7, "image_id": 2, "category_id": 7, "bbox": [1, 1, float("nan"), 2]},
        ],
    }
    (root / "ann.json").write_text(json.dumps(doc))
    return root


def test_coco_boxes_are_corners_in_pixels_and_each_bad_object_is_named(tmp_path):
    root = _coco_source(tmp_path)
    ann = read_annotations(root, "coco:ann.json")
    assert ann.format == "coco" and ann.classes == ["cat", "dog"]
    a = ann.boxes["images/a.png"]
    assert [(b.cls, b.x0, b.y0, b.x1, b.y1, b.iscrowd) for b in a] == [
        ("cat", 1.0, 2.0, 11.0, 7.0, False), ("dog", 20.0, 10.0, 25.0, 15.0, True)]
    assert ann.sizes["images/a.png"] == (40, 30)
    problems = {p.detail.split(":")[0]: (p.origin, p.reason, p.detail) for p in ann.problems}
    assert problems["ann.json annotations[2]"][:2] == ("images/b.png", "malformed_annotation")
    assert "category_id 8" in problems["ann.json annotations[2]"][2]
    assert "not a number" in problems["ann.json annotations[3]"][2]
    assert problems["ann.json annotations[4]"][1] == "malformed_annotation"
    assert "image_id 99" in problems["ann.json annotations[5]"][2]
    assert "finite" in problems["ann.json annotations[6]"][2]
    assert any("images[3]" in p.detail for p in ann.problems)  # an image entry without id
    assert ann.boxes["images/gone.png"] == []  # listed by the file: ingest finds no such image


@pytest.mark.parametrize("content, needle", [
    ("{not json", "not a readable COCO JSON"),
    (json.dumps({"images": []}), "needs lists"),
    (json.dumps({"images": [], "annotations": [], "categories": [{"id": 1}]}), "categories[0]"),
])
def test_an_unusable_coco_file_is_a_data_error_naming_it(tmp_path, content, needle):
    (tmp_path / "ann.json").write_text(content)
    with pytest.raises(DataError, match="ann.json") as err:
        read_annotations(tmp_path, "coco:ann.json")
    assert needle in str(err.value)


# --------------------------------------------------------------------------- YOLO
def test_yolo_normalised_boxes_and_malformed_lines(tmp_path):
    root = tmp_path / "src"
    _image(root / "images/a.png", (100, 50))
    _image(root / "images/b.jpg", (100, 50))
    (root / "labels").mkdir()
    (root / "labels/classes.txt").write_text("cat\ndog\n")
    (root / "labels/a.txt").write_text("0 0.5 0.5 0.2 0.4\n\n1 0.1 0.1 0.1 0.1\n")
    (root / "labels/b.txt").write_text("0 0.5 0.5 0.2\nx 0.5 0.5 0.2 0.2\n5 0.5 0.5 0.2 0.2\n")
    (root / "labels/orphan.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    ann = read_annotations(root, "yolo:labels")
    assert ann.classes == ["cat", "dog"]
    px = [b.in_pixels(100, 50) for b in ann.boxes["images/a.png"]]
    assert [b.cls for b in px] == ["cat", "dog"]
    assert [(b.x0, b.y0, b.x1, b.y1) for b in px] == [pytest.approx((40, 15, 60, 35)), pytest.approx((5, 2.5, 15, 7.5))]
    problems = {p.detail.split(":")[0]: (p.origin, p.reason) for p in ann.problems}
    assert problems == {
        "labels/b.txt line 1": ("images/b.jpg", "malformed_annotation"),
        "labels/b.txt line 2": ("images/b.jpg", "malformed_annotation"),
        "labels/orphan.txt": ("labels/orphan.txt", "annotation_without_image"),
    }
    kept, problem = check_boxes(ann.boxes["images/b.jpg"], 100, 50, ann.classes)  # class index 5 of 2
    assert kept == [] and problem.reason == "unknown_class" and "labels/b.txt line 3" in problem.detail


def test_yolo_class_names_from_data_yaml_and_a_missing_class_file(tmp_path):
    root = tmp_path / "src"
    _image(root / "a.png")
    (root / "labels").mkdir()
    (root / "labels/a.txt").write_text("1 0.5 0.5 0.2 0.2\n")
    with pytest.raises(DataError, match="class-name file"):
        read_annotations(root, "yolo:labels")
    (root / "data.yaml").write_text("names: {0: cat, 1: dog}\n")
    ann = read_annotations(root, "yolo:labels")
    assert ann.classes == ["cat", "dog"] and ann.boxes["a.png"][0].cls == "dog"


# --------------------------------------------------------------------------- VOC
def _voc(name: str, objects: str, size: str = "<size><width>40</width><height>30</height></size>") -> str:
    return f"<annotation><filename>{name}</filename>{size}{objects}</annotation>"


def test_voc_one_based_corners_and_malformed_files(tmp_path):
    root = tmp_path / "src"
    _image(root / "JPEGImages/a.png")
    _image(root / "JPEGImages/b.png")
    ann_dir = root / "Annotations"
    ann_dir.mkdir()
    obj = "<object><name>{}</name><difficult>{}</difficult><bndbox><xmin>{}</xmin><ymin>{}</ymin><xmax>{}</xmax><ymax>{}</ymax></bndbox></object>"
    (ann_dir / "a.xml").write_text(_voc("a.png", obj.format("cat", 0, 1, 1, 10, 5) + obj.format("dog", 1, 11, 6, 20, 12)))
    (ann_dir / "b.xml").write_text(_voc("b.png", "<object><name>cat</name></object>" + obj.format("cat", 0, 1, "a", 3, 3)))
    (ann_dir / "c.xml").write_text("<annotation><filename>c.png")  # truncated
    (ann_dir / "d.xml").write_text(_voc("nothere.png", obj.format("cat", 0, 1, 1, 2, 2)))
    ann = read_annotations(root, "voc:Annotations")
    assert ann.classes == ["cat", "dog"]
    assert [(b.cls, b.x0, b.y0, b.x1, b.y1, b.iscrowd) for b in ann.boxes["JPEGImages/a.png"]] == [
        ("cat", 0.0, 0.0, 10.0, 5.0, False), ("dog", 10.0, 5.0, 20.0, 12.0, True)]
    problems = {p.detail.split(":")[0]: (p.origin, p.reason) for p in ann.problems}
    assert problems == {
        "Annotations/b.xml object 0": ("JPEGImages/b.png", "malformed_annotation"),
        "Annotations/b.xml object 1": ("JPEGImages/b.png", "malformed_annotation"),
        "Annotations/c.xml": ("Annotations/c.xml", "malformed_annotation"),
        "Annotations/d.xml": ("Annotations/d.xml", "annotation_without_image"),
    }


def test_the_format_is_detected_or_the_spec_is_refused(tmp_path):
    root = _coco_source(tmp_path)
    assert detect_format(root) == ("coco", "ann.json")
    assert read_annotations(root).format == "coco"
    (root / "more.json").write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(DataError, match="several annotation sources"):
        detect_format(root)
    for bad in ("cocoa:x.json", "coco:", "yolo"):
        with pytest.raises(DataError, match="ingest.annotations"):
            parse_spec(bad)
    with pytest.raises(DataError, match="does not exist"):
        read_annotations(root, "voc:nothere")
    with pytest.raises(DataError, match="outside the source root"):
        read_annotations(root, "coco:../x.json")


# --------------------------------------------------------------------------- checking
def test_small_overhangs_are_clipped_and_bad_boxes_named():
    ok, problem = check_boxes([Box("cat", -0.5, 1, 40.5, 10, where="f line 1")], 40, 30, ["cat"])
    assert problem is None and (ok[0].x0, ok[0].x1) == (0.0, 40.0)
    cases = [
        (Box("cat", -5, 1, 10, 10, where="f line 2"), "box_outside"),
        (Box("cat", 5, 5, 5, 10, where="f line 3"), "box_degenerate"),
        (Box("cat", 10, 5, 4, 10, where="f line 4"), "box_degenerate"),
        (Box("bird", 1, 1, 4, 4, where="f line 5"), "unknown_class"),
        (Box("cat", 40.2, 1, 40.5, 4, where="f line 6"), "box_degenerate"),  # only overhang
    ]
    for box, reason in cases:
        kept, problem = check_boxes([Box("cat", 1, 1, 4, 4), box], 40, 30, ["cat"])
        assert kept == [] and problem.reason == reason and box.where in problem.detail, (box, problem)


# --------------------------------------------------------------------------- geometry
@pytest.mark.parametrize("orientation", range(1, 9))
def test_boxes_follow_exif_orientation_like_the_pixels(orientation):
    w, h = 40, 30
    arr = np.zeros((h, w, 3), np.uint8)
    arr[5:12, 3:20] = 255  # the object: x 3..20, y 5..12
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = orientation
    img.info["exif"] = exif.tobytes()
    shown = np.asarray(ImageOps.exif_transpose(img))
    ys, xs = np.nonzero(shown[:, :, 0])
    expected = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    (b,) = exif_transform([Box("cat", 3, 5, 20, 12)], orientation, w, h)
    assert (b.x0, b.y0, b.x1, b.y1) == expected


@pytest.mark.parametrize("hw", [(50, 100), (37, 91), (100, 33), (64, 64), (31, 17), (48, 48)])
def test_the_letterbox_matches_albumentations_pixels_and_boxes(hw):
    """Training letterboxes with albumentations; serving/evaluation with Letterbox: same pixels, same boxes."""
    import albumentations as A
    import cv2

    h, w = hw
    rng = np.random.default_rng(h * w)
    img = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    box = Box("cat", 0.2 * w, 0.3 * h, 0.7 * w, 0.9 * h)
    pipe = A.Compose([A.LongestMaxSize(max_size_hw=(64, 48)),
                      A.PadIfNeeded(64, 48, position="center", border_mode=cv2.BORDER_CONSTANT, fill=114)],
                     bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"]))
    out = pipe(image=img, bboxes=np.array([[box.x0, box.y0, box.x1, box.y1]]), labels=[0])
    lb = Letterbox.fit(w, h, (48, 64))
    np.testing.assert_array_equal(lb.apply(img), out["image"])
    (mine,) = lb.boxes([box])
    assert (mine.x0, mine.y0, mine.x1, mine.y1) == pytest.approx(tuple(out["bboxes"][0]), abs=1e-4)
    (back,) = lb.invert([mine])
    assert (back.x0, back.y0, back.x1, back.y1) == pytest.approx((box.x0, box.y0, box.x1, box.y1), abs=1e-6)


def test_boxes_follow_a_resize():
    (b,) = resize([Box("cat", 30, 10, 50, 20)], 0.5, 2.0, 1.0, -1.0)
    assert (b.x0, b.y0, b.x1, b.y1) == (16.0, 19.0, 26.0, 39.0)


# --------------------------------------------------------------------------- table and COCO round trip
def test_import_export_import_gives_the_same_table(tmp_path):
    root = _coco_source(tmp_path)
    ann = read_annotations(root, "coco:ann.json")
    sha = {"images/a.png": "a" * 64, "images/b.png": "b" * 64}
    checked = {}
    for origin, boxes in ann.boxes.items():
        if origin in sha and ann.problem_of(origin) is None:
            checked[sha[origin]], problem = check_boxes(boxes, 40, 30, ann.classes)
            assert problem is None
    checked[sha["images/b.png"]] = []  # a background image
    table = box_table(checked)
    assert list(table.columns) == list(BOX_COLUMNS) and len(table) == 2
    manifest = pd.DataFrame({"sha256": list(sha.values()), "path": list(sha), "width": 40, "height": 30})
    doc = to_coco(table, manifest, ann.classes)
    assert [im["file_name"] for im in doc["images"]] == ["images/a.png", "images/b.png"]
    (root / "export.json").write_text(json.dumps(doc))
    again = read_annotations(root, "coco:export.json")
    table2 = box_table({sha[o]: bs for o, bs in again.boxes.items()})
    pd.testing.assert_frame_equal(table, table2)
    pd.testing.assert_frame_equal(table, from_coco(doc, sha))
    with pytest.raises(DataError, match="not in the class list"):
        to_coco(table, manifest, ["cat"])
