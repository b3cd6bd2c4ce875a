"""Typed configuration: ``params.yaml`` (tunables, one key per stage) and ``configs/``.

Both load into frozen pydantic models that reject unknown keys and bad types. A
failure raises :class:`~cvplatform.errors.ConfigError` whose message names the
file, the dotted key, the offending value and the expected type, e.g.::

    params.yaml: invalid configuration
      - ingest.workers: expected an integer, got 'two' (str)
      - ingest.wrkers: unknown key; allowed keys under 'ingest': digits, labels_csv, ...

Each stage owns one top-level section so DVC re-runs only the stages whose keys
changed. ``--set key.path=value`` overrides (CLI) are applied before validation
and reported with the file they override.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cvplatform.errors import ConfigError

DEFAULT_PARAMS = "params.yaml"


class StrictModel(BaseModel):
    """Base for every config model: frozen, unknown keys rejected, no silent coercion of str->int."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False, validate_default=True)


# --------------------------------------------------------------------------- project
class ProjectParams(StrictModel):
    seed: int = 42
    """Global seed for generators, splits and training."""
    manifest: str = "data/processed/manifest.parquet"
    """The manifest ingest writes and every later stage reads (relative to the project root)."""
    task: str = "classification"
    """What the models predict: a task from :mod:`cvplatform.tasks` (``cvplatform tasks`` lists them)."""

    @field_validator("task")
    @classmethod
    def _known_task(cls, v: str) -> str:
        from cvplatform.tasks import is_known, known_tasks

        if not is_known(v):
            raise ValueError(f"unknown task {v!r}; known tasks: {', '.join(known_tasks())}")
        return v


