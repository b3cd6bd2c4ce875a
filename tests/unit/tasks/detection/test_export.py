"""The detection module through the export stage's own functions: ``export_onnx`` (task-driven output names and
output check) -> ``open_model`` (the serving runtime, which checks the outputs with the task named in the ONNX
metadata) -> the task's decode equals the PyTorch decode on the same inputs, for a dynamic batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cvplatform.export.onnx_export import read_metadata
from cvplatform.runtime import open_model
from cvplatform.tasks import get_task


def test_exported_detector_decodes_like_pytorch(detection_onnx):
    task, names = get_task("detection"), detection_onnx.class_names
    assert read_metadata(detection_onnx.path)["task"] == '"detection"'
    runtime = open_model(detection_onnx.path)
    runtime.check_batchable()
    assert runtime.task.name == "detection" and tuple(runtime.output_names) == task.output_names
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        ref = {n: t.numpy() for n, t in zip(task.output_names, detection_onnx.net(x), strict=True)}
    got = runtime.forward(x.numpy())  # checked by the task's check_outputs inside
    assert got["boxes"].shape == (5, 20, 4) and got["labels"].dtype == np.int64

    want, have = task.decode(ref, names), task.decode(got, names)
    assert sum(len(d["detections"]) for d in want) > 0
    for w, h in zip(want, have, strict=True):
        assert [d["class"] for d in h["detections"]] == [d["class"] for d in w["detections"]]
        np.testing.assert_allclose(h["boxes"], w["boxes"], atol=1e-3)
        np.testing.assert_allclose(h["scores"], w["scores"], atol=1e-5)
    agreement = task.agreement(ref, got)
    assert agreement.rate == 1.0 and agreement.max_abs_diff == pytest.approx(0.0, abs=1e-3)
    np.testing.assert_array_equal(task.decode_top(got, names)[0], task.decode_top(ref, names)[0])
