"""The parity gate: an exported model must compute what the PyTorch checkpoint computes.

Both models see the same images through the same preprocessing contract (each
:class:`~cvplatform.evaluation.predictors.Predictor` applies it), and their logits
are compared image by image:

* ``max_abs_diff`` — the largest ``|reference - candidate|`` over all images and
  classes must be ``<= atol`` (``export.parity.atol``, 1e-4 for fp32);
* ``agreement`` — the share of images on which the project's task says the two
  outputs agree (:meth:`~cvplatform.tasks.base.Task.agreement`; the same top-1 class for
  classification) must be ``>= min_agreement`` (``export.parity.min_agreement``, 0.999);
  ``parity.json`` also carries it as ``top1_agreement``, a deprecated alias for older readers.

Non-finite logits (NaN/Inf) are not a parity question but a broken model: they
raise :class:`~cvplatform.errors.ModelError` saying whether the checkpoint itself
or only the exported file produces them. :func:`compare_logits` is pure (no I/O);
:func:`run_parity` runs the two predictors; :func:`raise_if_failed` turns a failed
report into :class:`~cvplatform.errors.GateFailed` naming the worst images.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from cvplatform.errors import DataError, GateFailed, ModelError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from cvplatform.evaluation.predictors import Predictor
    from cvplatform.tasks.base import Task


@dataclass(frozen=True)
class ParityImage:
    """One image of the comparison (the worst ones are reported)."""

    path: str
    """Manifest path of the image."""
    sha256: str
    """Manifest sha256 (the image's identity)."""
    label: str
    max_abs_diff: float
    """Largest absolute logit difference on this image."""
    reference_top1: str
    candidate_top1: str


@dataclass
class ParityReport:
    """Result of comparing a candidate model's logits with a reference's (JSON-friendly)."""

    reference: str
    candidate: str
    split: str
    n: int
    max_abs_diff: float
    mean_abs_diff: float
    agreement: float
    """``task.agreement(...).rate``: share of images on which both models agree (classification: same top-1)."""
    disagreements: int
    atol: float
    min_agreement: float
    passed: bool
    reasons: list[str] = field(default_factory=list)
    """Why it failed (one line per failed criterion); empty when passed."""
    worst: list[ParityImage] = field(default_factory=list)
    """Images with the largest differences (disagreeing ones first)."""
    metric: dict[str, Any] | None = None
    """The task's headline metric on the compared images (``Task.int8_metric``): ``name``, ``reference``,
    ``candidate``, ``delta`` and ``max_delta``; None when no targets were given."""

    @property
    def top1_agreement(self) -> float:
        """Deprecated alias of :attr:`agreement` (its name from when only classification existed)."""
        return self.agreement

    def to_dict(self) -> dict[str, Any]:
        """JSON, with ``top1_agreement`` kept as a deprecated alias of ``agreement`` for older readers."""
        d = asdict(self)
        d["top1_agreement"] = self.agreement
        d["worst"] = [asdict(w) for w in self.worst]
        return d

    def line(self) -> str:
        """One line for terminals."""
        return (
            f"max |Δoutput| {self.max_abs_diff:.2e} {'<=' if self.max_abs_diff <= self.atol else '>'} "
            f"{self.atol:.0e}, agreement {self.agreement:.2%} "
            f"{'>=' if self.agreement >= self.min_agreement else '<'} {self.min_agreement:.1%} "
            f"on {self.n} {self.split} images: {'PASSED' if self.passed else 'FAILED'}"
        )


def compare_outputs(
    reference: Mapping[str, np.ndarray] | np.ndarray,
    candidate: Mapping[str, np.ndarray] | np.ndarray,
    *,
    ids: Sequence[str],
    paths: Sequence[str],
    labels: Sequence[str],
    class_names: Sequence[str],
    atol: float,
    min_agreement: float,
    worst: int = 5,
    reference_name: str = "reference",
    candidate_name: str = "candidate",
    split: str = "test",
    task: Task | None = None,
) -> ParityReport:
    """Compare two models' outputs on the same images (pure).

    Whether two images agree is the task's question (:meth:`~cvplatform.tasks.base.Task.agreement`:
    the same top-1 class for classification), and the classes reported for the worst images are
    its :meth:`~cvplatform.tasks.base.Task.decode_top`; an image's difference is the task's
    :meth:`~cvplatform.tasks.base.Task.output_differences` (classification: the largest absolute difference
    over every output; detection: over its matched boxes and scores). ``mean_abs_diff`` is the mean of the
    images' differences.

    Args:
        reference: Outputs of the reference (PyTorch checkpoint), by name (``task.output_names``); a
            single array is the task's first output (classification's ``(N, C)`` logits).
        candidate: Outputs of the candidate (exported ONNX) on the same images, same order.
        ids / paths / labels: Manifest ``sha256``, ``path`` and ``label`` of each image.
        class_names: Class names of the model.
        atol: Largest allowed absolute difference.
        min_agreement: Smallest allowed share of images on which the task says the outputs agree.
        worst: How many images to list in :attr:`ParityReport.worst`.
        task: The project's task (``project.task``); default classification.

    Raises:
        DataError: no images, or outputs of different names or shapes.
        ModelError: the outputs do not fit the task's contract (e.g. ``C != len(class_names)``).

    Example:
        >>> import numpy as np
        >>> a = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
        >>> r = compare_outputs(a, a + 1e-6, ids=["h1", "h2"], paths=["a.png", "b.png"], labels=["x", "y"],
        ...                     class_names=["x", "y"], atol=1e-4, min_agreement=0.999)
        >>> r.passed, r.agreement
        (True, 1.0)
    """
    import numpy as np

    from cvplatform.tasks import get_task

    task = task or get_task()
    ref_out, cand_out = _as_outputs(task, reference), _as_outputs(task, candidate)
    shapes = ({k: v.shape for k, v in ref_out.items()}, {k: v.shape for k, v in cand_out.items()})
    if shapes[0] != shapes[1] or any(len(s) < 1 for s in shapes[0].values()):
        shown = [next(iter(s.values())) if len(s) == 1 else s for s in shapes]
        raise DataError(
            f"parity: {reference_name} outputs {shown[0]} and {candidate_name} outputs {shown[1]} differ in "
            "shape; both models must have the same classes and outputs."
        )
    n = next(iter(ref_out.values())).shape[0]
    if n == 0:
        raise DataError(f"parity: no {split} images to compare. Add images to the {split} split (re-run ingest).")
    names = list(class_names)
    task.check_outputs(ref_out, names)
    per_image = np.asarray(task.output_differences(ref_out, cand_out), np.float64).reshape(n)
    agreed = task.agreement(ref_out, cand_out)
    agree = np.ones(n, dtype=bool)
    agree[agreed.detail.get("disagree_rows", [])] = False
    agreement = agreed.rate
    disagreements = agreed.n - agreed.agree
    max_diff = float(per_image.max())
    reasons = []
    if not max_diff <= atol:
        reasons.append(f"max absolute output difference {max_diff:.3e} > export.parity.atol {atol:.1e}")
    if agreement < min_agreement:
        reasons.append(
            f"agreement {agreement:.4f} ({disagreements} of {n} images differ) < "
            f"export.parity.min_agreement {min_agreement}"
        )
    # disagreeing images first, then by difference (ties broken by sha256: deterministic)
    order = sorted(range(n), key=lambda i: (bool(agree[i]), -float(per_image[i]), str(ids[i])))[: max(0, worst)]
    ref_top, _ = task.decode_top({k: v[order] for k, v in ref_out.items()}, names)
    cand_top, _ = task.decode_top({k: v[order] for k, v in cand_out.items()}, names)
    worst_items = [
        ParityImage(str(paths[i]), str(ids[i]), str(labels[i]), float(per_image[i]), str(r), str(c))
        for i, r, c in zip(order, ref_top, cand_top, strict=True)
    ]
    mean_diff = float(np.mean(per_image)) if n else 0.0
    return ParityReport(
        reference=reference_name, candidate=candidate_name, split=split, n=int(n), max_abs_diff=max_diff,
        mean_abs_diff=mean_diff, agreement=agreement, disagreements=disagreements,
        atol=float(atol), min_agreement=float(min_agreement), passed=not reasons, reasons=reasons,
        worst=worst_items,
    )


#: The name from when only classification existed (one ``(N, C)`` logits array per model).
compare_logits = compare_outputs


def _as_outputs(task: Task, value: Mapping[str, np.ndarray] | np.ndarray) -> dict[str, np.ndarray]:
    import numpy as np

    if isinstance(value, Mapping):
        return {k: np.asarray(v) for k, v in value.items()}
    return {task.output_names[0]: np.asarray(value)}


def nonfinite_rows(outputs: Mapping[str, np.ndarray] | np.ndarray) -> np.ndarray:
    """Indices of rows holding NaN or Inf in any (floating) output.

    Example:
        >>> import numpy as np
        >>> nonfinite_rows(np.array([[0.0, 1.0], [np.nan, 0.0]])).tolist()
        [1]
        >>> nonfinite_rows({"boxes": np.zeros((2, 3, 4)), "scores": np.array([[0.5, np.inf, 0], [0, 0, 0]])}).tolist()
        [0]
    """
    import numpy as np

    arrays = list(outputs.values()) if isinstance(outputs, Mapping) else [outputs]
    bad: set[int] = set()
    for a in (np.asarray(a) for a in arrays):
        if a.ndim >= 1 and a.dtype.kind in "fc":
            bad.update(np.flatnonzero(~np.isfinite(a.reshape(a.shape[0], -1)).all(axis=1)).tolist())
    return np.asarray(sorted(bad), dtype=np.int64)


def check_finite(
    candidate: Mapping[str, np.ndarray] | np.ndarray, reference: Mapping[str, np.ndarray] | np.ndarray | None, *,
    candidate_name: str, reference_name: str,
    paths: Sequence[str],
) -> None:
    """Raise ModelError if the candidate's logits hold NaN/Inf, saying whether the reference does too.

    Example:
        >>> import numpy as np
        >>> check_finite(np.zeros((2, 3)), None, candidate_name="m.onnx", reference_name="", paths=["a", "b"])
    """
    bad = nonfinite_rows(candidate)
    if len(bad) == 0:
        return
    shown = ", ".join(str(paths[i]) for i in bad[:3]) + (" ..." if len(bad) > 3 else "")
    rows = len(next(iter(candidate.values()))) if isinstance(candidate, Mapping) else len(candidate)
    msg = (f"{candidate_name}: onnxruntime produced non-finite outputs (NaN/Inf) for {len(bad)} of {rows} images "
           f"({shown}). ")
    if reference is not None and len(nonfinite_rows(reference)) > 0:
        msg += (
            f"The PyTorch model {reference_name} produces them too, so the checkpoint itself is broken (NaN/Inf "
            "weights: training diverged). Retrain, e.g. with a lower train.optimizer.lr, and export again."
        )
    else:
        msg += (
            f"The PyTorch model {reference_name} does not, so the export introduced them. Try another "
            "export.opset or export.exporter, and report the model/opset if it persists."
        )
    raise ModelError(msg)


def run_parity(
    reference: Predictor,
    candidate: Predictor,
    images: np.ndarray,
    *,
    ids: Sequence[str],
    paths: Sequence[str],
    labels: Sequence[str],
    atol: float = 1e-4,
    min_agreement: float = 0.999,
    worst: int = 5,
    batch_size: int = 256,
    split: str = "test",
    task: Task | None = None,
    targets: Any = None,
    max_metric_delta: float | None = None,
    class_names: Sequence[str] | None = None,
) -> ParityReport:
    """Run both predictors on the same uint8 RGB images and compare their logits.

    With ``targets`` (the task's targets of the images) and ``max_metric_delta``, the task's headline metric
    (:meth:`~cvplatform.tasks.base.Task.int8_score`: accuracy, detection's mAP50) of both models must differ by
    at most ``max_metric_delta``.

    Args:
        reference: The PyTorch checkpoint (``TorchCheckpointPredictor``).
        candidate: The exported model (``OnnxPredictor``).
        images: ``(N, H, W, 3)`` uint8 RGB (any size; each predictor applies its contract).
        ids / paths / labels: Manifest ``sha256``, ``path``, ``label`` per image.

    Raises:
        ModelError: the models disagree on the classes, or the candidate produces NaN/Inf.
        DataError: no images.

    Example:
        >>> from cvplatform.evaluation.predictors import OnnxPredictor, TorchCheckpointPredictor
        >>> report = run_parity(TorchCheckpointPredictor("best.ckpt"), OnnxPredictor("model.onnx"),
        ...                     images, ids=ids, paths=paths, labels=labels)  # doctest: +SKIP
        >>> report.passed  # doctest: +SKIP
        True
    """
    if list(reference.class_names) != list(candidate.class_names):
        raise ModelError(
            f"{candidate.name}: classes {list(candidate.class_names)} differ from {reference.name}'s "
            f"{list(reference.class_names)}; the exported metadata does not describe this checkpoint. Re-export."
        )
    ref = reference.predict(images, batch_size=batch_size)
    cand = candidate.predict(images, batch_size=batch_size)
    check_finite(cand, ref, candidate_name=candidate.name, reference_name=reference.name, paths=paths)
    report = compare_outputs(
        ref, cand, ids=ids, paths=paths, labels=labels, class_names=reference.class_names, atol=atol,
        min_agreement=min_agreement, worst=worst, reference_name=reference.name, candidate_name=candidate.name,
        split=split, task=task,
    )
    if targets is not None and max_metric_delta is not None:
        report = check_metric_delta(report, ref, cand, targets, list(class_names or reference.class_names),
                                    max_metric_delta, task)
    return report


def check_metric_delta(report: ParityReport, reference: Any, candidate: Any, targets: Any,
                       class_names: Sequence[str], max_delta: float, task: Task | None = None) -> ParityReport:
    """Add the headline-metric comparison to ``report`` (pure): ``|metric(candidate) - metric(reference)|`` must be
    ``<= max_delta`` (undefined metrics, e.g. no box in the images, are recorded and not judged)."""
    import math

    from cvplatform.tasks import get_task

    task = task or get_task()
    ref_out, cand_out = _as_outputs(task, reference), _as_outputs(task, candidate)
    a = float(task.int8_score(ref_out, targets, class_names))
    b = float(task.int8_score(cand_out, targets, class_names))
    delta = abs(b - a)
    report.metric = {"name": task.int8_metric, "reference": a, "candidate": b,
                     "delta": None if math.isnan(delta) else delta, "max_delta": float(max_delta)}
    if not math.isnan(delta) and delta > max_delta:
        report.reasons.append(f"{task.int8_metric} {b:.4f} vs {a:.4f}: |Δ| {delta:.4f} > "
                              f"export.parity.max_metric_delta {max_delta}")
        report.passed = False
    return report


def raise_if_failed(report: ParityReport, *, report_path: str | None = None) -> None:
    """Raise :class:`GateFailed` naming the failed criteria and the worst images when ``report`` failed.

    Example:
        >>> raise_if_failed(report, report_path="artifacts/export/parity.json")  # doctest: +SKIP
    """
    if report.passed:
        return
    lines = "\n".join(f"  - {r}" for r in report.reasons)
    worst = "\n".join(
        f"    {w.path} (sha256 {w.sha256[:12]}…, label {w.label}): max |Δlogit| {w.max_abs_diff:.3e}, "
        f"top-1 {w.reference_top1} (PyTorch) vs {w.candidate_top1} (ONNX)"
        for w in report.worst
    )
    raise GateFailed(
        f"parity gate failed: {report.candidate} does not reproduce {report.reference} on {report.n} "
        f"{report.split} images:\n{lines}\n  worst images:\n{worst}\n"
        + (f"  details: {report_path}\n" if report_path else "")
        + "The exported graph computes something else than the checkpoint: try another export.opset or "
        "export.exporter; loosen export.parity.atol only if the difference is numerical noise."
    )


__all__ = [
    "ParityImage",
    "ParityReport",
    "check_finite",
    "compare_logits",
    "nonfinite_rows",
    "raise_if_failed",
    "check_metric_delta",
    "run_parity",
]
