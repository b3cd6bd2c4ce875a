"""Shared test fixtures: a throw-away project root and params built from the real models."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from cvplatform.config import Params, apply_overrides, load_model


def build_params(*overrides: str) -> Params:
    """``Params`` with ``key.path=value`` overrides applied (the same parser as ``--set``)."""
    return load_model(Params, apply_overrides({}, overrides, "test"), "test")


@pytest.fixture
def make_params() -> Callable[..., Params]:
    """``make_params("ingest.workers=1", "ingest.source=digits")`` -> validated ``Params``."""
    return build_params


@pytest.fixture
def project_root(tmp_path: Path) -> Path:
    """An empty project root for a stage to write data/ and artifacts/ into."""
    root = tmp_path / "project"
    root.mkdir()
    return root
