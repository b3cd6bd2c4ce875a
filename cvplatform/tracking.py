"""MLflow tracking helpers: where runs go, what lineage they carry, how epochs are logged.

* **Where.** :mod:`cvplatform.mlflow_store` resolves it (re-exported here): the
  tracking URI is ``$MLFLOW_TRACKING_URI`` when set (e.g. an MLflow tracking server
  ``http://mlflow:5000`` or ``postgresql://...``); otherwise the embedded default
  ``sqlite:///<root>/mlflow.db`` with artifacts under ``<root>/mlartifacts`` (set as
  the experiment's artifact location when cvplatform creates it). Same code either
  way; only the environment changes.
* **Lineage** (tags on every training run): git commit, data version (the DVC
  md5 of the manifest: from ``dvc.lock`` when it records the manifest and is
  current, else computed the way DVC does: md5 of the file bytes), params hash,
  environment (python / torch / lightning / platform versions) and the Airflow
  run id when ``AIRFLOW_CTX_DAG_RUN_ID`` is set (tag ``airflow_run_id``).
* **Epochs.** :meth:`TrackingRun.log_epoch` logs one record per epoch with
  ``step = epoch``; :meth:`TrackingRun.logged_steps` lets a resumed run log
  only what is missing, so every epoch's metrics appear exactly once.

mlflow is imported inside functions: importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cvplatform.errors import ConfigError, RegistryError
from cvplatform.mlflow_store import (  # noqa: F401  (where runs go: re-exported, defined once there)
    ENV_STORE_ROOT,
    ENV_TRACKING_URI,
    MlflowStore,
    RetryPolicy,
    default_artifact_location,
    store_root,
    tracking_uri,
)

if TYPE_CHECKING:  # pragma: no cover
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

ENV_AIRFLOW_RUN_ID = "AIRFLOW_CTX_DAG_RUN_ID"
START_TOKEN_TAG = "cvplatform.start_token"
"""Random tag of each started run: a retried start finds the run its lost attempt created."""
ENV_RUN_OVERRIDES = "CVPLATFORM_RUN_OVERRIDES"
"""JSON list of the ``key.path=value`` overrides a run's working copy applied (recorded as lineage)."""


# --------------------------------------------------------------------------- where
def get_client(root: str | os.PathLike[str]) -> tuple[MlflowClient, str]:
    """An ``MlflowClient`` on :func:`tracking_uri` (and that URI), built by :class:`MlflowStore`.

    Example:
        >>> client, uri = get_client(".")  # doctest: +SKIP
    """
    store = MlflowStore.at(root)
    return store.client(), store.tracking_uri


def ensure_experiment(client: MlflowClient, name: str, artifact_location: str | None = None,
                      store: MlflowStore | None = None) -> str:
    """Return the id of experiment ``name``, creating it (with ``artifact_location``) if absent.

    With ``store``, transient failures (a tracking server restarting) are retried with its waits.

    Raises:
        RegistryError: the tracking backend cannot be reached or the experiment is deleted.
    """

    def lookup() -> Any:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            try:
                return client.create_experiment(name, artifact_location=artifact_location)
            except Exception:  # another process created it concurrently
                exp = client.get_experiment_by_name(name)
                if exp is None:
                    raise
        if exp.lifecycle_stage == "deleted":
            raise RegistryError(
                f"MLflow experiment {name!r} is deleted (tracking URI {client.tracking_uri}). Restore it in "
                "the MLflow UI, or set train.experiment to another name."
            )
        return exp.experiment_id

    try:
        return store.call(f"open experiment {name!r}", lookup) if store is not None else lookup()
    except RegistryError:
        raise
    except Exception as exc:
        raise RegistryError(
            f"cannot reach MLflow at {client.tracking_uri} ({type(exc).__name__}: {exc}). Start the tracking "
            f"server or unset {ENV_TRACKING_URI} to use the embedded sqlite store."
        ) from exc


