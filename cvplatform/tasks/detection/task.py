"""Object detection behind the task seam: :class:`DetectionTask` (``project.task: detection``).

What the stages ask of it (docs/adr/0010-task-seam.md; the pieces are in this package):

* **targets** (``target_kind = "boxes"``): an *annotation table* beside the manifest, one row per box with
  the columns of :data:`~cvplatform.tasks.detection.annotations.BOX_COLUMNS` (``sha256, class, x0, y0, x1,
  y1, area, iscrowd``; pixels of the stored image; parquet or CSV,
  :func:`~cvplatform.tasks.detection.annotations.box_table` writes it). Each manifest row names its table in
  the column :data:`ANNOTATIONS_COLUMN` (a path relative to the project root, like ``path``); the image's
  boxes are the table's rows with its ``sha256`` (none: a background image). :meth:`DetectionTask.target_of`
  gives ``{"boxes": (K, 4) float32, "labels": (K,) int64, "iscrowd": (K,) bool}``; ``collate`` stacks the
  images and keeps the targets as a list;
* **training**: :class:`~cvplatform.tasks.detection.module.DetectionModule` (CenterNet head, focal + L1 loss),
  monitored on ``val_map`` (COCO mAP@[.5:.95]), ``val_map50`` or ``val_loss``;
* **contract**: ONNX outputs ``boxes (N, K, 4)`` xyxy in input pixels, ``scores (N, K)``, ``labels (N, K)``:
  the top-``K`` heatmap peaks decoded inside the graph; :func:`~cvplatform.tasks.detection.postprocess.postprocess`
  (numpy) keeps those scoring ``>= score_threshold`` without same-class duplicates;
* **agreement** (parity, INT8, canary shadow): F1 of the two models' boxes matched at IoU >= 0.5 with the same
  class (``Agreement.n`` = boxes of both, ``agree`` = 2 x matched, so ``rate`` is that F1);
* **evaluation**: COCO mAP, mAP50, mAP75, AP small/medium/large, AR@100 (:func:`~cvplatform.tasks.detection.metrics.coco_metrics`)
  with percentile-bootstrap intervals over images; the champion comparison is a paired bootstrap of mAP50;
* **serving**: ``{"detections": [{"class", "score", "box"}]}`` per image; ``decode_top`` = the best box's class
  and score (``""`` and ``0.0`` without a box); OIP v2 ``boxes``, ``scores``, ``labels`` (class names) padded to
  the batch's most detections, and ``num_detections``; a request may set ``score_threshold`` and ``max_detections``
  (:meth:`DetectionTask.request_parameters`), and ``/metrics`` gets boxes per image, box scores and boxes per class
  (:attr:`DetectionTask.served_metrics`).

Boxes are in the pixels of the network input (``input_size``), as the graph outputs them; serving moves them to
the request image's pixels with :meth:`DetectionTask.to_image_pixels` (undoing the contract's stretch or letterbox).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from cvplatform.errors import DataError, ModelError
from cvplatform.tasks.base import (
    Agreement,
    MetricSpec,
    MonitorSpec,
    RequestParameter,
    ServedMetric,
    Task,
    bound_check,
    floor_check,
    gate_check,
)

if TYPE_CHECKING:  # pragma: no cover
    from cvplatform.preprocess import PreprocessContract

#: The manifest column that names an image's annotation table (relative to the project root, or absolute).
ANNOTATIONS_COLUMN = "annotations"
#: The annotation table's usual file name, beside the manifest.
ANNOTATIONS_FILE = "annotations.parquet"
OUTPUTS: tuple[str, ...] = ("boxes", "scores", "labels")
_REQUIRED = ("sha256", "class", "x0", "y0", "x1", "y1")


# --------------------------------------------------------------------------- the annotation table
@dataclass(frozen=True)
class _ImageBoxes:
    boxes: np.ndarray  # (K, 4) float32
    classes: tuple[str, ...]
    iscrowd: np.ndarray  # (K,) bool


_NO_BOXES = _ImageBoxes(np.zeros((0, 4), np.float32), (), np.zeros(0, bool))


def _table_path(row: Mapping[str, Any]) -> Path:
    """The annotation table a manifest row names, resolved against the project root."""
    import pandas as pd

    ref = row.get(ANNOTATIONS_COLUMN)
    if ref is None or (pd.api.types.is_scalar(ref) and pd.isna(ref)) or not str(ref).strip():
        raise DataError(
            f"{row.get('path', '?')}: the manifest row has no {ANNOTATIONS_COLUMN!r} value. A detection manifest "
            f"names each image's annotation table there (usually {ANNOTATIONS_FILE} beside the manifest: one row per "
            "box with sha256, class, x0, y0, x1, y1 in pixels, area, iscrowd). Re-run `cvplatform ingest` with "
            "project.task: detection, or add the column."
        )
    p = Path(str(ref))
    if p.is_absolute():
        return p
    rel, absolute = str(row.get("path") or ""), str(row.get("abs_path") or "")
    root = Path.cwd()
    if rel and absolute and Path(absolute).parts[-len(Path(rel).parts):] == Path(rel).parts:
        root = Path(*Path(absolute).parts[:-len(Path(rel).parts)])  # the datamodule's project root
    return root / p


def _read_table(path: Path) -> Any:
    import pandas as pd

    try:
        if path.suffix.lower() == ".csv":
            return pd.read_csv(path, dtype={"sha256": str, "class": str})
        return pd.read_parquet(path)
    except FileNotFoundError:
        raise DataError(f"{path}: the annotation table named by the manifest ({ANNOTATIONS_COLUMN!r} column) does not "
                        "exist. Pull the data (`dvc pull`) or re-run `cvplatform ingest`.") from None
    except Exception as exc:  # pyarrow / pandas parser errors
        raise DataError(f"{path}: cannot read the annotation table ({type(exc).__name__}: {exc}); it must be parquet "
                        "or CSV with columns sha256, class, x0, y0, x1, y1 (area, iscrowd optional).") from None


@lru_cache(maxsize=8)
def _load_table(path: str, mtime_ns: int, size: int) -> dict[str, _ImageBoxes]:
    """sha256 -> the image's boxes; cached per file version (``mtime_ns``, ``size``)."""
    df = _read_table(Path(path))
    missing = [c for c in _REQUIRED if c not in df.columns]
    if missing:
        raise DataError(f"{path}: the annotation table lacks column(s) {missing} (has {list(df.columns)}); it needs "
                        "sha256, class, x0, y0, x1, y1 in pixels (area, iscrowd optional).")
    import pandas as pd

    coords = df[["x0", "y0", "x1", "y1"]].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(coords).all(axis=1) | (coords[:, 2] <= coords[:, 0]) | (coords[:, 3] <= coords[:, 1])
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}: row {i} (image {str(df['sha256'].iloc[i])[:12]}, class {df['class'].iloc[i]!r}) has "
                        f"box {coords[i].tolist()}: not finite or of zero size ({int(bad.sum())} such row(s)). Fix the "
                        "annotations and re-run `cvplatform ingest`.")
    crowd = df["iscrowd"].astype(bool).to_numpy() if "iscrowd" in df.columns else np.zeros(len(df), bool)
    classes = df["class"].astype(str).to_numpy()
    out: dict[str, _ImageBoxes] = {}
    for sha, idx in df.groupby(df["sha256"].astype(str), sort=False).indices.items():
        out[str(sha)] = _ImageBoxes(coords[idx].astype(np.float32), tuple(classes[idx]), crowd[idx])
    return out


def _stat(path: Path) -> tuple[int, int]:
    """``(mtime_ns, size)`` of the file (``(-1, -1)`` when missing: reading it then names the file)."""
    try:
        st = os.stat(path)
    except OSError:
        return -1, -1
    return st.st_mtime_ns, st.st_size


def boxes_of(row: Mapping[str, Any], class_index: Mapping[str, int]) -> dict[str, np.ndarray]:
    """The target of one manifest row from its annotation table (see :meth:`DetectionTask.target_of`).

    Raises:
        DataError: no table named, the table missing or malformed, or a box of a class not in ``class_index``.
    """
    path = _table_path(row)
    table = _load_table(str(path), *_stat(path))
    found = table.get(str(row.get("sha256")), _NO_BOXES)
    unknown = sorted(set(found.classes) - set(class_index))
    if unknown:
        raise DataError(f"{path}: image {row.get('path', row.get('sha256'))} has boxes of class(es) {unknown}, which "
                        f"are not among the model's classes {list(class_index)}. Re-run `cvplatform ingest` so the "
                        "class list and the annotation table agree.")
    return {"boxes": found.boxes.copy(), "labels": np.asarray([class_index[c] for c in found.classes], np.int64),
            "iscrowd": found.iscrowd.copy()}


