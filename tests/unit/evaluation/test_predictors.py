"""Predictors: ONNX (contract from metadata_props), registry URIs through MLflow, dispatch and errors."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from cvplatform.errors import ModelError
from cvplatform.evaluation.predictors import (
    OnnxPredictor,
    Predictor,
    contract_from_checkpoint,
    load_predictor,
)
from cvplatform.preprocess import preprocess
from cvplatform.registry.errors import UnknownVersionError

from .conftest import colour_model, contract, export_onnx, register_onnx


def _images(n: int = 5, size: int = 16) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_onnx_predictor_matches_torch_and_reads_the_contract(tmp_path):
    import torch

    model = colour_model(noise=0.5)
    c = contract(16)
    path = export_onnx(model, tmp_path / "m.onnx", c)
    pred = load_predictor(path)
    assert isinstance(pred, OnnxPredictor) and isinstance(pred, Predictor)
    assert pred.contract == c and pred.class_names == ("red", "green", "blue")
    imgs = _images(5)
    logits = pred.predict_logits(imgs, batch_size=2)
    with torch.no_grad():
        expected = model(torch.from_numpy(preprocess(imgs, c))).numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-5)
    # other-sized inputs are resized by the contract
    big = np.repeat(np.repeat(imgs, 2, axis=1), 2, axis=2)
    assert pred.predict_logits(list(big)).shape == (5, 3)


def test_fixed_batch_onnx_model_is_run_in_padded_chunks(tmp_path):
    model = colour_model()
    c = contract(16)
    fixed = OnnxPredictor(export_onnx(model, tmp_path / "fixed.onnx", c, dynamic=False, batch=4))
    dynamic = OnnxPredictor(export_onnx(model, tmp_path / "dyn.onnx", c))
    assert fixed.fixed_batch == 4 and dynamic.fixed_batch is None
    imgs = _images(7)
    np.testing.assert_allclose(fixed.predict_logits(imgs, batch_size=3), dynamic.predict_logits(imgs), atol=1e-5)


def test_onnx_without_contract_metadata_is_rejected(tmp_path):
    path = export_onnx(colour_model(), tmp_path / "bare.onnx", None)
    with pytest.raises(ModelError, match=r"bare.onnx \(ONNX metadata_props\): preprocessing contract key\(s\) "
                                         r"\['input_size', 'mean', 'std', 'class_names'\] missing"):
        OnnxPredictor(path)


def test_onnx_contract_that_disagrees_with_the_model_is_rejected(tmp_path):
    # exported for 16x16 inputs without dynamic spatial axes, metadata claims 32x32
    import io
    import warnings

    import onnx
    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(colour_model(), torch.zeros(1, 3, 16, 16), buf, dynamo=False, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "b"}, "logits": {0: "b"}})
    proto = onnx.load_from_string(buf.getvalue())
    onnx.helper.set_model_props(proto, contract(32).to_metadata())
    onnx.save(proto, str(tmp_path / "bad.onnx"))
    with pytest.raises(ModelError, match=r"has shape \['b', 3, 16, 16\], but the contract says NCHW \(N, 3, 32, 32\)"):
        OnnxPredictor(tmp_path / "bad.onnx")
    # wrong number of classes in the metadata: caught at prediction time
    export_onnx(colour_model(), tmp_path / "four.onnx", contract(16, ("a", "b", "c", "d")))
    with pytest.raises(ModelError, match=r"model returned shape \(2, 3\) .* expected \(N, 4\)"):
        OnnxPredictor(tmp_path / "four.onnx").predict_logits(_images(2))


def test_load_predictor_dispatch_errors(tmp_path):
    with pytest.raises(ModelError, match="unknown model reference"):
        load_predictor(tmp_path / "model.pt")
    with pytest.raises(ModelError, match="ONNX model not found"):
        load_predictor(tmp_path / "missing.onnx")
    with pytest.raises(ModelError, match="checkpoint not found"):
        load_predictor("artifacts/train/best.ckpt", root=tmp_path)
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(ModelError, match="onnxruntime cannot load the model"):
        load_predictor(tmp_path / "junk.onnx")


def test_checkpoint_contract_refuses_what_the_contract_cannot_express():
    loaded = SimpleNamespace(path="best.ckpt", input_size=(8, 8), mean=(0.5,) * 3, std=(0.5,) * 3,
                             class_names=["a", "b"], eval_transforms=[], preprocess={"resize_interpolation": "bilinear"})
    c = contract_from_checkpoint(loaded)
    assert c.input_size == (8, 8) and c.interpolation == "linear" and c.class_names == ("a", "b")
    with pytest.raises(ModelError, match=r"best.ckpt: the model was trained with recipe eval steps \['CenterCrop'\]"):
        contract_from_checkpoint(SimpleNamespace(**{**vars(loaded), "eval_transforms": [{"name": "CenterCrop"}]}))
    with pytest.raises(ModelError, match="resize interpolation 'bicubic' is not supported"):
        contract_from_checkpoint(SimpleNamespace(**{**vars(loaded), "preprocess": {"resize_interpolation": "bicubic"}}))


@pytest.mark.slow
def test_registry_uri_by_alias_and_version(tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    c = contract(16)
    v1 = register_onnx(root, export_onnx(colour_model(), tmp_path / "v1.onnx", c), alias="champion")
    v2 = register_onnx(root, export_onnx(colour_model(perm=(1, 0, 2)), tmp_path / "v2.onnx", c), alias=None)
    assert (v1, v2) == ("1", "2")
    imgs = _images(4)
    by_alias = load_predictor("models:/cvplatform@champion", root=root)
    assert isinstance(by_alias, OnnxPredictor) and by_alias.name == "models:/cvplatform@champion"
    assert by_alias.contract == c
    by_version = load_predictor("models:/cvplatform/2", root=root)
    direct = OnnxPredictor(tmp_path / "v1.onnx")
    np.testing.assert_allclose(by_alias.predict_logits(imgs), direct.predict_logits(imgs), atol=1e-6)
    np.testing.assert_allclose(by_version.predict_logits(imgs), direct.predict_logits(imgs)[:, [1, 0, 2]], atol=1e-6)
    with pytest.raises(UnknownVersionError, match=r"model 'cvplatform' has no alias 'nope'"):
        load_predictor("models:/cvplatform@nope", root=root)


def test_mlflow_uris_restores_module_state_and_environment(monkeypatch, tmp_path):
    import os

    import mlflow

    from cvplatform.evaluation.predictors import mlflow_uris

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    before = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    target = f"sqlite:///{tmp_path / 'x.db'}"
    with mlflow_uris(target):
        assert mlflow.get_tracking_uri() == target and mlflow.get_registry_uri() == target
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ
    assert (mlflow.get_tracking_uri(), mlflow.get_registry_uri()) == before
    assert not (tmp_path / "x.db").exists()  # switching URIs touches no store