# --------------------------------------------------------------------------- lineage
def flatten_params(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten nested params to ``a.b.c -> str(value)`` (MLflow params are strings).

    Example:
        >>> flatten_params({"train": {"model": {"arch": "resnet", "kwargs": {}}, "epochs": 3}})
        {'train.model.arch': 'resnet', 'train.model.kwargs': '{}', 'train.epochs': '3'}
    """
    out: dict[str, str] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten_params(v, key + "."))
        else:
            out[key] = "None" if v is None else str(v)
    return out


def file_md5(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """md5 of a file's bytes, which is DVC 3's hash of a file output."""
    h = hashlib.md5()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _dvc_lock_md5(root: Path, rel: str) -> str | None:
    lock = root / "dvc.lock"
    if not lock.is_file():
        return None
    import yaml

    try:
        data = yaml.safe_load(lock.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return None
    for stage in (data.get("stages") or {}).values():
        for out in (stage or {}).get("outs") or []:
            if isinstance(out, dict) and Path(str(out.get("path", ""))).as_posix() == rel and out.get("md5"):
                return str(out["md5"])
    return None


@dataclass(frozen=True)
class DataVersion:
    """The data version of a manifest: its DVC md5 and where that came from."""

    md5: str
    source: str
    """``dvc.lock`` | ``computed`` | ``computed (dvc.lock stale)``."""


def data_version(manifest: str | os.PathLike[str], root: str | os.PathLike[str]) -> DataVersion:
    """The DVC hash of the manifest: from ``dvc.lock`` when recorded and current, else md5 of the file.

    Example:
        >>> data_version("data/processed/manifest.parquet", ".")  # doctest: +SKIP
        DataVersion(md5='3f2a...', source='dvc.lock')
    """
    root = Path(root).resolve()
    m = Path(manifest)
    m = m if m.is_absolute() else root / m
    computed = file_md5(m)
    try:
        rel = m.resolve().relative_to(root).as_posix()
    except ValueError:
        return DataVersion(computed, "computed")
    locked = _dvc_lock_md5(root, rel)
    if locked is None:
        return DataVersion(computed, "computed")
    if locked != computed:
        log.warning("dvc.lock records md5 %s for %s but the file hashes to %s; using the file", locked, rel, computed)
        return DataVersion(computed, "computed (dvc.lock stale)")
    return DataVersion(locked, "dvc.lock")


def environment_info() -> dict[str, str]:
    """Versions of python, torch, lightning, ... and the platform (for run tags).

    Example:
        >>> sorted(environment_info())[:2]  # doctest: +SKIP
        ['env.albumentations', 'env.cuda']
    """
    from importlib import metadata

    import cvplatform

    info = {
        "env.python": platform.python_version(),
        "env.platform": platform.platform(),
        "env.machine": platform.machine(),
        "env.cvplatform": cvplatform.__version__,
    }
    for dist in ("torch", "pytorch-lightning", "torchmetrics", "albumentations", "mlflow", "numpy"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            info[f"env.{dist.replace('pytorch-', '')}"] = metadata.version(dist)
    if "torch" in sys.modules:
        import torch

        info["env.cuda"] = str(torch.version.cuda) if torch.cuda.is_available() else "none"
    return info


def airflow_run_id() -> str | None:
    """The Airflow DAG run id when running inside an Airflow task, else None."""
    return os.environ.get(ENV_AIRFLOW_RUN_ID) or None


def run_overrides() -> list[str]:
    """The overrides of the run's working copy (``$CVPLATFORM_RUN_OVERRIDES``), else []."""
    raw = os.environ.get(ENV_RUN_OVERRIDES, "").strip()
    if not raw:
        return []
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        return [raw]
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


# --------------------------------------------------------------------------- runs
@dataclass
class TrackingRun:
    """One MLflow run used by a stage: a thin wrapper over ``MlflowClient`` whose every call goes
    through :meth:`MlflowStore.call`, so a tracking server that restarts or times out for a few
    seconds mid-training is retried (transient errors only, with the store's waits) instead of
    failing the stage.

    Creating a run is the one call that is not idempotent: each start carries a random
    ``cvplatform.start_token`` tag, and a retried start first looks for a run with that tag (the
    attempt whose answer was lost) instead of creating a second run.
    """

    client: MlflowClient
    run_id: str
    experiment_id: str
    tracking_uri: str
    store: MlflowStore | None = None

    def _call(self, what: str, fn: Any, recover: Any = None) -> Any:
        store = self.store or MlflowStore(self.tracking_uri)
        return store.call(f"{what} (run {self.run_id[:8]})", fn, recover=recover)

    @classmethod
    def start(
        cls,
        root: str | os.PathLike[str],
        experiment: str,
        run_name: str | None = None,
        tags: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
    ) -> TrackingRun:
        """Create a new run in ``experiment`` (created if needed) on :func:`tracking_uri`; ``retry``
        (default :class:`RetryPolicy`'s) is the budget of every call the run makes.

        Example:
            >>> run = TrackingRun.start(".", "cvplatform", "train-small_cnn")  # doctest: +SKIP
        """
        import uuid

        store = MlflowStore.at(root, retry)
        client = store.client()
        exp_id = ensure_experiment(client, experiment, default_artifact_location(root), store)
        token = uuid.uuid4().hex
        all_tags = {k: str(v) for k, v in (tags or {}).items() if v is not None}
        all_tags[START_TOKEN_TAG] = token

        def created_already() -> Any:
            found = client.search_runs([exp_id], filter_string=f"tags.`{START_TOKEN_TAG}` = '{token}'", max_results=1)
            return found[0] if found else None

        run = store.call(f"create a run in experiment {experiment!r}",
                         lambda: client.create_run(exp_id, run_name=run_name, tags=all_tags), recover=created_already)
        log.info("mlflow: started run %s in experiment %r (%s)", run.info.run_id, experiment, store.tracking_uri)
        return cls(client, run.info.run_id, exp_id, store.tracking_uri, store)

    @classmethod
    def resume(cls, root: str | os.PathLike[str], run_id: str, retry: RetryPolicy | None = None) -> TrackingRun:
        """Re-open an existing run (call :meth:`mark_running` once it is certain to continue).

        Raises:
            RegistryError: the run does not exist on this tracking backend.
        """
        store = MlflowStore.at(root, retry)
        client = store.client()
        try:
            run = store.call(f"get run {run_id}", lambda: client.get_run(run_id))
        except Exception as exc:
            raise RegistryError(
                f"cannot resume MLflow run {run_id} at {store.tracking_uri} ({type(exc).__name__}: {exc}). Check "
                f"{ENV_TRACKING_URI} points at the store used for the interrupted run, or train from scratch "
                "without --resume."
            ) from exc
        if run.info.lifecycle_stage == "deleted":
            raise RegistryError(f"MLflow run {run_id} is deleted; train from scratch without --resume.")
        log.info("mlflow: resuming run %s (%s)", run_id, store.tracking_uri)
        return cls(client, run_id, run.info.experiment_id, store.tracking_uri, store)

    def mark_running(self) -> None:
        """Set the run's status back to RUNNING (a resumed run)."""
        self._call("mark running", lambda: self.client.update_run(self.run_id, status="RUNNING"))

    # ---------------------------------------------------------------- params / tags
    def log_params(self, params: Mapping[str, str]) -> None:
        """Log params (strings), in batches of 100 (re-logging a param with the same value is allowed)."""
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            batch = items[i : i + 100]
            self._call("log params", lambda b=batch: self.client.log_batch(self.run_id, params=b))

    def check_params(self, params: Mapping[str, str], source: str) -> None:
        """Raise ConfigError if ``params`` differ from those already logged on the run."""
        logged = self._call("read params", lambda: self.client.get_run(self.run_id).data.params)
        diff = [
            f"{k} (run: {logged[k]!r}, now: {v!r})" for k, v in params.items() if k in logged and logged[k] != str(v)
        ]
        if diff:
            raise ConfigError(
                f"{source}: --resume continues MLflow run {self.run_id}, but these params differ from the run's: "
                + "; ".join(diff)
                + ". Restore them, or train from scratch without --resume."
            )

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items() if v is not None]
        if items:
            self._call("set tags", lambda: self.client.log_batch(self.run_id, tags=items))

    # ---------------------------------------------------------------- metrics
    def logged_steps(self, keys: Iterable[str]) -> dict[str, set[int]]:
        """For each metric key, the steps already logged on the run."""
        return {k: self._call(f"read {k} history",
                              lambda k=k: {m.step for m in self.client.get_metric_history(self.run_id, k)})
                for k in keys}

    def log_epoch(self, epoch: int, metrics: Mapping[str, float], skip: Mapping[str, set[int]] | None = None) -> None:
        """Log one epoch's metrics with ``step = epoch`` (one batch; keys in ``skip[key]`` are left out).

        A retry first reads which of the batch's metrics the lost attempt already stored at this step
        and logs only the rest, so every epoch's metrics appear once.
        """
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [
            Metric(k, float(v), ts, int(epoch))
            for k, v in metrics.items()
            if v is not None and not (skip and int(epoch) in skip.get(k, set()))
        ]
        if not items:
            return
        pending = list(items)

        def stored_already() -> Any:
            steps = {k: {m.step for m in self.client.get_metric_history(self.run_id, k)} for k in {m.key for m in pending}}
            pending[:] = [m for m in pending if int(epoch) not in steps[m.key]]
            return True if not pending else None

        self._call(f"log epoch {epoch} metrics", lambda: self.client.log_batch(self.run_id, metrics=pending),
                   recover=stored_already)

    def log_metrics_once(self, metrics: Mapping[str, float]) -> None:
        """Log summary metrics (step 0) unless the run already has them."""
        have = self._call("read metrics", lambda: self.client.get_run(self.run_id).data.metrics)
        self.log_epoch(0, {k: v for k, v in metrics.items() if k not in have})

    # ---------------------------------------------------------------- artifacts / status
    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        self._call(f"log artifact {Path(path).name}",
                   lambda: self.client.log_artifact(self.run_id, str(path), artifact_path=artifact_path))

    def finish(self, status: str = "FINISHED") -> None:
        """Mark the run terminated (FINISHED | FAILED | KILLED)."""
        self._call(f"mark {status}", lambda: self.client.set_terminated(self.run_id, status=status))


