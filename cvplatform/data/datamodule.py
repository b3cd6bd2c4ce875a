"""The Lightning data module: manifest rows -> augmented, normalised tensor batches.

* Rows come from the manifest (``project.manifest``) and its ``split`` column;
  image paths are relative to the project root. Nothing re-scans folders.
* Class names and their order are fixed by the manifest, as the task reads it
  (``task.class_names``: classification's sorted unique labels, detection's sorted
  box classes). Index ``i`` of the model output is ``class_names[i]``; the list is
  saved with the model.
* Augmentations come from an albumentations recipe (:mod:`cvplatform.data.augment`),
  built with the task's ``albumentations_targets`` and applied by its
  ``transform_sample``: detection's boxes follow every flip, crop and the resize.
* **Determinism independent of workers.** Every sample's augmentation is seeded
  from ``(seed, epoch, index)``, and the training order from ``(seed, epoch)``;
  so results do not depend on ``num_workers`` or on which worker loads what, and
  a resumed run sees the same epochs as an uninterrupted one. The epoch is set
  by :class:`EpochSeedCallback` (and restored from checkpoints).

Everything is validated in :meth:`ManifestDataModule.setup`, which
:func:`cvplatform.train.run_train` calls *before* building the trainer: missing
columns, unknown split values, an empty train/val split, fewer than two
classes and missing image files all raise :class:`~cvplatform.errors.DataError`
naming the manifest and the fix.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from cvplatform.data.augment import AugmentRecipe, build_pipeline
from cvplatform.data.manifest import CORE_COLUMNS, SPLITS, read_manifest
from cvplatform.errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from cvplatform.tasks.base import Task

log = logging.getLogger(__name__)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of sample ``index`` in ``epoch`` (a 32-bit int).

    Example:
        >>> sample_seed(42, 0, 7) == sample_seed(42, 0, 7) != sample_seed(42, 1, 7)
        True
    """
    return int(np.random.SeedSequence([seed % 2**32, epoch, index]).generate_state(1)[0])


