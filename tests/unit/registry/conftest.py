"""Fixtures for the registry tests: a project with hand-built export / evaluation outputs on an embedded store.

The embedded SQLite store of every test starts as a copy of one migrated, empty
MLflow database (creating the schema takes seconds; copying the file does not).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.unit.registry.project import Project, make_project, onnx_model_bytes


@pytest.fixture(scope="session")
def model_bytes() -> bytes:
    return onnx_model_bytes(seed=0)


@pytest.fixture(scope="session")
def other_model_bytes() -> bytes:
    return onnx_model_bytes(seed=1)


@pytest.fixture(scope="session")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated, empty MLflow SQLite database."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def registry_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Embedded store (no MLFLOW_TRACKING_URI), author 'alice', no Airflow context."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.delenv("AIRFLOW_CTX_DAG_RUN_ID", raising=False)
    monkeypatch.setenv("CVPLATFORM_USER", "alice")


@pytest.fixture
def project_root(tmp_path: Path, template_db: Path, registry_env: None) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(template_db, root / "mlflow.db")
    return root


@pytest.fixture
def project(project_root: Path, model_bytes: bytes) -> Project:
    """A project whose gates passed, with a real training run in its embedded store."""
    return make_project(project_root, model_bytes)


@pytest.fixture
def failed_project(project_root: Path, model_bytes: bytes) -> Project:
    """A project whose must-pass gates failed."""
    return make_project(project_root, model_bytes, passed=False)


@pytest.fixture
def params():
    from cvplatform.config import Params

    return Params()


@pytest.fixture
def client(project_root: Path, params):
    from cvplatform.registry.client import RegistryClient

    return RegistryClient.from_params(params, project_root)


@pytest.fixture
def registered(project: Project, params):
    """Version 1 of 'cvplatform', registered by alice (gates passed)."""
    from cvplatform.registry import register_model

    return register_model(params, root=project.root)
