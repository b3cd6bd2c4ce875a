"""Canary analysis: pure functions from per-variant statistics to a decision with reasons.

The canary policy (``configs/deploy/canary.yaml``, :class:`CanaryPolicy`) lists the rollout
steps and the thresholds. :func:`analyze_step` compares the canary with the champion on the
statistics the server reports (``GET /admin/stats``, see
:class:`cvplatform.serving.metrics.StatsBook`) and returns a :class:`StepAnalysis`: one
:class:`Check` per criterion, each ``pass``, ``fail`` or ``skip`` (not enough data), with the
measured value, the threshold and a sentence saying why.

Nothing here is task-specific: every class and confidence behind these statistics is the project's
task's (``task.decode_top``, computed by the server per image: the top-1 class and its probability
for classification, the best box's class and score for detection). Agreement compares the two
variants' outputs on the same shadowed image through ``task.shadow_agreement``; the confidence checks
read their ``decode_top`` confidences (docs/adr/0010-task-seam.md).

Checks (names are stable; the controller reports them as rollback reasons):

``min_requests``
    the canary received at least the step's minimum number of routed requests.
``error_rate``
    canary failures / attempts (answered + shadowed) <= ``max_error_rate`` and no more than
    ``max_error_rate_increase`` above the champion's.
``latency_ratio``
    ``max(canary, floor) / max(champion, floor)`` <= ``max_latency_ratio``, on the
    ``latency_percentile`` (default the median) of each variant's onnxruntime compute time per
    image (the run of the batch a request was in, divided by its rows; queue wait excluded),
    compared like for like: the same role (answered or shadowed requests), the same batch size and
    the same contention (alone, or overlapping another model call). That measures what the canary
    model costs, not the event-loop, queueing, batching and contention conditions that differ
    between the roles and traffic shares. The floor (default 0.05 ms, a quarter of the
    default model's ~0.2 ms) keeps tens of microseconds of timer noise from deciding and lies below
    the default model's own scale, so the check judges it
    (see ``docs/adr/0009-canary-agreement-and-latency.md``).
``agreement``
    among shadowed images the **champion is confident about** (its confidence >=
    ``agreement_confidence``), the share where both variants predict the same class >=
    ``min_agreement``. A healthy retrain must not flip the champion's sure answers.
``agreement_uncertain``
    the same share among the other shadowed images (the champion is unsure: hard or degraded
    inputs, where two healthy models legitimately differ) >= ``min_agreement_uncertain``: catches a
    canary that collapses on hard inputs while agreeing on easy ones. Servers that do not report
    agreement by the champion's confidence are judged on all pairs by ``min_agreement`` instead.
``confidence_shift``
    population stability index (PSI, on the confidence histograms) or the two-sample
    Kolmogorov-Smirnov statistic (on the confidence samples) <= ``max``.
``accuracy``
    on requests carrying the true label (``X-True-Label``): canary accuracy >= champion
    accuracy - ``max_accuracy_drop``. Skipped for a task whose server scores its labelled feedback
    itself (a ``feedback`` entry per variant: detection), which ``feedback_map50`` judges instead.
``feedback_map50``
    only for a server that reports ``feedback`` per variant (detection: requests carrying their true
    boxes, ``X-True-Boxes``; the server keeps each variant's last ``stats.feedback_kept`` labelled images
    and scores their served boxes with the project's COCO evaluator): canary mAP50 >= champion mAP50 -
    ``max_map_drop``, once each variant has ``min_labelled`` labelled images.
``count_shift``, ``object_score_shift``, ``class_mix_shift``
    only for a server that reports objects per image (``task.object_signals``: detection's served
    boxes): PSI of the objects-per-image histograms, PSI (or KS) of every object's score, PSI of
    the objects' class mix, canary vs champion, each <= its ``max``.

Agreement is the task's per-image score (``task.shadow_agreement``, reported as ``shadow.measure``):
1 or 0 for the same top-1 class, the matched-box F1 for detection; the checks judge its mean.
``thresholds.by_task.<task>`` replaces threshold keys for the task the server reports (``task`` in
``/admin/stats``), e.g. detection's lower agreement floor.

No I/O here: everything is a function of its arguments (unit-tested without a server).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from pydantic import Field, model_validator

from cvplatform.config import StrictModel, load_config

CheckStatus = Literal["pass", "fail", "skip"]


# --------------------------------------------------------------------------- policy
class ConfidenceShiftThresholds(StrictModel):
    """How much the canary's confidence distribution may move away from the champion's."""

    method: Literal["psi", "ks"] = "psi"
    """psi (population stability index over the confidence histogram) | ks (two-sample Kolmogorov-Smirnov)."""
    max: float = Field(0.25, gt=0.0)
    """Largest allowed PSI (0.1 = minor, 0.25 = major shift) or KS statistic (0..1)."""
    min_samples: int = Field(100, ge=1)
    """Fewest confidence samples per variant before the check counts (else skipped)."""


class ShiftThresholds(StrictModel):
    """How much a distribution of the canary's objects (``task.object_signals``) may move away from the champion's."""

    max: float = Field(0.25, gt=0.0)
    """Largest allowed population stability index (0.1 = minor, 0.25 = major shift)."""
    min_samples: int = Field(100, ge=1)
    """Fewest images (objects per image) or objects (class mix) per variant before the check counts (else skipped)."""


#: Objects per image at or above this share the last bin of the ``count_shift`` histogram.
COUNT_BINS = 10


class AnalysisThresholds(StrictModel):
    """When a canary step passes."""

    max_error_rate: float = Field(0.01, ge=0.0, le=1.0)
    """Largest canary failure rate (failed / attempted inferences, answered and shadowed)."""
    max_error_rate_increase: float = Field(0.005, ge=0.0, le=1.0)
    """Largest canary error rate above the champion's."""
    max_latency_ratio: float = Field(1.5, gt=0.0)
    """Largest canary / champion ratio of the model's compute time per image (at ``latency_percentile``)."""
    latency_percentile: Literal["p50", "p95", "p99"] = "p50"
    """Percentile of the compute time per image compared (the median is the stable one)."""
    latency_floor_ms: float = Field(0.05, ge=0.0)
    """Compute times per image below this count as this (tens of microseconds of noise never decide)."""
    min_latency_samples: int = Field(20, ge=1)
    """Fewest compute-time samples (model calls) per variant before the latency check counts (else skipped)."""
    min_agreement: float = Field(0.95, ge=0.0, le=1.0)
    """Smallest share of the champion's confident shadowed images on which both variants predict the same class."""
    agreement_confidence: float = Field(0.8, ge=0.0, le=1.0)
    """Champion confidence (``task.decode_top``) from which a shadowed image counts as confident (rounded up to a bin edge of
    the server's ``stats.confidence_bins``)."""
    min_agreement_uncertain: float = Field(0.5, ge=0.0, le=1.0)
    """Smallest share of the other shadowed images (champion less confident) on which both predict the same class."""
    min_shadow_pairs: int = Field(50, ge=1)
    """Fewest shadowed images (in each group) before an agreement check counts (else skipped)."""
    require_agreement: bool = False
    """Fail (instead of skip) a step whose agreement check has too few shadowed images."""
    confidence_shift: ConfidenceShiftThresholds = ConfidenceShiftThresholds()
    max_accuracy_drop: float = Field(0.02, ge=0.0, le=1.0)
    """Largest drop of canary accuracy below the champion's on labelled requests."""
    min_labelled: int = Field(50, ge=1)
    """Fewest labelled images per variant before the accuracy (or ``feedback_map50``) check counts (else skipped)."""
    max_map_drop: float = Field(0.05, ge=0.0, le=1.0)
    """Largest drop of canary mAP50 below the champion's on labelled requests (a detector's true boxes)."""
    count_shift: ShiftThresholds = ShiftThresholds()
    """Objects per image (detections per image), canary vs champion: PSI over 0, 1, ..., 9, 10+ (tasks that report
    objects; skipped otherwise)."""
    object_score_shift: ConfidenceShiftThresholds = ConfidenceShiftThresholds()
    """Every object's score (all served boxes, not only the best one), canary vs champion (PSI or KS)."""
    class_mix_shift: ShiftThresholds = ShiftThresholds()
    """Class mix of every object (boxes per class), canary vs champion: PSI over the classes either reported."""
    by_task: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Per ``project.task`` (as the server reports it in ``/admin/stats``), keys of these thresholds that replace
    the ones above for that task: e.g. ``{detection: {min_agreement: 0.8}}``, where agreement is a confident-box F1
    rather than top-1 agreement."""

    @model_validator(mode="after")
    def _task_overrides(self) -> AnalysisThresholds:
        for task, over in self.by_task.items():
            if not isinstance(over, Mapping):
                raise ValueError(f"by_task.{task}: expected a mapping of threshold keys, got {over!r}")
            if "by_task" in over:
                raise ValueError(f"by_task.{task}: by_task cannot be nested")
            self.for_task(task)  # a bad key or value fails when the policy is loaded, not in the middle of a canary
        return self

    def for_task(self, task: str | None) -> AnalysisThresholds:
        """These thresholds with ``by_task[task]`` applied (nested keys merged), or unchanged for another task.

        Example:
            >>> th = AnalysisThresholds(by_task={"detection": {"min_agreement": 0.8, "count_shift": {"max": 0.2}}})
            >>> d = th.for_task("detection")
            >>> d.min_agreement, d.count_shift.max, d.count_shift.min_samples, th.for_task("classification").min_agreement
            (0.8, 0.2, 100, 0.95)
        """
        over = self.by_task.get(task or "")
        if not over:
            return self
        base = self.model_dump(exclude={"by_task"})
        for key, value in over.items():
            if isinstance(value, Mapping) and isinstance(base.get(key), Mapping):
                base[key] = {**base[key], **value}
            else:
                base[key] = value
        return AnalysisThresholds.model_validate(base)


class CanaryStep(StrictModel):
    """One rollout step."""

    traffic: float = Field(gt=0.0, le=1.0)
    """Share of requests answered by the canary during the step."""
    min_requests: int = Field(100, ge=1)
    """Fewest requests routed to the canary before the step is analysed."""
    bake_s: float = Field(60.0, ge=0.0)
    """Shortest duration of the step in seconds."""


def _default_steps() -> list[CanaryStep]:
    return [CanaryStep(traffic=0.1), CanaryStep(traffic=0.5), CanaryStep(traffic=1.0)]


class CanaryPolicy(StrictModel):
    """Everything in ``configs/deploy/canary.yaml``.

    Example:
        >>> p = CanaryPolicy()
        >>> [s.traffic for s in p.steps]
        [0.1, 0.5, 1.0]
        >>> p = load_canary_policy("configs/deploy/canary.yaml")  # doctest: +SKIP
    """

    steps: list[CanaryStep] = Field(default_factory=_default_steps, min_length=1)
    """Rollout steps, in increasing traffic order; passing the last one promotes the canary."""
    shadow: bool = True
    """Mirror requests to the variant that did not answer (agreement, paired confidence, accuracy)."""
    shadow_share: float = Field(1.0, ge=0.0, le=1.0)
    """Share of requests mirrored."""
    poll_interval_s: float = Field(2.0, gt=0.0)
    """Seconds between statistics reads during a step."""
    step_timeout_s: float = Field(900.0, gt=0.0)
    """A step still short of its minimum requests after this long ends the canary inconclusive (aborted, not judged)."""
    early_abort_min_failures: int = Field(10, ge=1)
    """Roll back before the bake time ends once the canary has this many failures and fails error_rate."""
    first_deploy: Literal["promote", "fail"] = "promote"
    """No champion yet: promote the version directly (nothing to compare with) or fail."""
    request_timeout_s: float = Field(30.0, gt=0.0)
    """Timeout of each admin API call."""
    thresholds: AnalysisThresholds = AnalysisThresholds()

    @model_validator(mode="after")
    def _increasing(self) -> CanaryPolicy:
        shares = [s.traffic for s in self.steps]
        if any(b <= a for a, b in zip(shares, shares[1:], strict=False)):
            raise ValueError(f"steps must have strictly increasing traffic, got {shares}")
        return self


def load_canary_policy(path: str | Any, overrides: Sequence[str] = ()) -> CanaryPolicy:
    """Load and validate ``configs/deploy/canary.yaml``, with optional ``key.path=value`` overrides.

    Overrides use the ``--set`` syntax (values read as YAML), e.g. to shrink the policy for a demo:
    ``["steps=[{traffic: 0.5, min_requests: 20, bake_s: 2}, {traffic: 1.0, min_requests: 20, bake_s: 2}]"]``.

    Raises:
        ConfigError: missing file, bad YAML, unknown keys or bad values, naming the file and key.

    Example:
        >>> load_canary_policy("configs/deploy/canary.yaml").steps[0].traffic  # doctest: +SKIP
        0.1
        >>> load_canary_policy("configs/deploy/canary.yaml", ["poll_interval_s=0.5"]).poll_interval_s  # doctest: +SKIP
        0.5
    """
    if not overrides:
        return load_config(path, CanaryPolicy)
    from cvplatform.config import apply_overrides, load_model, read_yaml

    data = read_yaml(path) or {}
    source = f"{path} (with --set {' '.join(overrides)})"
    return load_model(CanaryPolicy, apply_overrides(data, overrides, str(path)), source)


# --------------------------------------------------------------------------- results
@dataclass
class Check:
    """One criterion of a step analysis."""

    name: str
    status: CheckStatus
    value: float | None
    threshold: float | None
    detail: str

    @property
    def failed(self) -> bool:
        return self.status == "fail"


@dataclass
class StepAnalysis:
    """All checks of one step; ``passed`` when none failed."""

    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not any(c.failed for c in self.checks)

    @property
    def failed(self) -> list[str]:
        """Names of the failed checks (the rollback reasons)."""
        return [c.name for c in self.checks if c.failed]

    @property
    def reasons(self) -> list[str]:
        """One sentence per failed check."""
        return [f"{c.name}: {c.detail}" for c in self.checks if c.failed]

    def check(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "failed": self.failed, "reasons": self.reasons,
                "checks": [asdict(c) for c in self.checks]}


# --------------------------------------------------------------------------- statistics
def psi(expected: Sequence[float], actual: Sequence[float], eps: float = 1e-4) -> float:
    """Population stability index between two histograms (counts or shares over the same bins).

    ``sum((a - e) * ln(a / e))`` over bins, with shares floored at ``eps``.

    Example:
        >>> psi([10, 10], [10, 10])
        0.0
        >>> round(psi([90, 10], [50, 50]), 3)
        0.879
    """
    if len(expected) != len(actual):
        raise ValueError(f"psi: histograms have {len(expected)} and {len(actual)} bins")
    te, ta = float(sum(expected)), float(sum(actual))
    if te <= 0 or ta <= 0:
        return 0.0
    total = 0.0
    for e, a in zip(expected, actual, strict=True):
        pe = max(e / te, eps)
        pa = max(a / ta, eps)
        total += (pa - pe) * math.log(pa / pe)
    return total


def ks_statistic(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs.

    Example:
        >>> ks_statistic([0.1, 0.2, 0.3], [0.1, 0.2, 0.3])
        0.0
        >>> ks_statistic([0.1, 0.2], [0.8, 0.9])
        1.0
    """
    xs, ys = sorted(a), sorted(b)
    if not xs or not ys:
        return 0.0
    i = j = 0
    d = 0.0
    n, m = len(xs), len(ys)
    while i < n and j < m:
        v = min(xs[i], ys[j])
        while i < n and xs[i] <= v:
            i += 1
        while j < m and ys[j] <= v:
            j += 1
        d = max(d, abs(i / n - j / m))
    return d


