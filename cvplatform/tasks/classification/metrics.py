"""Classification metrics for one scenario, confidence intervals and corruption error.

Point estimates come from torchmetrics (accuracy, macro-F1, per-class precision
and recall, specificity -> false-positive rate, confusion matrix, expected
calibration error: torchmetrics' own binning of the top-1 confidences, which are
taken with numpy, the same number as ``multiclass_calibration_error``). Proportions (accuracy, per-class recall) get **Wilson score
intervals** (:func:`wilson_interval`), which stay honest at 0 % and 100 %: 33 of 33
correct gives [0.896, 1.000], not the [1.000, 1.000] a bootstrap of a perfect
sample returns. Macro-F1, which is not a proportion, keeps the percentile
bootstrap: it resamples the *same* per-image outcomes with numpy (one index matrix
per chunk of resamples, vectorised confusion counts, no Python loop per resample), using the same macro-F1 convention as torchmetrics (a class
absent from both targets and predictions is left out of the average), so a
bootstrap distribution is centred on the reported point estimate.

Definitions
-----------
accuracy
    share of images whose arg-max class is the label.
macro_f1
    unweighted mean over classes of F1 (classes with no label and no prediction
    in the scenario are excluded).
false-positive rate of class k
    ``FP_k / (FP_k + TN_k)``: share of images of *other* classes predicted as k
    (``1 - specificity_k``). ``None`` when no image of another class exists.
ECE
    expected calibration error (L1) of the top-1 confidence over ``n_bins``
    equal-width bins (torchmetrics binning: ``[b_i, b_{i+1})`` plus a bin for
    confidence exactly 1.0). :attr:`ScenarioMetrics.reliability` holds the bins,
    so ``sum(share * |accuracy - confidence|)`` over them equals the ECE.
confidence intervals
    accuracy and per-class recall: Wilson score interval at level ``confidence``
    (default 95 %); macro-F1: percentile bootstrap (``n_bootstrap`` resamples of the
    images, with replacement, seeded); champion comparison: paired bootstrap.
corruption error (:func:`corruption_error_summary`)
    ``E_{c,s}`` = error (1 - accuracy) of corruption ``c`` at severity ``s``.

    * **mCE** as ImageNet-C defines it, with the **champion as the reference model**
      (ImageNet-C uses AlexNet): ``CE_c = sum_s E_{c,s} / sum_s E^ref_{c,s}``,
      ``mCE = mean_c CE_c``. 1.0 = as robust as the champion, below 1 = more robust.
      Only reported when the champion was evaluated on the same images; each
      ``E^ref_{c,s}`` is floored at ``1 / N`` (one mistake) so a perfect reference
      keeps it finite.
    * **error multiple vs clean** (``error_multiple_vs_clean``): the model's own
      corruption error divided by its own clean error,
      ``mean_c mean_s E_{c,s} / max(E_clean, 1 / N_clean)``. It needs no reference
      model, but it is *not* mCE: 3.0 means "three times its clean error".
    * ``mean_degradation = mean_c mean_s (E_{c,s} - E_clean)``: accuracy points lost.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cvplatform.errors import DataError
from cvplatform.tasks.classification import softmax  # the one softmax of classification (re-exported)

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

_CHUNK_ELEMENTS = 4_000_000  # bootstrap indices per chunk (~32 MB of int64)


@dataclass(frozen=True)
class ScenarioMetrics:
    """Metrics of one scenario (JSON-friendly; ``None`` where undefined).

    Attributes:
        n: number of images.
        accuracy / accuracy_ci: point estimate and (low, high) Wilson score interval.
        macro_f1 / macro_f1_ci: point estimate and (low, high) bootstrap interval.
        precision / recall / support: per class name.
        critical_fpr: false-positive rate per configured critical class.
        ece: expected calibration error (L1, top-1).
        reliability: one row per non-empty bin: ``lower, upper, count, share, confidence, accuracy``.
        confusion: ``confusion[true][pred]`` counts, rows/cols in class order.
    """

    n: int
    accuracy: float
    accuracy_ci: tuple[float, float]
    """Wilson score interval."""
    macro_f1: float
    macro_f1_ci: tuple[float, float]
    precision: dict[str, float | None]
    recall: dict[str, float | None]
    support: dict[str, int]
    critical_fpr: dict[str, float | None]
    ece: float
    reliability: list[dict[str, float]]
    confusion: list[list[int]]
    mean_confidence: float = 0.0
    recall_ci: dict[str, tuple[float, float] | None] = field(default_factory=dict)
    """Wilson interval of each class's recall (None for a class without images)."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def error(self) -> float:
        """1 - accuracy."""
        return 1.0 - self.accuracy


