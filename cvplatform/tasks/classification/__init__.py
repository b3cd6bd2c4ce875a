"""Image classification: one label per image, a ``logits (N, C)`` output, softmax confidences.

What the stages ask of it (see :class:`cvplatform.tasks.base.Task`):

* targets: the manifest's ``label`` column, stored as ``data/raw/<label>/<sha256>.png``;
* training: :class:`~cvplatform.tasks.classification.module.ClassifierModule` (cross-entropy,
  accuracy and macro-F1 from torchmetrics), monitored on ``val_acc`` by default; ``calibrate`` fits
  a temperature on the validation logits (:mod:`cvplatform.tasks.classification.calibration`);
* contract: ONNX output ``logits``; ``C == len(class_names)``; output index ``i`` is ``class_names[i]``;
* agreement (parity, INT8, canary shadow): share of images with the same top-1 class;
* evaluation: accuracy, macro-F1, ECE with bootstrap intervals (:mod:`cvplatform.tasks.classification.metrics`;
  ``evaluate_scenario`` builds the :class:`~cvplatform.tasks.classification.metrics.ScenarioResult` the gates read);
* INT8 acceptance: ``int8_score`` = accuracy (share of images whose top-1 class is the label);
* serving: ``{"class", "confidence", "probabilities"}`` per image (``decode_top`` for the statistics and
  counters); OIP v2 outputs ``probabilities`` ``[N, C]`` and ``label`` ``[N]``; monitoring: predicted
  class and confidence.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from cvplatform.errors import ModelError
from cvplatform.tasks.base import Agreement, MetricSpec, MonitorSpec, Task, bound_check, gate_check


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (numerically stable).

    Example:
        >>> softmax(np.array([[0.0, 0.0]], np.float32)).tolist()
        [[0.5, 0.5]]
    """
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _sample_size_check(scenario: str, res: Any, minimum: int) -> dict[str, Any]:
    """The ``min_images_per_class`` gate check of the clean scenario."""
    m = res.metrics
    assert m is not None
    small = {c: n for c, n in m.support.items() if n < minimum}
    fewest = min(m.support.values(), default=0)
    if not small:
        return gate_check("min_images_per_class", scenario, "passed", "must_pass",
                         f"every class has >= {minimum} images (fewest: {fewest})", float(fewest), float(minimum))
    shown = ", ".join(f"{c!r}: {n}" for c, n in sorted(small.items(), key=lambda kv: kv[1])[:8])
    return gate_check(
        "min_images_per_class", scenario, "failed", "must_pass",
        f"{len(small)} class(es) have fewer than {minimum} images ({shown}): the split is too small to support the "
        "suite's floors. Add labelled images (or a larger ingest.split.test share), do not shrink evaluate.max_images "
        "below it, or lower min_images_per_class in the suite knowingly",
        float(fewest), float(minimum),
    )


