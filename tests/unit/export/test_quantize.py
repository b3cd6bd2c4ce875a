"""INT8: the pure acceptance rule, the calibration reader, and a real static QDQ quantization that runs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cvplatform.errors import DataError
from cvplatform.export.quantize import calibration_reader, decide_int8, quantize_int8
from cvplatform.export.suite import ScenarioComparison
from tests.unit.export.helpers import untrained_model


def _row(name, drop, *, level="must_pass", kind="corruption", n=50, judged=None):
    ref = 0.9
    return ScenarioComparison(name, kind, level, n, ref if n else None, (ref - drop) if n else None,
                              drop if n else None, 1.0 if n else None,
                              judged if judged is not None else (level == "must_pass" or kind == "clean"))


def test_accepted_when_every_judged_drop_is_within_max_drop():
    rows = [_row("clean", 0.01, kind="clean"), _row("fog_s1", 0.005), _row("noise_s5", 0.2, level="warn")]
    d = decide_int8(rows, 0.01)  # a drop exactly at max_drop passes; warn scenarios are not judged
    assert d.accepted and d.reason is None and d.worst_scenario == "clean"
    assert d.to_dict()["scenarios"][2]["judged"] is False


def test_rejected_names_every_failing_scenario_and_the_drop():
    rows = [_row("clean", 0.004, kind="clean"), _row("fog_s1", 0.03), _row("blur_s2", 0.02)]
    d = decide_int8(rows, 0.01)
    assert not d.accepted and d.worst_scenario == "fog_s1" and d.worst_drop == pytest.approx(0.03)
    assert d.reason.index("'fog_s1'") < d.reason.index("'blur_s2'") and "clean" not in d.reason
    assert "drop +0.0300 > export.int8.max_drop +0.0100" in d.reason


def test_negative_max_drop_rejects_even_identical_accuracy():
    d = decide_int8([_row("clean", 0.0, kind="clean")], -1.0)
    assert not d.accepted and "'clean'" in d.reason


def test_nothing_to_judge_or_an_empty_judged_scenario_rejects():
    assert not decide_int8([_row("fog_s1", 0.0, level="warn")], 0.01).accepted
    d = decide_int8([_row("clean", 0.0, kind="clean"), _row("curated", 0.0, n=0)], 0.01)
    assert not d.accepted and "no images" in d.reason


def test_calibration_reader_yields_batches_then_none_and_rewinds():
    r = calibration_reader(np.zeros((5, 3, 4, 4), np.float32), input_name="input", batch_size=2)
    sizes = []
    while (item := r.get_next()) is not None:
        sizes.append(item["input"].shape[0])
    assert sizes == [2, 2, 1]
    r.rewind()
    assert r.get_next()["input"].shape == (2, 3, 4, 4)


def test_quantize_int8_writes_a_checked_runnable_model_with_the_metadata(tmp_path):
    import onnx
    import onnxruntime as ort

    from cvplatform.export.onnx_export import export_onnx, read_metadata, version_metadata
    from cvplatform.preprocess import PreprocessContract

    loaded, contract = untrained_model(tmp_path)
    meta = version_metadata(arch="small_cnn", arch_kwargs={}, train_run_id=None, data_hash="d",
                            checkpoint_sha256="c", checkpoint_epoch=0)
    fp32 = export_onnx(loaded, tmp_path / "fp32.onnx", contract, extra_metadata=meta)
    rng = np.random.default_rng(0)
    cal = rng.standard_normal((16, 3, 16, 16)).astype(np.float32)
    info = quantize_int8(fp32, tmp_path / "int8.onnx", cal)
    assert info.calibration_images == 16 and info.pre_processed
    model = onnx.load(str(info.path))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ format
    m = read_metadata(info.path)
    assert json.loads(m["precision"]) == "int8" and PreprocessContract.from_metadata(m) == contract
    x = rng.standard_normal((4, 3, 16, 16)).astype(np.float32)
    q = ort.InferenceSession(str(info.path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    f = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert q.shape == (4, 3) and np.isfinite(q).all()
    assert np.abs(q - f).max() < 0.25 * (np.abs(f).max() + 1e-6) + 0.05  # close to fp32, not identical
    # same inputs, same calibration -> same bytes (DVC-friendly)
    again = quantize_int8(fp32, tmp_path / "int8_again.onnx", cal)
    assert again.path.read_bytes() == info.path.read_bytes()


def test_quantize_without_calibration_inputs_is_a_data_error(tmp_path):
    from cvplatform.export.onnx_export import export_onnx

    loaded, contract = untrained_model(tmp_path)
    fp32 = export_onnx(loaded, tmp_path / "fp32.onnx", contract)
    with pytest.raises(DataError, match="calibration_images"):
        quantize_int8(fp32, tmp_path / "int8.onnx", np.zeros((0, 3, 16, 16), np.float32))
