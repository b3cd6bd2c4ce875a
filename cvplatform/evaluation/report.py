"""The evaluation report: Markdown + HTML with PNG plots, and plot data for ``dvc plots``.

Everything goes under ``artifacts/evaluate/``::

    report.md, report.html          the human report (same content)
    plots/scenarios.png             accuracy per scenario with bootstrap CIs and floors
    plots/corruptions.png           accuracy vs severity per corruption
    plots/confusion_<scenario>.png  confusion matrix (clean)
    plots/reliability_<scenario>.png  reliability diagram (clean)
    plots/gallery/<scenario>.png    worst failures (most confident wrong predictions)
    plots/scenarios.csv             one row per scenario (dvc plots: bar chart)
    plots/corruptions.csv           corruption, severity, accuracy, macro_f1
    plots/reliability.csv           bins of the clean reliability diagram
    plots/confusion.csv             actual, predicted (one row per clean image; dvc confusion template)

Plots use matplotlib's Agg backend (no display needed); thumbnails are composed
with Pillow.
"""

from __future__ import annotations

import csv
import html
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from cvplatform.evaluation.gates import GateCheck, GateReport
    from cvplatform.evaluation.scenarios import Scenario
    from cvplatform.tasks.classification.metrics import ScenarioResult

log = logging.getLogger(__name__)

_STATUS_COLOURS = {"passed": "#2e7d32", "failed": "#c62828", "warned": "#ef6c00", "empty": "#6a1b9a", "-": "#546e7a",
                   "unchecked": "#9e9e9e", "skipped": "#9e9e9e"}
#: Coloured markers for Markdown (Airflow's approval page and GitHub render emoji in colour, not HTML).
STATUS_MARKS = {"passed": "🟢", "failed": "🔴", "warned": "🟠", "empty": "🟣", "-": "⚪", "unchecked": "⚪",
                "skipped": "⚪"}


def check_mark(status: str, level: str) -> str:
    """The coloured marker of a gate check: red for a failed must-pass, orange for a failed warning."""
    if status == "failed":
        return STATUS_MARKS["failed"] if level == "must_pass" else STATUS_MARKS["warned"]
    return STATUS_MARKS.get(status, "⚪")


def check_state(status: str, level: str) -> str:
    """``failed`` / ``warned`` / ``passed`` / ``skipped``: a failed warn-level check is a warning."""
    return "warned" if status == "failed" and level != "must_pass" else status


@dataclass
class GalleryItem:
    """One failure shown in the gallery."""

    image_id: str
    label: str
    predicted: str
    confidence: float
    path: str = ""


@dataclass
class ReportContext:
    """What the report shows (filled by :func:`cvplatform.evaluation.run.run_evaluate`)."""

    model: str
    suite: str
    split: str
    class_names: Sequence[str]
    scenarios: Sequence[Scenario]
    results: Mapping[str, ScenarioResult]
    gates: GateReport
    corruption_summary: Mapping[str, Any]
    champion: str | None = None
    champion_note: str = ""
    champion_results: Mapping[str, ScenarioResult] | None = None
    galleries: dict[str, list[GalleryItem]] = field(default_factory=dict)
    gallery_images: dict[str, np.ndarray] = field(default_factory=dict)
    """Scenario -> (k, H, W, 3) uint8 thumbnails of the gallery items."""
    critical_classes: Sequence[str] = ()
    confidence: float = 0.95
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def scenario_status(name: str, gates: GateReport) -> str:
    """``passed`` | ``failed`` (a must-pass check failed) | ``warned`` | ``empty`` | ``unchecked`` | ``-``.

    ``passed`` needs at least one decided threshold check that passed: a scenario whose only
    check is "it has images" is ``unchecked`` (drawn grey), never green, whatever its accuracy.
    """
    checks = gates.for_scenario(name)
    if any(c.name == "images" and c.status == "failed" for c in checks):
        return "empty" if not any(c.blocking for c in checks) else "failed"
    if any(c.blocking for c in checks):
        return "failed"
    if any(c.status == "failed" for c in checks):
        return "warned"
    if not checks:
        return "-"
    return "passed" if any(c.status == "passed" and c.name != "images" for c in checks) else "unchecked"


