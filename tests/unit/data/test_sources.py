"""Source specs, folder/CSV listing, and the built-in digits and shapes generators."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cvplatform.config import DigitsParams, IngestParams, ShapesParams
from cvplatform.data.sources import list_folder, normalise_label, open_source, parse_source
from cvplatform.data.synthetic import generate_shapes, render_shape, write_digits
from cvplatform.errors import ConfigError, SourceError
from cvplatform.utils.io import ProjectPaths


def _digest_tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- specs
@pytest.mark.parametrize(
    ("spec", "kind", "path", "bucket", "prefix"),
    [
        ("digits", "digits", None, None, ""),
        ("shapes", "shapes", None, None, ""),
        ("folder:data/in", "folder", "data/in", None, ""),
        ("folder:/abs/path with space", "folder", "/abs/path with space", None, ""),
        ("data/in", "folder", "data/in", None, ""),
        ("/abs/path", "folder", "/abs/path", None, ""),
        ("configs/sources/digits.yaml", "builtin_file", "configs/sources/digits.yaml", None, ""),
        ("s3://bucket", "s3", None, "bucket", ""),
        ("s3://my.bucket-1/a/b/", "s3", None, "my.bucket-1", "a/b"),
    ],
)
def test_parse_source_valid_forms(spec, kind, path, bucket, prefix):
    s = parse_source(spec)
    assert (s.kind, s.path, s.bucket, s.prefix) == (kind, path, bucket, prefix)


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("ftp://host/x", "Valid forms: PATH (or folder:PATH) | s3://bucket/prefix | digits | shapes"),
        ("", "empty folder path"),
        ("folder:", "empty folder path"),
        ("s3://", "not a valid S3 bucket name"),
        ("s3://Bad_Bucket/x", "not a valid S3 bucket name"),
        ("s3://bucket/a/../b", "'..'"),
    ],
)
def test_parse_source_rejects_with_a_clear_message(spec, needle):
    with pytest.raises(SourceError) as e:
        parse_source(spec)
    assert needle in str(e.value)


def test_an_unknown_name_is_a_missing_folder_listing_the_valid_forms(tmp_path):
    with pytest.raises(SourceError) as e:
        open_source(IngestParams(source="mnist"), ProjectPaths.at(tmp_path))
    assert "mnist" in str(e.value) and "does not exist" in str(e.value) and "s3://bucket/prefix" in str(e.value)


@pytest.mark.parametrize(("spec", "location"), [
    ("folder:/data/cams", "/data/cams"), ("data/in", "data/in"), ("digits", "configs/sources/digits.yaml"),
    ("shapes", "configs/sources/shapes.yaml"), ("s3://bkt/p/", "s3://bkt/p/"),
    ("configs/sources/shapes.yaml", "configs/sources/shapes.yaml"),
])
def test_dvc_location_is_a_path_dvc_can_track(spec, location):
    from cvplatform.data.sources import dvc_location

    assert dvc_location(spec) == location


def test_builtin_spec_files_generate_the_same_as_their_names(tmp_path):
    import shutil

    shutil.copytree(Path(__file__).resolve().parents[3] / "configs" / "sources", tmp_path / "configs" / "sources")
    paths = ProjectPaths.at(tmp_path)
    small = {"digits": DigitsParams(limit=20, size=16)}
    by_file = open_source(IngestParams(source="configs/sources/digits.yaml", **small), paths)
    by_name = open_source(IngestParams(source="digits", **small), paths)
    assert by_file.spec.kind == by_name.spec.kind == "digits" and by_file.spec.spec == "digits"
    assert [i.origin for i in by_file.items] == [i.origin for i in by_name.items]
    (tmp_path / "configs/sources/bad.yaml").write_text("builtin: mnist\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        open_source(IngestParams(source="configs/sources/bad.yaml"), paths)
    with pytest.raises(SourceError, match="does not exist"):
        open_source(IngestParams(source="configs/sources/nope.yaml"), paths)


def test_normalise_label_nfc_and_strip():
    decomposed = "e\u0301te\u0301"  # "été" in NFD (as macOS writes file names)
    assert normalise_label(f"  {decomposed} ") == "été"
    assert normalise_label("   ") is None and normalise_label(None) is None


# --------------------------------------------------------------------------- folder listing
def test_image_folder_listing(tmp_path):
    root = tmp_path / "src"
    for rel in ("cats/a.png", "cats/deep/er/b.png", "dogs/c.png", "top.png"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"y")
    os.symlink(outside, root / "dogs/out.png")
    os.symlink(root / "cats/a.png", root / "dogs/in.png")  # inside the root: read normally
    os.symlink(root / "gone.png", root / "dogs/broken.png")  # dangling, inside the root
    os.symlink(tmp_path / "gone.png", root / "dogs/broken_out.png")  # dangling, outside: escape
    os.symlink(root / "cats", root / "alias")  # symlinked folder inside the root: not descended
    items, meta = list_folder(root)
    got = {i.origin: (i.label, i.reason) for i in items}
    assert got == {
        "cats/a.png": ("cats", None),
        "cats/deep/er/b.png": ("cats", None),
        "dogs/c.png": ("dogs", None),
        "dogs/in.png": ("dogs", None),
        "dogs/out.png": ("dogs", "path_escape"),
        "dogs/broken.png": ("dogs", "missing_file"),
        "dogs/broken_out.png": ("dogs", "path_escape"),
        "top.png": (None, "no_label"),
    }
    assert meta == ()
    assert [i.origin for i in items] == sorted(got)
    by = {i.origin: i for i in items}
    assert by["dogs/out.png"].local_path is None  # never read
    assert by["dogs/in.png"].local_path == (root / "cats/a.png").resolve()


def test_labels_csv_header_problems(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    cases = {
        "file,klass\na.png,cat\n": "needs columns 'path' and 'label'",
        "path,label,split\na.png,cat,train\n": "clash with manifest columns",
        "path,label,path\na.png,cat,b\n": "duplicate column",
        "": "labels CSV is empty",
        "path,label\na.png,cat,extra\n": "line 2: 3 fields, expected 2",
    }
    for text, needle in cases.items():
        (root / "labels.csv").write_text(text)
        with pytest.raises(SourceError) as e:
            list_folder(root, "labels.csv")
        assert needle in str(e.value) and "labels.csv" in str(e.value)
    with pytest.raises(SourceError, match="not found inside the source"):
        list_folder(root, "nope.csv")
    with pytest.raises(SourceError, match="not found inside the source"):
        list_folder(root, "../labels.csv")


def test_labels_csv_rows_and_unlisted_files(tmp_path):
    root = tmp_path / "src"
    (root / "img").mkdir(parents=True)
    (root / "img/a.png").write_bytes(b"a")
    (root / "img/b.png").write_bytes(b"b")
    (root / "labels.csv").write_text(
        "\ufeffpath,label,camera\n"  # a BOM from Excel is tolerated
        "img/a.png,cat,x\n"
        "./img/a.png,cat,x\n"  # same file twice: two items (dedup happens on content later)
        "\n"
        "img/zz.png,cat,y\n"
        "/etc/hosts,cat,y\n"
        "img/../../escape.png,cat,y\n",
        encoding="utf-8",
    )
    items, meta = list_folder(root, "labels.csv")
    assert meta == ("camera",)
    got = sorted((i.origin, i.reason, i.row) for i in items)
    assert got == [
        ("/etc/hosts", "path_escape", 6),
        ("img/../../escape.png", "path_escape", 7),
        ("img/a.png", None, 2),
        ("img/a.png", None, 3),
        ("img/b.png", "no_label", None),
        ("img/zz.png", "missing_file", 5),
    ]
    a = next(i for i in items if i.row == 2)
    assert dict(a.metadata) == {"camera": "x"} and a.label == "cat"


def test_labels_csv_rows_through_symlinks_are_resolved_not_trusted(tmp_path):
    """Rows naming a walked plain file skip resolve(); rows through a symlink or with ".." are resolved and checked."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(b"s")
    root = tmp_path / "src"
    (root / "img").mkdir(parents=True)
    (root / "img/a.png").write_bytes(b"a")
    os.symlink(outside, root / "link")  # a symlinked folder leaving the source
    os.symlink(root / "img", root / "alias")  # a symlinked folder inside the source
    (root / "labels.csv").write_text(
        "path,label\n"
        "img/a.png,cat\n"
        "link/secret.png,cat\n"
        "link/../img/a.png,cat\n"
        "alias/a.png,cat\n",
        encoding="utf-8",
    )
    items, _ = list_folder(root, "labels.csv")
    got = {(i.origin, i.row): (i.reason, i.local_path) for i in items}
    assert got[("img/a.png", 2)] == (None, (root / "img/a.png").resolve())
    assert got[("link/secret.png", 3)][0] == "path_escape"
    # normpath says "img/a.png" (a walked file), but ".." after the symlink leaves the source: resolved, refused
    assert got[("link/../img/a.png", 4)][0] == "path_escape"
    assert got[("alias/a.png", 5)] == (None, (root / "img/a.png").resolve())  # through an inside symlink: same file
    assert ("link", None) in {(i.origin, i.row) for i in items}  # the escaping folder itself is reported


