"""The canary controller rolls out detectors on detection signals: a real ``cvplatform serve`` of a
``project.task: detection`` project, real ONNX detectors exported by the export stage, a real SQLite MLflow
registry and real replayed traffic (held-out scenes, clean and corrupted).

The champion is a small CenterNet (``DetectionModule`` on ``small_cnn``) whose heatmap is sharpened so it answers
boxes (an untrained head scores every cell ~0.01); the *good* candidate is the same network with seeded noise added
to its heatmap head (a few borderline boxes differ: matched-box F1 ~0.98); the *missing* candidate is the champion wrapped so
every score is scaled by 0.6 before the graph's outputs, exported to ONNX like any detector: most objects fall
under the serving score threshold, so it answers far fewer boxes. The missing one must be rolled back on the
detection signals (matched-box agreement, detections per image) with two server worker processes whose
statistics are merged; the good one is promoted. The replay client sends each image's true boxes (``X-True-Boxes``,
from the annotation table): both variants' labelled images are kept and scored (COCO mAP50, the ``feedback_map50``
check). The detectors are untrained, so their mAP50 is near zero on both sides: the tests check that the feedback is
recorded per variant, merged across the workers and judged, not its verdict (unit tests judge known boxes).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from cvplatform.config import apply_overrides, load_params, read_yaml
from cvplatform.deploy.analysis import CanaryPolicy, load_canary_policy
from cvplatform.deploy.canary import run_canary_local
from tests.fixtures.detection_project import CLASSES, ingest_detection_project
from tests.fixtures.serving_models import get_alias, register_version, set_alias

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
MODEL = "tiny-detector"
INPUT = 32
#: The real configs/deploy/canary.yaml (with its detection thresholds), shrunk so a rollout takes seconds.
POLICY_OVERRIDES = (
    "steps=[{traffic: 0.25, min_requests: 20, bake_s: 3}, {traffic: 0.5, min_requests: 20, bake_s: 3},"
    " {traffic: 1.0, min_requests: 20, bake_s: 3}]",
    "poll_interval_s=0.4",
    "step_timeout_s=90",
    "request_timeout_s=30",
    "thresholds.min_shadow_pairs=12",
    "thresholds.confidence_shift.min_samples=20",
    "thresholds.min_labelled=12",
    "thresholds.count_shift.min_samples=20",
    "thresholds.object_score_shift.min_samples=20",
    "thresholds.class_mix_shift.min_samples=20",
)


def _policy() -> CanaryPolicy:
    return load_canary_policy(REPO / "configs" / "deploy" / "canary.yaml", POLICY_OVERRIDES)


def _export(net, path: Path) -> Path:
    """``net`` (images in, ``boxes``/``scores``/``labels`` out) through the export stage's ``export_onnx``."""
    from cvplatform.export.onnx_export import export_onnx
    from cvplatform.models.checkpoint import LoadedModel
    from cvplatform.preprocess import PreprocessContract
    from cvplatform.tasks import get_task

    pre = {"input_size": [INPUT, INPUT], "mean": [0.5] * 3, "std": [0.5] * 3, "eval": []}
    loaded = LoadedModel(model=net.eval(), arch="small_cnn", arch_kwargs={"width": 8, "stages": 2},
                         num_classes=len(CLASSES), class_names=list(CLASSES), input_size=(INPUT, INPUT),
                         mean=(0.5,) * 3, std=(0.5,) * 3, eval_transforms=[], preprocess=pre,
                         path=path.with_suffix(".ckpt"))
    contract = PreprocessContract((INPUT, INPUT), (0.5,) * 3, (0.5,) * 3, tuple(CLASSES))
    return export_onnx(loaded, path, contract, task=get_task("detection"))


def _detectors(out: Path) -> dict[str, Path]:
    import torch

    from cvplatform.tasks.detection.module import DetectionModule

    class ScaledScores(torch.nn.Module):
        """A detector whose every score is multiplied by ``factor`` (it misses what falls under the threshold)."""

        def __init__(self, det: torch.nn.Module, factor: float) -> None:
            super().__init__()
            self.det, self.factor = det, factor

        def forward(self, x):
            boxes, scores, labels = self.det(x)
            return boxes, scores * self.factor, labels

    torch.manual_seed(0)
    pre = {"input_size": [INPUT, INPUT], "mean": [0.5] * 3, "std": [0.5] * 3, "eval": []}
    module = DetectionModule("small_cnn", {"width": 8, "stages": 2}, len(CLASSES), list(CLASSES), pre,
                             head_width=16, max_peaks=20)
    with torch.no_grad():
        last = module.model.heatmap[-1]
        last.weight.mul_(5.0)
        last.bias.fill_(-1.0)
    champion = module.exportable()
    good = copy.deepcopy(champion)
    with torch.no_grad():  # a retrain-like perturbation of the heatmap head (seeded noise, 1 % of its scale)
        head = good.net.heatmap[-1].weight
        head.add_(torch.randn(head.shape, generator=torch.Generator().manual_seed(1)) * 0.01)
    missing = ScaledScores(copy.deepcopy(champion), 0.6)
    return {kind: _export(net, out / f"{kind}.onnx")
            for kind, net in [("champion", champion), ("good", good), ("missing", missing)]}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.delenv("CVPLATFORM_ADMIN_TOKEN", raising=False)
    mp.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    root = ingest_detection_project(tmp_path_factory.mktemp("canary-detection"), count=40, size=48, input_size=INPUT,
                                    overrides=[f"registry.model_name={MODEL}"])
    serving = root / "configs" / "deploy" / "serving.yaml"
    cfg = apply_overrides(read_yaml(serving), ["models.intra_op_threads=1", "models.poll_interval_s=0"], "serving")
    serving.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    versions = {kind: register_version(root, MODEL, path) for kind, path in _detectors(root / "models").items()}
    set_alias(root, MODEL, "champion", versions["champion"])
    yield root, versions
    mp.undo()