class ClassificationTask(Task):
    """One label per image (see the module docstring)."""

    name: ClassVar[str] = "classification"
    description: ClassVar[str] = "one label per image (softmax over class logits)"
    interval_note: ClassVar[str] = ("accuracy and recall Wilson score; macro-F1 percentile bootstrap; "
                                    "champion difference paired bootstrap")
    curated_defaults: ClassVar[Mapping[str, float]] = {"min_accuracy": 1.0}  # every listed image right
    gallery_title: ClassVar[str] = "Worst failures (most confident wrong predictions)"
    gallery_columns: ClassVar[tuple[str, str, str]] = ("true", "predicted", "confidence")

    # ------------------------------------------------------------------ data
    @property
    def target_kind(self) -> str:
        return "label"

    def albumentations_targets(self) -> dict[str, Any]:
        return {}

    def target_of(self, row: Mapping[str, Any], class_index: Mapping[str, int]) -> int:
        label = str(row["label"])
        if label not in class_index:
            raise ModelError(f"label {label!r} of {row.get('path', '?')} is not one of the classes {list(class_index)}.")
        return int(class_index[label])

    # ------------------------------------------------------------------ training
    calibration: ClassVar[str] = "temperature scaling"

    def calibrate(self, outputs: Mapping[str, np.ndarray], targets: Sequence[Any]) -> dict[str, float] | None:
        """Temperature scaling on the validation logits (:func:`~cvplatform.tasks.classification.calibration.calibrate`).

        Example:
            >>> fit = ClassificationTask().calibrate({"logits": np.array([[4.0, 0.0], [0.0, 4.0]])}, [np.array([0, 1])])
            >>> fit["accuracy"], fit["temperature"] < 1.0
            (1.0, True)
        """
        from cvplatform.tasks.classification.calibration import calibrate

        labels = np.concatenate([np.asarray(t) for t in targets]) if len(targets) else np.zeros(0, np.int64)
        return calibrate(np.asarray(outputs["logits"]), labels)

    def build_module(self, **kwargs: Any) -> Any:
        from cvplatform.tasks.classification.module import ClassifierModule

        return ClassifierModule(**kwargs)

    @property
    def monitor(self) -> MonitorSpec:
        return MonitorSpec({"val_acc": "max", "val_f1": "max", "val_loss": "min"}, default="val_acc")

    # ------------------------------------------------------------------ contract
    @property
    def output_names(self) -> tuple[str, ...]:
        return ("logits",)

    def check_outputs(self, outputs: Mapping[str, np.ndarray], class_names: Sequence[str]) -> None:
        logits = outputs.get("logits")
        if logits is None:
            raise ModelError(f"the model has no 'logits' output (outputs: {sorted(outputs)}); a classification "
                             "model must return logits (N, C).")
        shape = tuple(np.shape(logits))
        if len(shape) != 2 or shape[1] != len(class_names):
            raise ModelError(f"logits of shape {shape} do not fit {len(class_names)} class names {list(class_names)}: "
                             f"expected (N, {len(class_names)}); a classification model returns (N, C) with C = the "
                             "number of classes.")

    def decode(self, outputs: Mapping[str, np.ndarray], class_names: Sequence[str]) -> list[dict[str, Any]]:
        self.check_outputs(outputs, class_names)
        probs = softmax(outputs["logits"])
        top = probs.argmax(axis=1)
        return [{"index": int(i), "class": class_names[int(i)], "confidence": float(row[i]), "probs": row}
                for i, row in zip(top, probs, strict=True)]

    def agreement(self, reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray]) -> Agreement:
        ref = np.asarray(reference["logits"], dtype=np.float64)
        cand = np.asarray(candidate["logits"], dtype=np.float64)
        if ref.shape != cand.shape:
            raise ModelError(f"cannot compare outputs of shapes {ref.shape} and {cand.shape}.")
        same = ref.argmax(axis=1) == cand.argmax(axis=1)
        diff = float(np.max(np.abs(ref - cand))) if ref.size else 0.0
        return Agreement(n=int(len(ref)), agree=int(same.sum()), max_abs_diff=diff,
                         detail={"disagree_rows": np.flatnonzero(~same).tolist()})

    # ------------------------------------------------------------------ evaluation
    @property
    def metrics(self) -> tuple[MetricSpec, ...]:
        return (
            MetricSpec("accuracy", headline=True, short="accuracy", description="share of images with the right class"),
            MetricSpec("macro_f1", headline=True, short="f1", label="macro-F1",
                       description="unweighted mean of per-class F1"),
            MetricSpec("ece", higher_is_better=False, headline=True, short="ece", label="ECE",
                       description="expected calibration error of the softmax confidence"),
        )

    def score(self, outputs: Mapping[str, np.ndarray], targets: Any, class_names: Sequence[str],
              **options: Any) -> dict[str, Any]:
        from cvplatform.tasks.classification.metrics import compute_metrics

        self.check_outputs(outputs, class_names)
        m = compute_metrics(np.asarray(targets, dtype=np.int64), softmax(outputs["logits"]), class_names, **options)
        return {"accuracy": m.accuracy, "accuracy_ci": list(m.accuracy_ci), "macro_f1": m.macro_f1,
                "macro_f1_ci": list(m.macro_f1_ci), "ece": m.ece, "n": m.n}

    @property
    def int8_metric(self) -> str:
        return "accuracy"

    def int8_score(self, outputs: Mapping[str, np.ndarray], targets: Any, class_names: Sequence[str]) -> float:
        """Accuracy: the share of images whose top-1 class is the label (no intervals).

        Example:
            >>> ClassificationTask().int8_score({"logits": np.array([[2.0, 0.0], [2.0, 0.0]])}, [0, 1], ["a", "b"])
            0.5
        """
        self.check_outputs(outputs, class_names)
        pred = np.asarray(outputs["logits"]).argmax(axis=1)
        return float((pred == np.asarray(targets)).mean())

    def evaluate_scenario(self, name: str, kind: str, image_ids: Sequence[str], targets: Any,
                          outputs: Mapping[str, np.ndarray], class_names: Sequence[str], **options: Any) -> Any:
        """A :class:`~cvplatform.tasks.classification.metrics.ScenarioResult` from the scenario's logits
        (softmax probabilities; an empty scenario keeps its empty array and gets ``metrics=None``)."""
        from cvplatform.tasks.classification.metrics import ScenarioResult

        logits = outputs["logits"]
        if len(image_ids):
            self.check_outputs(outputs, class_names)
        probs = softmax(logits) if len(image_ids) else logits
        return ScenarioResult.from_predictions(name, kind, image_ids, targets, probs, class_names, **options)

    # ------------------------------------------------------------------ gates
    @property
    def extra_gate_keys(self) -> tuple[str, ...]:
        return ("max_critical_fpr",)

    def support_checks(self, scenario: str, result: Any, policy: Any) -> list[Any]:
        """``min_images_per_class``: every class needs that many images in the clean scenario."""
        if policy.min_images_per_class is None:
            return []
        return [_sample_size_check(scenario, result, int(policy.min_images_per_class))]

    def extra_gate_checks(self, scenario: str, gate: Any, result: Any, policy: Any) -> list[Any]:
        """``critical_fpr:<class>``: each critical class's false-positive rate against ``max_critical_fpr``."""
        if gate.max_critical_fpr is None:
            return []
        flvl = gate.level_of("max_critical_fpr")
        if not policy.critical_classes:
            return [gate_check("critical_fpr", scenario, "skipped", flvl,
                              "max_critical_fpr set but the suite lists no critical_classes", None,
                              gate.max_critical_fpr)]
        return [bound_check(f"critical_fpr:{cls}", scenario, flvl, result.metrics.critical_fpr.get(cls),
                            gate.max_critical_fpr, f"false-positive rate of '{cls}'",
                            "undefined (no images outside the class)")
                for cls in policy.critical_classes]

    @property
    def paired_metric(self) -> str:
        return "accuracy"

    def paired_delta(self, challenger: Any, champion: Any, *, n_bootstrap: int = 1000, confidence: float = 0.95,
                     seed: int = 0) -> tuple[float, float, float]:
        """Paired bootstrap of the accuracy difference on the same images (per-image correctness)."""
        from cvplatform.tasks.classification.metrics import paired_bootstrap_delta

        return paired_bootstrap_delta(challenger.correct, champion.correct, n_bootstrap=n_bootstrap,
                                      confidence=confidence, seed=seed)

    def corruption_summary(self, clean: Any, corrupted: Mapping[tuple[str, int], Any],
                           reference: Mapping[tuple[str, int], Any] | None, reference_name: str | None) -> dict[str, Any]:
        """mCE (vs the champion), the error multiple vs clean and the mean degradation (``corruption_error_summary``)."""
        from cvplatform.tasks.classification.metrics import corruption_error_summary

        errors = {k: r.metrics.error for k, r in corrupted.items() if r.metrics is not None}
        ref = {k: r.metrics.error for k, r in reference.items() if r.metrics is not None} if reference else None
        return corruption_error_summary(clean.metrics.error if clean.metrics else 1.0, errors, clean.n, ref,
                                        reference_name)

    def scenario_extras(self, result: Any) -> dict[str, Any]:
        return {"critical_fpr": dict(result.metrics.critical_fpr) if result.metrics else {}}

    @property
    def corruption_headline(self) -> tuple[str, str]:
        return "accuracy", "corrupt_acc"

    def report_details(self, result: Any, class_names: Sequence[str], plots_dir: Any) -> dict[str, Any]:
        from cvplatform.tasks.classification.report import report_details

        return report_details(result, class_names, plots_dir)

    def worst_images(self, result: Any, class_names: Sequence[str], k: int) -> list[tuple[int, str, str, float]]:
        """The most confident wrong predictions (ties by image id)."""
        wrong = np.flatnonzero(~result.correct)
        if k <= 0 or len(wrong) == 0:
            return []
        conf = result.confidence[wrong]
        order = wrong[np.lexsort((np.array([result.image_ids[i] for i in wrong]), -conf))][:k]
        return [(int(i), class_names[int(result.y_true[i])], class_names[int(result.y_pred[i])],
                 float(result.confidence[i])) for i in order]

    # ------------------------------------------------------------------ serving, monitoring
    def response(self, prediction: Mapping[str, Any], class_names: Sequence[str]) -> dict[str, Any]:
        return {"class": prediction["class"], "confidence": float(prediction["confidence"]),
                "probabilities": {n: float(p) for n, p in zip(class_names, prediction["probs"], strict=True)}}

    def prediction_signal(self, prediction: Mapping[str, Any]) -> dict[str, float]:
        return {"class_index": float(prediction["index"]), "confidence": float(prediction["confidence"])}

    def decode_top(self, outputs: Mapping[str, np.ndarray], class_names: Sequence[str]
                   ) -> tuple[np.ndarray, np.ndarray]:
        """Top-1 class names and their softmax probabilities, one vectorised pass over the batch.

        Example:
            >>> classes, conf = ClassificationTask().decode_top({"logits": np.array([[0.0, 2.0], [1.0, 1.0]])}, ["a", "b"])
            >>> classes.tolist(), conf.round(3).tolist()
            (['b', 'a'], [0.881, 0.5])
        """
        self.check_outputs(outputs, class_names)
        probs = softmax(outputs["logits"])
        top = probs.argmax(axis=1)
        return np.asarray(class_names, dtype=object)[top], probs[np.arange(len(top)), top]

    def tensor_output_specs(self, class_names: Sequence[str]) -> list[dict[str, Any]]:
        return [{"name": "probabilities", "datatype": "FP32", "shape": [-1, len(class_names)]},
                {"name": "label", "datatype": "BYTES", "shape": [-1]}]

    def tensor_outputs(self, outputs: Mapping[str, np.ndarray], class_names: Sequence[str],
                       wanted: Sequence[str]) -> list[dict[str, Any]]:
        self.check_outputs(outputs, class_names)
        probs = softmax(outputs["logits"])
        out: list[dict[str, Any]] = []
        for w in wanted:
            if w == "probabilities":
                out.append({"name": "probabilities", "datatype": "FP32", "shape": list(probs.shape),
                            "data": probs.ravel()})
            elif w == "label":
                labels = np.asarray(class_names, dtype=object)[probs.argmax(axis=1)]
                out.append({"name": "label", "datatype": "BYTES", "shape": [probs.shape[0]], "data": labels.tolist()})
            else:
                raise ModelError(f"classification has no output {w!r}; choose from ['probabilities', 'label'].")
        return out

    # ------------------------------------------------------------------ review
    def summary_lines(self, scenarios: Mapping[str, Any], class_names: Sequence[str]) -> list[str]:
        names = ", ".join(f"`{c}`" for c in class_names)
        lines = [f"- **task**: {self.name}; **{len(class_names)} classes**: {names}"]
        clean = scenarios.get("clean") or {}
        if clean:
            def num(k: str) -> str:
                v = clean.get(k)
                return "—" if v is None else f"{float(v):.4f}"
            lines.append(f"- **clean**: accuracy {num('accuracy')}, macro-F1 {num('macro_f1')}, ECE {num('ece')}")
        return lines


__all__ = ["ClassificationTask", "softmax"]
