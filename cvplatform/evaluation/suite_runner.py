"""Running models on a scenario suite: the public entry point every stage uses.

The ``evaluate`` stage and the ``export`` stage (fp32 vs INT8 on the suite) both
judge models through these functions, so every model is judged by the same code
on the same pixels:

1. :func:`select_split` picks a manifest split deterministically (sorted by sha256);
2. :func:`load_images` decodes those rows as RGB uint8, resized to the model's
   input size (the preprocessing contract);
3. :func:`run_suite` builds every scenario of a suite (clean, corruptions seeded
   per image, metadata slices, curated lists) and returns the logits of every
   given predictor on it; the pixels of a scenario are generated once and shared
   by all predictors (paired comparisons see identical inputs).

Example:
    >>> from cvplatform.evaluation.suite_runner import load_images, run_suite, select_split
    >>> rows = select_split(manifest, "test", None, source="manifest.parquet", key="evaluate.split")  # doctest: +SKIP
    >>> data = load_images(rows, ".", model, "manifest.parquet (split 'test')")  # doctest: +SKIP
    >>> runs = run_suite([model, champion], data, suite_path=suite_path, scenarios=suite.expand(),
    ...                  manifest=manifest, root=".", seed=42)  # doctest: +SKIP
    >>> runs[0].scenario.name, runs[0].outputs[0]["logits"].shape  # doctest: +SKIP
    ('clean', (54, 3))
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cvplatform.errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pandas as pd

    from cvplatform.evaluation.corruption_cache import CorruptionCache
    from cvplatform.evaluation.predictors import Predictor
    from cvplatform.evaluation.scenarios import Scenario
    from cvplatform.preprocess import PreprocessContract


@dataclass
class EvalImages:
    """Decoded manifest rows at a model's input size."""

    ids: list[str]
    """sha256 of each image (the manifest's identity)."""
    labels: list[str]
    y: np.ndarray
    """Class indices of ``labels`` in the model's class order."""
    images: np.ndarray
    """(N, H, W, 3) uint8 at the model's input size."""
    rows: pd.DataFrame
    """The manifest rows, index reset to 0..N-1."""
    image_sizes: list[tuple[int, int]] | None = None
    """``(height, width)`` of each image as decoded, before the resize (None: unknown, targets used as read)."""
    contract: PreprocessContract | None = None
    """The contract :attr:`images` were resized with (its stretch or letterbox moves the targets' positions)."""
    _fingerprint: str | None = field(default=None, init=False, repr=False)
    _targets: dict[tuple[str, tuple[str, ...]], list[Any]] = field(default_factory=dict, init=False, repr=False)
    """Every row's task target (``task.target_of`` moved into the input's pixels), by (task, classes): computed
    once and shared by the scenarios on these images (clean and every corruption run on the same rows)."""

    @property
    def fingerprint(self) -> str:
        """sha256 of the pixels and ids (the corruption cache's key of these clean images), computed once."""
        from cvplatform.evaluation.corruption_cache import pixels_fingerprint

        if self._fingerprint is None:
            self._fingerprint = pixels_fingerprint(self.images, self.ids)
        return self._fingerprint


@dataclass
class BuiltScenario:
    """One expanded scenario with the images it runs on."""

    scenario: Scenario
    ids: list[str]
    y: np.ndarray
    labels: list[str]
    base: np.ndarray
    """Indices into ``source`` (the clean split or a curated set)."""
    source: EvalImages
    note: str = ""
    """Why a scenario is empty (a slice that matched nothing, an empty curated list)."""
    cache: CorruptionCache | None = None
    """Where a corruption scenario's pixels are kept across runs (None: corrupt every time)."""

    def pixels(self, seed: int, subset: np.ndarray | None = None) -> np.ndarray:
        """The uint8 pixels of this scenario (optionally only rows ``subset``); corruptions seeded per image,
        read from :attr:`cache` when an earlier run stored them (identical pixels either way)."""
        import numpy as np

        if self.scenario.kind == "corruption" and self.cache is not None and len(self.base):
            import hashlib

            from cvplatform.evaluation.corruption_cache import scenario_key

            rows = np.ascontiguousarray(self.base, dtype=np.int64).tobytes()  # which of the split's images
            clean = hashlib.sha256(self.source.fingerprint.encode() + rows).hexdigest()
            key = scenario_key(clean, str(self.scenario.corruption), int(self.scenario.severity or 0), seed)
            full = self.cache.get_or_compute(key, lambda: self._corrupt(self.base, seed))
            return np.array(full if subset is None else full[subset])
        return self._corrupt(self.base if subset is None else self.base[subset], seed)

    def _corrupt(self, rows: np.ndarray, seed: int) -> np.ndarray:
        from cvplatform.evaluation.corruptions import apply_corruption

        imgs = self.source.images[rows]
        if self.scenario.kind == "corruption":
            ids = [self.source.ids[i] for i in rows]
            imgs = apply_corruption(imgs, ids, str(self.scenario.corruption), int(self.scenario.severity or 0), seed,
                                    where=f"scenario {self.scenario.name!r}")
        return imgs