# --------------------------------------------------------------------------- outputs and targets as arrays
def _arrays(outputs: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (np.asarray(outputs["boxes"], np.float32), np.asarray(outputs["scores"], np.float32),
            np.asarray(outputs["labels"]).astype(np.int64))


def _split(rows: np.ndarray, counts: Sequence[int]) -> list[np.ndarray]:
    """``rows`` cut into consecutive slices of ``counts`` rows (``np.split`` without its per-slice overhead)."""
    out, start = [], 0
    for n in counts:
        out.append(rows[start:start + n])
        start += n
    return out


def _truths(targets: Any) -> list[dict[str, np.ndarray]]:
    """Targets as ``target_of`` gives them (any sequence of dicts) -> a list of numpy dicts."""
    out = []
    for i, t in enumerate(list(targets)):
        if not isinstance(t, Mapping) or "boxes" not in t or "labels" not in t:
            raise ModelError(f"detection target {i} is {type(t).__name__}, not a dict with 'boxes' and 'labels' "
                             "(what DetectionTask.target_of returns).")
        boxes = np.asarray(t["boxes"], np.float64).reshape(-1, 4)
        crowd = t.get("iscrowd")
        out.append({"boxes": boxes, "labels": np.asarray(t["labels"], np.int64).reshape(-1),
                    "iscrowd": np.zeros(len(boxes), bool) if crowd is None else np.asarray(crowd, bool).reshape(-1)})
    return out


def _bootstrap(truth: Sequence[Mapping[str, Any]], preds: Sequence[Sequence[Mapping[str, Any]]],
               class_names: Sequence[str], keys: Sequence[str], n_samples: int, seed: int
               ) -> list[dict[str, list[float]]]:
    """For each prediction set: metric -> its value on ``n_samples`` image resamples (the same resamples for
    every set, so differences are paired). COCO-undefined values (no such objects) are left out.

    Each set's COCO matches are computed once (:class:`~cvplatform.tasks.detection.metrics.CocoResampler`);
    a resample only re-accumulates them, with the numbers a full COCO evaluation of the resampled images gives."""
    from cvplatform.tasks.detection.metrics import CocoResampler

    rng = np.random.default_rng(seed)
    n = len(truth)
    out: list[dict[str, list[float]]] = [{k: [] for k in keys} for _ in preds]
    if n_samples <= 0 or not n:
        return out
    resamplers = [CocoResampler(truth, p, class_names, keys) for p in preds]
    for _ in range(int(n_samples)):
        idx = rng.integers(0, n, size=n)
        for acc, r in zip(out, resamplers, strict=True):
            m = r.metrics(idx)
            for k in keys:
                if m[k] is not None:
                    acc[k].append(float(m[k]))
    return out


def _percentile(values: Sequence[float], confidence: float) -> tuple[float, float] | None:
    if len(values) < 2:
        return None
    a = (1.0 - confidence) / 2
    return float(np.quantile(values, a)), float(np.quantile(values, 1 - a))


@dataclass
class DetectionResult:
    """One scenario's outcome (the scenario-result protocol of :mod:`cvplatform.tasks.base`) plus what the
    champion comparison, the gallery and the report need: the truth and the boxes of every image."""

    name: str
    kind: str
    image_ids: list[str]
    truth: list[dict[str, np.ndarray]]
    preds: list[dict[str, np.ndarray]]
    """Post-processed boxes scoring ``>= DetectionTask.eval_score_threshold`` (what COCO ranks)."""
    values: dict[str, float | None] = field(default_factory=dict)
    intervals: dict[str, tuple[float, float] | None] = field(default_factory=dict)
    note: str = ""
    corruption: str | None = None
    severity: int | None = None
    class_names: tuple[str, ...] = ()
    ap_per_class: dict[str, float | None] = field(default_factory=dict)
    operating_point: dict[str, float | None] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.image_ids)


