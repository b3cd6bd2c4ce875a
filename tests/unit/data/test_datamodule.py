"""ManifestDataModule: classes from the manifest, batches, determinism across workers, clear data errors."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from cvplatform.data.augment import load_recipe
from cvplatform.data.datamodule import ManifestDataModule
from cvplatform.data.manifest import read_manifest, write_manifest
from cvplatform.errors import DataError
from tests.fixtures.tiny_dataset import make_tiny_project

MANIFEST = "data/processed/manifest.parquet"


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return make_tiny_project(tmp_path_factory.mktemp("dm"), classes=("zebra", "apple", "mango"), per_class=10)


def _dm(root: Path, **kw) -> ManifestDataModule:
    args = {"root": root, "batch_size": 4, "num_workers": 0, "seed": 3}
    args.update(kw)
    return ManifestDataModule(MANIFEST, load_recipe(root / "configs/augment/default.yaml"), **args)


def test_classes_sorted_counts_and_batches(project):
    dm = _dm(project)
    dm.setup()
    assert dm.class_names == ["apple", "mango", "zebra"]
    c = dm.counts
    assert (c.train, c.val, c.test) == (18, 6, 6) and c.train_per_class == (6, 6, 6)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and set(y.tolist()) <= {0, 1, 2}
    # labels follow the sorted class names: every "apple" row maps to index 0
    ds = dm.datasets["val"]
    for path, target in zip(ds.paths, ds.targets, strict=True):
        assert dm.class_names[target] in path
    assert sum(len(b[1]) for b in dm.val_dataloader()) == 6


def _epoch(dm: ManifestDataModule, epoch: int) -> list[torch.Tensor]:
    dm.set_epoch(epoch)
    return [torch.cat([x.flatten(1), y[:, None].float()], 1) for x, y in dm.train_dataloader()]


def test_augmentation_and_order_depend_on_epoch_not_on_workers(project):
    a0 = _epoch(_dm(project), 0)
    b0 = _epoch(_dm(project), 0)
    w0 = _epoch(_dm(project, num_workers=2), 0)
    a1 = _epoch(_dm(project), 1)
    assert all(torch.equal(p, q) for p, q in zip(a0, b0, strict=True))
    assert all(torch.equal(p, q) for p, q in zip(a0, w0, strict=True))  # same with 2 worker processes
    assert not all(torch.equal(p, q) for p, q in zip(a0, a1, strict=True))


def test_resume_state_moves_to_next_epoch(project):
    dm = _dm(project)
    dm.setup()
    dm.set_epoch(4)
    fresh = _dm(project)
    fresh.setup()
    fresh.load_state_dict(dm.state_dict())
    assert fresh.datasets["train"].epoch == 5


def test_balanced_class_weights(tmp_path):
    root = make_tiny_project(tmp_path, classes=("a", "b"), per_class=10)
    df = read_manifest(root / MANIFEST)
    drop = df[(df.label == "b") & (df.split == "train")].index[:4]  # b: 2 train images, a: 6
    write_manifest(df.drop(index=drop), root / MANIFEST)
    w = _dm(root).balanced_class_weights()
    assert w == pytest.approx([8 / (2 * 6), 8 / (2 * 2)])


def _rewrite(root: Path, fn) -> None:
    df = read_manifest(root / MANIFEST)
    df = fn(df)
    if isinstance(df, pd.DataFrame) and all(c in df.columns for c in ("label", "sha256")):
        try:
            write_manifest(df, root / MANIFEST)
            return
        except DataError:
            pass
    df.to_parquet(root / MANIFEST)


@pytest.mark.parametrize(
    ("mutate", "needles"),
    [
        (lambda df: df.drop(columns=["split", "sha256"]), ["missing required column", "split", "sha256"]),
        (lambda df: df[df.split != "val"], ["split 'val' is empty", "ingest.split.val"]),
        (lambda df: df[df.split != "train"], ["split 'train' is empty"]),
        (lambda df: df.assign(split=df.split.where(df.index != 0, "holdout")), ["holdout", "unknown value"]),
        (lambda df: df[df.label == "a"], ["at least 2"]),
        (lambda df: df[~((df.label == "b") & (df.split == "train"))], ["['b']", "no image in the train split"]),
        (lambda df: df.assign(path=df.path.where(df.index != 0, "data/raw/a/missing.png")),
         ["do not exist", "data/raw/a/missing.png"]),
    ],
)
def test_bad_manifests_fail_in_setup(tmp_path, mutate, needles):
    root = make_tiny_project(tmp_path, classes=("a", "b"), per_class=5)
    _rewrite(root, mutate)
    with pytest.raises(DataError) as ei:
        _dm(root).setup()
    msg = str(ei.value)
    assert "manifest.parquet" in msg
    for needle in needles:
        assert needle in msg


def test_missing_manifest(tmp_path):
    with pytest.raises(DataError, match="cvplatform ingest"):
        ManifestDataModule(tmp_path / "none.parquet", load_recipe(
            Path(__file__).resolve().parents[3] / "configs/augment/default.yaml")).setup()