@dataclass
class ScenarioRun:
    """The outputs of every predictor on one scenario (same order as the predictors given to :func:`run_suite`):
    each a dict of the task's outputs by name (classification: ``{"logits": (N, C)}``)."""

    built: BuiltScenario
    outputs: list[dict[str, np.ndarray]]

    @property
    def scenario(self) -> Scenario:
        return self.built.scenario

    @property
    def logits(self) -> list[np.ndarray]:
        """Each predictor's first output (classification's logits); :attr:`outputs` has every output."""
        return [next(iter(o.values())) for o in self.outputs]


def select_split(manifest: pd.DataFrame, split: str, max_images: int | None, *, source: str, key: str) -> pd.DataFrame:
    """Rows of ``split`` sorted by sha256 (deterministic), at most ``max_images``.

    Raises:
        DataError: the split has no rows (naming the manifest, the split and the params key to change).

    Example:
        >>> rows = select_split(manifest, "test", 100, source="manifest.parquet", key="export.parity")  # doctest: +SKIP
    """
    rows = manifest[manifest["split"] == split].sort_values("sha256", kind="mergesort")
    if max_images is not None:
        rows = rows.head(int(max_images))
    if rows.empty:
        present = sorted(str(s) for s in manifest["split"].unique().tolist())
        raise DataError(
            f"{source}: split {split!r} has no images (splits present: {present}); {key} needs it. "
            f"Re-run `cvplatform ingest` so the {split!r} split gets images, or change {key}."
        )
    return rows


def _decode(path: Path) -> np.ndarray:
    from cvplatform.imageio import ImageDecodeError, read_image  # the decoder training and serving use

    try:
        return read_image(path)
    except ImageDecodeError as exc:
        raise DataError(
            f"{path}: image listed in the manifest is missing or unreadable ({exc.detail}). Run `dvc pull` or "
            "re-run `cvplatform ingest` so data/raw matches the manifest."
        ) from None


