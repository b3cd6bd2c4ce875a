"""Fixtures for the export tests: a tiny project trained (1 epoch) once per session.

Every test that needs its own outputs works on a copy (:func:`project`); the
shared trained project is never exported into, except by the ``exported``
fixture (one real ``run_export``, then ``run_evaluate`` on the exported artifact as the
pipeline does, whose outputs several tests inspect).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.fixtures.tiny_dataset import make_tiny_project
from tests.unit.export.helpers import load

#: A small suite: a must-pass clean scenario, two warn-level corruptions, and one warn scenario that
#: a 1-epoch model cannot pass (so the model card has a known limitation to report).
SUITE = """\
name: export_test
description: tiny suite for the export tests
scenarios:
  - {name: clean, kind: clean, level: must_pass, min_accuracy: 0.0}
  - {kind: corruption, corruption: gaussian_noise, severities: [1, 3]}
  - {name: dark, kind: corruption, corruption: low_light, severities: [5], level: warn, min_accuracy: 0.999}
"""

#: Export params shrunk for tests (few benchmark calls, few calibration images).
EXPORT_OVERRIDES: tuple[str, ...] = (
    "export.benchmark.iterations=5",
    "export.benchmark.warmup=1",
    "export.benchmark.batch_size=4",
    "export.int8.calibration_images=8",
    "export.int8.max_drop=1.0",
    "evaluate.suite=configs/scenarios/export_test.yaml",
    "evaluate.bootstrap_samples=20",
    "evaluate.compare_champion=false",
    "evaluate.gallery_size=0",
)


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 3-class project with a 1-epoch small_cnn checkpoint."""
    from cvplatform.train import run_train

    root = make_tiny_project(tmp_path_factory.mktemp("export") / "project", per_class=10, size=16,
                             overrides=EXPORT_OVERRIDES)
    (root / "configs" / "scenarios").mkdir(parents=True, exist_ok=True)
    (root / "configs" / "scenarios" / "export_test.yaml").write_text(SUITE, encoding="utf-8")
    params = load(root)
    run_train(params, root=root)
    return root


@pytest.fixture(scope="session")
def exported(trained_project: Path):
    """One real export of the trained project (INT8 accepted: max_drop 1.0), then the evaluation of the exported
    artifact (it writes the model card); returns (root, export result)."""
    from cvplatform.evaluation.run import run_evaluate
    from cvplatform.export.run import run_export

    result = run_export(load(trained_project), root=trained_project)
    run_evaluate(load(trained_project), root=trained_project)
    return trained_project, result


@pytest.fixture
def project(trained_project: Path, tmp_path: Path) -> Path:
    """A private copy of the trained project (without export outputs) to export into or break."""
    dst = tmp_path / "project"
    shutil.copytree(trained_project, dst, ignore=shutil.ignore_patterns("export"))
    return dst
