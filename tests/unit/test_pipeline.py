"""DVC-from-code helpers: overrides written into params.yaml like `dvc exp run -S`."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cvplatform.config import load_params
from cvplatform.errors import ConfigError
from cvplatform.pipeline import PipelineError, apply_params_overrides, run_dvc

REPO = Path(__file__).resolve().parents[2]


def test_overrides_are_written_validated_and_keep_comments(tmp_path):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    changed = apply_params_overrides(tmp_path, ["ingest.workers=1", "ingest.source=shapes", "ingest.min_side=8"])
    assert changed == ["ingest.workers=1", "ingest.source=shapes"]  # min_side already 8
    p = load_params(tmp_path / "params.yaml")
    assert p.ingest.workers == 1 and p.ingest.source == "shapes"
    text = (tmp_path / "params.yaml").read_text()
    assert "# (int) decode processes" in text  # comments survive


def test_invalid_override_writes_nothing(tmp_path):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    before = (tmp_path / "params.yaml").read_bytes()
    with pytest.raises(ConfigError, match="ingest.workers"):
        apply_params_overrides(tmp_path, ["ingest.source=shapes", "ingest.workers=many"])
    assert (tmp_path / "params.yaml").read_bytes() == before


def test_failed_dvc_command_raises_with_output(tmp_path):
    with pytest.raises(PipelineError, match=r"dvc repro nope.*failed"):
        run_dvc(["repro", "nope"], tmp_path)
