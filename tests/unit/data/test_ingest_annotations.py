"""run_ingest on annotated sources: COCO / YOLO / VOC to one annotation table, bad annotations quarantined with
their file and object, boxes follow EXIF orientation, COCO round trip, DetectionTask reads the result."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from cvplatform.data.annotated import BACKGROUND, table_path
from cvplatform.data.ingest import REASONS, run_ingest
from cvplatform.data.manifest import read_manifest
from cvplatform.errors import ConfigError, DataError, SourceError
from cvplatform.tasks import get_task
from cvplatform.tasks.detection.annotations import BOX_COLUMNS, to_coco
from tests.conftest import build_params

REPO = Path(__file__).resolve().parents[3]
CLASSES = ["cat", "dog"]
SIZE = (40, 30)  # width, height of every test image
#: image name -> boxes (class, x0, y0, x1, y1) in pixels; the largest box decides the label
BOXES: dict[str, list[tuple[str, float, float, float, float]]] = {
    "a": [("cat", 2, 3, 20, 15), ("dog", 22, 5, 38, 28)],
    "b": [("dog", 0, 0, 10, 10)],
    "c": [("cat", 5, 5, 35, 25)],
}


def _png(seed: int, size: tuple[int, int] = SIZE) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _images(src: Path, names=tuple(BOXES)) -> None:
    (src / "images").mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(names):
        (src / "images" / f"{name}.png").write_bytes(_png(k))


def _coco(src: Path, boxes=BOXES, extra_images=(), file="ann.json") -> None:
    images = [{"id": i + 1, "file_name": f"images/{n}.png", "width": SIZE[0], "height": SIZE[1]}
              for i, n in enumerate([*boxes, *extra_images])]
    ids = {im["file_name"]: im["id"] for im in images}
    anns = []
    for name, bl in boxes.items():
        for c, x0, y0, x1, y1 in bl:
            anns.append({"id": len(anns) + 1, "image_id": ids[f"images/{name}.png"], "category_id": CLASSES.index(c) + 1,
                         "bbox": [x0, y0, x1 - x0, y1 - y0], "iscrowd": 0})
    doc = {"images": images, "annotations": anns, "categories": [{"id": i + 1, "name": c} for i, c in enumerate(CLASSES)]}
    (src / file).write_text(json.dumps(doc))


def _yolo(src: Path, boxes=BOXES) -> None:
    (src / "labels").mkdir(parents=True, exist_ok=True)
    (src / "labels" / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    w, h = SIZE
    for name, bs in boxes.items():
        lines = [f"{CLASSES.index(c)} {(x0 + x1) / 2 / w} {(y0 + y1) / 2 / h} {(x1 - x0) / w} {(y1 - y0) / h}"
                 for c, x0, y0, x1, y1 in bs]
        (src / "labels" / f"{name}.txt").write_text("\n".join(lines) + "\n")


def _voc(src: Path, boxes=BOXES) -> None:
    (src / "xml").mkdir(parents=True, exist_ok=True)
    for name, bs in boxes.items():
        objs = "".join(f"<object><name>{c}</name><bndbox><xmin>{x0 + 1:g}</xmin><ymin>{y0 + 1:g}</ymin>"
                       f"<xmax>{x1:g}</xmax><ymax>{y1:g}</ymax></bndbox></object>" for c, x0, y0, x1, y1 in bs)
        (src / "xml" / f"{name}.xml").write_text(
            f"<annotation><filename>{name}.png</filename><size><width>{SIZE[0]}</width><height>{SIZE[1]}</height>"
            f"</size>{objs}</annotation>")


WRITERS = {"coco": (_coco, "coco:ann.json"), "yolo": (_yolo, "yolo:labels"), "voc": (_voc, "voc:xml")}


def _ingest(tmp_path: Path, src: Path, *overrides: str, name: str = "project"):
    root = tmp_path / name
    root.mkdir(exist_ok=True)
    result = run_ingest(build_params(f"ingest.source=folder:{src}", "ingest.workers=1", *overrides), root=root)
    return root, result


def _table(root: Path) -> pd.DataFrame:
    return pd.read_parquet(root / "data/processed/annotations.parquet")


def _report(root: Path) -> list[dict[str, str]]:
    with (root / "data/quarantine/report.csv").open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def _expected(root: Path) -> pd.DataFrame:
    """The table BOXES should give, keyed by the sha256 the manifest recorded for each image."""
    m = read_manifest(root / "data/processed/manifest.parquet")
    sha = {Path(o).stem: s for o, s in zip(m["origin"], m["sha256"], strict=True)}
    rows = [(sha[n], c, float(x0), float(y0), float(x1), float(y1), float((x1 - x0) * (y1 - y0)), False)
            for n, bs in BOXES.items() for c, x0, y0, x1, y1 in bs]
    df = pd.DataFrame(rows, columns=list(BOX_COLUMNS))
    return df.sort_values(["sha256", "y0", "x0", "class", "x1", "y1"]).reset_index(drop=True)


# --------------------------------------------------------------------------- formats
@pytest.mark.parametrize("fmt", sorted(WRITERS))
@pytest.mark.parametrize("spec", ["given", "auto"])
def test_each_format_ingests_to_the_same_table(tmp_path, fmt, spec):
    src = tmp_path / "src"
    _images(src)
    write, given = WRITERS[fmt]
    write(src)
    root, result = _ingest(tmp_path, src, f"ingest.annotations={given if spec == 'given' else 'auto'}")
    assert (result.seen, result.accepted, result.quarantined) == (3, 3, 0)  # the annotation files are not images
    assert result.annotation_source == given and result.boxes == 4 and result.boxes_by_class == {"cat": 2, "dog": 2}
    assert result.annotations == "data/processed/annotations.parquet" and result.background_images == 0
    pd.testing.assert_frame_equal(_table(root), _expected(root), check_exact=False, atol=1e-9)
    m = read_manifest(root / "data/processed/manifest.parquet")
    labels = {Path(o).stem: lab for o, lab in zip(m["origin"], m["label"], strict=True)}
    assert labels == {"a": "dog", "b": "dog", "c": "cat"}  # the class of the largest box (a: dog 16x23 > cat 18x12)
    assert set(m["annotations"]) == {"data/processed/annotations.parquet"}
    summary = json.loads((root / "artifacts/ingest/summary.json").read_text())
    assert summary["boxes"] == 4
    assert json.loads((root / "artifacts/ingest/metrics.json").read_text())["boxes"] == 4


def test_detection_project_finds_annotations_itself_and_splits_are_stable(tmp_path):
    src = tmp_path / "src"
    _images(src)
    _coco(src)
    root, result = _ingest(tmp_path, src, "project.task=detection", "train.monitor=val_map")
    assert result.annotation_source == "coco:ann.json" and result.accepted == 3
    first = read_manifest(root / "data/processed/manifest.parquet").set_index("sha256")["split"]
    (src / "images" / "d.png").write_bytes(_png(9))  # another image (no boxes) kept as background
    root, result = _ingest(tmp_path, src, "project.task=detection", "train.monitor=val_map", "ingest.keep_background=true")
    m = read_manifest(root / "data/processed/manifest.parquet").set_index("sha256")
    assert result.accepted == 4 and result.background_images == 1 and result.by_label[BACKGROUND] == 1
    assert (m.loc[first.index, "split"] == first).all()
    assert len(_table(root)) == 4  # the background image has no rows


def test_the_table_is_byte_identical_across_runs_and_worker_counts(tmp_path):
    src = tmp_path / "src"
    _images(src)
    _yolo(src)
    tables = []
    for k, workers in enumerate((1, 2, 1)):
        root, _ = _ingest(tmp_path, src, "ingest.annotations=yolo:labels", f"ingest.workers={workers}", name=f"p{k}")
        tables.append((root / "data/processed/annotations.parquet").read_bytes())
    assert tables[0] == tables[1] == tables[2]


def test_classification_ingest_writes_an_empty_table_and_no_annotations_column(tmp_path):
    src = tmp_path / "src"
    for k, cls in enumerate(["cat", "cat", "dog"]):
        (src / cls).mkdir(parents=True, exist_ok=True)
        (src / cls / f"{k}.png").write_bytes(_png(k))
    root, result = _ingest(tmp_path, src)
    assert result.accepted == 3 and result.annotation_source == "" and result.boxes == 0
    assert "annotations" not in read_manifest(root / "data/processed/manifest.parquet").columns
    table = _table(root)
    assert list(table.columns) == list(BOX_COLUMNS) and table.empty


def test_metadata_csv_of_an_annotated_folder(tmp_path):
    src = tmp_path / "src"
    _images(src)
    _coco(src)
    (src / "meta.csv").write_text("path,camera\nimages/a.png,north\nimages/b.png,south\nimages/gone.png,east\n")
    root, result = _ingest(tmp_path, src, "ingest.annotations=coco:ann.json", "ingest.labels_csv=meta.csv")
    m = read_manifest(root / "data/processed/manifest.parquet")
    cams = {Path(o).stem: c for o, c in zip(m["origin"], m["camera"].fillna("-"), strict=True)}
    assert cams == {"a": "north", "b": "south", "c": "-"} and result.metadata_columns == ["camera"]
    (row,) = _report(root)
    assert (row["file"], row["reason"]) == ("images/gone.png", "missing_file") and "meta.csv line 4" in row["detail"]
    (src / "meta.csv").write_text("path,label\nimages/a.png,cat\n")
    with pytest.raises(SourceError, match=r"meta.csv: metadata column\(s\) \['label'\] clash"):
        _ingest(tmp_path, src, "ingest.annotations=coco:ann.json", "ingest.labels_csv=meta.csv")


# --------------------------------------------------------------------------- bad annotations
def _bad_yolo_corpus(src: Path) -> dict[str, tuple[str, str]]:
    """A YOLO source with one fault per image; returns quarantine file -> (reason, text its detail names)."""
    names = ["ok", "overhang", "outside", "flat", "unknown", "short", "empty", "twice"]
    _images(src, names)
    (src / "labels").mkdir()
    (src / "labels" / "classes.txt").write_text("cat\ndog\n")
    lines = {
        "ok": "0 0.5 0.5 0.5 0.5",
        "overhang": "1 0.5 0.5 1.02 0.5",  # 0.4 px over each side of 40: clipped (tolerance 2 % = 0.8 px)
        "outside": "0 0.9 0.5 0.5 0.5",  # 8 px over the right edge
        "flat": "0 0.5 0.5 0 0.5",
        "unknown": "0 0.5 0.5 0.2 0.2\n7 0.5 0.5 0.2 0.2",
        "short": "0 0.5 0.5 0.2",
        "empty": "",
        "twice": "0 0.5 0.5 x 0.2\n1 0.5 0.5 0.2",
        "ghost": "0 0.5 0.5 0.2 0.2",  # no image ghost.*
    }
    for name, text in lines.items():
        (src / "labels" / f"{name}.txt").write_text(text + "\n")
    return {
        "images/outside.png": ("box_outside", "labels/outside.txt line 1"),
        "images/flat.png": ("box_degenerate", "labels/flat.txt line 1"),
        "images/unknown.png": ("unknown_class", "labels/unknown.txt line 2: '#7'"),
        "images/short.png": ("malformed_annotation", "labels/short.txt line 1: 4 fields"),
        "images/empty.png": ("no_boxes", "keep_background"),
        "images/twice.png": ("malformed_annotation", "labels/twice.txt line 2"),
        "labels/ghost.txt": ("annotation_without_image", "no image named ghost"),
    }


def test_every_bad_annotation_is_quarantined_with_its_file_and_object(tmp_path):
    src = tmp_path / "src"
    expected = _bad_yolo_corpus(src)
    root, result = _ingest(tmp_path, src, "ingest.annotations=yolo:labels")
    report = {r["file"]: r for r in _report(root)}
    assert {f: r["reason"] for f, r in report.items()} == {f: reason for f, (reason, _) in expected.items()}
    for f, (_, named) in expected.items():
        assert named in report[f]["detail"], (f, report[f]["detail"])
    assert "labels/twice.txt line 1" in report["images/twice.png"]["detail"]  # both bad objects are named
    assert set(result.by_reason) <= set(REASONS)
    assert result.seen == result.accepted + result.quarantined + result.duplicates
    assert (result.accepted, result.quarantined) == (2, 7)
    assert report["labels/ghost.txt"]["stored"].endswith("-ghost.txt")  # the annotation file is kept for review
    table = _table(root).set_index("class")
    assert table.loc["dog", ["x0", "x1"]].tolist() == [0.0, 40.0]  # the small overhang was clipped


def test_broken_annotation_files_and_missing_images(tmp_path):
    src = tmp_path / "src"
    _images(src, ["a", "b"])
    _voc(src, {"a": BOXES["a"], "b": BOXES["b"]})
    (src / "xml" / "broken.xml").write_text("<annotation><object>")
    (src / "xml" / "b.xml").write_text((src / "xml" / "b.xml").read_text().replace("<width>40", "<width>400"))
    root, result = _ingest(tmp_path, src, "ingest.annotations=voc:xml")
    report = {r["file"]: r for r in _report(root)}
    assert report["xml/broken.xml"]["reason"] == "malformed_annotation"
    assert "xml/broken.xml: not a VOC annotation" in report["xml/broken.xml"]["detail"]
    assert report["images/b.png"]["reason"] == "malformed_annotation"
    assert "declares images/b.png as 400x30" in report["images/b.png"]["detail"]
    assert result.accepted == 1

    coco_src = tmp_path / "coco"
    _images(coco_src, ["a"])
    _coco(coco_src, {"a": BOXES["a"], "gone": [("cat", 1, 1, 5, 5)]})
    root, result = _ingest(tmp_path, coco_src, "ingest.annotations=coco:ann.json", name="p2")
    (row,) = _report(root)
    assert (row["file"], row["reason"]) == ("ann.json", "annotation_without_image")
    assert "'images/gone.png' (1 box(es)) is not in the source" in row["detail"]
    assert result.seen == result.accepted + result.quarantined == 2


def test_an_unusable_annotation_source_fails_clearly(tmp_path):
    src = tmp_path / "src"
    _images(src)
    with pytest.raises(DataError, match=r"no annotations found.*ingest.annotations"):
        _ingest(tmp_path, src, "ingest.annotations=auto")
    with pytest.raises(DataError, match=r"nope.json does not exist"):
        _ingest(tmp_path, src, "ingest.annotations=coco:nope.json")
    with pytest.raises(ConfigError, match=r"ingest.annotations.*'pascal:xml'.*coco:PATH"):
        build_params("ingest.annotations=pascal:xml")


# --------------------------------------------------------------------------- geometry
@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_boxes_follow_the_exif_rotation_of_the_pixels(tmp_path, orientation):
    """A green box drawn into a stored 40x30 image with EXIF orientation: after ingest the table's box holds the
    green pixels of the stored (rotated) PNG."""
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    img = Image.new("RGB", SIZE, (200, 30, 30))
    img.paste((20, 220, 20), (4, 2, 14, 22))  # x0, y0, x1, y1
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(src / "images" / "r.png", "PNG", exif=exif.tobytes())
    _coco(src, {"r": [("cat", 4, 2, 14, 22)]})
    root, result = _ingest(tmp_path, src, "ingest.annotations=coco:ann.json")
    assert result.accepted == 1
    row = read_manifest(root / "data/processed/manifest.parquet").iloc[0]
    pixels = np.asarray(Image.open(root / row["path"]).convert("RGB"))
    x0, y0, x1, y1 = (int(v) for v in _table(root).loc[0, ["x0", "y0", "x1", "y1"]])
    green = (pixels[:, :, 1] > 150) & (pixels[:, :, 0] < 100)
    ys, xs = np.nonzero(green)
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x0, y0, x1, y1)
    assert (row["width"], row["height"]) == ((30, 40) if orientation in (6, 8) else (40, 30))


def test_import_export_import_gives_the_same_table(tmp_path):
    src = tmp_path / "src"
    _images(src)
    _yolo(src)
    root, _ = _ingest(tmp_path, src, "ingest.annotations=yolo:labels")
    table = _table(root)
    manifest = read_manifest(root / "data/processed/manifest.parquet")
    doc = to_coco(table, manifest, CLASSES)
    again = tmp_path / "again"
    for p in manifest["path"]:
        (again / p).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / p, again / p)
    (again / "exported.json").write_text(json.dumps(doc))
    root2, result = _ingest(tmp_path, again, "ingest.annotations=coco:exported.json", name="p2")
    assert result.accepted == 3
    pd.testing.assert_frame_equal(_table(root2), table)


def test_detection_task_reads_the_written_manifest(tmp_path, monkeypatch):
    src = tmp_path / "src"
    _images(src)
    _voc(src)
    root, _ = _ingest(tmp_path, src, "project.task=detection", "train.monitor=val_map")
    monkeypatch.chdir(root)  # the annotations column is relative to the project root
    task = get_task("detection")
    table = _table(root)
    index = {c: i for i, c in enumerate(CLASSES)}
    for row in read_manifest(root / "data/processed/manifest.parquet").to_dict("records"):
        target = task.target_of(row, index)
        mine = table[table["sha256"] == row["sha256"]]
        np.testing.assert_allclose(target["boxes"], mine[["x0", "y0", "x1", "y1"]].to_numpy(np.float32))
        assert target["labels"].tolist() == [index[c] for c in mine["class"]]


# --------------------------------------------------------------------------- the scenes source
def test_scenes_source_writes_images_and_their_boxes(tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    params = build_params("ingest.source=scenes", "ingest.scenes.count=6", "ingest.scenes.size=48",
                          "ingest.scenes.max_objects=3", "ingest.workers=1")
    result = run_ingest(params, root=root)
    coco = json.loads((root / "data/sources/scenes/annotations.json").read_text())
    assert (result.accepted, result.quarantined, result.boxes) == (6, 0, len(coco["annotations"]))
    assert result.annotation_source == "coco:annotations.json" and result.source == "scenes"
    m = read_manifest(root / "data/processed/manifest.parquet")
    assert {"background", "lighting", "object_size", "objects", "occluded", "annotations"} <= set(m.columns)
    table = _table(root)
    counts = table.groupby("sha256").size()
    assert all(counts.get(s, 0) == int(n) for s, n in zip(m["sha256"], m["objects"], strict=True))
    smaller = run_ingest(build_params("ingest.source=configs/sources/scenes.yaml", "ingest.scenes.count=3",
                                      "ingest.scenes.size=48", "ingest.workers=1"), root=_with_spec(root))
    assert smaller.accepted == 3  # regenerated afresh: no image of the larger run is left behind


def _with_spec(root: Path) -> Path:
    (root / "configs/sources").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(REPO / "configs/sources/scenes.yaml", root / "configs/sources/scenes.yaml")
    return root


def test_dvc_tracks_the_table_where_ingest_writes_it():
    from cvplatform.config import load_params

    params = load_params(REPO / "params.yaml")
    outs = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["ingest"]["outs"]
    names = [o if isinstance(o, str) else next(iter(o)) for o in outs]
    assert table_path(Path(params.project.manifest)).as_posix() in names
