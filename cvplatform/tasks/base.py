"""The ``Task`` interface: everything that differs between computer-vision tasks, in one place.

A stage (ingest, validate, train, evaluate, export, register, serve, canary, monitor) is written
once; where it needs to know *what the model predicts*, it asks the project's task
(``project.task`` in ``params.yaml``, looked up with :func:`cvplatform.tasks.get_task`).

The interface is designed for three consumers (docs/adr/0010-task-seam.md maps each method):

* **classification**: one label per image; output ``logits (N, C)``;
* **object detection**: a variable-length list of boxes per image; outputs after NMS
  (``boxes``, ``scores``, ``labels`` and a per-image count);
* **semantic segmentation**: a dense per-pixel class map; output ``logits (N, C, H, W)``.

Methods are grouped by the stage that calls them. Everything a method returns is plain data
(numpy arrays, dicts of primitives, pydantic models) so stages can log, store and compare it
without knowing the task. A task is a stateless object: build one per process with
:func:`cvplatform.tasks.get_task`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from cvplatform.preprocess import PreprocessContract


def gate_check(name: str, scenario: str, status: str, level: str, reason: str, value: float | None = None,
               threshold: float | None = None) -> dict[str, Any]:
    """A task's gate check as plain data (the gates build ``cvplatform.evaluation.gates.GateCheck`` from it;
    a task never imports the evaluation stage)."""
    return {"name": name, "scenario": scenario, "status": status, "level": level, "reason": reason,
            "value": value, "threshold": threshold}


def bound_check(name: str, scenario: str, level: str, value: float | None, bound: float, label: str,
                undefined: str = "undefined") -> dict[str, Any]:
    """``value <= bound`` as a :func:`gate_check` (skipped, saying ``label undefined``, without a value)."""
    if value is None:
        return gate_check(name, scenario, "skipped", level, f"{label} {undefined}", None, bound)
    ok = value <= bound + 1e-9
    return gate_check(name, scenario, "passed" if ok else "failed", level,
                      f"{label} {value:.4f} {'<=' if ok else '>'} bound {bound:.4f}", value, bound)


def floor_check(name: str, scenario: str, level: str, value: float | None, floor: float, label: str,
                undefined: str = "undefined") -> dict[str, Any]:
    """``value >= floor`` as a :func:`gate_check` (skipped, saying ``label undefined``, without a value)."""
    if value is None:
        return gate_check(name, scenario, "skipped", level, f"{label} {undefined}", None, floor)
    ok = value >= floor - 1e-9
    return gate_check(name, scenario, "passed" if ok else "failed", level,
                      f"{label} {value:.4f} {'>=' if ok else '<'} floor {floor:.4f}", value, floor)


@dataclass(frozen=True)
class MetricSpec:
    """One number a task reports for a scenario, and how a gate may threshold it.

    ``name`` is the key in ``scenarios.json`` and the gate threshold suffix (``min_<name>`` when
    ``higher_is_better``, else ``max_<name>``); ``headline`` puts it into ``metrics.json``
    (``dvc metrics show``) under ``short``.
    """

    name: str
    higher_is_better: bool = True
    headline: bool = False
    short: str | None = None
    description: str = ""
    label: str | None = None
    """How gate reasons and reports name it (default: ``name``), e.g. ``macro-F1``."""

    @property
    def gate_key(self) -> str:
        return f"{'min' if self.higher_is_better else 'max'}_{self.name}"

    @property
    def relative_gate_key(self) -> str | None:
        """``min_relative_<name>`` (a floor as a fraction of the clean scenario's value); only for
        higher-is-better metrics."""
        return f"min_relative_{self.name}" if self.higher_is_better else None

    @property
    def display(self) -> str:
        return self.label or self.name


@dataclass(frozen=True)
class MonitorSpec:
    """The validation metrics a run may select its best checkpoint on, and their direction."""

    metrics: Mapping[str, str]  # name -> "max" | "min"
    default: str

    def mode(self, name: str) -> str:
        return self.metrics[name]


@dataclass
class Agreement:
    """How far two models' outputs on the same images agree (parity, INT8, canary shadow)."""

    n: int
    agree: int
    max_abs_diff: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.agree / self.n if self.n else 1.0


@dataclass(frozen=True)
class RequestParameter:
    """A per-request setting of how a served model's outputs are decoded (``/v1/predict`` query or JSON
    ``parameters``, OIP v2 request ``parameters``), bounded to ``[low, high]``; ``default`` when not sent.

    ``kind`` is ``"float"`` or ``"int"`` (an int parameter refuses fractions and booleans; a float one takes
    ints). The server refuses a value of the wrong type or outside the bounds with a 422 naming both.
    """

    name: str
    kind: str
    low: float
    high: float
    default: float
    description: str = ""

    def json_schema(self) -> dict[str, Any]:
        """The OpenAPI / JSON schema of the parameter."""
        typ = "integer" if self.kind == "int" else "number"
        cast = int if self.kind == "int" else float
        return {"type": typ, "minimum": cast(self.low), "maximum": cast(self.high), "default": cast(self.default),
                "description": self.description}


@dataclass(frozen=True)
class ServedMetric:
    """A Prometheus metric a task adds to ``/metrics`` (labelled ``model, version, variant``, plus ``class`` when
    ``by_class``), fed by :meth:`Task.served_observations` on every answered request."""

    name: str
    """The family name (``cvplatform_...``; a counter's ``_total`` suffix is added by the client library)."""
    kind: str
    """``"histogram"`` or ``"counter"``."""
    description: str
    buckets: tuple[float, ...] = ()
    by_class: bool = False


class Task(ABC):
    """What a computer-vision task contributes to every stage (see the module docstring).

    Subclasses set :attr:`name` and implement every abstract method; the registry in
    :mod:`cvplatform.tasks` maps ``project.task`` to the class.
    """

    #: The value of ``project.task`` that selects this task.
    name: ClassVar[str]
    #: One line for ``cvplatform tasks`` and error messages.
    description: ClassVar[str] = ""
    #: The post-hoc calibration :meth:`calibrate` fits (e.g. ``temperature scaling``); empty when the
    #: task has none, and training then skips the validation pass it would need.
    calibration: ClassVar[str] = ""

    # ------------------------------------------------------------------ data (ingest, validate, datamodule)
    @property
    @abstractmethod
    def target_kind(self) -> str:
        """How targets are stored beside the manifest: ``label`` (a manifest column), ``boxes``
        (an annotation table, one row per box), ``mask`` (a mask image per image)."""

    @abstractmethod
    def albumentations_targets(self) -> dict[str, Any]:
        """Keyword arguments for ``albumentations.Compose`` beyond the image: ``{}`` for
        classification, ``{"bbox_params": BboxParams(...)}`` for detection, ``{"additional_targets": ...}``
        or nothing for segmentation (``mask`` is native)."""

    @abstractmethod
    def target_of(self, row: Mapping[str, Any], class_index: Mapping[str, int]) -> Any:
        """The training target of one manifest row (an int class index, a box array, a mask path)."""

    def collate(self, batch: Sequence[tuple[Any, Any]]) -> tuple[Any, Any]:
        """Stack a list of ``(image, target)``; the default suits fixed-size targets."""
        import torch
        from torch.utils.data import default_collate

        images = torch.stack([b[0] for b in batch])
        return images, default_collate([b[1] for b in batch])

    def transform_sample(self, transform: Any, image: np.ndarray, target: Any) -> tuple[Any, Any]:
        """Run one sample through the albumentations pipeline ``transform`` (built with
        :meth:`albumentations_targets`): ``(transformed image, target moved with it)``.

        The default transforms the image only and keeps the target (a class index does not move with a
        flip); detection passes its boxes as ``bboxes`` so they follow every flip, crop and resize.
        """
        return transform(image=image)["image"], target

    def class_names(self, frame: Any, root: Path, source: str, *, for_training: bool = True) -> list[str]:
        """The model's classes, in output order, from the manifest ``frame`` (a DataFrame with ``path``,
        ``sha256``, ``label``, ``split``; relative paths are under ``root``; ``source`` names the manifest in
        errors). With ``for_training`` (the datamodule) it also checks what training needs; without (export
        comparing a checkpoint's classes with the manifest) it only reads them.

        The default reads the ``label`` column: its sorted unique values; for training, none missing, at least
        two, each with an image in the train split (classification). Raises
        :class:`~cvplatform.errors.DataError` naming the manifest and the fix.
        """
        from cvplatform.errors import DataError

        if not for_training:
            return sorted({str(v) for v in frame["label"].tolist()})
        if frame["label"].isna().any():
            n = int(frame["label"].isna().sum())
            raise DataError(f"{source}: {n} row(s) have no label. Re-run `cvplatform ingest` to rebuild the manifest.")
        labels, split = frame["label"].astype(str), frame["split"].astype(str)
        classes = sorted(labels.unique().tolist())
        if len(classes) < 2:
            raise DataError(
                f"{source}: found {len(classes)} class(es) {classes}; a classifier needs at least 2. "
                "Add images of other classes and re-run `cvplatform ingest`."
            )
        missing_train = [c for c in classes if not ((labels == c) & (split == "train")).any()]
        if missing_train:
            raise DataError(
                f"{source}: class(es) {missing_train} have no image in the train split. Add images of those "
                "classes (or remove them) and re-run `cvplatform ingest`."
            )
        return classes

    # ------------------------------------------------------------------ training
    @abstractmethod
    def build_module(self, **kwargs: Any) -> Any:
        """The LightningModule: head on the architecture, loss, torchmetrics, logged metric names."""

    def module_options(self, train: Any) -> dict[str, Any]:
        """Keyword arguments of :meth:`build_module` from the task's own ``train`` section (``train.detector`` for
        detection), beside the ones every task gets (architecture, classes, optimiser, ...). Default: none."""
        return {}

    @property
    @abstractmethod
    def monitor(self) -> MonitorSpec:
        """The validation metrics ``train.monitor`` may name, with their direction."""

    def calibrate(self, outputs: Mapping[str, np.ndarray], targets: Sequence[Any]) -> dict[str, float] | None:
        """Fit the task's post-hoc calibration on the best checkpoint's validation outputs.

        ``outputs`` are the raw outputs of every validation image (keyed by :attr:`output_names`),
        ``targets`` the validation batches' targets as the datamodule collated them. Returns
        ``None`` (the default: nothing to calibrate) or numbers for the training log and MLflow
        with ``temperature``: the scalar the network's output is divided by, which training records
        in the checkpoint (every later user, the ONNX graph included, applies it). Classification
        fits a temperature by minimum negative log-likelihood (temperature scaling).
        """
        return None

    def rebuild_network(self, hparams: Mapping[str, Any], state_dict: Mapping[str, Any], source: str) -> Any:
        """The network a checkpoint holds, as evaluation and export run it (an ``nn.Module`` whose outputs are
        :attr:`output_names`), rebuilt from the checkpoint's ``hyper_parameters`` and its weights
        (``state_dict``, keys as the LightningModule saved them).

        The default rebuilds ``build_model(arch, num_classes, **arch_kwargs)`` and loads the ``model.`` weights
        (classification's network: images in, one output out). Detection rebuilds its training module and
        returns the network with the in-graph decoding (``DetectionModule.exportable()``).

        Raises:
            ModelError: the architecture cannot be rebuilt or the weights do not fit it (naming ``source``).
        """
        from cvplatform.errors import ModelError
        from cvplatform.models import build_model

        try:
            model = build_model(str(hparams["arch"]), int(hparams["num_classes"]), **dict(hparams["arch_kwargs"]))
        except ModelError as exc:
            raise ModelError(f"{source}: cannot rebuild the recorded architecture: {exc}") from None
        prefix = "model."
        state = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            detail = " ".join(str(exc).split())[:400]
            raise ModelError(
                f"{source}: weights do not fit architecture {hparams['arch']!r} {hparams['arch_kwargs']}: {detail}. "
                "The checkpoint is inconsistent; retrain with `cvplatform train`."
            ) from None
        return model

    # ------------------------------------------------------------------ contract, export, runtime
    @property
    @abstractmethod
    def output_names(self) -> tuple[str, ...]:
        """Names of the ONNX graph outputs (the serving and evaluation contract)."""

    @abstractmethod
    def check_outputs(self, outputs: Mapping[str, np.ndarray], class_names: Sequence[str]) -> None:
        """Raise a clear error when raw outputs do not fit the contract (e.g. ``C != len(class_names)``)."""

    @abstractmethod
    def decode(self, outputs: Mapping[str, np.ndarray], class_names: Sequence[str]) -> list[dict[str, Any]]:
        """Raw model outputs of ``N`` images -> ``N`` typed predictions (plain dicts; detection's
        are variable-length lists of boxes)."""

    @abstractmethod
    def agreement(self, reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray]) -> Agreement:
        """How two models' raw outputs on the same images agree: ONNX vs PyTorch parity, INT8 vs
        FP32 and the canary's shadow comparison all use this (top-1 for classification, matched
        boxes at IoU 0.5 for detection, pixel agreement for segmentation)."""

    def output_differences(self, reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray]
                           ) -> np.ndarray:
        """Per image, the largest absolute difference between two models' outputs (what the parity gate holds to
        ``export.parity.atol``). Default: element by element over every output (classification's logits)."""
        n = next(iter(reference.values())).shape[0]
        diffs = [np.abs(np.asarray(reference[k], np.float64) - np.asarray(candidate[k], np.float64)).reshape(n, -1)
                 for k in reference]
        return np.max(np.concatenate(diffs, axis=1), axis=1) if diffs else np.zeros(n)

    # ------------------------------------------------------------------ evaluation and gates
    @property
    @abstractmethod
    def metrics(self) -> tuple[MetricSpec, ...]:
        """The per-scenario numbers, their gate keys and which are headline metrics."""

    @abstractmethod
    def score(self, outputs: Mapping[str, np.ndarray], targets: Any, class_names: Sequence[str],
              **options: Any) -> dict[str, Any]:
        """Every metric of :attr:`metrics` for one scenario (with its resampling intervals)."""

    @property
    @abstractmethod
    def int8_metric(self) -> str:
        """The :attr:`metrics` name on which an INT8 model must stay within tolerance of FP32."""

    def int8_score(self, outputs: Mapping[str, np.ndarray], targets: Any, class_names: Sequence[str]) -> float:
        """The point estimate of :attr:`int8_metric` on one scenario (no resampling intervals).

        Export's INT8 acceptance calls it for the FP32 and the INT8 model on every judged scenario
        and compares the two numbers. The default takes ``score(...)[int8_metric]``; a task overrides
        it when the point estimate is much cheaper than :meth:`score` with its intervals.
        Classification returns the accuracy (share of images whose top-1 class is the label);
        detection returns mAP50 over the scenario's images (boxes matched at IoU 0.5 per class);
        segmentation returns the mIoU of the predicted class maps against the masks.
        """
        return float(self.score(outputs, targets, class_names)[self.int8_metric])

    @abstractmethod
    def evaluate_scenario(self, name: str, kind: str, image_ids: Sequence[str], targets: Any,
                          outputs: Mapping[str, np.ndarray], class_names: Sequence[str], **options: Any) -> Any:
        """One scenario's result for the evaluation gates and report: the per-image outcomes (kept so
        a champion can be compared image by image) plus every metric of :attr:`metrics` with its
        intervals; ``options`` are the suite's (critical classes, bootstrap samples, confidence,
        seed, calibration bins, note, corruption, severity).

        Classification returns a :class:`~cvplatform.tasks.classification.metrics.ScenarioResult`
        (softmax probabilities, top-1 predictions, accuracy/macro-F1/ECE). Detection returns the
        per-image matched boxes and mAP/mAP50 with image-bootstrap intervals; segmentation the
        per-image confusion counts and mIoU. An empty scenario (no images) yields a result whose
        metrics are ``None``.
        """

    # ------------------------------------------------------------------ gates (scenario-result protocol)
    # What :meth:`evaluate_scenario` returns must offer: ``name``, ``kind``, ``image_ids``, ``n``, ``note``,
    # ``values`` (metric name -> float or None, every name of :attr:`metrics`) and ``intervals`` (metric
    # name -> ``(low, high)`` or None). The gates (cvplatform/evaluation/gates.py) read nothing else.
    @property
    def extra_gate_keys(self) -> tuple[str, ...]:
        """Threshold keys of the task's own checks (:meth:`extra_gate_checks`) beyond its metrics' ``min_``/``max_``
        keys; classification: ``max_critical_fpr``."""
        return ()

    def support_checks(self, scenario: str, result: Any, policy: Any) -> list[dict[str, Any]]:
        """Gate checks on the clean scenario that say whether the split can support the suite's floors at all
        (classification: ``min_images_per_class``), each the fields of ``cvplatform.evaluation.gates.GateCheck``
        as a dict (``name, scenario, status, level, reason, value, threshold``); none by default."""
        return []

    def extra_gate_checks(self, scenario: str, gate: Any, result: Any, policy: Any) -> list[dict[str, Any]]:
        """The checks of :attr:`extra_gate_keys` for one scenario (classification: each critical class's
        false-positive rate against ``max_critical_fpr``); none by default."""
        return []

    @property
    def paired_metric(self) -> str:
        """What :meth:`paired_delta` measures, in gate reasons (default: the first headline metric)."""
        return next((m.display for m in self.metrics if m.headline), self.metrics[0].display)

    def paired_delta(self, challenger: Any, champion: Any, *, n_bootstrap: int = 1000, confidence: float = 0.95,
                     seed: int = 0) -> tuple[float, float, float]:
        """``(delta, low, high)``: how much better the challenger is than the champion on the same images
        (positive = better), with a paired bootstrap interval; the ``max_drop`` gate fails when ``low`` is
        below ``-max_drop``. Classification: the accuracy difference."""
        from cvplatform.errors import ConfigError

        raise ConfigError(f"task {self.name!r} cannot compare a model with the champion (no paired_delta); "
                          "remove max_drop from the suite or set evaluate.compare_champion: false.")

    def corruption_summary(self, clean: Any, corrupted: Mapping[tuple[str, int], Any],
                           reference: Mapping[tuple[str, int], Any] | None, reference_name: str | None) -> dict[str, Any]:
        """Suite-wide robustness numbers over the corruption scenarios (``(corruption, severity)`` -> result;
        ``reference``: the champion's on the same images, or None) for the report and ``scenarios.json``
        (classification: mCE, error multiple vs clean, mean degradation). Default: the mean of each
        metric over the corruption scenarios and its change from clean."""
        out: dict[str, Any] = {}
        for m in self.metrics:
            vals = [r.values.get(m.name) for r in corrupted.values()]
            vals = [float(v) for v in vals if v is not None]
            base = clean.values.get(m.name) if clean is not None else None
            if vals:
                out[f"mean_corrupted_{m.name}"] = sum(vals) / len(vals)
                if base is not None:
                    out[f"change_{m.name}"] = out[f"mean_corrupted_{m.name}"] - float(base)
        return out

    def scenario_extras(self, result: Any) -> dict[str, Any]:
        """Task-only per-scenario fields for the evaluation summary rows (classification: ``critical_fpr``)."""
        return {}

    def worst_images(self, result: Any, class_names: Sequence[str], k: int) -> list[tuple[int, str, str, float]]:
        """The report's gallery: up to ``k`` of the scenario's worst-handled images, worst first, as
        ``(row in the scenario, expected, predicted, score)`` (classification: the most confident wrong
        predictions, score = confidence). None by default."""
        return []

    def report_details(self, result: Any, class_names: Sequence[str], plots_dir: Any) -> dict[str, Any]:
        """The evaluation report's task-only sections for the clean scenario, written under ``plots_dir``:
        ``files`` (name -> path), ``tables`` (``[(title, header, rows)]``) and ``plots`` (``[(key, title, path)]``).
        Classification: the per-class table, the confusion matrix and the reliability diagram. None by default."""
        return {}

    #: How the report describes the intervals (after "intervals (95%):").
    interval_note: ClassVar[str] = "percentile bootstrap over images; champion difference paired bootstrap"
    #: Thresholds a ``curated`` scenario gets unless it sets them (a curated list holds images the model must
    #: get right): classification's ``{"min_accuracy": 1.0}``. Keys must be the task's gate keys.
    curated_defaults: ClassVar[Mapping[str, float]] = {}
    #: Suite-wide thresholds a suite may set under ``robustness:`` on numbers of :meth:`corruption_summary`:
    #: ``min_<number>`` / ``max_<number>`` (detection: ``min_rpc``, ``min_mpc``). None by default.
    robustness_keys: ClassVar[tuple[str, ...]] = ()
    #: The report's gallery: its title and the column names of ``worst_images``' expected, predicted, score.
    gallery_title: ClassVar[str] = "Worst images"
    gallery_columns: ClassVar[tuple[str, str, str]] = ("expected", "predicted", "score")

    @property
    def corruption_headline(self) -> tuple[str, str]:
        """``(metric, metrics.json key)`` of the corruption headline: the first metric's mean over corruptions."""
        m = self.metrics[0]
        return m.name, f"corrupt_{m.short or m.name}"

    # ------------------------------------------------------------------ serving, canary, monitoring
    def to_input_pixels(self, target: Any, contract: PreprocessContract, image_size: tuple[int, int]) -> Any:
        """One target (``target_of``) with its pixel positions moved from the image it was annotated on
        (``image_size``, ``(height, width)``) into the model input (``contract.input_size``), through the
        contract's resize (stretch or letterbox): where evaluation compares it with the predictions, as training's
        pipeline moves it. Classification has no positions (unchanged); detection moves its boxes."""
        return target

    def to_image_pixels(self, prediction: dict[str, Any], contract: PreprocessContract,
                        image_size: tuple[int, int]) -> dict[str, Any]:
        """One decoded prediction with its pixel positions moved from the model input (``contract.input_size``,
        ``(height, width)``) to the request image it came from (``image_size``): the server undoes the
        preprocessing's resize (a stretch, or a letterbox's scale and padding: ``contract.resize``, see
        :func:`cvplatform.preprocess.resize_geometry`) before answering. Classification has no positions
        (unchanged); detection moves its boxes."""
        return prediction

    def to_image_pixels_many(self, predictions: Sequence[dict[str, Any]], contract: PreprocessContract,
                             image_sizes: Sequence[tuple[int, int]]) -> list[dict[str, Any]]:
        """:meth:`to_image_pixels` of each of a request's predictions (``image_sizes``: each image's ``(height,
        width)``); a task may move them all at once (detection does)."""
        return [self.to_image_pixels(p, contract, s) for p, s in zip(predictions, image_sizes, strict=True)]

    @abstractmethod
    def response(self, prediction: Mapping[str, Any], class_names: Sequence[str]) -> dict[str, Any]:
        """One image's JSON response body item (its schema appears in OpenAPI)."""

    #: Prometheus metrics the server adds for this task (none by default; detection: detections per image,
    #: detection scores, detections per class).
    served_metrics: ClassVar[tuple[ServedMetric, ...]] = ()

    def request_parameters(self, output_shapes: Mapping[str, Sequence[Any]] | None = None
                           ) -> tuple[RequestParameter, ...]:
        """The decoding settings a request may send for a model with these graph ``output_shapes`` (name ->
        shape, ``None`` or a string for a dynamic axis; None = not known). None by default: the server refuses
        a parameter another task declares with a 422 saying it does not apply. A task that declares some
        accepts them as keyword arguments of :meth:`decode` and :meth:`tensor_outputs`."""
        return ()

    def served_observations(self, predictions: Sequence[Mapping[str, Any]], class_names: Sequence[str]
                            ) -> dict[str, Any]:
        """What :attr:`served_metrics` observe for one answered request's decoded ``predictions`` (as
        :meth:`decode` returns them): per metric name, a list of values (a histogram) or a mapping class ->
        count (a counter ``by_class``). Empty by default."""
        return {}

    # ------------------------------------------------------------------ labelled feedback (serving, canary, replay)
    #: The ``traffic`` key of the serving config naming the request header a client sends each image's true answer
    #: in: ``label_header`` (``X-True-Label``, one class per image) by default; detection: ``boxes_header``
    #: (``X-True-Boxes``).
    truth_header_key: ClassVar[str] = "label_header"
    #: What that header holds (OpenAPI, error messages and docs).
    truth_format: ClassVar[str] = "one class name per image, comma-separated, in the order of the images"
    #: ``(HTTP status, error code)`` of a request whose truth header :meth:`parse_truth` refuses.
    truth_error: ClassVar[tuple[int, str]] = (400, "invalid_label_header")

    def parse_truth(self, raw: str, n: int, header: str, class_names: Sequence[str] | None = None) -> list[Any]:
        """The true answers a client sent for a request's ``n`` images (``raw``: the value of ``header``), one per
        image; ``class_names``: the served model's classes when known (a task may refuse a class it does not know).

        Raises ``ValueError`` naming ``header``, what is wrong and :attr:`truth_format` (the server answers it
        with :attr:`truth_error`). The default reads one class name per image, comma-separated (classification's
        ``X-True-Label``, compared with :meth:`decode_top` for the per-variant accuracy).

        Example:
            >>> from cvplatform.tasks import get_task
            >>> get_task("classification").parse_truth("cat, dog", 2, "X-True-Label")
            ['cat', 'dog']
        """
        labels = [s.strip() for s in raw.split(",")]
        if len(labels) != n:
            raise ValueError(f"{header}: {len(labels)} label(s) for {n} image(s); send one comma-separated label per "
                             "image, in order.")
        return labels

    def feedback(self, outputs: Mapping[str, np.ndarray], class_names: Sequence[str], truth: Sequence[Any],
                 contract: PreprocessContract, image_sizes: Sequence[tuple[int, int]] | None
                 ) -> list[dict[str, Any]] | None:
        """What the server keeps of one labelled request for :meth:`feedback_summary`: one JSON-friendly record per
        image from the model's raw ``outputs`` and the :meth:`parse_truth` answers (``image_sizes``: each request
        image's ``(height, width)``; None for a preprocessed tensor, whose pixels are the model input's).

        None (the default): the truth is one class per image, compared with :meth:`decode_top` (the statistics'
        ``labelled`` / ``correct`` and the canary's ``accuracy`` check). Detection keeps each image's true boxes
        and served boxes in the request image's pixels.
        """
        return None

    def feedback_summary(self, records: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
        """The quality of one variant on the kept :meth:`feedback` records (``/admin/stats`` reports it as the
        variant's ``feedback``; the canary judges it): None by default (no records kept). Detection: COCO mAP50
        and mAP of the served boxes against the true boxes, from the project's COCO evaluator."""
        return None

    def replay_truth(self, row: Mapping[str, Any], root: Path) -> str | None:
        """The truth header value (:attr:`truth_header_key`) the replay client sends with the stored image of one
        manifest row (``root``: the project root its relative paths are under), or None to send none. Default: the
        row's ``label``."""
        label = row.get("label")
        return None if label is None else str(label)

    @abstractmethod
    def prediction_signal(self, prediction: Mapping[str, Any]) -> dict[str, float]:
        """Per-prediction numbers that drift monitoring and canary statistics aggregate: the
        predicted class and confidence for classification, box count and mean score for detection,
        class-area shares for segmentation."""

    #: Whether the task's answers are objects (:meth:`object_signals`, :meth:`reference_objects` return data).
    has_objects: ClassVar[bool] = False
    #: What :meth:`shadow_agreement` measures, in the canary's statistics and reasons.
    agreement_measure: ClassVar[str] = "same top-1 class"

    def shadow_agreement(self, answered: Mapping[str, np.ndarray], answered_classes: Sequence[str],
                         shadowed: Mapping[str, np.ndarray], shadowed_classes: Sequence[str]) -> np.ndarray:
        """Per image, how far two variants' raw outputs on the same images agree, in ``[0, 1]`` (the canary's
        shadow agreement: the server sums it per confidence bin of the champion, ``/admin/stats`` reports the mean).

        ``answered_classes`` / ``shadowed_classes``: each model's class names (they are compared by name, so two
        models whose class lists are ordered differently still compare). The default compares the
        :meth:`decode_top` classes: 1.0 where they are the same, else 0.0 (classification's top-1 agreement).
        Detection returns each image's matched-box F1 (same class, IoU >= 0.5; 1.0 when neither has a box).
        """
        a, _ = self.decode_top(answered, answered_classes)
        b, _ = self.decode_top(shadowed, shadowed_classes)
        return (np.asarray(a, dtype=object) == np.asarray(b, dtype=object)).astype(np.float64)

    def object_signals(self, outputs: Mapping[str, np.ndarray], class_names: Sequence[str],
                       input_size: tuple[int, int], predictions: Sequence[Mapping[str, Any]] | None = None
                       ) -> list[dict[str, Any]] | None:
        """Per image, the objects a model found, for serving statistics (canary count, score and class-mix shift)
        and the inference log (drift): ``{"scores": [...], "classes": [...], "areas": [...]}`` with one entry per
        object (``areas``: the object's share of the model input's area, ``input_size`` = ``(height, width)``).
        ``predictions``: ``outputs`` as :meth:`decode` gives them with the default parameters, when the server
        decoded them already for the answer (a task may use them rather than decode again).

        None (the default) for a task that answers one class per image (classification): its class mix and
        confidences are already :meth:`decode_top`'s. Detection returns its served boxes (after the score
        threshold).
        """
        return None

    def reference_objects(self, frame: Any, root: Path) -> dict[str, Any] | None:
        """The training objects drift monitoring compares the served :meth:`object_signals` with, from the manifest
        rows ``frame`` (the reference split; relative paths under ``root``): ``{"per_image": [objects of each image],
        "areas": [each object's share of its image's area], "classes": {class: objects}}``.

        None (the default) for a task without objects (classification: the label counts are the reference).
        Detection reads the boxes of the annotation tables (crowd boxes left out).
        """
        return None

    @abstractmethod
    def decode_top(self, outputs: Mapping[str, np.ndarray], class_names: Sequence[str]
                   ) -> tuple[np.ndarray, np.ndarray]:
        """Raw outputs of ``N`` images -> ``(classes, confidences)``: two length-``N`` arrays (class
        names as ``str``, confidences as ``float64``), computed vectorised (serving calls it on every
        request for its statistics, per-class Prometheus counters, the inference log and the shadow
        agreement).

        One headline class per image: classification returns the top-1 class and its softmax
        probability; detection returns the class of the highest-scoring box and that score (class
        ``""`` and confidence ``0.0`` for an image without boxes); segmentation returns the class
        covering the most pixels and the mean per-pixel probability of the predicted classes.
        """

    @abstractmethod
    def tensor_output_specs(self, class_names: Sequence[str]) -> list[dict[str, Any]]:
        """The Open Inference Protocol v2 outputs the server offers, in their default order, as
        ``{"name", "datatype", "shape"}`` with ``-1`` for the batch axis (model metadata). Classification:
        ``probabilities`` FP32 ``[-1, C]`` and ``label`` BYTES ``[-1]``; detection: ``boxes`` FP32
        ``[-1, K, 4]``, ``scores`` FP32 ``[-1, K]``, ``labels`` BYTES ``[-1, K]``, ``num_detections``
        INT32 ``[-1]``; segmentation: ``mask`` INT32 ``[-1, H, W]`` and ``areas`` FP32 ``[-1, C]``."""

    @abstractmethod
    def tensor_outputs(self, outputs: Mapping[str, np.ndarray], class_names: Sequence[str],
                       wanted: Sequence[str]) -> list[dict[str, Any]]:
        """The OIP v2 ``outputs`` of an inference response for raw outputs of ``N`` images: one
        ``{"name", "datatype", "shape", "data"}`` per name in ``wanted`` (names of
        :meth:`tensor_output_specs`), ``data`` flattened row-major (a numpy array or a list)."""

    def tensor_outputs_of(self, predictions: Sequence[Mapping[str, Any]] | None, outputs: Mapping[str, np.ndarray],
                          class_names: Sequence[str], wanted: Sequence[str], **options: Any) -> list[dict[str, Any]]:
        """:meth:`tensor_outputs` for a request whose :meth:`decode` ``predictions`` (same ``options``) the server
        may already hold (None when it does not). The default ignores them; a task whose OIP outputs derive from
        its decoded predictions overrides this so a request is decoded once."""
        return self.tensor_outputs(outputs, class_names, wanted, **options)

    # ------------------------------------------------------------------ review
    #: The model card's intended-use statement when ``export.intended_use`` is null.
    intended_use: ClassVar[str] = ("Image classification of inputs that resemble the training data (same classes, "
                                   "camera and conditions). Not for safety-critical decisions without human review.")

    def per_class_metrics(self, result: Any) -> dict[str, dict[str, float | None]]:
        """Per-class numbers of a scenario result worth recording with the model (``scenarios.json``'s
        ``clean.per_class``, registry tags ``metrics.clean_<name>.<class>``, the model card): ``{name: {class:
        value}}``; none by default."""
        return {}

    @abstractmethod
    def summary_lines(self, scenarios: Mapping[str, Any], class_names: Sequence[str]) -> list[str]:
        """Markdown lines for the approval page and the model card that describe what the model
        does and how well (task, classes, the headline numbers of the clean scenario)."""

    def __repr__(self) -> str:
        return f"<Task {self.name}>"


__all__ = ["Agreement", "MetricSpec", "MonitorSpec", "RequestParameter", "ServedMetric", "Task"]