# --------------------------------------------------------------------------- plot data (CSV)
def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for r in rows:
            w.writerow(["" if v is None else (f"{v:.6f}" if isinstance(v, float) else v) for v in r])
    return path


def write_plot_data(ctx: ReportContext, plots: Path) -> dict[str, Path]:
    """Write the CSV plot data files; returns name -> path."""
    out: dict[str, Path] = {}
    rows = []
    for sc in ctx.scenarios:
        r = ctx.results.get(sc.name)
        m = r.metrics if r else None
        rows.append([
            sc.name, sc.kind, sc.gate.level, r.n if r else 0,
            m.accuracy if m else None, m.accuracy_ci[0] if m else None, m.accuracy_ci[1] if m else None,
            m.macro_f1 if m else None, m.macro_f1_ci[0] if m else None, m.macro_f1_ci[1] if m else None,
            m.ece if m else None, scenario_status(sc.name, ctx.gates),
        ])
    out["scenarios"] = _write_csv(
        plots / "scenarios.csv",
        ["scenario", "kind", "level", "n", "accuracy", "accuracy_low", "accuracy_high",
         "macro_f1", "macro_f1_low", "macro_f1_high", "ece", "status"],
        rows,
    )
    crow = []
    for sc in ctx.scenarios:
        r = ctx.results.get(sc.name)
        if sc.kind == "corruption" and r is not None and r.metrics is not None:
            crow.append([sc.corruption, sc.severity, r.metrics.accuracy, r.metrics.macro_f1, 1 - r.metrics.accuracy])
    out["corruptions"] = _write_csv(plots / "corruptions.csv",
                                    ["corruption", "severity", "accuracy", "macro_f1", "error"], crow)
    clean = _clean(ctx)
    if clean is not None and clean.metrics is not None:
        out["reliability"] = _write_csv(
            plots / "reliability.csv",
            ["scenario", "lower", "upper", "count", "share", "confidence", "accuracy"],
            [[clean.name, b["lower"], b["upper"], b["count"], b["share"], b["confidence"], b["accuracy"]]
             for b in clean.metrics.reliability],
        )
        names = list(ctx.class_names)
        out["confusion"] = _write_csv(
            plots / "confusion.csv", ["actual", "predicted"],
            [[names[int(t)], names[int(p)]] for t, p in zip(clean.y_true, clean.y_pred, strict=True)],
        )
    return out


def _clean(ctx: ReportContext) -> ScenarioResult | None:
    for sc in ctx.scenarios:
        if sc.kind == "clean":
            return ctx.results.get(sc.name)
    return None