def _checks(res) -> list[dict]:
    return [c for step in res.steps for c in step["analysis"]["checks"]]


def test_a_detector_that_misses_objects_is_rolled_back_on_detection_signals(project):
    root, versions = project
    res = run_canary_local(load_params(root / "params.yaml"), versions["missing"], root=root, policy=_policy(),
                           overrides=["serve.workers=2"], corrupt=0.5, concurrency=2, rate=80)
    assert res.decision == "rollback", "\n".join(res.lines())
    failed = set(res.failed_checks)
    # the shadowed images' matched-box F1 collapses and the canary answers far fewer boxes per image
    assert failed & {"agreement", "agreement_uncertain"}, res.lines()
    assert "count_shift" in failed, res.lines()
    assert "error_rate" not in failed and "min_requests" not in failed, res.lines()
    by_name = {c["name"]: c for c in _checks(res)}
    assert "matched-box F1" in by_name["agreement_uncertain"]["detail"], by_name["agreement_uncertain"]
    assert by_name["count_shift"]["value"] > _policy().thresholds.count_shift.max
    # the statistics judged were both worker processes' merged: each reported, each variant's boxes counted
    stats = res.steps[0]["stats"]
    assert sorted(stats["workers"]["requests"]) == ["0", "1"], stats["workers"]
    assert stats["task"] == "detection" and stats["shadow"]["measure"].startswith("matched-box F1")
    champion, canary = stats["variants"]["champion"]["objects"], stats["variants"]["canary"]["objects"]
    assert canary["mean_per_image"] < champion["mean_per_image"] / 2, (canary, champion)
    assert "score_samples" not in canary  # steps.jsonl keeps the histograms, not the raw samples
    _assert_feedback_judged(res)
    assert get_alias(root, MODEL, "champion") == versions["champion"]
    assert get_alias(root, MODEL, "canary") is None


def test_a_good_detector_is_promoted(project):
    root, versions = project
    res = run_canary_local(load_params(root / "params.yaml"), versions["good"], root=root, policy=_policy(),
                           corrupt=0.5, concurrency=2, rate=80)
    assert res.decision == "promote", "\n".join(res.lines())
    checks = _checks(res)
    # the detection signals were judged (not skipped) and passed on at least one step
    for name in ("agreement_uncertain", "count_shift", "object_score_shift", "class_mix_shift"):
        judged = [c for c in checks if c["name"] == name and c["status"] != "skip"]
        assert judged and all(c["status"] == "pass" for c in judged), (name, res.lines())
    agreement = [c for c in checks if c["name"].startswith("agreement") and c["status"] == "pass"]
    assert all(0.9 < c["value"] <= 1.0 for c in agreement if c["name"] == "agreement_uncertain"), agreement
    assert get_alias(root, MODEL, "champion") == versions["good"]
    assert res.served_version == versions["good"]
    _assert_feedback_judged(res)


def _assert_feedback_judged(res) -> None:
    """Every step's statistics carry each variant's labelled feedback (the replayed true boxes), scored with COCO
    mAP50, and the canary judged ``feedback_map50`` (not ``accuracy``) on them."""
    th = _policy().thresholds
    for step in res.steps:
        for variant in ("champion", "canary"):
            fb = step["stats"]["variants"][variant]["feedback"]
            assert fb["seen"] >= th.min_labelled and fb["images"] == fb["kept"] > 0, (variant, fb)
            assert fb["objects"] > 0 and 0.0 <= fb["map50"] <= 1.0, (variant, fb)
        checks = {c["name"]: c for c in step["analysis"]["checks"]}
        assert checks["feedback_map50"]["status"] in ("pass", "fail"), checks["feedback_map50"]
        assert checks["accuracy"]["status"] == "skip" and "feedback_map50" in checks["accuracy"]["detail"]
