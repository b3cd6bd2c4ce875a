"""Latency, throughput and cost of PyTorch eager vs onnxruntime fp32 vs onnxruntime INT8.

All runtimes are measured **in the same run**, on the same seeded input, with the
same number of intra-op threads (``torch.set_num_threads`` and onnxruntime's
``intra_op_num_threads``), after ``warmup`` untimed calls each. Timed calls are
interleaved in rounds (the order rotating every round), so drift on a shared
machine hits every runtime alike.

* **Latency** at batch 1: p50 / p95 / p99 / mean of ``iterations`` single calls (ms).
* **Throughput**: images per second from the *median* call time, at batch 1
  (``1000 / p50``) and at ``batch_size`` (``batch_size / p50 of the batched
  calls``); the median keeps other processes' interruptions on a shared machine
  out of the comparison. Mean-based values (total images / total time) are
  recorded too (``*_mean_ips``).
* **Cost per 1,000 inferences** (USD), from the price of a CPU core-hour::

      cost_per_1k = latency_s * threads / 3600 * price_per_core_hour * 1000

  with ``latency_s`` the p50 latency at batch 1 (``cost_per_1k_usd``); the same
  formula with ``1 / throughput`` as the per-image time gives
  ``cost_per_1k_batched_usd`` (what a batching server pays).

onnxruntime uses the first available of ``providers`` (``export.providers``;
CUDA, TensorRT or OpenVINO when installed, filtered by
``onnxruntime.get_available_providers()``, CPU otherwise); the provider that ran
is recorded and logged. PyTorch eager runs on CPU.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cvplatform.errors import ModelError

if TYPE_CHECKING:  # pragma: no cover
    import onnxruntime as ort
    from torch import nn

log = logging.getLogger(__name__)

TORCH = "torch_eager"
ORT_FP32 = "ort_fp32"
ORT_INT8 = "ort_int8"
COST_FORMULA = "cost_per_1k = latency_s * threads / 3600 * price_per_core_hour * 1000 (latency_s = p50 at batch 1)"
_ROUNDS = 5


def cost_per_1k(latency_s: float, threads: int, price_per_core_hour: float) -> float:
    """USD per 1,000 inferences when one inference holds ``threads`` cores for ``latency_s`` seconds.

    Example:
        >>> round(cost_per_1k(0.002, 1, 0.045), 8)  # 2 ms on one core at $0.045/core-hour
        2.5e-05
    """
    return float(latency_s) * int(threads) / 3600.0 * float(price_per_core_hour) * 1000.0


def latency_stats(samples_ns: Sequence[int]) -> dict[str, float]:
    """p50 / p95 / p99 / mean / min (milliseconds) of per-call times in nanoseconds.

    Example:
        >>> latency_stats([1_000_000, 2_000_000, 3_000_000])["p50"]
        2.0
    """
    import numpy as np

    ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
    if ms.size == 0:
        raise ValueError("latency_stats: no samples")
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99), "mean": float(ms.mean()),
            "min": float(ms.min()), "n": int(ms.size)}


def select_providers(requested: Sequence[str]) -> list[str]:
    """The requested onnxruntime providers that are installed, in order (CPU appended as a fallback).

    :func:`cvplatform.runtime.select_providers`, warning about the skipped ones.

    Example:
        >>> select_providers(["TensorrtExecutionProvider", "CPUExecutionProvider"])  # doctest: +SKIP
        ['CPUExecutionProvider']
    """
    from cvplatform.runtime import select_providers as runtime_select_providers

    return runtime_select_providers(requested, warn="export")


def ort_session(model: str | os.PathLike[str] | bytes, providers: Sequence[str], threads: int) -> ort.InferenceSession:
    """An InferenceSession with ``threads`` intra-op threads, sequential execution, all graph optimisations.

    Opened by :func:`cvplatform.runtime.open_session` with :func:`cvplatform.runtime.session_options`.

    Example:
        >>> s = ort_session("artifacts/export/model.onnx", ["CPUExecutionProvider"], 1)  # doctest: +SKIP
    """
    from cvplatform.runtime import open_session, session_options

    opts = session_options(intra_op_threads=int(threads), inter_op_threads=1, sequential=True, optimize_all=True)
    name = "<bytes>" if isinstance(model, bytes | bytearray) else str(model)
    try:
        return open_session(model, name=name, providers=providers, options=opts)
    except ModelError as exc:
        raise ModelError(f"{exc} (for benchmarking)") from None


@dataclass(frozen=True)
class RuntimeStats:
    """Measurements of one runtime."""

    name: str
    latency_ms: dict[str, float]
    """Batch 1: p50, p95, p99, mean, min (ms) and n (calls)."""
    batch_latency_ms: dict[str, float]
    """Batch ``batch_size``: same statistics per batched call."""
    throughput_batch1_ips: float
    """Images/s at batch 1 from the median call (``1000 / p50``)."""
    throughput_ips: float
    """Images/s at ``batch_size`` from the median batched call (``batch_size * 1000 / p50``)."""
    throughput_batch1_mean_ips: float
    """Images/s at batch 1 over all timed calls (calls / total time)."""
    throughput_mean_ips: float
    """Images/s at ``batch_size`` over all timed calls (images / total time)."""
    cost_per_1k_usd: float
    """Cost of 1,000 batch-1 inferences (see the module docstring)."""
    cost_per_1k_batched_usd: float
    """Cost of 1,000 inferences served in batches of ``batch_size``."""
    provider: str
    """``torch-cpu`` or the onnxruntime provider that ran."""


@dataclass
class BenchmarkReport:
    """One benchmark run (JSON-friendly via :meth:`to_dict`)."""

    threads: int
    batch_size: int
    iterations: int
    warmup: int
    price_per_core_hour: float
    input_shape: list[int]
    providers_requested: list[str]
    providers_available: list[str]
    runtimes: dict[str, RuntimeStats] = field(default_factory=dict)
    speedups: dict[str, float] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    cost_formula: str = COST_FORMULA

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["runtimes"] = {k: asdict(v) for k, v in self.runtimes.items()}
        return d


def _environment() -> dict[str, Any]:
    from importlib import metadata

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    env: dict[str, Any] = {"cpu": cpu, "cpu_count": os.cpu_count(), "platform": platform.platform(),
                           "python": platform.python_version()}
    for dist in ("torch", "onnxruntime", "onnx"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            env[dist] = metadata.version(dist)
    return env


def _measure(runners: Mapping[str, Callable[[], Any]], iterations: int, warmup: int,
             label: str = "benchmark") -> dict[str, list[int]]:
    """Warm every runner up, then time ``iterations`` calls each, interleaved in rotating rounds.

    Progress is reported between timing blocks (never inside one).
    """
    from cvplatform.utils.logs import Progress

    names = list(runners)
    for name in names:
        for _ in range(warmup):
            runners[name]()
    rounds = max(1, min(_ROUNDS, iterations))
    per_round = [iterations // rounds + (1 if r < iterations % rounds else 0) for r in range(rounds)]
    samples: dict[str, list[int]] = {n: [] for n in names}
    gc_was_enabled = gc.isenabled()
    gc.disable()
    progress = Progress(label, rounds * len(names), unit="timing blocks", logger=log)
    try:
        with progress:
            for r, count in enumerate(per_round):
                order = names[r % len(names):] + names[: r % len(names)]
                for name in order:
                    fn = runners[name]
                    out = samples[name]
                    for _ in range(count):
                        t0 = time.perf_counter_ns()
                        fn()
                        out.append(time.perf_counter_ns() - t0)
                    progress.update(note=name)
    finally:
        if gc_was_enabled:
            gc.enable()
    return samples


def benchmark_runtimes(
    torch_model: nn.Module | None,
    onnx_models: Mapping[str, str | os.PathLike[str] | bytes],
    input_size: tuple[int, int],
    *,
    threads: int = 1,
    batch_size: int = 32,
    iterations: int = 200,
    warmup: int = 20,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    price_per_core_hour: float = 0.045,
    seed: int = 0,
) -> BenchmarkReport:
    """Measure batch-1 latency and batched throughput of PyTorch eager and ONNX models in one run.

    Args:
        torch_model: The PyTorch network (eval mode, CPU) or None to skip it.
        onnx_models: Runtime name -> ONNX file/bytes, e.g. ``{"ort_fp32": ..., "ort_int8": ...}``.
        input_size: ``(H, W)``; inputs are seeded standard-normal ``(N, 3, H, W)`` float32.
        threads: Intra-op threads for torch and onnxruntime (and the cores of the cost formula).
        batch_size: Batch size of the throughput measurement.
        iterations: Timed calls per runtime and batch size.
        warmup: Untimed calls per runtime and batch size first.
        providers: onnxruntime providers in preference order (unavailable ones skipped).
        price_per_core_hour: USD per core-hour.

    Returns:
        A :class:`BenchmarkReport` with per-runtime stats and ``speedups``
        (``ort_fp32_vs_torch_batch1``, ``ort_fp32_vs_torch_batched``,
        ``int8_vs_fp32_batch1``, ``int8_vs_fp32_batched``: throughput ratios).

    Example:
        >>> report = benchmark_runtimes(model, {"ort_fp32": "model_fp32.onnx"}, (32, 32),
        ...                             iterations=50, warmup=5)  # doctest: +SKIP
        >>> report.speedups["ort_fp32_vs_torch_batch1"]  # doctest: +SKIP
        2.4
    """
    import numpy as np
    import onnxruntime as ort

    h, w = input_size
    rng = np.random.default_rng(seed)
    x1 = rng.standard_normal((1, 3, h, w)).astype(np.float32)
    xb = rng.standard_normal((batch_size, 3, h, w)).astype(np.float32)
    chosen = select_providers(providers)
    report = BenchmarkReport(
        threads=int(threads), batch_size=int(batch_size), iterations=int(iterations), warmup=int(warmup),
        price_per_core_hour=float(price_per_core_hour), input_shape=[1, 3, int(h), int(w)],
        providers_requested=list(providers), providers_available=list(ort.get_available_providers()),
        environment=_environment(),
    )
    runners1: dict[str, Callable[[], Any]] = {}
    runnersb: dict[str, Callable[[], Any]] = {}
    used: dict[str, str] = {}
    prev_threads: int | None = None
    if torch_model is not None:
        import torch

        prev_threads = torch.get_num_threads()
        torch.set_num_threads(int(threads))
        t1, tb = torch.from_numpy(x1), torch.from_numpy(xb)
        model = torch_model.eval()

        def _torch(x: Any) -> Callable[[], Any]:
            def run() -> Any:
                with torch.inference_mode():
                    return model(x)
            return run

        runners1[TORCH], runnersb[TORCH] = _torch(t1), _torch(tb)
        used[TORCH] = "torch-cpu"
    try:
        for name, src in onnx_models.items():
            sess = ort_session(src, chosen, threads)
            in_name = sess.get_inputs()[0].name
            out_name = sess.get_outputs()[0].name
            used[name] = sess.get_providers()[0]

            def _ort(x: Any, s: Any = sess, i: str = in_name, o: str = out_name) -> Callable[[], Any]:
                return lambda: s.run([o], {i: x})

            runners1[name], runnersb[name] = _ort(x1), _ort(xb)
        log.info("export: benchmarking %s with %d thread(s); onnxruntime provider(s) used: %s",
                 ", ".join(runners1), threads, sorted({v for k, v in used.items() if k != TORCH}) or "none")
        s1 = _measure(runners1, iterations, warmup, "export benchmark, batch 1")
        sb = _measure(runnersb, iterations, warmup, f"export benchmark, batch {batch_size}")
    finally:
        if prev_threads is not None:
            import torch

            torch.set_num_threads(prev_threads)
    for name in runners1:
        report.runtimes[name] = _runtime_stats(name, s1[name], sb[name], batch_size, threads, price_per_core_hour,
                                               used[name])
    report.speedups.update(_speedups(report.runtimes))
    return report


def _runtime_stats(name: str, s1: list[int], sb: list[int], batch_size: int, threads: int,
                   price_per_core_hour: float, provider: str) -> RuntimeStats:
    """Latency percentiles, throughput and cost of one runtime from its batch-1 and batched timings (ns)."""
    lat = latency_stats(s1)
    blat = latency_stats(sb)
    total1_s = sum(s1) / 1e9
    totalb_s = sum(sb) / 1e9
    tput = batch_size * 1000.0 / blat["p50"] if blat["p50"] > 0 else float("inf")
    return RuntimeStats(
        name=name, latency_ms=lat, batch_latency_ms=blat,
        throughput_batch1_ips=1000.0 / lat["p50"] if lat["p50"] > 0 else float("inf"),
        throughput_ips=tput,
        throughput_batch1_mean_ips=len(s1) / total1_s if total1_s > 0 else float("inf"),
        throughput_mean_ips=batch_size * len(sb) / totalb_s if totalb_s > 0 else float("inf"),
        cost_per_1k_usd=cost_per_1k(lat["p50"] / 1000.0, threads, price_per_core_hour),
        cost_per_1k_batched_usd=cost_per_1k(1.0 / tput, threads, price_per_core_hour),
        provider=provider,
    )


def _speedups(rt: Mapping[str, RuntimeStats]) -> dict[str, float]:
    """Throughput ratios: ONNX fp32 vs PyTorch and INT8 vs fp32, at batch 1 and batched."""
    out: dict[str, float] = {}
    for a, b in ((ORT_FP32, TORCH), (ORT_INT8, ORT_FP32)):
        for attr, key in (("throughput_batch1_ips", "batch1"), ("throughput_ips", "batched")):
            if a in rt and b in rt and getattr(rt[b], attr) > 0:
                label = {(ORT_FP32, TORCH): "ort_fp32_vs_torch", (ORT_INT8, ORT_FP32): "int8_vs_fp32"}[(a, b)]
                out[f"{label}_{key}"] = getattr(rt[a], attr) / getattr(rt[b], attr)
    return out


__all__ = [
    "COST_FORMULA",
    "ORT_FP32",
    "ORT_INT8",
    "TORCH",
    "BenchmarkReport",
    "RuntimeStats",
    "benchmark_runtimes",
    "cost_per_1k",
    "latency_stats",
    "ort_session",
    "select_providers",
]
