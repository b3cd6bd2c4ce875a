"""Drift checks: served traffic against the training reference (pure functions).

* **Input drift**, per statistic of :mod:`cvplatform.monitoring.stats`:

  - the *population stability index* ``PSI = sum((c - r) * ln(c / r))`` over bins
    whose edges are quantiles of the reference (a statistic with at most ``bins``
    distinct reference values, e.g. a fixed image size, gets one bin per value plus
    one below and one above, so an unseen size counts as a shift); proportions are
    floored at :data:`EPS`. Rule of thumb: < 0.1 stable, 0.1-0.25 minor, > 0.25 major;
  - the two-sample Kolmogorov-Smirnov statistic (largest gap between the two
    empirical CDFs, 0..1; scipy).

* **Prediction drift**: the *prediction-distribution PSI* (:func:`class_psi`) between the
  training set's class shares (the reference's ``label_counts``) and the shares of the
  classes served in the window, plus the *mean-confidence shift*: the window's mean
  confidence against the same model version's mean over the baseline period before the
  window (a drop larger than ``max_confidence_drop`` fails), and an optional absolute floor
  ``min_mean_confidence``. The served class and confidence of each image are the project's
  task's (``task.decode_top``: the top-1 class and its probability for classification, the
  best box's class and score for detection), written by the server to the inference log
  (``predicted``, ``confidence``); drift itself knows no task.

* **Object drift**, for a task whose answers are objects (detection's boxes; the reference holds the training
  annotations' objects, ``Reference.objects``, and the log each served image's ``objects``): the PSI of the
  objects per image, of the objects' areas (share of the image) and of the class mix of all objects against
  the training annotations, and the drop of the mean object score against the same model version's baseline
  period (the annotations have no scores). A task without objects (classification) has none of these checks.

:func:`check_drift` applies a :class:`DriftPolicy` (``configs/monitor/drift.yaml``)
and returns a :class:`DriftReport`; it decides, the caller acts
(``docs/architecture.md``, principle 4). A check *fails* only when its value is
strictly beyond its threshold.
Fewer than ``min_samples`` requests in the window never count as drift: every check
is then reported as skipped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import Field, model_validator

from cvplatform.config import StrictModel
from cvplatform.monitoring.stats import STAT_NAMES

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pandas as pd

#: Floor of a bin's proportion in the PSI (an empty bin would make it infinite).
EPS = 1e-4


# --------------------------------------------------------------------------- policy
class StatThresholds(StrictModel):
    """Thresholds of one input statistic; null disables that check (the value is still reported)."""

    psi: float | None = Field(0.25, gt=0.0)
    """Largest allowed PSI against the training reference."""
    ks: float | None = Field(None, gt=0.0, le=1.0)
    """Largest allowed two-sample KS statistic (0..1)."""


class InputThresholds(StrictModel):
    """Per-statistic thresholds (the keys are the statistics of cvplatform.monitoring.stats)."""

    brightness: StatThresholds = StatThresholds(psi=0.25, ks=0.3)
    contrast: StatThresholds = StatThresholds(psi=0.25, ks=0.3)
    sharpness: StatThresholds = StatThresholds(psi=0.25, ks=0.3)
    width: StatThresholds = StatThresholds(psi=0.25, ks=None)
    height: StatThresholds = StatThresholds(psi=0.25, ks=None)
    aspect_ratio: StatThresholds = StatThresholds(psi=0.25, ks=None)


class PredictionThresholds(StrictModel):
    """Prediction-drift thresholds."""

    psi: float | None = Field(0.25, gt=0.0)
    """Largest allowed PSI between the training class shares and the predicted classes (prediction-distribution PSI)."""
    max_confidence_drop: float | None = Field(0.10, gt=0.0, le=1.0)
    """Largest allowed drop of the mean confidence (``task.decode_top``) below the baseline period's (same model version)."""
    min_mean_confidence: float | None = Field(None, ge=0.0, le=1.0)
    """Smallest allowed mean confidence (``task.decode_top``) in the window; null = not checked."""
    baseline_hours: float = Field(168.0, gt=0.0)
    """Length of the baseline period just before the window (confidence shift)."""


