"""Where the server's event loop spends its time on the hot path (cProfile over the real request path).

The inference service (``build_app`` + uvicorn with the same HTTP protocol class as ``cvplatform
serve``) runs in this process, on the same exported model and serving config as
``benchmarks/serving.py --hot-path``. A separate load-generating process (the same aiohttp load
generator) sends one 32x32 PNG per request at concurrency 8, twice:

1. **unprofiled**: the event-loop thread's CPU time per request (``time.thread_time``);
2. **profiled**: cProfile on the event-loop thread only (the micro-batcher's onnxruntime thread and
   the request-log writer are other threads, so the model's own compute is not in the profile),
   timed by the thread's CPU clock by default (``--timer cpu``): with several threads sharing the
   GIL on two cores, a wall clock charges every wait for the GIL to whatever function was running.

It prints the share of the loop's profiled Python time per part of the request path (inclusive
time of the functions that do it: image header, decoding, preprocessing, multipart parsing,
metrics/statistics/ids/JSON answer, the rest is the framework: uvicorn, Starlette, FastAPI,
asyncio), then the functions with the most own time. The profiler slows Python code more than C
code, so read the shares, not the absolute microseconds. Time inside the loop itself (libuv's
polling and C-level I/O in uvloop's ``run_until_complete``) is reported apart, not as a share.

With ``--asgi`` the app is called in this process as uvicorn would call it (no sockets, no HTTP
parsing, no load-generating process): fewer parts move, so two versions of the request path
compare better on a busy machine; the framework share then leaves out uvicorn and httptools.

The profiler's own cost per Python call (a system call per event with ``--timer cpu``) inflates
call-heavy code such as Pillow's plugins; the unprofiled loop CPU per request is the number to
compare, the shares say where to look.

With ``--asgi``, ``--task detection`` serves the detector of ``benchmarks/detection.py`` (``project.task:
detection``) and ``--inputs fp32`` sends OIP v2 binary tensors (the raw session's own input) instead of PNGs: where
the served detector's time goes besides the model (``--model small_cnn:64 --images-per-request 16
--concurrency 4`` is ``detection.py --parts serving``'s first level).

Usage:  .venv/bin/python benchmarks/profile_serving.py [--duration 5] [--concurrency 8]
        [--images-per-request 1] [--asgi] [--timer cpu|wall] [--top 25] [--out profile.json]
        [--task classification|detection] [--inputs png|fp32]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

# part of the request path -> the functions (file suffix, name) whose inclusive time is that part
PARTS: dict[str, list[tuple[str, str]]] = {
    "image header (open, format, size, limits)": [("serving/inputs.py", "open_images")],
    "image decode (pixels, EXIF, RGB)": [("cvplatform/imageio.py", "decode")],
    "preprocess (resize + normalize)": [("cvplatform/preprocess.py", "preprocess"),
                                        ("cvplatform/preprocess.py", "normalize")],
    "multipart parsing": [("serving/inputs.py", "multipart_files")],
    "metrics, stats, request log, ids, JSON answer": [
        ("serving/core.py", "record"), ("serving/core.py", "_count_answer"), ("serving/core.py", "_top"),
        ("serving/core.py", "_log_requests"), ("serving/metrics.py", "record_answer"),
        ("serving/web.py", "json_response"), ("serving/web.py", "request_ids"),
        ("serving/web.py", "answer_headers"), ("routes/predict.py", "predict_response"),
        ("serving/core.py", "_route"), ("serving/core.py", "hold"),
    ],
    "detection: post-processing, objects, answer boxes, task metrics": [
        ("detection/task.py", "decode"), ("detection/task.py", "object_signals"),
        ("detection/task.py", "served_observations"), ("detection/task.py", "tensor_outputs_of"),
        ("detection/task.py", "to_image_pixels_many"), ("detection/task.py", "decode_top"),
        ("serving/metrics.py", "observe_task"),
    ],
    "micro-batcher submit (loop side)": [("serving/batching.py", "submit_timed"),
                                         ("serving/batching.py", "_deliver")],
}
LOOP_IDLE = ("run_until_complete", "run_forever", "poll", "select")


def _matches(key: tuple[str, int, str], specs: list[tuple[str, str]]) -> bool:
    file, _, name = key
    return any(file.endswith(suffix) and name == fn for suffix, fn in specs)


def breakdown(stats: pstats.Stats, requests: int) -> dict:
    """Shares of the profiled loop time per part of the request path, plus the loop's own idle/C time.

    Nested matches (``preprocess`` calling ``normalize``) count once: a function's inclusive time is
    added only when none of its callers belongs to the same part.
    """
    raw = stats.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in raw.values())
    idle = sum(v[2] for k, v in raw.items() if k[0] == "~" and any(w in k[2] for w in LOOP_IDLE))
    busy = total - idle
    parts: dict[str, dict] = {}
    counted = 0.0
    for part, specs in PARTS.items():
        inclusive = 0.0
        for key, (_cc, _nc, _tt, ct, callers) in raw.items():
            if _matches(key, specs) and not any(_matches(c, specs) for c in callers):
                inclusive += ct
        counted += inclusive
        parts[part] = {"share": round(inclusive / busy, 4) if busy else None,
                       "us_per_request_profiled": round(1e6 * inclusive / max(1, requests), 1)}
    parts["framework and the rest (uvicorn, Starlette, FastAPI, asyncio, route code)"] = {
        "share": round((busy - counted) / busy, 4) if busy else None,
        "us_per_request_profiled": round(1e6 * (busy - counted) / max(1, requests), 1)}
    calls = sum(v[1] for v in raw.values())
    return {"profiled_python_s": round(busy, 3), "loop_idle_and_c_io_s": round(idle, 3),
            "calls_per_request": round(calls / max(1, requests)), "parts": parts}


def top_functions(stats: pstats.Stats, n: int) -> list[dict]:
    raw = stats.stats  # type: ignore[attr-defined]
    rows = sorted(raw.items(), key=lambda kv: kv[1][2], reverse=True)
    out = []
    for (file, line, name), (_cc, nc, tt, ct, _callers) in rows:
        if file == "~" and any(w in name for w in LOOP_IDLE):
            continue
        where = name if file == "~" else f"{Path(file).parent.name}/{Path(file).name}:{line}({name})"
        out.append({"function": where, "calls": nc, "own_s": round(tt, 4), "inclusive_s": round(ct, 4)})
        if len(out) == n:
            break
    return out


def _serve(root: Path, model: Path) -> tuple[object, Callable[[], None]]:
    """The app and a uvicorn server for it, configured as ``cvplatform serve`` does (not started)."""
    import uvicorn

    from cvplatform.config import load_params
    from cvplatform.serving.app import build_app
    from cvplatform.serving.local import free_port
    from cvplatform.serving.protocol import protocol_class

    app = build_app(load_params(root / "params.yaml"), root=root, model=model, config_path=root / "serving.yaml")
    limits = app.state.cv.config.limits
    config = uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning", access_log=False,
                            ws="none", http=protocol_class(limits), timeout_keep_alive=limits.keep_alive_timeout_s)
    server = uvicorn.Server(config)
    return server, server.run


def _on_loop(loop: object, fn: Callable[[], object]) -> object:
    """Run ``fn`` on the event-loop thread and return its result."""
    done = threading.Event()
    box: list[object] = []

    def call() -> None:
        box.append(fn())
        done.set()

    loop.call_soon_threadsafe(call)  # type: ignore[attr-defined]
    done.wait(30)
    return box[0]


def drive(server: object, root: Path, size: int, args: argparse.Namespace, result: dict) -> None:
    """In a side thread: wait for the server, run the load twice (unprofiled, profiled), then stop it."""
    import httpx
    import serving as bench

    while not getattr(server, "started", False):
        time.sleep(0.05)
    url = f"http://127.0.0.1:{server.config.port}"  # type: ignore[attr-defined]
    name = httpx.get(f"{url}/", timeout=30).json()["model"]
    loop = result["loop"]
    image = root / "image.png"
    try:
        t0 = _on_loop(loop, time.thread_time)
        res = bench.run_load_gen(url, image, "png", args.concurrency, args.images_per_request, args.duration,
                                 name, size)
        cpu = _on_loop(loop, time.thread_time) - t0  # type: ignore[operator]
        result["unprofiled"] = {"requests": res["requests"], "errors": res["errors"],
                                "requests_per_s": round(res["requests"] / res["seconds"], 1),
                                "loop_cpu_us_per_request": round(1e6 * cpu / max(1, res["requests"] + 3), 1)}
        profiler: cProfile.Profile = result["profiler"]
        _on_loop(loop, profiler.enable)
        res = bench.run_load_gen(url, image, "png", args.concurrency, args.images_per_request, args.duration,
                                 name, size)
        _on_loop(loop, profiler.disable)
        result["profiled_requests"] = res["requests"] + res["errors"] + 3
    finally:
        server.should_exit = True  # type: ignore[attr-defined]


def _profile_http(root: Path, model: Path, size: int, args: argparse.Namespace, result: dict) -> None:
    """The real server (uvicorn + the app) on this thread; the load from a separate process (:func:`drive`)."""
    import asyncio

    server, run = _serve(root, model)
    original_startup = server.startup  # type: ignore[attr-defined]

    async def startup(*a: object, **kw: object) -> None:  # note the loop uvicorn runs on
        result["loop"] = asyncio.get_running_loop()
        await original_startup(*a, **kw)

    server.startup = startup  # type: ignore[attr-defined]
    side = threading.Thread(target=drive, args=(server, root, size, args, result), daemon=True)
    side.start()
    run()
    side.join(60)


def _profile_asgi(root: Path, model: Path, args: argparse.Namespace, result: dict) -> None:
    """``--asgi``: the app called in this process as uvicorn calls it (no sockets, no HTTP parsing, no load
    generator competing for the cores), ``--concurrency`` requests at a time, for ``--duration`` seconds twice."""
    import asyncio

    import serving as bench

    from cvplatform.config import load_params
    from cvplatform.serving.app import build_app

    overrides = [f"project.task={args.task}"] if args.task != "classification" else []
    app = build_app(load_params(root / "params.yaml", overrides), root=root, model=model,
                    config_path=root / "serving.yaml")
    png = (root / "image.png").read_bytes()
    path = "/v1/predict"
    if args.inputs == "fp32":  # OIP v2 binary tensor: the raw session's own input, no decoding
        import numpy as np

        size = int(args.model.partition(":")[2] or 32)
        x = np.random.default_rng(0).standard_normal((args.images_per_request, 3, size, size)).astype("<f4")
        body, extra = bench.oip_fp32_body(x.tobytes(), args.images_per_request, size)
        ctype = extra["Content-Type"]
        path = f"/v2/models/{app.state.cv.model_name}/infer"
        more = [(b"inference-header-content-length", extra["Inference-Header-Content-Length"].encode())]
    elif args.images_per_request == 1:
        body, ctype, more = png, "image/png", []
    else:
        (body, ctype), more = bench.multipart_body([png] * args.images_per_request), []
    headers = [(b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode()), *more]

    async def call() -> None:
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
                 "root_path": "", "headers": headers, "server": ("127.0.0.1", 8080), "client": ("127.0.0.1", 1),
                 "state": {}}
        messages = [{"type": "http.request", "body": body, "more_body": False}]
        status: list[int] = []

        async def receive() -> dict:
            return messages.pop() if messages else {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])

        await app(scope, receive, send)
        if status != [200]:
            raise RuntimeError(f"{path} answered {status}")

    async def window(seconds: float) -> int:
        n, end = 0, time.perf_counter() + seconds
        while time.perf_counter() < end:
            await asyncio.gather(*(call() for _ in range(args.concurrency)))
            n += args.concurrency
        return n

    async def run() -> None:
        async with app.router.lifespan_context(app):
            await window(1.0)  # warm-up
            t0, w0 = time.thread_time(), time.perf_counter()
            n = await window(args.duration)
            cpu, wall = time.thread_time() - t0, time.perf_counter() - w0
            result["unprofiled"] = {"requests": n, "requests_per_s": round(n / wall, 1),
                                    "loop_cpu_us_per_request": round(1e6 * cpu / n, 1)}
            result["profiler"].enable()
            result["profiled_requests"] = await window(args.duration)
            result["profiler"].disable()

    asyncio.run(run())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds of load per window (two windows)")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--images-per-request", type=int, default=1)
    ap.add_argument("--model", default="small_cnn:32", help="arch:size")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads of the served model")
    ap.add_argument("--timer", choices=["cpu", "wall"], default="cpu",
                    help="cpu: the loop thread's CPU time (waits for the GIL, held by the batcher or the request-log "
                         "writer, are not charged to whatever function was running); wall: cProfile's default clock")
    ap.add_argument("--asgi", action="store_true",
                    help="call the app in this process (no uvicorn, no sockets, no load-generating process): the "
                         "steadiest number for comparing two versions of the request path on a busy machine")
    ap.add_argument("--task", choices=["classification", "detection"], default="classification",
                    help="detection: a DetectionModule exported as benchmarks/detection.py does, served with "
                         "project.task: detection (--asgi only)")
    ap.add_argument("--inputs", choices=["png", "fp32"], default="png",
                    help="fp32: OIP v2 binary tensors of --images-per-request rows (--asgi only)")
    ap.add_argument("--top", type=int, default=25, help="functions listed by own time")
    ap.add_argument("--out", default=None, help="also write the numbers as JSON here")
    args = ap.parse_args()

    import serving as bench

    arch, _, size_text = args.model.partition(":")
    size = int(size_text or 32)
    profiler = cProfile.Profile(time.thread_time_ns, 1e-9) if args.timer == "cpu" else cProfile.Profile()
    result: dict = {"profiler": profiler}
    with tempfile.TemporaryDirectory(prefix="cvplatform-profile-serving-") as tmp:
        if (args.task != "classification" or args.inputs != "png") and not args.asgi:
            ap.error("--task detection and --inputs fp32 are profiled in-process: add --asgi")
        export = None
        if args.task == "detection":
            from detection import export_detector

            export = export_detector
        root, model, _cfg = bench.make_project(arch, size, Path(tmp), args.threads, [], export=export)
        if args.asgi:
            _profile_asgi(root, model, args, result)
        else:
            _profile_http(root, model, size, args, result)
    stats = pstats.Stats(result["profiler"])
    requests = int(result.get("profiled_requests", 0))
    report = {"model": args.model, "task": args.task, "inputs": args.inputs, "mode": "asgi" if args.asgi else "http", "timer": args.timer, "concurrency": args.concurrency, "images_per_request": args.images_per_request,
              "duration_s": args.duration, "unprofiled": result.get("unprofiled"), "profiled_requests": requests,
              **breakdown(stats, requests), "top_own_time": top_functions(stats, args.top)}
    print(f"unprofiled: {report['unprofiled']}")
    print(f"profiled: {requests} requests, {report['profiled_python_s']} s of Python on the loop thread "
          f"(+ {report['loop_idle_and_c_io_s']} s idle / C-level I/O inside the loop), "
          f"{report['calls_per_request']} function calls per request")
    for part, v in report["parts"].items():
        print(f"  {100 * (v['share'] or 0):5.1f} %  {v['us_per_request_profiled']:8.1f} us/request  {part}")
    print("functions by own time:")
    for row in report["top_own_time"]:
        print(f"  {row['own_s']:8.4f} s own  {row['inclusive_s']:8.4f} s incl  {row['calls']:>8}  {row['function']}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
