"""export_onnx: fixed opset, dynamic batch, contract + version metadata, checker, determinism."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cvplatform.errors import ModelError
from cvplatform.export.onnx_export import (
    DEFAULT_OPSET,
    VERSION_KEYS,
    export_onnx,
    read_metadata,
    set_metadata,
    version_metadata,
)
from tests.unit.export.helpers import untrained_model


def _version(**kw) -> dict[str, str]:
    args = {"arch": "small_cnn", "arch_kwargs": {"width": 4}, "train_run_id": "run1", "data_hash": "d1",
            "checkpoint_sha256": "c1", "checkpoint_epoch": 0}
    return version_metadata(**{**args, **kw})


def test_export_runs_at_any_batch_size_and_matches_torch(tmp_path):
    import onnx
    import onnxruntime as ort
    import torch

    loaded, contract = untrained_model(tmp_path)
    path = export_onnx(loaded, tmp_path / "m.onnx", contract, extra_metadata=_version())
    model = onnx.load(str(path))
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [DEFAULT_OPSET]
    assert [i.name for i in model.graph.input] == ["input"] and [o.name for o in model.graph.output] == ["logits"]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert isinstance(sess.get_inputs()[0].shape[0], str)  # dynamic batch axis
    x = np.random.default_rng(0).standard_normal((5, 3, 16, 16)).astype(np.float32)
    with torch.inference_mode():
        expected = loaded.model(torch.from_numpy(x)).numpy()
    for n in (1, 5):
        got = sess.run(["logits"], {"input": x[:n]})[0]
        assert got.shape == (n, 3)
        assert np.abs(got - expected[:n]).max() < 1e-4


def test_metadata_holds_contract_and_version_and_export_is_deterministic(tmp_path):
    from cvplatform.preprocess import PreprocessContract

    loaded, contract = untrained_model(tmp_path)
    a = export_onnx(loaded, tmp_path / "a.onnx", contract, extra_metadata=_version())
    b = export_onnx(loaded, tmp_path / "b.onnx", contract, extra_metadata=_version())
    assert a.read_bytes() == b.read_bytes()  # same checkpoint -> byte-identical file
    meta = read_metadata(a)
    assert PreprocessContract.from_metadata(meta) == contract
    assert set(VERSION_KEYS) <= set(meta)
    assert json.loads(meta["train_run_id"]) == "run1" and json.loads(meta["opset"]) == DEFAULT_OPSET
    c = export_onnx(loaded, tmp_path / "c.onnx", contract, extra_metadata=_version(train_run_id="run2"))
    assert c.read_bytes() != a.read_bytes()


def test_other_opset_and_contract_mismatch(tmp_path):
    import onnx

    from cvplatform.preprocess import PreprocessContract

    loaded, contract = untrained_model(tmp_path)
    p = export_onnx(loaded, tmp_path / "m13.onnx", contract, opset=13)
    assert [o.version for o in onnx.load(str(p)).opset_import if o.domain in ("", "ai.onnx")] == [13]
    wrong = PreprocessContract((16, 16), (0.5,) * 3, (0.25,) * 3, ("a", "b"))
    # the task (classification) checks the network's outputs against the contract's classes
    with pytest.raises(ModelError, match=r"logits of shape \(1, 3\) do not fit 2 class names"):
        export_onnx(loaded, tmp_path / "bad.onnx", wrong)
    assert not (tmp_path / "bad.onnx").exists()


def test_dynamo_exporter_without_onnxscript_says_how_to_fix(tmp_path):
    try:
        import onnxscript  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("onnxscript is installed: the dynamo exporter is available")
    loaded, contract = untrained_model(tmp_path)
    with pytest.raises(ModelError, match="onnxscript.*export.exporter: torchscript"):
        export_onnx(loaded, tmp_path / "m.onnx", contract, exporter="dynamo")


def test_set_metadata_replaces_and_sorts():
    import onnx

    m = onnx.ModelProto()
    set_metadata(m, {"b": "1", "a": "2"})
    set_metadata(m, {"b": "3"})
    assert [(p.key, p.value) for p in m.metadata_props] == [("a", "2"), ("b", "3")]


def test_read_metadata_errors_name_the_file(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        read_metadata(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="junk.onnx"):
        read_metadata(junk)


def test_importing_the_export_package_is_light():
    code = ("import sys, cvplatform, cvplatform.export; "
            "heavy = [m for m in ('torch', 'onnx', 'onnxruntime', 'mlflow') if m in sys.modules]; "
            "assert not heavy, heavy; assert callable(cvplatform.run_export)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[3])
