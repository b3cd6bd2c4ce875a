"""PyTorch checkpoint -> self-describing ONNX file.

:func:`export_onnx` writes a graph with one input ``input`` (``float32``,
``(batch, 3, H, W)``, dynamic batch axis) and one output ``logits``
(``(batch, num_classes)``), at a fixed opset (``export.opset``, default
:data:`DEFAULT_OPSET`), validated with ``onnx.checker.check_model(full_check=True)``.

Everything a server needs to run the file travels in its ``metadata_props``
(string key -> JSON string value):

* the preprocessing contract, :meth:`PreprocessContract.to_metadata`
  (``input_size``, ``mean``, ``std``, ``class_names``, ``channel_order``,
  ``layout``, ``interpolation``, ``resize`` and, for a letterbox, ``pad_value``), read back with
  :meth:`PreprocessContract.from_metadata` (a file without ``resize`` is a stretch);
* model version info (:func:`version_metadata`): ``model_arch``,
  ``model_arch_kwargs``, ``train_run_id``, ``data_hash``, ``checkpoint_sha256``,
  ``checkpoint_epoch``, ``precision``, ``opset``, ``producer``.

No timestamp, path or host name is written, so exporting the same checkpoint
twice gives a byte-identical file (the TorchScript exporter is deterministic).
"""

from __future__ import annotations

import io
import json
import logging
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cvplatform.errors import ModelError
from cvplatform.tasks import get_task

if TYPE_CHECKING:  # pragma: no cover
    import onnx

    from cvplatform.models.checkpoint import LoadedModel
    from cvplatform.preprocess import PreprocessContract
    from cvplatform.tasks.base import Task

log = logging.getLogger(__name__)

#: Opset used unless ``export.opset`` says otherwise (supported by onnxruntime, TensorRT and OpenVINO).
DEFAULT_OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
BATCH_AXIS = "batch"
#: metadata_props keys written besides the preprocessing contract (values are JSON strings).
VERSION_KEYS: tuple[str, ...] = (
    "model_arch",
    "model_arch_kwargs",
    "train_run_id",
    "data_hash",
    "checkpoint_sha256",
    "checkpoint_epoch",
    "precision",
    "opset",
    "producer",
)


def version_metadata(
    *,
    arch: str,
    arch_kwargs: Mapping[str, Any],
    train_run_id: str | None,
    data_hash: str | None,
    checkpoint_sha256: str,
    checkpoint_epoch: int,
    precision: str = "fp32",
    opset: int = DEFAULT_OPSET,
) -> dict[str, str]:
    """Model version info as ONNX ``metadata_props`` (JSON-string values, deterministic).

    Example:
        >>> meta = version_metadata(arch="small_cnn", arch_kwargs={"width": 4}, train_run_id=None,
        ...                         data_hash="ab12", checkpoint_sha256="ff", checkpoint_epoch=3)
        >>> meta["model_arch"], meta["train_run_id"], meta["precision"]
        ('"small_cnn"', 'null', '"fp32"')
    """
    import cvplatform

    values: dict[str, Any] = {
        "model_arch": arch,
        "model_arch_kwargs": dict(arch_kwargs),
        "train_run_id": train_run_id,
        "data_hash": data_hash,
        "checkpoint_sha256": checkpoint_sha256,
        "checkpoint_epoch": int(checkpoint_epoch),
        "precision": precision,
        "opset": int(opset),
        "producer": f"cvplatform {cvplatform.__version__}",
    }
    return {k: json.dumps(values[k], sort_keys=True) for k in VERSION_KEYS}


