"""The ``export`` stage: ONNX export with a parity gate, INT8 quantization, benchmark, model card.

* :mod:`~cvplatform.export.onnx_export` — checkpoint -> ONNX with the preprocessing contract in ``metadata_props``
* :mod:`~cvplatform.export.parity` — onnxruntime vs PyTorch logits: the parity gate
* :mod:`~cvplatform.export.quantize` — static INT8 (QDQ) quantization and the rule deciding whether it ships
* :mod:`~cvplatform.export.suite` — fp32 vs INT8 on the evaluation scenario suite (same code as ``evaluate``)
* :mod:`~cvplatform.export.benchmark` — latency / throughput / cost: PyTorch eager vs ORT fp32 vs ORT INT8
* :mod:`~cvplatform.export.model_card` — the Markdown model card
* :mod:`~cvplatform.export.run` — :func:`run_export` (``cvplatform export``)

Names are imported lazily, so ``import cvplatform.export`` stays light.
"""

from __future__ import annotations

from cvplatform.utils.lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "run_export": "cvplatform.export.run",
    "ExportResult": "cvplatform.export.run",
    "check_checkpoint_matches": "cvplatform.export.run",
    "export_onnx": "cvplatform.export.onnx_export",
    "read_metadata": "cvplatform.export.onnx_export",
    "version_metadata": "cvplatform.export.onnx_export",
    "ParityReport": "cvplatform.export.parity",
    "compare_logits": "cvplatform.export.parity",
    "compare_outputs": "cvplatform.export.parity",
    "run_parity": "cvplatform.export.parity",
    "Int8Decision": "cvplatform.export.quantize",
    "decide_int8": "cvplatform.export.quantize",
    "quantize_int8": "cvplatform.export.quantize",
    "ScenarioComparison": "cvplatform.export.suite",
    "compare_on_suite": "cvplatform.export.suite",
    "BenchmarkReport": "cvplatform.export.benchmark",
    "benchmark_runtimes": "cvplatform.export.benchmark",
    "cost_per_1k": "cvplatform.export.benchmark",
    "ModelCardInputs": "cvplatform.export.model_card",
    "render_model_card": "cvplatform.export.model_card",
    "SECTIONS": "cvplatform.export.model_card",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