# --------------------------------------------------------------------------- helpers (numpy)
def _confusions(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int, idx: np.ndarray) -> np.ndarray:
    """Confusion matrices for each row of ``idx`` (B, n) -> (B, C, C) counts."""
    import numpy as np

    codes = (y_true * num_classes + y_pred)[idx]  # (B, n)
    b = idx.shape[0]
    offsets = (np.arange(b) * num_classes * num_classes)[:, None]
    flat = np.bincount((codes + offsets).ravel(), minlength=b * num_classes * num_classes)
    return flat.reshape(b, num_classes, num_classes)


def macro_f1_from_confusion(cm: np.ndarray) -> np.ndarray:
    """Macro-F1 from confusion matrices ``(..., C, C)`` (torchmetrics convention).

    A class with no true and no predicted image is excluded from the average.

    Example:
        >>> import numpy as np
        >>> float(macro_f1_from_confusion(np.array([[2, 0], [1, 1]])))
        0.7333333333333334
    """
    import numpy as np

    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    fp = cm.sum(axis=-2) - tp
    fn = cm.sum(axis=-1) - tp
    denom = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), 0.0)
    present = denom > 0
    n_present = present.sum(axis=-1)
    return np.where(n_present > 0, (f1 * present).sum(axis=-1) / np.maximum(n_present, 1), 0.0)


def _bootstrap_indices(n: int, n_bootstrap: int, rng: np.random.Generator):
    """Yield index arrays (b, n) covering ``n_bootstrap`` resamples in memory-bounded chunks."""
    per_chunk = max(1, _CHUNK_ELEMENTS // max(n, 1))
    done = 0
    while done < n_bootstrap:
        b = min(per_chunk, n_bootstrap - done)
        yield rng.integers(0, n, size=(b, n))
        done += b


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n``: honest at 0 % and 100 %.

    Args:
        successes: Number of successes (e.g. correctly classified images).
        n: Number of trials (images), > 0.
        confidence: Two-sided level, e.g. 0.95.

    Example:
        >>> [round(v, 3) for v in wilson_interval(33, 33)]
        [0.896, 1.0]
        >>> [round(v, 3) for v in wilson_interval(0, 10)]
        [0.0, 0.278]
    """
    from statistics import NormalDist

    if n <= 0:
        raise DataError("wilson_interval: no trials")
    if not 0 <= successes <= n:
        raise DataError(f"wilson_interval: {successes} successes out of {n} trials")
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)  # exact at the bounds (no float residue)
    return lo, hi


def _interval(dist: np.ndarray, confidence: float) -> tuple[float, float]:
    import numpy as np

    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(dist, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def bootstrap_ci(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    num_classes: int,
    *,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of accuracy and macro-F1 (seeded; resamples images).

    Args:
        y_true: ``(N,)`` int labels.
        y_pred: ``(N,)`` int predictions.
        num_classes: number of classes.
        n_bootstrap: number of resamples.
        confidence: interval level, e.g. 0.95.
        seed: RNG seed (same seed -> same interval).

    Returns:
        ``{"accuracy": (lo, hi), "macro_f1": (lo, hi)}``.

    Example:
        >>> import numpy as np
        >>> y = np.array([0, 1, 1, 0, 1, 0, 1, 1])
        >>> ci = bootstrap_ci(y, y, 2, n_bootstrap=200, seed=1)
        >>> ci["accuracy"]
        (1.0, 1.0)
    """
    import numpy as np

    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    n = y_true.shape[0]
    if n == 0:
        raise DataError("bootstrap_ci: no images to resample")
    correct = (y_true == y_pred).astype(np.float64)
    accs, f1s = [], []
    for idx in _bootstrap_indices(n, n_bootstrap, np.random.default_rng(seed)):
        accs.append(correct[idx].mean(axis=1))
        f1s.append(macro_f1_from_confusion(_confusions(y_true, y_pred, num_classes, idx)))
    return {
        "accuracy": _interval(np.concatenate(accs), confidence),
        "macro_f1": _interval(np.concatenate(f1s), confidence),
    }


def _bootstrap_macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int, *, n_bootstrap: int,
                        confidence: float, seed: int) -> tuple[float, float]:
    """The macro-F1 interval of :func:`bootstrap_ci` alone (same seed, same resamples, same interval): a scenario's
    accuracy has its Wilson interval, so its bootstrap distribution is not computed."""
    import numpy as np

    f1s = [macro_f1_from_confusion(_confusions(y_true, y_pred, num_classes, idx))
           for idx in _bootstrap_indices(y_true.shape[0], n_bootstrap, np.random.default_rng(seed))]
    return _interval(np.concatenate(f1s), confidence)