def set_metadata(model: onnx.ModelProto, meta: Mapping[str, str]) -> onnx.ModelProto:
    """Set ``meta`` in ``model.metadata_props`` (existing keys replaced, others kept), sorted by key.

    Example:
        >>> import onnx
        >>> m = onnx.ModelProto()
        >>> _ = set_metadata(m, {"b": '"2"', "a": '"1"'})
        >>> [(p.key, p.value) for p in m.metadata_props]
        [('a', '"1"'), ('b', '"2"')]
    """
    merged = {p.key: p.value for p in model.metadata_props}
    merged.update({str(k): str(v) for k, v in meta.items()})
    del model.metadata_props[:]
    for key in sorted(merged):
        entry = model.metadata_props.add()
        entry.key = key
        entry.value = merged[key]
    return model


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file as a dict (weights are not loaded).

    Example:
        >>> read_metadata("artifacts/export/model.onnx")["precision"]  # doctest: +SKIP
        '"fp32"'
    """
    import onnx

    p = Path(path)
    if not p.is_file():
        raise ModelError(f"{p}: ONNX file not found. Run `cvplatform export` first.")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as exc:
        raise ModelError(f"{p}: not a readable ONNX file ({type(exc).__name__}: {exc}).") from None
    return {prop.key: prop.value for prop in model.metadata_props}


def check_onnx(model: onnx.ModelProto | str | os.PathLike[str], where: str) -> None:
    """``onnx.checker.check_model(model, full_check=True)`` with a ModelError naming ``where``.

    Example:
        >>> check_onnx("artifacts/export/model_fp32.onnx", "model_fp32.onnx")  # doctest: +SKIP
    """
    import onnx

    target: Any = str(model) if isinstance(model, str | os.PathLike) else model
    try:
        onnx.checker.check_model(target, full_check=True)
    except Exception as exc:
        detail = " ".join(str(exc).split())[:400]
        raise ModelError(
            f"{where}: the ONNX model fails onnx.checker (full check): {detail}. This is an exporter or "
            "quantizer problem; try another export.opset or export.exporter, or disable export.int8."
        ) from None


def _torch_export(module: Any, example: Any, opset: int, exporter: str, where: str,
                  output_names: tuple[str, ...] = (OUTPUT_NAME,)) -> bytes:
    import torch

    buf = io.BytesIO()
    common: dict[str, Any] = {"input_names": [INPUT_NAME], "output_names": list(output_names), "opset_version": opset}
    try:
        if exporter == "dynamo":
            try:
                import onnxscript  # noqa: F401
            except ImportError:
                raise ModelError(
                    f"{where}: export.exporter is 'dynamo', which needs the onnxscript package "
                    "(pip install onnxscript). Install it, or set export.exporter: torchscript."
                ) from None
            batch = torch.export.Dim("batch", min=1)
            program = torch.onnx.export(
                module, (example,), dynamo=True, dynamic_shapes=({0: batch},), optimize=True, **common,
            )
            program.save(buf)
        else:
            with warnings.catch_warnings():
                # torch >= 2.9 warns that the TorchScript exporter is legacy; it is still supported
                warnings.simplefilter("ignore", DeprecationWarning)
                warnings.simplefilter("ignore", FutureWarning)
                torch.onnx.export(
                    module, (example,), buf, dynamo=False, do_constant_folding=True, export_params=True,
                    dynamic_axes={INPUT_NAME: {0: BATCH_AXIS}, **{o: {0: BATCH_AXIS} for o in output_names}},
                    **common,
                )
    except ModelError:
        raise
    except Exception as exc:
        detail = " ".join(str(exc).split())[:400]
        raise ModelError(
            f"{where}: torch.onnx.export ({exporter}, opset {opset}) failed: {type(exc).__name__}: {detail}. "
            "Try another export.opset (13..21) or export.exporter."
        ) from None
    return buf.getvalue()


def _check_network(module: Any, contract: PreprocessContract, task: Task, where: str) -> Any:
    """A probe batch for the exporter, after the network's outputs on it passed ``task.check_outputs``."""
    import torch

    h, w = contract.input_size
    example = torch.zeros(1, 3, h, w, dtype=torch.float32)
    with torch.inference_mode():
        raw = module(example)
    arrays = raw if isinstance(raw, tuple | list) else (raw,)
    if len(arrays) != len(task.output_names):
        raise ModelError(f"{where}: the network returns {len(arrays)} output(s) but the task {task.name!r} has "
                         f"{list(task.output_names)}. The checkpoint does not fit project.task; retrain it.")
    outputs = {n: a.detach().cpu().numpy() for n, a in zip(task.output_names, arrays, strict=True)}
    try:
        task.check_outputs(outputs, list(contract.class_names))
    except ModelError as exc:
        raise ModelError(f"{where}: {exc} The checkpoint metadata is inconsistent; retrain with "
                         "`cvplatform train`.") from None
    return example


