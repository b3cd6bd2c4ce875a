"""Temperature scaling: post-hoc calibration of a trained classifier (Guo et al., 2017).

A network trained with cross-entropy is usually over-confident: its top-1 confidence is
higher than its accuracy, and by how much varies from one training run to the next (the
default digits model measured an ECE of 0.06 to 0.12 over five seeds). Dividing the logits
by one scalar ``T`` fitted on the validation split (minimum negative log-likelihood) fixes
most of that without changing a single prediction: ``argmax(z / T) == argmax(z)``.

``cvplatform train`` (``train.calibrate``) hands the best checkpoint's validation logits to the
task (:meth:`ClassificationTask.calibrate <cvplatform.tasks.classification.ClassificationTask.calibrate>`,
which calls :func:`calibrate`), records the fitted ``T`` in the checkpoint, and every later user
of the model (evaluation, the ONNX export and its parity check, serving) gets the scaled network
from :func:`cvplatform.models.checkpoint.load_checkpoint`; the ONNX graph contains the division.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

#: Search range of the temperature (log-spaced); outside it the model is degenerate.
T_MIN, T_MAX = 0.05, 20.0


def _nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    import numpy as np

    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(len(labels)), labels]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising the mean negative log-likelihood of ``softmax(logits / T)``.

    Args:
        logits: ``(N, C)`` validation logits.
        labels: ``(N,)`` integer labels.

    Returns:
        ``T`` in ``[T_MIN, T_MAX]`` (1.0 when there is nothing to fit).

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> labels = rng.integers(0, 3, 500)
        >>> logits = rng.normal(size=(500, 3)); logits[np.arange(500), labels] += 2.0
        >>> t = fit_temperature(logits * 4.0, labels)  # the same model, 4x more confident
        >>> round(t / fit_temperature(logits, labels), 1)
        4.0
    """
    import numpy as np
    from scipy.optimize import minimize_scalar

    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if logits.ndim != 2 or len(logits) == 0 or len(labels) != len(logits):
        return 1.0
    res = minimize_scalar(lambda log_t: _nll(logits, labels, math.exp(log_t)),
                          bounds=(math.log(T_MIN), math.log(T_MAX)), method="bounded",
                          options={"xatol": 1e-4})
    return float(math.exp(res.x)) if res.success else 1.0


def mean_top1_confidence(logits: np.ndarray) -> float:
    """Mean top-1 softmax probability of ``(N, C)`` logits.

    Example:
        >>> import numpy as np
        >>> round(mean_top1_confidence(np.array([[0.0, 0.0], [0.0, 100.0]])), 3)
        0.75
    """
    import numpy as np

    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    return float(p.max(axis=1).mean())


def calibrate(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Fit the temperature on validation ``logits``/``labels`` and describe its effect.

    Returns ``temperature`` (what the checkpoint records), the mean top-1 confidence before and
    after dividing the logits by it, and the top-1 accuracy (unchanged by the temperature).

    Example:
        >>> import numpy as np
        >>> fit = calibrate(np.array([[4.0, 0.0], [0.0, 4.0], [4.0, 0.0]]), np.array([0, 1, 1]))
        >>> sorted(fit), round(fit["accuracy"], 3)
        (['accuracy', 'confidence_after', 'confidence_before', 'temperature'], 0.667)
    """
    import numpy as np

    z, y = np.asarray(logits), np.asarray(labels)
    t = fit_temperature(z, y)
    return {"temperature": t, "confidence_before": mean_top1_confidence(z),
            "confidence_after": mean_top1_confidence(z / t), "accuracy": float(np.mean(z.argmax(axis=1) == y))}


__all__ = ["T_MAX", "T_MIN", "calibrate", "fit_temperature", "mean_top1_confidence"]