class ObjectThresholds(StrictModel):
    """Object-drift thresholds (tasks whose answers are objects: detection); null disables a check."""

    count_psi: float | None = Field(0.25, gt=0.0)
    """Largest PSI of the objects per image (served vs training annotations)."""
    area_psi: float | None = Field(0.25, gt=0.0)
    """Largest PSI of the objects' areas as a share of their image (served vs training annotations)."""
    class_psi: float | None = Field(0.25, gt=0.0)
    """Largest PSI of the class mix of all objects (served vs training annotations)."""
    max_score_drop: float | None = Field(0.10, gt=0.0, le=1.0)
    """Largest drop of the mean object score below the same model version's baseline period."""


class DriftPolicy(StrictModel):
    """The drift policy (``configs/monitor/drift.yaml``).

    Example:
        >>> from cvplatform.config import load_config
        >>> policy = load_config("configs/monitor/drift.yaml", DriftPolicy)  # doctest: +SKIP
        >>> DriftPolicy().inputs.brightness.psi
        0.25
    """

    window_hours: float = Field(24.0, gt=0.0)
    """Look-back window: traffic logged in the last N hours is compared with the reference."""
    min_samples: int = Field(100, ge=1)
    """Fewest served images in the window (and per check) before any check may fail."""
    bins: int = Field(10, ge=2, le=100)
    """Quantile bins of the input-statistic PSI."""
    variants: tuple[Literal["champion", "canary", "shadow"], ...] = ("champion", "canary")
    """Logged variants that count as traffic (shadow scores duplicate served images)."""
    inputs: InputThresholds = InputThresholds()
    prediction: PredictionThresholds = PredictionThresholds()
    objects: ObjectThresholds = ObjectThresholds()

    @model_validator(mode="after")
    def _some_variant(self) -> DriftPolicy:
        if not self.variants:
            raise ValueError("variants must list at least one of champion, canary, shadow")
        return self


# --------------------------------------------------------------------------- statistics
def bin_edges(reference: Sequence[float] | np.ndarray, bins: int = 10) -> np.ndarray:
    """Bin edges for the PSI of a statistic, from its reference values.

    Values ``x`` fall in bin ``searchsorted(edges, x, side="right")`` (``len(edges) + 1``
    bins). More than ``bins`` distinct reference values: the inner quantiles
    ``1/bins .. (bins-1)/bins`` (open-ended outer bins). At most ``bins`` distinct values
    (a discrete statistic such as a fixed width): one bin per value plus one below the
    smallest and one above the largest.

    Example:
        >>> bin_edges([16, 16, 16], 10).tolist()  # one size: below / 16 / above
        [16.0, 16.000000000000004]
    """
    import numpy as np

    ref = np.asarray(reference, dtype=np.float64)
    ref = ref[np.isfinite(ref)]
    if ref.size == 0:
        return np.asarray([], dtype=np.float64)
    uniq = np.unique(ref)
    if uniq.size <= bins:
        mids = (uniq[:-1] + uniq[1:]) / 2.0
        return np.concatenate([[uniq[0]], mids, [np.nextafter(uniq[-1], np.inf)]])
    qs = np.quantile(ref, np.arange(1, bins) / bins)
    return np.unique(qs)


