"""The champion reference: the registry champion's version and sha256, rewritten only when it changed."""

from __future__ import annotations

import json

from cvplatform.config import load_params
from cvplatform.evaluation.champion import CHAMPION_REF, describe, write_champion_ref
from tests.fixtures.tiny_dataset import make_tiny_project

from .conftest import colour_model, contract, export_onnx, register_onnx


def test_written_only_when_the_champion_changes(tmp_path):
    root = make_tiny_project(tmp_path / "project", per_class=2)
    params = load_params(root / "params.yaml")
    path, changed = write_champion_ref(params, root)
    assert changed and path == root / CHAMPION_REF
    ref = json.loads(path.read_text())
    assert ref == {"schema_version": 1, "model": "cvplatform", "alias": "champion", "compare": True,
                   "version": None, "sha256": None}
    assert "does not exist yet" in describe(ref)
    mtime = path.stat().st_mtime_ns
    assert write_champion_ref(params, root) == (path, False) and path.stat().st_mtime_ns == mtime

    onnx = export_onnx(colour_model(), root / "m.onnx", contract(16))
    version = register_onnx(root, onnx)
    path, changed = write_champion_ref(params, root)
    ref = json.loads(path.read_text())
    assert changed and ref["version"] == version and len(ref["sha256"]) == 64
    assert f"version {version}" in describe(ref)
    assert write_champion_ref(params, root)[1] is False

    off = load_params(root / "params.yaml", ["evaluate.compare_champion=false"])
    path, changed = write_champion_ref(off, root)
    assert changed and json.loads(path.read_text())["compare"] is False
