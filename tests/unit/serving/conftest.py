"""A real (SQLite) MLflow registry with tiny ONNX versions, shared by the serving unit tests.

Tests that move aliases get the ``registry`` fixture, which puts the champion back on
version 1 and removes the canary alias afterwards.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.serving_models import register_version, set_alias, write_model

MODEL = "unit-tiny"
KINDS = ("champion", "good", "erroring", "permuted", "broken", "tampered")


@dataclass
class Registry:
    root: Path
    name: str
    versions: dict[str, str]
    paths: dict[str, Path]


@pytest.fixture(scope="session")
def registry_session(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    root = tmp_path_factory.mktemp("serving-registry")
    versions, paths = {}, {}
    for kind in KINDS:
        paths[kind] = write_model(root / "models" / f"{kind}.onnx", "champion" if kind == "tampered" else kind)
        versions[kind] = register_version(root, MODEL, paths[kind])
    _tamper(root, versions["tampered"])  # the stored file changes after registration: sha256 no longer matches
    set_alias(root, MODEL, "champion", versions["champion"])
    yield Registry(root, MODEL, versions, paths)
    mp.undo()
    shutil.rmtree(root, ignore_errors=True)


def _tamper(root: Path, version: str) -> None:
    from mlflow.tracking import MlflowClient

    from cvplatform.tracking import tracking_uri

    client = MlflowClient(tracking_uri(root))
    from urllib.parse import urlparse

    source = client.get_model_version(MODEL, version).source
    path = Path(urlparse(source).path if source.startswith("file:") else source) / "model.onnx"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def registry(registry_session):
    yield registry_session
    set_alias(registry_session.root, MODEL, "champion", registry_session.versions["champion"])
    set_alias(registry_session.root, MODEL, "canary", None)
