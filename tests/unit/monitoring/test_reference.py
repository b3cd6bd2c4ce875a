"""The training reference: built from the train split, cached by the manifest's data hash."""

from __future__ import annotations

import json

import pytest

from cvplatform.data.manifest import read_manifest, write_manifest
from cvplatform.errors import DataError
from cvplatform.monitoring.reference import build_reference, get_reference, load_reference
from cvplatform.monitoring.stats import STAT_NAMES, image_stats, read_rgb
from cvplatform.tracking import file_md5
from tests.fixtures.tiny_dataset import make_tiny_project

MANIFEST = "data/processed/manifest.parquet"


@pytest.fixture
def project(tmp_path):
    return make_tiny_project(tmp_path / "p", per_class=10, size=16)


def test_build_reference_measures_the_train_split(project):
    df = read_manifest(project / MANIFEST)
    train = df[df["split"] == "train"]
    ref = build_reference(MANIFEST, project)
    assert ref.n_images == len(train) == 18
    assert ref.label_counts == {"blue": 6, "green": 6, "red": 6}
    assert set(ref.stats) == set(STAT_NAMES) and all(len(v) == 18 for v in ref.stats.values())
    first = train.sort_values("sha256").iloc[0]
    assert ref.stats["brightness"][0] == pytest.approx(image_stats(read_rgb(project / first["path"]))["brightness"])
    assert ref.data_hash == file_md5(project / MANIFEST)
    capped = build_reference(MANIFEST, project, max_images=5)
    assert capped.n_images == 5 and sum(capped.label_counts.values()) == 18  # labels are never capped


def test_reference_is_cached_by_data_hash(project):
    cache = project / "artifacts/monitor/reference.json"
    ref, cached = get_reference(MANIFEST, project)
    assert not cached and cache.is_file()
    assert json.loads(cache.read_text())["data_hash"] == ref.data_hash
    # same manifest: read back from the cache, even though an image changed on disk
    some = project / read_manifest(project / MANIFEST)["path"].iloc[0]
    some.write_bytes((project / read_manifest(project / MANIFEST)["path"].iloc[-1]).read_bytes())
    again, cached = get_reference(MANIFEST, project)
    assert cached and again == ref == load_reference(cache)
    # other settings rebuild
    _, cached = get_reference(MANIFEST, project, max_images=4)
    assert not cached
    # new data (a different manifest) rebuilds with the new hash
    df = read_manifest(project / MANIFEST)
    write_manifest(df[df["path"] != df[df["split"] == "train"]["path"].iloc[0]], project / MANIFEST)
    new, cached = get_reference(MANIFEST, project, max_images=4)
    assert not cached and new.data_hash != ref.data_hash and sum(new.label_counts.values()) == 17


def test_a_damaged_cache_is_rebuilt(project, caplog):
    cache = project / "artifacts/monitor/reference.json"
    get_reference(MANIFEST, project)
    cache.write_text("{not json")
    ref, cached = get_reference(MANIFEST, project)
    assert not cached and ref.n_images == 18 and "not a valid drift reference" in caplog.text
    assert load_reference(cache).n_images == 18


def test_missing_manifest_or_empty_train_split_is_a_clear_error(project):
    with pytest.raises(DataError, match="manifest not found"):
        get_reference("nope.parquet", project)
    df = read_manifest(project / MANIFEST)
    write_manifest(df.assign(split="test"), project / MANIFEST)
    with pytest.raises(DataError, match="no rows in split 'train'"):
        build_reference(MANIFEST, project)


def test_missing_image_is_named(project):
    df = read_manifest(project / MANIFEST)
    victim = df[df["split"] == "train"].sort_values("sha256")["path"].iloc[0]
    (project / victim).unlink()
    with pytest.raises(DataError, match="image not found"):
        build_reference(MANIFEST, project)