def load_images(rows: pd.DataFrame, root: str | os.PathLike[str], predictor: Predictor, what: str) -> EvalImages:
    """Decode manifest rows as RGB uint8 resized to ``predictor``'s input size.

    Args:
        rows: Manifest rows (``path``, ``label``, ``sha256``); relative paths are under ``root``.
        root: Project root.
        predictor: The model whose classes and preprocessing contract apply.
        what: How to name these rows in errors (e.g. ``"manifest.parquet (split 'test')"``).

    Raises:
        DataError: a listed image is missing/unreadable, or a label is not a class of the model.

    Example:
        >>> data = load_images(rows, ".", predictor, "manifest.parquet (split 'test')")  # doctest: +SKIP
        >>> data.images.shape  # doctest: +SKIP
        (54, 32, 32, 3)
    """
    import numpy as np

    from cvplatform.preprocess import resize_to_contract

    root = Path(root)
    names = list(predictor.class_names)
    index = {c: i for i, c in enumerate(names)}
    labels = [str(v) for v in rows["label"].tolist()]
    unknown = sorted({lbl for lbl in labels if lbl not in index})
    task = getattr(predictor, "task", None)
    if unknown and task is not None and task.target_kind != "label":
        # the label column is a summary (detection: the largest box's class, or "background"), not the
        # target: the task reads its targets itself (scenario_targets); y is -1 where it names no class
        index = {**{lbl: -1 for lbl in unknown}, **index}
        unknown = []
    if unknown:
        raise DataError(
            f"{what}: label(s) {unknown} are not classes of the model {predictor.name} ({names}). "
            "Evaluate a model trained on this label set, or re-train."
        )
    contract = predictor.contract
    h, w = contract.input_size
    images = np.empty((len(rows), h, w, 3), dtype=np.uint8)
    sizes: list[tuple[int, int]] = []
    for i, rel in enumerate(rows["path"].tolist()):
        p = Path(str(rel))
        decoded = _decode(p if p.is_absolute() else root / p)
        sizes.append((int(decoded.shape[0]), int(decoded.shape[1])))
        images[i] = resize_to_contract([decoded], contract)[0]
    return EvalImages(
        ids=[str(v) for v in rows["sha256"].tolist()],
        labels=labels,
        y=np.asarray([index[lbl] for lbl in labels], dtype=np.int64),
        images=images,
        # abs_path as in the training data module: a task that reads targets beside the manifest (detection's
        # annotation table) resolves them against the project root, not the process's working directory
        rows=rows.reset_index(drop=True).assign(abs_path=[
            str(Path(str(p)) if Path(str(p)).is_absolute() else root / str(p)) for p in rows["path"].tolist()]),
        image_sizes=sizes,
        contract=contract,
    )


def build_scenarios(
    suite_path: str | os.PathLike[str], scenarios: Iterable[Scenario], data: EvalImages,
    manifest: pd.DataFrame, root: str | os.PathLike[str], predictor: Predictor,
) -> list[BuiltScenario]:
    """Attach images to every scenario: the split for clean/corruption, its rows for a slice, a curated list's.

    Raises:
        ConfigError: a slice on a missing column, a bad curated list. DataError: curated images missing.
    """
    import numpy as np

    from cvplatform.evaluation.scenarios import read_hashes, select_curated, select_slice

    root = Path(root)
    built = []
    for sc in scenarios:
        if sc.kind in ("clean", "corruption"):
            idx = np.arange(len(data.ids))
            built.append(BuiltScenario(sc, data.ids, data.y, data.labels, idx, data))
        elif sc.kind == "slice":
            sub = select_slice(data.rows, sc, str(suite_path))
            idx = sub.index.to_numpy()
            note = "slice matched no image of the split" if len(idx) == 0 else ""
            built.append(BuiltScenario(sc, [data.ids[i] for i in idx], data.y[idx], [data.labels[i] for i in idx],
                                       idx, data, note))
        elif sc.kind == "curated":
            hpath = Path(sc.hashes_file or "")
            hpath = hpath if hpath.is_absolute() else root / hpath
            hashes = read_hashes(hpath, scenario=sc.name)
            rows = select_curated(manifest, hashes, sc, hpath)
            cur = load_images(rows, root, predictor, f"{hpath} (scenario {sc.name!r})")
            idx = np.arange(len(cur.ids))
            note = "curated list is empty" if len(idx) == 0 else ""
            built.append(BuiltScenario(sc, cur.ids, cur.y, cur.labels, idx, cur, note))
    return built


def predict_scenario(predictors: Sequence[Predictor], b: BuiltScenario, seed: int,
                     batch_size: int) -> list[dict[str, np.ndarray]]:
    """Every output of every predictor on scenario ``b`` (pixels generated once per chunk and shared)."""
    import numpy as np

    n = len(b.ids)
    parts: list[list[dict[str, np.ndarray]]] = [[] for _ in predictors]
    chunk = max(batch_size, 1)
    for s in range(0, n, chunk):
        sel = np.arange(s, min(n, s + chunk))
        pix = b.pixels(seed, sel)
        for part, p in zip(parts, predictors, strict=True):
            part.append(p.predict(pix, batch_size=batch_size))
    return [{k: np.concatenate([c[k] for c in part], axis=0) for k in part[0]} if part else p.predict([])
            for part, p in zip(parts, predictors, strict=True)]