# --------------------------------------------------------------------------- ingest
class SplitFractions(StrictModel):
    train: float = Field(0.7, ge=0.0, le=1.0)
    val: float = Field(0.15, ge=0.0, le=1.0)
    test: float = Field(0.15, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitFractions:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must sum to 1.0, got {total:g}")
        return self


class PrivacyParams(StrictModel):
    redact_faces: bool = False
    """Blur faces (OpenCV Haar cascade) before anything is stored."""
    min_face_size: int = Field(24, ge=8)
    """Smallest face side in pixels the detector looks for."""


class QuarantineParams(StrictModel):
    retention_days: int | None = Field(30, ge=0, le=36_500)
    """Days a rejected file's original bytes are kept, counted from when it was first quarantined;
    older ones are deleted at every ingest. 0 = keep none (report only); None = keep forever."""
    push_originals: bool = False
    """Keep the originals in ``data/quarantine/pushed`` (a DVC output: cached and pushed to the remote)
    instead of the local-only ``data/quarantine/originals``. They may hold EXIF/GPS and faces: opt in
    only when the remote is allowed to hold the source's personal data."""


class DigitsParams(StrictModel):
    size: int = Field(32, ge=8, le=512)
    """Side in pixels the 8x8 scikit-learn digits are upscaled to."""
    limit: int | None = Field(None, ge=10)
    """Take only the first N digits (None = all 1,797)."""


class ShapesParams(StrictModel):
    count: int = Field(600, ge=1)
    """Number of synthetic images to generate."""
    size: int = Field(64, ge=16, le=1024)
    """Side of each generated image in pixels."""
    seed: int = 0
    """Generator seed (same seed -> identical images)."""
    classes: tuple[str, ...] = ("circle", "square", "triangle")
    """Shape classes to draw (subset of circle, square, triangle, star)."""


class ScenesParams(StrictModel):
    """The built-in detection source (:mod:`cvplatform.tasks.detection.scenes`): multi-object scenes."""

    count: int = Field(400, ge=1)
    """Number of images."""
    size: int = Field(96, ge=32, le=1024)
    """Image side in pixels."""
    seed: int = 0
    """Generator seed (same seed -> identical files)."""
    classes: tuple[str, ...] = ("circle", "square", "triangle")
    """Object classes (subset of circle, square, triangle, star)."""
    min_objects: int = Field(1, ge=0, le=32)
    max_objects: int = Field(8, ge=1, le=32)
    min_visible: float = Field(0.5, gt=0.0, le=1.0)
    """Smallest visible share of an object's area once later objects are drawn over it."""


ANNOTATION_FORMS = "null | auto | coco:PATH | yolo:DIR | voc:DIR"
"""The valid ``ingest.annotations`` forms, quoted in error messages."""


class IngestParams(StrictModel):
    source: str = "configs/sources/digits.yaml"
    """Where images come from: a folder PATH | s3://bucket/prefix | configs/sources/<builtin>.yaml
    (also folder:PATH, digits, shapes). dvc.yaml tracks it as a dependency of ingest."""
    labels_csv: str | None = None
    """Labels CSV (path,label[,metadata...]) inside the source; None = ImageFolder layout. With annotations
    (``annotations``) an optional metadata CSV: ``path`` plus metadata columns (labels come from the boxes)."""
    workers: int = Field(2, ge=1, le=64)
    """Decode processes."""
    min_side: int = Field(8, ge=1)
    """Smallest accepted width/height (pixels)."""
    max_pixels: int = Field(40_000_000, ge=1)
    """Largest accepted width*height (decompression-bomb guard)."""
    split: SplitFractions = SplitFractions()
    privacy: PrivacyParams = PrivacyParams()
    quarantine: QuarantineParams = QuarantineParams()
    digits: DigitsParams = DigitsParams()
    shapes: ShapesParams = ShapesParams()
    scenes: ScenesParams = ScenesParams()
    annotations: str | None = None
    """Object boxes of the source's images: ``coco:PATH`` (a COCO JSON file), ``yolo:DIR`` (one txt per image
    plus a class-name file), ``voc:DIR`` (one XML per image), all relative to the source root, or ``auto``
    (find them). None = no boxes (classification), unless ``project.task`` is detection (then ``auto``).
    The built-in ``scenes`` source always uses its own COCO file."""
    keep_background: bool = False
    """With annotations: keep images without any box as background images (label ``background``);
    otherwise they are quarantined (``no_boxes``)."""
    box_tolerance: float = Field(0.02, ge=0.0, le=0.5)
    """With annotations: a box may overhang the image by this share of its side (it is clipped);
    further out it is ``box_outside``."""

    @field_validator("annotations")
    @classmethod
    def _annotation_form(cls, v: str | None) -> str | None:
        if v is None:
            return None
        s = v.strip()
        fmt, sep, path = s.partition(":")
        if s == "auto" or (sep and fmt in ("coco", "yolo", "voc") and path.strip()):
            return s
        raise ValueError(f"{v!r} is not an annotation source; use {ANNOTATION_FORMS} (paths relative to the "
                         "source root)")


# --------------------------------------------------------------------------- validate
class ValidateParams(StrictModel):
    suite: str = "configs/expectations/manifest.yaml"
    """Expectation suite definition (configs/expectations/*.yaml)."""


# --------------------------------------------------------------------------- validate: expectation suite
from cvplatform.data.manifest import CORE_COLUMNS as _MANIFEST_COLUMNS  # noqa: E402  (light: no heavy deps)


class BoxSuiteConfig(StrictModel):
    """Checks of a detection manifest's annotation table (``boxes:`` in the manifest suite); skipped when the
    manifest has no ``annotations`` column (classification)."""

    min_box_side: float = Field(2.0, ge=0.0)
    """Smallest allowed box width and height (pixels of the stored image)."""
    max_overhang: float = Field(0.0, ge=0.0)
    """Largest allowed distance (pixels) a box may reach outside its image (ingest clips small overhangs: 0)."""
    max_boxes_per_image: int = Field(100, ge=1)
    """Most boxes one image may have."""
    classes: tuple[str, ...] | None = None
    """Exact set of box classes expected; None = not checked (reported as skipped)."""
    min_boxes_per_class: int = Field(10, ge=0)
    """Fewest boxes any class may have."""
    max_box_imbalance: float = Field(10.0, ge=1.0)
    """Largest allowed (boxes of the largest class / boxes of the smallest class)."""


class ManifestSuiteConfig(StrictModel):
    """The manifest expectation suite (``configs/expectations/manifest.yaml``).

    ``cvplatform.data.validate`` turns it into Great Expectations 1.x suites over the
    manifest and two derived tables (images per class, splits per sha256).

    Example:
        >>> from cvplatform.config import ManifestSuiteConfig, load_config
        >>> cfg = load_config("configs/expectations/manifest.yaml", ManifestSuiteConfig)  # doctest: +SKIP
        >>> ManifestSuiteConfig(min_per_class=5).max_imbalance
        5.0
    """

    name: str = Field("manifest", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    """Suite name (shown in Data Docs)."""
    required_columns: tuple[str, ...] = _MANIFEST_COLUMNS
    """Columns the manifest must have."""
    not_null: tuple[str, ...] = ("path", "sha256", "label", "split")
    """Columns that must have no null values."""
    unique: tuple[str, ...] = ("sha256", "path")
    """Columns whose values must be unique (sha256 = no duplicate images)."""
    splits: tuple[str, ...] = ("train", "val", "test")
    """Allowed values of the ``split`` column."""
    channels: tuple[int, ...] = (3,)
    """Allowed values of the ``channels`` column."""
    classes: tuple[str, ...] | None = None
    """Exact set of labels expected; None = not checked (reported as skipped)."""
    min_rows: int = Field(1, ge=0)
    """Fewest rows the manifest may have."""
    min_classes: int = Field(2, ge=0)
    """Fewest distinct labels the manifest may have."""
    min_per_class: int = Field(10, ge=0)
    """Fewest images any class may have."""
    max_imbalance: float = Field(5.0, ge=1.0)
    """Largest allowed (largest class count / smallest class count)."""
    min_side: int = Field(8, ge=1)
    """Smallest allowed width and height (pixels)."""
    max_side: int = Field(4096, ge=1)
    """Largest allowed width and height (pixels)."""
    boxes: BoxSuiteConfig = BoxSuiteConfig()
    """Checks of the annotation table (detection): box bounds and size, boxes per image, class set and balance."""

    @model_validator(mode="before")
    @classmethod
    def _int_labels_are_strings(cls, data: Any) -> Any:
        # YAML reads `classes: [0, 1, 2]` as ints; manifest labels are strings ("0", "1", "2").
        if isinstance(data, dict) and isinstance(data.get("classes"), list | tuple):
            data = {**data, "classes": [
                str(c) if isinstance(c, int) and not isinstance(c, bool) else c for c in data["classes"]
            ]}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> ManifestSuiteConfig:
        if self.min_side > self.max_side:
            raise ValueError(f"min_side ({self.min_side}) must be <= max_side ({self.max_side})")
        if not self.splits:
            raise ValueError("splits must list at least one split name")
        if self.classes is not None:
            if not self.classes:
                raise ValueError("classes must list at least one class, or be null to skip the check")
            dupes = sorted({c for c in self.classes if self.classes.count(c) > 1})
            if dupes:
                raise ValueError(f"classes lists {dupes} more than once")
        return self


# --------------------------------------------------------------------------- train
class TrainModelParams(StrictModel):
    """The architecture and its arguments: one section per architecture, only ``arch``'s is used.

    Keeping each architecture's arguments under its own name means that choosing another
    architecture (``--set train.model.arch=resnet``, the Airflow trigger form) changes only
    the architecture: the arguments that apply are that architecture's own section.

    Example:
        >>> m = TrainModelParams(arch="resnet", resnet={"blocks": [1, 1], "width": 8})
        >>> m.kwargs
        {'blocks': [1, 1], 'width': 8}
    """

    model_config = ConfigDict(extra="allow", frozen=True, validate_default=True)
    """Extra keys are argument sections of architectures added with cvplatform.models.register_model."""

    arch: str = Field("small_cnn", min_length=1)
    """Architecture name: small_cnn | resnet | mobilenet_v2, or one added with register_model."""
    small_cnn: dict[str, Any] = Field(default_factory=dict)
    """Arguments of small_cnn (width, stages, dropout, ...), validated by its schema when it is trained."""
    resnet: dict[str, Any] = Field(default_factory=dict)
    """Arguments of resnet (depth or blocks, width, stem, ...)."""
    mobilenet_v2: dict[str, Any] = Field(default_factory=dict)
    """Arguments of mobilenet_v2 (width_mult, small_input, dropout, ...)."""

    @model_validator(mode="after")
    def _sections_are_mappings(self) -> TrainModelParams:
        for name, value in (self.model_extra or {}).items():
            if not isinstance(value, dict):
                raise ValueError(
                    f"{name}: expected the arguments of architecture {name!r} as a mapping, got {value!r}; "
                    f"architectures with a section: {', '.join(self.sections())}"
                )
        return self

    def sections(self) -> tuple[str, ...]:
        """Architectures that have an arguments section here."""
        return ("small_cnn", "resnet", "mobilenet_v2", *sorted(self.model_extra or {}))

    @property
    def kwargs(self) -> dict[str, Any]:
        """The arguments of the selected architecture (its own section; empty = its defaults)."""
        return dict(getattr(self, self.arch, None) or {})


class OptimizerParams(StrictModel):
    name: Literal["adamw", "sgd"] = "adamw"
    """Optimiser."""
    lr: float = Field(3e-3, gt=0.0)
    """Peak learning rate."""
    weight_decay: float = Field(1e-4, ge=0.0)
    """Decoupled (adamw) / L2 (sgd) weight decay."""
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    """SGD momentum (sgd only)."""
    nesterov: bool = True
    """Nesterov momentum (sgd only)."""


class SchedulerParams(StrictModel):
    name: Literal["cosine", "step", "none"] = "cosine"
    """Learning-rate schedule, stepped once per epoch."""
    warmup_epochs: int = Field(0, ge=0)
    """Linear warm-up epochs before the schedule."""
    min_lr: float = Field(0.0, ge=0.0)
    """Final learning rate of the cosine schedule."""
    step_size: int = Field(10, ge=1)
    """Epochs between decays (step)."""
    gamma: float = Field(0.1, gt=0.0, le=1.0)
    """Decay factor (step)."""


class LossParams(StrictModel):
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    """Cross-entropy label smoothing."""
    class_weights: Literal["none", "balanced"] | list[float] = "none"
    """none | balanced (from train split counts) | explicit list, one weight per class (sorted labels)."""

    @model_validator(mode="after")
    def _positive_weights(self) -> LossParams:
        if isinstance(self.class_weights, list) and (not self.class_weights or min(self.class_weights) <= 0):
            raise ValueError(f"class_weights must be positive numbers, got {self.class_weights}")
        return self


class DetectorParams(StrictModel):
    """The detection head on the backbone (``train.detector``; used when ``project.task: detection``)."""

    upsample: int = Field(1, ge=0, le=3)
    """Neck steps of 2x upsampling + conv after the backbone: each halves the output stride (finer centre cells)."""
    head_width: int = Field(64, ge=8, le=512)
    """Channels of each head branch (centre heatmap, size, offset)."""
    size_weight: float = Field(0.1, gt=0.0)
    """Weight of the box-size L1 loss beside the heatmap focal loss and the offset L1."""
    max_peaks: int = Field(100, ge=1, le=1000)
    """K: heatmap peaks the exported graph returns per image (the most boxes an answer can hold)."""


class TrainParams(StrictModel):
    augment: str = "configs/augment/default.yaml"
    """Augmentation recipe (configs/augment/*.yaml)."""
    model: TrainModelParams = TrainModelParams()
    detector: DetectorParams = DetectorParams()
    num_classes: int | None = Field(None, ge=2)
    """Expected number of classes; None = derived from the manifest (checked when set)."""
    epochs: int = Field(16, ge=1)
    """Maximum number of epochs."""
    batch_size: int = Field(64, ge=1)
    """Training batch size (per device)."""
    eval_batch_size: int | None = Field(None, ge=1)
    """Validation/test batch size; None = batch_size."""
    num_workers: int = Field(0, ge=0, le=64)
    """DataLoader worker processes (0 = main process)."""
    optimizer: OptimizerParams = OptimizerParams()
    scheduler: SchedulerParams = SchedulerParams()
    loss: LossParams = LossParams()
    monitor: str | None = None
    """Validation metric for best-checkpoint selection and early stopping (one the task logs:
    classification val_acc | val_f1 | val_loss; detection val_map | val_map50 | val_loss); None = the task's
    default (classification val_acc, detection val_map), filled in when the params are read."""
    mode: Literal["max", "min"] | None = None
    """Whether the monitored metric should be maximised or minimised (the task's direction); None = the
    metric's own direction, filled in when the params are read."""
    patience: int | None = Field(None, ge=1)
    """Epochs without improvement before stopping early; None = never stop early."""
    min_delta: float = Field(0.0, ge=0.0)
    """Smallest change of the monitored metric that counts as an improvement."""
    seed: int | None = None
    """Training seed; None = project.seed."""
    deterministic: bool | Literal["warn"] = True
    """Deterministic algorithms: true (error if an op has none) | warn | false."""
    accelerator: str = "cpu"
    """Lightning accelerator (cpu | gpu | cuda | mps | auto), passed through."""
    devices: int | str | list[int] = 1
    """Lightning devices (count, "auto" or ids), passed through."""
    strategy: str = "auto"
    """Lightning strategy (auto | ddp | ...); ddp on CPU uses gloo."""
    num_nodes: int = Field(1, ge=1)
    """Machines for multi-node DDP."""
    precision: int | str = "32-true"
    """Lightning precision (32-true | 16-mixed | bf16-mixed | ...), passed through."""
    limit_train_batches: int | float | None = None
    """Train batches per epoch (int) or fraction (float); None = all (smoke tests)."""
    limit_val_batches: int | float | None = None
    """Validation batches per epoch (int) or fraction (float); None = all."""
    calibrate: bool = True
    """Fit a temperature on the validation split after training (calibrated confidences; same predictions)."""
    run_test: bool = False
    """Also evaluate the best checkpoint on the test split (the evaluate stage does this properly)."""
    experiment: str = Field("cvplatform", min_length=1)
    """MLflow experiment name."""
    run_name: str | None = None
    """MLflow run name; None = train-<arch>-seed<seed>."""
    progress_bar: bool = True
    """Show Lightning's progress bar."""



# --------------------------------------------------------------------------- evaluate
class EvaluateParams(StrictModel):
    """The ``evaluate`` stage: scenario suite, model under test, statistics, champion comparison."""

    suite: str = "configs/scenarios/default.yaml"
    """Scenario suite (configs/scenarios/*.yaml): scenarios and gate thresholds."""
    model: str = "artifacts/export/model.onnx"
    """Model evaluated when none is given: the exported artifact (what ships), a .ckpt, an .onnx or models:/NAME@ALIAS."""
    split: Literal["train", "val", "test"] = "test"
    """Manifest split the clean, corruption and slice scenarios use."""
    max_images: int | None = Field(None, ge=1)
    """Evaluate at most N images of the split (the first N by sha256); None = all."""
    batch_size: int = Field(256, ge=1)
    """Images per forward pass."""
    bootstrap_samples: int = Field(1000, ge=10)
    """Bootstrap resamples for confidence intervals and the champion comparison."""
    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    """Confidence level of the bootstrap intervals."""
    calibration_bins: int = Field(15, ge=2, le=100)
    """Bins of the expected calibration error and the reliability diagram."""
    compare_champion: bool = True
    """Compare with models:/<registry.model_name>@<registry.champion_alias> when it exists."""
    gallery_size: int = Field(8, ge=0, le=64)
    """Worst failures (most confident wrong predictions) shown per scenario in the report."""
    log_to_mlflow: bool = True
    """Log the report, plots and metrics to the training run (artifacts/train/summary.json)."""
    corruption_cache: str | None = ".cvplatform/cache/corruptions"
    """Folder keeping corruption scenarios' pixels across runs (evaluate and export's INT8 check), keyed by the
    clean pixels, corruption, severity, seed and corruption code; None = corrupt the images on every run."""


# --------------------------------------------------------------------------- export
class ExportParityParams(StrictModel):
    """Parity gate: the exported fp32 ONNX model (onnxruntime) vs the PyTorch checkpoint on the test split."""

    atol: float = Field(1e-4, gt=0.0)
    """Largest allowed absolute logit difference (any image, any class)."""
    min_agreement: float = Field(0.999, ge=0.0, le=1.0)
    """Smallest allowed share of test images with the same top-1 class in ONNX and PyTorch."""
    max_images: int | None = Field(None, ge=1)
    """Compare at most N test images (the first N by sha256); None = the whole test split."""
    worst: int = Field(5, ge=1, le=100)
    """Images with the largest differences named in parity.json and in a failure message."""
    max_metric_delta: float = Field(0.005, ge=0.0)
    """Largest |difference| of the task's headline metric on the test split (``Task.int8_score``: accuracy,
    detection's mAP50) between the two models."""


class ExportInt8Params(StrictModel):
    """Static INT8 (QDQ) quantization and its acceptance rule."""

    enabled: bool = True
    """Quantize to INT8 and ship it when it is accurate enough."""
    calibration_split: Literal["train", "val", "test"] = "train"
    """Manifest split the calibration images come from."""
    calibration_images: int = Field(200, ge=1)
    """Calibration images (the first N of the split by sha256)."""
    max_drop: float = Field(0.01, ge=-1.0, le=1.0)
    """Largest allowed accuracy drop vs fp32 on every must-pass scenario (and clean); negative = always reject."""
    per_channel: bool = False
    """Per-channel weight quantization (more accurate, slightly slower on some CPUs)."""
    pre_process: bool = True
    """Run onnxruntime's quant_pre_process (shape inference + graph optimisation) first."""
    suite: str | None = None
    """Scenario suite the INT8 model is judged on; None = evaluate.suite (on evaluate.split)."""
    max_images: int | None = Field(None, ge=1)
    """Judge on at most N images of the split (the first N by sha256); None = all."""


class ExportBenchmarkParams(StrictModel):
    """Latency/throughput/cost benchmark of PyTorch eager, ORT fp32 and ORT INT8 (same run)."""

    enabled: bool = True
    """Run the benchmark (writes artifacts/export/benchmark.json)."""
    threads: int = Field(1, ge=1, le=256)
    """Intra-op threads for torch and onnxruntime (also the core count in the cost formula)."""
    batch_size: int = Field(32, ge=1)
    """Batch size of the throughput measurement (latency is measured at batch 1)."""
    iterations: int = Field(200, ge=5)
    """Timed calls per runtime and batch size."""
    warmup: int = Field(20, ge=0)
    """Untimed calls per runtime and batch size before timing."""
    price_per_core_hour: float = Field(0.045, ge=0.0)
    """Price of one CPU core for one hour (USD); cost/1k = p50_latency_s * threads / 3600 * price * 1000."""


class ExportParams(StrictModel):
    """The ``export`` stage: ONNX export, parity gate, INT8, benchmark, model card."""

    checkpoint: str = "artifacts/train/best.ckpt"
    """Training checkpoint to export (relative to the project root)."""
    opset: int = Field(17, ge=13, le=21)
    """ONNX opset of the exported graph."""
    exporter: Literal["torchscript", "dynamo"] = "torchscript"
    """torch.onnx exporter: torchscript (built in) | dynamo (needs the onnxscript package)."""
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    """onnxruntime execution providers for the benchmark, in preference order (unavailable ones are skipped)."""
    batch_size: int = Field(256, ge=1)
    """Images per forward pass in the parity check and the INT8 scenario evaluation."""
    intended_use: str | None = None
    """The model card's intended-use statement (null: the task's own, e.g. image classification of inputs that
    resemble the training data)."""
    log_to_mlflow: bool = True
    """Log the ONNX files, parity, benchmark and model card to the training run (artifacts/train/summary.json)."""
    parity: ExportParityParams = ExportParityParams()
    int8: ExportInt8Params = ExportInt8Params()
    benchmark: ExportBenchmarkParams = ExportBenchmarkParams()

    @model_validator(mode="after")
    def _providers(self) -> ExportParams:
        if not self.providers:
            raise ValueError("providers must list at least one onnxruntime execution provider, "
                             "e.g. [CPUExecutionProvider]")
        return self


# --------------------------------------------------------------------------- registry
class RegistryRetryParams(StrictModel):
    """How registry calls survive a tracking server that is briefly unreachable.

    Each call to the tracking server is tried up to ``attempts`` times; the waits
    between tries are ``backoff_s``, ``backoff_s * backoff_factor``, ... capped at
    ``max_backoff_s``. Only connection errors, timeouts and HTTP 408/429/5xx are
    retried (never 4xx such as RESOURCE_DOES_NOT_EXIST). MLflow's own HTTP retries
    (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``) are set to ``http_max_retries`` and its
    per-request timeout (``MLFLOW_HTTP_REQUEST_TIMEOUT``) to ``request_timeout_s``
    during registry calls, so the worst case is bounded by
    ``attempts * (http_max_retries + 1) * request_timeout_s`` plus the waits.
    """

    attempts: int = Field(5, ge=1, le=50)
    """Tries per registry call (1 = no retry)."""
    backoff_s: float = Field(0.5, ge=0.0, le=60.0)
    """Wait before the second try, in seconds."""
    backoff_factor: float = Field(2.0, ge=1.0, le=10.0)
    """Each further wait is the previous one times this."""
    max_backoff_s: float = Field(8.0, ge=0.0, le=300.0)
    """Longest single wait, in seconds."""
    request_timeout_s: int = Field(30, ge=1, le=600)
    """Timeout of one HTTP request to the tracking server (MLFLOW_HTTP_REQUEST_TIMEOUT)."""
    http_max_retries: int = Field(0, ge=0, le=10)
    """MLflow's own urllib3 retries per request (MLFLOW_HTTP_REQUEST_MAX_RETRIES); 0 = only ours."""


class RegistryParams(StrictModel):
    """The MLflow model registry: registered model, reviewers, aliases, retries.

    Example:
        >>> RegistryParams(reviewers=["alice", "bob"]).reviewers
        ('alice', 'bob')
    """

    model_name: str = Field("cvplatform", min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\- ]*$")
    """The registered model: ``register`` adds versions to it, ``evaluate`` compares with its champion, ``serve`` serves it."""
    reviewers: tuple[str, ...] | None = None
    """Who may approve or reject versions; None = anyone except the version's author (four-eyes always applies)."""
    challenger_alias: str = Field("challenger", min_length=1, pattern=r"^[A-Za-z][A-Za-z0-9_\-]*$")
    """Alias set on a newly registered version whose gates passed."""
    champion_alias: str = Field("champion", min_length=1, pattern=r"^[A-Za-z][A-Za-z0-9_\-]*$")
    """Alias of the production version: moved by promote / rollback, the champion ``evaluate`` compares with."""
    trusted_services: tuple[str, ...] = ()
    """Tracking-server accounts allowed to record a decision made by an Airflow UI user (the pipeline workers)."""
    retry: RegistryRetryParams = RegistryRetryParams()

    @model_validator(mode="after")
    def _clean_reviewers(self) -> RegistryParams:
        if self.reviewers is not None:
            names = tuple(r.strip() for r in self.reviewers)
            if not names or any(not n for n in names):
                raise ValueError("reviewers must be null (anyone but the author) or a list of non-empty names")
            from cvplatform.registry.identity import check_name, normalize_name

            for n in names:
                try:
                    check_name(n, "registry.reviewers")
                except Exception as exc:  # InvalidReviewerError -> a config error naming the key
                    raise ValueError(str(exc)) from None
            if len({normalize_name(n) for n in names}) != len(names):
                raise ValueError(f"reviewers lists a name more than once (after Unicode normalisation): {list(names)}")
            object.__setattr__(self, "reviewers", names)
        if self.challenger_alias == self.champion_alias:
            raise ValueError(f"challenger_alias and champion_alias must differ, both are {self.champion_alias!r}")
        return self


# --------------------------------------------------------------------------- serve / deploy
class ServeParams(StrictModel):
    """``cvplatform serve``: where the inference service listens and what it serves.

    Example:
        >>> ServeParams().port
        8080
    """

    host: str = Field("127.0.0.1", min_length=1)
    """Interface to bind (127.0.0.1 = this machine only; 0.0.0.0 = every interface)."""
    port: int = Field(8080, ge=1, le=65535)
    """TCP port."""
    config: str = "configs/deploy/serving.yaml"
    """Serving configuration: batching, limits, traffic split, admin token, statistics."""
    workers: int = Field(1, ge=1, le=64)
    """Server processes sharing the listening socket, each with its own event loop and model sessions
    (1 = one process, as before). With more, admin actions (canary, traffic, promote, rollback, abort,
    reload, stats reset) reach every worker before the admin call returns, and ``/admin/stats`` sums all
    workers (``cvplatform.serving.workers``; ADR 0012)."""
    sync_interval_s: float = Field(0.02, gt=0.0, le=5.0)
    """workers > 1: how often each worker reads the shared control file (admin changes, stats requests)."""
    sync_timeout_s: float = Field(60.0, gt=0.0, le=3600.0)
    """workers > 1: how long an admin call waits for every worker to apply it (a model load included)."""


class DeployLocalParams(StrictModel):
    """The loopback canary used when no server is configured (``deploy.server: null``) or with ``--local``:
    a private ``cvplatform serve`` process plus this replay of held-out images as its traffic."""

    split: Literal["train", "val", "test"] = "test"
    """Split replayed."""
    corrupt: float = Field(0.2, ge=0.0, le=1.0)
    """Share of images also sent corrupted (evaluation corruptions)."""
    concurrency: int = Field(2, ge=1, le=256)
    """Parallel replay clients."""
    rate: float | None = Field(None, gt=0.0)
    """Total requests per second; None = as fast as the server answers."""


class DeployParams(StrictModel):
    """``cvplatform deploy canary`` / the DAG's ``canary_deploy``: the canary policy and the server it drives.

    Example:
        >>> DeployParams().policy
        'configs/deploy/canary.yaml'
        >>> DeployParams(server="http://serving:8080/").server
        'http://serving:8080'
    """

    policy: str = "configs/deploy/canary.yaml"
    """Canary policy: steps, bake times, minimum requests, analysis thresholds."""
    server: str | None = None
    """Base URL of the long-running inference service (``cvplatform serve``, following the registry aliases)
    whose admin API the canary drives, judged on the traffic it receives. None = no service: the canary runs
    on a private loopback ``cvplatform serve`` process with replayed traffic (``local``). The environment
    variable ``CVPLATFORM_DEPLOY_SERVER`` wins over this key."""
    experiment: str = Field("deploy", min_length=1)
    """MLflow experiment of the canary runs."""
    local: DeployLocalParams = DeployLocalParams()

    @field_validator("server")
    @classmethod
    def _server_url(cls, value: str | None) -> str | None:
        return None if value is None else deploy_server_url(value)


def deploy_server_url(value: str) -> str:
    """``value`` as a server base URL (no trailing slash); ValueError unless it is ``http(s)://HOST...``.

    Example:
        >>> deploy_server_url("http://serving:8080/")
        'http://serving:8080'
    """
    url = value.strip().rstrip("/")
    if not url.startswith(("http://", "https://")) or not url.split("://", 1)[1]:
        raise ValueError(f"expected an http(s) URL such as http://serving:8080 (or null for the loopback canary), "
                         f"got {value!r}")
    return url


# --------------------------------------------------------------------------- monitor
class MonitorParams(StrictModel):
    """``cvplatform monitor`` / the cv_monitor DAG: drift of served traffic against the training data.

    Example:
        >>> MonitorParams().log_dir
        'artifacts/serving/requests'
    """

    policy: str = "configs/monitor/drift.yaml"
    """Drift policy: thresholds per input statistic, prediction PSI, minimum samples, window."""
    log_requests: bool = True
    """The server writes one record per served image (input stats + prediction) to ``log_dir``."""
    log_dir: str = "artifacts/serving/requests"
    """Folder of the inference server's request log (requests-<UTC time>.jsonl files)."""
    log_max_bytes: int = Field(10_000_000, ge=1024)
    """The server starts a new request-log file when the current one would exceed this size (bytes)."""
    reference_max_images: int | None = Field(5000, ge=1)
    """Measure at most N train images for the reference (the first N by sha256); None = all."""
    window_hours: float | None = Field(None, gt=0)
    """Look-back window in hours; None = the policy's window_hours."""
    experiment: str = Field("monitor", min_length=1)
    """MLflow experiment of the monitoring runs."""
    log_to_mlflow: bool = True
    """Log each check's value, the verdict and the report to an MLflow run."""


# --------------------------------------------------------------------------- all params
# --------------------------------------------------------------------------- orchestration (Airflow)
class OrchestrationParams(StrictModel):
    schedule: str | None = "@weekly"
    """cv_retrain schedule: a cron expression or preset (@daily, @weekly, ...); None = manual only."""
    approval_timeout_hours: float = Field(72.0, gt=0)
    """Hours the Airflow approval task waits for a reviewer; a timeout counts as a rejection."""
    task_timeout_minutes: int = Field(120, ge=1)
    """execution_timeout of each pipeline task."""
    retries: int = Field(2, ge=0, le=10)
    """Retries of the tasks that talk to servers (registry, deploy), with exponential backoff."""
    retry_delay_s: int = Field(30, ge=1)
    """First retry delay in seconds (doubles on each retry)."""
    push_to_remote: bool = True
    """Push data and model outputs to the DVC remote after each DVC stage."""
    keep_workspaces: int = Field(5, ge=1, le=1000)
    """How many run working copies (cvplatform.workspace) of the project to keep for inspection."""
    monitor_schedule: str | None = "@hourly"
    """cv_monitor schedule; None = manual only."""


class Params(StrictModel):
    """Everything in ``params.yaml``. Later stages add their own section."""

    project: ProjectParams = ProjectParams()
    ingest: IngestParams = IngestParams()
    validate_: ValidateParams = Field(ValidateParams(), alias="validate")
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    export: ExportParams = ExportParams()
    registry: RegistryParams = RegistryParams()
    serve: ServeParams = ServeParams()
    deploy: DeployParams = DeployParams()
    monitor: MonitorParams = MonitorParams()
    orchestration: OrchestrationParams = OrchestrationParams()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _task_monitor_defaults(cls, data: Any) -> Any:
        """``train.monitor: null`` / ``train.mode: null`` become the task's default metric and its direction, so
        switching ``project.task`` needs no other key."""
        if not isinstance(data, dict):
            return data
        project, train = data.get("project"), data.get("train", {})
        task_name = project.get("task") if isinstance(project, dict) else getattr(project, "task", None)
        if isinstance(train, TrainParams):
            fields = {"monitor": train.monitor, "mode": train.mode}
        elif isinstance(train, dict):
            fields = train
        else:
            return data
        if not isinstance(task_name or "classification", str):
            return data
        if fields.get("monitor") is not None and fields.get("mode") is not None:
            return data
        from cvplatform.tasks import get_task, is_known

        name = task_name or "classification"
        if not is_known(name):
            return data  # the project.task check names the unknown task
        spec = get_task(name).monitor
        monitor = fields.get("monitor") if fields.get("monitor") is not None else spec.default
        mode = fields.get("mode")
        if mode is None and monitor in spec.metrics:
            mode = spec.mode(monitor)
        if isinstance(train, TrainParams):
            return {**data, "train": train.model_copy(update={"monitor": monitor, "mode": mode})}
        return {**data, "train": {**train, "monitor": monitor, "mode": mode}}

    @model_validator(mode="after")
    def _monitor_fits_task(self) -> Params:
        """``train.monitor`` must be a metric the task logs, with its direction in ``train.mode``."""
        from cvplatform.tasks import get_task

        spec = get_task(self.project.task).monitor
        tp = self.train
        if tp.monitor not in spec.metrics:
            raise ValueError(f"train.monitor {tp.monitor!r} is not a metric the {self.project.task} task logs; "
                             f"use one of {', '.join(spec.metrics)}")
        want = spec.mode(tp.monitor)
        if tp.mode != want:
            raise ValueError(f"train.monitor {tp.monitor} must be {want}imised: set train.mode: {want}")
        return self

    @property
    def validate_params(self) -> ValidateParams:
        return self.validate_


M = TypeVar("M", bound=BaseModel)


# --------------------------------------------------------------------------- loading
def read_yaml(path: str | os.PathLike[str]) -> Any:
    """Read a YAML file, raising ConfigError naming the file on any problem."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: file not found (cwd: {os.getcwd()}). Create it or pass the right path.")
    if not p.is_file():
        raise ConfigError(f"{p}: is not a file.")
    try:
        with p.open("r", encoding="utf-8") as fh:
            return yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{p}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from exc


def parse_overrides(overrides: Iterable[str]) -> list[tuple[list[str], Any]]:
    """Parse ``key.path=value`` strings; the value is read as YAML (``3``, ``true``, ``[a, b]``)."""
    parsed = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key.path=value, e.g. --set train.epochs=3")
        key, raw = item.split("=", 1)
        parts = [k for k in key.strip().split(".") if k]
        if not parts:
            raise ConfigError(f"--set {item!r}: empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: value is not valid YAML: {exc}") from exc
        parsed.append((parts, value))
    return parsed


def apply_overrides(data: dict[str, Any], overrides: Iterable[str], source: str) -> dict[str, Any]:
    """Return a deep copy of ``data`` with ``--set`` overrides applied.

    Intermediate keys are created as needed; the model validation that follows
    rejects keys that do not exist, naming them.
    """
    import copy

    out = copy.deepcopy(data)
    for parts, value in parse_overrides(overrides):
        node = out
        for i, k in enumerate(parts[:-1]):
            nxt = node.get(k)
            if nxt is None:
                nxt = node[k] = {}
            elif not isinstance(nxt, dict):
                raise ConfigError(
                    f"{source}: --set {'.'.join(parts)}: '{'.'.join(parts[: i + 1])}' is a value, not a section"
                )
            node = nxt
        node[parts[-1]] = value
    return out


def _type_name(v: Any) -> str:
    return type(v).__name__


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[str, list[str]]:
    """Walk ``model`` along ``loc`` (minus the last item) and list the keys allowed there."""
    current: Any = model
    for part in loc[:-1]:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return "", []
        field = None
        for name, f in current.model_fields.items():
            if part in (name, f.alias):
                field = f
                break
        if field is None:
            return "", []
        ann = field.annotation
        # unwrap Optional[X]
        args = getattr(ann, "__args__", None)
        if args and not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            ann = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), ann)
        current = ann
    if isinstance(current, type) and issubclass(current, BaseModel):
        names = sorted((f.alias or n) for n, f in current.model_fields.items())
        return ".".join(map(str, loc[:-1])) or "<top level>", names
    return "", []


def format_validation_error(exc: ValidationError, model: type[BaseModel], source: str) -> str:
    """Turn a pydantic ValidationError into one line per problem naming key, value and expected type."""
    lines = [f"{source}: invalid configuration"]
    for err in exc.errors():
        loc = tuple(err.get("loc", ()))
        key = ".".join(str(p) for p in loc) or "<top level>"
        etype = err.get("type", "")
        value = err.get("input")
        if etype == "extra_forbidden":
            where, allowed = _allowed_keys(model, loc)
            hint = f"; allowed keys under '{where}': {', '.join(allowed)}" if allowed else ""
            lines.append(f"  - {key}: unknown key{hint}")
        elif etype == "missing":
            lines.append(f"  - {key}: required key is missing")
        else:
            msg = err.get("msg", "invalid value")
            shown = repr(value)
            if len(shown) > 80:
                shown = shown[:77] + "..."
            lines.append(f"  - {key}: {msg}; got {shown} ({_type_name(value)})")
    lines.append("Fix the key(s) above in the file (or the --set override) and run again.")
    return "\n".join(lines)


def load_model(
    model: type[M], data: Mapping[str, Any] | None, source: str
) -> M:
    """Validate ``data`` against ``model``; errors become a ConfigError naming ``source``."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {_type_name(data)}")
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, model, source)) from None


