"""Classification's report figures: fixed margins stay valid for any label length."""

from __future__ import annotations

import numpy as np
from PIL import Image

from cvplatform.tasks.classification.metrics import ScenarioResult
from cvplatform.tasks.classification.report import plot_confusion, plot_reliability


def test_figures_with_very_long_class_names_are_written(tmp_path):
    # the margins come from an estimate of the widest label (no tight_layout pass); a long label is capped,
    # never a layout error
    names = ["a" * 70, "b" * 70, "c"]
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1]])
    result = ScenarioResult.from_predictions("clean", "clean", ["w", "x", "y", "z"], np.array([0, 1, 2, 1]), probs,
                                             names, n_bootstrap=10)
    for path in (plot_confusion(result, names, tmp_path / "confusion.png"),
                 plot_reliability(result, tmp_path / "reliability.png")):
        with Image.open(path) as im:
            assert im.format == "PNG" and min(im.size) > 100
