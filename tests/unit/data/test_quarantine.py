"""Quarantined originals are personal data: they stay local, are versioned only as a report, and expire.

A rejected file is unprocessed (EXIF, GPS, unblurred faces). The DVC test runs the real ``dvc repro`` and
``dvc push`` on a copy of this repository and reads the remote's files: by default the original bytes
never reach it, the report does; ``ingest.quarantine.push_originals: true`` opts in.
"""

from __future__ import annotations

import csv
import hashlib
import os
import time
from pathlib import Path

import pytest
import yaml

from cvplatform.data.ingest import prune_quarantine, run_ingest
from tests.conftest import build_params
from tests.fixtures.corpus import exif_jpeg, png_bytes, random_rgb

DAY = 86_400


def _source(base: Path) -> tuple[Path, bytes]:
    """A folder source with good images and one rejected JPEG that carries a GPS block."""
    src = base / "source"
    for label in ("cats", "dogs"):
        (src / label).mkdir(parents=True)
        for i in range(4):
            (src / label / f"{i}.png").write_bytes(png_bytes(random_rgb(i + (10 if label == "dogs" else 0))))
    gps = exif_jpeg(gps=True, seed=7)
    bad = gps[: len(gps) - 40]  # truncated: undecodable, but its EXIF/GPS header is intact
    (src / "cats" / "holiday.jpg").write_bytes(bad)
    return src, bad


def _report(root: Path) -> list[dict[str, str]]:
    with (root / "data/quarantine/report.csv").open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def _params(src: Path, *extra: str):
    return build_params(f"ingest.source=folder:{src}", "ingest.workers=1", *extra)


def test_the_report_has_the_hash_and_the_original_stays_in_the_local_store(tmp_path, project_root):
    src, bad = _source(tmp_path)
    result = run_ingest(_params(src), root=project_root)
    (row,) = _report(project_root)
    assert (row["file"], row["reason"], row["sha256"]) == ("cats/holiday.jpg", "undecodable",
                                                          hashlib.sha256(bad).hexdigest())
    stored = project_root / row["stored"]
    assert row["stored"].startswith("data/quarantine/originals/undecodable/") and stored.read_bytes() == bad
    assert result.originals_dir == "data/quarantine/originals"
    assert not any((project_root / "data/quarantine/pushed").iterdir())
    # nothing to keep: the report still names the file and its hash
    run_ingest(_params(src, "ingest.quarantine.retention_days=0"), root=project_root)
    (row,) = _report(project_root)
    assert row["sha256"] == hashlib.sha256(bad).hexdigest() and row["stored"] == ""
    assert not any((project_root / "data/quarantine").rglob("*.jpg"))


def test_retention_removes_originals_after_n_days(tmp_path, project_root):
    src, bad = _source(tmp_path)
    run_ingest(_params(src, "ingest.quarantine.retention_days=30"), root=project_root)
    old = project_root / _report(project_root)[0]["stored"]
    first_seen = old.stat().st_mtime
    # quarantined again later: the file (and its age) is kept, not rewritten
    run_ingest(_params(src, "ingest.quarantine.retention_days=30"), root=project_root)
    assert old.stat().st_mtime == first_seen
    # a second rejected file, quarantined now; the first one is 31 days old and gone from the source
    (src / "dogs" / "empty.png").write_bytes(b"")
    os.utime(old, (time.time() - 31 * DAY, time.time() - 31 * DAY))
    (src / "cats" / "holiday.jpg").unlink()
    result = run_ingest(_params(src, "ingest.quarantine.retention_days=30"), root=project_root)
    assert not old.exists() and result.originals_pruned == 1
    (row,) = _report(project_root)
    fresh = project_root / row["stored"]
    assert row["reason"] == "empty_file" and fresh.is_file()
    # between ingests: prune_quarantine enforces the same rule (a scheduler can call it)
    params = _params(src, "ingest.quarantine.retention_days=30")
    assert prune_quarantine(params, root=project_root, now=time.time() + 29 * DAY) == []
    assert prune_quarantine(params, root=project_root, now=time.time() + 31 * DAY) == [row["stored"]]
    assert not fresh.exists() and not (project_root / "data/quarantine/originals/empty_file").exists()
    keep_all = _params(src, "ingest.quarantine.retention_days=null")
    (src / "cats" / "holiday.jpg").write_bytes(bad)
    run_ingest(keep_all, root=project_root)
    assert prune_quarantine(keep_all, root=project_root, now=time.time() + 10_000 * DAY) == []


def test_switching_push_originals_moves_the_kept_originals_with_their_age(tmp_path, project_root):
    src, bad = _source(tmp_path)
    run_ingest(_params(src), root=project_root)
    local = project_root / _report(project_root)[0]["stored"]
    os.utime(local, (time.time() - 5 * DAY, time.time() - 5 * DAY))
    age = local.stat().st_mtime
    run_ingest(_params(src, "ingest.quarantine.push_originals=true"), root=project_root)
    pushed = project_root / _report(project_root)[0]["stored"]
    assert pushed.is_relative_to(project_root / "data/quarantine/pushed") and pushed.read_bytes() == bad
    assert pushed.stat().st_mtime == age and not local.exists()
    run_ingest(_params(src), root=project_root)
    assert local.read_bytes() == bad and not pushed.exists()


def _remote_blobs(remote: Path) -> set[bytes]:
    return {p.read_bytes() for p in remote.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_dvc_push_never_sends_quarantined_originals_unless_opted_in(tmp_path):
    from cvplatform.pipeline import push, repro, run_dvc
    from tests.fixtures.repo import copy_repo

    src, bad = _source(tmp_path)
    repo = copy_repo(tmp_path / "repo")
    params_file = repo / "params.yaml"

    def set_params(**quarantine: object) -> None:
        data = yaml.safe_load(params_file.read_text(encoding="utf-8"))
        data["ingest"].update({"source": str(src), "workers": 1})  # params.yaml names a folder by its path
        data["ingest"]["quarantine"].update(quarantine)
        params_file.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")

    # this test's own remote, not the user's embedded default (~/.cache/cvplatform/dvc-remote)
    remote = tmp_path / "remote"
    run_dvc(["remote", "modify", "--local", "local", "url", str(remote)], repo)
    set_params()
    assert "ingest" in repro("ingest", repo).ran_stages
    push(repo, ["ingest"])
    blobs = _remote_blobs(remote)
    assert bad not in blobs  # the original (EXIF + GPS) never reaches the remote
    report = (repo / "data/quarantine/report.csv").read_bytes()
    assert report in blobs and hashlib.sha256(bad).hexdigest().encode() in report  # the report is versioned
    kept = next((repo / "data/quarantine/originals").rglob("*holiday.jpg"))
    assert kept.read_bytes() == bad
    assert "up to date" in run_dvc(["status", "ingest"], repo).output  # a local store DVC does not track
    lock = (repo / "dvc.lock").read_text(encoding="utf-8")
    assert "data/quarantine/report.csv" in lock and "data/quarantine/originals" not in lock

    set_params(push_originals=True)  # the opt-in
    assert "ingest" in repro("ingest", repo).ran_stages
    push(repo, ["ingest"])
    assert bad in _remote_blobs(remote)
    assert not (repo / "data/quarantine/originals").exists() or not any(
        (repo / "data/quarantine/originals").rglob("*.jpg"))