def load_config(path: str | os.PathLike[str], model: type[M]) -> M:
    """Load a structured definition from ``configs/`` into ``model``.

    Example:
        >>> from cvplatform.config import load_config, Params
        >>> load_config("params.yaml", Params).ingest.source  # doctest: +SKIP
        'digits'
    """
    return load_model(model, read_yaml(path), str(path))


#: Keys that moved: one key per fact. An old key in params.yaml (or --set) is a configuration error naming its
#: replacement, never silently ignored.
RETIRED_KEYS: dict[str, str] = {
    "train.manifest": "project.manifest",
    "evaluate.manifest": "project.manifest",
    "export.manifest": "project.manifest",
    "deploy.local.manifest": "project.manifest",
    "monitor.manifest": "project.manifest",
    "evaluate.registered_model": "registry.model_name",
    "serve.registered_model": "registry.model_name",
    "evaluate.champion_alias": "registry.champion_alias",
}


def check_retired_keys(data: Mapping[str, Any], source: str) -> None:
    """Raise ConfigError (exit 2) naming every retired key in ``data`` and the key that replaced it.

    Example:
        >>> check_retired_keys({"evaluate": {"registered_model": "x"}}, "params.yaml")
        Traceback (most recent call last):
        ...
        cvplatform.errors.ConfigError: params.yaml: evaluate.registered_model was replaced by registry.model_name ...
    """
    found = []
    for old, new in RETIRED_KEYS.items():
        node: Any = data
        for part in old.split("."):
            node = node.get(part, _MISSING) if isinstance(node, Mapping) else _MISSING
        if node is not _MISSING:
            found.append(f"{old} was replaced by {new}")
    if found:
        raise ConfigError(
            f"{source}: " + "; ".join(found) + " (one key per setting). Move the value to the new key and delete "
            "the old one (see params.yaml in the cvplatform repository for every key)."
        )


