"""The task seam's proof (docs/adr/0010-task-seam.md): a task the stages have never heard of.

``BrightnessTask`` (tests/fixtures/tasks/brightness.py) regresses an image's mean brightness:
one ONNX output ``brightness (N, 1)``, MSE training, ``mae`` / ``within_0_05`` metrics and a
``{"brightness": float}`` response. It is registered here with ``register_task`` and run through
the real stages (train -> export -> evaluate -> serve), on a tiny synthetic project, with no stage
module knowing it: everything task-specific comes through the ``Task`` interface.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.fixtures.tasks.brightness import BrightnessTask
from tests.fixtures.tiny_dataset import REPO, TEST_OVERRIDES

pytestmark = pytest.mark.integration

SIZE = 32
SUITE = {
    "name": "brightness",
    "description": "Brightness regression: clean plus two brightness-preserving corruptions.",
    "min_pass_rate": 1.0,
    "defaults": {"level": "warn"},
    "scenarios": [
        {"name": "clean", "kind": "clean", "level": "must_pass", "max_mae": 0.2, "min_within_0_05": 0.0},
        {"kind": "corruption", "corruption": "gaussian_noise", "severities": [1], "max_mae": 0.25},
        {"kind": "corruption", "corruption": "defocus_blur", "severities": [1], "max_mae": 0.25,
         "min_relative_within_0_05": 0.0},
    ],
}
RECIPE = {"input_size": [SIZE, SIZE], "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "train": [], "eval": []}


@pytest.fixture
def brightness_task():
    from cvplatform.tasks import register_task, unregister_task

    register_task("brightness", BrightnessTask)
    yield BrightnessTask()
    unregister_task("brightness")


def _image(level: float, rng: np.random.Generator) -> np.ndarray:
    """A flat colour of mean ``level`` (x 255) with a little noise and a tint."""
    tint = rng.uniform(-0.05, 0.05, size=3)
    img = np.clip(level + tint, 0, 1)[None, None, :] * 255 + rng.normal(0, 6, size=(SIZE, SIZE, 3))
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def _project(root: Path, n: int = 120, seed: int = 0) -> Path:
    import shutil

    import pandas as pd
    from PIL import Image

    from cvplatform.config import apply_overrides, read_yaml
    from cvplatform.data.manifest import write_manifest
    from cvplatform.utils.io import sha256_file

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        img = _image(float(rng.uniform(0.05, 0.95)), rng)
        level = float(img.mean() / 255.0)
        label = "dark" if level < 0.5 else "bright"
        f = root / "data" / "raw" / label / f"{i:04d}.png"
        f.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img, mode="RGB").save(f, format="PNG")
        split = "train" if i % 5 < 3 else "val" if i % 5 == 3 else "test"
        rows.append({"path": f.relative_to(root).as_posix(), "sha256": sha256_file(f), "label": label,
                     "width": SIZE, "height": SIZE, "channels": 3, "format": "PNG", "source": "brightness",
                     "origin": f"brightness/{i}", "split": split, "brightness": f"{level:.6f}"})
    write_manifest(pd.DataFrame(rows), root / "data" / "processed" / "manifest.parquet")
    shutil.copytree(REPO / "configs", root / "configs", dirs_exist_ok=True)
    (root / "configs" / "augment" / "brightness.yaml").write_text(yaml.safe_dump(RECIPE), encoding="utf-8")
    (root / "configs" / "scenarios" / "brightness.yaml").write_text(yaml.safe_dump(SUITE, sort_keys=False),
                                                                     encoding="utf-8")
    overrides = [
        *TEST_OVERRIDES, "project.task=brightness", "train.epochs=3", "train.model.small_cnn={width: 8, stages: 2}",
        "train.monitor=val_mae", "train.mode=min", "train.calibrate=false", "train.loss.class_weights=none",
        "train.optimizer.lr=0.01", "train.augment=configs/augment/brightness.yaml",
        "evaluate.suite=configs/scenarios/brightness.yaml", "evaluate.bootstrap_samples=100",
        "evaluate.compare_champion=false", "evaluate.gallery_size=3",
        "export.benchmark.enabled=false", "export.int8.calibration_images=32",
        "export.parity.atol=0.001", "export.parity.min_agreement=0.95", "export.int8.max_drop=0.05",
    ]
    data = apply_overrides(read_yaml(REPO / "params.yaml") or {}, overrides, "params.yaml")
    (root / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return root


def _png(level: float) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((SIZE, SIZE, 3), round(level * 255), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.slow
def test_a_task_defined_in_the_tests_runs_through_every_stage(tmp_path, monkeypatch, brightness_task):
    from fastapi.testclient import TestClient

    from cvplatform.config import load_params
    from cvplatform.evaluation.run import run_evaluate
    from cvplatform.export.run import run_export
    from cvplatform.serving.app import build_app
    from cvplatform.train import run_train

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("CVPLATFORM_ADMIN_TOKEN", raising=False)
    root = _project(tmp_path)
    monkeypatch.chdir(root)
    params = load_params(root / "params.yaml")

    trained = run_train(params, root=root)
    assert Path(trained.best_checkpoint).is_file()

    # export: ONNX with the task's output name, parity and INT8 judged with the task's agreement and metric
    exported = run_export(params, root=root)
    import onnx

    graph = onnx.load(root / "artifacts" / "export" / "model_fp32.onnx").graph
    assert [o.name for o in graph.output] == ["brightness"]
    parity = json.loads((root / "artifacts" / "export" / "parity.json").read_text())
    assert parity["passed"] is True and parity["agreement"] >= 0.95
    int8 = json.loads((root / "artifacts" / "export" / "int8.json").read_text())
    assert int8["metric"] == "mae" and int8["higher_is_better"] is False
    assert exported.chosen in ("fp32", "int8")

    # evaluate the shipped artifact on the suite: gates over the task's metrics
    result = run_evaluate(params, root=root)
    gate_report = json.loads((root / "artifacts" / "evaluate" / "gate_report.json").read_text())
    names = {c["name"] for c in gate_report["checks"]}
    assert {"max_mae", "min_within_0_05", "min_relative_within_0_05"} <= names
    clean_mae = next(c for c in gate_report["checks"] if c["name"] == "max_mae" and c["scenario"] == "clean")
    assert clean_mae["status"] == "passed" and 0.0 <= clean_mae["value"] <= 0.2
    assert result.passed
    scenarios = json.loads((root / "artifacts" / "evaluate" / "scenarios.json").read_text())
    assert set(scenarios["scenarios"]) == {"clean", "gaussian_noise_s1", "defocus_blur_s1"}
    assert scenarios["scenarios"]["clean"]["mae"] == pytest.approx(clean_mae["value"])
    metrics = json.loads((root / "artifacts" / "evaluate" / "metrics.json").read_text())
    assert set(metrics) >= {"mae", "within_0_05"}
    assert "max_mae" in (root / "artifacts" / "evaluate" / "report.md").read_text()

    # serve the exported model: /v1/predict and OIP v2 speak the task's response and outputs
    app = build_app(params, root=root, model="artifacts/export/model.onnx")
    with TestClient(app) as client:
        for _ in range(100):
            if client.get("/v2/health/ready").status_code == 200:
                break
            import time

            time.sleep(0.1)
        dark, bright = _png(0.15), _png(0.85)
        r = client.post("/v1/predict", files=[("files", ("d.png", dark, "image/png")),
                                              ("files", ("b.png", bright, "image/png"))])
        assert r.status_code == 200, r.text
        preds = r.json()["predictions"]
        assert preds[0]["brightness"] < preds[1]["brightness"]
        meta = client.get(f"/v2/models/{params.registry.model_name}").json()
        assert meta["outputs"] == [{"name": "brightness", "datatype": "FP32", "shape": [-1, 1]}]
        req = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2],
                           "data": [base64.b64encode(b).decode() for b in (dark, bright)]}]}
        r = client.post(f"/v2/models/{params.registry.model_name}/infer", json=req)
        assert r.status_code == 200, r.text
        out = r.json()["outputs"]
        assert [o["name"] for o in out] == ["brightness"] and out[0]["shape"] == [2, 1]
        assert out[0]["data"][0] < out[0]["data"][1]
        assert out[0]["data"][0] == pytest.approx(preds[0]["brightness"], abs=1e-6)


def test_a_gate_key_the_task_does_not_have_is_a_configuration_error(tmp_path, brightness_task):
    from cvplatform.errors import ConfigError
    from cvplatform.evaluation.scenarios import load_suite

    bad = {**SUITE, "scenarios": [{"name": "clean", "kind": "clean", "min_accuracy": 0.9}]}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(bad), encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_suite(path, task=brightness_task)
    msg = str(exc.value)
    assert "min_accuracy" in msg and str(path) in msg and "max_mae" in msg and exc.value.exit_code == 2
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(SUITE), encoding="utf-8")
    gates = load_suite(good, task=brightness_task).policy().scenarios
    assert gates["clean"].thresholds() == {"max_mae": 0.2, "min_within_0_05": 0.0}


def test_the_gates_compare_a_champion_through_the_tasks_paired_delta(tmp_path, brightness_task):
    """``max_drop`` for a lower-is-better metric: the challenger may lose at most that much MAE per image."""
    from cvplatform.evaluation.gates import check_gates
    from cvplatform.evaluation.scenarios import load_suite

    suite = {**SUITE, "scenarios": [{**SUITE["scenarios"][0], "max_drop": 0.02}]}
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite), encoding="utf-8")
    policy = load_suite(path, task=brightness_task).policy(n_bootstrap=200)
    rng = np.random.default_rng(0)
    target = rng.uniform(0, 1, 200)
    ids = [f"{i:064x}" for i in range(200)]

    def result(noise: float):
        pred = target + rng.normal(0, noise, 200)
        return brightness_task.evaluate_scenario("clean", "clean", ids, target, {"brightness": pred[:, None]},
                                                 ["bright", "dark"], n_bootstrap=200)

    champion = {"clean": result(0.02)}
    as_good = check_gates({"clean": result(0.02)}, policy, champion, task=brightness_task)
    worse = check_gates({"clean": result(0.2)}, policy, champion, task=brightness_task)
    reg = {r: next(c for c in g.checks if c.name == "champion_regression") for r, g in
           (("as_good", as_good), ("worse", worse))}
    assert reg["as_good"].status == "passed" and "MAE change vs champion" in reg["as_good"].reason
    assert reg["worse"].status == "failed" and reg["worse"].value < -0.1
    assert not worse.passed and as_good.passed
