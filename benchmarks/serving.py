"""Serving throughput and latency vs the raw onnxruntime session, measured in one run.

For each model, input kind, images per request (default 1, 16) and client concurrency (default
1, 4, 8, 16):

1. **served**: a separate load-generating process (``benchmarks/serving.py --load-gen``,
   asyncio + aiohttp) drives ``cvplatform serve --model model.onnx`` (a subprocess on a loopback
   port, micro-batching from ``configs/deploy/serving.yaml``) for ``--duration`` seconds:
   images/s and client-side latency p50/p95/p99; the mean batch size the server formed comes
   from its ``/metrics``. Two input kinds:

   * ``fp32``: OIP v2 ``/v2/models/{name}/infer`` with one preprocessed FP32 tensor as binary
     data (the Triton/KServe binary tensor extension): the same input the raw session gets, so
     served / raw is the cost of serving itself (HTTP, routing, micro-batching, JSON answer);
   * ``png``: ``/v1/predict`` with PNG files (one ``image/png`` body, or a multipart body with
     several files): end to end, including decoding and preprocessing on the server.

2. **raw**: in this process, the same ONNX file in a plain ``onnxruntime.InferenceSession`` with
   the same session options (``--threads``), on already-preprocessed tensors, at the *same batch
   size* the server formed at that level (rounded): images/s.

The ratio served / raw is the number to read (target >= 0.8 with micro-batching); absolute
numbers depend on the machine. ``--threads`` (default 1) sets onnxruntime's intra-op threads on
both sides. One thread each is the fair setting on a small machine shared with the load
generator: the served model and the raw session then get the same compute, and the HTTP work
and the load generator use the other cores. With ``--threads 0`` (onnxruntime's default, one
thread per core) the raw session gets every core, while the served model shares them with the
HTTP work and the load generator. Models: the platform default (``small_cnn`` at 32x32, about
0.2 ms per image) and a compute-bound one (``resnet`` depth 18 at 64x64). Weights are random
(speed does not depend on them).

``--hot-path`` measures only the per-request hot path: one 32x32 PNG per request (``image/png``
body) at concurrency 8 against the real server, and the raw session at batch 1, ``--repeats``
times in the same run, with req/s, the ratio, p50/p95/p99 and the server process's CPU per
request (``benchmarks/profile_serving.py`` shows where that CPU goes).

Usage:  .venv/bin/python benchmarks/serving.py [--duration 5] [--concurrency 1 4 16]
        [--images-per-request 1 16] [--inputs png fp32] [--threads 1]
        [--models small_cnn:32 resnet:64] [--out benchmarks/results/serving.json]
        .venv/bin/python benchmarks/serving.py --hot-path [--models small_cnn:32] [--repeats 3]
        [--out benchmarks/results/serving-hot-path.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODEL_KWARGS = {"small_cnn": {"width": 16, "stages": 3}, "resnet": {"depth": 18}, "mobilenet_v2": {}}


# --------------------------------------------------------------------------- load generator (separate process)
def multipart_body(images: list[bytes], boundary: str = "cvplatform-bench-boundary") -> tuple[bytes, str]:
    """A multipart/form-data body with one ``files`` part per PNG image, and its Content-Type."""
    parts = []
    for i, data in enumerate(images):
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{i}.png"\r\n'
                     f"Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def oip_fp32_body(x: bytes, rows: int, size: int) -> tuple[bytes, dict[str, str]]:
    """An OIP v2 inference body with one preprocessed FP32 tensor as binary data (Triton/KServe extension)."""
    header = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [rows, 3, size, size],
                                     "parameters": {"binary_data_size": len(x)}}]}).encode()
    return header + x, {"Content-Type": "application/octet-stream",
                        "Inference-Header-Content-Length": str(len(header))}


def oip_fp32_json_body(x, rows: int, size: int) -> tuple[bytes, dict[str, str]]:
    """An OIP v2 inference body with the same FP32 tensor as JSON ``data`` (tritonclient's
    ``binary_data=False``, and what any plain-JSON OIP client sends)."""
    body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [rows, 3, size, size],
                                   "data": x.ravel().tolist()}]}).encode()
    return body, {"Content-Type": "application/json"}


async def _load(url: str, image: bytes, concurrency: int, duration: float, images_per_request: int = 1,
                inputs: str = "png", model_name: str = "", size: int = 32) -> dict:
    import aiohttp
    import numpy as np

    latencies: list[float] = []
    errors = 0
    if inputs == "fp32":  # the raw session's input: preprocessed rows, no decoding on the server
        x = np.random.default_rng(0).standard_normal((images_per_request, 3, size, size)).astype("<f4")
        path = f"/v2/models/{model_name}/infer"
        body, headers = oip_fp32_body(x.tobytes(), images_per_request, size)
    elif inputs == "fp32json":  # the same rows as JSON numbers
        x = np.random.default_rng(0).standard_normal((images_per_request, 3, size, size)).astype("<f4")
        path = f"/v2/models/{model_name}/infer"
        body, headers = oip_fp32_json_body(x, images_per_request, size)
    elif images_per_request == 1:
        path, body, headers = "/v1/predict", image, {"Content-Type": "image/png"}
    else:  # several images in one request: the same multipart/form-data body every time
        body, ctype = multipart_body([image] * images_per_request)
        path, headers = "/v1/predict", {"Content-Type": ctype}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(base_url=url, connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=60)) as client:
        async def post() -> bool:
            async with client.post(path, data=body, headers=headers) as r:
                await r.read()
                return r.status == 200

        for _ in range(3):  # warm-up
            await post()
        t_end = time.perf_counter() + duration

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < t_end:
                t = time.perf_counter()
                if await post():
                    latencies.append((time.perf_counter() - t) * 1000)
                else:
                    errors += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return {"requests": len(latencies), "errors": errors, "seconds": wall, "latencies_ms": latencies}


def load_gen_main(args: argparse.Namespace) -> None:
    image = Path(args.image).read_bytes()
    res = asyncio.run(_load(args.url, image, args.concurrency, args.duration, args.images_per_request[0],
                            args.inputs[0], args.model_name, args.size))
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

    from cvplatform.runtime import session_options

    sess = ort.InferenceSession(str(model_path),
                                sess_options=session_options(intra_op_threads=threads, allow_spinning=allow_spinning),
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


def run_load_gen(url: str, image: Path, inputs: str, c: int, k: int, duration: float, model_name: str,
                 size: int) -> dict:
    """Run the load generator (a separate process) for ``duration`` seconds; its requests, errors and latencies."""
    proc = subprocess.run(
        [sys.executable, __file__, "--load-gen", "--url", url, "--image", str(image), "--concurrency", str(c),
         "--images-per-request", str(k), "--duration", str(duration), "--inputs", inputs, "--model-name",
         model_name, "--size", str(size)],
        capture_output=True, text=True, timeout=duration * 4 + 120,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads), from ``/proc/<pid>/stat``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _measure_level(url: str, model: Path, image: Path, size: int, inputs: str, c: int, k: int, duration: float,
                   threads: int, allow_spinning: bool, arch: str) -> dict:
    """One level: ``c`` concurrent clients sending ``k`` images (``inputs`` png) or preprocessed rows
    (``inputs`` fp32) per request, then the raw session at the batch size the server formed meanwhile."""
    import httpx

    model_name = httpx.get(f"{url}/", timeout=30).json()["model"]
    before = batch_counts(url)
    res = run_load_gen(url, image, inputs, c, k, duration, model_name, size)
    after = batch_counts(url)
    batches, images = after[0] - before[0], after[1] - before[1]
    mean_batch = images / batches if batches else 1.0
    lat = res["latencies_ms"]
    served = {
        "images_per_s": round(res["requests"] * k / res["seconds"], 1),
        "requests_per_s": round(res["requests"] / res["seconds"], 1),
        "requests": res["requests"], "errors": res["errors"],
        "latency_ms": {"p50": pct(lat, 50), "p95": pct(lat, 95), "p99": pct(lat, 99),
                       "mean": round(statistics.fmean(lat), 3) if lat else None},
        "mean_batch_size": round(mean_batch, 2),
    }
    raw = raw_throughput(model, size, max(1, round(mean_batch)), duration, threads, allow_spinning)
    ratio = served["images_per_s"] / raw["images_per_s"] if raw["images_per_s"] else None
    level = {"inputs": inputs, "concurrency": c, "images_per_request": k, "served": served, "raw_session": raw,
             "served_over_raw": round(ratio, 3) if ratio is not None else None}
    print(f"{arch}@{size} {inputs:>8} c={c:>3} k={k:>2}: served {served['images_per_s']:>8.1f} img/s "
          f"(p50 {served['latency_ms']['p50']} ms, p95 {served['latency_ms']['p95']} ms, "
          f"p99 {served['latency_ms']['p99']} ms, batch {mean_batch:.1f}) | raw session batch "
          f"{raw['batch']}: {raw['images_per_s']:>8.1f} img/s | ratio {level['served_over_raw']}", flush=True)
    return level


def make_project(arch: str, size: int, work: Path, threads: int, serving_overrides: list[str],
                 export: Callable[[str, int, Path], Path] | None = None) -> tuple[Path, Path, dict]:
    """A project root to serve from: the exported model (``export(arch, size, path)``, default
    :func:`export_model`: a classifier), the repository's params.yaml, the serving config with
    ``serving_overrides`` and one random ``image.png`` at the model's size.
    Returns (root, model path, serving config)."""
    import numpy as np
    import yaml
    from PIL import Image

    from cvplatform.config import apply_overrides, read_yaml

    root = work / f"{arch}_{size}"
    root.mkdir()
    model = (export or export_model)(arch, size, root / "model.onnx")
    (root / "params.yaml").write_text((REPO / "params.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    cfg = apply_overrides(read_yaml(REPO / "configs" / "deploy" / "serving.yaml"),
                          [f"models.intra_op_threads={threads}", *serving_overrides], "serving.yaml")
    (root / "serving.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    img = np.random.default_rng(1).integers(0, 255, (size, size, 3), dtype=np.uint8)
    Image.fromarray(img).save(root / "image.png")
    return root, model, cfg


def bench_model(arch: str, size: int, inputs: list[str], levels: list[int], per_request: list[int], duration: float,
                work: Path, threads: int, serving_overrides: list[str]) -> dict:
    from cvplatform.serving.local import LocalServer

    root, model, cfg = make_project(arch, size, work, threads, serving_overrides)
    out = {"arch": arch, "input": [size, size], "kwargs": MODEL_KWARGS.get(arch, {}), "levels": []}
    with LocalServer(root, model=model, config=root / "serving.yaml") as srv:
        for kind in inputs:
            for k in per_request:
                for c in levels:
                    out["levels"].append(_measure_level(
                        srv.url, model, root / "image.png", size, kind, c, k, duration, threads,
                        bool(cfg["models"].get("allow_spinning", False)), arch))
    return out


HOT_PATH_CONCURRENCY = 8


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of process ``pid`` and of its live descendants (the worker processes of ``serve.workers``)."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            total += process_cpu_s(p)
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def _hot_path_run(url: str, pid: int, root: Path, model: Path, size: int, duration: float, threads: int,
                  spinning: bool, model_name: str) -> dict:
    """One hot-path measurement: 1 PNG per request at concurrency 8, then the raw session at batch 1."""
    cpu0 = tree_cpu_s(pid)
    res = run_load_gen(url, root / "image.png", "png", HOT_PATH_CONCURRENCY, 1, duration, model_name, size)
    server_cpu = tree_cpu_s(pid) - cpu0
    raw = raw_throughput(model, size, 1, duration, threads, spinning)
    lat = res["latencies_ms"]
    handled = res["requests"] + res["errors"] + 3  # + the load generator's warm-up requests
    served = {"requests_per_s": round(res["requests"] / res["seconds"], 1), "requests": res["requests"],
              "errors": res["errors"],
              "latency_ms": {"p50": pct(lat, 50), "p95": pct(lat, 95), "p99": pct(lat, 99)},
              "server_cpu_ms_per_request": round(1000 * server_cpu / handled, 3)}
    ratio = served["requests_per_s"] / raw["images_per_s"] if raw["images_per_s"] else None
    run = {"served": served, "raw_session_batch1": raw, "served_over_raw": round(ratio, 3) if ratio else None}
    print(f"hot path: served {served['requests_per_s']:>7.1f} req/s (p50 {served['latency_ms']['p50']} ms, "
          f"p95 {served['latency_ms']['p95']} ms, p99 {served['latency_ms']['p99']} ms, server CPU "
          f"{served['server_cpu_ms_per_request']} ms/request) | raw session batch 1: {raw['images_per_s']:>7.1f}/s "
          f"| ratio {run['served_over_raw']}", flush=True)
    return run


def hot_path(args: argparse.Namespace) -> dict:
    """``--hot-path``: one 32x32 PNG per request at concurrency 8 through ``/v1/predict`` of the real server,
    against the raw onnxruntime session at batch 1, ``--repeats`` times in one run (median reported)."""
    import httpx

    from cvplatform.serving.local import LocalServer

    arch, _, size_text = args.models[0].partition(":")
    size = int(size_text or 32)
    counts = list(dict.fromkeys(args.workers))
    runs: dict[int, list[dict]] = {n: [] for n in counts}
    with tempfile.TemporaryDirectory(prefix="cvplatform-bench-hot-path-") as tmp, contextlib.ExitStack() as stack:
        root, model, cfg = make_project(arch, size, Path(tmp), args.threads, args.overrides)
        spinning = bool(cfg["models"].get("allow_spinning", False))
        servers = {n: stack.enter_context(LocalServer(root, model=model, config=root / "serving.yaml",
                                                      overrides=[f"serve.workers={n}"])) for n in counts}
        name = httpx.get(f"{servers[counts[0]].url}/", timeout=30).json()["model"]
        for _ in range(args.repeats):  # the worker counts alternate, so the machine's load hits them alike
            for n, srv in servers.items():
                assert srv.proc is not None
                print(f"serve.workers={n}: ", end="", flush=True)
                runs[n].append(_hot_path_run(srv.url, srv.proc.pid, root, model, size, args.duration, args.threads,
                                             spinning, name))
    summaries = {n: _hot_path_summary(args, arch, size, r) for n, r in runs.items()}
    if len(counts) == 1:
        return summaries[counts[0]]
    base = summaries[counts[0]]["median"]["served_requests_per_s"]
    return {
        "what": f"hot path with serve.workers in {counts}, measured alternately in one run",
        "cpus": os.cpu_count(), "by_workers": {str(n): s for n, s in summaries.items()},
        "speedup_over_first": {str(n): round(s["median"]["served_requests_per_s"] / base, 3) if base else None
                               for n, s in summaries.items()},
    }


def _hot_path_summary(args: argparse.Namespace, arch: str, size: int, runs: list[dict]) -> dict:
    ratios = [r["served_over_raw"] or 0.0 for r in runs]
    median = sorted(runs, key=lambda r: r["served_over_raw"] or 0.0)[len(runs) // 2]
    return {
        "what": "hot path: one PNG per request (/v1/predict, image/png body) at concurrency 8 from a separate "
                "load-generating process, vs the raw onnxruntime session at batch 1 in the same run",
        "model": {"arch": arch, "input": [size, size], "kwargs": MODEL_KWARGS.get(arch, {})},
        "concurrency": HOT_PATH_CONCURRENCY, "duration_s": args.duration, "threads": args.threads,
        "overrides": args.overrides, "runs": runs,
        "median": {"served_requests_per_s": median["served"]["requests_per_s"],
                   "raw_batch1_per_s": median["raw_session_batch1"]["images_per_s"],
                   "served_over_raw": median["served_over_raw"], "latency_ms": median["served"]["latency_ms"],
                   "server_cpu_ms_per_request": statistics.median(
                       r["served"]["server_cpu_ms_per_request"] for r in runs)},
        "served_over_raw_range": [min(ratios), max(ratios)],
        "notes": ["server_cpu_ms_per_request: user + system CPU of the server process and its worker processes "
                  "(every thread: event loop, micro-batcher, request-log writer) while the load generator ran, per "
                  "request handled.",
                  "Each run measures the served requests first, then the raw session, so the two never compete "
                  "for the cores; the median is the run with the median ratio."],
    }


def json_over_binary(levels: list[dict]) -> list[dict]:
    """OIP JSON FP32 requests/s over binary FP32 requests/s at each (concurrency, rows) both ran (target >= 0.5)."""
    binary = {(lv["concurrency"], lv["images_per_request"]): lv for lv in levels if lv["inputs"] == "fp32"}
    out = []
    for lv in levels:
        b = binary.get((lv["concurrency"], lv["images_per_request"]))
        if lv["inputs"] == "fp32json" and b and b["served"]["requests_per_s"]:
            ratio = round(lv["served"]["requests_per_s"] / b["served"]["requests_per_s"], 3)
            out.append({"concurrency": lv["concurrency"], "images_per_request": lv["images_per_request"],
                        "json_requests_per_s": lv["served"]["requests_per_s"],
                        "binary_requests_per_s": b["served"]["requests_per_s"], "ratio": ratio})
            print(f"OIP JSON / binary FP32 c={lv['concurrency']} k={lv['images_per_request']}: {ratio}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--load-gen", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--url")
    ap.add_argument("--image")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--images-per-request", type=int, nargs="+", default=[1, 16],
                    help="images per request (1 = a raw image/png body; more = one multipart body)")
    ap.add_argument("--inputs", nargs="+", choices=["png", "fp32", "fp32json"], default=["png", "fp32"],
                    help="png: PNG files to /v1/predict (decoded + preprocessed by the server); fp32: OIP v2 "
                         "infer with a preprocessed binary FP32 tensor (the raw session's input); fp32json: "
                         "the same tensor as JSON numbers (reported as a ratio to fp32 in the same run)")
    ap.add_argument("--model-name", default="", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, default=32, help=argparse.SUPPRESS)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    ap.add_argument("--models", nargs="+", default=["small_cnn:32", "resnet:64"], help="arch:size ...")
    ap.add_argument("--threads", type=int, default=1,
                    help="onnxruntime intra-op threads (server and raw); 0 = onnxruntime's default (one per core)")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="serving.yaml override, e.g. --set batching.max_wait_ms=5")
    ap.add_argument("--hot-path", action="store_true",
                    help="measure only the hot path: 1 PNG per request at concurrency 8 vs the raw session at "
                         "batch 1 (first --models entry; default out: results/serving-hot-path.json)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1],
                    help="--hot-path: serve.workers values, each its own server, measured alternately")
    ap.add_argument("--repeats", type=int, default=3, help="--hot-path: measurements in the run (median reported)")
    ap.add_argument("--out", default=None, help="results file (default results/serving.json, or "
                                                "results/serving-hot-path.json with --hot-path)")
    args = ap.parse_args()
    if args.load_gen:
        args.concurrency = args.concurrency[0]
        load_gen_main(args)
        return
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if args.hot_path:
        _write(hot_path(args), args.out or REPO / "benchmarks" / "results" / "serving-hot-path.json")
        return
    import onnxruntime as ort

    from cvplatform.serving.schemas import load_serving_config

    cfg = load_serving_config(REPO / "configs" / "deploy" / "serving.yaml")
    results = {
        "what": "served requests (separate load-generating process; fp32 = OIP v2 binary tensors, png = "
                "/v1/predict PNG files) vs a raw onnxruntime session on the same model at the batch size the "
                "server formed, with the same intra-op threads",
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
            results["models"].append(bench_model(arch, int(size or 32), args.inputs, args.concurrency, args.images_per_request,
                                                 args.duration, Path(tmp),
                                                 args.threads, args.overrides))
    for m in results["models"]:
        m["best_served_over_raw"] = {}
        for kind in args.inputs:
            batched = [lv["served_over_raw"] or 0 for lv in m["levels"]
                       if lv["inputs"] == kind and lv["served"]["mean_batch_size"] > 1.5]
            m["best_served_over_raw"][kind] = max(batched, default=None)
        m["target_met"] = {k: (v is not None and v >= 0.8) for k, v in m["best_served_over_raw"].items()}
        m["json_over_binary"] = json_over_binary(m["levels"])
    results["notes"] = [
        "served_over_raw compares images/s through HTTP with session.run on ready tensors at the batch size "
        "the server formed; > 1 means the raw run was slower (machine noise: both are measured in the same "
        "run but not at the same instant). best_served_over_raw counts only levels where micro-batching "
        "formed batches (mean batch > 1.5).",
        "fp32 sends the raw session's own input (preprocessed tensors), so its ratio is the cost of serving "
        "itself. png adds decoding + preprocessing on the server (about 0.1 ms of CPU per 32x32 PNG), which "
        "the raw session never does: for a model costing about 0.2 ms per image that work alone bounds the "
        "png ratio well below 0.8 on a small machine.",
        "One image per request is bounded by the per-request HTTP work (a few hundred microseconds of Python "
        "in server and client); micro-batching several rows per request (or many concurrent requests) is "
        "what lets serving keep up with the model.",
    ]
    _write(results, args.out or REPO / "benchmarks" / "results" / "serving.json")


def _write(results: dict, path: str | Path) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
