"""Traffic replay: send held-out manifest images (clean and corrupted) to a server, with their true answers.

Used by the demo, the canary tests and ``run_canary_local`` (as a separate process)::

    python -m cvplatform.serving.replay --url http://127.0.0.1:8080 \\
        --manifest data/processed/manifest.parquet --split test --corrupt 0.3 \\
        --concurrency 4 --duration 60 --report artifacts/deploy/replay.json

Every request is ``POST /v1/predict`` with one image (multipart), a fresh ``X-Request-ID``,
one of ``--sessions`` ``X-Session-ID`` values (sticky routing) and the image's true answer in the
header the project's task reads (``task.replay_truth``): ``X-True-Label`` for a classifier (the server
scores accuracy per variant), ``X-True-Boxes`` for a detector (the image's boxes from the annotation
table, crowd boxes left out, in the pixels of the image as sent: the server scores mAP50 per variant).
The task is ``--task``, else ``project.task`` of ``--root``'s ``params.yaml``. ``--corrupt F`` adds a corrupted copy (one of the
evaluation corruptions, :mod:`cvplatform.evaluation.corruptions`, at ``--severity``) of a
deterministic share F of the images. The run stops after ``--requests`` requests,
``--duration`` seconds, or SIGTERM/SIGINT, and writes a JSON report: requests by HTTP
status, by answering variant and version, failures (non-2xx or transport errors) with
examples, and latency percentiles.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cvplatform.errors import CVPlatformError, DataError
from cvplatform.serving.metrics import summarize
from cvplatform.serving.routing import unit_hash

log = logging.getLogger(__name__)

DEFAULT_CORRUPTIONS: tuple[str, ...] = ("gaussian_noise", "motion_blur", "low_light", "jpeg", "occlusion")


@dataclass(frozen=True)
class ReplayItem:
    """One image to send: encoded bytes, the true label, which corruption (None = clean) and the true answer to send
    (``truth`` in the header ``truth_header``; None = none)."""

    id: str
    data: bytes
    label: str
    corruption: str | None = None
    truth: str | None = None
    truth_header: str = "X-True-Label"


@dataclass
class ReplayReport:
    """What a replay run saw."""

    url: str
    sent: int = 0
    ok: int = 0
    failures: int = 0
    """Non-2xx responses plus transport errors."""
    transport_errors: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    by_variant: dict[str, int] = field(default_factory=dict)
    by_version: dict[str, int] = field(default_factory=dict)
    fallbacks: int = 0
    correct: int = 0
    labelled: int = 0
    failure_examples: list[dict[str, Any]] = field(default_factory=list)
    latency_ms: dict[str, Any] = field(default_factory=dict)
    duration_s: float = 0.0
    items: int = 0
    corrupted_items: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_items(
    manifest: str | os.PathLike[str],
    *,
    split: str = "test",
    root: str | os.PathLike[str] | None = None,
    corrupt: float = 0.0,
    corruptions: Sequence[str] = DEFAULT_CORRUPTIONS,
    severity: int = 3,
    seed: int = 0,
    limit: int | None = None,
    task: str | Any | None = None,
) -> list[ReplayItem]:
    """The images of ``split`` (file bytes + label + the true answer the task sends), plus corrupted copies of a share
    ``corrupt`` of them (with the same true answer: a corruption keeps the image's size and objects).

    ``task``: a task name or :class:`~cvplatform.tasks.Task` (None: ``project.task`` of ``root``'s ``params.yaml``,
    else classification); its ``replay_truth`` gives each image's truth header value.

    Raises:
        DataError: the manifest is missing/unreadable or the split is empty.

    Example:
        >>> items = load_items("data/processed/manifest.parquet", split="test", corrupt=0.3)  # doctest: +SKIP
        >>> items[0].label  # doctest: +SKIP
        '0'
    """

    from cvplatform.data.manifest import read_manifest

    base = Path(root or os.getcwd())
    mpath = Path(manifest)
    if not mpath.is_absolute():
        mpath = base / mpath
    df = read_manifest(mpath)
    rows = df[df["split"] == split].sort_values("sha256")
    if rows.empty:
        raise DataError(f"{mpath}: split {split!r} has no images to replay; choose another --split "
                        f"(has {sorted(df['split'].unique())}).")
    if limit is not None:
        rows = rows.head(int(limit))
    the_task = _task(task, base)
    from cvplatform.serving.schemas import TrafficConfig

    header = str(getattr(TrafficConfig(), the_task.truth_header_key))
    items: list[ReplayItem] = []
    to_corrupt: list[tuple[str, str, bytes, str | None]] = []
    for row in rows.to_dict("records"):
        sha, label = str(row["sha256"]), str(row.get("label"))
        p = Path(str(row["path"]))
        p = p if p.is_absolute() else base / p
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise DataError(f"{p}: listed in {mpath} but unreadable ({exc}); run `dvc pull` or re-ingest.") from None
        truth = the_task.replay_truth(row, base)
        items.append(ReplayItem(sha, data, label, None, truth, header))
        if corrupt > 0 and unit_hash(sha, f"corrupt:{seed}") < corrupt:
            to_corrupt.append((sha, label, data, truth))
    if to_corrupt:
        from cvplatform.data.ingest import encode_png
        from cvplatform.evaluation.corruptions import apply_corruption
        from cvplatform.imageio import ImageDecodeError, decode_bytes

        for sha, label, data, truth in to_corrupt:
            name = corruptions[int(unit_hash(sha, f"which:{seed}") * len(corruptions))]
            try:
                rgb = decode_bytes(data, where=sha)  # the decoder training, evaluation and the server use
            except ImageDecodeError:
                continue
            out = apply_corruption(rgb[None], [sha], name, severity, seed)[0]
            items.append(ReplayItem(f"{sha}:{name}", encode_png(out), label, name, truth, header))
    return items


def _task(task: str | Any | None, root: Path) -> Any:
    """The :class:`~cvplatform.tasks.Task` whose true answers the replay sends (see :func:`load_items`)."""
    from cvplatform.tasks import get_task

    if task is not None and not isinstance(task, str):
        return task
    if task is None:
        params = root / "params.yaml"
        if params.is_file():
            from cvplatform.config import read_yaml

            task = ((read_yaml(params) or {}).get("project") or {}).get("task")
    return get_task(str(task) if task else None)


class _Recorder:
    def __init__(self, url: str) -> None:
        self.lock = threading.Lock()
        self.report = ReplayReport(url=url)
        self.status: Counter = Counter()
        self.variant: Counter = Counter()
        self.version: Counter = Counter()
        self.latencies: list[float] = []

    def add(self, status: int | None, ms: float, body: Any, error: str | None, label: str) -> None:
        with self.lock:
            r = self.report
            r.sent += 1
            self.latencies.append(ms)
            if status is None:
                r.transport_errors += 1
                r.failures += 1
                self.status["transport_error"] += 1
                if len(r.failure_examples) < 20:
                    r.failure_examples.append({"status": None, "error": error})
                return
            self.status[str(status)] += 1
            if 200 <= status < 300 and isinstance(body, dict):
                r.ok += 1
                self.variant[str(body.get("variant"))] += 1
                self.version[str(body.get("version"))] += 1
                if body.get("fallback"):
                    r.fallbacks += 1
                preds = body.get("predictions") or []
                if preds and "class" in preds[0]:  # one class per image (a detector's answers are boxes)
                    r.labelled += 1
                    r.correct += int(preds[0].get("class") == label)
            else:
                r.failures += 1
                if len(r.failure_examples) < 20:
                    r.failure_examples.append({"status": status, "body": body if isinstance(body, dict)
                                               else str(body)[:300]})

    def finish(self, duration: float, items: list[ReplayItem]) -> ReplayReport:
        with self.lock:
            r = self.report
            r.by_status = dict(self.status)
            r.by_variant = dict(self.variant)
            r.by_version = dict(self.version)
            r.latency_ms = summarize(self.latencies)
            r.duration_s = duration
            r.items = len(items)
            r.corrupted_items = sum(1 for it in items if it.corruption)
            return r


def _post_image(client: Any, item: ReplayItem, headers: dict[str, str]) -> tuple[int | None, Any, str | None]:
    """POST one image to ``/v1/predict``: ``(status, JSON body or text, transport error)``."""
    import httpx

    try:
        resp = client.post("/v1/predict", files=[("files", ("image.png", item.data, "image/png"))], headers=headers)
    except httpx.HTTPError as exc:
        return None, None, f"{type(exc).__name__}: {exc}"
    try:
        return resp.status_code, resp.json(), None
    except ValueError:
        return resp.status_code, resp.text[:300], None


def replay(
    url: str,
    items: Sequence[ReplayItem],
    *,
    concurrency: int = 4,
    requests: int | None = None,
    duration_s: float | None = None,
    rate: float | None = None,
    sessions: int = 50,
    seed: int = 0,
    send_labels: bool = True,
    timeout_s: float = 30.0,
    stop: threading.Event | None = None,
) -> ReplayReport:
    """Send ``items`` round-robin to ``url``/v1/predict from ``concurrency`` threads.

    Args:
        url: server base URL, e.g. ``http://127.0.0.1:8080``.
        items: what to send (:func:`load_items`).
        concurrency: parallel clients.
        requests: stop after this many requests (None = no limit).
        duration_s: stop after this many seconds (None = no limit).
        rate: total requests per second (None = as fast as the server answers).
        sessions: distinct ``X-Session-ID`` values (0 = send none: routing by request id).
        seed: order and session assignment.
        send_labels: send each item's true answer (``X-True-Label`` / ``X-True-Boxes``, see :func:`load_items`).
        timeout_s: per-request timeout.
        stop: set it to stop early (also set on SIGTERM by the CLI).

    Returns:
        The :class:`ReplayReport`.

    Example:
        >>> rep = replay("http://127.0.0.1:8080", load_items("manifest.parquet"), requests=100)  # doctest: +SKIP
        >>> rep.failures  # doctest: +SKIP
        0
    """
    import random

    import httpx

    if not items:
        raise DataError("replay: nothing to send (no items).")
    if requests is None and duration_s is None and stop is None:
        raise DataError("replay: give --requests, --duration or a stop event, or it would never end.")
    stop = stop or threading.Event()
    rec = _Recorder(url)
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    counter = iter(range(requests if requests is not None else 1 << 62))
    counter_lock = threading.Lock()
    t0 = time.perf_counter()
    per_worker_interval = (concurrency / rate) if rate else 0.0

    def next_index() -> int | None:
        with counter_lock:
            n = next(counter, None)
        return n

    def worker(wid: int) -> None:
        rng = random.Random(seed * 1000 + wid)
        with httpx.Client(base_url=url.rstrip("/"), timeout=timeout_s) as client:
            next_t = time.perf_counter()
            while not stop.is_set():
                if duration_s is not None and time.perf_counter() - t0 >= duration_s:
                    break
                n = next_index()
                if n is None:
                    break
                item = items[order[n % len(order)]]
                headers = {"X-Request-ID": uuid.UUID(int=rng.getrandbits(128)).hex}
                if sessions > 0:
                    headers["X-Session-ID"] = f"session-{rng.randrange(sessions)}"
                if send_labels and item.truth is not None:
                    headers[item.truth_header] = item.truth
                t = time.perf_counter()
                status, body, error = _post_image(client, item, headers)
                rec.add(status, (time.perf_counter() - t) * 1000.0, body, error, item.label)
                if per_worker_interval:
                    next_t += per_worker_interval
                    delay = next_t - time.perf_counter()
                    if delay > 0:
                        stop.wait(delay)
                    else:
                        next_t = time.perf_counter()

    threads = [threading.Thread(target=worker, args=(i,), name=f"replay-{i}", daemon=True)
               for i in range(max(1, concurrency))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return rec.finish(time.perf_counter() - t0, list(items))


def predict_once(url: str, data: bytes, *, timeout_s: float = 30.0, headers: dict[str, str] | None = None
                 ) -> dict[str, Any]:
    """Send one encoded image to ``url``/v1/predict; return the JSON answer (``version``, ``variant``, ...).

    Raises:
        ServingError: the server answered with an error status or not with JSON.
        OSError / httpx.HTTPError: the server cannot be reached.

    Example:
        >>> predict_once("http://127.0.0.1:8080", open("a.png", "rb").read())["version"]  # doctest: +SKIP
        '3'
    """
    import httpx

    from cvplatform.serving.models import ServingError

    resp = httpx.post(url.rstrip("/") + "/v1/predict", files=[("files", ("image.png", data, "image/png"))],
                      headers=headers or {}, timeout=timeout_s)
    try:
        body = resp.json()
    except ValueError:
        body = None
    if resp.status_code != 200 or not isinstance(body, dict):
        raise ServingError(resp.status_code, "predict_failed",
                           f"{url}/v1/predict answered {resp.status_code}: {resp.text[:300]}")
    return body


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point (``python -m cvplatform.serving.replay``); exit code 0 when no request failed.

    Example:
        >>> main(["--url", "http://127.0.0.1:8080", "--requests", "100"])  # doctest: +SKIP
        0
    """
    ap = argparse.ArgumentParser(prog="python -m cvplatform.serving.replay", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8080")
    ap.add_argument("--manifest", default="data/processed/manifest.parquet")
    ap.add_argument("--root", default=".", help="project root (manifest paths are relative to it)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--corrupt", type=float, default=0.0, help="share of images also sent corrupted (0..1)")
    ap.add_argument("--severity", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--requests", type=int, default=None)
    ap.add_argument("--duration", type=float, default=None, help="seconds (default: until SIGTERM)")
    ap.add_argument("--rate", type=float, default=None, help="total requests per second")
    ap.add_argument("--sessions", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=None, help="use at most N manifest images")
    ap.add_argument("--no-labels", action="store_true", help="do not send the true answers (X-True-Label / X-True-Boxes)")
    ap.add_argument("--task", default=None, help="project.task whose true answers to send (default: --root's params.yaml)")
    ap.add_argument("--report", default=None, help="write the JSON report here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:  # noqa: ARG001
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        items = load_items(args.manifest, split=args.split, root=args.root, corrupt=args.corrupt,
                           severity=args.severity, seed=args.seed, limit=args.limit, task=args.task)
    except CVPlatformError as exc:
        log.error("%s", exc)
        return 2
    log.info("replaying %d images (%d corrupted) to %s", len(items), sum(1 for i in items if i.corruption), args.url)
    report = replay(args.url, items, concurrency=args.concurrency, requests=args.requests,
                    duration_s=args.duration, rate=args.rate, sessions=args.sessions, seed=args.seed,
                    send_labels=not args.no_labels, stop=stop)
    text = json.dumps(report.to_dict(), indent=2, sort_keys=True)
    if args.report:
        from cvplatform.utils.io import write_json

        write_json(args.report, report.to_dict())
    log.info("replay: %d sent, %d ok, %d failed, by variant %s", report.sent, report.ok, report.failures,
             report.by_variant)
    if not args.report:
        sys.stdout.write(text + "\n")
    return 0 if report.failures == 0 else 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())


__all__ = ["DEFAULT_CORRUPTIONS", "ReplayItem", "ReplayReport", "load_items", "main", "predict_once", "replay"]
