"""Static INT8 quantization (QDQ) and the rule that decides whether INT8 ships.

:func:`quantize_int8` runs onnxruntime's ``quant_pre_process`` (symbolic shape
inference + graph optimisation, optional) and then ``quantize_static`` with
``QuantFormat.QDQ`` (activations uint8, weights int8, MinMax calibration) over a
:class:`~onnxruntime.quantization.CalibrationDataReader` of preprocessed images
(train split, same :class:`~cvplatform.preprocess.PreprocessContract` as
serving). The quantized file keeps the fp32 file's metadata with
``precision = "int8"`` and passes ``onnx.checker`` (full check).

:func:`decide_int8` is pure: INT8 is accepted only when on every judged scenario
(every must-pass scenario of the suite, plus the clean one) its accuracy is at
most ``max_drop`` below fp32's on the same images.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cvplatform.errors import DataError, ModelError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from cvplatform.export.suite import ScenarioComparison

log = logging.getLogger(__name__)

#: Float tolerance: a drop exactly equal to max_drop is accepted.
EPS = 1e-9


@dataclass
class Int8Decision:
    """Whether the INT8 model ships, and why (JSON-friendly via :meth:`to_dict`)."""

    accepted: bool
    reason: str | None
    """Why INT8 was rejected (None when accepted)."""
    max_drop: float
    """``export.int8.max_drop``."""
    worst_scenario: str | None = None
    """Judged scenario with the largest drop of the task's INT8 metric (positive = INT8 is worse)."""
    worst_drop: float | None = None
    scenarios: list[ScenarioComparison] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "reason": self.reason,
            "max_drop": self.max_drop,
            "worst_scenario": self.worst_scenario,
            "worst_drop": self.worst_drop,
            "scenarios": [s.to_dict() for s in self.scenarios],
        }


def decide_int8(comparisons: Sequence[ScenarioComparison], max_drop: float) -> Int8Decision:
    """Accept INT8 only if every judged scenario's drop of the INT8 metric vs fp32 is ``<= max_drop`` (pure;
    a drop is positive when INT8 is worse, whichever the metric's direction).

    A judged scenario without images cannot show anything and rejects INT8.

    Example:
        >>> from cvplatform.export.suite import ScenarioComparison
        >>> rows = [ScenarioComparison("clean", "clean", "must_pass", 50, 0.96, 0.94, 0.02, 0.97, True)]
        >>> d = decide_int8(rows, 0.01)
        >>> d.accepted, d.worst_scenario
        (False, 'clean')
    """
    judged = [c for c in comparisons if c.judged]
    if not judged:
        return Int8Decision(False, "the suite has no must-pass or clean scenario to judge INT8 on", max_drop,
                            scenarios=list(comparisons))
    empty = [c.name for c in judged if c.n == 0 or c.drop is None]
    decided = [c for c in judged if c.drop is not None and c.n > 0]
    worst = max(decided, key=lambda c: (c.drop, c.name), default=None)
    failing = [c for c in decided if c.drop > max_drop + EPS]
    reasons = []
    for c in sorted(failing, key=lambda c: -c.drop):
        reasons.append(
            f"scenario {c.name!r} ({c.level}, {c.n} images): {c.metric} {c.reference_score:.4f} (fp32) -> "
            f"{c.candidate_score:.4f} (int8), drop {c.drop:+.4f} > export.int8.max_drop {max_drop:+.4f}"
        )
    if empty:
        reasons.append(f"judged scenario(s) {empty} have no images, so INT8 cannot be checked there")
    return Int8Decision(
        accepted=not reasons,
        reason="; ".join(reasons) if reasons else None,
        max_drop=max_drop,
        worst_scenario=worst.name if worst else None,
        worst_drop=worst.drop if worst else None,
        scenarios=list(comparisons),
    )


def calibration_reader(inputs: np.ndarray, *, input_name: str = "input", batch_size: int = 32) -> Any:
    """A ``CalibrationDataReader`` yielding ``{input_name: batch}`` over preprocessed NCHW float32 inputs.

    Example:
        >>> import numpy as np
        >>> r = calibration_reader(np.zeros((5, 3, 8, 8), np.float32), batch_size=2)
        >>> [r.get_next()["input"].shape[0] for _ in range(3)], r.get_next()
        ([2, 2, 1], None)
    """
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = [inputs[i : i + batch_size] for i in range(0, len(inputs), max(1, batch_size))]
            self._pos = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self._pos >= len(self._batches):
                return None
            self._pos += 1
            return {input_name: self._batches[self._pos - 1]}

        def rewind(self) -> None:
            self._pos = 0

    return _Reader()