def scenario_targets(task: Any, b: BuiltScenario, class_names: Sequence[str]) -> Any:
    """The task's targets of a scenario's images (``task.target_of`` of each manifest row, in image order):
    class indices for classification (equal to ``b.y``), whatever the task learns otherwise. Positions are moved
    into the model input's pixels (``task.to_input_pixels`` with the contract and each image's decoded size), where
    the predictions are, as training's pipeline moves them (detection: boxes through the stretch or letterbox).

    The targets of the source's rows are built once (:func:`source_targets`) and indexed by the scenario's rows:
    a suite's 50-odd scenarios on the same split do not convert the same manifest rows again each time."""
    import numpy as np

    if not len(b.ids):
        return b.y
    every = source_targets(task, b.source, class_names)
    return np.asarray([every[int(i)] for i in np.asarray(b.base, dtype=np.int64)])


def source_targets(task: Any, source: EvalImages, class_names: Sequence[str]) -> list[Any]:
    """Every row's target of ``source`` (see :func:`scenario_targets`), computed once per task and class list."""
    key = (str(getattr(task, "name", type(task).__name__)), tuple(class_names))
    cached = source._targets.get(key)
    if cached is None:
        index = {c: i for i, c in enumerate(class_names)}
        cached = [task.target_of(r, index) for r in source.rows.to_dict("records")]
        sizes, contract = source.image_sizes, source.contract
        if sizes is not None and contract is not None:
            cached = [task.to_input_pixels(t, contract, sizes[i]) for i, t in enumerate(cached)]
        source._targets[key] = cached
    return cached


def targets_of(task: Any, source: EvalImages, class_names: Sequence[str], base: Sequence[int] | None = None) -> Any:
    """The task's targets of the loaded images ``source`` (rows ``base``, default all, in that order), moved into
    the model input's pixels with the contract the images were resized with (see :func:`scenario_targets`)."""
    import numpy as np

    every = source_targets(task, source, class_names)
    return np.asarray(every if base is None else [every[int(i)] for i in np.asarray(base, dtype=np.int64)])


def run_suite(
    predictors: Sequence[Predictor],
    data: EvalImages,
    *,
    suite_path: str | os.PathLike[str],
    scenarios: Sequence[Scenario],
    manifest: pd.DataFrame,
    root: str | os.PathLike[str],
    seed: int,
    batch_size: int = 256,
    progress: str | None = None,
    cache: CorruptionCache | None = None,
) -> list[ScenarioRun]:
    """Run every predictor on every scenario of a suite, on identical pixels.

    Args:
        predictors: The models to run (e.g. ``[candidate, champion]``); all must share classes and input size
            with ``predictors[0]``, whose contract ``data`` was loaded for.
        data: The evaluated split (:func:`load_images`).
        suite_path: The suite file (named in errors; curated lists relative to ``root``).
        scenarios: ``load_suite(suite_path).expand()``.
        manifest: The whole manifest (curated lists may reach beyond the split).
        root: Project root.
        seed: ``project.seed`` (corruptions are seeded by it and the image id).
        batch_size: Images per predictor call.
        progress: A stage name to log progress under (``None``: silent).
        cache: Keeps corruption scenarios' pixels across runs (``evaluate.corruption_cache``); None = off.

    Returns:
        One :class:`ScenarioRun` per scenario, in suite order; an empty scenario has zero-row outputs.

    Raises:
        ConfigError: invalid slice or curated list. DataError: missing images, unknown labels.
    """
    import logging

    from cvplatform.utils.logs import track

    built = build_scenarios(suite_path, scenarios, data, manifest, root, predictors[0])
    for b in built:
        b.cache = cache
    items = track(built, progress, unit="scenarios", logger=logging.getLogger(__name__)) if progress else built
    runs = []
    for b in items:
        outputs = predict_scenario(predictors, b, seed, batch_size) if b.ids else [p.predict([]) for p in predictors]
        runs.append(ScenarioRun(b, outputs))
    return runs


__all__ = [
    "BuiltScenario",
    "EvalImages",
    "ScenarioRun",
    "build_scenarios",
    "load_images",
    "predict_scenario",
    "run_suite",
    "scenario_targets",
    "select_split",
    "source_targets",
]
