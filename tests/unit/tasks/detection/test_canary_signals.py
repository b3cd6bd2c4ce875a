"""Detection's canary hooks: per-image matched-box F1 between two detectors' outputs (``shadow_agreement``) and the
served boxes' scores, classes and areas (``object_signals``); classification keeps top-1 agreement and no objects."""

from __future__ import annotations

import numpy as np
import pytest

from cvplatform.tasks import get_task


def _out(boxes, scores, labels):
    return {"boxes": np.asarray(boxes, np.float32), "scores": np.asarray(scores, np.float32),
            "labels": np.asarray(labels, np.int64)}


A = [[0, 0, 10, 10], [20, 20, 30, 30], [0, 20, 10, 30]]


def test_shadow_agreement_is_each_images_matched_box_f1():
    task = get_task("detection")
    names = ["cat", "dog"]
    champion = _out([A, A, A, A], [[0.9, 0.8, 0.7]] * 3 + [[0.1, 0.1, 0.1]], [[0, 1, 0]] * 4)
    canary = _out([A,  # the same three boxes
                   A,  # misses two (scores under the threshold)
                   [[0, 0, 10, 10], [21, 21, 31, 31], [50, 50, 60, 60]],  # one shifted (IoU 0.68), one elsewhere
                   A],  # neither answers a box
                  [[0.9, 0.8, 0.7], [0.9, 0.1, 0.1], [0.9, 0.8, 0.7], [0.1, 0.1, 0.1]],
                  [[0, 1, 0], [0, 1, 0], [0, 1, 0], [0, 1, 0]])
    f1 = task.shadow_agreement(champion, names, canary, names)
    np.testing.assert_allclose(f1, [1.0, 2 * 1 / 4, 2 * 2 / 6, 1.0], atol=1e-6)
    # a box of another class never matches
    other = _out([A], [[0.9, 0.8, 0.7]], [[1, 0, 1]])
    np.testing.assert_allclose(task.shadow_agreement({k: v[:1] for k, v in champion.items()}, names, other, names),
                               [0.0], atol=1e-6)


def test_shadow_agreement_compares_classes_by_name():
    task = get_task("detection")
    champion = _out([A], [[0.9, 0.8, 0.7]], [[0, 1, 0]])
    # the same boxes from a model whose class list is in the other order: same objects, same classes
    canary = _out([A], [[0.9, 0.8, 0.7]], [[1, 0, 1]])
    assert task.shadow_agreement(champion, ["cat", "dog"], canary, ["dog", "cat"]).tolist() == [1.0]
    # a class the answering model does not know ("bird") never matches: 2 of 3 boxes on each side
    assert task.shadow_agreement(champion, ["cat", "dog"], canary, ["bird", "cat"]).tolist() == [pytest.approx(2 / 3)]


def test_object_signals_are_the_served_boxes():
    task = get_task("detection")
    out = _out([[[0, 0, 16, 16], [0, 0, 8, 4], [0, 0, 32, 32]], [[0, 0, 1, 1]] * 3],
               [[0.9, 0.5, 0.1], [0.2, 0.2, 0.2]], [[0, 1, 1], [0, 0, 0]])
    sig = task.object_signals(out, ["cat", "dog"], (32, 32))
    assert sig == [{"scores": [0.9, 0.5], "classes": ["cat", "dog"], "areas": [0.25, 0.03125]},
                   {"scores": [], "classes": [], "areas": []}]


def test_classification_keeps_top1_agreement_and_reports_no_objects():
    task = get_task("classification")
    a = {"logits": np.array([[2.0, 0.0], [0.0, 2.0]], np.float32)}
    b = {"logits": np.array([[2.0, 0.0], [2.0, 0.0]], np.float32)}
    assert task.shadow_agreement(a, ["cat", "dog"], b, ["cat", "dog"]).tolist() == [1.0, 0.0]
    assert task.shadow_agreement(a, ["cat", "dog"], b, ["dog", "cat"]).tolist() == [0.0, 1.0]
    assert task.object_signals(a, ["cat", "dog"], (32, 32)) is None


def test_shadow_agreement_judges_confident_boxes_not_borderline_ones():
    """Borderline boxes (served, score < 0.5) that the other model does not serve are seed noise, not disagreement;
    a confident box the other model does not serve at all is."""
    task = get_task("detection")
    names = ["cat", "dog"]
    champion = _out([A, A, A, A], [[0.9, 0.4, 0.35], [0.9, 0.8, 0.4], [0.4, 0.35, 0.1], [0.9, 0.8, 0.7]],
                    [[0, 1, 0]] * 4)
    canary = _out([A, A, A, A], [[0.9, 0.1, 0.1],  # leaves out the champion's two borderline boxes
                                 [0.9, 0.35, 0.1],  # serves the champion's confident second box, less sure
                                 [0.1, 0.1, 0.45],  # no confident box on either side: served-box F1 (no match)
                                 [0.9, 0.2, 0.2]],  # misses two confident boxes
                  [[0, 1, 0]] * 4)
    np.testing.assert_allclose(task.shadow_agreement(champion, names, canary, names),
                               [1.0, 1.0, 0.0, 2 / 4], atol=1e-6)