def _num(d: Mapping[str, Any], *keys: str) -> float | None:
    cur: Any = d
    for k in keys:
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(k)
    return float(cur) if isinstance(cur, int | float) and not isinstance(cur, bool) else None


# --------------------------------------------------------------------------- checks
def check_min_requests(canary: Mapping[str, Any], min_requests: int) -> Check:
    """The canary received at least ``min_requests`` routed requests.

    Example:
        >>> check_min_requests({"requests": 12}, 10).status
        'pass'
    """
    n = int(_num(canary, "requests") or 0)
    ok = n >= min_requests
    return Check("min_requests", "pass" if ok else "fail", float(n), float(min_requests),
                 f"canary received {n} request(s), the step needs {min_requests}"
                 + ("" if ok else " (insufficient traffic before the step timeout)"))


def check_error_rate(canary: Mapping[str, Any], champion: Mapping[str, Any], th: AnalysisThresholds) -> Check:
    """Canary failures / attempts within ``max_error_rate`` and ``max_error_rate_increase`` over the champion.

    Example:
        >>> check_error_rate({"attempts": 100, "failures": 5}, {"attempts": 100, "failures": 0},
        ...                  AnalysisThresholds()).status
        'fail'
    """
    attempts = int(_num(canary, "attempts") or 0)
    failures = int(_num(canary, "failures") or 0)
    if attempts == 0:
        return Check("error_rate", "skip", None, th.max_error_rate, "the canary has not been tried yet")
    rate = failures / attempts
    ch_attempts = int(_num(champion, "attempts") or 0)
    ch_rate = (int(_num(champion, "failures") or 0) / ch_attempts) if ch_attempts else 0.0
    limit = min(th.max_error_rate, ch_rate + th.max_error_rate_increase) if ch_attempts else th.max_error_rate
    limit = max(limit, 0.0)
    ok = rate <= th.max_error_rate and rate <= ch_rate + th.max_error_rate_increase
    return Check("error_rate", "pass" if ok else "fail", rate, limit,
                 f"canary failed {failures}/{attempts} inferences ({rate:.2%}); champion {ch_rate:.2%}; "
                 f"allowed {th.max_error_rate:.2%} and at most +{th.max_error_rate_increase:.2%} over the champion")


