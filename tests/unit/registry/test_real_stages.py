"""The registry fed by the real stages: train -> export -> evaluate -> register -> approve -> promote -> load.

The gates judge the artifact that export chose, and the registry refuses any other: the registered
sha256 is the one in the gate report.

Also checks the other side of the contract: evaluation finds the promoted
version as ``models:/cvplatform@champion`` (both read registry.model_name and
registry.champion_alias).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tests.fixtures.tiny_dataset import make_tiny_project

SUITE = """\
name: registry_test
description: tiny suite for the registry test
scenarios:
  - {name: clean, kind: clean, level: must_pass, min_accuracy: 0.0}
  - {kind: corruption, corruption: gaussian_noise, severities: [2]}
"""

OVERRIDES = (
    "evaluate.suite=configs/scenarios/registry_test.yaml",
    "evaluate.bootstrap_samples=20",
    "evaluate.compare_champion=false",
    "evaluate.gallery_size=0",
    "export.int8.enabled=false",
    "export.benchmark.enabled=false",
)


@pytest.mark.slow
def test_real_stage_outputs_register_and_load_back(tmp_path, template_db, registry_env):
    from cvplatform.config import load_params
    from cvplatform.evaluation.predictors import OnnxPredictor
    from cvplatform.evaluation.run import run_evaluate
    from cvplatform.export.run import run_export
    from cvplatform.registry import approve, load_model, promote, register_model
    from cvplatform.train import run_train
    from tests.unit.export.helpers import split_images

    root = make_tiny_project(tmp_path / "project", per_class=8, size=16, overrides=OVERRIDES)
    shutil.copy(template_db, root / "mlflow.db")
    (root / "configs" / "scenarios").mkdir(parents=True, exist_ok=True)
    (root / "configs" / "scenarios" / "registry_test.yaml").write_text(SUITE, encoding="utf-8")
    params = load_params(root / "params.yaml")
    trained = run_train(params, root=root)
    exported = run_export(params, root=root)
    evaluated = run_evaluate(params, root=root)  # default model: the exported artifact

    res = register_model(params, root=root)
    assert res.created and res.aliases == ["challenger"] and res.gates_passed == evaluated.passed
    gate = json.loads((root / "artifacts" / "evaluate" / "gate_report.json").read_text())
    assert res.artifact_sha256 == exported.sha256 == evaluated.model_sha256 == gate["model_sha256"]
    tags = res.tags
    assert tags["lineage.train_run_id"] == trained.run_id == exported.train_run_id
    assert tags["artifact.sha256"] == exported.sha256
    assert tags["lineage.data_hash"] == exported.data_hash
    assert float(tags["metrics.clean_accuracy"]) == pytest.approx(
        next(s["accuracy"] for s in evaluated.scenarios if s["name"] == "clean"), abs=1e-6)
    assert register_model(params, root=root).created is False

    approve("cvplatform", res.version, reviewer="bob", comment="tiny model reviewed", root=root)
    promote("cvplatform", res.version, root=root)
    m = load_model("models:/cvplatform@champion", root=root)
    assert m.info.sha256 == exported.sha256
    assert list(m.contract.class_names) == exported.class_names

    images, _ = split_images(root, "test")
    from cvplatform.preprocess import preprocess

    served = m.session.run([m.output_name], {m.input_name: preprocess(images, m.contract)})[0]
    direct = OnnxPredictor(root / exported.artifact).predict_logits(np.stack(images))
    np.testing.assert_allclose(served, direct, rtol=1e-5, atol=1e-5)

    again = run_evaluate(load_params(root / "params.yaml", ["evaluate.compare_champion=true"]), root=root)
    assert again.champion == "models:/cvplatform@champion"
    assert again.mce is not None  # with a champion on the same images, mCE has its reference model


@pytest.mark.slow
def test_a_gate_report_about_another_artifact_is_refused(tmp_path, template_db, registry_env):
    """Evaluating the checkpoint (not what ships) and registering the exported file is refused with exit 3."""
    from cvplatform.config import load_params
    from cvplatform.evaluation.run import run_evaluate
    from cvplatform.export.run import run_export
    from cvplatform.registry import register_model
    from cvplatform.registry.errors import GateReportMismatchError
    from cvplatform.train import run_train

    root = make_tiny_project(tmp_path / "project", per_class=8, size=16, overrides=OVERRIDES)
    shutil.copy(template_db, root / "mlflow.db")
    (root / "configs" / "scenarios").mkdir(parents=True, exist_ok=True)
    (root / "configs" / "scenarios" / "registry_test.yaml").write_text(SUITE, encoding="utf-8")
    params = load_params(root / "params.yaml")
    run_train(params, root=root)
    exported = run_export(params, root=root)
    judged = run_evaluate(params, root=root, model="artifacts/train/best.ckpt")
    with pytest.raises(GateReportMismatchError) as info:
        register_model(params, root=root)
    assert info.value.exit_code == 3 and judged.model_sha256 in str(info.value) and exported.sha256 in str(info.value)