def paired_bootstrap_delta(
    challenger_correct: np.ndarray,
    champion_correct: np.ndarray,
    *,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Paired bootstrap of (challenger - champion) accuracy on the same images.

    Both vectors hold per-image correctness (bool/0-1) for the *same* images in the
    same order; each resample draws image indices once and applies them to both.

    Returns:
        ``(delta, ci_low, ci_high)`` where ``delta`` is the observed accuracy difference.

    Example:
        >>> import numpy as np
        >>> a = np.array([1, 1, 0, 1]); b = np.array([1, 1, 0, 1])
        >>> paired_bootstrap_delta(a, b, n_bootstrap=100, seed=0)
        (0.0, 0.0, 0.0)
    """
    import numpy as np

    a = np.asarray(challenger_correct, dtype=np.float64)
    b = np.asarray(champion_correct, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise DataError(
            f"paired bootstrap needs two correctness vectors over the same images; got shapes {a.shape} and {b.shape}"
        )
    n = a.shape[0]
    if n == 0:
        raise DataError("paired bootstrap: no images")
    d = a - b
    rng = np.random.default_rng(seed)
    dist = np.concatenate([d[idx].mean(axis=1) for idx in _bootstrap_indices(n, n_bootstrap, rng)])
    lo, hi = _interval(dist, confidence)
    return float(d.mean()), lo, hi


def reliability_bins(
    confidences: np.ndarray, correct: np.ndarray, n_bins: int = 15
) -> list[dict[str, float]]:
    """Reliability-diagram data with torchmetrics' ECE binning (non-empty bins only).

    Bins are ``[i/n_bins, (i+1)/n_bins)`` plus ``[1.0, 1.0]`` for confidence exactly 1.

    Example:
        >>> import numpy as np
        >>> rows = reliability_bins(np.array([0.95, 0.95, 0.55]), np.array([1, 0, 1]), n_bins=10)
        >>> [(r["lower"], r["count"], r["accuracy"]) for r in rows]
        [(0.5, 1, 1.0), (0.9, 2, 0.5)]
    """
    import numpy as np

    conf = np.asarray(confidences, dtype=np.float32)
    corr = np.asarray(correct, dtype=np.float64)
    n = conf.shape[0]
    bounds = np.linspace(0, 1, n_bins + 1, dtype=np.float32)
    idx = np.searchsorted(bounds, conf, side="right") - 1  # == torch.bucketize(right=True) - 1
    # one stable sort groups the images by bin (each bin keeps its images in their order, so every mean below
    # adds the same numbers in the same order as a boolean mask of the bin would)
    idx = np.where((idx >= 0) & (idx <= n_bins), idx, n_bins + 1)  # outside [0, 1] (or NaN): in no bin
    order = np.argsort(idx, kind="stable")
    counts = np.bincount(idx, minlength=n_bins + 2)
    starts = np.concatenate([[0], np.cumsum(counts)])
    conf_sorted = conf[order].astype(np.float64)
    corr_sorted = corr[order]
    rows = []
    for b in np.flatnonzero(counts[: n_bins + 1]):
        count, lo_i, hi_i = int(counts[b]), int(starts[b]), int(starts[b + 1])
        lower = float(bounds[b]) if b < n_bins else 1.0
        upper = float(bounds[b + 1]) if b < n_bins else 1.0
        rows.append({
            "lower": round(lower, 6),
            "upper": round(upper, 6),
            "count": count,
            "share": count / n,
            "confidence": float(conf_sorted[lo_i:hi_i].mean()),
            "accuracy": float(corr_sorted[lo_i:hi_i].mean()),
        })
    return rows


# --------------------------------------------------------------------------- scenario metrics
def _checked_inputs(y_true: np.ndarray, probs: np.ndarray, names: list[str],
                    critical_classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Labels (int64) and probabilities (float64) checked against each other and the classes.

    Raises:
        DataError: no images, shape mismatch, or an unknown critical class.
    """
    import numpy as np

    c = len(names)
    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    if y.ndim != 1 or p.ndim != 2 or p.shape[0] != y.shape[0] or p.shape[1] != c:
        raise DataError(
            f"compute_metrics: labels {y.shape} and probabilities {p.shape} do not match {c} classes"
        )
    if y.shape[0] == 0:
        raise DataError("compute_metrics: no images")
    unknown = [k for k in critical_classes if k not in names]
    if unknown:
        raise DataError(f"critical classes {unknown} are not model classes {names}")
    return y, p


def _calibration_error(probs: np.ndarray, y: np.ndarray, n_bins: int) -> float:
    """torchmetrics' ``multiclass_calibration_error(norm="l1")`` of float32 probabilities, the same number: its top-1
    confidence and correctness are taken with numpy (torch's ``max(dim=1)`` spreads a 150-row batch over its thread
    pool and waited several ms per scenario for busy cores) and binned by torchmetrics' own ``_ce_compute``."""
    import numpy as np
    import torch
    from torchmetrics.functional.classification.calibration_error import _ce_compute

    p32 = np.ascontiguousarray(probs, dtype=np.float32)
    top = p32.argmax(axis=1)  # first maximal index, as torch.max(dim=1)
    conf = p32[np.arange(p32.shape[0]), top]
    acc = (top == y).astype(np.float32)
    return float(_ce_compute(torch.from_numpy(conf), torch.from_numpy(acc), n_bins, norm="l1"))


def compute_metrics(
    y_true: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    *,
    critical_classes: Sequence[str] = (),
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    n_bins: int = 15,
) -> ScenarioMetrics:
    """All metrics of one scenario from labels and predicted probabilities.

    Args:
        y_true: ``(N,)`` int class indices.
        probs: ``(N, C)`` probabilities (rows sum to 1; use :func:`softmax` on logits).
        class_names: ``C`` names, in logit order.
        critical_classes: names whose false-positive rate is reported.
        n_bootstrap: bootstrap resamples for the intervals.
        confidence: interval level.
        seed: bootstrap seed.
        n_bins: ECE / reliability bins.

    Raises:
        DataError: no images, shape mismatch, or an unknown critical class.

    Example:
        >>> import numpy as np
        >>> p = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
        >>> m = compute_metrics(np.array([0, 1, 1]), p, ["a", "b"], n_bootstrap=50)
        >>> round(m.accuracy, 4), m.confusion
        (0.6667, [[1, 0], [1, 1]])
    """
    import numpy as np
    import torch
    from torchmetrics.functional.classification import (
        multiclass_accuracy,
        multiclass_confusion_matrix,
        multiclass_f1_score,
        multiclass_precision,
        multiclass_recall,
        multiclass_specificity,
    )

    names = list(class_names)
    c = len(names)
    y, p = _checked_inputs(y_true, probs, names, critical_classes)
    pred = p.argmax(axis=1)
    t_target = torch.from_numpy(y)
    t_pred = torch.from_numpy(pred)
    kw = {"num_classes": c, "validate_args": False}
    accuracy = float(multiclass_accuracy(t_pred, t_target, average="micro", **kw))
    macro_f1 = float(multiclass_f1_score(t_pred, t_target, average="macro", **kw))
    prec = multiclass_precision(t_pred, t_target, average=None, **kw).tolist()
    rec = multiclass_recall(t_pred, t_target, average=None, **kw).tolist()
    spec = multiclass_specificity(t_pred, t_target, average=None, **kw).tolist()
    cm = multiclass_confusion_matrix(t_pred, t_target, **kw).numpy()
    ece = _calibration_error(p, y, n_bins)

    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    n = int(y.shape[0])
    precision = {names[k]: (float(prec[k]) if predicted[k] > 0 else None) for k in range(c)}
    recall = {names[k]: (float(rec[k]) if support[k] > 0 else None) for k in range(c)}
    critical_fpr = {}
    for name in critical_classes:
        k = names.index(name)
        negatives = n - int(support[k])
        critical_fpr[name] = (1.0 - float(spec[k])) if negatives > 0 else None

    f1_ci = _bootstrap_macro_f1(y, pred, c, n_bootstrap=n_bootstrap, confidence=confidence, seed=seed)
    conf = p.max(axis=1)
    diag = np.diagonal(cm)
    recall_ci = {names[k]: (wilson_interval(int(diag[k]), int(support[k]), confidence) if support[k] > 0 else None)
                 for k in range(c)}
    return ScenarioMetrics(
        n=n,
        accuracy=accuracy,
        accuracy_ci=wilson_interval(int((pred == y).sum()), n, confidence),
        macro_f1=macro_f1,
        macro_f1_ci=f1_ci,
        precision=precision,
        recall=recall,
        support={names[k]: int(support[k]) for k in range(c)},
        critical_fpr=critical_fpr,
        ece=ece,
        reliability=reliability_bins(conf, pred == y, n_bins),
        confusion=cm.astype(int).tolist(),
        mean_confidence=float(conf.mean()),
        recall_ci=recall_ci,
    )


def corruption_error_summary(
    clean_error: float,
    corruption_errors: Mapping[tuple[str, int], float],
    n_clean: int,
    reference_errors: Mapping[tuple[str, int], float] | None = None,
    reference_name: str | None = None,
) -> dict[str, Any]:
    """mCE (against a reference model) and the reference-free summaries (see the module docstring).

    Args:
        clean_error: error (1 - accuracy) on the clean scenario.
        corruption_errors: ``{(corruption, severity): error}``.
        n_clean: number of clean images (sets the ``1 / N`` floors).
        reference_errors: the reference model's (the champion's) errors on the same
            scenarios; None = no mCE.
        reference_name: what the reference is (e.g. ``models:/cvplatform@champion``).

    Returns:
        ``{"mce", "mce_reference", "error_multiple_vs_clean", "mean_degradation",
        "mean_corruption_error", "per_corruption": {name: {"error", "error_multiple", "degradation", "ce"}}}``;
        values are ``None`` when undefined (no corruption scenarios, no reference).

    Example:
        >>> s = corruption_error_summary(0.1, {("fog", 1): 0.2, ("fog", 2): 0.4, ("jpeg", 1): 0.1}, 100,
        ...                              {("fog", 1): 0.3, ("fog", 2): 0.3, ("jpeg", 1): 0.2}, "champion")
        >>> round(s["mce"], 6), round(s["error_multiple_vs_clean"], 6), round(s["mean_degradation"], 6)
        (0.75, 2.0, 0.1)
    """
    empty = {"mce": None, "mce_reference": None, "error_multiple_vs_clean": None, "mean_degradation": None,
             "mean_corruption_error": None, "per_corruption": {}}
    if not corruption_errors:
        return empty
    one = 1.0 / max(int(n_clean), 1)
    floor = max(float(clean_error), one)
    by_name: dict[str, list[tuple[int, float]]] = {}
    for (name, sev), err in sorted(corruption_errors.items()):
        by_name.setdefault(name, []).append((int(sev), float(err)))
    per: dict[str, dict[str, Any]] = {}
    for name, rows in by_name.items():
        errs = [e for _, e in rows]
        mean_err = sum(errs) / len(errs)
        per[name] = {"error": mean_err, "error_multiple": mean_err / floor, "degradation": mean_err - float(clean_error),
                     "ce": None}
        if reference_errors is not None and all((name, sev) in reference_errors for sev, _ in rows):
            ref = sum(max(float(reference_errors[(name, sev)]), one) for sev, _ in rows)
            per[name]["ce"] = sum(errs) / ref
    k = len(per)
    ces = [v["ce"] for v in per.values() if v["ce"] is not None]
    return {
        "mce": (sum(ces) / len(ces)) if reference_errors is not None and len(ces) == k else None,
        "mce_reference": reference_name if reference_errors is not None and len(ces) == k else None,
        "error_multiple_vs_clean": sum(v["error_multiple"] for v in per.values()) / k,
        "mean_degradation": sum(v["degradation"] for v in per.values()) / k,
        "mean_corruption_error": sum(v["error"] for v in per.values()) / k,
        "clean_error_floor": floor,
        "per_corruption": per,
    }


@dataclass
class ScenarioResult:
    """What one predictor did on one scenario: per-image outcomes plus :class:`ScenarioMetrics`.

    ``image_ids`` (sha256 values) and their order identify the images, so a
    champion evaluated on the same scenario can be compared image by image.
    ``metrics`` is ``None`` for a scenario without images (e.g. an empty slice).
    """

    name: str
    kind: str
    image_ids: tuple[str, ...]
    y_true: np.ndarray
    probs: np.ndarray
    metrics: ScenarioMetrics | None
    note: str = ""
    corruption: str | None = None
    severity: int | None = None

    @property
    def n(self) -> int:
        return len(self.image_ids)

    @property
    def y_pred(self) -> np.ndarray:
        return self.probs.argmax(axis=1) if self.n else self.y_true.copy()

    @property
    def confidence(self) -> np.ndarray:
        return self.probs.max(axis=1) if self.n else self.probs.sum(axis=1)

    @property
    def values(self) -> dict[str, float | None]:
        """The scenario-result protocol (cvplatform.tasks.base): accuracy, macro-F1, ECE (None without images)."""
        m = self.metrics
        return {"accuracy": m.accuracy if m else None, "macro_f1": m.macro_f1 if m else None,
                "ece": m.ece if m else None}

    @property
    def intervals(self) -> dict[str, tuple[float, float] | None]:
        m = self.metrics
        return {"accuracy": m.accuracy_ci if m else None, "macro_f1": m.macro_f1_ci if m else None}

    @property
    def correct(self) -> np.ndarray:
        return self.y_pred == self.y_true

    @classmethod
    def from_predictions(
        cls,
        name: str,
        kind: str,
        image_ids: Sequence[str],
        y_true: np.ndarray,
        probs: np.ndarray,
        class_names: Sequence[str],
        *,
        critical_classes: Sequence[str] = (),
        n_bootstrap: int = 1000,
        confidence: float = 0.95,
        seed: int = 0,
        n_bins: int = 15,
        note: str = "",
        corruption: str | None = None,
        severity: int | None = None,
    ) -> ScenarioResult:
        """Build a result (and its metrics) from labels and probabilities.

        Example:
            >>> import numpy as np
            >>> r = ScenarioResult.from_predictions("clean", "clean", ["i1", "i2"], np.array([0, 1]),
            ...                                     np.array([[0.8, 0.2], [0.7, 0.3]]), ["a", "b"], n_bootstrap=20)
            >>> r.correct.tolist(), r.metrics.accuracy
            ([True, False], 0.5)
        """
        import numpy as np

        ids = tuple(str(i) for i in image_ids)
        y = np.asarray(y_true, dtype=np.int64).reshape(-1)
        p = np.asarray(probs, dtype=np.float64).reshape(len(ids), len(class_names))
        if y.shape[0] != len(ids):
            raise DataError(f"scenario {name!r}: {len(ids)} image ids but {y.shape[0]} labels")
        metrics = None
        if ids:
            metrics = compute_metrics(
                y, p, class_names, critical_classes=critical_classes, n_bootstrap=n_bootstrap,
                confidence=confidence, seed=seed, n_bins=n_bins,
            )
        return cls(name, kind, ids, y, p, metrics, note, corruption, severity)


__all__ = [
    "ScenarioMetrics",
    "ScenarioResult",
    "bootstrap_ci",
    "compute_metrics",
    "corruption_error_summary",
    "macro_f1_from_confusion",
    "paired_bootstrap_delta",
    "reliability_bins",
    "softmax",
    "wilson_interval",
]
