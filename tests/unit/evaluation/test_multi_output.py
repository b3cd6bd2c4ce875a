"""A task with several graph outputs (detection has boxes, scores and labels) goes through the runtime
model, the predictors and the parity gate with every output, by name, not only the first one."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cvplatform.errors import ModelError
from cvplatform.evaluation.predictors import OnnxPredictor
from cvplatform.export.parity import check_finite, compare_outputs, nonfinite_rows
from cvplatform.runtime import open_model
from cvplatform.tasks import register_task, unregister_task
from tests.fixtures.serving_models import MEAN, STD, contract_metadata
from tests.fixtures.tasks.brightness import BrightnessTask

SIZE = 8


class TwoOutputTask(BrightnessTask):
    """The brightness task with a second output, ``peak`` (N, 1): the brightest channel's mean."""

    name = "two_outputs"

    @property
    def output_names(self) -> tuple[str, ...]:
        return ("brightness", "peak")

    def check_outputs(self, outputs, class_names) -> None:
        super().check_outputs(outputs, class_names)
        if "peak" not in outputs or np.shape(outputs["peak"])[1:] != (1,):
            raise ModelError(f"a two-output model returns peak (N, 1); got {sorted(outputs)}")


def _two_output_model(batch: int | str = "N"):
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("ReduceMean", ["input"], ["m"], axes=[2, 3], keepdims=0),
             helper.make_node("ReduceMean", ["m"], ["brightness"], axes=[1], keepdims=1),
             helper.make_node("ReduceMax", ["m"], ["peak"], axes=[1], keepdims=1)]
    graph = helper.make_graph(nodes, "two",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, SIZE, SIZE])],
                              [helper.make_tensor_value_info("brightness", TensorProto.FLOAT, [batch, 1]),
                               helper.make_tensor_value_info("peak", TensorProto.FLOAT, [batch, 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.helper.set_model_props(model, {**contract_metadata(("dark", "bright"), SIZE),
                                        "task": json.dumps("two_outputs")})
    return model.SerializeToString()


@pytest.fixture()
def task():
    register_task("two_outputs", TwoOutputTask)
    yield TwoOutputTask()
    unregister_task("two_outputs")


def _images(n: int) -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, size=(n, SIZE, SIZE, 3), dtype=np.uint8)


@pytest.mark.parametrize("batch", ["N", 2])
def test_runtime_and_predictor_return_every_output_for_any_batch(task, batch):
    model = open_model(_two_output_model(batch), name="two", version="1")
    assert model.output_names == ["brightness", "peak"]
    assert model.fixed_batch == (None if batch == "N" else 2)
    images = _images(5)  # a fixed batch of 2 runs in padded chunks: 2 + 2 + 1
    pred = OnnxPredictor(model, task=task)
    out = pred.predict(images, batch_size=3)
    assert list(out) == ["brightness", "peak"] and all(v.shape == (5, 1) for v in out.values())
    x = (images.astype(np.float32) / 255 - MEAN[0]) / STD[0]  # the contract of contract_metadata
    channel_means = x.mean(axis=(1, 2))
    np.testing.assert_allclose(out["brightness"][:, 0], channel_means.mean(axis=1), atol=1e-5)
    np.testing.assert_allclose(out["peak"][:, 0], channel_means.max(axis=1), atol=1e-5)
    np.testing.assert_array_equal(pred.predict_logits(images), out["brightness"])  # the first output
    empty = pred.predict(images[:0])
    assert list(empty) == ["brightness", "peak"] and all(len(v) == 0 for v in empty.values())


def test_parity_compares_every_output(task):
    ref = {"brightness": np.array([[0.2], [0.7], [0.4]], np.float32), "peak": np.array([[0.3], [0.9], [0.5]],
                                                                                       np.float32)}
    same = compare_outputs(ref, {k: v + 1e-6 for k, v in ref.items()}, ids=["a", "b", "c"], paths=["a", "b", "c"],
                           labels=["x"] * 3, class_names=["dark", "bright"], atol=1e-4, min_agreement=1.0, task=task)
    assert same.passed and same.n == 3
    # only the second output differs, on image b: the gate fails on it and names b first
    cand = {"brightness": ref["brightness"].copy(), "peak": ref["peak"] + np.array([[0], [0.25], [0]], np.float32)}
    r = compare_outputs(ref, cand, ids=["a", "b", "c"], paths=["a.png", "b.png", "c.png"], labels=["x"] * 3,
                        class_names=["dark", "bright"], atol=1e-4, min_agreement=1.0, task=task)
    assert not r.passed and r.max_abs_diff == pytest.approx(0.25) and r.worst[0].path == "b.png"
    assert any("max absolute output difference" in reason for reason in r.reasons)


def test_a_non_finite_second_output_is_a_broken_model(task):
    cand = {"brightness": np.zeros((3, 1), np.float32), "peak": np.array([[0.0], [np.nan], [0.0]], np.float32)}
    assert nonfinite_rows(cand).tolist() == [1]
    with pytest.raises(ModelError, match=r"non-finite outputs \(NaN/Inf\) for 1 of 3 images \(b.png\)"):
        check_finite(cand, None, candidate_name="m.onnx", reference_name="best.ckpt", paths=["a.png", "b.png", "c"])