def export_onnx(
    loaded: LoadedModel,
    path: str | os.PathLike[str],
    contract: PreprocessContract,
    *,
    extra_metadata: Mapping[str, str] | None = None,
    opset: int = DEFAULT_OPSET,
    exporter: str = "torchscript",
    task: Task | None = None,
) -> Path:
    """Export a loaded checkpoint to ONNX with its preprocessing contract and version metadata.

    Args:
        loaded: The checkpoint (:func:`cvplatform.models.checkpoint.load_checkpoint`).
        path: Output ``.onnx`` file (parent folders are created; written atomically).
        contract: The model's preprocessing contract (input size, mean/std, class names);
            stored with :meth:`PreprocessContract.to_metadata`.
        extra_metadata: More ``metadata_props`` (e.g. :func:`version_metadata`), JSON-string values.
        opset: ONNX opset.
        exporter: ``torchscript`` (default) or ``dynamo`` (needs ``onnxscript``).
        task: The project's task (default classification): the graph's outputs are its ``output_names``
            and the network's outputs on a probe batch must pass its ``check_outputs``.

    Returns:
        ``path``, after ``onnx.checker.check_model(full_check=True)`` passed.

    Raises:
        ModelError: the export or the checker fails, or the contract does not match
            the network (class count, input size).

    Example:
        >>> from cvplatform.evaluation.predictors import contract_from_checkpoint
        >>> from cvplatform.models.checkpoint import load_checkpoint
        >>> lm = load_checkpoint("artifacts/train/best.ckpt")  # doctest: +SKIP
        >>> export_onnx(lm, "artifacts/export/model_fp32.onnx", contract_from_checkpoint(lm))  # doctest: +SKIP
        PosixPath('artifacts/export/model_fp32.onnx')
    """
    import onnx

    out = Path(path)
    where = str(loaded.path)
    task = task or get_task()
    h, w = contract.input_size
    module = loaded.model.eval().to("cpu")
    example = _check_network(module, contract, task, where)
    blob = _torch_export(module, example, int(opset), exporter, where, tuple(task.output_names))
    try:
        model = onnx.load_from_string(blob)
    except Exception as exc:  # pragma: no cover - torch produced something unreadable
        raise ModelError(f"{where}: torch.onnx.export produced an unreadable model ({exc}).") from None
    model.producer_name = "cvplatform"
    model.doc_string = (
        f"{loaded.arch} {task.name} model, classes {list(contract.class_names)}; input '{INPUT_NAME}' float32 NCHW "
        f"(batch, 3, {h}, {w}) RGB, (pixel/255 - mean)/std; outputs {list(task.output_names)}."
    )
    set_metadata(model, {**contract.to_metadata(), "task": json.dumps(task.name), **dict(extra_metadata or {})})
    check_onnx(model, f"{out} (exported from {where})")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_bytes(model.SerializeToString())
    os.replace(tmp, out)
    log.info("export: wrote %s (opset %d, %s exporter, %.1f KiB)", out, opset, exporter, out.stat().st_size / 1024)
    return out


__all__ = [
    "BATCH_AXIS",
    "DEFAULT_OPSET",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "VERSION_KEYS",
    "check_onnx",
    "export_onnx",
    "read_metadata",
    "set_metadata",
    "version_metadata",
]