def read_rgb(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file as an RGB uint8 HxWx3 array (DataError if unreadable).

    Decoded by :func:`cvplatform.imageio.read_image`, the decoder evaluation and serving use.

    Example:
        >>> img = read_rgb("data/raw/3/abc.png")  # doctest: +SKIP
        >>> img.shape, img.dtype  # doctest: +SKIP
        ((32, 32, 3), dtype('uint8'))
    """
    from cvplatform.imageio import ImageDecodeError, read_image

    try:
        return read_image(path)
    except ImageDecodeError as exc:
        raise DataError(
            f"{path}: cannot read image (missing or corrupt: {exc.detail}). Re-run `cvplatform ingest` so the "
            "manifest and data/raw agree."
        ) from None


class ManifestDataset(Dataset):
    """Images + their task targets of one split, transformed by an albumentations pipeline.

    ``__getitem__`` returns ``(image CHW float32 tensor, target)``; the target is what the task's
    ``target_of`` gave (a class index for classification), moved with the image by the task's
    ``transform_sample`` (detection's boxes follow flips, crops and the resize; without a ``task``
    only the image is transformed). With
    ``seeded=True`` the pipeline is re-seeded per sample from
    ``(seed, epoch, index)``; set :attr:`epoch` before each epoch.
    """

    def __init__(
        self,
        paths: Sequence[str],
        targets: Sequence[Any],
        transform: Any,
        *,
        seed: int = 0,
        seeded: bool = True,
        task: Task | None = None,
    ) -> None:
        self.paths = list(paths)
        self.task = task
        self.targets = list(targets)
        self.transform = transform
        self.seed = int(seed)
        self.seeded = seeded
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any]:
        image = read_rgb(self.paths[index])
        if self.seeded:
            self.transform.set_random_seed(sample_seed(self.seed, self.epoch, index))
        if self.task is None:
            return self.transform(image=image)["image"], self.targets[index]
        return self.task.transform_sample(self.transform, image, self.targets[index])


Sized = Any  # anything with __len__ (the sampler's data source)


class EpochShuffleSampler(RandomSampler):
    """Shuffles with a permutation derived from ``(seed, epoch)`` only.

    A :class:`~torch.utils.data.RandomSampler` subclass, so Lightning replaces it
    with a shuffling ``DistributedSampler`` (seeded by ``PL_GLOBAL_SEED``) under DDP.
    """

    def __init__(self, data_source: Sized, seed: int = 0) -> None:
        super().__init__(data_source)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(sample_seed(self.seed, self.epoch, 2**32 - 1))
        yield from torch.randperm(len(self.data_source), generator=g).tolist()


def _worker_init(_: int) -> None:
    """Keep each DataLoader worker single-threaded (no oversubscription on small machines)."""
    import cv2

    cv2.setNumThreads(1)
    torch.set_num_threads(1)


@dataclass(frozen=True)
class SplitCounts:
    """Number of images per split (and per class within the train split)."""

    train: int
    val: int
    test: int
    train_per_class: tuple[int, ...]


class ManifestDataModule(pl.LightningDataModule):
    """LightningDataModule over the manifest's ``split`` column (train / val / test).

    Args:
        manifest: Manifest file (parquet or csv), absolute or relative to ``root``.
        recipe: Augmentation recipe (train pipeline for ``train``, eval for val/test).
        root: Project root that manifest ``path`` values are relative to (default cwd).
        batch_size: Training batch size.
        eval_batch_size: Validation/test batch size (default: ``batch_size``).
        num_workers: DataLoader worker processes (0 = load in the main process).
        seed: Base seed of shuffling and augmentation.
        pin_memory: Pin host memory (useful with CUDA).
        recipe_source: Recipe file name, for error messages.
        task: The project's task (:func:`cvplatform.tasks.get_task`; default classification): it
            turns a manifest row into a training target and collates batches.

    Example:
        >>> from cvplatform.data.augment import load_recipe
        >>> from cvplatform.data.datamodule import ManifestDataModule
        >>> dm = ManifestDataModule("data/processed/manifest.parquet",
        ...                         load_recipe("configs/augment/default.yaml"))  # doctest: +SKIP
        >>> dm.setup()  # doctest: +SKIP
        >>> dm.class_names, dm.counts.train  # doctest: +SKIP
        (['0', '1', ..., '9'], 1257)
    """

    def __init__(
        self,
        manifest: str | os.PathLike[str],
        recipe: AugmentRecipe,
        *,
        root: str | os.PathLike[str] | None = None,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        pin_memory: bool = False,
        recipe_source: str = "<recipe>",
        task: Task | None = None,
    ) -> None:
        super().__init__()
        from cvplatform.tasks import get_task

        self.task = task or get_task()
        self.root = Path(root or os.getcwd()).resolve()
        m = Path(manifest)
        self.manifest_path = m if m.is_absolute() else self.root / m
        self.recipe = recipe
        self.recipe_source = recipe_source
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_workers = int(num_workers)
        self.seed = int(seed)
        self.pin_memory = pin_memory
        self._epoch = 0
        self._frame: pd.DataFrame | None = None
        self.class_names: list[str] = []
        self.datasets: dict[str, ManifestDataset] = {}
        self._train_sampler: EpochShuffleSampler | None = None

    # ------------------------------------------------------------------ validation
    def _load(self) -> pd.DataFrame:
        df = read_manifest(self.manifest_path, required=CORE_COLUMNS)
        src = str(self.manifest_path)
        bad = sorted(set(df["split"].astype(str)) - set(SPLITS))
        if bad:
            raise DataError(
                f"{src}: column 'split' has unknown value(s) {bad}; allowed: {list(SPLITS)}. "
                "Re-run `cvplatform ingest` to recompute the splits."
            )
        df = df.assign(split=df["split"].astype(str))
        counts = {s: int((df["split"] == s).sum()) for s in SPLITS}
        for s in ("train", "val"):
            if counts[s] == 0:
                raise DataError(
                    f"{src}: split '{s}' is empty (rows per split: {counts}). Training needs images in train "
                    f"and val: set ingest.split.{s} > 0 in params.yaml and re-run `cvplatform ingest`, or add images."
                )
        self.class_names = self.task.class_names(df, self.root, src)  # the task's checks (classification: labels)
        df = df.assign(label=df["label"].astype(str))
        abs_paths = [str(self.root / p) for p in df["path"].astype(str)]
        missing = [p for p, a in zip(df["path"], abs_paths, strict=True) if not os.path.isfile(a)]
        if missing:
            shown = ", ".join(map(str, missing[:5])) + (" ..." if len(missing) > 5 else "")
            raise DataError(
                f"{src}: {len(missing)} image file(s) listed in the manifest do not exist under {self.root} "
                f"(e.g. {shown}). Pull the data (`dvc pull`) or re-run `cvplatform ingest`."
            )
        return df.assign(abs_path=abs_paths)

    def setup(self, stage: str | None = None) -> None:
        """Read and validate the manifest and build the datasets (idempotent)."""
        if self._frame is not None:
            return
        df = self._load()
        index = {c: i for i, c in enumerate(self.class_names)}
        self._frame = df
        targets = self.task.albumentations_targets()
        train_tf = build_pipeline(self.recipe, "train", seed=self.seed, source=self.recipe_source, targets=targets)
        eval_tf = build_pipeline(self.recipe, "eval", seed=self.seed, source=self.recipe_source, targets=targets)
        for split in SPLITS:
            part = df[df["split"] == split]
            self.datasets[split] = ManifestDataset(
                part["abs_path"].tolist(),
                [self.task.target_of(row, index) for row in part.to_dict("records")],
                train_tf if split == "train" else eval_tf,
                seed=self.seed,
                seeded=split == "train",
                task=self.task,
            )
        self.set_epoch(self._epoch)
        c = self.counts
        log.info(
            "data: %d classes, train=%d val=%d test=%d (manifest %s)",
            len(self.class_names), c.train, c.val, c.test, self.manifest_path,
        )

    # ------------------------------------------------------------------ facts
    @property
    def frame(self) -> pd.DataFrame:
        """The validated manifest rows (plus ``abs_path`` and integer ``target``)."""
        if self._frame is None:
            self.setup()
        assert self._frame is not None
        return self._frame

    @property
    def num_classes(self) -> int:
        """Number of classes (len of :attr:`class_names`)."""
        self.frame  # noqa: B018 - ensure setup
        return len(self.class_names)

    @property
    def counts(self) -> SplitCounts:
        """Images per split and per class in train (in :attr:`class_names` order)."""
        df = self.frame
        train = df[df["split"] == "train"]
        per_class = tuple(int((train["label"] == c).sum()) for c in self.class_names)
        return SplitCounts(
            train=len(train),
            val=int((df["split"] == "val").sum()),
            test=int((df["split"] == "test").sum()),
            train_per_class=per_class,
        )

    def balanced_class_weights(self) -> list[float]:
        """``n_train / (num_classes * count_c)`` per class (scikit-learn's "balanced").

        Example:
            >>> dm.balanced_class_weights()  # doctest: +SKIP
            [1.02, 0.98, ...]
        """
        per_class = self.counts.train_per_class
        total = sum(per_class)
        return [total / (len(per_class) * n) for n in per_class]

    # ------------------------------------------------------------------ epochs
    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that seeds augmentation and shuffling (called each epoch)."""
        self._epoch = int(epoch)
        if "train" in self.datasets:
            self.datasets["train"].epoch = self._epoch
        if self._train_sampler is not None:
            self._train_sampler.set_epoch(self._epoch)

    def state_dict(self) -> dict[str, Any]:
        # checkpoints are written at the end of an epoch: the next epoch is epoch + 1
        return {"epoch": self._epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.set_epoch(int(state_dict.get("epoch", -1)) + 1)

    # ------------------------------------------------------------------ loaders
    def _loader(self, split: str, batch_size: int, train: bool) -> DataLoader:
        self.setup()
        ds = self.datasets[split]
        if len(ds) == 0:
            raise DataError(
                f"{self.manifest_path}: split '{split}' is empty; add images to it and re-run `cvplatform ingest`."
            )
        kwargs: dict[str, Any] = {}
        if self.num_workers > 0:
            # forkserver, not fork: the trainer process has threads (MLflow, tqdm, Airflow's task
            # runner), and fork() with threads alive can deadlock a worker on a copied lock.
            kwargs.update(worker_init_fn=_worker_init, persistent_workers=False, multiprocessing_context="forkserver")
        sampler = None
        if train:
            sampler = EpochShuffleSampler(ds, seed=self.seed)
            sampler.set_epoch(self._epoch)
            self._train_sampler = sampler
        return DataLoader(
            ds,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            collate_fn=self.task.collate,
            # a trailing batch of one sample breaks BatchNorm in training; drop only that case
            drop_last=train and len(ds) > batch_size and len(ds) % batch_size == 1,
            **kwargs,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, train=False)


class EpochSeedCallback(pl.Callback):
    """Makes every epoch's randomness a function of ``(seed, epoch)`` only.

    * tells the data module which epoch starts (augmentation and shuffling seeds);
    * with ``seed`` set, re-seeds torch's global generator (dropout & co) at the
      first batch of each epoch, from ``(seed, epoch, rank)``.

    So an epoch computes the same thing whether the run was interrupted before it
    or not: a resumed run matches an uninterrupted one (given the checkpointed
    weights, optimiser and scheduler states).
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dm = trainer.datamodule
        if dm is not None and hasattr(dm, "set_epoch"):
            dm.set_epoch(trainer.current_epoch)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # batch 0 comes after the DataLoader iterator exists, in fresh and resumed runs alike
        if self.seed is not None and batch_idx == 0:
            torch.manual_seed(sample_seed(self.seed, trainer.current_epoch, 2**32 - 2 - trainer.global_rank))


__all__ = [
    "EpochSeedCallback",
    "EpochShuffleSampler",
    "ManifestDataModule",
    "ManifestDataset",
    "SplitCounts",
    "read_rgb",
    "sample_seed",
]