def test_an_unlistable_folder_is_reported_not_skipped(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root can list any folder")
    root = tmp_path / "src"
    (root / "cats").mkdir(parents=True)
    (root / "dogs").mkdir()
    (root / "cats/a.png").write_bytes(b"a")
    (root / "dogs").chmod(0)
    try:
        items, _ = list_folder(root)
    finally:
        (root / "dogs").chmod(0o755)
    assert {(i.origin, i.reason) for i in items} == {("cats/a.png", None), ("dogs", "unreadable")}


# --------------------------------------------------------------------------- open_source
def test_open_source_ignores_labels_csv_for_generated_sources(project_root, caplog):
    params = IngestParams(source="digits", labels_csv="other.csv", digits=DigitsParams(size=8, limit=10))
    listing = open_source(params, ProjectPaths.at(project_root))
    assert listing.labels_csv is None and len(listing.items) == 10
    assert listing.root == project_root.resolve() / "data/sources/digits"
    assert any("ignored" in n for n in listing.notes)


# --------------------------------------------------------------------------- digits
def test_write_digits_size_limit_and_labels(tmp_path):
    dest = write_digits(DigitsParams(size=24, limit=25), tmp_path / "digits")
    files = sorted(dest.rglob("*.png"))
    assert len(files) == 25
    assert {f.parent.name for f in files} == {str(d) for d in range(10)}
    img = Image.open(files[0])
    assert img.size == (24, 24) and img.mode == "L"
    arr = np.asarray(img)
    assert arr.max() > 200 and arr.min() == 0  # scaled from 0..16 to 0..255
    # bilinear: intermediate values exist (nearest-neighbour would only repeat the 17 source levels)
    assert len(np.unique(arr)) > 17
    (dest / "stale.png").write_bytes(b"old")
    write_digits(DigitsParams(size=24, limit=25), dest)
    assert not (dest / "stale.png").exists()


# --------------------------------------------------------------------------- shapes
def test_shapes_are_byte_identical_for_the_same_seed(tmp_path):
    params = ShapesParams(count=9, size=24, seed=3, classes=("circle", "triangle", "star"))
    a = _digest_tree(generate_shapes(params, tmp_path / "a").parent)
    b = _digest_tree(generate_shapes(params, tmp_path / "b").parent)
    c = _digest_tree(generate_shapes(params.model_copy(update={"seed": 4}), tmp_path / "c").parent)
    assert a == b and len(a) == 10  # 9 images + labels.csv
    assert a != c


def test_shapes_csv_has_metadata_and_balanced_classes(tmp_path):
    csv_path = generate_shapes(ShapesParams(count=30, size=16, classes=("square", "circle")), tmp_path / "s")
    lines = csv_path.read_text().splitlines()
    assert lines[0] == "path,label,background,lighting,camera"
    rows = [ln.split(",") for ln in lines[1:]]
    assert len(rows) == 30
    assert sum(r[1] == "square" for r in rows) == 15
    assert {r[2] for r in rows} == {"plain", "gradient", "noise"}
    assert {r[3] for r in rows} == {"bright", "normal", "dim"}
    assert {r[4] for r in rows} == {"a", "b", "c"}
    assert all((csv_path.parent / r[0]).is_file() for r in rows)


def test_lighting_and_camera_change_the_pixels():
    def render(lighting: str, camera: str) -> np.ndarray:
        return np.asarray(render_shape("square", 48, np.random.default_rng(5), "plain", lighting, camera), float)

    dim, normal, bright = (render(x, "a").mean() for x in ("dim", "normal", "bright"))
    assert dim < normal * 0.7 < normal < bright
    sharp, soft = render("normal", "a"), render("normal", "b")
    # blur (camera b) removes edge energy
    assert (np.diff(soft, axis=1) ** 2).sum() < (np.diff(sharp, axis=1) ** 2).sum() * 0.7
    warm = render("normal", "c")
    assert (warm[..., 0] - warm[..., 2]).mean() > (sharp[..., 0] - sharp[..., 2]).mean() + 5  # colour cast


def test_shapes_rejects_unknown_classes(tmp_path):
    with pytest.raises(ConfigError, match="ingest.shapes.classes") as e:
        generate_shapes(ShapesParams(count=3, classes=("circle", "hexagon")), tmp_path / "s")
    assert "hexagon" in str(e.value)



def test_special_files_are_unreadable_not_opened(tmp_path):
    root = tmp_path / "src"
    (root / "cats").mkdir(parents=True)
    os.mkfifo(root / "cats" / "pipe.png")  # opening it for reading would block forever
    items, _ = list_folder(root)
    assert [(i.origin, i.reason, i.local_path) for i in items] == [("cats/pipe.png", "unreadable", None)]
