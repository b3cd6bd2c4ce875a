"""Inference speed: onnxruntime fp32 vs PyTorch eager, and INT8 vs fp32, measured in one run.

What is measured (all by the export stage's own code, :func:`cvplatform.export.run.run_export`,
so the numbers are those the pipeline records in ``artifacts/export/benchmark.json``):

* batch-1 latency (p50/p95/p99) and throughput at ``--batch-size`` of PyTorch eager,
  onnxruntime fp32 and onnxruntime INT8 (static QDQ), same input, same number of
  intra-op threads (``--threads``), warm-up first, timed calls interleaved in rounds;
* the clean-scenario accuracy of fp32 and INT8 on the same test images (the INT8
  acceptance check of the export stage).

Targets (reported as met / missed, never adjusted):

* ORT fp32 >= 1.5x PyTorch eager throughput at batch 1;
* INT8 >= 1.5x ORT fp32 throughput (checked at batch 1 and at ``--batch-size``) with
  a clean-accuracy drop <= 1 point.

Model: without ``--checkpoint``, the default model (``params.yaml`` as is: small_cnn
on the built-in digits) is produced in a temporary project by ``run_ingest`` +
``run_train``; with ``--checkpoint PATH`` that checkpoint is exported from the
project at ``--root`` (its manifest supplies test and calibration images).

Usage:  .venv/bin/python benchmarks/inference.py [--threads 1] [--iterations 300] [--batch-size 32]
        [--checkpoint artifacts/train/best.ckpt --root .] [--out benchmarks/results/inference.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FP32_VS_TORCH_TARGET = 1.5
INT8_VS_FP32_TARGET = 1.5
MAX_CLEAN_DROP = 0.01


def make_default_model(root: Path, params_overrides: list[str]) -> tuple[Path, dict]:
    """Ingest the digits and train the default model in ``root``; return (checkpoint, timings)."""
    from cvplatform.config import load_params
    from cvplatform.data.ingest import run_ingest
    from cvplatform.train import run_train

    shutil.copytree(REPO / "configs", root / "configs")
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    params = load_params(root / "params.yaml", ["train.progress_bar=false", *params_overrides])
    t0 = time.perf_counter()
    ingest = run_ingest(params, root=root)
    t1 = time.perf_counter()
    train = run_train(params, root=root)
    t2 = time.perf_counter()
    logging.getLogger("bench").info("ingest %.1fs, train %.1fs (%s)", t1 - t0, t2 - t1, train.best_metrics)
    return Path(train.best_checkpoint), {"ingest_s": round(t1 - t0, 1), "train_s": round(t2 - t1, 1),
                                         "ingested": getattr(ingest, "accepted", None),
                                         "best_val": train.best_metrics}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=None, help="export this checkpoint instead of training one")
    ap.add_argument("--root", type=Path, default=Path.cwd(), help="project root of --checkpoint (manifest, configs)")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads for torch and onnxruntime")
    ap.add_argument("--iterations", type=int, default=300, help="timed calls per runtime and batch size")
    ap.add_argument("--warmup", type=int, default=30, help="untimed calls per runtime and batch size first")
    ap.add_argument("--batch-size", type=int, default=32, help="batch size of the throughput measurement")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="extra params override (key.path=value), e.g. --set train.epochs=2")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "inference.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("mlflow", "alembic", "pytorch_lightning", "lightning", "onnxruntime"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from cvplatform.config import load_params
    from cvplatform.export.run import run_export

    export_overrides = [
        f"export.benchmark.threads={args.threads}", f"export.benchmark.iterations={args.iterations}",
        f"export.benchmark.warmup={args.warmup}", f"export.benchmark.batch_size={args.batch_size}",
        "export.benchmark.enabled=true", "export.int8.enabled=true",
        # measure INT8 whatever its accuracy: the acceptance decision is reported, not used to skip it
        "export.int8.max_drop=1.0", "export.log_to_mlflow=false",
    ]
    tmp: tempfile.TemporaryDirectory | None = None
    setup: dict = {}
    if args.checkpoint is None:
        tmp = tempfile.TemporaryDirectory(prefix="cvplatform-bench-inference-")
        root = Path(tmp.name)
        checkpoint, setup = make_default_model(root, args.overrides)
        model_desc = "default params.yaml model (small_cnn) trained on the built-in digits in a temp project"
    else:
        root = args.root.resolve()
        checkpoint = args.checkpoint if args.checkpoint.is_absolute() else root / args.checkpoint
        model_desc = f"checkpoint {checkpoint}"
    try:
        params = load_params(root / "params.yaml", [*args.overrides, *export_overrides])
        result = run_export(params, root=root, checkpoint=checkpoint)
    finally:
        if tmp is not None:
            tmp.cleanup()

    bench = result.benchmark or {}
    rt = bench.get("runtimes", {})
    sp = bench.get("speedups", {})
    scen = {s["name"]: s for s in (result.int8.get("decision") or {}).get("scenarios", [])}
    clean = next((s for s in scen.values() if s["kind"] == "clean"), None)
    clean_drop = clean["drop"] if clean else None
    fp32_vs_torch = sp.get("ort_fp32_vs_torch_batch1")
    int8_b1 = sp.get("int8_vs_fp32_batch1")
    int8_bn = sp.get("int8_vs_fp32_batched")
    accuracy_ok = clean_drop is not None and clean_drop <= MAX_CLEAN_DROP + 1e-9
    targets = {
        "ort_fp32_vs_torch_batch1": {
            "target": f">= {FP32_VS_TORCH_TARGET}x throughput at batch 1", "value": fp32_vs_torch,
            "met": fp32_vs_torch is not None and fp32_vs_torch >= FP32_VS_TORCH_TARGET},
        "int8_vs_fp32_batch1": {
            "target": f">= {INT8_VS_FP32_TARGET}x throughput at batch 1 and clean drop <= {MAX_CLEAN_DROP}",
            "value": int8_b1, "clean_drop": clean_drop,
            "met": int8_b1 is not None and int8_b1 >= INT8_VS_FP32_TARGET and accuracy_ok},
        f"int8_vs_fp32_batch{args.batch_size}": {
            "target": f">= {INT8_VS_FP32_TARGET}x throughput at batch {args.batch_size} and clean drop <= {MAX_CLEAN_DROP}",
            "value": int8_bn, "clean_drop": clean_drop,
            "met": int8_bn is not None and int8_bn >= INT8_VS_FP32_TARGET and accuracy_ok},
    }
    out = {
        "benchmark": "inference",
        "model": model_desc,
        "arch": result.arch,
        "arch_kwargs": result.arch_kwargs,
        "input_size": result.contract.get("input_size"),
        "classes": len(result.class_names),
        "setup": setup,
        "threads": bench.get("threads"),
        "batch_size": bench.get("batch_size"),
        "iterations": bench.get("iterations"),
        "warmup": bench.get("warmup"),
        "environment": bench.get("environment"),
        "runtimes": {k: {"latency_ms": v["latency_ms"], "throughput_batch1_ips": v["throughput_batch1_ips"],
                         "throughput_ips": v["throughput_ips"], "cost_per_1k_usd": v["cost_per_1k_usd"],
                         "provider": v["provider"]} for k, v in rt.items()},
        "speedups": sp,
        "accuracy_clean": {"fp32": clean and clean["reference_accuracy"], "int8": clean and clean["candidate_accuracy"],
                           "drop": clean_drop, "n": clean and clean["n"]},
        "int8_export_decision_at_default_max_drop": {
            "accepted": accuracy_ok and all((s["drop"] or 0) <= MAX_CLEAN_DROP + 1e-9
                                            for s in scen.values() if s["judged"]),
            "worst_judged_drop": max((s["drop"] or 0 for s in scen.values() if s["judged"]), default=None),
        },
        "parity": {k: result.parity[k] for k in ("n", "max_abs_diff", "top1_agreement", "passed")},
        "size_bytes": {"fp32": result.fp32["size_bytes"], "int8": result.int8.get("size_bytes")},
        "targets": targets,
        "all_targets_met": all(t["met"] for t in targets.values()),
        "cost_formula": bench.get("cost_formula"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, sort_keys=False) + "\n", encoding="utf-8")

    print(f"inference benchmark: {model_desc}")
    print(f"  {bench.get('threads')} thread(s), {bench.get('iterations')} timed calls, batch {bench.get('batch_size')}; "
          f"CPU: {(bench.get('environment') or {}).get('cpu')}")
    print(f"  {'runtime':<12} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'img/s b1':>10} {'img/s bN':>10}")
    for k, v in rt.items():
        lat = v["latency_ms"]
        print(f"  {k:<12} {lat['p50']:>8.3f} {lat['p95']:>8.3f} {lat['p99']:>8.3f} "
              f"{v['throughput_batch1_ips']:>10.1f} {v['throughput_ips']:>10.1f}")
    if clean:
        print(f"  clean accuracy: fp32 {clean['reference_accuracy']:.4f}, int8 {clean['candidate_accuracy']:.4f} "
              f"(drop {clean_drop:+.4f}, n={clean['n']})")
    for name, t in targets.items():
        val = "n/a" if t["value"] is None else f"{t['value']:.2f}x"
        print(f"  {name:<26} {val:>8}  target {t['target']}: {'MET' if t['met'] else 'MISSED'}")
    print(f"  written: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
