"""The public suite runner that ``evaluate`` and ``export`` share: same scenarios, same pixels, every predictor."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from cvplatform.data.manifest import read_manifest
from cvplatform.errors import DataError
from cvplatform.evaluation import suite_runner
from cvplatform.evaluation.corruption_cache import CorruptionCache, open_cache
from cvplatform.evaluation.predictors import load_predictor
from cvplatform.evaluation.scenarios import load_suite
from cvplatform.evaluation.suite_runner import load_images, run_suite, select_split
from tests.fixtures.tiny_dataset import make_tiny_project

from .conftest import colour_model, contract, export_onnx

SUITE = {
    "name": "tiny",
    "scenarios": [
        {"name": "clean", "kind": "clean", "level": "must_pass", "min_accuracy": 0.9},
        {"kind": "corruption", "corruption": "gaussian_noise", "severities": [3]},
        {"name": "reds", "kind": "slice", "where": [{"column": "label", "value": "red"}]},
        {"name": "purple", "kind": "slice", "where": [{"column": "label", "value": "purple"}]},
    ],
}


@pytest.fixture()
def project(tmp_path):
    root = make_tiny_project(tmp_path / "project", per_class=6)
    (root / "suite.yaml").write_text(yaml.safe_dump(SUITE, sort_keys=False))
    export_onnx(colour_model(), root / "perfect.onnx", contract(16))
    export_onnx(colour_model(perm=(1, 0, 2)), root / "swapped.onnx", contract(16))
    return root


def _run(root, predictors, seed=7, cache=None, max_images=None):
    manifest = read_manifest(root / "data/processed/manifest.parquet")
    rows = select_split(manifest, "test", max_images, source="manifest", key="evaluate.split")
    data = load_images(rows, root, predictors[0], "test split")
    scenarios = load_suite(root / "suite.yaml").expand()
    return run_suite(predictors, data, suite_path=root / "suite.yaml", scenarios=scenarios, manifest=manifest,
                     root=root, seed=seed, batch_size=4, cache=cache), data


def test_every_predictor_on_every_scenario_in_suite_order(project):
    perfect = load_predictor("perfect.onnx", root=project)
    swapped = load_predictor("swapped.onnx", root=project)
    runs, data = _run(project, [perfect, swapped])
    assert [r.scenario.name for r in runs] == ["clean", "gaussian_noise_s3", "reds", "purple"]
    clean = runs[0]
    assert [lg.shape for lg in clean.logits] == [(len(data.ids), 3)] * 2
    assert (clean.logits[0].argmax(1) == clean.built.y).all()  # the perfect model on clean pixels
    red = 0  # CLASSES[0]
    reds = runs[2]
    assert len(reds.built.ids) > 0 and (reds.built.y == red).all()
    assert (reds.logits[1].argmax(1) == 1).all()  # the swapped model calls red "green"
    assert runs[3].built.note == "slice matched no image of the split" and runs[3].logits[0].shape == (0, 3)


def test_corrupted_pixels_are_shared_and_seeded(project):
    perfect = load_predictor("perfect.onnx", root=project)
    a, _ = _run(project, [perfect, perfect])
    b, _ = _run(project, [perfect], seed=7)
    c, _ = _run(project, [perfect], seed=8)
    noisy = 1
    np.testing.assert_array_equal(a[noisy].logits[0], a[noisy].logits[1])  # both predictors saw the same pixels
    np.testing.assert_array_equal(a[noisy].logits[0], b[noisy].logits[0])  # same seed, same corruption
    assert not np.array_equal(b[noisy].logits[0], c[noisy].logits[0])  # another seed, other noise
    np.testing.assert_array_equal(b[0].logits[0], c[0].logits[0])  # clean pixels do not depend on the seed


def test_empty_split_names_the_key(project):
    manifest = read_manifest(project / "data/processed/manifest.parquet")
    with pytest.raises(DataError, match=r"m.parquet: split 'nope' has no images .*evaluate.split"):
        select_split(manifest, "nope", None, source="m.parquet", key="evaluate.split")


def test_corrupted_pixels_are_reused_across_runs_and_identical(project, monkeypatch):
    perfect = load_predictor("perfect.onnx", root=project)
    plain, _ = _run(project, [perfect])
    first_cache = CorruptionCache(project / ".cvplatform/cache/corruptions")
    first, _ = _run(project, [perfect], cache=first_cache)
    assert (first_cache.hits, first_cache.misses) == (0, 1)  # one corruption scenario, stored
    assert len(list(first_cache.directory.glob("*.npy"))) == 1

    # a second run reads the stored pixels: the corruption code is not run at all
    def no_corruption(*args, **kwargs):
        raise AssertionError("the cached scenario was corrupted again")

    monkeypatch.setattr(suite_runner.BuiltScenario, "_corrupt", lambda self, rows, seed: (
        self.source.images[rows] if self.scenario.kind != "corruption" else no_corruption()))
    second_cache = open_cache(".cvplatform/cache/corruptions", project)
    second, _ = _run(project, [perfect], cache=second_cache)
    assert (second_cache.hits, second_cache.misses) == (1, 0)
    for a, b, c in zip(plain, first, second, strict=True):
        np.testing.assert_array_equal(a.logits[0], b.logits[0])
        np.testing.assert_array_equal(a.logits[0], c.logits[0])  # the same numbers with and without the cache
    monkeypatch.undo()

    # another seed, or another set of images, is another key
    other = CorruptionCache(first_cache.directory)
    _run(project, [perfect], seed=8, cache=other)
    _run(project, [perfect], cache=other, max_images=1)
    assert (other.hits, other.misses) == (0, 2) and len(list(other.directory.glob("*.npy"))) == 3


def test_a_damaged_or_unwritable_cache_never_changes_a_result(project, caplog):
    perfect = load_predictor("perfect.onnx", root=project)
    plain, _ = _run(project, [perfect])
    cache = CorruptionCache(project / "cache")
    _run(project, [perfect], cache=cache)
    (stored,) = cache.directory.glob("*.npy")
    stored.write_bytes(b"not a numpy file")
    again = CorruptionCache(cache.directory)
    runs, _ = _run(project, [perfect], cache=again)
    assert again.misses == 1 and "unreadable" in caplog.text and "recomputing" in caplog.text
    np.testing.assert_array_equal(runs[1].logits[0], plain[1].logits[0])
    assert np.load(stored).shape[0] == len(runs[1].built.ids)  # replaced by a good file

    blocked = project / "blocked"
    blocked.write_text("a file where the cache folder should be")
    nowhere = CorruptionCache(blocked / "corruptions")
    runs, _ = _run(project, [perfect], cache=nowhere)
    assert "cannot write" in caplog.text and "evaluate.corruption_cache: null" in caplog.text
    np.testing.assert_array_equal(runs[1].logits[0], plain[1].logits[0])
    assert open_cache(None, project) is None


def test_scenario_targets_convert_each_manifest_row_once(project):
    # a suite's scenarios on the same split share one conversion of its rows (the task counts its calls)
    from cvplatform.tasks.classification import ClassificationTask

    class Counting(ClassificationTask):
        calls = 0

        def target_of(self, row, class_index):
            Counting.calls += 1
            return super().target_of(row, class_index)

    perfect = load_predictor("perfect.onnx", root=project)
    runs, data = _run(project, [perfect])
    task = Counting()
    targets = [suite_runner.scenario_targets(task, r.built, list(perfect.class_names)) for r in runs]
    assert Counting.calls == len(data.ids)  # four scenarios, every row converted once
    for r, t in zip(runs, targets, strict=True):
        np.testing.assert_array_equal(t, r.built.y)  # classification's targets are the class indices
