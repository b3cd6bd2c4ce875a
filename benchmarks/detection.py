"""Detection: COCO evaluation vs pycocotools, and a Lightning training step vs a plain PyTorch loop.

Ratios within one run (the machine is shared and noisy; compare ratios, not absolute numbers):

1. **Evaluation**: ``--images`` (default 5,000) synthetic images with ``--boxes`` (default 20) ground-truth
   boxes each and as many predictions (the truth jittered, some classes swapped, plus false positives with
   random scores). The project's :func:`cvplatform.tasks.detection.metrics.coco_metrics` (the
   ``faster_coco_eval`` backend) against pycocotools' ``COCOeval`` on the same COCO documents, timed from the
   same in-memory inputs; the 12 COCO numbers must be identical (to 1e-9). Reported: seconds of each and the
   ratio ``project / pycocotools`` (lower is faster). Then the bootstrap: one scenario's
   ``DetectionTask.evaluate_scenario`` with 200 resamples on ``--bootstrap-images`` (default 225) images with
   100 boxes each (a trained detector at score >= 0.01: the truth jittered plus low-score false boxes) against
   one ``coco_metrics`` call on the same images; reported as the ratio (a COCO evaluation per resample made it
   about 200; the resamples alone are timed too). The first resamples are checked against ``coco_metrics`` of the resampled images (to 1e-6).
2. **Training step**: the project's ``DetectionModule`` fitted by Lightning against a plain loop (same network
   initialisation, optimiser, loss and pre-collated batches of built-in scenes), one torch thread, epochs
   measured pairwise (one plain epoch next to each Lightning epoch; the first pair is a warm-up). Target:
   Lightning / plain <= 1.10 (median of the per-pair ratios).

3. **Serving**: the served detector against the raw onnxruntime session at the same batch, the way
   ``benchmarks/serving.py`` measures the classifier (its load generator, project and level helpers): a
   ``DetectionModule`` (``small_cnn``, ``--size`` px, heatmap sharpened so random images give a few boxes) exported
   with ``export_onnx``, served by ``cvplatform serve`` with ``project.task: detection``; per level images/s,
   p50/p95/p99 and the mean batch the server formed, then the raw ``session.run`` at that batch (no
   post-processing: the served side also runs the task's score threshold, duplicate suppression and
   ``max_detections``, maps boxes to image pixels, answers JSON and feeds the detection metrics). Inputs
   ``fp32`` (OIP v2 binary tensors, the raw session's own input) and ``png`` (``/v1/predict``, decoded on the
   server). Target: served / raw >= 0.8. The mean boxes per image comes from the server's
   ``cvplatform_detections_per_image``; the server's CPU per image is set against the raw session's. A control
   level serves a classifier on the same backbone and input size the same way (fp32, concurrency 4, 16 rows), so
   the run says how much of the gap is serving itself and how much is detection. About 1.5 minutes.

Usage:  .venv/bin/python benchmarks/detection.py [--images 5000] [--boxes 20] [--bootstrap-images 225] [--epochs 6]
                                                 [--parts evaluation training serving]
                                                 [--serving-duration 5] [--threads 1]
                                                 [--out benchmarks/results/detection.json]
        .venv/bin/python benchmarks/detection.py --parts serving --out benchmarks/results/detection-serving.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CLASSES = [f"c{i}" for i in range(8)]


def synthetic(n_images: int, n_boxes: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Per-image truth and predictions in the project's format (boxes xyxy pixels on a 640x480 image)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    truth, preds = [], []
    for _ in range(n_images):
        xy = rng.uniform(0, 560, size=(n_boxes, 2))
        wh = rng.uniform(4, 80, size=(n_boxes, 2))
        boxes = np.concatenate([xy, xy + wh], axis=1)
        labels = rng.integers(0, len(CLASSES), n_boxes)
        truth.append({"boxes": boxes, "labels": labels, "iscrowd": np.zeros(n_boxes, bool)})
        jitter = boxes + rng.normal(0, 3, size=boxes.shape)
        plabels = np.where(rng.random(n_boxes) < 0.1, rng.integers(0, len(CLASSES), n_boxes), labels)
        fp_xy = rng.uniform(0, 560, size=(n_boxes // 4, 2))
        fp = np.concatenate([fp_xy, fp_xy + rng.uniform(4, 80, size=(n_boxes // 4, 2))], axis=1)
        preds.append({"boxes": np.concatenate([jitter, fp]),
                      "scores": rng.uniform(0.05, 1.0, n_boxes + len(fp)),
                      "labels": np.concatenate([plabels, rng.integers(0, len(CLASSES), len(fp))])})
    return truth, preds


def bench_evaluation(n_images: int, n_boxes: int) -> dict:
    import numpy as np
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from cvplatform.tasks.detection.metrics import COCO_STATS, coco_ground_truth, coco_metrics, coco_results

    truth, preds = synthetic(n_images, n_boxes)
    t0 = time.perf_counter()
    ours = coco_metrics(truth, preds, CLASSES)
    ours_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    gt = COCO()
    gt.dataset = coco_ground_truth(truth, CLASSES)
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        dt = gt.loadRes(coco_results(preds))
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    ref_s = time.perf_counter() - t0
    diff = max(abs((ours[k] if ours[k] is not None else -1.0) - float(v)) for k, v in zip(COCO_STATS, ev.stats,
                                                                                           strict=True))
    return {"images": n_images, "boxes_per_image": n_boxes, "predictions": int(sum(len(p["boxes"]) for p in preds)),
            "project_s": round(ours_s, 3), "pycocotools_s": round(ref_s, 3),
            "ratio_project_vs_pycocotools": round(ours_s / ref_s, 4), "max_abs_difference": float(diff),
            "identical": bool(np.isclose(diff, 0.0, atol=1e-9)), "map": ours["map"], "map50": ours["map50"]}


def bench_bootstrap(n_images: int, n_resamples: int = 200) -> dict:
    import numpy as np

    from cvplatform.tasks.detection import task as det
    from cvplatform.tasks.detection.metrics import coco_metrics

    truth, preds = synthetic(n_images, 8, seed=1)
    rng = np.random.default_rng(2)
    k = 100
    outputs = {"boxes": np.zeros((n_images, k, 4), np.float32), "scores": np.zeros((n_images, k), np.float32),
               "labels": np.zeros((n_images, k), np.int64)}
    for i, p in enumerate(preds):  # the detections plus low-score false boxes: 100 per image
        n_fp = k - len(p["scores"])
        xy = rng.uniform(0, 560, size=(n_fp, 2))
        outputs["boxes"][i] = np.concatenate([p["boxes"], np.concatenate([xy, xy + rng.uniform(4, 80, (n_fp, 2))], 1)])
        outputs["scores"][i] = np.concatenate([p["scores"], rng.uniform(0.01, 0.3, n_fp)])
        outputs["labels"][i] = np.concatenate([p["labels"], rng.integers(0, len(CLASSES), n_fp)])
    task = det.DetectionTask()
    ids = [str(i) for i in range(n_images)]
    t0 = time.perf_counter()
    res = task.evaluate_scenario("clean", "clean", ids, truth, outputs, CLASSES, n_bootstrap=n_resamples, seed=0)
    scenario_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    coco_metrics(res.truth, res.preds, CLASSES)
    coco_s = time.perf_counter() - t0
    keys = [m.name for m in task.metrics]
    t0 = time.perf_counter()
    det._bootstrap(res.truth, [res.preds], CLASSES, keys, n_resamples, 0)
    bootstrap_s = time.perf_counter() - t0
    (samples,) = det._bootstrap(res.truth, [res.preds], CLASSES, keys, 3, 0)
    draws, diff = np.random.default_rng(0), 0.0
    for b in range(3):
        idx = draws.integers(0, n_images, size=n_images)
        ref = coco_metrics([res.truth[i] for i in idx], [res.preds[i] for i in idx], CLASSES)
        diff = max(diff, *(abs(samples[key][b] - ref[key]) for key in keys if ref[key] is not None))
    return {"images": n_images, "predictions": int(sum(len(p["scores"]) for p in res.preds)),
            "resamples": n_resamples, "evaluate_scenario_s": round(scenario_s, 3), "coco_metrics_s": round(coco_s, 3),
            "bootstrap_s": round(bootstrap_s, 3), "ratio_scenario_vs_one_coco": round(scenario_s / coco_s, 2),
            "ratio_bootstrap_vs_one_coco": round(bootstrap_s / coco_s, 2), "max_abs_difference": float(diff),
            "identical": bool(diff <= 1e-6), "intervals": {key: res.intervals[key] for key in ("map", "map50")}}


def _batches(n_batches: int, batch: int, size: int) -> tuple[list, list[str]]:
    """Pre-collated batches of built-in scenes: (images float (B, 3, H, W), per-image targets), and the classes."""
    import numpy as np
    import torch

    from cvplatform.config import ScenesParams
    from cvplatform.tasks.detection.scenes import _photos, render_scene

    classes = ScenesParams().classes
    photos = list(_photos().values())
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n_batches):
        xs, ts = [], []
        for i in range(batch):
            img, objects = render_scene(size, classes, int(rng.integers(1, 5)), photos[i % len(photos)], "normal",
                                        rng)
            xs.append(torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float() / 255.0)
            ts.append({"boxes": torch.as_tensor([o.box for o in objects], dtype=torch.float32).reshape(-1, 4),
                       "labels": torch.as_tensor([classes.index(o.cls) for o in objects], dtype=torch.int64)})
        out.append((torch.stack(xs), ts))
    return out, list(classes)


def bench_training(epochs: int, n_batches: int, batch: int, size: int) -> dict:
    import copy
    import logging
    import warnings

    import pytorch_lightning as pl
    import torch

    from cvplatform.tasks.detection.model import centernet_loss
    from cvplatform.tasks.detection.module import DetectionModule

    torch.set_num_threads(1)
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    data, classes = _batches(n_batches, batch, size)
    pre = {"input_size": [size, size], "mean": [0.0] * 3, "std": [1.0] * 3, "eval": []}
    torch.manual_seed(0)
    lit = DetectionModule("small_cnn", {"width": 16, "stages": 3}, len(classes), classes, pre, head_width=32)
    plain_net = copy.deepcopy(lit.model)
    plain_opt = torch.optim.AdamW(plain_net.parameters(), lr=1e-3)
    stride, size_weight = lit.stride_px, lit.hparams["size_weight"]

    def plain_epoch() -> float:
        plain_net.train()
        t0 = time.perf_counter()
        for x, targets in data:
            plain_opt.zero_grad(set_to_none=True)
            loss = centernet_loss(plain_net(x), targets, stride, size_weight)["loss"]
            loss.backward()
            plain_opt.step()
        return time.perf_counter() - t0

    pairs: list[tuple[float, float]] = []

    class Pairwise(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self.plain = plain_epoch() if trainer.current_epoch % 2 == 0 else None
            self.t0 = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            lit_s = time.perf_counter() - self.t0
            plain_s = self.plain if self.plain is not None else plain_epoch()
            pairs.append((lit_s, plain_s))

    loader = torch.utils.data.DataLoader(data, batch_size=None, shuffle=False)
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[Pairwise()],
                         num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(lit, train_dataloaders=loader)
    measured = pairs[1:] or pairs  # the first pair is a warm-up
    ratios = [a / b for a, b in measured]
    return {"epochs": epochs, "batches_per_epoch": n_batches, "batch_size": batch, "image_size": size,
            "lightning_epoch_s": [round(a, 3) for a, _ in measured], "plain_epoch_s": [round(b, 3) for _, b in measured],
            "ratio_lightning_vs_plain_median": round(statistics.median(ratios), 3),
            "ratio_min": round(min(ratios), 3), "ratio_max": round(max(ratios), 3), "target": 1.10}


SERVING_LEVELS: tuple[tuple[str, int, int], ...] = (("fp32", 4, 16), ("fp32", 8, 1), ("png", 4, 16), ("png", 8, 1))
"""(inputs, concurrency, images per request) of the serving part."""


def export_detector(arch: str, size: int, out: Path) -> Path:
    """An untrained ``DetectionModule`` on ``arch`` exported with the export stage's ``export_onnx``; its heatmap
    is sharpened (as the serving tests do) so a few peaks per random image pass the task's score threshold."""
    import torch

    from cvplatform.export.onnx_export import export_onnx
    from cvplatform.models.checkpoint import LoadedModel
    from cvplatform.preprocess import PreprocessContract
    from cvplatform.tasks import get_task
    from cvplatform.tasks.detection.module import DetectionModule

    classes = ["circle", "square", "triangle"]
    pre = {"input_size": [size, size], "mean": [0.5] * 3, "std": [0.25] * 3, "eval": []}
    torch.manual_seed(0)
    module = DetectionModule(arch, {"width": 16, "stages": 3}, len(classes), classes, pre, head_width=32)
    with torch.no_grad():
        last = module.model.heatmap[-1]
        last.weight.mul_(5.0)
        last.bias.fill_(-1.0)
    loaded = LoadedModel(model=module.exportable(), arch=arch, arch_kwargs=dict(module.hparams["arch_kwargs"]),
                         num_classes=len(classes), class_names=classes, input_size=(size, size), mean=(0.5,) * 3,
                         std=(0.25,) * 3, eval_transforms=[], preprocess=pre, path=out.with_suffix(".ckpt"))
    contract = PreprocessContract((size, size), (0.5,) * 3, (0.25,) * 3, tuple(classes))
    return export_onnx(loaded, out, contract, task=get_task("detection"))


