"""Temperature scaling: fitted by NLL, recovers a known over-confidence, never changes a prediction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cvplatform.tasks.base import Task
from cvplatform.tasks.classification import ClassificationTask
from cvplatform.tasks.classification.calibration import T_MAX, T_MIN, fit_temperature, mean_top1_confidence


def _ece(logits: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    conf, pred = p.max(axis=1), p.argmax(axis=1)
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            total += m.mean() * abs(conf[m].mean() - (pred[m] == labels[m]).mean())
    return total


def test_the_fitted_temperature_follows_the_over_or_under_confidence_and_lowers_ece():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 5, 4000)
    logits = rng.normal(size=(4000, 5))
    logits[np.arange(4000), labels] += 2.5
    base = fit_temperature(logits, labels)
    for scale in (0.5, 3.0):  # the same model made under-/over-confident by `scale`
        t = fit_temperature(logits * scale, labels)
        assert t == pytest.approx(base * scale, rel=0.02)
        assert _ece(logits * scale / t, labels) < min(0.02, _ece(logits * scale, labels))
        assert np.array_equal((logits * scale / t).argmax(1), logits.argmax(1))


def test_degenerate_inputs_give_one_and_the_range_is_bounded():
    assert fit_temperature(np.zeros((0, 3)), np.zeros(0, dtype=int)) == 1.0
    perfect = np.array([[50.0, -50.0], [-50.0, 50.0]] * 10)
    t = fit_temperature(perfect, np.array([0, 1] * 10))
    assert T_MIN <= t <= T_MAX


def test_the_task_calibrates_with_temperature_scaling_and_the_base_task_does_not():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, 600)
    logits = rng.normal(size=(600, 3))
    logits[np.arange(600), labels] += 2.0
    logits *= 4.0  # over-confident
    task = ClassificationTask()
    assert task.calibration == "temperature scaling"
    fit = task.calibrate({"logits": logits}, [torch.as_tensor(labels[:250]), torch.as_tensor(labels[250:])])
    assert fit is not None and fit["temperature"] == fit_temperature(logits, labels)  # the batches are joined in order
    assert fit["accuracy"] == pytest.approx(float(np.mean(logits.argmax(1) == labels)))
    assert fit["confidence_after"] < fit["confidence_before"] == pytest.approx(mean_top1_confidence(logits))
    assert Task.calibrate(task, {"logits": logits}, [labels]) is None and Task.calibration == ""