_MISSING = object()


def load_params(
    path: str | os.PathLike[str] = DEFAULT_PARAMS,
    overrides: Iterable[str] = (),
) -> Params:
    """Load ``params.yaml`` with optional ``key.path=value`` overrides.

    Example:
        >>> from cvplatform.config import load_params
        >>> p = load_params("params.yaml", ["ingest.workers=1"])  # doctest: +SKIP
        >>> p.ingest.workers  # doctest: +SKIP
        1
    """
    overrides = list(overrides)
    data = read_yaml(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {_type_name(data)}")
    source = str(path)
    if overrides:
        data = apply_overrides(data, overrides, source)
        source = f"{path} (with --set {' '.join(overrides)})"
    check_retired_keys(data, source)
    return load_model(Params, data, source)


def check_params(params: Params, root: str | os.PathLike[str] = ".") -> list[str]:
    """Validate every configuration file ``params`` points to; return what was checked.

    ``load_params`` validates ``params.yaml`` itself; this also loads the files its keys
    name (expectation suite, augmentation recipe, scenario suites, serving config, canary
    and drift policies) and the selected architecture's arguments, the way the stages will.
    ``cvplatform config`` runs it, so a bad setting fails there (exit 2) and not an hour
    into a pipeline.

    Raises:
        ConfigError: one line per invalid file or key, each naming the file and key.

    Example:
        >>> check_params(load_params("params.yaml"))  # doctest: +SKIP
        ['validate.suite: configs/expectations/manifest.yaml', ...]
    """
    from cvplatform.data.augment import load_recipe
    from cvplatform.deploy.analysis import load_canary_policy
    from cvplatform.evaluation.scenarios import load_suite
    from cvplatform.models import resolve_model_kwargs
    from cvplatform.monitoring.drift import DriftPolicy
    from cvplatform.serving.schemas import load_serving_config
    from cvplatform.tasks import get_task

    base = Path(root)

    def at(rel: str) -> Path:
        return Path(rel) if Path(rel).is_absolute() else base / rel

    checks: list[tuple[str, str, Any]] = [
        ("validate.suite", params.validate_params.suite,
         lambda f: load_config(f, ManifestSuiteConfig)),
        ("train.augment", params.train.augment, load_recipe),
        ("evaluate.suite", params.evaluate.suite, lambda f: load_suite(f, get_task(params.project.task))),
        ("serve.config", params.serve.config, load_serving_config),
        ("deploy.policy", params.deploy.policy, load_canary_policy),
        ("monitor.policy", params.monitor.policy, lambda f: load_config(f, DriftPolicy)),
    ]
    if params.export.int8.suite:
        checks.append(("export.int8.suite", params.export.int8.suite,
                       lambda f: load_suite(f, get_task(params.project.task))))
    problems: list[str] = []
    checked: list[str] = []
    for key, rel, loader in checks:
        try:
            loader(at(rel))
            checked.append(f"{key}: {rel}")
        except ConfigError as exc:
            problems.append(f"{key} = {rel}:\n    " + str(exc).replace("\n", "\n    "))
    model = params.train.model
    for arch in dict.fromkeys((model.arch, *model.sections())):
        try:
            resolve_model_kwargs(arch, **dict(getattr(model, arch, None) or {}))
            checked.append(f"train.model.{arch}")
        except ConfigError as exc:
            problems.append(f"train.model.{arch}: {exc}")
    if problems:
        raise ConfigError("invalid configuration files or settings:\n  - " + "\n  - ".join(problems))
    return checked


def params_hash(params: BaseModel) -> str:
    """A stable sha256 of a params model (used as lineage)."""
    import hashlib
    import json

    blob = json.dumps(params.model_dump(mode="json", by_alias=True), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


__all__ = [
    "DEFAULT_PARAMS",
    "BoxSuiteConfig",
    "DeployLocalParams",
    "DeployParams",
    "DigitsParams",
    "EvaluateParams",
    "ExportBenchmarkParams",
    "ExportInt8Params",
    "ExportParams",
    "ExportParityParams",
    "IngestParams",
    "Literal",
    "ManifestSuiteConfig",
    "MonitorParams",
    "Params",
    "PrivacyParams",
    "ProjectParams",
    "RegistryParams",
    "RegistryRetryParams",
    "ShapesParams",
    "ServeParams",
    "SplitFractions",
    "StrictModel",
    "TrainModelParams",
    "TrainParams",
    "OptimizerParams",
    "SchedulerParams",
    "LossParams",
    "ValidateParams",
    "RETIRED_KEYS",
    "apply_overrides",
    "check_params",
    "check_retired_keys",
    "load_config",
    "load_model",
    "load_params",
    "params_hash",
    "read_yaml",
]
