"""The one runtime model: one way to open an ONNX model, used by evaluation, export, the registry and serving."""

from __future__ import annotations

import numpy as np
import pytest

from cvplatform.errors import ModelError
from cvplatform.preprocess import preprocess
from cvplatform.runtime import RuntimeModel, open_model, select_providers, session_options
from tests.fixtures.serving_models import CLASSES, build_model, colour_image


def _save(tmp_path, model, name="m.onnx"):
    p = tmp_path / name
    p.write_bytes(model.SerializeToString())
    return p


def test_session_options_and_providers_are_built_in_one_place():
    opts = session_options(intra_op_threads=2, inter_op_threads=1, allow_spinning=False, sequential=True,
                           optimize_all=True)
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level) == (2, 1, 3)
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert session_options().intra_op_num_threads == 0  # onnxruntime's default
    assert select_providers(["NoSuchExecutionProvider"]) == ["CPUExecutionProvider"]
    assert select_providers(["CPUExecutionProvider", "NoSuchExecutionProvider"]) == ["CPUExecutionProvider"]


def test_a_file_bytes_and_a_session_open_to_the_same_model(tmp_path):
    path = _save(tmp_path, build_model())
    by_path = open_model(path)
    by_bytes = open_model(path.read_bytes(), name="m", version="3", sha256="abc")
    by_session = open_model(by_path.session)
    assert by_path.contract.class_names == CLASSES and by_path.name == str(path) and by_path.uri == str(path)
    assert (by_bytes.name, by_bytes.version, by_bytes.sha256) == ("m", "3", "abc")
    assert by_session.name == "<onnx session>" and by_path.fixed_batch is None
    x = preprocess([colour_image(i) for i in range(3)], by_path.contract)
    for m in (by_path, by_bytes, by_session):
        assert list(m.forward(x)["logits"].argmax(1)) == [0, 1, 2]  # every output by name
    by_path.check_batchable()
    assert by_path.describe()["providers"] == ["CPUExecutionProvider"]


def test_a_static_batch_runs_in_padded_chunks_but_is_not_batchable(tmp_path):
    fixed = build_model()
    fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2
    m = open_model(_save(tmp_path, fixed))
    dynamic = open_model(_save(tmp_path, build_model(), "d.onnx"))
    assert m.fixed_batch == 2
    x = preprocess([colour_image(i % 3, seed=i) for i in range(5)], m.contract)
    np.testing.assert_allclose(m.run(x), dynamic.run(x), rtol=1e-6, atol=1e-6)
    with pytest.raises(ModelError, match="fixed batch size 2"):
        m.check_batchable()


def test_unusable_models_are_refused_with_the_file_named(tmp_path):
    with pytest.raises(ModelError, match=r"missing.onnx: ONNX model not found"):
        open_model(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    with pytest.raises(ModelError, match=r"junk.onnx: onnxruntime cannot load the model"):
        open_model(tmp_path / "junk.onnx")
    no_meta = build_model()
    del no_meta.metadata_props[:]
    with pytest.raises(ModelError, match=r"bare.onnx \(ONNX metadata_props\)"):
        open_model(_save(tmp_path, no_meta, "bare.onnx"))
    erroring = open_model(_save(tmp_path, build_model("erroring"), "e.onnx"), name="e", version="7")
    with pytest.raises(ModelError, match=r"e v7: returned shape \(1, 6\)"):
        erroring.forward(preprocess([colour_image(0)], erroring.contract))


def test_evaluation_and_serving_run_the_same_runtime_model(tmp_path):
    from cvplatform.evaluation.predictors import OnnxPredictor
    from cvplatform.serving.models import load_onnx

    path = _save(tmp_path, build_model())
    pred = OnnxPredictor(path)
    served = load_onnx(path, name="m", version="1", intra_op_threads=1, allow_spinning=False)
    assert isinstance(pred.runtime, RuntimeModel) and isinstance(served, RuntimeModel)
    images = np.stack([colour_image(i, size=16) for i in range(3)])
    outputs = served.forward(preprocess(images, served.contract))
    assert list(outputs) == ["logits"]  # keyed by the task's output names
    np.testing.assert_array_equal(pred.predict_logits(images), outputs["logits"])
    assert served.session.get_session_options().intra_op_num_threads == 1


def _mean_model(size: int = 8, classes: tuple[str, ...] = ("bright", "dark"), task: str | None = "brightness"):
    """A graph with one output ``brightness (N, 1)``: the mean input value (no (N, C) logits)."""
    import json

    import onnx
    from onnx import TensorProto, helper

    from tests.fixtures.serving_models import contract_metadata

    nodes = [helper.make_node("ReduceMean", ["input"], ["m"], axes=[2, 3], keepdims=0),
             helper.make_node("ReduceMean", ["m"], ["brightness"], axes=[1], keepdims=1)]
    graph = helper.make_graph(nodes, "mean",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
                              [helper.make_tensor_value_info("brightness", TensorProto.FLOAT, ["N", 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # what onnxruntime reads
    meta = {**contract_metadata(classes, size), **({"task": json.dumps(task)} if task else {})}
    onnx.helper.set_model_props(model, meta)
    return model


def test_forward_and_check_batchable_follow_the_models_task(tmp_path):
    """A model exported for another task (``task`` in its metadata) is checked by that task, not as (N, C) logits."""
    from cvplatform.tasks import register_task, unregister_task
    from tests.fixtures.tasks.brightness import BrightnessTask

    register_task("brightness", BrightnessTask)
    try:
        m = open_model(_save(tmp_path, _mean_model()), name="b", version="1")
        m.check_batchable()  # (N, 1) with two class names: fine for this task
        x = preprocess([colour_image(i, size=8) for i in range(3)], m.contract)
        out = m.forward(x)
        assert list(out) == ["brightness"] and out["brightness"].shape == (3, 1)
        np.testing.assert_allclose(out["brightness"][:, 0], x.mean(axis=(1, 2, 3)), rtol=1e-5, atol=1e-6)
        # the same graph without task metadata is a classification model, and (N, 1) does not fit two classes
        legacy = open_model(_save(tmp_path, _mean_model(task=None), "legacy.onnx"), name="l", version="2")
        with pytest.raises(ModelError, match=r"do not give the classification outputs \['logits'\]"):
            legacy.check_batchable()
    finally:
        unregister_task("brightness")
