"""Per-variant statistics (what the canary controller reads) and per-app Prometheus registries."""

from __future__ import annotations

import numpy as np
import pytest

from cvplatform.serving.metrics import ServingMetrics, StatsBook, percentile, summarize


def test_percentile_and_summary():
    assert percentile([], 50) is None
    assert percentile([5.0], 95) == 5.0
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert percentile(list(range(101)), 95) == pytest.approx(95.0)
    s = summarize([1.0, 3.0])
    assert s["count"] == 2 and s["mean"] == 2.0 and s["p50"] == 2.0


def test_stats_book_counts_errors_latency_confidence_accuracy_and_agreement():
    book = StatsBook(window=100, bins=10)
    book.record_answer("champion", "1", ["a", "b"], [0.95, 0.55], ["a", "a"], 2.0, 5.0)
    book.record_answer("canary", "2", ["a"], [0.91], ["a"], 8.0, 12.0)
    book.record_error("canary", "2")
    book.record_shadow("canary", "2", ["a", "c"], [0.9, 0.3], ["a", "a"], 9.0, ["a", "b"], "rid")
    book.record_error("canary", "2", shadow=True)
    snap = book.snapshot()
    ch, ca = snap["variants"]["champion"], snap["variants"]["canary"]
    assert (ch["requests"], ch["errors"], ch["images"], ch["labelled"], ch["correct"]) == (1, 0, 2, 2, 1)
    assert ch["confidence_hist"]["counts"][9] == 1 and ch["confidence_hist"]["counts"][5] == 1
    assert ch["latency_ms"]["p50"] == 2.0 and ch["request_latency_ms"]["p50"] == 5.0
    # canary: 1 answered + 1 failed routed request, 2 shadow scorings of which 1 failed
    assert (ca["requests"], ca["errors"], ca["shadow_scored"], ca["shadow_errors"]) == (2, 1, 2, 1)
    assert (ca["attempts"], ca["failures"], ca["error_rate"]) == (4, 2, 0.5)
    assert ca["accuracy"] == pytest.approx(2 / 3) and ca["classes"] == {"a": 2, "c": 1}
    assert snap["shadow"]["pairs"] == 2 and snap["shadow"]["agree"] == 1 and snap["shadow"]["agreement"] == 0.5
    assert snap["shadow"]["recent_disagreements"][0]["request_id"] == "rid"
    assert len(ca["confidence_samples"]) == 3 and "confidence_samples" not in book.snapshot(False)["variants"]["canary"]


def test_agreement_is_also_counted_by_the_champions_confidence():
    book = StatsBook(window=100, bins=10)
    # the champion answered (its confidence comes with the answer), the canary shadowed
    book.record_shadow("canary", "2", ["a", "c"], [0.5, 0.5], None, 1.0, ["a", "b"], "r1", [0.95, 0.35])
    # the canary answered, the champion shadowed (its own confidence counts)
    book.record_shadow("champion", "1", ["b"], [0.82], None, 1.0, ["b"], "r2", [0.2])
    by = book.snapshot()["shadow"]["by_champion_confidence"]
    assert by["edges"][0] == 0.0 and by["edges"][-1] == 1.0 and len(by["pairs"]) == 10
    assert by["pairs"][9] == 1 and by["agree"][9] == 1  # 0.95: agreed
    assert by["pairs"][3] == 1 and by["agree"][3] == 0  # 0.35: disagreed
    assert by["pairs"][8] == 1 and by["agree"][8] == 1  # 0.82 (the champion's own), not the canary's 0.2
    assert sum(by["pairs"]) == book.snapshot()["shadow"]["pairs"] == 3
    book.reset()
    assert sum(book.snapshot()["shadow"]["by_champion_confidence"]["pairs"]) == 0


def test_compute_time_is_kept_per_variant_role_batch_size_and_contention():
    book = StatsBook(window=100, bins=10)
    book.record_answer("champion", "1", ["a"], [0.9], None, 2.0, 3.0, compute_ms=0.5, batch_rows=1)
    book.record_answer("champion", "1", ["a"], [0.9], None, 2.0, 3.0, compute_ms=0.3, batch_rows=2)
    book.record_answer("champion", "1", ["a"], [0.9], None, 2.0, 3.0, compute_ms=0.9, batch_rows=1,
                       overlapped=True)
    book.record_shadow("canary", "2", ["a"], [0.9], None, 1.0, ["a"], "r", [0.9], compute_ms=0.25, batch_rows=1)
    book.record_answer("canary", "2", ["a"], [0.9], None, 2.0, 3.0)  # no compute time: not a sample
    snap = book.snapshot()["variants"]
    champion = snap["champion"]["compute_ms_per_image"]
    assert sorted(champion) == ["answered/x1/alone", "answered/x1/overlapped", "answered/x2/alone"]
    assert champion["answered/x1/alone"]["p50"] == 0.5 and champion["answered/x1/overlapped"]["p50"] == 0.9
    assert snap["canary"]["compute_ms_per_image"] == {
        "shadowed/x1/alone": {"count": 1, "mean": 0.25, "p50": 0.25, "p95": 0.25, "p99": 0.25}}


