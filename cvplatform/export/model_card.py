"""The model card (Markdown) written next to the exported model.

Sections, in order (:data:`SECTIONS`): model details, intended use, data
(version, counts per class and split, per source), evaluation (per-scenario
metrics with confidence intervals and gate status, read from the ``evaluate``
stage's ``artifacts/evaluate/summary.json`` and ``gate_report.json``), known
limitations (failed or warned scenarios and checks, INT8 rejection, scope),
export and quantization (parity, INT8 decision), latency and cost (benchmark),
lineage (git commit, data hash, params hash, MLflow run, checkpoint).

:func:`render_model_card` is pure (inputs -> Markdown); :func:`read_evaluation`
reads the evaluation outputs and says why when they are absent.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from cvplatform.tasks.base import Task

#: Section headings of the card, in order (each rendered as ``## <heading>``).
SECTIONS: tuple[str, ...] = (
    "Model details",
    "Intended use",
    "Data",
    "Evaluation",
    "Known limitations",
    "Export and quantization",
    "Latency and cost",
    "Lineage",
)


@dataclass
class Evaluation:
    """What the ``evaluate`` stage wrote (or why nothing is available)."""

    summary: dict[str, Any] | None = None
    """``artifacts/evaluate/summary.json`` (EvaluateResult)."""
    gate_report: dict[str, Any] | None = None
    """``artifacts/evaluate/gate_report.json``."""
    note: str = ""
    """Why the evaluation is missing or may not describe this model."""


def read_evaluation(evaluate_dir: str | os.PathLike[str], checkpoint: str | os.PathLike[str] | None = None) -> Evaluation:
    """Read ``summary.json`` and ``gate_report.json`` of the evaluate stage.

    Args:
        evaluate_dir: ``artifacts/evaluate``.
        checkpoint: The exported checkpoint; when the evaluation was of another
            model, :attr:`Evaluation.note` says so.

    Example:
        >>> ev = read_evaluation("artifacts/evaluate", "artifacts/train/best.ckpt")  # doctest: +SKIP
        >>> ev.summary["passed"]  # doctest: +SKIP
        True
    """
    from cvplatform.artifacts import ArtifactError, EvaluateSummary, GateReportFile

    d = Path(evaluate_dir)
    out = Evaluation()
    for name, attr, model in (("summary.json", "summary", EvaluateSummary),
                              ("gate_report.json", "gate_report", GateReportFile)):
        try:
            found = model.read_if_present(d / name)
        except ArtifactError as exc:
            out.note = str(exc)
            continue
        if found is not None:
            setattr(out, attr, found.to_dict())
    if out.summary is None and not out.note:
        out.note = f"no evaluation found ({d / 'summary.json'} is missing): run `cvplatform evaluate` before export"
    elif out.summary is not None and checkpoint is not None:
        from cvplatform.export.run import same_model_file

        model = str(out.summary.get("model", ""))
        if not (model and same_model_file(model, checkpoint)):
            out.note = (f"the evaluation describes model {model!r}, not the exported checkpoint {str(checkpoint)!r}; "
                        "re-run `cvplatform evaluate` on it")
    return out


@dataclass
class ModelCardInputs:
    """Everything the card shows (plain data; see :func:`render_model_card`)."""

    export: Mapping[str, Any]
    """The export summary (``ExportResult.to_dict()``)."""
    intended_use: str
    manifest: pd.DataFrame | None = None
    manifest_path: str = ""
    evaluation: Evaluation = field(default_factory=Evaluation)
    lineage: Mapping[str, Any] = field(default_factory=dict)
    """git_commit, data_hash, data_hash_source, params_hash, train_params_hash, train_run_id,
    tracking_uri, checkpoint, checkpoint_sha256, airflow_run_id."""
    task: Task | None = None
    """The project's task (``get_task(params.project.task)``; default classification): its
    ``summary_lines`` describe what the model predicts and its ``output_names`` the graph outputs."""

    def the_task(self) -> Task:
        from cvplatform.tasks import get_task

        return self.task if self.task is not None else get_task()


# --------------------------------------------------------------------------- formatting
def _f(v: Any, digits: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _e(v: Any) -> str:
    return "—" if v is None else f"{float(v):.2e}"


def _ci(ci: Sequence[float] | None) -> str:
    return "—" if not ci else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return out


def _md_escape(text: str) -> str:
    return text.replace("\n", " ")


def int8_speed_note(export: Mapping[str, Any]) -> str | None:
    """A warning when INT8 ships but measured slower than fp32 (both at batch 1 and batched), else None.

    INT8 acceptance is decided on accuracy only (deterministic); speed is machine-dependent and reported.

    Example:
        >>> int8_speed_note({"chosen": "int8", "benchmark": {"speedups": {"int8_vs_fp32_batch1": 0.5,
        ...                                                             "int8_vs_fp32_batched": 0.8}}})[:24]
        'INT8 ships but ran slowe'
    """
    sp = (export.get("benchmark") or {}).get("speedups") or {}
    b1, bn = sp.get("int8_vs_fp32_batch1"), sp.get("int8_vs_fp32_batched")
    if export.get("chosen") != "int8" or b1 is None or bn is None or max(b1, bn) >= 1.0:
        return None
    return (f"INT8 ships but ran slower than fp32 on this machine ({b1:.2f}x at batch 1, {bn:.2f}x batched): "
            "small models are dominated by quantize/dequantize overhead; set export.int8.enabled: false to ship fp32")


# --------------------------------------------------------------------------- sections
def _resize_words(contract: dict[str, Any]) -> str:
    """How the contract brings an image to the input size (a model without ``resize`` is stretched)."""
    interp = contract.get("interpolation", "linear")
    if contract.get("resize") == "letterbox":
        return (f"letterbox ({interp}) to the input size: aspect ratio kept, centred, padded with grey "
                f"{contract.get('pad_value')}")
    return f"resize ({interp}) to the input size"


def _details(x: ModelCardInputs) -> list[str]:
    e = x.export
    contract = e.get("contract") or {}
    classes = list(e.get("class_names") or [])
    task = x.the_task()
    scenarios = {str(r.get("name")): r for r in (x.evaluation.summary or {}).get("scenarios") or []}
    outputs = ", ".join(f"`{n}`" for n in task.output_names)
    lines = [
        *task.summary_lines(scenarios, classes),
        f"- **Architecture:** `{e.get('arch')}` {json.dumps(e.get('arch_kwargs') or {}, sort_keys=True)}",
        f"- **Shipped artifact:** `{e.get('artifact')}` — precision **{e.get('precision')}**, "
        f"sha256 `{e.get('sha256')}`, {(_f((e.get('size_bytes') or 0) / 1024, 1))} KiB, ONNX opset {e.get('opset')}",
        f"- **Input:** tensor `input`, float32 NCHW `(batch, 3, {', '.join(str(v) for v in contract.get('input_size', []))})`, "
        f"RGB, {_resize_words(contract)}, then `(pixel / 255 - mean) / std` with "
        f"mean {contract.get('mean')} and std {contract.get('std')}; output(s) {outputs}, decoded by the "
        f"`{task.name}` task.",
        "- The preprocessing contract and version info are stored in the ONNX `metadata_props`, so a server needs "
        "nothing else to run the file (`PreprocessContract.from_metadata`).",
    ]
    return lines


def _data(x: ModelCardInputs) -> list[str]:
    lin = x.lineage
    lines = [f"- **Manifest:** `{x.manifest_path}`; data version (DVC md5) `{lin.get('data_hash')}` "
             f"({lin.get('data_hash_source') or 'unknown source'})."]
    df = x.manifest
    if df is None or df.empty:
        return [*lines, "", "Manifest not available: counts not shown."]
    splits = [s for s in ("train", "val", "test") if s in set(df["split"])]
    extra = sorted(set(df["split"]) - set(splits))
    splits += extra
    counts = df.groupby(["label", "split"]).size().unstack(fill_value=0)
    rows = []
    for label in sorted(counts.index, key=str):
        vals = [int(counts.loc[label].get(s, 0)) for s in splits]
        rows.append([f"`{label}`", *vals, sum(vals)])
    totals = [int(counts[s].sum()) if s in counts.columns else 0 for s in splits]
    rows.append(["**total**", *totals, sum(totals)])
    lines += ["", "Images per class and split:", "", *_table(["class", *splits, "total"], rows)]
    if "source" in df.columns:
        src = df.groupby(["source", "split"]).size().unstack(fill_value=0)
        srows = []
        for s in sorted(src.index, key=str):
            vals = [int(src.loc[s].get(sp, 0)) for sp in splits]
            srows.append([f"`{s}`", *vals, sum(vals)])
        lines += ["", "Images per source and split:", "", *_table(["source", *splits, "total"], srows)]
    return lines


def _evaluation(x: ModelCardInputs) -> list[str]:
    ev = x.evaluation
    s = ev.summary
    if s is None:
        return [f"Not available: {ev.note}."]
    lines = []
    if ev.note:
        lines += [f"> **Note:** {ev.note}.", ""]
    rate = s.get("pass_rate")
    lines.append(
        f"Suite `{s.get('suite')}` on {s.get('n_images')} `{s.get('split')}` images of model `{s.get('model')}`: "
        f"gates **{'PASSED' if s.get('passed') else 'FAILED'}** (must-pass pass rate "
        f"{'n/a' if rate is None else f'{rate:.0%}'}, {len(s.get('failures') or [])} failed check(s), "
        f"{len(s.get('warnings') or [])} warning(s)); mCE vs the champion "
        f"{_f(s.get('mce'), 2) if s.get('mce') is not None else 'n/a (no comparable champion)'}; corruption error "
        f"÷ own clean error {_f(s.get('error_multiple_vs_clean'), 2)}."
    )
    if s.get("model_sha256") or (ev.gate_report or {}).get("model_sha256"):
        lines.append(f"Judged artifact sha256 `{s.get('model_sha256') or ev.gate_report.get('model_sha256')}` "
                     f"(the shipped file is `{x.export.get('sha256')}`).")
    champ = s.get("champion")
    lines.append(f"Champion comparison: {champ or 'none'}"
                 + (f" ({s.get('champion_note')})" if s.get("champion_note") else "") + ".")
    metrics = x.the_task().metrics
    scenario_rows = s.get("scenarios") or []
    # a metric shows its interval column when any scenario row carries ``<name>_ci``
    ranged = {m.name for m in metrics if any(r.get(f"{m.name}_ci") for r in scenario_rows)}
    rows = []
    for r in scenario_rows:
        row = [f"`{r.get('name')}`", r.get("kind"), r.get("level"), r.get("n")]
        for m in metrics:
            row.append(_f(r.get(m.name)))
            if m.name in ranged:
                row.append(_ci(r.get(f"{m.name}_ci")))
        rows.append([*row, r.get("status")])
    if rows:
        conf = ""
        gr = ev.gate_report or {}
        if isinstance(gr.get("policy"), dict) and gr["policy"].get("confidence") and ranged:
            conf = f" ({gr['policy']['confidence']:.0%} intervals: {x.the_task().interval_note})"
        header = ["scenario", "kind", "level", "n"]
        for m in metrics:
            header += [m.display, f"{m.display} CI"] if m.name in ranged else [m.display]
        lines += ["", f"Per-scenario metrics{conf}:", "", *_table([*header, "gate"], rows)]
    checks = (ev.gate_report or {}).get("checks") or []
    decided = [c for c in checks if c.get("status") in ("failed", "passed") and c.get("scenario") == "*"]
    if decided:
        lines += ["", "Suite-wide checks:", ""]
        lines += [f"- `{c.get('name')}` ({c.get('level')}): {c.get('status')} — {_md_escape(str(c.get('reason')))}"
                  for c in decided]
    return lines


def _limitations(x: ModelCardInputs) -> list[str]:
    items = []
    ev = x.evaluation
    checks = (ev.gate_report or {}).get("checks") or []
    for c in checks:
        if c.get("status") == "failed":
            kind = "must-pass check FAILED" if c.get("level") == "must_pass" else "warning"
            items.append(f"Scenario `{c.get('scenario')}` — {kind} `{c.get('name')}`: {_md_escape(str(c.get('reason')))}")
    if not checks and ev.summary is not None:
        first = x.the_task().metrics[0]
        for r in ev.summary.get("scenarios") or []:
            if r.get("status") in ("failed", "warned", "empty"):
                items.append(f"Scenario `{r.get('name')}` — {r.get('status')} ({first.display} "
                             f"{_f(r.get(first.name))})")
    if ev.summary is None:
        items.append(f"Not evaluated on the scenario suite: {ev.note}.")
    reason = x.export.get("int8_rejected_reason")
    if reason:
        items.append(f"INT8 was not shipped: {_md_escape(str(reason))}.")
    slow = int8_speed_note(x.export)
    if slow:
        items.append(f"{slow}.")
    classes = list(x.export.get("class_names") or [])
    items += [
        f"Closed set: every prediction is one of the {len(classes)} training classes, also for inputs of none "
        "of them (no rejection option); the model's confidence is not a calibrated out-of-distribution score.",
        "Only conditions covered by the training data and the scenario suite are measured; performance on "
        "other cameras, lighting or image sizes is unknown.",
    ]
    return [f"- {i}" for i in items]


def _export(x: ModelCardInputs) -> list[str]:
    e = x.export
    p = e.get("parity") or {}
    lines = [
        f"- **Parity gate** (onnxruntime fp32 vs PyTorch, {p.get('n')} `{p.get('split', 'test')}` images): "
        f"max |Δlogit| {_e(p.get('max_abs_diff'))} (atol {p.get('atol')}), top-1 agreement "
        f"{_f(p.get('top1_agreement'), 4)} (min {p.get('min_agreement')}): "
        f"**{'PASSED' if p.get('passed') else 'FAILED'}**.",
    ]
    i8 = e.get("int8") or {}
    if not i8.get("enabled", False):
        lines.append("- **INT8:** disabled (`export.int8.enabled: false`).")
        return lines
    dec = i8.get("decision") or {}
    verdict = "accepted — INT8 ships" if dec.get("accepted") else f"rejected — fp32 ships ({e.get('int8_rejected_reason')})"
    lines.append(
        f"- **INT8** (static QDQ, {i8.get('calibration_images')} `{i8.get('calibration_split')}` calibration images, "
        f"max allowed drop {dec.get('max_drop')}): {verdict}."
    )
    scen = list(dec.get("scenarios") or [])
    # judged scenarios always; of the others only those where INT8 changed the accuracy (the rest summarised)
    shown = [s for s in scen if s.get("judged") or (s.get("drop") or 0.0) != 0.0]
    rows = [[f"`{s['name']}`", s.get("level"), s.get("n"), _f(s.get("reference_accuracy")),
             _f(s.get("candidate_accuracy")), _f(s.get("drop"), 4), _f(s.get("agreement")),
             "yes" if s.get("judged") else "no"]
            for s in shown]
    if rows:
        lines += ["", *_table(["scenario", "level", "n", "fp32 acc", "int8 acc", "drop", "top-1 agreement", "judged"],
                              rows)]
    hidden = len(scen) - len(shown)
    if hidden:
        lines += ["", f"The other {hidden} scenario(s) have the same accuracy in fp32 and INT8 "
                      "(all rows: `artifacts/export/int8.json`)."]
    return lines


def _latency(x: ModelCardInputs) -> list[str]:
    b = x.export.get("benchmark")
    if not b:
        return ["Not measured (`export.benchmark.enabled: false`)."]
    rows = []
    for name, r in (b.get("runtimes") or {}).items():
        lat = r.get("latency_ms") or {}
        rows.append([f"`{name}`", r.get("provider"), _f(lat.get("p50")), _f(lat.get("p95")), _f(lat.get("p99")),
                     _f(r.get("throughput_ips"), 1), f"{r.get('cost_per_1k_usd', 0):.3g}",
                     f"{r.get('cost_per_1k_batched_usd', 0):.3g}"])
    env = b.get("environment") or {}
    lines = [
        f"Measured in one run on `{env.get('cpu') or 'unknown CPU'}` with {b.get('threads')} thread(s), "
        f"{b.get('iterations')} timed calls after {b.get('warmup')} warm-up calls; throughput at batch "
        f"{b.get('batch_size')}; price {b.get('price_per_core_hour')} USD per core-hour.",
        "",
        *_table(["runtime", "provider", "p50 ms", "p95 ms", "p99 ms", f"img/s @{b.get('batch_size')}",
                 "USD / 1k (batch 1)", "USD / 1k (batched)"], rows),
        "",
        f"Cost formula: `{b.get('cost_formula')}`.",
    ]
    sp = b.get("speedups") or {}
    if sp:
        lines.append("Speed-ups (throughput ratios): " + ", ".join(f"{k} {v:.2f}×" for k, v in sp.items()) + ".")
    return lines


def _lineage(x: ModelCardInputs) -> list[str]:
    lin = x.lineage
    rows = [
        ("git commit", lin.get("git_commit")),
        ("data version (manifest md5)", lin.get("data_hash")),
        ("params hash (all params)", lin.get("params_hash")),
        ("training params hash", lin.get("train_params_hash")),
        ("MLflow training run", lin.get("train_run_id")),
        ("MLflow tracking URI", lin.get("tracking_uri")),
        ("checkpoint", lin.get("checkpoint")),
        ("checkpoint sha256", lin.get("checkpoint_sha256")),
        ("ONNX fp32 sha256", (x.export.get("fp32") or {}).get("sha256")),
        ("ONNX int8 sha256", (x.export.get("int8") or {}).get("sha256")),
        ("Airflow run", lin.get("airflow_run_id")),
    ]
    return [f"- **{k}:** `{v}`" if v is not None else f"- **{k}:** —" for k, v in rows]


def render_model_card(inputs: ModelCardInputs) -> str:
    """Render the model card as Markdown (pure; every section of :data:`SECTIONS` is present).

    Example:
        >>> card = render_model_card(ModelCardInputs(export={"class_names": ["a", "b"], "arch": "small_cnn"},
        ...                                          intended_use="Sorting a and b."))
        >>> all(f"## {s}" in card for s in SECTIONS)
        True
    """
    e = inputs.export
    title = f"# Model card: {e.get('arch', 'model')} ({len(e.get('class_names') or [])} classes, {e.get('precision', '?')})"
    body = {
        "Model details": _details(inputs),
        "Intended use": [_md_escape(inputs.intended_use)],
        "Data": _data(inputs),
        "Evaluation": _evaluation(inputs),
        "Known limitations": _limitations(inputs),
        "Export and quantization": _export(inputs),
        "Latency and cost": _latency(inputs),
        "Lineage": _lineage(inputs),
    }
    out = [title, "", "Generated by `cvplatform evaluate` once the gates judged the exported artifact; values come "
           "from the train, export and evaluate stages.", ""]
    for name in SECTIONS:
        out += [f"## {name}", "", *body[name], ""]
    return "\n".join(out).rstrip() + "\n"


def write_model_card(inputs: ModelCardInputs, path: str | os.PathLike[str]) -> Path:
    """Render and write the card (UTF-8).

    Example:
        >>> write_model_card(inputs, "artifacts/export/model_card.md")  # doctest: +SKIP
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(render_model_card(inputs), encoding="utf-8")
    return p


__all__ = [
    "SECTIONS",
    "Evaluation",
    "ModelCardInputs",
    "int8_speed_note",
    "read_evaluation",
    "render_model_card",
    "write_model_card",
]
