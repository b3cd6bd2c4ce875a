"""Replay inputs: held-out manifest images, clean and deterministically corrupted, with labels."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from cvplatform.errors import DataError
from cvplatform.serving.replay import load_items, replay
from tests.fixtures.tiny_dataset import make_tiny_project


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return make_tiny_project(tmp_path_factory.mktemp("replay"), per_class=10, size=16)


def test_clean_and_corrupted_items_with_labels(project):
    clean = load_items("data/processed/manifest.parquet", split="test", root=project)
    assert len(clean) == 6 and {i.label for i in clean} == {"red", "green", "blue"}
    assert all(i.corruption is None for i in clean)
    items = load_items("data/processed/manifest.parquet", split="test", root=project, corrupt=1.0, seed=3)
    corrupted = [i for i in items if i.corruption]
    assert len(items) == 12 and len(corrupted) == 6
    by_id = {i.id: i for i in clean}
    for c in corrupted:
        sha, name = c.id.split(":")
        assert c.label == by_id[sha].label and c.corruption == name
        a = np.asarray(Image.open(io.BytesIO(c.data)).convert("RGB"))
        b = np.asarray(Image.open(io.BytesIO(by_id[sha].data)).convert("RGB"))
        assert a.shape == b.shape and not (a == b).all()
    again = load_items("data/processed/manifest.parquet", split="test", root=project, corrupt=1.0, seed=3)
    assert [i.data for i in again] == [i.data for i in items]  # deterministic


def test_bad_inputs(project):
    with pytest.raises(DataError, match="no images"):
        load_items(project / "data/processed/manifest.parquet", split="nope")
    with pytest.raises(DataError, match="manifest not found"):
        load_items(project / "missing.parquet")
    items = load_items(project / "data/processed/manifest.parquet", root=project)
    with pytest.raises(DataError, match="never end"):
        replay("http://127.0.0.1:9", items)
    with pytest.raises(DataError, match="nothing to send"):
        replay("http://127.0.0.1:9", [], requests=1)


def test_unreachable_server_counts_transport_failures(project):
    from cvplatform.serving.local import free_port

    items = load_items(project / "data/processed/manifest.parquet", root=project)
    rep = replay(f"http://127.0.0.1:{free_port()}", items, requests=4, concurrency=2, timeout_s=2)
    assert rep.sent == 4 and rep.failures == 4 and rep.transport_errors == 4 and rep.ok == 0