def _boxes_per_image(url: str) -> tuple[float, float]:
    """``(images, boxes)`` so far from the server's ``cvplatform_detections_per_image`` histogram."""
    import httpx

    images = boxes = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith("cvplatform_detections_per_image_count"):
            images += float(line.rsplit(" ", 1)[1])
        elif line.startswith("cvplatform_detections_per_image_sum"):
            boxes += float(line.rsplit(" ", 1)[1])
    return images, boxes


def _raw_cpu_ms_per_image(model: Path, size: int, batch: int, threads: int, seconds: float = 1.0) -> float:
    """CPU milliseconds per image of the raw session at ``batch`` (process CPU time, so other jobs on the machine
    do not count, unlike the wall-clock images/s)."""
    import numpy as np
    import onnxruntime as ort

    from cvplatform.runtime import session_options

    sess = ort.InferenceSession(str(model), sess_options=session_options(intra_op_threads=threads),
                                providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
    sess.run(None, {"input": x})
    calls, t0, c0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        sess.run(None, {"input": x})
        calls += 1
    return (time.process_time() - c0) * 1000 / (calls * batch)


def bench_serving(size: int, duration: float, threads: int) -> dict:
    import tempfile

    from benchmarks.serving import _measure_level, make_project, process_cpu_s
    from cvplatform.serving.local import LocalServer

    arch = "small_cnn"
    with tempfile.TemporaryDirectory(prefix="bench-detection-") as tmp:
        root, model, cfg = make_project(arch, size, Path(tmp), threads, [], export=export_detector)
        levels = []
        # the server runs this checkout's cvplatform (not another copy the interpreter may have installed)
        env = {"PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
        with LocalServer(root, model=model, config=root / "serving.yaml", overrides=["project.task=detection"],
                         env=env) as srv:
            for inputs, c, k in SERVING_LEVELS:
                before, cpu0 = _boxes_per_image(srv.url), process_cpu_s(srv.proc.pid)
                level = _measure_level(srv.url, model, root / "image.png", size, inputs, c, k, duration, threads,
                                       bool(cfg["models"].get("allow_spinning", False)), f"detector {arch}")
                # the server's CPU over the served run and the raw run (the server idles during the latter)
                after, cpu = _boxes_per_image(srv.url), process_cpu_s(srv.proc.pid) - cpu0
                images = after[0] - before[0]
                served, raw = level["served"], level["raw_session"]
                served["boxes_per_image"] = round((after[1] - before[1]) / images, 2) if images else None
                served["server_cpu_ms_per_image"] = round(cpu * 1000 / images, 3) if images else None
                raw["cpu_ms_per_image"] = round(_raw_cpu_ms_per_image(model, size, raw["batch"], threads), 3)
                print(f"    server CPU {served['server_cpu_ms_per_image']} ms per image, raw session CPU "
                      f"{raw['cpu_ms_per_image']} ms per image; {served['boxes_per_image']} boxes per image", flush=True)
                levels.append(level)
        # control: a classifier on the same backbone and input size, served the same way in the same run, at
        # the first level: what serving costs without detection's post-processing
        (inputs, c, k), control_root = SERVING_LEVELS[0], Path(tmp) / "control"
        control_root.mkdir()
        croot, cmodel, _ = make_project(arch, size, control_root, threads, [])
        with LocalServer(croot, model=cmodel, config=croot / "serving.yaml", env=env) as srv:
            cpu0 = process_cpu_s(srv.proc.pid)
            control = _measure_level(srv.url, cmodel, croot / "image.png", size, inputs, c, k, duration, threads,
                                     bool(cfg["models"].get("allow_spinning", False)), f"classifier {arch}")
            images = (control["served"]["requests"] + 3) * k  # the load generator's 3 warm-up requests too
            control["served"]["server_cpu_ms_per_image"] = round((process_cpu_s(srv.proc.pid) - cpu0) * 1000 / images, 3)
            control["raw_session"]["cpu_ms_per_image"] = round(
                _raw_cpu_ms_per_image(cmodel, size, control["raw_session"]["batch"], threads), 3)
            print(f"    server CPU {control['served']['server_cpu_ms_per_image']} ms per image, raw session CPU "
                  f"{control['raw_session']['cpu_ms_per_image']} ms per image", flush=True)
    ratios = [lv["served_over_raw"] for lv in levels if lv["served_over_raw"] is not None]
    return {"arch": arch, "input": [size, size], "threads": threads, "duration_s": duration, "levels": levels,
            "best_served_over_raw": max(ratios) if ratios else None, "target": 0.8,
            "classifier_control": control}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--boxes", type=int, default=20)
    ap.add_argument("--bootstrap-images", type=int, default=225)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batches", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--parts", nargs="+", choices=["evaluation", "training", "serving"],
                    default=["evaluation", "training", "serving"])
    ap.add_argument("--serving-duration", type=float, default=5.0, help="seconds per serving level (and raw)")
    ap.add_argument("--serving-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads, served and raw")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results/detection.json")
    args = ap.parse_args()
    result: dict = {"benchmark": "detection", "platform": platform.platform(), "python": platform.python_version()}
    ok = True
    if "evaluation" in args.parts:
        ev = result["evaluation"] = bench_evaluation(args.images, args.boxes)
        print(f"evaluation: {ev['images']} images x {ev['boxes_per_image']} boxes: project {ev['project_s']:.2f} s, "
              f"pycocotools {ev['pycocotools_s']:.2f} s (ratio {ev['ratio_project_vs_pycocotools']:.3f}); "
              f"identical numbers: {ev['identical']} (max |diff| {ev['max_abs_difference']:.1e})")
        bs = result["bootstrap"] = bench_bootstrap(args.bootstrap_images)
        print(f"bootstrap: evaluate_scenario ({bs['images']} images, {bs['predictions']} boxes, {bs['resamples']} "
              f"resamples) {bs['evaluate_scenario_s']:.2f} s vs one coco_metrics {bs['coco_metrics_s']:.2f} s "
              f"(ratio {bs['ratio_scenario_vs_one_coco']:.1f}; the {bs['resamples']} resamples alone "
              f"{bs['bootstrap_s']:.2f} s, ratio {bs['ratio_bootstrap_vs_one_coco']:.1f}); resamples equal COCO: {bs['identical']} "
              f"(max |diff| {bs['max_abs_difference']:.1e})")
        ok = bool(ev["identical"]) and bool(bs["identical"])
    if "training" in args.parts:
        tr = result["training"] = bench_training(args.epochs, args.batches, args.batch_size, args.size)
        print(f"training: Lightning / plain loop = {tr['ratio_lightning_vs_plain_median']:.3f} "
              f"(min {tr['ratio_min']:.3f}, max {tr['ratio_max']:.3f}; target <= 1.10)")
    if "serving" in args.parts:
        sv = result["serving"] = bench_serving(args.serving_size, args.serving_duration, args.threads)
        print(f"serving: best served / raw = {sv['best_served_over_raw']} (target >= 0.8)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written: {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