# --------------------------------------------------------------------------- plots (matplotlib)
def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_scenarios(ctx: ReportContext, path: Path) -> Path:
    """Horizontal bars: accuracy per scenario with its bootstrap CI and the accuracy floor."""
    plt = _plt()
    names, acc, lo, hi, colours, floors = [], [], [], [], [], []
    for sc in ctx.scenarios:
        r = ctx.results.get(sc.name)
        m = r.metrics if r else None
        names.append(sc.name)
        acc.append(m.accuracy if m else 0.0)
        lo.append((m.accuracy - m.accuracy_ci[0]) if m else 0.0)
        hi.append((m.accuracy_ci[1] - m.accuracy) if m else 0.0)
        colours.append(_STATUS_COLOURS[scenario_status(sc.name, ctx.gates)])
        floors.append(_floor_of(sc, ctx))
    h = max(2.5, 0.22 * len(names) + 1.0)
    fig, ax = plt.subplots(figsize=(7.5, h))
    y = list(range(len(names)))
    ax.barh(y, acc, xerr=[lo, hi], color=colours, alpha=0.85, error_kw={"ecolor": "black", "capsize": 2, "lw": 0.8})
    for yi, f in zip(y, floors, strict=True):
        if f is not None:
            ax.plot([f, f], [yi - 0.4, yi + 0.4], color="black", lw=1.5)
    ax.set_yticks(y)
    ax.set_yticklabels(names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.0)
    ax.set_xlabel(f"accuracy ({int(round(ctx.confidence * 100))}% Wilson interval; black tick = floor)")
    ax.set_title("Accuracy per scenario (green passed, red failed, orange warning, grey not checked)", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _floor_of(sc: Scenario, ctx: ReportContext) -> float | None:
    """The accuracy floor drawn for a scenario: the higher of its absolute and relative floors."""
    floors = [c.threshold for c in ctx.gates.for_scenario(sc.name)
              if c.name in ("min_accuracy", "min_relative_accuracy") and c.threshold is not None]
    return max(floors) if floors else None


def plot_corruptions(ctx: ReportContext, path: Path) -> Path | None:
    """Accuracy vs severity, one line per corruption, clean accuracy as a dashed line."""
    series: dict[str, list[tuple[int, float]]] = {}
    for sc in ctx.scenarios:
        r = ctx.results.get(sc.name)
        if sc.kind == "corruption" and r is not None and r.metrics is not None:
            series.setdefault(str(sc.corruption), []).append((int(sc.severity or 0), r.metrics.accuracy))
    if not series:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4))
    for name, pts in sorted(series.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "-o", ms=3, label=name)
    clean = _clean(ctx)
    if clean is not None and clean.metrics is not None:
        ax.axhline(clean.metrics.accuracy, ls="--", color="black", lw=1, label="clean")
    ax.set_xlabel("severity")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_xticks([1, 2, 3, 4, 5])
    mce = ctx.corruption_summary.get("mce")
    ax.set_title(f"Accuracy under corruption (mCE vs champion {mce:.2f})" if mce is not None
                 else "Accuracy under corruption", fontsize=9)
    ax.legend(fontsize=7, ncol=2, loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_confusion(result: ScenarioResult, class_names: Sequence[str], path: Path) -> Path:
    """Confusion matrix heat map (rows = true class, columns = predicted)."""
    import numpy as np

    plt = _plt()
    assert result.metrics is not None
    cm = np.asarray(result.metrics.confusion)
    k = len(class_names)
    size = min(10.0, max(3.5, 0.45 * k + 2))
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    im = ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels(class_names, rotation=45, ha="right", fontsize=7)
    ax.set_yticklabels(class_names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 20:
        thresh = cm.max() / 2 if cm.max() else 0.5
        for i in range(k):
            for j in range(k):
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if cm[i, j] > thresh else "black")
    ax.set_title(f"Confusion matrix: {result.name}", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_reliability(result: ScenarioResult, path: Path) -> Path:
    """Reliability diagram: accuracy vs mean confidence per bin, with the share of images per bin."""
    plt = _plt()
    assert result.metrics is not None
    bins = result.metrics.reliability
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(4.8, 5.2), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    centres = [(b["lower"] + b["upper"]) / 2 if b["upper"] > b["lower"] else b["lower"] for b in bins]
    widths = [max(b["upper"] - b["lower"], 0.02) for b in bins]
    ax.bar(centres, [b["accuracy"] for b in bins], width=widths, alpha=0.6, edgecolor="black", label="accuracy")
    ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o", color="C3", ms=3,
            label="(confidence, accuracy)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"Reliability: {result.name} (ECE {result.metrics.ece:.3f})", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    ax2.bar(centres, [b["share"] for b in bins], width=widths, color="C0", alpha=0.6)
    ax2.set_xlabel("confidence")
    ax2.set_ylabel("share")
    ax2.set_xlim(0, 1.02)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- gallery (Pillow)
def gallery_montage(images: np.ndarray, items: Sequence[GalleryItem], path: Path, thumb: int = 96) -> Path:
    """A row of thumbnails with ``true -> predicted (confidence)`` captions."""
    import numpy as np
    from PIL import Image, ImageDraw

    k = len(items)
    cap = 26
    canvas = Image.new("RGB", (max(1, k) * (thumb + 6) + 6, thumb + cap + 8), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, (img, it) in enumerate(zip(np.asarray(images), items, strict=True)):
        h, w = img.shape[:2]
        scale = thumb / max(h, w)
        resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.BILINEAR
        im = Image.fromarray(img).resize((max(1, round(w * scale)), max(1, round(h * scale))), resample)
        x0 = 6 + i * (thumb + 6)
        canvas.paste(im, (x0, 4))
        draw.text((x0, thumb + 6), f"{it.label[:8]}>{it.predicted[:8]}", fill=(0, 0, 0))
        draw.text((x0, thumb + 17), f"p={it.confidence:.2f}", fill=(150, 0, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, format="PNG")
    return path


# --------------------------------------------------------------------------- text
def _f(v: float | None, digits: int = 3) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def _ci(ci: tuple[float, float] | None) -> str:
    return "—" if ci is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def _scenario_rows(ctx: ReportContext) -> list[list[str]]:
    rows = []
    for sc in ctx.scenarios:
        r = ctx.results.get(sc.name)
        m = r.metrics if r else None
        champ = ctx.champion_results.get(sc.name) if ctx.champion_results else None
        reg = next((c for c in ctx.gates.for_scenario(sc.name) if c.name == "champion_regression"), None)
        rows.append([
            sc.name, sc.kind, sc.gate.level, str(r.n if r else 0),
            _f(m.accuracy if m else None), _ci(m.accuracy_ci if m else None),
            _f(m.macro_f1 if m else None), _ci(m.macro_f1_ci if m else None),
            _f(m.ece if m else None),
            _f(champ.metrics.accuracy if champ and champ.metrics else None),
            (f"{reg.value:+.3f} {_ci(reg.ci)}" if reg is not None and reg.value is not None else "—"),
            scenario_status(sc.name, ctx.gates),
        ])
    return rows


_SCENARIO_HEADER = ["scenario", "kind", "level", "n", "accuracy", "acc CI", "macro-F1", "F1 CI", "ECE",
                    "champion acc", "Δ vs champion [CI]", "status"]


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    esc = [[str(c).replace("|", "\\|") for c in r] for r in rows]
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in esc)]


def _corruption_matrix(ctx: ReportContext) -> tuple[list[str], list[list[str]]]:
    table: dict[str, dict[int, float]] = {}
    for sc in ctx.scenarios:
        r = ctx.results.get(sc.name)
        if sc.kind == "corruption" and r is not None and r.metrics is not None:
            table.setdefault(str(sc.corruption), {})[int(sc.severity or 0)] = r.metrics.accuracy
    per = ctx.corruption_summary.get("per_corruption", {})
    rows = [[name, *(_f(sev.get(s)) for s in range(1, 6)), _f(per.get(name, {}).get("ce"), 2),
             _f(per.get(name, {}).get("error_multiple"), 2)] for name, sev in table.items()]
    return ["corruption", "s1", "s2", "s3", "s4", "s5", "CE vs champion", "error ÷ clean error"], rows


def _class_rows(ctx: ReportContext) -> list[list[str]]:
    clean = _clean(ctx)
    if clean is None or clean.metrics is None:
        return []
    m = clean.metrics
    return [[c, str(m.support[c]), _f(m.precision[c]), _f(m.recall[c]), _ci(m.recall_ci.get(c)),
             _f(m.critical_fpr.get(c)) if c in m.critical_fpr else ""] for c in ctx.class_names]


_CLASS_HEADER = ["class", "support", "precision", "recall", "recall CI (Wilson)", "FPR"]


def corruption_lines(cs: Mapping[str, Any]) -> tuple[str, str]:
    """Two honest one-liners about corruption error: mCE against the champion, and the reference-free multiple."""
    if cs.get("mce") is not None:
        mce = (f"mCE {_f(cs.get('mce'), 3)} (ImageNet-C definition with the champion {cs.get('mce_reference')} as "
               "the reference model; < 1 = more robust than the champion)")
    else:
        mce = "mCE: not available (it needs a reference model: the champion, evaluated on the same images)"
    own = (f"corruption error ÷ own clean error: {_f(cs.get('error_multiple_vs_clean'), 2)} (not mCE); mean "
           f"accuracy drop under corruption: {_f(cs.get('mean_degradation'), 3)}")
    return mce, own


def ordered_checks(g: GateReport) -> list[GateCheck]:
    """Checks for the report: failed must-pass, then warnings, then the others weakest first (passed images omitted)."""
    def rank(c: GateCheck) -> tuple[int, float, str, str]:
        group = 0 if c.blocking else 1 if c.status == "failed" else 3 if c.status == "skipped" else 2
        m = c.margin
        return group, (m if m is not None else float("inf")), c.scenario, c.name

    return sorted((c for c in g.checks if c.status != "passed" or c.name != "images"), key=rank)


def _check_row(c: GateCheck, marks: bool) -> list[str]:
    state = check_state(c.status, c.level)
    shown = f"{check_mark(c.status, c.level)} {state}" if marks else state
    return [shown, c.level, c.scenario, c.name, _f(c.value, 4), _f(c.threshold, 4), _ci(c.ci), c.reason]


_CHECK_HEADER = ["status", "level", "scenario", "check", "value", "threshold", "CI", "reason"]


def verdict_text(g: GateReport, marks: bool = True) -> str:
    """``🔴 FAILED: 2 must-pass check(s) failed, 3 warning(s)`` (markers optional)."""
    head = ("🟢 PASSED" if g.passed else "🔴 FAILED") if marks else ("PASSED" if g.passed else "FAILED")
    warn = f"{'🟠 ' if marks and g.warnings else ''}{len(g.warnings)} warning(s)"
    return f"{head}: {len(g.failures)} must-pass check(s) failed, {warn}"


def render_markdown(ctx: ReportContext, plots: Mapping[str, str]) -> str:
    """The Markdown report (plots referenced relative to the report)."""
    g = ctx.gates
    cs = ctx.corruption_summary
    mce, own = corruption_lines(cs)
    pct = int(round(ctx.confidence * 100))
    lines = [
        f"# Evaluation report: {ctx.model}",
        "",
        f"**Verdict: {verdict_text(g)}**; scenario pass rate (KPI) "
        f"{_f(g.pass_rate) if g.pass_rate is not None else 'n/a'}.",
        "",
        f"- model sha256: `{ctx.extra.get('model_sha256') or 'n/a'}`",
        f"- suite: `{ctx.suite}`; split: `{ctx.split}`; classes: {len(ctx.class_names)}; seed: {ctx.seed}",
        f"- champion: {ctx.champion or 'none'}{(' — ' + ctx.champion_note) if ctx.champion_note else ''}",
        f"- {mce}",
        f"- {own}",
        f"- intervals ({pct}%): accuracy and recall Wilson score; macro-F1 percentile bootstrap; "
        "champion difference paired bootstrap",
        "",
        "## Gate checks",
        "",
        "🔴 failed must-pass · 🟠 warning · 🟢 passed · ⚪ skipped; failures first, then the weakest passes.",
        "",
        *_md_table(_CHECK_HEADER, [_check_row(c, True) for c in ordered_checks(g)]),
        "",
        "## Scenarios",
        "",
        f"![accuracy per scenario]({plots.get('scenarios', '')})" if plots.get("scenarios") else "",
        "",
        *_md_table(_SCENARIO_HEADER, [[*r[:-1], f"{STATUS_MARKS.get(r[-1], '')} {r[-1]}"]
                                      for r in _scenario_rows(ctx)]),
        "",
    ]
    header, rows = _corruption_matrix(ctx)
    if rows:
        lines += ["## Corruptions (accuracy by severity)", ""]
        if plots.get("corruptions"):
            lines += [f"![accuracy under corruption]({plots['corruptions']})", ""]
        lines += [*_md_table(header, rows), ""]
    crow = _class_rows(ctx)
    if crow:
        lines += ["## Per class (clean)", "", *_md_table(_CLASS_HEADER, crow), ""]
    for key, title in (("confusion", "Confusion matrix (clean)"), ("reliability", "Reliability diagram (clean)")):
        if plots.get(key):
            lines += [f"## {title}", "", f"![{title}]({plots[key]})", ""]
    if ctx.galleries:
        lines += ["## Worst failures (most confident wrong predictions)", ""]
        for name, items in ctx.galleries.items():
            lines += [f"### {name}", "", f"![failures {name}]({plots.get('gallery/' + name, '')})", "",
                      *_md_table(["#", "image sha256", "true", "predicted", "confidence"],
                                 [[str(i + 1), it.image_id[:16], it.label, it.predicted, f"{it.confidence:.3f}"]
                                  for i, it in enumerate(items)]), ""]
    return "\n".join(lines) + "\n"


_ROW_BACKGROUND = {"failed": "#ffebee", "warned": "#fff3e0"}


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]], status_col: int | None = None) -> str:
    """A table; with ``status_col`` the status cell is coloured and failed / warned rows are shaded."""
    out = ["<table><thead><tr>", *(f"<th>{html.escape(h)}</th>" for h in header), "</tr></thead><tbody>"]
    for r in rows:
        style, row_style = "", ""
        if status_col is not None:
            state = str(r[status_col])
            colour = _STATUS_COLOURS.get(state, "")
            style = f' style="color:{colour};font-weight:bold"' if colour else ""
            if state in _ROW_BACKGROUND:
                row_style = f' style="background:{_ROW_BACKGROUND[state]}"'
        out.append(f"<tr{row_style}>" + "".join(
            f"<td{style if i == status_col else ''}>{html.escape(str(c))}</td>" for i, c in enumerate(r)) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def render_html(ctx: ReportContext, plots: Mapping[str, str]) -> str:
    """The HTML report (self-contained page; images referenced relative to it)."""
    g = ctx.gates
    cs = ctx.corruption_summary
    colour = _STATUS_COLOURS["passed" if g.passed else "failed"]
    mce, own = corruption_lines(cs)
    pct = int(round(ctx.confidence * 100))
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Evaluation: {html.escape(ctx.model)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;"
        "font-size:12px;margin:0.5em 0}td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}"
        "th{background:#f3f3f3}img{max-width:100%}</style></head><body>",
        f"<h1>Evaluation report: {html.escape(ctx.model)}</h1>",
        f"<p style='font-size:18px;color:{colour}'><b>Verdict: {html.escape(verdict_text(g, marks=False))}</b>"
        f"; scenario pass rate (KPI) {_f(g.pass_rate) if g.pass_rate is not None else 'n/a'}</p>",
        "<ul>",
        f"<li>model sha256: <code>{html.escape(str(ctx.extra.get('model_sha256') or 'n/a'))}</code></li>",
        f"<li>suite: <code>{html.escape(ctx.suite)}</code>; split: <code>{html.escape(ctx.split)}</code>; "
        f"classes: {len(ctx.class_names)}; seed: {ctx.seed}</li>",
        f"<li>champion: {html.escape(ctx.champion or 'none')}"
        f"{(' — ' + html.escape(ctx.champion_note)) if ctx.champion_note else ''}</li>",
        f"<li>{html.escape(mce)}</li><li>{html.escape(own)}</li>",
        f"<li>intervals ({pct}%): accuracy and recall Wilson score; macro-F1 percentile bootstrap; champion "
        "difference paired bootstrap</li></ul>",
        "<h2>Gate checks</h2>",
        "<p>Failed must-pass checks first (red), then warnings (orange), then the weakest passes.</p>",
        _html_table(_CHECK_HEADER, [_check_row(c, False) for c in ordered_checks(g)], status_col=0),
        "<h2>Scenarios</h2>",
    ]
    if plots.get("scenarios"):
        parts.append(f"<img src='{html.escape(plots['scenarios'])}' alt='accuracy per scenario'>")
    parts.append(_html_table(_SCENARIO_HEADER, _scenario_rows(ctx), status_col=len(_SCENARIO_HEADER) - 1))
    header, rows = _corruption_matrix(ctx)
    if rows:
        parts.append("<h2>Corruptions (accuracy by severity)</h2>")
        if plots.get("corruptions"):
            parts.append(f"<img src='{html.escape(plots['corruptions'])}' alt='corruptions'>")
        parts.append(_html_table(header, rows))
    crow = _class_rows(ctx)
    if crow:
        parts += ["<h2>Per class (clean)</h2>", _html_table(_CLASS_HEADER, crow)]
    for key, title in (("confusion", "Confusion matrix (clean)"), ("reliability", "Reliability diagram (clean)")):
        if plots.get(key):
            parts += [f"<h2>{title}</h2>", f"<img src='{html.escape(plots[key])}' alt='{title}'>"]
    if ctx.galleries:
        parts.append("<h2>Worst failures (most confident wrong predictions)</h2>")
        for name, items in ctx.galleries.items():
            parts.append(f"<h3>{html.escape(name)}</h3>")
            if plots.get("gallery/" + name):
                parts.append(f"<img src='{html.escape(plots['gallery/' + name])}' alt='failures {html.escape(name)}'>")
            parts.append(_html_table(["#", "image sha256", "true", "predicted", "confidence"],
                                     [[str(i + 1), it.image_id[:16], it.label, it.predicted, f"{it.confidence:.3f}"]
                                      for i, it in enumerate(items)]))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(ctx: ReportContext, out_dir: str | Path) -> dict[str, Path]:
    """Write plots, plot data, ``report.md`` and ``report.html`` under ``out_dir``.

    Returns:
        Name -> path of everything written (``report_md``, ``report_html``, plots and CSVs).

    Example:
        >>> paths = write_report(ctx, "artifacts/evaluate")  # doctest: +SKIP
        >>> paths["report_md"].name  # doctest: +SKIP
        'report.md'
    """
    out = Path(out_dir)
    plots_dir = out / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = dict(write_plot_data(ctx, plots_dir))
    rel: dict[str, str] = {}

    def add(key: str, path: Path | None) -> None:
        if path is not None:
            written[f"plot_{key}"] = path
            rel[key] = path.relative_to(out).as_posix()

    add("scenarios", plot_scenarios(ctx, plots_dir / "scenarios.png"))
    add("corruptions", plot_corruptions(ctx, plots_dir / "corruptions.png"))
    clean = _clean(ctx)
    if clean is not None and clean.metrics is not None:
        add("confusion", plot_confusion(clean, ctx.class_names, plots_dir / f"confusion_{clean.name}.png"))
        add("reliability", plot_reliability(clean, plots_dir / f"reliability_{clean.name}.png"))
    for name, items in ctx.galleries.items():
        imgs = ctx.gallery_images.get(name)
        if imgs is not None and len(items):
            add(f"gallery/{name}", gallery_montage(imgs, items, plots_dir / "gallery" / f"{name}.png"))
    md = out / "report.md"
    md.write_text(render_markdown(ctx, rel), encoding="utf-8")
    page = out / "report.html"
    page.write_text(render_html(ctx, rel), encoding="utf-8")
    written["report_md"] = md
    written["report_html"] = page
    return written


__all__ = [
    "STATUS_MARKS",
    "GalleryItem",
    "check_mark",
    "check_state",
    "corruption_lines",
    "ordered_checks",
    "verdict_text",
    "ReportContext",
    "gallery_montage",
    "plot_confusion",
    "plot_corruptions",
    "plot_reliability",
    "plot_scenarios",
    "render_html",
    "render_markdown",
    "scenario_status",
    "write_plot_data",
    "write_report",
]
