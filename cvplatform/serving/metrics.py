"""Serving telemetry: Prometheus metrics (``/metrics``) and per-variant statistics (``/admin/stats``).

:class:`ServingMetrics` owns one ``prometheus_client.CollectorRegistry`` per app
(several apps in one process, e.g. in tests, never collide):

=========================================  =========  =============================================
metric                                     type       labels
=========================================  =========  =============================================
cvplatform_requests_total                  counter    endpoint, model, version, variant, status
                                                      (499 = the client closed before its request was read)
cvplatform_request_latency_seconds         histogram  endpoint, variant
cvplatform_inference_latency_seconds       histogram  model, version, variant (queue wait + model)
cvplatform_batch_size                      histogram  model, version
cvplatform_predictions_total               counter    model, version, variant, class
cvplatform_prediction_confidence           histogram  model, version, variant
cvplatform_model_errors_total              counter    model, version, variant, mode (answer|shadow)
cvplatform_shadow_total                    counter    result (agree|disagree|error|skipped)
cvplatform_bad_requests_total              counter    endpoint, error
cvplatform_client_disconnects_total        counter    endpoint (client closed before its request was read)
cvplatform_decode_bytes_in_flight          gauge      - (estimated decode memory held by requests in flight)
cvplatform_model_info                      gauge      variant, model, version (1 = loaded)
cvplatform_canary_share                    gauge      -
=========================================  =========  =============================================

plus the task's own metrics (:attr:`cvplatform.tasks.Task.served_metrics`, none for classification),
labelled model, version, variant (and class for a per-class counter); detection adds
``cvplatform_detections_per_image`` and ``cvplatform_detection_score`` (histograms) and
``cvplatform_detections_total`` (counter by class), counting the boxes answered.

:class:`StatsBook` keeps what the canary controller compares (request and error
counts, latency percentiles, onnxruntime compute time per image, confidence
histograms and samples, accuracy on labelled requests, shadow agreement overall and
by the champion's confidence, and, for a task whose answers are objects, the objects per image,
object scores and class mix) since the last reset, as plain JSON. Agreement is the task's
per-image score in [0, 1] (``task.shadow_agreement``), summed.
"""

from __future__ import annotations

import collections
import contextlib
import math
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from cvplatform.tasks import ServedMetric

LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
CONFIDENCE_BUCKETS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)


