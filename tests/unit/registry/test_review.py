"""The approval page (Airflow HITL body): what a reviewer decides on, against the champion, with working links."""

from __future__ import annotations

import re

import pytest

from cvplatform.orchestration import approval_body
from cvplatform.registry import approve, promote, register_model
from tests.unit.registry.project import new_training, onnx_model_bytes


def _ref(res) -> dict:
    return {"model_name": res.model_name, "version": res.version, "model_uri": res.model_uri,
            "precision": res.precision, "artifact_sha256": res.artifact_sha256, "author": res.author}


@pytest.fixture
def second_version(registered, project, make_params, client):
    """v1 approved and champion; v2 retrained with more epochs (and a different model), pending."""
    approve("cvplatform", 1, reviewer="bob", comment="ok", root=project.root)
    promote("cvplatform", 1, root=project.root)
    new_training(project, onnx_model_bytes(seed=4))
    return register_model(make_params("train.epochs=12"), root=project.root)


def test_the_page_shows_what_the_decision_rests_on(second_version, project, client):
    body = approval_body(project.root, _ref(second_version))
    # task, classes, test-set size
    assert "**task**: classification; **2 classes**: `cat`, `dog`" in body
    assert "**test set**: 40 images of split `test`" in body
    # the verdict, and the warning with its value, in colour (Markdown: coloured markers, no HTML)
    assert "#### Release gates: 🟢 PASSED: 0 must-pass check(s) failed, 🟠 1 warning(s)" in body
    assert "🟠 **gaussian_noise_s3/min_accuracy** (warn): value 0.6000 vs threshold 0.7000" in body
    assert "**Weakest passing checks**" in body and "🟢 **clean/min_accuracy**" in body
    # latency / size / cost against the champion
    assert "#### Against the champion (v1)" in body
    assert re.search(r"latency p50, batch 1: 0\.100 ms \(champion 0\.100 ms, \+0%\)", body)
    assert "cost per 1k images" in body and "KiB (champion" in body
    # what changed: data version, params diff
    assert "data version (DVC md5): unchanged" in body
    from cvplatform.config import Params

    assert f"`train.epochs`: `{Params().train.epochs}` -> `12`" in body  # v1 trained with the defaults
    # links that open in the MLflow UI: model version, report and model card of the registration run
    mv = client.version("cvplatform", 2)
    run = client.mlflow.get_run(mv.run_id)
    art = f"/#/experiments/{run.info.experiment_id}/runs/{mv.run_id}/artifacts/registration"
    assert "/#/models/cvplatform/versions/2)" in body
    assert f"[evaluation report](http://127.0.0.1:5000{art}/report.html)" in body
    assert f"[model card](http://127.0.0.1:5000{art}/model_card.md)" in body
    assert "mlflow ui --backend-store-uri" in body  # embedded store: how to open them
    stored = {a.path for a in client.mlflow.list_artifacts(mv.run_id, "registration")}
    assert {"registration/report.html", "registration/model_card.md"} <= stored  # the links point at real files
    assert "PASSED" in body and "every check passed" not in body


def test_failing_checks_are_red_with_their_values(failed_project, params, client):
    res = register_model(params, root=failed_project.root)
    body = approval_body(failed_project.root, _ref(res))
    assert "#### Release gates: 🔴 FAILED: 2 must-pass check(s) failed" in body
    assert "🔴 **clean/min_accuracy** (must_pass): value 0.5000 vs threshold 0.8000" in body
    assert "no champion yet" in body and "🟢 PASSED" not in body


def test_an_incompatible_candidate_is_flagged(registered, project, client):
    from tests.unit.registry.project import write_evaluation, write_export

    approve("cvplatform", 1, reviewer="bob", comment="ok", root=project.root)
    promote("cvplatform", 1, root=project.root)
    run_id = new_training(project).train_run_id
    three = ("cat", "dog", "fox")
    write_export(project.root, onnx_model_bytes(seed=6, classes=three), run_id, classes=three)
    write_evaluation(project.root)
    res = register_model(__import__("cvplatform.config", fromlist=["Params"]).Params(), root=project.root)
    body = approval_body(project.root, _ref(res))
    assert "INCOMPATIBLE with the champion: class list: 2 classes ['cat', 'dog'] -> 3 classes" in body
    assert "**3 classes**: `cat`, `dog`, `fox`" in body