def test_a_new_version_in_a_slot_starts_fresh_and_reset_clears_everything():
    book = StatsBook(window=10, bins=4)
    book.record_answer("canary", "2", ["a"], [0.9], None, 1.0, None)
    book.record_answer("canary", "3", ["a"], [0.9], None, 1.0, None)
    assert book.snapshot()["variants"]["canary"]["requests"] == 1
    assert book.snapshot()["variants"]["canary"]["version"] == "3"
    book.reset()
    assert book.snapshot()["variants"]["canary"]["requests"] == 0


def test_window_bounds_the_samples():
    book = StatsBook(window=10, bins=4)
    for i in range(50):
        book.record_answer("champion", "1", ["a"], [0.5], None, float(i), None)
    snap = book.snapshot()["variants"]["champion"]
    assert snap["latency_ms"]["count"] == 10 and snap["requests"] == 50 and len(snap["confidence_samples"]) == 10


def test_each_app_has_its_own_prometheus_registry():
    a, b = ServingMetrics(), ServingMetrics()  # same metric names: no "Duplicated timeseries" error
    a.requests.labels("predict", "m", "1", "champion", "200").inc(3)
    a.set_model("champion", "m", "1", None)
    a.set_model("champion", "m", "2", ("m", "1"))
    text_a, ctype = a.render()
    text_b, _ = b.render()
    assert ctype.startswith("text/plain")
    assert b'cvplatform_requests_total{endpoint="predict",model="m",status="200",variant="champion",version="1"} 3.0' \
        in text_a
    assert b"version=\"1\"} 3.0" not in text_b
    assert b'cvplatform_model_info{model="m",variant="champion",version="2"} 1.0' in text_a
    assert b'cvplatform_model_info{model="m",variant="champion",version="1"}' not in text_a


def test_graded_agreement_and_objects_are_kept_and_merge_across_workers():
    """A task's per-image agreement (detection: matched-box F1) is summed, and the objects per image, their
    scores and class mix are kept per variant; two workers' exports merge into the sums (``serve.workers`` > 1)."""
    objs = [{"scores": [0.9, 0.5], "classes": ["cat", "dog"]}, {"scores": [], "classes": []}]

    def worker(rid: str) -> dict:
        book = StatsBook(window=100, bins=10)
        book.record_answer("champion", "1", ["cat", ""], [0.9, 0.0], None, 1.0, 2.0, objects=objs)
        book.record_shadow("canary", "2", ["cat", ""], [0.9, 0.0], None, 1.0, ["cat", ""], rid, [0.9, 0.0],
                           agreement=[0.5, 1.0], objects=[{"scores": [0.9], "classes": ["cat"]},
                                                          {"scores": [], "classes": []}])
        return book.export()

    one = StatsBook.merged([worker("r1")], 100, 10, 50).snapshot()
    assert one["shadow"]["pairs"] == 2 and one["shadow"]["agree"] == 1.5 and one["shadow"]["agreement"] == 0.75
    assert one["shadow"]["by_champion_confidence"]["agree"][9] == 0.5  # graded, in the champion's 0.9 bin
    assert one["shadow"]["recent_disagreements"] == [
        {"request_id": "r1", "image": 0, "answered": "cat", "canary": "cat", "shadow_variant": "canary",
         "agreement": 0.5}]
    ch = one["variants"]["champion"]["objects"]
    assert ch["images"] == 2 and ch["per_image"] == {"0": 1, "2": 1} and ch["mean_per_image"] == 1.0
    assert ch["classes"] == {"cat": 1, "dog": 1} and ch["total"] == 2
    assert ch["score_hist"]["counts"][9] == 1 and ch["score_hist"]["counts"][5] == 1
    assert sorted(ch["score_samples"]) == [0.5, 0.9]

    both = StatsBook.merged([worker("r1"), worker("r2")], 100, 10, 50).snapshot()
    assert both["shadow"]["pairs"] == 4 and both["shadow"]["agree"] == 3 and both["shadow"]["agreement"] == 0.75
    ch2, ca2 = both["variants"]["champion"]["objects"], both["variants"]["canary"]["objects"]
    assert ch2["per_image"] == {"0": 2, "2": 2} and ch2["classes"] == {"cat": 2, "dog": 2}
    assert ca2["per_image"] == {"0": 2, "1": 2} and ca2["classes"] == {"cat": 2} and len(ca2["score_samples"]) == 2
    # a task without objects (classification) reports none
    book = StatsBook(window=10, bins=10)
    book.record_answer("champion", "1", ["a"], [0.9], None, 1.0, 2.0)
    assert "objects" not in book.snapshot()["variants"]["champion"]