# --------------------------------------------------------------------------- prometheus
class ServingMetrics:
    """The Prometheus metrics of one app, in their own ``CollectorRegistry``.

    Example:
        >>> m = ServingMetrics()
        >>> m.requests.labels("predict", "m", "1", "champion", "200").inc()
        >>> b"cvplatform_requests_total" in m.render()[0]
        True
    """

    def __init__(self, task_metrics: Sequence[ServedMetric] = ()) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "cvplatform_requests", "Prediction requests by endpoint, model version, variant and HTTP status.",
            ["endpoint", "model", "version", "variant", "status"], registry=r,
        )
        self.request_latency = Histogram(
            "cvplatform_request_latency_seconds", "End-to-end prediction request latency.",
            ["endpoint", "variant"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.inference_latency = Histogram(
            "cvplatform_inference_latency_seconds", "Model latency per request (batching wait + onnxruntime).",
            ["model", "version", "variant"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.batch_size = Histogram(
            "cvplatform_batch_size", "Images per onnxruntime call (dynamic micro-batching).",
            ["model", "version"], buckets=BATCH_BUCKETS, registry=r,
        )
        self.predictions = Counter(
            "cvplatform_predictions", "Predicted classes (one per image).",
            ["model", "version", "variant", "class"], registry=r,
        )
        self.confidence = Histogram(
            "cvplatform_prediction_confidence", "Top-1 probability of each prediction.",
            ["model", "version", "variant"], buckets=CONFIDENCE_BUCKETS, registry=r,
        )
        self.model_errors = Counter(
            "cvplatform_model_errors", "Model failures (the request fell back to the champion when possible).",
            ["model", "version", "variant", "mode"], registry=r,
        )
        self.shadow = Counter(
            "cvplatform_shadow", "Shadow (mirrored) scorings by outcome.", ["result"], registry=r,
        )
        self.bad_requests = Counter(
            "cvplatform_bad_requests", "Rejected requests (4xx) by endpoint and error code.",
            ["endpoint", "error"], registry=r,
        )
        self.client_disconnects = Counter(
            "cvplatform_client_disconnects", "Requests whose client closed the connection before the request "
            "was read (also counted in cvplatform_requests_total with status 499).", ["endpoint"], registry=r,
        )
        self.decode_bytes_in_flight = Gauge(
            "cvplatform_decode_bytes_in_flight", "Estimated decode memory held by requests in flight "
            "(bounded by limits.max_inflight_decode_bytes).", registry=r,
        )
        self.request_log_dropped = Counter(
            "cvplatform_request_log_dropped", "Requests left out of the drift-monitoring request log (its "
            "writer fell behind).", registry=r,
        )
        self.model_info = Gauge(
            "cvplatform_model_info", "Loaded model versions (1 = loaded in that variant slot).",
            ["variant", "model", "version"], registry=r,
        )
        self.canary_share = Gauge("cvplatform_canary_share", "Share of requests routed to the canary.", registry=r)
        self.task_metrics: dict[str, tuple[ServedMetric, Any]] = {}
        """The task's metrics (:attr:`cvplatform.tasks.Task.served_metrics`) by name."""
        for spec in task_metrics:
            labels = ["model", "version", "variant", *(["class"] if spec.by_class else [])]
            if spec.kind == "histogram":
                metric: Any = Histogram(spec.name, spec.description, labels, buckets=spec.buckets, registry=r)
            elif spec.kind == "counter":
                metric = Counter(spec.name, spec.description, labels, registry=r)
            else:
                raise ValueError(f"served metric {spec.name!r}: kind {spec.kind!r} is not 'histogram' or 'counter'.")
            self.task_metrics[spec.name] = (spec, metric)

    def observe_task(self, model: str, version: str, variant: str, observations: Mapping[str, Any]) -> None:
        """Feed the task's metrics one answered request's :meth:`~cvplatform.tasks.Task.served_observations`."""
        for name, values in observations.items():
            spec, metric = self.task_metrics[name]
            if spec.by_class:
                for cls, n in values.items():
                    if n:
                        metric.labels(model, version, variant, cls).inc(n)
                continue
            child = metric.labels(model, version, variant)
            if spec.kind == "counter":
                child.inc(sum(values))
            else:
                observe_all(child, values)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def export_samples(self) -> list[dict[str, Any]]:
        """This process's metric families as JSON-friendly data, for :func:`render_merged` in another process."""
        return [{"name": fam.name, "type": fam.type, "doc": fam.documentation,
                 "samples": [[s.name, s.labels, s.value] for s in fam.samples if not s.name.endswith("_created")]}
                for fam in self.registry.collect()]

    def set_model(self, variant: str, model: str | None, version: str | None, previous: tuple[str, str] | None) -> None:
        """Record which version a variant slot holds (removing the previous series)."""
        if previous is not None:
            with contextlib.suppress(KeyError):
                self.model_info.remove(variant, *previous)
        if model is not None and version is not None:
            self.model_info.labels(variant, model, version).set(1)


SUMMED_GAUGES = frozenset({"cvplatform_decode_bytes_in_flight"})
"""Gauges whose value over several worker processes is their sum; every other gauge takes the maximum
(model info: 1 when any worker holds the version; the canary share, the same in every worker)."""


def observe_all(child: Any, values: Sequence[float]) -> None:
    """``child.observe(v)`` for each of ``values`` (a labelled Prometheus histogram): the same buckets, count and
    sum, with one increment per bucket rather than per value (detection observes every answered box's score).

    Each value goes to the first bucket whose bound it does not exceed (``observe``'s rule; a NaN to none), and
    the sum is added value by value in order, so ``/metrics`` reads exactly as with ``observe``. A histogram
    without prometheus_client's bucket attributes is fed through ``observe``. The sum is read, added to and
    written back, so one histogram child is observed from one thread (the server feeds its metrics on the event
    loop).
    """
    bounds, buckets, total = (getattr(child, a, None) for a in ("_upper_bounds", "_buckets", "_sum"))
    if bounds is None or buckets is None or total is None or len(values) < 4:
        for v in values:
            child.observe(v)
        return
    import numpy as np

    child._raise_if_not_observable()
    amounts = [float(v) for v in values]
    counts = np.bincount(np.searchsorted(np.asarray(bounds, np.float64), np.asarray(amounts, np.float64)),
                         minlength=len(bounds) + 1)
    acc = total.get()  # the running sum, added to value by value as observe does (same float, last bit too)
    for v in amounts:
        acc += v
    total.set(acc)
    for i, n in enumerate(counts[:len(bounds)].tolist()):
        if n:
            buckets[i].inc(n)


def render_merged(parts: Sequence[list[dict[str, Any]]]) -> tuple[bytes, str]:
    """One exposition of several processes' :meth:`ServingMetrics.export_samples` (``serve.workers`` > 1).

    Counters and histograms are summed per series; gauges are summed (:data:`SUMMED_GAUGES`) or take the maximum.

    Example:
        >>> a, b = ServingMetrics(), ServingMetrics()
        >>> a.requests.labels("predict", "m", "1", "champion", "200").inc(2)
        >>> b.requests.labels("predict", "m", "1", "champion", "200").inc(3)
        >>> b'status="200",variant="champion",version="1"} 5.0' in render_merged([a.export_samples(), b.export_samples()])[0]
        True
    """
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client.metrics_core import Metric

    families: dict[str, dict[str, Any]] = {}
    for part in parts:
        for fam in part:
            f = families.setdefault(fam["name"], {"type": fam["type"], "doc": fam["doc"], "values": {}})
            values = f["values"]
            take_max = fam["type"] == "gauge" and fam["name"] not in SUMMED_GAUGES
            for name, labels, value in fam["samples"]:
                key = (name, tuple(sorted(labels.items())))
                old = values.get(key)
                values[key] = value if old is None else (max(old, value) if take_max else old + value)

    class _Merged:
        def collect(self) -> Iterable[Metric]:
            for fname, f in families.items():
                metric = Metric(fname, f["doc"], f["type"])
                for (name, labels), value in f["values"].items():
                    metric.add_sample(name, dict(labels), value)
                yield metric

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged())  # type: ignore[arg-type]
    return generate_latest(registry), CONTENT_TYPE_LATEST


# --------------------------------------------------------------------------- statistics
def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100, linear interpolation) of ``values``; None when empty.

    Example:
        >>> percentile([1.0, 2.0, 3.0, 4.0], 50)
        2.5
    """
    if not values:
        return None
    xs = sorted(values)
    if len(xs) == 1:
        return float(xs[0])
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return float(xs[lo] + (xs[hi] - xs[lo]) * (pos - lo))


def summarize(values: Sequence[float]) -> dict[str, float | int | None]:
    """Count, mean and p50/p95/p99 of ``values``.

    Example:
        >>> summarize([1.0, 3.0])["mean"]
        2.0
    """
    return {
        "count": len(values),
        "mean": (sum(values) / len(values)) if values else None,
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
    }


@dataclass
class VariantStats:
    """Running statistics of one variant (champion or canary) since the last reset."""

    window: int
    bins: int
    version: str | None = None
    requests: int = 0
    """Requests routed to this variant (answered by it, or failed and fell back)."""
    errors: int = 0
    """Routed requests whose inference failed."""
    fallbacks: int = 0
    """Requests this variant answered because the canary failed (champion only)."""
    shadow_scored: int = 0
    """Mirrored requests this variant was asked to score (never answering them), failed ones included."""
    shadow_errors: int = 0
    """Mirrored requests whose inference failed."""
    images: int = 0
    labelled: int = 0
    correct: int = 0
    classes: collections.Counter = field(default_factory=collections.Counter)
    hist: list[int] = field(default_factory=list)
    latency_ms: collections.deque = field(default_factory=collections.deque)
    request_latency_ms: collections.deque = field(default_factory=collections.deque)
    compute: dict = field(default_factory=dict)
    """Model compute time per image (ms) by group ``answered|shadowed`` x batch size x ``alone|overlapped``:
    whether this variant answered the request or scored it as a mirror, the batch size of the call, and
    whether another model call ran at the same time. Answering (first, often after an idle gap) and
    shadowing (right after), bigger batches, and calls sharing the cores with another are timed under
    different conditions on the same machine, so the canary compares a group only with the same group."""
    confidences: collections.deque = field(default_factory=collections.deque)
    object_images: int = 0
    """Images whose objects the task reported (``task.object_signals``: detection's boxes; 0 for classification)."""
    object_counts: collections.Counter = field(default_factory=collections.Counter)
    """Objects per image -> images (detections per image)."""
    object_classes: collections.Counter = field(default_factory=collections.Counter)
    """Class -> objects of it (the class mix of every box, not only the best one)."""
    object_hist: list[int] = field(default_factory=list)
    """Histogram of every object's score (the confidence bins)."""
    object_scores: collections.deque = field(default_factory=collections.deque)
    feedback_kept: int = 500
    feedback_seen: int = 0
    """Labelled images whose records the task kept (``task.feedback``: detection's true and served boxes)."""
    feedback: collections.deque = field(default_factory=collections.deque)
    """The last ``feedback_kept`` of those records (scored by ``task.feedback_summary`` when the stats are read)."""

    def __post_init__(self) -> None:
        self.hist = [0] * self.bins
        self.latency_ms = collections.deque(maxlen=self.window)
        self.request_latency_ms = collections.deque(maxlen=self.window)
        self.compute = {}
        self.confidences = collections.deque(maxlen=self.window)
        self.object_counts = collections.Counter()
        self.object_classes = collections.Counter()
        self.object_hist = [0] * self.bins
        self.object_scores = collections.deque(maxlen=self.window)
        self.feedback = collections.deque(maxlen=max(0, self.feedback_kept))

    def _bin(self, c: float) -> int:
        return min(self.bins - 1, max(0, int(c * self.bins))) if math.isfinite(c) else 0

    def add_objects(self, objects: Sequence[Mapping[str, Any]] | None) -> None:
        """The objects of each image (``task.object_signals``: ``scores`` and ``classes`` per image), or None."""
        if objects is None:
            return
        scores: list[float] = []
        classes: list[str] = []
        for obj in objects:
            these = [float(v) for v in obj.get("scores") or []]
            self.object_images += 1
            self.object_counts[len(these)] += 1
            classes.extend(map(str, obj.get("classes") or []))
            scores.extend(these)
        self.object_classes.update(classes)
        if not scores:
            return
        import numpy as np

        from cvplatform.utils.rounding import round_all

        # _bin for all at once: int() truncates toward zero, then clipped to the bins; not finite -> bin 0
        v = np.asarray(scores, np.float64) * self.bins
        finite = np.isfinite(v)
        idx = np.clip(np.trunc(np.where(finite, v, 0.0)), 0, self.bins - 1).astype(np.int64)
        for i, n in enumerate(np.bincount(idx, minlength=self.bins).tolist()):
            if n:
                self.object_hist[i] += n
        self.object_scores.extend(round_all(scores))

    def add_feedback(self, records: Sequence[Mapping[str, Any]] | None) -> None:
        """One labelled request's records (``task.feedback``, one per image), or None."""
        if records is None:
            return
        self.feedback_seen += len(records)
        self.feedback.extend(records)

    def add_predictions(self, top1: Iterable[str], confidences: Iterable[float], labels: Sequence[str] | None) -> None:
        top1 = list(top1)
        confs = [float(c) for c in confidences]
        self.images += len(top1)
        self.classes.update(top1)
        for c in confs:
            self.hist[self._bin(c)] += 1
            self.confidences.append(round(c, 6))
        if labels is not None and len(labels) == len(top1):
            self.labelled += len(top1)
            self.correct += sum(1 for p, y in zip(top1, labels, strict=True) if p == y)

    def add_compute(self, role: str, batch_rows: int, ms: float | None, overlapped: bool = False) -> None:
        """One compute-time sample (per image, ms) of a request in ``role`` run in a batch of ``batch_rows``.

        Kept under the group key ``"<role>/x<batch_rows>/<alone|overlapped>"``, e.g. ``answered/x1/alone``.
        """
        if ms is None or not math.isfinite(ms) or ms <= 0:
            return
        key = f"{role}/x{max(1, int(batch_rows))}/{'overlapped' if overlapped else 'alone'}"
        dq = self.compute.get(key)
        if dq is None:
            dq = self.compute[key] = collections.deque(maxlen=self.window)
        dq.append(round(float(ms), 5))

    _COUNTS = ("requests", "errors", "fallbacks", "shadow_scored", "shadow_errors", "images", "labelled", "correct",
               "object_images", "feedback_seen")

    def export(self) -> dict[str, Any]:
        """Raw counters and samples (JSON-friendly), for :meth:`absorb` in another process."""
        out: dict[str, Any] = {k: getattr(self, k) for k in self._COUNTS}
        out.update(version=self.version, classes=dict(self.classes), hist=list(self.hist),
                   latency_ms=list(self.latency_ms), request_latency_ms=list(self.request_latency_ms),
                   compute={k: list(v) for k, v in self.compute.items()}, confidences=list(self.confidences),
                   object_counts={str(k): v for k, v in self.object_counts.items()},
                   object_classes=dict(self.object_classes), object_hist=list(self.object_hist),
                   object_scores=list(self.object_scores), feedback=list(self.feedback))
        return out

    def absorb(self, data: dict[str, Any]) -> None:
        """Add another worker's :meth:`export` of the same variant and version to these statistics."""
        for k in self._COUNTS:
            setattr(self, k, getattr(self, k) + int(data.get(k, 0)))
        self.classes.update({str(k): int(v) for k, v in data["classes"].items()})
        self.hist = [a + int(b) for a, b in zip(self.hist, data["hist"], strict=False)]
        self.latency_ms.extend(data["latency_ms"])
        self.request_latency_ms.extend(data["request_latency_ms"])
        for key, values in data["compute"].items():
            dq = self.compute.get(key)
            if dq is None:
                dq = self.compute[key] = collections.deque(maxlen=self.window)
            dq.extend(values)
        self.confidences.extend(data["confidences"])
        self.object_counts.update({int(k): int(v) for k, v in (data.get("object_counts") or {}).items()})
        self.object_classes.update({str(k): int(v) for k, v in (data.get("object_classes") or {}).items()})
        self.object_hist = [a + int(b) for a, b in zip(self.object_hist, data.get("object_hist") or [0] * self.bins,
                                                       strict=False)]
        self.object_scores.extend(data.get("object_scores") or [])
        self.feedback.extend(data.get("feedback") or [])

    def to_dict(self, with_samples: bool = True) -> dict[str, Any]:
        attempts = self.requests + self.shadow_scored
        failures = self.errors + self.shadow_errors
        out: dict[str, Any] = {
            "version": self.version,
            "requests": self.requests,
            "errors": self.errors,
            "fallbacks": self.fallbacks,
            "shadow_scored": self.shadow_scored,
            "shadow_errors": self.shadow_errors,
            "attempts": attempts,
            "failures": failures,
            "error_rate": (failures / attempts) if attempts else None,
            "images": self.images,
            "labelled": self.labelled,
            "correct": self.correct,
            "accuracy": (self.correct / self.labelled) if self.labelled else None,
            "classes": dict(sorted(self.classes.items())),
            "latency_ms": summarize(list(self.latency_ms)),
            "request_latency_ms": summarize(list(self.request_latency_ms)),
            "compute_ms_per_image": {key: summarize(list(dq)) for key, dq in sorted(self.compute.items())},
            "confidence_hist": {
                "edges": [round(i / self.bins, 6) for i in range(self.bins + 1)],
                "counts": list(self.hist),
            },
        }
        if self.object_images:
            n_obj = sum(self.object_classes.values())
            out["objects"] = {
                "images": self.object_images,
                "per_image": {str(k): v for k, v in sorted(self.object_counts.items())},
                "mean_per_image": sum(k * v for k, v in self.object_counts.items()) / self.object_images,
                "classes": dict(sorted(self.object_classes.items())),
                "total": n_obj,
                "score_hist": {"edges": [round(i / self.bins, 6) for i in range(self.bins + 1)],
                               "counts": list(self.object_hist)},
            }
            if with_samples:
                out["objects"]["score_samples"] = list(self.object_scores)
        if self.feedback_seen:
            out["feedback"] = {"seen": self.feedback_seen, "kept": len(self.feedback)}
        if with_samples:
            out["confidence_samples"] = list(self.confidences)
        return out


def _whole(x: float) -> float | int:
    """``x`` as an int when it is one (top-1 agreement counts stay integers in ``/admin/stats``), else rounded."""
    return int(round(x)) if abs(x - round(x)) < 1e-9 else round(x, 6)


class StatsBook:
    """Per-variant statistics plus shadow agreement, thread-safe, resettable.

    Example:
        >>> book = StatsBook(window=100, bins=10)
        >>> book.record_answer("champion", "1", ["a"], [0.9], None, 1.5, 2.0)
        >>> book.snapshot()["variants"]["champion"]["requests"]
        1
    """

    def __init__(self, window: int = 5000, bins: int = 10, disagreements_kept: int = 50,
                 feedback_kept: int = 500) -> None:
        self.window = window
        self.bins = bins
        self.disagreements_kept = disagreements_kept
        self.feedback_kept = feedback_kept
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Start a new observation window (the canary controller does this at each step)."""
        with self._lock:
            self.since = time.time()
            self.variants = {v: VariantStats(self.window, self.bins, feedback_kept=self.feedback_kept)
                             for v in ("champion", "canary")}
            self.pairs = 0
            self.agree = 0.0
            self.pairs_by_conf = [0] * self.bins
            self.agree_by_conf = [0.0] * self.bins
            self.shadow_failed = 0
            self.shadow_skipped = 0
            self.disagreements: collections.deque = collections.deque(maxlen=max(1, self.disagreements_kept))

    def _variant(self, variant: str, version: str | None) -> VariantStats:
        vs = self.variants[variant]
        if version is not None and vs.version != version:
            if vs.version is not None:  # a different model now holds this slot: its numbers start over
                vs = self.variants[variant] = VariantStats(self.window, self.bins, feedback_kept=self.feedback_kept)
            vs.version = version
        return vs

    def record_answer(
        self,
        variant: str,
        version: str,
        top1: Sequence[str],
        confidences: Sequence[float],
        labels: Sequence[str] | None,
        inference_ms: float,
        request_ms: float | None,
        *,
        fallback: bool = False,
        compute_ms: float | None = None,
        batch_rows: int = 1,
        overlapped: bool = False,
        objects: Sequence[Mapping[str, Any]] | None = None,
        feedback: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        """A request answered by ``variant`` (``fallback``: after the canary failed).

        ``compute_ms``: the model's compute time per image of the call this request ran in (queue wait
        excluded); ``batch_rows``: that call's batch size; ``overlapped``: another model call ran meanwhile;
        ``objects``: each image's objects (``task.object_signals``), or None; ``feedback``: a labelled request's
        records (``task.feedback``: detection's true and served boxes per image), or None.
        """
        with self._lock:
            vs = self._variant(variant, version)
            if fallback:
                vs.fallbacks += 1
            else:
                vs.requests += 1
            vs.latency_ms.append(round(float(inference_ms), 4))
            vs.add_compute("answered", batch_rows, compute_ms, overlapped)
            if request_ms is not None:
                vs.request_latency_ms.append(round(float(request_ms), 4))
            vs.add_predictions(top1, confidences, labels)
            vs.add_objects(objects)
            vs.add_feedback(feedback)

    def record_error(self, variant: str, version: str, *, shadow: bool = False) -> None:
        """An inference of ``variant`` failed (routed request, or a mirrored one with ``shadow``)."""
        with self._lock:
            vs = self._variant(variant, version)
            if shadow:
                vs.shadow_scored += 1
                vs.shadow_errors += 1
                self.shadow_failed += 1
            else:
                vs.requests += 1
                vs.errors += 1

    def record_shadow(
        self,
        variant: str,
        version: str,
        top1: Sequence[str],
        confidences: Sequence[float],
        labels: Sequence[str] | None,
        inference_ms: float,
        answered_top1: Sequence[str],
        request_id: str,
        answered_confidences: Sequence[float] | None = None,
        compute_ms: float | None = None,
        batch_rows: int = 1,
        overlapped: bool = False,
        agreement: Sequence[float] | None = None,
        objects: Sequence[Mapping[str, Any]] | None = None,
        feedback: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        """``variant`` scored a mirrored request; compare with what the answering variant said.

        ``agreement``: each image's agreement in ``[0, 1]`` as the task measures it (``task.shadow_agreement``:
        classification's same top-1 class, detection's matched-box F1); without it, 1 where ``top1`` equals
        ``answered_top1``. ``agree`` sums it, so ``agree / pairs`` is the mean agreement per image. Each pair is
        also counted in the bin of the *champion's* confidence (its own when the champion shadows,
        ``answered_confidences`` when it answered), so the canary analysis can judge agreement separately where
        the champion is sure and where it is not.
        """
        with self._lock:
            vs = self._variant(variant, version)
            vs.shadow_scored += 1
            vs.latency_ms.append(round(float(inference_ms), 4))
            vs.add_compute("shadowed", batch_rows, compute_ms, overlapped)
            vs.add_predictions(top1, confidences, labels)
            vs.add_objects(objects)
            vs.add_feedback(feedback)
            champion_conf = list(confidences) if variant == "champion" else list(answered_confidences or [])
            scores = list(agreement) if agreement is not None else None
            for i, (a, b) in enumerate(zip(answered_top1, top1, strict=False)):
                self.pairs += 1
                score = (float(scores[i]) if scores is not None and i < len(scores) else float(a == b))
                score = min(1.0, max(0.0, score)) if math.isfinite(score) else 0.0
                self.agree += score
                if score < 1.0 - 1e-9:
                    item = {"request_id": request_id, "image": i, "answered": a, variant: b, "shadow_variant": variant}
                    if scores is not None:
                        item["agreement"] = round(score, 6)
                    self.disagreements.append(item)
                if i < len(champion_conf):
                    k = vs._bin(float(champion_conf[i]))
                    self.pairs_by_conf[k] += 1
                    self.agree_by_conf[k] += score

    def record_shadow_skipped(self) -> None:
        with self._lock:
            self.shadow_skipped += 1

    def export(self) -> dict[str, Any]:
        """The raw counters and samples as JSON-friendly data, for :meth:`merged` (one worker's share)."""
        with self._lock:
            return {
                "since": self.since,
                "variants": {k: v.export() for k, v in self.variants.items()},
                "pairs": self.pairs, "agree": self.agree,
                "pairs_by_conf": list(self.pairs_by_conf), "agree_by_conf": list(self.agree_by_conf),
                "shadow_failed": self.shadow_failed, "shadow_skipped": self.shadow_skipped,
                "disagreements": list(self.disagreements),
            }

    def feedback_records(self) -> dict[str, list[Any]]:
        """Each variant's kept labelled-feedback records (``task.feedback``), for ``task.feedback_summary``."""
        with self._lock:
            return {k: list(v.feedback) for k, v in self.variants.items()}

    @classmethod
    def merged(cls, parts: Sequence[dict[str, Any]], window: int, bins: int, disagreements_kept: int,
               feedback_kept: int = 500) -> StatsBook:
        """One book holding the sum of several :meth:`export` results (one per worker process).

        Counts add up; latency, compute and confidence samples and labelled-feedback records are pooled (each
        worker keeps its last ``window`` / ``feedback_kept``, so the merged book keeps up to that x workers);
        ``since`` is the earliest. A variant whose version differs from the first part's (a worker mid-swap) is
        left out.
        """
        n = max(1, len(parts))
        book = cls(window * n, bins, disagreements_kept * n, feedback_kept * n)
        if not parts:
            return book
        book.since = min(float(p["since"]) for p in parts)
        for name in ("champion", "canary"):
            versions = [p["variants"][name]["version"] for p in parts if p["variants"][name]["version"] is not None]
            version = versions[0] if versions else None
            vs = book.variants[name]
            vs.version = version
            for p in parts:
                v = p["variants"][name]
                if v["version"] in (None, version):
                    vs.absorb(v)
        for p in parts:
            book.pairs += int(p["pairs"])
            book.agree += float(p["agree"])
            book.pairs_by_conf = [a + int(b) for a, b in zip(book.pairs_by_conf, p["pairs_by_conf"], strict=False)]
            book.agree_by_conf = [a + float(b) for a, b in zip(book.agree_by_conf, p["agree_by_conf"], strict=False)]
            book.shadow_failed += int(p["shadow_failed"])
            book.shadow_skipped += int(p["shadow_skipped"])
            book.disagreements.extend(p["disagreements"])
        return book

    def snapshot(self, with_samples: bool = True) -> dict[str, Any]:
        """Everything as JSON-friendly data (what ``GET /admin/stats`` returns)."""
        with self._lock:
            return {
                "since": self.since,
                "elapsed_s": time.time() - self.since,
                "variants": {k: v.to_dict(with_samples) for k, v in self.variants.items()},
                "shadow": {
                    "pairs": self.pairs,
                    "agree": _whole(self.agree),
                    "agreement": (self.agree / self.pairs) if self.pairs else None,
                    "by_champion_confidence": {
                        "edges": [round(i / self.bins, 6) for i in range(self.bins + 1)],
                        "pairs": list(self.pairs_by_conf),
                        "agree": [_whole(a) for a in self.agree_by_conf],
                    },
                    "failed": self.shadow_failed,
                    "skipped": self.shadow_skipped,
                    "recent_disagreements": list(self.disagreements),
                },
            }


__all__ = [
    "BATCH_BUCKETS",
    "CONFIDENCE_BUCKETS",
    "LATENCY_BUCKETS",
    "ServingMetrics",
    "StatsBook",
    "VariantStats",
    "percentile",
    "render_merged",
    "summarize",
]
