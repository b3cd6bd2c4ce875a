"""Scenario-suite evaluation and release gates (the ``evaluate`` stage).

* :mod:`~cvplatform.evaluation.scenarios` — suite files (clean, corruptions, metadata slices, curated lists)
* :mod:`~cvplatform.evaluation.corruptions` — deterministic corruptions, severities 1..5
* :mod:`~cvplatform.evaluation.gates` — the pure :func:`check_gates` -> :class:`GateReport`
* :mod:`~cvplatform.evaluation.predictors` — ``.ckpt`` / ``.onnx`` / ``models:/`` behind one interface
* :mod:`~cvplatform.evaluation.suite_runner` — :func:`run_suite`: models on a suite's scenarios (same pixels)
* :mod:`~cvplatform.evaluation.report` — Markdown/HTML report, plots, plot data
* :mod:`~cvplatform.evaluation.run` — :func:`run_evaluate`

Each scenario's result and metrics come from the project's task
(:meth:`cvplatform.tasks.base.Task.evaluate_scenario`); classification's accuracy, macro-F1,
per-class, ECE, bootstrap CIs and mCE live in :mod:`cvplatform.tasks.classification.metrics`.

Names are imported lazily, so ``import cvplatform.evaluation`` stays light.
"""

from __future__ import annotations

from cvplatform.utils.lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "run_evaluate": "cvplatform.evaluation.run",
    "EvaluateResult": "cvplatform.evaluation.run",
    "find_champion": "cvplatform.evaluation.run",
    "check_gates": "cvplatform.evaluation.gates",
    "GateCheck": "cvplatform.evaluation.gates",
    "GatePolicy": "cvplatform.evaluation.gates",
    "GateReport": "cvplatform.evaluation.gates",
    "ScenarioGate": "cvplatform.evaluation.gates",
    "ScenarioSuite": "cvplatform.evaluation.scenarios",
    "Scenario": "cvplatform.evaluation.scenarios",
    "load_suite": "cvplatform.evaluation.scenarios",
    "CORRUPTIONS": "cvplatform.evaluation.corruptions",
    "apply_corruption": "cvplatform.evaluation.corruptions",
    "run_suite": "cvplatform.evaluation.suite_runner",
    "load_images": "cvplatform.evaluation.suite_runner",
    "select_split": "cvplatform.evaluation.suite_runner",
    "Predictor": "cvplatform.evaluation.predictors",
    "OnnxPredictor": "cvplatform.evaluation.predictors",
    "TorchCheckpointPredictor": "cvplatform.evaluation.predictors",
    "load_predictor": "cvplatform.evaluation.predictors",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
