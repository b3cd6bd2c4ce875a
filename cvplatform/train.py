"""The training stage: ``run_train(params) -> TrainResult`` (``cvplatform train [--resume]``).

What it does, in order:

1. **Validates everything before training starts**: architecture name and
   arguments, the augmentation recipe, the manifest (columns, splits, files,
   classes), ``train.num_classes`` against the manifest, explicit class weights,
   and, with ``resume``, the last checkpoint (loaded with ``weights_only=True``)
   and the MLflow run it continues.
2. Seeds everything (``pl.seed_everything(seed, workers=True)``, deterministic
   algorithms, per-sample augmentation seeds) so two CPU runs with the same seed,
   data and params give identical metrics.
3. Trains with Lightning: best checkpoint on ``train.monitor`` / ``train.mode``
   and early stopping after ``train.patience`` epochs without improvement.
4. Tracks the run in MLflow (params, per-epoch metrics with ``step = epoch``,
   lineage tags, curves PNG, the best checkpoint as artifact); see
   :mod:`cvplatform.tracking`. Under DDP only global rank 0 talks to MLflow and
   writes files.

Outputs under ``artifacts/train/``:

=====================  ===============================================================
``best.ckpt``          best epoch's checkpoint (load with ``cvplatform.models.checkpoint``)
``last.ckpt``          latest epoch's checkpoint (``--resume`` continues from it)
``metrics.json``       best validation metrics (``dvc metrics show``)
``plots/curves.csv``   one row per epoch: epoch, lr, train/val loss, acc, f1 (``dvc plots``)
``plots/curves.png``   the same as a picture (also logged to MLflow)
``state.json``         MLflow run id, epochs completed, status (updated every epoch)
``summary.json``       the :class:`TrainResult`
=====================  ===============================================================

**Resume.** Every epoch ends with: record the epoch's metrics in the checkpoint
state -> save ``last.ckpt`` (atomically) -> log them to MLflow and update
``state.json``. ``--resume`` restores ``last.ckpt`` and logs to MLflow only the
epochs the run does not have yet, so after a crash at any point each epoch's
metrics are in the run exactly once.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from cvplatform.config import Params, TrainParams, params_hash
from cvplatform.errors import ConfigError, CVPlatformError, ModelError
from cvplatform.stage import StageResult
from cvplatform.utils.io import ProjectPaths, write_json

if TYPE_CHECKING:  # pragma: no cover
    import pytorch_lightning as pl

    from cvplatform.tasks.base import Task
    from cvplatform.tracking import TrackingRun

log = logging.getLogger(__name__)

BEST_NAME = "best"
LAST_NAME = "last"
#: Columns of ``plots/curves.csv`` (and keys of each epoch record) for classification: :func:`curve_columns`.
CURVE_COLUMNS = ("epoch", "lr", "train_loss", "train_acc", "train_f1", "val_loss", "val_acc", "val_f1")
#: ``metrics.json`` names of the validation metrics that have a longer one (others drop their ``val_`` prefix).
_METRIC_NAMES = {"val_acc": "accuracy", "val_f1": "f1", "val_loss": "loss"}
_OUTPUTS = ("best.ckpt", "last.ckpt", "state.json", "metrics.json", "summary.json", "plots", "params.resolved.yaml")


@dataclass
class TrainResult(StageResult):
    """What ``run_train`` returns (and writes to ``artifacts/train/summary.json``)."""

    stage: ClassVar[str] = "train"
    summary_model: ClassVar[str | None] = "TrainSummary"

    run_id: str | None
    """MLflow run id (None on non-zero DDP ranks)."""
    experiment_id: str | None
    tracking_uri: str | None
    best_checkpoint: str | None
    """Path of ``best.ckpt`` (absolute)."""
    last_checkpoint: str | None
    best_epoch: int
    """0-based epoch of the best checkpoint."""
    epochs_completed: int
    max_epochs: int
    stopped_early: bool
    resumed: bool
    monitor: str
    best_score: float | None
    best_metrics: dict[str, float]
    """Validation (and test, if run) metrics of the best epoch."""
    arch: str
    arch_kwargs: dict[str, Any]
    num_classes: int
    class_names: list[str]
    data_version: str | None
    samples: dict[str, int]
    seed: int
    metrics_path: str | None = None
    curves_path: str | None = None
    duration_s: float = 0.0
    rank: int = 0
    world_size: int = 1
    """Training processes (DDP) that took part."""
    extra: dict[str, Any] = field(default_factory=dict)

    def lines(self) -> list[str]:
        if self.rank != 0:
            return [f"train: rank {self.rank} finished"]
        m = self.best_metrics
        shown = ", ".join(f"{k}={v:.4f}" for k, v in sorted(m.items()))
        return [
            f"train: {self.arch} on {self.num_classes} classes "
            f"(train={self.samples.get('train', 0)}, val={self.samples.get('val', 0)}), seed {self.seed}",
            f"  epochs: {self.epochs_completed}/{self.max_epochs}"
            + (" (stopped early)" if self.stopped_early else "")
            + (" (resumed)" if self.resumed else ""),
            f"  best epoch {self.best_epoch}: {shown}",
            f"  best checkpoint: {self.best_checkpoint}",
            f"  mlflow run: {self.run_id} ({self.tracking_uri})",
            f"  time: {self.duration_s:.1f}s",
        ]


# --------------------------------------------------------------------------- helpers
def _calibrate(best_path: Path, loaded: Any, dm: Any) -> float | None:
    """Fit the task's calibration (``Task.calibrate``) on the best checkpoint's validation outputs and
    record its temperature there; ``None`` when the task has none or there are no validation images."""
    import numpy as np
    import torch

    from cvplatform.models.checkpoint import set_temperature

    task = dm.task
    if not task.calibration:
        log.info("train: the %s task has no calibration step", task.name)
        return None
    outputs, targets = [], []
    with torch.inference_mode():
        for x, y in dm.val_dataloader():
            outputs.append(loaded.model(x).float().cpu().numpy())
            targets.append(y)
    if not outputs:
        log.warning("train: no validation images, the model is not calibrated")
        return None
    # one graph output (as export and evaluation assume): the network's tensor under the task's name
    z = np.concatenate(outputs)
    fit = task.calibrate({task.output_names[0]: z}, targets)
    if fit is None:
        return None
    t = float(fit["temperature"])
    set_temperature(best_path, t)
    log.info("train: calibrated (%s) on %d validation images: %s", task.calibration, len(z),
             ", ".join(f"{k} {v:.3f}" for k, v in fit.items()))
    return t


def _interactive() -> bool:
    """stderr is a terminal (Lightning's progress bar is drawn only there; logs get one line per epoch)."""
    import sys

    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _env_is_global_zero() -> bool:
    """Rank zero according to the launcher's environment (before the trainer exists)."""
    for var in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK"):
        if int(os.environ.get(var, "0") or 0) != 0:
            return False
    return True


def _clean_outputs(out: Path) -> None:
    for name in _OUTPUTS:
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    for p in out.glob("*.ckpt"):
        p.unlink()


def _read_state(out: Path) -> dict[str, Any]:
    import json

    p = out / "state.json"
    if not p.is_file():
        return {}
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def curve_columns(task: Task) -> tuple[str, ...]:
    """The per-epoch record of ``task``: ``epoch``, ``lr``, then for train and val the loss and every metric the
    task's ``monitor`` names (:data:`CURVE_COLUMNS` for classification; detection's ``*_map``, ``*_map50``).

    Example:
        >>> from cvplatform.tasks import get_task
        >>> curve_columns(get_task("classification")) == CURVE_COLUMNS
        True
    """
    names = [m[len("val_"):] for m in task.monitor.metrics if m.startswith("val_") and m != "val_loss"]
    return ("epoch", "lr", *(f"{stage}_{n}" for stage in ("train", "val") for n in ("loss", *names)))


def _write_curves(history: list[dict[str, Any]], path: Path, columns: tuple[str, ...]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        for rec in history:
            w.writerow({k: ("" if rec.get(k) is None else rec.get(k)) for k in columns})
    os.replace(tmp, path)
    return path


def _atomic_checkpoint_io() -> Any:
    """A TorchCheckpointIO that writes via temp file + rename and always loads with weights_only=True."""
    from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

    class AtomicCheckpointIO(TorchCheckpointIO):
        def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
            import torch

            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            torch.save(checkpoint, tmp)
            os.replace(tmp, path)

        def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> Any:
            from cvplatform.models.checkpoint import read_checkpoint

            return read_checkpoint(path, map_location=map_location or "cpu")

    return AtomicCheckpointIO()


def _epoch_recorder_cls() -> type:
    import pytorch_lightning as pl
    import torch

    class EpochRecorder(pl.Callback):
        """Per-epoch metrics -> checkpoint state -> MLflow (once) + curves.csv + state.json.

        Runs ``on_train_epoch_end`` *before* ModelCheckpoint (a non-monitoring
        callback), so the epoch's record is inside ``last.ckpt``; logging to
        MLflow happens after the checkpoint is on disk (next epoch start / train
        end), and on resume only the epochs MLflow lacks are logged.
        """

        def __init__(self, run: TrackingRun | None, out: Path, state: dict[str, Any],
                     columns: tuple[str, ...] = CURVE_COLUMNS) -> None:
            self.run = run
            self.out = out
            self.state = state
            self.columns = columns
            self.metrics = columns[1:]  # lr and the task's logged metrics
            self.history: list[dict[str, Any]] = []
            self._logged: dict[str, set[int]] = {k: set() for k in self.metrics}
            self._lr: float | None = None

        @property
        def state_key(self) -> str:
            return "cvplatform.EpochRecorder"

        def state_dict(self) -> dict[str, Any]:
            return {"history": [dict(r) for r in self.history], "run_id": self.run.run_id if self.run else None}

        def load_state_dict(self, state_dict: dict[str, Any]) -> None:
            self.history = [dict(r) for r in state_dict.get("history", [])]

        def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            if self.run is not None and trainer.is_global_zero and self.history:
                # resumed: find what the run already has, then log what it lacks
                self._logged = self.run.logged_steps(self.metrics)
                self.flush(trainer)

        def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            self.flush(trainer)
            opt = trainer.optimizers[0] if trainer.optimizers else None
            self._lr = float(opt.param_groups[0]["lr"]) if opt is not None else None

        def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            epoch = int(trainer.current_epoch)
            rec: dict[str, Any] = {"epoch": epoch, "lr": self._lr}
            for k in self.metrics[1:]:
                v = trainer.callback_metrics.get(k)
                if isinstance(v, torch.Tensor):
                    rec[k] = float(v.detach().cpu())
            self.history = [r for r in self.history if int(r["epoch"]) != epoch] + [rec]
            if trainer.is_global_zero:  # one line per epoch: what an Airflow task log or CI shows
                shown = "  ".join(f"{k} {rec[k]:.4f}" for k in self.metrics[1:] if rec.get(k) is not None)
                log.info("train: epoch %d/%d  %s", epoch + 1, trainer.max_epochs or 0, shown)

        def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            self.flush(trainer)

        def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
            # only what is already in last.ckpt may be logged (exactly-once on resume)
            saved = _saved_epochs(self.out / f"{LAST_NAME}.ckpt")
            with contextlib.suppress(Exception):  # the original exception is what matters
                self.flush(trainer, upto=saved)

        def flush(self, trainer: pl.Trainer, upto: int | None = None) -> None:
            if not trainer.is_global_zero:
                return
            recs = [r for r in self.history if upto is None or int(r["epoch"]) <= upto]
            if self.run is not None:
                for rec in recs:
                    e = int(rec["epoch"])
                    todo = {k: rec.get(k) for k in self.metrics if e not in self._logged.get(k, set())}
                    todo = {k: v for k, v in todo.items() if v is not None}
                    if todo:
                        self.run.log_epoch(e, todo)
                        for k in todo:
                            self._logged.setdefault(k, set()).add(e)
            _write_curves(recs, self.out / "plots" / "curves.csv", self.columns)
            self.state.update(epochs_completed=len(recs), last_epoch=recs[-1] if recs else None)
            write_json(self.out / "state.json", self.state)

    return EpochRecorder


def _saved_epochs(path: Path) -> int | None:
    """Last epoch recorded in a checkpoint, or None."""
    if not path.is_file():
        return None
    try:
        from cvplatform.models.checkpoint import read_checkpoint

        return int(read_checkpoint(path).get("epoch", -1))
    except CVPlatformError:
        return None


def _best_from_history(history: list[dict[str, Any]], monitor: str, mode: str) -> dict[str, Any] | None:
    best = None
    for rec in history:
        v = rec.get(monitor)
        if v is None:
            continue
        if best is None or (v > best[monitor] if mode == "max" else v < best[monitor]):
            best = rec
    return best


# --------------------------------------------------------------------------- the stage
# --------------------------------------------------------------------------- the stage's steps
@dataclass
class _Data:
    """The checked training inputs: the data module, its classes and the resolved model/recipe settings."""

    dm: Any
    """The :class:`~cvplatform.data.datamodule.ManifestDataModule` (set up)."""
    class_names: list[str]
    class_weights: list[float] | None
    recipe: Any
    recipe_path: Path
    arch_kwargs: dict[str, Any]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _prepare_data(params: Params, paths: ProjectPaths, seed: int) -> _Data:
    """Resolve the architecture and recipe (cheap checks first), set up the data module, check the classes.

    Raises:
        ConfigError: bad recipe, a class count or class weights that do not match the manifest, an empty test
            split with ``train.run_test``. ModelError: unknown architecture or arguments. DataError: bad manifest.
    """
    import torch

    from cvplatform.data.augment import load_recipe, resolve_recipe_path
    from cvplatform.data.datamodule import ManifestDataModule
    from cvplatform.models import resolve_model_kwargs
    from cvplatform.tasks import get_task

    tp = params.train
    arch_kwargs = resolve_model_kwargs(tp.model.arch, **dict(tp.model.kwargs))
    recipe_path = resolve_recipe_path(tp.augment, paths.root)
    recipe = load_recipe(recipe_path)
    accel = str(tp.accelerator).lower()
    pin = accel in ("gpu", "cuda") or (accel == "auto" and torch.cuda.is_available())
    dm = ManifestDataModule(
        params.project.manifest, recipe, root=paths.root, batch_size=tp.batch_size,
        eval_batch_size=tp.eval_batch_size, num_workers=tp.num_workers, seed=seed, pin_memory=pin,
        recipe_source=str(recipe_path), task=get_task(params.project.task),
    )
    dm.setup()
    class_names = list(dm.class_names)
    num_classes = len(class_names)
    if tp.num_classes is not None and tp.num_classes != num_classes:
        raise ConfigError(
            f"train.num_classes is {tp.num_classes} but the manifest {dm.manifest_path} has {num_classes} "
            f"classes {class_names}. Set train.num_classes: {num_classes} (or null to derive it from the manifest)."
        )
    if tp.run_test and dm.counts.test == 0:
        raise ConfigError(
            f"train.run_test is true but the test split of {dm.manifest_path} is empty. "
            "Set train.run_test: false or add test images."
        )
    return _Data(dm, class_names, _class_weights(tp, dm, class_names), recipe, recipe_path, arch_kwargs)


def _class_weights(tp: TrainParams, dm: Any, class_names: list[str]) -> list[float] | None:
    """``train.loss.class_weights`` resolved: None, balanced from the train split, or the explicit list (checked)."""
    cw = tp.loss.class_weights
    if cw == "none":
        return None
    if cw == "balanced":
        return dm.balanced_class_weights()
    if len(cw) != len(class_names):
        raise ConfigError(
            f"train.loss.class_weights lists {len(cw)} weights but the manifest has {len(class_names)} classes "
            f"{class_names}; give one weight per class in that (sorted) order, or use 'balanced'."
        )
    return [float(w) for w in cw]


def _resume_state(out: Path, tp: TrainParams, class_names: list[str]) -> dict[str, Any]:
    """What an interrupted run left (state.json, the last checkpoint's run id), checked against params.

    Raises:
        ModelError: no last checkpoint, or one trained with another architecture or classes.
    """
    from cvplatform.models.checkpoint import read_checkpoint

    last_ckpt = out / f"{LAST_NAME}.ckpt"
    if not last_ckpt.is_file():
        raise ModelError(
            f"{last_ckpt}: nothing to resume (no last checkpoint). Run `cvplatform train` without --resume."
        )
    ck = read_checkpoint(last_ckpt)
    hp = ck.get("hyper_parameters") or {}
    if hp.get("arch") != tp.model.arch or list(hp.get("class_names", [])) != class_names:
        raise ModelError(
            f"{last_ckpt}: was trained with arch {hp.get('arch')!r} on classes {hp.get('class_names')}, "
            f"but params/manifest now say {tp.model.arch!r} on {class_names}. Train from scratch without --resume."
        )
    prior_state = _read_state(out)
    if not prior_state.get("run_id"):
        rec_state = (ck.get("callbacks") or {}).get("cvplatform.EpochRecorder") or {}
        prior_state["run_id"] = rec_state.get("run_id")
    return prior_state


@dataclass
class _Tracking:
    """The MLflow run (rank 0 only; None elsewhere), the run's state file content and the lineage."""

    run: Any
    state: dict[str, Any]
    data_version: Any
    samples: dict[str, int]
    params_hash: str


def _run_params(tp: TrainParams, data: _Data, seed: int, dv: Any) -> dict[str, str]:
    """The MLflow params of the run (flattened ``train`` section plus data facts)."""
    from cvplatform.tracking import flatten_params

    counts = data.dm.counts
    return {
        **flatten_params({"train": tp.model_dump(mode="json")}),
        "seed": str(seed),
        "data.version": dv.md5,
        "data.num_classes": str(data.num_classes),
        "data.train": str(counts.train),
        "data.val": str(counts.val),
        "data.test": str(counts.test),
        "model.arch_kwargs": str(data.arch_kwargs),
    }


def _open_run(params: Params, paths: ProjectPaths, out: Path, data: _Data, seed: int, dv: Any, phash: str,
              prior_state: dict[str, Any] | None) -> Any:
    """Start the MLflow run with its lineage tags and params, or re-open the interrupted one (``prior_state``)."""
    from cvplatform.tracking import RetryPolicy, TrackingRun, airflow_run_id, environment_info, run_overrides
    from cvplatform.utils.io import git_commit

    tp = params.train
    retry = RetryPolicy.from_params(params.registry.retry)
    run_params = _run_params(tp, data, seed, dv)
    if prior_state is not None:
        run_id = prior_state.get("run_id")
        if not run_id:
            raise ModelError(
                f"{out / 'state.json'}: no MLflow run id to continue (file missing and none in "
                f"{out / f'{LAST_NAME}.ckpt'}). Train from scratch without --resume."
            )
        run = TrackingRun.resume(paths.root, str(run_id), retry)
        run.check_params(run_params, "params.yaml")
        run.mark_running()
        return run
    _clean_outputs(out)
    commit = git_commit(paths.root)
    tags = {
        "stage": "train", "git_commit": commit, "mlflow.source.git.commit": commit, "data_version": dv.md5,
        "data_version_source": dv.source, "manifest": str(data.dm.manifest_path), "params_hash": phash,
        "model_arch": tp.model.arch, "airflow_run_id": airflow_run_id(), "run_overrides": json.dumps(run_overrides()),
        **environment_info(),
    }
    run = TrackingRun.start(paths.root, tp.experiment, tp.run_name or f"train-{tp.model.arch}-seed{seed}", tags,
                            retry=retry)
    run.log_params(run_params)
    return run


def _start_tracking(params: Params, paths: ProjectPaths, out: Path, data: _Data, seed: int, resume: bool,
                    prior_state: dict[str, Any], is_zero: bool) -> _Tracking:
    """On rank 0: open the MLflow run, write state.json and params.resolved.yaml. Elsewhere: only the lineage."""
    import yaml

    from cvplatform.tracking import data_version

    tp = params.train
    dv = data_version(data.dm.manifest_path, paths.root)
    counts = data.dm.counts
    tracking = _Tracking(None, {}, dv, {"train": counts.train, "val": counts.val, "test": counts.test},
                         params_hash(tp))
    if not is_zero:
        return tracking
    out.mkdir(parents=True, exist_ok=True)
    run = _open_run(params, paths, out, data, seed, dv, tracking.params_hash, prior_state if resume else None)
    tracking.run = run
    tracking.state = {
        "run_id": run.run_id, "experiment_id": run.experiment_id, "tracking_uri": run.tracking_uri,
        "params_hash": tracking.params_hash, "status": "running", "max_epochs": tp.epochs,
        "epochs_completed": int(prior_state.get("epochs_completed", 0)) if resume else 0, "resumed": bool(resume),
    }
    write_json(out / "state.json", tracking.state)
    (out / "params.resolved.yaml").write_text(
        yaml.safe_dump(params.model_dump(mode="json", by_alias=True), sort_keys=False), encoding="utf-8"
    )
    return tracking


def _build_module(params: Params, data: _Data) -> Any:
    """The LightningModule of the project's task with the configured architecture, loss and optimisation."""
    from cvplatform.tasks import get_task

    tp = params.train
    task = get_task(params.project.task)
    return task.build_module(
        **task.module_options(tp), arch=tp.model.arch, arch_kwargs=data.arch_kwargs, num_classes=data.num_classes,
        class_names=data.class_names, preprocess=data.recipe.to_metadata(),
        optimizer=tp.optimizer.model_dump(mode="json"), scheduler=tp.scheduler.model_dump(mode="json"),
        label_smoothing=tp.loss.label_smoothing, class_weights=data.class_weights, max_epochs=tp.epochs,
    )


@dataclass
class _Fit:
    trainer: Any
    checkpoint: Any
    """The ModelCheckpoint callback (``best_model_path``)."""
    early: Any
    """The EarlyStopping callback, or None."""
    recorder: Any
    """The epoch recorder (``history``)."""


def _build_trainer(tp: TrainParams, out: Path, seed: int, tracking: _Tracking, is_zero: bool,
                   columns: tuple[str, ...] = CURVE_COLUMNS) -> _Fit:
    """The Lightning trainer with its callbacks (epoch seeds, the epoch recorder, checkpoints, early stopping).

    Raises:
        ConfigError: Lightning rejects accelerator / devices / strategy / precision.
    """
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint

    from cvplatform.data.datamodule import EpochSeedCallback

    ckpt_cb = ModelCheckpoint(
        dirpath=out, filename=BEST_NAME, monitor=tp.monitor, mode=tp.mode, save_top_k=1, save_last=True,
        save_on_train_epoch_end=True, enable_version_counter=False, auto_insert_metric_name=False,
    )
    recorder = _epoch_recorder_cls()(tracking.run, out, tracking.state, columns)
    callbacks: list[pl.Callback] = [EpochSeedCallback(seed), recorder, ckpt_cb]
    early = None
    if tp.patience is not None:
        early = EarlyStopping(monitor=tp.monitor, mode=tp.mode, patience=tp.patience, min_delta=tp.min_delta,
                              check_on_train_epoch_end=True)
        callbacks.append(early)
    trainer_kwargs: dict[str, Any] = {
        "max_epochs": tp.epochs, "accelerator": tp.accelerator, "devices": tp.devices, "strategy": tp.strategy,
        "num_nodes": tp.num_nodes, "precision": tp.precision, "deterministic": tp.deterministic, "logger": False,
        "callbacks": callbacks,
        "enable_progress_bar": tp.progress_bar and _interactive(),  # bars garble non-terminal logs
        "enable_model_summary": is_zero, "default_root_dir": str(out), "num_sanity_val_steps": 0,
        "plugins": [_atomic_checkpoint_io()],
    }
    if tp.limit_train_batches is not None:
        trainer_kwargs["limit_train_batches"] = tp.limit_train_batches
    if tp.limit_val_batches is not None:
        trainer_kwargs["limit_val_batches"] = tp.limit_val_batches
    try:
        trainer = pl.Trainer(**trainer_kwargs)
    except Exception as exc:  # MisconfigurationException & co: a bad accelerator/devices/strategy value
        raise ConfigError(
            f"train.accelerator/devices/strategy/precision rejected by Lightning: {exc}. "
            "Fix these keys in params.yaml (e.g. accelerator: cpu, devices: 1, strategy: auto)."
        ) from None
    return _Fit(trainer, ckpt_cb, early, recorder)


def _fit(fit: _Fit, module: Any, data: _Data, tp: TrainParams, out: Path, tracking: _Tracking,
         resume: bool) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Train (and test the best checkpoint with ``train.run_test``); ``(history, test metrics)``.

    On any failure the MLflow run is marked FAILED (KILLED on Ctrl-C) and state.json says so.
    """
    last_ckpt = out / f"{LAST_NAME}.ckpt"
    try:
        with warnings.catch_warnings():
            for msg in (".*does not have many workers.*", ".*smaller than the logging interval.*",
                        ".*Checkpoint directory .* exists and is not empty.*"):
                warnings.filterwarnings("ignore", message=msg)
            fit.trainer.fit(module, datamodule=data.dm, ckpt_path=str(last_ckpt) if resume else None,
                            weights_only=True)
            history = list(fit.recorder.history)  # (trainer.test below restores callback states from best.ckpt)
            test_metrics: dict[str, float] = {}
            if tp.run_test:
                res = fit.trainer.test(module, datamodule=data.dm, ckpt_path=fit.checkpoint.best_model_path or None,
                                       weights_only=True, verbose=False)
                test_metrics = {k: float(v) for k, v in (res[0] if res else {}).items()}
    except BaseException as exc:
        if tracking.run is not None:
            status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
            with contextlib.suppress(Exception):  # never hide the training error behind a tracking one
                tracking.run.finish(status)
            tracking.state.update(status=status.lower())
            write_json(out / "state.json", tracking.state)
        raise
    return history, test_metrics


def _other_rank_result(tp: TrainParams, data: _Data, tracking: _Tracking, seed: int, resume: bool,
                       trainer: Any) -> TrainResult:
    """What a non-zero rank returns (rank 0 writes every output)."""
    return TrainResult(
        run_id=None, experiment_id=None, tracking_uri=None, best_checkpoint=None, last_checkpoint=None,
        best_epoch=-1, epochs_completed=int(trainer.current_epoch), max_epochs=tp.epochs, stopped_early=False,
        resumed=resume, monitor=tp.monitor, best_score=None, best_metrics={}, arch=tp.model.arch,
        arch_kwargs=data.arch_kwargs, num_classes=data.num_classes, class_names=data.class_names,
        data_version=tracking.data_version.md5, samples=tracking.samples, seed=seed, rank=trainer.global_rank,
        world_size=trainer.world_size,
    )


@dataclass
class _Best:
    path: Path
    loaded: Any
    """The best checkpoint loaded back (``LoadedModel``)."""
    metrics: dict[str, float]
    temperature: float | None


def _best_checkpoint(fit: _Fit, data: _Data, tp: TrainParams, out: Path, history: list[dict[str, Any]],
                     test_metrics: dict[str, float]) -> _Best:
    """Load the best checkpoint back (calibrated with ``train.calibrate``) and collect its metrics."""
    from cvplatform.models.checkpoint import load_checkpoint

    best_path = Path(fit.checkpoint.best_model_path) if fit.checkpoint.best_model_path else out / f"{BEST_NAME}.ckpt"
    loaded = load_checkpoint(best_path, task=data.dm.task)  # run every artifact you produce: it must load back
    temperature = _calibrate(best_path, loaded, data.dm) if tp.calibrate else None
    if temperature is not None:
        loaded = load_checkpoint(best_path, task=data.dm.task)
    best_rec = next((r for r in history if int(r["epoch"]) == loaded.epoch), None) or _best_from_history(
        history, tp.monitor, tp.mode
    ) or {}
    best_metrics = {k: float(v) for k, v in best_rec.items() if k.startswith("val_") and v is not None}
    best_metrics.update(test_metrics)
    return _Best(best_path, loaded, best_metrics, temperature)


def _write_and_log(run: Any, best: _Best, data: _Data, out: Path,
                   history: list[dict[str, Any]]) -> tuple[Path, Path]:
    """Write metrics.json and the curves, log them with the best checkpoint to the run; ``(metrics, curves csv)``."""
    from cvplatform.tracking import plot_curves

    # `dvc metrics show`: the numbers a user compares, validation split of the best epoch
    # (the epoch, the monitor, the test metrics and full precision are in summary.json)
    # (the task's monitored metrics: classification's accuracy, f1, loss; detection's map, map50, loss)
    metrics = {_METRIC_NAMES.get(k, k.removeprefix("val_")): round(best.metrics[k], 4)
               for k in data.dm.task.monitor.metrics if k in best.metrics}
    metrics_path = write_json(out / "metrics.json", metrics)
    curves_csv = _write_curves(history, out / "plots" / "curves.csv", curve_columns(data.dm.task))
    curves_png = plot_curves(history, out / "plots" / "curves.png")
    run.log_metrics_once({f"best_{k}": v for k, v in best.metrics.items()} | {"best_epoch": float(best.loaded.epoch)}
                         | ({"calibration_temperature": best.temperature} if best.temperature is not None else {}))
    run.set_tags({"best_checkpoint": str(best.path), "class_names": ",".join(data.class_names)})
    for path, where in ((best.path, "checkpoints"), (curves_png, "plots"), (curves_csv, "plots"),
                        (metrics_path, None), (data.recipe_path, "config"), (out / "params.resolved.yaml", "config")):
        if Path(path).is_file():
            run.log_artifact(path, where)
    return metrics_path, curves_csv


# --------------------------------------------------------------------------- the stage
def run_train(params: Params, *, root: str | os.PathLike[str] | None = None, resume: bool = False) -> TrainResult:
    """Train a classifier on the manifest's train split, validating on val.

    Args:
        params: Loaded ``params.yaml`` (the ``train`` section, ``project.seed`` and ``project.manifest``).
        root: Project root (default: cwd); manifest, recipe and artifacts resolve against it.
        resume: Continue from ``artifacts/train/last.ckpt`` and the same MLflow run.

    Returns:
        A :class:`TrainResult` (also written to ``artifacts/train/summary.json``).

    Raises:
        ConfigError: bad recipe, class count that does not match the manifest,
            wrong number of class weights, params changed under ``--resume``.
        ModelError: unknown architecture or arguments; missing or corrupt checkpoint on resume.
        DataError: manifest missing, lacking columns, empty split, missing images.
        RegistryError: the MLflow tracking backend cannot be reached.

    Example:
        >>> from cvplatform import load_params, run_train
        >>> result = run_train(load_params("params.yaml", ["train.epochs=1"]))  # doctest: +SKIP
        >>> result.best_metrics["val_acc"] > 0.5  # doctest: +SKIP
        True
    """
    from cvplatform.utils.logs import quiet_libraries

    quiet_libraries()  # no third-party INFO floods in task logs and notebooks
    import pytorch_lightning as pl

    t0 = time.perf_counter()
    paths = ProjectPaths.at(root)
    out = paths.artifacts("train")
    tp = params.train
    seed = int(tp.seed if tp.seed is not None else params.project.seed)
    is_zero = _env_is_global_zero()
    data = _prepare_data(params, paths, seed)
    prior_state = _resume_state(out, tp, data.class_names) if resume else {}
    tracking = _start_tracking(params, paths, out, data, seed, resume, prior_state, is_zero)
    pl.seed_everything(seed, workers=True)
    module = _build_module(params, data)
    fit = _build_trainer(tp, out, seed, tracking, is_zero, curve_columns(data.dm.task))
    history, test_metrics = _fit(fit, module, data, tp, out, tracking, resume)
    if not fit.trainer.is_global_zero:
        return _other_rank_result(tp, data, tracking, seed, resume, fit.trainer)
    run = tracking.run
    assert run is not None
    best = _best_checkpoint(fit, data, tp, out, history, test_metrics)
    metrics_path, curves_csv = _write_and_log(run, best, data, out, history)
    run.finish("FINISHED")
    tracking.state.update(status="finished", epochs_completed=len(history), best_epoch=int(best.loaded.epoch))
    write_json(out / "state.json", tracking.state)
    last_ckpt = out / f"{LAST_NAME}.ckpt"
    dv = tracking.data_version
    result = TrainResult(
        run_id=run.run_id, experiment_id=run.experiment_id, tracking_uri=run.tracking_uri,
        best_checkpoint=str(best.path), last_checkpoint=str(last_ckpt) if last_ckpt.is_file() else None,
        best_epoch=int(best.loaded.epoch), epochs_completed=len(history), max_epochs=tp.epochs,
        stopped_early=bool(fit.early is not None and fit.early.stopped_epoch > 0), resumed=resume,
        monitor=tp.monitor, best_score=best.metrics.get(tp.monitor), best_metrics=best.metrics, arch=tp.model.arch,
        arch_kwargs=data.arch_kwargs, num_classes=data.num_classes, class_names=data.class_names,
        data_version=dv.md5, samples=tracking.samples, seed=seed, metrics_path=str(metrics_path),
        curves_path=str(curves_csv), duration_s=round(time.perf_counter() - t0, 3),
        world_size=fit.trainer.world_size,
        extra={"data_version_source": dv.source, "params_hash": tracking.params_hash,
               "temperature": best.temperature},
    )
    result.write_summary(out)
    log.info("train: done in %.1fs; best epoch %d %s", result.duration_s, result.best_epoch, best.metrics)
    return result


__all__ = ["CURVE_COLUMNS", "TrainResult", "curve_columns", "run_train"]
