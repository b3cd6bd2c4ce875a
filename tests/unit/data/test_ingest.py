"""run_ingest on a malformed-input corpus: every file's exact outcome, normalisation, determinism."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cvplatform.data.ingest import (
    REASONS,
    IngestResult,
    Rejected,
    label_dirname,
    normalise_image,
    run_ingest,
)
from cvplatform.data.manifest import CORE_COLUMNS, read_manifest
from cvplatform.errors import DataError, SourceError
from tests.conftest import build_params
from tests.fixtures.corpus import (
    ACCEPTED,
    DUPLICATE,
    build_corpus,
    build_csv_corpus,
    draw_face,
    huge_png_header,
    png_bytes,
    png_chunk_types,
    random_rgb,
)


def _tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every regular file under root (symlinks skipped), to prove the source is untouched."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def _report(root: Path) -> list[dict[str, str]]:
    with (root / "data/quarantine/report.csv").open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def _outcomes(root: Path) -> dict[str, str]:
    """origin -> accepted | duplicate | reason, reconstructed from the three outputs."""
    out: dict[str, str] = {}
    manifest = read_manifest(root / "data/processed/manifest.parquet")
    for origin in manifest["origin"]:
        out[origin] = ACCEPTED
    with (root / "artifacts/ingest/duplicates.csv").open(encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            assert row["file"] not in out
            out[row["file"]] = DUPLICATE
    for row in _report(root):
        assert row["file"] not in out, f"{row['file']} has two outcomes"
        out[row["file"]] = row["reason"]
    return out


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory):
    """Ingest the ImageFolder corpus once (workers=1) and share the outputs between tests."""
    base = tmp_path_factory.mktemp("corpus")
    corpus = build_corpus(base)
    root = base / "project"
    root.mkdir()
    before = _tree_hashes(corpus.root)
    params = build_params(f"ingest.source=folder:{corpus.root}", "ingest.workers=1")
    result = run_ingest(params, root=root)
    return corpus, root, result, before


def _row(root: Path, origin: str) -> pd.Series:
    df = read_manifest(root / "data/processed/manifest.parquet")
    rows = df[df["origin"] == origin]
    assert len(rows) == 1, origin
    return rows.iloc[0]


def _pixels(root: Path, origin: str) -> np.ndarray:
    return np.asarray(Image.open(root / _row(root, origin)["path"]))


# --------------------------------------------------------------------------- corpus outcomes
def test_every_corpus_file_gets_its_exact_outcome(corpus_run):
    corpus, root, result, _ = corpus_run
    assert _outcomes(root) == corpus.expected()


def test_counts_balance_and_match_the_corpus(corpus_run):
    corpus, root, result, _ = corpus_run
    expected = corpus.by_outcome()
    assert isinstance(result, IngestResult)
    assert result.seen == len(corpus.cases)
    assert result.seen == result.accepted + result.quarantined + result.duplicates
    assert result.accepted == expected[ACCEPTED]
    assert result.duplicates == expected[DUPLICATE]
    assert result.by_reason == {k: v for k, v in sorted(expected.items()) if k not in (ACCEPTED, DUPLICATE)}
    assert set(result.by_reason) <= set(REASONS)
    accepted_labels = [c.label for c in corpus.cases if c.outcome == ACCEPTED]
    assert result.by_label == {lab: accepted_labels.count(lab) for lab in sorted(set(accepted_labels))}
    assert set(result.by_label) == {"cats", "chiens d'été", "dogs"}
    assert sum(result.by_split.values()) == result.accepted
    summary = json.loads((root / "artifacts/ingest/summary.json").read_text())
    assert summary["stage"] == "ingest"
    assert (summary["seen"], summary["accepted"], summary["quarantined"], summary["duplicates"]) == (
        result.seen, result.accepted, result.quarantined, result.duplicates)
    assert summary["by_reason"] == result.by_reason
    text = "\n".join(result.lines())
    assert f"seen {result.seen} = accepted {result.accepted}" in text and "label_conflict=2" in text


def test_quarantine_keeps_original_bytes_and_never_touches_the_source(corpus_run):
    corpus, root, _, before = corpus_run
    assert _tree_hashes(corpus.root) == before  # nothing deleted, moved or modified
    rows = _report(root)
    assert rows == sorted(rows, key=lambda r: (r["file"], r["reason"], r["detail"], r["label"], r["stored"]))
    for row in rows:
        if row["reason"] in ("path_escape", "missing_file"):
            assert row["stored"] == ""  # bytes outside the root are never copied
            continue
        stored = root / row["stored"]
        assert stored.is_file(), row
        assert stored.parent.name == row["reason"]
        assert stored.read_bytes() == (corpus.root / row["file"]).read_bytes(), row
    assert not any("secret" in p.name for p in (root / "data").rglob("*"))
    conflict = {r["file"]: r for r in rows if r["reason"] == "label_conflict"}
    assert "dogs/conflict.png" in conflict["cats/conflict.png"]["detail"]
    assert "['cats', 'dogs']" in conflict["dogs/conflict.png"]["detail"]
    huge = next(r for r in rows if r["file"] == "cats/huge.png")
    assert "100000" in huge["detail"]


def test_manifest_rows_point_at_normalised_pngs(corpus_run):
    _, root, result, _ = corpus_run
    df = read_manifest(root / "data/processed/manifest.parquet")
    assert list(df.columns) == list(CORE_COLUMNS)  # ImageFolder layout: no metadata columns
    assert len(df) == result.accepted and df["sha256"].is_unique
    for row in df.itertuples():
        data = (root / row.path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == row.sha256
        assert row.path == f"data/raw/{label_dirname(row.label)}/{row.sha256}.png"
        assert png_chunk_types(data) == ["IHDR", "IDAT", "IEND"]  # no eXIf/iCCP/tEXt/pHYs survives
        img = Image.open(root / row.path)
        assert img.mode == "RGB" and img.size == (row.width, row.height) and row.channels == 3
        assert row.split in ("train", "val", "test")
        assert row.source.startswith("folder:")
    assert set(df["label"]) == {"cats", "dogs", "chiens d'été"}
    assert {p.name for p in (root / "data/raw").iterdir()} == {label_dirname(x) for x in df["label"]}
    assert label_dirname("chiens d'été") != "chiens d'été"  # sanitised on disk, exact in the manifest
    assert _row(root, "cats/really_a_png.jpg")["format"] == "PNG"
    assert _row(root, "cats/cmyk.jpg")["format"] == "JPEG"


def test_exif_orientation_is_applied_and_metadata_stripped(corpus_run):
    _, root, _, _ = corpus_run
    row = _row(root, "dogs/rotated.jpg")
    assert (row["width"], row["height"]) == (16, 32)  # 32x16 rotated by orientation 6
    img = Image.open(root / row["path"])
    assert not img.getexif() and "exif" not in img.info and "icc_profile" not in img.info
    px = np.asarray(img).astype(int)
    # the left (red) half of the original is on top after a 90 degree clockwise rotation
    assert px[4, 8, 0] > 150 and px[4, 8, 2] < 100
    assert px[28, 8, 2] > 150 and px[28, 8, 0] < 100
    gps = Image.open(root / _row(root, "dogs/gps.jpg")["path"])
    assert (gps.width, gps.height) == (32, 16) and not gps.getexif()
    assert "icc_profile" not in Image.open(root / _row(root, "cats/with_icc.jpg")["path"]).info


def test_pixel_formats_are_converted_to_rgb(corpus_run):
    _, root, _, _ = corpus_run
    rgba = _pixels(root, "cats/rgba.png")
    assert (rgba[:, :8] == 255).all()  # transparent half composited on white
    assert (rgba[:, 8:] == [0, 0, 255]).all()
    sixteen = _pixels(root, "cats/sixteen.png")
    assert (sixteen[..., 0] == sixteen[..., 1]).all() and (sixteen[..., 1] == sixteen[..., 2]).all()
    assert sixteen[0, 0, 0] == 0 and sixteen[15, 15, 0] == 255  # scaled, not clipped
    assert np.array_equal(sixteen[..., 0].ravel(), np.arange(256))  # v*257 -> v exactly
    gray = _pixels(root, "cats/gray.png")
    assert (gray[..., 0] == gray[..., 2]).all()
    cmyk = _pixels(root, "cats/cmyk.jpg").astype(int)
    assert cmyk[..., 0].mean() > 200 and cmyk[..., 1].mean() < 60  # CMYK (0,255,255,0) is red
    pal = _pixels(root, "cats/palette.png")
    assert {tuple(v) for v in pal.reshape(-1, 3)} <= {(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)}


# --------------------------------------------------------------------------- determinism
def test_rerun_and_worker_count_give_byte_identical_outputs(tmp_path):
    corpus = build_corpus(tmp_path)
    root = tmp_path / "project"
    root.mkdir()
    source = f"ingest.source=folder:{corpus.root}"

    def snapshot() -> tuple[bytes, bytes, bytes, dict[str, str]]:
        return (
            (root / "data/processed/manifest.parquet").read_bytes(),
            (root / "data/quarantine/report.csv").read_bytes(),
            (root / "artifacts/ingest/duplicates.csv").read_bytes(),
            _tree_hashes(root / "data/raw"),
        )

    first = run_ingest(build_params(source, "ingest.workers=1"), root=root)
    one = snapshot()
    (root / "data/raw/stale.txt").write_text("left over from an older run")
    run_ingest(build_params(source, "ingest.workers=1"), root=root)
    assert snapshot() == one  # outputs rebuilt from scratch, byte for byte
    second = run_ingest(build_params(source, "ingest.workers=2"), root=root)
    assert snapshot() == one
    assert first.to_dict() == second.to_dict()


# --------------------------------------------------------------------------- layouts and sources
def test_labels_csv_layout_with_metadata_columns(tmp_path, project_root):
    corpus = build_csv_corpus(tmp_path)
    params = build_params(f"ingest.source=folder:{corpus.root}", f"ingest.labels_csv={corpus.labels_csv}",
                          "ingest.workers=1")
    result = run_ingest(params, root=project_root)
    assert _outcomes(project_root) == corpus.expected()
    assert result.seen == len(corpus.cases) == result.accepted + result.quarantined + result.duplicates
    df = read_manifest(project_root / "data/processed/manifest.parquet")
    assert list(df.columns) == [*CORE_COLUMNS, "camera", "site"]
    assert result.metadata_columns == ["camera", "site"]
    by_origin = df.set_index("origin")
    assert by_origin.loc["img/a.png", ["label", "camera", "site"]].tolist() == ["cat", "a", "north"]
    assert by_origin.loc["img/sub/c d.png", "camera"] == "c"
    assert pd.isna(by_origin.loc["img/b.png", "site"])  # empty CSV cell -> null, not ""
    assert not (project_root / "data/quarantine").joinpath("path_escape").exists()


def test_folder_path_is_relative_to_the_project_root(tmp_path, project_root):
    incoming = project_root / "incoming" / "cats"
    incoming.mkdir(parents=True)
    (incoming / "a.png").write_bytes(png_bytes(random_rgb(1)))
    result = run_ingest(build_params("ingest.source=folder:incoming", "ingest.workers=1"), root=project_root)
    assert result.accepted == 1 and result.source == "folder:incoming"


def test_data_raw_holds_exactly_the_manifest_images(corpus_run):
    # images are written straight into their label's folder: a label conflict's copies (cats and dogs) and a
    # duplicate leave no file behind, and no temporary or incoming name survives
    _, root, _, _ = corpus_run
    df = read_manifest(root / "data/processed/manifest.parquet")
    files = {p.relative_to(root).as_posix() for p in (root / "data/raw").rglob("*") if not p.is_dir()}
    assert files == set(df["path"])


@pytest.mark.parametrize("workers", [1, 2])
def test_a_label_whose_every_file_is_rejected_leaves_no_folder(project_root, workers):
    src = project_root / "incoming"
    for label in ("cats", "broken"):
        (src / label).mkdir(parents=True)
    (src / "cats" / "a.png").write_bytes(png_bytes(random_rgb(1)))
    (src / "cats" / "b.png").write_bytes(png_bytes(random_rgb(1)))  # same content, same label: a duplicate
    (src / "broken" / "x.png").write_bytes(b"not an image")
    (src / "broken" / "y.png").write_bytes(png_bytes(random_rgb(2)))
    (src / "cats" / "y.png").write_bytes(png_bytes(random_rgb(2)))  # same content, another label: conflict
    result = run_ingest(build_params("ingest.source=folder:incoming", f"ingest.workers={workers}"),
                        root=project_root)
    assert (result.accepted, result.duplicates, result.by_reason) == (1, 1, {"label_conflict": 2, "undecodable": 1})
    raw = project_root / "data/raw"
    assert [p.relative_to(raw).as_posix() for p in sorted(raw.rglob("*"))] == [
        "cats", f"cats/{read_manifest(project_root / 'data/processed/manifest.parquet')['sha256'][0]}.png"]


def test_shapes_source_has_metadata_columns(project_root):
    params = build_params("ingest.source=shapes", "ingest.shapes.count=12", "ingest.shapes.size=32",
                          "ingest.shapes.classes=[circle, square, star]", "ingest.workers=1")
    result = run_ingest(params, root=project_root)
    assert result.accepted == 12 and result.by_label == {"circle": 4, "square": 4, "star": 4}
    df = read_manifest(project_root / "data/processed/manifest.parquet")
    for col, allowed in {"background": {"plain", "gradient", "noise"}, "lighting": {"bright", "normal", "dim"},
                         "camera": {"a", "b", "c"}}.items():
        assert set(df[col]) <= allowed and df[col].notna().all()
    assert set(df["origin"].str.slice(0, 7)) == {"images/"}
    assert (df["width"] == 32).all() and (df["height"] == 32).all()


def test_digits_source_has_ten_classes_at_the_configured_size(project_root):
    params = build_params("ingest.source=digits", "ingest.digits.limit=20", "ingest.digits.size=16",
                          "ingest.workers=1")
    result = run_ingest(params, root=project_root)
    assert result.accepted == 20 and result.quarantined == 0
    assert result.by_label == {str(d): 2 for d in range(10)}
    df = read_manifest(project_root / "data/processed/manifest.parquet")
    assert set(df["width"]) == {16} and set(df["height"]) == {16} and set(df["source"]) == {"digits"}


def test_added_images_never_move_existing_ones_between_splits(tmp_path, project_root):
    src = tmp_path / "grow"
    for i in range(40):
        (src / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        (src / f"c{i % 2}" / f"{i}.png").write_bytes(png_bytes(random_rgb(100 + i, (8, 8))))
    params = build_params(f"ingest.source=folder:{src}", "ingest.workers=1")
    run_ingest(params, root=project_root)
    old = read_manifest(project_root / "data/processed/manifest.parquet").set_index("sha256")["split"]
    for i in range(40, 80):
        (src / f"c{i % 2}" / f"{i}.png").write_bytes(png_bytes(random_rgb(100 + i, (8, 8))))
    run_ingest(params, root=project_root)
    new = read_manifest(project_root / "data/processed/manifest.parquet").set_index("sha256")["split"]
    assert len(new) == 80 and set(old.index) <= set(new.index)
    assert (new.loc[old.index] == old).all()


# --------------------------------------------------------------------------- privacy inside ingest
def test_faces_are_redacted_before_storage(tmp_path, project_root):
    src = tmp_path / "people" / "person"
    src.mkdir(parents=True)
    (src / "face.png").write_bytes(png_bytes(draw_face(96)))
    (src / "plain.png").write_bytes(png_bytes(random_rgb(3, (32, 32))))
    result = run_ingest(build_params(f"ingest.source=folder:{src.parent}", "ingest.workers=1",
                                     "ingest.privacy.redact_faces=true"), root=project_root)
    assert result.accepted == 2 and result.redacted_faces == 1
    df = read_manifest(project_root / "data/processed/manifest.parquet").set_index("origin")
    stored = np.asarray(Image.open(project_root / df.loc["person/face.png", "path"])).astype(int)
    original = np.asarray(draw_face(96)).astype(int)
    assert np.abs(stored[30:70, 25:70] - original[30:70, 25:70]).mean() > 10  # eyes/mouth region changed
    plain = np.asarray(Image.open(project_root / df.loc["person/plain.png", "path"]))
    assert np.array_equal(plain, np.asarray(random_rgb(3, (32, 32))))
    assert "faces redacted: 1" in "\n".join(result.lines())


# --------------------------------------------------------------------------- normalise_image directly
def test_too_large_is_decided_from_the_header_before_decoding():
    # 300x300 declared, almost no pixel data: decoding would fail, so "too_large" proves the order
    with pytest.raises(Rejected) as e:
        normalise_image(huge_png_header(300, 300), max_pixels=50_000, min_side=8)
    assert e.value.reason == "too_large" and "90000" in e.value.detail and "max_pixels = 50000" in e.value.detail
    with pytest.raises(Rejected) as e:  # far above: Pillow's DecompressionBombError, mapped
        normalise_image(huge_png_header(), max_pixels=1_000, min_side=8)
    assert e.value.reason == "too_large"
    ok = normalise_image(png_bytes(random_rgb(0, (20, 20))), max_pixels=400, min_side=8)
    assert (ok.width, ok.height) == (20, 20)


def test_normalised_png_is_identity_of_the_pixels():
    img = random_rgb(7, (12, 10))
    a = normalise_image(png_bytes(img), max_pixels=10_000, min_side=8)
    b = normalise_image(png_bytes(img, compress_level=9), max_pixels=10_000, min_side=8)
    assert a.png == b.png and a.sha256 == b.sha256 == hashlib.sha256(a.png).hexdigest()
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(a.png))), np.asarray(img))


def test_sixteen_bit_outside_range_and_odd_modes():
    i32 = Image.fromarray(np.full((10, 10), 70_000, dtype=np.int32))  # mode I beyond 16 bits
    buf = io.BytesIO()
    i32.save(buf, "TIFF")
    with pytest.raises(Rejected) as e:
        normalise_image(buf.getvalue(), max_pixels=10_000, min_side=8)
    assert e.value.reason == "unsupported_mode" and "65535" in e.value.detail
    la = Image.new("LA", (10, 10), (0, 0))  # fully transparent black -> white
    out = normalise_image(png_bytes(la), max_pixels=10_000, min_side=8)
    assert (np.asarray(Image.open(io.BytesIO(out.png))) == 255).all()
    pal = Image.new("P", (10, 10), 1)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pal.putpixel((0, 0), 0)
    out = np.asarray(Image.open(io.BytesIO(normalise_image(
        png_bytes(pal, transparency=0), max_pixels=10_000, min_side=8).png)))
    assert (out[0, 0] == 255).all() and (out[5, 5] == [10, 200, 30]).all()  # tRNS index -> white
    bilevel = Image.new("1", (10, 10), 1)
    out = np.asarray(Image.open(io.BytesIO(normalise_image(png_bytes(bilevel), max_pixels=10_000, min_side=8).png)))
    assert out.shape == (10, 10, 3) and (out == 255).all()


# --------------------------------------------------------------------------- failures
def test_unknown_source_lists_valid_forms(project_root):
    with pytest.raises(SourceError) as e:
        run_ingest(build_params("ingest.source=ftp://x"), root=project_root)
    assert "ftp://x" in str(e.value) and "folder:PATH" in str(e.value) and "s3://bucket/prefix" in str(e.value)


def test_missing_and_empty_folders_fail_clearly(tmp_path, project_root):
    with pytest.raises(SourceError, match="does not exist"):
        run_ingest(build_params(f"ingest.source=folder:{tmp_path / 'nope'}"), root=project_root)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no files found"):
        run_ingest(build_params(f"ingest.source=folder:{tmp_path / 'empty'}"), root=project_root)


def test_source_overlapping_outputs_is_refused(project_root):
    (project_root / "data/raw/cats").mkdir(parents=True)
    (project_root / "data/raw/cats/a.png").write_bytes(png_bytes(random_rgb(1)))
    for spec in ("folder:data/raw", "folder:."):
        with pytest.raises(SourceError, match="ingest output"):
            run_ingest(build_params(f"ingest.source={spec}"), root=project_root)
    assert (project_root / "data/raw/cats/a.png").exists()  # refused before anything was cleared


def test_nothing_accepted_raises_after_writing_the_report(tmp_path, project_root):
    src = tmp_path / "bad" / "cats"
    src.mkdir(parents=True)
    (src / "a.jpg").write_bytes(b"")
    (src / "b.jpg").write_bytes(b"not an image")
    with pytest.raises(DataError, match="none of the 2 file"):
        run_ingest(build_params(f"ingest.source=folder:{src.parent}", "ingest.workers=1"), root=project_root)
    assert {r["reason"] for r in _report(project_root)} == {"empty_file", "undecodable"}
    summary = json.loads((project_root / "artifacts/ingest/summary.json").read_text())
    assert summary["seen"] == 2 and summary["quarantined"] == 2
    assert not (project_root / "data/processed/manifest.parquet").exists()


def test_label_dirname_is_safe_and_injective():
    names = ["cat", "cat dog", "cat_dog", "../etc", ".hidden", "ünï", "a/b", "a\\b", ""]
    dirs = [label_dirname(n) for n in names]
    assert len(set(dirs)) == len(dirs)
    for d in dirs:
        assert d and "/" not in d and "\\" not in d and not d.startswith(".") and d.isascii()
    assert label_dirname("cat") == "cat" and label_dirname("7") == "7"
