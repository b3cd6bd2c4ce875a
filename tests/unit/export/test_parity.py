"""The parity gate: pure comparison, non-finite outputs, and a deliberately perturbed ONNX file that must fail."""

from __future__ import annotations

import numpy as np
import pytest

from cvplatform.errors import DataError, GateFailed, ModelError
from cvplatform.export.parity import check_finite, compare_logits, raise_if_failed, run_parity

CLASSES = ["a", "b", "c"]


def _cmp(ref, cand, **kw):
    n = len(ref)
    args = {"ids": [f"{i:064x}" for i in range(n)], "paths": [f"data/raw/{i}.png" for i in range(n)],
            "labels": ["a"] * n, "class_names": CLASSES, "atol": 1e-4, "min_agreement": 0.999}
    return compare_logits(np.asarray(ref, np.float32), np.asarray(cand, np.float32), **{**args, **kw})


def test_identical_logits_pass():
    ref = np.eye(3, dtype=np.float32)
    r = _cmp(ref, ref + 1e-6)
    assert r.passed and r.top1_agreement == 1.0 and r.disagreements == 0 and r.reasons == []
    assert r.max_abs_diff == pytest.approx(1e-6, rel=1e-2)


def test_atol_and_agreement_criteria_fail_separately_and_worst_is_named():
    ref = np.array([[3, 0, 0], [0, 3, 0], [0, 0, 3], [2, 1, 0]], np.float32)
    small = ref.copy()
    small[1, 1] += 1e-3  # bigger than atol, same top-1
    r = _cmp(ref, small)
    assert not r.passed and len(r.reasons) == 1 and "atol" in r.reasons[0]
    assert r.worst[0].path == "data/raw/1.png" and r.worst[0].max_abs_diff == pytest.approx(1e-3, rel=1e-2)
    flipped = ref.copy()
    flipped[3] = [1, 2, 0]  # top-1 changes on image 3
    r = _cmp(ref, flipped, atol=10.0)
    assert not r.passed and "agreement 0.7500" in r.reasons[0] and r.disagreements == 1
    assert r.worst[0].path == "data/raw/3.png"  # disagreeing images come first
    assert (r.worst[0].reference_top1, r.worst[0].candidate_top1) == ("a", "b")
    with pytest.raises(GateFailed) as e:
        raise_if_failed(r, report_path="artifacts/export/parity.json")
    assert "data/raw/3.png" in str(e.value) and f"{3:064x}"[:12] in str(e.value) and "parity.json" in str(e.value)


def test_agreement_and_worst_classes_are_the_tasks():
    """compare_logits asks the task: a task that counts only class 'a' as agreement decides the gate."""
    from cvplatform.tasks.base import Agreement
    from cvplatform.tasks.classification import ClassificationTask

    class StrictTask(ClassificationTask):
        def agreement(self, reference, candidate):
            both_a = (reference["logits"].argmax(1) == 0) & (candidate["logits"].argmax(1) == 0)
            return Agreement(n=len(both_a), agree=int(both_a.sum()),
                             detail={"disagree_rows": np.flatnonzero(~both_a).tolist()})

        def decode_top(self, outputs, class_names):
            classes, conf = super().decode_top(outputs, class_names)
            return np.asarray([f"top:{c}" for c in classes], dtype=object), conf

    ref = np.eye(3, dtype=np.float32)
    default = _cmp(ref, ref)
    strict = _cmp(ref, ref, task=StrictTask())
    assert default.passed and default.top1_agreement == 1.0
    assert not strict.passed and strict.disagreements == 2 and strict.top1_agreement == pytest.approx(1 / 3)
    assert [w.path for w in strict.worst[:2]] == ["data/raw/1.png", "data/raw/2.png"]  # disagreeing first
    assert strict.worst[0].reference_top1 == "top:b" and strict.worst[0].candidate_top1 == "top:b"


def test_outputs_that_do_not_fit_the_classes_are_a_model_error():
    with pytest.raises(ModelError, match="do not fit 2 class names"):
        _cmp(np.zeros((2, 3)), np.zeros((2, 3)), class_names=["a", "b"])


def test_bad_shapes_and_empty_input():
    with pytest.raises(DataError, match="differ in shape"):
        _cmp(np.zeros((2, 3)), np.zeros((2, 2)))
    with pytest.raises(DataError, match="no test images"):
        _cmp(np.zeros((0, 3)), np.zeros((0, 3)))


def test_non_finite_outputs_blame_the_right_side():
    ok = np.zeros((2, 3), np.float32)
    bad = ok.copy()
    bad[1, 0] = np.nan
    check_finite(ok, ok, candidate_name="m.onnx", reference_name="best.ckpt", paths=["x", "y"])
    with pytest.raises(ModelError, match=r"1 of 2 images \(y\).*export introduced them"):
        check_finite(bad, ok, candidate_name="m.onnx", reference_name="best.ckpt", paths=["x", "y"])
    with pytest.raises(ModelError, match="checkpoint itself is broken"):
        check_finite(bad, bad, candidate_name="m.onnx", reference_name="best.ckpt", paths=["x", "y"])


@pytest.mark.slow
def test_perturbed_onnx_file_fails_the_gate_and_the_real_one_passes(exported, tmp_path):
    import onnx
    from onnx import numpy_helper

    from cvplatform.data.manifest import read_manifest
    from cvplatform.evaluation.predictors import OnnxPredictor, TorchCheckpointPredictor
    from cvplatform.export.suite import load_images, select_split

    root, _ = exported
    torch_pred = TorchCheckpointPredictor(root / "artifacts" / "train" / "best.ckpt")
    rows = select_split(read_manifest(root / "data" / "processed" / "manifest.parquet"), "test", None,
                        source="manifest", key="test")
    data = load_images(rows, root, torch_pred, "test split")
    kw = {"ids": data.ids, "paths": [str(p) for p in rows["path"]], "labels": data.labels}

    good = OnnxPredictor(root / "artifacts" / "export" / "model_fp32.onnx")
    assert run_parity(torch_pred, good, data.images, **kw).passed

    model = onnx.load(str(root / "artifacts" / "export" / "model_fp32.onnx"))
    init = next(t for t in model.graph.initializer if numpy_helper.to_array(t).ndim == 4)  # a conv weight
    w = numpy_helper.to_array(init)
    noisy = w + np.random.default_rng(0).normal(0, 0.5, w.shape).astype(w.dtype)
    init.CopyFrom(numpy_helper.from_array(noisy, init.name))
    bad_path = tmp_path / "perturbed.onnx"
    onnx.save(model, str(bad_path))
    bad = OnnxPredictor(bad_path)  # still a valid, runnable model with the right metadata
    assert bad.predict_logits(data.images).shape == (len(data.ids), 3)
    report = run_parity(torch_pred, bad, data.images, **kw)
    assert not report.passed and report.max_abs_diff > 1e-4
    with pytest.raises(GateFailed) as e:
        raise_if_failed(report)
    assert report.worst[0].path in str(e.value) and report.worst[0].sha256[:12] in str(e.value)
