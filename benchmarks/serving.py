"""Serving throughput and latency vs the raw onnxruntime session, measured in one run.

For each model and each client concurrency level (default 1, 4, 16):

1. **served**: a separate load-generating process (``benchmarks/serving.py --load-gen``,
   asyncio + httpx, one image per request as an ``image/png`` body) drives ``cvplatform serve
   --model model.onnx`` (a subprocess on a loopback port, micro-batching from
   ``configs/deploy/serving.yaml``) for ``--duration`` seconds: images/s and client-side latency
   p50/p95/p99; the mean batch size the server formed comes from its ``/metrics``.
2. **raw**: in this process, the same ONNX file in a plain ``onnxruntime.InferenceSession`` with
   the same session options, on already-preprocessed tensors, at the *same batch size* the server
   formed at that level (rounded; batch 1 for concurrency 1): images/s.

The ratio served / raw is the number to read (target >= 0.8 with micro-batching); absolute
numbers depend on the machine. Models: the platform default (``small_cnn`` at 32x32, where
HTTP + decoding dominate) and a compute-bound one (``resnet`` depth 18 at 64x64). Weights are
random (speed does not depend on them).

Usage:  .venv/bin/python benchmarks/serving.py [--duration 5] [--concurrency 1 4 16]
        [--models small_cnn:32 resnet:64] [--out benchmarks/results/serving.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODEL_KWARGS = {"small_cnn": {"width": 16, "stages": 3}, "resnet": {"depth": 18}, "mobilenet_v2": {}}


# --------------------------------------------------------------------------- load generator (separate process)
async def _load(url: str, image: bytes, concurrency: int, duration: float) -> dict:
    import httpx

    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        # warm-up
        for _ in range(3):
            await client.post("/v1/predict", content=image, headers={"Content-Type": "image/png"})
        t_end = time.perf_counter() + duration

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < t_end:
                t = time.perf_counter()
                r = await client.post("/v1/predict", content=image, headers={"Content-Type": "image/png"})
                if r.status_code == 200:
                    latencies.append((time.perf_counter() - t) * 1000)
                else:
                    errors += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return {"requests": len(latencies), "errors": errors, "seconds": wall, "latencies_ms": latencies}


def load_gen_main(args: argparse.Namespace) -> None:
    image = Path(args.image).read_bytes()
    res = asyncio.run(_load(args.url, image, args.concurrency, args.duration))
    sys.stdout.write(json.dumps(res))


# --------------------------------------------------------------------------- helpers
def pct(values: list[float], q: float) -> float | None:
    from cvplatform.serving.metrics import percentile

    return None if not values else round(percentile(values, q), 3)


def export_model(arch: str, size: int, out: Path) -> Path:
    import onnx
    import torch

    from cvplatform.models import build_model
    from cvplatform.preprocess import PreprocessContract

    torch.manual_seed(0)
    classes = tuple(str(i) for i in range(10))
    net = build_model(arch, len(classes), **MODEL_KWARGS.get(arch, {})).eval()
    tmp = out.with_suffix(".raw.onnx")
    with torch.no_grad():
        torch.onnx.export(net, torch.zeros(1, 3, size, size), str(tmp), input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=17, dynamo=False)
    model = onnx.load(str(tmp))
    meta = PreprocessContract((size, size), (0.5,) * 3, (0.25,) * 3, classes).to_metadata()
    onnx.helper.set_model_props(model, meta)
    onnx.save(model, str(out))
    tmp.unlink()
    return out


def batch_counts(url: str) -> tuple[float, float]:
    import httpx

    count = total = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith("cvplatform_batch_size_count"):
            count += float(line.rsplit(" ", 1)[1])
        elif line.startswith("cvplatform_batch_size_sum"):
            total += float(line.rsplit(" ", 1)[1])
    return count, total


def raw_throughput(model_path: Path, size: int, batch: int, duration: float, threads: int,
                   allow_spinning: bool) -> dict:
    import numpy as np
    import onnxruntime as ort

    from cvplatform.serving.models import session_options

    sess = ort.InferenceSession(str(model_path), sess_options=session_options(threads, allow_spinning),
                                providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
    for _ in range(3):
        sess.run(None, {"input": x})
    lat: list[float] = []
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < duration:
        t = time.perf_counter()
        sess.run(None, {"input": x})
        lat.append((time.perf_counter() - t) * 1000)
    wall = time.perf_counter() - t0
    return {"batch": batch, "images_per_s": round(len(lat) * batch / wall, 1), "calls": len(lat),
            "latency_ms": {"p50": pct(lat, 50), "p95": pct(lat, 95), "p99": pct(lat, 99)}}


def bench_model(arch: str, size: int, levels: list[int], duration: float, work: Path, threads: int,
                serving_overrides: list[str]) -> dict:
    import numpy as np
    import yaml
    from PIL import Image

    from cvplatform.config import apply_overrides, read_yaml
    from cvplatform.serving.local import LocalServer

    root = work / f"{arch}_{size}"
    root.mkdir()
    model = export_model(arch, size, root / "model.onnx")
    (root / "params.yaml").write_text((REPO / "params.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    cfg = apply_overrides(read_yaml(REPO / "configs" / "deploy" / "serving.yaml"),
                          [f"models.intra_op_threads={threads}", *serving_overrides], "serving.yaml")
    (root / "serving.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    img = np.random.default_rng(1).integers(0, 255, (size, size, 3), dtype=np.uint8)
    Image.fromarray(img).save(root / "image.png")
    out = {"arch": arch, "input": [size, size], "kwargs": MODEL_KWARGS.get(arch, {}), "levels": []}
    with LocalServer(root, model=model, config=root / "serving.yaml") as srv:
        for c in levels:
            before = batch_counts(srv.url)
            proc = subprocess.run(
                [sys.executable, __file__, "--load-gen", "--url", srv.url, "--image", str(root / "image.png"),
                 "--concurrency", str(c), "--duration", str(duration)],
                capture_output=True, text=True, timeout=duration * 4 + 120,
            )
            if proc.returncode != 0:
                raise RuntimeError(f"load generator failed: {proc.stderr[-2000:]}")
            res = json.loads(proc.stdout)
            after = batch_counts(srv.url)
            batches, images = after[0] - before[0], after[1] - before[1]
            mean_batch = images / batches if batches else 1.0
            lat = res["latencies_ms"]
            served = {
                "images_per_s": round(res["requests"] / res["seconds"], 1),
                "requests": res["requests"], "errors": res["errors"],
                "latency_ms": {"p50": pct(lat, 50), "p95": pct(lat, 95), "p99": pct(lat, 99),
                               "mean": round(statistics.fmean(lat), 3) if lat else None},
                "mean_batch_size": round(mean_batch, 2),
            }
            raw = raw_throughput(model, size, max(1, round(mean_batch)), duration, threads,
                                 bool(cfg["models"].get("allow_spinning", False)))
            ratio = served["images_per_s"] / raw["images_per_s"] if raw["images_per_s"] else None
            level = {"concurrency": c, "served": served, "raw_session": raw,
                     "served_over_raw": round(ratio, 3) if ratio is not None else None}
            out["levels"].append(level)
            print(f"{arch}@{size} c={c:>3}: served {served['images_per_s']:>8.1f} img/s "
                  f"(p50 {served['latency_ms']['p50']} ms, p95 {served['latency_ms']['p95']} ms, "
                  f"p99 {served['latency_ms']['p99']} ms, batch {mean_batch:.1f}) | raw session batch "
                  f"{raw['batch']}: {raw['images_per_s']:>8.1f} img/s | ratio {level['served_over_raw']}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--load-gen", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--url")
    ap.add_argument("--image")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    ap.add_argument("--models", nargs="+", default=["small_cnn:32", "resnet:64"], help="arch:size ...")
    ap.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (server and raw); 0 = default")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="serving.yaml override, e.g. --set batching.max_wait_ms=5")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "serving.json"))
    args = ap.parse_args()
    if args.load_gen:
        args.concurrency = args.concurrency[0]
        load_gen_main(args)
        return
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import onnxruntime as ort

    from cvplatform.serving.schemas import load_serving_config

    cfg = load_serving_config(REPO / "configs" / "deploy" / "serving.yaml")
    results = {
        "what": "served /v1/predict (separate load-generating process, 1 image per request) vs a raw "
                "onnxruntime session on the same model at the batch size the server formed",
        "target": "served_over_raw >= 0.8 with micro-batching",
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count(), "onnxruntime": ort.__version__},
        "duration_s": args.duration,
        "threads": args.threads,
        "batching": {**cfg.batching.model_dump(), "overrides": args.overrides},
        "models": [],
    }
    with tempfile.TemporaryDirectory(prefix="cvplatform-bench-serving-") as tmp:
        for spec in args.models:
            arch, _, size = spec.partition(":")
            results["models"].append(bench_model(arch, int(size or 32), args.concurrency, args.duration, Path(tmp),
                                                 args.threads, args.overrides))
    for m in results["models"]:
        best = max((lv["served_over_raw"] or 0) for lv in m["levels"])
        m["best_served_over_raw"] = best
        m["target_met"] = best >= 0.8
    results["notes"] = [
        "served_over_raw compares images/s through HTTP (decode + preprocess + JSON + micro-batching) with "
        "session.run on ready tensors at the batch size the server formed; > 1 means the raw run was "
        "slower (machine noise: both are measured in the same run but not at the same instant).",
        "When the model costs well under a millisecond per image, the per-request HTTP and Python work "
        "(about 1-2 ms of CPU for server + load generator, on the same cores) bounds throughput: the target "
        "cannot be met one image per request; send several images per request or use more server workers.",
        "When the model dominates (compute-bound), serving keeps most of the raw session's throughput and "
        "micro-batching grows batches with concurrency.",
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
