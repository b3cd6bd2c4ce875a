"""The one runtime model: an onnxruntime session plus the preprocessing contract it was exported with.

Every place that runs an exported model opens it here:

* evaluation (:class:`cvplatform.evaluation.predictors.OnnxPredictor`), and through it the export
  stage's parity, INT8 and shipped-file checks;
* the export benchmark (:func:`cvplatform.export.benchmark.run_benchmark`);
* the registry loader (:func:`cvplatform.registry.load_model`), which verifies the artifact's sha256
  against its registered tag *before* the bytes reach :func:`open_model`;
* the inference server (:mod:`cvplatform.serving.models`), which the canary (:mod:`cvplatform.deploy`)
  drives over HTTP.

:func:`session_options` is the one place that builds ``onnxruntime.SessionOptions`` and
:func:`select_providers` the one place that picks execution providers. A :class:`RuntimeModel`
checks at load time that the model has one NCHW image input matching its contract
(``metadata_props``, see :class:`cvplatform.preprocess.PreprocessContract`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cvplatform.errors import ModelError
from cvplatform.preprocess import PreprocessContract

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"


def session_options(
    *,
    intra_op_threads: int = 0,
    allow_spinning: bool = True,
    inter_op_threads: int = 0,
    sequential: bool = False,
    optimize_all: bool = False,
) -> Any:
    """``onnxruntime.SessionOptions``: quiet logs plus the given knobs (0 threads = onnxruntime's default).

    ``allow_spinning=False`` stops idle intra-op threads from busy-waiting (the server's own threads
    need the CPU between batches). ``sequential`` and ``optimize_all`` are the benchmark's settings.

    Example:
        >>> session_options(intra_op_threads=2).intra_op_num_threads
        2
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if intra_op_threads > 0:
        opts.intra_op_num_threads = int(intra_op_threads)
    if inter_op_threads > 0:
        opts.inter_op_num_threads = int(inter_op_threads)
    if sequential:
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if optimize_all:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not allow_spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def select_providers(requested: Sequence[str], *, warn: str | None = None) -> list[str]:
    """The requested onnxruntime providers installed here, in order, with CPU appended as the fallback.

    ``warn``: a prefix for a warning naming the skipped providers (None: skip silently).

    Example:
        >>> select_providers(["NoSuchExecutionProvider"])
        ['CPUExecutionProvider']
    """
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    chosen = [p for p in requested if p in available]
    skipped = [p for p in requested if p not in available]
    if skipped and warn:
        log.warning("%s: onnxruntime providers %s are not available here (available: %s); skipped",
                    warn, skipped, sorted(available))
    if CPU not in chosen:
        chosen.append(CPU)
    return chosen


def open_session(model: str | os.PathLike[str] | bytes, *, name: str, providers: Sequence[str] = (CPU,),
                 options: Any = None) -> Any:
    """An ``onnxruntime.InferenceSession`` on a file or serialized bytes; ModelError naming ``name`` otherwise.

    ``providers`` are used as given (filter them with :func:`select_providers`); ``options`` defaults
    to :func:`session_options`.
    """
    import onnxruntime as ort

    source: Any = bytes(model) if isinstance(model, bytes | bytearray) else str(model)
    if isinstance(source, str) and not Path(source).is_file():
        raise ModelError(f"{source}: ONNX model not found. Run `cvplatform export` or pass the right path.")
    try:
        return ort.InferenceSession(source, sess_options=options if options is not None else session_options(),
                                    providers=list(providers))
    except Exception as exc:
        detail = " ".join(str(exc).split())[:300]
        raise ModelError(f"{name}: onnxruntime cannot load the model ({detail}).") from None


@dataclass
class RuntimeModel:
    """An onnxruntime session with its preprocessing contract and identity.

    Attributes:
        session: the ``onnxruntime.InferenceSession``.
        contract: preprocessing and class names, from the model's ONNX ``metadata_props``.
        name: model name (the registered name, or the file path) shown in errors.
        version: registry version, or ``"local"``.
        uri: where it came from (``models:/NAME/VERSION`` or a path; default ``name``).
        sha256: sha256 of the ONNX bytes when known (verified when it came from the registry).
        info: the registry's facts (:class:`cvplatform.registry.loading.VersionInfo`) when loaded from it.

    Example:
        >>> m = open_model("artifacts/export/model.onnx")  # doctest: +SKIP
        >>> m.forward(preprocess(images, m.contract)).shape  # doctest: +SKIP
        (4, 10)
    """

    session: Any
    contract: PreprocessContract
    name: str = "model"
    version: str = "local"
    uri: str = ""
    sha256: str | None = None
    info: Any = None
    loaded_at: float = field(default_factory=time.time)
    input_name: str = field(default="", init=False)
    output_name: str = field(default="", init=False)
    input_shape: list[Any] = field(default_factory=list, init=False)
    output_shape: list[Any] = field(default_factory=list, init=False)
    output_names: list[str] = field(default_factory=list, init=False)
    """Every graph output, in graph order (``output_name`` is the first)."""
    output_shapes: dict[str, list[Any]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.uri = self.uri or self.name
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        where = self.uri
        if len(inputs) != 1:
            raise ModelError(f"{where}: expected one input (an NCHW image batch), found {[i.name for i in inputs]}.")
        if not outputs:
            raise ModelError(f"{where}: the model has no outputs.")
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        self.input_shape, self.output_shape = list(inputs[0].shape), list(outputs[0].shape)
        self.output_names = [o.name for o in outputs]
        self.output_shapes = {o.name: list(o.shape) for o in outputs}
        h, w = self.contract.input_size
        shape = self.input_shape
        if len(shape) != 4 or any(
            isinstance(d, int) and d != want for d, want in zip(shape[1:], (3, h, w), strict=True)
        ):
            raise ModelError(
                f"{where}: input {self.input_name!r} has shape {shape}, but the contract says NCHW (N, 3, {h}, {w}). "
                "Re-export the model or fix its metadata."
            )

    def __iter__(self) -> Iterator[Any]:  # allows `session, contract, info = load_model(...)`
        return iter((self.session, self.contract, self.info))

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.contract.class_names

    @property
    def fixed_batch(self) -> int | None:
        """The input's static batch size, or None when the batch axis is dynamic."""
        n = self.input_shape[0]
        return n if isinstance(n, int) and n > 0 else None

    @property
    def task(self) -> Any:
        """The task the model was exported for (its ``task`` metadata; classification for files without it)."""
        from cvplatform.tasks import get_task

        meta = self.session.get_modelmeta().custom_metadata_map
        raw = meta.get("task")
        try:
            name = json.loads(raw) if raw else None
        except ValueError:
            name = raw
        return get_task(name)

    def check_batchable(self) -> None:
        """Raise ModelError unless the batch axis is dynamic, every output has a batch axis, the outputs are the
        task's ``output_names`` and their static shapes pass the task's ``check_outputs`` (classification:
        ``(N, C)`` logits with ``C`` = the classes in the metadata)."""
        import numpy as np

        where, shape = self.uri, self.input_shape
        if self.fixed_batch is not None:
            raise ModelError(
                f"{where}: input {self.input_name!r} has a fixed batch size {shape[0]}; the server batches "
                "requests and needs a dynamic batch axis. Re-export with a dynamic batch dimension."
            )
        task = self.task
        missing = [n for n in task.output_names if n not in self.output_shapes]
        if missing or any(not s for s in self.output_shapes.values()):
            raise ModelError(f"{where}: outputs {self.output_shapes} do not give the {task.name} outputs "
                             f"{list(task.output_names)} with a batch axis. Re-export the model.")
        dims = {n: self.output_shapes[n][1:] for n in task.output_names}
        if all(isinstance(d, int) for ds in dims.values() for d in ds):  # static shapes: check them without running
            probe = {n: np.zeros((1, *ds), np.float32) for n, ds in dims.items()}
            try:
                task.check_outputs(probe, list(self.contract.class_names))
            except ModelError as exc:
                raise ModelError(f"{where}: outputs {self.output_shapes} do not fit the model metadata: {exc}") from None

    def run(self, x: np.ndarray) -> np.ndarray:
        """Raw first output for a preprocessed ``(N, 3, H, W)`` float32 batch (any N); see :meth:`run_outputs`."""
        if len(self.output_names) == 1:
            return self._run([self.output_name], x)[0]
        return self.run_outputs(x)[self.output_name]

    def run_outputs(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Every raw graph output for a preprocessed ``(N, 3, H, W)`` float32 batch (any N), keyed by output
        name, unchecked (:meth:`forward` checks them).

        A model with a static batch size runs one fixed-size chunk at a time (the last one padded).
        """
        return dict(zip(self.output_names, self._run(self.output_names, x), strict=True))

    def _run(self, names: list[str], x: np.ndarray) -> list[np.ndarray]:
        import numpy as np

        b = self.fixed_batch
        if b is None or x.shape[0] == b:
            return list(self.session.run(names, {self.input_name: x}))
        parts = []
        for s in range(0, x.shape[0], b):
            chunk = x[s : s + b]
            k = chunk.shape[0]
            if k < b:
                chunk = np.concatenate([chunk, np.zeros((b - k, *chunk.shape[1:]), chunk.dtype)])
            parts.append([y[:k] for y in self.session.run(names, {self.input_name: chunk})])
        return [np.concatenate(col) for col in zip(*parts, strict=True)]

    def forward(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Every graph output for a preprocessed ``(N, 3, H, W)`` batch, keyed by output name (the task's
        ``output_names``; classification: ``{"logits": (N, C)}``), checked: one row per image, finite values,
        the task's ``check_outputs``; or ModelError naming the model and version."""
        import numpy as np

        try:
            out = self.run_outputs(x)
        except Exception as exc:
            detail = " ".join(str(exc).split())[:300]
            raise ModelError(f"{self.name} v{self.version}: onnxruntime failed ({type(exc).__name__}: {detail})") from None
        shapes = tuple(out[self.output_name].shape) if len(out) == 1 else {n: y.shape for n, y in out.items()}
        where = f"{self.name} v{self.version}: returned shape {shapes} for a batch of {x.shape[0]}"
        if any(y.ndim < 1 or y.shape[0] != x.shape[0] for y in out.values()):
            raise ModelError(f"{where}; every output needs one row per image.")
        try:
            self.task.check_outputs(out, list(self.class_names))
        except ModelError as exc:
            raise ModelError(f"{where}: {exc}") from None
        if not all(np.isfinite(y).all() for y in out.values() if np.issubdtype(y.dtype, np.number)):
            raise ModelError(f"{self.name} v{self.version}: returned non-finite outputs (NaN/inf).")
        return out

    def warmup(self) -> None:
        """Run one black image through the full path (preprocess + model); raise ModelError if it fails."""
        import numpy as np

        from cvplatform.preprocess import preprocess

        h, w = self.contract.input_size
        self.forward(preprocess(np.zeros((1, h, w, 3), np.uint8), self.contract))

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "uri": self.uri,
            "sha256": self.sha256,
            "loaded_at": self.loaded_at,
            "input": {"name": self.input_name, "shape": self.input_shape},
            "output": {"name": self.output_name, "shape": self.output_shape},
            "class_names": list(self.class_names),
            "input_size": list(self.contract.input_size),
            "providers": list(self.session.get_providers()),
        }


def open_model(
    model: str | os.PathLike[str] | bytes | Any,
    *,
    name: str | None = None,
    version: str = "local",
    uri: str | None = None,
    sha256: str | None = None,
    info: Any = None,
    providers: Sequence[str] = (CPU,),
    options: Any = None,
) -> RuntimeModel:
    """Open an ONNX model (path, bytes, or an open ``InferenceSession``) with the contract from its metadata.

    Args:
        model: the ``.onnx`` file, its bytes (e.g. sha256-verified registry bytes), or a session.
        name: identity in errors (default: the path, ``<onnx bytes>`` or ``<onnx session>``).
        version, uri, sha256, info: identity recorded on the :class:`RuntimeModel`.
        providers: execution providers as given (see :func:`select_providers`).
        options: ``SessionOptions`` (default :func:`session_options`).

    Raises:
        ModelError: missing or unreadable file, missing/invalid contract metadata, or an input that
            does not fit the contract.
    """
    import onnxruntime as ort

    if isinstance(model, ort.InferenceSession):
        session, label = model, name or "<onnx session>"
    else:
        label = name or ("<onnx bytes>" if isinstance(model, bytes | bytearray) else str(model))
        session = open_session(model, name=uri or label, providers=providers, options=options)
    where = uri or label
    meta = dict(session.get_modelmeta().custom_metadata_map or {})
    contract = PreprocessContract.from_metadata(meta, source=f"{where} (ONNX metadata_props)")
    return RuntimeModel(session, contract, name=label, version=str(version), uri=where, sha256=sha256, info=info)


__all__ = [
    "CPU",
    "RuntimeModel",
    "open_model",
    "open_session",
    "select_providers",
    "session_options",
]
