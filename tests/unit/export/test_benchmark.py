"""Benchmark helpers: cost formula, percentiles, provider selection, and a real (tiny) measurement."""

from __future__ import annotations

import logging

import pytest

from cvplatform.export.benchmark import (
    COST_FORMULA,
    benchmark_runtimes,
    cost_per_1k,
    latency_stats,
    select_providers,
)
from tests.unit.export.helpers import untrained_model


def test_cost_formula():
    # 10 ms on 2 cores at $0.05 per core-hour: 0.01 * 2 / 3600 * 0.05 * 1000 USD per 1,000 inferences
    assert cost_per_1k(0.01, 2, 0.05) == pytest.approx(0.01 * 2 / 3600 * 0.05 * 1000)
    assert cost_per_1k(0.01, 4, 0.05) == pytest.approx(2 * cost_per_1k(0.01, 2, 0.05))
    assert cost_per_1k(0.01, 1, 0.0) == 0.0
    assert "latency_s * threads / 3600" in COST_FORMULA


def test_latency_stats_percentiles():
    s = latency_stats([i * 1_000_000 for i in range(1, 101)])  # 1..100 ms
    assert s["n"] == 100 and s["min"] == 1.0 and s["mean"] == pytest.approx(50.5)
    assert s["p50"] == pytest.approx(50.5) and s["p95"] == pytest.approx(95.05) and s["p99"] == pytest.approx(99.01)
    with pytest.raises(ValueError):
        latency_stats([])


def test_unavailable_providers_are_skipped_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        chosen = select_providers(["NoSuchExecutionProvider", "CPUExecutionProvider"])
    assert chosen == ["CPUExecutionProvider"]
    assert "NoSuchExecutionProvider" in caplog.text
    assert select_providers(["NoSuchExecutionProvider"]) == ["CPUExecutionProvider"]  # CPU fallback


def test_benchmark_measures_every_runtime_in_one_run(tmp_path):
    import torch

    from cvplatform.export.onnx_export import export_onnx

    loaded, contract = untrained_model(tmp_path)
    fp32 = export_onnx(loaded, tmp_path / "m.onnx", contract)
    before = torch.get_num_threads()
    report = benchmark_runtimes(loaded.model, {"ort_fp32": fp32}, (16, 16), threads=1, batch_size=3,
                                iterations=6, warmup=1, price_per_core_hour=0.1)
    assert torch.get_num_threads() == before  # restored
    d = report.to_dict()
    assert set(d["runtimes"]) == {"torch_eager", "ort_fp32"}
    for r in d["runtimes"].values():
        assert r["latency_ms"]["n"] == 6 and r["batch_latency_ms"]["n"] == 6
        assert r["throughput_ips"] > 0 and r["cost_per_1k_usd"] > 0
    assert d["runtimes"]["ort_fp32"]["provider"] == "CPUExecutionProvider"
    assert d["runtimes"]["torch_eager"]["provider"] == "torch-cpu"
    assert set(d["speedups"]) == {"ort_fp32_vs_torch_batch1", "ort_fp32_vs_torch_batched"}
    assert d["input_shape"] == [1, 3, 16, 16] and d["environment"]["onnxruntime"]