# --------------------------------------------------------------------------- the task
class DetectionTask(Task):
    """Boxes per image (see the module docstring)."""

    name: ClassVar[str] = "detection"
    description: ClassVar[str] = "object detection: class and box of every object (CenterNet, COCO mAP)"
    interval_note: ClassVar[str] = ("percentile bootstrap over images (COCO matches computed once, re-accumulated "
                                    "per resample, at most max_bootstrap resamples); champion difference paired "
                                    "bootstrap of mAP50")
    gallery_title: ClassVar[str] = "Worst images (most missed and false boxes)"
    gallery_columns: ClassVar[tuple[str, str, str]] = ("objects", "detected", "errors")

    #: Boxes scoring below this are not detections (decode, response, agreement, decode_top, the gallery).
    score_threshold: ClassVar[float] = 0.3
    #: Boxes scoring below this are not ranked by the COCO evaluation (mAP ranks every scored box).
    eval_score_threshold: ClassVar[float] = 0.01
    #: A box overlapping a better box of its class by at least this IoU is a duplicate.
    duplicate_iou: ClassVar[float] = 0.6
    max_detections: ClassVar[int] = 100
    #: IoU at which two boxes are the same object (agreement, gallery errors).
    match_iou: ClassVar[float] = 0.5
    #: albumentations drops a box of which less than this share remains visible after a crop.
    min_visibility: ClassVar[float] = 0.3
    #: At most this many bootstrap resamples (each re-accumulates the scenario's COCO matches).
    max_bootstrap: ClassVar[int] = 200

    # ------------------------------------------------------------------ data
    @property
    def target_kind(self) -> str:
        return "boxes"

    def albumentations_targets(self) -> dict[str, Any]:
        """``bbox_params``: pascal_voc boxes (xyxy pixels) with their ``labels``, dropped below ``min_visibility``."""
        import albumentations as A

        return {"bbox_params": A.BboxParams(format="pascal_voc", label_fields=["labels"],
                                            min_visibility=self.min_visibility)}

    def target_of(self, row: Mapping[str, Any], class_index: Mapping[str, int]) -> dict[str, np.ndarray]:
        """The image's boxes from the annotation table the row names (:data:`ANNOTATIONS_COLUMN`), keyed by its
        ``sha256``: ``{"boxes": (K, 4) float32 xyxy pixels, "labels": (K,) int64, "iscrowd": (K,) bool}``."""
        return boxes_of(row, class_index)

    def collate(self, batch: Sequence[tuple[Any, Any]]) -> tuple[Any, Any]:
        """Images stacked ``(N, 3, H, W)``; targets stay a list of per-image dicts (``K`` varies)."""
        import torch

        return torch.stack([b[0] for b in batch]), [b[1] for b in batch]

    def transform_sample(self, transform: Any, image: np.ndarray, target: Any) -> tuple[Any, Any]:
        """The image and its boxes through ``transform`` (built with :meth:`albumentations_targets`): boxes follow
        every flip, crop, resize and letterbox; a box cropped below :attr:`min_visibility` leaves with its label
        and ``iscrowd``."""
        boxes = np.asarray(target["boxes"], np.float32).reshape(-1, 4)
        labels = np.asarray(target["labels"], np.int64).reshape(-1)
        crowd = target.get("iscrowd")
        crowd = np.zeros(len(boxes), bool) if crowd is None else np.asarray(crowd, bool).reshape(-1)
        # the label field carries each box's row, so every per-box field follows the boxes albumentations keeps
        out = transform(image=image, bboxes=boxes, labels=np.arange(len(boxes)))
        keep = np.asarray(out["labels"], np.int64).reshape(-1)
        moved = np.asarray(out["bboxes"], np.float32).reshape(-1, 4)
        return out["image"], {"boxes": moved, "labels": labels[keep], "iscrowd": crowd[keep]}

    def class_names(self, frame: Any, root: Path, source: str, *, for_training: bool = True) -> list[str]:
        """The sorted classes of the boxes of the manifest's images (read from the annotation tables its
        :data:`ANNOTATIONS_COLUMN` column names); at least one and, ``for_training``, each with a box in the train
        split. The ``label`` column is not read."""
        if ANNOTATIONS_COLUMN not in frame.columns:
            raise DataError(f"{source}: no {ANNOTATIONS_COLUMN!r} column. A detection manifest names each image's "
                            f"annotation table there (usually {ANNOTATIONS_FILE} beside the manifest). Re-run "
                            "`cvplatform ingest` with project.task: detection, or add the column.")
        seen: dict[str, set[str]] = {}  # class -> splits with a box of it
        for row in frame[["path", "sha256", "split", ANNOTATIONS_COLUMN]].to_dict("records"):
            path = _table_path({**row, "abs_path": str(Path(root) / str(row["path"]))})
            st = _stat(path)
            found = _load_table(str(path), *st).get(str(row["sha256"]), _NO_BOXES)
            for c in found.classes:
                seen.setdefault(c, set()).add(str(row["split"]))
        if not seen:
            raise DataError(f"{source}: the annotation tables hold no box of the manifest's images, so there is no "
                            "class to detect. Check the annotations (and the images' sha256) and re-run "
                            "`cvplatform ingest`.")
        missing_train = sorted(c for c, splits in seen.items() if "train" not in splits)
        if missing_train and for_training:
            raise DataError(f"{source}: class(es) {missing_train} have no box in the train split. Add images with "
                            "those objects to train (or remove the boxes) and re-run `cvplatform ingest`.")
        return sorted(seen)

    # ------------------------------------------------------------------ training
    def build_module(self, **kwargs: Any) -> Any:
        from cvplatform.tasks.detection.module import DetectionModule

        return DetectionModule(**kwargs)

    def module_options(self, train: Any) -> dict[str, Any]:
        """``train.detector``: the neck's upsampling, the head width, the size-loss weight and K (max peaks)."""
        return train.detector.model_dump()

    @property
    def monitor(self) -> MonitorSpec:
        return MonitorSpec({"val_map": "max", "val_map50": "max", "val_loss": "min"}, default="val_map")

    def rebuild_network(self, hparams: Mapping[str, Any], state_dict: Mapping[str, Any], source: str) -> Any:
        """The checkpoint's :class:`~cvplatform.tasks.detection.module.DetectionModule` rebuilt from its
        hyper-parameters and weights, as exported: ``DetectionModule.exportable()`` (images in, ``boxes``,
        ``scores``, ``labels`` out, decoded in the graph)."""
        from cvplatform.tasks.detection.module import DetectionModule

        try:
            module = DetectionModule(**dict(hparams))
        except (ModelError, TypeError) as exc:
            raise ModelError(f"{source}: cannot rebuild the detector from the checkpoint's hyper-parameters "
                             f"({exc}). Was it trained with project.task: detection? Retrain with "
                             "`cvplatform train`.") from None
        try:
            module.load_state_dict(dict(state_dict), strict=True)
        except RuntimeError as exc:
            detail = " ".join(str(exc).split())[:400]
            raise ModelError(f"{source}: weights do not fit the detector {hparams.get('arch')!r} "
                             f"{hparams.get('arch_kwargs')}: {detail}. The checkpoint is inconsistent (or not a "
                             "detection checkpoint); retrain with `cvplatform train`.") from None
        return module.exportable()

    # ------------------------------------------------------------------ contract
    @property
    def output_names(self) -> tuple[str, ...]:
        return OUTPUTS

    def check_outputs(self, outputs: Mapping[str, np.ndarray], class_names: Sequence[str]) -> None:
        missing = [n for n in OUTPUTS if n not in outputs]
        if missing:
            raise ModelError(f"the model lacks output(s) {missing} (outputs: {sorted(outputs)}); a detection model "
                             "returns boxes (N, K, 4), scores (N, K) and labels (N, K).")
        b, s, lab = (np.shape(outputs[n]) for n in OUTPUTS)
        if len(b) != 3 or b[2] != 4 or tuple(s) != tuple(b[:2]) or tuple(lab) != tuple(b[:2]):
            raise ModelError(f"detection outputs of shapes boxes {tuple(b)}, scores {tuple(s)}, labels {tuple(lab)} do "
                             "not fit: expected boxes (N, K, 4), scores (N, K), labels (N, K).")
        labels = np.asarray(outputs["labels"])
        whole = np.issubdtype(labels.dtype, np.integer)  # integer labels need no rounding check
        if labels.size and (labels.min() < 0 or labels.max() >= len(class_names)
                            or not (whole or np.array_equal(labels, np.round(labels)))):
            raise ModelError(f"detection labels span [{labels.min()}, {labels.max()}] but there are "
                             f"{len(class_names)} class names {list(class_names)}: labels must be integers in "
                             f"[0, {len(class_names) - 1}].")

    def detections(self, outputs: Mapping[str, np.ndarray], class_names: Sequence[str],
                   score_threshold: float | None = None, max_detections: int | None = None
                   ) -> list[dict[str, np.ndarray]]:
        """Post-processed ``{"boxes", "scores", "labels"}`` per image (None: :attr:`score_threshold`,
        :attr:`max_detections`)."""
        from cvplatform.tasks.detection.postprocess import postprocess

        self.check_outputs(outputs, class_names)
        thr = self.score_threshold if score_threshold is None else score_threshold
        most = self.max_detections if max_detections is None else max_detections
        return postprocess(*_arrays(outputs), score_threshold=thr, iou_threshold=self.duplicate_iou,
                           max_detections=most)

    def request_parameters(self, output_shapes: Mapping[str, Sequence[Any]] | None = None
                           ) -> tuple[RequestParameter, ...]:
        """``score_threshold`` in [0, 1] (default :attr:`score_threshold`) and ``max_detections`` in [1, the
        model's ``K`` (its ``scores`` output's second axis) or :attr:`max_detections`, whichever is smaller].

        Example:
            >>> [(p.name, p.low, p.high, p.default) for p in DetectionTask().request_parameters({"scores": ["N", 20]})]
            [('score_threshold', 0.0, 1.0, 0.3), ('max_detections', 1, 20, 20)]
        """
        shape = list((output_shapes or {}).get("scores") or [])
        k = shape[1] if len(shape) == 2 and isinstance(shape[1], int) and shape[1] > 0 else None
        most = min(self.max_detections, k) if k is not None else self.max_detections
        limit = (f"the model's K = {k} decoded peaks" if k is not None and k <= self.max_detections
                 else f"DetectionTask.max_detections = {self.max_detections}")
        return (RequestParameter("score_threshold", "float", 0.0, 1.0, self.score_threshold,
                                 "boxes scoring below this are not returned"),
                RequestParameter("max_detections", "int", 1, most, most,
                                 f"at most this many boxes per image, best first (at most {limit})"))

    served_metrics: ClassVar[tuple[ServedMetric, ...]] = (
        ServedMetric("cvplatform_detections_per_image", "histogram",
                     "Boxes answered per image (after the request's score_threshold / max_detections).",
                     (0, 1, 2, 3, 5, 10, 20, 50, 100)),
        ServedMetric("cvplatform_detection_score", "histogram", "Score of each answered box.",
                     (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)),
        ServedMetric("cvplatform_detections", "counter", "Answered boxes by class.", by_class=True),
    )

    def served_observations(self, predictions: Sequence[Mapping[str, Any]], class_names: Sequence[str]
                            ) -> dict[str, Any]:
        """Boxes per image, every box's score and the boxes per class of one answered request (from the decoded
        arrays when the predictions have them, in one pass for the request; classes in the order they first
        appear)."""
        import collections

        if not all("scores" in p and "labels" in p for p in predictions):  # detections only: box by box
            dets = [p["detections"] for p in predictions]
            return {"cvplatform_detections_per_image": [len(ds) for ds in dets],
                    "cvplatform_detection_score": [d["score"] for ds in dets for d in ds],
                    "cvplatform_detections": dict(collections.Counter(d["class"] for ds in dets for d in ds))}
        if not predictions:
            return {"cvplatform_detections_per_image": [], "cvplatform_detection_score": [],
                    "cvplatform_detections": {}}
        scores = np.concatenate([np.asarray(p["scores"]).reshape(-1) for p in predictions])
        labels = np.concatenate([np.asarray(p["labels"], np.int64).reshape(-1) for p in predictions])
        return {"cvplatform_detections_per_image": [len(p["scores"]) for p in predictions],
                "cvplatform_detection_score": scores.tolist(),
                "cvplatform_detections": {class_names[c]: k for c, k in collections.Counter(labels.tolist()).items()}}

    def decode(self, outputs: Mapping[str, np.ndarray], class_names: Sequence[str], *,
               score_threshold: float | None = None, max_detections: int | None = None) -> list[dict[str, Any]]:
        """Per image: ``detections`` (``[{"box": [x0, y0, x1, y1], "class", "score"}]``, best first) and the arrays
        (``score_threshold`` / ``max_detections``: a request's :meth:`request_parameters`; None = the defaults)."""
        found = self.detections(outputs, class_names, score_threshold, max_detections)
        if not found:
            return []
        # the whole request's boxes as Python values at once, then each image's share
        boxes = np.concatenate([d["boxes"] for d in found]).tolist()
        scores = np.concatenate([d["scores"] for d in found]).tolist()
        labels = np.concatenate([d["labels"] for d in found]).tolist()
        dets = [{"box": b, "class": class_names[c], "score": s} for b, s, c in zip(boxes, scores, labels, strict=True)]
        out, start = [], 0
        for d in found:
            end = start + len(d["scores"])
            out.append({"detections": dets[start:end], **d})
            start = end
        return out

    def to_input_pixels(self, target: Any, contract: PreprocessContract, image_size: tuple[int, int]) -> Any:
        """The target's boxes (``target_of``: pixels of the stored image of ``image_size``) moved into the model
        input's pixels through the contract's stretch or letterbox (:func:`~cvplatform.preprocess.resize_geometry`),
        where the graph's boxes are: what evaluation scores against. Labels and ``iscrowd`` are unchanged.

        Example:
            >>> from cvplatform.preprocess import PreprocessContract
            >>> lb = PreprocessContract((32, 32), (0.5,) * 3, (0.5,) * 3, ("cat",), resize="letterbox")
            >>> t = {"boxes": np.array([[16.0, 0.0, 64.0, 64.0]], np.float32), "labels": np.array([0])}
            >>> DetectionTask().to_input_pixels(t, lb, (64, 128))["boxes"].tolist()
            [[4.0, 8.0, 16.0, 24.0]]
        """
        from cvplatform.preprocess import resize_geometry

        boxes = np.asarray(target["boxes"], np.float64).reshape(-1, 4)
        return {**target, "boxes": resize_geometry(image_size, contract).to_input(boxes).astype(np.float32)}

    def to_image_pixels(self, prediction: dict[str, Any], contract: PreprocessContract,
                        image_size: tuple[int, int]) -> dict[str, Any]:
        """The boxes of one decoded image moved from the model input (``contract.input_size``) to the request
        image's pixels (xyxy, ``image_size`` = its ``(height, width)``), clipped to the image: the contract's
        resize undone (a stretch's per-side scale, or a letterbox's scale and centring padding;
        :func:`~cvplatform.preprocess.resize_geometry`). A box on the letterbox padding shrinks to the edge.

        Example:
            >>> from cvplatform.preprocess import PreprocessContract
            >>> p = {"detections": [{"box": [4.0, 8.0, 16.0, 32.0], "class": "cat", "score": 0.9}],
            ...      "boxes": np.array([[4.0, 8.0, 16.0, 32.0]])}
            >>> c = PreprocessContract((32, 32), (0.5,) * 3, (0.5,) * 3, ("cat",))
            >>> DetectionTask().to_image_pixels(p, c, (64, 128))["detections"][0]["box"]
            [16.0, 16.0, 64.0, 64.0]
            >>> lb = PreprocessContract((32, 32), (0.5,) * 3, (0.5,) * 3, ("cat",), resize="letterbox")
            >>> DetectionTask().to_image_pixels(p, lb, (64, 128))["detections"][0]["box"]  # 1/4 scale, 8 px on top
            [16.0, 0.0, 64.0, 64.0]
        """
        from cvplatform.preprocess import resize_geometry

        return self._moved([prediction], resize_geometry(image_size, contract))[0]

    def to_image_pixels_many(self, predictions: Sequence[dict[str, Any]], contract: PreprocessContract,
                             image_sizes: Sequence[tuple[int, int]]) -> list[dict[str, Any]]:
        """:meth:`to_image_pixels` of a request's predictions (``image_sizes``: each image's ``(height, width)``),
        the same boxes, with one mapping per distinct image size (a request's images often share one)."""
        from cvplatform.preprocess import resize_geometry

        out: list[dict[str, Any] | None] = [None] * len(predictions)
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, size in enumerate(image_sizes):
            by_size.setdefault(tuple(size), []).append(i)
        for size, idx in by_size.items():
            for i, moved in zip(idx, self._moved([predictions[i] for i in idx], resize_geometry(size, contract)),
                                strict=True):
                out[i] = moved
        return out  # type: ignore[return-value]

    @staticmethod
    def _moved(predictions: Sequence[dict[str, Any]], g: Any) -> list[dict[str, Any]]:
        """``predictions`` with their ``boxes`` and ``detections`` moved by one resize geometry ``g``: every
        image's boxes in one :meth:`~cvplatform.preprocess.ResizeGeometry.to_image` call; the detections' boxes
        are those rows when they list the same boxes (as :meth:`decode` makes them), else moved apart."""
        arrays = [np.asarray(p.get("boxes", np.zeros((0, 4))), np.float64).reshape(-1, 4) for p in predictions]
        found = [p.get("detections", []) for p in predictions]
        given = [[d["box"] for d in f] for f in found]
        try:
            same = all(g_ == a.tolist() for g_, a in zip(given, arrays, strict=True))
        except ValueError:  # a box given as an array: compared element-wise, so moved apart
            same = False
        boxes = _split(g.to_image(np.concatenate(arrays)), [len(a) for a in arrays])
        if same:
            moved = boxes
        else:
            flat = np.asarray([b for gb in given for b in gb], np.float64).reshape(-1, 4)
            moved = _split(g.to_image(flat), [len(gb) for gb in given])
        return [{**p, "detections": [{**d, "box": b} for d, b in zip(f, m.tolist(), strict=True)], "boxes": bx}
                for p, f, m, bx in zip(predictions, found, moved, boxes, strict=True)]

    def agreement(self, reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray]) -> Agreement:
        """F1 of the boxes matched at IoU >= :attr:`match_iou` with the same class (``rate`` = 2M / (R + C))."""
        from cvplatform.tasks.detection.metrics import match
        from cvplatform.tasks.detection.postprocess import postprocess

        ra, ca = _arrays(reference), _arrays(candidate)
        if ra[0].shape[0] != ca[0].shape[0]:
            raise ModelError(f"cannot compare detections of {ra[0].shape[0]} and {ca[0].shape[0]} images.")
        kw = {"score_threshold": self.score_threshold, "iou_threshold": self.duplicate_iou,
              "max_detections": self.max_detections}
        refs, cands = postprocess(*ra, **kw), postprocess(*ca, **kw)
        matched = boxes = 0
        disagree, diff, score_diff = [], 0.0, 0.0
        for i, (r, c) in enumerate(zip(refs, cands, strict=True)):
            to_ref, _ = match(r, c, self.match_iou)
            m = int((to_ref >= 0).sum())
            matched, boxes = matched + m, boxes + len(r["scores"]) + len(c["scores"])
            if 2 * m != len(r["scores"]) + len(c["scores"]):
                disagree.append(i)
            if m:
                j = np.flatnonzero(to_ref >= 0)
                diff = max(diff, float(np.abs(c["boxes"][j] - r["boxes"][to_ref[j]]).max()))
                score_diff = max(score_diff, float(np.abs(c["scores"][j] - r["scores"][to_ref[j]]).max()))
        return Agreement(n=boxes, agree=2 * matched, max_abs_diff=diff,
                         detail={"disagree_rows": disagree, "images": len(refs), "matched": matched,
                                 "reference_boxes": sum(len(r["scores"]) for r in refs),
                                 "candidate_boxes": sum(len(c["scores"]) for c in cands),
                                 "max_score_diff": score_diff})

    def output_differences(self, reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray]
                           ) -> np.ndarray:
        """Per image, how far the candidate's boxes are from the reference's, over the boxes both keep at
        :attr:`eval_score_threshold` (what evaluation ranks), matched at IoU >= :attr:`match_iou` with the same class:
        the largest score difference and box-coordinate difference (relative to the coordinate's magnitude, at
        least 1 px: float32 noise grows with the exp of the size head); a box only one model keeps counts with its
        distance above the threshold (the least its score must have moved).

        Element-by-element comparison of the raw top-``K`` would not do: the graph ranks every heatmap peak, and
        background peaks whose logits differ by float noise swap places between runtimes (differences of tens
        of pixels in slots nobody reads), while the boxes that count are the same.

        Example:
            >>> one = {"boxes": np.array([[[0, 0, 10, 10], [50, 50, 60, 60]]], np.float32),
            ...        "scores": np.array([[0.9, 0.001]], np.float32), "labels": np.array([[0, 1]])}
            >>> swapped = {"boxes": one["boxes"][:, ::-1] + 0, "scores": one["scores"][:, ::-1] + 0,
            ...            "labels": one["labels"][:, ::-1] + 0}
            >>> DetectionTask().output_differences(one, swapped).tolist()  # same boxes, other slots
            [0.0]
            >>> DetectionTask().output_differences(one, {**one, "scores": np.array([[0.8, 0.001]], np.float32)}).round(4)
            array([0.1])
        """
        from cvplatform.tasks.detection.metrics import match
        from cvplatform.tasks.detection.postprocess import postprocess

        ra, ca = _arrays(reference), _arrays(candidate)
        if ra[0].shape[0] != ca[0].shape[0]:
            raise ModelError(f"cannot compare detections of {ra[0].shape[0]} and {ca[0].shape[0]} images.")
        thr = self.eval_score_threshold
        kw = {"score_threshold": thr, "iou_threshold": self.duplicate_iou, "max_detections": ra[1].shape[1]}
        out = np.zeros(ra[0].shape[0])
        for i, (r, c) in enumerate(zip(postprocess(*ra, **kw), postprocess(*ca, **kw), strict=True)):
            to_ref, taken = match(r, c, self.match_iou)
            j = np.flatnonzero(to_ref >= 0)
            rb, cb = np.asarray(r["boxes"], np.float64)[to_ref[j]], np.asarray(c["boxes"], np.float64)[j]
            parts = [np.abs(cb - rb) / np.maximum(1.0, np.abs(rb)),
                     np.abs(np.asarray(c["scores"], np.float64)[j] - np.asarray(r["scores"], np.float64)[to_ref[j]]),
                     np.asarray(r["scores"], np.float64)[~taken] - thr,
                     np.asarray(c["scores"], np.float64)[to_ref < 0] - thr]
            out[i] = max((float(x.max()) for x in parts if x.size), default=0.0)
        return out

    agreement_measure: ClassVar[str] = "matched-box F1 over confident boxes (score >= 0.5; same class, IoU >= 0.5)"
    has_objects: ClassVar[bool] = True
    #: A served box scoring at least this is a confident answer: shadow agreement requires the other model to serve it.
    confident_score: ClassVar[float] = 0.5

    def shadow_agreement(self, answered: Mapping[str, np.ndarray], answered_classes: Sequence[str],
                         shadowed: Mapping[str, np.ndarray], shadowed_classes: Sequence[str]) -> np.ndarray:
        """Per image, the F1 of the two models' confident boxes (score >= :attr:`confident_score`), each counted as
        agreed when the other model serves (score >= :attr:`score_threshold`) a box of the same class at IoU >=
        :attr:`match_iou`: ``(agreed confident boxes of both) / (confident boxes of both)``. On an image where
        neither model is confident, the F1 of all their served boxes (``2 M / (A + S)``; 1.0 when neither serves a
        box, 0.0 when only one does). Classes are compared by name.

        Why confident boxes: two healthy detectors differ on borderline boxes, whose scores straddle the served
        threshold (a box one model serves at 0.35 the other scores 0.28). Counting them measured the seeds' noise:
        two detectors of the demo trained with different seeds agreed 0.76 by served-box F1 on the test split
        (0.92 by this measure), while one that drops half its boxes scored 0.55 (0.71 by this measure), so a
        floor could not tell a retrained model from a broken one. A confident box the other model does not serve
        at all still counts against it, as does a confident box it invents.

        Example:
            >>> one = {"boxes": np.array([[[0, 0, 10, 10], [20, 20, 30, 30]]], np.float32),
            ...        "scores": np.array([[0.9, 0.8]], np.float32), "labels": np.array([[0, 1]])}
            >>> half = {**one, "scores": np.array([[0.9, 0.1]], np.float32)}  # no longer serves the second box
            >>> DetectionTask().shadow_agreement(one, ["a", "b"], half, ["a", "b"]).round(3).tolist()
            [0.667]
            >>> borderline = {**one, "scores": np.array([[0.9, 0.35]], np.float32)}  # serves it, less sure
            >>> DetectionTask().shadow_agreement(one, ["a", "b"], borderline, ["a", "b"]).round(3).tolist()
            [1.0]
        """
        from cvplatform.tasks.detection.metrics import match

        a, b = self.detections(answered, answered_classes), self.detections(shadowed, shadowed_classes)
        if len(a) != len(b):
            raise ModelError(f"cannot compare detections of {len(a)} and {len(b)} images.")
        index = {c: i for i, c in enumerate(answered_classes)}
        # the shadowed model's labels in the answering model's class indices (a class it lacks never matches)
        remap = np.asarray([index.get(c, -1 - i) for i, c in enumerate(shadowed_classes)], np.int64)
        out = np.ones(len(a), np.float64)
        for i, (r, c) in enumerate(zip(a, b, strict=True)):
            total = len(r["scores"]) + len(c["scores"])
            if not total:
                continue
            c = {**c, "labels": remap[c["labels"]] if len(c["labels"]) else c["labels"]}
            to_ref, taken = match(r, c, self.match_iou)
            sure_c = np.asarray(c["scores"]) >= self.confident_score
            sure_r = np.asarray(r["scores"]) >= self.confident_score
            confident = int(sure_c.sum() + sure_r.sum())
            if confident:
                out[i] = float((to_ref[sure_c] >= 0).sum() + taken[sure_r].sum()) / confident
            else:
                out[i] = 2.0 * float((to_ref >= 0).sum()) / total
        return out

    def object_signals(self, outputs: Mapping[str, np.ndarray], class_names: Sequence[str],
                       input_size: tuple[int, int], predictions: Sequence[Mapping[str, Any]] | None = None
                       ) -> list[dict[str, Any]] | None:
        """The served boxes of each image: their scores, class names and areas as a share of the model input
        (``input_size``, ``(height, width)``; the boxes are in input pixels, and the share is what it is in the
        request image too, since preprocessing resizes both axes). ``predictions``: ``outputs`` as :meth:`decode`
        gives them with the default parameters, when the caller holds them already (they are post-processed once).

        Example:
            >>> out = {"boxes": np.array([[[0, 0, 16, 8], [0, 0, 4, 4]]], np.float32),
            ...        "scores": np.array([[0.9, 0.1]], np.float32), "labels": np.array([[1, 0]])}
            >>> DetectionTask().object_signals(out, ["cat", "dog"], (32, 32))
            [{'scores': [0.9], 'classes': ['dog'], 'areas': [0.125]}]
        """
        from cvplatform.utils.rounding import round_all

        h, w = input_size
        whole = float(max(1, int(h)) * max(1, int(w)))
        dets = self.detections(outputs, class_names) if predictions is None else predictions
        if not dets:
            return []
        b = np.concatenate([np.asarray(d["boxes"]).reshape(-1, 4) for d in dets]).astype(np.float64)
        area = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None) / whole
        scores = round_all(np.concatenate([d["scores"] for d in dets]))
        classes = [class_names[c] for c in np.concatenate([d["labels"] for d in dets]).astype(np.int64).tolist()]
        areas = round_all(np.fmin(area, 1.0))  # fmin: min(1.0, nan) is 1.0 as well
        out, start = [], 0
        for d in dets:
            end = start + len(d["scores"])
            out.append({"scores": scores[start:end], "classes": classes[start:end], "areas": areas[start:end]})
            start = end
        return out

    # ------------------------------------------------------------------ evaluation
    @property
    def metrics(self) -> tuple[MetricSpec, ...]:
        return (
            MetricSpec("map", headline=True, short="map", label="mAP",
                       description="COCO mean average precision over IoU 0.50:0.95"),
            MetricSpec("map50", headline=True, short="map50", label="mAP50", description="COCO AP at IoU 0.50"),
            MetricSpec("map75", short="map75", label="mAP75", description="COCO AP at IoU 0.75"),
            MetricSpec("map_small", short="map_small", label="AP small", description="COCO AP of objects < 32² px"),
            MetricSpec("map_medium", short="map_medium", label="AP medium",
                       description="COCO AP of objects 32²–96² px"),
            MetricSpec("map_large", short="map_large", label="AP large", description="COCO AP of objects > 96² px"),
            MetricSpec("mar_100", short="mar_100", label="AR@100",
                       description="COCO average recall with 100 detections per image"),
        )

    def score(self, outputs: Mapping[str, np.ndarray], targets: Any, class_names: Sequence[str],
              **options: Any) -> dict[str, Any]:
        """COCO metrics (every :attr:`metrics` name, ``None`` where undefined), ``ap_per_class`` and ``n``."""
        from cvplatform.tasks.detection.metrics import coco_metrics

        truth = _truths(targets)
        preds = self.detections(outputs, class_names, self.eval_score_threshold) if len(truth) else []
        if len(preds) != len(truth):
            raise ModelError(f"{len(preds)} predicted images but {len(truth)} targets; they must pair up.")
        m = coco_metrics(truth, preds, class_names)
        return {**{s.name: m[s.name] for s in self.metrics}, "ap_per_class": m["ap_per_class"], "n": len(truth)}

    @property
    def int8_metric(self) -> str:
        return "map50"

    def int8_score(self, outputs: Mapping[str, np.ndarray], targets: Any, class_names: Sequence[str]) -> float:
        """mAP50 of the scenario (no intervals); NaN when its images hold no box."""
        v = self.score(outputs, targets, class_names)["map50"]
        return float("nan") if v is None else float(v)

    def evaluate_scenario(self, name: str, kind: str, image_ids: Sequence[str], targets: Any,
                          outputs: Mapping[str, np.ndarray], class_names: Sequence[str], **options: Any) -> Any:
        """A :class:`DetectionResult`: COCO metrics with image-bootstrap intervals (``n_bootstrap`` resamples,
        at most :attr:`max_bootstrap`), per-class AP and the F1-optimal operating point."""
        from cvplatform.tasks.detection.metrics import coco_metrics, operating_point

        truth = _truths(targets) if len(image_ids) else []
        res = DetectionResult(name, kind, [str(i) for i in image_ids], truth, [], note=str(options.get("note") or ""),
                              corruption=options.get("corruption"), severity=options.get("severity"),
                              class_names=tuple(class_names))
        keys = [m.name for m in self.metrics]
        res.values = {k: None for k in keys}
        res.intervals = {k: None for k in keys}
        if not res.n:
            return res
        res.preds = self.detections(outputs, class_names, self.eval_score_threshold)
        if len(res.preds) != res.n or len(truth) != res.n:
            raise ModelError(f"scenario {name!r}: {res.n} images, {len(truth)} targets and {len(res.preds)} predicted "
                             "images; they must pair up.")
        m = coco_metrics(truth, res.preds, class_names)
        res.values = {k: m[k] for k in keys}
        res.ap_per_class = dict(m["ap_per_class"])
        res.operating_point = operating_point(truth, res.preds, self.match_iou)
        n_boot = min(int(options.get("n_bootstrap", 200)), self.max_bootstrap)
        (samples,) = _bootstrap(truth, [res.preds], class_names, keys, n_boot, int(options.get("seed", 0)))
        conf = float(options.get("confidence", 0.95))
        res.intervals = {k: _percentile(samples[k], conf) if res.values[k] is not None else None for k in keys}
        return res

    # ------------------------------------------------------------------ gates and report
    @property
    def paired_metric(self) -> str:
        return "mAP50"

    def paired_delta(self, challenger: Any, champion: Any, *, n_bootstrap: int = 1000, confidence: float = 0.95,
                     seed: int = 0) -> tuple[float, float, float]:
        """mAP50 of the challenger minus the champion's on the same images, with a paired image bootstrap
        (the same resamples for both; at most :attr:`max_bootstrap`). NaN when the images hold no box."""
        if list(challenger.image_ids) != list(champion.image_ids):
            raise ModelError(f"paired comparison needs the same images ({challenger.n} vs {champion.n}).")
        a, b = challenger.values.get("map50"), champion.values.get("map50")
        if a is None or b is None:
            return float("nan"), float("nan"), float("nan")
        ch, cp = _bootstrap(challenger.truth, [challenger.preds, champion.preds], challenger.class_names, ["map50"],
                            min(int(n_bootstrap), self.max_bootstrap), seed)
        deltas = [x - y for x, y in zip(ch["map50"], cp["map50"], strict=True)]
        lo_hi = _percentile(deltas, confidence) or (float("nan"), float("nan"))
        return float(a - b), lo_hi[0], lo_hi[1]

    robustness_keys: ClassVar[tuple[str, ...]] = ("min_rpc", "min_mpc")

    def corruption_summary(self, clean: Any, corrupted: Mapping[tuple[str, int], Any],
                           reference: Mapping[tuple[str, int], Any] | None, reference_name: str | None
                           ) -> dict[str, Any]:
        """Robustness as in Michaelis et al. 2019 ("Benchmarking Robustness in Object Detection"): ``mpc``,
        the mean mAP@[.5:.95] over every corruption and severity, and ``rpc = mpc / clean mAP``; the
        champion's ``champion_mpc`` on the same images when it was evaluated; plus each metric's mean over
        the corruption scenarios (the default summary).

        Example:
            >>> from types import SimpleNamespace as R
            >>> from cvplatform.tasks import get_task
            >>> s = get_task("detection").corruption_summary(R(values={"map": 0.5}), {("fog", 1): R(values={"map": 0.4}),
            ...     ("fog", 2): R(values={"map": 0.2})}, None, None)
            >>> round(s["mpc"], 3), round(s["rpc"], 3)
            (0.3, 0.6)
        """
        out = super().corruption_summary(clean, corrupted, reference, reference_name)

        def mean_map(results: Mapping[tuple[str, int], Any]) -> float | None:
            vals = [float(r.values["map"]) for r in results.values() if r.values.get("map") is not None]
            return sum(vals) / len(vals) if vals else None

        mpc = mean_map(corrupted)
        base = clean.values.get("map") if clean is not None else None
        out["mpc"] = mpc
        out["rpc"] = (mpc / float(base)) if mpc is not None and base else None
        if reference:
            out["champion_mpc"] = mean_map(reference)
            out["champion"] = reference_name
        return out

    @property
    def extra_gate_keys(self) -> tuple[str, ...]:
        return ("min_recall", "min_critical_recall", "max_fp_per_image")

    #: A curated list names images whose every object must be found (at :attr:`score_threshold`).
    curated_defaults: ClassVar[Mapping[str, float]] = {"min_recall": 1.0}

    def served_counts(self, result: DetectionResult) -> dict[str, dict[str, int]]:
        """Per class: objects, found objects and false boxes among the detections scoring ``>=``
        :attr:`score_threshold` (what the server returns), matched at IoU :attr:`match_iou` within the class."""
        from cvplatform.tasks.detection.metrics import match

        counts = {c: {"objects": 0, "found": 0, "false": 0} for c in result.class_names}
        for truth, pred in zip(result.truth, result.preds, strict=True):
            keep = pred["scores"] >= self.score_threshold
            det = {k: v[keep] for k, v in pred.items()}
            to_truth, taken = match(truth, det, self.match_iou)
            for lab, hit in zip(np.asarray(truth["labels"], np.int64), taken, strict=True):
                counts[result.class_names[lab]]["objects"] += 1
                counts[result.class_names[lab]]["found"] += int(hit)
            for lab in np.asarray(det["labels"], np.int64)[to_truth < 0]:
                counts[result.class_names[lab]]["false"] += 1
        return counts

    def extra_gate_checks(self, scenario: str, gate: Any, result: Any, policy: Any) -> list[Any]:
        """``min_recall`` (all objects), ``min_critical_recall:<class>`` and ``max_fp_per_image:<class>`` (each
        critical class) on the detections the server returns (score >= :attr:`score_threshold`)."""
        th = gate.thresholds()
        wanted = [k for k in self.extra_gate_keys if k in th]
        if not wanted or not result.n or len(result.preds) != result.n:
            return []
        counts = self.served_counts(result)
        out: list[dict[str, Any]] = []
        if "min_recall" in th:
            objects = sum(c["objects"] for c in counts.values())
            found = sum(c["found"] for c in counts.values())
            out.append(floor_check("min_recall", scenario, gate.level_of("min_recall"),
                                   found / objects if objects else None, th["min_recall"],
                                   f"recall at score >= {self.score_threshold:g} ({found}/{objects} objects)",
                                   "undefined (no objects in the scenario)"))
        for key in ("min_critical_recall", "max_fp_per_image"):
            if key in th and not policy.critical_classes:
                out.append(gate_check(key, scenario, "skipped", gate.level_of(key),
                                      f"{key} set but the suite lists no critical_classes", None, th[key]))
        for cls in policy.critical_classes:
            c = counts.get(cls, {"objects": 0, "found": 0, "false": 0})
            if "min_critical_recall" in th:
                out.append(floor_check(f"min_critical_recall:{cls}", scenario, gate.level_of("min_critical_recall"),
                                       c["found"] / c["objects"] if c["objects"] else None, th["min_critical_recall"],
                                       f"recall of '{cls}' ({c['found']}/{c['objects']})",
                                       "undefined (no objects of the class)"))
            if "max_fp_per_image" in th:
                out.append(bound_check(f"max_fp_per_image:{cls}", scenario, gate.level_of("max_fp_per_image"),
                                       c["false"] / result.n, th["max_fp_per_image"],
                                       f"false '{cls}' boxes per image ({c['false']} on {result.n} images)"))
        return out

    def scenario_extras(self, result: Any) -> dict[str, Any]:
        return {"operating_point": dict(result.operating_point)} if result.operating_point else {}

    def _errors(self, result: DetectionResult, i: int) -> tuple[int, int, int]:
        """(objects, detections at :attr:`score_threshold`, missed + false boxes) of image ``i``."""
        from cvplatform.tasks.detection.metrics import match

        p = result.preds[i]
        keep = p["scores"] >= self.score_threshold
        det = {k: v[keep] for k, v in p.items()}
        to_truth, taken = match(result.truth[i], det, self.match_iou)
        return len(taken), len(to_truth), int((to_truth < 0).sum() + (~taken).sum())

    def worst_images(self, result: Any, class_names: Sequence[str], k: int) -> list[tuple[int, str, str, float]]:
        """Images with the most missed objects plus false boxes (at :attr:`score_threshold`), ties by image id."""
        if k <= 0 or not result.n or not result.preds:
            return []
        rows = [(i, *self._errors(result, i)) for i in range(result.n)]
        rows = sorted((r for r in rows if r[3] > 0), key=lambda r: (-r[3], result.image_ids[r[0]]))[:k]
        return [(i, f"{n_obj} objects", f"{n_det} boxes", float(err)) for i, n_obj, n_det, err in rows]

    def report_details(self, result: Any, class_names: Sequence[str], plots_dir: Any) -> dict[str, Any]:
        """Tables: AP per class, and precision / recall / F1 at the F1-optimal score threshold."""
        if not result.n:
            return {}

        def f(v: float | None) -> str:
            return "—" if v is None else f"{float(v):.4f}"

        per_class = [[c, f(result.ap_per_class.get(c))] for c in class_names]
        op = result.operating_point
        point = [[f(op.get("threshold")), f(op.get("precision")), f(op.get("recall")), f(op.get("f1"))]] if op else []
        return {"tables": [("AP per class (clean)", ["class", "AP@[.5:.95]"], per_class),
                           ("Operating point (clean, IoU 0.5, F1-optimal threshold)",
                            ["score threshold", "precision", "recall", "F1"], point)]}

    # ------------------------------------------------------------------ serving, monitoring
    def response(self, prediction: Mapping[str, Any], class_names: Sequence[str]) -> dict[str, Any]:
        return {"detections": [dict(d) for d in prediction["detections"]]}

    def prediction_signal(self, prediction: Mapping[str, Any]) -> dict[str, float]:
        scores = [float(d["score"]) for d in prediction["detections"]]
        return {"boxes": float(len(scores)), "mean_score": float(np.mean(scores)) if scores else 0.0}

    def reference_objects(self, frame: Any, root: Path) -> dict[str, Any] | None:
        """The boxes of the manifest rows ``frame`` from their annotation tables (crowd boxes left out): boxes per
        image, each box's share of its image's area (the manifest's ``width`` x ``height``) and boxes per class.

        Raises:
            DataError: no annotations column, or a table missing or malformed (naming it).
        """
        if ANNOTATIONS_COLUMN not in frame.columns:
            raise DataError(f"the manifest has no {ANNOTATIONS_COLUMN!r} column, so the drift reference has no training "
                            "boxes. Re-run `cvplatform ingest` with project.task: detection.")
        per_image: list[int] = []
        areas: list[float] = []
        classes: dict[str, int] = {}
        cols = [c for c in ("path", "sha256", ANNOTATIONS_COLUMN, "width", "height") if c in frame.columns]
        for row in frame[cols].to_dict("records"):
            path = _table_path({**row, "abs_path": str(Path(root) / str(row["path"]))})
            found = _load_table(str(path), *_stat(path)).get(str(row["sha256"]), _NO_BOXES)
            keep = ~np.asarray(found.iscrowd, bool)
            b = np.asarray(found.boxes, np.float64).reshape(-1, 4)[keep]
            per_image.append(int(keep.sum()))
            for c, k in zip(found.classes, keep, strict=True):
                if k:
                    classes[c] = classes.get(c, 0) + 1
            w, h = float(row.get("width") or 0), float(row.get("height") or 0)
            if w > 0 and h > 0 and len(b):
                share = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) / (w * h)
                areas.extend(round(min(1.0, max(0.0, float(v))), 6) for v in share)
        return {"per_image": per_image, "areas": areas, "classes": dict(sorted(classes.items()))}

    # ------------------------------------------------------------------ labelled feedback (true boxes)
    truth_header_key: ClassVar[str] = "boxes_header"
    truth_format: ClassVar[str] = ('JSON: one image\'s true boxes [[x0, y0, x1, y1, "class"], ...] in that image\'s '
                                   'pixels ([] for an image without objects), or, for several images, a list of one '
                                   'such list per image, in order')
    truth_error: ClassVar[tuple[int, str]] = (422, "invalid_true_boxes")
    #: The most true boxes one request may send (larger requests are refused with a 422).
    max_true_boxes: ClassVar[int] = 1000

    def parse_truth(self, raw: str, n: int, header: str, class_names: Sequence[str] | None = None
                    ) -> list[dict[str, Any]]:
        """Each image's true boxes from ``X-True-Boxes`` (:attr:`truth_format`): ``{"boxes": [[x0, y0, x1, y1]],
        "classes": [...]}`` per image. Coordinates are finite numbers with ``x1 > x0`` and ``y1 > y0``; a class is a
        non-empty string (one of ``class_names`` when given); at most :attr:`max_true_boxes` boxes.

        Raises:
            ValueError: naming the header, the offending value and the expected format.

        Example:
            >>> DetectionTask().parse_truth('[[1, 2, 11, 12, "cat"]]', 1, "X-True-Boxes")
            [{'boxes': [[1.0, 2.0, 11.0, 12.0]], 'classes': ['cat']}]
            >>> DetectionTask().parse_truth('[[[1, 2, 11, 12, "cat"]], []]', 2, "X-True-Boxes")[1]
            {'boxes': [], 'classes': []}
        """
        import json

        fmt = f"expected {self.truth_format}"
        try:
            data = json.loads(raw)
        except RecursionError:
            raise ValueError(f"{header}: JSON nested too deeply; {fmt}.") from None
        except ValueError as exc:
            raise ValueError(f"{header}: not JSON ({exc.args[0] if exc.args else exc}); {fmt}.") from None

        def is_box(v: Any) -> bool:
            return isinstance(v, list) and len(v) == 5 and isinstance(v[4], str)

        if not isinstance(data, list):
            raise ValueError(f"{header}: got a JSON {type(data).__name__}; {fmt}.")
        if n == 1 and all(is_box(v) for v in data):  # one image's boxes (or [] for none)
            per_image: list[Any] = [data]
        elif len(data) == n and all(isinstance(v, list) and all(isinstance(b, list) for b in v) for v in data):
            per_image = data
        else:
            raise ValueError(f"{header}: cannot read {len(data)} item(s) as the boxes of {n} image(s); {fmt}.")
        total = sum(len(v) for v in per_image)
        if total > self.max_true_boxes:
            raise ValueError(f"{header}: {total} boxes; at most {self.max_true_boxes} per request "
                             "(DetectionTask.max_true_boxes). Send fewer images per request.")
        known = set(class_names) if class_names is not None else None
        out = []
        for i, boxes in enumerate(per_image):
            coords, classes = [], []
            for j, b in enumerate(boxes):
                try:
                    shown = json.dumps(b)[:120]
                except (RecursionError, ValueError):
                    shown = "(nested too deeply)"
                where = f"{header}: image {i} box {j} {shown}"
                if not is_box(b):
                    raise ValueError(f"{where} is not [x0, y0, x1, y1, \"class\"]; {fmt}.")
                xy = b[:4]
                if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in xy):
                    raise ValueError(f"{where}: coordinates must be numbers (pixels); {fmt}.")
                try:
                    xy = [float(v) for v in xy]
                except OverflowError:
                    xy = [float("inf")] * 4
                if not all(np.isfinite(xy)) or xy[2] <= xy[0] or xy[3] <= xy[1]:
                    raise ValueError(f"{where}: not finite or of zero size (need x1 > x0 and y1 > y0, in pixels).")
                cls = b[4].strip()
                if not cls or len(cls) > 200:
                    raise ValueError(f"{where}: the class must be a non-empty name of at most 200 characters.")
                if known is not None and cls not in known:
                    raise ValueError(f"{where}: class {cls!r} is not one of the model's classes {sorted(known)}.")
                coords.append(xy)
                classes.append(cls)
            out.append({"boxes": coords, "classes": classes})
        return out

    def feedback(self, outputs: Mapping[str, np.ndarray], class_names: Sequence[str], truth: Sequence[Any],
                 contract: PreprocessContract, image_sizes: Sequence[tuple[int, int]] | None
                 ) -> list[dict[str, Any]] | None:
        """Per image: the true boxes (``truth``: :meth:`parse_truth`'s, in the request image's pixels) and the boxes the
        model serves by default (:attr:`score_threshold`, :attr:`max_detections`: whatever the request asked, so that
        both variants are judged alike) moved to the same pixels (:meth:`to_image_pixels`), as
        ``{"truth": [[x0, y0, x1, y1, class]], "pred": [[x0, y0, x1, y1, class, score]]}`` (2-decimal pixels).
        A tensor input (``image_sizes`` None) is judged in the model input's pixels."""
        dets = self.detections(outputs, class_names)
        if len(dets) != len(truth):
            raise ModelError(f"{len(dets)} predicted images but {len(truth)} true-box lists; they must pair up.")
        size = tuple(int(v) for v in contract.input_size)
        out = []
        for i, (d, t) in enumerate(zip(dets, truth, strict=True)):
            at = image_sizes[i] if image_sizes is not None else size
            boxes = self.to_image_pixels({"boxes": d["boxes"]}, contract, at)["boxes"]
            pred = [[*(round(float(v), 2) for v in b), class_names[int(c)], round(float(s), 4)]
                    for b, c, s in zip(np.asarray(boxes).reshape(-1, 4), d["labels"], d["scores"], strict=True)]
            true = [[*(round(float(v), 2) for v in b), str(c)] for b, c in zip(t["boxes"], t["classes"], strict=True)]
            out.append({"truth": true, "pred": pred})
        return out

    def feedback_summary(self, records: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
        """COCO mAP50 and mAP (:func:`~cvplatform.tasks.detection.metrics.coco_metrics`) of the kept :meth:`feedback`
        records' served boxes against their true boxes (classes matched by name), with the counts: ``images``,
        ``objects`` (true boxes), ``detections`` (served boxes). mAP is None when the images hold no true box.

        Example:
            >>> rec = {"truth": [[0, 0, 10, 10, "cat"]], "pred": [[0, 0, 10, 10, "cat", 0.9]]}
            >>> DetectionTask().feedback_summary([rec, {"truth": [[5, 5, 9, 9, "dog"]], "pred": []}])["map50"]
            0.5
        """
        from cvplatform.tasks.detection.metrics import coco_metrics

        recs = [r for r in records if isinstance(r, Mapping)]
        names = sorted({str(b[4]) for r in recs for key in ("truth", "pred") for b in r.get(key) or []})
        index = {c: k for k, c in enumerate(names)}

        def arrays(rows: Sequence[Sequence[Any]], scored: bool) -> dict[str, np.ndarray]:
            out = {"boxes": np.asarray([r[:4] for r in rows], np.float64).reshape(-1, 4),
                   "labels": np.asarray([index[str(r[4])] for r in rows], np.int64)}
            if scored:
                out["scores"] = np.asarray([r[5] for r in rows], np.float64)
            return out

        truth = [arrays(r.get("truth") or [], False) for r in recs]
        preds = [arrays(r.get("pred") or [], True) for r in recs]
        objects = int(sum(len(t["labels"]) for t in truth))
        m = coco_metrics(truth, preds, names) if objects else {"map50": None, "map": None}
        return {"images": len(recs), "objects": objects, "detections": int(sum(len(p["labels"]) for p in preds)),
                "map50": m["map50"], "map": m["map"]}

    def replay_truth(self, row: Mapping[str, Any], root: Path) -> str | None:
        """The row's true boxes (its annotation table; crowd boxes left out) as an ``X-True-Boxes`` value, in the
        stored image's pixels (the replay client sends the stored file); None when they exceed
        :attr:`max_true_boxes`."""
        import json

        rel = row.get("path")
        path = _table_path({**row, "abs_path": str(Path(root) / str(rel))} if rel else dict(row))
        found = _load_table(str(path), *_stat(path)).get(str(row.get("sha256")), _NO_BOXES)
        boxes = [[*(round(float(v), 2) for v in b), c]
                 for b, c, crowd in zip(found.boxes.tolist(), found.classes, found.iscrowd.tolist(), strict=True)
                 if not crowd]
        return json.dumps(boxes, separators=(",", ":")) if len(boxes) <= self.max_true_boxes else None

    def decode_top(self, outputs: Mapping[str, np.ndarray], class_names: Sequence[str]
                   ) -> tuple[np.ndarray, np.ndarray]:
        """The class and score of each image's best box (``""`` and ``0.0`` when none reaches :attr:`score_threshold`).

        Example:
            >>> out = {"boxes": np.zeros((2, 2, 4)), "scores": np.array([[0.2, 0.9], [0.1, 0.2]]),
            ...        "labels": np.array([[0, 1], [1, 0]])}
            >>> classes, conf = DetectionTask().decode_top(out, ["cat", "dog"])
            >>> classes.tolist(), conf.round(3).tolist()
            (['dog', ''], [0.9, 0.0])
        """
        self.check_outputs(outputs, class_names)
        _, scores, labels = _arrays(outputs)
        n = scores.shape[0]
        if scores.shape[1] == 0:
            return np.full(n, "", dtype=object), np.zeros(n, np.float64)
        best = scores.argmax(axis=1)
        conf = scores[np.arange(n), best].astype(np.float64)
        names = np.asarray([*class_names, ""], dtype=object)
        hit = conf >= self.score_threshold
        return names[np.where(hit, labels[np.arange(n), best], len(class_names))], np.where(hit, conf, 0.0)

    def tensor_output_specs(self, class_names: Sequence[str]) -> list[dict[str, Any]]:
        return [{"name": "boxes", "datatype": "FP32", "shape": [-1, -1, 4]},
                {"name": "scores", "datatype": "FP32", "shape": [-1, -1]},
                {"name": "labels", "datatype": "BYTES", "shape": [-1, -1]},
                {"name": "num_detections", "datatype": "INT32", "shape": [-1]}]

    def tensor_outputs(self, outputs: Mapping[str, np.ndarray], class_names: Sequence[str],
                       wanted: Sequence[str], *, score_threshold: float | None = None,
                       max_detections: int | None = None) -> list[dict[str, Any]]:
        """The detections padded to the batch's most boxes (``num_detections`` per image; padding: zero boxes
        and scores, empty labels); ``score_threshold`` / ``max_detections`` as in :meth:`decode`."""
        return self._padded(self.detections(outputs, class_names, score_threshold, max_detections), class_names,
                            wanted)

    def tensor_outputs_of(self, predictions: Sequence[Mapping[str, Any]] | None, outputs: Mapping[str, np.ndarray],
                          class_names: Sequence[str], wanted: Sequence[str], **options: Any) -> list[dict[str, Any]]:
        """:meth:`tensor_outputs` from the request's decoded ``predictions`` when given (the server decoded them
        for the detection metrics): the boxes are post-processed once per request."""
        if predictions is None:
            return self.tensor_outputs(outputs, class_names, wanted, **options)
        return self._padded(predictions, class_names, wanted)

    def _padded(self, dets: Sequence[Mapping[str, Any]], class_names: Sequence[str], wanted: Sequence[str]
                ) -> list[dict[str, Any]]:
        counts = np.asarray([len(d["scores"]) for d in dets], np.int64)
        n, k = len(dets), int(counts.max(initial=0))
        boxes, scores = np.zeros((n, k, 4), np.float32), np.zeros((n, k), np.float32)
        labels = np.full((n, k), "", dtype=object)
        if n:  # every image's boxes into its first rows at once (row-major, as the images follow each other)
            filled = np.arange(k)[None, :] < counts[:, None]
            boxes[filled] = np.concatenate([np.asarray(d["boxes"], np.float32).reshape(-1, 4) for d in dets])
            scores[filled] = np.concatenate([np.asarray(d["scores"], np.float32).reshape(-1) for d in dets])
            names = np.asarray(list(class_names), dtype=object)
            labels[filled] = names[np.concatenate([np.asarray(d["labels"], np.int64).reshape(-1) for d in dets])]
        made = {"boxes": ("FP32", boxes), "scores": ("FP32", scores), "labels": ("BYTES", labels),
                "num_detections": ("INT32", counts.astype(np.int32))}
        out: list[dict[str, Any]] = []
        for w in wanted:
            if w not in made:
                raise ModelError(f"detection has no output {w!r}; choose from {list(made)}.")
            dtype, arr = made[w]
            data = arr.ravel().tolist() if dtype == "BYTES" else arr.ravel()
            out.append({"name": w, "datatype": dtype, "shape": list(arr.shape), "data": data})
        return out

    # ------------------------------------------------------------------ review
    intended_use: ClassVar[str] = ("Object detection (boxes, class and score per object) in images that resemble the "
                                   "training data (same classes, camera and conditions). Not for safety-critical "
                                   "decisions without human review.")

    def per_class_metrics(self, result: Any) -> dict[str, dict[str, float | None]]:
        """``{"ap": {class: COCO AP@[.5:.95]}}`` of a :class:`DetectionResult` (``None``: no box of the class)."""
        ap = getattr(result, "ap_per_class", None) or {}
        return {"ap": {str(c): (None if v is None else float(v)) for c, v in ap.items()}} if ap else {}

    def summary_lines(self, scenarios: Mapping[str, Any], class_names: Sequence[str]) -> list[str]:
        names = ", ".join(f"`{c}`" for c in class_names)
        lines = [f"- **task**: {self.name} (boxes per image); **{len(class_names)} classes**: {names}"]
        clean = scenarios.get("clean") or {}
        if clean:
            def num(k: str) -> str:
                v = clean.get(k)
                return "—" if v is None else f"{float(v):.4f}"
            lines.append(f"- **clean**: mAP {num('map')}, mAP50 {num('map50')}, mAP75 {num('map75')}, "
                         f"AR@100 {num('mar_100')}")
            ap = (clean.get("per_class") or {}).get("ap") or {}
            if ap:
                lines.append("- **AP per class** (clean, AP@[.5:.95]): " + ", ".join(
                    f"`{c}` {'—' if v is None else f'{float(v):.4f}'}" for c, v in ap.items()))
        rob = scenarios.get("robustness") or {}
        if isinstance(rob.get("rpc"), int | float):
            lines.append(f"- **robustness**: mPC {float(rob.get('mpc') or 0):.4f}, rPC {float(rob['rpc']):.3f} "
                         "(mPC / clean mAP, Michaelis et al. 2019)")
        return lines


__all__ = ["ANNOTATIONS_COLUMN", "ANNOTATIONS_FILE", "DetectionResult", "DetectionTask", "boxes_of"]
