"""A change of the registry champion re-runs what depends on artifacts/champion.json; the same champion is a no-op.

Runs the real ``champion`` stage of dvc.yaml (``cvplatform champion-ref`` against the project's embedded MLflow
registry) in a real DVC repository, followed by a small consumer stage standing in for ``evaluate`` (which
tests/unit/test_dvc_deps.py checks depends on that file), so it takes seconds rather than a whole pipeline.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.fixtures.repo import copy_repo

BIN = Path(sys.executable).parent
DVC = str(BIN / "dvc")


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)  # the repository's embedded sqlite store
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout}\n{res.stderr}"
    return res


def _ran(out: str) -> set[str]:
    return {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage '")}


def _set_champion(root: Path, sha: str) -> str:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    if not client.search_registered_models(filter_string="name = 'cvplatform'"):
        client.create_registered_model("cvplatform")
    mv = client.create_model_version("cvplatform", source=(root / "model").as_uri(), tags={"artifact.sha256": sha})
    client.set_registered_model_alias("cvplatform", "champion", mv.version)
    return str(mv.version)


@pytest.mark.e2e
@pytest.mark.slow
def test_a_new_champion_reruns_the_dependent_stage_and_the_same_champion_does_not(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    root = copy_repo(tmp_path / "repo")
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    consumer = {"cmd": "python -c \"import shutil; shutil.copy('artifacts/champion.json', 'compared.json')\"",
                "deps": ["artifacts/champion.json"], "outs": [{"compared.json": {"cache": False}}]}
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"champion": stages["champion"], "consumer": consumer}}))
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "champion only"], root)

    first = _run([DVC, "repro"], root)
    assert _ran(first.stdout) == {"champion", "consumer"}, first.stdout
    assert json.loads((root / "compared.json").read_text())["version"] is None  # no champion yet

    same = _run([BIN / "cvplatform", "champion-ref"], root)
    assert "unchanged" in same.stdout and "does not exist yet" in same.stdout
    assert _ran(_run([DVC, "repro"], root).stdout) == set()

    v1 = _set_champion(root, "a" * 64)
    assert "updated" in _run([BIN / "cvplatform", "champion-ref"], root).stdout
    after_promotion = _run([DVC, "repro"], root)
    assert _ran(after_promotion.stdout) == {"champion", "consumer"}, after_promotion.stdout
    ref = json.loads((root / "compared.json").read_text())
    assert (ref["version"], ref["sha256"]) == (v1, "a" * 64)

    assert "unchanged" in _run([BIN / "cvplatform", "champion-ref"], root).stdout  # same champion: a no-op
    assert _ran(_run([DVC, "repro"], root).stdout) == set()
    assert "up to date" in _run([DVC, "status"], root).stdout.lower()

    v2 = _set_champion(root, "b" * 64)  # e.g. a rollback or another promotion
    _run([BIN / "cvplatform", "champion-ref"], root)
    assert _ran(_run([DVC, "repro"], root).stdout) == {"champion", "consumer"}
    assert json.loads((root / "compared.json").read_text())["version"] == v2