# --------------------------------------------------------------------------- plots
def plot_curves(history: list[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Draw loss curves and the task's other logged metrics per epoch to a PNG (matplotlib, Agg backend).

    The left panel has every ``*loss`` key; the right one every other ``train_*`` / ``val_*`` key
    (accuracy and F1 for classification; whatever a task's module logs).

    Example:
        >>> plot_curves([{"epoch": 0, "train_loss": 1.0, "val_loss": 0.9, "val_acc": 0.5}],
        ...             "/tmp/curves.png")  # doctest: +SKIP
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    epochs = [int(r["epoch"]) for r in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    for key, style in (("train_loss", "-o"), ("val_loss", "-s")):
        ys = [r.get(key) for r in history]
        if any(y is not None for y in ys):
            ax1.plot(epochs, [float("nan") if y is None else y for y in ys], style, label=key)
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.legend()
    scores = sorted({k for r in history for k in r if k.startswith(("train_", "val_")) and not k.endswith("loss")})
    for key, style in zip(scores, ("-o", "-s", "-^", "-v", "-d", "-x", "-+", "-*") * 4, strict=False):
        ys = [r.get(key) for r in history]
        if any(y is not None for y in ys):
            ax2.plot(epochs, [float("nan") if y is None else y for y in ys], style, label=key)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("score")
    values = [float(r[k]) for r in history for k in scores if r.get(k) is not None]
    if values and min(values) >= 0.0 and max(values) <= 1.0:  # shares (accuracy, F1, mAP): a fixed 0..1 axis
        ax2.set_ylim(0, 1.02)
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


__all__ = [
    "ENV_AIRFLOW_RUN_ID",
    "ENV_RUN_OVERRIDES",
    "ENV_STORE_ROOT",
    "ENV_TRACKING_URI",
    "DataVersion",
    "TrackingRun",
    "airflow_run_id",
    "run_overrides",
    "store_root",
    "data_version",
    "default_artifact_location",
    "ensure_experiment",
    "environment_info",
    "file_md5",
    "flatten_params",
    "get_client",
    "plot_curves",
    "tracking_uri",
]
