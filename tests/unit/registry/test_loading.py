"""load_model: resolve models:/ URIs, verify the sha256, return a working session and contract."""

from __future__ import annotations

import numpy as np
import pytest

from cvplatform.errors import RegistryError
from cvplatform.registry import approve, load_model, promote
from cvplatform.registry.errors import ArtifactIntegrityError, UnknownVersionError, UnmanagedVersionError
from cvplatform.registry.loading import parse_model_uri
from tests.unit.registry.project import CLASSES, stored_onnx_path


def test_load_by_version_gives_a_verified_working_model(registered, project):
    import onnxruntime as ort

    from cvplatform.preprocess import preprocess

    m = load_model("models:/cvplatform/1", root=project.root)
    assert m.info.version == "1" and m.info.sha256 == project.sha256 and m.info.aliases == ("challenger",)
    assert m.contract.class_names == CLASSES and m.contract.input_size == (8, 8)
    images = [np.full((12, 10, 3), 40 * i, np.uint8) for i in range(3)]
    x = preprocess(images, m.contract)
    logits = m.session.run([m.output_name], {m.input_name: x})[0]
    assert logits.shape == (3, 2)
    # the same numbers as the exported file itself
    ref = ort.InferenceSession(str(project.onnx_path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(logits, ref.run(None, {"input": x})[0], rtol=1e-6, atol=1e-6)
    session, contract, info = m  # tuple-style unpacking
    assert info.uri == "models:/cvplatform/1"


def test_load_by_alias(registered, project):
    approve("cvplatform", 1, reviewer="bob", comment="ok", root=project.root)
    promote("cvplatform", 1, root=project.root)
    m = load_model("models:/cvplatform@champion", root=project.root)
    assert m.info.version == "1" and "champion" in m.info.aliases and m.info.approval == "approved"


def test_load_takes_the_callers_session_options_and_providers(registered, project):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    m = load_model("models:/cvplatform/1", root=project.root, providers=["CPUExecutionProvider"], sess_options=opts)
    got = m.session.get_session_options()
    assert got.intra_op_num_threads == 1
    assert got.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert m.session.get_providers() == ["CPUExecutionProvider"]


def test_tampered_artifact_is_refused(registered, project, client):
    stored = stored_onnx_path(client.uri, "cvplatform", "1")
    assert stored.is_file() and stored.is_relative_to(project.root / "mlartifacts")
    data = bytearray(stored.read_bytes())
    data[-1] ^= 0xFF  # flip bits of the last byte: still the same size
    stored.write_bytes(bytes(data))
    with pytest.raises(ArtifactIntegrityError) as info:
        load_model("models:/cvplatform@challenger", root=project.root)
    msg = str(info.value)
    assert "version 1 of 'cvplatform'" in msg and project.sha256 in msg and "modified after registration" in msg


def test_unknown_alias_and_version(registered, project):
    with pytest.raises(UnknownVersionError, match="no alias 'champion'") as info:
        load_model("models:/cvplatform@champion", root=project.root)
    assert "challenger -> v1" in str(info.value)
    with pytest.raises(UnknownVersionError, match="no version 9"):
        load_model("models:/cvplatform/9", root=project.root)


def test_version_without_registered_hash_is_refused(registered, project, client):
    client.mlflow.delete_model_version_tag("cvplatform", "1", "artifact.sha256")
    with pytest.raises(UnmanagedVersionError, match="cannot be verified"):
        load_model("models:/cvplatform/1", root=project.root)


@pytest.mark.parametrize("uri", ["cvplatform@champion", "models:/cvplatform", "models:/a/b/c", "runs:/x/model"])
def test_bad_uris_are_rejected_with_the_accepted_forms(uri):
    with pytest.raises(RegistryError, match=r"models:/NAME@ALIAS"):
        parse_model_uri(uri)


def test_parse_model_uri():
    assert parse_model_uri("models:/m@champion").alias == "champion"
    ref = parse_model_uri("models:/my model/12")
    assert (ref.name, ref.version, ref.alias) == ("my model", "12", None)