def test_the_tasks_metrics_merge_over_worker_processes_like_the_others():
    """Detection's served metrics in two workers (``serve.workers`` 2, ADR 0012): ``render_merged`` sums their
    histogram buckets, counts and sums and the per-class counter; classification's metrics have none of them."""
    from prometheus_client.parser import text_string_to_metric_families

    from cvplatform.serving.metrics import render_merged
    from cvplatform.tasks import get_task

    task = get_task("detection")
    a, b = ServingMetrics(task.served_metrics), ServingMetrics(task.served_metrics)
    preds = [{"detections": [{"class": "cat", "score": 0.9}, {"class": "dog", "score": 0.4}]}, {"detections": []}]
    a.observe_task("m", "1", "champion", task.served_observations(preds, ["cat", "dog"]))
    b.observe_task("m", "1", "champion", task.served_observations(preds[:1], ["cat", "dog"]))
    b.observe_task("m", "2", "canary", task.served_observations(preds[1:], ["cat", "dog"]))
    text = render_merged([a.export_samples(), b.export_samples()])[0].decode()
    s = {(x.name, tuple(sorted(x.labels.items()))): x.value
         for fam in text_string_to_metric_families(text) for x in fam.samples}
    champ = (("model", "m"), ("variant", "champion"), ("version", "1"))
    assert s[("cvplatform_detections_per_image_count", champ)] == 3
    assert s[("cvplatform_detections_per_image_sum", champ)] == 4
    assert s[("cvplatform_detections_per_image_bucket", tuple(sorted([*champ, ("le", "1.0")])))] == 1
    assert s[("cvplatform_detections_per_image_bucket", tuple(sorted([*champ, ("le", "2.0")])))] == 3
    assert s[("cvplatform_detection_score_count", champ)] == 4
    assert s[("cvplatform_detection_score_sum", champ)] == pytest.approx(2 * 1.3)
    assert s[("cvplatform_detections_total", tuple(sorted([*champ, ("class", "dog")])))] == 2
    canary = (("model", "m"), ("variant", "canary"), ("version", "2"))
    assert s[("cvplatform_detections_per_image_count", canary)] == 1
    assert s[("cvplatform_detection_score_count", canary)] == 0
    plain = ServingMetrics(get_task("classification").served_metrics).render()[0]
    assert b"detection" not in plain


def test_observe_all_renders_exactly_as_one_observe_per_value():
    """The batched histogram update gives the same buckets, count and sum (to the last bit) as ``observe``, for
    values on the bucket bounds, between them, above the last, negative and NaN."""
    from cvplatform.serving.metrics import observe_all
    from cvplatform.tasks import get_task

    task = get_task("detection")
    rng = np.random.default_rng(0)
    bounds = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0]
    batches = [rng.random(int(rng.integers(0, 40))).astype(np.float32).tolist() for _ in range(30)]
    batches += [bounds + [0.0, -0.5, 2.0, float("nan")], [0.3, 0.3], []]
    one, many = ServingMetrics(task.served_metrics), ServingMetrics(task.served_metrics)
    for values in batches:
        child = one.task_metrics["cvplatform_detection_score"][1].labels("m", "1", "champion")
        for v in values:
            child.observe(v)
        observe_all(many.task_metrics["cvplatform_detection_score"][1].labels("m", "1", "champion"), values)

    def samples(m: ServingMetrics) -> list[str]:
        return [line for line in m.render()[0].decode().splitlines() if "_created" not in line]

    assert samples(one) == samples(many)
    assert 'cvplatform_detection_score_count{model="m",variant="champion",version="1"}' in "\n".join(samples(many))


def test_stats_objects_are_counted_as_box_by_box():
    """``add_objects`` bins, counts and rounds every object's score as the per-box rule does (bin = the score's
    tenth, truncated and clipped; not finite -> bin 0; scores rounded to 6 decimals)."""
    rng = np.random.default_rng(1)
    objects = [{"scores": rng.random(int(rng.integers(0, 6))).tolist() + [1.0, 0.0, -0.2, 1.7, float("inf")][: i % 6],
                "classes": ["a", "b"][: i % 3]} for i in range(40)]
    book = StatsBook(window=1000, bins=10)
    book.record_answer("champion", "1", ["a"] * 40, [0.5] * 40, None, 1.0, 2.0, objects=objects)
    vs = book.variants["champion"]
    scores = [float(v) for o in objects for v in o["scores"]]
    hist = [0] * 10
    for c in scores:
        hist[min(9, max(0, int(c * 10))) if np.isfinite(c) else 0] += 1
    assert vs.object_hist == hist
    assert list(vs.object_scores) == [round(c, 6) for c in scores]
    assert vs.object_images == 40 and sum(vs.object_counts.values()) == 40
    assert vs.object_classes == {"a": sum(1 for i in range(40) if i % 3), "b": sum(1 for i in range(40) if i % 3 == 2)}
