"""Training throughput: a Lightning epoch vs a plain PyTorch loop, same model/data/augmentations.

Both loops train the same architecture (``params.yaml`` -> ``train.model``) on
the same data pipeline (manifest -> albumentations recipe -> DataLoader, same
batch size and workers), with the same optimiser, loss and torchmetrics
accuracy/F1 updates. Lightning runs the project's real ``ClassifierModule``
(epoch-level logging, metric collections) with the project's
``EpochSeedCallback``; the plain loop is the minimal hand-written equivalent.

The machine is shared and noisy, so torch uses one intra-op thread by default
(``--threads 0`` for torch's choice: multi-threaded kernels on contended cores
make epoch times swing several-fold) and the two are measured *pairwise*: one
Lightning fit runs, and around each of its epochs one plain epoch runs (before
it on even epochs, after it on odd ones), so every pair sees the same machine
state. The first pair is a warm-up. Reported, in one run:

* samples/s of each (median epoch), the median of the per-pair time ratios
  ``lightning / plain`` (target <= 1.10) and the ratio of the medians;
* the same ratio in process CPU time (robust to other processes competing for
  the cores of a shared machine);
* the share of epoch time spent waiting for data (plain: time inside
  ``next(loader)``; Lightning: time between one batch's end hook and the next
  batch's start hook, which also includes Lightning's own per-batch overhead).

Data: scikit-learn's bundled digits (1,797 images, 8x8 upscaled to 32x32 RGB
PNGs) written to a temp folder; no ``dvc repro`` needed.

Usage:  .venv/bin/python benchmarks/train.py [--epochs 9] [--workers N] [--threads N] [--out benchmarks/results/train.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.fixtures.tiny_dataset import make_digits_project  # noqa: E402  (digits as PNGs + manifest)


def _datamodule(root: Path, params, workers: int):
    from cvplatform.data.augment import load_recipe
    from cvplatform.data.datamodule import ManifestDataModule

    tp = params.train
    dm = ManifestDataModule(params.project.manifest, load_recipe(REPO / tp.augment), root=root,
                            batch_size=tp.batch_size, num_workers=workers, seed=params.project.seed)
    dm.setup()
    return dm


class PlainLoop:
    """Hand-written training loop over its own data module and model copy."""

    def __init__(self, root: Path, params, workers: int) -> None:
        import torch
        from torchmetrics import MetricCollection
        from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

        from cvplatform.models import build_model

        tp = params.train
        self.dm = _datamodule(root, params, workers)
        k = self.dm.num_classes
        self.model = build_model(tp.model.arch, k, **tp.model.kwargs)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=tp.optimizer.lr,
                                     weight_decay=tp.optimizer.weight_decay)
        self.metrics = MetricCollection({"acc": MulticlassAccuracy(num_classes=k, average="micro"),
                                         "f1": MulticlassF1Score(num_classes=k, average="macro")})
        self.loader = self.dm.train_dataloader()

    def run_epoch(self, epoch: int) -> dict:
        import torch.nn.functional as F

        self.dm.set_epoch(epoch)
        self.model.train()
        wait, n = 0.0, 0
        t0, c0 = time.perf_counter(), time.process_time()
        it = iter(self.loader)
        while True:
            tw = time.perf_counter()
            try:
                x, y = next(it)
            except StopIteration:
                break
            wait += time.perf_counter() - tw
            logits = self.model(x)
            loss = F.cross_entropy(logits, y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.metrics.update(logits.detach(), y)
            n += x.shape[0]
        self.metrics.compute()
        self.metrics.reset()
        return {"seconds": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "samples": n,
                "data_wait_s": wait}


def run_pairs(root: Path, params, epochs: int, workers: int) -> tuple[list[dict], list[dict]]:
    """One Lightning fit of ``epochs`` epochs with a plain epoch next to each; returns both epoch lists."""
    import pytorch_lightning as pl
    import torch

    from cvplatform.data.datamodule import EpochSeedCallback
    from cvplatform.tasks.classification.module import ClassifierModule

    tp = params.train
    pl.seed_everything(params.project.seed, workers=True, verbose=False)
    torch.use_deterministic_algorithms(tp.deterministic)
    plain = PlainLoop(root, params, workers)
    dm = _datamodule(root, params, workers)
    plain_epochs: list[dict] = []

    class PairTimer(pl.Callback):
        def __init__(self) -> None:
            self.epochs: list[dict] = []

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            if trainer.current_epoch % 2 == 0:
                plain_epochs.append(plain.run_epoch(trainer.current_epoch))
            self.t0 = self.last = time.perf_counter()
            self.c0 = time.process_time()
            self.wait, self.n = 0.0, 0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.wait += time.perf_counter() - self.last
            self.n += batch[0].shape[0]

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.last = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            self.epochs.append({"seconds": time.perf_counter() - self.t0, "cpu_s": time.process_time() - self.c0,
                                "samples": self.n, "data_wait_s": self.wait})
            if trainer.current_epoch % 2 == 1:
                plain_epochs.append(plain.run_epoch(trainer.current_epoch))

    module = ClassifierModule(
        tp.model.arch, dict(tp.model.kwargs), dm.num_classes, dm.class_names, dm.recipe.to_metadata(),
        optimizer={"name": "adamw", "lr": tp.optimizer.lr, "weight_decay": tp.optimizer.weight_decay},
        scheduler={"name": "none"}, max_epochs=epochs,
    )
    timer = PairTimer()
    trainer = pl.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
        deterministic=tp.deterministic, callbacks=[EpochSeedCallback(params.project.seed), timer],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, datamodule=dm)
    return plain_epochs, timer.epochs


def summarise(epochs: list[dict]) -> dict:
    secs = [e["seconds"] for e in epochs]
    med = statistics.median(secs)
    return {
        "epochs_measured": len(epochs),
        "samples_per_epoch": epochs[0]["samples"],
        "median_epoch_s": round(med, 4),
        "samples_per_s": round(epochs[0]["samples"] / med, 1),
        "data_wait_share": round(sum(e["data_wait_s"] for e in epochs) / sum(secs), 4),
        "median_epoch_cpu_s": round(statistics.median(e["cpu_s"] for e in epochs), 4),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=9, help="epoch pairs (the first is a warm-up)")
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: train.num_workers)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (default 1: steady ratios on a shared machine; 0 = torch's choice)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "train.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import pytorch_lightning  # noqa: F401  (configures its loggers on import; quieten them after)
    import torch

    for name in ("pytorch_lightning", "lightning_fabric", "pytorch_lightning.utilities.rank_zero",
                 "lightning_fabric.utilities.seed"):
        logging.getLogger(name).setLevel(logging.ERROR)

    if args.threads:
        torch.set_num_threads(args.threads)
    from cvplatform.config import load_params

    params = load_params(REPO / "params.yaml")
    workers = params.train.num_workers if args.workers is None else args.workers
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        root = make_digits_project(Path(tmp))
        plain_epochs, light_epochs = run_pairs(root, params, args.epochs, workers)
    plain_epochs, light_epochs = plain_epochs[1:], light_epochs[1:]  # drop the warm-up pair
    ratios = [L["seconds"] / p["seconds"] for L, p in zip(light_epochs, plain_epochs, strict=True)]
    cpu_ratios = [L["cpu_s"] / p["cpu_s"] for L, p in zip(light_epochs, plain_epochs, strict=True)]
    plain, light = summarise(plain_epochs), summarise(light_epochs)
    result = {
        "benchmark": "train: Lightning epoch vs plain PyTorch loop (same model, data, augmentations)",
        "model": {"arch": params.train.model.arch, **params.train.model.kwargs},
        "batch_size": params.train.batch_size,
        "num_workers": workers,
        "plain": plain,
        "lightning": light,
        "lightning_over_plain_time": round(statistics.median(ratios), 4),
        "lightning_over_plain_time_of_medians": round(light["median_epoch_s"] / plain["median_epoch_s"], 4),
        "pair_ratios": [round(r, 4) for r in ratios],
        # CPU time of this process: less sensitive to other processes competing for the cores
        "lightning_over_plain_cpu_time": round(statistics.median(cpu_ratios), 4),
        "target_ratio_max": 1.10,
        "env": {"python": platform.python_version(), "torch": torch.__version__,
                "threads": torch.get_num_threads(), "platform": platform.platform()},
    }
    result["meets_target"] = result["lightning_over_plain_time"] <= result["target_ratio_max"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))  # noqa: T201 - a benchmark script reports on stdout
    print(f"wrote {args.out}")  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