def proportions(values: Sequence[float] | np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Share of ``values`` in each bin defined by ``edges`` (see :func:`bin_edges`)."""
    import numpy as np

    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    counts = np.bincount(np.searchsorted(edges, v, side="right"), minlength=len(edges) + 1)
    return counts / max(int(v.size), 1)


def psi_from_proportions(
    expected: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray, eps: float = EPS
) -> float:
    """PSI of two distributions over the same bins (each floored at ``eps``).

    Example:
        >>> round(psi_from_proportions([0.5, 0.5], [0.5, 0.5]), 6)
        0.0
        >>> round(psi_from_proportions([0.5, 0.5], [0.9, 0.1]), 3)
        0.879
    """
    import numpy as np

    e = np.maximum(np.asarray(expected, dtype=np.float64), eps)
    a = np.maximum(np.asarray(actual, dtype=np.float64), eps)
    return float(np.sum((a - e) * np.log(a / e)))


def psi(
    reference: Sequence[float] | np.ndarray,
    current: Sequence[float] | np.ndarray,
    bins: int = 10,
    eps: float = EPS,
) -> float:
    """PSI of ``current`` against ``reference`` with bins from the reference (:func:`bin_edges`).

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> ref = rng.normal(0, 1, 5000)
        >>> psi(ref, ref) == 0.0
        True
        >>> psi(ref, ref + 2.0) > 1.0
        True
    """
    edges = bin_edges(reference, bins)
    return psi_from_proportions(proportions(reference, edges), proportions(current, edges), eps)


def ks_statistic(reference: Sequence[float] | np.ndarray, current: Sequence[float] | np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic (0 = same empirical CDF, 1 = disjoint).

    Example:
        >>> ks_statistic([1, 2, 3], [1, 2, 3])
        0.0
        >>> ks_statistic([1, 2, 3], [10, 11, 12])
        1.0
    """
    import numpy as np
    from scipy.stats import ks_2samp

    r = np.asarray(reference, dtype=np.float64)
    c = np.asarray(current, dtype=np.float64)
    r, c = r[np.isfinite(r)], c[np.isfinite(c)]
    if r.size == 0 or c.size == 0:
        return float("nan")
    return float(ks_2samp(r, c).statistic)


def class_shares(counts: Mapping[str, float]) -> dict[str, float]:
    """Counts per class -> shares per class (sorted by class name)."""
    total = float(sum(counts.values()))
    return {k: (float(v) / total if total else 0.0) for k, v in sorted(counts.items())}


def class_psi(reference_counts: Mapping[str, float], current_counts: Mapping[str, float], eps: float = EPS) -> float:
    """PSI between two class distributions (classes missing on one side count as 0, floored at ``eps``):
    the prediction-distribution PSI of the ``predicted_class.psi`` check.

    Example:
        >>> class_psi({"a": 50, "b": 50}, {"a": 5, "b": 5})
        0.0
        >>> class_psi({"a": 50, "b": 50}, {"a": 10}) > 4
        True
    """
    classes = sorted(set(reference_counts) | set(current_counts))
    ref = class_shares({c: reference_counts.get(c, 0) for c in classes})
    cur = class_shares({c: current_counts.get(c, 0) for c in classes})
    return psi_from_proportions([ref[c] for c in classes], [cur[c] for c in classes], eps)


#: The names of before the task seam (docs/adr/0010-task-seam.md), kept for existing imports.
label_distribution = class_shares
label_psi = class_psi


# --------------------------------------------------------------------------- report
@dataclass
class DriftCheck:
    """One check: what was measured, against which threshold, and the verdict.

    ``status`` is ``passed`` | ``failed`` | ``skipped`` (too few samples, no threshold
    data, ...); ``passed`` is False only for a failed check.
    """

    name: str
    kind: Literal["input", "prediction", "objects"]
    metric: str
    value: float | None
    threshold: float | None
    status: Literal["passed", "failed", "skipped"]
    reason: str
    n: int = 0

    @property
    def passed(self) -> bool:
        return self.status != "failed"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


@dataclass
class DriftReport:
    """The verdict of :func:`check_drift`.

    Attributes:
        drifted: True when at least one check failed.
        checks: Every check, in a fixed order (inputs first, then predictions).
        n_current: Served images in the window (policy variants only).
        n_reference: Reference images.
        insufficient: True when the window had fewer than ``min_samples`` images.
        statistics: Per input statistic: reference/current mean, PSI, KS, samples.
        reference_classes / predicted: Class shares in the training set / among the window's predictions
            (``task.decode_top`` classes); ``reference_labels`` is the former name of ``reference_classes``
            (also written to :meth:`to_dict` for readers of earlier reports).
        mean_confidence / baseline_confidence: Mean confidence (``task.decode_top``) in the window / baseline.
        model_version: ``name:version`` the confidence shift was measured on.
        objects: For a task with objects: training vs window objects per image (mean), area (mean share), class
            shares and the window's / baseline's mean object score; empty otherwise.
    """

    drifted: bool
    checks: list[DriftCheck]
    n_current: int
    n_reference: int
    insufficient: bool = False
    statistics: dict[str, dict[str, float | int | None]] = field(default_factory=dict)
    reference_classes: dict[str, float] = field(default_factory=dict)
    predicted: dict[str, float] = field(default_factory=dict)
    mean_confidence: float | None = None
    baseline_confidence: float | None = None
    model_version: str | None = None
    objects: dict[str, Any] = field(default_factory=dict)

    @property
    def reference_labels(self) -> dict[str, float]:
        """The former name of :attr:`reference_classes`."""
        return self.reference_classes

    @property
    def failures(self) -> list[DriftCheck]:
        return [c for c in self.checks if c.status == "failed"]

    @property
    def reasons(self) -> list[str]:
        """One line per failed check."""
        return [c.reason for c in self.failures]

    @property
    def reason(self) -> str:
        """One line: why drift was declared (the first failed check per statistic), or why not."""
        if self.drifted:
            first: dict[str, str] = {}
            for c in self.failures:
                first.setdefault(c.name.split(".")[0], c.reason)
            return "drift: " + "; ".join(first.values())
        if self.insufficient:
            skipped = next((c.reason for c in self.checks if c.status == "skipped"), "")
            return f"no drift decision: {skipped}" if skipped else "no drift decision: insufficient traffic"
        n_checked = sum(c.status == "passed" for c in self.checks)
        return f"no drift: {n_checked} check(s) passed on {self.n_current} served image(s)"

    def to_dict(self) -> dict[str, Any]:
        return {
            "drifted": self.drifted,
            "reason": self.reason,
            "reasons": self.reasons,
            "insufficient": self.insufficient,
            "n_current": self.n_current,
            "n_reference": self.n_reference,
            "checks": [c.to_dict() for c in self.checks],
            "statistics": self.statistics,
            "reference_classes": self.reference_classes,
            "reference_labels": self.reference_classes,
            "predicted": self.predicted,
            "mean_confidence": self.mean_confidence,
            "baseline_confidence": self.baseline_confidence,
            "model_version": self.model_version,
            "objects": self.objects,
        }


class ReferenceLike(Protocol):
    """What :func:`check_drift` needs of a reference (see :class:`~cvplatform.monitoring.reference.Reference`)."""

    stats: Mapping[str, Sequence[float]]
    label_counts: Mapping[str, int]


def _fmt(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.4g}" if abs(v) < 1000 else f"{v:.0f}"


def _traffic(df: pd.DataFrame | None, variants: Sequence[str]) -> pd.DataFrame | None:
    if df is None:
        return None
    if "variant" in df.columns:
        df = df[df["variant"].isin(list(variants))]
    return df


class _Checks:
    """The checks of one drift pass: each is judged (value > threshold fails) or skipped with the reason."""

    def __init__(self) -> None:
        self.items: list[DriftCheck] = []

    def skip(self, name: str, kind: Any, metric: str, threshold: float | None, why: str, n: int = 0) -> None:
        self.items.append(DriftCheck(name, kind, metric, None, threshold, "skipped", f"{name}: skipped, {why}", n))

    def judge(self, name: str, kind: Any, metric: str, value: float, threshold: float | None, n: int,
              fail_text: str, pass_text: str) -> None:
        if threshold is None:
            return
        if not math.isfinite(value):
            self.skip(name, kind, metric, threshold, f"{metric} could not be computed", n)
            return
        failed = value > threshold
        self.items.append(DriftCheck(name, kind, metric, float(value), float(threshold),
                                     "failed" if failed else "passed", fail_text if failed else pass_text, n))


@dataclass
class _Window:
    """The window's traffic (and the baseline's) with the facts every check needs."""

    cur: pd.DataFrame | None
    base: pd.DataFrame | None
    n_cur: int
    min_n: int

    @property
    def insufficient(self) -> bool:
        return self.n_cur < self.min_n

    @property
    def too_few(self) -> str:
        return (f"{self.n_cur} served image(s) in the window < min_samples {self.min_n} "
                "(tiny traffic never counts as drift)")


def _input_checks(reference: ReferenceLike, w: _Window, policy: DriftPolicy,
                  checks: _Checks) -> dict[str, dict[str, float | int | None]]:
    """PSI and KS of every input statistic against the training reference; returns the per-statistic summary."""
    import numpy as np

    statistics: dict[str, dict[str, float | int | None]] = {}
    for stat in STAT_NAMES:
        th: StatThresholds = getattr(policy.inputs, stat)
        ref_vals = np.asarray(reference.stats.get(stat, []), dtype=np.float64)
        ref_vals = ref_vals[np.isfinite(ref_vals)]
        cur_vals = np.asarray([] if w.cur is None or stat not in w.cur.columns else w.cur[stat], dtype=np.float64)
        cur_vals = cur_vals[np.isfinite(cur_vals)]
        row: dict[str, float | int | None] = {
            "reference_mean": float(ref_vals.mean()) if ref_vals.size else None,
            "current_mean": float(cur_vals.mean()) if cur_vals.size else None,
            "n_reference": int(ref_vals.size), "n_current": int(cur_vals.size), "psi": None, "ks": None,
        }
        statistics[stat] = row
        wanted = [(m, t) for m, t in (("psi", th.psi), ("ks", th.ks)) if t is not None]
        if ref_vals.size < 2:
            for m, t in wanted:
                checks.skip(f"{stat}.{m}", "input", m, t, f"the reference has {ref_vals.size} value(s) of {stat}")
            continue
        if w.insufficient or cur_vals.size < w.min_n:
            why = w.too_few if w.insufficient else (
                f"{cur_vals.size} logged image(s) with {stat} < min_samples {w.min_n} "
                "(requests sent as tensors carry no input statistics)")
            for m, t in wanted:
                checks.skip(f"{stat}.{m}", "input", m, t, why, int(cur_vals.size))
            continue
        p = psi(ref_vals, cur_vals, policy.bins)
        k = ks_statistic(ref_vals, cur_vals)
        row["psi"], row["ks"] = p, k
        shift = (f"mean {_fmt(row['current_mean'])} vs {_fmt(row['reference_mean'])} in training, "
                 f"{cur_vals.size} images")
        for m, value, t in (("psi", p, th.psi), ("ks", k, th.ks)):
            label = "PSI" if m == "psi" else "KS"
            checks.judge(f"{stat}.{m}", "input", m, value, t, int(cur_vals.size),
                         f"{stat} {label} {_fmt(value)} > {_fmt(t)}: input drift ({shift})",
                         f"{stat} {label} {_fmt(value)} <= {_fmt(t)}")
    return statistics


def _prediction_check(ref_counts: dict[str, int], predicted_counts: dict[str, int], w: _Window,
                      pt: Any, checks: _Checks) -> None:
    """Prediction-distribution PSI: the served classes (``task.decode_top``) against the training set's."""
    if pt.psi is None:
        return
    n_pred = sum(predicted_counts.values())
    if not ref_counts:
        checks.skip("predicted_class.psi", "prediction", "psi", pt.psi, "the reference has no training class counts")
    elif w.insufficient or n_pred < w.min_n:
        checks.skip("predicted_class.psi", "prediction", "psi", pt.psi,
                    w.too_few if w.insufficient else f"{n_pred} predictions < min_samples {w.min_n}", n_pred)
    else:
        value = class_psi(ref_counts, predicted_counts)
        ref_share = class_shares(ref_counts)
        cur_share = class_shares(predicted_counts)
        top = max(cur_share, key=lambda c: (cur_share[c] - ref_share.get(c, 0.0), c))
        checks.judge("predicted_class.psi", "prediction", "psi", value, pt.psi, n_pred,
                     f"predicted-class PSI {_fmt(value)} > {_fmt(pt.psi)}: prediction drift "
                     f"({top!r} is {cur_share[top]:.0%} of predictions vs {ref_share.get(top, 0.0):.0%} of "
                     "the training set)",
                     f"predicted-class PSI {_fmt(value)} <= {_fmt(pt.psi)}")


def _confidence_drop_check(w: _Window, pt: Any, checks: _Checks) -> tuple[str | None, float | None]:
    """Mean confidence of the busiest model version against its own baseline; ``(model version, baseline mean)``."""
    name, limit = "confidence.drop", pt.max_confidence_drop
    if limit is None:
        return None, None
    if w.insufficient:
        checks.skip(name, "prediction", "confidence_drop", limit, w.too_few, w.n_cur)
        return None, None
    cur, base, min_n = w.cur, w.base, w.min_n
    assert cur is not None
    mv = cur.groupby(["model", "version"], dropna=True).size()
    if mv.empty:
        checks.skip(name, "prediction", "confidence_drop", limit, "no model version logged")
        return None, None
    (model, version) = mv.sort_values(ascending=False, kind="mergesort").index[0]
    model_version = f"{model}:{version}"
    mine = cur[(cur["model"] == model) & (cur["version"] == version)]["confidence"].dropna()
    theirs = None if base is None or base.empty else \
        base[(base["model"] == model) & (base["version"] == version)]["confidence"].dropna()
    if len(mine) < min_n:
        checks.skip(name, "prediction", "confidence_drop", limit,
                    f"{len(mine)} prediction(s) by {model_version} < min_samples {min_n}", len(mine))
        return model_version, None
    if theirs is None or len(theirs) < min_n:
        checks.skip(name, "prediction", "confidence_drop", limit,
                    f"{0 if theirs is None else len(theirs)} baseline prediction(s) by {model_version} in the "
                    f"{pt.baseline_hours:g} h before the window < min_samples {min_n}", len(mine))
        return model_version, None
    m_now, m_base = float(mine.mean()), float(theirs.mean())
    drop = m_base - m_now
    checks.judge(name, "prediction", "confidence_drop", drop, limit, len(mine),
                 f"mean confidence of {model_version} fell by {_fmt(drop)} > {_fmt(limit)} "
                 f"({_fmt(m_now)} in the window vs {_fmt(m_base)} in the baseline)",
                 f"mean confidence of {model_version} changed by {_fmt(-drop)} (allowed drop {_fmt(limit)})")
    return model_version, m_base


def _confidence_floor_check(w: _Window, mean_conf: float | None, pt: Any, checks: _Checks) -> None:
    """The window's mean confidence against ``min_mean_confidence``."""
    if pt.min_mean_confidence is None:
        return
    name = "confidence.mean"
    if w.insufficient or mean_conf is None:
        checks.skip(name, "prediction", "mean_confidence", pt.min_mean_confidence, w.too_few, w.n_cur)
        return
    # "value > threshold fails" for every check: compare the shortfall below the floor with 0
    failed = pt.min_mean_confidence - mean_conf > 0
    checks.items.append(DriftCheck(
        name, "prediction", "mean_confidence", mean_conf, pt.min_mean_confidence, "failed" if failed else "passed",
        (f"mean confidence {_fmt(mean_conf)} < min_mean_confidence {_fmt(pt.min_mean_confidence)}"
         if failed else f"mean confidence {_fmt(mean_conf)} >= {_fmt(pt.min_mean_confidence)}"),
        w.n_cur))


def _served_objects(df: pd.DataFrame | None) -> list[Mapping[str, Any]]:
    """The logged ``objects`` of each record that has them."""
    if df is None or "objects" not in df.columns:
        return []
    return [o for o in df["objects"].tolist() if isinstance(o, Mapping)]


def _object_checks(reference: ReferenceLike, w: _Window, policy: DriftPolicy, checks: _Checks,
                   model_version: str | None) -> dict[str, Any]:
    """Objects per image, object areas, class mix (against the training annotations) and the mean object score
    (against the baseline): only when the reference holds training objects (a task with objects)."""
    import numpy as np

    ref = getattr(reference, "objects", None)
    if not isinstance(ref, Mapping):
        return {}
    ot = policy.objects
    cur = _served_objects(w.cur)
    ref_counts = np.asarray(ref.get("per_image") or [], np.float64)
    ref_areas = np.asarray(ref.get("areas") or [], np.float64)
    ref_classes = {str(k): int(v) for k, v in (ref.get("classes") or {}).items()}
    cur_counts = np.asarray([len(o.get("scores") or []) for o in cur], np.float64)
    cur_areas = np.asarray([float(a) for o in cur for a in (o.get("areas") or [])], np.float64)
    cur_classes: dict[str, int] = {}
    for o in cur:
        for c in o.get("classes") or []:
            cur_classes[str(c)] = cur_classes.get(str(c), 0) + 1
    cur_scores = [float(v) for o in cur for v in (o.get("scores") or [])]
    summary: dict[str, Any] = {
        "reference_per_image": float(ref_counts.mean()) if ref_counts.size else None,
        "current_per_image": float(cur_counts.mean()) if cur_counts.size else None,
        "reference_area": float(ref_areas.mean()) if ref_areas.size else None,
        "current_area": float(cur_areas.mean()) if cur_areas.size else None,
        "reference_classes": class_shares(ref_classes) if ref_classes else {},
        "current_classes": class_shares(cur_classes) if cur_classes else {},
        "mean_score": (sum(cur_scores) / len(cur_scores)) if cur_scores else None,
        "baseline_score": None, "n_images": int(cur_counts.size), "n_objects": len(cur_scores),
    }

    def numeric(name: str, threshold: float | None, ref_vals: Any, cur_vals: Any, what: str, unit: str) -> None:
        if threshold is None:
            return
        if ref_vals.size < 2:
            checks.skip(name, "objects", "psi", threshold, f"the reference has {ref_vals.size} training {what}")
        elif w.insufficient or cur_vals.size < w.min_n:
            checks.skip(name, "objects", "psi", threshold, w.too_few if w.insufficient else
                        f"{cur_vals.size} served {what} < min_samples {w.min_n} (does the server log objects?)",
                        int(cur_vals.size))
        else:
            value = psi(ref_vals, cur_vals, policy.bins)
            shift = f"mean {_fmt(float(cur_vals.mean()))} vs {_fmt(float(ref_vals.mean()))} {unit} in training"
            checks.judge(name, "objects", "psi", value, threshold, int(cur_vals.size),
                         f"{what} PSI {_fmt(value)} > {_fmt(threshold)}: object drift ({shift})",
                         f"{what} PSI {_fmt(value)} <= {_fmt(threshold)}")

    numeric("objects_per_image.psi", ot.count_psi, ref_counts, cur_counts, "objects per image", "per image")
    numeric("object_area.psi", ot.area_psi, ref_areas, cur_areas, "object areas", "of the image")
    if ot.class_psi is not None:
        n = sum(cur_classes.values())
        if not ref_classes:
            checks.skip("object_class.psi", "objects", "psi", ot.class_psi, "the reference has no training objects")
        elif w.insufficient or n < w.min_n:
            checks.skip("object_class.psi", "objects", "psi", ot.class_psi,
                        w.too_few if w.insufficient else f"{n} served objects < min_samples {w.min_n}", n)
        else:
            value = class_psi(ref_classes, cur_classes)
            rs, cs = class_shares(ref_classes), class_shares(cur_classes)
            top = max(cs, key=lambda c: (cs[c] - rs.get(c, 0.0), c))
            checks.judge("object_class.psi", "objects", "psi", value, ot.class_psi, n,
                         f"object class PSI {_fmt(value)} > {_fmt(ot.class_psi)}: object drift ({top!r} is "
                         f"{cs[top]:.0%} of served objects vs {rs.get(top, 0.0):.0%} of the training boxes)",
                         f"object class PSI {_fmt(value)} <= {_fmt(ot.class_psi)}")
    _object_score_check(w, ot, checks, model_version, summary)
    return summary


def _object_score_check(w: _Window, ot: ObjectThresholds, checks: _Checks, model_version: str | None,
                        summary: dict[str, Any]) -> None:
    """Mean object score of the busiest model version in the window against its own baseline period."""
    name, limit = "object_score.drop", ot.max_score_drop
    if limit is None:
        return
    if model_version is None and w.cur is not None and not w.cur.empty:  # the confidence check is disabled
        mv = w.cur.groupby(["model", "version"], dropna=True).size()
        if not mv.empty:
            top = mv.sort_values(ascending=False, kind="mergesort").index[0]
            model_version = f"{top[0]}:{top[1]}"
    if w.insufficient or model_version is None or w.cur is None:
        checks.skip(name, "objects", "score_drop", limit, w.too_few if w.insufficient else "no model version logged",
                    w.n_cur)
        return
    model, version = model_version.split(":", 1)

    def scores(df: pd.DataFrame | None) -> list[float]:
        if df is None or df.empty:
            return []
        mine = df[(df["model"] == model) & (df["version"] == version)]
        return [float(v) for o in _served_objects(mine) for v in (o.get("scores") or [])]

    now, then = scores(w.cur), scores(w.base)
    if len(now) < w.min_n or len(then) < w.min_n:
        checks.skip(name, "objects", "score_drop", limit,
                    f"{len(now)} object score(s) by {model_version} in the window and {len(then)} in the baseline "
                    f"period; need min_samples {w.min_n} in each", len(now))
        return
    m_now, m_base = sum(now) / len(now), sum(then) / len(then)
    summary["baseline_score"] = m_base
    drop = m_base - m_now
    checks.judge(name, "objects", "score_drop", drop, limit, len(now),
                 f"mean object score of {model_version} fell by {_fmt(drop)} > {_fmt(limit)} "
                 f"({_fmt(m_now)} in the window vs {_fmt(m_base)} in the baseline)",
                 f"mean object score of {model_version} changed by {_fmt(-drop)} (allowed drop {_fmt(limit)})")


def check_drift(
    reference: ReferenceLike,
    current: pd.DataFrame,
    policy: DriftPolicy | None = None,
    *,
    baseline: pd.DataFrame | None = None,
) -> DriftReport:
    """Compare the window's traffic with the training reference under ``policy``.

    Args:
        reference: Training reference: per-statistic values and label counts.
        current: Logged records of the window (:func:`~cvplatform.monitoring.inference_log.read_log`).
        policy: Thresholds, minimum samples, bins and counted variants (default: :class:`DriftPolicy`).
        baseline: Logged records of the baseline period before the window (confidence shift);
            None = that check is skipped.

    Returns:
        A :class:`DriftReport`; ``drifted`` is True when any check failed.

    Example:
        >>> report = check_drift(reference, read_log("artifacts/serving/requests"), policy)  # doctest: +SKIP
        >>> report.drifted, report.reasons  # doctest: +SKIP
        (True, ['brightness PSI 3.2 > 0.25: ...'])
    """
    policy = policy or DriftPolicy()
    cur = _traffic(current, policy.variants)
    w = _Window(cur, _traffic(baseline, policy.variants), 0 if cur is None else len(cur), policy.min_samples)
    checks = _Checks()
    statistics = _input_checks(reference, w, policy, checks)
    pt = policy.prediction
    ref_counts = {str(k): int(v) for k, v in reference.label_counts.items()}
    predicted_counts: dict[str, int] = {}
    if cur is not None and "predicted" in cur.columns:
        predicted_counts = {str(k): int(v) for k, v in cur["predicted"].dropna().value_counts().items()}
    _prediction_check(ref_counts, predicted_counts, w, pt, checks)
    mean_conf: float | None = None
    if cur is not None and w.n_cur and "confidence" in cur.columns:
        conf = cur["confidence"].astype("float64")
        mean_conf = float(conf.mean()) if conf.notna().any() else None
    model_version, base_conf = _confidence_drop_check(w, pt, checks)
    _confidence_floor_check(w, mean_conf, pt, checks)
    objects = _object_checks(reference, w, policy, checks, model_version)
    return DriftReport(
        drifted=any(c.status == "failed" for c in checks.items),
        checks=checks.items,
        n_current=w.n_cur,
        n_reference=max((len(v) for v in reference.stats.values()), default=0),
        insufficient=w.insufficient,
        statistics=statistics,
        reference_classes=class_shares(ref_counts) if ref_counts else {},
        predicted=class_shares(predicted_counts) if predicted_counts else {},
        mean_confidence=mean_conf,
        baseline_confidence=base_conf,
        model_version=model_version,
        objects=objects,
    )


__all__ = [
    "EPS",
    "DriftCheck",
    "DriftPolicy",
    "DriftReport",
    "InputThresholds",
    "ObjectThresholds",
    "PredictionThresholds",
    "StatThresholds",
    "bin_edges",
    "check_drift",
    "class_psi",
    "class_shares",
    "ks_statistic",
    "label_distribution",
    "label_psi",
    "proportions",
    "psi",
    "psi_from_proportions",
]