@dataclass(frozen=True)
class QuantizeInfo:
    """What :func:`quantize_int8` did."""

    path: Path
    calibration_images: int
    pre_processed: bool
    """Whether ``quant_pre_process`` ran (it is skipped, with a warning, when it fails)."""
    per_channel: bool
    note: str = ""


def quantize_int8(
    fp32_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    calibration_inputs: np.ndarray,
    *,
    metadata: Mapping[str, str] | None = None,
    per_channel: bool = False,
    pre_process: bool = True,
    input_name: str = "input",
) -> QuantizeInfo:
    """Quantize an fp32 ONNX model to INT8 (static, QDQ) with calibration inputs.

    Args:
        fp32_path: The exported fp32 model.
        out_path: Where to write the INT8 model (atomically).
        calibration_inputs: Preprocessed ``(N, 3, H, W)`` float32 inputs
            (:func:`cvplatform.preprocess.preprocess` of train images).
        metadata: ``metadata_props`` to set on the result (the fp32 file's are copied
            first; ``precision`` is set to ``"int8"``).
        per_channel: Per-channel weight scales.
        pre_process: Run ``quant_pre_process`` first.

    Returns:
        A :class:`QuantizeInfo`; the file passed ``onnx.checker`` (full check).

    Raises:
        DataError: no calibration inputs.
        ModelError: quantization or the checker fails.

    Example:
        >>> from cvplatform.preprocess import preprocess
        >>> info = quantize_int8("model_fp32.onnx", "model_int8.onnx", preprocess(images, contract))  # doctest: +SKIP
        >>> info.calibration_images  # doctest: +SKIP
        200
    """
    import numpy as np
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from cvplatform.export.onnx_export import check_onnx, set_metadata

    src = Path(fp32_path)
    out = Path(out_path)
    x = np.ascontiguousarray(calibration_inputs, dtype=np.float32)
    if x.ndim != 4 or x.shape[0] == 0:
        raise DataError(
            f"{src}: INT8 calibration needs preprocessed (N, 3, H, W) inputs with N >= 1, got shape {x.shape}. "
            "Set export.int8.calibration_images >= 1 and make sure the calibration split has images."
        )
    note = ""
    with tempfile.TemporaryDirectory(prefix="cvplatform-quant-") as tmp:
        model_in = src
        pre_done = False
        if pre_process:
            from onnxruntime.quantization.shape_inference import quant_pre_process

            pre = Path(tmp) / "pre.onnx"
            try:
                quant_pre_process(str(src), str(pre), skip_symbolic_shape=False)
                model_in, pre_done = pre, True
            except Exception as exc:  # some graphs defeat symbolic shape inference: quantize without it
                note = f"quant_pre_process failed ({type(exc).__name__}: {exc}); quantized without it"
                log.warning("export: %s", note)
        q = Path(tmp) / "int8.onnx"
        try:
            quantize_static(
                str(model_in), str(q), calibration_reader(x, input_name=input_name),
                quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                per_channel=per_channel, calibrate_method=CalibrationMethod.MinMax,
            )
        except Exception as exc:
            detail = " ".join(str(exc).split())[:400]
            raise ModelError(
                f"{src}: INT8 static quantization failed ({type(exc).__name__}: {detail}). Set "
                "export.int8.pre_process: false or export.int8.per_channel differently, or export.int8.enabled: false."
            ) from None
        model = onnx.load(str(q))
        fp32_meta = {p.key: p.value for p in onnx.load(str(src), load_external_data=False).metadata_props}
        set_metadata(model, {**fp32_meta, **dict(metadata or {}), "precision": json.dumps("int8")})
        check_onnx(model, f"{out} (INT8 of {src})")
        out.parent.mkdir(parents=True, exist_ok=True)
        staged = Path(tmp) / "final.onnx"
        staged.write_bytes(model.SerializeToString())
        shutil.move(str(staged), out.with_name(f".{out.name}.tmp"))
        os.replace(out.with_name(f".{out.name}.tmp"), out)
    log.info("export: wrote %s (INT8 QDQ, %d calibration images%s)", out, len(x),
             ", pre-processed" if pre_done else "")
    return QuantizeInfo(out, int(len(x)), pre_done, per_channel, note)


__all__ = ["EPS", "Int8Decision", "QuantizeInfo", "calibration_reader", "decide_int8", "quantize_int8"]
