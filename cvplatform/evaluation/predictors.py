"""Model-agnostic predictors: a training checkpoint, an ONNX file or an MLflow registry model.

Every predictor takes uint8 RGB images and returns the task's raw outputs by name
(:meth:`Predictor.predict`; classification: ``{"logits": (N, C)}``), preprocessing them with
the one :class:`~cvplatform.preprocess.PreprocessContract` it carries, so
evaluation treats a ``.ckpt``, an ``.onnx`` and a ``models:/NAME@ALIAS`` the same
way (:func:`load_predictor`).

* :class:`TorchCheckpointPredictor` — a ``.ckpt`` written by ``cvplatform train``
  (:func:`cvplatform.models.checkpoint.load_checkpoint`); the contract comes from
  the checkpoint metadata.
* :class:`OnnxPredictor` — an ONNX model run with onnxruntime (CPU); the contract
  comes from the model's ``metadata_props`` (written with
  :meth:`PreprocessContract.to_metadata`). A model without them is rejected.
* ``models:/NAME@ALIAS`` / ``models:/NAME/VERSION`` — the registered ONNX model,
  loaded through the registry's one verified loader
  (:func:`cvplatform.registry.load_model`: its sha256 must match the version's
  ``artifact.sha256`` tag, as in serving) and wrapped as an :class:`OnnxPredictor`.
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from cvplatform.errors import ModelError
from cvplatform.preprocess import PreprocessContract, normalize, resize_to_contract

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from cvplatform.tasks.base import Task

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 256


@runtime_checkable
class Predictor(Protocol):
    """Anything that turns uint8 RGB images into the task's raw outputs under a preprocessing contract."""

    name: str
    """Human-readable identity (path or model URI)."""
    contract: PreprocessContract
    """How inputs are prepared; ``contract.class_names`` names the classes."""

    @property
    def class_names(self) -> tuple[str, ...]: ...

    def predict(self, images: Any, batch_size: int = DEFAULT_BATCH_SIZE) -> dict[str, np.ndarray]:
        """``(N, H, W, 3)`` uint8 RGB (or a list of HxWx3) -> every output of the task by name, one row per image."""
        ...

    def predict_logits(self, images: Any, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        """The task's first output only (classification: ``(N, C)`` float32 logits)."""
        ...


def named_outputs(task: Task, raw: Any) -> dict[str, Any]:
    """A model's raw return value as ``{output name: array}`` in the task's ``output_names`` order: a mapping is
    kept, a tuple/list is zipped with the names, a single array is the first (only) output.

    Example:
        >>> from cvplatform.tasks import get_task
        >>> list(named_outputs(get_task("classification"), [[0.0, 1.0]]))
        ['logits']
    """
    from collections.abc import Mapping

    names = task.output_names
    if isinstance(raw, Mapping):
        return {n: raw[n] for n in names} if all(n in raw for n in names) else dict(raw)
    if isinstance(raw, tuple | list) and len(names) > 1:
        if len(raw) != len(names):
            raise ModelError(f"the model returned {len(raw)} outputs; task {task.name!r} expects "
                             f"{len(names)}: {list(names)}")
        return dict(zip(names, raw, strict=True))
    return {names[0]: raw}


class _BasePredictor(ABC):
    name: str
    contract: PreprocessContract
    task: Task
    """The task whose ``check_outputs`` every batch's output must pass (default classification)."""

    def _set_task(self, task: Task | None) -> None:
        from cvplatform.tasks import get_task

        self.task = task or get_task()

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.contract.class_names

    @abstractmethod
    def _forward(self, x: np.ndarray) -> Any:
        """The raw outputs for a preprocessed ``(N, 3, H, W)`` float32 batch: a mapping by output name, a tuple
        in the task's ``output_names`` order, or one array (see :func:`named_outputs`)."""

    def predict(self, images: Any, batch_size: int = DEFAULT_BATCH_SIZE) -> dict[str, np.ndarray]:
        """Preprocess with the contract and run the model in batches.

        Args:
            images: ``(N, H, W, 3)`` uint8 RGB array or a list of HxWx3 uint8 arrays (any size).
            batch_size: images per forward pass.

        Returns:
            Every output of the task by name (``task.output_names``), one row per image: ``{"logits": (N, C)}``
            for classification. Floating outputs are float32; integer outputs keep their dtype.

        Raises:
            ModelError: an output without one row per image, a trailing shape that changes between batches, or
                outputs the task's ``check_outputs`` refuses (the model and its metadata disagree).
        """
        import numpy as np

        resized = resize_to_contract(images, self.contract)
        n = resized.shape[0]
        parts: dict[str, list[np.ndarray]] = {}
        for start in range(0, n, max(1, int(batch_size))):
            x = normalize(resized[start : start + batch_size], self.contract)
            outs = {k: _as_array(v) for k, v in named_outputs(self.task, self._forward(x)).items()}
            self._check_batch(outs, x.shape[0], parts)
            for k, v in outs.items():
                parts.setdefault(k, []).append(v)
        if not parts:  # no images: the trailing shapes are unknown, classification's (0, C) by convention
            return {k: np.empty((0, self.contract.num_classes), dtype=np.float32) for k in self.task.output_names}
        return {k: np.concatenate(v, axis=0) for k, v in parts.items()}

    def _check_batch(self, outs: dict[str, np.ndarray], rows: int, seen: dict[str, list[np.ndarray]]) -> None:
        shapes = {k: v.shape for k, v in outs.items()}
        shown = next(iter(shapes.values())) if len(shapes) == 1 else shapes
        for k, v in outs.items():
            before = seen[k][0].shape[1:] if seen.get(k) else v.shape[1:]
            if v.ndim < 1 or v.shape[0] != rows or v.shape[1:] != before:
                raise ModelError(
                    f"{self.name}: model returned shape {shown} for a batch of {rows}, expected "
                    f"({rows}, ...) rows like {before or 'the first batch'}. The model and its metadata disagree."
                )
        try:
            self.task.check_outputs(outs, self.class_names)
        except ModelError as exc:
            raise ModelError(f"{self.name}: model returned shape {shown} for a batch of {rows}: "
                             f"{exc} The model and its metadata disagree.") from None

    def predict_logits(self, images: Any, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        """The task's first output of :meth:`predict` (classification: ``(N, C)`` float32 logits)."""
        return self.predict(images, batch_size)[self.task.output_names[0]]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, classes={len(self.class_names)})"


def _as_array(value: Any) -> np.ndarray:
    """A model output as numpy: a tensor is detached to CPU; floating values become float32."""
    import numpy as np

    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    return arr.astype(np.float32, copy=False) if arr.dtype.kind == "f" else arr


# --------------------------------------------------------------------------- torch
class TorchCheckpointPredictor(_BasePredictor):
    """A training checkpoint (``.ckpt``) run with PyTorch on CPU.

    Example:
        >>> p = TorchCheckpointPredictor("artifacts/train/best.ckpt")  # doctest: +SKIP
        >>> p.predict(images)["logits"].shape  # doctest: +SKIP
        (16, 10)
    """

    def __init__(self, path: str | os.PathLike[str], *, task: Task | None = None) -> None:
        from cvplatform.models.checkpoint import load_checkpoint

        self._set_task(task)
        self.path = Path(path)
        self.name = str(path)
        self.loaded = load_checkpoint(self.path, task=self.task)
        self.contract = contract_from_checkpoint(self.loaded)
        self.model = self.loaded.model

    def _forward(self, x: np.ndarray) -> Any:
        import torch

        with torch.inference_mode():
            return self.model(torch.from_numpy(x))


def contract_from_checkpoint(loaded: Any) -> PreprocessContract:
    """The :class:`PreprocessContract` of a :class:`~cvplatform.models.checkpoint.LoadedModel`.

    Raises:
        ModelError: the checkpoint uses preprocessing the contract cannot express
            (recipe ``eval`` steps, a resize other than bilinear).
    """
    where = str(getattr(loaded, "path", "checkpoint"))
    if getattr(loaded, "eval_transforms", None):
        names = [t.get("name") for t in loaded.eval_transforms]
        raise ModelError(
            f"{where}: the model was trained with recipe eval steps {names}, which the shared preprocessing "
            "contract (resize + normalise) cannot reproduce in evaluation, ONNX and serving. Remove the `eval:` "
            "steps from the augmentation recipe and retrain."
        )
    pre = getattr(loaded, "preprocess", None) or {}
    interp = str(pre.get("resize_interpolation", "bilinear"))
    mapping = {"bilinear": "linear", "linear": "linear", "area": "area"}
    if interp not in mapping:
        raise ModelError(f"{where}: resize interpolation {interp!r} is not supported (bilinear or area).")
    # a checkpoint recorded before the letterbox existed has no `resize`: it was trained stretched
    resize = str(pre.get("resize", "stretch"))
    try:
        return PreprocessContract(
            input_size=tuple(loaded.input_size),
            mean=tuple(loaded.mean),
            std=tuple(loaded.std),
            class_names=tuple(loaded.class_names),
            interpolation=mapping[interp],  # type: ignore[arg-type]
            resize=resize,  # type: ignore[arg-type]
            pad_value=pre.get("pad_value") if resize == "letterbox" else None,
        )
    except ModelError as exc:
        raise ModelError(f"{where}: {exc}") from None


# --------------------------------------------------------------------------- onnx
def session_options() -> Any:
    """onnxruntime session options of evaluation: quiet, ``$CVPLATFORM_ORT_THREADS`` intra-op threads (0 = default)."""
    from cvplatform.runtime import session_options as runtime_session_options

    return runtime_session_options(intra_op_threads=int(os.environ.get("CVPLATFORM_ORT_THREADS", "0") or 0))


class OnnxPredictor(_BasePredictor):
    """An ONNX model run with onnxruntime (CPU); contract from its ``metadata_props``.

    A thin predictor over the library's one runtime model (:class:`cvplatform.runtime.RuntimeModel`).

    Args:
        model: path of a ``.onnx`` file, the serialized model bytes, an open
            ``onnxruntime.InferenceSession``, or a :class:`~cvplatform.runtime.RuntimeModel`
            (e.g. from the registry's sha256-verified loader).
        name: identity shown in reports and errors (default: the path).

    Raises:
        ModelError: unreadable model, missing contract metadata, or inputs/outputs
            that do not fit the contract.

    Example:
        >>> p = OnnxPredictor("model.onnx")  # doctest: +SKIP
        >>> p.contract.input_size  # doctest: +SKIP
        (32, 32)
    """

    def __init__(self, model: str | os.PathLike[str] | bytes | Any, *, name: str | None = None,
                 task: Task | None = None) -> None:
        from cvplatform.runtime import RuntimeModel, open_model

        self._set_task(task)
        if isinstance(model, RuntimeModel):
            self.runtime = model
        else:
            self.runtime = open_model(model, name=name, options=session_options())
        self.name = name or self.runtime.name
        self.contract = self.runtime.contract
        self.session = self.runtime.session
        self.input_name = self.runtime.input_name
        self.output_name = self.runtime.output_name
        self.fixed_batch = self.runtime.fixed_batch

    def _forward(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return self.runtime.run_outputs(x)


# --------------------------------------------------------------------------- registry
@contextmanager
def mlflow_uris(tracking_uri: str | None) -> Iterator[None]:
    """Temporarily point MLflow's tracking and registry URIs at ``tracking_uri`` (None = leave as is).

    :meth:`cvplatform.mlflow_store.MlflowStore.active` does it through MLflow's public API;
    the caller's configuration (and :func:`cvplatform.tracking.tracking_uri`) is untouched
    afterwards.
    """
    if tracking_uri is None:
        yield
        return
    from cvplatform.mlflow_store import MlflowStore

    with MlflowStore(tracking_uri, tracking_uri).active():
        yield


def load_registered_onnx(model_uri: str, *, tracking_uri: str | None = None,
                         root: str | os.PathLike[str] | None = None, task: Task | None = None) -> OnnxPredictor:
    """Load ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` as an :class:`OnnxPredictor`, sha256-verified.

    The one loader of the library (:func:`cvplatform.registry.load_model`, also used by serving):
    the version's ``model.onnx`` is downloaded and must match its registered ``artifact.sha256``
    before onnxruntime opens it.

    Raises:
        RegistryError: unknown model/alias/version, a version without a registered hash
            (``UnmanagedVersionError``), or an artifact modified after registration
            (``ArtifactIntegrityError``); each names the URI.
        ModelError: the verified file is not a usable ONNX model with a preprocessing contract.

    Example:
        >>> p = load_registered_onnx("models:/cvplatform@champion", tracking_uri="sqlite:///mlflow.db")  # doctest: +SKIP
    """
    from cvplatform.registry.loading import load_model

    loaded = load_model(model_uri, root=root, tracking_uri=tracking_uri, sess_options=session_options())
    return OnnxPredictor(loaded, name=model_uri, task=task)


def load_predictor(ref: str | os.PathLike[str], *, root: str | os.PathLike[str] | None = None,
                   tracking_uri: str | None = None, task: Task | None = None) -> Predictor:
    """Open a model for evaluation: ``*.ckpt`` (torch), ``*.onnx`` (onnxruntime) or ``models:/...`` (registry).

    Args:
        ref: checkpoint path, ONNX path, or ``models:/NAME@ALIAS`` / ``models:/NAME/VERSION``.
        root: project root for relative paths (default: cwd).
        tracking_uri: MLflow tracking/registry URI for ``models:/`` (default:
            :func:`cvplatform.tracking.tracking_uri` of ``root``).
        task: the project's task (default classification): each output must pass its ``check_outputs``.

    Raises:
        ModelError: unknown kind of reference, missing file, or an unloadable model (naming ``ref``).
        RegistryError: a ``models:/`` reference that does not resolve or whose artifact fails its
            sha256 check (see :func:`load_registered_onnx`).

    Example:
        >>> from cvplatform.evaluation.predictors import load_predictor
        >>> p = load_predictor("artifacts/train/best.ckpt")  # doctest: +SKIP
        >>> p.class_names[:2]  # doctest: +SKIP
        ('0', '1')
    """
    text = str(ref)
    if text.startswith("models:/"):
        if tracking_uri is None:
            from cvplatform.tracking import tracking_uri as _tracking_uri

            tracking_uri = _tracking_uri(root or os.getcwd())
        return load_registered_onnx(text, tracking_uri=tracking_uri, root=root, task=task)
    p = Path(text)
    if not p.is_absolute() and root is not None:
        p = Path(root) / p
    suffix = p.suffix.lower()
    if suffix == ".ckpt":
        return TorchCheckpointPredictor(p, task=task)
    if suffix == ".onnx":
        return OnnxPredictor(p, task=task)
    raise ModelError(
        f"{text}: unknown model reference. Pass a training checkpoint (*.ckpt), an ONNX file (*.onnx) or a "
        "registry URI (models:/NAME@ALIAS or models:/NAME/VERSION)."
    )


__all__ = [
    "DEFAULT_BATCH_SIZE",
    "OnnxPredictor",
    "Predictor",
    "TorchCheckpointPredictor",
    "contract_from_checkpoint",
    "load_predictor",
    "load_registered_onnx",
    "mlflow_uris",
    "named_outputs",
    "session_options",
]