def _compute_groups(variant: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """``{group: summary}`` of a variant's ``compute_ms_per_image`` (groups like ``answered/x1/alone``)."""
    groups = variant.get("compute_ms_per_image")
    if not isinstance(groups, Mapping):
        return {}
    return {str(k): v for k, v in groups.items() if isinstance(v, Mapping)}


def check_latency(canary: Mapping[str, Any], champion: Mapping[str, Any], th: AnalysisThresholds) -> Check:
    """Ratio of the variants' compute time per image (each floored at ``latency_floor_ms``) within bounds.

    Compares ``compute_ms_per_image[group][latency_percentile]`` like for like: within one group of
    the same role (requests *answered*, or *shadowed*), the same batch size, and the same contention
    (the call ran *alone*, or *overlapped* another model call), choosing the group with the most
    samples on both sides. Answering (first, often after an idle gap) and shadowing (right after),
    bigger batches, and calls sharing the cores with another change wall times by tens of percent
    with the same model. At a 100 % step only the canary answers and only the champion shadows, so
    there is no shared group and the check is skipped there (the earlier steps judge it).

    Example:
        >>> fast = {"compute_ms_per_image": {"answered/x1/alone": {"count": 50, "p50": 0.2}}}
        >>> slow = {"compute_ms_per_image": {"answered/x1/alone": {"count": 50, "p50": 0.6}}}
        >>> c = check_latency(slow, fast, AnalysisThresholds())
        >>> c.status, round(c.value, 1)
        ('fail', 3.0)
    """
    q = th.latency_percentile
    name = "latency_ratio"
    if "compute_ms_per_image" not in canary and "compute_ms_per_image" not in champion:
        return Check(name, "skip", None, th.max_latency_ratio,
                     "the server does not report compute_ms_per_image (an older cvplatform serve): latency not judged")
    cg, hg = _compute_groups(canary), _compute_groups(champion)

    def count(groups: Mapping[str, Mapping[str, Any]], key: str) -> int:
        return int(_num(groups.get(key) or {}, "count") or 0)

    shared = [k for k in cg if k in hg and count(cg, k) >= th.min_latency_samples
              and count(hg, k) >= th.min_latency_samples
              and _num(cg[k], q) is not None and _num(hg[k], q) is not None]
    if not shared:
        seen = ", ".join(f"{k}: canary {count(cg, k)} / champion {count(hg, k)}" for k in sorted(set(cg) | set(hg)))
        return Check(name, "skip", None, th.max_latency_ratio,
                     f"too few like-for-like compute samples (same role, batch size and contention; "
                     f"{th.min_latency_samples} on each side; seen {seen or 'none'}); at 100 % traffic only the "
                     "canary answers, so earlier steps judge it")
    group = max(shared, key=lambda k: (min(count(cg, k), count(hg, k)), k.startswith("answered/"), k))
    c_ms, h_ms = float(_num(cg[group], q) or 0.0), float(_num(hg[group], q) or 0.0)
    floor = th.latency_floor_ms
    ratio = max(c_ms, floor) / max(h_ms, floor) if max(h_ms, floor) > 0 else 1.0
    ok = ratio <= th.max_latency_ratio
    return Check(name, "pass" if ok else "fail", ratio, th.max_latency_ratio,
                 f"{q} model compute per image ({group}) canary {c_ms:.3f} ms ({count(cg, group)}) vs champion "
                 f"{h_ms:.3f} ms ({count(hg, group)}) (floor {floor:g} ms): ratio {ratio:.2f}, "
                 f"allowed {th.max_latency_ratio:g}")


def agreement_groups(shadow: Mapping[str, Any], confidence: float
                     ) -> tuple[tuple[int, float], tuple[int, float]] | None:
    """``((pairs, agree) where the champion is confident, (pairs, agree) elsewhere)``, or None when the
    server reports no agreement by champion confidence.

    A confidence bin counts as confident when its lower edge is >= ``confidence``.

    Example:
        >>> by = {"edges": [0, 0.5, 1.0], "pairs": [10, 90], "agree": [6, 89]}
        >>> agreement_groups({"by_champion_confidence": by}, 0.5)
        ((90, 89.0), (10, 6.0))
    """
    by = shadow.get("by_champion_confidence")
    if not isinstance(by, Mapping):
        return None
    edges, pairs, agree = list(by.get("edges") or []), list(by.get("pairs") or []), list(by.get("agree") or [])
    if not pairs or len(pairs) != len(agree) or len(edges) != len(pairs) + 1:
        return None
    sure = [i for i in range(len(pairs)) if float(edges[i]) >= confidence - 1e-9]
    rest = [i for i in range(len(pairs)) if i not in sure]
    return ((sum(int(pairs[i]) for i in sure), sum(float(agree[i]) for i in sure)),
            (sum(int(pairs[i]) for i in rest), sum(float(agree[i]) for i in rest)))


def _agreement(name: str, pairs: int, agree: float, need: float, what: str, th: AnalysisThresholds,
               measure: str | None = None) -> Check:
    if pairs < th.min_shadow_pairs:
        status: CheckStatus = "fail" if th.require_agreement else "skip"
        return Check(name, status, (agree / pairs) if pairs else None, need,
                     f"only {pairs} shadowed image(s) {what}, need {th.min_shadow_pairs} (is shadow mode on?)")
    rate = agree / pairs
    ok = rate >= need
    if measure and measure != "same top-1 class":  # a graded measure: the mean per image, not a count
        return Check(name, "pass" if ok else "fail", rate, need,
                     f"canary and champion agree by {measure} {rate:.1%} on average over {pairs} shadowed images "
                     f"{what}; need {need:.1%}")
    return Check(name, "pass" if ok else "fail", rate, need,
                 f"canary and champion agree on {agree:g}/{pairs} shadowed images {what} ({rate:.1%}); need {need:.1%}")


def check_agreement(shadow: Mapping[str, Any], th: AnalysisThresholds) -> Check:
    """Share of the champion's confident shadowed images where canary and champion predict the same class.

    Without agreement by champion confidence in ``shadow``, every pair is judged by ``min_agreement``.

    Example:
        >>> by = {"edges": [0, 0.8, 1.0], "pairs": [40, 100], "agree": [20, 99]}
        >>> check_agreement({"pairs": 140, "agree": 119, "by_champion_confidence": by}, AnalysisThresholds()).status
        'pass'
        >>> check_agreement({"pairs": 100, "agree": 90}, AnalysisThresholds()).status
        'fail'
    """
    groups = agreement_groups(shadow, th.agreement_confidence)
    measure = shadow.get("measure") if isinstance(shadow.get("measure"), str) else None
    if groups is None:
        return _agreement("agreement", int(_num(shadow, "pairs") or 0), float(_num(shadow, "agree") or 0),
                          th.min_agreement, "(all: the server reports no split by champion confidence)", th, measure)
    (pairs, agree), _ = groups
    return _agreement("agreement", pairs, agree, th.min_agreement,
                      f"where the champion is confident (>= {th.agreement_confidence:g})", th, measure)


def check_agreement_uncertain(shadow: Mapping[str, Any], th: AnalysisThresholds) -> Check:
    """Share of the other shadowed images (champion less confident) where both predict the same class.

    Example:
        >>> by = {"edges": [0, 0.8, 1.0], "pairs": [60, 100], "agree": [12, 99]}
        >>> check_agreement_uncertain({"by_champion_confidence": by}, AnalysisThresholds()).status
        'fail'
    """
    groups = agreement_groups(shadow, th.agreement_confidence)
    if groups is None:
        return Check("agreement_uncertain", "skip", None, th.min_agreement_uncertain,
                     "the server reports no agreement by champion confidence: judged by agreement on all pairs")
    _, (pairs, agree) = groups
    measure = shadow.get("measure") if isinstance(shadow.get("measure"), str) else None
    return _agreement("agreement_uncertain", pairs, agree, th.min_agreement_uncertain,
                      f"where the champion is unsure (< {th.agreement_confidence:g})", th, measure)


def check_confidence_shift(canary: Mapping[str, Any], champion: Mapping[str, Any],
                           th: AnalysisThresholds) -> Check:
    """PSI of the confidence histograms (or KS of the samples) within ``confidence_shift.max``.

    Example:
        >>> h = {"confidence_hist": {"counts": [0, 10, 90]}}
        >>> th = AnalysisThresholds(confidence_shift={"min_samples": 10})
        >>> check_confidence_shift(h, h, th).value
        0.0
    """
    cs = th.confidence_shift
    name = "confidence_shift"
    if cs.method == "ks":
        a = list(canary.get("confidence_samples") or [])
        b = list(champion.get("confidence_samples") or [])
        if len(a) < cs.min_samples or len(b) < cs.min_samples:
            return Check(name, "skip", None, cs.max,
                         f"too few confidence samples (canary {len(a)}, champion {len(b)}; need {cs.min_samples})")
        value = ks_statistic(a, b)
        label = "KS statistic"
    else:
        ha = list((canary.get("confidence_hist") or {}).get("counts") or [])
        hb = list((champion.get("confidence_hist") or {}).get("counts") or [])
        if sum(ha) < cs.min_samples or sum(hb) < cs.min_samples or len(ha) != len(hb):
            return Check(name, "skip", None, cs.max,
                         f"too few confidence samples (canary {sum(ha)}, champion {sum(hb)}; need {cs.min_samples})")
        value = psi(hb, ha)
        label = "PSI"
    ok = value <= cs.max
    return Check(name, "pass" if ok else "fail", value, cs.max,
                 f"confidence distribution shift canary vs champion: {label} {value:.3f}, allowed {cs.max:g}")


def check_accuracy(canary: Mapping[str, Any], champion: Mapping[str, Any], th: AnalysisThresholds) -> Check:
    """On labelled requests, canary accuracy no more than ``max_accuracy_drop`` below the champion's.

    Example:
        >>> check_accuracy({"labelled": 100, "correct": 60}, {"labelled": 100, "correct": 95},
        ...                AnalysisThresholds()).status
        'fail'
    """
    cn, hn = int(_num(canary, "labelled") or 0), int(_num(champion, "labelled") or 0)
    if cn < th.min_labelled or hn < th.min_labelled:
        return Check("accuracy", "skip", None, th.max_accuracy_drop,
                     f"too few labelled images (canary {cn}, champion {hn}; need {th.min_labelled} each)")
    ca = int(_num(canary, "correct") or 0) / cn
    ha = int(_num(champion, "correct") or 0) / hn
    drop = ha - ca
    ok = drop <= th.max_accuracy_drop
    return Check("accuracy", "pass" if ok else "fail", drop, th.max_accuracy_drop,
                 f"accuracy on labelled requests canary {ca:.1%} ({cn}) vs champion {ha:.1%} ({hn}): "
                 f"drop {drop:+.1%}, allowed {th.max_accuracy_drop:.1%}")


def _feedback(variant: Mapping[str, Any]) -> Mapping[str, Any] | None:
    fb = variant.get("feedback")
    return fb if isinstance(fb, Mapping) and "map50" in fb else None


def check_feedback_map50(canary: Mapping[str, Any], champion: Mapping[str, Any], th: AnalysisThresholds) -> Check:
    """On labelled requests (a detector's true boxes), canary mAP50 no more than ``max_map_drop`` below the
    champion's. Each variant's ``feedback`` is what the server reports: the COCO mAP50 of the boxes it served on its
    kept labelled images (``images``) against their true boxes.

    Example:
        >>> ch = {"feedback": {"images": 80, "objects": 200, "map50": 0.71}}
        >>> ca = {"feedback": {"images": 80, "objects": 200, "map50": 0.52}}
        >>> check_feedback_map50(ca, ch, AnalysisThresholds()).status
        'fail'
        >>> check_feedback_map50({"feedback": {"images": 3, "map50": 0.9}}, ch, AnalysisThresholds()).status
        'skip'
    """
    name = "feedback_map50"
    a, b = _feedback(canary) or {}, _feedback(champion) or {}
    na, nb = int(_num(a, "images") or 0), int(_num(b, "images") or 0)
    if na < th.min_labelled or nb < th.min_labelled:
        return Check(name, "skip", None, th.max_map_drop,
                     f"too few labelled images with true boxes (canary {na}, champion {nb}; need {th.min_labelled} "
                     "each): send X-True-Boxes with requests (the replay client does)")
    va, vb = _num(a, "map50"), _num(b, "map50")
    if va is None or vb is None:
        return Check(name, "skip", None, th.max_map_drop,
                     f"mAP50 undefined: the labelled images hold no true box (canary {int(_num(a, 'objects') or 0)}, "
                     f"champion {int(_num(b, 'objects') or 0)} objects)")
    drop = vb - va
    ok = drop <= th.max_map_drop + 1e-9
    return Check(name, "pass" if ok else "fail", drop, th.max_map_drop,
                 f"mAP50 of the served boxes on labelled requests canary {va:.3f} ({na} images, "
                 f"{int(_num(a, 'objects') or 0)} objects) vs champion {vb:.3f} ({nb}, {int(_num(b, 'objects') or 0)}): "
                 f"drop {drop:+.3f}, allowed {th.max_map_drop:g}")


def _objects(variant: Mapping[str, Any]) -> Mapping[str, Any] | None:
    obj = variant.get("objects")
    return obj if isinstance(obj, Mapping) else None


def _skip_no_objects(name: str, threshold: float) -> Check:
    return Check(name, "skip", None, threshold,
                 "the server reports no objects per image (a task answering one class per image, or an older server)")


def count_histogram(per_image: Mapping[str, Any], bins: int = COUNT_BINS) -> list[int]:
    """Images with 0, 1, ..., ``bins - 1`` and ``bins`` or more objects, from ``objects.per_image``.

    Example:
        >>> count_histogram({"0": 2, "1": 3, "12": 1}, bins=3)
        [2, 3, 0, 1]
    """
    out = [0] * (bins + 1)
    for k, v in per_image.items():
        out[min(bins, max(0, int(k)))] += int(v)
    return out


def check_count_shift(canary: Mapping[str, Any], champion: Mapping[str, Any], th: AnalysisThresholds) -> Check:
    """PSI of the objects-per-image histograms (detections per image) within ``count_shift.max``.

    A detector that misses objects answers fewer boxes per image than the champion on the same traffic.

    Example:
        >>> ch = {"objects": {"images": 100, "per_image": {"2": 80, "3": 20}, "mean_per_image": 2.2}}
        >>> ca = {"objects": {"images": 100, "per_image": {"0": 50, "1": 30, "2": 20}, "mean_per_image": 0.7}}
        >>> check_count_shift(ca, ch, AnalysisThresholds()).status
        'fail'
    """
    cs, name = th.count_shift, "count_shift"
    a, b = _objects(canary), _objects(champion)
    if a is None or b is None:
        return _skip_no_objects(name, cs.max)
    na, nb = int(_num(a, "images") or 0), int(_num(b, "images") or 0)
    if na < cs.min_samples or nb < cs.min_samples:
        return Check(name, "skip", None, cs.max, f"too few images with objects reported (canary {na}, champion {nb}; "
                                                 f"need {cs.min_samples})")
    value = psi(count_histogram(b.get("per_image") or {}), count_histogram(a.get("per_image") or {}))
    ma, mb = _num(a, "mean_per_image") or 0.0, _num(b, "mean_per_image") or 0.0
    ok = value <= cs.max
    return Check(name, "pass" if ok else "fail", value, cs.max,
                 f"objects per image canary {ma:.2f} ({na} images) vs champion {mb:.2f} ({nb}): PSI {value:.3f}, "
                 f"allowed {cs.max:g}")


def check_object_score_shift(canary: Mapping[str, Any], champion: Mapping[str, Any], th: AnalysisThresholds) -> Check:
    """PSI of every object's score histogram (or KS of the score samples) within ``object_score_shift.max``.

    Example:
        >>> h = {"objects": {"images": 50, "score_hist": {"counts": [0, 10, 90]}}}
        >>> check_object_score_shift(h, h, AnalysisThresholds()).value
        0.0
    """
    cs, name = th.object_score_shift, "object_score_shift"
    a, b = _objects(canary), _objects(champion)
    if a is None or b is None:
        return _skip_no_objects(name, cs.max)
    if cs.method == "ks":
        xa, xb = list(a.get("score_samples") or []), list(b.get("score_samples") or [])
        if len(xa) < cs.min_samples or len(xb) < cs.min_samples:
            return Check(name, "skip", None, cs.max,
                         f"too few object scores (canary {len(xa)}, champion {len(xb)}; need {cs.min_samples})")
        value, label = ks_statistic(xa, xb), "KS statistic"
    else:
        ha = list((a.get("score_hist") or {}).get("counts") or [])
        hb = list((b.get("score_hist") or {}).get("counts") or [])
        if sum(ha) < cs.min_samples or sum(hb) < cs.min_samples or len(ha) != len(hb):
            return Check(name, "skip", None, cs.max,
                         f"too few object scores (canary {sum(ha)}, champion {sum(hb)}; need {cs.min_samples})")
        value, label = psi(hb, ha), "PSI"
    ok = value <= cs.max
    return Check(name, "pass" if ok else "fail", value, cs.max,
                 f"object score distribution shift canary vs champion: {label} {value:.3f}, allowed {cs.max:g}")


def check_class_mix_shift(canary: Mapping[str, Any], champion: Mapping[str, Any], th: AnalysisThresholds) -> Check:
    """PSI of the objects' class mix (objects per class, over the classes either variant reported).

    Example:
        >>> ch = {"objects": {"classes": {"cat": 50, "dog": 50}}}
        >>> ca = {"objects": {"classes": {"cat": 95, "dog": 5}}}
        >>> check_class_mix_shift(ca, ch, AnalysisThresholds()).status
        'fail'
    """
    cs, name = th.class_mix_shift, "class_mix_shift"
    a, b = _objects(canary), _objects(champion)
    if a is None or b is None:
        return _skip_no_objects(name, cs.max)
    ca, cb = dict(a.get("classes") or {}), dict(b.get("classes") or {})
    na, nb = sum(int(v) for v in ca.values()), sum(int(v) for v in cb.values())
    if na < cs.min_samples or nb < cs.min_samples:
        return Check(name, "skip", None, cs.max,
                     f"too few objects (canary {na}, champion {nb}; need {cs.min_samples})")
    classes = sorted(set(ca) | set(cb))
    value = psi([int(cb.get(c, 0)) for c in classes], [int(ca.get(c, 0)) for c in classes])
    ok = value <= cs.max

    def mix(d: Mapping[str, Any], n: int) -> str:
        return ", ".join(f"{c} {int(d.get(c, 0)) / n:.0%}" for c in classes)

    return Check(name, "pass" if ok else "fail", value, cs.max,
                 f"class mix of objects canary ({mix(ca, na)}) vs champion ({mix(cb, nb)}): PSI {value:.3f}, "
                 f"allowed {cs.max:g}")


def analyze_step(stats: Mapping[str, Any], thresholds: AnalysisThresholds, *, min_requests: int = 1
                 ) -> StepAnalysis:
    """Compare canary and champion in a ``GET /admin/stats`` snapshot.

    Args:
        stats: ``{"variants": {"champion": {...}, "canary": {...}}, "shadow": {...}, "task": ...}``.
        thresholds: the policy's thresholds (with ``by_task[stats["task"]]`` applied).
        min_requests: the step's minimum number of canary requests.

    Example:
        >>> s = {"variants": {"champion": {"attempts": 100, "failures": 0},
        ...                   "canary": {"requests": 100, "attempts": 100, "failures": 9}},
        ...      "shadow": {"pairs": 0, "agree": 0}}
        >>> analyze_step(s, AnalysisThresholds()).failed
        ['error_rate']
    """
    variants = stats.get("variants") or {}
    canary = variants.get("canary") or {}
    champion = variants.get("champion") or {}
    shadow = stats.get("shadow") or {}
    thresholds = thresholds.for_task(stats.get("task") if isinstance(stats.get("task"), str) else None)
    # the object checks exist for tasks whose server reports objects per image (detection); a task answering one
    # class per image (classification) has none, and its reports do not list them
    objects = ([check_count_shift(canary, champion, thresholds),
                check_object_score_shift(canary, champion, thresholds),
                check_class_mix_shift(canary, champion, thresholds)]
               if _objects(canary) is not None or _objects(champion) is not None else [])
    # a server that scores its labelled feedback itself (detection's true boxes: mAP50) reports ``feedback`` per
    # variant; one class per image (accuracy) does not apply to its answers
    if _feedback(canary) is not None or _feedback(champion) is not None:
        labelled = [Check("accuracy", "skip", None, thresholds.max_accuracy_drop,
                          "the task's labelled feedback is not one class per image: judged by feedback_map50"),
                    check_feedback_map50(canary, champion, thresholds)]
    else:
        labelled = [check_accuracy(canary, champion, thresholds)]
    return StepAnalysis([
        check_min_requests(canary, min_requests),
        check_error_rate(canary, champion, thresholds),
        check_latency(canary, champion, thresholds),
        check_agreement(shadow, thresholds),
        check_agreement_uncertain(shadow, thresholds),
        check_confidence_shift(canary, champion, thresholds),
        *labelled,
        *objects,
    ])


def early_abort(stats: Mapping[str, Any], thresholds: AnalysisThresholds, min_failures: int) -> StepAnalysis | None:
    """A failing analysis to act on before the bake time ends (the canary is clearly erroring), else None.

    Example:
        >>> s = {"variants": {"canary": {"requests": 12, "attempts": 12, "failures": 12}, "champion": {}}}
        >>> early_abort(s, AnalysisThresholds(), min_failures=10).failed
        ['error_rate']
    """
    variants = stats.get("variants") or {}
    canary = variants.get("canary") or {}
    if int(_num(canary, "failures") or 0) < min_failures:
        return None
    check = check_error_rate(canary, variants.get("champion") or {}, thresholds)
    return StepAnalysis([check]) if check.failed else None


__all__ = [
    "AnalysisThresholds",
    "CanaryPolicy",
    "CanaryStep",
    "Check",
    "ConfidenceShiftThresholds",
    "StepAnalysis",
    "analyze_step",
    "COUNT_BINS",
    "ShiftThresholds",
    "check_accuracy",
    "agreement_groups",
    "check_class_mix_shift",
    "check_count_shift",
    "check_feedback_map50",
    "check_object_score_shift",
    "count_histogram",
    "check_agreement",
    "check_agreement_uncertain",
    "check_confidence_shift",
    "check_error_rate",
    "check_latency",
    "check_min_requests",
    "early_abort",
    "ks_statistic",
    "load_canary_policy",
    "psi",
]
