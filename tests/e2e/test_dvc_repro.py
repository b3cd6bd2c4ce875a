"""`dvc repro` on a temporary copy of the repo: runs, is a no-op the second time, re-runs only what
a params change touches, push/pull round-trips the data (also into a second clone through the
embedded default remote), the source and the selected configuration files are dependencies, and
the shipped natural-photo recipe trains, evaluates and exports."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.fixtures.repo import copy_repo

REPO = Path(__file__).resolve().parents[2]
DVC = str(Path(sys.executable).parent / "dvc")

# Shrink the real params (lightning-hydra-template style) instead of a parallel config.
SHRINK = {
    ("ingest", "workers"): 1,
    ("train", "progress_bar"): False,  # epochs and the evaluated split are not shrunk: the gates are real
    ("evaluate", "bootstrap_samples"): 200,
    ("export", "parity", "max_images"): 80,
    ("export", "int8", "calibration_images"): 50,
    ("export", "int8", "max_images"): 80,
    ("export", "benchmark", "iterations"): 10,
    ("export", "benchmark", "warmup"): 2,
}


def _shrink(params_file: Path, extra: dict | None = None) -> None:
    data = yaml.safe_load(params_file.read_text())
    for path, value in {**SHRINK, **(extra or {})}.items():
        node = data
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = value
    params_file.write_text(yaml.safe_dump(data, sort_keys=False))


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **(env or {})}
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=900)
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout}\n{res.stderr}"
    return res


@pytest.fixture()
def repo_copy(tmp_path: Path, monkeypatch) -> Path:
    """Tracked + untracked (not ignored) files of the working tree, as a fresh git repo.

    HOME is this test's own, so the embedded default remote (~/.cache/cvplatform/dvc-remote)
    is a fresh folder of the test.
    """
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    dest = copy_repo(tmp_path / "repo")
    _shrink(dest / "params.yaml")
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "shrink"], dest)
    return dest


def _ran_stages(out: str) -> set[str]:
    return {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage '")}


@pytest.mark.e2e
@pytest.mark.slow
def test_dvc_repro_noop_partial_rerun_and_push_pull(repo_copy: Path):
    first = _run([DVC, "repro"], repo_copy)
    assert _ran_stages(first.stdout) == {"ingest", "validate", "train", "export", "champion", "evaluate"}, \
        first.stdout
    summary = json.loads((repo_copy / "artifacts/ingest/summary.json").read_text())
    assert summary["accepted"] == 1797 and summary["seen"] == 1797
    assert (repo_copy / "artifacts/export/model.onnx").is_file()
    # evaluate ran after export, on the exported artifact: the gate report vouches for the bytes that ship
    gate = json.loads((repo_copy / "artifacts/evaluate/gate_report.json").read_text())
    exported = json.loads((repo_copy / "artifacts/export/summary.json").read_text())
    assert gate["model_sha256"] == exported["sha256"] and gate["passed"] is True
    assert first.stdout.index("Running stage 'export'") < first.stdout.index("Running stage 'evaluate'")
    metrics = json.loads(_run([DVC, "metrics", "show", "--json"], repo_copy).stdout)
    shown = metrics[""]["data"] if "" in metrics else next(iter(metrics.values()))["data"]
    values = {path: v["data"] for path, v in shown.items()}
    assert values["artifacts/ingest/metrics.json"] == {"images": 1797, "quarantined": 0}
    assert set(values["artifacts/train/metrics.json"]) == {"accuracy", "f1", "loss"}
    assert set(values["artifacts/export/metrics.json"]) == {"size_mb", "latency_ms"}
    assert set(values["artifacts/evaluate/metrics.json"]) == {"accuracy", "f1", "ece", "corrupt_acc"}
    table = _run([DVC, "metrics", "show"], repo_copy).stdout
    assert max(len(line) for line in table.splitlines()) <= 130, table  # fits a terminal
    for numbers in values.values():  # only numbers a user compares: no paths, hashes or nested tables
        assert all(isinstance(x, int | float) and not isinstance(x, bool) for x in numbers.values()), numbers

    second = _run([DVC, "repro"], repo_copy)
    assert _ran_stages(second.stdout) == set(), second.stdout

    # A change to one ingest key re-runs ingest; the manifest is byte-identical, so validate is skipped.
    _shrink(repo_copy / "params.yaml", {("ingest", "workers"): 2})
    third = _run([DVC, "repro"], repo_copy)
    assert _ran_stages(third.stdout) == {"ingest"}, third.stdout

    # push, wipe data + cache, pull: the same bytes come back.
    manifest = repo_copy / "data/processed/manifest.parquet"
    before = manifest.read_bytes()
    n_raw = sum(1 for _ in (repo_copy / "data/raw").rglob("*.png"))
    _run([DVC, "push"], repo_copy)
    shutil.rmtree(repo_copy / "data/raw")
    manifest.unlink()
    shutil.rmtree(repo_copy / ".dvc/cache")
    _run([DVC, "pull"], repo_copy)
    assert manifest.read_bytes() == before
    assert sum(1 for _ in (repo_copy / "data/raw").rglob("*.png")) == n_raw
    status = _run([DVC, "status"], repo_copy)
    assert "up to date" in status.stdout.lower()

    # a second clone on the same machine pulls what the first pushed (the embedded default remote,
    # outside both clones), once dvc.lock is committed as DVC's workflow has it
    remote = Path(os.environ["HOME"]) / ".cache" / "cvplatform" / "dvc-remote"
    assert remote.is_dir() and any(remote.rglob("*"))
    _run(["git", "add", "dvc.lock", "params.yaml"], repo_copy)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "pipeline state"], repo_copy)
    second_clone = repo_copy.parent / "second-clone"
    _run(["git", "clone", "-q", str(repo_copy), str(second_clone)], repo_copy.parent)
    _run([DVC, "pull"], second_clone)
    assert (second_clone / "data/processed/manifest.parquet").read_bytes() == before
    assert (second_clone / "artifacts/export/model.onnx").read_bytes() == (
        repo_copy / "artifacts/export/model.onnx").read_bytes()
    assert json.loads((second_clone / "artifacts/train/summary.json").read_text())["run_id"]
    assert "up to date" in _run([DVC, "status"], second_clone).stdout.lower()


def _stale(repo: Path, stage: str) -> str:
    """`dvc status <stage>` output restricted to that stage ('' when it is up to date)."""
    out = _run([DVC, "status", "--json", stage], repo).stdout
    return "" if json.loads(out or "{}").get(stage) is None else out


@pytest.mark.e2e
@pytest.mark.slow
def test_the_source_and_the_selected_configs_are_dependencies(repo_copy: Path, tmp_path: Path):
    from PIL import Image, ImageOps

    from cvplatform.config import DigitsParams
    from cvplatform.data.synthetic import write_digits

    images = write_digits(DigitsParams(size=16, limit=200), tmp_path / "camera-images")
    _shrink(repo_copy / "params.yaml", {("ingest", "source"): str(images)})
    _run([DVC, "repro", "ingest"], repo_copy)
    assert _stale(repo_copy, "ingest") == ""  # an unchanged source: up to date

    new = images / "3" / "new.png"  # an added image
    ImageOps.mirror(Image.open(next((images / "3").glob("*.png")))).save(new)
    assert str(images) in _stale(repo_copy, "ingest")
    new.unlink()
    assert _stale(repo_copy, "ingest") == ""  # back to what was ingested
    victim = next((images / "5").glob("*.png"))  # a removed image
    data = victim.read_bytes()
    victim.unlink()
    assert str(images) in _stale(repo_copy, "ingest")
    victim.write_bytes(data)
    changed = next((images / "7").glob("*.png"))  # a changed image
    ImageOps.flip(Image.open(changed)).save(changed)
    assert str(images) in _stale(repo_copy, "ingest")
    summary = _run([DVC, "repro", "ingest"], repo_copy)
    assert _ran_stages(summary.stdout) == {"ingest"}

    # the selected recipe / suite are dependencies: selecting or editing another file makes the stage stale
    _run([DVC, "repro", "validate"], repo_copy)
    _run([DVC, "repro", "train"], repo_copy)
    assert _stale(repo_copy, "train") == ""
    _shrink(repo_copy / "params.yaml", {("train", "augment"): "configs/augment/natural.yaml"})
    assert "configs/augment/natural.yaml" in _stale(repo_copy, "train")
    _shrink(repo_copy / "params.yaml", {("train", "augment"): "configs/augment/default.yaml"})
    assert _stale(repo_copy, "train") == ""
    recipe = repo_copy / "configs/augment/default.yaml"
    recipe.write_text(recipe.read_text() + "# edited\n")
    assert "configs/augment/default.yaml" in _stale(repo_copy, "train")


@pytest.mark.e2e
@pytest.mark.slow
def test_builtin_sources_are_deterministic_and_up_to_date(repo_copy: Path):
    _shrink(repo_copy / "params.yaml", {("ingest", "source"): "configs/sources/shapes.yaml",
                                        ("ingest", "shapes", "count"): 60})
    _run([DVC, "repro", "ingest"], repo_copy)
    manifest = (repo_copy / "data/processed/manifest.parquet").read_bytes()
    assert _stale(repo_copy, "ingest") == ""
    forced = _run([DVC, "repro", "--force", "--single-item", "ingest"], repo_copy)
    assert _ran_stages(forced.stdout) == {"ingest"}
    assert (repo_copy / "data/processed/manifest.parquet").read_bytes() == manifest


@pytest.mark.e2e
@pytest.mark.slow
def test_the_natural_photo_recipe_trains_evaluates_and_exports(repo_copy: Path):
    _shrink(repo_copy / "params.yaml", {
        ("ingest", "source"): "configs/sources/shapes.yaml", ("ingest", "shapes", "count"): 300,
        ("train", "augment"): "configs/augment/natural.yaml", ("train", "epochs"): 1,
        ("evaluate", "suite"): "configs/scenarios/shapes.yaml",
    })
    # export runs before evaluate (the gates judge the exported artifact)
    _run([DVC, "repro", "export"], repo_copy)
    assert (repo_copy / "artifacts/export/model.onnx").is_file()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    ev = subprocess.run(["cvplatform", "evaluate"], cwd=repo_copy, capture_output=True, text=True, env=env,
                        timeout=900)
    # the scenario suite judges the (one-epoch) model: its gates may pass or fail (exit 3), but the
    # model's preprocessing must be expressible for evaluation, export and serving (no exit 1/2)
    assert ev.returncode in (0, 3), ev.stdout + ev.stderr
    assert json.loads((repo_copy / "artifacts/evaluate/summary.json").read_text())["n_images"] > 0
