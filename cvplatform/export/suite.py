"""Comparing two models on the evaluation scenario suite, for the export stage.

A thin adapter over the public :mod:`cvplatform.evaluation.suite_runner`: images are
decoded and resized exactly as the ``evaluate`` stage does, and scenarios (clean,
corruptions seeded per image, metadata slices, curated lists) are built and
predicted by :func:`~cvplatform.evaluation.suite_runner.run_suite`, so the fp32 and
INT8 models are judged by the same code (and on the same pixels) as any evaluated
model. ``select_split`` and ``load_images`` are re-exported from there.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cvplatform.errors import ModelError
from cvplatform.evaluation.suite_runner import load_images, run_suite, scenario_targets, select_split

if TYPE_CHECKING:  # pragma: no cover
    from cvplatform.evaluation.corruption_cache import CorruptionCache
    from cvplatform.evaluation.predictors import Predictor
    from cvplatform.tasks.base import Task


@dataclass(frozen=True)
class ScenarioComparison:
    """The INT8 metric (``task.int8_metric``; accuracy for classification) of a reference and a candidate
    model on one scenario (same images, same pixels)."""

    name: str
    kind: str
    level: str
    """``must_pass`` or ``warn`` (from the suite)."""
    n: int
    reference_score: float | None
    """The reference's (fp32) ``task.int8_score``."""
    candidate_score: float | None
    drop: float | None
    """How much worse the candidate is (positive = worse): ``reference - candidate`` for a higher-is-better
    metric, ``candidate - reference`` for a lower-is-better one (e.g. an error)."""
    agreement: float | None
    """``task.agreement(...).rate``: share of images on which both models agree (classification: same top-1 class)."""
    judged: bool
    """True for must-pass scenarios and the clean scenario (these decide INT8 acceptance)."""
    metric: str = "accuracy"
    """``task.int8_metric``."""

    @property
    def reference_accuracy(self) -> float | None:
        """Deprecated alias of :attr:`reference_score` (its name from when only classification existed)."""
        return self.reference_score

    @property
    def candidate_accuracy(self) -> float | None:
        """Deprecated alias of :attr:`candidate_score`."""
        return self.candidate_score

    def to_dict(self) -> dict[str, Any]:
        """JSON: the generic fields plus ``reference_accuracy`` / ``candidate_accuracy``, deprecated aliases of
        ``reference_score`` / ``candidate_score`` kept for readers of older ``int8.json`` files."""
        return {**asdict(self), "reference_accuracy": self.reference_score, "candidate_accuracy": self.candidate_score}


def compare_on_suite(
    reference: Predictor,
    candidate: Predictor,
    *,
    suite_path: str | os.PathLike[str],
    manifest_path: str | os.PathLike[str],
    split: str,
    root: str | os.PathLike[str],
    seed: int,
    batch_size: int = 256,
    max_images: int | None = None,
    task: Task | None = None,
    cache: CorruptionCache | None = None,
) -> list[ScenarioComparison]:
    """Run both models on every scenario of a suite and compare them on the task's INT8 metric.

    Scenarios are built and predicted by the evaluation module (same images,
    corruptions seeded by ``seed`` and the image id, so the reference's numbers
    equal those of ``cvplatform evaluate`` on the same split).

    Args:
        reference: The fp32 model (``OnnxPredictor``).
        candidate: The INT8 model (``OnnxPredictor``), same classes and input size.
        suite_path: Scenario suite (``configs/scenarios/*.yaml``).
        manifest_path: Manifest whose ``split`` rows are evaluated.
        split: ``train`` | ``val`` | ``test``.
        root: Project root (image paths are relative to it).
        seed: ``project.seed`` (corruption seeds).
        max_images: At most N images of the split (first N by sha256).
        cache: Corruption scenarios' pixels kept across runs (``evaluate.corruption_cache``); None = off.
        task: The project's task (``project.task``; default classification): its ``int8_score``
            (accuracy for classification) is each model's number, its ``agreement`` the share of
            images on which the two models agree.

    Returns:
        One :class:`ScenarioComparison` per expanded scenario, in suite order.

    Raises:
        ConfigError: invalid suite. DataError: empty split, missing images.
        ModelError: the two models have different classes or input sizes.

    Example:
        >>> rows = compare_on_suite(fp32, int8, suite_path="configs/scenarios/default.yaml",
        ...                         manifest_path="data/processed/manifest.parquet", split="test",
        ...                         root=".", seed=42)  # doctest: +SKIP
        >>> rows[0].name, rows[0].drop  # doctest: +SKIP
        ('clean', 0.0)
    """

    from cvplatform.data.manifest import read_manifest
    from cvplatform.evaluation.scenarios import load_suite
    from cvplatform.tasks import get_task

    task = task or get_task()

    if list(reference.class_names) != list(candidate.class_names) or \
            reference.contract.input_size != candidate.contract.input_size or \
            reference.contract.resize_label != candidate.contract.resize_label:
        raise ModelError(
            f"{candidate.name} (classes {list(candidate.class_names)}, input {candidate.contract.input_size}, "
            f"{candidate.contract.resize_label}) and {reference.name} (classes {list(reference.class_names)}, "
            f"input {reference.contract.input_size}, {reference.contract.resize_label}) "
            "cannot be compared on the same images; re-export both from the same checkpoint."
        )
    root = Path(root)
    suite_path = Path(suite_path)
    suite = load_suite(suite_path, task)
    scenarios = suite.expand()
    manifest = read_manifest(manifest_path)
    rows = select_split(manifest, split, max_images, source=str(manifest_path), key="evaluate.split")
    data = load_images(rows, root, reference, f"{manifest_path} (split {split!r})")
    runs = run_suite([reference, candidate], data, suite_path=suite_path, scenarios=scenarios, manifest=manifest,
                     root=root, seed=seed, batch_size=batch_size, cache=cache)
    class_names = list(reference.class_names)
    spec = next((m for m in task.metrics if m.name == task.int8_metric), None)
    higher = spec.higher_is_better if spec is not None else True
    out = []
    for run in runs:
        sc = run.scenario
        judged = sc.gate.level == "must_pass" or sc.kind == "clean"
        n = len(run.built.ids)
        if n == 0:
            out.append(ScenarioComparison(sc.name, sc.kind, sc.gate.level, 0, None, None, None, None, judged,
                                          task.int8_metric))
            continue
        ref_out, cand_out = run.outputs
        y = scenario_targets(task, run.built, class_names)
        ref_score = task.int8_score(ref_out, y, class_names)
        cand_score = task.int8_score(cand_out, y, class_names)
        out.append(ScenarioComparison(
            sc.name, sc.kind, sc.gate.level, n, ref_score, cand_score,
            (ref_score - cand_score) if higher else (cand_score - ref_score),
            task.agreement(ref_out, cand_out).rate, judged, task.int8_metric,
        ))
    return out


__all__ = ["ScenarioComparison", "compare_on_suite", "load_images", "select_split"]
